"""Record each device's binding before a run, bind it to vfio-pci, restore it after.

A device's state is its driver, its `driver_override` and, for an SR-IOV PF, its
`sriov_numvfs`. `bind_vfio` binds a device named with `--device` that no VFIO driver
holds the way the kernel selftests' setup.sh does (SR-IOV off, unbind, driver_override
vfio-pci, bind); `restore` puts back what `record` saw, driver_override included (the
selftests' cleanup.sh clears it; here it gets its recorded value back).

Restoring also runs on SIGINT/SIGTERM: `held` installs handlers for the binding and
probing that come before the cases, and session.run_planned its own for the cases.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.uapi import sysfs

SYSFS_PCI = Path("/sys/bus/pci/devices")
PCI_DRIVERS = Path("/sys/bus/pci/drivers")
VFIO_PCI = "vfio-pci"


@dataclass(frozen=True)
class DeviceState:
    bdf: str
    driver: str | None
    sriov_numvfs: int | None
    driver_override: str | None = None  # None: not set (sysfs shows "(null)")


def _driver(bdf: str) -> str | None:
    link = SYSFS_PCI / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def _numvfs(bdf: str) -> int | None:
    path = SYSFS_PCI / bdf / "sriov_numvfs"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _override(bdf: str) -> str | None:
    try:
        value = (SYSFS_PCI / bdf / "driver_override").read_text().strip()
    except OSError:
        return None
    return None if value in ("", "(null)") else value


def _set_override(bdf: str, value: str | None) -> None:
    # an empty write (a lone newline) clears it, as the selftests' clear_driver_override
    (SYSFS_PCI / bdf / "driver_override").write_text(f"{value or ''}\n")


def _set_numvfs(bdf: str, count: int) -> None:
    numvfs = SYSFS_PCI / bdf / "sriov_numvfs"
    now = _numvfs(bdf)
    if now == count:
        return
    if now and count:  # the kernel changes a non-zero count only through 0
        numvfs.write_text("0\n")
    numvfs.write_text(f"{count}\n")


def record(bdfs: list[str]) -> list[DeviceState]:
    return [DeviceState(b, _driver(b), _numvfs(b), _override(b))
            for b in bdfs if (SYSFS_PCI / b).exists()]


def bind_vfio(states: list[DeviceState]) -> list[str]:
    """Bind every recorded device that no VFIO driver holds to vfio-pci; returns the
    BDFs it rebound. Raises EnvironmentProblem when vfio-pci is absent or refuses one."""
    rebound = []
    for st in states:
        if st.driver is not None and sysfs.is_vfio_driver(st.driver):
            continue
        if not (PCI_DRIVERS / VFIO_PCI).is_dir():
            raise EnvironmentProblem(f"cannot bind {st.bdf} to vfio-pci: the vfio-pci driver "
                                     "is not loaded (modprobe vfio-pci)")
        try:
            if st.sriov_numvfs:
                _set_numvfs(st.bdf, 0)
            if st.driver is not None:
                (PCI_DRIVERS / st.driver / "unbind").write_text(st.bdf)
            _set_override(st.bdf, VFIO_PCI)
            rebound.append(st.bdf)
            (PCI_DRIVERS / VFIO_PCI / "bind").write_text(st.bdf)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot bind {st.bdf} to vfio-pci: {exc}") from None
        if _driver(st.bdf) != VFIO_PCI:
            raise EnvironmentProblem(f"{st.bdf} is bound to {_driver(st.bdf) or 'no driver'} "
                                     "after binding it to vfio-pci")
    return rebound


def restore(states: list[DeviceState]) -> list[str]:
    """Put every device back as recorded; returns what could not be restored."""
    problems = []
    for st in states:
        try:
            # VFs go first, through the driver that made them (vfio-pci needs its
            # enable_sriov parameter for that; a PF driver of the host does it itself)
            if st.sriov_numvfs == 0 and _numvfs(st.bdf):
                _set_numvfs(st.bdf, 0)
            now = _driver(st.bdf)
            if now != st.driver:
                if now is not None:
                    (PCI_DRIVERS / now / "unbind").write_text(st.bdf)
                _set_override(st.bdf, st.driver_override)
                if st.driver is not None:
                    (PCI_DRIVERS / st.driver / "bind").write_text(st.bdf)
            if _override(st.bdf) != st.driver_override:
                _set_override(st.bdf, st.driver_override)
            if st.sriov_numvfs and _numvfs(st.bdf) != st.sriov_numvfs:
                _set_numvfs(st.bdf, st.sriov_numvfs)
        except OSError as exc:
            problems.append(f"{st.bdf}: {exc}")
            continue
        state = DeviceState(st.bdf, _driver(st.bdf), _numvfs(st.bdf), _override(st.bdf))
        if state != st:
            problems.append(f"{st.bdf}: is {state}, was {st}")
    return problems


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the message names the signal."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def held(bdfs: list[str], problems: list[str],
         note: Callable[[str], object] = lambda message: None) -> Iterator[None]:
    """Record `bdfs`, bind those no VFIO driver holds to vfio-pci, and restore them all
    when the block ends, whether it ends normally, by an exception or by SIGINT/SIGTERM
    (which end the block with `Interrupted`). What could not be restored is appended to
    `problems`; `note` is told of every device rebound."""
    old = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    states: list[DeviceState] = []
    try:
        states = record(bdfs)
        for bdf in bind_vfio(states):
            was = next(st.driver for st in states if st.bdf == bdf)
            note(f"{bdf} bound to vfio-pci for the run (was {was or 'bound to no driver'}); "
                 "it is restored at the end")
        yield
    finally:
        # no second signal may cut the restore short
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            problems.extend(restore(states))
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
