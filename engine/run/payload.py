"""What the host hands to the engine in the testbed: the selected cases, compiled.

The host compiles (YAML, templates, validation) against the guest's own device list
and writes one file; the guest only loads it. Its Python, which TCG makes some 20×
slower than the host's, thus never imports the YAML loader or the template engine,
never builds a model's validator, and never re-reads the scenario files over 9p.

Both sides run the same checkout (the guest sees the host's root), so the file is a
pickle: a small header of plain values, read first so the guest can start probing
devices, then the cases. The cases hold the real models (a step's arguments, its
common keys, a scenario's `requires`): pickle restores a pydantic model's values
without validating them (validation happened on the host), so the guest's operations
get the very classes their signatures name, methods and properties included. The
models build their validators only when they first validate (`defer_build`), which
the guest never does: it pays for importing them, not for their validators.
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

MAGIC = "vfio-scenario payload 2"  # 2: the cases hold the models themselves


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


def write(directory: str, header: Header, cases: list[Case]) -> str:
    """Write a payload file in `directory`; returns its path."""
    import tempfile  # here: the guest, which only reads, is spared its import

    fd, path = tempfile.mkstemp(dir=directory, prefix=".payload-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(header.to_dict(), f, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(cases, f, protocol=pickle.HIGHEST_PROTOCOL)
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
    """The cases after the header, with their models."""
    from vfio_scenario.language.cases import Case

    cases = pickle.load(f)
    if not isinstance(cases, list) or not all(isinstance(c, Case) for c in cases):
        raise EnvironmentProblem(f"{f.name}: the payload holds no list of cases")
    return cases
