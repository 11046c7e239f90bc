"""Record each device's driver binding and SR-IOV state before a run, restore them after.

Restoring also runs on SIGINT/SIGTERM (the caller installs the handlers), so a run
interrupted with Ctrl-C leaves devices bound as it found them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYSFS_PCI = Path("/sys/bus/pci/devices")


@dataclass(frozen=True)
class DeviceState:
    bdf: str
    driver: str | None
    sriov_numvfs: int | None


def _driver(bdf: str) -> str | None:
    link = SYSFS_PCI / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def _numvfs(bdf: str) -> int | None:
    path = SYSFS_PCI / bdf / "sriov_numvfs"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def record(bdfs: list[str]) -> list[DeviceState]:
    return [DeviceState(b, _driver(b), _numvfs(b)) for b in bdfs if (SYSFS_PCI / b).exists()]


def restore(states: list[DeviceState]) -> list[str]:
    """Put every device back as recorded; returns what could not be restored."""
    problems = []
    for st in states:
        try:
            if st.sriov_numvfs is not None and _numvfs(st.bdf) != st.sriov_numvfs:
                numvfs = SYSFS_PCI / st.bdf / "sriov_numvfs"
                if st.sriov_numvfs == 0 or _numvfs(st.bdf) == 0:
                    numvfs.write_text(f"{st.sriov_numvfs}\n")
                else:  # the kernel changes a non-zero count only through 0
                    numvfs.write_text("0\n")
                    numvfs.write_text(f"{st.sriov_numvfs}\n")
            now = _driver(st.bdf)
            if now != st.driver:
                dev = SYSFS_PCI / st.bdf
                if now is not None:
                    (dev / "driver" / "unbind").write_text(st.bdf)
                if st.driver is not None:
                    (dev / "driver_override").write_text(st.driver)
                    Path(f"/sys/bus/pci/drivers/{st.driver}/bind").write_text(st.bdf)
        except OSError as exc:
            problems.append(f"{st.bdf}: {exc}")
    return problems
