/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * File data: read, write, truncate, fallocate, lseek, fsync.
 *
 * Reads walk the extent map and describe the requested range as pieces: pool addresses for
 * written blocks (read straight from the mapping, no bounce buffer) and the shared zero buffer
 * for holes and unwritten blocks (split into PMFUSE_ZERO_BUF pieces), clipped at EOF. pmfuse_fs_read hands them to
 * the caller as iovecs while fs->lock is held for reading; pread copies them.
 *
 * Writes are ordered and durable on return, and never put metadata ahead of the data it points
 * to. File data goes into the pool through pmfuse_pool_write_data (pwrite on a pool file, so
 * the daemon takes no page fault per new page; stores through the mapping on a dax device and
 * on fake media), metadata through the mapping. A write is, when it can be, ONE transaction
 * (write_one_tx) made of these pieces, in file order:
 *
 *   overwrite   file bytes below EOF in mapped, unshared blocks: stored in place, flushed,
 *               declared written (no undo: a crash may tear them at any 8-byte unit, as any
 *               in-place store on pmem; the commit drains them);
 *   past EOF    file bytes at or past EOF in mapped, unshared blocks (the rest of a partly
 *               filled last block, blocks preallocated past EOF): declared with a zero entry
 *               (pmfuse_tx_add_zero: 24 bytes of log, no pre-image), then stored in place;
 *               the commit flushes and drains them;
 *   convert     bytes in unwritten, unshared blocks: the bytes and zeros in the rest of each
 *               block touched are written (whole blocks, like fresh ones: their old bytes were
 *               never readable), and the flag is cleared over exactly those blocks; the commit
 *               drains the stores before the record says written, so a crash shows the blocks
 *               unwritten (zeros) or written with all their bytes, never what they held
 *               (write_unwritten does the same in steps);
 *   fill hole   allocate extents (goal: the pool block after the previous extent, so files
 *               stay contiguous), write whole blocks (the data, zeros around it in partial
 *               blocks), flush them, declare them written, map them;
 * then the inode (size, blocks, mtime/ctime, setuid/setgid) and the commit, which drains
 * everything before the single store that commits. Nothing is logged but the metadata and
 * 24 bytes per past-EOF piece, whatever the write's size: an append costs what an overwrite
 * costs, plus the allocation.
 *
 * Why a crash keeps E5 (mapped bytes at or past EOF are zero) and shows no stale data, without
 * pre-images of data:
 *   - a fresh block is written whole (data and zeroed rest) and flushed before the commit that
 *     maps it, and drained before that commit's record: once it is reachable it is durable,
 *     and before it is reachable its bytes are nobody's (the allocation is undone with the
 *     transaction, so a half-written free block stays free);
 *   - bytes past EOF in a linked block are zeros before the write (E5, which held before it),
 *     so their pre-image is known: a zero entry records the range, and its persist (a barrier)
 *     precedes the first store into it. A crash before the commit rolls back the size and
 *     zeroes the range again (recovery, newest entry first); after the commit the size covers
 *     them and they are durable. Either way no byte past EOF is non-zero;
 *   - bytes below EOF hold the file's own data, old or new: never another file's;
 *   - blocks stored into are unshared (count_shared): shared blocks take the copy-on-write
 *     path below, which never stores into them.
 * So after a crash the file is in its old state or its new one (plus torn overwrites below the
 * old EOF), and fsck's E5 holds.
 *
 * When one transaction cannot hold the write (it stores into shared blocks, its holes need
 * more than one extent budget or the space left, the allocator cannot place a hole in the
 * budget's extents, the log fills up), write_range goes in steps: each hole, CoW window or
 * unwritten run is a transaction as above, a past-EOF run in place is one (zero entries and
 * the size), and overwrites below EOF are followed by a transaction for size and times. Each step leaves a consistent file with a
 * size covering what is written. ENOSPC midway returns the bytes written so far (an aborted
 * transaction takes its blocks and their mappings with it, so nothing is half linked or
 * leaked); -ENOSPC when there are none.
 *
 * Invariant E5 (extent.c): mapped bytes at or past EOF are zero. New and converted blocks are
 * zeroed outside the written bytes; writes past EOF are undone to zeros (above); a shrinking
 * truncate zeroes the rest of its new last block inside the transaction that sets the size (a
 * logged range, so the crash image is old size with old bytes or new size with zeros), and
 * frees the blocks past it.
 *
 * Truncate (pmfuse_data_set_size), shrinking: when the blocks past the new EOF fit one
 * transaction's budget, size, tail and unmapping are one transaction. Otherwise the first
 * transaction also puts the inode on the orphan list, the blocks go in as many transactions as
 * needed (pmfuse_data_trim, top down), and the last one takes the inode off the list; after a
 * crash, fs open finds the orphan with nlink > 0 and finishes the trim. On a pool full to the
 * last block the orphan entry may find no block for its leaf: then a step frees the topmost
 * extents first and truncates to the lowest block it freed (a smaller truncate, complete in
 * itself: the only case where a crash can show a size between the old and the new one), and
 * the orphan route follows. Growing only sets the size: the new range is a hole.
 *
 * Reserve: file data never takes the last pmfuse_data_reserve() free blocks (writes and
 * fallocate see ENOSPC first), so that the metadata of the operations that give space back
 * (orphan entries, extent splits, directory changes) still finds blocks on a pool full of data.
 *
 * fallocate: preallocation (mode 0, KEEP_SIZE) and ZERO_RANGE fill the holes of the range with
 * unwritten blocks (E6 of extent.c: allocated, read as zeros, never stored into, so a 1 GiB
 * preallocation costs bitmap words and a few records, not 1 GiB of stores), remembering each
 * range they map; when the pool runs out they unmap exactly those ranges again, so ENOSPC
 * leaves the file as it was. The first such call on a pool sets the superblock's
 * INCOMPAT_UNWRITTEN feature (pmfuse_data_feature_unwritten). ZERO_RANGE then makes the
 * written whole blocks unwritten (a flag change; shared ones get new unwritten blocks by a
 * copy-on-write that copies nothing) and zeroes the partial blocks at its edges as PUNCH_HOLE
 * does, which unmaps whole blocks (top down, budgeted transactions) and zeroes the written
 * partial blocks at its edges in place. Unwritten blocks are never zeroed: they read as zeros.
 *
 * lseek: every mapped block is data, unwritten ones too (they read as zeros); the region past
 * EOF is a virtual hole. XFS and ext4 report unwritten extents as holes unless the page cache
 * holds dirty data there; pmfuse cannot see the kernel's page cache (dirty mmap pages, the
 * writeback-cache mode), so it answers as they would without that knowledge: data. Never wrong,
 * only less sparse for `cp --sparse` and SEEK_HOLE users.
 *
 * Copy-on-write. A block mapped by more than one extent record (refcount > 1, meta/refcount.h)
 * is never modified: every path that stores into mapped blocks (write, the tail zeroing of a
 * shrinking truncate, the partial-block zeroing of PUNCH_HOLE and ZERO_RANGE, ZERO_RANGE over
 * written blocks, unshare) first splits the range into runs of equal sharing state
 * (pmfuse_refcount_get), stores into unshared runs in place as before, and replaces shared runs
 * in one transaction each (cow_step):
 *
 *        file blocks     fb                      fb + n
 *   old mapping     ....[==== shared run S (count c >= 2) ====]....    S at pool block p
 *   write bytes             |<------- new bytes ------->|
 *                       head                            tail
 *   1. allocate n blocks N (placed by the CoW hint, below)
 *   2. fill N:  [head: memcpy from S][new bytes, or zeros][tail: memcpy from S]
 *      (through the pool's data path, flushed; N is declared written in the transaction, so
 *      the commit drains it before the commit record: never linked before durable)
 *   3. unmap [fb, fb + n): S loses one reference (count c - 1 >= 1: never freed here)
 *   4. map [fb, fb + n) -> N (merging with contiguous neighbours), size and times
 *   5. commit
 *
 * A crash before 5 leaves the old mapping with S untouched and N free (its allocation is undone
 * with the rest); after it, the new mapping with durable bytes and S counted once less. When S
 * is unwritten its bytes are zeros (E6): step 2 copies nothing and stores zeros instead, and
 * without new bytes (unshare; ZERO_RANGE's whole blocks) N stays unwritten and is not stored
 * into at all. ENOSPC
 * at 1 aborts with nothing changed: both copies stay intact and the write is short (or fails).
 *
 * The CoW extent size hint (ip->cowextsize, PMFUSE_COWEXTSIZE_DEFAULT = 32 blocks when 0), as
 * XFS's cowextsize: the file is seen as windows of cs blocks aligned on cs, and a store into a
 * shared block replaces, in the same transaction and as one new extent, the whole stretch of
 * shared blocks of its window(s) inside the extent that maps it (cow_span; unshared blocks and
 * holes of the window are left as they are):
 *
 *        window (cs = 8)      |w0                             |w0 + 8
 *        mapping before       [S  S  S  P  S  S  S  S ][S ...     S shared, P private
 *        1-byte write                        ^
 *        replaced                         [N  N  N  N ]           one new extent of 4 blocks
 *
 * So a small write into a fresh clone costs one CoW extent of space and copy (like XFS, whose
 * CoW fork reserves the whole aligned extent), later writes into the window find private
 * blocks and store in place without any transaction, and a clone that is overwritten piece by
 * piece ends with about one extent per window instead of one per write. The new extent goes
 * right after the file block before it when that one is private (consecutive windows stay
 * contiguous). When the pool cannot take the whole stretch, only the blocks stored into are
 * replaced. Unshare and the tail zeroing of truncate replace exactly their blocks. Nothing is
 * reserved across transactions: a crash leaks nothing.
 *
 * Locking: the pmfuse_fs_* entry points take fs->lock (readers for read, pread, lseek, fsync;
 * the writer for everything that changes the pool) and call the *_locked cores, which the
 * namespace code calls directly when it already holds the lock.
 *
 * Limits: a file holds at most PMFUSE_FILE_SIZE_MAX (2^63 - 1) bytes, the off_t range the kernel
 * uses, so file block numbers stay below 2^63 / bs and no byte offset computed here overflows.
 * Writes past it are cut short at it; starting at or past it is -EFBIG.
 */
#include "fs/fs_internal.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta/refcount.h"
#include "pool/pool.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

/* Copies at least this long use non-temporal stores (they would only evict the cache). */
#define NT_MIN (64u << 10)
/* Largest range declared to the transaction in one piece (its lengths are 32-bit). */
#define DECLARE_MAX (1ull << 30)

/* One inode, opened for one data operation. */
struct file {
	struct pmfuse_fs *fs;
	uint64_t ino;
	struct pmfuse_inode *ip;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_extmap map;
	struct pmfuse_btree rc;       /* the refcount tree: which mapped blocks are shared */
	uint32_t bs;
	const struct pmfuse_cred *cred;  /* fallocate's caller (setuid/setgid); may be NULL */
};

/* Locates ino for data access. Regular files always; symlinks when lnk (their target is data). */
static int file_get(struct pmfuse_fs *fs, uint64_t ino, bool lnk, struct file *f)
{
	uint32_t mode;
	int rc;

	rc = pmfuse_inode_locate(fs, ino, &f->ip, &f->leaf);
	if (rc)
		return rc;
	mode = pmfuse_le32(f->ip->mode);
	if (S_ISDIR(mode))
		return -EISDIR;
	if (!S_ISREG(mode) && !(lnk && S_ISLNK(mode)))
		return -EINVAL;
	if (pmfuse_le64(f->ip->size) > PMFUSE_FILE_SIZE_MAX)
		return PMFUSE_CORRUPT("inode %llu: size %llu is past the largest file", ULL(ino),
				      ULL(pmfuse_le64(f->ip->size)));
	f->fs = fs;
	f->ino = ino;
	f->bs = fs->bs;
	f->cred = NULL;
	pmfuse_extmap_open(&f->map, fs, f->ip, f->leaf);
	pmfuse_refcount_tree(fs->vol, &f->rc);
	return 0;
}

static uint64_t file_size(const struct file *f)
{
	return pmfuse_le64(f->ip->size);
}

static uint64_t div_up(uint64_t x, uint64_t d)
{
	return x / d + (x % d != 0);
}

static void *pool_block(const struct file *f, uint64_t pblock)
{
	return pmfuse_volume_block(f->fs->vol, pblock);
}

/*
 * Sharing state of file block fb, mapped by e: *shared when its pool block has more than one
 * owner, and *run = how many blocks from fb on (inside e, below limit) are in the same state.
 */
static int share_run(const struct file *f, const struct pmfuse_iext *e, uint64_t fb,
		     uint64_t limit, bool *shared, uint64_t *run)
{
	uint64_t max = PMFUSE_MIN(e->fblock + e->len, limit) - fb;
	uint32_t count;
	int rc;

	rc = pmfuse_refcount_get(&f->rc, e->pblock + (fb - e->fblock), max, &count, run);
	*shared = count > 1;
	return rc;
}

/* Address of file byte pos inside extent e (which maps it). */
static uint8_t *ext_addr(const struct file *f, const struct pmfuse_iext *e, uint64_t pos)
{
	return (uint8_t *)pool_block(f, e->pblock) + (pos - e->fblock * f->bs);
}

static uint64_t ext_end_byte(const struct file *f, const struct pmfuse_iext *e)
{
	return (e->fblock + e->len) * f->bs;
}

/* ---- reading -------------------------------------------------------------------------------- */

/* A piece of the file: len bytes at src, or len zeros when src is NULL. */
typedef int (*piece_fn)(void *arg, const void *src, size_t len);

struct rwalk {
	const struct file *f;
	uint64_t pos, end;
	piece_fn fn;
	void *arg;
};

static int rwalk_hole(struct rwalk *w, uint64_t to)
{
	int rc = 0;

	to = PMFUSE_MIN(to, w->end);
	if (to > w->pos) {
		rc = w->fn(w->arg, NULL, to - w->pos);
		w->pos = to;
	}
	return rc;
}

static int rwalk_ext(void *arg, const struct pmfuse_iext *e)
{
	struct rwalk *w = arg;
	uint64_t to;
	int rc;

	rc = rwalk_hole(w, e->fblock * w->f->bs);
	if (rc || w->pos >= w->end)
		return rc ? rc : 1;
	to = PMFUSE_MIN(ext_end_byte(w->f, e), w->end);
	if (e->flags & PMFUSE_EXTENT_UNWRITTEN)
		rc = w->fn(w->arg, NULL, to - w->pos);   /* zeros, as a hole (E6) */
	else
		rc = w->fn(w->arg, ext_addr(w->f, e, w->pos), to - w->pos);
	w->pos = to;
	return rc ? rc : w->pos >= w->end;
}

/* Describes [off, off + len) clipped at EOF as pieces; returns the bytes described or -errno. */
static ssize_t read_walk(const struct file *f, uint64_t off, size_t len, piece_fn fn, void *arg)
{
	struct rwalk w = { .f = f, .pos = off, .fn = fn, .arg = arg };
	uint64_t size = file_size(f);
	int rc;

	if (off >= size || !len)
		return 0;
	len = PMFUSE_MIN(len, (size_t)SSIZE_MAX);
	w.end = len > size - off ? size : off + len;
	rc = pmfuse_extent_walk(&f->map, off / f->bs, div_up(w.end, f->bs), rwalk_ext, &w);
	if (rc < 0)
		return rc;
	rc = rwalk_hole(&w, w.end);
	if (rc < 0)
		return rc;
	return (ssize_t)(w.end - off);
}

struct iov_list {
	struct iovec *v;
	int cnt, cap;
	const uint8_t *zeroes;
};

static int iov_push(struct iov_list *l, const void *base, size_t len)
{
	if (l->cnt == l->cap) {
		int cap = l->cap ? l->cap * 2 : 16;
		struct iovec *v;

		if (l->cap > INT_MAX / 2)
			return -ENOMEM;
		v = realloc(l->v, (size_t)cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		pmfuse_fs_scratch = v;
		l->cap = cap;
	}
	l->v[l->cnt].iov_base = (void *)base;
	l->v[l->cnt].iov_len = len;
	l->cnt++;
	return 0;
}

static int iov_piece(void *arg, const void *src, size_t len)
{
	struct iov_list *l = arg;
	int rc;

	if (src)
		return iov_push(l, src, len);
	while (len) {
		size_t n = PMFUSE_MIN(len, (size_t)PMFUSE_ZERO_BUF);

		rc = iov_push(l, l->zeroes, n);
		if (rc)
			return rc;
		len -= n;
	}
	return 0;
}

static int copy_piece(void *arg, const void *src, size_t len)
{
	uint8_t **dst = arg;

	if (src)
		memcpy(*dst, src, len);
	else
		memset(*dst, 0, len);
	*dst += len;
	return 0;
}

int pmfuse_fs_read(struct pmfuse_fs *fs, uint64_t ino, uint64_t off, size_t len,
		   pmfuse_read_fn emit, void *arg)
{
	struct iov_list l = { .zeroes = fs->zeroes };
	struct file f;
	ssize_t n;
	int rc;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = file_get(fs, ino, false, &f);
	if (!rc) {
		n = read_walk(&f, off, len, iov_piece, &l);
		rc = n < 0 ? (int)n : emit(arg, l.v, l.cnt);
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	pmfuse_fs_scratch = NULL;
	free(l.v);
	return rc;
}

bool pmfuse_fs_read_source(const struct pmfuse_fs *fs, const void *addr, int *fd, uint64_t *off)
{
	const uint8_t *p = addr, *base = pmfuse_pool_base(fs->pool);

	*fd = pmfuse_pool_read_fd(fs->pool);
	if (*fd < 0 || p < base || p >= base + pmfuse_pool_size(fs->pool))
		return false;
	*off = (uint64_t)(p - base);
	return true;
}

static ssize_t pread_core(struct pmfuse_fs *fs, uint64_t ino, bool lnk, void *buf, size_t len,
			  uint64_t off)
{
	uint8_t *dst = buf;
	struct file f;
	int rc;

	rc = file_get(fs, ino, lnk, &f);
	if (rc)
		return rc;
	return read_walk(&f, off, len, copy_piece, &dst);
}

ssize_t pmfuse_data_pread_locked(struct pmfuse_fs *fs, uint64_t ino, void *buf, size_t len,
				 uint64_t off)
{
	return pread_core(fs, ino, true, buf, len, off);
}

ssize_t pmfuse_fs_pread(struct pmfuse_fs *fs, uint64_t ino, void *buf, size_t len, uint64_t off)
{
	ssize_t n;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	n = pread_core(fs, ino, false, buf, len, off);
	fs_unlock(fs);
	fs_iunlock(fs);
	return n;
}

/* ---- filling holes -------------------------------------------------------------------------- */

uint64_t pmfuse_data_reserve(const struct pmfuse_fs *fs)
{
	const struct pmfuse_sb *sb = &fs->vol->sb;
	uint64_t data = pmfuse_le64(sb->sb2_block) - pmfuse_le64(sb->data_start);

	return PMFUSE_MIN(PMFUSE_MAX(data / 128, 8u), 256u);
}

/* Blocks data may still take (free blocks beyond the reserve). */
static uint64_t data_avail(const struct pmfuse_fs *fs)
{
	uint64_t free_blocks = pmfuse_alloc_free_blocks(fs->alloc), r = pmfuse_data_reserve(fs);

	return free_blocks > r ? free_blocks - r : 0;
}

uint64_t pmfuse_data_avail(const struct pmfuse_fs *fs)
{
	return data_avail(fs);
}

int pmfuse_data_feature_unwritten(struct pmfuse_fs *fs)
{
	struct pmfuse_volume *vol = fs->vol;
	uint64_t incompat = pmfuse_le64(vol->sb.incompat);

	if (incompat & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN)
		return 0;
	/* durable in both copies before any transaction can commit an unwritten record */
	pmfuse_set_le64(&vol->sb.incompat, incompat | PMFUSE_FEATURE_INCOMPAT_UNWRITTEN);
	return pmfuse_volume_write_sb(vol);
}

/* Counts the unmapped blocks of a walked range (start .pos, end .end) in .blocks, but for the
 * stretch after the last extent: the caller adds end - pos; and the unwritten extents. */
struct holes {
	uint64_t pos, end, blocks;
	uint64_t unwritten;          /* unwritten extents met */
};

static int count_holes(void *arg, const struct pmfuse_iext *e)
{
	struct holes *h = arg;

	if (e->fblock > h->pos)
		h->blocks += e->fblock - h->pos;
	h->pos = PMFUSE_MIN(h->end, e->fblock + e->len);
	h->unwritten += !!(e->flags & PMFUSE_EXTENT_UNWRITTEN);
	return 0;
}

/* What new blocks hold: file bytes [lo, hi) come from src + (x - lo), everything else is zero
 * (src NULL: all zeros). */
struct fill {
	const uint8_t *src;
	uint64_t lo, hi;
};

/* Stores of file data: non-temporal for large copies through the mapping, flushed later by the
 * caller in one pmfuse_pool_flush_data over the whole range. */
static unsigned data_flags(uint64_t len)
{
	return PMFUSE_MEM_NOFLUSH | (len >= NT_MIN ? PMFUSE_MEM_NONTEMPORAL : 0);
}

static uint64_t pool_off(const struct file *f, const void *addr)
{
	return pmfuse_pool_offset(f->fs->pool, addr);
}

/* Declares [dst, dst + len), just written and flushed, to tx (no undo, drained at commit). */
static int declare_written(struct pmfuse_tx *tx, uint8_t *dst, uint64_t len)
{
	for (uint64_t d = 0; d < len; d += DECLARE_MAX) {
		int rc = pmfuse_tx_add_written(tx, dst + d, PMFUSE_MIN(DECLARE_MAX, len - d));

		if (rc)
			return rc;
	}
	return 0;
}

/* Writes file blocks [fb, fb + n), just allocated at pblock, as fl says: whole blocks, the data
 * and zeros around it, through the pool's data path (pmfuse_pool_write_data), flushed; the
 * commit drains them before the mapping is durable. */
static int fill_blocks(struct pmfuse_tx *tx, const struct file *f, uint64_t fb, uint64_t pblock,
		       uint64_t n, const struct fill *fl)
{
	struct pmfuse_pool *pool = f->fs->pool;
	uint8_t *dst = pool_block(f, pblock);
	uint64_t s = fb * f->bs, t = (fb + n) * f->bs, base = pool_off(f, dst);
	uint64_t lo = s, hi = s;
	int rc = 0;

	if (fl->src && fl->hi > s && fl->lo < t) {
		lo = PMFUSE_MAX(fl->lo, s);
		hi = PMFUSE_MIN(fl->hi, t);
	}
	if (lo > s)
		rc = pmfuse_pool_write_data(pool, base, NULL, lo - s, data_flags(lo - s));
	if (!rc && hi > lo)
		rc = pmfuse_pool_write_data(pool, base + (lo - s), fl->src + (lo - fl->lo), hi - lo,
					    data_flags(hi - lo));
	if (!rc && t > hi)
		rc = pmfuse_pool_write_data(pool, base + (hi - s), NULL, t - hi, data_flags(t - hi));
	if (rc)
		return rc;
	pmfuse_pool_flush_data(pool, base, t - s);
	/* new blocks: nothing to undo, but the commit must drain them (and the checker of debug
	 * builds must know that they change) */
	return declare_written(tx, dst, t - s);
}

/*
 * What file block fb is, from one lookup: mapped (returns 1, *e is its extent) or in a hole
 * (returns 0) that ends at the next extent or at limit (*hole_end), where new blocks should go
 * right after the extent before it (*goal; 0 when there is none).
 */
static int block_state(const struct file *f, uint64_t fb, uint64_t limit, struct pmfuse_iext *e,
		       uint64_t *hole_end, uint64_t *goal)
{
	struct pmfuse_iext l, r;
	int rc = pmfuse_extent_around(&f->map, fb, &l, &r);

	if (rc)
		return rc;
	if (l.len && fb < l.fblock + l.len) {
		*e = l;
		return 1;
	}
	*hole_end = r.len ? PMFUSE_MIN(r.fblock, limit) : limit;
	*goal = l.len ? l.pblock + l.len : 0;
	return 0;
}

/*
 * Inside tx: allocates and maps up to n blocks of the hole at file block fb, with at most
 * b->recs allocator extents starting at or after goal, filled as fl says, or unwritten and not
 * stored into at all when fl is NULL (preallocation: E6). *mapped gets the blocks mapped (> 0 on
 * success). Stops early when the allocator has nothing more (the caller commits what is mapped).
 */
static int map_hole(struct pmfuse_tx *tx, struct file *f, uint64_t fb, uint64_t n, uint64_t goal,
		    const struct pmfuse_extent_budget *b, const struct fill *fl, uint64_t *mapped,
		    uint64_t *recs_used)
{
	struct pmfuse_iext x;
	uint64_t done = 0, recs = 0;
	int rc;

	while (done < n && recs < b->recs) {
		uint64_t want = PMFUSE_MIN(n - done, (uint64_t)PMFUSE_EXTENT_MAX_LEN);

		want = PMFUSE_MIN(want, data_avail(f->fs));
		rc = want ? pmfuse_alloc_extent(tx, f->fs->alloc, goal, 1, want, &x.pblock, &x.len)
			  : -ENOSPC;
		if (rc == -ENOSPC && done)
			break;
		if (rc)
			return rc;
		x.fblock = fb + done;
		x.flags = fl ? 0 : PMFUSE_EXTENT_UNWRITTEN;
		rc = fl ? fill_blocks(tx, f, x.fblock, x.pblock, x.len, fl) : 0;
		if (!rc)
			rc = pmfuse_extent_insert(tx, &f->map, &x);
		if (rc)
			return rc;
		done += x.len;
		goal = x.pblock + x.len;
		recs++;
	}
	*mapped = done;
	if (recs_used)
		*recs_used = recs;
	return 0;
}

/* Called inside a hole-filling transaction after the mapping, with the blocks mapped so far. */
typedef int (*hole_done_fn)(struct pmfuse_tx *tx, void *arg, uint64_t end_block);

static struct pmfuse_extent_budget budget_halve(struct pmfuse_extent_budget b, uint64_t n)
{
	b.blocks = PMFUSE_MAX(PMFUSE_MIN(b.blocks, n) / 2, 1u);
	b.recs = PMFUSE_MAX(b.recs / 2, 1u);
	return b;
}

/*
 * Fills blocks of the hole [fb, fb + n) in one transaction (as many as the budget allows;
 * *mapped says how many), calls done() inside it, and commits. On -ENOSPC (pool or log full)
 * it retries with half the budget down to one block, and keeps the smaller budget for the
 * caller's next step.
 */
static int fill_hole(struct file *f, uint64_t fb, uint64_t n, uint64_t goal,
		     struct pmfuse_extent_budget *b, const struct fill *fl, hole_done_fn done,
		     void *arg, uint64_t *mapped)
{
	for (;;) {
		uint64_t want = PMFUSE_MIN(n, b->blocks), got = 0;
		struct pmfuse_tx *tx;
		int rc;

		if (!data_avail(f->fs))
			return -ENOSPC;
		tx = pmfuse_tx_begin(f->fs->txm);
		rc = map_hole(tx, f, fb, want, goal, b, fl, &got, NULL);
		if (!rc && done)
			rc = done(tx, arg, fb + got);
		if (!rc) {
			pmfuse_tx_commit(tx);
			*mapped = got;
			return 0;
		}
		pmfuse_tx_abort(tx);
		if (rc != -ENOSPC || want <= 1)
			return rc;
		*b = budget_halve(*b, want);
	}
}

/*
 * Unmaps file blocks [start, end) in as many transactions as the budget needs, top down, so
 * that every commit leaves the map a valid one. The budget shrinks on -ENOSPC as in fill_hole.
 */
static int unmap_range(struct file *f, uint64_t start, uint64_t end,
		       struct pmfuse_extent_budget *b)
{
	while (end > start) {
		struct pmfuse_extent_budget left = *b;
		struct pmfuse_tx *tx = pmfuse_tx_begin(f->fs->txm);
		uint64_t to = end;
		int rc;

		rc = pmfuse_extent_unmap(tx, &f->map, start, &to, &left);
		if (!rc) {
			pmfuse_tx_commit(tx);
			end = to;
			continue;
		}
		pmfuse_tx_abort(tx);
		if (rc != -ENOSPC || (b->recs <= 1 && b->blocks <= 1))
			return rc;
		*b = budget_halve(*b, b->blocks);
	}
	return 0;
}

/* ---- copy-on-write (see the top of this file) ------------------------------------------------ */

/* What replaced blocks hold: file bytes [lo, hi) are new (from src + (x - lo), or zeros when src
 * is NULL); every other byte keeps its old value, copied from the shared blocks. lo == hi: no
 * new bytes (unshare). */
struct cow_fill {
	const uint8_t *src;
	uint64_t lo, hi;
	bool unwritten;       /* none of that: the new blocks are unwritten (ZERO_RANGE's whole
				 blocks), not stored into */
};

static uint64_t cow_hint(const struct file *f)
{
	uint32_t cs = pmfuse_le32(f->ip->cowextsize);

	return cs ? PMFUSE_MIN(cs, PMFUSE_COWEXTSIZE_MAX) : PMFUSE_COWEXTSIZE_DEFAULT;
}

/* Writes file blocks [fb, fb + n), just allocated at newp, as fl says, the old bytes from the
 * shared blocks at oldp, or zeros when oldp is 0 (the shared blocks are unwritten: E6), as
 * fill_blocks: through the data path, flushed, drained at commit. */
static int cow_fill_blocks(struct pmfuse_tx *tx, const struct file *f, uint64_t fb, uint64_t newp,
			   uint64_t n, uint64_t oldp, const struct cow_fill *fl)
{
	struct pmfuse_pool *pool = f->fs->pool;
	uint8_t *dst = pool_block(f, newp);
	const uint8_t *old = oldp ? pool_block(f, oldp) : NULL;
	uint64_t s = fb * f->bs, t = (fb + n) * f->bs, base = pool_off(f, dst);
	uint64_t lo = s, hi = s;
	int rc = 0;

	if (fl->lo < fl->hi && fl->hi > s && fl->lo < t) {
		lo = PMFUSE_MAX(fl->lo, s);
		hi = PMFUSE_MIN(fl->hi, t);
	}
	if (lo > s)
		rc = pmfuse_pool_write_data(pool, base, old, lo - s, data_flags(lo - s));
	if (!rc && hi > lo)
		rc = pmfuse_pool_write_data(pool, base + (lo - s),
					    fl->src ? fl->src + (lo - fl->lo) : NULL, hi - lo,
					    data_flags(hi - lo));
	if (!rc && t > hi)
		rc = pmfuse_pool_write_data(pool, base + (hi - s), old ? old + (hi - s) : NULL,
					    t - hi, data_flags(t - hi));
	if (rc)
		return rc;
	pmfuse_pool_flush_data(pool, base, t - s);
	return declare_written(tx, dst, t - s);
}

/*
 * The blocks a CoW for file block fb (shared, mapped by e) replaces, when the operation stores
 * into file blocks up to `end` (exclusive): the stretch of shared blocks around fb inside e and
 * inside the CoW windows (cs blocks, aligned on cs) that [fb, end) touches, and at most maxruns
 * runs of equal counts (each is a refcount record the transaction changes). *lo <= fb < *hi.
 */
static int cow_span(const struct file *f, const struct pmfuse_iext *e, uint64_t fb, uint64_t end,
		    uint64_t cs, uint64_t maxruns, uint64_t *lo, uint64_t *hi)
{
	uint64_t w0 = fb - fb % cs, w1, pos, run, runs = 0;
	bool shared;
	int rc;

	/* down to the window's start: where the shared stretch reaching fb begins */
	pos = PMFUSE_MAX(w0, e->fblock);
	*lo = pos;
	while (pos < fb) {
		rc = share_run(f, e, pos, fb, &shared, &run);
		if (rc)
			return rc;
		pos += run;
		runs = shared ? runs + 1 : 0;
		if (!shared)
			*lo = pos;
	}
	if (runs >= maxruns) {
		*lo = fb;   /* too finely shared below: leave it */
		runs = 0;
	}
	/* up to the end of the last window touched */
	end = PMFUSE_MAX(end, fb + 1);
	w1 = end % cs ? end - end % cs + cs : end;
	for (pos = fb; pos < w1 && runs < maxruns;) {
		rc = share_run(f, e, pos, w1, &shared, &run);
		if (rc)
			return rc;
		if (!shared)
			break;
		pos += run;
		runs++;
		if (pos >= e->fblock + e->len)
			break;
	}
	*hi = pos;
	return 0;
}

/* Allocates up to n blocks for replacing file blocks [fb, fb + n): after the pool block of the
 * file block before fb when that one is private (a file CoW'd window by window stays
 * contiguous), else anywhere. Never takes the data reserve. -ENOSPC. */
static int cow_alloc(struct pmfuse_tx *tx, const struct file *f, uint64_t fb, uint64_t n,
		     uint64_t *start, uint64_t *len)
{
	uint64_t avail = data_avail(f->fs), goal = 0, run;
	struct pmfuse_iext l;
	bool shared;
	int rc;

	if (!avail)
		return -ENOSPC;
	if (fb) {
		rc = pmfuse_extent_find(&f->map, fb - 1, &l);
		if (!rc && l.fblock < fb) {
			rc = share_run(f, &l, fb - 1, fb, &shared, &run);
			if (!rc && !shared)
				goal = l.pblock + (fb - l.fblock);
		}
		if (rc && rc != -ENOENT)
			return rc;
	}
	return pmfuse_alloc_extent(tx, f->fs->alloc, goal, 1, PMFUSE_MIN(n, avail), start, len);
}

/*
 * Inside tx: replaces the mapping of file blocks [fb, fb + n), which e maps and which are
 * shared, by new blocks filled as fl says (steps 1-4 of the diagram at the top). *got gets the
 * blocks replaced, from fb on (>= 1; fewer than n when the pool has no run that long). Shared
 * unwritten blocks hold nothing to copy: with new bytes, the new blocks get them and zeros
 * around them and are written; without (unshare), they stay unwritten and are not stored into.
 */
static int cow_step(struct pmfuse_tx *tx, struct file *f, const struct pmfuse_iext *e,
		    uint64_t fb, uint64_t n, const struct cow_fill *fl, uint64_t *got)
{
	struct pmfuse_extent_budget b;
	struct pmfuse_iext x;
	uint64_t end;
	int rc;

	bool unwritten = e->flags & PMFUSE_EXTENT_UNWRITTEN;

	n = PMFUSE_MIN(n, e->fblock + e->len - fb);
	rc = cow_alloc(tx, f, fb, n, &x.pblock, &x.len);
	if (rc)
		return rc;
	x.fblock = fb;
	x.flags = fl->unwritten || (unwritten && fl->lo >= fl->hi) ? PMFUSE_EXTENT_UNWRITTEN : 0;
	if (!x.flags)
		rc = cow_fill_blocks(tx, f, fb, x.pblock, x.len,
				     unwritten ? 0 : e->pblock + (fb - e->fblock), fl);
	if (rc)
		return rc;
	/* one extent, and as many refcount records as one budget pays for (cow_span): one pass,
	 * unless records longer than PMFUSE_EXTENT_MAX_LEN split a run */
	end = fb + x.len;
	while (!rc && end > fb) {
		pmfuse_extent_budget_init(f->fs, &b);
		rc = pmfuse_extent_unmap(tx, &f->map, fb, &end, &b);
	}
	if (!rc)
		rc = pmfuse_extent_insert(tx, &f->map, &x);
	if (!rc)
		*got = x.len;
	return rc;
}

/* cow_step in a transaction of its own, with done() (may be NULL) inside it. */
static int cow_tx(struct file *f, const struct pmfuse_iext *e, uint64_t fb, uint64_t n,
		  const struct cow_fill *fl, hole_done_fn done, void *arg, uint64_t *got)
{
	struct pmfuse_tx *tx;
	int rc;

	if (!data_avail(f->fs))
		return -ENOSPC;
	tx = pmfuse_tx_begin(f->fs->txm);
	rc = cow_step(tx, f, e, fb, n, fl, got);
	if (!rc && done)
		rc = done(tx, arg, fb + *got);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

/*
 * The copy-on-write for a store at file block fb (shared, mapped by e) by an operation that
 * stores into file blocks below end: replaces the shared stretch of the CoW windows around it
 * (cow_span), or only the blocks stored into when the pool cannot take the stretch, in one
 * transaction with done() (may be NULL) inside. *next gets the block after those replaced.
 */
static int cow_store(struct file *f, const struct pmfuse_iext *e, uint64_t fb, uint64_t end,
		     const struct cow_fill *fl, const struct pmfuse_extent_budget *b,
		     hole_done_fn done, void *arg, uint64_t *next)
{
	uint64_t lo, hi, got;
	int rc;

	/* each run is a refcount record to change: as many as a fresh budget pays for at once */
	rc = cow_span(f, e, fb, end, cow_hint(f), b->recs > 3 ? b->recs - 3 : 1, &lo, &hi);
	if (rc)
		return rc;
	if (hi - lo > data_avail(f->fs)) {
		lo = fb;
		hi = PMFUSE_MIN(hi, PMFUSE_MAX(end, fb + 1));
	}
	rc = cow_tx(f, e, lo, PMFUSE_MIN(hi - lo, b->blocks), fl, done, arg, &got);
	if (!rc)
		*next = lo + got;
	return rc;
}

/* Written shared blocks among file blocks [fb0, fb1): what zeroing the range by CoW needs at
 * most (unwritten ones need nothing: they read as zeros already). */
struct shared_count {
	const struct file *f;
	uint64_t lo, hi, blocks;
	int err;
};

static int count_shared_ext(void *arg, const struct pmfuse_iext *e)
{
	struct shared_count *c = arg;
	uint64_t pos = PMFUSE_MAX(e->fblock, c->lo), end = PMFUSE_MIN(e->fblock + e->len, c->hi);

	if (e->flags & PMFUSE_EXTENT_UNWRITTEN)
		return 0;
	while (pos < end) {
		uint64_t run;
		bool shared;

		c->err = share_run(c->f, e, pos, end, &shared, &run);
		if (c->err)
			return 1;
		if (shared)
			c->blocks += run;
		pos += run;
	}
	return 0;
}

static int count_shared(const struct file *f, uint64_t fb0, uint64_t fb1, uint64_t *blocks)
{
	struct shared_count c = { .f = f, .lo = fb0, .hi = fb1, .blocks = 0, .err = 0 };
	int rc;

	*blocks = 0;
	if (fb0 >= fb1 || !pmfuse_btree_count(&f->rc))
		return 0;
	rc = pmfuse_extent_walk(&f->map, fb0, fb1, count_shared_ext, &c);
	if (rc < 0 || c.err)
		return rc < 0 ? rc : c.err;
	*blocks = c.blocks;
	return 0;
}

int pmfuse_data_unshare(struct pmfuse_fs *fs, uint64_t ino, uint64_t off, uint64_t len)
{
	static const struct cow_fill keep = { .src = NULL, .lo = 0, .hi = 0 };
	struct pmfuse_extent_budget b;
	struct pmfuse_iext e;
	struct file f;
	uint64_t size, end, fb, fb1;
	int rc;

	if (fs->readonly)
		return -EROFS;
	rc = file_get(fs, ino, false, &f);
	if (rc)
		return rc;
	size = file_size(&f);
	if (off >= size)
		return 0;
	end = !len || len > size - off ? size : off + len;
	fb1 = div_up(end, f.bs);
	pmfuse_extent_budget_init(fs, &b);
	for (fb = off / f.bs; fb < fb1;) {
		uint64_t hole_end, goal, run;
		bool shared;

		rc = block_state(&f, fb, fb1, &e, &hole_end, &goal);
		if (rc < 0)
			return rc;
		if (!rc) {
			fb = hole_end;
			continue;
		}
		rc = share_run(&f, &e, fb, fb1, &shared, &run);
		if (rc)
			return rc;
		if (shared) {
			rc = cow_tx(&f, &e, fb, PMFUSE_MIN(run, b.blocks), &keep, NULL, NULL, &run);
			if (rc)
				return rc;
		}
		fb += run;
	}
	return 0;
}

/* ---- writing -------------------------------------------------------------------------------- */

struct wctx {
	struct file f;
	const uint8_t *buf;
	uint64_t off, end;            /* the bytes being written */
	uint64_t done;                /* [off, done) is written */
	const struct pmfuse_cred *cred;
	bool privs_dropped;           /* the write cleared setuid or setgid */
	bool keep_times;              /* PMFUSE_WRITE_KEEP_TIMES */
	struct pmfuse_extent_budget budget;
};

/* Inode part of a write's transaction: size up to `to`, times, setuid/setgid. */
static int write_inode(struct pmfuse_tx *tx, struct wctx *w, uint64_t to)
{
	struct pmfuse_inode *ip = w->f.ip;
	uint32_t mode, kept;
	int rc;

	rc = pmfuse_inode_change(tx, w->f.leaf, ip, sizeof(*ip));
	if (rc)
		return rc;
	mode = pmfuse_le32(ip->mode);
	kept = pmfuse_fs_mode_after_change(mode, pmfuse_le32(ip->gid), w->cred);

	if (to > pmfuse_le64(ip->size))
		pmfuse_set_le64(&ip->size, to);
	if (kept != mode) {
		pmfuse_set_le32(&ip->mode, kept);
		w->privs_dropped = true;
	}
	if (w->keep_times)
		return 0;
	return pmfuse_inode_touch(tx, w->f.leaf, ip, PMFUSE_TIME_M | PMFUSE_TIME_C);
}

static int write_hole_done(struct pmfuse_tx *tx, void *arg, uint64_t end_block)
{
	struct wctx *w = arg;

	return write_inode(tx, w, PMFUSE_MIN(w->end, end_block * w->f.bs));
}

/* The same after a CoW of blocks up to end_block, which may have started below w->done. */
static int write_cow_done(struct pmfuse_tx *tx, void *arg, uint64_t end_block)
{
	struct wctx *w = arg;

	return write_inode(tx, w, PMFUSE_MAX(w->done, PMFUSE_MIN(w->end, end_block * w->f.bs)));
}

static int write_final(struct wctx *w)
{
	struct pmfuse_inode *ip = w->f.ip;
	struct pmfuse_tx *tx;
	int rc;

	/* nothing for the inode to say (an overwrite whose times are the kernel's): the stores
	 * only need to be durable */
	if (w->keep_times && w->done <= pmfuse_le64(ip->size) &&
	    pmfuse_fs_mode_after_change(pmfuse_le32(ip->mode), pmfuse_le32(ip->gid), w->cred) ==
	    pmfuse_le32(ip->mode)) {
		pmfuse_pool_drain(w->f.fs->pool);
		return 0;
	}
	tx = pmfuse_tx_begin(w->f.fs->txm);
	rc = write_inode(tx, w, w->done);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

/*
 * Declares file bytes [pos, to) at or past EOF, mapped by e, as zeros to restore (E5 says they
 * are zero now), then stores the new bytes there through the data path, unflushed: the commit
 * flushes the declared range and drains it.
 */
static int write_past_eof(struct pmfuse_tx *tx, struct wctx *w, const struct pmfuse_iext *e,
			  uint64_t pos, uint64_t to)
{
	struct file *f = &w->f;
	uint8_t *dst = ext_addr(f, e, pos);
	int rc;

	for (uint64_t d = 0; d < to - pos; d += DECLARE_MAX) {
		rc = pmfuse_tx_add_zero(tx, dst + d, PMFUSE_MIN(DECLARE_MAX, to - pos - d));
		if (rc)
			return rc;
	}
	return pmfuse_pool_write_data(f->fs->pool, pool_off(f, dst), w->buf + (pos - w->off),
				      to - pos, data_flags(to - pos));
}

/* Stores file bytes [pos, to), below EOF, in place (mapped by e, unshared), flushed, not
 * drained: an overwrite, which needs no undo (a crash may tear it, as any in-place store). */
static int write_below_eof(struct wctx *w, const struct pmfuse_iext *e, uint64_t pos, uint64_t to)
{
	struct file *f = &w->f;

	return pmfuse_pool_write_data(f->fs->pool, pool_off(f, ext_addr(f, e, pos)),
				      w->buf + (pos - w->off), to - pos,
				      PMFUSE_MEM_NODRAIN |
				      (to - pos >= NT_MIN ? PMFUSE_MEM_NONTEMPORAL : 0));
}

/*
 * Stores [w->done, to) into mapped, unshared blocks in place (the general path). Bytes below EOF
 * are overwritten (the inode update follows, *pending). Bytes at or past EOF (the rest of a
 * partly filled last block, or blocks preallocated past EOF) go in with the transaction that
 * moves EOF past them, declared as zeros to restore (write_past_eof).
 */
static int write_in_place(struct wctx *w, const struct pmfuse_iext *e, uint64_t to, bool *pending)
{
	struct file *f = &w->f;
	uint64_t eof = file_size(f);
	struct pmfuse_tx *tx;
	int rc;

	if (w->done < eof) {
		uint64_t below = PMFUSE_MIN(to, eof);

		rc = write_below_eof(w, e, w->done, below);
		if (rc)
			return rc;
		w->done = below;
		*pending = true;
	}
	if (w->done >= to)
		return 0;
	tx = pmfuse_tx_begin(f->fs->txm);
	rc = write_past_eof(tx, w, e, w->done, to);
	if (!rc)
		rc = write_inode(tx, w, to);
	if (rc) {
		pmfuse_tx_abort(tx);   /* the zeros are back */
		return rc;
	}
	pmfuse_tx_commit(tx);
	w->done = to;
	*pending = false;
	return 0;
}

/*
 * Converts unwritten, unshared blocks from file block fb on (at most n, inside e) to written
 * for the write: one transaction stores the new bytes and zeros in every other byte of the
 * blocks (fill_blocks: whole blocks, declared written, no undo, since their old bytes were
 * never readable and a crash that undoes the conversion needs them back no more than before),
 * flips the flag and updates the inode; the commit drains the stores before the record says
 * written. So neither a crash nor the rest
 * of a partly written block can show what the blocks held before. Budgeted and retried with
 * half the budget on -ENOSPC as fill_hole.
 */
static int write_unwritten(struct wctx *w, const struct pmfuse_iext *e, uint64_t fb, uint64_t n)
{
	struct file *f = &w->f;
	struct fill fl = { .src = w->buf, .lo = w->off, .hi = w->end };

	for (;;) {
		uint64_t want = PMFUSE_MIN(n, w->budget.blocks);
		struct pmfuse_tx *tx = pmfuse_tx_begin(f->fs->txm);
		int rc;

		rc = fill_blocks(tx, f, fb, e->pblock + (fb - e->fblock), want, &fl);
		if (!rc)
			rc = pmfuse_extent_convert(tx, &f->map, e, fb, fb + want, 0);
		if (!rc)
			rc = write_inode(tx, w, PMFUSE_MIN(w->end, (fb + want) * f->bs));
		if (!rc) {
			pmfuse_tx_commit(tx);
			w->done = PMFUSE_MIN(w->end, (fb + want) * f->bs);
			return 0;
		}
		pmfuse_tx_abort(tx);
		if (rc != -ENOSPC || want <= 1)
			return rc;
		w->budget = budget_halve(w->budget, want);
	}
}

/*
 * The whole write in one transaction (see "Writes" at the top): overwrites below EOF, stores
 * past EOF into mapped blocks (zero entries), fresh blocks for the holes, size and times.
 * Unwritten blocks it touches are converted in it (whole blocks written, then flagged written).
 * Returns 1 when the write is not for this path: it touches shared blocks (copy-on-write goes
 * window by window), its holes need more than one extent budget or the space left, the
 * allocator cannot map a hole in the budget's extents, or the log fills up; then write_range
 * takes it in steps. Having aborted, it leaves nothing changed but overwrites below EOF, which
 * the steps store again.
 */
static int write_one_tx(struct wctx *w)
{
	struct file *f = &w->f;
	uint64_t fb0 = w->off / f->bs, fb1 = div_up(w->end, f->bs), eof = file_size(f);
	uint64_t pos = w->off, shared;
	struct holes h = { .pos = fb0, .end = fb1 };
	struct pmfuse_extent_budget left = w->budget;
	const struct fill fl = { .src = w->buf, .lo = w->off, .hi = w->end };
	struct pmfuse_tx *tx;
	int rc;

	rc = count_shared(f, fb0, fb1, &shared);
	if (!rc)
		rc = pmfuse_extent_walk(&f->map, fb0, fb1, count_holes, &h);
	if (rc < 0)
		return rc;
	h.blocks += fb1 - h.pos;
	if (shared || h.blocks > left.blocks || h.blocks > data_avail(f->fs))
		return 1;

	tx = pmfuse_tx_begin(f->fs->txm);
	while (!rc && pos < w->end) {
		uint64_t fb = pos / f->bs, hole_end, goal, got, recs, to;
		struct pmfuse_iext e;

		rc = block_state(f, fb, fb1, &e, &hole_end, &goal);
		if (rc > 0 && (e.flags & PMFUSE_EXTENT_UNWRITTEN)) {
			/* convert: whole blocks written (data, zeros around it) and flagged
			 * written in this transaction, as write_unwritten does in steps */
			uint64_t end = PMFUSE_MIN(fb1, e.fblock + e.len), run;
			bool ushared;

			/* count_shared leaves unwritten blocks out: shared ones take the CoW path */
			rc = share_run(f, &e, fb, end, &ushared, &run);
			if (!rc && ushared)
				rc = 1;
			if (rc)
				break;
			end = fb + run;
			rc = fill_blocks(tx, f, fb, e.pblock + (fb - e.fblock), end - fb, &fl);
			if (!rc)
				rc = pmfuse_extent_convert(tx, &f->map, &e, fb, end, 0);
			pos = PMFUSE_MIN(w->end, end * f->bs);
			continue;
		}
		if (rc > 0) {
			to = PMFUSE_MIN(w->end, ext_end_byte(f, &e));
			rc = 0;
			if (pos < eof) {
				uint64_t below = PMFUSE_MIN(to, eof);

				rc = write_below_eof(w, &e, pos, below);
				if (!rc)
					rc = declare_written(tx, ext_addr(f, &e, pos), below - pos);
				pos = below;
			}
			if (!rc && pos < to)
				rc = write_past_eof(tx, w, &e, pos, to);
			pos = to;
			continue;
		}
		if (rc < 0)
			break;
		rc = map_hole(tx, f, fb, hole_end - fb, goal, &left, &fl, &got, &recs);
		if (rc == -ENOSPC || (!rc && got < hole_end - fb))
			rc = 1;   /* the allocator is fragmented or full: in steps */
		left.recs -= PMFUSE_MIN(left.recs, recs);
		left.blocks -= PMFUSE_MIN(left.blocks, got);
		pos = PMFUSE_MIN(w->end, hole_end * f->bs);
	}
	if (!rc)
		rc = write_inode(tx, w, w->end);
	if (rc == -ENOSPC)
		rc = 1;   /* the log is full (many pieces): in steps, which also handle a full pool */
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	w->done = w->end;
	return 0;
}

/* Writes what it can of [w->done, w->end) in steps; w->done tells how far it got, also on error. */
static int write_range(struct wctx *w)
{
	struct file *f = &w->f;
	struct pmfuse_iext e;
	bool pending = false;   /* overwritten bytes not yet followed by an inode update */
	int rc = 0;

	while (w->done < w->end) {
		uint64_t fb = w->done / f->bs, limit = div_up(w->end, f->bs);
		uint64_t hole_end, goal, got, run, to;
		struct fill fl = { .src = w->buf, .lo = w->off, .hi = w->end };
		struct cow_fill cf = { .src = w->buf, .lo = w->off, .hi = w->end };
		bool shared;

		rc = block_state(f, fb, limit, &e, &hole_end, &goal);
		if (rc < 0)
			break;
		if (rc) {
			rc = share_run(f, &e, fb, limit, &shared, &run);
			if (rc)
				break;
			if (shared) {
				/* never into a shared block: new blocks, in one transaction */
				rc = cow_store(f, &e, fb, limit, &cf, &w->budget, write_cow_done, w,
					       &got);
				if (rc)
					break;
				w->done = PMFUSE_MAX(w->done, PMFUSE_MIN(w->end, got * f->bs));
				pending = false;
				continue;
			}
			if (e.flags & PMFUSE_EXTENT_UNWRITTEN) {
				rc = write_unwritten(w, &e, fb, run);
				if (rc)
					break;
				pending = false;
				continue;
			}
			to = PMFUSE_MIN(w->end, (fb + run) * f->bs);
			rc = write_in_place(w, &e, to, &pending);
			if (rc)
				break;
			continue;
		}
		rc = fill_hole(f, fb, hole_end - fb, goal, &w->budget, &fl, write_hole_done, w,
			       &got);
		if (rc)
			break;
		w->done = PMFUSE_MIN(w->end, (fb + got) * f->bs);
		pending = false;
	}
	if (pending) {
		int rc2 = write_final(w);

		if (rc2) {
			/* the bytes are in place but the inode does not say so: make them durable
			 * anyway, and report the failure rather than a count */
			pmfuse_pool_drain(f->fs->pool);
			w->done = w->off;
			rc = rc2;
		}
	}
	return rc;
}

static ssize_t write_core(struct pmfuse_fs *fs, uint64_t ino, bool lnk, const void *buf,
			  size_t len, uint64_t off, unsigned flags, const struct pmfuse_cred *cred,
			  bool *privs_dropped)
{
	struct wctx w = { .buf = buf, .cred = cred, .keep_times = flags & PMFUSE_WRITE_KEEP_TIMES };
	bool append = flags & PMFUSE_WRITE_APPEND;
	int rc;

	if (fs->readonly)
		return -EROFS;
	rc = file_get(fs, ino, lnk, &w.f);
	if (rc)
		return rc;
	if (append)
		off = file_size(&w.f);
	if (off >= PMFUSE_FILE_SIZE_MAX)
		return -EFBIG;
	len = PMFUSE_MIN(len, (size_t)SSIZE_MAX);
	if (len > PMFUSE_FILE_SIZE_MAX - off)
		len = PMFUSE_FILE_SIZE_MAX - off;
	if (!len)
		return 0;
	w.off = w.done = off;
	w.end = off + len;
	pmfuse_extent_budget_init(fs, &w.budget);
	rc = write_one_tx(&w);
	if (rc > 0)
		rc = write_range(&w);
	if (privs_dropped)
		*privs_dropped = w.privs_dropped;
	if (w.done > off)
		return (ssize_t)(w.done - off);
	return rc;
}

ssize_t pmfuse_data_write_locked(struct pmfuse_fs *fs, uint64_t ino, const void *buf,
				 size_t len, uint64_t off)
{
	return write_core(fs, ino, true, buf, len, off, 0, NULL, NULL);
}

ssize_t pmfuse_data_write(struct pmfuse_fs *fs, uint64_t ino, const void *buf, size_t len,
			  uint64_t off, const struct pmfuse_cred *cred)
{
	return write_core(fs, ino, false, buf, len, off, 0, cred, NULL);
}

ssize_t pmfuse_fs_write_flags(struct pmfuse_fs *fs, uint64_t ino, const void *buf, size_t len,
			      uint64_t off, unsigned flags, const struct pmfuse_cred *cred,
			      bool *privs_dropped)
{
	ssize_t n;

	*privs_dropped = false;
	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	n = write_core(fs, ino, false, buf, len, off, flags, cred, privs_dropped);
	fs_unlock(fs);
	fs_iunlock(fs);
	return n;
}

ssize_t pmfuse_fs_write(struct pmfuse_fs *fs, uint64_t ino, const void *buf, size_t len,
			uint64_t off, bool append, const struct pmfuse_cred *cred)
{
	bool dropped;

	return pmfuse_fs_write_flags(fs, ino, buf, len, off, append ? PMFUSE_WRITE_APPEND : 0,
				     cred, &dropped);
}

/* ---- truncate ------------------------------------------------------------------------------- */

int pmfuse_data_trim(struct pmfuse_fs *fs, uint64_t ino, uint64_t from_block)
{
	struct pmfuse_extent_budget b;
	struct file f;
	int rc;

	if (fs->readonly)
		return -EROFS;
	rc = file_get(fs, ino, true, &f);
	if (rc)
		return rc;
	pmfuse_extent_budget_init(fs, &b);
	return unmap_range(&f, from_block, f.map.fmax, &b);
}

struct count {
	struct pmfuse_extent_budget left;
	bool over;
};

/* Does unmapping everything walked fit one budget? Stops walking as soon as it does not. */
static int count_ext(void *arg, const struct pmfuse_iext *e)
{
	struct count *c = arg;

	if (!c->left.recs || e->len > c->left.blocks) {
		c->over = true;
		return 1;
	}
	c->left.recs--;
	c->left.blocks -= e->len;
	return 0;
}

/* Zeroes the rest of the block holding byte size, if it is mapped: logged, so that it is undone
 * together with the size change it belongs to; a shared block is replaced (copy-on-write) in the
 * same transaction instead. */
static int zero_tail(struct pmfuse_tx *tx, struct file *f, uint64_t size)
{
	struct pmfuse_iext e;
	uint64_t fb = size / f->bs, run;
	bool shared;
	uint8_t *p;
	size_t n;
	int rc;

	if (!(size % f->bs))
		return 0;
	rc = pmfuse_extent_find(&f->map, fb, &e);
	if (rc == -ENOENT || (!rc && e.fblock > fb))
		return 0;   /* the new last block is a hole */
	if (rc)
		return rc;
	if (e.flags & PMFUSE_EXTENT_UNWRITTEN)
		return 0;   /* reads as zeros already, and E5 is about written blocks */
	rc = share_run(f, &e, fb, fb + 1, &shared, &run);
	if (rc)
		return rc;
	if (shared) {
		struct cow_fill zeros = { .src = NULL, .lo = size, .hi = (fb + 1) * f->bs };

		return cow_step(tx, f, &e, fb, 1, &zeros, &run);
	}
	p = ext_addr(f, &e, size);
	n = f->bs - size % f->bs;
	rc = pmfuse_tx_add(tx, p, n);
	if (!rc)
		memset(p, 0, n);
	return rc;
}

enum shrink_mode {
	SHRINK_WHOLE,    /* everything in one transaction (-ENOSPC when it does not fit) */
	SHRINK_ORPHAN,   /* size now, blocks later: the inode goes on the orphan list */
	SHRINK_STEP,     /* as much as one transaction can unmap, and the size down to there */
};

/*
 * One shrinking transaction. All modes zero the rest of the new last block (when the size
 * reaches its final value) and set size and times. WHOLE also unmaps every block from `from`
 * on; ORPHAN puts the inode on the orphan list (when it has names: an unlinked inode is there
 * already) so that the trim that follows survives a crash; STEP unmaps from the top as far as
 * the budget goes and truncates to the lowest block it unmapped, a smaller truncate complete in
 * itself, for when the orphan entry cannot get a block (a pool full to the last block). *done
 * (STEP) says whether nothing is left past `from`.
 */
static int shrink_tx(struct file *f, uint64_t size, uint64_t from, enum shrink_mode mode,
		     bool *done)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(f->fs->txm);
	struct pmfuse_extent_budget b;
	uint64_t end = f->map.fmax, to = size, old = file_size(f);
	int rc = 0;

	if (mode != SHRINK_ORPHAN) {
		pmfuse_extent_budget_init(f->fs, &b);
		rc = pmfuse_extent_unmap(tx, &f->map, from, &end, &b);
		if (!rc && end != from) {
			if (mode == SHRINK_WHOLE)
				rc = -ENOSPC;   /* the estimate was wrong: take the orphan route */
			else
				to = PMFUSE_MIN(old, end * f->bs);
		}
	}
	if (!rc && to == size)
		rc = zero_tail(tx, f, size);
	if (!rc && to < old) {
		rc = pmfuse_inode_change(tx, f->leaf, f->ip, sizeof(*f->ip));
		if (!rc) {
			pmfuse_set_le64(&f->ip->size, to);
			rc = pmfuse_inode_touch(tx, f->leaf, f->ip, PMFUSE_TIME_M | PMFUSE_TIME_C);
		}
	}
	if (!rc && mode == SHRINK_ORPHAN && pmfuse_le32(f->ip->nlink))
		rc = pmfuse_orphan_add(f->fs, tx, f->ino);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	if (done)
		*done = end == from;
	return 0;
}

static int grow_tx(struct file *f, uint64_t size)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(f->fs->txm);
	int rc;

	rc = pmfuse_inode_change(tx, f->leaf, f->ip, sizeof(*f->ip));
	if (!rc) {
		pmfuse_set_le64(&f->ip->size, size);
		rc = pmfuse_inode_touch(tx, f->leaf, f->ip, PMFUSE_TIME_M | PMFUSE_TIME_C);
	}
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

int pmfuse_data_set_size(struct pmfuse_fs *fs, uint64_t ino, uint64_t size)
{
	struct pmfuse_tx *tx;
	struct count c = { .over = false };
	struct file f;
	uint64_t from;
	bool done;
	int rc;

	if (fs->readonly)
		return -EROFS;
	if (size > PMFUSE_FILE_SIZE_MAX)
		return -EFBIG;
	rc = file_get(fs, ino, true, &f);
	if (rc)
		return rc;
	if (size >= file_size(&f))
		return grow_tx(&f, size);

	from = div_up(size, f.bs);
	pmfuse_extent_budget_init(fs, &c.left);
	rc = pmfuse_extent_walk(&f.map, from, f.map.fmax, count_ext, &c);
	if (rc < 0)
		return rc;
	if (!c.over) {
		rc = shrink_tx(&f, size, from, SHRINK_WHOLE, NULL);
		if (rc != -ENOSPC)
			return rc;
	}
	/* each STEP frees blocks or finishes the truncate, so this ends */
	while ((rc = shrink_tx(&f, size, from, SHRINK_ORPHAN, NULL)) == -ENOSPC) {
		rc = shrink_tx(&f, size, from, SHRINK_STEP, &done);
		if (rc || done)
			return rc;
	}
	if (!rc)
		rc = pmfuse_data_trim(fs, ino, from);
	if (rc || !pmfuse_le32(f.ip->nlink))
		return rc;   /* on error the orphan entry stays: the next open finishes the trim */
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_orphan_del(fs, tx, ino);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

/* ---- fallocate ------------------------------------------------------------------------------ */

/* File block ranges a preallocation mapped, to take back if it fails. */
struct ranges {
	struct { uint64_t lo, hi; } *r;
	size_t n, cap;
};

static int ranges_add(struct ranges *rs, uint64_t lo, uint64_t hi)
{
	if (rs->n && rs->r[rs->n - 1].hi == lo) {
		rs->r[rs->n - 1].hi = hi;
		return 0;
	}
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? rs->cap * 2 : 16;
		void *p = realloc(rs->r, cap * sizeof(*rs->r));

		if (!p)
			return -ENOMEM;
		rs->r = p;
		rs->cap = cap;
	}
	rs->r[rs->n].lo = lo;
	rs->r[rs->n].hi = hi;
	rs->n++;
	return 0;
}

/*
 * Maps unwritten blocks over every hole of file blocks [fb0, fb1), recording what it maps in
 * rs; nothing is stored into them (E6), so the cost is the extent records and bitmap words, not
 * the blocks' size. On failure it unmaps what it mapped, so the file is as before.
 */
static int prealloc(struct file *f, uint64_t fb0, uint64_t fb1, struct ranges *rs)
{
	struct holes h = { .pos = fb0, .end = fb1 };
	struct pmfuse_extent_budget b;
	struct pmfuse_iext e = { 0 };   /* set when block_state() > 0; gcc -O2 cannot tell */
	uint64_t fb = fb0, got;
	int rc;

	/* a cheap early answer when the holes alone cannot fit */
	rc = pmfuse_extent_walk(&f->map, fb0, fb1, count_holes, &h);
	if (rc < 0)
		return rc;
	h.blocks += fb1 - h.pos;
	if (h.blocks > data_avail(f->fs))
		return -ENOSPC;
	if (!h.blocks)
		return 0;
	rc = pmfuse_data_feature_unwritten(f->fs);
	if (rc)
		return rc;

	pmfuse_extent_budget_init(f->fs, &b);
	while (fb < fb1) {
		uint64_t hole_end, goal;

		rc = block_state(f, fb, fb1, &e, &hole_end, &goal);
		if (rc < 0)
			break;
		if (rc) {
			fb = e.fblock + e.len;
			rc = 0;
			continue;
		}
		rc = fill_hole(f, fb, hole_end - fb, goal, &b, NULL, NULL, NULL, &got);
		if (!rc)
			rc = ranges_add(rs, fb, fb + got);
		if (rc)
			break;
		fb += got;
	}
	if (!rc)
		return 0;
	/* take back what was mapped, newest first */
	pmfuse_extent_budget_init(f->fs, &b);
	for (size_t i = rs->n; i-- > 0;) {
		int rc2 = unmap_range(f, rs->r[i].lo, rs->r[i].hi, &b);

		if (rc2)
			pmfuse_log(PMFUSE_LOG_ERR, "inode %llu: taking back preallocated blocks "
				   "%llu..%llu after %s: %s (they stay, unwritten)", ULL(f->ino),
				   ULL(rs->r[i].lo), ULL(rs->r[i].hi), strerror(-rc), strerror(-rc2));
	}
	rs->n = 0;
	return rc;
}

/*
 * Zeroes the written bytes of [lo, hi): unshared blocks in place (flushed; the caller's closing
 * transaction drains), shared ones by copy-on-write with zeros (a transaction each). Unwritten
 * blocks read as zeros already and are left alone.
 */
static int zero_mapped(struct file *f, uint64_t lo, uint64_t hi, unsigned nt)
{
	uint64_t pos = lo, limit = div_up(hi, f->bs);
	struct pmfuse_extent_budget b;
	struct pmfuse_iext e;
	int rc;

	pmfuse_extent_budget_init(f->fs, &b);
	while (pos < hi) {
		uint64_t fb = pos / f->bs, hole_end, goal, run, to;
		bool shared;

		rc = block_state(f, fb, limit, &e, &hole_end, &goal);
		if (rc < 0)
			return rc;
		if (!rc) {
			pos = hole_end * f->bs;
			continue;
		}
		if (e.flags & PMFUSE_EXTENT_UNWRITTEN) {
			pos = PMFUSE_MIN(hi, ext_end_byte(f, &e));
			continue;
		}
		rc = share_run(f, &e, fb, limit, &shared, &run);
		if (rc)
			return rc;
		if (shared) {
			struct cow_fill zeros = { .src = NULL, .lo = pos, .hi = hi };

			rc = cow_store(f, &e, fb, limit, &zeros, &b, NULL, NULL, &run);
			if (rc)
				return rc;
			pos = PMFUSE_MAX(pos, PMFUSE_MIN(hi, run * f->bs));
			continue;
		}
		to = PMFUSE_MIN(hi, (fb + run) * f->bs);
		pmfuse_pool_memset(f->fs->pool, ext_addr(f, &e, pos), 0, to - pos,
				   PMFUSE_MEM_NODRAIN | nt);
		pos = to;
	}
	return 0;
}

/* Adds to *blocks the shared blocks that zeroing the bytes [lo, hi) replaces. */
static int zero_need(const struct file *f, uint64_t lo, uint64_t hi, uint64_t *blocks)
{
	uint64_t n;
	int rc;

	if (hi <= lo)
		return 0;
	rc = count_shared(f, lo / f->bs, div_up(hi, f->bs), &n);
	*blocks += n;
	return rc;
}

/* Closing transaction of a fallocate: size (when it grows) and times. */
/* The mode after fallocate's change (it drops setuid/setgid as a write does). */
static uint32_t falloc_mode(const struct file *f)
{
	return pmfuse_fs_mode_after_change(pmfuse_le32(f->ip->mode), pmfuse_le32(f->ip->gid),
					   f->cred);
}

static int falloc_inode(struct file *f, uint64_t size, unsigned times)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(f->fs->txm);
	int rc;

	rc = pmfuse_inode_change(tx, f->leaf, f->ip, sizeof(*f->ip));
	if (!rc) {
		if (size > file_size(f))
			pmfuse_set_le64(&f->ip->size, size);
		pmfuse_set_le32(&f->ip->mode, falloc_mode(f));
		rc = pmfuse_inode_touch(tx, f->leaf, f->ip, times);
	}
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

static int punch(struct file *f, uint64_t off, uint64_t end)
{
	uint64_t fb_lo = div_up(off, f->bs), fb_hi = end / f->bs;
	unsigned nt = end - off >= NT_MIN ? PMFUSE_MEM_NONTEMPORAL : 0;
	struct pmfuse_extent_budget b;
	uint64_t need = 0;
	int rc;

	/* the partial blocks at the edges may be shared: fail before changing anything when
	 * their copies cannot get blocks */
	if (fb_lo < fb_hi) {
		rc = zero_need(f, off, fb_lo * f->bs, &need);
		if (!rc)
			rc = zero_need(f, fb_hi * f->bs, end, &need);
	} else {
		rc = zero_need(f, off, end, &need);
	}
	if (!rc && need > data_avail(f->fs))
		rc = -ENOSPC;
	if (rc)
		return rc;

	if (fb_lo < fb_hi) {
		pmfuse_extent_budget_init(f->fs, &b);
		rc = unmap_range(f, fb_lo, fb_hi, &b);
		if (rc)
			return rc;
		rc = zero_mapped(f, off, fb_lo * f->bs, nt);
		if (!rc)
			rc = zero_mapped(f, fb_hi * f->bs, end, nt);
	} else {
		rc = zero_mapped(f, off, end, nt);   /* inside one block, or two partial ones */
	}
	return rc ? rc : falloc_inode(f, 0, PMFUSE_TIME_M | PMFUSE_TIME_C);
}

/*
 * ZERO_RANGE's written whole blocks [fb0, fb1) become unwritten: unshared runs by a flag change
 * (a transaction each, no store), shared runs by a copy-on-write that copies nothing: new
 * unwritten blocks replace them in one transaction (their other owners keep the old ones, E6).
 * Unwritten blocks, shared or not, read as zeros already and stay as they are.
 */
static int whole_to_unwritten(struct file *f, uint64_t fb0, uint64_t fb1)
{
	struct pmfuse_extent_budget b;
	struct pmfuse_iext e;
	uint64_t fb = fb0;
	int rc;

	pmfuse_extent_budget_init(f->fs, &b);
	while (fb < fb1) {
		uint64_t hole_end, goal, run;
		struct pmfuse_tx *tx;
		bool shared;

		rc = block_state(f, fb, fb1, &e, &hole_end, &goal);
		if (rc < 0)
			return rc;
		if (!rc) {
			fb = hole_end;
			continue;
		}
		if (e.flags & PMFUSE_EXTENT_UNWRITTEN) {   /* shared or not: zeros already */
			fb = PMFUSE_MIN(fb1, e.fblock + e.len);
			continue;
		}
		rc = share_run(f, &e, fb, fb1, &shared, &run);
		if (rc)
			return rc;
		if (shared) {
			static const struct cow_fill unw = { .unwritten = true };

			rc = cow_tx(f, &e, fb, PMFUSE_MIN(run, b.blocks), &unw, NULL, NULL, &run);
		} else {
			tx = pmfuse_tx_begin(f->fs->txm);
			rc = pmfuse_extent_convert(tx, &f->map, &e, fb, fb + run,
						   PMFUSE_EXTENT_UNWRITTEN);
			if (rc)
				pmfuse_tx_abort(tx);
			else
				pmfuse_tx_commit(tx);
		}
		if (rc)
			return rc;
		fb += run;
	}
	return 0;
}

/*
 * ZERO_RANGE: the holes of the range are preallocated (unwritten; a failure takes them back,
 * leaving the file as it was), then the mapped whole blocks become unwritten
 * (whole_to_unwritten), and the partial blocks at the edges are zeroed as by PUNCH_HOLE. Space
 * is checked first (new blocks for the holes and for the shared blocks), so ENOSPC changes
 * nothing short of a full log or metadata blocks running out after the preallocation.
 */
static int zero_range(struct file *f, uint64_t off, uint64_t end, bool keep_size)
{
	struct ranges rs = { 0 };
	unsigned nt = end - off >= NT_MIN ? PMFUSE_MEM_NONTEMPORAL : 0;
	uint64_t fb_lo = div_up(off, f->bs), fb_hi = end / f->bs;
	struct holes h = { .pos = off / f->bs, .end = div_up(end, f->bs) };
	uint64_t need = 0;
	int rc;

	/* the holes and the shared blocks get new blocks: all or nothing */
	rc = zero_need(f, off, end, &need);
	if (!rc) {
		rc = pmfuse_extent_walk(&f->map, h.pos, h.end, count_holes, &h);
		h.blocks += h.end - h.pos;
		if (!rc && need + h.blocks > data_avail(f->fs))
			rc = -ENOSPC;
	}
	if (!rc && (fb_lo < fb_hi || h.blocks))
		rc = pmfuse_data_feature_unwritten(f->fs);
	if (!rc)
		rc = prealloc(f, off / f->bs, div_up(end, f->bs), &rs);
	if (!rc && fb_lo < fb_hi)
		rc = whole_to_unwritten(f, fb_lo, fb_hi);
	/* the partial blocks at the edges (unwritten ones and the new ones are skipped) */
	if (!rc && fb_lo < fb_hi) {
		rc = zero_mapped(f, off, fb_lo * f->bs, nt);
		if (!rc)
			rc = zero_mapped(f, fb_hi * f->bs, end, nt);
	} else if (!rc) {
		rc = zero_mapped(f, off, end, nt);
	}
	free(rs.r);
	if (!rc)
		rc = falloc_inode(f, keep_size ? 0 : end, PMFUSE_TIME_M | PMFUSE_TIME_C);
	return rc;
}

static int allocate(struct file *f, uint64_t off, uint64_t end, bool keep_size)
{
	struct ranges rs = { 0 };
	bool grows = !keep_size && end > file_size(f);
	int rc;

	rc = prealloc(f, off / f->bs, div_up(end, f->bs), &rs);
	if (!rc && (rs.n || grows || falloc_mode(f) != pmfuse_le32(f->ip->mode)))
		rc = falloc_inode(f, grows ? end : 0,
				  PMFUSE_TIME_C | (grows ? PMFUSE_TIME_M : 0));
	free(rs.r);
	return rc;
}

int pmfuse_fs_fallocate(struct pmfuse_fs *fs, uint64_t ino, int mode, uint64_t off,
			uint64_t len, const struct pmfuse_cred *cred, bool *privs_dropped)
{
	const int known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
	bool keep = mode & FALLOC_FL_KEEP_SIZE;
	uint32_t mode_before = 0;
	struct file f;
	int rc;

	if (privs_dropped)
		*privs_dropped = false;
	if (mode & ~known)
		return -EOPNOTSUPP;
	if ((mode & FALLOC_FL_PUNCH_HOLE) && (!keep || (mode & FALLOC_FL_ZERO_RANGE)))
		return -EOPNOTSUPP;
	if (!len || off > PMFUSE_FILE_SIZE_MAX || len > PMFUSE_FILE_SIZE_MAX)
		return -EINVAL;
	if (len > PMFUSE_FILE_SIZE_MAX - off)
		return -EFBIG;
	if (fs->readonly)
		return -EROFS;

	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = file_get(fs, ino, false, &f);
	if (rc == -EINVAL)
		rc = -ENODEV;   /* what fallocate(2) says for a non-regular file */
	if (!rc) {
		f.cred = cred;
		mode_before = pmfuse_le32(f.ip->mode);
		if (mode & FALLOC_FL_PUNCH_HOLE)
			rc = punch(&f, off, off + len);
		else if (mode & FALLOC_FL_ZERO_RANGE)
			rc = zero_range(&f, off, off + len, keep);
		else
			rc = allocate(&f, off, off + len, keep);
		/* f.ip is still the record: fallocate moves no inode record */
		if (privs_dropped)
			*privs_dropped = pmfuse_le32(f.ip->mode) != mode_before;
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

/* ---- lseek, fsync --------------------------------------------------------------------------- */

static int64_t seek_data_hole(const struct file *f, uint64_t off, int whence)
{
	uint64_t size = file_size(f), fb = off / f->bs;
	struct pmfuse_iext e;
	int rc;

	if (off >= size)
		return -ENXIO;
	if (whence == SEEK_DATA) {
		rc = pmfuse_extent_find(&f->map, fb, &e);
		if (rc)
			return rc == -ENOENT ? -ENXIO : rc;
		if (e.fblock <= fb)
			return (int64_t)off;
		return e.fblock * f->bs < size ? (int64_t)(e.fblock * f->bs) : -ENXIO;
	}
	/* SEEK_HOLE: follow extents while they continue each other */
	for (;;) {
		rc = pmfuse_extent_find(&f->map, fb, &e);
		if (rc == -ENOENT || (!rc && e.fblock > fb))
			break;
		if (rc)
			return rc;
		fb = e.fblock + e.len;
		if (fb * f->bs >= size)
			return (int64_t)size;
	}
	return (int64_t)PMFUSE_MIN(size, PMFUSE_MAX(off, fb * f->bs));
}

int64_t pmfuse_fs_lseek(struct pmfuse_fs *fs, uint64_t ino, int64_t off, int whence)
{
	struct file f;
	int64_t r;

	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return -EINVAL;
	if (off < 0)
		return -ENXIO;
	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	r = file_get(fs, ino, false, &f);
	if (!r)
		r = seek_data_hole(&f, (uint64_t)off, whence);
	fs_unlock(fs);
	fs_iunlock(fs);
	return r;
}

int pmfuse_fs_fsync(struct pmfuse_fs *fs, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	int rc;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc)
		pmfuse_pool_drain(fs->pool);   /* nothing is buffered: a barrier is all there is */
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}
