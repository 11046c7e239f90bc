"""`vfio-scenario report merge`: join shard results into one JUnit/HTML/JSON report."""

from __future__ import annotations

import argparse
from typing import Any

from vfio_scenario.errors import UsageError


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
    m.set_defaults(func=cmd_merge)
    from vfio_scenario.report import diff_cli

    diff_cli.register(rsub)


def cmd_merge(args: argparse.Namespace) -> int:
    from vfio_scenario.report.console import exit_code, summary_line
    from vfio_scenario.report.files import atomic_write, check_outputs
    from vfio_scenario.report.ktap import ktap_document
    from vfio_scenario.report.merge import load_results, merge_runs
    from vfio_scenario.report.sink import write_reports, writers

    targets = writers(args.junit_xml, args.json, args.html)
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
