"""Scenario driver for Intel I/OAT (CBDMA) channel 0, as the kernel selftests' ioat driver
(tools/testing/selftests/vfio/lib/drivers/ioat/ioat.c; registers from the kernel's
drivers/dma/ioat/registers.h and hw.h).

One 64-byte copy descriptor lives in the driver's DMA region and points at itself, so
DMACOUNT = N makes the channel copy src → dst N times.  memcpy_wait polls CHANSTS until
DONE and suspends the channel; a HALTED channel is an error, reported with CHANERR and
the two config-space error registers, after which the channel is reset.  send_msi copies
8 bytes inside the region with a descriptor that requests an interrupt: MSI-X vector 0.

Limits as the selftest declares them: size up to 1 << XFERCAP (read at init), count up to
65535 (DMACOUNT is 16 bits).

Differences from the C driver (7.2's ioat.c), each kept on purpose (docs/drivers.md):
init ORs memory/bus master/INTx-disable into PCI_COMMAND where C overwrites it, and
remove restores it and INTRCTRL (our drivers leave the device as found); MSI-X is
enabled only when the step asks for interrupts (`irq: none`); XFERCAP 0 (32 GB) gives
0xFFFFFFFF, not C's 1 << 0; error clearing writes DMAUNCERRSTS back to DMAUNCERRSTS (C
writes it to CHANERR_INT); every wait is bounded (C polls forever), and a channel that
does not finish is reset and ETIMEDOUT; a start while one is pending (EBUSY) or a wait
without a start (EINVAL) is refused where C's library asserts.
"""

from __future__ import annotations

import errno
import struct
import time

from vfio_scenario.drivers.base import (
    DeviceAccess,
    DmaRegion,
    Driver,
    DriverError,
    IrqControl,
    IrqHandle,
    Status,
)
from vfio_scenario.uapi.pci import (
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
)

INTEL = 0x8086
IOAT_SKX = 0x2021
VERSIONS = (0x32, 0x33)  # IOAT_VER_3_2, IOAT_VER_3_3: what the selftest accepts

# BAR0 global registers
XFERCAP = 0x01
INTRCTRL = 0x03
VER = 0x08
INTRCTRL_MSIX_VECTOR_CONTROL = 0x08
# channel 0 registers (IOAT_CHANNEL_MMIO_SIZE after the global ones)
CHAN = 0x80
CHANCTRL = CHAN + 0x00
CHANCMD = CHAN + 0x04  # IOAT2_CHANCMD_OFFSET
DMACOUNT = CHAN + 0x06
CHANSTS = CHAN + 0x08
CHAINADDR = CHAN + 0x10  # IOAT2_CHAINADDR_OFFSET
CHANERR = CHAN + 0x28
CHANCTRL_INT_REARM = 0x0001
CHANCTRL_ANY_ERR_ABORT_EN = 0x0008
CHANCMD_RESET = 0x20
CHANCMD_SUSPEND = 0x04
CHANSTS_STATUS = 0x7
ACTIVE, DONE, SUSPENDED, HALTED = 0, 1, 2, 3
STATUS_NAMES = {ACTIVE: "ACTIVE", DONE: "DONE", SUSPENDED: "SUSPENDED", HALTED: "HALTED"}
# PCI config space
DMAUNCERRSTS = 0x148
CHANERR_INT = 0x180

CHANERR_NAMES = {
    0x0001: "SRC_ADDR", 0x0002: "DEST_ADDR", 0x0004: "NEXT_ADDR", 0x0008: "NEXT_DESC_ALIGN",
    0x0010: "CHAIN_ADDR_VALUE", 0x0020: "CHANCMD", 0x0040: "CHIPSET_UNCORRECTABLE_DATA",
    0x0080: "DMA_UNCORRECTABLE_DATA", 0x0100: "READ_DATA", 0x0200: "WRITE_DATA",
    0x0400: "CONTROL", 0x0800: "LENGTH", 0x1000: "COMPLETION_ADDR", 0x2000: "INT_CONFIGURATION",
    0x4000: "SOFT", 0x8000: "UNAFFILIATED", 0x10000: "XOR_P_OR_CRC", 0x20000: "XOR_Q",
    0x40000: "DESCRIPTOR_COUNT",
}

# struct ioat_dma_descriptor: size, ctl (int_en bit 0, op bits 24..31), src, dst, next, ...
DESC = struct.Struct("<IIQQQ")
DESC_SIZE = 64
CTL_INT_EN = 1 << 0
OP_COPY = 0x00
# region layout (struct ioat_state): the descriptor, then send_msi's 8-byte source and target
DESC_OFFSET = 0
MSI_SRC_OFFSET = 64
MSI_DST_OFFSET = 72
RESET_TIMEOUT = 5.0


def chanerr_names(bits: int) -> str:
    """CHANERR bits as names, e.g. "READ_DATA|LENGTH"; "none" for 0."""
    names = [name for bit, name in CHANERR_NAMES.items() if bits & bit]
    unknown = bits & ~sum(CHANERR_NAMES)
    if unknown:
        names.append(f"0x{unknown:x}")
    return "|".join(names) or "none"


class IoatDriver(Driver):
    name = "ioat"
    status = Status.MODEL_TESTED
    ids = ((INTEL, IOAT_SKX),)
    # declared: the most a descriptor's 32-bit size field asks; init reads XFERCAP
    max_memcpy_size = 0xFFFFFFFF
    max_memcpy_count = 0xFFFF
    region_size = 4096

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self._saved: tuple[int, int] | None = None  # (PCI command, INTRCTRL) as found
        self._irq: IrqHandle | None = None
        self._busy = False

    @classmethod
    def probe(cls, device: DeviceAccess) -> bool:
        """Intel SKX CBDMA with a channel version the selftest supports (3.2 or 3.3)."""
        if not super().probe(device):
            return False
        return device.bar_read(0, VER, 1) in VERSIONS

    # ---- helpers ----
    def _error(self, err: int, op: str, detail: str) -> DriverError:
        return DriverError(err, f"ioat.{op}", self.device.bdf, detail)

    def _status(self) -> int:
        return self.device.bar_read(0, CHANSTS, 8) & CHANSTS_STATUS

    def _region(self, op: str) -> DmaRegion:
        if self.region is None or self.region.size < MSI_DST_OFFSET + 8:
            raise self._error(errno.EINVAL, op, "needs a DMA region of at least 80 bytes")
        return self.region

    def _errors(self) -> tuple[int, int, int]:
        """(CHANERR, CHANERR_INT, DMAUNCERRSTS)."""
        return (self.device.bar_read(0, CHANERR, 4),
                self.device.config_read(CHANERR_INT, 4),
                self.device.config_read(DMAUNCERRSTS, 4))

    def _clear_errors(self) -> None:
        chanerr, chanerr_int, uncerr = self._errors()
        # the config registers are write-one-to-clear; each takes its own value back.
        # Differs from the C driver, which writes DMAUNCERRSTS's value to CHANERR_INT
        # (a typo: DMAUNCERRSTS is never cleared); the kernel's ioat driver (dma.c)
        # clears DMAUNCERRSTS in place, as we do.
        self.device.config_write(CHANERR_INT, 4, chanerr_int)
        self.device.config_write(DMAUNCERRSTS, 4, uncerr)
        self.device.bar_write(0, CHANERR, 4, chanerr)

    def _reset(self, op: str) -> None:
        """Clear errors, reset the channel and wait for it to come back HALTED."""
        self._clear_errors()
        self.device.bar_write(0, CHANCMD, 1, CHANCMD_RESET)
        deadline = time.monotonic() + RESET_TIMEOUT
        self.poll(op, "channel reset did not complete (CHANCMD.RESET still set)",
                  lambda: not self.device.bar_read(0, CHANCMD, 1) & CHANCMD_RESET, deadline)
        status = self._status()
        if status != HALTED:
            raise self._error(errno.EIO, op, f"channel {STATUS_NAMES.get(status, status)} "
                                             "after reset, expected HALTED")

    # ---- verbs ----
    def init(self, msi_vector: int | None = 0) -> None:
        """Memory + bus master on, reset channel 0, MSI-X vector control, read XFERCAP;
        when msi_vector is not None enable every MSI-X vector (the channel uses 0)."""
        self._region("init")
        self._busy = False
        command = self.device.config_read(PCI_COMMAND, 2)
        intrctrl = self.device.bar_read(0, INTRCTRL, 1)
        self._saved = (command, intrctrl)
        # differs from C (which writes exactly these three bits): OR them in, so remove
        # can put the register back as found
        self.device.config_write(PCI_COMMAND, 2, command | PCI_COMMAND_MEMORY
                                 | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE)
        self._reset("init")
        self.device.bar_write(0, INTRCTRL, 1, INTRCTRL_MSIX_VECTOR_CONTROL)
        if msi_vector is not None and isinstance(self.device, IrqControl):
            count = self.device.irq_info("msix").count
            self._irq = self.device.enable_irq("msix", count, 0)
        self.msi_vector = 0 if msi_vector is not None else None
        xfercap = self.device.bar_read(0, XFERCAP, 1)
        # XFERCAP 0 means 32 GB, beyond what the descriptor's 32-bit size field can ask.
        # Differs from C, whose 1UL << XFERCAP makes it 1 byte
        self.max_memcpy_size = 1 << xfercap if xfercap else 0xFFFFFFFF

    def remove(self) -> None:
        """Reset the channel, free the MSI-X vectors, restore INTRCTRL and PCI command."""
        self._busy = False
        self._reset("remove")
        if self._irq is not None:
            self._irq.disable()
            self._irq = None
        self.msi_vector = None
        if self._saved is not None:
            command, intrctrl = self._saved
            self.device.bar_write(0, INTRCTRL, 1, intrctrl)
            self.device.config_write(PCI_COMMAND, 2, command)
            self._saved = None

    def _start(self, src: int, dst: int, size: int, count: int, interrupt: bool) -> None:
        region = self._region("memcpy_start")
        if self._busy:
            # C's library asserts here (memcpy_in_progress); without an abort we refuse
            raise self._error(errno.EBUSY, "memcpy_start", "previous memcpy not waited for")
        desc_iova = region.iova + DESC_OFFSET
        region.mem[DESC_OFFSET:DESC_OFFSET + DESC_SIZE] = bytes(DESC_SIZE)
        ctl = (OP_COPY << 24) | (CTL_INT_EN if interrupt else 0)
        # next points at the descriptor itself: DMACOUNT = N repeats the copy N times
        DESC.pack_into(region.mem, DESC_OFFSET, size, ctl, src, dst, desc_iova)
        self.device.bar_write(0, CHAINADDR, 8, desc_iova)
        self.device.bar_write(0, CHANCTRL, 2, CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN)
        self.device.bar_write(0, DMACOUNT, 2, count)
        self._busy = True

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Copy [src, src+size) to dst `count` times; returns without waiting."""
        self.check_memcpy(src, dst, size, count)
        self._start(src, dst, size, count, interrupt=False)

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Wait for DONE, then suspend the channel.  HALTED: DriverError EIO with the
        error registers (the channel is reset); no DONE in time: ETIMEDOUT (reset too)."""
        if not self._busy:
            raise self._error(errno.EINVAL, "memcpy_wait", "no memcpy started")
        self._busy = False  # whatever happens below ends this memcpy
        deadline = time.monotonic() + timeout
        status = self._status()
        while status != DONE:
            if status == HALTED:
                chanerr, chanerr_int, uncerr = self._errors()
                self._reset("memcpy_wait")
                raise self._error(errno.EIO, "memcpy_wait",
                                  f"channel halted: CHANERR 0x{chanerr:x} "
                                  f"({chanerr_names(chanerr)}), CHANERR_INT 0x{chanerr_int:x}, "
                                  f"DMAUNCERRSTS 0x{uncerr:x}")
            if time.monotonic() > deadline:
                # differs from C, which polls forever: a step must end
                self._reset("memcpy_wait")
                raise self._error(errno.ETIMEDOUT, "memcpy_wait",
                                  f"channel still {STATUS_NAMES.get(status, status)} "
                                  f"after {timeout:g}s")
            time.sleep(0.0005)
            status = self._status()
        self.device.bar_write(0, CHANCMD, 1, CHANCMD_SUSPEND)
        try:
            self.poll("memcpy_wait", "channel did not suspend",
                      lambda: self._status() == SUSPENDED, deadline)
        except DriverError:
            self._reset("memcpy_wait")
            raise

    def _send_msi(self) -> None:
        """Copy 8 bytes inside the region with a descriptor that requests the interrupt."""
        region = self._region("send_msi")
        self._start(region.iova + MSI_SRC_OFFSET, region.iova + MSI_DST_OFFSET, 8, 1,
                    interrupt=True)
        self.memcpy_wait()
