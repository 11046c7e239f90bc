"""CONFIG_IOMMUFD_TEST's mock IOMMU (IOMMU_TEST_CMD) and iommufd's objects beyond the IOAS.

The kernel's iommufd selftests (tools/testing/selftests/iommu) drive iommufd through a
mock IOMMU the kernel builds in with CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD makes mock
devices attached to an IOAS or a HW page table, reserves IOVA ranges, checks what the
mock domain maps, and sets a temporary pinned-memory limit. The structs and sub-command
numbers are drivers/iommu/iommufd/iommufd_test.h's (7.2); tests/unit/test_uapi_layout.py
checks them against the tree. Every call raises VfioError with the kernel's errno.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import ioctl, new

# the struct each iommufd/VFIO ioctl takes on the iommufd fd (`send` sizes it by this)
IOCTL_STRUCTS: dict[str, str | None] = {
    "IOMMU_DESTROY": "iommu_destroy",
    "IOMMU_IOAS_ALLOC": "iommu_ioas_alloc",
    "IOMMU_IOAS_ALLOW_IOVAS": "iommu_ioas_allow_iovas",
    "IOMMU_IOAS_COPY": "iommu_ioas_copy",
    "IOMMU_IOAS_IOVA_RANGES": "iommu_ioas_iova_ranges",
    "IOMMU_IOAS_MAP": "iommu_ioas_map",
    "IOMMU_IOAS_MAP_FILE": "iommu_ioas_map_file",
    "IOMMU_IOAS_UNMAP": "iommu_ioas_unmap",
    "IOMMU_OPTION": "iommu_option",
    "IOMMU_VFIO_IOAS": "iommu_vfio_ioas",
    "IOMMU_HWPT_ALLOC": "iommu_hwpt_alloc",
    "IOMMU_GET_HW_INFO": "iommu_hw_info",
    "IOMMU_HWPT_SET_DIRTY_TRACKING": "iommu_hwpt_set_dirty_tracking",
    "IOMMU_HWPT_GET_DIRTY_BITMAP": "iommu_hwpt_get_dirty_bitmap",
    "IOMMU_HWPT_INVALIDATE": "iommu_hwpt_invalidate",
    "IOMMU_FAULT_QUEUE_ALLOC": "iommu_fault_alloc",
    "IOMMU_VIOMMU_ALLOC": "iommu_viommu_alloc",
    "IOMMU_VDEVICE_ALLOC": "iommu_vdevice_alloc",
    "IOMMU_IOAS_CHANGE_PROCESS": "iommu_ioas_change_process",
    "IOMMU_VEVENTQ_ALLOC": "iommu_veventq_alloc",
    "IOMMU_HW_QUEUE_ALLOC": "iommu_hw_queue_alloc",
    "IOMMU_TEST_CMD": "iommu_test_cmd",
    # VFIO's type1 container ioctls, which iommufd answers on its own fd
    "VFIO_GET_API_VERSION": None,
    "VFIO_CHECK_EXTENSION": None,
    "VFIO_SET_IOMMU": None,
    "VFIO_IOMMU_GET_INFO": "vfio_iommu_type1_info",
    "VFIO_IOMMU_MAP_DMA": "vfio_iommu_type1_dma_map",
    "VFIO_IOMMU_UNMAP_DMA": "vfio_iommu_type1_dma_unmap",
}
VALUE_IOCTLS = ("VFIO_CHECK_EXTENSION", "VFIO_SET_IOMMU")  # the argument is an integer
IOMMUFD_TYPE = ord(";")


@dataclass(frozen=True)
class Sent:
    """What one raw command returned: the ioctl's result and the struct as the kernel left it."""

    result: int
    struct: Any


def send(fd: int, request: str | int, fields: dict[str, int] | None = None,
         size: int | None = None, trailing: bytes = b"", null: bool = False,
         value: int | None = None, struct: str | None = None,
         handle: str = "/dev/iommu") -> Sent:
    """One ioctl on an iommufd as given: `request` by name (or a command number under
    IOMMUFD_TYPE, with `struct` naming its argument), the struct zeroed with `fields`
    set, its size field set to `size` (default: the struct's), `trailing` bytes right
    after it; `null` passes a NULL pointer, `value` an integer argument. Raises
    VfioError with the kernel's errno on failure."""
    if isinstance(request, str):
        name, number = request, int(getattr(lib, request))
        ctype = struct or IOCTL_STRUCTS.get(request)
    else:
        name, number = f"_IO(';', {request:#x})", (IOMMUFD_TYPE << 8) | request
        ctype = struct
    if value is not None or null or ctype is None:
        ret: int = (lib.vs_ioctl_val(fd, number, value) if value is not None
                    else lib.vs_ioctl(fd, number, ffi.NULL))
        if ret < 0:
            raise VfioError(-ret, name, handle)
        return Sent(ret, None)
    full = ffi.sizeof(f"struct {ctype}")
    raw = ffi.new("uint8_t[]", full + len(trailing))
    obj = ffi.cast(f"struct {ctype} *", raw)
    setattr(obj, "argsz" if ctype.startswith("vfio_") else "size", full if size is None else size)
    for key, val in (fields or {}).items():
        _set(obj, key, val)
    raw[full:full + len(trailing)] = trailing
    ret = lib.vs_ioctl(fd, number, raw)
    if ret < 0:
        raise VfioError(-ret, name, handle)
    return Sent(ret, obj)


def _set(obj: Any, path: str, value: int) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def get(obj: Any, path: str) -> int:
    """A field of a cffi struct by dotted path (`mock_domain.out_hwpt_id`)."""
    for part in path.split("."):
        obj = getattr(obj, part)
    value: int = obj
    return value


def struct_size(ctype: str) -> int:
    return int(ffi.sizeof(f"struct {ctype}"))


def offset_end(ctype: str, field: str) -> int:
    """offsetofend(struct ctype, field): the smallest size the kernel accepts."""
    struct = ffi.typeof(f"struct {ctype}")
    found = dict(struct.fields)[field]
    return int(found.offset + ffi.sizeof(found.type))


# --- IOMMU_TEST_CMD -------------------------------------------------------------

def test_cmd(fd: int, op: str, object_id: int = 0, **fields: int) -> Any:
    """IOMMU_TEST_CMD with sub-command IOMMU_TEST_OP_`op` on object `object_id`;
    `fields` are dotted paths in the command's union (`add_reserved.start`)."""
    cmd = new("struct iommu_test_cmd", op=getattr(lib, f"IOMMU_TEST_OP_{op}"), id=object_id)
    for key, value in fields.items():
        _set(cmd, key, value)
    ioctl(fd, "IOMMU_TEST_CMD", cmd, f"IOMMU_TEST_OP_{op}")
    return cmd


@dataclass(frozen=True)
class MockDevice:
    """A mock device of the selftest IOMMU: its selftest object (`stdev_id`, destroyed
    with IOMMU_DESTROY), the HW page table it is attached to and its iommufd device id.
    All three are 0 for "no mock device" (the C fixtures' variants without one)."""

    stdev_id: int = 0
    hwpt_id: int = 0
    idev_id: int = 0


def mock_domain(fd: int, pt_id: int, dev_flags: int = 0) -> MockDevice:
    """A mock device attached to `pt_id` (an IOAS: a new mock domain; or a HW page table)."""
    if dev_flags:
        cmd = test_cmd(fd, "MOCK_DOMAIN_FLAGS", pt_id, **{"mock_domain_flags.dev_flags":
                                                          dev_flags})
        out = cmd.mock_domain_flags
    else:
        out = test_cmd(fd, "MOCK_DOMAIN", pt_id).mock_domain
    return MockDevice(out.out_stdev_id, out.out_hwpt_id, out.out_idev_id)


def mock_domain_replace(fd: int, stdev_id: int, pt_id: int) -> int:
    """Attach mock device `stdev_id` to `pt_id`; returns the id of the page table it is
    attached to now (a new mock domain when `pt_id` is an IOAS)."""
    cmd = test_cmd(fd, "MOCK_DOMAIN_REPLACE", stdev_id, **{"mock_domain_replace.pt_id": pt_id})
    return int(cmd.mock_domain_replace.pt_id)


@dataclass(frozen=True)
class Hwpt:
    """A HW page table (IOMMU_HWPT_ALLOC) by its object id."""

    id: int


HWPT_FLAGS = {"nest_parent": 1 << 0, "dirty_tracking": 1 << 1, "fault_id_valid": 1 << 2,
              "pasid": 1 << 3}  # IOMMU_HWPT_ALLOC_* (iommufd.h)


PAGETABLE_TYPES = {"default": lib.MOCK_IOMMUPT_DEFAULT, "huge": lib.MOCK_IOMMUPT_HUGE}


def alloc_hwpt(fd: int, dev_id: int, pt_id: int, flags: int = 0,
               selftest: tuple[int, int] | None = None) -> Hwpt:
    """IOMMU_HWPT_ALLOC; `selftest` (iotlb, pagetable_type) passes the mock's data
    (IOMMU_HWPT_DATA_SELFTEST, struct iommu_hwpt_selftest), else IOMMU_HWPT_DATA_NONE."""
    arg = new("struct iommu_hwpt_alloc", dev_id=dev_id, pt_id=pt_id, flags=flags,
              data_type=lib.IOMMU_HWPT_DATA_NONE)
    data = None
    if selftest is not None:
        data = ffi.new("struct iommu_hwpt_selftest *",
                       {"iotlb": selftest[0], "pagetable_type": selftest[1]})
        arg.data_type = lib.IOMMU_HWPT_DATA_SELFTEST
        arg.data_len = ffi.sizeof("struct iommu_hwpt_selftest")
        arg.data_uptr = int(ffi.cast("uintptr_t", data))
    ioctl(fd, "IOMMU_HWPT_ALLOC", arg, "/dev/iommu")
    del data  # kept alive through the ioctl
    return Hwpt(arg.out_hwpt_id)


def add_reserved(fd: int, ioas_id: int, start: int, length: int) -> None:
    test_cmd(fd, "ADD_RESERVED", ioas_id, **{"add_reserved.start": start,
                                              "add_reserved.length": length})


def set_temp_memory_limit(fd: int, limit: int) -> None:
    """The pinned-page limit of the mock's page storage (65536 is the kernel's default)."""
    test_cmd(fd, "SET_TEMP_MEMORY_LIMIT", 0, **{"memory_limit.limit": limit})


def dev_check_cache(fd: int, idev_id: int, cache_id: int, expected: int) -> None:
    test_cmd(fd, "DEV_CHECK_CACHE", idev_id, **{"check_dev_cache.id": cache_id,
                                                 "check_dev_cache.cache": expected})


def check_map(fd: int, hwpt_id: int, iova: int, length: int, uptr: int) -> None:
    """The mock domain `hwpt_id` maps [iova, iova+length) to the pages of `uptr`."""
    test_cmd(fd, "MD_CHECK_MAP", hwpt_id, **{"check_map.iova": iova,
                                             "check_map.length": length,
                                             "check_map.uptr": uptr})


def check_refs(fd: int, uptr: int, length: int, refs: int) -> None:
    test_cmd(fd, "MD_CHECK_REFS", 0, **{"check_refs.uptr": uptr, "check_refs.length": length,
                                        "check_refs.refs": refs})


def available(path: str = "/dev/iommu") -> tuple[bool, str]:
    """Whether this kernel has the mock IOMMU: IOMMU_TEST_CMD with sub-command 0, which
    the mock refuses (EOPNOTSUPP) and a kernel without it does not know (ENOTTY)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"cannot open {path}: {os.strerror(e.errno or 0)} (CONFIG_IOMMUFD)"
    try:
        cmd = new("struct iommu_test_cmd", op=0)
        ret = lib.vs_ioctl(fd, lib.IOMMU_TEST_CMD, cmd)
    finally:
        os.close(fd)
    if ret == -errno.ENOTTY:
        return False, ("IOMMU_TEST_CMD answers ENOTTY: the kernel has no mock IOMMU "
                       "(CONFIG_IOMMUFD_TEST)")
    if ret == -errno.EOPNOTSUPP:
        return True, ""
    return False, f"IOMMU_TEST_CMD with sub-command 0 answered {ret}, not EOPNOTSUPP"
