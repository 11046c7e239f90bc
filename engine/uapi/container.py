"""VFIO containers and groups: the four type1 modes (legacy VFIO or iommufd's compat)."""

from __future__ import annotations

import contextlib
import errno
from typing import Any, ClassVar

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import capchain, sysfs
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import close_fd, ioctl, ioctl_val, make_cells, new, open_fd
from vfio_scenario.uapi.iommu import Iommu, Mapping
from vfio_scenario.uapi.iova import IovaRange
from vfio_scenario.uapi.modes import IommuMode

IOMMU_TYPES = {"type1": lib.VFIO_TYPE1_IOMMU, "type1v2": lib.VFIO_TYPE1v2_IOMMU}


class Group:
    """An open /dev/vfio/N, attached to a container."""

    def __init__(self, number: int, container: Container) -> None:
        self.number = number
        self.path = f"/dev/vfio/{number}"
        self.fd = open_fd(self.path, "open_group")
        self.container = container
        try:
            status = new("struct vfio_group_status")
            ioctl(self.fd, "VFIO_GROUP_GET_STATUS", status, self.path)
            if not status.flags & lib.VFIO_GROUP_FLAGS_VIABLE:
                raise VfioError(errno.EBUSY, "VFIO_GROUP_GET_STATUS", self.path,
                                "group not viable: bind every function of it to vfio-pci")
            fd = ffi.new("int *", container.fd)
            ioctl(self.fd, "VFIO_GROUP_SET_CONTAINER", fd, self.path)
        except VfioError:
            close_fd(self.fd)
            raise

    def device_fd(self, bdf: str, vf_token: str | None = None) -> int:
        """GROUP_GET_DEVICE_FD with "<bdf>" or "<bdf> vf_token=<uuid>"."""
        name = bdf if vf_token is None else f"{bdf} vf_token={vf_token}"
        buf = ffi.new("char[]", name.encode())
        return ioctl(self.fd, "VFIO_GROUP_GET_DEVICE_FD", buf, bdf)

    def close(self) -> None:
        """Leave the container and close; idempotent."""
        if self.fd >= 0:
            with contextlib.suppress(VfioError):
                ioctl(self.fd, "VFIO_GROUP_UNSET_CONTAINER", None, self.path)
            close_fd(self.fd)
            self.fd = -1


class Container(Iommu):
    """A container fd: /dev/vfio/vfio (vfio_type1*) or /dev/iommu (iommufd_compat_*).

    The IOMMU type is set when the first group joins, as the kernel requires.
    """

    # the out-cells of the map/unmap calls, made once (ioctl.make_cells)
    CELLS: ClassVar[dict[str, str]] = {"_err": "int *", "_unmapped": "uint64_t *"}
    _err: Any
    _unmapped: Any

    def __init__(self, mode: IommuMode) -> None:
        if not mode.uses_container:
            raise VfioError(errno.EINVAL, "open_container", mode.value, "not a container mode")
        self.mode = mode
        self.handle = mode.container_path
        self.fd = open_fd(self.handle, "open_container")
        self.groups: dict[int, Group] = {}
        self.iommu_set = False
        make_cells(self)
        try:
            version = ioctl(self.fd, "VFIO_GET_API_VERSION", None, self.handle)
            if version != lib.VFIO_API_VERSION:
                raise VfioError(errno.EINVAL, "VFIO_GET_API_VERSION", self.handle,
                                f"API version {version}")
            self.iommu_type = IOMMU_TYPES[mode.type1_version]
            if not self.check_extension(self.iommu_type):
                raise VfioError(errno.ENODEV, "VFIO_CHECK_EXTENSION", self.handle,
                                f"{mode.type1_version} not supported")
        except VfioError:
            close_fd(self.fd)
            raise

    def check_extension(self, extension: int) -> bool:
        """VFIO_CHECK_EXTENSION: whether the container supports an extension."""
        return ioctl_val(self.fd, "VFIO_CHECK_EXTENSION", extension, self.handle) > 0

    def group(self, bdf: str) -> Group:
        """The (opened, attached) group of a function; sets the IOMMU type on the first."""
        number = sysfs.iommu_group(bdf)
        if number not in self.groups:
            self.groups[number] = Group(number, self)
            if not self.iommu_set:
                try:
                    ioctl_val(self.fd, "VFIO_SET_IOMMU", self.iommu_type, self.handle)
                except VfioError:
                    self.groups.pop(number).close()
                    raise
                self.iommu_set = True
        return self.groups[number]

    def release_group(self, bdf: str) -> None:
        """Close the group of a function (its devices must be closed); no-op if not held.

        When the last group leaves, legacy VFIO returns the container to the unset
        state (its IOMMU driver detached; SET_IOMMU is EINVAL until a group joins);
        iommufd's compat container keeps its IOAS. Either way the next group to join
        sets the type again, as the kernel selftests do (SET_CONTAINER, then SET_IOMMU),
        and both accept it (tests/guest/test_uapi_sriov.py).
        """
        group = self.groups.pop(sysfs.iommu_group(bdf), None)
        if group is not None:
            group.close()
            if not self.groups:
                self.iommu_set = False

    def _info(self) -> tuple[int, list[IovaRange]]:
        info = new("struct vfio_iommu_type1_info")
        ioctl(self.fd, "VFIO_IOMMU_GET_INFO", info, self.handle)
        if info.argsz > ffi.sizeof("struct vfio_iommu_type1_info"):
            raw = ffi.new("char[]", info.argsz)
            info = ffi.cast("struct vfio_iommu_type1_info *", raw)
            info.argsz = len(raw)
            ioctl(self.fd, "VFIO_IOMMU_GET_INFO", info, self.handle)
        ranges: list[IovaRange] = []
        if info.flags & lib.VFIO_IOMMU_INFO_CAPS:
            for cap_id, _version, ptr in capchain.walk(info, info.cap_offset):
                if cap_id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                    cap = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", ptr)
                    ranges = [IovaRange(cap.iova_ranges[i].start, cap.iova_ranges[i].end)
                              for i in range(cap.nr_iovas)]
        if not ranges:
            ranges = [IovaRange(0, (1 << 64) - 1)]
        pgsizes: int = info.iova_pgsizes if info.flags & lib.VFIO_IOMMU_INFO_PGSIZES else 0
        return pgsizes, ranges

    def pgsizes(self) -> int:
        return self._info()[0]

    def iova_ranges(self) -> list[IovaRange]:
        return self._info()[1]

    # VFIO_IOMMU_MAP_DMA / UNMAP_DMA go through the C loops of the extension (one
    # iteration for a single call): no struct is built in Python, the out-values land in
    # two cells allocated once per container.

    def map(self, vaddr: int, size: int, iova: int, read: bool = True,
            write: bool = True) -> Mapping:
        if lib.vs_map_dma_n(self.fd, -1, vaddr, size, iova, 0, 1, read, write, self._err) != 1:
            raise VfioError(self._err[0], "VFIO_IOMMU_MAP_DMA", self.handle)
        return Mapping(self, iova, size, vaddr)

    def map_many(self, vaddr: int, size: int, iova: int, stride: int, count: int,
                 read: bool = True, write: bool = True) -> tuple[int, VfioError | None]:
        done: int = lib.vs_map_dma_n(self.fd, -1, vaddr, size, iova, stride, count, read, write,
                                     self._err)
        if done == count:
            return done, None
        return done, VfioError(self._err[0], "VFIO_IOMMU_MAP_DMA", self.handle)

    def unmap(self, iova: int, size: int) -> int:
        if lib.vs_unmap_dma_n(self.fd, -1, 0, iova, size, 0, 1, -1, self._unmapped,
                              self._err) != 1:
            raise VfioError(self._err[0], "VFIO_IOMMU_UNMAP_DMA", self.handle)
        unmapped: int = self._unmapped[0]
        return unmapped

    def unmap_all(self) -> int:
        if lib.vs_unmap_dma_n(self.fd, -1, lib.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0, 0, 1, -1,
                              self._unmapped, self._err) != 1:
            raise VfioError(self._err[0], "VFIO_IOMMU_UNMAP_DMA", self.handle)
        unmapped: int = self._unmapped[0]
        return unmapped

    def unmap_many(self, iova: int, size: int, count: int, stride: int = 0,
                   expect: int | None = None, unmap_all: bool = False
                   ) -> tuple[int, VfioError | None, int]:
        flags = lib.VFIO_DMA_UNMAP_FLAG_ALL if unmap_all else 0
        if unmap_all:
            iova = size = stride = 0
        done: int = lib.vs_unmap_dma_n(self.fd, -1, flags, iova, size, stride, count,
                                       -1 if expect is None else expect, self._unmapped,
                                       self._err)
        error = None
        if done < count and self._err[0]:
            error = VfioError(self._err[0], "VFIO_IOMMU_UNMAP_DMA", self.handle)
        return done, error, 0 if error else int(self._unmapped[0])

    def close(self) -> None:
        """Close every group, then the container; idempotent."""
        for group in self.groups.values():
            group.close()
        self.groups.clear()
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1
