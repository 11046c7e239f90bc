"""What a case costs the engine outside its own steps (benchmarks/guest_costs.py measures
it in the testbed): a case's steps walked once for the planner and the case's process, a
result sent with the next case's start in one write."""

from __future__ import annotations

import gc
import pickle
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.language import cases as cases_module
from vfio_scenario.language.cases import Case, Step
from vfio_scenario.results import CaseResult, Outcome, StepResult
from vfio_scenario.run import guest, guest_models, payload, plan
from vfio_scenario.run.ops import host
from vfio_scenario.run.plan import HostCaps, step_facts

from tests.helpers.scenarios import compile_text

LOOPED = """
    name: looped
    steps:
      - open_iommu: {mode: iommufd}
        as: i
      - for: {var: n, from: 0, below: 50}
        steps:
          - sleep: {duration: 0}
      - open_iommu: {mode: vfio_type1v2_iommu}
        as: j
      - open_device: {iommu: i, bdf: "0000:00:03.0"}
        as: dev
    teardown:
      - expect_no_iommu_fault: {device: dev, access: read}
"""


def _counting(walks: list[int]) -> Any:
    real = cases_module.flat_steps

    def flat_steps(steps: Iterable[Step]) -> Iterator[Step]:
        walks.append(1)
        return real(steps)
    return flat_steps


def _walks_to_plan_and_ask(monkeypatch: pytest.MonkeyPatch, case: Case) -> int:
    """Plan LOOPED's case (a step opens a mode the host lacks: its skip) and ask whether
    it reads IOMMU faults (in its teardown), as its process does; the walks over its
    steps that took."""
    walks: list[int] = []
    monkeypatch.setattr(plan, "flat_steps", _counting(walks))
    monkeypatch.setattr(host, "flat_steps", _counting(walks), raising=False)
    caps = HostCaps(iommu_modes={"iommufd": None, "vfio_type1v2_iommu": "no container"})
    (planned,) = plan.plan([case], caps)
    assert planned.skip == ("IOMMU mode vfio_type1v2_iommu (opened at scen/x.yaml:9:5) "
                            "unavailable: no container")
    assert host.reads_faults(case)
    return len(walks)


def test_planning_and_the_case_process_walk_a_cases_steps_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The iommufd ports unroll loops into thousands of steps: the planner (a mode a step
    opens) and the case's process (whether a step reads IOMMU faults, host.begin_case)
    used to walk them each, milliseconds per case under TCG; now one walk serves both."""
    (case,) = compile_text(LOOPED)
    assert _walks_to_plan_and_ask(monkeypatch, case) == 1


def test_step_facts_are_those_of_the_case_asked_about() -> None:
    """The facts are kept by the case's id with the case itself: an object that gets the
    id of a case that has gone is never answered with that case's facts."""
    (looped,) = compile_text(LOOPED)
    facts = step_facts(looped)
    assert facts.ops == {"open_iommu", "sleep", "open_device", "expect_no_iommu_fault"}
    assert [mode for mode, _ in facts.named_modes] == ["vfio_type1v2_iommu"]
    assert not facts.needs_send_msi
    (plain,) = compile_text("""
        name: plain
        steps:
          - sleep: {duration: 0}
    """)
    plan._facts[id(plain)] = (weakref.ref(looped), facts)  # as if `plain` reused its id
    assert step_facts(plain).ops == {"sleep"}
    assert not host.reads_faults(plain)
    del plan._facts[id(plain)]


def test_step_facts_keep_no_case_alive() -> None:
    """A long-lived process (the host's `--device` run, a test session) that planned a
    case does not keep it: the facts hold a weak reference."""
    (case,) = compile_text(LOOPED)
    step_facts(case)
    gone = weakref.ref(case)
    del case
    gc.collect()
    assert gone() is None


class _Stdout:
    """sys.stdout as the host's channel sees it: what reaches it at each flush."""

    def __init__(self) -> None:
        self.buffer = ""
        self.sent: list[str] = []

    def write(self, text: str) -> int:
        self.buffer += text
        return len(text)

    def flush(self) -> None:
        if self.buffer:
            self.sent.append(self.buffer)
            self.buffer = ""


def test_a_result_goes_out_with_the_next_cases_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """One write (a system call and a wake-up of the host's reader) per case instead of
    two: the result waits in stdout's buffer for the event that follows it, which the run
    sends right after it (the next `start`, or the run's end)."""
    out = _Stdout()
    monkeypatch.setattr("sys.stdout", out)
    result = CaseResult(case_id="a", file="f", scenario="a", outcome=Outcome.PASS,
                        steps=[StepResult(index=0, op="sleep", name="sleep", location="f:1",
                                          outcome=Outcome.PASS)])
    guest.emit({"event": "start", "id": "a"})
    guest.emit({"event": "result", "result": result.to_dict()})
    assert len(out.sent) == 1
    guest.emit({"event": "start", "id": "b"})
    guest.emit({"event": "result", "result": result.to_dict()})
    guest.emit({"event": "done"})
    assert [text.count("\n") for text in out.sent] == [1, 2, 2]
    assert out.sent[1].startswith('{"event": "result"') and '"id": "b"' in out.sent[1]


def test_results_round_trip_and_refuse_an_unknown_outcome() -> None:
    step = StepResult(index=0, op="sleep", name="sleep", location="f:1", outcome=Outcome.FAIL,
                      message="m")
    result = CaseResult(case_id="a", file="f", scenario="a", outcome=Outcome.ERROR,
                        steps=[step], log="l")
    again = CaseResult.from_dict(result.to_dict())
    assert again == result and again.outcome is Outcome.ERROR
    assert again.steps[0].outcome is Outcome.FAIL
    with pytest.raises(ValueError):
        StepResult.from_dict({**step.to_dict(), "outcome": "maybe"})


def test_the_payload_carries_each_cases_step_facts(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """The host finds the facts as it writes the payload; the guest's run process, reading
    it before it forks any case, keeps them: neither planning nor a case process walks a
    step, and the facts are what a walk in the guest would find."""
    (case,) = compile_text(LOOPED)
    path = payload.write(str(tmp_path), payload.Header(devices=[], drivers={}), [case])
    with open(path, "rb") as f:
        header = payload.read_header(f)
        (guest_case,) = payload.read_cases(f, guest_models.build(header.models,
                                                                  header.models_code))
    kept = plan._facts[id(guest_case)][1]
    assert kept == plan.find_step_facts(guest_case) == plan.find_step_facts(case)
    assert _walks_to_plan_and_ask(monkeypatch, guest_case) == 0
    del plan._facts[id(guest_case)]


def test_a_payload_whose_step_facts_do_not_fit_its_cases_is_refused(tmp_path: Path) -> None:
    (case,) = compile_text(LOOPED)
    path = Path(payload.write(str(tmp_path), payload.Header(devices=[], drivers={}),
                              [case, case]))
    data = path.read_bytes()
    with open(path, "rb") as f:
        header = payload.read_header(f)
        models = guest_models.build(header.models, header.models_code)
        start = f.tell()
        payload._Unpickler(f, models).load()
        cut = f.tell()
    path.write_bytes(data[:cut] + pickle.dumps([plan.find_step_facts(case).to_plain()]))
    with open(path, "rb") as f:
        payload.read_header(f)
        assert f.tell() == start
        with pytest.raises(EnvironmentProblem, match="not one per case"):
            payload.read_cases(f, models)
