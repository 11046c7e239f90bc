"""Native iommufd with the device cdev: bind, attach, detach, IOAS copy and map-from-file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vfio_scenario.drivers.edu import EduDriver
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.buffers import Backing, DmaBuffer
from vfio_scenario.uapi.capabilities import HostCapabilities
from vfio_scenario.uapi.device import Cdev, VfioDevice
from vfio_scenario.uapi.iommufd import Iommufd
from vfio_scenario.uapi.modes import IommuMode
from vfio_scenario.uapi.patterns import Pattern

LIMIT = 1 << EduDriver.dma_mask_bits


@pytest.fixture
def iommufd(caps: HostCapabilities) -> Iterator[Iommufd]:
    if not caps.iommu_modes[IommuMode.IOMMUFD]:
        pytest.skip(caps.iommu_modes[IommuMode.IOMMUFD].reason)
    fd = Iommufd()
    yield fd
    fd.close()


@pytest.fixture
def bound(iommufd: Iommufd, edu_bdf: str) -> Iterator[VfioDevice]:
    device = Cdev(edu_bdf).bind(iommufd)
    yield device
    device.close()


def _memcpy(device: VfioDevice, src: int, dst: int, size: int) -> None:
    driver = EduDriver(device)
    driver.init()
    try:
        driver.memcpy_start(src, dst, size)
        driver.memcpy_wait()
    finally:
        driver.remove()


def test_bind_gives_a_devid_and_attach_detach_work(bound: VfioDevice,
                                                   iommufd: Iommufd) -> None:
    assert bound.devid is not None and bound.devid > 0
    bound.attach(iommufd.ioas)
    assert bound.attached_pt == iommufd.ioas.id
    bound.detach()
    assert bound.attached_pt is None
    other = iommufd.alloc_ioas()
    bound.attach(other)
    # An IOAS with a device attached cannot be destroyed.
    with pytest.raises(VfioError) as info:
        other.destroy()
    assert (info.value.errno_name, info.value.op) == ("EBUSY", "IOMMU_DESTROY")


def test_iova_ranges_exclude_the_msi_window_once_attached(bound: VfioDevice,
                                                          iommufd: Iommufd) -> None:
    bound.attach(iommufd.ioas)
    ranges, alignment = iommufd.ioas.iova_ranges_and_alignment()
    assert alignment == 4096
    assert not any(r.contains(0xFEE00000, 4096) for r in ranges)


def test_dma_into_a_memfd_mapped_with_map_file(bound: VfioDevice, iommufd: Iommufd) -> None:
    bound.attach(iommufd.ioas)
    with DmaBuffer(4096) as src, DmaBuffer(8192, Backing.MEMFD) as dst:
        src.fill(Pattern("random", seed=9))
        s = iommufd.map_buffer(src, limit=LIMIT)
        d = iommufd.ioas.map_file(dst.fd, 4096, 4096, iommufd.alloc_iova(4096, LIMIT))
        _memcpy(bound, s.iova, d.iova, 4096)
        assert dst.compare(4096, src, 0, 4096) is None
        assert dst.check(Pattern("zero"), 0, 4096) is None


def test_ioas_copy_carries_mappings_to_another_ioas(bound: VfioDevice,
                                                    iommufd: Iommufd) -> None:
    with DmaBuffer(4096) as src, DmaBuffer(4096) as dst:
        src.fill(Pattern("incrementing"))
        first = iommufd.ioas
        s = first.map_buffer(src, limit=LIMIT)
        d = first.map_buffer(dst, limit=LIMIT)
        second = iommufd.alloc_ioas()
        second.copy(first, s.iova, 4096, s.iova)
        second.copy(first, d.iova, 4096, d.iova)
        bound.attach(second)
        _memcpy(bound, s.iova, d.iova, 4096)
        assert dst.check(Pattern("incrementing")) is None
