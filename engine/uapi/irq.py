"""Device interrupts through VFIO_DEVICE_SET_IRQS, delivered on eventfds."""

from __future__ import annotations

import errno
import os
import select
import time
from enum import IntEnum
from typing import TYPE_CHECKING

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import ioctl, new

if TYPE_CHECKING:
    from vfio_scenario.uapi.device import VfioDevice


class IrqType(IntEnum):
    """VFIO PCI IRQ indexes."""

    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4

    @classmethod
    def parse(cls, name: str | int | IrqType) -> IrqType:
        if isinstance(name, str):
            return cls[name.upper()]
        return cls(name)


class IrqSet:
    """`count` vectors of one IRQ index, from `start`, each signalling its own eventfd.

    Created by `VfioDevice.enable_irq`; `disable` (or `close`) tears the vectors down.
    """

    def __init__(self, device: VfioDevice, irq_type: IrqType, count: int, start: int) -> None:
        self.device = device
        self.type = irq_type
        self.start = start
        self.count = count
        self.handle = f"{device.bdf} {irq_type.name.lower()}"
        self.eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
        try:
            self._set(lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                      start, self.eventfds)
        except VfioError:
            self._close_fds()
            raise
        self.enabled = True

    def _set(self, flags: int, start: int, fds: list[int] | None, count: int = 0) -> None:
        n = len(fds) if fds is not None else count
        arg = new("struct vfio_irq_set", 4 * len(fds) if fds else 0, flags=flags,
                  index=int(self.type), start=start, count=n)
        if fds:
            ints = ffi.cast("int32_t *", arg.data)
            for i, fd in enumerate(fds):
                ints[i] = fd
        ioctl(self.device.fd, "VFIO_DEVICE_SET_IRQS", arg, self.handle)

    def _vector(self, vector: int) -> int:
        if not 0 <= vector < self.count:
            raise VfioError(errno.EINVAL, "irq_vector", self.handle,
                            f"vector {vector} outside 0..{self.count - 1}")
        return self.start + vector

    def trigger(self, vector: int = 0) -> None:
        """Software trigger (DATA_NONE | ACTION_TRIGGER) of one vector."""
        self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                  self._vector(vector), None, 1)

    def mask(self, vector: int = 0) -> None:
        self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_MASK,
                  self._vector(vector), None, 1)

    def unmask(self, vector: int = 0) -> None:
        self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_UNMASK,
                  self._vector(vector), None, 1)

    def wait(self, vector: int = 0, timeout: float = 1.0) -> int:
        """Wait up to `timeout` s for the vector's eventfd; the count read, 0 on timeout."""
        fd = self.eventfds[self._vector(vector) - self.start]
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if poller.poll(max(0, int(left * 1000))):
                try:
                    return os.eventfd_read(fd)
                except BlockingIOError:
                    pass
            if left <= 0:
                return 0

    def drain(self, vector: int = 0) -> int:
        """Read and discard what the vector's eventfd holds; returns the count (0: none)."""
        try:
            return os.eventfd_read(self.eventfds[vector])
        except BlockingIOError:
            return 0

    def disable(self) -> None:
        """DATA_NONE | ACTION_TRIGGER with count 0: the kernel frees every vector."""
        if self.enabled:
            self.enabled = False
            try:
                self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER,
                          0, None, 0)
            finally:
                self._close_fds()
                self.device.irqs.pop(self.type, None)

    close = disable

    def _close_fds(self) -> None:
        for fd in self.eventfds:
            os.close(fd)
        self.eventfds = []
