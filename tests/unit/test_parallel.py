"""`run --jobs N` (run/parallel.py): the queue, the workers, crashes, memory per VM.

The VMs are fakes that speak the guest engine's queue protocol (run/guest.py
`--queue`): they print "ready", take the index the host writes to their stdin, print
the case's start and result, and print "done" at end of input. What runs for real
in the testbed is tests/testbed/test_jobs.py.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.report.sink import ReportSink
from vfio_scenario.results import CaseResult, Outcome, RunResult
from vfio_scenario.run import guest_models, parallel, payload
from vfio_scenario.testbed import GuestCrashed
from vfio_scenario.testbed.testbed import CommandResult

SCENARIO = """\
name: s
matrix: {n: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
steps:
  - sleep: {duration: 0ms}
"""


def library(text: str = SCENARIO) -> list[Case]:
    doc, errors = load_text(textwrap.dedent(text), "scen/p.yaml")
    assert errors == []
    compiled = compile_documents([doc])
    assert compiled.errors == [], [str(e) for e in compiled.errors]
    return compiled.cases


class FakeStream:
    """The guest engine in queue mode, as one VM's command stream."""

    def __init__(self, vm: FakeVm, cases: list[Case]) -> None:
        self.vm = vm
        self.cases = cases
        self.inbox: list[str] = []
        self.closed = False
        self.returncode: int | None = None
        self.stderr = ""

    def send_input(self, text: str) -> None:
        self.inbox.append(text)

    def close_input(self) -> None:
        self.closed = True

    def _event(self, **event: Any) -> str:
        return json.dumps(event)

    def __iter__(self) -> Iterator[str]:
        vm = self.vm
        yield self._event(event="hello", properties={"kernel": "7.2"}, cases=len(self.cases))
        pending: CaseResult | None = None  # the kernel watch's deferred result
        while True:
            yield self._event(event="ready")
            if vm.ignores_input or self.closed:
                break
            assert len(self.inbox) == 1, "the host answers each ready with one case"
            case = self.cases[int(self.inbox.pop())]
            if vm.crash_before_start.pop(case.id, False):
                raise GuestCrashed("the guest kernel panicked", "Kernel panic - before start")
            if pending is not None:
                yield self._event(event="result", result=pending.to_dict())
                pending = None
            yield self._event(event="start", id=case.id)
            vm.ran.append(case.id)
            time.sleep(vm.seconds.get(case.id, 0.001))
            if vm.crash_on.pop(case.id, False):
                raise GuestCrashed("the guest kernel panicked", "Kernel panic - in case")
            outcome = vm.outcomes.get(case.id, Outcome.PASS)
            result = CaseResult(case_id=case.id, file=case.file, scenario=case.scenario,
                                outcome=outcome, params=dict(case.params),
                                properties={"vm": vm.name}, duration=0.001)
            if vm.defer:
                pending = result
            else:
                yield self._event(event="result", result=result.to_dict())
        if pending is not None:
            yield self._event(event="result", result=pending.to_dict())
        yield self._event(event="done")
        self.returncode = 0


class FakeVm:
    """A testbed whose guest engine is a FakeStream."""

    def __init__(self, name: str, cases: list[Case], *, defer: bool = False) -> None:
        self.name = name
        self.cases = cases
        self.defer = defer
        self.ran: list[str] = []
        self.seconds: dict[str, float] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.crash_on: dict[str, bool] = {}
        self.crash_before_start: dict[str, bool] = {}
        self.ignores_input = False
        self.reboots = 0
        self.stopped = False
        self.argv: list[str] = []

    def run(self, argv: list[str], timeout: float = 0) -> CommandResult:
        return CommandResult(0, "", "", 0.0)  # no VFIO device listed: cases as compiled

    accelerator = "tcg"
    kernel_release = "7.2"
    qemu_version = "10"
    vmlinux = None

    def stream(self, argv: list[str], idle_timeout: float, cwd: str | None = None,
               stdin: bool = False) -> FakeStream:
        assert stdin and argv[-1] == "--queue"
        self.argv = argv
        with open(argv[-2], "rb") as f:  # the payload: the cases the indices refer to
            header = payload.read_header(f)
            cases = payload.read_cases(f, guest_models.build(header.models))
        assert [c.id for c in cases] == [c.id for c in self.cases if c.id in
                                         {p.id for p in cases}]
        return FakeStream(self, cases)

    def reboot(self) -> None:
        self.reboots += 1

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def payload_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vfio_scenario.testbed import paths

    monkeypatch.setattr(paths, "sub_dir", lambda *parts: tmp_path)


def run_jobs(vms: list[FakeVm], cases: list[Case], *, fail_fast: bool = False,
             durations: dict[str, float] | None = None,
             sink: ReportSink | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    main = threading.current_thread()

    def on_event(event: dict[str, Any]) -> None:
        assert threading.current_thread() is main  # one console, one sink: one thread
        events.append(event)
        if sink is not None and event["event"] == "result":
            sink.add(CaseResult.from_dict(event["result"]))
        elif sink is not None and event["event"] == "plan":
            sink.replan(event["ids"])

    parallel.run_in_testbeds(vms, cases, [], on_event, devices=[], iommu_modes=[],
                             timeout_multiplier=1.0, fail_fast=fail_fast, durations=durations)
    return events


def results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["result"] for e in events if e["event"] == "result"]


# --- the queue -------------------------------------------------------------------------

def test_the_queue_hands_out_the_longest_expected_first_and_equal_ones_in_case_order() -> None:
    cases = library()
    expected = {c.id: float(i % 3) for i, c in enumerate(cases)}  # 0 1 2 0 1 2 …
    order = parallel.longest_first(cases, expected)
    assert [expected[c.id] for c in order] == [2.0] * 3 + [1.0] * 3 + [0.0] * 4
    assert [c.id for c in order[:3]] == [cases[2].id, cases[5].id, cases[8].id]
    queue = parallel.CaseQueue(order)
    assert [queue.take() for _ in range(2)] == order[:2]
    queue.put_back([order[0]])
    assert queue.take() is order[0] and queue.take() is order[2]
    queue.stop()
    assert queue.take() is None and len(queue) == 7


def test_expectations_come_from_the_previous_run_else_from_the_steps() -> None:
    cases = library("""\
        - name: short
          steps: [{sleep: {duration: 0ms}}]
        - name: long
          steps: [{sleep: {duration: 1500ms}}, {sleep: {duration: 0ms}, repeat: 10}]
        - name: new
          steps: [{sleep: {duration: 0ms}}]
        """)
    short, long, new = cases
    estimated = parallel.expected_seconds(cases, {})
    assert estimated[short.id] == pytest.approx(parallel.STEP_SECONDS)
    assert estimated[long.id] == pytest.approx(1.5 + 11 * parallel.STEP_SECONDS)
    # a previous run's durations win; a case it lacks expects their median
    previous = parallel.expected_seconds(cases, {short.id: 4.0, long.id: 2.0})
    assert previous == {short.id: 4.0, long.id: 2.0, new.id: 3.0}


@pytest.mark.parametrize(("available", "jobs", "mib"), [
    (23_000, 2, 4096),   # this machine: the default 4 GiB each
    (23_000, 8, 2560),   # (23000 - 2048) / 8 = 2619 → 2560 in 256 MiB steps
    (6_200, 2, 2048),
])
def test_memory_per_vm_shares_what_the_host_has_available(available: int, jobs: int,
                                                          mib: int) -> None:
    assert parallel.vm_memory_mib(jobs, available) == mib
    assert jobs * mib <= available - parallel.HOST_RESERVE_MIB


def test_too_many_vms_for_the_memory_is_an_error_with_the_figures() -> None:
    with pytest.raises(EnvironmentProblem, match=r"--jobs 3: .* 7000 MiB available .*"
                                                 r"at most 2 fit"):
        parallel.vm_memory_mib(3, 7000)


def test_mem_available_is_read_from_meminfo() -> None:
    text = "MemTotal:       24683784 kB\nMemFree: 1 kB\nMemAvailable:   23604144 kB\n"
    assert parallel.mem_available_mib(text) == 23604144 // 1024
    with pytest.raises(EnvironmentProblem, match="MemAvailable"):
        parallel.mem_available_mib("MemTotal: 1 kB\n")


# --- the workers -----------------------------------------------------------------------

@pytest.mark.parametrize("defer", [False, True])
def test_every_case_runs_once_on_some_vm_and_the_reports_keep_the_case_order(
        tmp_path: Path, defer: bool) -> None:
    cases = library()
    vms = [FakeVm("a", cases, defer=defer), FakeVm("b", cases, defer=defer)]
    for vm in vms:
        vm.seconds = {c.id: 0.01 for c in cases}
    sink = ReportSink(json_path=str(tmp_path / "run.json"), planned=[c.id for c in cases],
                      stream=open(tmp_path / "console", "w"))  # noqa: SIM115
    events = run_jobs(vms, cases, sink=sink)
    sink.close()
    assert sorted(vms[0].ran + vms[1].ran) == sorted(c.id for c in cases)
    assert vms[0].ran and vms[1].ran  # both VMs worked
    assert sorted(r["case_id"] for r in results(events)) == sorted(c.id for c in cases)
    # the payload is the run's cases in case order; the host sent their indices
    assert vms[0].argv[-2] == vms[1].argv[-2]
    report = json.loads((tmp_path / "run.json").read_text())
    assert [c["case_id"] for c in report["cases"]] == [c.id for c in cases]
    assert [c.case_id for c in sink.run.cases] == [c.id for c in cases]
    assert not Path(vms[0].argv[-2]).exists()  # the payload is removed afterwards


def test_the_longest_case_starts_first(tmp_path: Path) -> None:
    cases = library()
    vms = [FakeVm("a", cases), FakeVm("b", cases)]
    durations = {c.id: float(i) for i, c in enumerate(cases)}
    events = run_jobs(vms, cases, durations=durations)
    starts = [e["id"] for e in events if e["event"] == "start"]
    assert set(starts[:2]) == {cases[9].id, cases[8].id}


def test_a_crashed_vm_reboots_its_case_is_an_error_and_the_others_go_on() -> None:
    cases = library()
    vms = [FakeVm("a", cases), FakeVm("b", cases)]
    crashing = cases[4].id
    for vm in vms:
        vm.crash_on[crashing] = True
        vm.seconds = {c.id: 0.01 for c in cases}
    events = run_jobs(vms, cases)
    by_id = {r["case_id"]: r for r in results(events)}
    assert sorted(by_id) == sorted(c.id for c in cases)  # each case exactly once
    assert len(results(events)) == len(cases)
    crashed = by_id[crashing]
    assert crashed["outcome"] == Outcome.ERROR.value
    assert "guest kernel crashed while the case ran" in crashed["message"]
    assert "Kernel panic - in case" in crashed["log"]
    assert all(r["outcome"] == Outcome.PASS.value for k, r in by_id.items() if k != crashing)
    assert sum(vm.reboots for vm in vms) == 1
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "rebooting it" in warnings[0]


def test_a_case_handed_out_but_not_started_when_the_vm_crashed_runs_elsewhere() -> None:
    cases = library()
    vms = [FakeVm("a", cases, defer=True), FakeVm("b", cases, defer=True)]
    victim = cases[3].id
    once = {victim: True}  # whichever VM gets it first crashes, once
    vms[0].crash_before_start = vms[1].crash_before_start = once
    for vm in vms:
        vm.seconds = {c.id: 0.01 for c in cases}
    events = run_jobs(vms, cases)
    by_id = {r["case_id"]: r for r in results(events)}
    assert sorted(by_id) == sorted(c.id for c in cases)
    assert len(results(events)) == len(cases)
    assert once == {}  # it was handed out, and the VM crashed before it started
    assert by_id[victim]["outcome"] == Outcome.PASS.value  # it ran after the reboot
    # the case the crashed VM had finished (its result held back by the kernel watch)
    # is an ERROR, as with one VM
    errors = [k for k, r in by_id.items() if r["outcome"] == Outcome.ERROR.value]
    assert len(errors) == 1 and errors[0] != victim


def test_fail_fast_hands_out_nothing_after_the_first_failure() -> None:
    cases = library()
    vms = [FakeVm("a", cases), FakeVm("b", cases)]
    for vm in vms:
        vm.outcomes[cases[1].id] = Outcome.FAIL
        vm.seconds = {c.id: 0.02 for c in cases}
    events = run_jobs(vms, cases, fail_fast=True)
    ran = [r["case_id"] for r in results(events)]
    assert cases[1].id in ran
    # the failure stopped the queue: what ran is the two cases on the VMs then, and
    # at most the one the other VM had just been handed
    assert len(ran) <= 3
    assert ran.index(cases[1].id) >= 0


def test_too_many_reboots_end_the_run() -> None:
    cases = library()
    vms = [FakeVm("a", cases), FakeVm("b", cases)]
    for vm in vms:
        vm.crash_on = {c.id: True for c in cases}
    with pytest.raises(EnvironmentProblem, match="testbed failed 6 times; giving up"):
        run_jobs(vms, cases)


def test_an_agent_that_passes_no_input_is_a_clear_error() -> None:
    cases = library()
    vms = [FakeVm("a", cases), FakeVm("b", cases)]
    for vm in vms:
        vm.ignores_input = True
    with pytest.raises(EnvironmentProblem, match=r"agent does not pass input.*testbed down"):
        run_jobs(vms, cases)


def test_an_interrupt_stops_the_queue_and_the_vms() -> None:
    cases = library()
    vms = [FakeVm("a", cases), FakeVm("b", cases)]
    for vm in vms:
        vm.seconds = {c.id: 0.05 for c in cases}
    seen: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        seen.append(event["event"])
        if event["event"] == "start":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parallel.run_in_testbeds(vms, cases, [], on_event, devices=[], iommu_modes=[],
                                 timeout_multiplier=1.0, fail_fast=False)
    assert all(vm.stopped for vm in vms)
    assert len(vms[0].ran) + len(vms[1].ran) < len(cases)


def test_jobs_with_a_testbed_up_vm_says_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from vfio_scenario.errors import UsageError
    from vfio_scenario.run import dispatch
    from vfio_scenario.run.interpreter import RunOptions
    from vfio_scenario.testbed import persistent

    up = [1]  # `testbed up` started one VM
    monkeypatch.setattr(persistent, "up_vms", lambda: list(up))
    booted: list[int] = []
    monkeypatch.setattr(parallel, "boot_testbeds", lambda make, jobs: booted.append(jobs))
    attached: list[int] = []
    monkeypatch.setattr(persistent, "attach", lambda notify, number: attached.append(number))
    args = argparse.Namespace(jobs=2, kernel="default", accel="tcg", paths=["scen"],
                              iommu_mode=[], fail_fast=False)
    with pytest.raises(UsageError) as info:
        dispatch._run_testbed(library(), [], args, RunOptions(), lambda e: None, RunResult(), set(), {})
    assert str(info.value) == (
        "--jobs 2: 1 `testbed up` VM(s) run (number 1), this run needs VMs 1 to 2; start "
        "the missing ones with `vfio-scenario testbed up --jobs 2`, or run with --jobs 1, or "
        "stop them (`vfio-scenario testbed down`) and the run boots VMs of its own")
    up[:] = [1, 3]  # a gap: VM 2 went down
    args.jobs = 3
    with pytest.raises(UsageError) as info:
        dispatch._run_testbed(library(), [], args, RunOptions(), lambda e: None, RunResult(), set(), {})
    assert "2 `testbed up` VM(s) run (number 1, 3), this run needs VMs 1 to 3" in str(info.value)
    assert booted == [] and attached == []  # nothing booted, nothing taken


def test_resume_with_jobs_runs_only_what_the_journal_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --jobs 2 --resume` after a run killed half way, through run_command with
    two fake VMs: the journal's cases are not run again, the report holds all, in order."""
    from vfio_scenario.cli import build_parser
    from vfio_scenario.journal import Journal
    from vfio_scenario.run import dispatch
    from vfio_scenario.testbed import persistent

    scenario = tmp_path / "scen" / "p.yaml"
    scenario.parent.mkdir()
    scenario.write_text(SCENARIO)
    monkeypatch.chdir(tmp_path)
    ids = [c.id for c in library()]  # scen/p.yaml::s[n=0] …, as the run compiles them
    journal = Journal(tmp_path / "reports" / "journal.jsonl")
    for case_id in ids[:4]:  # what the killed run had finished
        journal.write_case(CaseResult(case_id=case_id, file="scen/p.yaml", scenario="s",
                                      outcome=Outcome.PASS, duration=0.5))
    journal.close()
    vms: list[FakeVm] = []

    def boot(make: Any, jobs: int) -> tuple[list[FakeVm], Any]:
        vms.extend(FakeVm(name, library()) for name in "ab"[:jobs])
        return list(vms), lambda: None

    monkeypatch.setattr(parallel, "boot_testbeds", boot)
    monkeypatch.setattr(parallel, "mem_available_mib", lambda: 23_000)
    monkeypatch.setattr(persistent, "up_vms", list)
    args = build_parser().parse_args(
        ["run", "scen", "--jobs", "2", "--resume", "--testbed", "always",
         "--junit-xml", "reports/junit.xml", "--json", "reports/run.json"])
    assert dispatch.run_command(args) == 0
    assert sorted(vms[0].ran + vms[1].ran) == sorted(ids[4:])
    report = json.loads((tmp_path / "reports" / "run.json").read_text())
    assert [c["case_id"] for c in report["cases"]] == ids


def test_the_guest_engine_takes_cases_as_the_host_hands_them_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    from vfio_scenario.run.guest import from_host

    cases = library()
    got = list(from_host(cases, iter(["2\n", "0\n"])))
    assert got == [cases[2], cases[0]]
    readies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert readies == [{"event": "ready"}] * 3  # one before each case, one before the end
    with pytest.raises(SystemExit, match="the host sent 'x', not a case of the payload"):
        list(from_host(cases, iter(["x\n"])))
    with pytest.raises(SystemExit, match="the host sent '10'"):
        list(from_host(cases, iter(["10\n"])))
