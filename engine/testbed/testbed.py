"""The testbed's Python API: a QEMU VM with VFIO devices that runs commands for you.

    with Testbed(kernel="default", accel="auto") as tb:
        result = tb.run(["python3", "-c", "print(1)"], timeout=60)
        for line in tb.stream([...], idle_timeout=120):
            ...

A guest panic or QEMU death raises GuestCrashed, silence beyond the caller's limit
raises GuestHung; both carry the console tail and leave the VM stopped, and the next
command (or `reboot()`) boots a fresh one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn, Self

from vfio_scenario.testbed import accel as accel_mod
from vfio_scenario.testbed.assets import GuestKernel, resolve_kernel
from vfio_scenario.testbed.bytecode import compile_engine
from vfio_scenario.testbed.channel import AgentChannel, ChannelClosed
from vfio_scenario.testbed.initramfs import GuestSetup, build_initramfs
from vfio_scenario.testbed.paths import run_dir
from vfio_scenario.testbed.progress import Reporter, stderr_reporter
from vfio_scenario.testbed.qemu import (
    DEFAULT_DEVICES,
    VmFiles,
    bind_ids,
    check_devices,
    fast_firmware,
    qemu_version,
)
from vfio_scenario.testbed.vm import (
    BootFailed,
    GuestCrashed,
    GuestHung,
    Vm,
    VmStopped,
    console_tail,
)

TCG_BOOT_TIMEOUT = 180.0
# the debug kernel (KASAN, lockdep, kmemleak) boots several times slower under TCG
DEBUG_BOOT_FACTOR = 3.0
_instances = itertools.count()


@dataclass(frozen=True)
class CommandResult:
    """What a command in the guest did."""

    returncode: int        # negative: killed by that signal
    stdout: str
    stderr: str
    duration: float        # seconds, as seen from the host


def guest_setup(kernel: GuestKernel, devices: tuple[str, ...]) -> GuestSetup:
    """How init prepares the guest for `kernel` and `devices`, running this Python."""
    venv_bin = str(Path(sys.executable).parent)
    return GuestSetup(modules=kernel.modules, bind_ids=bind_ids(devices),
                      python=sys.executable, agent=str(Path(__file__).with_name("agent.py")),
                      path=f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
                           ":/sbin:/bin")


def _remove_stale_run_folders() -> None:
    """Remove run/vm-<pid>-<n> folders whose process is gone (killed before cleaning up)."""
    for folder in run_dir().glob("vm-*-*"):
        try:
            pid = int(folder.name.split("-")[1])
        except ValueError:
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


class CommandStream:
    """A command's stdout lines as the guest prints them; see Testbed.stream.

    After the iteration ends, `returncode` and `stderr` hold the command's exit status
    and everything it wrote on stderr.
    """

    def __init__(self, testbed: Testbed, argv: Sequence[str], idle_timeout: float,
                 env: Mapping[str, str] | None, cwd: str | None,
                 on_stderr: Callable[[str], None] | None = None, stdin: bool = False) -> None:
        self._testbed = testbed
        self._request = {"op": "run", "argv": list(argv), "env": dict(env or {}), "cwd": cwd,
                         **({"stdin": True} if stdin else {})}
        self._idle = idle_timeout
        self._on_stderr = on_stderr
        self._channel: AgentChannel | None = None
        self._ident = 0
        self.returncode: int | None = None
        self.stderr = ""

    def send_input(self, text: str) -> None:
        """Write `text` to the command's stdin (a stream made with stdin=True, while the
        loop over it runs); GuestCrashed when the VM has gone."""
        self._to_command({"op": "input", "data": text})

    def close_input(self) -> None:
        """End of file on the command's stdin."""
        self._to_command({"op": "close_input"})

    def _to_command(self, message: dict[str, Any]) -> None:
        if self._channel is None:
            raise RuntimeError("the command has not started (iterate over the stream first)")
        try:
            self._channel.send({**message, "id": self._ident})
        except ChannelClosed:
            self._testbed._fail(GuestCrashed, "the VM went away while the command ran")

    def __iter__(self) -> Iterator[str]:
        testbed = self._testbed
        channel = testbed._ensure_running()
        ident = channel.new_id()
        self._channel, self._ident = channel, ident
        try:
            channel.send({**self._request, "id": ident})
        except ChannelClosed:
            testbed._fail(GuestCrashed, "the VM went away before the command started")
        pending = ""
        idle_deadline = time.monotonic() + self._idle
        finished = False
        try:
            while True:
                message = testbed._receive(channel, idle_deadline)
                if message.get("id") != ident:
                    continue  # a late message of an abandoned command
                if "out" in message:
                    idle_deadline = time.monotonic() + self._idle
                    pending += message["out"]
                    *lines, pending = pending.split("\n")
                    yield from lines
                elif "err" in message:
                    idle_deadline = time.monotonic() + self._idle
                    self.stderr += message["err"]
                    if self._on_stderr is not None:
                        self._on_stderr(message["err"])
                elif "exit" in message:
                    finished = True
                    if message.get("error"):
                        self.stderr += message["error"] + "\n"
                    self.returncode = int(message["exit"])
                    if pending:
                        yield pending
                    return
        finally:
            if not finished and testbed._vm is not None and testbed._vm.channel is channel:
                with contextlib.suppress(ChannelClosed):
                    channel.send({"op": "kill", "id": ident})



def _how_qemu_ended(vm: Vm) -> str:
    """"QEMU ended (SIGKILL)" for our own child; a `testbed up` VM's status is not ours."""
    code = vm.proc.poll() if vm.proc is not None else None
    if code is not None and code < 0:
        return f"QEMU ended ({signal.Signals(-code).name})"
    if code is not None:
        return f"QEMU exited (status {code})"
    return "QEMU ended"

class Testbed:
    """A QEMU testbed VM: q35, emulated Intel IOMMU, devices bound to vfio-pci in the guest.

    kernel: "default" (our build), "debian" (Debian's newest kernel) or a bzImage path.
    accel: "auto" (KVM when a probe boot proves it, else TCG), "kvm" or "tcg".
    devices: device models at pinned PCI slots 3, 4, … ("edu", "igb", "nvme").
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, kernel: str = "default", accel: str = "auto",
                 devices: Sequence[str] = DEFAULT_DEVICES, *, memory: str = "4G",
                 boot_timeout: float | None = None, extra_cmdline: str = "",
                 report: Reporter = stderr_reporter, name: str | None = None) -> None:
        if accel not in accel_mod.ACCELERATORS:
            raise ValueError(f"accel must be one of {accel_mod.ACCELERATORS}, not {accel!r}")
        self.devices = tuple(devices)
        check_devices(self.devices)
        self.kernel_spec = kernel
        self.requested_accel = accel
        self.memory = memory
        self.boot_timeout = boot_timeout
        self.extra_cmdline = extra_cmdline
        self.report = report
        if name is None:
            _remove_stale_run_folders()
            name = f"vm-{os.getpid()}-{next(_instances)}"
        self.files = VmFiles(run_dir() / name)
        self._kernel: GuestKernel | None = None
        self._initrd: Path | None = None
        self._accel = ""
        self._vm: Vm | None = None
        self._last_console = ""
        self._owned = True      # False for a handle on a `testbed up` VM
        self._vmlinux: Path | None = None  # of an attached VM's kernel, from its state
        self._held: IO[str] | None = None  # the `up` VM's attach lock, while we use it
        self.boots = 0

    @classmethod
    def attach(cls, name: str, pid: int, *, accel: str, release: str,
               devices: Sequence[str], vmlinux: str = "", side: bool = False) -> Testbed:
        """A handle on a detached VM already running under run/<name> (`testbed up`);
        `side`: through its second agent, beside the command that holds the first.

        Commands run in that VM; stop() only disconnects; a crash is reported and not
        followed by a reboot (the VM belongs to whoever started it)."""
        testbed = cls(accel=accel, devices=devices, name=name)
        testbed._vm = Vm.attach(testbed.files, pid, accel=accel, release=release,
                                devices=testbed.devices, side=side)
        testbed._accel = accel
        testbed._owned = False
        testbed._vmlinux = Path(vmlinux) if vmlinux else None
        return testbed

    def hold(self, lock: IO[str]) -> None:
        """Keep `lock` (an attached VM's) until this handle stops or detaches."""
        self._held = lock

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def prepare(self) -> None:
        """Resolve (fetch/build) the kernel and the initramfs without booting."""
        if self._kernel is None:
            self._kernel = resolve_kernel(self.kernel_spec, self.report)
            self._initrd = build_initramfs(guest_setup(self._kernel, self.devices))
        compile_engine()

    def start(self, detached: bool = False) -> Self:
        """Boot the VM (if not running) and wait for its agent; BootFailed if it cannot."""
        if self._vm is not None and self._vm.alive():
            return self
        self.prepare()
        if self.requested_accel != "auto":
            self._boot(self.requested_accel, self._timeout(self.requested_accel), detached)
            return self
        verdict = accel_mod.cached_verdict()
        known_tcg = verdict is not None and verdict["accel"] == "tcg"
        if known_tcg or not accel_mod.kvm_device_usable():
            self._boot("tcg", self._timeout("tcg"), detached)
        else:
            # probe, or re-probe a KVM that worked before: on failure the verdict turns to TCG
            self._probe_kvm_then_boot(detached)
        return self

    def _timeout(self, accel: str) -> float:
        if self.boot_timeout is not None:
            return self.boot_timeout
        factor = DEBUG_BOOT_FACTOR if self.kernel_spec == "debug" else 1.0
        return factor * (accel_mod.KVM_PROBE_SECONDS * 2 if accel == "kvm" else TCG_BOOT_TIMEOUT)

    def _probe_kvm_then_boot(self, detached: bool) -> None:
        # the probe boot is a real boot: when KVM works, its VM is the one we keep
        try:
            self._boot("kvm", accel_mod.KVM_PROBE_SECONDS, detached, attempts=1)
        except BootFailed as exc:
            reason = exc.reason.splitlines()[0]
            accel_mod.store_verdict("tcg", f"KVM probe boot failed: {reason}")
            self.report(f"KVM does not boot the guest ({reason}); using TCG")
            self._boot("tcg", self._timeout("tcg"), detached)
        else:
            accel_mod.store_verdict("kvm", "probe boot reached the agent")

    def _boot(self, accel: str, timeout: float, detached: bool, attempts: int = 2) -> None:
        # a second attempt: one rare failed boot must not end a whole run; it uses
        # QEMU's default firmware, in case the faster one is what failed
        assert self._kernel is not None and self._initrd is not None
        for attempt in range(1, attempts + 1):
            self._vm = Vm(self.files, accel=accel, kernel=self._kernel.image,
                          initrd=self._initrd, devices=self.devices, memory=self.memory,
                          extra_cmdline=self.extra_cmdline, detached=detached,
                          firmware=fast_firmware() if attempt == 1 else None)
            try:
                self._vm.start(timeout)
            except BootFailed as exc:
                self._last_console = exc.console_tail
                self._vm = None
                if attempt == attempts:
                    raise
                self.report(f"boot failed ({exc.reason.splitlines()[0]}); trying once more"
                            " with QEMU's default firmware")
            else:
                break
        self._accel = accel
        self.boots += 1

    def stop(self) -> None:
        """End QEMU by its PID; the testbed can be started again.

        Its run folder goes too (the console tail stays readable via console_tail)."""
        if self._vm is not None:
            self._last_console = self._vm.tail(200)
            self._vm.kill()
            self._vm = None
        if self._owned:
            shutil.rmtree(self.files.folder, ignore_errors=True)
        self._release()

    def reboot(self) -> None:
        """Stop the VM (whatever state it is in) and boot a fresh one."""
        self.stop()
        self.start()

    def detach(self) -> int:
        """Leave the (detached) VM running without us; returns QEMU's PID."""
        assert self._vm is not None
        pid = self._vm.pid
        self._vm.detach()
        self._vm = None
        self._release()
        return pid

    # --- commands ---------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float = 120.0,
            env: Mapping[str, str] | None = None, cwd: str | None = None) -> CommandResult:
        """Run `argv` in the guest (chrooted into the host's root, VFIO_SCENARIO_GUEST=1).

        Returns its exit status and output; GuestHung when it runs longer than `timeout`
        seconds, GuestCrashed when the guest dies meanwhile (the VM is then stopped).
        """
        started = time.monotonic()
        stream = CommandStream(self, argv, timeout, env, cwd)
        deadline = started + timeout
        lines = []
        for line in stream:
            lines.append(line)
            if time.monotonic() > deadline:
                self._fail(GuestHung, f"{argv[0]} ran longer than {timeout:g}s")
        assert stream.returncode is not None
        return CommandResult(stream.returncode, "\n".join(lines) + ("\n" if lines else ""),
                             stream.stderr, time.monotonic() - started)

    def stream(self, argv: Sequence[str], idle_timeout: float,
               env: Mapping[str, str] | None = None, cwd: str | None = None,
               on_stderr: Callable[[str], None] | None = None,
               stdin: bool = False) -> CommandStream:
        """Iterate over `argv`'s stdout lines (without newline) as the guest prints them.

        GuestCrashed on a guest panic or QEMU's death, GuestHung when no output arrives
        for `idle_timeout` seconds; either way the VM is stopped. After the loop, the
        returned object's `returncode` and `stderr` are set; `on_stderr` receives stderr
        chunks as they arrive. With `stdin`, the command reads what the stream's
        `send_input` writes, until `close_input` (the agent of a VM booted before this
        existed gives it end of file at once).
        """
        return CommandStream(self, argv, idle_timeout, env, cwd, on_stderr, stdin)

    def interactive(self, argv: Sequence[str], in_fd: int = 0, out_fd: int = 1,
                    cwd: str | None = None) -> int:
        """Run `argv` on a terminal in the guest, wired to `in_fd`/`out_fd`; its exit status.

        For `testbed shell`: when `in_fd` is a terminal it is put in raw mode meanwhile,
        so keys (Ctrl-C included) go to the guest. Ends when the command exits; at end of
        file on `in_fd` the command is killed."""
        channel = self._ensure_running()
        ident = channel.new_id()
        env = {"TERM": os.environ.get("TERM", "xterm")}
        channel.send({"op": "run", "id": ident, "argv": list(argv), "env": env, "cwd": cwd,
                      "pty": True})
        saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
        if saved is not None:
            tty.setraw(in_fd)
        watched = [in_fd, channel.sock.fileno()]
        try:
            while True:
                ready, _, _ = select.select(watched, [], [], 0.5)
                if in_fd in ready:
                    data = os.read(in_fd, 4096)
                    if data:
                        channel.send({"op": "input", "id": ident,
                                      "data": data.decode("utf-8", "surrogateescape")})
                    else:
                        channel.send({"op": "kill", "id": ident})
                        watched = [channel.sock.fileno()]
                message = channel.receive(0.05) if channel.sock.fileno() in ready else None
                while message is not None:
                    if message.get("id") == ident and "out" in message:
                        os.write(out_fd, message["out"].encode("utf-8", "surrogateescape"))
                    elif message.get("id") == ident and "exit" in message:
                        return int(message["exit"])
                    message = channel.receive(0)  # lines already buffered
                if self._vm is None or not self._vm.alive():
                    self._fail(GuestCrashed, "QEMU ended during the interactive command")
        except ChannelClosed:
            self._fail(GuestCrashed, "the agent connection closed")
        finally:
            if saved is not None:
                termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)

    def _ensure_running(self) -> AgentChannel:
        if not self._owned and (self._vm is None or not self._vm.alive()):
            raise VmStopped("the testbed VM started by `testbed up` is gone",
                            console_tail(self.files.console, 60))
        if self._vm is None or not self._vm.alive() or self._vm.channel is None:
            self.stop()
            self.start()
        assert self._vm is not None and self._vm.channel is not None
        return self._vm.channel

    def _receive(self, channel: AgentChannel, deadline: float) -> dict[str, Any]:
        vm = self._vm
        assert vm is not None
        while True:
            wait = min(0.5, deadline - time.monotonic())
            if wait <= 0:
                self._fail(GuestHung, "the guest sent nothing in time")
            try:
                message = channel.receive(wait)
            except ChannelClosed:
                self._fail(GuestCrashed, "QEMU ended while the command ran" if not vm.alive()
                           else "the agent connection closed")
            if message is not None:
                return message
            if not vm.alive():
                status = vm.proc.returncode if vm.proc else "?"
                self._fail(GuestCrashed, f"QEMU exited (status {status})")
            if vm.panicked():
                self._fail(GuestCrashed, "the guest kernel panicked")

    def _fail(self, kind: type[GuestCrashed | GuestHung], message: str) -> NoReturn:
        vm = self._vm
        if vm is not None and kind is GuestCrashed and vm.alive():
            time.sleep(0.5)  # let the panic's last lines reach the console
        if vm is not None and kind is GuestCrashed and not vm.alive() and not vm.panicked():
            kind = VmStopped
            message = f"{_how_qemu_ended(vm)}; no kernel panic on the guest console"
        tail = vm.tail() if vm is not None else self._last_console
        self.stop()
        raise kind(message, tail)

    # --- facts ------------------------------------------------------------------------

    @property
    def accelerator(self) -> str:
        """"kvm" or "tcg" (after start)."""
        return self._accel

    @property
    def vmlinux(self) -> Path | None:
        """The guest kernel's vmlinux when we built that kernel (None otherwise): the
        kernel watch's splats are symbolized with it."""
        if self._kernel is not None and self._kernel.kind in ("default", "debug", "coverage"):
            path = self._kernel.image.with_name("vmlinux")
            return path if path.exists() else None
        return self._vmlinux

    @property
    def kernel_image(self) -> Path | None:
        """The guest kernel's image (after start; None for an attached VM)."""
        return self._kernel.image if self._kernel is not None else None

    @property
    def kernel_release(self) -> str:
        """uname -r of the guest (after start)."""
        if self._vm is not None and self._vm.release:
            return self._vm.release
        return self._kernel.release if self._kernel else ""

    @property
    def qemu_version(self) -> str:
        """QEMU's version number."""
        return qemu_version()

    @property
    def pid(self) -> int:
        """QEMU's PID (0 when no VM runs)."""
        return self._vm.pid if self._vm is not None else 0

    @property
    def boot_seconds(self) -> float:
        """Seconds from starting QEMU to the agent's first answer, last boot."""
        return self._vm.boot_seconds if self._vm is not None else 0.0

    def console_tail(self, n: int = 60) -> str:
        """The last `n` lines of the guest's console (of the last VM when none runs)."""
        if self._vm is not None:
            return self._vm.tail(n)
        return "\n".join(self._last_console.splitlines()[-n:]) or \
            console_tail(self.files.console, n)

__all__ = [
    "BootFailed",
    "CommandResult",
    "CommandStream",
    "GuestCrashed",
    "GuestHung",
    "Testbed",
]
