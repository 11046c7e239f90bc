"""`access_rw`'s IOVA form (`iova`, `length`, `buffer`) against the testbed kernel's
IOMMU_TEST_OP_ACCESS_RW: memory a forked child mapped, which the case's process names by
IOVA because it holds no handle of the child's mapping.

Each case goes through the forked executor, as `vfio-scenario run` runs it; they need the
mock (CONFIG_IOMMUFD_TEST) and skip without it. What the kernel answers here was tried
in the testbed first (2026-12-05, 7.2.13-vfio-scenario): an IOVA nothing maps is ENOENT,
for a read and a write; a range that runs past the end of the mapping is ENOENT too (a
write there first writes the bytes that are mapped); with no domain, once the child that mapped the memory is gone, ACCESS_RW is EFAULT.
"""

from __future__ import annotations

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.results import CaseResult, Outcome, StepResult
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import operations
from vfio_scenario.uapi.capabilities import HostCapabilities

from tests.helpers.scenarios import compile_text


@pytest.fixture(autouse=True)
def _needs_the_mock(caps: HostCapabilities) -> None:
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)


def run(text: str) -> CaseResult:
    cases: list[Case] = compile_text(text, "access-rw-iova-test.yaml")
    assert len(cases) == 1
    return execute_case(cases[0], [], operations(), RunOptions())


def steps_named(result: CaseResult, name: str) -> list[StepResult]:
    return [s for s in result.steps if s.name == name]


HEAD = """
name: iova-form
requires: {devices: 0, features: [iommufd, iommufd_test]}
steps:
  - open_iommu: {mode: iommufd, default_ioas: false}
    as: iommu
  - alloc_ioas: {iommu: iommu}
    as: ioas
  - alloc_buffer: {size: 64KiB, backing: BACKING}
    as: buffer
  - create_access: {ioas: ioas}
    as: access
  - fork: {}
    as: child
  - name: the child maps
    map_dma: {ioas: ioas, buffer: buffer, iova: 0x1000000}
    process: child
"""
TAIL = """
teardown:
  - destroy_access: {access: access}
  - close_iommu: {iommu: iommu}
  - mock_check_refs: {buffer: buffer}
"""


def child_mapped(body: str, backing: str = "shared") -> str:
    return HEAD.replace("BACKING", backing) + body + TAIL


def test_the_access_reads_and_writes_the_memory_a_child_mapped() -> None:
    """The sweep's own checks pass (each read brings the buffer's bytes, each write lands
    in it), and what the kernel wrote is then in memory for an independent reader: the
    buffer is shared memory, so the child's pages are the case's."""
    result = run(child_mapped("""
  - mock_domain: {iommu: iommu, pt: ioas}
  - fill: {buffer: buffer, pattern: random, seed: 3}
  - name: sweep
    access_rw: {access: access, iova: 0x1000000, length: 64KiB, buffer: buffer, offset: 4090,
                starts: 12, size: 1, max_size: 16, direction: read_then_write, slow_path: true}
  - name: whole
    access_rw: {access: access, iova: 0x1000000, length: 64KiB, buffer: buffer, size: 64KiB}
  - fill: {buffer: buffer, pattern: 0x5a}
  - name: write
    access_rw: {access: access, iova: 0x1000000, length: 64KiB, buffer: buffer, offset: 8192,
                size: 100, direction: write}
  - name: in the case's process
    assert_pattern: {buffer: buffer, offset: 8192, size: 100, pattern: 0xa5}
  - name: in the child
    assert_pattern: {buffer: buffer, offset: 8192, size: 100, pattern: 0xa5}
    process: child
  - name: around it
    assert_pattern: {buffer: buffer, offset: 8292, size: 100, pattern: 0x5a}
  - join: {process: child}
"""))
    assert result.outcome is Outcome.PASS, result.message
    for name in ("sweep", "whole", "write", "in the child", "around it"):
        assert [s.outcome for s in steps_named(result, name)] == [Outcome.PASS], name
    assert steps_named(result, "in the child")[0].process.startswith("child (pid ")


def test_memory_that_is_not_what_the_child_mapped_fails_the_read_check() -> None:
    """A private buffer: after the fork the case's `fill` writes its own copy of the
    pages, and the kernel reads the child's, so the bytes differ (the check reads what
    the kernel brought, not the engine's idea of it)."""
    result = run(child_mapped("""
  - mock_domain: {iommu: iommu, pt: ioas}
  - fill: {buffer: buffer, pattern: random, seed: 4}
  - name: read
    access_rw: {access: access, iova: 0x1000000, length: 64KiB, buffer: buffer, size: 64}
  - join: {process: child}
""", backing="anonymous"))
    assert result.outcome is Outcome.FAIL
    (read,) = steps_named(result, "read")
    assert read.outcome is Outcome.FAIL and read.actual == "check failed", read
    assert "read of 64 bytes at IOVA 0x1000000: the bytes read differ" in read.message


def test_an_iova_nothing_maps_is_the_kernels_enoent() -> None:
    result = run(child_mapped("""
  - name: read past the mapping
    access_rw: {access: access, iova: 0x1010000, length: 4KiB, buffer: buffer, size: 1}
    expect: ENOENT
  - name: write past the mapping
    access_rw: {access: access, iova: 0x1010000, length: 4KiB, buffer: buffer, size: 1,
                direction: write}
    expect: ENOENT
  - join: {process: child}
"""))
    assert result.outcome is Outcome.PASS, result.message
    for name in ("read past the mapping", "write past the mapping"):
        (step,) = steps_named(result, name)
        assert (step.outcome, step.actual) == (Outcome.PASS, "ENOENT"), step


def test_a_reach_past_the_buffer_is_the_engines_refusal_not_the_kernels() -> None:
    """`buffer` is the memory the check compares with: a sweep that would reach past it
    is refused before any call (a check, where the kernel would have said ENOENT)."""
    result = run(child_mapped("""
  - name: across
    access_rw: {access: access, iova: 0x1000000, length: 128KiB, buffer: buffer,
                offset: 65534, size: 4}
    expect: ENOENT
"""))
    (across,) = steps_named(result, "across")
    assert (across.outcome, across.actual) == (Outcome.FAIL, "check failed"), across
    assert "0xfffe+0x4 reaches past the 0x10000 bytes of buffer `buffer`" in across.message
    assert result.outcome is Outcome.FAIL


def test_a_range_across_the_mappings_end_is_enoent_and_an_unexpected_errno_fails() -> None:
    """The kernel writes what is mapped before it finds the gap: a write of 4 bytes from
    2 bytes before the end leaves the 2 mapped ones written, then says ENOENT."""
    text = child_mapped("""
  - name: across
    access_rw: {access: access, iova: 0x1000000, length: 128KiB, buffer: buffer,
                offset: 65534, size: 4}
    expect: ENOENT
  - fill: {buffer: buffer, pattern: 0x5a}
  - name: write across
    access_rw: {access: access, iova: 0x1000000, length: 128KiB, buffer: buffer,
                offset: 65534, size: 4, direction: write}
    expect: ENOENT
  - name: the mapped bytes are written
    assert_pattern: {buffer: buffer, offset: 65534, size: 2, pattern: 0xa5}
  - name: the rest not
    assert_pattern: {buffer: buffer, offset: 65536, size: 2, pattern: 0x5a}
  - name: unexpected
    access_rw: {access: access, iova: 0x2000000, length: 4KiB, buffer: buffer, size: 1}
  - join: {process: child}
""").replace("size: 64KiB, backing", "size: 128KiB, backing").replace(
        "buffer: buffer, iova: 0x1000000}", "buffer: buffer, iova: 0x1000000, size: 64KiB}")
    result = run(text)
    for name in ("across", "write across"):
        (step,) = steps_named(result, name)
        assert (step.outcome, step.actual) == (Outcome.PASS, "ENOENT"), step
    for name in ("the mapped bytes are written", "the rest not"):
        assert [s.outcome for s in steps_named(result, name)] == [Outcome.PASS], name
    (unexpected,) = steps_named(result, "unexpected")
    assert (unexpected.outcome, unexpected.actual) == (Outcome.FAIL, "ENOENT"), unexpected
    assert "IOMMU_TEST_OP_ACCESS_RW" in unexpected.message
    assert "read of 1 bytes at IOVA 0x2000000" in unexpected.message
    assert result.outcome is Outcome.FAIL


def test_without_a_domain_the_childs_memory_is_readable_until_it_is_gone() -> None:
    """No domain pins the pages: each ACCESS_RW reaches them through the child's address
    space, which `join` ends; then the kernel says EFAULT."""
    result = run(child_mapped("""
  - fill: {buffer: buffer, pattern: random, seed: 5}
  - name: child alive
    access_rw: {access: access, iova: 0x1000000, length: 64KiB, buffer: buffer, size: 64KiB}
  - join: {process: child}
  - name: child gone
    access_rw: {access: access, iova: 0x1000000, length: 64KiB, buffer: buffer, size: 64KiB}
    expect: EFAULT
"""))
    assert result.outcome is Outcome.PASS, result.message
    assert steps_named(result, "child gone")[0].actual == "EFAULT"
