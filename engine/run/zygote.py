"""A warm guest engine: a process that has imported the engine, made the payload's
models, registered the operations and imported the scenario drivers once, and forks
a run from there.

A fresh `python -m vfio_scenario.run.guest` pays, before its first case, the Python
start, the engine's imports, the models (run/guest_models.py), the operations'
registration and reading the kernel's config; under TCG that is most of what a light
scenario file costs end to end (benchmarks/guest_profile.py). `preload()` does all of
that in this process; each run is then a fork of it (`fork_run`), which inherits it
all, and each case a fork of the run, as always: a case that corrupts its process's
state affects neither the run nor the next case, and a run neither the next run.

The models are made per content (guest_models.build's key): a payload of the same
checkout reuses them; one of other models (another checkout) is refused by
guest_models.install in the forked run, which then runs the engine in a fresh Python.

In the testbed each VM keeps one warm process (`serve`, started by the host right after
the boot, or by the first run that finds none): the host runs the guest engine through
run/zygote_client.py, which hands the warm process its stdin, stdout and stderr; the
run forked from it is the engine's run as a fresh Python's would be, in a session of
its own. The warm process serves one key (`engine_key`: the engine's files, the models,
the drivers, the Python): a run of other content makes the client start another, and
the old one retires. A VM that reboots (a guest crash) has none, and its next run starts
one. When a run's client ends first (the host's command killed), the run is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vfio_scenario.testbed import Testbed

# where a VM's warm process listens (the guest's own /run, a tmpfs of its own)
GUEST_SOCKET = "/run/vfio-scenario/zygote.sock"
CLIENT = str(Path(__file__).with_name("zygote_client.py"))

# the guest engine's modules that do not need the models (imported before them)
WARM_MODULES = (
    "vfio_scenario.drivers.base", "vfio_scenario.run.devstate", "vfio_scenario.run.executor",
    "vfio_scenario.run.guest", "vfio_scenario.run.interpreter",
    "vfio_scenario.run.kernel_watch", "vfio_scenario.run.plan", "vfio_scenario.run.probe",
    "vfio_scenario.run.session", "vfio_scenario.uapi.capabilities",
)


def preload(payload_path: str | None = None) -> None:
    """Import the guest engine; with a payload, also make its models, install them and
    register every operation (the next payloads of this checkout find them made)."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    from vfio_scenario.uapi.kconfig import kernel_config

    kernel_config()  # read and unpacked once (cached for the process and its forks)
    if payload_path is None:
        return
    from vfio_scenario.drivers.base import use_drivers
    from vfio_scenario.run import guest_models, payload

    with open(payload_path, "rb") as f:
        header = payload.read_header(f)
    guest_models.install(header.models, header.models_code)
    from vfio_scenario.run.ops import operations  # binds the models just installed

    operations()
    use_drivers(header.drivers)  # the scenario drivers' modules imported


def fork_run(argv: Sequence[str], stdout: int = 1, stdin: int | None = None,
             main: Callable[[list[str]], int] | None = None, *, stderr: int | None = None,
             cwd: str | None = None, env: Mapping[str, str] | None = None,
             status: socket.socket | None = None, close: Sequence[int] = ()) -> int:
    """Fork a run of the guest engine (`guest.main(argv)`, or `main`) from this warm
    process with its stdout on `stdout` (and stdin on `stdin`); returns its PID. When
    the payload's models are not this process's, the child runs the engine in a fresh
    Python instead (exec). The warm objects are frozen for the fork (gc.freeze: the
    run's garbage collector never walks them, so their pages stay shared).

    For a client of `serve`: the run has its stderr on `stderr`, works in `cwd` with
    the environment `env`, leads a session of its own (killed as one), closes the warm
    process's descriptors `close` and sends its exit status on `status` itself (so
    that the client gets it even when the warm process has gone meanwhile)."""
    import gc

    with contextlib.suppress(Exception):  # nothing buffered is written twice
        sys.stdout.flush()
        sys.stderr.flush()
    gc.freeze()
    pid = os.fork()
    if pid != 0:
        gc.unfreeze()
        return pid
    code = 70
    try:
        _as_client_asked(stdout, stdin, stderr, cwd=cwd, env=env, session=status is not None,
                         close=close)
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stdin = os.fdopen(0, "r", closefd=False)
        if main is None:
            from vfio_scenario.run import guest

            main = guest.main
            sys.argv = [guest.__file__, *argv]
        try:
            code = main(list(argv))
        except RuntimeError as exc:
            if "holds other models" not in str(exc):
                raise
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", "vfio_scenario.run.guest", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, int | None):
                sys.stderr.write(f"{exc.code}\n")
        except BaseException:  # noqa: BLE001 - as a fresh Python reports it: traceback, 1
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if status is not None:
            with contextlib.suppress(OSError):
                status.sendall(json.dumps({"status": code}).encode() + b"\n")
        os._exit(code)


def _as_client_asked(stdout: int, stdin: int | None, stderr: int | None, *, cwd: str | None,
                     env: Mapping[str, str] | None, session: bool, close: Sequence[int]) -> None:
    """In a forked run: its standard descriptors, the warm process's others closed (its
    copies of the client's too), its directory, environment and session."""
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    given = {stdout, *(fd for fd in (stdin, stderr) if fd is not None)}
    os.dup2(stdout, 1)
    if stdin is not None:
        os.dup2(stdin, 0)
    if stderr is not None:
        os.dup2(stderr, 2)
        sys.stderr = os.fdopen(2, "w", closefd=False)
    for fd in given - {0, 1, 2}:
        with contextlib.suppress(OSError):
            os.close(fd)
    if session:
        os.setsid()
    if cwd is not None:
        os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)


# --- the warm process of a VM ------------------------------------------------------------

class _Run:
    """A run forked for a client: its process, the client's connection."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.conn = conn
        self.pidfd = os.pidfd_open(pid)
        self.ended = False
        self.killed = False  # its client went away: only its end is awaited

    def kill(self) -> None:
        """The client went away: the run goes as a command of the agent would (its
        process group), and so do its cases (each a process group of the run's session)."""
        self.killed = True
        if self.ended:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        for entry in Path("/proc").iterdir():
            try:  # the session of /proc/PID/stat: the fourth field after the name
                if entry.name.isdigit() and int((entry / "stat").read_text()
                                                .rsplit(")", 1)[1].split()[3]) == self.pid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue

    def reap(self) -> None:
        """The run ended: its exit status to the client (the run sent it already when it
        could; a death by a signal only this process sees)."""
        _, wait_status = os.waitpid(self.pid, 0)
        self.ended = True
        with contextlib.suppress(OSError):
            self.conn.sendall(json.dumps(
                {"status": os.waitstatus_to_exitcode(wait_status)}).encode() + b"\n")

    def close(self) -> None:
        for closing in (self.conn.close, lambda: os.close(self.pidfd)):
            with contextlib.suppress(OSError):
                closing()


class Server:
    """One VM's warm process: the runs of clients (run/zygote_client.py) forked from it.

    It serves `key` while the key file beside `path` names it (`token`): a client that
    started another one in its place, or a request of another key, retires it (it
    accepts no more and ends when its runs have)."""

    def __init__(self, listener: socket.socket, path: str, key: str, token: str) -> None:
        self.listener: socket.socket | None = listener
        self.path = path
        self.key = key
        self.token = token
        self.runs: dict[int, _Run] = {}  # by the connection's descriptor
        self.pending: dict[int, socket.socket] = {}  # connected, nothing asked yet

    def current(self) -> bool:
        """Whether the key file still names this process."""
        from vfio_scenario.run.zygote_client import key_file

        try:
            with open(key_file(self.path)) as f:
                return f.read().split("\n")[:2] == [self.key, self.token]
        except OSError:
            return False

    def retire(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for conn in self.pending.values():
            conn.close()
        self.pending.clear()

    def loop(self) -> None:
        """Serve until retired and every run has ended."""
        while self.listener is not None or self.runs:
            watched: dict[int, Any] = {}
            poller = select.poll()
            if self.listener is not None:
                watched[self.listener.fileno()] = self.listener
            watched.update({fd: conn for fd, conn in self.pending.items()})
            for fd, run in self.runs.items():
                if not run.killed:
                    watched[fd] = run
                watched[run.pidfd] = run
            for fd in watched:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(1000):
                self._ready(fd, watched[fd])
            if self.listener is not None and not self.current():
                self.retire()

    def _ready(self, fd: int, what: Any) -> None:
        if what is self.listener and self.listener is not None:
            conn, _ = self.listener.accept()
            self.pending[conn.fileno()] = conn
        elif isinstance(what, _Run):
            if fd == what.pidfd:
                what.reap()
                del self.runs[what.conn.fileno()]
                what.close()
            else:
                with contextlib.suppress(OSError):
                    if what.conn.recv(4096):
                        return  # a client says nothing more; only its end matters
                what.kill()  # its client went away
        elif fd in self.pending:
            self._request(self.pending.pop(fd))

    def _request(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            while data and not data.endswith(b"\n"):
                more = conn.recv(1 << 20)
                if not more:
                    break
                data += more
            request = json.loads(data) if data else None
        except (OSError, ValueError):
            request = None
        try:
            if not isinstance(request, dict) or len(fds) != 3:
                conn.close()  # a client that only looked (--start), or garbage
                return
            if request.get("key") != self.key:
                self.retire()  # other content asks: a fresh process serves it
                conn.sendall(json.dumps({"stale": self.key}).encode() + b"\n")
                conn.close()
                return
            keep = [c.fileno() for c in self.pending.values()]
            keep += [fd for run in self.runs.values() for fd in (run.conn.fileno(), run.pidfd)]
            if self.listener is not None:
                keep.append(self.listener.fileno())
            module = request.get("main") or "vfio_scenario.run.guest"
            if not str(module).startswith("vfio_scenario."):
                raise OSError(f"not one of the engine's programs: {module}")
            pid = fork_run(request["argv"], stdout=fds[1], stdin=fds[0], stderr=fds[2],
                           main=None if module == "vfio_scenario.run.guest" else
                           _program(str(module)),
                           cwd=request.get("cwd"), env=request.get("env"), status=conn,
                           close=keep)
            self.runs[conn.fileno()] = _Run(pid, conn)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)


def _program(module: str) -> Callable[[list[str]], int]:
    """The `main` of the engine's program `module`, imported in the forked run."""
    def main(argv: list[str]) -> int:
        import importlib

        code: int = importlib.import_module(module).main(argv)
        return code
    return main


def serve(path: str, key: str, token: str, payload_path: str) -> int:
    """The warm process of a VM (started by run/zygote_client.py, the listening socket
    at `path` on descriptor zygote_client.LISTEN_FD): warm up with `payload_path`'s
    models, then fork a run for each client until retired."""
    from vfio_scenario.run.zygote_client import LISTEN_FD

    listener = socket.socket(fileno=LISTEN_FD)
    try:
        preload(payload_path)
    except BaseException:  # noqa: BLE001 - the waiting clients run a fresh engine
        import traceback

        traceback.print_exc()
        return 1
    print(f"warm: key {key}, PID {os.getpid()}", flush=True)
    Server(listener, path, key, token).loop()
    return 0


# --- the host's side ---------------------------------------------------------------------

def _files_digest() -> str:
    """The engine's and the scenario drivers' source files, as their sizes and times."""
    import hashlib

    import vfio_scenario
    import vfio_scenario.drivers

    digest = hashlib.sha256()
    for folder in dict.fromkeys((*vfio_scenario.__path__, *vfio_scenario.drivers.__path__)):
        for path in sorted(Path(folder).rglob("*.py")):
            with contextlib.suppress(OSError):
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def engine_key(payload_path: str) -> str:
    """What a warm process made for the payload at `payload_path` must have been made
    from: this checkout's engine files, the payload's models and drivers, this Python."""
    import hashlib

    from vfio_scenario import __version__
    from vfio_scenario.run import payload

    with open(payload_path, "rb") as f:
        header = payload.read_header(f)
    models = (header.models_code or {}).get("key", "")
    parts = [__version__, sys.executable, sys.version, str(models),
             json.dumps(header.drivers, sort_keys=True), _files_digest()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def enabled() -> bool:
    """False when VFIO_SCENARIO_WARM_ENGINE=0: every run starts the engine afresh (to
    compare, or to rule the warm process out)."""
    return os.environ.get("VFIO_SCENARIO_WARM_ENGINE", "1") != "0"


def guest_argv(payload_path: str, *, queue: bool = False) -> list[str]:
    """The command that runs the guest engine over `payload_path` in a VM, forked from
    its warm process (run/zygote_client.py); a fresh Python's when not `enabled()`."""
    tail = [payload_path, *(["--queue"] if queue else [])]
    if not enabled():
        return [sys.executable, "-m", "vfio_scenario.run.guest", *tail]
    return [sys.executable, "-I", "-S", CLIENT, GUEST_SOCKET, engine_key(payload_path), *tail]


def warm_payload(workdir: str, drivers: dict[str, str]) -> str:
    """A payload of no case with this checkout's models and `drivers`, kept in `workdir`
    under its key (a warm process warming up reads it after the host went on)."""
    import time

    from vfio_scenario.run import payload

    written = payload.write(workdir, payload.Header(devices=[], drivers=drivers), [])
    path = os.path.join(workdir, f"warm-{engine_key(written)}.pickle")
    os.replace(written, path)
    for old in Path(workdir).glob("warm-*.pickle"):  # other checkouts' of other days
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                old.unlink()
    return path


def program_argv(module: str, warm: str | None, args: Sequence[str]) -> list[str]:
    """The command that runs the engine's program `module` (`python -m module args`) in a
    VM, forked from its warm process of `warm`'s content (a payload: start_request's), else
    (no `warm`, or not `enabled()`) in a fresh Python."""
    if warm is None or not enabled():
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-I", "-S", CLIENT, "--main", module, GUEST_SOCKET,
            engine_key(warm), warm, *args]


def start_command(payload_path: str) -> list[str]:
    """The command that makes sure a VM's warm process for `payload_path`'s content is
    warm or warming up, and returns at once."""
    return [sys.executable, "-I", "-S", CLIENT, "--start", GUEST_SOCKET,
            engine_key(payload_path), payload_path]


# the start in the background of a shell command: what the host does next in the VM
# need not wait for it
START_IN_BACKGROUND = '"$@" </dev/null >/dev/null 2>&1 &\n'


def start_request(workdir: str, drivers: dict[str, str]) -> tuple[str | None, list[str]]:
    """(the payload a VM's warm process warms up with, the command that starts it when
    the VM has none of that content and returns at once); (None, []) when not
    `enabled()`. The host runs it right after a boot, in the background of its first
    shell command there (`START_IN_BACKGROUND`, or `start_in`): the warm process warms
    up while the host lists the devices and compiles."""
    if not enabled():
        return None, []
    warm = warm_payload(workdir, drivers)
    return warm, start_command(warm)


def start_in(testbed: Testbed, start: Sequence[str], timeout: float) -> None:
    """Run the `start` command of start_request in `testbed`'s VM, in the background."""
    if start:
        testbed.run(["sh", "-c", START_IN_BACKGROUND, "sh", *start], timeout=timeout)


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "serve":
        return serve(*argv[1:])
    sys.stderr.write("usage: python -m vfio_scenario.run.zygote serve SOCKET KEY TOKEN "
                     "PAYLOAD\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
