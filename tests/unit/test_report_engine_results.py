"""Every writer over results the engine itself produced: the real interpreter and forked
executor run a scenario with fake operations (no hardware), and the reports must say
exactly what happened."""

from __future__ import annotations

import ctypes
import errno
import json
import time
from typing import Any

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.report.html import html_document
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.results import Outcome, RunResult
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import CheckFailed, RunOptions, Runtime, Skip

from tests.helpers.kunit import parse_ktap
from tests.helpers.reports import assert_valid_junit
from tests.helpers.scenarios import compile_text

SCENARIO = """\
- name: sleepy
  tags: [host]
  matrix:
    what: [ok, errno, check, skip, bug]
  steps:
    - sleep: {duration: 1ms}
      name: warm up
    - sleep: {duration: "{{ {'ok': '2ms', 'errno': '3ms', 'check': '4ms', 'skip': '5ms', 'bug': '6ms'}[what] }}"}
      name: the step
  teardown:
    - sleep: {duration: 1ms}
      name: cool down
- name: crash
  steps:
    - sleep: {duration: 1ms}
    - assert_not_tainted: {}
      name: crash here
- name: teardown-fails
  steps:
    - sleep: {duration: 1ms}
  teardown:
    - sleep: {duration: 3ms}
      name: release
"""


def fake_ops() -> dict[str, Any]:
    def sleep(rt: Runtime, args: Any, step: Any) -> None:
        d = round(args.duration * 1000)
        if d == 3:
            raise VfioError(errno.EINVAL, "VFIO_IOMMU_MAP_DMA", "iommu")
        if d == 4:
            raise CheckFailed("buffer differs at offset 0x10: 0xaa != 0x55")
        if d == 5:
            raise Skip("the host lacks CONFIG_FAKE")
        if d == 6:
            raise RuntimeError("bug in an operation")
        time.sleep(args.duration)

    def crash(rt: Runtime, args: Any, step: Any) -> None:
        ctypes.string_at(0)  # SIGSEGV in the forked child

    return {"sleep": sleep, "assert_not_tainted": crash}


@pytest.fixture(scope="module")
def run() -> RunResult:
    cases = [c for c in compile_text(SCENARIO, "scenarios/host/sleepy.yaml")
             if c.iommu_mode in (None, "iommufd")]
    results = [execute_case(c, [], fake_ops(), RunOptions()) for c in cases]
    return RunResult(cases=results, started=results[0].started, duration=1.0,
                     properties={"engine_version": "0.1.0", "where": "local"})


def by_what(run: RunResult) -> dict[str, Any]:
    return {c.params.get("what", c.scenario): c for c in run.cases}


def test_engine_results_are_what_the_reports_are_checked_against(run: RunResult) -> None:
    outcomes = {k: c.outcome for k, c in by_what(run).items()}
    assert outcomes == {"ok": Outcome.PASS, "errno": Outcome.FAIL, "check": Outcome.FAIL,
                        "skip": Outcome.SKIP, "bug": Outcome.ERROR, "crash": Outcome.ERROR,
                        "teardown-fails": Outcome.FAIL}


def test_junit_of_engine_results(run: RunResult) -> None:
    root = assert_valid_junit(junit_document(run))
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    assert {tc.get("classname") for tc in cases.values()} == {"scenarios.host.sleepy"}
    errno_case = next(tc for n, tc in cases.items() if "what=errno" in n)
    assert errno_case.find("failure").get("message") == (
        "step 2 `the step (sleep)` at scenarios/host/sleepy.yaml:8: expected ok, got EINVAL: "
        "VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)")
    check_case = next(tc for n, tc in cases.items() if "what=check" in n)
    assert check_case.find("failure").get("message") == (
        "step 2 `the step (sleep)` at scenarios/host/sleepy.yaml:8: expected ok, got check "
        "failed: buffer differs at offset 0x10: 0xaa != 0x55")
    steps = check_case.findtext("system-out").split("steps:\n")[1].splitlines()
    assert [line.split()[:2] for line in steps] == [["1", "PASS"], ["2", "FAIL"], ["T1", "PASS"]]
    assert "teardown cool down (sleep)" in steps[2]
    skip_case = next(tc for n, tc in cases.items() if "what=skip" in n)
    assert skip_case.find("skipped").get("message") == "the host lacks CONFIG_FAKE"
    bug_case = next(tc for n, tc in cases.items() if "what=bug" in n)
    assert bug_case.find("error").get("message") == (
        "step 2 `the step (sleep)` at scenarios/host/sleepy.yaml:8: expected ok, got "
        "RuntimeError: RuntimeError: bug in an operation")
    crash = cases["crash"]
    assert crash.find("error").get("message") == \
        "case process killed by SIGSEGV during step 2 `crash here`"
    line = SCENARIO.splitlines().index("    - sleep: {duration: 3ms}") + 1
    assert cases["teardown-fails"].find("failure").get("message") == (
        f"teardown step 1 `release (sleep)` at scenarios/host/sleepy.yaml:{line}: expected ok, "
        "got EINVAL: VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)")


def test_ktap_of_engine_results(run: RunResult) -> None:
    test = parse_ktap(ktap_document(run))
    assert test.counts.errors == 0
    (group,) = test.subtests
    assert group.name == "scenarios/host/sleepy.yaml"
    assert [(t.status.name, t.skip_reason) for t in group.subtests] == [
        ("SUCCESS", ""), ("FAILURE", ""), ("FAILURE", ""),
        ("SKIPPED", "the host lacks CONFIG_FAKE"), ("FAILURE", ""), ("FAILURE", ""),
        ("FAILURE", "")]


def test_json_and_html_of_engine_results(run: RunResult) -> None:
    doc = json.loads(json_document(run))
    assert doc["counts"] == {"pass": 1, "fail": 3, "skip": 1, "error": 2}
    assert RunResult.from_dict(doc).to_dict() == run.to_dict()
    page = html_document(run)
    assert [m for m in ("pass", "fail", "skip", "error")
            if f'id="count-{m}">' in page] == ["pass", "fail", "skip", "error"]
    assert page.count('<details class="case"') == 7
