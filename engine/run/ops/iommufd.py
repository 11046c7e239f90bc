"""iommufd operations beyond the IOAS: the selftests' mock IOMMU (CONFIG_IOMMUFD_TEST),
reserved and allowed IOVAs, IOVA ranges, IOAS copy, options, HW info, raw commands."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError, errno_name
from vfio_scenario.language.models import (
    AddReservedIovas,
    AllocHwpt,
    AllowIovas,
    CloseIommu,
    CopyIova,
    GetHwInfo,
    IommufdCommandLength,
    IommufdDestroy,
    IommufdIoctl,
    IommufdOption,
    IovaRanges,
    MockCheckRefs,
    MockDomain,
    MockDomainReplace,
    MockMemoryLimit,
)
from vfio_scenario.run.interpreter import CheckFailed, Runtime
from vfio_scenario.run.ops import op
from vfio_scenario.run.ops.iommu import iommufd_of
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.ioctl import close_fd, ioctl, new, open_fd
from vfio_scenario.uapi.iommu import Mapping
from vfio_scenario.uapi.iommufd import Ioas
from vfio_scenario.uapi.iommufd_viommu import IommufdObject

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step

DEV_CACHES = 4  # MOCK_DEV_CACHE_NUM (iommufd_test.h)
MOCK_FLAGS = {"no_dirty": 1 << 0, "pasid": 1 << 2}  # MOCK_FLAGS_DEVICE_* (iommufd_test.h)


def _object_id(rt: Runtime, ref: int | str, role: str = "object") -> int:
    """An object id: a number as given, an IOAS handle's id, or a mock device's id for
    `role` (pt: its HW page table, device: its iommufd device, object: its selftest object)."""
    if isinstance(ref, int):
        return ref
    target = rt.handle(ref)
    if isinstance(target, Ioas):
        return target.id
    if isinstance(target, mock.MockDevice):
        return {"pt": target.hwpt_id, "device": target.idev_id}.get(role, target.stdev_id)
    if isinstance(target, mock.Hwpt):
        return target.id
    if isinstance(target, DmaBuffer):  # a user address (`vaddr`, `user_va`)
        return target.addr
    if isinstance(target, IommufdObject):  # a vIOMMU, vDEVICE, vEVENTQ, fault or HW queue
        return target.id
    raise CheckFailed(f"`{ref}` is not an IOAS, a mock device or a buffer")


@op(MockDomain)
def mock_domain(rt: Runtime, args: MockDomain, step: Step) -> mock.MockDevice:
    fd = iommufd_of(rt, args.iommu, "mock_domain").fd
    pt = _object_id(rt, args.pt, "pt")
    flags = sum(MOCK_FLAGS[f] for f in args.flags)
    made = mock.MockDevice()
    for _ in range(args.count):
        made = mock.mock_domain(fd, pt, flags)
        if args.dev_cache is not None:
            for cache in range(DEV_CACHES):
                mock.dev_check_cache(fd, made.idev_id, cache, args.dev_cache)
    return made


@op(MockDomainReplace)
def mock_domain_replace(rt: Runtime, args: MockDomainReplace, step: Step) -> None:
    fd = iommufd_of(rt, args.iommu, "mock_domain_replace").fd
    mock.mock_domain_replace(fd, _object_id(rt, args.mock), _object_id(rt, args.pt, "pt"))


@op(AllocHwpt)
def alloc_hwpt(rt: Runtime, args: AllocHwpt, step: Step) -> mock.Hwpt:
    fd = iommufd_of(rt, args.iommu, "alloc_hwpt").fd
    flags = args.flags if isinstance(args.flags, int) else \
        sum(mock.HWPT_FLAGS[f] for f in args.flags)
    data = None if args.selftest is None else \
        (args.selftest.iotlb, mock.PAGETABLE_TYPES[args.selftest.pagetable_type])
    return mock.alloc_hwpt(fd, _object_id(rt, args.device, "device"),
                           _object_id(rt, args.pt, "pt"), flags, data)


@op(CloseIommu)
def close_iommu(rt: Runtime, args: CloseIommu, step: Step) -> None:
    rt.handle(args.iommu).close()


@op(MockCheckRefs)
def mock_check_refs(rt: Runtime, args: MockCheckRefs, step: Step) -> None:
    buffer: DmaBuffer = rt.handle(args.buffer)
    size = buffer.size - args.offset if args.size is None else args.size
    if args.iommu is not None:
        fd = iommufd_of(rt, args.iommu, "mock_check_refs").fd
        mock.check_refs(fd, buffer.addr + args.offset, size, args.refs)
        return
    fd = open_fd("/dev/iommu", "mock_check_refs")
    try:
        mock.check_refs(fd, buffer.addr + args.offset, size, args.refs)
    finally:
        close_fd(fd)


@op(MockMemoryLimit)
def mock_memory_limit(rt: Runtime, args: MockMemoryLimit, step: Step) -> None:
    mock.set_temp_memory_limit(iommufd_of(rt, args.iommu, "mock_memory_limit").fd, args.pages)


@op(IommufdDestroy)
def iommufd_destroy(rt: Runtime, args: IommufdDestroy, step: Step) -> None:
    iommufd_of(rt, args.iommu, "iommufd_destroy").destroy(_object_id(rt, args.object))


@op(AddReservedIovas)
def add_reserved_iovas(rt: Runtime, args: AddReservedIovas, step: Step) -> None:
    ioas: Ioas = rt.handle(args.ioas)
    mock.add_reserved(ioas.fd, ioas.id, args.start, args.size)


@op(AllowIovas)
def allow_iovas(rt: Runtime, args: AllowIovas, step: Step) -> None:
    ioas: Ioas = rt.handle(args.ioas)
    ranges = ffi.new("struct iommu_iova_range[]", max(len(args.ranges), 1))
    for i, span in enumerate(args.ranges):
        ranges[i].start, ranges[i].last = span.start, span.last
    arg = new("struct iommu_ioas_allow_iovas", ioas_id=ioas.id, num_iovas=len(args.ranges),
              allowed_iovas=int(ffi.cast("uintptr_t", ranges)))
    ioctl(ioas.fd, "IOMMU_IOAS_ALLOW_IOVAS", arg, ioas.handle)


@op(IovaRanges)
def iova_ranges(rt: Runtime, args: IovaRanges, step: Step) -> None:
    ioas: Ioas = rt.handle(args.ioas)
    room = args.capacity + 1  # one zeroed slot past the room given: must stay untouched
    ranges = ffi.new("struct iommu_iova_range[]", room)
    arg = new("struct iommu_ioas_iova_ranges", ioas_id=ioas.id, num_iovas=args.capacity,
              allowed_iovas=int(ffi.cast("uintptr_t", ranges)))
    try:
        ioctl(ioas.fd, "IOMMU_IOAS_IOVA_RANGES", arg, ioas.handle)
    except VfioError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        # the kernel reports how many there are and writes the ones that fit
        _check_count(args.count, arg.num_iovas)
        _check_untouched(ranges, args.capacity, room)
        if args.ranges is not None:
            _check_ranges(args.ranges[:args.capacity], ranges, args.capacity)
        raise
    _check_count(args.count, arg.num_iovas)
    _check_untouched(ranges, arg.num_iovas, room)
    if args.ranges is not None:
        _check_ranges(args.ranges, ranges, arg.num_iovas)
    if args.alignment is not None and arg.out_iova_alignment != args.alignment:
        raise CheckFailed(f"IOVA alignment {arg.out_iova_alignment:#x}, expected "
                          f"{args.alignment:#x}")


def _check_untouched(ranges: Any, first: int, room: int) -> None:
    written = [i for i in range(first, room) if ranges[i].start or ranges[i].last]
    if written:
        raise CheckFailed(f"range slot(s) {written} past the {first} the kernel may fill "
                          "were written")


def _check_count(want: int | None, got: int) -> None:
    if want is not None and got != want:
        raise CheckFailed(f"num_iovas {got}, expected {want}")


def _check_ranges(want: list[Any], ranges: Any, count: int) -> None:
    got = [(ranges[i].start, ranges[i].last) for i in range(count)]
    expected = [(r.start, r.last) for r in want]
    if got[:len(expected)] != expected or len(expected) != count:
        shown = ", ".join(f"[{a:#x}, {b:#x}]" for a, b in got)
        raise CheckFailed(f"IOVA ranges {shown or 'none'}; expected "
                          + ", ".join(f"[{a:#x}, {b:#x}]" for a, b in expected))


@op(CopyIova)
def copy_iova(rt: Runtime, args: CopyIova, step: Step) -> Mapping:
    dst: Ioas = rt.handle(args.ioas)
    src_iova = args.src_iova if isinstance(args.src_iova, int) else \
        rt.handle(args.src_iova).iova
    return dst.copy(rt.handle(args.src), src_iova, args.size, args.iova, args.read,
                    args.write)


OPTIONS = {"rlimit_mode": "IOMMU_OPTION_RLIMIT_MODE", "huge_pages": "IOMMU_OPTION_HUGE_PAGES"}


@op(IommufdOption)
def iommufd_option(rt: Runtime, args: IommufdOption, step: Step) -> None:
    iommufd = iommufd_of(rt, args.iommu, "iommufd_option")
    get = args.set is None
    arg = new("struct iommu_option", option_id=getattr(lib, OPTIONS[args.option]),
              op=lib.IOMMU_OPTION_OP_GET if get else lib.IOMMU_OPTION_OP_SET,
              object_id=_object_id(rt, args.object),
              val64=3 if args.set is None else args.set)  # a GET must overwrite the 3
    ioctl(iommufd.fd, "IOMMU_OPTION", arg, iommufd.handle)
    if get and args.equals is not None and arg.val64 != args.equals:
        raise CheckFailed(f"{args.option} is {arg.val64}, expected {args.equals}")


HW_INFO_TYPES = {"default": 0, "selftest": 0xFEEDBEEF}  # IOMMU_HW_INFO_TYPE_*


@op(GetHwInfo)
def get_hw_info(rt: Runtime, args: GetHwInfo, step: Step) -> None:
    iommufd = iommufd_of(rt, args.iommu, "get_hw_info")
    data = ffi.new("uint8_t[]", max(args.data_len, 1))
    ffi.memmove(data, b"\xff" * args.data_len, args.data_len)  # what the kernel must zero
    arg = new("struct iommu_hw_info", dev_id=_object_id(rt, args.device, "device"),
              data_len=args.data_len,
              data_uptr=int(ffi.cast("uintptr_t", data)) if args.data_len else 0)
    if args.data_type is not None:
        arg.flags = lib.IOMMU_HW_INFO_FLAG_INPUT_TYPE
        arg.in_data_type = HW_INFO_TYPES.get(str(args.data_type), args.data_type)
    ioctl(iommufd.fd, "IOMMU_GET_HW_INFO", arg, iommufd.handle)
    want_type = args.out_data_type
    if want_type is not None and arg.out_data_type != HW_INFO_TYPES.get(str(want_type),
                                                                        want_type):
        raise CheckFailed(f"data type {arg.out_data_type:#x}, expected {want_type}")
    if args.out_data_len is not None and arg.data_len != args.out_data_len:
        raise CheckFailed(f"the kernel reports {arg.data_len} bytes of data, expected "
                          f"{args.out_data_len}")
    reported = min(arg.data_len, args.data_len)
    tail = bytes(ffi.buffer(data, args.data_len))[arg.data_len:]
    if any(tail):
        raise CheckFailed(f"bytes past the kernel's {arg.data_len} were not zeroed")
    info = ffi.cast("struct iommu_test_hw_info *", data)
    if args.test_reg is not None:
        if reported < 8:
            raise CheckFailed(f"only {reported} bytes reported: no test_reg")
        if info.test_reg != args.test_reg:
            raise CheckFailed(f"test_reg {info.test_reg:#x}, expected {args.test_reg:#x}")
    if reported >= 4 and args.data_len >= 4 and info.flags and args.test_reg is not None:
        raise CheckFailed(f"hw info flags {info.flags:#x}, expected 0")
    if args.max_pasid_log2 is not None and arg.out_max_pasid_log2 != args.max_pasid_log2:
        raise CheckFailed(f"max PASID width {arg.out_max_pasid_log2}, "
                          f"expected {args.max_pasid_log2}")
    if "dirty_tracking" in args.capabilities_include and \
            not arg.out_capabilities & lib.IOMMU_HW_CAP_DIRTY_TRACKING:
        raise CheckFailed("IOMMU_HW_CAP_DIRTY_TRACKING is not reported")


def _field_value(rt: Runtime, value: int | str) -> int:
    return value if isinstance(value, int) else _object_id(rt, value)


@op(IommufdIoctl)
def iommufd_ioctl(rt: Runtime, args: IommufdIoctl, step: Step) -> None:
    iommufd = iommufd_of(rt, args.iommu, "iommufd_ioctl")
    fields = {k: _field_value(rt, v) for k, v in args.fields.items()}
    sent = mock.send(iommufd.fd, args.ioctl, fields, args.size, bytes(args.trailing),
                     args.null_pointer, args.value, args.struct, iommufd.handle)
    if args.returns is not None and sent.result != args.returns:
        raise CheckFailed(f"the ioctl returned {sent.result}, expected {args.returns}")
    for path, want in args.out.items():
        got = mock.get(sent.struct, path)
        if got != _field_value(rt, want):
            raise CheckFailed(f"`{path}` is {got:#x}, expected {_field_value(rt, want):#x}")


@op(IommufdCommandLength)
def iommufd_command_length(rt: Runtime, args: IommufdCommandLength, step: Step) -> None:
    iommufd = iommufd_of(rt, args.iommu, "iommufd_command_length")
    ctype = mock.IOCTL_STRUCTS.get(args.ioctl)
    if ctype is None:
        raise CheckFailed(f"{args.ioctl} takes no sized struct")
    full, least = mock.struct_size(ctype), mock.offset_end(ctype, args.last)

    def answer(size: int, extra: int) -> str:
        try:
            mock.send(iommufd.fd, args.ioctl, size=size, trailing=bytes([extra]))
        except VfioError as e:
            return errno_name(e.errno)
        return "ok"

    checks = [(least - 1, 0xFF, "EINVAL"), (full + 1, 0xFF, "E2BIG")]
    for size, extra, want in checks:
        got = answer(size, extra)
        if got != want:
            raise CheckFailed(f"{args.ioctl} with size {size} (trailing {extra:#x}): {got}, "
                              f"expected {want}")
    exact, longer = answer(full, 0xFF), answer(full + 1, 0)
    if exact != longer:
        raise CheckFailed(f"{args.ioctl}: size {full} answers {exact}, size {full + 1} with a "
                          f"zero byte past it {longer}")
