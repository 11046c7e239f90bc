"""Scenario driver for NVMe controllers (PCI class 01:08:02, any vendor).

init disables the controller, builds an admin queue pair in the driver's DMA region,
enables the controller and sends Identify Controller (a DMA write of 4 KiB into the
region).  send_msi sends Get Features (Arbitration), a command that changes nothing,
whose completion on the admin completion queue raises MSI-X vector 0.  remove disables
the controller and restores the admin queue registers and the PCI command register.

memcpy is device DMA through the namespace: memcpy_start sends a Write of `size` bytes
from `src` to a scratch LBA range, memcpy_wait waits for it and sends the Read of the
same blocks to `dst` (completions are polled: memcpy raises no MSI).  That writes the
namespace, so it is allowed only on QEMU's emulated controller (PCI 1b36:0010, model
"QEMU NVMe Ctrl": the testbed's scratch image) or on a device the user names with its
LBA range in the environment:

    VFIO_SCENARIO_NVME_SCRATCH="0000:01:00.0,nsid=1,lba=0x100000,blocks=2048"

Everywhere else memcpy is refused with EPERM and only commands that change nothing
reach the device.  Sizes that are not a multiple of the block size need SGL support:
the tail of the last block comes from, or goes to, a pad page of the driver's region
(a second SGL data block), so no byte around `dst` is written; controllers with PRPs
only copy whole blocks.

Register layout (NVMe 1.4 §3.1): CAP 0x00, VS 0x08, CC 0x14, CSTS 0x1C, AQA 0x24,
ASQ 0x28, ACQ 0x30, doorbells from 0x1000 with a stride of 4 << CAP.DSTRD.  64-bit
registers are accessed as two 32-bit halves, low first, which every controller accepts.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vfio_scenario.drivers.base import (
    DeviceAccess,
    DmaRegion,
    Driver,
    DriverError,
    IrqControl,
    IrqHandle,
    Status,
)
from vfio_scenario.uapi.pci import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY

CLASS_NVME = 0x010802
PCI_CLASS_REVISION = 0x08

REG_CAP = 0x00
REG_VS = 0x08
REG_CC = 0x14
REG_CSTS = 0x1C
REG_AQA = 0x24
REG_ASQ = 0x28
REG_ACQ = 0x30
DOORBELLS = 0x1000

CC_EN = 1 << 0
CC_IOSQES = 6 << 16  # 64-byte submission entries
CC_IOCQES = 4 << 20  # 16-byte completion entries
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1

# admin opcodes
OPC_CREATE_IO_SQ = 0x01
OPC_CREATE_IO_CQ = 0x05
OPC_IDENTIFY = 0x06
OPC_GET_FEATURES = 0x0A
# NVM opcodes
OPC_WRITE = 0x01
OPC_READ = 0x02
CNS_NAMESPACE = 0x00
CNS_CONTROLLER = 0x01
FID_ARBITRATION = 0x01

PSDT_SGL = 1 << 14  # CDW0: data pointer is an SGL (segments addressed by MPTR not used)
SGL_DATA_BLOCK = 0x00
SGL_LAST_SEGMENT = 0x30
SGLS_SUPPORTED = 0x3

SC_DATA_TRANSFER_ERROR = 0x04
STATUS_NAMES = {
    (0, 0x01): "Invalid Command Opcode", (0, 0x02): "Invalid Field in Command",
    (0, SC_DATA_TRANSFER_ERROR): "Data Transfer Error", (0, 0x06): "Internal Error",
    (0, 0x0B): "Invalid Namespace or Format", (0, 0x80): "LBA Out of Range",
    (2, 0x80): "Write Fault", (2, 0x81): "Unrecovered Read Error",
}

PAGE = 4096
SQE = struct.Struct("<BBHI8xQQQ6I")  # opcode, flags, cid, nsid, mptr, dptr1, dptr2, cdw10-15
CQE = struct.Struct("<IIHHHH")  # result, reserved, sqhd, sqid, cid, status|phase
SGL_DESC = struct.Struct("<QI3xB")  # address, length, identifier
QUEUE_ENTRIES = 32
IRQ_SETTLE = 0.5  # s: longest wait for the MSI-X of an admin completion already seen

# the driver's region: one page each, in this order
ADMIN_SQ, ADMIN_CQ, IO_SQ, IO_CQ, DATA, PRP_LIST, SGL_SEGMENT, PAD = (i * PAGE for i in range(8))
REGION_SIZE = 8 * PAGE

QEMU_IDS = (0x1B36, 0x0010)
QEMU_MODEL = "QEMU NVMe Ctrl"
QEMU_SCRATCH_BYTES = 1 << 20  # at LBA 0 of the testbed's scratch image
SCRATCH_ENV = "VFIO_SCENARIO_NVME_SCRATCH"
MAX_COPY = 1 << 20  # PRP list of one page maps 2 MiB; 1 MiB keeps the scenarios' buffers apart


@dataclass(frozen=True)
class Completion:
    result: int
    sqhd: int
    sqid: int
    cid: int
    status: int  # the 15-bit status field (phase removed)

    @property
    def sc(self) -> int:
        return self.status & 0xFF

    @property
    def sct(self) -> int:
        return (self.status >> 8) & 0x7

    @property
    def ok(self) -> bool:
        return self.sc == 0 and self.sct == 0

    def describe(self) -> str:
        name = STATUS_NAMES.get((self.sct, self.sc), "status")
        return f"{name} (SCT {self.sct:#x} SC {self.sc:#04x})"


class CqWords(Protocol):
    """A completion queue as 32-bit words: each index is one load, never split."""

    def __getitem__(self, index: int, /) -> int: ...


@dataclass(frozen=True)
class Scratch:
    """Where memcpy may write: `blocks` logical blocks from `lba` of namespace `nsid`."""

    nsid: int
    lba: int
    blocks: int | None  # None: up to QEMU_SCRATCH_BYTES


def scratch_from_env(bdf: str, value: str | None) -> Scratch | None:
    """The scratch range `VFIO_SCENARIO_NVME_SCRATCH` names for `bdf`, None when it names
    another device or is unset; ValueError when malformed."""
    if not value:
        return None
    usage = f"{SCRATCH_ENV}: expected BDF,nsid=N,lba=START,blocks=COUNT, got {value!r}"
    name, *fields = [f.strip() for f in value.split(",")]
    keys: dict[str, int] = {}
    for f in fields:
        key, sep, number = f.partition("=")
        if not sep or key not in ("nsid", "lba", "blocks"):
            raise ValueError(usage)
        try:
            keys[key] = int(number, 0)
        except ValueError:
            raise ValueError(usage) from None
    if set(keys) != {"nsid", "lba", "blocks"} or keys["blocks"] <= 0 or keys["nsid"] <= 0:
        raise ValueError(usage)
    if _full_bdf(name) != _full_bdf(bdf):
        return None
    return Scratch(keys["nsid"], keys["lba"], keys["blocks"])


def _full_bdf(bdf: str) -> str:
    return bdf.lower() if bdf.count(":") == 2 else f"0000:{bdf.lower()}"


def _text(data: bytes) -> str:
    return data.decode("ascii", "replace").strip(" \0")


class QueuePair:
    """A submission queue and its completion queue in the driver's region.

    Completion entries are read the way the spec's phase-tag protocol needs when the
    controller writes the queue while the CPU reads it: DW3 (command id, phase tag,
    status) first, as one 32-bit load; DW2 and DW0 only once that phase tag is the
    current one.  x86 keeps loads in program order, so the later loads see the entry the
    phase tag belongs to and never an older one left in the slot from the previous lap.
    Words are read in the CPU's byte order, which is NVMe's little-endian on x86.
    """

    def __init__(self, mem: memoryview, doorbell: Callable[[int, int], None], bdf: str,
                 qid: int, sq: int, cq: int, entries: int) -> None:
        self.mem = mem
        self.ring = doorbell
        self.bdf = bdf
        self.qid = qid
        self.sq = sq  # offsets in the region
        self.cq = cq
        self.entries = entries
        self.tail = 0
        self.head = 0
        self.phase = 1
        self.cid = 0
        self.sq_head = 0  # the controller's SQ head, as its latest completion reported it
        self.outstanding: set[int] = set()  # submitted, completion not yet taken
        self.arrived: dict[int, Completion] = {}  # read while waiting for another command
        mem[sq:sq + PAGE] = bytes(PAGE)
        mem[cq:cq + PAGE] = bytes(PAGE)
        self.cq_words: CqWords = mem[cq:cq + entries * CQE.size].cast("I")

    def submit(self, opcode: int, nsid: int = 0, dptr: tuple[int, int] = (0, 0),
               cdw: tuple[int, ...] = (), flags: int = 0) -> int:
        """Write one entry and ring the tail doorbell; returns its command id.  EBUSY when
        the queue is full (the tail would reach the head the controller last reported)."""
        if (self.tail + 1) % self.entries == self.sq_head:
            raise DriverError(errno.EBUSY, "nvme.submit", self.bdf,
                              f"submission queue {self.qid} full ({self.entries - 1} commands "
                              f"not yet fetched)")
        cid = self._next_cid()
        words = (*cdw, 0, 0, 0, 0, 0, 0)[:6]
        SQE.pack_into(self.mem, self.sq + self.tail * SQE.size, opcode, flags >> 8,
                      cid, nsid, 0, dptr[0], dptr[1], *words)
        self.outstanding.add(cid)
        self.tail = (self.tail + 1) % self.entries
        self.ring(2 * self.qid, self.tail)
        return cid

    def _next_cid(self) -> int:
        """An id no outstanding command holds (ids are unique per queue); FFFFh is never
        used, the Error Information log page's "no command"."""
        while True:
            self.cid = (self.cid + 1) & 0xFFFF
            if self.cid != 0xFFFF and self.cid not in self.outstanding:
                return self.cid

    def poll(self) -> Completion | None:
        """The next entry the controller posted (its phase tag is the current one), else
        None.  The head doorbell is rung once the whole entry has been read."""
        word = self.head * (CQE.size // 4)
        dw3 = self.cq_words[word + 3]
        if (dw3 >> 16) & 1 != self.phase:
            return None
        dw2 = self.cq_words[word + 2]
        result = self.cq_words[word]
        self.head = (self.head + 1) % self.entries
        if self.head == 0:
            self.phase ^= 1
        self.sq_head = dw2 & 0xFFFF
        self.ring(2 * self.qid + 1, self.head)
        return Completion(result, dw2 & 0xFFFF, dw2 >> 16, dw3 & 0xFFFF, dw3 >> 17)

    def take(self, cid: int, op: str) -> Completion | None:
        """The completion of outstanding command `cid` once the controller posted it, else
        None.  Completions of other outstanding commands read meanwhile are kept for their
        own `take`; an entry naming a command that is not outstanding is EIO."""
        if cid not in self.outstanding:
            raise DriverError(errno.EINVAL, op, self.bdf,
                              f"command {cid} is not outstanding on queue {self.qid}")
        done = self.arrived.pop(cid, None)
        while done is None:
            entry = self.poll()
            if entry is None:
                return None
            if entry.cid not in self.outstanding or entry.cid in self.arrived:
                raise DriverError(errno.EIO, op, self.bdf,
                                  f"completion of command {entry.cid}, which is not "
                                  f"outstanding (waiting for {cid}; {entry.describe()}, "
                                  f"SQ head {entry.sqhd})")
            if entry.cid == cid:
                done = entry
            else:
                self.arrived[entry.cid] = entry
        self.outstanding.discard(cid)
        return done


class NvmeDriver(Driver):
    name = "nvme"
    status = Status.TESTBED
    region_size = REGION_SIZE
    max_memcpy_size = MAX_COPY  # declared; init sets the device's (MDTS, scratch range)
    max_memcpy_count = 1

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self.max_memcpy_size = 0  # until init finds a scratch range copies may write
        self._saved: dict[str, int] | None = None
        self._irq: IrqHandle | None = None
        self.admin: QueuePair | None = None
        self.io: QueuePair | None = None
        self.doorbell_stride = 4
        self.timeout = 0.5  # CAP.TO, seconds
        self.model = ""
        self.serial = ""
        self.identify = b""
        self.mdts_bytes: int | None = None
        self.sgl = False
        self.scratch: Scratch | None = None
        self.refusal = ""
        self.block_size = 0
        self._pending: tuple[int, int, int] | None = None  # (dst, size, cid of the Write)

    # ---- matching ----
    @classmethod
    def probe(cls, device: DeviceAccess) -> bool:
        """Any function whose class code is 01:08:02 (NVM Express I/O controller)."""
        return device.config_read(PCI_CLASS_REVISION, 4) >> 8 == CLASS_NVME

    # ---- registers ----
    def read64(self, offset: int) -> int:
        low = self.device.bar_read(0, offset, 4)
        return low | self.device.bar_read(0, offset + 4, 4) << 32

    def write64(self, offset: int, value: int) -> None:
        self.device.bar_write(0, offset, 4, value & 0xFFFFFFFF)
        self.device.bar_write(0, offset + 4, 4, value >> 32)

    def doorbell(self, index: int, value: int) -> None:
        self.device.bar_write(0, DOORBELLS + index * self.doorbell_stride, 4, value)

    def _csts(self) -> int:
        return self.device.bar_read(0, REG_CSTS, 4)

    def _set_enabled(self, enable: bool, op: str) -> None:
        cc = self.device.bar_read(0, REG_CC, 4)
        if enable:
            cc = CC_EN | CC_IOSQES | CC_IOCQES  # NVM command set, 4 KiB pages, round robin
        else:
            cc &= ~CC_EN
        self.device.bar_write(0, REG_CC, 4, cc)
        want = CSTS_RDY if enable else 0
        deadline = time.monotonic() + self.timeout
        self.poll(op, f"CSTS.RDY={int(enable)}",
                  lambda: self._csts() & CSTS_RDY == want or self._csts() == 0xFFFFFFFF,
                  deadline)
        csts = self._csts()
        if enable and csts & CSTS_CFS:
            raise DriverError(errno.EIO, op, self.device.bdf,
                              f"controller fatal status on enable (CSTS {csts:#x})")

    # ---- init / remove ----
    def init(self, msi_vector: int | None = 0) -> None:
        """Reset the controller into a fresh admin queue pair and Identify it."""
        dev = self.device
        region = self.dma
        if region.iova % PAGE:
            raise DriverError(errno.EINVAL, "nvme.init", dev.bdf, "DMA region not page aligned")
        command = dev.config_read(PCI_COMMAND, 2)
        self._saved = {"command": command, "cc": dev.bar_read(0, REG_CC, 4),
                       "aqa": dev.bar_read(0, REG_AQA, 4), "asq": self.read64(REG_ASQ),
                       "acq": self.read64(REG_ACQ)}
        dev.config_write(PCI_COMMAND, 2, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        cap = self.read64(REG_CAP)
        self.timeout = max(1, (cap >> 24) & 0xFF) * 0.5
        self.doorbell_stride = 4 << ((cap >> 32) & 0xF)
        if (cap >> 48) & 0xF:
            raise DriverError(errno.EOPNOTSUPP, "nvme.init", dev.bdf,
                              f"controller's minimum page size is {4096 << ((cap >> 48) & 0xF)}")
        entries = min(QUEUE_ENTRIES, (cap & 0xFFFF) + 1)
        try:
            self._set_enabled(False, "nvme.init")
            if msi_vector is not None:
                self._enable_msix(msi_vector)
            self.admin = QueuePair(region.mem, self.doorbell, dev.bdf, 0, ADMIN_SQ, ADMIN_CQ,
                                   entries)
            dev.bar_write(0, REG_AQA, 4, (entries - 1) << 16 | (entries - 1))
            self.write64(REG_ASQ, region.iova + ADMIN_SQ)
            self.write64(REG_ACQ, region.iova + ADMIN_CQ)
            self._set_enabled(True, "nvme.init")
            self._identify()
            if self.scratch is not None:
                self._create_io_queues(entries)
        except BaseException:
            self.remove()
            raise

    def _enable_msix(self, vector: int) -> None:
        if vector != 0:
            raise DriverError(errno.EINVAL, "nvme.init", self.device.bdf,
                              "the admin completion queue interrupts on MSI-X vector 0")
        if not isinstance(self.device, IrqControl) or self.device.irq_info("msix").count < 1:
            raise DriverError(errno.EOPNOTSUPP, "nvme.init", self.device.bdf, "no MSI-X")
        self._irq = self.device.enable_irq("msix", 1, 0)
        self.msi_vector = 0

    def _identify(self) -> None:
        data = self.dma.iova + DATA
        self.dma.mem[DATA:DATA + PAGE] = bytes(PAGE)
        self.admin_command("nvme.init", OPC_IDENTIFY, dptr=(data, 0), cdw=(CNS_CONTROLLER,))
        ident = bytes(self.dma.mem[DATA:DATA + PAGE])
        self.identify = ident
        self.serial = _text(ident[4:24])
        self.model = _text(ident[24:64])
        mdts = ident[77]
        self.mdts_bytes = PAGE << mdts if mdts else None
        sgls = int.from_bytes(ident[536:540], "little")
        self.sgl = bool(sgls & SGLS_SUPPORTED)
        self.scratch, self.refusal = self._scratch()
        if self.scratch is not None:
            self._identify_namespace(self.scratch)

    def _scratch(self) -> tuple[Scratch | None, str]:
        """The range memcpy may write, or why there is none."""
        try:
            named = scratch_from_env(self.device.bdf, os.environ.get(SCRATCH_ENV))
        except ValueError as e:
            return None, str(e)
        if named is not None:
            return named, ""
        ids = (self.device.vendor_id, self.device.device_id)
        if ids == QEMU_IDS and self.model == QEMU_MODEL:
            return Scratch(1, 0, None), ""
        return None, (f"memcpy writes the namespace and {self.device.bdf} ({self.model}) is "
                      f"not QEMU's emulated controller: name it and a scratch LBA range in "
                      f"{SCRATCH_ENV}=\"{self.device.bdf},nsid=N,lba=START,blocks=COUNT\"")

    def _identify_namespace(self, scratch: Scratch) -> None:
        data = self.dma.iova + DATA
        self.admin_command("nvme.init", OPC_IDENTIFY, nsid=scratch.nsid, dptr=(data, 0),
                           cdw=(CNS_NAMESPACE,))
        ns = bytes(self.dma.mem[DATA:DATA + PAGE])
        size = int.from_bytes(ns[0:8], "little")
        lbaf = int.from_bytes(ns[128 + 4 * (ns[26] & 0xF):132 + 4 * (ns[26] & 0xF)], "little")
        self.block_size = 1 << ((lbaf >> 16) & 0xFF)
        if size == 0 or self.block_size < 512:
            raise DriverError(errno.ENODEV, "nvme.init", self.device.bdf,
                              f"namespace {scratch.nsid} is not active")
        blocks = scratch.blocks or QEMU_SCRATCH_BYTES // self.block_size
        blocks = min(blocks, size - scratch.lba)
        if blocks <= 0:
            raise DriverError(errno.EINVAL, "nvme.init", self.device.bdf,
                              f"scratch LBA {scratch.lba} beyond namespace size {size}")
        self.scratch = Scratch(scratch.nsid, scratch.lba, blocks)
        limit = min(blocks * self.block_size, MAX_COPY, 0x10000 * self.block_size)
        if self.mdts_bytes is not None:
            limit = min(limit, self.mdts_bytes)
        self.max_memcpy_size = limit

    def _create_io_queues(self, entries: int) -> None:
        self.io = QueuePair(self.dma.mem, self.doorbell, self.device.bdf, 1, IO_SQ, IO_CQ,
                           entries)
        # CDW11: PC (physically contiguous), IEN clear: memcpy completions are polled and
        # raise no MSI, so the only MSI the driver causes is send_msi's (as in the selftests)
        self.admin_command("nvme.init", OPC_CREATE_IO_CQ, dptr=(self.dma.iova + IO_CQ, 0),
                           cdw=((entries - 1) << 16 | 1, 1))
        self.admin_command("nvme.init", OPC_CREATE_IO_SQ, dptr=(self.dma.iova + IO_SQ, 0),
                           cdw=((entries - 1) << 16 | 1, 1 << 16 | 1))

    def remove(self) -> None:
        """Disable the controller, free the MSI-X vector, restore what init changed."""
        saved, self._saved = self._saved, None
        self._pending = None
        self.admin = self.io = None
        if saved is not None:
            try:
                self._set_enabled(False, "nvme.remove")
            finally:
                dev = self.device
                dev.bar_write(0, REG_AQA, 4, saved["aqa"])
                self.write64(REG_ASQ, saved["asq"])
                self.write64(REG_ACQ, saved["acq"])
                dev.bar_write(0, REG_CC, 4, saved["cc"] & ~CC_EN)
                dev.config_write(PCI_COMMAND, 2, saved["command"])
        if self._irq is not None:
            self._irq.disable()
            self._irq = None
        self.msi_vector = None

    # ---- commands ----
    def _drain_irq(self) -> None:
        if self.msi_vector is not None:
            self.device.wait_irq(self.msi_vector, 0)

    def wait_for(self, queue: QueuePair, cid: int, op: str, deadline: float) -> Completion:
        """The completion of command `cid`; EIO when the controller stops being ready
        (a reset, a fatal status), ETIMEDOUT past the deadline."""
        while True:
            done = queue.take(cid, op)
            if done is not None:
                return done
            csts = self._csts()
            if csts & CSTS_CFS or not csts & CSTS_RDY:
                raise DriverError(errno.EIO, op, self.device.bdf,
                                  f"controller stopped (CSTS {csts:#x}): reset or fatal error")
            left = deadline - time.monotonic()
            if left <= 0:
                raise DriverError(errno.ETIMEDOUT, op, self.device.bdf,
                                  f"no completion of command {cid}")
            time.sleep(0.0005)

    def admin_command(self, op: str, opcode: int, nsid: int = 0,
                      dptr: tuple[int, int] = (0, 0), cdw: tuple[int, ...] = (),
                      keep_irq: bool = False) -> Completion:
        """Send an admin command and poll for its completion; EIO on an error status.
        The completion's MSI-X (when enabled) is consumed, or with `keep_irq` left on the
        eventfd for the caller."""
        if self.admin is None:
            raise DriverError(errno.EINVAL, op, self.device.bdf, "driver not initialized")
        cid = self.admin.submit(opcode, nsid, dptr, cdw)
        done = self.wait_for(self.admin, cid, op, time.monotonic() + self.timeout + 1.0)
        if self.msi_vector is not None and not keep_irq:
            # the MSI follows the completion entry: wait for it so none is left pending
            self.device.wait_irq(self.msi_vector, IRQ_SETTLE)
        if not done.ok:
            raise DriverError(errno.EIO, op, self.device.bdf,
                              f"admin opcode {opcode:#04x}: {done.describe()}")
        return done

    def _send_msi(self) -> None:
        """Get Features (Arbitration): changes nothing; its completion raises vector 0."""
        if self.msi_vector is None:
            raise DriverError(errno.EINVAL, "nvme.send_msi", self.device.bdf,
                              "init ran without an interrupt")
        self._drain_irq()
        self.admin_command("nvme.send_msi", OPC_GET_FEATURES, cdw=(FID_ARBITRATION,),
                           keep_irq=True)

    # ---- memcpy ----
    def memcpy_refusal(self) -> str:
        """After init: why memcpy is refused (no scratch range), "" when it is allowed."""
        return self.refusal if self.scratch is None and self.refusal else ""

    def check_memcpy(self, src: int, dst: int, size: int, count: int) -> None:
        """EPERM when no scratch range allows copies; then the declared limits."""
        if self.scratch is None:
            raise DriverError(errno.EPERM, "nvme.memcpy_start", self.device.bdf,
                              self.refusal or "driver not initialized")
        if self.block_size and size % self.block_size and not self.sgl:
            raise DriverError(errno.EINVAL, "nvme.memcpy_start", self.device.bdf,
                              f"size {size} is not a multiple of the {self.block_size}-byte "
                              f"block and the controller has no SGL support")
        super().check_memcpy(src, dst, size, count)

    def _data_pointer(self, iova: int, size: int, write: bool) -> tuple[tuple[int, int], int]:
        """(DPTR, CDW0 flags) addressing `size` bytes at `iova`, padded to whole blocks
        with the driver's pad page (zeros for a Write)."""
        padded = -(-size // self.block_size) * self.block_size
        if self.sgl:
            if padded == size:
                return self.sgl_pointer(iova, size, SGL_DATA_BLOCK), PSDT_SGL
            seg = self.dma.mem
            SGL_DESC.pack_into(seg, SGL_SEGMENT, iova, size, SGL_DATA_BLOCK)
            if write:
                seg[PAD:PAD + padded - size] = bytes(padded - size)
            SGL_DESC.pack_into(seg, SGL_SEGMENT + SGL_DESC.size, self.dma.iova + PAD,
                               padded - size, SGL_DATA_BLOCK)
            return (self.sgl_pointer(self.dma.iova + SGL_SEGMENT, 2 * SGL_DESC.size,
                              SGL_LAST_SEGMENT), PSDT_SGL)
        return self._prp(iova, size), 0

    @staticmethod
    def sgl_pointer(address: int, length: int, kind: int) -> tuple[int, int]:
        """The command's DPTR (two quadwords) holding one SGL descriptor."""
        raw = SGL_DESC.pack(address, length, kind)
        return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")

    def _prp(self, iova: int, size: int) -> tuple[int, int]:
        first = PAGE - iova % PAGE
        if size <= first:
            return iova, 0
        pages = [iova + first + i * PAGE for i in range(-(-(size - first) // PAGE))]
        if len(pages) == 1:
            return iova, pages[0]
        struct.pack_into(f"<{len(pages)}Q", self.dma.mem, PRP_LIST, *pages)
        return iova, self.dma.iova + PRP_LIST

    def _io(self, opcode: int, iova: int, size: int) -> int:
        assert self.io is not None and self.scratch is not None
        dptr, flags = self._data_pointer(iova, size, opcode == OPC_WRITE)
        blocks = -(-size // self.block_size)
        lba = self.scratch.lba
        return self.io.submit(opcode, self.scratch.nsid, dptr,
                              (lba & 0xFFFFFFFF, lba >> 32, blocks - 1), flags)

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Send the Write of `size` bytes at `src` to the scratch range."""
        self.check_memcpy(src, dst, size, count)
        if self._pending is not None:
            raise DriverError(errno.EBUSY, "nvme.memcpy_start", self.device.bdf,
                              "previous memcpy not waited for")
        self._pending = (dst, size, self._io(OPC_WRITE, src, size))

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Wait for the Write, then Read the blocks back into `dst`; EIO with the status
        (e.g. Data Transfer Error) when a command fails."""
        if self._pending is None or self.io is None:
            raise DriverError(errno.EINVAL, "nvme.memcpy_wait", self.device.bdf,
                              "no memcpy started")
        dst, size, cid = self._pending
        self._pending = None
        deadline = time.monotonic() + timeout
        self._check(self.wait_for(self.io, cid, "nvme.memcpy_wait", deadline), "Write")
        cid = self._io(OPC_READ, dst, size)
        self._check(self.wait_for(self.io, cid, "nvme.memcpy_wait", deadline), "Read")

    def _check(self, done: Completion, what: str) -> None:
        if not done.ok:
            raise DriverError(errno.EIO, "nvme.memcpy_wait", self.device.bdf,
                              f"{what}: {done.describe()}")
