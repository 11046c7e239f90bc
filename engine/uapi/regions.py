"""Device, region and IRQ info as typed values, with their capability chains parsed."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import capchain
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import ioctl, new

REGION_NAMES = {f"bar{i}": i for i in range(6)} | {"rom": 6, "config": 7, "vga": 8}
CONFIG_REGION = 7

DEVICE_FLAGS = {"reset": 1 << 0, "pci": 1 << 1, "platform": 1 << 2, "amba": 1 << 3,
                "ccw": 1 << 4, "ap": 1 << 5, "fsl_mc": 1 << 6, "caps": 1 << 7, "cdx": 1 << 8}
REGION_FLAGS = {"read": 1 << 0, "write": 1 << 1, "mmap": 1 << 2, "caps": 1 << 3}
IRQ_FLAGS = {"eventfd": 1 << 0, "maskable": 1 << 1, "automasked": 1 << 2, "noresize": 1 << 3}


def flag_names(value: int, table: dict[str, int]) -> list[str]:
    """The names of the bits set in `value`, in table order."""
    return [name for name, bit in table.items() if value & bit]


def region_index(region: str | int) -> int:
    """'bar0'…'bar5', 'rom', 'config', 'vga' or an integer → the VFIO region index."""
    if isinstance(region, int):
        return region
    try:
        return REGION_NAMES[region]
    except KeyError:
        raise VfioError(errno.EINVAL, "region_index", region,
                        f"unknown region; one of {sorted(REGION_NAMES)} or an index") from None


@dataclass(frozen=True)
class DeviceInfo:
    flags: int
    num_regions: int
    num_irqs: int

    @property
    def flag_names(self) -> list[str]:
        return flag_names(self.flags, DEVICE_FLAGS)


@dataclass(frozen=True)
class RegionInfo:
    """One region; `offset` is where it starts in the device fd."""

    index: int
    flags: int
    size: int
    offset: int
    sparse_mmap: tuple[tuple[int, int], ...] = ()
    msix_mappable: bool = False
    region_type: tuple[int, int] | None = None
    cap_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def flag_names(self) -> list[str]:
        return flag_names(self.flags, REGION_FLAGS)

    @property
    def cap_names(self) -> list[str]:
        names = []
        if self.sparse_mmap or lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP in self.cap_ids:
            names.append("sparse_mmap")
        if self.msix_mappable:
            names.append("msix_mappable")
        if self.region_type is not None:
            names.append("type")
        return names

    @property
    def mmappable(self) -> bool:
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_MMAP)


@dataclass(frozen=True)
class IrqInfo:
    index: int
    flags: int
    count: int

    @property
    def flag_names(self) -> list[str]:
        return flag_names(self.flags, IRQ_FLAGS)


def device_info(fd: int, handle: str) -> DeviceInfo:
    info = new("struct vfio_device_info")
    ioctl(fd, "VFIO_DEVICE_GET_INFO", info, handle)
    return DeviceInfo(info.flags, info.num_regions, info.num_irqs)


def region_info(fd: int, index: int, handle: str) -> RegionInfo:
    """VFIO_DEVICE_GET_REGION_INFO, re-asked with a larger buffer when caps do not fit."""
    info = new("struct vfio_region_info", index=index)
    ioctl(fd, "VFIO_DEVICE_GET_REGION_INFO", info, handle)
    if info.argsz > ffi.sizeof("struct vfio_region_info"):
        raw = ffi.new("char[]", info.argsz)
        info = ffi.cast("struct vfio_region_info *", raw)
        info.argsz = len(raw)
        info.index = index
        ioctl(fd, "VFIO_DEVICE_GET_REGION_INFO", info, handle)
    sparse: tuple[tuple[int, int], ...] = ()
    msix = False
    rtype = None
    ids = []
    if info.flags & lib.VFIO_REGION_INFO_FLAG_CAPS:
        for cap_id, _version, ptr in capchain.walk(info, info.cap_offset):
            ids.append(cap_id)
            if cap_id == lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP:
                cap = ffi.cast("struct vfio_region_info_cap_sparse_mmap *", ptr)
                sparse = tuple((cap.areas[i].offset, cap.areas[i].size)
                               for i in range(cap.nr_areas))
            elif cap_id == lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
                msix = True
            elif cap_id == lib.VFIO_REGION_INFO_CAP_TYPE:
                t = ffi.cast("struct vfio_region_info_cap_type *", ptr)
                rtype = (t.type, t.subtype)
    return RegionInfo(index, info.flags, info.size, info.offset, sparse, msix, rtype,
                      tuple(ids))


def irq_info(fd: int, index: int, handle: str) -> IrqInfo:
    info = new("struct vfio_irq_info", index=index)
    ioctl(fd, "VFIO_DEVICE_GET_IRQ_INFO", info, handle)
    return IrqInfo(index, info.flags, info.count)
