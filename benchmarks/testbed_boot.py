"""Testbed boot benchmark: seconds from start to the first command executed in the guest.

cold: a fresh Python process whose cache holds the built kernels but no initramfs
      (so it is generated), importing the testbed, booting, running `true`;
warm: reboots of a running testbed (everything cached), until `true` and until the
      host's Python (`python -c pass`) has run in the guest.
run:  `vfio-scenario run` of a one-step case, from launch to the step (its result line
      less the case's own duration): what a user waits for before the first step.
Per accelerator that works here (KVM only when its probe boot succeeds). Target: warm
first command under 6 s on TCG. Prints one line per measurement and the ratio to target.

    .venv/bin/python benchmarks/testbed_boot.py [--kernel default] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vfio_scenario.testbed import BootFailed, Testbed
from vfio_scenario.testbed.accel import cached_verdict, kvm_device_usable
from vfio_scenario.testbed.paths import cache_dir

TARGET_WARM_TCG = 6.0

COLD_PROGRAM = """
import sys, time
t0 = time.monotonic()
from vfio_scenario.testbed import Testbed
bed = Testbed(kernel=sys.argv[1], accel=sys.argv[2]).start()
assert bed.run(["true"], timeout=120).returncode == 0
print(time.monotonic() - t0)
bed.stop()
"""


def cold_seconds(kernel: str, accel: str) -> float:
    """Start-to-first-command in a fresh process with an initramfs-less cache."""
    with tempfile.TemporaryDirectory(prefix="vfio-scenario-bench-") as tmp:
        cache = Path(tmp) / "vfio-scenario"
        cache.mkdir()
        for shared in ("kernels", "linux-source", "apt", "debs"):
            if (cache_dir() / shared).exists():
                (cache / shared).symlink_to(cache_dir() / shared)
        if (cache_dir() / "accel.json").exists():
            shutil.copy(cache_dir() / "accel.json", cache / "accel.json")
        env = {**os.environ, "XDG_CACHE_HOME": tmp}
        out = subprocess.run([sys.executable, "-c", COLD_PROGRAM, kernel, accel], env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        if out.returncode != 0:
            raise BootFailed(f"cold boot with {accel} failed: {out.stderr[-2000:]}")
        return float(out.stdout.strip().splitlines()[-1])


def warm_seconds(kernel: str, accel: str, rounds: int) -> tuple[list[float], list[float]]:
    """(start-to-`true`, start-to-`python -c pass`) for `rounds` boots of a warm testbed."""
    first: list[float] = []
    python: list[float] = []
    bed = Testbed(kernel=kernel, accel=accel)
    bed.start()  # warms the caches; not measured
    try:
        for _ in range(rounds):
            bed.stop()
            t0 = time.monotonic()
            bed.start()
            assert bed.run(["true"], timeout=120).returncode == 0
            first.append(time.monotonic() - t0)
            assert bed.run([sys.executable, "-c", "pass"], timeout=120).returncode == 0
            python.append(time.monotonic() - t0)
    finally:
        bed.stop()
    return first, python


FIRST_STEP_SCENARIO = """\
name: first-step
requires: {devices: 0}
steps:
  - sleep: {duration: 1ms}
"""


def run_to_first_step_seconds(kernel: str, accel: str) -> float:
    """`vfio-scenario run` of a one-step case: launch until its result line, less the case.

    This is what a user waits for: booting, starting the engine in the guest, probing
    the host (each device is opened when the planner first considers it) and planning,
    before the first step runs.
    """
    with tempfile.TemporaryDirectory(prefix="vfio-scenario-bench-", dir=Path.cwd()) as tmp:
        scenario = Path(tmp) / "first-step.yaml"
        scenario.write_text(FIRST_STEP_SCENARIO)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vfio_scenario", "run", os.path.relpath(scenario),
             "--testbed", "always", "--kernel", kernel, "--accel", accel,
             "--junit-xml", str(Path(tmp) / "junit.xml")],
            stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        seen = None
        for line in proc.stdout:
            if line.startswith("[1/1]") and seen is None:
                seen = time.monotonic() - t0
                case_seconds = float(line.split()[-1].rstrip("s"))
        if proc.wait() != 0 or seen is None:
            raise BootFailed(f"vfio-scenario run exited {proc.returncode}")
        return seen - case_seconds


def working_accelerators() -> list[str]:
    """tcg, plus kvm when /dev/kvm opens and the cached probe verdict is kvm."""
    verdict = cached_verdict()
    if kvm_device_usable() and (verdict is None or verdict.get("accel") == "kvm"):
        with contextlib.suppress(BootFailed):
            Testbed(accel="auto").start().stop()  # probes KVM when not known yet
        verdict = cached_verdict()
        if verdict is not None and verdict.get("accel") == "kvm":
            return ["kvm", "tcg"]
    return ["tcg"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    Testbed(kernel=args.kernel).prepare()  # assets built before anything is timed
    for accel in working_accelerators():
        cold = cold_seconds(args.kernel, accel)
        first, python = warm_seconds(args.kernel, accel, args.rounds)
        run_first = [run_to_first_step_seconds(args.kernel, accel) for _ in range(args.rounds)]
        warm = statistics.median(first)
        print(f"{accel}: cold start->first command {cold:.2f} s; warm {warm:.2f} s "
              f"(min {min(first):.2f}, max {max(first):.2f}, {args.rounds} boots); "
              f"warm start->guest python ran {statistics.median(python):.2f} s")
        print(f"{accel}: `vfio-scenario run` -> first step {statistics.median(run_first):.2f} s "
              f"(min {min(run_first):.2f}, max {max(run_first):.2f}; boot, guest engine "
              f"start, host probe, planning with the devices the first case needs probed)")
        if accel == "tcg":
            print(f"tcg warm / target {TARGET_WARM_TCG:.0f} s = {warm / TARGET_WARM_TCG:.2f} "
                  f"({'met' if warm < TARGET_WARM_TCG else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
