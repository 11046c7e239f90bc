"""`vfio-scenario devices`: what this host could run scenarios on."""

from __future__ import annotations

from pathlib import Path

from vfio_scenario.drivers.base import registered_drivers
from vfio_scenario.errors import ExitCode, VfioError
from vfio_scenario.run.probe import PCI_DEVICES, scenario_driver
from vfio_scenario.uapi import sysfs


def _attr(folder: Path, name: str) -> str:
    try:
        return (folder / name).read_text().strip()
    except OSError:
        return ""


def device_rows(show_all: bool) -> list[tuple[str, ...]]:
    """(BDF, ids, class, IOMMU group, bound driver, scenario driver, its status) per device."""
    drivers = registered_drivers()
    rows: list[tuple[str, ...]] = []
    for entry in sorted(PCI_DEVICES.iterdir()) if PCI_DEVICES.exists() else []:
        bdf = entry.name
        bound = sysfs.bound_driver(bdf)
        try:
            cls = scenario_driver(bdf, drivers)
        except VfioError:
            cls = None
        vfio = bool(sysfs.vfio_driver(bdf))
        if not (show_all or cls or vfio):
            continue
        try:
            group = str(sysfs.iommu_group(bdf))
        except VfioError:
            group = "-"
        ids = f"{_attr(entry, 'vendor')[2:]}:{_attr(entry, 'device')[2:]}"
        rows.append((bdf, ids, _attr(entry, "class")[2:6], group, bound or "-",
                     cls.name if cls else "-", cls.proven().value if cls else "-"))
    return rows


def list_devices(show_all: bool = False) -> int:
    rows = device_rows(show_all)
    header = ("BDF", "IDS", "CLASS", "GROUP", "BOUND", "SCENARIO DRIVER", "STATUS")
    if not rows:
        print("no PCI device with a scenario driver or bound to vfio-pci here"
              + ("" if show_all else " (--all lists every device)"))
        return ExitCode.OK
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return ExitCode.OK
