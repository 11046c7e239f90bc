"""One forked child per case, like kselftest_harness.

The child runs the case and reports step starts and its result as JSON lines on a
pipe; its stdout and stderr go to a file whose tail joins the result. The parent
enforces the case timeout (scaled by --timeout-multiplier) and turns a child that
dies by a signal, exits without a result, or runs out of time into an ERROR naming
the step that was running, with the kernel log of the case attached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import gc
import json
import math
import os
import select
import signal
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run.interpreter import HandedOver, Operation, RunOptions, run_case
from vfio_scenario.uapi.kmsg import KernelLog

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case

OUTPUT_TAIL = 4000  # characters of a case's own output kept in its result


def execute_case(case: Case, devices: list[str], ops: dict[str, Operation],
                 options: RunOptions) -> CaseResult:
    """Run `case` in a forked child and return its result, whatever happens to the child."""
    limit = case.timeout * options.timeout_multiplier
    if not (math.isfinite(limit) and limit > 0):  # select() takes no NaN; never wait forever
        return cannot_run(case, f"its time limit is not a finite positive number of seconds "
                                f"({case.timeout!r} × multiplier {options.timeout_multiplier!r})")
    kmsg = _kernel_log()
    # an anonymous file the child's stdout/stderr go to (memfd: no tempfile module to
    # import, no directory that must be writable)
    out = os.fdopen(os.memfd_create("vfio-scenario-case-output"), "w+b")
    r, w = os.pipe()
    pid = _fork_case(case, devices, ops, options, r, w, out.fileno())
    os.close(w)
    started = time.time()
    t0 = time.monotonic()
    try:
        events, status, timed_out = _collect(pid, r, t0 + limit)
    except BaseException:
        # the run was interrupted (SIGINT/SIGTERM to this process only): the case's
        # processes go too, so that nothing holds the devices while they are restored
        _kill_group(pid)
        os.waitpid(pid, 0)
        _reap_group(pid)
        os.close(r)
        out.close()
        if kmsg is not None:
            kmsg.close()
        raise
    os.close(r)
    result = next((CaseResult.from_dict(e["result"]) for e in _parsed(events, b"result")),
                  None)
    if result is None:
        step = next(_parsed(reversed(events), b"step"), None)
        during = f" during step {step['index'] + 1} `{step['name']}`" if step else ""
        if timed_out:
            message = f"case timed out after {limit:g}s{during}"
        elif os.WIFSIGNALED(status):
            message = f"case process killed by {signal.Signals(os.WTERMSIG(status)).name}{during}"
        else:
            message = f"case process exited with status {os.WEXITSTATUS(status)}{during} " \
                      "without a result"
        result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                            outcome=Outcome.ERROR, params=dict(case.params),
                            tags=list(case.tags), message=message, started=started,
                            duration=time.monotonic() - t0)
    output = _tail(out)
    if output:
        result.log += f"--- case output ---\n{output}"
    if result.outcome in (Outcome.FAIL, Outcome.ERROR) and kmsg is not None:
        lines = kmsg.read()
        if lines:
            result.log += "--- kernel log since the case began ---\n" + "\n".join(lines[-80:]) + "\n"
    if kmsg is not None:
        kmsg.close()
    out.close()
    return result


def cannot_run(case: Case, why: str) -> CaseResult:
    """The result of a case the engine could not run: that case's error, not the run's end."""
    return CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                      outcome=Outcome.ERROR, params=dict(case.params), tags=list(case.tags),
                      message=f"the engine could not run this case: {why}", started=time.time())


def _kernel_log() -> KernelLog | None:
    try:
        return KernelLog()
    except VfioError:
        return None  # not readable here (no /dev/kmsg, no permission): no log attached


def _fork_case(case: Case, devices: list[str], ops: dict[str, Operation],
               options: RunOptions, r: int, w: int, out_fd: int) -> int:
    """Fork the case's process (`_child`); returns its pid, also its process group's id.

    The objects this process holds are frozen for the fork (gc.freeze): the child's
    garbage collector then never walks them, which would write to every object's header
    and make the kernel copy each page of the parent's heap into the child (under TCG
    a large part of a light case's cost)."""
    _become_subreaper()
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        _child(case, devices, ops, options, w, out_fd)
    gc.unfreeze()
    # the case's own process group: a successor it hands over to (`handover`) is in it,
    # and a timeout or an interrupt ends them all (the child did it first, or has gone)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return pid


@functools.cache
def _become_subreaper() -> None:
    """Orphans of a case (the successor of a predecessor that exited) become this
    process's children, reaped with the case (PR_SET_CHILD_SUBREAPER); best effort, once
    per process (its forks inherit nothing of it: a case's own children are its own)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _reap_group(pid: int) -> None:
    """Wait for what is left of the case's process group (a successor), if ours."""
    while True:
        try:
            os.waitpid(-pid, 0)
        except ChildProcessError:
            return
        except OSError:
            return


def event_writer(w: int) -> Any:
    """The listener of a case process: one JSON line per event on the pipe `w`."""

    def emit(kind: str, data: dict[str, Any]) -> None:
        write_all(w, (json.dumps({"event": kind, **data}) + "\n").encode())

    return emit


def write_all(w: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(w, view)
        view = view[n:]


def _child(case: Case, devices: list[str], ops: dict[str, Operation], options: RunOptions,
           w: int, out_fd: int) -> None:
    code = 0
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        # a crash's Python traceback goes into the case's own output, not the runner's
        faulthandler.enable(file=os.fdopen(2, "w", closefd=False))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

        from vfio_scenario.run.ops.host import begin_case, end_case

        options = dataclasses.replace(options, event_fd=w)
        try:
            result = run_case(case, devices, ops, options, listener=event_writer(w),
                              begin=begin_case, end=end_case)
        except HandedOver as handed:
            # the successor reports the case; this process holds nothing it must release
            if handed.wait is not None:
                handed.wait()
            os._exit(0)
        write_all(w, (json.dumps({"event": "result", "result": result.to_dict()}) + "\n")
                  .encode())
    except BaseException:  # noqa: BLE001 - the parent reports a child without a result
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _parsed(lines: Iterable[bytes], kind: bytes) -> Iterator[dict[str, Any]]:
    """The events of `kind` among the raw event lines, parsed (only those: a case sends
    one line per step, and only its result and its last step are read)."""
    prefix = b'{"event": "'  # how json.dumps writes an event: its kind first
    for line in lines:
        if line.startswith(prefix) and not line.startswith(prefix + kind + b'"'):
            continue
        event = json.loads(line)
        if event.get("event") == kind.decode():
            yield event


def _collect(pid: int, r: int, deadline: float) -> tuple[list[bytes], int, bool]:
    """The case process's event lines (raw: see _parsed), its wait status, and whether
    it ran out of time."""
    buf = b""
    events: list[bytes] = []
    timed_out = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            _kill_group(pid)
            break
        ready, _, _ = select.select([r], [], [], min(remaining, 1.0))
        if not ready:
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        events.extend(line for line in lines if line.strip())
    _, status = os.waitpid(pid, 0)
    if timed_out:
        _kill_group(pid)  # a successor the predecessor had handed over to
    _reap_group(pid)
    return events, status, timed_out


def _tail(f: Any) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - OUTPUT_TAIL))
    return str(f.read().decode("utf-8", "replace"))
