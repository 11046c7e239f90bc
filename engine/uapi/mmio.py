"""Mapped device memory (a BAR or a DMABUF): exact-width accesses and the fault probe."""

from __future__ import annotations

import errno
import signal
from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.buffers import mmap_raw, munmap_raw

WIDTHS = (1, 2, 4, 8)


class AccessFault(VfioError):
    """An MMIO access that raised SIGBUS or SIGSEGV; `errno_name` is the signal's name."""

    def __init__(self, signum: int, op: str, handle: str, offset: int) -> None:
        super().__init__(0, op, handle, f"offset 0x{offset:x}")
        self.signum = signum
        self.errno_name = signal.Signals(signum).name
        self._message = f"{op} on {handle} at offset 0x{offset:x} raised {self.errno_name}"


class Mmio:
    """A shared mapping of device memory; every access is one load or store of `width`.

    Reads and writes go through the fault probe, so a revoked or disabled mapping
    raises AccessFault (errno_name SIGBUS/SIGSEGV) instead of killing the process.
    """

    def __init__(self, fd: int, offset: int, size: int, handle: str,
                 writable: bool = True) -> None:
        prot = lib.PROT_READ | (lib.PROT_WRITE if writable else 0)
        self.ptr: Any = mmap_raw(size, prot, lib.MAP_SHARED, fd, offset, "mmap", handle)
        self.fd, self.offset, self.writable = fd, offset, writable  # (a handover maps again)
        self.size = size
        self.handle = handle
        self.addr = int(ffi.cast("uintptr_t", self.ptr))

    def _check(self, offset: int, width: int, op: str) -> None:
        if self.ptr == ffi.NULL:
            raise VfioError(errno.EBADF, op, self.handle, "mapping is closed")
        if width not in WIDTHS:
            raise VfioError(errno.EINVAL, op, self.handle, f"width {width} not in {WIDTHS}")
        if offset < 0 or offset + width > self.size or offset % width:
            raise VfioError(errno.EINVAL, op, self.handle,
                            f"offset 0x{offset:x} width {width} outside or misaligned "
                            f"in 0x{self.size:x} bytes")

    def read(self, offset: int, width: int) -> int:
        """Read `width` bytes at `offset`; AccessFault when the access faults."""
        self._check(offset, width, "mmio_read")
        value = ffi.new("uint64_t *")
        sig = lib.vs_probe_read(self.ptr + offset, width, value)
        if sig:
            raise AccessFault(sig, "mmio_read", self.handle, offset)
        result: int = value[0]
        return result

    def write(self, offset: int, width: int, value: int) -> None:
        """Write `width` bytes at `offset`; AccessFault when the access faults."""
        self._check(offset, width, "mmio_write")
        sig = lib.vs_probe_write(self.ptr + offset, width, value & ((1 << (8 * width)) - 1))
        if sig:
            raise AccessFault(sig, "mmio_write", self.handle, offset)

    def write64b(self, offset: int, data: bytes) -> None:
        """One 64-byte store (MOVDIR64B) of `data` at a 64-byte aligned `offset`.

        DSA work-queue portals accept descriptors only this way; EOPNOTSUPP where the
        CPU lacks the instruction."""
        self._check(offset, 8, "mmio_write64b")
        if len(data) != 64 or offset % 64 or offset + 64 > self.size:
            raise VfioError(errno.EINVAL, "mmio_write64b", self.handle,
                            f"needs 64 bytes at a 64-byte aligned offset, got {len(data)} at "
                            f"0x{offset:x}")
        ret = lib.vs_movdir64b(self.ptr + offset, ffi.from_buffer(data))
        if ret < 0:
            raise VfioError(-ret, "mmio_write64b", self.handle, "no MOVDIR64B on this CPU")

    def close(self) -> None:
        """Unmap; idempotent."""
        if self.ptr != ffi.NULL:
            munmap_raw(self.ptr, self.size)
            self.ptr = ffi.NULL
