#!/usr/bin/env python3
"""Kernel line coverage of the kernel's C VFIO selftests against the library's, file by file.

On the coverage kernel (`--kernel coverage`: gcov on drivers/vfio, drivers/iommu/iommufd,
the Intel IOMMU driver, the IOMMU core, drivers/pci/iov.c) and the testbed's devices:

  C     the seven programs of tools/testing/selftests/vfio, built as vs_kselftest.py
        builds them, run once each in one VM on the edu functions (the counters reset
        before the first, read after the last);
  ours  the library, `vfio-scenario run --kernel coverage --coverage DIR scenarios/`, in a
        VM of its own (or an earlier run's tracefile, --ours DIR/coverage.info).

It prints per file of drivers/vfio/ (pci/ included) and drivers/iommu/iommufd/ the lines
gcc's line table has (found), those the C programs ran, those the library ran, those both
ran, those neither ran, and the totals per folder; then the functions no side ran in
vfio_pci_core.c, vfio_main.c, iommufd/ioas.c and iommufd/device.c. With --wall it also runs
the library on the default kernel and prints both wall times (target: the coverage kernel
at most 2x the default one).

Run on the host: `.venv/bin/python benchmarks/coverage_vs_kselftest.py [--ours FILE]
[--wall] [--markdown]`; or in parallel, `--c-only --out DIR` beside the library's run,
then `--c-info DIR/c.info --ours FILE` for the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

FOLDERS = ("drivers/vfio/", "drivers/iommu/iommufd/")
FUNCTION_FILES = ("drivers/vfio/pci/vfio_pci_core.c", "drivers/vfio/vfio_main.c",
                  "drivers/iommu/iommufd/ioas.c", "drivers/iommu/iommufd/device.c")
GCOV = [sys.executable, "-m", "vfio_scenario.run.gcov"]


def inside(binaries: Path) -> None:
    """In the guest: each C program once on the edu functions; their exit statuses."""
    from vfio_scenario.uapi import sysfs
    from vs_kselftest import PROGRAMS

    bdfs = sysfs.find_devices(0x1234, 0x11E8)
    runs = {}
    for program in PROGRAMS:
        args = bdfs if program == "vfio_pci_device_init_perf_test" else bdfs[:1]
        t0 = time.perf_counter()
        proc = subprocess.run([str(binaries / program), *args], capture_output=True, text=True,
                              check=False)
        runs[program] = {"exit": proc.returncode, "seconds": round(time.perf_counter() - t0, 2),
                         "ok": proc.stdout.count("\nok "), "not_ok": proc.stdout.count("not ok ")}
    print(json.dumps({"bdfs": bdfs, "runs": runs}))


def c_tracefile(out: Path) -> tuple[Path, dict[str, Any]]:
    """The C programs' coverage in one VM of the coverage kernel."""
    from vfio_scenario.report.coverage import GcovBuild, tracefile_of
    from vfio_scenario.run.gcov import decode
    from vfio_scenario.testbed import Testbed
    from vs_kselftest import build

    binaries = build()
    with Testbed(kernel="coverage") as testbed:
        image = testbed.kernel_image
        gcov_build = GcovBuild.of_image(image) if image is not None else None
        if gcov_build is None:
            raise SystemExit("the coverage kernel has no gcov build record")
        if testbed.run([*GCOV, "reset"]).returncode != 0:
            raise SystemExit("the coverage kernel has no /sys/kernel/debug/gcov")
        argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--binaries",
                str(binaries)]
        result = testbed.run(argv, timeout=1800, cwd=str(ROOT))
        if result.returncode != 0:
            raise SystemExit(f"the C programs' run failed: {result.stderr}")
        runs = json.loads(result.stdout.strip().splitlines()[-1])
        dump = testbed.run([*GCOV, "dump"], timeout=600)
        counters = decode(json.loads(dump.stdout))
        release = testbed.kernel_release
    tracefile = out / "c.info"
    tracefile_of(gcov_build, counters, "kselftest_vfio", tracefile)
    return tracefile, {"release": release, **runs}


def library_run(kernel: str, out: Path, coverage: bool) -> tuple[float, Path | None]:
    """`vfio-scenario run scenarios/` on `kernel`: its wall seconds (command to exit) and
    its tracefile (with `coverage`)."""
    argv = [str(ROOT / ".venv/bin/vfio-scenario"), "run", "--testbed", "always",
            "--kernel", kernel, "--junit-xml", str(out / f"{kernel}.xml"),
            "--json", str(out / f"{kernel}.json"), str(ROOT / "scenarios")]
    if coverage:
        argv += ["--coverage", str(out / "ours")]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - t0
    (out / f"{kernel}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"the library run on {kernel} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    return wall, (out / "ours" / "coverage.info") if coverage else None


def compare(c_info: Path, ours_info: Path) -> dict[str, Any]:
    """Per file of FOLDERS: found, C, ours, both, neither (line counts), and per folder."""
    from vfio_scenario.report.coverage import guess_source_tree, read_tracefile

    c_text, o_text = c_info.read_text(), ours_info.read_text()
    c_files = read_tracefile(c_text, guess_source_tree(c_text))
    o_files = read_tracefile(o_text, guess_source_tree(o_text))
    rows: dict[str, dict[str, int]] = {}
    for path in sorted(set(c_files) | set(o_files)):
        if not path.startswith(FOLDERS) or not path.endswith(".c"):
            continue
        c, o = c_files.get(path), o_files.get(path)
        lines = set(c.lines if c else ()) | set(o.lines if o else ())
        c_hit = {n for n, k in (c.lines if c else {}).items() if k > 0}
        o_hit = {n for n, k in (o.lines if o else {}).items() if k > 0}
        rows[path] = {"found": len(lines), "c": len(c_hit), "ours": len(o_hit),
                      "both": len(c_hit & o_hit), "neither": len(lines - c_hit - o_hit)}
    totals = {}
    for folder in FOLDERS:
        sums = {k: 0 for k in ("found", "c", "ours", "both", "neither")}
        for path, row in rows.items():
            if path.startswith(folder):
                for k in sums:
                    sums[k] += row[k]
        totals[folder] = sums
    uncovered = {}
    for path in FUNCTION_FILES:
        o, c = o_files.get(path), c_files.get(path)
        uncovered[path] = {"ours": o.uncovered_functions() if o else [],
                           "c": c.uncovered_functions() if c else []}
    return {"files": rows, "totals": totals, "uncovered_functions": uncovered}


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "    -"


def table(result: dict[str, Any], markdown: bool) -> list[str]:
    head = ("file", "lines", "C", "ours", "both", "neither")
    out = []
    if markdown:
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        out.append(f"{'file':<46} {'lines':>6} {'C':>6} {'ours':>6} {'both':>6} {'neither':>8}")

    def line(name: str, r: dict[str, int]) -> str:
        if markdown:
            return (f"| {name} | {r['found']} | {r['c']} ({_pct(r['c'], r['found']).strip()}) "
                    f"| {r['ours']} ({_pct(r['ours'], r['found']).strip()}) | {r['both']} "
                    f"| {r['neither']} |")
        return (f"{name:<46} {r['found']:>6} {r['c']:>6} {r['ours']:>6} {r['both']:>6} "
                f"{r['neither']:>8}")

    for path, row in result["files"].items():
        out.append(line(path, row))
    for folder, row in result["totals"].items():
        out.append(line(f"**total {folder}**" if markdown else f"total {folder}", row))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, help="the library's tracefile of an earlier "
                        "`run --kernel coverage --coverage DIR scenarios/` (DIR/coverage.info)")
    parser.add_argument("--c-info", type=Path, help="the C programs' tracefile of an earlier "
                        "run of this script (OUT/c.info) instead of running them again")
    parser.add_argument("--c-only", action="store_true",
                        help="only run the C programs (OUT/c.info), e.g. beside a library run")
    parser.add_argument("--wall", action="store_true",
                        help="also run the library on the default kernel: both wall times")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown")
    parser.add_argument("--out", type=Path, help="keep the tracefiles and logs here")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--binaries", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.binaries)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="coverage-vs-kselftest-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.c_info is not None:
        c_info = args.c_info
        c_runs = json.loads(c_info.with_suffix(".json").read_text())
    else:
        c_info, c_runs = c_tracefile(out)
        c_info.with_suffix(".json").write_text(json.dumps(c_runs))
    print(f"C programs on {c_runs['release']} ({', '.join(c_runs['bdfs'])}):")
    for program, run in c_runs["runs"].items():
        print(f"  {program}: exit {run['exit']}, {run['ok']} ok, {run['not_ok']} not ok, "
              f"{run['seconds']} s")
    if args.c_only:
        return
    walls: dict[str, float] = {}
    ours = args.ours
    if ours is None:
        walls["coverage"], ours = library_run("coverage", out, coverage=True)
    assert ours is not None
    if args.wall:
        walls["default"], _ = library_run("default", out, coverage=False)
    result = compare(c_info, ours)
    print(f"kernel line coverage, {time.strftime('%Y-%m-%d')} (lines of gcc's line table; "
          "C = the seven kselftest programs, ours = scenarios/):")
    print("\n".join(table(result, args.markdown)))
    for path, funcs in result["uncovered_functions"].items():
        print(f"functions the library does not run in {path} ({len(funcs['ours'])}): "
              + ", ".join(funcs["ours"]))
        print("  of which the C programs run: "
              + ", ".join(f for f in funcs["ours"] if f not in funcs["c"]))
    if walls:
        print("library wall time (command to exit): "
              + ", ".join(f"{k} kernel {v:.0f} s" for k, v in walls.items()))
        if "default" in walls and "coverage" in walls:
            print(f"coverage/default: {walls['coverage'] / walls['default']:.2f} (target <= 2)")
    if args.json:
        args.json.write_text(json.dumps({"c_runs": c_runs, "walls": walls, **result}, indent=1))


if __name__ == "__main__":
    main()
