"""The kernel log since a point in time (/dev/kmsg), and the taint flags.

For `expect_dmesg` / `expect_no_dmesg` / `assert_not_tainted`: create a KernelLog when
a case begins; `wait_for` sees only records logged after that.
"""

from __future__ import annotations

import errno
import os
import re
import time
from typing import NamedTuple

from vfio_scenario.errors import VfioError


class Record(NamedTuple):
    """One /dev/kmsg record: "level,seq,usec,flags[,...];text" (Documentation/ABI/testing/
    dev-kmsg). Device messages add "\n KEY=value" lines, left out of `text`."""

    level: int  # syslog priority, facility bits masked off
    seq: int
    usec: int  # since boot
    text: str  # as the kernel escapes it: bytes < 0x20, 0x7f and backslash as \xNN


def parse_record(record: str) -> Record:
    head, _, body = record.partition(";")
    text = body.split("\n", 1)[0]
    fields = head.split(",")
    try:
        return Record(int(fields[0]) & 7, int(fields[1]), int(fields[2]), text)
    except (IndexError, ValueError):
        return Record(6, -1, 0, text)


class KmsgReader:
    """Every record logged after it opened (or, `from_start`, every record the ring still
    holds), read without blocking, across any number of cases (the kernel watch keeps one
    for a whole run)."""

    def __init__(self, from_start: bool = False) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise VfioError(e.errno or 0, "open", "/dev/kmsg") from None
        if not from_start:  # (an open reader starts at the oldest record the ring holds)
            os.lseek(self.fd, 0, os.SEEK_END)
        self.lost = 0  # records overwritten in the ring buffer before we read them

    def read(self) -> list[Record]:
        """The records logged since the last call."""
        out: list[Record] = []
        while True:
            try:
                raw = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.EPIPE:
                    self.lost += 1
                    continue
                raise VfioError(e.errno or 0, "read", "/dev/kmsg") from None
            out.append(parse_record(raw))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KernelLog:
    """New /dev/kmsg records, read without blocking."""

    def __init__(self) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise VfioError(e.errno or 0, "open", "/dev/kmsg") from None
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lines: list[str] = []

    def read(self) -> list[str]:
        """Every message logged since creation (the text after the record header)."""
        while True:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return self.lines
            except OSError as e:
                if e.errno == errno.EPIPE:  # older records were overwritten: go on
                    continue
                raise VfioError(e.errno or 0, "read", "/dev/kmsg") from None
            self.lines.append(parse_record(record).text)

    def wait_for(self, pattern: str, within: float = 2.0) -> str | None:
        """The first message since creation matching `pattern`, waiting up to `within` s."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            for line in self.read():
                if regex.search(line):
                    return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# bit → letter, as kernel/panic.c's taint_flags (Documentation/admin-guide/tainted-kernels.rst)
TAINT_FLAGS = "PFSRMBUDAWCIOELKXTNJ"


def taint_letters(mask: int) -> str:
    return "".join(letter for bit, letter in enumerate(TAINT_FLAGS) if mask & (1 << bit)) or "-"


def tainted() -> int:
    """/proc/sys/kernel/tainted (0: not tainted). Read with os.read: a text-mode open()
    costs a millisecond per case under TCG."""
    fd = os.open("/proc/sys/kernel/tainted", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)
