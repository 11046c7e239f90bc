"""The IOVA allocator stays inside the IOMMU's ranges and the DMA mask."""

from __future__ import annotations

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.iova import IovaAllocator, IovaRange

MiB = 1 << 20
# Intel VT-d with the MSI window reserved, as iommufd and type1 report it.
VTD = [IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, (1 << 48) - 1)]


def test_allocations_are_naturally_aligned_and_never_overlap() -> None:
    alloc = IovaAllocator(VTD)
    first = alloc.alloc(4096)
    second = alloc.alloc(2 * MiB)
    third = alloc.alloc(4096)
    assert first == 4096  # IOVA 0 is skipped
    assert second % (2 * MiB) == 0 and second >= first + 4096
    assert third >= second + 2 * MiB


def test_allocation_skips_a_range_without_room() -> None:
    alloc = IovaAllocator([IovaRange(0x1000, 0x1FFF), IovaRange(0x100000, 0x1FFFFF)])
    assert alloc.alloc(0x1000) == 0x1000
    assert alloc.alloc(0x1000) == 0x100000


def test_limit_honours_a_28_bit_dma_mask() -> None:
    alloc = IovaAllocator(VTD, limit=1 << 28)
    iova = alloc.alloc(128 * MiB)
    assert iova + 128 * MiB <= 1 << 28
    with pytest.raises(VfioError) as info:
        alloc.alloc(256 * MiB)
    assert info.value.errno_name == "ENOSPC"


def test_iova_range_size_and_containment() -> None:
    r = IovaRange(0x1000, 0x1FFF)
    assert r.size == 0x1000
    assert r.contains(0x1000, 0x1000)
    assert not r.contains(0x1800, 0x1000)


def test_allocation_steps_over_iovas_the_scenario_placed() -> None:
    a = IovaAllocator([IovaRange(0, (1 << 32) - 1)])
    a.reserve(0x10_0000, 0x10_0000)   # a map_dma at an explicit IOVA
    a.reserve(0x30_0000, 0x1000)
    got = [a.alloc(0x10_0000) for _ in range(3)]
    # natural alignment would give 0x100000, 0x200000, 0x300000: the first and the
    # third overlap what the scenario placed
    assert got == [0x20_0000, 0x40_0000, 0x50_0000]


def test_a_run_stops_below_a_placed_iova() -> None:
    a = IovaAllocator([IovaRange(0, (1 << 32) - 1)])
    a.reserve(0x5000, 0x1000)
    first, stride, n = a.alloc_run(0x1000, 100)
    assert (first, stride, n) == (0x1000, 0x1000, 4)  # 0x1000 … 0x4000
    assert a.alloc(0x1000) == 0x6000


def test_a_space_remembers_placed_iovas_until_its_allocator_exists() -> None:
    from vfio_scenario.uapi.iommu import AddressSpace

    class Space(AddressSpace):
        def iova_ranges(self) -> list[IovaRange]:
            return [IovaRange(0, (1 << 32) - 1)]

    early, late = Space(), Space()
    early.note_taken(0x1000, 0x1000)      # before any allocation: no allocator yet
    assert early.alloc_iova(0x1000) == 0x2000
    assert late.alloc_iova(0x1000) == 0x1000
    late.note_taken(0x2000, 0x1000)       # the allocator exists: reserved at once
    assert late.alloc_iova(0x1000) == 0x3000
