"""IOMMU (DMAR) faults since a case began, read where they are recorded.

Two sources, chosen when the case begins:

- In the testbed, QEMU's intel-iommu logs every DMA-remapping fault it raises (its
  `vtd_dmar_fault` trace event, emitted before the fault-recording registers can drop
  one: primary fault overflow, fault compression, a fault still pending) to a file of
  its VM folder, which the guest sees through a 9p share without cache at
  QEMU_FAULTS_MOUNT (engine/testbed/qemu.py, initramfs.py). Each VM writes its own
  file, so faults of two VMs never mix. Nothing rate-limits it.
- Elsewhere, the kernel log: intel-iommu prints one `DMAR: [DMA Read|Write …] Request
  device [ssss:bb:dd.f] fault addr 0x… [fault reason 0x..] …` line per fault it handles,
  through a printk rate limit (`dmar_fault`, 10 messages per 5 s) that says so later with
  `dmar_fault: N callbacks suppressed`.

Addresses compare at 4 KiB granularity: VT-d records the faulting page (the kernel
prints the page address; QEMU traces every access of the device, e.g. each 4-byte read
of an edu copy, so one DMA leaves many records in one page).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: where the testbed guest sees QEMU's fault log (a tmpfs folder of the guest holds the mount)
QEMU_FAULTS_MOUNT = "/run/vfio-scenario/iommu"
QEMU_FAULTS_FILE = "dmar-faults.log"
PAGE = 4096
POLL = 0.01  # seconds between two reads while a step waits for a fault

# `vtd_dmar_fault sid 0x18 fault 6 addr 0x7000000 write 0` (hw/i386/trace-events), with
# the `PID@SECONDS:` prefix QEMU's log backend adds under `-msg timestamp=on`
_QEMU_RECORD = re.compile(
    r"vtd_dmar_fault sid 0x(?P<sid>[0-9a-f]+) fault (?P<reason>\d+) "
    r"addr 0x(?P<addr>[0-9a-f]+) write (?P<write>[01])\s*$")
# drivers/iommu/intel/dmar.c, dmar_fault_do_one(); older kernels print no segment
_KERNEL_LINE = re.compile(
    r"\[DMA (?P<access>Read|Write) (?:NO_PASID|PASID 0x[0-9a-f]+)\] Request device "
    r"\[(?:(?P<seg>[0-9a-f]{4}):)?(?P<bus>[0-9a-f]{2}):(?P<dev>[0-9a-f]{2})\.(?P<fn>[0-7])\] "
    r"fault addr 0x(?P<addr>[0-9a-f]+) \[fault reason 0x(?P<reason>[0-9a-f]+)\]")
# lib/ratelimit.c, for the rate limit in dmar_fault()
_SUPPRESSED = re.compile(r"\bdmar_fault: (?P<count>\d+) callbacks suppressed")

# VT-d's non-recoverable fault reasons 1-0xd (the kernel's dma_remap_fault_reasons)
REASONS = {
    1: "root entry not present", 2: "context entry not present", 3: "invalid context entry",
    4: "access beyond MGAW", 5: "PTE write access not set", 6: "PTE read access not set",
    7: "next page table pointer invalid", 8: "root table address invalid",
    9: "context table pointer invalid", 0xA: "reserved bits set in root entry",
    0xB: "reserved bits set in context entry", 0xC: "reserved bits set in PTE",
    0xD: "translation blocked by PCE",
}


@dataclass(frozen=True)
class Fault:
    """One DMA-remapping fault: who, where, which way, why."""

    bdf: str          # 0000:00:03.0
    address: int
    access: str       # "read" or "write"
    reason: int

    def describe(self) -> str:
        why = REASONS.get(self.reason, "")
        return (f"{self.access} fault by {self.bdf} at {self.address:#x} "
                f"(reason {self.reason:#04x}{': ' + why if why else ''})")


def sid_bdf(sid: int, segment: int = 0) -> str:
    """The PCI address of a VT-d source id (bus << 8 | device << 3 | function)."""
    return f"{segment:04x}:{sid >> 8:02x}:{(sid >> 3) & 0x1F:02x}.{sid & 7}"


def parse_qemu_record(line: str) -> Fault | None:
    """A fault from one line of QEMU's vtd_dmar_fault trace, or None for another line."""
    m = _QEMU_RECORD.search(line)
    if m is None:
        return None
    return Fault(bdf=sid_bdf(int(m["sid"], 16)), address=int(m["addr"], 16),
                 access="write" if m["write"] == "1" else "read", reason=int(m["reason"]))


def parse_kernel_line(line: str) -> Fault | None:
    """A fault from one intel-iommu kernel log line, or None for another line."""
    m = _KERNEL_LINE.search(line)
    if m is None:
        return None
    bdf = f"{m['seg'] or '0000'}:{m['bus']}:{m['dev']}.{m['fn']}"
    return Fault(bdf=bdf, address=int(m["addr"], 16), access=m["access"].lower(),
                 reason=int(m["reason"], 16))


def suppressed_count(lines: Iterable[str]) -> int:
    """How many DMAR fault messages the kernel's rate limit says it suppressed in `lines`."""
    return sum(int(m["count"]) for m in map(_SUPPRESSED.search, lines) if m is not None)


@dataclass(frozen=True)
class FaultFilter:
    """Which faults a step asks about: one device, maybe one page, maybe one access."""

    bdf: str
    address: int | None = None
    access: str | None = None

    def __call__(self, fault: Fault) -> bool:
        return (fault.bdf == self.bdf
                and (self.access is None or fault.access == self.access)
                and (self.address is None or fault.address // PAGE == self.address // PAGE))

    def describe(self) -> str:
        what = f"{self.access} fault" if self.access else "fault"
        where = f" at {self.address:#x}" if self.address is not None else ""
        return f"{what} by {self.bdf}{where}"


def summary(faults: list[Fault], limit: int = 5) -> str:
    """The distinct faults (per page) in `faults` with their counts, for a message."""
    if not faults:
        return "none"
    pages = Counter(Fault(f.bdf, f.address // PAGE * PAGE, f.access, f.reason) for f in faults)
    parts = [f"{fault.describe()}{f' x{n}' if n > 1 else ''}"
             for fault, n in pages.most_common(limit)]
    more = len(pages) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class QemuFaultLog:
    """QEMU's fault records appended after creation (the testbed's source)."""

    source = "QEMU's intel-iommu"

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.stat(path).st_size
        self.partial = b""
        self.faults: list[Fault] = []

    def read(self) -> list[Fault]:
        """Every fault recorded since creation."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        if data:
            self.offset += len(data)
            data = self.partial + data
            lines, _, self.partial = data.rpartition(b"\n")
            for line in lines.decode(errors="replace").splitlines():
                fault = parse_qemu_record(line)
                if fault is not None:
                    self.faults.append(fault)
        return self.faults

    def suppressed(self) -> int:
        return 0  # every fault QEMU raises is traced


class KernelFaultLog:
    """The faults intel-iommu printed since the case began (a host's source)."""

    source = "the kernel log"

    def __init__(self, lines: Callable[[], list[str]]) -> None:
        self.lines = lines

    def read(self) -> list[Fault]:
        return [f for f in map(parse_kernel_line, self.lines()) if f is not None]

    def suppressed(self) -> int:
        return suppressed_count(self.lines())


FaultSource = QemuFaultLog | KernelFaultLog


def qemu_fault_log() -> QemuFaultLog | None:
    """QEMU's fault log from now on, when this runs in a testbed guest that shares it."""
    try:
        return QemuFaultLog(os.path.join(QEMU_FAULTS_MOUNT, QEMU_FAULTS_FILE))
    except OSError:
        return None


def wait_for(log: FaultSource, wanted: FaultFilter, within: float) -> Fault | None:
    """The first recorded fault `wanted` matches, waiting up to `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = next((f for f in log.read() if wanted(f)), None)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(POLL)
