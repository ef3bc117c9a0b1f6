/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The filesystem object: open and close, the fs lock, lookup counts, the orphan list, statfs and
 * freeing inodes.
 *
 * Open. A fresh pool (empty inode table) gets its root directory, inode state->root_ino (1), in
 * one transaction. Then the orphan list is worked off: every record names an inode that either
 * has nlink 0 (its last name went while the kernel still held it, and the daemon stopped before
 * the last forget) and is freed now, or has nlink > 0 and was in the middle of a shrinking
 * truncate (the data engineer puts such inodes on the list so that the freeing of blocks past EOF
 * survives a crash): its blocks past EOF are freed and the record goes.
 *
 * Lookup counts (DRAM only, they mean nothing after a restart): an open-addressing table with
 * linear probing, ino -> count, 0 = free slot, deletion by backward shift (no tombstones), grown
 * at half load. Every entry has count > 0. Invariant between operations: an inode with nlink 0 is
 * on the orphan list and has a lookup count > 0, or it is being freed right now by the thread
 * that holds fs->lock for writing.
 *
 * An inode without data, xattrs or entries and without references is freed inside the
 * transaction that removes its last name (pmfuse_inode_drop): one transaction, no orphan entry.
 * Any other inode is freed by pmfuse_inode_free, which is restartable: the inode is on the orphan
 * list before the first step, the data goes in as many transactions as pmfuse_data_trim needs,
 * the xattr value blocks, the xattr tree and the directory tree in one, and the record and the
 * orphan entry together in the last. A crash anywhere leaves an orphan that the next open finishes.
 *
 * Close frees every inode whose only references were the kernel's (nlink 0): the session ends,
 * so do the references.
 *
 * Locking: see fs_internal.h. forget takes fs->lock only when a count reaches 0, and for writing
 * only when the inode has nlink 0.
 */
#include "fs/fs_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pool/pool.h"
#include "util/util.h"

/* ---- orphan tree ---------------------------------------------------------------------------- */

static uint64_t le64_at(const void *p)
{
	struct pmfuse_le64 v;

	memcpy(&v, p, sizeof(v));
	return pmfuse_le64(v);
}

static int orphan_check_rec(const void *rec)
{
	const struct pmfuse_orphan *o = rec;

	if (!pmfuse_le64(o->ino) || pmfuse_le64(o->pad))
		return PMFUSE_CORRUPT("orphan record: ino %llu, pad %llu",
				      (unsigned long long)pmfuse_le64(o->ino),
				      (unsigned long long)pmfuse_le64(o->pad));
	return 0;
}

const struct pmfuse_btree_ops pmfuse_orphan_ops = {
	.name = "orphans",
	.key_len = 8,
	.rec_len = sizeof(struct pmfuse_orphan),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = orphan_check_rec,
};

int pmfuse_orphan_add(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino)
{
	struct pmfuse_orphan o;
	int rc;

	memset(&o, 0, sizeof(o));
	pmfuse_set_le64(&o.ino, ino);
	rc = pmfuse_btree_insert(tx, &fs->orphans, &o);
	return rc == -EEXIST ? 0 : rc;
}

int pmfuse_orphan_del(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino)
{
	struct pmfuse_le64 key;
	int rc;

	pmfuse_set_le64(&key, ino);
	rc = pmfuse_btree_delete(tx, &fs->orphans, &key, NULL);
	return rc == -ENOENT ? 0 : rc;
}

/* ---- lookup counts -------------------------------------------------------------------------- */

static size_t lk_hash(uint64_t ino, size_t mask)
{
	ino ^= ino >> 33;
	ino *= 0xff51afd7ed558ccdull;
	ino ^= ino >> 33;
	return (size_t)ino & mask;
}

/* Slot of ino, or of the free slot where it would go. lookup_lock held. */
static size_t lk_slot(const struct pmfuse_fs *fs, uint64_t ino)
{
	size_t mask = fs->nlookups - 1, i = lk_hash(ino, mask);

	while (fs->lookups[i].ino && fs->lookups[i].ino != ino)
		i = (i + 1) & mask;
	return i;
}

static int lk_grow(struct pmfuse_fs *fs)
{
	struct pmfuse_lookup_entry *old = fs->lookups;
	size_t n = fs->nlookups, i;

	fs->lookups = calloc(n * 2, sizeof(*fs->lookups));
	if (!fs->lookups) {
		fs->lookups = old;
		return -ENOMEM;
	}
	fs->nlookups = n * 2;
	for (i = 0; i < n; i++)
		if (old[i].ino)
			fs->lookups[lk_slot(fs, old[i].ino)] = old[i];
	free(old);
	return 0;
}

/* Removes the entry at slot i and shifts later members of its probe run back. */
static void lk_remove_at(struct pmfuse_fs *fs, size_t i)
{
	size_t mask = fs->nlookups - 1, j = i;

	for (;;) {
		size_t home;

		j = (j + 1) & mask;
		if (!fs->lookups[j].ino)
			break;
		home = lk_hash(fs->lookups[j].ino, mask);
		/* j may move to i when its home is not in (i, j] cyclically */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			fs->lookups[i] = fs->lookups[j];
			i = j;
		}
	}
	fs->lookups[i].ino = 0;
	fs->lookups[i].count = 0;
	fs->lookups_used--;
}

/* pmfuse_lookup_ref with lookup_lock held. */
static void lk_ref(struct pmfuse_fs *fs, uint64_t ino)
{
	size_t i;

	if ((fs->lookups_used + 1) * 2 > fs->nlookups && lk_grow(fs))
		pmfuse_log(PMFUSE_LOG_WARN, "lookup table: out of memory growing past %zu entries",
			   fs->nlookups);
	i = lk_slot(fs, ino);
	if (!fs->lookups[i].ino) {
		if (fs->lookups_used + 1 >= fs->nlookups) {
			/* cannot happen unless growing failed repeatedly: keep going uncounted */
			return;
		}
		fs->lookups[i].ino = ino;
		fs->lookups_used++;
	}
	fs->lookups[i].count++;
}

void pmfuse_lookup_ref(struct pmfuse_fs *fs, uint64_t ino)
{
	pthread_mutex_lock(&fs->lookup_lock);
	lk_ref(fs, ino);
	pthread_mutex_unlock(&fs->lookup_lock);
}

bool pmfuse_lookup_ref_if(struct pmfuse_fs *fs, uint64_t ino, bool (*ok)(void *arg), void *arg)
{
	bool yes;

	pthread_mutex_lock(&fs->lookup_lock);
	yes = ok(arg);
	if (yes)
		lk_ref(fs, ino);
	pthread_mutex_unlock(&fs->lookup_lock);
	return yes;
}

/* The kernel's references to ino (0 when none). */
static uint64_t lk_count(struct pmfuse_fs *fs, uint64_t ino)
{
	uint64_t n;

	pthread_mutex_lock(&fs->lookup_lock);
	n = fs->lookups[lk_slot(fs, ino)].count;
	pthread_mutex_unlock(&fs->lookup_lock);
	return n;
}

/* Frees ino if it has nlink 0 and no references. fs->lock held for writing. */
static int free_if_unused(struct pmfuse_fs *fs, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	int rc;

	if (ino == PMFUSE_ROOT_INO || lk_count(fs, ino))
		return 0;
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		return rc == -ENOENT ? 0 : rc;
	if (pmfuse_le32(ip->nlink))
		return 0;
	return pmfuse_inode_free(fs, ino);
}

int pmfuse_inode_release(struct pmfuse_fs *fs, uint64_t ino)
{
	return free_if_unused(fs, ino);
}

int pmfuse_inode_drop(struct pmfuse_fs *fs, struct pmfuse_tx *tx, const struct pmfuse_inode *ip)
{
	uint64_t ino = pmfuse_le64(ip->ino);
	struct pmfuse_le64 key;
	int rc;

	if (pmfuse_le32(ip->nlink) || pmfuse_le16(ip->map.levels) ||
	    pmfuse_le16(ip->xattrs.levels) || pmfuse_le64(ip->blocks) || lk_count(fs, ino) ||
	    ((pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES) && pmfuse_le16(ip->sdir.levels)))
		return 0;
	if (fs->icache)
		pmfuse_icache_forget(fs->icache, ino);
	pmfuse_set_le64(&key, ino);
	rc = pmfuse_btree_delete(tx, &fs->inodes, &key, NULL);
	if (!rc)
		rc = pmfuse_orphan_del(fs, tx, ino);
	return rc ? rc : 1;
}

void pmfuse_fs_forget(struct pmfuse_fs *fs, uint64_t ino, uint64_t nlookup)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	bool zero = false, unlinked;
	size_t i;
	int rc;

	pthread_mutex_lock(&fs->lookup_lock);
	i = lk_slot(fs, ino);
	if (fs->lookups[i].ino) {
		if (fs->lookups[i].count <= nlookup) {
			lk_remove_at(fs, i);
			zero = true;
		} else {
			fs->lookups[i].count -= nlookup;
		}
	}
	pthread_mutex_unlock(&fs->lookup_lock);
	if (!zero || fs->readonly || ino == PMFUSE_ROOT_INO)
		return;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	unlinked = !rc && pmfuse_le32(ip->nlink) == 0;
	fs_unlock(fs);
	fs_iunlock(fs);
	if (!unlinked)
		return;

	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = free_if_unused(fs, ino);
	fs_unlock(fs);
	fs_iunlock(fs);
	if (rc)
		pmfuse_log(PMFUSE_LOG_ERR, "freeing unlinked inode %llu: %s (it stays on the "
			   "orphan list)", (unsigned long long)ino, strerror(-rc));
}

/* ---- freeing inodes ------------------------------------------------------------------------- */

/* Frees the out-of-line value blocks of every xattr, then the xattr tree. */
static int free_xattrs(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_btree *xt)
{
	struct pmfuse_btree_cursor cur;
	int rc;

	rc = pmfuse_btree_first(&cur, xt);
	while (!rc) {
		const struct pmfuse_xattr *x = pmfuse_btree_cursor_rec(&cur);
		uint64_t blk = pmfuse_le64(x->value_blk);

		/* freeing blocks touches only the bitmap: the cursor stays valid */
		if (blk) {
			rc = pmfuse_alloc_free(tx, fs->alloc, blk, pmfuse_le32(x->value_blocks));
			if (rc)
				return rc;
		}
		rc = pmfuse_btree_next(&cur);
	}
	if (rc != -ENOENT)
		return rc;
	return pmfuse_btree_destroy(tx, xt);
}

int pmfuse_inode_free(struct pmfuse_fs *fs, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_btree bt;
	struct pmfuse_le64 key;
	struct pmfuse_tx *tx;
	uint32_t mode;
	int rc;

	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		return rc;
	if (ino == PMFUSE_ROOT_INO || pmfuse_le32(ip->nlink))
		return PMFUSE_CORRUPT("inode %llu: freeing an inode with nlink %u",
				      (unsigned long long)ino, pmfuse_le32(ip->nlink));
	mode = pmfuse_le32(ip->mode);

	/* 1. on the orphan list, so that a crash from here on is finished by the next open */
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_orphan_add(fs, tx, ino);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);

	/* 2. file data (regular files and symlinks), in the data code's own transactions */
	if (S_ISREG(mode) || S_ISLNK(mode)) {
		rc = pmfuse_data_trim(fs, ino, 0);
		if (rc)
			return rc;
	}

	/* 3. xattrs and directory entries; 4. the record and the orphan entry */
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		return rc;
	tx = pmfuse_tx_begin(fs->txm);
	if (pmfuse_le16(ip->xattrs.levels)) {
		pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, &bt);
		rc = free_xattrs(fs, tx, &bt);
		if (rc)
			goto out_abort;
	}
	if (S_ISDIR(mode) && pmfuse_le16(ip->map.levels)) {
		pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_dirent_ops, &bt);
		rc = pmfuse_btree_destroy(tx, &bt);
		if (rc)
			goto out_abort;
	}
	if (S_ISDIR(mode) && (pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES) &&
	    pmfuse_le16(ip->sdir.levels)) {
		pmfuse_inode_tree(fs, ip, leaf, &ip->sdir, &pmfuse_sdirent_ops, &bt);
		rc = pmfuse_btree_destroy(tx, &bt);
		if (rc)
			goto out_abort;
	}
	if (fs->icache)
		pmfuse_icache_forget(fs->icache, ino);
	pmfuse_set_le64(&key, ino);
	rc = pmfuse_btree_delete(tx, &fs->inodes, &key, NULL);
	if (!rc)
		rc = pmfuse_orphan_del(fs, tx, ino);
	if (rc)
		goto out_abort;
	pmfuse_tx_commit(tx);
	return 0;

out_abort:
	pmfuse_tx_abort(tx);
	return rc;
}

/* Finishes one orphan: frees it (nlink 0) or completes its truncate (nlink > 0). */
static int settle_orphan(struct pmfuse_fs *fs, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;
	uint32_t mode;
	int rc;

	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc && !pmfuse_le32(ip->nlink))
		return pmfuse_inode_free(fs, ino);
	if (rc && rc != -ENOENT)
		return rc;
	if (!rc) {
		/* a pending truncate: finish freeing the blocks past EOF */
		uint64_t eof = (pmfuse_le64(ip->size) + fs->bs - 1) / fs->bs;

		mode = pmfuse_le32(ip->mode);
		if (S_ISREG(mode) || S_ISLNK(mode)) {
			rc = pmfuse_data_trim(fs, ino, eof);
			if (rc)
				return rc;
		}
	}
	/* done, or the record is gone already */
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_orphan_del(fs, tx, ino);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

/*
 * Works off the orphan list (open, close). An orphan that cannot be finished (damage, a full
 * log) is reported and stays on the list for fsck or the next open; only a damaged orphan tree
 * itself is an error. fs->lock held for writing, or the fs not shared yet.
 */
static int process_orphans(struct pmfuse_fs *fs)
{
	uint64_t after = 0;

	for (;;) {
		struct pmfuse_btree_cursor cur;
		struct pmfuse_le64 key;
		uint64_t ino;
		int rc;

		pmfuse_set_le64(&key, after + 1);
		rc = pmfuse_btree_seek(&cur, &fs->orphans, &key, PMFUSE_SEEK_GE);
		if (rc == -ENOENT)
			return 0;
		if (rc)
			return rc;
		ino = le64_at(pmfuse_btree_cursor_rec(&cur));
		after = ino;
		rc = settle_orphan(fs, ino);
		if (rc)
			pmfuse_log(PMFUSE_LOG_ERR, "orphan inode %llu: %s; it stays on the orphan "
				   "list", (unsigned long long)ino, strerror(-rc));
	}
}

/* ---- open / close --------------------------------------------------------------------------- */

static int create_root(struct pmfuse_fs *fs)
{
	struct pmfuse_cred root_cred = { .uid = 0, .gid = 0, .pid = 0, .umask = 0 };
	struct pmfuse_tx *tx;
	uint64_t ino;
	int rc;

	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_create(fs, tx, S_IFDIR | 0755, 0, &root_cred, NULL, &ino);
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	pmfuse_log(PMFUSE_LOG_INFO, "created the root directory (inode %llu)",
		   (unsigned long long)ino);
	return 0;
}

/*
 * fs->lock is writer-preferring, as the inode locks are: readers whose holds overlap (the
 * hashing threads of a dedupe scan, a stream of stats) must not keep a writer out. The lock is
 * never taken twice by one thread, which is what that kind needs.
 */
static void fs_lock_init(struct pmfuse_fs *fs)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fs->lock, &a);
	pthread_rwlockattr_destroy(&a);
}

int pmfuse_fs_open(struct pmfuse_volume *vol, const struct pmfuse_fs_opts *opts,
		   struct pmfuse_fs **out)
{
	struct pmfuse_state *st = vol->state;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_fs *fs;
	int rc;

	*out = NULL;
	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	fs->vol = vol;
	fs->pool = vol->pool;
	fs->txm = vol->txm;
	fs->alloc = vol->alloc;
	fs->bs = vol->block_size;
	fs->repair = opts && opts->repair;
	fs->long_names_only = opts && opts->long_names_only;
	if (fs->repair)
		fs->readonly = vol->readonly || !vol->txm;
	else
		fs->readonly = (opts && (opts->readonly || opts->check)) || vol->readonly ||
			       !vol->txm || !vol->alloc;
	fs_lock_init(fs);
	pthread_mutex_init(&fs->lookup_lock, NULL);
	fs->nlookups = 1024;
	fs->lookups = calloc(fs->nlookups, sizeof(*fs->lookups));
	fs->zeroes = calloc(1, PMFUSE_ZERO_BUF);
	fs->cmp_buf = malloc(2 * PMFUSE_CMP_CHUNK);
	if (!fs->lookups || !fs->zeroes || !fs->cmp_buf || pmfuse_ilock_init(fs)) {
		rc = -ENOMEM;
		goto fail;
	}
	/* b+tree nodes on the right edge may be underfull from now on (format.h: EDGE_FILL) */
	if (!fs->readonly && !pmfuse_volume_edge_fill(vol)) {
		pmfuse_set_le64(&vol->sb.incompat, pmfuse_le64(vol->sb.incompat) |
				PMFUSE_FEATURE_INCOMPAT_EDGE_FILL);
		rc = pmfuse_volume_write_sb(vol);
		if (rc)
			goto fail;
	}
	pmfuse_btree_init(&fs->inodes, fs->pool, fs->alloc, &pmfuse_inode_ops,
			  &st->roots[PMFUSE_ROOT_INODES], &st->hdr, PMFUSE_TREE_INODES, fs->bs);
	pmfuse_btree_init(&fs->orphans, fs->pool, fs->alloc, &pmfuse_orphan_ops,
			  &st->roots[PMFUSE_ROOT_ORPHANS], &st->hdr, PMFUSE_TREE_ORPHANS, fs->bs);
	fs->inodes.edge_fill = fs->orphans.edge_fill = pmfuse_volume_edge_fill(vol);

	if (pmfuse_le64(st->root_ino) != PMFUSE_ROOT_INO) {
		rc = PMFUSE_CORRUPT("state block: root inode %llu, pmfuse uses %llu",
				    (unsigned long long)pmfuse_le64(st->root_ino),
				    (unsigned long long)PMFUSE_ROOT_INO);
		goto fail;
	}
	if (!pmfuse_btree_count(&fs->inodes)) {
		if (fs->readonly || (opts && opts->repair)) {
			/* never mounted: nothing to show until a writable open makes the root */
			pmfuse_log(PMFUSE_LOG_INFO, "read-only open of a pool without a root "
				   "directory (never mounted)");
		} else if ((rc = create_root(fs))) {
			goto fail;
		}
	} else {
		rc = pmfuse_inode_locate(fs, PMFUSE_ROOT_INO, &ip, &leaf);
		if (rc == -ENOENT)
			rc = PMFUSE_CORRUPT("inode table has no root directory");
		else if (!rc && !S_ISDIR(pmfuse_le32(ip->mode)))
			rc = PMFUSE_CORRUPT("root inode is not a directory (mode 0%o)",
					    pmfuse_le32(ip->mode));
		if (rc == -EUCLEAN && opts && (opts->check || opts->repair))
			rc = 0;   /* the namespace check says what is wrong with it */
		if (rc)
			goto fail;
	}
	if (!fs->readonly && !(opts && opts->repair)) {
		rc = process_orphans(fs);
		if (rc)
			goto fail;
	}
	/* repair changes the trees behind the cache's back: never with one */
	if (opts && opts->cache_entries && !opts->repair) {
		fs->icache = pmfuse_icache_new(opts->cache_entries);
		if (!fs->icache)
			pmfuse_log(PMFUSE_LOG_WARN, "no memory for the lookup cache: running "
				   "without it");
	}
	*out = fs;
	return 0;

fail:
	pmfuse_ilock_fini(fs);
	pthread_rwlock_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->lookup_lock);
	free(fs->lookups);
	free((void *)fs->zeroes);
	free(fs->cmp_buf);
	free(fs);
	return rc;
}

void pmfuse_fs_close(struct pmfuse_fs *fs)
{
	int rc;

	if (!fs)
		return;
	pmfuse_helper_stop(fs);
	free(fs->helper_buf);
	fs->helper_buf = NULL;
	if (fs->check_alloc) {
		/* a read-only index loaded by pmfuse_fs_check_bitmap; nothing was allocated */
		fs->alloc = NULL;
		pmfuse_alloc_close(fs->check_alloc);
	}
	if (!fs->readonly && !fs->repair) {
		/* a memory error freeing them must not stop the unmount: the next open retries */
		struct pmfuse_pool_fault f;

		if (sigsetjmp(f.env, 0)) {
			pmfuse_fs_fault_recover(fs, 0, f.off);   /* rolls back, unlocks, logs */
			goto closed;
		}
		pmfuse_pool_fault_arm(fs->pool, &f);
		fs_wrlock(fs);
		/* the session's references end here: every orphan goes */
		pthread_mutex_lock(&fs->lookup_lock);
		memset(fs->lookups, 0, fs->nlookups * sizeof(*fs->lookups));
		fs->lookups_used = 0;
		pthread_mutex_unlock(&fs->lookup_lock);
		rc = process_orphans(fs);
		if (rc)
			pmfuse_log(PMFUSE_LOG_ERR, "freeing orphans at close: %s (the next open "
				   "retries)", strerror(-rc));
		fs_unlock(fs);
		pmfuse_pool_fault_disarm(&f);
	} else {
		fs_wrlock(fs);   /* waits for the last readers */
		fs_unlock(fs);
	}
closed:
	pmfuse_icache_free(fs->icache);
	pmfuse_ilock_fini(fs);
	pthread_rwlock_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->lookup_lock);
	free(fs->lookups);
	free((void *)fs->zeroes);
	free(fs->cmp_buf);
	free(fs);
}

struct pmfuse_volume *pmfuse_fs_volume(struct pmfuse_fs *fs)
{
	return fs->vol;
}

/* ---- statfs --------------------------------------------------------------------------------- */

int pmfuse_fs_statfs(struct pmfuse_fs *fs, struct pmfuse_statfs *st)
{
	const struct pmfuse_sb *sb = &fs->vol->sb;
	uint64_t data_start = pmfuse_le64(sb->data_start), count = pmfuse_le64(sb->block_count);
	uint64_t free_blocks = 0, per_leaf, reserve;

	memset(st, 0, sizeof(*st));
	fs_rdlock(fs);
	if (fs->alloc) {
		free_blocks = pmfuse_alloc_free_blocks(fs->alloc);
	} else {
		struct pmfuse_alloc_geom geom = {
			.block_size = fs->bs,
			.block_count = count,
			.bitmap_start = pmfuse_le64(sb->bitmap_start),
			.bitmap_blocks = pmfuse_le64(sb->bitmap_blocks),
			.data_start = data_start,
			.sb2_block = pmfuse_le64(sb->sb2_block),
		};
		if (pmfuse_alloc_count_free(fs->pool, &geom, &free_blocks))
			free_blocks = 0;
	}
	per_leaf = pmfuse_btree_leaf_max(&fs->inodes);
	st->block_size = fs->bs;
	/* what the allocator can hand out: the data area without the secondary superblock */
	st->blocks = count > data_start + 1 ? count - data_start - 1 : 0;
	st->blocks_free = free_blocks;
	/* file data never takes the reserve (data.c), so it is free but not available: a
	 * fallocate of what df shows as available must fit (xfstests generic/103) */
	reserve = pmfuse_data_reserve(fs);
	st->blocks_avail = free_blocks > reserve ? free_blocks - reserve : 0;
	/* a leaf of the inode table holds per_leaf inodes: free blocks bound the inodes to come */
	st->files_free = free_blocks * per_leaf;
	st->files = pmfuse_btree_count(&fs->inodes) + st->files_free;
	st->name_max = PMFUSE_NAME_MAX;
	fs_unlock(fs);
	return 0;
}
