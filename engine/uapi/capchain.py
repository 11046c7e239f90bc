"""Walking VFIO capability chains (region info, IOMMU info, device info)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vfio_scenario.uapi._vfio import ffi


def walk(info: Any, first: int) -> Iterator[tuple[int, int, Any]]:
    """(id, version, pointer to the capability) for each capability from offset `first`.

    `info` points at the start of the info struct; offsets are relative to it.  The
    walk stops at offset 0 and refuses to loop.
    """
    base = ffi.cast("char *", info)
    seen: set[int] = set()
    offset = first
    while offset and offset not in seen:
        seen.add(offset)
        header = ffi.cast("struct vfio_info_cap_header *", base + offset)
        yield header.id, header.version, base + offset
        offset = header.next
