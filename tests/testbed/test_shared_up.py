"""Several commands and one `testbed up` VM: they take turns, `down` waits for none of
them unless forced, and a VM stopped under a run is reported as stopped, not crashed.

In a private cache (its own run/ folder and `up` VM), sharing only the built kernels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vfio_scenario.testbed.assets import build_own_kernel
from vfio_scenario.testbed.paths import cache_dir

from tests.helpers.reports import assert_valid_junit

pytestmark = pytest.mark.testbed


@pytest.fixture
def private_cache() -> Iterator[dict[str, str]]:
    """A short path: a VM's agent socket lives below it (AF_UNIX paths hold 107 bytes)."""
    build_own_kernel()
    base = Path(tempfile.mkdtemp(prefix="vs-up-", dir="/tmp"))
    cache = base / "vfio-scenario"
    cache.mkdir()
    for shared in ("kernels", "linux-source", "accel.json"):
        if (cache_dir() / shared).exists():
            (cache / shared).symlink_to(cache_dir() / shared)
    yield {**os.environ, "XDG_CACHE_HOME": str(base)}
    shutil.rmtree(base, ignore_errors=True)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfio_scenario", *args], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _start_run(env: dict[str, str], scenario: Path, report: Path,
               *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vfio_scenario", "run", str(scenario),
                             "--json", str(report), "--junit-xml", str(report.with_suffix(".xml")),
                             *options],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(env: dict[str, str], pid: int, timeout: float = 300.0) -> None:
    """Until run PID `pid` holds the `up` VM (its attach lock names it)."""
    lock = Path(env["XDG_CACHE_HOME"]) / "vfio-scenario" / "run" / "up" / "attached.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text() == f"run PID {pid}":
            return
        time.sleep(0.2)
    raise AssertionError(f"run PID {pid} never attached")


@pytest.fixture
def up_vm(private_cache: dict[str, str]) -> Iterator[dict[str, str]]:
    up = _cli(private_cache, "testbed", "up")
    assert up.returncode == 0, up.stderr
    yield private_cache
    _cli(private_cache, "testbed", "down", "--force")


def _scenario(tmp_path: Path, name: str, seconds: float) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"- name: {name}\n  steps:\n    - sleep: {{duration: {seconds}s}}\n"
                    f"- name: {name}-after\n  steps:\n    - assert_not_tainted: {{}}\n")
    return path


def _results(report: Path) -> dict[str, dict[str, str]]:
    cases = json.loads(report.read_text())["cases"]
    return {c["scenario"]: {"outcome": c["outcome"], "message": c["message"]} for c in cases}


def test_a_second_run_waits_for_the_first_and_says_so(up_vm: dict[str, str],
                                                       tmp_path: Path) -> None:
    first = _start_run(up_vm, _scenario(tmp_path, "first", 8), tmp_path / "first.json")
    _wait_for_holder(up_vm, first.pid)
    second = _start_run(up_vm, _scenario(tmp_path, "second", 0.1), tmp_path / "second.json")
    _, first_err = first.communicate(timeout=600)
    _, second_err = second.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert f"testbed busy: run PID {first.pid} is using it; waiting" in second_err
    assert "testbed busy" not in first_err
    for name in ("first", "second"):
        assert {r["outcome"] for r in _results(tmp_path / f"{name}.json").values()} == {"pass"}
    # the second one's cases ran after the first run let go of the VM
    first_cases = json.loads((tmp_path / "first.json").read_text())["cases"]
    second_cases = json.loads((tmp_path / "second.json").read_text())["cases"]
    assert min(c["started"] for c in second_cases) >= \
        max(c["started"] + c["duration"] for c in first_cases)


def test_down_refuses_while_a_run_uses_the_vm_and_force_is_reported_as_a_stop(
        up_vm: dict[str, str], tmp_path: Path) -> None:
    run = _start_run(up_vm, _scenario(tmp_path, "long", 60), tmp_path / "long.json")
    _wait_for_holder(up_vm, run.pid)
    time.sleep(5)  # into the long sleep step
    refused = _cli(up_vm, "testbed", "down")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().endswith(
        f"testbed busy: run PID {run.pid} is using the VM; wait for it to end, or "
        "`testbed down --force` stops the VM under it")
    assert "vm            up, PID" in _cli(up_vm, "testbed", "status").stdout
    forced = _cli(up_vm, "testbed", "down", "--force")
    assert forced.returncode == 0, forced.stderr
    _, err = run.communicate(timeout=600)
    assert run.returncode == 1, err
    results = _results(tmp_path / "long.json")
    assert results["long"]["outcome"] == "error"
    first_line = results["long"]["message"].splitlines()[0]  # the console's tail follows
    assert first_line == ("the testbed VM was stopped while the case ran: QEMU ended; "
                          "no kernel panic on the guest console")
    assert results["long-after"]["outcome"] == "pass"  # on a VM of the run's own


# a case is running in the guest once its process has the kernel log open beside the
# run's kernel watch: two /dev/kmsg descriptors
_WHEN_A_CASE_RUNS = ("i=0; until [ \"$(ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c /dev/kmsg)\" "
                     "-ge 2 ]; do i=$((i+1)); [ $i -lt 1500 ] || { echo no case ran >&2; exit 3; }; "
                     "sleep 0.2; done; ")


@pytest.mark.kernel("debug")
def test_testbed_run_alongside_provokes_a_kasan_report_in_the_running_case(
        private_cache: dict[str, str], tmp_path: Path) -> None:
    """On an `up` debug-kernel VM a `run` holds, `testbed run --alongside` runs at once
    (the guest's second agent) and its KASAN splat is the running case's ERROR."""
    # built, or waited for on the shared cache's build lock (the private cache has locks
    # of its own: its `up` would build it again, in the same build folder)
    build_own_kernel(variant="debug")
    up = _cli(private_cache, "testbed", "up", "--kernel", "debug")
    assert up.returncode == 0, up.stderr
    try:
        scenario = tmp_path / "target.yaml"
        scenario.write_text("- name: target\n  steps:\n    - sleep: {duration: 30s}\n"
                            "- name: target-after\n  steps:\n    - sleep: {duration: 1s}\n")
        report = tmp_path / "target.json"
        # the debug kernel's guest starts Python slowly on a busy machine
        run = _start_run(private_cache, scenario, report, "--timeout-multiplier", "4")
        _wait_for_holder(private_cache, run.pid)
        provoke = _cli(private_cache, "testbed", "run", "--alongside", "--", "sh", "-c",
                       _WHEN_A_CASE_RUNS + "echo SLAB_LINEAR_OVERFLOW > "
                       "/sys/kernel/debug/provoke-crash/DIRECT")
        if provoke.returncode != 0:
            run.kill()
            raise AssertionError(f"{provoke.stderr}\n--- the run ---\n{run.communicate()}")
        assert "testbed busy" not in provoke.stderr
        assert run.poll() is None, "the provoking command waited for the run to end"
        _, err = run.communicate(timeout=600)
        assert run.returncode == 1, err
        results = _results(report)
        assert results["target"]["outcome"] == "error"
        assert results["target"]["message"].startswith(
            "kernel kasan during the case: BUG: KASAN: slab-out-of-bounds in "
            "lkdtm_SLAB_LINEAR_OVERFLOW"), results["target"]["message"]
        assert results["target-after"]["outcome"] == "pass"
        assert_valid_junit(report.with_suffix(".xml"))
    finally:
        _cli(private_cache, "testbed", "down", "--force")


def test_testbed_run_alongside_needs_an_up_vm(private_cache: dict[str, str]) -> None:
    out = _cli(private_cache, "testbed", "run", "--alongside", "--", "true")
    assert out.returncode == 2
    assert out.stderr.strip().endswith(
        "testbed run --alongside: no VM is up (`vfio-scenario testbed up`)")


def test_up_with_jobs_boots_the_vms_run_jobs_uses_and_says_when_fewer_run(
        private_cache: dict[str, str], tmp_path: Path) -> None:
    """`testbed up --jobs 2` boots VMs 1 and 2; `run --jobs 2` runs on them (each VM's
    attach lock names the run), `run --jobs 3` says how to start the third; `down` ends
    both."""
    up = _cli(private_cache, "testbed", "up", "--jobs", "2")
    try:
        assert up.returncode == 0, up.stderr
        assert [line.split(":")[0] for line in up.stdout.splitlines()] == \
            ["testbed up VM 1", "testbed up VM 2"]
        status = _cli(private_cache, "testbed", "status").stdout
        assert "vm 1          up, PID" in status and "vm 2          up, PID" in status, status
        scenario = _scenario(tmp_path, "shared", 0.5)
        report = tmp_path / "shared.json"
        run = _start_run(private_cache, scenario, report, "--jobs", "2")
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        data = json.loads(report.read_text())
        assert data["properties"]["testbed"] == "testbed up"
        assert {c["outcome"] for c in data["cases"]} == {"pass"}
        folder = Path(private_cache["XDG_CACHE_HOME"]) / "vfio-scenario" / "run"
        for vm in ("up", "up-2"):
            assert (folder / vm / "attached.lock").read_text() == f"run PID {run.pid}", vm
        more = _cli(private_cache, "run", str(scenario), "--jobs", "3")
        assert more.returncode == 2, more.stderr
        assert more.stderr.strip().endswith(
            "--jobs 3: 2 `testbed up` VM(s) run (number 1, 2), this run needs VMs 1 to 3; "
            "start the missing ones with `vfio-scenario testbed up --jobs 3`, or run with "
            "--jobs 2, or stop them (`vfio-scenario testbed down`) and the run boots VMs of "
            "its own"), more.stderr
    finally:
        down = _cli(private_cache, "testbed", "down", "--force")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("testbed down: ended QEMU PID ") and \
        down.stdout.count(",") == 1, down.stdout
    assert "vm            none running" in _cli(private_cache, "testbed", "status").stdout
