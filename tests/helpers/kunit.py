"""The kernel's own KTAP parser (kunit_tool's kunit_parser.py), imported from the
Debian linux-source tree the testbed provides; nothing of it is committed here."""

from __future__ import annotations

import importlib
import os
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_WANTED = ("kunit_parser.py", "kunit_printer.py")
_IN_TREE = Path("tools/testing/kunit")


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vfio-scenario"


def _from_testbed() -> Path | None:
    try:
        from vfio_scenario.testbed.assets import linux_source_dir
    except ImportError:
        return None
    try:
        folder: Path = linux_source_dir() / _IN_TREE
    except Exception:  # noqa: BLE001 - offline, or the fetch failed: try the cache below
        return None
    return folder if all((folder / f).exists() for f in _WANTED) else None


def _from_cache() -> Path | None:
    """kunit_tool extracted earlier, or extracted now from a cached linux-source tarball."""
    for folder in sorted(_cache().glob(f"*/linux-source-*/{_IN_TREE}")):
        if all((folder / f).exists() for f in _WANTED):
            return folder
    for tarball in sorted(_cache().glob("**/linux-source-*.tar.xz")):
        top = tarball.name.removesuffix(".tar.xz")
        dest = _cache() / "kunit-tool"
        with tarfile.open(tarball) as tar:
            members = [tar.getmember(f"{top}/{_IN_TREE}/{f}") for f in _WANTED]
            tar.extractall(dest, members=members, filter="data")
        return dest / top / _IN_TREE
    return None


def kunit_parser() -> ModuleType:
    """The kunit_parser module; skips the test when no kernel source can be had."""
    folder = _from_testbed() or _from_cache()
    if folder is None:
        pytest.skip("kunit_tool not available: the testbed's linux_source_dir() is missing and "
                    "no linux-source tree is cached (run `vfio-scenario testbed fetch`)")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module("kunit_parser")


def parse_ktap(text: str) -> Any:
    """kunit_tool's parse of `text`: its main Test object (printing silenced)."""
    parser = kunit_parser()
    printer_mod = importlib.import_module("kunit_printer")
    printer = printer_mod.Printer(print=False)
    return parser.parse_run_tests(text.splitlines(keepends=True), printer)
