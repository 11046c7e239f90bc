"""Exact-width accessors and the fault probe, on mappings the test can break itself."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.mmio import AccessFault, Mmio


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("mmio-test")
    os.ftruncate(fd, 8192)
    yield fd
    os.close(fd)


def test_exact_width_reads_and_writes_are_little_endian(memfd: int) -> None:
    mmio = Mmio(memfd, 0, 8192, "memfd")
    try:
        mmio.write(0, 8, 0x1122334455667788)
        assert mmio.read(0, 4) == 0x55667788
        assert mmio.read(4, 2) == 0x3344
        assert mmio.read(7, 1) == 0x11
        mmio.write(8, 4, 0x1_FFFF_FFFF)  # truncated to the width
        assert mmio.read(8, 8) == 0xFFFFFFFF
    finally:
        mmio.close()


def test_access_beyond_the_file_end_returns_sigbus_instead_of_dying(memfd: int) -> None:
    mmio = Mmio(memfd, 0, 8192, "memfd")
    try:
        os.ftruncate(memfd, 4096)
        with pytest.raises(AccessFault) as info:
            mmio.read(4096, 4)
        assert info.value.errno_name == "SIGBUS"
        with pytest.raises(AccessFault):
            mmio.write(4096, 8, 1)
        # The handler is gone again and the valid page still reads.
        assert mmio.read(0, 4) == 0
        os.ftruncate(memfd, 8192)
        assert mmio.read(4096, 4) == 0
    finally:
        mmio.close()


def test_write_to_a_read_only_mapping_returns_sigsegv(memfd: int) -> None:
    mmio = Mmio(memfd, 0, 4096, "memfd", writable=False)
    try:
        with pytest.raises(AccessFault) as info:
            mmio.write(0, 4, 1)
        assert info.value.errno_name == "SIGSEGV"
        assert isinstance(info.value, VfioError)
    finally:
        mmio.close()


@pytest.mark.parametrize(("offset", "width"), [(0, 3), (2, 4), (4094, 4), (-4, 4)])
def test_bad_width_or_offset_is_einval(memfd: int, offset: int, width: int) -> None:
    mmio = Mmio(memfd, 0, 4096, "memfd")
    try:
        with pytest.raises(VfioError) as info:
            mmio.read(offset, width)
        assert info.value.errno_name == "EINVAL"
    finally:
        mmio.close()


def test_closed_mapping_is_ebadf(memfd: int) -> None:
    mmio = Mmio(memfd, 0, 4096, "memfd")
    mmio.close()
    with pytest.raises(VfioError) as info:
        mmio.read(0, 4)
    assert info.value.errno_name == "EBADF"


def _has_movdir64b() -> bool:
    with open("/proc/cpuinfo") as f:
        return " movdir64b" in f.read()


@pytest.mark.skipif(not _has_movdir64b(), reason="this CPU has no MOVDIR64B")
def test_write64b_stores_64_bytes_at_once(memfd: int) -> None:
    mmio = Mmio(memfd, 0, 8192, "memfd")
    try:
        data = bytes(range(64))
        mmio.write64b(128, data)
        assert b"".join(mmio.read(128 + i, 8).to_bytes(8, "little") for i in range(0, 64, 8)) == data
    finally:
        mmio.close()


def test_write64b_refuses_a_misaligned_offset_or_a_short_descriptor(memfd: int) -> None:
    mmio = Mmio(memfd, 0, 8192, "memfd")
    try:
        for offset, data in ((32, bytes(64)), (0, bytes(32))):
            with pytest.raises(VfioError) as info:
                mmio.write64b(offset, data)
            assert info.value.errno_name == "EINVAL"
    finally:
        mmio.close()
