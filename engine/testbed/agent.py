"""Guest agent of the testbed: runs commands in the guest and streams their output.

It runs inside the VM (chrooted into the host's root shared over 9p) as a plain script,
stdlib only, so it starts in well under a second even under TCG. It talks JSON lines
over a virtio-serial port (see protocol below) and serves one host connection at a
time; several commands may run at once. When the host goes away (the port reports a
hang-up), every running command is killed, like a terminal that closes.

Protocol, one JSON object per line, host -> guest:
  {"op": "ping", "id": N}
  {"op": "run", "id": N, "argv": [...], "env": {...} | null, "cwd": "..." | null}
  {"op": "kill", "id": N}
  {"op": "run", …, "pty": true}      the command gets a terminal (interactive shells)
  {"op": "input", "id": N, "data": "<text>"}   typed into that terminal, or written to
                                               the command's stdin
  {"op": "run", …, "stdin": true}    the command's stdin is a pipe fed by "input"
  {"op": "close_input", "id": N}     end of file on that pipe
guest -> host:
  {"id": N, "pong": {"release": "...", "uptime": 1.23, "stdin": true}}
  {"id": N, "out": "<text>"} / {"id": N, "err": "<text>"}   output chunks as they come
  {"id": N, "exit": <int>}                                   negative = killed by signal
  {"id": N, "exit": 127, "error": "<why it could not start>"}
Text is UTF-8 decoded with surrogateescape so bytes round-trip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from typing import Any

PORT_NAME = "vfio-scenario.agent"
CHUNK = 65536


def find_port(name: str = PORT_NAME) -> str:
    """The /dev node of the virtio-serial port called `name` (waits up to 10 s for it)."""
    deadline = time.monotonic() + 10
    while True:
        base = "/sys/class/virtio-ports"
        if os.path.isdir(base):
            for port in sorted(os.listdir(base)):
                try:
                    with open(f"{base}/{port}/name") as f:
                        if f.read().strip() == name:
                            return f"/dev/{port}"
                except OSError:
                    continue
        if time.monotonic() > deadline:
            raise SystemExit(f"agent: no virtio-serial port named {name}")
        time.sleep(0.05)


class Command:
    """One running command: its process and the pipes still open."""

    def __init__(self, ident: Any, proc: subprocess.Popen[bytes]) -> None:
        self.ident = ident
        self.proc = proc
        self.terminal = -1
        if proc.stdout is None or proc.stderr is None:
            self.pipes: dict[int, str] = {}
        else:
            self.pipes = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}

    def attach_terminal(self, master: int) -> None:
        """The command runs on a terminal whose master side is `master`."""
        self.terminal = master
        self.pipes = {master: "out"}


class Agent:
    """The agent's event loop over the port and the commands' pipes."""

    def __init__(self, port_path: str) -> None:
        self.fd = os.open(port_path, os.O_RDWR)
        self.commands: dict[int, Command] = {}   # pipe fd -> command
        self.by_id: dict[Any, Command] = {}
        self.inbuf = b""
        self.base_env = dict(os.environ)

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            try:
                written = os.write(self.fd, data)
            except InterruptedError:
                continue
            data = data[written:]

    def handle(self, request: dict[str, Any]) -> None:
        op, ident = request.get("op"), request.get("id")
        if op == "ping":
            with open("/proc/uptime") as f:
                uptime = float(f.read().split()[0])
            self.send({"id": ident, "pong": {"release": os.uname().release, "uptime": uptime,
                                             "stdin": True}})
        elif op == "run":
            self.start(ident, request)
        elif op == "kill":
            command = self.by_id.get(ident)
            if command is not None:
                _kill(command.proc)
        elif op == "input":
            command = self.by_id.get(ident)
            data = str(request.get("data", "")).encode("utf-8", "surrogateescape")
            if command is not None and command.terminal >= 0:
                os.set_blocking(command.terminal, True)
                os.write(command.terminal, data)
                os.set_blocking(command.terminal, False)
            elif command is not None and command.proc.stdin is not None:
                with contextlib.suppress(OSError):  # BrokenPipeError: it reads no more
                    command.proc.stdin.write(data)
                    command.proc.stdin.flush()
        elif op == "close_input":
            command = self.by_id.get(ident)
            if command is not None and command.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    command.proc.stdin.close()

    def start(self, ident: Any, request: dict[str, Any]) -> None:
        env = dict(self.base_env)
        env.update(request.get("env") or {})
        master = -1
        try:
            if request.get("pty"):
                master, slave = pty.openpty()
                env.setdefault("TERM", "xterm")
                proc = subprocess.Popen(request["argv"], stdin=slave, stdout=slave, stderr=slave,
                                        env=env, cwd=request.get("cwd") or "/",
                                        start_new_session=True,
                                        preexec_fn=_take_terminal)  # noqa: PLW1509 - one thread
                os.close(slave)
            else:
                stdin = subprocess.PIPE if request.get("stdin") else subprocess.DEVNULL
                proc = subprocess.Popen(request["argv"], stdin=stdin,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env, cwd=request.get("cwd") or "/",
                                        start_new_session=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if master >= 0:
                os.close(master)
            self.send({"id": ident, "exit": 127, "error": f"{type(exc).__name__}: {exc}"})
            return
        command = Command(ident, proc)
        if master >= 0:
            command.attach_terminal(master)
        self.by_id[ident] = command
        for fd in command.pipes:
            os.set_blocking(fd, False)
            self.commands[fd] = command

    def pump(self, fd: int) -> None:
        command = self.commands[fd]
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: a terminal whose last user has gone
            data = b""
        if data:
            self.send({"id": command.ident,
                       command.pipes[fd]: data.decode("utf-8", "surrogateescape")})
            return
        del self.commands[fd]
        del command.pipes[fd]
        if fd == command.terminal:
            os.close(fd)
        if not command.pipes:
            if command.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    command.proc.stdin.close()
            code = command.proc.wait()
            del self.by_id[command.ident]
            self.send({"id": command.ident, "exit": code})

    def read_requests(self) -> bool:
        """Read what the host sent; False when the host hung up."""
        try:
            data = os.read(self.fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            return False
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            if line.strip():
                try:
                    self.handle(json.loads(line))
                except ValueError:
                    self.send({"id": None, "exit": 127, "error": "malformed request"})
        return True

    def hang_up(self) -> None:
        """The host went away: end its commands, forget its half-read request."""
        for command in list(self.by_id.values()):
            _kill(command.proc)
            command.proc.wait()
        self.commands.clear()
        self.by_id.clear()
        self.inbuf = b""

    def loop(self) -> None:
        poller = select.poll()
        watched: set[int] = set()
        while True:
            wanted = {self.fd, *self.commands}
            for fd in wanted - watched:
                poller.register(fd, select.POLLIN)
            for fd in watched - wanted:
                poller.unregister(fd)
            watched = wanted
            for fd, events in poller.poll(1000):
                if fd == self.fd:
                    if events & select.POLLHUP or not self.read_requests():
                        self.hang_up()
                        time.sleep(0.1)  # no host: the port keeps reporting a hang-up
                elif fd in self.commands:
                    self.pump(fd)
            self.reap_orphans()

    def reap_orphans(self) -> None:
        """Reap children that are not our commands (the agent is the guest's PID 1, so
        daemons of finished commands end up as its children); ours are left to Popen."""
        ours = {command.proc.pid for command in self.by_id.values()}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in ours:
                return
            os.waitpid(info.si_pid, 0)


def _take_terminal() -> None:
    # in the child, after setsid: make the pty on stdin the controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    """Serve the port named on the command line (default: vfio-scenario.agent)."""
    name = sys.argv[1] if len(sys.argv) > 1 else PORT_NAME
    print(f"vfio-scenario agent: serving {find_port(name)}", flush=True)
    Agent(find_port(name)).loop()


if __name__ == "__main__":
    main()
