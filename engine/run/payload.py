"""What the host hands to the engine in the testbed: the selected cases, compiled.

The host compiles (YAML, templates, validation) against the guest's own device list
and writes one file; the guest only loads it. Its Python, which TCG makes some 20×
slower than the host's, thus never imports the YAML loader or the template engine,
never builds a model's validator, and never re-reads the scenario files over 9p.

Both sides run the same checkout (the guest sees the host's root), so the file is a
pickle: a small header of plain values, read first so the guest can start probing
devices, then the cases. In the cases every pydantic model (a step's arguments, its
common keys, a scenario's `requires`) is written as a `Record`: the same values
under the same attribute names, plus the model class's own constants (`op`,
`produces`, `area`), without the validator. The operations only read attributes, so
they run unchanged on either; validation happened on the host.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from vfio_scenario import __version__
from vfio_scenario.errors import EnvironmentProblem

if TYPE_CHECKING:  # the guest reads the header before the models import
    from vfio_scenario.language.cases import Case

MAGIC = "vfio-scenario payload 1"


@dataclass
class Header:
    """Everything but the cases, in plain values (readable without the models)."""

    devices: list[str]  # the BDFs the cases were compiled against; the guest probes these
    drivers: dict[str, str]  # scenario driver name → "module:attribute", from the host
    iommu_modes: list[str] = field(default_factory=list)
    timeout_multiplier: float = 1.0
    fail_fast: bool = False
    kernel_watch: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"magic": MAGIC, "version": __version__, "devices": self.devices,
                "drivers": self.drivers, "iommu_modes": self.iommu_modes,
                "timeout_multiplier": self.timeout_multiplier, "fail_fast": self.fail_fast,
                "kernel_watch": self.kernel_watch}


class Record:
    """A validated model's values as read-only attributes, without pydantic."""

    __slots__ = ("_kind", "_values")
    _kind: str
    _values: dict[str, Any]

    def __init__(self, kind: str, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._kind} has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._kind} is read-only")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Record) and self._kind == other._kind
                and self._values == other._values)

    __hash__ = None  # type: ignore[assignment]  # like a dict of values

    def __repr__(self) -> str:
        return f"{self._kind}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Record, (self._kind, self._values))


class _Pickler(pickle.Pickler):
    """Writes every pydantic model as a Record."""

    def reducer_override(self, obj: Any) -> Any:
        from pydantic import BaseModel

        if not isinstance(obj, BaseModel):
            return NotImplemented
        cls = type(obj)
        values = {name: getattr(obj, name) for name in cls.model_fields}
        values.update({name: getattr(cls, name) for name in sorted(cls.__class_vars__)})
        return (Record, (cls.__name__, values))


def write(directory: str, header: Header, cases: list[Case]) -> str:
    """Write a payload file in `directory`; returns its path."""
    import tempfile  # here: the guest, which only reads, is spared its import

    fd, path = tempfile.mkstemp(dir=directory, prefix=".payload-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(header.to_dict(), f, protocol=pickle.HIGHEST_PROTOCOL)
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(cases)
    return path


def read_header(f: IO[bytes]) -> Header:
    """The header at the start of an open payload file; raises EnvironmentProblem
    when the file is not one or was written by another engine version."""
    try:
        raw = pickle.load(f)
    except Exception as exc:  # noqa: BLE001 - whatever a stray file makes pickle raise
        raise EnvironmentProblem(f"{f.name} is not a vfio-scenario payload: {exc}") from None
    if not isinstance(raw, dict) or raw.get("magic") != MAGIC:
        raise EnvironmentProblem(f"{f.name} is not a vfio-scenario payload")
    if raw["version"] != __version__:
        raise EnvironmentProblem(f"payload of engine {raw['version']}, this engine is "
                                 f"{__version__}: the host and the guest must run one checkout")
    return Header(devices=list(raw["devices"]), drivers=dict(raw["drivers"]),
                  iommu_modes=list(raw["iommu_modes"]),
                  timeout_multiplier=float(raw["timeout_multiplier"]),
                  fail_fast=bool(raw["fail_fast"]),
                  kernel_watch=bool(raw.get("kernel_watch", True)))


def read_cases(f: IO[bytes]) -> list[Case]:
    """The cases after the header, their models as Records."""
    from vfio_scenario.language.cases import Case

    cases = pickle.load(f)
    if not isinstance(cases, list) or not all(isinstance(c, Case) for c in cases):
        raise EnvironmentProblem(f"{f.name}: the payload holds no list of cases")
    return cases
