"""Memory operations: buffers, patterns, DMA mappings and what checks them."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    AllocBuffer,
    AssertEqual,
    AssertPattern,
    AssertSuperpages,
    AssertUnmapped,
    Fill,
    MapDma,
    UnmapDma,
)
from vfio_scenario.language.units import format_size
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.iommufd import Ioas
from vfio_scenario.uapi.patterns import Pattern

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.uapi.iommu import AddressSpace, Mapping


def space_of(rt: Runtime, args: MapDma | UnmapDma) -> AddressSpace:
    name = args.space
    assert name is not None  # the unmap of a `mapping` asks its mapping instead
    space: AddressSpace = rt.handle(name)
    return space


def same_space(a: AddressSpace, b: AddressSpace) -> bool:
    """Whether two handles name one IOVA space (an iommufd and its default IOAS do)."""
    return a is b or getattr(a, "ioas", None) is b or getattr(b, "ioas", None) is a


@dataclass(eq=False)
class MappingRun:
    """The mappings one map_dma step made: `count` of `size` bytes at first + k * stride
    (a single map is a run of one); `live[k]` stays 1 while mapping k is mapped."""

    space: AddressSpace
    first: int
    stride: int
    size: int
    live: bytearray
    vaddr: int = 0  # the process address every mapping of the run maps (0: a file)

    def iova(self, k: int) -> int:
        return self.first + k * self.stride

    def drop_within(self, start: int, end: int) -> None:
        """Mark unmapped those lying wholly inside [start, end) (an unmap of that range)."""
        n = len(self.live)
        if self.stride <= 0:  # one IOVA for all (a fixed `iova:`)
            if start <= self.first and self.first + self.size <= end:
                self.live[:] = bytes(n)
            return
        lo = max(0, -(-(start - self.first) // self.stride))
        hi = min(n, (end - self.size - self.first) // self.stride + 1)
        if hi > lo:
            self.live[lo:hi] = bytes(hi - lo)

    def unmap_live(self) -> None:
        """Unmap what is still mapped, newest first, each on its own (the case's end);
        a failure does not stop the others, the first is raised at the end. Nothing is
        left to unmap once a step closed the iommufd (`close_iommu`): closing unmapped it."""
        if getattr(getattr(self.space, "iommufd", self.space), "fd", 0) < 0:
            return
        failed: list[tuple[int, VfioError]] = []
        end = len(self.live)
        while (top := self.live.rfind(1, 0, end)) >= 0:
            bottom = self.live.rfind(0, 0, top) + 1
            done, error, _ = self.space.unmap_many(self.iova(top), self.size, top - bottom + 1,
                                                   -self.stride)
            self.live[top - done + 1:top + 1] = bytes(done)
            end = bottom
            if error is not None:
                self.live[top - done] = 0
                failed.append((self.iova(top - done), error))
                end = top - done
        if failed:
            iova, exc = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise VfioError(exc.errno, exc.op, exc.handle,
                            f"unmapping {iova:#x}+{self.size:#x}{more}")


class LiveMappings:
    """The case's mappings not unmapped yet, as runs; each run is unmapped at the case's
    end (newest run first, like every handle). `handles` finds the run of a mapping a
    step named with `as:`."""

    def __init__(self) -> None:
        self.runs: list[MappingRun] = []
        self.handles: dict[int, tuple[Mapping, MappingRun, int]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled in a handover's successor: the mappings are new objects there
        self.__dict__.update(state)
        self.handles = {id(m): (m, run, k) for m, run, k in self.handles.values()}

    def add(self, rt: Runtime, run: MappingRun) -> None:
        self.runs.append(run)
        rt.on_cleanup("mapping", run.unmap_live)

    def name(self, mapping: Mapping, run: MappingRun, k: int) -> None:
        self.handles[id(mapping)] = (mapping, run, k)

    def drop(self, mapping: Mapping) -> None:
        """`mapping` (a step's handle) was unmapped."""
        found = self.handles.pop(id(mapping), None)
        if found is not None:
            found[1].live[found[2]] = 0

    def drop_space(self, space: AddressSpace, start: int = 0, end: int = 1 << 64) -> None:
        """What `space` mapped wholly inside [start, end) was unmapped."""
        for run in self.runs:
            if same_space(run.space, space):
                run.drop_within(start, end)
        self.runs = [run for run in self.runs if 1 in run.live]


Attempt = tuple[str, Any, str]  # (outcome, what the op made, message), as run_step has it
F = TypeVar("F", bound=Callable[..., Any])


def live_mappings(rt: Runtime) -> LiveMappings:
    """Mappings made by this case and not unmapped yet (released at the case's end)."""
    if rt.mappings is None:
        rt.mappings = LiveMappings()
    return rt.mappings


@op(AllocBuffer)
def alloc_buffer(rt: Runtime, args: AllocBuffer, step: Step) -> DmaBuffer:
    sweep = rt.fail_nth
    if sweep is not None and sweep.keeps(step, args):  # the sweep closes it at its end
        return sweep.buffer(step.index, lambda: _new_buffer(args, step))
    buf = _new_buffer(args, step)
    rt.on_cleanup(f"buffer {buf.name}", buf.close)
    return buf


def _new_buffer(args: AllocBuffer, step: Step) -> DmaBuffer:
    return DmaBuffer(args.size, args.backing, name=step.handle or "buffer", path=args.path,
                     align=args.align or 0, populate=args.populate)


@op(Fill)
def fill(rt: Runtime, args: Fill, step: Step) -> None:
    buf: DmaBuffer = rt.handle(args.buffer)
    buf.fill(Pattern(args.pattern, args.seed), args.offset, args.size)


@op(AssertPattern)
def assert_pattern(rt: Runtime, args: AssertPattern, step: Step) -> None:
    buf: DmaBuffer = rt.handle(args.buffer)
    pattern = Pattern(args.pattern, args.seed)
    bad = buf.check(pattern, args.offset, args.size)
    if bad is not None:
        at = args.offset + bad
        want = pattern.expected(bad + 1)[bad]
        what = f"byte pattern {pattern.kind:#04x}" if isinstance(pattern.kind, int) else \
            f"{pattern.kind} pattern, seed {args.seed}"
        raise CheckFailed(f"{args.buffer}[{at:#x}] is {buf.mem[at]:#04x}, expected {want:#04x} "
                          f"({what})")


@op(AssertEqual)
def assert_equal(rt: Runtime, args: AssertEqual, step: Step) -> None:
    a: DmaBuffer = rt.handle(args.a.buffer)
    b: DmaBuffer = rt.handle(args.b.buffer)
    bad = a.compare(args.a.offset, b, args.b.offset, args.size)
    if bad is not None:
        ia, ib = args.a.offset + bad, args.b.offset + bad
        raise CheckFailed(f"{args.a.buffer}[{ia:#x}] = {a.mem[ia]:#04x} but "
                          f"{args.b.buffer}[{ib:#x}] = {b.mem[ib]:#04x} "
                          f"(first difference of {format_size(args.size)} compared)")


PAGE = 4096
TYPE1_DMABUF = ("refused before any ioctl: a type1 container cannot map a DMABUF (only an "
                "iommufd IOAS can, with IOMMU_IOAS_MAP_FILE)")


def last_iova(space: AddressSpace, size: int) -> int:
    """The highest page-aligned IOVA at which `size` bytes end inside the highest IOVA range."""
    top = max(r.last for r in space.iova_ranges())
    return (top + 1 - size) & ~(PAGE - 1)


@op(MapDma)
def map_dma(rt: Runtime, args: MapDma, step: Step) -> Mapping:
    if args.flags or args.file:  # live update's forms (run/ops/liveupdate.py)
        from vfio_scenario.run.ops.liveupdate import map_dma_special

        return _chosen(args, map_dma_special(rt, args, step))
    if args.address is not None:  # a raw process address (run/ops/iommufd_check.py)
        from vfio_scenario.run.ops.iommufd_check import map_address

        return _chosen(args, map_address(rt, args, step))
    space = space_of(rt, args)
    target: Any = rt.handle(args.target)
    size = target.size - args.offset if args.size is None else args.size
    iova = last_iova(space, size) if args.iova == "last" else args.iova
    if args.iova_of is not None:  # where an earlier mapping was
        iova = rt.handle(args.iova_of).iova
    if iova == "auto":  # IOMMU_IOAS_MAP without FIXED_IOVA: the kernel's allocator picks
        if not isinstance(space, Ioas) or args.buffer is None:
            raise VfioError(errno.EINVAL, "map_dma", space.handle,
                            "`iova: auto` maps a buffer into an iommufd IOAS (`ioas:`)")
        mapping = space.map(target.addr + args.offset, size, None, args.read, args.write)
    elif args.buffer is not None:
        mapping = space.map_buffer(target, iova, args.offset, size, args.read, args.write)
    elif args.mmio is not None:
        iova = iova if iova is not None else space.alloc_iova(size)
        mapping = space.map(target.addr + args.offset, size, iova, args.read, args.write)
    else:
        # an iommufd maps files through its default IOAS; a type1 container cannot
        ioas: Any = getattr(space, "ioas", space)
        if not hasattr(ioas, "map_file"):
            # no kernel answer to report: the type1 uAPI has no call that takes a DMABUF
            raise Skip(TYPE1_DMABUF)
        mapping = ioas.map_file(target.fd, args.offset, size, iova, args.read, args.write)
    # placed by the scenario or the kernel (a DMABUF without `iova`): never allocated later
    if args.iova is not None or args.iova_of is not None or args.dmabuf is not None:
        space.note_taken(mapping.iova, mapping.size)
    live = live_mappings(rt)
    run = MappingRun(mapping.space, mapping.iova, 0, mapping.size, bytearray(b"\x01"),
                     mapping.vaddr)
    live.add(rt, run)
    if step.handle:
        live.name(mapping, run, 0)
    return _chosen(args, mapping)


def _chosen(args: MapDma, mapping: Mapping) -> Mapping:
    """The mapping, once the IOVA the kernel chose passed the step's checks (if any)."""
    if args.iova_align is None and args.iova_within is None and args.iova_outside is None:
        return mapping
    from vfio_scenario.run.ops.iommufd_check import check_chosen_iova

    check_chosen_iova(args, mapping)
    return mapping


# Repetitions a batched step hands to the C loop at a time: Python signal handlers (the
# step's timeout, Ctrl-C) run between two chunks.
CHUNK = 4096


def batches(operation: Callable[..., Any]) -> Callable[[F], F]:
    """Register the decorated function as `operation`'s batched `repeat:`, the attribute
    interpreter.run_step looks for: fn(rt, args, step) -> the deciding Attempt, or None
    to run the repetitions one by one."""

    def register(fn: F) -> F:
        operation.__dict__["repeat"] = fn
        return fn

    return register


def _repeat_target(rt: Runtime, args: MapDma) -> tuple[Any, Any, int, int | None] | None:
    """(IOVA space, buffer or BAR, size, fixed IOVA or None) of a map_dma that
    map_dma_repeat can batch; None for a DMABUF, flags, a file mapping, or a step that
    fails before mapping."""
    if args.dmabuf is not None or args.flags or args.file or args.address is not None \
            or args.iova_of is not None \
            or (args.iova_align, args.iova_within, args.iova_outside) != (None, None, None):
        return None
    try:
        space = space_of(rt, args)
        target: Any = rt.handle(args.buffer or args.mmio or "")
        size = target.size - args.offset if args.size is None else args.size
        if args.buffer is not None and (args.offset < 0 or size <= 0
                                        or args.offset + size > target.size):
            return None
        fixed = last_iova(space, size) if args.iova == "last" else args.iova
    except (VfioError, CheckFailed):
        return None
    assert not isinstance(fixed, str)
    return space, target, size, fixed


def _allocator_unless_fixed(space: Any, fixed: int | None, size: int) -> Any:
    """The space's IOVA allocator, or None for a fixed IOVA, which it notes as taken so
    that the allocator never hands it out (mapped or not, avoiding it costs nothing)."""
    if fixed is None:
        return space.own_allocator()
    space.note_taken(fixed, size)
    return None


@batches(map_dma)
def map_dma_repeat(rt: Runtime, args: MapDma, step: Step) -> Attempt | None:
    """All of a `repeat:`ed map_dma of a buffer or BAR in C loops: the same IOVAs, kernel
    calls, mapping records and outcome as the repetitions one by one (see
    interpreter.run_step). None (do them one by one) for a DMABUF, or when the step fails
    before mapping anything (a missing handle, a range outside the buffer)."""
    resolved = _repeat_target(rt, args)
    if resolved is None:
        return None
    space, target, size, fixed = resolved
    from vfio_scenario.uapi.iommu import Mapping

    expected = step.common.expect
    allocator = _allocator_unless_fixed(space, fixed, size)
    vaddr = target.addr + args.offset
    live = live_mappings(rt)
    # with `ok` not expected, the first repetition that maps decides the step
    chunk = CHUNK if "ok" in expected else 1
    left = step.common.repeat
    outcome: Attempt = ("ok", None, "")
    run: MappingRun | None = None
    while left:
        n = min(left, chunk)
        try:
            first, stride, n = (fixed, 0, n) if allocator is None else \
                allocator.alloc_run(size, n)
        except VfioError as exc:  # no IOVA left: this repetition's outcome
            left -= 1
            outcome = (exc.errno_name, None, str(exc))
            if outcome[0] not in expected:
                return outcome
            continue
        assert first is not None
        done, error = space.map_many(vaddr, size, first, stride, n, args.read, args.write)
        if done:
            run = MappingRun(space, first, stride, size, bytearray(b"\x01") * done, vaddr)
            live.add(rt, run)
            if "ok" not in expected:  # this one mapped: it decides the step
                return "ok", None, ""
            outcome = ("ok", None, "")
        if error is None:
            left -= n
            continue
        if allocator is not None:  # the failed repetition used its IOVA, the rest did not
            allocator.release_after(first + done * stride, size)
        left -= done + 1
        outcome = (error.errno_name, None, str(error))
        if outcome[0] not in expected:
            return outcome
    if outcome[0] == "ok" and run is not None:
        # the last repetition's mapping is the step's handle
        k = len(run.live) - 1
        mapping = Mapping(space, run.iova(k), size, vaddr)
        if step.handle:
            live.name(mapping, run, k)
        outcome = ("ok", mapping, "")
    return outcome



@op(UnmapDma)
def unmap_dma(rt: Runtime, args: UnmapDma, step: Step) -> None:
    if args.flags:  # VFIO_DMA_UNMAP_FLAG_VADDR (run/ops/liveupdate.py)
        from vfio_scenario.run.ops.liveupdate import unmap_dma_vaddr

        unmap_dma_vaddr(rt, args, step)
        return
    live = live_mappings(rt)
    if args.mapping is not None:
        mapping: Mapping = rt.handle(args.mapping)
        unmapped = mapping.unmap()
        live.drop(mapping)
    else:
        space = space_of(rt, args)
        if args.all:
            unmapped = space.unmap_all()
            live.drop_space(space)
        else:
            assert args.iova is not None and args.size is not None
            unmapped = space.unmap(args.iova, args.size)
            live.drop_space(space, args.iova, args.iova + args.size)
    if args.unmapped_size is not None and unmapped != args.unmapped_size:
        raise CheckFailed(f"unmapped {unmapped:#x} bytes, expected {args.unmapped_size:#x}")


@batches(unmap_dma)
def unmap_dma_repeat(rt: Runtime, args: UnmapDma, step: Step) -> Attempt | None:
    """All of a `repeat:`ed unmap_dma in one C loop: the same unmap, its `unmapped_size`
    check and its outcome, repetition after repetition (see interpreter.run_step)."""
    if args.flags:
        return None
    try:
        if args.mapping is not None:
            mapping: Mapping = rt.handle(args.mapping)
            space, iova, size = mapping.space, mapping.iova, mapping.size
        else:
            space = space_of(rt, args)
            iova, size = args.iova or 0, args.size or 0
    except CheckFailed:
        return None
    expected = step.common.expect
    live = live_mappings(rt)
    chunk = CHUNK if "ok" in expected else 1
    left = step.common.repeat
    outcome: Attempt = ("ok", None, "")
    while left:
        n = min(left, chunk)
        done, error, unmapped = space.unmap_many(iova, size, n, expect=args.unmapped_size,
                                                 unmap_all=args.all)
        if done or (error is None and done < n):  # at least one unmapped: forget them
            if args.mapping is not None:
                live.drop(mapping)
            else:
                live.drop_space(space, *((0, 1 << 64) if args.all else (iova, iova + size)))
        if error is None and done < n:
            message = f"unmapped {unmapped:#x} bytes, expected {args.unmapped_size:#x}"
            if expected == ("ok",):
                raise CheckFailed(message)
            return "check failed", None, message
        if done and "ok" not in expected:
            return "ok", None, ""
        left -= done
        outcome = ("ok", None, "")
        if error is not None:
            left -= 1
            outcome = (error.errno_name, None, str(error))
            if outcome[0] not in expected:
                return outcome
    return outcome



def _leaves(rt: Runtime, name: str) -> tuple[Mapping, str, dict[int, int]]:
    """(mapping, page-table source, page size → bytes of the mapping it maps); Skip where
    the IOMMU page tables cannot be read."""
    from vfio_scenario.uapi import debugfs

    mapping: Mapping = rt.handle(name)
    table = debugfs.page_table(rt.devices[0])
    if not table.available:
        raise Skip(f"IOMMU page tables not readable: {table.reason}")
    return mapping, table.source, table.page_sizes(mapping.iova, mapping.size)


def _describe(sizes: dict[int, int]) -> str:
    return ", ".join(f"{format_size(n)} in {format_size(s)} pages" for s, n in sorted(sizes.items()))


@op(AssertUnmapped)
def assert_unmapped(rt: Runtime, args: AssertUnmapped, step: Step) -> None:
    mapping, source, sizes = _leaves(rt, args.mapping)
    if sizes:
        raise CheckFailed(f"{mapping.iova:#x}+{format_size(mapping.size)} is still in the IOMMU "
                          f"page table ({source}): {_describe(sizes)}")


@op(AssertSuperpages)
def assert_superpages(rt: Runtime, args: AssertSuperpages, step: Step) -> None:
    mapping, source, sizes = _leaves(rt, args.mapping)
    covered = sum(sizes.values())
    wrong = [s for s in sizes if s < args.pgsize or (args.exact and s > args.pgsize)]
    if wrong or covered < mapping.size:
        raise CheckFailed(f"mapping {mapping.iova:#x}+{format_size(mapping.size)} is mapped as "
                          f"{_describe(sizes) or 'nothing'} ({source}), not only "
                          f"{format_size(args.pgsize)} {'pages' if args.exact else 'superpages'}")
