"""The engine never imports the command line: a walk over every module's imports.

The command-line modules (engine/cli.py, engine/commands.py, each */cli.py and
*_cli.py, engine/__main__.py) parse arguments and call into the layers below them;
an import the other way (e.g. the run's dispatcher importing `compile_or_raise` from
engine/commands.py) ties the engine to argparse and makes cycles. Imports inside
functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder → the import name it is installed as (setup.py's package-dir mapping)
PACKAGES = {ROOT / "engine": "vfio_scenario", ROOT / "drivers": "vfio_scenario.drivers"}


def module_names(packages: dict[Path, str]) -> dict[str, Path]:
    """Every module's import name → its file."""
    found = {}
    for folder, name in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((name, *parts))] = path
    return found


def is_command_line(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module in ("vfio_scenario.commands", "vfio_scenario.__main__") or last == "cli" \
        or last.endswith("_cli")


def imported(module: str, path: Path) -> set[str]:
    """The modules `path` imports, absolute (`from a import b` counts as a and a.b)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def upward_imports(packages: dict[Path, str]) -> list[str]:
    """"module imports command-line module" for each import from below the command line."""
    modules = module_names(packages)
    found = []
    for module, path in modules.items():
        if is_command_line(module):
            continue
        for name in sorted(imported(module, path)):
            if name in modules and is_command_line(name):
                found.append(f"{module} imports {name}")
    return found


def test_no_module_below_the_command_line_imports_it() -> None:
    assert upward_imports(PACKAGES) == []


def test_the_walk_sees_the_command_line_modules() -> None:
    modules = module_names(PACKAGES)
    command_line = sorted(m for m in modules if is_command_line(m))
    assert {"vfio_scenario.cli", "vfio_scenario.commands", "vfio_scenario.run.cli",
            "vfio_scenario.testbed.cli", "vfio_scenario.report.cli",
            "vfio_scenario.report.diff_cli"} <= set(command_line)
    assert "vfio_scenario.run.dispatch" in modules
    assert "vfio_scenario.drivers.edu" in modules


@pytest.mark.parametrize("source", [
    "from vfio_scenario.commands import compile_or_raise\n",
    "def f():\n    from vfio_scenario.run.cli import in_guest\n",
    "from ..report import diff_cli\n",
    "import vfio_scenario.cli\n",
    "from vfio_scenario.testbed import cli as testbed_cli\n",
])
def test_an_upward_import_is_found(tmp_path: Path, source: str) -> None:
    """The walk fails on each spelling of an import of the command line, also the
    relative ones and those inside a function."""
    engine = tmp_path / "engine"
    for folder in ("", "run", "report", "testbed"):
        (engine / folder).mkdir(exist_ok=True)
        (engine / folder / "__init__.py").write_text("")
    for name in ("cli.py", "commands.py", "run/cli.py", "report/diff_cli.py",
                 "testbed/cli.py"):
        (engine / name).write_text("")
    (engine / "run" / "dispatch.py").write_text(source)
    found = upward_imports({engine: "vfio_scenario"})
    assert len(found) == 1 and found[0].startswith("vfio_scenario.run.dispatch imports "), found
