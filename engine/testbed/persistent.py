"""A VM that outlives the command that started it: `testbed up`, `run`, `shell`, `down`.

Its state file (run/up/state.json) records QEMU's PID, the accelerator, the kernel and
the devices; `down` ends QEMU by that PID after checking the PID is still that QEMU.

One command at a time uses it: attaching takes an exclusive lock (run/up/attached.lock,
which names the holder's PID), held until that command's testbed handle stops or its
process ends. A second `run` says "testbed busy: … waiting" and waits its turn; `down`
refuses while the lock is held, unless forced. `testbed run --alongside` takes no lock:
it talks to the guest's second agent (its own virtio-serial port), beside the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from vfio_scenario.errors import UsageError
from vfio_scenario.testbed.bytecode import compile_engine
from vfio_scenario.testbed.paths import run_dir
from vfio_scenario.testbed.progress import Reporter, quiet
from vfio_scenario.testbed.qemu import VmFiles
from vfio_scenario.testbed.testbed import Testbed
from vfio_scenario.testbed.vm import is_our_qemu, kill_foreign

NAME = "up"


def _files() -> VmFiles:
    return VmFiles(run_dir() / NAME)


def _state_path() -> Path:
    return _files().folder / "state.json"


def read_state() -> dict[str, Any] | None:
    """The running `up` VM's state, or None (a stale state file is removed)."""
    path = _state_path()
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not is_our_qemu(int(state["pid"]), _files()):
        path.unlink(missing_ok=True)
        return None
    return state


def up(kernel: str, accel: str, devices: Sequence[str], report: Reporter = quiet) \
        -> dict[str, Any]:
    """Boot the persistent VM (or return the running one's state)."""
    state = read_state()
    if state is not None:
        return state
    testbed = Testbed(kernel=kernel, accel=accel, devices=devices, report=report, name=NAME)
    testbed.start(detached=True)
    state = {"pid": testbed.pid, "accel": testbed.accelerator,
             "release": testbed.kernel_release, "kernel": kernel,
             "devices": list(testbed.devices), "qemu": testbed.qemu_version,
             "started": time.time(), "boot_seconds": round(testbed.boot_seconds, 2),
             "console": str(testbed.files.console), "vmlinux": str(testbed.vmlinux or "")}
    testbed.detach()
    _state_path().write_text(json.dumps(state, indent=1))
    return state


# The guest mounts the host's root with 9p cache=loose (1.5-2x faster Python starts), which
# never revalidates: a file the guest read once keeps those contents until its inode is
# evicted. Every attach drops the guest's caches, so what runs next sees the checkout as it
# is now (Python starts some 0.5 s slower right after). A VM we boot ourselves compiles
# the engine before it boots (Testbed.prepare).
_DROP_CACHES = ["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"]


def _lock_file() -> IO[str]:
    folder = _files().folder
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / "attached.lock", "a+")


def _holder(lock: IO[str]) -> str:
    """Who holds the lock, as it wrote itself down ("run PID 123", "testbed shell PID 9")."""
    lock.seek(0)
    text = lock.read().strip()
    return text or "another command"


def _take(lock: IO[str], notify: Callable[[str], None]) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        notify(f"testbed busy: {_holder(lock)} is using it; waiting")
        fcntl.flock(lock, fcntl.LOCK_EX)
    lock.seek(0)
    lock.truncate()
    command = " ".join(sys.argv[1:3]) if sys.argv[1:2] == ["testbed"] else "".join(sys.argv[1:2])
    lock.write(f"{command or 'a command'} PID {os.getpid()}")
    lock.flush()


def _to_stderr(message: str) -> None:
    print(f"vfio-scenario: {message}", file=sys.stderr, flush=True)


def attach(notify: Callable[[str], None] = _to_stderr) -> Testbed | None:
    """A handle on the running `up` VM, or None when there is none; the guest's view of the
    host's files is refreshed (engine bytecode written, guest caches dropped).

    Waits (saying so through `notify`) while another command uses the VM; the handle
    holds it until it stops."""
    if read_state() is None:
        return None
    lock = _lock_file()
    try:
        _take(lock, notify)
        state = read_state()  # it may have gone down while we waited
        if state is None:
            lock.close()
            return None
        testbed = Testbed.attach(NAME, int(state["pid"]), accel=state["accel"],
                                 release=state["release"], devices=state["devices"],
                                 vmlinux=state.get("vmlinux", ""))
    except BaseException:
        lock.close()
        raise
    testbed.hold(lock)
    compile_engine()
    testbed.run(_DROP_CACHES, timeout=60)
    return testbed


def attach_alongside() -> Testbed | None:
    """A handle on the running `up` VM through its second agent, taking no turn: for a
    command beside the one that holds the VM (to look, or to provoke the kernel while a
    run's case runs). None when no VM is up."""
    state = read_state()
    if state is None:
        return None
    return Testbed.attach(NAME, int(state["pid"]), accel=state["accel"],
                          release=state["release"], devices=state["devices"],
                          vmlinux=state.get("vmlinux", ""), side=True)


def down(force: bool = False) -> int:
    """End the `up` VM by its PID; returns that PID (0 when none was running).

    Refuses (UsageError) while a command uses the VM, unless `force`."""
    state = read_state()
    if state is None:
        return 0
    with _lock_file() as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not force:
                raise UsageError(f"testbed busy: {_holder(lock)} is using the VM; wait for "
                                 "it to end, or `testbed down --force` stops the VM under "
                                 "it") from None
        pid = int(state["pid"])
        kill_foreign(pid, _files())
        _state_path().unlink(missing_ok=True)
    return pid
