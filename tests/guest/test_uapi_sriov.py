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
from vfio_scenario.uapi.ioctl import ioctl_val
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


# The kernel selftest's fixture (vfio_pci_sriov_uapi_test.c): one VF made through sysfs
# while nobody has the PF open, then the PF opened with a token, which sets it (no VF
# is open yet); vfio_pci_core_match_token_uuid() answers EACCES for a wrong token and
# for none alike.
UUID_1 = "52ac9bff-3a88-4fbd-901a-0d767c3b6c97"
UUID_2 = "88594674-90a0-47a9-aea8-9d9b352ac08a"


@pytest.fixture
def vf_before_pf(iommu: Iommu, pf_bdf: str) -> Iterator[tuple[VfioDevice, str]]:
    sysfs.set_sriov_numvfs(pf_bdf, 1)
    vf = sysfs.virtfn(pf_bdf, 0)
    try:
        deadline = time.monotonic() + 5
        while sysfs.bound_driver(vf) != "vfio-pci" and time.monotonic() < deadline:
            time.sleep(0.05)
        pf = VfioDevice.open(iommu, pf_bdf, vf_token=UUID_1)
        yield pf, vf
        pf.close()
        if isinstance(iommu, Container):
            iommu.release_group(vf)
            iommu.release_group(pf_bdf)
    finally:
        sysfs.set_sriov_numvfs(pf_bdf, 0)


def _vf_open_errno(iommu: Iommu, vf: str, token: str | None) -> str:
    try:
        VfioDevice.open(iommu, vf, vf_token=token).close()
    except VfioError as e:
        return e.errno_name
    return "ok"


def test_opening_the_pf_with_a_token_sets_it(iommu: Iommu,
                                             vf_before_pf: tuple[VfioDevice, str]) -> None:
    _, vf = vf_before_pf
    assert [_vf_open_errno(iommu, vf, t) for t in (UUID_1, UUID_2, None)] == \
        ["ok", "EACCES", "EACCES"]


def test_the_token_outlives_the_pfs_close(iommu: Iommu,
                                          vf_before_pf: tuple[VfioDevice, str],
                                          pf_bdf: str) -> None:
    pf, vf = vf_before_pf
    pf.close()
    if isinstance(iommu, Container):
        iommu.release_group(pf_bdf)  # the selftest closes the group fd too
        assert iommu.groups == {} and not iommu.iommu_set
    assert [_vf_open_errno(iommu, vf, t) for t in (UUID_1, UUID_2, None)] == \
        ["ok", "EACCES", "EACCES"]


def test_setting_the_token_on_the_open_pf_replaces_it(
        iommu: Iommu, vf_before_pf: tuple[VfioDevice, str]) -> None:
    pf, vf = vf_before_pf
    pf.set_vf_token(UUID_2)
    assert [_vf_open_errno(iommu, vf, t) for t in (UUID_1, UUID_2, None)] == \
        ["EACCES", "ok", "EACCES"]


# SET_IOMMU on a container that no group is in, after its last group left: legacy VFIO
# refuses it (the container went back to the unset state and needs a group first);
# iommufd's compat container keeps its IOAS and accepts it (found in the testbed, 7.2).
SET_IOMMU_WITHOUT_GROUP = {"vfio_type1_iommu": "EINVAL", "vfio_type1v2_iommu": "EINVAL",
                           "iommufd_compat_type1": "ok", "iommufd_compat_type1v2": "ok"}


def test_a_container_left_by_its_last_group_takes_set_iommu_again(
        iommu: Iommu, pf_bdf: str) -> None:
    """When the last group leaves, the next group to join sets the IOMMU type again, as
    the kernel selftests do (SET_CONTAINER, then SET_IOMMU); both kinds of container
    accept that."""
    if not isinstance(iommu, Container):
        pytest.skip("a container mode's behaviour")
    VfioDevice.open(iommu, pf_bdf).close()
    iommu.release_group(pf_bdf)
    assert not iommu.iommu_set
    try:
        ioctl_val(iommu.fd, "VFIO_SET_IOMMU", iommu.iommu_type, iommu.handle)
        answer = "ok"
    except VfioError as e:
        answer = e.errno_name
    assert answer == SET_IOMMU_WITHOUT_GROUP[iommu.mode.value]
    with VfioDevice.open(iommu, pf_bdf) as again:
        assert iommu.iommu_set
        assert (again.vendor_id, again.device_id) == IGB_PF
