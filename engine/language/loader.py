"""YAML → plain Python values with the line:col of every node kept.

ruamel.yaml composes the node graph (its C composer where installed); this module
turns nodes into dicts, lists and scalars itself so that it can
- remember the position of every value and every mapping key (by path),
- report every duplicate key instead of stopping at the first,
- cap alias expansion ("billion laughs") and file size before any work explodes,
- bound nesting before the C composer (which recurses on the C stack) sees a deep file,
- refuse tags outside the YAML core schema, integers no argument can hold (checked on
  the literal's length, before Python's int-from-string digit limit is reached) and
  floats that are not finite.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from vfio_scenario.errors import Location, ScenarioError

MAX_FILE_BYTES = 1 << 20  # a scenario file is a few KiB; anything near this is a mistake
MAX_NODES = 200_000  # nodes after alias expansion; a library file has a few hundred
MAX_DEPTH = 100  # nesting of mappings and sequences; a scenario needs fewer than 10
# Each level of nesting takes at least one of these characters, so a text with fewer of
# them is shallower than that and is composed at once (the C composer recurses once per
# level on the C stack, safely to well beyond this); a text with more is first scanned
# as an event stream (iterative) that stops at the first node nested too deep.
_NESTING_CHARS = "[{-:?"
_SCAN_ABOVE_C = 2_000
_SCAN_ABOVE_PURE = MAX_DEPTH  # the pure-Python composer recurses in Python frames
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # no argument holds more than a u64 or an s64
_INT_LITERAL_MAX = 70  # characters of the longest spelling of a 64-bit value (0b + 64 bits)
_YAML_TAG = "tag:yaml.org,2002:"
# the YAML 1.2 core schema, plus the timestamp plain dates resolve to
SCALAR_TAGS = frozenset(_YAML_TAG + t for t in ("str", "int", "float", "bool", "null",
                                                "timestamp"))
SEQUENCE_TAG, MAPPING_TAG = _YAML_TAG + "seq", _YAML_TAG + "map"
SCENARIO_SUFFIXES = (".yaml", ".yml")

Path_ = tuple[Any, ...]  # path of a value inside a document: keys and list indexes


@dataclass
class Document:
    """One loaded file: its data, and its YAML nodes, which know where each part came from.

    Positions are looked up in the node tree only when a location is asked for (an
    error), so loading valid files pays nothing for them.
    """

    path: str
    data: Any
    root: Node | None = None
    keys: dict[int, list[tuple[Any, Node, Node]]] = field(default_factory=dict)

    def _child(self, node: Node, part: Any) -> tuple[Node, Node] | None:
        """(key node, value node) of `part` below `node`; the key node is the item for lists."""
        if isinstance(node, MappingNode):
            for key, key_node, value_node in self.keys.get(id(node), ()):
                if key == part:
                    return key_node, value_node
        elif isinstance(node, SequenceNode) and isinstance(part, int) \
                and 0 <= part < len(node.value):
            return node.value[part], node.value[part]
        return None

    def item_locations(self, path: Path_) -> list[Location]:
        """The location of each item of the sequence at `path` (none when it is not one),
        in one walk down the tree instead of one per item."""
        node = self.root
        for part in path:
            found = self._child(node, part) if node is not None else None
            if found is None:
                return []
            node = found[1]
        if not isinstance(node, SequenceNode):
            return []
        return [Location(self.path, n.start_mark.line + 1, n.start_mark.column + 1)
                for n in node.value]

    def location(self, path: Path_, *, key: bool = False) -> Location:
        """The location of `path` (its key with `key`), or of its nearest existing ancestor."""
        node = self.root
        if node is None:
            return Location(self.path, 1, 1)
        mark_node = node
        for i, part in enumerate(path):
            found = self._child(node, part)
            if found is None:
                break
            key_node, node = found
            mark_node = key_node if key and i == len(path) - 1 else node
        mark = mark_node.start_mark
        return Location(self.path, mark.line + 1, mark.column + 1)


def _make_yaml(memo_resolver: bool) -> YAML:
    try:
        yaml = YAML(typ="safe", pure=False)
    except Exception:  # noqa: BLE001 - ruamel.yaml.clib missing: same results, slower
        yaml = YAML(typ="safe", pure=True)
    if memo_resolver:
        base: Any = yaml.Resolver

        class _MemoResolver(base):  # type: ignore[misc]
            """Plain scalars repeat across files; resolving each one again dominates parsing."""

            _memo: ClassVar[dict[tuple[Any, Any, Any], Any]] = {}

            def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
                key = (kind, value, implicit)
                tag = self._memo.get(key)
                if tag is None:
                    tag = super().resolve(kind, value, implicit)
                    if len(self._memo) < 100_000:
                        self._memo[key] = tag
                return tag

        yaml.Resolver = _MemoResolver
    return yaml


# Documents with a %YAML directive resolve scalars by their version: no memo for them.
_YAML = _make_yaml(memo_resolver=True)
_YAML_VERSIONED = _make_yaml(memo_resolver=False)
_SCALAR_MEMO: dict[tuple[str, str], Any] = {}


class _Builder:
    def __init__(self, doc: Document, yaml: YAML) -> None:
        self.doc = doc
        self.yaml = yaml
        self.count = 0
        self.errors: list[ScenarioError] = []

    def _loc(self, node: Node) -> Location:
        return Location(self.doc.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def _check_tag(self, node: Node, allowed: frozenset[str] | str) -> None:
        tag = str(node.tag)
        if tag != allowed and tag not in allowed:
            raise ScenarioError(self._loc(node), f"tag {_show_tag(tag)} is not allowed: scenario "
                                "files use plain YAML (strings, numbers, booleans, null, "
                                "lists, mappings)")

    def scalar(self, node: ScalarNode) -> Any:
        tag = node.ctag
        # a resolved tag is a full URI in `suffix` (no handle): the key needs no string
        # built per scalar; a tag written with a handle (!!int, !e!x) goes through str()
        key = (tag.suffix if tag.handle is None else str(tag), node.value)
        try:
            return _SCALAR_MEMO[key]
        except KeyError:
            pass
        self._check_tag(node, SCALAR_TAGS)
        if node.tag == _YAML_TAG + "int":
            _check_int_literal(node.value, self._loc(node))
        constructor = self.yaml.constructor
        try:
            value = constructor.construct_object(node, deep=True)
        except YAMLError as exc:
            raise ScenarioError(self._loc(node), f"bad scalar: {exc}") from None
        except ValueError as exc:  # the constructor's own int()/float() on a bad literal
            raise ScenarioError(self._loc(node), f"bad scalar {_clip(node.value)}: {exc}") \
                from None
        finally:
            constructor.constructed_objects.clear()
        if isinstance(value, int) and not isinstance(value, bool) \
                and not INT_MIN <= value <= INT_MAX:
            raise ScenarioError(self._loc(node), _int_message(node.value))
        if isinstance(value, float) and not math.isfinite(value):
            raise ScenarioError(self._loc(node), f"{_clip(node.value)} is not a finite number: "
                                "no argument takes NaN or infinity")
        if isinstance(value, (str, int, float, bool, type(None))) and len(_SCALAR_MEMO) < 100_000:
            _SCALAR_MEMO[key] = value
        return value

    def build(self, node: Node, stack: tuple[int, ...] = ()) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ScenarioError(
                self._loc(node),
                f"document expands to more than {MAX_NODES} nodes (an alias bomb?); refusing it",
            )
        if id(node) in stack:
            raise ScenarioError(self._loc(node), "recursive alias: a node contains itself")
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if len(stack) >= MAX_DEPTH:
            raise ScenarioError(self._loc(node), _DEPTH_MESSAGE)
        inner = (*stack, id(node))
        if isinstance(node, SequenceNode):
            self._check_tag(node, SEQUENCE_TAG)
            return [self.build(item, inner) for item in node.value]
        if isinstance(node, MappingNode):
            self._check_tag(node, MAPPING_TAG)
            out: dict[Any, Any] = {}
            keys = self.doc.keys.setdefault(id(node), [])
            first_at: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.value == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                    self.errors.append(
                        ScenarioError(self._loc(key_node), "merge keys (<<) are not supported")
                    )
                    continue
                if not isinstance(key_node, ScalarNode):
                    self.errors.append(
                        ScenarioError(self._loc(key_node), "a mapping key must be a plain scalar")
                    )
                    continue
                key = self.scalar(key_node)
                if isinstance(key, (list, dict)):
                    key = str(key)
                if key in out:
                    self.errors.append(
                        ScenarioError(
                            self._loc(key_node),
                            f"duplicate key {key!r} (first defined at line {first_at[key]})",
                        )
                    )
                    continue
                first_at[key] = key_node.start_mark.line + 1
                keys.append((key, key_node, value_node))
                out[key] = self.build(value_node, inner)
            return out
        raise ScenarioError(self._loc(node), f"unsupported YAML node {node.tag}")


_DEPTH_MESSAGE = f"document nested deeper than {MAX_DEPTH} levels"


def _show_tag(tag: str) -> str:
    return _clip("!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag)


def _clip(text: str, keep: int = 40) -> str:
    """A literal as shown in a message: long ones cut, with their length."""
    return text if len(text) <= keep else f"{text[:keep]}… ({len(text)} characters)"


def _int_message(literal: str) -> str:
    return (f"integer {_clip(literal)} does not fit in 64 bits: no argument holds more than "
            f"a u64 (0 to {INT_MAX:#x}) or an s64 (from {INT_MIN})")


_INT_NOISE = re.compile(r"[_+\-\s]")


def _check_int_literal(literal: str, loc: Location) -> None:
    """Refuse an int literal too long for 64 bits before anything converts it."""
    if len(literal) > _INT_LITERAL_MAX and len(_INT_NOISE.sub("", literal)) > _INT_LITERAL_MAX:
        raise ScenarioError(loc, _int_message(literal))


def _too_deep(text: str, yaml: YAML, path: str) -> ScenarioError | None:
    """The first node nested deeper than MAX_DEPTH, found without composing (see above)."""
    limit = _SCAN_ABOVE_PURE if yaml.Parser.__module__.startswith("ruamel.yaml.parser") \
        else _SCAN_ABOVE_C
    if sum(map(text.count, _NESTING_CHARS)) <= limit:
        return None
    depth = 0
    try:
        for event in yaml.parse(text):
            kind = type(event).__name__
            if kind in ("SequenceStartEvent", "MappingStartEvent"):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    return ScenarioError(Location(path, mark.line + 1, mark.column + 1),
                                         _DEPTH_MESSAGE)
            elif kind in ("SequenceEndEvent", "MappingEndEvent"):
                depth -= 1
    except YAMLError:
        return None  # a syntax error: compose reports it with its position
    return None


def load_text(text: str, path: str) -> tuple[Document, list[ScenarioError]]:
    """Parse YAML text; returns the document and every problem found in it."""
    doc = Document(path=path, data=None)
    yaml = _YAML_VERSIONED if "%YAML" in text else _YAML
    deep = _too_deep(text, yaml, path)
    if deep is not None:
        return doc, [deep]
    try:
        node = yaml.compose(text)
    except RecursionError:
        return doc, [ScenarioError(Location(path, 1, 1), _DEPTH_MESSAGE)]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        ctx = f" ({exc.context})" if exc.context and exc.problem else ""
        return doc, [ScenarioError(Location(path, line, col), f"YAML syntax error: {problem}{ctx}")]
    except YAMLError as exc:
        return doc, [ScenarioError(Location(path, 1, 1), f"YAML error: {exc}")]
    if node is None:
        return doc, [ScenarioError(Location(path, 1, 1), "empty file: no scenario in it")]
    doc.root = node
    builder = _Builder(doc, yaml)
    try:
        doc.data = builder.build(node)
    except ScenarioError as exc:
        return doc, [*builder.errors, exc]
    except RecursionError:
        return doc, [ScenarioError(Location(path, 1, 1), _DEPTH_MESSAGE)]
    return doc, builder.errors


def load_file(path: str | os.PathLike[str]) -> tuple[Document, list[ScenarioError]]:
    """Read and parse one scenario file with the size and encoding checks."""
    name = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return Document(name, None), [
                ScenarioError(
                    Location(name, 1, 1),
                    f"file is {size / 1e6:.1f} MB; scenario files are limited to "
                    f"{MAX_FILE_BYTES >> 20} MiB",
                )
            ]
        raw = Path(path).read_bytes()
    except OSError as exc:
        return Document(name, None), [ScenarioError(Location(name), f"cannot read: {exc.strerror}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return Document(name, None), [
            ScenarioError(
                Location(name, line, col),
                f"file is not UTF-8: byte 0x{raw[exc.start]:02x} cannot be decoded",
            )
        ]
    text = text.removeprefix("\ufeff")
    return load_text(text, name)


def find_scenario_files(paths: list[str]) -> tuple[list[str], list[ScenarioError]]:
    """Expand files and directories (searched recursively for *.yaml / *.yml), sorted."""
    found: list[str] = []
    errors: list[ScenarioError] = []
    for p in paths:
        try:
            is_dir = stat.S_ISDIR(os.stat(p).st_mode)
        except OSError as exc:  # absent, or a symlink loop (ELOOP)
            errors.append(ScenarioError(Location(p), (exc.strerror or str(exc)).lower()))
            continue
        if is_dir:
            found.extend(sorted(_walk(p)))
        else:
            found.append(p)
    seen: set[str] = set()
    unique = []
    for f in found:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


def _walk(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.endswith(SCENARIO_SUFFIXES) and not f.startswith("."):
                yield os.path.join(dirpath, f)
