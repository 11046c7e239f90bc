"""The mock IOMMU's access objects and DMABUF (IOMMU_TEST_CMD of CONFIG_IOMMUFD_TEST).

An access is how an in-kernel user of an IOAS without an IOMMU domain of its own (a
mediated device's driver) reaches the memory the IOAS maps: it pins the pages behind
IOVAs (iommufd_access_pin_pages) or copies bytes to and from IOVAs (iommufd_access_rw),
and the IOAS calls its `unmap` back when those IOVAs are unmapped. The mock makes one
with IOMMU_TEST_OP_CREATE_ACCESS, attached to an IOAS and returned as a file
descriptor (closing it destroys the access), and drives it with ACCESS_PAGES (pin; the
kernel checks that the pages it pinned are those of the user address given),
DESTROY_ACCESS_PAGES (unpin one pin by its id), ACCESS_RW and ACCESS_REPLACE_IOAS. Its
DMABUF (DMABUF_GET: zeroed kernel memory exported as a DMABUF, which IOMMU_IOAS_MAP_FILE
maps; DMABUF_REVOKE: revoke it or give it back) lets iommufd's DMABUF import be tested
without a device. The struct is drivers/iommu/iommufd/iommufd_test.h's (7.2), declared
in csrc/cdef.h and checked against the tree by tests/unit/test_uapi_layout.py. Every
call raises VfioError with the kernel's errno.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from vfio_scenario.errors import VfioError
from vfio_scenario.uapi._vfio import ffi, lib
from vfio_scenario.uapi.ioctl import ioctl, new
from vfio_scenario.uapi.iommufd_mock import test_cmd

# MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: an access whose driver pins pages (and so
# must implement `unmap`); without it ACCESS_PAGES is EOPNOTSUPP
CREATE_FLAGS = {"needs_pin_pages": 1 << 0}


@dataclass(eq=False)
class Access:
    """An access object of the mock: its fd (the object; also its id in IOMMU_TEST_CMD)
    and the iommufd it was made on. `fd` is -1 once destroyed."""

    iommufd: int
    fd: int
    handle: str = field(default="access")

    def destroy(self) -> None:
        """Close the access's fd: the kernel unpins what it still pins and destroys it."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.close(fd)
        except OSError as e:
            raise VfioError(e.errno or 0, "close", self.handle) from None


@dataclass(frozen=True)
class AccessPages:
    """One pin made through an access (IOMMU_TEST_OP_ACCESS_PAGES): its id there."""

    access: Access
    id: int
    iova: int
    length: int


def create_access(iommufd: int, ioas_id: int, flags: int = 0) -> Access:
    """IOMMU_TEST_OP_CREATE_ACCESS: an access attached to IOAS `ioas_id`."""
    cmd = test_cmd(iommufd, "CREATE_ACCESS", ioas_id, **{"create_access.flags": flags})
    fd = int(cmd.create_access.out_access_fd)
    return Access(iommufd, fd, f"access fd {fd}")


def access_pages(access: Access, iova: int, length: int, uptr: int,
                 flags: int = 0) -> AccessPages:
    """IOMMU_TEST_OP_ACCESS_PAGES: pin [iova, iova + length) through the access (flags:
    MOCK_FLAGS_ACCESS_WRITE); the kernel checks that the pages it pinned are the pages
    at `uptr` (EBADE if not). Returns the pin with the id the kernel gave it."""
    cmd = test_cmd(access.iommufd, "ACCESS_PAGES", access.fd,
                   **{"access_pages.iova": iova, "access_pages.length": length,
                      "access_pages.uptr": uptr, "access_pages.flags": flags})
    return AccessPages(access, int(cmd.access_pages.out_access_pages_id), iova, length)


def destroy_access_pages(pages: AccessPages) -> None:
    """IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: unpin one pin (ENOENT once the IOAS's unmap
    made the access unpin it)."""
    test_cmd(pages.access.iommufd, "DESTROY_ACCESS_PAGES", pages.access.fd,
             **{"destroy_access_pages.access_pages_id": pages.id})


def access_rw(access: Access, iova: int, data: Any, length: int, flags: int = 0) -> None:
    """IOMMU_TEST_OP_ACCESS_RW: copy `length` bytes between IOVA `iova` and the cffi
    buffer `data` (into it; with MOCK_ACCESS_RW_WRITE from it)."""
    test_cmd(access.iommufd, "ACCESS_RW", access.fd,
             **{"access_rw.iova": iova, "access_rw.length": length,
                "access_rw.uptr": int(ffi.cast("uintptr_t", data)), "access_rw.flags": flags})


def access_replace_ioas(access: Access, ioas_id: int) -> None:
    """IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: attach the access to IOAS `ioas_id` instead
    (the old IOAS's pins through it are unmapped: the access's `unmap` drops them)."""
    test_cmd(access.iommufd, "ACCESS_REPLACE_IOAS", access.fd,
             **{"access_replace_ioas.ioas_id": ioas_id})


RW_FAILURES = {
    lib.VS_RW_READ_DIFFERS: "the bytes read differ from the memory mapped there",
    lib.VS_RW_READ_PAST: "the read wrote past its length into the user buffer",
    lib.VS_RW_WRITE_DIFFERS: "the memory mapped there does not hold the bytes written",
    lib.VS_RW_WRITE_BEFORE: "the write changed the byte before its IOVA",
    lib.VS_RW_WRITE_AFTER: "the write changed the byte after its length",
}


@dataclass(frozen=True)
class RwSweep:
    """What access_rw_sweep did: the calls that passed, and the first failure, if any:
    the kernel's errno (`errno`, 0 if none) or a difference (`problem`)."""

    calls: int
    errno: int = 0
    problem: str = ""
    iova: int = 0
    length: int = 0
    write: bool = False
    at: int = -1

    @property
    def ok(self) -> bool:
        return not self.errno and not self.problem


def access_rw_sweep(access: Access, iova: int, mem: Any, before: int, after: int,
                    starts: int, len_first: int, len_last: int, read: bool, write: bool,
                    flags: int = 0) -> RwSweep:
    """ACCESS_RW at every IOVA in [iova, iova + starts) and every length in [len_first,
    len_last]: a read (if `read`) then a write (if `write`) each, checked against `mem`,
    the process memory mapped at `iova` (`before` bytes of it readable below it, `after`
    from it on): see vs_access_rw_sweep in csrc/helpers.h."""
    if not 0 < len_first <= len_last or starts < 1 or starts - 1 + len_last > after:
        raise ValueError(f"IOVAs {iova:#x}+{starts - 1:#x}, lengths {len_first}..{len_last} "
                         f"reach past the {after} bytes of memory given")
    scratch = ffi.new("uint8_t[]", len_last + 1)
    report = ffi.new("int64_t[]", lib.VS_RW_NFAIL)
    dirs = (lib.VS_RW_READ if read else 0) | (lib.VS_RW_WRITE if write else 0)
    calls = lib.vs_access_rw_sweep(access.iommufd, access.fd, iova, ffi.cast("uint8_t *", mem),
                                   before, after, starts, len_first, len_last, flags, dirs,
                                   scratch, report)
    if calls >= 0:
        return RwSweep(int(calls))
    what = report[lib.VS_RW_WHAT]
    return RwSweep(0, int(report[lib.VS_RW_ERR]) if what == lib.VS_RW_ERRNO else 0,
                   RW_FAILURES.get(what, ""), int(report[lib.VS_RW_IOVA]) & (1 << 64) - 1,
                   int(report[lib.VS_RW_LENGTH]), bool(report[lib.VS_RW_WRITING]),
                   int(report[lib.VS_RW_AT]))


# --- the mock's DMABUF -----------------------------------------------------------------


@dataclass(eq=False)
class MockDmabuf:
    """A DMABUF the mock exported (IOMMU_TEST_OP_DMABUF_GET): its fd and its size (the
    length asked, rounded up to pages by the kernel). `fd` is -1 once closed."""

    fd: int
    size: int
    handle: str = "mock dmabuf"

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


PAGE = 4096


def dmabuf_get(iommufd: int, length: int) -> MockDmabuf:
    """IOMMU_TEST_OP_DMABUF_GET: a DMABUF of `length` bytes (rounded up to pages; EINVAL
    for 0 or more than 512 pages), opened O_CLOEXEC as the selftest opens it."""
    cmd = new("struct iommu_test_cmd", op=lib.IOMMU_TEST_OP_DMABUF_GET)
    cmd.dmabuf_get.length = length
    cmd.dmabuf_get.open_flags = lib.O_CLOEXEC
    fd = ioctl(iommufd, "IOMMU_TEST_CMD", cmd, "IOMMU_TEST_OP_DMABUF_GET")  # the new fd
    return MockDmabuf(fd, -(-length // PAGE) * PAGE, f"mock dmabuf fd {fd}")


def dmabuf_revoke(iommufd: int, dmabuf_fd: int, revoked: bool) -> None:
    """IOMMU_TEST_OP_DMABUF_REVOKE: revoke the mock's DMABUF (its importers lose it;
    mapping it is ENODEV) or give it back. EOPNOTSUPP for a DMABUF the mock did not
    export."""
    test_cmd(iommufd, "DMABUF_REVOKE", 0, **{"dmabuf_revoke.dmabuf_fd": dmabuf_fd,
                                             "dmabuf_revoke.revoked": int(revoked)})
