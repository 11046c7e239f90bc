"""scripts/bootstrap makes its venv with the interpreter the README says (PYTHON, default python3).

The interpreter and the venv's programs are stand-ins that write down how they were called,
so the script's own logic runs without installing anything (host packages skipped).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/sh
# a stand-in interpreter: `-m venv DIR` makes DIR/bin/{python,vfio-scenario} that log calls
echo "$(basename "$0") $*" >> "$LOG"
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
for prog in python vfio-scenario; do
    printf '#!/bin/sh\\necho "%s $*" >> "$LOG"\\n' "venv/$prog" > "$3/bin/$prog"
    chmod +x "$3/bin/$prog"
done
"""


def _bootstrap(tmp_path: Path, **env: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python3", "debian-python3"):
        (bin_dir / name).write_text(FAKE_PYTHON)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
            "VFIO_SCENARIO_SKIP_HOST_PACKAGES": "1", "HOME": str(tmp_path), **env}
    subprocess.run(["bash", str(REPO / "scripts" / "bootstrap")], env=full, check=True,
                   capture_output=True, text=True, timeout=60)
    return log.read_text().splitlines()


def test_bootstrap_makes_the_venv_with_python3_from_path_by_default(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert _bootstrap(tmp_path, VENV=str(venv)) == [
        f"python3 -m venv {venv}",
        "venv/python -m pip install --quiet --disable-pip-version-check -e .[test]",
        "venv/vfio-scenario testbed fetch",
    ]


def test_bootstrap_takes_the_interpreter_from_PYTHON(tmp_path: Path) -> None:
    venv = tmp_path / "venv-deb12"
    calls = _bootstrap(tmp_path, VENV=str(venv), PYTHON=str(tmp_path / "bin" / "debian-python3"))
    assert calls[0] == f"debian-python3 -m venv {venv}"
    # an existing venv is kept and only brought up to date
    assert _bootstrap(tmp_path, VENV=str(venv))[len(calls):] == calls[1:]


def test_bootstrap_skips_the_testbed_when_asked(tmp_path: Path) -> None:
    """A board that runs on its own devices (docs/ci/lava-vfio-scenario.yaml) needs no
    testbed kernel."""
    venv = tmp_path / "venv"
    assert _bootstrap(tmp_path, VENV=str(venv), VFIO_SCENARIO_SKIP_TESTBED="1") == [
        f"python3 -m venv {venv}",
        "venv/python -m pip install --quiet --disable-pip-version-check -e .[test]",
    ]
