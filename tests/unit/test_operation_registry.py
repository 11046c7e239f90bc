"""An operation is one model and one function: the registries and what they promise.

The model registers itself when its class is defined (a subclass of `Op` with its own
`op`); the implementation is bound to the model by `@op(Model)`. These tests check
that the engine's models and implementations match one to one, that a mismatch is
refused or caught, and that a toy operation written here, one model and one function,
compiles and runs. Toy operations live inside `scratch_operations()` and are gone
after it (tests/helpers/toy_ops.py).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.cases import Case, Step
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import IOMMU_MODES, OPERATIONS, Duration, Int, MapDma, Op
from vfio_scenario.language.reference import description, with_tables
from vfio_scenario.results import Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import CheckFailed, RunOptions, Runtime, run_case
from vfio_scenario.run.ops import implementations, op, operations, registry_problems

from tests.helpers.toy_ops import scratch_operations


def compile_text(text: str, path: str = "scen/toy.yaml") -> tuple[list[Case], list[str]]:
    doc, errors = load_text(textwrap.dedent(text), path)
    assert errors == []
    compiled = compile_documents([doc])
    return compiled.cases, [str(e) for e in compiled.errors]


# --- the engine's own operations --------------------------------------------------------


def test_every_model_has_exactly_one_implementation_and_back() -> None:
    found = implementations()
    assert registry_problems() == []
    assert set(found) == set(OPERATIONS.values())
    assert sorted(operations()) == sorted(OPERATIONS)


def test_every_model_is_registered_under_its_own_key() -> None:
    assert OPERATIONS, "no operation registered"
    for key, model in OPERATIONS.items():
        assert model.op == key
        assert model.__dict__["op"] == key  # its own `op`, not a base's


def test_the_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        OPERATIONS["map_dma"] = MapDma  # type: ignore[index]


def test_a_second_model_of_one_operation_is_refused() -> None:
    with scratch_operations(), pytest.raises(TypeError, match="`map_dma` is defined twice"):

        class MapDmaAgain(Op):
            op = "map_dma"
            area = "memory"

    assert OPERATIONS["map_dma"] is MapDma


def test_a_second_implementation_is_refused() -> None:
    before = operations()["map_dma"]

    def another(rt: Runtime, args: MapDma, step: Step) -> None:
        raise AssertionError("never runs")

    with scratch_operations(), pytest.raises(TypeError, match="two implementations"):
        op(MapDma)(another)
    assert operations()["map_dma"] is before


def test_op_refuses_what_is_not_a_registered_model() -> None:
    with scratch_operations():

        class _Base(Op):  # a base of operations: no `op` of its own
            area = "host"

        assert _Base not in OPERATIONS.values()
        with pytest.raises(TypeError, match="not a registered operation model"):
            op(_Base)


def test_a_model_without_area_is_refused() -> None:
    with scratch_operations(), pytest.raises(TypeError, match="sets no `area`"):

        class Nowhere(Op):
            op = "nowhere"


def test_a_model_without_implementation_is_caught_by_the_registry_check() -> None:
    with scratch_operations():

        class Orphan(Op):
            op = "orphan"
            area = "host"

        problems = registry_problems()
    assert len(problems) == 1
    assert "operation `orphan`" in problems[0]
    assert "has no implementation" in problems[0]
    assert registry_problems() == []  # gone with the scratch registry


@pytest.mark.parametrize("forked", [False, True], ids=["in-process", "forked-child"])
def test_a_model_without_implementation_fails_inside_its_step(forked: bool) -> None:
    """Not "exited with status 70" outside the step: a located ERROR of that step, and
    the steps after it do not run (the case's child process reports it normally)."""
    with scratch_operations():

        class Orphan(Op):
            op = "orphan"
            area = "host"

        cases, errors = compile_text("""\
            steps:
              - sleep: {duration: 0s}
              - orphan: {}
              - sleep: {duration: 0s}
            """)
        assert errors == []
        run = execute_case if forked else _run_case_in_process
        result = run(cases[0], [], operations(), RunOptions(kernel_watch=False))
    assert result.outcome is Outcome.ERROR
    assert [s.outcome for s in result.steps] == [Outcome.PASS, Outcome.ERROR]
    step = result.steps[1]
    assert step.op == "orphan"
    assert step.location == "scen/toy.yaml:3"
    assert "operation `orphan` has no implementation (no @op(Orphan) function" in step.message
    assert result.location == "scen/toy.yaml:3"
    assert result.message.startswith("step 2 `orphan` (scen/toy.yaml:3): ")
    assert "status" not in result.message


def _run_case_in_process(case: Case, devices: list[str], ops: dict[str, Any],
                         options: RunOptions) -> Any:
    return run_case(case, devices, ops, options)


def test_scratch_operations_leave_no_trace() -> None:
    before_models = dict(OPERATIONS)
    before_impls = implementations()
    with scratch_operations():

        class Leak(Op):
            op = "leak"
            area = "host"

        @op(Leak)
        def leak(rt: Runtime, args: Leak, step: Step) -> None:
            return None

        assert "leak" in OPERATIONS and "leak" in operations()
    assert dict(OPERATIONS) == before_models
    assert implementations() == before_impls
    _, errors = compile_text("steps:\n  - leak: {}\n")
    assert errors == ["scen/toy.yaml:2:5: unknown operation `leak`"]


# --- a toy operation: one model and one function ------------------------------------------


def test_a_toy_operation_is_one_model_and_one_function() -> None:
    """Everything the toy needs is below: its model (arguments, validation, the handle
    it makes) and its implementation; nothing else of the engine is touched, and the
    real compiler, the real operation table and the real interpreter run it."""
    stamped: list[int] = []
    with scratch_operations():

        class Stamp(Op):
            """Stamp `value` (a toy operation of this test)."""

            op = "stamp"
            produces = "buffer"
            area = "host"
            value: Int

        @op(Stamp)
        def stamp(rt: Runtime, args: Stamp, step: Step) -> dict[str, int]:
            if args.value == 13:
                raise CheckFailed("13 is not stamped")
            stamped.append(args.value)
            return {"value": args.value}

        cases, errors = compile_text("""\
            steps:
              - stamp: {value: 1}
                as: first
              - stamp: {value: "0x2"}
            """)
        # the model checks its arguments and its handle like any operation's
        assert errors == []
        _, bad = compile_text("steps:\n  - stamp: {valu: 1}\n")
        assert bad == ["scen/toy.yaml:2:12: missing required argument `value`",
                       "scen/toy.yaml:2:13: unknown argument `valu` (did you mean `value`?)"]
        _, bad = compile_text("steps:\n  - stamp: {value: -1}\n")
        assert len(bad) == 1 and bad[0].startswith("scen/toy.yaml:2:20: `value`: ")
        assert "u64" in bad[0]
        _, bad = compile_text("steps:\n  - stamp: {value: 1}\n    as: s\n"
                              "  - map_dma: {iommu: s, buffer: s}\n")
        assert "handle `s` is a buffer, but `iommu` needs a iommu" in bad[0]

        ran = run_case(cases[0], [], operations(), RunOptions(kernel_watch=False))
        assert ran.outcome is Outcome.PASS, ran.message
        assert stamped == [1, 2]

        cases, _ = compile_text("steps:\n  - stamp: {value: 13}\n")
        failed = run_case(cases[0], [], operations(), RunOptions(kernel_watch=False))
    assert failed.outcome is Outcome.FAIL
    assert failed.message == "step 1 `stamp` (scen/toy.yaml:2): 13 is not stamped"
    assert "stamp" not in OPERATIONS


def test_what_the_compiler_knows_of_an_operation_is_a_class_attribute() -> None:
    """`opens_iommu` gives a scenario the implicit `iommu_mode` axis."""
    with scratch_operations():

        class Plain(Op):
            op = "plain"
            area = "host"

        class Opener(Op):
            op = "opener"
            area = "iommu"
            opens_iommu = True

        plain, _ = compile_text("steps:\n  - plain: {}\n")
        opener, _ = compile_text("steps:\n  - opener: {}\n")
    assert [c.iommu_mode for c in plain] == [None]
    assert [c.iommu_mode for c in opener] == list(IOMMU_MODES)


def test_the_engine_marks_the_operations_that_open_an_iommu() -> None:
    """The operations of the list the compiler had before (`_IOMMU_OPS`) and the keys
    the planner compared with (`open_iommu` names its mode, `send_msi`)."""
    assert {k for k, m in OPERATIONS.items() if m.opens_iommu} >= {
        "bind_iommufd", "open_cdev", "open_device", "open_iommu"}
    assert OPERATIONS["open_iommu"].iommu_mode_argument == "mode"
    assert OPERATIONS["send_msi"].raises_msi


# --- the language reference ---------------------------------------------------------------


def test_every_operation_has_a_description() -> None:
    assert [k for k, m in OPERATIONS.items() if not description(m)] == []


def test_a_new_operation_changes_the_reference_tables() -> None:
    """A new operation is a row of docs/language.md, description included: until the
    tables are made anew, test_language's comparison with the models fails."""
    committed = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()
    assert with_tables(committed) == committed
    with scratch_operations():

        class Stamp(Op):
            """Stamp `value` (a toy | operation)."""

            op = "stamp"
            area = "host"
            value: Int
            within: Duration = 0.5
            loud: bool = False

        assert with_tables(committed) != committed
        row = "| `stamp` | `value`, `within` = 0.5s, `loud` = false | \N{EN DASH} | " \
              "Stamp `value` (a toy \\| operation). |"
        assert row in with_tables(committed).split("### host", 1)[1]

        class Mute(Op):
            op = "mute"
            area = "host"

        assert [k for k, m in OPERATIONS.items() if not description(m)] == ["mute"]
