"""Typed results of a run: what the interpreter produces and every writer consumes.

Data flows one way (run → results → writers), as in kunit_tool. Every class here
round-trips through `to_dict` / `from_dict` so results cross the guest agent's
JSON-lines channel and the journal unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _fields_of(obj: Any) -> dict[str, Any]:
    """A dataclass's fields by name, not copied: dataclasses.asdict's deep copy costs
    milliseconds per case on the testbed's TCG CPU, twice per case (child, then guest);
    the names are found once per class (dataclasses.fields per object cost as much)."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(obj))
    return {name: getattr(obj, name) for name in names}


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"  # crash, hang, timeout, unexpected signal: not the scenario's verdict

    @property
    def label(self) -> str:
        return self.name


STATUSES = ("pass", "fail", "skip", "error", "xfail", "xpass")
_OUTCOMES = {o.value: o for o in Outcome}  # (Outcome(value), an enum lookup, costs more)


def _outcome(value: str) -> Outcome:
    return _OUTCOMES.get(value) or Outcome(value)  # (the latter: ValueError for a stranger)


@dataclass
class StepResult:
    """One executed (or not executed) step of a case."""

    index: int  # 0-based position in the body, or in the teardown for teardown steps
    op: str  # operation key, e.g. "map_dma"
    name: str  # the step's `name:` or a label derived from the operation
    location: str  # "path:line" of the step in its scenario file
    outcome: Outcome
    duration: float = 0.0  # seconds, all repetitions
    repeat: int = 1
    expected: str = "ok"  # "ok", an errno name, a signal name
    actual: str = "ok"
    message: str = ""
    teardown: bool = False
    # the process that ran the step when the case hands over (`handover`):
    # "predecessor (pid N)" or "successor (pid M)"; "" otherwise
    process: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = _fields_of(self)
        d["outcome"] = self.outcome.value
        if not self.process:  # only a case that hands over says which process ran a step
            del d["process"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepResult:
        return cls(**{**d, "outcome": _outcome(d["outcome"])})


@dataclass
class CaseResult:
    """One case: a scenario with one assignment of its matrix, on one device and IOMMU mode.

    `properties` carries what the JUnit properties and report headers show: device
    (BDF), vendor_device ("1234:11e8"), vfio_driver, iommu_mode, kernel, accelerator,
    engine_version.
    """

    case_id: str  # "scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096]"
    file: str  # scenario file path as given
    scenario: str  # scenario name
    outcome: Outcome
    duration: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    message: str = ""  # failure/error message, or skip reason
    location: str = ""  # "path:line" of the failing step, when one failed
    steps: list[StepResult] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    log: str = ""  # console / dmesg tail for errors, captured output
    started: float = 0.0  # wall-clock epoch seconds
    # the kernel watch's finds (run/kernel_watch.py): {kind, title, text, allowed} each
    kernel_splats: list[dict[str, Any]] = field(default_factory=list)
    # the known-issue entry the case matched (reason, url, pattern, source), when one did
    known_issue: dict[str, str] | None = None

    @property
    def status(self) -> str:
        """The outcome as reported: `xfail` for a failed or errored case of a known issue,
        `xpass` for a passed one, else the outcome's value."""
        if self.known_issue is not None:
            if self.outcome in (Outcome.FAIL, Outcome.ERROR):
                return "xfail"
            if self.outcome is Outcome.PASS:
                return "xpass"
        return self.outcome.value

    @property
    def failed(self) -> bool:
        """A failure or error that is not a known issue: what fails a run."""
        return self.outcome in (Outcome.FAIL, Outcome.ERROR) and self.known_issue is None

    def to_dict(self) -> dict[str, Any]:
        d = _fields_of(self)
        d.update(outcome=self.outcome.value, params=dict(self.params), tags=list(self.tags),
                 steps=[s.to_dict() for s in self.steps], properties=dict(self.properties),
                 kernel_splats=[dict(s) for s in self.kernel_splats])
        if self.known_issue is None:
            del d["known_issue"]  # journals and reports of runs without a list stay as they were
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseResult:
        return cls(
            **{
                **d,
                "outcome": _outcome(d["outcome"]),
                "steps": [StepResult.from_dict(s) for s in d.get("steps", [])],
            }
        )


@dataclass
class RunResult:
    """A whole run: its cases in execution order and what describes the run."""

    cases: list[CaseResult] = field(default_factory=list)
    started: float = 0.0
    duration: float = 0.0
    properties: dict[str, str] = field(default_factory=dict)  # kernel, accelerator, version …
    # `run --coverage`: the kernel line coverage summary (report/coverage.py), else None
    coverage: dict[str, Any] | None = None

    def counts(self) -> dict[Outcome, int]:
        out = {o: 0 for o in Outcome}
        for c in self.cases:
            out[c.outcome] += 1
        return out

    def status_counts(self) -> dict[str, int]:
        """Cases per reported status, disjoint as in kselftest's totals: pass, fail, skip,
        error, xfail, xpass (a known issue's cases count as xfail/xpass only)."""
        out = {s: 0 for s in STATUSES}
        for c in self.cases:
            out[c.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "started": self.started,
            "duration": self.duration,
            "properties": dict(self.properties),
        }
        if self.coverage is not None:
            out["coverage"] = self.coverage
        out["cases"] = [c.to_dict() for c in self.cases]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(
            cases=[CaseResult.from_dict(c) for c in d.get("cases", [])],
            started=d.get("started", 0.0),
            duration=d.get("duration", 0.0),
            properties=dict(d.get("properties", {})),
            coverage=d.get("coverage"),
        )
