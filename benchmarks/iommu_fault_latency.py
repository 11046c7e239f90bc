"""IOMMU fault latency in the testbed: from edu's faulting DMA to the fault being visible
to the guest in QEMU's fault log (what expect_iommu_fault reads), and the same for the
kernel log's DMAR line (what expect_dmesg read before).

In the guest, for each round: start an edu DMA from an unmapped IOVA (edu runs it from a
100 ms timer), then poll in one loop edu's DMA command register (its start bit clears
when the transfer is over; QEMU records the fault during the transfer, before that) and
the fault log's size, and the kernel log. Prints per round the milliseconds from the
DMA's end, as the loop saw it, to the first fault record (negative: seen before the end
bit; the loop's own period bounds the precision, also printed), then the median and max.
Rounds run back to back, so the kernel log misses its lines once the printk rate limit
(10 messages per 5 s) is spent: those rounds print `-` for it.

    .venv/bin/python benchmarks/iommu_fault_latency.py [--rounds 20] [--mode iommufd]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from vfio_scenario.testbed import Testbed

GUEST_PROGRAM = r"""
import json, os, sys, time
from vfio_scenario.drivers.edu import EduDriver, REG_DMA_CMD, CMD_START
from vfio_scenario.uapi.buffers import DmaBuffer
from vfio_scenario.run.faultlog import QEMU_FAULTS_MOUNT, QEMU_FAULTS_FILE
from vfio_scenario.uapi import sysfs
from vfio_scenario.uapi.device import VfioDevice
from vfio_scenario.uapi.iommu import open_iommu
from vfio_scenario.uapi.kmsg import KernelLog

mode, rounds = sys.argv[1], int(sys.argv[2])
path = os.path.join(QEMU_FAULTS_MOUNT, QEMU_FAULTS_FILE)
bdf = sysfs.find_devices(0x1234, 0x11E8)[0]
iommu = open_iommu(mode)
device = VfioDevice.open(iommu, bdf)
edu = EduDriver(device)
edu.init(None)
target = DmaBuffer(4096)
iommu.map_buffer(target, iova=0x100000)
for _ in range(rounds):
    size = os.stat(path).st_size
    kmsg = KernelLog()
    edu.memcpy_start(0x7000000, 0x100000, 4096)
    t0 = time.monotonic()
    done = fault = line = None
    loops = 0
    while (done is None or fault is None or line is None) and time.monotonic() - t0 < 2:
        now = time.monotonic()
        loops += 1
        if done is None and not device.bar_read(0, REG_DMA_CMD, 8) & CMD_START:
            done = now
        if fault is None and os.stat(path).st_size > size:
            fault = now
        if line is None and any("DMAR: [DMA Read" in l for l in kmsg.read()):
            line = now
    period = (time.monotonic() - t0) / loops
    kmsg.close()
    edu.memcpy_wait()  # its second transfer, edu -> the mapped target, does not fault
    ms = lambda t: None if t is None or done is None else round((t - done) * 1000, 2)
    print(json.dumps({"qemu": ms(fault), "kernel": ms(line), "period": round(period * 1000, 2)}),
          flush=True)
    time.sleep(0.05)
edu.remove()
device.close()
iommu.close()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mode", default="iommufd")
    args = parser.parse_args()
    with Testbed(devices=("edu",)) as bed:
        out = bed.run([sys.executable, "-c", GUEST_PROGRAM, args.mode, str(args.rounds)],
                      timeout=600)
    if out.returncode != 0:
        print(out.stdout + out.stderr, file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for i, row in enumerate(rows, 1):
        shown = "-" if row["kernel"] is None else f"{row['kernel']:.2f}"
        print(f"round {i:2}: QEMU fault log {row['qemu']:7.2f} ms, kernel log {shown:>7} ms, "
              f"poll period {row['period']:.2f} ms")
    qemu = [r["qemu"] for r in rows if r["qemu"] is not None]
    kernel = [r["kernel"] for r in rows if r["kernel"] is not None]
    print(f"QEMU fault log: {len(qemu)}/{len(rows)} faults seen, median {statistics.median(qemu):.2f}"
          f" ms, max {max(qemu):.2f} ms after the DMA's end")
    if kernel:
        print(f"kernel log: {len(kernel)}/{len(rows)} faults seen, median "
              f"{statistics.median(kernel):.2f} ms, max {max(kernel):.2f} ms")
    else:
        print(f"kernel log: 0/{len(rows)} faults seen")
    return 0


if __name__ == "__main__":
    sys.exit(main())
