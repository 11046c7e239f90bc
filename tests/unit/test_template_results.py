"""Rendered values are kept by template and the values of the variables it reads, so
that the cases of a matrix render each value once: values that are equal but not alike
(1, 1.0, true) are each rendered for themselves."""

from __future__ import annotations

import textwrap

from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.templates import render


def test_equal_values_of_other_types_do_not_share_a_result() -> None:
    text = "{{ x|string }} {{ x is sameas true }}"
    assert render(text, {"x": 1}) == "1 False"
    assert render(text, {"x": 1.0}) == "1.0 False"
    assert render(text, {"x": True}) == "True True"
    assert render(text, {"x": 1}) == "1 False"  # and the first one's is still its own


def test_cases_of_a_matrix_with_equal_values_of_other_types_get_their_own() -> None:
    doc, errors = load_text(textwrap.dedent("""\
        matrix: {x: [1, 1.0]}
        steps:
          - sleep: {duration: "{{ x|string }}ms"}
            name: "slept {{ x|string }}"
        """), "t.yaml")
    assert errors == []
    compiled = compile_documents([doc])
    assert compiled.errors == []
    names = {case.id: case.steps[0].common.name for case in compiled.cases}
    assert names == {"t.yaml::t[x=1]": "slept 1", "t.yaml::t[x=1.0]": "slept 1.0"}
