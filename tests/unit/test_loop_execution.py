"""How the steps inside a `for` loop run (interpreter._run_inner): a step run once
without a timeout takes a path of its own, with no StepResult unless it fails. Its
outcome, the handle it makes and a failure's result must be those run_step gives the
same step outside a loop, the failing iteration named with its variable's value and
the step's location."""

from __future__ import annotations

import errno
import signal
from typing import Any

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.results import Outcome, StepResult
from vfio_scenario.run.interpreter import CheckFailed, Runtime, run_case
from vfio_scenario.uapi.mmio import AccessFault

from tests.helpers.scenarios import compile_text


def behave(how: str) -> None:
    if how == "einval":
        raise VfioError(errno.EINVAL, "ioctl", "fake")
    if how == "check":
        raise CheckFailed("value differs")
    if how == "empty-check":
        raise CheckFailed("")
    if how == "sigbus":
        raise AccessFault(signal.SIGBUS, "read", "bar0", 0x10)
    if how == "bug":
        raise RuntimeError("bug in an operation")


HOWS = {0.001: "ok", 0.002: "einval", 0.003: "check", 0.004: "sigbus", 0.005: "bug",
        0.006: "empty-check"}


class Ops:
    """`sleep` behaves as HOWS says of its duration; `alloc_buffer` makes a handle that
    `fill` reads back."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def ops(self) -> dict[str, Any]:
        def sleep(rt: Runtime, args: Any, step: Any) -> None:
            self.calls.append(args.duration)
            behave(HOWS.get(args.duration, "ok"))

        def alloc_buffer(rt: Runtime, args: Any, step: Any) -> object:
            return f"buffer of {args.size}"

        def fill(rt: Runtime, args: Any, step: Any) -> None:
            self.calls.append(rt.handle(args.buffer))

        return {"sleep": sleep, "alloc_buffer": alloc_buffer, "fill": fill}


def alone(duration: float, expect: str) -> StepResult:
    """The result of the step run outside a loop (run_step's)."""
    (case,) = compile_text(f"""
        name: one
        requires: {{devices: 0}}
        steps:
          - sleep: {{duration: {duration * 1000:g}ms}}
            expect: "{{{{ {expect} }}}}"
    """)
    return run_case(case, [], Ops().ops()).steps[0]


@pytest.mark.parametrize("expect", ["'ok'", "'EINVAL'", "['EINVAL', 'SIGBUS']"])
@pytest.mark.parametrize("duration", sorted(HOWS))
def test_a_step_in_a_loop_has_the_outcome_and_result_run_step_gives(duration: float,
                                                                    expect: str) -> None:
    (case,) = compile_text(f"""
        name: l
        requires: {{devices: 0}}
        steps:
          - for: {{var: k, from: 7, to: 9}}
            steps:
              - sleep: {{duration: "{{{{ {duration * 1000:g} if k == 8 else 1 }}}}ms"}}
                expect: "{{{{ {expect} if k == 8 else 'ok' }}}}"
    """)
    ops = Ops()
    result = run_case(case, [], ops.ops())
    want = alone(duration, expect)
    loop = result.steps[0]
    assert loop.outcome is want.outcome
    if want.outcome is Outcome.PASS:
        assert (loop.actual, loop.message, ops.calls) == ("ok", "3 iterations",
                                                          [0.001, duration, 0.001])
        return
    assert ops.calls == [0.001, duration]  # the failing iteration ends the loop
    assert loop.actual == want.actual
    assert loop.message == (f"iteration 2 of 3 (k = 8): step `sleep` (scen/x.yaml:7): "
                            f"{want.message}")
    assert result.message == f"step 1 `for k` (scen/x.yaml:5): {loop.message}"


def test_a_handle_made_in_a_loop_is_there_for_the_next_steps_and_after_it() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: k, from: 1, to: 2}
            steps:
              - alloc_buffer: {size: "{{ k }}KiB"}
                as: "b{{ k }}"
              - fill: {buffer: "b{{ k }}", pattern: 0}
          - fill: {buffer: b1, pattern: 0}
    """)
    ops = Ops()
    result = run_case(case, [], ops.ops())
    assert result.outcome is Outcome.PASS, result.message
    assert ops.calls == ["buffer of 1024", "buffer of 2048", "buffer of 1024"]


def test_an_expected_errno_makes_no_handle() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: k, from: 1, to: 1}
            steps:
              - alloc_buffer: {size: 1KiB}
                as: b
                expect: EINVAL
    """)
    result = run_case(case, [], Ops().ops())
    # the op made a buffer where EINVAL was expected: the loop fails, as run_step says
    assert result.steps[0].outcome is Outcome.FAIL
    assert result.steps[0].message.endswith("expected EINVAL, got ok")


def test_a_nested_loop_names_the_inner_iteration_and_its_value() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: i, from: 0, below: 3}
            steps:
              - for: {var: j, from: 0, below: 4}
                steps:
                  - sleep: {duration: "{{ 3 if (i, j) == (2, 1) else 1 }}ms"}
    """)
    result = run_case(case, [], Ops().ops())
    assert result.outcome is Outcome.FAIL
    assert result.steps[0].message == (
        "iteration 3 of 3 (i = 2): step `for j` (scen/x.yaml:7): iteration 2 of 4 (j = 1): "
        "step `sleep` (scen/x.yaml:9): value differs")


def test_a_step_with_repeat_or_a_timeout_in_a_loop_runs_as_run_step_runs_it() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: i, from: 0, below: 2}
            steps:
              - sleep: {duration: 1ms}
                repeat: 3
              - sleep: {duration: "{{ 2 if i else 1 }}ms"}
                timeout: 10s
    """)
    ops = Ops()
    result = run_case(case, [], ops.ops())
    assert ops.calls == [0.001] * 4 + [0.001] * 3 + [0.002]
    assert result.steps[0].message == ("iteration 2 of 2 (i = 1): step `sleep` "
                                       "(scen/x.yaml:9): ioctl on fake failed with EINVAL "
                                       "(Invalid argument)")
