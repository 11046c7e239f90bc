"""Unpacking the kernel source on any Python from Debian 12's 3.11.2 on.

`TarFile.extractall(filter=...)` came in 3.11.4; the source tarball goes through our own
member check instead. These tests run the path a fresh Debian user hits (assets'
`_fetch_linux_source` with apt replaced by a local .deb stand-in) and feed the check
archives with hostile members.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.testbed import assets
from vfio_scenario.testbed.safetar import UnsafeMember, extract_all


def _add(tar: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
         link: str = "", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _archive(path: Path, build: Callable[[tarfile.TarFile], None], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        build(tar)
    return path


def _benign(tar: tarfile.TarFile) -> None:
    _add(tar, "linux-source-7.2", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tar, "linux-source-7.2/Makefile", data=b"all:\n")
    _add(tar, "linux-source-7.2/scripts", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tar, "linux-source-7.2/scripts/run.sh", data=b"#!/bin/sh\n", mode=0o4777)
    _add(tar, "linux-source-7.2/include", kind=tarfile.DIRTYPE, mode=0o755)
    _add(tar, "linux-source-7.2/include/dt", kind=tarfile.SYMTYPE, link="../scripts")
    _add(tar, "linux-source-7.2/Makefile.hard", kind=tarfile.LNKTYPE,
         link="linux-source-7.2/Makefile")


def test_a_benign_archive_unpacks_with_links_and_safe_modes(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "ok.tar", _benign)
    dest = tmp_path / "out"
    with tarfile.open(archive) as tar:
        extract_all(tar, dest)
    tree = dest / "linux-source-7.2"
    assert (tree / "Makefile").read_bytes() == b"all:\n"
    assert os.readlink(tree / "include" / "dt") == "../scripts"
    assert (tree / "include" / "dt" / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert (tree / "Makefile.hard").read_bytes() == b"all:\n"
    mode = stat.S_IMODE((tree / "scripts" / "run.sh").stat().st_mode)
    assert mode == 0o755  # setuid and group/other write dropped


HOSTILE: dict[str, tuple[Callable[[tarfile.TarFile], None], str]] = {
    "absolute": (lambda t: _add(t, "/tmp/evil", data=b"x"), "'/tmp/evil': absolute path"),
    "dotdot": (lambda t: _add(t, "a/../../evil", data=b"x"), "'a/../../evil': '..' in the path"),
    "symlink-up": (lambda t: _add(t, "up", kind=tarfile.SYMTYPE, link="../.."),
                   "'up': symlink '../..' points outside the destination"),
    "symlink-absolute": (lambda t: _add(t, "etc", kind=tarfile.SYMTYPE, link="/etc"),
                         "'etc': symlink to an absolute path '/etc'"),
    "hardlink-out": (lambda t: _add(t, "pw", kind=tarfile.LNKTYPE, link="/etc/passwd"),
                     "'pw': hard link '/etc/passwd' points outside the destination"),
    "char-device": (lambda t: _add(t, "null", kind=tarfile.CHRTYPE), "'null': device or FIFO"),
    "block-device": (lambda t: _add(t, "sda", kind=tarfile.BLKTYPE), "'sda': device or FIFO"),
    "fifo": (lambda t: _add(t, "pipe", kind=tarfile.FIFOTYPE), "'pipe': device or FIFO"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_member_stops_the_extraction_and_writes_nothing_outside(
        tmp_path: Path, name: str) -> None:
    build, message = HOSTILE[name]

    def with_first_file(tar: tarfile.TarFile) -> None:
        _add(tar, "fine.txt", data=b"ok")
        build(tar)
    archive = _archive(tmp_path / f"{name}.tar", with_first_file)
    box = tmp_path / "box"  # `..` and the links aim at box/ and above
    dest = box / "out"
    with tarfile.open(archive) as tar, pytest.raises(UnsafeMember) as caught:
        extract_all(tar, dest)
    assert str(caught.value) == message
    assert (dest / "fine.txt").read_bytes() == b"ok"  # checked member by member
    assert sorted(p.name for p in box.iterdir()) == ["out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["box", f"{name}.tar"])
    assert sorted(p.name for p in dest.iterdir()) == ["fine.txt"]


def test_a_symlink_already_in_the_destination_is_followed_when_checking(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "pre").symlink_to(outside)
    archive = _archive(tmp_path / "via.tar", lambda t: _add(t, "pre/x", data=b"x"))
    with tarfile.open(archive) as tar, pytest.raises(UnsafeMember, match="through a symlink"):
        extract_all(tar, dest)
    assert list(outside.iterdir()) == []


class _FakeApt:
    """The private apt of assets, answering from a local .deb stand-in."""

    def update(self) -> None:
        pass

    def package_names(self, pattern: str) -> list[str]:
        return ["linux-source-7.2"]

    def candidate(self, package: str) -> str:
        return "7.2.1-1"

    def download(self, package: str, dest: Path) -> Path:
        deb = dest / f"{package}.deb"
        deb.write_bytes(b"stand-in")
        return deb


def _fetch_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                build: Callable[[tarfile.TarFile], None]) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "PrivateApt", _FakeApt)

    def extract_deb(deb: Path, staging: Path) -> None:  # what dpkg-deb -x leaves
        src = staging / "usr" / "src"
        src.mkdir(parents=True)
        _archive(src / "linux-source-7.2.tar.xz", build, "w:xz")
    monkeypatch.setattr(assets, "extract_deb", extract_deb)
    return assets.fetch_linux_source()


def test_fetching_the_kernel_source_unpacks_it_on_this_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _fetch_with(tmp_path, monkeypatch, _benign)
    assert tree == tmp_path / "cache" / "vfio-scenario" / "linux-source" / "7.2.1-1" / \
        "linux-source-7.2"
    assert (tree / "Makefile").read_bytes() == b"all:\n"
    assert assets.source_version(tree) == "7.2.1-1"


def test_fetching_a_kernel_source_with_a_hostile_member_is_an_environment_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hostile(tar: tarfile.TarFile) -> None:
        _benign(tar)
        _add(tar, "linux-source-7.2/../../../escape", data=b"x")
    with pytest.raises(EnvironmentProblem) as caught:
        _fetch_with(tmp_path, monkeypatch, hostile)
    assert str(caught.value) == ("linux-source-7.2.tar.xz has an unsafe member: "
                                 "'linux-source-7.2/../../../escape': '..' in the path")
    assert not (tmp_path / "cache" / "escape").exists()
