"""What the host hands to the engine in the testbed: the selected cases, compiled.

The host compiles (YAML, templates, validation) against the guest's own device list
and writes one file; the guest only loads it. Its Python, which TCG makes some 20×
slower than the host's, thus never imports the YAML loader, the template engine or
pydantic, and never re-reads the scenario files over 9p.

Both sides run the same checkout (the guest sees the host's root), so the file is a
pickle: a small header of plain values, read first so the guest can start probing
devices, then the cases. The header describes every model of the checkout (and every
other the cases hold) in plain values, with the module of slotted frozen classes made
from that description compiled on the host; the guest executes it and installs it as
the models module before anything imports it (run/guest_models.py),
so it never imports pydantic, and the cases' models are restored as their instances:
the same names, fields, class constants, methods and properties as the host's.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from dataclasses import dataclass, field
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

from vfio_scenario import __version__
from vfio_scenario.errors import EnvironmentProblem

if TYPE_CHECKING:  # the guest reads the header before the models import
    from vfio_scenario.language.cases import Case

MAGIC = "vfio-scenario payload 3"  # 2: the header describes the models; 3: and their code


@dataclass
class Header:
    """Everything but the cases, in plain values (readable without the models)."""

    devices: list[str]  # the BDFs the cases were compiled against; the guest probes these
    drivers: dict[str, str]  # scenario driver name → "module:attribute", from the host
    iommu_modes: list[str] = field(default_factory=list)
    timeout_multiplier: float = 1.0
    fail_fast: bool = False
    kernel_watch: bool = True
    coverage_per_case: bool = False  # --coverage-per-case: gcov counters sent after each case
    # the models the cases hold, described (run/guest_models.py); write() fills it
    models: list[dict[str, Any]] = field(default_factory=list)
    # their module compiled on the host, with its content key (guest_models.compiled)
    models_code: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"magic": MAGIC, "version": __version__, "devices": self.devices,
                "drivers": self.drivers, "iommu_modes": self.iommu_modes,
                "timeout_multiplier": self.timeout_multiplier, "fail_fast": self.fail_fast,
                "kernel_watch": self.kernel_watch, "coverage_per_case": self.coverage_per_case,
                "models": self.models, "models_code": self.models_code}


class _Pickler(pickle.Pickler):
    """Writes every model as its class and its field values in order (the guest's
    dataclass of the same name takes them positionally); notes the classes met."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.classes: dict[type[Any], None] = {}

    def reducer_override(self, obj: Any) -> Any:
        from pydantic import BaseModel

        if not isinstance(obj, BaseModel):
            return NotImplemented
        cls = type(obj)
        self.classes[cls] = None
        return cls, tuple(getattr(obj, name) for name in cls.model_fields)


class _Unpickler(pickle.Unpickler):
    """Reads the models as the guest's dataclasses of the same names."""

    def __init__(self, file: IO[bytes], models: ModuleType) -> None:
        super().__init__(file)
        self.models = models

    def find_class(self, module: str, name: str) -> Any:
        if module == self.models.__name__:
            return getattr(self.models, name)
        return super().find_class(module, name)


def write(directory: str, header: Header, cases: list[Case]) -> str:
    """Write a payload file in `directory`; returns its path."""
    import tempfile  # here: the guest, which only reads, is spared its import

    from vfio_scenario.run.guest_models import compiled, describe
    from vfio_scenario.run.plan import find_step_facts

    body = io.BytesIO()
    pickler = _Pickler(body)
    pickler.dump(cases)
    # what the planner and the case processes ask of each case's steps, found here
    # (run/plan.py StepFacts): the guest walks no case's steps for it
    pickle.dump([find_step_facts(c).to_plain() for c in cases], body,
                protocol=pickle.HIGHEST_PROTOCOL)
    specs = describe(pickler.classes)
    header = dataclasses.replace(header, models=specs, models_code=compiled(specs))
    fd, path = tempfile.mkstemp(dir=directory, prefix=".payload-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(header.to_dict(), f, protocol=pickle.HIGHEST_PROTOCOL)
        f.write(body.getvalue())
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
                  kernel_watch=bool(raw.get("kernel_watch", True)),
                  coverage_per_case=bool(raw.get("coverage_per_case", False)),
                  models=list(raw["models"]), models_code=raw.get("models_code"))


def read_cases(f: IO[bytes], models: ModuleType) -> list[Case]:
    """The cases after the header, their models as instances of `models`' classes (the
    guest's models, made from the header's description: guest_models.install/build)."""
    from vfio_scenario.language.cases import Case
    from vfio_scenario.run.plan import StepFacts, keep_step_facts

    cases = _Unpickler(f, models).load()
    if not isinstance(cases, list) or not all(isinstance(c, Case) for c in cases):
        raise EnvironmentProblem(f"{f.name}: the payload holds no list of cases")
    try:
        facts = pickle.load(f)
    except EOFError:
        return cases  # (none: the planner finds them)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes pickle raise
        raise EnvironmentProblem(f"{f.name}: the payload's step facts are unreadable: "
                                 f"{exc}") from None
    if not isinstance(facts, list) or len(facts) != len(cases):
        raise EnvironmentProblem(f"{f.name}: the payload's step facts are not one per case")
    for case, plain in zip(cases, facts, strict=True):
        keep_step_facts(case, StepFacts.from_plain(plain))
    return cases
