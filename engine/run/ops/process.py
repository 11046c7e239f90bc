"""Processes of a case: `fork` (steps with `process:` run in the child, run/forked.py),
`join`, `drop_capability`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vfio_scenario.language.models import DropCapability, FailNth, Fork, Join
from vfio_scenario.run import failnth
from vfio_scenario.run.forked import Child
from vfio_scenario.run.forked import fork as fork_child
from vfio_scenario.run.interpreter import CheckFailed, Runtime
from vfio_scenario.run.ops import op
from vfio_scenario.uapi import process

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step


@op(Fork)
def fork(rt: Runtime, args: Fork, step: Step) -> Child:
    from vfio_scenario.run.ops import operations

    child = fork_child(rt, step.handle or f"step {step.index + 1}", rt.ops or operations())
    rt.note(f"forked {child.label}")
    return child


@op(Join)
def join(rt: Runtime, args: Join, step: Step) -> None:
    child = rt.handle(args.process)
    if not isinstance(child, Child) or child.status is not None:
        raise CheckFailed(f"process `{args.process}` was joined already")
    code = child.end()
    if code < 0:
        raise CheckFailed(f"{child.label} was killed by signal {-code}")
    if code:
        raise CheckFailed(f"{child.label} exited with status {code}")
    rt.note(f"{child.label} exited with status 0")


@op(DropCapability)
def drop_capability(rt: Runtime, args: DropCapability, step: Step) -> None:
    bit = process.CAPABILITIES.index(args.capability)
    process.drop_effective(bit)
    if process.effective_capabilities() >> bit & 1:
        raise CheckFailed(f"{args.capability} is still in the effective set after capset")


@op(FailNth)
def fail_nth(rt: Runtime, args: FailNth, step: Step) -> None:
    """Arm fail-nth with the sweep's n (run/failnth.py), the debugfs attributes set first."""
    if rt.fail_nth is None:
        raise CheckFailed("`fail_nth` arms a run of its case's sweep, and this case is not "
                          "swept (run_case sweeps a case that has the step)")
    failnth.setup_debugfs(rt)
    rt.fail_nth.arm()  # the last thing: nothing of ours passes a fault site after it
