"""scenarios/README.md's table of the iommufd selftest port lists every C case, case for case.

The C cases are counted from 7.2's tools/testing/selftests/iommu/iommufd.c itself (each
TEST_F once per FIXTURE_VARIANT_ADD of its fixture, named as the kselftest harness
prints them: fixture.variant.test); the table must hold each exactly once, name only
case ids that `scenarios/kselftest/iommufd_test.yaml` has, and its "N of M ported" line
must be the count of rows with a case.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.port_tables import check_port_table

ROOT = Path(__file__).resolve().parents[2]
PORT = ROOT / "scenarios" / "kselftest" / "iommufd_test.yaml"
SECTION = "### iommufd → `kselftest/iommufd_test.yaml`"


def c_cases(source: str) -> list[str]:
    """fixture[.variant].test of every TEST_F × FIXTURE_VARIANT_ADD in a selftest source."""
    variants: dict[str, list[str]] = {}
    for fixture, variant in re.findall(r"^FIXTURE_VARIANT_ADD\((\w+),\s*(\w+)\)", source, re.MULTILINE):
        variants.setdefault(fixture, []).append(variant)
    cases = []
    for fixture, test in re.findall(r"^TEST_F\((\w+),\s*(\w+)\)", source, re.MULTILINE):
        for variant in variants.get(fixture, [""]):
            cases.append(f"{fixture}.{variant}.{test}" if variant else f"{fixture}.{test}")
    return cases


def test_counting_follows_the_harness() -> None:
    source = """
FIXTURE(a)
FIXTURE_VARIANT_ADD(a, one)
FIXTURE_VARIANT_ADD(a, two)
TEST_F(a, x)
TEST_F(b, y)
"""
    assert c_cases(source) == ["a.one.x", "a.two.x", "b.y"]


def _iommufd_c() -> str:
    try:
        from vfio_scenario.testbed.assets import linux_source_dir
    except ImportError:
        pytest.skip("no testbed assets module")
    cache = Path.home() / ".cache" / "vfio-scenario" / "linux-source"
    if not any(cache.glob("*/linux-source-7.2/tools/testing/selftests/iommu/iommufd.c")):
        pytest.skip("the Debian linux-source-7.2 tree is not extracted here")
    path = linux_source_dir() / "tools" / "testing" / "selftests" / "iommu" / "iommufd.c"
    return path.read_text()


def _table() -> tuple[list[tuple[str, list[str], str]], str]:
    text = (ROOT / "scenarios" / "README.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`") or cells[0] == "kernel case":
            continue
        ours = re.findall(r"`([^`]+)`", cells[1])
        rows.append((cells[0].strip("`"), ours, cells[2]))
    return rows, section


def test_the_table_lists_every_c_case_once() -> None:
    cases = c_cases(_iommufd_c())
    rows, _ = _table()
    listed = [r[0] for r in rows]
    assert len(listed) == len(set(listed)), "a C case is listed twice"
    assert sorted(listed) == sorted(cases)


def test_the_tables_case_ids_exist_and_the_count_is_right() -> None:
    check_port_table(PORT, *_table())
