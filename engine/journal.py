"""The run journal: results written as they happen, so a killed run can be resumed.

A journal is a JSON-lines file. Each line is one record:

    {"type": "journal", "schema_version": 1}               first line
    {"type": "run", "started": …, "duration": …, "properties": {…}}   run facts (latest wins)
    {"type": "case", "case": {CaseResult.to_dict()}}         one finished case

Every case record is written with one write(), flushed and fsynced before `write_case`
returns, so once the runner has been told a case is recorded, a power cut or kill -9
cannot lose it. A kill during the write leaves a torn last line (no newline, or not
JSON): readers ignore it, and a journal opened to resume cuts it off before appending.
A damaged line anywhere else is an error, not something to guess around.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vfio_scenario import __version__
from vfio_scenario.errors import ExitCode, VfioScenarioError
from vfio_scenario.results import CaseResult, RunResult

SCHEMA_VERSION = 1


# the engine's version too, so a reader of another version can say who wrote it
_HEADER = json.dumps({"type": "journal", "schema_version": SCHEMA_VERSION,
                      "engine_version": __version__}).encode() + b"\n"
_HEADERS = (_HEADER, json.dumps({"type": "journal", "schema_version": SCHEMA_VERSION}).encode()
            + b"\n")  # and the header of the engines before it


class JournalError(VfioScenarioError):
    """A journal that cannot be read (damaged in the middle, or not a journal)."""

    exit_code = ExitCode.USAGE


def _records(data: bytes, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(end offset, record) for every intact line; a torn last line is skipped.

    What follows the final newline is torn (a write cut short); so is a last line that
    is not JSON (a crash can leave a block of zeros at the end of a file)."""
    complete = data.split(b"\n")[:-1]
    offset = 0
    for number, raw in enumerate(complete, start=1):
        offset += len(raw) + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            if number == 1:
                raise JournalError(f"{path}:1: not a vfio-scenario journal (not JSON)") from None
            if number == len(complete):
                return
            raise JournalError(f"{path}:{number}: damaged journal line ({exc})") from None
        if not isinstance(record, dict) or "type" not in record:
            raise JournalError(f"{path}:{number}: not a vfio-scenario journal record")
        yield offset, record


def read_journal(path: str | os.PathLike[str]) -> RunResult:
    """The run a journal records: its latest run facts and every finished case, in order.

    When a case id appears twice the later result wins (at its later position)."""
    run, _ = _read(Path(path))
    return run


def finished_cases(path: str | os.PathLike[str]) -> dict[str, CaseResult]:
    """Finished case ids with their results, in the order they finished ({} if no journal)."""
    p = Path(path)
    if not p.exists():
        return {}
    return {c.case_id: c for c in read_journal(p).cases}


def _read(path: Path) -> tuple[RunResult, int]:
    """The recorded run and the length of the journal's intact part."""
    data = path.read_bytes()
    run = RunResult()
    cases: dict[str, CaseResult] = {}
    valid = 0
    for end, record in _records(data, str(path)):
        kind = record["type"]
        if not valid and kind != "journal":
            raise JournalError(f"{path}:1: not a vfio-scenario journal (no header line)")
        valid = end
        if kind == "case":
            case = CaseResult.from_dict(record["case"])
            cases.pop(case.case_id, None)
            cases[case.case_id] = case
        elif kind == "run":
            run.started = record.get("started", run.started)
            run.duration = record.get("duration", run.duration)
            run.properties = dict(record.get("properties", {}))
        elif kind == "journal" and record.get("schema_version", 0) > SCHEMA_VERSION:
            raise JournalError(f"{path}: journal schema {record['schema_version']} is newer "
                               f"than this engine's ({SCHEMA_VERSION})")
    if not valid and data.strip() and not any(h.startswith(data[: len(h)].rstrip(b"\n"))
                                              for h in _HEADERS):
        # not even the start of a header (a journal killed at birth holds a piece of one)
        raise JournalError(f"{path}: not a vfio-scenario journal")
    run.cases = list(cases.values())
    return run, valid


class Journal:
    """An open journal; `resume=True` keeps what it holds, else it starts empty."""

    def __init__(self, path: str | os.PathLike[str], resume: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.previous = RunResult()
        if resume and self.path.exists():
            self.previous, valid = _read(self.path)
            with open(self.path, "r+b") as f:  # drop a torn last line before appending
                f.truncate(valid)
        else:
            self.path.write_bytes(b"")
        self._file: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 - lives with self
        if not self.path.stat().st_size:
            self._write(_HEADER)

    def _append(self, record: dict[str, Any]) -> None:
        self._write(json.dumps(record).encode() + b"\n")

    def _write(self, line: bytes) -> None:
        """One line in one write(), then flush and fsync: whole, or torn at the end."""
        if self._file is None:
            raise ValueError(f"journal {self.path} is closed")
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_case(self, case: CaseResult) -> None:
        """Record a finished case durably (flushed and fsynced when this returns)."""
        self._append({"type": "case", "case": case.to_dict()})

    def write_run(self, run: RunResult) -> None:
        """Record the run's facts (start, duration, properties); the latest record wins."""
        self._append({"type": "run", "started": run.started, "duration": run.duration,
                      "properties": dict(run.properties)})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
