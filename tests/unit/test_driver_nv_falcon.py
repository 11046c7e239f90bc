"""The nv_falcon scenario driver against the register model of an NVIDIA GPU's BAR0."""

from __future__ import annotations

import errno
import os

import pytest
from vfio_scenario.drivers.base import DriverError, Feature
from vfio_scenario.drivers.nv_falcon import Arch, NvFalconDriver, arch_of, dma_chunks

from tests.models.falcon import PMC_ENABLE, TOP_BITS, FalconGpuModel

BUF_IOVA = 0x1_2345_6000  # above 4 GiB: the high address registers matter
BUF_SIZE = 0x4000
SUPPORTED = ["K520", "K80", "GT635", "GTX750", "M60", "P100", "P4", "P40", "V100", "T4",
             "A100", "A10", "L4", "L40S", "H100"]


def ready(product: str = "T4") -> tuple[FalconGpuModel, NvFalconDriver, bytearray]:
    model = FalconGpuModel(product)
    buf = model.iommu.map(BUF_IOVA, BUF_SIZE)
    drv = NvFalconDriver(model)
    drv.init()
    return model, drv, buf


def snapshot(model: FalconGpuModel) -> tuple[object, ...]:
    return (bytes(model.config), model.pmc_enable, model.engine_reset, dict(model.regs),
            model.fbdma, model.bar_read(0, TOP_BITS, 4))


@pytest.mark.parametrize("product", SUPPORTED)
def test_probe_accepts_every_architecture_of_the_series(product: str) -> None:
    assert NvFalconDriver.probe(FalconGpuModel(product))


@pytest.mark.parametrize("product", ["B200", "RTX5090"])
def test_probe_rejects_blackwell(product: str) -> None:
    assert not NvFalconDriver.probe(FalconGpuModel(product))


def test_probe_rejects_the_gpus_audio_function_without_touching_bar0() -> None:
    model = FalconGpuModel("T4", class_code=0x040300)
    model.bars.clear()  # any BAR access would raise
    assert not NvFalconDriver.probe(model)


@pytest.mark.parametrize("boot0,arch", [
    (0x130000A1, Arch.PASCAL), (0x134000A1, Arch.PASCAL_10X), (0x132000A1, Arch.PASCAL_10X),
    (0x0F22D0A1, Arch.KEPLER), (0x117010A2, Arch.MAXWELL_GEN1), (0x124320A1, Arch.MAXWELL_GEN2),
    (0xB72000A1, Arch.AMPERE), (0x194000A1, Arch.ADA), (0x180000A1, Arch.HOPPER),
    (0x1A0000A1, None),
])
def test_pmc_boot_0_decodes_to_the_architecture(boot0: int, arch: Arch | None) -> None:
    assert arch_of(boot0) == arch


def test_declares_no_send_msi_and_the_series_limits() -> None:
    assert Feature.NO_SEND_MSI in NvFalconDriver.features
    assert (NvFalconDriver.max_memcpy_size, NvFalconDriver.max_memcpy_count) == (256, 1)
    assert NvFalconDriver.region_size == 0


@pytest.mark.parametrize("product", SUPPORTED)
def test_init_then_remove_leaves_the_gpu_as_found(product: str) -> None:
    model = FalconGpuModel(product)
    before = snapshot(model)
    drv = NvFalconDriver(model)
    drv.init()
    assert model.command & 0x4  # bus master while the driver runs
    drv.remove()
    assert snapshot(model) == before


def test_init_and_remove_of_a_falcon_found_disabled_leave_it_disabled() -> None:
    model = FalconGpuModel("P100", enabled=False)
    drv = NvFalconDriver(model)
    drv.init()
    assert model.falcon_enabled()
    drv.remove()
    assert not model.falcon_enabled() and model.pmc_enable == 0


@pytest.mark.parametrize("product,pmc_change", [("P100", True), ("P4", False), ("K80", True),
                                                ("T4", False)])
def test_reset_uses_pmc_enable_or_the_engine_reset(product: str, pmc_change: bool) -> None:
    model = FalconGpuModel(product)
    writes: list[int] = []
    pmc = model.bars[0].regs[PMC_ENABLE]
    original = pmc.on_write
    assert original is not None

    def record(value: int) -> None:
        writes.append(value)
        original(value)

    pmc.on_write = record
    NvFalconDriver(model).init()
    assert model.resets == 1
    assert bool(writes) == pmc_change


def test_ada_falcon_answering_badf5620_is_reset_first() -> None:
    model = FalconGpuModel("L4")
    model.ada_needs_reset = True
    NvFalconDriver(model).init()
    assert model.falcon_enabled() and not model.ada_needs_reset


def test_falcon_that_never_finishes_scrubbing_fails_init() -> None:
    model = FalconGpuModel("V100")
    model.scrub_stuck = True
    with pytest.raises(DriverError) as exc:
        NvFalconDriver(model).init()
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "gsp Falcon still scrubbing after enable (register 0x11010c)" in str(exc.value)


@pytest.mark.parametrize("product", ["K80", "P100", "P4", "T4", "L4", "H100"])
@pytest.mark.parametrize("size,src_off,dst_off", [
    (4, 0, 0x100), (8, 0x40, 0x884), (60, 0xFC, 0x200), (128, 0x80, 0x1000), (256, 0, 0x2000),
    (256, 0x10, 0x3004),
])
def test_memcpy_copies_the_data(product: str, size: int, src_off: int, dst_off: int) -> None:
    model, drv, buf = ready(product)
    data = os.urandom(size)
    buf[src_off:src_off + size] = data
    drv.memcpy_start(BUF_IOVA + src_off, BUF_IOVA + dst_off, size)
    assert model.transfers == []  # memcpy_start only records the request
    drv.memcpy_wait()
    assert bytes(buf[dst_off:dst_off + size]) == data
    chunks = dma_chunks(BUF_IOVA + src_off, BUF_IOVA + dst_off, size)
    assert model.transfers == [t for s, d, n in chunks for t in ((s, n, False), (d, n, True))]
    assert model.bar_read(0, TOP_BITS, 4) == 0


def test_dma_chunks_never_cross_a_256_byte_block() -> None:
    assert dma_chunks(0x100, 0x300, 256) == [(0x100, 0x300, 256)]
    assert dma_chunks(0x180, 0x280, 192) == [(0x180, 0x280, 128), (0x200, 0x300, 64)]
    assert dma_chunks(0xF8, 0x10, 12) == [(0xF8, 0x10, 8), (0x100, 0x18, 4)]
    chunks = dma_chunks(0x1234, 0x5674, 200)
    assert sum(n for _, _, n in chunks) == 200
    assert [s for s, _, _ in chunks] == [0x1234 + sum(n for _, _, n in chunks[:i])
                                         for i in range(len(chunks))]
    for src, dst, size in chunks:
        assert size in (4, 8, 16, 32, 64, 128, 256)
        assert dst - src == 0x5674 - 0x1234
        assert src % 256 + size <= 256 and dst % 256 + size <= 256


@pytest.mark.parametrize("src,dst,size,count", [
    (BUF_IOVA, BUF_IOVA + 0x400, 260, 1), (BUF_IOVA, BUF_IOVA + 0x400, 256, 2),
    (BUF_IOVA, BUF_IOVA + 0x400, 6, 1), (BUF_IOVA + 2, BUF_IOVA + 0x400, 8, 1),
    (BUF_IOVA, BUF_IOVA + 0x401, 8, 1), (BUF_IOVA, BUF_IOVA + 0x400, 0, 1),
])
def test_limits_are_refused_with_einval(src: int, dst: int, size: int, count: int) -> None:
    model, drv, _ = ready()
    with pytest.raises(DriverError) as exc:
        drv.memcpy_start(src, dst, size, count)
    assert exc.value.errno_name == "EINVAL"
    with pytest.raises(DriverError):
        drv.memcpy_wait()  # nothing was recorded
    assert model.transfers == []


def test_unmapped_source_never_completes_and_names_the_transfer() -> None:
    model, drv, _ = ready()
    drv.memcpy_start(0x7000_0000, BUF_IOVA, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait(timeout=0.05)
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "Falcon DMA read of 64 bytes at IOVA 0x70000000 did not complete" in str(exc.value)
    assert model.stuck is not None and "IOMMU fault" in model.stuck
    assert model.bar_read(0, TOP_BITS, 4) == 0
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 64)  # works again after the reset
    drv.memcpy_wait()


def test_unmapped_destination_write_is_dropped_and_recorded() -> None:
    model, drv, _ = ready()
    drv.memcpy_start(BUF_IOVA, 0x7000_0000, 16)
    drv.memcpy_wait()
    assert [(f.iova, f.size, f.write) for f in model.iommu.faults] == [(0x7000_0000, 16, True)]


def test_hung_dma_times_out() -> None:
    model, drv, _ = ready("P4")
    model.hang = True
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 32)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait(timeout=0.05)
    assert exc.value.errno_name == "ETIMEDOUT"
    assert model.resets == 2  # init's reset and the one after the stuck DMA
    # the next request starts afresh on a reset, reconfigured Falcon
    model.hang = False
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 32)
    drv.memcpy_wait()


def test_memcpy_wait_without_start_and_start_while_pending() -> None:
    _, drv, _ = ready()
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EINVAL"
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 8)
    with pytest.raises(DriverError) as busy:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 8)
    assert busy.value.errno_name == "EBUSY"


def test_send_msi_is_eopnotsupp_and_touches_nothing() -> None:
    model, drv, _ = ready()
    before = snapshot(model)
    with pytest.raises(DriverError) as exc:
        drv.send_msi()
    # errno.errorcode names 95 ENOTSUP; EOPNOTSUPP is the same number on Linux
    assert exc.value.errno == errno.EOPNOTSUPP
    assert snapshot(model) == before and model.lost_msis == []


def test_hopper_enables_fbdma_through_the_fsp_and_disables_it_on_remove() -> None:
    model, drv, buf = ready("H100")
    assert model.fbdma
    buf[0:8] = b"hopper!!"
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 8, 8)
    drv.memcpy_wait()
    assert bytes(buf[8:16]) == b"hopper!!"
    drv.remove()
    assert not model.fbdma


def test_hopper_fsp_refusal_is_reported() -> None:
    model = FalconGpuModel("H100")
    model.fsp_status = 0x3
    with pytest.raises(DriverError) as exc:
        NvFalconDriver(model).init()
    assert exc.value.errno_name == "EIO"
    assert "FSP refused NVDM 0x22 [1]: status 0x3" in str(exc.value)


def test_hopper_firmware_without_ofa_dma_is_eopnotsupp() -> None:
    model = FalconGpuModel("H100")
    model.fbdma_firmware = False
    with pytest.raises(DriverError) as exc:
        NvFalconDriver(model).init()
    assert exc.value.errno == errno.EOPNOTSUPP
    assert "OFA DMA not supported" in str(exc.value)


def test_hopper_silent_fsp_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vfio_scenario.drivers.nv_falcon.FSP_TIMEOUT", 0.05)
    model = FalconGpuModel("H100")
    model.fsp_silent = True
    with pytest.raises(DriverError) as exc:
        NvFalconDriver(model).init()
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "no FSP response" in str(exc.value)
