#!/usr/bin/env python3
"""Validation throughput: generate 1,000 library-size scenario files, validate them all.

Prints files validated per second on one core (target: more than 1,000/s) and, as the
baseline run in the same process, how long a plain-Python loop takes just to read the
same files, so the ratio is comparable across machines. The rate counts the process's
CPU time (pinned to one core), so other work on a shared machine does not distort it;
the wall-clock time is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TEMPLATE = """\
name: memcpy-{n}
description: The device copies a buffer through its own DMA engine ({n}).
tags: [driver, dma, bench]
requires:
  driver: any
  iommu_modes: [vfio_type1v2_iommu, iommufd]
matrix:
  size: [8, 256, 4096]
vars:
  iova: {iova:#x}
timeout: 30s
steps:
  - open_iommu: {{mode: "{{{{ iommu_mode }}}}"}}
    as: iommu
  - open_device: {{iommu: iommu}}
    as: dev
  - alloc_buffer: {{size: 2MiB}}
    as: buf
  - map_dma: {{iommu: iommu, buffer: buf, iova: "{{{{ iova }}}}"}}
    as: map
  - fill: {{buffer: buf, size: "{{{{ size }}}}", pattern: random, seed: {n}}}
  - driver_init: {{device: dev}}
  - memcpy_start: {{device: dev, src: "{{{{ iova }}}}", dst: "{{{{ iova + 0x1000 }}}}", size: "{{{{ size }}}}"}}
  - memcpy_wait: {{device: dev}}
    timeout: 5s
  - assert_equal: {{a: {{buffer: buf, offset: 0}}, b: {{buffer: buf, offset: 0x1000}}, size: "{{{{ size }}}}"}}
  - expect_no_dmesg: {{pattern: "DMAR: .*fault"}}
teardown:
  - driver_remove: {{device: dev}}
  - unmap_dma: {{mapping: map}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    from vfio_scenario.language.compile import compile_paths

    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.files):
            Path(tmp, f"s{n:04d}.yaml").write_text(TEMPLATE.format(n=n, iova=0x100000 + n * 0x10000))
        c0 = time.process_time()
        total = sum(len(p.read_bytes()) for p in sorted(Path(tmp).glob("*.yaml")))
        baseline = time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        compiled = compile_paths([tmp])
        wall, elapsed = time.perf_counter() - t0, time.process_time() - c0
    assert not compiled.errors, compiled.errors[:3]
    rate = args.files / elapsed
    print(f"validated {args.files} files ({total / 1e6:.1f} MB, {len(compiled.cases)} cases) "
          f"in {elapsed:.3f} s of CPU on one core ({wall:.3f} s wall)")
    print(f"files/s: {rate:.0f} (target > 1000: {'met' if rate > 1000 else 'NOT met'})")
    print(f"ratio vs plain read loop in the same process: {elapsed / baseline:.1f}x "
          f"({baseline * 1e3:.1f} ms of CPU to read the files)")


if __name__ == "__main__":
    main()
