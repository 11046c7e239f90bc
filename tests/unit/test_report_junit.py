"""JUnit XML: structure, messages, properties, and validity against the Jenkins schema."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.report.junit import (
    LOG_LIMIT,
    JunitOptions,
    classname,
    junit_document,
    unique_names,
    xml_safe,
)
from vfio_scenario.results import CaseResult, Outcome, RunResult

from tests.helpers.reports import assert_valid_junit, nasty_text, sample_run, step


def cases_of(root: ET.Element) -> dict[str, Any]:
    return {f"{tc.get('classname')}::{tc.get('name')}": tc for tc in root.iter("testcase")}


def test_sample_run_gives_one_suite_per_file_and_one_case_per_result() -> None:
    root = assert_valid_junit(junit_document(sample_run()))
    assert root.attrib == {"name": "vfio-scenario", "tests": "5", "failures": "1", "errors": "1",
                           "time": "5.293"}
    suites = root.findall("testsuite")
    assert [(s.get("name"), s.get("tests"), s.get("failures"), s.get("errors"), s.get("skipped"))
            for s in suites] == [("scenarios/dma/map.yaml", "3", "1", "0", "1"),
                                 ("scenarios/driver/memcpy.yaml", "2", "0", "1", "0")]
    assert list(cases_of(root)) == [
        "scenarios.dma.map::map-unmap[iommu_mode=iommufd,size=4096]",
        "scenarios.dma.map::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]",
        "scenarios.dma.map::map-unmap[iommu_mode=vfio_type1_iommu,size=4096]",
        "scenarios.driver.memcpy::driver-memcpy[iommu_mode=iommufd,size=256]",
        "scenarios.driver.memcpy::driver-memcpy[iommu_mode=iommufd,size=4096]",
    ]
    assert suites[0].get("timestamp") == "2026-11-18T11:06:40"


def test_suite_properties_carry_device_driver_mode_kernel_accelerator_version() -> None:
    root = assert_valid_junit(junit_document(sample_run()))
    props = [(p.get("name"), p.get("value")) for p in root.find("testsuite").iter("property")]
    assert props[:7] == [("device", "0000:00:03.0"), ("vendor_device", "1234:11e8"),
                         ("vfio_driver", "vfio-pci"),
                         ("iommu_mode", "iommufd, vfio_type1_iommu, vfio_type1v2_iommu"),
                         ("kernel", "7.2.13-vfio-scenario"), ("accelerator", "tcg"),
                         ("engine_version", "0.1.0")]
    driver_suite = root.findall("testsuite")[1]
    assert ("iommu_mode", "iommufd") in [(p.get("name"), p.get("value"))
                                         for p in driver_suite.iter("property")]


def test_system_out_holds_the_step_log_with_outcomes_and_durations() -> None:
    tc = cases_of(assert_valid_junit(junit_document(sample_run())))[
        "scenarios.dma.map::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]"]
    out = tc.findtext("system-out")
    assert out.splitlines()[:3] == [
        "case: scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]",
        "outcome: FAIL in 0.129s",
        "iommu_mode: vfio_type1v2_iommu",  # differs between the file's cases: shown per case
    ]
    steps = out.split("steps:\n")[1].splitlines()
    assert steps == [
        "  1 PASS     0.0040s  open_iommu  [scenarios/dma/map.yaml:9]",
        "  2 PASS     0.1200s  open_device  [scenarios/dma/map.yaml:11]",
        "  3 PASS     0.0020s  alloc_buffer  [scenarios/dma/map.yaml:13]",
        ("  4 FAIL     0.0005s  map_dma  [scenarios/dma/map.yaml:15]  expected ok, got EINVAL: "
        "VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)"),
        " T1 PASS     0.0002s  teardown close  [scenarios/dma/map.yaml:20]",
    ]


def test_failure_names_the_step_its_location_and_expected_vs_actual() -> None:
    cases = cases_of(assert_valid_junit(junit_document(sample_run())))
    failure = cases["scenarios.dma.map::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]"] \
        .find("failure")
    assert failure.get("message") == (
        "step 4 `map_dma` at scenarios/dma/map.yaml:15: expected ok, got EINVAL: "
        "VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)")
    skipped = cases["scenarios.dma.map::map-unmap[iommu_mode=vfio_type1_iommu,size=4096]"] \
        .find("skipped")
    assert skipped.get("message") == ("IOMMU mode vfio_type1_iommu: the host kernel lacks "
                                      "CONFIG_VFIO_IOMMU_TYPE1")
    passed = cases["scenarios.dma.map::map-unmap[iommu_mode=iommufd,size=4096]"]
    assert [child.tag for child in passed] == ["system-out"]


def test_timeout_is_an_error_carrying_the_console_tail() -> None:
    tc = cases_of(assert_valid_junit(junit_document(sample_run())))[
        "scenarios.driver.memcpy::driver-memcpy[iommu_mode=iommufd,size=4096]"]
    error = tc.find("error")
    assert error.get("message") == ("step 7 `memcpy_wait` at scenarios/driver/memcpy.yaml:21: "
                                    "expected ok, got timeout: step timed out after 5s")
    assert error.text.split("\nlog:\n")[1].splitlines() == [
        "--- testbed console tail ---",
        "[   12.345] DMAR: DRHD: handling fault status reg 2",
        "[   12.346] BUG: kernel NULL pointer dereference, address: 0000000000000008"]
    assert tc.find("failure") is None


def test_control_characters_and_unicode_stay_valid_and_readable() -> None:
    run = sample_run()
    bad = nasty_text()
    run.cases[1].steps[3].message += bad
    run.cases[1].message += bad
    run.cases[4].log += bad
    run.cases[2].message = bad  # skip reason
    run.cases[0].properties["device"] = "dev\x1b[31m"
    run.cases[3].case_id = "scenarios/driver/memcpy.yaml::weird\x00name ✓"
    text = junit_document(run)
    root = assert_valid_junit(text)
    failure = root.find(".//failure")
    assert "naïve 測試 ✓ 🐧" in failure.text
    assert "\\x00\\x01" in failure.text and "\\x1b" in failure.text and "\\ud800" in failure.text
    assert "\\x85\\x9b" in failure.text and "\\ufffe" in failure.text
    assert "\n# Subtest: fake\n" in failure.text  # newlines kept as newlines
    assert "\n" not in failure.get("message")  # the attribute is the first line only
    assert 'weird\\x00name ✓' in [tc.get("name") for tc in root.iter("testcase")]


def test_xml_safe_escapes_only_what_xml_forbids() -> None:
    assert xml_safe("a\tb\nc\rd é 🐧") == "a\tb\nc\rd é 🐧"
    assert xml_safe("\x00\x1b\x7f\x9f\ud800\uffff") == "\\x00\\x1b\\x7f\\x9f\\ud800\\uffff"


def test_a_10_mb_log_keeps_its_tail_and_stays_valid() -> None:
    run = sample_run()
    line = "[ 1.000000] vfio-pci 0000:00:03.0: something happened \x1b[0m ✓\n"
    big = line * (10 * 1024 * 1024 // len(line) + 1) + "LAST LINE\n"
    run.cases[4].log = big
    run.cases[1].log = big
    t0 = time.perf_counter()
    text = junit_document(run)
    elapsed = time.perf_counter() - t0
    root = assert_valid_junit(text)
    error = root.find(".//error")
    assert error.text.rstrip().endswith("LAST LINE")
    assert "characters cut; the JSON report holds the whole log]" in error.text
    assert len(error.text) < LOG_LIMIT + 2000 + len(big) // 10
    assert root.find(".//failure/..").findtext("system-out").rstrip().endswith("LAST LINE")
    assert len(text) < 3 * LOG_LIMIT * 2  # two capped logs (escapes included), not 20 MB
    assert elapsed < 5.0


def test_zero_cases_give_a_valid_empty_report() -> None:
    root = assert_valid_junit(junit_document(RunResult()))
    assert root.attrib == {"name": "vfio-scenario", "tests": "0", "failures": "0", "errors": "0",
                           "time": "0.000"}
    assert list(root) == []


def test_times_always_match_the_surefire_pattern() -> None:
    f = "scenarios/t.yaml"
    cases = [CaseResult(case_id=f"{f}::t[{i}]", file=f, scenario="t", outcome=Outcome.PASS,
                        duration=d, steps=[step(0, "sleep", file=f, line=3, duration=d)])
             for i, d in enumerate([0.0, 1e-7, 4.9e-5, 0.0005, 12345.678901, 1e6])]
    root = assert_valid_junit(junit_document(RunResult(cases=cases)))
    assert root.find("testsuite").get("time") == "1012345.679"


def test_case_without_file_part_and_odd_file_names() -> None:
    cases = [CaseResult(case_id="lonely", file="x.v2.yml", scenario="s", outcome=Outcome.PASS),
             CaseResult(case_id="./a/b.c.yaml::n", file="./a/b.c.yaml", scenario="n",
                        outcome=Outcome.FAIL, message="boom")]
    root = assert_valid_junit(junit_document(RunResult(cases=cases)))
    assert [(tc.get("classname"), tc.get("name")) for tc in root.iter("testcase")] == [
        ("x_v2", "lonely"), ("a.b_c", "n")]
    assert root.find(".//failure").get("message") == "boom"
    assert classname("scenarios/dma/map.yaml") == "scenarios.dma.map"


@pytest.mark.parametrize("doc", [
    '<testsuites disabled="0"/>',  # junit-xml's extra root attribute
    '<testsuites><testsuite name="a" tests="1" failures="0" errors="0" time="1e-05"/></testsuites>',
    '<testsuites><testsuite name="a" tests="1" failures="0" errors="0" disabled="0"/></testsuites>',
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0">'
    '<testcase name="x" file="f"/></testsuite></testsuites>'),
    '<testsuites><testsuite name="a" tests="1" failures="0"/></testsuites>',
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0">'
    '<testcase name="x"><properties/></testcase></testsuite></testsuites>'),
])
def test_the_schema_rejects_what_jenkins_rejects(doc: str) -> None:
    with pytest.raises(AssertionError, match="not valid against the Jenkins schema"):
        assert_valid_junit(doc)


# What CI servers do with the file (issue 24): one test per quirk.

def test_failure_and_error_text_repeat_the_message_and_hold_the_step_log() -> None:
    """GitLab shows neither `message` nor (in some versions) system-out of a failed case:
    the element's own text says what failed and which step."""
    cases = cases_of(assert_valid_junit(junit_document(sample_run())))
    failure = cases["scenarios.dma.map::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]"] \
        .find("failure")
    lines = failure.text.splitlines()
    assert lines[0] == failure.get("message")
    assert lines[1] == "steps:"
    assert lines[5].startswith("  4 FAIL ") and "expected ok, got EINVAL" in lines[5]
    assert lines[6].startswith(" T1 PASS ")
    error = cases["scenarios.driver.memcpy::driver-memcpy[iommu_mode=iommufd,size=4096]"] \
        .find("error")
    assert error.text.splitlines()[0] == error.get("message")
    assert "  7 ERROR " in error.text and "\nlog:\n--- testbed console tail ---" in error.text


def test_jenkins_suite_name_is_the_scenario_file() -> None:
    """Jenkins names a suite `package + "." + name` when it has a package; ours have none,
    so Jenkins shows the scenario file (it showed `scenarios.dma.map.scenarios/dma/map.yaml`)."""
    root = assert_valid_junit(junit_document(sample_run()))

    def jenkins_name(suite: ET.Element) -> str:  # hudson.tasks.junit.SuiteResult's rule
        package = suite.get("package") or ""
        return f"{package}.{suite.get('name')}" if package else str(suite.get("name"))

    assert [jenkins_name(s) for s in root.iter("testsuite")] == [
        "scenarios/dma/map.yaml", "scenarios/driver/memcpy.yaml"]
    assert [s.get("file") for s in root.iter("testsuite")] == [
        "scenarios/dma/map.yaml", "scenarios/driver/memcpy.yaml"]


def test_file_attribute_on_testcases_is_opt_in() -> None:
    plain = assert_valid_junit(junit_document(sample_run()))
    assert all(tc.get("file") is None for tc in plain.iter("testcase"))
    text = junit_document(sample_run(), JunitOptions(case_file=True))
    root = ET.fromstring(text)
    assert [tc.get("file") for tc in root.iter("testcase")] == [
        "scenarios/dma/map.yaml"] * 3 + ["scenarios/driver/memcpy.yaml"] * 2
    with pytest.raises(AssertionError, match="not valid against the Jenkins schema"):
        assert_valid_junit(text)  # why it is off by default


def test_case_names_are_unique_per_class() -> None:
    """Two files whose class names coincide (`a/b.yaml`, `a/b.yml`), and a case id twice:
    GitLab would keep only the first of each pair."""
    cases = [CaseResult(case_id=f"{f}::t[x=1]", file=f, scenario="t", outcome=o)
             for f, o in [("a/b.yaml", Outcome.PASS), ("a/b.yml", Outcome.FAIL),
                          ("a/b.yaml", Outcome.SKIP)]]
    root = assert_valid_junit(junit_document(RunResult(cases=cases)))
    assert [(tc.get("classname"), tc.get("name")) for tc in root.iter("testcase")] == [
        ("a.b", "t[x=1]"), ("a.b", "t[x=1] (2)"), ("a.b", "t[x=1] (3)")]  # by suite
    assert unique_names([("c", "n"), ("c", "n (2)"), ("c", "n"), ("d", "n")]) == [
        "n", "n (2)", "n (3)", "n"]


def test_size_cap_cuts_logs_and_says_so() -> None:
    run = sample_run()
    run.cases[4].log = "console line\n" * 40_000 + "LAST LINE\n"  # 520 KB
    run.cases[1].log = "dmesg line\n" * 40_000
    whole = junit_document(run, JunitOptions(max_bytes=0))
    assert len(whole.encode()) > 900_000
    assert "junit_logs_cut" not in whole
    capped = junit_document(run, JunitOptions(max_bytes=200_000))
    root = assert_valid_junit(capped)
    assert len(capped.encode()) <= 200_000
    notes = {p.get("value") for p in root.iter("property") if p.get("name") == "junit_logs_cut"}
    assert notes == {("logs cut to their last 65536 characters: the whole file would be over "
                      "200000 bytes; the JSON report and the journal hold them whole")}
    assert root.find(".//error").text.rstrip().endswith("LAST LINE")
    assert "characters cut; the JSON report holds the whole log]" in root.find(".//error").text
    # a cap below what the cases need without logs: no log at all, every case still there
    tiny = assert_valid_junit(junit_document(run, JunitOptions(max_bytes=1000)))
    assert len(list(tiny.iter("testcase"))) == 5
    assert "console line" not in ET.tostring(tiny, encoding="unicode")
    # the default cap leaves a 2 MB document alone
    assert JunitOptions().max_bytes == 20 * 1024 * 1024
    assert junit_document(run) == whole


def test_merge_and_run_take_the_junit_options(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from vfio_scenario.cli import build_parser, main
    from vfio_scenario.report.jsonout import json_document

    run = sample_run()
    run.cases[4].log = "console line\n" * 10_000
    src = tmp_path / "run.json"
    src.write_text(json_document(run))
    out = tmp_path / "junit.xml"
    assert main(["report", "merge", str(src), "--junit-xml", str(out),
                 "--junit-file-attribute", "--junit-max-size", "64K"]) == 1
    root = ET.fromstring(out.read_text())
    assert len(out.read_bytes()) <= 64 * 1024
    assert {tc.get("file") for tc in root.iter("testcase")} == {
        "scenarios/dma/map.yaml", "scenarios/driver/memcpy.yaml"}
    assert any(p.get("name") == "junit_logs_cut" for p in root.iter("property"))
    args = build_parser().parse_args(["run", "--junit-max-size", "0", "--junit-file-attribute"])
    assert (args.junit_max_size, args.junit_file_attribute) == (0, True)
    assert build_parser().parse_args(["run"]).junit_max_size == 20 * 1024 * 1024
    with pytest.raises(SystemExit) as exc:
        main(["report", "merge", str(src), "--junit-xml", str(out), "--junit-max-size", "big"])
    assert exc.value.code == 2
    assert "'big' is not a size like 20M, 512K or 0" in capsys.readouterr().err
