"""pydantic models of the scenario language: scenario keys and every operation.

Each operation is a model of its arguments (a subclass of `Op`, registered in
OPERATIONS when it is defined) that names its operation key (`op`), the kind of handle
it makes (`produces`), what the compiler and planner need to know of it (class
attributes such as `opens_iommu`), its description (its docstring, shown in
docs/language.md) and, through `Ref[...]` annotations, the kind of handle each
argument must name. The step
keys common to every operation are in `StepCommon`. docs/language.md is the
language's reference.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema
from vfio_scenario.errors import ERRNO_NUMBERS, SIGNALS, canonical_errno_name
from vfio_scenario.language.units import C_TYPES, fits, parse_duration, parse_int, parse_size
from vfio_scenario.run.kernel_watch import SPLAT_KINDS
from vfio_scenario.uapi.process import CAPABILITIES

IommuMode = Literal[
    "vfio_type1_iommu",
    "vfio_type1v2_iommu",
    "iommufd_compat_type1",
    "iommufd_compat_type1v2",
    "iommufd",
]
IOMMU_MODES: tuple[str, ...] = get_args(IommuMode)
Feature = Literal[
    "dma_buf",
    "dma_buf_mmap",
    "dma_buf_revoke",
    "dma_buf_memattr",
    "iommufd",
    "cdev",
    "msi",
    "msix",
    "intx",
    "reset",
    "sriov",
    "hugetlb-2M",
    "hugetlb-1G",
    "iommu_debugfs",
    "iommufd_test",
]
FEATURES: tuple[str, ...] = get_args(Feature)
HANDLE_KINDS = ("iommu", "ioas", "cdev", "device", "buffer", "mapping", "mmio", "irq", "dmabuf",
                "mock", "hwpt", "access", "access_pages", "mock_dmabuf", "viommu", "vdevice",
                "veventq", "fault", "hw_queue", "viommu_mmap")
ERRNO_NAMES = frozenset(ERRNO_NUMBERS)
HANDLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
BDF = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")

class _CType:
    """Annotation: the integer must fit in the C type `ctype`; the JSON Schema shows its range."""

    def __init__(self, ctype: str) -> None:
        self.ctype = ctype
        self.low, self.high = C_TYPES[ctype]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_after_validator_function(
            lambda v: fits(self.ctype, v), handler(source))

    def __get_pydantic_json_schema__(self, schema: Any,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        js: dict[str, Any] = handler(schema)
        js["minimum"] = max(js.get("minimum", self.low), self.low)
        js["maximum"] = min(js.get("maximum", self.high), self.high)
        return js


def _c_type(ctype: str) -> _CType:
    return _CType(ctype)


# Integers by the C type of the uAPI field (or C argument) each one ends up in: checked
# after templates render, so `iova: "{{ base + size }}"` cannot pass 64 bits either.
Int = Annotated[int, BeforeValidator(parse_int), _c_type("u64")]
U16 = Annotated[int, BeforeValidator(parse_int), _c_type("u16")]
U32 = Annotated[int, BeforeValidator(parse_int), _c_type("u32")]
S32 = Annotated[int, BeforeValidator(parse_int), _c_type("s32")]
Size = Annotated[int, BeforeValidator(parse_size), _c_type("u64")]
Duration = Annotated[float, BeforeValidator(parse_duration)]  # finite, at most 24h
Width = Literal[1, 2, 4, 8]
ConfigWidth = Literal[1, 2, 4]


class HandleRef:
    """Marks an argument that names a handle made by an earlier step."""

    def __init__(self, *kinds: str) -> None:
        self.kinds = kinds

    def __repr__(self) -> str:
        return f"HandleRef{self.kinds}"


def _handle_name(value: str) -> str:
    # the same rule as HANDLE_NAME, without a regex: this runs for every handle argument
    if not (value.isascii() and value.replace("-", "_").isidentifier()):
        raise ValueError(f"{value!r} is not a handle name (letters, digits, _ and -)")
    return value


def _bdf(value: str) -> str:
    if not BDF.match(value):
        raise ValueError(f"{value!r} is not a PCI address like 0000:00:03.0")
    return value if value.count(":") == 2 else f"0000:{value}"


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regular expression {value!r}: {exc}") from None
    return value


IommuRef = Annotated[str, AfterValidator(_handle_name), HandleRef("iommu")]
IoasRef = Annotated[str, AfterValidator(_handle_name), HandleRef("ioas")]
DeviceRef = Annotated[str, AfterValidator(_handle_name), HandleRef("device")]
BufferRef = Annotated[str, AfterValidator(_handle_name), HandleRef("buffer")]
MappingRef = Annotated[str, AfterValidator(_handle_name), HandleRef("mapping")]
MmioRef = Annotated[str, AfterValidator(_handle_name), HandleRef("mmio")]
IrqRef = Annotated[str, AfterValidator(_handle_name), HandleRef("irq")]
DmabufRef = Annotated[str, AfterValidator(_handle_name), HandleRef("dmabuf")]
# a DMABUF a device exported, or one of the mock IOMMU's (what IOMMU_IOAS_MAP_FILE maps)
AnyDmabufRef = Annotated[str, AfterValidator(_handle_name), HandleRef("dmabuf", "mock_dmabuf")]
AccessRef = Annotated[str, AfterValidator(_handle_name), HandleRef("access")]
AccessPagesRef = Annotated[str, AfterValidator(_handle_name), HandleRef("access_pages")]
MockRef = Annotated[str, AfterValidator(_handle_name), HandleRef("mock")]
IoasOrMockRef = Annotated[str, AfterValidator(_handle_name), HandleRef("ioas", "mock", "hwpt")]
ObjectId = Annotated[int, BeforeValidator(parse_int), _c_type("u32")]
CdevRef = Annotated[str, AfterValidator(_handle_name), HandleRef("cdev")]
ProcessRef = Annotated[str, AfterValidator(_handle_name), HandleRef("process")]
CapabilityName = Literal[CAPABILITIES]  # type: ignore[valid-type]
DeviceOrCdevRef = Annotated[str, AfterValidator(_handle_name), HandleRef("device", "cdev")]
Bdf = Annotated[str, AfterValidator(_bdf)]
Uuid = Annotated[str, AfterValidator(_uuid)]
Regex = Annotated[str, AfterValidator(_regex)]
Pattern = (Literal["zero", "ones", "incrementing", "random"]
           | Annotated[int, BeforeValidator(parse_int), Field(ge=0, le=255)])
RegionName = (Literal["bar0", "bar1", "bar2", "bar3", "bar4", "bar5", "rom", "config", "vga"]
              | Annotated[int, _c_type("u32")])  # a region index
MaxOr = Literal["max"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_REGISTERED: dict[str, type[Op]] = {}
# Every operation, by its key: a model registers itself when its class is defined.
OPERATIONS: Mapping[str, type[Op]] = MappingProxyType(_REGISTERED)


class Op(Strict):
    """Arguments of one operation.

    A subclass that sets `op` is an operation of the language: defining it registers it
    in OPERATIONS (a second model of the same `op` is refused); its implementation is
    the one function bound to it by `@op(Model)` in vfio_scenario.run.ops. A subclass
    without its own `op` is a base of several operations. What the compiler and the
    planner need to know of an operation is a class attribute here.
    """

    op: ClassVar[str]
    produces: ClassVar[str | None] = None  # the kind of handle it makes (`as:` names it)
    area: ClassVar[str]
    # its presence makes a scenario depend on the IOMMU mode (an implicit `iommu_mode` axis)
    opens_iommu: ClassVar[bool] = False
    # the argument that names the IOMMU mode it opens (without it: the case's mode)
    iommu_mode_argument: ClassVar[str | None] = None
    # it has the device raise an MSI on demand, which a NO_SEND_MSI driver cannot
    raises_msi: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.__dict__.get("op")
        if name is None:
            return  # a base of operations
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"{cls.__qualname__}.op must be an operation key, not {name!r}")
        if not isinstance(getattr(cls, "area", None), str):
            raise TypeError(f"operation `{name}` ({cls.__qualname__}) sets no `area`")
        other = _REGISTERED.get(name)
        if other is not None:
            raise TypeError(f"operation `{name}` is defined twice: by {_qualified(other)} "
                            f"and by {_qualified(cls)}")
        _REGISTERED[name] = cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _exactly_one(model: BaseModel, names: tuple[str, ...], *, required: bool = True) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    listing = " or ".join(f"`{n}`" for n in names)
    if len(given) > 1:
        raise ValueError(f"give only one of {listing}, not {' and '.join(given)}")
    if required and not given:
        raise ValueError(f"one of {listing} is required")


# --- IOMMU -------------------------------------------------------------------


class OpenIommu(Op):
    """Open an IOMMU in `mode` (default: the case's `iommu_mode`): a type1 container or
    an iommufd; with `default_ioas: false` an iommufd gets no IOAS at open (as the
    iommufd selftests open /dev/iommu)."""

    op = "open_iommu"
    produces = "iommu"
    area = "iommu"
    opens_iommu = True
    iommu_mode_argument = "mode"
    mode: IommuMode | None = None
    default_ioas: bool = True  # iommufd: an IOAS made at open, where map_dma/devices go


class IovaRange(Strict):
    start: Int
    size: Size


class IommuInfo(Op):
    """Check the IOMMU's page sizes (`pgsize_includes`) or IOVA ranges
    (`iova_range_includes`)."""

    op = "iommu_info"
    area = "iommu"
    iommu: IommuRef
    pgsize_includes: Size | None = None
    iova_range_includes: IovaRange | None = None


class AllocIoas(Op):
    """Allocate an IOAS (IOMMU_IOAS_ALLOC) on an iommufd IOMMU."""

    op = "alloc_ioas"
    produces = "ioas"
    area = "iommu"
    iommu: IommuRef


class OpenCdev(Op):
    """Open the device's VFIO cdev (/dev/vfio/devices/vfioN; default: the case's
    device)."""

    op = "open_cdev"
    produces = "cdev"
    area = "iommu"
    opens_iommu = True
    bdf: Bdf | None = None


class BindIommufd(Op):
    """Bind a cdev to an iommufd (VFIO_DEVICE_BIND_IOMMUFD): `iommu`, or a raw fd number
    `iommufd_fd`."""

    op = "bind_iommufd"
    produces = "device"
    area = "iommu"
    opens_iommu = True
    cdev: CdevRef
    iommu: IommuRef | None = None
    iommufd_fd: S32 | None = None  # a raw fd number instead of `iommu` (e.g. -2: a bad fd)

    @model_validator(mode="after")
    def _one_iommufd(self) -> BindIommufd:
        _exactly_one(self, ("iommu", "iommufd_fd"))
        return self


class Attach(Op):
    """Attach a bound cdev device to an IOAS, by handle or by id
    (VFIO_DEVICE_ATTACH_IOMMUFD_PT)."""

    op = "attach"
    area = "iommu"
    device: DeviceRef
    ioas: Annotated[int, _c_type("u32")] | IoasRef  # an IOAS id


class Detach(Op):
    """Detach a cdev device from its IOAS (VFIO_DEVICE_DETACH_IOMMUFD_PT)."""

    op = "detach"
    area = "iommu"
    device: DeviceRef


# --- iommufd objects and the selftests' mock IOMMU (CONFIG_IOMMUFD_TEST) ---------


class MockDomain(Op):
    """IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS): `count` mock devices attached to `pt` (an IOAS:
    each gets a new mock domain; a mock handle: its HW page table; or an object id). The
    handle holds the last device's ids, all 0 with `count: 0`."""

    op = "mock_domain"
    produces = "mock"
    area = "iommufd"
    iommu: IommuRef
    pt: ObjectId | IoasOrMockRef
    count: U32 = 1
    flags: list[Literal["no_dirty", "pasid"]] = []
    dev_cache: U32 | None = None  # IOMMU_TEST_OP_DEV_CHECK_CACHE: each cache of each device


class MockDomainReplace(Op):
    """IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: attach the mock device to another page table."""

    op = "mock_domain_replace"
    area = "iommufd"
    iommu: IommuRef
    mock: MockRef
    pt: ObjectId | IoasOrMockRef


class HwptSelftest(Strict):
    """The mock's HW page table data (struct iommu_hwpt_selftest): its IOTLB value and its
    page table format (MOCK_IOMMUPT_DEFAULT: 2 KiB pages; MOCK_IOMMUPT_HUGE: 1 MiB)."""

    iotlb: U32 = 0
    pagetable_type: Literal["default", "huge"] = "default"


class AllocHwpt(Op):
    """IOMMU_HWPT_ALLOC: a HW page table for a device (a mock device's iommufd device) on
    `pt` with `flags` (names, or a number as given)."""

    op = "alloc_hwpt"
    produces = "hwpt"
    area = "iommufd"
    iommu: IommuRef
    device: ObjectId | MockRef
    pt: ObjectId | IoasOrMockRef
    flags: list[Literal["nest_parent", "dirty_tracking", "fault_id_valid", "pasid"]] | U32 = []
    # IOMMU_HWPT_DATA_SELFTEST (struct iommu_hwpt_selftest) for the mock; None: DATA_NONE
    selftest: HwptSelftest | None = None


class CloseIommu(Op):
    """Close the IOMMU's fd now (an iommufd frees its objects and unpins their pages)."""

    op = "close_iommu"
    area = "iommufd"
    iommu: IommuRef


class MockCheckRefs(Op):
    """IOMMU_TEST_OP_MD_CHECK_REFS on a fresh /dev/iommu (or on `iommu`): every page of
    the buffer (or of [offset, offset + size) of it) holds `refs` pins (the selftests'
    teardown checks 0 after closing the fixture's iommufd)."""

    op = "mock_check_refs"
    area = "iommufd"
    buffer: BufferRef
    refs: U32 = 0
    offset: Size = 0
    size: Size | None = None  # default: to the buffer's end
    iommu: IommuRef | None = None


class MockMemoryLimit(Op):
    """IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: the mock's pinned-page limit (kernel default 65536)."""

    op = "mock_memory_limit"
    area = "iommufd"
    iommu: IommuRef
    pages: U32


class IommufdDestroy(Op):
    """IOMMU_DESTROY of an IOAS, of a mock device (its selftest object), of another
    object a step made (HW page table, vIOMMU, vDEVICE, vEVENTQ, fault or HW queue) or of
    an id."""

    op = "iommufd_destroy"
    area = "iommufd"
    iommu: IommuRef
    object: ObjectId | Annotated[str, AfterValidator(_handle_name), HandleRef(
        "ioas", "mock", "hwpt", "viommu", "vdevice", "veventq", "fault", "hw_queue")]


class AddReservedIovas(Op):
    """IOMMU_TEST_OP_ADD_RESERVED: reserve [start, start+size) of an IOAS."""

    op = "add_reserved_iovas"
    area = "iommufd"
    ioas: IoasRef
    start: Int
    size: Int


class IovaSpan(Strict):
    start: Int
    last: Int


class AllowIovas(Op):
    """IOMMU_IOAS_ALLOW_IOVAS: the IOAS maps only inside `ranges` ([] allows everything)."""

    op = "allow_iovas"
    area = "iommufd"
    ioas: IoasRef
    ranges: list[IovaSpan]


class IovaRanges(Op):
    """IOMMU_IOAS_IOVA_RANGES with room for `capacity` ranges; checks the `count`, the
    `ranges` (nothing written past them) and the `alignment` the kernel reports. On
    EMSGSIZE (too little room) `count`, the ranges that fit and that nothing past the
    room was written are checked, then the errno is the step's outcome."""

    op = "iova_ranges"
    area = "iommufd"
    ioas: IoasRef
    capacity: U32 = 256
    count: U32 | None = None
    ranges: list[IovaSpan] | None = None
    alignment: Int | None = None


class CopyIova(Op):
    """IOMMU_IOAS_COPY: map in `ioas` the pages `src` maps at `src_iova` (an IOVA, or a
    mapping of `src` whose IOVA it is)."""

    op = "copy_iova"
    produces = "mapping"
    area = "iommufd"
    ioas: IoasRef
    src: IoasRef
    src_iova: Int | MappingRef
    size: Size
    iova: Int | None = None  # None: the kernel picks
    read: bool = True
    write: bool = True


class IommufdOption(Op):
    """IOMMU_OPTION: set `option` of the iommufd (object 0) or of an IOAS to `set`, or
    get it and check it `equals`."""

    op = "iommufd_option"
    area = "iommufd"
    iommu: IommuRef
    option: Literal["rlimit_mode", "huge_pages"]
    object: ObjectId | IoasRef = 0
    set: Int | None = None
    equals: Int | None = None

    @model_validator(mode="after")
    def _set_or_get(self) -> IommufdOption:
        if self.set is not None and self.equals is not None:
            raise ValueError("give `set` (an OP_SET) or `equals` (an OP_GET's check), not both")
        return self


class GetHwInfo(Op):
    """IOMMU_GET_HW_INFO of a device with a `data_len`-byte buffer: checks the data type
    the kernel reports, the length of its data (`out_data_len`), the selftest register,
    that bytes past the kernel's data are zeroed, the max PASID width and the
    capabilities."""

    op = "get_hw_info"
    area = "iommufd"
    iommu: IommuRef
    device: ObjectId | MockRef
    data_type: Literal["default", "selftest"] | U32 | None = None  # None: no INPUT_TYPE flag
    data_len: U32 = 8
    out_data_type: Literal["selftest"] | U32 | None = None
    out_data_len: U32 | None = None  # the data_len the kernel writes back: its data's size
    test_reg: U32 | None = None
    max_pasid_log2: Annotated[int, Field(ge=0, le=255)] | None = None
    capabilities_include: list[Literal["dirty_tracking"]] = []


class IommufdIoctl(Op):
    """One ioctl on the iommufd exactly as given, for the uAPI's own argument checks: by
    name or command number, its struct with `fields` set (a string names a handle: its
    object id), the size field `size` (default: the struct's), `trailing` bytes after
    it, a NULL pointer (`null_pointer`) or an integer argument (`value`). `returns` checks the
    result, `out` fields of the struct after the call."""

    op = "iommufd_ioctl"
    area = "iommufd"
    iommu: IommuRef
    ioctl: Annotated[str, Field(pattern=r"^(IOMMU|VFIO)_[A-Z0-9_]+$")] | U32
    struct: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] | None = None
    fields: dict[str, Int | Annotated[str, AfterValidator(_handle_name)]] = {}
    size: U32 | None = None
    trailing: list[Annotated[int, Field(ge=0, le=255)]] = []
    null_pointer: bool = False
    value: Int | None = None
    returns: Int | None = None
    out: dict[str, Int | Annotated[str, AfterValidator(_handle_name)]] = {}


class IommufdCommandLength(Op):
    """The size rules of an iommufd command (the selftest's TEST_LENGTH): one byte short
    of `last`'s end is EINVAL; one byte past the struct with a non-zero byte there is
    E2BIG; the exact size and one past it with a zero byte there answer alike."""

    op = "iommufd_command_length"
    area = "iommufd"
    iommu: IommuRef
    ioctl: Annotated[str, Field(pattern=r"^IOMMU_[A-Z0-9_]+$")]
    last: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]


# --- the mock IOMMU's access objects and DMABUF (run/ops/iommufd_access.py) ---------


class CreateAccess(Op):
    """IOMMU_TEST_OP_CREATE_ACCESS: an access object on the IOAS, as an in-kernel user of
    an IOAS without a domain of its own (a mediated device's driver) holds one; it is a
    file descriptor, closed by destroy_access. `flags` (names, or a number as given):
    `needs_pin_pages` gives it the unmap callback pinning needs (without it access_pages
    is EOPNOTSUPP)."""

    op = "create_access"
    produces = "access"
    area = "iommufd"
    ioas: IoasRef
    flags: list[Literal["needs_pin_pages"]] | U32 = []


class DestroyAccess(Op):
    """Close the access object's fd (the selftest's test_cmd_destroy_access)."""

    op = "destroy_access"
    area = "iommufd"
    access: AccessRef


class AccessPages(Op):
    """IOMMU_TEST_OP_ACCESS_PAGES: pin `size` bytes at `offset` into a `mapping` through
    the access (`write`: MOCK_FLAGS_ACCESS_WRITE). The kernel checks that the pages it
    pinned are the process's pages at that offset of the memory mapped there (of `buffer`,
    which a mapping of a file needs); `id` checks the pin's id the kernel returns."""

    op = "access_pages"
    produces = "access_pages"
    area = "iommufd"
    access: AccessRef
    mapping: MappingRef
    offset: Size = 0
    size: Size
    buffer: BufferRef | None = None
    write: bool = False
    id: U32 | None = None


class DestroyAccessPages(Op):
    """IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: unpin one pin access_pages made."""

    op = "destroy_access_pages"
    area = "iommufd"
    pages: AccessPagesRef


class AccessRw(Op):
    """IOMMU_TEST_OP_ACCESS_RW through the access: `size` bytes at `offset` into a
    `mapping`, or, in the IOVA form (for memory another process mapped, as a forked
    child's `map_dma`), into the `length` bytes at `iova` that map `buffer` from its first
    byte: one form, not both. With `max_size`, every length from `size` to it; with
    `starts`, at every offset from `offset` to `offset + starts - 1`; each a `read`, a
    `write` or a `read_then_write` (`slow_path`: MOCK_ACCESS_RW_SLOW_PATH). Each call is
    checked against the process memory mapped there (`buffer`, for a mapping of a file
    and in the IOVA form): a read must bring its bytes and nothing past its length; a
    write of their inverse must leave that in memory and change no byte around it."""

    op = "access_rw"
    area = "iommufd"
    access: AccessRef
    mapping: MappingRef | None = None
    iova: Int | None = None
    length: Size | None = None
    offset: Size = 0
    size: Size = Field(gt=0)
    max_size: Size | None = None
    starts: U32 = Field(1, ge=1)
    direction: Literal["read", "write", "read_then_write"] = "read"
    slow_path: bool = False
    buffer: BufferRef | None = None

    @field_validator("iova")
    @classmethod
    def _not_both(cls, iova: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("mapping") is not None:
            raise ValueError("give `mapping`, or `iova` and `length`, not both: the "
                             "mapping knows its IOVA")
        return iova

    @field_validator("length")
    @classmethod
    def _of_iova(cls, length: int | None, info: ValidationInfo) -> int | None:
        if "iova" not in info.data:
            return length  # `iova` was refused, and its error says why
        if info.data.get("mapping") is not None:
            raise ValueError("with `mapping`, give no `length`: the mapping knows its size")
        if info.data["iova"] is None:
            raise ValueError("the bytes mapped at `iova`: give `iova` too")
        if length == 0:
            raise ValueError("the bytes mapped at `iova`: at least 1")
        return length

    @model_validator(mode="after")
    def _form(self) -> AccessRw:
        if self.max_size is not None and self.max_size < self.size:
            raise ValueError(f"`max_size` {self.max_size} is below `size` {self.size}")
        if self.mapping is None and self.iova is None:
            raise ValueError("give a `mapping`, or `iova` and `length`")
        if self.iova is not None and self.length is None:
            raise ValueError("`iova` needs `length`, the bytes mapped there")
        if self.iova is not None and self.buffer is None:
            raise ValueError("with `iova`, name the memory mapped there: `buffer` (mapped "
                             "from its first byte)")
        if self.length is not None and self.offset + self.reach > self.length:
            raise ValueError(f"`offset` {self.offset:#x} + {self.reach:#x} bytes reach past "
                             f"the `length` {self.length:#x} mapped at `iova`")
        return self

    @property
    def reach(self) -> int:
        """Bytes from `offset` to the end of the last call's range."""
        return self.starts - 1 + (self.size if self.max_size is None else self.max_size)


class AccessReplaceIoas(Op):
    """IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: attach the access to another IOAS."""

    op = "access_replace_ioas"
    area = "iommufd"
    access: AccessRef
    ioas: ObjectId | IoasRef


class MockDmabuf(Op):
    """IOMMU_TEST_OP_DMABUF_GET: a DMABUF of `size` bytes of kernel memory the mock
    exports (rounded up to pages; 0 or more than 512 pages is EINVAL), which `map_dma`
    maps with IOMMU_IOAS_MAP_FILE."""

    op = "mock_dmabuf"
    produces = "mock_dmabuf"
    area = "iommufd"
    iommu: IommuRef
    size: Size


class MockDmabufRevoke(Op):
    """IOMMU_TEST_OP_DMABUF_REVOKE: revoke a DMABUF of the mock (mapping it is then
    ENODEV), or with `revoked: false` give it back."""

    op = "mock_dmabuf_revoke"
    area = "iommufd"
    iommu: IommuRef
    dmabuf: AnyDmabufRef
    revoked: bool = True

# --- iommufd dirty tracking and the mock's PASID commands (run/ops/iommufd_dirty.py) ----

HwptRef = Annotated[str, AfterValidator(_handle_name), HandleRef("hwpt")]
HwptOrIoasRef = Annotated[str, AfterValidator(_handle_name), HandleRef("hwpt", "ioas", "mock")]


class DirtyBits(Strict):
    """Bits of a dirty bitmap: bit i is set when i % `every` < `first` (the first
    `first` of every `every` bits)."""

    every: Annotated[int, BeforeValidator(parse_int), Field(ge=1, le=1 << 32)]
    first: Annotated[int, BeforeValidator(parse_int), Field(ge=1, le=1 << 32)] = 1


class _HwptDirtyRange(Op):
    """A range of a HW page table's IOVAs in pages of `page_size` (one bitmap bit each)."""

    area = "iommufd"
    iommu: IommuRef
    hwpt: HwptRef
    iova: Int
    length: Size = Field(gt=0)
    page_size: Size = Field(gt=0)
    # where in a page-aligned bitmap the bitmap starts (the selftest's unaligned cases)
    bitmap_offset: Annotated[int, BeforeValidator(parse_int), Field(ge=0, lt=1 << 20)] = 0


class SetDirtyTracking(Op):
    """IOMMU_HWPT_SET_DIRTY_TRACKING: start (`enable: true`) or stop dirty tracking of a
    HW page table allocated with the `dirty_tracking` flag."""

    op = "set_dirty_tracking"
    area = "iommufd"
    iommu: IommuRef
    hwpt: HwptRef
    enable: bool


class MockSetDirty(_HwptDirtyRange):
    """IOMMU_TEST_OP_DIRTY: the mock IOMMU marks dirty the pages of [iova, iova + length)
    whose bit is set in a bitmap with every `every`-th bit set (bits 0, every, 2·every …);
    checks the count of pages the kernel reports marked (`nr_dirty`)."""

    op = "mock_set_dirty"
    every: Annotated[int, BeforeValidator(parse_int), Field(ge=1, le=1 << 32)] = 1
    nr_dirty: Int | None = None


class GetDirtyBitmap(_HwptDirtyRange):
    """IOMMU_HWPT_GET_DIRTY_BITMAP of [iova, iova + length) into a zeroed bitmap (with
    `flags: [no_clear]` the dirty state stays); checks every bit the kernel wrote:
    exactly the `dirty` bits (`none`, `all`, or the first `first` of every `every`), and
    no byte of the bitmap's page-aligned buffer outside the bitmap."""

    op = "get_dirty_bitmap"
    flags: list[Literal["no_clear"]] = []
    dirty: Literal["none", "all"] | DirtyBits


class _MockPasid(Op):
    area = "iommufd"
    iommu: IommuRef
    mock: MockRef
    pasid: U32


class MockPasidAttach(_MockPasid):
    """IOMMU_TEST_OP_PASID_ATTACH: attach PASID `pasid` of the mock device to `pt` (a HW
    page table, an IOAS or an object id)."""

    op = "mock_pasid_attach"
    pt: ObjectId | HwptOrIoasRef


class MockPasidReplace(_MockPasid):
    """IOMMU_TEST_OP_PASID_REPLACE: move an attached PASID of the mock device to `pt`."""

    op = "mock_pasid_replace"
    pt: ObjectId | HwptOrIoasRef


class MockPasidDetach(_MockPasid):
    """IOMMU_TEST_OP_PASID_DETACH: detach PASID `pasid` of the mock device."""

    op = "mock_pasid_detach"


class MockPasidCheck(_MockPasid):
    """IOMMU_TEST_OP_PASID_CHECK_HWPT: the kernel checks that PASID `pasid` of the mock
    device is attached to `hwpt` (0: to nothing); EINVAL when it is not."""

    op = "mock_pasid_check"
    hwpt: ObjectId | HwptRef


# --- Memory and DMA mappings --------------------------------------------------


class AllocBuffer(Op):
    """Allocate a buffer of `size` bytes for DMA (`backing`: private anonymous, shared
    anonymous, hugetlb or memfd pages; `file-private`: the first `size` bytes of the file
    at `path`, opened read-only, mapped read/write and private, its pages not faulted
    in), at an address that is a multiple of `align`; `populate: false`: no page is
    allocated before it is touched or pinned."""

    op = "alloc_buffer"
    produces = "buffer"
    area = "memory"
    size: Size = Field(gt=0)
    # shared: MAP_SHARED | MAP_ANONYMOUS (shmem pages), the iommufd selftests' buffers
    backing: Literal["anonymous", "shared", "hugetlb-2M", "hugetlb-1G", "memfd",
                     "file-private"] = "anonymous"
    # the buffer's address is a multiple of `align` (a power of two; anonymous memory),
    # as the iommufd selftests' buffer is aligned to the THP size
    align: Size | None = None
    path: Annotated[str, Field(min_length=1)] | None = None  # file-private: the file
    populate: bool = True

    @model_validator(mode="after")
    def _path(self) -> AllocBuffer:
        if (self.path is not None) != (self.backing == "file-private"):
            raise ValueError("`path` names the file of a `backing: file-private` buffer, "
                             "and only of one")
        return self

    @model_validator(mode="after")
    def _align(self) -> AllocBuffer:
        if self.align is not None:
            if self.align < 4096 or self.align & (self.align - 1):
                raise ValueError(f"`align`: {self.align:#x} is not a power of two of at "
                                 "least 4 KiB")
            if self.backing not in ("anonymous", "shared"):
                raise ValueError("`align` places anonymous memory; a hugetlb buffer is "
                                 "aligned to its page size, a memfd's pages are the file's")
        return self


class _BufferPattern(Op):
    """A pattern over a range of a buffer (default: the rest of it from `offset`)."""

    area = "memory"
    buffer: BufferRef
    offset: Size = 0
    size: Size | None = None
    pattern: Pattern
    seed: Int = 0


class Fill(_BufferPattern):
    """Write a pattern over a range of a buffer (default: from `offset` to its end)."""

    op = "fill"


class MapDma(Op):
    """Map a buffer, a BAR mapping (`mmio`) or a DMABUF into an IOMMU or IOAS at `iova`
    (default: a free IOVA; `last`: the highest that fits; `auto`: the kernel picks, an
    iommufd IOAS and a buffer) or where an earlier mapping was (`iova_of`)."""

    op = "map_dma"
    produces = "mapping"
    area = "memory"
    iommu: IommuRef | None = None
    ioas: IoasRef | None = None
    buffer: BufferRef | None = None
    mmio: MmioRef | None = None
    dmabuf: AnyDmabufRef | None = None
    # last: the highest page that fits `size`; auto: the kernel picks (an iommufd IOAS)
    iova: Int | Literal["last", "auto"] | None = None
    # the IOVA of an earlier mapping (unmapped since): map there again
    iova_of: MappingRef | None = None
    offset: Size = 0
    size: Size | None = None
    read: bool = True
    write: bool = True
    # vaddr: VFIO_DMA_MAP_FLAG_VADDR, the invalidated mapping at `iova` gets this
    # buffer's address (type1 live update); no new mapping is made
    flags: list[Literal["vaddr"]] = []
    # file: an iommufd maps the memfd buffer's file (IOMMU_IOAS_MAP_FILE), not its pages
    # at the process address (IOMMU_IOAS_MAP): what IOMMU_IOAS_CHANGE_PROCESS can move
    file: bool = False
    # a raw process address instead of a buffer (nothing need be mapped there: an IOAS
    # without a domain pins nothing at map time); `iova: auto` and `size` go with it
    address: Int | None = None
    # checks of the IOVA the kernel chose (`iova: auto`): a multiple of `iova_align`;
    # the mapping wholly inside `iova_within` ([start, last]); none of it in
    # `iova_outside` ([start, start + size))
    iova_align: Size | None = None
    iova_within: IovaSpan | None = None
    iova_outside: IovaRange | None = None

    @model_validator(mode="after")
    def _one_target(self) -> MapDma:
        _exactly_one(self, ("iommu", "ioas"))
        _exactly_one(self, ("buffer", "mmio", "dmabuf", "address"))
        if self.address is not None and (self.iova != "auto" or self.size is None
                                         or self.ioas is None):
            raise ValueError("`address` maps `size` bytes of a raw process address into "
                             "an `ioas` at `iova: auto`")
        checks = [n for n in ("iova_align", "iova_within", "iova_outside")
                  if getattr(self, n) is not None]
        if checks and self.iova != "auto":
            raise ValueError(f"`{checks[0]}` checks the IOVA the kernel chose: it goes with "
                             "`iova: auto`")
        if self.iova_align is not None and (self.iova_align == 0
                                            or self.iova_align & (self.iova_align - 1)):
            raise ValueError(f"`iova_align`: {self.iova_align:#x} is not a power of two")
        _exactly_one(self, ("iova", "iova_of"), required=False)
        if self.flags and (self.buffer is None or not isinstance(self.iova, int)):
            raise ValueError("`flags: [vaddr]` gives a mapping at a fixed `iova` the address "
                             "of a `buffer`")
        if self.file and self.buffer is None:
            raise ValueError("`file: true` maps a memfd `buffer`")
        return self

    @property
    def space(self) -> str:
        """The handle of the IOVA space it maps into: `ioas`, else `iommu`."""
        space = self.ioas if self.ioas is not None else self.iommu
        assert space is not None  # the validator requires one of them
        return space

    @property
    def target(self) -> str:
        """The handle it maps: its `buffer`, `mmio` or `dmabuf`."""
        target = self.buffer or self.mmio or self.dmabuf
        assert target is not None  # the validator requires one of them
        return target


class UnmapDma(Op):
    """Unmap a `mapping`, or `iova`+`size`, or everything (`all`) of an IOMMU or IOAS;
    `unmapped_size` checks the bytes the kernel reports."""

    op = "unmap_dma"
    area = "memory"
    mapping: MappingRef | None = None
    iommu: IommuRef | None = None
    ioas: IoasRef | None = None
    iova: Int | None = None
    size: Size | None = None
    all: bool = False
    unmapped_size: Size | None = None
    # vaddr: VFIO_DMA_UNMAP_FLAG_VADDR, invalidate the process address of the mappings and
    # keep their IOVAs and pages (type1 live update)
    flags: list[Literal["vaddr"]] = []

    @model_validator(mode="after")
    def _one_form(self) -> UnmapDma:
        if self.mapping is not None:
            extra = [n for n in ("iommu", "ioas", "iova", "size") if getattr(self, n) is not None]
            if extra or self.all:
                raise ValueError(
                    "with `mapping`, give none of `iommu`, `ioas`, `iova`, `size`, `all`"
                )
            return self
        _exactly_one(self, ("iommu", "ioas"))
        if self.all:
            if self.iova is not None or self.size is not None:
                raise ValueError("`all: true` unmaps everything: drop `iova` and `size`")
        elif self.iova is None or self.size is None:
            raise ValueError("give `mapping`, or `iova` and `size`, or `all: true`")
        return self

    @property
    def space(self) -> str | None:
        """The handle of the IOVA space it unmaps from (`ioas`, else `iommu`); None when
        it names a `mapping`, which knows its space."""
        return self.ioas if self.ioas is not None else self.iommu


class BufferSlice(Strict):
    buffer: BufferRef
    offset: Size = 0


class AssertEqual(Op):
    """Check that two buffer ranges hold the same `size` bytes."""

    op = "assert_equal"
    area = "memory"
    a: BufferSlice
    b: BufferSlice
    size: Size


class AssertPattern(_BufferPattern):
    """Check that a range of a buffer holds a pattern (as `fill` writes it)."""

    op = "assert_pattern"


class AssertSuperpages(Op):
    """Check in the IOMMU page tables (debugfs) that a mapping is mapped with pages of
    at least `pgsize` (`exact`: of `pgsize`)."""

    op = "assert_superpages"
    area = "memory"
    mapping: MappingRef
    pgsize: Size
    exact: bool = False  # also no page larger than pgsize


class AssertUnmapped(Op):
    """Check in the IOMMU page tables (debugfs) that nothing of a mapping is still
    mapped."""

    op = "assert_unmapped"
    area = "memory"
    mapping: MappingRef


class UnmapBuffer(Op):
    """Remove [offset, offset + size) of a buffer from the process (munmap): its pages
    are gone, so a later map of that range faults (EFAULT) as the selftests' basic test
    makes it."""

    op = "unmap_buffer"
    area = "memory"
    buffer: BufferRef
    offset: Size = 0
    size: Size = Field(gt=0)


class TruncateBuffer(Op):
    """Set the length of a memfd buffer's file (ftruncate): pages past it leave the file,
    so a map of them (IOMMU_IOAS_MAP_FILE) is refused."""

    op = "truncate_buffer"
    area = "memory"
    buffer: BufferRef
    size: Size


class MockCheckMap(Op):
    """IOMMU_TEST_OP_MD_CHECK_MAP: the mock device's domain maps [iova, iova + size) to
    the pages of the process at the buffer's `offset` (default: the `mapping`'s IOVA,
    size and process address; a file mapping names its memfd `buffer`)."""

    op = "mock_check_map"
    area = "iommufd"
    iommu: IommuRef
    mock: ObjectId | MockRef
    mapping: MappingRef | None = None
    iova: Int | None = None
    size: Size | None = None
    buffer: BufferRef | None = None
    offset: Size = 0

    @model_validator(mode="after")
    def _what(self) -> MockCheckMap:
        if self.mapping is None and (self.iova is None or self.size is None
                                     or self.buffer is None):
            raise ValueError("give a `mapping`, or `iova`, `size` and `buffer`")
        return self


# --- Device ---------------------------------------------------------------------


class OpenDevice(Op):
    """Open a VFIO device (default: the case's device) on an IOMMU or IOAS: group and
    container, or in iommufd mode its cdev bound and attached; `pf`+`vf` names a VF."""

    op = "open_device"
    produces = "device"
    area = "device"
    opens_iommu = True
    iommu: IommuRef | None = None
    ioas: IoasRef | None = None
    bdf: Bdf | None = None
    vf_token: Uuid | None = None
    # VF number `vf` of the PF handle `pf` (its BDF is known only once enable_sriov ran)
    pf: DeviceRef | None = None
    vf: U16 | None = None

    @model_validator(mode="after")
    def _one_iommu(self) -> OpenDevice:
        _exactly_one(self, ("iommu", "ioas"))
        if (self.pf is None) != (self.vf is None):
            raise ValueError("`pf` and `vf` go together: VF number `vf` of the PF handle `pf`")
        if self.pf is not None and self.bdf is not None:
            raise ValueError("give either `bdf` or `pf` with `vf`, not both")
        return self


class DeviceInfo(Op):
    """Check VFIO_DEVICE_GET_INFO of a device or an unbound cdev: flags, region and IRQ
    counts."""

    op = "device_info"
    area = "device"
    device: DeviceOrCdevRef
    flags_include: list[Literal["reset", "pci", "platform", "amba", "ccw", "ap", "fsl_mc", "cdx"]] = []
    num_regions: U32 | None = None
    num_irqs: U32 | None = None


class RegionInfo(Op):
    """Check VFIO_DEVICE_GET_REGION_INFO of a region: size, flags, capabilities."""

    op = "region_info"
    area = "device"
    device: DeviceRef
    region: RegionName
    size: Size | None = None
    flags_include: list[Literal["read", "write", "mmap"]] = []
    caps_include: list[Literal["sparse_mmap", "msix_mappable"]] = []


class _FitsWidth(Strict):
    """Values of an access of `width` bytes: each of them must fit in that many bytes."""

    width: Width = 4

    @model_validator(mode="after")
    def _values_fit_width(self) -> _FitsWidth:
        width: int = self.width
        for name in ("value", "equals", "mask"):
            v = getattr(self, name, None)
            if v is not None and not 0 <= v < 1 << (8 * width):
                raise ValueError(f"`{name}` {v:#x} does not fit in a {width}-byte access "
                                 f"(0 to {(1 << (8 * width)) - 1:#x})")
        return self


class _ValueCheck(_FitsWidth):
    equals: Int | None = None
    mask: Int | None = None

    @model_validator(mode="after")
    def _mask_with_equals(self) -> _ValueCheck:
        if self.mask is not None and self.equals is None:
            raise ValueError("`mask` needs `equals` to compare with")
        return self


class ConfigRead(Op, _ValueCheck):
    """Read PCI config space through the VFIO config region; `equals`/`mask` check the
    value."""

    op = "config_read"
    area = "device"
    device: DeviceRef
    offset: Int = Field(ge=0, lt=4096)
    width: ConfigWidth = 4


class ConfigWrite(Op, _FitsWidth):
    """Write PCI config space through the VFIO config region."""

    op = "config_write"
    area = "device"
    device: DeviceRef
    offset: Int = Field(ge=0, lt=4096)
    width: ConfigWidth = 4
    value: Int


class BarRead(Op, _ValueCheck):
    """Read a BAR register, through an mmap of the BAR or the region's read();
    `equals`/`mask` check the value."""

    op = "bar_read"
    area = "device"
    device: DeviceRef
    bar: Annotated[int, Field(ge=0, le=5)] = 0
    offset: Int = Field(ge=0)
    width: Width = 4
    via: Literal["mmap", "region"] = "mmap"


class BarWrite(Op, _FitsWidth):
    """Write a BAR register, through an mmap of the BAR or the region's write()."""

    op = "bar_write"
    area = "device"
    device: DeviceRef
    bar: Annotated[int, Field(ge=0, le=5)] = 0
    offset: Int = Field(ge=0)
    width: Width = 4
    value: Int
    via: Literal["mmap", "region"] = "mmap"


class BarMmap(Op):
    """Map a BAR (or part of it) into this process (`misaligned`: 4 KiB past a 1 GiB
    boundary)."""

    op = "bar_mmap"
    produces = "mmio"
    area = "device"
    device: DeviceRef
    bar: Annotated[int, Field(ge=0, le=5)] = 0
    offset: Size = 0
    size: Size | None = None
    misaligned: bool = False  # placed 4 KiB past a 1 GiB boundary


class Access(Op, _ValueCheck):
    """Read (checked with `equals`/`mask`) or write a register of a BAR or DMABUF
    mapping."""

    op = "access"
    area = "device"
    mmio: MmioRef
    offset: Int = Field(ge=0)
    width: Width = 4
    op_: Literal["read", "write"] = Field("read", alias="op")
    value: Int | None = None

    @model_validator(mode="after")
    def _value_for_write(self) -> Access:
        if self.op_ == "write" and self.value is None:
            raise ValueError("`op: write` needs a `value`")
        if self.op_ == "write" and (self.equals is not None or self.mask is not None):
            raise ValueError("`equals`/`mask` check a read; a write has nothing to compare")
        return self


class Reset(Op):
    """Reset the device (VFIO_DEVICE_RESET)."""

    op = "reset"
    area = "device"
    device: DeviceRef


class IrqEnable(Op):
    """Enable `count` INTx, MSI or MSI-X vectors from `start`, each signalling an
    eventfd (VFIO_DEVICE_SET_IRQS)."""

    op = "irq_enable"
    produces = "irq"
    area = "device"
    device: DeviceRef
    type: Literal["intx", "msi", "msix"]
    count: U32 = Field(1, ge=1, le=2048)
    start: U32 = 0


class _IrqVector(Op):
    area = "device"
    irq: IrqRef
    vector: U32 = 0


class IrqTrigger(_IrqVector):
    """Trigger a vector from user space (VFIO_IRQ_SET_DATA_NONE | ACTION_TRIGGER)."""

    op = "irq_trigger"


class IrqMask(_IrqVector):
    """Mask a vector (VFIO_IRQ_SET_DATA_NONE | ACTION_MASK)."""

    op = "irq_mask"


class IrqUnmask(_IrqVector):
    """Unmask a vector (VFIO_IRQ_SET_DATA_NONE | ACTION_UNMASK)."""

    op = "irq_unmask"


class IrqDisable(Op):
    """Disable the enabled vectors."""

    op = "irq_disable"
    area = "device"
    irq: IrqRef


class ExpectIrq(_IrqVector):
    """Wait up to `within` seconds for `count` interrupts on a vector's eventfd."""

    op = "expect_irq"
    count: Int = Field(1, ge=1)
    within: Duration = 1.0


class ExpectNoIrq(_IrqVector):
    """Check that no interrupt arrives on a vector's eventfd within `within` seconds."""

    op = "expect_no_irq"
    within: Duration = 0.1


class EnableSriov(Op):
    """Create `num_vfs` VFs of a PF through sysfs (the open PF `device`, or one nobody
    opened: `bdf`); skipped without SR-IOV or vfio-pci's enable_sriov."""

    op = "enable_sriov"
    area = "device"
    # the open PF; or, with `bdf` (default: the case's device), a PF nobody opened yet
    # (the kernel selftest creates its VF before it opens the PF)
    device: DeviceRef | None = None
    bdf: Bdf | None = None
    num_vfs: U16
    vf_token: Uuid | None = None

    @model_validator(mode="after")
    def _token_needs_device(self) -> EnableSriov:
        _exactly_one(self, ("device", "bdf"), required=False)
        if self.vf_token is not None and self.device is None:
            raise ValueError("`vf_token` is set through the open PF: give `device`, "
                             "or set it with `set_vf_token` once the PF is open")
        return self


class SetVfToken(Op):
    """VFIO_DEVICE_FEATURE SET PCI_VF_TOKEN on an open PF (replaces the token)."""

    op = "set_vf_token"
    area = "device"
    device: DeviceRef
    vf_token: Uuid


class CloseDevice(Op):
    """Close an open device before the case ends (in a container mode, its group too)."""

    op = "close_device"
    area = "device"
    device: DeviceRef


# --- Driver ---------------------------------------------------------------------


class DriverInit(Op):
    """Initialise the device's scenario driver (its DMA region mapped once per case;
    `irq`: its interrupt)."""

    op = "driver_init"
    area = "driver"
    device: DeviceRef
    irq: Literal["msi", "msix", "none"] | None = None


class DriverRemove(Op):
    """Remove the device's scenario driver."""

    op = "driver_remove"
    area = "driver"
    device: DeviceRef


class MemcpyStart(Op):
    """Start `count` copies of `size` bytes (`max`: the driver's largest) from IOVA
    `src` to `dst` by the device's DMA."""

    op = "memcpy_start"
    area = "driver"
    device: DeviceRef
    src: Int = Field(ge=0)
    dst: Int = Field(ge=0)
    size: MaxOr | Size
    count: Int = Field(1, ge=1)


class MemcpyWait(Op):
    """Wait for the started copies to complete."""

    op = "memcpy_wait"
    area = "driver"
    device: DeviceRef


class SendMsi(Op):
    """Have the device raise its MSI and check that it arrives on the driver's vector."""

    op = "send_msi"
    area = "driver"
    raises_msi = True
    device: DeviceRef


class ExpectNoMsi(Op):
    """Check that no MSI arrives on the driver's vector within `within` seconds (nothing
    to check for a driver with NO_SEND_MSI)."""

    op = "expect_no_msi"
    area = "driver"
    device: DeviceRef
    within: Duration = 0.0


class MemcpyStorm(Op):
    """Start and wait for copies again and again, for `duration` seconds or `iterations`
    times."""

    op = "memcpy_storm"
    area = "driver"
    device: DeviceRef
    src: Int = Field(ge=0)
    dst: Int = Field(ge=0)
    size: MaxOr | Size
    count: MaxOr | Annotated[int, BeforeValidator(parse_int), _c_type("u64"), Field(ge=1)] = 1
    duration: Duration | None = None
    iterations: Int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounded(self) -> MemcpyStorm:
        if self.duration is None and self.iterations is None:
            raise ValueError("give `duration`, `iterations` or both: the storm must end")
        return self


class MemcpyStream(Op):
    """`count` copies one after the other: copy k moves `size` bytes from src + k * stride
    to dst + k * stride, starting at k = `first`; with `leave_pending` the last is started
    and not waited for (a copy in flight, e.g. across a handover)."""

    op = "memcpy_stream"
    area = "driver"
    device: DeviceRef
    src: Int = Field(ge=0)
    dst: Int = Field(ge=0)
    size: Size = Field(gt=0)
    stride: Size | None = None  # default: size
    count: Int = Field(ge=1)
    first: Int = 0
    leave_pending: bool = False


# --- Live update, dirty tracking, low power (docs/language.md) --------------------


class Handover(Op):
    """Hand the case's handles to a freshly exec'd engine process, which runs the rest."""

    op = "handover"
    area = "liveupdate"
    to: Literal["successor"] = "successor"
    predecessor: Literal["exits", "stays"] = "exits"


class UpdateVaddr(Op):
    """VFIO_DMA_MAP_FLAG_VADDR for every live mapping of the case in `iommu` whose memory
    moved in a handover (a memfd buffer mapped again): each gets its new address."""

    op = "update_vaddr"
    area = "liveupdate"
    iommu: IommuRef


class ChangeProcess(Op):
    """IOMMU_IOAS_CHANGE_PROCESS on a native iommufd: charge its pinned pages to this
    process (skipped in the other modes)."""

    op = "change_process"
    area = "liveupdate"
    iommu: IommuRef
    reserved: U32 = 0  # __reserved, which must be 0


class AssertLockedVm(Op):
    """This process's locked memory (VmLck in /proc/self/status), which type1 charges and
    IOMMU_IOAS_CHANGE_PROCESS and VFIO_DMA_MAP_FLAG_VADDR move: VmLck + VmPin within
    `at_least`/`at_most`, or each exactly (`locked`: VmLck, `pinned`: VmPin); `of:
    parent` reads the process that forked this one (a step with `process:`)."""

    op = "assert_locked_vm"
    area = "liveupdate"
    at_least: Size | None = None
    at_most: Size | None = None
    locked: Size | None = None  # VmLck exactly
    pinned: Size | None = None  # VmPin exactly
    of: Literal["self", "parent"] = "self"


class DirtyPages(Op):
    """Start or stop dirty page tracking of a type1 container (VFIO_IOMMU_DIRTY_PAGES)."""

    op = "dirty_pages"
    area = "liveupdate"
    iommu: IommuRef
    action: Literal["start", "stop"]


class DirtyBitmap(Op):
    """GET_BITMAP of [iova, iova + size) in pages of `pgsize`; `dirty` is what the bitmap
    must hold exactly: all pages, none, or the listed page indexes."""

    op = "dirty_bitmap"
    area = "liveupdate"
    iommu: IommuRef
    iova: Int
    size: Size
    pgsize: Size = 4096
    bitmap_size: Size | None = None  # bytes; default the u64-rounded size the range needs
    dirty: Literal["all", "none"] | list[Annotated[int, Field(ge=0)]] | None = None


class LowPower(Op):
    """Put the device in or out of low power (VFIO_DEVICE_FEATURE LOW_POWER_ENTRY,
    _ENTRY_WITH_WAKEUP with an eventfd, _EXIT)."""

    op = "low_power"
    area = "liveupdate"
    device: DeviceRef
    action: Literal["entry", "entry_with_wakeup", "exit"]
    wakeup_fd: S32 | None = None  # a raw fd instead of the step's own eventfd (e.g. -1)


class ExpectWakeup(Op):
    """The wakeup eventfd of the device's last entry_with_wakeup was signalled within
    `within` (or, with `signalled: false`, was not)."""

    op = "expect_wakeup"
    area = "liveupdate"
    device: DeviceRef
    within: Duration = 1.0
    signalled: bool = True


# --- Processes --------------------------------------------------------------------


class Fork(Op):
    """Fork the case's process: a child with a copy of its memory (MAP_SHARED memory
    shared) and of its open files and handles; steps with `process: <this handle>` run
    in the child, one at a time, while the case waits for each."""

    op = "fork"
    produces = "process"
    area = "process"


class Join(Op):
    """End a forked child (it exits, as the C tests' `exit(0)`: its address space goes)
    and wait for it; fails unless it exited with status 0."""

    op = "join"
    area = "process"
    process: ProcessRef


class DropCapability(Op):
    """Clear a capability from this process's effective set (as the iommufd selftests'
    drop_cap_ipc_lock()): it lasts until the case's process ends."""

    op = "drop_capability"
    area = "process"
    capability: CapabilityName


class FailNth(Op):
    """Arm fail-nth for the case's task (/proc/self/task/TID/fail-nth, as the kernel's
    iommufd_fail_nth selftest): the case runs again and again with n = 0 (nothing armed),
    1, 2, …, and the nth fault-injection site the task passes after this step fails.
    A body step after it that then fails with an errno ends that run (the rest of the
    body is skipped; the teardown runs and must pass); the sweep ends with the first n
    that injects nothing, whose run must pass whole. At most `max` runs."""

    op = "fail_nth"
    area = "process"
    max: Int = Field(1000, ge=1, le=100_000)


# --- DMABUF ---------------------------------------------------------------------


class DmabufRange(Strict):
    offset: Size = 0
    size: Size = Field(gt=0)


class ExportDmabuf(Op):
    """Export a DMABUF of a region (default: BAR 0) or of `ranges` of it
    (VFIO_DEVICE_FEATURE_DMA_BUF)."""

    op = "export_dmabuf"
    produces = "dmabuf"
    area = "dmabuf"
    device: DeviceRef
    region: RegionName = "bar0"
    ranges: list[DmabufRange] | None = None


class MmapDmabuf(Op):
    """Map a DMABUF into this process (`attrs`: its memory attribute, nc or wc)."""

    op = "mmap_dmabuf"
    produces = "mmio"
    area = "dmabuf"
    dmabuf: DmabufRef
    offset: Size = 0
    size: Size | None = None
    attrs: Literal["nc", "wc"] | None = None  # VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (proposed)


class RevokeDmabuf(Op):
    """Revoke a DMABUF: by its ioctl, by clearing the memory enable bit, or by a reset
    (`auto`: the ioctl where the kernel has it, else memory-disable)."""

    op = "revoke_dmabuf"
    area = "dmabuf"
    dmabuf: DmabufRef
    method: Literal["ioctl", "memory-disable", "reset", "auto"] = "auto"


class RestoreDmabuf(Op):
    """Set the memory enable bit again after a memory-disable revoke."""

    op = "restore_dmabuf"
    area = "dmabuf"
    dmabuf: DmabufRef


# --- Host -----------------------------------------------------------------------


class ExpectDmesg(Op):
    """Wait up to `within` seconds for a kernel log line since the case began that
    matches `pattern`."""

    op = "expect_dmesg"
    area = "host"
    pattern: Regex
    within: Duration = 2.0


class ExpectNoDmesg(Op):
    """Check that no kernel log line since the case began matches `pattern`."""

    op = "expect_no_dmesg"
    area = "host"
    pattern: Regex


class ExpectIommuFault(Op):
    """Wait up to `within` seconds for an IOMMU fault of the device (at `address`, of
    `access`)."""

    op = "expect_iommu_fault"
    area = "host"
    device: DeviceRef
    address: Int | None = Field(None, ge=0)  # compared by 4 KiB page, as VT-d records it
    access: Literal["read", "write"] | None = None
    within: Duration = 2.0


class ExpectNoIommuFault(Op):
    """Check that no IOMMU fault of the device (at `address`, of `access`) is recorded
    since the case began, waiting `within` seconds."""

    op = "expect_no_iommu_fault"
    area = "host"
    device: DeviceRef
    address: Int | None = Field(None, ge=0)
    access: Literal["read", "write"] | None = None
    within: Duration = 0.0


class AssertNotTainted(Op):
    """Check that the kernel's taint mask gained no bit since the case began."""

    op = "assert_not_tainted"
    area = "host"


class ProvokeCrash(Op):
    """Write a crash type to LKDTM's /sys/kernel/debug/provoke-crash/DIRECT (the kernel's
    own fault injector, drivers/misc/lkdtm): to prove the kernel watch sees what it reports."""

    op = "provoke_crash"
    area = "host"
    type: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$")]  # the kernel knows which exist
    wait: bool = True


class Sleep(Op):
    """Wait `duration`."""

    op = "sleep"
    area = "host"
    duration: Duration


@cache
def handle_fields(op_cls: type[BaseModel]) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """(argument path, accepted kinds) of every handle-valued argument, nested included."""
    out: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for name, info in op_cls.model_fields.items():
        for meta in _metadata(info.annotation, info.metadata):
            if isinstance(meta, HandleRef):
                out.append(((name,), meta.kinds))
        nested = _nested_model(info.annotation)
        if nested is not None:
            out.extend(((name, *p), k) for p, k in handle_fields(nested))
    return tuple(out)


def _metadata(annotation: Any, extra: list[Any]) -> list[Any]:
    found = list(extra)
    stack = [annotation]
    while stack:
        a = stack.pop()
        found.extend(getattr(a, "__metadata__", ()))
        stack.extend(getattr(a, "__args__", ()))
    return found


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, Strict) and not issubclass(a, Op):
            return a
        stack.extend(getattr(a, "__args__", ()))
    return None


# --- Steps and scenarios ----------------------------------------------------------


def _expect(value: Any) -> tuple[str, ...]:
    if value is None or value == "ok":
        return ("ok",)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("`expect` is `ok`, an errno name, a list of errno names, SIGBUS or SIGSEGV")
    for n in names:
        if n not in ERRNO_NAMES and n not in SIGNALS and n != "ok":
            import difflib

            close = difflib.get_close_matches(n, sorted(ERRNO_NAMES | set(SIGNALS)), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{n!r} is not an errno name or SIGBUS/SIGSEGV{hint}")
    return tuple(canonical_errno_name(n) for n in names)


Expect = Annotated[tuple[str, ...], BeforeValidator(_expect)]


MAX_REPEAT = 10_000_000  # repetitions of one step (docs/language.md)


class StepCommon(Strict):
    """Keys every step may carry besides its one operation key."""

    name: str | None = None
    as_: Annotated[str, AfterValidator(_handle_name)] | None = Field(None, alias="as")
    expect: Expect = ("ok",)
    timeout: Duration | None = None
    repeat: Int = Field(1, ge=1, le=MAX_REPEAT)
    # false: the step is left out of the case (a template decides, per case and per
    # iteration of a `for`)
    when: bool = True
    # the forked child (a `fork` handle) that runs the step instead of the case's process
    process: Annotated[str, AfterValidator(_handle_name)] | None = None


COMMON_KEYS = tuple(f.alias or n for n, f in StepCommon.model_fields.items())
MAX_ITERATIONS = 100_000  # iterations of all the `for` loops of one case (docs/language.md)
LOOP_KEYS = ("for", "steps", "name", "when")  # the keys of a `for` step


class ForLoop(Strict):
    """`for:` of a loop step: `var` takes the values from `from` up to `to` (included)
    or `below` (excluded) in steps of `step`, as a C `for` loop counts."""

    var: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    from_: Size = Field(alias="from")
    to: Size | None = None
    below: Size | None = None
    step: Size = Field(1, ge=1)

    @model_validator(mode="after")
    def _end(self) -> ForLoop:
        _exactly_one(self, ("to", "below"))
        return self

    @property
    def values(self) -> range:
        stop = self.below if self.below is not None else (self.to or 0) + 1
        return range(self.from_, stop, self.step)


class Requires(Strict):
    driver: str | None = None
    iommu_modes: list[IommuMode] | None = None
    features: list[Feature] = []
    kconfig: list[Annotated[str, Field(pattern=r"^CONFIG_[A-Z0-9_]+$")]] = []
    vfio_driver: str | None = None
    devices: U32 = 1


class KnownIssue(Strict):
    """One entry of a known-issues list (`--known-issues FILE`, vfio_scenario.known_issues):
    the cases it covers, why they fail, and the kernels it applies to."""

    case: Annotated[str, Field(min_length=1)]  # id pattern: `*` any text, `?` one character
    reason: Annotated[str, Field(min_length=1)]
    url: str | None = None
    kernels: list[Annotated[str, Field(min_length=1)]] = []  # uname -r patterns; [] = any


class ScenarioKnownIssue(KnownIssue):
    """A scenario's own `known_issues:` entry; `case` is matched against the part of its
    cases' ids after `::` (`map-unmap[iommu_mode=*]`) and defaults to all of them."""

    case: Annotated[str, Field(min_length=1)] = "*"


def _splat_kind(name: str) -> str:
    if name not in SPLAT_KINDS:
        import difflib

        close = difflib.get_close_matches(name, SPLAT_KINDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"{name!r} is not a kind of kernel splat{hint}; the kernel watch "
                         f"knows {', '.join(SPLAT_KINDS)}")
    return name


class KernelWatchKey(Strict):
    """`kernel_watch:` of a scenario: the splats its cases provoke on purpose."""

    allow: list[Annotated[str, AfterValidator(_splat_kind),
                          Field(json_schema_extra={"enum": list(SPLAT_KINDS)})]] = []


class ScenarioHeader(Strict):
    """A scenario with its steps still raw: they are checked one by one per case."""

    name: str | None = None
    description: str = ""
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")]] = []
    requires: Requires = Requires()
    matrix: dict[str, list[Any]] = {}
    vars: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Any] = {}
    timeout: Duration = 30.0
    kernel_watch: KernelWatchKey = KernelWatchKey()
    steps: list[Any] = Field(min_length=1)
    teardown: list[Any] = []
    known_issues: list[ScenarioKnownIssue] = []


SCENARIO_KEYS = tuple(ScenarioHeader.model_fields)


# Operations defined in modules of their own register as they are imported: here, after
# everything they build on.
from vfio_scenario.language.models_viommu import *
