"""The kernel watch against real splats, inside the testbed (our kernel has LKDTM).

A second process provokes a WARNING through /sys/kernel/debug/provoke-crash/DIRECT
while a case runs, through the same runner as `vfio-scenario run` (run_planned: one
kernel watch for the run, one forked child per case). The case becomes an ERROR
naming the splat; the next case passes; a case that declares the splat passes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from vfio_scenario.language.cases import Case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.plan import plan
from vfio_scenario.run.probe import probe_host
from vfio_scenario.run.session import run_planned

from tests.helpers.scenarios import compile_text

DIRECT = Path("/sys/kernel/debug/provoke-crash/DIRECT")

pytestmark = pytest.mark.skipif(not DIRECT.exists(),
                                reason="this kernel has no LKDTM (CONFIG_LKDTM, debugfs)")

SCENARIOS = """
    - name: provoked
      requires: {devices: 0}
      steps:
        - sleep: {duration: 6s}
    - name: next
      requires: {devices: 0}
      steps:
        - sleep: {duration: 10ms}
    - name: declared-kind
      requires: {devices: 0}
      kernel_watch: {allow: [warning]}
      steps:
        - sleep: {duration: 6s}
    - name: declared-by-expect-dmesg
      requires: {devices: 0}
      steps:
        - expect_dmesg: {pattern: 'at lkdtm_WARNING\\+', within: 20s}
"""


def cases_of(text: str) -> list[Case]:
    return compile_text(text, "watch-test.yaml")


def run_provoking(cases: list[Case], provoke: set[str],
                  options: RunOptions | None = None) -> list[dict[str, Any]]:
    """Run `cases`; when one named in `provoke` starts, a second process writes WARNING
    to LKDTM's DIRECT 1.5 s later (while the case runs)."""
    caps = probe_host()
    events: list[dict[str, Any]] = []
    helpers: list[subprocess.Popen[bytes]] = []

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "start" and event["id"].split("::")[1] in provoke:
            helpers.append(subprocess.Popen(
                ["sh", "-c", f"sleep 1.5; echo WARNING > {DIRECT}"]))

    run_planned(plan(cases, caps), caps, options or RunOptions(), emit)
    for helper in helpers:
        assert helper.wait(timeout=60) == 0
    return [e["result"] for e in events if e["event"] == "result"]


def test_a_warning_during_a_case_is_its_error_and_declared_ones_pass() -> None:
    results = run_provoking(cases_of(SCENARIOS), {"provoked", "declared-kind",
                                                  "declared-by-expect-dmesg"})
    outcomes = {r["scenario"]: r["outcome"] for r in results}
    assert outcomes == {"provoked": "error", "next": "pass", "declared-kind": "pass",
                        "declared-by-expect-dmesg": "pass"}, [r["message"] for r in results]
    provoked = results[0]
    assert provoked["message"].startswith("kernel warning during the case: WARNING: "
                                          "drivers/misc/lkdtm/bugs.c:"), provoked["message"]
    assert "lkdtm_WARNING+" in provoked["message"]
    [splat] = provoked["kernel_splats"]
    assert (splat["kind"], splat["allowed"]) == ("warning", False)
    assert splat["text"].startswith("------------[ cut here ]------------")
    assert splat["text"].rstrip().endswith("]---")  # ---[ end trace … ]---
    assert "Call Trace:" in splat["text"] and splat["text"] in provoked["log"]
    assert results[1]["kernel_splats"] == []
    for declared in results[2:]:
        assert [(s["kind"], s["allowed"]) for s in declared["kernel_splats"]] == \
            [("warning", True)], declared["log"]


def test_no_kernel_watch_lets_the_warning_pass_unseen() -> None:
    [result] = run_provoking(cases_of(SCENARIOS)[:1], {"provoked"},
                             RunOptions(kernel_watch=False))
    assert (result["outcome"], result["kernel_splats"]) == ("pass", [])
