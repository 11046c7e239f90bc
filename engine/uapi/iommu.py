"""What every IOMMU mode offers: IOVA ranges, page sizes, map and unmap.

`open_iommu(mode)` returns a `Container` (the four container modes) or an `Iommufd`
(native iommufd); both are `Iommu`s with the same mapping verbs.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.iova import IovaAllocator, IovaRange
from vfio_scenario.uapi.modes import IommuMode

if TYPE_CHECKING:
    from vfio_scenario.uapi.buffers import DmaBuffer


@dataclass
class Mapping:
    """One DMA mapping: `size` bytes at `iova` of `space`, backed by `vaddr` (0: a file)."""

    space: AddressSpace
    iova: int
    size: int
    vaddr: int = 0

    def unmap(self) -> int:
        """Unmap exactly this mapping; returns the bytes the kernel unmapped."""
        return self.space.unmap(self.iova, self.size)


class AddressSpace:
    """An IOVA space that maps process memory: a type1 container or an iommufd IOAS."""

    handle: str = ""
    _allocator: IovaAllocator | None = None
    # note_taken before the allocator existed (a list once the first is noted: a loop of
    # thousands of kernel-chosen maps notes each, in O(1))
    _placed: tuple[tuple[int, int], ...] | list[tuple[int, int]] = ()

    def iova_ranges(self) -> list[IovaRange]:
        raise NotImplementedError

    def map(self, vaddr: int, size: int, iova: int, read: bool = True,
            write: bool = True) -> Mapping:
        raise NotImplementedError

    def unmap(self, iova: int, size: int) -> int:
        raise NotImplementedError

    def unmap_all(self) -> int:
        raise NotImplementedError

    def map_many(self, vaddr: int, size: int, iova: int, stride: int, count: int,
                 read: bool = True, write: bool = True) -> tuple[int, VfioError | None]:
        """`count` maps of the same memory at iova, iova + stride …, exactly as `count`
        calls of `map` would do them, stopping at the first failure.

        Returns (how many succeeded, the failing one's error or None). The container and
        iommufd spaces do the whole loop in C; this one is the reference.
        """
        for k in range(count):
            try:
                self.map(vaddr, size, iova + k * stride, read, write)
            except VfioError as exc:
                return k, exc
        return count, None

    def unmap_many(self, iova: int, size: int, count: int, stride: int = 0,
                   expect: int | None = None, unmap_all: bool = False
                   ) -> tuple[int, VfioError | None, int]:
        """`count` unmaps of `size` bytes at iova, iova + stride … (or `count` unmap-alls),
        as `count` calls of `unmap`/`unmap_all` would do them.

        Stops at the first failure, or at the first that unmaps other than `expect` bytes
        when `expect` is given (that one is not counted). Returns (how many completed as
        asked, the failing one's error or None, bytes the last one unmapped).
        """
        unmapped = 0
        for k in range(count):
            try:
                unmapped = self.unmap_all() if unmap_all else self.unmap(iova + k * stride, size)
            except VfioError as exc:
                return k, exc, 0
            if expect is not None and unmapped != expect:
                return k, None, unmapped
        return count, None, unmapped

    def allocator(self, limit: int | None = None) -> IovaAllocator:
        """An allocator over this space's current IOVA ranges (below `limit` if given)."""
        return IovaAllocator(self.iova_ranges(), limit)

    def map_buffer(self, buffer: DmaBuffer, iova: int | None = None, offset: int = 0,
                   size: int | None = None, read: bool = True, write: bool = True,
                   limit: int | None = None) -> Mapping:
        """Map (part of) a buffer, at `iova` or at one allocated within the ranges."""
        whole = buffer.size
        if size is None:
            size = whole - offset
        if offset < 0 or size <= 0 or offset + size > whole:
            raise VfioError(errno.EINVAL, "map_dma", self.handle,
                            f"0x{offset:x}+0x{size:x} outside buffer of 0x{whole:x}")
        if iova is None:
            iova = (self._allocator or self.own_allocator()).alloc(size, limit=limit)
        return self.map(buffer.addr + offset, size, iova, read, write)

    def own_allocator(self) -> IovaAllocator:
        """The allocator of this space's `map_buffer`/`alloc_iova`: one per space, made on
        first use, so IOVAs never repeat; it avoids the IOVAs `note_taken` recorded."""
        if self._allocator is None:
            self._allocator = self.allocator()
            for iova, size in self._placed:
                self._allocator.reserve(iova, size)
        return self._allocator

    def note_taken(self, iova: int, size: int) -> None:
        """A mapping at an IOVA the scenario (or the kernel) chose: the allocator, made
        now or later, never hands out an IOVA overlapping it. Costs no ioctl."""
        if self._allocator is not None:
            self._allocator.reserve(iova, size)
        else:
            if not isinstance(self._placed, list):
                self._placed = list(self._placed)
            self._placed.append((iova, size))

    def _alloc(self, size: int, limit: int | None) -> int:
        return self.own_allocator().alloc(size, limit=limit)

    def alloc_iova(self, size: int, limit: int | None = None) -> int:
        """An unused IOVA for `size` bytes within the reported ranges."""
        return self._alloc(size, limit)


class Iommu(AddressSpace):
    """An opened IOMMU in one of the five modes."""

    mode: IommuMode
    fd: int = -1

    def pgsizes(self) -> int:
        """Bitmap of supported IOMMU page sizes."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_iommu(mode: IommuMode | str, default_ioas: bool = True) -> Iommu:
    """Open the IOMMU in `mode` (type1 modes set their IOMMU type on the first group;
    an iommufd gets a default IOAS unless `default_ioas` is False)."""
    mode = IommuMode(mode)
    if mode is IommuMode.IOMMUFD:
        from vfio_scenario.uapi.iommufd import Iommufd

        return Iommufd(default_ioas)
    from vfio_scenario.uapi.container import Container

    return Container(mode)
