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


# The names vfio-pci and its variant drivers register (struct pci_driver .name, Linux
# 7.2 drivers/vfio/pci/), as /sys/bus/pci/drivers/ and a device's `driver` link spell
# them. Most are KBUILD_MODNAME, the module's file name with '-' made '_'
# (mlx5-vfio-pci.o → mlx5_vfio_pci); vfio-pci and xe-vfio-pci are literals with dashes,
# qat_vfio_pci a literal with underscores.
VFIO_PCI_DRIVERS = frozenset({
    "vfio-pci",              # vfio_pci.c
    "nvgrace_gpu_vfio_pci",  # nvgrace-gpu/main.c (KBUILD_MODNAME)
    "mlx5_vfio_pci",         # mlx5/main.c (KBUILD_MODNAME)
    "virtio_vfio_pci",       # virtio/main.c (KBUILD_MODNAME)
    "pds_vfio_pci",          # pds/pci_drv.c (KBUILD_MODNAME)
    "hisi_acc_vfio_pci",     # hisilicon/hisi_acc_vfio_pci.c (KBUILD_MODNAME)
    "xe-vfio-pci",           # xe/main.c
    "qat_vfio_pci",          # qat/main.c
    "ism_vfio_pci",          # ism/main.c (KBUILD_MODNAME)
})
PCI_DRIVERS = Path("/sys/bus/pci/drivers")
SYS_MODULE = Path("/sys/module")


def driver_key(name: str) -> str:
    """A kernel driver name compared the way a user may write it: `mlx5-vfio-pci`
    (Kconfig help, docs) and `mlx5_vfio_pci` (sysfs) are the same driver."""
    return name.strip().replace("-", "_")


def same_driver(a: str, b: str) -> bool:
    return bool(a) and driver_key(a) == driver_key(b)


def _holds_vfio_pci_core(name: str) -> bool:
    """The driver's module uses vfio_pci_core (a modular kernel lists it as a holder)."""
    try:
        module = os.path.basename(os.readlink(PCI_DRIVERS / name / "module"))
    except OSError:
        return False
    return (SYS_MODULE / "vfio_pci_core" / "holders" / module).exists()


def is_vfio_driver(name: str) -> bool:
    """Whether kernel driver `name` (as sysfs spells it) is vfio-pci or a variant driver:
    one of the names the kernel's own drivers register, or a module that holds
    vfio_pci_core (a variant this list does not know yet)."""
    return bool(name) and (name in VFIO_PCI_DRIVERS or _holds_vfio_pci_core(name))


def vfio_driver(bdf: str) -> str:
    """The VFIO driver the function is bound to, as sysfs spells it; '' when its driver
    is none or not a VFIO one. A function with a `vfio-dev` folder has a VFIO device
    registered (VFIO cdev), whatever its driver is called."""
    name = bound_driver(bdf)
    if not name:
        return ""
    if is_vfio_driver(name) or (PCI_DEVICES / bdf / "vfio-dev").is_dir():
        return name
    return ""


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
