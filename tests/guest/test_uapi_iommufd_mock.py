"""The mock IOMMU of CONFIG_IOMMUFD_TEST and the iommufd objects beyond the IOAS, against
the testbed kernel: every call of vfio_scenario.uapi.iommufd_mock meets the kernel's answer."""

from __future__ import annotations

import pytest
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi._vfio import lib
from vfio_scenario.uapi.capabilities import HostCapabilities
from vfio_scenario.uapi.iommufd import Iommufd

from tests.helpers.errnos import errno_of

MOCK_APERTURE = (1 << 24, (1 << 31) - 1)  # MOCK_APERTURE_START/LAST (iommufd_test.h)


def test_the_probe_says_the_mock_is_there(caps: HostCapabilities) -> None:
    ok, reason = mock.available()
    assert bool(caps.features["iommufd_test"]) == ok, reason


def test_mock_domain_on_an_ioas_then_replace_and_hwpt_alloc(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    dev = mock.mock_domain(mock_iommufd.fd, ioas.id)
    assert 0 not in (dev.stdev_id, dev.hwpt_id, dev.idev_id)
    for cache in range(4):
        mock.dev_check_cache(mock_iommufd.fd, dev.idev_id, cache, lib.IOMMU_TEST_DEV_CACHE_DEFAULT)
    # the mock domain narrows the IOAS to the mock aperture, 2 KiB pages
    ranges, alignment = ioas.iova_ranges_and_alignment()
    assert [(r.start, r.last) for r in ranges] == [MOCK_APERTURE]
    assert alignment == lib.MOCK_PAGE_SIZE
    hwpt = mock.alloc_hwpt(mock_iommufd.fd, dev.idev_id, ioas.id)
    assert mock.mock_domain_replace(mock_iommufd.fd, dev.stdev_id, hwpt.id) == hwpt.id
    assert errno_of(mock_iommufd.destroy, hwpt.id) == "EBUSY"
    mock.mock_domain_replace(mock_iommufd.fd, dev.stdev_id, ioas.id)
    mock_iommufd.destroy(hwpt.id)
    assert errno_of(mock.alloc_hwpt, mock_iommufd.fd, dev.idev_id, ioas.id,
                    0xFFFFFFFE) == "EOPNOTSUPP"
    mock_iommufd.destroy(dev.stdev_id)
    assert errno_of(mock.mock_domain, mock_iommufd.fd, 0) == "ENOENT"


def test_reserved_ranges_and_the_memory_limit(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    mock.add_reserved(mock_iommufd.fd, ioas.id, 4096, 4096)
    ranges = [(r.start, r.last) for r in ioas.iova_ranges()]
    assert ranges == [(0, 4095), (8192, (1 << 64) - 1)]
    mock.set_temp_memory_limit(mock_iommufd.fd, 16)
    mock.set_temp_memory_limit(mock_iommufd.fd, 65536)


def test_send_sizes_the_struct_and_reports_the_kernelserrno_of(mock_iommufd: Iommufd) -> None:
    assert errno_of(mock.send, mock_iommufd.fd, "IOMMU_DESTROY") == "ENOENT"
    assert errno_of(mock.send, mock_iommufd.fd, "IOMMU_DESTROY", size=7) == "EINVAL"
    assert errno_of(mock.send, mock_iommufd.fd, "IOMMU_DESTROY", size=9,
                    trailing=b"\x01") == "E2BIG"
    assert errno_of(mock.send, mock_iommufd.fd, "IOMMU_DESTROY", null=True) == "EFAULT"
    assert mock.send(mock_iommufd.fd, "VFIO_CHECK_EXTENSION", value=3).result == 1
    sent = mock.send(mock_iommufd.fd, "IOMMU_IOAS_ALLOC")
    assert mock.get(sent.struct, "out_ioas_id") > 0


# past each command's own checks (a type, a depth, a length: 7.2's viommu.c, eventq.c,
# hw_pagetable.c) every one looks up object 0, which does not exist
MISSING_OBJECT = {
    "IOMMU_HWPT_SET_DIRTY_TRACKING": {},
    "IOMMU_HWPT_GET_DIRTY_BITMAP": {},
    "IOMMU_HWPT_INVALIDATE": {},
    "IOMMU_VIOMMU_ALLOC": {"type": 0xDEADBEEF},
    "IOMMU_VDEVICE_ALLOC": {},
    "IOMMU_VEVENTQ_ALLOC": {"type": 0xBEEFBEEF, "veventq_depth": 1},
    "IOMMU_HW_QUEUE_ALLOC": {"type": 0xDEADBEEF, "length": 4096},
}


@pytest.mark.parametrize("name", sorted(MISSING_OBJECT))
def test_object_ioctls_refuse_a_missing_object(mock_iommufd: Iommufd, name: str) -> None:
    assert errno_of(mock.send, mock_iommufd.fd, name, MISSING_OBJECT[name]) == "ENOENT"


def test_fault_queue_alloc_gives_an_object_and_an_fd(mock_iommufd: Iommufd) -> None:
    sent = mock.send(mock_iommufd.fd, "IOMMU_FAULT_QUEUE_ALLOC")
    assert mock.get(sent.struct, "out_fault_id") > 0
    assert mock.get(sent.struct, "out_fault_fd") > 0
