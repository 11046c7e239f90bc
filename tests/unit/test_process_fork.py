"""`fork`, `process:`, `join`, `drop_capability` and `assert_locked_vm`'s `of`/`locked`/
`pinned`: what the compiler refuses (located errors), and the interpreter running steps
in a forked child (real fork on the host; the kernel's side is tests/guest/test_uapi_process.py)."""

from __future__ import annotations

import os
import textwrap
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.results import Outcome
from vfio_scenario.run.interpreter import run_case
from vfio_scenario.run.ops import operations

from tests.helpers.scenarios import compile_text


def errors_of(text: str) -> list[str]:
    doc, errors = load_text(textwrap.dedent(text), "scen/fork.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


HEAD = """\
name: f
requires: {devices: 0}
steps:
  - alloc_buffer: {size: 4KiB}
    as: buf
  - fork: {}
    as: child
"""


def test_a_valid_fork_compiles_with_the_process_on_the_steps() -> None:
    case = compile_text(HEAD + """\
  - fill: {buffer: buf, pattern: ones}
    process: child
  - alloc_buffer: {size: 4KiB}
    as: mine
    process: child
  - fill: {buffer: mine, pattern: zero}
    process: child
  - join: {process: child}
  - fill: {buffer: buf, pattern: zero}
""")[0]
    assert [s.common.process for s in case.steps] == [None, None, "child", "child", "child",
                                                      None, None]


@pytest.mark.parametrize(("tail", "where", "message"), [
    ("  - fill: {buffer: buf, pattern: ones}\n    process: chld\n", "9:14",
     "handle `chld` is not defined by an earlier step (did you mean `child`?)"),
    ("  - fill: {buffer: buf, pattern: ones}\n    process: buf\n", "9:14",
     "handle `buf` is a buffer, but `process` needs a process (made by `fork`)"),
    # made in the child: the case's process does not have it
    (("  - alloc_buffer: {size: 4KiB}\n    as: mine\n    process: child\n"
     "  - fill: {buffer: mine, pattern: ones}\n"), "11:20",
     "handle `mine` is not defined by an earlier step"),
    # made by the case's process after the fork: the child does not have it
    (("  - alloc_buffer: {size: 4KiB}\n    as: late\n"
     "  - fill: {buffer: late, pattern: ones}\n    process: child\n"), "10:20",
     "handle `late` is not defined by an earlier step"),
    ("  - join: {process: child}\n  - fill: {buffer: buf, pattern: ones}\n    process: child\n",
     "10:14", "process `child` was joined by step 3: it has ended"),
    ("  - join: {process: child}\n  - join: {process: child}\n", "9:21",
     "process `child` was joined by step 3: it has ended"),
    ("  - fork: {}\n    as: grandchild\n    process: child\n", "10:14",
     "`fork` runs in the case's process, not in a forked child"),
    ("  - join: {process: child}\n    process: child\n", "9:14",
     "`join` runs in the case's process, not in a forked child"),
    ("  - assert_locked_vm: {of: parent, pinned: 0}\n", "8:28",
     "`of: parent` reads the process that forked this one: only a step with `process:`"),
    ("  - drop_capability: {capability: CAP_IPC_LOK}\n", "8:35", "CAP_IPC_LOCK"),
    ("teardown:\n  - fill: {buffer: buf, pattern: ones}\n    process: child\n", "10:14",
     "teardown steps run in the case's process"),
    # a `process` that is no name (a template giving a list): an error, not a TypeError
    ("  - join: {process: '{{ [1] * 3 }}'}\n", "8:21",
     "`process`: Input should be a valid string, got a list [1, 1, 1]"),
    ("  - join: {process: {a: 1}}\n", "8:21", "`process`: Input should be a valid string"),
])
def test_wrong_forks_are_located_errors(tail: str, where: str, message: str) -> None:
    errors = errors_of(HEAD + tail)
    assert any(e.startswith(f"scen/fork.yaml:{where}:") and message in e for e in errors), errors


def run(text: str, ops: dict[str, Any] | None = None) -> Any:
    case = compile_text(text, "scen/fork.yaml")[0]
    return run_case(case, [], ops or operations())


def test_steps_run_in_the_child_whose_memory_is_a_copy_and_join_reaps_it() -> None:
    # the child fills its copy of a private buffer: the case's copy keeps its zeros
    result = run(HEAD + """\
  - fill: {buffer: buf, pattern: ones}
    process: child
  - assert_pattern: {buffer: buf, pattern: ones}
    process: child
  - join: {process: child}
  - assert_pattern: {buffer: buf, pattern: zero}
  - assert_locked_vm: {locked: 0, pinned: 0}
""")
    assert result.outcome is Outcome.PASS, result.message
    procs = [s.process for s in result.steps]
    me = f"case (pid {os.getpid()})"
    assert procs[:2] == [me, me] and procs[4:] == [me, me, me]
    child = procs[2]
    assert child.startswith("child (pid ") and procs[3] == child
    assert child != me
    pid = int(child.split("pid ")[1].rstrip(")"))
    assert f"{child} exited with status 0" in result.steps[4].message
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_child_left_running_is_ended_by_the_releases() -> None:
    result = run(HEAD + "  - sleep: {duration: 1ms}\n    process: child\n")
    assert result.outcome is Outcome.PASS, result.message
    pid = int(result.steps[2].process.split("pid ")[1].rstrip(")"))
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_child_that_dies_in_a_step_makes_it_an_error_and_join_reports_its_status() -> None:
    ops = dict(operations())
    me = os.getpid()

    def dies(rt: Any, args: Any, step: Any) -> None:
        if os.getpid() != me:
            os._exit(3)

    ops["sleep"] = dies
    result = run(HEAD + "  - sleep: {duration: 1ms}\n    process: child\n", ops)
    assert result.outcome is Outcome.ERROR
    step = result.steps[-1]
    assert step.outcome is Outcome.ERROR and step.process.startswith("child (pid ")
    assert "ended (exit status 3) without a result for the step" in step.message


def test_a_failing_check_in_the_child_fails_the_case_at_that_step() -> None:
    result = run(HEAD + """\
  - assert_locked_vm: {of: parent, locked: 1GiB}
    process: child
  - join: {process: child}
""")
    assert result.outcome is Outcome.FAIL
    assert result.steps[-1].op == "assert_locked_vm"
    assert f"the parent (pid {os.getpid()}) has VmLck" in result.steps[-1].message
    assert "step 3 `assert_locked_vm` (scen/fork.yaml:8)" in result.message


def test_expect_and_repeat_are_applied_in_the_child() -> None:
    ops = dict(operations())
    me = os.getpid()
    read, write = os.pipe()

    def counts(rt: Any, args: Any, step: Any) -> None:
        os.write(write, b"c" if os.getpid() != me else b"p")

    ops["sleep"] = counts
    result = run(HEAD + """\
  - sleep: {duration: 1ms}
    process: child
    repeat: 3
  - assert_locked_vm: {locked: 1GiB}
    process: child
    expect: EINVAL
  - join: {process: child}
""", ops)
    os.close(write)
    assert os.read(read, 100) == b"ccc"  # three times, in the child
    assert result.outcome is Outcome.FAIL
    assert result.steps[2].outcome is Outcome.PASS and result.steps[2].repeat == 3
    # a failed check is no errno: a step expecting EINVAL gets "check failed"
    assert result.steps[3].outcome is Outcome.FAIL
    assert result.steps[3].actual == "check failed" and result.steps[3].expected == "EINVAL"


def test_a_memfd_buffer_is_shared_with_the_child_a_private_one_is_not() -> None:
    result = run(HEAD + """\
  - alloc_buffer: {size: 4KiB, backing: memfd}
    as: shared
  - fork: {}
    as: second
  - fill: {buffer: shared, pattern: ones}
    process: second
  - fill: {buffer: buf, pattern: ones}
    process: second
  - join: {process: second}
  - assert_pattern: {buffer: shared, pattern: ones}
  - assert_pattern: {buffer: buf, pattern: zero}
""")
    assert result.outcome is Outcome.PASS, result.message


def test_a_step_timeout_applies_in_the_child() -> None:
    result = run(HEAD + """\
  - sleep: {duration: 5s}
    process: child
    timeout: 100ms
""")
    assert result.outcome is Outcome.ERROR
    assert result.steps[-1].process.startswith("child (pid ")
    assert result.steps[-1].message == "step timed out after 0.1s"


def test_join_fails_when_the_child_exited_with_another_status() -> None:
    from vfio_scenario.language.models import Join
    from vfio_scenario.run.forked import Child
    from vfio_scenario.run.interpreter import CheckFailed, Runtime
    from vfio_scenario.run.ops.process import join

    case = compile_text(HEAD + "  - join: {process: child}\n", "scen/fork.yaml")[0]
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.close(down_r)
    os.close(up_w)
    rt = Runtime(case=case, devices=[])
    rt.handles["child"] = Child("child", pid, down_w, up_r)
    with pytest.raises(CheckFailed, match=rf"child \(pid {pid}\) exited with status 3"):
        join(rt, Join(process="child"), case.steps[-1])
    with pytest.raises(CheckFailed, match="was joined already"):
        join(rt, Join(process="child"), case.steps[-1])
