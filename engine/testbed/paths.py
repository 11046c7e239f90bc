"""Where the testbed keeps what it downloads, builds and runs (one cache per user)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold an exclusive lock named `name` (under the cache) while the block runs.

    Two processes that fetch or build the same asset wait for each other instead of
    writing the same folder at once."""
    path = sub_dir("locks") / f"{name}.lock"
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
