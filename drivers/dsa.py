"""Scenario driver for Intel DSA (Data Streaming Accelerator), as the kernel selftests' dsa
driver (tools/testing/selftests/vfio/lib/drivers/dsa/dsa.c; registers from the kernel's
drivers/dma/idxd/registers.h and include/uapi/linux/idxd.h).

init resets the device, configures work queue 0 as a dedicated queue of the whole WQ
size (memmove and batch allowed, ATS off so the IOMMU sees every access) in group 0 with
engine 0, enables device and queue.  A memcpy of count 1 is one memmove descriptor; a
larger count is a chain of batch descriptors over up to `max_copies_per_batch` copies each
(a batch needs at least 2).  Descriptors and completion records live in the driver's DMA
region; descriptors reach the device as single 64-byte stores (MOVDIR64B) to the WQ
portal in BAR2, which the device access must provide (`PortalWriter`).

memcpy_wait polls the completion record and the software error register (SWERR);
a failure status or a SWERR is a DriverError EIO naming it; no completion in time is
ETIMEDOUT, after aborting what WQ 0 still holds (the selftest waits forever instead).  send_msi is an 8-byte
memmove that requests a completion interrupt on MSI-X vector 1 (vector 0 is the
device's own error/command interrupt).

Limits: size up to 1 << GENCAP.max_xfer_shift, count up to min(WQ size, 32) batches ×
min(1 << GENCAP.max_batch_shift, 1024) copies.

Differences from the C driver (7.2's dsa.c), each kept on purpose (docs/drivers.md):
init ORs memory/bus master/INTx-disable into PCI_COMMAND where C overwrites it, and
remove restores it; MSI-X vectors 0..1 are enabled (C: vector 1 alone) because our
IrqControl counts eventfds from vector 0, and only when the step asks for interrupts;
the batch count is bounded by the WQ's size, where C's 1 << (WQ size + 5) shifts by a
count (a 4-entry WQ would be handed 32 batches); a SWERR is EIO naming it and is
acknowledged (VALID|OVERFLOW written back, as the kernel's idxd driver does) where C
aborts the test; every wait is bounded (C polls forever) and a copy that never completes
is ETIMEDOUT after an ABORT_WQ (a command the DSA specification and registers.h define,
C never sends); completion status is compared under its 0x7f mask (bit 7 is the fault's
read/write flag); a batch writes only the copy descriptors it hands the device (C fills
all 1024 identically); a start while one is pending (EBUSY) or a wait without a start
(EINVAL) is refused where C's library asserts.
"""

from __future__ import annotations

import errno
import struct
import time

from vfio_scenario.drivers.base import (
    DeviceAccess,
    DmaRegion,
    Driver,
    DriverError,
    IrqControl,
    PortalWriter,
    Status,
)

INTEL = 0x8086
DSA_SPR0, DSA_GNRD, DSA_DMR = 0x0B25, 0x11FB, 0x1212

# BAR0
GENCAP = 0x10
WQCAP = 0x20
GRPCAP = 0x30
ENGCAP = 0x38
TABLE_OFFSET = 0x60
TABLE_MULT = 0x100
CMD = 0xA0
CMDSTS = 0xA8
CMDCAP = 0xB0
SWERR = 0xC0
CMDSTS_ACTIVE = 1 << 31
CMDSTS_ERR_MASK = 0xFF
SWERR_VALID, SWERR_OVERFLOW = 0x1, 0x2
WQ_PORTAL_BAR = 2
WQCFG_MIN = 5  # IDXD_WQCFG_MIN: WQCFG entries are 1 << (wqcfg_size + 5) bytes
GRPCFG_ENGINES = 32  # offsetof(struct grpcfg, engines)

CMD_ENABLE_DEVICE = 1
CMD_RESET_DEVICE = 5
CMD_ENABLE_WQ = 6
CMD_ABORT_WQ = 9  # operand: WQ bit mask (bits 0..15) and mask index (bits 16..19)
CMD_REQUEST_INT_HANDLE = 13
CMD_NAMES = {CMD_ENABLE_DEVICE: "ENABLE_DEVICE", CMD_RESET_DEVICE: "RESET_DEVICE",
             CMD_ENABLE_WQ: "ENABLE_WQ", CMD_ABORT_WQ: "ABORT_WQ"}
CMDSTS_ERRORS = {
    0x01: "INVAL_CMD", 0x02: "INVAL_WQIDX", 0x03: "HW_ERR", 0x10: "DEV_ENABLED",
    0x11: "CONFIG", 0x12: "BUSMASTER_EN", 0x13: "PASID_INVAL", 0x14: "WQ_SIZE_ERANGE",
    0x15: "GRP_CONFIG", 0x20: "DEV_NOTEN", 0x21: "WQ_ENABLED", 0x22: "WQ_SIZE",
    0x23: "WQ_PRIOR", 0x24: "WQ_MODE", 0x27: "MAX_BATCH_SIZE", 0x28: "MAX_XFER_SIZE",
}

OPCODE_BATCH = 1
OPCODE_MEMMOVE = 3
FLAG_CRAV = 0x0004  # completion record address valid
FLAG_RCR = 0x0008  # request completion record
FLAG_RCI = 0x0010  # request completion interrupt
STATUS_SUCCESS = 1
STATUS_MASK = 0x7F
COMPLETION_STATUS = {
    0x01: "SUCCESS", 0x02: "SUCCESS_PRED", 0x03: "PAGE_FAULT_NOBOF", 0x04: "PAGE_FAULT_IR",
    0x05: "BATCH_FAIL", 0x06: "BATCH_PAGE_FAULT", 0x10: "BAD_OPCODE", 0x11: "INVALID_FLAGS",
    0x12: "NOZERO_RESERVE", 0x13: "XFER_ERANGE", 0x14: "DESC_CNT_ERANGE", 0x15: "DR_ERANGE",
    0x16: "OVERLAP_BUFFERS", 0x18: "DESCLIST_ALIGN", 0x19: "INT_HANDLE_INVAL",
    0x1A: "CRA_XLAT", 0x1B: "CRA_ALIGN", 0x1C: "ADDR_ALIGN", 0x1D: "PRIV_BAD",
    0x1F: "PFAULT_RDBA", 0x20: "HW_ERR1", 0x21: "HW_ERR_DRB", 0x22: "TRANSLATION_FAIL",
}

# struct dsa_hw_desc: pasid/priv, flags|opcode, completion, src (or desc list), dst,
# size (or desc count), int_handle, reserved, 24 op-specific bytes
DESC = struct.Struct("<IIQQQIHH24x")
DESC_SIZE = 64
PRIV = 1 << 31
# struct dsa_completion_record (32 bytes): status, result, fault_info, rsvd, bytes/descs
# completed, fault_addr
COMPLETION = struct.Struct("<BBBBIQ")
COMPLETION_SIZE = 32

# region layout (struct dsa_state): 32 batch descriptors, 1024 copy descriptors, the two
# completion records (32-byte aligned), send_msi's 8-byte source and target
MAX_BATCHES = 32
MAX_COPIES = 1024
BATCH_OFFSET = 0
COPY_OFFSET = BATCH_OFFSET + MAX_BATCHES * DESC_SIZE
COPY_COMPLETION = COPY_OFFSET + MAX_COPIES * DESC_SIZE
BATCH_COMPLETION = COPY_COMPLETION + COMPLETION_SIZE
MSI_SRC = BATCH_COMPLETION + COMPLETION_SIZE
MSI_DST = MSI_SRC + 8
REGION_SIZE = 0x11000  # MSI_DST + 8 rounded up to pages
MSIX_VECTOR = 1
COMMAND_TIMEOUT = 5.0
PCI_COMMAND_ENABLE = (1 << 1) | (1 << 2) | (1 << 10)  # memory, bus master, INTx disable


def bits(value: int, low: int, width: int) -> int:
    return (value >> low) & ((1 << width) - 1)


def status_name(status: int) -> str:
    return COMPLETION_STATUS.get(status & STATUS_MASK, "unknown")


class DsaDriver(Driver):
    name = "dsa"
    status = Status.MODEL_TESTED
    ids = ((INTEL, DSA_SPR0), (INTEL, DSA_GNRD), (INTEL, DSA_DMR))
    region_size = REGION_SIZE
    # declared: GENCAP's 5-bit transfer-size shift at most, the batches and copies our
    # region holds; init sets the device's
    max_memcpy_size = 1 << 31
    max_memcpy_count = MAX_BATCHES * MAX_COPIES

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self._in_flight = 0  # count of the started memcpy, 0 when none
        self.max_copies_per_batch = 0

    @classmethod
    def probe(cls, device: DeviceAccess) -> bool:
        """A DSA by id that does not require interrupt handles to be requested."""
        if not super().probe(device):
            return False
        gencap = device.bar_read(0, GENCAP, 8)
        if not bits(gencap, 4, 1):  # no CMDCAP register
            return True
        return not device.bar_read(0, CMDCAP, 4) >> CMD_REQUEST_INT_HANDLE & 1

    # ---- helpers ----
    def _error(self, err: int, op: str, detail: str) -> DriverError:
        return DriverError(err, f"dsa.{op}", self.device.bdf, detail)

    def _region(self, op: str) -> DmaRegion:
        if self.region is None or self.region.size < MSI_DST + 8:
            raise self._error(errno.EINVAL, op, f"needs a DMA region of {REGION_SIZE} bytes")
        if self.region.iova % DESC_SIZE:
            raise self._error(errno.EINVAL, op, "DMA region IOVA not 64-byte aligned")
        return self.region

    def _check_swerr(self, op: str) -> None:
        """Raise EIO describing SWERR when the device logged a software error (then ack it)."""
        word0 = self.device.bar_read(0, SWERR, 8)
        if not word0 & SWERR_VALID:
            return
        word1, word2 = (self.device.bar_read(0, SWERR + 8 * i, 8) for i in (1, 2))
        self.device.bar_write(0, SWERR, 8, SWERR_VALID | SWERR_OVERFLOW)
        raise self._error(errno.EIO, op,
                          f"SWERR error 0x{bits(word0, 8, 8):x} operation "
                          f"0x{bits(word0, 32, 8):x} wq {bits(word0, 16, 8)}"
                          f"{' batch index ' + str(bits(word1, 0, 16)) if word0 & 0x10 else ''}"
                          f" fault_addr 0x{word2:x}{' (overflow)' if word0 & 0x2 else ''}")

    def _command(self, op: str, cmd: int, operand: int = 0) -> None:
        """Issue a device command; wait for CMDSTS.active to clear; EIO on its error code."""
        self.device.bar_write(0, CMD, 4, (cmd << 20) | operand)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        status = 0

        def done() -> bool:
            nonlocal status
            self._check_swerr(op)
            status = self.device.bar_read(0, CMDSTS, 4)
            return not status & CMDSTS_ACTIVE

        self.poll(op, f"command {CMD_NAMES.get(cmd, cmd)} still active", done, deadline)
        err = status & CMDSTS_ERR_MASK
        if err:
            raise self._error(errno.EIO, op, f"command {CMD_NAMES.get(cmd, cmd)} failed: "
                                             f"0x{err:x} ({CMDSTS_ERRORS.get(err, 'unknown')})")

    def _configure(self) -> None:
        """WQ 0 dedicated, whole WQ size, memmove+batch; group 0 = WQ 0 + engine 0."""
        gencap = self.device.bar_read(0, GENCAP, 8)
        wqcap = self.device.bar_read(0, WQCAP, 8)
        if not bits(wqcap, 16, 8) or not bits(self.device.bar_read(0, GRPCAP, 8), 0, 8) \
                or not bits(self.device.bar_read(0, ENGCAP, 8), 0, 8):
            raise self._error(errno.ENODEV, "init", "device reports no WQ, group or engine")
        table = self.device.bar_read(0, TABLE_OFFSET, 8)
        grpcfg = bits(table, 0, 16) * TABLE_MULT
        wqcfg = bits(table, 16, 16) * TABLE_MULT
        wq_size = bits(wqcap, 0, 16)
        max_xfer_shift, max_batch_shift = bits(gencap, 16, 5), bits(gencap, 21, 4)
        words = [0] * 16
        words[0] = wq_size
        # mode 1 (dedicated), ATS disabled when supported (IOMMU faults must be seen), prio 1
        words[2] = 1 | (bits(wqcap, 50, 1) << 2) | (1 << 4)
        words[3] = max_xfer_shift | (max_batch_shift << 5)
        words[8] = (1 << OPCODE_MEMMOVE) | (1 << OPCODE_BATCH)  # op_config[0]
        for i in range((1 << (bits(wqcap, 24, 4) + WQCFG_MIN)) // 4):
            self.device.bar_write(0, wqcfg + 4 * i, 4, words[i] if i < len(words) else 0)
        self.device.bar_write(0, grpcfg, 8, 1)  # wqs[0]: WQ 0
        self.device.bar_write(0, grpcfg + GRPCFG_ENGINES, 8, 1)  # engine 0
        self.max_copies_per_batch = min(1 << max_batch_shift, MAX_COPIES)
        # differs from C's min(1U << (total_wq_size + IDXD_WQCFG_MIN), 32), which shifts
        # by the WQ's size: a dedicated WQ holds wq_size descriptors, so at most that many
        # batches can be queued at once
        max_batches = min(wq_size, MAX_BATCHES)
        self.max_memcpy_size = 1 << max_xfer_shift
        self.max_memcpy_count = max_batches * self.max_copies_per_batch

    # ---- verbs ----
    def init(self, msi_vector: int | None = 0) -> None:
        """Reset, configure WQ 0 / group 0, enable device and WQ; when msi_vector is not
        None enable MSI-X vectors 0..1 (completions signal vector 1)."""
        self._region("init")
        if not isinstance(self.device, PortalWriter):
            raise self._error(errno.EOPNOTSUPP, "init",
                              "the device access has no 64-byte portal store (MOVDIR64B)")
        self.enable_command(PCI_COMMAND_ENABLE)
        self._command("init", CMD_RESET_DEVICE)
        self._configure()
        self._command("init", CMD_ENABLE_DEVICE)
        self._command("init", CMD_ENABLE_WQ, 0)
        if msi_vector is not None and isinstance(self.device, IrqControl):
            # differs from C's vfio_pci_msix_enable(device, 1, 1): eventfds are counted
            # from vector 0 here, so vectors 0..1 are enabled and vector 1 is waited on
            self._irq = self.device.enable_irq("msix", MSIX_VECTOR + 1, 0)
        self.msi_vector = MSIX_VECTOR if msi_vector is not None else None

    def remove(self) -> None:
        """Reset the device (drops WQ/group config), free MSI-X, restore PCI command."""
        self._command("remove", CMD_RESET_DEVICE)
        self._in_flight = 0
        self.release_irq_and_command()

    def _submit(self, region: DmaRegion, offset: int) -> None:
        portal = self.device
        assert isinstance(portal, PortalWriter)  # checked by init
        portal.bar_write64b(WQ_PORTAL_BAR, 0, bytes(region.mem[offset:offset + DESC_SIZE]))

    def _copy_desc(self, region: DmaRegion, offset: int, src: int, dst: int, size: int,
                   flags: int, interrupt: bool) -> None:
        if interrupt:
            flags |= FLAG_RCI
        DESC.pack_into(region.mem, offset, PRIV, flags | (OPCODE_MEMMOVE << 24),
                       region.iova + COPY_COMPLETION, src, dst, size,
                       MSIX_VECTOR if interrupt else 0, 0)

    def _memcpy_one(self, src: int, dst: int, size: int, interrupt: bool) -> None:
        region = self._region("memcpy_start")
        region.mem[COPY_COMPLETION:COPY_COMPLETION + COMPLETION_SIZE] = bytes(COMPLETION_SIZE)
        self._copy_desc(region, COPY_OFFSET, src, dst, size, FLAG_CRAV | FLAG_RCR, interrupt)
        self._submit(region, COPY_OFFSET)

    def _memcpy_batch(self, src: int, dst: int, size: int, count: int) -> None:
        region = self._region("memcpy_start")
        region.mem[BATCH_COMPLETION:BATCH_COMPLETION + COMPLETION_SIZE] = bytes(COMPLETION_SIZE)
        copies = min(count, self.max_copies_per_batch)
        for i in range(copies):
            # no completion record per copy: only the batch reports
            self._copy_desc(region, COPY_OFFSET + i * DESC_SIZE, src, dst, size, FLAG_CRAV,
                            False)
        left = count
        for i in range(MAX_BATCHES):
            if not left:
                break
            n = min(left, self.max_copies_per_batch)
            left -= n
            if left == 1:  # a batch needs 2 copies: leave 2 for the next one
                n, left = n - 1, 2
            flags = FLAG_CRAV | (FLAG_RCR if not left else 0)
            offset = BATCH_OFFSET + i * DESC_SIZE
            DESC.pack_into(region.mem, offset, PRIV, flags | (OPCODE_BATCH << 24),
                           region.iova + BATCH_COMPLETION, region.iova + COPY_OFFSET, 0, n,
                           0, 0)
            self._submit(region, offset)
        if left:
            raise self._error(errno.EINVAL, "memcpy_start", f"{left} copies did not fit")

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """One memmove (count 1) or batches of memmoves (count > 1); returns at once."""
        self.check_memcpy(src, dst, size, count)
        if self._in_flight:
            raise self._error(errno.EBUSY, "memcpy_start", "previous memcpy not waited for")
        if count == 1:
            self._memcpy_one(src, dst, size, False)
        else:
            self._memcpy_batch(src, dst, size, count)
        self._in_flight = count

    def _wait_completion(self, op: str, offset: int, timeout: float) -> None:
        region = self._region(op)
        deadline = time.monotonic() + timeout

        def done() -> bool:
            self._check_swerr(op)
            return region.mem[offset] != 0

        try:
            self.poll(op, "no completion record written", done, deadline)
        except DriverError as e:
            if e.errno == errno.ETIMEDOUT:
                # abort what WQ 0 still holds, so no late completion lands on the next memcpy
                # (differs from C, which waits forever and never sends ABORT_WQ)
                self._command(op, CMD_ABORT_WQ, 1)
            raise
        status, _, _, _, completed, fault_addr = COMPLETION.unpack_from(region.mem, offset)
        if status & STATUS_MASK != STATUS_SUCCESS:
            raise self._error(errno.EIO, op,
                              f"completion status 0x{status:x} ({status_name(status)}), "
                              f"{completed} completed, fault_addr 0x{fault_addr:x}")

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Wait for the copy's (count 1) or the last batch's completion record."""
        count, self._in_flight = self._in_flight, 0
        if not count:
            raise self._error(errno.EINVAL, "memcpy_wait", "no memcpy started")
        self._wait_completion("memcpy_wait", COPY_COMPLETION if count == 1 else BATCH_COMPLETION,
                              timeout)

    def _send_msi(self) -> None:
        """An 8-byte memmove inside the region that requests the completion interrupt."""
        if self._in_flight:
            raise self._error(errno.EBUSY, "send_msi", "a memcpy is in flight")
        region = self._region("send_msi")
        self._memcpy_one(region.iova + MSI_SRC, region.iova + MSI_DST, 8, True)
        self._wait_completion("send_msi", COPY_COMPLETION, 5.0)
