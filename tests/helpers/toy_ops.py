"""Operations defined inside a test, forgotten when it ends.

An operation registers itself when its model class is defined (`Op` in
vfio_scenario.language.models) and its implementation when `@op(Model)` decorates it
(vfio_scenario.run.ops). `scratch_operations()` keeps both registries as they were
before the `with` block and puts them back after it, so a toy operation never reaches
another test:

    with scratch_operations():
        class Tally(Op):
            op = "tally"
            area = "host"
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vfio_scenario.language import models
from vfio_scenario.run import ops


@contextmanager
def scratch_operations() -> Iterator[None]:
    ops.implementations()  # the real implementations registered before the snapshot
    saved_models = dict(models._REGISTERED)
    saved_implementations = dict(ops._IMPLEMENTATIONS)
    try:
        yield
    finally:
        models._REGISTERED.clear()
        models._REGISTERED.update(saved_models)
        ops._IMPLEMENTATIONS.clear()
        ops._IMPLEMENTATIONS.update(saved_implementations)
