"""`--kernel coverage` and `run --coverage DIR` for real: the gcov kernel profiles the
folders it says and no others, and a run in it writes the lcov tracefile, genhtml's HTML
(opened in headless Chromium) and the per-folder summary of the kernel's own counters."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.testbed import assets

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_kconfig_prints_the_coverage_fragment_and_its_make_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["testbed", "kconfig", "--kernel", "coverage"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(assets.FRAGMENT.read_text() + "\n" +
                          assets.COVERAGE_FRAGMENT.read_text())
    assert f"# 'GCOV_PROFILE={assets.gcov_profile_value()}'" in out
    wanted, off = assets.fragment_options(assets.fragment_text("coverage"))
    assert wanted["CONFIG_GCOV_KERNEL"] == "y" and "CONFIG_GCOV_PROFILE_ALL" in off


@pytest.mark.parametrize(("obj", "stem", "profiled"), [
    ("drivers/vfio", "vfio_main", "y"),
    ("drivers/vfio/pci", "vfio_pci_core", "y"),
    ("drivers/iommu", "iommu", "y"),
    ("drivers/iommu/iommufd", "ioas", "y"),
    ("drivers/iommu/intel", "iommu", "y"),
    ("drivers/pci", "iov", "y"),
    ("drivers/pci", "msi", "n"),
    ("drivers/iommu/amd", "iommu", "n"),
    ("drivers/iommu/generic_pt", "iommu_pt", "n"),
    ("init", "main", "n"),
    ("arch/x86/boot/compressed", "misc", "n"),
])
def test_the_gcov_profile_variable_chooses_the_folders_in_make(
        tmp_path: Path, obj: str, stem: str, profiled: str) -> None:
    """The value as make evaluates it in a sub-make whose Makefile sets its own
    GCOV_PROFILE (the command line wins), with kbuild's target-stem definition."""
    (tmp_path / "Makefile").write_text(
        "all:\n\t@$(MAKE) -s -f sub.mk obj=$(OBJ) OBJ_FILE=$(OBJ)/$(STEM).o\n")
    (tmp_path / "sub.mk").write_text(
        "GCOV_PROFILE := n\n"
        "target-stem = $(basename $(patsubst $(obj)/%,%,$@))\n"
        "all: $(OBJ_FILE)\n"
        "$(OBJ_FILE):\n\t@echo '$(GCOV_PROFILE)'\n")
    proc = subprocess.run(["make", "-s", *assets.variant_make_vars("coverage"), f"OBJ={obj}",
                           f"STEM={stem}"], cwd=tmp_path, capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == profiled


@pytest.mark.testbed
@pytest.mark.kernel("coverage")
def test_the_coverage_kernel_profiles_those_folders_only() -> None:
    kernel = assets.build_own_kernel(variant="coverage")
    meta = json.loads(kernel.image.with_name("kernel.json").read_text())
    gcno = Path(meta["gcov"]["gcno"])
    found = sorted(str(p.relative_to(gcno)) for p in gcno.rglob("*.gcno"))
    folders = {f.rsplit("/", 1)[0] for f in found}
    assert {"drivers/vfio", "drivers/vfio/pci", "drivers/iommu", "drivers/iommu/iommufd",
            "drivers/iommu/intel"} <= folders
    assert folders - {"drivers/vfio", "drivers/vfio/pci", "drivers/iommu",
                      "drivers/iommu/iommufd", "drivers/iommu/intel", "drivers/pci"} == set()
    assert [f for f in found if f.startswith("drivers/pci/")] == ["drivers/pci/iov.gcno"]
    assert "drivers/vfio/vfio_main.gcno" in found
    assert "CONFIG_GCOV_KERNEL=y" in kernel.image.with_name("config").read_text()


def _browse(path: Path, profile: Path) -> str:
    assert CHROMIUM is not None, "chromium is not installed (scripts/install-host-packages)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.testbed
@pytest.mark.kernel("coverage")
def test_run_coverage_writes_tracefile_html_and_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = tmp_path / "cov"
    status = main(["run", "--testbed", "always", "--kernel", "coverage", "--coverage", str(out),
                   "--json", str(tmp_path / "run.json"), "--junit-xml", str(tmp_path / "j.xml"),
                   "--iommu-mode", "iommufd", "scenarios/device/reset.yaml"])
    console = capsys.readouterr().out
    assert status == 0, console
    info = (out / "coverage.info").read_text()
    tree = str(assets.linux_source_dir())
    # the sources are the tree the kernel was built from
    assert f"SF:{tree}/drivers/vfio/pci/vfio_pci_core.c" in info
    doc = json.loads((tmp_path / "run.json").read_text())
    files = doc["coverage"]["files"]
    assert doc["coverage"]["source_tree"] == tree
    # a reset is VFIO_DEVICE_RESET: vfio-pci's ioctl handler and the reset path ran
    assert files["drivers/vfio/pci/vfio_pci_core.c"]["lines_hit"] > 0
    assert files["drivers/vfio/vfio_main.c"]["lines_hit"] > 0
    assert files["drivers/iommu/iommufd/device.c"]["lines_hit"] > 0  # the cdev's bind
    assert all(not p.startswith("include/") for p in files)
    assert re.search(r"^\s+\d+\.\d%\s+\d+/\d+\s+drivers/vfio/pci/$", console, re.MULTILINE), console
    assert doc["coverage"]["folders"]["drivers/vfio/pci"]["lines_found"] > 1000
    page = _browse(out / "html" / "index.html", tmp_path / "profile")
    assert "LCOV - code coverage report" in page
    assert "drivers/vfio/pci" in page


@pytest.mark.testbed
@pytest.mark.kernel("coverage")
def test_coverage_per_case_gives_each_scenario_file_its_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = tmp_path / "cov"
    status = main(["run", "--testbed", "always", "--kernel", "coverage", "--coverage", str(out),
                   "--coverage-per-case", "--json", str(tmp_path / "run.json"),
                   "--junit-xml", str(tmp_path / "j.xml"), "--iommu-mode", "iommufd",
                   "scenarios/device/reset.yaml", "scenarios/device/config-space.yaml"])
    assert status == 0, capsys.readouterr().out
    doc = json.loads((tmp_path / "run.json").read_text())
    per_file = doc["coverage"]["scenario_files"]
    assert set(per_file) == {"scenarios/device/reset.yaml", "scenarios/device/config-space.yaml"}
    for entry in per_file.values():
        assert entry["files"]["drivers/vfio/vfio_main.c"]["lines_hit"] > 0
    # only the reset cases reach vfio-pci's reset path
    reset_hit = per_file["scenarios/device/reset.yaml"]["total"]["lines_hit"]
    assert reset_hit != per_file["scenarios/device/config-space.yaml"]["total"]["lines_hit"]
    # a tracefile per case that reached profiled code: every case that ran steps did
    tracefiles = sorted((out / "cases").glob("*.info"))
    ran = [c for c in doc["cases"] if c["steps"]]
    assert ran and len(ran) <= len(tracefiles) <= len(doc["cases"])
    assert (out / "html" / "index.html").is_file()
    # genhtml's per-test details: a folder's detail page names the cases (lcov test names)
    # that ran its files, and descriptions.html gives each name its case id
    detail = (out / "html/drivers/vfio/pci/index-detail.html").read_text()
    names = [t.stem for t in tracefiles]
    assert any(n in detail for n in names)
    descriptions = (out / "html/descriptions.html").read_text()
    assert "scenarios/device/reset.yaml::reset[iommu_mode=iommufd]" in descriptions
