"""The testbed guest as the other guest tests expect it (runs inside the VM)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

EDU = ("0x1234", "0x11e8")


def _edu_functions() -> list[Path]:
    return [d for d in sorted(Path("/sys/bus/pci/devices").iterdir())
            if ((d / "vendor").read_text().strip(), (d / "device").read_text().strip()) == EDU]


def test_guest_environment_is_marked() -> None:
    assert os.environ.get("VFIO_SCENARIO_GUEST") == "1"


def test_every_edu_is_bound_to_vfio_pci_with_its_group_node() -> None:
    functions = _edu_functions()
    assert len(functions) >= 2
    for function in functions:
        assert (function / "driver").resolve().name == "vfio-pci"
        group = (function / "iommu_group").resolve().name
        node = Path("/dev/vfio") / group
        assert stat.S_ISCHR(node.stat().st_mode), f"{node} is not a character device"


def test_hugetlbfs_mounts_offer_2m_and_1g_pages() -> None:
    mounts = Path("/proc/mounts").read_text()
    assert "/dev/hugepages hugetlbfs" in mounts and "pagesize=2M" in mounts
    assert "/dev/hugepages1G hugetlbfs" in mounts and "pagesize=1024M" in mounts
    free_2m = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text()
    assert int(free_2m) > 0
