"""Register model of one Intel I/OAT (CBDMA) channel, as the kernel's ioat selftest
driver programs it (drivers/dma/ioat/registers.h, hw.h).

BAR0 holds the global registers (CHANCNT, XFERCAP, INTRCTRL, VER) and channel 0's
registers at 0x80.  Writing DMACOUNT hands the channel descriptors starting at
CHAINADDR; each descriptor's `next` is followed until DMACOUNT descriptors completed.
The work happens when the driver next reads CHANSTS after `latency` reads, so a driver
that does not wait sees ACTIVE.  A descriptor with int_en raises MSI-X vector 0 when
INTRCTRL enables MSI-X vector control and CHANCTRL is re-armed.

Commands and values the description (registers.h, hw.h) does not define, or defines but
this model does not implement, raise `UndefinedCommand` instead of being guessed at:
CHANCMD other than RESET or SUSPEND alone, CHANCTRL bits other than INT_REARM and
ANY_ERR_ABORT_EN, INTRCTRL other than 0 or MSIX_VECTOR_CONTROL, a descriptor whose
operation is not COPY or whose control sets bits other than int_en.

Failure knobs: `hang` (the channel stays ACTIVE), `inject_chanerr` (the next descriptor
fails with those CHANERR bits), `reset_stuck` (CHANCMD.RESET never clears).  An IOMMU
fault on a descriptor or source read halts the channel with CHANERR; a faulting
destination write is dropped (posted) and only recorded in `iommu.faults`.
"""

from __future__ import annotations

import contextlib
import struct

from tests.models.iommu import IommuFault
from tests.models.pci import Bar, ModelDevice, Register, UndefinedCommand

INTEL = 0x8086
IOAT_SKX = 0x2021
CLASS_SYSTEM_OTHER = 0x088000

CHANCNT = 0x00
XFERCAP = 0x01
INTRCTRL = 0x03
VER = 0x08
CHAN = 0x80
CHANCTRL = CHAN + 0x00
CHANCMD = CHAN + 0x04
DMACOUNT = CHAN + 0x06
CHANSTS = CHAN + 0x08
CHAINADDR = CHAN + 0x10
CHANCMP = CHAN + 0x18
CHANERR = CHAN + 0x28
DMAUNCERRSTS = 0x148
CHANERR_INT = 0x180

INTRCTRL_MSIX_VECTOR_CONTROL = 0x08
CHANCTRL_INT_REARM = 0x0001
CHANCTRL_ANY_ERR_ABORT_EN = 0x0008
CMD_RESET = 0x20
CMD_SUSPEND = 0x04
ACTIVE, DONE, SUSPENDED, HALTED = 0, 1, 2, 3
ERR_NEXT_ADDR = 0x0004
ERR_READ_DATA = 0x0100
ERR_LENGTH = 0x0800
OP_COPY = 0x00
DESC = struct.Struct("<IIQQQ")  # size, ctl, src, dst, next (then 24 unused bytes)


class IoatModel(ModelDevice):
    def __init__(self, device_id: int = IOAT_SKX, version: int = 0x33, xfercap: int = 20,
                 msix_count: int = 1, latency: int = 2) -> None:
        super().__init__(INTEL, device_id, CLASS_SYSTEM_OTHER, msix_count)
        self.config_rw1c |= {DMAUNCERRSTS, CHANERR_INT}
        self.latency = latency
        self.hang = False
        self.reset_stuck = False
        self.inject_chanerr = 0
        self.status = HALTED
        self.completed = 0  # descriptors done since CHAINADDR was written
        self.target = 0  # DMACOUNT
        self.current = 0  # IOVA of the next descriptor
        self.last_done = 0  # IOVA of the last completed descriptor
        self.pending_polls = 0
        self.reset_polls = 0
        self.copies = 0
        bar = self.bars.setdefault(0, self._bar0(version, xfercap))
        self.chanerr: Register = bar.regs[CHANERR]

    def _bar0(self, version: int, xfercap: int) -> Bar:
        bar = Bar(0x4000)
        bar.reg(CHANCNT, 1, 1, on_write=self._read_only)
        bar.reg(XFERCAP, 1, xfercap, on_write=self._read_only)
        bar.reg(INTRCTRL, 1, on_write=self._intrctrl_write)
        bar.reg(VER, 1, version, on_write=self._read_only)
        bar.reg(CHANCTRL, 2, on_write=self._chanctrl_write)
        bar.reg(CHANCMD, 1, on_read=self._chancmd_read, on_write=self._chancmd_write)
        bar.reg(DMACOUNT, 2, on_write=self._dmacount_write)
        bar.reg(CHANSTS, 8, on_read=self._chansts_read, on_write=self._read_only)
        bar.reg(CHAINADDR, 8, on_write=self._chainaddr_write)
        bar.reg(CHANCMP, 8)
        bar.reg(CHANERR, 4, on_write=self._chanerr_write)
        return bar

    @staticmethod
    def _read_only(value: int) -> None:
        raise AssertionError("write to a read-only I/OAT register")

    # ---- registers ----
    @property
    def chanctrl(self) -> int:
        return self.bars[0].regs[CHANCTRL].value

    def _chancmd_read(self) -> int:
        if self.reset_polls:
            if not self.reset_stuck:
                self.reset_polls -= 1
            return CMD_RESET
        return 0

    def _intrctrl_write(self, value: int) -> None:
        if value not in (0, INTRCTRL_MSIX_VECTOR_CONTROL):
            raise UndefinedCommand(f"ioat model: INTRCTRL 0x{value:x} (modelled: 0, "
                                   "MSIX_VECTOR_CONTROL)")
        self.bars[0].regs[INTRCTRL].value = value

    def _chanctrl_write(self, value: int) -> None:
        if value & ~(CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN):
            raise UndefinedCommand(f"ioat model: CHANCTRL 0x{value:x} (modelled: INT_REARM, "
                                   "ANY_ERR_ABORT_EN)")
        self.bars[0].regs[CHANCTRL].value = value

    def _chancmd_write(self, value: int) -> None:
        if value not in (CMD_RESET, CMD_SUSPEND):
            # RESUME, ABORT, APPEND, START are defined but not modelled; 0x40/0x80 are not
            # defined at all
            raise UndefinedCommand(f"ioat model: CHANCMD 0x{value:x} (modelled: RESET 0x20, "
                                   "SUSPEND 0x04, one at a time)")
        if value & CMD_RESET:
            self.status = HALTED
            self.completed = self.target = 0
            self.pending_polls = 0
            self.reset_polls = 2
        elif value & CMD_SUSPEND and self.status in (ACTIVE, DONE):
            self.status = SUSPENDED

    def _chainaddr_write(self, value: int) -> None:
        if self.status == ACTIVE and self.completed < self.target:
            raise AssertionError("CHAINADDR written while the channel is running")
        self.bars[0].regs[CHAINADDR].value = value
        self.current = value
        self.completed = 0

    def _dmacount_write(self, value: int) -> None:
        self.bars[0].regs[DMACOUNT].value = value
        self.target = value
        self.status = ACTIVE
        self.pending_polls = self.latency

    def _chanerr_write(self, value: int) -> None:
        self.chanerr.value &= ~value

    def _chansts_read(self) -> int:
        if self.status == ACTIVE and not self.hang:
            if self.pending_polls:
                self.pending_polls -= 1
            else:
                self._run()
        return (self.last_done & ~0x3F) | self.status

    # ---- the DMA engine ----
    def _halt(self, chanerr: int) -> None:
        self.chanerr.value |= chanerr
        self.set_config(CHANERR_INT, 4, self.config_read(CHANERR_INT, 4) | chanerr)
        if self.chanctrl & CHANCTRL_ANY_ERR_ABORT_EN:
            self.status = HALTED

    def _run(self) -> None:
        while self.completed < self.target:
            error = self._execute(self.current)
            if error:
                self._halt(error)
                if self.status == HALTED:
                    return
            self.last_done = self.current
            self.completed += 1
        self.status = DONE

    def _execute(self, iova: int) -> int:
        """Run one descriptor; returns the CHANERR bits of its failure, 0 on success."""
        if not self.command & 0x4:  # no bus master: the channel cannot fetch at all
            return ERR_NEXT_ADDR
        try:
            size, ctl, src, dst, nxt = DESC.unpack(self.iommu.read(iova, DESC.size))
        except IommuFault:
            return ERR_NEXT_ADDR
        self.current = nxt
        if self.inject_chanerr:
            error, self.inject_chanerr = self.inject_chanerr, 0
            return error
        if ctl >> 24 != OP_COPY or ctl & 0x00FFFFFE:
            raise UndefinedCommand(f"ioat model: descriptor control 0x{ctl:08x} at IOVA "
                                   f"0x{iova:x} (modelled: COPY, int_en)")
        if size > 1 << self.bars[0].regs[XFERCAP].value:
            return ERR_LENGTH
        try:
            data = self.iommu.read(src, size)
        except IommuFault:
            return ERR_READ_DATA
        # a posted write: a fault drops it in the IOMMU, the channel never hears of it
        with contextlib.suppress(IommuFault):
            self.iommu.write(dst, data)
        self.copies += 1
        if ctl & 1:
            self._interrupt()
        return 0

    def _interrupt(self) -> None:
        regs = self.bars[0].regs
        if not regs[INTRCTRL].value & INTRCTRL_MSIX_VECTOR_CONTROL:
            return
        if self.chanctrl & CHANCTRL_INT_REARM:
            regs[CHANCTRL].value &= ~CHANCTRL_INT_REARM  # one interrupt per re-arm
            self.signal_msix(0)
