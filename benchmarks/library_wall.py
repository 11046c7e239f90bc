#!/usr/bin/env python3
"""The whole library's wall time with `run --jobs 1` and `--jobs 2`, one after the other.

Runs `vfio-scenario run scenarios/` (own VMs, booted by each run: the boot is part of
the wall time) once with `--jobs 1`, then once with `--jobs 2` (or the numbers given
with --jobs), on the same machine, with reports in a temporary folder. Prints each
run's wall time, its outcome counts, the ratio of the second to the first (target on
a 2-core machine: <= 0.6), whether the two runs gave the same case ids and outcomes,
and the host's load average before and after (the machine may be shared).

Run on the host: `.venv/bin/python benchmarks/library_wall.py [--kernel default]
[--jobs 1 2] [PATH …]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_library(paths: list[str], jobs: str, kernel: str,
                folder: Path) -> tuple[float, dict[str, str], int]:
    """Wall seconds, case id → outcome, exit status of one `vfio-scenario run`."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "vfio_scenario", "run", *paths, "--jobs", jobs,
            "--kernel", kernel, "--junit-xml", str(folder / "junit.xml"),
            "--json", str(folder / "run.json")]
    t0 = time.monotonic()
    with open(folder / "console.txt", "w") as console:
        status = subprocess.run(argv, cwd=ROOT, stdout=console, stderr=subprocess.STDOUT,
                                check=False).returncode
    wall = time.monotonic() - t0
    try:
        doc = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        doc = {"cases": []}
    return wall, {c["case_id"]: c["outcome"] for c in doc["cases"]}, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["scenarios"], metavar="PATH")
    parser.add_argument("--jobs", nargs=2, default=["1", "2"], metavar=("A", "B"),
                        help="the two --jobs values compared (default: 1 2)")
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--keep", metavar="DIR", help="keep the reports and consoles here")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="library-wall-"))
    print(f"host: {os.cpu_count()} cores, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs = []
    for jobs in args.jobs:
        wall, outcomes, status = run_library(args.paths, jobs, args.kernel, base / f"jobs-{jobs}")
        counts = Counter(outcomes.values())
        print(f"--jobs {jobs}: {wall:7.1f} s wall, {len(outcomes)} cases "
              f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}), exit status "
              f"{status}; load average now {os.getloadavg()[0]:.2f}", flush=True)
        runs.append((wall, outcomes))
    (wall_a, out_a), (wall_b, out_b) = runs
    print(f"ratio --jobs {args.jobs[1]} / --jobs {args.jobs[0]}: {wall_b / wall_a:.2f} "
          f"(target <= 0.6 for 1 vs 2 on 2 cores)")
    same = out_a == out_b
    print(f"same case ids and outcomes: {'yes' if same else 'NO'}")
    if not same:
        for case_id in sorted(set(out_a) | set(out_b)):
            if out_a.get(case_id) != out_b.get(case_id):
                print(f"  {case_id}: {out_a.get(case_id)} vs {out_b.get(case_id)}")
    print(f"reports and consoles: {base}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
