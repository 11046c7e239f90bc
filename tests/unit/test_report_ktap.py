"""KTAP v1 output, checked with the kernel's own parser (kunit_tool's kunit_parser.py)."""

from __future__ import annotations

import io
from typing import Any

from vfio_scenario.report.ktap import KtapStream, ktap_document
from vfio_scenario.results import CaseResult, Outcome, RunResult

from tests.helpers.kunit import kunit_parser, parse_ktap
from tests.helpers.reports import nasty_text, sample_run

STATUS = {Outcome.PASS: "SUCCESS", Outcome.FAIL: "FAILURE", Outcome.ERROR: "FAILURE",
          Outcome.SKIP: "SKIPPED"}


def flat(test: Any) -> list[tuple[str, list[tuple[str, str, str]]]]:
    return [(g.name, [(t.name, t.status.name, t.skip_reason) for t in g.subtests])
            for g in test.subtests]


def expected(run: RunResult) -> list[tuple[str, list[tuple[str, str, str]]]]:
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for c in run.cases:
        file, _, name = c.case_id.partition("::")
        reason = c.message if c.outcome is Outcome.SKIP else ""
        groups.setdefault(file, []).append((name, STATUS[c.outcome], reason))
    return list(groups.items())


def test_kunit_parser_reads_our_ktap_with_every_status() -> None:
    run = sample_run()
    test = parse_ktap(ktap_document(run))
    assert flat(test) == expected(run)
    assert test.counts.errors == 0  # no protocol complaint from the parser
    assert (test.counts.passed, test.counts.failed, test.counts.skipped, test.counts.crashed) \
        == (2, 2, 1, 0)
    assert test.status.name == "FAILURE"
    assert [g.status.name for g in test.subtests] == ["FAILURE", "FAILURE"]


def test_failure_diagnostics_precede_the_result_line() -> None:
    text = ktap_document(sample_run())
    lines = text.splitlines()
    i = lines.index("  not ok 2 map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]")
    assert lines[i - 1] == ("  # FAIL step 4 `map_dma` at scenarios/dma/map.yaml:15: expected ok, "
                            "got EINVAL: VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL "
                            "(Invalid argument)")
    j = lines.index("  not ok 2 driver-memcpy[iommu_mode=iommufd,size=4096]")
    assert lines[j - 4:j] == [
        ("  # ERROR step 7 `memcpy_wait` at scenarios/driver/memcpy.yaml:21: expected ok, got "
        "timeout: step timed out after 5s"),
        "  # --- testbed console tail ---",
        "  # [   12.345] DMAR: DRHD: handling fault status reg 2",
        "  # [   12.346] BUG: kernel NULL pointer dereference, address: 0000000000000008"]
    assert lines[:3] == ["KTAP version 1", lines[1], "1..2"] and lines[1].startswith("# ")
    assert lines[-1] == "# Totals: pass:2 fail:1 xfail:0 xpass:0 skip:1 error:1"


def test_hostile_text_cannot_break_the_ktap_structure() -> None:
    run = sample_run()
    bad = nasty_text()
    run.cases[1].steps[3].message += bad
    run.cases[4].log += bad
    run.cases[2].message = "reason # with hash\nand a second line " + bad  # skip reason
    run.cases[0].case_id = "scenarios/dma/map.yaml::name # with hash"
    test = parse_ktap(ktap_document(run))
    assert test.counts.errors == 0
    groups = flat(test)
    assert [len(g[1]) for g in groups] == [3, 2]
    assert groups[0][1][0][:2] == ("name %23 with hash", "SUCCESS")
    assert groups[0][1][2][1] == "SKIPPED"
    assert groups[0][1][2][2].startswith("reason # with hash and a second line naïve 測試 ✓ 🐧")
    assert "%23 SKIP not really" in groups[0][1][2][2]
    assert [t[1] for t in groups[1][1]] == ["SUCCESS", "FAILURE"]


def test_streaming_with_a_plan_prints_groups_as_they_complete() -> None:
    run = sample_run()
    out = io.StringIO()
    stream = KtapStream(out, planned=[c.case_id for c in run.cases])
    stream.start(RunResult())
    for case in run.cases[:3]:
        stream.case(case)
    assert out.getvalue().splitlines()[-1] == "not ok 1 scenarios/dma/map.yaml"
    stream.case(run.cases[3])  # first file done, second still open
    assert out.getvalue().splitlines()[-1] == "not ok 1 scenarios/dma/map.yaml"
    stream.finish(RunResult(cases=run.cases[:4]))  # run stopped before the last case
    test = parse_ktap(out.getvalue())
    assert test.counts.errors == 0
    assert flat(test)[1][1] == [
        ("driver-memcpy[iommu_mode=iommufd,size=256]", "SUCCESS", ""),
        ("driver-memcpy[iommu_mode=iommufd,size=4096]", "SKIPPED",
         "not run: the run stopped before this case")]


def test_streaming_without_a_plan_is_parsed_too() -> None:
    run = sample_run()
    out = io.StringIO()
    stream = KtapStream(out)
    stream.start(run)
    for case in run.cases:
        stream.case(case)
    stream.finish(run)
    assert "1..2" not in out.getvalue().splitlines()[:3]
    test = parse_ktap(out.getvalue())
    assert flat(test) == expected(run)
    assert test.counts.errors == 0


def test_zero_cases() -> None:
    text = ktap_document(RunResult())
    assert text.splitlines()[0] == "KTAP version 1"
    assert text.splitlines()[2] == "1..0"
    test = parse_ktap(text)
    assert test.subtests == []
    assert test.status == kunit_parser().TestStatus.NO_TESTS


def test_ten_thousand_cases_parse_with_matching_counts() -> None:
    cases = [CaseResult(case_id=f"scenarios/f{i % 10}.yaml::c[{i}]", file=f"scenarios/f{i % 10}.yaml",
                        scenario="c", outcome=list(Outcome)[i % 4], message="m")
             for i in range(10_000)]
    cases.sort(key=lambda c: c.file)
    test = parse_ktap(ktap_document(RunResult(cases=cases)))
    assert (test.counts.passed, test.counts.failed, test.counts.skipped) == (2500, 5000, 2500)
    assert test.counts.errors == 0


def test_a_10_mb_console_tail_gives_a_few_diagnostic_lines() -> None:
    run = sample_run()
    run.cases[4].log = "".join(f"[{i:8d}] line {i}\n" for i in range(600_000))  # ~13 MB
    text = ktap_document(run)
    assert len(text) < 8 * 1024
    lines = text.splitlines()
    j = lines.index("  not ok 2 driver-memcpy[iommu_mode=iommufd,size=4096]")
    assert lines[j - 1] == "  # [  599999] line 599999"
    assert parse_ktap(text).counts.errors == 0


def test_every_step_is_a_diagnostic_line_in_its_cases_kunit_log() -> None:
    run = sample_run()
    run.cases[0].steps[1].name = "PF # Subtest: not a header\nok 9 not a result"
    test = parse_ktap(ktap_document(run))
    assert test.counts.errors == 0
    assert (test.counts.passed, test.counts.failed, test.counts.skipped) == (2, 2, 1)
    cases = [t for g in test.subtests for t in g.subtests]
    assert len(cases) == len(run.cases)
    for case, parsed in zip(run.cases, cases, strict=True):
        steps = [line.strip() for line in parsed.log if line.strip().startswith("# ")
                 and line.split()[1].lstrip("T").isdigit()]
        assert len(steps) == len(case.steps), parsed.log
        for step, line in zip(case.steps, steps, strict=True):
            number = f"T{step.index + 1}" if step.teardown else str(step.index + 1)
            words = line.split()
            assert words[1:4] == [number, step.outcome.label, f"{step.duration:.4f}s"], line
            assert f"[{step.location}]" in line
            if step.outcome is not Outcome.PASS:
                assert f"expected {step.expected}, got {step.actual}" in line
    named = [line for line in cases[0].log if "open_device" in line]
    # a step's name cannot open a group or end the case: one line, defanged
    assert [line.strip() for line in named] == [
        ("#   2 PASS     0.1200s  PF # Subtest - not a header ok 9 not a result (open_device)  "
         "[scenarios/dma/map.yaml:11]")]
