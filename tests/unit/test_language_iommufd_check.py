"""The arguments of the port's checks (alloc_buffer's `align`, map_dma's chosen-IOVA
checks and `address`, mock_check_map), refused where they make no sense, and what needs
no kernel: aligned buffers, munmap of a range, the IOVA checks' arithmetic. The kernel's
answers are tested in the testbed: tests/guest/test_uapi_iommufd_check.py."""

from __future__ import annotations

import textwrap

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import MapDma
from vfio_scenario.run.interpreter import CheckFailed
from vfio_scenario.run.ops.iommufd_check import check_chosen_iova
from vfio_scenario.uapi.buffers import DmaBuffer, unmap_range
from vfio_scenario.uapi.iommu import Mapping

HEAD = """
    name: c
    requires: {devices: 0}
    steps:
      - open_iommu: {mode: iommufd, default_ioas: false}
        as: iommu
      - alloc_ioas: {iommu: iommu}
        as: ioas
      - alloc_buffer: {size: 64KiB}
        as: buf
"""


def errors_of(step: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent(HEAD) + "  " + step + "\n", "c.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


@pytest.mark.parametrize(("step", "error"), [
    ("- alloc_buffer: {size: 4KiB, align: 3KiB}", "is not a power of two of at least 4 KiB"),
    ("- alloc_buffer: {size: 4KiB, align: 2KiB}", "is not a power of two of at least 4 KiB"),
    ("- alloc_buffer: {size: 4KiB, align: 2MiB, backing: memfd}", "`align` places anonymous memory"),
    ("- map_dma: {ioas: ioas, buffer: buf, iova: 0x1000, iova_align: 4KiB}",
     "`iova_align` checks the IOVA the kernel chose: it goes with `iova: auto`"),
    ("- map_dma: {ioas: ioas, buffer: buf, iova: auto, iova_align: 12KiB}",
     "`iova_align`: 0x3000 is not a power of two"),
    ("- map_dma: {ioas: ioas, address: 0x80000000, iova: auto}",
     "`address` maps `size` bytes of a raw process address into an `ioas` at `iova: auto`"),
    ("- map_dma: {ioas: ioas, address: 0x80000000, buffer: buf, size: 4KiB, iova: auto}",
     "give only one of `buffer` or `mmio` or `dmabuf` or `address`"),
    ("- mock_check_map: {iommu: iommu, mock: 1, iova: 0x1000000}",
     "give a `mapping`, or `iova`, `size` and `buffer`"),
    ("- unmap_buffer: {buffer: buf, size: 0}", "`size`: Input should be greater than 0"),
])
def test_arguments_that_make_no_sense_are_refused_at_their_step(step: str, error: str) -> None:
    errors = errors_of(step)
    assert len(errors) == 1 and errors[0].startswith("c.yaml:11:") and error in errors[0], errors


def test_the_checks_compile_where_they_make_sense() -> None:
    assert errors_of("- map_dma: {ioas: ioas, buffer: buf, iova: auto, iova_align: 4KiB, "
                     "iova_within: {start: 0, last: 0xffff}, "
                     "iova_outside: {start: 0x4000, size: 0x1000}}") == []


@pytest.mark.parametrize("backing", ["anonymous", "shared"])
def test_an_aligned_buffer_starts_at_a_multiple_of_its_alignment(backing: str) -> None:
    for _ in range(3):
        with DmaBuffer(64 * 1024, backing, align=2 << 20) as buf:
            assert buf.addr % (2 << 20) == 0 and buf.size == 64 * 1024
            buf.mem[:] = b"\x5a" * buf.size  # all of it is the process's memory
            assert bytes(buf.mem[-1:]) == b"\x5a"


@pytest.mark.parametrize(("backing", "shared"), [("shared", True), ("anonymous", False)])
def test_shared_memory_is_shared_with_a_child_private_memory_is_not(backing: str,
                                                                   shared: bool) -> None:
    import os

    with DmaBuffer(4096, backing) as buf:
        pid = os.fork()
        if pid == 0:  # the child writes, the parent looks
            buf.mem[0] = 0x77
            os._exit(0)
        os.waitpid(pid, 0)
        assert (buf.mem[0] == 0x77) is shared


def test_unmap_range_reports_munmaps_errno_and_refuses_a_range_past_the_end() -> None:
    with DmaBuffer(4 * 4096) as buf:
        with pytest.raises(VfioError) as info:
            unmap_range(buf, 100, 4096)
        assert info.value.errno_name == "EINVAL"
        with pytest.raises(VfioError):
            unmap_range(buf, 3 * 4096, 2 * 4096)
        unmap_range(buf, 2 * 4096, 2 * 4096)  # the close later unmaps the rest


def _checks(**kw: object) -> MapDma:
    return MapDma.model_validate({"ioas": "ioas", "buffer": "buf", "iova": "auto", **kw})


@pytest.mark.parametrize(("iova", "size", "checks", "message"), [
    (0x3000, 0x2000, {"iova_align": 0x2000}, "not a multiple of 0x2000"),
    (0x4000, 0x2000, {"iova_align": 0x2000}, None),
    (0x1000, 0x2000, {"iova_within": {"start": 0x1000, "last": 0x2fff}}, None),
    (0x1000, 0x2000, {"iova_within": {"start": 0x1000, "last": 0x2ffe}}, "not within"),
    (0x1000, 0x2000, {"iova_within": {"start": 0x1001, "last": 0x3fff}}, "not within"),
    (0x1000, 0x2000, {"iova_outside": {"start": 0x3000, "size": 0x1000}}, None),
    (0x1000, 0x2000, {"iova_outside": {"start": 0x2fff, "size": 0x1}}, "overlaps"),
    (0x1000, 0x2000, {"iova_outside": {"start": 0x0, "size": 0x1001}}, "overlaps"),
    (0x1000, 0x2000, {"iova_outside": {"start": 0x0, "size": 0x1000}}, None),
])
def test_the_chosen_iova_checks(iova: int, size: int, checks: dict[str, object],
                                message: str | None) -> None:
    mapping = Mapping(None, iova, size, 0)  # type: ignore[arg-type]
    if message is None:
        check_chosen_iova(_checks(**checks), mapping)
    else:
        with pytest.raises(CheckFailed, match=message):
            check_chosen_iova(_checks(**checks), mapping)
