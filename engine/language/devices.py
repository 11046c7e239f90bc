"""What templates know of the run's devices and their scenario drivers.

`devices`/`device` render as BDF strings; each also has `.driver`, the facts of the
scenario driver serving it (None when no driver matches).  `driver` is the case's own
driver: the `driver` axis value of a `requires: {driver: any}` scenario, or the driver
`requires: {driver: NAME}` names.  Facts are plain data, so the compiler needs no
driver code: the run fills them from the drivers serving the real devices (their
limits as `init` set them), `validate`/`list` from the registered driver classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self


@dataclass(frozen=True)
class DriverFacts:
    """A scenario driver as templates read it: `{{ driver.max_memcpy_size }}`."""

    name: str
    max_memcpy_size: int
    max_memcpy_count: int
    features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.name  # `{{ driver }}` in a string reads as the driver's name

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "max_memcpy_size": self.max_memcpy_size,
                "max_memcpy_count": self.max_memcpy_count, "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DriverFacts:
        size, count, features = data["max_memcpy_size"], data["max_memcpy_count"], \
            data.get("features", [])
        assert isinstance(size, int) and isinstance(count, int)
        assert isinstance(features, (list, tuple))
        return cls(str(data["name"]), size, count, tuple(str(f) for f in features))


# The attributes a template may read of a driver (docs/language.md lists them).
DRIVER_ATTRIBUTES = ("name", "max_memcpy_size", "max_memcpy_count", "features")


class DeviceName(str):
    """A device's BDF as templates see it: a string with a `.driver` attribute."""

    driver: DriverFacts | None

    def __new__(cls, bdf: str, driver: DriverFacts | None = None) -> Self:
        self = super().__new__(cls, bdf)
        self.driver = driver
        return self

    def __reduce__(self) -> tuple[object, ...]:
        return (DeviceName, (str(self), self.driver))


def device_names(devices: Sequence[str]) -> list[DeviceName]:
    """`devices` as DeviceNames (plain strings get no driver)."""
    return [d if isinstance(d, DeviceName) else DeviceName(d) for d in devices]


def driver_axis(devices: Iterable[DeviceName]) -> list[str]:
    """The names of the scenario drivers the devices have, in device order, once each."""
    seen: list[str] = []
    for dev in devices:
        if dev.driver is not None and dev.driver.name not in seen:
            seen.append(dev.driver.name)
    return seen
