"""DMABUF operations: export a BAR region, mmap it, revoke and restore it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vfio_scenario.language.models import ExportDmabuf, MmapDmabuf, RestoreDmabuf, RevokeDmabuf
from vfio_scenario.run.interpreter import Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.uapi import capabilities, pci
from vfio_scenario.uapi._vfio import lib

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.uapi.dmabuf import DmaBuf
    from vfio_scenario.uapi.mmio import Mmio

# `mmap_dmabuf: {attrs}` → the memattr value of VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR
MEMATTRS = {"nc": lib.VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC,
            "wc": lib.VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC}


@op(ExportDmabuf)
def export_dmabuf(rt: Runtime, args: ExportDmabuf, step: Step) -> DmaBuf:
    ranges = [(r.offset, r.size) for r in args.ranges] if args.ranges is not None else None
    dmabuf: DmaBuf = rt.handle(args.device).export_dmabuf(args.region, ranges)
    rt.on_cleanup(dmabuf.handle, dmabuf.close)
    return dmabuf


@op(MmapDmabuf)
def mmap_dmabuf(rt: Runtime, args: MmapDmabuf, step: Step) -> Mmio:
    dmabuf: DmaBuf = rt.handle(args.dmabuf)
    if args.attrs is not None:
        if not dmabuf.device.memattr_support():
            raise Skip(capabilities.MEMATTR_ABSENT)
        dmabuf.device.set_dmabuf_memattr(dmabuf, MEMATTRS[args.attrs])
    mmio = dmabuf.mmap(args.offset, args.size)
    rt.on_cleanup(mmio.handle, mmio.close)
    return mmio


@op(RevokeDmabuf)
def revoke_dmabuf(rt: Runtime, args: RevokeDmabuf, step: Step) -> None:
    dmabuf: DmaBuf = rt.handle(args.dmabuf)
    device = dmabuf.device
    method = args.method
    if method in ("ioctl", "auto"):
        support = device.revoke_support()
        if support is not None:
            device.revoke_dmabuf(dmabuf, support)
            return
        if method == "ioctl":
            raise Skip(capabilities.REVOKE_ABSENT)
        method = "memory-disable"
    if method == "memory-disable":
        device.set_command_bits(pci.PCI_COMMAND_MEMORY, False)
        rt.on_cleanup(f"memory enable of {device.bdf}",
                      lambda: device.set_command_bits(pci.PCI_COMMAND_MEMORY, True))
    else:  # reset: the kernel revokes DMABUFs for the duration of the reset
        device.reset()


@op(RestoreDmabuf)
def restore_dmabuf(rt: Runtime, args: RestoreDmabuf, step: Step) -> None:
    dmabuf: DmaBuf = rt.handle(args.dmabuf)
    dmabuf.device.set_command_bits(pci.PCI_COMMAND_MEMORY, True)
