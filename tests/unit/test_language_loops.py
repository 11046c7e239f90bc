"""`for` steps (a loop over a value) and `when` (a step left out): how they compile, how
they are refused, and how they run. docs/language.md, "Loops and conditions"."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from vfio_scenario.cli import main
from vfio_scenario.language.cases import Case, flat_steps
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import MAX_ITERATIONS
from vfio_scenario.language.schema import json_schema
from vfio_scenario.results import Outcome
from vfio_scenario.run import guest_models, payload
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip, run_case
from vfio_scenario.run.parallel import estimate_seconds

from tests.helpers.scenarios import compile_text


def errors_of(text: str, path: str = "scen/l.yaml") -> list[str]:
    doc, errors = load_text(textwrap.dedent(text), path)
    assert errors == []
    return sorted(str(e) for e in compile_documents([doc]).errors)


def values(case: Case) -> list[tuple[str, Any]]:
    """(operation, its first argument's value) of every step as it runs."""
    out = []
    for step in flat_steps(case.steps):
        first = next(iter(type(step.args).model_fields))
        out.append((step.op, getattr(step.args, first)))
    return out


# --- what a loop compiles to --------------------------------------------------------


def test_to_includes_its_end_below_excludes_it_and_step_counts_as_c_does() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: a, from: 1, to: 3}
            steps: [{sleep: {duration: "{{ a }}ms"}}]
          - for: {var: b, from: 0, below: 10, step: 4}
            steps: [{sleep: {duration: "{{ b }}s"}}]
    """)
    loop_a, loop_b = case.steps
    assert [it.value for it in loop_a.body or ()] == [1, 2, 3]
    assert [it.value for it in loop_b.body or ()] == [0, 4, 8]
    assert [v for _, v in values(case)] == [0.001, 0.002, 0.003, 0.0, 4.0, 8.0]
    assert (loop_a.op, loop_a.label, loop_a.location.line) == ("for", "for a", 5)


def test_an_inner_range_may_use_the_outer_variable_and_may_be_empty() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: start, from: 0, below: 4}
            steps:
              - for: {var: end, from: "{{ start + 1 }}", below: 4}
                steps: [{sleep: {duration: "{{ end - start }}s"}}]
    """)
    (outer,) = case.steps
    assert [len(it.steps[0].body or ()) for it in outer.body or ()] == [3, 2, 1, 0]
    assert [v for _, v in values(case)] == [1.0, 2.0, 3.0, 1.0, 2.0, 1.0]


def test_when_false_leaves_the_step_out_per_case_and_per_iteration() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - sleep: {duration: 9s}
            when: false
          - for: {var: n, from: 0, below: 6}
            steps:
              - sleep: {duration: "{{ n }}s"}
                when: "{{ n % 2 == 0 }}"
          - for: {var: m, from: 0, below: 6}
            when: "{{ false }}"
            steps: [{sleep: {duration: 1s}}]
    """)
    assert [v for _, v in values(case)] == [0.0, 2.0, 4.0]
    assert len(case.steps) == 1


def test_a_handle_named_by_a_template_in_a_loop_is_one_handle_per_value() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: i, from: 0, below: 3}
            steps:
              - alloc_buffer: {size: 4KiB}
                as: "buf{{ i }}"
          - fill: {buffer: buf2, pattern: 1}
    """)
    assert [s.handle for s in flat_steps(case.steps)] == ["buf0", "buf1", "buf2", None]


def test_a_handle_of_a_left_out_step_is_not_defined() -> None:
    assert errors_of("""
        name: l
        requires: {devices: 0}
        steps:
          - alloc_buffer: {size: 4KiB}
            as: buf
            when: false
          - fill: {buffer: buf, pattern: 1}
    """) == ["scen/l.yaml:8:20: handle `buf` is not defined by an earlier step"]


# --- what is refused, where --------------------------------------------------------


@pytest.mark.parametrize(("loop", "error"), [
    ("{var: x, from: 0, to: 3, below: 4}", "5:10: give only one of `to` or `below`, not to and below"),
    ("{var: x, from: 0}", "5:10: one of `to` or `below` is required"),
    ("{var: x, from: 0, to: 3, step: 0}", "5:41: `step`: Input should be greater than or equal to 1"),
    ("{var: 1x, from: 0, to: 3}", "5:16: `var`: String should match pattern"),
    ("{var: x, from: -1, to: 3}", "5:25: `from`: a size cannot be negative: -1"),
    ("{var: x, from: \"{{ 2 ** 64 }}\", to: 3}", "5:25: `from`: 0x10000000000000000 does not fit in u64"),
    ("{var: x, from: 0, to: 3, by: 2}", "5:35: unknown argument `by`"),
    ("[0, 1, 2]", "5:10: `for` is a mapping"),
    ("{var: device, from: 0, to: 3}", "5:16: `for` variable `device` would hide"),
])
def test_a_bad_range_is_an_error_at_its_position(loop: str, error: str) -> None:
    errors = errors_of(f"""
        name: l
        requires: {{devices: 0}}
        steps:
          - for: {loop}
            steps: [{{sleep: {{duration: 1s}}}}]
    """)
    assert len(errors) == 1 and errors[0].startswith(f"scen/l.yaml:{error}"), errors


def test_too_many_iterations_in_one_loop_or_in_all_are_refused() -> None:
    errors = errors_of(f"""
        name: l
        requires: {{devices: 0}}
        steps:
          - for: {{var: a, from: 0, to: {MAX_ITERATIONS}}}
            steps: [{{sleep: {{duration: 0s}}}}]
          - for: {{var: b, from: 0, below: 60000}}
            steps:
              - for: {{var: c, from: 0, below: 2}}
                steps: [{{sleep: {{duration: 0s}}}}]
    """)
    assert errors == [
        ("scen/l.yaml:5:10: `for a` runs 100,001 iterations, 100,001 with the case's loops "
        "before it: the loops of one case run at most 100,000 in all"),
        ("scen/l.yaml:9:14: `for c` runs 2 iterations, 100,002 with the case's loops before "
        "it: the loops of one case run at most 100,000 in all (iteration b = 20000)")]


def test_an_error_in_a_body_names_the_first_iteration_that_has_it() -> None:
    assert errors_of("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, to: 5}
            steps:
              - sleep: {duration: "{{ 1 // (3 - n) }}s"}
              - sleep: {duration: "{{ nn }}s"}
    """) == [
        "scen/l.yaml:8:27: undefined template variable: 'nn' is undefined (iteration n = 0)"]
    assert errors_of("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, to: 5}
            steps:
              - sleep: {duration: "{{ 1 // (3 - n) }}s"}
    """) == [("scen/l.yaml:7:27: template failed: ZeroDivisionError: integer division or "
             "modulo by zero (iteration n = 3)")]


def test_a_for_step_takes_only_its_own_keys_and_needs_a_body() -> None:
    assert errors_of("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, to: 1}
            stesp: [{sleep: {duration: 1s}}]
            expect: EINVAL
    """) == [
        "scen/l.yaml:5:5: a `for` step needs `steps:`, a non-empty list of steps",
        ("scen/l.yaml:6:5: a `for` step takes `for`, `steps`, `name`, `when`; not `stesp` "
        "(did you mean `steps`?)"),
        "scen/l.yaml:7:5: a `for` step takes `for`, `steps`, `name`, `when`; not `expect`"]


@pytest.mark.parametrize("key", ["expect: EINVAL", "as: x", "repeat: 2", "timeout: 1s"])
def test_a_for_step_takes_no_key_of_an_operation_step(key: str) -> None:
    errors = errors_of(f"""
        name: l
        requires: {{devices: 0}}
        steps:
          - for: {{var: n, from: 0, to: 1}}
            steps: [{{sleep: {{duration: 1s}}}}]
            {key}
    """)
    assert errors == [(f"scen/l.yaml:7:5: a `for` step takes `for`, `steps`, `name`, `when`; "
                      f"not `{key.split(':')[0]}`")]


def test_an_empty_body_is_refused() -> None:
    assert errors_of("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, to: 1}
            steps: []
    """) == ["scen/l.yaml:6:12: a `for` step needs `steps:`, a non-empty list of steps"]


def test_handover_cannot_run_in_a_loop_and_when_must_be_a_boolean() -> None:
    assert errors_of("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, to: 1}
            steps:
              - handover: {}
          - sleep: {duration: 1s}
            when: "{{ 3 }}"
    """) == [
        ("scen/l.yaml:7:9: `handover` cannot run inside a `for` loop (the successor "
        "continues with the case's next step)"),
        ("scen/l.yaml:9:11: `when` is true or false (or a template giving one), got an "
        "integer 3")]


def test_validate_exits_2_with_the_located_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: l\nrequires: {devices: 0}\nsteps:\n"
                   "  - for: {var: n, from: 0, to: 2, below: 3}\n"
                   "    steps: [{sleep: {duration: 1s}}]\n")
    assert main(["validate", str(bad)]) == 2
    assert "bad.yaml:4:10: give only one of `to` or `below`" in capsys.readouterr().err


def test_the_json_schema_takes_a_for_step_and_nested_loops() -> None:
    scenario = {"name": "l", "steps": [{"for": {"var": "a", "from": 0, "below": 4}, "steps": [
        {"for": {"var": "b", "from": "{{ a }}", "to": 4, "step": 2},
         "steps": [{"sleep": {"duration": 1}, "when": "{{ b > 1 }}"}]}]}]}
    jsonschema.validate(scenario, json_schema())
    scenario["steps"][0]["expect"] = "EINVAL"  # type: ignore[index]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scenario, json_schema())


# --- how a loop runs ------------------------------------------------------------------


class Log:
    """Fake operations recording what ran; `sleep` of 2 ms fails its check, of 3 ms skips."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ops(self) -> dict[str, Any]:
        def sleep(rt: Runtime, args: Any, step: Any) -> None:
            self.calls.append(f"sleep {args.duration:g}")
            if args.duration == 0.002:
                raise CheckFailed("value differs")
            if args.duration == 0.003:
                raise Skip("host lacks it")
            if args.duration == 0.004:
                raise RuntimeError("bug in an operation")

        def assert_not_tainted(rt: Runtime, args: Any, step: Any) -> None:
            self.calls.append("taint check")

        return {"sleep": sleep, "assert_not_tainted": assert_not_tainted}


def test_a_loop_runs_its_body_for_each_value_as_one_step_of_the_report() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 5, to: 7}
            steps:
              - sleep: {duration: "{{ n }}s"}
                when: "{{ n != 6 }}"
              - assert_not_tainted: {}
          - assert_not_tainted: {}
    """)
    log = Log()
    result = run_case(case, [], log.ops())
    assert result.outcome is Outcome.PASS
    assert log.calls == ["sleep 5", "taint check", "taint check", "sleep 7", "taint check",
                         "taint check"]
    loop = result.steps[0]
    assert (len(result.steps), loop.op, loop.name, loop.repeat, loop.message) == \
        (2, "for", "for n", 3, "3 iterations")


@pytest.mark.parametrize(("duration", "outcome", "actual"), [
    (2, Outcome.FAIL, "check failed"), (4, Outcome.ERROR, "RuntimeError")])
def test_the_first_failing_iteration_ends_the_loop_and_is_named(duration: int, outcome: Outcome,
                                                                actual: str) -> None:
    (case,) = compile_text(f"""
        name: l
        requires: {{devices: 0}}
        steps:
          - for: {{var: n, from: 0, below: 9}}
            steps:
              - assert_not_tainted: {{}}
              - sleep: {{duration: "{{{{ {duration} if n == 2 else 0 }}}}ms"}}
        teardown:
          - assert_not_tainted: {{}}
    """)
    log = Log()
    result = run_case(case, [], log.ops())
    assert result.outcome is outcome
    assert log.calls == ["taint check", "sleep 0", "taint check", "sleep 0", "taint check",
                         f"sleep {duration / 1000:g}", "taint check"]
    assert result.steps[0].actual == actual
    assert result.message.startswith(
        "step 1 `for n` (scen/x.yaml:5): iteration 3 of 9 (n = 2): step `sleep` "
        "(scen/x.yaml:8): ")


def test_a_skip_inside_a_loop_skips_the_case() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 3, to: 4}
            steps: [{sleep: {duration: "{{ n }}ms"}}]
    """)
    result = run_case(case, [], Log().ops())
    assert (result.outcome, result.message) == (Outcome.SKIP, "host lacks it")


def test_the_planner_and_the_queue_see_the_steps_inside_loops() -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, below: 10}
            steps: [{sleep: {duration: 1s}}]
    """)
    assert len(list(flat_steps(case.steps))) == 10
    assert estimate_seconds(case) >= 10


def test_a_loop_reaches_the_guest_with_every_iteration(tmp_path: Path) -> None:
    (case,) = compile_text("""
        name: l
        requires: {devices: 0}
        steps:
          - for: {var: n, from: 0, below: 3}
            steps: [{sleep: {duration: "{{ n }}s"}}]
    """)
    header = payload.Header(devices=[], drivers={})
    path = payload.write(str(tmp_path), header, [case])
    with open(path, "rb") as f:
        models = guest_models.build(payload.read_header(f).models)
        (got,) = payload.read_cases(f, models)
    (loop,) = got.steps
    args: Any = loop.args
    assert type(args).__name__ == "ForLoop" and list(args.values) == [0, 1, 2]
    durations: list[tuple[int, Any]] = [(it.value, it.steps[0].args) for it in loop.body or ()]
    assert [(v, a.duration) for v, a in durations] == \
        [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert json.dumps(run_case(got, [], Log().ops()).to_dict()["steps"][0]["message"]) == \
        '"3 iterations"'
