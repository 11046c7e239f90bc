"""The handover's own machinery, without VFIO: a case process hands its handles to a
freshly exec'd successor, which runs the rest of the case and reports it.

What the kernel does with the handed-over container, iommufd and devices is tested in
the testbed (tests/guest/test_liveupdate.py, scenarios/liveupdate/).
"""

from __future__ import annotations

import os
import textwrap

from vfio_scenario.language.cases import Case
from vfio_scenario.language.compile import compile_documents
from vfio_scenario.language.loader import load_text
from vfio_scenario.results import Outcome
from vfio_scenario.run.executor import execute_case
from vfio_scenario.run.interpreter import RunOptions
from vfio_scenario.run.ops import operations

from tests.helpers.load import load_multiplier


def _case(text: str) -> Case:
    doc, errors = load_text(textwrap.dedent(text), "scen/handover.yaml")
    assert errors == []
    compiled = compile_documents([doc])
    assert compiled.errors == [], [str(e) for e in compiled.errors]
    return compiled.cases[0]


MEMFD = """
name: memfd-survives
steps:
  - alloc_buffer: {size: 8KiB, backing: memfd}
    as: buf
  - fill: {buffer: buf, pattern: random, seed: 7}
  - handover: {to: successor}
  - assert_pattern: {buffer: buf, pattern: random, seed: 7}
  - fill: {buffer: buf, pattern: 0x5a}
  - assert_pattern: {buffer: buf, pattern: 0x5a}
"""


def test_a_memfd_buffer_crosses_at_a_new_address_with_its_bytes() -> None:
    result = execute_case(_case(MEMFD), [], operations(), RunOptions())
    assert result.outcome is Outcome.PASS, (result.message, result.log)
    pred, pred2, handover, *after = (s.process for s in result.steps)
    assert pred.startswith("predecessor (pid ") and pred2 == pred
    assert handover.startswith(pred + " -> successor (pid ")
    successor = after[0]
    assert successor.startswith("successor (pid ") and all(p == successor for p in after)
    assert pred.split("pid ")[1] != successor.split("pid ")[1]
    step = result.steps[2]
    assert step.op == "handover" and "memfd buffers mapped again: buf 0x" in step.message
    old, new = step.message.split("buf ")[1].split(";")[0].split(" -> ")
    assert int(old, 16) != int(new, 16)


ANON = """
name: anonymous-stays-behind
steps:
  - alloc_buffer: {size: 4KiB}
    as: buf
  - handover: {to: successor, predecessor: stays}
  - fill: {buffer: buf, pattern: zero}
"""


def test_an_anonymous_buffer_is_left_behind_and_using_it_is_the_steps_error() -> None:
    result = execute_case(_case(ANON), [], operations(), RunOptions())
    assert result.outcome is Outcome.ERROR
    assert "did not cross the handover: only memfd-backed buffers" in result.message
    assert result.steps[-1].process.startswith("successor")


TWICE = """
name: twice
steps:
  - alloc_buffer: {size: 4KiB, backing: memfd}
    as: buf
  - fill: {buffer: buf, pattern: 0x11}
  - handover: {}
  - handover: {}
  - assert_pattern: {buffer: buf, pattern: 0x11}
"""


def test_a_successor_hands_over_again() -> None:
    result = execute_case(_case(TWICE), [], operations(), RunOptions())
    assert result.outcome is Outcome.PASS, (result.message, result.log)
    pids = {s.process.split("pid ")[-1] for s in result.steps}
    assert len(pids) == 3


HANG = """
name: hang-after
timeout: 8s
steps:
  - handover: {}
  - sleep: {duration: 1h}
"""


def test_the_case_timeout_ends_the_successor_too() -> None:
    # the limit scaled by the machine's load: the successor (a fresh Python) must be
    # sleeping when it strikes
    options = RunOptions(timeout_multiplier=load_multiplier())
    result = execute_case(_case(HANG), [], operations(), options)
    assert result.outcome is Outcome.ERROR
    assert "timed out" in result.message and "during step 2 `sleep`" in result.message, \
        result.message
    # no process of the case is left (its process group is empty); successors of other
    # runs on this machine are none of this test's
    leftover = [p for p in os.listdir("/proc") if p.isdigit()
                and _cmdline(p).endswith("vfio_scenario.run.successor") and _ours(p)]
    assert leftover == [] or all(_state(p) == "Z" for p in leftover)


def _ours(pid: str) -> bool:
    """Whether `pid` descends from this process."""
    me = os.getpid()
    while pid not in ("0", "1"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            return False
        if int(pid) == me:
            return True
    return False


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
        return " ".join(p.decode() for p in parts[:-2] if p)
    except OSError:
        return ""


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0]
    except OSError:
        return "?"


def test_an_ioas_and_a_container_cross_with_every_out_cell_made_again() -> None:
    """Each class lists its cffi out-cells in CELLS (ioctl.make_cells): a cell added to
    a class crosses without a second list to keep (the library's handover cases failed
    with 'a C object (uint64_t *) that does not cross' when one was missed)."""
    import os as _os

    from vfio_scenario.run import handover
    from vfio_scenario.uapi._vfio import ffi
    from vfio_scenario.uapi.container import Container
    from vfio_scenario.uapi.ioctl import make_cells
    from vfio_scenario.uapi.iommufd import Ioas, Iommufd

    iommufd = Iommufd.__new__(Iommufd)
    iommufd.fd = _os.open("/dev/null", _os.O_RDONLY)
    ioas = Ioas.__new__(Ioas)
    ioas.iommufd, ioas.id, ioas.handle = iommufd, 2, "ioas 2"
    make_cells(ioas)
    container = Container.__new__(Container)
    container.fd, container.handle = _os.open("/dev/null", _os.O_RDONLY), "/dev/vfio/vfio"
    make_cells(container)
    assert set(Ioas.CELLS) >= {"_err", "_unmapped", "_iova"}
    for obj in (ioas, container):  # every C object it holds is a listed cell
        assert {k for k, v in vars(obj).items() if isinstance(v, ffi.CData)} == set(
            type(obj).CELLS)
        for name in type(obj).CELLS:
            getattr(obj, name)[0] = 7
    data, fds = handover.snapshot({"ioas": ioas, "container": container})
    got, _ = handover.restore(data, [_os.dup(fd) for fd in fds])
    try:
        for name, obj in (("ioas", ioas), ("container", container)):
            again = got[name]
            assert again is not obj and again.handle == obj.handle
            for cell, ctype in type(obj).CELLS.items():
                value = getattr(again, cell)
                assert ffi.typeof(value) is ffi.typeof(ctype)
                assert value != getattr(obj, cell) and value[0] == 0  # made anew
        assert got["ioas"].iommufd.fd != iommufd.fd and got["ioas"].id == 2
    finally:
        for fd in (iommufd.fd, container.fd, got["container"].fd, got["ioas"].iommufd.fd):
            _os.close(fd)
