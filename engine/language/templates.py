"""jinja2 templating of single values, sandboxed.

A value that is exactly one `{{ expression }}` is evaluated as an expression and
keeps its type (an int stays an int); any other string with `{{`/`{%` renders to a
string. Undefined names are errors (StrictUndefined); the sandbox refuses access to
Python internals (`''.__class__`), and no loader is configured, so templates cannot
read files (`{% include %}` has nothing to include from).

Templates run with limits (LIMITS below): a rendered value and every string or list
built on the way are at most MAX_SIZE characters or items (checked before `*`, `+`,
`%` and `**` compute, and on what every filter and method call returns), integers at
most MAX_INT_BITS bits, CPU time per template at most CPU_SECONDS (SIGPROF, in the main
thread), and the process may grow by at most MEMORY_MARGIN while one renders
(RLIMIT_AS): what a check before an operation cannot see fails fast as a MemoryError.
Exceeding one is a TemplateProblem naming the limit, located like any other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_SIZE = 1 << 20          # characters of a string, items of a list or mapping
MAX_INT_BITS = 1024         # bits of an integer (an argument takes at most 64)
CPU_SECONDS = 1.0           # CPU time of one template
MEMORY_MARGIN = 64 << 20    # bytes the process may grow by while a template renders
LIMITS = {"size": f"{MAX_SIZE >> 20} MiB ({MAX_SIZE:,} characters or items)",
          "integer": f"{MAX_INT_BITS} bits", "time": f"{CPU_SECONDS:g} s of CPU",
          "memory": f"{MEMORY_MARGIN >> 20} MiB"}


class LimitExceeded(SecurityError):
    """A template went past one of the limits; the message names it."""


class _OutOfTime(BaseException):
    """Raised by SIGPROF in the middle of a template (BaseException: nothing swallows it)."""


def _size_error(what: str, n: int) -> LimitExceeded:
    return LimitExceeded(f"{what} would hold {n:,} characters or items: over the limit of "
                         f"{LIMITS['size']}")


def _int_error(bits: int) -> LimitExceeded:
    return LimitExceeded(f"an integer of about {bits:,} bits: over the limit of "
                         f"{LIMITS['integer']}")


def _bits(v: Any) -> int:
    return v.bit_length() if isinstance(v, int) else 0


_SEQUENCES = (str, bytes, list, tuple)
_WIDTH = re.compile(r"%[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_product(left: Any, right: Any) -> None:
    if isinstance(left, _SEQUENCES) and isinstance(right, int):
        if len(left) * right > MAX_SIZE:
            raise _size_error(f"{type(left).__name__} * {right}", len(left) * right)
    elif isinstance(right, _SEQUENCES) and isinstance(left, int):
        if len(right) * left > MAX_SIZE:
            raise _size_error(f"{left} * {type(right).__name__}", len(right) * left)
    elif _bits(left) + _bits(right) - 1 > MAX_INT_BITS:
        raise _int_error(_bits(left) + _bits(right) - 1)


def _check_power(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        bits = (_bits(left) - 1) * min(right, 1 << 40) + 1  # the fewest the result has
        if bits > MAX_INT_BITS:
            raise _int_error(bits)


def _check_sum(left: Any, right: Any) -> None:
    if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES) \
            and len(left) + len(right) > MAX_SIZE:
        raise _size_error(f"{type(left).__name__} + {type(right).__name__}",
                          len(left) + len(right))


def _check_format(left: Any, right: Any) -> None:
    if not isinstance(left, str):
        return
    for m in _WIDTH.finditer(left):
        for n in m.groups():
            if n == "*" or (n is not None and (len(n) > 7 or int(n) > MAX_SIZE)):
                raise LimitExceeded(f"a %-format width or precision of {n}: over the limit "
                                    f"of {LIMITS['size']}")


_OPERAND_CHECKS = {"*": _check_product, "**": _check_power, "+": _check_sum,
                   "%": _check_format}


def _check_operands(op: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would exceed a limit, before computing it."""
    check = _OPERAND_CHECKS.get(op)
    if check is not None:
        check(left, right)


def _check_value(value: Any, what: str = "a value") -> Any:
    """`value` if it is within the size and integer limits (strings, lists and mappings
    inside it counted together), else LimitExceeded."""
    budget = MAX_SIZE
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            if v.bit_length() > MAX_INT_BITS:
                raise _int_error(v.bit_length())
            continue
        if isinstance(v, (str, bytes)):
            budget -= len(v)
        elif isinstance(v, (list, tuple, dict, set, frozenset)):
            budget -= len(v)
            if budget >= 0:
                stack.extend(v.values() if isinstance(v, dict) else v)
        if budget < 0:
            raise LimitExceeded(f"{what} holds more than {LIMITS['size']}")
    return value


class _LimitedSandbox(SandboxedEnvironment):
    """The sandbox with the size and integer checks on operators and calls."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def make_globals(self, d: Any) -> Any:
        """A template's globals as a plain dict (jinja's ChainMap over the environment's
        costs every render a walk of both maps: half of a short expression's time). The
        environment's globals are set once, below, before any template is made."""
        return {**self.globals, **(d or {})}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_operands(operator, left, right)
        return _check_value(self.binop_table[operator](left, right), "a result")

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, _SEQUENCES) and getattr(obj, "__name__", "") in _WIDENING:
            _check_widths(f"str.{obj.__name__}", (*args, *kwargs.values()))
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(owner, (list, dict, set)) and len(owner) > MAX_SIZE:  # append, update
            raise _size_error(f"a {type(owner).__name__}", len(owner))
        return _check_value(result, "a call's result")


# methods and filters whose integer arguments say how long their result is
_WIDENING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "indent"})


def _check_widths(what: str, args: tuple[Any, ...]) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_SIZE:
            raise LimitExceeded(f"{what} with a width of {a}: over the limit of "
                                f"{LIMITS['size']}")


def _checked_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja's pass_context/pass_environment marks
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if name in _WIDENING:
            _check_widths(f"the filter {name}", (*args, *kwargs.values()))
        elif name == "format" and args:
            value = next((a for a in args if isinstance(a, str)), "")
            _check_operands("%", value, None)
        result = f(*args, **kwargs)
        if isinstance(result, Iterator):  # a lazy filter (map, select): materialised, bounded
            items = []
            for item in result:
                items.append(item)
                if len(items) > MAX_SIZE:
                    raise _size_error(f"the filter {name}'s result", len(items))
            result = iter(items)
        return _check_value(result, f"the filter {name}'s result")
    return wrapper


_ENV = _LimitedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.filters = {name: _checked_filter(name, f) for name, f in _ENV.filters.items()}
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

    def lookup(self, context: dict[str, Any]) -> Any:
        try:
            return context[self.name]
        except KeyError:
            raise UndefinedError(f"'{self.name}' is undefined") from None


_LITERALS = ("true", "false", "none", "True", "False", "None")  # jinja2's, not variables
# compiled templates by source: (single expression?, callable, the variables it reads)
_COMPILED: dict[str, tuple[bool, Any, tuple[str, ...]]] = {}


def _compile(source: str) -> tuple[bool, Any, tuple[str, ...]]:
    found = _COMPILED.get(source)
    if found is not None:
        return found
    m = _SINGLE.match(source)
    if m and _NAME.match(m.group("expr")) and m.group("expr").strip() not in _LITERALS:
        name = m.group("expr").strip()
        found = True, _Lookup(name), (name,)
    else:
        with _limits():  # jinja folds constant expressions while compiling
            try:
                names = tuple(sorted(meta.find_undeclared_variables(_ENV.parse(source))))
            except TemplateError:
                names = ()
            if m:
                found = True, _ENV.compile_expression(m.group("expr"), undefined_to_none=False), \
                    names
            else:
                found = False, _ENV.from_string(source), names
    if len(_COMPILED) < 4096:
        _COMPILED[source] = found
    return found


# --- limits on time and memory ----------------------------------------------------
#
# Arming the limits costs some 30 µs (a signal handler, a timer, two rlimit calls and a
# read of /proc), more than most renders. A compile arms them once for all its renders
# (`armed()`): SIGPROF then ticks every TICK of CPU, and a render is stopped at the tick
# that finds it running for CPU_SECONDS' worth of ticks (a render costs a counter and a
# flag); its address-space cap is set from the size last read, read again after each
# tick. A render outside `armed()` arms them for itself alone.

TICK = 0.05  # CPU seconds between SIGPROF ticks while the limits are armed
_TICKS = round(CPU_SECONDS / TICK)  # ticks one render may run for


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    guard = getattr(_LIMITS, "guard", None)  # the main thread's: only it arms the timer
    if guard is not None and guard.tick(frame):
        raise _OutOfTime


_STATM: dict[int, int] = {}  # pid → an open /proc/self/statm (pread regenerates it: 3 µs)
_PAGE = resource.getpagesize()


def _address_space() -> int:
    """The process's current size in bytes (VmSize)."""
    pid = os.getpid()
    fd = _STATM.get(pid)
    if fd is None:  # first use, or a forked child (the fd names its parent)
        _STATM.clear()
        fd = _STATM[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    return int(os.pread(fd, 64, 0).split()[0]) * _PAGE


class _Limits:
    """CPU time (SIGPROF; in the main thread only, where signals are delivered) and address
    space while a template compiles or renders; nested uses keep the outer limits.

    `arm()`/`disarm()` bracket a batch of renders: the handler and the timer are set up
    once for all of them. Each render (`with guard:`) counts itself and lowers RLIMIT_AS
    to MEMORY_MARGIN above the process's size while it runs."""

    def __init__(self) -> None:
        self.batches = 0      # arm() calls not yet disarmed
        self.depth = 0        # nested `with` (a compile inside a render keeps its limits)
        self.own = False      # this render armed the limits for itself
        self.rendering = False  # SIGPROF raises only while this is set
        self.serial = 0       # renders begun
        self.seen = -1        # the render the last tick found running
        self.ticks = 0        # ticks since then that found it still running
        self.base = 0         # the address space when last read
        self.stale = True     # a tick since: read it again before the next render
        self.lowered = False  # this render lowered RLIMIT_AS
        self.old_as = (0, 0)
        self.old_handler: Any = None
        self.timer = False

    def arm(self) -> None:
        self.batches += 1
        if self.batches > 1:
            return
        self.old_as = resource.getrlimit(resource.RLIMIT_AS)
        self.stale = True
        self.timer = threading.current_thread() is threading.main_thread()
        if self.timer:
            self.old_handler = signal.signal(signal.SIGPROF, _out_of_time)
            signal.setitimer(signal.ITIMER_PROF, TICK, TICK)

    def disarm(self) -> None:
        self.batches -= 1
        if self.batches or not self.timer:
            return
        self.timer = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, self.old_handler)

    def tick(self, frame: FrameType | None) -> bool:
        """Called by SIGPROF every TICK of CPU: whether to stop the render running now.
        Past the limit it answers yes at every tick: a raise that lands where Python
        ignores it (a gc callback, a __del__) is followed by one that is not."""
        self.stale = True
        if not self.rendering:
            return False
        if self.seen != self.serial:  # a render begun since the last tick
            self.seen, self.ticks = self.serial, 0
            return False
        self.ticks += 1
        # never inside __enter__/__exit__: their bookkeeping must run to its end
        return self.ticks >= _TICKS and (frame is None or frame.f_code not in _GUARD_CODE)

    def __enter__(self) -> None:
        self.depth += 1
        if self.depth > 1:
            return
        self.own = not self.batches
        if self.own:
            self.arm()
        if self.stale:
            self.base, self.stale = _address_space(), False
        old = self.old_as
        cap = self.base + MEMORY_MARGIN
        if old[1] != resource.RLIM_INFINITY:
            cap = min(cap, old[1])
        self.lowered = old[0] == resource.RLIM_INFINITY or cap < old[0]
        if self.lowered:
            resource.setrlimit(resource.RLIMIT_AS, (cap, old[1]))
        self.serial += 1
        if self.own:  # the timer started with this render: its first tick counts
            self.seen, self.ticks = self.serial, 0
        self.rendering = True

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth:
            return
        self.rendering = False  # from here on the handler raises nothing
        if self.lowered:
            self.lowered = False
            resource.setrlimit(resource.RLIMIT_AS, self.old_as)
        if self.own:
            self.own = False
            self.disarm()


_GUARD_CODE = frozenset({_Limits.__enter__.__code__, _Limits.__exit__.__code__})
_LIMITS = threading.local()


def _limits() -> _Limits:
    try:
        return _LIMITS.guard  # type: ignore[no-any-return]
    except AttributeError:
        guard = _LIMITS.guard = _Limits()
        return guard


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """The limits armed once for every render inside (a whole compile); each render
    still gets CPU_SECONDS and MEMORY_MARGIN of its own."""
    guard = _limits()
    guard.arm()
    try:
        yield
    finally:
        guard.disarm()


# Results of templates by (source, values of the variables they read): the cases of a
# matrix render the same value many times, and a jinja2 render costs tens of µs.
_RESULTS: dict[tuple[Any, ...], Any] = {}
_SCALAR_TYPES = (int, float, str, bool, type(None))


def template_names(source: str) -> tuple[str, ...]:
    """The variables a templated string reads (none for a template that does not parse or
    exceeds a limit while compiling: rendering it reports the problem where it stands)."""
    try:
        return _compile(source)[2]
    except (TemplateError, _OutOfTime, MemoryError, RecursionError, ArithmeticError,
            ValueError, TypeError, LookupError, AttributeError):
        return ()


def _render_text(compiled: Any, context: dict[str, Any]) -> str:
    """A whole template's output, refused as soon as it passes the size limit."""
    parts = []
    size = 0
    for part in compiled.generate(**context):
        size += len(part)
        if size > MAX_SIZE:
            raise LimitExceeded(f"the rendered text holds more than {LIMITS['size']}")
        parts.append(part)
    return "".join(parts)


def _result_key(value: str, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The key of a render's result in _RESULTS; None when an input is no plain scalar
    (exact types: a device name, a str with its driver, must not share a result with
    the same BDF served by another driver). The types are part of it: 1, 1.0 and true
    are equal, but `{{ x|string }}` is not the same of each."""
    for v in inputs:
        if type(v) not in _SCALAR_TYPES:
            return None
    return (value, inputs, tuple([type(v) for v in inputs]))


def render(value: str, context: dict[str, Any]) -> Any:
    """Render one templated string with `context`; raises TemplateProblem."""
    key: tuple[Any, ...] | None = None
    try:
        single, compiled, names = _compile(value)
        if type(compiled) is _Lookup:  # `{{ name }}`: the value itself, nothing to render
            return compiled.lookup(context)
        inputs = tuple([context.get(n, _RESULTS) for n in names])
        key = _result_key(value, inputs)
        if key is not None:
            found = _RESULTS.get(key, _FAILED)
            if found is not _FAILED:
                return found
            if key in _FAILED:  # a template at a limit fails once, not once per case
                raise TemplateProblem(_FAILED[key])
        # only the variables it reads (the rest would be copied into jinja's context)
        used = {n: v for n, v in zip(names, inputs, strict=True) if v is not _RESULTS}
        with _limits():
            if single:
                result = _check_value(compiled(**used), "the value")
                if isinstance(result, StrictUndefined):
                    str(result)  # raises UndefinedError with the name
            else:
                result = _render_text(compiled, used)
        if key is not None and isinstance(result, _SCALAR_TYPES) and len(_RESULTS) < 100_000:
            _RESULTS[key] = result
        return result
    except TemplateProblem:
        raise
    except (Exception, _OutOfTime) as exc:  # each kind becomes a message in _problem()
        message = _problem(exc)
        if message is None:
            raise
        if key is not None and len(_FAILED) < 10_000:
            _FAILED[key] = message
        raise TemplateProblem(message) from None


_FAILED: dict[tuple[Any, ...], str] = {}


def _problem(exc: BaseException) -> str | None:
    """The user's message for what a template raised (None: a bug of ours, not theirs)."""
    if isinstance(exc, LimitExceeded):
        return f"template exceeds a limit: {exc}"
    if isinstance(exc, _OutOfTime):
        return f"template exceeds a limit: it ran past {LIMITS['time']}"
    if isinstance(exc, MemoryError):
        return f"template exceeds a limit: it needs more memory than {LIMITS['memory']}"
    if isinstance(exc, RecursionError):
        return "template nests or recurses too deeply"
    if isinstance(exc, SecurityError):
        return f"template refused by the sandbox: {exc}"
    if isinstance(exc, UndefinedError):
        return _undefined_message(exc.message or "")
    if isinstance(exc, TemplateError):
        return f"template error: {exc}"
    if isinstance(exc, TypeError) and "no loader" in str(exc):
        return ("templates cannot read files: {% include %}, {% import %} and {% extends %} "
                "are not available")
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return f"template exceeds a limit: an integer of more than {_int_digits()} digits"
    if isinstance(exc, Exception):  # jinja's own slips too: '{{ "nan"|float }}' folds to
        return f"template failed: {type(exc).__name__}: {exc}"  # code naming `nan` (NameError)
    return None


def _int_digits() -> int:
    return sys.get_int_max_str_digits()


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
    for (path, _), new in zip(tpaths, values, strict=True):
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
