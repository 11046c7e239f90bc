"""DMA buffers and their fill/compare helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.buffers import Backing, DmaBuffer
from vfio_scenario.uapi.patterns import Pattern


@pytest.mark.parametrize("backing", [Backing.ANONYMOUS, Backing.MEMFD])
def test_buffer_is_page_rounded_and_holds_a_pattern(backing: Backing) -> None:
    with DmaBuffer(5000, backing) as buf:
        assert buf.size == 8192
        assert buf.addr % 4096 == 0
        buf.fill(Pattern("random", seed=7))
        assert buf.check(Pattern("random", seed=7)) is None
        assert buf.check(Pattern("random", seed=8)) is not None
        assert (buf.fd >= 0) == (backing is Backing.MEMFD)


def _present_pages(addr: int, size: int) -> int:
    """How many of the pages of [addr, addr + size) are mapped in (bit 63 of each
    /proc/self/pagemap entry: a VMA merged with its neighbours does not blur it)."""
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        raw = f.read(size // 4096 * 8)
    entries = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    return sum(1 for e in entries if e >> 63 & 1)


@pytest.mark.parametrize("backing", [Backing.ANONYMOUS, Backing.MEMFD])
def test_a_buffer_is_populated_unless_told_not_to_be(backing: Backing) -> None:
    with DmaBuffer(1 << 20, backing) as buf:
        assert _present_pages(buf.addr, buf.size) == 256
    with DmaBuffer(1 << 20, backing, populate=False) as buf:
        assert _present_pages(buf.addr, buf.size) == 0
        buf.mem[0] = 1  # the first touch faults its page in (a larger folio may come)
        assert 0 < _present_pages(buf.addr, buf.size) < 256


def test_patterns_have_the_documented_bytes() -> None:
    assert Pattern("zero").expected(3) == b"\x00\x00\x00"
    assert Pattern("ones").expected(2) == b"\xff\xff"
    assert Pattern("incrementing").expected(3, first=254) == b"\xfe\xff\x00"
    assert Pattern(0x5A).expected(2) == b"\x5a\x5a"
    # A sub-range of the random pattern regenerates from its index.
    assert Pattern("random", 3).expected(8, first=5) == Pattern("random", 3).expected(13)[5:]


def test_check_reports_the_first_mismatching_offset() -> None:
    with DmaBuffer(4096) as buf:
        buf.fill(Pattern("incrementing"), 100, 200)
        buf.mem[100 + 150] ^= 1
        assert buf.check(Pattern("incrementing"), 100, 200) == 150


def test_compare_between_buffers() -> None:
    with DmaBuffer(4096) as a, DmaBuffer(4096) as b:
        a.fill(Pattern("random", 1))
        b.mem[:] = a.mem
        assert a.compare(0, b, 0, 4096) is None
        b.mem[4000] ^= 0xFF
        assert a.compare(0, b, 0, 4096) == 4000
        assert a.compare(8, b, 8, 16) is None


def test_range_outside_the_buffer_is_einval() -> None:
    with DmaBuffer(4096) as buf, pytest.raises(VfioError) as info:
        buf.fill(Pattern("zero"), 4000, 200)
    assert info.value.errno_name == "EINVAL"


def test_unknown_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pattern 'stripes'"):
        Pattern("stripes").expected(1)


def _free_hugepages(folder: str) -> int:
    path = Path("/sys/kernel/mm/hugepages") / folder / "free_hugepages"
    return int(path.read_text()) if path.exists() else 0


def test_hugetlb_2m_buffer_follows_the_pool() -> None:
    if _free_hugepages("hugepages-2048kB") == 0:
        with pytest.raises(VfioError) as info:
            DmaBuffer(4096, Backing.HUGETLB_2M)
        assert info.value.errno_name == "ENOMEM"
    else:
        with DmaBuffer(4096, Backing.HUGETLB_2M) as buf:
            assert buf.size == 2 << 20 and buf.addr % (2 << 20) == 0


def test_a_memfd_buffer_mapped_again_keeps_its_bytes_populated() -> None:
    with DmaBuffer(8192, Backing.MEMFD) as buf:
        buf.fill(Pattern("random", seed=3))
        fd = buf.fd
        buf.remap()
        assert buf.fd == fd
        assert _present_pages(buf.addr, buf.size) == 2
        assert buf.check(Pattern("random", seed=3)) is None
    with DmaBuffer(4096) as anonymous, pytest.raises(VfioError, match="memfd"):
        anonymous.remap()
