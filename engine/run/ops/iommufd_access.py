"""The mock IOMMU's access objects and DMABUF (IOMMU_TEST_CMD, CONFIG_IOMMUFD_TEST): what
the iommufd selftests' access_* and dmabuf_* cases and user_copy drive."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    AccessPages,
    AccessReplaceIoas,
    AccessRw,
    CreateAccess,
    DestroyAccess,
    DestroyAccessPages,
    MockDmabuf,
    MockDmabufRevoke,
)
from vfio_scenario.run.interpreter import CheckFailed, Runtime
from vfio_scenario.run.ops import op
from vfio_scenario.run.ops.iommu import iommufd_of
from vfio_scenario.uapi import iommufd_access as acc
from vfio_scenario.uapi._vfio import lib
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.iommufd import Ioas

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.uapi.iommu import Mapping


@op(CreateAccess)
def create_access(rt: Runtime, args: CreateAccess, step: Step) -> acc.Access:
    ioas: Ioas = rt.handle(args.ioas)
    flags = args.flags if isinstance(args.flags, int) else \
        sum(acc.CREATE_FLAGS[f] for f in args.flags)
    access = acc.create_access(ioas.fd, ioas.id, flags)
    rt.on_cleanup(access.handle, access.destroy)
    return access


@op(DestroyAccess)
def destroy_access(rt: Runtime, args: DestroyAccess, step: Step) -> None:
    rt.handle(args.access).destroy()


def _memory(rt: Runtime, mapping: Mapping, buffer: str | None, offset: int, size: int,
            op_name: str) -> tuple[int, int, int]:
    """(address of the byte at `offset` into the mapping, bytes of that memory below it,
    bytes from it on): the process memory the mapping maps, or `buffer`'s for a mapping
    of a file (which has no process address)."""
    if offset + size > mapping.size:
        raise CheckFailed(f"{op_name}: {offset:#x}+{size:#x} reaches past the mapping's "
                          f"{mapping.size:#x} bytes")
    if buffer is not None:
        buf: DmaBuffer = rt.handle(buffer)
        start, length = buf.addr, buf.size
    elif mapping.vaddr:
        owner = next((b for b in DmaBuffer.live if b.addr <= mapping.vaddr < b.addr + b.size),
                     None)
        if owner is None:
            raise CheckFailed(f"{op_name}: the mapping at IOVA {mapping.iova:#x} maps no "
                              "buffer of this case: name its memory with `buffer`")
        start, length = mapping.vaddr, owner.addr + owner.size - mapping.vaddr
    else:
        raise CheckFailed(f"{op_name}: the mapping at IOVA {mapping.iova:#x} maps a file, "
                          "which has no process address: name its memory with `buffer`")
    if offset + size > length:
        raise CheckFailed(f"{op_name}: {offset:#x}+{size:#x} reaches past the {length:#x} "
                          "bytes of memory the mapping maps")
    return start + offset, offset, length - offset


@op(AccessPages)
def access_pages(rt: Runtime, args: AccessPages, step: Step) -> acc.AccessPages:
    access: acc.Access = rt.handle(args.access)
    mapping: Mapping = rt.handle(args.mapping)
    uptr, _, _ = _memory(rt, mapping, args.buffer, args.offset, args.size, "access_pages")
    flags = lib.MOCK_FLAGS_ACCESS_WRITE if args.write else 0
    pages = acc.access_pages(access, mapping.iova + args.offset, args.size, uptr, flags)
    if args.id is not None and pages.id != args.id:
        raise CheckFailed(f"the kernel gave the pin id {pages.id}, expected {args.id}")
    return pages


@op(DestroyAccessPages)
def destroy_access_pages(rt: Runtime, args: DestroyAccessPages, step: Step) -> None:
    acc.destroy_access_pages(rt.handle(args.pages))


@op(AccessRw)
def access_rw(rt: Runtime, args: AccessRw, step: Step) -> None:
    access: acc.Access = rt.handle(args.access)
    last = args.size if args.max_size is None else args.max_size
    if args.mapping is not None:
        mapping: Mapping = rt.handle(args.mapping)
        iova = mapping.iova
        addr, before, after = _memory(rt, mapping, args.buffer, args.offset, args.reach,
                                      "access_rw")
    else:  # the IOVA form: `buffer` is mapped at `iova` (the model requires all three)
        assert args.iova is not None and args.buffer is not None
        iova = args.iova
        buf: DmaBuffer = rt.handle(args.buffer)
        if args.offset + args.reach > buf.size:
            raise CheckFailed(f"access_rw: {args.offset:#x}+{args.reach:#x} reaches past the "
                              f"{buf.size:#x} bytes of buffer `{args.buffer}`")
        addr, before, after = buf.addr + args.offset, args.offset, buf.size - args.offset
    flags = lib.MOCK_ACCESS_RW_SLOW_PATH if args.slow_path else 0
    done = acc.access_rw_sweep(access, iova + args.offset, addr, before, after,
                               args.starts, args.size, last, args.direction != "write",
                               args.direction != "read", flags)
    if done.errno:
        raise VfioError(done.errno, "IOMMU_TEST_OP_ACCESS_RW", access.handle,
                        f"{'write' if done.write else 'read'} of {done.length} bytes at "
                        f"IOVA {done.iova:#x}")
    if done.problem:
        raise CheckFailed(f"{'write' if done.write else 'read'} of {done.length} bytes at "
                          f"IOVA {done.iova:#x}: {done.problem}"
                          + (f" (first at byte {done.at})" if done.at >= 0 else ""))


@op(AccessReplaceIoas)
def access_replace_ioas(rt: Runtime, args: AccessReplaceIoas, step: Step) -> None:
    access: acc.Access = rt.handle(args.access)
    target: Any = args.ioas if isinstance(args.ioas, int) else rt.handle(args.ioas).id
    acc.access_replace_ioas(access, target)


@op(MockDmabuf)
def mock_dmabuf(rt: Runtime, args: MockDmabuf, step: Step) -> acc.MockDmabuf:
    dmabuf = acc.dmabuf_get(iommufd_of(rt, args.iommu, "mock_dmabuf").fd, args.size)
    rt.on_cleanup(dmabuf.handle, dmabuf.close)
    return dmabuf


@op(MockDmabufRevoke)
def mock_dmabuf_revoke(rt: Runtime, args: MockDmabufRevoke, step: Step) -> None:
    dmabuf: Any = rt.handle(args.dmabuf)
    acc.dmabuf_revoke(iommufd_of(rt, args.iommu, "mock_dmabuf_revoke").fd, dmabuf.fd,
                      args.revoked)
