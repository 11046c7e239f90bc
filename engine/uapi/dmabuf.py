"""DMABUFs exported from a VFIO device region (VFIO_DEVICE_FEATURE_DMA_BUF)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.ioctl import close_fd
from vfio_scenario.uapi.mmio import Mmio

if TYPE_CHECKING:
    from vfio_scenario.uapi.device import VfioDevice


class DmaBuf:
    """An exported DMABUF fd covering `ranges` ((offset, length) pairs) of one region.

    `size` is the sum of the ranges: the DMABUF's own offsets run 0..size.
    """

    def __init__(self, device: VfioDevice, fd: int, region: int,
                 ranges: list[tuple[int, int]]) -> None:
        self.device = device
        self.fd = fd
        self.region = region
        self.ranges = ranges
        self.size = sum(length for _off, length in ranges)
        self.handle = f"dmabuf {fd} of {device.bdf} region {region}"
        self.revoked = False
        self.mappings: list[Mmio] = []

    def mmap(self, offset: int = 0, size: int | None = None, writable: bool = True) -> Mmio:
        """mmap the DMABUF; kernels without DMABUF mmap answer EINVAL (VfioError "mmap")."""
        size = self.size - offset if size is None else size
        if self.fd < 0:
            raise VfioError(errno.EBADF, "mmap", self.handle, "closed")
        mapping = Mmio(self.fd, offset, size, self.handle, writable)
        self.mappings.append(mapping)
        return mapping

    def close(self) -> None:
        """Unmap every mapping made through `mmap`, then close the fd; idempotent."""
        for mapping in self.mappings:
            mapping.close()
        self.mappings.clear()
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1
