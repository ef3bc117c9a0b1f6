/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The refcount tree: reference counts of shared physical blocks.
 *
 * Records (struct pmfuse_refcount_rec, key = start) say that each block of [start, start + len)
 * is mapped by refcount extents. Only shared blocks have records; an allocated block without a
 * record has count 1, a free block count 0. Between operations:
 *
 *   R1 every record is well formed: 1 <= len <= PMFUSE_EXTENT_MAX_LEN, refcount >= 2, and
 *      start + len does not wrap;
 *   R2 records are sorted by start and do not overlap;
 *   R3 two records that touch (a.start + a.len == b.start) have different counts, unless they
 *      cannot be merged because a.len + b.len > PMFUSE_EXTENT_MAX_LEN (a run of equal counts
 *      longer than the largest record is cut into several records; where exactly it is cut is
 *      not canonical, but every cut is forced);
 *   R4 every block covered by a record is allocated.
 * pmfuse_refcount_check() verifies all four (R4 when given the allocator).
 *
 * Adjusting [start, end) by delta = +1 or -1 ("Adjusting the Reference Count" in XFS):
 *
 *      range:                 [==========================]
 *      records:   LL][---X:3----][-2-]    [---2---]   [--Y:2--][RR
 *
 *   1. split the records that straddle the edges, so that every record is inside or outside:
 *                 LL][X1:3][X2:3][-2-]    [---2---]   [Y1][Y2][RR
 *   2. walk the range in order: each record inside gets delta (a record reaching 1 is deleted:
 *      its blocks keep one implicit owner); each gap (blocks with count 1) gets delta too: on
 *      increment it becomes a record of count 2, on decrement its blocks are freed (one
 *      pmfuse_alloc_free per gap, coalesced across the chunks of a long range);
 *                 LL][X1:3][X2:4][-3-][2-][---3---][2][Y1][Y2][RR        (delta = +1)
 *   3. merge touching records with equal counts, where R3 may have broken: at the range edges
 *      (start, end), and where a split shortened a record (X1's start and X2's end, Y1's start
 *      and Y2's end: a pair kept apart only by the length limit may fit in one record now).
 *      Inside the range no other pair can need a merge: neighbours inside shift by the same delta,
 *      a new gap record (count 2) only touches records that were >= 2 and are now >= 3, and a
 *      deleted record leaves implicit 1s that touch nothing.
 *
 * Every step is one b+tree operation after a fresh seek (cursors die with each modification),
 * so the cost is O((records in the range + 6) * log n). A range longer than
 * PMFUSE_EXTENT_MAX_LEN is adjusted in chunks of that size, so a gap never needs more than one
 * record. Nothing is kept in DRAM between calls.
 *
 * Checks made on the way (damage is -EUCLEAN through PMFUSE_CORRUPT): every record read is
 * validated (R1) and must not cross the range end after the splits (R2); on increment the first
 * and last block of each gap must be allocated (a full scan is pmfuse_refcount_check's job); on
 * decrement pmfuse_alloc_free refuses gap blocks that are already free. A count that would pass
 * UINT32_MAX is -EOVERFLOW.
 *
 * Transactions: all changes go through the b+tree and the allocator, which declare and reseal
 * what they touch. On any error the tree may be half-adjusted; the caller aborts the transaction.
 *
 * Locking: none inside. Callers serialise every user of the tree (the fs lock; the transaction
 * manager runs one transaction at a time).
 */
#include "meta/refcount.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "meta/alloc.h"
#include "meta/volume.h"
#include "pmfuse/format.h"
#include "tx/tx.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))
#define RC_MAX_LEN ((uint64_t)PMFUSE_EXTENT_MAX_LEN)

/* In-core record: native integers, converted from the pool in rec_decode() only. */
struct rc_irec {
	uint64_t start;
	uint64_t len;
	uint32_t count;
};

static uint64_t irec_end(const struct rc_irec *r)
{
	return r->start + r->len;
}

/* ---- b+tree ops ------------------------------------------------------------------------------ */

static int rc_check_rec(const void *rec)
{
	struct pmfuse_refcount_rec r;
	uint64_t start;
	uint32_t len, count;

	memcpy(&r, rec, sizeof(r));
	start = pmfuse_le64(r.start);
	len = pmfuse_le32(r.len);
	count = pmfuse_le32(r.refcount);
	if (len == 0 || len > PMFUSE_EXTENT_MAX_LEN)
		return PMFUSE_CORRUPT("refcount record %llu: length %u outside 1..%u", ULL(start),
				      len, PMFUSE_EXTENT_MAX_LEN);
	if (count < 2)
		return PMFUSE_CORRUPT("refcount record %llu+%u: count %u below 2", ULL(start), len,
				      count);
	if (start > UINT64_MAX - len)
		return PMFUSE_CORRUPT("refcount record %llu+%u: wraps past the last block",
				      ULL(start), len);
	return 0;
}

const struct pmfuse_btree_ops pmfuse_refcount_ops = {
	.name = "refcount",
	.key_len = sizeof(struct pmfuse_le64),
	.rec_len = sizeof(struct pmfuse_refcount_rec),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = rc_check_rec,
};

void pmfuse_refcount_tree(struct pmfuse_volume *vol, struct pmfuse_btree *bt)
{
	pmfuse_btree_init(bt, vol->pool, vol->alloc, &pmfuse_refcount_ops,
			  &vol->state->roots[PMFUSE_ROOT_REFCOUNT], &vol->state->hdr,
			  PMFUSE_TREE_REFCOUNT, vol->block_size);
	bt->edge_fill = pmfuse_volume_edge_fill(vol);
}

/* ---- record access --------------------------------------------------------------------------- */

/* The one place a record is converted from the pool: validated first. */
static int rec_decode(const void *p, struct rc_irec *out)
{
	struct pmfuse_refcount_rec r;
	int rc = rc_check_rec(p);

	if (rc)
		return rc;
	memcpy(&r, p, sizeof(r));
	out->start = pmfuse_le64(r.start);
	out->len = pmfuse_le32(r.len);
	out->count = pmfuse_le32(r.refcount);
	return 0;
}

static void rec_encode(const struct rc_irec *in, struct pmfuse_refcount_rec *r)
{
	memset(r, 0, sizeof(*r));
	pmfuse_set_le64(&r->start, in->start);
	pmfuse_set_le32(&r->len, (uint32_t)in->len);
	pmfuse_set_le32(&r->refcount, in->count);
}

static struct pmfuse_le64 make_key(uint64_t block)
{
	struct pmfuse_le64 k;

	pmfuse_set_le64(&k, block);
	return k;
}

static int cur_rec(const struct pmfuse_btree_cursor *cur, struct rc_irec *out)
{
	const void *p = pmfuse_btree_cursor_rec(cur);

	if (!p)
		return -ENOENT;
	return rec_decode(p, out);
}

/* The record with key >= block (GE) or <= block (LE). -ENOENT when there is none. */
static int seek_rec(const struct pmfuse_btree *rc, uint64_t block, enum pmfuse_btree_seek how,
		    struct rc_irec *out)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_le64 k = make_key(block);
	int err;

	err = pmfuse_btree_seek(&cur, rc, &k, how);
	if (err)
		return err;
	return cur_rec(&cur, out);
}

/* The record starting exactly at block. -ENOENT when there is none. */
static int lookup_rec(const struct pmfuse_btree *rc, uint64_t block, struct rc_irec *out)
{
	struct pmfuse_refcount_rec r;
	struct pmfuse_le64 k = make_key(block);
	int err;

	err = pmfuse_btree_lookup(rc, &k, &r);
	if (err)
		return err;
	return rec_decode(&r, out);
}

static int insert_rec(struct pmfuse_tx *tx, struct pmfuse_btree *rc, const struct rc_irec *in)
{
	struct pmfuse_refcount_rec r;

	rec_encode(in, &r);
	return pmfuse_btree_insert(tx, rc, &r);
}

static int update_rec(struct pmfuse_tx *tx, struct pmfuse_btree *rc, const struct rc_irec *in)
{
	struct pmfuse_refcount_rec r;

	rec_encode(in, &r);
	return pmfuse_btree_update(tx, rc, &r);
}

static int delete_rec(struct pmfuse_tx *tx, struct pmfuse_btree *rc, uint64_t start)
{
	struct pmfuse_le64 k = make_key(start);

	return pmfuse_btree_delete(tx, rc, &k, NULL);
}

/* ---- the adjustment -------------------------------------------------------------------------- */

/* Blocks to free, accumulated so that touching runs go back in one call. */
struct free_run {
	uint64_t start;
	uint64_t len;
	uint64_t total;
};

static int free_flush(struct pmfuse_tx *tx, struct pmfuse_alloc *al, struct free_run *fr)
{
	int err;

	if (!fr->len)
		return 0;
	err = pmfuse_alloc_free(tx, al, fr->start, fr->len);
	if (err)
		return err;
	fr->total += fr->len;
	fr->len = 0;
	return 0;
}

static int free_add(struct pmfuse_tx *tx, struct pmfuse_alloc *al, struct free_run *fr,
		    uint64_t start, uint64_t len)
{
	int err;

	if (fr->len && fr->start + fr->len == start) {
		fr->len += len;
		return 0;
	}
	err = free_flush(tx, al, fr);
	if (err)
		return err;
	fr->start = start;
	fr->len = len;
	return 0;
}

/* A gap (blocks without a record) being incremented must be allocated: checks its ends. */
static int gap_allocated(struct pmfuse_alloc *al, uint64_t start, uint64_t len)
{
	uint64_t ends[2] = { start, start + len - 1 };

	for (unsigned i = 0; i < 2; i++) {
		int used = pmfuse_alloc_is_used(al, ends[i]);
		if (used < 0)
			return PMFUSE_CORRUPT("refcount increment of block %llu, outside the "
					      "filesystem", ULL(ends[i]));
		if (!used)
			return PMFUSE_CORRUPT("refcount increment of block %llu, which is free",
					      ULL(ends[i]));
	}
	return 0;
}

/*
 * Splits the record straddling block b (record start < b < record end) in two at b. *split
 * tells whether there was one; *orig gets it as it was.
 */
static int split_at(struct pmfuse_tx *tx, struct pmfuse_btree *rc, uint64_t b,
		    struct rc_irec *orig, bool *split)
{
	struct rc_irec left, right;
	int err;

	*split = false;
	err = seek_rec(rc, b, PMFUSE_SEEK_LE, orig);
	if (err == -ENOENT)
		return 0;
	if (err)
		return err;
	if (orig->start == b || irec_end(orig) <= b)
		return 0;
	left = *orig;
	left.len = b - orig->start;
	right = *orig;
	right.start = b;
	right.len = irec_end(orig) - b;
	err = update_rec(tx, rc, &left);
	if (!err)
		err = insert_rec(tx, rc, &right);
	if (!err)
		*split = true;
	return err;
}

/* Merges the record ending at b with the one starting at b if R3 asks for it. */
static int merge_at(struct pmfuse_tx *tx, struct pmfuse_btree *rc, uint64_t b)
{
	struct rc_irec left, right;
	int err;

	if (b == 0)
		return 0;
	err = lookup_rec(rc, b, &right);
	if (!err)
		err = seek_rec(rc, b - 1, PMFUSE_SEEK_LE, &left);
	if (err == -ENOENT)
		return 0;
	if (err)
		return err;
	if (irec_end(&left) != b || left.count != right.count || left.len + right.len > RC_MAX_LEN)
		return 0;
	err = delete_rec(tx, rc, right.start);
	if (err)
		return err;
	left.len += right.len;
	return update_rec(tx, rc, &left);
}

/* Steps 1-3 of the algorithm above over [start, start + len), len <= RC_MAX_LEN. */
static int adjust_chunk(struct pmfuse_tx *tx, struct pmfuse_btree *rc, struct pmfuse_alloc *al,
			uint64_t start, uint64_t len, int delta, struct free_run *fr)
{
	uint64_t end = start + len, pos = start;
	uint64_t bounds[6];
	unsigned nbounds = 0;
	struct rc_irec x, n = { 0 };  /* n: gcc cannot see that seek_rec fills it */
	bool split;
	int err;

	/* 1. split at the edges; remember where merges may be due */
	err = split_at(tx, rc, start, &x, &split);
	if (err)
		return err;
	if (split) {
		bounds[nbounds++] = x.start;
		bounds[nbounds++] = irec_end(&x);
	}
	err = split_at(tx, rc, end, &x, &split);
	if (err)
		return err;
	if (split) {
		bounds[nbounds++] = x.start;
		bounds[nbounds++] = irec_end(&x);
	}
	bounds[nbounds++] = start;
	bounds[nbounds++] = end;

	/* 2. walk the range */
	while (pos < end) {
		err = seek_rec(rc, pos, PMFUSE_SEEK_GE, &n);
		if (err == -ENOENT)
			n = (struct rc_irec){ end, 0, 0 };   /* no record from pos on */
		else if (err)
			return err;
		if (n.start < pos)
			return PMFUSE_CORRUPT("refcount record %llu+%llu returned by a seek for "
					      "block %llu or later", ULL(n.start), ULL(n.len),
					      ULL(pos));
		if (n.start > pos) {
			struct rc_irec gap = { pos, PMFUSE_MIN(n.start, end) - pos, 2 };

			if (delta > 0) {
				err = gap_allocated(al, gap.start, gap.len);
				if (!err)
					err = insert_rec(tx, rc, &gap);
			} else {
				err = free_add(tx, al, fr, gap.start, gap.len);
			}
			if (err)
				return err;
			pos = irec_end(&gap);
			continue;
		}
		if (irec_end(&n) > end)
			return PMFUSE_CORRUPT("refcount record %llu+%llu crosses block %llu after "
					      "the split there", ULL(n.start), ULL(n.len),
					      ULL(end));
		if (delta > 0 && n.count == UINT32_MAX)
			return -EOVERFLOW;
		n.count = delta > 0 ? n.count + 1 : n.count - 1;
		if (n.count < 2)
			err = delete_rec(tx, rc, n.start);
		else
			err = update_rec(tx, rc, &n);
		if (err)
			return err;
		pos = irec_end(&n);
	}

	/* 3. merge */
	for (unsigned i = 0; i < nbounds; i++) {
		err = merge_at(tx, rc, bounds[i]);
		if (err)
			return err;
	}
	return 0;
}

static int adjust(struct pmfuse_tx *tx, struct pmfuse_btree *rc, struct pmfuse_alloc *al,
		  uint64_t start, uint64_t len, int delta, uint64_t *freed)
{
	struct free_run fr = { 0, 0, 0 };
	int err = 0;

	if (freed)
		*freed = 0;
	if (len == 0 || start > UINT64_MAX - len)
		return -EINVAL;
	while (len) {
		uint64_t n = PMFUSE_MIN(len, RC_MAX_LEN);

		err = adjust_chunk(tx, rc, al, start, n, delta, &fr);
		if (err)
			return err;
		start += n;
		len -= n;
	}
	err = free_flush(tx, al, &fr);
	if (!err && freed)
		*freed = fr.total;
	return err;
}

int pmfuse_refcount_incr(struct pmfuse_tx *tx, struct pmfuse_btree *rc, struct pmfuse_alloc *al,
			 uint64_t start, uint64_t len)
{
	return adjust(tx, rc, al, start, len, +1, NULL);
}

int pmfuse_refcount_decr(struct pmfuse_tx *tx, struct pmfuse_btree *rc, struct pmfuse_alloc *al,
			 uint64_t start, uint64_t len, uint64_t *freed)
{
	return adjust(tx, rc, al, start, len, -1, freed);
}

/* ---- queries --------------------------------------------------------------------------------- */

int pmfuse_refcount_get(const struct pmfuse_btree *rc, uint64_t block, uint64_t maxlen,
			uint32_t *count, uint64_t *run)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_le64 k = make_key(block);
	struct rc_irec r;
	uint64_t n;
	int err;

	if (maxlen == 0)
		return -EINVAL;
	err = pmfuse_btree_seek(&cur, rc, &k, PMFUSE_SEEK_LE);
	if (!err)
		err = cur_rec(&cur, &r);
	if (err && err != -ENOENT)
		return err;
	if (!err && block < irec_end(&r)) {
		/* Inside a record: follow touching records with the same count (R3's exception). */
		*count = r.count;
		n = irec_end(&r) - block;
		while (n < maxlen) {
			struct rc_irec next;

			err = pmfuse_btree_next(&cur);
			if (err == -ENOENT)
				break;
			if (!err)
				err = cur_rec(&cur, &next);
			if (err)
				return err;
			if (next.start != block + n || next.count != r.count)
				break;
			n += next.len;
		}
		*run = PMFUSE_MIN(n, maxlen);
		return 0;
	}
	/* In a gap: count 1 up to the next record, the one after the cursor (or the first). */
	*count = 1;
	if (!err)
		err = pmfuse_btree_next(&cur);
	else
		err = pmfuse_btree_first(&cur, rc);
	if (!err)
		err = cur_rec(&cur, &r);
	if (err == -ENOENT) {
		*run = maxlen;
		return 0;
	}
	if (err)
		return err;
	if (r.start <= block)
		return PMFUSE_CORRUPT("refcount record %llu+%llu: found after block %llu but "
				      "not before it", ULL(r.start), ULL(r.len), ULL(block));
	*run = PMFUSE_MIN(r.start - block, maxlen);
	return 0;
}

/* ---- check ----------------------------------------------------------------------------------- */

static int check_fail(char *msg, size_t msglen, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int check_fail(char *msg, size_t msglen, int line, const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (msg && msglen)
		snprintf(msg, msglen, "refcount tree: %s", buf);
	return pmfuse_corrupt(__FILE__, line, "refcount tree: %s", buf);
}

#define CHECK_FAIL(...) check_fail(msg, msglen, __LINE__, __VA_ARGS__)

int pmfuse_refcount_check(const struct pmfuse_btree *rc, struct pmfuse_alloc *al, char *msg,
			  size_t msglen)
{
	struct pmfuse_btree_cursor cur;
	struct rc_irec prev = { 0, 0, 0 }, r = { 0, 0, 0 };
	bool have_prev = false;
	int err;

	if (msg && msglen)
		msg[0] = '\0';
	err = pmfuse_btree_first(&cur, rc);
	while (!err) {
		const void *p = pmfuse_btree_cursor_rec(&cur);

		if (!p)
			return CHECK_FAIL("cursor positioned without a record");
		if (rec_decode(p, &r)) {
			struct pmfuse_refcount_rec raw;

			memcpy(&raw, p, sizeof(raw));
			return CHECK_FAIL("record %llu+%u count %u: malformed",
					  ULL(pmfuse_le64(raw.start)), pmfuse_le32(raw.len),
					  pmfuse_le32(raw.refcount));
		}
		if (have_prev && r.start < irec_end(&prev))
			return CHECK_FAIL("record %llu+%llu overlaps or precedes %llu+%llu",
					  ULL(r.start), ULL(r.len), ULL(prev.start),
					  ULL(prev.len));
		if (have_prev && r.start == irec_end(&prev) && r.count == prev.count &&
		    prev.len + r.len <= RC_MAX_LEN)
			return CHECK_FAIL("records %llu+%llu and %llu+%llu touch with count %u "
					  "and are not merged", ULL(prev.start), ULL(prev.len),
					  ULL(r.start), ULL(r.len), r.count);
		for (uint64_t b = r.start; al && b < irec_end(&r); b++) {
			int used = pmfuse_alloc_is_used(al, b);

			if (used != 1)
				return CHECK_FAIL("record %llu+%llu count %u: block %llu is %s",
						  ULL(r.start), ULL(r.len), r.count, ULL(b),
						  used < 0 ? "outside the filesystem" : "free");
		}
		prev = r;
		have_prev = true;
		err = pmfuse_btree_next(&cur);
	}
	if (err == -ENOENT)
		return 0;
	if (msg && msglen)
		snprintf(msg, msglen, "refcount tree: reading records: error %d", err);
	return err;
}
