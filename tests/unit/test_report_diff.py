"""`report diff`: classes of change, id matching, verdict and exit status, bad input,
and the recorded default-vs-Debian journals (tests/data/recorded/README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vfio_scenario import __version__
from vfio_scenario.cli import main
from vfio_scenario.journal import Journal
from vfio_scenario.report import diff
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.results import CaseResult, Outcome, RunResult
from vfio_scenario.select import normalize_case_id, parse_case_id

RECORDED = Path(__file__).resolve().parent.parent / "data" / "recorded"
BASE = RECORDED / "compare-default.journal.jsonl"
DEBIAN = RECORDED / "compare-debian.journal.jsonl"
PLANTED = RECORDED / "compare-debian-planted.journal.jsonl"


def case(cid: str, outcome: Outcome, duration: float = 0.1, message: str = "",
         **kw: object) -> CaseResult:
    return CaseResult(case_id=cid, file=cid.partition("::")[0], scenario="s", outcome=outcome,
                      duration=duration, message=message, **kw)  # type: ignore[arg-type]


def loaded(cases: list[CaseResult], splats: dict[str, list[str]] | None = None,
           path: str = "x") -> diff.LoadedRun:
    return diff.LoadedRun(path, RunResult(cases=cases), splats or {})


P, F, S, E = Outcome.PASS, Outcome.FAIL, Outcome.SKIP, Outcome.ERROR


@pytest.mark.parametrize(("base", "patched", "classes"), [
    (P, F, ["regression"]), (P, E, ["regression"]), (F, P, ["fix"]), (E, P, ["fix"]),
    (P, S, ["new skip"]), (F, S, ["new skip"]), (S, P, ["no longer skipped"]),
    (S, F, ["no longer skipped"]), (P, P, []), (F, F, []), (S, S, []), (F, E, []),
])
def test_outcome_changes_are_classified(base: Outcome, patched: Outcome,
                                        classes: list[str]) -> None:
    got, new = diff.classify(case("a::b", base), case("a::b", patched), [], [])
    assert (got, new) == (classes, [])


def test_new_and_removed_cases() -> None:
    comp = diff.compare(loaded([case("f::old", P), case("f::both", P)]),
                        loaded([case("f::both", P), case("f::new", F)]))
    assert [(c.case_id, c.classes) for c in comp.changes] == [
        ("f::new", ["new case"]), ("f::old", ["removed case"])]
    assert comp.compared == 1
    assert comp.exit_code() == 0  # a new failing case is not a regression


@pytest.mark.parametrize(("before", "after", "factor", "minimum", "classes"), [
    (0.100, 0.151, 1.5, 0.05, ["slower"]),   # 1.51x and 51 ms
    (0.100, 0.149, 1.5, 0.05, []),           # below the factor
    (0.020, 0.060, 1.5, 0.05, []),           # 3x, but only 40 ms
    (0.200, 0.100, 1.5, 0.05, ["faster"]),
    (0.100, 0.190, 2.0, 0.05, []),           # the factor is an option
    (0.020, 0.060, 1.5, 0.01, ["slower"]),   # so is the minimum
])
def test_duration_changes_beyond_both_thresholds(before: float, after: float, factor: float,
                                                 minimum: float, classes: list[str]) -> None:
    got, _ = diff.classify(case("a::b", P, before), case("a::b", P, after), [], [],
                           factor, minimum)
    assert got == classes


def test_skipped_cases_have_no_duration_change() -> None:
    assert diff.classify(case("a::b", S, 0.1), case("a::b", S, 5.0), [], [])[0] == []


def test_new_splat_ignores_what_changes_between_boots() -> None:
    old = ["WARNING: CPU: 0 PID: 212 at drivers/vfio/x.c:10 f+0x2e1/0x4d0"]
    same = ["WARNING: CPU: 1 PID: 977 at drivers/vfio/x.c:10 f+0x2e1/0x4d0"]
    other = ["BUG: KASAN: use-after-free in vfio_pin_pages+0x10/0x20"]
    assert diff.classify(case("a::b", P), case("a::b", P), old, same) == ([], [])
    assert diff.classify(case("a::b", P), case("a::b", P), old, same + other) == (
        ["new splat"], other)
    # a new case's splat is new too; a splat on a regression is both (failing classes first)
    assert diff.classify(None, case("a::b", P), [], other) == (["new splat", "new case"], other)
    assert diff.classify(case("a::b", P), case("a::b", E), [], other)[0] == [
        "regression", "new splat"]


def test_case_splats_reads_the_field_and_tolerates_its_absence() -> None:
    assert diff.case_splats({"case_id": "a"}) == []
    assert diff.case_splats({"kernel_splats": [
        {"kind": "WARNING", "title": "WARNING: CPU: 0 PID: 1 at x", "allowed": False},
        {"kind": "lockdep", "title": "possible circular locking", "allowed": False},
        {"kind": "WARNING", "title": "WARNING: declared", "allowed": True}]}) == [
        "WARNING: CPU: 0 PID: 1 at x", "lockdep: possible circular locking"]


def test_ids_differing_only_in_matrix_order_match() -> None:
    a = "scenarios/dma/map.yaml::map-unmap[size=4096,iommu_mode=iommufd]"
    b = "scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096]"
    assert normalize_case_id(a) == normalize_case_id(b) == b
    assert parse_case_id(a) == ("scenarios/dma/map.yaml", "map-unmap",
                                {"size": "4096", "iommu_mode": "iommufd"})
    # values may hold commas and brackets (a list prints as [1, 2])
    assert normalize_case_id("f::n[z=[1, 2],a=x]") == "f::n[a=x,z=[1, 2]]"
    assert normalize_case_id("f::plain") == "f::plain"
    comp = diff.compare(loaded([case(a, P)]), loaded([case(b, F)]))
    assert [(c.case_id, c.classes) for c in comp.changes] == [(b, ["regression"])]
    assert comp.compared == 1


def test_ids_with_other_values_do_not_match() -> None:
    comp = diff.compare(loaded([case("f::n[size=1]", P)]), loaded([case("f::n[size=2]", P)]))
    assert sorted(c.classes[0] for c in comp.changes) == ["new case", "removed case"]


def test_verdict_and_exit_status() -> None:
    fine = diff.compare(loaded([case("f::a", P), case("f::b", F)]),
                        loaded([case("f::a", S), case("f::b", P)]))
    assert fine.exit_code() == 0
    assert fine.verdict() == "verdict: no regression: 1 fix, 1 new skip; 0 of 2 cases unchanged"
    bad = diff.compare(loaded([case("f::a", P), case("f::b", P)]),
                       loaded([case("f::a", F), case("f::b", P)], {"f::b": ["BUG: x"]}))
    assert bad.exit_code() == 1
    assert bad.verdict() == ("verdict: REGRESSED: 1 regression, 1 new splat; "
                             "0 of 2 cases unchanged")
    splat_only = diff.compare(loaded([case("f::a", P)]), loaded([case("f::a", P)],
                                                               {"f::a": ["BUG: x"]}))
    assert splat_only.exit_code() == 1
    same = diff.compare(loaded([case("f::a", P)]), loaded([case("f::a", P)]))
    assert (same.exit_code(), same.verdict()) == (
        0, "verdict: no regression: no change; 1 of 1 cases unchanged")


def test_a_regression_that_is_a_known_issue_does_not_fail_the_verdict() -> None:
    issue = {"reason": "breaks on 6.1", "url": "", "pattern": "f::*", "source": "k.yaml:2:5"}
    comp = diff.compare(loaded([case("f::a", P)]),
                        loaded([case("f::a", F, known_issue=issue)]))
    assert comp.changes[0].classes == ["regression"]
    assert comp.changes[0].known_issue == "breaks on 6.1"
    assert comp.exit_code() == 0
    assert "(1 of the regressions known issues)" in comp.verdict()


def test_recorded_default_vs_debian_classifies_the_iommufd_cases_as_new_skips(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "diff.json"
    assert main(["report", "diff", str(BASE), str(DEBIAN), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    skips = sorted(c["case_id"].split("::")[1] for c in doc["changes"]
                   if "new skip" in c["classes"])
    assert skips == ["cdev-bind-attach[iommu_mode=iommufd]",
                     "kernel-health[iommu_mode=iommufd]",
                     "kernel-health[iommu_mode=iommufd_compat_type1]",
                     "kernel-health[iommu_mode=iommufd_compat_type1v2]"]
    for c in doc["changes"]:
        if "new skip" in c["classes"]:
            assert c["patched"]["message"].endswith("unavailable: /dev/iommu does not exist")
    assert doc["counts"]["regression"] == 0 and doc["exit_status"] == 0
    assert doc["schema"] == "vfio-scenario-diff"
    assert doc["base"]["properties"]["kernel"] == "7.2.13-vfio-scenario"
    assert doc["patched"]["properties"]["kernel"] == "7.2.13+deb14-amd64"
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == doc["verdict"]
    assert printed.splitlines()[-1].startswith("verdict: no regression: 4 new skips")


def test_recorded_journals_with_a_planted_regression_and_splat_exit_1_naming_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "diff.html"
    assert main(["report", "diff", str(BASE), str(PLANTED), "--html", str(html)]) == 1
    lines = capsys.readouterr().out.splitlines()
    regression = [x for x in lines if x.startswith("regression ")]
    splat = [x for x in lines if x.startswith("new splat")]
    assert len(regression) == 1 and "kernel-health[iommu_mode=vfio_type1_iommu]  pass → fail" \
        in regression[0]
    assert len(splat) == 1 and "kernel-health[iommu_mode=vfio_type1v2_iommu]" in splat[0]
    assert any("WARNING: CPU: 0 PID: 212 at drivers/vfio/vfio_iommu_type1.c:1410" in x
               for x in lines)
    assert lines[-1].startswith("verdict: REGRESSED: 1 regression, 1 new splat, 4 new skips")
    page = html.read_text()
    assert 'id="comparison"' in page and "REGRESSED" in page
    assert page.count('<tr data-classes="') == 6  # one row per changed case
    assert "kernel-health[iommu_mode=vfio_type1_iommu]" in page


def test_json_reports_and_journals_compare_alike(tmp_path: Path) -> None:
    report = tmp_path / "debian.json"
    report.write_text(json_document(diff.load_run(str(DEBIAN)).run))
    from_report = diff.compare(diff.load_run(str(BASE)), diff.load_run(str(report)))
    from_journal = diff.compare(diff.load_run(str(BASE)), diff.load_run(str(DEBIAN)))
    assert [c.to_dict() for c in from_report.changes] == \
        [c.to_dict() for c in from_journal.changes]
    assert from_report.verdict() == from_journal.verdict()


def test_a_file_that_is_neither_is_named(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\nworld\n")
    assert main(["report", "diff", str(bad), str(BASE)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: neither a vfio-scenario JSON report nor a journal" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else", "cases": []}))
    assert main(["report", "diff", str(BASE), str(other)]) == 2
    assert f"{other}: neither a vfio-scenario JSON report nor a journal" in \
        capsys.readouterr().err
    assert main(["report", "diff", str(BASE), str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: cannot read" in capsys.readouterr().err


def test_a_journal_of_another_engine_version_names_both_versions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newer = tmp_path / "newer.jsonl"
    lines = BASE.read_text().splitlines()
    header = {"type": "journal", "schema_version": 2, "engine_version": "0.9.0"}
    newer.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert main(["report", "diff", str(BASE), str(newer)]) == 2
    err = capsys.readouterr().err
    assert (f"{newer}: a journal written by vfio-scenario 0.9.0 (journal schema 2); this is "
            f"vfio-scenario {__version__}, which reads journal schema 1") in err
    # the same schema, but the runs were made by two engine versions
    older = tmp_path / "older.jsonl"
    older.write_text(BASE.read_text().replace('"engine_version": "0.1.0"',
                                              '"engine_version": "0.0.9"'))
    assert main(["report", "diff", str(older), str(DEBIAN)]) == 2
    err = capsys.readouterr().err
    assert f"{older} was written by vfio-scenario 0.0.9 and {DEBIAN} by vfio-scenario " \
        f"0.1.0" in err


def test_a_json_report_of_another_schema_names_both_versions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json_document(diff.load_run(str(BASE)).run))
    doc["schema_version"] = 7
    doc["properties"]["engine_version"] = "3.0.0"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert main(["report", "diff", str(path), str(BASE)]) == 2
    assert (f"{path}: a JSON report written by vfio-scenario 3.0.0 (JSON report schema 7); "
            f"this is vfio-scenario {__version__}") in capsys.readouterr().err


def test_new_journals_name_their_engine_version(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.jsonl")
    j.close()
    header = json.loads((tmp_path / "j.jsonl").read_text().splitlines()[0])
    assert header == {"type": "journal", "schema_version": 1, "engine_version": __version__}


@pytest.mark.parametrize(("args", "message"), [
    (["--duration-factor", "1"], "not a number above 1"),
    (["--duration-factor", "x"], "not a number above 1"),
    (["--duration-min", "fast"], "--duration-min"),
])
def test_bad_thresholds_are_usage_errors(args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "diff", str(BASE), str(DEBIAN), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_thresholds_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    # the recorded Debian runs of kernel-health took a third of the default kernel's time
    assert main(["report", "diff", str(BASE), str(DEBIAN), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["counts"]["faster"] == 2
    assert main(["report", "diff", str(BASE), str(DEBIAN), "--json", str(out),
                 "--duration-factor", "4"]) == 0
    doc = json.loads(out.read_text())
    assert doc["counts"]["faster"] == 0
    assert doc["thresholds"] == {"duration_factor": 4.0, "duration_min": 0.05}
    assert main(["report", "diff", str(BASE), str(DEBIAN), "--json", str(out),
                 "--duration-min", "500ms"]) == 0
    assert json.loads(out.read_text())["counts"]["faster"] == 0


def test_a_file_name_holding_double_colons_is_split_as_the_reports_do() -> None:
    cid = "odd/brack[et]::x.yaml::n[size=1,a=2]"
    assert parse_case_id(cid) == ("odd/brack[et]::x.yaml", "n", {"size": "1", "a": "2"})
    assert normalize_case_id(cid) == "odd/brack[et]::x.yaml::n[a=2,size=1]"
