"""A checkout or venv below /tmp (where CI clones often live) stays visible in the guest."""

from __future__ import annotations

import os
import sys

import pytest
from vfio_scenario.testbed import initramfs
from vfio_scenario.testbed.initramfs import GuestSetup, init_script


def test_paths_below_the_guests_tmpfs_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", "/tmp/ci-clone/.venv")  # as initramfs reads them
    monkeypatch.setattr(os, "getcwd", lambda: "/run/user/0/work")
    kept = initramfs.kept_below_tmpfs()
    assert "/tmp/ci-clone" in kept and "/run/user" in kept


def test_init_binds_kept_paths_back_after_mounting_tmpfs() -> None:
    setup = GuestSetup(modules=(), bind_ids=("1234:11e8",), python="/usr/bin/python3",
                       agent="/a/agent.py", path="/bin", keep=("/tmp/ci-clone",))
    script = init_script(setup)
    keep = script.index("mount -o bind /host/tmp/ci-clone /kept/0")
    tmpfs = script.index("mount -t tmpfs -o mode=1777 tmpfs /host/tmp")
    back = script.index("mount -o bind /kept/0 /host/tmp/ci-clone")
    assert keep < tmpfs < back


def test_nothing_to_keep_adds_no_mount() -> None:
    setup = GuestSetup(modules=(), bind_ids=(), python="/usr/bin/python3", agent="/a/agent.py",
                       path="/bin", keep=())
    assert "/kept/" not in init_script(setup)
