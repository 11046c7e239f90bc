#!/usr/bin/env python3
"""Where a run's time goes inside the testbed's guest, from its start to its last case.

Boots the testbed once, compiles scenario files on the host for the guest's devices
(as `run` does, untimed) and runs the guest engine over them inside the guest:

  cold   `python -m vfio_scenario.run.guest PAYLOAD`, a fresh Python (what one
         `run` starts), its parent process profiled with cProfile;
  warm   the same run forked from a process that has imported the engine and made
         the payload's models once (run/zygote.py), `--rounds` times;
  other  with `--compare DIR`: the cold run of another engine (DIR holds its
         `vfio_scenario` package, e.g. an older commit's engine/ with drivers/ in it,
         under this checkout so that the guest sees it), its payload written by it,
         in the same VM right before this checkout's runs.

The guest's work is also measured as QEMU's CPU seconds on the host
(benchmarks/qemu_cpu.py), which the host's load does not inflate as it does the guest's
clock: the cold runs including their Python start, each warm round from its fork.

Each event line the engine prints is stamped in the guest (its monotonic clock; the
phases are differences within one process, which TCG's drift does not distort), so
it prints, per run: until `hello` (imports, payload, models, probe), until the first
case starts (planning, the kernel watch), the cases' own time (their results'
durations), the time between cases (fork, result, settle: per case), after the last
case (restoring devices, `done`); with `--profile`, cProfile's top functions of a cold
run's parent process (the cases run in forked children: their time is the parent waiting).

    .venv/bin/python benchmarks/guest_profile.py [--kernel default] [--rounds 3]
        [--compare DIR] [--profile] [FILE ...]

The payloads are compiled for the guest's VFIO devices by name (no driver facts).
Default files: the light kselftest ports (vfio_dma_mapping_mmio_test,
vfio_iommufd_setup_test, vfio_pci_device_test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIGHT = [ROOT / "scenarios" / "kselftest" / f"{p}.yaml" for p in
         ("vfio_dma_mapping_mmio_test", "vfio_iommufd_setup_test", "vfio_pci_device_test")]


# --- inside the guest ------------------------------------------------------------

def _stamped_main(argv: list[str], out: Any) -> int:
    """guest.main with each event stamped (`t`, this process's monotonic seconds)."""
    from vfio_scenario.run import guest

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps({**event, "t": time.monotonic()}) + "\n")
        out.flush()

    guest.emit = emit
    return guest.main(argv)


WRITE_PAYLOAD = """
import json, sys
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.drivers.base import driver_entry_points
from vfio_scenario.run import payload
folder, bdfs, files = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
compiled = compile_paths(files, bdfs)
assert not compiled.errors, compiled.errors
header = payload.Header(devices=bdfs, drivers=driver_entry_points())
print(payload.write(folder, header, compiled.cases), len(compiled.cases))
"""


def write_payload(folder: str, bdfs: list[str], files: list[Path],
                  env: dict[str, str]) -> tuple[str, int]:
    """A payload of `files` for `bdfs`, written by the engine `env` imports: (path, cases)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", WRITE_PAYLOAD, folder, json.dumps(bdfs),
                          *map(str, files)], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True)
    path, cases = out.stdout.split()
    return path, int(cases)


def inside_cold(payload: str, profiled: bool) -> None:
    """A fresh process: stamps from its very start; with `profiled`, its parent's
    cProfile (which slows it: not timed)."""
    import cProfile
    import io
    import pstats

    t0 = time.monotonic()
    profile = cProfile.Profile()
    if profiled:
        profile.enable()
    code = _stamped_main([payload], sys.stdout)
    text = io.StringIO()
    if profiled:
        profile.disable()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(30)
    print(json.dumps({"event": "profile", "t0": t0, "text": text.getvalue(), "code": code}))


def inside_warm(payload: str, rounds: int) -> None:
    """Fork the run `rounds` times from this process, warmed as run/zygote.py warms."""
    from qemu_cpu import mark
    from vfio_scenario.run import zygote

    zygote.preload(payload)
    for n in range(rounds):
        mark(f"warm {n + 1}", "begin")
        read, write = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            with os.fdopen(write, "w") as out:
                code = _stamped_main([payload], out)
            os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            for line in pipe:
                sys.stdout.write(line)
        os.waitpid(pid, 0)
        t = time.monotonic()
        mark(f"warm {n + 1}", "end")
        print(json.dumps({"event": "warm_end", "t0": t0, "t": t}))
        sys.stdout.flush()


# --- on the host -----------------------------------------------------------------

def phases(events: list[dict[str, Any]], t0: float) -> dict[str, float]:
    """The run's phases in seconds from its events (stamped `t`) and its start `t0`."""
    hello = next(e["t"] for e in events if e["event"] == "hello")
    starts = [e["t"] for e in events if e["event"] == "start"]
    results = [e for e in events if e["event"] == "result"]
    done = next(e["t"] for e in events if e["event"] == "done")
    in_cases = sum(float(e["result"]["duration"]) for e in results)
    first = starts[0] if starts else done
    last = max((e["t"] for e in results), default=first)
    between = last - first - in_cases
    return {"to hello": hello - t0, "hello to first case": first - hello,
            "in cases": in_cases, "between cases": between,
            "per case outside": between / max(1, len(results)),
            "after the last case": done - last, "total": done - t0,
            "cases": float(len(results))}


def _print(label: str, figures: dict[str, float]) -> None:
    print(f"{label}: " + ", ".join(
        f"{k} {v:.0f}" if k == "cases" else f"{k} {v * 1000:.0f} ms" if k.startswith("per")
        else f"{k} {v:.2f} s" for k, v in figures.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=LIGHT)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also the cold run of the engine in DIR (its vfio_scenario package)")
    parser.add_argument("--profile", action="store_true",
                        help="also a cold run under cProfile (untimed), its top functions")
    parser.add_argument("--inside", choices=("cold", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside == "cold":
        inside_cold(args.payload, args.profile)
        return
    if args.inside == "warm":
        inside_warm(args.payload, args.rounds)
        return
    from qemu_cpu import qemu_cpu_seconds, run_marked
    from vfio_scenario.run.testbed_run import guest_vfio_devices
    from vfio_scenario.testbed import Testbed

    load = os.getloadavg()
    me = str(Path(__file__).resolve())
    other: dict[str, str] = {"PYTHONPATH": str(args.compare.resolve())} if args.compare else {}
    with Testbed(kernel=args.kernel) as testbed, \
            tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-") as tmp:
        bdfs = guest_vfio_devices(testbed)
        path, cases = write_payload(tmp, bdfs, args.files, {})
        compared = None
        cpu: dict[str, float] = {}

        def timed(label: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
            before = qemu_cpu_seconds(testbed.pid)
            result = testbed.run(argv, timeout=1800, cwd=tmp, env=env)
            cpu[label] = qemu_cpu_seconds(testbed.pid) - before
            return result

        if other:
            other_path = write_payload(tmp, bdfs, args.files, other)[0]
            compared = timed("other", [sys.executable, me, "--inside", "cold", "--payload",
                                       other_path], other)
        cold = timed("cold", [sys.executable, me, "--inside", "cold", "--payload", path])
        lines, warm_cpu, status = run_marked(
            testbed, [sys.executable, me, "--inside", "warm", "--payload", path, "--rounds",
                      str(args.rounds)], timeout=1800, cwd=tmp)
        cpu.update(warm_cpu)
        profiled = testbed.run([sys.executable, me, "--inside", "cold", "--profile",
                                "--payload", path], timeout=1800, cwd=tmp) \
            if args.profile else None
        accel = testbed.accelerator
    if status != 0:
        raise SystemExit(status)
    report(args, cases, accel, load, cold, compared, lines, cpu)
    if profiled is not None:
        events = [json.loads(line) for line in profiled.stdout.splitlines()
                  if line.startswith("{")]
        print("a cold run's parent process under cProfile (cumulative):")
        print(next(e for e in events if e["event"] == "profile")["text"])


def report(args: argparse.Namespace, cases: int, accel: str, load: tuple[float, ...],
           cold: Any, compared: Any, lines: list[str], cpu: dict[str, float]) -> None:
    for result in (cold, *([compared] if compared else [])):
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise SystemExit(result.returncode)
    print(f"guest ({accel}), {cases} cases of "
          f"{', '.join(f.stem for f in args.files)}; host load {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    if compared is not None:
        events = [json.loads(line) for line in compared.stdout.splitlines()
                  if line.startswith("{")]
        profile = next(e for e in events if e["event"] == "profile")
        print(f"{args.compare.name} cold (a fresh Python, from the host: "
              f"{compared.duration:.2f} s)")
        _print("  cold", phases([e for e in events if "t" in e], profile["t0"]))
        other_total = phases([e for e in events if "t" in e], profile["t0"])["total"]
    events = [json.loads(line) for line in cold.stdout.splitlines() if line.startswith("{")]
    profile = next(e for e in events if e["event"] == "profile")
    print(f"cold (a fresh Python, as seen from the host: {cold.duration:.2f} s)")
    _print("  cold", phases([e for e in events if "t" in e], profile["t0"]))
    runs: list[dict[str, float]] = []
    current: list[dict[str, Any]] = []
    for line in lines:
        event = json.loads(line) if line.startswith("{") else None
        if event is None:
            continue
        if event["event"] == "warm_end":
            runs.append(phases(current, event["t0"]))
            current = []
        else:
            current.append(event)
    for n, figures in enumerate(runs):
        _print(f"  warm {n + 1}", figures)
    if runs:
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        _print("  warm median", median)
        cold_total = phases([e for e in events if "t" in e], profile["t0"])["total"]
        print(f"ratios: warm/cold {median['total'] / cold_total:.2f}" + (
            f", cold/{args.compare.name} cold {cold_total / other_total:.2f}, "
            f"warm/{args.compare.name} cold {median['total'] / other_total:.2f}"
            if compared is not None else ""))
    warm_cpu_values = sorted(v for k, v in cpu.items() if k.startswith("warm"))
    print("QEMU's CPU seconds on the host (the guest's work; the load does not inflate it): "
          + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    if warm_cpu_values:
        warm_median = statistics.median(warm_cpu_values)
        print(f"  ratios: warm median/cold {warm_median / cpu['cold']:.2f}" + (
            f", cold/{args.compare.name} cold {cpu['cold'] / cpu['other']:.2f}, warm median/"
            f"{args.compare.name} cold {warm_median / cpu['other']:.2f}" if "other" in cpu
            else ""))


if __name__ == "__main__":
    main()
