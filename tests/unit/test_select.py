"""-k expressions, --shard I/N."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from vfio_scenario.errors import ExitCode, UsageError
from vfio_scenario.select import parse_keyword, parse_shard, shard, shard_of

IDS = [
    "scenarios/dma/map.yaml::map-unmap[iommu_mode=iommufd,size=4096]",
    "scenarios/dma/map.yaml::map-unmap[iommu_mode=vfio_type1v2_iommu,size=4096]",
    "scenarios/driver/memcpy.yaml::driver-memcpy[iommu_mode=iommufd,size=256]",
    "scenarios/dmabuf/revoke.yaml::dmabuf-revoke[iommu_mode=iommufd]",
]
TAGS = {IDS[0]: ["dma"], IDS[1]: ["dma", "type1"], IDS[2]: ["driver", "dma"],
        IDS[3]: ["dmabuf", "slow"]}


def selected(expr: str) -> list[int]:
    k = parse_keyword(expr)
    return [i for i, cid in enumerate(IDS) if k.matches(cid, TAGS[cid])]


@pytest.mark.parametrize(("expr", "expected"), [
    ("map", [0, 1]),
    ("map-unmap", [0, 1]),
    ("MEMCPY", [2]),  # case-insensitive
    ("iommufd and not dmabuf", [0, 2]),
    ("driver or dmabuf", [2, 3]),
    ("not (driver or dmabuf)", [0, 1]),
    ("dma and not type1 and not slow", [0, 2]),
    ("slow", [3]),  # a tag
    ("size=4096", [0, 1]),
    ("map-unmap[iommu_mode=iommufd,size=4096]", [0]),  # an id as printed
    ("'iommu_mode=iommufd]'", [3]),
    ('"size=256" or "revoke"', [2, 3]),
    ("not not driver", [2]),
    ("type1 or slow and driver", [1]),  # and binds tighter than or
    ("driver or dma and slow", [2, 3]),
    ("(driver or dma) and slow", [3]),
    ("", [0, 1, 2, 3]),
    ("   ", [0, 1, 2, 3]),
])
def test_keyword_expression_selects(expr: str, expected: list[int]) -> None:
    assert selected(expr) == expected


@pytest.mark.parametrize(("expr", "message"), [
    ("and", "column 1: unexpected 'and'; expected a word, 'not' or '('"),
    ("dma and", "column 8: expression ends where a word, 'not' or '(' is expected"),
    ("dma or or x", "column 8: unexpected 'or'; expected a word, 'not' or '('"),
    ("(dma", "column 1: '(' is never closed"),
    ("dma)", "column 4: unexpected ')' without '('; expected 'and', 'or' or the end"),
    ("dma driver", "column 5: unexpected 'driver'; expected 'and', 'or' or the end"),
    ("()", "column 2: unexpected ')'; expected a word, 'not' or '('"),
    ("'dma", "column 1: unterminated quoted word (no closing ')"),
    ('x and ""', "column 7: empty quoted word"),
    ("not", "column 4: expression ends where a word, 'not' or '(' is expected"),
])
def test_keyword_syntax_errors_name_the_column(expr: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_keyword(expr)
    text = str(info.value)
    assert text.splitlines()[0] == f"-k {expr!r}: {message}"
    column = int(message.split(":")[0].split()[1])
    assert text.splitlines()[2] == "  " + " " * (column - 1) + "^"
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(("spec", "expected"), [("1/1", (1, 1)), ("2/4", (2, 4)),
                                                 (" 3 / 3 ", (3, 3))])
def test_shard_spec_parses(spec: str, expected: tuple[int, int]) -> None:
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["0/4", "5/4", "1/0", "a/b", "1-4", "2", "-1/4", "1/4/2"])
def test_bad_shard_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(spec)


MANY = [f"scenarios/f{f}.yaml::s[iommu_mode={m},size={s}]"
        for f in range(7) for m in ("iommufd", "vfio_type1v2_iommu", "iommufd_compat_type1")
        for s in range(16)]  # 336 cases


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 336, 400])
def test_every_case_lands_in_exactly_one_balanced_shard(count: int) -> None:
    shards = [shard(MANY, i, count) for i in range(1, count + 1)]
    assert sorted(c for s in shards for c in s) == sorted(MANY)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    for s in shards:  # each shard keeps the run order
        assert s == [c for c in MANY if c in set(s)]


def test_shards_do_not_depend_on_input_order() -> None:
    reordered = list(reversed(MANY))
    for i in range(1, 5):
        assert set(shard(MANY, i, 4)) == set(shard(reordered, i, 4))


def test_shards_spread_each_file_over_all_shards() -> None:
    per_file = Counter((shard_of(MANY, 4)[c], c.split("::")[0]) for c in MANY)
    for f in range(7):
        counts = [per_file[(i, f"scenarios/f{f}.yaml")] for i in range(1, 5)]
        assert min(counts) >= 6, counts  # 48 cases of a file: about 12 each, never 0


def test_shards_are_stable_across_processes() -> None:
    code = ("from vfio_scenario.select import shard\n"
            "ids=[f'c{i}' for i in range(50)]\nprint(shard(ids, 2, 3))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed}, check=True).stdout for seed in ("1", "2")}
    assert len(runs) == 1
    assert runs.pop().strip() == str(shard([f"c{i}" for i in range(50)], 2, 3))


def test_shard_returns_the_parallel_items() -> None:
    items = [object() for _ in MANY]
    got = shard(MANY, 2, 3, items=items)
    assert [MANY[items.index(x)] for x in got] == shard(MANY, 2, 3)


@pytest.mark.parametrize(("args", "message"), [
    (["-k", "dma and"], "vfio-scenario: -k 'dma and': column 8: expression ends where a word"),
    (["--shard", "5/4"], "vfio-scenario: --shard '5/4': I must be between 1 and N"),
])
def test_run_reports_bad_selection_as_usage_error(args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from vfio_scenario.cli import main

    library = Path(__file__).resolve().parents[2] / "scenarios"
    assert main(["run", str(library), *args]) == ExitCode.USAGE
    assert capsys.readouterr().err.startswith(message)
