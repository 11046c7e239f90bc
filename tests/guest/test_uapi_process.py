"""Processes of a case against the testbed kernel: `fork` (steps with `process:`), `join`,
`drop_capability`, and `assert_locked_vm`'s counters of this process and of its parent.

Each case goes through the forked executor, as `vfio-scenario run` runs it; the iommufd
cases need the mock (CONFIG_IOMMUFD_TEST) and skip without it.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import operations
from vfio_scenario.uapi import process
from vfio_scenario.uapi.capabilities import HostCapabilities

from tests.helpers.scenarios import compile_text

CAP_IPC_LOCK = process.CAPABILITIES.index("CAP_IPC_LOCK")


def run(text: str) -> CaseResult:
    cases: list[Case] = compile_text(text, "process-test.yaml")
    assert len(cases) == 1
    return execute_case(cases[0], [], operations(), RunOptions())


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapEff line")


def test_drop_effective_clears_the_bit_the_kernel_reports_and_keeps_it_permitted() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # in a child: the test process keeps its capabilities
        before = _cap_eff()
        process.drop_effective(CAP_IPC_LOCK)
        after = _cap_eff()
        ok = (before >> CAP_IPC_LOCK & 1 and not after >> CAP_IPC_LOCK & 1
              and after == before & ~(1 << CAP_IPC_LOCK)
              and process.effective_capabilities() == after)
        os.write(write, b"1" if ok else f"{before:#x} {after:#x}".encode())
        os._exit(0)
    os.close(write)
    answer = os.read(read, 100)
    os.waitpid(pid, 0)
    assert answer == b"1", answer


def test_status_bytes_reads_vmlck_of_this_process_and_of_a_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.mmap(-1, 8192)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    base = process.status_bytes("VmLck")
    assert libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(8192)) == 0
    try:
        assert process.status_bytes("VmLck") == base + 8192
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # mlock is not inherited: the child reads 0 of its own
            seen = (process.status_bytes("VmLck", process.parent_pid()),
                    process.status_bytes("VmLck"))
            os.write(write, repr(seen).encode())
            os._exit(0)
        os.close(write)
        answer = os.read(read, 100)
        os.waitpid(pid, 0)
        assert answer == repr((base + 8192, 0)).encode()
    finally:
        libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(8192))
        del addr
        page.close()


FORK_GONE = """
name: fork-gone
requires: {devices: 0, features: [iommufd, iommufd_test]}
steps:
  - open_iommu: {mode: iommufd, default_ioas: false}
    as: iommu
  - alloc_ioas: {iommu: iommu}
    as: ioas
  - alloc_buffer: {size: 64KiB}
    as: buffer
  - fork: {}
    as: child
  - map_dma: {ioas: ioas, buffer: buffer, iova: 0x1000000}
    process: child
  - assert_locked_vm: {pinned: 0}
    process: child
  - join: {process: child}
  - mock_domain: {iommu: iommu, pt: ioas}
    expect: EFAULT
teardown:
  - close_iommu: {iommu: iommu}
  - mock_check_refs: {buffer: buffer}
"""


def test_a_child_maps_with_its_own_mm_which_is_gone_after_join(caps: HostCapabilities) -> None:
    """With no domain nothing is pinned at map time; once the child that mapped the
    buffer has exited, a mock domain cannot pin its pages: EFAULT (the C fork_gone's
    no_domain branch). In the parent's own mm the same attach succeeds."""
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)
    result = run(FORK_GONE)
    assert result.outcome is Outcome.PASS, result.message
    by_op = {s.op: s for s in result.steps}
    child = by_op["map_dma"].process
    assert child.startswith("child (pid ") and by_op["assert_locked_vm"].process == child
    assert by_op["join"].process.startswith("case (pid ")
    assert by_op["mock_domain"].actual == "EFAULT"
    # no fork (a child left running would hold the iommufd open past close_iommu)
    same = run(FORK_GONE.replace("    process: child\n", "").replace(
        "  - join: {process: child}\n", "").replace("    expect: EFAULT\n", "").replace(
        "  - fork: {}\n    as: child\n", ""))
    assert same.outcome is Outcome.PASS, same.message


def test_a_failing_child_step_fails_the_case_there_and_the_child_is_reaped() -> None:
    result = run("""
name: child-fails
requires: {devices: 0}
steps:
  - fork: {}
    as: child
  - assert_locked_vm: {pinned: 1GiB}
    process: child
  - sleep: {duration: 1ms}
""")
    assert result.outcome is Outcome.FAIL
    failed = result.steps[-1]
    assert failed.op == "assert_locked_vm" and failed.process.startswith("child (pid ")
    assert "expected 1GiB" in failed.message and "this process has VmPin 0" in failed.message
    assert "step 2 `assert_locked_vm`" in result.message
    pid = int(failed.process.split("pid ")[1].rstrip(")"))
    with pytest.raises(ChildProcessError):  # reaped by the case's releases
        os.waitpid(pid, os.WNOHANG)
    assert not os.path.exists(f"/proc/{pid}")


SWEEP = """
name: sweep
requires: {devices: 0, features: [iommufd, iommufd_test]}
steps:
  - open_iommu: {mode: iommufd, default_ioas: false}
    as: iommu
  - fail_nth: {}
  - alloc_ioas: {iommu: iommu}
teardown:
  - close_iommu: {iommu: iommu}
"""


def test_a_sweep_reaches_the_kernels_fault_sites_and_sets_debugfs_back(
        caps: HostCapabilities) -> None:
    if not caps.features["iommufd_test"]:
        pytest.skip(caps.features["iommufd_test"].reason)
    attribute = "/sys/kernel/debug/failslab/ignore-gfp-wait"
    if not os.path.exists(attribute):
        pytest.skip("no failslab in this kernel")
    with open(attribute) as f:
        before = f.read()
    result = run(SWEEP)
    assert result.outcome is Outcome.PASS, result.message
    note = next(s.message for s in result.steps if s.op == "fail_nth")
    # IOMMU_IOAS_ALLOC allocates: at least one run was refused with ENOMEM
    assert note.startswith("swept n = 1 … ") and "ENOMEM" in note, note
    with open(attribute) as f:
        assert f.read() == before
