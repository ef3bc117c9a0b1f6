/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Per-file extent maps: which pool blocks hold which file blocks.
 *
 * A regular file's (or symlink's) map is a b+tree rooted in its inode record (ip->map, owner
 * PMFUSE_OWNER_INODE_BASE + ino) of struct pmfuse_extent records keyed by fblock. Invariants,
 * between transactions:
 *
 *   E1 every record has 1 <= len <= PMFUSE_EXTENT_MAX_LEN, no flags but PMFUSE_EXTENT_UNWRITTEN
 *      (and that one only on a pool with PMFUSE_FEATURE_INCOMPAT_UNWRITTEN), and its physical
 *      range [pblock, pblock + len) inside the data area [data_start, sb2_block);
 *   E2 records do not overlap: each starts at or after the end of the one before it (a gap is a
 *      hole, read as zeros); fblock + len <= 2^63 / bs (the largest file);
 *   E3 ip->blocks is the sum of len over all records;
 *   E4 every physical block of a record is allocated in the bitmap, and the number of records
 *      (over all files, a file possibly several times) that map it is its count in the refcount
 *      tree (1 for a block without a refcount record: see meta/refcount.h);
 *   E5 bytes of written blocks at or past EOF are zero (data.c keeps this: new blocks are zeroed
 *      outside what a write covers, a shrinking truncate zeroes the tail of the last block), so
 *      growing a file over them exposes no stale data;
 *   E6 an unwritten block (a record with PMFUSE_EXTENT_UNWRITTEN) reads as zeros and its bytes
 *      are never read: they may be anything. A pool block mapped by several records is
 *      unwritten in all or in none (clone copies the flag; nothing else shares blocks), so
 *      that a block's bytes mean the same to every owner. Converting unwritten blocks to
 *      written (pmfuse_extent_convert) is the caller's promise that it stored every byte of
 *      them (data, zeros elsewhere) inside the same transaction.
 * E1 and E2 are checked on every record read (pmfuse_extent_find/prev/walk), so a damaged record
 * can never turn into a pointer outside the pool; fsck checks E3, E4 and E6's sharing rule.
 *
 * Inline maps. A map of few records lives in the inode itself: with PMFUSE_INODE_INLINE_MAP the
 * records are ip->inline_map[0 .. n), 1 <= n <= PMFUSE_INLINE_EXTENTS, in file order (E2), the
 * slots after them zero, and ip->map is an empty root; without the flag every slot is zero and
 * the map is the tree (possibly empty). So a file of one extent (any file of up to one block)
 * needs no map block. Only the record primitives below (lookups and rec_insert/update/delete)
 * know the difference, so merging, cutting and converting work the same on both:
 *
 *   empty tree --insert--> inline (n = 1) --insert--> inline (n = 2) --insert--> tree (n = 3)
 *   tree --unmap leaves <= PMFUSE_INLINE_EXTENTS - 1 records--> inline (or empty)
 *   inline --last record deleted--> empty tree, flag cleared
 *
 * A conversion moves the records and sets or clears the flag in the transaction of the change
 * that asks for it. Going back to inline only below the capacity (not at it) keeps a copy-on-write
 * of a whole extent (unmap one record, insert one) in a file of n = capacity + 1 from freeing
 * and allocating a tree block each time. The first inline map sets
 * PMFUSE_FEATURE_INCOMPAT_INLINE_MAP (format.h) before its transaction can commit.
 *
 * Records on the pool (struct pmfuse_extent, little-endian) and in DRAM (struct pmfuse_iext,
 * native) are converted in exactly one place each way (ext_load, ext_store).
 *
 * Inserting merges with neighbours that are contiguous both in the file and on the pool and have
 * the same flags, so a file written front to back stays one record per allocator extent:
 *
 *      L: [f0 .. f1)@p0     new: [f1 .. f2)@p0+(f1-f0)     R: [f2 .. f3)@p0+(f2-f0)
 *      ==> one record [f0 .. f3)@p0    (if the sum fits PMFUSE_EXTENT_MAX_LEN)
 *
 * Merging into L changes only L's length (an update in place); merging into R changes R's key,
 * so R is deleted and the merged record inserted.
 *
 * Unmapping [lo, hi) works from the top down: the last extent E starting below hi is cut to the
 * part outside [lo, hi), which is one of four cases, then hi moves down to the cut:
 *
 *        E.fblock                                      E.fblock + E.len
 *        |<----------------------- E ----------------------->|
 *   A    |<======================= cut ====================>|   delete E
 *   B    |<------ keep ------>|<============ cut ===========>|   E.len = lo - E.fblock (update)
 *   C    |<====== cut ======>|<------------ keep ----------->|   delete E, insert [hi, end)
 *   D    |<-- keep -->|<===== cut =====>|<------ keep ------>|   update E, insert [hi, end)
 *
 * and the cut's physical blocks go to pmfuse_extent_release (unless the cut only changes the
 * flags of [lo, hi): pmfuse_extent_convert cuts the same way, keeps the blocks, and inserts
 * [lo, hi) back with the new flags, merging with neighbours that have them), which drops one reference of each
 * (pmfuse_refcount_decr): a block nobody else maps is freed, a shared one keeps its other owners
 * and only its count changes. Working from the top means a
 * truncate removes records at the end of the tree (no first-key rewrites up the tree), and that
 * a budget can stop the walk anywhere: what is left is still a valid map of a prefix. Only D
 * adds a record, so only a hole punched inside one extent can need a new node (-ENOSPC).
 *
 * Transactions: every function here works inside the caller's transaction and changes nothing
 * outside it; on error the caller aborts (the tree may be half changed). The budget keeps one
 * transaction's undo log bounded: bitmap words for the blocks, b+tree nodes for the records.
 * data.c commits when it is spent and goes on in a new transaction. Releasing shared blocks
 * changes refcount records too: a cut is charged one node for its extent record plus one per
 * refcount record its physical range overlaps (and two for the splits at its edges), and a cut
 * whose range overlaps more records than the budget has left is shortened from below
 * (pmfuse_refcount_span_down), so that a transaction stays bounded however finely the blocks of
 * one extent are shared.
 */
#include "fs/fs_internal.h"

#include <string.h>

#include "meta/refcount.h"
#include "pool/pool.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

/* ---- b+tree ops ----------------------------------------------------------------------------- */

/* E1 and E2 as far as one record can tell without knowing the pool. */
static int extent_check_rec(const void *rec)
{
	const struct pmfuse_extent *e = rec;
	uint64_t f = pmfuse_le64(e->fblock), p = pmfuse_le64(e->pblock);
	uint32_t len = pmfuse_le32(e->len);

	if (len == 0 || len > PMFUSE_EXTENT_MAX_LEN || p == 0 ||
	    (pmfuse_le32(e->flags) & ~PMFUSE_EXTENT_FLAGS_KNOWN) ||
	    f > UINT64_MAX - len || p > UINT64_MAX - len)
		return PMFUSE_CORRUPT("extent record: file block %llu, pool block %llu, length %u, "
				      "flags %#x", ULL(f), ULL(p), len, pmfuse_le32(e->flags));
	return 0;
}

const struct pmfuse_btree_ops pmfuse_extent_ops = {
	.name = "extents",
	.key_len = 8,
	.rec_len = sizeof(struct pmfuse_extent),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = extent_check_rec,
};

/* ---- conversion ----------------------------------------------------------------------------- */

static uint64_t map_ino(const struct pmfuse_extmap *m)
{
	return pmfuse_le64(m->ip->ino);
}

/* The one conversion from the pool: checks E1 (the unwritten flag against the superblock's
 * feature too) and the file-size half of E2. */
static int ext_load(const struct pmfuse_extmap *m, const void *rec, struct pmfuse_iext *x)
{
	const struct pmfuse_extent *e = rec;

	x->fblock = pmfuse_le64(e->fblock);
	x->pblock = pmfuse_le64(e->pblock);
	x->len = pmfuse_le32(e->len);
	x->flags = pmfuse_le32(e->flags);
	if ((x->flags & PMFUSE_EXTENT_UNWRITTEN) &&
	    !(pmfuse_le64(m->fs->vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN))
		return PMFUSE_CORRUPT("inode %llu: unwritten extent at file block %llu on a pool "
				      "without the unwritten feature", ULL(map_ino(m)),
				      ULL(x->fblock));
	if (x->len == 0 || x->len > PMFUSE_EXTENT_MAX_LEN || (x->flags & ~PMFUSE_EXTENT_FLAGS_KNOWN) ||
	    x->fblock > m->fmax - x->len || x->pblock < m->data_start ||
	    x->pblock > m->data_end || x->len > m->data_end - x->pblock)
		return PMFUSE_CORRUPT("inode %llu: extent of %llu blocks at file block %llu, pool "
				      "block %llu (flags %#x) is outside the file or the data area",
				      ULL(map_ino(m)), ULL(x->len), ULL(x->fblock), ULL(x->pblock),
				      pmfuse_le32(e->flags));
	return 0;
}

static void ext_store(struct pmfuse_extent *e, const struct pmfuse_iext *x)
{
	memset(e, 0, sizeof(*e));
	pmfuse_set_le64(&e->fblock, x->fblock);
	pmfuse_set_le64(&e->pblock, x->pblock);
	pmfuse_set_le32(&e->len, (uint32_t)x->len);
	pmfuse_set_le32(&e->flags, x->flags);
}

static int cur_load(const struct pmfuse_extmap *m, const struct pmfuse_btree_cursor *cur,
		    struct pmfuse_iext *x)
{
	return ext_load(m, pmfuse_btree_cursor_rec(cur), x);
}

static uint64_t ext_end(const struct pmfuse_iext *x)
{
	return x->fblock + x->len;
}

/* ---- inline maps ---------------------------------------------------------------------------- */

static bool is_inline(const struct pmfuse_extmap *m)
{
	return pmfuse_le32(m->ip->flags) & PMFUSE_INODE_INLINE_MAP;
}

static bool slot_zero(const struct pmfuse_extent *e)
{
	static const struct pmfuse_extent z;

	return !memcmp(e, &z, sizeof(z));
}

/* The inline records into x[], checked (E1, E2, and the layout of the top of this file). */
static int inl_load(const struct pmfuse_extmap *m, struct pmfuse_iext *x, unsigned *n)
{
	unsigned i;
	int rc;

	*n = 0;
	for (i = 0; i < PMFUSE_INLINE_EXTENTS && pmfuse_le32(m->ip->inline_map[i].len); i++) {
		rc = ext_load(m, &m->ip->inline_map[i], &x[i]);
		if (rc)
			return rc;
		if (i && x[i].fblock < ext_end(&x[i - 1]))
			return PMFUSE_CORRUPT("inode %llu: inline extent at file block %llu is out of "
					      "order or overlaps the one before", ULL(map_ino(m)),
					      ULL(x[i].fblock));
	}
	*n = i;
	for (; i < PMFUSE_INLINE_EXTENTS; i++)
		if (!slot_zero(&m->ip->inline_map[i]))
			return PMFUSE_CORRUPT("inode %llu: inline extent slot %u is not zero",
					      ULL(map_ino(m)), i);
	if (!*n)
		return PMFUSE_CORRUPT("inode %llu: inline extent map without records",
				      ULL(map_ino(m)));
	return 0;
}

/* Makes x[0 .. n) the inline map (n = 0: no inline map, the flag cleared). The tree root must be
 * empty. Declares the record and reseals its leaf, so tree reads may follow. */
static int inl_store(struct pmfuse_tx *tx, struct pmfuse_extmap *m, const struct pmfuse_iext *x,
		     unsigned n)
{
	uint32_t flags = pmfuse_le32(m->ip->flags);
	int rc = n ? pmfuse_feature_tx(tx, m->fs, PMFUSE_FEATURE_INCOMPAT_INLINE_MAP) : 0;

	if (!rc)
		rc = pmfuse_inode_change(tx, m->leaf, m->ip, sizeof(*m->ip));
	if (rc)
		return rc;
	memset(m->ip->inline_map, 0, sizeof(m->ip->inline_map));
	for (unsigned i = 0; i < n; i++)
		ext_store(&m->ip->inline_map[i], &x[i]);
	flags = n ? flags | PMFUSE_INODE_INLINE_MAP : flags & ~PMFUSE_INODE_INLINE_MAP;
	pmfuse_set_le32(&m->ip->flags, flags);
	pmfuse_tx_seal(tx);
	return 0;
}

/* Inline -> tree: the records move into a new tree, the inline slots are cleared. */
static int inl_to_tree(struct pmfuse_tx *tx, struct pmfuse_extmap *m)
{
	struct pmfuse_iext x[PMFUSE_INLINE_EXTENTS];
	struct pmfuse_extent rec;
	unsigned n;
	int rc = inl_load(m, x, &n);

	if (!rc)
		rc = inl_store(tx, m, NULL, 0);
	for (unsigned i = 0; !rc && i < n; i++) {
		ext_store(&rec, &x[i]);
		rc = pmfuse_btree_insert(tx, &m->bt, &rec);
	}
	return rc;
}

/* Tree -> inline when the tree holds at most PMFUSE_INLINE_EXTENTS - 1 records (top of file). */
static int tree_to_inl(struct pmfuse_tx *tx, struct pmfuse_extmap *m)
{
	struct pmfuse_iext x[PMFUSE_INLINE_EXTENTS];
	struct pmfuse_btree_cursor cur;
	unsigned n = 0;
	int rc;

	if (is_inline(m) || !pmfuse_le16(m->ip->map.levels) ||
	    pmfuse_btree_count(&m->bt) >= PMFUSE_INLINE_EXTENTS)
		return 0;
	for (rc = pmfuse_btree_first(&cur, &m->bt); !rc; rc = pmfuse_btree_next(&cur)) {
		if (n == PMFUSE_INLINE_EXTENTS - 1)
			return PMFUSE_CORRUPT("inode %llu: extent map holds more records than its "
					      "count", ULL(map_ino(m)));
		rc = cur_load(m, &cur, &x[n]);
		if (rc)
			return rc;
		n++;
	}
	if (rc != -ENOENT)
		return rc;
	rc = pmfuse_btree_destroy(tx, &m->bt);
	return rc ? rc : inl_store(tx, m, x, n);
}

/* Inline lookups, as their tree versions below: the last record starting at or before fblock
 * and the one after it (len 0 for none). */
static int inl_around(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *left,
		      struct pmfuse_iext *right)
{
	struct pmfuse_iext x[PMFUSE_INLINE_EXTENTS];
	unsigned n, i;
	int rc = inl_load(m, x, &n);

	left->len = 0;
	right->len = 0;
	if (rc)
		return rc;
	for (i = 0; i < n && x[i].fblock <= fblock; i++)
		*left = x[i];
	if (i < n)
		*right = x[i];
	return 0;
}

static int inl_walk(const struct pmfuse_extmap *m, uint64_t fblock, uint64_t end,
		    pmfuse_extent_fn fn, void *arg)
{
	struct pmfuse_iext x[PMFUSE_INLINE_EXTENTS];
	unsigned n;
	int rc = inl_load(m, x, &n);

	for (unsigned i = 0; !rc && i < n && x[i].fblock < end; i++)
		if (ext_end(&x[i]) > fblock)
			rc = fn(arg, &x[i]);
	return rc;
}

/* Inline record changes: insert (-EEXIST; -E2BIG when full), update and delete (-ENOENT). */
static int inl_change(struct pmfuse_tx *tx, struct pmfuse_extmap *m, const struct pmfuse_iext *nx,
		      uint64_t del_fblock, bool insert)
{
	struct pmfuse_iext x[PMFUSE_INLINE_EXTENTS + 1];
	unsigned n = 0, i;
	int rc = is_inline(m) ? inl_load(m, x, &n) : 0;
	uint64_t key = nx ? nx->fblock : del_fblock;

	if (rc)
		return rc;
	for (i = 0; i < n && x[i].fblock < key; i++)
		;
	if (insert) {
		if (i < n && x[i].fblock == key)
			return -EEXIST;
		if (n == PMFUSE_INLINE_EXTENTS)
			return -E2BIG;
		memmove(&x[i + 1], &x[i], (n - i) * sizeof(x[0]));
		x[i] = *nx;
		n++;
	} else {
		if (i == n || x[i].fblock != key)
			return -ENOENT;
		if (nx) {
			x[i] = *nx;
		} else {
			memmove(&x[i], &x[i + 1], (n - i - 1) * sizeof(x[0]));
			n--;
		}
	}
	return inl_store(tx, m, x, n);
}

/* ---- handles -------------------------------------------------------------------------------- */

void pmfuse_extmap_open(struct pmfuse_extmap *m, struct pmfuse_fs *fs, struct pmfuse_inode *ip,
			struct pmfuse_blk_hdr *leaf)
{
	const struct pmfuse_sb *sb = &fs->vol->sb;

	m->fs = fs;
	m->ip = ip;
	m->leaf = leaf;
	pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_extent_ops, &m->bt);
	m->data_start = pmfuse_le64(sb->data_start);
	m->data_end = pmfuse_le64(sb->sb2_block);
	m->fmax = pmfuse_file_blocks_max(fs->bs);
}

/*
 * Sizing a transaction. Its lane of the log holds A bytes of entries. A quarter
 * of it goes to bitmap words (one bit per block: 2A blocks), half to b+tree nodes: one node (a
 * block's pre-image plus an entry header) per record changed. Consecutive records share their
 * leaf, so this is pessimistic; callers that still hit a full log abort, halve the budget and
 * retry (a full log and a full pool look alike: both are -ENOSPC).
 */
void pmfuse_extent_budget_init(const struct pmfuse_fs *fs, struct pmfuse_extent_budget *b)
{
	uint64_t lanes = pmfuse_le32(fs->vol->sb.log_lanes);
	uint64_t lane_blocks = pmfuse_le64(fs->vol->sb.log_blocks) / (lanes ? lanes : 1);
	uint64_t area = (lane_blocks > 1 ? lane_blocks - 1 : 1) * fs->bs;

	b->blocks = PMFUSE_MAX(area * 2, 1u);
	b->recs = PMFUSE_MAX(area / 2 / (fs->bs + 64), 1u);
}

/* ---- lookups -------------------------------------------------------------------------------- */

static int seek(const struct pmfuse_extmap *m, struct pmfuse_btree_cursor *cur, uint64_t fblock,
		enum pmfuse_btree_seek how)
{
	struct pmfuse_le64 key;

	pmfuse_set_le64(&key, fblock);
	return pmfuse_btree_seek(cur, &m->bt, &key, how);
}

int pmfuse_extent_prev(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *ext)
{
	struct pmfuse_btree_cursor cur;
	int rc;

	if (!fblock)
		return -ENOENT;
	if (is_inline(m)) {
		struct pmfuse_iext r;

		rc = inl_around(m, fblock - 1, ext, &r);
		return rc ? rc : ext->len ? 0 : -ENOENT;
	}
	rc = seek(m, &cur, fblock - 1, PMFUSE_SEEK_LE);
	return rc ? rc : cur_load(m, &cur, ext);
}

int pmfuse_extent_around(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *left,
			 struct pmfuse_iext *right)
{
	struct pmfuse_btree_cursor cur;
	int rc;

	if (is_inline(m))
		return inl_around(m, fblock, left, right);
	left->len = 0;
	right->len = 0;
	rc = seek(m, &cur, fblock, PMFUSE_SEEK_LE);
	if (!rc) {
		rc = cur_load(m, &cur, left);
		if (!rc)
			rc = pmfuse_btree_next(&cur);   /* same leaf: no second descent */
	} else if (rc == -ENOENT) {
		rc = seek(m, &cur, fblock, PMFUSE_SEEK_GE);
	}
	if (!rc)
		rc = cur_load(m, &cur, right);
	if (rc == -ENOENT)
		rc = 0;
	if (!rc && left->len && right->len && right->fblock < ext_end(left))
		return PMFUSE_CORRUPT("inode %llu: extent at file block %llu overlaps the one "
				      "ending at %llu", ULL(map_ino(m)), ULL(right->fblock),
				      ULL(ext_end(left)));
	return rc;
}

int pmfuse_extent_find(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *ext)
{
	struct pmfuse_iext l, r;
	int rc = pmfuse_extent_around(m, fblock, &l, &r);

	if (rc)
		return rc;
	if (l.len && fblock < ext_end(&l))
		*ext = l;
	else if (r.len)
		*ext = r;
	else
		return -ENOENT;
	return 0;
}

int pmfuse_extent_walk(const struct pmfuse_extmap *m, uint64_t fblock, uint64_t end,
		       pmfuse_extent_fn fn, void *arg)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_iext x;
	uint64_t prev_end = 0;
	int rc;

	if (fblock >= end)
		return 0;
	if (is_inline(m))
		return inl_walk(m, fblock, end, fn, arg);
	/* start at the extent containing fblock if there is one, else at the next */
	rc = seek(m, &cur, fblock, PMFUSE_SEEK_LE);
	if (!rc) {
		rc = cur_load(m, &cur, &x);
		if (!rc && ext_end(&x) <= fblock)
			rc = pmfuse_btree_next(&cur);
	} else if (rc == -ENOENT) {
		rc = seek(m, &cur, fblock, PMFUSE_SEEK_GE);
	}
	while (!rc) {
		rc = cur_load(m, &cur, &x);
		if (rc)
			return rc;
		if (x.fblock >= end)
			return 0;
		if (x.fblock < prev_end)
			return PMFUSE_CORRUPT("inode %llu: extent at file block %llu overlaps the one "
					      "ending at %llu", ULL(map_ino(m)), ULL(x.fblock),
					      ULL(prev_end));
		prev_end = ext_end(&x);
		rc = fn(arg, &x);
		if (rc)
			return rc;
		rc = pmfuse_btree_next(&cur);
	}
	return rc == -ENOENT ? 0 : rc;
}

/* ---- changes -------------------------------------------------------------------------------- */

/* E3: ip->blocks follows every change of the map, in the same transaction. */
static int add_blocks(struct pmfuse_tx *tx, struct pmfuse_extmap *m, int64_t delta)
{
	uint64_t blocks = pmfuse_le64(m->ip->blocks);
	int rc;

	if (delta < 0 && (uint64_t)-delta > blocks)
		return PMFUSE_CORRUPT("inode %llu: block count %llu is below the %llu blocks being "
				      "unmapped", ULL(map_ino(m)), ULL(blocks), ULL(-delta));
	/* declared right before the change: a tree operation may have sealed the leaf */
	rc = pmfuse_inode_change(tx, m->leaf, m->ip, sizeof(*m->ip));
	if (rc)
		return rc;
	pmfuse_set_le64(&m->ip->blocks, blocks + (uint64_t)delta);
	return 0;
}

static int rec_insert(struct pmfuse_tx *tx, struct pmfuse_extmap *m, const struct pmfuse_iext *x)
{
	struct pmfuse_extent rec;
	int rc = 0;

	/* an empty map starts inline; a full inline map turns into a tree first */
	if (is_inline(m) || !pmfuse_le16(m->ip->map.levels)) {
		rc = inl_change(tx, m, x, 0, true);
		if (rc == -E2BIG)
			rc = inl_to_tree(tx, m);
		else if (rc != -EEXIST)
			return rc;
	}
	if (!rc) {
		ext_store(&rec, x);
		rc = pmfuse_btree_insert(tx, &m->bt, &rec);
	}
	if (rc == -EEXIST)
		return PMFUSE_CORRUPT("inode %llu: extent at file block %llu exists already",
				      ULL(map_ino(m)), ULL(x->fblock));
	return rc;
}

static int rec_update(struct pmfuse_tx *tx, struct pmfuse_extmap *m, const struct pmfuse_iext *x)
{
	struct pmfuse_extent rec;
	int rc;

	if (is_inline(m)) {
		rc = inl_change(tx, m, x, 0, false);
	} else {
		ext_store(&rec, x);
		rc = pmfuse_btree_update(tx, &m->bt, &rec);
	}
	if (rc == -ENOENT)
		return PMFUSE_CORRUPT("inode %llu: extent at file block %llu vanished",
				      ULL(map_ino(m)), ULL(x->fblock));
	return rc;
}

static int rec_delete(struct pmfuse_tx *tx, struct pmfuse_extmap *m, uint64_t fblock)
{
	struct pmfuse_le64 key;
	int rc;

	pmfuse_set_le64(&key, fblock);
	if (is_inline(m))
		rc = inl_change(tx, m, NULL, fblock, false);
	else
		rc = pmfuse_btree_delete(tx, &m->bt, &key, NULL);
	if (rc == -ENOENT)
		return PMFUSE_CORRUPT("inode %llu: extent at file block %llu vanished",
				      ULL(map_ino(m)), ULL(fblock));
	return rc;
}

/* The records of pmfuse_extent_insert, without the block count. */
static int insert_recs(struct pmfuse_tx *tx, struct pmfuse_extmap *m,
		       const struct pmfuse_iext *ext)
{
	struct pmfuse_iext l, r, x = *ext;
	bool merge_l = false, merge_r = false;
	int rc;

	if (x.len == 0 || x.len > PMFUSE_EXTENT_MAX_LEN || x.fblock > m->fmax - x.len ||
	    x.pblock < m->data_start || x.pblock > m->data_end || x.len > m->data_end - x.pblock ||
	    (x.flags & ~PMFUSE_EXTENT_FLAGS_KNOWN))
		return -EINVAL;

	/* the neighbours, which must leave x's range a hole */
	rc = pmfuse_extent_around(m, x.fblock, &l, &r);
	if (rc)
		return rc;
	if ((l.len && ext_end(&l) > x.fblock) || (r.len && r.fblock < ext_end(&x)))
		return PMFUSE_CORRUPT("inode %llu: mapping file blocks %llu+%llu over a mapped "
				      "block", ULL(map_ino(m)), ULL(x.fblock), ULL(x.len));
	merge_l = l.len && ext_end(&l) == x.fblock && l.pblock + l.len == x.pblock &&
		  l.flags == x.flags && l.len + x.len <= PMFUSE_EXTENT_MAX_LEN;
	merge_r = r.len && r.fblock == ext_end(&x) && r.pblock == x.pblock + x.len &&
		  r.flags == x.flags && x.len + r.len <= PMFUSE_EXTENT_MAX_LEN;
	if (merge_l && merge_r && l.len + x.len + r.len > PMFUSE_EXTENT_MAX_LEN)
		merge_r = false;

	if (merge_r) {
		rc = rec_delete(tx, m, r.fblock);
		if (rc)
			return rc;
	}
	if (merge_l) {
		l.len += x.len + (merge_r ? r.len : 0);
		rc = rec_update(tx, m, &l);
	} else {
		if (merge_r)
			x.len += r.len;
		rc = rec_insert(tx, m, &x);
	}
	return rc;
}

int pmfuse_extent_insert(struct pmfuse_tx *tx, struct pmfuse_extmap *m,
			 const struct pmfuse_iext *ext)
{
	int rc = insert_recs(tx, m, ext);

	return rc ? rc : add_blocks(tx, m, (int64_t)ext->len);
}

int pmfuse_extent_release(struct pmfuse_tx *tx, struct pmfuse_fs *fs, uint64_t pblock,
			  uint64_t len)
{
	struct pmfuse_btree rc;

	/* one reference less per block; blocks left without an owner go back to the allocator */
	pmfuse_refcount_tree(fs->vol, &rc);
	return pmfuse_refcount_decr(tx, &rc, fs->alloc, pblock, len, NULL);
}

static int span_rec(const struct pmfuse_btree_cursor *cur, uint64_t *s, uint64_t *e)
{
	struct pmfuse_refcount_rec r;
	uint32_t len;

	memcpy(&r, pmfuse_btree_cursor_rec(cur), sizeof(r));
	*s = pmfuse_le64(r.start);
	len = pmfuse_le32(r.len);
	if (!len || *s > UINT64_MAX - len)
		return PMFUSE_CORRUPT("refcount record at pool block %llu, length %u", ULL(*s), len);
	*e = *s + len;
	return 0;
}

int pmfuse_refcount_span_down(struct pmfuse_fs *fs, uint64_t plo, uint64_t phi, uint64_t max,
			      bool gaps, uint64_t *from, uint64_t *pieces)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_btree rt;
	struct pmfuse_le64 key;
	uint64_t pos = phi, n = 0, s = 0, e = 0;
	int rc;

	*from = plo;
	*pieces = 0;
	if (plo >= phi)
		return 0;
	max = PMFUSE_MAX(max, 1u);
	pmfuse_refcount_tree(fs->vol, &rt);
	if (!pmfuse_btree_count(&rt)) {
		*pieces = gaps;   /* one gap: the whole range */
		return 0;
	}
	pmfuse_set_le64(&key, phi - 1);
	rc = pmfuse_btree_seek(&cur, &rt, &key, PMFUSE_SEEK_LE);
	for (;;) {
		if (rc == -ENOENT) {
			s = e = plo;   /* nothing below: the rest is one gap */
		} else if (rc) {
			return rc;
		} else {
			rc = span_rec(&cur, &s, &e);
			if (rc)
				return rc;
			if (s >= pos)
				return PMFUSE_CORRUPT("refcount record at pool block %llu out of order "
						      "(below %llu)", ULL(s), ULL(pos));
			e = PMFUSE_MIN(e, pos);
			s = PMFUSE_MAX(s, plo);
			if (e <= plo)
				s = e = plo;
		}
		/* the gap above this record, then the record's part of the range, each a piece */
		if (gaps && e < pos) {
			if (n == max)
				break;
			n++;
			pos = e;
		}
		pos = PMFUSE_MAX(e, plo);
		if (pos == plo)
			break;
		if (n == max)
			break;
		n++;
		pos = s;
		if (pos == plo)
			break;
		rc = pmfuse_btree_prev(&cur);
	}
	*from = pos;
	*pieces = n;
	return 0;
}

/* The records of a cut: [lo, hi) out of e (which contains it), cases A-D of the diagram at the
 * top; the blocks stay the caller's. */
static int cut_recs(struct pmfuse_tx *tx, struct pmfuse_extmap *m, const struct pmfuse_iext *e,
		    uint64_t lo, uint64_t hi)
{
	struct pmfuse_iext keep_lo = *e, keep_hi = *e;
	int rc = 0;

	keep_lo.len = lo - e->fblock;
	keep_hi.fblock = hi;
	keep_hi.pblock = e->pblock + (hi - e->fblock);
	keep_hi.len = ext_end(e) - hi;

	if (keep_lo.len)
		rc = rec_update(tx, m, &keep_lo);          /* B, D */
	else
		rc = rec_delete(tx, m, e->fblock);          /* A, C */
	if (!rc && keep_hi.len)
		rc = rec_insert(tx, m, &keep_hi);           /* C, D */
	return rc;
}

int pmfuse_extent_convert(struct pmfuse_tx *tx, struct pmfuse_extmap *m,
			  const struct pmfuse_iext *e, uint64_t lo, uint64_t hi, uint32_t flags)
{
	struct pmfuse_iext x = {
		.fblock = lo, .pblock = e->pblock + (lo - e->fblock), .len = hi - lo, .flags = flags,
	};
	int rc;

	if (lo >= hi || lo < e->fblock || hi > ext_end(e) || (flags & ~PMFUSE_EXTENT_FLAGS_KNOWN))
		return -EINVAL;
	if (e->flags == flags)
		return 0;
	rc = cut_recs(tx, m, e, lo, hi);
	return rc ? rc : insert_recs(tx, m, &x);
}

/* Removes [lo, hi) from e (which contains it) and gives up its blocks. */
static int cut(struct pmfuse_tx *tx, struct pmfuse_extmap *m, const struct pmfuse_iext *e,
	       uint64_t lo, uint64_t hi)
{
	int rc = cut_recs(tx, m, e, lo, hi);

	if (!rc)
		rc = pmfuse_extent_release(tx, m->fs, e->pblock + (lo - e->fblock), hi - lo);
	if (!rc)
		rc = add_blocks(tx, m, -(int64_t)(hi - lo));
	return rc;
}

int pmfuse_extent_unmap(struct pmfuse_tx *tx, struct pmfuse_extmap *m, uint64_t start,
			uint64_t *end, struct pmfuse_extent_budget *budget)
{
	struct pmfuse_iext e;
	uint64_t lo, hi, pfrom, nrc, cost;
	int rc;

	while (*end > start) {
		if (!budget->recs || !budget->blocks)
			break;
		rc = pmfuse_extent_prev(m, *end, &e);
		if (rc == -ENOENT || (!rc && ext_end(&e) <= start)) {
			*end = start;
			break;
		}
		if (rc)
			return rc;
		hi = PMFUSE_MIN(*end, ext_end(&e));
		lo = PMFUSE_MAX(start, e.fblock);
		if (hi - lo > budget->blocks)
			lo = hi - budget->blocks;
		/* shared blocks: as many refcount records as the budget still pays for */
		rc = pmfuse_refcount_span_down(m->fs, e.pblock + (lo - e.fblock),
					       e.pblock + (hi - e.fblock),
					       budget->recs > 3 ? budget->recs - 3 : 1, false, &pfrom,
					       &nrc);
		if (rc)
			return rc;
		lo = e.fblock + (pfrom - e.pblock);
		rc = cut(tx, m, &e, lo, hi);
		if (rc)
			return rc;
		cost = 1 + (nrc ? nrc + 2 : 0);
		budget->recs -= PMFUSE_MIN(budget->recs, cost);
		budget->blocks -= hi - lo;
		*end = lo;
	}
	return tree_to_inl(tx, m);
}
