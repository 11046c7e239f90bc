"""The models in the testbed's guest: slotted frozen classes made from the host's.

Importing pydantic costs the guest, whose Python TCG makes some 20x slower than the
host's, several seconds per run (benchmarks/guest_imports.py), and the guest never
validates: the host did. So the host describes each model the payload needs (every
registered operation's, and every other model its cases hold) in plain values: its
name, its fields in order, its class constants (`op`, `produces`, `opens_iommu` …)
and the source of its methods and properties (validators excepted). From that
description `source()` writes one Python module, a slotted frozen class per model
under the same name (an `__init__` taking the fields in order, equality and hash by
value, assignment refused with dataclasses.FrozenInstanceError), which the host
compiles once per content and sends with the payload (`compiled()`): the guest only
executes that code object, the same Python reading it (`CODE_TAG`), and keeps the
module it made for the next payload of the same content (`build()`), so a warm guest
process makes the models once. It installs them as the module
`vfio_scenario.language.models` before the operations import it: `@op(MapDma)` binds
the guest's MapDma, and the cases' models are restored as its instances, so an
operation gets what its signature names, methods and properties included.

(make_dataclass() built them before: it compiles five functions per class, some 0.2 s
on the host for the 80 models and 4 s of the guest's start under TCG.)

A method runs in the module of the models: it may use its own model, the other models
and the builtins, not the models module's helpers.
"""

from __future__ import annotations
import __future__

import functools
import hashlib
import marshal
import sys
import textwrap
from collections.abc import Iterable, Mapping
from types import CodeType, MappingProxyType, ModuleType
from typing import Any

MODULE = "vfio_scenario.language.models"
Spec = dict[str, Any]  # one model, in plain values


# --- host: describe the models ------------------------------------------------------------


def describe(classes: Iterable[type[Any]]) -> list[Spec]:
    """Plain-value descriptions of every registered operation, every model of the models
    module and `classes` (pydantic models), each once: the same for every payload of a
    checkout but for models of other modules that only some payloads hold, so that a
    warm guest process (run/zygote.py) makes them once."""
    from vfio_scenario.language import models

    # the models module's own and those of the modules it gathers (models_*.py, whose
    # classes it re-exports)
    module = [cls for cls in vars(models).values()
              if isinstance(cls, type) and issubclass(cls, models.Strict)
              and cls.__module__.startswith(models.__name__)
              and cls not in (models.Strict, models.Op)
              # a base that leaves a class constant unset (an abstract one) is no model
              and all(hasattr(cls, name) for name in cls.__class_vars__)]
    found = dict.fromkeys([*models.OPERATIONS.values(), *module, *classes])
    return [_describe(cls) for cls in found]


def _describe(cls: type[Any]) -> Spec:
    import inspect

    from vfio_scenario.language.models import Strict

    decorators = cls.__pydantic_decorators__
    validators = {name for kind in ("validators", "field_validators", "root_validators",
                                    "field_serializers", "model_serializers",
                                    "model_validators", "computed_fields")
                  for name in getattr(decorators, kind)}
    methods: dict[str, str] = {}  # name → source, its decorators (@property …) included
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, Strict)) or klass is Strict:
            continue
        for name, attr in vars(klass).items():
            if name.startswith("__") or name in validators or name in methods:
                continue
            if isinstance(attr, property) and attr.fget is not None:
                methods[name] = textwrap.dedent(inspect.getsource(attr.fget))
            elif inspect.isfunction(attr):
                methods[name] = textwrap.dedent(inspect.getsource(attr))
    return {"name": cls.__name__, "fields": list(cls.model_fields),
            "class_vars": {name: getattr(cls, name) for name in sorted(cls.__class_vars__)},
            "methods": methods}


# --- both sides: the module's source and its code ------------------------------------

# the Python that may execute a compiled module (its bytecode format); a payload from
# another one is compiled again from the source
CODE_TAG = f"{sys.implementation.cache_tag} {sys.version_info[:3]}"
_LITERALS = (str, int, float, bool, type(None))

_PRELUDE = """\
from dataclasses import FrozenInstanceError as _FrozenInstanceError


class Frozen:
    \"\"\"Base of the guest's models: read-only values, compared by value.\"\"\"

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def __repr__(self):
        values = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__match_args__)
        return f"{type(self).__name__}({values})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__match_args__)

    def __hash__(self):
        return hash(tuple(getattr(self, n) for n in self.__match_args__))

    def __setattr__(self, name, value):
        raise _FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise _FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self):
        return self.__class__, tuple(getattr(self, n) for n in self.__match_args__)


class Op(Frozen):
    __slots__ = ()


_set = object.__setattr__
"""


def source(specs: list[Spec]) -> str:
    """The Python source of the models module described by `specs` (deterministic: the
    same description gives the same text, the key of its compiled code)."""
    parts = [_PRELUDE]
    for spec in specs:
        name, fields = spec["name"], list(spec["fields"])
        base = "Op" if "op" in spec["class_vars"] else "Frozen"
        lines = [f"class {name}({base}):", f"    __slots__ = {tuple(fields)!r}",
                 f"    __match_args__ = {tuple(fields)!r}"]
        for var, value in sorted(spec["class_vars"].items()):
            if not isinstance(value, _LITERALS):
                raise TypeError(f"{name}.{var} is a {type(value).__name__}: a guest model's "
                                "class constant is a str, number, bool or None")
            lines.append(f"    {var} = {value!r}")
        arguments = "".join(f", {f}" for f in fields)
        lines.append(f"    def __init__(self{arguments}):")
        lines += [f"        _set(self, {f!r}, {f})" for f in fields] or ["        pass"]
        for method in spec["methods"].values():
            lines.append(textwrap.indent(method, "    ").rstrip("\n"))
        parts.append("\n".join(lines) + "\n")
    return "\n\n".join(parts)


def key(specs: list[Spec]) -> str:
    """The content key of the models `specs` describe."""
    return hashlib.sha256(source(specs).encode()).hexdigest()


def _compile_source(text: str) -> CodeType:
    # annotations stay strings, as in the models module (`from __future__ import annotations`)
    code: CodeType = compile(text, "<vfio_scenario guest models>", "exec",
                             flags=__future__.annotations.compiler_flag, dont_inherit=True)
    return code


@functools.lru_cache(maxsize=4)
def _compiled(text: str) -> bytes:
    return marshal.dumps(_compile_source(text))


def compiled(specs: list[Spec]) -> dict[str, str | bytes]:
    """What a payload carries besides the description: the module's content key and its
    code, compiled here once per content, for the Python of CODE_TAG."""
    text = source(specs)
    return {"key": hashlib.sha256(text.encode()).hexdigest(), "tag": CODE_TAG,
            "code": _compiled(text)}


# --- guest: make them ---------------------------------------------------------------------

# modules made in this process, by content key: a warm process (run/zygote.py) makes
# each content once, and every run on it gets the same classes
_MADE: dict[str, ModuleType] = {}


def build(specs: list[Spec], code: Mapping[str, Any] | None = None) -> ModuleType:
    """A module of slotted frozen classes made from `specs` (by executing `code`, their
    compiled module from the host, when it was compiled for this Python), with the
    registry the operations bind to (`Op`, `OPERATIONS`); made once per content."""
    text: str | None = None
    if code is None or code.get("tag") != CODE_TAG:
        text = source(specs)
        digest = hashlib.sha256(text.encode()).hexdigest()
    else:
        digest = str(code["key"])
    made = _MADE.get(digest)
    if made is not None:
        return made
    module = ModuleType(MODULE, "The guest's models (vfio_scenario.run.guest_models).")
    compiled_code = _compile_source(text) if text is not None else marshal.loads(code["code"])  # type: ignore[index]
    exec(compiled_code, vars(module))  # noqa: S102 - the host's own models, this checkout
    registered: dict[str, type[Any]] = {}
    for spec in specs:
        cls = getattr(module, spec["name"])
        cls.__module__ = MODULE
        if "op" in spec["class_vars"]:
            registered[spec["class_vars"]["op"]] = cls
    module.SPECS = specs  # type: ignore[attr-defined]  # for a handover's successor
    module.CODE = code  # type: ignore[attr-defined]
    module.KEY = digest  # type: ignore[attr-defined]
    module.OPERATIONS = MappingProxyType(registered)  # type: ignore[attr-defined]
    _MADE[digest] = module
    return module


def install(specs: list[Spec], code: Mapping[str, Any] | None = None) -> ModuleType:
    """Make the guest's models and install them as `vfio_scenario.language.models`
    (before anything imports the real one); returns the module. In a process that
    installed the same content before (a warm one), that module is kept."""
    module = build(specs, code)
    installed = sys.modules.get(MODULE)
    if installed is not None and installed is not module:
        raise RuntimeError(f"{MODULE} is imported already: install the guest's models first"
                           if getattr(installed, "KEY", None) is None else
                           f"{MODULE} holds other models already (a warm process serves one "
                           "checkout's models)")
    sys.modules[MODULE] = module
    return module


def _compile(model: str, name: str, text: str) -> CodeType:
    # annotations stay strings, as in the models module (`from __future__ import annotations`)
    code: CodeType = compile(text, f"<model {model}.{name}>", "exec",
                             flags=__future__.annotations.compiler_flag, dont_inherit=True)
    return code


def unresolved(specs: list[Spec]) -> list[str]:
    """The global names a model's method reads that the guest does not have (a helper
    of the models module): such a method would fail only in the testbed, so a unit
    test asks this of every model."""
    import builtins
    import dis

    known = set(vars(builtins)) | {spec["name"] for spec in specs}
    problems = []
    for spec in specs:
        for name, source in spec["methods"].items():
            code = _compile(spec["name"], name, source)
            stack = [code]
            while stack:
                c = stack.pop()
                stack.extend(k for k in c.co_consts if hasattr(k, "co_code"))
                problems += [f"{spec['name']}.{name} reads `{i.argval}`, which the guest's "
                             "models do not have (only builtins and the models)"
                             for i in dis.get_instructions(c)
                             if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")
                             and i.argval not in known]
    return problems


class Reinstall:
    """The guest's models in a handover's pickle (run/handover.py): pickled before the
    case, it installs them in the successor before the case's models are read."""

    def __init__(self, specs: list[Spec], code: Mapping[str, Any] | None = None) -> None:
        self.specs = specs
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return install, (self.specs, self.code)


def for_handover() -> Reinstall | None:
    """What a handover sends first: the guest's models when this process runs on them
    (None with the real models, which the successor imports itself)."""
    module = sys.modules.get(MODULE)
    specs = getattr(module, "SPECS", None)
    return Reinstall(specs, getattr(module, "CODE", None)) if specs is not None else None


def classes(module: ModuleType) -> Mapping[str, type[Any]]:
    """The model classes of a built module, by name."""
    frozen = vars(module)["Frozen"]
    return {name: value for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, frozen) and name not in
            ("Frozen", "Op")}
