"""ReportSink: journal + console + report files per case; resume; survival of kill -9."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.journal import finished_cases
from vfio_scenario.report import sink as sink_mod
from vfio_scenario.report.sink import ReportSink

from tests.helpers.kunit import parse_ktap
from tests.helpers.load import load_multiplier
from tests.helpers.reports import assert_valid_junit, sample_run


def paths(tmp_path: Path) -> dict[str, Any]:
    return {"junit_xml": str(tmp_path / "junit.xml"), "json_path": str(tmp_path / "r.json"),
            "html_path": str(tmp_path / "r.html"), "journal": str(tmp_path / "journal.jsonl")}


def report_ids(tmp_path: Path) -> tuple[list[str], list[str], int]:
    """Case ids in the JUnit and JSON reports, and the number of HTML rows."""
    root = assert_valid_junit(tmp_path / "junit.xml")
    junit = [f"{s.get('name')}::{tc.get('name')}" for s in root.iter("testsuite")
             for tc in s.iter("testcase")]
    doc = json.loads((tmp_path / "r.json").read_text())
    html = (tmp_path / "r.html").read_text().count('<details class="case"')
    return junit, [c["case_id"] for c in doc["cases"]], html


def _cases_in_every_file(tmp_path: Path) -> int:
    junit, json_ids, html_rows = report_ids(tmp_path)
    return min(len(junit), len(json_ids), html_rows)


def test_sink_writes_everything_and_summarises(tmp_path: Path) -> None:
    run = sample_run()
    out = io.StringIO()
    with ReportSink(**paths(tmp_path), total=5, stream=out) as sink:
        sink.run.properties.update(run.properties)
        sink.header()
        for case in run.cases:
            sink.add(case)
    ids = [c.case_id for c in run.cases]
    assert report_ids(tmp_path) == (ids, ids, 5)  # the sample's files are already in order
    assert list(finished_cases(tmp_path / "journal.jsonl")) == ids
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("vfio-scenario 0.1.0: 5 cases; kernel 7.2.13-vfio-scenario")
    assert lines[1].startswith("[1/5] scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd")
    assert lines[-1].startswith("2 passed, 1 failed, 1 skipped, 1 errors in ")
    assert sink.exit_code() == 1


def test_resume_continues_the_journal_and_the_count(tmp_path: Path) -> None:
    run = sample_run()
    with ReportSink(**paths(tmp_path), total=5, stream=io.StringIO()) as sink:
        sink.add(run.cases[0])
        sink.add(run.cases[1])
    out = io.StringIO()
    with ReportSink(**paths(tmp_path), total=5, stream=out, resume=True) as sink:
        assert sink.finished_ids() == {run.cases[0].case_id, run.cases[1].case_id}
        for case in run.cases[2:]:
            sink.add(case)
    assert out.getvalue().splitlines()[0].startswith("[3/5] ")
    ids = [c.case_id for c in run.cases]
    assert report_ids(tmp_path) == (ids, ids, 5)
    with ReportSink(**paths(tmp_path), total=5, stream=io.StringIO()) as sink:  # fresh run
        assert sink.finished_ids() == set()
    assert report_ids(tmp_path) == ([], [], 0)


def test_ktap_format_streams_parseable_ktap(tmp_path: Path) -> None:
    run = sample_run()
    out = io.StringIO()
    with ReportSink(**paths(tmp_path), total=5, stream=out, fmt="ktap",
                    planned=[c.case_id for c in run.cases]) as sink:
        sink.header()
        for case in run.cases:
            sink.add(case)
    text = out.getvalue()
    assert text.splitlines()[:1] == ["KTAP version 1"] and "[1/5]" not in text
    test = parse_ktap(text)
    assert test.counts.errors == 0
    assert (test.counts.passed, test.counts.failed, test.counts.skipped) == (2, 2, 1)


def test_replan_sets_the_count_and_the_ktap_plan_before_the_header(tmp_path: Path) -> None:
    # the run compiled for its real devices: the `driver` axis gave other cases
    run = sample_run()
    ids = [c.case_id for c in run.cases]
    for fmt in ("text", "ktap"):
        out = io.StringIO()
        with ReportSink(**paths(tmp_path), total=99, stream=out, fmt=fmt,
                        planned=[*ids, "scenarios/x.yaml::gone[driver=dsa]"]) as sink:
            sink.replan(ids[:3])
            sink.header()
            for case in run.cases[:3]:
                sink.add(case)
        text = out.getvalue()
        if fmt == "text":
            assert text.splitlines()[0].startswith("vfio-scenario 0.1.0: 3 cases")
            assert text.splitlines()[1].startswith("[1/3] ")
        else:
            assert "gone" not in text
            test = parse_ktap(text)
            assert test.counts.errors == 0
            assert sum((test.counts.passed, test.counts.failed, test.counts.skipped)) == 3


def test_rewrites_are_throttled_but_every_case_lands(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = sink_mod.write_reports

    def counting(run: Any, targets: Any) -> None:
        real(run, targets)
        calls.append(len(run.cases))  # once written: the files hold what is counted

    monkeypatch.setattr(sink_mod, "write_reports", counting)
    run = sample_run()
    sink = ReportSink(**paths(tmp_path), total=40, stream=io.StringIO(), min_interval=1.0)
    cases = []
    started = time.monotonic()
    for i in range(40):
        case = run.cases[i % 5]
        cases.append(type(case)(**{**case.__dict__, "case_id": f"{case.case_id}#{i}"}))
        sink.add(cases[-1])
    elapsed = time.monotonic() - started
    assert calls[0] == 1  # the first case at once
    # the rest wait for the interval: at most one rewrite per interval while adding
    # (on an idle machine the loop takes milliseconds and this is exactly [1])
    assert len(calls) <= 1 + math.ceil(elapsed / 1.0), (calls, elapsed)
    deadline = time.monotonic() + 60
    while calls[-1] < 40 and time.monotonic() < deadline:  # the timer, not close(), writes
        time.sleep(0.1)
    assert calls[-1] == 40  # the timer wrote them all
    writes = len(calls)
    assert len(report_ids(tmp_path)[1]) == 40
    sink.close()
    assert len(calls) == writes + 1 and calls[-1] == 40


def test_zero_cases_still_give_valid_files(tmp_path: Path) -> None:
    sink = ReportSink(**paths(tmp_path), total=0, stream=io.StringIO())
    sink.close()
    assert report_ids(tmp_path) == ([], [], 0)
    assert sink.exit_code() == 5


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.helpers.reports import sample_run
    from vfio_scenario.report.sink import ReportSink
    from vfio_scenario.results import CaseResult
    stop_after, interval, log_size = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    base = sample_run().cases
    sink = ReportSink(junit_xml="junit.xml", json_path="r.json", html_path="r.html",
                      journal="journal.jsonl", total=10**6, stream=open("/dev/null", "w"),
                      min_interval=interval)
    i = 0
    while stop_after < 0 or i < stop_after:
        c = base[i % 5]
        sink.add(CaseResult(**{{**c.__dict__, "case_id": f"{{c.case_id}}#{{i}}",
                                 "log": "L" * log_size + "\\x1b\\x00 ✓"}}))
        i += 1
        print(i, flush=True)
    print("ready", flush=True)
    time.sleep(120)
""")


def spawn(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=root))
    return subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)


def test_kill_9_after_cases_leaves_valid_reports_holding_them(tmp_path: Path) -> None:
    child = spawn(tmp_path, "7", "0.5", "1000")
    try:
        assert child.stdout is not None
        lines = [child.stdout.readline().strip() for _ in range(8)]
        assert lines[-1] == "ready"
        # past the rewrite interval: 0.5 s, or 3x the last rewrite's time when that is
        # longer (the first one imports the report writers: on a loaded machine seconds);
        # the sink's timer, not a close(), writes the cases that came in it
        deadline = time.monotonic() + 30 * load_multiplier()
        while _cases_in_every_file(tmp_path) < 7 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    journal, junit_ids, json_ids, html_rows = (
        list(finished_cases(tmp_path / "journal.jsonl")), *report_ids(tmp_path))
    assert len(journal) == 7
    assert json_ids == journal
    assert sorted(junit_ids) == sorted(journal)
    assert html_rows == 7


def kill_mid_run(tmp_path: Path, delay: float) -> bool:
    """Start a child writing big cases as fast as it can; after `delay`, kill -9 it as soon
    as a report rewrite is under way; check every file. True when the kill left a
    temporary behind (it caught a rewrite half-done)."""
    tmp_path.mkdir()
    child = spawn(tmp_path, "-1", "0", str(1 << 20))  # a 1 MiB log per case
    try:
        assert child.stdout is not None
        child.stdout.readline()  # one case in, so the files exist
        time.sleep(delay)
        deadline = time.monotonic() + 20
        while not list(tmp_path.glob(".*.tmp")) and time.monotonic() < deadline:
            pass  # kill the moment a rewrite is under way
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    journal = list(finished_cases(tmp_path / "journal.jsonl"))
    assert journal == [f"{sample_run().cases[i % 5].case_id}#{i}" for i in range(len(journal))]
    # every file is valid and holds the first cases of the journal, in order
    junit_ids, json_ids, html_rows = report_ids(tmp_path)
    assert 1 <= len(json_ids) <= len(journal) and json_ids == journal[: len(json_ids)]
    assert 1 <= len(junit_ids) <= len(journal)
    assert sorted(junit_ids) == sorted(journal[: len(junit_ids)])
    assert 1 <= html_rows <= len(journal)
    caught = bool(list(tmp_path.glob(".*.tmp")))
    ReportSink(**paths(tmp_path), resume=True, stream=io.StringIO()).close()
    assert not list(tmp_path.glob(".*.tmp"))  # a new sink clears what the kill left behind
    assert json.loads((tmp_path / "r.json").read_text())["total"] == len(journal)
    return caught


def test_kill_9_mid_write_never_leaves_a_broken_file(tmp_path: Path) -> None:
    caught = [kill_mid_run(tmp_path / f"run{i}", delay)
              for i, delay in enumerate((0.1, 0.5, 0.9))]
    assert any(caught), "no kill landed inside a rewrite: the test did not test that"


def test_ktap_after_resume_prints_the_resumed_cases_after_the_header(tmp_path: Path) -> None:
    run = sample_run()
    planned = [c.case_id for c in run.cases]
    with ReportSink(**paths(tmp_path), total=5, stream=io.StringIO()) as sink:
        for case in run.cases[:3]:  # the whole first file
            sink.add(case)
    out = io.StringIO()
    with ReportSink(**paths(tmp_path), total=5, stream=out, fmt="ktap", planned=planned,
                    resume=True) as sink:
        assert out.getvalue() == ""  # nothing before the header
        sink.header()
        for case in run.cases[3:]:
            sink.add(case)
    test = parse_ktap(out.getvalue())
    assert out.getvalue().startswith("KTAP version 1\n")
    assert test.counts.errors == 0
    assert [len(g.subtests) for g in test.subtests] == [3, 2]


def test_unwritable_reports_warn_once_and_exit_3(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    targets: dict[str, Any] = {"junit_xml": str(blocker / "junit.xml"),
                               "journal": str(tmp_path / "j.jsonl")}
    run = sample_run()
    with ReportSink(**targets, total=5, stream=io.StringIO(), min_interval=0) as sink:
        for case in run.cases:
            sink.add(case)
    err = capsys.readouterr().err
    assert err.count("vfio-scenario: warning: cannot write the reports:") == 1
    assert sink.exit_code() == 3
    assert len(finished_cases(tmp_path / "j.jsonl")) == 5  # the journal has them all


def test_a_case_added_again_replaces_its_result(tmp_path: Path) -> None:
    run = sample_run()
    again = sample_run().cases[1]
    again.outcome = again.outcome.PASS
    with ReportSink(**paths(tmp_path), total=5, stream=io.StringIO()) as sink:
        for case in [*run.cases, again]:
            sink.add(case)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [c["case_id"] for c in doc["cases"]] == [run.cases[i].case_id for i in (0, 2, 3, 4, 1)]
    assert doc["counts"] == {"pass": 3, "fail": 0, "skip": 1, "error": 1}


@pytest.mark.parametrize("option", ["--junit-xml", "--json", "--html"])
def test_run_refuses_an_unwritable_report_before_any_case(tmp_path: Path, option: str) -> None:
    from vfio_scenario.cli import main

    scenario = tmp_path / "nap.yaml"
    scenario.write_text("steps:\n  - sleep: {duration: 1ms}\n")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "vfio_scenario", "run", "--testbed", "never",
                           option, str(blocker / "out"), str(scenario)],
                          capture_output=True, text=True, timeout=60, check=False)
    # exit 2 (usage), not 3 (--testbed never, no device): the outputs are checked first
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"vfio-scenario: {option} {blocker / 'out'}: cannot create "
                           f"{blocker}: a file is in the way\n")
    assert main(["run", "--junit-xml", str(tmp_path), str(scenario)]) == 2


def test_a_run_that_cannot_start_prints_no_empty_summary_but_writes_its_reports(
        tmp_path: Path) -> None:
    scenario = tmp_path / "nap.yaml"
    scenario.write_text("steps:\n  - sleep: {duration: 1ms}\n")
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "vfio_scenario", "run", "--device",
                           "ffff:ff:1f.7", "--junit-xml", str(junit), str(scenario)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3
    assert proc.stderr == "vfio-scenario: no PCI device ffff:ff:1f.7 on this host\n"
    assert "passed" not in proc.stdout
    assert_valid_junit(junit)
