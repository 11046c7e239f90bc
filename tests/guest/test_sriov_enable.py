"""SR-IOV on a PF bound to vfio-pci (the testbed's igb): what gates VF creation and
removal, and the scenario language's way to reach a VF (`open_device` pf/vf).

vfio_token's own checks (EACCES without or with another token, in every mode) are in
test_uapi_sriov.py and scenarios/sriov/.
"""

from __future__ import annotations

import errno
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.run.ops.device import ENABLE_SRIOV_PARAM
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import open_iommu
from vfio_scenario.uapi.iommufd import Iommufd
from vfio_scenario.uapi.modes import IommuMode

IGB_PF = (0x8086, 0x10C9)
IGB_VF = (0x8086, 0x10CA)


@pytest.fixture(scope="module")
def pf_bdf() -> str:
    found = sysfs.find_devices(*IGB_PF)
    if not found:
        pytest.skip("no SR-IOV PF (igb 8086:10c9) in this VM: testbed devices lack igb")
    assert sysfs.bound_driver(found[0]) == "vfio-pci"
    return found[0]


@pytest.fixture
def iommufd() -> Iterator[Iommufd]:
    opened = open_iommu(IommuMode.IOMMUFD)
    assert isinstance(opened, Iommufd)
    yield opened
    opened.close()


@pytest.fixture
def sriov_param_off() -> Iterator[None]:
    before = Path(ENABLE_SRIOV_PARAM).read_text().strip()
    Path(ENABLE_SRIOV_PARAM).write_text("N\n")
    yield
    Path(ENABLE_SRIOV_PARAM).write_text(f"{before}\n")


def test_the_testbed_allows_sriov_through_vfio_pci(pf_bdf: str) -> None:
    assert Path(ENABLE_SRIOV_PARAM).read_text().strip() == "Y"
    assert sysfs.sriov_totalvfs(pf_bdf) == 8


def test_without_enable_sriov_vfio_pci_refuses_to_create_vfs(
        pf_bdf: str, iommufd: Iommufd, sriov_param_off: None) -> None:
    with VfioDevice.open(iommufd, pf_bdf), pytest.raises(VfioError) as e:
        sysfs.set_sriov_numvfs(pf_bdf, 1)
    assert e.value.errno == errno.ENOENT
    assert sysfs.read_attr(pf_bdf, "sriov_numvfs") == "0"


def test_vfs_bind_to_vfio_pci_in_their_own_groups(pf_bdf: str, iommufd: Iommufd) -> None:
    with VfioDevice.open(iommufd, pf_bdf) as pf:
        pf.set_vf_token(str(uuid.uuid4()))
        sysfs.set_sriov_numvfs(pf_bdf, 2)
        try:
            vfs = [sysfs.virtfn(pf_bdf, i) for i in range(2)]
            assert [v.split(":", 1)[1] for v in vfs] == ["01:10.0", "01:10.2"]  # offset 128, stride 2
            assert [sysfs.bound_driver(v) for v in vfs] == ["vfio-pci"] * 2
            groups = {sysfs.iommu_group(v) for v in vfs} | {sysfs.iommu_group(pf_bdf)}
            assert len(groups) == 3
            with pytest.raises(VfioError) as e:
                sysfs.virtfn(pf_bdf, 2)
            assert e.value.errno == errno.ENODEV
        finally:
            sysfs.set_sriov_numvfs(pf_bdf, 0)


def test_removing_vfs_waits_for_an_open_vf_to_be_closed(pf_bdf: str,
                                                        iommufd: Iommufd) -> None:
    token = str(uuid.uuid4())
    pf = VfioDevice.open(iommufd, pf_bdf)
    pf.set_vf_token(token)
    sysfs.set_sriov_numvfs(pf_bdf, 1)
    vf = VfioDevice.open(iommufd, sysfs.virtfn(pf_bdf, 0), token)
    assert (vf.vendor_id, vf.device_id) == IGB_VF
    removal = threading.Thread(target=sysfs.set_sriov_numvfs, args=(pf_bdf, 0))
    removal.start()
    try:
        removal.join(1.0)
        assert removal.is_alive()  # the kernel waits for the VF's release
    finally:
        closed = time.monotonic()
        vf.close()
        removal.join(30.0)
        pf.close()
    assert not removal.is_alive()
    assert time.monotonic() - closed < 10.0
    assert sysfs.read_attr(pf_bdf, "sriov_numvfs") == "0"

