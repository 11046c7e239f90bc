"""The JSON report: every case and step with timings, readable back."""

from __future__ import annotations

import json

from vfio_scenario.report.jsonout import json_document, json_report
from vfio_scenario.results import RunResult

from tests.helpers.reports import nasty_text, sample_run


def test_json_report_holds_every_case_and_step_with_timings() -> None:
    run = sample_run()
    doc = json.loads(json_document(run))
    assert doc["schema"] == "vfio-scenario-results" and doc["schema_version"] == 1
    assert doc["total"] == 5
    assert doc["counts"] == {"pass": 2, "fail": 1, "skip": 1, "error": 1}
    assert [c["case_id"] for c in doc["cases"]] == [c.case_id for c in run.cases]
    assert doc["cases"][1]["steps"][3] == {
        "index": 3, "op": "map_dma", "name": "map_dma", "location": "scenarios/dma/map.yaml:15",
        "outcome": "fail", "duration": 0.0005, "repeat": 1, "expected": "ok", "actual": "EINVAL",
        "message": "VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)",
        "teardown": False}
    assert RunResult.from_dict(doc).to_dict() == run.to_dict()


def test_hostile_text_round_trips_exactly() -> None:
    run = sample_run()
    run.cases[1].message = nasty_text()
    run.cases[4].log = nasty_text() * 3
    text = json_document(run)
    assert text.isascii()  # lone surrogates cannot break the encoding
    assert RunResult.from_dict(json.loads(text)).cases[1].message == nasty_text()


def test_a_10_mb_log_is_kept_whole() -> None:
    run = sample_run()
    run.cases[4].log = "x" * (10 * 1024 * 1024) + "END"
    doc = json.loads(json_document(run))
    assert len(doc["cases"][4]["log"]) == 10 * 1024 * 1024 + 3


def test_zero_cases() -> None:
    assert json_report(RunResult()) == {
        "schema": "vfio-scenario-results", "schema_version": 1, "total": 0,
        "counts": {"pass": 0, "fail": 0, "skip": 0, "error": 0},
        "started": 0.0, "duration": 0.0, "properties": {}, "cases": []}
