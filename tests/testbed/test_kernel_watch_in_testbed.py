"""The kernel watch against real splats provoked from outside a running case.

While the guest engine runs a case, the host runs a second command in the guest (the
agent serves several) that provokes a splat through LKDTM
(/sys/kernel/debug/provoke-crash/DIRECT, in our default kernel): the case must become
an ERROR naming the splat, the next case must pass, the reports must stay valid, and
the splat's stack must decode with the kernel's vmlinux. The same from inside the
guest: tests/guest/test_kernel_watch.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.results import CaseResult, RunResult
from vfio_scenario.run.testbed_run import run_in_testbed
from vfio_scenario.testbed import Testbed

from tests.helpers.kunit import kunit_parser, parse_ktap
from tests.helpers.reports import assert_valid_junit

pytestmark = pytest.mark.testbed

DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"

TWO_CASES = """
    - name: sleeper
      requires: {devices: 0}
      steps:
        - sleep: {duration: 8s}
    - name: after
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
"""


def run_provoking(testbed: Any, tmp_path: Path, text: str,
                  provoke: str) -> list[CaseResult]:
    """Run the cases of `text` in `testbed`; when `sleeper` starts, the host runs
    `provoke` (a shell command) in the guest, outside the case."""
    scenario = tmp_path / "watch.yaml"
    scenario.write_text(textwrap.dedent(text))
    compiled = compile_paths([str(scenario)])
    assert not compiled.errors
    results: list[CaseResult] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "start" and event["id"].endswith("::sleeper"):
            out = testbed.run(["sh", "-c", provoke], timeout=120)
            assert out.returncode == 0, out.stderr
        elif event.get("event") == "result":
            results.append(CaseResult.from_dict(event["result"]))

    run_in_testbed(testbed, compiled.cases, compiled.documents, on_event, devices=[],
                   iommu_modes=[], timeout_multiplier=1.0, fail_fast=False)
    return results


def test_a_warning_from_outside_is_the_running_cases_error_and_reports_stay_valid(
        testbed: Any, tmp_path: Path) -> None:
    results = run_provoking(testbed, tmp_path, TWO_CASES, f"echo WARNING > {DIRECT}")
    assert [(r.scenario, r.outcome.value) for r in results] == [("sleeper", "error"),
                                                                ("after", "pass")]
    sleeper = results[0]
    assert sleeper.message.startswith("kernel warning during the case: WARNING: "
                                      "drivers/misc/lkdtm/bugs.c:"), sleeper.message
    [splat] = sleeper.kernel_splats
    assert splat["kind"] == "warning" and "lkdtm_WARNING+" in splat["title"]
    assert "Call Trace:" in splat["text"] and splat["text"] in sleeper.log

    run = RunResult(cases=results, duration=10.0, properties={"kernel": testbed.kernel_release})
    root = assert_valid_junit(junit_document(run))
    error = root.find(".//testcase[@name='sleeper']/error")
    assert error is not None and error.get("message", "").startswith("kernel warning during")
    assert "---[ end trace" in (error.text or "")
    parsed: Any = parse_ktap(ktap_document(run))
    assert parsed.counts.errors == 0  # kunit_tool reads it without a protocol complaint
    statuses = [t.status for t in parsed.subtests[0].subtests]
    assert statuses == [kunit_parser().TestStatus.FAILURE, kunit_parser().TestStatus.SUCCESS]


def test_the_splat_decodes_to_source_lines_with_the_kernels_vmlinux(
        testbed: Any, tmp_path: Path) -> None:
    from vfio_scenario.run.symbolize import symbolize_result, symbolizer

    assert testbed.vmlinux is not None, "the default kernel's build keeps its vmlinux"
    results = run_provoking(testbed, tmp_path, TWO_CASES[:TWO_CASES.index("- name: after")],
                            f"echo WARNING > {DIRECT}")
    [sleeper] = results
    decode = symbolizer(testbed.vmlinux)
    assert decode is not None
    raw = sleeper.kernel_splats[0]["text"]
    symbolize_result(sleeper, decode)
    decoded = sleeper.kernel_splats[0]["text"]
    assert sleeper.kernel_splats[0]["symbolized"] is True and decoded in sleeper.log
    # the RIP and the stack lines now name their source lines, `func (file:line)`, and
    # the Code: bytes are disassembled
    lines = decoded.splitlines()
    assert any(line.startswith("RIP: 0010:lkdtm_WARNING (drivers/misc/lkdtm/bugs.c:")
               for line in lines), decoded
    assert any("direct_entry (drivers/misc/lkdtm/core.c:" in line for line in lines), decoded
    assert any("<-- trapping instruction" in line for line in lines), decoded
    assert "(drivers/" not in raw


def test_a_hung_task_is_the_running_cases_error(tmp_path: Path) -> None:
    # LKDTM's HUNG_TASK leaves its writer in D state for good, and the detector would
    # report it again and again: its own VM, not the session's
    with Testbed(devices=()) as testbed:
        # report tasks blocked for a second; once the report is out, stop checking (0),
        # so the task stuck for good is not reported again in the next case
        provoke = ("echo 1 > /proc/sys/kernel/hung_task_timeout_secs; "
                   f"(echo HUNG_TASK > {DIRECT} &) </dev/null >/dev/null 2>&1; "
                   "for i in $(seq 100); do dmesg | grep -q 'blocked for more than' && break; "
                   "sleep 0.2; done; echo 0 > /proc/sys/kernel/hung_task_timeout_secs")
        results = run_provoking(testbed, tmp_path, TWO_CASES, provoke)
    assert [(r.scenario, r.outcome.value) for r in results] == [("sleeper", "error"),
                                                                ("after", "pass")]
    assert results[0].message.startswith("kernel hung_task during the case: INFO: task sh:"), \
        results[0].message
    assert "blocked for more than 1 seconds" in results[0].message
