"""Fuzzing the loader and the validator with Hypothesis.

Two generators: scenario trees (the language's own keys and operations with arguments
of every kind: huge and negative integers, NaN, templates, handles, wrong types) dumped
to YAML and then mutated with YAML's special characters and tags; and raw text over the
characters YAML gives meaning to. Whatever comes out, loading and compiling must return
located errors or cases, never raise.

CI-sized by default (derandomized, a fixed number of examples, a few seconds). A longer
session explores at random: VFIO_SCENARIO_FUZZ_EXAMPLES=20000 python -m pytest THIS_FILE.
Files that crashed are kept in tests/data/hostile/ with their message.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import COMMON_KEYS, OPERATIONS, SCENARIO_KEYS

LONG = int(os.environ.get("VFIO_SCENARIO_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=LONG or 60, derandomize=not LONG, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

HANDLES = ["iommu", "dev", "buf", "map", "irq", "cdev", "ioas", "mmio", "dmabuf", "x"]
VAR_NAMES = ["iova", "size", "n", "s", "iommu_mode", "device", "devices"]
TEMPLATES = [
    "{{ iova }}", "{{ iova + 0x1000 }}", "{{ size * n }}", "{{ 2 ** n }}", "{{ 'a' * n }}",
    "{{ undefined_name }}", "{{ s|int }}", "{{ s|float }}", "{{ ''.__class__ }}", "{{ 1 / 0 }}",
    "{{ [1] * 3 }}", "{{ {'a': 1} }}", "{{ device }}", "{{ devices[9] }}", "{% if n %}1{% endif %}",
    "{% for i in range(n) %}{{ i }}{% endfor %}", "{{ 10 ** 400 }}", "{{ -1 }}", "{{ 0xffffffffffffffff + 1 }}",
    "{{ 'nan'|float }}", "{{ n|float * 1e308 * 10 }}", "{{ (", "{% for %}", "{{ iommu_mode }}",
    "{{ lipsum(2) }}", "{{ range(10)|list }}", "{{ '%x'|format(iova) }}", "{{ s ~ s }}",
]

ints = st.one_of(
    st.integers(-5, 5000), st.sampled_from([0, 1, 4096, 2**31, 2**32, 2**63, 2**64 - 1, 2**64,
                                            -(2**63) - 1, 2**80, 10**30]),
    st.integers(-(2**70), 2**70),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.5, 1e400, -0.0, 1e-300, 86400.0, 86400.5]))
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["1s", "500ms", "2MiB", "4KiB", "0x1000", "0xZZ", "25h", "1e400", "-1",
                     "nan", "inf", "ok", "EINVAL", "SIGBUS", "bar0", "max", "last", "iommufd",
                     "vfio_type1v2_iommu", "0000:00:03.0", "random", "zero", "msix"]),
    st.sampled_from(HANDLES), st.sampled_from(TEMPLATES),
)
scalars = st.one_of(ints, floats, texts, st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "size", "offset",
                                                                   "buffer"]), inner, max_size=3)),
    max_leaves=6)


@st.composite
def steps(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(sorted(OPERATIONS)))
    fields = [f.alias or n for n, f in OPERATIONS[op].model_fields.items()]
    chosen = draw(st.lists(st.sampled_from([*fields, "bogus"]), max_size=4, unique=True))
    args = {name: draw(values) for name in chosen}
    step: dict[str, Any] = {op: draw(st.one_of(st.just(args), values))}
    for key in draw(st.lists(st.sampled_from(COMMON_KEYS), max_size=2, unique=True)):
        step[key] = draw(st.one_of(st.sampled_from(HANDLES), values))
    return step


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from([*SCENARIO_KEYS, "stepz"]), max_size=6, unique=True))
    doc: dict[str, Any] = {}
    for key in keys:
        if key == "matrix":
            doc[key] = draw(st.dictionaries(st.sampled_from(["n", "size", "iommu_mode", "include",
                                                             "exclude"]),
                                            st.lists(scalars, max_size=4), max_size=3))
        elif key == "vars":
            doc[key] = draw(st.dictionaries(st.sampled_from(VAR_NAMES), values, max_size=4))
        elif key in ("steps", "teardown"):
            doc[key] = draw(st.lists(steps(), max_size=5))
        else:
            doc[key] = draw(values)
    doc.setdefault("steps", draw(st.lists(steps(), min_size=1, max_size=5)))
    return doc


def _dump(data: Any) -> str:
    yaml = YAML(typ="safe", pure=True)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


LIBRARY = Path(__file__).resolve().parents[2] / "scenarios"
LIBRARY_FILES = sorted(LIBRARY.rglob("*.yaml"))


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `node` (mapping keys and list indexes)."""
    out = [here]
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for k, v in items:
        out += _paths(v, (*here, k))
    return out


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _set(node[path[0]], path[1:], value)
    return copy


@functools.cache
def _library(path: Path) -> Any:
    return YAML(typ="safe", pure=False).load(path.read_text())  # shared: _set copies


@st.composite
def library_mutations(draw: st.DrawFn) -> Any:
    """A scenario file of the library with a few values replaced by drawn ones."""
    data = _library(draw(st.sampled_from(LIBRARY_FILES)))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(_paths(data)))
        data = _set(data, where, draw(values))
    return data


SPECIAL = ["[", "]", "{", "}", ":", "- ", "? ", "!", "!!python/object ", "!foo ", "&a ", "*a ",
           "<<: ", "|", ">", "'", '"', "#", "%YAML 1.1\n", "---\n", "\t", "\n", "  ", ",",
           "\\", "\x00", "\ufeff", "9" * 30, "0x" + "f" * 20, ".nan", ".inf", "{{", "}}", "{%"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = _dump(draw(st.one_of(scenarios(), st.lists(scenarios(), max_size=2),
                                library_mutations())))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:pos] + draw(st.sampled_from(SPECIAL)) + text[pos + cut:]
    return text


raw_text = st.lists(st.sampled_from([*"[]{}:-?!&*|>'\"#%@`,\n\t ab01x.",
                                     "steps", "sleep", "duration", "{{", "}}", "  "]),
                    max_size=150).map("".join)


def _check(text: str) -> None:
    doc, errors = load_text(text, "fuzz.yaml")
    if not errors:
        errors = compile_documents([doc]).errors
    for e in errors:
        loc = e.location
        assert loc.path == "fuzz.yaml"
        assert loc.line >= 1 and loc.col >= 1, str(e)
        assert isinstance(e.message, str) and e.message


@FUZZ
@given(mutated())
def test_scenario_trees_mutated_load_and_compile_without_raising(text: str) -> None:
    _check(text)


@FUZZ
@given(scenarios())
def test_scenario_trees_load_and_compile_without_raising(data: dict[str, Any]) -> None:
    _check(_dump(data))


@FUZZ
@given(library_mutations())
def test_library_files_with_drawn_values_compile_without_raising(data: Any) -> None:
    _check(_dump(data))


@FUZZ
@given(raw_text)
def test_raw_yaml_text_loads_without_raising(text: str) -> None:
    _check(text)


def test_the_generators_reach_both_errors_and_cases() -> None:
    """The fuzz exercises the validator, not only the YAML parser: a fixed draw of
    mutated library files yields valid cases as well as errors."""
    outcomes = set()

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(library_mutations())
    def probe(data: Any) -> None:
        doc, errors = load_text(_dump(data), "fuzz.yaml")
        compiled = compile_documents([doc]) if not errors else None
        outcomes.add("yaml error" if errors else "error" if compiled and compiled.errors
                     else "cases" if compiled and compiled.cases else "nothing")
    probe()
    assert {"error", "cases"} <= outcomes, outcomes


# --- templates: expressions built from jinja's operators, filters and methods ----------

ATOMS = ["0", "1", "2", "-1", "7", "4096", "10**9", "2**63", "0xffffffffffffffff", "1e308",
         "'a'", "'ab'", "''", "'%d'", "'{}'", "'nan'", "[1, 2]", "[]", "{'k': 1}", "n", "s",
         "range(5)", "none", "true", "('9' * 30)"]
BINOPS = ["+", "-", "*", "/", "//", "%", "**", "~", "and", "or", "==", "<", "in"]
FILTERS = ["int", "float", "string", "list", "length", "join", "first", "last", "sum",
           "reverse", "sort", "unique", "abs", "round", "trim", "upper", "center(n)",
           "indent(n)", "format(n)", "replace('a', s)", "batch(n)", "map('string')",
           "select", "wordcount", "truncate(n)", "default(s)", "tojson", "items",
           "dictsort", "slice(n)", "max", "min", "striptags", "urlencode"]
METHODS = ["ljust(n)", "zfill(n)", "split()", "replace('a', 'b')", "count('a')", "upper()",
           "format(n)", "join(s)", "center(n)", "expandtabs(n)", "strip()"]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 3 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(ATOMS))
    kind = draw(st.integers(0, 3))
    inner = draw(expressions(depth + 1))
    if kind == 0:
        return f"({inner} {draw(st.sampled_from(BINOPS))} {draw(expressions(depth + 1))})"
    if kind == 1:
        return f"({inner})|{draw(st.sampled_from(FILTERS))}"
    if kind == 2:
        return f"({inner}).{draw(st.sampled_from(METHODS))}"
    return f"[{inner}, {draw(expressions(depth + 1))}][{draw(st.integers(-2, 2))}]"


SHAPES = ["{{ X }}", "x{{ X }}y", "{% for i in range(3) %}{{ X }}{% endfor %}",
          "{% set v = X %}{{ v }}"]


@FUZZ
@given(expressions(), st.sampled_from(SHAPES),
       st.sampled_from([0, 3, 10**6, 2**40]), st.sampled_from(["a", "", "x" * 1000]))
def test_templates_render_or_give_a_problem(expr: str, shape: str, n: int, s: str) -> None:
    from vfio_scenario.language.templates import TemplateProblem, render

    try:
        render(shape.replace("X", expr), {"n": n, "s": s})
    except TemplateProblem as exc:
        assert str(exc)
