#!/usr/bin/env python3
"""What a case process costs by itself in the testbed's guest, against the forking
process's heap: fork, the child's exit, the parent's wait, and the copy-on-write faults
on both sides, with nothing of a case run.

Boots the testbed once, compiles scenario files on the host for the guest's devices
(untimed, as benchmarks/guest_costs.py does), and inside the guest, in one process:

  warm     the engine imported, the payload's models made, the operations registered
           (run/zygote.py's preload: what a run process holds before it reads its cases);
  +cases   the same after reading the payload's cases (what a run process forks its
           case processes from today).

For each state, `--forks` times: the process forks a child that exits at once
(os._exit), and waits for it on a pidfd, as the executor does; then the same with a
child that touches the engine as a case process's start does (`touch`: its module
dicts and functions, what the reference counts write to). Printed per state: the
process's anonymous memory (RssAnon), milliseconds per fork+exit+wait in the guest
(median), the minor faults per fork in the parent (its pages written after the fork)
and in the child, and QEMU's CPU seconds per fork on the host (benchmarks/qemu_cpu.py).

    .venv/bin/python benchmarks/fork_cost.py [--kernel default] [--forks 40] [FILE ...]

Default file: scenarios/kselftest/iommufd_test.yaml (a large payload: its unrolled loops).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import select
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DEFAULT = [ROOT / "scenarios" / "kselftest" / "iommufd_test.yaml"]


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1])
    return 0


def _touch() -> None:
    """What a case process's start reads: the engine's modules and their functions."""
    for name, module in list(sys.modules.items()):
        if name.startswith("vfio_scenario") and module is not None:
            for value in list(vars(module).values()):
                if callable(value):
                    _ = value.__name__


def _forks(n: int, touch: bool) -> dict[str, float]:
    times, parent_faults, child_faults = [], [], []
    r, w = os.pipe()
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if touch:
                _touch()
            os.write(w, str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                     .encode().ljust(16))
            os._exit(0)
        gc.unfreeze()
        pidfd = os.pidfd_open(pid)
        select.select([pidfd], [], [], 30.0)
        os.close(pidfd)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t0)
        child_faults.append(int(os.read(r, 16)))
        parent_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    os.close(r)
    os.close(w)
    return {"ms": statistics.median(times) * 1000,
            "parent_faults": statistics.median(parent_faults),
            "child_faults": statistics.median(child_faults)}


def inside(payload_path: str, forks: int) -> None:
    from qemu_cpu import mark
    from vfio_scenario.run import guest_models, payload, zygote

    zygote.preload(payload_path)
    held = []
    for state in ("warm", "+cases"):
        if state == "+cases":
            with open(payload_path, "rb") as f:
                header = payload.read_header(f)
                models = guest_models.install(header.models, header.models_code)
                held = payload.read_cases(f, models)
        for touch in (False, True):
            label = f"{state} {'touch' if touch else 'exit'}"
            mark(label, "begin")
            row = _forks(forks, touch)
            mark(label, "end")
            print(json.dumps({"event": "row", "label": label, "rss_anon_kb": _rss_anon(),
                              "cases": len(held), **row}))
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--forks", type=int, default=40)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.payload, args.forks)
        return
    from qemu_cpu import run_marked
    from vfio_scenario.run.testbed_run import guest_vfio_devices
    from vfio_scenario.testbed import Testbed
    from vs_kselftest import write_payload

    load = os.getloadavg()[0]
    me = str(Path(__file__).resolve())
    with Testbed(kernel=args.kernel) as testbed, \
            tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-") as tmp:
        bdfs = list(guest_vfio_devices(testbed))
        stems = [f.stem for f in args.files]
        programs = ["iommufd" if s == "iommufd_test" else s for s in stems]
        path = write_payload(programs, Path(tmp), bdfs)
        lines, cpu, status = run_marked(
            testbed, [sys.executable, me, "--inside", "--payload", path,
                      "--forks", str(args.forks)], timeout=1800, cwd=tmp)
    if status != 0:
        raise SystemExit(status)
    print(f"{', '.join(stems)}; {args.forks} forks per row; host load {load:.1f} at the "
          f"start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'state':<16} {'RssAnon kB':>10} {'ms/fork':>8} {'QEMU ms/fork':>12} "
          f"{'parent faults':>13} {'child faults':>12}")
    for line in lines:
        if line.startswith('{"event": "row"'):
            row = json.loads(line)
            print(f"{row['label']:<16} {row['rss_anon_kb']:>10} {row['ms']:>8.1f} "
                  f"{cpu.get(row['label'], 0.0) / args.forks * 1000:>12.1f} "
                  f"{row['parent_faults']:>13.0f} {row['child_faults']:>12.0f}")


if __name__ == "__main__":
    main()
