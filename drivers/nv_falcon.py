"""Scenario driver for NVIDIA GPUs: DMA through a Falcon microcontroller, as v10 of
"selftests/vfio: Add NVIDIA GPU Falcon DMA test driver" (Rubin Du, 2026-03-25;
nv_falcons/nv_falcons.c and hw.h) does it, after NVIDIA's gpu-admin-tools.  Every
register write and FSP command here is one v10 makes; where we differ from v10 on
purpose the code says "differs from v10" and docs/drivers.md lists it.

The GPU is identified by PMC_BOOT_0 (BAR0 offset 0): architecture bits 28:24,
implementation 23:20.  Each architecture uses one Falcon and one way to reset it:

  Kepler, Maxwell gen1   PMU, legacy FBIF offsets, PMC_ENABLE PWR|HUB
  Maxwell gen2, P100     PMU, PMC_ENABLE PWR          (Pascal with implementation 0)
  P4/P40 (Pascal 10x)    PMU, engine reset register
  Volta, Turing, Ampere  GSP, engine reset register
  Ada                    PMU, engine reset register (reset first when it answers 0xbadf5620)
  Hopper                 OFA, no outside reset; FBDMA enabled through the FSP (an MCTP
                         message over the FSP's EMEM queue), OFA DMA support checked
Blackwell and later are not supported.

init (v10's nv_gpu_init): falcon_enable, then bus mastering on; on Hopper fsp_init (wait
for FSP boot, drain and reset busy RPC queues) and the FBDMA ENABLE command, every time,
then the OFA DMA support check; on Turing+ the boot-complete and memory-clear waits;
the Falcon's reset (disable, enable); DMEM port, FBIF and DMACTL set-up.  As in v10 the
waits for FSP boot, boot complete, memory clear and DMACTL ready only log when they time
out (`warnings`), and init goes on.

memcpy_start only records the request (the Falcon runs one DMA at a time); memcpy_wait
performs it chunk by chunk: src → DMEM, DMEM → dst, each DMA polled up to 1 s for its
done bit.  A DMA that does not complete returns ETIMEDOUT naming it, and nothing is
reset (v10 returns the error).  A chunk is a power of two of 4..256 bytes; a size that
is not a multiple of 4 is EINVAL from memcpy_wait, as v10's size_to_dma_encoding.
Limits: 256 bytes, count 1.  The Falcon cannot raise an MSI on demand: NO_SEND_MSI.

remove (v10's nv_gpu_remove): the Falcon is disabled (not on Hopper: no outside reset)
and bus mastering turned off; nothing is sent to the FSP.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from vfio_scenario.drivers.base import DeviceAccess, DmaRegion, Driver, DriverError, Feature, Status
from vfio_scenario.uapi.pci import PCI_COMMAND, PCI_COMMAND_MASTER


def _warn(exc: DriverError) -> None:
    """Log a timeout v10 ignores. `logging` is imported here, when one happens: every
    engine start in the testbed's guest imports this driver, and logging costs it
    tenths of a second under TCG."""
    import logging

    logging.getLogger(__name__).warning("%s (ignored, as v10 does)", exc)

NVIDIA = 0x10DE
PCI_CLASS_BASE = 0x0B
PCI_BASE_CLASS_DISPLAY = 0x03

# hw.h names in comments
PMC_BOOT_0 = 0x000000
PMC_ENABLE = 0x000200
PMC_ENABLE_PWR = 1 << 13
PMC_ENABLE_HUB = 1 << 29
DMA_ADDR_TOP_BITS = 0x100F04  # NV_GPU_DMA_ADDR_TOP_BITS_REG: address bits 47+ (global)
MEM_CLEAR = 0x100B20  # NV_MEM_CLEAR_OFFSET
BOOT_COMPLETE, BOOT_COMPLETE_OK = 0x118234, 0x3FF
FSP_BOOT_COMPLETE, FSP_BOOT_COMPLETE_OK = 0x0200BC, 0xFF
OFA_DMA_SUPPORT = 0x8443C0  # NV_OFA_DMA_SUPPORT_CHECK_REG

# Falcon registers, relative to its base page
DMACTL = 0x10C
DMACTL_DMEM_SCRUBBING = 0x1  # hw.h's name for the bit init clears
DMACTL_READY_MASK = 0x6  # bits 1..2: 0 when the Falcon is ready after enable
DMEMC = 0x1C0
DMATRFBASE = 0x110  # NV_FALCON_DMA_ADDR_LOW_OFFSET: address bits 8..39
DMATRFMOFFS = 0x114  # NV_FALCON_DMA_MEM_OFFSET: DMEM offset
DMATRFCMD = 0x118  # NV_FALCON_DMA_CMD_OFFSET
DMATRFFBOFFS = 0x11C  # NV_FALCON_DMA_BLOCK_OFFSET: address bits 0..7
DMATRFBASE1 = 0x128  # NV_FALCON_DMA_ADDR_HIGH_OFFSET: address bits 40..46
ENGINE_RESET = 0x3C0
MAILBOX_TEST = 0x40C
MAILBOX_NEEDS_RESET = 0xBADF5620
CORE_SELECT = 0x1668
CORE_SELECT_RISCV = 0x30
DMATRFCMD_DONE = 0x2
DMATRFCMD_WRITE = 0x20  # DMEM → memory
DMATRFCMD_SIZE_SHIFT = 8
TRANSCFG_TARGET_MASK = 0x3
TRANSCFG_SYSMEM_DEFAULT = 0x5
FBIF_CTL_ALLOW_PHYS = 0x10
FBIF_CTL_ALLOW_FULL_PHYS = 0x80
FBIF_CTL2 = 0x60  # after FBIF_CTL

MIN_DMA, MAX_DMA, DMA_BLOCK = 4, 256, 256
# v10's timeouts (ms in the C source); module constants so the unit tests can shorten them
BOOT_TIMEOUT = 5.0  # FSP boot, boot complete, memory clear
ENABLE_TIMEOUT = 1.0  # DMACTL ready after enable
DMA_TIMEOUT = 1.0  # each DMA's done bit
FSP_DRAIN_TIMEOUT = 5.0  # fsp_reset_rpc_state: a response to a busy queue
FSP_SEND_TIMEOUT = 1.0  # fsp_rpc_send_data: the command queue empty
FSP_TIMEOUT = 5.0  # the response to a command

# FSP RPC channel 2 (Hopper): EMEM port 2 and the channel's command/message queues
FSP_BASE_PAGE = 0x8F0000
FSP_EMEM_CTRL = 0x8F2000 + 0xAC0 + 2 * 8  # NV_FSP_EMEM_PORT2_CTRL
FSP_EMEM_DATA = 0x8F2000 + 0xAC4 + 2 * 8  # NV_FSP_EMEM_PORT2_DATA
FSP_EMEMC_AINCR, FSP_EMEMC_AINCW = 1 << 24, 1 << 25
FSP_QUEUE_HEAD = FSP_BASE_PAGE + 0x2C00 + 2 * 8
FSP_QUEUE_TAIL = FSP_BASE_PAGE + 0x2C04 + 2 * 8
FSP_MSG_HEAD = FSP_BASE_PAGE + 0x2C80 + 2 * 8
FSP_MSG_TAIL = FSP_BASE_PAGE + 0x2C84 + 2 * 8
FSP_RPC_EMEM_BASE = 2 * 1024  # channel 2 × channel size
FSP_MAX_PACKET_WORDS = 1024 // 4
FSP_MIN_RESPONSE_WORDS = 5  # mctp header, message header, status header, type, status
MCTP_SOM, MCTP_EOM = 0x80000000, 0x40000000
MCTP_MSG_VENDOR_DEFINED, MCTP_VENDOR_NVIDIA = 0x7E, NVIDIA
NVDM_TYPE_FBDMA = 0x22
NVDM_TYPE_RESPONSE = 0x15
FBDMA_SUBCMD_ENABLE = 0x1  # the only FBDMA subcommand hw.h defines


class Arch(IntEnum):
    KEPLER = 0
    MAXWELL_GEN1 = 1
    MAXWELL_GEN2 = 2
    PASCAL = 3  # P100: PMC reset
    PASCAL_10X = 4  # P4, P40: engine reset
    VOLTA = 5
    TURING = 6
    AMPERE = 7
    ADA = 8
    HOPPER = 9


@dataclass(frozen=True)
class Falcon:
    """Where a Falcon's registers are: its base page and its FBIF registers (absolute)."""

    name: str
    base: int
    fbif_transcfg: int
    fbif_ctl: int
    outside_reset: bool = True


PMU_LEGACY = Falcon("pmu", 0x10A000, 0x10A600, 0x10A624)
PMU = Falcon("pmu", 0x10A000, 0x10AE00, 0x10AE24)
GSP = Falcon("gsp", 0x110000, 0x110600, 0x110624)
OFA = Falcon("ofa", 0x844000, 0x844400, 0x844424, outside_reset=False)


@dataclass(frozen=True)
class ArchProps:
    falcon: Falcon
    pmc_enable_mask: int  # 0: reset through the Falcon's engine reset register
    memory_clear: bool  # wait for boot and memory clear before using the GPU


ARCHS = {
    Arch.KEPLER: ArchProps(PMU_LEGACY, PMC_ENABLE_PWR | PMC_ENABLE_HUB, False),
    Arch.MAXWELL_GEN1: ArchProps(PMU_LEGACY, PMC_ENABLE_PWR | PMC_ENABLE_HUB, False),
    Arch.MAXWELL_GEN2: ArchProps(PMU, PMC_ENABLE_PWR, False),
    Arch.PASCAL: ArchProps(PMU, PMC_ENABLE_PWR, False),
    Arch.PASCAL_10X: ArchProps(PMU, 0, False),
    Arch.VOLTA: ArchProps(GSP, 0, False),
    Arch.TURING: ArchProps(GSP, 0, True),
    Arch.AMPERE: ArchProps(GSP, 0, True),
    Arch.ADA: ArchProps(PMU, 0, True),
    Arch.HOPPER: ArchProps(OFA, 0, True),
}
FAMILIES = {0x0E: Arch.KEPLER, 0x0F: Arch.KEPLER, 0x10: Arch.KEPLER,
            0x11: Arch.MAXWELL_GEN1, 0x12: Arch.MAXWELL_GEN2, 0x14: Arch.VOLTA,
            0x16: Arch.TURING, 0x17: Arch.AMPERE, 0x18: Arch.HOPPER, 0x19: Arch.ADA}
# PMC_BOOT_0 values the series lists as validated
VERIFIED = {
    0x0E40A0A2: "K520", 0x0E6000A1: "GTX660", 0x0E63A0A1: "K4000", 0x0F22D0A1: "K80",
    0x108000A1: "GT635", 0x117010A2: "GTX750", 0x117020A2: "GTX745", 0x124320A1: "M60",
    0x130000A1: "P100", 0x134000A1: "P4", 0x132000A1: "P40", 0x140000A1: "V100",
    0x164000A1: "T4", 0xB77000A1: "A16", 0x170000A1: "A100", 0xB72000A1: "A10",
    0x180000A1: "H100", 0x194000A1: "L4", 0x192000A1: "L40S",
}


def arch_of(boot0: int) -> Arch | None:
    """The architecture PMC_BOOT_0 names, None when unsupported (Blackwell, unknown)."""
    family, implementation = (boot0 >> 24) & 0x1F, (boot0 >> 20) & 0xF
    if family == 0x13:
        return Arch.PASCAL if implementation == 0 else Arch.PASCAL_10X
    return FAMILIES.get(family)


def dma_chunks(src: int, dst: int, size: int) -> list[tuple[int, int, int]]:
    """(src, dst, size) DMAs covering the copy: each a power of two of at most 256 bytes
    that crosses no 256-byte block on either side."""
    chunks = []
    while size:
        chunk = 1 << (size.bit_length() - 1)
        for addr in (src, dst):
            offset = addr % DMA_BLOCK
            if offset:
                chunk = min(chunk, offset & -offset)
        chunks.append((src, dst, chunk))
        src, dst, size = src + chunk, dst + chunk, size - chunk
    return chunks


class NvFalconDriver(Driver):
    name = "nv_falcon"
    status = Status.MODEL_TESTED
    ids = ((NVIDIA, None),)
    features = Feature.NO_SEND_MSI
    max_memcpy_size = MAX_DMA
    max_memcpy_count = 1

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self.arch: Arch | None = None
        self.props: ArchProps | None = None
        self.product: str | None = None
        self._pending: tuple[int, int, int, int] | None = None
        # what v10 logs with dev_err and then ignores (a poll that timed out)
        self.warnings: list[str] = []

    @classmethod
    def probe(cls, device: DeviceAccess) -> bool:
        """An NVIDIA display-class function whose PMC_BOOT_0 names a supported architecture."""
        if not super().probe(device):
            return False
        if device.config_read(PCI_CLASS_BASE, 1) != PCI_BASE_CLASS_DISPLAY:
            return False
        return arch_of(device.bar_read(0, PMC_BOOT_0, 4)) is not None

    # ---- register helpers ----
    def _rd(self, offset: int) -> int:
        return self.device.bar_read(0, offset, 4)

    def _wr(self, offset: int, value: int) -> None:
        self.device.bar_write(0, offset, 4, value)

    def _error(self, err: int, op: str, detail: str) -> DriverError:
        return DriverError(err, f"nv_falcon.{op}", self.device.bdf, detail)

    def _poll(self, op: str, what: str, done: Callable[[], bool], timeout: float) -> None:
        self.poll(op, what, done, time.monotonic() + timeout, interval=0.001)

    def _poll_reg(self, op: str, name: str, offset: int, expected: int, mask: int,
                  timeout: float) -> None:
        """v10's gpu_poll_register: ETIMEDOUT naming the register when it never matches."""
        self._poll(op, f"timeout polling {name} (0x{offset:x}) for 0x{expected:x} "
                       f"under mask 0x{mask:x}",
                   lambda: self._rd(offset) & mask == expected, timeout)

    def _poll_logged(self, op: str, name: str, offset: int, expected: int, mask: int,
                     timeout: float) -> None:
        """A poll whose timeout v10 logs and ignores: recorded in `warnings`, init goes on."""
        try:
            self._poll_reg(op, name, offset, expected, mask, timeout)
        except DriverError as exc:
            self.warnings.append(str(exc))
            _warn(exc)

    @property
    def falcon(self) -> Falcon:
        if self.props is None:
            raise self._error(errno.EINVAL, "falcon", "driver not initialised")
        return self.props.falcon

    # ---- Falcon enable/disable (v10's falcon_enable, falcon_disable, falcon_reset) ----
    def _falcon_enable(self, op: str) -> None:
        assert self.props is not None
        falcon = self.falcon
        if self.arch == Arch.ADA and self._rd(falcon.base + MAILBOX_TEST) == MAILBOX_NEEDS_RESET:
            self._wr(falcon.base + ENGINE_RESET, 1)
        if falcon.outside_reset:
            mask = self.props.pmc_enable_mask
            if mask:
                self._wr(PMC_ENABLE, self._rd(PMC_ENABLE) | mask)
            else:
                self._wr(falcon.base + ENGINE_RESET, 0)
        if self.arch is not None and self.arch < Arch.HOPPER:
            core = falcon.base + CORE_SELECT
            self._wr(core, self._rd(core) & ~CORE_SELECT_RISCV)
            self._poll_logged(op, f"{falcon.name} falcon_dmactl", falcon.base + DMACTL, 0,
                              DMACTL_READY_MASK, ENABLE_TIMEOUT)

    def _falcon_disable(self) -> None:
        assert self.props is not None
        if not self.falcon.outside_reset:
            return
        mask = self.props.pmc_enable_mask
        if mask:
            self._wr(PMC_ENABLE, self._rd(PMC_ENABLE) & ~mask)
        else:
            self._wr(self.falcon.base + ENGINE_RESET, 1)

    # ---- FSP (Hopper) ----
    def _fsp_queue_empty(self, head: int, tail: int) -> bool:
        return self._rd(head) == self._rd(tail)

    def _fsp_reset_rpc_state(self, op: str) -> None:
        """v10's fsp_reset_rpc_state: when either queue holds something, wait up to 5 s
        for a response (ignored when none comes), then reset all four queue pointers."""
        if (self._fsp_queue_empty(FSP_QUEUE_HEAD, FSP_QUEUE_TAIL)
                and self._fsp_queue_empty(FSP_MSG_HEAD, FSP_MSG_TAIL)):
            return
        try:
            self._poll(op, "no FSP response while draining a busy RPC queue",
                       lambda: not self._fsp_queue_empty(FSP_MSG_HEAD, FSP_MSG_TAIL),
                       FSP_DRAIN_TIMEOUT)
        except DriverError as exc:
            self.warnings.append(str(exc))
            _warn(exc)
        for reg in (FSP_QUEUE_TAIL, FSP_QUEUE_HEAD, FSP_MSG_TAIL, FSP_MSG_HEAD):
            self._wr(reg, FSP_RPC_EMEM_BASE)

    def _fsp_init(self, op: str) -> None:
        self._poll_logged(op, "fsp_boot_complete", FSP_BOOT_COMPLETE, FSP_BOOT_COMPLETE_OK,
                          0xFFFFFFFF, BOOT_TIMEOUT)
        self._fsp_reset_rpc_state(op)

    def _fsp_command(self, op: str, nvdm_type: int, payload: list[int]) -> None:
        """v10's fsp_rpc_send_cmd: one single-packet MCTP message to RPC channel 2, then
        the response's type and status checked."""
        packet = [MCTP_SOM | MCTP_EOM,
                  MCTP_MSG_VENDOR_DEFINED | (MCTP_VENDOR_NVIDIA << 8) | (nvdm_type << 24),
                  *payload]
        if len(packet) > FSP_MAX_PACKET_WORDS:
            raise self._error(errno.EINVAL, op, f"FSP packet of {len(packet)} words")
        self._poll(op, "FSP command queue not empty",
                   lambda: self._fsp_queue_empty(FSP_QUEUE_HEAD, FSP_QUEUE_TAIL),
                   FSP_SEND_TIMEOUT)
        self._wr(FSP_EMEM_CTRL, FSP_RPC_EMEM_BASE | FSP_EMEMC_AINCR | FSP_EMEMC_AINCW)
        for word in packet:
            self._wr(FSP_EMEM_DATA, word)
        self._wr(FSP_QUEUE_TAIL, FSP_RPC_EMEM_BASE + 4 * (len(packet) - 1))
        self._wr(FSP_QUEUE_HEAD, FSP_RPC_EMEM_BASE)
        self._poll(op, "no FSP response",
                   lambda: not self._fsp_queue_empty(FSP_MSG_HEAD, FSP_MSG_TAIL), FSP_TIMEOUT)
        head, tail = self._rd(FSP_MSG_HEAD), self._rd(FSP_MSG_TAIL)
        count = min(((tail - head + 4) & 0xFFFFFFFF) // 4, 256)
        self._wr(FSP_EMEM_CTRL, FSP_RPC_EMEM_BASE | FSP_EMEMC_AINCR | FSP_EMEMC_AINCW)
        words = [self._rd(FSP_EMEM_DATA) for _ in range(count)]
        self._wr(FSP_MSG_TAIL, head)  # acknowledge
        if (len(words) < FSP_MIN_RESPONSE_WORDS or words[1] >> 24 != NVDM_TYPE_RESPONSE
                or words[3] != nvdm_type):
            raise self._error(errno.EPROTO, op, f"malformed FSP response {words[:5]}")
        if words[4]:
            # differs from v10: v10 returns -status (the firmware's status as an errno);
            # we report EIO and name the status
            raise self._error(errno.EIO, op, f"FSP refused NVDM 0x{nvdm_type:x} "
                                             f"{payload}: status 0x{words[4]:x}")

    def _ofa_dma_supported(self) -> bool:
        return self._rd(OFA_DMA_SUPPORT) >> 16 != 0xBADF

    # ---- verbs ----
    def init(self, msi_vector: int | None = 0) -> None:
        """v10's nv_gpu_init.  `msi_vector` is ignored: the Falcon has no MSI to send."""
        boot0 = self._rd(PMC_BOOT_0)
        arch = arch_of(boot0)
        if arch is None:
            raise self._error(errno.ENODEV, "init", f"unsupported PMC_BOOT_0 0x{boot0:08x}")
        self.arch, self.props, self.product = arch, ARCHS[arch], VERIFIED.get(boot0)
        self._pending = None
        self.warnings = []
        self._falcon_enable("init")  # v10 enables once here, and again in its reset below
        self.device.config_write(PCI_COMMAND, 2,
                                 self.device.config_read(PCI_COMMAND, 2) | PCI_COMMAND_MASTER)
        if arch >= Arch.HOPPER:
            self._fsp_init("init")
            self._fsp_command("init", NVDM_TYPE_FBDMA, [FBDMA_SUBCMD_ENABLE])
            if not self._ofa_dma_supported():
                raise self._error(errno.EOPNOTSUPP, "init",
                                  "OFA DMA not supported with the GPU's current firmware")
        if self.props.memory_clear and arch >= Arch.TURING:
            if arch >= Arch.HOPPER:
                self._poll_logged("init", "fsp_boot_complete", FSP_BOOT_COMPLETE,
                                  FSP_BOOT_COMPLETE_OK, 0xFFFFFFFF, BOOT_TIMEOUT)
            else:
                self._poll_logged("init", "boot_complete", BOOT_COMPLETE, BOOT_COMPLETE_OK,
                                  0xFFFFFFFF, BOOT_TIMEOUT)
            self._poll_logged("init", "memory_clear_finished", MEM_CLEAR, 1, 0xFFFFFFFF,
                              BOOT_TIMEOUT)
        falcon = self.falcon
        if falcon.outside_reset:
            self._falcon_disable()
            self._falcon_enable("init")
        self._wr(falcon.base + DMEMC, 0)
        transcfg = self._rd(falcon.fbif_transcfg) & ~TRANSCFG_TARGET_MASK
        self._wr(falcon.fbif_transcfg, transcfg | TRANSCFG_SYSMEM_DEFAULT)
        self._wr(falcon.fbif_ctl + FBIF_CTL2, 1)
        self._wr(falcon.fbif_ctl, self._rd(falcon.fbif_ctl) | FBIF_CTL_ALLOW_PHYS
                 | FBIF_CTL_ALLOW_FULL_PHYS)
        self._wr(falcon.base + DMACTL, self._rd(falcon.base + DMACTL) & ~DMACTL_DMEM_SCRUBBING)

    def remove(self) -> None:
        """v10's nv_gpu_remove: disable the Falcon (where it has an outside reset), bus
        mastering off.  Unlike our other drivers this does not restore what init found:
        v10 does not, and restoring would write values v10 never writes."""
        self._pending = None
        if self.props is not None:
            self._falcon_disable()
        self.device.config_write(PCI_COMMAND, 2,
                                 self.device.config_read(PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER)

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Record the copy; memcpy_wait performs it (one Falcon DMA at a time)."""
        self.check_memcpy(src, dst, size, count)
        if self.props is None:
            raise self._error(errno.EINVAL, "memcpy_start", "driver not initialised")
        if self._pending is not None:
            # v10 asserts here (VFIO_ASSERT_EQ(gpu->memcpy_count, 0)); without an abort
            # we refuse the step instead
            raise self._error(errno.EBUSY, "memcpy_start", "previous memcpy not waited for")
        self._pending = (src, dst, size, count)

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Copy src → DMEM → dst in Falcon-sized chunks, `count` times.  `timeout` is not
        used: as in v10 each DMA has its own 1 s (DMA_TIMEOUT)."""
        if self._pending is None:
            # v10 asserts (VFIO_ASSERT_NE(gpu->memcpy_count, 0))
            raise self._error(errno.EINVAL, "memcpy_wait", "no memcpy started")
        src, dst, size, count = self._pending
        self._pending = None
        # differs from v10: v10 cuts the copy by size alone, each DMA the lowest set bit
        # of what is left (60 bytes: 4, 8, 16, 32), so an unaligned src/dst crosses a
        # 256-byte block; the driver merged upstream (nv_falcon.c) takes the largest power
        # of two left, limited so no DMA crosses a block (60 bytes: 32, 16, 8, 4), as we
        # do.  A chunk that cannot be encoded (a size, or with it an address, not a
        # multiple of 4) is EINVAL before any DMA, as v10's size_to_dma_encoding answers
        # for the size.
        chunks = dma_chunks(src, dst, size)
        bad = [c for c in chunks if c[2] < MIN_DMA]
        if bad:
            raise self._error(errno.EINVAL, "memcpy_wait",
                              f"Falcon DMA moves 4..256-byte powers of two: a {bad[0][2]}-byte "
                              f"piece at src 0x{bad[0][0]:x} dst 0x{bad[0][1]:x} (size {size})")
        for _ in range(count):
            for csrc, cdst, chunk in chunks:
                self._dma(csrc, chunk, False)
                self._dma(cdst, chunk, True)

    def _dma(self, address: int, size: int, write: bool) -> None:
        """v10's nv_gpu_falcon_dma.  The top bits register stays as the last DMA left it,
        as in v10."""
        base = self.falcon.base
        self._wr(DMA_ADDR_TOP_BITS, (address >> 47) & 0x1FFFF)
        self._wr(base + DMATRFBASE1, (address >> 40) & 0x7F)
        self._wr(base + DMATRFBASE, (address >> 8) & 0xFFFFFFFF)
        self._wr(base + DMATRFFBOFFS, address & 0xFF)
        self._wr(base + DMATRFMOFFS, 0)
        encoding = size.bit_length() - 3  # 4 → 0 … 256 → 6
        self._wr(base + DMATRFCMD, (encoding << DMATRFCMD_SIZE_SHIFT)
                 | (DMATRFCMD_WRITE if write else 0))
        self._poll("memcpy_wait",
                   f"Falcon DMA {'write' if write else 'read'} of {size} bytes at IOVA "
                   f"0x{address:x} did not complete within {DMA_TIMEOUT:g}s",
                   lambda: bool(self._rd(base + DMATRFCMD) & DMATRFCMD_DONE), DMA_TIMEOUT)
