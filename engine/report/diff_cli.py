"""`vfio-scenario report diff BASE PATCHED`: what changed between two runs."""

from __future__ import annotations

import argparse
from typing import Any

from vfio_scenario.report.diff import DEFAULT_FACTOR, DEFAULT_MIN_CHANGE


def _factor(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = 0.0
    if not x > 1.0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number above 1 (e.g. 1.5)")
    return x


def _min_change(value: str) -> float:
    from vfio_scenario.language.units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def add_threshold_options(p: argparse.ArgumentParser) -> None:
    """--duration-factor and --duration-min (shared with `run --baseline-kernel`)."""
    p.add_argument("--duration-factor", type=_factor, default=DEFAULT_FACTOR, metavar="X",
                   help=f"a case is slower/faster when its duration changed by this factor "
                   f"(default {DEFAULT_FACTOR}) ...")
    p.add_argument("--duration-min", type=_min_change, default=DEFAULT_MIN_CHANGE,
                   metavar="DURATION", help="... and by more than this (default 50ms; "
                   "500us, 0.2s, 1 …)")


def register(rsub: argparse._SubParsersAction[Any]) -> None:
    """Add `report diff` beside `report merge`."""
    d = rsub.add_parser(
        "diff", help="compare two runs (base and patched kernel)",
        description="Compare two runs of the same cases, read from their JSON reports (--json) "
        "or journals (journal.jsonl): per case, the base → patched outcome and its class of "
        "change (regression, fix, new skip, no longer skipped, new case, removed case, new "
        "splat, slower, faster), then a one-line verdict. Cases are matched by id; ids whose "
        "matrix parameters differ only in order match. Exit status: 1 on a regression (not a "
        "known issue) or a new kernel splat, 0 otherwise, 2 on usage errors.")
    d.add_argument("base", metavar="BASE", help="JSON report or journal of the base run")
    d.add_argument("patched", metavar="PATCHED", help="JSON report or journal of the patched run")
    d.add_argument("--json", metavar="OUT", help="write the comparison as JSON here")
    d.add_argument("--html", metavar="OUT", help="write the patched run's HTML report with the "
                   "comparison as its first section here")
    add_threshold_options(d)
    d.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from vfio_scenario.report.diff import check_same_engine, compare, load_run, write_comparison
    from vfio_scenario.report.files import check_outputs

    check_outputs({"--json": args.json, "--html": args.html})
    base, patched = load_run(args.base), load_run(args.patched)
    check_same_engine(base, patched)
    comp = compare(base, patched, args.duration_factor, args.duration_min)
    return write_comparison(comp, args.json, args.html)
