"""Interpreter, executor and planner logic with fake operations (no hardware).

What the kernel answers is tested in the testbed (tests/guest); here the engine's own
rules: expectations, teardown, cleanup order, repeat, timeouts, isolation, skips.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import textwrap
import time
from typing import Any

import pytest
from vfio_scenario.drivers.base import registered_drivers
from vfio_scenario.errors import VfioError
from vfio_scenario.language.devices import DeviceName
from vfio_scenario.results import Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import CheckFailed, RunOptions, Runtime, Skip, run_case
from vfio_scenario.run.plan import DeviceCaps, HostCaps, plan

from tests.helpers.scenarios import compile_text as cases_of


class Log:
    """Fake operations that record what ran; behaviour chosen by the step's arguments."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ops(self) -> dict[str, Any]:
        def alloc_buffer(rt: Runtime, args: Any, step: Any) -> object:
            name = step.handle or "anon"
            self.calls.append(f"alloc {name}")
            rt.on_cleanup(name, lambda: self.calls.append(f"free {name}"))
            return object()

        def sleep(rt: Runtime, args: Any, step: Any) -> None:
            self.calls.append(f"sleep {args.duration}")
            if args.duration == 0.001:
                raise VfioError(errno.EINVAL, "SLEEP_IOCTL", "fake")
            if args.duration == 0.002:
                raise CheckFailed("value differs")
            if args.duration == 0.003:
                raise Skip("host lacks it")
            if args.duration == 0.004:
                raise RuntimeError("bug in an operation")
            if args.duration >= 1:
                time.sleep(args.duration)

        def assert_not_tainted(rt: Runtime, args: Any, step: Any) -> None:
            self.calls.append("taint check")

        return {"alloc_buffer": alloc_buffer, "sleep": sleep,
                "assert_not_tainted": assert_not_tainted}


def test_expected_errno_passes_and_wrong_expectation_names_step_and_line() -> None:
    (case,) = cases_of("""
        name: e
        steps:
          - sleep: {duration: 1ms}
            expect: EINVAL
          - sleep: {duration: 1ms}
            name: should fail
            expect: EBUSY
    """)
    result = run_case(case, [], Log().ops())
    assert [s.outcome for s in result.steps] == [Outcome.PASS, Outcome.FAIL]
    assert result.outcome is Outcome.FAIL
    assert result.location == "scen/x.yaml:6"
    assert result.message.startswith("step 2 `should fail` (scen/x.yaml:6): ")
    assert "EINVAL" in result.message
    assert result.steps[1].expected == "EBUSY" and result.steps[1].actual == "EINVAL"


def test_success_where_an_error_was_expected_fails() -> None:
    (case,) = cases_of("""
        name: e
        steps:
          - sleep: {duration: 5ms}
            expect: [EINVAL, EPERM]
    """)
    result = run_case(case, [], Log().ops())
    assert result.outcome is Outcome.FAIL
    assert result.steps[0].message == "expected EINVAL or EPERM, got ok"


def test_teardown_runs_after_a_failure_and_cleanups_run_newest_first() -> None:
    (case,) = cases_of("""
        name: t
        steps:
          - alloc_buffer: {size: 4KiB}
            as: a
          - alloc_buffer: {size: 4KiB}
            as: b
          - sleep: {duration: 2ms}
          - alloc_buffer: {size: 4KiB}
            as: never
        teardown:
          - assert_not_tainted: {}
    """)
    log = Log()
    result = run_case(case, [], log.ops())
    assert result.outcome is Outcome.FAIL
    assert log.calls == ["alloc a", "alloc b", "sleep 0.002", "taint check", "free b", "free a"]
    assert result.steps[-1].teardown and result.steps[-1].outcome is Outcome.PASS


def test_repeat_runs_the_step_n_times() -> None:
    (case,) = cases_of("""
        name: r
        steps:
          - assert_not_tainted: {}
            repeat: 5
    """)
    log = Log()
    result = run_case(case, [], log.ops())
    assert result.outcome is Outcome.PASS
    assert log.calls == ["taint check"] * 5
    assert result.steps[0].repeat == 5


def test_step_timeout_is_an_error() -> None:
    (case,) = cases_of("""
        name: slow
        steps:
          - sleep: {duration: 3s}
            timeout: 100ms
    """)
    result = run_case(case, [], Log().ops())
    assert result.outcome is Outcome.ERROR
    assert result.steps[0].message == "step timed out after 0.1s"


def test_skip_raised_by_an_operation_skips_the_case_with_its_reason() -> None:
    (case,) = cases_of("""
        name: s
        steps:
          - sleep: {duration: 3ms}
    """)
    result = run_case(case, [], Log().ops())
    assert result.outcome is Outcome.SKIP
    assert result.message == "host lacks it"


def test_exception_in_an_operation_is_an_error_not_a_crash() -> None:
    (case,) = cases_of("""
        name: b
        steps:
          - sleep: {duration: 4ms}
    """)
    result = run_case(case, [], Log().ops())
    assert result.outcome is Outcome.ERROR
    assert "RuntimeError: bug in an operation" in result.message


def _crashing_ops(log: Log) -> dict[str, Any]:
    ops = log.ops()

    def segfault(rt: Runtime, args: Any, step: Any) -> None:
        ctypes.string_at(0)

    def hang(rt: Runtime, args: Any, step: Any) -> None:
        while True:
            time.sleep(1)

    def sigbus(rt: Runtime, args: Any, step: Any) -> None:
        os.kill(os.getpid(), signal.SIGBUS)

    ops.update({"reset": segfault, "send_msi": hang, "memcpy_wait": sigbus})
    return ops


CRASHING = """
- name: segv
  steps:
    - open_iommu: {}
      as: iommu
    - reset: {device: dev}
      name: crash here
- name: hang
  timeout: 1s
  steps:
    - open_iommu: {}
      as: iommu
    - send_msi: {device: dev}
- name: bus
  steps:
    - open_iommu: {}
      as: iommu
    - memcpy_wait: {device: dev}
- name: fine
  steps:
    - assert_not_tainted: {}
"""


def test_segfault_hang_and_unexpected_sigbus_are_errors_and_the_next_case_passes() -> None:
    text = CRASHING.replace("      as: iommu\n", "      as: iommu\n    - open_device: {iommu: iommu}\n"
                            "      as: dev\n")
    cases = [c for c in cases_of(text) if c.iommu_mode in (None, "iommufd")]
    log = Log()
    ops = _crashing_ops(log)
    ops["open_iommu"] = lambda rt, a, s: object()
    ops["open_device"] = lambda rt, a, s: object()
    results = {c.scenario: execute_case(c, [], ops, RunOptions()) for c in cases}
    assert results["segv"].outcome is Outcome.ERROR
    assert results["segv"].message == "case process killed by SIGSEGV during step 3 `crash here`"
    assert results["hang"].outcome is Outcome.ERROR
    assert results["hang"].message == "case timed out after 1s during step 3 `send_msi`"
    assert results["bus"].outcome is Outcome.ERROR
    assert results["bus"].message == "case process killed by SIGBUS during step 3 `memcpy_wait`"
    assert results["fine"].outcome is Outcome.PASS


def test_the_step_a_case_process_died_in_is_named_from_its_step_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A case process reports the step it runs in a page it shares with the run process
    (no pipe write per step): a crash in a teardown step, after the body's steps, names
    that step; the next case starts from a cleared slot (a case that dies before its
    first step names none)."""
    (case,) = cases_of("""
        name: t
        steps:
          - sleep: {duration: 0}
          - sleep: {duration: 0}
        teardown:
          - assert_not_tainted: {}
            name: crash in teardown
    """)
    (early,) = cases_of("""
        name: early
        steps:
          - sleep: {duration: 0}
    """)
    ops = _crashing_ops(Log())
    ops["assert_not_tainted"] = ops["reset"]  # the segfault
    result = execute_case(case, [], ops, RunOptions())
    assert result.message == "case process killed by SIGSEGV during step 1 `crash in teardown`"

    def dies_first(rt: Runtime) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    from vfio_scenario.run import executor, interpreter

    real = interpreter.run_case

    def run_case_dying(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "begin": dies_first})

    monkeypatch.setattr(executor, "run_case", run_case_dying)
    result = execute_case(early, [], ops, RunOptions())
    assert result.message == "case process killed by SIGKILL"


def test_a_case_process_gets_the_default_sigint_and_sigterm_back() -> None:
    """The run process turns SIGINT/SIGTERM into an exception (session.run_planned); its
    case processes get the default action back."""
    (case,) = cases_of("""
        name: signals
        steps:
          - assert_not_tainted: {}
    """)
    seen: list[object] = []

    def check(rt: Runtime, args: Any, step: Any) -> None:
        handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        if handlers != (signal.SIG_DFL, signal.SIG_DFL):
            raise CheckFailed(f"handlers in the case process: {handlers}")

    def raising(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = {s: signal.signal(s, raising) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = execute_case(case, [], {"assert_not_tainted": check}, RunOptions())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert result.outcome is Outcome.PASS, result.message
    assert seen == []


def test_each_process_that_forks_cases_has_a_step_slot_of_its_own() -> None:
    """Runs forked from one warm process (run/zygote.py) must not share a slot: the
    slot belongs to the process that forks the cases, not to its parent."""
    from vfio_scenario.run.executor import step_slot

    mine = step_slot()
    assert step_slot() is mine
    mine.clear()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        child = step_slot()
        child.set(4, False)  # where a case process of this (forked) run writes
        os.write(write, b"1" if child is not mine else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert mine.memory[:8] == b"\0" * 8  # untouched by the other run's slot


def test_timeout_multiplier_scales_the_case_limit() -> None:
    text = CRASHING.replace("      as: iommu\n", "      as: iommu\n    - open_device: {iommu: iommu}\n"
                            "      as: dev\n")
    (hang,) = [c for c in cases_of(text) if c.scenario == "hang" and c.iommu_mode == "iommufd"]
    ops = _crashing_ops(Log())
    ops["open_iommu"] = lambda rt, a, s: object()
    ops["open_device"] = lambda rt, a, s: object()
    result = execute_case(hang, [], ops, RunOptions(timeout_multiplier=1.5))
    assert result.message.startswith("case timed out after 1.5s")


# --- planner ----------------------------------------------------------------------

PLANNED = """
- name: any-driver
  requires: {driver: any}
  steps:
    - open_iommu: {}
      as: iommu
- name: needs-msix
  requires: {features: [msix]}
  steps:
    - open_iommu: {}
      as: iommu
- name: needs-two
  requires: {devices: 2, iommu_modes: [iommufd]}
  steps:
    - open_iommu: {}
      as: iommu
- name: sends-msi
  requires: {driver: any, iommu_modes: [iommufd]}
  steps:
    - open_iommu: {}
      as: iommu
    - open_device: {iommu: iommu}
      as: dev
    - send_msi: {device: dev}
- name: kconfig
  requires: {kconfig: [CONFIG_VFIO_PCI_DMABUF]}
  steps:
    - sleep: {duration: 1ms}
"""


def _caps(**kw: Any) -> HostCaps:
    edu = DeviceCaps(bdf="0000:00:03.0", vendor_id=0x1234, device_id=0x11E8,
                     vfio_driver="vfio-pci", scenario_driver="edu",
                     features={"msi": None, "msix": "msix has 0 vectors"})
    caps = HostCaps(kernel_release="7.2.13",
                    iommu_modes={"vfio_type1_iommu": None, "vfio_type1v2_iommu": None,
                                 "iommufd_compat_type1": "/dev/iommu does not exist",
                                 "iommufd_compat_type1v2": "/dev/iommu does not exist",
                                 "iommufd": None},
                    features={}, kconfig={"CONFIG_VFIO": "y"}, kconfig_source="/proc/config.gz",
                    devices=[edu])
    for k, v in kw.items():
        setattr(caps, k, v)
    return caps


def _plan(caps: HostCaps) -> dict[str, str | None]:
    # compiled for the host's devices, as a run compiles: the `driver` axis holds theirs
    drivers = registered_drivers()
    devices = [DeviceName(d.bdf, drivers[d.scenario_driver].facts() if d.scenario_driver
                          else None) for d in caps.devices]
    cases = cases_of(PLANNED, devices=devices or None)
    return {pc.case.id.split("::")[1]: pc.skip for pc in plan(cases, caps)}


def test_planner_skips_with_the_reason_and_never_drops_a_case() -> None:
    skips = _plan(_caps())
    assert len(skips) == 5 + 5 + 1 + 1 + 1
    assert skips["any-driver[driver=edu,iommu_mode=vfio_type1v2_iommu]"] is None
    assert skips["any-driver[driver=edu,iommu_mode=iommufd_compat_type1]"] == \
        "IOMMU mode iommufd_compat_type1 unavailable: /dev/iommu does not exist"
    assert skips["needs-msix[iommu_mode=iommufd]"] == \
        "0 suitable device(s) of 1 needed: 0000:00:03.0 (1234:11e8): no msix: msix has 0 vectors"
    assert (skips["needs-two[iommu_mode=iommufd]"] or "").startswith(
        "1 suitable device(s) of 2 needed")
    assert skips["sends-msi[driver=edu,iommu_mode=iommufd]"] is None
    assert skips["kconfig"] == "kernel lacks CONFIG_VFIO_PCI_DMABUF (from /proc/config.gz)"


def test_planner_skips_send_msi_cases_on_a_no_send_msi_driver() -> None:
    caps = _caps()
    caps.devices[0].no_send_msi = True
    caps.devices[0].scenario_driver = "nv_falcon"
    skips = _plan(caps)
    assert skips["sends-msi[driver=nv_falcon,iommu_mode=iommufd]"] == (
        "0 suitable device(s) of 1 needed: 0000:00:03.0 (1234:11e8): driver nv_falcon has "
        "NO_SEND_MSI: send_msi is EOPNOTSUPP (the device cannot raise an MSI on demand)")
    assert skips["any-driver[driver=nv_falcon,iommu_mode=iommufd]"] is None


def test_planner_without_devices_or_config_says_so() -> None:
    skips = _plan(_caps(devices=[], kconfig=None))
    # without devices the `driver` axis holds every registered driver, each skipped
    assert skips["any-driver[driver=edu,iommu_mode=iommufd]"] == "no VFIO device on this host"
    assert skips["any-driver[driver=nv_falcon,iommu_mode=iommufd]"] == \
        "no VFIO device on this host"
    assert (skips["kconfig"] or "").startswith("kernel config not readable")


def test_planner_skips_a_case_whose_step_opens_a_mode_the_host_lacks() -> None:
    (case,) = cases_of("""
        name: two-modes
        steps:
          - open_iommu: {mode: vfio_type1v2_iommu}
            as: a
          - open_iommu: {mode: iommufd_compat_type1}
            as: b
    """)
    assert case.iommu_mode == "vfio_type1v2_iommu"
    (planned,) = plan([case], _caps())
    assert planned.skip == ("IOMMU mode iommufd_compat_type1 (opened at scen/x.yaml:6:5) "
                            "unavailable: /dev/iommu does not exist")


def test_unexpected_fault_caught_by_the_probe_is_an_error() -> None:
    (case,) = cases_of("""
        name: f
        steps:
          - assert_not_tainted: {}
    """)
    fault = VfioError(0, "mmio_read", "bar0")
    fault.errno_name = "SIGBUS"

    def faulting(rt: Runtime, args: Any, step: Any) -> None:
        raise fault

    result = run_case(case, [], {"assert_not_tainted": faulting})
    assert result.outcome is Outcome.ERROR
    assert result.steps[0].actual == "SIGBUS"


def test_mappings_left_at_the_end_are_unmapped_once_each_newest_first() -> None:
    from vfio_scenario.run.ops import operations
    from vfio_scenario.uapi.iommu import AddressSpace, Mapping
    from vfio_scenario.uapi.iova import IovaRange

    unmapped: list[int] = []

    class FakeSpace(AddressSpace):
        handle = "fake"

        def iova_ranges(self) -> list[IovaRange]:
            return [IovaRange(0x100000, (1 << 40) - 1)]

        def map(self, vaddr: int, size: int, iova: int, read: bool = True,
                write: bool = True) -> Mapping:
            return Mapping(self, iova, size, vaddr)

        def unmap(self, iova: int, size: int) -> int:
            unmapped.append(iova)
            return size

    (case,) = cases_of("""
        name: many
        requires: {devices: 0}
        matrix: {iommu_mode: [iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - alloc_buffer: {size: 4KiB}
            as: page
          - map_dma: {iommu: iommu, buffer: page}
            repeat: 300
          - unmap_dma: {iommu: iommu, iova: 0x100000, size: 4KiB, unmapped_size: 4KiB}
    """)
    ops = operations()
    ops["open_iommu"] = lambda rt, a, s: FakeSpace()
    result = run_case(case, [], ops)
    assert result.outcome is Outcome.PASS, result.message
    first, rest = unmapped[0], unmapped[1:]
    assert first == 0x100000  # the explicit unmap
    assert len(rest) == 299 and rest == sorted(rest, reverse=True)
    assert 0x100000 not in rest


def test_value_check_messages_show_the_mask_only_when_there_is_one() -> None:
    from vfio_scenario.run.ops.device import check_value

    check_value("config[0x0]", 0x11E81234, 0x1234, 0xFFFF, 4)
    with pytest.raises(CheckFailed) as plain:
        check_value("config[0x0]", 0x11E81234, 0xDEADBEEF, None, 4)
    assert str(plain.value) == "config[0x0]: read 0x11e81234, expected 0xdeadbeef"
    with pytest.raises(CheckFailed) as masked:
        check_value("bar0[0x8]", 0x00F0, 0x0F, 0x0F, 2)
    assert str(masked.value) == "bar0[0x8]: read 0x00f0 & 0x000f = 0x0000, expected 0x000f"


@pytest.mark.parametrize(("pattern", "want", "described"), [
    ("0xAA", 0xAA, "byte pattern 0xaa"),
    ("random", 0x8E, "random pattern, seed 7"),  # byte 0x10 of Pattern("random", 7)
])
def test_assert_pattern_names_the_first_bad_byte_and_the_pattern(pattern: str, want: int,
                                                                  described: str) -> None:
    from vfio_scenario.run.ops import operations

    (case,) = cases_of(f"""
        name: pattern
        requires: {{devices: 0}}
        steps:
          - alloc_buffer: {{size: 4KiB}}
            as: buf
          - fill: {{buffer: buf, pattern: {pattern}, seed: 7}}
          - fill: {{buffer: buf, offset: 0x10, size: 1, pattern: 0x00}}
          - assert_pattern: {{buffer: buf, pattern: {pattern}, seed: 7}}
    """)
    result = run_case(case, [], operations())
    assert result.outcome is Outcome.FAIL
    assert result.message == (f"step 4 `assert_pattern` (scen/x.yaml:9): buf[0x10] is 0x00, "
                              f"expected {want:#04x} ({described})")


def test_a_dmabuf_in_a_type1_container_is_skipped_before_any_ioctl() -> None:
    """The type1 uAPI has no call that takes a DMABUF: the engine refuses the step itself
    and reports a skip naming that, never an errno a scenario could take for the kernel's."""
    from vfio_scenario.run.ops import memory, operations
    from vfio_scenario.uapi.iommu import AddressSpace, Mapping
    from vfio_scenario.uapi.iova import IovaRange

    calls: list[str] = []

    class FakeContainer(AddressSpace):  # no map_file: what a type1 container offers
        handle = "fake container"

        def iova_ranges(self) -> list[IovaRange]:
            return [IovaRange(0, (1 << 40) - 1)]

        def map(self, vaddr: int, size: int, iova: int, read: bool = True,
                write: bool = True) -> Mapping:
            calls.append("map")
            return Mapping(self, iova, size, vaddr)

        def unmap(self, iova: int, size: int) -> int:
            calls.append("unmap")
            return size

    class FakeDmabuf:
        fd, size = 99, 4096

    (case,) = cases_of("""
        name: type1-dmabuf
        requires: {devices: 0}
        matrix: {iommu_mode: [vfio_type1v2_iommu]}
        steps:
          - open_iommu: {}
            as: iommu
          - open_device: {iommu: iommu}
            as: dev
          - export_dmabuf: {device: dev}
            as: regs
          - map_dma: {iommu: iommu, dmabuf: regs, iova: 0x100000}
            expect: EINVAL
    """)
    ops = operations()
    ops["open_iommu"] = lambda rt, a, s: FakeContainer()
    ops["open_device"] = lambda rt, a, s: object()
    ops["export_dmabuf"] = lambda rt, a, s: FakeDmabuf()
    result = run_case(case, [], ops)
    assert (result.outcome, result.message) == (Outcome.SKIP, memory.TYPE1_DMABUF)
    assert calls == []


class _FakeRevokeDevice:
    """What revoke_dmabuf/mmap_dmabuf ask of a device, answers chosen by the test."""

    bdf = "0000:00:03.0"

    def __init__(self, revoke: str | None, memattr: bool) -> None:
        self.revoke, self.memattr = revoke, memattr
        self.calls: list[str] = []

    def revoke_support(self) -> str | None:
        self.calls.append("probe revoke")
        return self.revoke

    def revoke_dmabuf(self, dmabuf: Any, method: str) -> None:
        self.calls.append(f"revoke {method}")

    def set_command_bits(self, bits: int, on: bool) -> None:
        self.calls.append(f"memory {'on' if on else 'off'}")

    def memattr_support(self) -> bool:
        self.calls.append("probe memattr")
        return self.memattr

    def set_dmabuf_memattr(self, dmabuf: Any, memattr: int) -> None:
        self.calls.append(f"memattr {memattr}")


def _run_dmabuf_steps(device: _FakeRevokeDevice, steps: str) -> Any:
    from vfio_scenario.run.ops import operations

    class FakeDmabuf:
        fd, size, handle = 99, 4096, "fake dmabuf"

        def __init__(self) -> None:
            self.device = device

        def mmap(self, offset: int, size: int | None) -> Any:
            device.calls.append("mmap")

            class View:
                handle = "view"

                def close(self) -> None:
                    pass
            return View()

    (case,) = cases_of("""
        name: revoke
        requires: {devices: 0}
        matrix: {iommu_mode: [iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - open_device: {iommu: iommu}
            as: dev
          - export_dmabuf: {device: dev}
            as: regs
    """ + textwrap.indent(textwrap.dedent(steps), "      "))
    ops = operations()
    ops["open_iommu"] = lambda rt, a, s: object()
    ops["open_device"] = lambda rt, a, s: object()
    ops["export_dmabuf"] = lambda rt, a, s: FakeDmabuf()
    return run_case(case, [], ops)


@pytest.mark.parametrize(("support", "method", "calls"), [
    ("feature", "ioctl", ["probe revoke", "revoke feature"]),
    ("ioctl", "auto", ["probe revoke", "revoke ioctl"]),
    (None, "auto", ["probe revoke", "memory off", "memory on"]),  # on: the case's cleanup
    (None, "memory-disable", ["memory off", "memory on"]),
])
def test_revoke_dmabuf_uses_the_uapi_the_kernel_has(support: str | None, method: str,
                                                    calls: list[str]) -> None:
    device = _FakeRevokeDevice(support, memattr=False)
    result = _run_dmabuf_steps(device, f"- revoke_dmabuf: {{dmabuf: regs, method: {method}}}")
    assert result.outcome is Outcome.PASS, result.message
    assert device.calls == calls


def test_revoke_ioctl_skips_naming_the_missing_revoke_uapi() -> None:
    from vfio_scenario.uapi.capabilities import REVOKE_ABSENT

    device = _FakeRevokeDevice(None, memattr=False)
    result = _run_dmabuf_steps(device, "- revoke_dmabuf: {dmabuf: regs, method: ioctl}")
    assert (result.outcome, result.message) == (Outcome.SKIP, REVOKE_ABSENT)
    assert "mmap" not in REVOKE_ABSENT and device.calls == ["probe revoke"]


@pytest.mark.parametrize(("offered", "outcome", "calls"), [
    (True, Outcome.PASS, ["probe memattr", "memattr 1", "mmap"]),
    (False, Outcome.SKIP, ["probe memattr"]),
])
def test_mmap_attrs_are_probed_and_set_before_mapping(offered: bool, outcome: Outcome,
                                                      calls: list[str]) -> None:
    from vfio_scenario.uapi.capabilities import MEMATTR_ABSENT

    device = _FakeRevokeDevice(None, memattr=offered)
    result = _run_dmabuf_steps(device, "- mmap_dmabuf: {dmabuf: regs, attrs: wc}")
    assert result.outcome is outcome, result.message
    assert device.calls == calls
    if outcome is Outcome.SKIP:
        assert result.message == MEMATTR_ABSENT


NAMED_DRIVER = """
- name: on-falcon
  requires: {driver: nv_falcon, iommu_modes: [iommufd]}
  steps:
    - open_iommu: {}
      as: iommu
- name: send-or-not
  requires: {driver: any, iommu_modes: [iommufd]}
  steps:
    - open_iommu: {}
      as: iommu
    - open_device: {iommu: iommu}
      as: dev
    - send_msi: {device: dev}
      expect: [ok, EOPNOTSUPP]
"""


def test_planner_skips_a_named_driver_no_device_has_with_the_reason() -> None:
    (case, _) = cases_of(NAMED_DRIVER, devices=[DeviceName(
        "0000:00:03.0", registered_drivers()["edu"].facts())])
    (pc,) = plan([case], _caps())
    assert pc.skip == "no device here is served by scenario driver nv_falcon (the devices' " \
                      "drivers: edu)"


def test_planner_runs_a_send_msi_that_accepts_eopnotsupp_on_a_no_send_msi_driver() -> None:
    caps = _caps()
    caps.devices[0].no_send_msi = True
    caps.devices[0].scenario_driver = "nv_falcon"
    cases = cases_of(NAMED_DRIVER, devices=[DeviceName(
        "0000:00:03.0", registered_drivers()["nv_falcon"].facts())])
    assert [(pc.case.id, pc.skip) for pc in plan(cases, caps)] == [
        ("scen/x.yaml::on-falcon[iommu_mode=iommufd]", None),
        ("scen/x.yaml::send-or-not[driver=nv_falcon,iommu_mode=iommufd]", None)]


def test_run_selects_by_driver_among_the_cases_compiled_for_the_devices() -> None:
    import argparse

    from vfio_scenario.run.dispatch import select

    cases = cases_of(PLANNED)  # no devices: every registered driver
    args = argparse.Namespace(keyword=None, tag=[], shard=None, driver="nvme")
    chosen = select(cases, args)
    assert chosen and {c.driver for c in chosen} == {"nvme"}
    assert {c.scenario for c in chosen} == {"any-driver", "sends-msi"}


def test_a_passing_step_carries_its_note() -> None:
    (case,) = cases_of("""
        name: noted
        requires: {devices: 0}
        steps:
          - sleep: {duration: 1ms}
          - sleep: {duration: 2ms}
    """)
    calls = []

    def sleep(rt: Runtime, args: Any, step: Any) -> None:
        calls.append(step.index)
        if step.index == 0:
            rt.note("nothing to check")

    result = run_case(case, [], {"sleep": sleep})
    assert [s.message for s in result.steps] == ["nothing to check", ""]
    assert result.outcome is Outcome.PASS and calls == [0, 1]


def test_a_run_reads_driver_facts_only_for_cases_that_may_read_a_driver() -> None:
    from vfio_scenario.run.testbed_run import needs_driver_facts

    assert needs_driver_facts(cases_of(PLANNED))  # requires a driver
    assert needs_driver_facts(cases_of("""
        name: two
        requires: {devices: 2}
        steps:
          - sleep: {duration: 1ms}
            name: "{{ devices[1] }}"
    """))
    assert not needs_driver_facts(cases_of("""
        name: host
        requires: {devices: 0}
        steps:
          - sleep: {duration: 1ms}
    """))
