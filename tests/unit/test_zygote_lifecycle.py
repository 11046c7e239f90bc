"""A VM's warm guest engine (run/zygote.py `serve`) and its client (run/zygote_client.py),
run here on the host as the testbed runs them in the guest: reused by the next run,
restarted for other content, started again when it died, a fresh engine when it cannot
serve, a run killed with its client, a run that outlives it, never a hang.

Every process a test starts is ended by its PID when the test ends (`warm` fixture).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.run import payload, zygote
from vfio_scenario.run.zygote_client import key_file

from tests.helpers.scenarios import compile_text

SCENARIO = """
- name: quick
  requires: {devices: 0}
  steps:
    - sleep: {duration: 1ms}
- name: slow
  requires: {devices: 0}
  steps:
    - sleep: {duration: 3s}
"""
LIMIT = 120  # seconds: a test that waits longer hangs, which is the failure


class Warm:
    """A socket folder of its own, the payloads, and the processes to end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = str(folder / "z" / "zygote.sock")
        self.payload = payload.write(str(folder), payload.Header(devices=[], drivers={}),
                                     compile_text(SCENARIO, "scen/warm.yaml"))
        self.key = zygote.engine_key(self.payload)

    def argv(self, *tail: str, key: str | None = None, start: bool = False) -> list[str]:
        return [sys.executable, "-I", "-S", zygote.CLIENT, *(["--start"] if start else []),
                self.socket, key or self.key, self.payload, *tail]

    def run(self, *tail: str, key: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*tail, key=key), input=stdin, capture_output=True,
                              text=True, cwd=self.folder, timeout=LIMIT, check=False)

    def servers(self) -> list[int]:
        """PIDs of the warm processes serving this folder's socket, alive (not the runs
        forked from them, which have their command line)."""
        found = [pid for pid in _pids()
                 if _cmdline(pid)[3:5] == ["serve", self.socket] and _alive(pid)]
        return [pid for pid in found if not set(found) & {_parent(pid)}]

    def warm_pid(self) -> int:
        """The PID of the warm process the key file names, once it is warm."""
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            token = Path(key_file(self.socket)).read_text().split("\n")[1]
            found = [pid for pid in self.servers() if token in _cmdline(pid)]
            if found and "warm: key" in Path(self.socket + ".log").read_text():
                return found[0]
            time.sleep(0.05)
        raise AssertionError("no warm process")


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for child in _pids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            found.append(child)
    return found


def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def warm() -> Iterator[Warm]:
    import tempfile

    # a short path: AF_UNIX socket paths hold 107 bytes
    folder = Path(tempfile.mkdtemp(prefix="zy-", dir="/tmp"))
    state = Warm(folder)
    try:
        yield state
    finally:
        for pid in state.servers():
            os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def outcomes(out: str) -> list[tuple[str, str]]:
    return [(e["result"]["scenario"], e["result"]["outcome"]) for e in events(out)
            if e["event"] == "result"]


RAN = [("quick", "pass"), ("slow", "pass")]


def test_the_second_run_is_forked_from_the_warm_process_the_first_started(
        warm: Warm) -> None:
    first = warm.run()
    assert (first.returncode, outcomes(first.stdout)) == (0, RAN), first.stderr
    pid = warm.warm_pid()
    second = warm.run()
    assert (second.returncode, outcomes(second.stdout)) == (0, RAN), second.stderr
    assert warm.servers() == [pid]  # the same one served both
    assert Path(warm.socket + ".log").read_text().count("warm: key") == 1
    assert not [e for e in events(first.stdout + second.stdout) if e["event"] == "warning"]


def test_start_only_warms_up_in_the_background_and_the_run_uses_it(warm: Warm) -> None:
    start = subprocess.run(warm.argv(start=True), capture_output=True, text=True,
                           timeout=LIMIT, check=False)
    assert start.returncode == 0, start.stderr
    pid = warm.warm_pid()
    again = subprocess.run(warm.argv(start=True), capture_output=True, text=True,
                           timeout=LIMIT, check=False)
    assert again.returncode == 0
    run = warm.run()
    assert (run.returncode, outcomes(run.stdout)) == (0, RAN)
    assert warm.servers() == [pid]


def test_other_content_starts_another_and_the_old_one_retires(warm: Warm) -> None:
    assert warm.run().returncode == 0
    old = warm.warm_pid()
    other = warm.run(key="0" * 32)  # what a changed checkout's payload has
    assert (other.returncode, outcomes(other.stdout)) == (0, RAN), other.stderr
    assert _gone(old)  # retired: no run of its own left
    new = warm.warm_pid()
    assert new != old
    assert Path(key_file(warm.socket)).read_text().split("\n")[0] == "0" * 32
    assert "warm: key " + "0" * 32 in Path(warm.socket + ".log").read_text()


def test_a_warm_process_that_died_is_started_again(warm: Warm) -> None:
    assert warm.run().returncode == 0
    old = warm.warm_pid()
    os.kill(old, signal.SIGKILL)
    assert _gone(old)
    run = warm.run()
    assert (run.returncode, outcomes(run.stdout)) == (0, RAN), run.stderr
    assert warm.warm_pid() != old


def test_one_that_ends_before_answering_leaves_the_run_to_a_fresh_engine(warm: Warm) -> None:
    # a listener that names our key and closes each connection unanswered, as a warm
    # process that dies while warming up
    Path(warm.socket).parent.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(warm.socket)
    listener.listen(4)
    Path(key_file(warm.socket)).write_text(f"{warm.key}\nfake\n")
    Path(warm.socket + ".log").write_text("Traceback: warming up failed\n")
    client = subprocess.Popen(warm.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=warm.folder)
    conn, _ = listener.accept()
    request, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)  # it asked, with its stdio
    for fd in fds:
        os.close(fd)
    assert json.loads(request)["argv"] == [warm.payload]
    conn.close()
    listener.close()
    out, err = client.communicate(timeout=LIMIT)
    assert (client.returncode, outcomes(out)) == (0, RAN), err
    warning = [e["message"] for e in events(out) if e["event"] == "warning"]
    assert warning == [("the warm guest engine ended before it ran the engine; its log ends: "
                        "Traceback: warming up failed; this run starts the engine afresh")]
    assert events(out)[-1] == {"event": "done"}


def _client_in_slow_case(warm: Warm) -> subprocess.Popen[str]:
    """A client started on the warm process, returned once its run has started `slow`."""
    client = subprocess.Popen(warm.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=warm.folder)
    assert client.stdout is not None
    for line in client.stdout:
        if '"start"' in line and "::slow" in line:
            break
    return client


def test_a_run_whose_warm_process_dies_goes_on_to_its_end(warm: Warm) -> None:
    assert warm.run().returncode == 0
    pid = warm.warm_pid()
    client = _client_in_slow_case(warm)
    os.kill(pid, signal.SIGKILL)
    out, err = client.communicate(timeout=LIMIT)
    assert client.returncode == 0, err
    assert outcomes(out) == [("slow", "pass")]
    assert events(out)[-1] == {"event": "done"}


def test_a_killed_client_takes_its_run_with_it(warm: Warm) -> None:
    assert warm.run().returncode == 0
    pid = warm.warm_pid()
    client = _client_in_slow_case(warm)
    runs = _children(pid)
    assert len(runs) == 1  # the run forked for that client
    client.kill()  # as the agent kills a command whose host went away
    client.communicate(timeout=LIMIT)
    assert _gone(runs[0], within=10)
    others = [p for p in warm.servers() if p != pid]
    assert [_gone(p, within=10) for p in others] == [True] * len(others), \
        [Path(f"/proc/{p}/stat").read_text() for p in others]  # its case too
    assert warm.servers() == [pid]  # the warm process stays for the next run
    assert warm.run().returncode == 0


def test_the_queue_reads_the_clients_stdin_and_exit_statuses_are_the_engines(
        warm: Warm) -> None:
    queued = warm.run("--queue", stdin="1\n0\n")
    assert (queued.returncode, outcomes(queued.stdout)) == (0, [("slow", "pass"),
                                                                ("quick", "pass")])
    bad = warm.run("--queue", stdin="7\n")  # not a case of the payload: the engine's exit
    cold = subprocess.run([sys.executable, "-m", "vfio_scenario.run.guest", warm.payload,
                           "--queue"], input="7\n", capture_output=True, text=True,
                          timeout=LIMIT, check=False)
    assert bad.returncode == cold.returncode == 1
    assert "the host sent '7', not a case of the payload" in bad.stderr
    usage = warm.run("--bogus")
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_the_key_is_the_content_and_the_warm_engine_can_be_turned_off(
        warm: Warm, monkeypatch: pytest.MonkeyPatch) -> None:
    drivers = payload.write(str(warm.folder), payload.Header(devices=[], drivers={
        "x": "vfio_scenario.drivers.edu:EduDriver"}), [])
    same = payload.write(str(warm.folder), payload.Header(devices=["0000:00:03.0"],
                                                          drivers={}), [])
    assert zygote.engine_key(same) == warm.key  # devices and cases are no content
    assert zygote.engine_key(drivers) != warm.key
    argv = zygote.guest_argv(warm.payload, queue=True)
    assert argv[1:4] == ["-I", "-S", zygote.CLIENT] and argv[-2:] == [warm.payload, "--queue"]
    monkeypatch.setenv("VFIO_SCENARIO_WARM_ENGINE", "0")
    assert zygote.guest_argv(warm.payload) == [sys.executable, "-m",
                                               "vfio_scenario.run.guest", warm.payload]


def test_another_program_of_the_engine_forks_from_the_warm_process_too(warm: Warm) -> None:
    assert warm.run().returncode == 0
    pid = warm.warm_pid()
    args = ["--drivers", "{}", "0000:99:00.0"]  # a device this host does not have
    argv = zygote.program_argv("vfio_scenario.run.driverfacts", warm.payload, args)
    assert argv[:6] == [sys.executable, "-I", "-S", zygote.CLIENT, "--main",
                        "vfio_scenario.run.driverfacts"]
    argv[argv.index(zygote.GUEST_SOCKET)] = warm.socket
    forked = subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT, check=False)
    fresh = subprocess.run([sys.executable, "-m", "vfio_scenario.run.driverfacts", *args],
                           capture_output=True, text=True, timeout=LIMIT, check=False)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout) == \
        (0, fresh.stdout), forked.stderr
    assert json.loads(forked.stdout)["bdf"] == "0000:99:00.0"
    assert warm.servers() == [pid]
    assert Path(warm.socket + ".log").read_text().count("warm: key") == 1
    assert zygote.program_argv("vfio_scenario.run.driverfacts", None, args) == \
        [sys.executable, "-m", "vfio_scenario.run.driverfacts", *args]


def test_no_place_for_a_warm_process_leaves_the_run_to_a_fresh_engine(warm: Warm) -> None:
    (warm.folder / "z").write_text("a file where the socket's folder would be")
    run = warm.run()
    assert (run.returncode, outcomes(run.stdout)) == (0, RAN), run.stderr
    assert [e["message"] for e in events(run.stdout) if e["event"] == "warning"] == [
        "the warm guest engine could not be started; this run starts the engine afresh"]
    assert "zygote_client: cannot start the warm engine: " in run.stderr
    assert warm.servers() == []
