"""iommufd dirty tracking and the mock IOMMU's dirty and PASID commands against the testbed
kernel: every call of vfio_scenario.uapi.iommufd_dirty meets the kernel's answer, and the
bitmaps checked are the ones the kernel wrote."""

from __future__ import annotations

import pytest
from vfio_scenario.uapi import iommufd_dirty as dirty
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi._vfio import lib
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.iommufd import Ioas, Iommufd

from tests.helpers.errnos import errno_of

PAGE = 2048  # MOCK_PAGE_SIZE: one bit of the mock's dirty bitmaps
SIZE = 64 * 1024
NBITS = SIZE // PAGE


def _tracked(mock_iommufd: Iommufd) -> tuple[Ioas, mock.MockDevice, mock.Hwpt, DmaBuffer]:
    """The selftest's dirty fixture: an IOAS with 4 KiB pages only, a mock device, a
    DIRTY_TRACKING HW page table of 2 KiB mock pages with SIZE bytes mapped at the
    aperture's start."""
    ioas = mock_iommufd.alloc_ioas()
    mock.send(mock_iommufd.fd, "IOMMU_OPTION", {"option_id": lib.IOMMU_OPTION_HUGE_PAGES,
                                                "op": lib.IOMMU_OPTION_OP_SET,
                                                "object_id": ioas.id, "val64": 0})
    dev = mock.mock_domain(mock_iommufd.fd, ioas.id)
    buf = DmaBuffer(SIZE, "memfd")
    ioas.map(buf.addr, SIZE, lib.MOCK_APERTURE_START)
    hwpt = mock.alloc_hwpt(mock_iommufd.fd, dev.idev_id, ioas.id,
                           lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                           (0, mock.PAGETABLE_TYPES["default"]))
    return ioas, dev, hwpt, buf


@pytest.mark.parametrize("offset", [0, PAGE, 0xFF1])
def test_the_bitmap_holds_what_the_mock_marked_then_nothing(mock_iommufd: Iommufd,
                                                            offset: int) -> None:
    _, _, hwpt, _ = _tracked(mock_iommufd)
    dirty.set_dirty_tracking(mock_iommufd.fd, hwpt.id, True)
    marks = dirty.Bitmap(NBITS, offset)
    assert marks.set_every(2) == NBITS // 2
    assert dirty.mock_set_dirty(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE,
                                marks) == NBITS // 2
    got = dirty.Bitmap(NBITS, offset)
    dirty.get_dirty_bitmap(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE, got)
    assert got.bits() == dirty.expected_bits(NBITS, 2, 1) != 0
    assert got.written_outside() == []
    again = dirty.Bitmap(NBITS, offset)
    dirty.get_dirty_bitmap(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE, again)
    assert again.bits() == 0  # read, so cleared


def test_an_odd_2k_page_is_reported_as_the_first_half_of_its_4k_page(mock_iommufd: Iommufd) -> None:
    """Seen on 7.2 (not what the C test checks: it marks even 2 KiB pages only): the IOAS
    maps 4 KiB pages, and the mock reports a dirty 2 KiB page as bit 2n of the 4 KiB
    page n holding it, never bit 2n + 1."""
    _, _, hwpt, _ = _tracked(mock_iommufd)
    dirty.set_dirty_tracking(mock_iommufd.fd, hwpt.id, True)
    marks = dirty.Bitmap(NBITS)
    assert marks.set_every(3) == 11  # bits 0, 3, 6 … 30
    dirty.mock_set_dirty(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE, marks)
    got = dirty.Bitmap(NBITS)
    dirty.get_dirty_bitmap(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE, got)
    assert got.bits() == sum(1 << (i & ~1) for i in range(0, NBITS, 3))


def test_no_clear_leaves_the_pages_dirty(mock_iommufd: Iommufd) -> None:
    _, _, hwpt, _ = _tracked(mock_iommufd)
    dirty.set_dirty_tracking(mock_iommufd.fd, hwpt.id, True)
    marks = dirty.Bitmap(NBITS)
    marks.set_every(2)
    dirty.mock_set_dirty(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE, marks)
    for _ in range(2):
        got = dirty.Bitmap(NBITS)
        dirty.get_dirty_bitmap(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE, got,
                               no_clear=True)
        assert got.bits() == dirty.expected_bits(NBITS, 2, 1)


def test_the_mock_marks_nothing_unless_tracking_is_on(mock_iommufd: Iommufd) -> None:
    _, _, hwpt, _ = _tracked(mock_iommufd)
    marks = dirty.Bitmap(NBITS)
    marks.set_every(1)
    # selftest.c: a mock domain without MOCK_DIRTY_TRACK refuses IOMMU_TEST_OP_DIRTY
    assert errno_of(dirty.mock_set_dirty, mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE,
                    PAGE, marks) == "EINVAL"
    dirty.set_dirty_tracking(mock_iommufd.fd, hwpt.id, True)
    assert dirty.mock_set_dirty(mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE, PAGE,
                                marks) == NBITS
    dirty.set_dirty_tracking(mock_iommufd.fd, hwpt.id, False)
    assert errno_of(dirty.mock_set_dirty, mock_iommufd.fd, hwpt.id, lib.MOCK_APERTURE_START, SIZE,
                    PAGE, marks) == "EINVAL"


def test_dirty_ioctls_refuse_what_they_do_not_know(mock_iommufd: Iommufd) -> None:
    _, _, hwpt, _ = _tracked(mock_iommufd)
    assert errno_of(dirty.set_dirty_tracking, mock_iommufd.fd, 0, True) == "ENOENT"
    # a flag other than ENABLE (hw_pagetable.c)
    assert errno_of(mock.send, mock_iommufd.fd, "IOMMU_HWPT_SET_DIRTY_TRACKING",
                    {"hwpt_id": hwpt.id, "flags": 2}) == "EOPNOTSUPP"
    assert errno_of(dirty.get_dirty_bitmap, mock_iommufd.fd, 0, lib.MOCK_APERTURE_START, SIZE, PAGE,
                    dirty.Bitmap(NBITS)) == "ENOENT"


def test_a_device_without_dirty_tracking_gets_no_dirty_hwpt(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    dev = mock.mock_domain(mock_iommufd.fd, ioas.id, lib.MOCK_FLAGS_DEVICE_NO_DIRTY)
    assert errno_of(mock.alloc_hwpt, mock_iommufd.fd, dev.idev_id, ioas.id,
                    lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING) == "EOPNOTSUPP"


def test_pasid_attach_check_replace_detach(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    dev = mock.mock_domain(mock_iommufd.fd, ioas.id, lib.MOCK_FLAGS_DEVICE_PASID)
    first = mock.alloc_hwpt(mock_iommufd.fd, dev.idev_id, ioas.id, lib.IOMMU_HWPT_ALLOC_PASID)
    second = mock.alloc_hwpt(mock_iommufd.fd, dev.idev_id, ioas.id, lib.IOMMU_HWPT_ALLOC_PASID)
    # the device's RID is on its mock domain, which is not PASID-compatible
    assert errno_of(dirty.pasid_attach, mock_iommufd.fd, dev.stdev_id, 100, first.id) == "EINVAL"
    mock.mock_domain_replace(mock_iommufd.fd, dev.stdev_id, first.id)
    dirty.pasid_check(mock_iommufd.fd, dev.stdev_id, 100, 0)
    dirty.pasid_attach(mock_iommufd.fd, dev.stdev_id, 100, second.id)
    dirty.pasid_check(mock_iommufd.fd, dev.stdev_id, 100, second.id)
    # the kernel compares: attached elsewhere, or attached at all, is EINVAL
    assert errno_of(dirty.pasid_check, mock_iommufd.fd, dev.stdev_id, 100, first.id) == "EINVAL"
    assert errno_of(dirty.pasid_check, mock_iommufd.fd, dev.stdev_id, 100, 0) == "EINVAL"
    assert errno_of(dirty.pasid_attach, mock_iommufd.fd, dev.stdev_id, 100, first.id) == "EBUSY"
    dirty.pasid_replace(mock_iommufd.fd, dev.stdev_id, 100, first.id)
    dirty.pasid_check(mock_iommufd.fd, dev.stdev_id, 100, first.id)
    dirty.pasid_detach(mock_iommufd.fd, dev.stdev_id, 100)
    dirty.pasid_check(mock_iommufd.fd, dev.stdev_id, 100, 0)
    assert errno_of(dirty.pasid_replace, mock_iommufd.fd, dev.stdev_id, 200, first.id) == "EINVAL"
    mock.mock_domain_replace(mock_iommufd.fd, dev.stdev_id, ioas.id)
