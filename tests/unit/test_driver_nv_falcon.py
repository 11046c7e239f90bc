"""The nv_falcon scenario driver against the register model of an NVIDIA GPU's BAR0
(tests/models/falcon.py, written from the series' hardware description).  What the
driver does is v10's nv_falcons.c; each test names the v10 behaviour it holds it to."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest
from vfio_scenario.drivers import nv_falcon
from vfio_scenario.drivers.base import DriverError, Feature
from vfio_scenario.drivers.nv_falcon import Arch, NvFalconDriver, arch_of, dma_chunks

from tests.helpers.load import load_multiplier
from tests.models.falcon import (
    CHANNEL_BASE,
    ENGINE_RESET,
    FSP_EMEM_CTRL,
    FSP_EMEM_DATA,
    FSP_MSG_HEAD,
    FSP_MSG_TAIL,
    FSP_QUEUE_HEAD,
    FSP_QUEUE_TAIL,
    PMC_ENABLE,
    TOP_BITS,
    FalconGpuModel,
)
from tests.models.pci import UndefinedCommand

BUF_IOVA = 0x1_2345_6000  # above 4 GiB: the high address registers matter
BUF_SIZE = 0x4000
SUPPORTED = ["K520", "K80", "GT635", "GTX750", "M60", "P100", "P4", "P40", "V100", "T4",
             "A100", "A10", "L4", "L40S", "H100"]
ENABLE = (0x22, [1])  # the FSP command v10 sends: NVDM FBDMA, subcommand ENABLE


TIMEOUTS = ("BOOT_TIMEOUT", "ENABLE_TIMEOUT", "DMA_TIMEOUT", "FSP_DRAIN_TIMEOUT",
            "FSP_SEND_TIMEOUT", "FSP_TIMEOUT")
AS_SHIPPED = {name: getattr(nv_falcon, name) for name in TIMEOUTS}  # before any patching


def test_timeouts_are_v10s() -> None:
    """gpu_poll_register's 5000 ms (FSP boot, boot complete, memory clear) and 1000 ms
    (DMACTL ready, each DMA); fsp_poll_queue's 5000 ms drain and response, 1000 ms send."""
    assert AS_SHIPPED == {"BOOT_TIMEOUT": 5.0, "ENABLE_TIMEOUT": 1.0, "DMA_TIMEOUT": 1.0,
                          "FSP_DRAIN_TIMEOUT": 5.0, "FSP_SEND_TIMEOUT": 1.0,
                          "FSP_TIMEOUT": 5.0}


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """v10's 1 s and 5 s waits, shortened; the tests that measure them set their own.
    The model is ready after a few polls 1 ms apart, which a loaded machine stretches:
    the waits grow with its load."""
    scale = load_multiplier()
    for name, value in (("BOOT_TIMEOUT", 0.05), ("ENABLE_TIMEOUT", 0.05),
                        ("DMA_TIMEOUT", 0.2), ("FSP_DRAIN_TIMEOUT", 0.05),
                        ("FSP_SEND_TIMEOUT", 0.05), ("FSP_TIMEOUT", 0.05)):
        monkeypatch.setattr(nv_falcon, name, value * scale)
    yield


def ready(product: str = "T4") -> tuple[FalconGpuModel, NvFalconDriver, bytearray]:
    model = FalconGpuModel(product)
    buf = model.iommu.map(BUF_IOVA, BUF_SIZE)
    drv = NvFalconDriver(model)
    drv.init()
    return model, drv, buf


def recorded(model: FalconGpuModel, offsets: set[int]) -> list[tuple[str, int, int]]:
    """Record every BAR0 access to `offsets` from now on: (r/w, offset, value)."""
    log: list[tuple[str, int, int]] = []
    read, write = model.bar_read, model.bar_write

    def bar_read(bar: int, offset: int, width: int) -> int:
        value = read(bar, offset, width)
        if offset in offsets:
            log.append(("r", offset, value))
        return value

    def bar_write(bar: int, offset: int, width: int, value: int) -> None:
        if offset in offsets:
            log.append(("w", offset, value))
        write(bar, offset, width, value)

    model.bar_read = bar_read  # type: ignore[method-assign]
    model.bar_write = bar_write  # type: ignore[method-assign]
    return log


# ---- probe, identity, limits ----
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


# ---- init and remove ----
@pytest.mark.parametrize("product", SUPPORTED)
def test_init_sets_the_falcon_up_and_remove_disables_it_as_v10(product: str) -> None:
    model = FalconGpuModel(product)
    drv = NvFalconDriver(model)
    drv.init()
    assert model.command & 0x4  # bus master while the driver runs
    assert model.configured() is None and drv.warnings == []
    drv.remove()
    assert not model.command & 0x4  # v10: gpu_disable_bus_master
    # v10's falcon_disable: the Falcon stays in reset, except the OFA (no outside reset)
    assert model.falcon_enabled() == (product == "H100")


def test_remove_clears_bus_mastering_even_when_init_found_it_on() -> None:
    model = FalconGpuModel("V100")
    model.config_write(0x04, 2, model.command | 0x4)
    drv = NvFalconDriver(model)
    drv.init()
    drv.remove()
    assert not model.command & 0x4


def test_a_falcon_found_disabled_is_enabled_by_init_and_left_disabled() -> None:
    model = FalconGpuModel("P100", enabled=False)
    drv = NvFalconDriver(model)
    drv.init()
    assert model.falcon_enabled()
    drv.remove()
    assert not model.falcon_enabled() and model.pmc_enable & 0x2000 == 0


@pytest.mark.parametrize("product,register,mask", [
    ("P100", "pmc", 0x2000), ("K80", "pmc", 0x20002000), ("P4", "engine", 0),
    ("T4", "engine", 0),
])
def test_init_enables_then_resets_the_falcon_as_v10(product: str, register: str,
                                                    mask: int) -> None:
    """v10's nv_gpu_init runs falcon_enable, then falcon_reset (disable, enable)."""
    model = FalconGpuModel(product)
    offset = PMC_ENABLE if register == "pmc" else model.base + ENGINE_RESET
    log = recorded(model, {offset})
    NvFalconDriver(model).init()
    writes = [v for op, _, v in log if op == "w"]
    if register == "pmc":
        assert [bool(v & mask) for v in writes] == [True, False, True]
    else:
        assert writes == [0, 1, 0]
    assert model.resets == 1


def test_ada_falcon_answering_badf5620_is_reset_first() -> None:
    model = FalconGpuModel("L4")
    model.ada_needs_reset = True
    NvFalconDriver(model).init()
    assert model.falcon_enabled() and not model.ada_needs_reset


def test_dmactl_never_ready_is_logged_and_init_goes_on_as_v10() -> None:
    model = FalconGpuModel("V100")
    model.scrub_stuck = True
    drv = NvFalconDriver(model)
    drv.init()  # v10 ignores gpu_poll_register's answer here
    # the first falcon_enable finds it ready (enabled long ago); after the reset it never is
    assert len(drv.warnings) == 1
    assert "timeout polling gsp falcon_dmactl (0x11010c)" in drv.warnings[0]
    model.iommu.map(BUF_IOVA, BUF_SIZE)
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 16)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "ETIMEDOUT" and model.stuck == "DMEM still scrubbing"


@pytest.mark.parametrize("product,knob,name", [
    ("T4", "boot_complete", "boot_complete (0x118234)"),
    ("A100", "memory_clear", "memory_clear_finished (0x100b20)"),
    ("H100", "boot_complete", "fsp_boot_complete (0x200bc)"),
])
def test_boot_and_memory_clear_timeouts_are_logged_and_init_goes_on(
        product: str, knob: str, name: str) -> None:
    model = FalconGpuModel(product)
    setattr(model, knob, False)
    model.iommu.map(BUF_IOVA, BUF_SIZE)
    drv = NvFalconDriver(model)
    drv.init()
    assert drv.warnings and all(name in w for w in drv.warnings)
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 64)
    drv.memcpy_wait()


# ---- memcpy ----
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


def test_address_top_bits_stay_as_the_last_dma_left_them() -> None:
    """v10 writes DMA_ADDR_TOP_BITS before each DMA and never puts it back."""
    high = 1 << 47
    model = FalconGpuModel("T4")
    buf = model.iommu.map(high, 0x1000)
    drv = NvFalconDriver(model)
    drv.init()
    buf[0:16] = b"above 47 bits..."
    drv.memcpy_start(high, high + 0x100, 16)
    drv.memcpy_wait()
    assert bytes(buf[0x100:0x110]) == b"above 47 bits..."
    assert model.bar_read(0, TOP_BITS, 4) == 1


@pytest.mark.parametrize("size,count", [(260, 1), (256, 2), (0, 1)])
def test_limits_are_refused_at_start_with_einval(size: int, count: int) -> None:
    model, drv, _ = ready()
    with pytest.raises(DriverError) as exc:
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x400, size, count)
    assert exc.value.errno_name == "EINVAL"
    assert model.transfers == []


@pytest.mark.parametrize("src,dst,size", [
    (BUF_IOVA, BUF_IOVA + 0x400, 6), (BUF_IOVA + 2, BUF_IOVA + 0x400, 8),
    (BUF_IOVA, BUF_IOVA + 0x401, 8),
])
def test_sizes_and_addresses_the_falcon_cannot_encode_are_einval_from_wait(
        src: int, dst: int, size: int) -> None:
    """v10 accepts them at memcpy_start; its size_to_dma_encoding answers EINVAL in
    memcpy_wait before any DMA."""
    model, drv, _ = ready()
    drv.memcpy_start(src, dst, size)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "EINVAL"
    assert model.transfers == []


def test_unmapped_source_times_out_and_nothing_is_reset() -> None:
    model, drv, _ = ready()
    drv.memcpy_start(0x7000_0000, BUF_IOVA, 64)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait()
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "Falcon DMA read of 64 bytes at IOVA 0x70000000 did not complete" in str(exc.value)
    assert model.stuck is not None and "IOMMU fault" in model.stuck
    assert model.resets == 1  # init's reset only: v10 returns the error, resets nothing


def test_after_a_dma_that_never_completed_the_next_needs_a_new_init() -> None:
    """v10 leaves the stuck transfer outstanding; a DMA command then is something the
    description does not define, and the model refuses it.  remove + init resets the
    Falcon and copies work again."""
    _, drv, buf = ready("P4")
    drv.memcpy_start(0x7000_0000, BUF_IOVA, 64)
    with pytest.raises(DriverError):
        drv.memcpy_wait()
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 64)
    with pytest.raises(UndefinedCommand, match="previous transfer is outstanding"):
        drv.memcpy_wait()
    drv.remove()
    drv.init()
    buf[0:4] = b"ok!!"
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 4)
    drv.memcpy_wait()
    assert bytes(buf[0x100:0x104]) == b"ok!!"


def test_unmapped_destination_write_is_dropped_and_recorded() -> None:
    model, drv, _ = ready()
    drv.memcpy_start(BUF_IOVA, 0x7000_0000, 16)
    drv.memcpy_wait()
    assert [(f.iova, f.size, f.write) for f in model.iommu.faults] == [(0x7000_0000, 16, True)]


def test_each_dma_has_its_own_timeout_not_one_for_the_copy() -> None:
    """v10 polls each DMA up to 1 s; memcpy_wait's timeout argument is no deadline."""
    model = FalconGpuModel("T4", latency=30)  # each DMA: 30 polls, ≥ 30 ms
    buf = model.iommu.map(BUF_IOVA, BUF_SIZE)
    drv = NvFalconDriver(model)
    drv.init()
    buf[0x1F8:0x208] = b"0123456789abcdef"
    drv.memcpy_start(BUF_IOVA + 0x1F8, BUF_IOVA + 0x800, 16)  # 2 chunks, 4 DMAs
    drv.memcpy_wait(timeout=0.001)
    assert bytes(buf[0x800:0x810]) == b"0123456789abcdef"


def test_hung_dma_times_out_after_the_per_dma_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nv_falcon, "DMA_TIMEOUT", 0.05)
    model, drv, _ = ready("P4")
    model.hang = True
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 32)
    with pytest.raises(DriverError) as exc:
        drv.memcpy_wait(timeout=60)
    assert exc.value.errno_name == "ETIMEDOUT" and "within 0.05s" in str(exc.value)
    assert model.resets == 1


def test_memcpy_wait_without_start_and_start_while_pending() -> None:
    """v10 asserts in both places (memcpy_count checks); we refuse the step."""
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
    log = recorded(model, set(range(0, 1 << 24, 4)))
    config = bytes(model.config)
    with pytest.raises(DriverError) as exc:
        drv.send_msi()
    # errno.errorcode names 95 ENOTSUP; EOPNOTSUPP is the same number on Linux
    assert exc.value.errno == errno.EOPNOTSUPP
    assert log == [] and bytes(model.config) == config and model.lost_msis == []


# ---- Hopper: FSP ----
def test_hopper_enables_fbdma_and_sends_nothing_on_remove() -> None:
    model, drv, buf = ready("H100")
    assert model.fbdma and model.fsp_commands == [ENABLE]
    buf[0:8] = b"hopper!!"
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 8, 8)
    drv.memcpy_wait()
    assert bytes(buf[8:16]) == b"hopper!!"
    drv.remove()
    assert model.fsp_commands == [ENABLE]  # no "disable": hw.h defines none
    assert model.fbdma


def test_hopper_sends_fbdma_enable_even_when_ofa_dma_already_works() -> None:
    """v10 always runs fsp_init and the ENABLE command, then checks."""
    model = FalconGpuModel("H100")
    model.fbdma = True  # an earlier user enabled it
    NvFalconDriver(model).init()
    assert model.fsp_commands == [ENABLE]


def test_hopper_init_talks_to_the_fsp_in_v10s_order() -> None:
    model = FalconGpuModel("H100")
    model.stale_message()
    fsp = {FSP_QUEUE_HEAD, FSP_QUEUE_TAIL, FSP_MSG_HEAD, FSP_MSG_TAIL, FSP_EMEM_CTRL}
    log = recorded(model, fsp)
    NvFalconDriver(model).init()
    ops = [(op, off) for op, off, _ in log]
    # fsp_reset_rpc_state: queues read, a message is waiting, all four pointers reset
    reset = [("w", FSP_QUEUE_TAIL), ("w", FSP_QUEUE_HEAD), ("w", FSP_MSG_TAIL),
             ("w", FSP_MSG_HEAD)]
    at = next(i for i in range(len(ops)) if ops[i:i + 4] == reset)
    assert all(v == CHANNEL_BASE for _, _, v in log[at:at + 4])
    # fsp_rpc_send_data: the command queue seen empty before EMEM is written
    emem = ops.index(("w", FSP_EMEM_CTRL))
    assert ops[at + 4:emem] == [("r", FSP_QUEUE_HEAD), ("r", FSP_QUEUE_TAIL)]
    assert ops[emem + 1:emem + 3] == [("w", FSP_QUEUE_TAIL), ("w", FSP_QUEUE_HEAD)]
    assert model.fsp_commands == [ENABLE]


def test_hopper_busy_command_queue_is_drained_for_5s_then_reset() -> None:
    model = FalconGpuModel("H100")
    model.stale_command()
    drv = NvFalconDriver(model)
    drv.init()
    assert any("no FSP response while draining" in w for w in drv.warnings)
    assert model.fsp_commands == [ENABLE] and model.fbdma


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


def test_hopper_silent_fsp_times_out() -> None:
    model = FalconGpuModel("H100")
    model.fsp_silent = True
    with pytest.raises(DriverError) as exc:
        NvFalconDriver(model).init()
    assert exc.value.errno_name == "ETIMEDOUT"
    assert "no FSP response" in str(exc.value)


def test_hopper_command_queue_that_stays_busy_is_etimedout_before_sending() -> None:
    """fsp_rpc_send_data waits 1 s for an empty command queue; the FSP that never
    consumed the last command keeps it busy after the reset too."""
    model = FalconGpuModel("H100")
    model.fsp_silent = True
    with pytest.raises(DriverError):
        NvFalconDriver(model).init()
    emem_writes = recorded(model, {FSP_EMEM_DATA})

    def busy(value: int) -> None:  # the FSP puts its unconsumed command back
        model.queues[FSP_QUEUE_HEAD] = value
        model.queues[FSP_QUEUE_TAIL] = value + 8
    model.bars[0].regs[FSP_QUEUE_HEAD].on_write = busy
    with pytest.raises(DriverError) as exc:
        NvFalconDriver(model).init()
    assert exc.value.errno_name == "ETIMEDOUT" and "command queue not empty" in str(exc.value)
    assert emem_writes == []


@pytest.mark.parametrize("product", ["P100", "T4", "H100"])
def test_the_gpu_model_has_no_msi_to_send(product: str) -> None:
    """NO_SEND_MSI: nothing the driver does makes the model signal, even with a vector
    enabled and copies that succeed and fail."""
    model = FalconGpuModel(product)
    model.iommu.map(BUF_IOVA, BUF_SIZE)
    model.enable_irq("msix", 1)
    drv = NvFalconDriver(model)
    drv.init()
    drv.memcpy_start(BUF_IOVA, BUF_IOVA + 0x100, 256)
    drv.memcpy_wait()
    drv.memcpy_start(0x7000_0000, BUF_IOVA, 16)
    with pytest.raises(DriverError):
        drv.memcpy_wait()
    drv.remove()
    assert model.pending == {} and model.lost_msis == [] and drv.msi_vector is None
