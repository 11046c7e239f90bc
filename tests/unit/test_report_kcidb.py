"""`report kcidb`: KCIDB I/O JSON, validated by kcidb-io itself (the schema KCIDB publishes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kcidb_io import schema as kcidb_schema
from vfio_scenario import __version__
from vfio_scenario.cli import main
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.kcidb import (
    LOG_EXCERPT_LIMIT,
    KcidbOptions,
    kcidb_document,
    kcidb_path,
)
from vfio_scenario.results import CaseResult, Outcome, RunResult

from tests.helpers.reports import nasty_text, sample_run

SCHEMA = kcidb_schema.V5_3


def valid(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` after kcidb-io's own validation (and a JSON round trip, as submitted)."""
    doc = json.loads(json.dumps(doc))
    SCHEMA.validate_exactly(doc)
    return doc


def test_the_schema_is_kcidb_ios_latest_v5() -> None:
    assert (SCHEMA.major, SCHEMA.minor) == (5, 3)
    assert kcidb_schema.LATEST >= SCHEMA


def test_a_run_is_one_checkout_one_build_and_a_test_per_case() -> None:
    doc = valid(kcidb_document(sample_run(), KcidbOptions(origin="my_ci", run_id="p42")))
    assert doc["version"] == {"major": 5, "minor": 3}
    assert [c["id"] for c in doc["checkouts"]] == ["my_ci:p42"]
    assert [(b["id"], b["checkout_id"]) for b in doc["builds"]] == [("my_ci:p42", "my_ci:p42")]
    tests = doc["tests"]
    assert [(t["id"], t["build_id"], t["status"]) for t in tests] == [
        ("my_ci:p42:scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096]",
         "my_ci:p42", "PASS"),
        ("my_ci:p42:scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]",
         "my_ci:p42", "FAIL"),
        ("my_ci:p42:scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1_iommu,size=4096]",
         "my_ci:p42", "SKIP"),
        ("my_ci:p42:scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=256]",
         "my_ci:p42", "PASS"),
        ("my_ci:p42:scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=4096]",
         "my_ci:p42", "ERROR"),
    ]
    assert all(t["origin"] == "my_ci" for t in tests)
    assert tests[0]["start_time"] == "2026-11-18T11:06:40.000000+00:00"
    assert tests[1]["duration"] == 0.1287


def test_paths_map_our_ids_onto_kcidbs_pattern() -> None:
    doc = valid(kcidb_document(sample_run()))
    assert [t["path"] for t in doc["tests"]] == [
        "vfio_scenario.dma.map.map-unmap.iommu_mode-iommufd.size-4096",
        "vfio_scenario.dma.map.map-unmap.iommu_mode-vfio_type1v2_iommu.size-4096",
        "vfio_scenario.dma.map.map-unmap.iommu_mode-vfio_type1_iommu.size-4096",
        "vfio_scenario.driver.memcpy.driver-memcpy.iommu_mode-iommufd.size-256",
        "vfio_scenario.driver.memcpy.driver-memcpy.iommu_mode-iommufd.size-4096",
    ]
    odd = ["./my tests/a.b:c.yml::x y[p=a/b:c,q=[1, 2],flag=true]", "lonely",
           "scenarios/t.yaml::t[p=1]", "scenarios/t.yaml::t[p-1]", "x.yaml::ü[=]"]
    paths = [kcidb_path(i) for i in odd]
    assert paths[0] == "vfio_scenario.my_tests.a_b_c.x_y.p-a_b_c.q-_1._2_.flag-true"
    assert paths[1] == "vfio_scenario.lonely"
    assert paths[4] == "vfio_scenario.x._._-_"  # empty parts are `_`
    for p in paths:
        assert SCHEMA.path_re.match(p), p
    # two ids that map onto one path: the second gets a suffix, every path stays unique
    cases = [CaseResult(case_id=i, file="", scenario="", outcome=Outcome.PASS) for i in odd[2:4]]
    doc = valid(kcidb_document(RunResult(cases=cases)))
    assert [t["path"] for t in doc["tests"]] == ["vfio_scenario.t.t.p-1", "vfio_scenario.t.t.p-1-2"]


def test_matrix_values_and_properties_go_to_misc() -> None:
    doc = valid(kcidb_document(sample_run()))
    t = doc["tests"][3]
    assert t["misc"]["params"] == {"iommu_mode": "iommufd", "size": 256}
    assert t["misc"]["case_id"] == \
        "scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=256]"
    assert t["misc"]["properties"]["scenario_driver"] == "edu"
    assert t["environment"]["misc"] == {"device": "0000:00:03.0", "vendor_device": "1234:11e8",
                                        "vfio_driver": "vfio-pci"}
    assert t["misc"]["tags"] == ["dma"] and t["misc"]["scenario"] == "driver-memcpy"
    run = sample_run()
    run.cases[4].kernel_splats = [{"kind": "warning", "title": "WARNING: x", "text": "long",
                                   "allowed": False}]
    assert valid(kcidb_document(run))["tests"][4]["misc"]["kernel_splats"] == ["WARNING: x"]


def test_log_excerpt_holds_message_steps_and_log_tail_within_16_kib() -> None:
    run = sample_run()
    run.cases[4].log = "console line\n" * 100_000 + "LAST LINE\n" + nasty_text()
    run.cases[1].steps[3].message += nasty_text()
    doc = valid(kcidb_document(run))
    error = doc["tests"][4]["log_excerpt"]
    assert len(error) <= LOG_EXCERPT_LIMIT == 16384
    assert error.startswith("step 7 `memcpy_wait` at scenarios/driver/memcpy.yaml:21: ")
    assert "\nsteps:\n" in error and "  7 ERROR " in error
    assert "LAST LINE" in error and "characters cut; the JSON report holds the whole log]" in error
    assert "\x00" not in error and "\\x00" in error
    assert "log_excerpt" not in doc["tests"][0]  # a pass has nothing to explain
    assert doc["tests"][2]["log_excerpt"].startswith("IOMMU mode vfio_type1_iommu: ")


def test_expected_cases_no_input_holds_are_miss() -> None:
    run = sample_run()
    expected = [c.case_id for c in run.cases] + [
        "scenarios/dma/other.yaml::never-ran[iommu_mode=iommufd]"]
    doc = valid(kcidb_document(run, expected=expected))
    assert [t["status"] for t in doc["tests"]] == ["PASS", "FAIL", "SKIP", "PASS", "ERROR", "MISS"]
    assert doc["tests"][-1]["path"] == "vfio_scenario.dma.other.never-ran.iommu_mode-iommufd"


def test_known_issue_keeps_its_real_status_and_names_the_issue() -> None:
    run = sample_run()
    run.cases[1].known_issue = {"reason": "fixed upstream", "url": "https://example.org/1",
                                "pattern": "*", "source": "known.yaml:1:3"}
    t = valid(kcidb_document(run))["tests"][1]
    assert t["status"] == "FAIL" and t["misc"]["known_issue"]["reason"] == "fixed upstream"


def test_tests_of_a_build_another_origin_submitted() -> None:
    doc = valid(kcidb_document(sample_run(), KcidbOptions(origin="lab", build_id="maestro:b1")))
    assert "checkouts" not in doc and "builds" not in doc
    assert {t["build_id"] for t in doc["tests"]} == {"maestro:b1"}
    doc = valid(kcidb_document(sample_run(), KcidbOptions(
        checkout_id="maestro:c1", tree_name="mainline", git_commit_hash="a" * 40,
        git_repository_url="https://git.example.org/linux.git")))
    assert "checkouts" not in doc and doc["builds"][0]["checkout_id"] == "maestro:c1"
    doc = valid(kcidb_document(sample_run(), KcidbOptions(
        tree_name="mainline", git_commit_hash="a" * 40, git_repository_branch="master",
        git_repository_url="https://git.example.org/linux.git")))
    assert doc["checkouts"][0]["git_commit_hash"] == "a" * 40


def test_the_validator_catches_what_we_map() -> None:
    """The mapping matters: our raw ids are not KCIDB paths, and kcidb-io says so."""
    doc = kcidb_document(sample_run())
    doc["tests"][0]["path"] = "scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096]"
    with pytest.raises(jsonschema.ValidationError):
        SCHEMA.validate_exactly(doc)
    doc = kcidb_document(sample_run())
    doc["tests"][4]["log_excerpt"] = "x" * (LOG_EXCERPT_LIMIT + 1)
    with pytest.raises(jsonschema.ValidationError):
        SCHEMA.validate_exactly(doc)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = sample_run()
    shard1, shard2 = tmp_path / "s1.json", tmp_path / "s2.json"
    shard1.write_text(json_document(RunResult(cases=run.cases[:2], started=run.started,
                                              properties=run.properties)))
    shard2.write_text(json_document(RunResult(cases=run.cases[2:4], started=run.started,
                                              properties=run.properties)))
    planned = tmp_path / "planned.txt"
    planned.write_text("".join(c.case_id + "  [dma]\n" for c in run.cases))
    out = tmp_path / "kcidb.json"
    assert main(["report", "kcidb", str(shard1), str(shard2), "-o", str(out), "--origin", "ci",
                 "--run-id", "pipeline-7", "--expected", str(planned)]) == 0
    doc = valid(json.loads(out.read_text()))
    assert [t["status"] for t in doc["tests"]] == ["PASS", "FAIL", "SKIP", "PASS", "MISS"]
    assert doc["tests"][-1]["id"] == ("ci:pipeline-7:scenarios/driver/memcpy.yaml::"
                                      "driver-memcpy[iommu_mode=iommufd,size=4096]")
    assert main(["report", "kcidb", str(shard1)]) == 0
    valid(json.loads(capsys.readouterr().out))
    for bad, says in [(["--origin", "My-CI"], "only lowercase letters, digits and _"),
                      (["--build-id", "nocolon"], "not ORIGIN:ID"),
                      (["--git-commit-hash", "abc"], "not 40 lowercase hex digits"),
                      (["--git-repository-url", "git://x"], "https:// URLs only"),
                      (["--expected", str(tmp_path / "nope")], "cannot read")]:
        assert main(["report", "kcidb", str(shard1), *bad]) == 2
        assert says in capsys.readouterr().err


def test_a_shard_that_never_reported_is_one_miss_test(tmp_path: Path) -> None:
    """Each shard's run records `shard: I/N`; the merge lists the values it saw."""
    run = sample_run()
    shards = []
    for index, cases in ((1, run.cases[:2]), (2, run.cases[2:3]), (4, run.cases[3:])):
        path = tmp_path / f"shard{index}.json"
        path.write_text(json_document(RunResult(cases=cases, started=run.started,
                                                properties={**run.properties,
                                                            "shard": f"{index}/4"})))
        shards.append(str(path))
    out = tmp_path / "kcidb.json"
    assert main(["report", "kcidb", *shards, "-o", str(out), "--run-id", "r"]) == 0
    tests = valid(json.loads(out.read_text()))["tests"]
    assert [t["status"] for t in tests] == ["PASS", "FAIL", "SKIP", "PASS", "ERROR", "MISS"]
    assert (tests[-1]["id"], tests[-1]["path"]) == ("vfio_scenario:r:shard-3-of-4",
                                                    "vfio_scenario.shard-3-of-4")
    assert tests[-1]["comment"].startswith("shard 3/4 never reported")
    # all shards there, or no shards at all: no MISS
    assert main(["report", "kcidb", shards[0], "-o", str(out)]) == 0
    assert "MISS" in {t["status"] for t in json.loads(out.read_text())["tests"]}
    assert all(t["status"] != "MISS" for t in valid(kcidb_document(run))["tests"])


def test_a_sharded_run_records_its_shard() -> None:
    from vfio_scenario.cli import build_parser
    from vfio_scenario.run.dispatch import run_facts

    args = build_parser().parse_args(["run", "--shard", "03/4"])
    assert run_facts(args, "testbed") == {"engine_version": __version__, "where": "testbed",
                                          "shard": "3/4"}
    assert "shard" not in run_facts(build_parser().parse_args(["run"]), "host")
