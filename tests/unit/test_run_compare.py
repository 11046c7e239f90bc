"""`run --baseline-kernel`: report paths and the usage errors found before any VM boots."""

from __future__ import annotations

from pathlib import Path

import pytest
from vfio_scenario.cli import main
from vfio_scenario.errors import UsageError
from vfio_scenario.run.compare import check_kernels, suffixed


def test_reports_get_the_suffix_before_their_extension() -> None:
    assert suffixed("reports/junit.xml", "base") == "reports/junit-base.xml"
    assert suffixed("out/report.json", "diff") == "out/report-diff.json"
    assert suffixed("noext", "patched") == "noext-patched"


def test_two_paths_of_one_file_are_the_same_kernel(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"\0" * 1024)
    link = tmp_path / "link"
    link.symlink_to(image)
    with pytest.raises(UsageError, match="are the same file"):
        check_kernels(str(link), str(image))
    with pytest.raises(UsageError, match="are both"):
        check_kernels("default", "default")
    with pytest.raises(UsageError, match="no such file"):
        check_kernels(str(tmp_path / "missing"), "debian")
    other = tmp_path / "other"
    other.write_bytes(b"\0" * 1024)
    check_kernels(str(other), str(image))  # two files: fine


@pytest.mark.parametrize(("extra", "message"), [
    (["--device", "0000:00:03.0"], "cannot be used with --device"),
    (["--testbed", "never"], "cannot be used with --testbed never"),
    (["--format", "ktap"], "KTAP on stdout holds one run"),
])
def test_options_that_cannot_compare_are_usage_errors(
        tmp_path: Path, extra: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    scen = tmp_path / "s.yaml"
    scen.write_text("name: one\nsteps:\n  - sleep: {duration: 1ms}\n")
    assert main(["run", str(scen), "--kernel", "debian", "--baseline-kernel", "default",
                 "--junit-xml", str(tmp_path / "j.xml"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("j*.xml"))
