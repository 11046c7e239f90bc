"""iommufd's nested-translation objects and its VFIO type1 compat layer, as the kernel's
iommufd selftests drive them through CONFIG_IOMMUFD_TEST's mock IOMMU.

Nested HW page tables with the mock's driver data (IOMMU_HWPT_DATA_SELFTEST), cache
invalidation arrays (IOMMU_HWPT_INVALIDATE), vIOMMU (IOMMU_VIOMMU_ALLOC), vDEVICE,
vEVENTQ, HW queue and fault queue objects with the mock's triggers, IOMMU_VFIO_IOAS.
The structs are include/uapi/linux/iommufd.h's and drivers/iommu/iommufd/iommufd_test.h's
(7.2), declared in csrc/ and checked against the tree by tests/unit/test_uapi_layout.py.
Every call raises VfioError with the kernel's errno.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import struct
from dataclasses import dataclass, field
from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import close_fd, ioctl, new
from vfio_scenario.uapi.iommufd_mock import Hwpt, test_cmd

HANDLE = "/dev/iommu"


class IommufdObject:
    """An iommufd object a step made, by its id (IOMMU_DESTROY takes it)."""

    id: int


@dataclass
class Viommu(IommufdObject):
    """A vIOMMU; with the mock's data, the mmap region the kernel reported for it."""

    id: int
    out_data: int | None = None
    mmap_offset: int = 0
    mmap_length: int = 0


@dataclass
class Vdevice(IommufdObject):
    id: int


@dataclass
class HwQueue(IommufdObject):
    id: int


@dataclass
class EventQueue(IommufdObject):
    """A vEVENTQ or a fault queue: its object id and its fd (closed once)."""

    id: int
    fd: int
    prev_seq: int = -1  # the sequence of the last vEVENT record read
    closed: bool = field(default=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            close_fd(self.fd)


def _ptr(buf: Any) -> int:
    return int(ffi.cast("uintptr_t", buf))


def alloc_hwpt_data(fd: int, dev_id: int, pt_id: int, flags: int, data_type: int,
                    data: bytes | None, data_len: int, fault_id: int = 0) -> Hwpt:
    """IOMMU_HWPT_ALLOC with `data_len` bytes of driver data at `data` (None: NULL)."""
    keep = ffi.new("uint8_t[]", max(len(data or b""), 1))
    if data:
        ffi.memmove(keep, data, len(data))
    arg = new("struct iommu_hwpt_alloc", dev_id=dev_id, pt_id=pt_id, flags=flags,
              data_type=data_type, data_len=data_len,
              data_uptr=0 if data is None else _ptr(keep), fault_id=fault_id)
    ioctl(fd, "IOMMU_HWPT_ALLOC", arg, HANDLE)
    return Hwpt(arg.out_hwpt_id)


def hwpt_selftest_data(iotlb: int) -> bytes:
    data = ffi.new("struct iommu_hwpt_selftest *", {"iotlb": iotlb})
    return bytes(ffi.buffer(data))


def check_iotlb(fd: int, hwpt_id: int, iotlb_id: int, value: int) -> None:
    test_cmd(fd, "MD_CHECK_IOTLB", hwpt_id, **{"check_iotlb.id": iotlb_id,
                                               "check_iotlb.iotlb": value})


def invalidate(fd: int, target_id: int, data_type: int, array: bytes | None, entry_len: int,
               entry_num: int) -> tuple[int, VfioError | None]:
    """IOMMU_HWPT_INVALIDATE: (the entry_num the kernel wrote back, its error or None)."""
    keep = ffi.new("uint8_t[]", max(len(array or b""), 1))
    if array:
        ffi.memmove(keep, array, len(array))
    arg = new("struct iommu_hwpt_invalidate", hwpt_id=target_id, data_type=data_type,
              data_uptr=0 if array is None else _ptr(keep), entry_len=entry_len,
              entry_num=entry_num)
    ret = lib.vs_ioctl(fd, lib.IOMMU_HWPT_INVALIDATE, arg)
    error = VfioError(-ret, "IOMMU_HWPT_INVALIDATE", HANDLE) if ret < 0 else None
    return int(arg.entry_num), error


def alloc_viommu(fd: int, dev_id: int, hwpt_id: int, viommu_type: int,
                 in_data: int | None) -> Viommu:
    data = ffi.new("struct iommu_viommu_selftest *", {"in_data": in_data or 0})
    arg = new("struct iommu_viommu_alloc", type=viommu_type, dev_id=dev_id, hwpt_id=hwpt_id)
    if in_data is not None:
        arg.data_uptr = _ptr(data)
        arg.data_len = ffi.sizeof(data[0])
    ioctl(fd, "IOMMU_VIOMMU_ALLOC", arg, HANDLE)
    if in_data is None:
        return Viommu(arg.out_viommu_id)
    return Viommu(arg.out_viommu_id, data.out_data, data.out_mmap_offset, data.out_mmap_length)


def mmap_iommufd(fd: int, length: int, offset: int) -> mmap.mmap:
    """A shared read/write mapping of the iommufd (a vIOMMU's region)."""
    try:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                         offset=offset)
    except OSError as e:
        raise VfioError(e.errno or errno.EIO, "mmap", HANDLE) from None


def alloc_vdevice(fd: int, viommu_id: int, dev_id: int, virt_id: int) -> Vdevice:
    arg = new("struct iommu_vdevice_alloc", viommu_id=viommu_id, dev_id=dev_id,
              virt_id=virt_id)
    ioctl(fd, "IOMMU_VDEVICE_ALLOC", arg, HANDLE)
    return Vdevice(arg.out_vdevice_id)


def alloc_veventq(fd: int, viommu_id: int, veventq_type: int, depth: int) -> EventQueue:
    arg = new("struct iommu_veventq_alloc", viommu_id=viommu_id, type=veventq_type,
              veventq_depth=depth)
    ioctl(fd, "IOMMU_VEVENTQ_ALLOC", arg, HANDLE)
    return EventQueue(arg.out_veventq_id, arg.out_veventq_fd)


def alloc_fault_queue(fd: int) -> EventQueue:
    arg = new("struct iommu_fault_alloc")
    ioctl(fd, "IOMMU_FAULT_QUEUE_ALLOC", arg, HANDLE)
    return EventQueue(arg.out_fault_id, arg.out_fault_fd)


def alloc_hw_queue(fd: int, viommu_id: int, queue_type: int, index: int, iova: int,
                   length: int) -> HwQueue:
    arg = new("struct iommu_hw_queue_alloc", viommu_id=viommu_id, type=queue_type,
              index=index, nesting_parent_iova=iova, length=length)
    ioctl(fd, "IOMMU_HW_QUEUE_ALLOC", arg, HANDLE)
    return HwQueue(arg.out_hw_queue_id)


def trigger_vevent(fd: int, dev_id: int) -> None:
    test_cmd(fd, "TRIGGER_VEVENT", 0, **{"trigger_vevent.dev_id": dev_id})


def read_fd(fd: int, size: int, what: str, wait: float | None = None) -> bytes:
    """read(2) of up to `size` bytes (after poll(2) for at most `wait` seconds)."""
    if wait is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(int(wait * 1000))
    try:
        return os.read(fd, size)
    except OSError as e:
        raise VfioError(e.errno or errno.EIO, "read", what) from None


VEVENT_HEADER = struct.Struct("<II")  # struct iommufd_vevent_header: flags, sequence
SELFTEST_EVENT = struct.Struct("<I")  # struct iommu_viommu_event_selftest: virt_id


@dataclass(frozen=True)
class Vevent:
    """One record a vEVENTQ read returned: its header and, unless it reports lost
    events, the mock's virt_id."""

    flags: int
    sequence: int
    virt_id: int | None

    @property
    def lost(self) -> bool:
        return bool(self.flags & lib.IOMMU_VEVENTQ_FLAG_LOST_EVENTS)


def parse_vevents(data: bytes) -> list[Vevent]:
    """The records of a vEVENTQ read: a header, then the event's data unless the header
    reports lost events (which has none)."""
    out, at = [], 0
    while at + VEVENT_HEADER.size <= len(data):
        flags, sequence = VEVENT_HEADER.unpack_from(data, at)
        at += VEVENT_HEADER.size
        if flags & lib.IOMMU_VEVENTQ_FLAG_LOST_EVENTS:
            out.append(Vevent(flags, sequence, None))
            continue
        if at + SELFTEST_EVENT.size > len(data):
            raise VfioError(errno.EIO, "read", "vEVENTQ",
                            f"a header at byte {at - VEVENT_HEADER.size} without its event")
        (virt_id,) = SELFTEST_EVENT.unpack_from(data, at)
        at += SELFTEST_EVENT.size
        out.append(Vevent(flags, sequence, virt_id))
    if at != len(data):
        raise VfioError(errno.EIO, "read", "vEVENTQ", f"{len(data) - at} stray bytes")
    return out


def vevent_record_size() -> int:
    return VEVENT_HEADER.size + SELFTEST_EVENT.size


def trigger_iopf(fd: int, dev_id: int, pasid: int, grpid: int, perm: int, addr: int) -> None:
    test_cmd(fd, "TRIGGER_IOPF", 0, **{"trigger_iopf.dev_id": dev_id,
                                       "trigger_iopf.pasid": pasid,
                                       "trigger_iopf.grpid": grpid,
                                       "trigger_iopf.perm": perm,
                                       "trigger_iopf.addr": addr})


def read_fault(fault_fd: int) -> Any:
    """One struct iommu_hwpt_pgfault from a fault queue's fd."""
    size = ffi.sizeof("struct iommu_hwpt_pgfault")
    data = read_fd(fault_fd, size, "fault queue")
    if len(data) < size:
        raise VfioError(errno.EIO, "read", "fault queue",
                        f"{len(data)} bytes, not a {size}-byte fault")
    fault = ffi.new("struct iommu_hwpt_pgfault *")
    ffi.memmove(fault, data, size)
    return fault


def respond_fault(fault_fd: int, cookie: int, code: int) -> None:
    response = ffi.new("struct iommu_hwpt_page_response *", {"cookie": cookie, "code": code})
    try:
        written = os.write(fault_fd, bytes(ffi.buffer(response)))
    except OSError as e:
        raise VfioError(e.errno or errno.EIO, "write", "fault queue") from None
    if written <= 0:
        raise VfioError(errno.EIO, "write", "fault queue", "the response was not taken")


VFIO_IOAS_OPS = {"get": 0, "set": 1, "clear": 2}  # IOMMU_VFIO_IOAS_GET/SET/CLEAR


def vfio_ioas(fd: int, action: str, ioas_id: int = 0) -> int:
    """IOMMU_VFIO_IOAS: the compat IOAS's id after the action (GET reports it)."""
    arg = new("struct iommu_vfio_ioas", op=VFIO_IOAS_OPS[action], ioas_id=ioas_id)
    ioctl(fd, "IOMMU_VFIO_IOAS", arg, HANDLE)
    return int(arg.ioas_id)
