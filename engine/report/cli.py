"""`vfio-scenario report merge|kcidb|lava|diff`: join shard results into one report, or
write them for KCIDB or a LAVA test shell."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from vfio_scenario.errors import UsageError
from vfio_scenario.report.junit import DEFAULT_MAX_BYTES, JunitOptions
from vfio_scenario.results import RunResult

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
    add_junit_options(m)
    m.set_defaults(func=cmd_merge)
    _register_kcidb(rsub)
    _register_lava(rsub)
    from vfio_scenario.report import diff_cli

    diff_cli.register(rsub)


def cmd_merge(args: argparse.Namespace) -> int:
    from vfio_scenario.report.console import exit_code, summary_line
    from vfio_scenario.report.files import atomic_write, check_outputs
    from vfio_scenario.report.ktap import ktap_document
    from vfio_scenario.report.merge import load_results, merge_runs
    from vfio_scenario.report.sink import write_reports, writers

    targets = writers(args.junit_xml, args.json, args.html, JunitOptions.of(args))
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


def _register_kcidb(rsub: argparse._SubParsersAction[Any]) -> None:
    k = rsub.add_parser(
        "kcidb", help="write results as KCIDB JSON (kernel CI database)",
        description="Write the results of one or more runs (JSON reports or journals, merged "
        "as by `report merge`) as one KCIDB I/O document (schema v5.3): a checkout and a "
        "build for the run (or the ids of ones another CI system submitted) and one test per "
        "case. Cases listed by --expected that no input holds are tests with status MISS.")
    k.add_argument("files", nargs="+", metavar="FILE", help="JSON reports or journals")
    k.add_argument("-o", "--output", metavar="OUT", help="write here (default: standard output)")
    k.add_argument("--origin", default="vfio_scenario",
                   help="the submitting CI system's name: lowercase letters, digits, _ "
                   "(default: vfio_scenario)")
    k.add_argument("--run-id", default="", metavar="ID",
                   help="makes this run's ids unique (default: a digest of the run's start "
                   "and properties), e.g. the CI pipeline id")
    k.add_argument("--checkout-id", default="", metavar="ORIGIN:ID",
                   help="the tests' build belongs to this existing checkout")
    k.add_argument("--build-id", default="", metavar="ORIGIN:ID",
                   help="the tests belong to this existing build (no checkout or build written)")
    k.add_argument("--tree-name", default="", metavar="NAME", help="the checkout's tree name")
    k.add_argument("--git-repository-url", default="", metavar="URL",
                   help="the checkout's repository (https://…)")
    k.add_argument("--git-commit-hash", default="", metavar="SHA1",
                   help="the checkout's commit (40 hex digits)")
    k.add_argument("--git-repository-branch", default="", metavar="BRANCH",
                   help="the checkout's branch")
    k.add_argument("--expected", metavar="FILE",
                   help="case ids that should have run, one per line (`vfio-scenario list "
                   "PATHS > FILE`): each one no input holds is a MISS")
    k.set_defaults(func=cmd_kcidb)


def _register_lava(rsub: argparse._SubParsersAction[Any]) -> None:
    m = rsub.add_parser(
        "lava", help="write results as lava-test-case commands",
        description="Write the results of one or more runs (JSON reports or journals, merged "
        "as by `report merge`) as a shell script of `lava-test-set start FILE`, "
        "`lava-test-case NAME --result pass|fail|skip --measurement SECONDS --units seconds` "
        "and `lava-test-set stop` lines, for a LAVA test shell to run.")
    m.add_argument("files", nargs="+", metavar="FILE", help="JSON reports or journals")
    m.add_argument("-o", "--output", metavar="OUT", help="write here (default: standard output)")
    m.set_defaults(func=cmd_lava)


def _emit(path: str | None, text: str) -> None:
    from vfio_scenario.report.files import atomic_write, check_writable

    if path:
        check_writable("-o", path)
        atomic_write(path, text)
    else:
        sys.stdout.write(text)


def _merged(files: list[str]) -> RunResult:
    from vfio_scenario.report.merge import load_results, merge_runs

    return merge_runs([load_results(f) for f in files])


def _check_kcidb_args(args: argparse.Namespace) -> None:
    from vfio_scenario.report.kcidb import ORIGIN

    if not ORIGIN.match(args.origin):
        raise UsageError(f"--origin {args.origin!r}: only lowercase letters, digits and _")
    for option in ("checkout_id", "build_id"):
        value = getattr(args, option)
        if value and not re.match(r"[a-z0-9_]+:[^\x00]*\Z", value):
            raise UsageError(f"--{option.replace('_', '-')} {value!r}: not ORIGIN:ID (ORIGIN of "
                             "lowercase letters, digits and _)")
    if args.git_commit_hash and not re.fullmatch(r"[0-9a-f]{40}", args.git_commit_hash):
        raise UsageError(f"--git-commit-hash {args.git_commit_hash!r}: not 40 lowercase hex "
                         "digits")
    if args.git_repository_url and not args.git_repository_url.startswith("https://"):
        raise UsageError(f"--git-repository-url {args.git_repository_url!r}: KCIDB takes "
                         "https:// URLs only")


def _expected_ids(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--expected {path}: cannot read: {exc}") from None
    return [line.split("  [", 1)[0].strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def cmd_kcidb(args: argparse.Namespace) -> int:
    from vfio_scenario.report.kcidb import KcidbOptions, kcidb_document, kcidb_text

    _check_kcidb_args(args)
    expected = _expected_ids(args.expected) if args.expected else None
    options = KcidbOptions(origin=args.origin, run_id=args.run_id, checkout_id=args.checkout_id,
                           build_id=args.build_id, tree_name=args.tree_name,
                           git_repository_url=args.git_repository_url,
                           git_commit_hash=args.git_commit_hash,
                           git_repository_branch=args.git_repository_branch)
    _emit(args.output, kcidb_text(kcidb_document(_merged(args.files), options, expected)))
    return 0


def cmd_lava(args: argparse.Namespace) -> int:
    from vfio_scenario.report.lava import lava_script

    _emit(args.output, lava_script(_merged(args.files)))
    return 0
