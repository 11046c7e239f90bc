"""The JSON report: every case and step with timings (`--json`).

The document is `RunResult.to_dict()` plus `schema` / `schema_version` and the
counts, so `report merge` and other tools read it back with `RunResult.from_dict`.
Non-ASCII text is written as \\u escapes: a message carrying a lone surrogate (bytes
that were not UTF-8) still gives a valid JSON file.
"""

from __future__ import annotations

import json
from typing import Any

from vfio_scenario.report.describe import SCHEMA_VERSION
from vfio_scenario.results import RunResult

SCHEMA = "vfio-scenario-results"


def json_report(run: RunResult) -> dict[str, Any]:
    """The report as a dict: schema, schema_version, total, counts, then the run."""
    counts = run.status_counts()
    if not counts["xfail"] and not counts["xpass"]:  # no known issue matched: the four
        del counts["xfail"], counts["xpass"]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "total": len(run.cases),
        "counts": counts,
        **run.to_dict(),
    }


def json_document(run: RunResult) -> str:
    """The JSON report as text: one key per line and one case per line (greppable, and
    json's C encoder does the work: indent= would fall back to the slow Python one);
    ASCII-only, ending with a newline."""
    doc = json_report(run)
    cases = doc.pop("cases")
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items())
    body = ",\n".join("  " + json.dumps(c) for c in cases)
    return "{\n" + head + ',\n "cases": [' + ("\n" + body + "\n " if cases else "") + "]\n}\n"


def is_json_report(doc: object) -> bool:
    """True when `doc` (parsed JSON) is one of our JSON reports."""
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA and "cases" in doc
