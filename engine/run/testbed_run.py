"""Run selected cases inside the QEMU testbed and bring their results back.

The host compiles the selection against the guest's device list and hands it over as
a payload file (vfio_scenario.run.payload); the guest runs the engine
(`vfio_scenario.run.guest PAYLOAD`) once over it, forked from the VM's warm engine
(run/zygote.py: started right after the boot, while the host compiles, and kept by a
`testbed up` VM for the next runs), one fork per case, and prints JSON-line events; a
guest panic or
hang makes the case that was running an ERROR with the console tail, the testbed
reboots, and the run goes on with the cases that had not run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.results import CaseResult, Outcome

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case
    from vfio_scenario.language.loader import Document

OnEvent = Callable[[dict[str, Any]], None]
MAX_REBOOTS = 5
GUEST_START = 60.0  # seconds for the guest's Python to import the engine and probe, TCG


# The guest's VFIO-bound functions, as probe.vfio_bound_devices() finds them there, in
# one shell command of the agent with no process started per device (each costs tens of
# milliseconds under TCG): the host compiles against them.
_LIST_VFIO_DEVICES = r"""
for d in /sys/bus/pci/drivers/vfio-pci/????:??:??.? \
         /sys/bus/pci/drivers/*[-_]vfio[-_]pci/????:??:??.?; do
  [ -e "$d" ] && echo "${d##*/}"
done
exit 0
"""


def guest_vfio_devices(testbed: Any, timeout: float = GUEST_START,
                       start: Sequence[str] = ()) -> list[str]:
    """BDFs of the functions bound to vfio-pci (or a variant) in the guest, sorted; the
    command `start` (zygote.start_request's) started in the background by the way."""
    from vfio_scenario.run.zygote import START_IN_BACKGROUND

    script = (START_IN_BACKGROUND if start else "") + _LIST_VFIO_DEVICES
    out = testbed.run(["sh", "-c", script, *(["sh", *start] if start else [])],
                      timeout=timeout)
    if out.returncode != 0:
        raise EnvironmentProblem(f"listing the testbed's VFIO devices failed: {out.stderr}")
    return sorted(out.stdout.split())


def guest_driver_facts(testbed: Any, bdfs: list[str], drivers: dict[str, str],
                       timeout: float = GUEST_START, warm: str | None = None) -> list[str]:
    """The guest's devices as templates see them: each BDF with the facts of the
    scenario driver serving it, from its init in the guest (vfio_scenario.run.driverfacts),
    forked from the VM's warm engine of `warm` (zygote.start_request's payload) if given."""
    from vfio_scenario.language.devices import DeviceName, DriverFacts
    from vfio_scenario.run.zygote import program_argv

    if not bdfs:
        return []
    argv = program_argv("vfio_scenario.run.driverfacts", warm,
                        ["--drivers", json.dumps(drivers), *bdfs])
    out = testbed.run(argv, timeout=timeout)
    if out.returncode != 0:
        raise EnvironmentProblem(f"reading the testbed's scenario drivers failed: {out.stderr}")
    facts: dict[str, DriverFacts] = {}
    for line in out.stdout.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("driver"):
            facts[entry["bdf"]] = DriverFacts.from_dict(entry["driver"])
    return [DeviceName(b, facts.get(b)) for b in bdfs]


def needs_driver_facts(cases: list[Case]) -> bool:
    """Whether a case's templates may read a driver: it requires one (its `driver`
    axis, `driver.*`) or names the run's devices (`devices[N].driver`)."""
    return any(c.requires.driver is not None or c.names_devices for c in cases)


def compile_for_guest(cases: list[Case], documents: list[Document], bdfs: list[str],
                      reselect: Callable[[list[Case]], list[Case]] | None = None) -> list[Case]:
    """`cases` compiled again, from the `documents` they were loaded from, for the
    guest's devices, so that templates (`device`, `devices[1]`, `driver`) name the
    guest's functions and drivers rather than placeholders.  The `driver` axis then
    holds the drivers the guest's devices have: `reselect` picks the run's cases among
    those (default: the ones of `cases`)."""
    from vfio_scenario.language.compile import compile_documents

    if not bdfs:
        return cases
    compiled = compile_documents(documents, bdfs)
    if compiled.errors:  # the same files compiled a moment ago; only the devices differ
        raise EnvironmentProblem("\n".join(str(e) for e in compiled.errors))
    if reselect is not None:
        return reselect(compiled.cases)
    by_id = {c.id: c for c in compiled.cases}
    return [by_id[c.id] for c in cases if c.id in by_id]


def crashed_result(case: Case, message: str, console: str, started: float) -> CaseResult:
    return CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                      outcome=Outcome.ERROR, params=dict(case.params), tags=list(case.tags),
                      message=message, log=f"--- testbed console tail ---\n{console}",
                      started=started, duration=time.time() - started)


def run_in_testbed(testbed: Any, cases: list[Case], documents: list[Document],
                   on_event: OnEvent, *,
                   devices: list[str], iommu_modes: list[str], timeout_multiplier: float,
                   fail_fast: bool, replace: Callable[[], Any] | None = None,
                   reselect: Callable[[list[Case]], list[Case]] | None = None,
                   kernel_watch: bool = True, coverage_per_case: bool = False) -> None:
    """Run `cases` in `testbed` (started), calling `on_event` with each guest event;
    `documents` are the scenario files they were compiled from (Compiled.documents).

    After a guest crash or hang the testbed reboots, or `replace()` gives the one to
    go on with (for a VM of `testbed up`, which is not ours to reboot).
    """
    from vfio_scenario.drivers.base import driver_entry_points
    from vfio_scenario.run import payload, zygote
    from vfio_scenario.testbed import GuestCrashed, GuestHung
    from vfio_scenario.testbed.paths import sub_dir

    # the guest sees the host's root at the same paths, except its own /tmp
    workdir = str(sub_dir("run", "payloads"))
    # --timeout-multiplier scales the guest's start too (a debug kernel on a busy host)
    start = GUEST_START * max(1.0, timeout_multiplier)
    drivers = driver_entry_points()
    # the VM's warm engine (started if it has none) warms up while we compile
    warm, begin = zygote.start_request(workdir, drivers)
    if devices:
        zygote.start_in(testbed, begin, start)
    bdfs = devices or guest_vfio_devices(testbed, start, begin)
    # each driver's init in the guest costs a process there (forked from the warm
    # engine, or a Python start): only for runs with a case that reads a driver
    named = guest_driver_facts(testbed, bdfs, drivers, start, warm) \
        if needs_driver_facts(cases) else bdfs
    remaining = compile_for_guest(list(cases), documents, named, reselect)
    # the cases of this run, now that the guest's drivers gave the `driver` axis
    on_event({"event": "plan", "ids": [c.id for c in remaining]})
    if not remaining:
        return
    header = payload.Header(devices=bdfs, drivers=drivers,
                            iommu_modes=list(iommu_modes),
                            timeout_multiplier=timeout_multiplier, fail_fast=fail_fast,
                            kernel_watch=kernel_watch, coverage_per_case=coverage_per_case)
    reboots = 0
    longest = max(c.timeout for c in cases) * timeout_multiplier
    while remaining:
        payload_file = payload.write(workdir, header, remaining)
        argv = zygote.guest_argv(payload_file)
        stream: Any = None
        seen = _GuestEvents({c.id: c for c in remaining})
        crashed = False
        try:
            # a case's own limit is enforced in the guest; silence beyond it means a hang
            # the payload holds everything (no scenario file is read in the guest), so
            # the engine runs in the payload's folder: the host's working directory may
            # be one the guest cannot see (below /tmp, for a VM of `testbed up`)
            stream = testbed.stream(argv, idle_timeout=longest + start, cwd=workdir)
            seen.follow(stream, on_event)
        except (GuestCrashed, GuestHung) as exc:
            crashed = True
            reboots += 1
            seen.crashed(exc, reboots, on_event)
            if replace is not None:
                testbed = replace()
            else:
                testbed.reboot()
        finally:
            os.unlink(payload_file)
        if seen.fatal is not None:
            raise EnvironmentProblem(f"the run in the testbed failed: {seen.fatal}")
        if seen.finished:
            break  # the guest went through its list (or stopped on --fail-fast)
        if not crashed:
            status = getattr(stream, "returncode", None)
            stderr = (getattr(stream, "stderr", "") or "").strip()
            raise EnvironmentProblem(
                f"the engine in the testbed stopped without finishing (exit status {status})"
                + (f":\n{stderr[-3000:]}" if stderr else ""))
        remaining = [c for c in remaining if c.id not in seen.done]


class _GuestEvents:
    """What one start of the guest's engine said: the case running, the cases done,
    whether it finished its list or failed."""

    def __init__(self, by_id: dict[str, Case]) -> None:
        self.by_id = by_id
        self.current: Case | None = None
        self.started = time.time()
        self.done: set[str] = set()
        self.fatal: str | None = None
        self.finished = False

    def follow(self, lines: Any, on_event: OnEvent) -> None:
        """Note each event of the guest's stdout lines and pass it on."""
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # the guest's Python printing something else; not an event
            kind = event.get("event")
            if kind == "start":
                self.current = self.by_id.get(event["id"])
                self.started = time.time()
            elif kind == "result":
                self.done.add(event["result"]["case_id"])
                self.current = None
            elif kind == "fatal":
                self.fatal = event.get("message", "guest failed")
            elif kind == "done":
                self.finished = True
            on_event(event)

    def crashed(self, exc: Exception, reboots: int, on_event: OnEvent) -> None:
        """The case that was running is an ERROR with the console's tail; past
        MAX_REBOOTS the run gives up."""
        from vfio_scenario.testbed import GuestCrashed, VmStopped

        what = ("the testbed VM was stopped" if isinstance(exc, VmStopped) else
                "guest kernel crashed" if isinstance(exc, GuestCrashed) else
                "guest stopped answering")
        console = getattr(exc, "console_tail", "") or ""
        if self.current is not None:
            self.done.add(self.current.id)
            on_event({"event": "result", "result": crashed_result(
                self.current, f"{what} while the case ran: {exc}", console,
                self.started).to_dict()})
        if reboots > MAX_REBOOTS:
            raise EnvironmentProblem(f"testbed failed {reboots} times; giving up: {exc}") \
                from None
        on_event({"event": "warning", "message": f"{what}; rebooting the testbed"})
