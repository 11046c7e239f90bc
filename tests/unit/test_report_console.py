"""Console progress lines, the summary line and the exit status."""

from __future__ import annotations

import io

import pytest
from vfio_scenario.report.console import Console, exit_code, header_line, progress_line
from vfio_scenario.results import Outcome, RunResult

from tests.helpers.reports import sample_run


def test_progress_lines_count_and_explain() -> None:
    run = sample_run()
    out = io.StringIO()
    console = Console(out, total=340, done=10)
    for case in run.cases:
        console.case(case)
    run.duration = 81.2
    console.summary(run)
    assert out.getvalue().splitlines() == [
        "[ 11/340] scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096] PASS 0.15s",
        ("[ 12/340] scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096] "
        "FAIL 0.13s"),
        ("          step 4 `map_dma` at scenarios/dma/map.yaml:15: expected ok, got EINVAL: "
        "VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)"),
        ("[ 13/340] scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1_iommu,size=4096] "
        "SKIP 0.00s"),
        "          IOMMU mode vfio_type1_iommu: the host kernel lacks CONFIG_VFIO_IOMMU_TYPE1",
        ("[ 14/340] scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=256] "
        "PASS 0.01s"),
        ("[ 15/340] scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=4096] "
        "ERROR 5.01s"),
        ("          step 7 `memcpy_wait` at scenarios/driver/memcpy.yaml:21: expected ok, got "
        "timeout: step timed out after 5s"),
        "2 passed, 1 failed, 1 skipped, 1 errors in 81.20s",
    ]


def test_progress_line_of_the_example() -> None:
    case = sample_run().cases[0]
    case.duration = 0.41
    assert progress_line(case, 12, 340) == f"[ 12/340] {case.case_id} PASS 0.41s"
    assert progress_line(case, 9, 9) == f"[9/9] {case.case_id} PASS 0.41s"


def test_header_names_the_kernel_and_accelerator() -> None:
    assert header_line(sample_run(), 340) == ("vfio-scenario 0.1.0: 340 cases; kernel "
                                             "7.2.13-vfio-scenario, accelerator tcg, qemu 8.2.2, "
                                             "where testbed")


@pytest.mark.parametrize(("outcomes", "status"), [
    ([], 5),
    ([Outcome.PASS], 0),
    ([Outcome.SKIP], 0),
    ([Outcome.PASS, Outcome.SKIP], 0),
    ([Outcome.PASS, Outcome.FAIL], 1),
    ([Outcome.ERROR, Outcome.SKIP], 1),
])
def test_exit_status(outcomes: list[Outcome], status: int) -> None:
    base = sample_run().cases[0]
    run = RunResult(cases=[])
    for i, o in enumerate(outcomes):
        run.cases.append(type(base)(case_id=f"f::c{i}", file="f", scenario="c", outcome=o))
    assert exit_code(run) == status
