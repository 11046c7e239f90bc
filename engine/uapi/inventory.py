"""The uAPI inventory: every VFIO/iommufd ioctl and VFIO_DEVICE_FEATURE of the kernel's
headers, and which operation of the scenario language issues each.

`OP_ISSUES` maps an operation to the ioctls and device features its implementation (and
the uapi layer beneath it) can issue, in any IOMMU mode; `EXCLUDED` lists the uAPI the
library does not exercise on purpose, each with its reason. tests/unit/test_uapi_inventory.py
reads include/uapi/linux/vfio.h and iommufd.h of the testbed kernel's source and fails
for a name that is neither issued by an operation some scenario under scenarios/ uses
nor excluded: that list is the library's uAPI to-do list.

Adding an operation: add its entry here, next to the others of its area (one line each,
sorted by operation), naming the uAPI as the header spells it.
"""

from __future__ import annotations

import re

# --- what the operations issue ---------------------------------------------------------

_CONTAINER_OPEN = ("VFIO_GET_API_VERSION", "VFIO_CHECK_EXTENSION")
_DEVICE_OPEN = ("VFIO_GROUP_GET_STATUS", "VFIO_GROUP_SET_CONTAINER", "VFIO_SET_IOMMU",
                "VFIO_GROUP_GET_DEVICE_FD", "VFIO_DEVICE_BIND_IOMMUFD",
                "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "VFIO_DEVICE_GET_REGION_INFO")
_MAP = ("VFIO_IOMMU_MAP_DMA", "IOMMU_IOAS_MAP")
_UNMAP = ("VFIO_IOMMU_UNMAP_DMA", "IOMMU_IOAS_UNMAP")
# a scenario driver's init/remove (drivers/): its registers through the BAR region, its
# interrupts, its DMA region mapped in the device's IOMMU
_DRIVER = ("VFIO_DEVICE_GET_REGION_INFO", "VFIO_DEVICE_GET_IRQ_INFO", "VFIO_DEVICE_SET_IRQS",
           *_MAP, *_UNMAP, "VFIO_IOMMU_GET_INFO", "IOMMU_IOAS_IOVA_RANGES")

OP_ISSUES: dict[str, tuple[str, ...]] = {
    # iommufd objects and the selftests' mock IOMMU (run/ops/iommufd.py)
    "mock_domain": ("IOMMU_TEST_CMD",),
    "mock_domain_replace": ("IOMMU_TEST_CMD",),
    "mock_memory_limit": ("IOMMU_TEST_CMD",),
    "mock_check_refs": ("IOMMU_TEST_CMD",),
    "add_reserved_iovas": ("IOMMU_TEST_CMD",),
    "alloc_hwpt": ("IOMMU_HWPT_ALLOC",),
    "iommufd_destroy": ("IOMMU_DESTROY",),
    "close_iommu": (),  # close(2) of the iommufd
    "allow_iovas": ("IOMMU_IOAS_ALLOW_IOVAS",),
    "iova_ranges": ("IOMMU_IOAS_IOVA_RANGES",),
    "copy_iova": ("IOMMU_IOAS_COPY",),
    "iommufd_option": ("IOMMU_OPTION",),
    "get_hw_info": ("IOMMU_GET_HW_INFO",),
    # the mock's access objects and DMABUF (run/ops/iommufd_access.py)
    "access_pages": ("IOMMU_TEST_CMD",),
    "access_replace_ioas": ("IOMMU_TEST_CMD",),
    "access_rw": ("IOMMU_TEST_CMD",),
    "create_access": ("IOMMU_TEST_CMD",),
    "destroy_access": (),  # close(2) of the access's fd
    "destroy_access_pages": ("IOMMU_TEST_CMD",),
    "mock_dmabuf": ("IOMMU_TEST_CMD",),
    "mock_dmabuf_revoke": ("IOMMU_TEST_CMD",),
    # what the port checks of mappings and memory (run/ops/iommufd_check.py)
    "mock_check_map": ("IOMMU_TEST_CMD",),
    "unmap_buffer": (),  # munmap(2) of part of a buffer
    "truncate_buffer": (),  # ftruncate(2) of a memfd buffer
    # iommufd dirty tracking and the mock's dirty and PASID commands (run/ops/iommufd_dirty.py)
    "get_dirty_bitmap": ("IOMMU_HWPT_GET_DIRTY_BITMAP",),
    "mock_pasid_attach": ("IOMMU_TEST_CMD",),
    "mock_pasid_check": ("IOMMU_TEST_CMD",),
    "mock_pasid_detach": ("IOMMU_TEST_CMD",),
    "mock_pasid_replace": ("IOMMU_TEST_CMD",),
    "mock_set_dirty": ("IOMMU_TEST_CMD",),
    "set_dirty_tracking": ("IOMMU_HWPT_SET_DIRTY_TRACKING",),
    # nested translation, vIOMMU objects and VFIO's type1 compat (run/ops/iommufd_viommu.py)
    "alloc_fault_queue": ("IOMMU_FAULT_QUEUE_ALLOC",),
    "alloc_hw_queue": ("IOMMU_HW_QUEUE_ALLOC",),
    "alloc_nested_hwpt": ("IOMMU_HWPT_ALLOC",),
    "alloc_vdevice": ("IOMMU_VDEVICE_ALLOC",),
    "alloc_veventq": ("IOMMU_VEVENTQ_ALLOC",),
    "alloc_viommu": ("IOMMU_VIOMMU_ALLOC",),
    "close_queue_fd": (),  # close(2) of the queue's fd
    "invalidate_cache": ("IOMMU_HWPT_INVALIDATE",),
    "mmap_viommu": (),  # mmap(2) of the iommufd
    "mock_check_dev_cache": ("IOMMU_TEST_CMD",),
    "mock_check_iotlb": ("IOMMU_TEST_CMD",),
    "munmap_viommu": (),
    "read_vevents": (),  # read(2) of the vEVENTQ's fd
    "skip_unless_made": (),
    "trigger_iopf": ("IOMMU_TEST_CMD",),  # and read(2)/write(2) of the fault queue's fd
    "trigger_vevents": ("IOMMU_TEST_CMD",),
    "vfio_iommu_info": ("VFIO_IOMMU_GET_INFO",),
    "vfio_ioas": ("IOMMU_VFIO_IOAS",),
    "vfio_map_dma": ("VFIO_IOMMU_MAP_DMA",),
    "vfio_unmap_dma": ("VFIO_IOMMU_UNMAP_DMA",),
    # the raw ioctl operations issue the ioctl their step names: not counted as a use here
    "iommufd_ioctl": (),
    "iommufd_command_length": (),
    # device (run/ops/device.py)
    "access": (),  # a load/store on a mapping
    "bar_mmap": ("VFIO_DEVICE_GET_REGION_INFO",),
    "bar_read": ("VFIO_DEVICE_GET_REGION_INFO",),
    "bar_write": ("VFIO_DEVICE_GET_REGION_INFO",),
    "close_device": ("VFIO_GROUP_UNSET_CONTAINER", "VFIO_DEVICE_SET_IRQS"),
    "config_read": ("VFIO_DEVICE_GET_REGION_INFO",),
    "config_write": ("VFIO_DEVICE_GET_REGION_INFO",),
    "device_info": ("VFIO_DEVICE_GET_INFO",),
    "expect_irq": (),  # eventfd reads
    "expect_no_irq": (),
    "enable_sriov": ("VFIO_DEVICE_FEATURE", "VFIO_DEVICE_FEATURE_PCI_VF_TOKEN"),
    "irq_disable": ("VFIO_DEVICE_SET_IRQS",),
    "irq_enable": ("VFIO_DEVICE_GET_IRQ_INFO", "VFIO_DEVICE_SET_IRQS"),
    "irq_mask": ("VFIO_DEVICE_SET_IRQS",),
    "irq_trigger": ("VFIO_DEVICE_SET_IRQS",),
    "irq_unmask": ("VFIO_DEVICE_SET_IRQS",),
    "open_device": _DEVICE_OPEN,
    "region_info": ("VFIO_DEVICE_GET_REGION_INFO",),
    "reset": ("VFIO_DEVICE_RESET",),
    "set_vf_token": ("VFIO_DEVICE_FEATURE", "VFIO_DEVICE_FEATURE_PCI_VF_TOKEN"),
    # DMABUF (run/ops/dmabuf.py)
    "export_dmabuf": ("VFIO_DEVICE_FEATURE", "VFIO_DEVICE_FEATURE_DMA_BUF"),
    "mmap_dmabuf": ("VFIO_DEVICE_FEATURE", "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR"),
    "restore_dmabuf": ("VFIO_DEVICE_GET_REGION_INFO",),
    "revoke_dmabuf": ("VFIO_DEVICE_FEATURE", "VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE",
                      "VFIO_DEVICE_PCI_DMABUF_REVOKE", "VFIO_DEVICE_RESET",
                      "VFIO_DEVICE_GET_REGION_INFO"),
    # IOMMU (run/ops/iommu.py)
    "alloc_ioas": ("IOMMU_IOAS_ALLOC", "IOMMU_DESTROY"),
    "attach": ("VFIO_DEVICE_ATTACH_IOMMUFD_PT",),
    "open_cdev": (),  # open(2) of /dev/vfio/devices/vfioN
    "bind_iommufd": ("VFIO_DEVICE_BIND_IOMMUFD",),
    "detach": ("VFIO_DEVICE_DETACH_IOMMUFD_PT",),
    "iommu_info": ("VFIO_IOMMU_GET_INFO", "IOMMU_IOAS_IOVA_RANGES"),
    "open_iommu": (*_CONTAINER_OPEN, "IOMMU_IOAS_ALLOC"),
    # memory (run/ops/memory.py)
    "alloc_buffer": (),
    "assert_equal": (),
    "assert_pattern": (),
    "fill": (),
    "assert_superpages": (),
    "assert_unmapped": (),
    "map_dma": (*_MAP, "IOMMU_IOAS_MAP_FILE", "VFIO_IOMMU_GET_INFO", "IOMMU_IOAS_IOVA_RANGES"),
    "unmap_dma": _UNMAP,
    # scenario drivers (run/ops/driver.py)
    "driver_init": _DRIVER,
    "driver_remove": _DRIVER,
    "memcpy_start": (),
    "memcpy_storm": (),
    "memcpy_wait": (),
    "expect_no_msi": (),
    "send_msi": (),
    # live update (run/ops/liveupdate.py)
    "assert_locked_vm": (),  # /proc/self/status (or the parent's)
    "change_process": ("IOMMU_IOAS_CHANGE_PROCESS",),
    "dirty_bitmap": ("VFIO_IOMMU_DIRTY_PAGES",),
    "dirty_pages": ("VFIO_IOMMU_DIRTY_PAGES",),
    "expect_wakeup": (),  # an eventfd read
    "handover": (),  # a successor process takes the handles over
    "low_power": ("VFIO_DEVICE_FEATURE", "VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY",
                  "VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP",
                  "VFIO_DEVICE_FEATURE_LOW_POWER_EXIT"),
    "memcpy_stream": (),
    "update_vaddr": ("VFIO_IOMMU_UNMAP_DMA", "VFIO_IOMMU_MAP_DMA"),
    # processes (run/ops/process.py): fork(2), capset(2), no ioctl
    "drop_capability": (),
    "fail_nth": (),  # /proc/self/task/TID/fail-nth and debugfs' fault attributes
    "fork": (),
    "join": (),
    # host (run/ops/host.py): the kernel log, taint, debugfs, time
    "assert_not_tainted": (),
    "expect_dmesg": (),
    "expect_iommu_fault": (),
    "expect_no_dmesg": (),
    "expect_no_iommu_fault": (),
    "provoke_crash": (),  # a write to LKDTM's debugfs file, no VFIO or iommufd ioctl
    "sleep": (),
}

# --- what the library leaves out on purpose ----------------------------------------------

EXCLUDED: dict[str, str] = {
    "VFIO_IOMMU_SPAPR_TCE_GET_INFO": "SPAPR TCE IOMMU: POWER only",
    "VFIO_IOMMU_SPAPR_REGISTER_MEMORY": "SPAPR TCE IOMMU: POWER only",
    "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY": "SPAPR TCE IOMMU: POWER only",
    "VFIO_IOMMU_SPAPR_TCE_CREATE": "SPAPR TCE IOMMU: POWER only",
    "VFIO_IOMMU_SPAPR_TCE_REMOVE": "SPAPR TCE IOMMU: POWER only",
    "VFIO_EEH_PE_OP": "EEH error recovery: POWER only",
    "VFIO_IOMMU_ENABLE": "SPAPR TCE IOMMU (type1 answers ENOTTY): POWER only",
    "VFIO_IOMMU_DISABLE": "SPAPR TCE IOMMU (type1 answers ENOTTY): POWER only",
    "VFIO_DEVICE_QUERY_GFX_PLANE": "mediated vGPU display (i915 GVT-g, mdev): no such device "
                                   "in the testbed",
    "VFIO_DEVICE_GET_GFX_DMABUF": "mediated vGPU display (i915 GVT-g, mdev): no such device "
                                  "in the testbed",
    "VFIO_MIG_GET_PRECOPY_INFO": "migration: needs a variant driver with migration "
                                 "(mlx5, hisi_acc, pds …); vfio-pci has none",
    "VFIO_DEVICE_FEATURE_MIGRATION": "migration: needs a variant driver",
    "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE": "migration: needs a variant driver",
    "VFIO_DEVICE_FEATURE_MIG_DATA_SIZE": "migration: needs a variant driver",
    "VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2": "migration: needs a variant driver",
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_START": "device dirty tracking: needs a variant driver "
                                             "with it (mlx5, pds)",
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP": "device dirty tracking: needs a variant driver",
    "VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT": "device dirty tracking: needs a variant driver",
}

#: uAPI a scenario should exercise and none does yet: the library's to-do list. An entry
#: leaves when an operation that issues it is used by a scenario (the test then insists).
NOT_YET: dict[str, str] = {
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": "hot reset: in the uapi layer, no operation yet",
    "VFIO_DEVICE_PCI_HOT_RESET": "hot reset: in the uapi layer, no operation yet",
    "VFIO_DEVICE_IOEVENTFD": "ioeventfd: no operation yet",
    "VFIO_DEVICE_FEATURE_BUS_MASTER": "no operation yet",
}

#: Device features of proposed uAPI no released kernel has (the DMABUF series)
PROPOSED_FEATURES = ("VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE", "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR")


# --- the headers ---------------------------------------------------------------------------

_IOCTL_RX = re.compile(r"^#define\s+(\w+)\s+_IO\w*\(\s*(?:VFIO_TYPE|IOMMUFD_TYPE)\b", re.MULTILINE)
_FEATURE_RX = re.compile(r"^#define\s+(VFIO_DEVICE_FEATURE_\w+)\s+\(?\s*(\d+)\s*\)?\s*$", re.MULTILINE)


def _joined(text: str) -> str:
    """Header text with backslash-continued lines joined."""
    return re.sub(r"\\\n\s*", " ", text)


def header_ioctls(text: str) -> list[str]:
    """The ioctls a uAPI header defines (#define NAME _IO…(VFIO_TYPE|IOMMUFD_TYPE, …))."""
    return _IOCTL_RX.findall(_joined(text))


def header_features(text: str) -> list[str]:
    """The VFIO_DEVICE_FEATURE indices vfio.h defines (a plain number: the GET/SET/PROBE
    flags and the mask are expressions and are left out)."""
    return [name for name, _ in _FEATURE_RX.findall(_joined(text))]


def issued_by(ops: set[str]) -> dict[str, list[str]]:
    """uAPI name → the operations among `ops` that issue it."""
    found: dict[str, list[str]] = {}
    for name in sorted(ops):
        for uapi in OP_ISSUES.get(name, ()):
            found.setdefault(uapi, []).append(name)
    return found


def counts(names: list[str], used: dict[str, list[str]]) -> dict[str, int]:
    """How many of the header's `names` scenarios use, exclude, leave to do."""
    return {"total": len(names), "used": sum(1 for n in names if n in used),
            "excluded": sum(1 for n in names if n in EXCLUDED),
            "not_yet": sum(1 for n in names if n in NOT_YET)}
