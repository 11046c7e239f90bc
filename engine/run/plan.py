"""Planning: which cases run on which devices, and which are skipped with what reason.

Pure functions over the compiled cases and a description of the host (`HostCaps`),
so every rule is tested without hardware. Probing the host to fill `HostCaps` lives
in `probe.py`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vfio_scenario.language.cases import flat_steps
from vfio_scenario.uapi.sysfs import same_driver

if TYPE_CHECKING:  # the probe (in a thread of the guest) needs HostCaps, not the models
    from vfio_scenario.language.cases import Case


@dataclass
class DeviceCaps:
    """One PCI device the run may use."""

    bdf: str
    vendor_id: int = 0
    device_id: int = 0
    vfio_driver: str | None = None  # kernel driver bound now: vfio-pci, a variant, or other
    iommu_group: str | None = None
    scenario_driver: str | None = None  # name of the matching scenario driver
    features: dict[str, str | None] = field(default_factory=dict)  # msix → None or why not
    no_send_msi: bool = False
    # fills `features` when one is first asked for: probing opens the device, which can
    # cost a reset, so a run probes only the devices its cases consider, as they come
    load_features: Callable[[], dict[str, str | None]] | None = field(
        default=None, repr=False, compare=False)

    def feature(self, name: str) -> str | None:
        """None when the device has feature `name`, else why it has not."""
        if self.load_features is not None:
            load, self.load_features = self.load_features, None
            self.features.update(load())
        return self.features.get(name, "not probed")

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.device_id:04x}"


@dataclass
class HostCaps:
    """What this kernel and machine offer, with a reason for everything they lack."""

    kernel_release: str = ""
    iommu_modes: dict[str, str | None] = field(default_factory=dict)  # mode → None or why not
    features: dict[str, str | None] = field(default_factory=dict)  # feature → None or why not
    kconfig: dict[str, str] | None = None  # CONFIG_X → y/m/value; None: not readable
    kconfig_source: str = ""
    devices: list[DeviceCaps] = field(default_factory=list)


# features that belong to a device rather than to the host
DEVICE_FEATURES = frozenset({"msi", "msix", "intx", "reset", "sriov", "dma_buf", "dma_buf_mmap",
                             "dma_buf_revoke", "dma_buf_memattr"})


NO_SEND_MSI_REASON = ("driver {driver} has NO_SEND_MSI: send_msi is EOPNOTSUPP (the device "
                      "cannot raise an MSI on demand)")


@dataclass(frozen=True)
class StepFacts:
    """What the planner and a case's process ask of every step of a case (its loops'
    steps included), found in one walk over them: the iommufd ports unroll loops into
    thousands of steps, and walking them cost milliseconds per case under TCG, once to
    plan the case and again in its process (host.reads_faults), each walk writing to
    the pages of the case's steps after the run process had forked (copy-on-write
    faults). The host finds them as it writes the payload (run/payload.py), and the
    guest's run process keeps them before it forks any case."""

    ops: frozenset[str]  # the operations of its steps
    # (mode, where) of the first step naming each IOMMU mode other than the case's
    named_modes: tuple[tuple[str, str], ...]
    needs_send_msi: bool  # a step raises an MSI and does not accept EOPNOTSUPP

    def to_plain(self) -> tuple[list[str], list[tuple[str, str]], bool]:
        return sorted(self.ops), list(self.named_modes), self.needs_send_msi

    @classmethod
    def from_plain(cls, plain: Any) -> StepFacts:
        ops, named, send_msi = plain
        return cls(frozenset(ops), tuple((str(m), str(w)) for m, w in named), bool(send_msi))


# id(case) → (a weak reference to the case, its facts): the reference tells whether
# the case asked about is the one they were found for (an id is reused once its object
# has gone), without keeping the case alive. Filled as the payload is read (or the run
# process plans); each case process inherits them.
_facts: dict[int, tuple[Callable[[], object], StepFacts]] = {}


def find_step_facts(case: Case) -> StepFacts:
    """The case's StepFacts, from a walk over its steps."""
    ops: set[str] = set()
    named: dict[str, str] = {}
    send_msi = False
    for step in flat_steps((*case.steps, *case.teardown)):
        ops.add(step.op)
        argument = step.args.iommu_mode_argument
        mode = getattr(step.args, argument) if argument is not None else None
        if mode is not None and mode != case.iommu_mode and mode not in named:
            named[mode] = str(step.location)
        if step.args.raises_msi and "EOPNOTSUPP" not in step.common.expect:
            send_msi = True
    return StepFacts(frozenset(ops), tuple(named.items()), send_msi)


def keep_step_facts(case: Case, facts: StepFacts) -> None:
    """Remember `facts` as the case's (the payload's, found on the host)."""
    try:
        ref: Callable[[], object] = weakref.ref(case)
    except TypeError:  # (an object without weak references: kept as it is)
        ref = functools.partial(lambda kept: kept, case)
    _facts[id(case)] = (ref, facts)


def step_facts(case: Case) -> StepFacts:
    """The case's StepFacts: those kept for it, else found (once per case and process)."""
    known = _facts.get(id(case))
    if known is not None and known[0]() is case:
        return known[1]
    facts = find_step_facts(case)
    keep_step_facts(case, facts)
    return facts


@dataclass
class PlannedCase:
    case: Case
    devices: list[DeviceCaps]
    skip: str | None = None  # reason, when the case cannot run here


def plan(cases: list[Case], caps: HostCaps, iommu_modes: list[str] | None = None) -> list[PlannedCase]:
    """Decide for every case: the devices it runs on, or why it is skipped."""
    return list(plan_each(cases, caps, iommu_modes))


def plan_each(cases: Iterable[Case], caps: HostCaps,
              iommu_modes: list[str] | None = None) -> Iterator[PlannedCase]:
    """plan(), one case at a time: a run decides each case just before running it, so
    the first case starts before every device has been probed."""
    for case in cases:
        yield _plan_one(case, caps, iommu_modes)


def _plan_one(case: Case, caps: HostCaps, only_modes: list[str] | None) -> PlannedCase:
    why = _host_unfit(case, caps, only_modes)
    if why is not None:
        return PlannedCase(case, [], why)
    needed = case.requires.devices
    if needed == 0:
        return PlannedCase(case, [])
    want = case.driver
    if want is not None and caps.devices \
            and not any(d.scenario_driver == want for d in caps.devices):
        have = ", ".join(sorted({d.scenario_driver for d in caps.devices
                                 if d.scenario_driver})) or "none"
        return PlannedCase(case, [], f"no device here is served by scenario driver {want} "
                                     f"(the devices' drivers: {have})")
    if case.names_devices:
        return _plan_named(case, caps, needed)
    chosen: list[DeviceCaps] = []
    reasons: list[str] = []
    for dev in caps.devices:
        why = _device_unfit(case, dev)
        if why is None:
            chosen.append(dev)
            if len(chosen) == needed:
                return PlannedCase(case, chosen)
        else:
            reasons.append(f"{dev.bdf} ({dev.ids}): {why}")
    if not caps.devices:
        return PlannedCase(case, [], "no VFIO device on this host")
    have = f"{len(chosen)} suitable device(s) of {needed} needed"
    return PlannedCase(case, [], f"{have}: " + "; ".join(reasons) if reasons else have)


def _host_unfit(case: Case, caps: HostCaps, only_modes: list[str] | None) -> str | None:
    """Why this host cannot run `case` whatever its devices (its IOMMU modes, host
    features, kernel config), or None."""
    return (_mode_unfit(case, caps, only_modes) or _features_unfit(case, caps)
            or _kconfig_unfit(case, caps))


def _mode_unfit(case: Case, caps: HostCaps, only_modes: list[str] | None) -> str | None:
    mode = case.iommu_mode
    if mode is not None:
        if only_modes and mode not in only_modes:
            return f"IOMMU mode {mode} not selected (--iommu-mode)"
        if mode not in caps.iommu_modes:
            return f"IOMMU mode {mode} was not probed on this host"
        why = caps.iommu_modes[mode]
        if why:
            return f"IOMMU mode {mode} unavailable: {why}"
    for named, location in step_facts(case).named_modes:
        why = caps.iommu_modes.get(named, "not probed on this host")
        if why:
            return f"IOMMU mode {named} (opened at {location}) unavailable: {why}"
    return None


def _features_unfit(case: Case, caps: HostCaps) -> str | None:
    for feature in case.requires.features:
        if feature in DEVICE_FEATURES:
            continue
        why = caps.features.get(feature, "not probed")
        if why:
            return f"feature {feature} unavailable: {why}"
    return None


def _kconfig_unfit(case: Case, caps: HostCaps) -> str | None:
    kconfig = case.requires.kconfig
    if not kconfig:
        return None
    if caps.kconfig is None:
        return ("kernel config not readable (no /proc/config.gz or /boot/config-*) to check "
                + ", ".join(kconfig))
    missing = [c for c in kconfig if caps.kconfig.get(c, "n") in ("n", "")]
    if missing:
        return f"kernel lacks {', '.join(missing)} (from {caps.kconfig_source})"
    return None


def _plan_named(case: Case, caps: HostCaps, needed: int) -> PlannedCase:
    """A case whose templates name the run's devices (`devices[1]`) runs on the run's
    first `needed` devices, in order, or not at all: other devices would make its
    named BDFs and its planned devices disagree."""
    named = caps.devices[:needed]
    if len(named) < needed:
        return PlannedCase(case, [], f"its templates name the run's devices and it needs "
                                     f"{needed}; the run has {len(named)}")
    for dev in named:
        why = _device_unfit(case, dev)
        if why is not None:
            return PlannedCase(case, [], f"its templates name the run's first {needed} "
                                         f"device(s); {dev.bdf} ({dev.ids}): {why}")
    return PlannedCase(case, list(named))


def _device_unfit(case: Case, dev: DeviceCaps) -> str | None:
    req = case.requires
    if req.vfio_driver and not same_driver(dev.vfio_driver or "", req.vfio_driver):
        return f"bound to {dev.vfio_driver or 'no driver'}, not {req.vfio_driver}"
    if req.driver is not None:
        if dev.scenario_driver is None:
            return "no scenario driver for this device"
        # a case of the `driver` axis runs on a device of its driver
        want = case.params.get("driver", req.driver)
        if want != "any" and want != dev.scenario_driver:
            return f"its scenario driver is {dev.scenario_driver}, not {want}"
    for feature in req.features:
        if feature in DEVICE_FEATURES:
            why = dev.feature(feature)
            if why:
                return f"no {feature}: {why}"
    if dev.no_send_msi and _needs_send_msi(case):
        return NO_SEND_MSI_REASON.format(driver=dev.scenario_driver)
    return None


def _needs_send_msi(case: Case) -> bool:
    """A case needs send_msi (an operation that `raises_msi`) unless each such step
    accepts EOPNOTSUPP, the answer of a NO_SEND_MSI driver (the C test's SKIP)."""
    return step_facts(case).needs_send_msi
