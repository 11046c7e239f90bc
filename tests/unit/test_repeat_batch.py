"""`repeat:` done in one call (map_dma/unmap_dma's batched form) behaves exactly like the
repetitions one by one: same kernel calls, IOVAs, outcomes, messages, mapping records.

Each scenario runs twice against a fake IOMMU that records every call — once with the
operations as registered (batched), once with the batch hidden (the plain loop of
run_step) — and everything observable must match. What the kernel answers to the C loops
themselves is tested in the testbed (tests/guest/test_uapi_batch.py).
"""

from __future__ import annotations

import errno
import functools
import random
import textwrap
from typing import Any

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.results import Outcome
from vfio_scenario.run.interpreter import Runtime, run_case
from vfio_scenario.run.ops import memory, operations
from vfio_scenario.uapi.iommu import AddressSpace, Mapping
from vfio_scenario.uapi.iova import IovaAllocator, IovaRange

from tests.helpers.scenarios import compile_text

PAGE = 4096


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 repetitions per C-loop call instead of 4096: chunk edges with short scenarios."""
    monkeypatch.setattr(memory, "CHUNK", 64)


class FakeIommu(AddressSpace):
    """Kernel-like bookkeeping: overlapping maps fail with EEXIST, an unmap removes the
    mappings wholly inside its range (ENOENT for none, like iommufd), and `fail_at`
    injects an errno at the n-th map call."""

    handle = "fake"

    def __init__(self, ranges: list[IovaRange], fail_at: dict[int, int] | None = None) -> None:
        self.ranges = ranges
        self.fail_at = fail_at or {}
        self.mapped: dict[int, int] = {}
        self.calls: list[tuple[str, int, int]] = []
        self.batches = 0
        self.maps = 0

    def iova_ranges(self) -> list[IovaRange]:
        return self.ranges

    def map(self, vaddr: int, size: int, iova: int, read: bool = True,
            write: bool = True) -> Mapping:
        self.calls.append(("map", iova, size))
        self.maps += 1
        if self.maps in self.fail_at:
            raise VfioError(self.fail_at[self.maps], "FAKE_MAP", self.handle)
        if any(i < iova + size and iova < i + s for i, s in self.mapped.items()):
            raise VfioError(errno.EEXIST, "FAKE_MAP", self.handle)
        self.mapped[iova] = size
        return Mapping(self, iova, size, vaddr)

    def unmap(self, iova: int, size: int) -> int:
        self.calls.append(("unmap", iova, size))
        inside = [i for i, s in self.mapped.items() if iova <= i and i + s <= iova + size]
        if not inside:
            raise VfioError(errno.ENOENT, "FAKE_UNMAP", self.handle)
        return sum(self.mapped.pop(i) for i in inside)

    def unmap_all(self) -> int:
        self.calls.append(("unmap_all", 0, 0))
        total = sum(self.mapped.values())
        self.mapped.clear()
        return total

    def map_many(self, *args: Any, **kwargs: Any) -> tuple[int, VfioError | None]:
        self.batches += 1
        return super().map_many(*args, **kwargs)

    def unmap_many(self, *args: Any, **kwargs: Any) -> tuple[int, VfioError | None, int]:
        self.batches += 1
        return super().unmap_many(*args, **kwargs)


def _case(steps: str) -> Any:
    text = textwrap.dedent("""\
        name: batch
        requires: {devices: 0}
        matrix: {iommu_mode: [iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - alloc_buffer: {size: 16KiB}
            as: buf
        """) + textwrap.indent(textwrap.dedent(steps), "  ")
    (case,) = compile_text(text, "scen/batch.yaml")
    return case


def _run(steps: str, batched: bool, ranges: list[IovaRange] | None = None,
         fail_at: dict[int, int] | None = None) -> tuple[Any, FakeIommu, dict[str, Any]]:
    space = FakeIommu(ranges or [IovaRange(0x100000, (1 << 40) - 1)], fail_at)
    ops = operations()
    ops["open_iommu"] = lambda rt, a, s: space
    if not batched:  # the same operations without their `repeat` attribute
        for name in ("map_dma", "unmap_dma"):
            assert getattr(ops[name], "repeat", None) is not None
            ops[name] = functools.partial(ops[name])
    handles: dict[str, Any] = {}

    def keep(rt: Runtime) -> None:  # what the handles were before the releases
        handles.update(rt.handles)

    result = run_case(_case(steps), [], ops, end=keep)
    return result, space, handles


def _same(steps: str, **kwargs: Any) -> tuple[Any, FakeIommu]:
    """Run both ways, assert every observable matches; returns the batched run."""
    a, fa, ha = _run(steps, True, **kwargs)
    b, fb, hb = _run(steps, False, **kwargs)
    view = [(s.op, s.outcome, s.actual, s.message, s.teardown) for s in a.steps]
    assert view == [(s.op, s.outcome, s.actual, s.message, s.teardown) for s in b.steps]
    assert (a.outcome, a.message, a.log) == (b.outcome, b.message, b.log)
    assert fa.calls == fb.calls  # the same kernel calls in the same order, cleanup included
    assert fa.mapped == fb.mapped == {}  # everything released at the end
    assert {k: (m.iova, m.size) for k, m in ha.items() if isinstance(m, Mapping)} == \
           {k: (m.iova, m.size) for k, m in hb.items() if isinstance(m, Mapping)}
    return a, fa


def test_a_batched_map_storm_maps_the_allocators_iovas_and_unmaps_all() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 200
          as: last
        - unmap_dma: {iommu: iommu, all: true, unmapped_size: 0xc8000}
    """)
    assert result.outcome is Outcome.PASS, result.message
    maps = [c for c in fake.calls if c[0] == "map"]
    assert [c[1] for c in maps] == [0x100000 + k * PAGE for k in range(200)]
    assert fake.batches == 4  # 64 + 64 + 64 + 8 repetitions


def test_cleanup_unmaps_each_left_mapping_newest_first() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 8KiB}
          repeat: 300
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 7
    """)
    assert result.outcome is Outcome.PASS
    unmaps = [c[1] for c in fake.calls if c[0] == "unmap"]
    assert len(unmaps) == 307 and unmaps == sorted(unmaps, reverse=True)


@pytest.mark.parametrize("k", [1, 2, 37, 64, 65, 200])
def test_an_error_at_repetition_k_fails_the_step_there(k: int) -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 200
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          as: after
    """, fail_at={k: errno.ENOMEM})
    assert result.outcome is Outcome.FAIL
    step = result.steps[2]
    assert step.actual == "ENOMEM" and "FAKE_MAP on fake failed with ENOMEM" in step.message
    assert len([c for c in fake.calls if c[0] == "map"]) == k
    assert len([c for c in fake.calls if c[0] == "unmap"]) == k - 1  # the ones that mapped


@pytest.mark.parametrize("k", [1, 50, 64])
def test_an_expected_error_at_repetition_k_goes_on_with_the_next_iova(k: int) -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 150
          expect: [ok, ENOMEM]
          as: last
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          as: after
    """, fail_at={k: errno.ENOMEM, k + 2: errno.ENOMEM})
    assert result.outcome is Outcome.PASS, result.message
    maps = [c[1] for c in fake.calls if c[0] == "map"]
    # the failed repetitions used up their IOVAs, as one by one: 151 distinct IOVAs
    assert maps == [0x100000 + i * PAGE for i in range(151)]


def test_an_error_on_the_last_repetition_leaves_no_handle() -> None:
    result, _ = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 10
          expect: [ok, ENOMEM]
          as: last
        - unmap_dma: {mapping: last}
    """, fail_at={10: errno.ENOMEM})
    assert result.outcome is Outcome.FAIL
    assert "handle `last` was not made" in result.message


def test_a_fixed_iova_maps_once_then_eexist() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB, iova: 0x200000}
          repeat: 4
          expect: [ok, EEXIST]
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB, iova: 0x200000}
          repeat: 3
          expect: EEXIST
    """)
    assert result.outcome is Outcome.PASS, result.message
    assert fake.calls.count(("map", 0x200000, PAGE)) == 7


def test_ok_where_only_an_error_is_expected_fails_at_the_first_repetition() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 50
          expect: EEXIST
    """)
    assert result.outcome is Outcome.FAIL
    assert result.steps[2].message == "expected EEXIST, got ok"
    assert len([c for c in fake.calls if c[0] == "map"]) == 1


def test_running_out_of_iovas_crosses_ranges_then_fails_with_enospc() -> None:
    ranges = [IovaRange(0x1000, 0x8FFF), IovaRange(0x100000, 0x10BFFF)]  # 8 + 12 pages
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 25
          expect: [ok, ENOSPC]
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 25
    """, ranges=ranges)
    assert result.outcome is Outcome.FAIL
    assert result.steps[3].actual == "ENOSPC"
    maps = [c[1] for c in fake.calls if c[0] == "map"]
    assert maps == [0x1000 + i * PAGE for i in range(8)] + \
        [0x100000 + i * PAGE for i in range(12)]


def test_sizes_that_are_not_a_power_of_two_keep_their_alignment_gaps() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 12KiB}
          repeat: 9
          as: m
        - unmap_dma: {mapping: m, unmapped_size: 12KiB}
        - unmap_dma: {iommu: iommu, iova: 0x100000, size: 0x20000, unmapped_size: 0x18000}
    """)
    assert result.outcome is Outcome.PASS, result.message
    maps = [c[1] for c in fake.calls if c[0] == "map"]
    assert maps == [0x100000 + i * 0x4000 for i in range(9)]  # 12 KiB aligned to 8 KiB


def test_unmapping_a_handle_or_a_range_of_a_batch_is_not_unmapped_again() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 100
          as: last
        - unmap_dma: {mapping: last, unmapped_size: 4KiB}
        - unmap_dma: {iommu: iommu, iova: 0x110000, size: 0x10000, unmapped_size: 0x10000}
    """)
    assert result.outcome is Outcome.PASS, result.message
    unmaps = [c[1] for c in fake.calls if c[0] == "unmap"]
    assert len(unmaps) == 2 + 100 - 1 - 16
    assert unmaps.count(0x100000 + 99 * PAGE) == 1


def test_repeated_unmaps_check_every_repetition() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          repeat: 3
          as: m
        - unmap_dma: {mapping: m}
          repeat: 5
          expect: [ok, ENOENT]
        - unmap_dma: {iommu: iommu, iova: 0x100000, size: 4KiB}
          repeat: 4
          expect: [ENOENT, ok]
        - unmap_dma: {iommu: iommu, all: true, unmapped_size: 4KiB}
          repeat: 3
    """)
    assert result.outcome is Outcome.FAIL
    last = result.steps[-1]
    assert (last.actual, last.message) == ("check failed", "unmapped 0x0 bytes, expected 0x1000")
    assert fake.calls.count(("unmap_all", 0, 0)) == 2  # the second repetition failed the check


def test_a_repeated_unmap_that_fails_unexpectedly_names_the_errno() -> None:
    result, _ = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          as: m
        - unmap_dma: {mapping: m}
          repeat: 3
    """)
    assert result.outcome is Outcome.FAIL
    assert result.steps[-1].actual == "ENOENT"


def test_a_failed_check_where_an_errno_is_expected_is_reported_as_a_check() -> None:
    result, _ = _same("""
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          as: m
        - unmap_dma: {mapping: m, unmapped_size: 8KiB}
          repeat: 3
          expect: ENOENT
    """)
    assert result.steps[-1].actual == "check failed"


def test_a_missing_handle_or_range_outside_the_buffer_runs_one_by_one() -> None:
    result, fake = _same("""
        - map_dma: {iommu: iommu, buffer: buf, offset: 12KiB, size: 8KiB}
          repeat: 5
          expect: EINVAL
        - map_dma: {iommu: iommu, buffer: buf, size: 4KiB}
          expect: ENOMEM
          as: m
        - unmap_dma: {mapping: m}
          repeat: 5
          expect: [ok, ENOENT]
    """, fail_at={1: errno.ENOMEM})
    assert result.outcome is Outcome.FAIL
    assert result.steps[2].actual == "EINVAL"
    assert "handle `m` was not made" in result.message
    assert fake.batches == 0


def test_alloc_run_hands_out_what_single_allocs_would() -> None:
    rng = random.Random(6)
    for _ in range(300):
        ranges = [IovaRange(0x1000 * rng.randrange(0, 4), 0x1000 * rng.randrange(4, 40) - 1),
                  IovaRange(0x100000, 0x100000 + 0x1000 * rng.randrange(1, 80) - 1)]
        limit = rng.choice([None, 0x8000, 0x110000])
        single, batch = IovaAllocator(ranges, limit), IovaAllocator(ranges, limit)
        for _ in range(4):
            size = rng.choice([0x1000, 0x2000, 0x3000, 0x5000])
            count = rng.randrange(1, 30)
            want: list[int | str] = []
            for _ in range(count):
                try:
                    want.append(single.alloc(size))
                except VfioError as exc:
                    want.append(exc.errno_name)
            got: list[int | str] = []
            while len(got) < count:
                try:
                    first, stride, n = batch.alloc_run(size, count - len(got))
                except VfioError as exc:
                    got.append(exc.errno_name)
                    continue
                assert 1 <= n <= count - len(got)
                got.extend(first + k * stride for k in range(n))
            assert got == want, (ranges, limit, size, count)


def test_release_after_gives_back_the_unused_tail_of_a_run() -> None:
    alloc = IovaAllocator([IovaRange(0x1000, 0xFFFFF)])
    first, stride, n = alloc.alloc_run(PAGE, 100)
    assert (first, stride, n) == (0x1000, PAGE, 100)
    alloc.release_after(first + 9 * stride, PAGE)  # only ten of them were used
    assert alloc.alloc(PAGE) == first + 10 * stride
