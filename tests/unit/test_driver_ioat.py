"""The ioat scenario driver against the register model of an I/OAT channel."""

from __future__ import annotations

import os

import pytest
from vfio_scenario.drivers.base import DmaRegion, DriverError
from vfio_scenario.drivers.ioat import CHANERR, INTRCTRL, IoatDriver

from tests.models.ioat import CHANERR_INT, ERR_LENGTH, HALTED, IoatModel
from tests.models.pci import PCI_COMMAND

REGION_IOVA = 0x10_0000
BUF_IOVA = 0x20_0000
BUF_SIZE = 0x40_0000


def setup(model: IoatModel) -> tuple[IoatDriver, DmaRegion, bytearray]:
    region = model.iommu.region(REGION_IOVA, IoatDriver.region_size)
    buf = model.iommu.map(BUF_IOVA, BUF_SIZE)
    return IoatDriver(model, region), region, buf


@pytest.fixture
def model() -> IoatModel:
    return IoatModel()


@pytest.fixture
def ready(model: IoatModel) -> tuple[IoatModel, IoatDriver, bytearray]:
    drv, _, buf = setup(model)
    drv.init()
    return model, drv, buf


def test_probe_accepts_skx_cbdma_versions_3_2_and_3_3() -> None:
    assert IoatDriver.probe(IoatModel(version=0x32))
    assert IoatDriver.probe(IoatModel(version=0x33))


def test_probe_rejects_other_version_and_other_device() -> None:
    assert not IoatDriver.probe(IoatModel(version=0x34))
    assert not IoatDriver.probe(IoatModel(device_id=0x0B00))


def test_init_sets_limits_from_xfercap_and_enables_msix() -> None:
    model = IoatModel(xfercap=16, msix_count=4)
    drv, _, _ = setup(model)
    drv.init()
    assert (drv.max_memcpy_size, drv.max_memcpy_count) == (1 << 16, 0xFFFF)
    assert drv.msi_vector == 0
    assert model.irqs is not None and model.irqs.count == 4
    assert model.bar_read(0, INTRCTRL, 1) == 0x08
    assert model.command & 0x406 == 0x406  # memory, bus master, INTx disable


def test_init_then_remove_leaves_the_model_as_found(model: IoatModel) -> None:
    drv, _, _ = setup(model)
    before = (bytes(model.config), model.bar_read(0, INTRCTRL, 1), model.status)
    drv.init()
    drv.remove()
    assert (bytes(model.config), model.bar_read(0, INTRCTRL, 1), model.status) == before
    assert model.irqs is None


@pytest.mark.parametrize("size", [1, 8, 4096, 1 << 20])
def test_memcpy_copies_the_data(ready: tuple[IoatModel, IoatDriver, bytearray],
                                size: int) -> None:
    model, drv, buf = ready
    data = os.urandom(size)
    buf[0:size] = data
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x20_0000, size)
    assert model.copies == 0  # memcpy_start does not wait for the copy
    drv.memcpy_wait()
    assert bytes(buf[0x20_0000:0x20_0000 + size]) == data
    assert model.status == 2  # suspended, ready for the next start
    assert model.pending == {}  # memcpy raises no interrupt


def test_memcpy_count_repeats_the_copy(ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    model, drv, buf = ready
    buf[0:64] = bytes(range(64))
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 4096, 64, count=1000)
    drv.memcpy_wait()
    assert model.copies == 1000
    assert bytes(buf[4096:4160]) == bytes(range(64))


def test_two_memcpys_in_a_row(ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    _, drv, buf = ready
    buf[0:16] = b"A" * 16
    for dst in (0x1000, 0x2000):
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + dst, 16)
        drv.memcpy_wait()
    assert bytes(buf[0x1000:0x1010]) == bytes(buf[0x2000:0x2010]) == b"A" * 16


@pytest.mark.parametrize("size,count", [((1 << 20) + 1, 1), (8, 0x10000), (0, 1), (8, 0)])
def test_limits_are_refused_with_einval(ready: tuple[IoatModel, IoatDriver, bytearray],
                                        size: int, count: int) -> None:
    model, drv, _ = ready
    with pytest.raises(DriverError) as exc:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, size, count)
    assert exc.value.errno_name == "EINVAL"
    assert model.copies == 0


def test_unmapped_source_halts_channel_and_reports_chanerr(
        ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    model, drv, _ = ready
    drv.memcpy_start(0x900_0000, BUF_IOVA, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EIO"
    assert "CHANERR 0x100 (READ_DATA)" in str(exc.value)
    assert "CHANERR_INT 0x100" in str(exc.value)
    # the driver reset the channel and cleared the errors: it works again
    assert model.status == HALTED
    assert model.bar_read(0, CHANERR, 4) == 0 and model.config_read(CHANERR_INT, 4) == 0
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    drv.memcpy_wait()


def test_injected_length_error_is_reported(
        ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    model, drv, _ = ready
    model.inject_chanerr = ERR_LENGTH
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    with pytest.raises(DriverError, match=r"CHANERR 0x800 \(LENGTH\)"):
        drv.memcpy_wait()


def test_unmapped_destination_write_is_dropped_not_reported(
        ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    model, drv, _ = ready
    drv.memcpy_start(BUF_IOVA, 0x900_0000, 64)
    drv.memcpy_wait()
    assert [(f.iova, f.write) for f in model.iommu.faults] == [(0x900_0000, True)]


def test_hung_channel_times_out_and_is_reset(
        ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    model, drv, _ = ready
    model.hang = True
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait(timeout=0.05)
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "channel still ACTIVE" in str(exc.value)
    assert model.status == HALTED


def test_reset_that_never_completes_fails_init_with_etimedout(monkeypatch: pytest.MonkeyPatch,
                                                              model: IoatModel) -> None:
    monkeypatch.setattr("vfio_scenario.drivers.ioat.RESET_TIMEOUT", 0.05)
    model.reset_stuck = True
    drv, _, _ = setup(model)
    with pytest.raises(DriverError) as exc:
        drv.init()
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "CHANCMD.RESET still set" in str(exc.value)


def test_wait_without_start_and_start_while_busy(
        ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    _, drv, _ = ready
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EINVAL"
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 8)
    with pytest.raises(DriverError) as busy:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x1000, 8)
    assert busy.value.errno_name == "EBUSY"


def test_send_msi_raises_msix_vector_0_once(
        ready: tuple[IoatModel, IoatDriver, bytearray]) -> None:
    model, drv, _ = ready
    drv.send_msi()
    assert model.wait_irq(0, 0) == 1
    drv.send_msi()
    drv.send_msi()
    assert model.wait_irq(0, 0) == 2
    assert model.lost_msis == []


def test_init_without_irq_leaves_msix_disabled(model: IoatModel) -> None:
    drv, _, _ = setup(model)
    drv.init(msi_vector=None)
    assert model.irqs is None and drv.msi_vector is None
    drv.send_msi()
    assert model.lost_msis == [0]


def test_init_needs_a_dma_region(model: IoatModel) -> None:
    with pytest.raises(DriverError) as exc:
        IoatDriver(model).init()
    assert exc.value.errno_name == "EINVAL"
    assert model.config_read(PCI_COMMAND, 2) == 0


def test_xfercap_0_is_32_gb_capped_by_the_descriptor_size_field() -> None:
    """Differs from the C driver, whose 1 << XFERCAP makes XFERCAP 0 (32 GB) a 1-byte limit."""
    model = IoatModel(xfercap=0)
    drv, _, _ = setup(model)
    drv.init()
    assert drv.max_memcpy_size == 0xFFFFFFFF


def test_reset_clears_dmauncerrsts_itself(model: IoatModel) -> None:
    """Differs from the C driver, which writes DMAUNCERRSTS's bits to CHANERR_INT (0x180)
    and so never clears DMAUNCERRSTS (0x148); the kernel's ioat driver clears it in place."""
    model.set_config(0x148, 4, 0x10)
    model.set_config(CHANERR_INT, 4, 0x100)
    drv, _, _ = setup(model)
    drv.init()
    assert model.config_read(0x148, 4) == 0 and model.config_read(CHANERR_INT, 4) == 0
