"""The uAPI inventory (issue #20): every ioctl and VFIO_DEVICE_FEATURE of the testbed
kernel's include/uapi/linux/vfio.h and iommufd.h is issued by an operation that a scenario
under scenarios/ uses, or excluded with a reason (uapi/inventory.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.run.ops import operations
from vfio_scenario.testbed.assets import cached_source_tree
from vfio_scenario.uapi import inventory
from vfio_scenario.uapi.ioctl import IOCTLS, PROPOSED_IOCTLS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def headers() -> tuple[list[str], list[str]]:
    """(ioctls, features) of the source tree the testbed kernel is built from."""
    tree = cached_source_tree()
    if tree is None:
        pytest.skip("no Linux source in the cache (vfio-scenario testbed fetch extracts it)")
    uapi = tree / "include/uapi/linux"
    vfio, iommufd = (uapi / "vfio.h").read_text(), (uapi / "iommufd.h").read_text()
    # IOMMU_TEST_CMD, the uAPI of CONFIG_IOMMUFD_TEST's mock (the iommufd selftests' own)
    mock = (tree / "drivers/iommu/iommufd/iommufd_test.h").read_text()
    return inventory.header_ioctls(vfio) + inventory.header_ioctls(iommufd) + \
        inventory.header_ioctls(mock), inventory.header_features(vfio)


@pytest.fixture(scope="module")
def scenario_ops() -> set[str]:
    compiled = compile_paths([str(ROOT / "scenarios")])
    assert not compiled.errors
    return {s.op for c in compiled.cases for s in (*c.steps, *c.teardown)}


def test_the_header_parser_finds_ioctls_and_features() -> None:
    text = ("#define VFIO_TYPE (';')\n#define VFIO_X _IO(VFIO_TYPE, VFIO_BASE + 0)\n"
            "#define IOMMU_Y _IO(IOMMUFD_TYPE, \\\n\tIOMMUFD_CMD_Y)\n"
            "#define VFIO_DEVICE_FEATURE_GET (1 << 16)\n"
            "#define VFIO_DEVICE_FEATURE_A (0)\n#define VFIO_DEVICE_FEATURE_B 7\n")
    assert inventory.header_ioctls(text) == ["VFIO_X", "IOMMU_Y"]
    assert inventory.header_features(text) == ["VFIO_DEVICE_FEATURE_A", "VFIO_DEVICE_FEATURE_B"]


def test_the_headers_have_the_ioctls_the_uapi_layer_issues(headers: tuple[list[str], list[str]]
                                                           ) -> None:
    ioctls, features = headers
    assert set(IOCTLS) <= set(ioctls)
    assert "VFIO_DEVICE_FEATURE_PCI_VF_TOKEN" in features
    assert "VFIO_DEVICE_FEATURE_GET" not in features  # a flag, not a feature


def test_every_operation_declares_what_it_issues() -> None:
    missing = sorted(set(operations()) - set(inventory.OP_ISSUES))
    assert not missing, ("operations without an entry in uapi/inventory.py OP_ISSUES "
                         f"(an empty tuple when they issue no ioctl): {missing}")


def test_declared_names_are_the_headers_or_proposed(headers: tuple[list[str], list[str]]) -> None:
    ioctls, features = headers
    known = set(ioctls) | set(features) | set(PROPOSED_IOCTLS) | set(inventory.PROPOSED_FEATURES)
    declared = {n for names in inventory.OP_ISSUES.values() for n in names}
    listed = set(inventory.EXCLUDED) | set(inventory.NOT_YET)
    assert not declared - known, f"not in the headers: {sorted(declared - known)}"
    assert not listed - known, f"excluded but not in the headers: {sorted(listed - known)}"
    assert not set(inventory.EXCLUDED) & set(inventory.NOT_YET)


def test_every_uapi_is_used_by_a_scenario_or_excluded(
        headers: tuple[list[str], list[str]], scenario_ops: set[str]) -> None:
    ioctls, features = headers
    used = inventory.issued_by(scenario_ops)
    names = sorted(set(ioctls) | set(features))
    unaccounted = [n for n in names
                   if n not in used and n not in inventory.EXCLUDED and n not in inventory.NOT_YET]
    stale = sorted(n for n in used if n in inventory.EXCLUDED or n in inventory.NOT_YET)
    counts = inventory.counts(names, used)
    print(f"\nuAPI inventory: {counts}")
    assert not unaccounted, ("uAPI neither issued by an operation of a scenario nor excluded "
                             f"(uapi/inventory.py): {unaccounted}")
    assert not stale, f"used by a scenario now, remove from EXCLUDED/NOT_YET: {stale}"
