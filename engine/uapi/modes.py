"""The five IOMMU modes of the kernel's VFIO selftests."""

from __future__ import annotations

from enum import StrEnum


class IommuMode(StrEnum):
    """How the process reaches the IOMMU; values are the selftests' mode names."""

    VFIO_TYPE1 = "vfio_type1_iommu"
    VFIO_TYPE1V2 = "vfio_type1v2_iommu"
    IOMMUFD_COMPAT_TYPE1 = "iommufd_compat_type1"
    IOMMUFD_COMPAT_TYPE1V2 = "iommufd_compat_type1v2"
    IOMMUFD = "iommufd"

    @property
    def container_path(self) -> str:
        """The character device opened as container (type1 modes) or iommufd."""
        return "/dev/vfio/vfio" if self.value.startswith("vfio_") else "/dev/iommu"

    @property
    def uses_container(self) -> bool:
        """Whether devices are reached through a VFIO group and a container."""
        return self is not IommuMode.IOMMUFD

    @property
    def type1_version(self) -> str:
        """'type1' or 'type1v2' for container modes, '' for native iommufd."""
        if self is IommuMode.IOMMUFD:
            return ""
        return "type1v2" if "type1v2" in self.value else "type1"


ALL_MODES: tuple[IommuMode, ...] = tuple(IommuMode)
