"""Two VMs booted side by side build the same initramfs at the same time
(`testbed up --jobs 2` in a cold cache): neither may lose the other's file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.testbed import initramfs


def test_two_builds_of_one_initramfs_at_once_both_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF not really")
    cache = tmp_path / "initramfs"
    cache.mkdir()
    monkeypatch.setattr(initramfs, "host_busybox", lambda: busybox)
    monkeypatch.setattr(initramfs, "busybox_applets", lambda _: ["sh"])
    monkeypatch.setattr(initramfs, "sub_dir", lambda *_: cache)
    # both builds reach the rename before either makes it: the moment a shared
    # temporary name loses one of them
    barrier = threading.Barrier(2, timeout=30)
    real_replace = Path.replace

    def replace(self: Path, target: Any) -> Path:
        barrier.wait()
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    setup = initramfs.GuestSetup(modules=(), bind_ids=("1234:11e8",),
                                 python="/usr/bin/python3", agent="/a/agent.py", path="/bin")
    results: list[Path] = []
    errors: list[OSError] = []

    def build() -> None:
        try:
            results.append(initramfs.build_initramfs(setup))
        except OSError as exc:  # a lost temporary file: reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1] and results[0].is_file()
    assert sorted(p.name for p in cache.iterdir()) == [results[0].name]  # no temporary left
