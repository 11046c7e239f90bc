"""Kernel watch benchmark: what watching costs per case, in the testbed's guest.

Runs, in the guest (TCG), the runner's per-case watch work — `begin()` when a case
starts, `finish(result, case)` when the next starts: one taint read each, the kmsg
records since the last case read and cut into splats — over N cases with a quiet log
and with K ordinary log lines per case (written to /dev/kmsg by the loop itself), and
prints microseconds per case. The library's wall time with and without
`--no-kernel-watch` is the other figure (docs/testbed.md), but on a shared machine its
noise is larger than the watch's cost.

    .venv/bin/python benchmarks/kernel_watch.py [--cases 300] [--lines 5]
"""

from __future__ import annotations

import argparse
import sys

from vfio_scenario.testbed import Testbed

GUEST = r"""
import sys, time
from types import SimpleNamespace
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run.kernel_watch import KernelWatch

cases, lines = int(sys.argv[1]), int(sys.argv[2])
case = SimpleNamespace(steps=[], teardown=[], kernel_watch_allow=())
watch = KernelWatch()
kmsg = open("/dev/kmsg", "w")
for label, per_case in (("quiet log", 0), (f"{lines} log lines a case", lines)):
    t = 0.0
    for i in range(cases):
        for j in range(per_case):
            kmsg.write(f"vfio-scenario watch benchmark {i}.{j}\n")
            kmsg.flush()
        r = CaseResult(case_id="b", file="b", scenario="b", outcome=Outcome.PASS)
        t0 = time.perf_counter()
        watch.begin()
        r = watch.finish(r, case)
        t += time.perf_counter() - t0
        assert r.outcome is Outcome.PASS
    print(f"{label}: {t / cases * 1e6:.0f} us per case ({cases} cases)")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--lines", type=int, default=5)
    args = ap.parse_args()
    with Testbed(devices=()) as bed:
        out = bed.run([sys.executable, "-c", GUEST, str(args.cases), str(args.lines)],
                      timeout=600)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        print(f"guest kernel {bed.kernel_release}, accelerator {bed.accelerator}")
        return out.returncode


if __name__ == "__main__":
    sys.exit(main())
