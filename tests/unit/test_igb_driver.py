"""The igb driver's logic: matching, limits, the frames and descriptors it builds, and
what it does when a frame is lost.  The device itself is proven in the testbed
(tests/guest/test_igb_driver.py); here a recording register file stands in for it.
"""

from __future__ import annotations

import errno

import pytest
from vfio_scenario.drivers import igb as hw
from vfio_scenario.drivers.base import DmaRegion, registered_drivers
from vfio_scenario.drivers.igb import IgbDriver
from vfio_scenario.errors import VfioError

IOVA = 0x40000000


class Registers:
    """BAR 0 as a dict; reads of the bits init polls for answer "done"."""

    bdf = "0000:01:00.0"

    def __init__(self, device_id: int = hw.DEVICE_82576) -> None:
        self.vendor_id = hw.INTEL
        self.device_id = device_id
        self.regs: dict[int, int] = {hw.STATUS: hw.STATUS_LU, hw.EECD: hw.EECD_AUTO_RD}
        self.writes: list[tuple[int, int]] = []
        self.command = 0x0002

    def config_read(self, offset: int, width: int) -> int:
        return self.command

    def config_write(self, offset: int, width: int, value: int) -> None:
        self.command = value

    def bar_read(self, bar: int, offset: int, width: int) -> int:
        assert (bar, width) == (0, 4)
        value = self.regs.get(offset, 0)
        return value | hw.MDIC_READY if offset == hw.MDIC else value

    def bar_write(self, bar: int, offset: int, width: int, value: int) -> None:
        assert (bar, width) == (0, 4)
        self.writes.append((offset, value))
        self.regs[offset] = value & ~hw.CTRL_RST if offset == hw.CTRL else value

    def wait_irq(self, vector: int, timeout: float) -> int:
        return 0


@pytest.fixture
def regs() -> Registers:
    return Registers()


@pytest.fixture
def driver(regs: Registers) -> IgbDriver:
    mem = memoryview(bytearray(hw.REGION_SIZE))
    drv = IgbDriver(regs, DmaRegion(mem, IOVA, hw.REGION_SIZE))
    drv.init(msi_vector=None)
    regs.writes.clear()
    return drv


def test_matches_the_82576_pf_and_not_its_vf() -> None:
    assert registered_drivers()["igb"] is IgbDriver
    assert IgbDriver.probe(Registers())
    assert not IgbDriver.probe(Registers(device_id=0x10CA))


def test_limits_fit_one_standard_frame_and_the_rings() -> None:
    assert IgbDriver.max_memcpy_size + hw.HEADER == 1514
    assert 2 * IgbDriver.max_memcpy_count < hw.TX_ENTRIES
    assert IgbDriver.max_memcpy_count < hw.RX_ENTRIES


def test_a_copy_is_a_header_frame_plus_src_into_a_split_receive_buffer(
        driver: IgbDriver, regs: Registers) -> None:
    mem = driver.dma.mem
    driver.memcpy_start(0x1000, 0x2000, 5, count=2)
    header = bytes(mem[hw.TX_HEADER:hw.TX_HEADER + hw.HEADER])
    assert header[:6] == b"\xff" * 6 and header[12:14] == b"\x88\xb5"
    assert header[14:] == bytes(hw.HEADER - 14)
    for n in range(2):
        assert hw.RX_READ.unpack_from(mem, hw.RX_RING + n * 16) == (0x2000, IOVA + hw.RX_HEADER)
    base = hw.ADVTXD_DTYP_DATA | hw.ADVTXD_DCMD_DEXT | hw.ADVTXD_DCMD_IFCS
    descs = [hw.TX_DESC.unpack_from(mem, hw.TX_RING + n * 16) for n in range(4)]
    eop = base | hw.ADVTXD_DCMD_EOP
    assert descs == [
        (IOVA + hw.TX_HEADER, base | 64, 69 << hw.ADVTXD_PAYLEN_SHIFT), (0x1000, eop | 5, 0),
        (IOVA + hw.TX_HEADER, base | 64, 69 << hw.ADVTXD_PAYLEN_SHIFT),
        (0x1000, eop | hw.ADVTXD_DCMD_RS | 5, 0)]
    assert regs.writes == [(hw.RDT, 2), (hw.TDT, 4)]  # buffers posted before the frames


def test_receive_queue_splits_a_64_byte_header_into_the_region(driver: IgbDriver,
                                                               regs: Registers) -> None:
    srrctl = regs.regs[hw.SRRCTL]
    assert srrctl & 0x0E000000 == hw.SRRCTL_DESCTYPE_HDR_SPLIT_ALWAYS
    assert (srrctl >> 8 & 0xF) * 64 == hw.HEADER and srrctl & 0x7F == 2
    assert regs.regs[hw.RCTL] & hw.RCTL_SECRC


def _write_back(mem: memoryview, index: int, status: int, length: int) -> None:
    hw.RX_WB.pack_into(mem, hw.RX_RING + index * 16, 0, hw.HEADER << 5, 0, status, length, 0)


def test_wait_checks_every_descriptor_of_the_copy(driver: IgbDriver) -> None:
    mem = driver.dma.mem
    driver.memcpy_start(0x1000, 0x2000, 100, count=2)
    _write_back(mem, 0, hw.STAT_DD | hw.STAT_EOP, 99)  # a short frame
    _write_back(mem, 1, hw.STAT_DD | hw.STAT_EOP, 100)
    with pytest.raises(VfioError) as info:
        driver.memcpy_wait(timeout=0.1)
    assert info.value.errno == errno.EIO and "99 data bytes" in str(info.value)
    assert driver.rx_tail == 0  # the receive ring was re-initialised


def test_a_frame_sent_but_never_received_is_eio_and_resets_the_receive_ring(
        driver: IgbDriver, regs: Registers) -> None:
    mem = driver.dma.mem
    driver.memcpy_start(0x7000000, 0x2000, 100)
    mem[hw.TX_RING + 16 + 12] = hw.STAT_DD  # the payload descriptor's write-back
    with pytest.raises(VfioError) as info:
        driver.memcpy_wait(timeout=1.0)
    assert info.value.errno == errno.EIO
    assert (hw.RXDCTL, 0) in regs.writes and (hw.RDH, 0) in regs.writes
    assert regs.regs[hw.RXDCTL] == hw.QUEUE_ENABLE and driver.rx_tail == 0


def test_refusals(driver: IgbDriver) -> None:
    for dst, size, count in ((0, 8, 1), (0x2000, 1451, 1), (0x2000, 8, 512), (0x2000, 0, 1)):
        with pytest.raises(VfioError) as info:
            driver.memcpy_start(0x1000, dst, size, count)
        assert info.value.errno == errno.EINVAL
    driver.memcpy_start(0x1000, 0x2000, 8)
    with pytest.raises(VfioError) as busy:
        driver.memcpy_start(0x1000, 0x2000, 8)
    assert busy.value.errno == errno.EBUSY
    with pytest.raises(VfioError) as no_irq:
        driver.send_msi()
    assert no_irq.value.errno == errno.EINVAL


def test_a_copy_without_any_write_back_is_etimedout_and_reinitialises(
        driver: IgbDriver, regs: Registers) -> None:
    driver.memcpy_start(0x1000, 0x2000, 100)
    with pytest.raises(VfioError) as info:
        driver.memcpy_wait(timeout=0.05)
    assert info.value.errno == errno.ETIMEDOUT
    ctrl_writes = [value for offset, value in regs.writes if offset == hw.CTRL]
    assert ctrl_writes[0] & hw.CTRL_RST
    assert regs.regs[hw.RCTL] & hw.RCTL_EN and regs.regs[hw.TXDCTL] == hw.QUEUE_ENABLE


def test_init_fails_when_the_link_never_comes_up(regs: Registers,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hw, "LINK_TIMEOUT", 0.05)
    regs.regs[hw.STATUS] = 0
    drv = IgbDriver(regs, DmaRegion(memoryview(bytearray(hw.REGION_SIZE)), IOVA,
                                    hw.REGION_SIZE))
    with pytest.raises(VfioError) as info:
        drv.init(msi_vector=None)
    assert info.value.errno == errno.ETIMEDOUT and "STATUS.LU" in str(info.value)
    assert regs.command == 0x0002  # remove ran: the command register is as found
