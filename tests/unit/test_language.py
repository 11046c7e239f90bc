"""Loader, units, templating, matrix expansion, case ids and handle checks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.language.compile import compile_documents, compile_paths
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import MapDma, OpenIommu
from vfio_scenario.language.schema import json_schema_text
from vfio_scenario.language.units import format_size, parse_duration, parse_int, parse_size

ROOT = Path(__file__).resolve().parents[2]


def compile_text(text: str, path: str = "s.yaml"):  # type: ignore[no-untyped-def]
    doc, errors = load_text(textwrap.dedent(text), path)
    assert errors == []
    return compile_documents([doc])


@pytest.mark.parametrize(
    ("text", "value"),
    [(4096, 4096), ("4KiB", 4096), ("2MiB", 2 << 20), ("1GiB", 1 << 30), ("0x1000", 4096),
     ("16 B", 16), ("1_024", 1024)],
)
def test_sizes_accept_bytes_hex_and_binary_units(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["2MB", "4k", "1.5GiB", "-1", "lots", True])
def test_sizes_refuse_decimal_units_fractions_and_words(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), (3, 3.0), ("250us", 0.00025)]
)
def test_durations_take_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_integers_take_hex_and_negative_decimal() -> None:
    assert parse_int("0x7000000") == 0x7000000
    assert parse_int("-12") == -12
    with pytest.raises(ValueError):
        parse_int("12abc")


def test_format_size_uses_largest_exact_unit() -> None:
    assert [format_size(n) for n in (4096, 2 << 20, 3000, 1 << 30)] == ["4KiB", "2MiB", "3000", "1GiB"]


def test_loader_keeps_line_and_column_of_values_and_keys() -> None:
    doc, errors = load_text("name: x\nsteps:\n  - sleep: {duration: 1s}\n", "f.yaml")
    assert errors == []
    assert str(doc.location(("steps", 0, "sleep", "duration"))) == "f.yaml:3:23"
    assert str(doc.location(("steps", 0, "sleep"), key=True)) == "f.yaml:3:5"
    # a path that does not exist falls back to its nearest ancestor
    assert str(doc.location(("steps", 0, "sleep", "missing"))) == "f.yaml:3:12"


def test_loader_reports_every_duplicate_key() -> None:
    _, errors = load_text("a: 1\na: 2\nb: 1\nb: 3\n", "d.yaml")
    assert [str(e) for e in errors] == [
        "d.yaml:2:1: duplicate key 'a' (first defined at line 1)",
        "d.yaml:4:1: duplicate key 'b' (first defined at line 3)",
    ]


def test_single_expression_template_keeps_its_type() -> None:
    compiled = compile_text("""
        name: t
        vars: {iova: 0x100000}
        steps:
          - open_iommu: {mode: iommufd}
            as: iommu
          - alloc_buffer: {size: 2MiB}
            as: buf
          - map_dma: {iommu: iommu, buffer: buf, iova: "{{ iova + 0x1000 }}"}
            name: "map at {{ '%#x' % (iova + 0x1000) }}"
    """)
    assert compiled.errors == []
    case = compiled.cases[0]
    step = case.steps[2]
    assert isinstance(step.args, MapDma) and step.args.iova == 0x101000
    assert step.common.name == "map at 0x101000"


def test_matrix_with_include_and_exclude_and_implicit_iommu_mode() -> None:
    compiled = compile_text("""
        name: m
        requires: {iommu_modes: [vfio_type1v2_iommu, iommufd]}
        matrix:
          size: [8, 4096]
          include:
            - {size: 8, label: small}
            - {size: 256}
          exclude:
            - {iommu_mode: iommufd, size: 4096}
        steps:
          - open_iommu: {}
    """, path="dma/m.yaml")
    assert compiled.errors == []
    assert [c.id for c in compiled.cases] == [
        "dma/m.yaml::m[iommu_mode=vfio_type1v2_iommu,label=small,size=8]",
        "dma/m.yaml::m[iommu_mode=vfio_type1v2_iommu,size=4096]",
        "dma/m.yaml::m[iommu_mode=iommufd,label=small,size=8]",
        # an include of its own runs in every mode of the implicit axis, too
        "dma/m.yaml::m[iommu_mode=vfio_type1v2_iommu,size=256]",
        "dma/m.yaml::m[iommu_mode=iommufd,size=256]",
    ]
    assert all(c.iommu_mode for c in compiled.cases)


def test_an_include_reading_iommu_mode_gets_the_implicit_axes() -> None:
    # issue 16: "'iommu_mode' is undefined" for the included combination
    compiled = compile_text("""
        name: m
        requires: {driver: any}
        matrix:
          size: [8]
          include:
            - {size: 64, label: extra}
        steps:
          - open_iommu: {mode: "{{ iommu_mode }}"}
            name: "{{ size }} bytes on {{ driver.name }} in {{ iommu_mode }}"
    """, path="dma/m.yaml")
    assert compiled.errors == []
    extra = [c for c in compiled.cases if c.params.get("label") == "extra"]
    assert {c.iommu_mode for c in extra} == {
        "vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
        "iommufd_compat_type1v2", "iommufd"}
    assert {c.params["driver"] for c in extra} == {"dsa", "edu", "igb", "ioat", "nv_falcon", "nvme"}
    assert extra[0].steps[0].common.name.startswith("64 bytes on dsa in ")


def test_scenario_without_iommu_steps_has_no_mode_axis_and_plain_id() -> None:
    compiled = compile_text("steps:\n  - sleep: {duration: 1ms}\n", path="host/nap.yaml")
    assert [c.id for c in compiled.cases] == ["host/nap.yaml::nap"]


def test_every_mode_is_an_axis_when_requires_names_none() -> None:
    compiled = compile_text("name: all\nsteps:\n  - open_iommu: {}\n    as: i\n")
    assert [c.params["iommu_mode"] for c in compiled.cases] == [
        "vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
        "iommufd_compat_type1v2", "iommufd",
    ]
    assert isinstance(compiled.cases[0].steps[0].args, OpenIommu)


def test_literal_modes_make_one_case_not_one_per_mode() -> None:
    compiled = compile_text("""
        name: fixed
        steps:
          - open_iommu: {mode: iommufd}
            as: i
          - open_iommu: {mode: vfio_type1_iommu}
            as: j
    """)
    assert [c.id for c in compiled.cases] == ["s.yaml::fixed[iommu_mode=iommufd]"]


@pytest.mark.parametrize("why_every_mode", [
    "steps:\n  - open_iommu: {mode: iommufd}\n    as: i\n  - open_iommu: {}\n    as: j\n",
    "vars: {m: '{{ iommu_mode }}'}\nsteps:\n  - open_iommu: {mode: iommufd}\n    as: i\n",
])
def test_a_step_that_follows_the_case_mode_keeps_every_mode(why_every_mode: str) -> None:
    compiled = compile_text("name: follows\n" + why_every_mode)
    assert compiled.errors == []
    assert len(compiled.cases) == 5


def test_ids_are_stable_across_compilations() -> None:
    text = "name: s\nmatrix: {b: [2, 1], a: [x]}\nsteps:\n  - sleep: {duration: 1ms}\n"
    first = [c.id for c in compile_text(text).cases]
    assert first == [c.id for c in compile_text(text).cases]
    assert first == ["s.yaml::s[a=x,b=2]", "s.yaml::s[a=x,b=1]"]


def test_handles_defined_in_body_are_usable_in_teardown() -> None:
    compiled = compile_text("""
        name: td
        steps:
          - open_iommu: {}
            as: iommu
          - alloc_buffer: {size: 4KiB}
            as: buf
          - map_dma: {iommu: iommu, buffer: buf, iova: 0x1000}
            as: m
        teardown:
          - unmap_dma: {mapping: m}
    """)
    assert compiled.errors == []
    assert compiled.cases[0].teardown[0].teardown is True


def test_a_failing_step_still_defines_its_handle_so_errors_do_not_cascade() -> None:
    doc, _ = load_text(textwrap.dedent("""
        name: c
        steps:
          - alloc_buffer: {size: 2MB}
            as: buf
          - fill: {buffer: buf, pattern: zero}
    """), "c.yaml")
    compiled = compile_documents([doc])
    assert [e.message for e in compiled.errors] == [
        "`size`: bad size '2MB': unit 'MB' is not one of B, KiB, MiB, GiB, TiB (did you mean 2MiB?)"
    ]


def test_validate_reports_all_errors_of_all_files(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nsteps:\n  - sleep: {duration: 1x}\n  - slep: {}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("name: b\nstep: []\n")
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{tmp_path}/a.yaml:3:23: `duration`: bad duration '1x'")
    assert err[1] == f"{tmp_path}/a.yaml:4:5: unknown operation `slep` (did you mean `sleep`?)"
    assert err[2].startswith(f"{tmp_path}/sub/b.yml:1:1: `steps`") or "steps" in err[2]
    assert err[-1] == "4 error(s) in 2 file(s)" or err[-1].endswith("in 2 file(s)")


def test_list_prints_case_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("x.yaml").write_text("name: x\nmatrix: {n: [1, 2]}\nsteps:\n  - sleep: {duration: 1ms}\n")
    assert main(["list", "x.yaml"]) == 0
    assert capsys.readouterr().out.splitlines() == ["x.yaml::x[n=1]", "x.yaml::x[n=2]"]


def test_committed_schema_is_current() -> None:
    committed = (ROOT / "schemas" / "scenario.schema.json").read_text()
    assert committed == json_schema_text(), "run: vfio-scenario schema -o schemas/scenario.schema.json"


def test_schema_lists_every_operation_and_accepts_templates() -> None:
    schema = json.loads(json_schema_text())
    text = json.dumps(schema)
    from vfio_scenario.language.models import OPERATIONS

    for op in OPERATIONS:
        assert f'"{op}"' in text, op
    assert "jinja2 template" in text


def test_every_library_scenario_validates() -> None:
    compiled = compile_paths([str(ROOT / "scenarios")])
    assert [str(e) for e in compiled.errors] == []
    assert compiled.cases, "the library holds no case"


def test_library_uses_every_operation() -> None:
    from vfio_scenario.language.models import OPERATIONS

    compiled = compile_paths([str(ROOT / "scenarios")])
    used = {s.op for case in compiled.cases for s in (*case.steps, *case.teardown)}
    # provoke_crash crashes the kernel on purpose: the kernel watch's own tests use it
    # (tests/testbed/test_kernel_watch_debug.py), the library never does
    assert sorted(set(OPERATIONS) - used - {"provoke_crash"}) == []


def test_language_reference_tables_are_made_from_the_models() -> None:
    from vfio_scenario.language.models import OPERATIONS
    from vfio_scenario.language.reference import with_tables

    text = (ROOT / "docs" / "language.md").read_text()
    assert text == with_tables(text), \
        "run: python -m vfio_scenario.language.reference docs/language.md"
    assert [op for op in OPERATIONS if f"| `{op}` |" not in text] == []


def test_errno_aliases_compare_equal_in_the_kernels_spelling() -> None:
    from vfio_scenario.errors import VfioError

    compiled = compile_text("""
        name: alias
        steps:
          - sleep: {duration: 1ms}
            expect: [ENOTSUP, EWOULDBLOCK]
    """)
    assert compiled.cases[0].steps[0].common.expect == ("EOPNOTSUPP", "EAGAIN")
    assert VfioError(95, "X").errno_name == "EOPNOTSUPP"


# --- the driver in templates, the driver axis (issue 15) -----------------------------

DRIVER_TEXT = """
    name: d
    requires: {driver: any}
    vars:
      size: "{{ [driver.max_memcpy_size, 0x100000] | min }}"
    steps:
      - open_iommu: {}
        as: iommu
      - alloc_buffer: {size: "{{ 2 * size }}"}
        name: "{{ driver }} takes {{ driver.max_memcpy_count }}, {{ driver.features | join(',') }}"
"""


def test_without_devices_the_driver_axis_holds_every_registered_driver() -> None:
    from vfio_scenario.drivers.base import registered_drivers

    compiled = compile_text(DRIVER_TEXT)
    assert compiled.errors == []
    assert {c.params["driver"] for c in compiled.cases} == set(registered_drivers())
    falcon = next(c for c in compiled.cases if c.params["driver"] == "nv_falcon")
    assert falcon.id == "s.yaml::d[driver=nv_falcon,iommu_mode=vfio_type1_iommu]"
    assert falcon.steps[1].args.size == 512
    assert falcon.steps[1].common.name == "nv_falcon takes 1, NO_SEND_MSI"


def test_with_devices_the_axis_holds_their_drivers_and_their_limits() -> None:
    from vfio_scenario.language.devices import DeviceName, DriverFacts

    nvme = DriverFacts("nvme", 1 << 19, 1)
    devices = [DeviceName("0000:00:03.0", DriverFacts("edu", 4096, 1)),
               DeviceName("0000:00:04.0", DriverFacts("edu", 4096, 1)),
               DeviceName("0000:00:05.0"), DeviceName("0000:00:06.0", nvme)]
    doc, _ = load_text(textwrap.dedent(DRIVER_TEXT), "s.yaml")
    compiled = compile_documents([doc], devices)
    assert compiled.errors == []
    assert sorted({c.params["driver"] for c in compiled.cases}) == ["edu", "nvme"]
    on_nvme = next(c for c in compiled.cases if c.params["driver"] == "nvme")
    # the limit init reported (QEMU's MDTS), not the class's declared 1 MiB
    assert on_nvme.steps[1].args.size == 1 << 20  # type: ignore[attr-defined]


def test_devices_carry_their_driver_in_multi_device_cases() -> None:
    from vfio_scenario.language.devices import DeviceName, DriverFacts

    compiled = compile_documents([load_text(textwrap.dedent("""
        name: two
        requires: {devices: 2}
        steps:
          - sleep: {duration: 1ms}
            name: "{{ devices[1] }} {{ devices[1].driver.name }} {{ devices[1].driver.max_memcpy_size }}"
    """), "s.yaml")[0]], [DeviceName("0000:00:03.0", DriverFacts("edu", 4096, 1)),
                          DeviceName("0000:00:06.0", DriverFacts("nvme", 1 << 19, 1))])
    assert compiled.errors == []
    assert compiled.cases[0].steps[0].common.name == "0000:00:06.0 nvme 524288"
    assert compiled.cases[0].names_devices


@pytest.mark.parametrize(("expr", "message"), [
    ("driver.max_size", ("a driver has no attribute `max_size` (it has name, max_memcpy_size, "
                        "max_memcpy_count, features)")),
    ("device.drivr", "a device has no attribute `drivr` (it has `driver`)"),
])
def test_a_driver_attribute_that_does_not_exist_is_a_located_error(expr: str,
                                                                   message: str) -> None:
    compiled = compile_text(f"""
        name: d
        requires: {{driver: edu}}
        steps:
          - sleep: {{duration: 1ms}}
            name: "{{{{ {expr} }}}}"
    """)
    assert [str(e) for e in compiled.errors] == [f"s.yaml:6:11: {message}"]


def test_driver_is_undefined_in_a_scenario_without_one() -> None:
    compiled = compile_text("""
        name: d
        steps:
          - sleep: {duration: 1ms}
            name: "{{ driver.name }}"
    """)
    assert [e.message for e in compiled.errors] == [
        ("undefined template variable: 'driver' is undefined (only a scenario that requires "
        "a driver has one: `requires: {driver: any}` or a driver's name)")]


def test_a_named_driver_gives_its_declared_limits_without_devices() -> None:
    compiled = compile_text("""
        name: d
        requires: {driver: nv_falcon}
        steps:
          - sleep: {duration: 1ms}
            name: "max {{ driver.max_memcpy_size }}"
    """)
    assert compiled.errors == []
    assert [c.id for c in compiled.cases] == ["s.yaml::d"]
    assert compiled.cases[0].steps[0].common.name == "max 256"
    assert compiled.cases[0].driver == "nv_falcon"


def test_list_selects_by_driver(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--driver", "nv_falcon", str(ROOT / "scenarios" / "driver")]) == 0
    ids = capsys.readouterr().out.split()
    assert ids and all("driver=nv_falcon," in i for i in ids)
    assert main(["list", "--driver", "nope", str(ROOT / "scenarios" / "driver")]) == 5


def test_no_driver_any_scenario_names_edus_copy_size() -> None:
    # issue 15: a `driver: any` case copies what its driver takes, never edu's 4 KiB
    import re

    for path in sorted((ROOT / "scenarios").rglob("*.yaml")):
        doc, errors = load_text(path.read_text(), str(path))
        assert errors == []
        scenarios = doc.data if isinstance(doc.data, list) else [doc.data]
        for scenario in scenarios:
            if scenario.get("requires", {}).get("driver") != "any":
                continue
            text = json.dumps(scenario)
            assert not re.search(r"\b(4096|4 ?KiB|0x1000)\b", text), \
                f"{path}: {scenario.get('name')} names 4 KiB"


def test_the_readme_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## A scenario")[1].split("```yaml\n")[1].split("```")[0]
    compiled = compile_text(example)
    assert compiled.errors == []
    ids = [c.id for c in compiled.cases]
    assert "s.yaml::driver-memcpy[driver=edu,iommu_mode=iommufd,size=max]" in ids
    edu = next(c for c in compiled.cases if c.id == ids[ids.index(
        "s.yaml::driver-memcpy[driver=edu,iommu_mode=iommufd,size=max]")])
    assert edu.steps[6].args.size == 4096
