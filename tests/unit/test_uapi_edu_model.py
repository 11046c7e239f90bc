"""The edu driver against a register-level model of QEMU's edu (hw/misc/edu.c semantics).

The guest tests run the same driver against the real device; this model pins the
register sequence: two DMA transfers through the 4 KiB buffer at 0x40000, completion
polled on the command register's start bit or taken from the MSI, status acked.
"""

from __future__ import annotations

import pytest
from vfio_scenario.drivers.base import Feature
from vfio_scenario.drivers.edu import EduDriver
from vfio_scenario.errors import VfioError

BUFFER = 0x40000


class EduModel:
    """DeviceAccess of an edu whose DMA completes after `busy_polls` reads of the cmd."""

    bdf = "0000:00:03.0"
    vendor_id = 0x1234
    device_id = 0x11E8

    def __init__(self, busy_polls: int = 2) -> None:
        self.command = 0x0002  # memory enabled, bus master off
        self.ram: dict[int, int] = {}  # IOVA -> byte
        self.buf = bytearray(4096)
        self.regs = {0x80: 0, 0x88: 0, 0x90: 0, 0x98: 0}
        self.irq_status = 0
        self.msi_enabled = False
        self.msi_count = 0
        self.busy_polls = busy_polls
        self._polls = 0
        self.log: list[tuple[str, int, int]] = []

    def config_read(self, offset: int, width: int) -> int:
        assert (offset, width) == (0x04, 2)
        return self.command

    def config_write(self, offset: int, width: int, value: int) -> None:
        assert (offset, width) == (0x04, 2)
        self.command = value

    def bar_read(self, bar: int, offset: int, width: int) -> int:
        assert bar == 0 and (width == 4 if offset < 0x80 else width in (4, 8))
        if offset == 0x98:
            self._polls += 1
            if self._polls >= self.busy_polls:
                self._complete()
        return self.regs.get(offset, self.irq_status if offset == 0x24 else 0)

    def bar_write(self, bar: int, offset: int, width: int, value: int) -> None:
        assert bar == 0 and (width == 4 if offset < 0x80 else width in (4, 8))
        self.log.append(("w", offset, value))
        if offset == 0x60:
            self._raise(value)
        elif offset == 0x64:
            self.irq_status &= ~value
        elif offset in self.regs:
            self.regs[offset] = value
            self._polls = 0

    def _raise(self, value: int) -> None:
        self.irq_status |= value
        if self.msi_enabled and self.command & 0x4:
            self.msi_count += 1

    def _complete(self) -> None:
        cmd = self.regs[0x98]
        if not cmd & 1:
            return
        src, dst, cnt = self.regs[0x80], self.regs[0x88], self.regs[0x90]
        if cmd & 2:
            for i in range(cnt):
                self.ram[dst + i] = self.buf[src - BUFFER + i]
        else:
            for i in range(cnt):
                self.buf[dst - BUFFER + i] = self.ram.get(src + i, 0xFF)
        self.regs[0x98] = cmd & ~1
        if cmd & 4:
            self._raise(0x100)

    def enable_irq(self, irq: str, count: int = 1, start: int = 0) -> object:
        assert (irq, count, start) == ("msi", 1, 0)
        self.msi_enabled = True
        model = self

        class _Irq:
            def disable(self) -> None:
                model.msi_enabled = False

        return _Irq()

    def wait_irq(self, vector: int, timeout: float) -> int:
        # The model completes a started DMA when asked, as time passing would.
        if self.regs[0x98] & 1:
            self._complete()
        count, self.msi_count = self.msi_count, 0
        return count


def _load(model: EduModel, iova: int, data: bytes) -> None:
    for i, b in enumerate(data):
        model.ram[iova + i] = b


@pytest.mark.parametrize("msi_vector", [0, None])
@pytest.mark.parametrize("size", [8, 4096])
def test_memcpy_goes_through_the_device_buffer(msi_vector: int | None, size: int) -> None:
    model = EduModel()
    data = bytes((i * 7) & 0xFF for i in range(size))
    _load(model, 0x1000, data)
    driver = EduDriver(model)
    driver.init(msi_vector)
    driver.memcpy_start(0x1000, 0x20000, size)
    driver.memcpy_wait(timeout=1.0)
    assert bytes(model.ram[0x20000 + i] for i in range(size)) == data
    writes = [(off, val) for _w, off, val in model.log if off >= 0x80]
    irq_bit = 4 if msi_vector is not None else 0
    assert writes == [(0x80, 0x1000), (0x88, BUFFER), (0x90, size), (0x98, 1 | irq_bit),
                      (0x80, BUFFER), (0x88, 0x20000), (0x90, size), (0x98, 3 | irq_bit)]
    assert model.irq_status == 0
    driver.remove()


def test_init_enables_bus_master_and_msi_and_remove_restores() -> None:
    model = EduModel()
    driver = EduDriver(model)
    driver.init()
    assert model.command == 0x0006 and model.msi_enabled
    driver.remove()
    assert model.command == 0x0002 and not model.msi_enabled


def test_send_msi_raises_and_acks() -> None:
    model = EduModel()
    driver = EduDriver(model)
    driver.init()
    driver.send_msi()
    assert model.msi_count == 1 and model.irq_status == 0
    assert Feature.NO_SEND_MSI not in EduDriver.features


@pytest.mark.parametrize(("src", "dst", "size", "why"), [
    (0x1000, 0x2000, 4097, "size 4097 outside 1..4096"),
    (0x1000, 0x2000, 0, "size 0 outside 1..4096"),
    (0x0FFFFFF8, 0x2000, 16, "src 0xffffff8 beyond the 28-bit DMA mask"),
    (0x1000, 0x10000000, 8, "dst 0x10000000 beyond the 28-bit DMA mask"),
])
def test_requests_beyond_the_limits_are_einval(src: int, dst: int, size: int, why: str) -> None:
    model = EduModel()
    driver = EduDriver(model)
    with pytest.raises(VfioError) as info:
        driver.memcpy_start(src, dst, size)
    assert info.value.errno_name == "EINVAL"
    assert str(info.value).endswith(why)
    assert model.log == []


def test_wait_without_start_and_double_start_are_refused() -> None:
    driver = EduDriver(EduModel())
    with pytest.raises(VfioError) as info:
        driver.memcpy_wait()
    assert info.value.errno_name == "EINVAL"
    driver.memcpy_start(0x1000, 0x2000, 8)
    with pytest.raises(VfioError) as busy:
        driver.memcpy_start(0x1000, 0x2000, 8)
    assert busy.value.errno_name == "EBUSY"


def test_a_dma_that_never_completes_times_out() -> None:
    model = EduModel(busy_polls=10**9)
    driver = EduDriver(model)
    driver.init(msi_vector=None)
    driver.memcpy_start(0x1000, 0x2000, 8)
    with pytest.raises(VfioError) as info:
        driver.memcpy_wait(timeout=0.05)
    assert info.value.errno_name == "ETIMEDOUT"
