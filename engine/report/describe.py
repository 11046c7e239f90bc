"""Words every writer uses about a case: its failing step, failure message, step log.

Kept in one place so JUnit, KTAP, HTML and the console say the same thing.
"""

from __future__ import annotations

import re
from typing import Any

from vfio_scenario.results import CaseResult, Outcome, RunResult, StepResult

# Properties shown first, in this order, wherever a report lists them.
KEY_PROPERTIES = ("device", "vendor_device", "vfio_driver", "iommu_mode", "kernel",
                  "accelerator", "engine_version")

SCHEMA_VERSION = 1  # of the JSON report (the journal has its own, in journal.py)


def failing_step(case: CaseResult) -> StepResult | None:
    """The first step that failed or errored (body before teardown, by index), if any."""
    bad = [s for s in case.steps if s.outcome in (Outcome.FAIL, Outcome.ERROR)]
    return min(bad, key=lambda s: (s.teardown, s.index)) if bad else None


def step_label(step: StepResult) -> str:
    """`name`, or `name (op)` when the step's name is not its operation."""
    if step.name in ("", step.op):
        return step.op
    return f"{step.name} ({step.op})"


def step_number(step: StepResult) -> str:
    """1-based number of the step in the body, or `T1`, `T2` … in the teardown (the
    interpreter numbers teardown steps from 0 again)."""
    return f"T{step.index + 1}" if step.teardown else str(step.index + 1)


def failure_message(case: CaseResult) -> str:
    """One line naming what went wrong: the step, its file:line, expected vs actual.

    For a skip this is the reason; for a case with no failing step (a crash before any
    step, a release problem) or one the kernel watch made an error it is the case's own
    message."""
    step = failing_step(case) if case.outcome in (Outcome.FAIL, Outcome.ERROR) else None
    if case.outcome is Outcome.ERROR and undeclared_splats(case):
        step = None
    if step is None:
        text = case.message or case.outcome.label
        if case.location and case.location not in text:
            text = f"{case.location}: {text}"
        return text
    where = step.location or case.location or "?"
    kind = "teardown step" if step.teardown else "step"
    text = (f"{kind} {step.index + 1} `{step_label(step)}` at {where}: "
            f"expected {step.expected}, got {step.actual}")
    detail = step.message
    if detail and not detail.startswith("expected "):
        text += f": {detail}"
    return text


def undeclared_splats(case: CaseResult) -> list[dict[str, Any]]:
    """The kernel watch's finds in the case that its scenario did not declare."""
    return [s for s in case.kernel_splats if not s.get("allowed")]


def splat_lines(run: RunResult) -> list[str]:
    """One line per undeclared kernel splat of the run, naming its case (empty if none)."""
    lines = []
    for case in run.cases:
        for s in undeclared_splats(case):
            lines.append(f"kernel {s['kind']} in {case.case_id}: {s['title']}")
    return lines


def step_line(step: StepResult) -> str:
    """One aligned line of the step log: number, outcome, duration, label, location."""
    reps = f" x{step.repeat}" if step.repeat != 1 else ""
    label = f"teardown {step_label(step)}" if step.teardown else step_label(step)
    line = (f"{step_number(step):>3} {step.outcome.label:<5} {step.duration:9.4f}s  "
            f"{label}{reps}  [{step.location}]")
    if step.process:  # the case handed over: which process ran the step
        line += f"  ({step.process})"
    if step.outcome is not Outcome.PASS:
        line += f"  expected {step.expected}, got {step.actual}"
        if step.message:
            line += f": {step.message}"
    return line


def step_log(case: CaseResult) -> str:
    """Every step of the case, one `step_line` each (empty when no step ran)."""
    return "\n".join(step_line(s) for s in case.steps)


def tail(text: str, limit: int) -> str:
    """At most `limit` characters: the end of `text`, prefixed by how much was cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    start = text.find("\n", cut)
    start = cut if start < 0 or start - cut > 200 else start + 1
    return f"[... {start} characters cut; the JSON report holds the whole log]\n" + text[start:]


def ordered_properties(props: dict[str, str]) -> list[tuple[str, str]]:
    """The key properties first (in KEY_PROPERTIES order), then the rest by name."""
    first = [(k, props[k]) for k in KEY_PROPERTIES if k in props]
    rest = sorted((k, v) for k, v in props.items() if k not in KEY_PROPERTIES)
    return first + rest


def counts_line(run: RunResult) -> str:
    """`N passed, N failed, N skipped, N errors` (always all four), then `N xfail, N xpass`
    when a known issue matched (the counts are then disjoint, as kselftest's totals)."""
    n = run.status_counts()
    line = f"{n['pass']} passed, {n['fail']} failed, {n['skip']} skipped, {n['error']} errors"
    if n["xfail"] or n["xpass"]:
        line += f", {n['xfail']} xfail, {n['xpass']} xpass"
    return line


def known_issue_text(case: CaseResult) -> str:
    """`known issue: REASON (URL)` of a case that matched one ("" when none did); an xpass
    adds that it passed, so the list gets cleaned."""
    issue = case.known_issue
    if issue is None:
        return ""
    text = f"known issue: {issue.get('reason', '')}"
    if issue.get("url"):
        text += f" ({issue['url']})"
    if case.status == "xpass":
        text += " - passed now (xpass): the entry can go"
    return text


_ID_FILE = re.compile(r"(.*?\.ya?ml)::(.*)\Z", re.DOTALL)


def split_case_id(case_id: str, file: str = "") -> tuple[str, str] | None:
    """(scenario file, case name) of `path::name[params]`; None without '::'.

    The file's own name may hold '::' (`brack[et]::x.yaml`): the split is after `file`
    when the id starts with it, else after the first `.yaml::`/`.yml::`, else at the
    first '::'."""
    if file and case_id.startswith(file + "::"):
        return file, case_id[len(file) + 2:]
    m = _ID_FILE.match(case_id)
    if m:
        return m.group(1), m.group(2)
    head, sep, rest = case_id.partition("::")
    return (head, rest) if sep else None


def suite_of(case: CaseResult) -> str:
    """The scenario file a case belongs to (from its id, else `file`)."""
    parts = split_case_id(case.case_id, case.file)
    return parts[0] if parts else (case.file or case.case_id)


def name_in_suite(case: CaseResult) -> str:
    """The case id's part after the scenario file (the whole id when it has none)."""
    parts = split_case_id(case.case_id, case.file)
    return parts[1] if parts else case.case_id


def group_by_suite(cases: list[CaseResult]) -> dict[str, list[CaseResult]]:
    """Cases grouped by scenario file, files in order of first appearance."""
    groups: dict[str, list[CaseResult]] = {}
    for c in cases:
        groups.setdefault(suite_of(c), []).append(c)
    return groups
