"""IOMMU page sizes read back from Intel IOMMU debugfs (what `assert_superpages` uses)."""

from __future__ import annotations

import pytest
from vfio_scenario.uapi import debugfs
from vfio_scenario.uapi.buffers import Backing, DmaBuffer
from vfio_scenario.uapi.capabilities import HostCapabilities
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.modes import IommuMode

MiB = 1 << 20


@pytest.fixture
def readable(caps: HostCapabilities) -> None:
    if not caps.features["iommu_debugfs"]:
        pytest.skip(caps.features["iommu_debugfs"].reason)


def test_a_4k_mapping_is_one_4k_leaf(readable: None, iommu: Iommu, device: VfioDevice) -> None:
    with DmaBuffer(4096) as buf:
        mapping = iommu.map_buffer(buf)
        table = debugfs.page_table(device.bdf)
        assert table.available, table.reason
        assert table.page_sizes(mapping.iova, 4096) == {4096: 4096}
        mapping.unmap()
        assert debugfs.page_table(device.bdf).page_sizes(mapping.iova, 4096) == {}


def test_a_2m_hugetlb_mapping_uses_a_2m_superpage(readable: None, iommu: Iommu,
                                                  device: VfioDevice,
                                                  caps: HostCapabilities) -> None:
    if not caps.features["hugetlb-2M"]:
        pytest.skip(caps.features["hugetlb-2M"].reason)
    with DmaBuffer(2 * MiB, Backing.HUGETLB_2M) as buf:
        mapping = iommu.map_buffer(buf)
        assert mapping.iova % (2 * MiB) == 0
        table = debugfs.page_table(device.bdf)
        # iommufd's type1 (v1) compat disables large pages (vfio_compat.c: v1 allows
        # unmapping part of a mapping), so there the IOMMU maps 4 KiB pages.
        pgsize = 4096 if iommu.mode is IommuMode.IOMMUFD_COMPAT_TYPE1 else 2 * MiB
        assert table.page_sizes(mapping.iova, 2 * MiB) == {pgsize: 2 * MiB}
