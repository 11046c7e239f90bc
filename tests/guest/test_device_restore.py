"""`vfio-scenario run --device BDF` puts the device back as it found it: driver,
driver_override and SR-IOV VF count, after a normal end, after SIGINT (Ctrl-C: the
whole process group) and after SIGTERM (the run's process alone).

The guest is a host like any other here: the run is the real command, in a process of
its own, on the testbed's igb PF. Its cases (tests/data/restore/sriov-vfs.yaml) create
two VFs and open one; `vfs-held` then sleeps until the signal comes. The kernel of the
testbed has no native driver for igb (CONFIG_MODULES is off, no IGB), so "bound to
another driver" is played by "bound to none", with a driver_override naming a driver
this kernel lacks: restoring must unbind vfio-pci, write that override back, and leave
the PF unbound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vfio_scenario.run import devstate
from vfio_scenario.uapi import sysfs

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "data" / "restore" / "sriov-vfs.yaml"
IGB_PF = (0x8086, 0x10C9)
RUN_TIMEOUT = 600.0  # seconds: the guest's Python under TCG is slow to start


def state(bdf: str) -> tuple[str | None, str, str]:
    """(driver, driver_override as sysfs shows it, sriov_numvfs)."""
    folder = sysfs.device_dir(bdf)
    link = folder / "driver"
    driver = os.path.basename(os.readlink(link)) if link.is_symlink() else None
    return (driver, (folder / "driver_override").read_text().strip(),
            (folder / "sriov_numvfs").read_text().strip())


def set_state(bdf: str, driver: str | None, override: str) -> None:
    """Unbind, write driver_override, and bind to `driver` (None: leave unbound)."""
    folder = sysfs.device_dir(bdf)
    if (folder / "driver").is_symlink():
        (folder / "driver" / "unbind").write_text(bdf)
    (folder / "driver_override").write_text(f"{override}\n")
    if driver is not None:
        Path(f"/sys/bus/pci/drivers/{driver}/bind").write_text(bdf)


@pytest.fixture(scope="module")
def pf() -> Iterator[str]:
    found = sysfs.find_devices(*IGB_PF)
    if not found:
        pytest.skip("no SR-IOV PF (igb 8086:10c9) in this VM: testbed devices lack igb")
    bdf = found[0]
    before = state(bdf)
    assert before == ("vfio-pci", "vfio-pci", "0"), before  # as the testbed's init binds it
    yield bdf
    set_state(bdf, "vfio-pci", "vfio-pci")  # the testbed's binding, for the next modules
    assert state(bdf) == before


def start_run(pf: str, case: str, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vfio_scenario", "run", "--device", pf, str(CASES), "-k", case,
         "--junit-xml", str(tmp_path / "junit.xml")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own process group, as a shell gives a job


def wait_for_vfs(pf: str, run: subprocess.Popen[str], count: int) -> None:
    """Until the case has made its VFs and opened VF 0 (its next step is the sleep)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    vf0 = sysfs.device_dir(pf) / "virtfn0"
    while time.monotonic() < deadline and run.poll() is None:
        if state(pf)[2] == str(count) and vf0.is_symlink():
            time.sleep(2.0)  # VF 0's open follows at once
            return
        time.sleep(0.2)
    output = run.stdout.read() if run.poll() is not None and run.stdout else ""
    pytest.fail(f"the run never had {count} VFs (exit {run.poll()}): {output}")


@pytest.mark.parametrize(("driver", "override"), [
    (None, "(null)"),            # unbound, no override
    (None, "vs-no-such-driver"),  # unbound, an override naming a driver the kernel lacks
    ("vfio-pci", "vfio-pci"),     # the testbed's own binding: nothing to rebind
])
def test_a_normal_end_restores_driver_override_and_vfs(
        pf: str, tmp_path: Path, driver: str | None, override: str) -> None:
    set_state(pf, driver, override)
    before = state(pf)
    assert before == (driver, override, "0")
    run = start_run(pf, "vfs-briefly", tmp_path)
    output, _ = run.communicate(timeout=RUN_TIMEOUT)
    assert run.returncode == 0, output
    assert "1 passed, 0 failed, 0 skipped, 0 errors" in output
    assert "not restored" not in output
    # the user is told when the run rebinds a device
    assert (f"{pf} bound to vfio-pci for the run (was bound to no driver)" in output) == \
        (driver is None), output
    assert state(pf) == before
    assert not (sysfs.device_dir(pf) / "virtfn0").exists()


@pytest.mark.parametrize(("signum", "to_group", "status"), [
    (signal.SIGINT, True, 130),    # Ctrl-C: the terminal signals the whole job
    (signal.SIGTERM, False, 143),  # kill PID: the run's process alone, its case goes too
    (signal.SIGINT, False, 130),
])
def test_a_signal_mid_case_restores_driver_override_and_vfs(
        pf: str, tmp_path: Path, signum: signal.Signals, to_group: bool, status: int) -> None:
    set_state(pf, None, "vs-no-such-driver")
    before = state(pf)
    run = start_run(pf, "vfs-held", tmp_path)
    try:
        wait_for_vfs(pf, run, 2)
        during = state(pf)
        assert during == ("vfio-pci", "vfio-pci", "2")  # the run rebound it and made VFs
        if to_group:
            os.killpg(run.pid, signum)
        else:
            os.kill(run.pid, signum)
        output, _ = run.communicate(timeout=RUN_TIMEOUT)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == status, output
    assert f"interrupted by {signum.name}" in output
    # the reports are written, holding what finished: here nothing (the case was cut)
    junit = (tmp_path / "junit.xml").read_text()
    assert 'tests="0"' in junit, junit
    assert "not restored" not in output
    assert state(pf) == before
    assert not (sysfs.device_dir(pf) / "virtfn0").exists()
    assert in_process_group(run.pid) == []  # nothing of the run is left holding a device


def in_process_group(pgid: int) -> list[int]:
    """The processes of a process group, from /proc/PID/stat (field 5 is the group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp …
        if int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def test_record_reads_the_override_and_restore_writes_it_back(pf: str) -> None:
    set_state(pf, None, "vs-no-such-driver")
    [recorded] = devstate.record([pf])
    assert recorded == devstate.DeviceState(pf, None, 0, "vs-no-such-driver")
    assert devstate.bind_vfio([recorded]) == [pf]
    assert state(pf) == ("vfio-pci", "vfio-pci", "0")
    assert devstate.restore([recorded]) == []
    assert state(pf) == (None, "vs-no-such-driver", "0")
