"""Entry point of a run inside the testbed: `python -m vfio_scenario.run.guest PAYLOAD`.

Loads the cases the host compiled and selected (vfio_scenario.run.payload), probes
this kernel and the devices, plans and runs the cases, and prints one JSON event per
line on stdout for the host, which writes the reports.

With `--queue` (`run --jobs N`: one guest engine per VM, one queue on the host) the
cases run in the order the host hands them out: the engine prints {"event": "ready"}
and reads the next case's index in the payload from stdin, one per line, until end
of file.

Start-up time is what a user waits for before the first step, on a guest CPU that
TCG makes some 20× slower than the host's: nothing here imports the YAML loader, the
template engine, pydantic (the models are classes the host described and compiled:
run/guest_models.py) or the installed packages' metadata, and each device is probed
(opened, which can cost a reset) only when the planner first considers it. A process
that has done all of that once forks runs from there (run/zygote.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from vfio_scenario.run import guest_models, payload


def in_guest() -> bool:
    """True inside the testbed's guest (every command run there has VFIO_SCENARIO_GUEST=1)."""
    return os.environ.get("VFIO_SCENARIO_GUEST") == "1"


def emit(event: dict[str, Any]) -> None:
    """Print the event for the host. A case's result is held in stdout's buffer: the
    run sends it when the next case starts (run_planned), and that case's `start` (or
    the run's next event, `ready`, `done`) flushes both in one write (one system call
    and one wake-up of the host's reader per case instead of two)."""
    sys.stdout.write(json.dumps(event) + "\n")
    if event.get("event") != "result":
        sys.stdout.flush()


def from_host(cases: list[Any], lines: Iterator[str]) -> Iterator[Any]:
    """The cases the host hands out: "ready", then the index read from `lines`, until
    they end; an index that is not one of the payload's is the host's bug: fatal."""
    while True:
        emit({"event": "ready"})
        line = next(lines, "")
        if not line:
            return
        try:
            yield cases[int(line)]
        except (ValueError, IndexError):
            raise SystemExit(f"the host sent {line.strip()!r}, not a case of the payload") \
                from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    queue = args[1:] == ["--queue"]
    if queue:
        args = args[:1]
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: python -m vfio_scenario.run.guest PAYLOAD [--queue]\n")
        return 2
    from vfio_scenario.drivers.base import use_drivers
    from vfio_scenario.errors import VfioScenarioError
    from vfio_scenario.run.interpreter import RunOptions
    from vfio_scenario.run.plan import plan_each
    from vfio_scenario.run.probe import probe_host
    from vfio_scenario.run.session import run_planned

    try:
        with open(args[0], "rb") as f:
            header = payload.read_header(f)
            # the guest's models, before the operations import them (no pydantic here)
            models = guest_models.install(header.models, header.models_code)
            cases = payload.read_cases(f, models)
        use_drivers(header.drivers)
        caps = probe_host(header.devices or None)
        events = emit
        if header.coverage_per_case:
            from vfio_scenario.run import gcov

            events = gcov.PerCase(emit)
    except (OSError, VfioScenarioError) as exc:
        emit({"event": "fatal", "message": str(exc)})
        return 3
    emit({"event": "hello", "cases": len(cases),
          "properties": {"kernel": caps.kernel_release,
                         "iommu_modes": ",".join(m for m, why in caps.iommu_modes.items() if not why),
                         "devices": ",".join(f"{d.bdf}={d.ids}" for d in caps.devices)}})
    chosen = from_host(cases, iter(sys.stdin.readline, "")) if queue else cases
    planned = plan_each(chosen, caps, header.iommu_modes or None)
    run_planned(planned, caps, RunOptions(timeout_multiplier=header.timeout_multiplier,
                                         kernel_watch=header.kernel_watch), events,
                fail_fast=header.fail_fast)
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
