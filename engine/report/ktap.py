"""KTAP v1 (`--format ktap`): what kernel CI tooling (kunit_tool, KernelCI, LAVA) parses.

One subtest group per scenario file, one subtest per case:

    KTAP version 1
    # vfio-scenario 0.1.0: kernel 7.2.13, accelerator tcg
    1..2
      KTAP version 1
      # Subtest: scenarios/dma/map.yaml
      1..2
      ok 1 map-unmap[iommu_mode=iommufd,size=4096]
      # FAIL step 4 `map_dma` at scenarios/dma/map.yaml:14: expected ok, got EINVAL
      not ok 2 map-unmap[iommu_mode=iommufd,size=8192]
    not ok 1 scenarios/dma/map.yaml
      …
    # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0

Each case's result line is preceded by one diagnostic line per step that ran (number,
outcome, duration, label, file:line; expected vs actual where it did not pass), the
same line the console's and JUnit's step logs show:

      #   1 PASS     0.0012s  open_iommu  [scenarios/dma/map.yaml:9]
      #   4 FAIL     0.0003s  map_dma  [scenarios/dma/map.yaml:14]  expected ok, got EINVAL

kunit_tool files these lines in the case's own log (Test.log). A skip is
`ok N name # SKIP reason`; a failure or an error (crash, timeout) is `not ok`
preceded, after its step lines, by diagnostic lines naming the step and the console
tail. KTAP has
no separate "error" result, so errors read as failures there (the totals line keeps
them apart).

Groups are printed whole, once all their cases finished, so each carries its plan;
the top-level plan is printed when the planned case ids are known up front. Text
from results is made line-safe: no '#' in names, and no line that kunit_tool would
take for a header or for the end of the kernel's output.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import TextIO

from vfio_scenario import __version__
from vfio_scenario.report.describe import (
    failure_message,
    known_issue_text,
    name_in_suite,
    splat_lines,
    split_case_id,
    step_line,
    suite_of,
    tail,
)
from vfio_scenario.report.junit import xml_safe
from vfio_scenario.results import CaseResult, Outcome, RunResult

INDENT = "  "
LOG_LINES = 20  # console/dmesg tail lines shown for an error

# kunit_tool stops reading at these (kernel shutdown banners) and treats
# "# Subtest:" as a group header: never let a message line look like them.
_DEFANG = [
    (re.compile(r"List of all partitions:"), "List of all partitions -"),
    (re.compile(r"Kernel panic - not syncing: VFS:"), "Kernel panic - not syncing (VFS):"),
    (re.compile(r"reboot: System halted"), "reboot - System halted"),
    (re.compile(r"Subtest:"), "Subtest -"),
]


_DIRECTIVE = re.compile(r"#(\s*(?:SKIP|TODO|XFAIL|XPASS))", re.IGNORECASE)


def _safe_text(text: str) -> str:
    text = xml_safe(text).replace("\r", "").replace("\t", " ")
    for pattern, replacement in _DEFANG:
        text = pattern.sub(replacement, text)
    return text


def test_name(text: str) -> str:
    """A name usable on a KTAP result line: one line, no '#', not blank."""
    name = _safe_text(" ".join(text.split())).replace("#", "%23").strip()
    return name or "unnamed"


def _step_lines(case: CaseResult) -> list[str]:
    """One diagnostic line per step that ran: its outcome and duration (describe.step_line)."""
    return [" ".join(_safe_text(step_line(step)).split("\n")).rstrip() for step in case.steps]


def _diagnostics(case: CaseResult) -> list[str]:
    if case.outcome not in (Outcome.FAIL, Outcome.ERROR):
        return []
    # split after escaping: str.splitlines() would also break at \x0b, \x1c … and U+2028
    lines = _safe_text(f"{case.outcome.label} {failure_message(case)}").split("\n")
    if case.outcome is Outcome.ERROR and case.log:
        lines += _safe_text(tail(case.log, 64 * 1024)).rstrip("\n").split("\n")[-LOG_LINES:]
    return [line.rstrip() for line in lines]


def _result_line(ok: bool, number: int, name: str, skip: str | None = None,
                 directive: str = "SKIP") -> str:
    line = f"{'ok' if ok else 'not ok'} {number} {name}"
    if skip is not None:
        # a second "# SKIP" (or "# TODO") in the reason would be read as the directive
        reason = _DIRECTIVE.sub(r"%23\1", " ".join(_safe_text(skip).split()))
        line += f" # {directive} {reason}".rstrip()
    return line


class KtapStream:
    """Writes KTAP to `out` as cases arrive (see the module doc for the layout).

    `planned`: every case id of the run in run order, when known; it gives the
    top-level plan and lets a group be printed the moment its last case finishes.
    Without it, a group is printed when a case of another file arrives."""

    def __init__(self, out: TextIO, planned: Sequence[str] | None = None) -> None:
        self.out = out
        self.planned = planned
        self._groups: dict[str, list[str]] = {}  # file -> planned case names, in order
        for case_id in planned or ():
            head, name = split_case_id(case_id) or (case_id, "")
            self._groups.setdefault(head, []).append(name)
        self._names = {f: set(names) for f, names in self._groups.items()}
        self._results: dict[str, dict[str, CaseResult]] = {}  # file -> name -> result
        self._printed = 0  # groups printed so far
        self._ready = 0  # groups complete (printed once the header is out)
        self._order: list[str] = list(self._groups)  # files in print order
        self._waiting = set(self._order)  # files not printed yet
        self._started = False

    def _write(self, lines: list[str]) -> None:
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def start(self, run: RunResult) -> None:
        """Print the version line, a header comment and (when planned) the plan."""
        if self._started:
            return
        self._started = True
        facts = ", ".join(f"{k} {v}" for k, v in sorted(run.properties.items()) if v)
        lines = ["KTAP version 1", f"# vfio-scenario {__version__}" + (f": {facts}" if facts else "")]
        if self.planned is not None:
            lines.append(f"1..{len(self._groups)}")
        self._write([_safe_text(lines[0]), _safe_text(lines[1]), *lines[2:]])
        self._flush()

    def case(self, case: CaseResult) -> None:
        """Take a finished case; print every group that is now complete."""
        file = suite_of(case)
        name = name_in_suite(case)
        if file not in self._waiting:
            self._order.append(file)  # a file not planned, or one already printed
            self._waiting.add(file)
            self._groups[file], self._names[file], self._results[file] = [], set(), {}
            if self.planned is None:
                self._ready = len(self._order) - 1  # the previous file is done
        if name not in self._names[file]:
            self._groups[file].append(name)
            self._names[file].add(name)
        self._results.setdefault(file, {})[name] = case
        if self.planned is not None:
            while self._ready < len(self._order) and self._complete(self._order[self._ready]):
                self._ready += 1
        self._flush()

    def _complete(self, file: str) -> bool:
        return len(self._results.get(file, {})) == len(self._names[file])

    def _flush(self) -> None:
        """Print the complete groups not printed yet (nothing before `start`)."""
        if not self._started:
            return
        while self._printed < self._ready:
            file = self._order[self._printed]
            self._printed += 1
            self._waiting.discard(file)
            self._write(self._group_lines(self._printed, file))

    def _group_lines(self, number: int, file: str) -> list[str]:
        group = test_name(file)
        lines = ["KTAP version 1", f"# Subtest: {group}", f"1..{len(self._groups[file])}"]
        failed = False
        results = self._results.get(file, {})
        for i, name in enumerate(self._groups[file], start=1):
            case = results.get(name)
            if case is None:
                lines.append(_result_line(True, i, test_name(name),
                                          skip="not run: the run stopped before this case"))
                continue
            lines += [f"# {d}" for d in _step_lines(case)]
            lines += [f"# {d}" if d else "#" for d in _diagnostics(case)]
            bad = case.failed
            failed |= bad
            if case.status in ("xfail", "xpass"):  # kselftest's `ok N # XFAIL reason`
                lines.append(_result_line(True, i, test_name(name), skip=known_issue_text(case),
                                          directive=case.status.upper()))
                continue
            skip = (case.message or "skipped") if case.outcome is Outcome.SKIP else None
            lines.append(_result_line(not bad, i, test_name(name), skip=skip))
        return [INDENT + line for line in lines] + [_result_line(not failed, number, group)]

    def finish(self, run: RunResult) -> None:
        """Print the remaining groups (unfinished planned cases as skipped) and the totals."""
        self._ready = len(self._order)
        self.start(run)
        self._flush()
        n = run.status_counts()
        totals = (f"# Totals: pass:{n['pass']} fail:{n['fail']} xfail:{n['xfail']} "
                  f"xpass:{n['xpass']} skip:{n['skip']} error:{n['error']}")
        self._write([f"# {_safe_text(line)}" for line in splat_lines(run)] + [totals])


def ktap_document(run: RunResult) -> str:
    """The whole run as one KTAP v1 document, with every plan."""
    out = io.StringIO()
    stream = KtapStream(out, planned=[c.case_id if "::" in c.case_id else f"{suite_of(c)}::{c.case_id}"
                                      for c in run.cases])
    stream.start(run)
    for case in run.cases:
        stream.case(case)
    stream.finish(run)
    return out.getvalue()
