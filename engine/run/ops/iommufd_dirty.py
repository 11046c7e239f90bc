"""iommufd dirty tracking of a HW page table and the mock IOMMU's dirty and PASID test
commands (CONFIG_IOMMUFD_TEST): what the iommufd selftest's iommufd_dirty_tracking and
iommufd_device_pasid fixtures exercise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vfio_scenario.language.models import (
    GetDirtyBitmap,
    MockPasidAttach,
    MockPasidCheck,
    MockPasidDetach,
    MockPasidReplace,
    MockSetDirty,
    SetDirtyTracking,
)
from vfio_scenario.run.interpreter import CheckFailed, Runtime
from vfio_scenario.run.ops import op
from vfio_scenario.run.ops.iommu import iommufd_of
from vfio_scenario.run.ops.iommufd import _object_id
from vfio_scenario.uapi import iommufd_dirty as dirty

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step


def _nbits(length: int, page_size: int) -> int:
    if length % page_size:
        # the kernel would refuse it too; a bitmap of a fraction of a page has no meaning
        raise CheckFailed(f"length {length:#x} is not a multiple of page_size {page_size:#x}")
    return length // page_size


@op(SetDirtyTracking)
def set_dirty_tracking(rt: Runtime, args: SetDirtyTracking, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "set_dirty_tracking").fd
    dirty.set_dirty_tracking(fd, _object_id(rt, args.hwpt), args.enable)


@op(MockSetDirty)
def mock_set_dirty(rt: Runtime, args: MockSetDirty, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_set_dirty").fd
    bitmap = dirty.Bitmap(_nbits(args.length, args.page_size), args.bitmap_offset)
    bitmap.set_every(args.every)
    marked = dirty.mock_set_dirty(fd, _object_id(rt, args.hwpt), args.iova, args.length,
                                  args.page_size, bitmap)
    if args.nr_dirty is not None and marked != args.nr_dirty:
        raise CheckFailed(f"the mock marked {marked} pages dirty, expected {args.nr_dirty}")


@op(GetDirtyBitmap)
def get_dirty_bitmap(rt: Runtime, args: GetDirtyBitmap, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "get_dirty_bitmap").fd
    nbits = _nbits(args.length, args.page_size)
    bitmap = dirty.Bitmap(nbits, args.bitmap_offset)
    dirty.get_dirty_bitmap(fd, _object_id(rt, args.hwpt), args.iova, args.length,
                           args.page_size, bitmap, "no_clear" in args.flags)
    if args.dirty == "none":
        want, what = 0, "no page"
    elif args.dirty == "all":
        want, what = (1 << nbits) - 1, "every page"
    else:
        want = dirty.expected_bits(nbits, args.dirty.every, args.dirty.first)
        what = f"the first {args.dirty.first} of every {args.dirty.every} pages"
    got = bitmap.bits()
    if got != want:
        wrong = [i for i in range(nbits) if (got >> i & 1) != (want >> i & 1)]
        shown = ", ".join(f"{i} ({'set' if got >> i & 1 else 'clear'})" for i in wrong[:8])
        raise CheckFailed(f"{len(wrong)} of {nbits} bits differ from {what} dirty: bit "
                          f"{shown}{' …' if len(wrong) > 8 else ''}")
    outside = bitmap.written_outside()
    if outside:
        raise CheckFailed(f"the kernel wrote {len(outside)} byte(s) outside the bitmap's "
                          f"{bitmap.nbytes}, the first at offset {outside[0]:#x} of its buffer "
                          f"(the bitmap starts at {args.bitmap_offset:#x})")


@op(MockPasidAttach)
def mock_pasid_attach(rt: Runtime, args: MockPasidAttach, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_pasid_attach").fd
    dirty.pasid_attach(fd, _object_id(rt, args.mock), args.pasid, _object_id(rt, args.pt, "pt"))


@op(MockPasidDetach)
def mock_pasid_detach(rt: Runtime, args: MockPasidDetach, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_pasid_detach").fd
    dirty.pasid_detach(fd, _object_id(rt, args.mock), args.pasid)


@op(MockPasidReplace)
def mock_pasid_replace(rt: Runtime, args: MockPasidReplace, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_pasid_replace").fd
    dirty.pasid_replace(fd, _object_id(rt, args.mock), args.pasid,
                        _object_id(rt, args.pt, "pt"))


@op(MockPasidCheck)
def mock_pasid_check(rt: Runtime, args: MockPasidCheck, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_pasid_check").fd
    dirty.pasid_check(fd, _object_id(rt, args.mock), args.pasid,
                      _object_id(rt, args.hwpt, "pt"))
