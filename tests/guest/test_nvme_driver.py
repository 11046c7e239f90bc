"""The nvme scenario driver on QEMU's emulated NVMe controller (1b36:0010) in the testbed.

Measured with QEMU 10.0: a data buffer at an unmapped IOVA is not reported by the
controller (QEMU's block DMA bounces through unassigned memory: reads give zeros,
writes are dropped, the command succeeds; only the DMAR fault shows it), while a PRP
list or SGL segment the controller cannot fetch completes with Data Transfer Error.
"""

from __future__ import annotations

import errno
import time

import pytest
from vfio_scenario.drivers.base import DmaRegion, Driver, driver_for
from vfio_scenario.drivers.nvme import (
    FID_ARBITRATION,
    OPC_GET_FEATURES,
    OPC_IDENTIFY,
    OPC_READ,
    PSDT_SGL,
    REG_CC,
    SC_DATA_TRANSFER_ERROR,
    SGL_LAST_SEGMENT,
    Completion,
    NvmeDriver,
    QueuePair,
)
from vfio_scenario.errors import VfioError
from vfio_scenario.run import faultlog
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.modes import IommuMode
from vfio_scenario.uapi.patterns import Pattern
from vfio_scenario.uapi.pci import PCI_COMMAND

from tests.guest.conftest import assert_iommu_fault

UNMAPPED = 0x7000000
DST = 1 << 20


@pytest.fixture(scope="module")
def driver_bdf() -> str:
    found = sysfs.find_devices(0x1B36, 0x0010)
    if not found:
        pytest.skip("no QEMU NVMe controller (1b36:0010) in this VM: testbed devices lack nvme")
    assert sysfs.bound_driver(found[0]) == "vfio-pci"
    return found[0]


@pytest.fixture(scope="module")
def driver_class() -> type[Driver]:
    return NvmeDriver


@pytest.fixture
def nvme(driver: Driver) -> NvmeDriver:
    assert isinstance(driver, NvmeDriver)
    return driver


def test_registry_picks_nvme_by_class_code(driver_device: VfioDevice) -> None:
    assert driver_for(driver_device) is NvmeDriver


def test_init_identifies_the_emulated_controller(nvme: NvmeDriver,
                                                 driver_device: VfioDevice) -> None:
    assert nvme.model == "QEMU NVMe Ctrl"
    assert nvme.serial.startswith("vfio")
    assert (nvme.block_size, nvme.mdts_bytes, nvme.sgl) == (512, 512 << 10, True)
    assert (nvme.max_memcpy_size, nvme.max_memcpy_count) == (512 << 10, 1)
    assert driver_device.bar_read(0, 0x08, 4) == 0x00010400  # VS: NVMe 1.4
    assert driver_device.bar_read(0, REG_CC, 4) & 1


def test_remove_leaves_the_controller_disabled_and_the_command_register_as_found(
        driver_device: VfioDevice, region: DmaRegion) -> None:
    before = driver_device.config_read(PCI_COMMAND, 2)
    driver = NvmeDriver(driver_device, region)
    driver.init()
    driver.remove()
    assert driver_device.bar_read(0, REG_CC, 4) & 1 == 0
    assert driver_device.bar_read(0, 0x1C, 4) & 1 == 0  # CSTS.RDY
    assert driver_device.config_read(PCI_COMMAND, 2) == before


@pytest.mark.parametrize("size", [8, 511, 512, 4096])
def test_memcpy_through_the_namespace(nvme: NvmeDriver, buf: tuple[DmaBuffer, int],
                                      size: int) -> None:
    buffer, iova = buf
    buffer.fill(Pattern("random", seed=size))
    buffer.fill(Pattern("zero"), offset=DST, size=size + 512)
    nvme.memcpy_start(iova, iova + DST, size)
    nvme.memcpy_wait()
    assert buffer.compare(DST, buffer, 0, size) is None
    assert buffer.check(Pattern("zero"), offset=DST + size, size=512) is None


def test_memcpy_of_the_maximum_size(nvme: NvmeDriver, buf: tuple[DmaBuffer, int]) -> None:
    buffer, iova = buf
    size = nvme.max_memcpy_size
    buffer.fill(Pattern("incrementing"), size=size)
    nvme.memcpy_start(iova, iova + DST, size)
    nvme.memcpy_wait()
    assert buffer.compare(DST, buffer, 0, size) is None


def test_send_msi_is_received_on_the_eventfd(nvme: NvmeDriver,
                                             driver_device: VfioDevice) -> None:
    for _ in range(3):
        nvme.send_msi()
        assert driver_device.wait_irq(0, 1.0) == 1


STORM_SIZES = [8, 511, 512, 513, 4096, 4097, 12345, 65536, 131072 + 3, 512 << 10]
STORM_PATTERNS = [Pattern("random", seed=7), Pattern("incrementing"), Pattern(0xC3),
                  Pattern("random", seed=1234)]


def record_completions(queue: QueuePair, monkeypatch: pytest.MonkeyPatch
                       ) -> list[tuple[int, Completion]]:
    """Every (awaited command id, completion) the driver takes from `queue` from now on."""
    taken: list[tuple[int, Completion]] = []
    take = queue.take

    def recording(cid: int, op: str) -> Completion | None:
        done = take(cid, op)
        if done is not None:
            taken.append((cid, done))
        return done

    monkeypatch.setattr(queue, "take", recording)
    return taken


def test_back_to_back_copies_complete_with_their_own_command_ids(
        nvme: NvmeDriver, buf: tuple[DmaBuffer, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #10: 240 copies without a pause wrap the 32-entry I/O queues 15 times; each
    Write and Read completes with its own command id and success, every destination byte
    is right and nothing past the destination is written."""
    buffer, iova = buf
    assert nvme.io is not None and nvme.io.entries == 32
    taken = record_completions(nvme.io, monkeypatch)
    first = nvme.io.cid
    for n in range(240):
        size = STORM_SIZES[n % len(STORM_SIZES)]
        buffer.fill(STORM_PATTERNS[n % len(STORM_PATTERNS)], size=size)
        buffer.fill(Pattern(n & 0xFF), offset=DST, size=size + 512)
        nvme.memcpy_start(iova, iova + DST, size)
        nvme.memcpy_wait()
        assert buffer.compare(DST, buffer, 0, size) is None, f"copy {n} of {size} bytes"
        assert buffer.check(Pattern(n & 0xFF), offset=DST + size, size=512) is None
    assert [cid for cid, _ in taken] == list(range(first + 1, first + 481))
    assert [(done.cid, done.status, done.sqid) for _, done in taken] == \
        [(cid, 0, 1) for cid in range(first + 1, first + 481)]
    assert [done.sqhd for _, done in taken] == [(first + i) % 32 for i in range(1, 481)]
    assert nvme.io.outstanding == set() and nvme.io.arrived == {}


def test_admin_commands_wrap_the_admin_queue(nvme: NvmeDriver,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert nvme.admin is not None
    taken = record_completions(nvme.admin, monkeypatch)
    for _ in range(3 * nvme.admin.entries):
        nvme.admin_command("test", OPC_GET_FEATURES, cdw=(FID_ARBITRATION,))
    assert [cid for cid, done in taken if done.cid == cid and done.ok] == \
        [cid for cid, _ in taken]
    assert len(taken) == 3 * nvme.admin.entries and nvme.admin.outstanding == set()


@pytest.mark.parametrize("driver_iommu", [IommuMode.IOMMUFD], indirect=True)
def test_data_from_an_unmapped_iova_faults_in_the_iommu_and_qemu_reports_success(
        nvme: NvmeDriver, buf: tuple[DmaBuffer, int], driver_bdf: str,
        qemu_faults: faultlog.QemuFaultLog) -> None:
    buffer, iova = buf
    buffer.fill(Pattern(0x5A), offset=DST, size=4096)
    nvme.memcpy_start(UNMAPPED, iova + DST, 4096)
    nvme.memcpy_wait()
    assert buffer.check(Pattern("zero"), offset=DST, size=4096) is None
    assert_iommu_fault(qemu_faults, driver_bdf, UNMAPPED, "read")


@pytest.mark.parametrize("driver_iommu", [IommuMode.IOMMUFD], indirect=True)
@pytest.mark.parametrize("pointer", ["prp-list", "sgl-segment"])
def test_a_descriptor_list_at_an_unmapped_iova_is_a_data_transfer_error(
        nvme: NvmeDriver, buf: tuple[DmaBuffer, int], driver_bdf: str,
        qemu_faults: faultlog.QemuFaultLog, pointer: str) -> None:
    _, iova = buf
    assert nvme.io is not None
    if pointer == "prp-list":  # 16 KiB: PRP2 points to a list of three pages
        dptr, flags = (iova, UNMAPPED), 0
    else:  # one Last Segment descriptor naming 32 bytes of descriptors
        dptr, flags = nvme.sgl_pointer(UNMAPPED, 32, SGL_LAST_SEGMENT), PSDT_SGL
    cid = nvme.io.submit(OPC_READ, 1, dptr, (0, 0, 16384 // 512 - 1), flags)
    done = nvme.wait_for(nvme.io, cid, "test", time.monotonic() + 5.0)
    assert (done.sct, done.sc) == (0, SC_DATA_TRANSFER_ERROR)
    assert_iommu_fault(qemu_faults, driver_bdf, UNMAPPED, "read")


@pytest.mark.parametrize("driver_iommu", [IommuMode.IOMMUFD], indirect=True)
def test_identify_into_an_unmapped_iova(nvme: NvmeDriver, driver_bdf: str,
                                       qemu_faults: faultlog.QemuFaultLog) -> None:
    assert nvme.admin is not None
    cid = nvme.admin.submit(OPC_IDENTIFY, 0, (UNMAPPED, 0), (1,))
    done = nvme.wait_for(nvme.admin, cid, "test", time.monotonic() + 5.0)
    assert (done.sct, done.sc, done.ok) == (0, 0, True)
    assert_iommu_fault(qemu_faults, driver_bdf, UNMAPPED, "write")


def test_reset_mid_command_is_reported_and_init_recovers(
        nvme: NvmeDriver, driver_device: VfioDevice, buf: tuple[DmaBuffer, int]) -> None:
    buffer, iova = buf
    nvme.memcpy_start(iova, iova + DST, nvme.max_memcpy_size)
    driver_device.reset()
    with pytest.raises(VfioError) as e:
        nvme.memcpy_wait()
    assert e.value.errno == errno.EIO and "CSTS 0x0" in str(e.value)
    nvme.remove()
    nvme.init()
    buffer.fill(Pattern("random", seed=99), size=4096)
    nvme.memcpy_start(iova, iova + DST, 4096)
    nvme.memcpy_wait()
    assert buffer.compare(DST, buffer, 0, 4096) is None
