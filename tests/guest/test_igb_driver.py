"""The igb scenario driver on QEMU's emulated 82576 PF (8086:10c9) in the testbed.

Copies go through the IOMMU (type1v2 and iommufd) as a frame looped back by the PHY;
each is checked byte for byte, with the bytes after the destination untouched.

Measured with QEMU 10.0: a copy from an unmapped IOVA completes and writes zeros (the
faulting read of the frame's data gives zeros), a copy to one completes and its write is
dropped; the emulated IOMMU records the fault in both (QEMU's fault record, read in the guest).
"""

from __future__ import annotations

import time

import pytest
from conftest import _prepare_guest, assert_iommu_fault
from vfio_scenario.drivers.base import DmaRegion, Driver, driver_for
from vfio_scenario.drivers.igb import (
    EIMS,
    RCTL,
    RCTL_EN,
    RX_ENTRIES,
    STATUS,
    STATUS_LU,
    TCTL,
    TCTL_EN,
    TDLEN,
    IgbDriver,
)
from vfio_scenario.errors import VfioError
from vfio_scenario.run import faultlog
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.modes import IommuMode
from vfio_scenario.uapi.patterns import Pattern
from vfio_scenario.uapi.pci import PCI_COMMAND

IGB_PF = (0x8086, 0x10C9)
DST = 1 << 20
GUARD = 4096  # bytes after the destination that must stay as they were
UNMAPPED = 0x7000000


@pytest.fixture(scope="module")
def driver_bdf() -> str:
    found = sysfs.find_devices(*IGB_PF)
    if not found:
        pytest.skip("no igb PF (8086:10c9) in this VM: testbed devices lack igb")
    _prepare_guest(found[0])
    assert sysfs.bound_driver(found[0]) == "vfio-pci"
    return found[0]


@pytest.fixture(scope="module")
def driver_class() -> type[Driver]:
    return IgbDriver


@pytest.fixture
def igb(driver: Driver) -> IgbDriver:
    assert isinstance(driver, IgbDriver)
    return driver


def copy_and_check(igb: IgbDriver, buffer: DmaBuffer, iova: int, size: int,
                   pattern: Pattern, guard: int) -> None:
    buffer.fill(pattern, size=size)
    buffer.fill(Pattern(guard), offset=DST, size=size + GUARD)
    igb.memcpy_start(iova, iova + DST, size)
    igb.memcpy_wait()
    assert buffer.compare(DST, buffer, 0, size) is None, f"{size} bytes differ"
    assert buffer.check(Pattern(guard), offset=DST + size, size=GUARD) is None, \
        f"bytes after the {size}-byte destination were written"


def test_registry_picks_igb_for_the_pf(driver_device: VfioDevice) -> None:
    assert driver_for(driver_device) is IgbDriver


def test_init_brings_the_loopback_link_up(igb: IgbDriver, driver_device: VfioDevice) -> None:
    assert driver_device.bar_read(0, STATUS, 4) & STATUS_LU
    assert driver_device.bar_read(0, RCTL, 4) & RCTL_EN
    assert driver_device.bar_read(0, TCTL, 4) & TCTL_EN
    assert (igb.max_memcpy_size, igb.max_memcpy_count) == (1450, 511)


@pytest.mark.parametrize("size", [1, 8, 59, 60, 61, 256, 1449, 1450])
def test_memcpy_is_exact_and_writes_nothing_after_dst(
        igb: IgbDriver, buf: tuple[DmaBuffer, int], size: int) -> None:
    buffer, iova = buf
    copy_and_check(igb, buffer, iova, size, Pattern("random", seed=size), 0xA5)


def test_random_sizes_and_patterns(igb: IgbDriver, buf: tuple[DmaBuffer, int]) -> None:
    """Sixty copies wrap neither ring but mix every size class; each is exact."""
    buffer, iova = buf
    sizes = [1, 2, 7, 13, 63, 64, 65, 127, 500, 1023, 1024, 1025, 1449, 1450]
    for n in range(60):
        size = sizes[n % len(sizes)]
        copy_and_check(igb, buffer, iova, size, Pattern("random", seed=1000 + n), n & 0xFF)


def test_copies_wrap_both_rings(igb: IgbDriver, buf: tuple[DmaBuffer, int]) -> None:
    """Batches of `max_memcpy_count` copies take the rings round more than once."""
    buffer, iova = buf
    for n in range(3):
        buffer.fill(Pattern("random", seed=n), size=1450)
        buffer.fill(Pattern(0x11), offset=DST, size=1450 + GUARD)
        igb.memcpy_start(iova, iova + DST, 1450, igb.max_memcpy_count)
        igb.memcpy_wait()
        assert buffer.compare(DST, buffer, 0, 1450) is None
        assert buffer.check(Pattern(0x11), offset=DST + 1450, size=GUARD) is None
    assert 3 * igb.max_memcpy_count > RX_ENTRIES


def test_copy_completes_without_waiting_on_a_timer(
        igb: IgbDriver, buf: tuple[DmaBuffer, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU loops the frame back while the tail write is in flight: memcpy_wait finds
    the receive descriptor done at its first look and never sleeps."""
    _, iova = buf
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    igb.memcpy_start(iova, iova + DST, 1450)
    igb.memcpy_wait()
    monkeypatch.undo()
    assert slept == []


def test_send_msi_raises_msix_vector_0(igb: IgbDriver, driver_device: VfioDevice) -> None:
    for _ in range(3):
        igb.send_msi()
        assert driver_device.wait_irq(0, 1.0) == 1
    assert driver_device.wait_irq(0, 0.1) == 0


def test_copies_raise_no_msi(igb: IgbDriver, driver_device: VfioDevice,
                             buf: tuple[DmaBuffer, int]) -> None:
    _, iova = buf
    igb.memcpy_start(iova, iova + DST, 64, 16)
    igb.memcpy_wait()
    assert driver_device.wait_irq(0, 0.2) == 0


def test_limits_are_refused_before_touching_the_device(igb: IgbDriver) -> None:
    for src, dst, size, count in ((0x1000, 0x100000, 1451, 1), (0x1000, 0x100000, 8, 512),
                                  (0x1000, 0, 8, 1)):
        with pytest.raises(VfioError) as info:
            igb.memcpy_start(src, dst, size, count)
        assert info.value.errno_name == "EINVAL"


@pytest.mark.parametrize("driver_iommu", [IommuMode.IOMMUFD], indirect=True)
def test_a_copy_from_an_unmapped_iova_completes_with_zeros(
        igb: IgbDriver, buf: tuple[DmaBuffer, int], driver_bdf: str,
        qemu_faults: faultlog.QemuFaultLog) -> None:
    """Measured on QEMU 10.0: the frame's data read faults in the IOMMU, reads as zeros,
    and the frame arrives; only the DMAR fault shows it.  The next copy is exact."""
    buffer, iova = buf
    buffer.fill(Pattern(0x5A), offset=DST, size=1450 + GUARD)
    igb.memcpy_start(UNMAPPED, iova + DST, 1450)
    igb.memcpy_wait()
    assert buffer.check(Pattern("zero"), offset=DST, size=1450) is None
    assert buffer.check(Pattern(0x5A), offset=DST + 1450, size=GUARD) is None
    assert_iommu_fault(qemu_faults, driver_bdf, UNMAPPED, "read")
    copy_and_check(igb, buffer, iova, 300, Pattern("random", seed=3), 0x3C)


@pytest.mark.parametrize("driver_iommu", [IommuMode.IOMMUFD], indirect=True)
def test_a_copy_to_an_unmapped_iova_completes_and_writes_nothing(
        igb: IgbDriver, driver_iommu: Iommu, buf: tuple[DmaBuffer, int], driver_bdf: str,
        qemu_faults: faultlog.QemuFaultLog) -> None:
    buffer, iova = buf
    buffer.fill(Pattern("random", seed=4), size=1450)
    with DmaBuffer(4096) as old:
        old.fill(Pattern(0x5A))
        stale = driver_iommu.map_buffer(old)
        stale.unmap()
        igb.memcpy_start(iova, stale.iova, 1450)
        igb.memcpy_wait()
        assert old.check(Pattern(0x5A)) is None
    assert buffer.check(Pattern("random", seed=4), size=1450) is None
    assert_iommu_fault(qemu_faults, driver_bdf, stale.iova, "write")


def test_remove_leaves_the_device_quiet(driver_device: VfioDevice, region: DmaRegion) -> None:
    before = driver_device.config_read(PCI_COMMAND, 2)
    driver = IgbDriver(driver_device, region)
    driver.init()
    driver.remove()
    assert driver_device.bar_read(0, RCTL, 4) & RCTL_EN == 0
    assert driver_device.bar_read(0, TCTL, 4) & TCTL_EN == 0
    assert driver_device.bar_read(0, TDLEN, 4) == 0  # rings forgotten by the reset
    assert driver_device.bar_read(0, EIMS, 4) == 0
    assert driver_device.bar_read(0, STATUS, 4) & STATUS_LU == 0  # link down after the reset
    assert driver_device.config_read(PCI_COMMAND, 2) == before


def test_init_and_remove_ten_times(driver_device: VfioDevice, region: DmaRegion,
                                   buf: tuple[DmaBuffer, int]) -> None:
    buffer, iova = buf
    for n in range(10):
        driver = IgbDriver(driver_device, region)
        driver.init()
        try:
            copy_and_check(driver, buffer, iova, 33 + n, Pattern("random", seed=n), 0x77)
        finally:
            driver.remove()
