"""The kernel log since a point in time, read from /dev/kmsg.

Each reader opens its own file description (positions are per description, shared
across fork), skips to the end at open, and returns only what was logged after.
"""

from __future__ import annotations

import errno
import os


class KernelLog:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lines: list[str] = []

    @classmethod
    def open(cls, path: str = "/dev/kmsg") -> KernelLog | None:
        """A reader positioned at the end of the log, or None where the log is not readable."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        os.lseek(fd, 0, os.SEEK_END)
        return cls(fd)

    def read_new(self) -> list[str]:
        """Messages logged since the last call (or since open); also kept in `lines`."""
        new: list[str] = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    new.append("[… kernel log records were lost: the ring buffer wrapped]")
                    continue
                raise
            if not record:
                break
            _header, _, message = record.decode("utf-8", "replace").partition(";")
            # continuation lines (" KEY=value") carry device metadata, not text
            new.append(message.split("\n", 1)[0])
        self.lines.extend(new)
        return new

    def close(self) -> None:
        os.close(self.fd)
