"""The QEMU command line of the testbed: q35, emulated Intel IOMMU, pinned PCI devices.

Every device has a fixed PCI address (addr=) so BDFs and IOMMU groups are the same on
every boot. Slots 1 and 2 of the root bus carry the testbed's own plumbing (9p root,
virtio-serial for the agent); the devices under test start at slot 3, in the order given.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.run.faultlog import QEMU_FAULTS_FILE

QEMU = "qemu-system-x86_64"
AGENT_PORT = "vfio-scenario.agent"
# a second agent on a port of its own: QEMU's socket chardev serves one connection at a
# time, and the first port belongs to whoever holds the VM (`testbed run --alongside`)
SIDE_PORT = "vfio-scenario.side"
FIRST_DEVICE_SLOT = 3

#: PCI ids init binds to vfio-pci, per device model.
MODEL_IDS = {"edu": "1234:11e8", "igb": "8086:10c9", "nvme": "1b36:0010"}
DEFAULT_DEVICES: tuple[str, ...] = ("edu", "edu", "igb", "nvme")
NVME_IMAGE_BYTES = 64 << 20
IOMMU_FAULTS_TAG = "iommufaults"


@dataclass(frozen=True)
class VmFiles:
    """Host files one VM uses: console log, agent socket, scratch disk images."""

    folder: Path

    @property
    def console(self) -> Path:
        return self.folder / "console.log"

    @property
    def agent_socket(self) -> Path:
        return self.folder / "agent.sock"

    @property
    def side_socket(self) -> Path:
        return self.folder / "side.sock"

    @property
    def iommu_dir(self) -> Path:
        """The folder the guest sees (read-only, uncached) at faultlog.QEMU_FAULTS_MOUNT."""
        return self.folder / "iommu"

    @property
    def iommu_faults(self) -> Path:
        """QEMU's log of the DMAR faults its intel-iommu raises (trace event vtd_dmar_fault)."""
        return self.iommu_dir / QEMU_FAULTS_FILE

    def nvme_image(self, index: int) -> Path:
        return self.folder / f"nvme{index}.img"


@functools.lru_cache(maxsize=1)
def qemu_binary() -> str:
    """Path of qemu-system-x86_64, or EnvironmentProblem naming the install script."""
    found = shutil.which(QEMU)
    if not found:
        raise EnvironmentProblem(f"{QEMU} is not installed; run scripts/install-host-packages")
    return found


@functools.lru_cache(maxsize=1)
def qemu_version() -> str:
    """QEMU's version number ("10.0.2")."""
    out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True,
                         check=False).stdout
    match = re.search(r"version (\d+\.\d+\.\d+)", out)
    if not match:
        raise EnvironmentProblem(f"cannot read the version of {qemu_binary()}: {out!r}")
    return match.group(1)


def bind_ids(devices: tuple[str, ...]) -> tuple[str, ...]:
    """PCI ids (vendor:device) to hand to vfio-pci for `devices`, without repeats."""
    return tuple(dict.fromkeys(MODEL_IDS[d] for d in devices))


def check_devices(devices: tuple[str, ...]) -> None:
    """Raise ValueError on an unknown device model or too many devices."""
    unknown = [d for d in devices if d not in MODEL_IDS]
    if unknown:
        raise ValueError(f"unknown testbed device {unknown[0]!r}; known: {sorted(MODEL_IDS)}")
    if FIRST_DEVICE_SLOT + len(devices) > 0x1F:
        raise ValueError(f"too many testbed devices ({len(devices)})")


def device_args(devices: tuple[str, ...], files: VmFiles) -> list[str]:
    """-device options for the devices under test, each at a pinned address."""
    args: list[str] = []
    for index, model in enumerate(devices):
        slot = FIRST_DEVICE_SLOT + index
        if model == "edu":
            args += ["-device", f"edu,addr={slot:#x}.0"]
        elif model == "igb":
            # behind its own root port: a secondary bus reset is then possible, and the
            # VFs (offset 0x80, stride 2) land on that bus too
            port = f"rp{index}"
            args += ["-device", f"pcie-root-port,id={port},chassis={index + 1},addr={slot:#x}.0",
                     "-device", f"igb,bus={port},addr=0x0,romfile="]
        elif model == "nvme":
            image = files.nvme_image(index)
            args += ["-drive", f"file={image},if=none,id=nvme{index},format=raw",
                     "-device", f"nvme,drive=nvme{index},serial=vfio{index},addr={slot:#x}.0"]
    return args


def prepare_scratch(devices: tuple[str, ...], files: VmFiles) -> None:
    """Create the raw images the nvme devices need (sparse files; removed with the VM)."""
    for index, model in enumerate(devices):
        if model == "nvme":
            with files.nvme_image(index).open("wb") as f:
                f.truncate(NVME_IMAGE_BYTES)


def fast_firmware() -> Path | None:
    """qboot, where the QEMU install ships it: a minimal firmware that jumps straight to
    the -kernel (q35 and QEMU's ACPI tables, the DMAR table included), skipping
    SeaBIOS's device scan and option ROMs; about half a second less per boot under TCG.
    None: boot with QEMU's default firmware (SeaBIOS)."""
    share = Path(qemu_binary()).resolve().parent.parent / "share" / "qemu"
    rom = share / "qboot.rom"
    return rom if rom.is_file() else None


def kernel_cmdline(extra: str = "") -> str:
    """The guest kernel's command line."""
    parts = [
        "console=ttyS0,115200", "quiet", "rdinit=/init",
        "panic=-1", "oops=panic",                  # a panic reboots, -no-reboot ends QEMU
        "intel_iommu=on", "vfio_pci.enable_sriov=1",
        "hugepagesz=2M", "hugepages=64", "hugepagesz=1G", "hugepages=1",
        "tsc=reliable", "no_timer_check", "random.trust_cpu=on",
    ]
    return " ".join(parts + ([extra] if extra else []))


def fault_log_args(files: VmFiles) -> list[str]:
    """QEMU logs every DMAR fault its intel-iommu raises (trace event vtd_dmar_fault, before
    the fault registers may drop one) to `files.iommu_faults`; a second 9p share at 00:01.1
    hands that folder, and only it, to the guest, without cache (vfio_scenario.run.faultlog)."""
    share = f"local,id={IOMMU_FAULTS_TAG},path={files.iommu_dir},security_model=none,readonly=on"
    device = f"virtio-9p-pci,fsdev={IOMMU_FAULTS_TAG},mount_tag={IOMMU_FAULTS_TAG},addr=0x1.1"
    return ["-trace", "enable=vtd_dmar_fault", "-D", str(files.iommu_faults),
            "-fsdev", share, "-device", device]


def command_line(*, accel: str, kernel: Path, initrd: Path, files: VmFiles,
                 devices: tuple[str, ...], memory: str = "4G", extra_cmdline: str = "",
                 firmware: Path | None = None) -> list[str]:
    """The full QEMU argv for one testbed VM (`firmware`: a -bios other than QEMU's)."""
    if accel == "kvm":
        accel_args = ["-accel", "kvm", "-cpu", "host", "-smp", "2",
                      "-machine", "q35,kernel-irqchip=split"]
    else:
        # -smp 2 under TCG panicked 2 boots of 45 in measurements; one CPU never did
        accel_args = ["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1",
                      "-machine", "q35"]
    return [
        qemu_binary(), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        *accel_args, "-m", memory, *(["-bios", str(firmware)] if firmware else []),
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", kernel_cmdline(extra_cmdline),
        "-chardev", f"file,id=console,path={files.console}", "-serial", "chardev:console",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=0x1.0,multifunction=on",
        *fault_log_args(files),
        "-device", "virtio-serial-pci,id=vser,addr=0x2.0",
        "-chardev", f"socket,id=agent,path={files.agent_socket},server=on,wait=off",
        "-device", f"virtserialport,bus=vser.0,chardev=agent,name={AGENT_PORT}",
        "-chardev", f"socket,id=side,path={files.side_socket},server=on,wait=off",
        "-device", f"virtserialport,bus=vser.0,chardev=side,name={SIDE_PORT}",
        *device_args(devices, files),
    ]
