"""Register model of an NVIDIA GPU's BAR0 as far as Falcon DMA goes, written from the
hardware description of the "selftests/vfio: Add NVIDIA GPU Falcon DMA test driver"
series (v10: nv_falcons/hw.h and the comments of nv_falcons.c; the 256-byte block rule
from the version merged upstream, nv_falcon/nv_falcon.c), not from our driver.

What the description defines, and therefore all this model accepts:

- PMC: BOOT_0 (read-only id), ENABLE (bit 13 PWR, bit 29 HUB enable the PMU Falcon on
  the products whose reset goes through PMC; other bits are left as they are).
- Per Falcon, relative to its base page (PMU 0x10a000, GSP 0x110000, OFA 0x844000):
  CPUCTL 0x100 (read only here), DMACTL 0x10c (bit 0 cleared by the driver, bits 1..2
  busy after enable), DMA address low 0x110 (bits 8..39), DMEM offset 0x114, DMA command
  0x118 (size encoding bits 8..10, write bit 5, done bit 1), block offset 0x11c (bits
  0..7), address high 0x128 (bits 40..46), DMEMC/DMEMD 0x1c0/0x1c4 (offset, auto-increment
  bits 24/25), engine reset 0x3c0 (1 asserts, 0 deasserts), mailbox 0x40c (0xbadf5620:
  Ada needs its reset first), core select 0x1668 (bits 4..5 select the RISC-V core).
- FBIF of each Falcon: TRANSCFG (target bits 0..1; 0x5 = physical coherent system
  memory), CTL (0x10 allow physical, 0x80 allow full physical), CTL2 = CTL + 0x60 (1).
- 0x100f04 DMA address bits 47..63 (global), 0x100b20 memory clear (1 = finished),
  0x118234 boot complete (0x3ff), and for Hopper 0x200bc FSP boot complete (0xff),
  0x8443c0 OFA DMA support (upper half 0xbadf: not supported).
- Hopper's FSP, RPC channel 2: EMEM port 2 at 0x8f2ad0/0x8f2ad4 (offset | AINCR |
  AINCW), command queue head/tail 0x8f2c10/0x8f2c14, message queue head/tail
  0x8f2c90/0x8f2c94, the channel's EMEM 2048..3071.  A message is one MCTP packet
  (SOM|EOM, SEID bits 16..23, sequence bits 28..29) whose message header is vendor
  defined (0x7e) with vendor id 0x10de and an NVDM type in bits 24..31.  The only
  command type the description defines is FBDMA (0x22) with the one subcommand ENABLE
  (1); the FSP answers with an NVDM RESPONSE (0x15): MCTP header, message header, a
  status header, the command's type, the status (0 = success), at least 5 words.

Anything else the driver writes (an unknown offset, an NVDM type or FBDMA subcommand
other than ENABLE, a DMA command with undefined bits or a size above 256 bytes, a
transfer crossing a 256-byte block, a write to a read-only or disabled Falcon register,
a DMA command while the previous transfer is outstanding, a DMA on a Falcon the series'
init has not set up) raises `UndefinedCommand` (or `UnmodelledAccess` for an offset the
model does not have).

Behaviour the description leaves open is this model's choice, named as such: a DMA
completes after `latency` reads of the command register; a read the IOMMU refuses never
completes (`stuck`, until the Falcon is reset), a refused write is dropped (posted);
with bus mastering off or DMEM still scrubbing a transfer never completes.  The FSP
answers a command at once unless `fsp_silent`.

Knobs: `hang`, `scrub_stuck`, `ada_needs_reset`, `boot_complete`, `memory_clear`,
`fsp_silent`, `fsp_status`, `fbdma_firmware`, `fbdma`, `stale_command`,
`stale_message`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from tests.models.iommu import IommuFault
from tests.models.pci import Bar, ModelDevice, UndefinedCommand

NVIDIA = 0x10DE
CLASS_3D = 0x030200

# PMC
PMC_BOOT_0, PMC_ENABLE = 0x0, 0x200
PWR, HUB = 0x2000, 0x20000000
PMC_ENABLE_OTHER = 0x40000100  # bits of other engines, left alone by a Falcon reset
# global registers
TOP_BITS, MEM_CLEAR, BOOT_COMPLETE = 0x100F04, 0x100B20, 0x118234
FSP_BOOT_COMPLETE, OFA_DMA_SUPPORT = 0x200BC, 0x8443C0
BADF = 0xBADF1100  # what a Falcon in reset answers (this model's choice of 0xbadf....)

# Falcon registers, relative to the base page
CPUCTL, DMACTL, DMEMC, DMEMD = 0x100, 0x10C, 0x1C0, 0x1C4
TRFBASE, TRFMOFFS, TRFCMD, TRFFBOFFS, TRFBASE1 = 0x110, 0x114, 0x118, 0x11C, 0x128
ENGINE_RESET, MAILBOX_TEST, CORE_SELECT = 0x3C0, 0x40C, 0x1668
DMACTL_BIT0, DMACTL_BUSY = 0x1, 0x6
DMEMC_AINCR, DMEMC_AINCW = 0x01000000, 0x02000000
CMD_WRITE, CMD_DONE, CMD_SIZE_SHIFT = 0x20, 0x2, 8
CORE_SELECT_RISCV = 0x30
MAILBOX_RESET_MAGIC = 0xBADF5620
TRANSCFG_TARGET_MASK, TRANSCFG_SYSMEM = 0x3, 0x5
FBIF_ALLOW_PHYS, FBIF_ALLOW_FULL_PHYS = 0x10, 0x80
FBIF_CTL2 = 0x60  # after FBIF CTL
DMA_BLOCK, DMA_MIN, DMA_MAX_ENCODING = 256, 4, 6

# FSP, RPC channel 2 (Hopper)
FSP_EMEM_CTRL, FSP_EMEM_DATA = 0x8F2AD0, 0x8F2AD4
FSP_QUEUE_HEAD, FSP_QUEUE_TAIL = 0x8F2C10, 0x8F2C14
FSP_MSG_HEAD, FSP_MSG_TAIL = 0x8F2C90, 0x8F2C94
EMEMC_AINCR, EMEMC_AINCW = 0x01000000, 0x02000000
CHANNEL_BASE, CHANNEL_SIZE = 2 * 1024, 1024
MCTP_SOM, MCTP_EOM = 0x80000000, 0x40000000
MCTP_ALLOWED = MCTP_SOM | MCTP_EOM | (0xFF << 16) | (0x3 << 28)
MSG_TYPE_VENDOR, VENDOR_NVIDIA = 0x7E, 0x10DE
NVDM_FBDMA, NVDM_RESPONSE = 0x22, 0x15
FBDMA_SUBCMD_ENABLE = 0x1
OFA_NOT_SUPPORTED = 0xBADF0000

# kind: (base page, FBIF TRANSCFG, FBIF CTL), both FBIF offsets from the base page
FALCONS = {"pmu-legacy": (0x10A000, 0x600, 0x624), "pmu": (0x10A000, 0xE00, 0xE24),
           "gsp": (0x110000, 0x600, 0x624), "ofa": (0x844000, 0x400, 0x424)}


@dataclass(frozen=True)
class Product:
    name: str
    boot0: int
    falcon: str
    reset: str  # "pmc" (PMC_ENABLE bits), "engine" (engine reset register), "none" (OFA)
    pmc_bits: int = 0
    memory_clear: bool = False  # boot complete / memory clear registers (Turing+)
    riscv: bool = False  # a RISC-V core that reset may select instead of the Falcon
    fsp: bool = False  # Hopper: FBDMA is enabled through the FSP


PRODUCTS = {p.name: p for p in (
    Product("K520", 0x0E40A0A2, "pmu-legacy", "pmc", PWR | HUB),
    Product("K80", 0x0F22D0A1, "pmu-legacy", "pmc", PWR | HUB),
    Product("GT635", 0x108000A1, "pmu-legacy", "pmc", PWR | HUB),
    Product("GTX750", 0x117010A2, "pmu-legacy", "pmc", PWR | HUB),
    Product("M60", 0x124320A1, "pmu", "pmc", PWR),
    Product("P100", 0x130000A1, "pmu", "pmc", PWR),
    Product("P4", 0x134000A1, "pmu", "engine"),
    Product("P40", 0x132000A1, "pmu", "engine"),
    Product("V100", 0x140000A1, "gsp", "engine"),
    Product("T4", 0x164000A1, "gsp", "engine", memory_clear=True, riscv=True),
    Product("A100", 0x170000A1, "gsp", "engine", memory_clear=True, riscv=True),
    Product("A10", 0xB72000A1, "gsp", "engine", memory_clear=True, riscv=True),
    Product("L4", 0x194000A1, "pmu", "engine", memory_clear=True, riscv=True),
    Product("L40S", 0x192000A1, "pmu", "engine", memory_clear=True, riscv=True),
    Product("H100", 0x180000A1, "ofa", "none", memory_clear=True, fsp=True),
    # not supported by the series: Blackwell
    Product("B200", 0x1A0000A1, "ofa", "none", memory_clear=True, fsp=True),
    Product("RTX5090", 0x1B2000A1, "ofa", "none", memory_clear=True, fsp=True),
)}


class FalconGpuModel(ModelDevice):
    def __init__(self, product: str = "T4", device_id: int = 0x1EB8,
                 class_code: int = CLASS_3D, enabled: bool = True, latency: int = 1,
                 scrub_polls: int = 2, dmem_size: int = 0x10000) -> None:
        super().__init__(NVIDIA, device_id, class_code, msix_count=1)
        self.product = PRODUCTS[product]
        self.base, transcfg, ctl = FALCONS[self.product.falcon]
        self.fbif_transcfg, self.fbif_ctl = self.base + transcfg, self.base + ctl
        self.latency = latency
        self.scrub_polls_after_enable = scrub_polls
        # knobs
        self.hang = False
        self.scrub_stuck = False
        self.ada_needs_reset = False
        self.boot_complete = True
        self.memory_clear = True
        self.fsp_silent = False
        self.fsp_status = 0
        self.fbdma_firmware = True  # firmware lets the OFA DMA once FBDMA is enabled
        self.fbdma = False  # FBDMA enabled (firmware state: survives drivers)
        # observations
        self.dmem = bytearray(dmem_size)
        self.transfers: list[tuple[int, int, bool]] = []  # (address, size, write) done
        self.resets = 0  # times the Falcon went from enabled to disabled
        self.stuck: str | None = None  # why the outstanding transfer never completes
        self.fsp_commands: list[tuple[int, list[int]]] = []  # (NVDM type, payload)
        # state
        self.job: tuple[int, int, bool, int] | None = None
        self.busy_polls = 0
        self.scrub_polls = 0
        self.regs: dict[int, int] = {}
        self.pmc_enable = PMC_ENABLE_OTHER | (self.product.pmc_bits if enabled else 0)
        self.engine_reset = 0 if enabled else 1
        self.emem = bytearray(8192)
        self.emem_ctrl = 0
        self.queues = {FSP_QUEUE_HEAD: CHANNEL_BASE, FSP_QUEUE_TAIL: CHANNEL_BASE,
                       FSP_MSG_HEAD: CHANNEL_BASE, FSP_MSG_TAIL: CHANNEL_BASE}
        self._defaults()
        self.scrub_polls = 0  # found enabled: scrubbing long over
        self.bars[0] = self._bar0()

    # ---- knobs that need state ----
    def stale_command(self) -> None:
        """A command an earlier user left in the FSP's command queue (not yet consumed)."""
        self.queues[FSP_QUEUE_TAIL] = CHANNEL_BASE + 8

    def stale_message(self) -> None:
        """A response an earlier user never acknowledged in the message queue."""
        self.queues[FSP_MSG_TAIL] = CHANNEL_BASE + 16

    # ---- state ----
    def _defaults(self) -> None:
        """Falcon registers as after its reset."""
        self.regs = {DMACTL: DMACTL_BIT0, DMEMC: 0, TRFBASE: 0, TRFMOFFS: 0, TRFCMD: CMD_DONE,
                     TRFFBOFFS: 0, TRFBASE1: 0,
                     CORE_SELECT: 0x10 if self.product.riscv else 0,
                     self.fbif_transcfg: 0, self.fbif_ctl: 0, self.fbif_ctl + FBIF_CTL2: 0}
        self.dmem[:] = bytes(len(self.dmem))
        self.job = None
        self.stuck = None
        self.scrub_polls = self.scrub_polls_after_enable

    def falcon_enabled(self) -> bool:
        if self.product.reset == "pmc":
            bits = self.product.pmc_bits
            return self.pmc_enable & bits == bits
        if self.product.reset == "engine":
            return self.engine_reset == 0 and not self.ada_needs_reset
        return True

    def configured(self) -> str | None:
        """What of the series' DMA set-up is missing, None when all of it is there."""
        r = self.regs
        if r[DMACTL] & DMACTL_BIT0:
            return "DMACTL bit 0 still set"
        if r[self.fbif_transcfg] & 0x7 != TRANSCFG_SYSMEM:
            return "FBIF TRANSCFG not set to physical coherent system memory"
        if r[self.fbif_ctl] & 0x90 != 0x90 or r[self.fbif_ctl + FBIF_CTL2] != 1:
            return "FBIF CTL/CTL2 do not allow physical DMA"
        if r[CORE_SELECT] & CORE_SELECT_RISCV:
            return "RISC-V core selected, not the Falcon"
        return None

    def _changing(self, change: Callable[[], None]) -> None:
        before = self.falcon_enabled()
        change()
        after = self.falcon_enabled()
        if before and not after:
            self.resets += 1
        if after and not before:
            self._defaults()

    @staticmethod
    def _refuse(what: str) -> UndefinedCommand:
        return UndefinedCommand(f"nv_falcon model: {what}: not defined by the series' "
                                "hardware description")

    # ---- BAR0 ----
    def _bar0(self) -> Bar:
        bar = Bar(16 << 20)
        bar.reg(PMC_BOOT_0, 4, self.product.boot0, on_write=self._read_only("PMC_BOOT_0"))
        bar.reg(PMC_ENABLE, 4, on_read=lambda: self.pmc_enable, on_write=self._pmc_write)
        bar.reg(TOP_BITS, 4, on_write=self._top_bits_write)
        if self.product.memory_clear:
            bar.reg(MEM_CLEAR, 4, on_read=lambda: 1 if self.memory_clear else 0,
                    on_write=self._read_only("memory clear"))
            if self.product.fsp:
                bar.reg(FSP_BOOT_COMPLETE, 4, on_read=lambda: 0xFF if self.boot_complete else 0,
                        on_write=self._read_only("FSP boot complete"))
            else:
                bar.reg(BOOT_COMPLETE, 4, on_read=lambda: 0x3FF if self.boot_complete else 0,
                        on_write=self._read_only("boot complete"))
        b = self.base
        bar.reg(b + CPUCTL, 4, on_read=self._gated(lambda: 0x10),
                on_write=self._read_only("CPUCTL (starting the Falcon's CPU)"))
        bar.reg(b + DMACTL, 4, on_read=self._gated(self._dmactl_read),
                on_write=self._falcon_write(DMACTL, self._dmactl_write))
        bar.reg(b + DMEMC, 4, on_read=self._gated(lambda: self.regs[DMEMC]),
                on_write=self._falcon_write(DMEMC, self._dmemc_write))
        bar.reg(b + DMEMD, 4, on_read=self._gated(self._dmemd_read),
                on_write=self._falcon_write(DMEMD, self._dmemd_write))
        for offset, limit in ((TRFBASE, 0xFFFFFFFF), (TRFBASE1, 0x7F), (TRFFBOFFS, 0xFF),
                              (TRFMOFFS, len(self.dmem) - DMA_BLOCK)):
            bar.reg(b + offset, 4, on_read=self._gated(self._getter(offset)),
                    on_write=self._falcon_write(offset, self._limited(offset, limit)))
        bar.reg(b + TRFCMD, 4, on_read=self._gated(self._trfcmd_read),
                on_write=self._falcon_write(TRFCMD, self._trfcmd_write))
        bar.reg(b + CORE_SELECT, 4, on_read=self._gated(self._getter(CORE_SELECT)),
                on_write=self._falcon_write(CORE_SELECT, self._core_select_write))
        for reg in (self.fbif_transcfg, self.fbif_ctl, self.fbif_ctl + FBIF_CTL2):
            bar.reg(reg, 4, on_read=self._gated(self._getter(reg)),
                    on_write=self._falcon_write(reg, self._fbif_write(reg)))
        bar.reg(b + ENGINE_RESET, 4, on_read=lambda: self.engine_reset,
                on_write=self._engine_reset_write)
        bar.reg(b + MAILBOX_TEST, 4, on_read=self._mailbox_read,
                on_write=self._read_only("mailbox"))
        if self.product.fsp:
            # the OFA's engine reset offset (0x844000 + 0x3c0) is hw.h's OFA DMA support
            # check register: on Hopper it is that, read only
            self._fsp(bar)
        return bar

    def _read_only(self, name: str) -> Callable[[int], None]:
        def write(value: int) -> None:
            raise self._refuse(f"write of 0x{value:x} to {name}, a register the driver only reads")
        return write

    def _getter(self, key: int) -> Callable[[], int]:
        return lambda: self.regs[key]

    def _gated(self, read: Callable[[], int]) -> Callable[[], int]:
        return lambda: read() if self.falcon_enabled() else BADF

    def _falcon_write(self, key: int, write: Callable[[int], None]) -> Callable[[int], None]:
        def checked(value: int) -> None:
            if not self.falcon_enabled():
                raise self._refuse(f"write of 0x{value:x} to Falcon register 0x{key:x} while "
                                   "the Falcon is in reset")
            write(value)
        return checked

    def _limited(self, key: int, limit: int) -> Callable[[int], None]:
        def write(value: int) -> None:
            if value > limit:
                raise self._refuse(f"0x{value:x} in DMA register 0x{key:x} (field up to 0x{limit:x})")
            self.regs[key] = value
        return write

    def _pmc_write(self, value: int) -> None:
        mask = self.product.pmc_bits
        if not mask:
            raise self._refuse(f"PMC_ENABLE write 0x{value:x} on a product whose Falcon is not "
                               "reset through PMC")
        if (value ^ self.pmc_enable) & ~mask:
            raise self._refuse(f"PMC_ENABLE write 0x{value:x} changes bits other than the "
                               f"Falcon's 0x{mask:x}")
        if value & mask not in (0, mask):
            raise self._refuse(f"PMC_ENABLE write 0x{value:x} sets only part of 0x{mask:x}")

        def change() -> None:
            self.pmc_enable = value
        self._changing(change)

    def _engine_reset_write(self, value: int) -> None:
        if value not in (0, 1):
            raise self._refuse(f"engine reset value 0x{value:x}")
        if self.product.reset == "none":
            raise self._refuse("engine reset of a Falcon without outside reset (OFA)")
        if self.product.reset == "pmc":
            raise self._refuse("engine reset on a product whose Falcon is reset through PMC")

        def change() -> None:
            self.engine_reset = value
            if value:
                self.ada_needs_reset = False
        self._changing(change)

    def _mailbox_read(self) -> int:
        return MAILBOX_RESET_MAGIC if self.ada_needs_reset else 0

    def _top_bits_write(self, value: int) -> None:
        if value > 0x1FFFF:
            raise self._refuse(f"DMA address top bits 0x{value:x} (bits 47..63 are 17 bits)")
        self.bars[0].regs[TOP_BITS].value = value

    def _dmactl_read(self) -> int:
        if self.scrub_polls:
            if not self.scrub_stuck:
                self.scrub_polls -= 1
            return self.regs[DMACTL] | DMACTL_BUSY
        return self.regs[DMACTL]

    def _dmactl_write(self, value: int) -> None:
        if value & ~(DMACTL_BIT0 | DMACTL_BUSY):
            raise self._refuse(f"DMACTL value 0x{value:x}")
        if value & DMACTL_BIT0 and not self.regs[DMACTL] & DMACTL_BIT0:
            raise self._refuse("setting DMACTL bit 0 (the series only clears it)")
        self.regs[DMACTL] = value & DMACTL_BIT0  # bits 1..2 are status

    def _dmemc_write(self, value: int) -> None:
        offset = value & ~(DMEMC_AINCR | DMEMC_AINCW)
        if offset % 4 or offset >= len(self.dmem):
            raise self._refuse(f"DMEMC value 0x{value:x}")
        self.regs[DMEMC] = value

    def _dmem_step(self, flag: int) -> int:
        value = self.regs[DMEMC]
        offset = value & ~(DMEMC_AINCR | DMEMC_AINCW)
        if value & flag:
            self.regs[DMEMC] = (value - offset) | ((offset + 4) % len(self.dmem))
        return offset

    def _dmemd_read(self) -> int:
        offset = self._dmem_step(DMEMC_AINCR)
        return int.from_bytes(self.dmem[offset:offset + 4], "little")

    def _dmemd_write(self, value: int) -> None:
        offset = self._dmem_step(DMEMC_AINCW)
        self.dmem[offset:offset + 4] = value.to_bytes(4, "little")

    def _core_select_write(self, value: int) -> None:
        if (value ^ self.regs[CORE_SELECT]) & ~CORE_SELECT_RISCV or value & CORE_SELECT_RISCV:
            raise self._refuse(f"core select 0x{value:x} (the series only clears bits 4..5)")
        self.regs[CORE_SELECT] = value

    def _fbif_write(self, reg: int) -> Callable[[int], None]:
        def write(value: int) -> None:
            old = self.regs[reg]
            if reg == self.fbif_transcfg:
                # target cleared, then SYSMEM_DEFAULT (0x5) or-ed in: the one write defined
                ok = value == (old & ~TRANSCFG_TARGET_MASK) | TRANSCFG_SYSMEM
            elif reg == self.fbif_ctl:
                ok = value == old | (value & (FBIF_ALLOW_PHYS | FBIF_ALLOW_FULL_PHYS))
            else:
                ok = value == 1
            if not ok:
                raise self._refuse(f"FBIF register 0x{reg:x} value 0x{value:x} (was 0x{old:x})")
            self.regs[reg] = value
        return write

    # ---- DMA ----
    def _trfcmd_write(self, value: int) -> None:
        if value & ~(CMD_WRITE | (0x7 << CMD_SIZE_SHIFT)):
            raise self._refuse(f"DMA command 0x{value:x} (defined: size bits 8..10, write 0x20)")
        encoding = (value >> CMD_SIZE_SHIFT) & 0x7
        if encoding > DMA_MAX_ENCODING:
            raise self._refuse(f"DMA size encoding {encoding} (above 256 bytes)")
        if self.job is not None:
            raise self._refuse("DMA command while the previous transfer is outstanding")
        problem = self.configured()
        if problem is not None:
            raise self._refuse(f"DMA on a Falcon the series' init has not set up ({problem})")
        size = DMA_MIN << encoding
        offset = self.regs[TRFFBOFFS]
        if offset % DMA_MIN or offset + size > DMA_BLOCK:
            raise self._refuse(f"DMA of {size} bytes at block offset 0x{offset:x} (crosses a "
                               "256-byte block or is not 4-byte aligned)")
        address = ((self.bars[0].regs[TOP_BITS].value << 47) | (self.regs[TRFBASE1] << 40)
                   | (self.regs[TRFBASE] << 8)) + offset
        self.regs[TRFCMD] = value
        self.job = (address, size, bool(value & CMD_WRITE), self.regs[TRFMOFFS])
        self.busy_polls = self.latency
        self.stuck = None

    def _trfcmd_read(self) -> int:
        if self.job is not None and self.stuck is None and not self.hang:
            if not self.command & 0x4:
                self.stuck = "bus mastering off"
            elif self.scrub_polls:
                self.stuck = "DMEM still scrubbing"
            elif self.busy_polls:
                self.busy_polls -= 1
            else:
                self._transfer(*self.job)
        return self.regs[TRFCMD]

    def _transfer(self, address: int, size: int, write: bool, moffs: int) -> None:
        if write:
            # posted: a fault drops it in the IOMMU, recorded in iommu.faults
            with contextlib.suppress(IommuFault):
                self.iommu.write(address, bytes(self.dmem[moffs:moffs + size]))
        else:
            try:
                self.dmem[moffs:moffs + size] = self.iommu.read(address, size)
            except IommuFault as fault:
                self.stuck = str(fault)
                return
        self.transfers.append((address, size, write))
        self.job = None
        self.regs[TRFCMD] |= CMD_DONE

    # ---- FSP (Hopper) ----
    def _fsp(self, bar: Bar) -> None:
        bar.reg(OFA_DMA_SUPPORT, 4, on_read=self._ofa_support,
                on_write=self._read_only("OFA DMA support"))
        bar.reg(FSP_EMEM_CTRL, 4, on_read=lambda: self.emem_ctrl, on_write=self._emem_ctrl)
        bar.reg(FSP_EMEM_DATA, 4, on_read=self._emem_read, on_write=self._emem_write)
        for reg in self.queues:
            bar.reg(reg, 4, on_read=self._queue_reader(reg), on_write=self._queue_writer(reg))

    def _ofa_support(self) -> int:
        return 0 if self.fbdma and self.fbdma_firmware else OFA_NOT_SUPPORTED

    def _emem_ctrl(self, value: int) -> None:
        offset = value & ~(EMEMC_AINCR | EMEMC_AINCW)
        if value & (EMEMC_AINCR | EMEMC_AINCW) != EMEMC_AINCR | EMEMC_AINCW or not (
                CHANNEL_BASE <= offset < CHANNEL_BASE + CHANNEL_SIZE) or offset % 4:
            raise self._refuse(f"EMEM port 2 control 0x{value:x} (channel 2 is EMEM "
                               f"0x{CHANNEL_BASE:x}..0x{CHANNEL_BASE + CHANNEL_SIZE - 1:x})")
        self.emem_ctrl = value

    def _emem_step(self) -> int:
        offset = self.emem_ctrl & 0xFFFFFF
        if not CHANNEL_BASE <= offset < CHANNEL_BASE + CHANNEL_SIZE:
            raise self._refuse(f"EMEM access at 0x{offset:x}, outside RPC channel 2")
        self.emem_ctrl += 4  # auto-increment (both directions are always set)
        return offset

    def _emem_read(self) -> int:
        offset = self._emem_step()
        return int.from_bytes(self.emem[offset:offset + 4], "little")

    def _emem_write(self, value: int) -> None:
        offset = self._emem_step()
        self.emem[offset:offset + 4] = value.to_bytes(4, "little")

    def _queue_reader(self, reg: int) -> Callable[[], int]:
        return lambda: self.queues[reg]

    def _queue_writer(self, reg: int) -> Callable[[int], None]:
        def write(value: int) -> None:
            if value % 4 or not CHANNEL_BASE <= value < CHANNEL_BASE + CHANNEL_SIZE:
                raise self._refuse(f"FSP queue pointer 0x{value:x} outside RPC channel 2")
            self.queues[reg] = value
            if reg == FSP_QUEUE_HEAD and value != self.queues[FSP_QUEUE_TAIL]:
                self._fsp_message()
        return write

    def _fsp_message(self) -> None:
        head, tail = self.queues[FSP_QUEUE_HEAD], self.queues[FSP_QUEUE_TAIL]
        if tail < head:
            raise self._refuse(f"FSP command queue tail 0x{tail:x} below head 0x{head:x}")
        words = [int.from_bytes(self.emem[o:o + 4], "little") for o in range(head, tail + 4, 4)]
        mctp, msg = words[0], words[1] if len(words) > 1 else 0
        if mctp & ~MCTP_ALLOWED or mctp & (MCTP_SOM | MCTP_EOM) != MCTP_SOM | MCTP_EOM:
            raise self._refuse(f"MCTP header 0x{mctp:08x} (one packet: SOM and EOM)")
        if msg & 0x7F != MSG_TYPE_VENDOR or (msg >> 8) & 0xFFFF != VENDOR_NVIDIA \
                or msg & 0x80:
            raise self._refuse(f"MCTP message header 0x{msg:08x} (vendor defined, NVIDIA)")
        nvdm, payload = msg >> 24, words[2:]
        if nvdm != NVDM_FBDMA:
            raise self._refuse(f"NVDM command type 0x{nvdm:x} (defined: FBDMA 0x22)")
        if payload != [FBDMA_SUBCMD_ENABLE]:
            raise self._refuse(f"FBDMA payload {payload} (defined: the one subcommand "
                               "ENABLE = 1)")
        self.fsp_commands.append((nvdm, payload))
        if self.fsp_silent:
            return  # never consumed, never answered
        self.queues[FSP_QUEUE_HEAD] = self.queues[FSP_QUEUE_TAIL]  # consumed
        if not self.fsp_status:
            self.fbdma = True
        response = [MCTP_SOM | MCTP_EOM, MSG_TYPE_VENDOR | (VENDOR_NVIDIA << 8)
                    | (NVDM_RESPONSE << 24), 0, nvdm, self.fsp_status]
        for i, word in enumerate(response):
            self.emem[CHANNEL_BASE + 4 * i:CHANNEL_BASE + 4 * i + 4] = word.to_bytes(4, "little")
        self.queues[FSP_MSG_HEAD] = CHANNEL_BASE
        self.queues[FSP_MSG_TAIL] = CHANNEL_BASE + 4 * (len(response) - 1)
