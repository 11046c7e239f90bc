"""iommufd dirty tracking (IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP) and
the mock IOMMU's dirty and PASID test commands (IOMMU_TEST_OP_DIRTY, IOMMU_TEST_OP_PASID_*).

The structs are include/uapi/linux/iommufd.h's and drivers/iommu/iommufd/iommufd_test.h's
(7.2; tests/unit/test_uapi_layout.py checks them). A dirty bitmap is the kernel's: bit i
of a little-endian array of unsigned longs stands for the page at iova + i * page_size,
as include/uapi/linux/iommufd.h describes IOMMU_HWPT_GET_DIRTY_BITMAP's `data`. Every
call raises VfioError with the kernel's errno.
"""

from __future__ import annotations

from typing import Any

from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import ioctl, new
from vfio_scenario.uapi.iommufd_mock import test_cmd

PAGE = 4096


class Bitmap:
    """A user bitmap of `nbits` bits starting `offset` bytes into a zeroed, page-aligned
    buffer with a page of room past it (the selftest's bitmap: `posix_memalign(PAGE_SIZE,
    size + PAGE_SIZE)`, used at offsets 0, MOCK_PAGE_SIZE and 0xff1)."""

    def __init__(self, nbits: int, offset: int = 0) -> None:
        self.nbits, self.offset = nbits, offset
        self.nbytes = (nbits + 7) // 8
        self.size = (offset + self.nbytes + PAGE - 1) // PAGE * PAGE + PAGE
        self._raw = ffi.new("uint8_t[]", self.size + PAGE)  # zeroed
        base = int(ffi.cast("uintptr_t", self._raw))
        self._start = (base + PAGE - 1) & ~(PAGE - 1)
        self._region = ffi.cast("uint8_t *", self._start)

    @property
    def addr(self) -> int:
        """The user address of bit 0."""
        return self._start + self.offset

    def clear(self) -> None:
        ffi.memmove(self._region, bytes(self.size), self.size)

    def set_every(self, every: int) -> int:
        """Zero the whole buffer and set bits 0, every, 2*every … below nbits; returns how
        many were set."""
        bits = expected_bits(self.nbits, every, 1).to_bytes(self.nbytes, "little")
        data = bytes(self.offset) + bits + bytes(self.size - self.offset - self.nbytes)
        ffi.memmove(self._region, data, self.size)
        return len(range(0, self.nbits, every))

    def bits(self) -> int:
        """The bitmap as the kernel left it: bit i of the returned integer is bit i."""
        raw = bytes(ffi.buffer(self._region + self.offset, self.nbytes))
        return int.from_bytes(raw, "little")

    def written_outside(self) -> list[int]:
        """Offsets (from the buffer's start) of non-zero bytes outside the bitmap's bytes."""
        raw = bytes(ffi.buffer(self._region, self.size))
        end = self.offset + self.nbytes
        before, after = raw[:self.offset], raw[end:]
        if not before.strip(b"\0") and not after.strip(b"\0"):  # (bytes ops: no loop here)
            return []
        return [i for i, b in enumerate(raw) if b and not self.offset <= i < end]


def expected_bits(nbits: int, every: int, first: int) -> int:
    """The integer whose bit i (i < nbits) is set when i % every < first."""
    if not nbits:
        return 0
    run = min(first, every)
    bits = (("1" * run + "0" * (every - run)) * (nbits // every + 1))[:nbits]
    return int(bits[::-1], 2)  # bits[i] is bit i


def set_dirty_tracking(fd: int, hwpt_id: int, enable: bool) -> None:
    arg = new("struct iommu_hwpt_set_dirty_tracking", hwpt_id=hwpt_id,
              flags=lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0)
    ioctl(fd, "IOMMU_HWPT_SET_DIRTY_TRACKING", arg, "/dev/iommu")


def get_dirty_bitmap(fd: int, hwpt_id: int, iova: int, length: int, page_size: int,
                     bitmap: Bitmap, no_clear: bool = False) -> None:
    """The kernel writes into `bitmap` which pages of [iova, iova + length) are dirty
    (and clears their dirty state unless `no_clear`)."""
    arg = new("struct iommu_hwpt_get_dirty_bitmap", hwpt_id=hwpt_id, iova=iova,
              length=length, page_size=page_size, data=bitmap.addr,
              flags=lib.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR if no_clear else 0)
    ioctl(fd, "IOMMU_HWPT_GET_DIRTY_BITMAP", arg, "/dev/iommu")


def mock_set_dirty(fd: int, hwpt_id: int, iova: int, length: int, page_size: int,
                   bitmap: Bitmap) -> int:
    """IOMMU_TEST_OP_DIRTY: the mock domain marks dirty the page of each bit set in
    `bitmap`; returns the count the kernel reports (out_nr_dirty)."""
    cmd: Any = test_cmd(fd, "DIRTY", hwpt_id, **{"dirty.iova": iova, "dirty.length": length,
                                                  "dirty.page_size": page_size,
                                                  "dirty.uptr": bitmap.addr})
    return int(cmd.dirty.out_nr_dirty)


def pasid_attach(fd: int, stdev_id: int, pasid: int, pt_id: int) -> None:
    test_cmd(fd, "PASID_ATTACH", stdev_id, **{"pasid_attach.pasid": pasid,
                                               "pasid_attach.pt_id": pt_id})


def pasid_replace(fd: int, stdev_id: int, pasid: int, pt_id: int) -> None:
    test_cmd(fd, "PASID_REPLACE", stdev_id, **{"pasid_replace.pasid": pasid,
                                                "pasid_replace.pt_id": pt_id})


def pasid_detach(fd: int, stdev_id: int, pasid: int) -> None:
    test_cmd(fd, "PASID_DETACH", stdev_id, **{"pasid_detach.pasid": pasid})


def pasid_check(fd: int, stdev_id: int, pasid: int, hwpt_id: int) -> None:
    """The kernel answers EINVAL unless PASID `pasid` is attached to `hwpt_id` (0: to
    nothing)."""
    test_cmd(fd, "PASID_CHECK_HWPT", stdev_id, **{"pasid_check.pasid": pasid,
                                                   "pasid_check.hwpt_id": hwpt_id})
