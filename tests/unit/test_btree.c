/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The generic b+tree against a model, on fake-media volumes:
 * - basic semantics: empty tree, EEXIST/ENOENT, update, delete's old record, cursors at the ends,
 *   destroy;
 * - seeded random insert / delete / update / lookup / range sequences against a bitmap model, in
 *   transactions that commit or abort, for three record shapes (small records: wide nodes and few
 *   levels; large records; large keys: narrow nodes and five or more levels) and a 64 KiB block
 *   size. Phases grow, churn and then shrink the tree (merges, root collapse) and finally empty
 *   it. Every 2,000 operations: pmfuse_btree_check, a full content comparison, and block
 *   accounting (nodes found by the check == blocks the allocator lost), which catches leaks;
 * - aborted transactions leave the tree's blocks, the root descriptor and the free count exactly
 *   as they were, with transaction verification on (every changed byte declared);
 * - ENOSPC on a small pool: abort, and the tree still checks clean and equals the model;
 * - corruption of leaves, interior nodes and the root descriptor: -EUCLEAN, never a crash; the
 *   check's message names the node and what is wrong; random resealed damage (fuzz) is survived.
 *
 * Records: key = (u64 k, then key_len - 8 bytes derived from k); payload = (u64 v, then bytes
 * derived from k and v), so that check_rec can tell a well-formed record.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta/alloc.h"
#include "meta/btree.h"
#include "pool/pool.h"
#include "tx/tx.h"
#include "util/util.h"

#define MIB (1024u * 1024u)
#define CHECK_EVERY 2000u

/* ---- record shapes ------------------------------------------------------------------------ */

static uint8_t key_byte(uint64_t k, unsigned i)
{
	return (uint8_t)((k * 31u + i * 7u) ^ (k >> 11));
}

static uint8_t val_byte(uint64_t k, uint64_t v, unsigned i)
{
	return (uint8_t)((v * 13u + k + i * 5u) ^ (v >> 17));
}

static void make_rec(const struct pmfuse_btree_ops *ops, uint64_t k, uint64_t v, void *rec)
{
	uint8_t *p = rec;

	memcpy(p, &k, 8);
	for (unsigned i = 8; i < ops->key_len; i++)
		p[i] = key_byte(k, i);
	if (ops->rec_len >= ops->key_len + 8u) {
		memcpy(p + ops->key_len, &v, 8);
		for (unsigned i = ops->key_len + 8u; i < ops->rec_len; i++)
			p[i] = val_byte(k, v, i);
	}
}

static void make_key(const struct pmfuse_btree_ops *ops, uint64_t k, void *key)
{
	uint8_t *p = key;

	memcpy(p, &k, 8);
	for (unsigned i = 8; i < ops->key_len; i++)
		p[i] = key_byte(k, i);
}

static uint64_t rec_k(const void *rec)
{
	uint64_t k;
	memcpy(&k, rec, 8);
	return k;
}

static int cmp_keys(const void *a, const void *b, unsigned len)
{
	uint64_t x, y;

	memcpy(&x, a, 8);
	memcpy(&y, b, 8);
	if (x != y)
		return x < y ? -1 : 1;
	return memcmp((const uint8_t *)a + 8, (const uint8_t *)b + 8, len - 8);
}

static int check_rec_bytes(const void *rec, unsigned klen, unsigned rlen)
{
	const uint8_t *p = rec;
	uint64_t k = rec_k(rec), v = 0;

	for (unsigned i = 8; i < klen; i++)
		if (p[i] != key_byte(k, i))
			return PMFUSE_CORRUPT("test record %llu: key byte %u", (unsigned long long)k, i);
	if (rlen >= klen + 8u) {
		memcpy(&v, p + klen, 8);
		for (unsigned i = klen + 8u; i < rlen; i++)
			if (p[i] != val_byte(k, v, i))
				return PMFUSE_CORRUPT("test record %llu: byte %u",
						      (unsigned long long)k, i);
	}
	return 0;
}

#define SHAPE(name, klen, rlen)                                                               \
	static void name##_key(void *key, const void *rec) { memcpy(key, rec, klen); }        \
	static int name##_cmp(const void *a, const void *b) { return cmp_keys(a, b, klen); }  \
	static int name##_check(const void *rec) { return check_rec_bytes(rec, klen, rlen); } \
	static const struct pmfuse_btree_ops name##_ops = {                                   \
		#name, klen, rlen, name##_key, name##_cmp, name##_check,                      \
	}

SHAPE(small, 8, 16);    /* 4 KiB: 254 records a leaf, 254 slots a node */
SHAPE(large, 16, 256);  /* 4 KiB: 15 records a leaf, 169 slots a node */
SHAPE(deep, 248, 512);  /* 4 KiB: 7 records a leaf, 15 slots a node */

#define REC_MAX 512u
#define KEY_MAX 248u

/* ---- the model: a bitmap over the key space and one value per key ----------------------- */

struct undo {
	uint64_t k, v;
	bool was;
};

struct model {
	uint64_t space;
	uint64_t *bits;
	uint64_t *val;
	uint64_t count;
	struct undo *undo;      /* changes of the running transaction */
	size_t nundo, capundo;
};

static void model_init(struct model *m, uint64_t space)
{
	m->space = space;
	m->bits = calloc((space + 63) / 64, 8);
	m->val = calloc(space, 8);
	m->count = 0;
	m->undo = NULL;
	m->nundo = m->capundo = 0;
	assert_non_null(m->bits);
	assert_non_null(m->val);
}

static void model_free(struct model *m)
{
	free(m->bits);
	free(m->val);
	free(m->undo);
}

static bool model_has(const struct model *m, uint64_t k)
{
	return m->bits[k / 64] >> (k % 64) & 1;
}

static void model_journal(struct model *m, uint64_t k)
{
	if (m->nundo == m->capundo) {
		m->capundo = m->capundo ? m->capundo * 2 : 256;
		m->undo = realloc(m->undo, m->capundo * sizeof(*m->undo));
		assert_non_null(m->undo);
	}
	m->undo[m->nundo++] = (struct undo){ k, m->val[k], model_has(m, k) };
}

static void model_put(struct model *m, uint64_t k, uint64_t v, bool present)
{
	if (model_has(m, k) != present)
		m->count += present ? 1 : (uint64_t)-1;
	if (present)
		m->bits[k / 64] |= 1ull << (k % 64);
	else
		m->bits[k / 64] &= ~(1ull << (k % 64));
	m->val[k] = v;
}

static void model_set(struct model *m, uint64_t k, uint64_t v, bool present)
{
	model_journal(m, k);
	model_put(m, k, v, present);
}

static void model_commit(struct model *m)
{
	m->nundo = 0;
}

static void model_rollback(struct model *m)
{
	while (m->nundo) {
		struct undo *u = &m->undo[--m->nundo];
		model_put(m, u->k, u->v, u->was);
	}
}

/* First key >= k, or UINT64_MAX. */
static uint64_t model_ge(const struct model *m, uint64_t k)
{
	uint64_t w = k / 64, words = (m->space + 63) / 64, bits;

	if (k >= m->space)
		return UINT64_MAX;
	bits = m->bits[w] & (~0ull << (k % 64));
	while (!bits) {
		if (++w == words)
			return UINT64_MAX;
		bits = m->bits[w];
	}
	return w * 64 + (uint64_t)__builtin_ctzll(bits);
}

/* Last key <= k, or UINT64_MAX. */
static uint64_t model_le(const struct model *m, uint64_t k)
{
	uint64_t w, bits;

	if (k >= m->space)
		k = m->space - 1;
	w = k / 64;
	bits = m->bits[w] & (k % 64 == 63 ? ~0ull : (2ull << (k % 64)) - 1);
	while (!bits) {
		if (w-- == 0)
			return UINT64_MAX;
		bits = m->bits[w];
	}
	return w * 64 + 63 - (uint64_t)__builtin_clzll(bits);
}

/* ---- environment: a volume, a tree, a model ----------------------------------------------- */

struct env {
	struct pmfuse_volume *vol;
	struct pmfuse_btree bt;
	const struct pmfuse_btree_ops *ops;
	struct model m;
	struct th_rng rng;
	uint64_t free0;           /* free blocks with the tree empty */
	unsigned max_levels, min_levels_after_max;
	uint64_t ops_done, checks, peak;
	uint64_t n_insert, n_delete, n_update, n_lookup, n_range, n_abort, n_commit;
};

/* A fake-media volume with a log of log_blocks blocks (mkfs picks a small one by default). */
static struct pmfuse_volume *new_volume(size_t size, uint32_t bs, uint64_t log_blocks)
{
	struct pmfuse_mkfs_opts opts = { .block_size = bs, .log_blocks = log_blocks };
	struct pmfuse_pool *pool = NULL;
	struct pmfuse_volume *vol = NULL;
	char msg[256] = "";
	int rc;

	assert_int_equal(pmfuse_pool_fake_new(size, NULL, &pool), 0);
	assert_int_equal(pmfuse_mkfs(pool, &opts), 0);
	rc = pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg));
	if (rc)
		fprintf(stderr, "volume_open: %d %s\n", rc, msg);
	assert_int_equal(rc, 0);
	return vol;
}

/* Tree over state->roots[slot] (the state block reseals) on a fresh volume. */
static void env_init(struct env *e, const struct pmfuse_btree_ops *ops, size_t size, uint32_t bs,
		     uint64_t log_blocks, uint64_t space, uint64_t seed_mix)
{
	memset(e, 0, sizeof(*e));
	e->vol = new_volume(size, bs, log_blocks);
	e->ops = ops;
	pmfuse_btree_init(&e->bt, e->vol->pool, e->vol->alloc, ops, &e->vol->state->roots[3],
			  &e->vol->state->hdr, PMFUSE_TREE_TEST + 3, e->vol->block_size);
	model_init(&e->m, space);
	th_rng_init(&e->rng, th_seed() ^ seed_mix);
	e->free0 = pmfuse_alloc_free_blocks(e->vol->alloc);
	e->min_levels_after_max = ~0u;
}

static void env_fini(struct env *e)
{
	model_free(&e->m);
	th_volume_destroy(e->vol);
}

static unsigned tree_levels(const struct pmfuse_btree *bt)
{
	return pmfuse_le16(bt->root->levels);
}

static void count_node(void *arg, uint64_t blk)
{
	(void)blk;
	(*(uint64_t *)arg)++;
}

/* Walks the whole tree with a cursor and compares it with the model, both directions. */
static void compare_all(struct env *e)
{
	struct pmfuse_btree_cursor cur;
	uint8_t want[REC_MAX];
	uint64_t k = model_ge(&e->m, 0), seen = 0;
	int rc;

	assert_int_equal(pmfuse_btree_count(&e->bt), e->m.count);
	rc = pmfuse_btree_first(&cur, &e->bt);
	while (rc == 0) {
		const void *rec = pmfuse_btree_cursor_rec(&cur);

		assert_true(k != UINT64_MAX);
		make_rec(e->ops, k, e->m.val[k], want);
		if (memcmp(rec, want, e->ops->rec_len))
			fail_msg("record %llu: tree has key %llu or other contents",
				 (unsigned long long)k, (unsigned long long)rec_k(rec));
		seen++;
		k = model_ge(&e->m, k + 1);
		rc = pmfuse_btree_next(&cur);
	}
	assert_int_equal(rc, -ENOENT);
	assert_true(k == UINT64_MAX);
	assert_int_equal(seen, e->m.count);

	/* Backwards from the last record. */
	k = model_le(&e->m, e->m.space - 1);
	rc = pmfuse_btree_last(&cur, &e->bt);
	seen = 0;
	while (rc == 0) {
		assert_int_equal(rec_k(pmfuse_btree_cursor_rec(&cur)), k);
		seen++;
		k = k ? model_le(&e->m, k - 1) : UINT64_MAX;
		rc = pmfuse_btree_prev(&cur);
	}
	assert_int_equal(rc, -ENOENT);
	assert_int_equal(seen, e->m.count);
}

/* Full check + contents + block accounting: every block the tree holds is one the allocator
 * lost since the tree was empty, so a leaked or doubly used node shows. */
static void check_all(struct env *e)
{
	uint64_t nodes = 0;
	char msg[512];
	int rc = pmfuse_btree_check(&e->bt, count_node, &nodes, msg, sizeof(msg));

	if (rc)
		fail_msg("btree check after %llu ops: %d %s", (unsigned long long)e->ops_done, rc,
			 msg);
	assert_int_equal(e->free0 - pmfuse_alloc_free_blocks(e->vol->alloc), nodes);
	compare_all(e);
	e->checks++;
}

/* ---- single operations, each compared with the model -------------------------------------- */

static void op_insert(struct env *e, struct pmfuse_tx *tx, uint64_t k)
{
	uint8_t rec[REC_MAX];
	uint64_t v = th_rng_next(&e->rng);
	int rc;

	make_rec(e->ops, k, v, rec);
	rc = pmfuse_btree_insert(tx, &e->bt, rec);
	if (model_has(&e->m, k)) {
		assert_int_equal(rc, -EEXIST);
	} else {
		assert_int_equal(rc, 0);
		model_set(&e->m, k, v, true);
	}
	e->n_insert++;
}

static void op_delete(struct env *e, struct pmfuse_tx *tx, uint64_t k)
{
	uint8_t key[KEY_MAX], old[REC_MAX], want[REC_MAX];
	int rc;

	make_key(e->ops, k, key);
	rc = pmfuse_btree_delete(tx, &e->bt, key, old);
	if (model_has(&e->m, k)) {
		assert_int_equal(rc, 0);
		make_rec(e->ops, k, e->m.val[k], want);
		assert_memory_equal(old, want, e->ops->rec_len);
		model_set(&e->m, k, 0, false);
	} else {
		assert_int_equal(rc, -ENOENT);
	}
	e->n_delete++;
}

static void op_update(struct env *e, struct pmfuse_tx *tx, uint64_t k)
{
	uint8_t rec[REC_MAX];
	uint64_t v = th_rng_next(&e->rng);
	int rc;

	make_rec(e->ops, k, v, rec);
	rc = pmfuse_btree_update(tx, &e->bt, rec);
	if (model_has(&e->m, k)) {
		assert_int_equal(rc, 0);
		model_set(&e->m, k, v, true);
	} else {
		assert_int_equal(rc, -ENOENT);
	}
	e->n_update++;
}

static void op_lookup(struct env *e, uint64_t k)
{
	uint8_t key[KEY_MAX], rec[REC_MAX], want[REC_MAX];
	int rc;

	make_key(e->ops, k, key);
	rc = pmfuse_btree_lookup(&e->bt, key, rec);
	if (model_has(&e->m, k)) {
		assert_int_equal(rc, 0);
		make_rec(e->ops, k, e->m.val[k], want);
		assert_memory_equal(rec, want, e->ops->rec_len);
	} else {
		assert_int_equal(rc, -ENOENT);
	}
	e->n_lookup++;
}

/* Seek GE or LE at k (k may lie past the key space), then walk up to steps records. */
static void op_range(struct env *e, uint64_t k, bool ge, unsigned steps)
{
	struct pmfuse_btree_cursor cur;
	uint8_t key[KEY_MAX], want[REC_MAX];
	uint64_t mk = ge ? model_ge(&e->m, k) : model_le(&e->m, k);
	bool fwd = th_rng_below(&e->rng, 2);
	int rc;

	make_key(e->ops, k, key);
	rc = pmfuse_btree_seek(&cur, &e->bt, key, ge ? PMFUSE_SEEK_GE : PMFUSE_SEEK_LE);
	e->n_range++;
	if (mk == UINT64_MAX) {
		assert_int_equal(rc, -ENOENT);
		assert_null(pmfuse_btree_cursor_rec(&cur));
		return;
	}
	assert_int_equal(rc, 0);
	for (unsigned i = 0;; i++) {
		const void *rec = pmfuse_btree_cursor_rec(&cur);

		make_rec(e->ops, mk, e->m.val[mk], want);
		assert_memory_equal(rec, want, e->ops->rec_len);
		if (i == steps)
			break;
		if (fwd) {
			mk = model_ge(&e->m, mk + 1);
			rc = pmfuse_btree_next(&cur);
		} else {
			mk = mk ? model_le(&e->m, mk - 1) : UINT64_MAX;
			rc = pmfuse_btree_prev(&cur);
		}
		if (mk == UINT64_MAX) {
			/* Past the end: -ENOENT and the cursor stays on the last record. */
			assert_int_equal(rc, -ENOENT);
			assert_ptr_equal(pmfuse_btree_cursor_rec(&cur), rec);
			break;
		}
		assert_int_equal(rc, 0);
	}
}

/* ---- the random model workload ------------------------------------------------------------ */

struct mix {
	unsigned insert, delete, update, lookup, range;   /* weights */
};

static const struct mix bulk_mix = { 85, 5, 3, 4, 3 };
static const struct mix grow_mix = { 55, 15, 10, 10, 10 };
static const struct mix churn_mix = { 30, 30, 15, 10, 15 };
static const struct mix shrink_mix = { 8, 75, 4, 7, 6 };

/* The next present key at or after k (ascending) or at or before k, else k itself. */
static uint64_t present_near(const struct model *m, uint64_t k, bool up)
{
	uint64_t hit = up ? model_ge(m, k) : model_le(m, k);

	return hit == UINT64_MAX ? k : hit;
}

static void random_op(struct env *e, struct pmfuse_tx *tx, const struct mix *mx, uint64_t k)
{
	unsigned total = mx->insert + mx->delete + mx->update + mx->lookup + mx->range;
	unsigned r = (unsigned)th_rng_below(&e->rng, total);

	if (r < mx->insert) {
		op_insert(e, tx, k);
		return;
	}
	r -= mx->insert;
	/* Deletes, updates and lookups mostly aim at present keys, or most would miss. */
	uint64_t hit = th_rng_below(&e->rng, 4) ? present_near(&e->m, k, k & 1) : k;
	if (r < mx->delete) {
		op_delete(e, tx, hit);
		return;
	}
	r -= mx->delete;
	if (r < mx->update) {
		op_update(e, tx, hit);
		return;
	}
	r -= mx->update;
	if (r < mx->lookup) {
		op_lookup(e, hit);
		return;
	}
	op_range(e, th_rng_below(&e->rng, 16) ? k : e->m.space + 5, th_rng_below(&e->rng, 2),
		 (unsigned)th_rng_below(&e->rng, 40));
}

static void note_levels(struct env *e)
{
	unsigned lv = tree_levels(&e->bt);

	e->peak = PMFUSE_MAX(e->peak, e->m.count);
	if (lv > e->max_levels) {
		e->max_levels = lv;
		e->min_levels_after_max = lv;
	} else if (lv < e->min_levels_after_max) {
		e->min_levels_after_max = lv;
	}
}

/*
 * Runs nops operations in transactions of 1..8 operations, aborting about one transaction in
 * twenty. One transaction in seven is a sequential run: of inserts (ascending: right-edge
 * splits; descending: every insert a new minimum) while the mix grows the tree, of deletes of
 * neighbouring keys (whole leaves drain: merges, root collapse) while it shrinks it.
 */
static void run_phase(struct env *e, const struct mix *phase_mix, uint64_t nops, uint64_t floor)
{
	uint64_t end = e->ops_done + nops;

	while (e->ops_done < end) {
		/* A shrinking phase churns once the tree is down to floor records. */
		const struct mix *mx = e->m.count <= floor ? &churn_mix : phase_mix;
		uint64_t before = pmfuse_alloc_free_blocks(e->vol->alloc);
		struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
		unsigned n = 1 + (unsigned)th_rng_below(&e->rng, 8);
		unsigned kind = (unsigned)th_rng_below(&e->rng, 21);
		uint64_t k = th_rng_below(&e->rng, e->m.space);

		bool grows = mx->insert > mx->delete;

		for (unsigned i = 0; i < n; i++, e->ops_done++) {
			if (kind == 0 && grows)
				op_insert(e, tx, (k + i) % e->m.space);
			else if (kind == 1 && grows)
				op_insert(e, tx, (k + e->m.space - i) % e->m.space);
			else if (kind <= 2)
				op_delete(e, tx, present_near(&e->m, k, kind != 1));
			else
				random_op(e, tx, mx, th_rng_below(&e->rng, e->m.space));
		}
		if (th_rng_below(&e->rng, 20) == 0) {
			pmfuse_tx_abort(tx);
			model_rollback(&e->m);
			assert_int_equal(pmfuse_alloc_free_blocks(e->vol->alloc), before);
			e->n_abort++;
		} else {
			assert_int_equal(pmfuse_tx_commit(tx), 0);
			model_commit(&e->m);
			e->n_commit++;
		}
		note_levels(e);
		if (e->ops_done / CHECK_EVERY != (e->ops_done - n) / CHECK_EVERY)
			check_all(e);
	}
}

/* Deletes everything left, in key order through seeks, and checks the tree is empty again. */
static void drain_tree(struct env *e)
{
	while (e->m.count) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
		for (unsigned i = 0; i < 6 && e->m.count; i++) {
			uint64_t k = th_rng_below(&e->rng, 2) ? model_ge(&e->m, 0) :
				model_le(&e->m, e->m.space - 1);
			op_delete(e, tx, k);
		}
		assert_int_equal(pmfuse_tx_commit(tx), 0);
		model_commit(&e->m);
		note_levels(e);
	}
	check_all(e);
	assert_int_equal(tree_levels(&e->bt), 0);
	assert_int_equal(pmfuse_le64(e->bt.root->root), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e->vol->alloc), e->free0);
}

static void model_run_fill(const struct pmfuse_btree_ops *ops, uint32_t bs, uint64_t space,
			   const struct mix *grow, uint64_t nops, unsigned want_levels,
			   bool edge_fill)
{
	struct env e;
	uint64_t n = th_scaled(nops);

	env_init(&e, ops, 64 * MIB, bs, 4 * MIB / bs, space,
		 (uint64_t)ops->rec_len << 32 | bs | (uint64_t)edge_fill << 31);
	e.bt.edge_fill = edge_fill;
	run_phase(&e, grow, n * 40 / 100, 0);
	run_phase(&e, &churn_mix, n * 20 / 100, 0);
	run_phase(&e, &shrink_mix, n - n * 60 / 100, e.peak / 20);
	check_all(&e);
	printf("# %s/%u: %llu ops (%llu insert, %llu delete, %llu update, %llu lookup, %llu range)"
	       " in %llu tx (%llu aborted); %llu records, %u levels at most; shrunk to %llu "
	       "records, %u levels; %llu checks\n", ops->name, bs, (unsigned long long)e.ops_done,
	       (unsigned long long)e.n_insert, (unsigned long long)e.n_delete,
	       (unsigned long long)e.n_update, (unsigned long long)e.n_lookup,
	       (unsigned long long)e.n_range, (unsigned long long)(e.n_commit + e.n_abort),
	       (unsigned long long)e.n_abort, (unsigned long long)e.peak, e.max_levels,
	       (unsigned long long)e.m.count, e.min_levels_after_max,
	       (unsigned long long)e.checks);
	assert_true(e.m.count < e.peak / 4);
	if (nops == n) {        /* scaled-down runs (sanitizers) make smaller trees */
		assert_true(e.max_levels >= want_levels);
		assert_true(e.min_levels_after_max < e.max_levels);
	}
	drain_tree(&e);
	env_fini(&e);
}

static void model_run(const struct pmfuse_btree_ops *ops, uint32_t bs, uint64_t space,
		      const struct mix *grow, uint64_t nops, unsigned want_levels)
{
	model_run_fill(ops, bs, space, grow, nops, want_levels, false);
}

/* The same random mixes (ascending runs among them) with right-edge fill: invariants, contents
 * and block accounting as without. */
static void test_model_edge_fill(void **state)
{
	(void)state;
	model_run_fill(&small_ops, 4096, 1000000, &bulk_mix, 200000, 3, true);
	model_run_fill(&large_ops, 4096, 30000, &grow_mix, 200000, 3, true);
	model_run_fill(&deep_ops, 4096, 16000, &bulk_mix, 100000, 5, true);
}

/* Leaves and their records over the whole tree (a cursor walk): fill = recs / (leaves * max),
 * and the fullest-but-last check: every leaf but the last holds at least `min_pct` of max. */
static double leaf_fill(struct env *e, unsigned min_pct, uint64_t *leaves)
{
	struct pmfuse_btree_cursor cur;
	uint64_t blk = 0, n = 0, recs = 0, in_leaf = 0, max = pmfuse_btree_leaf_max(&e->bt);
	unsigned short_leaves = 0;
	int rc;

	for (rc = pmfuse_btree_first(&cur, &e->bt); !rc; rc = pmfuse_btree_next(&cur)) {
		if (cur.path[0].blk != blk) {
			if (n && in_leaf * 100 < max * min_pct)
				short_leaves++;
			blk = cur.path[0].blk;
			n++;
			in_leaf = 0;
		}
		in_leaf++;
		recs++;
	}
	assert_int_equal(rc, -ENOENT);
	*leaves = n;
	if (min_pct)
		assert_int_equal(short_leaves, 0);
	return n ? (double)recs / ((double)n * (double)max) : 0;
}

/*
 * Right-edge fill: ascending inserts (inode numbers) leave every leaf but the last full and the
 * tree's nodes at >= 90% on the whole, where even splits leave half-full leaves; random
 * inserts into such a tree still split evenly and keep every invariant; deleting from the end
 * empties the edge leaf by leaf (each leaves its parent, the root collapses), and deleting
 * from the front underflows nodes next to an underfull edge sibling (borrow or merge).
 */
static void test_edge_fill(void **state)
{
	const struct pmfuse_btree_ops *shapes[] = { &large_ops, &small_ops, &deep_ops };
	(void)state;

	for (size_t si = 0; si < PMFUSE_ARRAY_SIZE(shapes); si++) {
		double fill[2];
		uint64_t leaves[2], nodes[2] = { 0, 0 }, n = shapes[si] == &small_ops ? 40000 : 4000;

		for (int ef = 0; ef < 2; ef++) {
			struct env e;
			char msg[512];

			env_init(&e, shapes[si], 64 * MIB, 4096, 1024, n + 1000, 0xed9e + si * 2 + ef);
			e.bt.edge_fill = ef;
			for (uint64_t k = 0; k < n;) {
				struct pmfuse_tx *tx = pmfuse_tx_begin(e.vol->txm);

				for (unsigned i = 0; i < 50 && k < n; i++, k++)
					op_insert(&e, tx, k);
				assert_int_equal(pmfuse_tx_commit(tx), 0);
				model_commit(&e.m);
			}
			check_all(&e);
			assert_int_equal(pmfuse_btree_check(&e.bt, count_node, &nodes[ef], msg,
							    sizeof(msg)), 0);
			fill[ef] = leaf_fill(&e, ef ? 100 : 0, &leaves[ef]);
			printf("# %s, %llu ascending inserts, %s: %llu leaves %.1f%% full, %llu "
			       "nodes in all\n", shapes[si]->name, (unsigned long long)n,
			       ef ? "edge fill" : "even splits", (unsigned long long)leaves[ef],
			       fill[ef] * 100, (unsigned long long)nodes[ef]);
			if (ef) {
				assert_true(fill[ef] >= 0.9);
				/* all nodes: at most 10% more than the records need */
				assert_true((double)nodes[ef] * 0.9 <= (double)leaves[ef] /
					    fill[ef] + (double)(nodes[ef] - leaves[ef]) + 1);
			} else {
				assert_true(fill[ef] < 0.75);   /* what edge fill improves on */
			}
			/* random inserts into the packed tree, then deletes from the front (next to
			 * the edge) and from the end (the edge empties), checked as they go */
			for (uint64_t r = 0; r < n / 2; r++) {
				struct pmfuse_tx *tx = pmfuse_tx_begin(e.vol->txm);

				op_insert(&e, tx, n + th_rng_below(&e.rng, 1000));
				op_insert(&e, tx, th_rng_below(&e.rng, n));
				assert_int_equal(pmfuse_tx_commit(tx), 0);
				model_commit(&e.m);
				if (r % 500 == 0)
					check_all(&e);
			}
			check_all(&e);
			for (uint64_t r = 0; e.m.count; r++) {
				struct pmfuse_tx *tx = pmfuse_tx_begin(e.vol->txm);
				uint64_t k = r % 3 ? model_le(&e.m, e.m.space - 1) : model_ge(&e.m, 0);

				op_delete(&e, tx, k);
				if (th_rng_below(&e.rng, 10) == 0) {
					pmfuse_tx_abort(tx);
					model_rollback(&e.m);
				} else {
					assert_int_equal(pmfuse_tx_commit(tx), 0);
					model_commit(&e.m);
				}
				if (r % 97 == 0)
					check_all(&e);
			}
			check_all(&e);
			assert_int_equal(tree_levels(&e.bt), 0);
			assert_int_equal(pmfuse_alloc_free_blocks(e.vol->alloc), e.free0);
			env_fini(&e);
		}
		assert_true(leaves[1] < leaves[0]);
	}
}

static void test_model_small(void **state)
{
	(void)state;
	model_run(&small_ops, 4096, 1000000, &bulk_mix, 200000, 3);
}

static void test_model_large(void **state)
{
	(void)state;
	model_run(&large_ops, 4096, 30000, &grow_mix, 200000, 3);
}

static void test_model_deep(void **state)
{
	(void)state;
	model_run(&deep_ops, 4096, 16000, &bulk_mix, 100000, 5);
}

static void test_model_64k_blocks(void **state)
{
	(void)state;
	/* 4094 records a leaf: few nodes, large memmoves and 64 KiB crcs. */
	model_run(&small_ops, 65536, 40000, &bulk_mix, 30000, 2);
}

/* ---- basic semantics ---------------------------------------------------------------------- */

static void test_basics(void **state)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_tx *tx;
	uint8_t rec[REC_MAX], key[KEY_MAX], out[REC_MAX];
	struct env e;
	(void)state;

	env_init(&e, &large_ops, 16 * MIB, 0, 256, 1000, 1);
	assert_int_equal(pmfuse_btree_leaf_max(&e.bt), (4096 - 32) / 256);
	assert_int_equal(pmfuse_btree_node_max(&e.bt), (4096 - 32) / 24);

	/* Empty tree. */
	make_key(&large_ops, 5, key);
	make_rec(&large_ops, 5, 50, rec);
	assert_int_equal(pmfuse_btree_count(&e.bt), 0);
	assert_int_equal(pmfuse_btree_lookup(&e.bt, key, out), -ENOENT);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_GE), -ENOENT);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_LE), -ENOENT);
	assert_int_equal(pmfuse_btree_first(&cur, &e.bt), -ENOENT);
	assert_int_equal(pmfuse_btree_last(&cur, &e.bt), -ENOENT);
	assert_null(pmfuse_btree_cursor_rec(&cur));
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_btree_delete(tx, &e.bt, key, NULL), -ENOENT);
	assert_int_equal(pmfuse_btree_update(tx, &e.bt, rec), -ENOENT);
	assert_int_equal(pmfuse_btree_destroy(tx, &e.bt), 0);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	check_all(&e);

	/* One record: a root leaf. */
	tx = pmfuse_tx_begin(e.vol->txm);
	op_insert(&e, tx, 5);
	op_insert(&e, tx, 5);                   /* -EEXIST */
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	model_commit(&e.m);
	assert_int_equal(tree_levels(&e.bt), 1);
	assert_int_equal(pmfuse_alloc_free_blocks(e.vol->alloc), e.free0 - 1);
	make_key(&large_ops, 4, key);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_LE), -ENOENT);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_GE), 0);
	assert_int_equal(rec_k(pmfuse_btree_cursor_rec(&cur)), 5);
	assert_int_equal(pmfuse_btree_next(&cur), -ENOENT);
	assert_int_equal(pmfuse_btree_prev(&cur), -ENOENT);
	assert_int_equal(rec_k(pmfuse_btree_cursor_rec(&cur)), 5);
	make_key(&large_ops, 6, key);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_GE), -ENOENT);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_LE), 0);
	assert_int_equal(rec_k(pmfuse_btree_cursor_rec(&cur)), 5);
	check_all(&e);

	/* Enough records for three levels, then update and delete with old contents. */
	tx = pmfuse_tx_begin(e.vol->txm);
	for (uint64_t k = 0; k < 1000; k += 2)
		op_insert(&e, tx, k);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	model_commit(&e.m);
	check_all(&e);
	tx = pmfuse_tx_begin(e.vol->txm);
	for (uint64_t k = 0; k < 1000; k += 3)
		op_update(&e, tx, k);
	for (uint64_t k = 0; k < 1000; k += 5)
		op_delete(&e, tx, k);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	model_commit(&e.m);
	check_all(&e);
	for (uint64_t k = 0; k < 1002; k++) {
		op_lookup(&e, k);
		op_range(&e, k, true, 3);
		op_range(&e, k, false, 3);
	}

	/* Destroy gives every node back. */
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_btree_destroy(tx, &e.bt), 0);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	for (uint64_t k = 0; k < e.m.space; k++)
		model_put(&e.m, k, 0, false);
	check_all(&e);
	assert_int_equal(pmfuse_alloc_free_blocks(e.vol->alloc), e.free0);
	assert_int_equal(tree_levels(&e.bt), 0);
	env_fini(&e);
}

/* A tree whose root descriptor sits in a plain (non-metadata) block: root_blk == NULL. */
static void test_root_outside_metadata(void **state)
{
	struct pmfuse_btree_root *root;
	struct pmfuse_tx *tx;
	uint64_t blk, len;
	struct env e;
	(void)state;

	env_init(&e, &deep_ops, 4 * MIB, 0, 256, 3000, 2);
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_alloc_extent(tx, e.vol->alloc, 0, 1, 1, &blk, &len), 0);
	root = (struct pmfuse_btree_root *)((char *)pmfuse_volume_block(e.vol, blk) + 96);
	assert_int_equal(pmfuse_tx_add_new(tx, root, sizeof(*root)), 0);
	memset(root, 0, sizeof(*root));
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	pmfuse_btree_init(&e.bt, e.vol->pool, e.vol->alloc, &deep_ops, root, NULL,
			  PMFUSE_TREE_TEST + 9, e.vol->block_size);
	e.free0 = pmfuse_alloc_free_blocks(e.vol->alloc);
	pmfuse_txm_set_verify(e.vol->txm, true);
	run_phase(&e, &grow_mix, th_scaled(2500), 0);
	run_phase(&e, &shrink_mix, th_scaled(2500), 0);
	check_all(&e);
	drain_tree(&e);
	pmfuse_txm_set_verify(e.vol->txm, false);
	env_fini(&e);
}

/* ---- aborted transactions change nothing -------------------------------------------------- */

struct blocks {
	uint64_t *blk;
	size_t n, cap;
};

static void collect_block(void *arg, uint64_t blk)
{
	struct blocks *b = arg;

	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 256;
		b->blk = realloc(b->blk, b->cap * sizeof(*b->blk));
		assert_non_null(b->blk);
	}
	b->blk[b->n++] = blk;
}

static void test_abort_restores(void **state)
{
	struct blocks before = { 0 }, after = { 0 };
	struct pmfuse_btree_root root_copy;
	uint8_t *image;
	struct env e;
	char msg[512];
	(void)state;

	/* Small pool: verification copies the whole pool per transaction. */
	env_init(&e, &deep_ops, 4 * MIB, 0, 256, 4000, 3);
	pmfuse_txm_set_verify(e.vol->txm, true);
	size_t size = pmfuse_pool_size(e.vol->pool);
	image = malloc(size);
	assert_non_null(image);

	unsigned rounds = (unsigned)th_scaled(300);
	for (unsigned round = 0; round < rounds; round++) {
		/* Grow for the first third, then churn, then shrink. */
		const struct mix *mx = round < rounds / 3 ? &grow_mix :
			round < 2 * rounds / 3 ? &churn_mix : &shrink_mix;
		struct pmfuse_tx *tx;
		unsigned n = 1 + (unsigned)th_rng_below(&e.rng, 12);

		/* A committed transaction... */
		tx = pmfuse_tx_begin(e.vol->txm);
		for (unsigned i = 0; i < n; i++, e.ops_done++)
			random_op(&e, tx, mx, th_rng_below(&e.rng, e.m.space));
		assert_int_equal(pmfuse_tx_commit(tx), 0);
		model_commit(&e.m);
		note_levels(&e);

		/* ...then one that is aborted: blocks, descriptor and free count as before. */
		before.n = 0;
		assert_int_equal(pmfuse_btree_check(&e.bt, collect_block, &before, msg, sizeof(msg)),
				 0);
		memcpy(image, pmfuse_pool_base(e.vol->pool), size);
		root_copy = *e.bt.root;
		uint64_t free_before = pmfuse_alloc_free_blocks(e.vol->alloc);
		tx = pmfuse_tx_begin(e.vol->txm);
		for (unsigned i = 0; i < n; i++, e.ops_done++) {
			uint64_t k = th_rng_below(&e.rng, e.m.space);
			if (th_rng_below(&e.rng, 2))
				op_insert(&e, tx, k);
			else
				op_delete(&e, tx, model_ge(&e.m, k) != UINT64_MAX ?
					  model_ge(&e.m, k) : k);
		}
		if (round % 16 == 0) {
			struct pmfuse_btree copy = e.bt;
			assert_int_equal(pmfuse_btree_destroy(tx, &copy), 0);
			assert_int_equal(tree_levels(&e.bt), 0);
		}
		pmfuse_tx_abort(tx);
		model_rollback(&e.m);
		e.n_abort++;
		assert_int_equal(pmfuse_alloc_free_blocks(e.vol->alloc), free_before);
		assert_memory_equal(&root_copy, e.bt.root, sizeof(root_copy));
		after.n = 0;
		assert_int_equal(pmfuse_btree_check(&e.bt, collect_block, &after, msg, sizeof(msg)),
				 0);
		assert_int_equal(after.n, before.n);
		assert_memory_equal(after.blk, before.blk, before.n * sizeof(*before.blk));
		for (size_t i = 0; i < before.n; i++) {
			size_t off = before.blk[i] * e.vol->block_size;
			assert_memory_equal(image + off, (uint8_t *)pmfuse_pool_base(e.vol->pool) + off,
					    e.vol->block_size);
		}
		/* The state block (holding the descriptor) is back too. */
		assert_memory_equal(image + e.vol->block_size,
				    (uint8_t *)pmfuse_pool_base(e.vol->pool) + e.vol->block_size,
				    e.vol->block_size);
		if (round % 25 == 0)
			check_all(&e);
	}
	printf("# abort: %u rounds, %llu ops, %u levels at most\n", rounds,
	       (unsigned long long)e.ops_done, e.max_levels);
	if (rounds == 300)
		assert_true(e.max_levels >= 3);
	drain_tree(&e);
	pmfuse_txm_set_verify(e.vol->txm, false);
	free(image);
	free(before.blk);
	free(after.blk);
	env_fini(&e);
}

/* ---- ENOSPC ------------------------------------------------------------------------------- */

static void fill_until_enospc(struct env *e, unsigned batch, unsigned *hits)
{
	uint8_t rec[REC_MAX];

	for (;;) {
		uint64_t free_before = pmfuse_alloc_free_blocks(e->vol->alloc);
		struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
		int rc = 0;

		for (unsigned i = 0; i < batch && !rc; i++) {
			uint64_t k = th_rng_below(&e->rng, e->m.space), v = th_rng_next(&e->rng);
			if (model_has(&e->m, k))
				continue;
			make_rec(e->ops, k, v, rec);
			rc = pmfuse_btree_insert(tx, &e->bt, rec);
			if (!rc)
				model_set(&e->m, k, v, true);
		}
		if (!rc) {
			assert_int_equal(pmfuse_tx_commit(tx), 0);
			model_commit(&e->m);
			continue;
		}
		assert_int_equal(rc, -ENOSPC);
		pmfuse_tx_abort(tx);
		model_rollback(&e->m);
		assert_int_equal(pmfuse_alloc_free_blocks(e->vol->alloc), free_before);
		check_all(e);
		if (++*hits % 4 == 0)
			return;
	}
}

static void test_enospc(void **state)
{
	unsigned hits = 0;
	struct env e;
	(void)state;

	/* 2 MiB: a few hundred data blocks. */
	env_init(&e, &large_ops, 2 * MIB, 0, 0, 1000000, 4);
	pmfuse_txm_set_verify(e.vol->txm, true);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	fill_until_enospc(&e, 4, &hits);
	uint64_t full = e.m.count;
	assert_true(full > 1000);
	assert_true(pmfuse_alloc_free_blocks(e.vol->alloc) < 8);

	/* Still usable: delete a quarter, fill up again, one insert per transaction. */
	for (uint64_t i = 0; i < full / 4; i += 8) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(e.vol->txm);
		for (unsigned j = 0; j < 8; j++) {
			uint64_t k = model_ge(&e.m, th_rng_below(&e.rng, e.m.space));
			op_delete(&e, tx, k != UINT64_MAX ? k : model_le(&e.m, ~0ull));
		}
		assert_int_equal(pmfuse_tx_commit(tx), 0);
		model_commit(&e.m);
	}
	check_all(&e);
	fill_until_enospc(&e, 1, &hits);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	printf("# enospc: %u hits, %llu records when full, %llu now\n", hits,
	       (unsigned long long)full, (unsigned long long)e.m.count);
	drain_tree(&e);
	pmfuse_txm_set_verify(e.vol->txm, false);
	env_fini(&e);
}

/* A transaction that outgrows the log: -ENOSPC from the log, abort, nothing changed. */
static void test_log_full(void **state)
{
	uint8_t rec[REC_MAX];
	struct env e;
	int rc = 0;
	(void)state;

	env_init(&e, &deep_ops, 16 * MIB, 0, 32, 100000, 5);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	struct pmfuse_tx *tx = pmfuse_tx_begin(e.vol->txm);
	for (unsigned i = 0; i < 100000 && !rc; i++) {
		uint64_t k = th_rng_below(&e.rng, e.m.space), v = th_rng_next(&e.rng);
		if (model_has(&e.m, k))
			continue;
		make_rec(&deep_ops, k, v, rec);
		rc = pmfuse_btree_insert(tx, &e.bt, rec);
		if (!rc)
			model_set(&e.m, k, v, true);
	}
	assert_int_equal(rc, -ENOSPC);
	pmfuse_tx_abort(tx);
	model_rollback(&e.m);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	check_all(&e);
	assert_int_equal(pmfuse_alloc_free_blocks(e.vol->alloc), e.free0);
	env_fini(&e);
}

/* ---- corruption --------------------------------------------------------------------------- */

struct saved {
	void *at;
	uint8_t bytes[4096];
	size_t len;
};

static void save(struct saved *s, void *at, size_t len)
{
	assert_true(len <= sizeof(s->bytes));
	s->at = at;
	s->len = len;
	memcpy(s->bytes, at, len);
}

static void restore(struct saved *s)
{
	memcpy(s->at, s->bytes, s->len);
}

/* The full check says -EUCLEAN with a message that has what in it and names node blk (if not 0). */
static void expect_bad_check(struct env *e, uint64_t blk, const char *what)
{
	char msg[512], name[40];

	assert_int_equal(pmfuse_btree_check(&e->bt, NULL, NULL, msg, sizeof(msg)), -EUCLEAN);
	if (!strstr(msg, what))
		fail_msg("check message lacks \"%s\": %s", what, msg);
	snprintf(name, sizeof(name), "node %llu ", (unsigned long long)blk);
	if (blk && !strstr(msg, name))
		fail_msg("check message does not name node %llu: %s", (unsigned long long)blk, msg);
}

/* lookup of k, seeks at k and the full check all say -EUCLEAN. */
static void expect_damage(struct env *e, uint64_t k, uint64_t blk, const char *what)
{
	struct pmfuse_btree_cursor cur;
	uint8_t key[KEY_MAX], rec[REC_MAX];

	make_key(e->ops, k, key);
	assert_int_equal(pmfuse_btree_lookup(&e->bt, key, rec), -EUCLEAN);
	assert_int_equal(pmfuse_btree_seek(&cur, &e->bt, key, PMFUSE_SEEK_GE), -EUCLEAN);
	assert_null(pmfuse_btree_cursor_rec(&cur));
	assert_int_equal(pmfuse_btree_seek(&cur, &e->bt, key, PMFUSE_SEEK_LE), -EUCLEAN);
	expect_bad_check(e, blk, what);
}

static void test_corruption(void **state)
{
	struct pmfuse_btree_cursor first, last;
	struct pmfuse_tx *tx;
	struct saved sv;
	uint8_t rec[REC_MAX], key[KEY_MAX];
	struct env e;
	uint32_t bs;
	(void)state;

	env_init(&e, &deep_ops, 16 * MIB, 0, 256, 2000, 6);
	bs = e.vol->block_size;
	tx = pmfuse_tx_begin(e.vol->txm);
	for (uint64_t k = 0; k < 2000; k += 2)
		op_insert(&e, tx, k);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	model_commit(&e.m);
	check_all(&e);
	assert_true(tree_levels(&e.bt) >= 3);
	assert_int_equal(pmfuse_btree_first(&first, &e.bt), 0);
	assert_int_equal(pmfuse_btree_last(&last, &e.bt), 0);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);

	uint64_t leaf = first.path[0].blk, inner = first.path[1].blk;
	uint64_t top = first.path[first.levels - 1].blk;
	uint8_t *lp = pmfuse_volume_block(e.vol, leaf), *ip = pmfuse_volume_block(e.vol, inner);

	/* (a) a flipped byte in a leaf record: that leaf is unreadable, the others are fine. */
	save(&sv, lp, bs);
	lp[40] ^= 0x10;
	expect_damage(&e, 0, leaf, "checksum");
	op_lookup(&e, 1998);
	restore(&sv);
	check_all(&e);

	/* (b) a flipped byte in an interior node, and in the root node. */
	save(&sv, ip, bs);
	ip[bs - 100] ^= 1;          /* even the zero tail is covered by the crc */
	expect_damage(&e, 0, inner, "checksum");
	restore(&sv);
	save(&sv, pmfuse_volume_block(e.vol, top), bs);
	((uint8_t *)sv.at)[33] ^= 0x80;
	expect_damage(&e, 1000, top, "checksum");
	expect_damage(&e, 1998, top, "checksum");
	restore(&sv);
	check_all(&e);

	/* (c) resealed damage the crc cannot see. */
	struct pmfuse_blk_hdr *lh = (void *)lp, *ih = (void *)ip;
	save(&sv, lp, bs);
	pmfuse_set_le64(&lh->owner, PMFUSE_TREE_TEST + 77);        /* another tree's node */
	pmfuse_blk_seal(lh, bs);
	expect_damage(&e, 0, leaf, "owner");
	restore(&sv);
	pmfuse_set_le16(&lh->level, 1);                            /* wrong level */
	pmfuse_blk_seal(lh, bs);
	expect_damage(&e, 0, leaf, "level");
	restore(&sv);
	pmfuse_set_le64(&lh->blkno, leaf + 1);                     /* misplaced block */
	pmfuse_blk_seal(lh, bs);
	expect_damage(&e, 0, leaf, "block");
	restore(&sv);
	pmfuse_set_le16(&lh->nrecs, 1);                            /* below minimum fill */
	pmfuse_blk_seal(lh, bs);
	expect_damage(&e, 0, leaf, "slots");
	restore(&sv);
	pmfuse_set_le16(&lh->nrecs, 60000);                        /* beyond capacity */
	pmfuse_blk_seal(lh, bs);
	expect_damage(&e, 0, leaf, "slots");
	restore(&sv);
	/* Records 1 and 2 swapped: readers may miss keys, the check must say why. */
	memcpy(rec, lp + 32 + 512, 512);
	memmove(lp + 32 + 512, lp + 32 + 1024, 512);
	memcpy(lp + 32 + 1024, rec, 512);
	pmfuse_blk_seal(lh, bs);
	expect_bad_check(&e, leaf, "not above");
	restore(&sv);
	/* A malformed record (check_rec). */
	lp[32 + 300] ^= 4;
	pmfuse_blk_seal(lh, bs);
	expect_bad_check(&e, leaf, "malformed");
	restore(&sv);
	/* Stale bytes past the last record. */
	lp[bs - 1] = 1;
	pmfuse_blk_seal(lh, bs);
	expect_bad_check(&e, leaf, "not zero");
	restore(&sv);
	/* An interior key that is no longer its child's first key (still ordered). */
	save(&sv, ip, bs);
	{
		uint64_t k1;          /* slot 1's key, even: one less keeps the order */
		memcpy(&k1, ip + 32 + 256, 8);
		k1 -= 1;
		memcpy(ip + 32 + 256, &k1, 8);
	}
	pmfuse_blk_seal(ih, bs);
	expect_bad_check(&e, 0, "parent's key");
	restore(&sv);
	check_all(&e);

	/* (d) the root descriptor. */
	struct pmfuse_btree_root saved_root = *e.bt.root;
	pmfuse_set_le16(&e.bt.root->levels, PMFUSE_BTREE_MAX_LEVELS + 1);
	expect_damage(&e, 0, 0, "levels");
	*e.bt.root = saved_root;
	pmfuse_set_le16(&e.bt.root->levels, tree_levels(&e.bt) - 1);
	expect_damage(&e, 0, top, "level");
	*e.bt.root = saved_root;
	pmfuse_set_le64(&e.bt.root->root, 1);                      /* the state block */
	expect_damage(&e, 0, 1, "magic");
	*e.bt.root = saved_root;
	pmfuse_set_le64(&e.bt.root->root, 1ull << 40);             /* outside the pool */
	expect_damage(&e, 0, 1ull << 40, "outside");
	*e.bt.root = saved_root;
	pmfuse_set_le16(&e.bt.root->levels, 0);                    /* root without levels */
	expect_bad_check(&e, 0, "levels");
	*e.bt.root = saved_root;
	pmfuse_set_le64(&e.bt.root->nrecs, 7);                     /* wrong count */
	expect_bad_check(&e, 0, "records");
	*e.bt.root = saved_root;
	check_all(&e);

	/* (e) modifications on a damaged tree fail cleanly; the aborted tx changed nothing. */
	save(&sv, lp, bs);
	lp[100] ^= 2;
	tx = pmfuse_tx_begin(e.vol->txm);
	make_rec(&deep_ops, 1, 1, rec);
	assert_int_equal(pmfuse_btree_insert(tx, &e.bt, rec), -EUCLEAN);
	make_key(&deep_ops, 0, key);
	assert_int_equal(pmfuse_btree_delete(tx, &e.bt, key, NULL), -EUCLEAN);
	make_rec(&deep_ops, 0, 1, rec);
	assert_int_equal(pmfuse_btree_update(tx, &e.bt, rec), -EUCLEAN);
	assert_int_equal(pmfuse_btree_destroy(tx, &e.bt), -EUCLEAN);
	pmfuse_tx_abort(tx);

	/* (f) a cursor walking into the damaged leaf stops with -EUCLEAN and stays put. */
	struct pmfuse_btree_cursor cur;
	make_key(&deep_ops, 1990, key);
	assert_int_equal(pmfuse_btree_seek(&cur, &e.bt, key, PMFUSE_SEEK_LE), 0);
	int rc = 0;
	while (!rc)
		rc = pmfuse_btree_prev(&cur);
	assert_int_equal(rc, -EUCLEAN);
	assert_non_null(pmfuse_btree_cursor_rec(&cur));
	assert_true(cur.path[0].blk != leaf);
	restore(&sv);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	check_all(&e);
	drain_tree(&e);
	env_fini(&e);
}

static int count_any(void *arg, const void *rec)
{
	(void)rec;
	++*(uint64_t *)arg;
	return 0;
}

/* Records the salvage reads and drops. */
static uint64_t salvage_dropped(struct env *e)
{
	uint64_t n = 0, dropped;
	struct pmfuse_btree_salvage_ops so = { .rec = count_any, .arg = &n };

	assert_int_equal(pmfuse_btree_salvage(&e->bt, &so, &dropped), 0);
	return dropped;
}

/* One byte of the pool changed through the pool's API (memcpy: flushed and drained). */
static void pool_poke(struct env *e, uint8_t *at, uint8_t v)
{
	pmfuse_pool_memcpy(e->vol->pool, at, &v, 1, 0);
}

/*
 * fsck's memo (pool.h): a check notes each node it verified, and the checks, reads and salvages
 * after it skip what it noted. A node changed since must be verified again: for each way the
 * code changes a node (a transaction; a pool memcpy, memset or write_data; a store made durable
 * by flush or persist) the next check sees the damage. A store behind the pool's back (which
 * nothing in pmfuse makes) stays unseen until the memo forgets the block: the memo is used.
 */
static void test_memo(void **state)
{
	struct pmfuse_btree_cursor first;
	struct pmfuse_pool *pool;
	struct pmfuse_tx *tx;
	struct saved sv;
	struct env e;
	uint32_t bs;
	uint64_t leaf;
	uint8_t *lp;
	struct pmfuse_blk_hdr *lh;
	(void)state;

	env_init(&e, &deep_ops, 16 * MIB, 0, 256, 2000, 8);
	bs = e.vol->block_size;
	pool = e.vol->pool;
	assert_int_equal(pmfuse_pool_memo_enable(pool, bs), 0);
	tx = pmfuse_tx_begin(e.vol->txm);
	for (uint64_t k = 0; k < 2000; k += 2)
		op_insert(&e, tx, k);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	model_commit(&e.m);
	check_all(&e);
	assert_int_equal(pmfuse_btree_first(&first, &e.bt), 0);
	leaf = first.path[0].blk;
	lp = pmfuse_volume_block(e.vol, leaf);
	lh = (void *)lp;
	assert_true(pmfuse_pool_memo_crc(pool, leaf));
	assert_true(pmfuse_pool_memo_tag(pool, leaf) != 0);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);

	/* behind the pool's back: a malformed record, resealed, is not seen until forgotten */
	save(&sv, lp, bs);
	lp[32 + 300] ^= 4;
	pmfuse_blk_seal(lh, bs);
	assert_int_equal(pmfuse_btree_check(&e.bt, NULL, NULL, NULL, 0), 0);
	assert_int_equal(salvage_dropped(&e), 0);
	pmfuse_pool_memo_forget(pool, leaf * bs + 300, 1);
	expect_bad_check(&e, leaf, "malformed");
	assert_int_equal(salvage_dropped(&e), 1);
	pmfuse_pool_memcpy(pool, sv.at, sv.bytes, sv.len, 0);
	check_all(&e);

	/* a transaction: the same damage, declared and resealed at commit */
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_tx_add_meta(tx, lh, lp + 32 + 300, 1), 0);
	lp[32 + 300] ^= 4;
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	expect_bad_check(&e, leaf, "malformed");
	assert_int_equal(salvage_dropped(&e), 1);
	tx = pmfuse_tx_begin(e.vol->txm);
	assert_int_equal(pmfuse_tx_add_meta(tx, lh, lp + 32 + 300, 1), 0);
	lp[32 + 300] ^= 4;
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	check_all(&e);

	/* pool memcpy, memset, write_data: bytes changed, crc not resealed */
	pool_poke(&e, lp + 40, lp[40] ^ 0x10);
	expect_damage(&e, 0, leaf, "checksum");
	pool_poke(&e, lp + 40, lp[40] ^ 0x10);
	check_all(&e);
	pmfuse_pool_memset(pool, lp + bs - 1, 1, 1, 0);
	expect_bad_check(&e, leaf, "checksum");
	pmfuse_pool_memset(pool, lp + bs - 1, 0, 1, 0);
	check_all(&e);
	{
		uint8_t b = lp[41] ^ 1;

		assert_int_equal(pmfuse_pool_write_data(pool, leaf * bs + 41, &b, 1, 0), 0);
		expect_damage(&e, 0, leaf, "checksum");
		b ^= 1;
		assert_int_equal(pmfuse_pool_write_data(pool, leaf * bs + 41, &b, 1, 0), 0);
		check_all(&e);
	}

	/* stores made durable by flush + drain, or by persist */
	lp[42] ^= 1;
	pmfuse_pool_flush(pool, lp + 42, 1);
	pmfuse_pool_drain(pool);
	expect_damage(&e, 0, leaf, "checksum");
	lp[42] ^= 1;
	pmfuse_pool_persist(pool, lp + 42, 1);
	check_all(&e);
	lp[43] ^= 1;
	pmfuse_pool_persist(pool, lp + 43, 1);
	expect_damage(&e, 0, leaf, "checksum");
	lp[43] ^= 1;
	pmfuse_pool_persist(pool, lp + 43, 1);
	check_all(&e);

	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	drain_tree(&e);
	env_fini(&e);
}

static bool rc_expected(int rc)
{
	return rc == 0 || rc == -ENOENT || rc == -EEXIST || rc == -EUCLEAN;
}

/*
 * Random damage: flip a few bytes of a random node, reseal its crc half of the time so that the
 * damage gets past the checksum, then read, check and modify (in a transaction that is aborted).
 * Only sane return codes, no crash (the sanitizer build checks every access); after the node is
 * restored the tree checks clean again.
 */
static void test_fuzz_damage(void **state)
{
	struct blocks nodes = { 0 };
	struct pmfuse_btree_cursor cur;
	uint8_t rec[REC_MAX], key[KEY_MAX];
	struct saved sv;
	struct env e;
	char msg[512];
	unsigned rounds = (unsigned)th_scaled(400), bad = 0;
	(void)state;

	env_init(&e, &deep_ops, 16 * MIB, 0, 256, 3000, 7);
	run_phase(&e, &bulk_mix, 3000, 0);
	check_all(&e);
	assert_int_equal(pmfuse_btree_check(&e.bt, collect_block, &nodes, msg, sizeof(msg)), 0);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	for (unsigned round = 0; round < rounds; round++) {
		uint64_t blk = nodes.blk[th_rng_below(&e.rng, nodes.n)];
		uint8_t *p = pmfuse_volume_block(e.vol, blk);
		unsigned flips = 1 + (unsigned)th_rng_below(&e.rng, 3);
		int rc;

		save(&sv, p, e.vol->block_size);
		for (unsigned i = 0; i < flips; i++) {
			/* Half of the flips hit the header or the first slots. */
			size_t off = th_rng_below(&e.rng, 2) ? th_rng_below(&e.rng, 64) :
				th_rng_below(&e.rng, e.vol->block_size);
			p[off] ^= (uint8_t)(1u << th_rng_below(&e.rng, 8));
		}
		if (th_rng_below(&e.rng, 2))
			pmfuse_blk_seal((struct pmfuse_blk_hdr *)p, e.vol->block_size);

		bad += pmfuse_btree_check(&e.bt, NULL, NULL, msg, sizeof(msg)) != 0;
		for (unsigned i = 0; i < 20; i++) {
			uint64_t k = th_rng_below(&e.rng, e.m.space);
			make_key(&deep_ops, k, key);
			assert_true(rc_expected(pmfuse_btree_lookup(&e.bt, key, rec)));
			rc = pmfuse_btree_seek(&cur, &e.bt, key, i & 1 ? PMFUSE_SEEK_GE : PMFUSE_SEEK_LE);
			assert_true(rc_expected(rc));
			for (unsigned j = 0; !rc && j < 30; j++)
				rc = i & 2 ? pmfuse_btree_next(&cur) : pmfuse_btree_prev(&cur);
			assert_true(rc_expected(rc));
		}
		struct pmfuse_tx *tx = pmfuse_tx_begin(e.vol->txm);
		rc = 0;
		for (unsigned i = 0; i < 10 && rc_expected(rc) && rc != -EUCLEAN; i++) {
			uint64_t k = th_rng_below(&e.rng, e.m.space);
			make_rec(&deep_ops, k, i, rec);
			make_key(&deep_ops, k, key);
			rc = i & 1 ? pmfuse_btree_insert(tx, &e.bt, rec) :
				pmfuse_btree_delete(tx, &e.bt, key, NULL);
			assert_true(rc_expected(rc));
		}
		pmfuse_tx_abort(tx);
		restore(&sv);
		assert_int_equal(pmfuse_btree_check(&e.bt, NULL, NULL, msg, sizeof(msg)), 0);
	}
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	printf("# fuzz: %u rounds over %zu nodes, check flagged %u\n", rounds, nodes.n, bad);
	assert_true(bad > rounds / 2);
	check_all(&e);
	free(nodes.blk);
	env_fini(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basics),
		cmocka_unit_test(test_model_small),
		cmocka_unit_test(test_model_large),
		cmocka_unit_test(test_model_deep),
		cmocka_unit_test(test_model_64k_blocks),
		cmocka_unit_test(test_edge_fill),
		cmocka_unit_test(test_model_edge_fill),
		cmocka_unit_test(test_root_outside_metadata),
		cmocka_unit_test(test_abort_restores),
		cmocka_unit_test(test_enospc),
		cmocka_unit_test(test_log_full),
		cmocka_unit_test(test_corruption),
		cmocka_unit_test(test_memo),
		cmocka_unit_test(test_fuzz_damage),
	};
	th_seed();
	return cmocka_run_group_tests_name("btree", tests, NULL, NULL);
}
