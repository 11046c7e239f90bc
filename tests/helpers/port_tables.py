"""The check both selftest-port tables of scenarios/README.md share (iommufd.c and
iommufd_fail_nth.c): the table's case ids against the port's scenario file."""

from __future__ import annotations

import re
from pathlib import Path

from vfio_scenario.language.compile import compile_paths


def check_port_table(port: Path, rows: list[tuple[str, list[str], str]], section: str) -> None:
    """Every case a row names is a case of `port`, a row without one says why it is not
    ported, the section's "N of M C cases are ported" is the count of rows with a case,
    and every case of `port` is in the table."""
    compiled = compile_paths([str(port)], [])
    assert compiled.errors == []
    ids = {c.id.split("::", 1)[1] for c in compiled.cases}
    ported = [r for r in rows if r[1]]
    for c_case, ours, result in rows:
        if not ours:
            assert result.startswith("not ported"), c_case
        for case in ours:
            assert case in ids, f"{c_case}: {case} is not a case of {port.name}"
    claim = re.search(r"(\d+) of (\d+) C cases are ported", section)
    assert claim, "the section says how many C cases are ported"
    assert (int(claim[1]), int(claim[2])) == (len(ported), len(rows))
    assert ids == {case for r in ported for case in r[1]}
