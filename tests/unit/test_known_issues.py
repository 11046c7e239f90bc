"""Known issues: the file (validated, located errors), scenarios' own `known_issues:`,
matching (ids, kernels), and xfail/xpass in every report format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.errors import ScenarioErrors
from vfio_scenario.known_issues import KnownIssues, glob_match, id_matches, load_file
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.report.console import Console, exit_code, progress_line
from vfio_scenario.report.html import html_document
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.results import Outcome, RunResult

from tests.helpers.kunit import parse_ktap
from tests.helpers.reports import assert_valid_junit, sample_run

MAP_FAIL = "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]"
MAP_PASS = "scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096]"
DRV_ERROR = "scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=4096]"

KNOWN = """\
known_issues:
  - case: "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,*]"
    reason: type1v2 rejects the mapping on 7.2
    url: https://example.org/bug/1
    kernels: ["7.2.*"]
  - case: "scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,*]"
    reason: fixed by the series under review
  - case: "*::driver-memcpy[*size=4096*]"
    reason: the edu model times out on large copies
  - case: "scenarios/nothing/*"
    reason: a stale entry
"""


def write(tmp_path: Path, text: str, name: str = "known.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def applied(tmp_path: Path, text: str = KNOWN) -> RunResult:
    """sample_run() with KNOWN applied to it, as `run --known-issues` does per result."""
    run = sample_run()
    known = KnownIssues(file_entries=load_file(write(tmp_path, text)))
    for c in run.cases:
        known.apply(c, run.properties)
    return run


# -- matching ------------------------------------------------------------------------


def test_patterns_take_star_and_question_mark_and_brackets_literally() -> None:
    assert glob_match("f::n[size=*]", "f::n[size=4096]")
    assert glob_match("f::n[size=409?]", "f::n[size=4096]")
    assert not glob_match("f::n[sz]", "f::n[s]")  # not a character class
    assert not glob_match("f::n", "f::n[size=1]")  # the whole id
    # ids as written or with their parameters in name order
    assert id_matches("f::n[a=1,b=2]", "f::n[b=2,a=1]")


def test_entries_apply_by_kernel_release(tmp_path: Path) -> None:
    run = applied(tmp_path)  # kernel 7.2.13-vfio-scenario
    by_id = {c.case_id: c for c in run.cases}
    assert by_id[MAP_FAIL].status == "xfail"
    assert by_id[MAP_FAIL].known_issue == {
        "reason": "type1v2 rejects the mapping on 7.2", "url": "https://example.org/bug/1",
        "pattern": "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,*]",
        "source": f"{tmp_path / 'known.yaml'}:2:5"}
    assert by_id[MAP_PASS].status == "xpass"
    assert by_id[DRV_ERROR].status == "xfail"
    other = sample_run()
    for c in other.cases:
        c.properties["kernel"] = "6.1.0-18-amd64"
    known = KnownIssues(file_entries=load_file(write(tmp_path, KNOWN)))
    for c in other.cases:
        known.apply(c, other.properties)
    assert {c.case_id: c.status for c in other.cases}[MAP_FAIL] == "fail"  # 7.2.* only


def test_xfail_and_xpass_do_not_fail_the_run(tmp_path: Path) -> None:
    run = sample_run()
    assert exit_code(run) == 1
    run = applied(tmp_path)
    assert exit_code(run) == 0
    assert run.status_counts() == {"pass": 1, "fail": 0, "skip": 1, "error": 0, "xfail": 2,
                                   "xpass": 1}


def test_patterns_matching_no_selected_case_are_listed_in_one_warning(tmp_path: Path) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text("name: one\nsteps:\n  - sleep: {duration: 1ms}\n")
    cases = compile_paths([str(scen)]).cases
    path = write(tmp_path, f'- case: "{cases[0].id}"\n  reason: r\n'
                           '- case: "nothing*"\n  reason: r\n- case: "none"\n  reason: r\n')
    known = KnownIssues.for_run(cases, path)
    assert known.unmatched_warnings() == [
        ("known-issue patterns that match no selected case: "
        f"{path}:3:3: nothing*; "
        f"{path}:5:3: none")]
    assert KnownIssues.for_run(cases, None).unmatched_warnings() == []


# -- the file ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "errors"), [
    ("known_issues:\n  - case: a\n", [":2:5: missing required argument `reason`"]),
    ("known_issues:\n  - case: a\n    reason: r\n    reasn: x\n",
     [":4:5: unknown argument `reasn` (did you mean `reason`?)"]),
    ("known_issues:\n  - case: a\n    reason: r\n    kernels: 6.1\n",
     [":4:14: `kernels`: Input should be a valid list, got a number 6.1"]),
    ("- reason: r\n", [":1:3: missing required argument `case`"]),
    ("known_issue:\n  - case: a\n", [":1:1: unknown key `known_issue`"]),
    ("case: a\n", [":1:1: unknown key `case`"]),
    ("known_issues: 3\n", [":1:15: a known-issues file holds a list of entries"]),
    ("known_issues:\n  - case: a\n    reason: r\n    reason: s\n", [":4:5: duplicate key"]),
])
def test_bad_files_give_every_error_located(tmp_path: Path, text: str,
                                            errors: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioErrors) as exc:
        load_file(path)
    got = [str(e) for e in exc.value.errors]
    assert len(got) == len(errors)
    for line, want in zip(got, errors, strict=True):
        assert line.startswith(path + want), line


def test_a_bad_file_stops_run_before_anything_runs_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text("name: one\nsteps:\n  - sleep: {duration: 1ms}\n")
    bad = write(tmp_path, "known_issues:\n  - case: a\n")
    assert main(["run", str(scen), "--known-issues", bad, "--testbed", "never",
                 "--junit-xml", str(tmp_path / "j.xml")]) == 2
    assert f"{bad}:2:5: missing required argument `reason`" in capsys.readouterr().err
    assert not (tmp_path / "j.xml").exists()


def test_a_scenarios_own_known_issues_cover_its_cases(tmp_path: Path) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text("name: one\nmatrix: {size: [1, 2]}\nknown_issues:\n"
                    "  - case: 'one[size=2]'\n    reason: size 2 is broken\n"
                    "  - case: 'two*'\n    reason: stale\n"
                    "steps:\n  - sleep: {duration: 1ms}\n")
    cases = compile_paths([str(scen)]).cases
    assert cases[0].known_issues[0]["source"] == f"{scen.relative_to(Path.cwd()) if scen.is_relative_to(Path.cwd()) else scen}:4:5"
    known = KnownIssues.for_run(cases, None)
    assert known.entry_for(cases[0].id, "7.2") is None  # size=1
    assert known.entry_for(cases[1].id, "7.2")["reason"] == "size 2 is broken"  # type: ignore[index]
    assert len(known.unmatched_warnings()) == 1 and "two*" in known.unmatched_warnings()[0]


def test_a_scenarios_bad_known_issue_is_a_located_validation_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text("name: one\nknown_issues:\n  - case: x\n    url: u\n"
                    "steps:\n  - sleep: {duration: 1ms}\n")
    assert main(["validate", str(scen)]) == 2
    assert ":3:5: missing required argument `reason`" in capsys.readouterr().err


# -- every report format ---------------------------------------------------------------


def test_junit_reports_xfail_as_skipped_with_the_known_issue(tmp_path: Path) -> None:
    root = assert_valid_junit(junit_document(applied(tmp_path)))
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    xfail = cases[MAP_FAIL.split("::")[1]]
    skipped = xfail.find("skipped")
    assert skipped is not None and xfail.find("failure") is None
    assert skipped.get("message") == ("known issue: type1v2 rejects the mapping on 7.2 "
                                      "(https://example.org/bug/1)")
    assert "expected ok, got EINVAL" in (skipped.text or "")  # what failed, kept
    err = cases[DRV_ERROR.split("::")[1]]
    assert err.find("error") is None and err.find("skipped") is not None
    xpass = cases[MAP_PASS.split("::")[1]]
    assert xpass.find("skipped") is None
    assert "xpass: known issue: fixed by the series under review - passed now (xpass)" in \
        (xpass.findtext("system-out") or "")
    assert (root.get("failures"), root.get("errors")) == ("0", "0")


def test_ktap_marks_xfail_and_xpass_as_kselftest_does_and_kunit_parser_reads_it(
        tmp_path: Path) -> None:
    text = ktap_document(applied(tmp_path))
    lines = text.splitlines()
    assert f"  ok 2 {MAP_FAIL.split('::')[1]} # XFAIL known issue: type1v2 rejects the " \
           "mapping on 7.2 (https://example.org/bug/1)" in lines
    assert any(x.startswith(f"  ok 1 {MAP_PASS.split('::')[1]} # XPASS known issue: fixed")
               for x in lines)
    assert lines[-1] == "# Totals: pass:1 fail:0 xfail:2 xpass:1 skip:1 error:0"
    test = parse_ktap(text)
    assert test.counts.errors == 0
    statuses = [(t.name.strip(), t.status.name) for g in test.subtests for t in g.subtests]
    assert statuses == [(MAP_PASS.split("::")[1], "SUCCESS"), (MAP_FAIL.split("::")[1], "SUCCESS"),
                        ("map-unmap[iommu_mode=vfio_type1_iommu,size=4096]", "SKIPPED"),
                        ("driver-memcpy[iommu_mode=iommufd,size=256]", "SUCCESS"),
                        (DRV_ERROR.split("::")[1], "SUCCESS")]
    assert test.status.name == "SUCCESS"


def test_json_carries_the_known_issue_and_disjoint_counts(tmp_path: Path) -> None:
    doc = json.loads(json_document(applied(tmp_path)))
    assert doc["counts"] == {"pass": 1, "fail": 0, "skip": 1, "error": 0, "xfail": 2, "xpass": 1}
    by_id = {c["case_id"]: c for c in doc["cases"]}
    assert by_id[MAP_FAIL]["outcome"] == "fail"  # the truth stays
    assert by_id[MAP_FAIL]["known_issue"]["reason"] == "type1v2 rejects the mapping on 7.2"
    assert "known_issue" not in by_id["scenarios/driver/memcpy.yaml::driver-memcpy"
                                      "[iommu_mode=iommufd,size=256]"]
    plain = json.loads(json_document(sample_run()))  # no list: the four counts as before
    assert list(plain["counts"]) == ["pass", "fail", "skip", "error"]


def test_console_says_xfail_and_xpass_with_the_reason(tmp_path: Path) -> None:
    run = applied(tmp_path)
    by_id = {c.case_id: c for c in run.cases}
    line = progress_line(by_id[MAP_FAIL], 2, 5)
    assert line.splitlines()[0] == f"[2/5] {MAP_FAIL} XFAIL {by_id[MAP_FAIL].duration:.2f}s"
    assert line.splitlines()[1].strip() == ("known issue: type1v2 rejects the mapping on 7.2 "
                                            "(https://example.org/bug/1)")
    assert "expected ok, got EINVAL" in line.splitlines()[2]
    assert " XPASS " in progress_line(by_id[MAP_PASS], 1, 5)
    out = io.StringIO()
    Console(out, 5).summary(run)
    assert out.getvalue() == "1 passed, 0 failed, 1 skipped, 0 errors, 2 xfail, 1 xpass in 7.50s\n"


def test_html_says_xfail_and_xpass(tmp_path: Path) -> None:
    page = html_document(applied(tmp_path))
    assert page.count('data-outcome="xfail"') == 3  # the button and two cases
    assert page.count('data-outcome="xpass"') == 2
    assert "known issue: type1v2 rejects the mapping on 7.2" in page
    assert 'id="count-xfail">2<' in page and 'id="count-fail">0<' in page


def test_outcome_survives_the_journal(tmp_path: Path) -> None:
    from vfio_scenario.journal import Journal, read_journal

    run = applied(tmp_path)
    j = Journal(tmp_path / "j.jsonl")
    for c in run.cases:
        j.write_case(c)
    j.close()
    back = read_journal(tmp_path / "j.jsonl")
    assert [c.status for c in back.cases] == [c.status for c in run.cases]
    assert Outcome.FAIL in [c.outcome for c in back.cases]


def test_a_scenarios_entries_follow_its_cases_compiled_again(tmp_path: Path) -> None:
    """The host compiles the cases again for the real devices (the driver axis may then
    hold other values): a scenario's entries still apply to its cases."""
    scen = tmp_path / "s.yaml"
    scen.write_text("name: one\nmatrix: {size: [1]}\nknown_issues:\n  - reason: all broken\n"
                    "steps:\n  - sleep: {duration: 1ms}\n")
    cases = compile_paths([str(scen)]).cases
    known = KnownIssues.for_run(cases, None)
    other = cases[0].id.replace("[size=1]", "[driver=edu,size=1]")
    assert known.entry_for(other, "7.2")["reason"] == "all broken"  # type: ignore[index]
