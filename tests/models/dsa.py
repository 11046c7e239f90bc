"""Register model of an Intel DSA as the kernel's dsa selftest driver uses it
(drivers/dma/idxd/registers.h, include/uapi/linux/idxd.h).

BAR0: capabilities, the GRPCFG and WQCFG tables, CMD/CMDSTS, SWERR.  BAR2: the work-queue
portals, which take descriptors only as 64-byte stores (`bar_write64b`).  Commands take
`command_latency` CMDSTS reads; queued descriptors run when the driver reads SWERR or
CMDSTS `latency` times (the selftest driver reads SWERR on every poll of a completion
record).  memmove and batch run through the IOVA map and write 32-byte completion
records; RCI raises MSI-X vector `int_handle`.

What this model decides where the public headers are silent (stated so the tests do not
pretend otherwise): a source read the IOMMU refuses completes with HW_ERR1 and the fault
address; a refused destination write is dropped (posted) and only recorded; a completion
record the IOMMU refuses, or a descriptor sent to a disabled WQ, is a SWERR with the
model's codes below.

Commands the description defines but this model does not implement (DRAIN_ALL,
ABORT_ALL, DISABLE_WQ, DRAIN_WQ, RESET_WQ, DRAIN_PASID, ABORT_PASID, REQUEST_INT_HANDLE,
...), command codes it does not define, and descriptors whose opcode WQCFG allows but the
model does not run, raise `UndefinedCommand` rather than being answered with a guess.  An
opcode WQCFG does not allow completes with BAD_OPCODE, as the specification says.

Failure knobs: `hang` (queued work never runs), `inject_status` (the next descriptor
completes with that status), `command_stuck` (CMDSTS stays active).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tests.models.iommu import IommuFault
from tests.models.pci import Bar, ModelDevice, UndefinedCommand, UnmodelledAccess, Window

INTEL = 0x8086
DSA_SPR0 = 0x0B25
CLASS_SYSTEM_OTHER = 0x088000

GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP = 0x10, 0x20, 0x30, 0x38, 0x40
TABLE_OFFSET = 0x60
GENSTATS = 0x90
CMD, CMDSTS, CMDCAP, SWERR = 0xA0, 0xA8, 0xB0, 0xC0
GRPCFG_AT, WQCFG_AT = 0x400, 0x800  # table offsets the model reports (× 0x100 units)
GRPCFG_SIZE = 64
CMDSTS_ACTIVE = 1 << 31
ENABLE_DEVICE, DISABLE_DEVICE, RESET_DEVICE, ENABLE_WQ, ABORT_WQ = 1, 2, 5, 6, 9
ERR_INVAL_CMD, ERR_INVAL_WQIDX = 0x01, 0x02
ERR_DEV_ENABLED, ERR_BUSMASTER_EN, ERR_GRP_CONFIG = 0x10, 0x12, 0x15
ERR_DEV_NOTEN, ERR_WQ_ENABLED, ERR_WQ_SIZE = 0x20, 0x21, 0x22
# SWERR error codes this model uses
SWERR_WQ_DISABLED = 0x31
SWERR_COMPLETION_FAULT = 0x1A

OP_BATCH, OP_MEMMOVE = 1, 3
FLAG_CRAV, FLAG_RCR, FLAG_RCI = 0x4, 0x8, 0x10
SUCCESS, BATCH_FAIL, BAD_OPCODE = 0x01, 0x05, 0x10
XFER_ERANGE, DESC_CNT_ERANGE, HW_ERR1 = 0x13, 0x14, 0x20
DESC = struct.Struct("<IIQQQIHH24x")
COMPLETION = struct.Struct("<BBBBIQ16x")


@dataclass
class Desc:
    flags: int
    opcode: int
    completion: int
    src: int
    dst: int
    size: int
    int_handle: int

    @classmethod
    def unpack(cls, raw: bytes) -> Desc:
        _, word1, completion, src, dst, size, int_handle, _ = DESC.unpack(raw)
        return cls(word1 & 0xFFFFFF, word1 >> 24, completion, src, dst, size, int_handle)


class DsaModel(ModelDevice):
    def __init__(self, device_id: int = DSA_SPR0, max_xfer_shift: int = 21,
                 max_batch_shift: int = 5, wq_size: int = 128, num_wqs: int = 8,
                 wqcfg_size: int = 1, cmd_cap: bool = False, request_int_handle: bool = False,
                 ats_support: bool = True, msix_count: int = 9, latency: int = 1,
                 command_latency: int = 1) -> None:
        super().__init__(INTEL, device_id, CLASS_SYSTEM_OTHER, msix_count)
        self.num_wqs = num_wqs
        self.wqcfg_bytes = 1 << (wqcfg_size + 5)
        self.latency = latency
        self.command_latency = command_latency
        self.hang = False
        self.command_stuck = False
        self.inject_status = 0
        self.queue: list[bytes] = []
        self.copies = 0
        self.aborts = 0
        self.cmd_polls = 0
        self.cmd_result = 0
        self.work_polls = 0
        self.swerr = [0, 0, 0, 0]
        self.enabled = False
        self.wq_enabled = [False] * num_wqs
        self.grpcfg = bytearray(4 * GRPCFG_SIZE)
        self.wqcfg = bytearray(num_wqs * self.wqcfg_bytes)
        gencap = ((max_xfer_shift << 16) | (max_batch_shift << 21) | (int(cmd_cap) << 4))
        wqcap = wq_size | (num_wqs << 16) | (wqcfg_size << 24) | (1 << 49) \
            | (int(ats_support) << 50)
        bar0 = Bar(0x10000)
        for offset, value in ((GENCAP, gencap), (WQCAP, wqcap), (GRPCAP, 4), (ENGCAP, 4),
                              (OPCAP, (1 << OP_MEMMOVE) | (1 << OP_BATCH)),
                              (TABLE_OFFSET, (GRPCFG_AT // 0x100) | (WQCFG_AT // 0x100) << 16),
                              (TABLE_OFFSET + 8, 0)):
            bar0.reg(offset, 8, value, on_write=self._read_only)
        bar0.reg(GENSTATS, 4, on_read=lambda: int(self.enabled), on_write=self._read_only)
        bar0.reg(CMD, 4, on_write=self._command)
        bar0.reg(CMDSTS, 4, on_read=self._cmdsts, on_write=self._read_only)
        if cmd_cap:
            bar0.reg(CMDCAP, 4, (1 << 13) if request_int_handle else 0,
                     on_write=self._read_only)
        bar0.reg(SWERR, 8, on_read=self._swerr0, on_write=self._swerr_ack)
        for i in (1, 2, 3):
            bar0.reg(SWERR + 8 * i, 8, on_read=self._swerr_word(i), on_write=self._read_only)
        bar0.windows += [self._table(GRPCFG_AT, self.grpcfg), self._table(WQCFG_AT, self.wqcfg)]
        self.bars[0] = bar0
        self.bars[2] = Bar(0x1000 * num_wqs)  # portals: only bar_write64b reaches them

    @staticmethod
    def _read_only(value: int) -> None:
        raise AssertionError("write to a read-only DSA register")

    def _table(self, start: int, mem: bytearray) -> Window:
        def read(off: int, width: int) -> int:
            return int.from_bytes(mem[off:off + width], "little")

        def write(off: int, width: int, value: int) -> None:
            if self.enabled:
                raise AssertionError("configuration table written while the device is enabled")
            mem[off:off + width] = value.to_bytes(width, "little")

        return Window(start, len(mem), read, write)

    def _wq(self, index: int) -> tuple[int, int, int, int]:
        """(wq_size, mode, max_xfer_shift, max_batch_shift) of WQ `index` as configured."""
        words = struct.unpack_from("<4I", self.wqcfg, index * self.wqcfg_bytes)
        return words[0] & 0xFFFF, words[2] & 1, words[3] & 0x1F, (words[3] >> 5) & 0xF

    def _op_allowed(self, opcode: int) -> bool:
        if self.wqcfg_bytes < 64:
            return True
        op_config = int.from_bytes(self.wqcfg[32:64], "little")
        return bool(op_config >> opcode & 1)

    # ---- commands ----
    def _command(self, value: int) -> None:
        self.cmd_polls = self.command_latency
        cmd, operand = (value >> 20) & 0x1F, value & 0xFFFFF
        self.cmd_result = self._execute_command(cmd, operand)

    def _execute_command(self, cmd: int, operand: int) -> int:
        handlers: dict[int, Callable[[int], int]] = {
            RESET_DEVICE: self._reset_device, ENABLE_DEVICE: self._enable_device,
            DISABLE_DEVICE: self._disable_device, ENABLE_WQ: self._enable_wq,
            ABORT_WQ: self._abort_wq}
        handler = handlers.get(cmd)
        if handler is None:
            raise UndefinedCommand(f"dsa model: command {cmd} operand 0x{operand:x} "
                                   "(modelled: ENABLE_DEVICE, DISABLE_DEVICE, RESET_DEVICE, "
                                   "ENABLE_WQ, ABORT_WQ)")
        return handler(operand)

    def _reset_device(self, operand: int) -> int:
        self.enabled = False
        self.wq_enabled = [False] * self.num_wqs
        self.grpcfg[:] = bytes(len(self.grpcfg))
        self.wqcfg[:] = bytes(len(self.wqcfg))
        self.queue.clear()
        self.swerr = [0, 0, 0, 0]
        return 0

    def _enable_device(self, operand: int) -> int:
        if self.enabled:
            return ERR_DEV_ENABLED
        if not self.command & 0x4:
            return ERR_BUSMASTER_EN
        wqs, engines = struct.unpack_from("<Q24xQ", self.grpcfg, 0)
        if not wqs & 1 or not engines:
            return ERR_GRP_CONFIG
        self.enabled = True
        return 0

    def _disable_device(self, operand: int) -> int:
        self.enabled = False
        self.wq_enabled = [False] * self.num_wqs
        return 0

    def _enable_wq(self, operand: int) -> int:
        if operand >= self.num_wqs:
            return ERR_INVAL_WQIDX
        if not self.enabled:
            return ERR_DEV_NOTEN
        if self.wq_enabled[operand]:
            return ERR_WQ_ENABLED
        if not self._wq(operand)[0]:
            return ERR_WQ_SIZE
        self.wq_enabled[operand] = True
        return 0

    def _abort_wq(self, operand: int) -> int:
        if operand >> 16 or not operand & 1:
            return ERR_INVAL_WQIDX  # the model has one queue in use: WQ 0, mask index 0
        self.queue.clear()  # dropped: no completion records
        self.aborts += 1
        return 0

    def _cmdsts(self) -> int:
        self._tick()
        if self.cmd_polls:
            if not self.command_stuck:
                self.cmd_polls -= 1
            return CMDSTS_ACTIVE
        return self.cmd_result

    # ---- software errors ----
    def _swerr0(self) -> int:
        self._tick()
        return self.swerr[0]

    def _swerr_word(self, i: int) -> Callable[[], int]:
        return lambda: self.swerr[i]

    def _swerr_ack(self, value: int) -> None:
        self.swerr[0] &= ~(value & 0x3)

    def _set_swerr(self, error: int, opcode: int, fault_addr: int) -> None:
        if self.swerr[0] & 1:
            self.swerr[0] |= 0x2  # overflow: an earlier error was not acknowledged
            return
        self.swerr = [0x1 | 0x4 | 0x8 | (error << 8) | (opcode << 32), 0, fault_addr, 0]

    # ---- portal and execution ----
    def bar_write64b(self, bar: int, offset: int, data: bytes) -> None:
        if bar != 2 or len(data) != 64 or offset % 0x1000:
            raise UnmodelledAccess(f"64-byte store to BAR{bar}+0x{offset:x} ({len(data)} bytes)")
        wq = offset // 0x1000
        if not (self.enabled and self.wq_enabled[wq]):
            self._set_swerr(SWERR_WQ_DISABLED, data[7], 0)
            return
        if len(self.queue) >= self._wq(wq)[0]:
            return  # a dedicated WQ that is full drops the descriptor
        self.queue.append(bytes(data))
        if not self.work_polls:
            self.work_polls = self.latency

    def _tick(self) -> None:
        if not self.queue or self.hang:
            return
        if self.work_polls:
            self.work_polls -= 1
            return
        while self.queue:
            self._run(Desc.unpack(self.queue.pop(0)))

    def _complete(self, desc: Desc, status: int, completed: int, fault_addr: int = 0) -> None:
        wanted = desc.flags & FLAG_RCR or (status != SUCCESS and desc.flags & FLAG_CRAV)
        if wanted:
            try:
                self.iommu.write(desc.completion, COMPLETION.pack(status, 0, 0, 0, completed,
                                                                  fault_addr))
            except IommuFault:
                self._set_swerr(SWERR_COMPLETION_FAULT, desc.opcode, desc.completion)
                return
        if desc.flags & FLAG_RCI:
            self.signal_msix(desc.int_handle)

    def _run(self, desc: Desc) -> int:
        """Execute one descriptor, write its completion; returns its status."""
        if self.inject_status:
            status, self.inject_status = self.inject_status, 0
            self._complete(desc, status, 0)
            return status
        if not self._op_allowed(desc.opcode):
            self._complete(desc, BAD_OPCODE, 0)
            return BAD_OPCODE
        if desc.opcode not in (OP_MEMMOVE, OP_BATCH):
            raise UndefinedCommand(f"dsa model: opcode {desc.opcode} (modelled: MEMMOVE, BATCH)")
        if desc.opcode == OP_BATCH:
            return self._batch(desc)
        status, fault = self._memmove(desc)
        self._complete(desc, status, desc.size if status == SUCCESS else 0, fault)
        return status

    def _memmove(self, desc: Desc) -> tuple[int, int]:
        if desc.size > 1 << self._wq(0)[2]:
            return XFER_ERANGE, 0
        try:
            data = self.iommu.read(desc.src, desc.size)
        except IommuFault:
            return HW_ERR1, desc.src
        # posted write: a fault drops it in the IOMMU, the device is not told
        with contextlib.suppress(IommuFault):
            self.iommu.write(desc.dst, data)
        self.copies += 1
        return SUCCESS, 0

    def _batch(self, desc: Desc) -> int:
        if not 2 <= desc.size <= 1 << self._wq(0)[3]:
            self._complete(desc, DESC_CNT_ERANGE, 0)
            return DESC_CNT_ERANGE
        done = 0
        for i in range(desc.size):
            try:
                raw = self.iommu.read(desc.src + 64 * i, 64)
            except IommuFault:
                break
            if self._run(Desc.unpack(raw)) == SUCCESS:
                done += 1
        status = SUCCESS if done == desc.size else BATCH_FAIL
        self._complete(desc, status, done)
        return status
