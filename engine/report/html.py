"""The HTML report: one self-contained page (inline CSS and JS, no external URL).

A summary (counts per outcome, run properties, the kernel splats the watch found and
the skip reasons with their counts, the slowest cases as a bar chart), then the cases
grouped by scenario file, each file a collapsible section (unfolded when a case of it
failed or errored) headed by one grid per scenario: matrix values by IOMMU mode, each
cell coloured by its case's outcome and linking to it. Each case is a row: outcome,
id, duration and, unfolded, its step timeline (bars proportional to step durations),
step table, properties and log tail. Buttons filter the rows by outcome and a search
field by words of the case id; both can be given in the address
(`report.html#outcome=fail,error&q=iommufd memcpy`); while a filter is set, the files
holding shown cases unfold and the others are hidden.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
from vfio_scenario import __version__
from vfio_scenario.report.describe import (
    failure_message,
    group_by_suite,
    known_issue_text,
    name_in_suite,
    ordered_properties,
    step_label,
    step_number,
    suite_of,
    tail,
    undeclared_splats,
)
from vfio_scenario.report.junit import xml_safe
from vfio_scenario.results import CaseResult, Outcome, RunResult

LOG_LIMIT = 64 * 1024  # characters of each case's log shown (the tail); JSON holds all
SLOWEST = 15  # cases in the duration chart
NO_MODE = "no IOMMU mode"  # the grid column of cases without an iommu_mode parameter


@dataclass
class StepView:
    number: str
    label: str
    outcome: str
    duration: float
    share: float  # percent of the case's step time
    location: str
    detail: str


@dataclass
class CaseView:
    case_id: str
    suite: str
    outcome: str
    duration: float
    message: str
    steps: list[StepView] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)
    log: str = ""
    anchor: str = ""


@dataclass
class GridView:
    """One scenario's cases: a row per assignment of its other matrix values, a column
    per IOMMU mode; a cell is (status, anchor, case id) or None where no case ran."""

    scenario: str
    modes: list[str]
    rows: list[tuple[str, list[tuple[str, str, str] | None]]]


@dataclass
class FileView:
    name: str
    counts: list[tuple[str, int]]
    duration: float
    unfolded: bool
    grids: list[GridView]
    cases: list[CaseView]


def _clean(text: str) -> str:
    return xml_safe(text)  # HTML has the same forbidden characters as XML


def case_view(case: CaseResult, anchor: str = "") -> CaseView:
    """What the page shows of one case."""
    total = sum(s.duration for s in case.steps)
    steps = []
    for s in case.steps:
        detail = "" if s.outcome is Outcome.PASS else f"expected {s.expected}, got {s.actual}"
        if s.message and s.outcome is not Outcome.PASS:
            detail += f": {s.message}"
        label = f"teardown {step_label(s)}" if s.teardown else step_label(s)
        steps.append(StepView(number=step_number(s), label=_clean(label),
                              outcome=s.outcome.value, duration=s.duration,
                              share=100.0 * s.duration / total if total > 0 else 0.0,
                              location=_clean(s.location), detail=_clean(detail)))
    message = "" if case.outcome is Outcome.PASS else failure_message(case)
    if case.known_issue is not None:  # xfail / xpass: the known issue first
        message = f"{known_issue_text(case)}" + (f"; {message}" if message else "")
    return CaseView(case_id=_clean(case.case_id), suite=_clean(suite_of(case)),
                    outcome=case.status, duration=case.duration, message=_clean(message),
                    steps=steps, log=_clean(tail(case.log, LOG_LIMIT)), anchor=anchor,
                    properties=[(_clean(k), _clean(v))
                                for k, v in ordered_properties(case.properties)])


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def grids(cases: list[tuple[CaseResult, str]]) -> list[GridView]:
    """One GridView per scenario of a file's (case, anchor) pairs, scenarios and rows in
    order of first appearance, modes too."""
    by_scenario: dict[str, list[tuple[CaseResult, str]]] = {}
    for case, anchor in cases:
        name = case.scenario or name_in_suite(case).split("[", 1)[0]
        by_scenario.setdefault(name, []).append((case, anchor))
    out = []
    for scenario, members in by_scenario.items():
        modes: list[str] = []
        table: dict[str, dict[str, tuple[str, str, str]]] = {}
        for case, anchor in members:
            mode = _param_text(case.params.get("iommu_mode", NO_MODE))
            if mode not in modes:
                modes.append(mode)
            rest = ", ".join(f"{k}={_param_text(v)}" for k, v in sorted(case.params.items())
                             if k != "iommu_mode") or "(no other matrix values)"
            table.setdefault(_clean(rest), {})[mode] = (case.status, anchor, _clean(case.case_id))
        rows = [(label, [cells.get(m) for m in modes]) for label, cells in table.items()]
        out.append(GridView(scenario=_clean(scenario), modes=[_clean(m) for m in modes],
                            rows=rows))
    return out


def file_views(run: RunResult) -> list[FileView]:
    """The cases grouped by scenario file, in order of first appearance."""
    anchors = {id(c): f"case-{i + 1}" for i, c in enumerate(run.cases)}
    views = []
    for suite, cases in group_by_suite(run.cases).items():
        counts: dict[str, int] = {}
        for c in cases:
            counts[c.status] = counts.get(c.status, 0) + 1
        order = ["fail", "error", "xfail", "xpass", "pass", "skip"]
        views.append(FileView(
            name=_clean(suite), counts=[(s, counts[s]) for s in order if s in counts],
            duration=sum(c.duration for c in cases),
            unfolded=any(c.status in ("fail", "error") for c in cases),
            grids=grids([(c, anchors[id(c)]) for c in cases]),
            cases=[case_view(c, anchors[id(c)]) for c in cases]))
    return views


def slowest(run: RunResult,
            n: int = SLOWEST) -> list[tuple[str, str, str, str, float, float]]:
    """The `n` slowest cases: (case id, file name and case name, anchor, status, seconds,
    percent of the slowest)."""
    ranked = sorted(enumerate(run.cases), key=lambda ic: (-ic[1].duration, ic[0]))[:n]
    top = ranked[0][1].duration if ranked else 0.0
    return [(_clean(c.case_id), _clean(f"{suite_of(c).rsplit('/', 1)[-1]} {name_in_suite(c)}"),
             f"case-{i + 1}", c.status, c.duration,
             100.0 * c.duration / top if top > 0 else 0.0) for i, c in ranked]


def splat_views(run: RunResult) -> list[tuple[str, str, str, str]]:
    """(case id, anchor, kind, title) of every kernel splat the scenario did not declare."""
    return [(_clean(c.case_id), f"case-{i + 1}", _clean(str(s.get("kind", ""))),
             _clean(str(s.get("title", ""))))
            for i, c in enumerate(run.cases) for s in undeclared_splats(c)]


def skip_reasons(run: RunResult) -> list[tuple[str, int, str]]:
    """(reason, cases, anchor of the first) of the skipped cases, most frequent first."""
    reasons: dict[str, list[str]] = {}
    for i, c in enumerate(run.cases):
        if c.status == "skip":
            reasons.setdefault(c.message or "(no reason given)", []).append(f"case-{i + 1}")
    ranked = sorted(reasons.items(), key=lambda kv: -len(kv[1]))
    return [(_clean(reason), len(anchors), anchors[0]) for reason, anchors in ranked]


def _template() -> jinja2.Template:
    folder = resources.files("vfio_scenario.report").joinpath("templates")

    def load(name: str) -> str:
        return folder.joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html.j2")


def html_context(run: RunResult, comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the template needs; `comparison` is report.diff's section, if any."""
    counts = run.counts()
    status = run.status_counts()
    known = [(s, s.upper(), status[s]) for s in ("xfail", "xpass") if status[s]]
    started = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started))
               if run.started else "")
    return {
        "version": __version__,
        "started": started,
        "duration": run.duration,
        "total": len(run.cases),
        "outcomes": [(o.value, o.label, status[o.value] if known else counts[o])
                     for o in Outcome] + known,
        "comparison": comparison,
        "properties": [(_clean(k), _clean(v)) for k, v in ordered_properties(run.properties)],
        "files": file_views(run),
        "slowest": slowest(run),
        "splats": splat_views(run),
        "skips": skip_reasons(run),
    }


def html_document(run: RunResult, comparison: dict[str, Any] | None = None) -> str:
    """The report page as text (with report.diff's comparison section first, if given)."""
    return _template().render(**html_context(run, comparison))
