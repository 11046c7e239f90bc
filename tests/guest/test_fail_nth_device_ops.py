"""What the port of iommufd_fail_nth.c's `device` case leans on, against the testbed
kernel's mock IOMMU: `get_hw_info`'s `out_data_len` (the C helper's assert that the kernel
reports sizeof(struct iommu_test_hw_info)) and a PASID detach with nothing attached (the
scenario's teardown detaches PASID 200 whenever the mock device was made)."""

from __future__ import annotations

import pytest
from vfio_scenario.results import Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import operations
from vfio_scenario.uapi.capabilities import HostCapabilities

from tests.helpers.scenarios import compile_text

STEPS = """
    name: device-ops
    requires: {devices: 0, features: [iommufd, iommufd_test]}
    steps:
      - open_iommu: {mode: iommufd, default_ioas: false}
        as: iommu
      - alloc_ioas: {iommu: iommu}
        as: ioas
      - mock_domain: {iommu: iommu, pt: ioas, flags: [pasid]}
        as: mock
      - alloc_hwpt: {iommu: iommu, device: mock, pt: ioas, flags: [pasid]}
        as: hwpt
      STEP
    teardown:
      - close_iommu: {iommu: iommu}
"""


@pytest.mark.parametrize(("step", "outcome", "message"), [
    ("- get_hw_info: {iommu: iommu, device: mock, data_len: 8, out_data_len: 8}",
     Outcome.PASS, ""),
    # a larger buffer: the kernel still reports its struct's 8 bytes (and zeroes the rest)
    ("- get_hw_info: {iommu: iommu, device: mock, data_len: 16, out_data_len: 8}",
     Outcome.PASS, ""),
    ("- get_hw_info: {iommu: iommu, device: mock, data_len: 16, out_data_len: 16}",
     Outcome.FAIL, "the kernel reports 8 bytes of data, expected 16"),
    # nothing attached at PASID 200: the kernel detaches nothing and answers 0
    ("- mock_pasid_detach: {iommu: iommu, mock: mock, pasid: 200}", Outcome.PASS, ""),
    ("- mock_pasid_attach: {iommu: iommu, mock: mock, pasid: 200, pt: hwpt}", Outcome.FAIL,
     "failed with EINVAL"),
    # (a PASID attaches once the device's RID is on a PASID-capable page table: EINVAL
    # while it is on the mock domain, as fail-nth-device replaces it first)
    (("- mock_domain_replace: {iommu: iommu, mock: mock, pt: hwpt}\n"
      "      - mock_pasid_attach: {iommu: iommu, mock: mock, pasid: 200, pt: hwpt}\n"
      "      - mock_pasid_detach: {iommu: iommu, mock: mock, pasid: 200}\n"
      "      - mock_pasid_check: {iommu: iommu, mock: mock, pasid: 200, hwpt: 0}\n"
      "      - mock_pasid_detach: {iommu: iommu, mock: mock, pasid: 200}"),
     Outcome.PASS, ""),
])
def test_the_steps_pass_or_fail_by_the_kernels_answer(caps: HostCapabilities, step: str,
                                                      outcome: Outcome, message: str) -> None:
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)
    (case,) = compile_text(STEPS.replace("STEP", step), "device-ops.yaml")
    result = execute_case(case, [], operations(), RunOptions())
    assert result.outcome is outcome, f"{result.message}\n{result.log}"
    assert message in result.message
