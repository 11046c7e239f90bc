"""What the iommufd port checks of mappings and memory, against the testbed kernel's mock
IOMMU: MD_CHECK_MAP, buffers partly unmapped (munmap), truncated or aligned, the IOVA the
kernel picks; and the operations on top of them (run/ops/iommufd_check.py), whose checks
must fail where the kernel's answer says they should."""

from __future__ import annotations

import pytest
from vfio_scenario.results import Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import operations
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi.buffers import DmaBuffer, unmap_range
from vfio_scenario.uapi.capabilities import HostCapabilities
from vfio_scenario.uapi.iommufd import Iommufd

from tests.helpers.errnos import errno_of
from tests.helpers.scenarios import compile_text

MiB = 1 << 20


def test_check_map_accepts_the_mapped_pages_and_refuses_others(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    dev = mock.mock_domain(mock_iommufd.fd, ioas.id)
    with DmaBuffer(4 * 4096, "shared") as buf:
        mapping = ioas.map(buf.addr + 4096, 8192, None)
        mock.check_map(mock_iommufd.fd, dev.hwpt_id, mapping.iova, 8192, buf.addr + 4096)
        # another page of the process, an IOVA past the mapping: the kernel says EINVAL
        assert errno_of(mock.check_map, mock_iommufd.fd, dev.hwpt_id, mapping.iova, 8192,
                        buf.addr) == "EINVAL"
        assert errno_of(mock.check_map, mock_iommufd.fd, dev.hwpt_id, mapping.iova + 8192, 4096,
                        buf.addr + 3 * 4096) == "EINVAL"
        mapping.unmap()


def test_a_half_unmapped_buffer_is_efault_to_map(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    mock.mock_domain(mock_iommufd.fd, ioas.id)
    with DmaBuffer(8 * 4096, "shared") as buf:
        assert errno_of(unmap_range, buf, 4096 + 1, 4096) == "EINVAL"  # munmap's own answer
        unmap_range(buf, 4 * 4096, 4 * 4096)
        assert errno_of(ioas.map, buf.addr, buf.size, None) == "EFAULT"
        ioas.map(buf.addr, 4 * 4096, None).unmap()  # the half still there maps
        unmap_range(buf, 0, 4 * 4096)
        assert errno_of(ioas.map, buf.addr, buf.size, None) == "EFAULT"


def test_a_truncated_memfd_is_einval_to_map_from_its_file(mock_iommufd: Iommufd) -> None:
    """With a mock domain the pages are pinned at map time: past the file's end is
    EINVAL. Without a domain nothing is pinned, and 7.2 maps past the end (seen here)."""
    import os

    bare = mock_iommufd.alloc_ioas()
    ioas = mock_iommufd.alloc_ioas()
    mock.mock_domain(mock_iommufd.fd, ioas.id)
    with DmaBuffer(8 * 4096, "memfd") as buf:
        bare.map_file(buf.fd, 0, buf.size + 1, None).unmap()
        assert errno_of(ioas.map_file, buf.fd, 0, buf.size + 1, None) == "EINVAL"
        ioas.map_file(buf.fd, 0, buf.size, None).unmap()
        os.ftruncate(buf.fd, 0)
        assert errno_of(ioas.map_file, buf.fd, 0, buf.size, None) == "EINVAL"


def test_the_kernel_aligns_its_iova_to_the_buffer_and_the_length(mock_iommufd: Iommufd) -> None:
    """The selftests' reserved_overflow needs the 2 MiB-aligned buffer: its 0x5000 bytes
    then need a 32 KiB-aligned IOVA, which the reserved range leaves none of; at an
    address only 4 KiB-aligned 7.2 finds room past the reserved range."""
    ioas = mock_iommufd.alloc_ioas()
    with DmaBuffer(64 * 1024, "shared", align=2 * MiB) as buf:
        assert buf.addr % (2 * MiB) == 0
        for pages in range(1, 11):
            length = 4096 * pages
            mapping = ioas.map(buf.addr, length, None)
            assert mapping.iova % (length & -length) == 0
            mapping.unmap()
        mock.add_reserved(mock_iommufd.fd, ioas.id, 6, 0xFFFFFFFFFFFF8001)
        assert errno_of(ioas.map, buf.addr, 0x5000, None) == "ENOSPC"
        mapping = ioas.map(buf.addr + 4096, 0x5000, None)
        assert mapping.iova > 6 + 0xFFFFFFFFFFFF8001
        mapping.unmap()


STEPS = """
    name: checks
    requires: {devices: 0, features: [iommufd, iommufd_test]}
    steps:
      - open_iommu: {mode: iommufd, default_ioas: false}
        as: iommu
      - alloc_ioas: {iommu: iommu}
        as: ioas
      - mock_domain: {iommu: iommu, pt: ioas}
        as: mock
      - alloc_buffer: {size: 64KiB, backing: shared, align: 2MiB}
        as: buf
      - map_dma: {ioas: ioas, buffer: buf, offset: 4KiB, size: 8KiB, iova: auto, iova_align: 8KiB, iova_within: {start: 0x1000000, last: 0x7fffffff}}
        as: m
      STEP
    teardown:
      - close_iommu: {iommu: iommu}
"""


@pytest.mark.parametrize(("step", "outcome", "message"), [
    ("- mock_check_map: {iommu: iommu, mock: mock, mapping: m}", Outcome.PASS, ""),
    ("- mock_check_map: {iommu: iommu, mock: mock, mapping: m, buffer: buf}", Outcome.FAIL,
     "failed with EINVAL"),
    ("- mock_check_refs: {iommu: iommu, buffer: buf, offset: 4KiB, size: 8KiB, refs: 1}",
     Outcome.PASS, ""),
    ("- mock_check_refs: {iommu: iommu, buffer: buf, offset: 12KiB, size: 4KiB, refs: 1}",
     Outcome.FAIL, "failed with EIO"),
    ("- map_dma: {ioas: ioas, buffer: buf, size: 4KiB, iova: auto, iova_within: {start: 0, last: 0xffffff}}",
     Outcome.FAIL, "not within [0x0, 0xffffff]"),
    ("- map_dma: {ioas: ioas, buffer: buf, size: 64KiB, iova: auto, iova_outside: {start: 0x1000000, size: 0x7f000000}}",
     Outcome.FAIL, "it overlaps [0x1000000, 0x80000000)"),
    (("- unmap_buffer: {buffer: buf, offset: 32KiB, size: 32KiB}\n"
     "      - map_dma: {ioas: ioas, buffer: buf, iova: auto}\n        expect: EFAULT"),
     Outcome.PASS, ""),
    ("- map_dma: {ioas: ioas, address: 0x80000000, size: 4KiB, iova: auto}", Outcome.FAIL,
     "failed with EFAULT"),
    ("- truncate_buffer: {buffer: buf, size: 0}", Outcome.FAIL, "not a memfd"),
])
def test_the_operations_pass_or_fail_by_the_kernels_answer(caps: HostCapabilities, step: str,
                                                           outcome: Outcome,
                                                           message: str) -> None:
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)
    (case,) = compile_text(STEPS.replace("STEP", step), "checks.yaml")
    result = execute_case(case, [], operations(), RunOptions())
    assert result.outcome is outcome, f"{result.message}\n{result.log}"
    assert message in result.message


def test_a_raw_address_maps_into_an_ioas_without_a_domain(caps: HostCapabilities) -> None:
    """No domain pins nothing at map time: 2 GiB, where nothing is mapped, maps (the
    selftests' area_auto_iova); with a mock domain the same map is EFAULT (above)."""
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)
    (case,) = compile_text("""
        name: raw
        requires: {devices: 0, features: [iommufd, iommufd_test]}
        steps:
          - open_iommu: {mode: iommufd, default_ioas: false}
            as: iommu
          - alloc_ioas: {iommu: iommu}
            as: ioas
          - map_dma: {ioas: ioas, address: 0x80000000, size: 40KiB, iova: auto, iova_align: 8KiB}
            as: m
          - unmap_dma: {mapping: m}
    """, "raw.yaml")
    result = execute_case(case, [], operations(), RunOptions())
    assert result.outcome is Outcome.PASS, f"{result.message}\n{result.log}"
