"""One forked child per case, like kselftest_harness.

The child runs the case and reports its result as a JSON line on a pipe; the step it
is running it writes into a page of memory it shares with the parent (`StepSlot`: no
system call and no wake-up of the parent per step, which under TCG cost more than
many a step); its stdout and stderr go to a file whose tail joins the result. The
parent enforces the case timeout (scaled by --timeout-multiplier) and turns a child
that dies by a signal, exits without a result, or runs out of time into an ERROR
naming the step that was running, with the kernel log of the case attached. (A
successor the case hands over to, a process of its own, reports its steps on the pipe
as JSON lines: those come after any step of the slot.)

Waiting for the case's processes is bounded: a process the kernel keeps in an
uninterruptible sleep (state D: a hung task) does not die of SIGKILL, and waiting for
it would stop the run, the kernel watch with it, so that the hung-task report would
never be read. Such a process is left behind, and the case is an ERROR saying so.
"""

from __future__ import annotations

import _signal
import contextlib
import faulthandler
import functools
import gc
import json
import math
import mmap
import os
import select
import signal
import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run.interpreter import HandedOver, Operation, RunOptions, run_case
from vfio_scenario.uapi.ioctl import warm_layouts
from vfio_scenario.uapi.kmsg import KernelLog

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case

# the struct layouts of the ioctls made in this process (a warm one: once for every
# run it forks), not in each case process
warm_layouts()

OUTPUT_TAIL = 4000  # characters of a case's own output kept in its result
# seconds a case's processes get to end after the case (a successor finishing) and again
# after SIGKILL, scaled by the timeout multiplier, before they are left behind as stuck
REAP_GRACE = 10.0


class StepSlot:
    """The step a case process is running, in memory shared with the parent (one page,
    MAP_SHARED, made once per process and inherited by each case process it forks): the
    case process writes a step's index as the step starts; the parent reads it only when
    the case process gave no result (it died, or ran out of time)."""

    _FORMAT = struct.Struct("<iI")  # index + 1 (0: no step yet), 1 for a teardown step

    def __init__(self) -> None:
        self.memory = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous, shared with forks

    def clear(self) -> None:
        self._FORMAT.pack_into(self.memory, 0, 0, 0)

    def set(self, index: int, teardown: bool) -> None:
        self._FORMAT.pack_into(self.memory, 0, index + 1, 1 if teardown else 0)

    def step(self, case: Case) -> dict[str, Any] | None:
        """The step last written ({index, name}, as a step event says), or None."""
        index, teardown = self._FORMAT.unpack_from(self.memory, 0)
        steps = case.teardown if teardown else case.steps
        if not 0 < index <= len(steps):
            return None
        return {"index": index - 1, "name": steps[index - 1].label}


_slot: tuple[int, StepSlot] | None = None


def step_slot() -> StepSlot:
    """This process's step slot, which its case processes write into (made by the
    process that forks the cases, not inherited from a warm process that forks runs:
    two runs must not share one)."""
    global _slot
    if _slot is None or _slot[0] != os.getpid():
        _slot = (os.getpid(), StepSlot())
    return _slot[1]


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
    slot = step_slot()
    slot.clear()
    pid = _fork_case(case, devices, ops, options, r, w, out.fileno(), slot)
    os.close(w)
    started = time.time()
    t0 = time.monotonic()
    grace = REAP_GRACE * max(1.0, options.timeout_multiplier)
    try:
        events, status, timed_out, stuck = _collect(pid, r, t0 + limit, grace)
    except BaseException:
        # the run was interrupted (SIGINT/SIGTERM to this process only): the case's
        # processes go too, so that nothing holds the devices while they are restored
        _kill_group(pid)
        _wait_bounded(pid, grace)
        _reap_group(pid, grace)
        os.close(r)
        out.close()
        if kmsg is not None:
            kmsg.close()
        raise
    os.close(r)
    result = next((CaseResult.from_dict(e["result"]) for e in _parsed(events, b"result")),
                  None)
    if result is None:
        result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                            outcome=Outcome.ERROR, params=dict(case.params),
                            tags=list(case.tags),
                            message=_no_result(events, status, timed_out, limit,
                                               slot.step(case)),
                            started=started, duration=time.monotonic() - t0)
    if stuck:
        _stuck_error(result, stuck)
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


def _no_result(events: list[bytes], status: int | None, timed_out: bool,
               limit: float, slot_step: dict[str, Any] | None = None) -> str:
    """Why a case process gave no result, naming the step that was running: the last a
    successor reported on the pipe, else the one in the case process's step slot."""
    step = next(_parsed(reversed(events), b"step"), None) or slot_step
    during = f" during step {step['index'] + 1} `{step['name']}`" if step else ""
    if timed_out:
        return f"case timed out after {limit:g}s{during}"
    if status is None:  # the pipe closed, the process did not end
        return f"case process closed its result pipe without a result{during}"
    if os.WIFSIGNALED(status):
        return f"case process killed by {signal.Signals(os.WTERMSIG(status)).name}{during}"
    return f"case process exited with status {os.WEXITSTATUS(status)}{during} without a result"


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
               options: RunOptions, r: int, w: int, out_fd: int, slot: StepSlot) -> int:
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
        _child(case, devices, ops, options, w, out_fd, slot)
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


def _wait_bounded(pid: int, grace: float) -> int | None:
    """The wait status of `pid` (a process, or -pgid: any of that group) once it ends
    within `grace` seconds, else None; ChildProcessError when there is none to wait for."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return status
    if pid > 0:  # one process: woken when it ends (a pidfd), not by polling
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pass
        else:
            try:
                select.select([pidfd], [], [], grace)
            finally:
                os.close(pidfd)
            done, status = os.waitpid(pid, os.WNOHANG)
            return status if done else None
    deadline = time.monotonic() + grace
    delay = 0.001
    while True:
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None


def _reap_group(pid: int, grace: float) -> list[int]:
    """Wait for what is left of the case's process group (a successor finishing), if
    ours; what has not ended after `grace` seconds is killed, and what SIGKILL does not
    end within `grace` more (a task in state D) is left behind: its pids."""
    for attempt in range(2):
        try:
            while _wait_bounded(-pid, grace) is not None:
                pass
        except ChildProcessError:
            return []
        except OSError:
            return []
        if attempt == 0:
            _kill_group(pid)
    return _group_members(pid)


def _group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid` (from /proc), or [pgid] when /proc says nothing."""
    members = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return [pgid]
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 3 and int(fields[2]) == pgid:
                members.append(int(name))
    return sorted(members) or [pgid]


def _process_state(pid: int) -> str:
    """`D (wchan)`-style state of `pid` as /proc tells it, or "" when it does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read().strip()
    except OSError:
        wchan = ""
    return f"{state} ({wchan})" if wchan and wchan != "0" else state


def _stuck_error(result: CaseResult, stuck: list[int]) -> None:
    """The case left processes SIGKILL did not end: an ERROR naming them."""
    named = ", ".join(f"{p} in state {_process_state(p) or '?'}" for p in stuck)
    note = (f"process(es) of the case did not end when killed and were left behind "
            f"(stuck in the kernel): {named}")
    if result.outcome in (Outcome.FAIL, Outcome.ERROR) and result.message:
        result.message += f"; {note}"
    else:
        result.message = note
    result.outcome = Outcome.ERROR


def event_writer(w: int, slot: StepSlot | None = None) -> Any:
    """The listener of a case process: one JSON line per event on the pipe `w`, but a
    step's start goes into `slot` when there is one (see StepSlot)."""

    def emit(kind: str, data: dict[str, Any]) -> None:
        if slot is not None and kind == "step":
            slot.set(data["index"], bool(data.get("teardown")))
            return
        write_all(w, (json.dumps({"event": kind, **data}) + "\n").encode())

    return emit


def write_all(w: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(w, view)
        view = view[n:]


def _child(case: Case, devices: list[str], ops: dict[str, Operation], options: RunOptions,
           w: int, out_fd: int, slot: StepSlot) -> None:
    code = 0
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        # a crash's Python traceback goes into the case's own output, not the runner's
        faulthandler.enable(file=2)
        # (the C function itself: signal.signal's wrapper turns the run's handler it
        # returns into an enum by a failed lookup, some milliseconds per case under TCG)
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)

        from vfio_scenario.run.ops.host import begin_case, end_case

        options.event_fd = w  # this process's own copy of the run's options
        try:
            result = run_case(case, devices, ops, options,
                              listener=event_writer(w, slot),
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


def _collect(pid: int, r: int, deadline: float, grace: float
             ) -> tuple[list[bytes], int | None, bool, list[int]]:
    """The case process's event lines (raw: see _parsed), its wait status (None: it did
    not end), whether it timed out, and the processes of its group SIGKILL did not end."""
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
    status = _wait_bounded(pid, grace)
    if status is None:  # alive after its pipe closed, or after SIGKILL: kill, wait again
        _kill_group(pid)
        status = _wait_bounded(pid, grace)
    if timed_out:
        _kill_group(pid)  # a successor the predecessor had handed over to
    stuck = _reap_group(pid, grace) if status is not None else _group_members(pid)
    return events, status, timed_out, stuck


def _tail(f: Any) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - OUTPUT_TAIL))
    return str(f.read().decode("utf-8", "replace"))
