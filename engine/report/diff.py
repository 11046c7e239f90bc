"""What changed between two runs of the same cases: a base kernel and a patched one.

`report diff BASE PATCHED` and `run --kernel PATCHED --baseline-kernel BASE` read two
runs (JSON reports or journals), match their cases by id (ids whose matrix parameters
differ only in order match: select.normalize_case_id) and give each case its classes
of change:

- regression: passed on the base, failed or errored on the patched kernel;
- fix: failed or errored on the base, passes on the patched kernel;
- new skip / no longer skipped: ran on one side, skipped on the other;
- new case / removed case: present on one side only;
- new splat: the patched run's case has a kernel splat (kernel watch, `kernel_splats`)
  the base run's same case has not;
- slower / faster: same outcome on both sides, and the duration changed by at least
  the factor (default 1.5×) and by more than the minimum (default 50 ms).

The verdict fails (exit status 1) on a regression or a new splat; a regression whose
patched case matched a known issue (xfail) is shown but does not fail it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vfio_scenario import __version__
from vfio_scenario.errors import ExitCode, UsageError
from vfio_scenario.journal import SCHEMA_VERSION as JOURNAL_SCHEMA
from vfio_scenario.journal import JournalError, _records
from vfio_scenario.report.describe import SCHEMA_VERSION as REPORT_SCHEMA
from vfio_scenario.report.describe import failure_message
from vfio_scenario.report.jsonout import SCHEMA as REPORT_NAME
from vfio_scenario.results import CaseResult, Outcome, RunResult
from vfio_scenario.select import normalize_case_id

DIFF_SCHEMA = "vfio-scenario-diff"
DIFF_SCHEMA_VERSION = 1

REGRESSION = "regression"
FIX = "fix"
NEW_SKIP = "new skip"
NO_LONGER_SKIPPED = "no longer skipped"
NEW_CASE = "new case"
REMOVED_CASE = "removed case"
NEW_SPLAT = "new splat"
SLOWER = "slower"
FASTER = "faster"
CLASSES = (REGRESSION, NEW_SPLAT, FIX, NEW_SKIP, NO_LONGER_SKIPPED, NEW_CASE, REMOVED_CASE,
           SLOWER, FASTER)
FAILING = (REGRESSION, NEW_SPLAT)  # the classes that fail the verdict

DEFAULT_FACTOR = 1.5
DEFAULT_MIN_CHANGE = 0.050  # seconds

_BAD = (Outcome.FAIL, Outcome.ERROR)
_CASE_FIELDS = {f.name for f in fields(CaseResult)}


def case_splats(case: dict[str, Any]) -> list[str]:
    """The kernel splats the kernel watch recorded in a case (its `kernel_splats`, absent
    in runs without the watch) that its scenario did not declare: each its title, headed
    by its kind when the title does not start with it."""
    out = []
    for s in case.get("kernel_splats") or []:
        if not s.get("allowed"):
            kind, title = str(s.get("kind", "")), str(s.get("title", ""))
            out.append(title if title.startswith(kind) else f"{kind}: {title}")
    return out


# A splat's title carries what differs from boot to boot (CPU, PID, addresses, offsets).
_VOLATILE = re.compile(r"\b(CPU|PID|pid|cpu)(:?\s*)\d+|0x[0-9a-fA-F]+|\b[0-9a-f]{8,16}\b")


def splat_key(splat: str) -> str:
    """`kind: title` without what changes between two boots, so the same splat matches."""
    return _VOLATILE.sub(lambda m: f"{m.group(1)}{m.group(2)}N" if m.group(1) else "X", splat)


@dataclass
class LoadedRun:
    """A run read for comparison: its results and each case's undeclared splats."""

    path: str
    run: RunResult
    splats: dict[str, list[str]]  # case id → case_splats()

    @property
    def engine_version(self) -> str:
        return self.run.properties.get("engine_version", "")

    @property
    def kernel(self) -> str:
        p = self.run.properties
        return p.get("testbed_kernel") or p.get("kernel", "")


def _neither(path: Path, why: str) -> UsageError:
    return UsageError(f"{path}: neither a vfio-scenario JSON report nor a journal ({why})")


def _other_version(path: Path, kind: str, schema: object, props: dict[str, Any],
                   ours: int) -> UsageError:
    writer = props.get("engine_version")
    by = f"vfio-scenario {writer}" if writer else "another vfio-scenario version"
    return UsageError(f"{path}: a {kind} written by {by} ({kind} schema {schema}); this is "
                      f"vfio-scenario {__version__}, which reads {kind} schema {ours}")


def load_run(path: str) -> LoadedRun:
    """A JSON report or a journal, with the splats of its cases. UsageError when the
    file is neither, or was written by an engine whose format this one does not read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _neither(p, f"byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8") \
            from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None  # several JSON lines: a journal
    if isinstance(doc, dict) and doc.get("schema") == REPORT_NAME:
        props = doc.get("properties") if isinstance(doc.get("properties"), dict) else {}
        if doc.get("schema_version") != REPORT_SCHEMA:
            raise _other_version(p, "JSON report", doc.get("schema_version"), props or {},
                                 REPORT_SCHEMA)
        return _loaded(p, doc.get("cases"), doc)
    return _load_journal(p, data)


def _load_journal(p: Path, data: bytes) -> LoadedRun:
    records: list[dict[str, Any]] = []
    try:
        for _, record in _records(data, str(p)):
            if not records and record["type"] != "journal":
                raise _neither(p, "its first line is not a journal header")
            records.append(record)
    except JournalError as exc:
        raise _neither(p, str(exc)) from None
    if not records:
        raise _neither(p, "empty")
    run_facts: dict[str, Any] = {}
    for r in records:
        if r["type"] == "run":
            run_facts = r
    schema = records[0].get("schema_version")
    if schema != JOURNAL_SCHEMA:
        props = {"engine_version": records[0].get("engine_version")
                 or (run_facts.get("properties") or {}).get("engine_version")}
        raise _other_version(p, "journal", schema, props, JOURNAL_SCHEMA)
    cases: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["type"] == "case" and isinstance(r.get("case"), dict):
            cases.pop(str(r["case"].get("case_id")), None)  # the later result wins
            cases[str(r["case"].get("case_id"))] = r["case"]
    return _loaded(p, list(cases.values()), run_facts)


def _loaded(p: Path, raw_cases: object, facts: dict[str, Any]) -> LoadedRun:
    if not isinstance(raw_cases, list):
        raise _neither(p, "no list of cases")
    run = RunResult(started=float(facts.get("started") or 0.0),
                    duration=float(facts.get("duration") or 0.0),
                    properties={str(k): str(v) for k, v in (facts.get("properties") or {}).items()})
    splats: dict[str, list[str]] = {}
    for raw in raw_cases:
        try:
            case = CaseResult.from_dict({k: v for k, v in raw.items() if k in _CASE_FIELDS})
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise _neither(p, f"a case it holds is not a case result: {exc}") from None
        run.cases.append(case)
        splats[case.case_id] = case_splats(raw)
    return LoadedRun(str(p), run, splats)


# -- the comparison -----------------------------------------------------------------


@dataclass
class Side:
    """One side of a case: what it did on one kernel."""

    status: str  # pass, fail, skip, error, xfail, xpass
    outcome: str
    duration: float
    message: str
    splats: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "outcome": self.outcome, "duration": self.duration,
                "message": self.message, "kernel_splats": list(self.splats)}


@dataclass
class Change:
    """One case whose outcome, splats or duration changed."""

    case_id: str
    classes: list[str]
    base: Side | None
    patched: Side | None
    new_splats: list[str] = field(default_factory=list)
    known_issue: str = ""  # the patched case's known issue, when it matched one

    @property
    def fails(self) -> bool:
        """It fails the verdict: a new splat, or a regression that is not a known issue."""
        return NEW_SPLAT in self.classes or (REGRESSION in self.classes and not self.known_issue)

    def arrow(self) -> str:
        b = self.base.status if self.base else "-"
        p = self.patched.status if self.patched else "-"
        return f"{b} → {p}"

    def detail(self) -> str:
        """The one line saying why: the failure, the skip reason, the splat, the timing."""
        if self.new_splats:
            return "; ".join(self.new_splats)
        side = self.patched if self.patched is not None else self.base
        if SLOWER in self.classes or FASTER in self.classes:
            assert self.base is not None and self.patched is not None
            ratio = self.patched.duration / self.base.duration if self.base.duration else 0.0
            return f"{self.base.duration:.3f}s → {self.patched.duration:.3f}s ({ratio:.2f}×)"
        if FIX in self.classes and self.base is not None:
            return f"was: {self.base.message}"
        if NO_LONGER_SKIPPED in self.classes and self.base is not None and \
                (self.patched is None or not self.patched.message):
            return f"was skipped: {self.base.message}"
        return side.message if side is not None else ""

    def to_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "classes": list(self.classes),
                "base": self.base.to_dict() if self.base else None,
                "patched": self.patched.to_dict() if self.patched else None,
                "new_splats": list(self.new_splats), "known_issue": self.known_issue or None,
                "detail": self.detail()}


@dataclass
class Comparison:
    base: LoadedRun
    patched: LoadedRun
    changes: list[Change]
    compared: int  # cases present on both sides
    factor: float = DEFAULT_FACTOR
    min_change: float = DEFAULT_MIN_CHANGE

    def count(self, cls: str) -> int:
        return sum(cls in c.classes for c in self.changes)

    def exit_code(self) -> int:
        """1 on a regression (not a known issue) or a new splat, else 0."""
        return ExitCode.FAILED if any(c.fails for c in self.changes) else ExitCode.OK

    def verdict(self) -> str:
        """One line: whether the patched kernel regressed, and every class's count."""
        counts = [(cls, self.count(cls)) for cls in CLASSES]
        said = ", ".join(f"{n} {_plural(cls, n)}" for cls, n in counts if n) or "no change"
        known = sum(REGRESSION in c.classes and bool(c.known_issue) for c in self.changes)
        if known:
            said += f" ({known} of the regressions known issues)"
        head = "REGRESSED" if self.exit_code() else "no regression"
        unchanged = self.compared - sum(bool(c.base and c.patched) for c in self.changes)
        return f"verdict: {head}: {said}; {unchanged} of {self.compared} cases unchanged"

    def to_dict(self) -> dict[str, Any]:
        def run_facts(side: LoadedRun) -> dict[str, Any]:
            return {"file": side.path, "total": len(side.run.cases),
                    "properties": dict(side.run.properties)}

        return {
            "schema": DIFF_SCHEMA, "schema_version": DIFF_SCHEMA_VERSION,
            "base": run_facts(self.base), "patched": run_facts(self.patched),
            "thresholds": {"duration_factor": self.factor, "duration_min": self.min_change},
            "compared": self.compared,
            "counts": {cls: self.count(cls) for cls in CLASSES},
            "verdict": self.verdict(), "exit_status": self.exit_code(),
            "changes": [c.to_dict() for c in self.changes],
        }


def _plural(cls: str, n: int) -> str:
    if n == 1 or cls in (NO_LONGER_SKIPPED, SLOWER, FASTER):
        return cls
    return {FIX: "fixes"}.get(cls, cls + "s")


def _side(case: CaseResult, splats: list[str]) -> Side:
    message = "" if case.outcome is Outcome.PASS else failure_message(case)
    return Side(status=case.status, outcome=case.outcome.value, duration=case.duration,
                message=message.split("\n", 1)[0], splats=splats)


def classify(base: CaseResult | None, patched: CaseResult | None, base_splats: list[str],
             patched_splats: list[str], factor: float = DEFAULT_FACTOR,
             min_change: float = DEFAULT_MIN_CHANGE) -> tuple[list[str], list[str]]:
    """(classes of change, new splats) of one case; see the module doc."""
    classes: list[str] = []
    if base is None:
        classes.append(NEW_CASE)
    elif patched is None:
        classes.append(REMOVED_CASE)
    else:
        b, p = base.outcome, patched.outcome
        if b is Outcome.PASS and p in _BAD:
            classes.append(REGRESSION)
        elif b in _BAD and p is Outcome.PASS:
            classes.append(FIX)
        if b is not Outcome.SKIP and p is Outcome.SKIP:
            classes.append(NEW_SKIP)
        elif b is Outcome.SKIP and p is not Outcome.SKIP:
            classes.append(NO_LONGER_SKIPPED)
        if b is p and b is not Outcome.SKIP and base.duration > 0:
            change = patched.duration - base.duration
            if abs(change) > min_change:
                if patched.duration >= base.duration * factor:
                    classes.append(SLOWER)
                elif base.duration >= patched.duration * factor:
                    classes.append(FASTER)
    known = {splat_key(s) for s in base_splats}
    new = [s for s in patched_splats if splat_key(s) not in known] if patched else []
    if new:
        classes.append(NEW_SPLAT)
    return sorted(classes, key=CLASSES.index), new  # the failing classes first


def compare(base: LoadedRun, patched: LoadedRun, factor: float = DEFAULT_FACTOR,
            min_change: float = DEFAULT_MIN_CHANGE) -> Comparison:
    """Every case of either run that changed, patched run's order first, then the
    cases only the base run had."""
    base_by = {normalize_case_id(c.case_id): c for c in base.run.cases}
    seen: set[str] = set()
    changes: list[Change] = []
    compared = 0
    for case in patched.run.cases:
        key = normalize_case_id(case.case_id)
        seen.add(key)
        old = base_by.get(key)
        compared += old is not None
        old_splats = base.splats.get(old.case_id, []) if old else []
        splats = patched.splats.get(case.case_id, [])
        classes, new = classify(old, case, old_splats, splats, factor, min_change)
        if classes:
            reason = (case.known_issue or {}).get("reason", "")
            changes.append(Change(case.case_id, classes,
                                  _side(old, old_splats) if old else None,
                                  _side(case, splats), new_splats=new,
                                  known_issue=reason if case.status == "xfail" else ""))
    for key, old in base_by.items():
        if key not in seen:
            changes.append(Change(old.case_id, [REMOVED_CASE],
                                  _side(old, base.splats.get(old.case_id, [])), None))
    return Comparison(base, patched, changes, compared, factor, min_change)


# -- writers ------------------------------------------------------------------------


def console_lines(comp: Comparison) -> list[str]:
    """The comparison for a terminal: both runs, one line per changed case, the verdict."""
    out = []
    for label, side in (("base   ", comp.base), ("patched", comp.patched)):
        facts = f"{len(side.run.cases)} cases"
        if side.kernel:
            facts += f", kernel {side.kernel}"
        out.append(f"{label} {side.path}: {facts}")
    width = max((len(", ".join(c.classes)) for c in comp.changes), default=0)
    for c in comp.changes:
        known = f" [known issue: {c.known_issue}]" if c.known_issue else ""
        line = f"{', '.join(c.classes):<{width}}  {c.case_id}  {c.arrow()}{known}"
        detail = c.detail()
        out.append(line + (f"\n{'':<{width}}  {detail}" if detail else ""))
    out.append(comp.verdict())
    return out


def json_document(comp: Comparison) -> str:
    """The comparison as JSON: one key per line, one change per line, ASCII only."""
    doc = comp.to_dict()
    changes = doc.pop("changes")
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items())
    body = ",\n".join("  " + json.dumps(c) for c in changes)
    return "{\n" + head + ',\n "changes": [' + ("\n" + body + "\n " if changes else "") + "]\n}\n"


def html_document(comp: Comparison) -> str:
    """The patched run's HTML report with the comparison as its first section."""
    from vfio_scenario.report.html import html_document as report_page

    return report_page(comp.patched.run, comparison=html_section(comp))


def html_section(comp: Comparison) -> dict[str, Any]:
    """What the report template's comparison section shows."""
    from vfio_scenario.report.junit import xml_safe

    return {
        "base": xml_safe(f"{comp.base.path} ({comp.base.kernel or 'kernel unknown'}, "
                         f"{len(comp.base.run.cases)} cases)"),
        "patched": xml_safe(f"{comp.patched.path} ({comp.patched.kernel or 'kernel unknown'}, "
                            f"{len(comp.patched.run.cases)} cases)"),
        "verdict": xml_safe(comp.verdict()),
        "failed": bool(comp.exit_code()),
        "counts": [(cls, comp.count(cls)) for cls in CLASSES if comp.count(cls)],
        "changes": [{"case_id": xml_safe(c.case_id), "classes": ", ".join(c.classes),
                     "fails": c.fails, "arrow": c.arrow(), "detail": xml_safe(c.detail()),
                     "known_issue": xml_safe(c.known_issue)} for c in comp.changes],
    }


def check_same_engine(base: LoadedRun, patched: LoadedRun) -> None:
    """UsageError when the two runs were written by different engine versions: their
    difference would mix the engine's changes with the kernel's."""
    a, b = base.engine_version, patched.engine_version
    if a and b and a != b:
        raise UsageError(f"{base.path} was written by vfio-scenario {a} and {patched.path} by "
                         f"vfio-scenario {b}: a comparison would mix the engine's changes with "
                         "the kernel's; run both with one engine version")


def write_comparison(comp: Comparison, json_path: str | None, html_path: str | None) -> int:
    """Console lines, then the files asked for; the comparison's exit status."""
    from vfio_scenario.report.files import atomic_write

    print("\n".join(console_lines(comp)))
    sys.stdout.flush()
    if json_path:
        atomic_write(json_path, json_document(comp))
    if html_path:
        atomic_write(html_path, html_document(comp))
    return comp.exit_code()
