"""The errno a uAPI call fails with, as the tests against the kernel check it."""

from __future__ import annotations

import pytest
from vfio_scenario.errors import VfioError


def errno_of(call: object, *args: object, **kwargs: object) -> str:
    """The errno name (`EINVAL` …) of the VfioError `call(*args, **kwargs)` raises; the
    test fails when it raises none."""
    with pytest.raises(VfioError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    name: str = info.value.errno_name
    return name
