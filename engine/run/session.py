"""Run planned cases on this machine, one forked child each, emitting events as they go.

Used directly for `--device` runs on a host with VFIO devices, and by the guest
entry point (`guest.py`) inside the testbed. Events are dicts:
  {"event": "hello", "properties": {...}, "cases": N}
  {"event": "kernel_before", "problems": [...]}  (what the kernel reported before the run)
  {"event": "start", "id": ...}
  {"event": "result", "result": CaseResult.to_dict()}
  {"event": "kmemleak_scan"}  (now and then while kmemleak scans, at the run's end)
  {"event": "kmemleak", "objects": N, "report": ...}  (the run's leaks, at its end)
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from vfio_scenario import __version__
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run import devstate
from vfio_scenario.run.executor import cannot_run, execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.plan import HostCaps, PlannedCase

if TYPE_CHECKING:
    from vfio_scenario.run.interpreter import Operation
    from vfio_scenario.run.kernel_watch import KernelWatch

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
    """Run every planned case; devices are restored afterwards, also on SIGINT/SIGTERM.

    With the kernel watch on, a case's result is sent when the next case starts (or the
    run ends): the kernel lines logged until then are its own (run/kernel_watch.py)."""
    from vfio_scenario.run.ops import operations

    ops = operations()
    watch = _open_watch(emit) if options.kernel_watch else None
    pending: list[tuple[CaseResult, PlannedCase]] = []

    def settle() -> CaseResult | None:
        if not pending:
            return None
        result, pc = pending.pop()
        if watch is not None:
            result = watch.finish(result, pc.case)
        emit({"event": "result", "result": result.to_dict()})
        return result

    states = devstate.record([d.bdf for d in caps.devices])
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for pc in planned:
            settle()
            if watch is not None:
                watch.begin()
            emit({"event": "start", "id": pc.case.id})
            pending.append((_run_one(pc, caps, ops, options), pc))
            if fail_fast:
                done = settle()
                if done is not None and done.outcome in (Outcome.FAIL, Outcome.ERROR):
                    break
        settle()
    except _Interrupted as exc:
        settle()
        emit({"event": "interrupted", "signal": str(exc)})
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if watch is not None:
            _close_watch(watch, emit)
        problems = devstate.restore(states)
        if problems:
            emit({"event": "warning", "message": "device state not restored: " + "; ".join(problems)})


def _run_one(pc: PlannedCase, caps: HostCaps, ops: dict[str, Operation],
             options: RunOptions) -> CaseResult:
    """The case's result: skipped, run, or an error of its own (never the run's end)."""
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
    return result


def _open_watch(emit: Emit) -> KernelWatch | None:
    """The run's kernel watch (None without /dev/kmsg); what the kernel reported before
    the run, which no case's window holds, goes out as a `kernel_before` event."""
    from vfio_scenario.run.kernel_watch import KernelWatch

    watch = KernelWatch.open()
    if watch is not None and watch.before:
        emit({"event": "kernel_before", "problems": watch.before})
    return watch


def _close_watch(watch: KernelWatch, emit: Emit) -> None:
    """Report what kmemleak found leaked during the run (tied to no case), then close:
    a `kmemleak` event, which the reports keep as the run's `kmemleak` property."""
    # the scans take minutes on a busy TCG guest: a line now and then tells the host
    # (which takes a silent guest for a hung one) that the run is still ending
    leaks = watch.leaks(lambda: emit({"event": "kmemleak_scan"}))
    if leaks:
        emit({"event": "kmemleak", "objects": leaks.count("unreferenced object"),
              "report": leaks})
    watch.close()
