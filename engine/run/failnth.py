"""The fail-nth sweep of a case with a `fail_nth` step (the kernel's iommufd_fail_nth).

The case runs again and again in its process, each run a whole case (body, teardown,
releases) with a fresh set of handles, the case's begin and end hooks once around the
sweep (the log position and taint of the case; C's harness checks none per n), as
fail-nth's file and the debugfs attributes (opened and set once, as the C program's
fail_nth_first and constructor do, and set back at the end): run n = 0 arms nothing, run
n >= 1 has its `fail_nth` step write n to /proc/self/task/TID/fail-nth, so that the nth
fault-injection site (failslab, the mock's fail_iommufd …) this task passes after it
fails. As the C program's TEST_FAIL_NTH:

- run 0 must pass whole;
- in a run n >= 1, the first body step after the arm that fails with an errno (a
  VfioError: the kernel's clean refusal) ends the body; a failure of another kind (a
  check, an exception, a signal, a timeout), or any failure before the arm, fails the
  sweep;
- when the body has ended, fail-nth is read and disarmed (written 0): "0" means the
  nth site was reached; then the teardown runs, and must pass (close_iommu and the
  mock's CHECK_REFS: nothing still pinned);
- the first run whose n was not reached ends the sweep, and must have passed whole.

The case's result is its last run's steps, the `fail_nth` step's message summing up the
sweep; a sweep that fails reports the run (its n) and step that failed it.

As the C program allocates its buffers once (its constructor) and never clears them, the
memfd of a buffer an `alloc_buffer` step before the arm makes is kept for the next runs,
with its pages and the bytes the earlier runs left in them; each run maps it afresh
(populated from those pages: none allocated or cleared). Where every step of the case is
one that leaves a buffer's pages mapped and its file as they are and compares no
buffer's bytes with fixed values (KEEPS_BUFFERS). What the steps after the arm do, fault
sites included, is the same either way: benchmarks/fail_nth_sweeps.py's sweeps agree
with C's (they do not when the mapping too is kept from run to run). Making and
populating a fresh 2 MiB buffer per run (zeroing a kept one costs as much under TCG) was
most of a run's time in the testbed.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import ERRNO_NUMBERS
from vfio_scenario.results import CaseResult, Outcome, StepResult
from vfio_scenario.run.interpreter import (
    Runtime,
    Skip,
    _not_run,
    call_once,
    run_step,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from vfio_scenario.language.cases import Case, Step
    from vfio_scenario.language.models import AllocBuffer
    from vfio_scenario.run.interpreter import Hook, Listener, Operation, RunOptions
    from vfio_scenario.uapi.buffers import DmaBuffer

DEBUGFS = "/sys/kernel/debug"
FAIL_NTH = "/proc/self/task/{tid}/fail-nth"  # this task's fail-nth file

# Operations that leave a buffer's pages mapped and its file as they are, and compare
# no buffer's bytes with fixed values: they may write its bytes, pin its pages or map
# them through the kernel (access_rw compares what the kernel reads and writes with the
# memory as it is). A step of any other operation (e.g. unmap_buffer_range,
# truncate_buffer, assert_pattern) has the sweep make its buffers afresh for every run.
KEEPS_BUFFERS = frozenset({
    "alloc_buffer", "fail_nth", "sleep", "open_iommu", "close_iommu", "alloc_ioas",
    "iova_ranges", "allow_iovas", "map_dma", "unmap_dma", "copy_iova", "iommufd_destroy",
    "mock_memory_limit", "mock_check_refs", "mock_domain", "mock_domain_replace",
    "create_access", "access_rw", "destroy_access", "access_pages", "destroy_access_pages",
    "get_hw_info", "alloc_hwpt", "alloc_nested_hwpt", "alloc_viommu", "alloc_vdevice",
    "alloc_hw_queue", "alloc_fault_queue", "alloc_veventq", "close_queue_fd",
    "mock_pasid_attach", "mock_pasid_replace", "mock_pasid_detach",
})
KEPT_BACKINGS = frozenset({"memfd"})  # populated: a memfd buffer is mapped again


class Armed:
    """This task's fail-nth file, armed with n (or not: n == 0). As the C program's
    fail_nth_state, the file is opened once for the sweep (`close` at its end) and each
    run only writes its n and reads the counter back."""

    def __init__(self, n: int = 0) -> None:
        self.n = n
        self.fd = -1
        self.armed = False
        # the debugfs attributes setup_debugfs set, with their old values (None: not yet)
        self.restores: list[tuple[str, str]] | None = None
        # the index of the `fail_nth` step when the sweep keeps its buffers (-1: it
        # does not), and the buffers kept, by the index of the step that made them
        self.keep_before = -1
        self.buffers: dict[int, DmaBuffer] = {}

    def keeps(self, step: Step, args: AllocBuffer) -> bool:
        """Whether this `alloc_buffer` step's buffer is kept from run to run."""
        return (not step.teardown and step.index < self.keep_before and args.populate
                and args.backing in KEPT_BACKINGS)

    def buffer(self, index: int, make: Callable[[], DmaBuffer]) -> DmaBuffer:
        """The buffer step `index` made in an earlier run, mapped again, else a new one
        (`make`), kept until the sweep ends."""
        kept = self.buffers.get(index)
        if kept is None:
            kept = self.buffers[index] = make()
        else:
            kept.remap()
        return kept

    def arm(self) -> None:
        if self.n and not self.armed:
            if self.fd < 0:
                self.fd = os.open(FAIL_NTH.format(tid=threading.get_native_id()),
                                  os.O_RDWR | os.O_CLOEXEC)
            os.pwrite(self.fd, str(self.n).encode(), 0)
            self.armed = True

    def disarm(self) -> bool | None:
        """Read and clear it: True when the nth site was reached, None if never armed."""
        if not self.armed:
            return None
        self.armed = False
        try:
            left = os.pread(self.fd, 32, 0)
        finally:
            os.pwrite(self.fd, b"0", 0)
        return left.strip() == b"0"

    def close(self) -> list[str]:
        """Close the file and set the debugfs attributes back; the problems met."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        problems = []
        for buffer in self.buffers.values():
            buffer.close()
        self.buffers.clear()
        for path, old in reversed(self.restores or []):
            try:
                _write(path, old)
            except OSError as exc:
                problems.append(f"releasing {path} back to {old}: {exc}")
        self.restores = None
        return problems


def sweep(case: Case, devices: list[str], ops: dict[str, Operation], options: RunOptions,
          listener: Listener | None, begin: Hook | None, end: Hook | None) -> CaseResult:
    t0 = time.perf_counter()
    limit = next(s.args.max for s in case.steps if s.op == "fail_nth")  # type: ignore[attr-defined]
    ended: Counter[str] = Counter()
    tolerated = 0
    result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                        outcome=Outcome.PASS, params=dict(case.params), tags=list(case.tags),
                        started=time.time())
    armed = Armed()
    # (not a case with a `for` loop: an iteration's steps are numbered within it)
    if all(s.body is None and s.op in KEEPS_BUFFERS for s in (*case.steps, *case.teardown)):
        armed.keep_before = next(s.index for s in case.steps if s.op == "fail_nth")
    body, teardown = _prepare(case.steps, ops, options), _prepare(case.teardown, ops, options)
    arm_index = next(s.index for s in case.steps if s.op == "fail_nth")
    first: Runtime | None = None  # the first run's: the case's begin and end hooks
    rt: Runtime | None = None
    records: list[Record] = []
    try:
        for n in range(limit + 1):
            armed.n = n
            rt = _new_run(case, devices, options, armed, first, begin)
            first = first or rt
            result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                                outcome=Outcome.PASS, params=dict(case.params),
                                tags=list(case.tags), started=result.started)
            rt.result, rt.listener, rt.ops = result, listener, ops
            records = []
            failed, reached, armed_at = _run(rt, result, body, teardown, arm_index, ops,
                                             records)
            if result.outcome is Outcome.SKIP:
                break
            verdict, why = _verdict(n, result, failed, reached, armed_at)
            if verdict == "fail":
                if result.outcome is Outcome.PASS:
                    result.outcome = failed.outcome if failed is not None else Outcome.FAIL
                result.message = f"fail-nth {n}: {why}"
                break
            if verdict == "last":
                break  # the first n nothing reached: this run passed whole
            if verdict == "ended":
                ended[why] += 1
            elif n > 0:
                tolerated += 1
        else:
            result.outcome = Outcome.FAIL
            result.message = (f"fail-nth still reached a fault site at n = {limit}: the "
                              "sweep stops at `max`")
        if rt is not None:  # the case's steps: its last run's
            result.steps = [_step_result(rt, r) for r in records]
    finally:
        _end_sweep(armed, end, first, result)
    if result.outcome is Outcome.PASS:
        _sum_up(result, n, ended, tolerated)
    result.duration = time.perf_counter() - t0
    return result


def _sum_up(result: CaseResult, n: int, ended: Counter[str], tolerated: int) -> None:
    """The `fail_nth` step's message: how the sweep went."""
    note = (f"swept n = 1 … {n - 1}: {sum(ended.values())} runs ended by an injected "
            f"errno ({', '.join(f'{k} {v}' for k, v in sorted(ended.items())) or 'none'}), "
            f"{tolerated} ran through; n = {n} reached no fault site")
    for sr in result.steps:
        if sr.op == "fail_nth":
            sr.message = note


def _end_sweep(armed: Armed, end: Hook | None, first: Runtime | None,
               result: CaseResult) -> None:
    """fail-nth closed, the debugfs attributes set back (a problem there is the case's
    error), the case's end hook."""
    problems = armed.close()
    if end and first is not None:
        end(first)
    if problems and result.outcome is Outcome.PASS:
        result.outcome = Outcome.ERROR
        result.message = "releasing the case's resources failed: " + "; ".join(problems)


def _new_run(case: Case, devices: list[str], options: RunOptions, armed: Armed,
             first: Runtime | None, begin: Hook | None) -> Runtime:
    """The Runtime of one run: fresh handles; the case's begin hook runs for the first
    (the log position and taint of the case), the next ones share what it recorded."""
    rt = Runtime(case=case, devices=devices, options=options)
    rt.fail_nth = armed
    if first is None:
        if begin:
            begin(rt)
    else:
        rt.kernel_log, rt.kernel_log_error = first.kernel_log, first.kernel_log_error
        rt.taint, rt.qemu_faults = first.taint, first.qemu_faults
    return rt


def _verdict(n: int, result: CaseResult, failed: StepResult | None, reached: bool | None,
             armed_at: int | None) -> tuple[str, str]:
    """What run n says: ("ended", errno) for a body ended by the injected refusal,
    ("through", "") for a run that passed (run 0, or a fault it tolerated), ("last", "")
    for a passed run whose n was not reached, ("fail", why) otherwise."""
    clean = (failed is not None and n > 0 and armed_at is not None
             and failed.index > armed_at and reached is True
             and failed.outcome is Outcome.FAIL and failed.actual in ERRNO_NUMBERS)
    if failed is not None and not clean:
        return "fail", (f"step {failed.index + 1} `{failed.name}` ({failed.location}): "
                        f"{failed.message}")
    if result.outcome is not Outcome.PASS:  # the teardown or the releases
        return "fail", result.message
    if failed is not None:  # a refusal the nth site caused: the body ended there
        return "ended", failed.actual
    if n > 0 and reached is None:
        return "fail", "the `fail_nth` step did not run"
    return ("last", "") if reached is False else ("through", "")


@dataclass(frozen=True)
class Prepared:
    """A step as each run of the sweep runs it, what it needs looked up once: its
    operation (None: run_step runs it: a `for` loop, a `repeat`, a timeout, an operation
    without an implementation), outcomes, listener event, and for a teardown step the
    handles it needs made (else it is not run)."""

    step: Step
    handler: Operation | None
    expected: tuple[str, ...]
    event: dict[str, Any]
    needs: tuple[str, ...]


# One step of a run: its StepResult (one that did not pass, or run by run_step), or, made
# into one only for the run the case reports, a step that passed (Prepared, actual,
# message, duration) or a teardown step not run (Prepared, None, "", 0.0).
Record = StepResult | tuple[Prepared, str | None, str, float]


def _prepare(steps: Sequence[Step], ops: dict[str, Operation],
             options: RunOptions) -> tuple[Prepared, ...]:
    prepared = []
    for step in steps:
        common, handler = step.common, ops.get(step.op)
        if (step.body is not None or common.repeat != 1 or common.timeout
                or options.default_step_timeout):
            handler = None
        event: dict[str, Any] = {"index": step.index, "op": step.op, "name": step.label}
        if step.teardown:
            event["teardown"] = True
        needs = []
        for apath in step.handle_paths:  # as interpreter._handles_ready
            value: Any = step.args
            for part in apath:
                value = getattr(value, part, None)
            if isinstance(value, str):
                needs.append(value)
        prepared.append(Prepared(step, handler, tuple(common.expect), event, tuple(needs)))
    return tuple(prepared)


def _call(rt: Runtime, p: Prepared) -> str | StepResult:
    """Run a prepared step's operation once: the outcome's name when the step passed
    (its handle made), else its StepResult, as run_step gives them."""
    assert p.handler is not None
    return call_once(rt, p.step, p.handler, p.expected)


def _step(rt: Runtime, p: Prepared, ops: dict[str, Operation], records: list[Record]
          ) -> StepResult | None:
    """Run one step, its record added: None when it passed, else its StepResult."""
    if p.handler is None:
        sr = run_step(rt, p.step, ops)
        records.append(sr)
        return None if sr.outcome is Outcome.PASS else sr
    t0 = time.perf_counter()
    got = _call(rt, p)
    if isinstance(got, str):
        records.append((p, got, "; ".join(rt.notes), time.perf_counter() - t0))
        return None
    records.append(got)
    return got


def _step_result(rt: Runtime, record: Record) -> StepResult:
    """The StepResult of a record, as run_step gives it (or _not_run)."""
    if isinstance(record, StepResult):
        return record
    p, actual, message, duration = record
    step, expected = p.step, p.expected
    if actual is None:
        return _not_run(step)
    return StepResult(index=step.index, op=step.op, name=step.label,
                      location=f"{step.location.path}:{step.location.line}",
                      outcome=Outcome.PASS, duration=duration, repeat=step.common.repeat,
                      expected="|".join(expected),
                      actual=expected[0] if len(expected) == 1 else actual,
                      message=message, teardown=step.teardown, process=rt.process)


def _run(rt: Runtime, result: CaseResult, body: tuple[Prepared, ...],
         teardown: tuple[Prepared, ...], arm_index: int, ops: dict[str, Operation],
         records: list[Record]) -> tuple[StepResult | None, bool | None, int | None]:
    """One run: the body until its first failed step, fail-nth read and disarmed, then
    the teardown and releases (as interpreter._finish), each step's record in `records`.
    (failed body step, nth reached, index of the arm step)."""
    failed: StepResult | None = None
    armed_at: int | None = None
    reached: bool | None = None
    listener = rt.listener
    try:
        try:
            for p in body:
                if listener:
                    listener("step", p.event)
                failed = _step(rt, p, ops, records)
                if failed is not None:
                    break
                if p.step.index == arm_index:
                    armed_at = arm_index
        finally:
            reached = rt.fail_nth.disarm() if rt.fail_nth is not None else None
    except Skip as exc:
        result.outcome = Outcome.SKIP
        result.message = str(exc)
    ended: StepResult | None = None  # the first teardown step that failed
    handles = rt.handles
    for p in teardown:
        if listener:
            listener("step", p.event)
        if not all(name in handles for name in p.needs):
            records.append((p, None, "", 0.0))
            continue
        sr = _step(rt, p, ops, records)
        if ended is None and sr is not None and sr.outcome in (Outcome.FAIL, Outcome.ERROR):
            ended = sr
    problems = rt.release_all()
    if result.outcome is not Outcome.SKIP and ended is not None:
        result.outcome = ended.outcome
        result.location = ended.location
        result.message = (f"teardown step {ended.index + 1} `{ended.name}` "
                          f"({ended.location}): {ended.message}")
    if problems and result.outcome is Outcome.PASS:
        result.outcome = Outcome.ERROR
        result.message = "releasing the case's resources failed: " + "; ".join(problems)
    return failed, reached, armed_at


def setup_debugfs(rt: Runtime) -> None:
    """As the C program's constructor: every allocation may be failed (failslab's
    ignore-gfp-wait N; fail_page_alloc's too where the kernel has it) and the fault
    attributes quiet (verbose 0); once for the sweep (its first run), the old values
    back when the sweep ends."""
    armed = rt.fail_nth
    if armed is not None and armed.restores is not None:
        return  # an earlier run of the sweep set them
    if not os.path.isdir(f"{DEBUGFS}/failslab"):
        raise Skip(f"fault injection is not enabled in the kernel (no {DEBUGFS}/failslab: "
                   "FAILSLAB, FAULT_INJECTION_DEBUG_FS)")
    if not os.path.exists(FAIL_NTH.format(tid=threading.get_native_id())):
        raise Skip("fault injection is not enabled in the kernel (no /proc/self/task/TID/"
                   "fail-nth: FAULT_INJECTION)")
    wanted = {"failslab/ignore-gfp-wait": "N", "fail_page_alloc/ignore-gfp-wait": "N",
              "fail_page_alloc/ignore-gfp-highmem": "N"}
    for name in sorted(os.listdir(DEBUGFS)):
        if name.startswith("fail"):
            wanted[f"{name}/verbose"] = "0"
    restores: list[tuple[str, str]] = []
    for rel, value in wanted.items():
        path = f"{DEBUGFS}/{rel}"
        try:
            with open(path) as f:
                old = f.read().strip()
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            continue  # the kernel has no such attribute (fail_page_alloc without FAIL_PAGE_ALLOC)
        if armed is None:
            rt.on_cleanup(f"{path} back to {old}", functools.partial(_write, path, old))
        else:
            restores.append((path, old))
    if armed is not None:
        armed.restores = restores


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
