"""IOVA allocation within the ranges the IOMMU reports."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from vfio_scenario.errors import VfioError

PAGE = 4096
MAX_NATURAL_ALIGN = 1 << 30


@dataclass(frozen=True)
class IovaRange:
    """An inclusive range of usable IOVAs, as both type1 and iommufd report them."""

    start: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.start + 1

    def contains(self, iova: int, size: int) -> bool:
        return self.start <= iova and iova + size - 1 <= self.last


def _natural_align(size: int) -> int:
    """The largest power of two ≤ size, between a page and 1 GiB.

    Aligning a mapping to its own size lets the IOMMU use superpages for it.
    """
    align = PAGE
    while align * 2 <= min(size, MAX_NATURAL_ALIGN):
        align *= 2
    return align


class IovaAllocator:
    """Hands out non-overlapping IOVAs inside the reported ranges, lowest first.

    `limit` (exclusive) honours a device's DMA mask: edu drives 28 address bits.
    Freed space is not reused: scenarios are short and a bump allocator keeps every
    IOVA of a case distinct, which makes a stale mapping's fault visible.
    """

    def __init__(self, ranges: list[IovaRange], limit: int | None = None) -> None:
        self.ranges = sorted(ranges, key=lambda r: r.start)
        self.limit = limit
        self._next = {r.start: r.start for r in self.ranges}

    def alloc(self, size: int, align: int | None = None, limit: int | None = None) -> int:
        """An IOVA for `size` bytes aligned to `align` (default: natural alignment).

        Raises VfioError(ENOSPC) when no range has room below the limit.
        """
        if size <= 0:
            raise VfioError(errno.EINVAL, "iova_alloc", "", f"size {size}")
        align = align or _natural_align(size)
        cap = min(x for x in (limit, self.limit, 1 << 64) if x is not None)
        for r in self.ranges:
            iova = -(-max(self._next[r.start], r.start) // align) * align
            if iova == 0:
                # IOVA 0 is legal but makes a NULL-pointer DMA indistinguishable.
                iova = align
            if r.contains(iova, size) and iova + size <= cap:
                self._next[r.start] = iova + size
                return iova
        raise VfioError(errno.ENOSPC, "iova_alloc", "",
                        f"no room for 0x{size:x} bytes aligned to 0x{align:x}")
