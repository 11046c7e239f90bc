"""LAVA: results as `lava-test-case` / `lava-test-set` commands (`report lava`).

A LAVA test shell reports a result by running its helper `lava-test-case NAME --result
pass|fail|skip [--measurement X --units U]`, and groups results by `lava-test-set start
NAME` … `lava-test-set stop`. This module writes those commands, one per line, as a
POSIX shell script the test definition runs (docs/ci/lava-vfio-scenario.yaml):

- one test set per scenario file, one test case per case, its duration as the
  measurement in seconds;
- pass → pass; fail and error → fail; skip → skip; a known issue's failure (xfail) →
  skip and its pass (xpass) → pass, as in the JUnit report;
- names hold only what LAVA takes in a signal and a results URL: letters, digits, `_`,
  `-` and `.`. In a case name `[` and `,` become `.`, `=` becomes `-`, a closing `]` is
  dropped and anything else becomes `_`: `map-unmap[iommu_mode=iommufd,size=4096]` →
  `map-unmap.iommu_mode-iommufd.size-4096`; a set is its file with `/` as `_`;
- case names are unique in the whole run (LAVA rejects a repeated name in one
  definition's results, whatever the set): a repeat gets `-2`, `-3` …; a name longer
  than 100 characters (LAVA's limit) keeps 91 and a digest of the whole name.
"""

from __future__ import annotations

import hashlib
import re

from vfio_scenario.report.describe import group_by_suite, name_in_suite
from vfio_scenario.results import RunResult

NAME_LIMIT = 100  # LAVA's test case name
SET_LIMIT = 200  # LAVA's test set name
RESULT = {"pass": "pass", "fail": "fail", "error": "fail", "skip": "skip",
          "xfail": "skip", "xpass": "pass"}
_OTHER = re.compile(r"[^A-Za-z0-9_.-]")
VALID_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")


def _cap(slug: str, original: str, limit: int) -> str:
    if len(slug) <= limit:
        return slug
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug[: limit - 9]}-{digest}"


def case_slug(name: str) -> str:
    """A case name (the part of its id after the file) as LAVA takes it."""
    text = name.removesuffix("]") if "[" in name else name
    text = text.replace("[", ".").replace(",", ".").replace("=", "-")
    return _cap(_OTHER.sub("_", text) or "_", name, NAME_LIMIT)


def set_slug(suite: str) -> str:
    """A scenario file as a LAVA test set name."""
    return _cap(_OTHER.sub("_", suite.replace("/", "_")) or "_", suite, SET_LIMIT)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        suffix = f"-{n}"
        candidate = name[: NAME_LIMIT - len(suffix)] + suffix
    taken.add(candidate)
    return candidate


def lava_lines(run: RunResult) -> list[str]:
    """The lava-test-set/lava-test-case commands reporting `run`, one per line."""
    lines = []
    taken: set[str] = set()
    for suite, cases in group_by_suite(run.cases).items():
        lines.append(f"lava-test-set start {set_slug(suite)}")
        for case in cases:
            name = _unique(case_slug(name_in_suite(case)), taken)
            lines.append(f"lava-test-case {name} --result {RESULT[case.status]} "
                         f"--measurement {case.duration:.3f} --units seconds")
        lines.append("lava-test-set stop")
    return lines


def lava_script(run: RunResult) -> str:
    """`lava_lines` as a shell script (the names need no quoting)."""
    head = ["#!/bin/sh", "# vfio-scenario results for a LAVA test shell", "set -e"]
    return "\n".join(head + lava_lines(run)) + "\n"
