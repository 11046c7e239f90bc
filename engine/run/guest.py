"""Entry point of a run inside the testbed: `python -m vfio_scenario.run.guest PAYLOAD`.

Loads the cases the host compiled and selected (vfio_scenario.run.payload), probes
this kernel and the devices, plans and runs the cases, and prints one JSON event per
line on stdout for the host, which writes the reports.

Start-up time is what a user waits for before the first step, on a guest CPU that
TCG makes some 20× slower than the host's: nothing here imports the YAML loader, the
template engine or the installed packages' metadata, the operation models are imported
without building their validators (`defer_build`), and each device is probed (opened,
which can cost a reset) only when the planner first considers it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from vfio_scenario.run import payload


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: python -m vfio_scenario.run.guest PAYLOAD\n")
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
            cases = payload.read_cases(f)
        use_drivers(header.drivers)
        caps = probe_host(header.devices or None)
    except (OSError, VfioScenarioError) as exc:
        emit({"event": "fatal", "message": str(exc)})
        return 3
    emit({"event": "hello", "cases": len(cases),
          "properties": {"kernel": caps.kernel_release,
                         "iommu_modes": ",".join(m for m, why in caps.iommu_modes.items() if not why),
                         "devices": ",".join(f"{d.bdf}={d.ids}" for d in caps.devices)}})
    planned = plan_each(cases, caps, header.iommu_modes or None)
    run_planned(planned, caps, RunOptions(timeout_multiplier=header.timeout_multiplier,
                                         kernel_watch=header.kernel_watch), emit,
                fail_fast=header.fail_fast)
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
