"""Driver registration (entry points), matching, and the real-run status record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vfio_scenario.drivers import status
from vfio_scenario.drivers.base import Feature, driver_for, registered_drivers
from vfio_scenario.drivers.dsa import DsaDriver
from vfio_scenario.drivers.ioat import IoatDriver
from vfio_scenario.drivers.nv_falcon import NvFalconDriver

from tests.models.dsa import DsaModel
from tests.models.falcon import FalconGpuModel
from tests.models.ioat import IoatModel
from tests.models.pci import ModelDevice


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
    assert [status.driver_status(n, record) for n in ("ioat", "dsa", "nv_falcon")] == \
        ["model-tested"] * 3
    assert status.driver_status("edu", record) == "testbed"
    assert status.driver_status("someone-elses", record) == "untested"


def test_recording_a_real_run_makes_the_driver_real_device(tmp_path: Path) -> None:
    record = tmp_path / "real-runs.json"
    run = status.record_real_run("dsa", "8086:0b25 0000:6a:01.0", "7.2.0", "2026-11-23",
                                 path=record)
    assert status.driver_status("dsa", record) == "real-device"
    assert status.driver_status("ioat", record) == "model-tested"
    assert json.loads(record.read_text()) == [
        {"driver": "dsa", "device": "8086:0b25 0000:6a:01.0", "kernel": "7.2.0",
         "date": "2026-11-23"}]
    assert status.real_runs(record) == [run]


def test_command_line_records_and_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(status, "REAL_RUNS", tmp_path / "real-runs.json")
    assert status.main(["record", "nv_falcon", "10de:1eb8 0000:3b:00.0", "7.2.0",
                        "--date", "2026-11-24"]) == 0
    assert status.main(["show", "nv_falcon", "ioat"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "recorded nv_falcon on 10de:1eb8 0000:3b:00.0, kernel 7.2.0, 2026-11-24",
        "nv_falcon: real-device", "ioat: model-tested"]


def test_malformed_record_names_the_file(tmp_path: Path) -> None:
    record = tmp_path / "real-runs.json"
    record.write_text('{"driver": "ioat"}')
    with pytest.raises(ValueError, match="real-runs.json: expected a list"):
        status.driver_status("ioat", record)


def test_committed_record_is_a_valid_list() -> None:
    assert isinstance(status.real_runs(), list)



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
