"""`run --coverage DIR` on the host: the testbed kernel's gcov counters around a run.

Before the first case the counters are reset in the guest (`python -m
vfio_scenario.run.gcov reset` through the agent); after the last they are dumped the
same way and handed to vfio_scenario.report.coverage, which writes DIR. With
`--coverage-per-case` the guest's engine does the resetting and sends each case's
counters with its result (run/gcov.py PerCase); they arrive here as `coverage` events.
A kernel without gcov stops the run before any case with one line saying how to get one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.report.coverage import (
    GCOV_HOWTO,
    CoverageWriteError,
    GcovBuild,
    RunCoverage,
    console_lines,
    require_lcov,
)
from vfio_scenario.results import RunResult

#: --kernel values that are never gcov kernels
NO_GCOV_KERNELS = ("default", "debug", "debian")
GCOV_COMMAND = [sys.executable, "-m", "vfio_scenario.run.gcov"]
DUMP_TIMEOUT = 600.0  # reading every .gcda in a TCG guest


def no_gcov(kernel: str) -> EnvironmentProblem:
    return EnvironmentProblem(f"--coverage: the {kernel} kernel has no gcov "
                              f"(CONFIG_GCOV_KERNEL); {GCOV_HOWTO}")


class CoverageCollector:
    """Collects one run's coverage; `write` hands it to the report layer."""

    def __init__(self, out_dir: str, kernel: str, per_case: bool) -> None:
        self.out_dir = out_dir
        self.kernel = kernel
        self.per_case = per_case
        self.collected: RunCoverage | None = None
        self.summary: dict[str, Any] | None = None
        self.reboots = 0

    @classmethod
    def for_run(cls, args: argparse.Namespace) -> CoverageCollector:
        """Checks what can be checked before the testbed boots: lcov is installed, DIR
        can be made, and the kernel asked for can have gcov."""
        require_lcov()
        kernel = str(args.kernel)
        if kernel in NO_GCOV_KERNELS:
            raise no_gcov(kernel)
        if kernel != "coverage":
            image = Path(kernel).expanduser()
            if image.is_file() and GcovBuild.of_image(image) is None:
                raise no_gcov(kernel)
        try:
            Path(args.coverage).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EnvironmentProblem(f"--coverage {args.coverage}: cannot create it: "
                                     f"{exc.strerror}") from None
        return cls(args.coverage, kernel, bool(args.coverage_per_case))

    def begin(self, testbed: Any) -> None:
        """After the boot: the kernel's gcov build is known and the counters are reset
        (per case: only checked; the guest resets them around each case)."""
        image = testbed.kernel_image
        build = GcovBuild.of_image(image) if image is not None else None
        if build is None:
            raise no_gcov(self.kernel)
        out = testbed.run([*GCOV_COMMAND, "check" if self.per_case else "reset"])
        if out.returncode != 0:
            raise no_gcov(f"{self.kernel} ({testbed.kernel_release})")
        self.collected = RunCoverage(self.out_dir, build, self.per_case)

    def on_warning(self, message: str) -> None:
        if "rebooting the testbed" in message:
            self.reboots += 1

    def add_case_event(self, event: dict[str, Any]) -> None:
        from vfio_scenario.run.gcov import decode

        if self.collected is not None:
            self.collected.add_case(str(event.get("id", "")), str(event.get("file", "")),
                                    decode(event.get("gcda", {})))

    def end(self, testbed: Any) -> None:
        """After the last case: the counters of the whole run (not per case)."""
        if self.collected is None or self.per_case:
            return
        from vfio_scenario.run.gcov import decode

        out = testbed.run([*GCOV_COMMAND, "dump"], timeout=DUMP_TIMEOUT)
        if out.returncode != 0:
            raise EnvironmentProblem(f"reading the guest's gcov counters failed: {out.stderr}")
        self.collected.add_run(decode(json.loads(out.stdout)))

    def write(self, run: RunResult, warn: Callable[[str], None]) -> CoverageWriteError | None:
        """DIR/coverage.info and the HTML; the summary goes into `run` (JSON report).
        Returns the HTML's write error, if any, for the caller to raise once the other
        reports are written."""
        if self.collected is None:
            return None
        if self.reboots and not self.per_case:
            warn(f"coverage: the testbed rebooted {self.reboots} time(s); only the counters "
                 "since the last boot are in the coverage report")
        summary = self.collected.finish()
        problem: CoverageWriteError | None = None
        try:
            self.collected.write_html_report(f"vfio-scenario kernel coverage ({self.kernel})")
        except CoverageWriteError as exc:
            problem = exc
            summary["html"] = None
            summary["html_error"] = str(exc)
        run.coverage = summary
        self.summary = summary
        return problem

    def print_summary(self, stream: Any = None) -> None:
        if self.summary is None:
            return
        out = stream or sys.stdout
        for line in console_lines(self.summary):
            print(line, file=out)
        print(f"coverage: {self.summary['tracefile']}"
              + (f", {self.summary['html']}" if self.summary.get("html") else ""), file=out)
