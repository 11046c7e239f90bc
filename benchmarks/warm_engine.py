#!/usr/bin/env python3
"""The guest engine's start in one testbed VM: afresh, from a warm engine it starts
itself, and from a warm engine that runs already (run/zygote.py).

Boots the testbed once, compiles PATH (default: scenarios/host) for its devices as a
run does, writes the payload, and then, `--rounds` times, runs the engine over it in
the VM three ways, interleaved so that a shared machine's load hits them alike:

  fresh        `python -m vfio_scenario.run.guest PAYLOAD` (VFIO_SCENARIO_WARM_ENGINE=0);
  first use    through run/zygote_client.py with no warm engine in the VM (it was
               killed): the client starts one and the run forks from it;
  warm         through the client, the warm engine of the round before serving.

For each it prints the median seconds, taken on the host around the command, to the
engine's `hello` (before the first case: imports, models, probing), to its first
case's `start`, and to its end; and, as the floor under them, what `python -c pass`
and the client's `python -I -S -c pass` take in that VM.

    .venv/bin/python benchmarks/warm_engine.py [--kernel default] [--rounds 3] [PATH …]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KILL_WARM = ('pid=$(sed -n "s/.*PID //p" "$0.log" 2>/dev/null); '
             '[ -n "$pid" ] && kill -9 "$pid"; exit 0')


def timed(testbed: Any, argv: list[str], cwd: str) -> dict[str, float]:
    """Seconds to the engine's hello, first start and end of its command."""
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    stream = testbed.stream(argv, idle_timeout=600, cwd=cwd)
    for line in stream:
        try:
            event = json.loads(line).get("event")
        except ValueError:
            continue
        if event in ("hello", "start") and event not in marks:
            marks[event] = time.monotonic() - t0
    marks["end"] = time.monotonic() - t0
    if stream.returncode != 0:
        raise SystemExit(f"{argv}: exit status {stream.returncode}: {stream.stderr}")
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", default=["scenarios/host"], metavar="PATH")
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from vfio_scenario.drivers.base import driver_entry_points
    from vfio_scenario.language.compile import compile_paths
    from vfio_scenario.run import payload, zygote
    from vfio_scenario.run.testbed_run import (
        compile_for_guest,
        guest_driver_facts,
        guest_vfio_devices,
        needs_driver_facts,
    )
    from vfio_scenario.testbed import Testbed
    from vfio_scenario.testbed.paths import sub_dir

    compiled = compile_paths([str(ROOT / p) for p in args.paths])
    workdir = str(sub_dir("run", "payloads"))
    drivers = driver_entry_points()
    times: dict[str, list[dict[str, float]]] = {"fresh": [], "first use": [], "warm": []}
    floor: dict[str, list[float]] = {"python -c pass": [], "python -I -S -c pass": []}
    with Testbed(kernel=args.kernel) as testbed:
        bdfs = guest_vfio_devices(testbed)
        named = guest_driver_facts(testbed, bdfs, drivers) \
            if needs_driver_facts(compiled.cases) else bdfs
        cases = compile_for_guest(compiled.cases, compiled.documents, named)
        path = payload.write(workdir, payload.Header(devices=bdfs, drivers=drivers), cases)
        try:
            fresh = [sys.executable, "-m", "vfio_scenario.run.guest", path]
            for _ in range(args.rounds):
                testbed.run(["sh", "-c", KILL_WARM, zygote.GUEST_SOCKET], timeout=60)
                times["fresh"].append(timed(testbed, fresh, workdir))
                times["first use"].append(timed(testbed, zygote.guest_argv(path), workdir))
                times["warm"].append(timed(testbed, zygote.guest_argv(path), workdir))
                for name, seconds in floor.items():
                    argv = [sys.executable, *name.split()[1:]]
                    seconds.append(testbed.run(argv, timeout=600).duration)
        finally:
            Path(path).unlink()
        accel = testbed.accelerator
    print(f"guest ({accel}), {len(cases)} cases, median of {args.rounds} rounds, seconds "
          "from the host:")
    print(f"  {'':10s} {'hello':>7s} {'1st case':>9s} {'end':>7s}")
    for name, rounds in times.items():
        row = [statistics.median(r.get(mark, float("nan")) for r in rounds)
               for mark in ("hello", "start", "end")]
        print(f"  {name:10s} {row[0]:7.2f} {row[1]:9.2f} {row[2]:7.2f}")
    for name, seconds in floor.items():
        print(f"  {name}: {statistics.median(seconds):.2f}")


if __name__ == "__main__":
    main()
