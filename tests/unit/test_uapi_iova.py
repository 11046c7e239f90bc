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
