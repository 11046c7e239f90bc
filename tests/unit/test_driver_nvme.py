"""The nvme scenario driver against the register model of an NVMe controller."""

from __future__ import annotations

import errno
import os

import pytest
from vfio_scenario.drivers.base import DriverError, driver_for
from vfio_scenario.drivers.nvme import (
    CC_EN,
    MAX_COPY,
    REG_CC,
    REGION_SIZE,
    SCRATCH_ENV,
    NvmeDriver,
    Scratch,
    scratch_from_env,
)

from tests.models.nvme import SC_DATA_TRANSFER_ERROR, NvmeModel
from tests.models.pci import PCI_COMMAND, UndefinedCommand

REGION_IOVA = 0x10_0000
BUF_IOVA = 0x40_0000
BUF_SIZE = 0x40_0000
DST = 0x20_0000  # offset of the destination half of the buffer
UNMAPPED = 0x700_0000


def setup(model: NvmeModel) -> tuple[NvmeDriver, bytearray]:
    region = model.iommu.region(REGION_IOVA, REGION_SIZE)
    buf = model.iommu.map(BUF_IOVA, BUF_SIZE)
    return NvmeDriver(model, region), buf


@pytest.fixture(autouse=True)
def no_scratch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCRATCH_ENV, raising=False)


@pytest.fixture
def model() -> NvmeModel:
    return NvmeModel()


@pytest.fixture
def ready(model: NvmeModel) -> tuple[NvmeModel, NvmeDriver, bytearray]:
    drv, buf = setup(model)
    drv.init()
    return model, drv, buf


def test_probe_matches_the_class_code_of_any_vendor() -> None:
    assert NvmeDriver.probe(NvmeModel())
    assert NvmeDriver.probe(NvmeModel(vendor_id=0x144D, device_id=0xA808))
    assert driver_for(NvmeModel(vendor_id=0x8086, device_id=0x0A54)) is NvmeDriver


def test_probe_rejects_other_classes() -> None:
    other = NvmeModel()
    other.set_config(0x09, 3, 0x010601)  # AHCI
    assert not NvmeDriver.probe(other)


def test_init_identifies_qemu_and_declares_its_limits(
        ready: tuple[NvmeModel, NvmeDriver, bytearray]) -> None:
    model, drv, _ = ready
    assert (drv.model, drv.serial) == ("QEMU NVMe Ctrl", "vfio0")
    assert model.csts & 1 and model.cc & CC_EN
    assert drv.scratch == Scratch(1, 0, 2048)
    assert (drv.block_size, drv.max_memcpy_size, drv.max_memcpy_count) == (512, 1 << 19, 1)
    assert drv.msi_vector == 0 and model.irqs is not None
    assert [op for _, op in model.commands] == [0x06, 0x06, 0x05, 0x01]
    assert model.command & 0x6 == 0x6


def test_limits_follow_mdts() -> None:
    model = NvmeModel(mdts=2)
    drv, _ = setup(model)
    drv.init()
    assert drv.max_memcpy_size == 4096 << 2
    unlimited = NvmeModel(mdts=0)
    drv, _ = setup(unlimited)
    drv.init()
    assert drv.max_memcpy_size == MAX_COPY


def test_remove_leaves_the_controller_disabled_and_registers_as_found(model: NvmeModel) -> None:
    drv, _ = setup(model)
    before = (bytes(model.config), model.aqa, model.asq, model.acq, model.cc)
    drv.init()
    drv.remove()
    assert (bytes(model.config), model.aqa, model.asq, model.acq, model.cc) == before
    assert model.csts == 0 and model.irqs is None and drv.msi_vector is None


@pytest.mark.parametrize("size", [8, 511, 512, 4096, 4097, 65536, 1 << 19])
def test_memcpy_copies_exactly_size_bytes(ready: tuple[NvmeModel, NvmeDriver, bytearray],
                                          size: int) -> None:
    model, drv, buf = ready
    data = os.urandom(size)
    buf[0:size] = data
    buf[DST:DST + size + 64] = b"\xa5" * (size + 64)
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, size)
    assert [op for q, op in model.commands if q == 1] == [0x01]  # the Write only, so far
    drv.memcpy_wait()
    assert bytes(buf[DST:DST + size]) == data
    assert bytes(buf[DST + size:DST + size + 64]) == b"\xa5" * 64  # nothing past dst+size
    assert [op for q, op in model.commands if q == 1] == [0x01, 0x02]


@pytest.mark.parametrize("size", [4096, 3 * 4096, 1 << 19])
def test_memcpy_with_prps_on_a_controller_without_sgl(size: int) -> None:
    model = NvmeModel(sgl=False)
    drv, buf = setup(model)
    drv.init()
    data = os.urandom(size)
    buf[0:size] = data
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, size)
    drv.memcpy_wait()
    assert bytes(buf[DST:DST + size]) == data


def test_prp_only_controller_refuses_partial_blocks() -> None:
    drv, _ = setup(NvmeModel(sgl=False))
    drv.init()
    with pytest.raises(DriverError) as e:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 8)
    assert e.value.errno == errno.EINVAL and "no SGL support" in str(e.value)


@pytest.mark.parametrize("size,count", [(0, 1), ((1 << 19) + 1, 1), (4096, 2)])
def test_memcpy_beyond_the_limits_is_refused(ready: tuple[NvmeModel, NvmeDriver, bytearray],
                                             size: int, count: int) -> None:
    model, drv, _ = ready
    with pytest.raises(DriverError) as e:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, size, count)
    assert e.value.errno == errno.EINVAL
    assert [q for q, _ in model.commands].count(1) == 0


def test_a_real_controller_refuses_memcpy_and_sees_only_harmless_commands() -> None:
    model = NvmeModel(vendor_id=0x144D, device_id=0xA808, model="Samsung SSD 980")
    drv, _ = setup(model)
    drv.init()
    assert drv.scratch is None and drv.max_memcpy_size == 0
    with pytest.raises(DriverError) as e:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    assert e.value.errno == errno.EPERM and SCRATCH_ENV in str(e.value)
    drv.send_msi()
    assert [op for _, op in model.commands] == [0x06, 0x0A]  # Identify, Get Features


def test_a_named_device_and_range_allow_memcpy(monkeypatch: pytest.MonkeyPatch) -> None:
    model = NvmeModel(vendor_id=0x144D, device_id=0xA808, model="Samsung SSD 980")
    monkeypatch.setenv(SCRATCH_ENV, f"{model.bdf},nsid=1,lba=0x1000,blocks=16")
    drv, buf = setup(model)
    drv.init()
    assert drv.scratch == Scratch(1, 0x1000, 16) and drv.max_memcpy_size == 16 * 512
    buf[0:512] = b"\x3c" * 512
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    drv.memcpy_wait()
    assert bytes(buf[DST:DST + 512]) == b"\x3c" * 512
    assert set(model.namespace.data) == {0x1000}  # only the named range was written


def test_the_scratch_variable_names_one_device() -> None:
    assert scratch_from_env("0000:01:00.0", "01:00.0,nsid=2,lba=8,blocks=4") == Scratch(2, 8, 4)
    assert scratch_from_env("0000:02:00.0", "0000:01:00.0,nsid=1,lba=0,blocks=4") is None
    assert scratch_from_env("0000:01:00.0", None) is None
    with pytest.raises(ValueError, match="nsid=N,lba=START,blocks=COUNT"):
        scratch_from_env("0000:01:00.0", "0000:01:00.0,lba=0")


def test_malformed_scratch_variable_is_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    model = NvmeModel(vendor_id=0x144D, device_id=0xA808, model="Samsung SSD 980")
    monkeypatch.setenv(SCRATCH_ENV, "0000:00:04.0,blocks=zero")
    drv, _ = setup(model)
    drv.init()
    with pytest.raises(DriverError) as e:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    assert e.value.errno == errno.EPERM
    assert "expected BDF,nsid=N,lba=START,blocks=COUNT, got '0000:00:04.0,blocks=zero'" \
        in str(e.value)


@pytest.mark.parametrize("src_unmapped", [True, False])
def test_dma_from_or_to_an_unmapped_iova_is_a_data_transfer_error(
        ready: tuple[NvmeModel, NvmeDriver, bytearray], src_unmapped: bool) -> None:
    model, drv, _ = ready
    src, dst = (UNMAPPED, BUF_IOVA) if src_unmapped else (BUF_IOVA, UNMAPPED)
    drv.memcpy_start(src, dst, 4096)
    with pytest.raises(DriverError) as e:
        drv.memcpy_wait()
    assert e.value.errno == errno.EIO
    assert ("Write" if src_unmapped else "Read") + ": Data Transfer Error (SCT 0x0 SC 0x04)" \
        in str(e.value)
    assert model.iommu.faults[-1].iova == UNMAPPED
    assert SC_DATA_TRANSFER_ERROR == 0x04


def test_a_hung_controller_times_out(ready: tuple[NvmeModel, NvmeDriver, bytearray]) -> None:
    model, drv, _ = ready
    model.hang = True
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    with pytest.raises(DriverError) as e:
        drv.memcpy_wait(timeout=0.05)
    assert e.value.errno == errno.ETIMEDOUT


def test_reset_mid_command_reports_the_stopped_controller_and_reinit_works(
        ready: tuple[NvmeModel, NvmeDriver, bytearray]) -> None:
    model, drv, buf = ready
    model.hang = True
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    model.reset()
    model.hang = False
    with pytest.raises(DriverError) as e:
        drv.memcpy_wait()
    assert e.value.errno == errno.EIO and "CSTS 0x0" in str(e.value)
    drv.remove()
    drv.init()
    buf[0:512] = b"\x77" * 512
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    drv.memcpy_wait()
    assert bytes(buf[DST:DST + 512]) == b"\x77" * 512


def test_init_and_memcpy_leave_no_msi_pending(
        ready: tuple[NvmeModel, NvmeDriver, bytearray]) -> None:
    model, drv, _ = ready
    assert model.pending == {}  # init consumed its admin completions' MSIs
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 512)
    drv.memcpy_wait()
    assert model.pending == {} and model.lost_msis == []
    assert model.cqs[1].interrupts is False  # I/O completions are polled


def test_send_msi_raises_vector_0_through_an_admin_completion(
        ready: tuple[NvmeModel, NvmeDriver, bytearray]) -> None:
    model, drv, _ = ready
    drv.send_msi()
    assert model.wait_irq(0, 0) == 1
    assert model.commands[-1] == (0, 0x0A)


def test_send_msi_without_an_interrupt_is_refused(model: NvmeModel) -> None:
    drv, _ = setup(model)
    drv.init(msi_vector=None)
    with pytest.raises(DriverError) as e:
        drv.send_msi()
    assert e.value.errno == errno.EINVAL
    assert model.irqs is None


def test_polling_mode_copies_without_interrupts(model: NvmeModel) -> None:
    drv, buf = setup(model)
    drv.init(msi_vector=None)
    buf[0:4096] = b"\x11" * 4096
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, 4096)
    drv.memcpy_wait()
    assert bytes(buf[DST:DST + 4096]) == b"\x11" * 4096
    assert model.cqs[1].interrupts is False


def test_init_restores_the_command_register_when_enable_fails(model: NvmeModel) -> None:
    drv, _ = setup(model)
    before = model.config_read(PCI_COMMAND, 2)
    model.bars[0].regs[REG_CC].on_write = lambda value: None  # never becomes ready
    model.cap = (model.cap & ~(0xFF << 24)) | 1 << 24  # CAP.TO = 500 ms
    with pytest.raises(DriverError) as e:
        drv.init()
    assert e.value.errno == errno.ETIMEDOUT
    assert model.config_read(PCI_COMMAND, 2) == before


@pytest.mark.parametrize("opcode", [0x00, 0x04, 0x09, 0x0C, 0x7F])
def test_the_model_refuses_admin_opcodes_it_does_not_implement(
        ready: tuple[NvmeModel, NvmeDriver, bytearray], opcode: int) -> None:
    """The model does not guess a controller's answer (Delete SQ, Set Features, AER, ...)."""
    _, drv, _ = ready
    with pytest.raises(UndefinedCommand, match=f"admin opcode {opcode:#04x}"):
        drv.admin_command("test", opcode)
