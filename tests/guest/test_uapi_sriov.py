"""VF tokens: a PF sets one (PCI_VF_TOKEN), its VFs open only with it.

Needs an SR-IOV PF bound to vfio-pci (the testbed's igb: `testbed run --device edu
--device igb`); elsewhere the tests skip with that reason.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import _prepare_guest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.container import Container
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu

IGB_PF = (0x8086, 0x10C9)
IGB_VF = (0x8086, 0x10CA)


@pytest.fixture
def pf_bdf() -> str:
    found = sysfs.find_devices(*IGB_PF)
    if not found:
        pytest.skip("no SR-IOV PF (igb 8086:10c9) in this VM; boot with --device igb")
    _prepare_guest(found[0])
    return found[0]


@pytest.fixture
def vf_with_token(iommu: Iommu, pf_bdf: str) -> Iterator[tuple[str, str]]:
    pf = VfioDevice.open(iommu, pf_bdf)
    token = str(uuid.uuid4())
    try:
        pf.set_vf_token(token)
        sysfs.set_sriov_numvfs(pf_bdf, 1)
        vf = os.path.basename(os.readlink(sysfs.device_dir(pf_bdf) / "virtfn0"))
        deadline = time.monotonic() + 5
        while sysfs.bound_driver(vf) != "vfio-pci" and time.monotonic() < deadline:
            time.sleep(0.05)
        yield vf, token
        if isinstance(iommu, Container):
            # A VF whose group is still held makes disabling SR-IOV wait for it.
            iommu.release_group(vf)
    finally:
        # Everything that holds a VF or the PF goes before SR-IOV is disabled: removing
        # a VF that is still held makes the kernel wait for its release.
        pf.close()
        sysfs.set_sriov_numvfs(pf_bdf, 0)


def test_vf_opens_only_with_the_pf_token(iommu: Iommu,
                                         vf_with_token: tuple[str, str]) -> None:
    vf_bdf, token = vf_with_token
    assert sysfs.bound_driver(vf_bdf) == "vfio-pci"
    expected_op = "VFIO_GROUP_GET_DEVICE_FD" if iommu.mode.uses_container else (
        "VFIO_DEVICE_BIND_IOMMUFD")
    for wrong in (None, str(uuid.uuid4())):
        with pytest.raises(VfioError) as info:
            VfioDevice.open(iommu, vf_bdf, vf_token=wrong)
        assert (info.value.errno_name, info.value.op) == ("EACCES", expected_op)
    with VfioDevice.open(iommu, vf_bdf, vf_token=token) as vf:
        assert (vf.vendor_id, vf.device_id) == IGB_VF
