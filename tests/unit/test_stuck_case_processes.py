"""A case's process the kernel does not let go of must not stop the run.

A process in an uninterruptible sleep (state D: a hung task, or LKDTM's HUNG_TASK
writer) does not die of SIGKILL; the executor waited for the case's whole process
group without a bound, so such a process stopped the run, and with it the kernel watch
that would have read the hung-task report (tests/testbed/test_kernel_watch_debug.py
has the real one). Here a blocked FIFO writer stands in for a writer LKDTM leaves
blocked, and a `_kill_group` that kills nothing for SIGKILL's failure on a D-state task.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from vfio_scenario.results import Outcome
from vfio_scenario.run import executor
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import host, operations

from tests.helpers.scenarios import compile_text


class _Hung(Exception):
    pass


@pytest.fixture
def bounded() -> Iterator[None]:
    """The test fails instead of hanging if the executor waits for good."""
    def expire(signum: int, frame: FrameType | None) -> None:
        raise _Hung("execute_case did not return")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _children() -> list[int]:
    """Our child processes (the executor makes us their subreaper)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == os.getpid():
                out.append(int(name))
    return out


def _pgid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[2])


def test_a_writer_left_blocked_by_provoke_crash_does_not_hold_up_its_case(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bounded: None) -> None:
    direct = tmp_path / "DIRECT"
    os.mkfifo(direct)  # opening it to write blocks until a reader comes: never, here
    monkeypatch.setattr(host, "LKDTM_DIRECT", str(direct))
    [case] = compile_text("""
        - name: hung
          requires: {devices: 0}
          steps:
            - provoke_crash: {type: HUNG_TASK, wait: false}
    """)
    before = set(_children())
    result = execute_case(case, [], operations(), RunOptions())
    assert result.outcome is Outcome.PASS, result.message
    [writer] = set(_children()) - before  # blocked, and now ours (subreaper)
    assert _pgid(writer) == writer  # a process group of its own, not the case's
    reader = os.open(direct, os.O_RDONLY | os.O_NONBLOCK)  # let it write and end
    os.waitpid(writer, 0)
    assert os.read(reader, 64) == b"HUNG_TASK"
    os.close(reader)


def _sleeper(pid_file: Path) -> Any:
    def op(rt: Any, args: Any, step: Any) -> None:
        pid = os.fork()
        if pid == 0:  # stays in the case's process group
            time.sleep(600)
            os._exit(0)
        pid_file.write_text(str(pid))
    return op


def test_a_process_of_the_case_sigkill_does_not_end_is_left_behind_as_its_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bounded: None) -> None:
    monkeypatch.setattr(executor, "REAP_GRACE", 0.3)
    monkeypatch.setattr(executor, "_kill_group", lambda pid: None)  # as on a D-state task
    pid_file = tmp_path / "pid"
    [case] = compile_text("""
        - name: leaves-one
          requires: {devices: 0}
          steps:
            - assert_not_tainted: {}
    """)
    result = execute_case(case, [], {"assert_not_tainted": _sleeper(pid_file)}, RunOptions())
    left = int(pid_file.read_text())
    try:
        assert result.outcome is Outcome.ERROR
        assert result.message.startswith(
            "process(es) of the case did not end when killed and were left behind (stuck in "
            f"the kernel): {left} in state S"), result.message
    finally:
        os.kill(left, signal.SIGKILL)
        os.waitpid(left, 0)


def test_a_case_process_that_outlives_its_timeout_and_sigkill_is_a_timeout_error(
        monkeypatch: pytest.MonkeyPatch, bounded: None) -> None:
    monkeypatch.setattr(executor, "REAP_GRACE", 0.3)
    monkeypatch.setattr(executor, "_kill_group", lambda pid: None)
    [case] = compile_text("""
        - name: blocks
          requires: {devices: 0}
          timeout: 0.5s
          steps:
            - assert_not_tainted: {}
    """)
    before = set(_children())
    result = execute_case(case, [], {"assert_not_tainted": lambda rt, a, s: time.sleep(600)},
                          RunOptions())
    [left] = set(_children()) - before
    try:
        assert result.outcome is Outcome.ERROR
        assert result.message.startswith(
            "case timed out after 0.5s during step 1 `assert_not_tainted`; process(es) of "
            f"the case did not end when killed and were left behind (stuck in the kernel): "
            f"{left} in state S"), result.message
    finally:
        os.kill(left, signal.SIGKILL)
        os.waitpid(left, 0)
