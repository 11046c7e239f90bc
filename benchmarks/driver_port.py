"""The driver port (scenarios/kselftest/vfio_pci_driver_test.yaml) per scenario driver.

Boots the testbed (default devices: edu, edu, igb, nvme), then runs the port inside it
once per testbed device that has a scenario driver, with `--device` naming that device,
and prints each case's time (the mean over its IOMMU modes) per driver, the time per
case of the memcpy cases, and each run's wall time. Cases that name another driver
(`requires: {driver: edu}`) are skipped on the others and left out of the means.

    .venv/bin/python benchmarks/driver_port.py [--kernel default] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from vfio_scenario.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
PORT = "scenarios/kselftest/vfio_pci_driver_test.yaml"
# the testbed's devices that have a scenario driver, by vendor:device
DRIVER_IDS = {"1234:11e8": "edu", "8086:10c9": "igb", "1b36:0010": "nvme"}
FIND = (
    "import sys\n"
    "from vfio_scenario.uapi import sysfs\n"
    "for ids, name in %r.items():\n"
    "    v, d = (int(x, 16) for x in ids.split(':'))\n"
    "    found = sysfs.find_devices(v, d)\n"
    "    if found: print(name, found[0])\n"
)


def run_port(bed: Testbed, bdf: str, name: str) -> dict[str, Any]:
    """The JSON report of the port run on `bdf` (reports go to the guest's /tmp: the
    checkout is read-only there)."""
    out = f"/tmp/driver-port-{name}.json"
    result = bed.run([sys.executable, "-m", "vfio_scenario", "run", "--device", bdf,
                      "--json", out, str(REPO / PORT)], timeout=1800, cwd="/tmp")
    if result.returncode not in (0, 1):
        raise SystemExit(f"run on {bdf} exited {result.returncode}:\n{result.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(bed.run(["cat", out], timeout=60).stdout)
    return doc


def summary(doc: dict[str, Any]) -> tuple[dict[str, float], dict[str, int], float]:
    """(mean seconds per scenario over the cases that ran, outcome counts, wall time)."""
    times: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for case in doc["cases"]:
        counts[case["outcome"]] += 1
        if case["outcome"] in ("pass", "fail", "error"):
            times[case["scenario"]].append(case["duration"])
    return ({s: statistics.mean(t) for s, t in times.items()}, dict(counts),
            float(doc["duration"]))


def failures(doc: dict[str, Any]) -> list[str]:
    """"case id: message" of every case that failed or errored."""
    return [f"{c['case_id']}: {c['message'][:300]}" for c in doc["cases"]
            if c["outcome"] in ("fail", "error")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--json", type=Path, help="also write the per-driver summaries here")
    parser.add_argument("--driver", action="append", choices=sorted(DRIVER_IDS.values()),
                        help="only these drivers (repeatable; default: every one present)")
    args = parser.parse_args()
    bed = Testbed(kernel=args.kernel).start()
    try:
        found = bed.run([sys.executable, "-c", FIND % DRIVER_IDS], timeout=120,
                        cwd=str(REPO)).stdout.split("\n")
        devices = dict(line.split() for line in found if line.strip())
        results: dict[str, Any] = {}
        for name, bdf in devices.items():
            if args.driver and name not in args.driver:
                continue
            doc = run_port(bed, bdf, name)
            means, counts, wall = summary(doc)
            results[name] = {"device": bdf, "wall": wall, "counts": counts, "scenarios": means,
                             "failures": failures(doc)}
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    finally:
        bed.stop()
    scenarios = sorted({s for r in results.values() for s in r["scenarios"]})
    names = list(results)
    print(f"{'scenario (mean s per case)':40}" + "".join(f"{n:>10}" for n in names))
    for s in scenarios:
        cells = [results[n]["scenarios"].get(s) for n in names]
        print(f"{s:40}" + "".join(f"{c:>10.2f}" if c is not None else f"{'-':>10}"
                                  for c in cells))
    for n in names:
        memcpy = [t for s, t in results[n]["scenarios"].items() if "memcpy" in s]
        per = statistics.mean(memcpy) if memcpy else float("nan")
        print(f"{n}: {results[n]['device']}, memcpy cases {per:.2f} s each (mean of "
              f"{len(memcpy)} scenarios), run {results[n]['wall']:.1f} s, {results[n]['counts']}")
        for line in results[n]["failures"]:
            print(f"  {line}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
