"""Unpacking a tar archive without letting a member escape the destination.

`TarFile.extractall(filter=...)` exists only from Python 3.11.4 on; Debian 12 ships
3.11.2. This module does the checking itself, the same way on every Python: each member
is checked as `extractall` reaches it (after the members before it are on disk, so a
symlink extracted earlier is followed when the next member's place is resolved), and
the first member that would write outside the destination, link outside it, or create
a device or FIFO stops the extraction with an error naming it.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class UnsafeMember(ValueError):
    """A member of an archive that would write or point outside the destination."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_member(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """`member` if extracting it under the resolved directory `root` is safe; else raises.

    Modes lose setuid/setgid/sticky and group/other write bits."""
    name = member.name
    if not name or name.startswith("/") or os.path.isabs(name):
        raise UnsafeMember(f"{name!r}: absolute path")
    if ".." in Path(name).parts:
        raise UnsafeMember(f"{name!r}: '..' in the path")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeMember(f"{name!r}: device or FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMember(f"{name!r}: unsupported member type {member.type!r}")
    # where it lands, following symlinks the archive already put on disk
    target = os.path.realpath(os.path.join(root, name))
    if not _inside(target, root):
        raise UnsafeMember(f"{name!r}: lands outside the destination (through a symlink)")
    if member.issym():
        link = member.linkname
        if os.path.isabs(link):
            raise UnsafeMember(f"{name!r}: symlink to an absolute path {link!r}")
        pointed = os.path.realpath(os.path.join(os.path.dirname(target), link))
        if not _inside(pointed, root):
            raise UnsafeMember(f"{name!r}: symlink {link!r} points outside the destination")
    if member.islnk():
        link = member.linkname
        pointed = os.path.realpath(os.path.join(root, link))
        if os.path.isabs(link) or ".." in Path(link).parts or not _inside(pointed, root):
            raise UnsafeMember(f"{name!r}: hard link {link!r} points outside the destination")
    if member.mode is not None:
        member.mode &= 0o755
    return member


def safe_members(tar: tarfile.TarFile, dest: Path) -> Iterator[tarfile.TarInfo]:
    """The members of `tar`, each checked against `dest` just before it is extracted."""
    root = os.path.realpath(dest)
    for member in tar:
        yield check_member(member, root)


def extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract every member of `tar` under `dest`; raises UnsafeMember at the first bad one.

    Pythons that have extraction filters (3.11.4+) get `fully_trusted` so that the check
    above is the only one on every version (and 3.12+ warns about nothing)."""
    dest.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if hasattr(tarfile, "fully_trusted_filter"):
        extra["filter"] = "fully_trusted"
    tar.extractall(dest, members=safe_members(tar, dest), **extra)
