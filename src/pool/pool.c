/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The pool: libpmem2 mapping of a dax device or a file, and the fake media used by crash tests.
 *
 * Real pools ask libpmem2 for the coarsest acceptable granularity (page), so every source maps,
 * and then take the persistence functions libpmem2 picked for what the source really offers.
 * Those function pointers are stored once; persist/flush/drain/memcpy below only count barriers
 * and call through them.
 *
 * File data (pmfuse_pool_write_data) takes the data path chosen at open (pool.h). Measured on the
 * development VM (1 GiB into fresh pages of a /dev/shm file, 1 MiB pieces): memcpy through the
 * mapping 5.0 s, nearly all of it page faults (a shadow page-table update per 4 KiB under nested
 * virtualisation; MADV_POPULATE_WRITE first does not help: 2.9 s); pwrite 0.16 s, pwrite + msync
 * 0.20 s; pwrite + cache-line flush through the mapping 2.7 s (the flush faults the pages in, read
 * faults, about half the cost of write faults). So FD wins in both granularities, and the
 * cache-line emulation (PMEM2_FORCE_GRANULARITY=CACHE_LINE on a page-cache file) still pays one
 * fault per page for its flush: that is the price of flushing lines the kernel dirtied, which
 * only the mapping can reach. Overwrites of pages already mapped cost the same either way.
 *
 * Fake pools keep two images (see pool.h): "base" is what the CPU sees, "media" what survived.
 * A flush records cache lines in a pending set (a bitmap to dedupe, an array to replay); a drain
 * calls the test's hook and then copies the pending lines to the media image. The invariant the
 * crash tests rely on: at the hook of drain N, media holds exactly what the code has made durable
 * through drain N-1, and every difference between base and media is a store whose fate a power
 * cut would decide.
 */
#include "pool/pool.h"

#include <assert.h>
#include <fcntl.h>
#include <libpmem2.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

#define FAKE_LINE 64u

#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif

/* The source of zeros for pmfuse_pool_write_data(buf = NULL) on the FD paths. */
#define ZERO_CHUNK (64u << 10)
static const uint8_t zero_chunk[ZERO_CHUNK];

struct pmfuse_pool {
	enum pmfuse_source_kind kind;
	enum pmfuse_granularity gran;
	char *path;
	int fd;
	bool readonly;
	void *base;
	size_t size;
	atomic_uint_fast64_t barriers;
	enum pmfuse_data_path data_path;
	int read_fd;                  /* pmfuse_pool_read_fd */
	int pagemap_fd;               /* /proc/PID/pagemap, or -1 (data_view) */
	atomic_uint pagemap_gen;      /* the fork generation it was opened in; 0: not yet */
	pthread_mutex_t pagemap_lock;
	_Atomic uint64_t *mapped;     /* a bit per MAPPED_GRANULE known mapped (pages_mapped) */
	size_t page_size;             /* of the mapping (2 MiB on a dax device) */
	bool file_dax;                /* a pool file with STATX_ATTR_DAX (on fsdax) */
	bool memory_file;             /* page granularity on tmpfs/ramfs/hugetlbfs: no msync */

	/* libpmem2 (real pools) */
	struct pmem2_source *src;
	struct pmem2_map *map;
	pmem2_persist_fn persist_fn;
	pmem2_flush_fn flush_fn;
	pmem2_drain_fn drain_fn;
	pmem2_memcpy_fn memcpy_fn;
	pmem2_memset_fn memset_fn;

	/* fake media */
	uint8_t *media;
	uint64_t *pending_bits;       /* one bit per cache line */
	uint64_t *pending;            /* line numbers to copy at the next drain */
	size_t npending, pending_cap;
	pthread_mutex_t fake_lock;    /* the fake model is shared by all threads of the pool */
	struct pmfuse_pool_fake_hook hook;
	uint8_t *poison_save;         /* bytes of the poisoned range (pmfuse_pool_fake_poison) */
	uint64_t poison_off;
	size_t poison_len;

	/* pmfuse_pool_memo_*: one entry per block, NULL until enabled */
	uint32_t *memo;
	uint32_t memo_bs;
	uint64_t memo_blocks;
};

const char *pmfuse_granularity_name(enum pmfuse_granularity g)
{
	switch (g) {
	case PMFUSE_GRAN_BYTE: return "byte";
	case PMFUSE_GRAN_CACHE_LINE: return "cache line";
	case PMFUSE_GRAN_PAGE: return "page";
	}
	return "unknown";
}

/*
 * libpmem2 errors are -errno for system errors or PMEM2_E_* (<= -100000) for its own; this is the
 * one place they become errno (libpmem2 1.12 does not export pmem2_err_to_errno).
 */
static int pmem2_errno(int rc, const char *what, const char *path)
{
	int err;

	switch (rc) {
	case PMEM2_E_NOSUPP:
	case PMEM2_E_SOURCE_TYPE_NOT_SUPPORTED:
	case PMEM2_E_GRANULARITY_NOT_SUPPORTED:
		err = -EOPNOTSUPP;
		break;
	case PMEM2_E_NO_ACCESS:
		err = -EACCES;
		break;
	case PMEM2_E_IO_FAIL:
		err = -EIO;
		break;
	default:
		err = rc > PMEM2_E_UNKNOWN && rc < 0 ? rc : -EINVAL;
		break;
	}
	pmfuse_log(PMFUSE_LOG_ERR, "%s: %s: %s", path, what, pmem2_errormsg());
	return err;
}

const char *pmfuse_data_path_name(enum pmfuse_data_path p)
{
	switch (p) {
	case PMFUSE_DATA_MAP: return "stores through the mapping";
	case PMFUSE_DATA_FD: return "pwrite on the pool file";
	case PMFUSE_DATA_FD_DAX: return "pwrite on the fsdax file (kernel flushes)";
	}
	return "unknown";
}

/*
 * A pool file on a filesystem whose page cache is its only medium (tmpfs, ramfs, hugetlbfs)
 * has nothing to write back: msync there persists nothing that the stores themselves did not,
 * yet it is a system call per barrier (a quarter of the daemon's time in 4 KiB writes at page
 * granularity, measured on /dev/shm). Such a pool keeps the same barriers with no flush; what
 * survives a killed daemon is every store it made, in program order (the persist points stay
 * compiler barriers: calls through pointers), and nothing survives the machine either way.
 * Cache-line granularity (forced, as the bench does to emulate pmem) keeps its flushes.
 */
#define RAMFS_MAGIC_ 0x858458f6
#define TMPFS_MAGIC_ 0x01021994
#define HUGETLBFS_MAGIC_ 0x958458f6

static bool on_memory_fs(int fd)
{
	struct statfs sf;
	const char *force = getenv("PMFUSE_MSYNC");

	if (force && !strcmp(force, "always"))
		return false;
	return !fstatfs(fd, &sf) && (sf.f_type == TMPFS_MAGIC_ || sf.f_type == RAMFS_MAGIC_ ||
				     sf.f_type == HUGETLBFS_MAGIC_);
}

static void memfile_flush(const void *ptr, size_t size)
{
	(void)ptr;
	(void)size;
	atomic_signal_fence(memory_order_seq_cst);
}

static void *memfile_memcpy(void *dst, const void *src, size_t len, unsigned flags)
{
	(void)flags;
	memcpy(dst, src, len);
	atomic_signal_fence(memory_order_seq_cst);
	return dst;
}

static void *memfile_memset(void *dst, int c, size_t len, unsigned flags)
{
	(void)flags;
	memset(dst, c, len);
	atomic_signal_fence(memory_order_seq_cst);
	return dst;
}

/* The data path of a real pool (pool.h), once the granularity is known. */
static enum pmfuse_data_path choose_data_path(const struct pmfuse_pool *pool)
{
	const char *force = getenv("PMFUSE_DATA_PATH");
	bool dax;

	if (pool->kind != PMFUSE_SOURCE_FILE || pool->readonly)
		return PMFUSE_DATA_MAP;
	if (force && !strcmp(force, "map"))
		return PMFUSE_DATA_MAP;
	dax = pool->file_dax;
	if (dax && pool->gran != PMFUSE_GRAN_PAGE && !(force && !strcmp(force, "fd")))
		return PMFUSE_DATA_FD_DAX;
	return PMFUSE_DATA_FD;
}

bool pmfuse_pool_lock_holder(const char *path, char *buf, size_t len)
{
	struct stat st;
	char line[256];
	bool found = false;
	FILE *f;

	snprintf(buf, len, "another process");
	if (stat(path, &st) || !(f = fopen("/proc/locks", "r")))
		return false;
	while (fgets(line, sizeof(line), f)) {
		char kind[16];
		unsigned maj, min;
		unsigned long long ino;
		long pid;

		if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &pid, &maj, &min,
			   &ino) != 5 || strcmp(kind, "FLOCK") || ino != (unsigned long long)st.st_ino ||
		    maj != major(st.st_dev) || min != minor(st.st_dev) || pid <= 0)
			continue;
		char comm_path[64], comm[64] = "?";
		snprintf(comm_path, sizeof(comm_path), "/proc/%ld/comm", pid);
		FILE *c = fopen(comm_path, "r");
		if (c) {
			if (fgets(comm, sizeof(comm), c))
				comm[strcspn(comm, "\n")] = '\0';
			fclose(c);
		}
		snprintf(buf, len, "process %ld (%s)", pid, comm);
		found = true;
		break;
	}
	fclose(f);
	return found;
}

int pmfuse_pool_flock(int fd, const char *path, int how)
{
	const long step_ms = 10, waited_note_ms = 200;
	struct timespec step = { .tv_nsec = step_ms * 1000000L };
	bool told = false;
	char who[128];

	for (long waited = 0;; waited += step_ms) {
		if (!flock(fd, how | LOCK_NB))
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK)
			return -errno;
		if (waited >= PMFUSE_POOL_LOCK_WAIT_MS)
			return -EBUSY;
		if (waited >= waited_note_ms && !told) {
			pmfuse_pool_lock_holder(path, who, sizeof(who));
			pmfuse_log(PMFUSE_LOG_INFO, "%s: waiting for %s to let go of the pool", path,
				   who);
			told = true;
		}
		nanosleep(&step, NULL);
	}
}

static struct pmfuse_pool *pool_alloc(const char *path)
{
	struct pmfuse_pool *pool = calloc(1, sizeof(*pool));
	if (!pool)
		return NULL;
	pool->fd = -1;
	pool->read_fd = -1;
	pool->pagemap_fd = -1;
	pthread_mutex_init(&pool->pagemap_lock, NULL);
	pool->path = strdup(path ? path : "(fake)");
	if (!pool->path) {
		free(pool);
		return NULL;
	}
	pthread_mutex_init(&pool->fake_lock, NULL);
	atomic_init(&pool->barriers, 0);
	return pool;
}

int pmfuse_pool_open(const char *path, unsigned flags, struct pmfuse_pool **out)
{
	struct pmem2_config *cfg = NULL;
	struct pmfuse_pool *pool;
	struct stat st;
	size_t size, align;
	int rc;

	*out = NULL;
	pool = pool_alloc(path);
	if (!pool)
		return -ENOMEM;
	pool->readonly = flags & PMFUSE_POOL_RDONLY;

	pool->fd = open(path, (pool->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (pool->fd < 0) {
		rc = -errno;
		pmfuse_log(PMFUSE_LOG_ERR, "%s: cannot open: %s", path, strerror(errno));
		goto fail;
	}
	if (fstat(pool->fd, &st)) {
		rc = -errno;
		goto fail;
	}
	if (S_ISREG(st.st_mode)) {
		pool->kind = PMFUSE_SOURCE_FILE;
	} else if (S_ISCHR(st.st_mode)) {
		pool->kind = PMFUSE_SOURCE_DEVDAX;
	} else {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: neither a regular file nor a dax character device",
			   path);
		rc = -EINVAL;
		goto fail;
	}

	if (!(flags & (PMFUSE_POOL_RDONLY | PMFUSE_POOL_NOLOCK)) &&
	    (rc = pmfuse_pool_flock(pool->fd, path, LOCK_EX))) {
		char who[128];
		pmfuse_pool_lock_holder(path, who, sizeof(who));
		pmfuse_log(PMFUSE_LOG_ERR, "%s: pool is in use by %s", path, who);
		goto fail;
	}

	rc = pmem2_source_from_fd(&pool->src, pool->fd);
	if (rc) {
		rc = pmem2_errno(rc, "not a usable pool source", path);
		goto fail;
	}
	rc = pmem2_source_size(pool->src, &size);
	if (rc) {
		rc = pmem2_errno(rc, "cannot get size", path);
		goto fail;
	}
	rc = pmem2_source_alignment(pool->src, &align);
	if (rc) {
		rc = pmem2_errno(rc, "cannot get alignment", path);
		goto fail;
	}
	size -= size % align;
	if (size == 0) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: empty (size below one %zu-byte mapping unit)", path,
			   align);
		rc = -EINVAL;
		goto fail;
	}

	if ((rc = pmem2_config_new(&cfg)) ||
	    (rc = pmem2_config_set_required_store_granularity(cfg, PMEM2_GRANULARITY_PAGE)) ||
	    (rc = pmem2_config_set_length(cfg, size)) ||
	    (pool->readonly && (rc = pmem2_config_set_protection(cfg, PMEM2_PROT_READ)))) {
		rc = pmem2_errno(rc, "cannot configure mapping", path);
		goto fail;
	}
	rc = pmem2_map_new(&pool->map, cfg, pool->src);
	if (rc) {
		rc = pmem2_errno(rc, "cannot map", path);
		goto fail;
	}
	pmem2_config_delete(&cfg);

	pool->base = pmem2_map_get_address(pool->map);
	pool->size = pmem2_map_get_size(pool->map);
	switch (pmem2_map_get_store_granularity(pool->map)) {
	case PMEM2_GRANULARITY_BYTE: pool->gran = PMFUSE_GRAN_BYTE; break;
	case PMEM2_GRANULARITY_CACHE_LINE: pool->gran = PMFUSE_GRAN_CACHE_LINE; break;
	default: pool->gran = PMFUSE_GRAN_PAGE; break;
	}
	pool->persist_fn = pmem2_get_persist_fn(pool->map);
	pool->flush_fn = pmem2_get_flush_fn(pool->map);
	pool->drain_fn = pmem2_get_drain_fn(pool->map);
	pool->memcpy_fn = pmem2_get_memcpy_fn(pool->map);
	pool->memset_fn = pmem2_get_memset_fn(pool->map);
	if (pool->kind == PMFUSE_SOURCE_FILE && pool->gran == PMFUSE_GRAN_PAGE &&
	    !pool->readonly && on_memory_fs(pool->fd)) {
		pool->memory_file = true;
		pool->persist_fn = memfile_flush;
		pool->flush_fn = memfile_flush;
		pool->memcpy_fn = memfile_memcpy;
		pool->memset_fn = memfile_memset;
	}
	if (pool->kind == PMFUSE_SOURCE_FILE) {
		struct statx stx;

		pool->file_dax = !statx(pool->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) &&
				 (stx.stx_attributes_mask & STATX_ATTR_DAX) &&
				 (stx.stx_attributes & STATX_ATTR_DAX);
	}
	pool->data_path = choose_data_path(pool);
	if (pool->kind == PMFUSE_SOURCE_FILE) {
		const char *rp = getenv("PMFUSE_READ_PATH");

		pool->read_fd = rp && !strcmp(rp, "fd") ? pool->fd : -1;
	}
	pool->page_size = pool->kind == PMFUSE_SOURCE_DEVDAX ? align : (size_t)sysconf(_SC_PAGESIZE);
	pmfuse_log(PMFUSE_LOG_INFO, "%s: %s, %zu MiB, %s granularity%s, %zu KiB pages, file data by "
		   "%s, read through %s", path,
		   pool->kind == PMFUSE_SOURCE_DEVDAX ? "dax device" : "file", pool->size >> 20,
		   pmfuse_granularity_name(pool->gran),
		   pool->memory_file ? " (a memory file system: no msync, nothing to write back)" : "",
		   pool->page_size >> 10, pmfuse_data_path_name(pool->data_path),
		   pool->read_fd >= 0 ? "the file" : "the mapping");
	*out = pool;
	return 0;

fail:
	if (cfg)
		pmem2_config_delete(&cfg);
	pmfuse_pool_close(pool);
	return rc;
}

int pmfuse_pool_create_file(const char *path, uint64_t size)
{
	struct stat st;
	bool created = false;
	int fd, rc = 0;

	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		created = fd >= 0;
	}
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		rc = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = -EINVAL; /* never resize a device */
		goto out;
	}
	if ((uint64_t)st.st_size >= size)
		goto out;
	/* Reserve the space now: a mapping whose file cannot grow faults with SIGBUS later. */
	rc = posix_fallocate(fd, 0, (off_t)size);
	if (rc == EOPNOTSUPP || rc == EINVAL)
		rc = ftruncate(fd, (off_t)size) ? errno : 0;
	rc = -rc;
out:
	close(fd);
	if (rc && created)
		unlink(path);
	return rc;
}

void pmfuse_pool_close(struct pmfuse_pool *pool)
{
	if (!pool)
		return;
	if (pool->map)
		pmem2_map_delete(&pool->map);
	if (pool->src)
		pmem2_source_delete(&pool->src);
	if (pool->fd >= 0)
		close(pool->fd); /* releases the flock */
	if (pool->pagemap_fd >= 0)
		close(pool->pagemap_fd);
	free((void *)pool->mapped);
	pthread_mutex_destroy(&pool->pagemap_lock);
	if (pool->kind == PMFUSE_SOURCE_FAKE) {
		free(pool->poison_save);
		munmap(pool->base, pool->size);
		munmap(pool->media, pool->size);
		free(pool->pending_bits);
		free(pool->pending);
	}
	pthread_mutex_destroy(&pool->fake_lock);
	free(pool->memo);
	free(pool->path);
	free(pool);
}

void *pmfuse_pool_base(const struct pmfuse_pool *pool) { return pool->base; }
size_t pmfuse_pool_size(const struct pmfuse_pool *pool) { return pool->size; }
enum pmfuse_granularity pmfuse_pool_granularity(const struct pmfuse_pool *pool)
{
	return pool->gran;
}

bool pmfuse_pool_memory_file(const struct pmfuse_pool *pool)
{
	return pool->memory_file;
}
enum pmfuse_source_kind pmfuse_pool_source_kind(const struct pmfuse_pool *pool)
{
	return pool->kind;
}
bool pmfuse_pool_readonly(const struct pmfuse_pool *pool) { return pool->readonly; }
const char *pmfuse_pool_path(const struct pmfuse_pool *pool) { return pool->path; }
enum pmfuse_data_path pmfuse_pool_data_path(const struct pmfuse_pool *pool)
{
	return pool->data_path;
}

uint64_t pmfuse_pool_offset(const struct pmfuse_pool *pool, const void *addr)
{
	const char *p = addr, *b = pool->base;
	assert(p >= b && p <= b + pool->size);
	return (uint64_t)(p - b);
}

int pmfuse_pool_read_fd(const struct pmfuse_pool *pool) { return pool->read_fd; }

uint64_t pmfuse_pool_barriers(const struct pmfuse_pool *pool)
{
	return atomic_load(&pool->barriers);
}

/* ---- fake media -------------------------------------------------------------------------- */

static void fake_flush(struct pmfuse_pool *pool, const void *addr, size_t len)
{
	if (!len)
		return;
	uint64_t off = pmfuse_pool_offset(pool, addr);
	uint64_t first = off / FAKE_LINE, last = (off + len - 1) / FAKE_LINE;

	pthread_mutex_lock(&pool->fake_lock);
	for (uint64_t l = first; l <= last; l++) {
		uint64_t bit = 1ull << (l % 64);
		if (pool->pending_bits[l / 64] & bit)
			continue;
		if (pool->npending == pool->pending_cap) {
			size_t cap = pool->pending_cap ? pool->pending_cap * 2 : 1024;
			uint64_t *p = realloc(pool->pending, cap * sizeof(*p));
			if (!p)
				abort(); /* test-only model: out of memory is not a case to handle */
			pool->pending = p;
			pool->pending_cap = cap;
		}
		pool->pending_bits[l / 64] |= bit;
		pool->pending[pool->npending++] = l;
	}
	pthread_mutex_unlock(&pool->fake_lock);
}

static void fake_drain(struct pmfuse_pool *pool)
{
	uint64_t n = atomic_fetch_add(&pool->barriers, 1) + 1;

	if (pool->hook.barrier)
		pool->hook.barrier(pool->hook.arg, pool, n);
	pthread_mutex_lock(&pool->fake_lock);
	for (size_t i = 0; i < pool->npending; i++) {
		uint64_t l = pool->pending[i];
		memcpy(pool->media + l * FAKE_LINE, (uint8_t *)pool->base + l * FAKE_LINE,
		       FAKE_LINE);
		pool->pending_bits[l / 64] &= ~(1ull << (l % 64));
	}
	pool->npending = 0;
	pthread_mutex_unlock(&pool->fake_lock);
}

int pmfuse_pool_fake_new(size_t size, const void *image, struct pmfuse_pool **out)
{
	struct pmfuse_pool *pool;

	*out = NULL;
	if (size == 0 || size % 4096)
		return -EINVAL;
	pool = pool_alloc(NULL);
	if (!pool)
		return -ENOMEM;
	pool->kind = PMFUSE_SOURCE_FAKE;
	pool->gran = PMFUSE_GRAN_CACHE_LINE;
	pool->size = size;
	pool->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pool->media = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pool->pending_bits = calloc(size / FAKE_LINE / 64 + 1, sizeof(uint64_t));
	if (pool->base == MAP_FAILED || pool->media == MAP_FAILED || !pool->pending_bits) {
		if (pool->base == MAP_FAILED)
			pool->base = NULL;
		if (pool->media == MAP_FAILED)
			pool->media = NULL;
		if (pool->base)
			munmap(pool->base, size);
		if (pool->media)
			munmap(pool->media, size);
		pool->kind = PMFUSE_SOURCE_FILE; /* nothing left for close to unmap */
		pmfuse_pool_close(pool);
		return -ENOMEM;
	}
	if (image) {
		memcpy(pool->base, image, size);
		memcpy(pool->media, image, size);
	}
	*out = pool;
	return 0;
}

void pmfuse_pool_fake_reset(struct pmfuse_pool *pool, const void *image)
{
	assert(pool->kind == PMFUSE_SOURCE_FAKE);
	pthread_mutex_lock(&pool->fake_lock);
	for (size_t i = 0; i < pool->npending; i++) {
		uint64_t l = pool->pending[i];
		pool->pending_bits[l / 64] &= ~(1ull << (l % 64));
	}
	pool->npending = 0;
	memcpy(pool->base, image, pool->size);
	memcpy(pool->media, image, pool->size);
	pmfuse_pool_memo_forget(pool, 0, pool->size);
	pthread_mutex_unlock(&pool->fake_lock);
}

void pmfuse_pool_fake_set_hook(struct pmfuse_pool *pool, const struct pmfuse_pool_fake_hook *hook)
{
	assert(pool->kind == PMFUSE_SOURCE_FAKE);
	if (hook)
		pool->hook = *hook;
	else
		memset(&pool->hook, 0, sizeof(pool->hook));
}

size_t pmfuse_pool_fake_crash_image(const struct pmfuse_pool *pool, void *out,
				    bool (*keep)(void *arg, size_t unit), void *arg)
{
	const uint64_t *cpu = pool->base, *media = (const uint64_t *)pool->media;
	uint64_t *img = out;
	size_t units = pool->size / 8, differ = 0;

	assert(pool->kind == PMFUSE_SOURCE_FAKE);
	memcpy(out, pool->media, pool->size);
	for (size_t i = 0; i < units; i++) {
		if (cpu[i] == media[i])
			continue;
		differ++;
		if (keep && keep(arg, i))
			img[i] = cpu[i];
	}
	return differ;
}

const void *pmfuse_pool_fake_media(const struct pmfuse_pool *pool)
{
	assert(pool->kind == PMFUSE_SOURCE_FAKE);
	return pool->media;
}

/* ---- what fsck learned of blocks (pmfuse_pool_memo_*) -------------------------------------- */

#define MEMO_CRC   0x80000000u   /* the block's crc matches its bytes */
#define MEMO_TAG   0x7fff0000u   /* 0, or the tag of the check the block passed */
#define MEMO_SHIFT 16
#define MEMO_ZERO  0x0000ffffu   /* 0, or 1 + the offset from which the block holds zeros */

int pmfuse_pool_memo_enable(struct pmfuse_pool *pool, uint32_t block_size)
{
	uint64_t n;

	if (!block_size || pool->size % block_size)
		return -EINVAL;
	n = pool->size / block_size;
	if (pool->memo && pool->memo_bs == block_size)
		return 0;
	free(pool->memo);
	pool->memo = NULL;
	/* calloc of a large array maps zero pages: only what is noted becomes resident */
	if (!(pool->memo = calloc(n, sizeof(*pool->memo))))
		return -ENOMEM;
	pool->memo_bs = block_size;
	pool->memo_blocks = n;
	return 0;
}

void pmfuse_pool_memo_forget(struct pmfuse_pool *pool, uint64_t off, uint64_t len)
{
	uint64_t first, last;

	if (!pool->memo || !len || off >= pool->size)
		return;
	if (len > pool->size - off)
		len = pool->size - off;
	first = off / pool->memo_bs;
	last = (off + len - 1) / pool->memo_bs;
	for (uint64_t b = first; b <= last; b++)
		if (pool->memo[b])          /* reads leave untouched zero pages shared */
			pool->memo[b] = 0;
}

/* The forget of a store at addr, when addr is in the mapping (callers pass only pool addresses;
 * checked anyway, a stray address forgets nothing rather than the wrong block). */
static void memo_forget_addr(struct pmfuse_pool *pool, const void *addr, size_t len)
{
	const char *p = addr, *b = pool->base;

	if (pool->memo && p >= b && p < b + pool->size)
		pmfuse_pool_memo_forget(pool, (uint64_t)(p - b), len);
}

bool pmfuse_pool_memo_crc(const struct pmfuse_pool *pool, uint64_t blk)
{
	return pool->memo && blk < pool->memo_blocks && (pool->memo[blk] & MEMO_CRC);
}

void pmfuse_pool_memo_set_crc(struct pmfuse_pool *pool, uint64_t blk)
{
	if (pool->memo && blk < pool->memo_blocks)
		pool->memo[blk] |= MEMO_CRC;
}

bool pmfuse_pool_memo_zero_from(const struct pmfuse_pool *pool, uint64_t blk, uint32_t off)
{
	unsigned z;

	if (!pool->memo || blk >= pool->memo_blocks)
		return false;
	z = pool->memo[blk] & MEMO_ZERO;
	return z && z - 1 <= off;
}

void pmfuse_pool_memo_set_zero_from(struct pmfuse_pool *pool, uint64_t blk, uint32_t off)
{
	unsigned z;

	if (!pool->memo || blk >= pool->memo_blocks || off >= MEMO_ZERO)
		return;
	z = pool->memo[blk] & MEMO_ZERO;
	if (!z || z - 1 > off)      /* keep the lowest offset known */
		pool->memo[blk] = (pool->memo[blk] & ~MEMO_ZERO) | (off + 1);
}

unsigned pmfuse_pool_memo_tag(const struct pmfuse_pool *pool, uint64_t blk)
{
	if (!pool->memo || blk >= pool->memo_blocks)
		return 0;
	return (pool->memo[blk] & MEMO_TAG) >> MEMO_SHIFT;
}

void pmfuse_pool_memo_set_tag(struct pmfuse_pool *pool, uint64_t blk, unsigned tag)
{
	if (pool->memo && blk < pool->memo_blocks && tag && tag <= MEMO_TAG >> MEMO_SHIFT)
		pool->memo[blk] = (pool->memo[blk] & ~MEMO_TAG) | (uint32_t)tag << MEMO_SHIFT;
}

/* ---- barriers ------------------------------------------------------------------------------ */

void pmfuse_pool_flush(struct pmfuse_pool *pool, const void *addr, size_t len)
{
	memo_forget_addr(pool, addr, len);
	if (pool->kind == PMFUSE_SOURCE_FAKE)
		fake_flush(pool, addr, len);
	else
		pool->flush_fn(addr, len);
}

void pmfuse_pool_drain(struct pmfuse_pool *pool)
{
	if (pool->kind == PMFUSE_SOURCE_FAKE) {
		fake_drain(pool);
		return;
	}
	atomic_fetch_add(&pool->barriers, 1);
	pool->drain_fn();
}

void pmfuse_pool_persist(struct pmfuse_pool *pool, const void *addr, size_t len)
{
	memo_forget_addr(pool, addr, len);
	if (pool->kind == PMFUSE_SOURCE_FAKE) {
		fake_flush(pool, addr, len);
		fake_drain(pool);
		return;
	}
	atomic_fetch_add(&pool->barriers, 1);
	pool->persist_fn(addr, len);
}

static unsigned pmem2_mem_flags(unsigned flags)
{
	unsigned f = 0;
	if (flags & PMFUSE_MEM_NODRAIN)
		f |= PMEM2_F_MEM_NODRAIN;
	if (flags & PMFUSE_MEM_NONTEMPORAL)
		f |= PMEM2_F_MEM_NONTEMPORAL;
	if (flags & PMFUSE_MEM_TEMPORAL)
		f |= PMEM2_F_MEM_TEMPORAL;
	if (flags & PMFUSE_MEM_NOFLUSH)
		f |= PMEM2_F_MEM_NOFLUSH;
	return f;
}

/* The fake model of a memcpy/memset that may flush and drain. */
static void fake_after_store(struct pmfuse_pool *pool, void *dst, size_t len, unsigned flags)
{
	if (flags & PMFUSE_MEM_NOFLUSH)
		return;
	fake_flush(pool, dst, len);
	if (!(flags & PMFUSE_MEM_NODRAIN))
		fake_drain(pool);
}

void *pmfuse_pool_memcpy(struct pmfuse_pool *pool, void *dst, const void *src, size_t len,
			 unsigned flags)
{
	memo_forget_addr(pool, dst, len);
	if (pool->kind == PMFUSE_SOURCE_FAKE) {
		memcpy(dst, src, len);
		fake_after_store(pool, dst, len, flags);
		return dst;
	}
	/* libpmem2 drains unless NODRAIN, and NOFLUSH implies no drain either. */
	if (!(flags & (PMFUSE_MEM_NODRAIN | PMFUSE_MEM_NOFLUSH)))
		atomic_fetch_add(&pool->barriers, 1);
	return pool->memcpy_fn(dst, src, len, pmem2_mem_flags(flags));
}

void *pmfuse_pool_memset(struct pmfuse_pool *pool, void *dst, int c, size_t len, unsigned flags)
{
	memo_forget_addr(pool, dst, len);
	if (pool->kind == PMFUSE_SOURCE_FAKE) {
		memset(dst, c, len);
		fake_after_store(pool, dst, len, flags);
		return dst;
	}
	if (!(flags & (PMFUSE_MEM_NODRAIN | PMFUSE_MEM_NOFLUSH)))
		atomic_fetch_add(&pool->barriers, 1);
	return pool->memset_fn(dst, c, len, pmem2_mem_flags(flags));
}

/*
 * pwrite(2) of len bytes from buf (NULL: zeros) at off, to the end. A pool file never shrinks
 * while open unless someone cut it under us: then a pwrite past its end would silently grow it
 * back with a hole (zeros where metadata and data were), so that is refused as the memory error
 * it is; reads of those pages fault (SIGBUS) and are failed the same way. One fstat per write.
 */
static int fd_write(struct pmfuse_pool *pool, uint64_t off, const void *buf, size_t len)
{
	struct iovec iov[64];
	struct stat st;

	if (!fstat(pool->fd, &st) && (uint64_t)st.st_size < off + len) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: the pool file was shortened to %llu bytes under "
			   "the daemon; data at %llu is gone", pool->path,
			   (unsigned long long)st.st_size, (unsigned long long)off);
		return -EIO;
	}

	while (len) {
		ssize_t n;

		if (buf) {
			n = pwrite(pool->fd, buf, len, (off_t)off);
		} else {
			int cnt = 0;
			size_t left = len;

			for (; left && cnt < (int)PMFUSE_ARRAY_SIZE(iov); cnt++) {
				iov[cnt].iov_base = (void *)zero_chunk;
				iov[cnt].iov_len = PMFUSE_MIN(left, (size_t)ZERO_CHUNK);
				left -= iov[cnt].iov_len;
			}
			n = pwritev(pool->fd, iov, cnt, (off_t)off);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		off += (uint64_t)n;
		len -= (size_t)n;
		if (buf)
			buf = (const uint8_t *)buf + n;
	}
	return 0;
}

/*
 * This process's /proc/PID/pagemap, opened on first use by the process that uses it (the daemon
 * opens the pool before it forks into the background: a descriptor opened then would describe
 * the parent's memory). -1 when it cannot be read. A fork is noticed by a generation that a
 * pthread_atfork child handler bumps, not by a getpid(2) per view (a system call each: 3-5% of
 * a dedupe scan's daemon time when views were 64 KiB).
 */
static atomic_uint fork_gen = 1;
/* Pool bytes per bit of the memo of what is mapped (pages_mapped). */
#define MAPPED_GRANULE (2ull << 20)
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_child(void)
{
	atomic_fetch_add(&fork_gen, 1);
}

static void atfork_install(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

static int pagemap_fd(struct pmfuse_pool *pool)
{
	unsigned gen;
	int fd;

	pthread_once(&atfork_once, atfork_install);
	gen = atomic_load(&fork_gen);
	if (atomic_load_explicit(&pool->pagemap_gen, memory_order_acquire) == gen)
		return pool->pagemap_fd;
	pthread_mutex_lock(&pool->pagemap_lock);
	if (atomic_load(&pool->pagemap_gen) != gen) {
		size_t words = (size_t)(pool->size / MAPPED_GRANULE / 64 + 1);

		if (pool->pagemap_fd >= 0)
			close(pool->pagemap_fd);
		pool->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		/* what the parent had mapped a fork's child has not (shared mappings are not
		 * copied): the memo starts empty in each process */
		if (!pool->mapped)
			pool->mapped = calloc(words, sizeof(*pool->mapped));
		else
			for (size_t i = 0; i < words; i++)
				atomic_store(&pool->mapped[i], 0);
		atomic_store_explicit(&pool->pagemap_gen, gen, memory_order_release);
	}
	fd = pool->pagemap_fd;
	pthread_mutex_unlock(&pool->pagemap_lock);
	return fd;
}

/* Pagemap entries read per pread(2): 4 KiB of them, the pages of 2 MiB. */
#define PAGEMAP_BATCH 512

/*
 * Whether every page of the mapping over pool bytes [off, off + len) is mapped in this process
 * now (pagemap's "present" bit); true when that cannot be told. Every page, not only the
 * first: a view through the mapping with one page missing faults it in, and the kernel's
 * fault-around then maps its neighbours, so that the next view's first page looks mapped and
 * faults the rest of it in: a fresh mount's first dedupe walked a whole 1 GiB file in through
 * page faults that way (the daemon's RSS grew by 1 GiB; 2.0 s against 0.16 s warm).
 */
static bool range_mapped(struct pmfuse_pool *pool, int fd, uint64_t off, size_t len)
{
	uintptr_t a = (uintptr_t)pool->base + off;
	uint64_t page = a / pool->page_size, end = (a + len - 1) / pool->page_size + 1;
	uint64_t ent[PAGEMAP_BATCH];

	while (page < end) {
		size_t k = (size_t)PMFUSE_MIN(end - page, (uint64_t)PAGEMAP_BATCH);
		ssize_t n = pread(fd, ent, k * sizeof(ent[0]), (off_t)(page * sizeof(ent[0])));

		if (n != (ssize_t)(k * sizeof(ent[0])))
			return true;
		for (size_t i = 0; i < k; i++)
			if (!(ent[i] >> 63))
				return false;
		page += k;
	}
	return true;
}

/*
 * pages_mapped with a memo: a bit per MAPPED_GRANULE of the pool found wholly mapped once, so
 * that a granule's pagemap is read once, not per view (reading it was ~9% of a warm hash
 * scan). The daemon never unmaps pool pages, nor punches the pool file; should the kernel
 * reclaim some, a view through them faults them in again, which is slower, never wrong.
 */
static bool pages_mapped(struct pmfuse_pool *pool, uint64_t off, size_t len)
{
	int fd = pagemap_fd(pool);
	uint64_t g = off / MAPPED_GRANULE, gend = (off + len - 1) / MAPPED_GRANULE + 1;

	if (fd < 0)
		return true;
	for (; g < gend; g++) {
		uint64_t lo = g * MAPPED_GRANULE, hi = PMFUSE_MIN(lo + MAPPED_GRANULE, pool->size);
		uint64_t bit = 1ull << (g % 64);

		if (pool->mapped && (atomic_load_explicit(&pool->mapped[g / 64],
							  memory_order_relaxed) & bit))
			continue;
		if (range_mapped(pool, fd, lo, (size_t)(hi - lo))) {
			if (pool->mapped)
				atomic_fetch_or_explicit(&pool->mapped[g / 64], bit,
							 memory_order_relaxed);
			continue;
		}
		/* not all of the granule: the view's part of it may still be */
		if (lo >= off && hi <= off + len)
			return false;
		lo = PMFUSE_MAX(lo, off);
		hi = PMFUSE_MIN(hi, off + len);
		if (!range_mapped(pool, fd, lo, (size_t)(hi - lo)))
			return false;
	}
	return true;
}

static const void *pread_all(struct pmfuse_pool *pool, uint64_t off, size_t len, void *buf,
			     int *err);

const void *pmfuse_pool_data_view(struct pmfuse_pool *pool, uint64_t off, size_t len, void *buf,
				  int *err)
{
	assert(off <= pool->size && len <= pool->size - off);
	*err = 0;
	if (pool->data_path != PMFUSE_DATA_FD || !len || pages_mapped(pool, off, len))
		return pmfuse_pool_at(pool, off);
	return pread_all(pool, off, len, buf, err);
}

const void *pmfuse_pool_read_once(struct pmfuse_pool *pool, uint64_t off, size_t len, void *buf,
				  int *err)
{
	assert(off <= pool->size && len <= pool->size - off);
	*err = 0;
	if (pool->kind != PMFUSE_SOURCE_FILE || pool->file_dax)
		return pmfuse_pool_at(pool, off);
	return pread_all(pool, off, len, buf, err);
}

static const void *pread_all(struct pmfuse_pool *pool, uint64_t off, size_t len, void *buf,
			     int *err)
{
	for (uint8_t *p = buf; len;) {
		ssize_t n = pread(pool->fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			*err = n < 0 ? -errno : -EIO;   /* 0: the pool file was cut short */
			return NULL;
		}
		off += (uint64_t)n;
		len -= (size_t)n;
		p += n;
	}
	return buf;
}

int pmfuse_pool_write_data(struct pmfuse_pool *pool, uint64_t off, const void *buf, size_t len,
			   unsigned flags)
{
	void *dst = pmfuse_pool_at(pool, off);
	int rc;

	assert(off <= pool->size && len <= pool->size - off);
	if (!len)
		return 0;
	pmfuse_pool_memo_forget(pool, off, len);
	if (pool->data_path == PMFUSE_DATA_MAP) {
		if (buf)
			pmfuse_pool_memcpy(pool, dst, buf, len, flags);
		else
			pmfuse_pool_memset(pool, dst, 0, len, flags);
		return 0;
	}
	rc = fd_write(pool, off, buf, len);
	if (rc) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: cannot write %zu bytes of data at %llu: %s",
			   pool->path, len, (unsigned long long)off, strerror(-rc));
		return rc;
	}
	if (flags & PMFUSE_MEM_NOFLUSH)
		return 0;
	/* FD_DAX: the kernel's copy left no dirty line; the drain orders its stores */
	if (pool->data_path == PMFUSE_DATA_FD)
		pool->flush_fn(dst, len);
	if (!(flags & PMFUSE_MEM_NODRAIN))
		pmfuse_pool_drain(pool);
	return 0;
}

void pmfuse_pool_flush_data(struct pmfuse_pool *pool, uint64_t off, size_t len)
{
	assert(off <= pool->size && len <= pool->size - off);
	if (len && pool->data_path != PMFUSE_DATA_FD_DAX)
		pmfuse_pool_flush(pool, pmfuse_pool_at(pool, off), len);
}

/* ---- memory errors ------------------------------------------------------------------------- */

static __thread struct pmfuse_pool_fault *armed;  /* this thread's newest recovery point */
static struct sigaction sigbus_before;             /* the action our handler replaced */
static pthread_once_t sigbus_once = PTHREAD_ONCE_INIT;

/*
 * Jumps back to the thread's newest recovery point when the fault lies in its pool. Anything
 * else is not ours: put back the action we replaced and let the access fault again (or raise
 * the signal again when it was sent, not a fault), so the process ends as it would have.
 */
static void sigbus_handler(int sig, siginfo_t *si, void *uctx)
{
	struct pmfuse_pool_fault *f = armed;
	const char *a = si->si_addr;

	if (f && si->si_code > 0 && a >= (const char *)f->pool->base &&
	    a < (const char *)f->pool->base + f->pool->size) {
		f->off = (uint64_t)(a - (const char *)f->pool->base);
		armed = f->prev;
		siglongjmp(f->env, 1);
	}
	if (sigbus_before.sa_flags & SA_SIGINFO && sigbus_before.sa_sigaction) {
		sigbus_before.sa_sigaction(sig, si, uctx);
		return;
	}
	sigaction(SIGBUS, &sigbus_before, NULL);
	if (si->si_code <= 0)
		raise(sig);
}

static void sigbus_install(void)
{
	struct sigaction sa = { .sa_sigaction = sigbus_handler,
				.sa_flags = SA_SIGINFO | SA_NODEFER }, old;

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &old)) {
		pmfuse_log(PMFUSE_LOG_ERR, "cannot install the SIGBUS handler: %s",
			   strerror(errno));
		return;
	}
	if (!(old.sa_flags & SA_SIGINFO) || old.sa_sigaction != sigbus_handler)
		sigbus_before = old;
}

void pmfuse_pool_fault_init(void)
{
	pthread_once(&sigbus_once, sigbus_install);
	sigbus_install();
}

void pmfuse_pool_fault_arm(const struct pmfuse_pool *pool, struct pmfuse_pool_fault *f)
{
	pthread_once(&sigbus_once, sigbus_install);
	f->pool = pool;
	f->off = 0;
	f->prev = armed;
	armed = f;
}

void pmfuse_pool_fault_disarm(struct pmfuse_pool_fault *f)
{
	assert(armed == f);
	armed = f->prev;
}

bool pmfuse_pool_fault_armed(void) { return armed != NULL; }

void pmfuse_pool_probe(const struct pmfuse_pool *pool, const void *addr, size_t len)
{
	const volatile char *p = addr;
	size_t step = pool->page_size ? pool->page_size : 4096;
	size_t head = (size_t)((uintptr_t)p % step);

	/* vectors of zeros for holes are DRAM: nothing to probe */
	if (!len || (const char *)addr < (const char *)pool->base ||
	    (const char *)addr >= (const char *)pool->base + pool->size)
		return;
	(void)p[0];
	for (size_t i = step - head; i < len; i += step)
		(void)p[i];
	(void)p[len - 1];
}

int pmfuse_pool_badblocks(struct pmfuse_pool *pool,
			  void (*fn)(void *arg, uint64_t off, uint64_t len), void *arg,
			  char *why, size_t why_len)
{
	struct pmem2_badblock_context *bbctx = NULL;
	struct pmem2_badblock bb;
	int rc;

	if (pool->kind == PMFUSE_SOURCE_FAKE) {
		/* the poisoned range is the fake media's list, so tests can check the mapping */
		if (pool->poison_save)
			fn(arg, pool->poison_off, pool->poison_len);
		return 0;
	}
	/* libpmem2 answers "no bad blocks" for a file with no pmem device behind it: say why */
	if (pool->kind == PMFUSE_SOURCE_FILE && !pool->file_dax) {
		snprintf(why, why_len, "the pool file is not on a DAX file system, so no "
			 "persistent memory device keeps a list for it");
		return -EOPNOTSUPP;
	}
	rc = pmem2_badblock_context_new(&bbctx, pool->src);
	if (rc) {
		/* a file outside fsdax (tmpfs, ext4 on a disk) has no pmem region behind it */
		snprintf(why, why_len, "%s", pmem2_errormsg());
		return rc == PMEM2_E_NOSUPP || rc == PMEM2_E_SOURCE_TYPE_NOT_SUPPORTED ||
		       rc < PMEM2_E_UNKNOWN || rc >= 0 ? -EOPNOTSUPP : rc;
	}
	while ((rc = pmem2_badblock_next(bbctx, &bb)) == 0) {
		if (bb.offset >= pool->size)
			continue;
		fn(arg, bb.offset, PMFUSE_MIN((uint64_t)bb.length, pool->size - bb.offset));
	}
	pmem2_badblock_context_delete(&bbctx);
	if (rc == PMEM2_E_NO_BAD_BLOCK_FOUND)
		return 0;
	snprintf(why, why_len, "%s", pmem2_errormsg());
	return rc < 0 && rc > PMEM2_E_UNKNOWN ? rc : -EIO;
}

int pmfuse_pool_fake_poison(struct pmfuse_pool *pool, uint64_t off, size_t len)
{
	void *at;
	int fd;

	assert(pool->kind == PMFUSE_SOURCE_FAKE);
	if (pool->poison_save || !len || off % 4096 || len % 4096 || off > pool->size ||
	    len > pool->size - off)
		return -EINVAL;
	pool->poison_save = malloc(len);
	if (!pool->poison_save)
		return -ENOMEM;
	memcpy(pool->poison_save, (uint8_t *)pool->base + off, len);
	pmfuse_pool_memo_forget(pool, off, len);
	/* pages of an empty shared file: every access is past its end, which is SIGBUS */
	fd = memfd_create("pmfuse-poison", MFD_CLOEXEC);
	at = fd < 0 ? MAP_FAILED : mmap((uint8_t *)pool->base + off, len, PROT_READ | PROT_WRITE,
					MAP_SHARED | MAP_FIXED, fd, 0);
	if (at == MAP_FAILED) {
		int err = errno;

		if (fd >= 0)
			close(fd);
		free(pool->poison_save);
		pool->poison_save = NULL;
		return -err;
	}
	close(fd);
	pool->poison_off = off;
	pool->poison_len = len;
	return 0;
}

void pmfuse_pool_fake_unpoison(struct pmfuse_pool *pool)
{
	void *at;

	assert(pool->kind == PMFUSE_SOURCE_FAKE);
	if (!pool->poison_save)
		return;
	at = mmap((uint8_t *)pool->base + pool->poison_off, pool->poison_len,
		  PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (at == MAP_FAILED)
		abort(); /* test-only model: the range would stay poisoned */
	memcpy(at, pool->poison_save, pool->poison_len);
	pmfuse_pool_memo_forget(pool, pool->poison_off, pool->poison_len);
	free(pool->poison_save);
	pool->poison_save = NULL;
	pool->poison_len = 0;
}
