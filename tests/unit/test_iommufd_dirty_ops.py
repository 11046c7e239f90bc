"""The dirty-tracking operations' logic without a kernel: the bit patterns they expect,
the bitmap buffer they hand the kernel, the check of what the kernel wrote (fed here by
a fake in place of the ioctl; tests/guest/test_uapi_iommufd_dirty.py meets the real
kernel), and the models' refusals."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import DirtyBits, GetDirtyBitmap, MockSetDirty
from vfio_scenario.run.interpreter import CheckFailed
from vfio_scenario.run.ops import iommufd_dirty as ops
from vfio_scenario.uapi import iommufd_dirty as dirty
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi._vfio import ffi
from vfio_scenario.uapi.iommufd import Iommufd


@pytest.mark.parametrize(("nbits", "every", "first", "value"), [
    (4, 2, 1, 0b0101),
    (8, 2, 1, 0x55),
    (5, 4, 3, 0b10111),
    (3, 1, 1, 0b111),
    (4, 8, 1, 0b0001),  # fewer bits than one period: the C test's `nbits / pteset ?: 1`
    (2048, 1024, 512, ((1 << 512) - 1) | (((1 << 512) - 1) << 1024)),
])
def test_expected_bits_sets_the_first_of_every(nbits: int, every: int, first: int,
                                                value: int) -> None:
    assert dirty.expected_bits(nbits, every, first) == value


@pytest.mark.parametrize("offset", [0, 2048, 0xFF1])
def test_the_bitmap_sits_at_its_offset_of_a_page_with_room_past_it(offset: int) -> None:
    bitmap = dirty.Bitmap(160, offset)
    assert bitmap.addr % 4096 == offset
    assert bitmap.size >= offset + 20 + 4096 and bitmap.size % 4096 == 0
    assert bitmap.bits() == 0 and bitmap.written_outside() == []
    assert bitmap.set_every(2) == 80
    assert bitmap.bits() == dirty.expected_bits(160, 2, 1)
    assert bitmap.written_outside() == []
    bitmap.clear()
    assert bitmap.bits() == 0


@pytest.mark.parametrize(("nbits", "every", "offset"), [(13, 3, 0xFF1), (1, 1, 0), (65, 64, 2048),
                                                     (4096, 7, 1)])
def test_set_every_sets_exactly_bits_0_every_2every(nbits: int, every: int, offset: int) -> None:
    bitmap = dirty.Bitmap(nbits, offset)
    ffi.cast("uint8_t *", bitmap.addr)[-1 if offset else 0] = 0xFF  # zeroed again by it
    assert bitmap.set_every(every) == len(range(0, nbits, every))
    raw = bytes(ffi.buffer(ffi.cast("uint8_t *", bitmap.addr - offset), bitmap.size))
    want = bytearray(bitmap.size)
    for i in range(0, nbits, every):
        want[offset + i // 8] |= 1 << (i % 8)
    assert raw == bytes(want)


def test_a_byte_before_the_bitmap_is_seen() -> None:
    bitmap = dirty.Bitmap(4, 0xFF1)
    ffi.cast("uint8_t *", bitmap.addr)[-0xFF1] = 1  # the buffer's first byte
    ffi.cast("uint8_t *", bitmap.addr)[-1] = 2
    assert bitmap.written_outside() == [0, 0xFF0]


def test_a_byte_past_the_bitmap_is_seen() -> None:
    bitmap = dirty.Bitmap(4, 0xFF1)
    ffi.cast("uint8_t *", bitmap.addr)[1] = 0x80  # the byte after the one 4 bits need
    assert bitmap.bits() == 0
    assert bitmap.written_outside() == [0xFF2]


class _Runtime:
    """Just the handles the operations look up."""

    def __init__(self) -> None:
        iommufd = Iommufd.__new__(Iommufd)
        iommufd.fd = -1
        self.handles: dict[str, Any] = {"iommu": iommufd, "hwpt": mock.Hwpt(7)}

    def handle(self, name: str) -> Any:
        return self.handles[name]


def _kernel_writes(monkeypatch: pytest.MonkeyPatch, bits: int, outside: int | None = None,
                   marked: int = 0) -> list[tuple[Any, ...]]:
    """Replace the two ioctls with a fake kernel: GET writes `bits` (and a byte at
    `outside` of the buffer), the mock command reports `marked` pages."""
    calls: list[tuple[Any, ...]] = []

    def get(fd: int, hwpt_id: int, iova: int, length: int, page_size: int,
            bitmap: dirty.Bitmap, no_clear: bool = False) -> None:
        calls.append(("get", hwpt_id, iova, length, page_size, bitmap.offset, no_clear))
        raw = bits.to_bytes(bitmap.nbytes, "little")
        ffi.memmove(ffi.cast("uint8_t *", bitmap.addr), raw, len(raw))
        if outside is not None:
            ffi.cast("uint8_t *", bitmap.addr - bitmap.offset)[outside] = 1

    def set_dirty(fd: int, hwpt_id: int, iova: int, length: int, page_size: int,
                  bitmap: dirty.Bitmap) -> int:
        calls.append(("set", hwpt_id, bitmap.bits()))
        return marked

    monkeypatch.setattr(dirty, "get_dirty_bitmap", get)
    monkeypatch.setattr(dirty, "mock_set_dirty", set_dirty)
    return calls


def _get(**kw: Any) -> GetDirtyBitmap:
    args = {"iommu": "iommu", "hwpt": "hwpt", "iova": 0x1000000, "length": 16 * 2048,
            "page_size": 2048, **kw}
    return GetDirtyBitmap.model_validate(args)


def test_get_dirty_bitmap_passes_when_the_kernel_wrote_exactly_the_pattern(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _kernel_writes(monkeypatch, 0x5555)
    ops.get_dirty_bitmap(_Runtime(), _get(dirty={"every": 2}, flags=["no_clear"],  # type: ignore[arg-type]
                                          bitmap_offset=0xFF1), None)  # type: ignore[arg-type]
    assert calls == [("get", 7, 0x1000000, 16 * 2048, 2048, 0xFF1, True)]


@pytest.mark.parametrize(("bits", "dirty_arg", "message"), [
    (0x5554, {"every": 2}, "1 of 16 bits differ from the first 1 of every 2 pages dirty: bit 0 (clear)"),
    (0x0001, "none", "1 of 16 bits differ from no page dirty: bit 0 (set)"),
    (0x7FFF, "all", "bit 15 (clear)"),
])
def test_get_dirty_bitmap_fails_on_any_other_bit(monkeypatch: pytest.MonkeyPatch, bits: int,
                                                 dirty_arg: Any, message: str) -> None:
    _kernel_writes(monkeypatch, bits)
    with pytest.raises(CheckFailed, match=message.replace("(", r"\(").replace(")", r"\)")):
        ops.get_dirty_bitmap(_Runtime(), _get(dirty=dirty_arg), None)  # type: ignore[arg-type]


def test_get_dirty_bitmap_fails_on_a_byte_written_outside(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_writes(monkeypatch, 0, outside=4)
    with pytest.raises(CheckFailed, match="outside the bitmap's 2, the first at offset 0x4"):
        ops.get_dirty_bitmap(_Runtime(), _get(dirty="none"), None)  # type: ignore[arg-type]


def test_mock_set_dirty_hands_every_nth_bit_and_checks_the_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _kernel_writes(monkeypatch, 0, marked=4)
    args = MockSetDirty.model_validate({"iommu": "iommu", "hwpt": "hwpt", "iova": 0x1000000,
                                        "length": 16 * 2048, "page_size": 2048, "every": 4,
                                        "nr_dirty": 4})
    ops.mock_set_dirty(_Runtime(), args, None)  # type: ignore[arg-type]
    assert calls == [("set", 7, 0x1111)]
    wrong = args.model_copy(update={"nr_dirty": 5})
    with pytest.raises(CheckFailed, match="the mock marked 4 pages dirty, expected 5"):
        ops.mock_set_dirty(_Runtime(), wrong, None)  # type: ignore[arg-type]


def test_a_length_of_part_of_a_page_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_writes(monkeypatch, 0)
    with pytest.raises(CheckFailed, match="not a multiple of page_size"):
        ops.get_dirty_bitmap(_Runtime(), _get(length=3000, dirty="none"), None)  # type: ignore[arg-type]


def _errors(steps: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent("""\
        name: c
        steps:
          - open_iommu: {mode: iommufd, default_ioas: false}
            as: iommu
          - alloc_ioas: {iommu: iommu}
            as: ioas
          - mock_domain: {iommu: iommu, pt: ioas}
            as: mock
          - alloc_hwpt: {iommu: iommu, device: mock, pt: ioas, flags: [dirty_tracking]}
            as: hwpt
        """) + textwrap.indent(textwrap.dedent(steps), "  "), "c.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


def test_valid_dirty_steps_compile() -> None:
    assert _errors("""
        - set_dirty_tracking: {iommu: iommu, hwpt: hwpt, enable: true}
        - mock_set_dirty: {iommu: iommu, hwpt: hwpt, iova: 0x1000000, length: 8KiB, page_size: 2KiB, every: 2, nr_dirty: 2}
        - get_dirty_bitmap: {iommu: iommu, hwpt: hwpt, iova: 0x1000000, length: 8KiB, page_size: 2KiB, flags: [no_clear], dirty: {every: 2}}
        - alloc_hwpt: {iommu: iommu, device: mock, pt: ioas, selftest: {pagetable_type: huge}}
        - mock_pasid_attach: {iommu: iommu, mock: mock, pasid: 100, pt: hwpt}
        - mock_pasid_replace: {iommu: iommu, mock: mock, pasid: 100, pt: ioas}
        - mock_pasid_check: {iommu: iommu, mock: mock, pasid: 100, hwpt: hwpt}
        - mock_pasid_check: {iommu: iommu, mock: mock, pasid: 100, hwpt: 0}
        - mock_pasid_detach: {iommu: iommu, mock: mock, pasid: 100}
        """) == []


@pytest.mark.parametrize(("step", "where"), [
    ("- get_dirty_bitmap: {iommu: iommu, hwpt: hwpt, iova: 0, length: 4KiB, page_size: 2KiB}",
     "`dirty`"),
    ("- get_dirty_bitmap: {iommu: iommu, hwpt: hwpt, iova: 0, length: 4KiB, page_size: 2KiB, dirty: {every: 0}}",
     "every"),
    ("- get_dirty_bitmap: {iommu: iommu, hwpt: hwpt, iova: 0, length: 4KiB, page_size: 2KiB, dirty: some}",
     "dirty"),
    ("- get_dirty_bitmap: {iommu: iommu, hwpt: hwpt, iova: 0, length: 0, page_size: 2KiB, dirty: none}",
     "length"),
    ("- get_dirty_bitmap: {iommu: iommu, hwpt: ioas, iova: 0, length: 4KiB, page_size: 2KiB, dirty: none}",
     "ioas"),
    ("- mock_set_dirty: {iommu: iommu, hwpt: hwpt, iova: 0, length: 4KiB, page_size: 2KiB, flags: [no_clear]}",
     "flags"),
    ("- alloc_hwpt: {iommu: iommu, device: mock, pt: ioas, selftest: {pagetable_type: giant}}",
     "pagetable_type"),
    ("- set_dirty_tracking: {iommu: iommu, hwpt: hwpt}", "`enable`"),
])
def test_bad_dirty_steps_are_refused_at_their_line(step: str, where: str) -> None:
    errors = _errors(step)
    assert errors and all(e.startswith("c.yaml:11:") for e in errors), errors
    assert any(where in e for e in errors), errors


def test_dirty_bits_default_to_one_per_period() -> None:
    assert DirtyBits.model_validate({"every": 1024}).first == 1
