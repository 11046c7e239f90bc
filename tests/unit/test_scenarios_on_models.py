"""Whole library scenarios, unchanged, against the register models of ioat, dsa and nv_falcon.

The engine runs as in a real run: the compiler renders the scenario for the model's
device (its driver's limits as init set them), the planner decides each case, and the
interpreter runs every step through the real operations.  Only the kernel-facing layer
is faked, at the narrowest seam, the two operations that open kernel objects:

- `open_iommu` gives a `ModelIommu`: an AddressSpace whose map/unmap record each
  mapping in the model's IOVA space, backed by the very process memory being mapped
  (the buffers `alloc_buffer` made), so the model's DMA engine reads and writes them;
- `open_device` gives a `ModelVfioDevice`: config space, BAR accesses and interrupts
  go to the model.

The kernel log the host checks read (`expect_no_dmesg`) shows the model's IOMMU faults
as the Intel IOMMU driver prints them.  Everything else (buffers, patterns, mapping
bookkeeping, driver ops, expect, skips) is the engine's own code.

Outcomes are those of the C test with the Falcon series (v10): nv_falcon skips the
cases that send an MSI (NO_SEND_MSI), passes its no-MSI checks with nothing to check,
and copies at most its 256 bytes; ioat and dsa copy what their devices report.

    pytest tests -k scenarios_on_models -s    # prints the per-model outcome table
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.drivers.base import Driver, Feature, driver_for
from vfio_scenario.errors import VfioError
from vfio_scenario.language.cases import Case, Step
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.language.devices import DeviceName, DriverFacts
from vfio_scenario.language.loader import load_file
from vfio_scenario.language.models import IOMMU_MODES
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run.interpreter import Operation, RunOptions, Runtime, run_case
from vfio_scenario.run.ops import operations
from vfio_scenario.run.plan import DeviceCaps, HostCaps, plan
from vfio_scenario.uapi._vfio import ffi
from vfio_scenario.uapi.iommu import Iommu, Mapping
from vfio_scenario.uapi.iova import IovaRange
from vfio_scenario.uapi.kmsg import KernelLog
from vfio_scenario.uapi.modes import IommuMode

from tests.helpers.scenarios import compile_text
from tests.models.dsa import DsaModel
from tests.models.falcon import FalconGpuModel
from tests.models.ioat import IoatModel
from tests.models.iommu import Mapping as ModelMapping
from tests.models.pci import ModelDevice

ROOT = Path(__file__).resolve().parents[2]
PORT = ROOT / "scenarios" / "kselftest" / "vfio_pci_driver_test.yaml"
# the IOVA ranges an Intel IOMMU reports: all but the MSI window
RANGES = [IovaRange(0, 0xFEDF_FFFF), IovaRange(0xFEF0_0000, (1 << 48) - 1)]

MODELS: dict[str, Callable[[], ModelDevice]] = {
    "ioat": IoatModel,
    "dsa": DsaModel,
    "nv_falcon": FalconGpuModel,
}


def driver_any_scenarios() -> list[Path]:
    """The port and every library file with a `requires: {driver: any}` scenario."""
    found = {PORT}
    for path in sorted((ROOT / "scenarios").rglob("*.yaml")):
        doc, errors = load_file(str(path))
        assert errors == []
        scenarios = doc.data if isinstance(doc.data, list) else [doc.data]
        if any(isinstance(s, dict) and (s.get("requires") or {}).get("driver") == "any"
               for s in scenarios):
            found.add(path)
    return sorted(found)


# --- the faked kernel: an IOMMU and a device that are the model's -------------------

class ModelIommu(Iommu):
    """An IOMMU of one mode whose mappings are the model's IOVA space.

    A mapping's device side is the process memory at `vaddr` itself (no copy), as the
    kernel pins the pages and points the IOMMU at them."""

    def __init__(self, mode: str, model: ModelDevice) -> None:
        self.mode = IommuMode(mode)
        self.handle = f"model {mode}"
        self.model = model
        self.maps: dict[int, int] = {}  # iova -> size
        self.closed = False

    def iova_ranges(self) -> list[IovaRange]:
        return list(RANGES)

    def pgsizes(self) -> int:
        return 0x4000_0000 | 0x20_0000 | 0x1000

    def map(self, vaddr: int, size: int, iova: int, read: bool = True,
            write: bool = True) -> Mapping:
        space = self.model.iommu
        if any(iova < m.end and m.iova < iova + size for m in space.mappings):
            raise VfioError(errno.EEXIST, "map_dma", self.handle,
                            f"IOVA 0x{iova:x}+0x{size:x} overlaps a mapping")
        memory = memoryview(ffi.buffer(ffi.cast("char *", vaddr), size))
        space.mappings.append(ModelMapping(iova, memory))  # type: ignore[arg-type]
        self.maps[iova] = size
        return Mapping(self, iova, size, vaddr)

    def unmap(self, iova: int, size: int) -> int:
        gone = [i for i, s in self.maps.items() if iova <= i and i + s <= iova + size]
        for i in gone:
            self.model.iommu.unmap(i)
        return sum(self.maps.pop(i) for i in gone)

    def unmap_all(self) -> int:
        return self.unmap(0, 1 << 64)

    def close(self) -> None:
        self.unmap_all()
        self.closed = True


class ModelVfioDevice:
    """The device handle `open_device` makes: DeviceAccess answered by the model."""

    def __init__(self, model: ModelDevice, iommu: ModelIommu) -> None:
        self.model = model
        self.iommu = iommu
        self.bdf = model.bdf
        self.vendor_id = model.vendor_id
        self.device_id = model.device_id

    def config_read(self, offset: int, width: int) -> int:
        return self.model.config_read(offset, width)

    def config_write(self, offset: int, width: int, value: int) -> None:
        self.model.config_write(offset, width, value)

    def bar_read(self, bar: int, offset: int, width: int) -> int:
        return self.model.bar_read(bar, offset, width)

    def bar_write(self, bar: int, offset: int, width: int, value: int) -> None:
        self.model.bar_write(bar, offset, width, value)

    def wait_irq(self, vector: int, timeout: float) -> int:
        return self.model.wait_irq(vector, timeout)

    def __getattr__(self, name: str) -> Any:
        # what only some models have: interrupt control (IrqControl), 64-byte portal
        # stores (PortalWriter, DSA)
        if name in ("irq_info", "enable_irq", "bar_write64b"):
            return getattr(self.model, name)
        raise AttributeError(name)

    def close(self) -> None:
        """Nothing to release: the model stays with the case."""


class ModelKernelLog(KernelLog):
    """The kernel log since the case began: the model's IOMMU faults, as intel-iommu
    prints a DMA remapping fault."""

    def __init__(self, model: ModelDevice) -> None:  # no /dev/kmsg: nothing to open
        self.model = model
        self.lines: list[str] = []

    def read(self) -> list[str]:
        bus, dev_fn = self.model.bdf.split(":")[1:]
        self.lines = [
            f"DMAR: [DMA {'Write' if f.write else 'Read'} NO_PASID] Request device "
            f"[{bus}:{dev_fn}] fault addr 0x{f.iova:x} [fault reason 0x06] PTE "
            f"{'Write' if f.write else 'Read'} access is not set"
            for f in self.model.iommu.faults]
        return list(self.lines)

    def close(self) -> None:
        """Nothing to close."""


def model_ops(model: ModelDevice) -> dict[str, Operation]:
    """The engine's operations with the two that open kernel objects replaced."""
    ops = operations()

    def open_iommu(rt: Runtime, args: Any, step: Step) -> ModelIommu:
        mode = args.mode or rt.case.iommu_mode
        assert mode is not None
        iommu = ModelIommu(mode, model)
        rt.on_cleanup(f"IOMMU {mode}", iommu.close)
        return iommu

    def open_device(rt: Runtime, args: Any, step: Step) -> ModelVfioDevice:
        device = ModelVfioDevice(model, rt.handle(args.iommu or ""))
        rt.on_cleanup(f"device {model.bdf}", device.close)
        return device

    return {**ops, "open_iommu": open_iommu, "open_device": open_device}


# --- one model: facts, plan, run ------------------------------------------------------

def facts_of(make: Callable[[], ModelDevice]) -> tuple[type[Driver], DriverFacts]:
    """The driver serving the model, and its facts after init (what a run compiles with)."""
    model = make()
    cls = driver_for(model)
    assert cls is not None
    region = model.iommu.region(0x1000_0000, cls.region_size) if cls.region_size else None
    drv = cls(model, region)
    drv.init(0)
    facts = drv.device_facts()
    drv.remove()
    return cls, facts


def run_on_model(name: str, cases_of: Callable[[list[DeviceName]], list[Case]]
                 ) -> list[CaseResult]:
    make = MODELS[name]
    cls, facts = facts_of(make)
    probe = make()
    cases = cases_of([DeviceName(probe.bdf, facts)])
    caps = HostCaps(kernel_release="model", iommu_modes=dict.fromkeys(IOMMU_MODES),
                    devices=[DeviceCaps(bdf=probe.bdf, vendor_id=probe.vendor_id,
                                        device_id=probe.device_id, vfio_driver="vfio-pci",
                                        scenario_driver=cls.name,
                                        no_send_msi=Feature.NO_SEND_MSI in cls.features)])
    results = []
    for pc in plan(cases, caps):
        if pc.skip:
            results.append(CaseResult(case_id=pc.case.id, file=pc.case.file,
                                      scenario=pc.case.scenario, outcome=Outcome.SKIP,
                                      message=pc.skip))
            continue
        model = make()

        def begin(rt: Runtime, model: ModelDevice = model) -> None:
            rt.kernel_log = ModelKernelLog(model)

        results.append(run_case(pc.case, [model.bdf], model_ops(model), RunOptions(),
                                begin=begin))
    return results


def library_cases(devices: list[DeviceName]) -> list[Case]:
    compiled = compile_paths([str(p) for p in driver_any_scenarios()], devices)
    assert compiled.errors == []
    return compiled.cases


def text_cases(text: str, name: str) -> Callable[[list[DeviceName]], list[Case]]:
    """The cases of a scenario written in the test (indented text), compiled for the devices."""

    def cases_of(devices: list[DeviceName]) -> list[Case]:
        return compile_text(text, name, devices)

    return cases_of


_RESULTS: dict[str, list[CaseResult]] = {}


def results_of(name: str) -> list[CaseResult]:
    if name not in _RESULTS:
        _RESULTS[name] = run_on_model(name, library_cases)
    return _RESULTS[name]


def outcome_table(rows: dict[str, list[CaseResult]]) -> str:
    """scenario × model: passed/skipped/failed counts over the five modes."""
    scenarios = sorted({(r.file.rsplit("/", 1)[-1], r.scenario) for rs in rows.values()
                        for r in rs})
    head = f"{'scenario':<62}" + "".join(f"{m:>12}" for m in rows)
    lines = [head, "-" * len(head)]
    for file, scen in scenarios:
        cells = []
        for rs in rows.values():
            n = Counter(r.outcome for r in rs if r.scenario == scen and r.file.endswith(file))
            cell = f"{n[Outcome.PASS]}p" + (f" {n[Outcome.SKIP]}s" if n[Outcome.SKIP] else "") \
                + (f" {n[Outcome.FAIL] + n[Outcome.ERROR]}F"
                   if n[Outcome.FAIL] + n[Outcome.ERROR] else "")
            cells.append(f"{cell:>12}")
        lines.append(f"{file + '::' + scen:<62}" + "".join(cells))
    lines.append("(p passed, s skipped, F failed or errored; each over the five IOMMU modes)")
    for model, rs in rows.items():
        answers = Counter(s.actual for r in rs if "unmapped" in r.scenario for s in r.steps
                          if s.op == "memcpy_wait")
        lines.append(f"{model}: unmapped-IOVA copies answered "
                     + ", ".join(f"{a} ×{n}" for a, n in sorted(answers.items())))
    return "\n".join(lines)


# --- the tests ---------------------------------------------------------------------

SENDS_MSI = {"driver-send-msi", "driver-mix-and-match", "send-msi"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scenarios_on_models_pass_or_skip_as_the_c_test(name: str) -> None:
    results = results_of(name)
    bad = [f"{r.case_id}: {r.outcome.name}: {r.message}\n{r.log[-1500:]}" for r in results
           if r.outcome in (Outcome.FAIL, Outcome.ERROR)]
    assert bad == [], "\n".join(bad)
    for r in results:
        assert f"[driver={name}," in r.case_id
        if name == "nv_falcon" and r.scenario in SENDS_MSI:
            assert r.outcome is Outcome.SKIP
            assert r.message.endswith("driver nv_falcon has NO_SEND_MSI: send_msi is "
                                      "EOPNOTSUPP (the device cannot raise an MSI on demand)")
        else:
            assert r.outcome is Outcome.PASS, (r.case_id, r.message)
    # every case in the five modes
    modes = Counter(r.case_id.split("iommu_mode=")[1].split("]")[0].split(",")[0]
                    for r in results)
    assert set(modes) == set(IOMMU_MODES) and len(set(modes.values())) == 1


def test_scenarios_on_models_copy_what_each_driver_reports() -> None:
    sizes = {name: facts_of(MODELS[name])[1] for name in MODELS}
    assert sizes["nv_falcon"].max_memcpy_size == 256
    assert sizes["ioat"].max_memcpy_size == 1 << 20  # the model's XFERCAP 20
    assert sizes["dsa"].max_memcpy_size == 1 << 21  # the model's GENCAP shift 21
    for facts in sizes.values():
        cases = library_cases([DeviceName("0000:00:04.0", facts)])
        port = [c for c in cases if c.scenario == "driver-memcpy-success"]
        assert len(port) == 5
        start = next(s for s in port[0].steps if s.op == "memcpy_start")
        assert start.args.size == min(facts.max_memcpy_size, 1 << 20)  # type: ignore[attr-defined]


def test_scenarios_on_models_no_msi_checks_pass_on_nv_falcon_with_nothing_to_check() -> None:
    results = [r for r in results_of("nv_falcon") if r.outcome is Outcome.PASS]
    checks = [s for r in results for s in r.steps if s.op == "expect_no_msi"]
    assert checks and all(s.outcome is Outcome.PASS for s in checks)
    assert {s.message for s in checks} == {"driver has no MSI: nothing to check"}
    # on a driver with MSI the check reads the eventfd and says nothing
    ioat = [s for r in results_of("ioat") for s in r.steps if s.op == "expect_no_msi"]
    assert ioat and {s.message for s in ioat} == {""}


def test_scenarios_on_models_send_msi_expecting_eopnotsupp_gets_it_on_nv_falcon() -> None:
    text = """
        name: msi-unsupported
        requires: {driver: any, iommu_modes: [iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - open_device: {iommu: iommu}
            as: dev
          - driver_init: {device: dev}
          - send_msi: {device: dev}
            expect: EOPNOTSUPP
        teardown:
          - driver_remove: {device: dev}
    """

    (falcon,) = run_on_model("nv_falcon", text_cases(text, "msi.yaml"))
    assert falcon.outcome is Outcome.PASS, falcon.message
    assert falcon.steps[3].actual == "EOPNOTSUPP"
    (ioat,) = run_on_model("ioat", text_cases(text, "msi.yaml"))  # a driver with MSI sends it: not the errno
    assert ioat.outcome is Outcome.FAIL and ioat.steps[3].actual == "ok"


def test_scenarios_on_models_see_the_models_iommu_faults() -> None:
    model = IoatModel()
    log = ModelKernelLog(model)
    iommu = ModelIommu("iommufd", model)
    buf = bytearray(8192)
    vaddr = int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))
    iommu.map(vaddr, 4096, 0x10000)
    model.iommu.write(0x10000, b"seen by the process")
    assert bytes(buf[:19]) == b"seen by the process"
    with pytest.raises(Exception, match="IOMMU fault"):
        model.iommu.read(0x20000, 8)
    assert log.read() == [("DMAR: [DMA Read NO_PASID] Request device [00:04.0] fault addr "
                          "0x20000 [fault reason 0x06] PTE Read access is not set")]
    with pytest.raises(VfioError) as exc:
        iommu.map(vaddr + 4096, 4096, 0x10000)
    assert exc.value.errno == errno.EEXIST
    assert iommu.unmap(0x10000, 4096) == 4096 and model.iommu.mappings == []


def test_scenarios_on_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    table = outcome_table({name: results_of(name) for name in sorted(MODELS)})
    with capsys.disabled():
        print("\n" + table)
    assert "driver-memcpy-success" in table


def test_scenarios_on_models_a_real_nvme_without_a_scratch_range_skips_copies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real controller (not QEMU's) with no VFIO_SCENARIO_NVME_SCRATCH makes no copies:
    a case that copies is skipped naming the variable, not failed with EPERM; a step
    that expects EPERM gets it."""
    from vfio_scenario.drivers.nvme import SCRATCH_ENV

    from tests.models.nvme import NvmeModel

    monkeypatch.delenv(SCRATCH_ENV, raising=False)
    monkeypatch.setitem(MODELS, "nvme-real", lambda: NvmeModel(
        vendor_id=0x144D, device_id=0xA808, model="Samsung SSD 980"))
    text = """
        - name: copy
          requires: {driver: any, iommu_modes: [iommufd]}
          steps:
            - open_iommu: {}
              as: iommu
            - open_device: {iommu: iommu}
              as: dev
            - alloc_buffer: {size: 2MiB}
              as: buf
            - map_dma: {iommu: iommu, buffer: buf, iova: 0x100000}
            - driver_init: {device: dev}
            - memcpy_start: {device: dev, src: 0x100000, dst: 0x140000, size: 512}
          teardown:
            - driver_remove: {device: dev}
        - name: copy-refused
          requires: {driver: any, iommu_modes: [iommufd]}
          steps:
            - open_iommu: {}
              as: iommu
            - open_device: {iommu: iommu}
              as: dev
            - driver_init: {device: dev}
            - memcpy_start: {device: dev, src: 0x100000, dst: 0x140000, size: 512}
              expect: EPERM
          teardown:
            - driver_remove: {device: dev}
    """

    copy, refused = run_on_model("nvme-real", text_cases(text, "nvme-real.yaml"))
    assert copy.outcome is Outcome.SKIP, copy.message
    assert SCRATCH_ENV in copy.message and "makes no copies here" in copy.message
    assert refused.outcome is Outcome.PASS, refused.message
    assert refused.steps[3].actual == "EPERM"
