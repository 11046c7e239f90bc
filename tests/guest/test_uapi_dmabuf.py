"""DMABUF export of edu's BAR0 (VFIO_DEVICE_FEATURE_DMA_BUF), and the proposed revoke and
mmap-attribute uAPI: probed, and used where the kernel has it (VFIO_SCENARIO_TESTBED_KERNEL
naming a kernel with the series)."""

from __future__ import annotations

from typing import Any

import pytest
from vfio_scenario.drivers.edu import ID_VALUE as EDU_ID_REGISTER
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import lib
from vfio_scenario.uapi.buffers import mmap_raw
from vfio_scenario.uapi.capabilities import MEMATTR_ABSENT, REVOKE_ABSENT, HostCapabilities
from vfio_scenario.uapi.device import REVOKE_FEATURE, VfioDevice
from vfio_scenario.uapi.ioctl import ioctl, new
from vfio_scenario.uapi.mmio import AccessFault

MiB = 1 << 20


@pytest.fixture
def dma_buf(caps: HostCapabilities) -> None:
    if not caps.feature("dma_buf"):
        pytest.skip(f"no DMABUF export: {caps.feature('dma_buf').reason}")


def test_export_bar0_returns_an_fd(dma_buf: None, device: VfioDevice) -> None:
    buf = device.export_dmabuf("bar0")
    assert buf.fd >= 0 and buf.size == MiB
    buf.close()
    assert buf.fd == -1


@pytest.mark.parametrize(("region", "ranges", "errno_name"), [
    ("bar0", [], "EINVAL"),                   # nr_ranges 0
    ("bar0", [(0, 100)], "EINVAL"),           # unaligned length
    ("bar0", [(0, 2 * MiB)], "EINVAL"),       # past the BAR
    ("config", [(0, 4096)], "ENODEV"),        # not a BAR
])
def test_export_refusals(dma_buf: None, device: VfioDevice, region: str,
                         ranges: list[tuple[int, int]], errno_name: str) -> None:
    with pytest.raises(VfioError) as info:
        device.export_dmabuf(region, ranges)
    assert (info.value.errno_name, info.value.op) == (errno_name, "VFIO_DEVICE_FEATURE")


def test_probe_set_of_dma_buf_is_einval(dma_buf: None, device: VfioDevice) -> None:
    with pytest.raises(VfioError) as info:
        device.feature(lib.VFIO_DEVICE_FEATURE_DMA_BUF,
                       lib.VFIO_DEVICE_FEATURE_PROBE | lib.VFIO_DEVICE_FEATURE_SET)
    assert info.value.errno_name == "EINVAL"
    assert device.probe_feature(lib.VFIO_DEVICE_FEATURE_DMA_BUF, get=True)


def test_dmabuf_mmap_follows_the_capability_report(dma_buf: None, device: VfioDevice,
                                                   caps: HostCapabilities) -> None:
    buf = device.export_dmabuf("bar0", [(0, 4096)])
    try:
        if caps.feature("dma_buf_mmap"):
            assert buf.mmap(0, 4096).read(0, 4) == EDU_ID_REGISTER
        else:
            with pytest.raises(VfioError) as info:
                buf.mmap(0, 4096)
            assert (info.value.errno_name, info.value.op) == ("EINVAL", "mmap")
    finally:
        buf.close()


def _absent(call: Any) -> str:
    with pytest.raises(VfioError) as info:
        call()
    return info.value.errno_name


def test_revoke_probe_follows_the_kernels_answers(dma_buf: None, device: VfioDevice,
                                                  caps: HostCapabilities) -> None:
    method = device.revoke_support()
    assert bool(caps.feature("dma_buf_revoke")) == (method is not None)
    if method is not None:
        assert caps.feature("dma_buf_revoke").reason == method
        return
    # the kernel's own answers to both proposed calls: it knows neither
    probe = lib.VFIO_DEVICE_FEATURE_PROBE | lib.VFIO_DEVICE_FEATURE_SET
    assert _absent(lambda: device.feature(REVOKE_FEATURE, probe)) == "ENOTTY"
    arg = new("struct vfio_pci_dmabuf_revoke", dmabuf_fd=0xFFFFFFFF)
    assert _absent(lambda: ioctl(device.fd, "VFIO_DEVICE_PCI_DMABUF_REVOKE", arg)) == "ENOTTY"
    assert caps.feature("dma_buf_revoke").reason == REVOKE_ABSENT


def test_permanent_revoke_where_offered(dma_buf: None, device: VfioDevice,
                                        caps: HostCapabilities) -> None:
    method = device.revoke_support()
    if method is None:
        pytest.skip(REVOKE_ABSENT)
    buf = device.export_dmabuf("bar0", [(0, 4096)])
    try:
        # not a file, not a DMABUF: what dma_buf_get() answers
        assert _absent(lambda: device.revoke_dmabuf(-1, method)) == "EBADF"
        assert _absent(lambda: device.revoke_dmabuf(device.fd, method)) == "EINVAL"
        mapping = buf.mmap(0, 4096) if caps.feature("dma_buf_mmap") else None
        if mapping is not None:
            assert mapping.read(0, 4) == EDU_ID_REGISTER
        device.revoke_dmabuf(buf, method)
        if mapping is not None:
            with pytest.raises(AccessFault) as fault:
                mapping.read(0, 4)
            assert fault.value.errno_name == "SIGBUS"
            assert _absent(lambda: buf.mmap(0, 4096)) == "ENODEV"
        assert _absent(lambda: device.revoke_dmabuf(buf, method)) == "EBADFD"
        # the device is not revoked, only that DMABUF
        fresh = device.export_dmabuf("bar0", [(0, 4096)])
        fresh.close()
    finally:
        buf.close()


def test_memattr_probe_and_set(dma_buf: None, device: VfioDevice,
                               caps: HostCapabilities) -> None:
    buf = device.export_dmabuf("bar0", [(0, 4096)])
    try:
        offered = device.memattr_support()
        assert bool(caps.feature("dma_buf_memattr")) == offered
        wc = lib.VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC
        if not offered:
            assert caps.feature("dma_buf_memattr").reason == MEMATTR_ABSENT
            assert _absent(lambda: device.set_dmabuf_memattr(buf, wc)) == "ENOTTY"
            return
        assert _absent(lambda: device.set_dmabuf_memattr(buf, 2)) == "ENOENT"
        device.set_dmabuf_memattr(buf, wc)
        if caps.feature("dma_buf_mmap"):
            assert buf.mmap(0, 4096).read(0, 4) == EDU_ID_REGISTER
    finally:
        buf.close()


def test_dmabuf_mmap_must_be_shared(dma_buf: None, device: VfioDevice,
                                    caps: HostCapabilities) -> None:
    if not caps.feature("dma_buf_mmap"):
        pytest.skip(f"no DMABUF mmap: {caps.feature('dma_buf_mmap').reason}")
    buf = device.export_dmabuf("bar0", [(0, 4096)])
    try:
        # the series' mmap refuses a private mapping (no VM_SHARED): EINVAL
        with pytest.raises(VfioError) as info:
            mmap_raw(4096, lib.PROT_READ, lib.MAP_PRIVATE, buf.fd, 0, "mmap", buf.handle)
        assert info.value.errno_name == "EINVAL"
    finally:
        buf.close()
