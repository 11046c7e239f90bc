"""Simulated IOMMU-mapped memory: the device side of DMA for the device models.

An `IovaSpace` holds the mappings a test made (IOVA → bytearray).  A model's DMA goes
through `read`/`write`; touching an IOVA no mapping covers raises `IommuFault`, which the
model turns into what its hardware would do (an error status, a hang, a dropped write).
Every fault is also kept in `faults`, as a DMAR fault record would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vfio_scenario.drivers.base import DmaRegion


class IommuFault(Exception):
    """A DMA to or from an IOVA that no mapping covers."""

    def __init__(self, iova: int, size: int, write: bool) -> None:
        super().__init__(f"IOMMU fault: DMA {'write' if write else 'read'} of {size} bytes "
                         f"at IOVA 0x{iova:x}")
        self.iova = iova
        self.size = size
        self.write = write


@dataclass
class Mapping:
    iova: int
    mem: bytearray

    @property
    def end(self) -> int:
        return self.iova + len(self.mem)


@dataclass
class IovaSpace:
    """IOVA → memory, for one device's DMA."""

    mappings: list[Mapping] = field(default_factory=list)
    faults: list[IommuFault] = field(default_factory=list)

    def map(self, iova: int, size: int) -> bytearray:
        """Map `size` zeroed bytes at `iova` (must not overlap another mapping)."""
        if any(iova < m.end and m.iova < iova + size for m in self.mappings):
            raise ValueError(f"IOVA 0x{iova:x}+0x{size:x} overlaps an existing mapping")
        mem = bytearray(size)
        self.mappings.append(Mapping(iova, mem))
        return mem

    def region(self, iova: int, size: int) -> DmaRegion:
        """Map memory and hand it out as a driver's DmaRegion (CPU and device share it)."""
        return DmaRegion(memoryview(self.map(iova, size)), iova, size)

    def unmap(self, iova: int) -> None:
        self.mappings = [m for m in self.mappings if m.iova != iova]

    def _find(self, iova: int, size: int, write: bool) -> tuple[bytearray, int]:
        for m in self.mappings:
            if m.iova <= iova and iova + size <= m.end:
                return m.mem, iova - m.iova
        fault = IommuFault(iova, size, write)
        self.faults.append(fault)
        raise fault

    def read(self, iova: int, size: int) -> bytes:
        mem, off = self._find(iova, size, write=False)
        return bytes(mem[off:off + size])

    def write(self, iova: int, data: bytes) -> None:
        mem, off = self._find(iova, len(data), write=True)
        mem[off:off + len(data)] = data
