"""Entry point of a run inside the testbed: `python -m vfio_scenario.run.guest`.

Compiles the scenarios, keeps the cases the host selected (by id, in its order),
probes this kernel, plans and runs them, and prints one JSON event per line on
stdout for the host, which writes the reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vfio_scenario.language.compile import compile_paths
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.plan import plan
from vfio_scenario.run.probe import probe_host
from vfio_scenario.run.session import run_planned


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vfio_scenario.run.guest")
    p.add_argument("paths", nargs="+")
    p.add_argument("--ids", required=True, help="file with the case ids to run, one per line")
    p.add_argument("--device", action="append", default=[])
    p.add_argument("--iommu-mode", action="append", default=[])
    p.add_argument("--timeout-multiplier", type=float, default=1.0)
    p.add_argument("--fail-fast", action="store_true")
    args = p.parse_args(argv)
    with open(args.ids) as f:
        wanted = [line.strip() for line in f if line.strip()]
    caps = probe_host(args.device or None)
    # templates see this host's BDFs (`devices[1]` of a two-device case), not placeholders
    compiled = compile_paths(args.paths, [d.bdf for d in caps.devices] or None)
    if compiled.errors:
        emit({"event": "fatal", "message": "\n".join(str(e) for e in compiled.errors)})
        return 2
    by_id = {c.id: c for c in compiled.cases}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        emit({"event": "fatal", "message": f"unknown case ids in the guest: {missing[:5]}"})
        return 2
    emit({"event": "hello", "cases": len(wanted),
          "properties": {"kernel": caps.kernel_release,
                         "iommu_modes": ",".join(m for m, why in caps.iommu_modes.items() if not why),
                         "devices": ",".join(f"{d.bdf}={d.ids}" for d in caps.devices)}})
    planned = plan([by_id[i] for i in wanted], caps, args.iommu_mode or None)
    run_planned(planned, caps, RunOptions(timeout_multiplier=args.timeout_multiplier), emit,
                fail_fast=args.fail_fast)
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
