"""`access_rw`'s two forms: a `mapping`, or the IOVA form (`iova`, `length`, `buffer`) for
memory another process mapped. The model takes exactly one form and says at
file:line:col what is wrong with any other combination."""

from __future__ import annotations

import textwrap

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.language.models import AccessRw

HEAD = """\
name: a
requires: {devices: 0, features: [iommufd, iommufd_test]}
steps:
  - open_iommu: {mode: iommufd, default_ioas: false}
    as: iommu
  - alloc_ioas: {iommu: iommu}
    as: ioas
  - alloc_buffer: {size: 64KiB, backing: shared}
    as: buf
  - map_dma: {ioas: ioas, buffer: buf, iova: 0x1000000}
    as: m
  - create_access: {ioas: ioas}
    as: acc
"""
STEP_LINE = HEAD.count("\n") + 1  # the line of the step under test


def errors(step: str) -> list[str]:
    doc, problems = load_text(HEAD + textwrap.indent(textwrap.dedent(step), "  "), "s.yaml")
    assert problems == []
    return [str(e) for e in compile_documents([doc]).errors]


def test_both_forms_compile() -> None:
    assert errors("""\
        - access_rw: {access: acc, mapping: m, offset: 4046, starts: 100, size: 1, max_size: 63,
                      direction: read_then_write}
        - access_rw: {access: acc, iova: 0x1000000, length: 64KiB, buffer: buf, offset: 4046,
                      starts: 100, size: 1, max_size: 63, direction: read_then_write}
        - access_rw: {access: acc, iova: 0x1000000, length: 64KiB, buffer: buf, size: 64KiB,
                      slow_path: true}
    """) == []


# (the step, where its error points: the text it starts at, the message)
@pytest.mark.parametrize(("step", "at", "message"), [
    ("- access_rw: {access: acc, mapping: m, iova: 0x1000000, length: 4KiB, size: 1}\n",
     "0x1000000", "`iova`: give `mapping`, or `iova` and `length`, not both"),
    ("- access_rw: {access: acc, mapping: m, length: 4KiB, size: 1}\n", "4KiB",
     "`length`: with `mapping`, give no `length`"),
    ("- access_rw: {access: acc, length: 4KiB, buffer: buf, size: 1}\n", "4KiB",
     "`length`: the bytes mapped at `iova`: give `iova` too"),
    ("- access_rw: {access: acc, iova: 0x1000000, buffer: buf, size: 1}\n", "{",
     "`iova` needs `length`, the bytes mapped there"),
    ("- access_rw: {access: acc, iova: 0x1000000, length: 4KiB, size: 1}\n", "{",
     "with `iova`, name the memory mapped there: `buffer`"),
    ("- access_rw: {access: acc, iova: 0x1000000, length: 0, buffer: buf, size: 1}\n", "0, buffer",
     "`length`: the bytes mapped at `iova`: at least 1"),
    ("- access_rw: {access: acc, size: 1}\n", "{",
     "give a `mapping`, or `iova` and `length`"),
    (("- access_rw: {access: acc, iova: 0x1000000, length: 4KiB, buffer: buf, offset: 4046,\n"
      "              starts: 100, size: 1, max_size: 63}\n"), "{",
     "`offset` 0xfce + 0xa2 bytes reach past the `length` 0x1000 mapped at `iova`"),
    ("- access_rw: {access: acc, iova: 0x1000000, length: 4KiB, buffer: m, size: 1}\n", "m,",
     "handle `m` is a mapping, but `buffer` needs a buffer"),
    ("- access_rw: {access: acc, iova: -1, length: 4KiB, buffer: buf, size: 1}\n", "-1",
     "`iova`"),
])
def test_a_wrong_combination_is_refused_where_it_is(step: str, at: str, message: str) -> None:
    found = errors(step)
    assert len(found) == 1, found
    line = textwrap.indent(step, "  ").splitlines()[0]
    column = line.index(at) + 1
    assert found[0].startswith(f"s.yaml:{STEP_LINE}:{column}: "), found[0]
    assert message in found[0], found[0]


def test_reach_counts_every_start_and_the_longest_length() -> None:
    rw = AccessRw.model_validate({"access": "a", "iova": 0, "length": 4096, "buffer": "b",
                                  "offset": 4046, "starts": 3, "size": 1, "max_size": 48})
    assert rw.reach == 2 + 48  # the last start's longest call ends at offset + 50
    exact = AccessRw.model_validate({"access": "a", "iova": 0, "length": 4096, "buffer": "b",
                                     "offset": 4046, "starts": 3, "size": 1, "max_size": 48})
    assert exact.offset + exact.reach == 4096
