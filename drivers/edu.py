"""Scenario driver for QEMU's educational PCI device (1234:11e8), the testbed's device.

edu's registers (QEMU hw/misc/edu.c, docs/specs/edu.rst): 0x00 identification
(0x010000ed), 0x24 interrupt status, 0x60 raise interrupt, 0x64 acknowledge; DMA
source 0x80, destination 0x88, count 0x90, command 0x98 (bit 0 start — cleared by the
device on completion —, bit 1 direction edu→RAM, bit 2 interrupt on completion).  The
DMA engine moves at most 4 KiB between RAM and its internal buffer at 0x40000 and
drives 28 address bits.  Registers below 0x80 answer only 4-byte accesses.

memcpy is two transfers, RAM→buffer then buffer→RAM: memcpy_start launches the first,
memcpy_wait finishes it, launches the second and waits for that.  Completion is polled
on the command register, or taken from the MSI when init enabled one.
"""

from __future__ import annotations

import errno
import time
from typing import Protocol, runtime_checkable

from vfio_scenario.drivers.base import (
    DeviceAccess,
    DmaRegion,
    Driver,
    DriverError,
    IrqHandle,
    Status,
)
from vfio_scenario.uapi.pci import PCI_COMMAND_MASTER

REG_ID = 0x00
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98
CMD_START = 1 << 0
CMD_TO_RAM = 1 << 1
CMD_IRQ = 1 << 2
DMA_IRQ = 0x100
# The interrupt-status bit send_msi raises (edu's factorial bit, otherwise unused here).
MSI_SEND_BIT = 0x1
BUFFER = 0x40000
BUFFER_SIZE = 4096
ID_VALUE = 0x010000ED


@runtime_checkable
class MsiCapable(Protocol):
    """The part of the uapi device that enables and disables interrupt vectors."""

    def enable_irq(self, irq: str, count: int = 1, start: int = 0) -> IrqHandle: ...


class EduDriver(Driver):
    name = "edu"
    status = Status.TESTBED
    ids = ((0x1234, 0x11E8),)
    max_memcpy_size = BUFFER_SIZE
    max_memcpy_count = 1
    dma_mask_bits = 28

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self._pending: tuple[int, int] | None = None  # (dst, size) of phase two

    def init(self, msi_vector: int | None = 0) -> None:
        """Enable Bus Master and, when msi_vector is not None, MSI vector 0."""
        self.enable_command(PCI_COMMAND_MASTER)
        if msi_vector is not None:
            if msi_vector != 0:
                raise DriverError(errno.EINVAL, "edu.init", self.device.bdf,
                                  "edu has one MSI vector (0)")
            if isinstance(self.device, MsiCapable):
                self._irq = self.device.enable_irq("msi", 1, 0)
            self.msi_vector = 0
        self.device.bar_write(0, REG_IRQ_ACK, 4, 0xFFFFFFFF)

    def remove(self) -> None:
        """Disable the MSI init enabled and restore the command register."""
        self.device.bar_write(0, REG_IRQ_ACK, 4, 0xFFFFFFFF)
        self.release_irq_and_command()

    def _start(self, src: int, dst: int, size: int, command: int) -> None:
        self.device.bar_write(0, REG_DMA_SRC, 8, src)
        self.device.bar_write(0, REG_DMA_DST, 8, dst)
        self.device.bar_write(0, REG_DMA_COUNT, 8, size)
        use_irq = self.msi_vector is not None
        self.device.bar_write(0, REG_DMA_CMD, 8, command | CMD_START | (CMD_IRQ if use_irq else 0))

    def _wait(self, deadline: float) -> None:
        if self.msi_vector is not None:
            left = max(0.0, deadline - time.monotonic())
            if not self.device.wait_irq(self.msi_vector, left):
                raise DriverError(errno.ETIMEDOUT, "edu.memcpy_wait", self.device.bdf,
                                  "no DMA completion interrupt")
            self.device.bar_write(0, REG_IRQ_ACK, 4, DMA_IRQ)
        while self.device.bar_read(0, REG_DMA_CMD, 8) & CMD_START:
            if time.monotonic() > deadline:
                raise DriverError(errno.ETIMEDOUT, "edu.memcpy_wait", self.device.bdf,
                                  "DMA still running")
            time.sleep(0.001)

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Start RAM (src IOVA) → edu buffer; memcpy_wait finishes into dst."""
        self.check_memcpy(src, dst, size, count)
        if self._pending is not None:
            raise DriverError(errno.EBUSY, "edu.memcpy_start", self.device.bdf,
                              "previous memcpy not waited for")
        self._start(src, BUFFER, size, 0)
        self._pending = (dst, size)

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Finish the started memcpy: wait, copy edu buffer → RAM (dst), wait."""
        if self._pending is None:
            raise DriverError(errno.EINVAL, "edu.memcpy_wait", self.device.bdf,
                              "no memcpy started")
        dst, size = self._pending
        deadline = time.monotonic() + timeout
        try:
            self._wait(deadline)
            self._start(BUFFER, dst, size, CMD_TO_RAM)
            self._wait(deadline)
        finally:
            self._pending = None

    def _send_msi(self) -> None:
        """Raise edu's interrupt (MSI when enabled), then clear the status bit again."""
        self.device.bar_write(0, REG_IRQ_RAISE, 4, MSI_SEND_BIT)
        self.device.bar_write(0, REG_IRQ_ACK, 4, MSI_SEND_BIT)
