"""The warm guest engine (run/zygote.py): runs forked from a process that imported the
engine and made the models once keep every case in a process of its own.

The guest engine runs here on this host's (absent) devices, as in the guest: a toy
operation corrupts its process's state (a module global, the environment, the
interpreter's own function), another checks that state; each case of each run must
find it pristine, and the warm process too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from vfio_scenario.language import models
from vfio_scenario.language.models import Op
from vfio_scenario.run import guest_models, payload

from tests.helpers.scenarios import compile_text
from tests.helpers.toy_ops import scratch_operations

DIRTY = """
name: dirty
requires: {devices: 0}
matrix: {n: [1, 2]}
steps:
  - corrupt_state: {}
"""
CLEAN = DIRTY.replace("dirty", "clean").replace("corrupt_state", "check_state")

WARM = """
import json, os, sys
from vfio_scenario.run import zygote
zygote.preload(sys.argv[1])
from vfio_scenario.language import models
from vfio_scenario.run import interpreter, ops
from vfio_scenario.run.interpreter import CheckFailed

TOUCHED = []  # what a case did to its process


@ops.op(models.CorruptState)
def corrupt(rt, args, step):
    TOUCHED.append("dirty")
    os.environ["ZYGOTE_TEST_DIRT"] = "1"
    interpreter.run_case = None  # the engine of this process is broken from here on
    models.CorruptState.op = "broken"


@ops.op(models.CheckState)
def check(rt, args, step):
    dirt = [TOUCHED, os.environ.get("ZYGOTE_TEST_DIRT"), interpreter.run_case is None,
            models.CorruptState.op]
    if dirt != [[], None, False, "corrupt_state"]:
        raise CheckFailed(f"state left by another case: {dirt}")


for _ in range(2):  # two runs, each forked from this warm process
    read, write = os.pipe()
    pid = zygote.fork_run([sys.argv[1]], stdout=write)
    os.close(write)
    with os.fdopen(read) as pipe:
        for line in pipe:
            event = json.loads(line)
            if event["event"] == "result":
                print(event["result"]["scenario"], event["result"]["outcome"],
                      event["result"]["message"])
            elif event["event"] in ("done", "fatal"):
                print(event["event"], event.get("message", ""))
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print("warm", TOUCHED, os.environ.get("ZYGOTE_TEST_DIRT"), interpreter.run_case is None,
      "pydantic" in sys.modules)
"""


def test_runs_forked_from_a_warm_engine_keep_each_case_isolated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with scratch_operations():
        class CorruptState(Op):
            """Spoil this process: a global, the environment, the engine's functions."""

            op = "corrupt_state"
            area = "host"

        class CheckState(Op):
            """Fail when this process is not as the engine left it."""

            op = "check_state"
            area = "host"

        for cls in (CorruptState, CheckState):  # pickled by name, as the models module's
            cls.__module__, cls.__qualname__ = models.__name__, cls.__name__
            monkeypatch.setattr(models, cls.__name__, cls, raising=False)
        dirty = compile_text(DIRTY, "scen/dirty.yaml")
        clean = compile_text(CLEAN, "scen/clean.yaml")
        cases = [dirty[0], clean[0], dirty[1], clean[1]]
        header = payload.Header(devices=[], drivers={}, kernel_watch=False)
        path = payload.write(str(tmp_path), header, cases)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(WARM), path],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    run = ["dirty pass ", "clean pass ", "dirty pass ", "clean pass ", "done ", "exit 0"]
    assert out.stdout.splitlines() == [*run, *run, "warm [] None False False"], out.stdout


def test_the_models_are_made_once_per_content_and_other_models_are_refused(
        tmp_path: Path) -> None:
    specs = guest_models.describe([])
    code = guest_models.compiled(specs)
    made = guest_models.build(specs, code)
    assert guest_models.build(specs, code) is made  # the same content: made once
    assert guest_models.build(specs) is made  # compiled here from the same source
    assert code["key"] == guest_models.key(specs) == made.KEY
    other = [*specs, {"name": "Extra", "fields": ["x"], "class_vars": {}, "methods": {}}]
    assert guest_models.build(other) is not made
    program = textwrap.dedent("""
        import json, sys
        from vfio_scenario.run import guest_models
        specs = json.loads(sys.argv[1])
        guest_models.install(specs)
        guest_models.install(specs)  # a warm process serves its models again
        try:
            guest_models.install([*specs, {"name": "Extra", "fields": [], "class_vars": {},
                                             "methods": {}}])
        except RuntimeError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", program, json.dumps(specs)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("vfio_scenario.language.models holds other models already "
                                  "(a warm process serves one checkout's models)")


def test_a_compiled_module_for_another_python_is_compiled_again() -> None:
    specs = guest_models.describe([])
    code = dict(guest_models.compiled(specs), tag="cpython-399 (3, 99, 0)", code=b"junk")
    module = guest_models.build(specs, code)
    assert guest_models.key(specs) == module.KEY
    assert module.OPERATIONS["sleep"](duration=0.5).duration == 0.5
