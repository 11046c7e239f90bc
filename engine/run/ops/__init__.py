"""Operations of the scenario language, one module per area, registered by name.

Each operation is `fn(rt, args, step) -> handle object | None`. It raises VfioError
for a kernel error (compared with `expect:` by errno name) or for an access that the
fault probe caught (named SIGBUS/SIGSEGV), CheckFailed when a result differs from
what the step says, and Skip when the host turns out to lack what the case needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from vfio_scenario.run.interpreter import Operation

_OPS: dict[str, Operation] = {}
F = TypeVar("F", bound=Callable[..., Any])


def op(name: str) -> Callable[[F], F]:
    """Register the decorated function as the implementation of operation `name`."""

    def register(fn: F) -> F:
        if name in _OPS:
            raise RuntimeError(f"operation {name} registered twice")
        _OPS[name] = fn
        return fn

    return register


def operations() -> dict[str, Operation]:
    """Every operation implementation, by name (imports the area modules once)."""
    from vfio_scenario.run.ops import (  # noqa: F401
        device,
        dmabuf,
        driver,
        host,
        iommu,
        iommufd,
        memory,
    )

    return dict(_OPS)
