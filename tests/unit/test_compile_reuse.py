"""A compile validates each distinct step's arguments once, across the cases of a matrix
and across compiles (a run compiles its files again for the testbed's devices): the
second compile of a document asks no operation model, and gives the same cases."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from vfio_scenario.language import models
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text

TEXT = textwrap.dedent("""\
    matrix: {n: [3, 4]}
    steps:
      - alloc_buffer: {size: "{{ n * 4096 + 12288 }}"}
        as: buf
      - for: {var: i, from: 0, below: 3}
        steps:
          - fill: {buffer: buf, pattern: "{{ i + n * 7 + 101 }}"}
      - fill: {buffer: buf, pattern: 1000}
    """)


def test_a_second_compile_validates_no_arguments_again(monkeypatch: pytest.MonkeyPatch) -> None:
    doc, errors = load_text(TEXT, "reuse.yaml")
    assert errors == []
    first = compile_documents([doc])
    validated: list[str] = []
    original = models.Op.model_validate.__func__  # type: ignore[attr-defined]

    def counted(cls: type[models.Op], obj: Any, *args: Any, **kwargs: Any) -> Any:
        validated.append(cls.op)
        return original(cls, obj, *args, **kwargs)

    for cls in set(models.OPERATIONS.values()):
        monkeypatch.setattr(cls, "model_validate", classmethod(counted))
    second = compile_documents([doc], ["0000:00:03.0"])
    assert validated == []
    assert [c.id for c in second.cases] == [c.id for c in first.cases]
    assert [c.steps for c in second.cases] == [c.steps for c in first.cases]
    # a wrong argument is the same located error of every compile
    bad, _ = load_text(TEXT.replace("pattern: 1000", "pattern: 256"), "reuse.yaml")
    for _ in range(2):
        assert [str(e) for e in compile_documents([bad]).errors] == [
            ("reuse.yaml:8:34: `pattern`: Input should be 'zero', 'ones', 'incrementing' or "
             "'random', got 256")]
