/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The refcount tree against a per-block model, on fake-media volumes.
 *
 * Model: cnt[b] = owners of block b for the blocks this test allocated (0 = free again or never
 * ours). The refcount view of a block is v(b) = cnt[b] if cnt[b] >= 2, else 1 (no record). After
 * every operation the test checks:
 *   - the records, read one by one, are exactly the maximal runs of equal count >= 2 (so their
 *     number is the number of runs: merging works);
 *   - pmfuse_refcount_get, walked run by run, returns v and the exact length of each run of equal
 *     v: over the whole pool every 32 operations and at the end, over the adjusted range and 64
 *     blocks either side after the others (a full walk costs one descent per run, which would
 *     dominate the runtime); plus 8 random queries with a short maxlen anywhere;
 *   - the allocator: every block is in use iff it was in use at the start (metadata), or cnt >= 1,
 *     or it is a node of the refcount tree; the free count agrees; pmfuse_alloc_check;
 *   - pmfuse_refcount_check (with the allocator) and pmfuse_btree_check.
 *
 * Tests:
 *   model          >= 20,000 seeded random incr / decr over ranges of live blocks (one block, exact
 *                  record or gap edges, random sub-ranges, whole live runs spanning many records),
 *                  one transaction each, 10% aborted (then everything must equal the old model
 *                  and the root descriptor must be byte-identical); blocks are refilled with
 *                  pmfuse_alloc_extent as decrements free them;
 *   model_verify   the same on a small pool with transaction verification on (every changed byte
 *                  declared; aborts restore every byte);
 *   roundtrip, decr_frees, decr_free_block, thousand_records, merge_edges, overflow, invalid,
 *   check_detects, max_len: edge cases, including corrupt trees that check must reject.
 */
#include "harness.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta/alloc.h"
#include "meta/btree.h"
#include "meta/refcount.h"
#include "tx/tx.h"
#include "util/util.h"

#define MIB (1024u * 1024u)
#define RC_MAX ((uint64_t)PMFUSE_EXTENT_MAX_LEN)

struct env {
	struct pmfuse_volume *vol;
	struct pmfuse_alloc *al;
	struct pmfuse_btree rc;
	uint64_t nblocks;
	uint32_t *cnt;      /* model: owners of each block */
	uint8_t *fixed;     /* in use at the start (metadata), never ours */
	uint8_t *node;      /* refcount tree nodes, refreshed by env_verify */
	uint64_t nodes;
	uint64_t free0;     /* free blocks at the start */
	char msg[512];
};

static void env_init(struct env *e, size_t size)
{
	memset(e, 0, sizeof(*e));
	e->vol = th_fake_volume(size, 0);
	e->al = e->vol->alloc;
	pmfuse_refcount_tree(e->vol, &e->rc);
	e->nblocks = pmfuse_le64(e->vol->sb.block_count);
	e->cnt = calloc(e->nblocks, sizeof(*e->cnt));
	e->fixed = calloc(e->nblocks, 1);
	e->node = calloc(e->nblocks, 1);
	assert_non_null(e->cnt);
	assert_non_null(e->fixed);
	assert_non_null(e->node);
	for (uint64_t b = 0; b < e->nblocks; b++)
		e->fixed[b] = (uint8_t)(pmfuse_alloc_is_used(e->al, b) == 1);
	e->free0 = pmfuse_alloc_free_blocks(e->al);
	assert_int_equal(pmfuse_btree_count(&e->rc), 0);
}

static void env_fini(struct env *e)
{
	free(e->cnt);
	free(e->fixed);
	free(e->node);
	th_volume_destroy(e->vol);
}

static uint32_t view(const struct env *e, uint64_t b)
{
	return e->cnt[b] >= 2 ? e->cnt[b] : 1;
}

/* Length of the run of equal view from b on, up to the end of the pool. */
static uint64_t model_run(const struct env *e, uint64_t b)
{
	uint64_t n = 1;

	while (b + n < e->nblocks && view(e, b + n) == view(e, b))
		n++;
	return n;
}

static uint64_t model_records(const struct env *e)
{
	uint64_t n = 0;

	for (uint64_t b = 0; b < e->nblocks; b++)
		if (e->cnt[b] >= 2 && (b == 0 || view(e, b - 1) != view(e, b)))
			n++;
	return n;
}

static void visit_node(void *arg, uint64_t blk)
{
	struct env *e = arg;

	assert_true(blk < e->nblocks);
	assert_false(e->node[blk]);
	e->node[blk] = 1;
	e->nodes++;
}

static void dump(const struct env *e, uint64_t b)
{
	struct pmfuse_btree_cursor cur;
	uint64_t lo = b > 20 ? b - 20 : 0;

	for (uint64_t i = lo; i < b + 20 && i < e->nblocks; i++)
		printf("# block %" PRIu64 ": count %u node %d\n", i, e->cnt[i], e->node[i]);
	for (int rc = pmfuse_btree_first(&cur, &e->rc); !rc; rc = pmfuse_btree_next(&cur)) {
		struct pmfuse_refcount_rec rec;

		memcpy(&rec, pmfuse_btree_cursor_rec(&cur), sizeof(rec));
		if (pmfuse_le64(rec.start) + 40 > lo && pmfuse_le64(rec.start) < b + 40)
			printf("# rec %" PRIu64 "+%u: %u\n", pmfuse_le64(rec.start),
			       pmfuse_le32(rec.len), pmfuse_le32(rec.refcount));
	}
}

/* The records in the tree, one by one, against the maximal runs of equal count >= 2. */
static void compare_records(struct env *e)
{
	struct pmfuse_btree_cursor cur;
	uint64_t b = 0, n = 0;
	int rc;

	for (rc = pmfuse_btree_first(&cur, &e->rc); !rc; rc = pmfuse_btree_next(&cur), n++) {
		struct pmfuse_refcount_rec rec;
		uint64_t start, len;

		memcpy(&rec, pmfuse_btree_cursor_rec(&cur), sizeof(rec));
		while (b < e->nblocks && e->cnt[b] < 2)
			b++;
		start = pmfuse_le64(rec.start);
		len = pmfuse_le32(rec.len);
		if (b == e->nblocks || start != b || len != model_run(e, b) ||
		    pmfuse_le32(rec.refcount) != e->cnt[b]) {
			dump(e, PMFUSE_MIN(b, start));
			fail_msg("record %" PRIu64 " is %" PRIu64 "+%" PRIu64 ":%u, model run %"
				 PRIu64 "+%" PRIu64 ":%u", n, start, len,
				 pmfuse_le32(rec.refcount), b,
				 b < e->nblocks ? model_run(e, b) : 0,
				 b < e->nblocks ? e->cnt[b] : 0);
		}
		b += len;
	}
	assert_int_equal(rc, -ENOENT);
	while (b < e->nblocks && e->cnt[b] < 2)
		b++;
	if (b != e->nblocks)
		fail_msg("model run at %" PRIu64 " has no record", b);
	/* merging: one record per maximal run */
	assert_int_equal(pmfuse_btree_count(&e->rc), n);
	assert_int_equal(model_records(e), n);
}

/*
 * Everything the test can check: the b+tree and refcount checks, the allocator against the
 * model, the records one by one, pmfuse_refcount_get walked run by run over [lo, hi), and (with
 * r) random short queries anywhere.
 */
static void env_verify_range(struct env *e, struct th_rng *r, uint64_t lo, uint64_t hi)
{
	uint64_t live = 0, b;
	int rc;

	memset(e->node, 0, e->nblocks);
	e->nodes = 0;
	rc = pmfuse_btree_check(&e->rc, visit_node, e, e->msg, sizeof(e->msg));
	if (rc)
		fail_msg("btree_check: %s", e->msg);
	rc = pmfuse_refcount_check(&e->rc, e->al, e->msg, sizeof(e->msg));
	if (rc)
		fail_msg("refcount_check: %s", e->msg);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);

	/* allocator: in use = metadata, ours with count >= 1, or a tree node */
	for (b = 0; b < e->nblocks; b++) {
		int want = e->fixed[b] || e->cnt[b] || e->node[b];
		int used = pmfuse_alloc_is_used(e->al, b);

		if (used != want)
			fail_msg("block %" PRIu64 ": used %d, want %d (count %u, node %d)", b, used,
				 want, e->cnt[b], e->node[b]);
		if ((e->fixed[b] && (e->cnt[b] || e->node[b])) || (e->cnt[b] && e->node[b]))
			fail_msg("block %" PRIu64 ": fixed %d, count %u, node %d", b, e->fixed[b],
				 e->cnt[b], e->node[b]);
		live += e->cnt[b] != 0;
	}
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), e->free0 - live - e->nodes);

	compare_records(e);

	/* counts and runs */
	for (b = lo; b < hi;) {
		uint32_t c = 0;
		uint64_t run = 0, want_run = PMFUSE_MIN(model_run(e, b), hi - b);

		assert_int_equal(pmfuse_refcount_get(&e->rc, b, hi - b, &c, &run), 0);
		if (c != view(e, b) || run != want_run) {
			dump(e, b);
			fail_msg("get(%" PRIu64 ", %" PRIu64 "): count %u run %" PRIu64
				 ", want %u %" PRIu64, b, hi - b, c, run, view(e, b), want_run);
		}
		b += run;
	}
	for (int i = 0; r && i < 8; i++) {
		uint32_t c = 0;
		uint64_t run = 0, maxlen = 1 + th_rng_below(r, 16), want_run;

		b = th_rng_below(r, e->nblocks - 1);
		maxlen = PMFUSE_MIN(maxlen, e->nblocks - b);   /* the model ends with the pool */
		want_run = PMFUSE_MIN(maxlen, model_run(e, b));
		assert_int_equal(pmfuse_refcount_get(&e->rc, b, maxlen, &c, &run), 0);
		if (c != view(e, b) || run != want_run) {
			dump(e, b);
			fail_msg("get(%" PRIu64 ", %" PRIu64 "): count %u run %" PRIu64
				 ", want %u %" PRIu64, b, maxlen, c, run, view(e, b), want_run);
		}
	}
}

static void env_verify(struct env *e, struct th_rng *r)
{
	env_verify_range(e, r, 0, e->nblocks);
}

/* Allocates blocks in one committed transaction until live >= target (or the pool is full). */
static void env_refill(struct env *e, struct th_rng *r, uint64_t target)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
	uint64_t live = 0;

	for (uint64_t b = 0; b < e->nblocks; b++)
		live += e->cnt[b] != 0;
	while (live < target) {
		uint64_t s = 0, l = 0;
		int rc = pmfuse_alloc_extent(tx, e->al, 0, 1, 1 + th_rng_below(r, 48), &s, &l);

		if (rc == -ENOSPC)
			break;
		assert_int_equal(rc, 0);
		for (uint64_t b = s; b < s + l; b++) {
			assert_int_equal(e->cnt[b], 0);
			e->cnt[b] = 1;
		}
		live += l;
	}
	assert_int_equal(pmfuse_tx_commit(tx), 0);
}

/* One committed incr or decr, model updated, freed count checked. */
static void do_op(struct env *e, bool incr, uint64_t s, uint64_t l)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
	uint64_t freed = 0, want = 0;
	int rc;

	if (incr)
		rc = pmfuse_refcount_incr(tx, &e->rc, e->al, s, l);
	else
		rc = pmfuse_refcount_decr(tx, &e->rc, e->al, s, l, &freed);
	if (rc)
		fail_msg("%s %" PRIu64 "+%" PRIu64 ": %d", incr ? "incr" : "decr", s, l, rc);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	for (uint64_t b = s; b < s + l; b++) {
		assert_true(e->cnt[b] >= 1);
		if (incr) {
			e->cnt[b]++;
		} else {
			want += e->cnt[b] == 1;
			e->cnt[b]--;
		}
	}
	assert_int_equal(freed, want);
}

/* ---- the random model test ------------------------------------------------------------------ */

/* Start of the view run (record or gap) holding b, not before lo. */
static uint64_t edge_before(const struct env *e, uint64_t b, uint64_t lo)
{
	while (b > lo && view(e, b - 1) == view(e, b))
		b--;
	return b;
}

/* End of the view run holding b, not after hi. */
static uint64_t edge_after(const struct env *e, uint64_t b, uint64_t hi)
{
	b++;
	while (b < hi && view(e, b) == view(e, b - 1))
		b++;
	return b;
}

/* Picks a range of live blocks (count >= 1). False when there are none. */
static bool pick_range(const struct env *e, struct th_rng *r, uint64_t *s, uint64_t *l)
{
	uint64_t b = th_rng_below(r, e->nblocks), rs, re, lo, hi;
	uint64_t i;

	for (i = 0; i < e->nblocks && !e->cnt[b]; i++)
		b = (b + 1) % e->nblocks;
	if (i == e->nblocks)
		return false;
	for (rs = b; rs > 0 && e->cnt[rs - 1]; rs--)
		;
	for (re = b + 1; re < e->nblocks && e->cnt[re]; re++)
		;
	switch (th_rng_below(r, 7)) {
	case 0:  /* one block */
		lo = b;
		hi = b + 1;
		break;
	case 1:  /* the whole live run: touches both ends, spans every record in it */
		lo = rs;
		hi = re;
		break;
	case 2:  /* starts on a record or gap edge */
		lo = edge_before(e, b, rs);
		hi = lo + 1 + th_rng_below(r, re - lo);
		break;
	case 3:  /* ends on an edge */
		hi = edge_after(e, b, re);
		lo = rs + th_rng_below(r, hi - rs);
		break;
	case 4:  /* exactly one record or gap */
		lo = edge_before(e, b, rs);
		hi = edge_after(e, b, re);
		break;
	case 5:  /* short */
		lo = b;
		hi = b + 1 + th_rng_below(r, 4);   /* not inside PMFUSE_MIN: evaluated twice */
		hi = PMFUSE_MIN(re, hi);
		break;
	default: /* anywhere in the run */
		lo = rs + th_rng_below(r, re - rs);
		hi = lo + 1 + th_rng_below(r, re - lo);
		break;
	}
	for (uint64_t x = lo; x < hi; x++)   /* the test's own sanity */
		if (!e->cnt[x])
			fail_msg("picked %" PRIu64 "..%" PRIu64 " in live run %" PRIu64 "..%"
				 PRIu64, lo, hi, rs, re);
	*s = lo;
	*l = hi - lo;
	return true;
}

static void model_run_test(size_t size, uint64_t nops, bool verify)
{
	struct th_rng r;
	struct env e;
	uint64_t data, target, maxrecs = 0, aborted = 0, freed_total = 0, blocks_total = 0;
	unsigned maxlevels = 0;

	th_rng_init(&r, th_seed() ^ (verify ? 0x5eed : 0));
	env_init(&e, size);
	if (verify)
		pmfuse_txm_set_verify(e.vol->txm, true);
	data = e.free0;
	target = data / 3;
	env_refill(&e, &r, target);
	env_verify(&e, &r);

	for (uint64_t op = 0; op < nops; op++) {
		struct pmfuse_btree_root before;
		struct pmfuse_tx *tx;
		uint64_t s, l, freed = 0, want_freed = 0;
		bool incr = th_rng_below(&r, 2) == 0, abort_it = th_rng_below(&r, 10) == 0;
		int rc;

		if (!pick_range(&e, &r, &s, &l) || th_rng_below(&r, 64) == 0) {
			env_refill(&e, &r, target);
			env_verify(&e, NULL);
		}
		if (!pick_range(&e, &r, &s, &l))
			fail_msg("no live blocks after a refill");
		memcpy(&before, e.rc.root, sizeof(before));
		tx = pmfuse_tx_begin(e.vol->txm);
		if (incr)
			rc = pmfuse_refcount_incr(tx, &e.rc, e.al, s, l);
		else
			rc = pmfuse_refcount_decr(tx, &e.rc, e.al, s, l, &freed);
		if (rc)
			fail_msg("op %" PRIu64 ": %s %" PRIu64 "+%" PRIu64 ": %d", op,
				 incr ? "incr" : "decr", s, l, rc);
		if (abort_it) {
			pmfuse_tx_abort(tx);
			aborted++;
			assert_memory_equal(&before, e.rc.root, sizeof(before));
		} else {
			assert_int_equal(pmfuse_tx_commit(tx), 0);
			for (uint64_t b = s; b < s + l; b++) {
				if (incr) {
					e.cnt[b]++;
				} else {
					want_freed += e.cnt[b] == 1;
					e.cnt[b]--;
				}
			}
			if (freed != want_freed)
				fail_msg("op %" PRIu64 ": decr %" PRIu64 "+%" PRIu64 " freed %"
					 PRIu64 ", want %" PRIu64, op, s, l, freed, want_freed);
			freed_total += freed;
			blocks_total += l;
		}
		/* get over the whole pool now and then (a walk costs a descent per run), else
		 * around the range just adjusted; everything else after every operation */
		if (op % 32 == 31 || op == nops - 1)
			env_verify(&e, &r);
		else
			env_verify_range(&e, &r, s > 64 ? s - 64 : 0,
					 PMFUSE_MIN(s + l + 64, e.nblocks));
		maxrecs = PMFUSE_MAX(maxrecs, pmfuse_btree_count(&e.rc));
		maxlevels = PMFUSE_MAX(maxlevels, pmfuse_le16(e.rc.root->levels));
	}
	printf("# %" PRIu64 " ops (%" PRIu64 " aborted), %" PRIu64 " blocks adjusted, %" PRIu64
	       " freed, up to %" PRIu64 " records in %u levels\n", nops, aborted, blocks_total,
	       freed_total, maxrecs, maxlevels);
	/* the test must have reached a multi-level tree to mean much */
	if (!verify)
		assert_true(maxlevels >= 2);
	env_fini(&e);
}

static void test_model(void **state)
{
	(void)state;
	model_run_test(16 * MIB, th_scaled(20000), false);
}

static void test_model_verify(void **state)
{
	(void)state;
	model_run_test(4 * MIB, th_scaled(1500), true);
}

/* ---- edge cases ----------------------------------------------------------------------------- */

static uint64_t alloc_blocks(struct env *e, uint64_t n)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
	uint64_t s = 0, l = 0;

	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, n, n, &s, &l), 0);
	assert_int_equal(l, n);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	for (uint64_t b = s; b < s + l; b++)
		e->cnt[b] = 1;
	return s;
}

static void test_roundtrip(void **state)
{
	struct env e;
	uint64_t s;
	uint32_t c;
	uint64_t run;

	(void)state;
	env_init(&e, 16 * MIB);
	s = alloc_blocks(&e, 10);

	do_op(&e, true, s + 2, 5);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s + 2, 100, &c, &run), 0);
	assert_int_equal(c, 2);
	assert_int_equal(run, 5);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s, 100, &c, &run), 0);
	assert_int_equal(c, 1);
	assert_int_equal(run, 2);

	do_op(&e, false, s + 2, 5);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);
	assert_int_equal(e.rc.root->levels.v, 0);

	/* nested: whole, middle, then undo in the other order */
	do_op(&e, true, s, 10);
	do_op(&e, true, s + 3, 4);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 3);
	do_op(&e, false, s, 10);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);
	do_op(&e, false, s + 3, 4);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);
	for (uint64_t b = s; b < s + 10; b++)
		assert_int_equal(pmfuse_alloc_is_used(e.al, b), 1);
	env_fini(&e);
}

static void test_decr_frees(void **state)
{
	struct env e;
	uint64_t s, free_before;

	(void)state;
	env_init(&e, 16 * MIB);
	s = alloc_blocks(&e, 8);
	free_before = pmfuse_alloc_free_blocks(e.al);

	do_op(&e, false, s + 3, 1);   /* count 1 -> freed */
	assert_int_equal(pmfuse_alloc_is_used(e.al, s + 3), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e.al), free_before + 1);
	env_verify(&e, NULL);

	/* a record and a gap in one decrement: the record drops to 1, the gap is freed */
	do_op(&e, true, s, 2);
	do_op(&e, false, s, 3);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);
	assert_int_equal(pmfuse_alloc_is_used(e.al, s), 1);
	assert_int_equal(pmfuse_alloc_is_used(e.al, s + 2), 0);

	/* gaps around a record: both freed, the record kept */
	do_op(&e, true, s + 5, 1);
	do_op(&e, false, s + 4, 4);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_alloc_is_used(e.al, s + 4), 0);
	assert_int_equal(pmfuse_alloc_is_used(e.al, s + 5), 1);
	assert_int_equal(pmfuse_alloc_is_used(e.al, s + 6), 0);
	env_fini(&e);
}

/* Runs a failing operation, checks its error, aborts, and checks that nothing changed. */
static void failing_op(struct env *e, bool incr, uint64_t s, uint64_t l, int want)
{
	struct pmfuse_btree_root before;
	struct pmfuse_tx *tx;
	uint64_t freed = 0, free_before = pmfuse_alloc_free_blocks(e->al);
	int rc;

	memcpy(&before, e->rc.root, sizeof(before));
	tx = pmfuse_tx_begin(e->vol->txm);
	if (incr)
		rc = pmfuse_refcount_incr(tx, &e->rc, e->al, s, l);
	else
		rc = pmfuse_refcount_decr(tx, &e->rc, e->al, s, l, &freed);
	assert_int_equal(rc, want);
	pmfuse_tx_abort(tx);
	assert_memory_equal(&before, e->rc.root, sizeof(before));
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), free_before);
	env_verify(e, NULL);
}

static void test_decr_free_block(void **state)
{
	struct env e;
	uint64_t s;

	(void)state;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	env_init(&e, 4 * MIB);
	pmfuse_txm_set_verify(e.vol->txm, true);
	s = alloc_blocks(&e, 8);
	do_op(&e, true, s + 1, 2);
	do_op(&e, true, s + 2, 2);
	do_op(&e, false, s + 7, 1);                          /* s + 7 is free from now on */
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_alloc_is_used(e.al, s + 7), 0);
	assert_int_equal(pmfuse_btree_count(&e.rc), 3);

	failing_op(&e, false, s + 7, 1, -EUCLEAN);           /* a free block */
	/* records, gaps and, at the end, a free block: everything before it is undone */
	failing_op(&e, false, s, 8, -EUCLEAN);
	assert_int_equal(pmfuse_btree_count(&e.rc), 3);
	/* incrementing a free block, at either end of a gap */
	failing_op(&e, true, s + 7, 1, -EUCLEAN);
	failing_op(&e, true, s + 4, 4, -EUCLEAN);
	failing_op(&e, true, s, 8, -EUCLEAN);
	/* outside the filesystem */
	failing_op(&e, true, e.nblocks + 10, 1, -EUCLEAN);
	failing_op(&e, false, e.nblocks + 10, 1, -EUCLEAN);
	env_fini(&e);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
}

static void test_thousand_records(void **state)
{
	struct env e;
	struct pmfuse_tx *tx;
	uint64_t s, n = 1000, freed = 0;
	uint32_t c;
	uint64_t run;

	(void)state;
	env_init(&e, 16 * MIB);
	pmfuse_txm_set_verify(e.vol->txm, true);   /* a two-level tree with verification */
	s = alloc_blocks(&e, n);
	do_op(&e, true, s, n);
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);

	/* counts 3 2 3 2 ...: one record per block */
	tx = pmfuse_tx_begin(e.vol->txm);
	for (uint64_t i = 0; i < n; i += 2) {
		assert_int_equal(pmfuse_refcount_incr(tx, &e.rc, e.al, s + i, 1), 0);
		e.cnt[s + i]++;
	}
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), n);
	assert_true(pmfuse_le16(e.rc.root->levels) >= 2);

	/* one range over all 1,000 records: 4 3 4 3 ... */
	do_op(&e, true, s, n);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), n);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s, n, &c, &run), 0);
	assert_int_equal(c, 4);
	assert_int_equal(run, 1);

	/* an inner range with edges inside records, then the whole range, aborted */
	do_op(&e, false, s + 1, n - 2);
	env_verify(&e, NULL);
	do_op(&e, true, s + 1, n - 2);
	env_verify(&e, NULL);
	failing_op(&e, true, s, n, 0);

	/* down: 3 2 ..., 2 1 ... (500 records), 1 0 ... (500 blocks freed, no records) */
	do_op(&e, false, s, n);
	do_op(&e, false, s, n);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), n / 2);
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_refcount_decr(tx, &e.rc, e.al, s, n, &freed), 0);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	for (uint64_t b = s; b < s + n; b++)
		e.cnt[b]--;
	assert_int_equal(freed, n / 2);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);
	env_fini(&e);
}

static void test_merge_edges(void **state)
{
	struct env e;
	uint64_t s;
	uint32_t c;
	uint64_t run;

	(void)state;
	env_init(&e, 16 * MIB);
	s = alloc_blocks(&e, 30);

	do_op(&e, true, s, 5);
	do_op(&e, true, s + 10, 5);
	assert_int_equal(pmfuse_btree_count(&e.rc), 2);
	do_op(&e, true, s + 5, 5);                 /* fills the gap: merges on both sides */
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s, 100, &c, &run), 0);
	assert_int_equal(c, 2);
	assert_int_equal(run, 15);

	do_op(&e, true, s + 5, 5);                 /* splits in three */
	assert_int_equal(pmfuse_btree_count(&e.rc), 3);
	do_op(&e, false, s + 5, 5);                /* merges back */
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);

	/* a range straddling a record edge, merging with the right neighbour only */
	do_op(&e, true, s + 15, 5);                /* [s, 15):2, [15, 20):2 merged already */
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);
	do_op(&e, true, s + 12, 8);                /* [s, 12):2 [12, 20):3 */
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 2);
	do_op(&e, true, s, 12);                    /* everything 3: one record */
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 1);
	do_op(&e, false, s, 20);
	do_op(&e, false, s, 20);
	env_verify(&e, NULL);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);
	env_fini(&e);
}

/* Inserts a raw record, bypassing the refcount code. */
static void raw_insert(struct env *e, struct pmfuse_tx *tx, uint64_t start, uint32_t len,
		       uint32_t count)
{
	struct pmfuse_refcount_rec rec;

	memset(&rec, 0, sizeof(rec));
	pmfuse_set_le64(&rec.start, start);
	pmfuse_set_le32(&rec.len, len);
	pmfuse_set_le32(&rec.refcount, count);
	assert_int_equal(pmfuse_btree_insert(tx, &e->rc, &rec), 0);
}

static void test_overflow(void **state)
{
	struct env e;
	struct pmfuse_tx *tx;
	uint64_t s;
	uint32_t c;
	uint64_t run;

	(void)state;
	env_init(&e, 16 * MIB);
	s = alloc_blocks(&e, 4);
	tx = pmfuse_tx_begin(e.vol->txm);
	raw_insert(&e, tx, s + 1, 1, UINT32_MAX);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	e.cnt[s + 1] = UINT32_MAX;
	env_verify(&e, NULL);

	failing_op(&e, true, s, 3, -EOVERFLOW);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s + 1, 10, &c, &run), 0);
	assert_int_equal(c, UINT32_MAX);
	do_op(&e, false, s + 1, 1);
	do_op(&e, true, s, 3);
	env_verify(&e, NULL);
	env_fini(&e);
}

static void test_invalid(void **state)
{
	struct env e;
	struct pmfuse_tx *tx;
	uint64_t s, freed = 7;
	uint32_t c;
	uint64_t run;

	(void)state;
	env_init(&e, 16 * MIB);
	s = alloc_blocks(&e, 4);
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_refcount_incr(tx, &e.rc, e.al, s, 0), -EINVAL);
	assert_int_equal(pmfuse_refcount_decr(tx, &e.rc, e.al, s, 0, &freed), -EINVAL);
	assert_int_equal(freed, 0);
	assert_int_equal(pmfuse_refcount_incr(tx, &e.rc, e.al, UINT64_MAX - 1, 3), -EINVAL);
	assert_int_equal(pmfuse_refcount_decr(tx, &e.rc, e.al, UINT64_MAX, 2, NULL), -EINVAL);
	pmfuse_tx_abort(tx);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s, 0, &c, &run), -EINVAL);
	/* an empty tree: everything is 1, the run reaches maxlen */
	assert_int_equal(pmfuse_refcount_get(&e.rc, s, 100, &c, &run), 0);
	assert_int_equal(c, 1);
	assert_int_equal(run, 100);
	env_verify(&e, NULL);
	env_fini(&e);
}

/* Builds a tree with raw records, expects pmfuse_refcount_check to fail with a message holding
 * what, then throws it away. */
static void expect_check_fails(struct env *e, const uint64_t (*recs)[3], unsigned n,
			       bool with_alloc, const char *what)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
	int rc;

	for (unsigned i = 0; i < n; i++)
		raw_insert(e, tx, recs[i][0], (uint32_t)recs[i][1], (uint32_t)recs[i][2]);
	pmfuse_tx_seal(tx);
	rc = pmfuse_refcount_check(&e->rc, with_alloc ? e->al : NULL, e->msg, sizeof(e->msg));
	assert_int_equal(rc, -EUCLEAN);
	if (!strstr(e->msg, what))
		fail_msg("check message \"%s\" lacks \"%s\"", e->msg, what);
	pmfuse_tx_abort(tx);
	assert_int_equal(pmfuse_btree_count(&e->rc), 0);
}

static void test_check_detects(void **state)
{
	struct env e;
	struct pmfuse_tx *tx;
	uint64_t s;
	uint32_t c;
	uint64_t run;

	(void)state;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	env_init(&e, 16 * MIB);
	s = alloc_blocks(&e, 16);

	const uint64_t unmerged[][3] = { { s, 2, 2 }, { s + 2, 3, 2 } };
	expect_check_fails(&e, unmerged, 2, true, "not merged");
	const uint64_t overlap[][3] = { { s, 4, 2 }, { s + 3, 3, 5 } };
	expect_check_fails(&e, overlap, 2, true, "overlaps");
	const uint64_t count1[][3] = { { s, 4, 1 } };
	expect_check_fails(&e, count1, 1, false, "malformed");
	const uint64_t len0[][3] = { { s, 0, 3 } };
	expect_check_fails(&e, len0, 1, false, "malformed");
	const uint64_t toolong[][3] = { { s, RC_MAX + 1, 3 } };
	expect_check_fails(&e, toolong, 1, false, "malformed");
	const uint64_t wraps[][3] = { { UINT64_MAX - 2, 4, 3 } };
	expect_check_fails(&e, wraps, 1, false, "malformed");
	const uint64_t on_free[][3] = { { s + 12, 8, 3 } };   /* 4 blocks past ours, 1 node */
	expect_check_fails(&e, on_free, 1, true, "free");

	/* the same record without the allocator passes; and get rejects a malformed record */
	tx = pmfuse_tx_begin(e.vol->txm);
	raw_insert(&e, tx, s + 12, 8, 3);
	assert_int_equal(pmfuse_refcount_check(&e.rc, NULL, e.msg, sizeof(e.msg)), 0);
	raw_insert(&e, tx, s + 2, 2, 1);
	assert_int_equal(pmfuse_refcount_get(&e.rc, s + 3, 10, &c, &run), -EUCLEAN);
	assert_int_equal(pmfuse_refcount_incr(tx, &e.rc, e.al, s, 4), -EUCLEAN);
	pmfuse_tx_abort(tx);
	env_verify(&e, NULL);
	env_fini(&e);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
}

/*
 * Records longer than the pool, far beyond it (no allocator query happens for blocks covered by
 * records): runs longer than PMFUSE_EXTENT_MAX_LEN take several records, splits make merges due
 * again, and long ranges are adjusted in chunks.
 */
static void expect_recs(struct env *e, const uint64_t (*want)[3], unsigned n)
{
	struct pmfuse_btree_cursor cur;
	unsigned i = 0;
	int rc;

	assert_int_equal(pmfuse_refcount_check(&e->rc, NULL, e->msg, sizeof(e->msg)), 0);
	assert_int_equal(pmfuse_btree_check(&e->rc, NULL, NULL, e->msg, sizeof(e->msg)), 0);
	assert_int_equal(pmfuse_btree_count(&e->rc), n);
	for (rc = pmfuse_btree_first(&cur, &e->rc); !rc; rc = pmfuse_btree_next(&cur), i++) {
		struct pmfuse_refcount_rec rec;

		memcpy(&rec, pmfuse_btree_cursor_rec(&cur), sizeof(rec));
		assert_true(i < n);
		assert_int_equal(pmfuse_le64(rec.start), want[i][0]);
		assert_int_equal(pmfuse_le32(rec.len), want[i][1]);
		assert_int_equal(pmfuse_le32(rec.refcount), want[i][2]);
	}
	assert_int_equal(rc, -ENOENT);
	assert_int_equal(i, n);
}

static void adjust_far(struct env *e, bool incr, uint64_t s, uint64_t l)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
	uint64_t freed = 1;

	if (incr) {
		assert_int_equal(pmfuse_refcount_incr(tx, &e->rc, e->al, s, l), 0);
	} else {
		assert_int_equal(pmfuse_refcount_decr(tx, &e->rc, e->al, s, l, &freed), 0);
		assert_int_equal(freed, 0);
	}
	assert_int_equal(pmfuse_tx_commit(tx), 0);
}

static void test_max_len(void **state)
{
	const uint64_t B = 1ull << 40, M = RC_MAX;
	struct env e;
	struct pmfuse_tx *tx;
	uint32_t c;
	uint64_t run;

	(void)state;
	env_init(&e, 16 * MIB);
	tx = pmfuse_tx_begin(e.vol->txm);
	raw_insert(&e, tx, B, (uint32_t)M, 2);
	raw_insert(&e, tx, B + M, 10, 2);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	const uint64_t r0[][3] = { { B, M, 2 }, { B + M, 10, 2 } };
	expect_recs(&e, r0, 2);   /* touching, equal, but too long together: fine */

	/* get follows the run over both records */
	assert_int_equal(pmfuse_refcount_get(&e.rc, B + 5, UINT64_MAX, &c, &run), 0);
	assert_int_equal(c, 2);
	assert_int_equal(run, M + 5);

	/* a split shortens the first record: the rest now merges with the second */
	adjust_far(&e, true, B, 20);
	const uint64_t r1[][3] = { { B, 20, 3 }, { B + 20, M - 10, 2 } };
	expect_recs(&e, r1, 2);
	adjust_far(&e, false, B, 20);   /* equal again, but too long to merge */
	const uint64_t r2[][3] = { { B, 20, 2 }, { B + 20, M - 10, 2 } };
	expect_recs(&e, r2, 2);

	/* a range longer than the largest record: adjusted in chunks */
	adjust_far(&e, true, B, M + 10);
	/* chunk 1 splits the second record at B + M, and its first two pieces fit one record */
	const uint64_t r3[][3] = { { B, M, 3 }, { B + M, 10, 3 } };
	expect_recs(&e, r3, 2);
	adjust_far(&e, false, B, M + 10);
	adjust_far(&e, false, B, M + 10);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);

	/* equal counts, longer than the largest record by only 4 blocks: still two records */
	tx = pmfuse_tx_begin(e.vol->txm);
	raw_insert(&e, tx, B, (uint32_t)M, 2);
	raw_insert(&e, tx, B + M, 4, 3);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	adjust_far(&e, false, B + M, 4);
	const uint64_t r4[][3] = { { B, M, 2 }, { B + M, 4, 2 } };
	expect_recs(&e, r4, 2);
	adjust_far(&e, false, B, M + 4);
	assert_int_equal(pmfuse_btree_count(&e.rc), 0);
	env_verify(&e, NULL);
	env_fini(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_decr_frees),
		cmocka_unit_test(test_decr_free_block),
		cmocka_unit_test(test_thousand_records),
		cmocka_unit_test(test_merge_edges),
		cmocka_unit_test(test_overflow),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_check_detects),
		cmocka_unit_test(test_max_len),
		cmocka_unit_test(test_model),
		cmocka_unit_test(test_model_verify),
	};

	th_seed();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
