"""Choosing cases to run: `-k EXPR`, `--tag T` and `--shard I/N`.

`-k` works like pytest's: words are case-insensitive substrings of the case id or of
one of its tags, combined with `and`, `or`, `not` and parentheses (`not` binds
tighter than `and`, `and` tighter than `or`). A word is any run of characters other
than blanks, quotes and parentheses, so case ids can be written as they print
(`memcpy[iommu_mode=iommufd,size=256]`); a quoted word ("..." or '...') may hold
anything but its own quote.

`--shard I/N` splits cases so that every case is in exactly one of the N shards,
shard sizes differ by at most one, and the split depends only on the set of case ids
(not on their order, the machine or PYTHONHASHSEED): cases are ordered by the SHA-256
of their id and dealt round-robin. Dealing in hash order spreads each scenario file
and IOMMU mode over all shards instead of handing one shard all the slow cases.

`--shard-by duration --durations FILE` balances expected time instead of counts:
each case's expected duration is its time in FILE (a journal or JSON report of an
earlier run; a case FILE lacks expects the median of the known ones), and cases are
taken longest first (ties in hash order) and each given to the shard with the least
expected time so far (ties: the one with fewer cases, then the lower shard), greedy
longest-processing-time. The split depends only on the ids and FILE.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, overload

from vfio_scenario.errors import UsageError

T = TypeVar("T")

_KEYWORDS = ("and", "or", "not")


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "and", "or", "not", "(", ")", "end"
    text: str
    pos: int  # 0-based column in the expression


class KeywordExpr:
    """A parsed `-k` expression; `matches` says whether a case is selected."""

    def __init__(self, source: str, tree: _Node | None) -> None:
        self.source = source
        self._tree = tree

    def matches(self, case_id: str, tags: Iterable[str] = ()) -> bool:
        """True when the expression holds for this case (an empty expression matches all)."""
        if self._tree is None:
            return True
        haystacks = [case_id.lower(), *(t.lower() for t in tags)]
        return self._tree.eval(haystacks)

    def __repr__(self) -> str:
        return f"KeywordExpr({self.source!r})"


class _Node:
    def eval(self, haystacks: list[str]) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class _Word(_Node):
    word: str

    def eval(self, haystacks: list[str]) -> bool:
        return any(self.word in h for h in haystacks)


@dataclass(frozen=True)
class _Not(_Node):
    operand: _Node

    def eval(self, haystacks: list[str]) -> bool:
        return not self.operand.eval(haystacks)


@dataclass(frozen=True)
class _And(_Node):
    left: _Node
    right: _Node

    def eval(self, haystacks: list[str]) -> bool:
        return self.left.eval(haystacks) and self.right.eval(haystacks)


@dataclass(frozen=True)
class _Or(_Node):
    left: _Node
    right: _Node

    def eval(self, haystacks: list[str]) -> bool:
        return self.left.eval(haystacks) or self.right.eval(haystacks)


def _error(expr: str, pos: int, message: str) -> UsageError:
    return UsageError(f"-k {expr!r}: column {pos + 1}: {message}\n  {expr}\n  {' ' * pos}^")


_BARE = re.compile(r"""[^\s()"']+""")


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(expr):
        ch = expr[pos]
        if ch.isspace():
            pos += 1
        elif ch in "()":
            tokens.append(_Token(ch, ch, pos))
            pos += 1
        elif ch in "\"'":
            end = expr.find(ch, pos + 1)
            if end < 0:
                raise _error(expr, pos, f"unterminated quoted word (no closing {ch})")
            if end == pos + 1:
                raise _error(expr, pos, "empty quoted word")
            tokens.append(_Token("word", expr[pos + 1 : end], pos))
            pos = end + 1
        else:
            m = _BARE.match(expr, pos)
            assert m is not None  # every other character starts a bare word
            text = m.group(0)
            tokens.append(_Token(text if text in _KEYWORDS else "word", text, pos))
            pos = m.end()
    tokens.append(_Token("end", "", len(expr)))
    return tokens


class _Parser:
    """Recursive descent: or_expr := and_expr ('or' and_expr)*; and_expr := not_expr
    ('and' not_expr)*; not_expr := 'not' not_expr | '(' or_expr ')' | word."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> _Node:
        node = self.or_expr()
        tok = self.peek()
        if tok.kind != "end":
            what = "')' without '('" if tok.kind == ")" else f"{tok.text!r}"
            raise _error(self.expr, tok.pos, f"unexpected {what}; expected 'and', 'or' or the end")
        return node

    def or_expr(self) -> _Node:
        node = self.and_expr()
        while self.peek().kind == "or":
            self.take()
            node = _Or(node, self.and_expr())
        return node

    def and_expr(self) -> _Node:
        node = self.not_expr()
        while self.peek().kind == "and":
            self.take()
            node = _And(node, self.not_expr())
        return node

    def not_expr(self) -> _Node:
        tok = self.take()
        if tok.kind == "not":
            return _Not(self.not_expr())
        if tok.kind == "(":
            node = self.or_expr()
            close = self.peek()
            if close.kind != ")":
                raise _error(self.expr, close.pos if close.kind != "end" else tok.pos,
                             "'(' is never closed" if close.kind == "end"
                             else f"expected ')', found {close.text!r}")
            self.take()
            return node
        if tok.kind == "word":
            return _Word(tok.text.lower())
        if tok.kind == "end":
            raise _error(self.expr, tok.pos, "expression ends where a word, 'not' or '(' is expected")
        raise _error(self.expr, tok.pos, f"unexpected {tok.text!r}; expected a word, 'not' or '('")


def parse_keyword(expr: str) -> KeywordExpr:
    """Parse a `-k` expression; raises UsageError (exit 2) naming the column on bad syntax."""
    if not expr.strip():
        return KeywordExpr(expr, None)
    return KeywordExpr(expr, _Parser(expr).parse())


_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse `I/N` (1-based I, 1 <= I <= N) into (I, N); raises UsageError otherwise."""
    m = _SHARD.fullmatch(spec)
    if not m:
        raise UsageError(f"--shard {spec!r}: expected I/N, e.g. 2/4")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard {spec!r}: I must be between 1 and N, and N at least 1")
    return index, count


def _hash_order(case_ids: Sequence[str]) -> list[int]:
    """Indices of `case_ids` sorted by the SHA-256 of the id (ties: id, then position)."""
    return sorted(range(len(case_ids)),
                  key=lambda i: (hashlib.sha256(case_ids[i].encode()).digest(), case_ids[i], i))


def shard_of(case_ids: Sequence[str], count: int) -> dict[str, int]:
    """Map each case id to its 1-based shard number out of `count` (see the module doc)."""
    order = _hash_order(case_ids)
    return {case_ids[i]: rank % count + 1 for rank, i in enumerate(order)}


@overload
def shard(case_ids: Sequence[str], index: int, count: int) -> list[str]: ...


@overload
def shard(case_ids: Sequence[str], index: int, count: int, items: Sequence[T]) -> list[T]: ...


def shard(case_ids: Sequence[str], index: int, count: int,
          items: Sequence[T] | None = None) -> list[str] | list[T]:
    """The cases of shard `index` (1-based) of `count`, in their given order.

    `items`, when given, runs parallel to `case_ids` and is what is returned (e.g. the
    compiled cases themselves)."""
    if items is not None and len(items) != len(case_ids):
        raise ValueError("items must run parallel to case_ids")
    order = _hash_order(case_ids)
    mine = sorted(i for rank, i in enumerate(order) if rank % count + 1 == index)
    if items is None:
        return [case_ids[i] for i in mine]
    return [items[i] for i in mine]


def median(values: Sequence[float]) -> float:
    """The median of `values` (0.0 for none)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def expected_times(case_ids: Sequence[str], durations: dict[str, float],
                   default: float | None = None) -> list[float]:
    """Each case's expected seconds: its entry in `durations` (looked up as written,
    then with its parameters in name order), else `default` (None: the median of the
    known durations of these cases, or of all of `durations` when none is known)."""
    normalized = {normalize_case_id(k): v for k, v in durations.items()}

    def known(case_id: str) -> float | None:
        value = durations.get(case_id)
        return value if value is not None else normalized.get(normalize_case_id(case_id))

    found = [known(c) for c in case_ids]
    if default is None:
        default = median([f for f in found if f is not None] or list(durations.values()))
    return [f if f is not None else default for f in found]


@overload
def shard_by_duration(case_ids: Sequence[str], index: int, count: int,
                      durations: dict[str, float]) -> list[str]: ...


@overload
def shard_by_duration(case_ids: Sequence[str], index: int, count: int,
                      durations: dict[str, float], items: Sequence[T]) -> list[T]: ...


def shard_by_duration(case_ids: Sequence[str], index: int, count: int,
                      durations: dict[str, float], items: Sequence[T] | None = None
                      ) -> list[str] | list[T]:
    """The cases of shard `index` (1-based) of `count`, balanced by expected time
    (see the module doc), in their given order; `items` as for `shard`."""
    if items is not None and len(items) != len(case_ids):
        raise ValueError("items must run parallel to case_ids")
    mine = sorted(duration_shards(case_ids, count, durations)[index - 1])
    if items is None:
        return [case_ids[i] for i in mine]
    return [items[i] for i in mine]


def duration_shards(case_ids: Sequence[str], count: int,
                    durations: dict[str, float]) -> list[list[int]]:
    """Indices of `case_ids` in each of `count` shards, balanced by expected time."""
    times = expected_times(case_ids, durations)
    rank = {i: r for r, i in enumerate(_hash_order(case_ids))}
    order = sorted(range(len(case_ids)), key=lambda i: (-times[i], rank[i]))
    loads = [0.0] * count
    shards: list[list[int]] = [[] for _ in range(count)]
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], len(shards[s]), s))
        loads[target] += times[i]
        shards[target].append(i)
    return shards


def load_durations(path: str) -> dict[str, float]:
    """Case id → seconds, from a journal or JSON report of an earlier run; UsageError
    (exit 2) naming the file when it is neither."""
    from vfio_scenario.report.merge import load_results

    return {c.case_id: float(c.duration) for c in load_results(path).cases}


# -- case ids ----------------------------------------------------------------------

_PARAM = re.compile(r"(?:^|,)([A-Za-z_][A-Za-z0-9_]*)=")


def parse_case_id(case_id: str) -> tuple[str, str, dict[str, str]]:
    """(file, scenario name, matrix parameters as written) of `path::name[k=v,…]`.

    Ids are written with their parameters sorted by name (language.compile.case_id);
    a value may itself hold commas or brackets (a list prints as `[1, 2]`), so a
    parameter starts only at `,name=`. The file is split off as the reports do
    (report.describe.split_case_id: its name may hold `::`); an id without `::` has
    no file part ("")."""
    from vfio_scenario.report.describe import split_case_id

    parts = split_case_id(case_id)
    file, rest = parts if parts else ("", case_id)
    if not rest.endswith("]") or "[" not in rest:
        return file, rest, {}
    name, _, inner = rest[:-1].partition("[")
    starts = list(_PARAM.finditer(inner))
    if not starts or starts[0].start() != 0:
        return file, rest, {}
    params: dict[str, str] = {}
    for m, nxt in zip(starts, [*starts[1:], None], strict=True):
        end = nxt.start() if nxt is not None else len(inner)
        params[m.group(1)] = inner[m.end():end]
    return file, name, params


def normalize_case_id(case_id: str) -> str:
    """The id with its matrix parameters in name order: two ids that differ only in the
    order of their parameters normalize to the same text."""
    file, name, params = parse_case_id(case_id)
    if not params:
        return case_id
    inner = ",".join(f"{k}={params[k]}" for k in sorted(params))
    return f"{file}::{name}[{inner}]" if file else f"{name}[{inner}]"
