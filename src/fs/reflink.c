/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Reflink: clone_range, copy_range, unshare, extent reports, the CoW extent size hint, and a
 * space check of the whole filesystem.
 *
 * Sharing model (meta/refcount.h, format.md): a pool block may be mapped by several extent
 * records, of several files or of one; the refcount tree counts them for blocks with more than
 * one (no record: one owner). Invariant between transactions, for every block of the data area:
 *
 *   S1 mapped by k >= 1 extent records  <=>  allocated, and its count is k (a record when k >= 2);
 *   S2 mapped by none                  <=>  free, or a metadata block (tree node, xattr value)
 *                                           used exactly once and never mapped.
 *
 *   S3 a block mapped by several records is unwritten in all of them or in none (E6 of
 *      extent.c): a clone maps the source's blocks with the source's flag.
 *
 * Every unmapping goes through pmfuse_extent_release (one reference less, freed at zero), every
 * new mapping of an existing block through pmfuse_refcount_incr in the same transaction, so a
 * transaction keeps S1-S2 whole. pmfuse_fs_check_space() verifies them, and S3.
 *
 * Clone (FICLONERANGE semantics; fs.h). Source blocks [s0, s0 + n) go to destination blocks
 * [d0, d0 + n), from the TOP DOWN, in pieces, as many pieces per transaction as the budget of
 * the undo log allows (the extent budget of extent.c: one node per record changed):
 *
 *                s0                                                  s0 + top = pe
 *      source     |.......[=========== extent E ===========)...hole...|
 *                                                          |<- piece ->|  first: a hole piece
 *                         |<------------ piece ----------->|              then an extent piece
 *   1. the piece: the source's state just below the top, pe: part of an extent (down to its
 *      start or s0) or a hole (down to the extent below or s0); an extent piece is shortened
 *      from below so that its refcount increment touches at most half the budget's nodes;
 *   2. unmap the destination's blocks of [d(ps), d(pe)) (pmfuse_extent_unmap, top down,
 *      budgeted: it may stop at some `to` above d(ps));
 *   3. an extent piece: map [to, d(pe)) to the source's pool blocks and increment their
 *      counts; a hole piece: nothing more (holes become holes);
 *   4. top = to - d0; the next piece, or commit when the budget is spent.
 * Each transaction also sets the destination's size (to its final value, if it grows) and times.
 * Increments of consecutive pieces whose pool blocks touch are made as one (a file cloned block
 * by block, in either order, costs one refcount record per transaction instead of one per
 * block).
 *
 * Working down from the top has the property that makes a budget stop anywhere safe: what the
 * unmapping leaves behind is always the part below `to`, the part not done yet, and what is done
 * is a contiguous top of the range. A crash between transactions therefore shows each
 * destination block either as it was or as the source's (never unmapped in between: unmapping
 * and mapping a block happen in the same transaction), every block counted once per owner, the
 * size already final. Cost: proportional to the extents of the source range and of the
 * destination range it replaces (and their refcount records), never to their bytes.
 *
 * copy_range shares the whole blocks when the offsets are congruent modulo the block size and
 * copies the unaligned head and tail with the normal write path; a tail that ends at the source's
 * EOF is shared too when it reaches the destination's EOF (the clone rule: the source block's
 * bytes past its EOF are zero). Incongruent offsets copy bytes through a bounce buffer in
 * bounded chunks, at most COPY_MAX per call. It returns what it did: > 0 inside the source's
 * EOF, never 0.
 *
 * Locking: every entry point takes fs->lock (the writer for changes), which also covers the
 * "both inodes locked" rule of FICLONERANGE.
 */
#include "fs/fs_internal.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "meta/refcount.h"
#include "pool/pool.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

/* Bytes copied per step when offsets are incongruent (a bounce buffer of this size), and at
 * most per call (a short count: callers of copy_file_range loop), so that one call does not
 * hold the filesystem lock for a time in proportion to an unbounded length. */
#define COPY_CHUNK (1u << 20)
#define COPY_MAX (64u << 20)

/* A located inode with its extent map. */
struct rfile {
	uint64_t ino;
	struct pmfuse_inode *ip;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_extmap map;
};

/* Locates a regular file: -EISDIR for a directory, -EINVAL for anything else not regular. */
static int rfile_get(struct pmfuse_fs *fs, uint64_t ino, struct rfile *f)
{
	uint32_t mode;
	int rc;

	rc = pmfuse_inode_locate(fs, ino, &f->ip, &f->leaf);
	if (rc)
		return rc;
	mode = pmfuse_le32(f->ip->mode);
	if (S_ISDIR(mode))
		return -EISDIR;
	if (!S_ISREG(mode))
		return -EINVAL;
	if (pmfuse_le64(f->ip->size) > PMFUSE_FILE_SIZE_MAX)
		return PMFUSE_CORRUPT("inode %llu: size %llu is past the largest file", ULL(ino),
				      ULL(pmfuse_le64(f->ip->size)));
	f->ino = ino;
	pmfuse_extmap_open(&f->map, fs, f->ip, f->leaf);
	return 0;
}

static uint64_t rsize(const struct rfile *f)
{
	return pmfuse_le64(f->ip->size);
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/* ---- clone ---------------------------------------------------------------------------------- */

struct clone {
	struct pmfuse_fs *fs;
	struct rfile *src, *dst;          /* the same object for a clone inside one file */
	uint64_t s0, d0;                  /* first source and destination block */
	uint64_t top;                     /* blocks [s0, s0 + top) are still to do */
	uint64_t size;                    /* the destination's size when done (if it grows) */
	const struct pmfuse_cred *cred;   /* clears setuid/setgid like a write; may be NULL */
	bool dedupe;                      /* contents stay: no size, times or setuid change */
};

/* Pool blocks whose count goes up in this transaction: consecutive pieces whose blocks touch
 * are incremented together (a file cloned block by block in order, or in reverse order). */
struct incr_run {
	struct pmfuse_btree rt;
	uint64_t start, len;
};

static int incr_flush(struct pmfuse_tx *tx, struct clone *c, struct incr_run *ir)
{
	int rc = 0;

	if (ir->len)
		rc = pmfuse_refcount_incr(tx, &ir->rt, c->fs->alloc, ir->start, ir->len);
	ir->len = 0;
	return rc;
}

static int incr_add(struct pmfuse_tx *tx, struct clone *c, struct incr_run *ir, uint64_t start,
		    uint64_t len)
{
	int rc;

	if (ir->len && ir->len + len <= PMFUSE_EXTENT_MAX_LEN) {
		if (ir->start + ir->len == start) {
			ir->len += len;
			return 0;
		}
		if (start + len == ir->start) {
			ir->start = start;
			ir->len += len;
			return 0;
		}
	}
	rc = incr_flush(tx, c, ir);
	ir->start = start;
	ir->len = len;
	return rc;
}

/* Steps 1-4 of the diagram at the top, for as many pieces as budget b pays; *top goes down. */
static int clone_pieces(struct pmfuse_tx *tx, struct clone *c, uint64_t *top,
			struct pmfuse_extent_budget *b)
{
	struct incr_run ir = { .len = 0 };
	bool first = true;
	int rc;

	pmfuse_refcount_tree(c->fs->vol, &ir.rt);
	while (*top && (first || b->recs > 3)) {
		uint64_t pe = c->s0 + *top, ps, dlo, dhi, to, pieces = 0;
		struct pmfuse_iext e;
		bool hole;

		first = false;
		/* 1. the piece just below the top */
		rc = pmfuse_extent_prev(&c->src->map, pe, &e);
		if (rc && rc != -ENOENT)
			return rc;
		if (rc == -ENOENT || e.fblock + e.len <= c->s0) {
			ps = c->s0;
			hole = true;
		} else if (e.fblock + e.len < pe) {
			ps = e.fblock + e.len;
			hole = true;
		} else {
			uint64_t from;

			ps = PMFUSE_MAX(e.fblock, c->s0);
			hole = false;
			pieces = 1;
			if (pe - ps > 1) {
				rc = pmfuse_refcount_span_down(c->fs, e.pblock + (ps - e.fblock),
							       e.pblock + (pe - e.fblock),
							       PMFUSE_MAX(b->recs / 2, 1u), true,
							       &from, &pieces);
				if (rc)
					return rc;
				ps = e.fblock + (from - e.pblock);
			}
		}

		/* 2. the destination's blocks there lose their reference */
		dlo = c->d0 + (ps - c->s0);
		dhi = c->d0 + (pe - c->s0);
		to = dhi;
		rc = pmfuse_extent_unmap(tx, &c->dst->map, dlo, &to, b);
		if (rc)
			return rc;
		if (to == dhi)
			break;   /* budget spent */

		/* 3. and map the source's blocks, which gain one */
		if (!hole) {
			struct pmfuse_iext x = {
				.fblock = to,
				.len = dhi - to,
				.pblock = e.pblock + (pe - e.fblock) - (dhi - to),
				.flags = e.flags,   /* unwritten stays unwritten (E6) */
			};

			rc = pmfuse_extent_insert(tx, &c->dst->map, &x);
			if (!rc)
				rc = incr_add(tx, c, &ir, x.pblock, x.len);
			if (rc)
				return rc;
			b->recs -= PMFUSE_MIN(b->recs, 1 + pieces + 2);
		}
		/* 4. */
		*top = to - c->d0;
	}
	return incr_flush(tx, c, &ir);
}

/* The destination's inode in each clone transaction: final size, times, setuid/setgid. */
static int clone_inode(struct pmfuse_tx *tx, struct clone *c)
{
	struct pmfuse_inode *ip = c->dst->ip;
	int rc;

	rc = pmfuse_inode_change(tx, c->dst->leaf, ip, sizeof(*ip));
	if (rc)
		return rc;
	if (pmfuse_le64(ip->size) < c->size)
		pmfuse_set_le64(&ip->size, c->size);
	pmfuse_set_le32(&ip->mode, pmfuse_fs_mode_after_change(pmfuse_le32(ip->mode),
								 pmfuse_le32(ip->gid), c->cred));
	return pmfuse_inode_touch(tx, c->dst->leaf, ip, PMFUSE_TIME_M | PMFUSE_TIME_C);
}

/*
 * Runs the clone in as many transactions as it needs. A transaction that finds the log (or the
 * pool) full aborts and is retried with half the budget, down to one record; the smaller budget
 * is kept for the rest. -ENOSPC when the pool has no block for metadata (beyond the data
 * reserve, which is kept for the operations that give space back, dedupe among them); the
 * blocks done so far stay done, every block counted.
 */
static int clone_run(struct clone *c)
{
	struct pmfuse_extent_budget full;
	int rc;

	pmfuse_extent_budget_init(c->fs, &full);
	while (c->top) {
		struct pmfuse_extent_budget b = full;
		uint64_t top = c->top;
		struct pmfuse_tx *tx;

		if (!c->dedupe && !pmfuse_data_avail(c->fs))
			return -ENOSPC;   /* a dedupe gives space back: it may use the reserve */
		tx = pmfuse_tx_begin(c->fs->txm);
		rc = clone_pieces(tx, c, &top, &b);
		if (!rc && !c->dedupe)
			rc = clone_inode(tx, c);
		if (!rc) {
			pmfuse_tx_commit(tx);
			c->top = top;
			continue;
		}
		pmfuse_tx_abort(tx);
		if (rc != -ENOSPC || (full.recs <= 1 && full.blocks <= 1))
			return rc;
		full.recs = PMFUSE_MAX(full.recs / 2, 1u);
		full.blocks = PMFUSE_MAX(full.blocks / 2, 1u);
	}
	return 0;
}

/*
 * Fills *c for blen bytes (whole blocks) from src_off of src to dst_off of dst, after the check
 * both clone and dedupe make: ranges in one file must not overlap (-EINVAL).
 */
static int clone_init(struct clone *c, struct pmfuse_fs *fs, struct rfile *src, uint64_t src_off,
		      struct rfile *dst, uint64_t dst_off, uint64_t blen, uint64_t size)
{
	if (src->ino == dst->ino && ranges_overlap(src_off, blen, dst_off, blen))
		return -EINVAL;
	memset(c, 0, sizeof(*c));
	c->fs = fs;
	c->src = src;
	c->dst = dst;
	c->s0 = src_off / fs->bs;
	c->d0 = dst_off / fs->bs;
	c->top = blen / fs->bs;
	c->size = size;
	return 0;
}

/*
 * Checks a clone request as FICLONERANGE does (generic_remap_checks) and fills *c. Returns 1
 * when there is nothing to do (len 0 at EOF), 0 to go on, or -errno.
 */
static int clone_prep(struct pmfuse_fs *fs, struct rfile *src, uint64_t src_off, uint64_t len,
		      struct rfile *dst, uint64_t dst_off, struct clone *c)
{
	uint64_t bs = fs->bs, ssize = rsize(src), dsize = rsize(dst), blen;

	if (!len) {
		if (src_off == ssize)
			return 1;
		if (src_off > ssize)
			return -EINVAL;
		len = ssize - src_off;
	}
	if (src_off % bs || dst_off % bs)
		return -EINVAL;
	if (src_off > UINT64_MAX - len || dst_off > UINT64_MAX - len)
		return -EINVAL;
	if (src_off >= ssize || len > ssize - src_off)
		return -EINVAL;
	if (src_off + len == ssize) {
		/* to the source's EOF: the last block goes whole, its tail zeros (E5) included,
		 * so it may only land where it ends the destination too */
		blen = PMFUSE_ALIGN_UP(ssize, bs) - src_off;
		if (len % bs && dst_off + len < dsize)
			return -EINVAL;
	} else {
		if (len % bs)
			return -EINVAL;
		blen = len;
	}
	if (dst_off > PMFUSE_FILE_SIZE_MAX || len > PMFUSE_FILE_SIZE_MAX - dst_off)
		return -EFBIG;
	return clone_init(c, fs, src, src_off, dst, dst_off, blen, dst_off + len);
}

/* Locates both files (one object when they are the same). */
static int rfiles_get(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t dst_ino, struct rfile *s,
		      struct rfile *d, struct rfile **dp)
{
	int rc = rfile_get(fs, src_ino, s);

	if (!rc && src_ino != dst_ino)
		rc = rfile_get(fs, dst_ino, d);
	*dp = src_ino == dst_ino ? s : d;
	return rc;
}

int pmfuse_fs_clone_range_cred(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			       uint64_t len, uint64_t dst_ino, uint64_t dst_off,
			       uint64_t *dst_size_before, const struct pmfuse_cred *cred)
{
	struct rfile s, d, *dp;
	struct clone c;
	int rc;

	if (fs->readonly)
		return -EROFS;
	fs_ilock(fs, (struct pmfuse_ilock_req[]){ { src_ino, true }, { dst_ino, true } }, 2);
	fs_wrlock(fs);
	rc = rfiles_get(fs, src_ino, dst_ino, &s, &d, &dp);
	if (!rc && dst_size_before)
		*dst_size_before = rsize(dp);
	if (!rc)
		rc = clone_prep(fs, &s, src_off, len, dp, dst_off, &c);
	if (!rc) {
		c.cred = cred;
		rc = clone_run(&c);
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc < 0 ? rc : 0;
}

int pmfuse_fs_clone_range_sized(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
				uint64_t len, uint64_t dst_ino, uint64_t dst_off,
				uint64_t *dst_size_before)
{
	return pmfuse_fs_clone_range_cred(fs, src_ino, src_off, len, dst_ino, dst_off,
					  dst_size_before, NULL);
}

int pmfuse_fs_clone_range(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			  uint64_t len, uint64_t dst_ino, uint64_t dst_off)
{
	return pmfuse_fs_clone_range_sized(fs, src_ino, src_off, len, dst_ino, dst_off, NULL);
}

/* ---- copy_file_range ------------------------------------------------------------------------ */

/* Copies n bytes through a bounce buffer and the write path; returns the bytes done or -errno. */
static ssize_t copy_bytes(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t so, uint64_t dst_ino,
			  uint64_t dso, uint64_t n, const struct pmfuse_cred *cred)
{
	size_t cap = (size_t)PMFUSE_MIN(n, (uint64_t)COPY_CHUNK);
	uint64_t done = 0;
	uint8_t *buf;

	if (!n)
		return 0;
	buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	while (done < n) {
		size_t chunk = (size_t)PMFUSE_MIN(n - done, (uint64_t)cap);
		ssize_t r = pmfuse_data_pread_locked(fs, src_ino, buf, chunk, so + done), w;

		if (r <= 0) {
			if (!done)
				done = r < 0 ? (uint64_t)r : 0;
			break;
		}
		w = pmfuse_data_write(fs, dst_ino, buf, (size_t)r, dso + done, cred);
		if (w <= 0) {
			if (!done)
				done = (uint64_t)w;
			break;
		}
		done += (uint64_t)w;
		if (w < r)
			break;
	}
	free(buf);
	return (ssize_t)done;
}

static ssize_t copy_range_locked(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
				 uint64_t dst_ino, uint64_t dst_off, uint64_t len,
				 const struct pmfuse_cred *cred)
{
	uint64_t bs = fs->bs, ssize, head, mid, tail, done = 0;
	struct rfile s, d, *dp;
	struct clone c;
	ssize_t n;
	int rc;

	rc = rfiles_get(fs, src_ino, dst_ino, &s, &d, &dp);
	if (rc)
		return rc;
	ssize = rsize(&s);
	if (src_off >= ssize || !len)
		return 0;
	len = PMFUSE_MIN(len, ssize - src_off);
	if (dst_off >= PMFUSE_FILE_SIZE_MAX)
		return -EFBIG;
	len = PMFUSE_MIN(len, PMFUSE_FILE_SIZE_MAX - dst_off);
	if (src_ino == dst_ino && ranges_overlap(src_off, len, dst_off, len))
		return -EINVAL;
	if (src_off % bs != dst_off % bs)
		return copy_bytes(fs, src_ino, src_off, dst_ino, dst_off,
				  PMFUSE_MIN(len, (uint64_t)COPY_MAX), cred);

	/* congruent: head bytes, whole blocks shared, tail bytes (or shared at EOF) */
	head = PMFUSE_MIN(len, (bs - src_off % bs) % bs);
	mid = (len - head) / bs * bs;
	tail = len - head - mid;
	if (head) {
		n = copy_bytes(fs, src_ino, src_off, dst_ino, dst_off, head, cred);
		if (n < 0 || (uint64_t)n < head)
			return n;
		done = head;
	}
	if (mid || tail) {
		/* locate again after the head's write */
		rc = rfiles_get(fs, src_ino, dst_ino, &s, &d, &dp);
		if (rc)
			return done ? (ssize_t)done : rc;
		/* sizes as they are now: the head may have grown the file (same file) */
		if (tail && src_off + len == rsize(&s) && dst_off + len >= rsize(dp)) {
			mid += tail;
			tail = 0;
		}
	}
	if (mid) {
		rc = clone_prep(fs, &s, src_off + head, mid, dp, dst_off + head, &c);
		if (!rc) {
			c.cred = cred;
			rc = clone_run(&c);
		}
		if (rc < 0)
			return done ? (ssize_t)done : rc;
		done += mid;
	}
	if (tail) {
		n = copy_bytes(fs, src_ino, src_off + done, dst_ino, dst_off + done, tail, cred);
		if (n < 0)
			return done ? (ssize_t)done : n;
		done += (uint64_t)n;
	}
	return (ssize_t)done;
}

/* dst's mode under the writer lock, 0 when it cannot be read (the copy then fails too) */
static uint32_t mode_locked(struct pmfuse_fs *fs, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;

	return pmfuse_inode_locate(fs, ino, &ip, &leaf) ? 0 : pmfuse_le32(ip->mode);
}

ssize_t pmfuse_fs_copy_range(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			     uint64_t dst_ino, uint64_t dst_off, uint64_t len,
			     const struct pmfuse_cred *cred, bool *privs_dropped)
{
	uint32_t mode_before;
	ssize_t n;

	if (privs_dropped)
		*privs_dropped = false;
	if (fs->readonly)
		return -EROFS;
	fs_ilock(fs, (struct pmfuse_ilock_req[]){ { src_ino, true }, { dst_ino, true } }, 2);
	fs_wrlock(fs);
	mode_before = mode_locked(fs, dst_ino);
	n = copy_range_locked(fs, src_ino, src_off, dst_ino, dst_off, len, cred);
	/* located again rather than kept: cheap next to a copy, and safe whatever it moved */
	if (privs_dropped && n > 0)
		*privs_dropped = mode_locked(fs, dst_ino) != mode_before;
	fs_unlock(fs);
	fs_iunlock(fs);
	return n;
}

/* ---- dedupe --------------------------------------------------------------------------------- */

/*
 * Dedupe (FIDEDUPERANGE semantics, fs.h) compares the two ranges in the pool under the writer
 * lock and, only if every byte is equal, remaps the destination's blocks to the source's with
 * the clone machinery (clone_run with c->dedupe: the destination's size, times and mode stay,
 * since its contents do). Blocks the two already share are neither compared nor remapped; a
 * hole compares as zeros, so zero blocks of the destination over a hole of the source become a
 * hole; unwritten blocks compare as zeros too, and a remap copies the source's flag with its
 * blocks, so no pool block ends up written for one owner and unwritten for another (E6).
 * Nothing is changed when any byte differs. A crash part way leaves some of the range remapped
 * and the rest as it was: the same bytes either way, every block counted.
 */

/* The run of file blocks from fb (below end) that is one extent's or one hole's. */
struct brun {
	bool hole;
	bool zero;                   /* reads as zeros: a hole or unwritten */
	uint64_t pblock;             /* first pool block (not for a hole) */
	uint64_t len;                /* blocks */
};

static int brun_at(const struct rfile *f, uint64_t fb, uint64_t end, struct brun *r)
{
	struct pmfuse_iext e;
	int rc = pmfuse_extent_find(&f->map, fb, &e);

	if (rc && rc != -ENOENT)
		return rc;
	if (rc == -ENOENT || e.fblock > fb) {
		r->hole = true;
		r->zero = true;
		r->pblock = 0;
		r->len = (rc == -ENOENT ? end : PMFUSE_MIN(e.fblock, end)) - fb;
		return 0;
	}
	r->hole = false;
	r->zero = e.flags & PMFUSE_EXTENT_UNWRITTEN;
	r->pblock = e.pblock + (fb - e.fblock);
	r->len = PMFUSE_MIN(e.fblock + e.len, end) - fb;
	return 0;
}

/* The runs of source and destination at piece block b, both ending by piece block end; 0, or
 * -errno from a lookup. */
static int brun_pair(const struct clone *c, uint64_t b, uint64_t end, struct brun *sr,
		     struct brun *dr)
{
	int rc = brun_at(c->src, c->s0 + b, c->s0 + end, sr);

	return rc ? rc : brun_at(c->dst, c->d0 + b, c->d0 + end, dr);
}

/*
 * len bytes (at most PMFUSE_CMP_CHUNK) of run r from its block `skip` on, to compare: zeros for
 * a hole or unwritten run, else the pool's bytes through pmfuse_pool_data_view into buffer
 * `which` (0 or 1) of fs->cmp_buf. NULL with *err when the pool cannot be read.
 */
static const uint8_t *brun_view(struct pmfuse_fs *fs, const struct brun *r, uint64_t skip,
				size_t len, int which, int *err)
{
	assert(len <= PMFUSE_CMP_CHUNK);
	*err = 0;
	if (r->zero)
		return fs->zeroes;
	return pmfuse_pool_data_view(fs->pool, (r->pblock + skip) * fs->bs, len,
				     fs->cmp_buf + which * PMFUSE_CMP_CHUNK, err);
}

/*
 * Calls fn(arg, block offset, blocks, same) for each run of blocks of [0, n) over which both
 * files are one extent or hole each; same: the two already map the same pool blocks. Returns 0
 * or what fn or a lookup returned.
 */
static int dedupe_runs(struct clone *c, uint64_t n,
		       int (*fn)(struct clone *c, uint64_t b, uint64_t k, bool same, void *arg),
		       void *arg)
{
	for (uint64_t b = 0; b < n;) {
		struct brun sr = { 0 }, dr = { 0 };   /* brun_at fills them; gcc -O2 cannot tell */
		uint64_t k;
		int rc;

		rc = brun_pair(c, b, n, &sr, &dr);
		if (rc)
			return rc;
		k = PMFUSE_MIN(sr.len, dr.len);
		rc = fn(c, b, k, !sr.hole && !dr.hole && sr.pblock == dr.pblock, arg);
		if (rc)
			return rc;
		b += k;
	}
	return 0;
}

struct dd_cmp {
	uint64_t bytes;              /* of the range: only these bytes of the last block count */
};

static int dd_compare(struct clone *c, uint64_t b, uint64_t k, bool same, void *arg)
{
	const struct dd_cmp *dc = arg;
	struct pmfuse_fs *fs = c->fs;
	uint64_t bs = fs->bs;

	if (same)
		return 0;
	for (uint64_t i = 0; i < k;) {
		struct brun sr = { 0 }, dr = { 0 };   /* brun_at fills them; gcc -O2 cannot tell */
		uint64_t blocks, len;
		int rc;

		/* one extent or hole each, in pieces the zero buffer covers */
		rc = brun_pair(c, b + i, b + k, &sr, &dr);
		if (rc)
			return rc;
		blocks = PMFUSE_MIN(PMFUSE_MIN(sr.len, dr.len), PMFUSE_CMP_CHUNK / bs);
		len = PMFUSE_MIN(blocks * bs, dc->bytes - (b + i) * bs);
		if (!(sr.zero && dr.zero)) {
			const uint8_t *sv, *dv = NULL;

			sv = brun_view(fs, &sr, 0, (size_t)len, 0, &rc);
			if (sv)
				dv = brun_view(fs, &dr, 0, (size_t)len, 1, &rc);
			if (!dv)
				return rc;
			if (memcmp(sv, dv, (size_t)len))
				return -EBADE;
		}
		i += blocks;
	}
	return 0;
}

static int dd_remap(struct clone *c, uint64_t b, uint64_t k, bool same, void *arg)
{
	struct clone run = *c;

	(void)arg;
	if (same)
		return 0;
	run.s0 = c->s0 + b;
	run.d0 = c->d0 + b;
	run.top = k;
	return clone_run(&run);
}

/*
 * FIDEDUPERANGE's checks (generic_remap_checks with REMAP_FILE_DEDUP | REMAP_FILE_CAN_SHORTEN):
 * 1 with *len 0 when there is nothing to do, 0 with *len the bytes to dedupe, or -errno.
 */
static int dedupe_prep(struct pmfuse_fs *fs, struct rfile *src, uint64_t src_off, uint64_t *len,
		       struct rfile *dst, uint64_t dst_off, struct clone *c)
{
	uint64_t bs = fs->bs, ssize = rsize(src), dsize = rsize(dst), n = *len, blen;
	int rc;

	if (src_off % bs || dst_off % bs)
		return -EINVAL;
	if (!n) {
		*len = 0;
		return 1;
	}
	if (src_off > UINT64_MAX - n || dst_off > UINT64_MAX - n)
		return -EINVAL;
	/* both ranges inside their files */
	if (src_off >= ssize || src_off + n > ssize || dst_off >= dsize || dst_off + n > dsize)
		return -EINVAL;
	if (n > PMFUSE_DEDUPE_MAX)
		n = PMFUSE_DEDUPE_MAX;
	if (src_off + n == ssize && dst_off + n == dsize) {
		blen = PMFUSE_ALIGN_UP(n, bs);   /* both end at EOF: the last blocks go whole */
	} else {
		n = n / bs * bs;                 /* shortened to whole blocks */
		if (!n) {
			*len = 0;
			return 1;
		}
		blen = n;
	}
	rc = clone_init(c, fs, src, src_off, dst, dst_off, blen, dsize);
	c->dedupe = true;
	*len = n;
	return rc;
}

int pmfuse_fs_dedupe_range(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			   uint64_t len, uint64_t dst_ino, uint64_t dst_off, uint64_t *deduped)
{
	struct rfile s, d, *dp;
	struct dd_cmp dc;
	struct clone c;
	uint64_t n = len;
	int rc;

	*deduped = 0;
	if (fs->readonly)
		return -EROFS;
	fs_ilock(fs, (struct pmfuse_ilock_req[]){ { src_ino, true }, { dst_ino, true } }, 2);
	fs_wrlock(fs);
	rc = rfiles_get(fs, src_ino, dst_ino, &s, &d, &dp);
	if (!rc)
		rc = dedupe_prep(fs, &s, src_off, &n, dp, dst_off, &c);
	if (!rc) {
		uint64_t blocks = c.top;

		dc.bytes = n;
		rc = dedupe_runs(&c, blocks, dd_compare, &dc);
		if (!rc)
			rc = dedupe_runs(&c, blocks, dd_remap, NULL);
		if (!rc)
			*deduped = n;
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc < 0 ? rc : 0;
}

/* ---- range dedupe --------------------------------------------------------------------------- */

/*
 * Range dedupe (pmfuse_fs_dedupe_blocks, fs.h) shares what is equal instead of all or nothing.
 * One piece (at most PMFUSE_DEDUPE_MAX bytes, dedupe_prep's checks) under one hold of the
 * writer lock:
 *
 *      src   |==== extent ====|== extent ==|...hole...|
 *      dst   |== extent ==|...hole...|====== extent ======|
 *            |<- pair  ->|<->|<----->|<->|<--------->|      runs where both are one extent
 *                                                            or hole each (brun_at)
 *   - a pair already sharing its pool blocks, or holes in both, counts as "same" and ends the
 *     current run; a hole in dst ends it too (sharing into a hole gives nothing back): each
 *     block of src there is "same" if it is zeros, else it differs;
 *   - otherwise each block is compared (memcmp in the pool, a hole as zeros); equal blocks
 *     extend the run, a differing one ends it;
 *   - a run that ends is remapped at once with clone_run (c->dedupe: size, times, mode stay),
 *     before the lock is let go, so no write can land between a block's compare and its remap.
 * Remapping a run changes only dst's blocks below the walk's position: the pool blocks the
 * walk still has to compare stay where they were. A crash leaves each run done or not (in
 * clone_run's top-down transactions): the same bytes either way, every block counted.
 */
struct db_walk {
	struct pmfuse_dedupe_counts *cnt;
	uint64_t bytes;              /* of the piece: only these bytes of its last block count */
	uint64_t run, run_len;       /* equal blocks not remapped yet (from the piece's start) */
};

/* The bytes of the piece's blocks [b, b + k). */
static uint64_t db_bytes(const struct db_walk *w, uint64_t bs, uint64_t b, uint64_t k)
{
	uint64_t lo = b * bs, hi = PMFUSE_MIN((b + k) * bs, w->bytes);

	return hi > lo ? hi - lo : 0;
}

/* Remaps the run found so far (counted once done). */
static int db_flush(struct clone *c, struct db_walk *w)
{
	struct clone run = *c;
	int rc;

	if (!w->run_len)
		return 0;
	run.s0 = c->s0 + w->run;
	run.d0 = c->d0 + w->run;
	run.top = w->run_len;
	rc = clone_run(&run);
	if (!rc)
		w->cnt->deduped += db_bytes(w, c->fs->bs, w->run, w->run_len);
	w->run_len = 0;
	return rc;
}

/*
 * Compares in two threads: before a piece's walk (db_piece), its runs to compare block by block
 * are listed (at most DB_JOBS; the rest is compared by the walk as it goes), split in two halves
 * of about as many blocks at a 64-block boundary, and compared by this thread and the helper
 * (helper.c) at once, each into its own words of two bitmaps over the piece's blocks: done
 * (compared) and eq (equal). The walk then takes a chunk's answer from the bitmaps when all
 * its blocks are done, and compares what is not done itself. Nothing changes the bytes or the
 * blocks compared meanwhile: the writer lock is held from the list to the last remap, and the
 * walk remaps only blocks below its position. A memory error in the helper leaves its blocks
 * not done: the walk compares them again and meets the error under its own recovery point,
 * as a dedupe without the helper would.
 */
#define DB_JOBS 256
#define DB_BITS (PMFUSE_DEDUPE_MAX / PMFUSE_BLOCK_SIZE_MIN)
#define DB_PAR_MIN (4ull << 20)      /* bytes to compare below which one thread does it all */

/* DB_PAR_MIN, or PMFUSE_DEDUPE_PAR_MIN (bytes; tests set 0 to run small pieces in two
 * threads). Read under the writer lock. */
static uint64_t db_par_min(void)
{
	static int64_t v = -1;

	if (v < 0) {
		const char *e = getenv("PMFUSE_DEDUPE_PAR_MIN");

		v = e ? (int64_t)strtoull(e, NULL, 0) : (int64_t)DB_PAR_MIN;
	}
	return (uint64_t)v;
}

struct db_job {
	uint64_t b, k;               /* piece blocks [b, b + k) */
	uint64_t sp, dp;             /* their first pool blocks (not when zero) */
	bool sz, dz;                 /* reads as zeros (hole or unwritten) */
};

struct db_par {
	struct pmfuse_fs *fs;
	const struct db_walk *w;
	struct db_job job[DB_JOBS];
	unsigned njob;
	uint64_t split;              /* this thread: blocks below; the helper: from here on */
	uint64_t done[DB_BITS / 64], eq[DB_BITS / 64];
};

static void bit_set(uint64_t *m, uint64_t i)
{
	m[i / 64] |= 1ull << (i % 64);
}

static bool bit_get(const uint64_t *m, uint64_t i)
{
	return m[i / 64] >> (i % 64) & 1;
}

static bool bits_all(const uint64_t *m, uint64_t i, uint64_t n)
{
	for (; n; i++, n--)
		if (!bit_get(m, i))
			return false;
	return true;
}

/* Compares the listed blocks in [from, to) through buf (2 x PMFUSE_CMP_CHUNK). */
static void db_par_half(struct db_par *p, uint64_t from, uint64_t to, uint8_t *buf)
{
	struct pmfuse_fs *fs = p->fs;
	uint64_t bs = fs->bs;

	for (unsigned q = 0; q < p->njob; q++) {
		const struct db_job *jb = &p->job[q];
		uint64_t lo = PMFUSE_MAX(jb->b, from), hi = PMFUSE_MIN(jb->b + jb->k, to);

		for (uint64_t x = lo; x < hi;) {
			uint64_t m = PMFUSE_MIN(hi - x, PMFUSE_CMP_CHUNK / bs);
			size_t clen = (size_t)db_bytes(p->w, bs, x, m);
			const uint8_t *sv = fs->zeroes, *dv = fs->zeroes;
			int err = 0;

			if (!jb->sz)
				sv = pmfuse_pool_data_view(fs->pool, (jb->sp + x - jb->b) * bs, clen,
							   buf, &err);
			if (sv && !jb->dz)
				dv = pmfuse_pool_data_view(fs->pool, (jb->dp + x - jb->b) * bs, clen,
							   buf + PMFUSE_CMP_CHUNK, &err);
			if (!sv || !dv)
				return;      /* not done: the walk reads them again, and fails */
			if (!memcmp(sv, dv, clen)) {
				for (uint64_t j = 0; j < m; j++)
					bit_set(p->eq, x + j);
			} else {
				for (uint64_t j = 0; j < m; j++) {
					size_t len = (size_t)db_bytes(p->w, bs, x + j, 1);

					if (!memcmp(sv + (jb->sz ? 0 : j * bs), dv + (jb->dz ? 0 : j * bs),
						    len))
						bit_set(p->eq, x + j);
				}
			}
			for (uint64_t j = 0; j < m; j++)
				bit_set(p->done, x + j);
			x += m;
		}
	}
}

/* The helper's half, under its own recovery point. */
static void db_par_helper(void *arg)
{
	struct db_par *p = arg;
	struct pmfuse_pool_fault f;

	if (sigsetjmp(f.env, 0))
		return;              /* a memory error: what is not done yet stays so */
	pmfuse_fs_fault_arm(p->fs, &f);
	db_par_half(p, p->split, DB_BITS, p->fs->helper_buf);
	pmfuse_fs_fault_disarm(&f);
}

/*
 * Lists the piece's runs to compare and has both threads compare them; false (and nothing
 * done) when the piece has too little to compare or there is no helper.
 */
static bool db_par_run(struct clone *c, struct db_par *p, uint64_t n)
{
	struct pmfuse_fs *fs = c->fs;
	uint64_t total = 0, half, acc = 0;

	if (fs->helper_off)
		return false;
	p->njob = 0;
	for (uint64_t b = 0; b < n && p->njob < DB_JOBS;) {
		struct brun sr = { 0 }, dr = { 0 };
		uint64_t k;

		if (brun_pair(c, b, n, &sr, &dr))
			return false;        /* the walk meets the error again */
		k = PMFUSE_MIN(sr.len, dr.len);
		if (!dr.hole && !(sr.hole == dr.hole && sr.pblock == dr.pblock) &&
		    !(sr.zero && dr.zero)) {
			p->job[p->njob++] = (struct db_job){ .b = b, .k = k, .sp = sr.pblock,
							     .dp = dr.pblock, .sz = sr.zero,
							     .dz = dr.zero };
			total += k;
		}
		b += k;
	}
	if (!total || total * fs->bs < db_par_min())
		return false;
	if (!fs->helper_buf) {
		fs->helper_buf = malloc(2 * PMFUSE_CMP_CHUNK);
		if (!fs->helper_buf)
			return false;
	}
	/* the split: the block where half of the blocks to compare lie below, rounded up to a
	 * word of the bitmaps */
	half = total / 2;
	p->split = 0;
	for (unsigned q = 0; q < p->njob; q++) {
		if (acc + p->job[q].k >= half) {
			p->split = PMFUSE_ALIGN_UP(p->job[q].b + (half - acc), 64);
			break;
		}
		acc += p->job[q].k;
	}
	memset(p->done, 0, sizeof(p->done));
	memset(p->eq, 0, sizeof(p->eq));
	if (!pmfuse_helper_run(fs, db_par_helper, p))
		return false;
	db_par_half(p, 0, p->split, fs->cmp_buf);
	pmfuse_helper_wait(fs);
	return true;
}

static int db_piece(struct clone *c, struct db_walk *w, uint64_t n)
{
	struct pmfuse_fs *fs = c->fs;
	uint64_t bs = fs->bs;
	struct db_par *par = NULL;
	int rc = 0;

	/* a piece worth two threads: the list and both halves' compares first */
	if (!fs->helper_off && n * bs >= db_par_min()) {
		par = malloc(sizeof(*par));
		if (par) {
			par->fs = fs;
			par->w = w;
			if (!db_par_run(c, par, n)) {
				free(par);
				par = NULL;
			}
		}
	}
	for (uint64_t b = 0; b < n && !rc;) {
		struct brun sr = { 0 }, dr = { 0 };   /* brun_at fills them; gcc -O2 cannot tell */
		uint64_t k;

		rc = brun_pair(c, b, n, &sr, &dr);
		if (rc)
			return rc;
		k = PMFUSE_MIN(sr.len, dr.len);
		if ((dr.hole && sr.hole) || (!sr.hole && !dr.hole && sr.pblock == dr.pblock)) {
			w->cnt->same += db_bytes(w, bs, b, k);
			rc = db_flush(c, w);
		} else {
			/* dr a hole: nothing to gain, source zero blocks are "same", others
			 * differ; else block by block, equal ones extending the run */
			if (dr.hole)
				rc = db_flush(c, w);
			for (uint64_t i = 0; i < k && !rc;) {
				uint64_t m = PMFUSE_MIN(k - i, PMFUSE_CMP_CHUNK / bs);
				size_t clen = (size_t)db_bytes(w, bs, b + i, m);
				const uint8_t *sv = NULL, *dv = fs->zeroes;
				/* compared already by both threads (db_par_run) */
				bool known = par && bits_all(par->done, b + i, m);

				if (!known) {
					sv = brun_view(fs, &sr, sr.hole ? 0 : i, clen, 0, &rc);
					if (sv && !dr.hole)
						dv = brun_view(fs, &dr, i, clen, 1, &rc);
					if (!sv || !dv)
						break;
				}
				/* the common case, equal chunks, in one memcmp */
				if (known ? bits_all(par->eq, b + i, m) : !memcmp(sv, dv, clen)) {
					if (dr.hole) {
						w->cnt->same += clen;
					} else {
						if (!w->run_len)
							w->run = b + i;
						w->run_len += m;
					}
					i += m;
					continue;
				}
				for (uint64_t j = 0; j < m && !rc; j++, i++) {
					uint64_t len = db_bytes(w, bs, b + i, 1);
					bool eq = known ? bit_get(par->eq, b + i) :
						  !memcmp(sv + (sr.hole ? 0 : j * bs), dv + j * bs,
							  (size_t)len);

					if (dr.hole) {
						*(eq ? &w->cnt->same : &w->cnt->differ) += len;
					} else if (eq) {
						if (!w->run_len)
							w->run = b + i;
						w->run_len++;
					} else {
						w->cnt->differ += len;
						rc = db_flush(c, w);
					}
				}
			}
		}
		b += k;
	}
	if (!rc)
		rc = db_flush(c, w);
	free(par);
	return rc;
}

int pmfuse_fs_dedupe_blocks(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			    uint64_t len, uint64_t dst_ino, uint64_t dst_off,
			    struct pmfuse_dedupe_counts *cnt)
{
	uint64_t bs = fs->bs, pos = 0;
	int rc = 0;

	memset(cnt, 0, sizeof(*cnt));
	if (fs->readonly)
		return -EROFS;
	if (src_off % bs || dst_off % bs)
		return -EINVAL;
	while (pos < PMFUSE_DEDUPE_BLOCKS_MAX) {
		struct rfile s, d, *dp;
		struct db_walk w = { .cnt = cnt };
		struct clone c;
		uint64_t n;

		fs_ilock(fs, (struct pmfuse_ilock_req[]){ { src_ino, true }, { dst_ino, true } }, 2);
		fs_wrlock(fs);
		rc = rfiles_get(fs, src_ino, dst_ino, &s, &d, &dp);
		if (!rc && !pos) {
			/* the whole request, once: inside both files, no overlap */
			uint64_t ss = rsize(&s), ds = rsize(dp);

			if (src_off >= ss || dst_off >= ds)
				rc = -EINVAL;
			else if (!len)
				len = PMFUSE_MIN(ss - src_off, ds - dst_off);
			if (!rc && src_ino == dst_ino &&
			    ranges_overlap(src_off, PMFUSE_ALIGN_UP(len, bs), dst_off,
					   PMFUSE_ALIGN_UP(len, bs)))
				rc = -EINVAL;
		}
		n = len - pos;
		if (!rc)
			rc = dedupe_prep(fs, &s, src_off + pos, &n, dp, dst_off + pos, &c);
		if (!rc) {
			w.bytes = n;
			rc = db_piece(&c, &w, c.top);
			if (!rc)
				cnt->compared += n;
		}
		fs_unlock(fs);
		fs_iunlock(fs);
		if (rc || !n)
			break;
		pos += n;
		if (pos >= len)
			break;
	}
	if (rc == 1 || (rc == -EINVAL && pos))
		rc = 0;   /* nothing (more) to do, or a file shrank after the first piece */
	return rc < 0 ? rc : 0;
}

/* ---- unshare -------------------------------------------------------------------------------- */

int pmfuse_fs_unshare(struct pmfuse_fs *fs, uint64_t ino, uint64_t off, uint64_t len)
{
	struct rfile f;
	int rc;

	if (fs->readonly)
		return -EROFS;
	if (off > PMFUSE_FILE_SIZE_MAX || len > PMFUSE_FILE_SIZE_MAX - off)
		return -EFBIG;
	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = rfile_get(fs, ino, &f);
	if (!rc)
		rc = pmfuse_data_unshare(fs, ino, off, len);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

/* ---- extent report -------------------------------------------------------------------------- */

struct gx {
	struct pmfuse_btree rc;
	uint32_t bs;
	uint64_t from;
	struct pmfuse_extent_info *out;
	unsigned max, n;
	uint64_t next;
	int err;
};

/* Reports e from block gx->from on, split into runs of equal refcount. */
static int gx_ext(void *arg, const struct pmfuse_iext *e)
{
	struct gx *g = arg;
	uint64_t pos = PMFUSE_MAX(e->fblock, g->from), end = e->fblock + e->len;

	while (pos < end) {
		uint64_t p = e->pblock + (pos - e->fblock), run;
		uint32_t count;

		if (g->n == g->max) {
			g->next = pos * g->bs;
			return 1;
		}
		g->err = pmfuse_refcount_get(&g->rc, p, end - pos, &count, &run);
		if (g->err)
			return 1;
		g->out[g->n].logical = pos * g->bs;
		g->out[g->n].physical = p * g->bs;
		g->out[g->n].length = run * g->bs;
		g->out[g->n].refcount = count;
		g->out[g->n].unwritten = e->flags & PMFUSE_EXTENT_UNWRITTEN;
		g->n++;
		pos += run;
	}
	return 0;
}

int pmfuse_fs_get_extents(struct pmfuse_fs *fs, uint64_t ino, uint64_t start,
			  struct pmfuse_extent_info *out, unsigned max, uint64_t *next)
{
	struct gx g = { .bs = fs->bs, .out = out, .max = max, .next = UINT64_MAX };
	struct rfile f;
	int rc;

	*next = UINT64_MAX;
	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = rfile_get(fs, ino, &f);
	if (!rc && max) {
		pmfuse_refcount_tree(fs->vol, &g.rc);
		g.from = start / fs->bs;
		rc = pmfuse_extent_walk(&f.map, g.from, f.map.fmax, gx_ext, &g);
		if (rc > 0)
			rc = 0;
		if (!rc)
			rc = g.err;
		*next = g.next;
	} else if (!rc) {
		*next = start;
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc ? rc : (int)g.n;
}

/* ---- CoW extent size hint ------------------------------------------------------------------- */

static int hint_inode(struct pmfuse_fs *fs, uint64_t ino, struct pmfuse_inode **ip,
		      struct pmfuse_blk_hdr **leaf)
{
	uint32_t mode;
	int rc = pmfuse_inode_locate(fs, ino, ip, leaf);

	if (rc)
		return rc;
	mode = pmfuse_le32((*ip)->mode);
	return S_ISREG(mode) || S_ISDIR(mode) ? 0 : -EINVAL;
}

int pmfuse_fs_get_cowextsize(struct pmfuse_fs *fs, uint64_t ino, uint32_t *blocks)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	int rc;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = hint_inode(fs, ino, &ip, &leaf);
	if (!rc)
		*blocks = pmfuse_le32(ip->cowextsize);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

int pmfuse_fs_set_cowextsize(struct pmfuse_fs *fs, uint64_t ino, uint32_t blocks)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;
	int rc;

	if (blocks > PMFUSE_COWEXTSIZE_MAX)
		return -EINVAL;
	if (fs->readonly)
		return -EROFS;
	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = hint_inode(fs, ino, &ip, &leaf);
	if (!rc) {
		tx = pmfuse_tx_begin(fs->txm);
		rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
		if (!rc) {
			pmfuse_set_le32(&ip->cowextsize, blocks);
			rc = pmfuse_inode_touch(tx, leaf, ip, PMFUSE_TIME_C);
		}
		if (rc)
			pmfuse_tx_abort(tx);
		else
			pmfuse_tx_commit(tx);
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

/* ---- space check ---------------------------------------------------------------------------- */

/* A run of pool blocks found in the trees: metadata (used once) or file data (counted). */
struct span {
	uint64_t pos;
	int64_t delta;      /* +1 at a start, -1 at an end */
	bool meta;
	bool unwritten;     /* mapped by an unwritten extent */
};

struct check {
	struct pmfuse_fs *fs;
	struct span *v;
	size_t n, cap;
	uint64_t data_start, data_end;
	struct pmfuse_space_report rep;
	char *msg;
	size_t msglen;
	bool trees_checked;     /* the caller checked every tree in this run: walk, don't check */
	struct pmfuse_btree_cursor rcur;   /* the refcount record at or after the sweep */
	int rcur_rc;            /* 0: rcur is on a record; -ENOENT: none left */
	int err;
};

static int check_fail(struct check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int check_fail(struct check *k, const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (k->msg && k->msglen)
		snprintf(k->msg, k->msglen, "%s", buf);
	if (!k->err)
		k->err = pmfuse_corrupt(__FILE__, __LINE__, "space check: %s", buf);
	return k->err;
}

static void span_add(struct check *k, uint64_t start, uint64_t len, bool meta, bool unwritten)
{
	if (k->err)
		return;
	if (!len || start < k->data_start || start > k->data_end || len > k->data_end - start) {
		check_fail(k, "%s blocks %llu+%llu outside the data area", meta ? "metadata" : "data",
			   ULL(start), ULL(len));
		return;
	}
	if (k->n + 2 > k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 1024;
		struct span *v = realloc(k->v, cap * sizeof(*v));

		if (!v) {
			k->err = -ENOMEM;
			return;
		}
		k->v = v;
		k->cap = cap;
	}
	k->v[k->n++] = (struct span){ start, +1, meta, unwritten };
	k->v[k->n++] = (struct span){ start + len, -1, meta, unwritten };
	if (meta)
		k->rep.meta_blocks += len;
}

static void visit_node(void *arg, uint64_t blk)
{
	span_add(arg, blk, 1, true, false);
}

static int check_tree(struct check *k, const struct pmfuse_btree *bt)
{
	char msg[200] = "";

	if (k->trees_checked) {
		pmfuse_btree_walk_nodes(bt, visit_node, k);
		return k->err;
	}
	if (pmfuse_btree_check(bt, visit_node, k, msg, sizeof(msg)))
		return check_fail(k, "%s tree (owner %llu): %s", bt->ops->name, ULL(bt->owner),
				  msg);
	return k->err;
}

/* The inode at the inode table's cursor (its record checked by the tree check). */
static int check_inode(struct check *k, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf)
{
	struct pmfuse_fs *fs = k->fs;
	struct pmfuse_btree_cursor cur;
	struct pmfuse_btree bt;
	uint64_t ino = pmfuse_le64(ip->ino);
	uint32_t mode;
	int rc;

	mode = pmfuse_le32(ip->mode);
	if (S_ISREG(mode) || S_ISLNK(mode)) {
		uint64_t sum = 0, prev_end = 0;

		k->rep.files++;
		pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_extent_ops, &bt);
		if (check_tree(k, &bt))
			return k->err;
		bool inl = pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP;
		unsigned i = 0;

		/* an inline map's records sit in the inode (its tree is empty then) */
		for (rc = inl ? 0 : pmfuse_btree_first(&cur, &bt); !rc;
		     rc = inl ? (++i < PMFUSE_INLINE_EXTENTS ? 0 : -ENOENT) :
		     pmfuse_btree_next(&cur)) {
			struct pmfuse_extent x;
			uint64_t f, p, len;

			memcpy(&x, inl ? (const void *)&ip->inline_map[i] :
			       pmfuse_btree_cursor_rec(&cur), sizeof(x));
			if (inl && !pmfuse_le32(x.len))
				continue;   /* a free slot */
			f = pmfuse_le64(x.fblock);
			p = pmfuse_le64(x.pblock);
			len = pmfuse_le32(x.len);
			if (f < prev_end)
				return check_fail(k, "inode %llu: extent at file block %llu overlaps",
						  ULL(ino), ULL(f));
			span_add(k, p, len, false,
				 pmfuse_le32(x.flags) & PMFUSE_EXTENT_UNWRITTEN);
			sum += len;
			prev_end = f + len;
			k->rep.extents++;
		}
		if (rc != -ENOENT)
			return check_fail(k, "inode %llu: reading extents: %d", ULL(ino), rc);
		if (sum != pmfuse_le64(ip->blocks))
			return check_fail(k, "inode %llu: %llu blocks mapped, the inode says %llu",
					  ULL(ino), ULL(sum), ULL(pmfuse_le64(ip->blocks)));
		k->rep.mapped_blocks += sum;
	} else if (S_ISDIR(mode)) {
		pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_dirent_ops, &bt);
		if (check_tree(k, &bt))
			return k->err;
		if (pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES) {
			pmfuse_inode_tree(fs, ip, leaf, &ip->sdir, &pmfuse_sdirent_ops, &bt);
			if (check_tree(k, &bt))
				return k->err;
		}
	}
	pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, &bt);
	if (check_tree(k, &bt))
		return k->err;
	for (rc = pmfuse_btree_first(&cur, &bt); !rc; rc = pmfuse_btree_next(&cur)) {
		const struct pmfuse_xattr *x = pmfuse_btree_cursor_rec(&cur);

		if (pmfuse_le64(x->value_blk))
			span_add(k, pmfuse_le64(x->value_blk), pmfuse_le32(x->value_blocks), true,
				 false);
	}
	if (rc != -ENOENT)
		return check_fail(k, "inode %llu: reading xattrs: %d", ULL(ino), rc);
	return k->err;
}

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	if (x->pos != y->pos)
		return x->pos < y->pos ? -1 : 1;
	return (x->delta > y->delta) - (x->delta < y->delta);   /* ends first */
}

/* Blocks [a, b) are mapped `cov` times: their refcount must say so and they must be in use. */
static int check_segment(struct check *k, const struct pmfuse_btree *rt, uint64_t a, uint64_t b,
			 uint64_t cov)
{
	struct pmfuse_alloc *al = k->fs->alloc;

	/* one cursor walks the refcount records beside the sweep (a seek per segment cost a crc
	 * check of every node on the path, a tenth of a check) */
	(void)rt;
	for (uint64_t pos = a; pos < b;) {
		struct pmfuse_refcount_rec r;
		uint64_t run, start = 0, end = 0;
		uint32_t count;

		while (!k->rcur_rc) {
			memcpy(&r, pmfuse_btree_cursor_rec(&k->rcur), sizeof(r));
			start = pmfuse_le64(r.start);
			end = start + pmfuse_le32(r.len);
			if (end > pos)
				break;
			k->rcur_rc = pmfuse_btree_next(&k->rcur);
		}
		if (k->rcur_rc && k->rcur_rc != -ENOENT)
			return check_fail(k, "refcount of block %llu: %d", ULL(pos), k->rcur_rc);
		if (!k->rcur_rc && start <= pos) {
			count = pmfuse_le32(r.refcount);
			run = PMFUSE_MIN(end, b) - pos;
		} else {
			count = 1;   /* a gap between records: mapped once */
			run = (!k->rcur_rc ? PMFUSE_MIN(start, b) : b) - pos;
		}
		if (count != cov)
			return check_fail(k, "blocks %llu+%llu are mapped %llu times, refcount %u",
					  ULL(pos), ULL(run), ULL(cov), count);
		pos += run;
	}
	for (uint64_t blk = a; al && blk < b; blk++)
		if (pmfuse_alloc_is_used(al, blk) != 1)
			return check_fail(k, "block %llu is mapped but free", ULL(blk));
	return 0;
}

static int check_sweep(struct check *k, const struct pmfuse_btree *rt)
{
	struct pmfuse_alloc *al = k->fs->alloc;
	int64_t data = 0, meta = 0, unw = 0;

	if (k->n)   /* an empty pool has no spans (and k->v is NULL, which qsort may not get) */
		qsort(k->v, k->n, sizeof(*k->v), span_cmp);
	for (size_t i = 0; i < k->n; i++) {
		uint64_t a = k->v[i].pos, b;

		if (k->v[i].meta)
			meta += k->v[i].delta;
		else
			data += k->v[i].delta;
		if (k->v[i].unwritten)
			unw += k->v[i].delta;
		if (i + 1 == k->n || k->v[i + 1].pos == a)
			continue;
		b = k->v[i + 1].pos;
		if (meta > 1 || (meta && data))
			return check_fail(k, "blocks %llu+%llu are used %lld times as metadata and "
					  "%lld times as data", ULL(a), ULL(b - a), (long long)meta,
					  (long long)data);
		if (meta) {
			for (uint64_t blk = a; al && blk < b; blk++)
				if (pmfuse_alloc_is_used(al, blk) != 1)
					return check_fail(k, "metadata block %llu is free",
							  ULL(blk));
		} else if (data) {
			if (unw && unw != data)
				return check_fail(k, "blocks %llu+%llu are mapped unwritten %lld times "
						  "and written %lld times", ULL(a), ULL(b - a),
						  (long long)unw, (long long)(data - unw));
			if (check_segment(k, rt, a, b, (uint64_t)data))
				return k->err;
			k->rep.data_blocks += b - a;
			if (data > 1)
				k->rep.shared_blocks += b - a;
		}
	}
	return 0;
}

int pmfuse_fs_check_space(struct pmfuse_fs *fs, struct pmfuse_space_report *rep, char *msg,
			  size_t msglen)
{
	return pmfuse_fs_check_space_checked(fs, false, rep, msg, msglen);
}

int pmfuse_fs_check_space_checked(struct pmfuse_fs *fs, bool trees_checked,
				  struct pmfuse_space_report *rep, char *msg, size_t msglen)
{
	const struct pmfuse_sb *sb = &fs->vol->sb;
	struct check k = { .fs = fs, .msg = msg, .msglen = msglen,
			   .trees_checked = trees_checked };
	struct pmfuse_btree_cursor cur;
	struct pmfuse_btree rt;
	uint64_t rec_blocks = 0;
	char rmsg[200] = "";
	int rc;

	if (msg && msglen)
		msg[0] = '\0';
	k.data_start = pmfuse_le64(sb->data_start);
	k.data_end = pmfuse_le64(sb->sb2_block);
	pmfuse_refcount_tree(fs->vol, &rt);
	fs_rdlock(fs);

	if (check_tree(&k, &fs->inodes) || check_tree(&k, &fs->orphans) || check_tree(&k, &rt))
		goto out;
	if (pmfuse_refcount_check(&rt, fs->alloc, rmsg, sizeof(rmsg))) {
		check_fail(&k, "%s", rmsg);
		goto out;
	}
	for (rc = pmfuse_btree_first(&cur, &rt); !rc; rc = pmfuse_btree_next(&cur)) {
		struct pmfuse_refcount_rec r;

		memcpy(&r, pmfuse_btree_cursor_rec(&cur), sizeof(r));
		rec_blocks += pmfuse_le32(r.len);
		k.rep.refcount_recs++;
	}
	for (rc = pmfuse_btree_first(&cur, &fs->inodes); !rc; rc = pmfuse_btree_next(&cur)) {
		struct pmfuse_blk_hdr *leaf = pmfuse_volume_block(fs->vol, cur.path[0].blk);

		/* the record inside its leaf, as pmfuse_inode_locate would give it (read only here) */
		if (check_inode(&k, (struct pmfuse_inode *)((uint8_t *)leaf +
				((const uint8_t *)pmfuse_btree_cursor_rec(&cur) - (uint8_t *)leaf)),
				leaf))
			goto out;
	}
	if (rc != -ENOENT) {
		check_fail(&k, "reading the inode table: %d", rc);
		goto out;
	}
	k.rcur_rc = pmfuse_btree_first(&k.rcur, &rt);
	if (k.err || check_sweep(&k, &rt))
		goto out;
	/* refcount records cover exactly the blocks mapped more than once */
	if (rec_blocks != k.rep.shared_blocks) {
		check_fail(&k, "refcount records cover %llu blocks, %llu blocks are shared",
			   ULL(rec_blocks), ULL(k.rep.shared_blocks));
		goto out;
	}
	/* and nothing else is in use: no leak */
	if (fs->alloc) {
		uint64_t used;

		k.rep.free_blocks = pmfuse_alloc_free_blocks(fs->alloc);
		used = k.data_end - k.data_start - k.rep.free_blocks;
		if (used != k.rep.meta_blocks + k.rep.data_blocks) {
			check_fail(&k, "%llu blocks in use, %llu metadata + %llu data found",
				   ULL(used), ULL(k.rep.meta_blocks), ULL(k.rep.data_blocks));
			goto out;
		}
		if (pmfuse_alloc_check(fs->alloc))
			check_fail(&k, "allocator index does not match its bitmap");
	}
out:
	fs_unlock(fs);
	free(k.v);
	if (rep)
		*rep = k.rep;
	return k.err;
}
