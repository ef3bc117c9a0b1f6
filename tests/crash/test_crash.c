/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Crash test of the metadata stack: multi-tree transactions (two b+trees of different shapes plus
 * the allocator) on fake media, stopped at every persistence barrier.
 *
 * At each barrier the test builds crash images (none of the unpersisted 8-byte units kept, all
 * of them, and random subsets), opens each as a volume (which runs log recovery and rebuilds the
 * allocator index) and checks that:
 *   - both trees pass the full structural check;
 *   - their contents are, together, the model state before the transaction in flight or after it
 *     (never a mix, never one tree before and the other after);
 *   - block accounting is exact: every tree node is allocated, no block is leaked (free blocks =
 *     data blocks - nodes of both trees).
 * It prints how many crash states it checked. PMFUSE_SEED replays a run.
 *
 * The lanes test does the same on a pool whose log has two lanes, with rounds of two
 * transactions whose steps are interleaved from one thread in a seeded random order
 * (pmfuse_tx_try_begin): one changes tree 0 any way (inserts, deletes and updates, so it
 * allocates and frees nodes and changes its root in the state block), the other only updates
 * records of tree 1 (its leaves alone); each commits or aborts, in either order. At every
 * barrier each tree must be, independently, as before its transaction or after it (and after it
 * once its commit returned), with the block accounting exact. Rounds of one transaction on both
 * trees (as above) come in between.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta/alloc.h"
#include "meta/btree.h"
#include "tx/tx.h"
#include "util/util.h"

#define POOL_SIZE (4u << 20)
#define NTREES 2
#define ROOT_SLOT 3           /* state roots 3 and 4 */
#define KEYSPACE 700

/* Tree 0: 16-byte records (many per leaf). Tree 1: 512-byte records (7 per leaf: deep, busy). */
static const uint16_t rec_len[NTREES] = { 16, 512 };

static void key_from_rec(void *key, const void *rec) { memcpy(key, rec, 8); }

static int cmp_key(const void *a, const void *b)
{
	uint64_t x, y;
	memcpy(&x, a, 8);
	memcpy(&y, b, 8);
	return x < y ? -1 : x > y;
}

static const struct pmfuse_btree_ops ops[NTREES] = {
	{ .name = "crash16", .key_len = 8, .rec_len = 16, .key_from_rec = key_from_rec,
	  .cmp_key = cmp_key },
	{ .name = "crash512", .key_len = 8, .rec_len = 512, .key_from_rec = key_from_rec,
	  .cmp_key = cmp_key },
};

/* The model: per tree, value version of each key (0 = absent). Records are derived from it. */
struct model { uint32_t v[NTREES][KEYSPACE]; };

static void make_rec(unsigned t, uint64_t key, uint32_t version, uint8_t *rec)
{
	memset(rec, 0, rec_len[t]);
	memcpy(rec, &key, 8);
	for (unsigned i = 8; i < rec_len[t]; i += 4) {
		uint32_t w = version * 2654435761u + (uint32_t)key + i;
		memcpy(rec + i, &w, 4);
	}
}

static void tree_handle(struct pmfuse_volume *vol, unsigned t, struct pmfuse_btree *bt)
{
	pmfuse_btree_init(bt, vol->pool, vol->alloc, &ops[t], &vol->state->roots[ROOT_SLOT + t],
			  &vol->state->hdr, PMFUSE_TREE_TEST + t, vol->block_size);
}

static void count_node(void *arg, uint64_t blk) { (*(uint64_t *)arg)++; }

/* Checks tree t of a volume against a model, adding its nodes to *nodes; false (with a
 * message) when it does not match. */
static bool tree_matches(struct pmfuse_volume *vol, unsigned t, const struct model *m,
			 uint64_t *nodes, char *why, size_t whylen)
{
	uint8_t rec[512];
	{
		struct pmfuse_btree bt;
		struct pmfuse_btree_cursor cur;
		char msg[256] = "";
		tree_handle(vol, t, &bt);
		if (pmfuse_btree_check(&bt, count_node, nodes, msg, sizeof(msg))) {
			snprintf(why, whylen, "tree %u: %s", t, msg);
			return false;
		}
		uint64_t expect = 0;
		for (unsigned k = 0; k < KEYSPACE; k++)
			expect += m->v[t][k] != 0;
		if (pmfuse_btree_count(&bt) != expect) {
			snprintf(why, whylen, "tree %u holds %llu records, model %llu", t,
				 (unsigned long long)pmfuse_btree_count(&bt), (unsigned long long)expect);
			return false;
		}
		int rc = pmfuse_btree_first(&cur, &bt);
		for (unsigned k = 0; k < KEYSPACE; k++) {
			if (!m->v[t][k])
				continue;
			if (rc) {
				snprintf(why, whylen, "tree %u ends before key %u", t, k);
				return false;
			}
			make_rec(t, k, m->v[t][k], rec);
			if (memcmp(pmfuse_btree_cursor_rec(&cur), rec, rec_len[t])) {
				snprintf(why, whylen, "tree %u: record for key %u differs", t, k);
				return false;
			}
			rc = pmfuse_btree_next(&cur);
		}
	}
	return true;
}

/* Checks every tree of a volume against one model. */
static bool volume_matches(struct pmfuse_volume *vol, const struct model *m, uint64_t *nodes,
			   char *why, size_t whylen)
{
	*nodes = 0;
	for (unsigned t = 0; t < NTREES; t++)
		if (!tree_matches(vol, t, m, nodes, why, whylen))
			return false;
	return true;
}

struct crash {
	struct th_rng rng;
	uint8_t *img;
	struct pmfuse_pool *scratch;  /* where crash images are opened */
	const struct model *before, *after;
	bool independent;            /* each tree by itself (one transaction per tree) */
	bool done[NTREES];           /* independent: the tree's transaction has ended */
	uint64_t trees_before, trees_after;
	uint64_t data_blocks;        /* blocks the allocator manages, free at mkfs */
	uint64_t barriers, states, as_before, as_after;
	unsigned random_images;
};

static bool keep_random(void *arg, size_t unit)
{
	return th_rng_below(&((struct crash *)arg)->rng, 2);
}

static bool keep_all(void *arg, size_t unit) { return true; }

static void check_crash_image(struct crash *c, const char *variant)
{
	struct pmfuse_pool *pool;
	struct pmfuse_volume *vol;
	char msg[256] = "", why_b[256] = "", why_a[256] = "";
	uint64_t nodes;

	pool = c->scratch;
	pmfuse_pool_fake_reset(pool, c->img);
	int rc = pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg));
	if (rc) {
		fprintf(stderr, "barrier %llu (%s): volume does not open: %d %s\n",
			(unsigned long long)c->barriers, variant, rc, msg);
		fail();
	}
	if (c->independent) {
		nodes = 0;
		for (unsigned t = 0; t < NTREES; t++) {
			uint64_t nb = 0, na = 0;
			bool b = !c->done[t] &&
				 tree_matches(vol, t, c->before, &nb, why_b, sizeof(why_b));
			bool a = !b && tree_matches(vol, t, c->after, &na, why_a, sizeof(why_a));
			if (!a && !b) {
				fprintf(stderr, "barrier %llu (%s): tree %u is neither before (%s) "
					"nor after (%s)%s\n", (unsigned long long)c->barriers,
					variant, t, c->done[t] ? "ended" : why_b, why_a,
					c->done[t] ? ", though its transaction ended" : "");
				fail();
			}
			nodes += b ? nb : na;
			c->trees_before += b;
			c->trees_after += a;
		}
		goto counted;
	}
	bool b = volume_matches(vol, c->before, &nodes, why_b, sizeof(why_b));
	bool a = !b && volume_matches(vol, c->after, &nodes, why_a, sizeof(why_a));
	if (!a && !b) {
		fprintf(stderr, "barrier %llu (%s): neither before (%s) nor after (%s)\n",
			(unsigned long long)c->barriers, variant, why_b, why_a);
		fail();
	}
	c->as_before += b;
	c->as_after += a;
counted:;
	uint64_t free_blocks = pmfuse_alloc_free_blocks(vol->alloc);
	if (free_blocks + nodes != c->data_blocks) {
		fprintf(stderr, "barrier %llu (%s): %llu free + %llu tree nodes != %llu data blocks\n",
			(unsigned long long)c->barriers, variant, (unsigned long long)free_blocks,
			(unsigned long long)nodes, (unsigned long long)c->data_blocks);
		fail();
	}
	c->states++;
	pmfuse_volume_close(vol);
}

static void crash_hook(void *arg, struct pmfuse_pool *pool, uint64_t n)
{
	struct crash *c = arg;
	c->barriers++;
	pmfuse_pool_fake_crash_image(pool, c->img, NULL, NULL);
	check_crash_image(c, "none kept");
	if (pmfuse_pool_fake_crash_image(pool, c->img, keep_all, NULL) == 0)
		return; /* nothing in flight: every image is the same */
	check_crash_image(c, "all kept");
	for (unsigned i = 0; i < c->random_images; i++) {
		pmfuse_pool_fake_crash_image(pool, c->img, keep_random, c);
		check_crash_image(c, "random subset");
	}
}

/* One random multi-tree transaction: applies to the volume and to the model `after`. */
static int run_tx(struct pmfuse_volume *vol, struct th_rng *r, struct model *after, bool *commit)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(vol->txm);
	unsigned nops = 1 + (unsigned)th_rng_below(r, 6);
	uint8_t rec[512];
	int rc = 0;

	*commit = th_rng_below(r, 5) != 0;
	for (unsigned i = 0; i < nops && !rc; i++) {
		unsigned t = (unsigned)th_rng_below(r, NTREES);
		uint64_t k = th_rng_below(r, KEYSPACE);
		struct pmfuse_btree bt;
		tree_handle(vol, t, &bt);
		if (!after->v[t][k]) {
			uint32_t v = 1 + (uint32_t)th_rng_below(r, 1000000);
			make_rec(t, k, v, rec);
			rc = pmfuse_btree_insert(tx, &bt, rec);
			after->v[t][k] = v;
		} else if (th_rng_below(r, 3) == 0) {
			uint32_t v = after->v[t][k] + 1;
			make_rec(t, k, v, rec);
			rc = pmfuse_btree_update(tx, &bt, rec);
			after->v[t][k] = v;
		} else {
			rc = pmfuse_btree_delete(tx, &bt, &k, NULL);
			after->v[t][k] = 0;
		}
	}
	if (rc || !*commit) {
		pmfuse_tx_abort(tx);
		*commit = false;
		return rc;
	}
	return pmfuse_tx_commit(tx);
}

/* Runs one random transaction with the crash checks against before (the model now) and after
 * (the model if it commits); returns whether it committed, and then before is after. */
static bool one_tx(struct pmfuse_volume *vol, struct th_rng *r, struct crash *c,
		   struct model *before, struct model *after)
{
	bool commit;

	*after = *before;
	c->before = before;
	c->after = after;
	assert_int_equal(run_tx(vol, r, after, &commit), 0);
	if (commit)
		*before = *after;
	return commit;
}

static void test_crash_metadata(void **state)
{
	struct crash c = { .random_images = 3 };
	th_rng_init(&c.rng, th_seed() ^ 0xc8a54);
	struct th_rng wl;
	th_rng_init(&wl, th_seed());
	struct pmfuse_volume *vol = th_fake_volume(POOL_SIZE, 0);
	struct model *before = calloc(1, sizeof(*before)), *after = calloc(1, sizeof(*after));
	struct pmfuse_pool_fake_hook hook = { crash_hook, &c };

	pmfuse_log_set_target(PMFUSE_LOG_QUIET); /* recovery messages, thousands of them */
	c.img = malloc(POOL_SIZE);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &c.scratch), 0);
	c.data_blocks = pmfuse_alloc_free_blocks(vol->alloc);

	/* Warm up without the hook so that the trees have several levels before the sweep. */
	uint64_t warm = th_scaled(300), n = th_scaled(500);
	for (uint64_t i = 0; i < warm; i++) {
		bool commit;
		*after = *before;
		assert_int_equal(run_tx(vol, &wl, after, &commit), 0);
		if (commit)
			*before = *after;
	}

	pmfuse_pool_fake_set_hook(vol->pool, &hook);
	uint64_t commits = 0;
	for (uint64_t i = 0; i < n; i++)
		commits += one_tx(vol, &wl, &c, before, after);
	pmfuse_pool_fake_set_hook(vol->pool, NULL);

	/* the live volume itself matches the model, and closes and reopens cleanly */
	char why[256];
	uint64_t nodes;
	assert_true(volume_matches(vol, before, &nodes, why, sizeof(why)));
	printf("# crash test: %llu transactions (%llu committed), %llu barriers, %llu crash states "
	       "checked (%llu recovered as before, %llu as after), trees use %llu nodes\n",
	       (unsigned long long)n, (unsigned long long)commits,
	       (unsigned long long)c.barriers, (unsigned long long)c.states,
	       (unsigned long long)c.as_before, (unsigned long long)c.as_after,
	       (unsigned long long)nodes);
	assert_true(c.as_after > 0 && c.as_before > 0);
	if (!getenv("PMFUSE_TEST_SCALE"))
		assert_true(c.states >= 1000);
	free(before);
	free(after);
	free(c.img);
	pmfuse_pool_close(c.scratch);
	th_volume_destroy(vol);
}

/* ---- two transactions at once, in two lanes ------------------------------------------------ */

/* One step of a transaction of a pair: an op on tree t planned against the model `after`. */
struct pair_op {
	uint64_t key;
	uint32_t version;   /* 0: delete */
	bool insert;
};

struct pair_tx {
	unsigned tree;
	bool commit;
	unsigned nops, next;       /* ops planned, ops done */
	struct pair_op ops[8];
	struct pmfuse_tx *tx;
};

/* Plans the ops of p on its tree, applying them to *after (which starts as the state before). */
static void plan_pair_tx(struct th_rng *r, struct pair_tx *p, bool update_only,
			 struct model *after)
{
	unsigned t = p->tree;
	p->nops = 1 + (unsigned)th_rng_below(r, 6);
	p->commit = th_rng_below(r, 4) != 0;
	p->next = 0;
	for (unsigned i = 0; i < p->nops; i++) {
		struct pair_op *o = &p->ops[i];
		uint64_t k = th_rng_below(r, KEYSPACE);
		if (update_only) {   /* the next key present from a random start */
			unsigned tries = 0;
			while (!after->v[t][k] && tries++ < KEYSPACE)
				k = (k + 1) % KEYSPACE;
			assert_true(after->v[t][k] != 0);
		}
		o->key = k;
		o->insert = !after->v[t][k];
		if (o->insert || update_only || th_rng_below(r, 3) == 0)
			o->version = (o->insert ? 0 : after->v[t][k]) + 1 +
				     (uint32_t)th_rng_below(r, 1000);
		else
			o->version = 0;
		after->v[t][k] = o->version;
	}
}

static int pair_step(struct pmfuse_volume *vol, struct pair_tx *p)
{
	const struct pair_op *o = &p->ops[p->next++];
	struct pmfuse_btree bt;
	uint8_t rec[512];

	tree_handle(vol, p->tree, &bt);
	if (!o->version)
		return pmfuse_btree_delete(p->tx, &bt, &o->key, NULL);
	make_rec(p->tree, o->key, o->version, rec);
	return o->insert ? pmfuse_btree_insert(p->tx, &bt, rec) : pmfuse_btree_update(p->tx, &bt, rec);
}

/*
 * A round of two transactions, one per tree, whose begin, steps and end interleave at random.
 * c->before/after hold both trees' states before and after (after = before for a tree whose
 * transaction aborts); c->done[t] is set once tree t's transaction has ended.
 */
static void run_pair(struct pmfuse_volume *vol, struct th_rng *r, struct crash *c,
		     struct model *before, struct model *after)
{
	struct pair_tx p[NTREES];
	unsigned full = (unsigned)th_rng_below(r, NTREES);   /* the one that may allocate */

	*after = *before;
	for (unsigned t = 0; t < NTREES; t++) {
		p[t].tree = t;
		p[t].tx = NULL;
		plan_pair_tx(r, &p[t], t != full, after);
		if (!p[t].commit)
			memcpy(after->v[t], before->v[t], sizeof(after->v[t]));
		c->done[t] = false;
	}
	c->before = before;
	c->after = after;
	c->independent = true;
	/* events per transaction: begin, its steps, end; merged in a random order */
	unsigned left[NTREES], total = 0;
	for (unsigned t = 0; t < NTREES; t++)
		total += left[t] = p[t].nops + 2;
	while (total) {
		unsigned t = (unsigned)th_rng_below(r, NTREES);
		if (!left[t])
			continue;
		left[t]--;
		total--;
		if (!p[t].tx && !c->done[t]) {
			p[t].tx = pmfuse_tx_try_begin(vol->txm);
			assert_non_null(p[t].tx);   /* two lanes, two transactions */
		} else if (p[t].next < p[t].nops) {
			assert_int_equal(pair_step(vol, &p[t]), 0);
		} else {
			if (p[t].commit)
				assert_int_equal(pmfuse_tx_commit(p[t].tx), 0);
			else
				pmfuse_tx_abort(p[t].tx);
			p[t].tx = NULL;
			c->done[t] = true;
		}
	}
	c->independent = false;
	*before = *after;
}

static void test_crash_lanes(void **state)
{
	struct crash c = { .random_images = 2 };
	th_rng_init(&c.rng, th_seed() ^ 0x1a4e5);
	struct th_rng wl;
	th_rng_init(&wl, th_seed() ^ 0x2);
	struct pmfuse_mkfs_opts opts = { .log_lanes = 2 };
	struct pmfuse_volume *vol = th_fake_volume_opts(POOL_SIZE, &opts);
	struct model *before = calloc(1, sizeof(*before)), *after = calloc(1, sizeof(*after));
	struct pmfuse_pool_fake_hook hook = { crash_hook, &c };

	assert_int_equal(pmfuse_txm_lanes(vol->txm), 2);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	c.img = malloc(POOL_SIZE);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &c.scratch), 0);
	c.data_blocks = pmfuse_alloc_free_blocks(vol->alloc);

	/* warm up: trees of a few levels, with records for the updates to find */
	for (uint64_t i = 0; i < th_scaled(300); i++) {
		bool commit;
		*after = *before;
		assert_int_equal(run_tx(vol, &wl, after, &commit), 0);
		if (commit)
			*before = *after;
	}

	pmfuse_pool_fake_set_hook(vol->pool, &hook);
	uint64_t n = th_scaled(200), pairs = 0;
	for (uint64_t i = 0; i < n; i++) {
		if (th_rng_below(&wl, 4) == 0) {   /* one transaction on both trees */
			one_tx(vol, &wl, &c, before, after);
		} else {
			run_pair(vol, &wl, &c, before, after);
			pairs++;
		}
	}
	pmfuse_pool_fake_set_hook(vol->pool, NULL);

	char why[256];
	uint64_t nodes;
	assert_true(volume_matches(vol, before, &nodes, why, sizeof(why)));
	printf("# crash lanes: %llu rounds (%llu of two interleaved transactions), %llu barriers, "
	       "%llu crash states checked; trees recovered %llu times as before their "
	       "transaction, %llu as after\n", (unsigned long long)n, (unsigned long long)pairs,
	       (unsigned long long)c.barriers, (unsigned long long)c.states,
	       (unsigned long long)c.trees_before, (unsigned long long)c.trees_after);
	assert_true(c.trees_before > 0 && c.trees_after > 0);
	if (!getenv("PMFUSE_TEST_SCALE"))
		assert_true(c.states >= 1000);
	free(before);
	free(after);
	free(c.img);
	pmfuse_pool_close(c.scratch);
	th_volume_destroy(vol);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crash_metadata),
		cmocka_unit_test(test_crash_lanes),
	};
	th_seed();
	return cmocka_run_group_tests_name("crash", tests, NULL, NULL);
}
