/*
 * C side of vfio_scenario.uapi._vfio: the uAPI headers, ioctl with errno, mmap, exact-width
 * volatile MMIO accessors, the SIGBUS/SIGSEGV fault probe and fast buffer patterns.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/mman.h>
#include <fcntl.h>

/*
 * These structs grew after they first appeared; a host header may carry an older
 * layout.  Rename the host's copies out of the way; compat.h defines the 7.2 layout.
 */
#define vfio_device_bind_iommufd vfio_device_bind_iommufd__host
#define vfio_device_attach_iommufd_pt vfio_device_attach_iommufd_pt__host
#define vfio_device_detach_iommufd_pt vfio_device_detach_iommufd_pt__host
#define iommu_hwpt_alloc iommu_hwpt_alloc__host
#define iommu_hw_info iommu_hw_info__host
#define vfio_device_info vfio_device_info__host
#define vfio_iommu_type1_info vfio_iommu_type1_info__host
#define vfio_pci_dependent_device vfio_pci_dependent_device__host
#define vfio_pci_hot_reset_info vfio_pci_hot_reset_info__host
#include <linux/vfio.h>
#if defined(__has_include)
#if __has_include(<linux/iommufd.h>)
#include <linux/iommufd.h>
#endif
#endif
#undef vfio_device_bind_iommufd
#undef vfio_device_attach_iommufd_pt
#undef vfio_device_detach_iommufd_pt
#undef iommu_hwpt_alloc
#undef iommu_hw_info
#undef vfio_device_info
#undef vfio_iommu_type1_info
#undef vfio_pci_dependent_device
#undef vfio_pci_hot_reset_info
#include "compat.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << 26)
#endif

/* ioctl returning its result, or -errno on failure (errno is not visible to Python). */
static long vs_ioctl(int fd, unsigned long request, void *arg)
{
	long ret = ioctl(fd, request, arg);
	return ret < 0 ? -(long)errno : ret;
}

/* ioctl whose argument is passed by value (CHECK_EXTENSION, SET_IOMMU). */
static long vs_ioctl_val(int fd, unsigned long request, unsigned long arg)
{
	long ret = ioctl(fd, request, arg);
	return ret < 0 ? -(long)errno : ret;
}

/*
 * DMA mapping in loops, for `repeat:` and for the single-call path alike: `n` maps of
 * [vaddr, vaddr + size) at iova, iova + stride, iova + 2 * stride …, each one ioctl,
 * exactly as n calls would do them.  ioas_id < 0: VFIO_IOMMU_MAP_DMA on a type1
 * container (legacy or iommufd compat); else IOMMU_IOAS_MAP at a fixed IOVA on that
 * IOAS of an iommufd.  Stops at the first failure: returns how many succeeded and sets
 * *err to the failing one's errno (0 when all n succeeded).
 */
static long vs_map_dma_n(int fd, int64_t ioas_id, uint64_t vaddr, uint64_t size, uint64_t iova,
			 int64_t stride, long n, int read, int write, int *err)
{
	long i;

	*err = 0;
	if (ioas_id < 0) {
		struct vfio_iommu_type1_dma_map map = {
			.argsz = sizeof(map), .vaddr = vaddr, .size = size,
			.flags = (read ? VFIO_DMA_MAP_FLAG_READ : 0) | (write ? VFIO_DMA_MAP_FLAG_WRITE : 0),
		};

		for (i = 0; i < n; i++, iova += (uint64_t)stride) {
			map.iova = iova;
			if (ioctl(fd, VFIO_IOMMU_MAP_DMA, &map) < 0) {
				*err = errno;
				return i;
			}
		}
	} else {
		struct iommu_ioas_map map = {
			.size = sizeof(map), .ioas_id = (uint32_t)ioas_id, .user_va = vaddr,
			.length = size,
			.flags = IOMMU_IOAS_MAP_FIXED_IOVA | (read ? IOMMU_IOAS_MAP_READABLE : 0) |
				 (write ? IOMMU_IOAS_MAP_WRITEABLE : 0),
		};

		for (i = 0; i < n; i++, iova += (uint64_t)stride) {
			map.iova = iova;
			if (ioctl(fd, IOMMU_IOAS_MAP, &map) < 0) {
				*err = errno;
				return i;
			}
		}
	}
	return n;
}

/*
 * IOMMU_IOAS_MAP without IOMMU_IOAS_MAP_FIXED_IOVA: the kernel picks the IOVA.  Returns
 * 0 and sets *iova to it, or -1 with *err the errno.  One call, as the single-map path
 * of vs_map_dma_n is for a fixed IOVA (a loop maps thousands of times).
 */
static long vs_ioas_map_auto(int fd, uint32_t ioas_id, uint64_t vaddr, uint64_t size,
			     int read, int write, uint64_t *iova, int *err)
{
	struct iommu_ioas_map map = {
		.size = sizeof(map), .ioas_id = ioas_id, .user_va = vaddr, .length = size,
		.flags = (read ? IOMMU_IOAS_MAP_READABLE : 0) |
			 (write ? IOMMU_IOAS_MAP_WRITEABLE : 0),
	};

	*err = 0;
	if (ioctl(fd, IOMMU_IOAS_MAP, &map) < 0) {
		*err = errno;
		return -1;
	}
	*iova = map.iova;
	return 0;
}

/*
 * `n` unmaps of `size` bytes at iova, iova + stride … (stride may be negative or 0):
 * VFIO_IOMMU_UNMAP_DMA with `flags` (ioas_id < 0) or IOMMU_IOAS_UNMAP.  *unmapped gets
 * the bytes the last one unmapped.  Stops at the first failure (*err = its errno) or,
 * when expect >= 0, at the first that unmaps other than `expect` bytes (*err = 0, and
 * that one is not counted): returns how many completed as asked.
 */
static long vs_unmap_dma_n(int fd, int64_t ioas_id, uint32_t flags, uint64_t iova, uint64_t size,
			   int64_t stride, long n, int64_t expect, uint64_t *unmapped, int *err)
{
	struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap), .flags = flags };
	struct iommu_ioas_unmap ioas = { .size = sizeof(ioas), .ioas_id = (uint32_t)ioas_id };
	long i;

	*err = 0;
	*unmapped = 0;
	for (i = 0; i < n; i++, iova += (uint64_t)stride) {
		if (ioas_id < 0) {
			unmap.iova = iova;
			unmap.size = size;
			if (ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0) {
				*err = errno;
				return i;
			}
			*unmapped = unmap.size;
		} else {
			ioas.iova = iova;
			ioas.length = size;
			if (ioctl(fd, IOMMU_IOAS_UNMAP, &ioas) < 0) {
				*err = errno;
				return i;
			}
			*unmapped = ioas.length;
		}
		if (expect >= 0 && *unmapped != (uint64_t)expect)
			return i;
	}
	return n;
}

/* mmap returning NULL and setting *err instead of MAP_FAILED/errno. */
static void *vs_mmap(size_t length, int prot, int flags, int fd, int64_t offset, int *err)
{
	void *p = mmap(NULL, length, prot, flags, fd, (off_t)offset);
	if (p == MAP_FAILED) {
		*err = errno;
		return NULL;
	}
	*err = 0;
	return p;
}

static int vs_munmap(void *addr, size_t length)
{
	return munmap(addr, length) < 0 ? -errno : 0;
}

/* Exact-width volatile accesses: one load or store of `width` bytes, never split. */
static uint64_t vs_mmio_read(const void *addr, int width)
{
	switch (width) {
	case 1: return *(const volatile uint8_t *)addr;
	case 2: return *(const volatile uint16_t *)addr;
	case 4: return *(const volatile uint32_t *)addr;
	default: return *(const volatile uint64_t *)addr;
	}
}

static void vs_mmio_write(void *addr, int width, uint64_t value)
{
	switch (width) {
	case 1: *(volatile uint8_t *)addr = (uint8_t)value; break;
	case 2: *(volatile uint16_t *)addr = (uint16_t)value; break;
	case 4: *(volatile uint32_t *)addr = (uint32_t)value; break;
	default: *(volatile uint64_t *)addr = value; break;
	}
}

/*
 * Fault probe: the access runs under a temporary SIGBUS/SIGSEGV handler that jumps
 * back here, so a revoked or disabled mapping answers with the signal number instead
 * of killing the interpreter.  The previous handlers (Python's faulthandler, pytest's)
 * are restored before returning.  One probe at a time: handlers are process-wide.
 */
static pthread_mutex_t vs_probe_lock = PTHREAD_MUTEX_INITIALIZER;
static sigjmp_buf vs_probe_jmp;
static volatile sig_atomic_t vs_probe_armed;

static void vs_probe_handler(int sig)
{
	if (vs_probe_armed)
		siglongjmp(vs_probe_jmp, sig);
	signal(sig, SIG_DFL);
	raise(sig);
}

static int vs_probe(void *addr, int width, int write, uint64_t *value)
{
	struct sigaction sa, old_bus, old_segv;
	int sig;

	pthread_mutex_lock(&vs_probe_lock);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = vs_probe_handler;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_bus);
	sigaction(SIGSEGV, &sa, &old_segv);
	sig = sigsetjmp(vs_probe_jmp, 1);
	if (sig == 0) {
		vs_probe_armed = 1;
		if (write)
			vs_mmio_write(addr, width, *value);
		else
			*value = vs_mmio_read(addr, width);
	}
	vs_probe_armed = 0;
	sigaction(SIGBUS, &old_bus, NULL);
	sigaction(SIGSEGV, &old_segv, NULL);
	pthread_mutex_unlock(&vs_probe_lock);
	return sig;
}

static int vs_probe_read(const void *addr, int width, uint64_t *value)
{
	return vs_probe((void *)addr, width, 0, value);
}

static int vs_probe_write(void *addr, int width, uint64_t value)
{
	return vs_probe(addr, width, 1, &value);
}

/*
 * One 64-byte store (MOVDIR64B), the only way to submit to a DSA work-queue portal.
 * Returns -EOPNOTSUPP where the CPU lacks the instruction (CPUID.7.0:ECX bit 28).
 */
static int vs_movdir64b(void *dst, const void *src)
{
#if defined(__x86_64__)
	unsigned int eax = 7, ebx, ecx = 0, edx;

	__asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
	if (!(ecx & (1u << 28)))
		return -EOPNOTSUPP;
	__sync_synchronize();	/* the descriptor's bytes reach memory before the store */
	/* movdir64b (%rdx), %rax, spelled out for assemblers that predate it */
	__asm__ volatile(".byte 0x66, 0x0f, 0x38, 0xf8, 0x02" : : "a"(dst), "d"(src) : "memory");
	return 0;
#else
	(void)dst;
	(void)src;
	return -EOPNOTSUPP;
#endif
}

/*
 * Buffer patterns.  Byte i of a pattern depends only on (kind, seed, byte, i), so a
 * check of any sub-range can regenerate the expected bytes from the same index.
 */
enum { VS_PAT_ZERO = 0, VS_PAT_ONES = 1, VS_PAT_INCREMENTING = 2, VS_PAT_RANDOM = 3,
       VS_PAT_BYTE = 4 };

static uint64_t vs_splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint8_t vs_pattern_byte(int kind, uint64_t seed, uint8_t byte, uint64_t i)
{
	switch (kind) {
	case VS_PAT_ZERO: return 0;
	case VS_PAT_ONES: return 0xff;
	case VS_PAT_INCREMENTING: return (uint8_t)(i + seed);
	case VS_PAT_RANDOM: return (uint8_t)(vs_splitmix64(seed ^ (i >> 3) * 0x100000001b3ULL) >> ((i & 7) * 8));
	default: return byte;
	}
}

/* Fill n bytes at p with the pattern, starting at pattern index `first`. */
static void vs_fill(uint8_t *p, uint64_t n, int kind, uint64_t seed, uint8_t byte, uint64_t first)
{
	uint64_t i;

	if (kind == VS_PAT_ZERO || kind == VS_PAT_ONES || kind == VS_PAT_BYTE) {
		memset(p, vs_pattern_byte(kind, seed, byte, 0), n);
		return;
	}
	if (kind == VS_PAT_RANDOM) {
		/* One splitmix64 per 8 pattern bytes. */
		for (i = 0; i < n;) {
			uint64_t idx = first + i;
			uint64_t v = vs_splitmix64(seed ^ (idx >> 3) * 0x100000001b3ULL);
			unsigned int b;

			for (b = idx & 7; b < 8 && i < n; b++, i++)
				p[i] = (uint8_t)(v >> (b * 8));
		}
		return;
	}
	for (i = 0; i < n; i++)
		p[i] = vs_pattern_byte(kind, seed, byte, first + i);
}

/* Index of the first byte that differs from the pattern, or -1. */
static int64_t vs_check(const uint8_t *p, uint64_t n, int kind, uint64_t seed, uint8_t byte,
			uint64_t first)
{
	uint8_t chunk[4096];
	uint64_t i, len, j;

	/* Regenerate 4 KiB of expected bytes at a time and compare with memcmp. */
	for (i = 0; i < n; i += len) {
		len = n - i < sizeof(chunk) ? n - i : sizeof(chunk);
		vs_fill(chunk, len, kind, seed, byte, first + i);
		if (memcmp(chunk, p + i, len) != 0)
			for (j = 0; j < len; j++)
				if (chunk[j] != p[i + j])
					return (int64_t)(i + j);
	}
	return -1;
}

/* Index of the first differing byte of a and b, or -1. */
static int64_t vs_compare(const uint8_t *a, const uint8_t *b, uint64_t n)
{
	uint64_t i;

	if (memcmp(a, b, n) == 0)
		return -1;
	for (i = 0; i < n; i++)
		if (a[i] != b[i])
			return (int64_t)i;
	return -1;
}

/*
 * The mock IOMMU's access read/write (IOMMU_TEST_OP_ACCESS_RW through access `access_fd`)
 * at every start IOVA in [iova, iova + starts) and every length in [len_first, len_last];
 * for each, the directions of `dirs` in order (VS_RW_READ, then VS_RW_WRITE), with `flags`
 * (MOCK_ACCESS_RW_SLOW_PATH) added to each call's own.  `mem` is the process memory the
 * IOAS maps at `iova`, with `before` bytes of it readable below and `after` from it on.
 * A read must bring mem's bytes into `scratch` (len_last + 1 bytes): scratch starts as
 * their inverse, and its byte past the length must stay.  A write sends the inverse of
 * what mem holds, which mem must then hold, and the bytes of mem around it must stay.
 * So a call that moves nothing, or moves other bytes, fails.  Returns the calls done, or
 * -1 after filling `fail` for the first that failed (its errno, or what differed).
 */
enum { VS_RW_READ = 1, VS_RW_WRITE = 2 };
enum { VS_RW_ERRNO = 1, VS_RW_READ_DIFFERS, VS_RW_READ_PAST, VS_RW_WRITE_DIFFERS,
       VS_RW_WRITE_BEFORE, VS_RW_WRITE_AFTER };

struct vs_rw_fail_ {
	int64_t what, err, write, iova, length, at;
};

static long vs_access_rw_sweep_(int fd, uint32_t access_fd, uint64_t iova, uint8_t *mem,
				uint64_t before, uint64_t after, uint64_t starts,
				uint64_t len_first, uint64_t len_last, uint32_t flags, int dirs,
				uint8_t *scratch, struct vs_rw_fail_ *fail)
{
	struct iommu_test_cmd cmd = { .size = sizeof(cmd), .op = IOMMU_TEST_OP_ACCESS_RW,
				      .id = access_fd };
	long calls = 0;
	uint64_t s, len, i;
	int d;

	memset(fail, 0, sizeof(*fail));
	if (len_first == 0 || len_first > len_last || starts == 0 ||
	    starts - 1 + len_last > after)
		return 0;  /* the caller checks the range first */
	cmd.access_rw.uptr = (uintptr_t)scratch;
	for (s = 0; s < starts; s++) {
		uint8_t *at = mem + s;

		for (len = len_first; len <= len_last; len++) {
			for (d = VS_RW_READ; d <= VS_RW_WRITE; d <<= 1) {
				uint8_t guard, below = 0, above = 0;
				int has_below = before + s > 0, has_above = s + len < after;

				if (!(dirs & d))
					continue;
				fail->iova = iova + s;
				fail->length = len;
				fail->write = d == VS_RW_WRITE;
				for (i = 0; i < len; i++)
					scratch[i] = (uint8_t)~at[i];
				if (has_below)
					below = at[-1];
				if (has_above)
					above = at[len];
				/* what one byte too many would bring differs from it */
				guard = has_above ? (uint8_t)~above : 0x5a;
				scratch[len] = guard;
				cmd.access_rw.iova = iova + s;
				cmd.access_rw.length = len;
				cmd.access_rw.flags = flags | (d == VS_RW_WRITE ? MOCK_ACCESS_RW_WRITE : 0);
				if (ioctl(fd, IOMMU_TEST_CMD, &cmd) < 0) {
					fail->what = VS_RW_ERRNO;
					fail->err = errno;
					return -1;
				}
				calls++;
				fail->at = vs_compare(at, scratch, len);
				if (fail->at >= 0) {
					fail->what = d == VS_RW_READ ? VS_RW_READ_DIFFERS :
						     VS_RW_WRITE_DIFFERS;
					return -1;
				}
				if (d == VS_RW_READ && scratch[len] != guard) {
					fail->what = VS_RW_READ_PAST;
					return -1;
				}
				if (d == VS_RW_WRITE && has_below && at[-1] != below) {
					fail->what = VS_RW_WRITE_BEFORE;
					return -1;
				}
				if (d == VS_RW_WRITE && has_above && at[len] != above) {
					fail->what = VS_RW_WRITE_AFTER;
					return -1;
				}
			}
		}
	}
	return calls;
}

/* what vs_access_rw_sweep reports of its first failure, by index into `report` (not a
 * struct: the layout test checks every struct the layer declares against the kernel's) */
enum { VS_RW_WHAT, VS_RW_ERR, VS_RW_WRITING, VS_RW_IOVA, VS_RW_LENGTH, VS_RW_AT, VS_RW_NFAIL };

static long vs_access_rw_sweep(int fd, uint32_t access_fd, uint64_t iova, uint8_t *mem,
			       uint64_t before, uint64_t after, uint64_t starts,
			       uint64_t len_first, uint64_t len_last, uint32_t flags, int dirs,
			       uint8_t *scratch, int64_t *report)
{
	struct vs_rw_fail_ f;
	long ret = vs_access_rw_sweep_(fd, access_fd, iova, mem, before, after, starts,
				       len_first, len_last, flags, dirs, scratch, &f);

	report[VS_RW_WHAT] = f.what;
	report[VS_RW_ERR] = f.err;
	report[VS_RW_WRITING] = f.write;
	report[VS_RW_IOVA] = f.iova;
	report[VS_RW_LENGTH] = f.length;
	report[VS_RW_AT] = f.at;
	return ret;
}
