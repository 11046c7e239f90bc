"""`run --kernel debian --baseline-kernel default`: two testbed VMs, two sets of reports,
the comparison; nothing is built that the testbed does not have already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from vfio_scenario.testbed.assets import build_own_kernel

from tests.helpers.reports import assert_valid_junit

pytestmark = pytest.mark.testbed

REPO = Path(__file__).resolve().parents[2]
IOMMUFD = ("scenarios/iommufd/cdev-attach.yaml::cdev-bind-attach[iommu_mode=iommufd]",
           "scenarios/host/kernel-health.yaml::kernel-health[iommu_mode=iommufd]",
           "scenarios/host/kernel-health.yaml::kernel-health[iommu_mode=iommufd_compat_type1]",
           "scenarios/host/kernel-health.yaml::kernel-health[iommu_mode=iommufd_compat_type1v2]")
TYPE1 = "scenarios/host/kernel-health.yaml::kernel-health[iommu_mode=vfio_type1_iommu]"


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfio_scenario", "run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_debian_against_default_shows_the_iommufd_cases_as_new_skips(tmp_path: Path) -> None:
    known = tmp_path / "known.yaml"
    # applies to Debian's kernels only (their uname -r holds "deb"): xpass there, nothing
    # on the default kernel
    known.write_text(f'known_issues:\n  - case: "{TYPE1}"\n    reason: checked on Debian\n'
                     '    kernels: ["*deb*"]\n  - case: "scenarios/none/*"\n    reason: stale\n')
    out = tmp_path / "reports"
    done = _run("--kernel", "debian", "--baseline-kernel", "default", "--known-issues",
                str(known), "--junit-xml", str(out / "junit.xml"), "--json",
                str(out / "report.json"), "--html", str(out / "report.html"),
                "scenarios/iommufd/cdev-attach.yaml", "scenarios/host")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for cid in IOMMUFD:
        assert any(x.startswith("new skip") and f"  {cid}  pass → skip" in x for x in lines), cid
    assert lines[-1].startswith("verdict: no regression: 4 new skips")
    assert "known-issue patterns that match no selected case: " in done.stderr
    assert f"{known}:5:5: scenarios/none/*" in done.stderr

    for side in ("base", "patched"):
        assert_valid_junit(out / f"junit-{side}.xml")
        assert (out / f"journal-{side}.jsonl").exists()
    base = json.loads((out / "report-base.json").read_text())
    patched = json.loads((out / "report-patched.json").read_text())
    assert base["properties"]["testbed_kernel"].endswith("-vfio-scenario")
    assert "deb" in patched["properties"]["testbed_kernel"]
    assert base["counts"] == {"pass": 6, "fail": 0, "skip": 0, "error": 0}
    assert patched["counts"] == {"pass": 1, "fail": 0, "skip": 4, "error": 0, "xfail": 0,
                                 "xpass": 1}
    by_id = {c["case_id"]: c for c in patched["cases"]}
    for cid in IOMMUFD:
        assert by_id[cid]["outcome"] == "skip"
        assert by_id[cid]["message"].endswith("unavailable: /dev/iommu does not exist")
    assert by_id[TYPE1]["known_issue"]["reason"] == "checked on Debian"
    assert "known_issue" not in {c["case_id"]: c for c in base["cases"]}[TYPE1]

    comparison = json.loads((out / "report-diff.json").read_text())
    assert comparison["counts"]["new skip"] == 4
    assert comparison["counts"]["regression"] == 0 and comparison["exit_status"] == 0
    assert comparison["verdict"] == lines[-1]
    page = (out / "report-patched.html").read_text()
    assert 'id="comparison"' in page and "XPASS" in page
    assert not (out / "report-base.html").read_text().count('id="comparison"')


def test_two_kernels_that_are_the_same_file_are_a_usage_error() -> None:
    image = build_own_kernel().image  # cached: nothing is built, nothing boots
    done = _run("--kernel", str(image), "--baseline-kernel", "default", "scenarios/host",
                timeout=120)
    assert done.returncode == 2
    assert f"--kernel {image} and --baseline-kernel default are the same file" in done.stderr
    same = _run("--kernel", "debian", "--baseline-kernel", "debian", "scenarios/host",
                timeout=120)
    assert same.returncode == 2
    assert "--kernel and --baseline-kernel are both 'debian'" in same.stderr
