"""Operations on iommufd's nested-translation objects and its VFIO type1 compat layer, as
the kernel's iommufd selftests drive them through the mock IOMMU (CONFIG_IOMMUFD_TEST):
nested HW page tables with driver data, cache invalidation, vIOMMU, vDEVICE, vEVENTQ,
HW queue and fault queue objects, IOMMU_VFIO_IOAS and VFIO's type1 ioctls on /dev/iommu.

The models register themselves as every `Op` does; models.py imports this module last
and re-exports its models: the testbed's guest restores every model as a class of
`vfio_scenario.language.models` (run/guest_models.py), so these are that module's too
(their `__module__`), and operations import them from there.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import AfterValidator, Field, model_validator
from vfio_scenario.language.models import (
    U32,
    BufferRef,
    Int,
    IommuRef,
    MappingRef,
    ObjectId,
    Op,
    Size,
    Strict,
    _handle_name,
)
from vfio_scenario.language.models import HandleRef as _Ref

# any iommufd object a step made: its id (a mock handle: the role the argument needs)
ObjectRef = Annotated[str, AfterValidator(_handle_name),
                      _Ref("ioas", "mock", "hwpt", "viommu", "vdevice", "veventq", "fault",
                           "hw_queue")]
ViommuRef = Annotated[str, AfterValidator(_handle_name), _Ref("viommu")]
HwptOrViommuRef = Annotated[str, AfterValidator(_handle_name), _Ref("hwpt", "viommu")]
VeventqRef = Annotated[str, AfterValidator(_handle_name), _Ref("veventq")]
FaultRef = Annotated[str, AfterValidator(_handle_name), _Ref("fault")]
QueueRef = Annotated[str, AfterValidator(_handle_name), _Ref("veventq", "fault")]
ViommuMmapRef = Annotated[str, AfterValidator(_handle_name), _Ref("viommu_mmap")]
IommuTarget: TypeAlias = ObjectId | ObjectRef


class AllocNestedHwpt(Op):
    """IOMMU_HWPT_ALLOC with driver data: a HW page table for `device` on `parent` (a
    nesting-parent HW page table, a vIOMMU, or any object or id the kernel must refuse)
    whose data is the mock's `iommu_hwpt_selftest` (`iotlb` its IOTLB entries' value;
    `data_len` bytes of it, or a NULL pointer with `null_data`); `fault` names the
    fault queue (its id in `fault_id`, as given: the `fault_id_valid` flag is a flag)."""

    op = "alloc_nested_hwpt"
    produces = "hwpt"
    area = "iommufd"
    iommu: IommuRef
    device: IommuTarget
    parent: IommuTarget
    # which id of a mock handle `parent` means: its HW page table, or its device (the
    # selftest passes a device id where a page table belongs, for the kernel to refuse)
    parent_role: Literal["pt", "device"] = "pt"
    flags: list[Literal["nest_parent", "dirty_tracking", "fault_id_valid", "pasid"]] | U32 = Field(
        default_factory=list)
    data_type: Literal["selftest", "none"] | U32 = "selftest"
    iotlb: U32 = 0xBADBEEF  # IOMMU_TEST_IOTLB_DEFAULT
    data_len: U32 | None = None  # default: sizeof(struct iommu_hwpt_selftest)
    null_data: bool = False
    fault: ObjectId | FaultRef | None = None


class MockCheckIotlb(Op):
    """IOMMU_TEST_OP_MD_CHECK_IOTLB: the mock nested HW page table's IOTLB entry `id`
    (`all`: each of its MOCK_NESTED_DOMAIN_IOTLB_NUM) holds `value` (the kernel compares)."""

    op = "mock_check_iotlb"
    area = "iommufd"
    iommu: IommuRef
    hwpt: IommuTarget
    id: U32 | Literal["all"] = "all"
    value: U32


class MockCheckDevCache(Op):
    """IOMMU_TEST_OP_DEV_CHECK_CACHE: the mock device's cache entry `id` (`all`: each of
    its MOCK_DEV_CACHE_NUM) holds `value` (the kernel compares)."""

    op = "mock_check_dev_cache"
    area = "iommufd"
    iommu: IommuRef
    device: IommuTarget
    id: U32 | Literal["all"] = "all"
    value: U32


class InvalidateEntry(Strict):
    """One request of an invalidation array: a nested HW page table's
    (`iommu_hwpt_invalidate_selftest`: flags, iotlb_id) or a vIOMMU's
    (`iommu_viommu_invalidate_selftest`: flags, vdev_id, cache_id)."""

    flags: U32 | Literal["all"] = 0  # all: IOMMU_TEST_INVALIDATE_FLAG_ALL
    iotlb_id: U32 | None = None
    vdev_id: U32 | None = None
    cache_id: U32 | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> InvalidateEntry:
        if self.iotlb_id is not None and (self.vdev_id is not None or self.cache_id is not None):
            raise ValueError("`iotlb_id` is a HW page table's request, `vdev_id`/`cache_id` "
                             "a vIOMMU's: not both")
        return self


class InvalidateCache(Op):
    """IOMMU_HWPT_INVALIDATE of a nested HW page table or a vIOMMU with an array of
    `entries` (the mock's request structs, each `entry_len` bytes apart in the array the
    kernel reads: default their size), `entry_num` of them (default: as many as given),
    or a NULL array with `null_data`. `done` checks the count the kernel writes back
    (also when it fails: then the errno is the step's outcome)."""

    op = "invalidate_cache"
    area = "iommufd"
    iommu: IommuRef
    target: HwptOrViommuRef
    data_type: Literal["selftest", "selftest_invalid"] | U32 = "selftest"
    entries: list[InvalidateEntry] = Field(default_factory=list)
    entry_len: U32 | None = None
    entry_num: U32 | None = None
    null_data: bool = False
    done: U32 | None = None


class AllocViommu(Op):
    """IOMMU_VIOMMU_ALLOC: a vIOMMU of `type` for `device` on the nesting-parent HW page
    table `hwpt`; with `data` the mock's `iommu_viommu_selftest` carries it as in_data and
    the kernel must loop it back in out_data (its mmap region is then the handle's)."""

    op = "alloc_viommu"
    produces = "viommu"
    area = "iommufd"
    iommu: IommuRef
    device: IommuTarget
    hwpt: IommuTarget
    type: Literal["selftest"] | U32 = "selftest"
    data: U32 | None = None


class MmapViommu(Op):
    """mmap(2) of the iommufd at the region the vIOMMU's data reported (out_mmap_offset
    plus `offset`, out_mmap_length or `length` half/double of it), shared read/write;
    `equals` checks its first 32-bit word. The kernel refuses another offset or length
    (ENXIO)."""

    op = "mmap_viommu"
    produces = "viommu_mmap"
    area = "iommufd"
    iommu: IommuRef
    viommu: ViommuRef
    offset: Size = 0
    length: Literal["reported", "half", "double"] = "reported"
    equals: U32 | None = None


class MunmapViommu(Op):
    """munmap(2) of a vIOMMU's mmap region."""

    op = "munmap_viommu"
    area = "iommufd"
    mapping: ViommuMmapRef


class AllocVdevice(Op):
    """IOMMU_VDEVICE_ALLOC: the device's virtual id `virt_id` on a vIOMMU."""

    op = "alloc_vdevice"
    produces = "vdevice"
    area = "iommufd"
    iommu: IommuRef
    viommu: IommuTarget
    device: IommuTarget
    virt_id: Int


class AllocVeventq(Op):
    """IOMMU_VEVENTQ_ALLOC: a vIOMMU event queue of `type` holding `depth` events; the
    handle holds its id and its fd."""

    op = "alloc_veventq"
    produces = "veventq"
    area = "iommufd"
    iommu: IommuRef
    viommu: IommuTarget
    type: Literal["selftest"] | U32 = "selftest"
    depth: U32


class TriggerVevents(Op):
    """IOMMU_TEST_OP_TRIGGER_VEVENT `count` times: the mock device reports an event to
    the vIOMMU's event queue."""

    op = "trigger_vevents"
    area = "iommufd"
    iommu: IommuRef
    device: IommuTarget
    count: U32 = 1


class ReadVevents(Op):
    """Read a vEVENTQ's fd (after poll(2), 1 s): `count` records of an
    `iommufd_vevent_header` and the mock's event, each checked for `virt_id` and a
    sequence one past the previous record's; with `lost`, the kernel must report lost
    events (a LOST_EVENTS header or a gap in the sequence) among them. `bytes` instead
    reads that many bytes as given (the kernel refuses a read too short for a record)."""

    op = "read_vevents"
    area = "iommufd"
    veventq: VeventqRef
    count: U32 = 1
    virt_id: Int | None = None
    lost: bool = False
    bytes: U32 | None = None


class CloseQueueFd(Op):
    """close(2) of a vEVENTQ's or a fault queue's fd (before IOMMU_DESTROY of the object)."""

    op = "close_queue_fd"
    area = "iommufd"
    queue: QueueRef


class AllocFaultQueue(Op):
    """IOMMU_FAULT_QUEUE_ALLOC: a fault queue; its id and fd must be non-zero."""

    op = "alloc_fault_queue"
    produces = "fault"
    area = "iommufd"
    iommu: IommuRef


class TriggerIopf(Op):
    """IOMMU_TEST_OP_TRIGGER_IOPF: the mock device raises an I/O page fault (read and
    write at 0xdeadbeaf, group 2, `pasid`); the fault queue's fd must deliver it (its
    address, group and permissions checked) and takes the success response for its
    cookie."""

    op = "trigger_iopf"
    area = "iommufd"
    iommu: IommuRef
    device: IommuTarget
    fault: FaultRef
    pasid: U32 = 1


class AllocHwQueue(Op):
    """IOMMU_HW_QUEUE_ALLOC: HW queue `index` of `type` on a vIOMMU, backed by
    [`iova`+`offset`, +`length`) of the nesting parent's IOAS (`iova` a number or a
    mapping's IOVA)."""

    op = "alloc_hw_queue"
    produces = "hw_queue"
    area = "iommufd"
    iommu: IommuRef
    viommu: IommuTarget
    type: Literal["selftest", "default"] | U32 = "selftest"
    index: U32 = 0
    iova: Int | MappingRef  # a mapping: the IOVA the kernel gave it
    offset: Int = 0  # added to `iova`
    length: Int


class SkipUnlessMade(Op):
    """Skip the case with `reason` when `object`'s id is 0: the selftests' `if
    (!self->device_id) SKIP(...)`, a fixture variant that made no such object."""

    op = "skip_unless_made"
    area = "iommufd"
    object: IommuTarget
    reason: Annotated[str, Field(min_length=1)]


class VfioIoas(Op):
    """IOMMU_VFIO_IOAS: `set` the IOAS VFIO's type1 compat ioctls on this iommufd use,
    `get` it (`equals` checks the id the kernel reports) or `clear` it."""

    op = "vfio_ioas"
    area = "iommufd"
    iommu: IommuRef
    action: Literal["get", "set", "clear"]
    ioas: IommuTarget = 0
    equals: IommuTarget | None = None


class VfioMapDma(Op):
    """VFIO_IOMMU_MAP_DMA on the iommufd (its type1 compat): `count` consecutive maps of
    `size` bytes of the buffer from `offset`, at `iova` on."""

    op = "vfio_map_dma"
    area = "iommufd"
    iommu: IommuRef
    buffer: BufferRef
    offset: Size = 0
    size: Size
    iova: Int
    count: U32 = Field(1, ge=1)
    read: bool = True
    write: bool = True


class VfioUnmapDma(Op):
    """VFIO_IOMMU_UNMAP_DMA on the iommufd (its type1 compat) of `size` bytes at `iova`,
    or at each IOVA of a list in its order (each must answer as the step expects);
    `all` sets VFIO_DMA_UNMAP_FLAG_ALL; `unmapped` checks the size the kernel reports."""

    op = "vfio_unmap_dma"
    area = "iommufd"
    iommu: IommuRef
    iova: Int | list[Int]
    size: Size
    all: bool = False
    unmapped: Size | None = None


class IovaSpanV(Strict):
    start: Int
    last: Int


class VfioIommuInfo(Op):
    """VFIO_IOMMU_GET_INFO on the iommufd (its type1 compat) at the pre-capability argsz
    and at every one from sizeof to the size the kernel asks for: flags PGSIZES|CAPS and
    page sizes reported, no byte past argsz written, every capability chain that fits
    well formed (the IOVA-range capability, version 1, listing `iova_ranges`; the
    DMA-avail one, version 1, its size padded to 8 bytes; nothing else), and at the size
    asked for both."""

    op = "vfio_iommu_info"
    area = "iommufd"
    iommu: IommuRef
    iova_ranges: list[IovaSpanV]


__all__ = ["AllocFaultQueue", "AllocHwQueue", "AllocNestedHwpt", "AllocVdevice", "AllocVeventq", "AllocViommu", "CloseQueueFd", "InvalidateCache", "InvalidateEntry", "IovaSpanV", "MmapViommu", "MockCheckDevCache", "MockCheckIotlb", "MunmapViommu", "ReadVevents", "SkipUnlessMade", "TriggerIopf", "TriggerVevents", "VfioIoas", "VfioIommuInfo", "VfioMapDma", "VfioUnmapDma"]

for _name in __all__:  # pickled by reference as the models module's (see above)
    globals()[_name].__module__ = "vfio_scenario.language.models"
