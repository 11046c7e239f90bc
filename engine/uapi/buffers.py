"""DMA-able memory: anonymous (private or shared), hugetlb 2 MiB / 1 GiB, memfd, a private
mapping of a file."""

from __future__ import annotations

import errno
import os
import weakref
from enum import StrEnum
from typing import Any, ClassVar, Self

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.patterns import Pattern, compare

MiB = 1 << 20
GiB = 1 << 30


class Backing(StrEnum):
    ANONYMOUS = "anonymous"
    SHARED = "shared"  # MAP_SHARED | MAP_ANONYMOUS: shmem pages, no file to hand on
    HUGETLB_2M = "hugetlb-2M"
    HUGETLB_1G = "hugetlb-1G"
    MEMFD = "memfd"
    # a private (copy-on-write) read/write mapping of a file opened read-only, not
    # populated: its pages are the file's page cache until the process writes them
    FILE_PRIVATE = "file-private"

    @property
    def page_size(self) -> int:
        return {Backing.HUGETLB_2M: 2 * MiB, Backing.HUGETLB_1G: GiB}.get(self, 4096)


def mmap_raw(size: int, prot: int, flags: int, fd: int, offset: int, op: str,
             handle: str) -> Any:
    """mmap through C; returns a `uint8_t *` cdata, raises VfioError(errno, op, handle)."""
    err = ffi.new("int *")
    ptr = lib.vs_mmap(size, prot, flags, fd, offset, err)
    if ptr == ffi.NULL:
        raise VfioError(err[0], op, handle)
    return ffi.cast("uint8_t *", ptr)


def munmap_raw(ptr: Any, size: int) -> None:
    """munmap, ignoring failure (teardown path)."""
    lib.vs_munmap(ptr, size)


def _aligned(size: int, align: int, prot: int, flags: int, name: str) -> Any:
    """Anonymous memory of `size` bytes at a multiple of `align` (a power of two): a
    mapping `align` bytes longer, its head and tail cut off again."""
    span = size + align
    base = mmap_raw(span, prot, flags, -1, 0, "mmap", name)
    addr = int(ffi.cast("uintptr_t", base))
    start = -(-addr // align) * align
    head, tail = start - addr, addr + span - (start + size)
    if head:
        munmap_raw(base, head)
    if tail:
        munmap_raw(base + (start + size - addr), tail)
    return base + head


def unmap_range(buffer: DmaBuffer, offset: int, size: int) -> None:
    """munmap [offset, offset + size) of a buffer: those pages leave the process (what
    the buffer's end unmaps again is then nothing). Raises VfioError with munmap's errno
    (EINVAL for a range not aligned to the backing's page)."""
    if offset + size > buffer.size or buffer.ptr == ffi.NULL:
        raise VfioError(errno.EINVAL, "munmap", buffer.name,
                        f"0x{offset:x}+0x{size:x} outside 0x{buffer.size:x} bytes")
    ret = lib.vs_munmap(buffer.ptr + offset, size)
    if ret < 0:
        raise VfioError(-ret, "munmap", buffer.name)


class DmaBuffer:
    """Page-aligned memory the process owns and can map for DMA, populated unless
    `populate` is false.

    `size` is rounded up to the backing's page size.  `addr` is the CPU virtual address,
    `ptr` a `uint8_t *`; `fd` is the memfd (memfd backing) or -1. A file-private buffer
    maps the file at `path` and is not populated (see _map_file).
    """

    # every buffer of this process not yet collected (a handover finds the buffer a
    # driver's memoryview points into, run/handover.py)
    live: ClassVar[weakref.WeakSet[DmaBuffer]] = weakref.WeakSet()

    def __init__(self, size: int, backing: Backing | str = Backing.ANONYMOUS,
                 name: str = "buffer", align: int = 0, path: str | None = None,
                 populate: bool = True) -> None:
        self.backing = Backing(backing)
        page = self.backing.page_size
        self.size = -(-size // page) * page
        self.name = name
        self.fd = -1
        prot = lib.PROT_READ | lib.PROT_WRITE
        flags = lib.MAP_POPULATE if populate else 0  # else faulted in at first touch or pin
        if self.backing is Backing.FILE_PRIVATE:
            self.ptr = self._map_file(path)
        elif self.backing is Backing.MEMFD:
            try:
                self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
                os.ftruncate(self.fd, self.size)
            except OSError as e:
                raise VfioError(e.errno or 0, "memfd_create", name) from None
            flags |= lib.MAP_SHARED
        elif self.backing is Backing.SHARED:
            flags |= lib.MAP_SHARED | lib.MAP_ANONYMOUS
        else:
            flags |= lib.MAP_PRIVATE | lib.MAP_ANONYMOUS
            if self.backing is Backing.HUGETLB_2M:
                flags |= lib.MAP_HUGETLB | lib.MAP_HUGE_2MB
            elif self.backing is Backing.HUGETLB_1G:
                flags |= lib.MAP_HUGETLB | lib.MAP_HUGE_1GB
        if self.backing is not Backing.FILE_PRIVATE:
            try:
                if align > page and self.backing in (Backing.ANONYMOUS, Backing.SHARED):
                    self.ptr = _aligned(self.size, align, prot, flags, name)
                else:
                    self.ptr = mmap_raw(self.size, prot, flags, self.fd, 0, "mmap", name)
            except VfioError:
                if self.fd >= 0:
                    os.close(self.fd)
                raise
        self.addr = int(ffi.cast("uintptr_t", self.ptr))
        DmaBuffer.live.add(self)

    def _map_file(self, path: str | None) -> Any:
        """The first `size` bytes of file `path` (opened read-only) mapped read/write and
        private, as the iommufd selftest's ro_unshare maps its own program: no page is
        faulted in (a write then copies the file's page into an anonymous one)."""
        if path is None:
            raise VfioError(errno.EINVAL, "buffer", self.name, "a file-private buffer "
                            "needs the path of the file it maps")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise VfioError(e.errno or 0, "open", path) from None
        try:
            length = os.fstat(fd).st_size
            if length < self.size:  # a page past the file's end is SIGBUS at first touch
                raise VfioError(errno.EINVAL, "mmap", path,
                                f"the file holds {length} bytes, fewer than the "
                                f"{self.size} mapped")
            return mmap_raw(self.size, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_PRIVATE, fd, 0,
                            "mmap", path)
        finally:
            os.close(fd)  # the mapping keeps the file; the selftest closes it too

    @property
    def mem(self) -> memoryview:
        """The buffer's bytes (valid until close)."""
        return memoryview(ffi.buffer(self.ptr, self.size))

    def _range(self, offset: int, size: int | None) -> int:
        size = self.size - offset if size is None else size
        if offset < 0 or size < 0 or offset + size > self.size:
            raise VfioError(errno.EINVAL, "buffer_range", self.name,
                            f"0x{offset:x}+0x{size:x} outside 0x{self.size:x} bytes")
        return size

    def fill(self, pattern: Pattern, offset: int = 0, size: int | None = None) -> None:
        """Fill [offset, offset+size) with the pattern (pattern index 0 at `offset`)."""
        size = self._range(offset, size)
        pattern.fill(self.ptr + offset, size)

    def check(self, pattern: Pattern, offset: int = 0, size: int | None = None) -> int | None:
        """Offset (from `offset`) of the first byte that differs from the pattern, or None."""
        size = self._range(offset, size)
        return pattern.check(self.ptr + offset, size)

    def compare(self, offset: int, other: DmaBuffer, other_offset: int, size: int) -> int | None:
        """Offset of the first byte where the two ranges differ, or None."""
        self._range(offset, size)
        other._range(other_offset, size)
        return compare(self.ptr + offset, other.ptr + other_offset, size)

    def remap(self) -> None:
        """A memfd buffer mapped again, populated from its file's pages as they are (none
        allocated or cleared: the bytes stay), the old mapping unmapped first."""
        if self.fd < 0 or self.ptr == ffi.NULL:
            raise VfioError(errno.EINVAL, "mmap", self.name, "only an open memfd buffer is "
                            "mapped again")
        munmap_raw(self.ptr, self.size)
        self.ptr = ffi.NULL
        self.ptr = mmap_raw(self.size, lib.PROT_READ | lib.PROT_WRITE,
                            lib.MAP_SHARED | lib.MAP_POPULATE, self.fd, 0, "mmap", self.name)
        self.addr = int(ffi.cast("uintptr_t", self.ptr))

    def close(self) -> None:
        """Unmap and close; idempotent."""
        if self.ptr != ffi.NULL:
            munmap_raw(self.ptr, self.size)
            self.ptr = ffi.NULL
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
