"""The mock IOMMU's access objects and DMABUF, and the file-private buffer, against the
testbed kernel: every call of vfio_scenario.uapi.iommufd_access meets the kernel's
answer, and each check the operations make fails when the memory is not what the
kernel read or wrote."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi import iommufd_access as acc
from vfio_scenario.uapi import iommufd_mock as mock
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.iommufd import Iommufd
from vfio_scenario.uapi.patterns import Pattern

from tests.helpers.errnos import errno_of

IOVA = 1 << 24  # MOCK_APERTURE_START
SIZE = 64 << 10


@pytest.fixture
def buffer() -> Iterator[DmaBuffer]:
    with DmaBuffer(SIZE) as buf:
        buf.fill(Pattern("random", 7))
        yield buf


def test_create_access_refuses_unknown_flags_and_a_missing_ioas(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    assert errno_of(acc.create_access, mock_iommufd.fd, ioas.id, 1 << 1) == "EOPNOTSUPP"
    assert errno_of(acc.create_access, mock_iommufd.fd, 0) == "ENOENT"
    access = acc.create_access(mock_iommufd.fd, ioas.id)
    fd = access.fd
    os.fstat(fd)  # an fd of this process
    # an access made without an unmap callback for pins may not pin
    assert errno_of(acc.access_pages, access, 0, 4096, 0) == "EOPNOTSUPP"
    access.destroy()
    assert access.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)


def test_access_pages_ids_the_page_check_and_unmap(mock_iommufd: Iommufd,
                                                   buffer: DmaBuffer) -> None:
    ioas = mock_iommufd.alloc_ioas()
    access = acc.create_access(mock_iommufd.fd, ioas.id, acc.CREATE_FLAGS["needs_pin_pages"])
    assert errno_of(acc.access_pages, access, IOVA, 4096, buffer.addr) == "ENOENT"  # unmapped
    ioas.map(buffer.addr, SIZE, IOVA)
    first = acc.access_pages(access, IOVA, SIZE, buffer.addr)
    second = acc.access_pages(access, IOVA + 4096, 4096, buffer.addr + 4096,
                              lib.MOCK_FLAGS_ACCESS_WRITE)
    assert (first.id, second.id) == (0, 1)  # each access counts its pins from 0
    # the kernel compares the pages it pinned with those at the user address given
    assert errno_of(acc.access_pages, access, IOVA, 4096, buffer.addr + 4096) == "EBADE"
    acc.destroy_access_pages(second)
    assert errno_of(acc.destroy_access_pages, second) == "ENOENT"
    # unmapping what the access pins calls its unmap, which drops the pin
    ioas.unmap(IOVA, SIZE)
    assert errno_of(acc.destroy_access_pages, first) == "ENOENT"
    access.destroy()


def test_access_rw_moves_the_bytes_of_the_mapped_memory(mock_iommufd: Iommufd,
                                                         buffer: DmaBuffer) -> None:
    ioas = mock_iommufd.alloc_ioas()
    access = acc.create_access(mock_iommufd.fd, ioas.id)
    ioas.map(buffer.addr, SIZE, IOVA)
    got = ffi.new("uint8_t[]", 100)
    acc.access_rw(access, IOVA + 4000, got, 100)
    assert bytes(got) == bytes(buffer.mem[4000:4100])
    sent = ffi.new("uint8_t[]", bytes(range(100)))
    acc.access_rw(access, IOVA + 4000, sent, 100, lib.MOCK_ACCESS_RW_WRITE)
    assert bytes(buffer.mem[4000:4100]) == bytes(range(100))
    assert errno_of(acc.access_rw, access, IOVA + SIZE, got, 1) == "ENOENT"
    assert errno_of(acc.access_rw, access, IOVA, got, 1, 1 << 1) == "EOPNOTSUPP"
    access.destroy()


def test_the_sweep_passes_on_the_memory_mapped_and_fails_on_other_memory(
        mock_iommufd: Iommufd, buffer: DmaBuffer) -> None:
    ioas = mock_iommufd.alloc_ioas()
    access = acc.create_access(mock_iommufd.fd, ioas.id)
    ioas.map(buffer.addr, SIZE, IOVA)
    base = buffer.ptr + 4046
    for flags in (0, lib.MOCK_ACCESS_RW_SLOW_PATH):
        done = acc.access_rw_sweep(access, IOVA + 4046, base, 4046, SIZE - 4046, 100, 1, 63,
                                   True, True, flags)
        assert done.ok and done.calls == 100 * 63 * 2
    whole = acc.access_rw_sweep(access, IOVA, buffer.ptr, 0, SIZE, 1, SIZE, SIZE, True, False)
    assert whole.ok and whole.calls == 1
    # memory one byte off from what is mapped at the IOVA: the first read differs
    off = acc.access_rw_sweep(access, IOVA + 4046, base + 1, 4047, SIZE - 4047, 1, 8, 8,
                              True, False)
    assert (off.calls, off.problem, off.length, off.write) == (
        0, acc.RW_FAILURES[lib.VS_RW_READ_DIFFERS], 8, False)
    # an IOVA nothing maps: the kernel's errno
    gone = acc.access_rw_sweep(access, IOVA + SIZE, base, 0, 64, 1, 1, 1, True, False)
    assert gone.errno and os.strerror(gone.errno) == os.strerror(2)  # ENOENT
    with pytest.raises(ValueError):
        acc.access_rw_sweep(access, IOVA, buffer.ptr, 0, 64, 2, 1, 64, True, False)
    access.destroy()


def test_the_write_check_sees_a_write_to_other_memory(mock_iommufd: Iommufd,
                                                      buffer: DmaBuffer) -> None:
    ioas = mock_iommufd.alloc_ioas()
    access = acc.create_access(mock_iommufd.fd, ioas.id)
    ioas.map(buffer.addr, SIZE, IOVA)
    # the sweep is told the memory at the IOVA is 8 KiB further: the write lands elsewhere
    moved = acc.access_rw_sweep(access, IOVA, buffer.ptr + 8192, 8192, SIZE - 8192, 1, 4, 4,
                                False, True)
    assert (moved.problem, moved.write) == (acc.RW_FAILURES[lib.VS_RW_WRITE_DIFFERS], True)
    access.destroy()


def test_access_replace_ioas_drops_the_old_pins(mock_iommufd: Iommufd, buffer: DmaBuffer) -> None:
    old, new = mock_iommufd.alloc_ioas(), mock_iommufd.alloc_ioas()
    access = acc.create_access(mock_iommufd.fd, old.id, acc.CREATE_FLAGS["needs_pin_pages"])
    old.map(buffer.addr, SIZE, IOVA)
    new.map(buffer.addr, SIZE, IOVA + SIZE)
    pin = acc.access_pages(access, IOVA, SIZE, buffer.addr)
    acc.access_replace_ioas(access, new.id)
    assert errno_of(acc.destroy_access_pages, pin) == "ENOENT"
    # the access now reads the new IOAS: the old IOVA is not mapped there
    got = ffi.new("uint8_t[]", 16)
    assert errno_of(acc.access_rw, access, IOVA, got, 16) == "ENOENT"
    acc.access_rw(access, IOVA + SIZE, got, 16)
    assert bytes(got) == bytes(buffer.mem[:16])
    assert errno_of(acc.access_replace_ioas, access, 0) == "ENOENT"
    # nothing pins the buffer after the old IOAS is gone
    old.unmap(IOVA, SIZE)
    mock_iommufd.destroy(old.id)
    access.destroy()
    new.unmap(IOVA + SIZE, SIZE)
    mock.check_refs(mock_iommufd.fd, buffer.addr, SIZE, 0)


def test_mock_dmabuf_sizes_map_file_and_revoke(mock_iommufd: Iommufd) -> None:
    ioas = mock_iommufd.alloc_ioas()
    assert errno_of(acc.dmabuf_get, mock_iommufd.fd, 0) == "EINVAL"
    assert errno_of(acc.dmabuf_get, mock_iommufd.fd, 513 * 4096) == "EINVAL"
    dmabuf = acc.dmabuf_get(mock_iommufd.fd, 4096 * 3 + 1)
    assert dmabuf.size == 4 * 4096
    assert errno_of(ioas.map_file, dmabuf.fd, 0, 0, None) == "EINVAL"
    assert errno_of(ioas.map_file, dmabuf.fd, 0, dmabuf.size + 1, None) == "EINVAL"
    first = ioas.map_file(dmabuf.fd, 0, dmabuf.size, None)
    acc.dmabuf_revoke(mock_iommufd.fd, dmabuf.fd, True)
    assert errno_of(ioas.map_file, dmabuf.fd, 0, dmabuf.size, None) == "ENODEV"
    acc.dmabuf_revoke(mock_iommufd.fd, dmabuf.fd, False)
    ioas.map_file(dmabuf.fd, 0, dmabuf.size, None)
    ioas.unmap(first.iova, dmabuf.size)
    assert ioas.map_file(dmabuf.fd, 0, dmabuf.size, first.iova).iova == first.iova
    # a file that is not the mock's DMABUF
    with DmaBuffer(4096, "memfd") as memfd:
        assert errno_of(acc.dmabuf_revoke, mock_iommufd.fd, memfd.fd, True) == "EINVAL"
    dmabuf.close()


def test_a_file_private_buffer_maps_the_file_and_keeps_writes_private() -> None:
    with open(sys.executable, "rb") as f:
        head = f.read(4096)
    with DmaBuffer(4096, "file-private", path=sys.executable) as buf:
        assert buf.fd == -1 and buf.size == 4096
        assert bytes(buf.mem) == head
        buf.fill(Pattern(1))
        assert bytes(buf.mem) == b"\x01" * 4096
    with open(sys.executable, "rb") as f:
        assert f.read(4096) == head  # the write stayed in the process
    with pytest.raises(VfioError) as info:
        DmaBuffer(8192, "file-private", path="/proc/self/status")  # st_size 0
    assert info.value.errno_name == "EINVAL"
    with pytest.raises(VfioError) as info:
        DmaBuffer(4096, "file-private", path="/nonexistent")
    assert info.value.errno_name == "ENOENT"
