"""Failed ioctls and system calls raise VfioError with the errno name, op and handle."""

from __future__ import annotations

import os

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.ioctl import ioctl, ioctl_val, new, open_fd


def test_ioctl_on_a_closed_fd_raises_ebadf_with_ioctl_name_and_handle() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(VfioError) as info:
        ioctl(fd, "VFIO_DEVICE_GET_INFO", new("struct vfio_device_info"), "0000:00:03.0")
    assert (info.value.errno_name, info.value.op, info.value.handle) == (
        "EBADF", "VFIO_DEVICE_GET_INFO", "0000:00:03.0")
    assert str(info.value).startswith("VFIO_DEVICE_GET_INFO on 0000:00:03.0 failed with EBADF")


def test_vfio_ioctl_on_a_non_vfio_file_raises_enotty() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(VfioError) as info:
            ioctl_val(fd, "VFIO_CHECK_EXTENSION", 1, "/dev/null")
    finally:
        os.close(fd)
    assert info.value.errno_name == "ENOTTY"
    assert info.value.op == "VFIO_CHECK_EXTENSION"


def test_opening_a_missing_node_raises_enoent_with_the_path() -> None:
    with pytest.raises(VfioError) as info:
        open_fd("/dev/vfio/does-not-exist", "open_group")
    assert (info.value.errno_name, info.value.op, info.value.handle) == (
        "ENOENT", "open_group", "/dev/vfio/does-not-exist")


def test_new_sets_argsz_or_size_to_the_struct_size() -> None:
    assert new("struct vfio_region_info", index=7).argsz == 32
    assert new("struct vfio_region_info", index=7).index == 7
    assert new("struct iommu_ioas_map").size == 40
    # Variable-length structs count their trailing array.
    assert new("struct vfio_irq_set", 8).argsz == 20 + 8
    assert new("struct vfio_device_feature_dma_buf", 2).nr_ranges == 0


def test_the_message_is_made_when_asked_and_names_op_handle_errno_detail() -> None:
    import errno
    import pickle
    import signal

    from vfio_scenario.uapi.mmio import AccessFault

    exc = VfioError(errno.EOPNOTSUPP, "IOMMU_IOAS_MAP", "ioas 2", "a detail")
    assert exc.errno_name == "EOPNOTSUPP"  # the kernel's spelling, not ENOTSUP
    assert str(exc) == (f"IOMMU_IOAS_MAP on ioas 2 failed with EOPNOTSUPP "
                        f"({os.strerror(errno.EOPNOTSUPP)}): a detail")
    assert str(VfioError(9999, "X")) == f"X failed with E9999 ({os.strerror(9999)})"
    again = pickle.loads(pickle.dumps(exc))  # a case process's error can cross a pipe
    assert (str(again), again.errno_name) == (str(exc), "EOPNOTSUPP")
    fault = AccessFault(signal.SIGBUS, "mmio_read", "bar0", 0x10)
    assert fault.errno_name == "SIGBUS"
    assert str(fault) == "mmio_read on bar0 at offset 0x10 raised SIGBUS"
