"""open_device's `pf`/`vf`: VF number N of a PF handle (scenarios/sriov)."""

from __future__ import annotations

import textwrap

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text

HEAD = """
    name: vf
    steps:
      - open_iommu: {}
        as: iommu
      - open_device: {iommu: iommu}
        as: pf
"""


def messages(step: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent(HEAD) + textwrap.indent(step, "  "), "vf.yaml")
    assert errors == []
    return [e.message for e in compile_documents([doc]).errors]


def test_vf_of_a_pf_handle_with_its_token_compiles() -> None:
    assert messages("- open_device: {iommu: iommu, pf: pf, vf: 1, "
                    "vf_token: 4f6a9b52-2c1d-4e8a-9b3f-0d1e2f3a4b5c}\n  as: vf\n") == []


@pytest.mark.parametrize(("step", "error"), [
    ("- open_device: {iommu: iommu, vf: 0}\n", "`pf` and `vf` go together"),
    ("- open_device: {iommu: iommu, pf: pf}\n", "`pf` and `vf` go together"),
    ("- open_device: {iommu: iommu, pf: pf, vf: 0, bdf: '0000:00:03.0'}\n",
     "give either `bdf` or `pf` with `vf`, not both"),
    ("- open_device: {iommu: iommu, pf: pf, vf: -1}\n", "`vf`: -1 does not fit in u16 (0 to 0xffff)"),
    ("- open_device: {iommu: iommu, pf: nopf, vf: 0}\n", "nopf"),
])
def test_vf_arguments_are_checked_before_anything_runs(step: str, error: str) -> None:
    found = messages(step)
    assert len(found) == 1 and error in found[0], found
