"""`--shard I/N --shard-by duration --durations FILE`, and the options' bad input
(`--jobs 0`, a bad FILE …): usage errors with exit status 2 before anything runs."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from vfio_scenario.errors import ExitCode, UsageError
from vfio_scenario.journal import Journal
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.results import CaseResult, Outcome, RunResult
from vfio_scenario.select import (
    duration_shards,
    expected_times,
    load_durations,
    shard,
    shard_by_duration,
)

ROOT = Path(__file__).resolve().parents[2]
IDS = [f"scenarios/f{f}.yaml::s[iommu_mode={m},size={s}]"
       for f in range(5) for m in ("iommufd", "vfio_type1v2_iommu") for s in range(10)]
# skewed like the library: a few slow cases among many fast ones
TIMES = {case_id: (12.0 if i % 17 == 0 else 0.1 + (i % 7) * 0.3) for i, case_id in enumerate(IDS)}


def loads(shards: list[list[str]], times: dict[str, float]) -> list[float]:
    return [sum(times[c] for c in s) for s in shards]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 100, 150])
def test_every_case_lands_in_exactly_one_shard_in_run_order(count: int) -> None:
    shards = [shard_by_duration(IDS, i, count, TIMES) for i in range(1, count + 1)]
    assert sorted(c for s in shards for c in s) == sorted(IDS)
    for s in shards:
        assert s == [c for c in IDS if c in set(s)]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_duration_shards_balance_time_better_than_the_id_split(count: int) -> None:
    by_time = loads([shard_by_duration(IDS, i, count, TIMES) for i in range(1, count + 1)],
                    TIMES)
    by_id = loads([shard(IDS, i, count) for i in range(1, count + 1)], TIMES)
    # greedy LPT: the longest shard exceeds the mean by at most the longest case
    assert max(by_time) - sum(by_time) / count <= max(TIMES.values())
    assert max(by_time) <= max(by_id)
    assert max(by_time) - min(by_time) <= max(TIMES.values())


def test_lpt_on_a_known_example() -> None:
    ids = ["a", "b", "c", "d", "e"]
    times = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.5, "e": 1.5}
    # a→1 (5), b→2 (4), c→2 (4<5: 7), d→1 (5<7: 7.5), e→2 (7<7.5: 8.5)
    assert [sorted(ids[i] for i in s) for s in duration_shards(ids, 2, times)] == \
        [["a", "d"], ["b", "c", "e"]]


def test_duration_shards_are_deterministic() -> None:
    reordered = IDS[:]
    random.Random(4).shuffle(reordered)
    for i in range(1, 4):
        assert set(shard_by_duration(IDS, i, 3, TIMES)) == \
            set(shard_by_duration(reordered, i, 3, TIMES))
    code = ("from vfio_scenario.select import shard_by_duration\n"
            "ids=[f'c{i}' for i in range(40)]\n"
            "print(shard_by_duration(ids, 2, 3, {f'c{i}': float(i % 5) for i in range(20)}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed}, check=True).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_unknown_durations_expect_the_median_of_the_known_ones() -> None:
    known = {"a": 1.0, "b": 3.0, "c": 10.0}
    assert expected_times(["a", "b", "c", "new"], known) == [1.0, 3.0, 10.0, 3.0]
    # no case known: the median of the whole file; an empty file: zero for all
    assert expected_times(["x", "y"], known) == [3.0, 3.0]
    assert expected_times(["x", "y"], {}) == [0.0, 0.0]
    # all unknown still gives every case exactly one shard
    shards = [shard_by_duration(IDS, i, 3, {}) for i in range(1, 4)]
    assert sorted(c for s in shards for c in s) == sorted(IDS)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_ids_match_whatever_the_order_of_their_parameters() -> None:
    times = {"f.yaml::s[size=4,iommu_mode=iommufd]": 7.0}
    assert expected_times(["f.yaml::s[iommu_mode=iommufd,size=4]"], times) == [7.0]


def result(case_id: str, seconds: float) -> CaseResult:
    return CaseResult(case_id=case_id, file="f.yaml", scenario="s", outcome=Outcome.PASS,
                      duration=seconds)


def test_durations_come_from_a_journal_or_a_json_report(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.write_case(result("f.yaml::a", 1.5))
    journal.write_case(result("f.yaml::b", 0.25))
    journal.close()
    assert load_durations(str(tmp_path / "journal.jsonl")) == {"f.yaml::a": 1.5,
                                                              "f.yaml::b": 0.25}
    report = tmp_path / "run.json"
    report.write_text(json_document(RunResult(cases=[result("f.yaml::c", 2.0)])))
    assert load_durations(str(report)) == {"f.yaml::c": 2.0}


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    ("{\"x\": 1}", "neither a vfio-scenario JSON report nor a journal"),
    ('{"type": "journal", "schema_version": 1}\n{"type": "case"\n{}\n',
     "neither a vfio-scenario JSON report nor a journal"),
])
def test_a_bad_durations_file_is_a_usage_error_naming_it(tmp_path: Path, content: str | None,
                                                          message: str) -> None:
    path = tmp_path / "durations.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message) as info:
        load_durations(str(path))
    assert str(path) in str(info.value)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from vfio_scenario.cli import main

    try:
        status = main(["run", str(ROOT / "scenarios" / "host"), *args])
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "--jobs: '0' is not a positive whole number or 'auto'"),
    (["--jobs", "x"], "--jobs: 'x' is not a positive whole number or 'auto'"),
    (["--jobs", "-2"], "--jobs: '-2' is not a positive whole number or 'auto'"),
    (["--jobs", "2", "--device", "0000:00:03.0"], "--jobs 2 runs testbed VMs; with --device"),
    (["--jobs", "2", "--baseline-kernel", "debian"],
     "--jobs 2 cannot be combined with --baseline-kernel"),
    (["--shard-by", "duration", "--durations", "x.json"],
     "--shard-by duration splits a --shard I/N run"),
    (["--shard", "1/2", "--shard-by", "duration"], "--shard-by duration needs --durations"),
    (["--shard", "1/2", "--shard-by", "size"], "--shard-by: invalid choice: 'size'"),
])
def test_bad_options_are_usage_errors(args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli(args, capsys)
    assert status == ExitCode.USAGE
    assert message in err
    assert "Traceback" not in err


def test_a_bad_durations_file_stops_the_run_before_it_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "old.jsonl"
    bad.write_text('{"type": "journal", "schema_version": 1}\nnot json\n{}\n')
    status, err = run_cli(["--shard", "1/2", "--shard-by", "duration", "--durations",
                           str(bad), "--junit-xml", str(tmp_path / "j.xml")], capsys)
    assert status == ExitCode.USAGE
    assert f"{bad}:2: damaged journal line" in err
    assert not (tmp_path / "j.xml").exists()


def test_jobs_auto_is_the_cores_this_process_may_use() -> None:
    import os

    from vfio_scenario.run.cli import _jobs

    assert _jobs("auto") == len(os.sched_getaffinity(0))
    assert _jobs("3") == 3


def test_the_shard_by_duration_selection_is_what_the_run_runs(tmp_path: Path) -> None:
    durations = tmp_path / "run.json"
    from vfio_scenario.language.compile import compile_paths

    cases = compile_paths([str(ROOT / "scenarios" / "host")]).cases
    times = {c.id: float(i) for i, c in enumerate(cases)}
    durations.write_text(json_document(RunResult(cases=[result(k, v) for k, v in times.items()])))
    import argparse

    from vfio_scenario.run.dispatch import select

    ns = argparse.Namespace(keyword=None, tag=[], shard="1/2", shard_by="duration",
                            durations=str(durations), driver=None)
    mine = [c.id for c in select(cases, ns)]
    assert mine == shard_by_duration([c.id for c in cases], 1, 2, times)
    assert json.loads(durations.read_text())["cases"]
