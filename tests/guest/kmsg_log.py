"""The guest kernel log since a point in time, read from /dev/kmsg."""

from __future__ import annotations

import os
import re
import time


class Kmsg:
    """The kernel log from the moment of creation on (/dev/kmsg, non-blocking)."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lines: list[str] = []

    def _drain(self) -> None:
        while True:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return
            except OSError:  # EPIPE: records were overwritten; keep reading
                continue
            self.lines.append(record.split(";", 1)[-1].rstrip("\n"))

    def wait_for(self, pattern: str, within: float = 2.0) -> str | None:
        """The first new line matching `pattern` within `within` seconds, else None."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            self._drain()
            for line in self.lines:
                if regex.search(line):
                    return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        os.close(self.fd)
