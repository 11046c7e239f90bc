"""The way into a VM's warm guest engine (run/zygote.py), run in the guest instead of
`python -m vfio_scenario.run.guest PAYLOAD [--queue]`, with the same stdin, stdout,
stderr and exit status:

    python -I -S zygote_client.py SOCKET KEY PAYLOAD [--queue]
    python -I -S zygote_client.py --start SOCKET KEY PAYLOAD
    python -I -S zygote_client.py --main MODULE SOCKET KEY PAYLOAD ARG...

(`--main`: another of the engine's programs, `python -m MODULE ARG...`, e.g. the
drivers' facts, run/driverfacts.py; PAYLOAD is then only what a warm engine started
for it warms up with.)

Standard library only, run by its path without the site packages: it starts in a
fraction of the engine's start under TCG. It connects to the warm engine listening at
SOCKET and hands it its stdin, stdout and stderr (SCM_RIGHTS) with the engine's
arguments; the warm engine forks the run with those as its own and sends the run's
exit status, which the client exits with (a signal's death it dies of again). When
the client ends before the run (the host's command killed), the warm engine kills the
run, as the agent kills a command of its own.

A warm engine serves one KEY: the engine's content (its files, models, drivers), which
the host computes. When none listens at SOCKET (the VM booted since, or the warm engine
died), or the one there serves another KEY (the checkout changed: it retires, its runs
go on), the client starts one, under a lock beside SOCKET: it binds SOCKET itself and
starts `python -m vfio_scenario.run.zygote serve` in a session of its own (it outlives
the command and the host's connection), which inherits the listening socket, warms up
with PAYLOAD's models and then accepts; the request waits in the socket's backlog
meanwhile. `--start` only makes sure one is warm or warming up (the host starts it
right after a boot, while it compiles) and exits.

When the warm engine cannot serve (it died before answering: its log's tail goes into a
warning), the client runs the engine in a fresh Python (exec), as before there was one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
from typing import Any

SERVE = "vfio_scenario.run.zygote"  # the warm engine's module (python -m … serve)
GUEST = "vfio_scenario.run.guest"  # the engine in a fresh Python
LISTEN_FD = 3  # the listening socket, in the warm engine
LOST = 70  # the run's exit status was lost (its warm engine and the run both gone)


def key_file(path: str) -> str:
    """What the warm engine at `path` serves: its KEY and its token, one a line."""
    return path + ".key"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _spawn(path: str, key: str, payload: str) -> None:
    """Bind `path` and start the warm engine on it, detached (double fork, own session)."""
    for stale in (path, key_file(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    token = os.urandom(8).hex()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    with open(key_file(path), "w") as f:
        f.write(f"{key}\n{token}\n")
    argv = [sys.executable, "-m", SERVE, "serve", path, key, token, payload]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(path + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.dup2(listener.fileno(), LISTEN_FD)
            os.set_inheritable(LISTEN_FD, True)
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    listener.close()


def ensure(path: str, key: str, payload: str) -> socket.socket | None:
    """A connection to the warm engine of `key` at `path`, started when there is none
    or the one there serves another key; None when none could be started."""
    try:
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _connect(path)
            if sock is not None and _read(key_file(path)).split("\n")[:1] == [key]:
                return sock
            if sock is not None:
                sock.close()
            _spawn(path, key, payload)
            return _connect(path)
    except OSError as exc:
        sys.stderr.write(f"zygote_client: cannot start the warm engine: {exc}\n")
        return None


def _lines(sock: socket.socket) -> Any:
    """The JSON messages the warm engine sends, one a line, until it closes."""
    buffer = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def _fresh(program: list[str], why: str) -> int:
    """Run the program (`-m MODULE ARG...`) in a fresh Python (this process becomes it),
    saying why."""
    sys.stdout.write(json.dumps({"event": "warning", "message": why}) + "\n")
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *program])
    return 127  # pragma: no cover - execv does not return


def _log_tail(path: str) -> str:
    tail = _read(path + ".log").strip().splitlines()[-5:]
    return ("; its log ends: " + " | ".join(tail)) if tail else ""


def _exit_as(status: int) -> int:
    """`status` as this process's own: an exit code, or death by that signal."""
    if status < 0:
        sys.stdout.flush()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def main(argv: list[str]) -> int:
    start_only = argv[:1] == ["--start"]
    args = argv[1:] if start_only else argv
    module = GUEST
    if args[:1] == ["--main"] and len(args) > 1 and args[1].startswith("vfio_scenario."):
        module, args = args[1], args[2:]
    if len(args) < 3:
        sys.stderr.write("usage: zygote_client.py [--start | --main MODULE] SOCKET KEY "
                         "PAYLOAD [ARG...]\n")
        return 2
    path, key, payload = args[0], args[1], args[2]
    # the program's own arguments: the engine's are the payload and --queue
    engine = args[2:] if module == GUEST else args[3:]
    program = ["-m", module, *engine]
    for _attempt in range(3):
        sock = ensure(path, key, payload)
        if start_only:
            if sock is not None:
                sock.close()
            return 0 if sock is not None else 1
        if sock is None:
            return _fresh(program, "the warm guest engine could not be started; this run "
                                   "starts the engine afresh")
        request = {"key": key, "main": module, "argv": engine, "cwd": os.getcwd(),
                   "env": dict(os.environ)}
        with sock:
            try:
                socket.send_fds(sock, [(json.dumps(request) + "\n").encode()], [0, 1, 2])
            except OSError:
                continue  # it went away meanwhile: start another
            replies = _lines(sock)
            reply = next(replies, None)
            if reply is None:
                return _fresh(program, "the warm guest engine ended before it ran the engine"
                                      + _log_tail(path) + "; this run starts the engine afresh")
            if "stale" in reply:
                continue  # it serves another key (and retired): start one for ours
            if "pid" not in reply:
                return _fresh(program, f"the warm guest engine refused the run: "
                                      f"{reply.get('error', reply)}; this run starts the engine afresh")
            status = next(replies, None)
        if status is None or "status" not in status:
            sys.stderr.write("zygote_client: the run's exit status was lost (the warm guest "
                             "engine and the run ended without it)\n")
            return LOST
        return _exit_as(int(status["status"]))
    return _fresh(program, "the warm guest engine kept serving another engine; this run "
                          "starts the engine afresh")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
