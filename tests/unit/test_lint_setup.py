"""ruff and mypy as CI runs them: mypy's view of the package is complete, and .ci/run
fails on either before it runs the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "typecheck" / "vfio_scenario"


def test_mypys_layout_links_every_entry_of_engine_and_the_drivers() -> None:
    """typecheck/vfio_scenario is the installed package in symlinks: each entry of
    engine/ under its name, drivers/ as `drivers`, and nothing else."""
    want = {e.name: e for e in (ROOT / "engine").iterdir()
            if e.name != "__pycache__" and not e.name.endswith((".pyc", ".so"))}
    want["drivers"] = ROOT / "drivers"
    have = {e.name: e for e in LAYOUT.iterdir()}
    assert sorted(have) == sorted(want), "a link of typecheck/vfio_scenario is missing or extra"
    for name, link in have.items():
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), name
        assert link.resolve() == want[name].resolve(), name


def test_mypy_and_ruff_read_their_settings_from_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy = config["tool"]["mypy"]
    assert mypy["strict"] is True
    assert mypy["files"] == ["typecheck/vfio_scenario", "tests", "benchmarks"]
    lint = config["tool"]["ruff"]["lint"]
    assert set(lint["extend-select"]) == {"B", "SIM", "C90", "UP", "RUF"}
    assert lint["mccabe"]["max-complexity"] == 12


def _ci_copy(tmp_path: Path, failing: str | None) -> tuple[Path, Path]:
    """.ci/run in a tree whose commands are stubs that log their names; `failing` exits 1."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    log = tmp_path / "ran.log"
    stubs = {"scripts/bootstrap": "bootstrap", ".venv-deb12/bin/vfio-scenario": "deb12-run",
             ".venv/bin/ruff": "ruff", ".venv/bin/mypy": "mypy", ".venv/bin/python": "pytest"}
    for path, name in stubs.items():
        stub = tmp_path / path
        stub.parent.mkdir(parents=True, exist_ok=True)
        status = 1 if name == failing else 0
        # the Debian-12 venv's command logs its subcommand: `testbed` (a kernel's
        # build, in the background) or `run` (scenarios/host, there too)
        logged = "deb12-$1" if name == "deb12-run" else name
        stub.write_text(f"#!/bin/sh\necho {logged} >> '{log}'\nexit {status}\n")
        stub.chmod(0o755)
    return tmp_path / ".ci" / "run", log


@pytest.mark.parametrize("failing", ["ruff", "mypy"])
def test_ci_fails_on_unclean_lint_before_the_tests(tmp_path: Path, failing: str) -> None:
    run, log = _ci_copy(tmp_path, failing)
    proc = subprocess.run([str(run)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    # the background job (the kernels' builds, scenarios/host) may log at any time
    ran = [r for r in log.read_text().split() if not r.startswith("deb12-")]
    assert ran[-1] == failing and "pytest" not in ran


def test_ci_runs_ruff_and_mypy_then_the_tests(tmp_path: Path) -> None:
    run, log = _ci_copy(tmp_path, None)
    proc = subprocess.run([str(run)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    ran = log.read_text().split()
    # once both bootstraps made the venvs, one background job fetches the testbed (the
    # default kernel), runs scenarios/host in it, builds the debug kernel, then the
    # coverage kernel; when it logs beside the rest is up to the scheduler
    assert [r for r in ran if r.startswith("deb12-")] == ["deb12-testbed", "deb12-run",
                                                         "deb12-testbed", "deb12-testbed"]
    ran = [r for r in ran if not r.startswith("deb12-")]
    assert ran == ["bootstrap", "bootstrap", "ruff", "mypy", "pytest"]
    # the background job starts after the second bootstrap, and the run waits for it
    assert log.read_text().split().index("deb12-testbed") > 1


def test_every_declared_dependency_is_imported_by_the_engine() -> None:
    """No declared dependency without a use: each one provides a module that a module
    of engine/ or drivers/ imports (ruamel.yaml.clib shares the `ruamel` namespace; it is
    the C composer ruamel.yaml loads when the loader asks for `pure=False`)."""
    import ast
    import re
    from importlib.metadata import packages_distributions

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower()
                for d in config["project"]["dependencies"]}
    imported: set[str] = set()
    for folder in ("engine", "drivers"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    provides: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            provides.setdefault(dist.lower(), set()).add(module)
    unused = {d for d in declared if not provides.get(d, set()) & imported}
    assert unused == set()
    assert "pure=False" in (ROOT / "engine" / "language" / "loader.py").read_text()
