"""Kernel line coverage of a run (`run --coverage DIR`), written with Debian's lcov.

The guest's gcov counters (vfio_scenario.run.gcov) arrive here as `.gcda` files keyed by
their path below /sys/kernel/debug/gcov, which is the object's path in the kernel's build
folder. Each set is laid out in a work folder beside the `.gcno` files of the build that
made the kernel, `geninfo` turns it into an lcov tracefile (the source paths in the
`.gcno` files are those of the source tree the kernel was built from), `lcov -a` adds the
tracefiles up, `lcov --extract` keeps the profiled folders, and `genhtml` writes the HTML.
This module renders nothing itself: it reads the tracefile back only for the summary
(lines hit/found per file and per folder, uncovered functions) that goes to the console
and the JSON report.

DIR gets: coverage.info (the tracefile), html/index.html, and with --coverage-per-case
cases/ (one tracefile per case; the test name of its lines is the case's, so genhtml's
per-test details say which cases reach a line) and scenario-files/ (one per scenario file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfio_scenario.errors import EnvironmentProblem

#: What the tracefile keeps: the folders the coverage kernel profiles (testbed/assets.py
#: GCOV_FOLDERS, GCOV_FILES), as lcov --extract patterns (headers elsewhere are dropped)
KEEP_PATTERNS = ("*/drivers/vfio/*", "*/drivers/iommu/*", "*/drivers/pci/iov.c")
GCOV_HOWTO = ("use --kernel coverage (the testbed's gcov kernel), or a kernel built with "
              "CONFIG_GCOV_KERNEL=y as docs/testbed.md (coverage kernel) says")


class CoverageWriteError(EnvironmentProblem):
    """A coverage output could not be written (full disk …); names the file."""


@dataclass(frozen=True)
class GcovBuild:
    """Where the `.gcno` files of a gcov kernel are, and the build folder the guest's
    /sys/kernel/debug/gcov mirrors."""

    build_dir: str      # absolute path of the kernel's build (objtree) when it was built
    gcno_dir: Path      # a folder holding that build's .gcno files at their build paths
    source_tree: str    # the kernel source the build compiled

    @classmethod
    def of_image(cls, image: Path) -> GcovBuild | None:
        """The gcov build of a kernel image: ours (kernel.json beside the bzImage names
        it), or a user's bzImage inside its build folder (<build>/arch/x86/boot/bzImage)
        whose .config has CONFIG_GCOV_KERNEL=y. None when the kernel has no gcov."""
        meta = image.parent / "kernel.json"
        if meta.is_file():
            gcov = json.loads(meta.read_text()).get("gcov")
            if not gcov:
                return None
            return cls(gcov["build_dir"], Path(gcov["gcno"]), gcov["source_tree"])
        for folder in image.resolve().parents:
            config = folder / ".config"
            if config.is_file():
                if "\nCONFIG_GCOV_KERNEL=y\n" not in "\n" + config.read_text():
                    return None
                source = folder / "source"  # an O= build links its source tree here
                tree = str(source.resolve()) if source.exists() else str(folder)
                return cls(str(folder), folder, tree)
        return None

    def gcno_for(self, gcda: str) -> Path:
        """The .gcno of a counter file named by its path below /sys/kernel/debug/gcov."""
        absolute = "/" + gcda.lstrip("/")
        prefix = self.build_dir.rstrip("/") + "/"
        if not absolute.startswith(prefix):
            raise EnvironmentProblem(f"the guest's gcov file {absolute} is not of the build "
                                     f"in {self.build_dir}: was the kernel built elsewhere?")
        return self.gcno_dir / (absolute[len(prefix):].removesuffix(".gcda") + ".gcno")


def require_lcov() -> None:
    missing = [t for t in ("geninfo", "lcov", "genhtml") if shutil.which(t) is None]
    if missing:
        raise EnvironmentProblem(f"--coverage needs {', '.join(missing)}: install Debian's lcov "
                                 "(scripts/install-host-packages)")


def test_name(text: str) -> str:
    """An lcov test name for `text` (letters, digits and _ only)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return name or "run"


def _lcov(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise EnvironmentProblem(f"{argv[0]} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def tracefile_of(build: GcovBuild, gcda: dict[str, bytes], name: str, out: Path) -> bool:
    """Write the lcov tracefile of one set of counters to `out` (test name `name`).

    False (and no file) when the set is empty: a case that reached no profiled code."""
    if not gcda:
        return False
    with tempfile.TemporaryDirectory(prefix="vfio-scenario-gcov-") as work:
        for rel, data in gcda.items():
            target = Path(work, rel.lstrip("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            gcno = build.gcno_for(rel)
            if not gcno.is_file():
                raise EnvironmentProblem(f"no {gcno} for the guest's {rel}: the .gcno files "
                                         "of the kernel's build are gone")
            target.with_suffix(".gcno").symlink_to(gcno)
        raw = Path(work, "raw.info")
        _lcov(["geninfo", "--quiet", "--test-name", name, "--output-filename", str(raw), work])
        _lcov(["lcov", "--quiet", "--extract", str(raw), *KEEP_PATTERNS,
               "--output-file", str(out)])
    return True


def merge_tracefiles(inputs: Iterable[Path], out: Path) -> None:
    """`lcov -a` of `inputs` into `out` (counts add up; test names are kept)."""
    args: list[str] = []
    for path in inputs:
        args += ["-a", str(path)]
    if not args:
        raise EnvironmentProblem("no coverage data to merge (no profiled code ran?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _lcov(["lcov", "--quiet", *args, "--output-file", str(out)])


# --- the summary ------------------------------------------------------------------------

@dataclass
class FileCoverage:
    """One source file's numbers in a tracefile (all its test names together)."""

    lines: dict[int, int] = field(default_factory=dict)      # line → count
    functions: dict[str, int] = field(default_factory=dict)  # function → count
    function_lines: dict[str, int] = field(default_factory=dict)

    @property
    def lines_found(self) -> int:
        return len(self.lines)

    @property
    def lines_hit(self) -> int:
        return sum(1 for c in self.lines.values() if c > 0)

    def uncovered_functions(self) -> list[str]:
        return sorted((f for f, c in self.functions.items() if c == 0),
                      key=lambda f: self.function_lines.get(f, 0))

    def to_dict(self) -> dict[str, int]:
        return {"lines_hit": self.lines_hit, "lines_found": self.lines_found,
                "functions_hit": sum(1 for c in self.functions.values() if c > 0),
                "functions_found": len(self.functions)}


def read_tracefile(text: str, source_tree: str = "") -> dict[str, FileCoverage]:
    """Per source file (relative to `source_tree` when below it), the lines and functions
    of an lcov tracefile (geninfo(1) FILES: SF, FN, FNDA, DA, end_of_record)."""
    files: dict[str, FileCoverage] = {}
    current: FileCoverage | None = None
    prefix = source_tree.rstrip("/") + "/" if source_tree else ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "SF":
            path = value.removeprefix(prefix) if prefix else value
            current = files.setdefault(path, FileCoverage())
        elif current is None:
            continue
        elif key == "DA":
            number, count = value.split(",")[:2]
            current.lines[int(number)] = current.lines.get(int(number), 0) + int(count)
        elif key == "FN":
            number, name = value.split(",", 1)
            current.function_lines[name] = int(number)
            current.functions.setdefault(name, 0)
        elif key == "FNDA":
            count, name = value.split(",", 1)
            current.functions[name] = current.functions.get(name, 0) + int(count)
        elif key == "end_of_record":
            current = None
    return files


def _ratio(hit: int, found: int) -> dict[str, Any]:
    return {"lines_hit": hit, "lines_found": found,
            "percent": round(100.0 * hit / found, 1) if found else 0.0}


def summarize(files: dict[str, FileCoverage]) -> dict[str, Any]:
    """Lines hit/found per file, per folder and in total (the JSON report's `coverage`)."""
    per_file = {p: f.to_dict() for p, f in sorted(files.items())}
    folders: dict[str, list[int]] = {}
    for path, numbers in per_file.items():
        entry = folders.setdefault(path.rsplit("/", 1)[0] if "/" in path else ".", [0, 0])
        entry[0] += numbers["lines_hit"]
        entry[1] += numbers["lines_found"]
    hit = sum(n["lines_hit"] for n in per_file.values())
    found = sum(n["lines_found"] for n in per_file.values())
    return {"total": _ratio(hit, found),
            "folders": {d: _ratio(h, f) for d, (h, f) in sorted(folders.items())},
            "files": per_file}


def console_lines(summary: dict[str, Any], files: bool = True) -> list[str]:
    """The summary as console lines: per folder, then (optionally) per file."""
    out = ["kernel line coverage (lines hit / found):"]
    for folder, n in summary["folders"].items():
        out.append(f"  {n['percent']:5.1f}%  {n['lines_hit']:5d}/{n['lines_found']:<5d} "
                   f"{folder}/")
    if files:
        for path, n in summary["files"].items():
            pct = 100.0 * n["lines_hit"] / n["lines_found"] if n["lines_found"] else 0.0
            out.append(f"    {pct:5.1f}%  {n['lines_hit']:5d}/{n['lines_found']:<5d} {path}")
    total = summary["total"]
    out.append(f"  {total['percent']:5.1f}%  {total['lines_hit']:5d}/{total['lines_found']:<5d} "
               "total")
    return out


def write_html(tracefile: Path, html_dir: Path, title: str,
               descriptions: dict[str, str] | None = None, source_tree: str = "") -> None:
    """genhtml's report of `tracefile` in `html_dir` (per-test details when the tracefile
    has several test names). CoverageWriteError names the file that could not be written.

    genhtml (lcov 1.16) does not check its writes: on a full disk it exits 0 leaving empty
    files. Every file it wrote is therefore checked afterwards: not empty, and an HTML page
    ends with </html>."""
    argv = ["genhtml", "--quiet", "--title", title, "--output-directory", str(html_dir),
            "--legend"]
    if source_tree:  # pages named as in the kernel tree: drivers/vfio/pci/index.html
        argv += ["--prefix", source_tree]
    try:
        html_dir.mkdir(parents=True, exist_ok=True)
        if descriptions:
            desc = html_dir.parent / "tests.desc"
            desc.write_text("".join(f"TN: {n}\nTD: {d}\n"
                                    for n, d in sorted(descriptions.items())))
            argv += ["--show-details", "--description-file", str(desc)]
    except OSError as exc:
        raise CoverageWriteError(f"cannot write the coverage HTML: {exc.filename}: "
                                 f"{exc.strerror}") from None
    proc = subprocess.run([*argv, str(tracefile)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise CoverageWriteError("writing the coverage HTML failed: "
                                 + (message[-1] if message else f"genhtml {proc.returncode}"))
    broken = incomplete_files(html_dir)
    if broken:
        full = os.statvfs(html_dir).f_bavail == 0
        raise CoverageWriteError(f"cannot write the coverage HTML: {broken[0]}: "
                                 + ("No space left on device" if full else "written incompletely")
                                 + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""))


def incomplete_files(html_dir: Path) -> list[Path]:
    """Files of a genhtml report that are empty, or HTML pages not ending with </html>;
    index.html first when it is one of them."""
    broken = []
    for path in sorted(html_dir.rglob("*")):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size == 0:
            broken.append(path)
        elif path.suffix == ".html":
            with path.open("rb") as f:
                f.seek(max(0, size - 64))
                if not f.read().rstrip().endswith(b"</html>"):
                    broken.append(path)
    index = html_dir / "index.html"
    if not index.is_file():
        broken.append(index)
    return sorted(broken, key=lambda p: p != index)


# --- a run's collection ----------------------------------------------------------------

class RunCoverage:
    """The coverage of one run, written to `out_dir` when the run ends.

    `add_run` takes the counters dumped after the last case; `add_case` those a case
    changed (--coverage-per-case), kept in a spool folder until `finish`, so the run's
    event loop is not held up by geninfo."""

    def __init__(self, out_dir: str | Path, build: GcovBuild, per_case: bool = False,
                 name: str = "vfio_scenario") -> None:
        self.out = Path(out_dir)
        self.build = build
        self.per_case = per_case
        self.name = test_name(name)
        self.spool = Path(tempfile.mkdtemp(prefix="vfio-scenario-coverage-"))
        self.cases: list[tuple[str, str, Path]] = []   # (case id, scenario file, spool file)
        self.run_counters: dict[str, bytes] | None = None

    def add_case(self, case_id: str, scenario_file: str, gcda: dict[str, bytes]) -> None:
        from vfio_scenario.run.gcov import encode

        spooled = self.spool / f"{len(self.cases):05d}.json"
        spooled.write_text(json.dumps(encode(gcda)))
        self.cases.append((case_id, scenario_file, spooled))

    def add_run(self, gcda: dict[str, bytes]) -> None:
        self.run_counters = gcda

    def finish(self) -> dict[str, Any]:
        """Write DIR/coverage.info (+ cases/, scenario-files/ per case) and return the
        summary; the HTML is written by `write_html_report` afterwards."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            tracefile = self.out / "coverage.info"
            result: dict[str, Any] = {}
            if self.per_case:
                result["scenario_files"] = self._per_case(tracefile)
            elif not self.run_counters or not tracefile_of(
                    self.build, self.run_counters, self.name, tracefile):
                raise EnvironmentProblem("the kernel's gcov counters were empty after the run")
        except OSError as exc:
            raise CoverageWriteError(f"cannot write coverage to {exc.filename or self.out}: "
                                     f"{exc.strerror}") from None
        finally:
            shutil.rmtree(self.spool, ignore_errors=True)
        files = read_tracefile(tracefile.read_text(), self.build.source_tree)
        result = {"tracefile": str(tracefile), "html": str(self.out / "html" / "index.html"),
                  "source_tree": self.build.source_tree, **summarize(files), **result}
        self.files = files
        return result

    def _per_case(self, tracefile: Path) -> dict[str, Any]:
        from vfio_scenario.run.gcov import decode

        case_dir = self.out / "cases"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir()
        by_file: dict[str, list[Path]] = {}
        self.descriptions: dict[str, str] = {}
        for index, (case_id, scenario_file, spooled) in enumerate(self.cases):
            name = f"c{index:04d}_{test_name(case_id)}"[:120]
            info = case_dir / f"{name}.info"
            if tracefile_of(self.build, decode(json.loads(spooled.read_text())), name, info):
                by_file.setdefault(scenario_file, []).append(info)
                self.descriptions[name] = case_id
        per_file_dir = self.out / "scenario-files"
        shutil.rmtree(per_file_dir, ignore_errors=True)
        per_file_dir.mkdir()
        scenario_files: dict[str, Any] = {}
        for scenario_file, infos in sorted(by_file.items()):
            merged = per_file_dir / f"{test_name(scenario_file)}.info"
            merge_tracefiles(infos, merged)
            summary = summarize(read_tracefile(merged.read_text(), self.build.source_tree))
            scenario_files[scenario_file] = {"tracefile": str(merged), "total": summary["total"],
                                             "files": summary["files"]}
        merge_tracefiles([i for infos in by_file.values() for i in infos], tracefile)
        return scenario_files

    def write_html_report(self, title: str) -> None:
        write_html(self.out / "coverage.info", self.out / "html", title,
                   getattr(self, "descriptions", None) or None, self.build.source_tree)


# --- merging (report merge --coverage, shards) ---------------------------------------------

def guess_source_tree(tracefile_text: str) -> str:
    """The kernel tree of a tracefile's sources: what precedes /drivers/ in its first
    source path (every file the coverage kernel profiles is below drivers/)."""
    for line in tracefile_text.splitlines():
        if line.startswith("SF:") and "/drivers/" in line:
            return line[3:].split("/drivers/", 1)[0]
    return ""


def merge_coverage(inputs: list[Path], out_dir: Path, title: str
                   ) -> tuple[dict[str, Any], CoverageWriteError | None]:
    """`lcov -a` of shard tracefiles into out_dir/coverage.info, then the HTML; returns the
    summary and the HTML's write error (for the caller to raise once its other reports are
    written)."""
    tracefile = out_dir / "coverage.info"
    try:
        merge_tracefiles(inputs, tracefile)
    except OSError as exc:
        raise CoverageWriteError(f"cannot write {exc.filename or tracefile}: "
                                 f"{exc.strerror}") from None
    text = tracefile.read_text()
    tree = guess_source_tree(text)
    summary: dict[str, Any] = {"tracefile": str(tracefile),
                               "html": str(out_dir / "html" / "index.html"),
                               "source_tree": tree, "merged_from": [str(p) for p in inputs],
                               **summarize(read_tracefile(text, tree))}
    problem: CoverageWriteError | None = None
    try:
        write_html(tracefile, out_dir / "html", title, source_tree=tree)
    except CoverageWriteError as exc:
        problem = exc
        summary["html"] = None
        summary["html_error"] = str(exc)
    return summary, problem
