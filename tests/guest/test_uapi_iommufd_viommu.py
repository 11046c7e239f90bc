"""iommufd's nested translation and vIOMMU objects, and its VFIO type1 compat, against the
testbed kernel's mock IOMMU: every call of vfio_scenario.uapi.iommufd_viommu meets the
kernel's answer (ids, counts written back, IOTLB and cache values, events, faults)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi import iommufd_viommu as nest
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.iommufd import Iommufd

from tests.helpers.errnos import errno_of

IOTLB = lib.IOMMU_TEST_IOTLB_DEFAULT


@dataclass
class Nest:
    iommufd: Iommufd
    fd: int
    ioas: int
    dev: mock.MockDevice
    parent: mock.Hwpt
    viommu: nest.Viommu


@pytest.fixture
def nested(mock_iommufd: Iommufd) -> Nest:
    """The selftest's iommufd_viommu fixture: a mock device, a nesting parent, a vIOMMU."""
    ioas = mock_iommufd.alloc_ioas()
    dev = mock.mock_domain(mock_iommufd.fd, ioas.id)
    parent = mock.alloc_hwpt(mock_iommufd.fd, dev.idev_id, ioas.id,
                             lib.IOMMU_HWPT_ALLOC_NEST_PARENT)
    viommu = nest.alloc_viommu(mock_iommufd.fd, dev.idev_id, parent.id,
                               lib.IOMMU_VIOMMU_TYPE_SELFTEST, None)
    return Nest(mock_iommufd, mock_iommufd.fd, ioas.id, dev, parent, viommu)


def _nested_hwpt(n: Nest, parent: int, iotlb: int = IOTLB, fault: int = 0) -> mock.Hwpt:
    flags = lib.IOMMU_HWPT_FAULT_ID_VALID if fault else 0
    return nest.alloc_hwpt_data(n.fd, n.dev.idev_id, parent, flags,
                                lib.IOMMU_HWPT_DATA_SELFTEST, nest.hwpt_selftest_data(iotlb),
                                ffi.sizeof("struct iommu_hwpt_selftest"), fault)


def _hwpt_requests(*reqs: tuple[int, int]) -> bytes:
    out = ffi.new("struct iommu_hwpt_invalidate_selftest[]", max(len(reqs), 2))
    for i, (flags, iotlb_id) in enumerate(reqs):
        out[i].flags, out[i].iotlb_id = flags, iotlb_id
    return bytes(ffi.buffer(out))


def test_nested_hwpt_carries_the_iotlb_value_and_invalidation_reports_its_count(
        nested: Nest) -> None:
    hwpt = _nested_hwpt(nested, nested.parent.id, iotlb=0x1234)
    for i in range(lib.MOCK_NESTED_DOMAIN_IOTLB_NUM):
        nest.check_iotlb(nested.fd, hwpt.id, i, 0x1234)
    assert errno_of(nest.check_iotlb, nested.fd, hwpt.id, 0, IOTLB) == "EINVAL"
    entry = ffi.sizeof("struct iommu_hwpt_invalidate_selftest")
    sel = lib.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
    # the second request is bad: the kernel did the first and says so
    done, error = nest.invalidate(nested.fd, hwpt.id, sel, _hwpt_requests((0, 0), (0, 9)),
                                  entry, 2)
    assert (done, error and error.errno_name) == (1, "EINVAL")
    nest.check_iotlb(nested.fd, hwpt.id, 0, 0)
    nest.check_iotlb(nested.fd, hwpt.id, 1, 0x1234)
    done, error = nest.invalidate(nested.fd, hwpt.id, sel,
                                  _hwpt_requests((lib.IOMMU_TEST_INVALIDATE_FLAG_ALL, 0)),
                                  entry, 1)
    assert (done, error) == (1, None)
    for i in range(lib.MOCK_NESTED_DOMAIN_IOTLB_NUM):
        nest.check_iotlb(nested.fd, hwpt.id, i, 0)
    # a NULL array, and data one byte short
    done, error = nest.invalidate(nested.fd, hwpt.id, sel, None, entry, 1)
    assert (done, error and error.errno_name) == (0, "EINVAL")
    assert errno_of(nest.alloc_hwpt_data, nested.fd, nested.dev.idev_id, nested.parent.id, 0,
                    lib.IOMMU_HWPT_DATA_SELFTEST, nest.hwpt_selftest_data(IOTLB), 3) == "EINVAL"
    assert errno_of(nest.alloc_hwpt_data, nested.fd, nested.dev.idev_id, nested.parent.id, 0,
                    lib.IOMMU_HWPT_DATA_SELFTEST, None, 8) == "EFAULT"


def test_viommu_loops_its_data_back_and_maps_its_region(nested: Nest) -> None:
    with_data = nest.alloc_viommu(nested.fd, nested.dev.idev_id, nested.parent.id,
                                  lib.IOMMU_VIOMMU_TYPE_SELFTEST, 0xBEEF)
    assert with_data.out_data == 0xBEEF and with_data.mmap_length > 0
    assert errno_of(nest.mmap_iommufd, nested.fd, with_data.mmap_length,
                    with_data.mmap_offset + 4096) == "ENXIO"
    region = nest.mmap_iommufd(nested.fd, with_data.mmap_length, with_data.mmap_offset)
    try:
        assert int.from_bytes(region[:4], "little") == 0xBEEF
        assert errno_of(nested.iommufd.destroy, with_data.id) == "EBUSY"
    finally:
        region.close()
    nested.iommufd.destroy(with_data.id)
    assert errno_of(nest.alloc_viommu, nested.fd, nested.dev.idev_id, nested.parent.id,
                    0xDEAD, None) == "EOPNOTSUPP"


def test_vdevice_events_reach_the_veventq_in_sequence(nested: Nest) -> None:
    hwpt = _nested_hwpt(nested, nested.viommu.id)
    queue = nest.alloc_veventq(nested.fd, nested.viommu.id, lib.IOMMU_VEVENTQ_TYPE_SELFTEST, 2)
    try:
        assert errno_of(nest.read_fd, queue.fd, 0, "q") == "EINVAL"
        vdev = nest.alloc_vdevice(nested.fd, nested.viommu.id, nested.dev.idev_id, 0x42)
        assert vdev.id > 0
        assert errno_of(nest.alloc_vdevice, nested.fd, nested.viommu.id, nested.dev.idev_id,
                        0x42) == "EEXIST"
        mock.mock_domain_replace(nested.fd, nested.dev.stdev_id, hwpt.id)
        nest.trigger_vevent(nested.fd, nested.dev.idev_id)
        nest.trigger_vevent(nested.fd, nested.dev.idev_id)
        records = nest.parse_vevents(nest.read_fd(queue.fd, 64, "q", wait=1.0))
        assert [(r.lost, r.virt_id) for r in records] == [(False, 0x42), (False, 0x42)]
        assert records[1].sequence == records[0].sequence + 1
        # three more overflow the depth-2 queue: two events, then a lost-events header
        for _ in range(3):
            nest.trigger_vevent(nested.fd, nested.dev.idev_id)
        records = nest.parse_vevents(nest.read_fd(queue.fd, 64, "q", wait=1.0))
        assert [r.lost for r in records] == [False, False, True]
    finally:
        queue.close()
    mock.mock_domain_replace(nested.fd, nested.dev.stdev_id, nested.parent.id)


def test_fault_queue_delivers_the_iopf_and_takes_the_response(nested: Nest) -> None:
    fault = nest.alloc_fault_queue(nested.fd)
    try:
        hwpt = _nested_hwpt(nested, nested.viommu.id, fault=fault.id)
        nest.alloc_vdevice(nested.fd, nested.viommu.id, nested.dev.idev_id, 0x99)
        mock.mock_domain_replace(nested.fd, nested.dev.stdev_id, hwpt.id)
        perm = lib.IOMMU_PGFAULT_PERM_READ | lib.IOMMU_PGFAULT_PERM_WRITE
        nest.trigger_iopf(nested.fd, nested.dev.idev_id, 1, 2, perm, 0xDEADBEAF)
        got = nest.read_fault(fault.fd)
        assert (got.addr, got.grpid, got.perm) == (0xDEADBEAF, 2, perm)
        nest.respond_fault(fault.fd, got.cookie, lib.IOMMUFD_PAGE_RESP_SUCCESS)
        mock.mock_domain_replace(nested.fd, nested.dev.stdev_id, nested.ioas)
    finally:
        fault.close()


def test_hw_queue_pins_its_iova(nested: Nest) -> None:
    sel = lib.IOMMU_HW_QUEUE_TYPE_SELFTEST
    assert errno_of(nest.alloc_hw_queue, nested.fd, nested.viommu.id, sel, 0, 1 << 24,
                    4096) == "ENOENT"
    ioas = next(i for i in nested.iommufd.extra if i.id == nested.ioas)
    buf = ffi.new("uint8_t[]", 8192)
    page = (int(ffi.cast("uintptr_t", buf)) + 4095) & ~4095
    mapping = ioas.map(page, 4096, None)
    queue = nest.alloc_hw_queue(nested.fd, nested.viommu.id, sel, 0, mapping.iova, 4096)
    assert errno_of(ioas.unmap, mapping.iova, 4096) == "EBUSY"
    nested.iommufd.destroy(queue.id)
    ioas.unmap(mapping.iova, 4096)


def test_vfio_ioas_get_set_clear(mock_iommufd: Iommufd) -> None:
    assert errno_of(nest.vfio_ioas, mock_iommufd.fd, "get") == "ENODEV"
    ioas = mock_iommufd.alloc_ioas()
    nest.vfio_ioas(mock_iommufd.fd, "set", ioas.id)
    assert nest.vfio_ioas(mock_iommufd.fd, "get") == ioas.id
    nest.vfio_ioas(mock_iommufd.fd, "clear")
    assert errno_of(nest.vfio_ioas, mock_iommufd.fd, "get") == "ENODEV"


def test_vfio_get_info_returns_capabilities_only_at_the_size_it_asks_for(
        mock_iommufd: Iommufd) -> None:
    """Below the argsz the kernel asks for, VFIO_IOMMU_GET_INFO on the iommufd returns no
    capability chain (cap_offset 0): the selftest's sweep, which stops one byte short,
    never reaches its chain check. At that size the chain is DMA-avail (padded to 8
    bytes), then the IOVA ranges."""
    ioas = mock_iommufd.alloc_ioas()
    mock.mock_domain(mock_iommufd.fd, ioas.id)
    nest.vfio_ioas(mock_iommufd.fd, "set", ioas.id)
    mock.send(mock_iommufd.fd, "VFIO_SET_IOMMU", value=lib.VFIO_TYPE1v2_IOMMU)
    full = ffi.sizeof("struct vfio_iommu_type1_info")
    caplen = mock.send(mock_iommufd.fd, "VFIO_IOMMU_GET_INFO").struct.argsz
    assert caplen > full
    for argsz in range(full, caplen):
        assert mock.send(mock_iommufd.fd, "VFIO_IOMMU_GET_INFO", size=argsz,
                         trailing=bytes(caplen)).struct.cap_offset == 0
    raw = ffi.new("uint8_t[]", caplen)
    info = ffi.cast("struct vfio_iommu_type1_info *", raw)
    info.argsz = caplen
    assert lib.vs_ioctl(mock_iommufd.fd, lib.VFIO_IOMMU_GET_INFO, raw) == 0
    assert info.cap_offset == full
    first = ffi.cast("struct vfio_info_cap_header *", raw + full)
    assert (first.id, first.version, first.next) == (lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1,
                                                     full + 16)
    second = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", raw + first.next)
    assert (second.header.id, second.header.next, second.nr_iovas) == (
        lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 0, 1)
    assert (second.iova_ranges[0].start, second.iova_ranges[0].end) == (
        lib.MOCK_APERTURE_START, lib.MOCK_APERTURE_LAST)
