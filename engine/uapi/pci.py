"""PCI config-space offsets and bits the layer and the drivers use."""

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 1 << 1
PCI_COMMAND_MASTER = 1 << 2
PCI_COMMAND_INTX_DISABLE = 1 << 10
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 1 << 4
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_PIN = 0x3D
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
PCI_MSI_FLAGS = 2
PCI_MSI_FLAGS_ENABLE = 1 << 0


def capabilities(config: bytes) -> dict[int, int]:
    """Capability id → offset of the standard capability list in a config-space dump."""
    found: dict[int, int] = {}
    if len(config) < 0x40 or not config[PCI_STATUS] & PCI_STATUS_CAP_LIST:
        return found
    offset = config[PCI_CAPABILITY_LIST] & ~3
    seen: set[int] = set()
    while offset and offset not in seen and offset + 1 < len(config):
        seen.add(offset)
        found.setdefault(config[offset], offset)
        offset = config[offset + 1] & ~3
    return found
