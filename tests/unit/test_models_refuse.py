"""The I/OAT and DSA models refuse commands their description (the kernel's
registers.h/hw.h/idxd.h) does not define, or defines but the model does not implement,
with `UndefinedCommand`, instead of answering with a guess.  The Falcon model's
refusals are in test_model_falcon.py."""

from __future__ import annotations

import struct

import pytest

from tests.models.dsa import (
    CMD,
    CMDSTS,
    GRPCFG_AT,
    OP_BATCH,
    OP_MEMMOVE,
    WQCFG_AT,
    DsaModel,
)
from tests.models.ioat import (
    CHAINADDR,
    CHANCMD,
    CHANCTRL,
    CHANSTS,
    DMACOUNT,
    INTRCTRL,
    IoatModel,
)
from tests.models.pci import UndefinedCommand


# ---- I/OAT ----
@pytest.mark.parametrize("value", [0x01, 0x02, 0x08, 0x10, 0x40, 0x80, 0x24])
def test_ioat_chancmd_other_than_reset_or_suspend_is_refused(value: int) -> None:
    with pytest.raises(UndefinedCommand, match="CHANCMD"):
        IoatModel().bar_write(0, CHANCMD, 1, value)


@pytest.mark.parametrize("offset,width,value", [(CHANCTRL, 2, 0x0010), (CHANCTRL, 2, 0x8001),
                                                (INTRCTRL, 1, 0x01), (INTRCTRL, 1, 0x09)])
def test_ioat_control_bits_not_modelled_are_refused(offset: int, width: int,
                                                    value: int) -> None:
    with pytest.raises(UndefinedCommand):
        IoatModel().bar_write(0, offset, width, value)


@pytest.mark.parametrize("ctl", [0x87 << 24, (0x89 << 24) | 1, 0x00000002, 0x01 << 24])
def test_ioat_descriptor_other_than_copy_is_refused(ctl: int) -> None:
    model = IoatModel(latency=0)
    mem = model.iommu.map(0x10000, 0x1000)
    struct.pack_into("<IIQQQ", mem, 0, 8, ctl, 0x10100, 0x10200, 0x10000)
    model.config_write(0x04, 2, 0x6)
    model.bar_write(0, CHAINADDR, 8, 0x10000)
    model.bar_write(0, DMACOUNT, 2, 1)
    with pytest.raises(UndefinedCommand, match="descriptor control"):
        model.bar_read(0, CHANSTS, 8)


def test_ioat_copy_descriptor_runs() -> None:
    model = IoatModel(latency=0)
    mem = model.iommu.map(0x10000, 0x1000)
    mem[0x100:0x108] = b"ioat-ok!"
    struct.pack_into("<IIQQQ", mem, 0, 8, 0, 0x10100, 0x10200, 0x10000)
    model.config_write(0x04, 2, 0x6)
    model.bar_write(0, CHAINADDR, 8, 0x10000)
    model.bar_write(0, DMACOUNT, 2, 1)
    assert model.bar_read(0, CHANSTS, 8) & 0x7 == 1  # DONE
    assert bytes(mem[0x200:0x208]) == b"ioat-ok!"


# ---- DSA ----
@pytest.mark.parametrize("cmd", [0, 3, 4, 7, 8, 10, 11, 12, 13, 31])
def test_dsa_commands_not_modelled_or_not_defined_are_refused(cmd: int) -> None:
    with pytest.raises(UndefinedCommand, match=f"command {cmd} "):
        DsaModel().bar_write(0, CMD, 4, cmd << 20)


def _enable_wq0(model: DsaModel, ops: int) -> None:
    model.config_write(0x04, 2, 0x6)
    model.bar_write(0, CMD, 4, 5 << 20)  # RESET_DEVICE
    model.bar_read(0, CMDSTS, 4)
    model.bar_write(0, WQCFG_AT, 4, 16)  # wq_size
    model.bar_write(0, WQCFG_AT + 8, 4, 1 | (1 << 4))  # dedicated, priority 1
    model.bar_write(0, WQCFG_AT + 12, 4, 21 | (5 << 5))
    model.bar_write(0, WQCFG_AT + 32, 4, ops)  # op_config[0]
    model.bar_write(0, GRPCFG_AT, 8, 1)
    model.bar_write(0, GRPCFG_AT + 32, 8, 1)
    for cmd in (1, 6):  # ENABLE_DEVICE, ENABLE_WQ 0
        model.bar_write(0, CMD, 4, cmd << 20)
        while model.bar_read(0, CMDSTS, 4) >> 31:
            pass
        assert model.bar_read(0, CMDSTS, 4) & 0xFF == 0


def _submit(model: DsaModel, opcode: int, completion: int) -> None:
    desc = struct.pack("<IIQQQIHH24x", 1 << 31, (opcode << 24) | 0x4 | 0x8, completion,
                       0x10100, 0x10200, 8, 0, 0)
    model.bar_write64b(2, 0, desc)


def test_dsa_opcode_wqcfg_allows_but_the_model_does_not_run_is_refused() -> None:
    model = DsaModel(latency=0)
    model.iommu.map(0x10000, 0x1000)
    _enable_wq0(model, (1 << OP_MEMMOVE) | (1 << OP_BATCH) | (1 << 4))  # 4: MEMFILL
    _submit(model, 4, 0x10000)
    with pytest.raises(UndefinedCommand, match="opcode 4"):
        model.bar_read(0, CMDSTS, 4)


def test_dsa_opcode_wqcfg_does_not_allow_completes_with_bad_opcode() -> None:
    model = DsaModel(latency=0)
    mem = model.iommu.map(0x10000, 0x1000)
    _enable_wq0(model, (1 << OP_MEMMOVE) | (1 << OP_BATCH))
    _submit(model, 4, 0x10000)
    model.bar_read(0, CMDSTS, 4)
    assert mem[0] == 0x10  # BAD_OPCODE in the completion record
