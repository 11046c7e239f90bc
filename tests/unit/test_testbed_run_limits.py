"""run_in_testbed's limits on the guest's start scale with --timeout-multiplier (a debug
kernel on a busy host starts the guest's Python slowly), with a recording testbed."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.run import testbed_run


class Stop(Exception):
    pass


class RecordingTestbed:
    def __init__(self) -> None:
        self.limits: list[tuple[str, float]] = []

    def run(self, argv: list[str], timeout: float) -> Any:
        self.limits.append(("run", timeout))
        return SimpleNamespace(returncode=0, stdout="0000:00:03.0\n", stderr="")

    def stream(self, argv: list[str], idle_timeout: float, cwd: str) -> Any:
        self.limits.append(("stream", idle_timeout))
        raise Stop


@pytest.mark.parametrize("multiplier", [1.0, 4.0])
def test_the_guest_start_limit_scales_with_the_multiplier(
        multiplier: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    scenario = tmp_path / "s.yaml"
    scenario.write_text(textwrap.dedent("""
        name: s
        timeout: 20s
        requires: {devices: 0}
        steps:
          - sleep: {duration: 1ms}
    """))
    compiled = compile_paths([str(scenario)])
    testbed = RecordingTestbed()
    with pytest.raises(Stop):
        testbed_run.run_in_testbed(testbed, compiled.cases, compiled.documents,
                                   lambda event: None,
                                   devices=[], iommu_modes=[],
                                   timeout_multiplier=multiplier, fail_fast=False)
    start = testbed_run.GUEST_START * multiplier
    assert testbed.limits == [("run", start), ("stream", 20 * multiplier + start)]
