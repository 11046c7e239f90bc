"""`run --kernel PATCHED --baseline-kernel BASE`: the selection on two kernels, compared.

The selected cases run twice through the same host orchestration a plain `run` uses
(host.run_command), each time in a testbed VM of its own booting one of the kernels:
the base kernel first, then the patched one. Each run writes its reports beside the
paths asked for with `-base` / `-patched` before the suffix (reports/junit.xml →
reports/junit-base.xml, reports/junit-patched.xml; the journals journal-base.jsonl and
journal-patched.jsonl beside them), and the comparison (report.diff) is printed and
written as `-diff` beside --json; the patched run's HTML report carries it as its first
section. Exit status: the comparison's (1 on a regression or a new splat, else 0), or
2/3 when a run could not be made.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vfio_scenario.errors import UsageError

BASE, PATCHED = "base", "patched"
_NAMED = ("default", "debian")


def suffixed(path: str, suffix: str) -> str:
    """`reports/junit.xml` → `reports/junit-base.xml` (the suffix before the extension)."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{suffix}{p.suffix}"))


def check_kernels(patched: str, base: str) -> None:
    """UsageError when both name the same kernel (one spec, or one file twice)."""
    if patched == base:
        raise UsageError(f"--kernel and --baseline-kernel are both {patched!r}: "
                         "a comparison needs two different kernels")
    from vfio_scenario.testbed.assets import resolve_kernel

    if patched in _NAMED and base in _NAMED:
        return  # our build and Debian's are different files by construction
    images = []
    for spec in (patched, base):
        if spec not in _NAMED and not os.path.isfile(spec):
            raise UsageError(f"kernel {spec!r}: no such file (give default, debian or the "
                             "path of a bzImage)")
        images.append(resolve_kernel(spec).image)
    if os.path.samefile(images[0], images[1]):
        raise UsageError(f"--kernel {patched} and --baseline-kernel {base} are the same file "
                         f"({images[0]}): a comparison needs two different kernels")


def run_compare(args: argparse.Namespace) -> int:
    """Both runs, their reports, the comparison; the comparison's exit status."""
    from vfio_scenario.report.diff import compare, load_run, write_comparison
    from vfio_scenario.run.dispatch import run_command

    if args.device:
        raise UsageError("--baseline-kernel runs both kernels in testbed VMs; it cannot be "
                         "used with --device")
    if args.testbed == "never":
        raise UsageError("--baseline-kernel runs both kernels in testbed VMs; it cannot be "
                         "used with --testbed never")
    if args.format == "ktap":
        raise UsageError("--baseline-kernel prints two runs and their comparison; KTAP on "
                         "stdout holds one run: use --format text and the report files")
    check_kernels(args.kernel, args.baseline_kernel)
    from vfio_scenario.report.files import check_outputs

    check_outputs({"--json": suffixed(args.json, "diff") if args.json else None})
    journals = {}
    statuses = {}
    for side, kernel in ((BASE, args.baseline_kernel), (PATCHED, args.kernel)):
        one = argparse.Namespace(**vars(args))
        one.baseline_kernel = None
        one.kernel = kernel
        one.testbed = "always"
        one.own_testbed = True  # never the VM of `testbed up`: it boots another kernel
        one.junit_xml = suffixed(args.junit_xml, side)
        one.json = suffixed(args.json, side) if args.json else None
        # the patched run's page gets the comparison section once both runs are done
        one.html = suffixed(args.html, side) if args.html and side == BASE else None
        one.journal = str(Path(one.junit_xml).resolve().parent / f"journal-{side}.jsonl")
        journals[side] = one.journal
        print(f"== {side} run: kernel {kernel}; reports {one.junit_xml}", flush=True)
        statuses[side] = run_command(one)
        if statuses[side] not in (0, 1):  # interrupted, or nothing ran
            return statuses[side]
    print(f"== comparison: {journals[BASE]} → {journals[PATCHED]}", flush=True)
    comp = compare(load_run(journals[BASE]), load_run(journals[PATCHED]),
                   args.duration_factor, args.duration_min)
    sys.stdout.flush()
    return write_comparison(comp, suffixed(args.json, "diff") if args.json else None,
                            suffixed(args.html, PATCHED) if args.html else None)
