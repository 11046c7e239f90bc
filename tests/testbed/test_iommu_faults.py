"""expect_iommu_fault in the testbed: faults read from QEMU's intel-iommu, not the kernel log.

intel-iommu prints DMAR faults through one printk rate limit (10 messages per 5 s, two
per fault interrupt), so fault cases run back to back lose their kernel log lines from
the third or so on. QEMU logs every fault it raises; these cases run back to back with
no pause, two faulting copies each, in all five IOMMU modes, and each asserts both.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.compile import compile_paths
from vfio_scenario.results import CaseResult, Outcome
from vfio_scenario.run import faultlog
from vfio_scenario.run.testbed_run import run_in_testbed

MODES = ("vfio_type1_iommu", "vfio_type1v2_iommu", "iommufd_compat_type1",
         "iommufd_compat_type1v2", "iommufd")

def edu_scenario(name: str, requires: str, variables: str, copies: str) -> str:
    """A scenario that maps a 2 MiB buffer at `iova` for edu and then runs `copies`."""
    return f"""\
- name: {name}
  requires: {requires}
  vars: {variables}
  steps:
    - open_iommu: {{}}
      as: iommu
    - open_device: {{iommu: iommu}}
      as: dev
    - alloc_buffer: {{size: 2MiB}}
      as: buf
    - map_dma: {{iommu: iommu, buffer: buf, iova: "{{{{ iova }}}}"}}
    - driver_init: {{device: dev}}
{copies}\
  teardown:
    - driver_remove: {{device: dev}}
"""


SCENARIOS = "\n".join([
    edu_scenario("faults-back-to-back", "{driver: edu}",
                 "{iova: 0x100000, unmapped: 0x7000000, elsewhere: 0x9000000}", """\
    - memcpy_start: {device: dev, src: "{{ unmapped }}", dst: "{{ iova }}", size: 4KiB}
    - memcpy_wait: {device: dev}
    - expect_iommu_fault: {device: dev, address: "{{ unmapped }}", access: read}
    - memcpy_start: {device: dev, src: "{{ iova }}", dst: "{{ elsewhere }}", size: 4KiB}
    - memcpy_wait: {device: dev}
    - expect_iommu_fault: {device: dev, address: "{{ elsewhere }}", access: write}
    - expect_no_iommu_fault: {device: dev, address: "{{ iova }}"}
"""),
    # right after the faulting cases: a case sees only its own faults
    edu_scenario("clean-copy-after-faults", "{driver: edu, iommu_modes: [iommufd]}",
                 "{iova: 0x100000}", """\
    - memcpy_start: {device: dev, src: "{{ iova }}", dst: "{{ iova + 0x1000 }}", size: 4KiB}
    - memcpy_wait: {device: dev}
    - expect_no_iommu_fault: {device: dev}
"""),
    # the check can fail: a fault at an address the copy never touched is not there
    edu_scenario("fault-expected-where-none-was", "{driver: edu, iommu_modes: [iommufd]}",
                 "{iova: 0x100000, unmapped: 0x7000000}", """\
    - memcpy_start: {device: dev, src: "{{ unmapped }}", dst: "{{ iova }}", size: 4KiB}
    - memcpy_wait: {device: dev}
    - expect_iommu_fault: {device: dev, address: "{{ unmapped }}", access: write, within: 0.2}
"""),
])


def run_scenarios(testbed: Any, folder: Path) -> dict[str, CaseResult]:
    """Run SCENARIOS in the testbed; results by `scenario/mode`."""
    path = folder / "faults.yaml"
    path.write_text(SCENARIOS)
    compiled = compile_paths([str(path)])
    assert compiled.errors == []
    results: dict[str, CaseResult] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "result":
            result = CaseResult.from_dict(event["result"])
            results[result.scenario + "/" + result.params.get("iommu_mode", "")] = result

    run_in_testbed(testbed, compiled.cases, compiled.documents, on_event, devices=[],
                   iommu_modes=[], timeout_multiplier=1.0, fail_fast=False)
    return results


@pytest.mark.testbed
def test_five_back_to_back_fault_cases_one_per_mode_each_see_their_faults(
        testbed: Any, tmp_path: Path) -> None:
    recorded = testbed.files.iommu_faults.stat().st_size
    results = run_scenarios(testbed, tmp_path)
    for mode in MODES:
        case = results[f"faults-back-to-back/{mode}"]
        assert case.outcome is Outcome.PASS, f"{mode}: {case.message}\n{case.log[-2000:]}"
        checks = [s for s in case.steps if s.op.endswith("iommu_fault")]
        assert [(s.op, s.outcome) for s in checks] == [
            ("expect_iommu_fault", Outcome.PASS), ("expect_iommu_fault", Outcome.PASS),
            ("expect_no_iommu_fault", Outcome.PASS)]
    clean = results["clean-copy-after-faults/iommufd"]
    assert clean.outcome is Outcome.PASS, clean.message
    wrong = results["fault-expected-where-none-was/iommufd"]
    assert wrong.outcome is Outcome.FAIL
    assert "QEMU's intel-iommu shows no write fault by 0000:00:03.0 at 0x7000000 within 0.2s" \
        in wrong.message, wrong.message
    assert "read fault by 0000:00:03.0 at 0x7000000 (reason 0x06: PTE read access not set)" \
        in wrong.message, wrong.message
    # QEMU recorded every access of every refused copy: 1,024 4-byte reads or writes each
    with testbed.files.iommu_faults.open("rb") as f:
        f.seek(recorded)
        faults = [faultlog.parse_qemu_record(line) for line in f.read().decode().splitlines()]
    pages = Counter((f.bdf, f.access, f.address // faultlog.PAGE * faultlog.PAGE, f.reason)
                    for f in faults if f is not None)
    assert pages == {("0000:00:03.0", "read", 0x7000000, 6): 1024 * (len(MODES) + 1),
                     ("0000:00:03.0", "write", 0x9000000, 5): 1024 * len(MODES)}


@pytest.mark.testbed
def test_the_guest_sees_its_own_vms_fault_log_and_not_the_hosts_folder(testbed: Any) -> None:
    from vfio_scenario.run.faultlog import QEMU_FAULTS_FILE, QEMU_FAULTS_MOUNT

    listing = testbed.run(["ls", "-A", QEMU_FAULTS_MOUNT], timeout=60)
    assert (listing.returncode, listing.stdout.split()) == (0, [QEMU_FAULTS_FILE])
    # read-only for the guest
    write = testbed.run(["sh", "-c", f"echo x >> {QEMU_FAULTS_MOUNT}/{QEMU_FAULTS_FILE}"],
                        timeout=60)
    assert write.returncode != 0
    # the VM writes its faults into its own run folder (another VM has another folder)
    assert testbed.files.iommu_faults.parent == testbed.files.folder / "iommu"
    assert testbed.files.iommu_faults.exists()
