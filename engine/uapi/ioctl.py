"""The one way Python reaches an ioctl: by name, with a cffi struct, raising VfioError.

`IOCTLS` lists every ioctl the layer issues; tests compare each number with the
kernel's uAPI.  Every failure raises `VfioError(errno, name, handle)` so a scenario's
`expect: EINVAL` compares errno names.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib

IOCTLS: tuple[str, ...] = (
    "VFIO_GET_API_VERSION",
    "VFIO_CHECK_EXTENSION",
    "VFIO_SET_IOMMU",
    "VFIO_GROUP_GET_STATUS",
    "VFIO_GROUP_SET_CONTAINER",
    "VFIO_GROUP_UNSET_CONTAINER",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_DEVICE_GET_INFO",
    "VFIO_DEVICE_GET_REGION_INFO",
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_DEVICE_SET_IRQS",
    "VFIO_DEVICE_RESET",
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    "VFIO_DEVICE_PCI_HOT_RESET",
    "VFIO_DEVICE_IOEVENTFD",
    "VFIO_DEVICE_FEATURE",
    "VFIO_DEVICE_BIND_IOMMUFD",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    "VFIO_IOMMU_GET_INFO",
    "VFIO_IOMMU_MAP_DMA",
    "VFIO_IOMMU_UNMAP_DMA",
    "VFIO_IOMMU_ENABLE",
    "VFIO_IOMMU_DISABLE",
    "VFIO_IOMMU_DIRTY_PAGES",
    "IOMMU_DESTROY",
    "IOMMU_IOAS_ALLOC",
    "IOMMU_IOAS_ALLOW_IOVAS",
    "IOMMU_IOAS_COPY",
    "IOMMU_IOAS_IOVA_RANGES",
    "IOMMU_IOAS_MAP",
    "IOMMU_IOAS_UNMAP",
    "IOMMU_OPTION",
    "IOMMU_VFIO_IOAS",
    "IOMMU_HWPT_ALLOC",
    "IOMMU_GET_HW_INFO",
    "IOMMU_IOAS_MAP_FILE",
    "IOMMU_HWPT_SET_DIRTY_TRACKING",
    "IOMMU_HWPT_GET_DIRTY_BITMAP",
    "IOMMU_HWPT_INVALIDATE",
    "IOMMU_FAULT_QUEUE_ALLOC",
    "IOMMU_VIOMMU_ALLOC",
    "IOMMU_VDEVICE_ALLOC",
    "IOMMU_IOAS_CHANGE_PROCESS",
    "IOMMU_VEVENTQ_ALLOC",
    "IOMMU_HW_QUEUE_ALLOC",
    # CONFIG_IOMMUFD_TEST's mock IOMMU (drivers/iommu/iommufd/iommufd_test.h)
    "IOMMU_TEST_CMD",
)

# Proposed uAPI not in any released kernel: numbers from the RFC, checked separately.
PROPOSED_IOCTLS: tuple[str, ...] = ("VFIO_DEVICE_PCI_DMABUF_REVOKE",)


def number(name: str) -> int:
    """The request number of an ioctl by its uAPI name."""
    value: int = getattr(lib, name)
    return value


def ioctl(fd: int, name: str, arg: Any = None, handle: str = "") -> int:
    """Issue ioctl `name` on fd with a cffi pointer (or None); returns the kernel's result.

    Raises VfioError(errno, name, handle) when the kernel fails the call.
    """
    ret: int = lib.vs_ioctl(fd, number(name), ffi.NULL if arg is None else arg)
    if ret < 0:
        raise VfioError(-ret, name, handle)
    return ret


def ioctl_val(fd: int, name: str, value: int, handle: str = "") -> int:
    """Issue an ioctl whose argument is an integer passed by value (CHECK_EXTENSION…)."""
    ret: int = lib.vs_ioctl_val(fd, number(name), value)
    if ret < 0:
        raise VfioError(-ret, name, handle)
    return ret


@functools.cache
def _layout(ctype: str) -> tuple[Any, str | None, int, str]:
    """(pointer type, name of the size field or None, fixed size, last field) of a struct.

    Looked up once per struct: `new` runs for every ioctl, in loops of thousands."""
    struct = ffi.typeof(ctype)
    names = [f[0] for f in struct.fields]
    size_field = "argsz" if "argsz" in names else "size" if "size" in names else None
    return ffi.typeof(f"{ctype} *"), size_field, ffi.sizeof(struct), names[-1]


def warm_layouts() -> None:
    """Make every struct's `_layout` now: a process that forks case processes does this
    once, and each of them finds the layouts made instead of making its own (under TCG
    a millisecond each)."""
    for name in ffi.list_types()[1]:
        with contextlib.suppress(ffi.error, TypeError, IndexError):  # an opaque struct
            _layout(f"struct {name}")


def new(ctype: str, items: int | None = None, **fields: int) -> Any:
    """A zeroed struct with its size field (argsz or size) set, plus the given fields.

    `items` sizes the trailing flexible array of a variable-length struct.
    """
    pointer, size_field, size, last = _layout(ctype)
    if items is None:
        obj = ffi.new(pointer)
    else:
        obj = ffi.new(pointer, {last: items})
        size = ffi.sizeof(obj[0])
    if size_field is not None:
        setattr(obj, size_field, size)
    for key, value in fields.items():
        setattr(obj, key, value)
    return obj


def make_cells(obj: Any) -> None:
    """Make `obj`'s cffi out-cells, the C objects its class lists in `CELLS` (attribute
    name: C type), where C helpers write results (errno, bytes unmapped, an IOVA). The one
    list of them: a successor process a handle is handed over to makes them again from it
    (run/handover.py), as a C object does not cross a process boundary."""
    for name, ctype in type(obj).CELLS.items():
        setattr(obj, name, ffi.new(ctype))


def open_fd(path: str, op: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
    """os.open that raises VfioError(errno, op, path) like the ioctls do."""
    try:
        return os.open(path, flags)
    except OSError as e:
        raise VfioError(e.errno or 0, op, path) from None


def close_fd(fd: int) -> None:
    """Close, ignoring an already-closed fd (teardown runs after failures)."""
    with contextlib.suppress(OSError):
        os.close(fd)
