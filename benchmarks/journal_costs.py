#!/usr/bin/env python3
"""Where a library run's wall time went, from its journal (reports/journal.jsonl).

For each kernel the journal holds cases of (a `--baseline-kernel` run holds two), it
prints: the run's wall time (its `run` record), the time from the run's start to the
first case, the cases' own time (sum of durations), the time no case ran between the
first start and the last end, the per-case gap between consecutive cases (median,
total: with `--jobs 1` that is the engine's cost outside cases: fork, result, kernel
watch, the host's reports), the slowest cases and the files that cost most.

    .venv/bin/python benchmarks/journal_costs.py reports/journal.jsonl [--top 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def load(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(run records, case records) of a journal."""
    runs, cases = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line (a killed run)
        if record.get("type") == "run":
            runs.append(record)
        elif record.get("type") == "case":
            cases.append(record["case"])
    return runs, cases


def uncovered(cases: list[dict[str, Any]]) -> float:
    """Seconds between the first case's start and the last one's end when no case ran."""
    spans = sorted((c["started"], c["started"] + c["duration"]) for c in cases)
    idle, reach = 0.0, spans[0][1]
    for start, end in spans[1:]:
        if start > reach:
            idle += start - reach
        reach = max(reach, end)
    return idle


def report(runs: list[dict[str, Any]], cases: list[dict[str, Any]], top: int) -> None:
    by_kernel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        by_kernel[case.get("properties", {}).get("kernel", "?")].append(case)
    walls = sorted({(r["started"], r["duration"]) for r in runs if r.get("duration")})
    for kernel, group in by_kernel.items():
        group.sort(key=lambda c: c["started"])
        first = group[0]["started"]
        last = max(c["started"] + c["duration"] for c in group)
        own = sum(c["duration"] for c in group)
        pairs = list(itertools.pairwise(group))
        gaps = [b["started"] - (a["started"] + a["duration"]) for a, b in pairs]
        # before a case that ran (a skipped case forks nothing)
        ran = [g for g, (_, b) in zip(gaps, pairs, strict=True) if b["outcome"] != "skip"]
        # the run that holds these cases (several start at once with --baseline-kernel)
        run = min(((s, d) for s, d in walls if s <= first and last <= s + d + 1),
                  key=lambda r: r[1], default=None)
        outcomes = Counter(c["outcome"] for c in group)
        print(f"kernel {kernel}: {len(group)} cases ({dict(outcomes)})")
        if run is not None:
            print(f"  run wall {run[1]:.1f} s; run start to first case {first - run[0]:.1f} s; "
                  f"last case end to run end {run[0] + run[1] - last:.1f} s")
        print(f"  first case start to last case end {last - first:.1f} s; cases' own time "
              f"{own:.1f} s; no case running {uncovered(group):.1f} s")
        if gaps:
            print(f"  gap between consecutive cases (one VM: outside cases): total "
                  f"{sum(gaps):.1f} s, median {statistics.median(gaps) * 1000:.0f} ms, "
                  f"max {max(gaps):.2f} s; before a case that ran: median "
                  f"{statistics.median(ran) * 1000 if ran else 0:.0f} ms of {len(ran)}")
        skipped = sum(c["duration"] for c in group if c["outcome"] == "skip")
        print(f"  skipped cases' time {skipped:.1f} s")
        slowest = sorted(group, key=lambda c: -c["duration"])[:top]
        print(f"  the {top} slowest cases ({sum(c['duration'] for c in slowest):.1f} s):")
        for c in slowest:
            print(f"    {c['duration']:7.2f} {c['outcome']:5} {c['case_id']}")
        files: Counter[str] = Counter()
        for c in group:
            files[c["file"]] += c["duration"]
        print("  files by their cases' time:")
        for name, seconds in files.most_common(top):
            count = sum(1 for c in group if c["file"] == name)
            print(f"    {seconds:7.1f} {count:4} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("journal", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    runs, cases = load(args.journal)
    if not cases:
        raise SystemExit(f"{args.journal}: no case in this journal")
    report(runs, cases, args.top)


if __name__ == "__main__":
    main()
