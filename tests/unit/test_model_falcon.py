"""The Falcon GPU model refuses what the series' hardware description does not define
(tests/models/falcon.py).  These drive the model's registers directly, without our
driver: the model is held to hw.h, not to what the driver happens to send."""

from __future__ import annotations

import pytest

from tests.models.falcon import (
    CHANNEL_BASE,
    CORE_SELECT,
    DMACTL,
    ENGINE_RESET,
    FSP_EMEM_CTRL,
    FSP_EMEM_DATA,
    FSP_MSG_HEAD,
    FSP_MSG_TAIL,
    FSP_QUEUE_HEAD,
    FSP_QUEUE_TAIL,
    MEM_CLEAR,
    OFA_DMA_SUPPORT,
    PMC_BOOT_0,
    PMC_ENABLE,
    TOP_BITS,
    TRFBASE,
    TRFBASE1,
    TRFCMD,
    TRFFBOFFS,
    TRFMOFFS,
    FalconGpuModel,
)
from tests.models.pci import UndefinedCommand, UnmodelledAccess

AINC = (1 << 24) | (1 << 25)
MCTP_ONE_PACKET = 0xC0000000
VENDOR_MSG = 0x7E | (0x10DE << 8)


def fsp_send(model: FalconGpuModel, words: list[int]) -> list[int]:
    """Put `words` in RPC channel 2 as v10's fsp_rpc_send_data does; the response words."""
    model.bar_write(0, FSP_EMEM_CTRL, 4, CHANNEL_BASE | AINC)
    for word in words:
        model.bar_write(0, FSP_EMEM_DATA, 4, word)
    model.bar_write(0, FSP_QUEUE_TAIL, 4, CHANNEL_BASE + 4 * (len(words) - 1))
    model.bar_write(0, FSP_QUEUE_HEAD, 4, CHANNEL_BASE)
    head, tail = model.bar_read(0, FSP_MSG_HEAD, 4), model.bar_read(0, FSP_MSG_TAIL, 4)
    model.bar_write(0, FSP_EMEM_CTRL, 4, CHANNEL_BASE | AINC)
    return [model.bar_read(0, FSP_EMEM_DATA, 4) for _ in range((tail - head + 4) // 4)]


def set_up(model: FalconGpuModel) -> None:
    """The series' DMA set-up of the Falcon (DMEM port, FBIF, DMACTL), register by register."""
    b, t, c = model.base, model.fbif_transcfg, model.fbif_ctl
    model.config_write(0x04, 2, model.command | 0x4)
    model.bar_write(0, b + CORE_SELECT, 4, model.bar_read(0, b + CORE_SELECT, 4) & ~0x30)
    model.bar_write(0, b + 0x1C0, 4, 0)
    model.bar_write(0, t, 4, (model.bar_read(0, t, 4) & ~0x3) | 0x5)
    model.bar_write(0, c + 0x60, 4, 1)
    model.bar_write(0, c, 4, model.bar_read(0, c, 4) | 0x90)
    model.bar_write(0, b + DMACTL, 4, model.bar_read(0, b + DMACTL, 4) & ~0x1)


def program(model: FalconGpuModel, address: int) -> None:
    b = model.base
    model.bar_write(0, TOP_BITS, 4, (address >> 47) & 0x1FFFF)
    model.bar_write(0, b + TRFBASE1, 4, (address >> 40) & 0x7F)
    model.bar_write(0, b + TRFBASE, 4, (address >> 8) & 0xFFFFFFFF)
    model.bar_write(0, b + TRFFBOFFS, 4, address & 0xFF)
    model.bar_write(0, b + TRFMOFFS, 4, 0)


# ---- FSP ----
def test_fbdma_enable_is_answered_with_a_response() -> None:
    model = FalconGpuModel("H100")
    response = fsp_send(model, [MCTP_ONE_PACKET, VENDOR_MSG | (0x22 << 24), 1])
    assert response == [MCTP_ONE_PACKET, VENDOR_MSG | (0x15 << 24), 0, 0x22, 0]
    assert model.fbdma and model.bar_read(0, OFA_DMA_SUPPORT, 4) >> 16 != 0xBADF


@pytest.mark.parametrize("payload", [[0], [2], [], [1, 0]])
def test_fbdma_subcommands_other_than_enable_are_refused(payload: list[int]) -> None:
    model = FalconGpuModel("H100")
    with pytest.raises(UndefinedCommand, match="FBDMA payload"):
        fsp_send(model, [MCTP_ONE_PACKET, VENDOR_MSG | (0x22 << 24), *payload])
    assert not model.fbdma and model.fsp_commands == []


@pytest.mark.parametrize("nvdm", [0x00, 0x15, 0x13, 0x23, 0xFF])
def test_nvdm_types_other_than_fbdma_are_refused(nvdm: int) -> None:
    model = FalconGpuModel("H100")
    with pytest.raises(UndefinedCommand, match="NVDM command type"):
        fsp_send(model, [MCTP_ONE_PACKET, VENDOR_MSG | (nvdm << 24), 1])


@pytest.mark.parametrize("mctp,msg", [
    (0x80000000, VENDOR_MSG | (0x22 << 24)),  # SOM without EOM: a multi-packet message
    (0xC0000001, VENDOR_MSG | (0x22 << 24)),  # bits MCTP does not define
    (MCTP_ONE_PACKET, 0x7F | (0x10DE << 8) | (0x22 << 24)),  # not vendor defined
    (MCTP_ONE_PACKET, 0x7E | (0x8086 << 8) | (0x22 << 24)),  # not NVIDIA's
])
def test_malformed_mctp_messages_are_refused(mctp: int, msg: int) -> None:
    with pytest.raises(UndefinedCommand):
        fsp_send(FalconGpuModel("H100"), [mctp, msg, 1])


def test_emem_outside_rpc_channel_2_is_refused() -> None:
    model = FalconGpuModel("H100")
    with pytest.raises(UndefinedCommand, match="EMEM port 2 control"):
        model.bar_write(0, FSP_EMEM_CTRL, 4, 0 | AINC)
    with pytest.raises(UndefinedCommand, match="EMEM port 2 control"):
        model.bar_write(0, FSP_EMEM_CTRL, 4, CHANNEL_BASE)  # without auto-increment
    with pytest.raises(UndefinedCommand, match="queue pointer"):
        model.bar_write(0, FSP_QUEUE_TAIL, 4, 0x4000)


def test_fsp_registers_exist_on_hopper_only() -> None:
    with pytest.raises(UnmodelledAccess):
        FalconGpuModel("A100").bar_read(0, FSP_QUEUE_HEAD, 4)


# ---- registers ----
@pytest.mark.parametrize("offset", [0x4, 0x10A000 + 0x104, 0x110000 + 0x1C8, 0x100F00,
                                    0x8F0000])
def test_offsets_the_description_does_not_name_are_unmodelled(offset: int) -> None:
    model = FalconGpuModel("T4")
    with pytest.raises(UnmodelledAccess):
        model.bar_read(0, offset, 4)


@pytest.mark.parametrize("offset", [PMC_BOOT_0, MEM_CLEAR, 0x110000 + 0x40C, 0x110000 + 0x100])
def test_writes_to_registers_the_driver_only_reads_are_refused(offset: int) -> None:
    with pytest.raises(UndefinedCommand):
        FalconGpuModel("T4").bar_write(0, offset, 4, 0)


def test_pmc_enable_writes_touch_only_the_falcons_bits() -> None:
    model = FalconGpuModel("P100")
    model.bar_write(0, PMC_ENABLE, 4, model.pmc_enable & ~0x2000)  # disable: defined
    with pytest.raises(UndefinedCommand, match="other than"):
        model.bar_write(0, PMC_ENABLE, 4, 0)
    with pytest.raises(UndefinedCommand, match="not reset through PMC"):
        FalconGpuModel("T4").bar_write(0, PMC_ENABLE, 4, 0)


@pytest.mark.parametrize("product,value,match", [
    ("H100", 1, "OFA DMA support"), ("P100", 1, "reset through PMC"), ("T4", 2, "value"),
])
def test_engine_reset_only_where_and_as_the_description_says(product: str, value: int,
                                                            match: str) -> None:
    model = FalconGpuModel(product)
    with pytest.raises(UndefinedCommand, match=match):
        model.bar_write(0, model.base + ENGINE_RESET, 4, value)


def test_writes_to_a_falcon_in_reset_are_refused() -> None:
    model = FalconGpuModel("T4")
    model.bar_write(0, model.base + ENGINE_RESET, 4, 1)
    assert model.bar_read(0, model.base + DMACTL, 4) == 0xBADF1100
    with pytest.raises(UndefinedCommand, match="in reset"):
        model.bar_write(0, model.base + DMACTL, 4, 0)


# ---- DMA ----
def test_a_dma_the_description_defines_runs() -> None:
    model = FalconGpuModel("T4")
    buf = model.iommu.map(0x10000, 0x1000)
    buf[0x40:0x48] = b"defined!"
    set_up(model)
    program(model, 0x10040)
    model.bar_write(0, model.base + TRFCMD, 4, 1 << 8)  # 8-byte read into DMEM
    while not model.bar_read(0, model.base + TRFCMD, 4) & 0x2:
        pass
    assert bytes(model.dmem[:8]) == b"defined!"


@pytest.mark.parametrize("command,match", [
    (0x10 | (1 << 8), "DMA command"),  # IMEM bit: not in hw.h
    (0x1 << 12, "DMA command"),  # context index bits
    (7 << 8, "size encoding 7"),
])
def test_dma_commands_with_undefined_bits_are_refused(command: int, match: str) -> None:
    model = FalconGpuModel("T4")
    model.iommu.map(0x10000, 0x1000)
    set_up(model)
    program(model, 0x10000)
    with pytest.raises(UndefinedCommand, match=match):
        model.bar_write(0, model.base + TRFCMD, 4, command)


@pytest.mark.parametrize("address,encoding", [(0x100F0, 3), (0x10002, 0), (0x10080, 6)])
def test_dmas_crossing_a_256_byte_block_or_unaligned_are_refused(address: int,
                                                                 encoding: int) -> None:
    model = FalconGpuModel("T4")
    model.iommu.map(0x10000, 0x1000)
    set_up(model)
    program(model, address)
    with pytest.raises(UndefinedCommand, match="block offset"):
        model.bar_write(0, model.base + TRFCMD, 4, encoding << 8)


def test_dma_on_a_falcon_not_set_up_is_refused() -> None:
    model = FalconGpuModel("T4")
    program(model, 0x10000)
    with pytest.raises(UndefinedCommand, match="has not set up"):
        model.bar_write(0, model.base + TRFCMD, 4, 0)


def test_dma_command_while_a_transfer_is_outstanding_is_refused() -> None:
    model = FalconGpuModel("T4")
    set_up(model)
    program(model, 0x7000_0000)  # unmapped: the read never completes
    model.bar_write(0, model.base + TRFCMD, 4, 0)
    for _ in range(5):
        assert not model.bar_read(0, model.base + TRFCMD, 4) & 0x2
    assert model.stuck is not None and "IOMMU fault" in model.stuck
    with pytest.raises(UndefinedCommand, match="outstanding"):
        model.bar_write(0, model.base + TRFCMD, 4, 0)


@pytest.mark.parametrize("offset,value", [(TRFBASE1, 0x80), (TRFFBOFFS, 0x100)])
def test_address_fields_wider_than_the_description_are_refused(offset: int,
                                                                value: int) -> None:
    model = FalconGpuModel("T4")
    with pytest.raises(UndefinedCommand, match="field up to"):
        model.bar_write(0, model.base + offset, 4, value)
    with pytest.raises(UndefinedCommand, match="top bits"):
        model.bar_write(0, TOP_BITS, 4, 0x20000)


def test_fbif_and_core_select_take_only_the_series_values() -> None:
    model = FalconGpuModel("T4")
    with pytest.raises(UndefinedCommand, match="FBIF"):
        model.bar_write(0, model.fbif_transcfg, 4, 0x6)  # another target
    with pytest.raises(UndefinedCommand, match="FBIF"):
        model.bar_write(0, model.fbif_ctl + 0x60, 4, 2)
    with pytest.raises(UndefinedCommand, match="core select"):
        model.bar_write(0, model.base + CORE_SELECT, 4, 0x30)  # selecting the RISC-V core
