"""The HTML report: one self-contained page (inline CSS and JS, no external URL).

A summary (counts per outcome, run properties), then one row per case: outcome,
id, duration and, unfolded, its step timeline (bars proportional to step
durations), step table, properties and log tail. Buttons filter the rows by outcome
and a search field by words of the case id; both can be given in the address
(`report.html#outcome=fail,error&q=iommufd memcpy`).
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
    known_issue_text,
    ordered_properties,
    step_label,
    step_number,
    suite_of,
    tail,
)
from vfio_scenario.report.junit import xml_safe
from vfio_scenario.results import CaseResult, Outcome, RunResult

LOG_LIMIT = 64 * 1024  # characters of each case's log shown (the tail); JSON holds all


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


def _clean(text: str) -> str:
    return xml_safe(text)  # HTML has the same forbidden characters as XML


def case_view(case: CaseResult) -> CaseView:
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
                    steps=steps, log=_clean(tail(case.log, LOG_LIMIT)),
                    properties=[(_clean(k), _clean(v))
                                for k, v in ordered_properties(case.properties)])


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
        "cases": [case_view(c) for c in run.cases],
    }


def html_document(run: RunResult, comparison: dict[str, Any] | None = None) -> str:
    """The report page as text (with report.diff's comparison section first, if given)."""
    return _template().render(**html_context(run, comparison))
