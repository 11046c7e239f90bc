"""Shared fixtures: the testbed VM (one per pytest session) for tests marked `testbed`.

tests/guest/ holds tests that run INSIDE the testbed VM; the host's pytest never
collects them (they need /dev/vfio); tests/testbed/test_guest_suites.py runs them there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

if os.environ.get("VFIO_SCENARIO_GUEST") != "1":
    collect_ignore = ["guest"]

_boot_failure: list[str] = []

# The order tests run in: those that need no testbed kernel first, then those of the
# default kernel, then those of the debug kernel, the coverage kernel's last. CI (.ci/run)
# builds the three kernels in the background in that order while pytest runs, and a test
# of a kernel still being built waits on its build lock: on a cold cache the unit tests
# run during the default kernel's build and the default kernel's tests during the other
# two builds.
_KERNEL_RANK = {"debug": 2, "coverage": 3}


def _rank(item: pytest.Item) -> int:
    marker = item.get_closest_marker("kernel")
    if marker is not None:
        return _KERNEL_RANK[marker.args[0]]
    return 0 if item.path.parent.name == "unit" else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: within a rank, pytest's own order


@pytest.fixture(scope="session")
def testbed() -> Iterator[Any]:
    """The session's testbed VM (default kernel and devices: edu, edu, igb, nvme), booted once.

    When it cannot start, every test that uses it fails with the reason: CI installs
    everything the testbed needs, so a missing QEMU or kernel is a bug, not a skip."""
    from vfio_scenario.testbed import Testbed
    from vfio_scenario.testbed.progress import stderr_reporter

    if _boot_failure:
        pytest.fail(_boot_failure[0], pytrace=False)
    bed = Testbed(kernel=os.environ.get("VFIO_SCENARIO_TESTBED_KERNEL", "default"),
                  report=stderr_reporter)
    try:
        bed.start()
    except Exception as exc:  # noqa: BLE001 - any failure to boot is the tests' failure
        _boot_failure.append(f"the testbed did not start: {type(exc).__name__}: {exc}")
        bed.stop()
        pytest.fail(_boot_failure[0], pytrace=False)
    try:
        yield bed
    finally:
        bed.stop()
