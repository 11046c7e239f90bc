"""Progress lines for long asset steps (downloads, extraction, the kernel build)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

#: Receives one human-readable progress line.
Reporter = Callable[[str], None]


def stderr_reporter(line: str) -> None:
    """Print `line` on stderr, prefixed so it is clear who speaks."""
    print(f"testbed: {line}", file=sys.stderr, flush=True)


def quiet(line: str) -> None:
    """Drop progress lines (library use without a console)."""


class Ticker:
    """Calls the reporter at most every `interval` seconds."""

    def __init__(self, report: Reporter, interval: float = 10.0) -> None:
        self.report = report
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0

    def elapsed(self) -> float:
        """Seconds since the ticker was made."""
        return time.monotonic() - self.start

    def tick(self, line: str, force: bool = False) -> None:
        """Report `line` when the interval has passed (or `force`)."""
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.report(f"{line} [{self.elapsed():.0f}s]")
