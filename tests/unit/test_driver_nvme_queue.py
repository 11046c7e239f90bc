"""The nvme driver's queue pair against a fake controller that posts completion entries.

The fake writes each 16-byte entry in one store, as QEMU's nvme does (one pci_dma_write of
the whole entry) and as a PCIe controller does (one posted write); `RacingWords` lands
that store between two of the driver's 32-bit reads, the interleaving that made the
driver take the previous lap's command id with the new phase tag (issue #10).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

import pytest
from vfio_scenario.drivers.base import DriverError
from vfio_scenario.drivers.nvme import CQE, SQE, QueuePair

from tests.models.nvme import NvmeModel
from tests.unit.test_driver_nvme import BUF_IOVA, DST, setup

SQ, CQ = 0x0000, 0x1000
BDF = "0000:00:06.0"


class FakeController:
    """The device side of one queue pair: reads submitted entries, posts completions
    with its own tail and phase tag, and records every doorbell write."""

    def __init__(self, entries: int, qid: int = 1) -> None:
        self.mem = memoryview(bytearray(2 * 4096))
        self.entries = entries
        self.qid = qid
        self.doorbells: list[tuple[int, int]] = []
        self.tail = 0
        self.phase = 1
        self.sq_head = 0
        self.queue = QueuePair(self.mem, self.ring, BDF, qid, SQ, CQ, entries)

    def ring(self, index: int, value: int) -> None:
        self.doorbells.append((index, value))

    def fetch(self) -> int:
        """Take the next submitted entry (advancing the SQ head); returns its command id."""
        cid: int = SQE.unpack_from(self.mem, SQ + self.sq_head * SQE.size)[2]
        self.sq_head = (self.sq_head + 1) % self.entries
        return cid

    def post(self, cid: int, status: int = 0, result: int = 0) -> None:
        """Write one completion entry, all 16 bytes in one store, at the CQ tail."""
        entry = CQE.pack(result, 0, self.sq_head, self.qid, cid, status << 1 | self.phase)
        self.mem[CQ + self.tail * CQE.size:CQ + (self.tail + 1) * CQE.size] = entry
        self.tail = (self.tail + 1) % self.entries
        if self.tail == 0:
            self.phase ^= 1

    def complete(self, status: int = 0) -> int:
        cid = self.fetch()
        self.post(cid, status)
        return cid


class RacingWords:
    """The CQ as the driver reads it, word by word, with a controller store landing right
    after the driver's `after`-th read."""

    def __init__(self, words: memoryview, store: Callable[[], None], after: int) -> None:
        self.words = words
        self.store = store
        self.after = after
        self.reads = 0

    def __getitem__(self, index: int, /) -> int:
        value: int = self.words[index]
        self.reads += 1
        if self.reads == self.after:
            self.store()
        return value


def roundtrip(ctrl: FakeController) -> int:
    """Submit a command, let the controller complete it, take the completion."""
    cid = ctrl.queue.submit(0x02)
    ctrl.complete()
    assert ctrl.queue.take(cid, "test") is not None
    return cid


def cq_doorbells(ctrl: FakeController) -> list[int]:
    return [value for index, value in ctrl.doorbells if index == 2 * ctrl.qid + 1]


def test_the_phase_tag_flips_at_every_wrap_of_the_completion_queue() -> None:
    ctrl = FakeController(entries=4)
    q = ctrl.queue
    for n in range(13):  # three laps and one entry
        cid = q.submit(0x02)
        assert q.take(cid, "test") is None  # nothing posted yet: the slot is old
        ctrl.complete()
        done = q.take(cid, "test")
        assert done is not None and (done.cid, done.sqhd, done.sqid) == (cid, (n + 1) % 4, 1)
        assert q.phase == (1 if (n + 1) // 4 % 2 == 0 else 0)
    assert cq_doorbells(ctrl) == [1, 2, 3, 0] * 3 + [1]
    assert [v for i, v in ctrl.doorbells if i == 2] == [1, 2, 3, 0] * 3 + [1]


def test_an_entry_left_from_the_previous_lap_is_not_a_completion() -> None:
    ctrl = FakeController(entries=2)
    q = ctrl.queue
    roundtrip(ctrl)
    roundtrip(ctrl)
    third = q.submit(0x02)  # slot 0 still holds the first command's entry, phase 1
    assert q.phase == 0 and q.poll() is None and q.take(third, "test") is None
    ctrl.complete()
    done = q.take(third, "test")
    assert done is not None and done.cid == third


@pytest.mark.parametrize("after", [1, 2, 3])
def test_an_entry_posted_between_the_drivers_reads_is_never_torn(after: int) -> None:
    """Slot 0 holds the previous lap's entry (command 1: result 0, SQ head 1, success);
    the controller posts command 5's entry there (result 0x1234, SQ head 2, Data Transfer
    Error) while the driver reads the slot: every field must come from the new entry."""
    ctrl = FakeController(entries=4)
    q = ctrl.queue
    assert [roundtrip(ctrl) for _ in range(4)] == [1, 2, 3, 4]
    assert q.phase == 0 and q.outstanding == set()
    cid, later = q.submit(0x02), q.submit(0x02)
    assert (ctrl.fetch(), ctrl.fetch()) == (cid, later)
    q.cq_words = RacingWords(ctrl.mem[CQ:CQ + 4 * CQE.size].cast("I"),
                             lambda: ctrl.post(cid, status=0x04, result=0x1234), after)
    polls = 0
    done = None
    while done is None and polls <= after:  # polls that end before the store see no entry
        done = q.take(cid, "test")
        polls += 1
    assert done is not None
    assert (done.cid, done.sc, done.result, done.sqhd, done.sqid) == (cid, 0x04, 0x1234, 2, 1)
    assert q.head == 1 and cq_doorbells(ctrl)[-1] == 1 and q.outstanding == {later}


def test_a_completion_of_another_outstanding_command_is_kept_for_its_waiter() -> None:
    ctrl = FakeController(entries=8)
    q = ctrl.queue
    a, b = q.submit(0x01), q.submit(0x02)
    ctrl.fetch()
    ctrl.fetch()
    ctrl.post(b, status=0x80)
    ctrl.post(a)
    done_a = q.take(a, "test")
    assert done_a is not None and (done_a.cid, done_a.ok) == (a, True)
    assert set(q.arrived) == {b}
    done_b = q.take(b, "test")
    assert done_b is not None and (done_b.cid, done_b.sc) == (b, 0x80)
    assert q.outstanding == set() and q.arrived == {}
    assert cq_doorbells(ctrl) == [1, 2]


@pytest.mark.parametrize("posted", ["never submitted", "already taken"])
def test_a_completion_whose_command_is_not_outstanding_is_an_error(posted: str) -> None:
    ctrl = FakeController(entries=8)
    q = ctrl.queue
    taken = roundtrip(ctrl)
    cid = q.submit(0x02)
    ctrl.fetch()
    stray = 77 if posted == "never submitted" else taken
    ctrl.post(stray)
    with pytest.raises(DriverError) as e:
        q.take(cid, "nvme.memcpy_wait")
    assert e.value.errno == errno.EIO
    assert f"completion of command {stray}, which is not outstanding (waiting for {cid}; " \
        in str(e.value)


def test_taking_a_command_that_was_never_submitted_is_refused() -> None:
    q = FakeController(entries=4).queue
    with pytest.raises(DriverError) as e:
        q.take(9, "test")
    assert e.value.errno == errno.EINVAL


def test_a_full_submission_queue_is_refused_until_the_controller_reports_progress() -> None:
    ctrl = FakeController(entries=4)
    q = ctrl.queue
    cids = [q.submit(0x02) for _ in range(3)]
    with pytest.raises(DriverError) as e:
        q.submit(0x02)
    assert e.value.errno == errno.EBUSY
    ctrl.complete()
    assert q.take(cids[0], "test") is not None and q.sq_head == 1
    assert q.submit(0x02) not in cids


def test_command_ids_skip_ffff_and_the_ids_still_outstanding() -> None:
    ctrl = FakeController(entries=8)
    q = ctrl.queue
    q.cid = 0xFFFB
    held = q.submit(0x02)  # 0xFFFC stays outstanding
    ctrl.fetch()
    q.cid = 0xFFFB
    assert held == 0xFFFC
    assert [q.submit(0x02) for _ in range(3)] == [0xFFFD, 0xFFFE, 0x0000]


def test_two_hundred_back_to_back_copies_wrap_both_queues_many_times() -> None:
    model = NvmeModel()
    drv, buf = setup(model)
    drv.init()
    assert drv.io is not None
    sizes = [8, 511, 512, 4096, 4097, 65536, 12345]
    for n in range(210):
        size = sizes[n % len(sizes)]
        data = os.urandom(size)
        buf[0:size] = data
        buf[DST:DST + size + 16] = struct.pack("<B", n & 0xFF) * (size + 16)
        drv.memcpy_start(BUF_IOVA, BUF_IOVA + DST, size)
        drv.memcpy_wait()
        assert bytes(buf[DST:DST + size]) == data
        assert bytes(buf[DST + size:DST + size + 16]) == struct.pack("<B", n & 0xFF) * 16
    assert drv.io.outstanding == set() and drv.io.cid == 420
    assert (drv.io.head, drv.io.phase) == (420 % drv.io.entries, (420 // drv.io.entries + 1) % 2)
