"""Which VFIO driver a device is bound to, read from a fake sysfs tree, and how
`requires: vfio_driver` matches it.

The tree holds functions bound to vfio-pci and to the variant drivers of Linux 7.2's
drivers/vfio/pci/ (its Makefile's history lists nvgrace-gpu, mlx5,
virtio, pds and hisi_acc; xe and qat came later), each under the name its struct
pci_driver registers, i.e. as /sys/bus/pci/drivers/ spells it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from vfio_scenario.run import probe
from vfio_scenario.run.plan import DeviceCaps, HostCaps, plan
from vfio_scenario.uapi import sysfs

from tests.helpers.scenarios import compile_text

# BDF → the driver name sysfs shows for it (Linux 7.2: KBUILD_MODNAME, or a literal)
BOUND = {
    "0000:01:00.0": "vfio-pci",
    "0000:02:00.0": "nvgrace_gpu_vfio_pci",
    "0000:03:00.0": "mlx5_vfio_pci",
    "0000:04:00.0": "virtio_vfio_pci",
    "0000:05:00.0": "pds_vfio_pci",
    "0000:06:00.0": "hisi_acc_vfio_pci",
    "0000:07:00.0": "xe-vfio-pci",
    "0000:08:00.0": "qat_vfio_pci",
    "0000:09:00.0": "mlx5_core",  # the PF's own driver: not a VFIO driver
    "0000:0a:00.0": "nvme",
}
UNBOUND = "0000:0b:00.0"
# how scenarios, Kconfig help and docs write each name → the sysfs spelling
WRITTEN = {
    "vfio-pci": "vfio-pci",
    "vfio_pci": "vfio-pci",
    "nvgrace-gpu-vfio-pci": "nvgrace_gpu_vfio_pci",
    "mlx5-vfio-pci": "mlx5_vfio_pci",
    "virtio-vfio-pci": "virtio_vfio_pci",
    "pds-vfio-pci": "pds_vfio_pci",
    "pds_vfio_pci": "pds_vfio_pci",
    "hisi-acc-vfio-pci": "hisi_acc_vfio_pci",
    "xe-vfio-pci": "xe-vfio-pci",
    "xe_vfio_pci": "xe-vfio-pci",
    "qat-vfio-pci": "qat_vfio_pci",
}


@pytest.fixture
def fake_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    devices = tmp_path / "sys/bus/pci/devices"
    drivers = tmp_path / "sys/bus/pci/drivers"
    devices.mkdir(parents=True)
    drivers.mkdir(parents=True)
    for bdf, name in BOUND.items():
        (drivers / name).mkdir(exist_ok=True)
        (devices / bdf).mkdir()
        (devices / bdf / "driver").symlink_to(drivers / name)
    (devices / UNBOUND).mkdir()
    monkeypatch.setattr(sysfs, "PCI_DEVICES", devices)
    monkeypatch.setattr(sysfs, "PCI_DRIVERS", drivers)
    monkeypatch.setattr(sysfs, "SYS_MODULE", tmp_path / "sys/module")
    monkeypatch.setattr(probe, "PCI_DEVICES", devices)
    return tmp_path


def test_the_bound_driver_is_read_as_sysfs_spells_it(fake_sysfs: Path) -> None:
    for bdf, name in BOUND.items():
        assert sysfs.bound_driver(bdf) == name
    assert sysfs.bound_driver(UNBOUND) == ""


def test_vfio_pci_and_every_variant_is_detected_exactly(fake_sysfs: Path) -> None:
    vfio = {bdf: sysfs.vfio_driver(bdf) for bdf in (*BOUND, UNBOUND)}
    assert vfio == {**{b: n for b, n in BOUND.items() if n not in ("mlx5_core", "nvme")},
                    "0000:09:00.0": "", "0000:0a:00.0": "", UNBOUND: ""}
    assert probe.vfio_bound_devices() == [b for b, n in BOUND.items()
                                          if n not in ("mlx5_core", "nvme")]


def test_a_variant_not_in_the_list_is_known_by_its_vfio_dev_folder(fake_sysfs: Path) -> None:
    devices = fake_sysfs / "sys/bus/pci/devices"
    (fake_sysfs / "sys/bus/pci/drivers/acme_vfio_pci").mkdir()
    (devices / "0000:0c:00.0").mkdir()
    (devices / "0000:0c:00.0/driver").symlink_to(fake_sysfs / "sys/bus/pci/drivers/acme_vfio_pci")
    assert sysfs.vfio_driver("0000:0c:00.0") == ""  # a name alone proves nothing
    (devices / "0000:0c:00.0/vfio-dev/vfio7").mkdir(parents=True)
    assert sysfs.vfio_driver("0000:0c:00.0") == "acme_vfio_pci"


def test_a_variant_not_in_the_list_is_known_as_a_holder_of_vfio_pci_core(
        fake_sysfs: Path) -> None:
    drivers = fake_sysfs / "sys/bus/pci/drivers"
    module = fake_sysfs / "sys/module"
    (module / "acme_vfio_pci").mkdir(parents=True)
    (drivers / "acme_vfio_pci").mkdir()
    (drivers / "acme_vfio_pci/module").symlink_to(module / "acme_vfio_pci")
    assert not sysfs.is_vfio_driver("acme_vfio_pci")
    (module / "vfio_pci_core/holders").mkdir(parents=True)
    (module / "vfio_pci_core/holders/acme_vfio_pci").symlink_to(module / "acme_vfio_pci")
    assert sysfs.is_vfio_driver("acme_vfio_pci")
    assert not sysfs.is_vfio_driver("nvme")


def _case_requiring(vfio_driver: str):  # type: ignore[no-untyped-def]
    text = textwrap.dedent(f"""
        name: needs-{vfio_driver}
        requires: {{vfio_driver: {vfio_driver}, iommu_modes: [iommufd]}}
        steps:
          - open_iommu: {{}}
            as: iommu
          - open_device: {{iommu: iommu}}
    """)
    [case] = compile_text(text, "s.yaml")
    return case


def _caps() -> HostCaps:
    devices = [DeviceCaps(bdf=bdf, vfio_driver=sysfs.bound_driver(bdf) or None)
               for bdf in (*BOUND, UNBOUND)]
    return HostCaps(kernel_release="7.2", iommu_modes={"iommufd": None}, devices=devices)


@pytest.mark.parametrize("written", sorted(WRITTEN))
def test_requires_vfio_driver_matches_dash_and_underscore_spellings(
        fake_sysfs: Path, written: str) -> None:
    [planned] = plan([_case_requiring(written)], _caps())
    assert planned.skip is None
    assert [d.bdf for d in planned.devices] == \
        [b for b, n in BOUND.items() if n == WRITTEN[written]]


def test_requires_vfio_driver_skips_every_other_binding_with_its_name(fake_sysfs: Path) -> None:
    [planned] = plan([_case_requiring("nvgrace-gpu-vfio-pci")],
                     HostCaps(kernel_release="7.2", iommu_modes={"iommufd": None},
                              devices=[d for d in _caps().devices
                                       if d.vfio_driver != "nvgrace_gpu_vfio_pci"]))
    assert planned.devices == []
    assert planned.skip is not None
    assert "0000:03:00.0 (0000:0000): bound to mlx5_vfio_pci, not nvgrace-gpu-vfio-pci" \
        in planned.skip
    assert f"{UNBOUND} (0000:0000): bound to no driver, not nvgrace-gpu-vfio-pci" in planned.skip
    # a variant is not vfio-pci: `vfio_driver: vfio-pci` does not take an mlx5 VF
    [planned] = plan([_case_requiring("vfio-pci")], _caps())
    assert [d.bdf for d in planned.devices] == ["0000:01:00.0"]
