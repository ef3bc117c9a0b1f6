/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The pool: one mapping of persistent memory and the barriers that make stores durable.
 *
 * This module is the only code that includes libpmem2. A pool is opened from a /dev/daxX.Y
 * device, a file on an fsdax filesystem, or any regular file, with the finest store granularity
 * the source offers (byte, cache line, or page: msync). PMEM2_FORCE_GRANULARITY still works
 * because libpmem2 reads it. The persistence primitives are chosen once at open and called
 * through function pointers, so callers never branch on the granularity again.
 *
 * A pool can also be "fake media": a DRAM image with no file behind it, whose flush and drain
 * are modelled in software (see pmfuse_pool_fake_*). The crash tests use it to stop at any drain
 * and to build the images a power cut could leave behind.
 *
 * Durability contract for callers: a store is durable once it has been flushed (flush, persist,
 * memcpy/memset/write_data without PMFUSE_MEM_NOFLUSH) and a drain (drain, persist, or a
 * memcpy/memset/write_data without PMFUSE_MEM_NODRAIN) has followed.
 *
 * File data goes in through pmfuse_pool_write_data, which may bypass the mapping (see
 * enum pmfuse_data_path): the mapping stays coherent with it (same pages), so metadata code and
 * readers keep using addresses.
 */
#ifndef PMFUSE_POOL_H
#define PMFUSE_POOL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pmfuse_pool;

enum pmfuse_granularity {
	PMFUSE_GRAN_BYTE,       /* eADR / battery-backed: a fence is enough */
	PMFUSE_GRAN_CACHE_LINE, /* ADR pmem: flush cache lines, then fence */
	PMFUSE_GRAN_PAGE,       /* ordinary page cache: msync */
};
const char *pmfuse_granularity_name(enum pmfuse_granularity g);

enum pmfuse_source_kind {
	PMFUSE_SOURCE_DEVDAX,   /* character device /dev/daxX.Y */
	PMFUSE_SOURCE_FILE,     /* regular file (on fsdax or anything else) */
	PMFUSE_SOURCE_FAKE,     /* DRAM image for tests */
};

/*
 * How pmfuse_pool_write_data moves file data into the pool, chosen once at open:
 *   MAP     stores through the mapping (libpmem2's memcpy): dax devices (2 MiB pages, no file
 *           to write through) and fake media;
 *   FD      pwrite(2) on the pool file, then the flush of the pool's granularity over the
 *           range (page: msync, which writes the range back; cache line: flush through the
 *           mapping). The kernel copies through its own mapping, so the daemon takes no page
 *           fault per 4 KiB for pages it never touched (most of the cost of new data on a VM);
 *   FD_DAX  pwrite(2) on a file of an fsdax filesystem (statx STATX_ATTR_DAX) mapped with cache
 *           line or byte granularity: the kernel's DAX write path copies with cache-flushing
 *           stores (dax_iomap_rw -> copy_from_iter_flushcache), so only the drain (a fence) is
 *           left to do.
 * PMFUSE_DATA_PATH=map|fd in the environment forces MAP, or FD on a pool file (tests, bench).
 */
enum pmfuse_data_path {
	PMFUSE_DATA_MAP,
	PMFUSE_DATA_FD,
	PMFUSE_DATA_FD_DAX,
};
const char *pmfuse_data_path_name(enum pmfuse_data_path p);

/* open flags */
#define PMFUSE_POOL_RDONLY  (1u << 0) /* map read-only; take no lock (the caller must not write) */
#define PMFUSE_POOL_NOLOCK  (1u << 1) /* skip the exclusive lock (tests only) */

/*
 * Opens and maps a pool. Takes an exclusive advisory lock (flock) unless RDONLY or NOLOCK; when
 * another process holds it, returns -EBUSY and logs which process holds it where /proc/locks
 * tells. Errors: -ENOENT, -EACCES, -EBUSY, -EINVAL (not a file or dax device, or empty), -ENOMEM.
 */
int pmfuse_pool_open(const char *path, unsigned flags, struct pmfuse_pool **out);

/*
 * Takes an flock (LOCK_EX or LOCK_SH) on fd, the pool at path. A daemon whose mount was just
 * unmounted still holds its lock while it closes the pool (umount(8) returns before the daemon
 * has seen the unmount), so a busy lock is retried for up to PMFUSE_POOL_LOCK_WAIT_MS, saying
 * once (at info level) whom it waits for. Returns 0, -EBUSY if still held then, or -errno.
 */
#define PMFUSE_POOL_LOCK_WAIT_MS 3000
int pmfuse_pool_flock(int fd, const char *path, int how);

/* Names the process holding an flock on path ("process 123 (pmfuse)"), from /proc/locks.
 * Returns false (and "another process" in buf) when it cannot tell or nobody holds one. */
bool pmfuse_pool_lock_holder(const char *path, char *buf, size_t len);

/* Creates (or extends to) a regular file of size bytes; never shrinks or touches a device. */
int pmfuse_pool_create_file(const char *path, uint64_t size);

void pmfuse_pool_close(struct pmfuse_pool *pool);

void *pmfuse_pool_base(const struct pmfuse_pool *pool);
size_t pmfuse_pool_size(const struct pmfuse_pool *pool);
enum pmfuse_granularity pmfuse_pool_granularity(const struct pmfuse_pool *pool);
/* Page granularity on a file of tmpfs, ramfs or hugetlbfs: barriers without msync (pool.c says
 * why). PMFUSE_MSYNC=always in the environment keeps msync there (tests, bench). */
bool pmfuse_pool_memory_file(const struct pmfuse_pool *pool);
enum pmfuse_source_kind pmfuse_pool_source_kind(const struct pmfuse_pool *pool);
bool pmfuse_pool_readonly(const struct pmfuse_pool *pool);
const char *pmfuse_pool_path(const struct pmfuse_pool *pool);
enum pmfuse_data_path pmfuse_pool_data_path(const struct pmfuse_pool *pool);

/* Byte offset <-> address. The offset must lie inside the pool (asserted). */
static inline void *pmfuse_pool_at(const struct pmfuse_pool *pool, uint64_t off)
{
	return (char *)pmfuse_pool_base(pool) + off;
}
uint64_t pmfuse_pool_offset(const struct pmfuse_pool *pool, const void *addr);

/* Persistence barriers. */
void pmfuse_pool_persist(struct pmfuse_pool *pool, const void *addr, size_t len);
void pmfuse_pool_flush(struct pmfuse_pool *pool, const void *addr, size_t len);
void pmfuse_pool_drain(struct pmfuse_pool *pool);

/* memcpy/memset flags: same meaning as libpmem2's PMEM2_F_MEM_*; default is flush + drain. */
#define PMFUSE_MEM_NODRAIN     (1u << 0)
#define PMFUSE_MEM_NONTEMPORAL (1u << 1) /* hint: bypass the cache (large copies) */
#define PMFUSE_MEM_TEMPORAL    (1u << 2) /* hint: keep in the cache (data read again soon) */
#define PMFUSE_MEM_NOFLUSH     (1u << 5) /* plain stores; the caller flushes later */
void *pmfuse_pool_memcpy(struct pmfuse_pool *pool, void *dst, const void *src, size_t len,
			 unsigned flags);
void *pmfuse_pool_memset(struct pmfuse_pool *pool, void *dst, int c, size_t len, unsigned flags);

/*
 * Stores len bytes of file data from buf (NULL: zeros) at pool offset off, by the pool's data
 * path, with the flags of pmfuse_pool_memcpy (default: flushed and drained; NODRAIN: flushed,
 * durable at the next drain; NOFLUSH: the caller flushes the range later). The bytes are
 * visible through the mapping on return. Returns 0, or -errno when the write fails (-EIO,
 * -ENOSPC from the file system under a pool file): then the range holds unknown bytes.
 */
int pmfuse_pool_write_data(struct pmfuse_pool *pool, uint64_t off, const void *buf, size_t len,
			   unsigned flags);
/*
 * The len bytes of file data at pool offset off, for a bulk reader inside the daemon (dedupe
 * compares, block hashes): the mapping, unless the pool is a page-cache file of which this
 * process has not mapped every page of the range yet; then buf (at least len bytes) filled by
 * pread(2). On
 * the development VM a first touch through the mapping costs ~9 us per 4 KiB page (a shadow
 * page-table update under nested virtualisation): comparing 512 MiB of freshly pwritten pages
 * through the mapping took 2.3 s, by pread into buffers 0.2-0.25 s, through pages already
 * mapped 0.04-0.07 s; the check (one pread of /proc/self/pagemap per 2 MiB) 1-2 us. Dax
 * devices (2 MiB pages) and fake media always give the mapping. NULL with *err (-errno; -EIO
 * when the pool file was cut short) when the read fails.
 */
const void *pmfuse_pool_data_view(struct pmfuse_pool *pool, uint64_t off, size_t len, void *buf,
				  int *err);
/* The same for a block read once by a pass over the whole pool (fsck's file tails): a pool file
 * (page cache or fsdax, coherent with the mapping) is always read by pread, without the pagemap
 * check (a pread and a getpid per call, half of a repair's time); others give the mapping. */
const void *pmfuse_pool_read_once(struct pmfuse_pool *pool, uint64_t off, size_t len, void *buf,
				  int *err);
/* Flushes (no drain) [off, off + len) after pmfuse_pool_write_data(..., PMFUSE_MEM_NOFLUSH)
 * calls: one flush for many pieces. Nothing to do on FD_DAX, where the kernel flushed. */
void pmfuse_pool_flush_data(struct pmfuse_pool *pool, uint64_t off, size_t len);

/*
 * The descriptor through which readers should pread file data at pool offsets, or -1 when they
 * should read the mapping. Reads through a pool file's descriptor take no page fault in this
 * process for pages it never touched (file data written by pwrite, anything after a fresh
 * mount) but copy twice (page cache -> reply buffer -> kernel). Measured on the development VM
 * (1 GiB file written through pmfuse, fresh mount, cold kernel cache, medians of 9 runs under
 * load 7-11): 4 KiB random reads 5,337 IOPS through the mapping, 5,521 through the fd (spread
 * 2,600-11,700 for both); 1 MiB sequential reads 572 vs 555 MiB/s. No difference beyond the
 * noise, so the mapping stays the default (one copy, no syscall per piece);
 * PMFUSE_READ_PATH=fd chooses the descriptor for a pool file, to measure again elsewhere.
 */
int pmfuse_pool_read_fd(const struct pmfuse_pool *pool);

/* Number of drains since open (every persist and every draining memcpy/memset counts as one). */
uint64_t pmfuse_pool_barriers(const struct pmfuse_pool *pool);

/* ---- what a checker learned of blocks (fsck) ----------------------------------------------
 *
 * fsck reads every metadata block several times in one run (the check, the repair's rounds, the
 * check after them); the memo lets it verify a block's bytes once. Per block of block_size it
 * notes that the block's crc matched its bytes, that it passed a check of a caller's kind (a
 * tag), and from which offset on it was found to hold zeros (a file's bytes past EOF). Every store through this module (memcpy, memset,
 * write_data, flush, persist, the fake media's resets and poison) and every range a transaction
 * declares (pmfuse_pool_memo_forget, from tx.c) forgets what was noted of the blocks it touches,
 * so a note holds only while the block holds the bytes that were verified. The daemon never
 * enables it: its threads store between a check and a use. Off (every query false) until
 * pmfuse_pool_memo_enable (0, -EINVAL, -ENOMEM); 4 bytes per block, resident only where noted.
 */
int pmfuse_pool_memo_enable(struct pmfuse_pool *pool, uint32_t block_size);
void pmfuse_pool_memo_forget(struct pmfuse_pool *pool, uint64_t off, uint64_t len);
bool pmfuse_pool_memo_crc(const struct pmfuse_pool *pool, uint64_t blk);
void pmfuse_pool_memo_set_crc(struct pmfuse_pool *pool, uint64_t blk);
/* Whether block blk is known to hold zeros from byte off to its end. */
bool pmfuse_pool_memo_zero_from(const struct pmfuse_pool *pool, uint64_t blk, uint32_t off);
void pmfuse_pool_memo_set_zero_from(struct pmfuse_pool *pool, uint64_t blk, uint32_t off);
/* A checker's own note that blk passed its check of kind tag (1..32767; 0: none), e.g. a
 * b+tree node's records under one ops table. One tag per block: the last set. */
unsigned pmfuse_pool_memo_tag(const struct pmfuse_pool *pool, uint64_t blk);
void pmfuse_pool_memo_set_tag(struct pmfuse_pool *pool, uint64_t blk, unsigned tag);

/* ---- memory errors -------------------------------------------------------------------------
 *
 * A poisoned line of persistent memory, or a page of a pool file that was shortened under the
 * mapping, raises SIGBUS in the thread that touches it. Code that can fail the work it is doing
 * instead arms a recovery point in its own frame:
 *
 *	struct pmfuse_pool_fault f;
 *	if (sigsetjmp(f.env, 0)) {
 *		... f.off is the pool offset that faulted; f is already disarmed ...
 *	}
 *	pmfuse_pool_fault_arm(pool, &f);
 *	... pool accesses ...
 *	pmfuse_pool_fault_disarm(&f);
 *
 * Points nest per thread (the newest catches). The handler (installed by the first arm) jumps
 * back only when this thread has a point armed and the faulting address lies in that point's
 * pool; any other SIGBUS gets the action that was there before (by default the process dies
 * as it always did). sigsetjmp(..., 0) saves no signal mask, so arming costs no system call;
 * the handler runs with SA_NODEFER, so leaving it by a jump leaves SIGBUS unblocked.
 * What the interrupted code held (locks, a transaction) is the catcher's to release.
 */
struct pmfuse_pool_fault {
	sigjmp_buf env;
	struct pmfuse_pool_fault *prev;
	const struct pmfuse_pool *pool;
	uint64_t off;                 /* after a catch: the pool offset of the faulting access */
};
void pmfuse_pool_fault_arm(const struct pmfuse_pool *pool, struct pmfuse_pool_fault *f);
/* Installs the handler now, again if something replaced it since (a test framework that sets
 * its own per test); the first arm does it otherwise. */
void pmfuse_pool_fault_init(void);
/* Disarms f, which must be the newest armed point of this thread. */
void pmfuse_pool_fault_disarm(struct pmfuse_pool_fault *f);
/* True when this thread has a recovery point armed. */
bool pmfuse_pool_fault_armed(void);

/*
 * Reads one byte of every page of [addr, addr + len), which must lie in the pool: a poisoned
 * page then faults here, under a recovery point, rather than inside a system call that is
 * handed the range (writev to /dev/fuse would fail with EFAULT after the request is gone).
 */
void pmfuse_pool_probe(const struct pmfuse_pool *pool, const void *addr, size_t len);

/*
 * Bad blocks known to the platform (libpmem2's pmem2_badblock_* over the pool's source: dax
 * devices and files on fsdax). Calls fn(arg, off, len) for each bad range, as pool byte
 * offsets clipped to the pool; on fake media the poisoned range (pmfuse_pool_fake_poison).
 * Returns 0, or -EOPNOTSUPP when the source cannot report them (a file on a file system
 * without DAX), with the reason in why; other -errno.
 */
int pmfuse_pool_badblocks(struct pmfuse_pool *pool,
			  void (*fn)(void *arg, uint64_t off, uint64_t len), void *arg,
			  char *why, size_t why_len);

/* ---- fake media (tests) ---------------------------------------------------------------------
 *
 * Model: the pool's memory is the CPU's view ("working image"). A second image holds what has
 * reached the media. flush() records the cache lines it covers; drain() first calls the barrier
 * hook (if any), then copies every recorded line from the working image to the media image. So
 * at the hook of barrier N, the media image is exactly what is guaranteed durable, and every
 * 8-byte unit where the two images differ is a store that may or may not have reached the media.
 */
struct pmfuse_pool_fake_hook {
	/* Called at the start of every drain with the number of that drain (1-based). */
	void (*barrier)(void *arg, struct pmfuse_pool *pool, uint64_t barrier);
	void *arg;
};

/* A fake pool of size bytes (a multiple of 4096), zero-filled, or a copy of image if not NULL. */
int pmfuse_pool_fake_new(size_t size, const void *image, struct pmfuse_pool **out);
/* Makes a fake pool hold image (pool-size bytes) as both its CPU and media view, with nothing
 * pending: a cheap way to open many crash images one after another. */
void pmfuse_pool_fake_reset(struct pmfuse_pool *pool, const void *image);
void pmfuse_pool_fake_set_hook(struct pmfuse_pool *pool, const struct pmfuse_pool_fake_hook *hook);

/*
 * Writes into out (pool-size bytes) an image a power cut at this instant could leave: the media
 * image plus, for each 8-byte unit where the working image differs, the new value when keep()
 * says so. keep(arg, unit_index) decides per unit; NULL keeps none. Returns the number of
 * differing units.
 */
size_t pmfuse_pool_fake_crash_image(const struct pmfuse_pool *pool, void *out,
				    bool (*keep)(void *arg, size_t unit), void *arg);

/*
 * Makes every access to [off, off + len) (page-aligned) raise SIGBUS, as a poisoned range of
 * real persistent memory does, until pmfuse_pool_fake_unpoison, which puts the bytes back.
 * One range at a time. Returns 0, -EINVAL (not aligned, outside the pool, or a range is
 * already poisoned), -errno.
 */
int pmfuse_pool_fake_poison(struct pmfuse_pool *pool, uint64_t off, size_t len);
void pmfuse_pool_fake_unpoison(struct pmfuse_pool *pool);

/* The current media image (read only; valid until the next drain or close). */
const void *pmfuse_pool_fake_media(const struct pmfuse_pool *pool);

#endif /* PMFUSE_POOL_H */
