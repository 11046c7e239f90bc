/*
 * The project's own copy of VFIO/iommufd uAPI newer than the build host's headers.
 *
 * vfio_scenario's ioctl layer is built against whatever <linux/vfio.h> the build host
 * has (Debian bookworm: 6.1, which predates iommufd and the VFIO cdev), but it speaks
 * the uAPI of kernel 7.2.  Every definition here is guarded by the macro that comes
 * with it, so a newer host header wins.  Structs whose layout grew after their first
 * release are renamed on the way through the host header (see helpers.h) and always
 * defined here in their 7.2 layout.  tests/unit/test_uapi_layout.py checks every size,
 * offset and number against the 7.2 tree.
 */
#ifndef VFIO_SCENARIO_COMPAT_H
#define VFIO_SCENARIO_COMPAT_H

#include <linux/types.h>
#include <linux/ioctl.h>

#ifndef __aligned_u64
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#endif

/* ---- vfio.h: structs that gained fields after 6.1 (always the 7.2 layout) ---- */
struct vfio_device_info {
	__u32	argsz;
	__u32	flags;
	__u32	num_regions;
	__u32	num_irqs;
	__u32	cap_offset;
	__u32	pad;
};

struct vfio_iommu_type1_info {
	__u32	argsz;
	__u32	flags;
	__aligned_u64	iova_pgsizes;
	__u32	cap_offset;
	__u32	pad;
};

struct vfio_pci_dependent_device {
	union {
		__u32	group_id;
		__u32	devid;
	};
	__u16	segment;
	__u8	bus;
	__u8	devfn;
};
struct vfio_pci_hot_reset_info {
	__u32	argsz;
	__u32	flags;
	__u32	count;
	struct vfio_pci_dependent_device	devices[];
};
#ifndef VFIO_PCI_DEVID_OWNED
#define VFIO_PCI_DEVID_OWNED		0
#define VFIO_PCI_DEVID_NOT_OWNED	-1
#endif
#ifndef VFIO_PCI_HOT_RESET_FLAG_DEV_ID
#define VFIO_PCI_HOT_RESET_FLAG_DEV_ID		(1 << 0)
#define VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED	(1 << 1)
#endif

/* ---- vfio.h: device cdev and iommufd binding (6.6+), 7.2 layouts ---- */
#ifndef VFIO_DEVICE_BIND_IOMMUFD
#define VFIO_DEVICE_BIND_IOMMUFD	_IO(VFIO_TYPE, VFIO_BASE + 18)
#endif
#ifndef VFIO_DEVICE_BIND_FLAG_TOKEN
#define VFIO_DEVICE_BIND_FLAG_TOKEN	(1 << 0)
#endif
struct vfio_device_bind_iommufd {
	__u32		argsz;
	__u32		flags;
	__s32		iommufd;
	__u32		out_devid;
	__aligned_u64	token_uuid_ptr;
};

#ifndef VFIO_DEVICE_ATTACH_IOMMUFD_PT
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT	_IO(VFIO_TYPE, VFIO_BASE + 19)
#endif
#ifndef VFIO_DEVICE_ATTACH_PASID
#define VFIO_DEVICE_ATTACH_PASID	(1 << 0)
#endif
struct vfio_device_attach_iommufd_pt {
	__u32	argsz;
	__u32	flags;
	__u32	pt_id;
	__u32	pasid;
};

#ifndef VFIO_DEVICE_DETACH_IOMMUFD_PT
#define VFIO_DEVICE_DETACH_IOMMUFD_PT	_IO(VFIO_TYPE, VFIO_BASE + 20)
#endif
#ifndef VFIO_DEVICE_DETACH_PASID
#define VFIO_DEVICE_DETACH_PASID	(1 << 0)
#endif
struct vfio_device_detach_iommufd_pt {
	__u32	argsz;
	__u32	flags;
	__u32	pasid;
};

/* ---- vfio.h: device features newer than 6.1 ---- */
#ifndef VFIO_DEVICE_FEATURE_BUS_MASTER
#define VFIO_DEVICE_FEATURE_BUS_MASTER 10
#define VFIO_DEVICE_FEATURE_CLEAR_MASTER	0
#define VFIO_DEVICE_FEATURE_SET_MASTER		1
struct vfio_device_feature_bus_master {
	__u32 op;
};
#endif

#ifndef VFIO_DEVICE_FEATURE_DMA_BUF
#define VFIO_DEVICE_FEATURE_DMA_BUF 11
struct vfio_region_dma_range {
	__u64 offset;
	__u64 length;
};
struct vfio_device_feature_dma_buf {
	__u32	region_index;
	__u32	open_flags;
	__u32	flags;
	__u32	nr_ranges;
	struct vfio_region_dma_range dma_ranges[];
};
#endif

#ifndef VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2
#define VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 12
#endif

#ifndef VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP
#define VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP 5
#endif

/*
 * Proposed, not in any released kernel: the DMABUF mmap/revoke series by Matt Evans.
 * RFC v2 (<20260312184613.3710705-1-mattev@meta.com>, patch 08/10) revokes through an
 * ioctl on the device fd; v3 (<20260610154327.37758-1-matt@ozlabs.org>) through device
 * feature 13 (patch 8/9) and sets mmap attributes through feature 14 (patch 9/9).
 * Layouts as the patches' include/uapi/linux/vfio.h hunks declare them; the capability
 * probe reports each one absent where the kernel answers ENOTTY.
 */
#ifndef VFIO_DEVICE_PCI_DMABUF_REVOKE
#define VFIO_DEVICE_PCI_DMABUF_REVOKE	_IO(VFIO_TYPE, VFIO_BASE + 22)
struct vfio_pci_dmabuf_revoke {
	__u32 argsz;
	__u32 dmabuf_fd;
};
#endif
#ifndef VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE
#define VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE 13
struct vfio_device_feature_dma_buf_revoke {
	__s32 dmabuf_fd;
};
#endif
#ifndef VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR
#define VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR 14
#define VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC 0
#define VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC 1
struct vfio_device_feature_dma_buf_memattr {
	__s32 dmabuf_fd;
	__u32 memattr;
};
#endif

/* ---- iommufd.h (6.2+), 7.2 layouts ---- */
#ifndef IOMMUFD_TYPE
#define IOMMUFD_TYPE (';')
#endif

#ifndef IOMMU_DESTROY
#define IOMMU_DESTROY _IO(IOMMUFD_TYPE, 0x80)
struct iommu_destroy {
	__u32 size;
	__u32 id;
};
#endif

#ifndef IOMMU_IOAS_ALLOC
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
struct iommu_ioas_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_ioas_id;
};
#endif

#ifndef IOMMU_IOAS_ALLOW_IOVAS
#define IOMMU_IOAS_ALLOW_IOVAS _IO(IOMMUFD_TYPE, 0x82)
struct iommu_iova_range {
	__aligned_u64 start;
	__aligned_u64 last;
};
struct iommu_ioas_allow_iovas {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;
	__u32 __reserved;
	__aligned_u64 allowed_iovas;
};
#endif

#ifndef IOMMU_IOAS_COPY
#define IOMMU_IOAS_COPY _IO(IOMMUFD_TYPE, 0x83)
struct iommu_ioas_copy {
	__u32 size;
	__u32 flags;
	__u32 dst_ioas_id;
	__u32 src_ioas_id;
	__aligned_u64 length;
	__aligned_u64 dst_iova;
	__aligned_u64 src_iova;
};
#endif

#ifndef IOMMU_IOAS_IOVA_RANGES
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)
struct iommu_ioas_iova_ranges {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;
	__u32 __reserved;
	__aligned_u64 allowed_iovas;
	__aligned_u64 out_iova_alignment;
};
#endif

#ifndef IOMMU_IOAS_MAP
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_MAP_FIXED_IOVA (1 << 0)
#define IOMMU_IOAS_MAP_WRITEABLE (1 << 1)
#define IOMMU_IOAS_MAP_READABLE (1 << 2)
struct iommu_ioas_map {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__u32 __reserved;
	__aligned_u64 user_va;
	__aligned_u64 length;
	__aligned_u64 iova;
};
#endif

#ifndef IOMMU_IOAS_UNMAP
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
struct iommu_ioas_unmap {
	__u32 size;
	__u32 ioas_id;
	__aligned_u64 iova;
	__aligned_u64 length;
};
#endif

#ifndef IOMMU_OPTION
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, 0x87)
#define IOMMU_OPTION_RLIMIT_MODE 0
#define IOMMU_OPTION_HUGE_PAGES 1
#define IOMMU_OPTION_OP_SET 0
#define IOMMU_OPTION_OP_GET 1
struct iommu_option {
	__u32 size;
	__u32 option_id;
	__u16 op;
	__u16 __reserved;
	__u32 object_id;
	__aligned_u64 val64;
};
#endif

#ifndef IOMMU_VFIO_IOAS
#define IOMMU_VFIO_IOAS _IO(IOMMUFD_TYPE, 0x88)
#define IOMMU_VFIO_IOAS_GET 0
#define IOMMU_VFIO_IOAS_SET 1
#define IOMMU_VFIO_IOAS_CLEAR 2
struct iommu_vfio_ioas {
	__u32 size;
	__u32 ioas_id;
	__u16 op;
	__u16 __reserved;
};
#endif

#ifndef IOMMU_HWPT_ALLOC
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, 0x89)
#endif
struct iommu_hwpt_alloc {
	__u32 size;
	__u32 flags;
	__u32 dev_id;
	__u32 pt_id;
	__u32 out_hwpt_id;
	__u32 __reserved;
	__u32 data_type;
	__u32 data_len;
	__aligned_u64 data_uptr;
	__u32 fault_id;
	__u32 __reserved2;
};

#ifndef IOMMU_GET_HW_INFO
#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, 0x8a)
#endif
struct iommu_hw_info {
	__u32 size;
	__u32 flags;
	__u32 dev_id;
	__u32 data_len;
	__aligned_u64 data_uptr;
	union {
		__u32 in_data_type;
		__u32 out_data_type;
	};
	__u8 out_max_pasid_log2;
	__u8 __reserved[3];
	__aligned_u64 out_capabilities;
};

#ifndef IOMMU_IOAS_MAP_FILE
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, 0x8f)
struct iommu_ioas_map_file {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__s32 fd;
	__aligned_u64 start;
	__aligned_u64 length;
	__aligned_u64 iova;
};
#endif


/* ---- iommufd.h: the rest of 7.2's iommufd ioctls (the iommufd selftests use them) ---- */
#ifndef IOMMU_OPTION_RLIMIT_MODE
#define IOMMU_OPTION_RLIMIT_MODE 0
#endif
#ifndef IOMMU_HWPT_ALLOC_NEST_PARENT
#define IOMMU_HWPT_ALLOC_NEST_PARENT (1 << 0)
#define IOMMU_HWPT_ALLOC_DIRTY_TRACKING (1 << 1)
#define IOMMU_HWPT_FAULT_ID_VALID (1 << 2)
#define IOMMU_HWPT_ALLOC_PASID (1 << 3)
#define IOMMU_HWPT_DATA_NONE 0
#define IOMMU_HW_INFO_TYPE_DEFAULT 0
#define IOMMU_HW_CAP_DIRTY_TRACKING (1 << 0)
#define IOMMU_HW_INFO_FLAG_INPUT_TYPE (1 << 0)
#endif

#ifndef IOMMU_HWPT_SET_DIRTY_TRACKING
#define IOMMU_HWPT_SET_DIRTY_TRACKING _IO(IOMMUFD_TYPE, 0x8b)
#define IOMMU_HWPT_DIRTY_TRACKING_ENABLE 1
struct iommu_hwpt_set_dirty_tracking {
	__u32 size;
	__u32 flags;
	__u32 hwpt_id;
	__u32 __reserved;
};
#endif

#ifndef IOMMU_HWPT_GET_DIRTY_BITMAP
#define IOMMU_HWPT_GET_DIRTY_BITMAP _IO(IOMMUFD_TYPE, 0x8c)
#define IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR 1
struct iommu_hwpt_get_dirty_bitmap {
	__u32 size;
	__u32 hwpt_id;
	__u32 flags;
	__u32 __reserved;
	__aligned_u64 iova;
	__aligned_u64 length;
	__aligned_u64 page_size;
	__aligned_u64 data;
};
#endif

#ifndef IOMMU_HWPT_INVALIDATE
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, 0x8d)
struct iommu_hwpt_invalidate {
	__u32 size;
	__u32 hwpt_id;
	__aligned_u64 data_uptr;
	__u32 data_type;
	__u32 entry_len;
	__u32 entry_num;
	__u32 __reserved;
};
#endif

#ifndef IOMMU_FAULT_QUEUE_ALLOC
#define IOMMU_FAULT_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x8e)
struct iommu_fault_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_fault_id;
	__u32 out_fault_fd;
};
#define IOMMU_PGFAULT_PERM_READ (1 << 0)
#define IOMMU_PGFAULT_PERM_WRITE (1 << 1)
#define IOMMUFD_PAGE_RESP_SUCCESS 0
struct iommu_hwpt_pgfault {
	__u32 flags;
	__u32 dev_id;
	__u32 pasid;
	__u32 grpid;
	__u32 perm;
	__u32 __reserved;
	__aligned_u64 addr;
	__u32 length;
	__u32 cookie;
};
struct iommu_hwpt_page_response {
	__u32 cookie;
	__u32 code;
};
#endif

#ifndef IOMMU_VIOMMU_ALLOC
#define IOMMU_VIOMMU_ALLOC _IO(IOMMUFD_TYPE, 0x90)
struct iommu_viommu_alloc {
	__u32 size;
	__u32 flags;
	__u32 type;
	__u32 dev_id;
	__u32 hwpt_id;
	__u32 out_viommu_id;
	__u32 data_len;
	__u32 __reserved;
	__aligned_u64 data_uptr;
};
#endif

#ifndef IOMMU_VDEVICE_ALLOC
#define IOMMU_VDEVICE_ALLOC _IO(IOMMUFD_TYPE, 0x91)
struct iommu_vdevice_alloc {
	__u32 size;
	__u32 viommu_id;
	__u32 dev_id;
	__u32 out_vdevice_id;
	__aligned_u64 virt_id;
};
#endif

/* also the `liveupdate` work's; here for the selftest's size checks (cmd_length) */
/* ---- live update, dirty tracking, low power (vfio.h 5.8+ / 6.0+, iommufd.h 6.13+) ---- */
#ifndef VFIO_UPDATE_VADDR
#define VFIO_UPDATE_VADDR 10
#endif
#ifndef VFIO_DMA_MAP_FLAG_VADDR
#define VFIO_DMA_MAP_FLAG_VADDR (1 << 2)
#endif
#ifndef VFIO_DMA_UNMAP_FLAG_VADDR
#define VFIO_DMA_UNMAP_FLAG_VADDR (1 << 2)
#endif
#ifndef VFIO_IOMMU_DIRTY_PAGES
#define VFIO_IOMMU_DIRTY_PAGES _IO(VFIO_TYPE, VFIO_BASE + 17)
#define VFIO_IOMMU_DIRTY_PAGES_FLAG_START (1 << 0)
#define VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP (1 << 1)
#define VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP (1 << 2)
#define VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP (1 << 0)
struct vfio_bitmap {
	__u64 pgsize;
	__u64 size;
	__u64 *data;
};
struct vfio_iommu_type1_dirty_bitmap {
	__u32 argsz;
	__u32 flags;
	__u8 data[];
};
struct vfio_iommu_type1_dirty_bitmap_get {
	__u64 iova;
	__u64 size;
	struct vfio_bitmap bitmap;
};
#endif
#ifndef VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
#define VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY 3
#define VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP 4
#define VFIO_DEVICE_FEATURE_LOW_POWER_EXIT 5
struct vfio_device_low_power_entry_with_wakeup {
	__s32 wakeup_eventfd;
	__u32 reserved;
};
#endif
#ifndef IOMMU_IOAS_CHANGE_PROCESS
#define IOMMU_IOAS_CHANGE_PROCESS _IO(IOMMUFD_TYPE, 0x92)
struct iommu_ioas_change_process {
	__u32 size;
	__u32 __reserved;
};
#endif

#ifndef IOMMU_VEVENTQ_ALLOC
#define IOMMU_VEVENTQ_ALLOC _IO(IOMMUFD_TYPE, 0x93)
struct iommu_veventq_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type;
	__u32 veventq_depth;
	__u32 out_veventq_id;
	__u32 out_veventq_fd;
	__u32 __reserved;
};
#define IOMMU_VEVENTQ_FLAG_LOST_EVENTS (1U << 0)
struct iommufd_vevent_header {
	__u32 flags;
	__u32 sequence;
};
#endif

#ifndef IOMMU_HW_QUEUE_ALLOC
#define IOMMU_HW_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x94)
struct iommu_hw_queue_alloc {
	__u32 size;
	__u32 flags;
	__u32 viommu_id;
	__u32 type;
	__u32 index;
	__u32 out_hw_queue_id;
	__aligned_u64 nesting_parent_iova;
	__aligned_u64 length;
};
#define IOMMU_HW_QUEUE_TYPE_DEFAULT 0
#endif

/*
 * ---- drivers/iommu/iommufd/iommufd_test.h (7.2): CONFIG_IOMMUFD_TEST's mock IOMMU ----
 * Not an installed header: the kernel's selftests include it from the source tree.
 */
#ifndef _UAPI_IOMMUFD_TEST_H
#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, 0x80 + 32)
enum {
	IOMMU_TEST_OP_ADD_RESERVED = 1,
	IOMMU_TEST_OP_MOCK_DOMAIN,
	IOMMU_TEST_OP_MD_CHECK_MAP,
	IOMMU_TEST_OP_MD_CHECK_REFS,
	IOMMU_TEST_OP_CREATE_ACCESS,
	IOMMU_TEST_OP_DESTROY_ACCESS_PAGES,
	IOMMU_TEST_OP_ACCESS_PAGES,
	IOMMU_TEST_OP_ACCESS_RW,
	IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT,
	IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
	IOMMU_TEST_OP_ACCESS_REPLACE_IOAS,
	IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
	IOMMU_TEST_OP_DIRTY,
	IOMMU_TEST_OP_MD_CHECK_IOTLB,
	IOMMU_TEST_OP_TRIGGER_IOPF,
	IOMMU_TEST_OP_DEV_CHECK_CACHE,
	IOMMU_TEST_OP_TRIGGER_VEVENT,
	IOMMU_TEST_OP_PASID_ATTACH,
	IOMMU_TEST_OP_PASID_REPLACE,
	IOMMU_TEST_OP_PASID_DETACH,
	IOMMU_TEST_OP_PASID_CHECK_HWPT,
	IOMMU_TEST_OP_DMABUF_GET,
	IOMMU_TEST_OP_DMABUF_REVOKE,
};
enum { MOCK_IOMMUPT_DEFAULT = 0, MOCK_IOMMUPT_HUGE };
enum {
	MOCK_APERTURE_START = 1UL << 24,
	MOCK_APERTURE_LAST = (1UL << 31) - 1,
	MOCK_PAGE_SIZE = 2048,
	MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE,
};
enum { MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0, MOCK_FLAGS_DEVICE_PASID = 1 << 2 };
enum { MOCK_FLAGS_ACCESS_WRITE = 1 << 0, MOCK_FLAGS_ACCESS_SYZ = 1 << 16 };
enum { MOCK_ACCESS_RW_WRITE = 1 << 0, MOCK_ACCESS_RW_SLOW_PATH = 1 << 2 };
enum { MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0 };
#define MOCK_PASID_WIDTH 20
#define IOMMU_HW_INFO_TYPE_SELFTEST 0xfeedbeef
#define IOMMU_HW_INFO_SELFTEST_REGVAL 0xdeadbeef
#define IOMMU_HWPT_DATA_SELFTEST 0xdead
#define IOMMU_TEST_IOTLB_DEFAULT 0xbadbeef
#define IOMMU_TEST_DEV_CACHE_DEFAULT 0xbaddad
#define IOMMU_HWPT_INVALIDATE_DATA_SELFTEST 0xdeadbeef
#define IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID 0xdadbeef
#define IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST 0xdeadbeef
#define IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID 0xdadbeef
#define IOMMU_TEST_INVALIDATE_FLAG_ALL (1 << 0)
#define IOMMU_TEST_HW_QUEUE_MAX 2
enum { MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = 3, MOCK_NESTED_DOMAIN_IOTLB_NUM = 4 };
enum { MOCK_DEV_CACHE_ID_MAX = 3, MOCK_DEV_CACHE_NUM = 4 };
#define IOMMU_VIOMMU_TYPE_SELFTEST 0xdeadbeef
#define IOMMU_VEVENTQ_TYPE_SELFTEST 0xbeefbeef
#define IOMMU_HW_QUEUE_TYPE_SELFTEST 0xdeadbeef

struct iommu_test_cmd {
	__u32 size;
	__u32 op;
	__u32 id;
	__u32 __reserved;
	union {
		struct { __aligned_u64 start; __aligned_u64 length; } add_reserved;
		struct { __u32 out_stdev_id; __u32 out_hwpt_id; __u32 out_idev_id; } mock_domain;
		struct {
			__u32 out_stdev_id; __u32 out_hwpt_id; __u32 out_idev_id; __u32 dev_flags;
		} mock_domain_flags;
		struct { __u32 pt_id; } mock_domain_replace;
		struct { __aligned_u64 iova; __aligned_u64 length; __aligned_u64 uptr; } check_map;
		struct { __aligned_u64 length; __aligned_u64 uptr; __u32 refs; } check_refs;
		struct { __u32 out_access_fd; __u32 flags; } create_access;
		struct { __u32 access_pages_id; } destroy_access_pages;
		struct {
			__u32 flags; __u32 out_access_pages_id; __aligned_u64 iova;
			__aligned_u64 length; __aligned_u64 uptr;
		} access_pages;
		struct {
			__aligned_u64 iova; __aligned_u64 length; __aligned_u64 uptr; __u32 flags;
		} access_rw;
		struct { __u32 limit; } memory_limit;
		struct { __u32 ioas_id; } access_replace_ioas;
		struct {
			__u32 flags; __aligned_u64 iova; __aligned_u64 length;
			__aligned_u64 page_size; __aligned_u64 uptr; __aligned_u64 out_nr_dirty;
		} dirty;
		struct { __u32 id; __u32 iotlb; } check_iotlb;
		struct { __u32 dev_id; __u32 pasid; __u32 grpid; __u32 perm; __u64 addr; } trigger_iopf;
		struct { __u32 id; __u32 cache; } check_dev_cache;
		struct { __u32 dev_id; } trigger_vevent;
		struct { __u32 pasid; __u32 pt_id; } pasid_attach;
		struct { __u32 pasid; __u32 pt_id; } pasid_replace;
		struct { __u32 pasid; } pasid_detach;
		struct { __u32 pasid; __u32 hwpt_id; } pasid_check;
		struct { __u32 length; __u32 open_flags; } dmabuf_get;
		struct { __s32 dmabuf_fd; __u32 revoked; } dmabuf_revoke;
	};
	__u32 last;
};

struct iommu_test_hw_info {
	__u32 flags;
	__u32 test_reg;
};
struct iommu_hwpt_selftest {
	__u32 iotlb;
	__u32 pagetable_type;
};
struct iommu_hwpt_invalidate_selftest {
	__u32 flags;
	__u32 iotlb_id;
};
struct iommu_viommu_selftest {
	__u32 in_data;
	__u32 out_data;
	__aligned_u64 out_mmap_offset;
	__aligned_u64 out_mmap_length;
};
struct iommu_viommu_invalidate_selftest {
	__u32 flags;
	__u32 vdev_id;
	__u32 cache_id;
};
struct iommu_viommu_event_selftest {
	__u32 virt_id;
};
#endif

#endif /* VFIO_SCENARIO_COMPAT_H */
