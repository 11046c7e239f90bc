"""Owner handover: a case's open handles go to a freshly exec'd engine process.

The `handover` operation (run/ops/liveupdate.py) does what a VMM's live update does
(QEMU's cpr-transfer): the process that owns the IOMMU (container or iommufd), the
groups and the devices passes their file descriptors over a unix socket
(SCM_RIGHTS) to a new process, which continues the case's remaining steps, owns
their teardown and releases, and reports the case's result. Memory that must
survive is memfd-backed: the successor maps each memfd again, at a new address.

What crosses is the case's Runtime (handles, scratch state, cleanups), pickled with
a Pickler that
- replaces every file descriptor of the known handle classes by its index in the
  SCM_RIGHTS array (one index per descriptor number),
- writes a memfd buffer as its memfd (mapped again by the successor) and an
  anonymous or hugetlb buffer as *left behind* (the memory stays with the
  predecessor's address space; using it in the successor is the step's failure),
- writes a memoryview into a memfd buffer (a driver's queues) as (buffer, offset,
  length), so drivers keep working on the same pages,
- drops the C cells (cffi out-parameters) and makes them again.
Anything else that cannot be pickled (a cleanup closure of an operation that does not
support the handover) fails the `handover` step with its name; the predecessor then
keeps everything and finishes the case as usual.

Wire format, predecessor → successor: one sendmsg with SCM_RIGHTS carrying an
8-byte length, then the pickle. Successor → predecessor: one line, `ready <pid>` or
`error <message>`.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vfio_scenario.errors import VfioScenarioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import make_cells

LENGTH = struct.Struct("<Q")
READY_TIMEOUT = 120.0  # s: a fresh Python under TCG imports the engine in a few seconds


class HandoverError(VfioScenarioError):
    """The handles could not be handed over (the `handover` step's failure)."""


@dataclass(frozen=True)
class FdRef:
    """A file descriptor in the pickle: its index in the SCM_RIGHTS array."""

    index: int


@dataclass
class Moved:
    """What the successor made of the predecessor's memory: buffer name → (old address,
    new address, size), and the buffers left behind."""

    buffers: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    left_behind: list[str] = field(default_factory=list)

    def translate(self, vaddr: int) -> int | None:
        """The successor's address of predecessor address `vaddr`, None if it did not move."""
        for old, new, size in self.buffers.values():
            if old <= vaddr < old + size:
                return new + (vaddr - old)
        return None


class LeftBehind:
    """A buffer whose memory stayed in the predecessor's address space (not memfd)."""

    def __init__(self, name: str, size: int, backing: str, addr: int) -> None:
        self.name = name
        self.size = size
        self.backing = backing
        self.addr = addr
        self.fd = -1

    def __getattr__(self, attr: str) -> Any:
        raise HandoverError(f"buffer {self.name} ({self.backing}) was the predecessor's "
                            "memory and did not cross the handover: only memfd-backed "
                            "buffers (alloc_buffer backing: memfd) survive it")

    def close(self) -> None:
        """Nothing to release: the memory went with the predecessor's address space."""


# Per class: the attributes holding one fd, a list of fds, and cffi cells to make again.
FD_FIELDS: dict[str, tuple[str, ...]] = {
    "vfio_scenario.uapi.container.Container": ("fd",),
    "vfio_scenario.uapi.container.Group": ("fd",),
    "vfio_scenario.uapi.iommufd.Iommufd": ("fd",),
    "vfio_scenario.uapi.device.VfioDevice": ("fd",),
    "vfio_scenario.uapi.device.Cdev": ("fd",),
    "vfio_scenario.uapi.dmabuf.DmaBuf": ("fd",),
    "vfio_scenario.uapi.kmsg.KernelLog": ("fd",),
    "vfio_scenario.uapi.kmsg.KmsgReader": ("fd",),
    "vfio_scenario.uapi.mmio.Mmio": ("fd",),
}
FD_LISTS: dict[str, tuple[str, ...]] = {"vfio_scenario.uapi.irq.IrqSet": ("eventfds",)}
# (cffi out-cells: a class lists its own in `CELLS`, made again by uapi.ioctl.make_cells)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class _Pickler(pickle.Pickler):
    def __init__(self, f: io.BytesIO) -> None:
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.fds: list[int] = []
        self.index: dict[int, int] = {}
        from vfio_scenario.uapi.buffers import DmaBuffer

        self.buffers = [b for b in DmaBuffer.live if b.ptr != ffi.NULL]

    def fd(self, fd: int) -> FdRef | int:
        if fd < 0:
            return fd
        if fd not in self.index:
            self.index[fd] = len(self.fds)
            self.fds.append(fd)
        return FdRef(self.index[fd])

    def reducer_override(self, obj: Any) -> Any:
        from vfio_scenario.run.interpreter import Runtime
        from vfio_scenario.uapi.buffers import DmaBuffer

        if isinstance(obj, memoryview):
            return self._view(obj)
        if isinstance(obj, DmaBuffer):
            return self._buffer(obj)
        if isinstance(obj, Runtime):
            state = {k: v for k, v in vars(obj).items()
                     if k not in ("listener", "end", "handover", "result")}
            # (made first, filled after: cleanups hold partials of the Runtime itself)
            return _new, (Runtime,), state, None, None, _set_runtime
        if isinstance(obj, ffi.CData):
            raise HandoverError(f"a C object ({ffi.typeof(obj).cname}) that does not cross "
                                "a process boundary")
        name = _qualname(obj)
        cells = getattr(type(obj), "CELLS", {})
        if name in FD_FIELDS or name in FD_LISTS or cells:
            state = dict(vars(obj))
            for attr in FD_FIELDS.get(name, ()):
                state[attr] = self.fd(state[attr])
            for attr in FD_LISTS.get(name, ()):
                state[attr] = [self.fd(fd) for fd in state[attr]]
            for attr in cells:
                state.pop(attr, None)
            if name == "vfio_scenario.uapi.mmio.Mmio":
                state.pop("ptr", None)
            # made first, filled after: handles point at each other (an IOAS at its
            # iommufd, the iommufd at its default IOAS)
            return _new, (type(obj),), (name, state), None, None, _rebuild
        return NotImplemented

    def _buffer(self, buf: Any) -> Any:
        if buf.fd < 0 or buf.ptr == ffi.NULL:
            return LeftBehind, (buf.name, buf.size, buf.backing.value, buf.addr)
        return _buffer, (self.fd(buf.fd), buf.size, buf.backing.value, buf.name, buf.addr)

    def _view(self, view: memoryview) -> Any:
        start = int(ffi.cast("uintptr_t", ffi.from_buffer(view, require_writable=False)))
        for buf in self.buffers:
            if buf.addr <= start < buf.addr + buf.size:
                if buf.fd < 0:
                    raise HandoverError(f"memory of buffer {buf.name} ({buf.backing.value}) "
                                        "that a handle uses is not memfd-backed")
                return _view, (buf, start - buf.addr, view.nbytes, view.format, view.readonly)
        return NotImplemented  # a view of bytes the pickle copies (not shared memory)


# ---- the successor's side of the pickle --------------------------------------------

class _State:
    """What the unpickling successor fills in (module-level: pickle calls functions)."""

    fds: ClassVar[list[int]] = []
    moved: ClassVar[Moved] = Moved()


def _resolve(value: Any) -> Any:
    return _State.fds[value.index] if isinstance(value, FdRef) else value


def _new(cls: type[Any]) -> Any:
    return object.__new__(cls)


def _rebuild(obj: Any, name_state: tuple[str, dict[str, Any]]) -> None:
    name, state = name_state
    for attr in FD_FIELDS.get(name, ()):
        state[attr] = _resolve(state[attr])
    for attr in FD_LISTS.get(name, ()):
        state[attr] = [_resolve(fd) for fd in state[attr]]
    if getattr(type(obj), "CELLS", None):
        make_cells(obj)
    if name == "vfio_scenario.uapi.mmio.Mmio":
        from vfio_scenario.uapi.buffers import mmap_raw

        if state.get("addr"):
            prot = lib.PROT_READ | (lib.PROT_WRITE if state.get("writable", True) else 0)
            state["ptr"] = mmap_raw(state["size"], prot, lib.MAP_SHARED, state["fd"],
                                    state["offset"], "mmap", state["handle"])
            state["addr"] = int(ffi.cast("uintptr_t", state["ptr"]))
        else:
            state["ptr"] = ffi.NULL
    obj.__dict__.update(state)


def _buffer(fd: Any, size: int, backing: str, name: str, old_addr: int) -> Any:
    """The memfd buffer mapped again in the successor, never at its old address."""
    from vfio_scenario.uapi.buffers import Backing, DmaBuffer, mmap_raw, munmap_raw

    fd = _resolve(fd)
    prot = lib.PROT_READ | lib.PROT_WRITE
    flags = lib.MAP_SHARED | lib.MAP_POPULATE
    ptr = mmap_raw(size, prot, flags, fd, 0, "mmap", name)
    if int(ffi.cast("uintptr_t", ptr)) == old_addr:  # the same address by chance: move
        other = mmap_raw(size, prot, flags, fd, 0, "mmap", name)
        munmap_raw(ptr, size)
        ptr = other
    buf = DmaBuffer.__new__(DmaBuffer)
    buf.backing = Backing(backing)
    buf.size, buf.name, buf.fd, buf.ptr = size, name, fd, ptr
    buf.addr = int(ffi.cast("uintptr_t", ptr))
    DmaBuffer.live.add(buf)
    _State.moved.buffers[name] = (old_addr, buf.addr, size)
    return buf


def _view(buf: Any, offset: int, nbytes: int, fmt: str, readonly: bool) -> memoryview:
    view: memoryview = buf.mem[offset:offset + nbytes]
    if fmt not in ("B", "b", "c"):
        view = view.cast(fmt)  # type: ignore[call-overload]  # any format pickled
    return view.toreadonly() if readonly else view


def _set_runtime(rt: Any, state: dict[str, Any]) -> None:
    rt.__dict__.update(state)
    rt.listener = rt.end = rt.handover = rt.result = None


# ---- the two processes ------------------------------------------------------------

def snapshot(payload: dict[str, Any]) -> tuple[bytes, list[int]]:
    """The pickle of `payload` and the fds it names, in SCM_RIGHTS order."""
    f = io.BytesIO()
    pickler = _Pickler(f)
    try:
        pickler.dump(payload)
    except HandoverError:
        raise
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise HandoverError(f"the case holds what cannot cross to another process: {exc}") \
            from None
    return f.getvalue(), pickler.fds


def restore(data: bytes, fds: list[int]) -> tuple[dict[str, Any], Moved]:
    """The payload of `snapshot`, its fds the received ones, its memfds mapped again."""
    _State.fds = fds
    _State.moved = Moved()
    payload = pickle.loads(data)
    return payload, _State.moved


def spawn(payload: dict[str, Any], keep: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    """Start a successor, hand it `payload` and wait until it holds everything.

    `keep` are fds the successor inherits by number (the case's event pipe); the
    pickle's fds cross over the socket. Returns the successor's Popen and its
    `ready` line; HandoverError (the successor killed) when it does not take over.
    """
    data, fds = snapshot(payload)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vfio_scenario.run.successor",
                                 str(theirs.fileno())],
                                pass_fds=[theirs.fileno(), *keep], env=env, close_fds=True,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        ours.close()
        theirs.close()
        raise HandoverError(f"cannot start the successor: {exc}") from None
    theirs.close()
    try:
        socket.send_fds(ours, [LENGTH.pack(len(data))], fds)
        ours.sendall(data)
        ours.settimeout(READY_TIMEOUT)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = ours.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError as exc:
        answer = f"error {exc}".encode()
    finally:
        ours.close()
    text = answer.decode(errors="replace").strip()
    if not text.startswith("ready"):
        proc.kill()
        proc.wait()
        raise HandoverError(f"the successor did not take over: {text or 'it exited'}")
    return proc, text


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The successor's side of `spawn`: the pickle and the fds."""
    head, fds, _flags, _addr = socket.recv_fds(sock, LENGTH.size, 253)
    while len(head) < LENGTH.size:
        more = sock.recv(LENGTH.size - len(head))
        if not more:
            raise HandoverError("the predecessor hung up")
        head += more
    (length,) = LENGTH.unpack(head)
    chunks: list[bytes] = []
    left = length
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise HandoverError("the predecessor hung up")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks), fds


def now() -> float:
    """The clock both processes share (CLOCK_MONOTONIC is system-wide)."""
    return time.monotonic()
