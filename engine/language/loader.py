"""YAML → plain Python values with the line:col of every node kept.

ruamel.yaml composes the node graph (its C composer where installed); this module
turns nodes into dicts, lists and scalars itself so that it can
- remember the position of every value and every mapping key (by path),
- report every duplicate key instead of stopping at the first,
- cap alias expansion ("billion laughs") and file size before any work explodes.
"""

from __future__ import annotations

import os
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

    def scalar(self, node: ScalarNode) -> Any:
        tag = node.ctag
        # a resolved tag is a full URI in `suffix` (no handle): the key needs no string
        # built per scalar; a tag written with a handle (!!int, !e!x) goes through str()
        key = (tag.suffix if tag.handle is None else str(tag), node.value)
        try:
            return _SCALAR_MEMO[key]
        except KeyError:
            pass
        constructor = self.yaml.constructor
        try:
            value = constructor.construct_object(node, deep=True)
        except YAMLError as exc:
            raise ScenarioError(self._loc(node), f"bad scalar: {exc}") from None
        finally:
            constructor.constructed_objects.clear()
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
        inner = (*stack, id(node))
        if isinstance(node, SequenceNode):
            return [self.build(item, inner) for item in node.value]
        if isinstance(node, MappingNode):
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


def load_text(text: str, path: str) -> tuple[Document, list[ScenarioError]]:
    """Parse YAML text; returns the document and every problem found in it."""
    doc = Document(path=path, data=None)
    yaml = _YAML_VERSIONED if "%YAML" in text else _YAML
    try:
        node = yaml.compose(text)
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
        return doc, [ScenarioError(Location(path, 1, 1), "document nested too deeply")]
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
        if os.path.isdir(p):
            found.extend(sorted(_walk(p)))
        elif os.path.exists(p):
            found.append(p)
        else:
            errors.append(ScenarioError(Location(p), "no such file or directory"))
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
