#!/usr/bin/env python3
"""What the engine costs per iteration of a `for` loop, without a kernel: compile time of
scenarios/kselftest/iommufd_test.yaml (its sweeps unroll to some 48,000 steps; the first
compile of the process: later ones reuse its template results) and the
run time of ioas_iova_alloc's loop (8191 iterations of map_dma at a kernel-chosen IOVA +
unmap_dma) against an IOAS whose map/unmap do nothing, so that what is left is the
interpreter and the operations' Python. CPU seconds (process time); the loop best of `--repeat`.

    .venv/bin/python benchmarks/loop_steps.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOOP = """
    name: l
    requires: {devices: 0}
    steps:
      - open_iommu: {mode: iommufd, default_ioas: false}
        as: iommu
      - alloc_ioas: {iommu: iommu}
        as: ioas
      - alloc_buffer: {size: 64KiB}
        as: buffer
      - for: {var: length, from: 1, below: 8192}
        steps:
          - map_dma: {ioas: ioas, buffer: buffer, size: "{{ length }}", iova: auto}
            as: mapping
          - unmap_dma: {mapping: mapping}
"""


def best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()

    from vfio_scenario.language.compile import compile_documents, compile_paths
    from vfio_scenario.language.loader import load_text
    from vfio_scenario.run.interpreter import Runtime, run_step
    from vfio_scenario.run.ops import operations
    from vfio_scenario.uapi.buffers import DmaBuffer
    from vfio_scenario.uapi.iommu import Mapping
    from vfio_scenario.uapi.iommufd import Ioas

    class NullIoas(Ioas):
        """An IOAS whose kernel always says yes, at a new IOVA each time."""

        def __init__(self) -> None:
            self.handle = "ioas"
            self.count = 0

        def map(self, vaddr: int, size: int, iova: int | None, read: bool = True,
                write: bool = True) -> Mapping:
            self.count += 1
            return Mapping(self, self.count << 24, size, vaddr)

        def unmap(self, iova: int, size: int) -> int:
            return size

    port = str(ROOT / "scenarios" / "kselftest" / "iommufd_test.yaml")
    t0 = time.process_time()
    compiled = compile_paths([port])
    compile_s = time.process_time() - t0
    steps = sum(1 for c in compiled.cases for _ in _flat(c))
    print(f"compile {port}: {len(compiled.cases)} cases, {steps} steps: {compile_s:.2f} s")

    doc, _ = load_text(textwrap.dedent(LOOP), "loop.yaml")
    (case,) = compile_documents([doc]).cases
    ops = operations()
    buffer = DmaBuffer(64 * 1024)

    def run() -> None:
        rt = Runtime(case=case, devices=[])
        rt.handles.update(ioas=NullIoas(), buffer=buffer)
        result = run_step(rt, case.steps[3], ops)
        assert result.message == "8191 iterations", result.message

    run_s = best(run, opts.repeat)
    print(f"ioas_iova_alloc's loop, 8191 iterations (16382 steps), null IOAS: {run_s:.3f} s "
          f"({run_s / 16382 * 1e6:.1f} us a step)")
    return 0


def _flat(case: Any) -> Any:
    from vfio_scenario.language.cases import flat_steps

    return flat_steps([*case.steps, *case.teardown])


if __name__ == "__main__":
    sys.exit(main())
