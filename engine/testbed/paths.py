"""Where the testbed keeps what it downloads, builds and runs (one cache per user)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/vfio-scenario, created if missing."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "vfio-scenario"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sub_dir(*parts: str) -> Path:
    """A directory under the cache, created if missing."""
    path = cache_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir() -> Path:
    """Runtime files of running VMs: state files, sockets, console logs."""
    return sub_dir("run")
