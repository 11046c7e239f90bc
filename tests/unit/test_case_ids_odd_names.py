"""Case ids of a file whose own name holds the id's separators: `brack[et]::x.yaml`.

An id is `path::name[params]`; selection (-k), --resume and `report merge` treat ids as
whole strings, and the reports split them into file and case after the file's name.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.journal import Journal
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.report.describe import name_in_suite, split_case_id, suite_of
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.report.sink import ReportSink
from vfio_scenario.results import CaseResult, Outcome, RunResult
from vfio_scenario.run.dispatch import select

from tests.helpers.kunit import parse_ktap

ODD = "brack[et]::x.yaml"
TEXT = "matrix:\n  n: [1, 2]\nsteps:\n  - sleep: {duration: 1ms}\n"


@pytest.fixture
def odd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("scen").mkdir()
    Path("scen", ODD).write_text(TEXT)
    compiled = compile_paths(["scen"])
    assert compiled.errors == []
    return [c.id for c in compiled.cases]


def test_the_ids_name_the_file_and_the_case(odd: list[str]) -> None:
    assert odd == ["scen/brack[et]::x.yaml::brack[et]::x[n=1]",
                   "scen/brack[et]::x.yaml::brack[et]::x[n=2]"]
    assert split_case_id(odd[0]) == ("scen/brack[et]::x.yaml", "brack[et]::x[n=1]")


def test_list_prints_them(odd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "scen"]) == 0
    assert capsys.readouterr().out.splitlines() == odd


@pytest.mark.parametrize(("expr", "chosen"), [
    ("'brack[et]::x[n=2]'", [1]), ("brack[et]::x", [0, 1]), ("x.yaml::brack", [0, 1]),
    ("not 'n=1]'", [1]), ("'[et]::x.yaml::'", [0, 1]),
])
def test_k_selects_by_the_whole_id(odd: list[str], expr: str, chosen: list[int]) -> None:
    cases = compile_paths(["scen"]).cases
    args = argparse.Namespace(keyword=expr, tag=None, shard=None)
    assert [c.id for c in select(cases, args)] == [odd[i] for i in chosen]


def _result(case_id: str, outcome: Outcome = Outcome.PASS) -> CaseResult:
    return CaseResult(case_id=case_id, file="scen/brack[et]::x.yaml", scenario="brack[et]::x",
                      outcome=outcome, started=1.0, duration=0.5)


def test_resume_knows_the_finished_case(odd: list[str], tmp_path: Path) -> None:
    journal = tmp_path / "reports" / "journal.jsonl"
    journal.parent.mkdir()
    j = Journal(journal)
    j.write_run(RunResult(cases=[], started=1.0))
    j.write_case(_result(odd[0]))
    j.close()
    sink = ReportSink(junit_xml=str(tmp_path / "reports" / "junit.xml"), journal=str(journal),
                      resume=True, total=2, planned=odd)
    assert sink.finished_ids() == {odd[0]}
    sink.close()


def test_reports_and_merge_keep_file_and_case_apart(odd: list[str], tmp_path: Path) -> None:
    one = RunResult(cases=[_result(odd[0])], started=1.0, duration=1.0)
    two = RunResult(cases=[_result(odd[1], Outcome.FAIL)], started=2.0, duration=1.0)
    (tmp_path / "one.json").write_text(json_document(one))
    (tmp_path / "two.json").write_text(json_document(two))
    out = tmp_path / "merged.xml"
    merged_json = tmp_path / "merged.json"
    assert main(["report", "merge", str(tmp_path / "one.json"), str(tmp_path / "two.json"),
                 "--junit-xml", str(out), "--json", str(merged_json)]) == 1
    cases = ET.parse(out).getroot().iter("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("scen.brack[et]::x", "brack[et]::x[n=1]"), ("scen.brack[et]::x", "brack[et]::x[n=2]")]
    assert [c["case_id"] for c in json.loads(merged_json.read_text())["cases"]] == odd
    for case in one.cases + two.cases:
        assert suite_of(case) == "scen/brack[et]::x.yaml"
        assert name_in_suite(case) == case.case_id.removeprefix("scen/brack[et]::x.yaml::")
    ktap = parse_ktap(ktap_document(RunResult(cases=one.cases + two.cases)))
    assert [t.name for t in ktap.subtests] == ["scen/brack[et]::x.yaml"]
    assert [t.name for t in ktap.subtests[0].subtests] == ["brack[et]::x[n=1]",
                                                            "brack[et]::x[n=2]"]
