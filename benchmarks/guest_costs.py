#!/usr/bin/env python3
"""Where a warm guest engine run spends its time per run and per case, inside the testbed.

Boots the testbed once, compiles scenario files on the host for the guest's VFIO devices
(with their driver facts, as `run` and benchmarks/vs_kselftest.py do; untimed), warms a
process in the guest as run/zygote.py does, and forks runs from it (as
benchmarks/vs_kselftest.py's "ours"):

  timed     `--rounds` runs; in each, the run process's phases are timed (reading the
            payload, probing, planning, the kernel watch, device state, and per case:
            the fork, the wait for the case's events, the result, the properties, the
            kernel watch's window), and each case process's own (from its fork to
            run_case, run_case, writing the result, its exit); also the QEMU CPU seconds
            of each run (benchmarks/qemu_cpu.py);
  profiled  one run under cProfile: the run process and every case process, each
            profiled on its own, their top functions (by own time) printed.

    .venv/bin/python benchmarks/guest_costs.py [--kernel default] [--rounds 3] [FILE ...]

Default files: the light kselftest ports (vfio_dma_mapping_mmio_test,
vfio_iommufd_setup_test, vfio_pci_device_test).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
LIGHT = [ROOT / "scenarios" / "kselftest" / f"{p}.yaml" for p in
         ("vfio_dma_mapping_mmio_test", "vfio_iommufd_setup_test", "vfio_pci_device_test")]


# --- inside the guest ------------------------------------------------------------

class Clock:
    """Seconds spent per label in this process (wall, perf_counter), and counts."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - t0
                self.count[label] += 1

        setattr(owner, name, timed)

    def gc_timer(self, who: str) -> Callable[[str, dict[str, int]], None]:
        """A gc.callbacks entry timing this process's garbage collections, per generation,
        as "WHO: gc generation N" (a full one walks, and writes to, every object)."""
        collecting: list[float] = []

        def collection(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                collecting.append(time.perf_counter())
            elif collecting:
                label = f"{who}: gc generation {info['generation']}"
                self.spent[label] += time.perf_counter() - collecting.pop()
                self.count[label] += 1

        return collection

    def dump(self) -> dict[str, Any]:
        return {k: [self.spent[k], self.count[k]] for k in self.spent}


def instrument(clock: Clock, child_dir: str) -> None:
    """Time the run's phases in this process, and have each case process write its own
    phases to `child_dir` (a file per process)."""
    from vfio_scenario.results import CaseResult
    from vfio_scenario.run import (
        devstate,
        executor,
        guest,
        kernel_watch,
        payload,
        plan,
        probe,
        session,
    )

    clock.wrap(payload, "read_cases", "run: read payload cases")
    clock.wrap(probe, "probe_host", "run: probe_host")
    clock.wrap(plan, "_plan_one", "run: plan (per case)")
    clock.wrap(devstate, "record", "run: devstate.record")
    clock.wrap(devstate, "restore", "run: devstate.restore")
    clock.wrap(kernel_watch.KernelWatch, "open", "run: kernel watch open")
    clock.wrap(kernel_watch.KernelWatch, "begin", "case(parent): watch.begin")
    clock.wrap(kernel_watch.KernelWatch, "finish", "case(parent): watch.finish")
    clock.wrap(kernel_watch.KernelWatch, "leaks", "run: watch.leaks")
    clock.wrap(session, "execute_case", "case(parent): execute_case total")
    clock.wrap(session, "case_properties", "case(parent): properties")
    clock.wrap(executor, "_kernel_log", "case(parent): KernelLog open")
    clock.wrap(executor, "_fork_case", "case(parent): fork")
    clock.wrap(executor, "_collect", "case(parent): collect (case runs)")
    clock.wrap(executor, "_tail", "case(parent): output tail")
    clock.wrap(CaseResult, "to_dict", "case(parent): result.to_dict")
    clock.wrap(CaseResult, "from_dict", "case(parent): result.from_dict")
    guest_emit = guest.emit

    def emit(event: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        guest_emit(event)
        clock.spent["case(parent): emit " + str(event.get("event"))] += time.perf_counter() - t0
        clock.count["case(parent): emit " + str(event.get("event"))] += 1

    guest.emit = emit
    child = executor._child

    def timed_child(*args: Any) -> None:
        # in the case process: its own phases, written where the harness reads them
        t_fork = time.perf_counter()
        import resource

        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        own = Clock()
        from vfio_scenario.run import interpreter
        from vfio_scenario.run.ops import host

        own.wrap(interpreter, "run_case", "case(child): run_case")
        own.wrap(interpreter, "_run_operation", "case(child): steps (_run_operation)")
        own.wrap(host, "begin_case", "case(child): begin_case")
        own.wrap(host, "end_case", "case(child): end_case")
        own.wrap(executor, "write_all", "case(child): pipe writes")
        import gc

        gc.callbacks.append(own.gc_timer("case(child)"))
        real_exit = os._exit

        def leave(code: int) -> None:
            own.spent["case(child): fork to exit"] += time.perf_counter() - t_fork
            own.count["case(child): fork to exit"] += 1
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
            own.spent["case(child): minor faults (count)"] += faults
            own.count["case(child): minor faults (count)"] += 1
            with open(f"{child_dir}/{os.getpid()}", "w") as f:
                json.dump(own.dump(), f)
            real_exit(code)

        os._exit = leave  # type: ignore[assignment]
        executor.run_case = interpreter.run_case  # type: ignore[attr-defined]
        child(*args)

    executor._child = timed_child  # type: ignore[assignment]


def inside(payload_path: str, rounds: int, profile: bool = True) -> None:
    from qemu_cpu import mark
    from vfio_scenario.run import zygote

    zygote.preload(payload_path)
    for n in range(rounds + (1 if profile else 0)):
        profiled = n == rounds
        label = "profiled" if profiled else f"timed {n + 1}"
        tmp = tempfile.mkdtemp(prefix="gc-", dir="/dev/shm")
        read, write = os.pipe()
        mark(label, "begin")
        t0 = time.perf_counter()
        pid = zygote.fork_run([payload_path], stdout=write,
                              main=functools.partial(_run_inside, tmp=tmp, profiled=profiled))
        os.close(write)
        with os.fdopen(read) as pipe:
            events = [line for line in pipe]
        os.waitpid(pid, 0)
        total = time.perf_counter() - t0
        mark(label, "end")
        children = []
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if name.endswith(".json"):
                with open(path) as f:
                    children.append(json.load(f))
            if not name.endswith(".prof"):
                os.unlink(path)
        results = sum(1 for e in events if '"event": "result"' in e)
        for line in events:  # what did not pass, and why
            if line.startswith('{"event": "result"'):
                result = json.loads(line)["result"]
                if result["outcome"] in ("fail", "error"):
                    print(json.dumps({"event": "failed", "case": result["case_id"],
                                      "message": result["message"],
                                      "log": result["log"][-1500:]}))
        run: dict[str, Any] = next((json.loads(e) for e in events if e.startswith('{"event": "costs"')), {})
        out = {"event": "round", "label": label, "total": total, "cases": results,
               "run": run.get("clock", {}), "children": children}
        if profiled:
            out["profile"] = _profile_text(tmp)
        else:
            os.rmdir(tmp)
        print(json.dumps(out))
        sys.stdout.flush()


def _run_inside(argv: list[str], tmp: str, profiled: bool) -> int:
    payload_path = argv[0]
    from vfio_scenario.run import executor, guest

    if profiled:
        import cProfile

        child = executor._child

        def profiled_child(*args: Any) -> None:
            prof = cProfile.Profile()
            real_exit = os._exit

            def leave(code: int) -> None:
                prof.disable()
                prof.dump_stats(f"{tmp}/case-{os.getpid()}.prof")
                real_exit(code)

            os._exit = leave  # type: ignore[assignment]
            prof.enable()
            child(*args)

        executor._child = profiled_child  # type: ignore[assignment]
        prof = cProfile.Profile()
        prof.enable()
        code = guest.main([payload_path])
        prof.disable()
        prof.dump_stats(f"{tmp}/run.prof")
        return code
    clock = Clock()
    t0 = time.perf_counter()
    instrument(clock, tmp)
    # the child files: rename to .json as they are written
    import resource

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    import gc

    collection = clock.gc_timer("run")  # (a full collection walks the payload's cases too)
    gc.callbacks.append(collection)
    code = guest.main([payload_path])
    gc.callbacks.remove(collection)
    clock.spent["run: total (fork to done)"] += time.perf_counter() - t0
    clock.spent["run: minor faults (count)"] += (resource.getrusage(resource.RUSAGE_SELF)
                                                 .ru_minflt - faults0)
    clock.count["run: minor faults (count)"] += 1
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmPTE", "RssAnon")):
                key, value = line.split(":")
                clock.spent[f"run: {key} at the end (kB)"] = float(value.split()[0])
                clock.count[f"run: {key} at the end (kB)"] = 1
    clock.count["run: total (fork to done)"] += 1
    for name in os.listdir(tmp):
        if not name.endswith(".json"):
            os.rename(f"{tmp}/{name}", f"{tmp}/{name}.json")
    sys.stdout.write(json.dumps({"event": "costs", "clock": clock.dump()}) + "\n")
    return code


def _profile_text(tmp: str) -> str:
    import io
    import pstats

    text = io.StringIO()
    run = f"{tmp}/run.prof"
    cases = [f"{tmp}/{n}" for n in os.listdir(tmp) if n.startswith("case-")]
    if os.path.exists(run):
        text.write("=== the run process (its case processes' time is its waiting) ===\n")
        pstats.Stats(run, stream=text).sort_stats("tottime").print_stats(35)
        pstats.Stats(run, stream=text).sort_stats("cumulative").print_stats(35)
    if cases:
        text.write(f"=== the {len(cases)} case processes together ===\n")
        pstats.Stats(*cases, stream=text).sort_stats("tottime").print_stats(45)
        pstats.Stats(*cases, stream=text).sort_stats("cumulative").print_stats(45)
    for path in [run, *cases]:
        if os.path.exists(path):
            os.unlink(path)
    os.rmdir(tmp)
    return text.getvalue()


# --- on the host -----------------------------------------------------------------

def _table(rounds: list[dict[str, Any]]) -> None:
    """Per phase: its seconds per run (the median round, and the fastest round: the host's
    load inflates the guest's clock unevenly), calls per run, ms per case."""
    labels = sorted({k for r in rounds for k in r["run"]} |
                    {k for r in rounds for c in r["children"] for k in c})
    n_cases = statistics.median(r["cases"] for r in rounds) or 1
    fastest = min(rounds, key=lambda r: r["total"])

    def spent(r: dict[str, Any], label: str) -> tuple[float, int]:
        own = r["run"].get(label, [0.0, 0])
        return (own[0] + sum(c.get(label, [0.0, 0])[0] for c in r["children"]),
                own[1] + sum(c.get(label, [0.0, 0])[1] for c in r["children"]))

    print(f"{'phase (counts: faults, kB)':<46} {'median/run':>10} {'fastest':>9} "
          f"{'calls/run':>9} {'ms/case':>8} {'fastest':>8}")
    for label in labels:
        med = statistics.median(spent(r, label)[0] for r in rounds)
        calls = statistics.median(spent(r, label)[1] for r in rounds)
        best = spent(fastest, label)[0]
        print(f"{label:<46} {med:>10.3f} {best:>9.3f} {calls:>9.0f} "
              f"{med / n_cases * 1000:>8.1f} {best / n_cases * 1000:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=LIGHT)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true",
                        help="no profiled run (only the timed rounds)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.payload, args.rounds, profile=not args.no_profile)
        return
    from qemu_cpu import run_marked
    from vfio_scenario.run.testbed_run import guest_vfio_devices
    from vfio_scenario.testbed import Testbed
    from vs_kselftest import write_payload

    load = os.getloadavg()[0]
    me = str(Path(__file__).resolve())
    with Testbed(kernel=args.kernel) as testbed, \
            tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-") as tmp:
        bdfs = [b for b in guest_vfio_devices(testbed)]
        edu = [b for b in bdfs if testbed.run(
            ["cat", f"/sys/bus/pci/devices/{b}/device"]).stdout.strip() == "0x11e8"]
        stems = [f.stem for f in args.files]
        path = write_payload([str(f.resolve()) for f in args.files], Path(tmp), edu)
        lines, cpu, status = run_marked(
            testbed, [sys.executable, me, "--inside", "--payload", path,
                      "--rounds", str(args.rounds),
                      *(["--no-profile"] if args.no_profile else [])], timeout=1800, cwd=tmp)
    if status != 0:
        raise SystemExit(status)
    rounds = [json.loads(line) for line in lines if line.startswith('{"event": "round"')]
    for line in lines:
        if line.startswith('{"event": "failed"'):
            failed = json.loads(line)
            print(f"NOT PASSED {failed['case']}: {failed['message']}\n{failed['log']}")
    timed = [r for r in rounds if r["label"] != "profiled"]
    print(f"{', '.join(stems)} on {', '.join(edu)}; {timed[0]['cases'] if timed else 0} cases; "
          f"host load {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    for r in timed:
        print(f"  {r['label']}: {r['total']:.2f} s in the guest, QEMU CPU "
              f"{cpu.get(r['label'], 0.0):.2f} s")
    if timed:
        _table(timed)
    for r in rounds:
        if r.get("profile") and not args.no_profile:
            print(r["profile"])


if __name__ == "__main__":
    main()
