"""Native iommufd: /dev/iommu, IO address spaces, and mapping from files."""

from __future__ import annotations

import errno
from typing import Any, ClassVar

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import close_fd, ioctl, make_cells, new, open_fd
from vfio_scenario.uapi.iommu import AddressSpace, Iommu, Mapping
from vfio_scenario.uapi.iova import IovaAllocator, IovaRange
from vfio_scenario.uapi.modes import IommuMode

ALL = (1 << 64) - 1  # IOMMU_IOAS_UNMAP of iova 0 and this length: the uAPI's "unmap everything"


class Ioas(AddressSpace):
    """An iommufd IO address space (IOMMU_IOAS_ALLOC); devices attach to `id`."""

    # the out-cells of the map/unmap calls, made once (ioctl.make_cells)
    CELLS: ClassVar[dict[str, str]] = {"_err": "int *", "_unmapped": "uint64_t *",
                                       "_iova": "uint64_t *"}
    _err: Any
    _unmapped: Any
    _iova: Any

    def __init__(self, iommufd: Iommufd) -> None:
        self.iommufd = iommufd
        arg = new("struct iommu_ioas_alloc")
        ioctl(iommufd.fd, "IOMMU_IOAS_ALLOC", arg, iommufd.handle)
        self.id: int = arg.out_ioas_id
        self.handle = f"ioas {self.id}"
        make_cells(self)

    @property
    def fd(self) -> int:
        return self.iommufd.fd

    def iova_ranges_and_alignment(self) -> tuple[list[IovaRange], int]:
        """IOMMU_IOAS_IOVA_RANGES: the allowed ranges and the required IOVA alignment."""
        arg = new("struct iommu_ioas_iova_ranges", ioas_id=self.id)
        ranges = ffi.new("struct iommu_iova_range[]", 1)
        arg.num_iovas = 1
        arg.allowed_iovas = int(ffi.cast("uintptr_t", ranges))
        try:
            ioctl(self.fd, "IOMMU_IOAS_IOVA_RANGES", arg, self.handle)
        except VfioError as e:
            if e.errno != errno.EMSGSIZE:
                raise
            ranges = ffi.new("struct iommu_iova_range[]", arg.num_iovas)
            arg.allowed_iovas = int(ffi.cast("uintptr_t", ranges))
            ioctl(self.fd, "IOMMU_IOAS_IOVA_RANGES", arg, self.handle)
        found = [IovaRange(ranges[i].start, ranges[i].last) for i in range(arg.num_iovas)]
        alignment: int = arg.out_iova_alignment
        return found, alignment

    def iova_ranges(self) -> list[IovaRange]:
        return self.iova_ranges_and_alignment()[0]

    @staticmethod
    def _flags(iova: int | None, read: bool, write: bool) -> int:
        return ((lib.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0)
                | (lib.IOMMU_IOAS_MAP_READABLE if read else 0)
                | (lib.IOMMU_IOAS_MAP_WRITEABLE if write else 0))

    def map(self, vaddr: int, size: int, iova: int | None, read: bool = True,
            write: bool = True) -> Mapping:
        """IOMMU_IOAS_MAP at a fixed IOVA (or, with iova None, where the kernel picks)."""
        if iova is not None:  # the C loop of the extension, one iteration
            if lib.vs_map_dma_n(self.fd, self.id, vaddr, size, iova, 0, 1, read, write,
                                self._err) != 1:
                raise VfioError(self._err[0], "IOMMU_IOAS_MAP", self.handle)
            return Mapping(self, iova, size, vaddr)
        # the kernel picks: one C call too (a loop maps thousands of times)
        if lib.vs_ioas_map_auto(self.fd, self.id, vaddr, size, read, write, self._iova,
                                self._err) != 0:
            raise VfioError(self._err[0], "IOMMU_IOAS_MAP", self.handle)
        return Mapping(self, self._iova[0], size, vaddr)

    def map_many(self, vaddr: int, size: int, iova: int, stride: int, count: int,
                 read: bool = True, write: bool = True) -> tuple[int, VfioError | None]:
        done: int = lib.vs_map_dma_n(self.fd, self.id, vaddr, size, iova, stride, count, read,
                                     write, self._err)
        if done == count:
            return done, None
        return done, VfioError(self._err[0], "IOMMU_IOAS_MAP", self.handle)

    def map_file(self, fd: int, start: int, size: int, iova: int | None, read: bool = True,
                 write: bool = True) -> Mapping:
        """IOMMU_IOAS_MAP_FILE: map `size` bytes of a memfd (or DMABUF) from `start`."""
        arg = new("struct iommu_ioas_map_file", flags=self._flags(iova, read, write),
                  ioas_id=self.id, fd=fd, start=start, length=size, iova=iova or 0)
        ioctl(self.fd, "IOMMU_IOAS_MAP_FILE", arg, self.handle)
        return Mapping(self, arg.iova, size, 0)

    def copy(self, src: Ioas, src_iova: int, size: int, dst_iova: int | None,
             read: bool = True, write: bool = True) -> Mapping:
        """IOMMU_IOAS_COPY: map here the pages `src` maps at `src_iova`."""
        arg = new("struct iommu_ioas_copy", flags=self._flags(dst_iova, read, write),
                  dst_ioas_id=self.id, src_ioas_id=src.id, length=size,
                  dst_iova=dst_iova or 0, src_iova=src_iova)
        ioctl(self.fd, "IOMMU_IOAS_COPY", arg, self.handle)
        return Mapping(self, arg.dst_iova, size, 0)

    def unmap(self, iova: int, size: int) -> int:
        if lib.vs_unmap_dma_n(self.fd, self.id, 0, iova, size, 0, 1, -1, self._unmapped,
                              self._err) != 1:
            raise VfioError(self._err[0], "IOMMU_IOAS_UNMAP", self.handle)
        unmapped: int = self._unmapped[0]
        return unmapped

    def unmap_all(self) -> int:
        return self.unmap(0, ALL)

    def unmap_many(self, iova: int, size: int, count: int, stride: int = 0,
                   expect: int | None = None, unmap_all: bool = False
                   ) -> tuple[int, VfioError | None, int]:
        if unmap_all:
            iova, size, stride = 0, ALL, 0
        done: int = lib.vs_unmap_dma_n(self.fd, self.id, 0, iova, size, stride, count,
                                       -1 if expect is None else expect, self._unmapped,
                                       self._err)
        error = None
        if done < count and self._err[0]:
            error = VfioError(self._err[0], "IOMMU_IOAS_UNMAP", self.handle)
        return done, error, 0 if error else int(self._unmapped[0])

    def destroy(self) -> None:
        """IOMMU_DESTROY of this IOAS (fails with EBUSY while a device is attached)."""
        self.iommufd.destroy(self.id)


class Iommufd(Iommu):
    """An open /dev/iommu with a default IOAS; mapping verbs act on the default IOAS."""

    def __init__(self, default_ioas: bool = True) -> None:
        self.mode = IommuMode.IOMMUFD
        self.handle = "/dev/iommu"
        self.fd = open_fd(self.handle, "open_iommufd")
        self._ioas: Ioas | None = None
        if default_ioas:
            try:
                self._ioas = Ioas(self)
            except VfioError:
                close_fd(self.fd)
                raise
        self.extra: list[Ioas] = []

    @property
    def ioas(self) -> Ioas:
        """The default IOAS (made at open unless `default_ioas` was False)."""
        if self._ioas is None:
            raise VfioError(errno.ENOENT, "default IOAS", self.handle,
                            "this iommufd was opened without a default IOAS")
        return self._ioas

    def alloc_ioas(self) -> Ioas:
        """Another IO address space on this iommufd."""
        ioas = Ioas(self)
        self.extra.append(ioas)
        return ioas

    def destroy(self, object_id: int) -> None:
        ioctl(self.fd, "IOMMU_DESTROY", new("struct iommu_destroy", id=object_id), self.handle)

    def option_huge_pages(self, ioas: Ioas | None = None, enable: bool | None = None) -> bool:
        """IOMMU_OPTION HUGE_PAGES of an IOAS: set it when `enable` is given, return it."""
        target = ioas or self.ioas
        op = lib.IOMMU_OPTION_OP_GET if enable is None else lib.IOMMU_OPTION_OP_SET
        arg = new("struct iommu_option", option_id=lib.IOMMU_OPTION_HUGE_PAGES, op=op,
                  object_id=target.id, val64=int(bool(enable)))
        ioctl(self.fd, "IOMMU_OPTION", arg, self.handle)
        return bool(arg.val64)

    def pgsizes(self) -> int:
        """The smallest IOVA alignment the IOAS demands, as a one-bit bitmap.

        iommufd does not report the page-size bitmap; its alignment is the smallest
        page size every attached domain supports.
        """
        return self.ioas.iova_ranges_and_alignment()[1]

    def iova_ranges(self) -> list[IovaRange]:
        return self.ioas.iova_ranges()

    def map(self, vaddr: int, size: int, iova: int, read: bool = True,
            write: bool = True) -> Mapping:
        return self.ioas.map(vaddr, size, iova, read, write)

    def unmap(self, iova: int, size: int) -> int:
        return self.ioas.unmap(iova, size)

    def unmap_all(self) -> int:
        return self.ioas.unmap_all()

    def map_many(self, vaddr: int, size: int, iova: int, stride: int, count: int,
                 read: bool = True, write: bool = True) -> tuple[int, VfioError | None]:
        return self.ioas.map_many(vaddr, size, iova, stride, count, read, write)

    def unmap_many(self, iova: int, size: int, count: int, stride: int = 0,
                   expect: int | None = None, unmap_all: bool = False
                   ) -> tuple[int, VfioError | None, int]:
        return self.ioas.unmap_many(iova, size, count, stride, expect, unmap_all)

    def own_allocator(self) -> IovaAllocator:
        # The default IOAS owns the allocator: mapping through either never collides.
        return self.ioas.own_allocator()

    def note_taken(self, iova: int, size: int) -> None:
        self.ioas.note_taken(iova, size)

    def close(self) -> None:
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1
