"""docs/ci/: the GitLab CI template, the GitHub Actions workflow and the LAVA test
definition parse, install the tool as the README says, and call real commands with real
options; their report steps, run on shard results laid out as their run steps lay
them out, give what docs/ci.md says."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from kcidb_io import schema as kcidb_schema
from ruamel.yaml import YAML
from vfio_scenario.cli import build_parser, main
from vfio_scenario.journal import Journal
from vfio_scenario.report.sink import default_journal
from vfio_scenario.results import RunResult
from vfio_scenario.select import parse_shard

from tests.helpers.reports import assert_valid_junit, sample_run
from tests.unit.test_report_lava import LAVA_TEST_CASE, LAVA_TEST_SET, dispatcher_results

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "docs" / "ci"
TOOL = ".venv/bin/vfio-scenario"
BOOTSTRAP = "./scripts/bootstrap"
# what the CI systems put in place of their variables (shard 2 of 4 …)
VALUES = {"$CI_NODE_INDEX": "2", "$CI_NODE_TOTAL": "4", "$CI_PIPELINE_ID": "1234",
          "${{ matrix.shard }}": "2", "${{ github.run_id }}": "5678", "$DEVICE": "0000:01:00.0",
          "$SCENARIOS": "scenarios/"}


def load(name: str) -> Any:
    return YAML(typ="safe").load((CI / name).read_text())


def commands(lines: list[str], values: dict[str, str]) -> list[list[str]]:
    """The vfio-scenario command lines among shell `lines`, variables replaced, as argv
    (without the program); each ends at `||`, `&&` or `;`."""
    found = []
    for line in lines:
        if TOOL not in line:
            continue
        text = line[line.index(TOOL):]
        text = re.split(r"\|\||&&|;", text)[0]
        for var, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(var, value)
        assert "$" not in text, f"a variable the test does not know: {text}"
        found.append(shlex.split(text)[1:])
    return found


def parse(argv: list[str]) -> Any:
    """argv parsed by our own CLI parser (a wrong option exits: the test fails)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "shard", None):
        parse_shard(args.shard)
    return args


def gitlab_jobs() -> dict[str, Any]:
    doc = load("gitlab-ci.yml")
    return {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}


def gitlab_commands(job: dict[str, Any], **values: str) -> list[list[str]]:
    return commands(job["script"], {**VALUES, **{f"${k}": v for k, v in values.items()}})


# GitLab


def test_gitlab_installs_as_the_readme_says(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from vfio_scenario.testbed.paths import cache_dir

    doc = load("gitlab-ci.yml")
    assert doc["default"]["image"] == "debian:bookworm"
    apt, bootstrap = doc["default"]["before_script"]
    assert apt.endswith("apt-get install -y -qq --no-install-recommends python3 sudo")
    assert bootstrap == BOOTSTRAP
    assert f"{BOOTSTRAP} && .venv/bin/vfio-scenario run scenarios/" in \
        (REPO / "README.md").read_text()
    # the job cache holds the folder the testbed keeps its kernels in
    assert doc["variables"]["XDG_CACHE_HOME"] == "$CI_PROJECT_DIR/.cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    [cached] = doc["cache"]["paths"]
    assert cache_dir() == tmp_path / cached.rstrip("/")


def test_gitlab_shards_with_parallel_and_keeps_the_journal_always() -> None:
    job = gitlab_jobs()["library"]
    assert job["parallel"] == 4
    [argv] = gitlab_commands(job)
    assert "--shard $CI_NODE_INDEX/$CI_NODE_TOTAL" in " ".join(job["script"])
    args = parse(argv)
    assert args.command == "run" and args.shard == "2/4"
    assert job["artifacts"]["when"] == "always"
    journal = os.path.relpath(default_journal(args.junit_xml))
    assert journal == "reports/shard-2/journal.jsonl"
    assert any(journal.startswith(p) for p in job["artifacts"]["paths"])


def test_gitlab_kernels_matrix() -> None:
    job = gitlab_jobs()["kernels"]
    [axis] = job["parallel"]["matrix"]
    assert list(axis) == ["KERNEL"]
    for kernel in axis["KERNEL"]:
        [argv] = gitlab_commands(job, KERNEL=kernel)
        args = parse(argv)
        assert args.kernel == kernel and args.junit_file_attribute
        assert job["artifacts"]["reports"]["junit"].replace("$KERNEL", kernel) == args.junit_xml
    assert job["artifacts"]["when"] == "always"


def lay_out_shards(tmp_path: Path, junit_paths: list[str], missing: int) -> RunResult:
    """Each shard's journal where its run command writes it (one shard missing)."""
    run = sample_run()
    for index, junit in enumerate(junit_paths, start=1):
        if index == missing:
            continue
        journal = Journal(tmp_path / os.path.relpath(default_journal(junit)))
        journal.write_run(RunResult(started=run.started, duration=1.0,
                                    properties={**run.properties, "shard": f"{index}/4"}))
        for case in run.cases[index - 1::4]:
            journal.write_case(case)
        journal.close()
    return run


def test_gitlab_merge_job_publishes_the_merged_junit_and_kcidb(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = gitlab_jobs()
    library, merge = jobs["library"], jobs["merge"]
    assert merge["needs"] == ["library"] and merge["when"] == "always"
    assert merge["artifacts"]["when"] == "always"
    junits = [parse(gitlab_commands(library, CI_NODE_INDEX=str(i))[0]).junit_xml
              for i in range(1, 5)]
    monkeypatch.chdir(tmp_path)
    lay_out_shards(tmp_path, junits, missing=3)
    statuses = []
    for argv in gitlab_commands(merge):
        argv = [a for p in argv for a in (sorted(str(f.relative_to(tmp_path))
                                                 for f in tmp_path.glob(p)) if "*" in p else [p])]
        parse(argv)
        statuses.append(main(argv))
    assert statuses == [1, 0]  # the merge's status: a shard had a failure
    assert "exit ${status:-0}" in merge["script"]
    junit = merge["artifacts"]["reports"]["junit"]
    root = ET.parse(tmp_path / junit).getroot()  # with GitLab's file attribute: not Jenkins'
    assert len(list(root.iter("testcase"))) == 4  # shard 3 held the fifth case
    assert {tc.get("file") for tc in root.iter("testcase")} == {
        "scenarios/dma/map.yaml", "scenarios/driver/memcpy.yaml"}
    kcidb = json.loads((tmp_path / "reports" / "kcidb.json").read_text())
    kcidb_schema.V5_3.validate_exactly(kcidb)
    assert [t["status"] for t in kcidb["tests"]][-1] == "MISS"
    assert kcidb["tests"][-1]["path"] == "vfio_scenario.shard-3-of-4"
    for path in merge["artifacts"]["paths"]:
        assert (tmp_path / path).is_file(), path
    assert fnmatch.fnmatch("reports/shard-2/journal.jsonl", "reports/shard-*/journal.jsonl")


# GitHub Actions


def bootstrap_first(runs: list[str]) -> None:
    """The job installs with the bootstrap before its first vfio-scenario command."""
    assert runs.index(BOOTSTRAP) < next(i for i, r in enumerate(runs) if TOOL in r)


def test_github_workflow_shards_with_a_matrix() -> None:
    doc = load("github-workflow.yml")
    jobs = doc["jobs"]
    library = jobs["library"]
    shards = library["strategy"]["matrix"]["shard"]
    assert shards == [1, 2, 3, 4] and library["strategy"]["fail-fast"] is False
    steps = library["steps"]
    runs = [s.get("run", "") for s in steps]
    bootstrap_first(runs)
    for shard in shards:
        [argv] = commands(runs, {**VALUES, "${{ matrix.shard }}": str(shard)})
        args = parse(argv)
        assert args.shard == f"{shard}/{len(shards)}"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/"


def test_github_merge_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = load("github-workflow.yml")["jobs"]
    merge = jobs["merge"]
    assert merge["needs"] == "library" and merge["if"] == "always()"
    runs = [s.get("run", "") for s in merge["steps"]]
    bootstrap_first(runs)
    download = next(s for s in merge["steps"]
                    if s.get("uses", "").startswith("actions/download-artifact"))
    assert download["with"] == {"pattern": "shard-*", "path": "reports/", "merge-multiple": True}
    junits = [parse(commands([s.get("run", "") for s in jobs["library"]["steps"]],
                             {**VALUES, "${{ matrix.shard }}": str(i)})[0]).junit_xml
              for i in range(1, 5)]
    monkeypatch.chdir(tmp_path)
    lay_out_shards(tmp_path, junits, missing=0)
    statuses = []
    for argv in commands(runs, VALUES):
        argv = [a for p in argv for a in (sorted(str(f.relative_to(tmp_path))
                                                 for f in tmp_path.glob(p)) if "*" in p else [p])]
        statuses.append(main(parse(argv) and argv))
    assert statuses == [1, 0]
    report = next(s for s in merge["steps"] if "action-junit-report" in s.get("uses", ""))
    assert report["if"] == "always()"
    root = assert_valid_junit(tmp_path / report["with"]["report_paths"])
    assert len(list(root.iter("testcase"))) == 5
    kcidb_schema.V5_3.validate_exactly(json.loads((tmp_path / "merged/kcidb.json").read_text()))


def test_github_kernels_matrix() -> None:
    job = load("github-workflow.yml")["jobs"]["kernels"]
    runs = [s.get("run", "") for s in job["steps"]]
    bootstrap_first(runs)
    for kernel in job["strategy"]["matrix"]["kernel"]:
        [argv] = commands(runs, {**VALUES, "${{ matrix.kernel }}": kernel})
        assert parse(argv).kernel == kernel


# LAVA


def test_lava_definition_is_a_test_definition_1_0() -> None:
    doc = load("lava-vfio-scenario.yaml")
    assert doc["metadata"]["format"] == "Lava-Test Test Definition 1.0"
    assert doc["metadata"]["name"] == "vfio-scenario" and doc["metadata"]["description"]
    assert set(doc) == {"metadata", "params", "install", "run"}
    assert doc["install"]["steps"] == [f"VFIO_SCENARIO_SKIP_TESTBED=1 {BOOTSTRAP}"]
    run_argv, lava_argv = commands(doc["run"]["steps"], VALUES)
    args = parse(run_argv)
    assert args.command == "run" and args.device == ["0000:01:00.0"]
    assert args.paths == ["scenarios/"]
    assert doc["run"]["steps"][0].endswith("|| test $? -eq 1")
    assert parse(lava_argv).files == [args.json]


def test_lava_run_steps_report_every_case(tmp_path: Path) -> None:
    """The definition's report steps, run by sh as LAVA's test shell would (with
    stand-ins for lava-test-case/lava-test-set), on a results file where its run step
    writes it."""
    doc = load("lava-vfio-scenario.yaml")
    results = tmp_path / parse(commands(doc["run"]["steps"], VALUES)[0]).json
    results.parent.mkdir(parents=True)
    from vfio_scenario.report.jsonout import json_document

    results.write_text(json_document(sample_run()))
    bin_dir = tmp_path / "lava-bin"
    bin_dir.mkdir()
    for name, text in (("lava-test-case", LAVA_TEST_CASE), ("lava-test-set", LAVA_TEST_SET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    tool = tmp_path / ".venv" / "bin" / "vfio-scenario"
    tool.parent.mkdir(parents=True)
    tool.symlink_to(Path(sys.executable).parent / "vfio-scenario")  # this venv's
    script = "set -e\n" + "\n".join(doc["run"]["steps"][1:]) + "\n"
    out = subprocess.run(["sh", "-c", script], check=False, cwd=tmp_path, capture_output=True,
                         text=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    results_seen = dispatcher_results(out.stdout.splitlines())
    assert len(results_seen) == 5
    assert {r["set"] for r in results_seen.values()} == {"scenarios_dma_map.yaml",
                                                         "scenarios_driver_memcpy.yaml"}


@pytest.mark.parametrize(("status", "goes_on"), [(0, True), (1, True), (2, False), (3, False),
                                                 (5, False)])
def test_lava_run_step_goes_on_after_failed_cases_only(tmp_path: Path, status: int,
                                                       goes_on: bool) -> None:
    """LAVA runs the steps under `set -e`: the run step's status 1 (a case failed) is a
    result; a usage error (2), no device (3) or nothing selected (5) stops the definition."""
    step = load("lava-vfio-scenario.yaml")["run"]["steps"][0]
    tool = tmp_path / ".venv" / "bin" / "vfio-scenario"
    tool.parent.mkdir(parents=True)
    tool.write_text(f"#!/bin/sh\nexit {status}\n")
    tool.chmod(0o755)
    out = subprocess.run(["sh", "-e", "-c", f"{step}\necho went-on"], cwd=tmp_path,
                         env={**os.environ, "DEVICE": "0000:01:00.0", "SCENARIOS": "scenarios/"},
                         capture_output=True, text=True, timeout=30, check=False)
    assert ("went-on" in out.stdout) is goes_on
