"""scenarios/README.md's table of the iommufd_fail_nth port lists every C case, case for case.

The C cases are counted from 7.2's tools/testing/selftests/iommu/iommufd_fail_nth.c
itself: each TEST_FAIL_NTH(fixture, name) is a TEST_F the harness names fixture.name.
The table must hold each once, name only case ids that
`scenarios/kselftest/iommufd_fail_nth.yaml` has (all of them), and its "N of M ported"
line must be the count of rows with a case.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.port_tables import check_port_table

ROOT = Path(__file__).resolve().parents[2]
PORT = ROOT / "scenarios" / "kselftest" / "iommufd_fail_nth.yaml"
SECTION = "### iommufd_fail_nth → `kselftest/iommufd_fail_nth.yaml`"


def c_cases(source: str) -> list[str]:
    """fixture.name of every TEST_FAIL_NTH (the macro's own #define excluded)."""
    return [f"{fixture}.{name}" for fixture, name in
            re.findall(r"^TEST_FAIL_NTH\((\w+),\s*(\w+)\)", source, re.MULTILINE)]


def test_counting_skips_the_macro_definition() -> None:
    source = "#define TEST_FAIL_NTH(fixture_name, name) \\\nTEST_FAIL_NTH(a, x)\n"
    assert c_cases(source) == ["a.x"]


def _source() -> str:
    cache = Path.home() / ".cache" / "vfio-scenario" / "linux-source"
    found = sorted(cache.glob("*/linux-source-7.2/tools/testing/selftests/iommu/"
                              "iommufd_fail_nth.c"))
    if not found:
        pytest.skip("the Debian linux-source-7.2 tree is not extracted here")
    return found[-1].read_text()


def _table() -> tuple[list[tuple[str, list[str], str]], str]:
    text = (ROOT / "scenarios" / "README.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        rows.append((cells[0].strip("`"), re.findall(r"`([^`]+)`", cells[1]), cells[2]))
    return rows, section


def test_the_table_lists_every_c_case_once() -> None:
    cases = c_cases(_source())
    assert len(cases) == 8
    listed = [r[0] for r in _table()[0]]
    assert len(listed) == len(set(listed)), "a C case is listed twice"
    assert sorted(listed) == sorted(cases)


def test_the_tables_case_ids_exist_and_the_count_is_right() -> None:
    check_port_table(PORT, *_table())
