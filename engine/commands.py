"""Handlers of the scenario commands: validate, list, schema (run and devices join them)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vfio_scenario.errors import ExitCode, NothingSelected
from vfio_scenario.language.compile import compile_or_raise, compile_paths
from vfio_scenario.language.schema import json_schema_text


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the scenario commands to the main parser."""
    p = sub.add_parser(
        "validate",
        help="check scenario files; every error as path:line:col",
        description="Check scenario files without touching the host. Prints every error of "
        "every file as path:line:col: message; exits 0 when all are valid, 2 otherwise.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="scenario files or directories")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "list",
        help="print the case ids after matrix expansion",
        description="Expand scenarios (matrix, implicit iommu_mode and driver axes) and print one case id "
        "per line. Exits 5 when the paths hold no scenario.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="scenario files or directories")
    p.add_argument("--tags", action="store_true", help="show each case's tags after its id")
    p.add_argument("--driver", metavar="NAME",
                   help="only the cases that run on scenario driver NAME (without devices, "
                   "the `driver` axis holds every registered driver)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of the scenario language",
        description="Print the JSON Schema made from the language's models "
        "(schemas/scenario.schema.json is the committed copy).",
    )
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=cmd_schema)

    from vfio_scenario.run import cli as run_cli

    run_cli.register(sub)


def cmd_validate(args: argparse.Namespace) -> int:
    compiled = compile_paths(args.paths)
    for err in compiled.errors:
        print(err, file=sys.stderr)
    if compiled.errors:
        files = len({e.location.path for e in compiled.errors})
        print(f"{len(compiled.errors)} error(s) in {files} file(s)", file=sys.stderr)
        return ExitCode.USAGE
    if not compiled.files:
        print(f"vfio-scenario: no scenario files (*.yaml, *.yml) found in {', '.join(args.paths)}",
              file=sys.stderr)
        return ExitCode.USAGE
    scenarios = len({(c.file, c.scenario) for c in compiled.cases})
    print(f"{len(compiled.files)} file(s), {scenarios} scenario(s), {len(compiled.cases)} case(s): ok")
    return ExitCode.OK


def cmd_list(args: argparse.Namespace) -> int:
    compiled = compile_or_raise(args.paths, need_cases=True)
    cases = compiled.cases
    if args.driver:
        cases = [c for c in cases if c.driver == args.driver]
        if not cases:
            raise NothingSelected(f"no case runs on scenario driver {args.driver}")
    for case in cases:
        suffix = f"  [{', '.join(case.tags)}]" if args.tags and case.tags else ""
        print(f"{case.id}{suffix}")
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    text = json_schema_text()
    if args.output:
        from vfio_scenario.report.files import atomic_write, check_writable

        check_writable("-o", args.output)
        atomic_write(args.output, text)
    else:
        sys.stdout.write(text)
    return ExitCode.OK
