"""jinja2 templating of single values, sandboxed.

A value that is exactly one `{{ expression }}` is evaluated as an expression and
keeps its type (an int stays an int); any other string with `{{`/`{%` renders to a
string. Undefined names are errors (StrictUndefined); the sandbox refuses access to
Python internals (`''.__class__`), and no loader is configured, so templates cannot
read files (`{% include %}` has nothing to include from).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)


class TemplateProblem(ValueError):
    """A template that does not render; the message is meant for the user."""


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


class _Lookup:
    """`{{ name }}`: a plain variable lookup, without a jinja2 context per call."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, **context: Any) -> Any:
        try:
            return context[self.name]
        except KeyError:
            raise UndefinedError(f"'{self.name}' is undefined") from None


@lru_cache(maxsize=4096)
def _compiled(source: str) -> tuple[bool, Any, tuple[str, ...]]:
    """(single expression?, callable, the variables the template reads)."""
    m = _SINGLE.match(source)
    if m and _NAME.match(m.group("expr")):
        name = m.group("expr").strip()
        return True, _Lookup(name), (name,)
    try:
        names = tuple(sorted(meta.find_undeclared_variables(_ENV.parse(source))))
    except TemplateError:
        names = ()
    if m:
        return True, _ENV.compile_expression(m.group("expr"), undefined_to_none=False), names
    return False, _ENV.from_string(source), names


# Results of templates by (source, values of the variables they read): the cases of a
# matrix render the same value many times, and a jinja2 render costs tens of µs.
_RESULTS: dict[tuple[Any, ...], Any] = {}
_SCALAR_TYPES = (int, float, str, bool, type(None))


def template_names(source: str) -> tuple[str, ...]:
    """The variables a templated string reads (none for a template that does not parse:
    rendering it reports the syntax error where it stands)."""
    try:
        return _compiled(source)[2]
    except TemplateError:
        return ()


def render(value: str, context: dict[str, Any]) -> Any:
    """Render one templated string with `context`; raises TemplateProblem."""
    try:
        single, compiled, names = _compiled(value)
        key: tuple[Any, ...] | None = None
        inputs = tuple(context.get(n, _RESULTS) for n in names)
        # exact types: a device name (a str with its driver) must not share a result
        # with the same BDF served by another driver
        if all(type(v) in _SCALAR_TYPES for v in inputs):
            key = (value, inputs)
            if key in _RESULTS:
                return _RESULTS[key]
        result = compiled(**context) if single else compiled.render(**context)
        if single and isinstance(result, StrictUndefined):
            str(result)  # raises UndefinedError with the name
        if key is not None and isinstance(result, _SCALAR_TYPES) and len(_RESULTS) < 100_000:
            _RESULTS[key] = result
    except SecurityError as exc:
        raise TemplateProblem(f"template refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise TemplateProblem(_undefined_message(exc.message or "")) from None
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}") from None
    except TypeError as exc:
        if "no loader" in str(exc):
            raise TemplateProblem(
                "templates cannot read files: {% include %}, {% import %} and {% extends %} "
                "are not available"
            ) from None
        raise TemplateProblem(f"template failed: TypeError: {exc}") from None
    except (ArithmeticError, ValueError, LookupError, AttributeError) as exc:
        raise TemplateProblem(f"template failed: {type(exc).__name__}: {exc}") from None
    return result


_NO_ATTRIBUTE = re.compile(r"^'(?P<obj>[\w.]+) object' has no attribute '(?P<attr>\w+)'$")


def _undefined_message(message: str) -> str:
    """The user's words for an undefined name or attribute (a driver's, a device's)."""
    from vfio_scenario.language.devices import DRIVER_ATTRIBUTES

    m = _NO_ATTRIBUTE.match(message)
    if m and m.group("obj").endswith("DriverFacts"):
        return (f"a driver has no attribute `{m.group('attr')}` "
                f"(it has {', '.join(DRIVER_ATTRIBUTES)})")
    if m and m.group("obj").endswith("DeviceName"):
        return f"a device has no attribute `{m.group('attr')}` (it has `driver`)"
    if message == "'None' has no attribute 'name'" or message.startswith("'None' has no attr"):
        return f"undefined template variable: {message} (a device without a scenario driver)"
    if message == "'driver' is undefined":
        return ("undefined template variable: 'driver' is undefined (only a scenario that "
                "requires a driver has one: `requires: {driver: any}` or a driver's name)")
    return f"undefined template variable: {message}"


def render_tree(value: Any, context: dict[str, Any], path: tuple[Any, ...],
                problems: list[tuple[tuple[Any, ...], str]]) -> Any:
    """Render every templated string inside `value`; problems are collected with their path."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        try:
            return render(value, context)
        except TemplateProblem as exc:
            problems.append((path, str(exc)))
            return value
    if isinstance(value, dict):
        return {k: render_tree(v, context, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [render_tree(v, context, (*path, i), problems) for i, v in enumerate(value)]
    return value


def template_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """(path, source) of every templated string inside `value`, in document order."""
    if isinstance(value, str):
        return [(path, value)] if is_template(value) else []
    if isinstance(value, dict):
        return [tp for k, v in value.items() for tp in template_paths(v, (*path, k))]
    if isinstance(value, list):
        return [tp for i, v in enumerate(value) for tp in template_paths(v, (*path, i))]
    return []


def substitute(value: Any, tpaths: list[tuple[tuple[Any, ...], str]], values: list[Any]) -> Any:
    """A copy of `value` with the strings at `tpaths` replaced; untouched parts are shared."""
    out = value
    for (path, _), new in zip(tpaths, values):
        out = _replace(out, path, new)
    return out


def _replace(node: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        copy: Any = dict(node)
    else:
        copy = list(node)
    copy[head] = _replace(node[head], rest, new)
    return copy
