"""`vfio-scenario report merge`: shard results joined into one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.journal import Journal
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.merge import load_results, merge_runs
from vfio_scenario.results import Outcome, RunResult
from vfio_scenario.select import shard

from tests.helpers.kunit import parse_ktap
from tests.helpers.reports import assert_valid_junit, sample_run


def shards_on_disk(tmp_path: Path) -> list[str]:
    """Shard 1 as a JSON report, shard 2 as a journal (as a killed shard leaves it)."""
    run = sample_run()
    ids = [c.case_id for c in run.cases]
    one = RunResult(cases=shard(ids, 1, 2, items=run.cases), started=100.0, duration=5.0,
                    properties={"kernel": "7.2.13", "accelerator": "tcg"})
    two = RunResult(cases=shard(ids, 2, 2, items=run.cases), started=101.0, duration=7.0,
                    properties={"kernel": "7.2.13", "accelerator": "kvm"})
    (tmp_path / "shard1.json").write_text(json_document(one))
    j = Journal(tmp_path / "journal.jsonl")
    j.write_run(two)
    for case in two.cases:
        j.write_case(case)
    j.close()
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"type": "case", "case": {"case_id": "tor')  # killed mid-write
    return [str(tmp_path / "shard1.json"), str(tmp_path / "journal.jsonl")]


def test_merge_joins_shards_into_junit_html_json_ktap(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    files = shards_on_disk(tmp_path)
    status = main(["report", "merge", *files, "--junit-xml", str(tmp_path / "all.xml"),
                   "--html", str(tmp_path / "all.html"), "--json", str(tmp_path / "all.json"),
                   "--ktap", str(tmp_path / "all.ktap")])
    assert status == 1  # the sample holds a failure and an error
    assert capsys.readouterr().out.startswith(
        "merged 2 files: 2 passed, 1 failed, 1 skipped, 1 errors in 8.00s")
    root = assert_valid_junit(tmp_path / "all.xml")
    assert root.get("tests") == "5"
    assert sorted(f"{s.get('name')}::{tc.get('name')}" for s in root.iter("testsuite")
                  for tc in s.iter("testcase")) == sorted(c.case_id for c in sample_run().cases)
    doc = json.loads((tmp_path / "all.json").read_text())
    assert doc["counts"] == {"pass": 2, "fail": 1, "skip": 1, "error": 1}
    assert doc["properties"] == {"kernel": "7.2.13", "accelerator": "tcg, kvm"}
    assert (doc["started"], doc["duration"]) == (100.0, 8.0)
    assert (tmp_path / "all.html").read_text().count('<details class="case"') == 5
    ktap = parse_ktap((tmp_path / "all.ktap").read_text())
    assert (ktap.counts.passed, ktap.counts.failed, ktap.counts.skipped) == (2, 2, 1)


def test_a_case_in_two_inputs_keeps_the_last_result() -> None:
    first, second = sample_run(), sample_run()
    second.cases = [second.cases[1]]
    second.cases[0].outcome = Outcome.PASS
    merged = merge_runs([first, second])
    assert [c.case_id for c in merged.cases] == [first.cases[i].case_id for i in (0, 2, 3, 4, 1)]
    assert merged.cases[-1].outcome is Outcome.PASS


def test_merge_needs_an_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = shards_on_disk(tmp_path)
    assert main(["report", "merge", *files]) == 2
    assert "name at least one output" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    ("<xml/>", "neither a vfio-scenario JSON report nor a journal"),
    ('{"a": 1}\n{"b": 2}\n', "neither a vfio-scenario JSON report nor a journal"),
])
def test_unknown_input_is_a_usage_error(tmp_path: Path, content: str, message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    assert main(["report", "merge", str(bad), "--json", str(tmp_path / "o.json")]) == 2
    assert message in capsys.readouterr().err


def test_missing_input_is_a_usage_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "merge", str(tmp_path / "nope.json"), "--json",
                 str(tmp_path / "o.json")]) == 2
    assert "nope.json: cannot read: No such file or directory" in capsys.readouterr().err


def test_merging_nothing_exits_5(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json_document(RunResult()))
    assert main(["report", "merge", str(empty), "--junit-xml", str(tmp_path / "o.xml")]) == 5
    assert_valid_junit(tmp_path / "o.xml")
    assert load_results(empty).cases == []


def test_merge_refuses_an_unwritable_output_before_reading(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    files = shards_on_disk(tmp_path)
    (tmp_path / "file").write_text("")
    assert main(["report", "merge", *files, "--html", str(tmp_path / "file" / "r.html")]) == 2
    assert "--html" in capsys.readouterr().err
    assert not (tmp_path / "file").read_text()


def test_input_that_is_not_utf8_is_a_usage_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"a": "\xff"}')
    assert main(["report", "merge", str(bad), "--json", str(tmp_path / "o.json")]) == 2
    assert capsys.readouterr().err == (f"vfio-scenario: {bad}: neither a vfio-scenario JSON "
                                       "report nor a journal (byte 0xff at offset 7 is not "
                                       "UTF-8)\n")
