/*
 * Baseline for benchmarks/overhead.py: the same kernel work as the scenario, in C.
 *
 *   vfio_overhead BDF GROUP MAPS COPIES
 *
 * Opens BDF through a type1v2 container, maps one 4 KiB page at MAPS consecutive
 * IOVAs and unmaps them all at once, then makes edu copy 4 KiB COPIES times
 * (RAM -> device buffer -> RAM, completion polled). Prints seconds per phase:
 *   map <s> unmap <s> memcpy <s>
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUFFER 0x40000
#define IOVA_DATA 0x100000ULL
#define IOVA_MAPS 0x1000000ULL

static void die(const char *what)
{
	fprintf(stderr, "vfio_overhead: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void wr64(volatile uint8_t *bar, unsigned int off, uint64_t v)
{
	*(volatile uint64_t *)(bar + off) = v;
}

static uint64_t rd64(volatile uint8_t *bar, unsigned int off)
{
	return *(volatile uint64_t *)(bar + off);
}

static void edu_dma(volatile uint8_t *bar, uint64_t src, uint64_t dst, uint64_t cmd)
{
	wr64(bar, EDU_DMA_SRC, src);
	wr64(bar, EDU_DMA_DST, dst);
	wr64(bar, EDU_DMA_CNT, 4096);
	wr64(bar, EDU_DMA_CMD, cmd | 1);
	while (rd64(bar, EDU_DMA_CMD) & 1)
		;
}

int main(int argc, char **argv)
{
	struct vfio_region_info bar0 = { .argsz = sizeof(bar0), .index = VFIO_PCI_BAR0_REGION_INDEX };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap),
						    .flags = VFIO_DMA_UNMAP_FLAG_ALL };
	struct vfio_iommu_type1_dma_map map = { .argsz = sizeof(map),
						.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
						.size = 4096 };
	char group_path[64];
	int container, group, device;
	long maps, copies, i;
	uint16_t command;
	uint8_t *page, *data;
	volatile uint8_t *bar;
	double t0, t1, t2, t3;

	if (argc != 5) {
		fprintf(stderr, "usage: %s BDF GROUP MAPS COPIES\n", argv[0]);
		return 2;
	}
	maps = atol(argv[3]);
	copies = atol(argv[4]);
	container = open("/dev/vfio/vfio", O_RDWR);
	if (container < 0)
		die("/dev/vfio/vfio");
	snprintf(group_path, sizeof(group_path), "/dev/vfio/%s", argv[2]);
	group = open(group_path, O_RDWR);
	if (group < 0)
		die(group_path);
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container))
		die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		die("VFIO_SET_IOMMU");
	device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[1]);
	if (device < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");

	page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (page == MAP_FAILED)
		die("mmap");
	map.vaddr = (uintptr_t)page;
	t0 = now();
	for (i = 0; i < maps; i++) {
		map.iova = IOVA_MAPS + i * 4096;
		if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map))
			die("VFIO_IOMMU_MAP_DMA");
	}
	t1 = now();
	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap))
		die("VFIO_IOMMU_UNMAP_DMA");
	t2 = now();

	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &bar0) || ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg))
		die("VFIO_DEVICE_GET_REGION_INFO");
	bar = mmap(NULL, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, bar0.offset);
	if (bar == MAP_FAILED)
		die("mmap bar0");
	if (pread(device, &command, 2, cfg.offset + 4) != 2)
		die("pread command");
	command |= 0x6; /* memory space, bus master */
	if (pwrite(device, &command, 2, cfg.offset + 4) != 2)
		die("pwrite command");
	data = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (data == MAP_FAILED)
		die("mmap data");
	memset(data, 0x5a, 4096);
	map.vaddr = (uintptr_t)data;
	map.iova = IOVA_DATA;
	map.size = 8192;
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map))
		die("VFIO_IOMMU_MAP_DMA data");
	t3 = now();
	for (i = 0; i < copies; i++) {
		edu_dma(bar, IOVA_DATA, EDU_BUFFER, 0);
		edu_dma(bar, EDU_BUFFER, IOVA_DATA + 4096, 2);
	}
	printf("map %.6f unmap %.6f memcpy %.6f\n", t1 - t0, t2 - t1, now() - t3);
	if (memcmp(data, data + 4096, 4096)) {
		fprintf(stderr, "vfio_overhead: the copy differs from its source\n");
		return 1;
	}
	return 0;
}
