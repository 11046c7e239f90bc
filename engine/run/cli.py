"""`run` and `devices` commands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vfio_scenario.language.models import BDF, IOMMU_MODES
from vfio_scenario.report.cli import add_junit_options


def _bdf(value: str) -> str:
    if not BDF.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a PCI address like 0000:00:03.0")
    return value


def _multiplier(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = 0.0
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return x


def _jobs(value: str) -> int:
    """--jobs N (a positive integer) or `auto`: the host's cores this process may use."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number or 'auto'")
    return n


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `run` and `devices` to the main parser."""
    p = sub.add_parser(
        "run",
        help="run scenarios for real (in the QEMU testbed when the host has no VFIO device)",
        description="Run every selected case against the kernel's VFIO uAPI and write reports. "
        "Without --device and with no VFIO device on the host, the embedded QEMU testbed boots "
        "and the run happens inside it. Exit status: 0 all passed (skips allowed), 1 a case "
        "failed or errored, 2 scenario or usage error, 3 no device/testbed, 5 nothing selected.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", default=["scenarios"],
                   help="scenario files or directories (default: scenarios)")
    p.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="select cases whose id or tags match: words with and/or/not/()")
    p.add_argument("--tag", action="append", default=[], metavar="T",
                   help="select cases carrying tag T (repeatable: any of them)")
    p.add_argument("--device", action="append", default=[], metavar="BDF", type=_bdf,
                   help="run on this host's device (repeatable); no testbed")
    p.add_argument("--iommu-mode", action="append", default=[], choices=IOMMU_MODES,
                   metavar="MODE", help="run only these IOMMU modes (repeatable)")
    p.add_argument("--driver", metavar="NAME",
                   help="select the cases that run on scenario driver NAME (its `driver` "
                   "axis value, or `requires: {driver: NAME}`)")
    p.add_argument("--testbed", choices=("auto", "never", "always"), default="auto",
                   help="auto: boot the testbed when no --device and no VFIO device here")
    p.add_argument("--kernel", default="default", metavar="default|debug|coverage|debian|PATH",
                   help="testbed guest kernel (default: the project's own build; debug: it "
                        "with lockdep, KASAN, UBSAN, kmemleak … on; coverage: it with gcov "
                        "on VFIO, iommufd and the IOMMU drivers, for --coverage)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="testbed accelerator (auto: KVM when a probe boot proves it works)")
    p.add_argument("--junit-xml", default="reports/junit.xml", metavar="F")
    p.add_argument("--json", metavar="F", help="also write a JSON report")
    p.add_argument("--html", metavar="F", help="also write a self-contained HTML report")
    add_junit_options(p)
    p.add_argument("--format", choices=("text", "ktap"), default="text",
                   help="console output: progress lines, or KTAP v1 for kernel CI")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based)")
    p.add_argument("--shard-by", choices=("id", "duration"), default="id",
                   help="id: deal cases by the hash of their id (equal counts); duration: "
                        "balance the expected time of --durations FILE")
    p.add_argument("--durations", metavar="FILE",
                   help="journal or JSON report of an earlier run: the expected time of "
                        "each case, for --shard-by duration")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N|auto",
                   help="run in N testbed VMs at once, each taking the next case from one "
                        "queue (auto: one per host core); reports as of one VM")
    p.add_argument("--timeout-multiplier", type=_multiplier, default=1.0, metavar="X",
                   help="scale every timeout (slow emulation)")
    p.add_argument("--fail-fast", action="store_true", help="stop after the first failure")
    p.add_argument("--no-kernel-watch", dest="kernel_watch", action="store_false",
                   help="do not scan each case's kernel log for splats (WARN, BUG, KASAN, "
                        "lockdep …) nor compare its taint")
    p.add_argument("--resume", action="store_true",
                   help="skip cases the journal of the previous run already holds")
    g = p.add_argument_group("kernel line coverage (a gcov kernel: --kernel coverage)")
    g.add_argument("--coverage", metavar="DIR",
                   help="reset the testbed kernel's gcov counters before the first case, "
                   "collect them after the last and write DIR/coverage.info (lcov), "
                   "DIR/html/index.html and a per-file summary (console, JSON report)")
    g.add_argument("--coverage-per-case", action="store_true",
                   help="with --coverage: reset and collect around each case (slower), so the "
                   "HTML says which cases reach a line and the JSON has each scenario file's "
                   "numbers")
    _compare_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "devices",
        help="list PCI devices with IOMMU group, bound driver and scenario driver",
        description="List this host's PCI devices: IOMMU group, bound kernel driver, the "
        "scenario driver that matches and how far it is proven (real-device, testbed, model-tested, untested).",
    )
    p.add_argument("--all", action="store_true", help="also devices no scenario driver matches")
    p.set_defaults(func=cmd_devices)


def _compare_options(p: argparse.ArgumentParser) -> None:
    """--baseline-kernel (with the comparison's thresholds) and --known-issues."""
    from vfio_scenario.report.diff_cli import add_threshold_options

    g = p.add_argument_group("comparing two kernels, known issues")
    g.add_argument("--baseline-kernel", metavar="default|debian|PATH",
                   help="also run the selection on this kernel first (in a VM of its own), "
                   "then on --kernel, and compare: reports get -base/-patched suffixes, the "
                   "comparison -diff; exit 1 on a regression or a new kernel splat")
    add_threshold_options(g)  # type: ignore[arg-type]  # a group takes the same arguments
    g.add_argument("--known-issues", metavar="FILE",
                   help="YAML list of known issues (case id pattern, reason, url, kernels): "
                   "a listed case that fails is reported as xfail and does not fail the run")


def cmd_run(args: argparse.Namespace) -> int:
    from vfio_scenario.run.dispatch import run_command

    status: int = run_command(args)
    return status


def cmd_devices(args: argparse.Namespace) -> int:
    from vfio_scenario.run.devices import list_devices

    return list_devices(show_all=args.all)

