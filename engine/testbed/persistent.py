"""VMs that outlive the command that started them: `testbed up`, `run`, `shell`, `down`.

`testbed up` boots one VM, `testbed up --jobs N` N of them (booted in parallel, memory
shared out as for `run --jobs`), numbered 1..N: VM 1 lives in run/up/, VM k in
run/up-k/. `run --jobs N` uses VMs 1..N, one each per job, and says how to start them
when fewer are up; every other command uses VM 1. Each VM's state file
(run/up*/state.json) records QEMU's PID, the accelerator, the kernel and the devices;
`down` ends each QEMU by that PID after checking the PID is still that QEMU.

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
MAX_VMS = 64  # the highest VM number looked for


def vm_name(number: int = 1) -> str:
    """The run/ folder of `up` VM `number` (1-based): up, up-2, up-3 …"""
    return NAME if number == 1 else f"{NAME}-{number}"


def _files(number: int = 1) -> VmFiles:
    return VmFiles(run_dir() / vm_name(number))


def _state_path(number: int = 1) -> Path:
    return _files(number).folder / "state.json"


def read_state(number: int = 1) -> dict[str, Any] | None:
    """The running `up` VM `number`'s state, or None (a stale state file is removed)."""
    path = _state_path(number)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not is_our_qemu(int(state["pid"]), _files(number)):
        path.unlink(missing_ok=True)
        return None
    return state


def up_vms() -> list[int]:
    """The numbers of the `up` VMs that run, ascending."""
    return [n for n in range(1, MAX_VMS + 1) if read_state(n) is not None]


def up(kernel: str, accel: str, devices: Sequence[str], report: Reporter = quiet,
       jobs: int = 1) -> list[dict[str, Any]]:
    """Boot `up` VMs 1..`jobs` that do not run yet, in parallel (memory shared out among
    the ones booted, as `run --jobs` does); the states of VMs 1..`jobs`."""
    import threading

    missing = [n for n in range(1, jobs + 1) if read_state(n) is None]
    memory = "4G"  # Testbed's own default, for one
    if len(missing) > 1:
        from vfio_scenario.run.parallel import mem_available_mib, vm_memory_mib

        memory = f"{vm_memory_mib(len(missing), mem_available_mib())}M"
    errors: list[BaseException] = []

    def boot(number: int) -> None:
        try:
            testbed = Testbed(kernel=kernel, accel=accel, devices=devices, report=report,
                              name=vm_name(number), memory=memory)
            testbed.start(detached=True)
            state = {"pid": testbed.pid, "accel": testbed.accelerator,
                     "release": testbed.kernel_release, "kernel": kernel,
                     "devices": list(testbed.devices), "qemu": testbed.qemu_version,
                     "started": time.time(), "boot_seconds": round(testbed.boot_seconds, 2),
                     "console": str(testbed.files.console),
                     "vmlinux": str(testbed.vmlinux or ""), "number": number,
                     "memory": testbed.memory}
            testbed.detach()
            _state_path(number).write_text(json.dumps(state, indent=1))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(n,), daemon=True) for n in missing[1:]]
    for thread in threads:
        thread.start()
    if missing:
        boot(missing[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [s for s in map(read_state, range(1, jobs + 1)) if s is not None]


# The guest mounts the host's root with 9p cache=loose (1.5-2x faster Python starts), which
# never revalidates: a file the guest read once keeps those contents until its inode is
# evicted. Every attach drops the guest's caches, so what runs next sees the checkout as it
# is now (Python starts some 0.5 s slower right after). A VM we boot ourselves compiles
# the engine before it boots (Testbed.prepare).
_DROP_CACHES = ["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"]


def _lock_file(number: int = 1) -> IO[str]:
    folder = _files(number).folder
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


def attach(notify: Callable[[str], None] = _to_stderr, number: int = 1) -> Testbed | None:
    """A handle on the running `up` VM `number`, or None when there is none; the guest's
    view of the host's files is refreshed (engine bytecode written, guest caches dropped).

    Waits (saying so through `notify`) while another command uses the VM; the handle
    holds it until it stops."""
    if read_state(number) is None:
        return None
    lock = _lock_file(number)
    try:
        _take(lock, notify)
        state = read_state(number)  # it may have gone down while we waited
        if state is None:
            lock.close()
            return None
        testbed = Testbed.attach(vm_name(number), int(state["pid"]), accel=state["accel"],
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
    return Testbed.attach(vm_name(1), int(state["pid"]), accel=state["accel"],
                          release=state["release"], devices=state["devices"],
                          vmlinux=state.get("vmlinux", ""), side=True)


def attach_jobs(jobs: int, notify: Callable[[str], None] = _to_stderr) -> list[Testbed]:
    """Handles on `up` VMs 1..`jobs` for `run --jobs` (each as `attach`); [] when no VM
    is up. UsageError, saying how to start them, when fewer than `jobs` are up."""
    running = up_vms()
    if not running:
        return []
    if running[:jobs] != list(range(1, jobs + 1)):
        usable = 0  # VMs 1..usable run
        while usable + 1 in running:
            usable += 1
        listed = ", ".join(str(n) for n in running)
        raise UsageError(
            f"--jobs {jobs}: {len(running)} `testbed up` VM(s) run (number {listed}), this "
            f"run needs VMs 1 to {jobs}; start the missing ones with `vfio-scenario testbed "
            f"up --jobs {jobs}`" + (f", or run with --jobs {usable}" if usable else "")
            + ", or stop them (`vfio-scenario testbed down`) and the run boots VMs of its own")
    attached: list[Testbed] = []
    try:
        for number in range(1, jobs + 1):
            testbed = attach(notify, number)
            if testbed is None:
                raise UsageError(f"--jobs {jobs}: `testbed up` VM {number} went down while "
                                 "this run attached to it; start it again with `vfio-scenario "
                                 f"testbed up --jobs {jobs}`")
            attached.append(testbed)
    except BaseException:
        for testbed in attached:
            testbed.stop()
        raise
    return attached


def down_all(force: bool = False) -> list[int]:
    """End every `up` VM (`down` each, the highest number first); their PIDs."""
    return [pid for pid in (down(force, n) for n in reversed(up_vms())) if pid]


def down(force: bool = False, number: int = 1) -> int:
    """End the `up` VM `number` by its PID; returns that PID (0 when none was running).

    Refuses (UsageError) while a command uses the VM, unless `force`."""
    state = read_state(number)
    if state is None:
        return 0
    with _lock_file(number) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not force:
                raise UsageError(f"testbed busy: {_holder(lock)} is using the VM; wait for "
                                 "it to end, or `testbed down --force` stops the VM under "
                                 "it") from None
        pid = int(state["pid"])
        kill_foreign(pid, _files(number))
        _state_path(number).unlink(missing_ok=True)
    return pid
