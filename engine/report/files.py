"""Writing report files so that a reader (or a kill -9) never sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically.

    The text goes to a temporary file in the same folder, is fsynced, and is renamed
    over `path`; the folder is fsynced too, so after a crash `path` holds either the old
    or the new contents, never a mix. Folders are created as needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def check_writable(option: str, path: str | os.PathLike[str]) -> None:
    """Make `path`'s folder and check that a report can be written there, before any case
    runs: a run must not end in an unwritable report. Raises UsageError naming `option`."""
    from vfio_scenario.errors import UsageError

    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder; name the file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{option} {path}: cannot create {target.parent}: a file is in "
                         "the way") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create {target.parent}: "
                         f"{exc.strerror}") from None
    try:  # what atomic_write will do (access() says yes to root even on /sys)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in {target.parent}: "
                         f"{exc.strerror}") from None


def check_outputs(outputs: dict[str, str | None]) -> None:
    """check_writable() of every output given, by option name ({"--json": path or None})."""
    for option, path in outputs.items():
        if path:
            check_writable(option, path)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename or a new file in it is durable."""
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> None:
    """Delete temporaries `atomic_write` left beside `path` when a process was killed."""
    target = Path(path)
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
