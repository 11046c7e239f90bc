"""`vfio-scenario testbed …` end to end, in a private cache so no one else's `up` VM is touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from vfio_scenario.testbed.assets import build_own_kernel
from vfio_scenario.testbed.paths import cache_dir

pytestmark = pytest.mark.testbed


@pytest.fixture
def private_cache(tmp_path: Path) -> dict[str, str]:
    """Environment whose cache shares the built kernels but has its own run/ and state."""
    build_own_kernel()
    cache = tmp_path / "vfio-scenario"
    cache.mkdir()
    for shared in ("kernels", "linux-source", "accel.json"):
        if (cache_dir() / shared).exists():
            (cache / shared).symlink_to(cache_dir() / shared)
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfio_scenario", "testbed", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_run_in_a_temporary_vm_returns_the_commands_status_and_output(
        private_cache: dict[str, str]) -> None:
    done = _cli(private_cache, "run", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert done.returncode == 5
    assert done.stdout == "out\n"
    assert "err\n" in done.stderr


def test_up_run_status_down_share_one_vm(private_cache: dict[str, str]) -> None:
    up = _cli(private_cache, "up")
    assert up.returncode == 0, up.stderr
    pid = int(up.stdout.split("PID ")[1].split(",")[0])
    try:
        assert "vm            up, PID" in _cli(private_cache, "status").stdout
        first = _cli(private_cache, "run", "--", "sh", "-c", "echo $$ > /tmp/mark; uname -r")
        second = _cli(private_cache, "run", "--", "cat", "/tmp/mark")
        assert first.returncode == 0 and first.stdout.strip().endswith("-vfio-scenario")
        assert second.returncode == 0 and second.stdout.strip().isdigit()  # same VM's /tmp
        # a file of the checkout changed after the guest read it is seen as it is now
        # (9p cache=loose never revalidates; attaching drops the guest's caches)
        edited = Path(__file__).resolve().parents[2] / "reports" / f"up-view-{pid}.txt"
        edited.parent.mkdir(exist_ok=True)
        try:
            for text in ("before\n", "after the edit\n"):
                edited.write_text(text)
                seen = _cli(private_cache, "run", "--", "cat", str(edited))
                assert (seen.returncode, seen.stdout) == (0, text)
        finally:
            edited.unlink(missing_ok=True)
        # `run` uses the up VM, also from a folder that VM cannot see (a /tmp folder made
        # after it booted: the guest's /tmp is its own)
        elsewhere = Path(tempfile.mkdtemp(prefix="vfio-scenario-elsewhere-", dir="/tmp"))
        try:
            (elsewhere / "one.yaml").write_text("name: one\nsteps:\n  - sleep: {duration: 1ms}\n")
            run = subprocess.run([sys.executable, "-m", "vfio_scenario", "run", "one.yaml"],
                                 cwd=elsewhere, env=private_cache, capture_output=True,
                                 text=True, timeout=300, check=False)
            assert run.returncode == 0, run.stdout + run.stderr
            assert "1 passed, 0 failed" in run.stdout
            assert (elsewhere / "reports" / "junit.xml").exists()
        finally:
            shutil.rmtree(elsewhere)
    finally:
        down = _cli(private_cache, "down")
    assert down.stdout.strip() == f"testbed down: ended QEMU PID {pid}"
    assert _cli(private_cache, "down").stdout.strip() == "testbed down: no VM was up"
    assert "vm            none running" in _cli(private_cache, "status").stdout
