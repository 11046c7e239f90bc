"""get_hw_info's `out_data_len` (the data length the kernel writes back, which the
selftests' _test_cmd_get_hw_info() asserts is its struct's size): a u32, refused otherwise
at its position. The kernel's answer is tested in the testbed:
tests/guest/test_fail_nth_device_ops.py."""

from __future__ import annotations

import textwrap

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import GetHwInfo

HEAD = """
    name: c
    requires: {devices: 0}
    steps:
      - open_iommu: {mode: iommufd, default_ioas: false}
        as: iommu
      - alloc_ioas: {iommu: iommu}
        as: ioas
      - mock_domain: {iommu: iommu, pt: ioas}
        as: mock
"""


def errors_of(step: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent(HEAD) + "  " + step + "\n", "c.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


@pytest.mark.parametrize(("value", "error"), [
    ("-1", "`out_data_len`: -1 does not fit in u32"),
    ("0x100000000", "`out_data_len`: 0x100000000 does not fit in u32"),
    ("eight", "`out_data_len`: expected an integer"),
])
def test_a_length_that_is_no_u32_is_refused_at_its_step(value: str, error: str) -> None:
    errors = errors_of(f"- get_hw_info: {{iommu: iommu, device: mock, out_data_len: {value}}}")
    assert len(errors) == 1 and errors[0].startswith("c.yaml:11:61:") and error in errors[0], errors


def test_the_length_is_optional_and_takes_hex() -> None:
    assert errors_of("- get_hw_info: {iommu: iommu, device: mock, out_data_len: 8}") == []
    assert errors_of("- get_hw_info: {iommu: iommu, device: mock}") == []
    assert GetHwInfo(iommu="i", device="m").out_data_len is None
    assert GetHwInfo.model_validate({"iommu": "i", "device": "m",
                                     "out_data_len": "0x10"}).out_data_len == 16
