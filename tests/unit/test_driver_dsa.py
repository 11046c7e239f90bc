"""The dsa scenario driver against the register model of an Intel DSA."""

from __future__ import annotations

import errno
import os

import pytest
from vfio_scenario.drivers.base import DmaRegion, DriverError
from vfio_scenario.drivers.dsa import COPY_COMPLETION, COPY_OFFSET, MSI_SRC, DsaDriver

from tests.models.dsa import BATCH_FAIL, XFER_ERANGE, DsaModel
from tests.models.pci import ModelDevice

REGION_IOVA = 0x10_0000
BUF_IOVA = 0x40_0000
BUF_SIZE = 0x40_0000


def setup(model: DsaModel) -> tuple[DsaDriver, DmaRegion, bytearray]:
    region = model.iommu.region(REGION_IOVA, DsaDriver.region_size)
    buf = model.iommu.map(BUF_IOVA, BUF_SIZE)
    return DsaDriver(model, region), region, buf


@pytest.fixture
def model() -> DsaModel:
    return DsaModel()


@pytest.fixture
def ready(model: DsaModel) -> tuple[DsaModel, DsaDriver, bytearray]:
    drv, _, buf = setup(model)
    drv.init()
    return model, drv, buf


@pytest.mark.parametrize("device_id", [0x0B25, 0x11FB, 0x1212])
def test_probe_accepts_the_selftests_dsa_ids(device_id: int) -> None:
    assert DsaDriver.probe(DsaModel(device_id=device_id))
    assert DsaDriver.probe(DsaModel(device_id=device_id, cmd_cap=True))


def test_probe_rejects_devices_that_require_interrupt_handles() -> None:
    assert not DsaDriver.probe(DsaModel(cmd_cap=True, request_int_handle=True))


def test_probe_rejects_other_intel_device_without_touching_bars() -> None:
    assert not DsaDriver.probe(ModelDevice(0x8086, 0x0CFE, 0x088000, 1))


def test_init_configures_wq0_and_derives_limits(ready: tuple[DsaModel, DsaDriver, bytearray]
                                                ) -> None:
    model, drv, _ = ready
    assert model.enabled and model.wq_enabled == [True] + [False] * 7
    assert model._wq(0) == (128, 1, 21, 5)  # whole WQ, dedicated, the device's shifts
    assert (drv.max_memcpy_size, drv.max_memcpy_count) == (1 << 21, 32 * 32)
    assert drv.msi_vector == 1 and model.irqs is not None and model.irqs.count == 2


def test_small_wq_limits_the_batch_count() -> None:
    """Differs from the C driver: its 1 << (WQ size + 5) would allow 32 batches here."""
    model = DsaModel(wq_size=4, max_batch_shift=3)
    drv, _, _ = setup(model)
    drv.init()
    assert drv.max_memcpy_count == 4 * 8


def test_init_then_remove_leaves_the_model_as_found(model: DsaModel) -> None:
    drv, _, _ = setup(model)
    before = (bytes(model.config), bytes(model.grpcfg), bytes(model.wqcfg), model.enabled)
    drv.init()
    drv.remove()
    after = (bytes(model.config), bytes(model.grpcfg), bytes(model.wqcfg), model.enabled)
    assert after == before and model.irqs is None and model.wq_enabled == [False] * 8


@pytest.mark.parametrize("size", [1, 8, 4096, 1 << 21])
def test_memcpy_copies_the_data(ready: tuple[DsaModel, DsaDriver, bytearray],
                                size: int) -> None:
    model, drv, buf = ready
    data = os.urandom(size)
    buf[0:size] = data
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x20_0000, size)
    assert model.copies == 0  # memcpy_start does not wait
    drv.memcpy_wait()
    assert bytes(buf[0x20_0000:0x20_0000 + size]) == data
    assert model.pending == {}  # memcpy requests no interrupt


@pytest.mark.parametrize("count", [2, 3, 32, 33, 1024])
def test_memcpy_count_runs_that_many_copies_in_batches(
        ready: tuple[DsaModel, DsaDriver, bytearray], count: int) -> None:
    model, drv, buf = ready
    buf[0:256] = os.urandom(256)
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 256, count)
    drv.memcpy_wait()
    assert model.copies == count
    assert buf[0x1000:0x1100] == buf[0:256]


@pytest.mark.parametrize("size,count", [((1 << 21) + 1, 1), (8, 1025), (0, 1), (8, 0)])
def test_limits_are_refused_with_einval(ready: tuple[DsaModel, DsaDriver, bytearray],
                                        size: int, count: int) -> None:
    model, drv, _ = ready
    with pytest.raises(DriverError) as exc:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, size, count)
    assert exc.value.errno_name == "EINVAL"
    assert model.queue == [] and model.copies == 0


def test_unmapped_source_reports_the_completion_status(
        ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    _, drv, _ = ready
    drv.memcpy_start(0x900_0000, BUF_IOVA, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EIO"
    assert "completion status 0x20 (HW_ERR1), 0 completed, fault_addr 0x9000000" \
        in str(exc.value)


def test_injected_status_and_failed_batch_are_reported(
        ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    model, drv, _ = ready
    model.inject_status = XFER_ERANGE
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    with pytest.raises(DriverError, match=r"0x13 \(XFER_ERANGE\)"):
        drv.memcpy_wait()
    drv.memcpy_start(0x900_0000, BUF_IOVA, 64, count=4)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert f"0x{BATCH_FAIL:x} (BATCH_FAIL), 0 completed" in str(exc.value)


def test_unmapped_completion_record_is_reported_from_swerr(
        ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    model, drv, _ = ready
    model.iommu.unmap(REGION_IOVA)  # the device can no longer write the completion record
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EIO"
    assert str(exc.value).endswith(
        f"SWERR error 0x1a operation 0x3 wq 0 fault_addr 0x{REGION_IOVA + COPY_COMPLETION:x}")
    assert model.swerr[0] & 1 == 0  # the driver acknowledged it


def test_hung_device_times_out(ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    model, drv, _ = ready
    model.hang = True
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait(timeout=0.05)
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "no completion record written" in str(exc.value)
    assert model.aborts == 1 and model.queue == []
    model.hang = False  # the aborted copy never completes late; the next one works
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x2000, 64)
    drv.memcpy_wait()
    assert model.copies == 1


def test_reset_command_that_never_finishes_fails_init(monkeypatch: pytest.MonkeyPatch,
                                                      model: DsaModel) -> None:
    monkeypatch.setattr("vfio_scenario.drivers.dsa.COMMAND_TIMEOUT", 0.05)
    model.command_stuck = True
    drv, _, _ = setup(model)
    with pytest.raises(DriverError) as exc:
        drv.init()
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "command RESET_DEVICE still active" in str(exc.value)


def test_remove_resets_a_running_device(ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    model, drv, _ = ready
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    drv.remove()
    assert not model.enabled and model.queue == [] and model.copies == 0


def test_enable_without_bus_master_is_reported_with_the_command_error(
        model: DsaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vfio_scenario.drivers.dsa.PCI_COMMAND_ENABLE", 0x2)
    drv, _, _ = setup(model)
    with pytest.raises(DriverError) as exc:
        drv.init()
    assert "command ENABLE_DEVICE failed: 0x12 (BUSMASTER_EN)" in str(exc.value)


def test_send_msi_raises_msix_vector_1(ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    model, drv, _ = ready
    drv.region.mem[MSI_SRC:MSI_SRC + 8] = b"msi-test"  # type: ignore[union-attr]
    drv.send_msi()
    assert model.wait_irq(1, 0) == 1 and model.wait_irq(0, 0) == 0
    drv.send_msi()
    assert model.wait_irq(1, 0) == 1
    assert model.lost_msis == []


def test_device_access_without_64_byte_stores_is_refused() -> None:
    class NoPortal:
        bdf = "0000:00:05.0"
        vendor_id, device_id = 0x8086, 0x0B25

        def __init__(self, model: DsaModel) -> None:
            self.m = model

        def config_read(self, offset: int, width: int) -> int:
            return self.m.config_read(offset, width)

        def config_write(self, offset: int, width: int, value: int) -> None:
            self.m.config_write(offset, width, value)

        def bar_read(self, bar: int, offset: int, width: int) -> int:
            return self.m.bar_read(bar, offset, width)

        def bar_write(self, bar: int, offset: int, width: int, value: int) -> None:
            self.m.bar_write(bar, offset, width, value)

        def wait_irq(self, vector: int, timeout: float) -> int:
            return 0

    model = DsaModel()
    region = model.iommu.region(REGION_IOVA, DsaDriver.region_size)
    with pytest.raises(DriverError) as exc:
        DsaDriver(NoPortal(model), region).init()
    # errno.errorcode names 95 ENOTSUP; EOPNOTSUPP is the same number on Linux
    assert exc.value.errno == errno.EOPNOTSUPP
    assert "MOVDIR64B" in str(exc.value)


def test_completion_status_is_read_under_its_0x7f_mask(
        ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    """Bit 7 of the status is the fault's read/write flag (idxd.h): 0x83 is a page fault
    on a write, named as PAGE_FAULT_NOBOF."""
    model, drv, _ = ready
    model.inject_status = 0x83
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    with pytest.raises(DriverError, match=r"0x83 \(PAGE_FAULT_NOBOF\)"):
        drv.memcpy_wait()


def test_wait_without_start_and_start_while_busy(
        ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    """C's library asserts in both places (memcpy_in_progress); we refuse the step."""
    _, drv, _ = ready
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EINVAL"
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 8)
    with pytest.raises(DriverError) as busy:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 8)
    assert busy.value.errno_name == "EBUSY"
    with pytest.raises(DriverError) as msi:
        drv.send_msi()
    assert msi.value.errno_name == "EBUSY"


def test_a_batch_writes_only_the_copy_descriptors_it_hands_the_device(
        ready: tuple[DsaModel, DsaDriver, bytearray]) -> None:
    """C fills all 1024 copy descriptors alike; the device reads only the first n."""
    _, drv, _ = ready
    assert drv.region is not None
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64, count=4)
    drv.memcpy_wait()
    mem = drv.region.mem
    assert all(mem[COPY_OFFSET + i * 64 + 7] == 3 for i in range(4))  # MEMMOVE opcode
    assert not any(mem[COPY_OFFSET + 4 * 64:COPY_OFFSET + 1024 * 64])
