"""iommufd's nested translation and vIOMMU objects on the selftests' mock IOMMU, and the
VFIO type1 compat ioctls on /dev/iommu (models: language/models_viommu.py)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError, errno_name

# the models module re-exports language/models_viommu.py's models: the guest has only it
from vfio_scenario.language.models import (
    AllocFaultQueue,
    AllocHwQueue,
    AllocNestedHwpt,
    AllocVdevice,
    AllocVeventq,
    AllocViommu,
    CloseQueueFd,
    InvalidateCache,
    MmapViommu,
    MockCheckDevCache,
    MockCheckIotlb,
    MunmapViommu,
    ReadVevents,
    SkipUnlessMade,
    TriggerIopf,
    TriggerVevents,
    VfioIoas,
    VfioIommuInfo,
    VfioMapDma,
    VfioUnmapDma,
)
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.run.ops.iommu import iommufd_of
from vfio_scenario.run.ops.iommufd import _object_id
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi import iommufd_viommu as nest
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.buffers import DmaBuffer

if TYPE_CHECKING:
    import mmap

    from vfio_scenario.language.cases import Step

HWPT_DATA_TYPES = {"selftest": lib.IOMMU_HWPT_DATA_SELFTEST, "none": lib.IOMMU_HWPT_DATA_NONE}
INVALIDATE_TYPES = {"selftest": lib.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
                    "selftest_invalid": lib.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID}
VIOMMU_TYPES = {"selftest": lib.IOMMU_VIOMMU_TYPE_SELFTEST}
VEVENTQ_TYPES = {"selftest": lib.IOMMU_VEVENTQ_TYPE_SELFTEST}
HW_QUEUE_TYPES = {"selftest": lib.IOMMU_HW_QUEUE_TYPE_SELFTEST,
                  "default": lib.IOMMU_HW_QUEUE_TYPE_DEFAULT}


def _id(rt: Runtime, ref: int | str, role: str = "object") -> int:
    """An object id: as given, or the handle's (a mock device's for `role`)."""
    if isinstance(ref, str):
        target = rt.handle(ref)
        if isinstance(target, nest.IommufdObject):
            return target.id
    return _object_id(rt, ref, role)


def _named(value: int | str, names: dict[str, int]) -> int:
    return names[value] if isinstance(value, str) else value


def _fd(rt: Runtime, iommu: str, what: str) -> int:
    return iommufd_of(rt, iommu, what).fd


# --- nested HW page tables and their caches ------------------------------------------


@op(AllocNestedHwpt)
def alloc_nested_hwpt(rt: Runtime, args: AllocNestedHwpt, step: Step) -> mock.Hwpt:
    fd = _fd(rt, args.iommu, "alloc_nested_hwpt")
    flags = args.flags if isinstance(args.flags, int) else \
        sum(mock.HWPT_FLAGS[f] for f in args.flags)
    data = nest.hwpt_selftest_data(args.iotlb)
    length = len(data) if args.data_len is None else args.data_len
    fault = 0 if args.fault is None else _id(rt, args.fault)
    return nest.alloc_hwpt_data(fd, _id(rt, args.device, "device"), _id(rt, args.parent, args.parent_role),
                                flags, _named(args.data_type, HWPT_DATA_TYPES),
                                None if args.null_data else data, length, fault)


def _ids(which: int | str, count: int) -> range:
    return range(count) if which == "all" else range(int(which), int(which) + 1)


@op(MockCheckIotlb)
def mock_check_iotlb(rt: Runtime, args: MockCheckIotlb, step: Step) -> None:
    fd = _fd(rt, args.iommu, "mock_check_iotlb")
    hwpt = _id(rt, args.hwpt, "pt")
    for iotlb_id in _ids(args.id, lib.MOCK_NESTED_DOMAIN_IOTLB_NUM):
        nest.check_iotlb(fd, hwpt, iotlb_id, args.value)


@op(MockCheckDevCache)
def mock_check_dev_cache(rt: Runtime, args: MockCheckDevCache, step: Step) -> None:
    fd = _fd(rt, args.iommu, "mock_check_dev_cache")
    device = _id(rt, args.device, "device")
    for cache_id in _ids(args.id, lib.MOCK_DEV_CACHE_NUM):
        mock.dev_check_cache(fd, device, cache_id, args.value)


def _invalidation_array(viommu: bool, entries: list[Any], room: int) -> tuple[bytes, int]:
    """The requests as the mock's structs, back to back, in at least `room` bytes (the
    kernel may read `entry_len` bytes per entry); returns (array, sizeof one request)."""
    ctype = ("struct iommu_viommu_invalidate_selftest" if viommu
             else "struct iommu_hwpt_invalidate_selftest")
    size = ffi.sizeof(ctype)
    out = bytearray()
    for entry in entries:
        flags = lib.IOMMU_TEST_INVALIDATE_FLAG_ALL if entry.flags == "all" else entry.flags
        if viommu:
            if entry.iotlb_id is not None:
                raise CheckFailed("a vIOMMU's request has `vdev_id` and `cache_id`, "
                                  "not `iotlb_id`")
            req = ffi.new(f"{ctype} *", {"flags": flags, "vdev_id": entry.vdev_id or 0,
                                         "cache_id": entry.cache_id or 0})
        else:
            if entry.vdev_id is not None or entry.cache_id is not None:
                raise CheckFailed("a HW page table's request has `iotlb_id`, not "
                                  "`vdev_id`/`cache_id`")
            req = ffi.new(f"{ctype} *", {"flags": flags, "iotlb_id": entry.iotlb_id or 0})
        out += bytes(ffi.buffer(req))
    out += bytes(max(room - len(out), 0))
    return bytes(out), size


@op(InvalidateCache)
def invalidate_cache(rt: Runtime, args: InvalidateCache, step: Step) -> None:
    fd = _fd(rt, args.iommu, "invalidate_cache")
    target = rt.handle(args.target)
    viommu = isinstance(target, nest.Viommu)
    # the selftest's arrays hold two requests; room for two of `entry_len` as well
    _, size = _invalidation_array(viommu, [], 0)
    room = max(2 * size, 2 * min(args.entry_len or 0, 1 << 16))
    array, size = _invalidation_array(viommu, args.entries, room)
    done, error = nest.invalidate(
        fd, _id(rt, args.target), _named(args.data_type, INVALIDATE_TYPES),
        None if args.null_data else array, size if args.entry_len is None else args.entry_len,
        len(args.entries) if args.entry_num is None else args.entry_num)
    if args.done is not None and done != args.done:
        outcome = errno_name(error.errno) if error else "success"
        raise CheckFailed(f"the kernel reports {done} request(s) done ({outcome}), "
                          f"expected {args.done}")
    if error is not None:
        raise error


# --- vIOMMU and its objects -------------------------------------------------------------


@op(AllocViommu)
def alloc_viommu(rt: Runtime, args: AllocViommu, step: Step) -> nest.Viommu:
    fd = _fd(rt, args.iommu, "alloc_viommu")
    made = nest.alloc_viommu(fd, _id(rt, args.device, "device"), _id(rt, args.hwpt, "pt"),
                             _named(args.type, VIOMMU_TYPES), args.data)
    if args.data is not None and made.out_data != args.data:
        raise CheckFailed(f"out_data {made.out_data:#x}, expected the in_data {args.data:#x}")
    return made


class ViommuMapping:
    """A vIOMMU's region mapped from the iommufd (munmap once)."""

    def __init__(self, region: mmap.mmap) -> None:
        self.region: mmap.mmap | None = region

    def close(self) -> None:
        if self.region is not None:
            self.region.close()
            self.region = None


@op(MmapViommu)
def mmap_viommu(rt: Runtime, args: MmapViommu, step: Step) -> ViommuMapping:
    fd = _fd(rt, args.iommu, "mmap_viommu")
    viommu: nest.Viommu = rt.handle(args.viommu)
    if not viommu.mmap_length:
        raise CheckFailed(f"`{args.viommu}` reported no mmap region (alloc it with `data`)")
    length = {"reported": viommu.mmap_length, "half": viommu.mmap_length // 2,
              "double": viommu.mmap_length * 2}[args.length]
    mapping = ViommuMapping(nest.mmap_iommufd(fd, length, viommu.mmap_offset + args.offset))
    rt.on_cleanup(f"vIOMMU mmap of {args.viommu}", mapping.close)
    if args.equals is not None:
        assert mapping.region is not None
        (word,) = struct.unpack_from("<I", mapping.region, 0)
        if word != args.equals:
            raise CheckFailed(f"the region's first word is {word:#x}, expected {args.equals:#x}")
    return mapping


@op(MunmapViommu)
def munmap_viommu(rt: Runtime, args: MunmapViommu, step: Step) -> None:
    rt.handle(args.mapping).close()


@op(AllocVdevice)
def alloc_vdevice(rt: Runtime, args: AllocVdevice, step: Step) -> nest.Vdevice:
    fd = _fd(rt, args.iommu, "alloc_vdevice")
    return nest.alloc_vdevice(fd, _id(rt, args.viommu), _id(rt, args.device, "device"),
                              args.virt_id)


@op(AllocVeventq)
def alloc_veventq(rt: Runtime, args: AllocVeventq, step: Step) -> nest.EventQueue:
    fd = _fd(rt, args.iommu, "alloc_veventq")
    queue = nest.alloc_veventq(fd, _id(rt, args.viommu), _named(args.type, VEVENTQ_TYPES),
                               args.depth)
    rt.on_cleanup(f"vEVENTQ {queue.id} fd", queue.close)
    return queue


@op(TriggerVevents)
def trigger_vevents(rt: Runtime, args: TriggerVevents, step: Step) -> None:
    fd = _fd(rt, args.iommu, "trigger_vevents")
    device = _id(rt, args.device, "device")
    for _ in range(args.count):
        nest.trigger_vevent(fd, device)


@op(ReadVevents)
def read_vevents(rt: Runtime, args: ReadVevents, step: Step) -> None:
    queue: nest.EventQueue = rt.handle(args.veventq)
    if args.bytes is not None:
        data = nest.read_fd(queue.fd, args.bytes, "vEVENTQ")
        rt.note(f"read {len(data)} of {args.bytes} bytes")
        return
    data = nest.read_fd(queue.fd, args.count * nest.vevent_record_size(), "vEVENTQ", wait=1.0)
    records = nest.parse_vevents(data)
    lost_at = None
    for i, record in enumerate(records):
        gap = record.sequence - queue.prev_seq > 1
        queue.prev_seq = record.sequence
        if record.lost or gap:
            lost_at = (i, "a LOST_EVENTS header" if record.lost else
                       f"sequence {record.sequence} after a gap")
            break
        if args.virt_id is not None and record.virt_id != args.virt_id:
            raise CheckFailed(f"event {i} is of virt_id {record.virt_id:#x}, expected "
                              f"{args.virt_id:#x}")
    if args.lost:
        if lost_at is None:
            raise CheckFailed(f"{len(records)} record(s) read and no lost events reported")
        rt.note(f"record {lost_at[0]}: {lost_at[1]}")
        return
    if lost_at is not None:
        raise CheckFailed(f"record {lost_at[0]}: {lost_at[1]}: events were lost")
    if len(records) != args.count:
        raise CheckFailed(f"{len(records)} event(s) read, expected {args.count}")


@op(CloseQueueFd)
def close_queue_fd(rt: Runtime, args: CloseQueueFd, step: Step) -> None:
    rt.handle(args.queue).close()


@op(AllocFaultQueue)
def alloc_fault_queue(rt: Runtime, args: AllocFaultQueue, step: Step) -> nest.EventQueue:
    queue = nest.alloc_fault_queue(_fd(rt, args.iommu, "alloc_fault_queue"))
    rt.on_cleanup(f"fault queue {queue.id} fd", queue.close)
    if not queue.id or not queue.fd:
        raise CheckFailed(f"fault queue id {queue.id}, fd {queue.fd}: both must be non-zero")
    return queue


IOPF_ADDR, IOPF_GROUP = 0xDEADBEAF, 0x2  # what the selftest's trigger reports


@op(TriggerIopf)
def trigger_iopf(rt: Runtime, args: TriggerIopf, step: Step) -> None:
    fd = _fd(rt, args.iommu, "trigger_iopf")
    queue: nest.EventQueue = rt.handle(args.fault)
    perm = lib.IOMMU_PGFAULT_PERM_READ | lib.IOMMU_PGFAULT_PERM_WRITE
    nest.trigger_iopf(fd, _id(rt, args.device, "device"), args.pasid, IOPF_GROUP, perm,
                      IOPF_ADDR)
    fault = nest.read_fault(queue.fd)
    got = (fault.addr, fault.grpid, fault.perm)
    if got != (IOPF_ADDR, IOPF_GROUP, perm):
        raise CheckFailed(f"the fault queue delivered addr {fault.addr:#x}, group "
                          f"{fault.grpid}, perm {fault.perm:#x}; expected {IOPF_ADDR:#x}, "
                          f"{IOPF_GROUP}, {perm:#x}")
    nest.respond_fault(queue.fd, fault.cookie, lib.IOMMUFD_PAGE_RESP_SUCCESS)


@op(AllocHwQueue)
def alloc_hw_queue(rt: Runtime, args: AllocHwQueue, step: Step) -> nest.HwQueue:
    fd = _fd(rt, args.iommu, "alloc_hw_queue")
    iova = args.iova if isinstance(args.iova, int) else int(rt.handle(args.iova).iova)
    return nest.alloc_hw_queue(fd, _id(rt, args.viommu), _named(args.type, HW_QUEUE_TYPES),
                               args.index, (iova + args.offset) & (2**64 - 1), args.length)


@op(SkipUnlessMade)
def skip_unless_made(rt: Runtime, args: SkipUnlessMade, step: Step) -> None:
    if _id(rt, args.object, "device") == 0:
        raise Skip(args.reason)


# --- VFIO's type1 compat on the iommufd ------------------------------------------------


@op(VfioIoas)
def vfio_ioas(rt: Runtime, args: VfioIoas, step: Step) -> None:
    fd = _fd(rt, args.iommu, "vfio_ioas")
    got = nest.vfio_ioas(fd, args.action, _id(rt, args.ioas))
    if args.equals is not None and got != _id(rt, args.equals):
        raise CheckFailed(f"the compat IOAS is {got}, expected {_id(rt, args.equals)}")


@op(VfioMapDma)
def vfio_map_dma(rt: Runtime, args: VfioMapDma, step: Step) -> None:
    iommufd = iommufd_of(rt, args.iommu, "vfio_map_dma")
    buffer: DmaBuffer = rt.handle(args.buffer)
    if args.offset + args.size * args.count > buffer.size:
        raise CheckFailed(f"{args.count} x {args.size} bytes from offset {args.offset} do "
                          f"not fit in `{args.buffer}` ({buffer.size} bytes)")
    flags = (lib.VFIO_DMA_MAP_FLAG_READ if args.read else 0) | \
        (lib.VFIO_DMA_MAP_FLAG_WRITE if args.write else 0)
    for i in range(args.count):
        mock.send(iommufd.fd, "VFIO_IOMMU_MAP_DMA",
                  {"flags": flags, "vaddr": buffer.addr + args.offset + i * args.size,
                   "size": args.size, "iova": args.iova + i * args.size},
                  handle=iommufd.handle)


@op(VfioUnmapDma)
def vfio_unmap_dma(rt: Runtime, args: VfioUnmapDma, step: Step) -> None:
    iommufd = iommufd_of(rt, args.iommu, "vfio_unmap_dma")
    iovas = args.iova if isinstance(args.iova, list) else [args.iova]
    flags = lib.VFIO_DMA_UNMAP_FLAG_ALL if args.all else 0
    answers: list[str] = []
    first_error: VfioError | None = None
    for iova in iovas:
        try:
            sent = mock.send(iommufd.fd, "VFIO_IOMMU_UNMAP_DMA",
                             {"flags": flags, "iova": iova, "size": args.size},
                             handle=iommufd.handle)
        except VfioError as e:
            answers.append(errno_name(e.errno))
            first_error = first_error or e
            continue
        answers.append("ok")
        if args.unmapped is not None and sent.struct.size != args.unmapped:
            raise CheckFailed(f"unmap at {iova:#x}: the kernel reports {sent.struct.size:#x} "
                              f"bytes unmapped, expected {args.unmapped:#x}")
    if len(set(answers)) > 1:
        shown = ", ".join(f"{iova:#x}: {a}" for iova, a in zip(iovas, answers, strict=True))
        raise CheckFailed(f"the unmaps answered differently: {shown}")
    if first_error is not None:
        raise first_error


INFO_FLAGS = lib.VFIO_IOMMU_INFO_PGSIZES | lib.VFIO_IOMMU_INFO_CAPS
INFO_BUFFER = 64 * 1024  # the selftest's BUFFER_SIZE: what lies past argsz must stay as set
FILL = 0xAA


def _get_info(fd: int, argsz: int) -> tuple[Any, bytes]:
    """VFIO_IOMMU_GET_INFO with `argsz` in a buffer filled with FILL past it; returns the
    struct and the whole buffer as the kernel left it (raises on a byte written past)."""
    raw = ffi.new("uint8_t[]", INFO_BUFFER)
    ffi.memmove(raw + argsz, bytes([FILL]) * (INFO_BUFFER - argsz), INFO_BUFFER - argsz)
    info = ffi.cast("struct vfio_iommu_type1_info *", raw)
    info.argsz = argsz
    ret = lib.vs_ioctl(fd, lib.VFIO_IOMMU_GET_INFO, raw)
    if ret < 0:
        raise VfioError(-ret, "VFIO_IOMMU_GET_INFO", "/dev/iommu")
    data = bytes(ffi.buffer(raw, INFO_BUFFER))
    if data.count(FILL, argsz) != INFO_BUFFER - argsz:
        raise CheckFailed(f"argsz {argsz}: the kernel wrote past argsz")
    return info, data


CAP_HEADER = struct.Struct("<HHI")  # struct vfio_info_cap_header: id, version, next


def _check_cap_chain(info: Any, data: bytes, argsz: int,
                     ranges: list[tuple[int, int]]) -> set[int]:
    """Checks the capability chain of a VFIO_IOMMU_GET_INFO answer; returns the ids met."""
    at = int(info.cap_offset)
    seen: set[int] = set()
    reported = int(info.argsz)
    if reported < at + CAP_HEADER.size:
        raise CheckFailed(f"argsz {argsz}: cap_offset {at} past argsz {reported}")
    range_size = ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")
    avail_size = ffi.sizeof("struct vfio_iommu_type1_info_dma_avail")
    while True:
        cap_id, version, nxt = CAP_HEADER.unpack_from(data, at)
        seen.add(cap_id)
        cap_size = (nxt if nxt else reported) - at
        if cap_id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            nr, = struct.unpack_from("<I", data, at + CAP_HEADER.size)
            found = [struct.unpack_from("<QQ", data, at + range_size + 16 * i)
                     for i in range(nr)]
            if version != 1 or found != ranges:
                shown = ", ".join(f"[{a:#x}, {b:#x}]" for a, b in found) or "no ranges"
                want = ", ".join(f"[{a:#x}, {b:#x}]" for a, b in ranges) or "none"
                raise CheckFailed(f"argsz {argsz}: IOVA-range capability version {version} "
                                  f"with {shown}; expected version 1 with {want}")
        elif cap_id == lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            # the kernel pads each capability to 8 bytes (vfio_compat.c: ALIGN(cap_size, u64))
            padded = (avail_size + 7) & ~7
            if version != 1 or not avail_size <= cap_size <= padded:
                raise CheckFailed(f"argsz {argsz}: DMA-avail capability version {version}, "
                                  f"{cap_size} bytes (expected 1, {avail_size} to {padded})")
        else:
            raise CheckFailed(f"argsz {argsz}: unknown capability {cap_id} at {at}")
        if not nxt:
            return seen
        if reported < nxt + CAP_HEADER.size or nxt < at:
            raise CheckFailed(f"argsz {argsz}: capability at {at} links to {nxt}")
        at = nxt


@op(VfioIommuInfo)
def vfio_iommu_info(rt: Runtime, args: VfioIommuInfo, step: Step) -> None:
    fd = _fd(rt, args.iommu, "vfio_iommu_info")
    ranges = [(r.start, r.last) for r in args.iova_ranges]
    pre_cap = int(ffi.offsetof("struct vfio_iommu_type1_info", "cap_offset"))
    full = ffi.sizeof("struct vfio_iommu_type1_info")
    for argsz in (pre_cap, full):
        info, _ = _get_info(fd, argsz)
        if not info.iova_pgsizes or info.flags != INFO_FLAGS:
            raise CheckFailed(f"argsz {argsz}: flags {info.flags:#x}, page sizes "
                              f"{info.iova_pgsizes:#x} (expected {INFO_FLAGS:#x}, non-zero)")
    if info.cap_offset != 0 or info.argsz <= full:
        raise CheckFailed(f"argsz {full}: cap_offset {info.cap_offset}, argsz {info.argsz}: "
                          "expected 0 and the larger size the capabilities need")
    caplen = int(info.argsz)
    chains = 0
    # the selftest sweeps up to caplen - 1, where the IOVA-range capability never fits;
    # at caplen itself (the size the kernel asked for) the whole chain must be there
    for argsz in range(full, caplen + 1):
        info, data = _get_info(fd, argsz)
        if info.flags != INFO_FLAGS:
            raise CheckFailed(f"argsz {argsz}: flags {info.flags:#x}, expected {INFO_FLAGS:#x}")
        seen = _check_cap_chain(info, data, argsz, ranges) if info.cap_offset else set()
        chains += bool(seen)
    want = {lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL}
    if seen != want:
        raise CheckFailed(f"argsz {caplen}: capabilities {sorted(seen)}, expected the IOVA "
                          "range and DMA-avail ones")
    rt.note(f"argsz {pre_cap} to {caplen}: {chains} capability chain(s) checked")
