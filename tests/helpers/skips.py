"""The pinned skips of the scenario library: which cases may skip on which testbed
kernel, with the start of their reason, and how many cases each scenario file has.

The list is tests/data/expected-skips.yaml; tests/testbed/test_run_library.py checks a
library run against it. Regenerate it from a run's JSON report (after a change that
adds, removes or renames cases, or makes one skip or run for a good reason):

    .venv/bin/vfio-scenario run scenarios/ --json /tmp/default.json
    .venv/bin/vfio-scenario run scenarios/ --kernel debian --json /tmp/debian.json
    .venv/bin/python -m tests.helpers.skips /tmp/default.json --kernel default
    .venv/bin/python -m tests.helpers.skips /tmp/debian.json --kernel debian

Each call rewrites that kernel's list and the case counts (from the compiled library);
review the diff before committing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
PINNED = ROOT / "tests" / "data" / "expected-skips.yaml"
KERNELS = ("default", "debian")
PREFIX_LIMIT = 100  # characters of a reason kept as its pinned prefix

HEADER = """\
# Cases of scenarios/ that may skip in the testbed, per guest kernel, each with the start
# of its skip reason; and the number of cases of every scenario file. Checked by
# tests/testbed/test_run_library.py: a skip not listed here, a listed case that runs
# (stale entry), a reason that no longer starts as pinned, or a changed case count
# fails it. Regenerate from a run's JSON report, see tests/helpers/skips.py:
#   .venv/bin/python -m tests.helpers.skips REPORT.json --kernel default|debian
"""


def reason_prefix(reason: str) -> str:
    """What is pinned of a skip reason: its first PREFIX_LIMIT characters, which name
    what is missing (a planner's reason goes on listing every device it considered)."""
    return " ".join(reason.split())[:PREFIX_LIMIT].rstrip()


def load() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(PINNED.read_text()) or {}
    return data


def case_counts(case_ids: list[str]) -> dict[str, int]:
    """Cases per scenario file, from case ids `file::case`."""
    return dict(sorted(Counter(cid.split("::", 1)[0] for cid in case_ids).items()))


def check(results: list[tuple[str, str, str]], kernel: str, compiled_ids: list[str],
          pinned: dict[str, Any] | None = None) -> list[str]:
    """Problems of a library run against the pinned list.

    `results`: (case id, outcome as the JSON report writes it: pass, fail, skip,
    error, message) of every case;
    `compiled_ids`: every case id of the compiled library."""
    pinned = load() if pinned is None else pinned
    problems = []
    expected: dict[str, str] = (pinned.get("skips") or {}).get(kernel) or {}
    outcome = {cid: (label, message) for cid, label, message in results}
    for cid, (label, message) in sorted(outcome.items()):
        if label != "skip":
            continue
        if cid not in expected:
            problems.append(f"skip not on the pinned list for kernel {kernel}: {cid}: {message}")
        elif not " ".join(message.split()).startswith(expected[cid]):
            problems.append(f"skip reason changed for {cid}: pinned {expected[cid]!r}, "
                            f"got {message!r}")
    for cid in sorted(expected):
        if cid not in outcome:
            problems.append(f"pinned skip of a case the library no longer has: {cid}")
        elif outcome[cid][0] != "skip":
            problems.append(f"pinned skip now {outcome[cid][0]} (stale entry, regenerate "
                            f"the list): {cid}")
    counts = case_counts(compiled_ids)
    want: dict[str, int] = pinned.get("case_counts") or {}
    for file in sorted(set(counts) | set(want)):
        if counts.get(file, 0) != want.get(file, 0):
            problems.append(f"case count of {file} is {counts.get(file, 0)}, pinned "
                            f"{want.get(file, 0)}")
    return problems


def regenerate(report: dict[str, Any], kernel: str, compiled_ids: list[str],
               pinned: dict[str, Any]) -> dict[str, Any]:
    """`pinned` with `kernel`'s skips taken from a JSON report, and the case counts."""
    skips = {c["case_id"]: reason_prefix(c.get("message", ""))
             for c in report["cases"] if c["outcome"] == "skip"}
    out: dict[str, Any] = {
        "skips": {k: dict((pinned.get("skips") or {}).get(k) or {}) for k in KERNELS},
           "case_counts": case_counts(compiled_ids)}
    out["skips"][kernel] = dict(sorted(skips.items()))
    return out


def dump(pinned: dict[str, Any]) -> str:
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 1000
    out = io.StringIO()
    yaml.dump(pinned, out)
    return HEADER + out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rewrite tests/data/expected-skips.yaml "
                                     "from a JSON report of `vfio-scenario run scenarios/`")
    parser.add_argument("report", help="the run's --json report")
    parser.add_argument("--kernel", choices=KERNELS, required=True,
                        help="the testbed kernel the run used")
    args = parser.parse_args(argv)
    import os

    from vfio_scenario.language.compile import compile_paths

    report = json.loads(Path(args.report).read_text())
    os.chdir(ROOT)  # case ids name files relative to the checkout
    # the library as the run compiled it: its `driver` axis holds the drivers of the
    # testbed's devices, the ones the report's cases name
    present = {c["case_id"].split("driver=", 1)[1].split(",")[0].split("]")[0]
               for c in report["cases"] if "[driver=" in c["case_id"]
               or ",driver=" in c["case_id"]}
    compiled = [c.id for c in compile_paths(["scenarios"]).cases
                if "driver" not in c.params or c.params["driver"] in present]
    ran = {c["case_id"] for c in report["cases"]}
    if ran != set(compiled):
        print(f"the report holds {len(ran)} cases, the library {len(compiled)}: run the "
              "whole library (scenarios/) for the report", file=sys.stderr)
        return 2
    pinned = load() if PINNED.exists() else {}
    PINNED.write_text(dump(regenerate(report, args.kernel, compiled, pinned)))
    print(f"{PINNED}: {args.kernel}: "
          f"{sum(1 for c in report['cases'] if c['outcome'] == 'skip')} skips pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
