"""Forked children of a case: `fork`, steps with `process:`, `join`.

`fork` forks the case's process (os.fork: the child has a copy of its memory, MAP_SHARED
memory shared, and of its file descriptors, so the same iommufd and devices). The
child then serves the case: it reads a step's index from a pipe, runs that step with
its own copy of the case's handles (run_step, `expect:` and the step's timeout
included), and writes the StepResult back; the case's process waits for it, so the
steps of a case run one at a time, in order, whichever process runs them. `join`
closes the pipe: the child leaves with os._exit(0), releasing nothing of the case's
(its address space and its copies of the files go, as a C test's child that calls
exit(0)), and the case's process reaps it. A child still running when the case ends is
joined by the case's releases (killed if it does not leave within a few seconds).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vfio_scenario.results import Outcome, StepResult

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.run.interpreter import Operation, Runtime

_LEN = struct.Struct("<Q")
JOIN_WAIT = 5.0  # seconds a child has to leave once its pipe closed, before SIGKILL


@dataclass
class Child:
    """A forked child of the case (the `process` handle)."""

    name: str
    pid: int
    to_child: int  # step indexes go here
    from_child: int  # pickled (kind, payload) messages come back here
    status: int | None = None  # its wait status once reaped

    @property
    def label(self) -> str:
        return f"{self.name} (pid {self.pid})"

    def end(self, wait: float = JOIN_WAIT) -> int:
        """Close its pipe, wait for it to leave (SIGKILL after `wait` s); its exit code
        (negative: the signal that ended it). Idempotent."""
        if self.status is None:
            _close(self.to_child)
            deadline = time.monotonic() + wait
            while True:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
                    break
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    self.status = os.waitpid(self.pid, 0)[1]
                    break
                time.sleep(0.005)
            _close(self.from_child)
        return os.waitstatus_to_exitcode(self.status)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def fork(rt: Runtime, name: str, ops: dict[str, Operation]) -> Child:
    """Fork the case's process; the child serves the case's steps until its pipe closes."""
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(down_w)
            os.close(up_r)
            _serve(rt, name, down_r, up_w, ops)
        except BaseException:  # noqa: BLE001 - nothing may escape into the case's code
            code = 1
        os._exit(code)
    os.close(down_r)
    os.close(up_w)
    child = Child(name, pid, down_w, up_r)
    rt.on_cleanup(f"forked process {name} (pid {pid})", child.end)
    return child


def _serve(rt: Runtime, name: str, down: int, up: int, ops: dict[str, Operation]) -> None:
    from vfio_scenario.run.interpreter import Skip, run_step

    rt.process = f"{name} (pid {os.getpid()})"
    rt.cleanups = []  # the case's process releases the case's resources, not a child
    steps = {s.index: s for s in rt.case.steps}
    while True:
        raw = _read_exact(down, 4)
        if raw is None:
            return  # joined
        step = steps[int.from_bytes(raw, "little")]
        try:
            message: tuple[str, object] = ("result", run_step(rt, step, ops))
        except Skip as exc:
            message = ("skip", str(exc))
        data = pickle.dumps(message)
        os.write(up, _LEN.pack(len(data)))
        _write_all(up, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def run_in_child(rt: Runtime, step: Step) -> StepResult:
    """Have the step's `process:` child run it; its StepResult (a Skip is raised here).
    A child that died, or was joined already, makes the step an ERROR."""
    from vfio_scenario.run.interpreter import Skip

    name = step.common.process or ""
    child = rt.handles.get(name)
    base = StepResult(index=step.index, op=step.op, name=step.label,
                      location=f"{step.location.path}:{step.location.line}",
                      outcome=Outcome.ERROR, repeat=step.common.repeat,
                      expected="|".join(step.common.expect), actual="no process")
    if not isinstance(child, Child):
        base.message = f"process `{name}` was not made (its `fork` failed)"
        return base
    base.process = child.label
    if child.status is not None:
        base.message = f"{child.label} was joined already"
        return base
    try:
        os.write(child.to_child, step.index.to_bytes(4, "little"))
        head = _read_exact(child.from_child, _LEN.size)
        data = _read_exact(child.from_child, _LEN.unpack(head)[0]) if head else None
    except OSError:
        data = None
    if data is None:
        code = child.end(0.5)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        base.message = f"{child.label} ended ({how}) without a result for the step"
        return base
    kind, payload = pickle.loads(data)  # our own child's message
    if kind == "skip":
        raise Skip(f"{payload} (in {child.label})")
    assert isinstance(payload, StepResult)
    return payload
