#!/usr/bin/env python3
"""The kernel's own VFIO selftests against their ports in scenarios/kselftest/, one VM.

Also the iommufd selftests (tools/testing/selftests/iommu/iommufd.c and
iommufd_fail_nth.c, built as their Makefile does, -lcap) against
scenarios/kselftest/iommufd_test.yaml and iommufd_fail_nth.yaml: they need no device,
only the mock IOMMU of CONFIG_IOMMUFD_TEST in the kernel (and fault injection for
iommufd_fail_nth).

Builds tools/testing/selftests/vfio from the Debian linux-source tree
(`vfio_scenario.testbed.assets.linux_source_dir()`) into the cache, with the fix-ups
7.2.13 needs to build (calloc_assert() is called but defined nowhere: a small
definition is force-included with -include; nothing of the kernel is copied into this
repository). Then it boots the testbed once and, inside it, for every program:

  C      the program run end to end (all its cases), and each case alone (`-r`);
  ours   the guest engine (`vfio_scenario.run.guest`'s main) on the payload of the
         program's scenario file, forked from this process warmed as a zygote is
         (run/zygote.py: the engine imported, the models made, the operations
         registered once; the payload compiled first, untimed, in a Python of its own,
         as the host does before the guest engine starts), end to end, with each
         case's own duration from its events; and once over all the compared
         programs, forked as above and in a fresh Python
         (`python -m vfio_scenario.run.guest`, what one `run` starts today).

Each C program's end-to-end run and each of ours is also measured as QEMU's CPU
seconds on the host (benchmarks/qemu_cpu.py): the guest's work, which the host's load
does not inflate as it does the guest's clock.

It prints per program: C and our end-to-end seconds and their ratio, the sums of
per-case seconds and their ratio; the totals; the same in QEMU's CPU seconds; and
every case where the two disagree (one passes where the other fails or skips).
Targets (issue 24): the light programs (LIGHT) <= 2x the C program end to end, all
ported programs together <= 1.1x.

Run on the host: `.venv/bin/python benchmarks/vs_kselftest.py [--kernel default|debian]
[--programs iommufd ...]`.
`--inside` is the half that runs in the guest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = ROOT / "scenarios" / "kselftest"
PROGRAMS = (
    "vfio_dma_mapping_test",
    "vfio_dma_mapping_mmio_test",
    "vfio_iommufd_setup_test",
    "vfio_pci_device_test",
    "vfio_pci_device_init_perf_test",
    "vfio_pci_driver_test",
    "vfio_pci_sriov_uapi_test",
    "iommufd",
    "iommufd_fail_nth",
)
# the iommufd selftests (tools/testing/selftests/iommu): no VFIO library, no device, libcap
IOMMU_PROGRAMS = ("iommufd", "iommufd_fail_nth")
# the programs that run in a fraction of a second: their end to end is mostly start-up
LIGHT = ("vfio_dma_mapping_mmio_test", "vfio_iommufd_setup_test", "vfio_pci_device_test")
# a program's port where the file is not named after the program
SCENARIO_FILES = {"iommufd": "iommufd_test"}
LIB_SOURCES = ("iommu.c", "iova_allocator.c", "libvfio.c", "sysfs.c", "vfio_pci_device.c",
               "vfio_pci_driver.c", "drivers/ioat/ioat.c", "drivers/dsa/dsa.c")
# 7.2.13's lib/vfio_pci_device.c calls calloc_assert(), which no header defines.
FIXUP_HEADER = """\
#include <stdio.h>
#include <stdlib.h>
static inline void *calloc_assert(size_t nmemb, size_t size)
{
\tvoid *p = calloc(nmemb, size);

\tif (!p) {
\t\tperror("calloc");
\t\texit(1);
\t}
\treturn p;
}
"""
TAP_LINE = re.compile(r"^(not ok|ok) \d+ (\S+)(?:\s+#\s*(SKIP|XFAIL)\b\s*(.*))?")


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vfio-scenario" / "kselftest-vfio"


def scenario_file(program: str) -> Path:
    return SCENARIOS / f"{SCENARIO_FILES.get(program, program)}.yaml"


def build(jobs: int = 2) -> Path:
    """Build the programs (once per source tree and program list) and return their folder."""
    from vfio_scenario.testbed.assets import linux_source_dir

    src = linux_source_dir()
    selftests = src / "tools" / "testing" / "selftests"
    vfio = selftests / "vfio"
    out = cache_dir() / src.parent.name
    stamp = out / ".built"
    if stamp.exists() and stamp.read_text().split("\n")[1:2] == [" ".join(PROGRAMS)]:
        return out
    (out / "obj").mkdir(parents=True, exist_ok=True)
    fixup = out / "fixup.h"
    fixup.write_text(FIXUP_HEADER)
    cflags = ["-O2", "-D_GNU_SOURCE=", "-include", str(fixup),
              "-isystem", str(src / "include" / "uapi"),
              "-isystem", str(src / "arch" / "x86" / "include" / "uapi"),
              "-I", str(src / "tools" / "include"), "-I", str(vfio / "lib" / "include"),
              "-I", str(selftests), "-I", str(vfio)]
    jobs_list: list[list[str]] = []
    objects = []
    for rel in LIB_SOURCES:
        obj = out / "obj" / (rel.replace("/", "_") + ".o")
        objects.append(str(obj))
        jobs_list.append(["cc", *cflags, "-c", str(vfio / "lib" / rel), "-o", str(obj)])
    vfio_programs = [p for p in PROGRAMS if p not in IOMMU_PROGRAMS]
    for prog in vfio_programs:
        jobs_list.append(["cc", *cflags, "-c", str(vfio / f"{prog}.c"),
                          "-o", str(out / "obj" / f"{prog}.o")])
    iommu = selftests / "iommu"
    for prog in IOMMU_PROGRAMS:  # as its Makefile: -Wall -O2, the uAPI headers, -lcap
        jobs_list.append(["cc", "-O2", "-Wall", "-Wno-unused-function", "-D_GNU_SOURCE=",
                          "-isystem", str(src / "include" / "uapi"),
                          "-isystem", str(src / "arch" / "x86" / "include" / "uapi"),
                          "-I", str(src / "tools" / "include"), "-I", str(selftests),
                          "-I", str(iommu), str(iommu / f"{prog}.c"), "-lcap",
                          "-o", str(out / prog)])
    _run_parallel(jobs_list, jobs)
    for prog in vfio_programs:
        subprocess.run(["cc", "-pthread", str(out / "obj" / f"{prog}.o"), *objects, "-luuid",
                        "-o", str(out / prog)], check=True)
    stamp.write_text(str(src) + "\n" + " ".join(PROGRAMS) + "\n")
    return out


def _run_parallel(commands: list[list[str]], jobs: int) -> None:
    running: list[subprocess.Popen[bytes]] = []
    for cmd in commands:
        while len(running) >= jobs:
            _reap(running.pop(0), cmd)
        running.append(subprocess.Popen(cmd))
    for proc in running:
        _reap(proc, [])


def _reap(proc: subprocess.Popen[bytes], _next: list[str]) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"build failed: {' '.join(map(str, proc.args))}")  # type: ignore[arg-type]


# --- matching our cases to the C cases -------------------------------------------

def _dma(params: dict[str, str], scenario: str) -> str | None:
    mode = params["iommu_mode"]
    variants = {"anonymous": "anonymous", "hugetlb-2mb": "anonymous_hugetlb_2mb",
                "hugetlb-1gb": "anonymous_hugetlb_1gb"}
    for suffix, variant in variants.items():
        if scenario in (f"dma-map-unmap-{suffix}", f"dma-map-unmap-page-table-{suffix}"):
            return f"vfio_dma_mapping_test.{mode}_{variant}.dma_map_unmap"
    limit = {"dma-map-limit-unmap-range": "unmap_range", "dma-map-limit-unmap-all": "unmap_all",
             "dma-map-limit-overflow": "overflow"}
    return f"vfio_dma_map_limit_test.{mode}.{limit[scenario]}" if scenario in limit else None


def _mmio(params: dict[str, str], scenario: str) -> str | None:
    scenario = scenario.removesuffix("-iommufd")
    test = {"mmio-map-full-bar": "map_full_bar", "mmio-map-partial-bar": "map_partial_bar",
            "mmio-map-bar-misaligned": "map_bar_misaligned"}.get(scenario)
    return f"vfio_dma_mapping_mmio_test.{params['iommu_mode']}.{test}" if test else None


def _cdev(params: dict[str, str], scenario: str) -> str | None:
    test = {"cdev-bind": "bind", "cdev-get-info-without-bind": "get_info_without_bind_fails",
            "cdev-bind-bad-iommufd": "bind_bad_iommufd_fails",
            "cdev-repeated-bind": "repeated_bind_fails",
            "cdev-attach-detach-pt": "attach_detatch_pt",
            "cdev-attach-invalid-pt": "attach_invalid_pt_fails"}.get(scenario)
    return f"vfio_cdev.{test}" if test else None


def _device(params: dict[str, str], scenario: str) -> str | None:
    return {"config-space-read-write": "vfio_pci_device_test.config_space_read_write",
            "validate-bars": "vfio_pci_device_test.validate_bars",
            "device-reset": "vfio_pci_device_test.reset",
            "irq-msi-enable-trigger-disable": "vfio_pci_irq_test.msi.enable_trigger_disable",
            "irq-msix-enable-trigger-disable": "vfio_pci_irq_test.msix.enable_trigger_disable",
            }.get(scenario)


def _perf(params: dict[str, str], scenario: str) -> str | None:
    return f"vfio_pci_device_init_perf_test.{params['iommu_mode']}.init"


def _driver(params: dict[str, str], scenario: str) -> str | None:
    test = scenario.removeprefix("driver-").replace("-", "_")
    return f"vfio_pci_driver_test.{params['iommu_mode']}.{test}"


# our iommufd_test.yaml scenario prefix -> the C fixture (FIXTURE_VARIANTs: the `variant` axis)
IOMMUFD_FIXTURES = {"iommufd-": "iommufd", "ioas-": "iommufd_ioas",
                    "mock-domain-": "iommufd_mock_domain", "change-process-": "change_process",
                    "vfio-compat-": "vfio_compat_mock_domain", "viommu-": "iommufd_viommu",
                    "dirty-": "iommufd_dirty_tracking", "pasid-": "iommufd_device_pasid"}
# a variant's own scenario, where the C test's steps depend on the fixture's ids (or, for
# the dirty-tracking hugetlb variants and the mock domain's file variants, on its memory)
IOMMUFD_SUFFIXES = ("-with-domain", "-two-domains", "-no-domain", "-no-viommu", "-huge",
                    "-no-pasid", "-file", "-account-none")


# C test names our scenarios spell otherwise (iommufd.c writes `access_domain_destory`)
IOMMUFD_C_SPELLING = {"access_domain_destroy": "access_domain_destory"}


def _iommufd(params: dict[str, str], scenario: str) -> str | None:
    for prefix, fixture in IOMMUFD_FIXTURES.items():
        if scenario.startswith(prefix):
            test = scenario.removeprefix(prefix)
            for suffix in IOMMUFD_SUFFIXES:
                test = test.removesuffix(suffix)
            test = test.replace("-", "_")
            test = IOMMUFD_C_SPELLING.get(test, test)
            variant = params.get("variant")
            return f"{fixture}.{variant}.{test}" if variant else f"{fixture}.{test}"
    return None


def _fail_nth(params: dict[str, str], scenario: str) -> str | None:
    test = scenario.removeprefix("fail-nth-").replace("-", "_")
    return f"basic_fail_nth.{test}"


MATCH: dict[str, Callable[[dict[str, str], str], str | None]] = {
    "vfio_dma_mapping_test": _dma,
    "vfio_dma_mapping_mmio_test": _mmio,
    "vfio_iommufd_setup_test": _cdev,
    "vfio_pci_device_test": _device,
    "vfio_pci_device_init_perf_test": _perf,
    "vfio_pci_driver_test": _driver,
    "iommufd": _iommufd,
    "iommufd_fail_nth": _fail_nth,
}


# --- inside the guest ------------------------------------------------------------

@dataclass
class Side:
    """One side's results for one program: end-to-end seconds, per-case outcome/seconds."""

    seconds: float = 0.0
    cases: dict[str, str] = field(default_factory=dict)  # C case name -> pass/fail/skip
    case_seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""
    whole: str = ""  # the program's own verdict when it ran no case (exit 4: skip)


def run_c(binary: Path, bdfs: list[str], per_case: bool) -> Side:
    from qemu_cpu import mark

    side = Side()
    mark(f"c {binary.name}", "begin")
    t0 = time.perf_counter()
    proc = subprocess.run([str(binary), *bdfs], capture_output=True, text=True, check=False)
    side.seconds = time.perf_counter() - t0
    mark(f"c {binary.name}", "end")
    for line in proc.stdout.splitlines():
        m = TAP_LINE.match(line)
        if m:
            status = "skip" if m.group(3) == "SKIP" else ("pass" if m.group(1) == "ok" else "fail")
            side.cases[m.group(2)] = status
    if not side.cases:
        side.note = (f"exit {proc.returncode}: "
                     + (proc.stderr.strip().splitlines() or ["no output"])[-1])
        side.whole = "skip" if proc.returncode == 4 else "fail"
    if per_case:
        for name in side.cases:
            t0 = time.perf_counter()
            subprocess.run([str(binary), "-r", name, *bdfs], capture_output=True, check=False)
            side.case_seconds[name] = time.perf_counter() - t0
    return side


def guest_engine(argv: list[str]) -> tuple[int, str]:
    """The guest engine on ARGV forked from this process, warmed as a zygote is
    (run/zygote.py: the engine imported, the models made, the operations registered):
    (exit status, stdout)."""
    from vfio_scenario.run import zygote

    read_fd, write_fd = os.pipe()
    pid = zygote.fork_run(argv, stdout=write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        out = pipe.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out


def cold_engine(argv: list[str]) -> tuple[float, int]:
    """`python -m vfio_scenario.run.guest ARGV`, a fresh Python: (seconds, exit status)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vfio_scenario.run.guest", *argv],
                          stdout=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0, proc.returncode


WRITE_PAYLOAD = """
import json, sys
from vfio_scenario.drivers.base import driver_entry_points
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.language.devices import DeviceName
from vfio_scenario.run import payload
from vfio_scenario.run.driverfacts import driver_facts
folder, bdfs, files = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
# each device with its driver's limits, as a run compiles (the `driver` axis)
compiled = compile_paths(files, [DeviceName(b, driver_facts(b)[0]) for b in bdfs])
if compiled.errors:
    raise SystemExit("\\n".join(map(str, compiled.errors)))
# the same devices as the C programs (the testbed may hold others: igb, nvme)
header = payload.Header(devices=bdfs, drivers=driver_entry_points())
print(payload.write(folder, header, compiled.cases))
"""


def write_payload(programs: list[str], workdir: Path, bdfs: list[str]) -> str:
    """The programs' scenario files compiled for `bdfs` as a run compiles them, written
    as a payload; its path. What the host does before the guest engine starts is not
    timed (on the host it takes a tenth of a second), and it runs in a Python of its own:
    it imports pydantic, which the guest engine and its zygote never do."""
    # a program's name, or a scenario file's path (benchmarks/guest_costs.py's FILEs)
    files = [p if p.endswith((".yaml", ".yml")) else str(scenario_file(p)) for p in programs]
    out = subprocess.run([sys.executable, "-c", WRITE_PAYLOAD, str(workdir), json.dumps(bdfs),
                          *files], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return out.stdout.strip().splitlines()[-1]


def run_ours(programs: list[str], workdir: Path, bdfs: list[str],
             cold: bool = False) -> tuple[float, dict[str, Side], float]:
    """One guest-engine run over the programs' scenario files: its seconds, per-program
    results; with `cold`, also the seconds of the same run in a fresh Python (first)."""
    from qemu_cpu import mark

    work = write_payload(programs, workdir, bdfs)
    # the run over all compared programs (`cold`) is "all" even when they are one program:
    # its QEMU CPU seconds must not add to that program's own run's (the same label)
    label = "all" if cold or len(programs) != 1 else programs[0]
    cold_seconds = 0.0
    if cold:
        mark(f"cold {label}", "begin")
        cold_seconds = cold_engine([work])[0]
        mark(f"cold {label}", "end")
    mark(f"ours {label}", "begin")
    t0 = time.perf_counter()
    status, stdout = guest_engine([work])
    seconds = time.perf_counter() - t0
    mark(f"ours {label}", "end")
    sides = {p: Side() for p in programs}
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") != "result":
            continue
        result = event["result"]
        stem = Path(result["file"]).stem
        program = next((p for p, f in SCENARIO_FILES.items() if f == stem), stem)
        side = sides[program]
        params = {k: str(v) for k, v in result.get("params", {}).items()}
        name = MATCH[program](params, result["scenario"])
        if name is None:
            continue
        outcome = {"error": "fail"}.get(result["outcome"], result["outcome"])
        # Several of our cases may check one C case (modes, the page-table split): the
        # C case's counterpart passes when all of them pass, fails when one fails.
        prev = side.cases.get(name)
        rank = {"fail": 3, "pass": 2, "skip": 1}
        side.cases[name] = outcome if prev is None or rank[outcome] > rank[prev] else prev
        side.case_seconds[name] = side.case_seconds.get(name, 0.0) + float(result["duration"])
    if status != 0:
        for side in sides.values():
            side.note = f"engine exit {status}"
    for program in programs:
        sides[program].seconds = seconds if len(programs) == 1 else 0.0
    return seconds, sides, cold_seconds


def inside(binaries: Path, per_case: bool, programs: tuple[str, ...] = PROGRAMS) -> None:
    from vfio_scenario.run import zygote
    from vfio_scenario.uapi import sysfs

    bdfs = sysfs.find_devices(0x1234, 0x11E8)
    report: dict[str, dict[str, object]] = {}
    ported = [p for p in programs if scenario_file(p).exists()]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        # warm this process as a zygote is, with the models of this checkout's payloads
        # (each made once per content), untimed: the engine runs fork from it
        if ported:
            zygote.preload(write_payload(ported, Path(tmp), bdfs))
        for program in programs:
            args = bdfs if program == "vfio_pci_device_init_perf_test" else bdfs[:1]
            if program in IOMMU_PROGRAMS:  # the mock IOMMU: no device
                args = []
            c = run_c(binaries / program, args, per_case)
            ours = run_ours([program], Path(tmp), bdfs)[1][program] if program in ported \
                else None
            report[program] = {"c": c.__dict__, "ours": ours.__dict__ if ours else None}
        # end to end over the programs where C ran cases (a self-skipped program has no time)
        compared = [p for p in ported if report[p]["c"]["cases"]]  # type: ignore[index]
        all_seconds, all_sides, cold_seconds = run_ours(compared, Path(tmp), bdfs, cold=True)
        one_run_cases = {p: sum(all_sides[p].case_seconds.values()) for p in compared}
    print(json.dumps({"kernel": os.uname().release, "bdfs": bdfs, "programs": report,
                      "ours_one_run": all_seconds, "compared": compared,
                      "cold_seconds": cold_seconds, "one_run_cases": one_run_cases,
                      "guest_load": [load, os.getloadavg()[0]]}))


# --- on the host -----------------------------------------------------------------

def _ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}" if b > 0 else "     -"


def print_light(programs: dict[str, dict[str, dict[str, Any] | None]]) -> None:
    """The light programs' end-to-end ratios against their target."""
    for p in LIGHT:
        c, ours = (programs.get(p) or {}).get("c"), (programs.get(p) or {}).get("ours")
        if c and ours and c["seconds"]:
            r = float(ours["seconds"]) / float(c["seconds"])
            print(f"light program {p}: ours/C {r:.2f} (target <= 2: "
                  f"{'met' if r <= 2 else 'NOT met'})")


def print_cpu(data: dict[str, object], programs: list[str], compared: list[str]) -> None:
    """The same comparisons in QEMU's CPU seconds (benchmarks/qemu_cpu.py)."""
    cpu: dict[str, float] = data.get("qemu_cpu", {})  # type: ignore[assignment]
    if not cpu:
        return
    print("the guest's work (QEMU's CPU seconds on the host, which the host's load does "
          "not inflate as it does the guest's clock):")
    for p in programs:
        c_cpu, o_cpu = cpu.get(f"c {p}"), cpu.get(f"ours {p}")
        if c_cpu is not None and o_cpu is not None:
            print(f"  {p:<32} C {c_cpu:6.2f}  ours {o_cpu:6.2f}  ratio "
                  f"{_ratio(o_cpu, c_cpu).strip()}")
    c_total = sum(cpu.get(f"c {p}", 0.0) for p in compared)
    if c_total and "ours all" in cpu:
        cold = cpu.get("cold all", 0.0)
        print(f"  end to end over the compared programs: C {c_total:.2f}, ours (zygote) "
              f"{cpu['ours all']:.2f}, ratio {cpu['ours all'] / c_total:.2f} (target <= 1.1: "
              f"{'met' if cpu['ours all'] / c_total <= 1.1 else 'NOT met'}); a fresh Python "
              f"{cold:.2f}, ratio {cold / c_total:.2f}")


def print_report(data: dict[str, object]) -> int:
    programs: dict[str, dict[str, dict[str, Any] | None]] = data["programs"]  # type: ignore[assignment]
    print(f"kernel {data['kernel']}, devices {', '.join(data['bdfs'])}; "  # type: ignore[arg-type]
          "load (host's, seen in the guest: /proc/loadavg of the VM) "
          f"{data.get('guest_load')}, host load at the end {os.getloadavg()[0]:.1f}")
    print(f"{'program':<32} {'cases':>5} {'C e2e':>7} {'ours':>7} {'ratio':>6}"
          f" {'C cases':>8} {'ours':>7} {'ratio':>6}  C pass/fail/skip   ours p/f/s")
    tot = [0.0, 0.0, 0.0, 0.0]
    disagreements: list[str] = []
    for program, sides in programs.items():
        c, ours = sides["c"], sides["ours"]
        assert c is not None
        c_cases: dict[str, str] = c["cases"]
        if ours is None:
            print(f"{program:<32} {len(c_cases):>5} {c['seconds']:>7.2f}   (no scenarios here: "
                  "SR-IOV uAPI ports belong to scenarios/sriov/)")
            continue
        o_cases: dict[str, str] = ours["cases"]
        c_sec = sum(c["case_seconds"].values())
        o_sec = sum(ours["case_seconds"].values())
        def counts(cs: dict[str, str]) -> str:
            return "/".join(str(sum(1 for v in cs.values() if v == k))
                            for k in ("pass", "fail", "skip"))
        print(f"{program:<32} {len(c_cases):>5} {c['seconds']:>7.2f} {ours['seconds']:>7.2f} "
              f"{_ratio(ours['seconds'], c['seconds'])} {c_sec:>8.2f} {o_sec:>7.2f} "
              f"{_ratio(o_sec, c_sec)}  {counts(c_cases):<17} {counts(o_cases)}")
        for note in (c["note"], ours["note"]):
            if note:
                print(f"    note: {note}")
        for name in sorted(set(c_cases) | set(o_cases)):
            a = c_cases.get(name, f"{c['whole']} (whole program)" if c["whole"] else "absent")
            b = o_cases.get(name, "not ported")
            if a != b:
                disagreements.append(f"  {name}: C {a}, ours {b}")
        if not c_cases:  # the C program ran nothing (skipped itself): no time to compare
            continue
        tot[0] += c["seconds"]
        tot[1] += ours["seconds"]
        tot[2] += c_sec
        tot[3] += o_sec
    print(f"{'sum (programs where C ran cases)':<32} {'':>5} {tot[0]:>7.2f} {tot[1]:>7.2f} "
          f"{_ratio(tot[1], tot[0])} {tot[2]:>8.2f} {tot[3]:>7.2f} {_ratio(tot[3], tot[2])}")
    one_run: float = data["ours_one_run"]  # type: ignore[assignment]
    compared: list[str] = data["compared"]  # type: ignore[assignment]
    c_all = sum(float((programs[p]["c"] or {})["seconds"]) for p in compared)
    ratio = one_run / c_all if c_all else float("inf")
    print(f"end to end over {', '.join(compared)}: C {c_all:.2f} s (the programs one after "
          f"the other), ours {one_run:.2f} s (one engine run of their ported cases)")
    in_cases: dict[str, float] = data["one_run_cases"]  # type: ignore[assignment]
    print("  of which in cases: " + ", ".join(f"{p} {t:.2f} s" for p, t in in_cases.items())
          + f"; outside cases (probe, planning, forks): {one_run - sum(in_cases.values()):.2f} s")
    print(f"end to end ours/C: {ratio:.2f} (target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})")
    cold = float(data["cold_seconds"])  # type: ignore[arg-type]
    if c_all:
        print(f"the same run in a fresh Python (`python -m vfio_scenario.run.guest`, no "
              f"zygote): {cold:.2f} s, ratio {cold / c_all:.2f}")
    print_light(programs)
    print_cpu(data, list(programs), compared)
    print(f"cases where C and ours disagree: {len(disagreements)}")
    print("\n".join(disagreements))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="default")
    parser.add_argument("--no-per-case", action="store_true",
                        help="skip running each C case alone (faster)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS),
                        help="only these C programs and their ports (default: all)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--binaries", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.binaries, not args.no_per_case, tuple(args.programs))
        return
    from vfio_scenario.testbed import Testbed

    binaries = build()
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--binaries", str(binaries),
            "--programs", *args.programs]
    if args.no_per_case:
        argv.append("--no-per-case")
    from qemu_cpu import run_marked

    with Testbed(kernel=args.kernel) as testbed:
        print(f"testbed: {testbed.accelerator}, kernel {testbed.kernel_release}, "
              f"C programs from {binaries}")
        lines, cpu, status = run_marked(testbed, argv, timeout=1800, cwd=str(ROOT))
    if status != 0:
        raise SystemExit(status)
    data = json.loads(lines[-1])
    data["qemu_cpu"] = cpu
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    raise SystemExit(print_report(data))


if __name__ == "__main__":
    main()
