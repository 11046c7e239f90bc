"""IOVA allocation within the ranges the IOMMU reports."""

from __future__ import annotations

import bisect
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
    if size <= PAGE:
        return PAGE
    return 1 << (min(size, MAX_NATURAL_ALIGN).bit_length() - 1)


class IovaAllocator:
    """Hands out non-overlapping IOVAs inside the reported ranges, lowest first.

    `limit` (exclusive) honours a device's DMA mask: edu drives 28 address bits.
    Freed space is not reused: scenarios are short and a bump allocator keeps every
    IOVA of a case distinct, which makes a stale mapping's fault visible. IOVAs a
    scenario placed itself (`reserve`) are never handed out.
    """

    def __init__(self, ranges: list[IovaRange], limit: int | None = None) -> None:
        self.ranges = sorted(ranges, key=lambda r: r.start)
        self.limit = limit
        self._next = {r.start: r.start for r in self.ranges}
        self._taken: list[tuple[int, int]] = []  # [start, end) placed by the scenario

    def reserve(self, iova: int, size: int) -> None:
        """[iova, iova + size) is mapped at an IOVA the scenario chose (or the kernel
        did): no later `alloc` returns an IOVA overlapping it."""
        bisect.insort(self._taken, (iova, iova + size))

    def _past_taken(self, iova: int, end: int) -> int | None:
        """The end of the lowest reserved span overlapping [iova, end), if any."""
        for start, stop in self._taken:
            if start < end and iova < stop:
                return stop
        return None

    def alloc(self, size: int, align: int | None = None, limit: int | None = None) -> int:
        """An IOVA for `size` bytes aligned to `align` (default: natural alignment).

        Raises VfioError(ENOSPC) when no range has room below the limit.
        """
        # runs for every map_dma without an IOVA: plain arithmetic, no helper calls
        if size <= 0:
            raise VfioError(errno.EINVAL, "iova_alloc", "", f"size {size}")
        align = align or _natural_align(size)
        cap = 1 << 64 if self.limit is None else self.limit
        if limit is not None and limit < cap:
            cap = limit
        following = self._next
        for r in self.ranges:
            low = following[r.start]  # _next starts at r.start
            while True:
                iova = -(-low // align) * align
                if iova == 0:
                    # IOVA 0 is legal but makes a NULL-pointer DMA indistinguishable.
                    iova = align
                end = iova + size
                past = self._past_taken(iova, end) if self._taken else None
                if past is None:
                    break
                low = past
            if r.start <= iova and end - 1 <= r.last and end <= cap:
                following[r.start] = end
                return iova
        raise VfioError(errno.ENOSPC, "iova_alloc", "",
                        f"no room for 0x{size:x} bytes aligned to 0x{align:x}")

    def alloc_run(self, size: int, count: int, limit: int | None = None) -> tuple[int, int, int]:
        """What up to `count` calls of `alloc(size, limit=limit)` hand out, in one go.

        Returns (first, stride, n), 1 <= n <= count: the n IOVAs first + k * stride are
        exactly those calls' first n answers (successive ones in one range). When
        n < count, the next call starts where the next single `alloc` would look.
        Raises VfioError(ENOSPC) as `alloc` does when not even one fits.
        """
        first = self.alloc(size, limit=limit)
        if count == 1:
            return first, 0, 1
        align = _natural_align(size)
        stride = -(-size // align) * align  # the next alloc: the end of this one, aligned
        r = next(r for r in self.ranges if r.contains(first, size))
        above = [start for start, _ in self._taken if start >= first + size]
        cap = min(x for x in (limit, self.limit, r.last + 1, *above) if x is not None)
        n = min(count, (cap - size - first) // stride + 1)
        self._next[r.start] = first + (n - 1) * stride + size
        return first, stride, n

    def release_after(self, iova: int, size: int) -> None:
        """Forget what was handed out above iova + size in the range of `iova` (a run
        allocated ahead whose tail went unused), so the next `alloc` picks the IOVA it
        would have picked after `iova` had been the last one."""
        for r in self.ranges:
            if r.contains(iova, size):
                self._next[r.start] = min(self._next[r.start], iova + size)
                return
