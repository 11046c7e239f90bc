"""The malformed corpus: every bad file gets one located message, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from vfio_scenario.cli import main

CORPUS = Path(__file__).parent.parent / "data" / "malformed"

# file → (line, column, part of the message) of the error `validate` must print first.
EXPECTED = {
    "alias-bomb.yaml": (1, 56, '(an alias bomb?); refusing it'),
    "args-not-mapping.yaml": (3, 12, 'the arguments of `sleep` are a mapping, got a list'),
    "as-without-handle.yaml": (4, 5, '`sleep` makes no handle, so `as:` names nothing'),
    "bad-bdf.yaml": (3, 22, "`bdf`: '00:3' is not a PCI address like 0000:00:03.0"),
    "bad-duration.yaml": (2, 10, "`timeout`: bad duration '5 sec': use a number with us, ms, s"),
    "bad-expect.yaml": (4, 13, "`expect`: 'EINVL' is not an errno name or SIGBUS/SIGSEGV (di"),
    "bad-hex.yaml": (7, 48, "`iova`: expected an integer (decimal or 0x hex), got '0xZZ'"),
    "bad-regex.yaml": (3, 29, "`pattern`: bad regular expression 'DMAR: [fault': unterminat"),
    "bad-size-unit.yaml": (4, 13, "`size`: bad size '2MB': unit 'MB' is not one of B, KiB, MiB,"),
    "bad-vf-token.yaml": (5, 43, "`vf_token`: 'not-a-uuid' is not a UUID"),
    "bad-width.yaml": (7, 47, '`width`: Input should be 1, 2, 4 or 8, got 3'),
    "driver-attribute-unknown.yaml": (4, 26, "a driver has no attribute `max_size` (it has name, m"),
    "driver-without-requires.yaml": (3, 26, "undefined template variable: 'driver' is undefined (o"),
    "duplicate-key.yaml": (3, 1, "duplicate key 'name' (first defined at line 1)"),
    "duplicate-scenario-name.yaml": (4, 9, "two scenarios named 'same' in one file (first at line 1)"),
    "handle-undefined.yaml": (3, 24, 'handle `dev` is not defined by an earlier step'),
    "handle-wrong-kind.yaml": (5, 24, 'handle `buf` is a buffer, but `device` needs a device'),
    "list-without-names.yaml": (1, 3, 'scenarios in a list need a `name`'),
    "map-two-sources.yaml": (11, 14, 'give only one of `buffer` or `mmio` or `dmabuf` or `address`, not buffer '),
    "mask-without-equals.yaml": (7, 18, '`mask` needs `equals` to compare with'),
    "matrix-all-excluded.yaml": (3, 3, 'matrix expands to no case (every combination is excluded)'),
    "matrix-empty-axis.yaml": (3, 9, 'matrix axis `size` has no values'),
    "missing-required.yaml": (3, 19, 'missing required argument `size`'),
    "negative-size.yaml": (3, 26, '`size`: a size cannot be negative: -4096'),
    "no-operation.yaml": (3, 5, 'step has no operation key (one of: access, access_pages, '),
    "no-steps.yaml": (2, 8, '`steps`: List should have at least 1 item after validation, '),
    "repeat-zero.yaml": (4, 13, '`repeat`: Input should be greater than or equal to 1'),
    "scalar-document.yaml": (1, 1, 'a scenario file holds a mapping (one scenario) or a list of '),
    "step-not-mapping.yaml": (3, 5, 'a step is a mapping with one operation key, e.g. `- sleep: {'),
    "syntax-unclosed-flow.yaml": (4, 10, "YAML syntax error: did not find expected ',' or '}' (while p"),
    "tab-indent.yaml": (3, 1, 'YAML syntax error: found character that cannot start any tok'),
    "template-file-access.yaml": (3, 11, 'templates cannot read files: {% include %}, {% import %} and'),
    "template-syntax.yaml": (5, 26, "template error: unexpected 'end of template'"),
    "template-python-internals.yaml": (4, 17, "template refused by the sandbox: access to attribute '__clas"),
    "two-operations.yaml": (4, 5, 'a step has exactly one operation; found sleep, assert_not_ta'),
    "undefined-variable.yaml": (3, 23, "undefined template variable: 'pause' is undefined"),
    "unknown-argument.yaml": (5, 42, 'unknown argument `sise` (did you mean `size`?)'),
    "unknown-exclude-axis.yaml": (5, 8, 'exclude names unknown axis `sise` (did you mean `size`?)'),
    "unknown-fault-access.yaml": (7, 67, "`access`: Input should be 'read' or 'write', got 'execu"),
    "unknown-feature.yaml": (3, 23, "got 'dmabuf_revoke' (did you mean `dma_buf_revoke`?)"),
    "unknown-iommu-mode.yaml": (3, 37, "got 'iommufdd' (did you mean `iommufd`?)"),
    "unknown-operation.yaml": (5, 5, 'unknown operation `map_dam` (did you mean `map_dma`?)'),
    "unknown-scenario-key.yaml": (2, 1, 'unknown scenario key `stepz` (did you mean `steps`?)'),
    "unmap-no-form.yaml": (5, 16, 'give `mapping`, or `iova` and `size`, or `all: true`'),
    "value-too-wide.yaml": (7, 19, '`value` 0x10006 does not fit in a 2-byte access (0 to 0xffff)'),
    "wrong-type-timeout.yaml": (2, 10, '`timeout`: bad duration [1, 2]: use a number with us, ms, s,'),
}


def test_corpus_has_every_file_listed() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_reports_line_and_column(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    line, col, message = EXPECTED[name]
    path = CORPUS / name
    status = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:{line}:{col}: "), first
    assert message in first
    assert "Traceback" not in err


VALID = Path(__file__).parent.parent / "data" / "valid"


@pytest.mark.parametrize("name", sorted(p.name for p in VALID.glob("*.yaml")))
def test_valid_corpus_file_validates(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["validate", str(VALID / name)])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.endswith("case(s): ok\n")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfio_scenario", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, check=False)


def test_whole_corpus_in_one_run_reports_every_file_and_exits_2() -> None:
    proc = _cli("validate", str(CORPUS))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for name, (line, col, _) in EXPECTED.items():
        assert f"{CORPUS / name}:{line}:{col}: " in proc.stderr, name
    assert proc.stderr.rstrip().endswith(f"in {len(EXPECTED)} file(s)")


def test_second_scenario_of_a_name_is_still_checked(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("- name: same\n  steps:\n    - sleep: {duration: 1s}\n"
                     "- name: same\n  steps:\n    - sleep: {duration: 2 parsecs}\n")
    proc = _cli("validate", str(twice))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[:2] == [
        f"{twice}:4:9: two scenarios named 'same' in one file (first at line 1)",
        (f"{twice}:6:25: `duration`: bad duration '2 parsecs': use a number with us, ms, s, m or h"
         " (e.g. 500ms, 5s)"),
    ]


def test_steps_are_checked_when_the_header_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "header.yaml"
    bad.write_text("name: header\ntimeout: soon\nsteps:\n  - sleep: {duration: 1 parsec}\n")
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2
    assert [line.split(": ")[0] for line in proc.stderr.splitlines()[:2]] == [
        f"{bad}:2:10", f"{bad}:4:23"]
    assert "bad duration 'soon'" in proc.stderr and "bad duration '1 parsec'" in proc.stderr


def test_file_that_is_not_utf8_points_at_the_bad_byte(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\nsteps:\n  - sleep: {duration: 1s}\n")
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{bad}:1:10: file is not UTF-8: byte 0xe9")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    proc = _cli("validate", str(empty))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{empty}:1:1: empty file: no scenario in it")


def test_ten_megabyte_file_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as f:
        f.write("name: big\nsteps:\n")
        line = "  - sleep: {duration: 1ms}\n"
        f.write(line * (10_000_000 // len(line)))
    proc = _cli("validate", str(big))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{big}:1:1: file is 10.0 MB; scenario files are limited to 1 MiB")


def test_directory_without_scenarios(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a scenario")
    for command, status in (("list", 5), ("validate", 2)):
        proc = _cli(command, str(tmp_path))
        assert proc.returncode == status, command
        assert f"no scenario files (*.yaml, *.yml) found in {tmp_path}" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_missing_path_is_located(tmp_path: Path) -> None:
    proc = _cli("validate", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{tmp_path / 'absent.yaml'}: no such file or directory")


def test_schema_to_an_unwritable_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    proc = _cli("schema", "-o", str(tmp_path / "file" / "s.json"))
    assert proc.returncode == 2
    assert proc.stderr == (f"vfio-scenario: -o {tmp_path / 'file' / 's.json'}: cannot create "
                           f"{tmp_path / 'file'}: a file is in the way\n")


def test_an_unforeseen_os_error_is_a_message_and_exit_3(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from vfio_scenario import commands

    def full_disk(args: object) -> int:
        raise OSError(28, "No space left on device", "/reports/junit.xml")

    monkeypatch.setattr(commands, "cmd_validate", full_disk)
    assert main(["validate", "x.yaml"]) == 3
    assert capsys.readouterr().err == \
        "vfio-scenario: /reports/junit.xml: No space left on device\n"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--timeout-multiplier", "-1", "'-1' is not a positive number"),
    ("--timeout-multiplier", "0", "'0' is not a positive number"),
    ("--timeout-multiplier", "nan", "'nan' is not a positive number"),
    ("--device", "00:zz", "'00:zz' is not a PCI address like 0000:00:03.0"),
])
def test_run_options_are_checked_before_anything_runs(option: str, value: str,
                                                      message: str) -> None:
    proc = _cli("run", "--testbed", "never", f"{option}={value}", str(CORPUS))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"vfio-scenario run: error: argument {option}: {message}"
