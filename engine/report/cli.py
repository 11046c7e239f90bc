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
    m.add_argument("files", nargs="+", metavar="FILE",
                   help="JSON reports or journals; with --coverage also lcov tracefiles (.info)")
    m.add_argument("--junit-xml", metavar="OUT", help="write the merged JUnit XML here")
    m.add_argument("--html", metavar="OUT", help="write the merged HTML report here")
    m.add_argument("--json", metavar="OUT", help="write the merged JSON report here")
    m.add_argument("--ktap", metavar="OUT", help="write the merged results as KTAP here")
    m.add_argument("--coverage", metavar="DIR",
                   help="add up the kernel coverage of the inputs (the tracefiles their JSON "
                   "reports name, and .info files given) into DIR/coverage.info and "
                   "DIR/html/index.html, the summary into --json")
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
    if not targets and not args.ktap and not args.coverage:
        raise UsageError("report merge: name at least one output (--junit-xml, --html, --json, "
                         "--ktap, --coverage)")
    check_outputs({"--junit-xml": args.junit_xml, "--json": args.json, "--html": args.html,
                   "--ktap": args.ktap})
    tracefiles = [f for f in args.files if f.endswith(".info")]
    if tracefiles and not args.coverage:
        raise UsageError(f"report merge: {tracefiles[0]} is a tracefile; name --coverage DIR")
    runs = [load_results(f) for f in args.files if not f.endswith(".info")]
    run = merge_runs(runs)
    problem = None
    if args.coverage:
        run.coverage, problem = _merge_coverage(runs, tracefiles, args.coverage)
    write_reports(run, targets)
    if args.ktap:
        atomic_write(args.ktap, ktap_document(run))
    print(f"merged {len(args.files)} files: {summary_line(run)}")
    if run.coverage is not None:
        from vfio_scenario.report.coverage import console_lines

        print("\n".join(console_lines(run.coverage, files=False)))
    if problem is not None:
        raise problem  # exit 3 naming the file; the other reports are written
    return exit_code(run)


def _merge_coverage(runs: list[Any], tracefiles: list[str], out_dir: str) -> tuple[Any, Any]:
    from pathlib import Path

    from vfio_scenario.report.coverage import merge_coverage, require_lcov

    require_lcov()
    inputs = [Path(r.coverage["tracefile"]) for r in runs
              if r.coverage and r.coverage.get("tracefile")] + [Path(t) for t in tracefiles]
    if not inputs:
        raise UsageError("report merge --coverage: no input has coverage (a JSON report of a "
                         "--coverage run, or a .info tracefile)")
    return merge_coverage(inputs, Path(out_dir), "vfio-scenario kernel coverage (merged)")
