"""What the iommufd selftests check of a mapping and of the memory behind it: the mock
domain's page table (IOMMU_TEST_OP_MD_CHECK_MAP), the IOVA the kernel chose for a map,
a map of a raw process address, and a buffer's memory partly removed from the process
(munmap) or its memfd truncated."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import MapDma, MockCheckMap, TruncateBuffer, UnmapBuffer
from vfio_scenario.run.interpreter import CheckFailed, Runtime
from vfio_scenario.run.ops import op
from vfio_scenario.run.ops.iommu import iommufd_of
from vfio_scenario.run.ops.iommufd import _object_id as object_id
from vfio_scenario.run.ops.memory import MappingRun, live_mappings, space_of
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi.buffers import DmaBuffer, unmap_range
from vfio_scenario.uapi.iommufd import Ioas

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.uapi.iommu import Mapping


@op(MockCheckMap)
def mock_check_map(rt: Runtime, args: MockCheckMap, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_check_map").fd
    iova, size, uptr = args.iova, args.size, 0
    if args.mapping is not None:
        mapping: Mapping = rt.handle(args.mapping)
        iova = mapping.iova if iova is None else iova
        size = mapping.size if size is None else size
        uptr = mapping.vaddr
    if args.buffer is not None:
        buffer: DmaBuffer = rt.handle(args.buffer)
        uptr = buffer.addr + args.offset
    if not uptr:
        raise CheckFailed(f"mapping `{args.mapping}` maps a file, not process memory: name "
                          "the memfd `buffer` whose pages it must map")
    assert iova is not None and size is not None  # the model requires them or a mapping
    mock.check_map(fd, object_id(rt, args.mock, "pt"), iova, size, uptr)


def map_address(rt: Runtime, args: MapDma, step: Step) -> Mapping:
    """`map_dma` of a raw process address (`address`) where the kernel picks the IOVA."""
    space = space_of(rt, args)
    if not isinstance(space, Ioas):
        raise VfioError(22, "map_dma", getattr(space, "handle", ""),
                        "`address` maps into an iommufd IOAS (`ioas:`)")
    assert args.size is not None  # the model requires it with `address`
    mapping = space.map(args.address or 0, args.size, None, args.read, args.write)
    space.note_taken(mapping.iova, mapping.size)  # the kernel placed it: never allocated
    live = live_mappings(rt)
    run = MappingRun(mapping.space, mapping.iova, 0, mapping.size, bytearray(b"\x01"),
                     mapping.vaddr)
    live.add(rt, run)
    if step.handle:
        live.name(mapping, run, 0)
    return mapping


def check_chosen_iova(args: MapDma, mapping: Mapping) -> None:
    """The IOVA the kernel chose for `mapping` against the step's `iova_align`,
    `iova_within` and `iova_outside` (the mapping stays: the case's end unmaps it)."""
    iova, end = mapping.iova, mapping.iova + mapping.size
    where = f"the kernel chose IOVA {iova:#x} for {mapping.size:#x} bytes"
    if args.iova_align is not None and iova % args.iova_align:
        raise CheckFailed(f"{where}: not a multiple of {args.iova_align:#x}")
    span = args.iova_within
    if span is not None and not (span.start <= iova and end - 1 <= span.last):
        raise CheckFailed(f"{where}: not within [{span.start:#x}, {span.last:#x}]")
    out = args.iova_outside
    if out is not None and iova < out.start + out.size and out.start < end:
        raise CheckFailed(f"{where}: it overlaps [{out.start:#x}, "
                          f"{out.start + out.size:#x})")


@op(UnmapBuffer)
def unmap_buffer(rt: Runtime, args: UnmapBuffer, step: Step) -> None:
    unmap_range(rt.handle(args.buffer), args.offset, args.size)


@op(TruncateBuffer)
def truncate_buffer(rt: Runtime, args: TruncateBuffer, step: Step) -> None:
    buffer: DmaBuffer = rt.handle(args.buffer)
    if buffer.fd < 0:
        raise CheckFailed(f"buffer `{args.buffer}` is {buffer.backing.value}, not a memfd: "
                          "only a memfd buffer has a file to truncate")
    try:
        os.ftruncate(buffer.fd, args.size)
    except OSError as e:
        raise VfioError(e.errno or 0, "ftruncate", buffer.name) from None
