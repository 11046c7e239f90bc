"""Scenarios written in a test, compiled as the engine compiles files."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text


def compile_text(text: str, path: str = "scen/x.yaml",
                 devices: Sequence[str] | None = None) -> list[Case]:
    """The cases of scenario `text` (dedented) as if read from `path`, compiled for
    `devices` (default: placeholders); a load or compile error fails the test."""
    doc, errors = load_text(textwrap.dedent(text), path)
    assert errors == [], [str(e) for e in errors]
    compiled = compile_documents([doc], devices)
    assert compiled.errors == [], [str(e) for e in compiled.errors]
    return compiled.cases
