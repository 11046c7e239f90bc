"""The running kernel's configuration (/proc/config.gz or /boot/config-<release>)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

# release → what kernel_config() read: a kernel's configuration does not change while it
# runs, and unpacking /proc/config.gz costs a guest under TCG a tenth of a second
_READ: dict[str, tuple[dict[str, str], str]] = {}


def kernel_config(release: str | None = None) -> tuple[dict[str, str], str]:
    """(CONFIG_ name → value, the file it came from); ({}, "") when none is readable.

    Options set to "n" ("# CONFIG_X is not set") are absent from the mapping. Read once
    per release in a process (and the processes it forks).
    """
    release = release or os.uname().release
    if release not in _READ:
        _READ[release] = _read(release)
    found, source = _READ[release]
    return dict(found), source


def _read(release: str) -> tuple[dict[str, str], str]:
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")
        return parse(text), str(path)
    return {}, ""


def parse(text: str) -> dict[str, str]:
    """CONFIG_ assignments of a .config text, quotes kept off string values."""
    found = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            found[name] = value.strip('"')
    return found
