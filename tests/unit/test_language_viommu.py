"""The nested-translation, vIOMMU and VFIO-compat operations (language/models_viommu.py):
their arguments are checked before anything runs, and their models are the models
module's (the testbed's guest restores every model from that module alone)."""

from __future__ import annotations

import pickle
import textwrap

import pytest
from vfio_scenario.language import models, models_viommu
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text

HEAD = """
    name: nested
    requires: {devices: 0}
    steps:
      - open_iommu: {mode: iommufd, default_ioas: false}
        as: iommu
      - alloc_ioas: {iommu: iommu}
        as: ioas
      - mock_domain: {iommu: iommu, pt: ioas}
        as: mock
      - alloc_hwpt: {iommu: iommu, device: mock, pt: ioas, flags: [nest_parent]}
        as: parent
      - alloc_viommu: {iommu: iommu, device: mock, hwpt: parent}
        as: viommu
      - alloc_buffer: {size: 64KiB}
        as: buffer
"""


def messages(steps: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent(HEAD) + textwrap.indent(textwrap.dedent(steps), "  "),
                            "nested.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


def test_the_selftests_uses_compile() -> None:
    assert messages("""
        - alloc_nested_hwpt: {iommu: iommu, device: mock, parent: viommu, flags: 0x80000004}
          as: nested
        - invalidate_cache: {iommu: iommu, target: nested, entries: [{iotlb_id: 1}, {flags: all}], done: 2}
        - invalidate_cache: {iommu: iommu, target: viommu, entries: [{vdev_id: 0x99, cache_id: 3}]}
        - mock_check_iotlb: {iommu: iommu, hwpt: nested, value: 0xbadbeef}
        - mock_check_dev_cache: {iommu: iommu, device: mock, id: 2, value: 0}
        - alloc_veventq: {iommu: iommu, viommu: viommu, depth: 2}
          as: q
        - read_vevents: {veventq: q, count: 3, virt_id: 0x88, lost: true}
        - close_queue_fd: {queue: q}
        - alloc_fault_queue: {iommu: iommu}
          as: fault
        - trigger_iopf: {iommu: iommu, device: mock, fault: fault}
        - alloc_hw_queue: {iommu: iommu, viommu: viommu, iova: 0x1000000, length: 4096}
          as: hwq
        - iommufd_destroy: {iommu: iommu, object: hwq}
        - vfio_ioas: {iommu: iommu, action: set, ioas: ioas}
        - vfio_map_dma: {iommu: iommu, buffer: buffer, size: 4KiB, iova: 0x1000000, count: 16}
        - vfio_unmap_dma: {iommu: iommu, iova: [0x1001000, 0x1000000], size: 4KiB}
        - vfio_iommu_info: {iommu: iommu, iova_ranges: [{start: 0x1000000, last: 0x7fffffff}]}
        - skip_unless_made: {object: mock, reason: Skipping test for variant no_viommu}
    """) == []


@pytest.mark.parametrize(("steps", "error"), [
    # an invalidation request is a HW page table's or a vIOMMU's, not both
    ("- invalidate_cache: {iommu: iommu, target: viommu, entries: [{iotlb_id: 1, cache_id: 2}]}\n",
     "`iotlb_id` is a HW page table's request"),
    # the target of an invalidation is a HW page table or a vIOMMU
    ("- invalidate_cache: {iommu: iommu, target: ioas}\n",
     "handle `ioas` is a ioas, but `target` needs a hwpt or viommu"),
    ("- read_vevents: {veventq: viommu}\n", "`veventq` needs a veventq"),
    ("- trigger_iopf: {iommu: iommu, device: mock, fault: viommu}\n", "`fault` needs a fault"),
    ("- alloc_veventq: {iommu: iommu, viommu: viommu, depth: 0x100000000}\n",
     "does not fit in u32"),
    ("- alloc_nested_hwpt: {iommu: iommu, device: mock, parent: viommu, data_type: other}\n",
     "data_type"),
    ("- vfio_map_dma: {iommu: iommu, buffer: buffer, size: 4KiB, iova: 0, count: 0}\n",
     "count"),
    ("- vfio_ioas: {iommu: iommu, action: swap}\n", "action"),
    ("- skip_unless_made: {object: mock, reason: ''}\n", "reason"),
    ("- mmap_viommu: {iommu: iommu, viommu: viommu, length: third}\n", "length"),
])
def test_bad_arguments_are_refused_at_their_position(steps: str, error: str) -> None:
    found = messages(steps)
    assert len(found) == 1 and error in found[0], found
    # file:line:col of the step, below the head
    line = textwrap.dedent(HEAD).count("\n") + 1
    assert found[0].startswith(f"nested.yaml:{line}:"), found


def test_the_models_are_the_models_modules() -> None:
    for name in models_viommu.__all__:
        cls = getattr(models_viommu, name)
        assert getattr(models, name) is cls
        assert cls.__module__ == "vfio_scenario.language.models"
    step = models.AllocViommu(iommu="iommu", device=1, hwpt="parent", data=0xBEEF)
    assert pickle.loads(pickle.dumps(step)) == step
