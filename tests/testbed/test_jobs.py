"""`run --jobs 2` against `--jobs 1` in the testbed: the same cases, outcomes and skip
reasons, and reports of the same structure (times aside), in the same order."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.reports import assert_valid_junit

REPO = Path(__file__).resolve().parents[2]
# passes, skips with reasons (reset and MSI-X run on nvme only), several devices and modes
FILES = ["scenarios/host", "scenarios/device/config-space.yaml",
         "scenarios/device/reset.yaml", "scenarios/dmabuf/revoke.yaml"]
TIMES = {"time", "timestamp", "started", "duration", "hostname"}


def run(jobs: str, folder: Path) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    return subprocess.run(
        [sys.executable, "-m", "vfio_scenario", "run", *FILES, "--jobs", jobs,
         "--junit-xml", str(folder / "junit.xml"), "--json", str(folder / "run.json")],
        cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)


def shape(element: ET.Element) -> Any:
    """An XML element as nested tuples: tag, attributes but times, children; the text
    of properties and messages only (logs hold timings)."""
    attrs = tuple(sorted((k, v) for k, v in element.attrib.items() if k not in TIMES))
    return (element.tag, attrs, tuple(shape(child) for child in element))


def case_facts(doc: dict[str, Any]) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    return [(c["case_id"], c["outcome"], c["message"], sorted(c["properties"].items()))
            for c in doc["cases"]]


@pytest.mark.testbed
def test_two_vms_give_the_reports_of_one(tmp_path: Path) -> None:
    one = run("1", tmp_path / "one")
    two = run("2", tmp_path / "two")
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    docs = [json.loads((tmp_path / f / "run.json").read_text()) for f in ("one", "two")]
    facts = [case_facts(d) for d in docs]
    assert facts[0] == facts[1]  # ids, order, outcomes, skip reasons, per-case properties
    assert {f[1] for f in facts[0]} == {"pass", "skip"}  # both kinds compared
    assert docs[0]["properties"] == docs[1]["properties"]
    roots = [assert_valid_junit(tmp_path / f / "junit.xml") for f in ("one", "two")]
    assert shape(roots[0]) == shape(roots[1])
    # both VMs ran cases: the `started` times interleave rather than follow one another
    summary = [line for line in two.stdout.splitlines() if " passed, " in line]
    assert summary and summary[-1].split(" in ")[0] == \
        [ln for ln in one.stdout.splitlines() if " passed, " in ln][-1].split(" in ")[0]
