"""Command line: parses arguments and calls into the layers; nothing else.

Every command handler returns an exit status; every deliberate error is a
VfioScenarioError and becomes a message plus its exit code here, in one place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vfio_scenario import __version__
from vfio_scenario.errors import ExitCode, ScenarioErrors, VfioScenarioError


def build_parser() -> argparse.ArgumentParser:
    from vfio_scenario import commands
    from vfio_scenario.report import cli as report_cli
    from vfio_scenario.testbed import cli as testbed_cli

    parser = argparse.ArgumentParser(
        prog="vfio-scenario",
        description="Declarative test engine for Linux VFIO: validate and run YAML scenarios.",
    )
    parser.add_argument("--version", action="version", version=f"vfio-scenario {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.register(sub)
    testbed_cli.register(sub)
    report_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except ScenarioErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return exc.exit_code
    except VfioScenarioError as exc:
        print(f"vfio-scenario: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vfio-scenario: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return ExitCode.OK
    except OSError as exc:  # what no command foresaw (a full disk): a message, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vfio-scenario: {where}{exc.strerror or exc}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    return status


if __name__ == "__main__":
    sys.exit(main())
