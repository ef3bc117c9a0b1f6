/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Memory errors: recovery from a SIGBUS caught during a request, the DAMAGED mark, and the
 * files on the platform's bad blocks.
 *
 * A request that touches a poisoned line (or a page past the end of a shortened pool file) is
 * interrupted wherever it was. The caller's recovery point (pool.h) brings the thread back with
 * whatever it held: this module lets go of it in the reverse order of the lock order (the
 * running transaction is rolled back from its undo log, which is what recovery after a crash
 * would do; the allocator's lock; fs->lock; the inode locks), then records the damage on the inode the request
 * was about, in a transaction of its own that may fault again (then it is only logged).
 *
 * Which file a bad block belongs to: the request's inode for a fault during a request (a fault
 * in a shared structure, the inode table or a directory, is reported under that inode too,
 * with its block); every file with an extent over the block for the bad-block list.
 */
#include "fs/fs_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pool/pool.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

__thread struct pmfuse_fs *pmfuse_fs_lock_held;
__thread struct pmfuse_fs *pmfuse_fs_writer;
__thread void *pmfuse_fs_scratch;

void pmfuse_fs_fault_arm(struct pmfuse_fs *fs, struct pmfuse_pool_fault *f)
{
	pmfuse_pool_fault_arm(fs->pool, f);
}

void pmfuse_fs_fault_disarm(struct pmfuse_pool_fault *f)
{
	pmfuse_pool_fault_disarm(f);
}

void pmfuse_fs_probe(struct pmfuse_fs *fs, const void *addr, size_t len)
{
	pmfuse_pool_probe(fs->pool, addr, len);
}

/* Lets go of what an interrupted request held, newest first (the lock order reversed). */
static void release_held(struct pmfuse_fs *fs)
{
	if (pmfuse_tx_abort_running())
		pmfuse_log(PMFUSE_LOG_INFO, "the interrupted transaction was rolled back");
	pmfuse_alloc_release_held();
	if (pmfuse_fs_lock_held == fs)
		fs_unlock(fs);
	fs_iunlock(fs);
	free(pmfuse_fs_scratch);
	pmfuse_fs_scratch = NULL;
}

/* Sets DAMAGED on ino (and the compat feature bit first): 1 if it was not set, 0 if it was.
 * fs->lock held for writing. */
static int mark_damaged(struct pmfuse_fs *fs, uint64_t ino)
{
	uint64_t compat = pmfuse_le64(fs->vol->sb.compat);
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;
	uint32_t flags;
	int rc;

	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		return rc;
	flags = pmfuse_le32(ip->flags);
	if (flags & PMFUSE_INODE_DAMAGED)
		return 0;
	if (!(compat & PMFUSE_FEATURE_COMPAT_DAMAGED)) {
		/* a copy that cannot be written is logged; the mark matters more */
		pmfuse_set_le64(&fs->vol->sb.compat, compat | PMFUSE_FEATURE_COMPAT_DAMAGED);
		pmfuse_volume_write_sb(fs->vol);
	}
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_change(tx, leaf, &ip->flags, sizeof(ip->flags));
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_set_le32(&ip->flags, flags | PMFUSE_INODE_DAMAGED);
	pmfuse_tx_commit(tx);
	return 1;
}

int pmfuse_fs_fault_recover(struct pmfuse_fs *fs, uint64_t ino, uint64_t off)
{
	struct pmfuse_pool_fault f;
	volatile int rc = 0;

	pmfuse_log(PMFUSE_LOG_ERR, "memory error at pool block %llu (offset %llu) serving inode "
		   "%llu: the request fails with EIO", ULL(off / fs->bs), ULL(off), ULL(ino));
	release_held(fs);
	if (!ino || fs->readonly)
		return -EIO;

	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	if (sigsetjmp(f.env, 0)) {
		release_held(fs);
		pmfuse_log(PMFUSE_LOG_ERR, "inode %llu: cannot mark it damaged: memory error at "
			   "pool block %llu", ULL(ino), ULL(f.off / fs->bs));
		return -EIO;
	}
	pmfuse_pool_fault_arm(fs->pool, &f);
	rc = mark_damaged(fs, ino);
	pmfuse_pool_fault_disarm(&f);
	fs_unlock(fs);
	fs_iunlock(fs);
	if (rc < 0)
		pmfuse_log(PMFUSE_LOG_ERR, "inode %llu: cannot mark it damaged: %s", ULL(ino),
			   strerror(-rc));
	else if (rc)
		pmfuse_log(PMFUSE_LOG_WARN, "inode %llu marked damaged (fsck.pmfuse reports it)",
			   ULL(ino));
	return -EIO;
}

/* ---- bad blocks ---------------------------------------------------------------------------- */

struct bad_ranges {
	uint64_t (*r)[2];            /* [first block, end block) */
	size_t n, cap;
	bool nomem;
	uint32_t bs;
};

static void add_bad(void *arg, uint64_t off, uint64_t len)
{
	struct bad_ranges *b = arg;

	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 16;
		void *p = realloc(b->r, cap * sizeof(*b->r));

		if (!p) {
			b->nomem = true;
			return;
		}
		b->r = p;
		b->cap = cap;
	}
	b->r[b->n][0] = off / b->bs;
	b->r[b->n][1] = (off + len + b->bs - 1) / b->bs;
	b->n++;
}

struct bad_walk {
	const struct bad_ranges *bad;
	uint64_t ino;
	pmfuse_fs_badblock_fn fn;
	void *arg;
};

static int bad_ext(void *arg, const struct pmfuse_iext *e)
{
	struct bad_walk *w = arg;

	for (size_t i = 0; i < w->bad->n; i++) {
		uint64_t lo = PMFUSE_MAX(e->pblock, w->bad->r[i][0]);
		uint64_t hi = PMFUSE_MIN(e->pblock + e->len, w->bad->r[i][1]);

		for (uint64_t p = lo; p < hi; p++)
			w->fn(w->arg, w->ino, e->fblock + (p - e->pblock), p);
	}
	return 0;
}

/* Calls w->fn for every block of a file on a bad range. fs->lock held. */
static int walk_files(struct pmfuse_fs *fs, struct bad_walk *w)
{
	struct pmfuse_btree_cursor cur;
	int rc;

	for (rc = pmfuse_btree_first(&cur, &fs->inodes); !rc; rc = pmfuse_btree_next(&cur)) {
		const struct pmfuse_inode *rec = pmfuse_btree_cursor_rec(&cur);
		uint32_t mode = pmfuse_le32(rec->mode);
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_extmap map;

		if (!S_ISREG(mode) && !S_ISLNK(mode))
			continue;
		w->ino = pmfuse_le64(rec->ino);
		rc = pmfuse_inode_locate(fs, w->ino, &ip, &leaf);
		if (rc)
			return rc;
		pmfuse_extmap_open(&map, fs, ip, leaf);
		rc = pmfuse_extent_walk(&map, 0, map.fmax, bad_ext, w);
		if (rc)
			return rc;
	}
	return rc == -ENOENT ? 0 : rc;
}

int pmfuse_fs_badblocks(struct pmfuse_fs *fs, pmfuse_fs_badblock_fn fn, void *arg, size_t *nbad,
			char *why, size_t why_len)
{
	struct bad_ranges bad = { .bs = fs->bs };
	struct bad_walk w = { .bad = &bad, .fn = fn, .arg = arg };
	struct pmfuse_pool_fault f;
	volatile int rc;

	*nbad = 0;
	rc = pmfuse_pool_badblocks(fs->pool, add_bad, &bad, why, why_len);
	if (!rc && bad.nomem)
		rc = -ENOMEM;
	if (rc || !bad.n)
		goto out;
	for (size_t i = 0; i < bad.n; i++)
		*nbad += bad.r[i][1] - bad.r[i][0];

	/* the metadata walked may sit on a bad block too */
	fs_rdlock(fs);
	if (sigsetjmp(f.env, 0)) {
		fs_unlock(fs);
		snprintf(why, why_len, "memory error at pool block %llu while walking the "
			 "files", ULL(f.off / fs->bs));
		rc = -EIO;
		goto out;
	}
	pmfuse_pool_fault_arm(fs->pool, &f);
	rc = walk_files(fs, &w);
	pmfuse_pool_fault_disarm(&f);
	fs_unlock(fs);
out:
	free(bad.r);
	return rc;
}
