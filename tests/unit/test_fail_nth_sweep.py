"""The fail-nth sweep (run/failnth.py) against a fake kernel: fail-nth counts the fault
sites the task passes after the arm, the nth refuses with ENOMEM. What the real kernel
answers is scenarios/kselftest/iommufd_fail_nth.yaml's, in the testbed."""

from __future__ import annotations

import errno
import os
import textwrap
from typing import Any

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.results import Outcome
from vfio_scenario.run import failnth
from vfio_scenario.run.interpreter import CheckFailed, run_case
from vfio_scenario.run.ops import operations

from tests.helpers.scenarios import compile_text


class FakeKernel:
    def __init__(self) -> None:
        self.left = 0  # fail-nth's counter: 0 is disarmed
        self.reached = False

    def site(self, how: str = "errno") -> None:
        """A fault site: the nth one after the arm refuses."""
        if self.left:
            self.left -= 1
            if not self.left:
                self.reached = True
                if how == "errno":
                    raise VfioError(errno.ENOMEM, "ioctl", "fake")
                if how == "check":
                    raise CheckFailed("a wrong answer under injection")


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()

    def arm(self: failnth.Armed) -> None:
        if self.n:
            fake.left, fake.reached, self.fd = self.n, False, 0

    def disarm(self: failnth.Armed) -> bool | None:
        if self.fd < 0:
            return None
        self.fd = -1
        fake.left = 0
        return fake.reached

    monkeypatch.setattr(failnth.Armed, "arm", arm)
    monkeypatch.setattr(failnth.Armed, "disarm", disarm)
    monkeypatch.setattr(failnth, "setup_debugfs", lambda rt: None)
    return fake


def sweep(text: str, kernel: FakeKernel, sites: dict[str, int], how: str = "errno") -> Any:
    """Run the case with `sleep` as fault sites: a step named X passes sites[X] sites."""
    ops = dict(operations())

    def passes_sites(rt: Any, args: Any, step: Any) -> None:
        for _ in range(sites.get(step.label, 0)):
            kernel.site(how)
        if step.label == "refuses-while-armed" and kernel.left:
            raise VfioError(errno.EINVAL, "ioctl", "fake")

    ops["sleep"] = passes_sites
    case = compile_text(text, "scen/nth.yaml")[0]
    return run_case(case, [], ops)


BODY = """\
name: nth
requires: {devices: 0}
steps:
  - sleep: {duration: 0s}
    name: setup
  - fail_nth: {}
  - sleep: {duration: 0s}
    name: a
  - sleep: {duration: 0s}
    name: b
teardown:
  - sleep: {duration: 0s}
    name: check
"""


def test_the_sweep_runs_until_n_reaches_no_site_and_counts_the_refusals(kernel: FakeKernel) -> None:
    result = sweep(BODY, kernel, {"setup": 5, "a": 2, "b": 1})
    assert result.outcome is Outcome.PASS, result.message
    # the setup's sites are before the arm: not counted; n = 1..3 refused, n = 4 not reached
    note = next(s.message for s in result.steps if s.op == "fail_nth")
    assert note == ("swept n = 1 … 3: 3 runs ended by an injected errno (ENOMEM 3), 0 ran "
                    "through; n = 4 reached no fault site")
    assert [s.name for s in result.steps] == ["setup", "fail_nth", "a", "b", "check"]
    assert all(s.outcome is Outcome.PASS for s in result.steps)


def test_a_refusal_that_is_no_errno_fails_the_sweep_at_its_n(kernel: FakeKernel) -> None:
    result = sweep(BODY, kernel, {"a": 2, "b": 1}, how="check")
    assert result.outcome is Outcome.FAIL
    assert result.message == ("fail-nth 1: step 3 `a` (scen/nth.yaml:7): a wrong answer "
                              "under injection")


def test_a_failure_without_injection_fails_the_sweep_at_run_0(kernel: FakeKernel) -> None:
    text = BODY.replace("    name: b\n", "    name: b\n  - assert_locked_vm: {at_least: 1TiB}\n")
    result = sweep(text, kernel, {"a": 1})
    assert result.outcome is Outcome.FAIL
    assert result.message.startswith("fail-nth 0: step 5 `assert_locked_vm`")


def test_an_errno_the_injection_did_not_cause_fails_the_sweep(kernel: FakeKernel) -> None:
    # run 1 is refused at `a`'s site; in run 2 `b` refuses while the nth site is unreached
    result = sweep(BODY.replace("name: b", "name: refuses-while-armed"), kernel, {"a": 1})
    assert result.outcome is Outcome.FAIL
    assert result.message.startswith("fail-nth 2: step 4 `refuses-while-armed`")


def test_a_teardown_that_fails_after_a_refusal_fails_the_sweep(kernel: FakeKernel) -> None:
    text = BODY.replace("    name: check\n", "    name: check\n  - assert_locked_vm: {at_least: 1TiB}\n")
    result = sweep(text, kernel, {"a": 1})
    assert result.outcome is Outcome.FAIL
    assert result.message.startswith("fail-nth 0: teardown step 2 `assert_locked_vm`")


def test_the_sweep_stops_at_max(kernel: FakeKernel) -> None:
    result = sweep(BODY.replace("fail_nth: {}", "fail_nth: {max: 2}"), kernel, {"a": 5})
    assert result.outcome is Outcome.FAIL
    assert result.message == ("fail-nth still reached a fault site at n = 2: the sweep stops "
                              "at `max`")


def test_without_fault_injection_the_case_skips_saying_so() -> None:
    if os.path.isdir(f"{failnth.DEBUGFS}/failslab"):
        pytest.skip("this host has failslab: the real kernel's answer is the testbed's")
    result = run_case(compile_text(BODY, "scen/nth.yaml")[0], [], operations())
    assert result.outcome is Outcome.SKIP
    assert result.message.startswith("fault injection is not enabled in the kernel")


def errors_of(text: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent(text), "scen/nth.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


def test_one_fail_nth_per_case_and_none_in_teardown_or_a_child() -> None:
    twice = errors_of(BODY.replace("  - fail_nth: {}\n", "  - fail_nth: {}\n  - fail_nth: {}\n"))
    assert twice == [("scen/nth.yaml:7:5: a case sweeps one `fail_nth` step, of its body "
                     "(step 2 is one)")]
    late = errors_of(BODY + "  - fail_nth: {}\n")
    assert late == ["scen/nth.yaml:14:5: a case sweeps one `fail_nth` step, of its body"]
    child = errors_of(BODY.replace("  - fail_nth: {}\n",
                                   "  - fork: {}\n    as: c\n  - fail_nth: {}\n    process: c\n"))
    assert child == [("scen/nth.yaml:9:14: `fail_nth` runs in the case's process, not in a "
                     "forked child")]


# --- what a sweep does once (as the C program: its constructor, fail_nth_first) -----


def test_the_case_hooks_run_once_around_the_sweep(kernel: FakeKernel) -> None:
    ops = dict(operations())
    calls: list[str] = []

    def passes_sites(rt: Any, args: Any, step: Any) -> None:
        calls.append(step.label)
        for _ in range({"a": 2}.get(step.label, 0)):
            kernel.site()

    ops["sleep"] = passes_sites
    case = compile_text(BODY, "scen/nth.yaml")[0]
    result = run_case(case, [], ops, begin=lambda rt: calls.append("begin"),
                      end=lambda rt: calls.append("end"))
    assert result.outcome is Outcome.PASS, result.message
    # runs 0, 1 and 2 (ended at a), 3 (not reached): the hooks once, around them all
    assert calls == ["begin", "setup", "a", "b", "check", "setup", "a", "check",
                     "setup", "a", "check", "setup", "a", "b", "check", "end"]


def test_the_fail_nth_file_is_opened_once_and_read_back_per_run(tmp_path: Any,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    file = tmp_path / "fail-nth"
    file.write_text("0")
    monkeypatch.setattr(failnth, "FAIL_NTH", str(file))
    armed = failnth.Armed()
    assert armed.disarm() is None  # never armed
    armed.n = 3
    armed.arm()
    fd = armed.fd
    assert file.read_text() == "3"
    file.write_text("0")  # the kernel counted down to the nth site
    assert armed.disarm() is True
    assert file.read_text() == "0"
    armed.n = 4
    armed.arm()
    assert (armed.fd, file.read_text()) == (fd, "4")
    assert armed.disarm() is False  # the counter is still 4: the nth site was not reached
    assert armed.close() == []
    assert armed.fd == -1


def test_debugfs_is_set_once_for_the_sweep_and_set_back_at_its_end(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, kernel: FakeKernel) -> None:
    debugfs = tmp_path / "debug"
    for rel, value in {"failslab/ignore-gfp-wait": "Y", "failslab/verbose": "2",
                       "fail_iommufd/verbose": "1"}.items():
        (debugfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (debugfs / rel).write_text(value + "\n")
    (tmp_path / "fail-nth").write_text("0")
    monkeypatch.setattr(failnth, "DEBUGFS", str(debugfs))
    monkeypatch.setattr(failnth, "FAIL_NTH", str(tmp_path / "fail-nth"))

    monkeypatch.setattr(failnth, "setup_debugfs", SETUP_DEBUGFS)
    listed: list[str] = []
    listdir = os.listdir

    def spy(path: str) -> list[str]:
        listed.append(path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", spy)
    seen: list[tuple[str, str]] = []
    ops = dict(operations())

    def passes_sites(rt: Any, args: Any, step: Any) -> None:
        seen.append(((debugfs / "failslab/ignore-gfp-wait").read_text(),
                     (debugfs / "fail_iommufd/verbose").read_text()))
        for _ in range({"a": 1}.get(step.label, 0)):
            kernel.site()

    ops["sleep"] = passes_sites
    result = run_case(compile_text(BODY, "scen/nth.yaml")[0], [], ops)
    assert result.outcome is Outcome.PASS, result.message
    assert listed == [str(debugfs)]  # set up in run 0 only
    assert seen[0] == ("Y\n", "1\n")  # `setup` runs before the arm of run 0
    assert set(seen[1:]) == {("N", "0")}  # every step after it, in every run
    assert [(debugfs / r).read_text() for r in ("failslab/ignore-gfp-wait",
            "failslab/verbose", "fail_iommufd/verbose")] == ["Y", "2", "1"]


SETUP_DEBUGFS = failnth.setup_debugfs


# --- the buffers a sweep keeps from run to run (as the C program's, made once) ------

KEPT = """\
name: nth
requires: {devices: 0}
steps:
  - alloc_buffer: {size: 8KiB, backing: memfd}
    as: buf
  - fail_nth: {}
  - sleep: {duration: 0s}
    name: a
  - alloc_buffer: {size: 4KiB}
    as: late
teardown:
  - sleep: {duration: 0s}
    name: check
"""


def buffers_seen(text: str, kernel: FakeKernel) -> tuple[Any, list[tuple[Any, int, Any]]]:
    """Run the case; per run, the buffer `buf` step `a` finds (the object, its first byte
    then) and `late`'s object at the teardown. `a` writes 0x5a into `buf` and passes a
    fault site."""
    ops = dict(operations())
    seen: list[tuple[Any, int, Any]] = []

    def step(rt: Any, args: Any, step: Any) -> None:
        if step.label == "a":
            buf = rt.handle("buf")
            seen.append((buf, buf.mem[0], None))
            buf.mem[0] = 0x5A
            kernel.site()
        elif step.label == "check":
            seen[-1] = (*seen[-1][:2], rt.handles.get("late"))

    ops["sleep"] = step
    return run_case(compile_text(text, "scen/nth.yaml")[0], [], ops), seen


def test_a_buffer_made_before_the_arm_is_kept_and_closed_at_the_end(
        kernel: FakeKernel) -> None:
    result, seen = buffers_seen(KEPT, kernel)
    assert result.outcome is Outcome.PASS, result.message
    assert len(seen) == 3  # runs 0 and 2 pass whole, run 1 is refused at `a`
    kept = seen[0][0]
    assert all(buf is kept for buf, _, _ in seen)
    # with the bytes the earlier runs left, as the C program's buffers
    assert [first for _, first, _ in seen] == [0, 0x5A, 0x5A]
    assert kept.fd == -1  # closed when the sweep ended
    # the one after the arm is made afresh in each run that gets to it (runs 0 and 2)
    late = [made for _, _, made in seen if made is not None]
    assert len(late) == 2 and late[0] is not late[1]


def test_a_case_with_a_step_that_may_change_a_buffer_makes_its_buffers_afresh(
        kernel: FakeKernel) -> None:
    # `assert_pattern` compares the bytes with a pattern: not among the operations that
    # let the sweep keep a buffer (KEEPS_BUFFERS), nothing is kept
    assert "assert_pattern" not in failnth.KEEPS_BUFFERS
    text = KEPT.replace("  - fail_nth: {}\n", "  - assert_pattern: {buffer: buf, pattern: zero}"
                                             "\n  - fail_nth: {}\n")
    result, seen = buffers_seen(text, kernel)
    assert result.outcome is Outcome.PASS, result.message
    buffers = [buf for buf, _, _ in seen]
    assert len({id(b) for b in buffers}) == 3
    assert all(b.fd == -1 for b in buffers)  # each closed with its run


def test_a_case_with_a_loop_makes_its_buffers_afresh(kernel: FakeKernel) -> None:
    text = KEPT.replace("teardown:\n", "  - for: {var: i, from: 1, to: 2}\n"
                                       "    steps: [{alloc_buffer: {size: 4KiB, backing: memfd}}]"
                                       "\nteardown:\n")
    result, seen = buffers_seen(text, kernel)
    assert result.outcome is Outcome.PASS, result.message
    assert len({id(buf) for buf, _, _ in seen}) == 3


def test_every_step_of_the_iommufd_fail_nth_port_lets_the_sweep_keep_its_buffers() -> None:
    from vfio_scenario.language.cases import flat_steps
    from vfio_scenario.language.compile import compile_paths
    from vfio_scenario.language.models import OPERATIONS

    assert not failnth.KEEPS_BUFFERS - set(OPERATIONS)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    compiled = compile_paths([os.path.join(root, "scenarios", "kselftest",
                                           "iommufd_fail_nth.yaml")], [])
    assert compiled.errors == [] and len(compiled.cases) == 8
    for case in compiled.cases:
        ops = {s.op for s in flat_steps((*case.steps, *case.teardown))}
        assert ops <= failnth.KEEPS_BUFFERS, (case.id, ops - failnth.KEEPS_BUFFERS)


# --- a run's steps as the sweep runs them (prepared once) and as run_step does ------

OUTCOMES = """\
name: nth
requires: {devices: 0}
steps:
  - sleep: {duration: 0s}
    name: refused
    expect: EINVAL
  - sleep: {duration: 0s}
    name: noted
  - sleep: {duration: 0s}
    name: either
    expect: [ok, EINVAL]
  - sleep: {duration: 0s}
    name: twice
    repeat: 2
  - sleep: {duration: 0s}
    name: LAST
teardown:
  - sleep: {duration: 0s}
    name: check
"""


def outcome_ops() -> dict[str, Any]:
    ops = dict(operations())

    def step(rt: Any, args: Any, step: Any) -> None:
        if step.label in ("refused", "either"):
            raise VfioError(errno.EINVAL, "ioctl", "fake")
        if step.label == "noted":
            rt.note("it said so")
        if step.label == "boom":
            raise RuntimeError("a bug")
        if step.label == "wrong":
            raise CheckFailed("not what the step says")

    ops["sleep"] = step
    return ops


def plain_and_swept(text: str, kernel: FakeKernel, last: str = "LAST") -> tuple[Any, Any]:
    """The case run once as written (run_step) and swept with its `fail_nth` step as
    step `last` (nothing is reached after it: the sweep is runs 0 and 1)."""
    plain = run_case(compile_text(text, "scen/nth.yaml")[0], [], outcome_ops())
    swept_text = text.replace(f"  - sleep: {{duration: 0s}}\n    name: {last}\n",
                              f"  - fail_nth: {{}}\n    name: {last}\n")  # the same lines
    swept = run_case(compile_text(swept_text, "scen/nth.yaml")[0], [], outcome_ops())
    return plain, swept


def _steps(result: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.to_dict().items() if k != "duration"}
            for s in result.steps if s.op != "fail_nth"]


def test_a_swept_runs_steps_report_what_run_step_reports(kernel: FakeKernel) -> None:
    plain, swept = plain_and_swept(OUTCOMES, kernel)
    assert plain.outcome is Outcome.PASS and swept.outcome is Outcome.PASS, swept.message
    assert [s.op for s in swept.steps].count("fail_nth") == 1
    assert _steps(swept) == [s for s in _steps(plain) if s["name"] != "LAST"]
    got = {s["name"]: (s["actual"], s["message"]) for s in _steps(swept)}
    assert got["refused"] == ("EINVAL", "")
    assert got["noted"] == ("ok", "it said so")
    assert got["either"] == ("EINVAL", "")


def test_a_failure_in_a_swept_run_names_its_n_step_and_location(kernel: FakeKernel) -> None:
    for name, outcome, message in [
            ("boom", Outcome.ERROR, "RuntimeError: a bug"),
            ("wrong", Outcome.FAIL, "not what the step says")]:
        text = OUTCOMES.replace("    name: noted\n", f"    name: {name}\n")
        plain, swept = plain_and_swept(text, kernel)
        assert (plain.outcome, swept.outcome) == (outcome, outcome)
        assert plain.message == f"step 2 `{name}` (scen/nth.yaml:7): {message}"
        assert swept.message == f"fail-nth 0: {plain.message}"
        assert _steps(swept) == _steps(plain)  # the failed run's steps, the teardown's too
    # after the arm, in run 1: a wrong answer is no clean refusal
    text = OUTCOMES.replace("    name: check\n", "    name: check\n  - sleep: {duration: 0s}\n"
                            "    name: wrong\n")
    text = text.replace("    name: noted\n", "    name: noted\n  - fail_nth: {}\n  - sleep: "
                        "{duration: 0s}\n    name: a\n")
    ops = outcome_ops()
    inner = ops["sleep"]

    def with_site(rt: Any, args: Any, step: Any) -> None:
        if step.label == "a":
            kernel.site("check")
        inner(rt, args, step)

    ops["sleep"] = with_site
    result = run_case(compile_text(text, "scen/nth.yaml")[0], [], ops)
    assert result.outcome is Outcome.FAIL
    assert result.message.startswith("fail-nth 0: teardown step 2 `wrong` (scen/nth.yaml:")
