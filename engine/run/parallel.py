"""`run --jobs N`: N testbed VMs, one queue of cases, one set of reports.

The host compiles the run once for the guest's devices (every VM has the same ones)
and writes one payload; each VM runs the guest engine over it in queue mode
(run/guest.py `--queue`), forked from the VM's warm engine (run/zygote.py): the
engine says it is ready, the host hands it the index of the next case of one queue,
and so on until the queue is empty (end of file on the engine's stdin). The queue holds the cases longest expected first, so the long ones
do not end up last on one VM while the others idle: expectations are the durations
of a previous run (its journal, or `--durations FILE`), else an estimate from the
case's steps.

Every event goes to one `on_event`, called from the caller's thread only, so the
console, the journal and the reports see one run; the report sink orders the cases
by the run's case order (they finish in any order). A VM whose guest crashes or hangs
makes its running case an ERROR with the console tail and reboots (or is replaced by
`replace()`); a case it had been handed but not started goes back to the head of the
queue; the other VMs go on. With `fail_fast`, no case is handed out after the first
failure (the cases already running on other VMs finish and are reported).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from queue import Queue
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.language.cases import flat_steps
from vfio_scenario.results import Outcome
from vfio_scenario.run.testbed_run import (
    GUEST_START,
    MAX_REBOOTS,
    compile_for_guest,
    crashed_result,
    guest_driver_facts,
    guest_vfio_devices,
    needs_driver_facts,
)

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case
    from vfio_scenario.language.loader import Document

OnEvent = Callable[[dict[str, Any]], None]

DEFAULT_VM_MIB = 4096  # a single testbed VM's memory (Testbed's default)
# the guest reserves one 1 GiB and 64 2 MiB huge pages at boot (qemu.py's command
# line), and its engine, page cache and a case's buffers need room beside them
MIN_VM_MIB = 2048
HOST_RESERVE_MIB = 2048  # left to the host: QEMU's own memory, the host engine
STEP_SECONDS = 0.02  # an estimated step, without a previous run's durations


# --- memory --------------------------------------------------------------------------

def mem_available_mib(meminfo: str | None = None) -> int:
    """MemAvailable of /proc/meminfo (or of `meminfo`, its text), in MiB."""
    if meminfo is None:
        with open("/proc/meminfo") as f:
            meminfo = f.read()
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) // 1024
    raise EnvironmentProblem("/proc/meminfo has no MemAvailable line")


def vm_memory_mib(jobs: int, available_mib: int) -> int:
    """Guest memory per VM so that `jobs` VMs fit: the host's available memory less
    HOST_RESERVE_MIB, shared out, in 256 MiB steps, at most DEFAULT_VM_MIB;
    EnvironmentProblem (with the figures) when that is below MIN_VM_MIB."""
    share = (available_mib - HOST_RESERVE_MIB) // jobs // 256 * 256
    if share < MIN_VM_MIB:
        fit = max(0, (available_mib - HOST_RESERVE_MIB) // MIN_VM_MIB)
        raise EnvironmentProblem(
            f"--jobs {jobs}: {jobs} testbed VMs of at least {MIN_VM_MIB} MiB do not fit in "
            f"this host's {available_mib} MiB available memory (less {HOST_RESERVE_MIB} MiB "
            f"kept for the host); at most {fit} fit")
    return min(DEFAULT_VM_MIB, share)


# --- the queue -----------------------------------------------------------------------

def estimate_seconds(case: Case) -> float:
    """A case's expected time without a previous run: STEP_SECONDS per step executed
    (its `repeat` counted) plus the seconds of its `sleep` steps."""
    total = 0.0
    for step in flat_steps((*case.steps, *case.teardown)):
        repeat = int(getattr(step.common, "repeat", 1) or 1)
        sleep = float(getattr(step.args, "duration", 0.0) or 0.0) if step.op == "sleep" else 0.0
        total += repeat * (STEP_SECONDS + sleep)
    return total


def expected_seconds(cases: Sequence[Case], durations: dict[str, float]) -> dict[str, float]:
    """Each case's expected seconds: its duration in `durations` (a previous run; one it
    lacks expects the median of the known ones), or estimate_seconds without any."""
    from vfio_scenario.select import expected_times

    ids = [c.id for c in cases]
    if not durations:
        return {c.id: estimate_seconds(c) for c in cases}
    return dict(zip(ids, expected_times(ids, durations), strict=True))


def longest_first(cases: Sequence[Case], expected: dict[str, float]) -> list[Case]:
    """`cases` longest expected first; equal ones in their run order."""
    return sorted(cases, key=lambda c: -expected.get(c.id, 0.0))


class CaseQueue:
    """The run's one queue, shared by the VMs' workers (thread-safe)."""

    def __init__(self, items: Iterable[Case]) -> None:
        self._items: deque[Case] = deque(items)
        self._lock = threading.Lock()
        self._stopped = False

    def take(self) -> Case | None:
        """The next case, or None when the queue is empty or stopped."""
        with self._lock:
            if self._stopped or not self._items:
                return None
            return self._items.popleft()

    def put_back(self, cases: Sequence[Case]) -> None:
        """Cases handed out that never started (their VM crashed first): next in line."""
        with self._lock:
            self._items.extendleft(reversed(cases))

    def stop(self) -> None:
        """Hand out nothing more (--fail-fast after a failure, an error, an interrupt)."""
        with self._lock:
            self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def __len__(self) -> int:
        return len(self._items)


# --- the workers ---------------------------------------------------------------------

@dataclass
class Shared:
    """What the workers of one run share."""

    queue: CaseQueue
    index: dict[str, int]  # case id → its index in the payload
    argv: list[str]
    workdir: str
    idle_timeout: float
    fail_fast: bool
    replace: Callable[[], Any] | None = None
    events: Queue[tuple[str, Any]] = field(default_factory=Queue)
    abort: threading.Event = field(default_factory=threading.Event)
    reboots: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, event: dict[str, Any]) -> None:
        self.events.put(("event", event))

    def count_reboot(self, exc: Exception) -> None:
        with self.lock:
            self.reboots += 1
            if self.reboots > MAX_REBOOTS:
                raise EnvironmentProblem(f"testbed failed {self.reboots} times; giving up: "
                                         f"{exc}") from None


def _failed(event: dict[str, Any]) -> bool:
    outcome = event.get("result", {}).get("outcome")
    return outcome in (Outcome.FAIL.value, Outcome.ERROR.value)


@dataclass
class _EngineState:
    """What one run of the guest engine in one VM has got to."""

    sent: list[Case] = field(default_factory=list)  # handed to the engine, no result yet
    current: Case | None = None  # started, no result yet
    started: float = field(default_factory=time.time)
    finished: bool = False
    fatal: str | None = None


class Worker(threading.Thread):
    """Serves one VM: runs the guest engine in it and hands it cases from the queue."""

    def __init__(self, number: int, testbed: Any, shared: Shared,
                 by_id: dict[str, Case]) -> None:
        super().__init__(name=f"vfio-scenario-vm{number}", daemon=True)
        self.number = number
        self.testbed = testbed
        self.shared = shared
        self.by_id = by_id

    def run(self) -> None:
        try:
            while not self._engine_once():
                pass
        except BaseException as exc:  # noqa: BLE001 - the caller's thread raises it
            self.shared.queue.stop()
            self.shared.events.put(("error", exc))
        finally:
            self.shared.events.put(("end", self))

    def _engine_once(self) -> bool:
        """One run of the guest engine; True when it finished, False after a crash
        (the VM rebooted: run it again)."""
        from vfio_scenario.testbed import GuestCrashed, GuestHung

        shared = self.shared
        stream = self.testbed.stream(shared.argv, idle_timeout=shared.idle_timeout,
                                     cwd=shared.workdir, stdin=True)
        state = _EngineState()
        try:
            for line in stream:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the guest's Python printing something else; not an event
                if isinstance(event, dict):
                    self._on_event(event, stream, state)
        except (GuestCrashed, GuestHung) as exc:
            if shared.abort.is_set():
                return True  # stopped by the caller (an interrupt): no reboot
            self._crashed(exc, state)
            return False
        if state.fatal is not None:
            raise EnvironmentProblem(f"the run in the testbed failed: {state.fatal}")
        if state.finished and state.sent:
            raise EnvironmentProblem(
                "the guest engine got no case from the host: the testbed's agent does not "
                "pass input to commands (a `testbed up` VM booted by an older checkout?); "
                "restart it: vfio-scenario testbed down && vfio-scenario testbed up")
        if state.finished:
            return True
        status = getattr(stream, "returncode", None)
        stderr = (getattr(stream, "stderr", "") or "").strip()
        raise EnvironmentProblem(
            f"the engine in testbed VM {self.number} stopped without finishing (exit status "
            f"{status})" + (f":\n{stderr[-3000:]}" if stderr else ""))

    def _on_event(self, event: dict[str, Any], stream: Any, state: _EngineState) -> None:
        kind = event.get("event")
        if kind == "ready":
            self._hand_out(stream, state.sent)
            return
        if kind == "start":
            state.current = self.by_id.get(event.get("id", ""))
            state.started = time.time()
        elif kind == "result":
            done = event["result"]["case_id"]
            state.sent = [c for c in state.sent if c.id != done]
            if state.current is not None and state.current.id == done:
                state.current = None
            if self.shared.fail_fast and _failed(event):
                self.shared.queue.stop()
        elif kind == "fatal":
            state.fatal = str(event.get("message", "guest failed"))
        elif kind == "done":
            state.finished = True
        self.shared.post(event)

    def _hand_out(self, stream: Any, sent: list[Case]) -> None:
        case = None if self.shared.abort.is_set() else self.shared.queue.take()
        if case is None:
            stream.close_input()
            return
        sent.append(case)
        stream.send_input(f"{self.shared.index[case.id]}\n")

    def _crashed(self, exc: Exception, state: _EngineState) -> None:
        from vfio_scenario.testbed import GuestCrashed, VmStopped

        shared = self.shared
        current = state.current
        unstarted = [c for c in state.sent if c is not current]
        what = ("the testbed VM was stopped" if isinstance(exc, VmStopped) else
                "guest kernel crashed" if isinstance(exc, GuestCrashed) else
                "guest stopped answering")
        console = getattr(exc, "console_tail", "") or ""
        if current is not None:
            shared.post({"event": "result", "result": crashed_result(
                current, f"{what} while the case ran: {exc}", console,
                state.started).to_dict()})
            if shared.fail_fast:
                shared.queue.stop()
        shared.queue.put_back(unstarted)
        shared.count_reboot(exc)
        shared.post({"event": "warning",
                     "message": f"testbed VM {self.number}: {what}; rebooting it"})
        if shared.replace is not None:
            self.testbed = shared.replace()
        else:
            self.testbed.reboot()


# --- the run -------------------------------------------------------------------------

def boot_testbeds(make: Callable[[], Any], jobs: int) -> tuple[list[Any], Callable[[], None]]:
    """`jobs` testbeds from `make()` (not started), prepared one after the other (a
    kernel build or download happens once), then booted in parallel; on a failure
    the ones that booted are stopped and the first error is raised.

    Returns the testbeds and `release`, to call once they are stopped: each QEMU is
    started by a thread that lives until then, as QEMU gets SIGKILL when the thread
    that started it ends (PR_SET_PDEATHSIG follows the thread, not the process)."""
    from vfio_scenario.testbed.vm import _install_handlers

    # QEMU is ended on SIGTERM/SIGHUP by handlers only the main thread can install
    _install_handlers()
    testbeds = [make() for _ in range(jobs)]
    for testbed in testbeds:
        testbed.prepare()
    errors: list[BaseException] = []
    booted = threading.Semaphore(0)
    release = threading.Event()

    def keep(testbed: Any) -> None:
        try:
            testbed.start()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)
        finally:
            booted.release()
        release.wait()

    for testbed in testbeds:
        threading.Thread(target=keep, args=(testbed,), name="vfio-scenario-boot",
                         daemon=True).start()
    for _ in testbeds:
        booted.acquire()
    if errors:
        for testbed in testbeds:
            testbed.stop()
        release.set()
        raise errors[0]
    return testbeds, release.set


def run_in_testbeds(testbeds: list[Any], cases: list[Case], documents: list[Document],
                    on_event: OnEvent, *, devices: list[str], iommu_modes: list[str],
                    timeout_multiplier: float, fail_fast: bool,
                    durations: dict[str, float] | None = None,
                    replace: Callable[[], Any] | None = None,
                    reselect: Callable[[list[Case]], list[Case]] | None = None,
                    kernel_watch: bool = True) -> None:
    """Run `cases` on the started `testbeds`, calling `on_event` (in this thread) with
    every guest event, as run_in_testbed does for one VM."""
    from vfio_scenario.drivers.base import driver_entry_points
    from vfio_scenario.run import payload, zygote
    from vfio_scenario.testbed.paths import sub_dir

    first = testbeds[0]
    workdir = str(sub_dir("run", "payloads"))
    drivers = driver_entry_points()
    # each VM's warm engine (started if it has none) warms up while we compile
    warm, begin = zygote.start_request(workdir, drivers)
    for testbed in testbeds[0 if devices else 1:]:
        zygote.start_in(testbed, begin, GUEST_START)
    bdfs = devices or guest_vfio_devices(first, GUEST_START, begin)
    named = guest_driver_facts(first, bdfs, drivers, warm=warm) \
        if needs_driver_facts(cases) else bdfs
    remaining = compile_for_guest(list(cases), documents, named, reselect)
    on_event({"event": "plan", "ids": [c.id for c in remaining]})
    if not remaining:
        return
    # the guest engine stops on a failure itself with fail_fast (its result then comes
    # before it asks for the next case); the host stops the queue for the other VMs
    header = payload.Header(devices=bdfs, drivers=drivers, iommu_modes=list(iommu_modes),
                            timeout_multiplier=timeout_multiplier, fail_fast=fail_fast,
                            kernel_watch=kernel_watch)
    payload_file = payload.write(workdir, header, remaining)
    longest = max(c.timeout for c in remaining) * timeout_multiplier
    order = longest_first(remaining, expected_seconds(remaining, durations or {}))
    shared = Shared(queue=CaseQueue(order),
                    index={c.id: i for i, c in enumerate(remaining)},
                    argv=zygote.guest_argv(payload_file, queue=True),
                    workdir=workdir, idle_timeout=longest + GUEST_START, fail_fast=fail_fast,
                    replace=replace)
    try:
        drive(shared, testbeds, {c.id: c for c in remaining}, on_event)
    finally:
        os.unlink(payload_file)


def drive(shared: Shared, testbeds: list[Any], by_id: dict[str, Case],
          on_event: OnEvent) -> None:
    """Start one worker per testbed and pass their events to `on_event` until all are
    done; the first worker error is raised then. An exception here (an interrupt)
    stops the queue and the VMs, then propagates."""
    workers = [Worker(n, t, shared, by_id) for n, t in enumerate(testbeds, start=1)]
    for worker in workers:
        worker.start()
    errors: list[BaseException] = []
    running = len(workers)
    try:
        while running:
            kind, item = shared.events.get()
            if kind == "event":
                on_event(item)
            elif kind == "error":
                errors.append(item)
            else:
                running -= 1
    except BaseException:
        shared.abort.set()
        shared.queue.stop()
        for worker in workers:
            worker.testbed.stop()
        for worker in workers:
            worker.join(10)
        raise
    if errors:
        raise errors[0]

