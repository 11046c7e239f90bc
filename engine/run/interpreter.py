"""The interpreter: runs one case's steps in the current process.

It holds the case's named handles, checks each step's outcome against its
`expect:`, enforces per-step timeouts, runs `teardown:` steps after the body whether
it passed or not, and releases everything the case opened in reverse order.
Operations are functions registered in `vfio_scenario.run.ops`; this module knows
none of them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import SIGNALS, VfioError, VfioScenarioError
from vfio_scenario.language.cases import Case, Step
from vfio_scenario.results import CaseResult, Outcome, StepResult

if TYPE_CHECKING:
    from vfio_scenario.drivers.base import DmaRegion, Driver
    from vfio_scenario.run.failnth import Armed
    from vfio_scenario.run.faultlog import QemuFaultLog
    from vfio_scenario.run.handover import Moved
    from vfio_scenario.run.ops.memory import LiveMappings
    from vfio_scenario.uapi.device import VfioDevice
    from vfio_scenario.uapi.kmsg import KernelLog


class CheckFailed(VfioScenarioError):
    """A step ran but its result is not what the scenario says (value, data, log)."""


class Skip(VfioScenarioError):
    """The case cannot run here; raised by an operation that finds a feature missing."""


class StepTimeout(VfioScenarioError):
    """A step ran past its `timeout:`."""


class HandedOver(BaseException):  # a control-flow signal, not an error
    """The case's handles went to a successor process (the `handover` operation), which
    runs the rest of the case: this process stops without teardown or releases.
    `wait` is the successor to wait for before exiting (`predecessor: stays`), or None."""

    def __init__(self, successor: int, wait: Callable[[], object] | None) -> None:
        super().__init__(successor)
        self.successor = successor
        self.wait = wait


Listener = Callable[[str, dict[str, Any]], None]
Hook = Callable[["Runtime"], None]


@dataclass
class RunOptions:
    timeout_multiplier: float = 1.0
    default_step_timeout: float = 0.0  # 0: only the case timeout applies
    kernel_watch: bool = True  # scan each case's kernel log for splats (--no-kernel-watch)
    event_fd: int = -1  # the case process's event pipe to the executor (a handover's too)


@dataclass
class Runtime:
    """What the operations of one case share: handles, cleanups, the case's devices."""

    case: Case
    devices: list[str]
    options: RunOptions = field(default_factory=RunOptions)
    handles: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    cleanups: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)  # what the running step says of a pass
    # which process runs the steps ("" unless the case hands over: "predecessor (pid N)",
    # "successor (pid M)"); the result so far and the listener, for `handover`
    process: str = ""
    result: CaseResult | None = None
    listener: Listener | None = None
    end: Hook | None = None
    handover: HandedOver | None = None  # set by a `handover` step that succeeded
    # -- what operations of the case share, each kept by the operations that use it --
    # host: the case's kernel log reader, opened as the case begins (None: why not, in
    # kernel_log_error); the taint mask then (None: unreadable); the testbed's record of
    # IOMMU faults (None outside the testbed)
    kernel_log: KernelLog | None = None
    kernel_log_error: str = ""
    taint: int | None = None
    qemu_faults: QemuFaultLog | None = None
    # memory: the mappings made and not unmapped yet (made when first needed)
    mappings: LiveMappings | None = None
    # iommu: cdev handle → the device bind_iommufd made of it
    bound_cdevs: dict[str, VfioDevice] = field(default_factory=dict)
    # driver: device handle → its initialised scenario driver, and the DMA region the
    # driver uses on it (kept across driver_remove and driver_init)
    drivers: dict[str, Driver] = field(default_factory=dict)
    driver_regions: dict[str, DmaRegion] = field(default_factory=dict)
    # live update: what the last handover moved (set in the successor); device handle →
    # wakeups counted by low_power
    moved: Moved | None = None
    wakeups: dict[str, int] = field(default_factory=dict)
    # the operations the case runs with (a forked child runs its steps with the same)
    ops: dict[str, Operation] = field(default_factory=dict)
    # the fail-nth sweep's run (run/failnth.py): what its `fail_nth` step arms
    fail_nth: Armed | None = None

    def note(self, message: str) -> None:
        """Say why the running step passed (its message in the reports), e.g. that it had
        nothing to check."""
        if message not in self.notes:
            self.notes.append(message)

    def handle(self, name: str) -> Any:
        try:
            return self.handles[name]
        except KeyError:
            raise CheckFailed(f"handle `{name}` was not made (its step failed or was skipped)") \
                from None

    def on_cleanup(self, label: str, release: Callable[[], object]) -> None:
        """Register `release` to run when the case ends, in reverse order of registration."""
        self.cleanups.append((label, release))

    def release_all(self) -> list[str]:
        """Run every cleanup, newest first; returns the problems met (they never raise)."""
        problems = []
        while self.cleanups:
            label, release = self.cleanups.pop()
            try:
                release()
            except Exception as exc:  # noqa: BLE001 - a failed release must not stop the others
                problems.append(f"releasing {label}: {exc}")
        return problems


Operation = Callable[[Runtime, Any, Step], Any]


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise StepTimeout("step timed out")


def _new_result(rt: Runtime, step: Step) -> StepResult:
    return StepResult(index=step.index, op=step.op, name=step.label,
                      location=f"{step.location.path}:{step.location.line}",
                      outcome=Outcome.PASS, repeat=step.common.repeat,
                      expected="|".join(step.common.expect), teardown=step.teardown,
                      process=rt.process)


def run_step(rt: Runtime, step: Step, ops: dict[str, Operation]) -> StepResult:
    """Run one step (with its repetitions, or a `for` step's iterations) and compare the
    outcome with `expect:`."""
    if step.body is not None:
        return _run_loop(rt, step, ops, _new_result(rt, step))
    return _run_operation(rt, step, ops)


def _run_operation(rt: Runtime, step: Step, ops: dict[str, Operation]) -> StepResult:
    expected = step.common.expect
    result = _new_result(rt, step)
    handler = ops.get(step.op)
    timeout = (step.common.timeout or rt.options.default_step_timeout) * rt.options.timeout_multiplier
    previous = signal.signal(signal.SIGALRM, _alarm) if timeout else None
    t0 = time.perf_counter()
    rt.notes.clear()
    try:
        if handler is None:
            raise NotImplementedError(f"operation `{step.op}` has no implementation (no "
                                      f"@op({type(step.args).__name__}) function in "
                                      "vfio_scenario.run.ops)")
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        made: Any = None
        # An op may do all its repetitions in one call (its `repeat` attribute, e.g.
        # map_dma's C loop): it returns the deciding attempt, the first whose outcome is
        # not expected or else the last, or None to have them run one by one.
        batched = getattr(handler, "repeat", None) if step.common.repeat > 1 else None
        decided = batched(rt, step.args, step) if batched is not None else None
        attempts = ((decided,) if decided is not None else
                    (_attempt(rt, handler, step) for _ in range(step.common.repeat)))
        for attempt in attempts:
            actual, made, message = attempt  # `made` of the last attempt names the handle
            if actual not in expected:
                result.actual = actual
                # an unexpected fault is a crash the probe caught, not a wrong answer
                result.outcome = Outcome.ERROR if actual in SIGNALS else Outcome.FAIL
                result.message = message or f"expected {' or '.join(expected)}, got {actual}"
                break
        else:
            result.actual = expected[0] if len(expected) == 1 else actual
            if rt.notes:
                result.message = "; ".join(rt.notes)
        if made is not None and step.handle and result.outcome is Outcome.PASS:
            rt.handles[step.handle] = made
            rt.kinds[step.handle] = step.args.produces or ""
    except StepTimeout:
        result.outcome = Outcome.ERROR
        result.actual = "timeout"
        result.message = f"step timed out after {timeout:g}s"
    except CheckFailed as exc:
        result.outcome = Outcome.FAIL
        result.actual = "check failed"
        result.message = str(exc)
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in an operation is this case's error
        result.outcome = Outcome.ERROR
        result.actual = type(exc).__name__
        result.message = f"{type(exc).__name__}: {exc}"
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        result.duration = time.perf_counter() - t0
    return result


def _run_loop(rt: Runtime, step: Step, ops: dict[str, Operation],
              result: StepResult) -> StepResult:
    """A `for` step: each iteration's steps in turn, as steps of their own; the first
    that does not pass ends the loop, and its outcome and message, with the iteration
    that ran it, are the loop's. A skip raised inside skips the case, as anywhere."""
    assert step.body is not None
    var = getattr(step.args, "var", "")
    result.repeat = len(step.body)
    t0 = time.perf_counter()
    try:
        for n, iteration in enumerate(step.body, 1):
            for inner in iteration.steps:
                sr = _run_inner(rt, inner, ops)
                if sr is None:
                    continue
                result.outcome, result.actual = sr.outcome, sr.actual
                result.message = (f"iteration {n} of {len(step.body)} ({var} = "
                                  f"{iteration.value}): step `{sr.name}` ({sr.location}): "
                                  f"{sr.message}")
                return result
        result.actual = "ok"
        result.message = f"{len(step.body)} iterations"
        return result
    finally:
        result.duration = time.perf_counter() - t0


def _run_inner(rt: Runtime, step: Step, ops: dict[str, Operation]) -> StepResult | None:
    """A step inside a `for` loop: None when it passed, else its result as run_step
    gives it. An operation run once without a timeout (most loop bodies: a loop runs
    thousands of them) runs here without the StepResult, clock and attempt generator
    run_step makes for every step; the outcome, the handle it makes and a failure's
    result are run_step's. Any other step (nested loop, `repeat`, timeout) runs by
    run_step."""
    common = step.common
    handler = ops.get(step.op)
    if (handler is None or step.body is not None or common.repeat != 1 or common.timeout
            or rt.options.default_step_timeout):
        sr = run_step(rt, step, ops)
        return None if sr.outcome is Outcome.PASS else sr
    outcome = call_once(rt, step, handler, tuple(common.expect))
    return None if isinstance(outcome, str) else outcome


def call_once(rt: Runtime, step: Step, handler: Operation,
              expected: tuple[str, ...]) -> str | StepResult:
    """Run `step`'s operation once, without run_step's StepResult, clock and attempts:
    the outcome's name when the step passed (its handle made), else its result as
    run_step gives it (the fail-nth sweep's runs use this too)."""
    rt.notes.clear()
    t0 = time.perf_counter()
    try:
        made = handler(rt, step.args, step)
    except VfioError as exc:  # as _attempt: the errno (or the fault's signal) is the outcome
        if exc.errno_name in expected:
            return exc.errno_name
        return _inner_failed(rt, step, t0, exc.errno_name, str(exc))
    except CheckFailed as exc:
        if expected != ("ok",) and "check failed" in expected:
            return "check failed"
        result = _inner_failed(rt, step, t0, "check failed", str(exc))
        result.message = str(exc) if expected == ("ok",) else result.message
        return result
    except StepTimeout:  # as run_step's with no timeout of the step's own
        result = _inner_failed(rt, step, t0, "timeout", "step timed out after 0s")
        result.outcome = Outcome.ERROR
        return result
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in an operation is this case's error
        result = _inner_failed(rt, step, t0, type(exc).__name__, f"{type(exc).__name__}: {exc}")
        result.outcome = Outcome.ERROR
        return result
    if "ok" not in expected:
        return _inner_failed(rt, step, t0, "ok", "")
    if made is not None and step.handle:
        rt.handles[step.handle] = made
        rt.kinds[step.handle] = step.args.produces or ""
    return "ok"


def _inner_failed(rt: Runtime, step: Step, t0: float, actual: str, message: str) -> StepResult:
    """The result run_step gives a step that did not pass with `actual`."""
    result = _new_result(rt, step)
    result.actual = actual
    result.outcome = Outcome.ERROR if actual in SIGNALS else Outcome.FAIL
    result.message = message or f"expected {' or '.join(step.common.expect)}, got {actual}"
    result.duration = time.perf_counter() - t0
    return result


def _attempt(rt: Runtime, handler: Operation, step: Step) -> tuple[str, Any, str]:
    """One execution: (outcome name, what the op made, message when it is not ok)."""
    try:
        made = handler(rt, step.args, step)
    except VfioError as exc:  # a fault caught by the probe carries SIGBUS/SIGSEGV as its name
        return exc.errno_name, None, str(exc)
    except CheckFailed as exc:
        if step.common.expect != ("ok",):
            return "check failed", None, str(exc)
        raise
    return "ok", made, ""


def run_case(case: Case, devices: list[str], ops: dict[str, Operation],
             options: RunOptions | None = None, listener: Listener | None = None,
             begin: Hook | None = None, end: Hook | None = None) -> CaseResult:
    """Run a case's body, then its teardown, then release what it opened.

    `begin`/`end` run before the first step and after the last release (the host
    operations record the kernel log position and taint there). A `handover` step
    that succeeds raises HandedOver: the successor process runs the rest
    (continue_case) and this one releases nothing.
    """
    if any(step.op == "fail_nth" for step in case.steps):  # a sweep of whole runs
        from vfio_scenario.run.failnth import sweep
        return sweep(case, devices, ops, options or RunOptions(), listener, begin, end)
    rt = Runtime(case=case, devices=devices, options=options or RunOptions())
    if begin:
        begin(rt)
    result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                        outcome=Outcome.PASS, params=dict(case.params), tags=list(case.tags),
                        started=time.time())
    if any(step.op == "handover" for step in case.steps):
        rt.process = f"predecessor (pid {os.getpid()})"
    elif any(step.op == "fork" for step in case.steps):  # its steps say which process ran them
        rt.process = f"case (pid {os.getpid()})"
    rt.result, rt.listener, rt.end, rt.ops = result, listener, end, ops
    return continue_case(rt, result, 0, ops, time.perf_counter())


def continue_case(rt: Runtime, result: CaseResult, start: int, ops: dict[str, Operation],
                  t0: float) -> CaseResult:
    """Run the body from step `start`, then the teardown and the releases (run_case; the
    successor of a handover continues here with the steps after the handover)."""
    failed: StepResult | None = None
    problems: list[str] = []
    handed = False
    try:
        for step in rt.case.steps[start:]:
            if rt.listener:
                rt.listener("step", {"index": step.index, "op": step.op, "name": step.label})
            if getattr(step.common, "process", None):  # a forked child runs it
                from vfio_scenario.run.forked import run_in_child
                sr = run_in_child(rt, step)
            else:
                sr = run_step(rt, step, ops)
            result.steps.append(sr)
            if sr.outcome is not Outcome.PASS:
                failed = sr
                break
            if rt.handover is not None:
                handed = True
                break
    except Skip as exc:
        result.outcome = Outcome.SKIP
        result.message = str(exc)
    finally:
        if not handed:  # handed over: the successor owns the teardown and the releases
            problems = _finish(rt, result, failed, ops)
    if rt.handover is not None and handed:
        raise rt.handover
    result.duration = time.perf_counter() - t0
    if problems:
        result.log += "\n".join(problems) + "\n"
        if result.outcome is Outcome.PASS:
            result.outcome = Outcome.ERROR
            result.message = "releasing the case's resources failed: " + "; ".join(problems)
    return result


def _finish(rt: Runtime, result: CaseResult, failed: StepResult | None,
            ops: dict[str, Operation]) -> list[str]:
    """Teardown steps, releases and the end hook; sets the case's outcome from the first
    failed step. Returns the problems the releases met."""
    for step in rt.case.teardown:
        if rt.listener:
            rt.listener("step", {"index": step.index, "op": step.op, "name": step.label,
                                 "teardown": True})
        sr = run_step(rt, step, ops) if _handles_ready(rt, step) else _not_run(step)
        result.steps.append(sr)
        if failed is None and sr.outcome in (Outcome.FAIL, Outcome.ERROR):
            failed = sr
    problems = rt.release_all()
    if rt.end:
        rt.end(rt)
    if result.outcome is not Outcome.SKIP and failed is not None:
        result.outcome = failed.outcome
        kind = "teardown step" if failed.teardown else "step"
        result.location = failed.location
        result.message = (f"{kind} {failed.index + 1} `{failed.name}` ({failed.location}): "
                          f"{failed.message}")
    return problems


def _handles_ready(rt: Runtime, step: Step) -> bool:
    for apath in step.handle_paths:
        value: Any = step.args
        for part in apath:
            value = getattr(value, part, None)
        if isinstance(value, str) and value not in rt.handles:
            return False
    return True


def _not_run(step: Step) -> StepResult:
    return StepResult(index=step.index, op=step.op, name=step.label,
                      location=f"{step.location.path}:{step.location.line}",
                      outcome=Outcome.SKIP, teardown=True,
                      message="not run: a handle it needs was never made")
