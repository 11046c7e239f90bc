"""How far each scenario driver has been proven: on real hardware, in the testbed, or
only against its register-level model in tests/models/.

Runs on real devices are recorded in real-runs.json beside this module (committed with
the project), one entry per run: driver, device, kernel, date.  Record one after a
passing `vfio-scenario run` on the device:

    python -m vfio_scenario.drivers.status record ioat "8086:2021 0000:6a:01.0" "$(uname -r)"
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REAL_RUNS = Path(__file__).with_name("real-runs.json")
# the testbed runs these drivers for real, on QEMU's edu, igb and nvme devices, every CI run
TESTBED_DRIVERS = frozenset({"edu", "igb", "nvme"})
# drivers whose unit tests drive a register model of their device (tests/models/)
MODEL_TESTED_DRIVERS = frozenset({"ioat", "dsa", "nv_falcon"})


@dataclass(frozen=True)
class RealRun:
    driver: str
    device: str  # vendor:device and where, e.g. "8086:2021 0000:6a:01.0"
    kernel: str  # uname -r of the host (or guest) that ran it
    date: str  # ISO date


def real_runs(path: Path | None = None) -> list[RealRun]:
    """The recorded runs (default file: REAL_RUNS); ValueError naming it when malformed."""
    path = path or REAL_RUNS
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise TypeError("not a list")
        return [RealRun(**entry) for entry in entries]
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: expected a list of {{driver, device, kernel, date}}: {e}")


def driver_status(name: str, path: Path | None = None) -> str:
    """"real-device" once a run on real hardware is recorded, else "testbed" for drivers the
    testbed runs (edu), "model-tested" for drivers tested only against their device model,
    "untested" for any other (a third party's driver without a recorded run)."""
    if any(run.driver == name for run in real_runs(path)):
        return "real-device"
    if name in TESTBED_DRIVERS:
        return "testbed"
    if name in MODEL_TESTED_DRIVERS:
        return "model-tested"
    return "untested"


def record_real_run(driver: str, device: str, kernel: str, date: str | None = None,
                    path: Path | None = None) -> RealRun:
    """Append a run to the record (date defaults to today, UTC) and return it."""
    path = path or REAL_RUNS
    run = RealRun(driver, device, kernel,
                  date or datetime.datetime.now(datetime.UTC).date().isoformat())
    runs = [*real_runs(path), run]
    path.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vfio_scenario.drivers.status",
                                     description="Scenario driver status and real-run record.")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record a passing run on a real device")
    rec.add_argument("driver")
    rec.add_argument("device", help='e.g. "8086:2021 0000:6a:01.0"')
    rec.add_argument("kernel", help="uname -r of the machine that ran it")
    rec.add_argument("--date", help="ISO date (default today, UTC)")
    show = sub.add_parser("show", help="print the status of drivers")
    show.add_argument("drivers", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "record":
        run = record_real_run(args.driver, args.device, args.kernel, args.date)
        print(f"recorded {run.driver} on {run.device}, kernel {run.kernel}, {run.date}")
    else:
        for name in args.drivers:
            print(f"{name}: {driver_status(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
