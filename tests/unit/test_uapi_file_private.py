"""A file-private buffer (alloc_buffer `backing: file-private`): the file's bytes, no page
faulted in until touched, and a write copies the page into the process's own memory
without changing the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from vfio_scenario.errors import VfioError
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.uapi.patterns import Pattern


def _smaps(addr: int) -> dict[str, int]:
    """The kB counters of /proc/self/smaps for the mapping starting at `addr`."""
    found: dict[str, int] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            inside = int(head.split("-")[0], 16) == addr
        elif inside and line.endswith(" kB"):
            found[head.rstrip(":")] = int(line.split()[1])
    return found


def test_the_file_is_mapped_unpopulated_and_a_write_stays_private(tmp_path: Path) -> None:
    source = tmp_path / "file"
    source.write_bytes(bytes(range(256)) * 32)  # 8 KiB
    with DmaBuffer(8192, "file-private", path=str(source)) as buf:
        assert (buf.fd, buf.size) == (-1, 8192)
        assert _smaps(buf.addr)["Rss"] == 0  # nothing faulted in yet
        assert bytes(buf.mem[:4096]) == source.read_bytes()[:4096]
        before = _smaps(buf.addr)
        assert before["Anonymous"] == 0  # read: the file's page
        buf.fill(Pattern(1), 0, 4096)
        after = _smaps(buf.addr)
        assert after["Anonymous"] == 4  # written: the process's own copy of one page
        assert bytes(buf.mem[:4096]) == b"\x01" * 4096
    assert source.read_bytes() == bytes(range(256)) * 32


@pytest.mark.parametrize(("path", "size", "name"), [
    ("/proc/self/status", 4096, "EINVAL"),  # st_size 0: past the end is SIGBUS
    ("/nonexistent/file", 4096, "ENOENT"),
    (None, 4096, "EINVAL"),
])
def test_a_file_too_short_missing_or_unnamed_is_refused(path: str | None, size: int,
                                                        name: str) -> None:
    with pytest.raises(VfioError) as info:
        DmaBuffer(size, "file-private", path=path)
    assert info.value.errno_name == name


def test_the_program_itself_can_be_mapped() -> None:
    with DmaBuffer(4096, "file-private", path=sys.executable) as buf:
        assert bytes(buf.mem[:4]) == b"\x7fELF"
