"""Operations of the scenario language, one module per area.

An operation is its model (a subclass of `Op` in vfio_scenario.language.models, which
registers itself) and one function bound to that model here by `@op(Model)`:
`fn(rt, args, step) -> handle object | None`, where `args` is an instance of the
model. It raises VfioError for a kernel error (compared with `expect:` by errno name)
or for an access that the fault probe caught (named SIGBUS/SIGSEGV), CheckFailed when
a result differs from what the step says, and Skip when the host turns out to lack
what the case needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from vfio_scenario.language.models import OPERATIONS, Op

if TYPE_CHECKING:
    from vfio_scenario.language.cases import Step
    from vfio_scenario.run.interpreter import Operation, Runtime

M = TypeVar("M", bound=Op)
R = TypeVar("R")

_IMPLEMENTATIONS: dict[type[Op], Operation] = {}


def op(model: type[M]) -> Callable[[Callable[[Runtime, M, Step], R]],
                                   Callable[[Runtime, M, Step], R]]:
    """Bind the decorated function to `model` as its operation's implementation.

    The function's `args` parameter is typed as the model (mypy checks that), the model
    must be a registered operation, and an operation has one implementation."""
    name = getattr(model, "op", None)
    if not isinstance(name, str) or OPERATIONS.get(name) is not model:
        raise TypeError(f"{model.__qualname__} is not a registered operation model "
                        "(a subclass of Op with its own `op`)")

    def register(fn: Callable[[Runtime, M, Step], R]) -> Callable[[Runtime, M, Step], R]:
        other = _IMPLEMENTATIONS.get(model)
        if other is not None:
            raise TypeError(f"operation `{name}` has two implementations: "
                            f"{_qualified(other)} and {_qualified(fn)}")
        _IMPLEMENTATIONS[model] = fn
        return fn

    return register


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"


def _import_areas() -> None:
    from vfio_scenario.run.ops import (  # noqa: F401
        device,
        dmabuf,
        driver,
        host,
        iommu,
        iommufd,
        iommufd_access,
        iommufd_check,
        iommufd_dirty,
        iommufd_viommu,
        liveupdate,
        memory,
        process,
    )


def operations() -> dict[str, Operation]:
    """Every operation implementation, by operation key (imports the area modules once)."""
    _import_areas()
    return {model.op: fn for model, fn in _IMPLEMENTATIONS.items()}


def implementations() -> dict[type[Op], Operation]:
    """Every operation implementation, by its model (imports the area modules once)."""
    _import_areas()
    return dict(_IMPLEMENTATIONS)


def registry_problems() -> list[str]:
    """What keeps the models and the implementations from matching one to one: a model
    without an implementation, an implementation of a model no longer registered."""
    found = implementations()
    problems = [f"operation `{name}` ({model.__module__}.{model.__qualname__}) has no "
                "implementation: bind one with @op"
                f"({model.__qualname__}) in vfio_scenario.run.ops"
                for name, model in OPERATIONS.items() if model not in found]
    problems += [f"{_qualified(fn)} implements {model.__qualname__}, which is not a "
                 "registered operation"
                 for model, fn in found.items() if OPERATIONS.get(model.op) is not model]
    return problems
