"""Register model of an NVMe controller (NVMe 1.4) as the nvme scenario driver programs it.

BAR0: CAP, VS, CC, CSTS, AQA, ASQ, ACQ (64-bit registers as 32-bit halves) and the
doorbells from 0x1000.  Setting CC.EN makes the controller ready with the admin queues
of AQA/ASQ/ACQ; clearing it deletes every queue.  A submission-queue tail doorbell
processes the new entries at once: admin Identify (controller, namespace), Get
Features, Create I/O CQ/SQ; NVM Write and Read of one namespace held in memory.  Data
pointers are PRPs (with PRP lists) or SGLs (data blocks, last segment).  Each
completion is posted with the phase tag and raises MSI-X vector IV of its CQ.

Admin or NVM opcodes other than the ones above raise `UndefinedCommand`: the model does
not guess how a controller answers a command it does not implement (a real one may
support it, or answer Invalid Command Opcode).

Failure knobs: `hang` (commands are taken but never completed), `reset()` (an FLR: every
register and queue back to the power-on state).  A DMA that touches an unmapped IOVA
completes the command with Data Transfer Error (SCT 0, SC 4), as the spec asks of a
controller that cannot transfer the data.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.models.iommu import IommuFault
from tests.models.pci import Bar, ModelDevice, UndefinedCommand

QEMU_VENDOR = 0x1B36
QEMU_NVME = 0x0010
CLASS_NVME = 0x010802
QEMU_MODEL = "QEMU NVMe Ctrl"

CAP, VS, CC, CSTS, AQA, ASQ, ACQ = 0x00, 0x08, 0x14, 0x1C, 0x24, 0x28, 0x30
DOORBELLS = 0x1000
PAGE = 4096
SQE = struct.Struct("<BBHI8xQQQ6I")
CQE = struct.Struct("<IIHHHH")
SGL_DESC = struct.Struct("<QI3xB")

SC_SUCCESS = 0x00
SC_INVALID_FIELD = 0x02
SC_DATA_TRANSFER_ERROR = 0x04
SC_INVALID_NAMESPACE = 0x0B
SC_LBA_OUT_OF_RANGE = 0x80


class CommandFailed(Exception):
    def __init__(self, sc: int) -> None:
        super().__init__(f"status {sc:#x}")
        self.sc = sc


@dataclass
class Queue:
    qid: int
    base: int  # IOVA
    entries: int
    cqid: int = 0  # SQ: its CQ
    vector: int = 0  # CQ: MSI-X vector
    interrupts: bool = True  # CQ: IEN
    head: int = 0
    tail: int = 0
    phase: int = 1


@dataclass
class Namespace:
    block_size: int = 512
    blocks: int = 1 << 17  # 64 MiB of 512-byte blocks, like the testbed's image
    data: dict[int, bytes] = field(default_factory=dict)

    def read(self, lba: int, count: int) -> bytes:
        return b"".join(self.data.get(lba + i, bytes(self.block_size)) for i in range(count))

    def write(self, lba: int, payload: bytes) -> None:
        for i in range(len(payload) // self.block_size):
            self.data[lba + i] = payload[i * self.block_size:(i + 1) * self.block_size]


class NvmeModel(ModelDevice):
    def __init__(self, vendor_id: int = QEMU_VENDOR, device_id: int = QEMU_NVME,
                 model: str = QEMU_MODEL, mdts: int = 7, sgl: bool = True, mqes: int = 2047,
                 timeout_units: int = 15, msix_count: int = 65) -> None:
        super().__init__(vendor_id, device_id, CLASS_NVME, msix_count)
        self.model_name = model
        self.mdts = mdts
        self.sgl = sgl
        self.cap = mqes | 1 << 16 | timeout_units << 24 | 1 << 37  # CQR, NVM command set
        self.namespace = Namespace()
        self.hang = False
        self.commands: list[tuple[int, int]] = []  # (qid, opcode) of every command taken
        self.bars[0] = self._bar0()
        self._power_on()

    def _power_on(self) -> None:
        self.cc = 0
        self.csts = 0
        self.aqa = 0
        self.asq = 0
        self.acq = 0
        self.sqs: dict[int, Queue] = {}
        self.cqs: dict[int, Queue] = {}

    def reset(self) -> None:
        """Function level reset: registers and queues as at power-on, bus master off."""
        self._power_on()
        self.config[4] &= ~0x04

    # ---- registers ----
    def _bar0(self) -> Bar:
        bar = Bar(0x4000)
        for offset, name in ((CAP, "cap"), (ASQ, "asq"), (ACQ, "acq")):
            bar.reg(offset, 4, on_read=self._half(name, 0), on_write=self._set_half(name, 0))
            bar.reg(offset + 4, 4, on_read=self._half(name, 32),
                    on_write=self._set_half(name, 32))
        bar.reg(VS, 4, 0x00010400, on_write=self._read_only)
        bar.reg(CC, 4, on_read=lambda: self.cc, on_write=self._write_cc)
        bar.reg(CSTS, 4, on_read=lambda: self.csts, on_write=self._read_only)
        bar.reg(AQA, 4, on_read=lambda: self.aqa, on_write=self._write_aqa)
        for qid in range(4):
            bar.reg(DOORBELLS + 8 * qid, 4, on_write=functools.partial(self._sq_doorbell, qid))
            bar.reg(DOORBELLS + 8 * qid + 4, 4,
                    on_write=functools.partial(self._cq_doorbell, qid))
        return bar

    def _half(self, name: str, shift: int) -> Callable[[], int]:
        return lambda: (int(getattr(self, name)) >> shift) & 0xFFFFFFFF

    def _set_half(self, name: str, shift: int) -> Callable[[int], None]:
        def write(value: int) -> None:
            if name == "cap":
                self._read_only(value)
            keep = getattr(self, name) & ~(0xFFFFFFFF << shift)
            setattr(self, name, keep | value << shift)
        return write

    @staticmethod
    def _read_only(value: int) -> None:
        raise AssertionError("write to a read-only NVMe register")

    def _write_aqa(self, value: int) -> None:
        assert not self.cc & 1, "AQA written while the controller is enabled"
        self.aqa = value

    def _write_cc(self, value: int) -> None:
        was = self.cc & 1
        self.cc = value
        if value & 1 and not was:
            sq_entries, cq_entries = (self.aqa & 0xFFF) + 1, ((self.aqa >> 16) & 0xFFF) + 1
            self.cqs[0] = Queue(0, self.acq, cq_entries)
            self.sqs[0] = Queue(0, self.asq, sq_entries, cqid=0)
            self.csts = 1
        elif not value & 1 and was:
            self.sqs.clear()
            self.cqs.clear()
            self.csts = 0

    def _cq_doorbell(self, qid: int, value: int) -> None:
        assert qid in self.cqs, f"CQ {qid} head doorbell of a queue that does not exist"
        self.cqs[qid].head = value

    def _sq_doorbell(self, qid: int, value: int) -> None:
        assert qid in self.sqs, f"SQ {qid} tail doorbell of a queue that does not exist"
        sq = self.sqs[qid]
        sq.tail = value
        while sq.head != sq.tail:
            raw = self.iommu.read(sq.base + sq.head * SQE.size, SQE.size)
            sq.head = (sq.head + 1) % sq.entries
            cmd = SQE.unpack(raw)
            self.commands.append((qid, cmd[0]))
            if self.hang:
                continue
            try:
                result = self._admin(cmd) if qid == 0 else self._nvm(cmd)
                sc = SC_SUCCESS
            except CommandFailed as e:
                result, sc = 0, e.sc
            except IommuFault:
                result, sc = 0, SC_DATA_TRANSFER_ERROR
            self._complete(sq, cmd[2], result, sc)

    def _complete(self, sq: Queue, cid: int, result: int, sc: int) -> None:
        cq = self.cqs[sq.cqid]
        status = sc << 1 | cq.phase
        self.iommu.write(cq.base + cq.tail * CQE.size,
                         CQE.pack(result, 0, sq.head, sq.qid, cid, status))
        cq.tail = (cq.tail + 1) % cq.entries
        if cq.tail == 0:
            cq.phase ^= 1
        if cq.interrupts:
            self.signal_msix(cq.vector)

    # ---- data pointers ----
    def _segments(self, cmd: tuple[int, ...], length: int) -> list[tuple[int, int]]:
        """(IOVA, bytes) pieces of the command's data pointer, `length` bytes in all."""
        flags, dptr1, dptr2 = cmd[1], cmd[5], cmd[6]
        if (flags >> 6) & 3:
            if not self.sgl:
                raise CommandFailed(SC_INVALID_FIELD)
            return self._sgl(SGL_DESC.unpack(dptr1.to_bytes(8, "little")
                                             + dptr2.to_bytes(8, "little")), length)
        return self._prp(dptr1, dptr2, length)

    def _sgl(self, desc: tuple[int, int, int], length: int) -> list[tuple[int, int]]:
        address, size, kind = desc
        if kind == 0x00:
            pieces = [(address, size)]
        elif kind == 0x30:
            raw = self.iommu.read(address, size)
            pieces = []
            for i in range(size // SGL_DESC.size):
                a, n, k = SGL_DESC.unpack_from(raw, i * SGL_DESC.size)
                if k != 0x00:
                    raise CommandFailed(SC_INVALID_FIELD)
                pieces.append((a, n))
        else:
            raise CommandFailed(SC_INVALID_FIELD)
        if sum(n for _, n in pieces) != length:
            raise CommandFailed(SC_INVALID_FIELD)
        return pieces

    def _prp(self, prp1: int, prp2: int, length: int) -> list[tuple[int, int]]:
        first = min(length, PAGE - prp1 % PAGE)
        pieces = [(prp1, first)]
        rest = length - first
        if rest <= 0:
            return pieces
        if rest <= PAGE:
            return [*pieces, (prp2, rest)]
        count = -(-rest // PAGE)
        pages = struct.unpack(f"<{count}Q", self.iommu.read(prp2, 8 * count))
        for page in pages:
            pieces.append((page, min(PAGE, rest)))
            rest -= PAGE
        return pieces

    def _to_host(self, cmd: tuple[int, ...], data: bytes) -> None:
        offset = 0
        for iova, size in self._segments(cmd, len(data)):
            self.iommu.write(iova, data[offset:offset + size])
            offset += size

    def _from_host(self, cmd: tuple[int, ...], length: int) -> bytes:
        return b"".join(self.iommu.read(iova, size) for iova, size in self._segments(cmd, length))

    # ---- commands ----
    def identify_controller(self) -> bytes:
        data = bytearray(PAGE)
        data[0:2] = self.vendor_id.to_bytes(2, "little")
        data[4:24] = b"vfio0".ljust(20)
        data[24:64] = self.model_name.encode().ljust(40)
        data[77] = self.mdts
        data[516:520] = (1).to_bytes(4, "little")
        data[536:540] = (1 if self.sgl else 0).to_bytes(4, "little")
        return bytes(data)

    def identify_namespace(self, nsid: int) -> bytes:
        data = bytearray(PAGE)
        if nsid != 1:
            raise CommandFailed(SC_INVALID_NAMESPACE)
        ns = self.namespace
        data[0:8] = ns.blocks.to_bytes(8, "little")
        data[128:132] = ((ns.block_size.bit_length() - 1) << 16).to_bytes(4, "little")
        return bytes(data)

    def _admin(self, cmd: tuple[int, ...]) -> int:
        opcode, nsid, cdw10, cdw11 = cmd[0], cmd[3], cmd[7], cmd[8]
        if opcode == 0x06:
            cns = cdw10 & 0xFF
            if cns == 1:
                self._to_host(cmd, self.identify_controller())
            elif cns == 0:
                self._to_host(cmd, self.identify_namespace(nsid))
            else:
                raise CommandFailed(SC_INVALID_FIELD)
            return 0
        if opcode == 0x0A:
            return 0 if cdw10 & 0xFF == 0x01 else self._invalid()
        if opcode == 0x05:
            qid, size = cdw10 & 0xFFFF, (cdw10 >> 16) + 1
            self.cqs[qid] = Queue(qid, cmd[5], size, vector=cdw11 >> 16,
                                  interrupts=bool(cdw11 & 2))
            return 0
        if opcode == 0x01:
            qid, size = cdw10 & 0xFFFF, (cdw10 >> 16) + 1
            if cdw11 >> 16 not in self.cqs:
                raise CommandFailed(SC_INVALID_FIELD)
            self.sqs[qid] = Queue(qid, cmd[5], size, cqid=cdw11 >> 16)
            return 0
        raise UndefinedCommand(f"nvme model: admin opcode {opcode:#04x} (modelled: Identify, "
                               "Get Features, Create I/O CQ/SQ)")

    @staticmethod
    def _invalid() -> int:
        raise CommandFailed(SC_INVALID_FIELD)

    def _nvm(self, cmd: tuple[int, ...]) -> int:
        opcode, nsid = cmd[0], cmd[3]
        if nsid != 1:
            raise CommandFailed(SC_INVALID_NAMESPACE)
        lba, count = cmd[7] | cmd[8] << 32, (cmd[9] & 0xFFFF) + 1
        ns = self.namespace
        if lba + count > ns.blocks:
            raise CommandFailed(SC_LBA_OUT_OF_RANGE)
        if self.mdts and count * ns.block_size > PAGE << self.mdts:
            raise CommandFailed(SC_INVALID_FIELD)
        if opcode == 0x01:
            ns.write(lba, self._from_host(cmd, count * ns.block_size))
        elif opcode == 0x02:
            self._to_host(cmd, ns.read(lba, count))
        else:
            raise UndefinedCommand(f"nvme model: NVM opcode {opcode:#04x} (modelled: Write, "
                                   "Read)")
        return 0
