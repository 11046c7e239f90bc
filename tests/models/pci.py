"""The PCI side shared by the device models: config space, BAR registers, MSI-X.

`ModelDevice` implements the drivers' DeviceAccess (plus IrqControl), so the real driver
code runs against it unchanged.  BAR accesses dispatch to registers declared with their
exact width; an access the model does not know, or of the wrong width, raises
`UnmodelledAccess` — a driver touching a register it should not is a test failure.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from vfio_scenario.errors import VfioError

from tests.models.iommu import IovaSpace

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_CLASS_REVISION = 0x08
PCI_COMMAND_MEMORY = 1 << 1
PCI_COMMAND_MASTER = 1 << 2
PCI_COMMAND_INTX_DISABLE = 1 << 10
CONFIG_SIZE = 4096  # PCIe: extended config space (ioat keeps error registers at 0x148/0x180)


class UnmodelledAccess(AssertionError):
    """The driver touched something the model does not have (or with the wrong width)."""


class UndefinedCommand(UnmodelledAccess):
    """The driver sent a command, subcommand or register value that the hardware
    description the model is written from does not define.  The model refuses it rather
    than guess what the hardware would do; a driver that sends one is a test failure."""


Reader = Callable[[], int]
Writer = Callable[[int], None]


@dataclass
class Register:
    """One BAR register: its width, its value, and optional side effects."""

    width: int
    value: int = 0
    on_read: Reader | None = None
    on_write: Writer | None = None

    def read(self) -> int:
        return self.on_read() if self.on_read is not None else self.value

    def write(self, value: int) -> None:
        if self.on_write is not None:
            self.on_write(value)
        else:
            self.value = value


@dataclass
class Window:
    """A range of a BAR handled as a whole (a table, a portal)."""

    start: int
    size: int
    read: Callable[[int, int], int]
    write: Callable[[int, int, int], None]


@dataclass
class Bar:
    """One BAR: registers by offset plus windows."""

    size: int
    regs: dict[int, Register] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)

    def reg(self, offset: int, width: int, value: int = 0, on_read: Reader | None = None,
            on_write: Writer | None = None) -> Register:
        reg = Register(width, value, on_read, on_write)
        self.regs[offset] = reg
        return reg

    def _lookup(self, offset: int, width: int) -> Register | Window:
        reg = self.regs.get(offset)
        if reg is not None:
            if reg.width != width:
                raise UnmodelledAccess(f"register 0x{offset:x} is {reg.width} bytes wide, "
                                       f"accessed with {width}")
            return reg
        for window in self.windows:
            if window.start <= offset and offset + width <= window.start + window.size:
                return window
        raise UnmodelledAccess(f"no register at 0x{offset:x} (width {width})")

    def read(self, offset: int, width: int) -> int:
        target = self._lookup(offset, width)
        if isinstance(target, Register):
            return target.read() & ((1 << (8 * width)) - 1)
        return target.read(offset - target.start, width)

    def write(self, offset: int, width: int, value: int) -> None:
        target = self._lookup(offset, width)
        value &= (1 << (8 * width)) - 1
        if isinstance(target, Register):
            target.write(value)
        else:
            target.write(offset - target.start, width, value)


@dataclass(frozen=True)
class IrqInfo:
    count: int


class MsixVectors:
    """The vectors a driver enabled through `ModelDevice.enable_irq`."""

    def __init__(self, device: ModelDevice, count: int) -> None:
        self.device = device
        self.count = count

    def disable(self) -> None:
        if self.device.irqs is self:
            self.device.irqs = None


class ModelDevice:
    """A PCI function as DeviceAccess sees it; subclasses add BARs and behaviour."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, msix_count: int,
                 bdf: str = "0000:00:04.0") -> None:
        self.bdf = bdf
        self.vendor_id = vendor_id
        self.device_id = device_id
        self.config = bytearray(CONFIG_SIZE)
        self.config[PCI_VENDOR_ID:PCI_VENDOR_ID + 2] = vendor_id.to_bytes(2, "little")
        self.config[PCI_DEVICE_ID:PCI_DEVICE_ID + 2] = device_id.to_bytes(2, "little")
        self.config[PCI_CLASS_REVISION + 1:PCI_CLASS_REVISION + 4] = class_code.to_bytes(
            3, "little")
        # dword offsets whose bits are write-one-to-clear (error status registers)
        self.config_rw1c: set[int] = set()
        self.bars: dict[int, Bar] = {}
        self.iommu = IovaSpace()
        self.msix_count = msix_count
        self.irqs: MsixVectors | None = None
        self.pending: dict[int, int] = {}
        # MSI-X messages the device sent while no vector was enabled or bus mastering was off
        self.lost_msis: list[int] = []

    # ---- config space ----
    def _check_config(self, offset: int, width: int) -> None:
        if width not in (1, 2, 4) or offset < 0 or offset + width > CONFIG_SIZE:
            raise VfioError(errno.EINVAL, "config access", self.bdf,
                            f"offset 0x{offset:x} width {width}")

    def config_read(self, offset: int, width: int) -> int:
        self._check_config(offset, width)
        return int.from_bytes(self.config[offset:offset + width], "little")

    def config_write(self, offset: int, width: int, value: int) -> None:
        self._check_config(offset, width)
        if (offset & ~3) in self.config_rw1c:
            value = self.config_read(offset, width) & ~value
        # ids, status and class are not the driver's to write
        if offset < PCI_COMMAND or (offset < PCI_CLASS_REVISION + 4
                                    and offset + width > PCI_COMMAND + 2):
            raise UnmodelledAccess(f"write to read-only config offset 0x{offset:x}")
        self.config[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(
            width, "little")

    def set_config(self, offset: int, width: int, value: int) -> None:
        """The device itself updates a config register (an error status bit)."""
        self.config[offset:offset + width] = value.to_bytes(width, "little")

    @property
    def command(self) -> int:
        return self.config_read(PCI_COMMAND, 2)

    # ---- BARs ----
    def _bar(self, bar: int) -> Bar:
        if bar not in self.bars:
            raise VfioError(errno.EINVAL, "bar access", self.bdf, f"no BAR {bar}")
        return self.bars[bar]

    def bar_read(self, bar: int, offset: int, width: int) -> int:
        return self._bar(bar).read(offset, width)

    def bar_write(self, bar: int, offset: int, width: int, value: int) -> None:
        self._bar(bar).write(offset, width, value)

    # ---- interrupts (IrqControl) ----
    def irq_info(self, irq: str) -> IrqInfo:
        if irq != "msix":
            raise VfioError(errno.EINVAL, "irq_info", self.bdf, f"model has no {irq} vectors")
        return IrqInfo(self.msix_count)

    def enable_irq(self, irq: str, count: int = 1, start: int = 0) -> MsixVectors:
        if irq != "msix" or start != 0 or not 0 < count <= self.msix_count:
            raise VfioError(errno.EINVAL, "enable_irq", self.bdf,
                            f"{irq} start {start} count {count} of {self.msix_count}")
        self.irqs = MsixVectors(self, count)
        self.pending = {}
        return self.irqs

    def signal_msix(self, vector: int) -> None:
        """The device sends MSI-X `vector` (a DMA write: needs bus mastering)."""
        master = self.command & PCI_COMMAND_MASTER
        if self.irqs is None or vector >= self.irqs.count or not master:
            self.lost_msis.append(vector)
            return
        self.pending[vector] = self.pending.get(vector, 0) + 1

    def wait_irq(self, vector: int, timeout: float) -> int:
        """Like the eventfd read: the count since the last read, 0 when none (no waiting:
        the models raise their interrupts synchronously)."""
        if self.irqs is None:
            raise VfioError(errno.EINVAL, "wait_irq", self.bdf, "no interrupt enabled")
        if not 0 <= vector < self.irqs.count:
            raise VfioError(errno.EINVAL, "wait_irq", self.bdf, f"vector {vector}")
        return self.pending.pop(vector, 0)
