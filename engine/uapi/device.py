"""A VFIO device, opened through its group (container modes) or its cdev (iommufd).

`VfioDevice` implements drivers/base.py's DeviceAccess: exact-width config and BAR
accesses and `wait_irq`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Self

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import pci, regions, sysfs
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.container import Container, Group
from vfio_scenario.uapi.dmabuf import DmaBuf
from vfio_scenario.uapi.ioctl import close_fd, ioctl, new, open_fd
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.iommufd import Ioas, Iommufd
from vfio_scenario.uapi.irq import IrqSet, IrqType
from vfio_scenario.uapi.mmio import WIDTHS, Mmio
from vfio_scenario.uapi.regions import DeviceInfo, IrqInfo, RegionInfo, region_index

REVOKE_FEATURE = lib.VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE
MEMATTR_FEATURE = lib.VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR


@dataclass(frozen=True)
class DependentDevice:
    """An entry of GET_PCI_HOT_RESET_INFO: `id` is a group id or (cdev) a devid."""

    id: int
    segment: int
    bus: int
    devfn: int

    @property
    def bdf(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


class Cdev:
    """/dev/vfio/devices/vfioN of a function, opened but not yet bound to an iommufd."""

    def __init__(self, bdf: str) -> None:
        self.bdf = sysfs.normalize_bdf(bdf)
        self.path = sysfs.vfio_cdev_path(self.bdf)
        self.fd = open_fd(self.path, "open_cdev")

    def bind(self, iommufd: Iommufd, vf_token: str | None = None) -> VfioDevice:
        """VFIO_DEVICE_BIND_IOMMUFD (with the VF token when given); the fd becomes the device."""
        arg = new("struct vfio_device_bind_iommufd", iommufd=iommufd.fd)
        token = None
        if vf_token is not None:
            token = ffi.new("uint8_t[16]", list(_uuid_bytes(vf_token)))
            arg.flags = lib.VFIO_DEVICE_BIND_FLAG_TOKEN
            arg.token_uuid_ptr = int(ffi.cast("uintptr_t", token))
        ioctl(self.fd, "VFIO_DEVICE_BIND_IOMMUFD", arg, self.bdf)
        device = VfioDevice(self.fd, self.bdf, iommufd, devid=arg.out_devid)
        self.fd = -1
        return device

    def close(self) -> None:
        close_fd(self.fd)
        self.fd = -1


class VfioDevice:
    """An open VFIO PCI device.  Construct with `VfioDevice.open` or `Cdev.bind`."""

    def __init__(self, fd: int, bdf: str, iommu: Iommu, group: Group | None = None,
                 devid: int | None = None) -> None:
        self.fd = fd
        self.bdf = bdf
        self.iommu = iommu
        self.group = group
        self.devid = devid
        self.attached_pt: int | None = None
        self.irqs: dict[IrqType, IrqSet] = {}
        self.dmabufs: list[DmaBuf] = []
        self._bar_maps: dict[int, Mmio] = {}
        self._regions: dict[int, RegionInfo] = {}
        self.vendor_id = self.config_read(pci.PCI_VENDOR_ID, 2)
        self.device_id = self.config_read(pci.PCI_DEVICE_ID, 2)

    @classmethod
    def open(cls, iommu: Iommu, bdf: str, vf_token: str | None = None,
             ioas: Ioas | int | None = None) -> VfioDevice:
        """Open `bdf` in the IOMMU's mode: group + container, or cdev bound and attached.

        In iommufd mode the device attaches to `ioas` (an Ioas, or a hwpt/IOAS id),
        default the iommufd's default IOAS.
        """
        bdf = sysfs.normalize_bdf(bdf)
        if isinstance(iommu, Iommufd):
            cdev = Cdev(bdf)
            try:
                device = cdev.bind(iommu, vf_token)
            except VfioError:
                # an open cdev keeps the function busy (sriov_numvfs=0 would wait for it)
                cdev.close()
                raise
            try:
                device.attach(iommu.ioas if ioas is None else ioas)
            except VfioError:
                device.close()
                raise
            return device
        if not isinstance(iommu, Container):
            raise VfioError(errno.EINVAL, "open_device", bdf, f"unknown IOMMU {iommu!r}")
        group = iommu.group(bdf)
        return cls(group.device_fd(bdf, vf_token), bdf, iommu, group)

    # ---- iommufd attachment (cdev) ----
    def attach(self, pt: Ioas | int) -> None:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS or hwpt id."""
        pt_id = pt.id if isinstance(pt, Ioas) else pt
        ioctl(self.fd, "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
              new("struct vfio_device_attach_iommufd_pt", pt_id=pt_id), self.bdf)
        self.attached_pt = pt_id

    def detach(self) -> None:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT."""
        ioctl(self.fd, "VFIO_DEVICE_DETACH_IOMMUFD_PT",
              new("struct vfio_device_detach_iommufd_pt"), self.bdf)
        self.attached_pt = None

    # ---- info ----
    def info(self) -> DeviceInfo:
        return regions.device_info(self.fd, self.bdf)

    def region_info(self, region: str | int) -> RegionInfo:
        index = region_index(region)
        if index not in self._regions:
            self._regions[index] = regions.region_info(self.fd, index, self.bdf)
        return self._regions[index]

    def irq_info(self, irq: IrqType | str | int) -> IrqInfo:
        return regions.irq_info(self.fd, int(IrqType.parse(irq)), self.bdf)

    # ---- region accesses (pread/pwrite, one access of `width`) ----
    def region_read(self, region: str | int, offset: int, width: int) -> int:
        """Read `width` bytes at `offset` of a region through the device fd."""
        info = self._checked(region, offset, width, "region_read")
        try:
            data = os.pread(self.fd, width, info.offset + offset)
        except OSError as e:
            raise VfioError(e.errno or 0, "region_read", self.bdf,
                            f"region {info.index} offset 0x{offset:x}") from None
        if len(data) != width:
            raise VfioError(errno.EIO, "region_read", self.bdf, f"short read {len(data)}")
        return int.from_bytes(data, "little")

    def region_write(self, region: str | int, offset: int, width: int, value: int) -> None:
        """Write `width` bytes at `offset` of a region through the device fd."""
        info = self._checked(region, offset, width, "region_write")
        data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        try:
            done = os.pwrite(self.fd, data, info.offset + offset)
        except OSError as e:
            raise VfioError(e.errno or 0, "region_write", self.bdf,
                            f"region {info.index} offset 0x{offset:x}") from None
        if done != width:
            raise VfioError(errno.EIO, "region_write", self.bdf, f"short write {done}")

    def _checked(self, region: str | int, offset: int, width: int, op: str) -> RegionInfo:
        info = self.region_info(region)
        if width not in WIDTHS or offset < 0 or offset + width > info.size:
            raise VfioError(errno.EINVAL, op, self.bdf,
                            f"offset 0x{offset:x} width {width} outside region {info.index} "
                            f"of 0x{info.size:x} bytes")
        return info

    def config_read(self, offset: int, width: int) -> int:
        return self.region_read(regions.CONFIG_REGION, offset, width)

    def config_write(self, offset: int, width: int, value: int) -> None:
        self.region_write(regions.CONFIG_REGION, offset, width, value)

    def set_command_bits(self, bits: int, on: bool) -> int:
        """Set or clear bits of the PCI command register; returns the previous value."""
        old = self.config_read(pci.PCI_COMMAND, 2)
        self.config_write(pci.PCI_COMMAND, 2, (old | bits) if on else (old & ~bits))
        return old

    # ---- BARs ----
    def mmap_bar(self, bar: int, offset: int = 0, size: int | None = None) -> Mmio:
        """A new shared mapping of (part of) a BAR; the caller closes it."""
        info = self.region_info(bar)
        size = info.size - offset if size is None else size
        if not info.mmappable:
            raise VfioError(errno.EINVAL, "mmap", self.bdf, f"region {bar} is not mmappable")
        return Mmio(self.fd, info.offset + offset, size, f"{self.bdf} bar{bar}")

    def bar_map(self, bar: int) -> Mmio:
        """The device's own whole-BAR mapping, made on first use and kept until close."""
        if bar not in self._bar_maps:
            self._bar_maps[bar] = self.mmap_bar(bar)
        return self._bar_maps[bar]

    def bar_read(self, bar: int, offset: int, width: int, via: str = "mmap") -> int:
        """Exact-width BAR read through the mmap (default) or the region (`via="region"`)."""
        if via == "region" or not self.region_info(bar).mmappable:
            return self.region_read(bar, offset, width)
        return self.bar_map(bar).read(offset, width)

    def bar_write(self, bar: int, offset: int, width: int, value: int,
                  via: str = "mmap") -> None:
        """Exact-width BAR write through the mmap (default) or the region."""
        if via == "region" or not self.region_info(bar).mmappable:
            self.region_write(bar, offset, width, value)
        else:
            self.bar_map(bar).write(offset, width, value)

    def bar_write64b(self, bar: int, offset: int, data: bytes) -> None:
        """A single 64-byte store into a BAR (drivers/base.py PortalWriter; DSA portals)."""
        self.bar_map(bar).write64b(offset, data)

    # ---- reset ----
    def reset(self) -> None:
        ioctl(self.fd, "VFIO_DEVICE_RESET", None, self.bdf)

    def hot_reset_info(self) -> tuple[int, list[DependentDevice]]:
        """(flags, affected devices) of VFIO_DEVICE_GET_PCI_HOT_RESET_INFO."""
        arg = new("struct vfio_pci_hot_reset_info", 0)
        try:
            ioctl(self.fd, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", arg, self.bdf)
        except VfioError as e:
            if e.errno != errno.ENOSPC:
                raise
            arg = new("struct vfio_pci_hot_reset_info", arg.count)
            ioctl(self.fd, "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", arg, self.bdf)
        devices = [DependentDevice(d.group_id, d.segment, d.bus, d.devfn)
                   for d in (arg.devices[i] for i in range(arg.count))]
        return arg.flags, devices

    def hot_reset(self) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET of the bus or slot, proving ownership of every
        affected device: the groups this process holds (group path) or, for a cdev,
        an empty list (the kernel checks the devices bound to the same iommufd).
        """
        fds = [] if self.group is None else [g.fd for g in self.group.container.groups.values()]
        arg = new("struct vfio_pci_hot_reset", len(fds), count=len(fds))
        for i, fd in enumerate(fds):
            arg.group_fds[i] = fd
        ioctl(self.fd, "VFIO_DEVICE_PCI_HOT_RESET", arg, self.bdf)

    # ---- interrupts ----
    def enable_irq(self, irq: IrqType | str | int, count: int = 1, start: int = 0) -> IrqSet:
        """SET_IRQS with one eventfd per vector; replaces an earlier set of the same type."""
        kind = IrqType.parse(irq)
        if kind in self.irqs:
            self.irqs[kind].disable()
        irq_set = IrqSet(self, kind, count, start)
        self.irqs[kind] = irq_set
        return irq_set

    def wait_irq(self, vector: int, timeout: float) -> int:
        """Wait on the enabled MSI-X, MSI or INTx set (first found); 0 on timeout."""
        for kind in (IrqType.MSIX, IrqType.MSI, IrqType.INTX):
            if kind in self.irqs:
                return self.irqs[kind].wait(vector, timeout)
        raise VfioError(errno.EINVAL, "wait_irq", self.bdf, "no interrupt enabled")

    # ---- device features ----
    def feature(self, feature: int, flags: int, payload: bytes = b"") -> tuple[int, bytes]:
        """VFIO_DEVICE_FEATURE: (ioctl result, payload as the kernel left it)."""
        arg = new("struct vfio_device_feature", len(payload), flags=flags | feature)
        if payload:
            ffi.memmove(arg.data, payload, len(payload))
        ret = ioctl(self.fd, "VFIO_DEVICE_FEATURE", arg, self.bdf)
        return ret, bytes(ffi.buffer(arg.data, len(payload)))

    def probe_feature(self, feature: int, get: bool = False, set: bool = False) -> bool:
        """PROBE the feature for GET and/or SET: True when the kernel accepts the probe."""
        flags = (lib.VFIO_DEVICE_FEATURE_PROBE | (lib.VFIO_DEVICE_FEATURE_GET if get else 0)
                 | (lib.VFIO_DEVICE_FEATURE_SET if set else 0))
        try:
            self.feature(feature, flags)
        except VfioError:
            return False
        return True

    def set_vf_token(self, token: str) -> None:
        """PCI_VF_TOKEN SET on a PF: VFs then open only with "vf_token=<token>"."""
        self.feature(lib.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, lib.VFIO_DEVICE_FEATURE_SET,
                     _uuid_bytes(token))

    def export_dmabuf(self, region: str | int,
                      ranges: list[tuple[int, int]] | None = None) -> DmaBuf:
        """VFIO_DEVICE_FEATURE GET DMA_BUF of `ranges` ((offset, length); default whole)."""
        index = region_index(region)
        if ranges is None:
            ranges = [(0, self.region_info(index).size)]
        body = new("struct vfio_device_feature_dma_buf", len(ranges), region_index=index,
                   open_flags=lib.O_RDWR | lib.O_CLOEXEC, nr_ranges=len(ranges))
        for i, (offset, length) in enumerate(ranges):
            body.dma_ranges[i].offset = offset
            body.dma_ranges[i].length = length
        payload = bytes(ffi.buffer(body))
        fd, _ = self.feature(lib.VFIO_DEVICE_FEATURE_DMA_BUF, lib.VFIO_DEVICE_FEATURE_GET,
                             payload)
        dmabuf = DmaBuf(self, fd, index, list(ranges))
        self.dmabufs.append(dmabuf)
        return dmabuf

    def revoke_support(self) -> str | None:
        """Which proposed DMABUF revoke uAPI the kernel has: "feature", "ioctl" or None.

        "feature": VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (13), SET (the series' v3 onwards),
        found by a PROBE of SET. "ioctl": VFIO_DEVICE_PCI_DMABUF_REVOKE (RFC v2), found by
        calling it on fd 0xffffffff: the RFC answers EBADF (dma_buf_get of a bad fd), a
        kernel without it ENOTTY. Neither is in a released kernel.
        """
        if self.probe_feature(REVOKE_FEATURE, set=True):
            return "feature"
        arg = new("struct vfio_pci_dmabuf_revoke", dmabuf_fd=0xFFFFFFFF)
        try:
            ioctl(self.fd, "VFIO_DEVICE_PCI_DMABUF_REVOKE", arg, self.bdf)
        except VfioError as e:
            return None if e.errno == errno.ENOTTY else "ioctl"
        return "ioctl"

    def revoke_dmabuf(self, dmabuf: DmaBuf | int, method: str) -> None:
        """Permanently revoke a DMABUF (or any fd) through the proposed "feature" or
        "ioctl" uAPI; the kernel's errno (EBADFD when already revoked) as VfioError."""
        fd = dmabuf if isinstance(dmabuf, int) else dmabuf.fd
        if method == "feature":
            body = new("struct vfio_device_feature_dma_buf_revoke", dmabuf_fd=fd)
            self.feature(REVOKE_FEATURE, lib.VFIO_DEVICE_FEATURE_SET, bytes(ffi.buffer(body)))
        elif method == "ioctl":
            arg = new("struct vfio_pci_dmabuf_revoke", dmabuf_fd=fd & 0xFFFFFFFF)
            ioctl(self.fd, "VFIO_DEVICE_PCI_DMABUF_REVOKE", arg, self.bdf)
        else:
            raise VfioError(errno.EINVAL, "revoke_dmabuf", self.bdf, f"method {method!r}")
        if not isinstance(dmabuf, int):
            dmabuf.revoked = True

    def memattr_support(self) -> bool:
        """True where the kernel takes VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (14) SET (the
        series' v3 9/9): a PROBE of SET succeeds. Absent from every released kernel."""
        return self.probe_feature(MEMATTR_FEATURE, set=True)

    def set_dmabuf_memattr(self, dmabuf: DmaBuf, memattr: int) -> None:
        """SET the memory attribute later mmaps of `dmabuf` get (NC 0, WC 1); the kernel
        answers ENOENT for a value it does not know, ENOTTY where the feature is absent."""
        body = new("struct vfio_device_feature_dma_buf_memattr", dmabuf_fd=dmabuf.fd,
                   memattr=memattr)
        self.feature(MEMATTR_FEATURE, lib.VFIO_DEVICE_FEATURE_SET, bytes(ffi.buffer(body)))

    def close(self) -> None:
        """Disable interrupts, unmap BARs, close DMABUFs and the device fd; idempotent."""
        for irq_set in list(self.irqs.values()):
            with contextlib.suppress(VfioError):
                irq_set.disable()
        for mapping in self._bar_maps.values():
            mapping.close()
        self._bar_maps.clear()
        for dmabuf in self.dmabufs:
            dmabuf.close()
        self.dmabufs.clear()
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a VF token written as a UUID."""
    import uuid  # here: only SR-IOV cases need it, and the guest's start is spared it

    return uuid.UUID(text).bytes
