"""The kernel watch's own logic: cutting a log into splats, what a case declares, taint,
the result it makes, the order results are sent in, and how reports show it.

The samples follow the kernel's printk formats (7.2: kernel/panic.c __warn,
kernel/locking/lockdep.c, mm/kasan/report.c, kernel/hung_task.c, mm/kmemleak.c);
tests/data/kmsg/ holds splats recorded in the testbed (LKDTM WARNING and HUNG_TASK,
our default kernel, 2026-12-05). That the watch catches
real splats while a case runs is tested in the testbed (tests/testbed/test_kernel_watch_in_testbed.py).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.report.console import Console
from vfio_scenario.report.describe import failure_message
from vfio_scenario.report.html import html_document
from vfio_scenario.report.jsonout import json_document
from vfio_scenario.report.junit import junit_document
from vfio_scenario.report.ktap import ktap_document
from vfio_scenario.results import CaseResult, Outcome, RunResult
from vfio_scenario.run import kernel_watch
from vfio_scenario.run.kernel_watch import Splat, apply, find_splats, judge
from vfio_scenario.uapi.kmsg import TAINT_FLAGS, Record, parse_record

from tests.helpers.reports import assert_valid_junit
from tests.helpers.scenarios import compile_text

DATA = Path(__file__).resolve().parent.parent / "data" / "kmsg"


def records(text: str, start_usec: int = 1_000_000, step_usec: int = 100) -> list[Record]:
    lines = textwrap.dedent(text).strip("\n").split("\n")
    return [Record(4, i, start_usec + i * step_usec, line) for i, line in enumerate(lines)]


def recorded(name: str) -> list[Record]:
    """A /dev/kmsg capture from the testbed: each raw record as a JSON string per line."""
    return [parse_record(json.loads(line)) for line in (DATA / name).read_text().splitlines()]


WARN = """\
    vfio-pci 0000:00:03.0: enabling device (0000 -> 0003)
    ------------[ cut here ]------------
    WARNING: drivers/vfio/vfio_main.c:123 at vfio_thing+0x1f/0x40, CPU#0: python3/93
    CPU: 0 UID: 0 PID: 93 Comm: python3 Not tainted 7.2.13-vfio-scenario #1
    RIP: 0010:vfio_thing+0x1f/0x40
    Call Trace:
     <TASK>
     vfio_device_fops_unl_ioctl+0x50/0x80
     __x64_sys_ioctl+0x8a/0xc0
     </TASK>
    ---[ end trace 0000000000000000 ]---
    vfio-pci 0000:00:03.0: resetting
"""

LOCKDEP = """\
    ======================================================
    WARNING: possible circular locking dependency detected
    7.2.13-vfio-scenario #1 Not tainted
    ------------------------------------------------------
    python3/93 is trying to acquire lock:
    ffff8880041e4a28 (&vdev->memory_lock){++++}-{4:4}, at: vfio_pci_mmap_huge_fault+0x4a/0x1b0
    stack backtrace:
    Call Trace:
     <TASK>
     dump_stack_lvl+0x5d/0x80
     </TASK>
    vfio-pci 0000:00:03.0: something after
"""

KASAN = """\
    ==================================================================
    BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW+0x2b/0x40
    Write of size 1 at addr ffff888004a8a800 by task sh/101
    Call Trace:
     <TASK>
     kasan_report+0xa7/0xe0
     </TASK>
    Allocated by task 101:
     kasan_save_stack+0x1c/0x40
    ==================================================================
    Disabling lock debugging due to kernel taint
"""


def test_a_warn_is_one_splat_from_cut_here_to_end_trace() -> None:
    [splat] = find_splats(records(WARN))
    assert splat.kind == "warning"
    assert splat.title == ("WARNING: drivers/vfio/vfio_main.c:123 at vfio_thing+0x1f/0x40, "
                           "CPU#0: python3/93")
    lines = splat.text.split("\n")
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[-1] == "---[ end trace 0000000000000000 ]---"
    assert "resetting" not in splat.text and "enabling device" not in splat.text


def test_a_warns_message_between_cut_here_and_its_warning_line_is_part_of_it() -> None:
    # mm/slub.c's WARN_ONCE(cachep != s, "kmem_cache_free(%s, %p): object belongs to
    # different cache %s\n", …), as the debug kernel logged it for LKDTM's SLAB_FREE_CROSS
    text = WARN.replace("    WARNING: drivers/vfio", "    kmem_cache_free(lkdtm-heap-b, "
                        "ff1100014eb5c000): object belongs to different cache lkdtm-heap-a\n"
                        "    WARNING: drivers/vfio")
    [splat] = find_splats(records(text))
    assert splat.kind == "warning" and splat.title.startswith("WARNING: drivers/vfio/")
    assert splat.text.split("\n")[:2] == [
        "------------[ cut here ]------------",
        ("kmem_cache_free(lkdtm-heap-b, ff1100014eb5c000): object belongs to different cache "
        "lkdtm-heap-a")]
    # a `cut here` no header follows within a few lines opens nothing
    stray = "------------[ cut here ]------------\n" + "\n".join(f"line {i}" for i in range(12))
    assert find_splats(records(stray)) == []


def test_a_recorded_lkdtm_warning_is_one_warning_without_lkdtms_own_line() -> None:
    [splat] = find_splats(recorded("lkdtm-warning.jsonl"))
    assert (splat.kind, splat.title) == (
        "warning", ("WARNING: drivers/misc/lkdtm/bugs.c:164 at lkdtm_WARNING+0x8/0xb, CPU#0: "
        "python/58"))
    lines = splat.text.split("\n")
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[-1] == "---[ end trace 0000000000000000 ]---" and " </TASK>" in lines
    assert "Performing direct entry" not in splat.text


def test_a_recorded_hung_task_reported_four_times_is_four_splats() -> None:
    splats = find_splats(recorded("lkdtm-hung-task.jsonl"))
    assert [(s.kind, s.title) for s in splats] == [
        ("hung_task", f"INFO: task sh:60 blocked for more than {n} seconds.") for n in (1, 2, 3, 4)]
    for s in splats:
        assert s.text.endswith(" </TASK>") and " ? lkdtm_HUNG_TASK+0x15/0x17" in s.text


def test_lockdep_ends_with_its_stack_and_kasan_with_its_closing_rule() -> None:
    [lockdep] = find_splats(records(LOCKDEP))
    assert lockdep.kind == "lockdep"
    assert lockdep.title == "WARNING: possible circular locking dependency detected"
    assert lockdep.text.startswith("=====") and lockdep.text.endswith("</TASK>")
    [kasan] = find_splats(records(KASAN))
    assert kasan.kind == "kasan"
    assert kasan.text.split("\n")[-1].startswith("=====")
    assert "Allocated by task 101" in kasan.text and "Disabling" not in kasan.text


@pytest.mark.parametrize(("line", "kind"), [
    ("INFO: task python3:93 blocked for more than 2 seconds.", "hung_task"),
    ("INFO: task sh:101 blocked in I/O wait for more than 1 seconds.", "hung_task"),
    ("kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)", "kmemleak"),
    ("rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu_stall"),
    ("BUG: sleeping function called from invalid context at mm/slab.h:1", "atomic_sleep"),
    ("UBSAN: array-index-out-of-bounds in drivers/misc/lkdtm/bugs.c:400:16", "ubsan"),
    ("BUG: KFENCE: out-of-bounds read in lkdtm_x+0x1/0x2", "kfence"),
    ("Oops: general protection fault, probably for non-canonical address", "oops"),
    ("BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops"),
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]", "lockup"),
    ("BUG: Bad page state in process sh  pfn:04a8a", "bug"),
    ("WARNING: suspicious RCU usage", "lockdep"),
    ("WARNING: held lock freed!", "lockdep"),
])
def test_each_kind_is_named_by_its_first_line(line: str, kind: str) -> None:
    [splat] = find_splats(records(f"unrelated\n{line}\nmore detail"))
    assert (splat.kind, splat.title) == (kind, line)


def test_a_bare_call_trace_takes_the_dump_stack_lines_before_it() -> None:
    [splat] = find_splats(records("""\
        something harmless
        CPU: 0 UID: 0 PID: 1 Comm: sh Not tainted 7.2.13 #1
        Hardware name: QEMU Standard PC (Q35 + ICH9, 2009)
        Call Trace:
         <TASK>
         dump_stack_lvl+0x5d/0x80
         </TASK>
        after"""))
    assert splat.kind == "call_trace"
    assert splat.text.split("\n")[0].startswith("CPU: 0") and splat.text.endswith("</TASK>")


def test_quiet_log_ends_a_report_without_an_end_marker_and_ordinary_lines_are_no_splat() -> None:
    recs = records("WARNING: at foo+0x1/0x2, CPU#0: sh/1\nRIP: 0010:foo+0x1/0x2")
    recs.append(Record(6, 99, recs[-1].usec + 3_000_000, "vfio-pci 0000:00:03.0: later"))
    [splat] = find_splats(recs)
    assert "later" not in splat.text
    assert find_splats(records("vfio-pci 0000:00:03.0: enabling\nDMAR: DRHD: handling fault")) \
        == []


def test_kmsg_escapes_and_device_dictionaries_are_undone() -> None:
    rec = parse_record("4,57,1234567,-;first\\x0asecond\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:03.0\n")
    assert rec == Record(4, 57, 1234567, "first\\x0asecond")
    [splat] = find_splats([Record(4, 1, 1, "WARNING: at x+0x1/0x2\\x0aRIP: 0010:x")])
    assert splat.text == "WARNING: at x+0x1/0x2\nRIP: 0010:x"


def case_of(text: str) -> Case:
    return compile_text(text, "scen/w.yaml")[0]


PLAIN = """\
name: plain
requires: {devices: 0}
steps:
  - sleep: {duration: 1ms}
"""


def test_a_declared_kind_or_an_expect_dmesg_pattern_allows_a_splat() -> None:
    warn = find_splats(records(WARN))
    assert [s.allowed for s in judge(warn, 0, 0x200, case_of(PLAIN))] == [False]
    allowing = case_of(PLAIN.replace("steps:", "kernel_watch: {allow: [warning]}\nsteps:"))
    assert allowing.kernel_watch_allow == ("warning",)
    assert [s.allowed for s in judge(find_splats(records(WARN)), 0, 0x200, allowing)] == [True]
    expecting = case_of(PLAIN + "  - expect_dmesg: {pattern: 'at vfio_thing'}\n")
    assert [s.allowed for s in judge(find_splats(records(WARN)), 0, 0x200, expecting)] == [True]
    other = case_of(PLAIN + "  - expect_dmesg: {pattern: 'DMAR'}\n")
    assert [s.allowed for s in judge(find_splats(records(WARN)), 0, 0x200, other)] == [False]
    # a line logged around the splat (in the window, not in the splat) declares nothing
    around = case_of(PLAIN + "  - expect_dmesg: {pattern: 'enabling device'}\n")
    assert [s.allowed for s in judge(find_splats(records(WARN)), 0, 0x200, around)] == [False]


def test_new_taint_no_splat_explains_is_a_taint_splat() -> None:
    warn = find_splats(records(WARN))
    # the WARN explains W (bit 9); an O (bit 12) nobody printed is its own finding
    judged = judge(warn, 0, (1 << 9) | (1 << 12), case_of(PLAIN))
    assert [(s.kind, s.title) for s in judged] == [
        ("warning", warn[0].title),
        ("taint", "kernel tainted during the case: O (mask 0x0 -> 0x1200)")]
    assert judge([], 1 << 9, 1 << 9, case_of(PLAIN)) == []  # an old taint is no news


@pytest.mark.parametrize(("kind", "letters"), [
    ("warning", "W"), ("oops", "D"), ("kasan", "B"), ("kfence", "B"), ("lockup", "L"),
    ("atomic_sleep", "W")])
def test_a_splat_explains_the_taint_it_sets(kind: str, letters: str) -> None:
    mask = sum(1 << TAINT_FLAGS.index(c) for c in letters)
    splat = Splat(kind, "x", "x")
    assert [s.kind for s in judge([splat], 0, mask, case_of(PLAIN))] == [kind]
    other = Splat("lockdep", "x", "x")  # lockdep sets no taint bit
    assert [s.kind for s in judge([other], 0, mask, case_of(PLAIN))] == ["lockdep", "taint"]


def test_the_located_error_for_an_unknown_kind() -> None:
    doc, _ = load_text(PLAIN.replace(
        "steps:", "kernel_watch:\n  allow: [warning, lockdepp]\nsteps:"), "scen/w.yaml")
    compiled = compile_documents([doc])
    [error] = [str(e) for e in compiled.errors]
    assert error.startswith("scen/w.yaml:4:20: `allow`: 'lockdepp' is not a kind of kernel "
                            "splat (did you mean lockdep?)")


def result(outcome: Outcome = Outcome.PASS, message: str = "") -> CaseResult:
    return CaseResult(case_id="scen/w.yaml::plain", file="scen/w.yaml", scenario="plain",
                      outcome=outcome, message=message)


def test_an_undeclared_splat_makes_the_case_an_error_carrying_the_whole_splat() -> None:
    splats = judge(find_splats(records(WARN)), 0, 0x200, case_of(PLAIN))
    r = apply(result(), splats)
    assert r.outcome is Outcome.ERROR
    assert r.message == ("kernel warning during the case: WARNING: drivers/vfio/vfio_main.c:123 "
                         "at vfio_thing+0x1f/0x40, CPU#0: python3/93")
    assert splats[0].text in r.log
    assert r.kernel_splats == [splats[0].to_dict()]
    assert CaseResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    failed = apply(result(Outcome.FAIL, "step 1 `x` (w.yaml:3): expected ok, got EINVAL"),
                   judge(find_splats(records(WARN)), 0, 0x200, case_of(PLAIN)))
    assert failed.outcome is Outcome.ERROR
    assert failed.message.endswith("; the case also failed: step 1 `x` (w.yaml:3): expected ok, "
                                   "got EINVAL")


def test_an_allowed_splat_is_recorded_and_the_case_keeps_its_outcome() -> None:
    allowing = case_of(PLAIN.replace("steps:", "kernel_watch: {allow: [warning]}\nsteps:"))
    r = apply(result(), judge(find_splats(records(WARN)), 0, 0x200, allowing))
    assert r.outcome is Outcome.PASS and r.kernel_splats[0]["allowed"] is True
    assert "--- kernel warning (allowed by the scenario) ---" in r.log


def splat_run() -> RunResult:
    bad = apply(result(), judge(find_splats(records(WARN)), 0, 0x200, case_of(PLAIN)))
    good = CaseResult(case_id="scen/w.yaml::next", file="scen/w.yaml", scenario="next",
                      outcome=Outcome.PASS)
    return RunResult(cases=[bad, good], duration=1.0)


def test_reports_name_the_splat_and_its_case_and_junit_stays_valid(
        capsys: pytest.CaptureFixture[str]) -> None:
    run = splat_run()
    assert failure_message(run.cases[0]).startswith("kernel warning during the case: WARNING:")
    root = assert_valid_junit(junit_document(run))
    error = root.find(".//testcase[@name='plain']/error")
    assert error is not None and error.get("message", "").startswith("kernel warning during")
    assert "---[ end trace 0000000000000000 ]---" in (error.text or "")
    ktap = ktap_document(run).splitlines()
    assert ("# kernel warning in scen/w.yaml::plain: WARNING: drivers/vfio/vfio_main.c:123 at "
            "vfio_thing+0x1f/0x40, CPU#0: python3/93") in ktap
    page = html_document(run)
    assert "kernel warning during the case: WARNING: drivers/vfio/vfio_main.c:123" in page
    assert "---[ end trace 0000000000000000 ]---" in page
    [case] = [c for c in json.loads(json_document(run))["cases"] if c["scenario"] == "plain"]
    assert case["kernel_splats"][0]["title"].startswith("WARNING: drivers/vfio/vfio_main.c:123")
    console = Console(sys.stdout, total=2)
    console.summary(run)
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["1 kernel splat(s) (whole reports in the case logs):",
                       ("  kernel warning in scen/w.yaml::plain: WARNING: drivers/vfio/"
                        "vfio_main.c:123 at vfio_thing+0x1f/0x40, CPU#0: python3/93")]


class FakeWatch:
    """Stands in for /dev/kmsg: `finish` marks the case it is told to."""

    log: ClassVar[list[str]] = []
    splat_in: ClassVar[str] = ""
    leaked: ClassVar[str] = ""
    before: ClassVar[list[str]] = []

    @classmethod
    def open(cls) -> FakeWatch:
        return cls()

    def begin(self) -> None:
        self.log.append("begin")

    def finish(self, r: CaseResult, case: Case) -> CaseResult:
        self.log.append(f"finish {case.scenario}")
        if case.scenario == self.splat_in:
            return apply(r, [Splat("warning", "WARNING: at x", "WARNING: at x")])
        return r

    def leaks(self, beat: Any = None) -> str:
        self.log.append("leaks")
        beat()  # a scan that took a while
        return self.leaked

    def close(self) -> None:
        self.log.append("close")


def run_two(monkeypatch: pytest.MonkeyPatch, watch: bool, leaked: str = "",
            before: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    from vfio_scenario.run.interpreter import RunOptions
    from vfio_scenario.run.plan import HostCaps, PlannedCase
    from vfio_scenario.run.session import run_planned

    monkeypatch.setattr(kernel_watch, "KernelWatch", FakeWatch)
    FakeWatch.log.clear()
    FakeWatch.splat_in = "first"
    FakeWatch.leaked = leaked
    FakeWatch.before = list(before)
    cases = [case_of(PLAIN.replace("plain", name)) for name in ("first", "second")]
    events: list[dict[str, Any]] = []
    caps = HostCaps(kernel_release="7.2", devices=[])
    run_planned([PlannedCase(c, []) for c in cases], caps, RunOptions(kernel_watch=watch),
                events.append)
    return events


def test_a_result_is_sent_when_the_next_case_starts_with_the_lines_until_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = run_two(monkeypatch, watch=True)
    assert [(e["event"], e.get("id") or e["result"]["scenario"]) for e in events
            if e["event"] != "kmemleak_scan"] == [
        ("start", "scen/w.yaml::first"), ("result", "first"),
        ("start", "scen/w.yaml::second"), ("result", "second")]
    assert [e["result"]["outcome"] for e in events if e["event"] == "result"] == ["error", "pass"]
    assert FakeWatch.log == ["begin", "finish first", "begin", "finish second", "leaks",
                             "close"]


def test_kmemleak_finds_at_the_end_of_the_run_are_the_runs_and_in_its_reports(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vfio_scenario.known_issues import KnownIssues
    from vfio_scenario.report.jsonout import json_report
    from vfio_scenario.report.sink import ReportSink
    from vfio_scenario.run.dispatch import RunEvents

    leak = ('unreferenced object 0xffff888004a8a800 (size 64):\n  comm "sh", pid 101\n'
            'unreferenced object 0xffff888004a8a900 (size 64):\n  comm "sh", pid 101')
    events = run_two(monkeypatch, watch=True, leaked=leak)
    assert events[-2:] == [{"event": "kmemleak_scan"},
                           {"event": "kmemleak", "objects": 2, "report": leak}]
    # what the host does with it: a warning, and the run's `kmemleak` property
    sink = ReportSink(stream=sys.stdout)
    dispatch = RunEvents(sink, KnownIssues())
    dispatch(events[-1])
    assert "vfio-scenario: warning: kmemleak: 2 object(s) leaked during the run (not tied " \
        f"to one case):\n{leak}" in capsys.readouterr().err
    assert json_report(sink.run)["properties"]["kmemleak"] == leak
    dispatch(events[-1])  # a second VM's run (--jobs): kept after the first
    assert sink.run.properties["kmemleak"] == f"{leak}\n{leak}"


REPORT = """unreferenced object 0xff1100014eb5c000 (size 64):
  comm "sh", pid 71, jiffies 4294931000
  hex dump (first 32 bytes):
    79 56 34 12 00 00 00 00 00 00 00 00 00 00 00 00  yV4.............
  backtrace (crc 5b1e4d2a):
    kmem_cache_alloc_noprof+0x1d5/0x2f0
    lkdtm_SLAB_FREE_CROSS+0x1a/0x60
unreferenced object 0xff1100014e000000 (size 32):
  comm "swapper/0", pid 1, jiffies 4294892400
  backtrace (crc 0):
    kmalloc_trace+0x1/0x2
"""


def test_only_objects_allocated_since_the_run_began_are_its_leaks() -> None:
    [since_run] = kernel_watch.since_jiffies(REPORT, 4294930000).split("\nunreferenced")
    assert since_run.startswith("unreferenced object 0xff1100014eb5c000 (size 64):")
    assert since_run.endswith("lkdtm_SLAB_FREE_CROSS+0x1a/0x60")
    assert kernel_watch.since_jiffies(REPORT, None) == REPORT.rstrip("\n")
    assert kernel_watch.since_jiffies("", 1) == ""


def test_the_run_scans_twice_5_s_apart_and_reads_jiffies_where_the_scheduler_says(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sched = tmp_path / "sched-debug"
    sched.write_text("Sched Debug Version: v0.11, 7.2.13-vfio-scenario-debug #2\n"
                     "ktime                                   : 157452.272000\n"
                     "jiffies                                 : 4294930000\n")
    monkeypatch.setattr(kernel_watch, "SCHED_DEBUG", str(sched))
    assert kernel_watch._jiffies() == 4294930000
    monkeypatch.setattr(kernel_watch, "SCHED_DEBUG", str(tmp_path / "absent"))
    assert kernel_watch._jiffies() is None

    commands: list[tuple[str, float]] = []
    clock = [100.0]
    monkeypatch.setattr(kernel_watch, "_clock", lambda: clock[0])
    monkeypatch.setattr(kernel_watch, "_sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    def command(text: str) -> bool:
        commands.append((text, clock[0]))
        clock[0] += 1.0  # a scan takes a while
        return True
    monkeypatch.setattr(kernel_watch, "_kmemleak", command)
    kmemleak = tmp_path / "kmemleak"
    kmemleak.write_text(REPORT)
    monkeypatch.setattr(kernel_watch, "KMEMLEAK", str(kmemleak))
    watch = object.__new__(kernel_watch.KernelWatch)
    watch.kmemleak, watch.since = True, 4294930000
    assert watch.leaks().startswith("unreferenced object 0xff1100014eb5c000")
    assert commands == [("scan", 100.0), ("scan", 105.0)]


def test_a_long_scan_beats_so_the_host_does_not_take_the_guest_for_hung(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()
    monkeypatch.setattr(kernel_watch, "BEAT", 0.01)
    monkeypatch.setattr(kernel_watch, "_kmemleak", lambda command: release.wait(5.0))
    beats: list[int] = []

    def beat() -> None:
        beats.append(1)
        if len(beats) == 3:
            release.set()  # the scan ends after three beats
    assert kernel_watch._scan(beat) is True
    assert len(beats) >= 3


def test_no_kernel_watch_opens_no_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    events = run_two(monkeypatch, watch=False)
    assert [e["result"]["outcome"] for e in events if e["event"] == "result"] == ["pass", "pass"]
    assert FakeWatch.log == []


def test_run_command_line_has_no_kernel_watch_switch() -> None:
    from vfio_scenario.cli import build_parser

    args = build_parser().parse_args(["run", "x.yaml"])
    assert args.kernel_watch is True
    assert build_parser().parse_args(["run", "--no-kernel-watch", "x.yaml"]).kernel_watch is False


def test_a_window_whose_records_the_log_ring_overwrote_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/kmsg answers EPIPE when records were overwritten before they were read: the
    case's log and properties say its kernel verdict is incomplete; a window read whole
    says nothing."""
    import errno

    from vfio_scenario.uapi import kmsg

    answers: list[bytes | OSError] = [OSError(errno.EPIPE, "Broken pipe"),
                                      b"6,7,1000,-;an ordinary line", BlockingIOError()]

    def read(fd: int, n: int) -> bytes:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    monkeypatch.setattr(kernel_watch, "_read_taint", lambda: None)
    watch = object.__new__(kernel_watch.KernelWatch)
    watch.reader = object.__new__(kmsg.KmsgReader)
    watch.reader.fd, watch.reader.lost = -1, 0
    watch.taint = None
    case = case_of(PLAIN)
    with monkeypatch.context() as m:
        m.setattr("os.read", read)
        first = watch.finish(result(), case)
        answers.append(BlockingIOError())
        whole = watch.finish(result(), case)
    assert first.outcome is Outcome.PASS
    assert first.properties["kernel_log_overruns"] == "1"
    assert "the kernel's log overwrote records of this case before they were read" in first.log
    assert "kernel_log_overruns" not in whole.properties and whole.log == ""


def test_what_the_kernel_reported_before_the_run_is_the_runs_warning_and_property(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A splat already in the log when the run begins (at boot: the debug kernel under TCG
    once reported a KASAN wild-memory-access at 0.018 s) is no case's; lockdep turned off
    and KASAN's one report used mean this run cannot show those kinds: the run says so."""
    from vfio_scenario.known_issues import KnownIssues
    from vfio_scenario.report.jsonout import json_report
    from vfio_scenario.report.sink import ReportSink
    from vfio_scenario.run.dispatch import RunEvents

    stats, cmdline = tmp_path / "lockdep_stats", tmp_path / "cmdline"
    monkeypatch.setattr(kernel_watch, "LOCKDEP_STATS", str(stats))
    monkeypatch.setattr(kernel_watch, "CMDLINE", str(cmdline))
    monkeypatch.setattr(kernel_watch, "_whole_log", lambda: records(KASAN))
    stats.write_text(" lock-classes:   1 [max: 8192]\n debug_locks:   0\n")
    cmdline.write_text("console=ttyS0 quiet\n")
    before = kernel_watch.before_run(0x20)
    assert before == [
        ("kernel kasan before this run: BUG: KASAN: slab-out-of-bounds in "
        "lkdtm_SLAB_LINEAR_OVERFLOW+0x2b/0x40"),
        "lockdep is off (debug_locks 0) before this run: it shows no lockdep report",
        ("KASAN reported before this run and reports once per boot (no kasan_multi_shot): "
        "this run shows no KASAN report"),
        "the kernel is tainted before this run: B (mask 0x20)"]
    # with kasan_multi_shot KASAN reports again; lockdep on; a clean log: nothing to say
    cmdline.write_text("console=ttyS0 kasan_multi_shot\n")
    stats.write_text(" debug_locks:   1\n")
    assert kernel_watch.before_run(0x20)[1:] == [
        "the kernel is tainted before this run: B (mask 0x20)"]
    monkeypatch.setattr(kernel_watch, "_whole_log", lambda: records("ordinary line"))
    assert kernel_watch.before_run(0) == []
    stats.unlink()  # no lockdep in this kernel
    assert kernel_watch.before_run(None) == []

    # the guest sends them before the first case; the host warns and keeps them
    events = run_two(monkeypatch, watch=True, before=tuple(before[:2]))
    assert events[0] == {"event": "kernel_before", "problems": before[:2]}
    assert next(e["event"] for e in run_two(monkeypatch, watch=True)) == "start"
    sink = ReportSink(stream=sys.stdout)
    dispatch = RunEvents(sink, KnownIssues())
    dispatch(events[0])
    assert f"vfio-scenario: warning: {before[1]}" in capsys.readouterr().err
    assert json_report(sink.run)["properties"]["kernel_before_run"] == "\n".join(before[:2])
    dispatch(events[0])  # a second VM's (--jobs): kept after the first
    assert sink.run.properties["kernel_before_run"] == "\n".join(before[:2] * 2)
