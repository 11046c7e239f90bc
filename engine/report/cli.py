"""`vfio-scenario report merge`: join shard results into one JUnit/HTML/JSON report."""

from __future__ import annotations

import argparse
from typing import Any

from vfio_scenario.errors import UsageError
from vfio_scenario.report.junit import DEFAULT_MAX_BYTES, JunitOptions

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_size(value: str) -> int:
    """`20M`, `512K`, `1G`, `30000000` or `0` as a number of bytes (K/M/G: powers of 1024)."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in "KMG" else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a size like 20M, 512K or 0")
    return int(number) * _UNITS[unit]


def add_junit_options(p: argparse.ArgumentParser) -> None:
    """The options of the JUnit document (run and report merge take them)."""
    p.add_argument("--junit-file-attribute", action="store_true",
                   help="add a `file` attribute (the scenario file) to every testcase, as "
                   "GitLab reads it (Jenkins' schema allows it on suites only)")
    p.add_argument("--junit-max-size", type=byte_size, default=DEFAULT_MAX_BYTES,
                   metavar="SIZE",
                   help="cut logs in the JUnit file so that it stays under SIZE bytes (K, M, G "
                   f"suffixes; 0: no cap; default {DEFAULT_MAX_BYTES >> 20}M, GitLab refuses "
                   "files over 30 MB)")


def junit_options(args: argparse.Namespace) -> JunitOptions:
    return JunitOptions(case_file=args.junit_file_attribute, max_bytes=args.junit_max_size)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `report` (with `merge`) to the main parser."""
    p = sub.add_parser("report", help="work with result files (merge shards)",
                       description="Work with result files of earlier runs.")
    rsub = p.add_subparsers(dest="report_command", metavar="SUBCOMMAND", required=True)
    m = rsub.add_parser(
        "merge", help="merge shard results into one report",
        description="Merge the results of several runs (e.g. the shards of --shard I/N), read "
        "from their JSON reports (--json) or journals (journal.jsonl beside the JUnit file), "
        "into one JUnit XML, HTML and/or JSON report. A case present in several inputs keeps "
        "its last result. Exit status as for `run`: 0 all passed or skipped, 1 a case failed "
        "or errored, 5 no case.")
    m.add_argument("files", nargs="+", metavar="FILE", help="JSON reports or journals")
    m.add_argument("--junit-xml", metavar="OUT", help="write the merged JUnit XML here")
    m.add_argument("--html", metavar="OUT", help="write the merged HTML report here")
    m.add_argument("--json", metavar="OUT", help="write the merged JSON report here")
    m.add_argument("--ktap", metavar="OUT", help="write the merged results as KTAP here")
    add_junit_options(m)
    m.set_defaults(func=cmd_merge)
    from vfio_scenario.report import diff_cli

    diff_cli.register(rsub)


def cmd_merge(args: argparse.Namespace) -> int:
    from vfio_scenario.report.console import exit_code, summary_line
    from vfio_scenario.report.files import atomic_write, check_outputs
    from vfio_scenario.report.ktap import ktap_document
    from vfio_scenario.report.merge import load_results, merge_runs
    from vfio_scenario.report.sink import write_reports, writers

    targets = writers(args.junit_xml, args.json, args.html, junit_options(args))
    if not targets and not args.ktap:
        raise UsageError("report merge: name at least one output (--junit-xml, --html, --json, "
                         "--ktap)")
    check_outputs({"--junit-xml": args.junit_xml, "--json": args.json, "--html": args.html,
                   "--ktap": args.ktap})
    run = merge_runs([load_results(f) for f in args.files])
    write_reports(run, targets)
    if args.ktap:
        atomic_write(args.ktap, ktap_document(run))
    print(f"merged {len(args.files)} files: {summary_line(run)}")
    return exit_code(run)
