"""The journal: durable per-case records, torn last lines, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vfio_scenario import __version__
from vfio_scenario.journal import Journal, JournalError, finished_cases, read_journal
from vfio_scenario.results import Outcome

from tests.helpers.reports import sample_run


def test_journal_round_trips_cases_and_run_facts(tmp_path: Path) -> None:
    run = sample_run()
    j = Journal(tmp_path / "journal.jsonl")
    j.write_run(run)
    for case in run.cases:
        j.write_case(case)
    j.close()
    back = read_journal(tmp_path / "journal.jsonl")
    assert back.to_dict() == {**run.to_dict(), "duration": run.duration}
    assert [c.outcome for c in back.cases] == [Outcome.PASS, Outcome.FAIL, Outcome.SKIP,
                                               Outcome.PASS, Outcome.ERROR]


def test_each_record_is_on_disk_when_write_case_returns(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    case = sample_run().cases[0]
    j.write_case(case)
    # read through a separate open file, with the journal still open
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"type": "journal", "schema_version": 1,
                                    "engine_version": __version__}
    assert json.loads(lines[1]) == {"type": "case", "case": case.to_dict()}
    j.close()


@pytest.mark.parametrize("torn", [b'{"type": "case", "case": {"case_id": "x', b"\x00\x00\x00\x00",
                                  b'{"type": "ca', b"not json\n"])
def test_a_torn_last_line_is_ignored(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    run = sample_run()
    for case in run.cases[:3]:
        j.write_case(case)
    j.close()
    with open(path, "ab") as f:
        f.write(torn)
    assert list(finished_cases(path)) == [c.case_id for c in run.cases[:3]]


def test_resume_cuts_the_torn_line_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    run = sample_run()
    j = Journal(path)
    j.write_case(run.cases[0])
    j.close()
    with open(path, "ab") as f:
        f.write(b'{"type": "case", "ca')
    j = Journal(path, resume=True)
    assert [c.case_id for c in j.previous.cases] == [run.cases[0].case_id]
    j.write_case(run.cases[1])
    j.close()
    assert list(finished_cases(path)) == [run.cases[0].case_id, run.cases[1].case_id]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_without_resume_the_journal_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.write_case(sample_run().cases[0])
    j.close()
    Journal(path).close()
    assert finished_cases(path) == {}


def test_a_case_recorded_twice_keeps_its_last_result(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    a, b = sample_run().cases[:2]
    again = sample_run().cases[0]
    again.outcome = Outcome.FAIL
    j = Journal(path)
    for case in (a, b, again):
        j.write_case(case)
    j.close()
    cases = read_journal(path).cases
    assert [(c.case_id, c.outcome) for c in cases] == [(b.case_id, b.outcome),
                                                       (a.case_id, Outcome.FAIL)]


def test_damage_before_the_last_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for case in sample_run().cases[:2]:
        j.write_case(case)
    j.close()
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match=r"journal.jsonl:2: damaged journal line"):
        read_journal(path)


def test_no_journal_means_nothing_finished(tmp_path: Path) -> None:
    assert finished_cases(tmp_path / "missing.jsonl") == {}


def test_a_newer_journal_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"type": "journal", "schema_version": 99}\n')
    with pytest.raises(JournalError, match="newer"):
        read_journal(path)


@pytest.mark.parametrize("content", [b"<xml/>", b'{"type": "case", "case": {}}\n', b"hello\nworld\n"])
def test_a_file_that_is_no_journal_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(content)
    with pytest.raises(JournalError, match="not a vfio-scenario journal"):
        read_journal(path)


@pytest.mark.parametrize("content", [b"", b'{"type": "jou', b'{"type": "journal", "schema_version": 1}',
                                     b'{"type": "journal", "schema_version": 1, "engine_ver'])
def test_a_journal_killed_at_birth_is_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(content)
    assert read_journal(path).cases == []
    j = Journal(path, resume=True)
    j.write_case(sample_run().cases[0])
    j.close()
    assert list(finished_cases(path)) == [sample_run().cases[0].case_id]
