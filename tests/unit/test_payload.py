"""The payload the host hands to the guest engine, and the planner's lazy device probe.

In the testbed the host compiles and the guest only loads the cases (run/payload.py):
the guest must get models of the same names with every value they held (their class
constants, methods and properties work there: run/guest_models.py), run the cases
exactly as the host would, and import neither pydantic, the YAML loader nor the
template engine.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from vfio_scenario import __version__
from vfio_scenario.errors import EnvironmentProblem, VfioError
from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.language.models import OPERATIONS, Op, Strict, _exactly_one
from vfio_scenario.results import Outcome
from vfio_scenario.run import guest_models, payload
from vfio_scenario.run.interpreter import Runtime, run_case
from vfio_scenario.run.plan import DeviceCaps, HostCaps, plan_each
from vfio_scenario.uapi.sysfs import is_vfio_driver

from tests.helpers.scenarios import compile_text
from tests.helpers.toy_ops import scratch_operations

ROOT = Path(__file__).resolve().parents[2]
HEADER = payload.Header(devices=["0000:00:03.0"],
                        drivers={"edu": "vfio_scenario.drivers.edu:EduDriver"},
                        iommu_modes=["iommufd"], timeout_multiplier=2.5, fail_fast=True)


def cases_of(text: str) -> list[Case]:
    return compile_text(text, "scen/p.yaml")


def round_trip(cases: list[Case], tmp_path: Path) -> tuple[payload.Header, list[Case]]:
    path = payload.write(str(tmp_path), HEADER, cases)
    with open(path, "rb") as f:
        header = payload.read_header(f)
        return header, payload.read_cases(f, guest_models.build(header.models, header.models_code))


def same_values(model: Any, record: Any) -> None:
    """`record` (the guest's) holds what `model` holds, field by field, nested models
    included, with the model's class constants and properties."""
    if isinstance(model, BaseModel):
        cls = type(model)
        assert type(record).__name__ == cls.__name__ and not isinstance(record, BaseModel)
        for name in [*cls.model_fields, *cls.__class_vars__]:
            same_values(getattr(model, name), getattr(record, name))
        for name, attr in vars(cls).items():
            if isinstance(attr, property):
                assert getattr(record, name) == getattr(model, name), name
    elif isinstance(model, (list, tuple)):
        assert type(record) is type(model) and len(record) == len(model)
        for m, r in zip(model, record, strict=True):
            same_values(m, r)
    elif isinstance(model, dict):
        assert record.keys() == model.keys()
        for k in model:
            same_values(model[k], record[k])
    else:
        assert record == model and type(record) is type(model)


def test_every_library_case_arrives_with_every_value(tmp_path: Path) -> None:
    compiled = compile_paths([str(ROOT / "scenarios")])
    assert compiled.errors == [] and len(compiled.cases) > 300
    header, cases = round_trip(compiled.cases, tmp_path)
    assert dataclasses.replace(header, models=[], models_code=None) == HEADER
    assert [c.id for c in cases] == [c.id for c in compiled.cases]
    for sent, got in zip(compiled.cases, cases, strict=True):
        same_values(sent.requires, got.requires)
        assert (got.timeout, got.params, got.tags, got.location) == \
            (sent.timeout, sent.params, sent.tags, sent.location)
        for s, g in zip([*sent.steps, *sent.teardown], [*got.steps, *got.teardown], strict=True):
            assert (g.index, g.op, g.location, g.teardown, g.handle_paths) == \
                (s.index, s.op, s.location, s.teardown, s.handle_paths)
            same_values(s.args, g.args)
            same_values(s.common, g.common)


def test_the_guest_loads_a_payload_and_binds_its_operations_without_pydantic(
        tmp_path: Path) -> None:
    """As guest.py does: the header's models installed first, then the cases, then the
    operations bound to the guest's models; no pydantic, YAML loader or templates."""
    path = payload.write(str(tmp_path), HEADER, compile_paths([str(ROOT / "scenarios")]).cases)
    program = textwrap.dedent(f"""
        import sys
        from vfio_scenario.run import guest, guest_models, payload, plan, probe, session
        with open({path!r}, "rb") as f:
            header = payload.read_header(f)
            models = guest_models.install(header.models)
            cases = payload.read_cases(f, models)
        from vfio_scenario.run.ops import operations, registry_problems
        operations()
        assert registry_problems() == [], registry_problems()
        from vfio_scenario.language.models import OPERATIONS, MapDma
        assert MapDma is models.MapDma and OPERATIONS["map_dma"] is MapDma
        maps = [s.args for c in cases for s in c.steps if s.op == "map_dma"]
        assert maps and all(type(a) is MapDma and a.space == (a.ioas or a.iommu) for a in maps)
        heavy = sorted(m for m in ("pydantic", "ruamel.yaml", "jinja2", "importlib.metadata")
                       if m in sys.modules)
        print(len(cases), heavy)
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True)
    count, rest = out.stdout.split(" ", 1)
    assert int(count) > 300 and rest.strip() == "[]"


def test_the_guests_models_mirror_every_operation_model() -> None:
    """Every registered operation, whether a payload's cases use it or not: the same
    fields in order, class constants, methods and properties."""
    models = guest_models.build(guest_models.describe([]))
    for key, cls in OPERATIONS.items():
        mirror = getattr(models, cls.__name__)
        assert models.OPERATIONS[key] is mirror
        assert list(mirror.__match_args__) == list(cls.model_fields)
        for name in cls.__class_vars__:
            assert getattr(mirror, name) == getattr(cls, name), (key, name)
        for klass in cls.__mro__[:cls.__mro__.index(Strict)]:
            for name, attr in vars(klass).items():
                if isinstance(attr, property):
                    assert isinstance(getattr(mirror, name), property), (key, name)
    with pytest.raises(RuntimeError, match="imported already"):
        guest_models.install([])  # on the host, the real models are imported


def test_the_guest_gets_the_models_with_their_methods_and_constants(tmp_path: Path) -> None:
    (case,) = cases_of("""
        name: r
        matrix: {iommu_mode: [iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - alloc_ioas: {iommu: iommu}
            as: ioas
          - alloc_buffer: {size: 4KiB}
            as: buf
          - map_dma: {ioas: ioas, buffer: buf, iova: 0x10000}
          - sleep: {duration: 2ms}
    """)
    _, (got,) = round_trip([case], tmp_path)
    args: list[Any] = [s.args for s in got.steps]  # the guest's models, as the guest has them
    open_iommu, _, _, map_dma, sleep = args
    assert (type(map_dma).__name__, type(sleep).__name__) == ("MapDma", "Sleep")
    assert (map_dma.space, map_dma.target) == ("ioas", "buf")  # properties of the model
    assert open_iommu.opens_iommu and open_iommu.iommu_mode_argument == "mode"
    assert sleep.duration == 0.002 and sleep.op == "sleep"
    with pytest.raises(dataclasses.FrozenInstanceError):
        sleep.duration = 1
    with pytest.raises(AttributeError, match="'Sleep' object has no attribute 'size'"):
        _ = sleep.size
    assert repr(sleep) == "Sleep(duration=0.002)"
    assert got.steps[4].args == sleep and sleep != got.steps[3].args


def test_a_payload_case_runs_exactly_as_the_compiled_case(tmp_path: Path) -> None:
    text = """
        name: same
        steps:
          - alloc_buffer: {size: 4KiB}
            as: a
          - sleep: {duration: 1ms}
            expect: EINVAL
          - alloc_buffer: {size: 8KiB}
            as: b
        teardown:
          - assert_equal: {a: {buffer: a}, b: {buffer: b}, size: 1}
          - assert_equal: {a: {buffer: a}, b: {buffer: a}, size: 2}
    """
    (case,) = cases_of(text)
    _, (got,) = round_trip([case], tmp_path)

    def ops(log: list[str]) -> dict[str, Any]:
        def alloc_buffer(rt: Runtime, args: Any, step: Any) -> object:
            log.append(f"alloc {args.size}")
            if args.size > 4096:
                raise VfioError(errno.ENOMEM, "ALLOC", "fake")
            return object()

        def sleep(rt: Runtime, args: Any, step: Any) -> None:
            log.append(f"sleep {args.duration}")
            raise VfioError(errno.EINVAL, "SLEEP", "fake")

        def assert_equal(rt: Runtime, args: Any, step: Any) -> None:
            log.append(f"equal {args.a.buffer} {args.b.buffer} {args.size}")

        return {"alloc_buffer": alloc_buffer, "sleep": sleep, "assert_equal": assert_equal}

    runs = []
    for c in (case, got):
        log: list[str] = []
        result = run_case(c, [], ops(log))
        runs.append((log, result.outcome, [(s.outcome, s.actual, s.message) for s in result.steps]))
    assert runs[0] == runs[1]
    log, outcome, steps = runs[1]
    # `b` was never made: the teardown step that needs it (nested, a: {buffer: b}) is
    # not run, the other one is
    assert outcome is Outcome.FAIL
    assert log == ["alloc 4096", "sleep 0.001", "alloc 8192", "equal a a 2"]
    assert steps[3][0] is Outcome.SKIP


def test_a_file_that_is_no_payload_or_from_another_engine_is_an_environment_problem(
        tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a pickle")
    with open(junk, "rb") as f, pytest.raises(EnvironmentProblem, match="not a vfio-scenario payload"):
        payload.read_header(f)
    other = {**HEADER.to_dict(), "version": __version__ + ".other"}
    buf = io.BytesIO(pickle.dumps(other))
    buf.name = "old"
    with pytest.raises(EnvironmentProblem, match="must run one checkout"):
        payload.read_header(buf)


def test_vfio_variant_drivers_count_as_vfio() -> None:
    assert is_vfio_driver("vfio-pci")
    assert is_vfio_driver("mlx5_vfio_pci") and is_vfio_driver("nvgrace_gpu_vfio_pci")
    assert not is_vfio_driver("nvme") and not is_vfio_driver("") and not is_vfio_driver("vfio")


class Loads:
    """Counts feature probes per device."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def loader(self, bdf: str, features: dict[str, str | None]) -> Any:
        def load() -> dict[str, str | None]:
            self.calls.append(bdf)
            return features
        return load


def test_devices_are_probed_only_when_a_case_first_needs_their_features() -> None:
    loads = Loads()
    edu = DeviceCaps(bdf="0000:00:03.0", vendor_id=0x1234, device_id=0x11E8,
                     vfio_driver="vfio-pci", scenario_driver="edu",
                     load_features=loads.loader("edu", {"reset": "VFIO_DEVICE_FLAGS_RESET is clear",
                                                        "msi": None}))
    nvme = DeviceCaps(bdf="0000:00:06.0", vendor_id=0x1B36, device_id=0x0010,
                      vfio_driver="vfio-pci", scenario_driver="nvme",
                      load_features=loads.loader("nvme", {"reset": None, "msi": None}))
    caps = HostCaps(kernel_release="7.2", iommu_modes={"iommufd": None}, devices=[edu, nvme])
    cases = cases_of("""
        - name: plain
          requires: {driver: edu}
          matrix: {iommu_mode: [iommufd]}
          steps: [{sleep: {duration: 1ms}}]
        - name: reset
          requires: {features: [reset]}
          matrix: {iommu_mode: [iommufd]}
          steps: [{sleep: {duration: 1ms}}]
        - name: msi
          requires: {features: [msi]}
          matrix: {iommu_mode: [iommufd]}
          steps: [{sleep: {duration: 1ms}}]
    """)
    planned = plan_each(cases, caps)
    first = next(planned)
    assert first.devices == [edu] and loads.calls == []  # no feature asked: nothing opened
    second = next(planned)
    assert second.devices == [nvme] and loads.calls == ["edu", "nvme"]
    third = next(planned)
    assert third.devices == [edu] and loads.calls == ["edu", "nvme"]  # each probed once
    assert edu.features["reset"] == "VFIO_DEVICE_FLAGS_RESET is clear"


def test_a_case_naming_devices_in_templates_runs_on_those_devices_or_is_skipped() -> None:
    nvme = DeviceCaps(bdf="0000:00:02.0", vendor_id=0x1B36, device_id=0x0010,
                      vfio_driver="vfio-pci", scenario_driver="nvme")
    edu = [DeviceCaps(bdf=f"0000:00:0{i}.0", vendor_id=0x1234, device_id=0x11E8,
                      vfio_driver="vfio-pci", scenario_driver="edu") for i in (3, 4)]
    named, unnamed, in_vars = [c for c in cases_of("""
        - name: named
          requires: {driver: edu, devices: 2}
          steps:
            - open_iommu: {}
              as: iommu
            - open_device: {iommu: iommu, bdf: "{{ devices[1] }}"}
              as: dev
        - name: unnamed
          requires: {driver: edu, devices: 2}
          steps:
            - open_iommu: {}
              as: iommu
            - open_device: {iommu: iommu}
              as: dev
        - name: in-vars
          requires: {driver: edu}
          vars: {where: "{{ device }}"}
          steps:
            - sleep: {duration: 1ms}
    """) if c.iommu_mode in (None, "iommufd")]
    assert (named.names_devices, unnamed.names_devices, in_vars.names_devices) == \
        (True, False, True)
    caps = HostCaps(kernel_release="7.2", iommu_modes={"iommufd": None}, devices=[*edu, nvme])
    a, b, c = plan_each([named, unnamed, in_vars], caps)
    assert a.devices == edu and b.devices == edu and c.devices == edu[:1]
    # the nvme first: the planner must not hand the named case other devices than those
    # its templates name, the unnamed one still finds the two edu
    caps.devices = [nvme, *edu]
    a, b, c = plan_each([named, unnamed, in_vars], caps)
    assert a.skip == ("its templates name the run's first 2 device(s); 0000:00:02.0 "
                      "(1b36:0010): its scenario driver is nvme, not edu")
    assert b.devices == edu and b.skip is None
    assert c.skip is not None and c.devices == []


def test_every_models_method_runs_in_the_guest_and_a_helper_is_caught() -> None:
    """A model's method is recompiled in the guest with builtins and the models only: a
    method reading a helper of the models module is found here, not in the testbed."""
    assert guest_models.unresolved(guest_models.describe([])) == []
    with scratch_operations():

        class Helped(Op):
            """A toy whose property reads a helper of the models module."""

            op = "helped"
            area = "host"
            a: int | None = None

            @property
            def checked(self) -> bool:
                _exactly_one(self, ("a",))
                return True

        problems = guest_models.unresolved(guest_models.describe([Helped]))
    assert problems == [("Helped.checked reads `_exactly_one`, which the guest's models do "
                         "not have (only builtins and the models)")]


def test_a_handover_successor_gets_the_guests_models_first(tmp_path: Path) -> None:
    """A guest process hands its case over (run/handover.py pickles the payload with
    `models` first); the successor, a fresh process, installs the guest's models before
    it reads the case's, and imports no pydantic either."""
    (case,) = cases_of("""
        name: h
        matrix: {iommu_mode: [iommufd]}
        steps:
          - open_iommu: {}
            as: iommu
          - alloc_buffer: {size: 4KiB}
            as: buf
          - map_dma: {iommu: iommu, buffer: buf}
    """)
    path = payload.write(str(tmp_path), HEADER, [case])
    sent = tmp_path / "handover.pickle"
    predecessor = textwrap.dedent(f"""
        import pickle
        from vfio_scenario.run import guest_models, payload
        with open({path!r}, "rb") as f:
            models = guest_models.install(payload.read_header(f).models)
            (case,) = payload.read_cases(f, models)
        data = {{"models": guest_models.for_handover(), "case": case}}
        with open({str(sent)!r}, "wb") as f:
            pickle.dump(data, f)
    """)
    successor = textwrap.dedent(f"""
        import pickle, sys
        with open({str(sent)!r}, "rb") as f:
            case = pickle.load(f)["case"]
        args = case.steps[2].args
        print(type(args).__module__, type(args).__name__, args.space, "pydantic" in sys.modules)
    """)
    for program in (predecessor, successor):
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             check=True)
    assert out.stdout.split() == ["vfio_scenario.language.models", "MapDma", "iommu", "False"]
