"""The uapi layer: the kernel's VFIO and iommufd uAPI through a cffi extension.

Public API (see each module):
    open_iommu(mode) -> Iommu                 Container (4 type1 modes) or Iommufd
    Iommufd.alloc_ioas() -> Ioas              more IO address spaces
    VfioDevice.open(iommu, bdf, vf_token=None, ioas=None) -> VfioDevice
    Cdev(bdf).bind(iommufd, vf_token=None) -> VfioDevice, then attach()/detach()
    DmaBuffer(size, backing) / Pattern(kind, seed)
    host_capabilities(bdfs) -> HostCapabilities
    debugfs.page_table(bdf) -> PageTable
"""

import importlib
from typing import Any

# Imported lazily so that `vfio_scenario.uapi.modes` and friends load without touching
# the compiled extension until a name that needs it is used.
_EXPORTS = {
    "ALL_MODES": "modes",
    "AccessFault": "mmio",
    "AddressSpace": "iommu",
    "Availability": "capabilities",
    "Backing": "buffers",
    "Cdev": "device",
    "Container": "container",
    "DmaBuf": "dmabuf",
    "DmaBuffer": "buffers",
    "Group": "container",
    "HostCapabilities": "capabilities",
    "Ioas": "iommufd",
    "Iommu": "iommu",
    "IommuMode": "modes",
    "Iommufd": "iommufd",
    "IovaAllocator": "iova",
    "IovaRange": "iova",
    "IrqSet": "irq",
    "IrqType": "irq",
    "Mapping": "iommu",
    "Mmio": "mmio",
    "Pattern": "patterns",
    "VfioDevice": "device",
    "host_capabilities": "capabilities",
    "open_iommu": "iommu",
}

__all__ = [
    "ALL_MODES",
    "AccessFault",
    "AddressSpace",
    "Availability",
    "Backing",
    "Cdev",
    "Container",
    "DmaBuf",
    "DmaBuffer",
    "Group",
    "HostCapabilities",
    "Ioas",
    "Iommu",
    "IommuMode",
    "Iommufd",
    "IovaAllocator",
    "IovaRange",
    "IrqSet",
    "IrqType",
    "Mapping",
    "Mmio",
    "Pattern",
    "VfioDevice",
    "host_capabilities",
    "open_iommu",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vfio_scenario.uapi' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vfio_scenario.uapi.{_EXPORTS[name]}"), name)
