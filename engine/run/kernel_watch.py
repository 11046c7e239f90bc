"""The kernel watch: every case's kernel log scanned for splats, its taint compared.

One /dev/kmsg reader lives as long as the run. A case's window opens when the case
starts and closes when the next one starts (or the run ends), so lines that arrive
after a case ended but before the next began belong to it. In the window the log is
cut into splats — a WARN from `------------[ cut here ]` to `---[ end trace ]---`, a
KASAN report between its `====` lines, a lockdep or hung-task report up to the end of
its stack — each of a named kind (`SPLAT_KINDS`, the names `kernel_watch: {allow: …}`
takes). A splat the case did not declare (its kind in `kernel_watch.allow`, or a line
of it matching one of the case's `expect_dmesg` patterns), or a taint bit no splat of
the window explains, makes the case an ERROR carrying the whole splat.

This runs where the cases run (the testbed's guest, or the host with `--device`), with
the standard library only; symbolizing with the kernel's vmlinux is the host's part
(`symbolize`), as only the host knows which kernel it built.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.language.cases import flat_steps
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.uapi.kmsg import TAINT_FLAGS, KmsgReader, Record, taint_letters, tainted

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case

# kind → what a report of that kind looks like: the line it starts with (kernel sources,
# 7.2: kernel/panic.c, kernel/locking/lockdep.c, mm/kasan/report.c, mm/kfence/report.c,
# lib/ubsan.c, kernel/hung_task.c, kernel/rcu/tree_stall.h, kernel/watchdog.c,
# mm/kmemleak.c, arch/x86/kernel/dumpstack.c). First match wins.
_HEADERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lockdep", (
        r"^WARNING: (possible circular locking dependency|possible recursive locking",
        r"inconsistent lock state|possible irq lock inversion|\S+-safe -> \S+-unsafe",
        r"bad unlock balance|held lock freed|suspicious RCU usage",
        r"lock held when returning to user space|\S+ still has locks held",
        r"Nested lock was not taken|chain_key collision|bad contention)",
        r"^INFO: trying to register non-static key")),
    ("atomic_sleep",
     (r"^BUG: (sleeping function called from invalid context|scheduling while atomic)",)),
    ("kasan", (r"^BUG: KASAN: ",)),
    ("kfence", (r"^BUG: KFENCE: ",)),
    ("ubsan", (r"^UBSAN: ",)),
    ("hung_task", (r"^INFO: task .+ blocked.* for more than",)),
    ("rcu_stall", (r"^rcu: INFO: \S+ (detected stalls|self-detected stall)",)),
    ("lockup", (r"BUG: soft lockup", r"Watchdog detected hard LOCKUP")),
    ("oops", (r"^Oops: ", r"^BUG: (kernel NULL pointer dereference|unable to handle)",
              r"^kernel BUG at ", r"general protection fault")),
    ("bug", (r"^BUG: ",)),
    ("warning", (r"^WARNING: ",)),
    ("kmemleak", (r"^kmemleak: \d+ new suspected memory leaks?",)),
    ("call_trace", (r"^Call Trace:",)),
)
# the alternatives of one kind are joined with `|` (a group may span two of them)
_HEADER_RX = [(kind, re.compile("|".join(alts))) for kind, alts in _HEADERS]

#: Every kind of splat the watch reports, plus `taint` (a taint bit no splat explains):
#: the names `kernel_watch: {allow: […]}` accepts.
SPLAT_KINDS = (*(kind for kind, _ in _HEADERS), "taint")

# taint bits a splat of a kind sets (so an allowed WARN's `W` is no second problem)
_KIND_TAINT = {"warning": "W", "oops": "D", "bug": "BD", "kasan": "B", "kfence": "B",
               "lockup": "L", "atomic_sleep": "W"}

_OPENER_CUT = re.compile(r"^-+\[ cut here \]-+$")
_OPENER_RULE = re.compile(r"^={20,}$")
_END_TRACE = re.compile(r"^---\[ end (trace|Kernel panic)")
_END_OF_STACK = re.compile(r"^\s*</TASK>\s*$")
_STACK_ENDS = {"lockdep", "atomic_sleep", "hung_task", "rcu_stall", "lockup", "bug",
               "call_trace"}
_DUMP_PREFIX = re.compile(r"^(CPU: \d+ |Hardware name: )")
GAP_USEC = 2_000_000  # a quiet log for this long ends a splat that had no end marker
MAX_LINES = 600
MAX_MESSAGE = 8  # lines of a WARN's message kept between `cut here` and `WARNING:`
_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def _unescape(text: str) -> list[str]:
    """/dev/kmsg text as printed: \\xNN escapes undone, embedded newlines split."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).split("\n")


@dataclass
class Splat:
    kind: str
    title: str  # the line that says what happened
    text: str  # the whole report, one log line per line
    allowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "text": self.text,
                "allowed": self.allowed}


def _header_kind(line: str) -> str | None:
    for kind, rx in _HEADER_RX:
        if rx.search(line):
            return kind
    return None


def find_splats(records: Iterable[Record]) -> list[Splat]:
    """The splats in a stretch of kernel log, in order."""
    reader = _SplatReader()
    last_usec = -1
    for record in records:
        if last_usec >= 0 and record.usec - last_usec > GAP_USEC:
            reader.close()  # a silence ends a report
        last_usec = record.usec
        for line in _unescape(record.text):
            reader.line(line)
    reader.close()
    return reader.splats


class _SplatReader:
    """The state of find_splats between lines: the report being read, if any."""

    def __init__(self) -> None:
        self.splats: list[Splat] = []
        self.current: list[str] = []
        self.kind = ""
        self.ruled = False  # opened by a `====` line: a KASAN/KFENCE/UBSAN report closes with one
        self.opener: str | None = None
        # lines between a `cut here` and its header: a WARN(cond, fmt, …)'s message
        self.message: list[str] = []
        self.before: list[str] = []  # recent lines outside a splat (dump_stack's CPU:/Hardware name:)

    def close(self) -> None:
        if self.current:
            title = next((ln for ln in self.current if _header_kind(ln) == self.kind),
                         self.current[0])
            self.splats.append(Splat(self.kind, title.strip(), "\n".join(self.current)))
        self.current, self.kind = [], ""

    def line(self, line: str) -> None:
        found = _header_kind(line)
        if self.current and found and found != "call_trace" and \
                not (self.kind == found and line in self.current[-1:]):
            self.close()  # a new report begins
        if not self.current:
            self.outside(line, found)
            return
        self.current.append(line)
        if self.ends(line):
            self.close()

    def outside(self, line: str, found: str | None) -> None:
        """A line while no report is open: an opener, a line before one, or a header."""
        if _OPENER_CUT.match(line) or _OPENER_RULE.match(line):
            self.opener, self.message = line, []
            return
        if found is None:
            if self.opener is not None and _OPENER_CUT.match(self.opener) and \
                    len(self.message) < MAX_MESSAGE:
                self.message.append(line)  # a WARN's message comes before its WARNING: line
                return
            if self.opener is not None:
                self.before = [*self.before, self.opener, *self.message]
                self.opener, self.message = None, []
            self.before = [*self.before, line][-3:]
            return
        self.kind = found
        self.ruled = self.opener is not None and _OPENER_RULE.match(self.opener) is not None
        lead = [ln for ln in self.before if _DUMP_PREFIX.match(ln)] \
            if found == "call_trace" else []
        self.current = [*lead, *([self.opener] if self.opener else []), *self.message, line]
        self.opener, self.message, self.before = None, [], []
        if found == "kmemleak":
            self.close()

    def ends(self, line: str) -> bool:
        return bool(_END_TRACE.match(line)
                    or (self.ruled and self.kind in ("kasan", "kfence", "ubsan")
                        and _OPENER_RULE.match(line))
                    or (self.kind in _STACK_ENDS and _END_OF_STACK.match(line))
                    or len(self.current) >= MAX_LINES)


def _taint_mask(letters: str) -> int:
    return sum(1 << TAINT_FLAGS.index(c) for c in letters)


def declared(case: Case) -> tuple[set[str], list[re.Pattern[str]]]:
    """What the case says it provokes: kinds it allows, its `expect_dmesg` patterns."""
    kinds = set(getattr(case, "kernel_watch_allow", ()) or ())
    patterns = [re.compile(getattr(s.args, "pattern", ""))
                for s in flat_steps((*case.steps, *case.teardown))
                if s.op == "expect_dmesg"]
    return kinds, patterns


def judge(splats: list[Splat], taint_before: int | None, taint_after: int | None,
          case: Case) -> list[Splat]:
    """Every splat of the window, marked allowed or not; a new taint bit no splat
    explains is a `taint` splat of its own."""
    out = list(splats)
    if taint_before is not None and taint_after is not None:
        added = taint_after & ~taint_before
        explained = 0
        for s in splats:
            explained |= _taint_mask(_KIND_TAINT.get(s.kind, ""))
        unexplained = added & ~explained
        if unexplained:
            title = (f"kernel tainted during the case: {taint_letters(unexplained)} "
                     f"(mask {taint_before:#x} -> {taint_after:#x})")
            out.append(Splat("taint", title, title))
    if not out:  # the common case: nothing to judge (what the case declares is not read)
        return out
    kinds, patterns = declared(case)
    for s in out:
        s.allowed = s.kind in kinds or any(p.search(line) for p in patterns
                                           for line in s.text.split("\n"))
    return out


def apply(result: CaseResult, splats: list[Splat]) -> CaseResult:
    """`result` with the window's splats attached; one not allowed makes it an ERROR."""
    if not splats:
        return result
    result.kernel_splats = [s.to_dict() for s in splats]
    bad = [s for s in splats if not s.allowed]
    for s in splats:
        state = "allowed by the scenario" if s.allowed else "not declared by the scenario"
        result.log += f"--- kernel {s.kind} ({state}) ---\n{s.text}\n"
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        earlier = ""
        if result.outcome in (Outcome.FAIL, Outcome.ERROR) and result.message:
            earlier = f"; the case also {result.outcome.value}ed: {result.message}"
        result.outcome = Outcome.ERROR
        result.message = f"kernel {first.kind} during the case: {first.title}{more}{earlier}"
    return result


LOCKDEP_STATS = "/proc/lockdep_stats"
CMDLINE = "/proc/cmdline"
_DEBUG_LOCKS = re.compile(r"^\s*debug_locks:\s+(\d+)\s*$", re.MULTILINE)


def before_run(taint: int | None) -> list[str]:
    """What the kernel reported before the run began, and what that leaves the run unable
    to see: no case's, so the run's warnings. Its log's splats so far; lockdep turned off
    (after its first report, an oops, or a taint that makes it unreliable, such as
    KASAN's: lib/debug_locks.c, kernel/panic.c add_taint), so this run shows no lockdep
    report; KASAN's report made (it reports once per boot unless `kasan_multi_shot` is on
    the command line: mm/kasan/report.c report_enabled); a taint mask that is not 0."""
    splats = find_splats(_whole_log())
    out = [f"kernel {s.kind} before this run: {s.title}" for s in splats]
    m = _DEBUG_LOCKS.search(_read_text(LOCKDEP_STATS) or "")
    if m and m.group(1) == "0":
        out.append("lockdep is off (debug_locks 0) before this run: it shows no lockdep "
                   "report")
    if any(s.kind == "kasan" for s in splats) and \
            "kasan_multi_shot" not in (_read_text(CMDLINE) or ""):
        out.append("KASAN reported before this run and reports once per boot (no "
                   "kasan_multi_shot): this run shows no KASAN report")
    if taint:
        out.append(f"the kernel is tainted before this run: {taint_letters(taint)} "
                   f"(mask {taint:#x})")
    return out


def _whole_log() -> list[Record]:
    """Every record still in the kernel's log ring (none when /dev/kmsg cannot be read)."""
    try:
        reader = KmsgReader(from_start=True)
    except VfioError:
        return []
    try:
        return reader.read()
    finally:
        reader.close()


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def note_lost(result: CaseResult, overruns: int) -> CaseResult:
    """`result` saying so when the kernel's log ring overwrote records of its window before
    the watch read them (/dev/kmsg's EPIPE, `overruns` times): a splat among those was
    not judged, so the case's kernel verdict is incomplete (its outcome stays)."""
    if overruns:
        result.properties["kernel_log_overruns"] = str(overruns)
        result.log += (f"--- kernel watch: the kernel's log overwrote records of this case "
                       f"before they were read ({overruns} time(s)); a splat among them was "
                       "not judged ---\n")
    return result


KMEMLEAK = "/sys/kernel/debug/kmemleak"
# the scheduler's debugfs header says what jiffies is now (kernel/sched/debug.c,
# `jiffies : N`): the clock kmemleak stamps each object's allocation with
SCHED_DEBUG = "/sys/kernel/debug/sched/debug"
_JIFFIES = re.compile(rb"^jiffies\s*:\s*(\d+)$", re.MULTILINE)
_OBJECT_JIFFIES = re.compile(r"^\s+comm \".*\", pid -?\d+, jiffies (\d+)$", re.MULTILINE)
# kmemleak reports an object only once it is this old (mm/kmemleak.c, MSECS_MIN_AGE)
KMEMLEAK_MIN_AGE = 5.0
_clock, _sleep = time.monotonic, time.sleep  # (a test's fake clock replaces these)


class KernelWatch:
    """The run's watch: `begin()` when a case starts, `finish(result, case)` when the next
    starts (or the run ends), `leaks()` when the run ends."""

    def __init__(self) -> None:
        self.reader = KmsgReader()
        self.taint = _read_taint()
        # a kernel with kmemleak (--kernel debug): what it suspected before the run is
        # not the run's (`clear`, and the jiffies the run began at: objects allocated
        # earlier, never scanned before, are left out); its automatic scan is off in
        # that kernel's config
        self.kmemleak = _kmemleak("clear")
        self.since = _jiffies() if self.kmemleak else None
        # what the kernel reported before the run (at boot, or in an earlier run)
        self.before = before_run(self.taint)

    @classmethod
    def open(cls) -> KernelWatch | None:
        try:
            return cls()
        except VfioError:
            return None  # no /dev/kmsg here (or no permission): nothing to watch

    def begin(self) -> None:
        """A case starts: its window opens where the previous one closed (`finish` read
        the taint mask then; nothing to do, which matters at ~20x TCG costs)."""

    def finish(self, result: CaseResult, case: Case) -> CaseResult:
        lost = self.reader.lost
        records = self.reader.read()
        after = _read_taint()
        splats = judge(find_splats(records), self.taint, after, case)
        self.taint = after
        return note_lost(apply(result, splats), self.reader.lost - lost)

    def leaks(self, beat: Callable[[], None] | None = None) -> str:
        """kmemleak's report of the objects allocated since the run began and leaked ("" when
        none, or no kmemleak here). kmemleak reports an object only when it is 5 s old
        and its contents are what they were at the previous scan (mm/kmemleak.c,
        kmemleak_scan: a changed object is scanned as referenced, once), so an object
        leaked during the run shows at the second scan, 5 s after the run's end.

        A scan of a TCG guest's memory takes minutes on a busy machine: `beat` is called
        every BEAT seconds while one runs (the host takes a silent guest for a hung one)."""
        if not self.kmemleak:
            return ""
        ended = _clock()
        if not _scan(beat):
            return ""
        _sleep(max(0.0, ended + KMEMLEAK_MIN_AGE - _clock()))
        if not _scan(beat):
            return ""
        try:
            with open(KMEMLEAK) as f:
                report = f.read()
        except OSError:
            return ""
        return since_jiffies(report, self.since)

    def close(self) -> None:
        self.reader.close()


def since_jiffies(report: str, since: int | None) -> str:
    """The objects of kmemleak's `report` allocated at or after jiffies `since` (all of
    them when `since` is unknown), as kmemleak printed them."""
    blocks = re.split(r"(?m)^(?=unreferenced object)", report)
    kept = []
    for block in blocks:
        if not block.startswith("unreferenced object"):
            continue
        stamp = _OBJECT_JIFFIES.search(block)
        if since is None or stamp is None or int(stamp.group(1)) >= since:
            kept.append(block.rstrip("\n"))
    return "\n".join(kept)


def _jiffies() -> int | None:
    try:
        fd = os.open(SCHED_DEBUG, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    found = _JIFFIES.search(head)
    return int(found.group(1)) if found else None


BEAT = 20.0


def _scan(beat: Callable[[], None] | None) -> bool:
    """One kmemleak scan (a write that returns when it is done), `beat` called meanwhile."""
    if beat is None:
        return _kmemleak("scan")
    done: list[bool] = []
    worker = threading.Thread(target=lambda: done.append(_kmemleak("scan")), daemon=True)
    worker.start()
    while True:
        worker.join(BEAT)
        if not worker.is_alive():
            return bool(done and done[0])
        beat()


def _kmemleak(command: str) -> bool:
    try:
        with open(KMEMLEAK, "w") as f:
            f.write(command)
        return True
    except OSError:
        return False


def _read_taint() -> int | None:
    try:
        return tainted()
    except (OSError, ValueError):
        return None
