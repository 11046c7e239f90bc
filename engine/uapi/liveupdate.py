"""Live update, dirty tracking and device low power: the uAPI calls issue #22 adds.

- type1 live update (vfio_iommu_type1.c): VFIO_IOMMU_UNMAP_DMA with
  VFIO_DMA_UNMAP_FLAG_VADDR invalidates the process address of mappings and keeps
  their IOVAs and pinned pages; VFIO_IOMMU_MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR gives
  one the new address (and moves its locked-memory accounting to the caller). The
  container says it supports both with VFIO_CHECK_EXTENSION(VFIO_UPDATE_VADDR).
- iommufd live update (iommufd/ioas.c): IOMMU_IOAS_CHANGE_PROCESS moves the pinned
  pages' accounting of every IOAS of the iommufd to the calling process; only
  IOMMU_IOAS_MAP_FILE mappings can move.
- type1 dirty tracking: VFIO_IOMMU_DIRTY_PAGES START, STOP and GET_BITMAP.
- vfio-pci low power: VFIO_DEVICE_FEATURE LOW_POWER_ENTRY, _ENTRY_WITH_WAKEUP, _EXIT.

Each call is a plain function over the handles of container.py, iommufd.py and
device.py, raising VfioError with the ioctl's name like every other call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import ioctl, new

if TYPE_CHECKING:
    from vfio_scenario.uapi.container import Container
    from vfio_scenario.uapi.device import VfioDevice
    from vfio_scenario.uapi.iommufd import Iommufd

PAGE = 4096


# ---- type1: VADDR ----------------------------------------------------------------

def update_vaddr_supported(container: Container) -> bool:
    """VFIO_CHECK_EXTENSION(VFIO_UPDATE_VADDR) of the container."""
    return container.check_extension(lib.VFIO_UPDATE_VADDR)


def unmap_vaddr(container: Container, iova: int, size: int, unmap_all: bool = False) -> int:
    """VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_VADDR (and _ALL): the mappings keep
    their IOVAs and pages, their process address is invalid. Returns the bytes the
    kernel says it invalidated."""
    flags = lib.VFIO_DMA_UNMAP_FLAG_VADDR | (lib.VFIO_DMA_UNMAP_FLAG_ALL if unmap_all else 0)
    arg = new("struct vfio_iommu_type1_dma_unmap", flags=flags,
              iova=0 if unmap_all else iova, size=0 if unmap_all else size)
    ioctl(container.fd, "VFIO_IOMMU_UNMAP_DMA", arg, container.handle)
    done: int = arg.size
    return done


def map_vaddr(container: Container, vaddr: int, iova: int, size: int) -> None:
    """VFIO_IOMMU_MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR (and no READ/WRITE, which the
    kernel refuses beside it): the invalidated mapping at `iova` gets `vaddr`."""
    arg = new("struct vfio_iommu_type1_dma_map", flags=lib.VFIO_DMA_MAP_FLAG_VADDR,
              vaddr=vaddr, iova=iova, size=size)
    ioctl(container.fd, "VFIO_IOMMU_MAP_DMA", arg, container.handle)


# ---- type1: dirty pages ----------------------------------------------------------

def _dirty(container: Container, flags: int) -> None:
    arg = new("struct vfio_iommu_type1_dirty_bitmap", flags=flags)
    ioctl(container.fd, "VFIO_IOMMU_DIRTY_PAGES", arg, container.handle)


def dirty_start(container: Container) -> None:
    """VFIO_IOMMU_DIRTY_PAGES with FLAG_START."""
    _dirty(container, lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)


def dirty_stop(container: Container) -> None:
    """VFIO_IOMMU_DIRTY_PAGES with FLAG_STOP."""
    _dirty(container, lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)


def dirty_bitmap(container: Container, iova: int, size: int, pgsize: int = PAGE,
                 bitmap_bytes: int | None = None) -> bytes:
    """VFIO_IOMMU_DIRTY_PAGES with FLAG_GET_BITMAP for [iova, iova + size) in pages of
    `pgsize`, into a zeroed bitmap of `bitmap_bytes` (default: the u64-rounded size the
    uAPI asks for). Returns the bitmap as the kernel left it; bit k of byte k // 8 is
    the page at iova + k * pgsize (the kernel's bitmap is of u64 in host order, and x86
    is little-endian)."""
    if bitmap_bytes is None:
        pages = size // pgsize if pgsize > 0 else 0
        bitmap_bytes = max(8, -(-pages // 64) * 8)
    data = ffi.new("__u64[]", max(1, -(-bitmap_bytes // 8)))
    fixed = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap")
    get_size = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get")
    arg = new("struct vfio_iommu_type1_dirty_bitmap", get_size,
              flags=lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)
    arg.argsz = fixed + get_size
    get = ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", arg.data)
    get.iova = iova
    get.size = size
    get.bitmap.pgsize = pgsize
    get.bitmap.size = bitmap_bytes
    get.bitmap.data = data
    ioctl(container.fd, "VFIO_IOMMU_DIRTY_PAGES", arg, container.handle)
    return bytes(ffi.buffer(data, bitmap_bytes))


# ---- iommufd: CHANGE_PROCESS ------------------------------------------------------

def change_process(iommufd: Iommufd, reserved: int = 0) -> None:
    """IOMMU_IOAS_CHANGE_PROCESS: charge every IOAS's pinned pages to this process."""
    arg = new("struct iommu_ioas_change_process", __reserved=reserved)
    ioctl(iommufd.fd, "IOMMU_IOAS_CHANGE_PROCESS", arg, iommufd.handle)


# ---- vfio-pci: low power -----------------------------------------------------------

def low_power_entry(device: VfioDevice) -> None:
    """VFIO_DEVICE_FEATURE SET LOW_POWER_ENTRY (no payload)."""
    device.feature(lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, lib.VFIO_DEVICE_FEATURE_SET)


def low_power_entry_with_wakeup(device: VfioDevice, eventfd: int) -> None:
    """VFIO_DEVICE_FEATURE SET LOW_POWER_ENTRY_WITH_WAKEUP with `eventfd`, which the kernel
    signals when it wakes the device up on its own."""
    body = ffi.new("struct vfio_device_low_power_entry_with_wakeup *")
    body.wakeup_eventfd = eventfd
    device.feature(lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
                   lib.VFIO_DEVICE_FEATURE_SET, bytes(ffi.buffer(body)))


def low_power_exit(device: VfioDevice) -> None:
    """VFIO_DEVICE_FEATURE SET LOW_POWER_EXIT (no payload)."""
    device.feature(lib.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, lib.VFIO_DEVICE_FEATURE_SET)
