"""How often `vfio-scenario run` reads and compiles the scenarios on its way to the testbed.

The testbed is a fake here (no VM): it lists one VFIO device, and its "guest" reads the
payload the host wrote and answers each case with a skip that says so. What is
counted is the host's work: each scenario file read once, the scenarios compiled once
for placeholder devices (errors and the selection, before any VM boots) and once for
the guest's devices (what the payload carries).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario import cli
from vfio_scenario.language import compile as compile_mod
from vfio_scenario.language import loader
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run import guest_models, payload

SCENARIO = """\
name: open-close
tags: [host]
steps:
  - open_iommu: {}
    as: iommu
  - open_device: {iommu: iommu, bdf: "{{ devices[0] }}"}
"""
GUEST_BDF = "0000:00:03.0"


class FakeStream:
    """The guest engine's events for a payload: hello, a skip per case, done."""

    returncode = 0
    stderr = ""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.header = payload.read_header(f)
            # the guest's models built as the guest builds them (not installed: this
            # process keeps the real ones)
            self.cases = payload.read_cases(f, guest_models.build(self.header.models))

    def __iter__(self) -> Iterator[str]:
        yield json.dumps({"event": "hello", "properties": {"kernel": "fake"}})
        for case in self.cases:
            result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                                outcome=Outcome.SKIP, message="fake testbed: not run")
            yield json.dumps({"event": "result", "result": result.to_dict()})
        yield json.dumps({"event": "done"})


class FakeTestbed:
    """One VFIO device in a guest that runs nothing."""

    accelerator = "tcg"
    kernel_release = "fake"
    qemu_version = "fake"
    vmlinux = None

    def __init__(self, **_: Any) -> None:
        pass

    def start(self) -> FakeTestbed:
        return self

    def stop(self) -> None:
        pass

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if argv[:2] == ["sh", "-c"]:  # the VFIO devices
            return subprocess.CompletedProcess(argv, 0, f"{GUEST_BDF}\n", "")
        # the devices' scenario drivers (the cases name `devices[0]`): none serves it
        assert "vfio_scenario.run.driverfacts" in argv, argv
        return subprocess.CompletedProcess(argv, 0, "", "")

    def stream(self, argv: list[str], idle_timeout: float, cwd: str | None = None) -> FakeStream:
        return FakeStream(argv[-1])


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[Any]]:
    """Calls of the loader (per file) and the compiler (per set of devices)."""
    from vfio_scenario import testbed
    from vfio_scenario.testbed import persistent

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(persistent, "attach", lambda *a, **k: None)
    monkeypatch.setattr(testbed, "Testbed", FakeTestbed)
    calls: dict[str, list[Any]] = {"load": [], "compile": []}
    load, compile_documents = loader.load_file, compile_mod.compile_documents

    def counting_load(path: str) -> Any:
        calls["load"].append(path)
        return load(path)

    def counting_compile(docs: Any, devices: Any = None) -> Any:
        calls["compile"].append(list(devices or []))
        return compile_documents(docs, devices)

    monkeypatch.setattr(compile_mod, "load_file", counting_load)
    monkeypatch.setattr(compile_mod, "compile_documents", counting_compile)
    return calls


def test_a_testbed_run_reads_each_file_once_and_compiles_once_per_set_of_devices(
        counted: dict[str, list[Any]], tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "a.yaml").write_text(SCENARIO)
    (scenarios / "b.yaml").write_text(SCENARIO.replace("open-close", "open-close-again"))
    junit = tmp_path / "junit.xml"
    status = cli.main(["run", str(scenarios), "--testbed", "always", "--junit-xml", str(junit),
                       "--iommu-mode", "iommufd"])
    assert status == 0  # skips only
    assert sorted(Path(p).name for p in counted["load"]) == ["a.yaml", "b.yaml"]
    # placeholders (no device list), then the guest's one device
    assert counted["compile"] == [[], [GUEST_BDF]]
    assert "fake testbed: not run" in junit.read_text()
