"""Kernel line coverage without a kernel: a C file compiled here with gcc --coverage, laid
out as a kernel build is (source tree, build folder, .gcda named by its build path), goes
through the same geninfo / lcov / genhtml steps as the guest's counters (report/coverage.py),
and the guest-side gcov reader works on a folder shaped like /sys/kernel/debug/gcov."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.cli import main
from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.report import coverage as cov
from vfio_scenario.run import gcov

needs_lcov = pytest.mark.skipif(
    shutil.which("geninfo") is None or shutil.which("genhtml") is None,
    reason="lcov is not installed (scripts/install-host-packages)")

SOURCE = """\
int used(int x)
{
\tif (x > 2)
\t\treturn x * 2;
\treturn x;
}

int unused(int x)
{
\treturn x + 1;
}

int main(void)
{
\treturn used(1) == 1 ? 0 : 1;
}
"""


def build_fake_kernel(root: Path) -> tuple[cov.GcovBuild, dict[str, bytes]]:
    """A "kernel" whose one profiled object is drivers/vfio/fake.o, run once: its gcov
    build and its counters keyed as /sys/kernel/debug/gcov names them."""
    tree, build = root / "linux", root / "build"
    (tree / "drivers/vfio").mkdir(parents=True)
    (build / "drivers/vfio").mkdir(parents=True)
    (tree / "drivers/vfio/fake.c").write_text(SOURCE)
    subprocess.run(["gcc", "--coverage", "-O0", "-c", str(tree / "drivers/vfio/fake.c"),
                    "-o", "drivers/vfio/fake.o"], cwd=build, check=True)
    subprocess.run(["gcc", "--coverage", "drivers/vfio/fake.o", "-o", "fake"], cwd=build,
                   check=True)
    subprocess.run([str(build / "fake")], check=True)
    gcda = build / "drivers/vfio/fake.gcda"
    return cov.GcovBuild(str(build), build, str(tree)), {str(gcda).lstrip("/"): gcda.read_bytes()}


@pytest.fixture()
def fake(tmp_path: Path) -> tuple[cov.GcovBuild, dict[str, bytes]]:
    return build_fake_kernel(tmp_path)


@needs_lcov
def test_counters_become_a_tracefile_with_lines_and_functions(
        fake: tuple[cov.GcovBuild, dict[str, bytes]], tmp_path: Path) -> None:
    build, counters = fake
    out = tmp_path / "run.info"
    assert cov.tracefile_of(build, counters, "run", out)
    files = cov.read_tracefile(out.read_text(), build.source_tree)
    assert list(files) == ["drivers/vfio/fake.c"]
    fc = files["drivers/vfio/fake.c"]
    # gcc's line table: the bodies' lines; `return x * 2` and all of unused() never ran
    assert (fc.lines_hit, fc.lines_found) == (5, 8)
    assert fc.uncovered_functions() == ["unused"]
    summary = cov.summarize(files)
    assert summary["folders"] == {"drivers/vfio": {"lines_hit": 5, "lines_found": 8,
                                                   "percent": 62.5}}
    assert summary["total"]["percent"] == 62.5
    assert "62.5%      5/8     drivers/vfio/" in "\n".join(cov.console_lines(summary))


@needs_lcov
def test_no_counters_no_tracefile(fake: tuple[cov.GcovBuild, dict[str, bytes]],
                                  tmp_path: Path) -> None:
    assert not cov.tracefile_of(fake[0], {}, "run", tmp_path / "x.info")
    assert not (tmp_path / "x.info").exists()


def test_counters_of_another_build_are_refused(tmp_path: Path) -> None:
    build = cov.GcovBuild("/cache/build-coverage", tmp_path, "/src")
    assert build.gcno_for("cache/build-coverage/drivers/vfio/a.gcda") == \
        tmp_path / "drivers/vfio/a.gcno"
    with pytest.raises(EnvironmentProblem, match="not of the build"):
        build.gcno_for("home/me/linux/drivers/vfio/a.gcda")


@needs_lcov
def test_shard_tracefiles_add_up_with_lcov_a(fake: tuple[cov.GcovBuild, dict[str, bytes]],
                                             tmp_path: Path) -> None:
    build, counters = fake
    one, two = tmp_path / "shard1.info", tmp_path / "shard2.info"
    cov.tracefile_of(build, counters, "shard1", one)
    cov.tracefile_of(build, counters, "shard2", two)
    merged = tmp_path / "merged.info"
    cov.merge_tracefiles([one, two], merged)
    fc = cov.read_tracefile(merged.read_text(), build.source_tree)["drivers/vfio/fake.c"]
    assert fc.lines[1] == 2  # each shard ran used() once
    assert (fc.lines_hit, fc.lines_found) == (5, 8)


@needs_lcov
def test_report_merge_writes_the_merged_coverage(
        fake: tuple[cov.GcovBuild, dict[str, bytes]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    build, counters = fake
    one, two = tmp_path / "a.info", tmp_path / "b.info"
    cov.tracefile_of(build, counters, "a", one)
    cov.tracefile_of(build, counters, "b", two)
    report = tmp_path / "shard1.json"
    report.write_text(json.dumps({"schema": "vfio-scenario-results", "cases": [],
                                  "coverage": {"tracefile": str(one)}}))
    out = tmp_path / "cov"
    status = main(["report", "merge", str(report), str(two), "--coverage", str(out),
                   "--json", str(tmp_path / "merged.json")])
    assert status == 5  # no case: as `run` says it
    assert (out / "html/index.html").is_file()
    assert (out / "html/drivers/vfio/index.html").is_file()  # named as in the kernel tree
    assert not cov.incomplete_files(out / "html")
    doc = json.loads((tmp_path / "merged.json").read_text())
    assert doc["coverage"]["files"]["drivers/vfio/fake.c"] == {
        "lines_hit": 5, "lines_found": 8, "functions_hit": 2, "functions_found": 3}
    assert doc["coverage"]["source_tree"] == build.source_tree
    assert "62.5%      5/8     drivers/vfio/" in capsys.readouterr().out


def test_report_merge_wants_coverage_for_a_tracefile(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "merge", str(tmp_path / "x.info"), "--json",
                 str(tmp_path / "m.json")]) == 2
    assert "name --coverage DIR" in capsys.readouterr().err


@pytest.fixture()
def tiny_fs(tmp_path: Path) -> Any:
    """A 16 KiB tmpfs: room for a tracefile, not for genhtml's report."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


@needs_lcov
def test_a_full_disk_while_writing_the_html_names_the_file(
        fake: tuple[cov.GcovBuild, dict[str, bytes]], tmp_path: Path, tiny_fs: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    build, counters = fake
    info = tmp_path / "a.info"
    cov.tracefile_of(build, counters, "a", info)
    # genhtml itself exits 0 on a full disk, leaving empty files
    with pytest.raises(cov.CoverageWriteError) as caught:
        cov.write_html(info, tiny_fs / "html", "t")
    assert f"{tiny_fs}/html/index.html: No space left on device" in str(caught.value)
    for path in tiny_fs.rglob("*"):
        if path.is_file():
            path.unlink()
    # through the CLI: exit 3, one line naming the file, the JSON report still written
    status = main(["report", "merge", str(info), "--coverage", str(tiny_fs),
                   "--json", str(tmp_path / "merged.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3
    assert len(err) == 1 and f"{tiny_fs}/html/index.html" in err[0], err
    doc = json.loads((tmp_path / "merged.json").read_text())
    assert doc["coverage"]["html"] is None and "No space left" in doc["coverage"]["html_error"]
    assert (tiny_fs / "coverage.info").stat().st_size > 0


def test_a_kernel_image_tells_its_gcov_build(tmp_path: Path) -> None:
    ours = tmp_path / "own-coverage"
    ours.mkdir()
    (ours / "bzImage").write_bytes(b"")
    (ours / "kernel.json").write_text(json.dumps({"release": "r", "gcov": {
        "build_dir": "/b", "gcno": str(ours / "gcno"), "source_tree": "/s"}}))
    assert cov.GcovBuild.of_image(ours / "bzImage") == cov.GcovBuild("/b", ours / "gcno", "/s")
    plain = tmp_path / "own-default"
    plain.mkdir()
    (plain / "kernel.json").write_text(json.dumps({"release": "r"}))
    assert cov.GcovBuild.of_image(plain / "bzImage") is None
    # a user's build folder: bzImage at arch/x86/boot, .config with or without gcov
    user = tmp_path / "build"
    (user / "arch/x86/boot").mkdir(parents=True)
    (user / "arch/x86/boot/bzImage").write_bytes(b"")
    (user / ".config").write_text("CONFIG_X=y\nCONFIG_GCOV_KERNEL=y\n")
    os.symlink(tmp_path, user / "source")
    assert cov.GcovBuild.of_image(user / "arch/x86/boot/bzImage") == \
        cov.GcovBuild(str(user), user, str(tmp_path))
    (user / ".config").write_text("CONFIG_X=y\n# CONFIG_GCOV_KERNEL is not set\n")
    assert cov.GcovBuild.of_image(user / "arch/x86/boot/bzImage") is None


def gcov_root(tmp_path: Path) -> Path:
    root = tmp_path / "gcov"
    (root / "build/drivers/vfio").mkdir(parents=True)
    (root / "reset").write_text("")
    (root / "build/drivers/vfio/a.gcda").write_bytes(b"zero")
    (root / "build/drivers/vfio/b.gcda").write_bytes(b"zero")
    return root


def test_the_guest_reads_and_resets_counters(tmp_path: Path) -> None:
    root = gcov_root(tmp_path)
    assert gcov.available(str(root)) and not gcov.available(str(tmp_path))
    assert gcov.read_counters(str(root)) == {"build/drivers/vfio/a.gcda": b"zero",
                                             "build/drivers/vfio/b.gcda": b"zero"}
    gcov.reset(str(root))
    assert (root / "reset").read_text() == "1"
    files = {"x/y.gcda": bytes(4000)}
    assert gcov.decode(json.loads(json.dumps(gcov.encode(files)))) == files


def test_per_case_sends_what_the_case_changed_after_its_result(tmp_path: Path) -> None:
    root = gcov_root(tmp_path)
    events: list[dict[str, Any]] = []
    resets: list[int] = []
    per_case = gcov.PerCase(events.append, str(root))
    (root / "reset").write_text("")

    def start(case: str) -> None:
        per_case({"event": "start", "id": case})
        resets.append(len((root / "reset").read_text()))
        (root / "reset").write_text("")

    start("c1")
    (root / "build/drivers/vfio/a.gcda").write_bytes(b"ran!")  # the case's counters
    per_case({"event": "result", "result": {"case_id": "c1", "file": "s.yaml"}})
    (root / "build/drivers/vfio/a.gcda").write_bytes(b"zero")  # what the next reset does
    start("c2")
    per_case({"event": "result", "result": {"case_id": "c2", "file": "s.yaml"}})
    assert resets == [1, 1]
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "result", "coverage", "start", "result", "coverage"]
    assert gcov.decode(events[2]["gcda"]) == {"build/drivers/vfio/a.gcda": b"ran!"}
    assert (events[2]["id"], events[2]["file"]) == ("c1", "s.yaml")
    assert events[5]["gcda"] == {}


def test_coverage_with_a_kernel_without_gcov_is_one_line_and_exit_3(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("geninfo") is None:
        pytest.skip("lcov is not installed (scripts/install-host-packages)")
    status = main(["run", "--testbed", "always", "--kernel", "default", "--coverage",
                   str(tmp_path / "cov"), "--junit-xml", str(tmp_path / "j.xml"),
                   "scenarios/host"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3
    assert len(err) == 1
    assert "the default kernel has no gcov" in err[0] and "--kernel coverage" in err[0]


def test_coverage_per_case_needs_coverage(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--testbed", "always", "--coverage-per-case",
                   "--junit-xml", str(tmp_path / "j.xml"), "scenarios/host"])
    assert status == 2
    assert "--coverage-per-case needs --coverage DIR" in capsys.readouterr().err


@needs_lcov
def test_a_reboot_during_the_run_is_a_warning_of_the_coverage(
        fake: tuple[cov.GcovBuild, dict[str, bytes]], tmp_path: Path) -> None:
    from vfio_scenario.results import RunResult
    from vfio_scenario.run.coverage import CoverageCollector

    build, counters = fake
    collector = CoverageCollector(str(tmp_path / "cov"), "coverage", per_case=False)
    collector.collected = cov.RunCoverage(tmp_path / "cov", build)
    collector.collected.add_run(counters)
    collector.on_warning("guest kernel crashed; rebooting the testbed")
    warnings: list[str] = []
    run = RunResult()
    assert collector.write(run, warnings.append) is None
    assert warnings == [("coverage: the testbed rebooted 1 time(s); only the counters since "
                         "the last boot are in the coverage report")]
    assert run.coverage is not None
    assert run.coverage["files"]["drivers/vfio/fake.c"]["lines_hit"] == 5
    assert (tmp_path / "cov/html/index.html").is_file()


def test_the_run_s_json_report_carries_the_coverage_summary(tmp_path: Path) -> None:
    from vfio_scenario.report.sink import ReportSink

    with open(os.devnull, "w") as quiet:
        sink = ReportSink(junit_xml=str(tmp_path / "j.xml"), json_path=str(tmp_path / "r.json"),
                          journal=str(tmp_path / "journal.jsonl"), total=0, stream=quiet)
        sink.run.coverage = {"total": {"lines_hit": 1, "lines_found": 2, "percent": 50.0}}
        sink.close()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["coverage"]["total"]["percent"] == 50.0
