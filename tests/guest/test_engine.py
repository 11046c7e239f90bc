"""The engine against the real kernel, inside the testbed: interpreter, isolation, planner.

Runs in the VM (see conftest.py): every case goes through the same forked executor
and the same operations as `vfio-scenario run`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.results import Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import operations
from vfio_scenario.run.plan import plan
from vfio_scenario.run.probe import probe_host
from vfio_scenario.run.session import run_planned
from vfio_scenario.uapi import sysfs

from tests.helpers.scenarios import compile_text

ROOT = Path(__file__).resolve().parents[2]


def cases_of(text: str) -> list[Case]:
    return compile_text(text, "engine-test.yaml")


def runnable(cases: list[Case]) -> list[tuple[Case, list[str]]]:
    """(case, device BDFs) of every case the planner lets run on this kernel."""
    caps = probe_host()
    planned = plan(cases, caps)
    return [(pc.case, [d.bdf for d in pc.devices]) for pc in planned if pc.skip is None]


def compiled_for_this_host(path: Path) -> list[Case]:
    """`path` compiled as a run compiles it: for this host's devices, each with the limits
    its driver's init reports (the `driver` axis holds their drivers)."""
    from vfio_scenario.run.driverfacts import device_names

    compiled = compile_paths([str(path)], device_names(probe_host().devices))
    assert compiled.errors == []
    return compiled.cases


def test_design_example_passes_in_every_mode_the_kernel_has(edu_bdf: str) -> None:
    cases = compiled_for_this_host(ROOT / "scenarios" / "driver" / "memcpy.yaml")
    todo = runnable(cases)
    modes = {c.iommu_mode for c, _ in todo}
    assert "vfio_type1v2_iommu" in modes
    # on every driver of the testbed's devices, its largest copy its own maximum
    assert {c.params["driver"] for c, _ in todo} >= {"edu", "nvme"}
    for case, devices in todo:
        result = execute_case(case, devices, operations(), RunOptions())
        assert result.outcome is Outcome.PASS, f"{case.id}: {result.message}\n{result.log}"


def test_misaligned_map_expecting_einval_passes_and_a_wrong_expectation_names_its_line(
        edu_bdf: str) -> None:
    cases = cases_of("""
        name: misaligned
        matrix: {iommu_mode: [vfio_type1v2_iommu]}
        steps:
          - open_iommu: {}
            as: iommu
          - open_device: {iommu: iommu}
            as: dev
          - alloc_buffer: {size: 8KiB}
            as: buf
          - map_dma: {iommu: iommu, buffer: buf, iova: 0x100001, size: 4KiB}
            expect: EINVAL
          - map_dma: {iommu: iommu, buffer: buf, iova: 0x100003, size: 4KiB}
            name: wrongly expects EBUSY
            expect: EBUSY
    """)
    ((case, devices),) = runnable(cases)
    result = execute_case(case, devices, operations(), RunOptions())
    assert [s.outcome for s in result.steps] == [Outcome.PASS] * 4 + [Outcome.FAIL]
    assert result.outcome is Outcome.FAIL
    assert result.location == "engine-test.yaml:13"
    assert result.message.startswith("step 5 `wrongly expects EBUSY` (engine-test.yaml:13): ")
    assert result.steps[4].actual == "EINVAL"


CRASHES = """
- name: segfault-holding-the-device
  matrix: {iommu_mode: [vfio_type1v2_iommu]}
  steps:
    - open_iommu: {}
      as: iommu
    - open_device: {iommu: iommu}
      as: dev
    - reset: {device: dev}
      name: crash
- name: hang-holding-the-device
  matrix: {iommu_mode: [iommufd, vfio_type1v2_iommu]}
  timeout: 2s
  steps:
    - open_iommu: {}
      as: iommu
    - open_device: {iommu: iommu}
      as: dev
    - send_msi: {device: dev}
      name: hang
- name: unexpected-sigbus
  matrix: {iommu_mode: [vfio_type1v2_iommu]}
  steps:
    - open_iommu: {}
      as: iommu
    - open_device: {iommu: iommu}
      as: dev
    - bar_mmap: {device: dev, size: 4KiB}
      as: regs
    - config_write: {device: dev, offset: 0x4, width: 2, value: 0}
    - access: {mmio: regs, offset: 0, width: 4}
- name: reopen-after-all-that
  matrix: {iommu_mode: [vfio_type1v2_iommu]}
  steps:
    - open_iommu: {}
      as: iommu
    - open_device: {iommu: iommu}
      as: dev
    - bar_read: {device: dev, offset: 0, width: 4, equals: 0x010000ed}
"""


def test_segfault_hang_and_unexpected_sigbus_are_errors_and_the_device_works_after(
        edu_bdf: str) -> None:
    ops: dict[str, Any] = operations()

    def segfault(rt: Any, args: Any, step: Any) -> None:
        ctypes.string_at(0)

    def hang(rt: Any, args: Any, step: Any) -> None:
        import time

        while True:
            time.sleep(1)

    ops.update(reset=segfault, send_msi=hang)
    results = {}
    for case, devices in runnable(cases_of(CRASHES)):
        results[case.id.split("::")[1]] = execute_case(case, devices, ops, RunOptions())
    seg = results["segfault-holding-the-device[iommu_mode=vfio_type1v2_iommu]"]
    assert seg.outcome is Outcome.ERROR
    assert seg.message == "case process killed by SIGSEGV during step 3 `crash`"
    hung = [r for k, r in results.items() if k.startswith("hang-holding")]
    assert hung and all(r.outcome is Outcome.ERROR for r in hung)
    assert all(r.message == "case timed out after 2s during step 3 `hang`" for r in hung)
    bus = results["unexpected-sigbus[iommu_mode=vfio_type1v2_iommu]"]
    assert bus.outcome is Outcome.ERROR
    assert bus.steps[-1].actual == "SIGBUS"
    again = results["reopen-after-all-that[iommu_mode=vfio_type1v2_iommu]"]
    assert again.outcome is Outcome.PASS, again.message


def test_run_leaves_every_device_bound_as_it_found_it(edu_bdf: str) -> None:
    caps = probe_host()
    before = {d.bdf: sysfs.bound_driver(d.bdf) for d in caps.devices}
    compiled = compile_paths([str(ROOT / "scenarios" / "device")])
    events: list[dict[str, Any]] = []
    run_planned(plan(compiled.cases, caps), caps, RunOptions(), events.append)
    results = [e["result"] for e in events if e["event"] == "result"]
    assert len(results) == len(compiled.cases)
    bad = [(r["case_id"], r["message"]) for r in results if r["outcome"] in ("fail", "error")]
    assert bad == []
    assert {bdf: sysfs.bound_driver(bdf) for bdf in before} == before


@pytest.mark.parametrize("name", ["dma-from-unmapped-iova", "dma-to-unmapped-iova",
                                  "dma-write-to-read-only-mapping"])
def test_iommu_faults_are_caught_and_memory_is_untouched(edu_bdf: str, name: str) -> None:
    compiled = compile_paths([str(ROOT / "scenarios" / "driver" / "iommu-faults.yaml")])
    todo = [(c, d) for c, d in runnable(compiled.cases) if c.scenario == name]
    assert todo
    for case, devices in todo:
        result = execute_case(case, devices, operations(), RunOptions())
        assert result.outcome is Outcome.PASS, f"{case.id}: {result.message}\n{result.log}"


def test_devices_command_lists_both_edu_with_group_binding_and_driver(edu_bdf: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vfio_scenario", "devices"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    edus = [r for r in rows if r[1] == "1234:11e8"]
    assert len(edus) >= 2
    for bdf, _ids, _cls, group, bound, driver, status in edus:
        assert group == str(sysfs.iommu_group(bdf))
        assert (bound, driver, status) == ("vfio-pci", "edu", "testbed")


def test_an_allocated_iova_avoids_one_the_scenario_placed(edu_bdf: str) -> None:
    """A map_dma at an explicit IOVA, then two without one (the engine's allocator), in
    both backends: the kernel accepts every map (none EEXIST: the allocated IOVAs step
    over 0x100000 and 0x300000, where natural alignment would have put them)."""
    cases = cases_of("""
        name: placed-then-allocated
        matrix: {iommu_mode: [vfio_type1v2_iommu, iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - open_device: {iommu: iommu}
            as: dev
          - alloc_buffer: {size: 1MiB}
            as: a
          - alloc_buffer: {size: 1MiB}
            as: b
          - alloc_buffer: {size: 1MiB}
            as: c
          - map_dma: {iommu: iommu, buffer: a, iova: 0x100000}
          - map_dma: {iommu: iommu, buffer: b}
            as: mb
          - map_dma: {iommu: iommu, buffer: c, iova: 0x300000}
          - map_dma: {iommu: iommu, buffer: c, size: 4KiB}
            as: mc
    """)
    todo = runnable(cases)
    assert {c.iommu_mode for c, _ in todo} == {"vfio_type1v2_iommu", "iommufd"}
    for case, devices in todo:
        result = execute_case(case, devices, operations(), RunOptions())
        assert result.outcome is Outcome.PASS, f"{case.id}: {result.message}\n{result.log}"
