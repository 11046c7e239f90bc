"""Driver registration (entry points), matching, and how far each driver is proven."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from vfio_scenario.drivers.base import (
    REAL_RUNS,
    Feature,
    RealRun,
    Status,
    driver_for,
    real_runs,
    registered_drivers,
)
from vfio_scenario.drivers.dsa import DsaDriver
from vfio_scenario.drivers.ioat import IoatDriver
from vfio_scenario.drivers.nv_falcon import NvFalconDriver

from tests.models.dsa import DsaModel
from tests.models.falcon import FalconGpuModel
from tests.models.ioat import IoatModel
from tests.models.pci import ModelDevice

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_entry_points_register_the_three_drivers() -> None:
    found = registered_drivers()
    assert found["ioat"] is IoatDriver
    assert found["dsa"] is DsaDriver
    assert found["nv_falcon"] is NvFalconDriver
    assert [name for name, cls in found.items() if cls.name != name] == []


def test_only_nv_falcon_declares_no_send_msi() -> None:
    flagged = {name for name, cls in registered_drivers().items()
               if Feature.NO_SEND_MSI in cls.features}
    assert flagged == {"nv_falcon"}


@pytest.mark.parametrize("model,expected", [
    (IoatModel(), IoatDriver), (DsaModel(), DsaDriver), (FalconGpuModel("A100"), NvFalconDriver),
])
def test_each_model_is_matched_to_its_driver(model: ModelDevice, expected: type) -> None:
    assert driver_for(model) is expected


def test_probes_of_these_drivers_leave_a_foreign_device_alone() -> None:
    edu = ModelDevice(0x1234, 0x11E8, 0x00FF00, 1)  # no BARs: any BAR access raises
    for cls in (IoatDriver, DsaDriver, NvFalconDriver):
        assert not cls.probe(edu)


def test_status_without_a_recorded_run(tmp_path: Path) -> None:
    record = tmp_path / "real-runs.json"
    record.write_text("[]\n")
    assert {name: cls.proven(record).value for name, cls in registered_drivers().items()} == {
        "dsa": "model-tested", "edu": "testbed", "igb": "testbed", "ioat": "model-tested",
        "nv_falcon": "model-tested", "nvme": "testbed"}


def test_a_driver_that_declares_nothing_is_untested() -> None:
    from vfio_scenario.drivers.base import Driver

    class Unknown(Driver):
        name = "unknown"

    assert Unknown.proven() is Status.UNTESTED


def test_a_recorded_real_run_makes_the_driver_real_device(tmp_path: Path) -> None:
    record = tmp_path / "real-runs.json"
    entry = {"driver": "dsa", "device": "8086:0b25 0000:6a:01.0", "kernel": "7.2.0",
             "date": "2026-11-23"}
    record.write_text(json.dumps([entry]))
    assert DsaDriver.proven(record) is Status.REAL_DEVICE
    assert IoatDriver.proven(record) is Status.MODEL_TESTED
    assert real_runs(record) == [RealRun(**entry)]


def test_malformed_record_names_the_file(tmp_path: Path) -> None:
    record = tmp_path / "real-runs.json"
    record.write_text('{"driver": "ioat"}')
    with pytest.raises(ValueError, match=r"real-runs\.json: expected a list"):
        IoatDriver.proven(record)


def test_committed_record_is_a_valid_list() -> None:
    assert REAL_RUNS.name == "real-runs.json" and REAL_RUNS.exists()
    assert isinstance(real_runs(), list)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_each_drivers_status_is_backed_by_its_tests() -> None:
    """testbed: a test in tests/guest drives the driver on the testbed's device;
    model-tested: a unit test drives it on a register model of tests/models;
    real-device: real-runs.json records a run of it."""
    unit = {p: _imports(p) for p in sorted((TESTS / "unit").glob("test_*.py"))}
    guest = {p: _imports(p) for p in sorted((TESTS / "guest").glob("test_*.py"))}
    recorded = {run.driver for run in real_runs()}
    for name, cls in registered_drivers().items():
        module = cls.__module__
        if cls.status is Status.TESTBED:
            assert any(module in names for names in guest.values()), \
                f"{name} claims testbed; no test in tests/guest imports {module}"
        elif cls.status is Status.MODEL_TESTED:
            assert any(module in names and any(n.startswith("tests.models.") for n in names)
                       for names in unit.values()), \
                f"{name} claims model-tested; no unit test imports {module} and a model"
        elif cls.status is Status.REAL_DEVICE:
            assert name in recorded, f"{name} claims real-device; real-runs.json has no run"


def test_the_drivers_table_of_the_docs_shows_each_drivers_status() -> None:
    rows = [line.split("|")[1:-1] for line in (ROOT / "docs" / "drivers.md").read_text()
            .split("\n## ")[0].splitlines() if line.startswith("| `")]
    shown = {name.strip("` "): cells[-1].strip() for cells in rows
             for name in cells[0].split(",")}
    assert shown == {name: cls.proven().value for name, cls in registered_drivers().items()}


def _bad_driver(**attrs: object) -> type:
    from vfio_scenario.drivers.base import Driver

    return type("Bad", (Driver,), {"name": "bad", "max_memcpy_size": 4096,
                                   "max_memcpy_count": 1, **attrs})


@pytest.mark.parametrize(("attrs", "message"), [
    ({"max_memcpy_size": 0}, ("scenario driver bad (tests:Bad) declares max_memcpy_size = 0; "
                             "a driver declares positive limits")),
    ({"max_memcpy_count": 0}, "scenario driver bad (tests:Bad) declares max_memcpy_count = 0"),
    ({"name": "other"}, "scenario driver bad (tests:Bad) calls itself 'other'"),
])
def test_a_driver_without_positive_limits_is_refused_when_it_registers(
        attrs: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from vfio_scenario.drivers import base
    from vfio_scenario.errors import ExitCode

    module = types.ModuleType("tests")
    module.Bad = _bad_driver(**attrs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests", module)
    monkeypatch.setattr(base, "_registry", None)
    with pytest.raises(base.DriverRegistrationError) as exc:
        base.use_drivers({"bad": "tests:Bad"})
    assert str(exc.value).startswith(message)
    assert exc.value.exit_code == ExitCode.ENVIRONMENT
    monkeypatch.setattr(base, "_registry", None)


def test_every_registered_driver_declares_positive_limits() -> None:
    for name, cls in registered_drivers().items():
        facts = cls.facts()
        assert facts.name == name and facts.max_memcpy_size > 0 and facts.max_memcpy_count > 0
