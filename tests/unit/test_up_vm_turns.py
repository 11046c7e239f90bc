"""The `up` VM's attach lock without a VM: who waits, what it says, when `down` refuses.

A child process holds the lock as a run would (tests/testbed/test_shared_up.py does it
with real runs and a real VM).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.errors import UsageError
from vfio_scenario.testbed import persistent
from vfio_scenario.testbed.testbed import Testbed

HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write("run PID 4242"); f.flush()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(persistent, "read_state", lambda number=1: {
        "pid": 99, "accel": "tcg", "release": "7.2", "devices": ["edu"]})
    return tmp_path / "vfio-scenario" / "run" / "up" / "attached.lock"


def _holder(lock: Path, seconds: float) -> subprocess.Popen[str]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


class FakeTestbed:
    def __init__(self) -> None:
        self.held: Any = None
        self.ran: list[list[str]] = []

    def hold(self, lock: Any) -> None:
        self.held = lock

    def run(self, argv: list[str], timeout: float) -> None:
        self.ran.append(argv)


def test_attach_waits_for_the_holder_and_says_who_it_is(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTestbed()
    monkeypatch.setattr(Testbed, "attach", lambda *a, **k: fake)
    monkeypatch.setattr(persistent, "compile_engine", lambda: None)
    child = _holder(cache, 1.0)
    said: list[str] = []
    t0 = time.monotonic()
    attached: Any = persistent.attach(notify=said.append)  # the fake stands in for a Testbed
    assert attached is fake
    assert time.monotonic() - t0 > 0.5  # it waited for the child
    child.wait()
    assert said == ["testbed busy: run PID 4242 is using it; waiting"]
    assert cache.read_text().endswith(f"PID {os.getpid()}")  # now it holds it
    fake.held.close()


def test_attach_takes_a_free_vm_silently(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTestbed()
    monkeypatch.setattr(Testbed, "attach", lambda *a, **k: fake)
    monkeypatch.setattr(persistent, "compile_engine", lambda: None)
    said: list[str] = []
    attached: Any = persistent.attach(notify=said.append)  # the fake stands in for a Testbed
    assert attached is fake
    assert said == []
    fake.held.close()


def test_down_refuses_while_held_and_force_stops_it(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []
    monkeypatch.setattr(persistent, "kill_foreign", lambda pid, files: killed.append(pid))
    child = _holder(cache, 30.0)
    try:
        with pytest.raises(UsageError) as refused:
            persistent.down()
        assert str(refused.value) == (
            "testbed busy: run PID 4242 is using the VM; wait for it to end, or `testbed down "
            "--force` stops the VM under it")
        assert killed == []
        assert persistent.down(force=True) == 99
        assert killed == [99]
    finally:
        child.kill()
        child.wait()
