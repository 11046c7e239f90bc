"""Memory operations: buffers, patterns, DMA mappings and what checks them."""

from __future__ import annotations

from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.language.compile import Step
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
from vfio_scenario.uapi.iommu import AddressSpace, Mapping
from vfio_scenario.uapi.patterns import Pattern


def space_of(rt: Runtime, args: MapDma | UnmapDma) -> AddressSpace:
    name = args.ioas if args.ioas is not None else args.iommu
    assert name is not None  # the model requires one of them
    space: AddressSpace = rt.handle(name)
    return space


def same_space(a: AddressSpace, b: AddressSpace) -> bool:
    """Whether two handles name one IOVA space (an iommufd and its default IOAS do)."""
    return a is b or getattr(a, "ioas", None) is b or getattr(b, "ioas", None) is a


def live_mappings(rt: Runtime) -> dict[int, Mapping]:
    """Mappings made by this case and not unmapped yet, by id (released at the case's end)."""
    found: dict[int, Mapping] = rt.state.setdefault("mappings", {})
    return found


@op("alloc_buffer")
def alloc_buffer(rt: Runtime, args: AllocBuffer, step: Step) -> DmaBuffer:
    buf = DmaBuffer(args.size, args.backing, name=step.handle or "buffer")
    rt.on_cleanup(f"buffer {buf.name}", buf.close)
    return buf


@op("fill")
def fill(rt: Runtime, args: Fill, step: Step) -> None:
    buf: DmaBuffer = rt.handle(args.buffer)
    buf.fill(Pattern(args.pattern, args.seed), args.offset, args.size)


@op("assert_pattern")
def assert_pattern(rt: Runtime, args: AssertPattern, step: Step) -> None:
    buf: DmaBuffer = rt.handle(args.buffer)
    pattern = Pattern(args.pattern, args.seed)
    bad = buf.check(pattern, args.offset, args.size)
    if bad is not None:
        at = args.offset + bad
        want = pattern.expected(bad + 1)[bad]
        raise CheckFailed(f"{args.buffer}[{at:#x}] is {buf.mem[at]:#04x}, expected {want:#04x} "
                          f"({pattern.kind} pattern, seed {args.seed})")


@op("assert_equal")
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


def last_iova(space: AddressSpace, size: int) -> int:
    """The highest page-aligned IOVA at which `size` bytes end inside the highest IOVA range."""
    top = max(r.last for r in space.iova_ranges())
    return (top + 1 - size) & ~(PAGE - 1)


@op("map_dma")
def map_dma(rt: Runtime, args: MapDma, step: Step) -> Mapping:
    space = space_of(rt, args)
    target: Any = rt.handle(args.buffer or args.mmio or args.dmabuf or "")
    size = target.size - args.offset if args.size is None else args.size
    iova = last_iova(space, size) if args.iova == "last" else args.iova
    assert not isinstance(iova, str)
    if args.buffer is not None:
        mapping = space.map_buffer(target, iova, args.offset, size, args.read, args.write)
    elif args.mmio is not None:
        iova = iova if iova is not None else space.alloc_iova(size)
        mapping = space.map(target.addr + args.offset, size, iova, args.read, args.write)
    else:
        # an iommufd maps files through its default IOAS; a type1 container cannot
        ioas: Any = getattr(space, "ioas", space)
        if not hasattr(ioas, "map_file"):
            raise VfioError(22, "map_dma", args.dmabuf or "",
                            "a DMABUF maps only into an iommufd IOAS (IOMMU_IOAS_MAP_FILE)")
        mapping = ioas.map_file(target.fd, args.offset, size, iova, args.read, args.write)
    live_mappings(rt)[id(mapping)] = mapping
    rt.on_cleanup("mapping", lambda: _unmap_if_live(rt, mapping))
    return mapping


def _unmap_if_live(rt: Runtime, mapping: Mapping) -> None:
    if live_mappings(rt).pop(id(mapping), None) is not None:
        try:
            mapping.unmap()
        except VfioError as exc:
            raise VfioError(exc.errno, exc.op, exc.handle,
                            f"unmapping {mapping.iova:#x}+{mapping.size:#x}") from None


@op("unmap_dma")
def unmap_dma(rt: Runtime, args: UnmapDma, step: Step) -> None:
    live = live_mappings(rt)
    if args.mapping is not None:
        mapping: Mapping = rt.handle(args.mapping)
        unmapped = mapping.unmap()
        live.pop(id(mapping), None)
    else:
        space = space_of(rt, args)
        if args.all:
            unmapped = space.unmap_all()
            for key in [k for k, m in live.items() if same_space(m.space, space)]:
                del live[key]
        else:
            assert args.iova is not None and args.size is not None
            unmapped = space.unmap(args.iova, args.size)
            start, end = args.iova, args.iova + args.size
            for key in [k for k, m in live.items() if same_space(m.space, space)
                        and start <= m.iova and m.iova + m.size <= end]:
                del live[key]
    if args.unmapped_size is not None and unmapped != args.unmapped_size:
        raise CheckFailed(f"unmapped {unmapped:#x} bytes, expected {args.unmapped_size:#x}")


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


@op("assert_unmapped")
def assert_unmapped(rt: Runtime, args: AssertUnmapped, step: Step) -> None:
    mapping, source, sizes = _leaves(rt, args.mapping)
    if sizes:
        raise CheckFailed(f"{mapping.iova:#x}+{format_size(mapping.size)} is still in the IOMMU "
                          f"page table ({source}): {_describe(sizes)}")


@op("assert_superpages")
def assert_superpages(rt: Runtime, args: AssertSuperpages, step: Step) -> None:
    mapping, source, sizes = _leaves(rt, args.mapping)
    covered = sum(sizes.values())
    wrong = [s for s in sizes if s < args.pgsize or (args.exact and s > args.pgsize)]
    if wrong or covered < mapping.size:
        raise CheckFailed(f"mapping {mapping.iova:#x}+{format_size(mapping.size)} is mapped as "
                          f"{_describe(sizes) or 'nothing'} ({source}), not only "
                          f"{format_size(args.pgsize)} {'pages' if args.exact else 'superpages'}")
