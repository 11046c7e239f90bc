"""Console output of a run: a progress line per case, a summary, the exit status.

    [ 12/340] scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096] PASS 0.41s
    [ 13/340] scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=8192] FAIL 0.52s
              step 4 `map_dma` at scenarios/dma/map.yaml:14: expected ok, got EINVAL
    …
    338 passed, 1 failed, 1 skipped, 0 errors in 81.20s
"""

from __future__ import annotations

from typing import TextIO

from vfio_scenario import __version__
from vfio_scenario.errors import ExitCode
from vfio_scenario.report.describe import (
    counts_line,
    failure_message,
    known_issue_text,
    ordered_properties,
    splat_lines,
)
from vfio_scenario.results import CaseResult, Outcome, RunResult

# Run properties worth a word in the header line, in this order.
_HEADER_KEYS = ("kernel", "testbed_kernel", "accelerator", "qemu", "where")


def exit_code(run: RunResult) -> int:
    """The run's exit status: 0 all passed or skipped, 1 any failure or error, 5 no case at all."""
    if not run.cases:
        return ExitCode.NOTHING_SELECTED
    # a known issue's failure (xfail) does not fail the run
    return ExitCode.FAILED if any(c.failed for c in run.cases) else ExitCode.OK


def progress_line(case: CaseResult, position: int, total: int) -> str:
    """`[12/340] <case id> PASS 0.41s`, then an indented line saying why when not passed.

    The position is padded to the width of the total so the ids line up."""
    width = len(str(max(total, position)))
    head = f"[{position:>{width}}/{total}] {case.case_id} {case.status.upper()} {case.duration:.2f}s"
    indent = " " * (width * 2 + 4)
    if case.known_issue is not None:  # xfail / xpass: which issue, then what went wrong
        why = known_issue_text(case)
        if case.outcome is not Outcome.PASS:
            why += f"\n{indent}" + failure_message(case).strip().split("\n", 1)[0]
        return f"{head}\n{indent}{why}"
    if case.outcome is Outcome.PASS:
        return head
    why = failure_message(case).strip().split("\n", 1)[0] or case.outcome.label
    return f"{head}\n{indent}{why}"


def summary_line(run: RunResult) -> str:
    """`N passed, N failed, N skipped, N errors in 12.34s`."""
    return f"{counts_line(run)} in {run.duration:.2f}s"


def header_line(run: RunResult, total: int) -> str:
    """`vfio-scenario 0.1.0: 340 cases; kernel 7.2.13, accelerator tcg …`."""
    props = dict(ordered_properties(run.properties))
    facts = [f"{k.replace('_', ' ')} {props[k]}" for k in _HEADER_KEYS if props.get(k)]
    return f"vfio-scenario {__version__}: {total} cases" + ("; " + ", ".join(facts) if facts else "")


class Console:
    """Progress on a text stream; `position` continues after resumed cases."""

    def __init__(self, stream: TextIO, total: int, done: int = 0) -> None:
        self.stream = stream
        self.total = total
        self.position = done

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def header(self, run: RunResult) -> None:
        self._print(header_line(run, self.total))

    def case(self, case: CaseResult) -> None:
        self.position += 1
        self._print(progress_line(case, self.position, self.total))

    def warn(self, message: str) -> None:
        self._print(f"warning: {message}")

    def summary(self, run: RunResult) -> None:
        splats = splat_lines(run)
        if splats:
            self._print(f"{len(splats)} kernel splat(s) (whole reports in the case logs):")
            for line in splats:
                self._print(f"  {line}")
        self._print(summary_line(run))
