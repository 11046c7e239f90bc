"""The fail-nth sweeps of iommufd_fail_nth.c against our port's, case for case.

The C program's TEST_FAIL_NTH prints nothing of its sweep (its printf is commented out).
This builds 7.2's iommufd_fail_nth.c with that printf on, and the errno the run ended
with added to it, boots a testbed VM and runs the program; then boots another VM of the
same kernel and runs scenarios/kselftest/iommufd_fail_nth.yaml. Both sides start from a
freshly booted kernel and run all their cases in the same order. Per C case it prints
how far each sweep went (the fault sites n = 1 … N it reached), how many runs an
injected errno ended (by errno) and how many ran through, and whether the two agree.

    .venv/bin/python benchmarks/fail_nth_sweeps.py [--kernel default] [--case NAME]
                                                   [--json FILE]

`--case device` runs that case alone on both sides (the C program's `-t device`). The
kernel's state matters: a case run after others may pass fewer fault sites than alone
(the allocations a mock domain makes depend on what earlier tests left), on both sides
alike; compare in VMs booted the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "scenarios" / "kselftest" / "iommufd_fail_nth.yaml"

# fail_nth_next() of iommufd_fail_nth.c (7.2): its commented-out printf, turned on
# with the errno the run ended with (saved before fail_nth_next's own calls)
PATCHES = [
    ('\tstatic const char disable_nth[] = "0";\n\tchar buf[300];\n',
     '\tstatic const char disable_nth[] = "0";\n\tint saved_errno = errno;\n\tchar buf[300];\n'),
    (('\t\t/* printf("  nth %u result=%d nth=%u\\n", nth_state->iteration,\n'
      '\t\t       test_result, atoi(buf)); */'),
     ('\t\tprintf("  nth %u result=%d nth=%u errno=%s\\n", nth_state->iteration,\n'
      '\t\t       test_result, atoi(buf), test_result ? strerrorname_np(saved_errno) : "-");')),
]
TRACE = re.compile(r"^\s*nth (\d+) result=(-?\d+) nth=(\d+) errno=(\S+)$")
SUMMARY = re.compile(r"swept n = 1 … (\d+): (\d+) runs ended by an injected errno \(([^)]*)\), "
                     r"(\d+) ran through; n = (\d+) reached no fault site")


def build() -> Path:
    """The traced program, built as the selftests' Makefile builds it (-O2 -Wall, the
    uAPI headers, -lcap), in the testbed's cache (rebuilt when the source changes)."""
    from vfio_scenario.testbed.assets import linux_source_dir
    from vfio_scenario.testbed.paths import cache_dir

    src = linux_source_dir()
    selftests = src / "tools" / "testing" / "selftests"
    text = (selftests / "iommu" / "iommufd_fail_nth.c").read_text()
    for old, new in PATCHES:
        if text.count(old) != 1:
            raise SystemExit(f"iommufd_fail_nth.c of {src} has no `{old.strip()[:40]}…` "
                             "to trace: the patch needs updating")
        text = text.replace(old, new)
    out = cache_dir() / "fail-nth-traced" / src.parent.name
    out.mkdir(parents=True, exist_ok=True)
    binary = out / "iommufd_fail_nth"
    source = out / "iommufd_fail_nth.c"
    if binary.exists() and source.exists() and source.read_text() == text:
        return binary
    source.write_text(text)
    subprocess.run(["cc", "-O2", "-Wall", "-Wno-unused-function", "-D_GNU_SOURCE=",
                    "-isystem", str(src / "include" / "uapi"),
                    "-isystem", str(src / "arch" / "x86" / "include" / "uapi"),
                    "-I", str(src / "tools" / "include"), "-I", str(selftests),
                    "-I", str(selftests / "iommu"), str(source), "-lcap", "-o", str(binary)],
                   check=True, capture_output=True)
    return binary


def summarize_c(output: str) -> dict[str, dict[str, Any]]:
    """Per C case (fixture.name): the sweep the trace shows."""
    cases: dict[str, dict[str, Any]] = {}
    runs: list[tuple[int, int, int, str]] = []
    for line in output.splitlines():
        if m := re.search(r"#\s+RUN\s+(\S+) \.\.\.", line):
            runs = []
        elif m := TRACE.match(line):
            runs.append((int(m[1]), int(m[2]), int(m[3]), m[4]))
        elif (m := re.match(r"^(not )?ok \d+ (\S+)", line)) and runs:
            last = runs[-1]
            ended = Counter(r[3] for r in runs if r[1] != 0)
            cases[m[2]] = {"passed": not m[1], "sites": last[0] - 1,
                           "ended": dict(sorted(ended.items())),
                           "through": sum(1 for r in runs[:-1] if r[1] == 0)}
    return cases


def summarize_ours(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per C case: the sweep the `fail_nth` step's message reports."""
    cases: dict[str, dict[str, Any]] = {}
    for case in report["cases"]:
        scenario = case["case_id"].split("::", 1)[1].split("[", 1)[0]
        name = "basic_fail_nth." + scenario.removeprefix("fail-nth-").replace("-", "_")
        message = next((s.get("message") or "" for s in case["steps"]
                        if s.get("op") == "fail_nth"), "")
        m = SUMMARY.search(message)
        ended = {k: int(v) for k, v in (p.split() for p in m[3].split(", ") if p)} \
            if m and m[3] != "none" else {}
        cases[name] = {"passed": case["outcome"] == "pass", "outcome": case["outcome"],
                       "sites": int(m[1]) if m else None, "ended": dict(sorted(ended.items())),
                       "through": int(m[4]) if m else None}
    return cases


def inside(side: str, binary: str, case: str | None) -> None:
    """In the guest: run one side (all its cases, or `case`), print its summary as the
    last line."""
    only = f"basic_fail_nth.{case}" if case else None
    if side == "c":
        proc = subprocess.run([binary, *(["-t", case] if case else [])], capture_output=True,
                              text=True, check=False)
        got = summarize_c(proc.stdout)
    else:
        select = ["-k", "fail-nth-" + case.replace("_", "-")] if case else []
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "vfio_scenario", "run", str(PORT), *select,
                            "--junit-xml", f"{tmp}/junit.xml", "--json", f"{tmp}/report.json"],
                           check=False, capture_output=True)
            got = summarize_ours(json.loads(Path(f"{tmp}/report.json").read_text()))
    print(json.dumps({k: v for k, v in got.items() if only in (None, k)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--case", help="only this C case (its name: device, access_rw …)")
    parser.add_argument("--json", type=Path, help="also write both sides' summaries here")
    parser.add_argument("--inside", choices=("c", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--binary", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.inside, args.binary, args.case)
        return
    if shutil.which("cc") is None:
        raise SystemExit("no C compiler (cc) here")
    from vfio_scenario.testbed import Testbed

    binary = build()
    sides: dict[str, dict[str, dict[str, Any]]] = {}
    for side in ("c", "ours"):
        with Testbed(kernel=args.kernel) as testbed:
            if side == "c":
                print(f"testbed: {testbed.accelerator}, kernel {testbed.kernel_release}, "
                      f"traced C program {binary}")
            argv = [sys.executable, str(Path(__file__).resolve()), "--inside", side,
                    "--binary", str(binary), *(["--case", args.case] if args.case else [])]
            result = testbed.run(argv, timeout=3600, cwd=str(ROOT))
        if result.returncode != 0 or not result.stdout.strip():
            raise SystemExit(f"{side}: exit {result.returncode}\n{result.stderr[-2000:]}")
        sides[side] = json.loads(result.stdout.strip().splitlines()[-1])
    if args.json:
        args.json.write_text(json.dumps(sides, indent=1))
    raise SystemExit(report(sides["c"], sides["ours"]))


def _sweep(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    if s["sites"] is None:
        return str(s.get("outcome", "?"))
    ended = ", ".join(f"{k} {v}" for k, v in s["ended"].items()) or "none"
    return f"n = 1 … {s['sites']}: ended {ended}; {s['through']} through"


def report(c: dict[str, dict[str, Any]], ours: dict[str, dict[str, Any]]) -> int:
    disagree = 0
    for name in sorted(set(c) | set(ours)):
        a, b = c.get(name), ours.get(name)
        same = a is not None and b is not None and a["passed"] and b["passed"] and all(
            a[k] == b[k] for k in ("sites", "ended", "through"))
        disagree += not same
        print(f"{name}: {'agree' if same else 'DIFFER'}\n  C:    {_sweep(a)}\n"
              f"  ours: {_sweep(b)}")
    print(f"{len(set(c) | set(ours)) - disagree} of {len(set(c) | set(ours))} sweeps agree")
    return 1 if disagree else 0


if __name__ == "__main__":
    main()
