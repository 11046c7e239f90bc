"""The VFIO uAPI on QEMU's edu device, in every IOMMU mode the guest kernel offers."""

from __future__ import annotations

import pytest
from vfio_scenario.drivers.edu import ID_VALUE as EDU_ID_REGISTER
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.buffers import Backing, DmaBuffer
from vfio_scenario.uapi.capabilities import HostCapabilities
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import Iommu
from vfio_scenario.uapi.mmio import AccessFault
from vfio_scenario.uapi.pci import PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY

MiB = 1 << 20


def test_config_space_has_edu_ids(device: VfioDevice) -> None:
    assert device.config_read(0, 2) == 0x1234
    assert device.config_read(2, 2) == 0x11E8
    assert device.config_read(0, 4) == 0x11E81234
    assert (device.vendor_id, device.device_id) == (0x1234, 0x11E8)


def test_device_and_region_info(device: VfioDevice) -> None:
    info = device.info()
    assert "pci" in info.flag_names
    assert (info.num_regions, info.num_irqs) == (9, 5)
    bar0 = device.region_info("bar0")
    assert bar0.size == MiB
    assert bar0.flag_names == ["read", "write", "mmap"]
    config = device.region_info("config")
    assert config.offset == 0x70000000000
    assert device.region_info("bar1").size == 0


@pytest.mark.parametrize("via", ["mmap", "region"])
def test_identification_register_through_mmap_and_region(device: VfioDevice, via: str) -> None:
    assert device.bar_read(0, 0, 4, via=via) == EDU_ID_REGISTER


@pytest.mark.parametrize("via", ["mmap", "region"])
def test_edu_answers_only_4_byte_accesses_below_0x80(device: VfioDevice, via: str) -> None:
    # Measured on QEMU 10.0.2: an 8-byte read reaches edu_mmio_read, which answers ~0;
    # 1- and 2-byte reads are below edu's minimum access size and complete with 0.
    assert device.bar_read(0, 0, 8, via=via) == 0xFFFF_FFFF_FFFF_FFFF
    assert device.bar_read(0, 0, 2, via=via) == 0
    assert device.bar_read(0, 0, 1, via=via) == 0


@pytest.mark.parametrize("backing", [Backing.ANONYMOUS, Backing.MEMFD, Backing.HUGETLB_2M])
def test_map_and_unmap(iommu: Iommu, device: VfioDevice, caps: HostCapabilities,
                       backing: Backing) -> None:
    if backing is Backing.HUGETLB_2M and not caps.features["hugetlb-2M"]:
        pytest.skip(caps.features["hugetlb-2M"].reason)
    with DmaBuffer(2 * MiB, backing) as buf:
        mapping = iommu.map_buffer(buf)
        assert any(r.contains(mapping.iova, mapping.size) for r in iommu.iova_ranges())
        assert mapping.unmap() == 2 * MiB


def test_unmap_all_reports_the_bytes_unmapped(iommu: Iommu, device: VfioDevice) -> None:
    with DmaBuffer(64 * 1024) as a, DmaBuffer(8192) as b:
        iommu.map_buffer(a)
        iommu.map_buffer(b)
        assert iommu.unmap_all() == 64 * 1024 + 8192


def test_msi_from_the_raise_register_and_from_a_software_trigger(device: VfioDevice) -> None:
    old = device.set_command_bits(PCI_COMMAND_MASTER, True)
    irq = device.enable_irq("msi", 1)
    try:
        device.bar_write(0, 0x60, 4, 1)
        assert irq.wait(0, timeout=1.0) >= 1
        device.bar_write(0, 0x64, 4, 1)
        irq.trigger(0)
        assert irq.wait(0, timeout=1.0) == 1
        assert irq.wait(0, timeout=0.1) == 0
    finally:
        irq.disable()
        device.config_write(PCI_COMMAND, 2, old)


def test_intx_from_the_raise_register_is_automasked_until_unmasked(device: VfioDevice) -> None:
    irq = device.enable_irq("intx", 1)
    try:
        assert "automasked" in device.irq_info("intx").flag_names
        device.bar_write(0, 0x60, 4, 1)
        assert irq.wait(0, timeout=1.0) == 1
        device.bar_write(0, 0x64, 4, 1)
        irq.unmask(0)
        device.bar_write(0, 0x60, 4, 1)
        assert irq.wait(0, timeout=1.0) == 1
        device.bar_write(0, 0x64, 4, 1)
        irq.unmask(0)
    finally:
        irq.disable()


def test_irq_info_counts(device: VfioDevice) -> None:
    assert device.irq_info("intx").count == 1
    assert device.irq_info("msi").count == 1
    assert device.irq_info("msix").count == 0


def test_edu_has_no_reset(device: VfioDevice) -> None:
    assert "reset" not in device.info().flag_names
    with pytest.raises(VfioError) as info:
        device.reset()
    assert (info.value.errno_name, info.value.op) == ("EINVAL", "VFIO_DEVICE_RESET")
    # edu sits on the root bus: no slot or bus reset either.
    with pytest.raises(VfioError) as hot:
        device.hot_reset_info()
    assert hot.value.errno_name == "ENODEV"


def test_memory_disable_makes_the_bar_mapping_fault_until_enabled(device: VfioDevice) -> None:
    mmio = device.mmap_bar(0)
    try:
        assert mmio.read(0, 4) == EDU_ID_REGISTER
        old = device.set_command_bits(PCI_COMMAND_MEMORY, False)
        try:
            with pytest.raises(AccessFault) as fault:
                mmio.read(0, 4)
            assert fault.value.errno_name == "SIGBUS"
            with pytest.raises(VfioError) as region:
                device.region_read(0, 0, 4)
            assert region.value.errno_name == "EIO"
        finally:
            device.config_write(PCI_COMMAND, 2, old)
        assert mmio.read(0, 4) == EDU_ID_REGISTER
    finally:
        mmio.close()
