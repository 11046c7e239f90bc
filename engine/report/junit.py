"""JUnit XML: one testsuite per scenario file, one testcase per case.

The document is valid against the JUnit schema Jenkins' xunit plugin uses
(junit-10.xsd), which is the strictest common denominator of Jenkins, GitLab and
GitHub: so no `disabled`/`skipped` on the root, no attributes on testcases beyond
name/classname/time, and properties only at suite level. Properties that differ
between the cases of one file (iommu_mode, device …) are listed there with all their
values, and each case's own values head its system-out.

Text is made XML-safe before it reaches the tree: characters XML 1.0 forbids
(NUL, most C0 controls, lone surrogates, U+FFFE/U+FFFF) and C1 controls are shown
as `\\xNN` / `\\uNNNN` escapes instead of being dropped, so a console tail full of
escape sequences stays readable and the file stays valid.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

from junit_xml import TestCase, TestSuite
from vfio_scenario.report.describe import (
    failure_message,
    group_by_suite,
    known_issue_text,
    name_in_suite,
    ordered_properties,
    step_log,
    tail,
)
from vfio_scenario.results import CaseResult, Outcome, RunResult

# Logs beyond this keep only their tail in the XML (the JSON report holds them whole):
# CI servers load the whole file into memory, and the report is rewritten while a run goes.
LOG_LIMIT = 1 << 20
MESSAGE_LIMIT = 4000  # characters of a failure/error/skipped `message` attribute

_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 forbids (and C1 controls) escaped as \\xNN/\\uNNNN."""
    return _ILLEGAL.sub(_escape_char, text)


def _short(text: str) -> str:
    """The first line of `text`, at most MESSAGE_LIMIT characters (an attribute, not a log)."""
    line = text.split("\n", 1)[0]
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


def classname(suite: str) -> str:
    """A scenario file as a JUnit class name: `scenarios/dma/map.yaml` → `scenarios.dma.map`.

    CI servers split the class name at its last dot into package and class, so the
    folders become the package and the file name the class."""
    path = re.sub(r"\.ya?ml$", "", suite)
    parts = [p.replace(".", "_") for p in path.split("/") if p not in ("", ".")]
    return ".".join(parts) or "scenarios"


def _case_header(case: CaseResult, common: dict[str, str]) -> str:
    own = [(k, v) for k, v in ordered_properties(case.properties) if common.get(k) != v]
    lines = [f"case: {case.case_id}", f"outcome: {case.outcome.label} in {case.duration:.3f}s"]
    if case.known_issue is not None:
        lines.append(f"{case.status}: {known_issue_text(case)}")
    lines += [f"{k}: {v}" for k, v in own]
    return "\n".join(lines)


def _system_out(case: CaseResult, common: dict[str, str]) -> str:
    parts = [_case_header(case, common)]
    steps = step_log(case)
    if steps:
        parts.append("steps:\n" + steps)
    if case.log and case.outcome is not Outcome.ERROR:  # an error carries the log itself
        parts.append("log:\n" + tail(case.log, LOG_LIMIT))
    return xml_safe("\n".join(parts) + "\n")


def _suite_properties(run: RunResult, cases: list[CaseResult]) -> dict[str, str]:
    """Run properties, then each case property: its one value, or all its values."""
    values: dict[str, list[str]] = {}
    for c in cases:
        for k, v in c.properties.items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    props = dict(run.properties)
    for k, vs in values.items():
        props[k] = vs[0] if len(vs) == 1 else ", ".join(sorted(vs))
    return {xml_safe(k): xml_safe(v) for k, v in ordered_properties(props)}


def _testcase(case: CaseResult, suite: str, common: dict[str, str]) -> TestCase:
    tc = TestCase(name=xml_safe(name_in_suite(case)), classname=xml_safe(classname(suite)),
                  elapsed_sec=round(case.duration, 3) or None, stdout=_system_out(case, common))
    message = xml_safe(failure_message(case))
    if case.status == "xfail":  # a known issue's failure: skipped, saying which issue
        tc.add_skipped_info(message=_short(xml_safe(known_issue_text(case))),
                            output=message)
        return tc
    if case.outcome is Outcome.FAIL:
        tc.add_failure_info(message=_short(message), output=message)
    elif case.outcome is Outcome.ERROR:
        output = message + ("\n" + xml_safe(tail(case.log, LOG_LIMIT)) if case.log else "")
        tc.add_error_info(message=_short(message), output=output)
    elif case.outcome is Outcome.SKIP:
        tc.add_skipped_info(message=_short(message))
    return tc


def _timestamp(cases: list[CaseResult]) -> str | None:
    started = [c.started for c in cases if c.started]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(started))) if started else None


def junit_tree(run: RunResult) -> ET.Element:
    """The `<testsuites>` element of the run."""
    root = ET.Element("testsuites", {"name": "vfio-scenario"})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    for suite, cases in group_by_suite(run.cases).items():
        common = _common_properties(cases)
        ts = TestSuite(name=xml_safe(suite), test_cases=[_testcase(c, suite, common) for c in cases],
                       timestamp=_timestamp(cases), properties=_suite_properties(run, cases),
                       package=xml_safe(classname(suite)), file=xml_safe(suite))
        elem = ts.build_xml_doc()
        elem.attrib.pop("disabled", None)  # not in the Jenkins schema
        suite_time = sum(c.duration for c in cases)
        elem.set("time", f"{suite_time:.3f}")
        total_time += suite_time
        for key in totals:
            totals[key] += int(elem.get(key, "0"))
        root.append(elem)
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_time:.3f}")
    return root


def _common_properties(cases: list[CaseResult]) -> dict[str, str]:
    """Properties every case of the suite has with the same value."""
    if not cases:
        return {}
    common = dict(cases[0].properties)
    for c in cases[1:]:
        common = {k: v for k, v in common.items() if c.properties.get(k) == v}
    return common


def junit_document(run: RunResult) -> str:
    """The whole JUnit XML document, indented, with its XML declaration."""
    root = junit_tree(run)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

