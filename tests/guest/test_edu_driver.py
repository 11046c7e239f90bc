"""The edu scenario driver: memcpy through edu's DMA engine, MSI, faults from the IOMMU."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from vfio_scenario.drivers.base import driver_for
from vfio_scenario.drivers.edu import EduDriver
from vfio_scenario.errors import VfioError
from vfio_scenario.run import faultlog
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.kmsg import KernelLog
from vfio_scenario.uapi.patterns import Pattern
from vfio_scenario.uapi.pci import PCI_COMMAND

from tests.guest.conftest import assert_iommu_fault

LIMIT = 1 << EduDriver.dma_mask_bits


def _requester(bdf: str) -> str:
    """The DMAR fault line's device, with or without the PCI domain."""
    domain, rest = bdf.split(":", 1)
    return rf"\[(?:{domain}:)?{re.escape(rest)}\]"


@pytest.fixture
def edu(device: VfioDevice) -> Iterator[EduDriver]:
    driver = EduDriver(device)
    driver.init()
    yield driver
    driver.remove()


def test_registry_picks_edu_for_the_device(device: VfioDevice) -> None:
    assert driver_for(device) is EduDriver


def test_remove_leaves_the_command_register_as_found(device: VfioDevice) -> None:
    before = device.config_read(PCI_COMMAND, 2)
    driver = EduDriver(device)
    driver.init()
    assert device.config_read(PCI_COMMAND, 2) & 0x4
    driver.remove()
    assert device.config_read(PCI_COMMAND, 2) == before


@pytest.mark.parametrize("size", [8, 64, 512, 4096])
def test_memcpy_through_edu(iommu: Iommu, edu: EduDriver, size: int) -> None:
    with DmaBuffer(8192) as src, DmaBuffer(8192) as dst:
        src.fill(Pattern("random", seed=size))
        dst.fill(Pattern("zero"))
        s = iommu.map_buffer(src, limit=LIMIT)
        d = iommu.map_buffer(dst, limit=LIMIT)
        edu.memcpy_start(s.iova, d.iova, size)
        edu.memcpy_wait()
        assert dst.compare(0, src, 0, size) is None
        assert dst.check(Pattern("zero"), size) is None


def test_memcpy_completion_by_polling(iommu: Iommu, device: VfioDevice) -> None:
    driver = EduDriver(device)
    driver.init(msi_vector=None)
    try:
        with DmaBuffer(4096) as src, DmaBuffer(4096) as dst:
            src.fill(Pattern("incrementing"))
            s = iommu.map_buffer(src, limit=LIMIT)
            d = iommu.map_buffer(dst, limit=LIMIT)
            driver.memcpy_start(s.iova, d.iova, 4096)
            driver.memcpy_wait()
            assert dst.check(Pattern("incrementing")) is None
    finally:
        driver.remove()


def test_send_msi_arrives_on_the_eventfd(edu: EduDriver, device: VfioDevice) -> None:
    edu.send_msi()
    assert device.wait_irq(0, 1.0) >= 1


def test_limits_are_refused_before_touching_the_device(edu: EduDriver) -> None:
    for src, dst, size in ((0x1000, 0x2000, 4097), (LIMIT - 8, 0x2000, 16)):
        with pytest.raises(VfioError) as info:
            edu.memcpy_start(src, dst, size)
        assert info.value.errno_name == "EINVAL"


def test_dma_from_an_unmapped_iova_faults_in_the_iommu(
        iommu: Iommu, edu: EduDriver, edu_bdf: str, dmar_fault_window: KernelLog) -> None:
    qemu = faultlog.qemu_fault_log()
    with DmaBuffer(4096) as primer, DmaBuffer(4096) as dst:
        # Leave a known pattern in edu's internal buffer first.
        primer.fill(Pattern(0xA5))
        p = iommu.map_buffer(primer, limit=LIMIT)
        edu.memcpy_start(p.iova, p.iova, 4096)
        edu.memcpy_wait()
        dst.fill(Pattern(0x5A))
        d = iommu.map_buffer(dst, limit=LIMIT)
        unmapped = 0x7000000
        edu.memcpy_start(unmapped, d.iova, 4096)
        edu.memcpy_wait()
        line = dmar_fault_window.wait_for(
            rf"DMAR: \[DMA Read NO_PASID\] Request device {_requester(edu_bdf)} "
            rf"fault addr 0x{unmapped:x} \[fault reason 0x06\] PTE Read access is not set")
        assert line is not None
        # expect_iommu_fault's two sources see it: the kernel's line, QEMU's record
        fault = faultlog.Fault(edu_bdf, unmapped, "read", 6)
        assert fault in faultlog.KernelFaultLog(dmar_fault_window.read).read()
        assert qemu is not None and fault in qemu.read()
        # What the refused read returned replaced edu's buffer, and edu copied it on:
        # zeros on QEMU 10.0.2 (the measurement, on another QEMU, saw all-ones).
        assert dst.check(Pattern("zero")) is None


def test_dma_to_an_unmapped_iova_leaves_the_old_buffer_untouched(
        iommu: Iommu, edu: EduDriver, edu_bdf: str,
        qemu_faults: faultlog.QemuFaultLog) -> None:
    with DmaBuffer(4096) as src, DmaBuffer(4096) as old:
        src.fill(Pattern("random", seed=1))
        old.fill(Pattern(0x5A))
        s = iommu.map_buffer(src, limit=LIMIT)
        stale = iommu.map_buffer(old, limit=LIMIT)
        stale.unmap()
        edu.memcpy_start(s.iova, stale.iova, 4096)
        edu.memcpy_wait()
        fault = assert_iommu_fault(qemu_faults, edu_bdf, stale.iova, "write")
        assert fault == faultlog.Fault(edu_bdf, stale.iova, "write", 5)
        assert old.check(Pattern(0x5A)) is None
