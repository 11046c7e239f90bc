"""One QEMU process of the testbed: start it, wait for its agent, end it by its own PID.

Every QEMU this module starts is recorded in a module-level registry and ended at
interpreter exit and on SIGTERM/SIGHUP (when the program has not installed its own
handler), and it gets PR_SET_PDEATHSIG so that even a SIGKILLed parent leaves no
orphan. A detached VM (`testbed up`) is the exception: it outlives its starter on
purpose and is ended by `testbed down` through its state file.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.testbed.channel import AgentChannel, ChannelClosed
from vfio_scenario.testbed.qemu import VmFiles, command_line, prepare_scratch

PANIC_MARKERS = ("Kernel panic - not syncing", "vfio-scenario-init: FATAL")
_PR_SET_PDEATHSIG = 1


class TestbedError(EnvironmentProblem):
    """The testbed failed; carries the tail of the guest's console."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(f"{message}\n--- guest console (tail) ---\n{console_tail}"
                         if console_tail else message)
        self.reason = message
        self.console_tail = console_tail


class BootFailed(TestbedError):
    """The VM did not get to a running agent."""


class GuestCrashed(TestbedError):
    """The guest kernel panicked or QEMU died while a command ran."""


class VmStopped(GuestCrashed):
    """QEMU ended while a command ran, with no kernel crash on the guest's console: stopped
    from outside (a signal, a QMP quit, `testbed down --force`), not a guest crash."""


class GuestHung(TestbedError):
    """The guest sent nothing for longer than the caller allowed."""


def console_tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a console log ("" when there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * lines))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def is_our_qemu(pid: int, files: VmFiles) -> bool:
    """True when `pid` is a live QEMU serving `files` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and str(files.agent_socket).encode() in cmdline


def kill_foreign(pid: int, files: VmFiles, grace: float = 3.0) -> bool:
    """End a detached VM by its PID (SIGTERM, then SIGKILL); False when it was not running."""
    if not is_our_qemu(pid, files):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while is_our_qemu(pid, files):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace
        time.sleep(0.05)
    for image in files.folder.glob("nvme*.img"):
        image.unlink(missing_ok=True)
    return True


def _set_pdeathsig() -> None:
    # runs in the child between fork and exec: QEMU gets SIGKILL when its parent dies
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_LIVE: dict[int, Vm] = {}
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _end_all() -> None:
    with _LIVE_LOCK:
        vms = list(_LIVE.values())
    for vm in vms:
        vm.kill()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _end_all()
    # the default action afterwards: exit with the conventional status
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_end_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_signal)


class Vm:
    """A QEMU process with the testbed's command line and a connection to its agent."""

    def __init__(self, files: VmFiles, *, accel: str, kernel: Path, initrd: Path,
                 devices: tuple[str, ...], memory: str = "4G", extra_cmdline: str = "",
                 detached: bool = False, firmware: Path | None = None) -> None:
        self.files = files
        self.accel = accel
        self.argv = command_line(accel=accel, kernel=kernel, initrd=initrd, files=files,
                                 devices=devices, memory=memory, extra_cmdline=extra_cmdline,
                                 firmware=firmware)
        self.devices = devices
        self.detached = detached
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: AgentChannel | None = None
        self.release = ""
        self.boot_seconds = 0.0
        self.foreign_pid = 0   # a detached VM some other process started (attach)

    @classmethod
    def attach(cls, files: VmFiles, pid: int, *, accel: str, release: str,
               devices: tuple[str, ...], side: bool = False) -> Vm:
        """A handle on a detached VM that runs already (`testbed up`); connects to its agent
        (`side`: to the second agent, beside whoever holds the first).

        Closing the handle leaves that VM running; `kill_foreign` ends it."""
        vm = cls.__new__(cls)
        vm.files, vm.accel, vm.argv, vm.devices, vm.detached = files, accel, [], devices, True
        vm.proc, vm.channel, vm.release, vm.boot_seconds = None, None, release, 0.0
        vm.foreign_pid = pid
        if not vm.alive():
            raise BootFailed(f"the testbed VM with PID {pid} is not running")
        vm.channel = AgentChannel(files.side_socket if side else files.agent_socket)
        return vm

    @property
    def pid(self) -> int:
        """QEMU's process id (0 before start)."""
        return self.proc.pid if self.proc else self.foreign_pid

    def start(self, boot_timeout: float) -> None:
        """Start QEMU and wait until the agent answers; BootFailed with the console if not."""
        self.files.iommu_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.files.agent_socket, self.files.side_socket, self.files.console):
            stale.unlink(missing_ok=True)
        prepare_scratch(self.devices, self.files)
        started = time.monotonic()
        with (self.files.folder / "qemu.log").open("wb") as log:
            if self.detached:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            else:
                _install_handlers()
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT,
                                             preexec_fn=_set_pdeathsig)  # noqa: PLW1509 - ctypes prctl only
                with _LIVE_LOCK:
                    _LIVE[self.proc.pid] = self
        try:
            self._wait_for_agent(started + boot_timeout)
        except BaseException:
            self.kill()
            raise
        self.boot_seconds = time.monotonic() - started

    def _wait_for_agent(self, deadline: float) -> None:
        while self.channel is None:
            try:
                self.channel = AgentChannel(self.files.agent_socket, connect_timeout=0.1)
            except ChannelClosed:
                # no socket yet, or one QEMU left behind when it exited
                self._check_alive("QEMU exited before its agent socket accepted")
                if time.monotonic() > deadline:
                    raise BootFailed("QEMU did not open its agent socket in time",
                                     self.qemu_log()) from None
        try:
            self._ping(self.channel, deadline)
        except ChannelClosed:
            # QEMU closes the socket as it exits: give it a moment to be seen exiting
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2.0)
            self._check_alive("QEMU exited during boot")
            raise BootFailed("the agent connection closed during boot", self.tail()) from None

    def _ping(self, channel: AgentChannel, deadline: float) -> None:
        ping = channel.new_id()
        channel.send({"op": "ping", "id": ping})
        while True:
            message = channel.receive(0.2)
            if message is not None and message.get("id") == ping and "pong" in message:
                self.release = message["pong"]["release"]
                return
            self._check_alive("QEMU exited during boot")
            if "KVM internal error" in self.qemu_log():
                raise BootFailed("KVM internal error", self.qemu_log())
            if self.panicked():
                raise BootFailed("the guest failed during boot", self.tail())
            if time.monotonic() > deadline:
                raise BootFailed("the guest's agent did not answer in time", self.tail())

    def _check_alive(self, message: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BootFailed(f"{message} (status {self.proc.returncode})",
                             self.tail() + "\n" + self.qemu_log())

    def alive(self) -> bool:
        """True while the QEMU process runs."""
        if self.proc is None:
            return bool(self.foreign_pid) and is_our_qemu(self.foreign_pid, self.files)
        return self.proc.poll() is None

    def panicked(self) -> bool:
        """True when the console shows a kernel panic or a fatal init error."""
        tail = console_tail(self.files.console, 200)
        return any(marker in tail for marker in PANIC_MARKERS)

    def tail(self, lines: int = 60) -> str:
        """The last console lines."""
        return console_tail(self.files.console, lines)

    def qemu_log(self) -> str:
        """QEMU's own stdout/stderr (errors on its command line, KVM failures)."""
        return console_tail(self.files.folder / "qemu.log", 20)

    def detach(self) -> None:
        """Close the agent connection and leave QEMU running (for `testbed up`)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def kill(self, grace: float = 2.0) -> None:
        """End QEMU by its PID (SIGTERM, then SIGKILL) and close the connection."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        proc = self.proc
        if proc is None:
            return  # an attached VM stays; see kill_foreign
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)
        for index in range(len(self.devices)):
            self.files.nvme_image(index).unlink(missing_ok=True)
