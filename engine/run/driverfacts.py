"""The facts of the scenario driver serving each device, as its `init` sets them.

The kernel selftests read `driver->max_memcpy_size` after `vfio_pci_driver_init()`:
ioat, dsa and nvme learn their limits from the device.  Before a run compiles its
cases for real devices (templates read `driver.max_memcpy_size`), each device with a
scenario driver is opened, its driver inited and removed again, and the limits are
kept.  In the testbed this runs in the guest: `python -m vfio_scenario.run.driverfacts
BDF...` prints one JSON object per device.

A device whose driver cannot init here, or whose init reports no copies (an NVMe
controller without a scratch range), keeps its driver's declared limits: its cases
then meet the driver's own refusal when they run.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from vfio_scenario.drivers.base import DmaRegion, Driver, driver_for
from vfio_scenario.errors import VfioError
from vfio_scenario.language.devices import DeviceName, DriverFacts
from vfio_scenario.run.plan import DeviceCaps
from vfio_scenario.uapi.modes import IommuMode

# the IOMMU modes tried, in order, to open a device for its driver's init
MODES = (IommuMode.IOMMUFD, IommuMode.VFIO_TYPE1V2, IommuMode.IOMMUFD_COMPAT_TYPE1V2,
         IommuMode.VFIO_TYPE1, IommuMode.IOMMUFD_COMPAT_TYPE1)


def facts_after_init(cls: type[Driver], drv: Driver) -> DriverFacts:
    """The instance's limits after init, or the class's where init left none."""
    facts = drv.device_facts()
    if facts.max_memcpy_size <= 0 or facts.max_memcpy_count <= 0:
        return cls.facts()
    return facts


def driver_facts(bdf: str) -> tuple[DriverFacts | None, str]:
    """(facts of the driver serving `bdf`, "" or why they are the declared ones)."""
    from vfio_scenario.uapi.buffers import DmaBuffer
    from vfio_scenario.uapi.device import VfioDevice
    from vfio_scenario.uapi.iommu import open_iommu

    problem = "no IOMMU mode opens it"
    for mode in MODES:
        try:
            iommu = open_iommu(mode)
        except VfioError as exc:
            problem = str(exc)
            continue
        try:
            try:
                device = VfioDevice.open(iommu, bdf)
            except VfioError as exc:
                problem = str(exc)
                continue
            try:
                cls = driver_for(device)
                if cls is None:
                    return None, ""
                buf = DmaBuffer(cls.region_size, name=f"{cls.name} region") \
                    if cls.region_size else None
                mapping = None
                try:
                    region = None
                    if buf is not None:
                        limit = 1 << cls.dma_mask_bits if cls.dma_mask_bits < 64 else None
                        mapping = iommu.map_buffer(buf, limit=limit)
                        region = DmaRegion(buf.mem, mapping.iova, buf.size)
                    drv = cls(device, region)
                    try:
                        drv.init(0)
                    except VfioError as exc:
                        return cls.facts(), f"{cls.name} init failed: {exc}"
                    try:
                        return facts_after_init(cls, drv), ""
                    finally:
                        drv.remove()
                finally:
                    if mapping is not None:
                        mapping.unmap()
                    if buf is not None:
                        buf.close()
            finally:
                device.close()
        finally:
            iommu.close()
    return None, problem


def device_names(devices: list[DeviceCaps]) -> list[DeviceName]:
    """The host's devices as a run compiles for them: each BDF with its driver's facts."""
    return [DeviceName(d.bdf, driver_facts(d.bdf)[0] if d.scenario_driver else None)
            for d in devices]


def main(argv: list[str] | None = None) -> int:
    from vfio_scenario.drivers.base import use_drivers

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--drivers"]:
        use_drivers(json.loads(args[1]))
        args = args[2:]
    for bdf in args:
        out: dict[str, Any] = {"bdf": bdf}
        try:
            facts, why = driver_facts(bdf)
        except Exception as exc:  # noqa: BLE001 - a device that fails is reported, not fatal
            facts, why = None, f"{type(exc).__name__}: {exc}"
        out["driver"] = facts.to_dict() if facts is not None else None
        out["note"] = why
        sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
