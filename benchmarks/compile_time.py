#!/usr/bin/env python3
"""Host-side compile time of the scenario library, per file, before and after a change.

What `vfio-scenario list`/`validate`/`run` do on the host before anything runs: load
every scenario file and compile it (matrix expanded, templates rendered, `for` loops
unrolled, steps validated). scenarios/kselftest/iommufd_test.yaml unrolls its loops
through some 100,000 templated values and is most of the library's time.

For this checkout, and with `--rev REV` also for that git revision (extracted with
`git archive` into a temporary folder and imported from there, by the same Python),
each run in fresh processes, the two alternating back to back (`--repeat` times):

  per file   CPU seconds of compiling it (the files compiled one after the other in
             one process, as `list scenarios/` does: caches shared), its cases, its
             templated values rendered (`renders`) and how many of those ran jinja
             (`evaluated`: neither a plain `{{ name }}` nor a value rendered before);
  end to end wall and CPU seconds of `vfio-scenario list FILE` for the library and for
             iommufd_test.yaml (the interpreter's start-up and imports included),
             and whether both revisions list the same cases.

CPU seconds are the figure a loaded machine disturbs least; the load average is
printed before and after. Each figure is the best (least) of the repeats.

Run on the host: `.venv/bin/python benchmarks/compile_time.py [--rev main] [--repeat 3]
[--files-shown 12]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "scenarios/"
BIG = "scenarios/kselftest/iommufd_test.yaml"

# Runs in the child: every file of the library compiled in turn, timed (CPU), then the
# same again in a second pass that counts renders (the counting costs time of its own).
PER_FILE = r"""
import json, sys, time
import vfio_scenario
from vfio_scenario.language import compile as C, templates as T
from vfio_scenario.language.loader import find_scenario_files, load_file
C.gc.disable()  # as compile_paths does
files, _ = find_scenario_files([sys.argv[1]])
docs = [load_file(f)[0] for f in files]
out = {"package": vfio_scenario.__file__, "files": {}}
for doc in docs:
    c0, w0 = time.process_time(), time.perf_counter()
    compiled = C.compile_documents([doc])
    out["files"][doc.path] = {"cpu": time.process_time() - c0,
                              "wall": time.perf_counter() - w0,
                              "cases": len(compiled.cases), "errors": len(compiled.errors)}
# a run compiles its files a second time, for the testbed's devices (compile_for_guest)
big = [d for d in docs if d.path.endswith("iommufd_test.yaml")]
c0 = time.process_time()
C.compile_documents(big, ["0000:00:03.0", "0000:00:04.0"])
out["iommufd for devices"] = time.process_time() - c0
if sys.argv[2] == "count":
    # counted on a fresh set of caches: the renders a fresh `list` of the library does
    for cache in ("_COMPILED", "_RESULTS", "_FAILED"):
        getattr(T, cache).clear()
    counts = {"renders": 0, "evaluated": 0}
    render, enter = T.render, T._Limits.__enter__
    def counted_render(value, context):
        counts["renders"] += 1
        return render(value, context)
    def counted_enter(self):
        if self.depth == 0:
            counts["evaluated"] += 1
        return enter(self)
    C.render, T._Limits.__enter__ = counted_render, counted_enter
    for doc in docs:
        counts["renders"] = counts["evaluated"] = 0
        C.compile_documents([doc])
        out["files"][doc.path].update(counts)
print(json.dumps(out))
"""

LIST = "import sys; from vfio_scenario.cli import main; sys.exit(main(['list', *sys.argv[1:]]))"


def layout(tree: Path) -> Path:
    """A folder to put first on PYTHONPATH so that `vfio_scenario` imports from `tree`
    (the package's source is engine/, its drivers drivers/, as pyproject maps them)."""
    pkg = tree / "_import" / "vfio_scenario"
    pkg.mkdir(parents=True)
    for entry in (tree / "engine").iterdir():
        (pkg / entry.name).symlink_to(entry)
    (pkg / "drivers").symlink_to(tree / "drivers")
    return tree / "_import"


def run(code: str, args: list[str], path: Path | None) -> tuple[str, float, float]:
    """(stdout, wall s, CPU s of the child) of `python -c code args`, in this checkout."""
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    t0 = os.times()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    t1 = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"{args}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return proc.stdout, t1.elapsed - t0.elapsed, cpu


def measure(path: Path | None, count: bool) -> dict[str, object]:
    """One round of every figure for the tree on `path` (None: this checkout)."""
    stdout, _, _ = run(PER_FILE, [LIBRARY, "count" if count else "time"], path)
    figures: dict[str, object] = json.loads(stdout.splitlines()[-1])
    for label, target in (("list library", LIBRARY), ("list iommufd", BIG)):
        out, wall, cpu = run(LIST, [target], path)
        figures[label] = {"wall": wall, "cpu": cpu, "listing": out}
    return figures


def best(rounds: list[dict[str, object]]) -> dict[str, object]:
    """The least of each time over the rounds; counts from the round that has them."""
    first = rounds[0]
    files: dict[str, dict[str, float]] = first["files"]  # type: ignore[assignment]
    out: dict[str, object] = {"package": first["package"], "files": {}}
    for name, row in files.items():
        merged = dict(row)
        for r in rounds[1:]:
            other = r["files"][name]  # type: ignore[index]
            merged["cpu"] = min(merged["cpu"], other["cpu"])
            merged["wall"] = min(merged["wall"], other["wall"])
        out["files"][name] = merged  # type: ignore[index]
    out["iommufd for devices"] = min(r["iommufd for devices"] for r in rounds)  # type: ignore[type-var]
    for label in ("list library", "list iommufd"):
        rows = [r[label] for r in rounds]
        out[label] = {"wall": min(r["wall"] for r in rows),  # type: ignore[index]
                      "cpu": min(r["cpu"] for r in rows),  # type: ignore[index]
                      "listing": rows[0]["listing"]}  # type: ignore[index]
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(sides: dict[str, dict[str, object]], shown: int) -> None:
    names = list(sides)
    files: dict[str, dict[str, float]] = sides[names[0]]["files"]  # type: ignore[assignment]
    per_side = {n: s["files"] for n, s in sides.items()}
    order = sorted(files, key=lambda f: -files[f]["cpu"])
    head = "".join(f"{'renders':>9}{'evaluated':>10}{'CPU s':>8} " for _ in names)
    print(f"{'':58}" + "".join(f"{n[:27]:^28}" for n in names))
    print(f"{'file':51} {'cases':>6}{head}")

    def row(label: str, group: list[str]) -> None:
        cells, cpus = "", []
        for n in names:
            rows = [per_side[n][f] for f in group]  # type: ignore[index]
            cpu = sum(r["cpu"] for r in rows)
            cpus.append(cpu)
            cells += (f"{sum(r.get('renders', 0) for r in rows):9}"
                      f"{sum(r.get('evaluated', 0) for r in rows):10}{cpu:8.3f} ")
        if len(cpus) == 2 and cpus[0] > 0:
            cells += f" x{cpus[1] / cpus[0]:.2f}"
        print(f"{label[:51]:51} {sum(files[f]['cases'] for f in group):6}{cells}")

    for name in order[:shown]:
        row(os.path.relpath(name, ROOT), [name])
    if order[shown:]:
        row(f"({len(order[shown:])} other files)", order[shown:])
    row("all files", order)
    print()
    cells = "   ".join(f"{n}: {s['iommufd for devices']:6.3f} s CPU" for n, s in sides.items())
    print(f"iommufd_test.yaml again for 2 devices (a run's second compile)   {cells}")
    for label in ("list library", "list iommufd"):
        cells = "   ".join(f"{n}: {s[label]['wall']:6.2f} s wall {s[label]['cpu']:6.2f} s CPU"  # type: ignore[index]
                           for n, s in sides.items())
        print(f"vfio-scenario {label:13} {cells}")
    if len(sides) == 2:
        a, b = sides.values()
        same = all(a[k]["listing"] == b[k]["listing"]  # type: ignore[index]
                   for k in ("list library", "list iommufd"))
        print(f"same listing (case ids) from both: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", help="also measure this git revision (e.g. main), before")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--files-shown", type=int, default=12)
    args = parser.parse_args()
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="compile-time-") as tmp:
        trees: dict[str, Path | None] = {}
        if args.rev:
            tree = Path(tmp) / "rev"
            tree.mkdir()
            archive = subprocess.run(["git", "archive", args.rev], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            trees[args.rev] = layout(tree)
        trees["this"] = None
        rounds: dict[str, list[dict[str, object]]] = {n: [] for n in trees}
        for i in range(args.repeat):
            for name, path in trees.items():  # alternating: back to back
                rounds[name].append(measure(path, count=i == 0))
    sides = {n: best(r) for n, r in rounds.items()}
    for n, s in sides.items():
        print(f"{n}: vfio_scenario from {os.path.dirname(str(s['package']))}")
    report(sides, args.files_shown)
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
