"""The kernel's gcov counters, read where the kernel runs (the testbed guest, or this host).

A kernel built with CONFIG_GCOV_KERNEL (`--kernel coverage`, docs/testbed.md) shows one
`.gcda` file per profiled object below /sys/kernel/debug/gcov, at the path of the object
in the build folder (/sys/kernel/debug/gcov/<build folder>/drivers/vfio/vfio_main.gcda),
and zeroes every counter when anything is written to /sys/kernel/debug/gcov/reset
(Documentation/dev-tools/gcov.rst). This module only reads and resets; the host turns
the files into an lcov tracefile (vfio_scenario.report.coverage).

In a run the host resets and dumps through `python -m vfio_scenario.run.gcov reset|dump`
in the guest; with `--coverage-per-case` the guest's engine wraps its event stream with
`PerCase`, which resets when a case starts and sends the counters that changed with the
case's result. Standard library only: it runs in the guest's engine at start-up.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import zlib
from collections.abc import Callable
from typing import Any

GCOV_ROOT = "/sys/kernel/debug/gcov"
Emit = Callable[[dict[str, Any]], None]


def available(root: str = GCOV_ROOT) -> bool:
    """Whether the running kernel exposes gcov counters (CONFIG_GCOV_KERNEL, debugfs)."""
    return os.path.isfile(os.path.join(root, "reset"))


def reset(root: str = GCOV_ROOT) -> None:
    """Zero every counter of the kernel."""
    with open(os.path.join(root, "reset"), "w") as f:
        f.write("1")


def read_counters(root: str = GCOV_ROOT) -> dict[str, bytes]:
    """Every `.gcda` below `root` by its path relative to `root`, with its content.

    debugfs reports the files' size as 0, so each is read to its end rather than copied
    by size; the `.gcno` entries beside them are links into the build folder (on the host)
    and are not read."""
    found: dict[str, bytes] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".gcda"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root)] = f.read()
    return found


def encode(files: dict[str, bytes]) -> dict[str, str]:
    """Files as JSON-safe text (zlib, then base64: the counters are mostly zeros)."""
    return {p: base64.b64encode(zlib.compress(d, 6)).decode() for p, d in files.items()}


def decode(files: dict[str, str]) -> dict[str, bytes]:
    return {p: zlib.decompress(base64.b64decode(d)) for p, d in files.items()}


class PerCase:
    """Wraps a run's event stream: counters reset as each case starts, and its result
    followed by a `coverage` event with the counters the case changed.

    With the kernel watch the result of a case is sent when the next one starts, before
    its `start` event; the counters are therefore read when the result passes and reset
    when the next `start` passes, so no case's lines count for another."""

    def __init__(self, emit: Emit, root: str = GCOV_ROOT) -> None:
        self.emit = emit
        self.root = root
        reset(root)
        self.zero = read_counters(root)  # every file as a reset leaves it

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            reset(self.root)
        self.emit(event)
        if kind == "result":
            changed = {p: d for p, d in read_counters(self.root).items()
                       if d != self.zero.get(p)}
            self.emit({"event": "coverage", "id": event["result"]["case_id"],
                       "file": event["result"].get("file", ""), "gcda": encode(changed)})


def main(argv: list[str] | None = None) -> int:
    """`reset`, `dump` (one JSON object {path: data} on stdout) or `check` (exit 1
    when the kernel has no gcov)."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if len(args) == 1 else ""
    if command not in ("reset", "dump", "check"):
        sys.stderr.write("usage: python -m vfio_scenario.run.gcov reset|dump|check\n")
        return 2
    if not available():
        sys.stderr.write(f"no {GCOV_ROOT}/reset: this kernel has no gcov\n")
        return 1
    if command == "reset":
        reset()
    elif command == "dump":
        sys.stdout.write(json.dumps(encode(read_counters())) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
