"""`report lava`: lava-test-set/lava-test-case commands, checked against what LAVA's
dispatcher does with them (lava_dispatcher/actions/test/shell.py: a TESTCASE signal's
parameters are split at blanks and each at `=` into exactly two parts, a repeated case
name in one definition's results is a JobError; lava_results_app: names of 100
characters at most, sets of 200)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.lava import (
    NAME_LIMIT,
    VALID_NAME,
    case_slug,
    lava_lines,
    lava_script,
    set_slug,
)
from vfio_scenario.results import CaseResult, Outcome, RunResult

from tests.helpers.reports import sample_run

# Stand-ins for LAVA's test shell helpers: they print the signal LAVA's lava-test-case
# and lava-test-set print (`<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=… RESULT=… …>`).
LAVA_TEST_CASE = """#!/bin/sh
id=$1; shift
while [ $# -gt 0 ]; do
    case $1 in
        --result) result=$2; shift 2;;
        --measurement) measurement=$2; shift 2;;
        --units) units=$2; shift 2;;
        *) echo "bad argument $1" >&2; exit 1;;
    esac
done
echo "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=$id RESULT=$result MEASUREMENT=$measurement UNITS=$units>"
"""
LAVA_TEST_SET = """#!/bin/sh
echo "<LAVA_SIGNAL_TESTSET $(echo "$1" | tr a-z A-Z) $2>"
"""


def dispatcher_results(signals: list[str]) -> dict[str, dict[str, str]]:
    """What LAVA's dispatcher makes of the signals (its handle_testcase and test set
    logic): {case name: {result, measurement, units, set}}; raises as it would."""
    results: dict[str, dict[str, str]] = {}
    testset = ""
    for line in signals:
        assert line.startswith("<LAVA_SIGNAL_") and line.endswith(">"), line
        name, params = line[len("<LAVA_SIGNAL_"):-1].split(" ", 1)
        words = params.split()
        if name == "TESTSET":
            testset = words[1] if words[0] == "START" else ""
            continue
        data = {}
        for param in words:
            parts = param.split("=")
            assert len(parts) == 2, f"malformed parameter for signal: {param}"
            data[parts[0].lower()] = parts[1]
        case = data.pop("test_case_id")
        assert case not in results, f"Duplicate test_case_id in results: {case}"
        assert VALID_NAME.match(case) and len(case) <= NAME_LIMIT
        results[case] = {**data, "set": testset}
    return results


def run_script(script: str, tmp_path: Path) -> list[str]:
    bin_dir = tmp_path / "lava-bin"
    bin_dir.mkdir()
    for name, text in (("lava-test-case", LAVA_TEST_CASE), ("lava-test-set", LAVA_TEST_SET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = tmp_path / "results.sh"
    path.write_text(script)
    out = subprocess.run(["sh", str(path)], env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.splitlines()


def test_sample_run_becomes_sets_per_file_and_cases_with_seconds(tmp_path: Path) -> None:
    assert lava_lines(sample_run()) == [
        "lava-test-set start scenarios_dma_map.yaml",
        ("lava-test-case map-unmap.iommu_mode-iommufd.size-4096 --result pass "
        "--measurement 0.146 --units seconds"),
        ("lava-test-case map-unmap.iommu_mode-vfio_type1v2_iommu.size-4096 --result fail "
        "--measurement 0.129 --units seconds"),
        ("lava-test-case map-unmap.iommu_mode-vfio_type1_iommu.size-4096 --result skip "
        "--measurement 0.002 --units seconds"),
        "lava-test-set stop",
        "lava-test-set start scenarios_driver_memcpy.yaml",
        ("lava-test-case driver-memcpy.iommu_mode-iommufd.size-256 --result pass "
        "--measurement 0.008 --units seconds"),
        ("lava-test-case driver-memcpy.iommu_mode-iommufd.size-4096 --result fail "
        "--measurement 5.008 --units seconds"),
        "lava-test-set stop",
    ]
    results = dispatcher_results(run_script(lava_script(sample_run()), tmp_path))
    assert results["driver-memcpy.iommu_mode-iommufd.size-4096"] == {
        "result": "fail", "measurement": "5.008", "units": "seconds",
        "set": "scenarios_driver_memcpy.yaml"}


def test_known_issues_map_as_in_junit() -> None:
    run = sample_run()
    run.cases[1].known_issue = {"reason": "r"}  # failed: xfail
    run.cases[0].known_issue = {"reason": "r"}  # passed: xpass
    results = [line.split(" --result ")[1].split()[0] for line in lava_lines(run)
               if line.startswith("lava-test-case")]
    assert results == ["pass", "skip", "skip", "pass", "fail"]


def test_odd_names_are_slugged_unique_and_within_lavas_limits(tmp_path: Path) -> None:
    f1, f2 = "scenarios/a b/x.yaml", "other/x.yaml"
    names = ["t[p=a b,q=x/y:z,r=[1, 2]]", "t[p=a b,q=x/y:z,r=[1, 2]]", "ü ö > <", "-dash",
             "long[" + ",".join(f"param{i}=value{i}" for i in range(20)) + "]",
             "long[" + ",".join(f"param{i}=value{i}" for i in range(19)) + ",x=1]"]
    cases = [CaseResult(case_id=f"{f}::{n}", file=f, scenario="t", outcome=Outcome.PASS)
             for f in (f1, f2) for n in names]
    run = RunResult(cases=cases)
    results = dispatcher_results(run_script(lava_script(run), tmp_path))  # raises on any clash
    assert len(results) == len(cases)
    assert set_slug(f1) == "scenarios_a_b_x.yaml"
    assert case_slug("t[p=a b,q=x/y:z,r=[1, 2]]") == "t.p-a_b.q-x_y_z.r-.1._2_"
    long = [n for n in results if n.startswith("long")]
    assert len(long) == 4 and all(len(n) <= NAME_LIMIT for n in long)
    # a name over 100 characters: its first 91, `-` and 8 hex digits of the name's digest
    cut = case_slug(names[4])
    assert len(cut) == 100 and re.fullmatch(r"long\.param0-value0\..{72}-[0-9a-f]{8}", cut)
    assert len(set(long)) == 4
    script = lava_script(run)
    for line in script.splitlines()[3:]:
        assert shlex.split(line) == line.split()  # nothing the shell would reinterpret


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "results.json"
    src.write_text(json_document(sample_run()))
    assert main(["report", "lava", str(src)]) == 0
    printed = capsys.readouterr().out
    assert printed == lava_script(sample_run())
    out = tmp_path / "lava.sh"
    assert main(["report", "lava", str(src), "-o", str(out)]) == 0
    assert out.read_text() == printed
    assert main(["report", "lava", str(tmp_path / "missing.json")]) == 2
