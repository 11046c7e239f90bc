"""Known issues: failures a run expects, each with its reason, so they do not fail it.

Two sources: `--known-issues FILE` (patterns over whole case ids) and a scenario's own
`known_issues:` (patterns over the part of its cases' ids after `::`). A file is

    known_issues:
      - case: "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1_iommu*]"
        reason: vfio_type1 rejects this size on 6.1
        url: https://lore.kernel.org/…
        kernels: ["6.1.*"]          # uname -r patterns; absent: every kernel

(a bare list of entries is taken too). In patterns `*` stands for any text and `?`
for one character; everything else, brackets included, is literal, so an id can be
pasted. A pattern matches an id as written or with its matrix parameters in name
order. A case that matches an entry whose kernels match the run's `uname -r` gets the
entry as its `known_issue`: failed or errored it is reported as xfail, passed as xpass
(CaseResult.status), and neither fails the run.

The file is validated like a scenario: YAML with located nodes, the entries by the
pydantic model, every error as `file:line:col` (exit status 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from vfio_scenario.errors import ScenarioError, ScenarioErrors
from vfio_scenario.results import CaseResult
from vfio_scenario.select import normalize_case_id, parse_case_id

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Case


@cache
def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch)
                              for ch in glob), re.DOTALL)


def glob_match(glob: str, text: str) -> bool:
    """`*` any text, `?` one character, anything else literal (brackets too)."""
    return _pattern(glob).fullmatch(text) is not None


def id_matches(glob: str, case_id: str) -> bool:
    """The pattern matches the id as written or with its parameters in name order."""
    return glob_match(glob, case_id) or glob_match(glob, normalize_case_id(case_id))


def kernel_matches(entry: dict[str, Any], release: str) -> bool:
    """The entry applies to the kernel `release` (an entry naming no kernel applies to all;
    one that names some does not apply when the release is unknown)."""
    kernels = entry.get("kernels") or []
    return not kernels or any(glob_match(k, release) for k in kernels if release)


def load_file(path: str) -> list[dict[str, Any]]:
    """The entries of a known-issues file, each with its `source` (file:line:col).

    Raises ScenarioErrors (exit 2) with every problem, located."""
    from pydantic import ValidationError
    from vfio_scenario.errors import Location
    from vfio_scenario.language.compile import _FileCompiler
    from vfio_scenario.language.loader import load_file as load_yaml
    from vfio_scenario.language.models import KnownIssue

    doc, errors = load_yaml(path)
    if errors:
        raise ScenarioErrors(errors)
    data = doc.data
    prefix: tuple[Any, ...] = ()
    if isinstance(data, dict):
        extra = [k for k in data if k != "known_issues"]
        if extra:
            raise ScenarioErrors([ScenarioError(doc.location((k,), key=True),
                                                f"unknown key `{k}`: a known-issues file holds "
                                                "`known_issues:` (a list of entries)")
                                  for k in extra])
        if "known_issues" not in data:
            raise ScenarioErrors([ScenarioError(Location(path, 1, 1),
                                                "missing `known_issues:` (a list of entries)")])
        data, prefix = data["known_issues"], ("known_issues",)
    if not isinstance(data, list):
        raise ScenarioErrors([ScenarioError(doc.location(prefix),
                                            "a known-issues file holds a list of entries, each "
                                            "with `case` and `reason`")])
    entries: list[KnownIssue] = []
    problems: list[ScenarioError] = []
    for i, raw in enumerate(data):  # one by one, so that a message names the entry's keys
        try:
            entries.append(KnownIssue.model_validate(raw))
        except ValidationError as exc:
            problems += [ScenarioError(doc.location((*prefix, i, *p),
                                                  key=msg.startswith("unknown")), msg)
                       for p, msg in _FileCompiler.describe(exc, KnownIssue)]
    if problems:
        raise ScenarioErrors(problems)
    locations = doc.item_locations(prefix)
    return [{**e.model_dump(), "source": str(loc)}
            for e, loc in zip(entries, locations, strict=False)]


def _name_of(case_id: str) -> str:
    """The part of a case id after its scenario file (the whole id when it has none)."""
    from vfio_scenario.report.describe import split_case_id

    parts = split_case_id(case_id)
    return parts[1] if parts else case_id


def _scenario_of(case_id: str) -> str:
    """`file::scenario` of a case id (its matrix parameters left out)."""
    file, name, _ = parse_case_id(case_id)
    return f"{file}::{name}"


@dataclass
class KnownIssues:
    """The entries a run applies: the file's, and each selected case's scenario's."""

    file_entries: list[dict[str, Any]] = field(default_factory=list)
    # `file::scenario` → that scenario's entries (ids can change when the host compiles the
    # cases again for the real devices: the scenario stays)
    own: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unmatched: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def for_run(cls, cases: list[Case], path: str | None) -> KnownIssues:
        """Read FILE (when given), take the cases' own entries, and note the patterns
        that match none of the selected cases."""
        known = cls(file_entries=load_file(path) if path else [])
        ids = [c.id for c in cases]
        known.unmatched = [e for e in known.file_entries
                           if not any(id_matches(e["case"], i) for i in ids)]
        by_source: dict[str, tuple[dict[str, Any], bool]] = {}
        for c in cases:
            if c.known_issues:
                known.own[_scenario_of(c.id)] = c.known_issues
            name = _name_of(c.id)
            for e in c.known_issues:
                hit = id_matches(e["case"], name)
                seen = by_source.get(e["source"])
                by_source[e["source"]] = (e, hit or (seen is not None and seen[1]))
        known.unmatched += [e for e, hit in by_source.values() if not hit]
        return known

    def unmatched_warnings(self) -> list[str]:
        """One warning naming every pattern that matches no selected case (if any)."""
        if not self.unmatched:
            return []
        listed = "; ".join(f"{e['source']}: {e['case']}" for e in self.unmatched)
        return [f"known-issue patterns that match no selected case: {listed}"]

    def entry_for(self, case_id: str, release: str) -> dict[str, Any] | None:
        """The first entry covering the case on kernel `release` (its scenario's first)."""
        name = _name_of(case_id)
        for e in self.own.get(_scenario_of(case_id), []):
            if id_matches(e["case"], name) and kernel_matches(e, release):
                return e
        for e in self.file_entries:
            if id_matches(e["case"], case_id) and kernel_matches(e, release):
                return e
        return None

    def apply(self, result: CaseResult, run_properties: dict[str, str]) -> None:
        """Set `result.known_issue` when an entry covers it on the kernel it ran on."""
        release = (result.properties.get("kernel") or run_properties.get("kernel")
                   or run_properties.get("testbed_kernel", ""))
        entry = self.entry_for(result.case_id, release)
        if entry is not None:
            result.known_issue = {k: str(v) for k, v in (
                ("reason", entry["reason"]), ("url", entry.get("url") or ""),
                ("pattern", entry["case"]), ("source", entry["source"]))}
