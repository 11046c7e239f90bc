"""The kernel watch on `--kernel debug` against real splats LKDTM provokes.

On the debug kernel (lockdep, KASAN, hung-task detection, kmemleak; its build is cached
like the default one and waited for on its build lock), LKDTM
(/sys/kernel/debug/provoke-crash/DIRECT) provokes a hung task, a WARNING, a lockdep
report and a KASAN slab-out-of-bounds, from inside a case (`provoke_crash` steps) and
from outside it (a second command the host runs in the guest, through the agent's
second channel, while the case runs; `testbed run --alongside` on an `up` VM is the
same channel: tests/testbed/test_shared_up.py). Each such case must become an ERROR
naming its splat, the case after it must pass, and the JUnit, KTAP and JSON reports
must stay valid. kmemleak's scan at the run's end must report a real leak as the run's,
and report nothing for the runs that leak nothing.

The hung task from inside a case: LKDTM's writer, forked by the case, stays in state D
for good. The executor used to wait for the case's whole process group without a
bound, so the run stopped there (the kernel watch with it) until the host gave the
guest up: an ERROR that named no splat. The writer now has a process group of its own,
and the executor's waits are bounded (tests/unit/test_stuck_case_processes.py).

LKDTM 7.2 has no lockdep crash type; SPINLOCKUP, written once, takes a spinlock and
returns to user space holding it, which lockdep reports as "lock held when returning
to user space" (kernel/locking/lockdep.c, lockdep_sys_exit). Lockdep turns itself off
after its first report (debug_locks_off), KASAN reports once per boot (no
kasan_multi_shot) and the hung-task detector is told to report once, so the splats come
in this order: hung task, WARNING, lockdep, KASAN, and the splats from inside cases and
those from beside them need a VM each: two debug boots, not one.

LKDTM 7.2 has no leak type either. SLAB_FREE_CROSS frees an object of its cache
lkdtm-heap-a to lkdtm-heap-b; with SLUB's consistency checks on those caches
(`slab_debug=F,lkdtm-heap-a,lkdtm-heap-b` on the kernel command line) kmem_cache_free
warns and "intentionally leaks the object" (mm/slub.c), which kmemleak then finds
unreferenced. The checks on lkdtm-heap-a matter: they leave it without per-CPU sheaves,
whose array keeps the popped object's pointer, a reference kmemleak would find.

Each run on this kernel ends with two kmemleak scans of the guest (minutes under TCG on a
busy machine), so the leak shares the VM and the run of the splats from inside cases: it
comes last, after them, and kmemleak's report of that run must be exactly its one
object (so the splat cases leaked nothing); a second run in that VM must report nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.report.jsonout import is_json_report, json_document
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.results import CaseResult, RunResult
from vfio_scenario.run.kernel_watch import find_splats
from vfio_scenario.run.testbed_run import run_in_testbed
from vfio_scenario.testbed import Testbed
from vfio_scenario.uapi.kmsg import Record

from tests.helpers.kunit import kunit_parser, parse_ktap
from tests.helpers.reports import assert_valid_junit

pytestmark = [pytest.mark.testbed, pytest.mark.kernel("debug")]

DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"
# the debug kernel under TCG on a busy 2-core machine: Python starts in the guest and
# cases take several times as long as on the default kernel
MULTIPLIER = 4.0
# report a task blocked for a second, once (the LKDTM writer stays blocked for good)
HUNG_TASK_FAST = ("echo 1 > /proc/sys/kernel/hung_task_warnings; "
                  "echo 1 > /proc/sys/kernel/hung_task_timeout_secs")

# (case, what the kernel watch must name: kind and the start of the splat's first line)
EXPECTED = [
    ("hung-task", "hung_task", "INFO: task python:"),
    ("warning", "warning", "WARNING: drivers/misc/lkdtm/bugs.c:"),
    ("lockdep", "lockdep", "WARNING: lock held when returning to user space!"),
    ("kasan", "kasan", "BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW"),
]

# the preconditions of the lockdep and KASAN splats beside a case, checked in the guest so
# that a failure names the kernel's state, not only the watch's verdict: lockdep still on
# (a report of any kind before turns it off for good), and KASAN's report of
# SLAB_LINEAR_OVERFLOW in the log once the write returned (KASAN reports once per boot)
_TAIL = "dmesg | tail -n 150 >&2; exit 1; }"
LOCKDEP_ON = ("{ grep -Eq '^ *debug_locks: +1$' /proc/lockdep_stats || "
              "{ echo 'lockdep is already off' >&2; " + _TAIL + "; }")
KASAN_REPORTED = ("dmesg | grep -q 'BUG: KASAN: slab-out-of-bounds in "
                  "lkdtm_SLAB_LINEAR_OVERFLOW' || { echo 'KASAN did not report "
                  "SLAB_LINEAR_OVERFLOW' >&2; " + _TAIL)

# SLUB's consistency checks on LKDTM's two caches: SLAB_FREE_CROSS then leaks (see the top)
LEAKING_CMDLINE = "slab_debug=F,lkdtm-heap-a,lkdtm-heap-b"


# kmemleak scans the memory the guest uses: with 1 GiB instead of the testbed's 4 GiB a
# scan took 61 and 117 s instead of 370 and 482 s (the same busy machine, docs/testbed.md)
MEMORY = "1G"


# A debug boot may splat before any test runs: on 2026-12-05 one boot in five of this
# kernel under TCG (and one CI run, whose lockdep case then led with "sleeping function
# called from invalid context" and whose KASAN case passed) reported at 0.018 s
# "BUG: KASAN: wild-memory-access in do_raw_spin_lock" (handle_edge_irq ←
# common_interrupt, interrupting identify_cpu ← arch_cpu_finalize_init ← start_kernel),
# which turns lockdep off and uses KASAN's one report of the boot. Such a VM cannot show
# these splats: it is named in a warning and booted again, up to BOOTS times.
BOOTS = 3
_DMESG_LINE = re.compile(r"^\[\s*(\d+)\.(\d+)\] (.*)$", re.MULTILINE)


def boot_problems(testbed: Any) -> list[str]:
    """What the guest's kernel reported before any test ran: the splats of its log (as the
    kernel watch cuts them) and a taint mask that is not 0."""
    out = testbed.run(["sh", "-c", "cat /proc/sys/kernel/tainted; dmesg"]).stdout
    taint, _, log = out.partition("\n")
    records = [Record(6, i, int(m.group(1)) * 1_000_000 + int(m.group(2)), m.group(3))
               for i, m in enumerate(_DMESG_LINE.finditer(log))]
    problems = [f"{s.kind}: {s.title}" for s in find_splats(records)]
    if int(taint):
        problems.append(f"tainted {int(taint):#x}")
    return problems


@contextlib.contextmanager
def _debug_testbed(extra_cmdline: str = "") -> Iterator[Any]:
    seen: list[list[str]] = []
    for _ in range(BOOTS):
        with Testbed(kernel="debug", devices=(), memory=MEMORY,
                     extra_cmdline=extra_cmdline) as testbed:
            assert testbed.kernel_release.endswith("-vfio-scenario-debug")
            problems = boot_problems(testbed)
            if problems:
                seen.append(problems)
                warnings.warn(f"the debug kernel splatted while booting, booted again: "
                              f"{problems}", stacklevel=1)
                continue
            assert testbed.run(["sh", "-c", HUNG_TASK_FAST]).returncode == 0
            yield testbed
            return
    pytest.fail(f"each of {BOOTS} debug boots splatted before the test: {seen}")


@pytest.fixture
def debug_vm() -> Iterator[Any]:
    """A VM of its own: the splats from beside running cases."""
    with _debug_testbed() as testbed:
        yield testbed


@pytest.fixture(scope="module")
def inside_vm() -> Iterator[Any]:
    """One VM for the splats from inside cases and for the leak (both tests below)."""
    with _debug_testbed(LEAKING_CMDLINE) as testbed:
        yield testbed


def _run(testbed: Any, tmp_path: Path, text: str,
         on_start: dict[str, str] | None = None) -> tuple[list[CaseResult], list[str]]:
    """Run the scenarios of `text` in `testbed`: (results, the run's warnings, a kmemleak
    report among them as the host prints it). When a case named in `on_start` starts,
    the host runs that shell command in the guest, outside the case."""
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
        elif kind == "kmemleak":
            warnings.append(f"kmemleak: {event['objects']} object(s): {event['report']}")
        elif kind == "kernel_before":
            warnings.extend(f"before: {problem}" for problem in event["problems"])

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
    # on a mismatch: every case's splats (kind, title) and the tail of the guest's log
    assert outcomes[:len(expected)] == expected, (
        [(r.scenario, r.outcome.value, [(s["kind"], s["title"]) for s in r.kernel_splats])
         for r in results], testbed.run(["dmesg"]).stdout[-20000:])
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


def _outside(name: str) -> str:
    """A case long enough for the host's command beside it (which starts when the case's
    start event arrives, and ends once the splat is logged whole) to finish inside it,
    however busy the machine; then its window closes when the next case starts. (Waiting
    for LKDTM's own line instead would race: the case reads the log from when its process
    begins, which the command beside it may precede.)"""
    return f"""
    - name: {name}
      requires: {{devices: 0}}
      timeout: 120s
      steps:
        - sleep: {{duration: 40s}}
    - name: after-{name}
      requires: {{devices: 0}}
      steps:
        - sleep: {{duration: 10ms}}
"""


OUTSIDE = "".join(_outside(name) for name, _, _ in EXPECTED)


def test_splats_provoked_beside_a_running_case_are_its_errors(debug_vm: Any,
                                                              tmp_path: Path) -> None:
    # the writer in the background (HUNG_TASK never returns), its output nowhere
    hung = (f"(echo HUNG_TASK > {DIRECT} &) </dev/null >/dev/null 2>&1; "
            "for i in $(seq 600); do dmesg | grep -q 'blocked for more than' && exit 0; "
            "sleep 0.2; done; exit 1")
    provoke = {"hung-task": hung, "warning": f"echo WARNING > {DIRECT}",
               "lockdep": f"{LOCKDEP_ON} && echo SPINLOCKUP > {DIRECT}",
               "kasan": f"echo SLAB_LINEAR_OVERFLOW > {DIRECT}; {KASAN_REPORTED}"}
    results, warnings = _run(debug_vm, tmp_path, OUTSIDE, provoke)
    # a clean boot (the fixture's): the kernel reported nothing before the run
    assert not [w for w in warnings if w.startswith("before: ")], warnings
    # the blocked task is the shell's this time; everything else as from inside
    _check(results, debug_vm, [(n, k, "INFO: task sh:" if k == "hung_task" else t)
                               for n, k, t in EXPECTED])
    assert not [w for w in warnings if w.startswith("kmemleak")], warnings


INSIDE = """
    - name: hung-task
      requires: {devices: 0}
      steps:
        - provoke_crash: {type: HUNG_TASK, wait: false}
        # the report comes a second or two later: until the next case starts, the
        # window is this case's
        - sleep: {duration: 15s}
    - name: after-hung-task
      requires: {devices: 0}
      steps:
        - sleep: {duration: 1s}
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


LEAK = """
    - name: leak
      requires: {devices: 0}
      kernel_watch: {allow: [warning]}  # kmem_cache_free's WARN on the wrong cache
      steps:
        - provoke_crash: {type: SLAB_FREE_CROSS}
    - name: after-leak
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
"""


QUIET = """
    - name: quiet
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
"""


@pytest.fixture(scope="module")
def inside_run(inside_vm: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[list[CaseResult], list[str]]:
    """The run of the splat cases (INSIDE), then of the leak (LEAK), in `inside_vm`."""
    return _run(inside_vm, tmp_path_factory.mktemp("inside"), INSIDE + LEAK)


def _the_leak(warnings: list[str]) -> str:
    """kmemleak's report of the run: exactly the one object LEAK's case leaked."""
    [leaks] = [w for w in warnings if w.startswith("kmemleak")]
    assert leaks.startswith("kmemleak: 1 object(s): unreferenced object 0x"), leaks
    assert "(size 64):" in leaks and "lkdtm_SLAB_FREE_CROSS" in leaks, leaks
    return leaks


def test_splats_a_case_provokes_itself_are_its_errors(inside_vm: Any,
                                                      inside_run: tuple[list[CaseResult],
                                                                        list[str]]) -> None:
    results, warnings = inside_run
    assert not [w for w in warnings if w.startswith("before: ")], warnings
    _check(results, inside_vm, EXPECTED)
    # the kernel's answer to a crash type LKDTM does not know (LEAK's two cases follow)
    assert (results[-3].scenario, results[-3].outcome.value) == ("unknown-type", "pass")
    # the writer LKDTM keeps blocked was no process of the case's: nothing left behind
    assert "left behind" not in results[0].message
    # nothing of this leaked: kmemleak's two scans at the run's end report the one
    # object of the leak case after these, and nothing else
    _the_leak(warnings)


def test_kmemleak_reports_a_real_leak_as_the_runs(inside_vm: Any,
                                                  inside_run: tuple[list[CaseResult],
                                                                    list[str]],
                                                  tmp_path: Path) -> None:
    results, warnings = inside_run
    assert [(r.scenario, r.outcome.value) for r in results[-2:]] == [("leak", "pass"),
                                                                     ("after-leak", "pass")]
    [warn] = results[-2].kernel_splats
    assert warn["kind"] == "warning" and warn["allowed"]
    assert "object belongs to different cache lkdtm-heap-a" in warn["text"]
    leaks = _the_leak(warnings)
    report = leaks.split(": ", 2)[2]
    # the reports carry it as the run's
    run = RunResult(cases=results, duration=10.0,
                    properties={"kernel": inside_vm.kernel_release, "kmemleak": report})
    root = assert_valid_junit(junit_document(run))
    assert any(p.get("name") == "kmemleak" and "lkdtm_SLAB_FREE_CROSS" in p.get("value", "")
               for p in root.iter("property"))
    doc = json.loads(json_document(run))
    assert is_json_report(doc) and doc["properties"]["kmemleak"] == report

    # a second run in the same VM leaks nothing: the leak above is not its
    results, warnings = _run(inside_vm, tmp_path, QUIET)
    assert [(r.scenario, r.outcome.value) for r in results] == [("quiet", "pass")]
    assert not [w for w in warnings if w.startswith("kmemleak")], warnings
    # ... and says what the first run's splats leave it unable to see
    before = [w for w in warnings if w.startswith("before: ")]
    assert "before: lockdep is off (debug_locks 0) before this run: it shows no lockdep " \
        "report" in before, before
    assert "before: KASAN reported before this run and reports once per boot (no " \
        "kasan_multi_shot): this run shows no KASAN report" in before, before
    assert any(w.startswith("before: kernel kasan before this run: BUG: KASAN: "
                            "slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW") for w in before)
