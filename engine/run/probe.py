"""Probing this host for the planner: the uapi layer's capability report, as HostCaps.

Every answer comes from the kernel (vfio_scenario.uapi.capabilities opens each IOMMU
mode and, when the planner first needs it, each device, and asks); this module adds
what only the engine knows, the matching scenario driver of each device, and keeps
the reasons for what is missing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from vfio_scenario.drivers.base import Driver, Feature, registered_drivers
from vfio_scenario.errors import EnvironmentProblem, VfioError
from vfio_scenario.run.plan import DEVICE_FEATURES, DeviceCaps, HostCaps
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.capabilities import host_capabilities, preferred_mode, probe_device_in
from vfio_scenario.uapi.modes import IommuMode

PCI_DEVICES = Path("/sys/bus/pci/devices")


@dataclass
class _SysfsDevice:
    """Enough of DeviceAccess to match drivers before any device is opened."""

    bdf: str
    vendor_id: int
    device_id: int
    config: bytes

    def config_read(self, offset: int, width: int) -> int:
        return int.from_bytes(self.config[offset:offset + width], "little")

    def config_write(self, offset: int, width: int, value: int) -> None:
        raise OSError("no config writes while probing")

    def bar_read(self, bar: int, offset: int, width: int) -> int:
        raise OSError("no BAR access while probing")

    def bar_write(self, bar: int, offset: int, width: int, value: int) -> None:
        raise OSError("no BAR access while probing")

    def wait_irq(self, vector: int, timeout: float) -> int:
        return 0


def scenario_driver(bdf: str, drivers: dict[str, type[Driver]],
                    config: bytes | None = None) -> type[Driver] | None:
    """The registered driver whose probe accepts the device (by its config space)."""
    if config is None:
        config = sysfs.config_space(bdf)
    dev = _SysfsDevice(bdf, int.from_bytes(config[0:2], "little"),
                       int.from_bytes(config[2:4], "little"), config)
    for cls in drivers.values():
        try:
            if cls.probe(dev):
                return cls
        except OSError:
            # a driver that needs the BAR to decide (a GPU's architecture) is matched by
            # its ids here and decides for itself at driver_init
            if Driver.probe.__func__(cls, dev):  # type: ignore[attr-defined]
                return cls
    return None


def vfio_bound_devices() -> list[str]:
    """Functions bound to vfio-pci or one of its variant drivers."""
    found = []
    for entry in sorted(PCI_DEVICES.iterdir()) if PCI_DEVICES.exists() else []:
        if sysfs.vfio_driver(entry.name):
            found.append(entry.name)
    return found


def probe_host(devices: list[str] | None = None) -> HostCaps:
    """Describe this host; `devices` limits it to those BDFs (default: every VFIO-bound one).

    The host's IOMMU modes and features are probed now; each device's are probed when
    the planner first asks (DeviceCaps.feature), since opening a device can cost a
    reset. Identity, binding, group and scenario driver come from sysfs at once.
    """
    if devices:
        bdfs = [sysfs.normalize_bdf(b) for b in devices]
        absent = [b for b in bdfs if not (PCI_DEVICES / b).exists()]
        if absent:
            raise EnvironmentProblem(f"no PCI device {', '.join(absent)} on this host")
    else:
        bdfs = vfio_bound_devices()
    report = host_capabilities(())
    caps = HostCaps(
        kernel_release=report.kernel_release,
        iommu_modes={m.value: None if a else a.reason for m, a in report.iommu_modes.items()},
        features={n: None if a else a.reason for n, a in report.features.items()},
        kconfig=report.kconfig if report.kconfig_source else None,
        kconfig_source=report.kconfig_source,
    )
    mode = preferred_mode(report.iommu_modes)
    drivers = registered_drivers()
    for bdf in bdfs:
        try:
            config: bytes | None = sysfs.config_space(bdf)
        except VfioError:
            config = None
        cls = scenario_driver(bdf, drivers, config) if config else None
        try:
            group: str | None = str(sysfs.iommu_group(bdf))
        except VfioError:
            group = None
        caps.devices.append(DeviceCaps(
            bdf=bdf,
            vendor_id=int.from_bytes(config[0:2], "little") if config else 0,
            device_id=int.from_bytes(config[2:4], "little") if config else 0,
            vfio_driver=sysfs.bound_driver(bdf) or None, iommu_group=group,
            scenario_driver=cls.name if cls else None,
            no_send_msi=bool(cls and Feature.NO_SEND_MSI in cls.features),
            load_features=functools.partial(device_features, bdf, mode)))
    return caps


def device_features(bdf: str, mode: IommuMode | None) -> dict[str, str | None]:
    """The planner's device features of `bdf` (None or why not), from the kernel: the
    device is opened in `mode` and closed again."""
    probed = probe_device_in(bdf, mode)
    return {n: None if a else a.reason for n, a in probed.features.items()
            if n in DEVICE_FEATURES}
