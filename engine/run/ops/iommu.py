"""IOMMU operations: open an IOMMU in a mode, inspect it, IOAS, cdev bind/attach."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    AllocIoas,
    Attach,
    BindIommufd,
    Detach,
    IommuInfo,
    OpenCdev,
    OpenIommu,
)
from vfio_scenario.language.units import format_size
from vfio_scenario.run.interpreter import CheckFailed, Runtime
from vfio_scenario.run.ops import op
from vfio_scenario.uapi.iommu import Iommu, open_iommu
from vfio_scenario.uapi.iommufd import Ioas, Iommufd

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step


def iommufd_of(rt: Runtime, name: str, what: str) -> Iommufd:
    iommu = rt.handle(name)
    if not isinstance(iommu, Iommufd):
        raise VfioError(errno.EINVAL, what, name,
                        f"needs an iommufd IOMMU, `{name}` is {getattr(iommu, 'mode', '?')}")
    return iommu


@op(OpenIommu)
def open_iommu_op(rt: Runtime, args: OpenIommu, step: Step) -> Iommu:
    mode = args.mode or rt.case.iommu_mode
    if mode is None:
        raise VfioError(errno.EINVAL, "open_iommu", "", "no mode given and the case has none")
    iommu = open_iommu(mode)
    rt.on_cleanup(f"IOMMU {mode}", iommu.close)
    return iommu


@op(IommuInfo)
def iommu_info(rt: Runtime, args: IommuInfo, step: Step) -> None:
    iommu: Iommu = rt.handle(args.iommu)
    if args.pgsize_includes is not None:
        pgsizes = iommu.pgsizes()
        if not pgsizes & args.pgsize_includes:
            have = ", ".join(format_size(1 << b) for b in range(64) if pgsizes >> b & 1)
            raise CheckFailed(f"page sizes {have or 'none'} do not include "
                              f"{format_size(args.pgsize_includes)}")
    if args.iova_range_includes is not None:
        want = args.iova_range_includes
        ranges = iommu.iova_ranges()
        if not any(r.contains(want.start, want.size) for r in ranges):
            shown = ", ".join(f"[{r.start:#x}, {r.last:#x}]" for r in ranges)
            raise CheckFailed(f"no IOVA range holds {want.start:#x}+{want.size:#x}; "
                              f"ranges: {shown}")


@op(AllocIoas)
def alloc_ioas(rt: Runtime, args: AllocIoas, step: Step) -> Ioas:
    ioas = iommufd_of(rt, args.iommu, "alloc_ioas").alloc_ioas()
    rt.on_cleanup(ioas.handle, ioas.destroy)
    return ioas


@op(OpenCdev)
def open_cdev(rt: Runtime, args: OpenCdev, step: Step) -> object:
    from vfio_scenario.uapi.device import Cdev

    cdev = Cdev(args.bdf or rt.devices[0])
    rt.on_cleanup(cdev.path, cdev.close)
    return cdev


@op(BindIommufd)
def bind_iommufd(rt: Runtime, args: BindIommufd, step: Step) -> object:
    from vfio_scenario.uapi.ioctl import ioctl, new

    bound = rt.bound_cdevs
    cdev = rt.handle(args.cdev)
    if args.iommufd_fd is not None or args.cdev in bound:
        # A raw fd number, or a cdev bound already: issue the bind as given and let the
        # kernel answer (the handle-level API would refuse before the kernel sees it).
        fd = args.iommufd_fd if args.iommufd_fd is not None else \
            iommufd_of(rt, args.iommu or "", "bind_iommufd").fd
        target = getattr(bound.get(args.cdev), "fd", cdev.fd)
        ioctl(target, "VFIO_DEVICE_BIND_IOMMUFD",
              new("struct vfio_device_bind_iommufd", iommufd=fd), cdev.bdf)
        # not an errno: an `expect: EINVAL` must not pass because the kernel said yes
        raise CheckFailed(f"the kernel accepted a bind of {args.cdev} with "
                          + (f"fd {fd}" if args.iommufd_fd is not None else "a bound cdev")
                          + "; this engine binds a cdev once (use a new open_cdev)")
    device = cdev.bind(iommufd_of(rt, args.iommu or "", "bind_iommufd"))
    bound[args.cdev] = device
    rt.on_cleanup(f"device {device.bdf}", device.close)
    return device


@op(Attach)
def attach(rt: Runtime, args: Attach, step: Step) -> None:
    device = rt.handle(args.device)
    target = args.ioas if isinstance(args.ioas, int) else rt.handle(args.ioas).id
    device.attach(target)


@op(Detach)
def detach(rt: Runtime, args: Detach, step: Step) -> None:
    rt.handle(args.device).detach()
