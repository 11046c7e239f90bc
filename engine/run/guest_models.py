"""The models in the testbed's guest: slotted frozen dataclasses made from the host's.

Importing pydantic costs the guest, whose Python TCG makes some 20x slower than the
host's, several seconds per run (benchmarks/guest_imports.py), and the guest never
validates: the host did. So the host describes each model the payload needs (every
registered operation's, and every other model its cases hold) in plain values: its
name, its fields in order, its class constants (`op`, `produces`, `opens_iommu` …)
and the source of its methods and properties (validators excepted). The guest makes
a slotted frozen dataclass of each, under the same name, and installs them as the
module `vfio_scenario.language.models` before the operations import it: `@op(MapDma)`
binds the guest's MapDma, and the cases' models are restored as its instances, so an
operation gets what its signature names, methods and properties included.

A method is compiled in a namespace of builtins and the other models: it may use its
own model and the builtins, not the models module's helpers.
"""

from __future__ import annotations
import __future__

import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import make_dataclass
from types import CodeType, MappingProxyType, ModuleType
from typing import Any

MODULE = "vfio_scenario.language.models"
Spec = dict[str, Any]  # one model, in plain values


# --- host: describe the models ------------------------------------------------------------


def describe(classes: Iterable[type[Any]]) -> list[Spec]:
    """Plain-value descriptions of `classes` (pydantic models) and of every registered
    operation, each once."""
    from vfio_scenario.language.models import OPERATIONS

    found = dict.fromkeys([*OPERATIONS.values(), *classes])
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


# --- guest: make them ---------------------------------------------------------------------


class Frozen:
    """Base of the guest's models: read-only values, compared by value."""

    __slots__ = ()

    def __repr__(self) -> str:
        values = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__dataclass_fields__)
        return f"{type(self).__name__}({values})"

    __dataclass_fields__: dict[str, Any]


def build(specs: list[Spec]) -> ModuleType:
    """A module of slotted frozen dataclasses made from `specs`, with the registry the
    operations bind to (`Op`, `OPERATIONS`)."""
    module = ModuleType(MODULE, "The guest's models (vfio_scenario.run.guest_models).")
    registered: dict[str, type[Any]] = {}

    class Op(Frozen):
        __slots__ = ()

    namespace: dict[str, Any] = {"__builtins__": __builtins__}
    for spec in specs:
        body: dict[str, Any] = dict(spec["class_vars"])
        for name, source in spec["methods"].items():
            scope = dict(namespace)
            # the source of the host's own model, from this very checkout
            exec(_compile(spec["name"], name, source), scope)  # noqa: S102
            body[name] = scope[name]
        base = Op if "op" in spec["class_vars"] else Frozen
        cls = make_dataclass(spec["name"], [(f, Any) for f in spec["fields"]], bases=(base,),
                             namespace=body, frozen=True, slots=True, repr=False)
        cls.__module__ = MODULE
        namespace[spec["name"]] = cls
        setattr(module, spec["name"], cls)
        if base is Op:
            registered[spec["class_vars"]["op"]] = cls
    module.SPECS = specs  # type: ignore[attr-defined]  # for a handover's successor
    module.Op = Op  # type: ignore[attr-defined]
    module.OPERATIONS = MappingProxyType(registered)  # type: ignore[attr-defined]
    return module


def install(specs: list[Spec]) -> ModuleType:
    """Make the guest's models and install them as `vfio_scenario.language.models`
    (before anything imports the real one); returns the module."""
    if MODULE in sys.modules:
        raise RuntimeError(f"{MODULE} is imported already: install the guest's models first")
    module = build(specs)
    sys.modules[MODULE] = module
    return module


def _compile(model: str, name: str, source: str) -> CodeType:
    # annotations stay strings, as in the models module (`from __future__ import annotations`)
    code: CodeType = compile(source, f"<model {model}.{name}>", "exec",
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

    def __init__(self, specs: list[Spec]) -> None:
        self.specs = specs

    def __reduce__(self) -> tuple[Any, ...]:
        return install, (self.specs,)


def for_handover() -> Reinstall | None:
    """What a handover sends first: the guest's models when this process runs on them
    (None with the real models, which the successor imports itself)."""
    specs = getattr(sys.modules.get(MODULE), "SPECS", None)
    return Reinstall(specs) if specs is not None else None


def classes(module: ModuleType) -> Mapping[str, type[Any]]:
    """The model classes of a built module, by name."""
    return {name: value for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Frozen)}
