"""Register model of an NVIDIA GPU's BAR0 as far as Falcon DMA needs it: PMC (boot id,
enables), the DMA Falcon of each architecture (base page, FBIF, DMEM, DMA transfer
registers, engine reset), boot/memory-clear status and, for Hopper, the FSP message
queue that enables FBDMA.  Facts from NVIDIA's gpu-admin-tools and the selftest series.

A DMA starts when DMATRFCMD is written and completes (DMATRFCMD idle bit) after
`latency` reads of DMATRFCMD.  It only runs when the Falcon is enabled and set up as the
series sets it up (DMACTL context requirement off, FBIF physical coherent-sysmem, Falcon
core selected, bus mastering on); otherwise, and on an IOMMU fault on the read, the
transfer never completes and `stuck` says why — this model's choice, since the public
material documents no DMA error status.  A refused write is dropped and recorded.

Knobs: `hang` (no DMA completes), `scrub_stuck` (DMACTL scrubbing never ends),
`ada_needs_reset` (the Falcon answers 0xbadf5620 until its engine reset is asserted),
`fsp_silent` / `fsp_status` / `fbdma_firmware` for Hopper's FSP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.models.iommu import IommuFault
from tests.models.pci import Bar, ModelDevice

NVIDIA = 0x10DE
CLASS_3D = 0x030200
PWR, HUB = 1 << 13, 1 << 29
PMC_BOOT_0, PMC_ENABLE = 0x0, 0x200
TOP_BITS, MEM_CLEAR, BOOT_COMPLETE = 0x100F04, 0x100B20, 0x118234
FSP_BOOT_COMPLETE, OFA_DMA_SUPPORT = 0x200BC, 0x8443C0
FSP_EMEM_CTRL = 0x8F2AD0
FSP_QUEUE_HEAD, FSP_QUEUE_TAIL = 0x8F2C10, 0x8F2C14
FSP_MSG_HEAD, FSP_MSG_TAIL = 0x8F2C90, 0x8F2C94
BADF = 0xBADF1100  # what a disabled Falcon answers

DMACTL, DMEMC, DMEMD = 0x10C, 0x1C0, 0x1C4
TRFBASE, TRFMOFFS, TRFCMD, TRFFBOFFS, TRFBASE1 = 0x110, 0x114, 0x118, 0x11C, 0x128
ENGINE_RESET, MAILBOX_TEST, CORE_SELECT = 0x3C0, 0x40C, 0x1668
FBIF_TRANSCFG, FBIF_CTL, FBIF_CTL2 = 0x00, 0x24, 0x84
IDLE = 0x2

# kind: (base page, FBIF offset in the page)
FALCONS = {"pmu-legacy": (0x10A000, 0x600), "pmu": (0x10A000, 0xE00),
           "gsp": (0x110000, 0x600), "ofa": (0x844000, 0x400)}


@dataclass(frozen=True)
class Product:
    name: str
    boot0: int
    falcon: str
    reset: str  # "pmc" (PMC_ENABLE bits), "engine" (engine reset register), "none"
    pmc_bits: int = 0
    memory_clear: bool = False
    riscv: bool = False  # has a RISC-V core that may be selected instead of the Falcon


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
    Product("H100", 0x180000A1, "ofa", "none", memory_clear=True),
    # not supported by the driver: Blackwell
    Product("B200", 0x1A0000A1, "ofa", "none", memory_clear=True),
    Product("RTX5090", 0x1B2000A1, "ofa", "none", memory_clear=True),
)}


class FalconGpuModel(ModelDevice):
    def __init__(self, product: str = "T4", device_id: int = 0x1EB8,
                 class_code: int = CLASS_3D, enabled: bool = True, latency: int = 1,
                 scrub_polls: int = 2, dmem_size: int = 0x10000) -> None:
        super().__init__(NVIDIA, device_id, class_code, msix_count=1)
        self.product = PRODUCTS[product]
        self.base, fbif = FALCONS[self.product.falcon]
        self.fbif = self.base + fbif
        self.latency = latency
        self.scrub_polls_after_enable = scrub_polls
        self.hang = False
        self.scrub_stuck = False
        self.ada_needs_reset = False
        self.fsp_silent = False
        self.fsp_status = 0
        self.fbdma_firmware = True
        self.fbdma = False
        self.dmem = bytearray(dmem_size)
        self.transfers: list[tuple[int, int, bool]] = []  # (address, size, write) done
        self.resets = 0  # times the Falcon went from enabled to disabled
        self.stuck: str | None = None
        self.busy_polls = 0
        self.job: tuple[int, int, bool, int] | None = None
        self.regs: dict[int, int] = {}
        self.pmc_enable = self.product.pmc_bits if enabled else 0
        self.engine_reset = 0 if enabled else 1
        self.emem = bytearray(8192)
        self.emem_ctrl = 0
        self.queues = {FSP_QUEUE_HEAD: 0, FSP_QUEUE_TAIL: 0, FSP_MSG_HEAD: 0, FSP_MSG_TAIL: 0}
        self._defaults()
        self.scrub_polls = 0
        self.bars[0] = self._bar0()

    # ---- state ----
    def _defaults(self) -> None:
        """Falcon registers as after its reset."""
        self.regs = {DMACTL: 0x1, DMEMC: 0, TRFBASE: 0, TRFMOFFS: 0, TRFCMD: IDLE,
                     TRFFBOFFS: 0, TRFBASE1: 0, CORE_SELECT: 0x10 if self.product.riscv else 0,
                     FBIF_TRANSCFG: 0, FBIF_CTL: 0, FBIF_CTL2: 0}
        self.dmem[:] = bytes(len(self.dmem))
        self.job = None
        self.scrub_polls = self.scrub_polls_after_enable

    def falcon_enabled(self) -> bool:
        if self.product.reset == "pmc":
            bits = self.product.pmc_bits
            return self.pmc_enable & bits == bits
        if self.product.reset == "engine":
            return self.engine_reset == 0 and not self.ada_needs_reset
        return True

    def _changing(self, change: Callable[[], None]) -> None:
        before = self.falcon_enabled()
        change()
        after = self.falcon_enabled()
        if before and not after:
            self.resets += 1
        if after and not before:
            self._defaults()

    # ---- BAR0 ----
    def _bar0(self) -> Bar:
        bar = Bar(16 << 20)
        bar.reg(PMC_BOOT_0, 4, self.product.boot0, on_write=self._read_only)
        bar.reg(PMC_ENABLE, 4, on_read=lambda: self.pmc_enable, on_write=self._pmc_write)
        bar.reg(TOP_BITS, 4)
        bar.reg(MEM_CLEAR, 4, 1, on_write=self._read_only)
        if self.product.memory_clear:
            bar.reg(BOOT_COMPLETE, 4, 0x3FF, on_write=self._read_only)
        for offset in (DMEMC, TRFBASE, TRFMOFFS, TRFFBOFFS, TRFBASE1, CORE_SELECT):
            self._falcon_reg(bar, self.base + offset, offset)
        for offset in (FBIF_TRANSCFG, FBIF_CTL, FBIF_CTL2):
            self._falcon_reg(bar, self.fbif + offset, offset)
        bar.reg(self.base + DMACTL, 4, on_read=self._dmactl_read,
                on_write=self._falcon_writer(DMACTL))
        bar.reg(self.base + TRFCMD, 4, on_read=self._trfcmd_read, on_write=self._trfcmd_write)
        if self.product.reset != "none":
            bar.reg(self.base + ENGINE_RESET, 4, on_read=lambda: self.engine_reset,
                    on_write=self._engine_reset_write)
            bar.reg(self.base + MAILBOX_TEST, 4, on_read=self._mailbox_read,
                    on_write=self._read_only)
        if self.product.name == "H100":
            self._fsp(bar)
        return bar

    @staticmethod
    def _read_only(value: int) -> None:
        raise AssertionError("write to a read-only GPU register")

    def _falcon_reg(self, bar: Bar, address: int, key: int) -> None:
        bar.reg(address, 4, on_read=lambda: self.regs[key] if self.falcon_enabled() else BADF,
                on_write=self._falcon_writer(key))

    def _falcon_writer(self, key: int) -> Callable[[int], None]:
        def write(value: int) -> None:
            if self.falcon_enabled():  # a disabled Falcon drops writes
                self.regs[key] = value
        return write

    def _pmc_write(self, value: int) -> None:
        def change() -> None:
            self.pmc_enable = value
        self._changing(change)

    def _engine_reset_write(self, value: int) -> None:
        def change() -> None:
            self.engine_reset = value & 1
            if value & 1:
                self.ada_needs_reset = False
        self._changing(change)

    def _mailbox_read(self) -> int:
        return 0xBADF5620 if self.ada_needs_reset else 0

    def _dmactl_read(self) -> int:
        if not self.falcon_enabled():
            return BADF
        if self.scrub_polls:
            if not self.scrub_stuck:
                self.scrub_polls -= 1
            return self.regs[DMACTL] | 0x6
        return self.regs[DMACTL]

    # ---- DMA ----
    def _trfcmd_write(self, value: int) -> None:
        if not self.falcon_enabled():
            return
        self.regs[TRFCMD] = value & ~IDLE
        size = 4 << ((value >> 8) & 0x7)
        offset = self.regs[TRFFBOFFS] & 0xFF
        address = ((self.regs_top() << 47) | ((self.regs[TRFBASE1] & 0x7F) << 40)
                   | ((self.regs[TRFBASE] & 0xFFFFFFFF) << 8)) + offset
        self.job = (address, size, bool(value & 0x20), self.regs[TRFMOFFS])
        self.busy_polls = self.latency
        self.stuck = self._setup_problem(size, offset)

    def regs_top(self) -> int:
        return self.bars[0].regs[TOP_BITS].value if 0 in self.bars else 0

    def _setup_problem(self, size: int, offset: int) -> str | None:
        if (self.regs[TRFCMD] >> 8) & 0x7 > 6:
            return "size encoding above 256 bytes"
        if offset % size or offset + size > 256:
            return "transfer crosses a 256-byte block"
        if self.regs[DMACTL] & 0x1:
            return "DMACTL still requires a context"
        if self.regs[FBIF_TRANSCFG] & 0x7 != 0x5:
            return "FBIF not set to physical coherent system memory"
        if self.regs[FBIF_CTL] & 0x90 != 0x90 or self.regs[FBIF_CTL2] != 1:
            return "FBIF does not allow physical DMA without a context"
        if self.regs[CORE_SELECT] & 0x30:
            return "RISC-V core selected, not the Falcon"
        if not self.command & 0x4:
            return "bus mastering off"
        return None

    def _trfcmd_read(self) -> int:
        if not self.falcon_enabled():
            return BADF
        if self.job is not None and self.stuck is None and not self.hang:
            if self.busy_polls:
                self.busy_polls -= 1
            else:
                self._transfer(*self.job)
        return self.regs[TRFCMD]

    def _transfer(self, address: int, size: int, write: bool, moffs: int) -> None:
        if write:
            try:
                self.iommu.write(address, bytes(self.dmem[moffs:moffs + size]))
            except IommuFault:
                pass  # posted: dropped by the IOMMU, recorded in iommu.faults
        else:
            try:
                self.dmem[moffs:moffs + size] = self.iommu.read(address, size)
            except IommuFault as fault:
                self.stuck = str(fault)
                return
        self.transfers.append((address, size, write))
        self.job = None
        self.regs[TRFCMD] |= IDLE

    # ---- FSP (Hopper) ----
    def _fsp(self, bar: Bar) -> None:
        bar.reg(FSP_BOOT_COMPLETE, 4, 0xFF, on_write=self._read_only)
        bar.reg(OFA_DMA_SUPPORT, 4, on_read=lambda: 0 if self.fbdma else 0xBADF0000,
                on_write=self._read_only)
        bar.reg(FSP_EMEM_CTRL, 4, on_read=lambda: self.emem_ctrl, on_write=self._emem_ctrl)
        bar.reg(FSP_EMEM_CTRL + 4, 4, on_read=self._emem_read, on_write=self._emem_write)
        for reg in self.queues:
            bar.reg(reg, 4, on_read=self._queue_reader(reg), on_write=self._queue_writer(reg))

    def _emem_ctrl(self, value: int) -> None:
        self.emem_ctrl = value

    def _emem_step(self, flag: int) -> int:
        offset = self.emem_ctrl & 0xFFFC
        if self.emem_ctrl & flag:
            self.emem_ctrl = (self.emem_ctrl & ~0xFFFC) | ((offset + 4) & 0xFFFC)
        return offset

    def _emem_read(self) -> int:
        offset = self._emem_step(1 << 25)
        return int.from_bytes(self.emem[offset:offset + 4], "little")

    def _emem_write(self, value: int) -> None:
        offset = self._emem_step(1 << 24)
        self.emem[offset:offset + 4] = value.to_bytes(4, "little")

    def _queue_reader(self, reg: int) -> Callable[[], int]:
        return lambda: self.queues[reg]

    def _queue_writer(self, reg: int) -> Callable[[int], None]:
        def write(value: int) -> None:
            self.queues[reg] = value
            if reg == FSP_QUEUE_HEAD:
                self._fsp_message()
        return write

    def _fsp_message(self) -> None:
        head, tail = self.queues[FSP_QUEUE_HEAD], self.queues[FSP_QUEUE_TAIL]
        if self.fsp_silent:
            return
        words = [int.from_bytes(self.emem[o:o + 4], "little") for o in range(head, tail + 4, 4)]
        self.queues[FSP_QUEUE_HEAD] = self.queues[FSP_QUEUE_TAIL]  # consumed
        if words[0] & 0xC0000000 != 0xC0000000 or words[1] & 0xFFFFFF != 0x10DE7E:
            return  # not a single-packet NVIDIA vendor message: the FSP ignores it
        nvdm = words[1] >> 24
        status = self.fsp_status
        if nvdm == 0x22 and not status:
            self.fbdma = bool(words[2]) and self.fbdma_firmware
        response = [0xC0000000, 0x10DE7E | (0x15 << 24), 0, nvdm, status]
        for i, word in enumerate(response):
            self.emem[head + 4 * i:head + 4 * i + 4] = word.to_bytes(4, "little")
        self.queues[FSP_MSG_HEAD] = head
        self.queues[FSP_MSG_TAIL] = head + 4 * (len(response) - 1)

