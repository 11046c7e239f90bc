"""The guest's work measured as QEMU's CPU time on the host, for the benchmarks.

On a loaded host the guest's clock says little about what a run costs: when the host
does not schedule QEMU's vCPU thread, guest time goes on and every phase looks slower
(the same 31 light cases took 6 to 44 s of guest time within one hour at load 20 on
2 cores). Under TCG nearly all the guest's work is QEMU's user and system time, which
the host's scheduler does not inflate: the CPU seconds QEMU spent between two marks
the guest prints.

Guest side: `mark(label, "begin")` … `mark(label, "end")` around what is measured (it
prints a line and waits for the host's answer on stdin). Host side: `run_marked`
runs the guest command with stdin, samples QEMU's CPU time at each mark and answers.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MARK = '{"mark": '


def qemu_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mark(label: str, at: str) -> None:
    """(guest) Note the start or end (`at`) of `label` and wait for the host to sample."""
    sys.stdout.write(json.dumps({"mark": label, "at": at}) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()


def run_marked(testbed: Any, argv: list[str], timeout: float, cwd: str | None = None,
               env: dict[str, str] | None = None) -> tuple[list[str], dict[str, float], int]:
    """(host) Run `argv` in `testbed`: (its other stdout lines, QEMU CPU seconds per
    label, exit status)."""
    stream = testbed.stream(argv, idle_timeout=timeout, cwd=cwd, env=env, stdin=True)
    lines: list[str] = []
    began: dict[str, float] = {}
    spent: dict[str, float] = {}
    for line in stream:
        if not line.startswith(MARK):
            lines.append(line)
            continue
        event = json.loads(line)
        now = qemu_cpu_seconds(testbed.pid)
        if event["at"] == "begin":
            began[event["mark"]] = now
        else:
            spent[event["mark"]] = spent.get(event["mark"], 0.0) + now - \
                began.pop(event["mark"])
        stream.send_input("go\n")
    if stream.returncode != 0:
        sys.stderr.write(stream.stderr)
    return lines, spent, int(stream.returncode or 0)
