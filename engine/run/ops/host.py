"""Host operations: the kernel log, taint, sleeping."""

from __future__ import annotations

import re
import time
from typing import Any

from vfio_scenario.language.compile import Step
from vfio_scenario.language.models import AssertNotTainted, ExpectDmesg, ExpectNoDmesg, Sleep
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.kmsg import KernelLog
from vfio_scenario.run.ops import op

TAINT_PATH = "/proc/sys/kernel/tainted"
# bit → letter, as in Documentation/admin-guide/tainted-kernels.rst
TAINT_FLAGS = "PFSRMBUDAWCIOELKXTN"


def kernel_log(rt: Runtime) -> KernelLog:
    """The case's kernel log reader, opened when the case began."""
    log = rt.state.get("kmsg")
    if log is None:
        raise Skip("the kernel log (/dev/kmsg) is not readable here")
    assert isinstance(log, KernelLog)
    return log


def read_taint() -> int:
    with open(TAINT_PATH) as f:
        return int(f.read().strip() or 0)


def taint_letters(mask: int) -> str:
    return "".join(letter for bit, letter in enumerate(TAINT_FLAGS) if mask & (1 << bit)) or "-"


def begin_case(rt: Runtime) -> None:
    """Record what host checks compare against: the log position and the taint mask."""
    rt.state["kmsg"] = KernelLog.open()
    try:
        rt.state["taint"] = read_taint()
    except OSError:
        rt.state["taint"] = None


def end_case(rt: Runtime) -> None:
    log = rt.state.pop("kmsg", None)
    if log is not None:
        log.close()


@op("expect_dmesg")
def expect_dmesg(rt: Runtime, args: ExpectDmesg, step: Step) -> None:
    log = kernel_log(rt)
    pattern = re.compile(args.pattern)
    deadline = time.monotonic() + args.within * rt.options.timeout_multiplier
    log.read_new()
    while True:
        if any(pattern.search(line) for line in log.lines):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
        log.read_new()
    tail = "\n  ".join(log.lines[-5:]) or "(nothing)"
    raise CheckFailed(f"no kernel log line matches /{args.pattern}/ within {args.within:g}s; "
                      f"last lines since the case began:\n  {tail}")


@op("expect_no_dmesg")
def expect_no_dmesg(rt: Runtime, args: ExpectNoDmesg, step: Step) -> None:
    log = kernel_log(rt)
    log.read_new()
    pattern = re.compile(args.pattern)
    hits = [line for line in log.lines if pattern.search(line)]
    if hits:
        raise CheckFailed(f"kernel log matches /{args.pattern}/ since the case began: {hits[0]!r}"
                          + (f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""))


@op("assert_not_tainted")
def assert_not_tainted(rt: Runtime, args: AssertNotTainted, step: Step) -> None:
    before = rt.state.get("taint")
    if before is None:
        raise Skip(f"{TAINT_PATH} is not readable here")
    now = read_taint()
    added = now & ~before
    if added:
        raise CheckFailed(f"the kernel became tainted during the case: {taint_letters(added)} "
                          f"(mask {before:#x} → {now:#x})")


@op("sleep")
def sleep(rt: Runtime, args: Sleep, step: Step) -> Any:
    time.sleep(args.duration)
