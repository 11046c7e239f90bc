"""JUnit XML: one testsuite per scenario file, one testcase per case.

The document is valid against the JUnit schema Jenkins' xunit plugin uses
(junit-10.xsd), which is the strictest common denominator of Jenkins, GitLab and
GitHub: so no `disabled`/`skipped` on the root, no attributes on testcases beyond
name/classname/time (GitLab's `file` only when asked for: `JunitOptions.case_file`),
and properties only at suite level. Properties that differ between the cases of one
file (iommu_mode, device …) are listed there with all their values, and each case's
own values head its system-out.

What consumers do with it, and what we do about it: GitLab shows a case's
`system-out` only for failed cases in some versions and ignores `message`, so the
failure/error element's text repeats the message and holds the step log; GitLab keeps
only the first of two cases with the same class and name, so names are made unique;
GitLab refuses files over 30 MB, so logs are cut further when the document would
exceed `JunitOptions.max_bytes` (a suite property says so); Jenkins shows a suite as
`package + "." + name`, so suites carry no `package` (the name is the scenario file).

Text is made XML-safe before it reaches the tree: characters XML 1.0 forbids
(NUL, most C0 controls, lone surrogates, U+FFFE/U+FFFF) and C1 controls are shown
as `\\xNN` / `\\uNNNN` escapes instead of being dropped, so a console tail full of
escape sequences stays readable and the file stays valid.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

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
# GitLab refuses JUnit files over 30 MB; the default stays well under it
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# log limits tried in turn when a document is over its size cap (0: no log, only the note)
_SMALLER_LOG_LIMITS = (256 * 1024, 64 * 1024, 16 * 1024, 4096, 1024, 0)


@dataclass(frozen=True)
class JunitOptions:
    """How the document is written: `case_file` adds GitLab's `file` attribute to every
    testcase (not in the Jenkins schema, so off by default); `max_bytes` caps the size of
    the UTF-8 document by cutting logs (0: no cap)."""

    case_file: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def of(cls, args: Any) -> JunitOptions:
        """The options a command was given (--junit-file-attribute, --junit-max-size)."""
        return cls(case_file=args.junit_file_attribute, max_bytes=args.junit_max_size)

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


def _log(case: CaseResult, limit: int) -> str:
    if limit <= 0:
        return f"[{len(case.log)} characters cut; the JSON report holds the whole log]"
    return tail(case.log, limit)


def _system_out(case: CaseResult, common: dict[str, str], log_limit: int) -> str:
    parts = [_case_header(case, common)]
    steps = step_log(case)
    if steps:
        parts.append("steps:\n" + steps)
    if case.log and case.outcome is not Outcome.ERROR:  # an error carries the log itself
        parts.append("log:\n" + _log(case, log_limit))
    return xml_safe("\n".join(parts) + "\n")


def _outcome_text(case: CaseResult, message: str, log_limit: int) -> str:
    """The text of a failure/error element: the message, the step log, and for an error
    the log (GitLab shows this text where it shows neither `message` nor system-out)."""
    parts = [message]
    steps = step_log(case)
    if steps:
        parts.append("steps:\n" + xml_safe(steps))
    if case.log and case.outcome is Outcome.ERROR:
        parts.append("log:\n" + xml_safe(_log(case, log_limit)))
    return "\n".join(parts)


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


def _testcase(case: CaseResult, suite: str, name: str, common: dict[str, str],
              options: JunitOptions, log_limit: int) -> TestCase:
    tc = TestCase(name=name, classname=xml_safe(classname(suite)),
                  elapsed_sec=round(case.duration, 3) or None,
                  stdout=_system_out(case, common, log_limit),
                  file=xml_safe(suite) if options.case_file else None)
    message = xml_safe(failure_message(case))
    if case.status == "xfail":  # a known issue's failure: skipped, saying which issue
        tc.add_skipped_info(message=_short(xml_safe(known_issue_text(case))),
                            output=_outcome_text(case, message, log_limit))
        return tc
    if case.outcome is Outcome.FAIL:
        tc.add_failure_info(message=_short(message),
                            output=_outcome_text(case, message, log_limit))
    elif case.outcome is Outcome.ERROR:
        tc.add_error_info(message=_short(message), output=_outcome_text(case, message, log_limit))
    elif case.outcome is Outcome.SKIP:
        tc.add_skipped_info(message=_short(message))
    return tc


def unique_names(cases: list[tuple[str, str]]) -> list[str]:
    """The case names of (classname, name) pairs, made unique per class: the second
    `x` of a class becomes `x (2)`, and so on (GitLab keeps only the first of equals)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for cls, name in cases:
        candidate, n = name, 1
        while (cls, candidate) in seen:
            n += 1
            candidate = f"{name} ({n})"
        seen.add((cls, candidate))
        out.append(candidate)
    return out


def _timestamp(cases: list[CaseResult]) -> str | None:
    started = [c.started for c in cases if c.started]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(started))) if started else None


def junit_tree(run: RunResult, options: JunitOptions | None = None,
               log_limit: int = LOG_LIMIT, note: str = "") -> ET.Element:
    """The `<testsuites>` element of the run; logs keep their last `log_limit`
    characters, and `note` (why, when logs were cut further) is a property of each suite."""
    options = options or JunitOptions()
    root = ET.Element("testsuites", {"name": "vfio-scenario"})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    groups = group_by_suite(run.cases)
    names = iter(unique_names([(xml_safe(classname(suite)), xml_safe(name_in_suite(c)))
                               for suite, cases in groups.items() for c in cases]))
    for suite, cases in groups.items():
        common = _common_properties(cases)
        props = _suite_properties(run, cases)
        if note:
            props["junit_logs_cut"] = note
        ts = TestSuite(name=xml_safe(suite),
                       test_cases=[_testcase(c, suite, next(names), common, options, log_limit)
                                   for c in cases],
                       timestamp=_timestamp(cases), properties=props, file=xml_safe(suite))
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


def _render(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def junit_document(run: RunResult, options: JunitOptions | None = None) -> str:
    """The whole JUnit XML document, indented, with its XML declaration.

    When it would be larger than `options.max_bytes`, it is written again with every
    log cut to a shorter tail (256 KiB, 64 KiB … none), until it fits, and each suite
    gets a `junit_logs_cut` property saying so."""
    options = options or JunitOptions()
    text = _render(junit_tree(run, options))
    if not options.max_bytes or len(text.encode("utf-8")) <= options.max_bytes:
        return text
    for limit in _SMALLER_LOG_LIMITS:
        kept = f"to their last {limit} characters" if limit else "out"
        note = (f"logs cut {kept}: the whole file would be over {options.max_bytes} bytes; "
                "the JSON report and the journal hold them whole")
        text = _render(junit_tree(run, options, log_limit=limit, note=note))
        if len(text.encode("utf-8")) <= options.max_bytes:
            break
    return text

