#!/usr/bin/env python3
"""What CONFIG_IOMMUFD_TEST and its fault injection cost the default kernel (issue #21).

Boots two kernels one after the other, each for the same measurements: `--before` (a
build of the default kernel without the mock: no IOMMUFD_TEST, FAULT_INJECTION,
FAULT_INJECTION_DEBUG_FS, FAILSLAB) and `--after` (default: the default kernel, with
them). Per kernel:

- boot: start of the VM to the first command in the guest, `--rounds` warm boots (the
  assets cached; the first boot, which may build the initramfs, is not timed), median;
- run:  `vfio-scenario run --kernel K PATH…` of the same scenario set, wall time from
  command to exit, and the sum of the case durations over the cases that passed on
  both kernels (the mock's cases skip without it: they are left out of that sum).

Prints each figure, the ratio after/before and the config options in which the two
kernels differ (read from each image's `config` next to it, when there is one).

    .venv/bin/python benchmarks/mock_config_cost.py \\
        --before ~/.cache/vfio-scenario/kernels/own-7.2.13-1-73029bc68ae7/bzImage \\
        [--after default] [--rounds 3] [PATH …]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vfio_scenario.testbed import Testbed

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ["scenarios/kselftest", "scenarios/iommufd", "scenarios/dma"]
MOCK_OPTIONS = ("CONFIG_IOMMUFD_TEST", "CONFIG_FAULT_INJECTION", "CONFIG_FAILSLAB",
                "CONFIG_FAULT_INJECTION_DEBUG_FS")


def boot_seconds(kernel: str, rounds: int) -> list[float]:
    """Start-to-`true` of `rounds` warm boots."""
    times: list[float] = []
    bed = Testbed(kernel=kernel, accel="tcg")
    bed.start()  # warms the caches (initramfs); not measured
    try:
        for _ in range(rounds):
            bed.stop()
            t0 = time.monotonic()
            bed.start()
            assert bed.run(["true"], timeout=120).returncode == 0
            times.append(time.monotonic() - t0)
    finally:
        bed.stop()
    return times


def run_set(kernel: str, paths: list[str], folder: Path) -> tuple[float, dict[str, tuple[str, float]]]:
    """Wall seconds of one `vfio-scenario run`, and case id → (outcome, duration)."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "vfio_scenario", "run", *paths, "--kernel", kernel,
            "--accel", "tcg", "--json", str(folder / "run.json"),
            "--junit-xml", str(folder / "junit.xml")]
    t0 = time.monotonic()
    with open(folder / "console.txt", "w") as console:
        subprocess.run(argv, cwd=ROOT, stdout=console, stderr=subprocess.STDOUT, check=False)
    wall = time.monotonic() - t0
    doc = json.loads((folder / "run.json").read_text())
    return wall, {c["case_id"]: (c["outcome"], float(c.get("duration") or 0.0))
                  for c in doc["cases"]}


def config_of(kernel: str) -> dict[str, str]:
    """CONFIG_X → value of the image's `config` file next to it ({} if none)."""
    if kernel == "default":
        from vfio_scenario.testbed.assets import resolve_kernel
        image = resolve_kernel("default").image
    else:
        image = Path(kernel).expanduser()
    path = image.parent / "config"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=DEFAULT_SET, metavar="PATH")
    parser.add_argument("--before", required=True, help="bzImage of the kernel without the mock")
    parser.add_argument("--after", default="default", help="kernel with the mock (default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="keep the reports and consoles here")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mock-cost-"))
    before_cfg, after_cfg = config_of(args.before), config_of(args.after)
    if before_cfg and after_cfg:
        diff = sorted(k for k in set(before_cfg) | set(after_cfg)
                      if before_cfg.get(k) != after_cfg.get(k))
        print("config options that differ (before -> after): "
              + ", ".join(f"{k}={before_cfg.get(k, 'n')}->{after_cfg.get(k, 'n')}" for k in diff))
        missing = [k for k in MOCK_OPTIONS if before_cfg.get(k) == "y" or after_cfg.get(k) != "y"]
        if missing:
            print(f"warning: the kernels are not the pair asked for: {', '.join(missing)}")
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    figures: dict[str, dict[str, object]] = {}
    for label, kernel in (("before", args.before), ("after", args.after)):
        boots = boot_seconds(kernel, args.rounds)
        wall, cases = run_set(kernel, args.paths, base / label)
        figures[label] = {"boot": statistics.median(boots), "boots": boots, "wall": wall,
                          "cases": cases}
        counts: dict[str, int] = {}
        for outcome, _ in cases.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{label} ({kernel}): boot to first command {statistics.median(boots):.2f} s "
              f"(min {min(boots):.2f}, max {max(boots):.2f}, {args.rounds} warm boots); "
              f"run {wall:.1f} s wall, {len(cases)} cases "
              f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
              f"load average now {os.getloadavg()[0]:.2f}", flush=True)
    b_cases: dict[str, tuple[str, float]] = figures["before"]["cases"]  # type: ignore[assignment]
    a_cases: dict[str, tuple[str, float]] = figures["after"]["cases"]  # type: ignore[assignment]
    both = [c for c in b_cases if b_cases[c][0] == "pass" and a_cases.get(c, ("",))[0] == "pass"]
    b_sum = sum(b_cases[c][1] for c in both)
    a_sum = sum(a_cases[c][1] for c in both)
    b_boot, a_boot = float(figures["before"]["boot"]), float(figures["after"]["boot"])  # type: ignore[arg-type]
    b_wall, a_wall = float(figures["before"]["wall"]), float(figures["after"]["wall"])  # type: ignore[arg-type]
    print(f"boot: before {b_boot:.2f} s, after {a_boot:.2f} s, ratio {a_boot / b_boot:.2f}")
    print(f"run wall: before {b_wall:.1f} s, after {a_wall:.1f} s, ratio {a_wall / b_wall:.2f} "
          "(the mock's cases run after, skip before)")
    if both:
        print(f"cases passed on both ({len(both)}): before {b_sum:.1f} s, after {a_sum:.1f} s, "
              f"ratio {a_sum / b_sum:.2f}")
    print(f"reports and consoles: {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
