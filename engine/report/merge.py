"""Reading results back (JSON reports, journals) and joining shards into one run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vfio_scenario.errors import UsageError
from vfio_scenario.journal import JournalError, read_journal
from vfio_scenario.report.jsonout import is_json_report
from vfio_scenario.results import CaseResult, RunResult


def load_results(path: str | os.PathLike[str]) -> RunResult:
    """The run recorded in a JSON report (`--json`) or a journal (journal.jsonl).

    Raises UsageError when the file is neither."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{p}: neither a vfio-scenario JSON report nor a journal (byte "
                         f"{exc.object[exc.start]:#04x} at offset {exc.start} is not UTF-8)") from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None  # several JSON lines: a journal
    if is_json_report(doc):
        assert isinstance(doc, dict)
        return RunResult.from_dict(doc)
    try:
        return read_journal(p)
    except JournalError as exc:
        raise UsageError(f"{p}: neither a vfio-scenario JSON report nor a journal ({exc})") from None


def merge_runs(runs: list[RunResult]) -> RunResult:
    """One run holding every case of `runs`, in the given order.

    A case id present in several runs keeps its last result (a re-run shard wins).
    The merged run starts with the earliest and ends with the latest; a property
    whose runs disagree lists every value."""
    cases: dict[str, CaseResult] = {}
    for run in runs:
        for case in run.cases:
            cases.pop(case.case_id, None)
            cases[case.case_id] = case
    timed = [r for r in runs if r.started]
    started = min((r.started for r in timed), default=0.0)
    ended = max((r.started + r.duration for r in timed), default=0.0)
    values: dict[str, list[str]] = {}
    for run in runs:
        for k, v in run.properties.items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    return RunResult(cases=list(cases.values()), started=started,
                     duration=max(0.0, ended - started) if timed else sum(r.duration for r in runs),
                     properties={k: ", ".join(vs) for k, vs in values.items()})
