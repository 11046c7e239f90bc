"""KCIDB: results as the kernel CI database ingests them (`report kcidb`).

KCIDB's I/O schema (published by the kcidb-io package; v5.3 here) holds checkouts,
builds and tests. Each object's id starts with the submitting CI system's origin and a
colon. A run becomes one checkout and one build (unless the ids of ones another origin
submitted are given: then only tests) and one test per case:

- `path`: KCIDB's dot-separated test tree, whose nodes may hold only letters, digits,
  `_` and `-`: `vfio_scenario`, the scenario file's folders and name (without a leading
  `scenarios/` and the `.yaml`), the scenario name, then one `key-value` node per matrix
  parameter in the case id's order; every other character becomes `_`, and a path two
  cases would share gets `-2`, `-3` … on its last node;
- `status`: PASS, FAIL, ERROR or SKIP from the outcome (a known issue's case keeps its
  real outcome, the known issue goes to `misc`); MISS for every expected case that no
  input reported, and, without a list of expected cases, one MISS test per shard that
  never reported (path `vfio_scenario.shard-I-of-N`): a run with `--shard I/N` records
  `shard` in its properties, and a merge of shards lists every value;
- `log_excerpt`: the failure message, the step log and the tail of the log, at most
  16384 characters (KCIDB's limit);
- `misc`: the case id, file, scenario, matrix values, tags and properties.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from vfio_scenario.report.describe import failure_message, split_case_id, step_log, tail
from vfio_scenario.results import CaseResult, Outcome, RunResult

SCHEMA_MAJOR, SCHEMA_MINOR = 5, 3
LOG_EXCERPT_LIMIT = 16384  # characters: the schema's maxLength of log_excerpt
ORIGIN = re.compile(r"[a-z0-9_]+\Z")
PATH_ROOT = "vfio_scenario"
STATUS = {Outcome.PASS: "PASS", Outcome.FAIL: "FAIL", Outcome.ERROR: "ERROR",
          Outcome.SKIP: "SKIP"}
_NOT_IN_NODE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class KcidbOptions:
    """Where the tests hang in KCIDB. `origin` names the CI system; `run_id` makes the
    ids of this run's objects unique (default: a digest of the run's start and
    properties); `checkout_id`/`build_id` link to objects another origin submitted."""

    origin: str = "vfio_scenario"
    run_id: str = ""
    checkout_id: str = ""
    build_id: str = ""
    tree_name: str = ""
    git_repository_url: str = ""
    git_commit_hash: str = ""
    git_repository_branch: str = ""


def _node(text: str) -> str:
    return _NOT_IN_NODE.sub("_", text) or "_"


def kcidb_path(case_id: str) -> str:
    """The case id as a KCIDB test path (the module docstring says how)."""
    parts = split_case_id(case_id)
    file, name = parts if parts else ("", case_id)
    folders = [p for p in re.sub(r"\.ya?ml$", "", file).split("/") if p not in ("", ".")]
    if folders[:1] == ["scenarios"] and len(folders) > 1:
        folders = folders[1:]
    scenario, bracket, params = name.partition("[")
    nodes = [PATH_ROOT, *map(_node, folders), _node(scenario)]
    if bracket:
        for assignment in params.removesuffix("]").split(","):
            key, eq, value = assignment.partition("=")
            nodes.append(f"{_node(key)}-{_node(value)}" if eq else _node(key))
    return ".".join(nodes)


def _text(s: str) -> str:
    return s.replace("\x00", "\\x00")  # the schema's strings hold no NUL


def log_excerpt(case: CaseResult) -> str:
    """What a reader needs of a case that did not pass: message, step log, log tail."""
    head = failure_message(case)
    steps = step_log(case)
    if steps:
        head += "\nsteps:\n" + steps
    head = head[: LOG_EXCERPT_LIMIT // 2]
    if not case.log:
        return _text(head)
    room = LOG_EXCERPT_LIMIT - len(head) - len("\nlog:\n")
    log = tail(case.log, max(room - 100, 0))  # tail() adds a line saying what it cut
    return _text(f"{head}\nlog:\n{log}")[:LOG_EXCERPT_LIMIT]


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + \
        f".{int(epoch % 1 * 1e6):06d}+00:00"


def default_run_id(run: RunResult) -> str:
    """A digest of the run's start and properties: the same report gives the same ids."""
    key = json.dumps([run.started, sorted(run.properties.items())])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _misc(case: CaseResult) -> dict[str, Any]:
    misc: dict[str, Any] = {"case_id": case.case_id, "file": case.file,
                            "scenario": case.scenario, "params": dict(case.params),
                            "tags": list(case.tags), "properties": dict(case.properties)}
    if case.known_issue is not None:
        misc["known_issue"] = dict(case.known_issue)
    if case.kernel_splats:
        misc["kernel_splats"] = [s.get("title", "") for s in case.kernel_splats]
    return misc


def _test(case_id: str, build_id: str, prefix: str, origin: str, path: str) -> dict[str, Any]:
    return {"id": _text(f"{prefix}:{case_id}"), "build_id": build_id, "origin": origin,
            "path": path, "comment": _text(case_id)}


def _unique(path: str, taken: set[str]) -> str:
    candidate, n = path, 1
    while candidate in taken:
        n += 1
        candidate = f"{path}-{n}"
    taken.add(candidate)
    return candidate


def kcidb_document(run: RunResult, options: KcidbOptions | None = None,
                   expected: list[str] | None = None) -> dict[str, Any]:
    """The run as one KCIDB I/O document (schema v5.3); `expected` case ids that the run
    does not hold become MISS tests."""
    o = options or KcidbOptions()
    run_id = o.run_id or default_run_id(run)
    prefix = f"{o.origin}:{run_id}"
    doc: dict[str, Any] = {"version": {"major": SCHEMA_MAJOR, "minor": SCHEMA_MINOR}}
    build_id = o.build_id or prefix
    if not o.build_id:
        checkout_id = o.checkout_id or prefix
        if not o.checkout_id:
            doc["checkouts"] = [_checkout(run, o, checkout_id)]
        doc["builds"] = [_build(run, o, build_id, checkout_id)]
    taken: set[str] = set()
    tests = []
    for case in run.cases:
        t = _test(case.case_id, build_id, prefix, o.origin,
                  _unique(kcidb_path(case.case_id), taken))
        t["status"] = STATUS[case.outcome]
        if case.started:
            t["start_time"] = _iso(case.started)
        t["duration"] = round(case.duration, 6)
        if case.outcome is not Outcome.PASS:
            t["log_excerpt"] = log_excerpt(case)
        env = {k: case.properties[k] for k in ("device", "vendor_device", "vfio_driver")
               if k in case.properties}
        if env:
            t["environment"] = {"comment": _text(" ".join(f"{k}={v}" for k, v in env.items())),
                                "misc": env}
        t["misc"] = _misc(case)
        tests.append(t)
    held = {c.case_id for c in run.cases}
    for case_id in expected or []:
        if case_id not in held:
            held.add(case_id)
            t = _test(case_id, build_id, prefix, o.origin,
                      _unique(kcidb_path(case_id), taken))
            t["status"] = "MISS"
            t["misc"] = {"case_id": case_id, "reason": "expected, but no input reported it"}
            tests.append(t)
    if expected is None:
        for index, count in missing_shards(run):
            t = _test(f"shard-{index}-of-{count}", build_id, prefix, o.origin,
                      f"{PATH_ROOT}.shard-{index}-of-{count}")
            t.update(status="MISS", comment=f"shard {index}/{count} never reported: which "
                     "cases it held, and how they went, is unknown",
                     misc={"shard": f"{index}/{count}"})
            tests.append(t)
    doc["tests"] = tests
    return doc


def missing_shards(run: RunResult) -> list[tuple[int, int]]:
    """(I, N) of every shard of the run's `shard` property (`1/4, 2/4, 4/4` after a
    merge) that no input came from; [] when the run was not sharded or its shards
    disagree on N."""
    seen = set()
    for value in run.properties.get("shard", "").split(","):
        m = re.fullmatch(r"\s*(\d+)/(\d+)\s*", value)
        if m:
            seen.add((int(m.group(1)), int(m.group(2))))
    counts = {n for _, n in seen}
    if len(counts) != 1:
        return []
    count = counts.pop()
    return [(i, count) for i in range(1, count + 1) if (i, count) not in seen]


def _checkout(run: RunResult, o: KcidbOptions, checkout_id: str) -> dict[str, Any]:
    checkout: dict[str, Any] = {"id": checkout_id, "origin": o.origin}
    for key in ("tree_name", "git_repository_url", "git_commit_hash", "git_repository_branch"):
        if getattr(o, key):
            checkout[key] = getattr(o, key)
    if run.started:
        checkout["start_time"] = _iso(run.started)
    if "kernel" in run.properties:
        checkout["misc"] = {"kernel": run.properties["kernel"]}
    return checkout


def _build(run: RunResult, o: KcidbOptions, build_id: str, checkout_id: str) -> dict[str, Any]:
    build: dict[str, Any] = {"id": build_id, "checkout_id": checkout_id, "origin": o.origin}
    if run.started:
        build["start_time"] = _iso(run.started)
    if "kernel" in run.properties:
        build["config_name"] = _text(run.properties["kernel"])
    build["misc"] = {"run_properties": dict(run.properties)}
    return build


def kcidb_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=True) + "\n"
