"""Scenario driver for the Intel 82576 Gigabit Ethernet PF (8086:10c9), QEMU's `igb`.

Follows the kernel selftests' igb driver (tools/testing/selftests/vfio/lib/drivers/igb):
memcpy is a frame transmitted from `src` and looped back by the PHY into a receive
buffer at `dst`; send_msi sets bit 0 of the extended interrupt cause set register
(EICS), which raises MSI-X vector 0.  Registers and bits are the 82576 datasheet's, as
the kernel's e1000_regs.h / e1000_defines.h / e1000_82575.h name them.

init (C's igb_init): CTRL.RST, IMC, MSI-X vector 0 through VFIO, CTRL_EXT.DRV_LOAD, bus
mastering, PHY internal loopback at 1 Gb/s full duplex through MDIC (BMCR: restart
autonegotiation, then loopback with autonegotiation off), the MAC forced to 1 Gb/s full
duplex with link up, PCIe completion-timeout resend off, one transmit and one receive
ring in the driver's DMA region, receiver and transmitter on, MSI-X mode with EICR
bit 0 auto-cleared and unmasked.  The link is then up once STATUS.LU says so (QEMU
raises it when its 500 ms autonegotiation timer fires; C sleeps 550 ms instead).

Copies are exact for every size from 1 byte: a frame is our 64-byte Ethernet header
(broadcast, EtherType 0x88B5, "local experimental") from the driver's region followed
by `size` bytes of `src` (two data descriptors), so no frame is ever shorter than the
60-byte Ethernet minimum and nothing is padded.  The receive queue splits headers
"always" (SRRCTL.DESCTYPE = 101b) with a 64-byte header buffer: the header lands in the
region, the remaining `size` bytes at `dst`, and CRC stripping (RCTL.SECRC) keeps the
4-byte FCS out of `dst`.  One frame holds at most 1514 bytes without jumbo frames
(RCTL.LPE off), hence `max_memcpy_size` = 1514 - 64 = 1450.

memcpy_wait returns when the last receive descriptor's DD bit is set (QEMU loops the
frame back while the tail write is in flight; nothing waits on a timer).  The last
transmit descriptor asks for a status write-back (RS): a frame the device sent but never
received (its data could not be read) is EIO, and the receive ring is re-initialised so
that the next copy does not land in the buffer left posted; a copy that never completes
is ETIMEDOUT and the device is reset and re-initialised, as C does.
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
    Status,
)
from vfio_scenario.uapi.pci import PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY

INTEL = 0x8086
DEVICE_82576 = 0x10C9

# registers (BAR 0), e1000_regs.h
CTRL = 0x00000
STATUS = 0x00008
EECD = 0x00010
CTRL_EXT = 0x00018
MDIC = 0x00020
IMC = 0x000D8
RCTL = 0x00100
TCTL = 0x00400
GPIE = 0x01514
EICS = 0x01520
EIMS = 0x01524
EIMC = 0x01528
EIAC = 0x0152C
EICR = 0x01580
GCR = 0x05B00
RDBAL = 0x02800  # queue 0
RDBAH = 0x02804
RDLEN = 0x02808
SRRCTL = 0x0280C
RDH = 0x02810
RDT = 0x02818
RXDCTL = 0x02828
TDBAL = 0x03800
TDBAH = 0x03804
TDLEN = 0x03808
TDH = 0x03810
TDT = 0x03818
TXDCTL = 0x03828

# bits, e1000_defines.h / e1000_82575.h
CTRL_FD = 0x00000001
CTRL_SLU = 0x00000040
CTRL_SPD_SEL = 0x00000300
CTRL_SPD_1000 = 0x00000200
CTRL_FRCSPD = 0x00000800
CTRL_FRCDPX = 0x00001000
CTRL_RST = 0x04000000
STATUS_LU = 0x00000002
EECD_AUTO_RD = 0x00000200
CTRL_EXT_LINK_MODE_MASK = 0x00C00000
CTRL_EXT_DRV_LOAD = 0x10000000
MDIC_REG_SHIFT = 16
MDIC_PHY_SHIFT = 21
MDIC_OP_WRITE = 0x04000000
MDIC_READY = 0x10000000
MDIC_ERROR = 0x40000000
RCTL_EN = 0x00000002
RCTL_UPE = 0x00000008
RCTL_MPE = 0x00000010
RCTL_BAM = 0x00008000
RCTL_SECRC = 0x04000000
TCTL_EN = 0x00000002
TCTL_PSP = 0x00000008
GPIE_MSIX_MODE = 0x00000010
GCR_CMPL_TMOUT_RESEND = 0x00010000
QUEUE_ENABLE = 0x02000000  # TXDCTL / RXDCTL
SRRCTL_BSIZEPKT_SHIFT = 10  # 1 KiB units
SRRCTL_BSIZEHDRSIZE_SHIFT = 2  # bytes << 2: 64-byte units at bits 11:8
SRRCTL_DESCTYPE_HDR_SPLIT_ALWAYS = 0x0A000000
ADVTXD_DTYP_DATA = 0x00300000
ADVTXD_DCMD_EOP = 0x01000000
ADVTXD_DCMD_IFCS = 0x02000000
ADVTXD_DCMD_RS = 0x08000000
ADVTXD_DCMD_DEXT = 0x20000000
ADVTXD_PAYLEN_SHIFT = 14
STAT_DD = 0x01
STAT_EOP = 0x02

# PHY (MII) control register and its bits, linux/mii.h
MII_BMCR = 0x00
BMCR_SPEED1000 = 0x0040
BMCR_FULLDPLX = 0x0100
BMCR_ANRESTART = 0x0200
BMCR_ANENABLE = 0x1000
BMCR_LOOPBACK = 0x4000
PHY_ADDRESS = 1

MSIX_VECTOR = 0
VECTOR_MASK = 1 << MSIX_VECTOR

# descriptors (advanced formats, datasheet 7.1.5 / 7.2.2.3)
TX_DESC = struct.Struct("<QII")  # buffer address, cmd_type_len, olinfo_status
RX_READ = struct.Struct("<QQ")  # packet buffer address, header buffer address
RX_WB = struct.Struct("<HHIIHH")  # pkt_info, hdr_info, rss, status_error, length, vlan
DESC_SIZE = 16
TX_ENTRIES = 1024
RX_ENTRIES = 512
HEADER = 64  # bytes of our Ethernet header: the header buffer's size, in its 64-byte unit
MAX_FRAME = 1514  # without FCS, RCTL.LPE off
PACKET_BUFFER_KIB = 2
ETHERTYPE_LOCAL_EXPERIMENTAL = 0x88B5
SOURCE_MAC = bytes.fromhex("020000000001")  # locally administered

# the driver's region
TX_RING = 0
RX_RING = TX_ENTRIES * DESC_SIZE
TX_HEADER = RX_RING + RX_ENTRIES * DESC_SIZE  # the frame header every copy sends
RX_HEADER = TX_HEADER + 4096  # where the receive queue writes it back
REGION_SIZE = RX_HEADER + 4096

LINK_TIMEOUT = 3.0  # s: QEMU's autonegotiation timer is 500 ms; real links come sooner
LOSS_GRACE = 0.01  # s: receive write-back after the transmit write-back on real hardware


class IgbDriver(Driver):
    name = "igb"
    status = Status.TESTBED
    ids = ((INTEL, DEVICE_82576),)
    region_size = REGION_SIZE
    # differs from C (docs/drivers.md): 1450 and 511, where C has 1024 and 4095
    max_memcpy_size = MAX_FRAME - HEADER
    # two transmit descriptors a copy; a ring keeps one slot free
    max_memcpy_count = (TX_ENTRIES - 1) // 2

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self.tx_tail = 0
        self.rx_tail = 0
        self._pending: tuple[int, int, int, int] | None = None  # rx first, count, size, tx last

    # ---- registers ----
    def read(self, reg: int) -> int:
        value: int = self.device.bar_read(0, reg, 4)
        return value

    def write(self, reg: int, value: int) -> None:
        self.device.bar_write(0, reg, 4, value)

    def write_phy(self, reg: int, value: int) -> None:
        """One MDIO write to the internal PHY (C's igb_write_phy, without the SW/FW
        semaphore, which C omits too: no manageability firmware shares the PHY here)."""
        self.write(MDIC, value | reg << MDIC_REG_SHIFT | PHY_ADDRESS << MDIC_PHY_SHIFT
                   | MDIC_OP_WRITE)
        self.poll("igb.init", f"MDIC ready after PHY register {reg} write",
                  lambda: bool(self.read(MDIC) & MDIC_READY), time.monotonic() + 0.05)
        if self.read(MDIC) & MDIC_ERROR:
            raise DriverError(errno.EIO, "igb.init", self.device.bdf,
                              f"MDIC error writing PHY register {reg}")

    # ---- init / remove ----
    def reset(self, op: str) -> None:
        """CTRL.RST; done when the NVM auto-read finished (EECD.AUTO_RD) or, on QEMU, which
        never sets AUTO_RD, when RST cleared itself (C's igb_reset)."""
        self.write(CTRL, self.read(CTRL) | CTRL_RST)
        time.sleep(0.001)  # datasheet 4.2.1.6.1: at least 1 ms before checking
        deadline = time.monotonic() + 0.02
        while not self.read(EECD) & EECD_AUTO_RD and time.monotonic() < deadline:
            time.sleep(0.001)
        if not self.read(EECD) & EECD_AUTO_RD and self.read(CTRL) & CTRL_RST:
            raise DriverError(errno.ETIMEDOUT, op, self.device.bdf,
                              "device reset did not complete (CTRL.RST still set)")
        self.write(IMC, 0xFFFFFFFF)

    def init(self, msi_vector: int | None = 0) -> None:
        """Reset the function and configure the loopback path (module docstring)."""
        dev = self.device
        region = self.dma
        if region.iova % 128 or region.size < REGION_SIZE:
            raise DriverError(errno.EINVAL, "igb.init", dev.bdf,
                              f"DMA region must be {REGION_SIZE} bytes, 128-byte aligned")
        # restored by remove (C does not)
        self.enable_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        try:
            self.reset("igb.init")
            if msi_vector is not None:
                self._enable_msix(msi_vector)
            self._hw_init()
        except BaseException:
            self.remove()
            raise

    def _enable_msix(self, vector: int) -> None:
        if vector != MSIX_VECTOR:
            raise DriverError(errno.EINVAL, "igb.init", self.device.bdf,
                              "send_msi raises MSI-X vector 0")
        if not isinstance(self.device, IrqControl) or self.device.irq_info("msix").count < 1:
            raise DriverError(errno.EOPNOTSUPP, "igb.init", self.device.bdf, "no MSI-X")
        self._irq = self.device.enable_irq("msix", 1, MSIX_VECTOR)
        self.msi_vector = MSIX_VECTOR

    def _hw_init(self) -> None:
        """Everything CTRL.RST cleared (C's igb_hw_init)."""
        self.write(CTRL_EXT, (self.read(CTRL_EXT) | CTRL_EXT_DRV_LOAD)
                   & ~CTRL_EXT_LINK_MODE_MASK)
        # PHY internal loopback (datasheet 3.5.6.3.1); the autonegotiation restart is what
        # brings STATUS.LU up on QEMU, which raises it only from its autonegotiation timer
        self.write_phy(MII_BMCR, BMCR_ANENABLE | BMCR_ANRESTART)
        self.write_phy(MII_BMCR, BMCR_LOOPBACK | BMCR_SPEED1000 | BMCR_FULLDPLX)
        ctrl = self.read(CTRL) & ~CTRL_SPD_SEL
        self.write(CTRL, ctrl | CTRL_FRCSPD | CTRL_FRCDPX | CTRL_SPD_1000 | CTRL_FD | CTRL_SLU)
        # a copy from an unmapped IOVA must not make the device resend its read forever
        self.write(GCR, self.read(GCR) & ~GCR_CMPL_TMOUT_RESEND)
        self._tx_ring()
        self._rx_ring()
        # differs from C (docs/drivers.md): no RCTL.LBM_MAC, the PHY loops back
        self.write(RCTL, RCTL_EN | RCTL_UPE | RCTL_MPE | RCTL_BAM | RCTL_SECRC)
        self.write(TCTL, TCTL_EN | TCTL_PSP)
        self.poll("igb.init", "TXDCTL and RXDCTL queue enable",
                  lambda: bool(self.read(TXDCTL) & self.read(RXDCTL) & QUEUE_ENABLE),
                  time.monotonic() + 0.02)
        if self.msi_vector is not None:
            # differs from C (docs/drivers.md): no IVAR, EIAM or GPIE.EIAME.  MSI-X mode: EICR bit n is vector n; bit 0 clears itself when its MSI-X is
            # sent, so every EICS write raises one.  No queue is mapped to a vector
            # (IVAR stays invalid): copies raise no interrupt.
            self.write(GPIE, GPIE_MSIX_MODE)
            self.write(EIAC, VECTOR_MASK)
            self.write(EIMS, VECTOR_MASK)
        # differs from C (docs/drivers.md): polled, where C sleeps 50 ms and 500 ms
        self.poll("igb.init", "link up (STATUS.LU)",
                  lambda: bool(self.read(STATUS) & STATUS_LU),
                  time.monotonic() + LINK_TIMEOUT, interval=0.005)

    def _tx_ring(self) -> None:
        mem, iova = self.dma.mem, self.dma.iova
        mem[TX_RING:TX_RING + TX_ENTRIES * DESC_SIZE] = bytes(TX_ENTRIES * DESC_SIZE)
        header = bytearray(HEADER)
        header[0:6] = b"\xff" * 6
        header[6:12] = SOURCE_MAC
        header[12:14] = ETHERTYPE_LOCAL_EXPERIMENTAL.to_bytes(2, "big")
        mem[TX_HEADER:TX_HEADER + HEADER] = header
        self.write(TXDCTL, 0)
        self.write(TDBAL, (iova + TX_RING) & 0xFFFFFFFF)
        self.write(TDBAH, (iova + TX_RING) >> 32)
        self.write(TDLEN, TX_ENTRIES * DESC_SIZE)
        self.write(TDH, 0)
        self.write(TDT, 0)
        self.write(TXDCTL, QUEUE_ENABLE)
        self.tx_tail = 0

    def _rx_ring(self) -> None:
        """Program receive queue 0 as the kernel's igb_configure_rx_ring does: queue
        disabled, ring registers, SRRCTL, queue enabled."""
        mem, iova = self.dma.mem, self.dma.iova
        mem[RX_RING:RX_RING + RX_ENTRIES * DESC_SIZE] = bytes(RX_ENTRIES * DESC_SIZE)
        self.write(RXDCTL, 0)
        self.poll("igb.init", "RXDCTL queue disable",
                  lambda: not self.read(RXDCTL) & QUEUE_ENABLE, time.monotonic() + 0.02)
        self.write(RDBAL, (iova + RX_RING) & 0xFFFFFFFF)
        self.write(RDBAH, (iova + RX_RING) >> 32)
        self.write(RDLEN, RX_ENTRIES * DESC_SIZE)
        self.write(RDH, 0)
        self.write(RDT, 0)
        self.write(SRRCTL, SRRCTL_DESCTYPE_HDR_SPLIT_ALWAYS
                   | HEADER << SRRCTL_BSIZEHDRSIZE_SHIFT | PACKET_BUFFER_KIB)
        self.write(RXDCTL, QUEUE_ENABLE)
        self.rx_tail = 0

    def remove(self) -> None:
        """Receiver and transmitter off, CTRL.RST, MSI-X off, PCI command as found."""
        self._pending = None
        try:
            if self._saved_command is not None:
                self.write(RCTL, 0)
                self.write(TCTL, 0)
                self.reset("igb.remove")
        finally:
            self.release_irq_and_command()

    # ---- interrupts ----
    def _send_msi(self) -> None:
        """EICS bit 0: extended interrupt cause 0 → MSI-X vector 0."""
        if self.msi_vector is None:
            raise DriverError(errno.EINVAL, "igb.send_msi", self.device.bdf,
                              "init ran without an interrupt")
        self.write(EICS, VECTOR_MASK)

    # ---- memcpy ----
    def check_memcpy(self, src: int, dst: int, size: int, count: int) -> None:
        if dst == 0:  # differs from C (docs/drivers.md)
            raise DriverError(errno.EINVAL, "igb.memcpy_start", self.device.bdf,
                              "the 82576 skips receive descriptors whose buffer address is 0")
        super().check_memcpy(src, dst, size, count)

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Post `count` receive buffers at `dst`, then `count` frames of header + `size`
        bytes of `src`; the tail writes start the device."""
        self.check_memcpy(src, dst, size, count)
        if self._saved_command is None:
            raise DriverError(errno.EINVAL, "igb.memcpy_start", self.device.bdf,
                              "driver not initialized")
        if self._pending is not None:
            raise DriverError(errno.EBUSY, "igb.memcpy_start", self.device.bdf,
                              "previous memcpy not waited for")
        mem, iova = self.dma.mem, self.dma.iova
        first_rx = self.rx_tail
        for _ in range(count):
            RX_READ.pack_into(mem, RX_RING + self.rx_tail * DESC_SIZE, dst, iova + RX_HEADER)
            self.rx_tail = (self.rx_tail + 1) % RX_ENTRIES
        command = ADVTXD_DTYP_DATA | ADVTXD_DCMD_DEXT | ADVTXD_DCMD_IFCS
        last_tx = self.tx_tail
        for n in range(count):
            TX_DESC.pack_into(mem, TX_RING + self.tx_tail * DESC_SIZE, iova + TX_HEADER,
                              command | HEADER, (HEADER + size) << ADVTXD_PAYLEN_SHIFT)
            self.tx_tail = (self.tx_tail + 1) % TX_ENTRIES
            last_tx = self.tx_tail
            # differs from C (docs/drivers.md): a header frames the data (C: size >= 60),
            # and the last descriptor asks for its write-back (RS) to tell a lost frame
            eop = command | ADVTXD_DCMD_EOP | (ADVTXD_DCMD_RS if n == count - 1 else 0)
            TX_DESC.pack_into(mem, TX_RING + self.tx_tail * DESC_SIZE, src, eop | size, 0)
            self.tx_tail = (self.tx_tail + 1) % TX_ENTRIES
        self._pending = (first_rx, count, size, last_tx)
        self.write(RDT, self.rx_tail)
        self.write(TDT, self.tx_tail)

    def _rx_status(self, index: int) -> tuple[int, int]:
        """(status_error, length) of receive descriptor `index` as written back; the
        status word is read first, the length only once DD says the entry is done."""
        offset = RX_RING + index * DESC_SIZE
        status = int.from_bytes(self.dma.mem[offset + 8:offset + 12], "little")
        if not status & STAT_DD:
            return status, 0
        length: int = RX_WB.unpack_from(self.dma.mem, offset)[4]
        return status, length

    def _tx_done(self, index: int) -> bool:
        offset = TX_RING + index * DESC_SIZE + 12
        return bool(int.from_bytes(self.dma.mem[offset:offset + 4], "little") & STAT_DD)

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Until the last receive descriptor is done; then every one of the copy's
        descriptors must hold one whole frame whose data part is `size` bytes."""
        if self._pending is None:
            raise DriverError(errno.EINVAL, "igb.memcpy_wait", self.device.bdf,
                              "no memcpy started")
        first, count, size, last_tx = self._pending
        self._pending = None
        last = (first + count - 1) % RX_ENTRIES
        deadline = time.monotonic() + timeout
        sent_at: float | None = None
        while not self._rx_status(last)[0] & STAT_DD:
            now = time.monotonic()
            if sent_at is None and self._tx_done(last_tx):
                sent_at = now
            if sent_at is not None and now - sent_at > LOSS_GRACE:
                self._rx_ring()
                raise DriverError(errno.EIO, "igb.memcpy_wait", self.device.bdf,
                                  "the frame was transmitted but never received (its data "
                                  "could not be read?); receive ring re-initialised")
            if now > deadline:
                self._recover()
                raise DriverError(errno.ETIMEDOUT, "igb.memcpy_wait", self.device.bdf,
                                  "no receive descriptor write-back; device reset and "
                                  "re-initialised")
            time.sleep(0.0002)
        for n in range(count):
            index = (first + n) % RX_ENTRIES
            status, length = self._rx_status(index)
            if status & (STAT_DD | STAT_EOP) != STAT_DD | STAT_EOP or length != size:
                self._rx_ring()
                raise DriverError(errno.EIO, "igb.memcpy_wait", self.device.bdf,
                                  f"copy {n + 1} of {count}: receive descriptor {index} "
                                  f"status {status:#x}, {length} data bytes (expected one "
                                  f"frame of {size}); receive ring re-initialised")

    def _recover(self) -> None:
        """After a copy that never completed: reset and re-initialise (C resets the
        function with FLR; the device access has no FLR, so CTRL.RST)."""
        self.write(RCTL, 0)
        self.write(TCTL, 0)
        self.reset("igb.memcpy_wait")
        self._hw_init()
