"""The language's access-object, mock-DMABUF and file-private-buffer operations: what
their models accept and refuse, each refusal at its file:line:col."""

from __future__ import annotations

import textwrap

import pytest
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text

HEAD = """\
name: a
requires: {devices: 0, features: [iommufd, iommufd_test]}
steps:
  - open_iommu: {mode: iommufd, default_ioas: false}
    as: iommu
  - alloc_ioas: {iommu: iommu}
    as: ioas
  - alloc_buffer: {size: 64KiB}
    as: buf
  - map_dma: {ioas: ioas, buffer: buf, iova: auto}
    as: m
  - create_access: {ioas: ioas, flags: [needs_pin_pages]}
    as: acc
  - mock_dmabuf: {iommu: iommu, size: 16KiB}
    as: dbuf
"""


def errors(steps: str) -> list[str]:
    doc, problems = load_text(HEAD + textwrap.indent(textwrap.dedent(steps), "  "), "s.yaml")
    assert problems == []
    return [str(e) for e in compile_documents([doc]).errors]


def test_the_operations_compile_with_their_handles() -> None:
    assert errors("""\
        - access_pages: {access: acc, mapping: m, offset: 4096, size: 4096, write: true, id: 0}
          as: pages
        - destroy_access_pages: {pages: pages}
        - access_rw: {access: acc, mapping: m, offset: 4046, starts: 100, size: 1, max_size: 63,
                      direction: read_then_write, slow_path: true}
        - alloc_ioas: {iommu: iommu}
          as: ioas2
        - access_replace_ioas: {access: acc, ioas: ioas2}
        - destroy_access: {access: acc}
        - map_dma: {ioas: ioas, dmabuf: dbuf, size: 16KiB}
          as: dm
        - mock_dmabuf_revoke: {iommu: iommu, dmabuf: dbuf}
        - mock_dmabuf_revoke: {iommu: iommu, dmabuf: dbuf, revoked: false}
        - unmap_dma: {mapping: dm}
        - map_dma: {ioas: ioas, dmabuf: dbuf, iova_of: dm}
        - alloc_buffer: {size: 4KiB, backing: file-private, path: /proc/self/exe}
          as: exe
        - create_access: {ioas: ioas, flags: 0xfffffffe}
          as: bad
    """) == []


# (the step, where its error points: the text it starts at, the message)
@pytest.mark.parametrize(("steps", "at", "message"), [
    ("- access_rw: {access: acc, mapping: m, size: 2, max_size: 1}\n", "{",
     "`max_size` 1 is below `size` 2"),
    ("- access_rw: {access: acc, mapping: m, size: 0}\n", "0}",
     "`size`: Input should be greater than 0"),
    ("- access_rw: {access: acc, mapping: m, size: 1, starts: 0}\n", "0}",
     "`starts`: Input should be greater than or equal to 1"),
    ("- access_rw: {access: acc, mapping: m, size: 1, direction: both}\n", "both",
     "`direction`: Input should be 'read', 'write' or 'read_then_write', got 'both'"),
    ("- access_pages: {access: buf, mapping: m, size: 4096}\n", "buf",
     "handle `buf` is a buffer, but `access` needs a access"),
    ("- destroy_access_pages: {pages: acc}\n", "acc}",
     "handle `acc` is a access, but `pages` needs a access_pages"),
    ("- create_access: {ioas: ioas, flags: [write]}\n", "write",
     "`flags`: Input should be 'needs_pin_pages', got 'write'"),
    ("- revoke_dmabuf: {dmabuf: dbuf}\n", "dbuf",
     "handle `dbuf` is a mock_dmabuf, but `dmabuf` needs a dmabuf"),
    ("- mock_dmabuf_revoke: {iommu: iommu, dmabuf: buf}\n", "buf}",
     "handle `buf` is a buffer, but `dmabuf` needs a dmabuf or mock_dmabuf"),
    ("- map_dma: {ioas: ioas, dmabuf: dbuf, iova: 0, iova_of: m}\n", "{",
     "give only one of `iova` or `iova_of`, not iova and iova_of"),
    ("- map_dma: {ioas: ioas, dmabuf: dbuf, iova_of: buf}\n", "buf}",
     "handle `buf` is a buffer, but `iova_of` needs a mapping"),
    ("- alloc_buffer: {size: 4KiB, backing: file-private}\n", "{",
     "`path` names the file of a `backing: file-private` buffer, and only of one"),
    ("- alloc_buffer: {size: 4KiB, path: /bin/sh}\n", "{",
     "`path` names the file of a `backing: file-private` buffer, and only of one"),
    ("- alloc_buffer: {size: 4KiB, backing: file-private, path: ''}\n", "''",
     "`path`: String should have at least 1 character"),
])
def test_refusals_point_at_the_argument(steps: str, at: str, message: str) -> None:
    # the step is line 16, indented by two (a list-or-number argument also says that a
    # list is not a number)
    assert f"s.yaml:16:{steps.index(at) + 3}: {message}" in errors(steps)
