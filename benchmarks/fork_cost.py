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

  C        a small C program (built on the host with cc) doing the same, fork, the
           child's _exit(0), a wait on a pidfd: what the kernel selftests' harness pays
           per TEST (tools/testing/selftests/kselftest_harness.h forks each test), the
           floor a C program's case has and ours is compared with.

For each Python state, `--forks` times: the process forks a child that exits at once
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


C_FORKS = r"""
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	int n = atoi(argv[1]), i;
	double *ms = calloc(n, sizeof(*ms));
	struct rusage ru;

	for (i = 0; i < n; i++) {
		struct timespec a, b;
		struct pollfd p = { .events = POLLIN };
		pid_t pid;

		clock_gettime(CLOCK_MONOTONIC, &a);
		pid = fork();
		if (pid == 0)
			_exit(0);
		p.fd = syscall(SYS_pidfd_open, pid, 0);
		poll(&p, 1, 30000);
		close(p.fd);
		waitpid(pid, NULL, 0);
		clock_gettime(CLOCK_MONOTONIC, &b);
		ms[i] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
	}
	qsort(ms, n, sizeof(*ms), cmp);
	getrusage(RUSAGE_CHILDREN, &ru);  /* the children's faults, all n of them */
	printf("%f %ld\n", ms[n / 2], ru.ru_minflt / n);
	return 0;
}
"""


def build_c(out: Path) -> Path:
    """The C fork loop, built once into `out` (the host's cache, which the guest sees)."""
    import hashlib
    import subprocess

    binary = out / f"fork_cost_c-{hashlib.sha256(C_FORKS.encode()).hexdigest()[:12]}"
    if not binary.exists():
        out.mkdir(parents=True, exist_ok=True)
        source = out / "fork_cost_c.c"
        source.write_text(C_FORKS)
        subprocess.run(["cc", "-O2", "-Wall", str(source), "-o", str(binary)], check=True)
    return binary


def _c_forks(binary: str, n: int) -> dict[str, float]:
    import subprocess

    out = subprocess.run([binary, str(n)], capture_output=True, text=True, check=True)
    ms, child_faults = out.stdout.split()
    return {"ms": float(ms), "parent_faults": 0.0, "child_faults": float(child_faults)}


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


def inside(payload_path: str, forks: int, c_binary: str) -> None:
    from qemu_cpu import mark
    from vfio_scenario.run import guest_models, payload, zygote

    mark("C", "begin")
    row = _c_forks(c_binary, forks)
    mark("C", "end")
    print(json.dumps({"event": "row", "label": "C", "rss_anon_kb": 0, "cases": 0, **row}))
    sys.stdout.flush()
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
    parser.add_argument("--c-binary", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.payload, args.forks, args.c_binary)
        return
    from qemu_cpu import run_marked
    from vfio_scenario.run.testbed_run import guest_vfio_devices
    from vfio_scenario.testbed import Testbed
    from vs_kselftest import cache_dir, write_payload

    c_binary = build_c(cache_dir())
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
                      "--forks", str(args.forks), "--c-binary", str(c_binary)],
            timeout=1800, cwd=tmp)
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
