"""IOMMU fault records: QEMU's vtd_dmar_fault trace lines and intel-iommu's kernel log lines,
and what expect_iommu_fault / expect_no_iommu_fault say on each source.

The records below are copied from a testbed run (QEMU 10.0.2, guest kernel 7.2); that the
operations find real faults is tested in the testbed (tests/testbed/test_iommu_faults.py).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.results import Outcome
from vfio_scenario.run import faultlog
from vfio_scenario.run.faultlog import Fault, FaultFilter, QemuFaultLog
from vfio_scenario.run.interpreter import Operation, Runtime, run_case
from vfio_scenario.run.ops import host
from vfio_scenario.uapi.kmsg import KernelLog

from tests.helpers.scenarios import compile_text

QEMU_LINES = """\
vtd_dmar_fault sid 0x18 fault 6 addr 0x7000000 write 0
vtd_dmar_fault sid 0x18 fault 6 addr 0x7000004 write 0
vtd_dmar_fault sid 0x18 fault 5 addr 0x800000 write 1
"""
KERNEL_LINES = [
    "DMAR: DRHD: handling fault status reg 2",
    ("DMAR: [DMA Read NO_PASID] Request device [0000:00:03.0] fault addr 0x7000000 "
     "[fault reason 0x06] PTE Read access is not set"),
    "DMAR: Dump dmar0 table entries for IOVA 0x7000000",
    ("DMAR: [DMA Write NO_PASID] Request device [0000:00:04.0] fault addr 0x800000 "
     "[fault reason 0x05] PTE Write access is not set"),
]
SUPPRESSED = "dmar_fault: 12 callbacks suppressed"


def test_qemu_record_gives_device_page_access_and_reason() -> None:
    assert faultlog.parse_qemu_record("vtd_dmar_fault sid 0x18 fault 6 addr 0x7000000 write 0") \
        == Fault("0000:00:03.0", 0x7000000, "read", 6)
    # a VF behind a root port (bus 1, device 0x10, function 2), the timestamped form
    assert faultlog.parse_qemu_record(
        "4242@1796000000.123456:vtd_dmar_fault sid 0x182 fault 5 addr 0xfff000 write 1") \
        == Fault("0000:01:10.2", 0xFFF000, "write", 5)
    assert faultlog.parse_qemu_record("vtd_fault_disabled ") is None
    assert faultlog.parse_qemu_record("vtd_dmar_fault sid 0x18 fault 6 addr 0x70") is None


def test_kernel_lines_with_and_without_segment_and_pasid() -> None:
    assert faultlog.parse_kernel_line(KERNEL_LINES[1]) == Fault("0000:00:03.0", 0x7000000,
                                                                "read", 6)
    assert faultlog.parse_kernel_line(
        "DMAR: [DMA Write PASID 0x2] Request device [0001:3a:00.1] fault addr 0x1000 "
        "[fault reason 0x05] PTE Write access is not set") == Fault("0001:3a:00.1", 0x1000,
                                                                    "write", 5)
    # kernels before 6.x's segment: [bb:dd.f]
    assert faultlog.parse_kernel_line(
        "DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0x7000000 "
        "[fault reason 0x06] PTE Read access is not set") == Fault("0000:00:03.0", 0x7000000,
                                                                   "read", 6)
    assert [faultlog.parse_kernel_line(line) for line in (KERNEL_LINES[0], KERNEL_LINES[2])] \
        == [None, None]


def test_suppressed_count_reads_the_rate_limits_own_message() -> None:
    assert faultlog.suppressed_count([*KERNEL_LINES, SUPPRESSED,
                                      "dmar_fault: 3 callbacks suppressed"]) == 15
    assert faultlog.suppressed_count(["some_other: 7 callbacks suppressed"]) == 0


def test_filter_compares_device_access_and_4k_page() -> None:
    fault = Fault("0000:00:03.0", 0x7000FFC, "read", 6)
    assert FaultFilter("0000:00:03.0", 0x7000000, "read")(fault)
    assert FaultFilter("0000:00:03.0")(fault)
    assert not FaultFilter("0000:00:03.0", 0x7001000)(fault)
    assert not FaultFilter("0000:00:03.0", access="write")(fault)
    assert not FaultFilter("0000:00:04.0")(fault)


def test_summary_counts_records_per_page() -> None:
    faults = [Fault("0000:00:03.0", 0x7000000 + 4 * i, "read", 6) for i in range(1024)]
    assert faultlog.summary(faults) == ("read fault by 0000:00:03.0 at 0x7000000 "
                                        "(reason 0x06: PTE read access not set) x1024")
    assert faultlog.summary([]) == "none"


def test_qemu_log_sees_only_records_after_it_opened_and_joins_split_lines(tmp_path: Path) -> None:
    path = tmp_path / faultlog.QEMU_FAULTS_FILE
    path.write_text(QEMU_LINES)
    log = QemuFaultLog(str(path))
    assert log.read() == []
    with path.open("a") as f:
        f.write("vtd_dmar_fault sid 0x20 fault 6 ad")
    assert log.read() == []
    with path.open("a") as f:
        f.write("dr 0x9000 write 0\n")
    assert log.read() == [Fault("0000:00:04.0", 0x9000, "read", 6)]


def test_no_shared_log_outside_the_testbed_guest(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(faultlog, "QEMU_FAULTS_MOUNT", str(tmp_path / "absent"))
    assert faultlog.qemu_fault_log() is None


# --- the operations on either source ---------------------------------------------------


class LinesLog(KernelLog):
    """A kernel log holding fixed lines (the host's source without /dev/kmsg)."""

    def __init__(self, lines: list[str]) -> None:
        self.fd = -1
        self.lines = lines

    def read(self) -> list[str]:
        return self.lines


def case_of(step: str) -> Case:
    text = textwrap.dedent("""
        name: f
        steps:
          - open_iommu: {}
            as: i
          - open_device: {iommu: i, bdf: "0000:00:03.0"}
            as: dev
    """) + f"  - {step}\n"
    return compile_text(text, "scen/f.yaml")[0]


def run_on(step: str, *, kernel: list[str] | None = None,
           qemu: QemuFaultLog | None = None) -> tuple[Outcome, str]:
    def open_iommu(rt: Runtime, args: Any, s: Any) -> object:
        return object()

    def open_device(rt: Runtime, args: Any, s: Any) -> object:
        return SimpleNamespace(bdf=args.bdf)

    def begin(rt: Runtime) -> None:
        rt.kernel_log = LinesLog(kernel) if kernel is not None else None
        rt.kernel_log_error = "no /dev/kmsg"
        rt.qemu_faults = qemu

    ops: dict[str, Operation] = {"open_iommu": open_iommu, "open_device": open_device,
           "expect_iommu_fault": host.expect_iommu_fault,
           "expect_no_iommu_fault": host.expect_no_iommu_fault}
    result = run_case(case_of(step), [], ops, begin=begin)
    return result.outcome, result.message


def test_expect_fault_found_in_the_kernel_log() -> None:
    assert run_on("expect_iommu_fault: {device: dev, address: 0x7000000, access: read}",
                  kernel=KERNEL_LINES) == (Outcome.PASS, "")


def test_missing_fault_in_the_kernel_log_names_what_was_there() -> None:
    outcome, message = run_on(
        "expect_iommu_fault: {device: dev, address: 0x7000000, access: write, within: 0}",
        kernel=KERNEL_LINES)
    assert outcome is Outcome.FAIL
    assert "the kernel log shows no write fault by 0000:00:03.0 at 0x7000000 within 0s" in message
    assert "read fault by 0000:00:03.0 at 0x7000000 (reason 0x06" in message
    assert "suppressed" not in message


def test_missing_fault_with_suppressed_messages_says_the_rate_limit_hid_lines() -> None:
    outcome, message = run_on(
        "expect_iommu_fault: {device: dev, address: 0x6000000, access: read, within: 0}",
        kernel=[*KERNEL_LINES, SUPPRESSED])
    assert outcome is Outcome.FAIL
    assert "suppressed 12 messages" in message and "callbacks suppressed" in message
    assert "may have happened without a line" in message


def test_no_fault_passes_fails_and_is_not_claimed_when_lines_were_suppressed() -> None:
    assert run_on("expect_no_iommu_fault: {device: dev, access: write}",
                  kernel=KERNEL_LINES)[0] is Outcome.PASS
    outcome, message = run_on("expect_no_iommu_fault: {device: dev}", kernel=KERNEL_LINES)
    assert outcome is Outcome.FAIL and "shows a fault by 0000:00:03.0" in message
    outcome, message = run_on("expect_no_iommu_fault: {device: dev, access: write}",
                              kernel=[*KERNEL_LINES, SUPPRESSED])
    assert outcome is Outcome.FAIL
    assert "no line proves there was no write fault by 0000:00:03.0" in message


def test_qemu_source_is_preferred_and_named(tmp_path: Path) -> None:
    path = tmp_path / faultlog.QEMU_FAULTS_FILE
    path.write_text("")
    log = QemuFaultLog(str(path))
    path.write_text(QEMU_LINES)
    # the kernel log shows nothing (rate-limited); QEMU's record has the fault
    assert run_on("expect_iommu_fault: {device: dev, address: 0x7000000, access: read}",
                  kernel=[SUPPRESSED], qemu=log) == (Outcome.PASS, "")
    outcome, message = run_on(
        "expect_iommu_fault: {device: dev, address: 0x800000, access: read, within: 0}",
        kernel=[SUPPRESSED], qemu=log)
    assert outcome is Outcome.FAIL
    assert message.split(": ", 1)[1].startswith(
        "QEMU's intel-iommu shows no read fault by 0000:00:03.0 at 0x800000 within 0s")
    assert "write fault by 0000:00:03.0 at 0x800000 (reason 0x05" in message
    assert "suppressed" not in message


def test_without_any_source_the_case_skips_with_the_reason() -> None:
    outcome, message = run_on("expect_iommu_fault: {device: dev, address: 0}", kernel=None)
    assert outcome is Outcome.SKIP and "no /dev/kmsg" in message


def test_only_a_case_that_reads_faults_opens_qemus_record(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """begin_case opens QEMU's record (a 9p round trip in the testbed) only for a case with
    a FAULT_OPS step, in its body, teardown or a loop; where the faults are read, the
    record opened as the case began is the source."""
    path = tmp_path / faultlog.QEMU_FAULTS_FILE
    path.write_text(QEMU_LINES)  # before the case: not the case's
    monkeypatch.setattr(faultlog, "QEMU_FAULTS_MOUNT", str(tmp_path))
    opened: list[QemuFaultLog | None] = []
    real = faultlog.qemu_fault_log

    def counted() -> QemuFaultLog | None:
        opened.append(real())
        return opened[-1]

    monkeypatch.setattr(faultlog, "qemu_fault_log", counted)
    looped = textwrap.dedent("""
        name: looped
        steps:
          - open_iommu: {}
            as: i
          - open_device: {iommu: i, bdf: "0000:00:03.0"}
            as: dev
          - for: {var: n, from: 0, below: 2}
            steps:
              - expect_no_iommu_fault: {device: dev, access: read}
    """)
    in_teardown = looped.replace("looped", "teardown").replace(
        "  - for: {var: n, from: 0, below: 2}\n    steps:\n      - expect_no",
        "teardown:\n  - expect_no")
    cases = {
        "none": case_of("sleep: {duration: 0}"),
        "body": case_of("expect_iommu_fault: {device: dev, address: 0x7000000, within: 0}"),
        "loop": compile_text(looped, "scen/l.yaml")[0],
        "teardown": compile_text(in_teardown, "scen/t.yaml")[0],
    }
    assert not cases["teardown"].steps[-1].op.startswith("expect")
    assert [host.reads_faults(c) for c in cases.values()] == [False, True, True, True]
    for name, case in cases.items():
        opened.clear()
        rt = Runtime(case=case, devices=[])
        host.begin_case(rt)
        assert (rt.qemu_faults is not None) == (name != "none") and len(opened) == (
            name != "none"), name
        host.end_case(rt)

    def open_device(rt: Runtime, args: Any, s: Any) -> object:
        return SimpleNamespace(bdf=args.bdf)

    ops: dict[str, Operation] = {"open_iommu": lambda rt, a, s: object(),
                                 "open_device": open_device,
                                 "expect_no_iommu_fault": host.expect_no_iommu_fault}
    # the faults recorded before the case began are not the case's
    result = run_case(cases["loop"], [], ops, begin=host.begin_case, end=host.end_case)
    assert result.outcome is Outcome.PASS, result.message


def test_an_operation_outside_fault_ops_that_reads_faults_is_a_bug() -> None:
    rt = Runtime(case=case_of("sleep: {duration: 0}"), devices=[])
    with pytest.raises(RuntimeError, match="FAULT_OPS"):
        host.fault_log(rt)
