"""The testbed itself: boot, bound devices, commands, crash and hang recovery, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.testbed import BootFailed, GuestCrashed, GuestHung, Testbed

pytestmark = pytest.mark.testbed

LIST_EDU = textwrap.dedent("""
    import json, os
    from pathlib import Path
    found = []
    for d in sorted(Path("/sys/bus/pci/devices").iterdir()):
        if (d / "vendor").read_text().strip() == "0x1234" and \\
                (d / "device").read_text().strip() == "0x11e8":
            group = (d / "iommu_group").resolve().name
            found.append({"bdf": d.name, "driver": (d / "driver").resolve().name,
                          "group": group, "node": os.path.exists(f"/dev/vfio/{group}")})
    print(json.dumps(found))
""")


def _edu_devices(testbed: Any) -> list[dict[str, Any]]:
    result = testbed.run([sys.executable, "-c", LIST_EDU], timeout=120)
    assert result.returncode == 0, result.stderr
    devices: list[dict[str, Any]] = json.loads(result.stdout)
    return devices


def _pid_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True  # dead, waiting for a parent that is not us to reap it
        time.sleep(0.05)
    return False


def test_both_edu_devices_are_bound_to_vfio_pci_with_group_nodes(testbed: Any) -> None:
    devices = _edu_devices(testbed)
    assert [d["bdf"] for d in devices] == ["0000:00:03.0", "0000:00:04.0"]
    assert all(d["driver"] == "vfio-pci" and d["node"] for d in devices), devices
    assert len({d["group"] for d in devices}) == 2


def test_default_kernel_offers_iommufd_and_vfio_device_cdevs(testbed: Any) -> None:
    result = testbed.run(["sh", "-c", "test -c /dev/iommu && ls /dev/vfio/devices"], timeout=60)
    assert result.returncode == 0, result.stderr
    # one cdev per device bound to vfio-pci (the default layout's devices)
    assert result.stdout.split() == [f"vfio{i}" for i in range(len(testbed.devices))]
    assert testbed.kernel_release.endswith("-vfio-scenario")


def test_command_gets_env_cwd_and_returns_status_and_both_streams(testbed: Any) -> None:
    script = 'echo "$VFIO_SCENARIO_GUEST $EXTRA $(pwd)"; echo oops >&2; exit 7'
    result = testbed.run(["sh", "-c", script], timeout=60, env={"EXTRA": "x"}, cwd="/tmp")
    assert (result.returncode, result.stdout, result.stderr) == (7, "1 x /tmp\n", "oops\n")


def test_missing_program_reports_status_127(testbed: Any) -> None:
    result = testbed.run(["/nonexistent/program"], timeout=60)
    assert result.returncode == 127
    assert "FileNotFoundError" in result.stderr


def test_stream_yields_each_line_before_the_command_ends(testbed: Any) -> None:
    arrivals = []
    stream = testbed.stream(["sh", "-c", "echo first; sleep 2; echo second"], idle_timeout=30)
    for line in stream:
        arrivals.append((line, time.monotonic()))
    assert [line for line, _ in arrivals] == ["first", "second"]
    assert arrivals[1][1] - arrivals[0][1] > 1.5
    assert stream.returncode == 0


def test_guest_panic_raises_guest_crashed_and_the_next_command_reboots(testbed: Any) -> None:
    old_pid = testbed.pid
    with pytest.raises(GuestCrashed) as crash:
        testbed.run(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"], timeout=120)
    assert "sysrq" in crash.value.console_tail.lower()
    assert _pid_gone(old_pid)
    result = testbed.run(["echo", "back"], timeout=120)
    assert (result.returncode, result.stdout) == (0, "back\n")
    assert testbed.pid != old_pid


def test_a_guest_panic_during_a_case_is_that_cases_error_and_the_run_goes_on(
        testbed: Any, tmp_path: Path) -> None:
    from vfio_scenario.language.compile import compile_paths
    from vfio_scenario.run.testbed_run import run_in_testbed

    scenario = tmp_path / "panic.yaml"
    scenario.write_text(textwrap.dedent("""
        - name: sleeper
          requires: {devices: 0}
          steps:
            - sleep: {duration: 20s}
        - name: after
          requires: {devices: 0}
          steps:
            - assert_not_tainted: {}
    """))
    compiled = compile_paths([str(scenario)])
    assert not compiled.errors
    old_pid = testbed.pid
    results: list[dict[str, Any]] = []
    warnings: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "start" and event["id"].endswith("::sleeper"):
            # the panic comes from outside the case, while it runs: no scenario can do it
            testbed.run(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"], timeout=120)
        elif event.get("event") == "result":
            results.append(event["result"])
        elif event.get("event") == "warning":
            warnings.append(event["message"])

    run_in_testbed(testbed, compiled.cases, compiled.documents, on_event, devices=[],
                   iommu_modes=[], timeout_multiplier=1.0, fail_fast=False)
    assert [(r["scenario"], r["outcome"]) for r in results] == [("sleeper", "error"),
                                                                ("after", "pass")]
    assert results[0]["message"].startswith("guest kernel crashed while the case ran")
    assert "sysrq" in results[0]["log"].lower()  # the console tail is attached
    assert warnings == ["guest kernel crashed; rebooting the testbed"]
    assert _pid_gone(old_pid) and testbed.pid != old_pid


def test_silent_command_raises_guest_hung_and_reboot_recovers(testbed: Any) -> None:
    old_pid = testbed.pid
    with pytest.raises(GuestHung):
        for _ in testbed.stream(["sleep", "60"], idle_timeout=2):
            pass
    assert _pid_gone(old_pid)
    testbed.reboot()
    result = testbed.run(["true"], timeout=120)
    assert result.returncode == 0


def test_debian_kernel_boots_with_edu_devices_bound() -> None:
    with Testbed(kernel="debian") as debian:
        assert "deb" in debian.kernel_release
        devices = _edu_devices(debian)
        assert len(devices) == 2
        assert all(d["driver"] == "vfio-pci" and d["node"] for d in devices), devices
        pid = debian.pid
    assert _pid_gone(pid)


def test_stopped_testbed_leaves_no_qemu() -> None:
    bed = Testbed()
    bed.start()
    pid = bed.pid
    assert pid > 0
    bed.stop()
    assert _pid_gone(pid)
    assert not bed.files.folder.exists()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_qemu_ends_with_the_process_that_started_it(how: signal.Signals) -> None:
    program = textwrap.dedent("""
        import time
        from vfio_scenario.testbed import Testbed
        bed = Testbed().start()
        print(bed.pid, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        qemu_pid = int(child.stdout.readline())
        os.kill(child.pid, how)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _pid_gone(qemu_pid, within=10)


def test_igb_and_nvme_are_bound_and_igb_creates_vfs_under_vfio_pci() -> None:
    with Testbed(devices=("edu", "edu", "igb", "nvme")) as bed:
        script = ("for d in 0000:00:03.0 0000:00:04.0 0000:00:06.0 0000:01:00.0; do "
                  "basename $(readlink /sys/bus/pci/devices/$d/driver); done; "
                  "echo 2 > /sys/bus/pci/devices/0000:01:00.0/sriov_numvfs && "
                  "cat /sys/bus/pci/devices/0000:01:10.0/device "
                  "/sys/bus/pci/devices/0000:01:10.2/driver_override")
        result = bed.run(["sh", "-c", script], timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["vfio-pci"] * 4 + ["0x10ca", "vfio-pci"]
        pid = bed.pid
    assert _pid_gone(pid)


def test_a_users_bzimage_boots_from_its_path() -> None:
    from vfio_scenario.testbed.assets import build_own_kernel

    image = build_own_kernel().image
    with Testbed(kernel=str(image)) as bed:
        assert bed.kernel_release.endswith("-vfio-scenario")
        assert bed.run(["test", "-c", "/dev/iommu"], timeout=60).returncode == 0


def test_an_unbootable_kernel_raises_boot_failed_and_leaves_no_qemu(tmp_path: Path) -> None:
    bogus = tmp_path / "bzImage"
    bogus.write_bytes(b"not a kernel" * 100)
    bed = Testbed(kernel=str(bogus), accel="tcg", boot_timeout=20)
    with pytest.raises(BootFailed) as failure:
        bed.start()
    assert "QEMU exited" in failure.value.reason
    assert bed.pid == 0
    bed.stop()


def test_interactive_command_gets_a_terminal_and_its_input(testbed: Any) -> None:
    keys_r, keys_w = os.pipe()
    screen_r, screen_w = os.pipe()
    os.write(keys_w, b"tty; echo typed-$((6*7)); exit 4\n")
    try:
        status = testbed.interactive(["sh"], in_fd=keys_r, out_fd=screen_w)
        os.close(screen_w)
        screen = b""
        while chunk := os.read(screen_r, 65536):
            screen += chunk
    finally:
        for fd in (keys_r, keys_w, screen_r):
            os.close(fd)
    assert status == 4
    assert b"/dev/pts/" in screen and b"typed-42" in screen
