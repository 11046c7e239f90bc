"""What this host's kernel offers, for the planner: IOMMU modes, uAPI features, kconfig.

Host-wide facts come from device nodes, sysfs and the kernel config; per-device facts
(interrupt types, reset, DMABUF export/mmap/revoke, SR-IOV) from opening each device
briefly.  Every "no" carries its reason, which becomes the skip reason of a case.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import debugfs, iommufd_mock, sysfs
from vfio_scenario.uapi.iommu import Iommu, open_iommu
from vfio_scenario.uapi.irq import IrqType
from vfio_scenario.uapi.kconfig import kernel_config
from vfio_scenario.uapi.modes import ALL_MODES, IommuMode

HOST_FEATURES = ("iommufd", "cdev", "hugetlb-2M", "hugetlb-1G", "iommu_debugfs", "iommufd_test")
DEVICE_FEATURES = ("dma_buf", "dma_buf_mmap", "dma_buf_revoke", "dma_buf_memattr", "msi", "msix",
                   "intx", "reset", "sriov")
HUGEPAGE_DIRS = {"hugetlb-2M": "hugepages-2048kB", "hugetlb-1G": "hugepages-1048576kB"}


@dataclass
class Availability:
    """Yes or no, and why not (or a detail such as "ioctl" for the revoke uAPI)."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


@dataclass
class HugePool:
    total: int
    free: int


@dataclass
class DeviceCapabilities:
    bdf: str
    vendor_id: int = 0
    device_id: int = 0
    vfio_driver: str = ""
    features: dict[str, Availability] = field(default_factory=dict)


@dataclass
class HostCapabilities:
    """The capability report.  `feature(name, bdf)` answers for host or device features."""

    kernel_release: str
    iommu_modes: dict[IommuMode, Availability]
    features: dict[str, Availability]
    hugetlb_pools: dict[str, HugePool]
    kconfig: dict[str, str]
    kconfig_source: str
    devices: dict[str, DeviceCapabilities]

    def modes(self) -> list[IommuMode]:
        """The IOMMU modes this host offers, in the selftests' order."""
        return [m for m in ALL_MODES if self.iommu_modes[m]]

    def feature(self, name: str, bdf: str | None = None) -> Availability:
        """A host feature, or a device feature of `bdf` (default: the first device)."""
        if name in self.features:
            return self.features[name]
        if name not in DEVICE_FEATURES:
            return Availability(False, f"unknown feature {name!r}")
        if bdf is None:
            if not self.devices:
                return Availability(False, "no device to probe")
            bdf = next(iter(self.devices))
        device = self.devices.get(sysfs.normalize_bdf(bdf))
        if device is None:
            return Availability(False, f"{bdf} was not probed")
        return device.features.get(name, Availability(False, "not probed"))

    def has_kconfig(self, name: str) -> Availability:
        """Whether CONFIG_name is y or m (unknowable without a readable config)."""
        if not self.kconfig_source:
            return Availability(False, "no /proc/config.gz or /boot/config-* to read")
        value = self.kconfig.get(name, "")
        if value in ("y", "m"):
            return Availability(True, value)
        return Availability(False, f"{name} is not set in {self.kconfig_source}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["iommu_modes"] = {m.value: asdict(a) for m, a in self.iommu_modes.items()}
        return data


def _probe_mode(mode: IommuMode) -> Availability:
    for path in (mode.container_path,) + (("/dev/vfio/devices",) if mode is IommuMode.IOMMUFD
                                          else ()):
        if not os.path.exists(path):
            return Availability(False, f"{path} does not exist")
    try:
        open_iommu(mode).close()
    except VfioError as e:
        return Availability(False, str(e))
    return Availability(True)


def _hugetlb(name: str) -> HugePool:
    folder = Path("/sys/kernel/mm/hugepages") / HUGEPAGE_DIRS[name]
    try:
        return HugePool(int((folder / "nr_hugepages").read_text()),
                        int((folder / "free_hugepages").read_text()))
    except OSError:
        return HugePool(0, 0)


def _host_features(modes: dict[IommuMode, Availability],
                   pools: dict[str, HugePool]) -> dict[str, Availability]:
    features = {
        "iommufd": (Availability(True) if os.path.exists("/dev/iommu")
                    else Availability(False, "/dev/iommu does not exist (CONFIG_IOMMUFD)")),
        "cdev": (Availability(True) if os.path.isdir("/dev/vfio/devices")
                 else Availability(False, "/dev/vfio/devices does not exist "
                                          "(CONFIG_VFIO_DEVICE_CDEV)")),
    }
    for name, pool in pools.items():
        features[name] = (Availability(True, f"{pool.free} of {pool.total} free") if pool.free
                          else Availability(False, f"{name} pool has {pool.free} free pages "
                                                   f"of {pool.total}"))
    ok, reason = debugfs.availability()
    features["iommu_debugfs"] = Availability(ok, reason)
    ok, reason = iommufd_mock.available()
    features["iommufd_test"] = Availability(ok, reason)
    return features


def probe_device(bdf: str, iommu: Iommu | None) -> DeviceCapabilities:
    """Open the device in `iommu` (when given) and ask the kernel what it can do."""
    from vfio_scenario.uapi.device import VfioDevice

    bdf = sysfs.normalize_bdf(bdf)
    caps = DeviceCapabilities(bdf, vfio_driver=sysfs.bound_driver(bdf))
    total = sysfs.sriov_totalvfs(bdf)
    caps.features["sriov"] = (Availability(True, f"{total} VFs") if total
                              else Availability(False, f"{bdf} is not an SR-IOV PF"))
    if iommu is None:
        reason = "no IOMMU mode available to open the device"
        caps.features.update({n: Availability(False, reason) for n in DEVICE_FEATURES
                              if n != "sriov"})
        return caps
    try:
        device = VfioDevice.open(iommu, bdf)
    except VfioError as e:
        caps.features.update({n: Availability(False, f"cannot open {bdf}: {e}")
                              for n in DEVICE_FEATURES if n != "sriov"})
        return caps
    try:
        caps.vendor_id, caps.device_id = device.vendor_id, device.device_id
        _probe_open_device(device, caps.features)
    finally:
        device.close()
    return caps


def _probe_open_device(device: Any, features: dict[str, Availability]) -> None:
    info = device.info()
    features["reset"] = (Availability(True) if "reset" in info.flag_names
                         else Availability(False, "VFIO_DEVICE_FLAGS_RESET is clear"))
    for name, kind in (("intx", IrqType.INTX), ("msi", IrqType.MSI), ("msix", IrqType.MSIX)):
        try:
            count = device.irq_info(kind).count
        except VfioError as e:
            features[name] = Availability(False, str(e))
            continue
        features[name] = (Availability(True, f"{count} vectors") if count
                          else Availability(False, f"{name} has 0 vectors"))
    features.update(_probe_dmabuf(device))


def _first_mmio_bar(device: Any) -> int | None:
    for bar in range(6):
        try:
            if device.region_info(bar).size and device.region_info(bar).mmappable:
                return bar
        except VfioError:
            continue
    return None


def _probe_dmabuf(device: Any) -> dict[str, Availability]:
    found: dict[str, Availability] = {}
    bar = _first_mmio_bar(device)
    if bar is None:
        reason = "the device has no mmappable BAR to export"
        return {n: Availability(False, reason) for n in ("dma_buf", "dma_buf_mmap")} | {
            "dma_buf_revoke": _revoke(device), "dma_buf_memattr": _memattr(device)}
    try:
        dmabuf = device.export_dmabuf(bar, [(0, 4096)])
    except VfioError as e:
        found["dma_buf"] = Availability(False, str(e))
        found["dma_buf_mmap"] = Availability(False, "no DMABUF export")
    else:
        found["dma_buf"] = Availability(True)
        try:
            dmabuf.mmap(0, 4096).close()
            found["dma_buf_mmap"] = Availability(True)
        except VfioError as e:
            found["dma_buf_mmap"] = Availability(False, f"mmap of a DMABUF: {e.errno_name}")
        dmabuf.close()
    found["dma_buf_revoke"] = _revoke(device)
    found["dma_buf_memattr"] = _memattr(device)
    return found


REVOKE_ABSENT = ("no DMABUF revoke uAPI: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (13) and "
                 "VFIO_DEVICE_PCI_DMABUF_REVOKE answer ENOTTY")
MEMATTR_ABSENT = ("no DMABUF mmap attribute uAPI: VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (14) "
                  "answers ENOTTY")


def _revoke(device: Any) -> Availability:
    method = device.revoke_support()
    if method is None:
        return Availability(False, REVOKE_ABSENT)
    return Availability(True, method)


def _memattr(device: Any) -> Availability:
    return Availability(True) if device.memattr_support() else Availability(False, MEMATTR_ABSENT)


def host_capabilities(bdfs: list[str] | tuple[str, ...] = ()) -> HostCapabilities:
    """Probe the host, and each device in `bdfs` (each opened and closed once)."""
    modes = {mode: _probe_mode(mode) for mode in ALL_MODES}
    pools = {name: _hugetlb(name) for name in HUGEPAGE_DIRS}
    kconfig, source = kernel_config()
    devices = {}
    chosen = preferred_mode(modes)
    for bdf in bdfs:
        caps = probe_device_in(bdf, chosen)
        devices[caps.bdf] = caps
    return HostCapabilities(os.uname().release, modes, _host_features(modes, pools), pools,
                            kconfig, source, devices)


def preferred_mode(modes: dict[IommuMode, Availability]) -> IommuMode | None:
    """The available mode devices are probed in: the cdev path first, as it exercises
    the newest uAPI; None when no mode works."""
    preference = [IommuMode.IOMMUFD, IommuMode.VFIO_TYPE1V2, IommuMode.IOMMUFD_COMPAT_TYPE1V2,
                  IommuMode.VFIO_TYPE1, IommuMode.IOMMUFD_COMPAT_TYPE1]
    return next((m for m in preference if modes.get(m)), None)


def probe_device_in(bdf: str, mode: IommuMode | None) -> DeviceCapabilities:
    """probe_device() in an IOMMU of `mode` opened for it and closed after."""
    iommu = open_iommu(mode) if mode else None
    try:
        return probe_device(bdf, iommu)
    finally:
        if iommu is not None:
            iommu.close()
