"""The testbed's firmware choice: qboot where QEMU ships it, SeaBIOS on the retry.

Booting with either is tested for real in tests/testbed (every testbed VM boots with
qboot when the installed QEMU has it); here the choice and the fallback, with a fake VM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from vfio_scenario.testbed import testbed as testbed_mod
from vfio_scenario.testbed.qemu import VmFiles, command_line
from vfio_scenario.testbed.vm import BootFailed


def test_command_line_adds_the_firmware_only_when_given(tmp_path: Path) -> None:
    files = VmFiles(tmp_path)
    common: dict[str, Any] = {"accel": "tcg", "kernel": tmp_path / "bzImage",
                              "initrd": tmp_path / "initrd", "files": files, "devices": ("edu",)}
    rom = tmp_path / "qboot.rom"
    with_rom = command_line(**common, firmware=rom)
    assert with_rom[with_rom.index("-bios") + 1] == str(rom)
    assert "-bios" not in command_line(**common)


class FakeVm:
    """Records the firmware of each boot; the first boot fails when told to."""

    firmwares: ClassVar[list[Path | None]] = []
    fail_first: ClassVar[bool] = True

    def __init__(self, files: VmFiles, **kw: Any) -> None:
        self.firmware = kw["firmware"]

    def start(self, timeout: float) -> None:
        FakeVm.firmwares.append(self.firmware)
        if FakeVm.fail_first and len(FakeVm.firmwares) == 1:
            raise BootFailed("the guest's agent did not answer in time", "console")


@pytest.fixture
def fake_boot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> testbed_mod.Testbed:
    rom = tmp_path / "qboot.rom"
    monkeypatch.setattr(testbed_mod, "Vm", FakeVm)
    monkeypatch.setattr(testbed_mod, "fast_firmware", lambda: rom)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    FakeVm.firmwares = []
    bed = testbed_mod.Testbed(report=lambda message: None)
    # prepared already: no kernel build or initramfs here
    bed._kernel = type("K", (), {"image": tmp_path / "bzImage"})()
    bed._initrd = tmp_path / "initrd"
    return bed


def test_a_boot_uses_qboot_and_a_failed_one_is_retried_with_qemus_default(
        fake_boot: testbed_mod.Testbed, tmp_path: Path) -> None:
    FakeVm.fail_first = True
    fake_boot._boot("tcg", 10.0, detached=False)
    assert FakeVm.firmwares == [tmp_path / "qboot.rom", None]
    assert fake_boot.boots == 1


def test_a_boot_that_works_with_qboot_is_not_repeated(
        fake_boot: testbed_mod.Testbed, tmp_path: Path) -> None:
    FakeVm.fail_first = False
    fake_boot._boot("tcg", 10.0, detached=False)
    assert FakeVm.firmwares == [tmp_path / "qboot.rom"]
