"""PCI facts from sysfs: IOMMU group, VFIO cdev, bound driver, SR-IOV, config space."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from vfio_scenario.errors import VfioError

PCI_DEVICES = Path("/sys/bus/pci/devices")


def device_dir(bdf: str) -> Path:
    """The sysfs folder of a PCI function; VfioError(ENODEV) when absent."""
    path = PCI_DEVICES / bdf
    if not path.exists():
        raise VfioError(errno.ENODEV, "sysfs", bdf, f"{path} does not exist")
    return path


def normalize_bdf(bdf: str) -> str:
    """'00:03.0' → '0000:00:03.0' (sysfs and VFIO use the domain-qualified form)."""
    return bdf if bdf.count(":") == 2 else f"0000:{bdf}"


def iommu_group(bdf: str) -> int:
    """The IOMMU group number of a function; VfioError(ENODEV) when it has none."""
    link = device_dir(bdf) / "iommu_group"
    try:
        return int(os.path.basename(os.readlink(link)))
    except OSError:
        raise VfioError(errno.ENODEV, "iommu_group", bdf, "no IOMMU group") from None


def vfio_cdev_path(bdf: str) -> str:
    """/dev/vfio/devices/vfioN of a function bound to a VFIO driver with cdev support."""
    folder = device_dir(bdf) / "vfio-dev"
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        raise VfioError(errno.ENODEV, "vfio_cdev", bdf, f"no {folder}") from None
    if not names:
        raise VfioError(errno.ENODEV, "vfio_cdev", bdf, f"{folder} is empty")
    return f"/dev/vfio/devices/{names[0]}"


def bound_driver(bdf: str) -> str:
    """The name of the kernel driver the function is bound to, '' when unbound."""
    link = device_dir(bdf) / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return ""


def is_vfio_driver(name: str) -> bool:
    """Whether kernel driver `name` is vfio-pci or one of its variant drivers, which
    are named after their module (mlx5_vfio_pci, hisi_acc_vfio_pci, nvgrace_gpu_vfio_pci)."""
    return name == "vfio-pci" or name.endswith(("_vfio_pci", "-vfio-pci"))


def read_attr(bdf: str, name: str) -> str:
    """A sysfs attribute of the function, stripped; '' when absent or unreadable."""
    try:
        return (device_dir(bdf) / name).read_text().strip()
    except OSError:
        return ""


def sriov_totalvfs(bdf: str) -> int:
    """How many VFs the function can have (0: not an SR-IOV PF)."""
    value = read_attr(bdf, "sriov_totalvfs")
    return int(value) if value.isdigit() else 0


def set_sriov_numvfs(bdf: str, num_vfs: int) -> None:
    """Create (or with 0 remove) the PF's VFs through sysfs."""
    path = device_dir(bdf) / "sriov_numvfs"
    try:
        path.write_text(f"{num_vfs}\n")
    except OSError as e:
        raise VfioError(e.errno or 0, "sriov_numvfs", bdf) from None


def virtfn(pf_bdf: str, index: int) -> str:
    """The BDF of VF number `index` of a PF (its virtfnN link); ENODEV when absent."""
    link = device_dir(pf_bdf) / f"virtfn{index}"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        raise VfioError(errno.ENODEV, "virtfn", pf_bdf,
                        f"no VF {index} (is SR-IOV enabled with enough VFs?)") from None


def config_space(bdf: str) -> bytes:
    """The function's config space as sysfs shows it (256 or 4096 bytes for root)."""
    try:
        return (device_dir(bdf) / "config").read_bytes()
    except OSError as e:
        raise VfioError(e.errno or 0, "config", bdf) from None


def find_devices(vendor: int, device: int | None = None) -> list[str]:
    """BDFs of the functions with these ids, sorted."""
    found = []
    for entry in sorted(PCI_DEVICES.iterdir()) if PCI_DEVICES.exists() else []:
        try:
            v = int((entry / "vendor").read_text(), 16)
            d = int((entry / "device").read_text(), 16)
        except OSError:
            continue
        if v == vendor and (device is None or d == device):
            found.append(entry.name)
    return found
