"""Driver operations, dispatched to the device's scenario driver (drivers/)."""

from __future__ import annotations

import errno
import functools
import time
from typing import TYPE_CHECKING

from vfio_scenario.drivers.base import DmaRegion, Driver, Feature, driver_for
from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    DriverInit,
    DriverRemove,
    ExpectNoMsi,
    MemcpyStart,
    MemcpyStorm,
    MemcpyWait,
    SendMsi,
)
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.run.plan import NO_SEND_MSI_REASON
from vfio_scenario.uapi.buffers import Backing, DmaBuffer

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.uapi.device import VfioDevice

DEFAULT_WAIT = 5.0  # seconds for memcpy_wait without a step timeout (before the multiplier)
MSI_WITHIN = 1.0
NO_MSI_NOTE = "driver has no MSI: nothing to check"


def driver_of(rt: Runtime, name: str) -> Driver:
    drv = rt.drivers.get(name)
    if drv is None:
        raise VfioError(errno.ENODEV, "driver", name, "driver_init has not run on this device")
    return drv


@op(DriverInit)
def driver_init(rt: Runtime, args: DriverInit, step: Step) -> None:
    device: VfioDevice = rt.handle(args.device)
    cls = driver_for(device)
    if cls is None:
        raise Skip(f"no scenario driver for {device.bdf} "
                   f"({device.vendor_id:04x}:{device.device_id:04x})")
    # the driver's region is mapped once per device and case and kept across remove and
    # init, as the C fixture maps driver->region once for init_remove's ten cycles
    regions = rt.driver_regions
    region = regions.get(args.device)
    if cls.region_size and region is None:
        # memfd-backed, so that the driver's queues survive a handover (run/handover.py)
        buf = DmaBuffer(cls.region_size, Backing.MEMFD, name=f"{cls.name} region")
        rt.on_cleanup(f"{cls.name} driver region", buf.close)
        limit = 1 << cls.dma_mask_bits if cls.dma_mask_bits < 64 else None
        ioas = getattr(device.iommu, "ioas", None)
        if ioas is not None:
            # iommufd maps the memfd itself (IOMMU_IOAS_MAP_FILE): the mapping
            # IOMMU_IOAS_CHANGE_PROCESS can move to a successor
            iova = device.iommu.own_allocator().alloc(buf.size, limit=limit)
            mapping = ioas.map_file(buf.fd, 0, buf.size, iova)
        else:
            mapping = device.iommu.map_buffer(buf, limit=limit)
        # one of the case's live mappings (unmapped at its end; update_vaddr finds it)
        from vfio_scenario.run.ops.memory import MappingRun, live_mappings

        live_mappings(rt).add(rt, MappingRun(mapping.space, mapping.iova, 0, mapping.size,
                                             bytearray(b"\x01"), mapping.vaddr))
        region = regions[args.device] = DmaRegion(buf.mem, mapping.iova, buf.size)
    # the driver enables its own interrupt (MSI or MSI-X) on the vector it is given
    vector = None if args.irq == "none" else 0
    drv = cls(device, region)
    drv.init(vector)
    rt.drivers[args.device] = drv
    rt.on_cleanup(f"{cls.name} driver of {device.bdf}",
                  functools.partial(_remove_if_initialized, rt, args.device))


def _remove_if_initialized(rt: Runtime, name: str) -> None:
    drv = rt.drivers.pop(name, None)
    if drv is not None:
        drv.remove()


@op(DriverRemove)
def driver_remove(rt: Runtime, args: DriverRemove, step: Step) -> None:
    driver_of(rt, args.device)
    _remove_if_initialized(rt, args.device)


def _size(drv: Driver, size: int | str) -> int:
    return drv.max_memcpy_size if size == "max" else int(size)


@op(MemcpyStart)
def memcpy_start(rt: Runtime, args: MemcpyStart, step: Step) -> None:
    drv = driver_of(rt, args.device)
    refusal = drv.memcpy_refusal()
    if refusal and "EPERM" not in step.common.expect:
        # what the host lacks (a scratch range a copy may write) skips the case
        raise Skip(f"{drv.name} on {drv.device.bdf} makes no copies here: {refusal}")
    size = _size(drv, args.size)
    drv.check_memcpy(args.src, args.dst, size, args.count)
    drv.memcpy_start(args.src, args.dst, size, args.count)


@op(MemcpyWait)
def memcpy_wait(rt: Runtime, args: MemcpyWait, step: Step) -> None:
    drv = driver_of(rt, args.device)
    drv.memcpy_wait(timeout=(step.common.timeout or DEFAULT_WAIT) * rt.options.timeout_multiplier)


@op(SendMsi)
def send_msi(rt: Runtime, args: SendMsi, step: Step) -> None:
    drv = driver_of(rt, args.device)
    if Feature.NO_SEND_MSI in drv.features and "EOPNOTSUPP" not in step.common.expect:
        # the Falcon series' vfio_pci_driver_send_msi() answers -EOPNOTSUPP and the test
        # SKIPs; a step that expects EOPNOTSUPP gets the answer instead
        raise Skip(NO_SEND_MSI_REASON.format(driver=drv.name))
    drv.send_msi()
    within = MSI_WITHIN * rt.options.timeout_multiplier
    vector = drv.msi_vector or 0  # DSA signals on vector 1, most devices on 0
    if drv.device.wait_irq(vector, within) == 0:
        raise CheckFailed(f"send_msi: no MSI received on vector {vector}'s eventfd "
                          f"within {within:g}s")


@op(ExpectNoMsi)
def expect_no_msi(rt: Runtime, args: ExpectNoMsi, step: Step) -> None:
    drv = driver_of(rt, args.device)
    if Feature.NO_SEND_MSI in drv.features:
        # the series' ASSERT_NO_MSI(self) checks the flag first: no MSI, nothing to read
        rt.note(NO_MSI_NOTE)
        return
    if drv.msi_vector is None:
        raise CheckFailed("expect_no_msi: the driver runs without interrupts (driver_init irq: none)")
    got = drv.device.wait_irq(drv.msi_vector, args.within)
    if got:
        raise CheckFailed(f"{got} MSI(s) pending on the driver's vector {drv.msi_vector}, "
                          "expected none")


@op(MemcpyStorm)
def memcpy_storm(rt: Runtime, args: MemcpyStorm, step: Step) -> int:
    drv = driver_of(rt, args.device)
    size = _size(drv, args.size)
    count = drv.max_memcpy_count if args.count == "max" else int(args.count)
    drv.check_memcpy(args.src, args.dst, size, count)
    deadline = time.monotonic() + args.duration if args.duration is not None else None
    wait = DEFAULT_WAIT * rt.options.timeout_multiplier
    done = 0
    while True:
        drv.memcpy_start(args.src, args.dst, size, count)
        drv.memcpy_wait(timeout=wait)
        done += 1
        if args.iterations is not None and done >= args.iterations:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    return done
