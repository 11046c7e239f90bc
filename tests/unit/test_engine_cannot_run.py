"""A case the engine cannot run is that case's error, never the end of the run.

Validation refuses NaN and infinite durations; these tests hand the executor such a case
anyway (as a compiled case from an older engine, or a bug, could) and check that the run
goes on with the next case.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.results import Outcome
from vfio_scenario.run import session
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.plan import HostCaps, PlannedCase

from tests.helpers.scenarios import compile_text

TWO = """
- name: first
  steps:
    - assert_not_tainted: {}
- name: second
  steps:
    - assert_not_tainted: {}
"""


def _cases() -> list[Case]:
    return compile_text(TWO, "scen/two.yaml")


def _ops() -> dict[str, Any]:
    return {"assert_not_tainted": lambda rt, args, step: None}


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_case_time_limit_select_cannot_take_is_that_cases_error(timeout: float) -> None:
    case = dataclasses.replace(_cases()[0], timeout=timeout)
    result = execute_case(case, [], _ops(), RunOptions())
    assert result.outcome is Outcome.ERROR
    assert result.message == ("the engine could not run this case: its time limit is not a "
                              f"finite positive number of seconds ({timeout!r} × multiplier 1.0)")


def test_a_nan_multiplier_is_each_cases_error_too() -> None:
    result = execute_case(_cases()[0], [], _ops(), RunOptions(timeout_multiplier=float("nan")))
    assert result.outcome is Outcome.ERROR
    assert "× multiplier nan" in result.message


def test_the_run_goes_on_after_a_case_the_engine_failed_to_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _cases()
    real = execute_case  # what session calls

    def execute(case: Case, *args: Any) -> Any:
        if case.scenario == "first":
            raise ValueError("Invalid value NaN (not a number)")  # what select() raised
        return real(case, *args)
    monkeypatch.setattr(session, "execute_case", execute)
    monkeypatch.setattr("vfio_scenario.run.ops.operations", _ops)
    events: list[dict[str, Any]] = []
    session.run_planned([PlannedCase(first, []), PlannedCase(second, [])], HostCaps(),
                        RunOptions(), events.append)
    results = [e["result"] for e in events if e["event"] == "result"]
    assert [(r["case_id"], r["outcome"]) for r in results] == [
        ("scen/two.yaml::first", "error"), ("scen/two.yaml::second", "pass")]
    assert results[0]["message"] == ("the engine could not run this case: ValueError: "
                                     "Invalid value NaN (not a number)")
