"""DMABUF export of edu's BAR0 (VFIO_DEVICE_FEATURE_DMA_BUF) and the revoke probe."""

from __future__ import annotations

import pytest
from vfio_scenario.drivers.edu import ID_VALUE as EDU_ID_REGISTER
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import lib
from vfio_scenario.uapi.capabilities import HostCapabilities
from vfio_scenario.uapi.device import VfioDevice
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


def test_revoke_probe_answers_and_revoke_faults_where_offered(
        dma_buf: None, device: VfioDevice, caps: HostCapabilities) -> None:
    method = device.revoke_support()
    assert bool(caps.feature("dma_buf_revoke")) == (method is not None)
    if method is None:
        assert caps.feature("dma_buf_revoke").reason == (
            "the kernel has no DMABUF revoke uAPI (ENOTTY)")
        return
    buf = device.export_dmabuf("bar0", [(0, 4096)])
    try:
        mapping = buf.mmap(0, 4096) if caps.feature("dma_buf_mmap") else None
        device.revoke_dmabuf(buf, method)
        if mapping is not None:
            with pytest.raises(AccessFault) as fault:
                mapping.read(0, 4)
            assert fault.value.errno_name == "SIGBUS"
        with pytest.raises(VfioError) as again:
            device.revoke_dmabuf(buf, method)
        assert again.value.errno_name == "EBADFD"
    finally:
        buf.close()
