"""The kernel log since a point in time (/dev/kmsg), and the taint flags.

For `expect_dmesg` / `expect_no_dmesg` / `assert_not_tainted`: create a KernelLog when
a case begins; `wait_for` sees only records logged after that.
"""

from __future__ import annotations

import errno
import os
import re
import time

from vfio_scenario.errors import VfioError


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
            self.lines.append(record.split(";", 1)[-1].rstrip("\n"))

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


def tainted() -> int:
    """/proc/sys/kernel/tainted (0: not tainted)."""
    with open("/proc/sys/kernel/tainted") as f:
        return int(f.read())
