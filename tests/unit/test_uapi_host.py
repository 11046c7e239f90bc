"""Host-side facts: modes, kernel config parsing, IOMMU debugfs parsing, capability report."""

from __future__ import annotations

import os

import pytest
from vfio_scenario.uapi import debugfs
from vfio_scenario.uapi.capabilities import DEVICE_FEATURES, HOST_FEATURES, host_capabilities
from vfio_scenario.uapi.kconfig import parse
from vfio_scenario.uapi.modes import ALL_MODES, IommuMode


def test_the_five_selftest_modes_and_their_nodes() -> None:
    assert [m.value for m in ALL_MODES] == [
        "vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
        "iommufd_compat_type1v2", "iommufd"]
    assert [m.container_path for m in ALL_MODES] == [
        "/dev/vfio/vfio", "/dev/vfio/vfio", "/dev/iommu", "/dev/iommu", "/dev/iommu"]
    assert [m.type1_version for m in ALL_MODES] == ["type1", "type1v2", "type1", "type1v2", ""]
    assert not IommuMode.IOMMUFD.uses_container


def test_kconfig_parse_keeps_set_options_and_strips_quotes() -> None:
    text = ('CONFIG_VFIO=m\n# CONFIG_VFIO_NOIOMMU is not set\n'
            'CONFIG_LOCALVERSION="-edu"\nCONFIG_IOMMUFD=y\n')
    assert parse(text) == {"CONFIG_VFIO": "m", "CONFIG_LOCALVERSION": "-edu",
                           "CONFIG_IOMMUFD": "y"}


# The line shapes of drivers/iommu/intel/debugfs.c (7.2) dump_page_info(): a 4-level
# table (PML5E printed as 0), one 1 GiB leaf, one 2 MiB leaf and one 4 KiB leaf.
INTEL_DUMP = """Device 0000:00:03.0 @0x10c4000
IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE
0x0000000040000 |\t0x0000000000000000\t0x0000000010c5003\t0x00000000800000e3
0x0000000000200 |\t0x0000000000000000\t0x0000000010c5003\t0x00000000010c6003\t0x0000000020000083
0x0000000000001 |\t0x0000000000000000\t0x0000000010c5003\t0x00000000010c6003\t0x00000000010c7003\t0x0000000030001003
"""


def test_intel_dump_leaves_give_page_sizes() -> None:
    assert debugfs.parse_intel(INTEL_DUMP) == [
        (0x40000 << 12, 1 << 30), (0x200 << 12, 2 << 20), (0x1000, 4096)]
    table = debugfs.PageTable(True, leaves=debugfs.parse_intel(INTEL_DUMP))
    assert table.page_sizes(0x200000, 4 << 20) == {2 << 20: 2 << 20}
    assert table.page_sizes(0x1000, 0x1000) == {4096: 4096}


def test_capability_report_answers_every_mode_and_feature_with_a_reason() -> None:
    report = host_capabilities()
    assert set(report.iommu_modes) == set(ALL_MODES)
    assert set(report.features) == set(HOST_FEATURES)
    for mode, availability in report.iommu_modes.items():
        if not os.path.exists(mode.container_path):
            assert not availability
            assert availability.reason == f"{mode.container_path} does not exist"
    assert report.features["iommufd"].available == os.path.exists("/dev/iommu")
    for name in DEVICE_FEATURES:
        assert report.feature(name).reason == "no device to probe"
    assert report.feature("teleport").reason == "unknown feature 'teleport'"
    data = report.to_dict()
    assert set(data["iommu_modes"]) == {m.value for m in ALL_MODES}
    assert data["kernel_release"] == os.uname().release


def test_kernel_log_sees_only_records_written_after_it_was_opened() -> None:
    import uuid

    from vfio_scenario.uapi.kmsg import KernelLog

    marker = f"vfio-scenario kmsg test {uuid.uuid4()}"
    try:
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"{marker} before\n")
    except OSError as e:
        pytest.skip(f"cannot write /dev/kmsg here: {e}")
    log = KernelLog()
    try:
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"{marker} after\n")
        assert log.wait_for(f"{marker} after", 1.0) == f"{marker} after"
        assert log.wait_for(f"{marker} before", 0.1) is None
    finally:
        log.close()
