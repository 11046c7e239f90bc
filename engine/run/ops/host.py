"""Host operations: the kernel log, taint, sleeping."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.uapi.kmsg import KernelLog, tainted

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.language.models import AssertNotTainted, ExpectDmesg, ExpectNoDmesg, Sleep

# bit → letter, as in Documentation/admin-guide/tainted-kernels.rst
TAINT_FLAGS = "PFSRMBUDAWCIOELKXTN"


def kernel_log(rt: Runtime) -> KernelLog:
    """The case's kernel log reader, opened when the case began."""
    log = rt.state.get("kmsg")
    if log is None:
        raise Skip(f"the kernel log is not readable here: {rt.state.get('kmsg_error')}")
    assert isinstance(log, KernelLog)
    return log


def taint_letters(mask: int) -> str:
    return "".join(letter for bit, letter in enumerate(TAINT_FLAGS) if mask & (1 << bit)) or "-"


def begin_case(rt: Runtime) -> None:
    """Record what host checks compare against: the log position and the taint mask."""
    try:
        rt.state["kmsg"] = KernelLog()
    except VfioError as exc:
        rt.state["kmsg_error"] = str(exc)
    try:
        rt.state["taint"] = tainted()
    except OSError:
        rt.state["taint"] = None


def end_case(rt: Runtime) -> None:
    log = rt.state.pop("kmsg", None)
    if log is not None:
        log.close()


@op("expect_dmesg")
def expect_dmesg(rt: Runtime, args: ExpectDmesg, step: Step) -> None:
    log = kernel_log(rt)
    within = args.within * rt.options.timeout_multiplier
    if log.wait_for(args.pattern, within) is None:
        tail = "\n  ".join(log.lines[-5:]) or "(nothing)"
        raise CheckFailed(f"no kernel log line matches /{args.pattern}/ within {within:g}s; "
                          f"last lines since the case began:\n  {tail}")


@op("expect_no_dmesg")
def expect_no_dmesg(rt: Runtime, args: ExpectNoDmesg, step: Step) -> None:
    pattern = re.compile(args.pattern)
    hits = [line for line in kernel_log(rt).read() if pattern.search(line)]
    if hits:
        raise CheckFailed(f"kernel log matches /{args.pattern}/ since the case began: {hits[0]!r}"
                          + (f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""))


@op("assert_not_tainted")
def assert_not_tainted(rt: Runtime, args: AssertNotTainted, step: Step) -> None:
    before = rt.state.get("taint")
    if before is None:
        raise Skip("/proc/sys/kernel/tainted is not readable here")
    now = tainted()
    added = now & ~before
    if added:
        raise CheckFailed(f"the kernel became tainted during the case: {taint_letters(added)} "
                          f"(mask {before:#x} → {now:#x})")


@op("sleep")
def sleep(rt: Runtime, args: Sleep, step: Step) -> Any:
    time.sleep(args.duration)
