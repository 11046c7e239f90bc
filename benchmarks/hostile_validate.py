#!/usr/bin/env python3
"""Time and peak memory of `vfio-scenario validate` on each file of the hostile corpus.

Each file is validated in its own process (as a CI job validating a contributed file
would), under an address-space limit; printed per file: exit status, wall and CPU time,
peak resident memory (the child's ru_maxrss), and the first line of the error. The same
for a plain `validate` of a one-step valid file, as the baseline of the interpreter's
own start-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "hostile"


def measure(path: Path, limit_mb: int) -> tuple[int, float, float, float, str]:
    """(exit status, wall s, CPU s, peak RSS MB, first stderr line) of validating `path`."""

    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit_mb << 20}, "
            f"{limit_mb << 20})); from vfio_scenario.cli import main; "
            "sys.exit(main(['validate', *sys.argv[1:]]))")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    assert proc.stderr is not None and proc.stdout is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    first = (err.splitlines() or [""])[0].removeprefix(str(path) + ":")
    return (proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
            first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit-mb", type=int, default=200,
                        help="address-space limit of each validation (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "ok.yaml"
        baseline.write_text("steps:\n  - sleep: {duration: 1ms}\n")
        rows = [("(baseline: a valid file)", *measure(baseline, args.limit_mb))]
    rows += [(p.name, *measure(p, args.limit_mb)) for p in sorted(CORPUS.glob("*.yaml"))]
    print(f"{'file':36} exit  wall s  CPU s  peak MB  first line")
    for name, code, wall, cpu, rss, first in rows:
        print(f"{name:36} {code:4} {wall:7.2f} {cpu:6.2f} {rss:8.1f}  {first[:90]}")
    worst_wall = max(r[2] for r in rows[1:])
    worst_rss = max(r[4] for r in rows[1:])
    print(f"worst: {worst_wall:.2f} s wall, {worst_rss:.1f} MB peak RSS "
          f"(limit {args.limit_mb} MB of address space per validation)")


if __name__ == "__main__":
    main()
