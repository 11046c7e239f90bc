"""Device operations: open, info, config space, BARs, reset, interrupts, SR-IOV."""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    Access,
    BarMmap,
    BarRead,
    BarWrite,
    CloseDevice,
    ConfigRead,
    ConfigWrite,
    DeviceInfo,
    EnableSriov,
    ExpectIrq,
    ExpectNoIrq,
    IrqDisable,
    IrqEnable,
    IrqMask,
    IrqTrigger,
    IrqUnmask,
    OpenDevice,
    RegionInfo,
    Reset,
    SetVfToken,
)
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.uapi import regions, sysfs
from vfio_scenario.uapi._vfio import ffi
from vfio_scenario.uapi.container import Container
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.mmio import Mmio

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.uapi.irq import IrqSet

ENABLE_SRIOV_PARAM = "/sys/module/vfio_pci/parameters/enable_sriov"


def check_value(what: str, value: int, equals: int | None, mask: int | None, width: int) -> None:
    """The `equals`/`mask` check of a read: (value & mask) == equals."""
    if equals is None:  # (the models refuse a `mask` without `equals`)
        return
    got = value & mask if mask is not None else value
    if got != equals:
        digits = 2 * width
        masked = f" & {mask:#0{digits + 2}x} = {got:#0{digits + 2}x}" if mask is not None else ""
        raise CheckFailed(f"{what}: read {value:#0{digits + 2}x}{masked}, "
                          f"expected {equals:#0{digits + 2}x}")


def check_flags(what: str, have: list[str], want: list[str]) -> None:
    missing = [f for f in want if f not in have]
    if missing:
        raise CheckFailed(f"{what} lacks {', '.join(missing)} (has {', '.join(have) or 'none'})")


@op(OpenDevice)
def open_device(rt: Runtime, args: OpenDevice, step: Step) -> VfioDevice:
    bdf = args.bdf or rt.devices[0]
    if args.pf is not None and args.vf is not None:
        bdf = sysfs.virtfn(rt.handle(args.pf).bdf, args.vf)
    if args.ioas is not None:
        ioas = rt.handle(args.ioas)
        device = VfioDevice.open(ioas.iommufd, bdf, args.vf_token, ioas)
    else:
        device = VfioDevice.open(rt.handle(args.iommu or ""), bdf, args.vf_token)
    rt.on_cleanup(f"device {bdf}", device.close)
    return device


@op(DeviceInfo)
def device_info(rt: Runtime, args: DeviceInfo, step: Step) -> None:
    handle = rt.handle(args.device)
    # a cdev not bound yet is asked too: the kernel answers (it refuses before the bind)
    info = handle.info() if isinstance(handle, VfioDevice) else \
        regions.device_info(handle.fd, handle.bdf)
    check_flags("device flags", info.flag_names, list(args.flags_include))
    for name in ("num_regions", "num_irqs"):
        want = getattr(args, name)
        if want is not None and getattr(info, name) != want:
            raise CheckFailed(f"{name} is {getattr(info, name)}, expected {want}")


@op(RegionInfo)
def region_info(rt: Runtime, args: RegionInfo, step: Step) -> None:
    info = rt.handle(args.device).region_info(args.region)
    if args.size is not None and info.size != args.size:
        raise CheckFailed(f"region {args.region} size is {info.size:#x}, expected {args.size:#x}")
    check_flags(f"region {args.region} flags", info.flag_names, list(args.flags_include))
    check_flags(f"region {args.region} capabilities", info.cap_names, list(args.caps_include))


@op(ConfigRead)
def config_read(rt: Runtime, args: ConfigRead, step: Step) -> None:
    value = rt.handle(args.device).config_read(args.offset, args.width)
    check_value(f"config[{args.offset:#x}]", value, args.equals, args.mask, args.width)


@op(ConfigWrite)
def config_write(rt: Runtime, args: ConfigWrite, step: Step) -> None:
    rt.handle(args.device).config_write(args.offset, args.width, args.value)


@op(BarRead)
def bar_read(rt: Runtime, args: BarRead, step: Step) -> None:
    value = rt.handle(args.device).bar_read(args.bar, args.offset, args.width, args.via)
    check_value(f"bar{args.bar}[{args.offset:#x}]", value, args.equals, args.mask, args.width)


@op(BarWrite)
def bar_write(rt: Runtime, args: BarWrite, step: Step) -> None:
    rt.handle(args.device).bar_write(args.bar, args.offset, args.width, args.value, args.via)


@op(BarMmap)
def bar_mmap(rt: Runtime, args: BarMmap, step: Step) -> Mmio:
    device: VfioDevice = rt.handle(args.device)
    if args.misaligned:
        mmio = misaligned_bar_mmap(rt, device, args.bar, args.offset, args.size)
    else:
        mmio = device.mmap_bar(args.bar, args.offset, args.size)
    rt.on_cleanup(mmio.handle, mmio.close)
    return mmio


MISALIGN_BOUNDARY = 1 << 30  # the largest PFN-map page size a BAR mapping could use
PAGE = 4096


def misaligned_bar_mmap(rt: Runtime, device: VfioDevice, bar: int, offset: int,
                        size: int | None) -> Mmio:
    """A BAR mapping placed one page past a 1 GiB boundary, so no huge PFN map can fit.

    The kernel aligns BAR mmaps for huge PFN maps when it places them itself; this
    reserves address space, and maps the BAR over it with MAP_FIXED at the misaligned
    address (the uapi layer's mmap takes no address, hence libc here).
    """
    import ctypes
    import os

    from vfio_scenario.uapi._vfio import lib

    info = device.region_info(bar)
    size = info.size - offset if size is None else size
    if not info.mmappable:
        raise VfioError(errno.EINVAL, "mmap", device.bdf, f"region {bar} is not mmappable")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    span = size + 2 * MISALIGN_BOUNDARY
    map_noreserve, map_fixed = 0x4000, 0x10  # Linux values (not all in Python's mmap module)
    base = libc.mmap(None, span, lib.PROT_NONE,
                     lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | map_noreserve, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        raise VfioError(ctypes.get_errno(), "mmap", device.bdf, "address space reservation")
    rt.on_cleanup(f"reservation for {device.bdf} bar{bar}", lambda: libc.munmap(base, span))
    target = -(-base // MISALIGN_BOUNDARY) * MISALIGN_BOUNDARY + PAGE
    got = libc.mmap(target, size, lib.PROT_READ | lib.PROT_WRITE,
                    lib.MAP_SHARED | map_fixed, device.fd, info.offset + offset)
    if got != target:
        raise VfioError(ctypes.get_errno(), "mmap", device.bdf,
                        f"bar{bar} at {target:#x}: {os.strerror(ctypes.get_errno())}")
    mmio = Mmio.__new__(Mmio)  # adopt the mapping: same accessors and fault probe
    mmio.ptr = ffi.cast("uint8_t *", target)
    mmio.size, mmio.handle, mmio.addr = size, f"{device.bdf} bar{bar} (misaligned)", target
    return mmio


@op(Access)
def access(rt: Runtime, args: Access, step: Step) -> None:
    mmio: Mmio = rt.handle(args.mmio)
    if args.op_ == "write":
        assert args.value is not None
        mmio.write(args.offset, args.width, args.value)
        return
    value = mmio.read(args.offset, args.width)
    check_value(f"{args.mmio}[{args.offset:#x}]", value, args.equals, args.mask, args.width)


@op(Reset)
def reset(rt: Runtime, args: Reset, step: Step) -> None:
    rt.handle(args.device).reset()


@op(IrqEnable)
def irq_enable(rt: Runtime, args: IrqEnable, step: Step) -> IrqSet:
    irq: IrqSet = rt.handle(args.device).enable_irq(args.type, args.count, args.start)
    rt.on_cleanup(irq.handle, irq.disable)
    return irq


@op(IrqTrigger)
def irq_trigger(rt: Runtime, args: IrqTrigger, step: Step) -> None:
    rt.handle(args.irq).trigger(args.vector)


@op(IrqMask)
def irq_mask(rt: Runtime, args: IrqMask, step: Step) -> None:
    rt.handle(args.irq).mask(args.vector)


@op(IrqUnmask)
def irq_unmask(rt: Runtime, args: IrqUnmask, step: Step) -> None:
    rt.handle(args.irq).unmask(args.vector)


@op(IrqDisable)
def irq_disable(rt: Runtime, args: IrqDisable, step: Step) -> None:
    rt.handle(args.irq).disable()


def wait_interrupts(irq: Any, vector: int, count: int, within: float) -> int:
    """Interrupts received on `vector` within `within` seconds, stopping at `count`."""
    deadline = time.monotonic() + within
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got += irq.wait(vector, left)
    return got


@op(ExpectIrq)
def expect_irq(rt: Runtime, args: ExpectIrq, step: Step) -> None:
    within = args.within * rt.options.timeout_multiplier
    got = wait_interrupts(rt.handle(args.irq), args.vector, args.count, within)
    if got < args.count:
        raise CheckFailed(f"{got} interrupt(s) on vector {args.vector} within {within:g}s, "
                          f"expected {args.count}")


@op(ExpectNoIrq)
def expect_no_irq(rt: Runtime, args: ExpectNoIrq, step: Step) -> None:
    got = rt.handle(args.irq).wait(args.vector, args.within)
    if got:
        raise CheckFailed(f"{got} interrupt(s) on vector {args.vector} within {args.within:g}s, "
                          "expected none")


@op(EnableSriov)
def enable_sriov(rt: Runtime, args: EnableSriov, step: Step) -> None:
    device: VfioDevice | None = rt.handle(args.device) if args.device is not None else None
    bdf = device.bdf if device is not None else (args.bdf or rt.devices[0])
    try:
        total = sysfs.sriov_totalvfs(bdf)
    except OSError:
        total = 0
    if not total:
        raise Skip(f"{bdf} has no SR-IOV capability")
    try:
        with open(ENABLE_SRIOV_PARAM) as f:
            allowed = f.read().strip() == "Y"
    except OSError:
        allowed = False
    if not allowed:
        raise Skip(f"vfio-pci's enable_sriov parameter is not Y ({ENABLE_SRIOV_PARAM})")
    if args.vf_token is not None and device is not None:
        device.set_vf_token(args.vf_token)
    sysfs.set_sriov_numvfs(bdf, args.num_vfs)
    if args.num_vfs:
        rt.on_cleanup(f"SR-IOV VFs of {bdf}", lambda: sysfs.set_sriov_numvfs(bdf, 0))


@op(SetVfToken)
def set_vf_token(rt: Runtime, args: SetVfToken, step: Step) -> None:
    rt.handle(args.device).set_vf_token(args.vf_token)


@op(CloseDevice)
def close_device(rt: Runtime, args: CloseDevice, step: Step) -> None:
    """Close the device now, as the kernel selftest's device_cleanup() does: the device
    fd, and in a container mode its group (which leaves the container), unless another
    device of this case still holds that group. The handle keeps its BDF (`pf:` of a
    later `open_device` still names the closed PF's VFs); its later release is a no-op."""
    device: VfioDevice = rt.handle(args.device)
    device.close()
    group = device.group
    if group is None or not isinstance(device.iommu, Container):
        return
    others = [h for h in rt.handles.values() if isinstance(h, VfioDevice) and h is not device
              and h.fd >= 0 and h.group is group]
    if not others:
        device.iommu.release_group(device.bdf)
