"""Packages and the cffi extension; everything else is in pyproject.toml.

The import package `vfio_scenario` lives in engine/ and its `drivers` subpackage in
drivers/, so the package list is derived from those two folders.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def _packages(root: str, name: str) -> dict[str, str]:
    found = {}
    for init in sorted((HERE / root).rglob("__init__.py")):
        rel = init.parent.relative_to(HERE / root)
        if "__pycache__" in rel.parts:
            continue
        found[".".join((name, *rel.parts))] = str(Path(root, *rel.parts))
    return found


package_dir = {**_packages("engine", "vfio_scenario"), **_packages("drivers", "vfio_scenario.drivers")}
cffi_build = "engine/uapi/_build.py"

setup(
    packages=sorted(package_dir),
    package_dir=package_dir,
    cffi_modules=[f"{cffi_build}:ffibuilder"] if (HERE / cffi_build).exists() else [],
)
