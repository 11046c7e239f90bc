"""ReportSink: where the runner sends each finished case.

Per case, in this order: the case is appended to the journal (flushed and fsynced
before `add` returns), the console prints its progress line (or KTAP), and the report
files (JUnit, JSON, HTML) are rewritten atomically (temporary file in the same folder,
fsync, rename), so after a kill -9 they are still valid documents.

Cadence: rewriting every report for every case costs O(cases²) on big runs, so the
files are rewritten at most once per `min_interval` (0.5 s), or less often when one
rewrite takes longer (the wait is at least 3x the last rewrite's time, so at most a
quarter of the time goes to rewriting); a case that arrives in between is written by
a timer at the end of the interval, and `close()` writes everything once more. So the
report files lag the journal by about half a second in normal runs; the journal itself
is exact, and `report merge JOURNAL` rebuilds every report from it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from vfio_scenario.errors import ExitCode
from vfio_scenario.journal import Journal
from vfio_scenario.report.console import Console, exit_code
from vfio_scenario.report.files import atomic_write, remove_stale_temporaries
from vfio_scenario.report.junit import JunitOptions
from vfio_scenario.report.ktap import KtapStream
from vfio_scenario.results import CaseResult, RunResult

Render = Callable[[RunResult], str]


def writers(junit_xml: str | None, json_path: str | None, html_path: str | None,
            junit_options: JunitOptions | None = None) -> list[tuple[str, Render]]:
    """(path, render function) for each report asked for."""
    from vfio_scenario.report.html import html_document
    from vfio_scenario.report.jsonout import json_document
    from vfio_scenario.report.junit import junit_document

    def junit(run: RunResult) -> str:
        return junit_document(run, junit_options)

    chosen: list[tuple[str | None, Render]] = [
        (junit_xml, junit), (json_path, json_document), (html_path, html_document)]
    return [(p, render) for p, render in chosen if p]


def write_reports(run: RunResult, targets: list[tuple[str, Render]]) -> None:
    """Render `run` into each target file, each replaced atomically."""
    for path, render in targets:
        atomic_write(path, render(run))


class ReportSink:
    """Collects a run's results: journal, console/KTAP, and report files.

    `run` is the RunResult being built (callers may update `run.properties`). With
    `resume=True` the journal's finished cases are loaded into `run` first, and
    `finished_ids()` names them so the runner can leave them out."""

    def __init__(self, junit_xml: str | None = None, json_path: str | None = None,
                 html_path: str | None = None, journal: str | None = None,
                 resume: bool = False, total: int = 0, fmt: str = "text",
                 planned: Sequence[str] | None = None, stream: TextIO | None = None,
                 min_interval: float = 0.5, junit_options: JunitOptions | None = None) -> None:
        self.targets = writers(junit_xml, json_path, html_path, junit_options)
        for path, _ in self.targets:
            remove_stale_temporaries(path)
        self.journal = Journal(journal, resume=resume) if journal else None
        previous = self.journal.previous if self.journal else RunResult()
        self.run = RunResult(cases=list(previous.cases), started=previous.started or time.time(),
                             properties=dict(previous.properties))
        self._t0 = time.time()
        self._previous_duration = previous.duration
        self._resumed = {c.case_id for c in previous.cases}
        # the order of the reports: the resumed cases, then the run's case order (with
        # --jobs cases finish out of order; the reports read as of one VM)
        self._order: dict[str, int] = {}
        self._set_order(planned or [])
        self._ids = set(self._resumed)  # ids in run.cases
        out = stream if stream is not None else sys.stdout
        self.fmt = fmt
        self.console = Console(out, total, done=len(previous.cases))
        self.ktap = KtapStream(out, planned) if fmt == "ktap" else None
        if self.ktap:
            for case in previous.cases:
                self.ktap.case(case)
        self.min_interval = min_interval
        self._lock = threading.Lock()  # guards run.cases and the timer
        self._write_lock = threading.Lock()  # one rewrite at a time
        self._timer: threading.Timer | None = None
        self._last_write = 0.0
        self._write_cost = 0.0
        self._closed = False
        self._header_done = False
        self.write_error = ""  # why the last rewrite failed ("" when it worked)

    def replan(self, ids: Sequence[str]) -> None:
        """The run's cases are now these (compiled for the real devices: the `driver` axis
        holds their drivers); call before the header is printed."""
        resumed = [c for c in self.run.cases if c.case_id in self._resumed]
        self.console.total = len(resumed) + len(ids)
        self._set_order(ids)
        if self.ktap and not self._header_done:
            self.ktap = KtapStream(self.ktap.out, [*(c.case_id for c in resumed), *ids])
            for case in resumed:
                self.ktap.case(case)

    def _set_order(self, ids: Sequence[str]) -> None:
        resumed = [c.case_id for c in self.run.cases if c.case_id in self._resumed]
        order = [*resumed, *(i for i in ids if i not in self._resumed)]
        self._order = {case_id: n for n, case_id in enumerate(order)}

    def _in_order(self, cases: list[CaseResult]) -> list[CaseResult]:
        """`cases` in the run's case order; cases outside it last, as they came."""
        last = len(self._order)
        return sorted(cases, key=lambda c: self._order.get(c.case_id, last))

    def finished_ids(self) -> set[str]:
        """Ids of the cases the resumed journal already holds."""
        return set(self._resumed)

    def header(self) -> None:
        """Print the run's header (once) and record its properties in the journal."""
        if self.journal:
            self.journal.write_run(self.run)
        if self._header_done:
            return
        self._header_done = True
        if self.ktap:
            self.ktap.start(self.run)
        else:
            self.console.header(self.run)

    def warn(self, message: str) -> None:
        """A warning of the runner: on stderr, so KTAP on stdout stays clean."""
        print(f"vfio-scenario: warning: {message}", file=sys.stderr, flush=True)

    def add(self, case: CaseResult) -> None:
        """Record one finished case: journal, console, and (throttled) report files."""
        if self.journal:
            self.journal.write_case(case)
        with self._lock:
            if case.case_id in self._ids:  # a re-run case replaces its earlier result
                self.run.cases = [c for c in self.run.cases if c.case_id != case.case_id]
            self._ids.add(case.case_id)
            self.run.cases.append(case)
        if self.ktap:
            self.ktap.start(self.run)
            self.ktap.case(case)
        else:
            self.console.case(case)
        self._schedule()

    def _interval(self) -> float:
        return max(self.min_interval, 3 * self._write_cost)

    def _schedule(self) -> None:
        with self._lock:
            if self._timer is not None or self._closed:
                return  # a pending rewrite will include this case
            wait = self._last_write + self._interval() - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._timed_flush)
                self._timer.daemon = True
                self._timer.start()
                return
        self._try_flush()

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
        self._try_flush()

    def _try_flush(self) -> None:
        """Rewrite, turning a failure (disk full, folder gone) into one warning: the
        journal already holds the case, and the run goes on."""
        try:
            self.flush()
        except OSError as exc:
            message = f"cannot write the reports: {exc}"
            if message != self.write_error:
                self.warn(message)
            self.write_error = message
        else:
            self.write_error = ""

    def _snapshot(self) -> RunResult:
        with self._lock:
            run = self.run
            duration = run.duration or max(0.0, time.time() - run.started)
            return RunResult(cases=self._in_order(run.cases), started=run.started,
                             duration=duration,
                             properties=dict(run.properties), coverage=run.coverage)

    def flush(self) -> None:
        """Rewrite every report file now."""
        with self._write_lock:
            t0 = time.monotonic()
            write_reports(self._snapshot(), self.targets)
            now = time.monotonic()
            self._last_write, self._write_cost = now, now - t0

    def close(self, summary: bool = True) -> None:
        """Final rewrite, run facts to the journal, summary (unless told not to) or KTAP
        totals; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timer, self._timer = self._timer, None
            self.run.cases = self._in_order(self.run.cases)
        if timer is not None:
            timer.cancel()
        if not self.run.duration:  # the runner did not set it: this session plus resumed ones
            self.run.duration = self._previous_duration + time.time() - self._t0
        self._try_flush()
        if self.journal:
            self.journal.write_run(self.run)
            self.journal.close()
        if self.ktap:
            self.ktap.finish(self.run)
        elif summary:
            self.console.summary(self.run)

    def exit_code(self) -> int:
        """The run's exit status from the results so far (0, 1, or 5 for no case); 3 when
        the report files could not be written at the end (CI would miss the results)."""
        if self.write_error:
            return ExitCode.ENVIRONMENT
        return exit_code(self.run)

    def __enter__(self) -> ReportSink:  # noqa: PYI034 - subclasses are not expected
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_journal(junit_xml: str) -> str:
    """The journal path beside the JUnit report: `<folder>/journal.jsonl`."""
    return str(Path(junit_xml).resolve().parent / "journal.jsonl")

