"""The scenario driver framework, mirroring the kernel selftests' vfio_pci_driver ops.

A driver is a small class with the kernel's verbs: `probe` (does this device match),
`init`, `remove`, `memcpy_start`, `memcpy_wait`, `send_msi`, plus its limits
(`max_memcpy_size`, `max_memcpy_count`) and feature flags (`Feature.NO_SEND_MSI`).

How far a driver is proven is its class attribute `status` (`Status`): untested
unless it says otherwise, and real-device once a run on real hardware is recorded in
real-runs.json beside this module.

Drivers see the device only through `DeviceAccess`, a protocol the uapi layer's
device implements and that the register-level models in tests/ implement too, so the
same driver code runs against the real kernel in the testbed and against a model.

Third parties register drivers through the `vfio_scenario.drivers` entry-point group:

    [project.entry-points."vfio_scenario.drivers"]
    mydev = "mypkg.mydev:MyDriver"
"""

from __future__ import annotations

import errno
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, Flag, auto
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from vfio_scenario.errors import EnvironmentProblem, VfioError
from vfio_scenario.language.devices import DriverFacts
from vfio_scenario.uapi.pci import PCI_COMMAND

ENTRY_POINT_GROUP = "vfio_scenario.drivers"
REAL_RUNS = Path(__file__).with_name("real-runs.json")


class Feature(Flag):
    NONE = 0
    # The device cannot raise an MSI on demand (VFIO_PCI_DRIVER_F_NO_SEND_MSI):
    # send_msi reports EOPNOTSUPP and scenarios that need it are skipped.
    NO_SEND_MSI = auto()


class Status(Enum):
    """How far a driver is proven, as `vfio-scenario devices` shows it."""

    UNTESTED = "untested"  # no test here drives it (e.g. a third party's driver)
    MODEL_TESTED = "model-tested"  # unit tests drive a register model of its device (tests/models)
    TESTBED = "testbed"  # tests/guest drive it on the testbed's QEMU device, every CI run
    REAL_DEVICE = "real-device"  # a passing run on real hardware is recorded (REAL_RUNS)


@dataclass(frozen=True)
class RealRun:
    """A passing `vfio-scenario run` on a real device, as real-runs.json records it."""

    driver: str
    device: str  # vendor:device and where, e.g. "8086:2021 0000:6a:01.0"
    kernel: str  # uname -r of the host that ran it
    date: str  # ISO date


def real_runs(path: Path | None = None) -> list[RealRun]:
    """The recorded runs (default file: REAL_RUNS); ValueError naming it when malformed."""
    path = path or REAL_RUNS
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise TypeError("not a list")
        return [RealRun(**entry) for entry in entries]
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: expected a list of {{driver, device, kernel, date}}: {e}") \
            from None


class DeviceAccess(Protocol):
    """What a driver may do to its device: exact-width BAR and config accesses, IRQs."""

    bdf: str
    vendor_id: int
    device_id: int

    def config_read(self, offset: int, width: int) -> int: ...
    def config_write(self, offset: int, width: int, value: int) -> None: ...
    def bar_read(self, bar: int, offset: int, width: int) -> int: ...
    def bar_write(self, bar: int, offset: int, width: int, value: int) -> None: ...
    def wait_irq(self, vector: int, timeout: float) -> int:
        """Wait for the eventfd of an enabled vector; returns the count read, 0 on timeout."""
        ...


class IrqCount(Protocol):
    """What `IrqControl.irq_info` answers: how many vectors the device has of that type."""

    @property
    def count(self) -> int: ...


class IrqHandle(Protocol):
    """The vectors `IrqControl.enable_irq` enabled; `disable` frees them again."""

    def disable(self) -> None: ...


@runtime_checkable
class IrqControl(Protocol):
    """Optional part of DeviceAccess: the device's interrupt vectors (VFIO_DEVICE_GET_IRQ_INFO,
    SET_IRQS).  Drivers that raise MSI-X themselves (ioat, dsa) enable their vectors with it;
    vector numbers given to `wait_irq` are then counted from `start`, which these drivers keep 0.
    """

    def irq_info(self, irq: str) -> IrqCount: ...
    def enable_irq(self, irq: str, count: int = 1, start: int = 0) -> IrqHandle: ...


@runtime_checkable
class PortalWriter(Protocol):
    """Optional part of DeviceAccess: one 64-byte atomic store to a BAR (MOVDIR64B).

    Intel DSA accepts descriptors only as single 64-byte writes to a work-queue portal;
    eight 8-byte stores are not a descriptor.  A device access without it cannot drive DSA.
    """

    def bar_write64b(self, bar: int, offset: int, data: bytes) -> None: ...


@dataclass
class DmaRegion:
    """Memory the driver owns for descriptors and completion records, already mapped.

    `mem` is the CPU's view, `iova` the device's address of its first byte.
    """

    mem: memoryview
    iova: int
    size: int


class DriverError(VfioError):
    """A driver-level failure: a DMA error status, a timeout, an unsupported request."""


class Driver:
    """Base class of scenario drivers; subclasses override the verbs they support."""

    name: ClassVar[str] = ""
    # How far the driver is proven; a test checks each driver's claim (test_driver_status).
    status: ClassVar[Status] = Status.UNTESTED
    # (vendor, device) pairs, None as device matching any device of the vendor.
    ids: ClassVar[tuple[tuple[int, int | None], ...]] = ()
    features: ClassVar[Feature] = Feature.NONE
    # Limits of memcpy_start.  The class declares them (positive: registration refuses a
    # driver without); a driver whose device reports them (ioat's XFERCAP, dsa's GENCAP,
    # nvme's MDTS and scratch range) sets the device's on the instance at init, as the
    # kernel selftests' drivers do.  A run's templates read the instance's, after init
    # (`driver.max_memcpy_size`); `validate` and `list`, without a device, the class's.
    max_memcpy_size: int = 0
    max_memcpy_count: int = 0
    # Size of the DMA region the driver needs for its own structures (0: none).
    region_size: ClassVar[int] = 0
    # Address bits the device can drive (edu: 28); IOVAs above are refused.
    dma_mask_bits: ClassVar[int] = 64

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        self.device = device
        self.region = region
        self.msi_vector: int | None = None
        self._saved_command: int | None = None  # PCI_COMMAND as init found it
        self._irq: IrqHandle | None = None  # the interrupt init enabled

    @property
    def dma(self) -> DmaRegion:
        """The DMA region the driver asked for (region_size), EINVAL without one."""
        if self.region is None:
            raise DriverError(errno.EINVAL, f"{self.name}.init", self.device.bdf,
                              f"the driver needs a DMA region of {self.region_size} bytes")
        return self.region

    def enable_command(self, bits: int) -> None:
        """Set `bits` in PCI_COMMAND, keeping what was there for restore_command."""
        command = self.device.config_read(PCI_COMMAND, 2)
        self._saved_command = command
        self.device.config_write(PCI_COMMAND, 2, command | bits)

    def release_irq_and_command(self) -> None:
        """Disable the interrupt init enabled and put PCI_COMMAND back as init found it."""
        if self._irq is not None:
            self._irq.disable()
            self._irq = None
        self.msi_vector = None
        if self._saved_command is not None:
            self.device.config_write(PCI_COMMAND, 2, self._saved_command)
            self._saved_command = None

    @classmethod
    def probe(cls, device: DeviceAccess) -> bool:
        """Whether this driver can drive `device`; may read config space, never writes."""
        return any(
            device.vendor_id == vendor and (dev is None or device.device_id == dev)
            for vendor, dev in cls.ids
        )

    @classmethod
    def proven(cls, record: Path | None = None) -> Status:
        """The class's `status`, or REAL_DEVICE once real-runs.json records a run of it."""
        if any(run.driver == cls.name for run in real_runs(record)):
            return Status.REAL_DEVICE
        return cls.status

    @classmethod
    def feature_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in Feature if f in cls.features and f.name)

    @classmethod
    def facts(cls) -> DriverFacts:
        """What templates read of this driver when no device is at hand: the declared limits."""
        return DriverFacts(cls.name, cls.max_memcpy_size, cls.max_memcpy_count,
                           cls.feature_names())

    def device_facts(self) -> DriverFacts:
        """What templates read of this driver on its device: the limits init set."""
        return DriverFacts(self.name, self.max_memcpy_size, self.max_memcpy_count,
                           self.feature_names())

    def init(self, msi_vector: int | None = 0) -> None:
        """Bring the device to a state where memcpy and send_msi work."""

    def remove(self) -> None:
        """Undo init.  Our drivers leave the device as init found it, except nv_falcon,
        which leaves it as the kernel's C driver (v10) does: Falcon disabled, bus
        mastering off."""

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        raise self.unsupported("memcpy_start")

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        raise self.unsupported("memcpy_wait")

    def send_msi(self) -> None:
        if Feature.NO_SEND_MSI in self.features:
            raise self.unsupported("send_msi")
        self._send_msi()

    def _send_msi(self) -> None:
        raise self.unsupported("send_msi")

    def memcpy_refusal(self) -> str:
        """Why this device makes no copies here ("" when it does): a reason about the host
        (e.g. no scratch range named for a real NVMe), which makes a case that copies
        skipped with it; memcpy_start still answers EPERM to a step that expects it."""
        return ""

    def check_memcpy(self, src: int, dst: int, size: int, count: int) -> None:
        """Refuse a request beyond the driver's declared limits with EINVAL."""
        limit = (1 << self.dma_mask_bits) - 1
        if size <= 0 or size > self.max_memcpy_size:
            raise DriverError(errno.EINVAL, f"{self.name}.memcpy_start", self.device.bdf,
                              f"size {size} outside 1..{self.max_memcpy_size}")
        if count <= 0 or count > self.max_memcpy_count:
            raise DriverError(errno.EINVAL, f"{self.name}.memcpy_start", self.device.bdf,
                              f"count {count} outside 1..{self.max_memcpy_count}")
        for what, iova in (("src", src), ("dst", dst)):
            if iova < 0 or iova + size * count - 1 > limit:
                raise DriverError(errno.EINVAL, f"{self.name}.memcpy_start", self.device.bdf,
                                  f"{what} 0x{iova:x} beyond the {self.dma_mask_bits}-bit DMA mask")

    def unsupported(self, op: str) -> DriverError:
        return DriverError(errno.EOPNOTSUPP, f"{self.name}.{op}", self.device.bdf)

    def poll(self, op: str, what: str, done: Callable[[], bool], deadline: float,
             interval: float = 0.0005) -> None:
        """Call `done` until it is true; past `deadline` (time.monotonic) raise ETIMEDOUT
        naming `what` the device never reached.  `done` is always called at least once."""
        while not done():
            if time.monotonic() > deadline:
                raise DriverError(errno.ETIMEDOUT, f"{self.name}.{op}", self.device.bdf, what)
            time.sleep(interval)


_registry: dict[str, type[Driver]] | None = None


def driver_entry_points() -> dict[str, str]:
    """Name → "module:attribute" of every driver of the entry-point group."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def use_drivers(spec: dict[str, str]) -> None:
    """Take the registry from `spec` (as `driver_entry_points` gives it) instead of
    scanning the installed distributions: the testbed's guest gets the host's list,
    which spares it reading every package's metadata over 9p at each run."""
    global _registry
    found: dict[str, type[Driver]] = {}
    for name, value in spec.items():
        module, _, attr = value.partition(":")
        obj: object = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, Driver)):
            raise DriverRegistrationError(
                f"scenario driver {name} ({value}) is not a Driver class")
        check_declaration(name, value, obj)
        found[name] = obj
    _registry = dict(sorted(found.items()))


class DriverRegistrationError(EnvironmentProblem):
    """An installed scenario driver that cannot be registered as it declares itself."""


def check_declaration(name: str, value: str, cls: type[Driver]) -> None:
    """Refuse a driver whose name differs from its entry point's or whose declared
    limits are not positive: templates (`driver.max_memcpy_size`) and the `driver` axis
    rely on both."""
    if cls.name != name:
        raise DriverRegistrationError(
            f"scenario driver {name} ({value}) calls itself {cls.name!r}; the entry point "
            "and the class's `name` must agree")
    for limit in ("max_memcpy_size", "max_memcpy_count"):
        declared = getattr(cls, limit)
        if not isinstance(declared, int) or declared <= 0:
            raise DriverRegistrationError(
                f"scenario driver {name} ({value}) declares {limit} = {declared!r}; a "
                "driver declares positive limits (the most its devices take)")


def registered_drivers() -> dict[str, type[Driver]]:
    """Every driver of the entry-point group, by name, in name order."""
    if _registry is None:
        use_drivers(driver_entry_points())
    assert _registry is not None
    return dict(_registry)


def driver_for(device: DeviceAccess) -> type[Driver] | None:
    """The first registered driver (by name) whose probe accepts the device."""
    for cls in registered_drivers().values():
        if cls.probe(device):
            return cls
    return None
