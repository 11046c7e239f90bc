"""Host operations: the kernel log, IOMMU faults, taint, sleeping."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import VfioError
from vfio_scenario.language.models import (
    AssertNotTainted,
    ExpectDmesg,
    ExpectIommuFault,
    ExpectNoDmesg,
    ExpectNoIommuFault,
    ProvokeCrash,
    Sleep,
)
from vfio_scenario.run import faultlog
from vfio_scenario.run.interpreter import CheckFailed, Runtime, Skip
from vfio_scenario.run.ops import op
from vfio_scenario.run.plan import step_facts
from vfio_scenario.uapi.kmsg import KernelLog, taint_letters, tainted

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case, Step
    from vfio_scenario.uapi.device import VfioDevice

def kernel_log(rt: Runtime) -> KernelLog:
    """The case's kernel log reader, opened when the case began."""
    if rt.kernel_log is None:
        raise Skip(f"the kernel log is not readable here: {rt.kernel_log_error}")
    return rt.kernel_log


def begin_case(rt: Runtime) -> None:
    """Record what host checks compare against: the log position and the taint mask;
    for a case with a step that reads IOMMU faults, where QEMU's fault record ends."""
    try:
        rt.kernel_log = KernelLog()
    except VfioError as exc:
        rt.kernel_log_error = str(exc)
    try:
        rt.taint = tainted()
    except OSError:
        rt.taint = None
    # the record is on a 9p share: its size is a round trip to the host, dearer than many
    # a step under TCG, so only the cases that read it pay for it
    if reads_faults(rt.case):
        rt.qemu_faults = faultlog.qemu_fault_log()


def reads_faults(case: Case) -> bool:
    """Whether a step of `case` reads IOMMU faults (FAULT_OPS)."""
    return not FAULT_OPS.isdisjoint(step_facts(case).ops)


def end_case(rt: Runtime) -> None:
    log, rt.kernel_log = rt.kernel_log, None
    if log is not None:
        log.close()


@op(ExpectDmesg)
def expect_dmesg(rt: Runtime, args: ExpectDmesg, step: Step) -> None:
    log = kernel_log(rt)
    within = args.within * rt.options.timeout_multiplier
    if log.wait_for(args.pattern, within) is None:
        tail = "\n  ".join(log.lines[-5:]) or "(nothing)"
        raise CheckFailed(f"no kernel log line matches /{args.pattern}/ within {within:g}s; "
                          f"last lines since the case began:\n  {tail}")


@op(ExpectNoDmesg)
def expect_no_dmesg(rt: Runtime, args: ExpectNoDmesg, step: Step) -> None:
    pattern = re.compile(args.pattern)
    hits = [line for line in kernel_log(rt).read() if pattern.search(line)]
    if hits:
        raise CheckFailed(f"kernel log matches /{args.pattern}/ since the case began: {hits[0]!r}"
                          + (f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""))


def fault_log(rt: Runtime) -> faultlog.FaultSource:
    """Where this case's IOMMU faults are read: QEMU's record in the testbed, else the
    kernel log. Only the operations of FAULT_OPS read them (begin_case opened QEMU's
    record for their cases only)."""
    if rt.qemu_faults is not None:
        return rt.qemu_faults
    if not reads_faults(rt.case):
        raise RuntimeError("an operation reads IOMMU faults but is not in "
                           "vfio_scenario.run.ops.host.FAULT_OPS")
    log = rt.kernel_log
    if log is None:
        raise Skip("IOMMU faults are not readable here: no QEMU fault log and no kernel log "
                   f"({rt.kernel_log_error})")
    return faultlog.KernelFaultLog(log.read)


def _fault_filter(rt: Runtime, args: ExpectIommuFault | ExpectNoIommuFault) -> faultlog.FaultFilter:
    device: VfioDevice = rt.handle(args.device)
    return faultlog.FaultFilter(device.bdf, args.address, args.access)


# the operations that read the case's IOMMU faults (fault_log)
FAULT_OPS = frozenset({ExpectIommuFault.op, ExpectNoIommuFault.op})


@op(ExpectIommuFault)
def expect_iommu_fault(rt: Runtime, args: ExpectIommuFault, step: Step) -> None:
    log = fault_log(rt)
    wanted = _fault_filter(rt, args)
    within = args.within * rt.options.timeout_multiplier
    if faultlog.wait_for(log, wanted, within) is not None:
        return
    message = (f"{log.source} shows no {wanted.describe()} within {within:g}s; "
               f"faults since the case began: {faultlog.summary(log.read())}")
    suppressed = log.suppressed()
    if suppressed:
        message += (f". The kernel's DMAR fault log says it suppressed {suppressed} messages "
                    "(printk rate limit of dmar_fault, `callbacks suppressed`): the fault may "
                    "have happened without a line")
    raise CheckFailed(message)


@op(ExpectNoIommuFault)
def expect_no_iommu_fault(rt: Runtime, args: ExpectNoIommuFault, step: Step) -> None:
    log = fault_log(rt)
    unwanted = _fault_filter(rt, args)
    within = args.within * rt.options.timeout_multiplier
    found = faultlog.wait_for(log, unwanted, within)
    if found is not None:
        hits = [f for f in log.read() if unwanted(f)]
        raise CheckFailed(f"{log.source} shows a {unwanted.describe()} since the case began: "
                          f"{faultlog.summary(hits)}")
    suppressed = log.suppressed()
    if suppressed:
        raise CheckFailed(f"since the case began the kernel log says it suppressed {suppressed} "
                          "DMAR fault messages (printk rate limit of dmar_fault, `callbacks "
                          f"suppressed`): no line proves there was no {unwanted.describe()}")


@op(AssertNotTainted)
def assert_not_tainted(rt: Runtime, args: AssertNotTainted, step: Step) -> None:
    before = rt.taint
    if before is None:
        raise Skip("/proc/sys/kernel/tainted is not readable here")
    now = tainted()
    added = now & ~before
    if added:
        raise CheckFailed(f"the kernel became tainted during the case: {taint_letters(added)} "
                          f"(mask {before:#x} → {now:#x})")


LKDTM_DIRECT = "/sys/kernel/debug/provoke-crash/DIRECT"


class WriterKilled(VfioError):
    """The process that wrote to LKDTM was killed by a signal (an oops kills the task it
    happened in with SIGSEGV); `errno_name` is the signal's name, for `expect: SIGSEGV`."""

    def __init__(self, signum: int, crash: str) -> None:
        name = signal.Signals(signum).name
        super().__init__(0, "provoke_crash", detail=crash)
        self.errno_name = name
        message = (f"provoke_crash {crash}: the kernel killed the writing process with "
                   f"{name} (an oops in its context)")
        self._message = message


def _write_direct(crash: str) -> None:
    """The writer's whole life, in a child process: nothing of the case is inherited (its
    device fds, the pipes to the engine, its process group, whose leftovers the engine
    waits for when the case ends), so a writer LKDTM leaves blocked for good (HUNG_TASK)
    holds nothing up; exit status 0 or the write's errno."""
    code = 255
    try:
        os.setpgid(0, 0)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        fd = os.open(LKDTM_DIRECT, os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, crash.encode())
        code = 0
    except OSError as exc:
        code = exc.errno or 255
    finally:
        os._exit(code)


@op(ProvokeCrash)
def provoke_crash(rt: Runtime, args: ProvokeCrash, step: Step) -> None:
    if not os.path.exists(LKDTM_DIRECT):
        raise Skip(f"this kernel has no LKDTM: {LKDTM_DIRECT} is absent (CONFIG_LKDTM, "
                   "debugfs mounted)")
    pid = os.fork()
    if pid == 0:
        _write_direct(args.type)
    if not args.wait:
        return  # HUNG_TASK's writer never returns
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise WriterKilled(os.WTERMSIG(status), args.type)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise VfioError(code, "provoke_crash", detail=f"write of {args.type} to {LKDTM_DIRECT}")


@op(Sleep)
def sleep(rt: Runtime, args: Sleep, step: Step) -> Any:
    time.sleep(args.duration)
