"""The warm guest engine (run/zygote.py) of a `testbed up` VM: the first run starts it,
the next runs fork their engine from that same process, a run with the warm engine
turned off starts a fresh one and leaves it be.

In a private cache (its own run/ folder and `up` VM), sharing only the built kernels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from vfio_scenario.run.zygote import GUEST_SOCKET
from vfio_scenario.testbed.assets import build_own_kernel
from vfio_scenario.testbed.paths import cache_dir

pytestmark = pytest.mark.testbed

SCENARIO = """\
- name: first
  requires: {devices: 0}
  steps:
    - sleep: {duration: 1ms}
- name: second
  steps:
    - assert_not_tainted: {}
"""


@pytest.fixture
def up_vm() -> Iterator[dict[str, str]]:
    """A short path: a VM's agent socket lives below it (AF_UNIX paths hold 107 bytes)."""
    build_own_kernel()
    base = Path(tempfile.mkdtemp(prefix="vs-warm-", dir="/tmp"))
    cache = base / "vfio-scenario"
    cache.mkdir()
    for shared in ("kernels", "linux-source", "accel.json"):
        if (cache_dir() / shared).exists():
            (cache / shared).symlink_to(cache_dir() / shared)
    env = {**os.environ, "XDG_CACHE_HOME": str(base)}
    up = _cli(env, "testbed", "up")
    assert up.returncode == 0, up.stderr
    try:
        yield env
    finally:
        _cli(env, "testbed", "down", "--force")
        shutil.rmtree(base, ignore_errors=True)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfio_scenario", *args], env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def _guest(env: dict[str, str], *argv: str) -> str:
    out = _cli(env, "testbed", "run", "--", *argv)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _run(env: dict[str, str], scenario: Path, report: Path) -> list[tuple[str, str]]:
    out = _cli(env, "run", str(scenario), "--json", str(report),
               "--junit-xml", str(report.with_suffix(".xml")))
    assert out.returncode == 0, out.stdout + out.stderr
    return [(c["scenario"], c["outcome"]) for c in json.loads(report.read_text())["cases"]]


def test_runs_on_an_up_vm_fork_their_engine_from_one_warm_process(
        up_vm: dict[str, str], tmp_path: Path) -> None:
    scenario = tmp_path / "warm.yaml"
    scenario.write_text(SCENARIO)
    assert _run(up_vm, scenario, tmp_path / "one.json") == [("first", "pass"),
                                                            ("second", "pass")]
    key = _guest(up_vm, "cat", f"{GUEST_SOCKET}.key")  # its key and its own token
    log = _guest(up_vm, "cat", f"{GUEST_SOCKET}.log")
    assert log.count("warm: key ") == 1, log
    pid = log.split("PID ")[1].split()[0]
    assert _run(up_vm, scenario, tmp_path / "two.json") == [("first", "pass"),
                                                            ("second", "pass")]
    assert _guest(up_vm, "cat", f"{GUEST_SOCKET}.key") == key  # the same process served
    assert _guest(up_vm, "cat", f"{GUEST_SOCKET}.log") == log
    assert "vfio_scenario.run.zygote\0serve" in _guest(up_vm, "cat", f"/proc/{pid}/cmdline")
    cold = {**up_vm, "VFIO_SCENARIO_WARM_ENGINE": "0"}
    assert _run(cold, scenario, tmp_path / "cold.json") == [("first", "pass"),
                                                            ("second", "pass")]
    assert _guest(up_vm, "cat", f"{GUEST_SOCKET}.key") == key  # left as it was
