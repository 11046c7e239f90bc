"""Live update, dirty tracking and low power operations (issue #22).

- `handover` hands the case's handles to a successor process (run/handover.py);
- `unmap_dma` / `map_dma` with `flags: [vaddr]`, `update_vaddr`: type1's VADDR update;
- `map_dma` with `file: true`: IOMMU_IOAS_MAP_FILE of a memfd buffer; `change_process`;
- `dirty_pages`, `dirty_bitmap`: type1's VFIO_IOMMU_DIRTY_PAGES;
- `low_power`, `expect_wakeup`: vfio-pci's LOW_POWER device features;
- `memcpy_stream`: a stream of driver copies, the last one possibly left in flight;
- `assert_locked_vm`: this process's locked memory, which the accounting moves.
"""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    AssertLockedVm,
    ChangeProcess,
    DirtyBitmap,
    DirtyPages,
    ExpectWakeup,
    Handover,
    LowPower,
    MemcpyStream,
    UpdateVaddr,
)
from vfio_scenario.language.units import format_size
from vfio_scenario.run.interpreter import CheckFailed, HandedOver, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.run.ops.memory import MappingRun, live_mappings, same_space, space_of
from vfio_scenario.uapi import liveupdate as lu
from vfio_scenario.uapi.container import Container
from vfio_scenario.uapi.iommu import Mapping
from vfio_scenario.uapi.iommufd import Iommufd

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.language.models import MapDma, UnmapDma
    from vfio_scenario.run.handover import Moved
    from vfio_scenario.uapi.device import VfioDevice

NO_VADDR_IOMMUFD = ("native iommufd has no VADDR update (VFIO_DMA_*_FLAG_VADDR are type1 "
                    "container flags); its live update is IOMMU_IOAS_CHANGE_PROCESS")
NO_DIRTY_IOMMUFD = ("native iommufd has no VFIO_IOMMU_DIRTY_PAGES (a type1 container "
                    "ioctl); its dirty tracking is IOMMU_HWPT_SET_DIRTY_TRACKING")


def _container(rt: Runtime, name: str, step: Step, why: str) -> Container:
    iommu = rt.handle(name)
    if not isinstance(iommu, Container):
        raise Skip(why)
    return iommu


def _no_vaddr_skip(container: Container, step: Step) -> None:
    """Skip a step that needs VFIO_UPDATE_VADDR where the container says it lacks it
    (iommufd's compat container); a step expecting an errno asks the kernel anyway."""
    if "ok" in step.common.expect and not lu.update_vaddr_supported(container):
        raise Skip(f"{container.mode.value}: VFIO_CHECK_EXTENSION(VFIO_UPDATE_VADDR) is 0 "
                   "(the container has no VADDR update)")


# ---- type1 VADDR ----------------------------------------------------------------------

def unmap_dma_vaddr(rt: Runtime, args: UnmapDma, step: Step) -> None:
    """`unmap_dma` with `flags: [vaddr]`: invalidate the process address of the mappings;
    their IOVAs, pages and the case's record of them stay."""
    if args.mapping is not None:
        mapping: Mapping = rt.handle(args.mapping)
        space: Any = mapping.space
        iova, size = mapping.iova, mapping.size
    else:
        space = space_of(rt, args)
        iova, size = args.iova or 0, args.size or 0
    if not isinstance(space, Container):
        raise Skip(NO_VADDR_IOMMUFD)
    _no_vaddr_skip(space, step)
    done = lu.unmap_vaddr(space, iova, size, unmap_all=args.all)
    if args.unmapped_size is not None and done != args.unmapped_size:
        raise CheckFailed(f"invalidated {done:#x} bytes, expected {args.unmapped_size:#x}")
    rt.note(f"{format_size(done)} of mappings keep their IOVAs without a process address")


def map_dma_special(rt: Runtime, args: MapDma, step: Step) -> Mapping:
    """`map_dma` with `flags: [vaddr]` (a new address for an invalidated mapping) or with
    `file: true` (IOMMU_IOAS_MAP_FILE of a memfd buffer)."""
    space = space_of(rt, args)
    buf: Any = rt.handle(args.buffer or "")
    size = buf.size - args.offset if args.size is None else args.size
    if args.flags:
        if not isinstance(space, Container):
            raise Skip(NO_VADDR_IOMMUFD)
        _no_vaddr_skip(space, step)
        assert isinstance(args.iova, int)
        vaddr = buf.addr + args.offset
        lu.map_vaddr(space, vaddr, args.iova, size)
        _set_vaddr(rt, space, args.iova, vaddr)
        return Mapping(space, args.iova, size, vaddr)
    ioas: Any = getattr(space, "ioas", space)
    if not hasattr(ioas, "map_file"):
        raise Skip("a type1 container cannot map a file: IOMMU_IOAS_MAP_FILE is iommufd's")
    if buf.fd < 0:
        raise CheckFailed(f"buffer {args.buffer} is {buf.backing.value}, not a memfd: "
                          "`file: true` maps a memfd buffer")
    iova = args.iova if isinstance(args.iova, int) else None
    if args.iova_of is not None:  # where an earlier mapping was
        iova = rt.handle(args.iova_of).iova
    mapping: Mapping = ioas.map_file(buf.fd, args.offset, size, iova, args.read, args.write)
    run = MappingRun(mapping.space, mapping.iova, 0, mapping.size, bytearray(b"\x01"), 0)
    live = live_mappings(rt)
    live.add(rt, run)
    if step.handle:
        live.name(mapping, run, 0)
    return mapping


def _set_vaddr(rt: Runtime, space: Any, iova: int, vaddr: int) -> None:
    for run in live_mappings(rt).runs:
        if same_space(run.space, space) and run.stride == 0 and run.first == iova:
            run.vaddr = vaddr


def moved(rt: Runtime) -> Moved:
    """What the last handover moved (the successor's record); CheckFailed before one."""
    if rt.moved is None:
        raise CheckFailed("no handover has happened in this case: nothing moved")
    return rt.moved


@op(UpdateVaddr)
def update_vaddr(rt: Runtime, args: UpdateVaddr, step: Step) -> None:
    """VFIO_DMA_MAP_FLAG_VADDR for every live mapping of `iommu` whose memory moved."""
    container = _container(rt, args.iommu, step, NO_VADDR_IOMMUFD)
    _no_vaddr_skip(container, step)
    where = moved(rt)
    updated = 0
    for run in live_mappings(rt).runs:
        if not same_space(run.space, container) or not run.vaddr:
            continue
        new = where.translate(run.vaddr)
        if new is None:
            continue
        for k in range(len(run.live)):
            if run.live[k]:
                lu.map_vaddr(container, new, run.iova(k), run.size)
                updated += 1
        run.vaddr = new
    if not updated:
        raise CheckFailed("no mapping of the case lies in memory the handover moved")
    rt.note(f"{updated} mapping(s) got their new process address")


# ---- iommufd CHANGE_PROCESS ------------------------------------------------------------

@op(ChangeProcess)
def change_process(rt: Runtime, args: ChangeProcess, step: Step) -> None:
    iommu = rt.handle(args.iommu)
    if not isinstance(iommu, Iommufd):
        raise Skip(f"{iommu.mode.value}: IOMMU_IOAS_CHANGE_PROCESS is an ioctl of native "
                   "iommufd (/dev/iommu with IOAS objects)")
    lu.change_process(iommu, args.reserved)


def locked_vm() -> int:
    """VmLck of this process, in bytes (type1 charges mm->locked_vm)."""
    from vfio_scenario.uapi.process import status_bytes

    return status_bytes("VmLck")


def pinned_vm() -> int:
    """VmPin of this process, in bytes (iommufd adds mm->pinned_vm)."""
    from vfio_scenario.uapi.process import status_bytes

    return status_bytes("VmPin")


def _bytes(n: int) -> str:
    return format_size(n) if n >= 0 else f"-{format_size(-n)}"


@op(AssertLockedVm)
def assert_locked_vm(rt: Runtime, args: AssertLockedVm, step: Step) -> None:
    """This process's (or, `of: parent`, its parent's) locked plus pinned memory within
    the bounds, or each exactly: type1 charges locked_vm, iommufd pinned_vm (both per
    mm) and, in IOMMUFD's MM accounting mode, locked_vm too."""
    from vfio_scenario.uapi import process

    pid: int | str = process.parent_pid() if args.of == "parent" else "self"
    lck, pin = process.status_bytes("VmLck", pid), process.status_bytes("VmPin", pid)
    have = lck + pin
    whose = f"the parent (pid {pid})" if args.of == "parent" else "this process"
    what = f"VmLck {_bytes(lck)} + VmPin {_bytes(pin)}"
    if args.at_least is not None and have < args.at_least:
        raise CheckFailed(f"{whose} has {what}, expected at least "
                          f"{format_size(args.at_least)}")
    if args.at_most is not None and have > args.at_most:
        raise CheckFailed(f"{whose} has {what}, expected at most "
                          f"{format_size(args.at_most)}")
    for field, value, want in (("VmLck", lck, args.locked), ("VmPin", pin, args.pinned)):
        if want is not None and value != want:
            raise CheckFailed(f"{whose} has {field} {_bytes(value)}, expected "
                              f"{format_size(want)} ({what})")
    rt.note(f"{whose}: {what}")


# ---- type1 dirty pages ------------------------------------------------------------------

@op(DirtyPages)
def dirty_pages(rt: Runtime, args: DirtyPages, step: Step) -> None:
    container = _container(rt, args.iommu, step, NO_DIRTY_IOMMUFD)
    (lu.dirty_start if args.action == "start" else lu.dirty_stop)(container)


@op(DirtyBitmap)
def dirty_bitmap(rt: Runtime, args: DirtyBitmap, step: Step) -> None:
    container = _container(rt, args.iommu, step, NO_DIRTY_IOMMUFD)
    bitmap = lu.dirty_bitmap(container, args.iova, args.size, args.pgsize, args.bitmap_size)
    pages = args.size // args.pgsize if args.pgsize else 0
    got = [k for k in range(min(pages, 8 * len(bitmap))) if bitmap[k // 8] >> (k % 8) & 1]
    extra = [k for k in range(pages, 8 * len(bitmap)) if bitmap[k // 8] >> (k % 8) & 1]
    if extra:
        raise CheckFailed(f"bits beyond the range's {pages} pages are set: {_ranges(extra)}")
    if args.dirty is None:
        rt.note(f"dirty pages: {_ranges(got) or 'none'} of {pages}")
        return
    want = list(range(pages)) if args.dirty == "all" else [] if args.dirty == "none" \
        else sorted(set(args.dirty))
    if got != want:
        raise CheckFailed(f"dirty pages {_ranges(got) or 'none'} of {pages}, expected "
                          f"{_ranges(want) or 'none'}")
    rt.note(f"dirty pages: {_ranges(got) or 'none'} of {pages}")


def _ranges(pages: list[int]) -> str:
    """[0, 1, 2, 5] → "0-2, 5"."""
    spans: list[list[int]] = []
    for k in pages:
        if spans and k == spans[-1][1] + 1:
            spans[-1][1] = k
        else:
            spans.append([k, k])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# ---- vfio-pci low power ----------------------------------------------------------------

def _wakeups(rt: Runtime) -> dict[str, int]:
    return rt.wakeups


@op(LowPower)
def low_power(rt: Runtime, args: LowPower, step: Step) -> None:
    device: VfioDevice = rt.handle(args.device)
    if args.action == "entry":
        lu.low_power_entry(device)
    elif args.action == "exit":
        lu.low_power_exit(device)
    else:
        fd = args.wakeup_fd
        if fd is None:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            rt.on_cleanup(f"wakeup eventfd of {device.bdf}", lambda: os.close(fd))
            _wakeups(rt)[args.device] = fd
        lu.low_power_entry_with_wakeup(device, fd)


@op(ExpectWakeup)
def expect_wakeup(rt: Runtime, args: ExpectWakeup, step: Step) -> None:
    fd = _wakeups(rt).get(args.device)
    if fd is None:
        raise CheckFailed(f"no low_power entry_with_wakeup of {args.device} made an eventfd")
    within = args.within * rt.options.timeout_multiplier
    ready, _, _ = select.select([fd], [], [], within if args.signalled else args.within)
    count = os.eventfd_read(fd) if ready else 0
    if args.signalled and not count:
        raise CheckFailed(f"the wakeup eventfd of {args.device} was not signalled within "
                          f"{within:g}s")
    if not args.signalled and count:
        raise CheckFailed(f"the wakeup eventfd of {args.device} was signalled ({count})")


# ---- driver stream ---------------------------------------------------------------------

@op(MemcpyStream)
def memcpy_stream(rt: Runtime, args: MemcpyStream, step: Step) -> int:
    from vfio_scenario.run.ops.driver import DEFAULT_WAIT, driver_of

    drv = driver_of(rt, args.device)
    refusal = drv.memcpy_refusal()
    if refusal:
        raise Skip(f"{drv.name} on {drv.device.bdf} makes no copies here: {refusal}")
    stride = args.size if args.stride is None else args.stride
    wait = DEFAULT_WAIT * rt.options.timeout_multiplier
    last = args.first + args.count - 1
    for k in range(args.first, last + 1):
        drv.check_memcpy(args.src + k * stride, args.dst + k * stride, args.size, 1)
        drv.memcpy_start(args.src + k * stride, args.dst + k * stride, args.size, 1)
        if k == last and args.leave_pending:
            break
        drv.memcpy_wait(timeout=wait)
    rt.note(f"{args.count} copies of {format_size(args.size)}"
            + (", the last still in flight" if args.leave_pending else ""))
    return args.count


# ---- handover ----------------------------------------------------------------------------

@op(Handover)
def handover(rt: Runtime, args: Handover, step: Step) -> None:
    from vfio_scenario.drivers.base import registered_drivers
    from vfio_scenario.run import guest_models
    from vfio_scenario.run import handover as ho

    if rt.result is None or rt.options.event_fd < 0:
        raise VfioError(errno.EOPNOTSUPP, "handover", "case",
                        "this case does not run in its own process with an event pipe "
                        "(the handover needs the executor's forked case process)")
    drivers = {name: f"{cls.__module__}:{cls.__qualname__}"
               for name, cls in registered_drivers().items()}
    # "models" first: the successor installs the guest's models before it reads the rest
    payload = {"models": guest_models.for_handover(), "rt": rt, "result": rt.result, "next": step.index + 1, "step": step,
               "t_start": ho.now(), "event_fd": rt.options.event_fd, "drivers": drivers,
               "predecessor": rt.process or f"predecessor (pid {os.getpid()})",
               "stays": args.predecessor == "stays"}
    try:
        proc, _ready = ho.spawn(payload, [rt.options.event_fd])
    except ho.HandoverError as exc:
        raise VfioError(errno.EIO, "handover", "successor", str(exc)) from None
    rt.handover = HandedOver(proc.pid, proc.wait if args.predecessor == "stays" else None)
