"""The scenario library run for real in the testbed, and `vfio-scenario run` end to end.

The library runs in the session's VM through the same host orchestration as the
`run` command (guest engine streaming events, report sink), as `--jobs auto` runs it
(one VM per core: the session's and VMs of its own); the CLI test boots a VM of its
own, as a user's first `vfio-scenario run` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.drivers.base import registered_drivers
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.report.sink import ReportSink
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run.dispatch import known_issues_for
from vfio_scenario.run.parallel import (
    boot_testbeds,
    mem_available_mib,
    run_in_testbeds,
    vm_memory_mib,
)
from vfio_scenario.run.testbed_run import run_in_testbed
from vfio_scenario.testbed import Testbed

from tests.helpers import skips
from tests.helpers.reports import assert_valid_junit

REPO = Path(__file__).resolve().parents[2]


def run_library(testbed: Any, cases: list[Any], documents: list[Any], on_event: Any) -> None:
    """The library as `run --jobs auto` runs it: in the session's VM and, on a host with
    more cores, VMs of its own beside it (tests/testbed/test_jobs.py: the same results)."""
    jobs = len(os.sched_getaffinity(0))
    options: dict[str, Any] = {"devices": [], "iommu_modes": [], "timeout_multiplier": 1.0,
                               "fail_fast": False}
    if jobs == 1:
        run_in_testbed(testbed, cases, documents, on_event, **options)
        return
    memory = f"{vm_memory_mib(jobs, mem_available_mib())}M"
    extra, release = boot_testbeds(lambda: Testbed(kernel=testbed.kernel_spec, memory=memory),
                                   jobs - 1)
    try:
        run_in_testbeds([testbed, *extra], cases, documents, on_event, **options)
    finally:
        for bed in extra:
            bed.stop()
        release()


@pytest.mark.testbed
def test_library_passes_or_skips_with_reasons_and_junit_is_valid(
        testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    compiled = compile_paths(["scenarios"])
    cases = compiled.cases
    junit = tmp_path / "junit.xml"
    with open(os.devnull, "w") as quiet:
        sink = ReportSink(junit_xml=str(junit), json_path=str(tmp_path / "run.json"),
                          journal=str(tmp_path / "journal.jsonl"), total=len(cases),
                          stream=quiet)

        planned: list[str] = []
        # the scenarios' own known issues (7.2 bugs the library pins), applied as `run` does
        known = known_issues_for(cases, None)
        kernel_release = {"testbed_kernel": testbed.kernel_release}

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "result":
                result = CaseResult.from_dict(event["result"])
                known.apply(result, kernel_release)
                sink.add(result)
            elif event["event"] == "plan":
                planned.extend(event["ids"])
                sink.replan(event["ids"])

        run_library(testbed, cases, compiled.documents, on_event)
        sink.close()
    results = sink.run.cases
    # compiled for the guest's devices: the `driver` axis holds the drivers they have
    assert sorted(c.case_id for c in results) == sorted(planned)
    assert set(planned) <= {c.id for c in cases}
    bad = [f"{c.case_id}: {c.outcome.name} {c.message}\n{c.log[-2000:]}" for c in results
           if c.outcome in (Outcome.FAIL, Outcome.ERROR) and not c.known_issue]
    assert bad == [], "\n".join(bad)
    # a known issue is a failure the scenario predicts, not a pass nor an error
    assert all(c.outcome is Outcome.FAIL for c in results if c.known_issue)
    skipped = [c for c in results if c.outcome is Outcome.SKIP]
    assert all(c.message for c in skipped), "a skip without its reason"
    # every skip, and every file's case count, as pinned in tests/data/expected-skips.yaml
    # (how to regenerate it: tests/helpers/skips.py); a kernel given as a PATH has no list
    kernel = os.environ.get("VFIO_SCENARIO_TESTBED_KERNEL", "default")
    if kernel in skips.KERNELS:
        problems = skips.check([(c.case_id, c.outcome.value, c.message) for c in results],
                               kernel, planned)
        assert problems == [], "\n".join(problems)
    passed = {c.case_id for c in results if c.outcome is Outcome.PASS}
    # the README's example and the IOMMU fault checks run in every mode of the default kernel
    drivers = ["edu", "nvme"] + (["igb"] if "igb" in registered_drivers() else [])
    for mode in ("vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
                 "iommufd_compat_type1v2", "iommufd"):
        for driver in drivers:
            assert "scenarios/driver/memcpy.yaml::driver-memcpy" \
                f"[driver={driver},iommu_mode={mode},size=max]" in passed
        assert f"scenarios/driver/iommu-faults.yaml::dma-to-unmapped-iova[iommu_mode={mode}]" \
            in passed
    # the driver port runs on every scenario driver of the testbed's devices, all cases
    port = "scenarios/kselftest/vfio_pci_driver_test.yaml::"
    for driver in drivers:
        ran = [c for c in results if c.case_id.startswith(port) and f"driver={driver}," in c.case_id]
        assert len(ran) == 7 * 5 and all(c.outcome is Outcome.PASS for c in ran), driver
    # where scenarios/README.md says the reset and MSI-X cases run: the testbed's nvme
    ran_on: dict[str, set[str]] = {}
    for c in results:
        if c.outcome is Outcome.PASS:
            ran_on.setdefault(c.case_id.split("[")[0], set()).add(
                c.properties.get("vendor_device", ""))
    for name in ("kselftest/vfio_pci_device_test.yaml::device-reset",
                 "kselftest/vfio_pci_device_test.yaml::irq-msix-enable-trigger-disable",
                 "device/reset.yaml::reset", "device/interrupts.yaml::msix"):
        assert ran_on.get(f"scenarios/{name}") == {"1b36:0010"}, name
    assert ran_on.get("scenarios/sriov/vf-token.yaml::sriov-vf-interrupts-and-reset") == \
        {"8086:10c9"}
    root = assert_valid_junit(junit)
    assert int(root.get("tests", "0")) == len(planned)
    assert int(root.get("failures", "0")) == 0 and int(root.get("errors", "0")) == 0
    json.loads((tmp_path / "run.json").read_text())


@pytest.mark.testbed
def test_run_command_end_to_end_writes_reports_and_exit_status(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "vfio_scenario", "run", "scenarios/host", "scenarios/device/config-space.yaml",
         "--junit-xml", str(junit), "--html", str(tmp_path / "report.html")],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "where testbed" in lines[0] and "accelerator" in lines[0]
    assert lines[-1].startswith("10 passed, 0 failed, 0 skipped, 0 errors in ")
    root = assert_valid_junit(junit)
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["vendor_device"] == "1234:11e8"
    assert props["vfio_driver"] == "vfio-pci"
    assert props["accelerator"] in ("tcg", "kvm")
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
