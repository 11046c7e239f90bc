"""The library's counts in README.md and scenarios/README.md are those of the pinned list.

scenarios/README.md's table "The library's counts" gives, per part of the library, its
cases and, per testbed kernel, how many passed, skipped and were expected failures
(xfail) in the run it is dated by. The cases and the skips must be what
tests/data/expected-skips.yaml pins (which tests/testbed/test_run_library.py checks
against a real run of the library), and passed + skipped + xfail must be the cases.
README.md's sentence on the whole library must give the table's figures.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import skips

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### The library's counts"
ROW = re.compile(r"^\| (?P<part>[^|]+?) \| (?P<cases>\d+) \| (?P<default>[\d /]+?) \| "
                 r"(?P<debian>[\d /]+?) \|$")


def _table() -> dict[str, tuple[int, tuple[int, int, int], tuple[int, int, int]]]:
    text = (ROOT / "scenarios" / "README.md").read_text()
    assert HEADING in text, f"scenarios/README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            default = tuple(int(x) for x in m["default"].split("/"))
            debian = tuple(int(x) for x in m["debian"].split("/"))
            assert len(default) == 3 and len(debian) == 3, line
            rows[m["part"].strip("` ")] = (int(m["cases"]), default, debian)
    assert "whole library" in rows, "the table has no 'whole library' row"
    return rows


def _pinned(part: str) -> tuple[int, dict[str, int]]:
    data = skips.load()
    prefix = "scenarios/" if part == "whole library" else f"scenarios/{part}"
    cases = sum(n for f, n in data["case_counts"].items() if f.startswith(prefix))
    skipped = {k: sum(1 for cid in data["skips"].get(k, {}) if cid.startswith(prefix))
               for k in skips.KERNELS}
    return cases, skipped


@pytest.mark.parametrize("part", sorted(_table()))
def test_a_rows_cases_and_skips_are_the_pinned_ones(part: str) -> None:
    cases, (d_pass, d_skip, d_xfail), (b_pass, b_skip, b_xfail) = _table()[part]
    pinned_cases, pinned_skips = _pinned(part)
    assert pinned_cases > 0, f"{part}: no scenario file of the library is under it"
    assert cases == pinned_cases, f"{part}: the table says {cases} cases, the pinned list {pinned_cases}"
    assert d_skip == pinned_skips["default"], f"{part}: default skips"
    assert b_skip == pinned_skips["debian"], f"{part}: Debian skips"
    assert d_pass + d_skip + d_xfail == cases, f"{part}: default figures do not add up"
    assert b_pass + b_skip + b_xfail == cases, f"{part}: Debian figures do not add up"


def test_the_readme_gives_the_tables_whole_library_figures() -> None:
    cases, (d_pass, d_skip, d_xfail), (b_pass, b_skip, b_xfail) = _table()["whole library"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"the library \((\d+) cases\b", readme)
    assert m, "README.md no longer says how many cases the library has"
    assert int(m[1]) == cases
    default, debian = readme[m.end():].split("With `--kernel debian`", 1)
    for text, (passed, skipped, xfail) in ((default, (d_pass, d_skip, d_xfail)),
                                           (debian[:400], (b_pass, b_skip, b_xfail))):
        assert re.search(rf"\b{passed} pass, {skipped} skip\b.*? {xfail} xfail\b", text), \
            f"README.md does not say '{passed} pass, {skipped} skip ... {xfail} xfail'"
