"""This process's capabilities (capget/capset) and a process's memory counters.

libc's capget()/capset() with _LINUX_CAPABILITY_VERSION_3 (two 32-bit words per set),
as libcap's cap_set_proc() issues them; the counters are the kB lines of
/proc/PID/status.
"""

from __future__ import annotations

import ctypes
import os

from vfio_scenario.errors import VfioError

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# linux/capability.h's names, by bit (the `drop_capability` operation takes them)
CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
                "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
                "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
                "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
                "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
                "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
                "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
                "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
                "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
                "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
                "CAP_CHECKPOINT_RESTORE")


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _capget() -> tuple[_Header, ctypes.Array[_Data]]:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc().capget(ctypes.byref(header), data) != 0:
        raise VfioError(ctypes.get_errno(), "capget", "this process")
    return header, data


def effective_capabilities() -> int:
    """This process's effective set, as a bit mask (bit N: capability N)."""
    _, data = _capget()
    return int(data[0].effective) | int(data[1].effective) << 32


def drop_effective(bit: int) -> None:
    """Clear capability `bit` from this process's effective set (the permitted set
    keeps it, as libcap's cap_set_flag(CAP_EFFECTIVE, CAP_CLEAR) + cap_set_proc())."""
    header, data = _capget()
    data[bit // 32].effective &= ~(1 << (bit % 32)) & 0xFFFFFFFF
    if _libc().capset(ctypes.byref(header), data) != 0:
        raise VfioError(ctypes.get_errno(), "capset", "this process")


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A kB counter of /proc/PID/status (VmLck, VmPin …) in bytes, read as the signed
    number the kernel keeps (it prints the u64: a counter below 0 reads 2^64 - n kB);
    0 when the line is absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    kib = int(line.split()[1])
                    return (kib - (1 << 64) if kib >= 1 << 63 else kib) * 1024
    except FileNotFoundError:
        raise VfioError(2, "open", f"/proc/{pid}/status", "no such process") from None
    return 0


def parent_pid() -> int:
    return os.getppid()
