"""`provoke_crash`: its validation, and the writer process's logic against a plain file in
place of LKDTM's DIRECT (the kernel's answers: tests/testbed/test_kernel_watch_debug.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run import interpreter
from vfio_scenario.run.ops import host, operations


def run(steps: str) -> CaseResult:
    text = "name: p\nrequires: {devices: 0}\nsteps:\n" + textwrap.indent(
        textwrap.dedent(steps), "  ")
    doc, errors = load_text(text, "p.yaml")
    assert errors == []
    compiled = compile_documents([doc])
    assert compiled.errors == [], [str(e) for e in compiled.errors]
    [case] = compiled.cases
    return interpreter.run_case(case, [], operations())


def errors_of(steps: str) -> list[str]:
    text = "name: p\nrequires: {devices: 0}\nsteps:\n" + textwrap.indent(
        textwrap.dedent(steps), "  ")
    doc, errors = load_text(text, "p.yaml")
    assert errors == []
    return [str(e) for e in compile_documents([doc]).errors]


def test_the_crash_type_is_a_kernel_name_and_wait_a_boolean() -> None:
    [error] = errors_of("- provoke_crash: {type: 'warning; reboot'}")
    assert error.startswith("p.yaml:4:") and "type" in error
    [error] = errors_of("- provoke_crash: {type: WARNING, wait: sometimes}")
    assert "wait" in error
    assert errors_of("- provoke_crash: {type: HUNG_TASK, wait: false}") == []


def test_without_lkdtm_the_case_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(host, "LKDTM_DIRECT", str(tmp_path / "absent"))
    result = run("- provoke_crash: {type: WARNING}")
    assert result.outcome is Outcome.SKIP
    assert result.message.startswith("this kernel has no LKDTM: ") and "CONFIG_LKDTM" in \
        result.message


def test_a_process_of_its_own_writes_the_type(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    direct = tmp_path / "DIRECT"
    direct.write_text("")
    monkeypatch.setattr(host, "LKDTM_DIRECT", str(direct))
    result = run("- provoke_crash: {type: WARNING}")
    assert result.outcome is Outcome.PASS, result.message
    assert direct.read_text() == "WARNING"


def test_the_writes_errno_is_the_steps_outcome(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(host, "LKDTM_DIRECT", str(tmp_path))  # a folder: EISDIR
    result = run("- provoke_crash: {type: WARNING}")
    assert (result.outcome, result.steps[0].actual) == (Outcome.FAIL, "EISDIR")
    assert run("""
        - provoke_crash: {type: WARNING}
          expect: EISDIR
    """).outcome is Outcome.PASS


def test_a_writer_killed_by_a_signal_is_that_signal() -> None:
    error = host.WriterKilled(11, "EXEC_KMALLOC")
    assert error.errno_name == "SIGSEGV"
    assert str(error) == ("provoke_crash EXEC_KMALLOC: the kernel killed the writing "
                          "process with SIGSEGV (an oops in its context)")
