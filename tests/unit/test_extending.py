"""docs/extending.md followed to the letter: its examples are read from the page and run.

An operation: the page's model and function make an operation. A scenario driver: the page's driver file and entry point, installed in a folder of
this test (a package and its dist-info, no pyproject of ours touched), register the
driver, which is untested by itself and serves the `driver` axis. A report format:
every report file a run writes is offered by `run` and `report merge` alike. A testbed
device: the page's example lines are those of engine/testbed/qemu.py.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from vfio_scenario import cli
from vfio_scenario.drivers import base
from vfio_scenario.drivers.base import Status, driver_for, registered_drivers
from vfio_scenario.errors import VfioError

from tests.models.pci import ModelDevice

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "extending.md"


def section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_an_operation_is_the_pages_model_and_function(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's two blocks, as they stand, with the imports their files have, make an
    operation the compiler checks and the interpreter runs."""
    import importlib

    from vfio_scenario.language.compile import compile_documents
    from vfio_scenario.language.loader import load_text
    from vfio_scenario.language.models import OPERATIONS
    from vfio_scenario.run.interpreter import RunOptions, run_case
    from vfio_scenario.run.ops import operations, registry_problems

    from tests.helpers.toy_ops import scratch_operations

    model, function = blocks(section("An operation"), "python")
    assert model.startswith("# engine/language/models.py\n")
    assert function.startswith("# engine/run/ops/host.py\n")
    (tmp_path / "extending_example.py").write_text(
        "from vfio_scenario.language.cases import Step\n"
        "from vfio_scenario.language.models import Int, Op\n"
        "from vfio_scenario.run.interpreter import CheckFailed, Runtime\n"
        "from vfio_scenario.run.ops import op\n\n" + model + "\n" + function)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "extending_example", raising=False)

    def run(step: str) -> tuple[str, str]:
        doc, errors = load_text(f"name: even\nsteps:\n  - {step}\n", "even.yaml")
        assert errors == []
        compiled = compile_documents([doc])
        if compiled.errors:
            return "error", str(compiled.errors[0])
        result = run_case(compiled.cases[0], [], operations(), RunOptions(kernel_watch=False))
        return result.outcome.value, result.message

    with scratch_operations():
        importlib.import_module("extending_example")
        assert registry_problems() == []
        assert run("expect_even: {value: 4}") == ("pass", "")
        assert run("expect_even: {value: 3}") == (
            "fail", "step 1 `expect_even` (even.yaml:3): 3 is odd")
        outcome, message = run("expect_even: {valu: 4}")
        assert outcome == "error" and message.startswith("even.yaml:3:")
    assert "expect_even" not in OPERATIONS


@pytest.fixture
def toy_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[base.Driver]:
    """The page's driver installed as a third party would: its one file and an entry
    point in the package's metadata."""
    page = section("A scenario driver")
    (source,) = blocks(page, "python")
    (project,) = blocks(page, "toml")
    first = source.splitlines()[0]
    assert first.startswith("# ") and first.endswith(".py"), "the block names its file"
    path = tmp_path / first[2:]
    path.parent.mkdir(parents=True)
    (path.parent / "__init__.py").write_text("")
    path.write_text(source)
    group = tomllib.loads(project)["project"]["entry-points"]["vfio_scenario.drivers"]
    dist = tmp_path / "mypkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vfio_scenario.drivers]\n" + "".join(f"{k} = {v}\n" for k, v in group.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_registry", None)  # scanned again, with mypkg's entry point
    (name,) = group
    return registered_drivers()[name]


def test_a_third_party_driver_is_one_file_and_an_entry_point(
        toy_driver: type[base.Driver]) -> None:
    assert toy_driver.__module__ == "mypkg.toy" and toy_driver.name == "toy"
    assert set(registered_drivers()) == {"dsa", "edu", "igb", "ioat", "nv_falcon", "nvme",
                                         "toy"}
    vendor, device = toy_driver.ids[0]
    assert device is not None
    assert driver_for(ModelDevice(vendor, device, 0xFF0000, 1)) is toy_driver


def test_a_driver_without_a_test_of_its_own_is_untested(toy_driver: type[base.Driver]) -> None:
    assert toy_driver.proven() is Status.UNTESTED


def test_the_toy_driver_makes_no_copies_it_does_not_implement(
        toy_driver: type[base.Driver]) -> None:
    vendor, device = toy_driver.ids[0]
    assert device is not None
    driver = toy_driver(ModelDevice(vendor, device, 0xFF0000, 1))
    driver.init()
    verbs: list[Callable[[], None]] = [lambda: driver.memcpy_start(0x1000, 0x2000, 64),
                                       driver.memcpy_wait, driver.send_msi]
    for verb in verbs:
        with pytest.raises(VfioError) as exc:
            verb()
        assert exc.value.errno == errno.EOPNOTSUPP


def test_the_driver_axis_holds_the_new_driver(
        toy_driver: type[base.Driver], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "any.yaml"
    scenario.write_text("name: any\nrequires: {driver: any}\nsteps:\n"
                        "  - sleep: {duration: 1ms}\n")
    assert cli.main(["list", str(scenario), "--driver", "toy"]) == 0
    assert capsys.readouterr().out.split() == [f"{scenario}::any[driver=toy]"]


def test_the_testbed_device_example_is_the_testbed_code() -> None:
    (example,) = blocks(section("A testbed device"), "python")
    source = (ROOT / "engine" / "testbed" / "qemu.py").read_text()
    lines = [line for line in example.splitlines() if line.strip() not in ("", "...")]
    assert lines and [line for line in lines if line not in source.splitlines()] == []


def _options(parser: argparse.ArgumentParser, *path: str) -> set[str]:
    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {o for a in parser._actions for o in a.option_strings}


def test_every_report_file_of_a_run_is_offered_by_run_and_report_merge() -> None:
    from vfio_scenario.report.sink import writers

    parser = cli.build_parser()
    # writers() takes one path per format, in the order of ReportSink's options
    formats = {"--junit-xml": ("x.xml", None, None), "--json": (None, "x.json", None),
               "--html": (None, None, "x.html")}
    for option, paths in formats.items():
        assert len(writers(*paths)) == 1
        assert option in _options(parser, "run")
        assert option in _options(parser, "report", "merge")
    assert len(writers("a", "b", "c")) == len(formats)
