"""The kernel's answers to the live update, dirty tracking and low power uAPI
(uapi/liveupdate.py), on the testbed's edu device in every IOMMU mode.

The handover between processes, and device DMA across it, are tested end to end by the
library (scenarios/liveupdate/); here each ioctl on its own.
"""

from __future__ import annotations

import os

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import liveupdate as lu
from vfio_scenario.uapi.buffers import Backing, DmaBuffer
from vfio_scenario.uapi.container import Container
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.iommufd import Iommufd
from vfio_scenario.uapi.mmio import AccessFault
from vfio_scenario.uapi.modes import IommuMode

IOVA = 0x100000
LEGACY = (IommuMode.VFIO_TYPE1, IommuMode.VFIO_TYPE1V2)
COMPAT = (IommuMode.IOMMUFD_COMPAT_TYPE1, IommuMode.IOMMUFD_COMPAT_TYPE1V2)


def _errno(exc: pytest.ExceptionInfo[VfioError]) -> str:
    return exc.value.errno_name


def test_vaddr_update_in_each_container_mode(mode: IommuMode, iommu: Iommu,
                                             device: VfioDevice) -> None:
    if not isinstance(iommu, Container):
        pytest.skip("native iommufd has no VADDR flags (a type1 container uAPI)")
    with DmaBuffer(16384, Backing.MEMFD) as buf, DmaBuffer(16384, Backing.MEMFD) as other:
        iommu.map(buf.addr, buf.size, IOVA)
        if mode in COMPAT:
            assert not lu.update_vaddr_supported(iommu)
            with pytest.raises(VfioError) as info:
                lu.unmap_vaddr(iommu, IOVA, buf.size)
            assert _errno(info) == "EINVAL"
            with pytest.raises(VfioError) as info:
                lu.map_vaddr(iommu, other.addr, IOVA, buf.size)
            assert _errno(info) == "EINVAL"
        else:
            assert lu.update_vaddr_supported(iommu)
            with pytest.raises(VfioError) as info:  # not invalidated
                lu.map_vaddr(iommu, other.addr, IOVA, buf.size)
            assert _errno(info) == "EINVAL"
            assert lu.unmap_vaddr(iommu, IOVA, buf.size) == buf.size
            with pytest.raises(VfioError) as info:  # twice
                lu.unmap_vaddr(iommu, IOVA, buf.size)
            assert _errno(info) == "EINVAL"
            with pytest.raises(VfioError) as info:  # nothing at that IOVA
                lu.map_vaddr(iommu, other.addr, 0x4000000, buf.size)
            assert _errno(info) == "ENOENT"
            with pytest.raises(VfioError) as info:  # another size
                lu.map_vaddr(iommu, other.addr, IOVA, 4096)
            assert _errno(info) == "EINVAL"
            lu.map_vaddr(iommu, other.addr, IOVA, buf.size)
            assert lu.unmap_vaddr(iommu, 0, 0, unmap_all=True) == buf.size
            lu.map_vaddr(iommu, buf.addr, IOVA, buf.size)
        assert iommu.unmap(IOVA, buf.size) == buf.size


def test_dirty_pages_in_each_container_mode(mode: IommuMode, iommu: Iommu,
                                            device: VfioDevice) -> None:
    if not isinstance(iommu, Container):
        pytest.skip("native iommufd has no VFIO_IOMMU_DIRTY_PAGES (a type1 container ioctl)")
    if mode is not IommuMode.VFIO_TYPE1V2:
        with pytest.raises(VfioError) as info:
            lu.dirty_start(iommu)
        assert _errno(info) == ("EACCES" if mode is IommuMode.VFIO_TYPE1 else "ENOTTY")
        return
    with DmaBuffer(8 * 4096) as buf:
        iommu.map(buf.addr, buf.size, IOVA)
        with pytest.raises(VfioError) as info:  # not started
            lu.dirty_bitmap(iommu, IOVA, buf.size)
        assert _errno(info) == "EINVAL"
        lu.dirty_start(iommu)
        # every page of the mapping, none of the 8 after it
        assert lu.dirty_bitmap(iommu, IOVA, 2 * buf.size) == bytes([0xFF]) + bytes(7)
        assert lu.dirty_bitmap(iommu, IOVA, buf.size) == bytes([0xFF]) + bytes(7)
        for bad in ({"pgsize": 8192}, {"bitmap_bytes": 0}):
            with pytest.raises(VfioError) as info:
                lu.dirty_bitmap(iommu, IOVA, buf.size, **bad)
            assert _errno(info) == "EINVAL", bad
        with pytest.raises(VfioError) as info:  # cuts the mapping
            lu.dirty_bitmap(iommu, IOVA + 4096, 4096)
        assert _errno(info) == "EINVAL"
        lu.dirty_stop(iommu)
        lu.dirty_stop(iommu)
        with pytest.raises(VfioError) as info:
            lu.dirty_bitmap(iommu, IOVA, buf.size)
        assert _errno(info) == "EINVAL"
        iommu.unmap(IOVA, buf.size)


def test_change_process_moves_only_file_mappings(mode: IommuMode, iommu: Iommu,
                                                 device: VfioDevice) -> None:
    if not isinstance(iommu, Iommufd):
        pytest.skip("IOMMU_IOAS_CHANGE_PROCESS is a native iommufd ioctl")
    lu.change_process(iommu)  # nothing mapped
    with pytest.raises(VfioError) as info:
        lu.change_process(iommu, reserved=1)
    assert _errno(info) == "EOPNOTSUPP"
    with DmaBuffer(16384, Backing.MEMFD) as buf, DmaBuffer(4096) as anon:
        iommu.ioas.map_file(buf.fd, 0, buf.size, IOVA)
        lu.change_process(iommu)  # the same process: nothing to move, accepted
        iommu.map(anon.addr, anon.size, 0x400000)
        with pytest.raises(VfioError) as info:
            lu.change_process(iommu)
        assert _errno(info) == "EINVAL"
        iommu.unmap(0x400000, anon.size)
        lu.change_process(iommu)
        iommu.unmap(IOVA, buf.size)


def test_low_power_entry_zaps_the_bar_mmap_until_exit(mode: IommuMode, iommu: Iommu,
                                                      device: VfioDevice) -> None:
    if mode is not IommuMode.VFIO_TYPE1V2:
        pytest.skip("a device feature: one mode is enough")
    bar = device.mmap_bar(0)
    try:
        bar.read(0, 4)
        lu.low_power_entry(device)
        with pytest.raises(AccessFault) as fault:
            bar.read(0, 4)
        assert fault.value.errno_name == "SIGBUS"
        with pytest.raises(VfioError) as info:
            lu.low_power_entry(device)
        assert _errno(info) == "EINVAL"
        lu.low_power_exit(device)
        bar.read(0, 4)
        lu.low_power_exit(device)  # no entry: accepted
        with pytest.raises(VfioError) as info:
            lu.low_power_entry_with_wakeup(device, -1)
        assert _errno(info) == "EINVAL"
        fd = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            lu.low_power_entry_with_wakeup(device, fd)
            with pytest.raises(AccessFault):
                bar.read(0, 4)
            lu.low_power_exit(device)
            bar.read(0, 4)
        finally:
            os.close(fd)
    finally:
        bar.close()
