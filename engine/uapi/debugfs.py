"""IOMMU page-table facts from IOMMU debugfs, for `assert_superpages`.

Intel VT-d (CONFIG_INTEL_IOMMU_DEBUGFS) prints each leaf of a device's page table as
"0x<IOVA PFN> |<TAB>PML5E<TAB>PML4E<TAB>PDPE[<TAB>PDE[<TAB>PTE]]": the number of entries
tells the leaf's level, hence its page size.  Elsewhere the answer says why it is
unavailable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEBUGFS = Path("/sys/kernel/debug")
INTEL = DEBUGFS / "iommu" / "intel"
# Entries on a leaf line → page size of that leaf (PDPE: 1 GiB, PDE: 2 MiB, PTE: 4 KiB).
LEAF_SIZES = {3: 1 << 30, 4: 2 << 20, 5: 4 << 10}


@dataclass
class PageTable:
    """The leaves of one device's IOMMU page table, or why they cannot be read."""

    available: bool
    reason: str = ""
    source: str = ""
    leaves: list[tuple[int, int]] = field(default_factory=list)  # (iova, page size)

    def page_sizes(self, iova: int, size: int) -> dict[int, int]:
        """Page size → bytes of [iova, iova+size) mapped by leaves of that size."""
        found: dict[int, int] = {}
        end = iova + size
        for start, pgsize in self.leaves:
            lo, hi = max(start, iova), min(start + pgsize, end)
            if lo < hi:
                found[pgsize] = found.get(pgsize, 0) + hi - lo
        return found


def parse_intel(text: str) -> list[tuple[int, int]]:
    """(iova, page size) of every leaf line of an Intel domain_translation_struct dump."""
    leaves = []
    for line in text.splitlines():
        if not line.startswith("0x") or "|" not in line:
            continue
        pfn_text, entries = line.split("|", 1)
        count = len(entries.split())
        if count in LEAF_SIZES:
            leaves.append((int(pfn_text.strip(), 16) << 12, LEAF_SIZES[count]))
    return leaves


def availability() -> tuple[bool, str]:
    """Whether IOMMU page tables can be read here, and if not, why."""
    if not DEBUGFS.is_dir() or not os.path.ismount(DEBUGFS):
        return False, f"debugfs is not mounted at {DEBUGFS}"
    if not (DEBUGFS / "iommu").is_dir():
        return False, "no IOMMU debugfs (CONFIG_IOMMU_DEBUGFS off, or no access)"
    if not INTEL.is_dir():
        return False, ("only Intel VT-d page-table dumps are understood; "
                       f"{DEBUGFS / 'iommu'} has {sorted(os.listdir(DEBUGFS / 'iommu'))}")
    return True, ""


def page_table(bdf: str) -> PageTable:
    """The device's page-table leaves from Intel IOMMU debugfs, or why not readable."""
    ok, reason = availability()
    if not ok:
        return PageTable(False, reason)
    for path in (INTEL / bdf / "domain_translation_struct", INTEL / "domain_translation_struct"):
        try:
            text = path.read_text()
        except OSError as e:
            reason = f"{path}: {os.strerror(e.errno or 0)}"
            continue
        if path.parent == INTEL:
            text = _device_section(text, bdf)
        if "DMA Remapping is not enabled" in text:
            return PageTable(False, f"{path}: DMA remapping is not enabled", str(path))
        return PageTable(True, "", str(path), parse_intel(text))
    return PageTable(False, reason or f"no page-table dump for {bdf}")


def _device_section(text: str, bdf: str) -> str:
    """The part of the global dump (older kernels) that belongs to one device."""
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith("Device "):
            keep = line.split()[1] == bdf
        if keep:
            out.append(line)
    return "\n".join(out)
