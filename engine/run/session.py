"""Run planned cases on this machine, one forked child each, emitting events as they go.

Used directly for `--device` runs on a host with VFIO devices, and by the guest
entry point (`guest.py`) inside the testbed. Events are dicts:
  {"event": "hello", "properties": {...}, "cases": N}
  {"event": "start", "id": ...}
  {"event": "result", "result": CaseResult.to_dict()}
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from vfio_scenario import __version__
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run import devstate
from vfio_scenario.run.executor import cannot_run, execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.plan import HostCaps, PlannedCase

Emit = Callable[[dict[str, Any]], None]


def case_properties(pc: PlannedCase, caps: HostCaps) -> dict[str, str]:
    props = {"kernel": caps.kernel_release, "engine_version": __version__}
    if pc.case.iommu_mode:
        props["iommu_mode"] = pc.case.iommu_mode
    if pc.devices:
        props["device"] = ",".join(d.bdf for d in pc.devices)
        props["vendor_device"] = ",".join(d.ids for d in pc.devices)
        props["vfio_driver"] = ",".join(d.vfio_driver or "none" for d in pc.devices)
        drivers = [d.scenario_driver for d in pc.devices if d.scenario_driver]
        if drivers:
            props["scenario_driver"] = ",".join(drivers)
    return props


def skipped(pc: PlannedCase) -> CaseResult:
    c = pc.case
    return CaseResult(case_id=c.id, file=c.file, scenario=c.scenario, outcome=Outcome.SKIP,
                      params=dict(c.params), tags=list(c.tags), message=pc.skip or "",
                      started=time.time())


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def run_planned(planned: Iterable[PlannedCase], caps: HostCaps, options: RunOptions,
                emit: Emit, fail_fast: bool = False) -> None:
    """Run every planned case; devices are restored afterwards, also on SIGINT/SIGTERM."""
    from vfio_scenario.run.ops import operations

    ops = operations()
    states = devstate.record([d.bdf for d in caps.devices])
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for pc in planned:
            emit({"event": "start", "id": pc.case.id})
            if pc.skip:
                result = skipped(pc)
            else:
                try:
                    result = execute_case(pc.case, [d.bdf for d in pc.devices], ops, options)
                except _Interrupted:
                    raise
                except Exception as exc:  # noqa: BLE001 - this case's error, not the run's end
                    result = cannot_run(pc.case, f"{type(exc).__name__}: {exc}")
            result.properties.update(case_properties(pc, caps))
            emit({"event": "result", "result": result.to_dict()})
            if fail_fast and result.outcome in (Outcome.FAIL, Outcome.ERROR):
                break
    except _Interrupted as exc:
        emit({"event": "interrupted", "signal": str(exc)})
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        problems = devstate.restore(states)
        if problems:
            emit({"event": "warning", "message": "device state not restored: " + "; ".join(problems)})
