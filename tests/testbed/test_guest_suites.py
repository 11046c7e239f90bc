"""Each tests/guest/test_*.py module, run by pytest INSIDE the testbed VM.

One host test per module: the guest's pytest must exit 0; its output is shown on failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GUEST_MODULES = sorted(p.name for p in (REPO / "tests" / "guest").glob("test_*.py"))
MODULE_TIMEOUT = 900.0  # seconds; TCG runs the guest suites slowly


@pytest.mark.testbed
@pytest.mark.parametrize("module", GUEST_MODULES)
def test_guest_module_passes_in_the_testbed(testbed: Any, module: str) -> None:
    result = testbed.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"tests/guest/{module}"], timeout=MODULE_TIMEOUT, cwd=str(REPO))
    assert result.returncode == 0, (
        f"guest pytest of {module} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
