"""Checking report files: JUnit against the Jenkins JUnit schema, and sample results.

`assert_valid_junit(path_or_text)` is the one-line check any test can make of a
JUnit file the engine wrote (the testbed run's report included).
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import xmlschema
from vfio_scenario.results import CaseResult, Outcome, RunResult, StepResult

JUNIT_XSD = Path(__file__).resolve().parent.parent / "data" / "junit.xsd"


@functools.cache
def junit_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(JUNIT_XSD))


def assert_valid_junit(source: str | os.PathLike[str]) -> Any:
    """Fail unless `source` (a path, or the XML text itself) is well-formed and valid
    against tests/data/junit.xsd; returns the parsed root for further checks (an
    ElementTree element, typed Any: a test walks it with find() and get() as if each
    part were there, and a missing one fails it as an AttributeError on None)."""
    text = source if isinstance(source, str) and source.lstrip().startswith("<") \
        else Path(source).read_text(encoding="utf-8")
    root = ET.fromstring(text.encode("utf-8"))  # well-formed (raises ParseError otherwise)
    errors = [str(e) for e in junit_schema().iter_errors(text)]
    assert not errors, "JUnit XML not valid against the Jenkins schema:\n" + "\n".join(errors[:5])
    return root


def step(index: int, op: str, outcome: Outcome = Outcome.PASS, *, file: str,
         line: int, duration: float = 0.001, **kw: object) -> StepResult:
    return StepResult(index=index, op=op, name=str(kw.pop("name", op)), location=f"{file}:{line}",
                      outcome=outcome, duration=duration, **kw)  # type: ignore[arg-type]


def sample_run() -> RunResult:
    """A run like the testbed produces: two scenario files, every outcome, real-looking
    steps, properties and logs (shaped after the interpreter's own results)."""
    mapf, drvf = "scenarios/dma/map.yaml", "scenarios/driver/memcpy.yaml"
    t = 1_795_000_000.0
    props = {"device": "0000:00:03.0", "vendor_device": "1234:11e8", "vfio_driver": "vfio-pci",
             "kernel": "7.2.13-vfio-scenario", "engine_version": "0.1.0",
             "scenario_driver": "edu"}

    def case(file: str, name: str, mode: str, outcome: Outcome, steps: list[StepResult],
             message: str = "", location: str = "", log: str = "", **params: object) -> CaseResult:
        ps = ",".join(f"{k}={v}" for k, v in {"iommu_mode": mode, **params}.items())
        scenario = name
        return CaseResult(case_id=f"{file}::{scenario}[{ps}]", file=file, scenario=scenario,
                          outcome=outcome, duration=sum(s.duration for s in steps) + 0.002,
                          params={"iommu_mode": mode, **params}, tags=["dma"],
                          message=message, location=location, steps=steps, log=log,
                          properties={**props, "iommu_mode": mode}, started=t)

    ok_steps = [step(0, "open_iommu", file=mapf, line=9, duration=0.004),
                step(1, "open_device", file=mapf, line=11, duration=0.120),
                step(2, "alloc_buffer", file=mapf, line=13, duration=0.002),
                step(3, "map_dma", file=mapf, line=15, duration=0.010, repeat=100),
                step(4, "unmap_dma", file=mapf, line=17, duration=0.008)]
    bad = step(3, "map_dma", Outcome.FAIL, file=mapf, line=15, duration=0.0005,
               expected="ok", actual="EINVAL",
               message="VFIO_IOMMU_MAP_DMA on iommu failed with EINVAL (Invalid argument)")
    fail_steps = [*ok_steps[:3], bad,
                  step(0, "close", file=mapf, line=20, teardown=True, duration=0.0002)]
    crash_log = ("--- testbed console tail ---\n[   12.345] DMAR: DRHD: handling fault status reg 2\n"
                 "[   12.346] BUG: kernel NULL pointer dereference, address: 0000000000000008\n")
    timeout_step = step(6, "memcpy_wait", Outcome.ERROR, file=drvf, line=21, duration=5.0,
                        actual="timeout", message="step timed out after 5s")
    drv_steps = [step(i, op, file=drvf, line=9 + 2 * i) for i, op in
                 enumerate(["open_iommu", "open_device", "alloc_buffer", "map_dma", "fill",
                            "driver_init"])]
    return RunResult(
        started=t, duration=7.5,
        properties={"engine_version": "0.1.0", "where": "testbed", "kernel": "7.2.13-vfio-scenario",
                    "accelerator": "tcg", "qemu": "8.2.2"},
        cases=[
            case(mapf, "map-unmap", "iommufd", Outcome.PASS, ok_steps, size=4096),
            case(mapf, "map-unmap", "vfio_type1v2_iommu", Outcome.FAIL, fail_steps,
                 message=f"step 4 `map_dma` ({mapf}:15): VFIO_IOMMU_MAP_DMA on iommu failed "
                 "with EINVAL (Invalid argument)", location=f"{mapf}:15", size=4096),
            case(mapf, "map-unmap", "vfio_type1_iommu", Outcome.SKIP, [],
                 message="IOMMU mode vfio_type1_iommu: the host kernel lacks CONFIG_VFIO_IOMMU_TYPE1",
                 size=4096),
            case(drvf, "driver-memcpy", "iommufd", Outcome.PASS, drv_steps, size=256),
            case(drvf, "driver-memcpy", "iommufd", Outcome.ERROR, [*drv_steps, timeout_step],
                 message=f"step 7 `memcpy_wait` ({drvf}:21): step timed out after 5s",
                 location=f"{drvf}:21", log=crash_log, size=4096),
        ])


def nasty_text() -> str:
    """Unicode, every C0 control, DEL and C1 controls, a lone surrogate, U+FFFE,
    markup, and KTAP/XML look-alikes."""
    controls = "".join(chr(c) for c in range(0x20)) + "\x7f\x85\x9b"
    return ("naïve 測試 ✓ 🐧 " + controls + " \ud800 \ufffe ]]> <b>&amp;</b> \"'"
            " # SKIP not really\n# Subtest: fake\nok 1 fake\nKTAP version 1\n1..9\n"
            "reboot: System halted\nKernel panic - not syncing: VFS: x\nList of all partitions:\n")

