"""Scenario driver for NVIDIA GPUs: DMA through a Falcon microcontroller, as the
"selftests/vfio: Add NVIDIA Falcon driver for DMA testing" series (v10 and its reviews)
does it, after NVIDIA's gpu-admin-tools.

The GPU is identified by PMC_BOOT_0 (BAR0 offset 0): architecture bits 28:24,
implementation 23:20.  Each architecture uses one Falcon and one way to reset it:

  Kepler, Maxwell gen1   PMU, legacy FBIF offsets, PMC_ENABLE PWR|HUB
  Maxwell gen2, P100     PMU, PMC_ENABLE PWR          (Pascal with implementation 0)
  P4/P40 (Pascal 10x)    PMU, engine reset register
  Volta, Turing, Ampere  GSP, engine reset register
  Ada                    PMU, engine reset register (reset first when it answers 0xbadf5620)
  Hopper                 OFA, no outside reset; FBDMA enabled through the FSP (an MCTP
                         message over the FSP's EMEM queue), OFA DMA support checked
Blackwell and later are not supported (their firmware needs more, says the series).

A Falcon DMA moves a power of two of 4..256 bytes between system memory and the
Falcon's DMEM without crossing a 256-byte block.  memcpy_start only records the request
(the Falcon runs one DMA at a time and cannot run a long copy on its own); memcpy_wait
performs it chunk by chunk: src → DMEM, DMEM → dst, each polled until the DMA command
register reports idle; after a DMA that never completes the Falcon is reset (where it
can be) so the next memcpy starts clean.  Limits: size up to 256 bytes and a multiple
of 4, 4-byte aligned addresses, count 1.  The Falcon cannot raise an MSI on demand:
NO_SEND_MSI.
The Falcon reports no DMA error status in this flow; a DMA that never completes (an IOMMU
fault on the read, for instance) is ETIMEDOUT naming the transfer.

Unlike the series' remove (Falcon left disabled, bus mastering off), remove here
returns the Falcon and the PCI command register to the state init found them in.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from enum import IntEnum

from vfio_scenario.drivers.base import DeviceAccess, DmaRegion, Driver, DriverError, Feature
from vfio_scenario.uapi.pci import PCI_COMMAND, PCI_COMMAND_MASTER

NVIDIA = 0x10DE
PCI_CLASS_BASE = 0x0B
PCI_BASE_CLASS_DISPLAY = 0x03

PMC_BOOT_0 = 0x000000
PMC_ENABLE = 0x000200
PMC_ENABLE_PWR = 1 << 13
PMC_ENABLE_HUB = 1 << 29
DMA_ADDR_TOP_BITS = 0x100F04  # address bits 47+ of every Falcon DMA (global)
MEM_CLEAR = 0x100B20
BOOT_COMPLETE, BOOT_COMPLETE_OK = 0x118234, 0x3FF
FSP_BOOT_COMPLETE, FSP_BOOT_COMPLETE_OK = 0x0200BC, 0xFF
OFA_DMA_SUPPORT = 0x8443C0

# Falcon registers, relative to its base page
DMACTL = 0x10C
DMACTL_REQUIRE_CTX = 0x1
DMACTL_SCRUBBING = 0x6  # DMEM/IMEM scrubbing in progress after enable
DMEMC = 0x1C0
DMATRFBASE = 0x110  # address bits 8..39
DMATRFMOFFS = 0x114  # DMEM offset
DMATRFCMD = 0x118
DMATRFFBOFFS = 0x11C  # address bits 0..7
DMATRFBASE1 = 0x128  # address bits 40..46
ENGINE_RESET = 0x3C0
MAILBOX_TEST = 0x40C
MAILBOX_NEEDS_RESET = 0xBADF5620
CORE_SELECT = 0x1668
CORE_SELECT_RISCV = 0x30
DMATRFCMD_IDLE = 0x2
DMATRFCMD_WRITE = 0x20  # DMEM → memory
DMATRFCMD_SIZE_SHIFT = 8
TRANSCFG_TARGET_MASK = 0x3
TRANSCFG_PHYSICAL_COHERENT_SYSMEM = 0x5
FBIF_CTL_ALLOW_PHYS = 0x10
FBIF_CTL_ALLOW_PHYS_NO_CTX = 0x80
FBIF_CTL2 = 0x60  # after FBIF_CTL

MIN_DMA, MAX_DMA, DMA_BLOCK = 4, 256, 256
INIT_TIMEOUT = 5.0
ENABLE_TIMEOUT = 1.0

# FSP message queue (Hopper): channel 2 of the FSP's EMEM and command/message queues
FSP_BASE = 0x8F0000
FSP_EMEM_CTRL = 0x8F2000 + 0xAC0 + 2 * 8
FSP_EMEM_DATA = FSP_EMEM_CTRL + 4
FSP_EMEMC_AUTOINC = (1 << 24) | (1 << 25)  # auto-increment on write and on read
FSP_QUEUE_HEAD = FSP_BASE + 0x2C00 + 2 * 8
FSP_QUEUE_TAIL = FSP_QUEUE_HEAD + 4
FSP_MSG_HEAD = FSP_BASE + 0x2C80 + 2 * 8
FSP_MSG_TAIL = FSP_MSG_HEAD + 4
FSP_EMEM_OFFSET = 2 * 1024
MCTP_SOM_EOM = 0xC0000000  # one packet: start and end of message, EID 0, sequence 0
MCTP_VENDOR_NVIDIA = 0x7E | (NVIDIA << 8)  # vendor-defined message type, PCI vendor id
NVDM_FBDMA = 0x22
NVDM_RESPONSE = 0x15
FBDMA_DISABLE, FBDMA_ENABLE = 0, 1
FSP_TIMEOUT = 5.0


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
    ids = ((NVIDIA, None),)
    features = Feature.NO_SEND_MSI
    max_memcpy_size = MAX_DMA
    max_memcpy_count = 1

    def __init__(self, device: DeviceAccess, region: DmaRegion | None = None) -> None:
        super().__init__(device, region)
        self.arch: Arch | None = None
        self.props: ArchProps | None = None
        self.product: str | None = None
        self._saved_command: int | None = None
        self._found_enabled = False
        self._fbdma_enabled_here = False
        self._saved_regs: dict[int, int] = {}
        self._pending: tuple[int, int, int] | None = None

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

    def _wait_reg(self, op: str, offset: int, mask: int, value: int, timeout: float,
                  what: str) -> None:
        self.poll(op, f"{what} (register 0x{offset:x})",
                  lambda: self._rd(offset) & mask == value, time.monotonic() + timeout)

    @property
    def falcon(self) -> Falcon:
        if self.props is None:
            raise self._error(errno.EINVAL, "falcon", "driver not initialised")
        return self.props.falcon

    # ---- Falcon enable/disable (the architecture's reset) ----
    def _falcon_enabled(self) -> bool:
        assert self.props is not None
        mask = self.props.pmc_enable_mask
        if mask:
            return self._rd(PMC_ENABLE) & mask == mask
        return self._rd(self.falcon.base + ENGINE_RESET) == 0

    def _setup_registers(self) -> tuple[int, ...]:
        """The registers init changes on the Falcon (besides its reset)."""
        falcon = self.falcon
        return (falcon.base + DMEMC, falcon.fbif_transcfg, falcon.fbif_ctl + FBIF_CTL2,
                falcon.fbif_ctl, falcon.base + DMACTL)

    def _falcon_disable(self) -> None:
        assert self.props is not None
        if not self.falcon.outside_reset:
            return
        mask = self.props.pmc_enable_mask
        if mask:
            self._wr(PMC_ENABLE, self._rd(PMC_ENABLE) & ~mask)
        else:
            self._wr(self.falcon.base + ENGINE_RESET, 1)

    def _falcon_release(self) -> None:
        """Take the Falcon out of reset (PMC_ENABLE bits or engine reset)."""
        assert self.props is not None
        mask = self.props.pmc_enable_mask
        if mask:
            self._wr(PMC_ENABLE, self._rd(PMC_ENABLE) | mask)
        else:
            self._wr(self.falcon.base + ENGINE_RESET, 0)

    def _falcon_reset(self, op: str) -> None:
        """Reset the Falcon, select its Falcon core (not RISC-V), wait for DMEM scrubbing."""
        falcon = self.falcon
        self._falcon_disable()
        if self.arch == Arch.ADA and self._rd(falcon.base + MAILBOX_TEST) == MAILBOX_NEEDS_RESET:
            self._wr(falcon.base + ENGINE_RESET, 1)
        self._falcon_release()
        core = falcon.base + CORE_SELECT
        self._wr(core, self._rd(core) & ~CORE_SELECT_RISCV)
        self._wait_reg(op, falcon.base + DMACTL, DMACTL_SCRUBBING, 0, ENABLE_TIMEOUT,
                       f"{falcon.name} Falcon still scrubbing after enable")

    # ---- FSP (Hopper) ----
    def _fsp_queues_idle(self) -> bool:
        return (self._rd(FSP_QUEUE_HEAD) == self._rd(FSP_QUEUE_TAIL)
                and self._rd(FSP_MSG_HEAD) == self._rd(FSP_MSG_TAIL))

    def _fsp_reset_queues(self) -> None:
        for reg in (FSP_QUEUE_TAIL, FSP_QUEUE_HEAD, FSP_MSG_TAIL, FSP_MSG_HEAD):
            self._wr(reg, FSP_EMEM_OFFSET)

    def _fsp_command(self, op: str, nvdm_type: int, payload: list[int]) -> None:
        """Send one NVDM command to the FSP and check its response status."""
        self._wait_reg(op, FSP_BOOT_COMPLETE, 0xFFFFFFFF, FSP_BOOT_COMPLETE_OK, FSP_TIMEOUT,
                       "FSP boot not complete")
        if not self._fsp_queues_idle():
            self._fsp_reset_queues()  # a message left by an earlier user
        packet = [MCTP_SOM_EOM, MCTP_VENDOR_NVIDIA | (nvdm_type << 24), *payload]
        self._wr(FSP_EMEM_CTRL, FSP_EMEM_OFFSET | FSP_EMEMC_AUTOINC)
        for word in packet:
            self._wr(FSP_EMEM_DATA, word)
        self._wr(FSP_QUEUE_TAIL, FSP_EMEM_OFFSET + 4 * (len(packet) - 1))
        self._wr(FSP_QUEUE_HEAD, FSP_EMEM_OFFSET)
        self.poll(op, "no FSP response", lambda: self._rd(FSP_MSG_HEAD) != self._rd(FSP_MSG_TAIL),
                  time.monotonic() + FSP_TIMEOUT)
        head, tail = self._rd(FSP_MSG_HEAD), self._rd(FSP_MSG_TAIL)
        self._wr(FSP_EMEM_CTRL, FSP_EMEM_OFFSET | FSP_EMEMC_AUTOINC)
        words = [self._rd(FSP_EMEM_DATA) for _ in range(min((tail - head) // 4 + 1, 256))]
        self._wr(FSP_MSG_TAIL, head)  # acknowledge
        if len(words) < 5 or words[1] >> 24 != NVDM_RESPONSE or words[3] != nvdm_type:
            raise self._error(errno.EPROTO, op, f"malformed FSP response {words[:5]}")
        if words[4]:
            raise self._error(errno.EIO, op, f"FSP refused NVDM 0x{nvdm_type:x} "
                                             f"{payload}: status 0x{words[4]:x}")

    def _ofa_dma_supported(self) -> bool:
        return self._rd(OFA_DMA_SUPPORT) >> 16 != 0xBADF

    # ---- verbs ----
    def init(self, msi_vector: int | None = 0) -> None:
        """Identify the GPU, enable bus mastering, reset its DMA Falcon and set its FBIF
        up for physical DMA to coherent system memory.  `msi_vector` is ignored."""
        boot0 = self._rd(PMC_BOOT_0)
        arch = arch_of(boot0)
        if arch is None:
            raise self._error(errno.ENODEV, "init", f"unsupported PMC_BOOT_0 0x{boot0:08x}")
        self.arch, self.props, self.product = arch, ARCHS[arch], VERIFIED.get(boot0)
        command = self.device.config_read(PCI_COMMAND, 2)
        self._saved_command = command
        self.device.config_write(PCI_COMMAND, 2, command | PCI_COMMAND_MASTER)
        if arch >= Arch.HOPPER and not self._ofa_dma_supported():
            self._fsp_command("init", NVDM_FBDMA, [FBDMA_ENABLE])
            self._fbdma_enabled_here = True
            if not self._ofa_dma_supported():
                raise self._error(errno.EOPNOTSUPP, "init",
                                  "OFA DMA not supported with the GPU's current firmware")
        if self.props.memory_clear and arch >= Arch.TURING:
            if arch >= Arch.HOPPER:
                self._wait_reg("init", FSP_BOOT_COMPLETE, 0xFFFFFFFF, FSP_BOOT_COMPLETE_OK,
                               INIT_TIMEOUT, "FSP boot not complete")
            else:
                self._wait_reg("init", BOOT_COMPLETE, 0xFFFFFFFF, BOOT_COMPLETE_OK,
                               INIT_TIMEOUT, "GPU boot not complete")
            self._wait_reg("init", MEM_CLEAR, 0xFFFFFFFF, 1, INIT_TIMEOUT,
                           "GPU memory clear not finished")
        falcon = self.falcon
        if falcon.outside_reset:
            self._found_enabled = self._falcon_enabled()
            self._falcon_reset("init")
        else:
            # no reset will undo the set-up below: remember what remove must put back
            self._saved_regs = {reg: self._rd(reg) for reg in self._setup_registers()}
        self._configure_dma()

    def _configure_dma(self) -> None:
        """DMEM port at 0; FBIF: physical DMA to coherent system memory without a context."""
        falcon = self.falcon
        self._wr(falcon.base + DMEMC, 0)
        transcfg = self._rd(falcon.fbif_transcfg) & ~TRANSCFG_TARGET_MASK
        self._wr(falcon.fbif_transcfg, transcfg | TRANSCFG_PHYSICAL_COHERENT_SYSMEM)
        self._wr(falcon.fbif_ctl + FBIF_CTL2, 1)
        self._wr(falcon.fbif_ctl, self._rd(falcon.fbif_ctl) | FBIF_CTL_ALLOW_PHYS
                 | FBIF_CTL_ALLOW_PHYS_NO_CTX)
        self._wr(falcon.base + DMACTL, self._rd(falcon.base + DMACTL) & ~DMACTL_REQUIRE_CTX)

    def remove(self) -> None:
        """Reset the Falcon back to its state as found (enabled or not), undo the FBDMA
        enable init sent, restore the PCI command register."""
        self._pending = None
        if self.props is not None:
            self._falcon_disable()
            if self._found_enabled:
                self._falcon_release()
            for reg, value in self._saved_regs.items():
                self._wr(reg, value)
            self._saved_regs = {}
            if self._fbdma_enabled_here:
                self._fsp_command("remove", NVDM_FBDMA, [FBDMA_DISABLE])
                self._fbdma_enabled_here = False
        if self._saved_command is not None:
            self.device.config_write(PCI_COMMAND, 2, self._saved_command)
            self._saved_command = None

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Record the copy; memcpy_wait performs it (one Falcon DMA at a time)."""
        self.check_memcpy(src, dst, size, count)
        if size % MIN_DMA or src % MIN_DMA or dst % MIN_DMA:
            raise self._error(errno.EINVAL, "memcpy_start",
                              f"Falcon DMA moves 4-byte multiples between 4-byte aligned "
                              f"addresses (src 0x{src:x}, dst 0x{dst:x}, size {size})")
        if self._pending is not None:
            raise self._error(errno.EBUSY, "memcpy_start", "previous memcpy not waited for")
        if self.props is None:
            raise self._error(errno.EINVAL, "memcpy_start", "driver not initialised")
        self._pending = (src, dst, size)

    def memcpy_wait(self, timeout: float = 5.0) -> None:
        """Copy src → DMEM → dst in Falcon-sized chunks; ETIMEDOUT names a DMA that did
        not complete."""
        if self._pending is None:
            raise self._error(errno.EINVAL, "memcpy_wait", "no memcpy started")
        src, dst, size = self._pending
        deadline = time.monotonic() + timeout
        try:
            for csrc, cdst, chunk in dma_chunks(src, dst, size):
                self._dma(csrc, chunk, False, deadline)
                self._dma(cdst, chunk, True, deadline)
        except DriverError:
            if self.falcon.outside_reset:
                # a DMA that never completed leaves the Falcon busy: reset it for the next
                self._falcon_reset("memcpy_wait")
                self._configure_dma()
            raise
        finally:
            self._pending = None

    def _dma(self, address: int, size: int, write: bool, deadline: float) -> None:
        base = self.falcon.base
        self._wr(DMA_ADDR_TOP_BITS, (address >> 47) & 0x1FFFF)
        self._wr(base + DMATRFBASE1, (address >> 40) & 0x7F)
        self._wr(base + DMATRFBASE, (address >> 8) & 0xFFFFFFFF)
        self._wr(base + DMATRFFBOFFS, address & 0xFF)
        self._wr(base + DMATRFMOFFS, 0)
        encoding = size.bit_length() - 3  # 4 → 0 … 256 → 6
        self._wr(base + DMATRFCMD, (encoding << DMATRFCMD_SIZE_SHIFT)
                 | (DMATRFCMD_WRITE if write else 0))
        what = (f"Falcon DMA {'write' if write else 'read'} of {size} bytes at IOVA "
                f"0x{address:x} did not complete")
        try:
            self.poll("memcpy_wait", what,
                      lambda: bool(self._rd(base + DMATRFCMD) & DMATRFCMD_IDLE), deadline)
        finally:
            # the top bits are global to every Falcon's DMA: leave them as found (0)
            self._wr(DMA_ADDR_TOP_BITS, 0)
