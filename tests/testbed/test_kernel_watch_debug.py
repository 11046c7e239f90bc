"""The kernel watch on `--kernel debug` against real splats LKDTM provokes.

On the debug kernel (lockdep, KASAN, hung-task detection; its build is cached like the
default one and waited for on its build lock), cases provoke through LKDTM
(/sys/kernel/debug/provoke-crash/DIRECT, `provoke_crash` steps) a WARNING, a lockdep
report and a KASAN slab-out-of-bounds. (A hung task provoked by a case's own step, whose
LKDTM writer stays in D state for good, passed here once and failed once with an ERROR that
named no splat, cause not found: the hung task is proven from outside a case on the default
kernel, tests/testbed/test_kernel_watch_in_testbed.py.) Each such case must become an ERROR
naming its splat, the case after it must pass, and the JUnit, KTAP and JSON reports must
stay valid. Beside a running case: tests/testbed/test_shared_up.py (KASAN, through
`testbed run --alongside`), and on the default kernel a WARNING and a hung task
(tests/testbed/test_kernel_watch_in_testbed.py).

LKDTM 7.2 has no lockdep crash type; SPINLOCKUP, written once, takes a spinlock and
returns to user space holding it, which lockdep reports as "lock held when returning
to user space" (kernel/locking/lockdep.c, lockdep_sys_exit). Lockdep turns itself off
after its first report and KASAN reports once per boot (no kasan_multi_shot), so the
splats come in this order: WARNING, lockdep, KASAN.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.report.jsonout import is_json_report, json_document
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.results import CaseResult, RunResult
from vfio_scenario.run.testbed_run import run_in_testbed
from vfio_scenario.testbed import Testbed

from tests.helpers.kunit import kunit_parser, parse_ktap
from tests.helpers.reports import assert_valid_junit

pytestmark = pytest.mark.testbed

DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"
# the debug kernel under TCG on a busy 2-core machine: Python starts in the guest and
# cases take several times as long as on the default kernel
MULTIPLIER = 4.0

# (case, what the kernel watch must name: kind and the start of the splat's first line)
EXPECTED = [
    ("warning", "warning", "WARNING: drivers/misc/lkdtm/bugs.c:"),
    ("lockdep", "lockdep", "WARNING: lock held when returning to user space!"),
    ("kasan", "kasan", "BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW"),
]


@pytest.fixture
def debug_vm() -> Iterator[Any]:
    with Testbed(kernel="debug", devices=()) as testbed:
        assert testbed.kernel_release.endswith("-vfio-scenario-debug")
        yield testbed


def _run(testbed: Any, tmp_path: Path, text: str,
         on_start: dict[str, str] | None = None) -> tuple[list[CaseResult], list[str]]:
    """Run the scenarios of `text` in `testbed`: (results, the run's warnings). When a case
    named in `on_start` starts, the host runs that shell command in the guest, outside
    the case."""
    scenario = tmp_path / "splats.yaml"
    scenario.write_text(textwrap.dedent(text))
    compiled = compile_paths([str(scenario)])
    assert not compiled.errors, compiled.errors
    results: list[CaseResult] = []
    warnings: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start" and on_start:
            command = on_start.get(event["id"].split("::")[1])
            if command:
                out = testbed.run(["sh", "-c", command], timeout=120)
                assert out.returncode == 0, out.stderr
        elif kind == "result":
            results.append(CaseResult.from_dict(event["result"]))
        elif kind == "warning":
            warnings.append(event["message"])

    run_in_testbed(testbed, compiled.cases, compiled.documents, on_event, devices=[],
                   iommu_modes=[], timeout_multiplier=MULTIPLIER, fail_fast=False)
    return results, warnings


def _check(results: list[CaseResult], testbed: Any,
           provoked: list[tuple[str, str, str]]) -> None:
    """Each provoked case an ERROR naming its splat, each next one a pass, the reports
    valid."""
    outcomes = [(r.scenario, r.outcome.value) for r in results]
    expected = [pair for name, _, _ in provoked
                for pair in ((name, "error"), (f"after-{name}", "pass"))]
    assert outcomes[:len(expected)] == expected, [(r.scenario, r.message) for r in results]
    by_name = {r.scenario: r for r in results}
    for name, kind, title in provoked:
        result = by_name[name]
        undeclared = [s for s in result.kernel_splats if not s["allowed"]]
        # the message names the first splat of the case; SPINLOCKUP's writer may also be
        # scheduled with its spinlock held before lockdep's check on the way out
        # ("BUG: scheduling while atomic", DEBUG_ATOMIC_SLEEP), and then that comes first
        first = undeclared[0]
        assert first["kind"] in ({kind, "atomic_sleep"} if kind == "lockdep" else {kind})
        assert result.message.startswith(f"kernel {first['kind']} during the case: "
                                         f"{first['title']}"), result.message
        assert any(s["kind"] == kind and s["title"].startswith(title) for s in undeclared), \
            [s["title"] for s in undeclared]
        assert all(s["text"] in result.log for s in undeclared)
        assert by_name[f"after-{name}"].kernel_splats == []
    kasan = next(s for s in by_name["kasan"].kernel_splats if s["kind"] == "kasan")
    assert "Write of size 4 at addr" in kasan["text"] and "lkdtm_SLAB_LINEAR_OVERFLOW" in \
        kasan["text"] and kasan["text"].rstrip().endswith("=" * 20)
    lockdep = next(s for s in by_name["lockdep"].kernel_splats if s["kind"] == "lockdep")
    assert "lock_me_up" in lockdep["text"], lockdep["text"]  # the lock it names as held

    run = RunResult(cases=results, duration=60.0,
                    properties={"kernel": testbed.kernel_release})
    root = assert_valid_junit(junit_document(run))
    for name, _, _ in provoked:
        error = root.find(f".//testcase[@name='{name}']/error")
        assert error is not None and error.get("message", "").startswith(
            by_name[name].message[:80])
    parsed: Any = parse_ktap(ktap_document(run))
    assert parsed.counts.errors == 0  # kunit_tool reads it without a protocol complaint
    statuses = [t.status for t in parsed.subtests[0].subtests]
    fail, ok = kunit_parser().TestStatus.FAILURE, kunit_parser().TestStatus.SUCCESS
    assert statuses[:len(expected)] == [fail, ok] * len(provoked)
    doc = json.loads(json_document(run))
    assert is_json_report(doc)
    splat_kinds = {c["scenario"]: {s["kind"] for s in c["kernel_splats"]} for c in doc["cases"]}
    assert all(kind in splat_kinds[name] for name, kind, _ in provoked)


INSIDE = """
    - name: warning
      requires: {devices: 0}
      steps:
        - provoke_crash: {type: WARNING}
    - name: after-warning
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
    - name: lockdep
      requires: {devices: 0}
      steps:
        - provoke_crash: {type: SPINLOCKUP}
    - name: after-lockdep
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
    - name: kasan
      requires: {devices: 0}
      steps:
        - provoke_crash: {type: SLAB_LINEAR_OVERFLOW}
    - name: after-kasan
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
    - name: unknown-type
      requires: {devices: 0}
      steps:
        - provoke_crash: {type: NO_SUCH_CRASH_TYPE}
          expect: EINVAL
"""


def test_splats_a_case_provokes_itself_are_its_errors(debug_vm: Any, tmp_path: Path) -> None:
    results, _ = _run(debug_vm, tmp_path, INSIDE)
    _check(results, debug_vm, EXPECTED)
    # the kernel's answer to a crash type LKDTM does not know
    assert (results[-1].scenario, results[-1].outcome.value) == ("unknown-type", "pass")
