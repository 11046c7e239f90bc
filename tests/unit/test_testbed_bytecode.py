"""The host writes the engine's bytecode before a boot: the guest's root is read-only."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import vfio_scenario
import vfio_scenario.drivers


def _sources() -> list[Path]:
    folders = {*vfio_scenario.__path__, *vfio_scenario.drivers.__path__}
    return sorted(p for folder in folders for p in Path(folder).rglob("*.py"))


def test_every_module_of_the_engine_gets_current_bytecode_despite_dontwritebytecode() -> None:
    guest_module = Path(vfio_scenario.__path__[0]) / "run" / "guest.py"
    stale = Path(importlib.util.cache_from_source(str(guest_module)))
    stale.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    program = "from vfio_scenario.testbed.bytecode import compile_engine; compile_engine()"
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=120)
    cached = {src: Path(importlib.util.cache_from_source(str(src))) for src in _sources()}
    missing = [str(src) for src, pyc in cached.items()
               if not pyc.exists() or pyc.stat().st_mtime < src.stat().st_mtime]
    assert missing == []
    assert stale.exists()
