"""Every writer and `report merge` over results recorded from real testbed runs
(tests/data/recorded/README says how they were made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.report.html import html_document
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.report.merge import load_results
from vfio_scenario.results import Outcome, RunResult

from tests.helpers.kunit import parse_ktap
from tests.helpers.reports import assert_valid_junit

RECORDED = Path(__file__).resolve().parent.parent / "data" / "recorded"
FILES = ["testbed-shard1of8.journal.jsonl", "testbed-shard2of8.json",
         "testbed-timeouts.journal.jsonl"]


@pytest.fixture(params=FILES)
def recorded(request: pytest.FixtureRequest) -> RunResult:
    return load_results(RECORDED / request.param)


def test_recorded_runs_give_valid_junit_with_the_testbed_properties(recorded: RunResult) -> None:
    root = assert_valid_junit(junit_document(recorded))
    n = recorded.counts()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (
        str(len(recorded.cases)), str(n[Outcome.FAIL]), str(n[Outcome.ERROR]))
    for suite in root.iter("testsuite"):
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["accelerator"] == "tcg"
        assert props["kernel"] == "7.2.13-vfio-scenario"
        assert props["engine_version"] == "0.1.0"


def test_recorded_runs_parse_as_ktap_with_the_same_counts(recorded: RunResult) -> None:
    test = parse_ktap(ktap_document(recorded))
    n = recorded.counts()
    assert test.counts.errors == 0
    assert (test.counts.passed, test.counts.failed, test.counts.skipped) == (
        n[Outcome.PASS], n[Outcome.FAIL] + n[Outcome.ERROR], n[Outcome.SKIP])


def test_recorded_failure_and_errors_read_as_they_should() -> None:
    one = load_results(RECORDED / FILES[0])
    root = assert_valid_junit(junit_document(one))
    (failure,) = root.iter("failure")
    assert failure.get("message").startswith(
        "step 11 `expect_dmesg` at /work/main/scenarios/driver/iommu-faults.yaml:110: "
        "expected ok, got check failed: no kernel log line matches")
    timeouts = assert_valid_junit(junit_document(load_results(RECORDED / FILES[2])))
    assert [e.get("message") for e in timeouts.iter("error")] == [
        ("step 2 `sleep` at /work/main/reports/err/errors.yaml:6: expected ok, got timeout: "
        "step timed out after 0.5s"),
        "case timed out after 1s during step 1 `sleep`"]
    two = load_results(RECORDED / FILES[1])
    skips = [c.find("skipped").get("message")
             for c in assert_valid_junit(junit_document(two)).iter("testcase")
             if c.find("skipped") is not None]
    assert len(skips) == 2 and all(s.startswith("0 suitable device(s) of 1 needed") for s in skips)


def test_merging_the_recorded_shards(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    status = main(["report", "merge", *(str(RECORDED / f) for f in FILES),
                   "--junit-xml", str(out / "junit.xml"), "--json", str(out / "r.json"),
                   "--html", str(out / "r.html")])
    assert status == 1
    doc = json.loads((out / "r.json").read_text())
    assert doc["counts"] == {"pass": 38, "fail": 1, "skip": 2, "error": 2}
    assert doc["total"] == 43
    assert assert_valid_junit(out / "junit.xml").get("tests") == "43"
    assert html_document(load_results(out / "r.json")) == (out / "r.html").read_text()
