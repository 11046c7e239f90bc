"""The C loops behind `repeat:` (map_many/unmap_many) make exactly the kernel's mappings of
as many single calls, in every IOMMU mode; a failing repetition names its errno and index.

Checked through the kernel itself: each IOVA unmapped on its own must unmap one page
(and nothing else may be left), the IOMMU page table read from debugfs must hold the
same leaves for a batch as for single maps, and edu must reach the buffer through the
batch's last IOVA.
"""

from __future__ import annotations

import textwrap

import pytest
from vfio_scenario.drivers.edu import EduDriver
from vfio_scenario.errors import VfioError
from vfio_scenario.results import Outcome
from vfio_scenario.run.interpreter import run_case
from vfio_scenario.run.ops import operations
from vfio_scenario.uapi import debugfs
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.modes import IommuMode

from tests.helpers.scenarios import compile_text

PAGE = 4096
N = 512
BATCH = 0x1000000  # below edu's 28-bit DMA mask, far from the MSI window
SINGLE = 0x2000000


def _unmap_each(iommu: Iommu, base: int, count: int) -> list[int]:
    return [iommu.unmap(base + k * PAGE, PAGE) for k in range(count)]


def _nothing_left(iommu: Iommu) -> None:
    assert iommu.unmap_all() == 0


def _leaves(bdf: str, base: int) -> list[tuple[int, int]] | None:
    table = debugfs.page_table(bdf)
    if not table.available:
        return None
    return sorted((iova - base, size) for iova, size in table.leaves
                  if base <= iova < base + N * PAGE)


def test_a_batch_maps_what_single_maps_do(mode: IommuMode, iommu: Iommu, device: VfioDevice,
                                         edu_bdf: str) -> None:
    page = DmaBuffer(PAGE)
    try:
        assert iommu.map_many(page.addr, PAGE, BATCH, PAGE, N) == (N, None)
        for k in range(N):
            iommu.map(page.addr, PAGE, SINGLE + k * PAGE)
        batch, single = _leaves(edu_bdf, BATCH), _leaves(edu_bdf, SINGLE)
        if batch is not None:  # the IOMMU page table: the same leaves, one 4 KiB page each
            assert batch == single == [(k * PAGE, PAGE) for k in range(N)]
        # every repetition's IOVA is taken, the one after the batch is not
        with pytest.raises(VfioError) as info:
            iommu.map(page.addr, PAGE, BATCH + (N - 1) * PAGE)
        assert info.value.errno_name == "EEXIST"
        iommu.map(page.addr, PAGE, BATCH + N * PAGE)
        assert iommu.unmap(BATCH + N * PAGE, PAGE) == PAGE
        assert _unmap_each(iommu, BATCH, N) == [PAGE] * N
        assert _unmap_each(iommu, SINGLE, N) == [PAGE] * N
        _nothing_left(iommu)
    finally:
        page.close()


def test_the_batchs_last_iova_reaches_the_buffer(mode: IommuMode, iommu: Iommu,
                                                device: VfioDevice) -> None:
    page = DmaBuffer(PAGE)
    page.mem[:PAGE // 2] = bytes(range(256)) * (PAGE // 512)
    driver = EduDriver(device)
    try:
        assert iommu.map_many(page.addr, PAGE, BATCH, PAGE, 64) == (64, None)
        last = BATCH + 63 * PAGE
        driver.init(None)
        driver.memcpy_start(last, last + PAGE // 2, PAGE // 2)
        driver.memcpy_wait()
        assert bytes(page.mem[PAGE // 2:]) == bytes(page.mem[:PAGE // 2])
    finally:
        driver.remove()
        iommu.unmap_all()
        page.close()


@pytest.mark.parametrize("k", [0, 37, N - 1])
def test_an_overlap_at_repetition_k_stops_the_batch_there_with_eexist(
        k: int, mode: IommuMode, iommu: Iommu, device: VfioDevice) -> None:
    page = DmaBuffer(PAGE)
    try:
        iommu.map(page.addr, PAGE, BATCH + k * PAGE)
        done, error = iommu.map_many(page.addr, PAGE, BATCH, PAGE, N)
        assert done == k
        assert error is not None and error.errno_name == "EEXIST"
        assert error.op == ("IOMMU_IOAS_MAP" if mode is IommuMode.IOMMUFD
                            else "VFIO_IOMMU_MAP_DMA")
        # nothing after the failing one was mapped: the next IOVA is free
        if k + 1 < N:
            iommu.map(page.addr, PAGE, BATCH + (k + 1) * PAGE)
            assert iommu.unmap(BATCH + (k + 1) * PAGE, PAGE) == PAGE
        assert _unmap_each(iommu, BATCH, k + 1) == [PAGE] * (k + 1)
        _nothing_left(iommu)
    finally:
        page.close()


def test_batched_unmaps_stop_at_the_first_that_unmaps_otherwise(
        mode: IommuMode, iommu: Iommu, device: VfioDevice) -> None:
    page = DmaBuffer(PAGE)
    try:
        assert iommu.map_many(page.addr, PAGE, BATCH, PAGE, N) == (N, None)
        # newest first, as the case's end releases them; half of them
        top = BATCH + (N - 1) * PAGE
        assert iommu.unmap_many(top, PAGE, N // 2, -PAGE, expect=PAGE) == (N // 2, None, PAGE)
        # the first already-unmapped one stops the next batch: type1 (legacy or iommufd's
        # compat) unmaps 0 bytes, native iommufd fails with ENOENT
        done, error, unmapped = iommu.unmap_many(top, PAGE, 3, expect=PAGE)
        assert done == 0
        if mode is IommuMode.IOMMUFD:
            assert error is not None and error.errno_name == "ENOENT"
        else:
            assert (error, unmapped) == (None, 0)
        assert iommu.unmap_many(BATCH, PAGE, 1, expect=PAGE) == (1, None, PAGE)
        done, error, unmapped = iommu.unmap_many(0, 0, 2, unmap_all=True)
        assert (done, error, unmapped) == (2, None, 0)  # the second found nothing left
        iommu.map(page.addr, PAGE, top)  # all of them are free again
        assert iommu.unmap_many(0, 0, 1, unmap_all=True) == (1, None, PAGE)
    finally:
        page.close()


def test_a_repeated_map_step_runs_in_the_engine(mode: IommuMode, edu_bdf: str) -> None:
    text = textwrap.dedent(f"""\
        name: storm
        matrix: {{iommu_mode: [{mode.value}]}}
        steps:
          - open_iommu: {{}}
            as: iommu
          - open_device: {{iommu: iommu}}
            as: dev
          - alloc_buffer: {{size: 4KiB}}
            as: page
          - map_dma: {{iommu: iommu, buffer: page, iova: {BATCH + 7 * PAGE:#x}}}
          - map_dma: {{iommu: iommu, buffer: page}}
            repeat: 3000
            as: last
          - unmap_dma: {{mapping: last, unmapped_size: 4KiB}}
          - unmap_dma: {{iommu: iommu, all: true, unmapped_size: {3000 * PAGE:#x}}}
          - map_dma: {{iommu: iommu, buffer: page, iova: {BATCH:#x}}}
            repeat: 3
            expect: [ok, EEXIST]
        """)
    (case,) = compile_text(text, "guest/storm.yaml")
    result = run_case(case, [edu_bdf], operations())
    if result.outcome is Outcome.SKIP:
        pytest.skip(result.message)
    assert result.outcome is Outcome.PASS, result.message
    assert [s.outcome for s in result.steps] == [Outcome.PASS] * 8
