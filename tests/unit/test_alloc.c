/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Block allocator tests.
 *
 * The main test runs seeded random transactions of allocations (random goal, minlen, maxlen) and
 * frees (of random parts of live extents, some of them deliberately wrong), committing most and
 * aborting some, against a model: two byte maps (the pool's bitmap, and the DRAM view in which a
 * block freed by the running transaction is still taken) and an implementation of the documented
 * placement policy. Every allocation must return exactly the extent the model picks, and every
 * -ENOSPC must be one the model agrees with. Periodically the pool's bitmap, the DRAM index and
 * a rebuilt index (close and open) are compared with the model.
 *
 * "Bare" environments put a transaction log and the bitmap on a small fake pool and let the
 * filesystem be larger than the pool (the allocator only touches bitmap blocks), which gives
 * several bitmap blocks and several summary groups cheaply. "Volume" environments come from
 * th_fake_volume (mkfs + volume open).
 *
 * PMFUSE_SEED replays a run; PMFUSE_TEST_SCALE scales the operation counts; PMFUSE_TEST_FILTER
 * runs only the tests whose name matches the pattern.
 */
#include "harness.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "meta/alloc.h"
#include "meta/volume.h"
#include "pmfuse/format.h"
#include "pool/pool.h"
#include "tx/tx.h"
#include "util/util.h"

/* alloc.c's SEARCH_WINDOW: the model implements the same documented policy. */
#define WINDOW 32768u
#define GROUP 32768u

struct env {
	struct pmfuse_pool *pool;
	struct pmfuse_txm *txm;
	struct pmfuse_alloc *al;
	struct pmfuse_volume *vol;      /* NULL for a bare allocator */
	struct pmfuse_alloc_geom g;
	uint64_t log_start, log_blocks;
	unsigned lanes;
};

/* ---- environments ---------------------------------------------------------------------------- */

/* A bare allocator for nblocks blocks; the data area starts gap blocks after the bitmap. */
static struct env *env_bare(uint32_t bs, uint64_t nblocks, uint64_t gap)
{
	struct env *e = calloc(1, sizeof(*e));

	assert_non_null(e);
	e->log_start = 2;
	e->log_blocks = (1u << 20) / bs;
	e->lanes = 1;
	e->g.block_size = bs;
	e->g.block_count = nblocks;
	e->g.bitmap_start = e->log_start + e->log_blocks;
	e->g.bitmap_blocks = pmfuse_alloc_bitmap_blocks(nblocks, bs);
	e->g.data_start = e->g.bitmap_start + e->g.bitmap_blocks + gap;
	e->g.sb2_block = nblocks - 1;
	assert_int_equal(pmfuse_pool_fake_new((e->g.bitmap_start + e->g.bitmap_blocks) * bs, NULL,
					      &e->pool), 0);
	assert_int_equal(pmfuse_txm_format(e->pool, bs, e->log_start, e->log_blocks, 1), 0);
	assert_int_equal(pmfuse_alloc_format(e->pool, &e->g), 0);
	assert_int_equal(pmfuse_txm_open(e->pool, bs, e->log_start, e->log_blocks, 1, &e->txm, NULL),
			 0);
	assert_int_equal(pmfuse_alloc_open(e->pool, &e->g, &e->al), 0);
	return e;
}

static struct env *env_volume(size_t size, uint32_t bs)
{
	struct env *e = calloc(1, sizeof(*e));
	const struct pmfuse_sb *sb;

	assert_non_null(e);
	e->vol = th_fake_volume(size, bs);
	assert_non_null(e->vol->alloc);
	sb = &e->vol->sb;
	e->pool = e->vol->pool;
	e->txm = e->vol->txm;
	e->al = e->vol->alloc;
	e->log_start = pmfuse_le64(sb->log_start);
	e->log_blocks = pmfuse_le64(sb->log_blocks);
	e->lanes = pmfuse_le32(sb->log_lanes) ? pmfuse_le32(sb->log_lanes) : 1;
	e->g = (struct pmfuse_alloc_geom){
		.block_size = pmfuse_le32(sb->block_size),
		.block_count = pmfuse_le64(sb->block_count),
		.bitmap_start = pmfuse_le64(sb->bitmap_start),
		.bitmap_blocks = pmfuse_le64(sb->bitmap_blocks),
		.data_start = pmfuse_le64(sb->data_start),
		.sb2_block = pmfuse_le64(sb->sb2_block),
	};
	return e;
}

/* Closes the allocator and builds it again from the pool. */
static void env_reopen(struct env *e)
{
	pmfuse_alloc_close(e->al);
	e->al = NULL;
	assert_int_equal(pmfuse_alloc_open(e->pool, &e->g, &e->al), 0);
	if (e->vol)
		e->vol->alloc = e->al;
}

static void env_free(struct env *e)
{
	if (e->vol) {
		th_volume_destroy(e->vol);
	} else {
		pmfuse_alloc_close(e->al);
		pmfuse_txm_close(e->txm);
		pmfuse_pool_close(e->pool);
	}
	free(e);
}

static uint64_t bpb(const struct env *e)
{
	return PMFUSE_BITMAP_BITS((uint64_t)e->g.block_size);
}

static struct pmfuse_bitmap_blk *bm(const struct env *e, uint64_t i)
{
	return pmfuse_pool_at(e->pool, (e->g.bitmap_start + i) * e->g.block_size);
}

static size_t bm_size(const struct env *e)
{
	return e->g.bitmap_blocks * e->g.block_size;
}

/* A copy of the bitmap blocks, to prove that a failed call changed nothing. */
static uint8_t *bm_snapshot(const struct env *e)
{
	uint8_t *p = malloc(bm_size(e));

	assert_non_null(p);
	memcpy(p, bm(e, 0), bm_size(e));
	return p;
}

static void bm_same(const struct env *e, uint8_t *snap)
{
	assert_memory_equal(bm(e, 0), snap, bm_size(e));
	free(snap);
}

static int pool_bit(const struct env *e, uint64_t b)
{
	uint64_t r = b % bpb(e);

	return (int)(pmfuse_le64(bm(e, b / bpb(e))->words[r / 64]) >> (r % 64) & 1);
}

static uint64_t rng_seed(uint64_t salt)
{
	return th_seed() * 0x9e3779b97f4a7c15ull + salt;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the model ------------------------------------------------------------------------------- */

struct ext {
	uint64_t start, len;
};

struct op {
	bool is_free;
	struct ext x;
};

struct model {
	uint64_t n, ds, sb2;
	uint8_t *pm;             /* the pool's bitmap: 1 = used */
	uint8_t *dram;           /* the DRAM view: pm plus the running transaction's frees */
	uint64_t dram_free;
	struct ext *live, *saved;  /* extents the test allocated and may free */
	size_t nlive, nsaved, cap;
	struct op *ops;          /* the running transaction's changes */
	size_t nops, ops_cap;
};

static void model_init(struct model *m, const struct env *e)
{
	memset(m, 0, sizeof(*m));
	m->n = e->g.block_count;
	m->ds = e->g.data_start;
	m->sb2 = e->g.sb2_block;
	m->pm = malloc(m->n);
	m->dram = malloc(m->n);
	assert_true(m->pm && m->dram);
	for (uint64_t b = 0; b < m->n; b++) {
		m->pm[b] = m->dram[b] = (uint8_t)pool_bit(e, b);
		m->dram_free += !m->pm[b];
	}
}

static void model_fini(struct model *m)
{
	free(m->pm);
	free(m->dram);
	free(m->live);
	free(m->saved);
	free(m->ops);
}

static void live_add(struct model *m, uint64_t s, uint64_t l)
{
	if (!l)
		return;
	if (m->nlive == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 256;
		m->live = realloc(m->live, m->cap * sizeof(*m->live));
		m->saved = realloc(m->saved, m->cap * sizeof(*m->saved));
		assert_true(m->live && m->saved);
	}
	m->live[m->nlive++] = (struct ext){ s, l };
}

static void model_begin(struct model *m)
{
	if (m->nlive)
		memcpy(m->saved, m->live, m->nlive * sizeof(*m->live));
	m->nsaved = m->nlive;
	m->nops = 0;
}

static void log_op(struct model *m, bool is_free, uint64_t s, uint64_t l)
{
	if (m->nops == m->ops_cap) {
		m->ops_cap = m->ops_cap ? m->ops_cap * 2 : 64;
		m->ops = realloc(m->ops, m->ops_cap * sizeof(*m->ops));
		assert_non_null(m->ops);
	}
	m->ops[m->nops++] = (struct op){ is_free, { s, l } };
}

static void model_alloc(struct model *m, uint64_t s, uint64_t l)
{
	for (uint64_t b = s; b < s + l; b++) {
		assert_int_equal(m->dram[b], 0);
		m->pm[b] = m->dram[b] = 1;
	}
	m->dram_free -= l;
	log_op(m, false, s, l);
	live_add(m, s, l);
}

/* Frees part [s, s + l) of live extent i. */
static void model_free(struct model *m, size_t i, uint64_t s, uint64_t l)
{
	struct ext x = m->live[i];

	memset(m->pm + s, 0, l);
	log_op(m, true, s, l);
	m->live[i] = m->live[--m->nlive];
	live_add(m, x.start, s - x.start);
	live_add(m, s + l, x.start + x.len - s - l);
}

static void model_end(struct model *m, bool committed)
{
	for (size_t i = m->nops; i-- > 0;) {
		struct ext x = m->ops[i].x;

		if (committed && m->ops[i].is_free) {
			memset(m->dram + x.start, 0, x.len);
			m->dram_free += x.len;
		} else if (!committed && m->ops[i].is_free) {
			memset(m->pm + x.start, 1, x.len);
		} else if (!committed) {
			memset(m->pm + x.start, 0, x.len);
			memset(m->dram + x.start, 0, x.len);
			m->dram_free += x.len;
		}
	}
	if (!committed) {
		if (m->nsaved)
			memcpy(m->live, m->saved, m->nsaved * sizeof(*m->live));
		m->nlive = m->nsaved;
	}
	m->nops = 0;
}

static uint64_t model_next_free(const struct model *m, uint64_t p, uint64_t lim)
{
	const uint8_t *q = p < lim ? memchr(m->dram + p, 0, lim - p) : NULL;

	return q ? (uint64_t)(q - m->dram) : lim;
}

static uint64_t model_run_end(const struct model *m, uint64_t p)
{
	uint64_t w;

	while (p + 8 <= m->n) {
		memcpy(&w, m->dram + p, 8);
		if (w)
			break;
		p += 8;
	}
	while (p < m->n && !m->dram[p])
		p++;
	return p;
}

/*
 * The placement policy of alloc.h / alloc.c, written the slow and obvious way: visit the free
 * runs in circular order from the goal; the first one of minlen blocks opens a window of WINDOW
 * blocks (in circular distance from the goal); take the longest run starting in the window, cut
 * to maxlen, the earliest on ties.
 */
static struct ext model_pick(const struct model *m, uint64_t goal, uint64_t minlen,
			     uint64_t maxlen)
{
	struct ext best = { 0, 0 };
	uint64_t wend = 0;
	bool open = false;

	maxlen = PMFUSE_MIN(maxlen, m->sb2 - m->ds);
	if (minlen > maxlen)
		return best;
	if (goal < m->ds || goal >= m->sb2)
		goal = m->ds;
	for (int ph = 0; ph < 2; ph++) {
		uint64_t p = ph ? m->ds : goal, lim = ph ? goal : m->n;

		while ((p = model_next_free(m, p, lim)) < lim) {
			uint64_t end = model_run_end(m, p), len = end - p;
			uint64_t d = ph ? m->n - goal + p - m->ds : p - goal;

			if (open && d >= wend)
				return best;
			if (len >= minlen) {
				if (!open) {
					open = true;
					wend = d + WINDOW;
				}
				len = PMFUSE_MIN(len, maxlen);
				if (len > best.len)
					best = (struct ext){ p, len };
				if (len == maxlen)
					return best;
			}
			p = end;
		}
	}
	return best;
}

/* ---- checks ---------------------------------------------------------------------------------- */

/* The pool's bitmap against the model: every block verifies, every bit matches, B2 holds. */
static void check_pool_bitmap(const struct env *e, const struct model *m)
{
	uint64_t cap = e->g.bitmap_blocks * bpb(e);

	for (uint64_t i = 0; i < e->g.bitmap_blocks; i++)
		assert_int_equal(pmfuse_blk_verify(&bm(e, i)->hdr, PMFUSE_BLK_BITMAP,
						   e->g.bitmap_start + i, PMFUSE_OWNER_FS,
						   e->g.block_size), 0);
	for (uint64_t b = 0; b < cap; b++) {
		int want = b < m->n ? m->pm[b] : 1;

		if (pool_bit(e, b) != want) {
			print_error("block %llu: pool bit %d, model %d\n", (unsigned long long)b,
				    pool_bit(e, b), want);
			fail();
		}
	}
}

/* Between transactions: pool, durable media, DRAM index and counters all agree with the model. */
static void check_all(const struct env *e, const struct model *m)
{
	uint64_t n = 0;

	check_pool_bitmap(e, m);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), m->dram_free);
	assert_int_equal(pmfuse_alloc_count_free(e->pool, &e->g, &n), 0);
	assert_int_equal(n, m->dram_free);
	/* Committed means durable: the media image holds the same bitmap. */
	const uint8_t *media = pmfuse_pool_fake_media(e->pool);
	uint64_t off = e->g.bitmap_start * e->g.block_size;
	assert_memory_equal(media + off, (const uint8_t *)pmfuse_pool_base(e->pool) + off,
			    bm_size(e));
}

/* ---- the random workload --------------------------------------------------------------------- */

static uint64_t pick_len(struct th_rng *r, uint64_t room)
{
	uint64_t k = th_rng_below(r, 100), len;

	if (k < 60)
		len = 1 + th_rng_below(r, 8);
	else if (k < 90)
		len = 1 + th_rng_below(r, 300);
	else if (k < 98)
		len = 1 + th_rng_below(r, 5000);
	else
		len = 1 + th_rng_below(r, 2 * GROUP);
	return PMFUSE_MIN(len, room);
}

static uint64_t nospc;    /* -ENOSPC answers, for the summary line */

static void op_alloc(struct env *e, struct model *m, struct pmfuse_tx *tx, struct th_rng *r)
{
	uint64_t room = m->sb2 - m->ds, goal, minlen, maxlen, s = 0, l = 0, k;
	struct ext want;
	int rc;

	k = th_rng_below(r, 100);
	if (k < 20)
		goal = 0;
	else if (k < 70 || !m->nlive)
		goal = th_rng_below(r, m->n + 16);   /* sometimes outside the data area */
	else {
		struct ext x = m->live[th_rng_below(r, m->nlive)];
		goal = x.start + x.len;
	}
	minlen = pick_len(r, room + 2);
	k = th_rng_below(r, 100);
	if (k < 25)
		maxlen = minlen;
	else if (k < 85)
		maxlen = minlen + pick_len(r, room);
	else
		maxlen = UINT64_MAX;

	want = model_pick(m, goal, minlen, maxlen);
	rc = pmfuse_alloc_extent(tx, e->al, goal, minlen, maxlen, &s, &l);
	if (rc != (want.len ? 0 : -ENOSPC) || (rc == 0 && (s != want.start || l != want.len))) {
		print_error("alloc(goal %llu, minlen %llu, maxlen %llu): rc %d, %llu+%llu; model "
			    "expects %llu+%llu (free %llu)\n", (unsigned long long)goal,
			    (unsigned long long)minlen, (unsigned long long)maxlen, rc,
			    (unsigned long long)s, (unsigned long long)l,
			    (unsigned long long)want.start, (unsigned long long)want.len,
			    (unsigned long long)m->dram_free);
		fail();
	}
	if (rc) {
		nospc++;
		return;
	}
	assert_true(l >= minlen && l <= maxlen);
	assert_true(s >= m->ds && s + l <= m->sb2);
	model_alloc(m, s, l);
}

static void op_free(struct env *e, struct model *m, struct pmfuse_tx *tx, struct th_rng *r)
{
	size_t i;
	struct ext x;
	uint64_t s, l;

	if (!m->nlive)
		return;
	i = th_rng_below(r, m->nlive);
	x = m->live[i];
	if (th_rng_below(r, 2)) {
		s = x.start;
		l = x.len;
	} else {
		s = x.start + th_rng_below(r, x.len);
		l = 1 + th_rng_below(r, x.start + x.len - s);
	}
	assert_int_equal(pmfuse_alloc_free(tx, e->al, s, l), 0);
	model_free(m, i, s, l);
}

/* A free that must fail with -EUCLEAN and change nothing: a range holding a block that is free
 * on the pool (possibly freed by this very transaction), or one outside the data area. */
static void op_bad_free(struct env *e, struct model *m, struct pmfuse_tx *tx, struct th_rng *r)
{
	uint64_t s, l, b, before = pmfuse_alloc_free_blocks(e->al);
	const uint8_t *q;
	uint8_t *snap;
	int rc;

	switch (th_rng_below(r, 3)) {
	case 0:
		b = m->ds + th_rng_below(r, m->sb2 - m->ds);
		q = memchr(m->pm + b, 0, m->sb2 - b);
		if (!q)
			return;
		b = (uint64_t)(q - m->pm);
		s = th_rng_below(r, 4);
		s = b - PMFUSE_MIN(b - m->ds, s);
		l = b - s + 1 + th_rng_below(r, PMFUSE_MIN(4, m->sb2 - b));
		break;
	case 1:
		s = th_rng_below(r, m->ds);
		l = 1 + th_rng_below(r, 2 * m->ds);
		break;
	default:
		s = m->sb2 - th_rng_below(r, PMFUSE_MIN(4, m->sb2 - m->ds));
		l = m->sb2 - s + 1 + th_rng_below(r, 3);
		break;
	}
	snap = bm_snapshot(e);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	rc = pmfuse_alloc_free(tx, e->al, s, l);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(rc, -EUCLEAN);
	bm_same(e, snap);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), before);
}

/*
 * Runs ntx random transactions. Every transaction does 1-4 operations and is committed (80%) or
 * aborted; the mix leans towards frees when the filesystem is more than 70% full.
 */
static void run_model(struct env *e, uint64_t ntx, uint64_t salt)
{
	struct th_rng r;
	struct model m;
	uint64_t allocs = 0, frees = 0, aborts = 0, min_free = UINT64_MAX;
	double t0 = now();

	th_rng_init(&r, rng_seed(salt));
	model_init(&m, e);
	check_all(e, &m);
	for (uint64_t t = 1; t <= ntx; t++) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);
		uint64_t nops = 1 + th_rng_below(&r, 4);
		bool commit = th_rng_below(&r, 100) < 80;
		uint64_t used = m.sb2 - m.ds - m.dram_free;
		uint64_t p_alloc = used * 10 > (m.sb2 - m.ds) * 7 ? 35 : 60;

		model_begin(&m);
		for (uint64_t i = 0; i < nops; i++) {
			uint64_t k = th_rng_below(&r, 100);

			if (k < p_alloc) {
				op_alloc(e, &m, tx, &r);
				allocs++;
			} else if (k < 97) {
				op_free(e, &m, tx, &r);
				frees++;
			} else {
				op_bad_free(e, &m, tx, &r);
			}
			assert_int_equal(pmfuse_alloc_free_blocks(e->al), m.dram_free);
		}
		if (t % 64 == 0)
			check_pool_bitmap(e, &m);   /* mid-transaction: sealed, bits right */
		if (commit) {
			pmfuse_tx_commit(tx);
		} else {
			pmfuse_tx_abort(tx);
			aborts++;
		}
		model_end(&m, commit);
		assert_int_equal(pmfuse_alloc_free_blocks(e->al), m.dram_free);
		min_free = PMFUSE_MIN(min_free, m.dram_free);
		if (t % 100 == 0)
			check_all(e, &m);
		if (t % 1000 == 0) {
			env_reopen(e);
			check_all(e, &m);
		}
	}
	env_reopen(e);
	check_all(e, &m);
	printf("# model: %llu blocks, %llu transactions (%llu aborted), %llu allocs (%llu ENOSPC), "
	       "%llu frees, least free %.1f%%, %.2f s\n", (unsigned long long)m.n,
	       (unsigned long long)ntx, (unsigned long long)aborts, (unsigned long long)allocs,
	       (unsigned long long)nospc, (unsigned long long)frees,
	       100.0 * (double)min_free / (double)(m.sb2 - m.ds), now() - t0);
	nospc = 0;
	model_fini(&m);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_geometry_and_format(void **state)
{
	(void)state;
	assert_int_equal(pmfuse_alloc_bitmap_blocks(0, 4096), 0);
	assert_int_equal(pmfuse_alloc_bitmap_blocks(1, 4096), 1);
	assert_int_equal(pmfuse_alloc_bitmap_blocks(32256, 4096), 1);
	assert_int_equal(pmfuse_alloc_bitmap_blocks(32257, 4096), 2);
	assert_int_equal(pmfuse_alloc_bitmap_blocks(523776, 65536), 1);
	assert_int_equal(pmfuse_alloc_bitmap_blocks(523777, 65536), 2);
	/* 1 TiB of 4 KiB blocks */
	assert_int_equal(pmfuse_alloc_bitmap_blocks(1ull << 28, 4096), 8323);

	/* An odd block count with the data area not word aligned, over 3 bitmap blocks. */
	struct env *e = env_bare(4096, 70001, 5);
	uint64_t n = 0;

	assert_int_equal(e->g.bitmap_blocks, 3);
	assert_int_equal(pmfuse_alloc_count_free(e->pool, &e->g, &n), 0);
	assert_int_equal(n, e->g.sb2_block - e->g.data_start);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), n);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	for (uint64_t i = 0; i < 3; i++)
		assert_int_equal(pmfuse_le64(bm(e, i)->first_block), i * 32256);
	assert_int_equal(pmfuse_alloc_is_used(e->al, 0), 1);
	assert_int_equal(pmfuse_alloc_is_used(e->al, e->g.data_start - 1), 1);
	assert_int_equal(pmfuse_alloc_is_used(e->al, e->g.data_start), 0);
	assert_int_equal(pmfuse_alloc_is_used(e->al, e->g.sb2_block - 1), 0);
	assert_int_equal(pmfuse_alloc_is_used(e->al, e->g.sb2_block), 1);
	assert_int_equal(pmfuse_alloc_is_used(e->al, e->g.block_count), -ERANGE);

	/* Bad geometries are refused before anything is touched. */
	struct pmfuse_alloc *al = NULL;
	struct pmfuse_alloc_geom g = e->g;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	g.bitmap_blocks = 2;                                   /* too few for the blocks */
	assert_int_equal(pmfuse_alloc_open(e->pool, &g, &al), -EINVAL);
	g = e->g;
	g.sb2_block = g.block_count - 2;
	assert_int_equal(pmfuse_alloc_open(e->pool, &g, &al), -EINVAL);
	g = e->g;
	g.data_start = g.bitmap_start + 1;                     /* data over the bitmap */
	assert_int_equal(pmfuse_alloc_format(e->pool, &g), -EINVAL);
	g = e->g;
	g.block_size = 4095;
	assert_int_equal(pmfuse_alloc_count_free(e->pool, &g, &n), -EINVAL);
	g = e->g;
	g.bitmap_start = pmfuse_pool_size(e->pool) / 4096 - 1; /* bitmap past the pool's end */
	assert_int_equal(pmfuse_alloc_open(e->pool, &g, &al), -EINVAL);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_null(al);

	/* Argument errors. */
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);
	uint64_t s, l;
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, 0, 4, &s, &l), -EINVAL);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, 5, 4, &s, &l), -EINVAL);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, e->g.data_start, 0), -EINVAL);
	/* More than the whole data area can never be satisfied; a huge maxlen is cut. */
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, n + 1, n + 1, &s, &l), -ENOSPC);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, n, UINT64_MAX, &s, &l), 0);
	assert_int_equal(s, e->g.data_start);
	assert_int_equal(l, n);
	pmfuse_tx_abort(tx);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), n);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	env_free(e);
}

static void test_model_bare_4k(void **state)
{
	(void)state;
	/* 4 bitmap blocks, 4 groups, an odd block count. */
	struct env *e = env_bare(4096, 100003, 3);
	run_model(e, th_scaled(20000), 1);
	env_free(e);
}

static void test_model_bare_64k(void **state)
{
	(void)state;
	/* 2 bitmap blocks of 64 KiB, 19 groups. */
	struct env *e = env_bare(65536, 600001, 0);
	run_model(e, th_scaled(6000), 2);
	env_free(e);
}

static void test_model_volume_4k(void **state)
{
	(void)state;
	struct env *e = env_volume(64u << 20, 4096);
	run_model(e, th_scaled(8000), 3);
	env_free(e);
}

static void test_model_volume_64k(void **state)
{
	(void)state;
	struct env *e = env_volume(64u << 20, 65536);
	run_model(e, th_scaled(4000), 4);
	env_free(e);
}

/* Every byte an allocation or a free changes must be declared (tx verification aborts if not). */
static void test_tx_verify_volume(void **state)
{
	(void)state;
	struct env *e = env_volume(16u << 20, 4096);
	pmfuse_txm_set_verify(e->txm, true);
	run_model(e, th_scaled(300), 5);
	pmfuse_txm_set_verify(e->txm, false);
	env_free(e);
}

static void test_tx_verify_bare(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 100003, 3);
	pmfuse_txm_set_verify(e->txm, true);
	run_model(e, th_scaled(1500), 6);
	env_free(e);
}

/* Allocates everything (committed); returns the extents in *out. */
static size_t fill(struct env *e, struct ext **out)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);
	struct ext *x = NULL;
	size_t n = 0;
	uint64_t s, l;
	int rc;

	while ((rc = pmfuse_alloc_extent(tx, e->al, 0, 1, 4096, &s, &l)) == 0) {
		x = realloc(x, (n + 1) * sizeof(*x));
		assert_non_null(x);
		x[n++] = (struct ext){ s, l };
	}
	assert_int_equal(rc, -ENOSPC);
	pmfuse_tx_commit(tx);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);
	*out = x;
	return n;
}

static void free_one(struct env *e, uint64_t s, uint64_t l)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, s, l), 0);
	pmfuse_tx_commit(tx);
}

static struct ext alloc_one(struct env *e, uint64_t goal, uint64_t minlen, uint64_t maxlen)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);
	struct ext x = { 0, 0 };
	int rc = pmfuse_alloc_extent(tx, e->al, goal, minlen, maxlen, &x.start, &x.len);

	pmfuse_tx_commit(tx);
	if (rc)
		x = (struct ext){ 0, 0 };
	return x;
}

/* A checkerboard of free blocks: minlen 2 fails and changes nothing, minlen 1 succeeds. */
static void test_fragmentation(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 70001, 1);
	uint64_t ds = e->g.data_start, sb2 = e->g.sb2_block, nfree = 0, s, l;
	struct ext *all, x;
	struct pmfuse_tx *tx;
	uint8_t *snap;

	fill(e, &all);
	free(all);
	tx = pmfuse_tx_begin(e->txm);
	for (uint64_t b = ds; b < sb2; b += 2, nfree++)
		assert_int_equal(pmfuse_alloc_free(tx, e->al, b, 1), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);   /* not before commit */
	pmfuse_tx_commit(tx);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), nfree);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);

	snap = bm_snapshot(e);
	tx = pmfuse_tx_begin(e->txm);
	for (uint64_t goal = 0; goal < sb2; goal += 9999)
		assert_int_equal(pmfuse_alloc_extent(tx, e->al, goal, 2, 100, &s, &l), -ENOSPC);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), nfree);
	pmfuse_tx_commit(tx);
	bm_same(e, snap);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);

	x = alloc_one(e, 0, 1, 100);
	assert_int_equal(x.start, ds);
	assert_int_equal(x.len, 1);
	x = alloc_one(e, 40001, 1, 100);   /* a used goal: the next free block after it */
	assert_int_equal(x.start, 40001 + ((40001 - ds) % 2 ? 1 : 0));
	assert_int_equal(x.len, 1);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), nfree - 2);

	/* Runs that cross a summary group (32768) and a bitmap block (32256) boundary. */
	uint64_t pairs[] = { 32767, 32255 };
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(pairs); i++) {
		uint64_t p = pairs[i];
		/* make [p, p + 2) free and its neighbours used */
		for (uint64_t b = p - 1; b <= p + 2; b++) {
			tx = pmfuse_tx_begin(e->txm);
			bool used = pmfuse_alloc_is_used(e->al, b) == 1;
			bool want = b == p - 1 || b == p + 2;
			if (used && !want)
				assert_int_equal(pmfuse_alloc_free(tx, e->al, b, 1), 0);
			pmfuse_tx_commit(tx);
			if (!used && want) {
				x = alloc_one(e, b, 1, 1);
				assert_int_equal(x.start, b);
			}
		}
		x = alloc_one(e, 0, 2, 2);
		assert_int_equal(x.start, p);
		assert_int_equal(x.len, 2);
	}
	/* A long run over two group boundaries and a bitmap block boundary. */
	assert_int_equal(pmfuse_alloc_is_used(e->al, 29999), 1);
	tx = pmfuse_tx_begin(e->txm);
	for (uint64_t b = 30000; b < 69000; b++)
		if (pmfuse_alloc_is_used(e->al, b) == 1)
			assert_int_equal(pmfuse_alloc_free(tx, e->al, b, 1), 0);
	pmfuse_tx_commit(tx);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	x = alloc_one(e, 0, 39000, 39000);
	assert_int_equal(x.start, 30000);
	assert_int_equal(x.len, 39000);
	env_free(e);
}

/* A full filesystem: -ENOSPC changes nothing, aborted frees stay allocated, and blocks freed in
 * a transaction are not handed out again by the same transaction. */
static void test_enospc(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 50000, 0);
	struct ext *all, x;
	size_t n = fill(e, &all);
	struct pmfuse_tx *tx;
	uint64_t s, l, nfree;
	uint8_t *snap;

	assert_true(n > 2);
	assert_int_equal(pmfuse_alloc_count_free(e->pool, &e->g, &nfree), 0);
	assert_int_equal(nfree, 0);
	snap = bm_snapshot(e);
	tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, 1, 1, &s, &l), -ENOSPC);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 30000, 1, 1000, &s, &l), -ENOSPC);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, UINT64_MAX, 1, UINT64_MAX, &s, &l),
			 -ENOSPC);
	pmfuse_tx_commit(tx);
	bm_same(e, snap);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);

	/* A free in an aborted transaction leaves the blocks allocated. */
	x = all[n / 2];
	snap = bm_snapshot(e);
	tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start, x.len), 0);
	assert_int_equal(pmfuse_alloc_is_used(e->al, x.start), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);
	pmfuse_tx_abort(tx);
	bm_same(e, snap);
	assert_int_equal(pmfuse_alloc_is_used(e->al, x.start), 1);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	assert_int_equal(alloc_one(e, 0, 1, 1).len, 0);

	/* Freed and reallocated in the same transaction: the freed blocks are not reused. */
	tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start, x.len), 0);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, x.start, 1, x.len, &s, &l), -ENOSPC);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, 1, 1, &s, &l), -ENOSPC);
	pmfuse_tx_commit(tx);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), x.len);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	struct ext y = alloc_one(e, 0, 1, UINT64_MAX);
	assert_int_equal(y.start, x.start);
	assert_int_equal(y.len, x.len);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);

	/* Allocated then freed in one transaction, then aborted: free again, counters exact. */
	free_one(e, x.start, x.len);
	tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, 1, UINT64_MAX, &s, &l), 0);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, s, l), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 0);
	pmfuse_tx_abort(tx);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), x.len);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	free(all);
	env_free(e);
}

/* Allocates in a transaction that is then aborted: where would this request land? */
static struct ext probe(struct env *e, uint64_t goal, uint64_t minlen, uint64_t maxlen)
{
	struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);
	struct ext x = { 0, 0 };
	int rc = pmfuse_alloc_extent(tx, e->al, goal, minlen, maxlen, &x.start, &x.len);

	pmfuse_tx_abort(tx);
	if (rc)
		x = (struct ext){ 0, 0 };
	return x;
}

#define assert_ext(x, s, l) do { \
	struct ext x_ = (x); \
	assert_int_equal(x_.start, (s)); \
	assert_int_equal(x_.len, (l)); \
} while (0)

/* Placement: at the goal when it is free, else after it; longest run near it; wrapping. */
static void test_goal(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 100000, 0);
	uint64_t ds = e->g.data_start, sb2 = e->g.sb2_block;

	assert_ext(alloc_one(e, 0, 1, 100), ds, 100);
	assert_ext(alloc_one(e, 5000, 1, 50), 5000, 50);
	assert_ext(alloc_one(e, 5000, 1, 50), 5050, 50);    /* the goal is taken: right after */
	assert_ext(alloc_one(e, 5025, 10, 10), 5100, 10);   /* a goal inside a used extent */
	assert_ext(alloc_one(e, 5110, 1, 7), 5110, 7);      /* appending to the last one */
	assert_ext(alloc_one(e, 1ull << 40, 1, 1), ds + 100, 1);  /* outside: data_start */
	assert_ext(alloc_one(e, 3, 1, 1), ds + 101, 1);     /* below data_start: the same */
	for (uint64_t i = 0; i < 50; i++) {
		uint64_t goal = ds + 200 + i * 1500;
		assert_ext(alloc_one(e, goal, 1, 1 + i % 5), goal, 1 + i % 5);
	}
	env_free(e);

	/*
	 * Used everywhere but [80000, 80500), which holds four runs:
	 *   80000+5   80006+154   80161+239   80401+99
	 */
	e = env_bare(4096, 100000, 0);
	ds = e->g.data_start;
	sb2 = e->g.sb2_block;
	assert_ext(alloc_one(e, 0, 80000 - ds, 80000 - ds), ds, 80000 - ds);
	assert_ext(alloc_one(e, 80500, sb2 - 80500, sb2 - 80500), 80500, sb2 - 80500);
	assert_ext(alloc_one(e, 80005, 1, 1), 80005, 1);
	assert_ext(alloc_one(e, 80160, 1, 1), 80160, 1);
	assert_ext(alloc_one(e, 80400, 1, 1), 80400, 1);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 5 + 154 + 239 + 99);

	assert_ext(probe(e, 80000, 1, 1000), 80161, 239);  /* the longest in the window */
	assert_ext(probe(e, 0, 1, 1000), 80161, 239);
	assert_ext(probe(e, 80000, 1, 4), 80000, 4);       /* maxlen fits at the goal */
	assert_ext(probe(e, 80002, 1, 3), 80002, 3);       /* a goal inside a free run */
	assert_ext(probe(e, 80002, 6, 6), 80006, 6);       /* too short at the goal */
	assert_ext(probe(e, 80000, 100, 120), 80006, 120); /* the first run of maxlen wins */
	assert_ext(probe(e, 80000, 200, 1000), 80161, 239);
	assert_ext(probe(e, 80000, 240, 1000), 0, 0);      /* no run that long */
	/* Wrapping: nothing long enough after the goal, so the search restarts at data_start. */
	assert_ext(probe(e, 80450, 200, 200), 80161, 200);
	assert_ext(probe(e, 80450, 100, 120), 80006, 120);
	/* The window: a run at the goal opens it; the longer runs lie past its end (wrapped). */
	assert_ext(probe(e, 80450, 1, 1000), 80450, 50);
	assert_ext(probe(e, 80401, 1, 1000), 80401, 99);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 5 + 154 + 239 + 99);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	env_free(e);
}

static void clear_bit(struct pmfuse_bitmap_blk *b, uint64_t bit)
{
	struct pmfuse_le64 *w = &b->words[bit / 64];

	pmfuse_set_le64(w, pmfuse_le64(*w) & ~(1ull << (bit % 64)));
}

/* Runs that end inside, cross or cover whole summary groups (32768 blocks). */
static void test_group_boundaries(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 100003, 0);
	uint64_t ds = e->g.data_start, sb2 = e->g.sb2_block;

	/* Group 1 has exactly one used block: a run from group 0 into it must stop there. */
	assert_ext(alloc_one(e, GROUP + 20000, 1, 1), GROUP + 20000, 1);
	assert_ext(alloc_one(e, 0, 30000 - ds, 30000 - ds), ds, 30000 - ds);
	assert_ext(probe(e, 0, 1, GROUP + 20000 - 30000), 30000, GROUP + 20000 - 30000);
	assert_ext(probe(e, 0, GROUP + 20001 - 30000, GROUP + 20001 - 30000), GROUP + 20001,
		   GROUP + 20001 - 30000);
	assert_ext(probe(e, GROUP, 1, 20000), GROUP, 20000);
	assert_ext(probe(e, GROUP, 20001, 20001), GROUP + 20001, 20001);
	assert_ext(probe(e, GROUP - 1, 1, 20001), GROUP - 1, 20001);

	/* Runs [30000, 3 * GROUP + 5) over the tail of group 0, all of groups 1 and 2 and the head
	 * of group 3, and [3 * GROUP + 6, sb2). */
	free_one(e, GROUP + 20000, 1);
	assert_ext(alloc_one(e, 3 * GROUP + 5, 1, 1), 3 * GROUP + 5, 1);
	uint64_t big = 3 * GROUP + 5 - 30000, small = sb2 - 3 * GROUP - 6;
	assert_ext(probe(e, 0, 1, UINT64_MAX), 30000, big);
	assert_ext(probe(e, 0, big, big), 30000, big);
	assert_ext(probe(e, 0, big + 1, UINT64_MAX), 0, 0);
	assert_ext(probe(e, 31000, 40000, 40000), 31000, 40000);
	assert_ext(probe(e, 2 * GROUP, GROUP + 5, GROUP + 5), 2 * GROUP, GROUP + 5);
	assert_ext(probe(e, 2 * GROUP, GROUP + 6, GROUP + 6), 30000, GROUP + 6);   /* wraps */
	assert_ext(probe(e, 3 * GROUP, 1, 5), 3 * GROUP, 5);
	assert_ext(probe(e, 3 * GROUP, 1, small), 3 * GROUP + 6, small);  /* first of maxlen */
	/* A window opened near the end wraps around to data_start and takes in the longer run at
	 * 30000. */
	assert_ext(probe(e, 3 * GROUP, 1, UINT64_MAX), 30000, big);
	assert_ext(probe(e, 3 * GROUP + 5, 1, UINT64_MAX), 30000, big);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	env_free(e);
}

/* The pool's bitmap changed behind the allocator's back: its cross-checks notice. */
static void test_index_mismatch(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 40000, 0);
	uint64_t ds = e->g.data_start, b = ds + 10, s, l, before = pmfuse_alloc_free_blocks(e->al);
	struct pmfuse_bitmap_blk *blk = bm(e, b / bpb(e));
	struct pmfuse_le64 *w = &blk->words[b % bpb(e) / 64];
	struct pmfuse_tx *tx;
	uint8_t *snap;

	pmfuse_set_le64(w, pmfuse_le64(*w) | 1ull << (b % 64));
	pmfuse_blk_seal(&blk->hdr, e->g.block_size);
	pmfuse_pool_persist(e->pool, blk, e->g.block_size);
	snap = bm_snapshot(e);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	assert_int_equal(pmfuse_alloc_check(e->al), -EUCLEAN);
	tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, b, 1, 1, &s, &l), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, b - 2, 1, 10, &s, &l), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, b, 1), -EUCLEAN);
	pmfuse_tx_commit(tx);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	bm_same(e, snap);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), before);
	/* What open builds from that pool is consistent again. */
	env_reopen(e);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), before - 1);
	assert_ext(alloc_one(e, b, 1, 1), b + 1, 1);
	env_free(e);
}

/* Damaged bitmap blocks are found by open and count_free; nothing is built from them. */
static void test_corruption(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 70001, 2);
	struct pmfuse_alloc *al = NULL;
	size_t size = bm_size(e), bs = e->g.block_size;
	uint8_t *good = bm_snapshot(e), *p = (uint8_t *)bm(e, 0);
	uint64_t n, last = e->g.bitmap_blocks - 1;
	uint64_t past = e->g.block_count - last * bpb(e);      /* bit index in the last block */
	struct pmfuse_bitmap_blk *b1 = bm(e, 1), *bl = bm(e, last), *b0 = bm(e, 0);

	assert_true(past < bpb(e) - 1);
	pmfuse_alloc_close(e->al);
	e->al = NULL;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	for (int v = 0; v < 9; v++) {
		memcpy(p, good, size);
		switch (v) {
		case 0: p[bs + 64 + 123] ^= 0x10; break;                        /* no reseal */
		case 1: p[bs + 1] ^= 1; break;                                  /* the magic */
		case 2: clear_bit(b0, 0); break;                                /* block 0 */
		case 3: clear_bit(bl, e->g.sb2_block - last * bpb(e)); break;   /* sb2 */
		case 4: clear_bit(bl, past + 1); break;                         /* past the end */
		case 5: pmfuse_set_le64(&b1->first_block, 64 + pmfuse_le64(b1->first_block)); break;
		case 6: pmfuse_set_le64(&b1->hdr.blkno, 1 + pmfuse_le64(b1->hdr.blkno)); break;
		case 7: pmfuse_set_le64(&b1->pad[1], 1); break;
		case 8: pmfuse_set_le64(&b1->hdr.owner, PMFUSE_OWNER_INODE_BASE); break;
		}
		if (v >= 2) {
			pmfuse_blk_seal(&b0->hdr, (uint32_t)bs);
			pmfuse_blk_seal(&b1->hdr, (uint32_t)bs);
			pmfuse_blk_seal(&bl->hdr, (uint32_t)bs);
		}
		assert_int_equal(pmfuse_alloc_open(e->pool, &e->g, &al), -EUCLEAN);
		assert_null(al);
		assert_int_equal(pmfuse_alloc_count_free(e->pool, &e->g, &n), -EUCLEAN);
	}
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	memcpy(p, good, size);
	free(good);
	assert_int_equal(pmfuse_alloc_open(e->pool, &e->g, &e->al), 0);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	env_free(e);
}

/* Freeing what is not allocated is -EUCLEAN and changes nothing. */
static void test_bad_free(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 40000, 0);
	uint64_t ds = e->g.data_start, sb2 = e->g.sb2_block, before;
	struct ext x = alloc_one(e, ds + 1000, 100, 100);
	struct pmfuse_tx *tx;
	uint8_t *snap;

	assert_int_equal(x.start, ds + 1000);
	before = pmfuse_alloc_free_blocks(e->al);
	snap = bm_snapshot(e);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	tx = pmfuse_tx_begin(e->txm);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start + x.len, 1), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start, x.len + 1), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start - 1, 2), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, ds - 1, 1), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, 0, 1), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, sb2, 1), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, sb2 - 1, 2), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start, UINT64_MAX), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, UINT64_MAX, 1), -EUCLEAN);
	bm_same(e, snap);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), before);
	/* A double free inside one transaction. */
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start + 10, 10), 0);
	snap = bm_snapshot(e);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start + 19, 1), -EUCLEAN);
	assert_int_equal(pmfuse_alloc_free(tx, e->al, x.start, x.len), -EUCLEAN);
	bm_same(e, snap);
	pmfuse_tx_commit(tx);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), before + 10);
	assert_int_equal(pmfuse_alloc_is_used(e->al, x.start + 9), 1);
	assert_int_equal(pmfuse_alloc_is_used(e->al, x.start + 10), 0);
	assert_int_equal(pmfuse_alloc_is_used(e->al, x.start + 20), 1);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	env_free(e);
}

struct keep_arg {
	struct th_rng rng;
	unsigned percent;
};

static bool keep_some(void *arg, size_t unit)
{
	struct keep_arg *k = arg;

	(void)unit;
	return th_rng_below(&k->rng, 100) < k->percent;
}

/* Builds the image a power cut could leave now, recovers it, and compares with the model. */
static void check_crash_image(const struct env *e, const struct model *m, struct keep_arg *k)
{
	size_t size = pmfuse_pool_size(e->pool);
	uint8_t *image = malloc(size);
	struct env c = *e;

	assert_non_null(image);
	k->percent = (unsigned)th_rng_below(&k->rng, 101);
	pmfuse_pool_fake_crash_image(e->pool, image, keep_some, k);
	assert_int_equal(pmfuse_pool_fake_new(size, image, &c.pool), 0);
	free(image);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);      /* "rolled back ..." */
	assert_int_equal(pmfuse_txm_open(c.pool, e->g.block_size, e->log_start, e->log_blocks,
					 e->lanes, &c.txm, NULL), 0);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(pmfuse_alloc_open(c.pool, &e->g, &c.al), 0);
	check_pool_bitmap(&c, m);
	assert_int_equal(pmfuse_alloc_check(c.al), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(c.al), m->dram_free);
	pmfuse_alloc_close(c.al);
	pmfuse_txm_close(c.txm);
	pmfuse_pool_close(c.pool);
}

/* Power cuts in the middle of a transaction and after its commit: after recovery the bitmap is
 * the one of the last committed transaction. */
static void test_crash(void **state)
{
	(void)state;
	struct env *e = env_bare(4096, 70001, 0);
	struct keep_arg k;
	struct th_rng r;
	struct model m;

	th_rng_init(&r, rng_seed(7));
	th_rng_init(&k.rng, rng_seed(8));
	model_init(&m, e);
	for (int round = 0; round < 30; round++) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(e->txm);

		model_begin(&m);
		for (int i = 0; i < 6; i++) {
			if (th_rng_below(&r, 3))
				op_alloc(e, &m, tx, &r);
			else
				op_free(e, &m, tx, &r);
		}
		model_end(&m, false);          /* what recovery must come back to */
		check_crash_image(e, &m, &k);
		pmfuse_tx_abort(tx);
		check_all(e, &m);

		tx = pmfuse_tx_begin(e->txm);
		model_begin(&m);
		for (int i = 0; i < 6; i++) {
			if (th_rng_below(&r, 3))
				op_alloc(e, &m, tx, &r);
			else
				op_free(e, &m, tx, &r);
		}
		pmfuse_tx_commit(tx);
		model_end(&m, true);
		check_crash_image(e, &m, &k);
		check_all(e, &m);
	}
	model_fini(&m);
	env_free(e);
}

/* The bits of word w (blocks 64w .. 64w + 63) that lie in [lo, hi). */
static uint64_t range_bits(uint64_t w, uint64_t lo, uint64_t hi)
{
	uint64_t m = 0;

	for (unsigned k = 0; k < 64; k++)
		if (w * 64 + k >= lo && w * 64 + k < hi)
			m |= 1ull << k;
	return m;
}

/* Rewrites the data bits of the whole bitmap: word w gets fn(w) there; reserved bits stay 1. */
static void paint(struct env *e, uint64_t (*fn)(const struct env *e, uint64_t w))
{
	uint64_t ds = e->g.data_start, sb2 = e->g.sb2_block, wpb = bpb(e) / 64;

	for (uint64_t i = 0; i < e->g.bitmap_blocks; i++) {
		struct pmfuse_bitmap_blk *b = bm(e, i);

		for (uint64_t j = 0; j < wpb; j++) {
			uint64_t w = i * wpb + j, data;

			if (w * 64 >= ds && w * 64 + 64 <= sb2)
				data = ~0ull;
			else
				data = range_bits(w, ds, sb2);
			pmfuse_set_le64(&b->words[j], (fn(e, w) & data) | ~data);
		}
		pmfuse_blk_seal(&b->hdr, e->g.block_size);
	}
	pmfuse_pool_persist(e->pool, bm(e, 0), bm_size(e));
}

static uint64_t checkerboard(const struct env *e, uint64_t w)
{
	(void)e;
	(void)w;
	return 0xaaaaaaaaaaaaaaaaull;          /* odd blocks used, even ones free */
}

static uint64_t free_tail(const struct env *e, uint64_t w)
{
	return ~range_bits(w, e->g.sb2_block - 3000, e->g.sb2_block);
}

/*
 * 1 TiB of 4 KiB blocks (the filesystem is larger than the fake pool, which only holds the log
 * and the 8323 bitmap blocks): format, open, and the worst searches stay fast thanks to the
 * group summaries.
 */
static void test_large(void **state)
{
	(void)state;
	uint64_t nblocks = th_scaled(1ull << 28);
	double t0 = now(), t_format, t_open, t_fail, t_ok, t_far;
	struct env *e = env_bare(4096, nblocks, 0);
	uint64_t ds = e->g.data_start, sb2 = e->g.sb2_block, s, l, n = 0;
	struct pmfuse_tx *tx;

	t_format = now() - t0;
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), sb2 - ds);

	paint(e, checkerboard);
	t0 = now();
	env_reopen(e);
	t_open = now() - t0;
	assert_int_equal(pmfuse_alloc_count_free(e->pool, &e->g, &n), 0);
	assert_int_equal(n, (sb2 + 1) / 2 - (ds + 1) / 2);  /* the even blocks of [ds, sb2) */
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), n);

	tx = pmfuse_tx_begin(e->txm);
	t0 = now();
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, ds + 12345, 2, 1000, &s, &l), -ENOSPC);
	t_fail = now() - t0;
	t0 = now();
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, sb2 / 2 + 1, 1, 1000, &s, &l), 0);
	t_ok = now() - t0;
	assert_int_equal(s, (sb2 / 2 + 2) & ~1ull);
	assert_int_equal(l, 1);
	pmfuse_tx_abort(tx);

	paint(e, free_tail);
	env_reopen(e);
	assert_int_equal(pmfuse_alloc_free_blocks(e->al), 3000);
	tx = pmfuse_tx_begin(e->txm);
	t0 = now();
	assert_int_equal(pmfuse_alloc_extent(tx, e->al, 0, 2000, 2500, &s, &l), 0);
	t_far = now() - t0;
	assert_int_equal(s, sb2 - 3000);
	assert_int_equal(l, 2500);
	pmfuse_tx_commit(tx);
	assert_int_equal(pmfuse_alloc_check(e->al), 0);
	printf("# %llu blocks: format %.3f s, open %.3f s, failed search %.3f ms, search %.3f ms, "
	       "far search %.3f ms\n", (unsigned long long)nblocks, t_format, t_open, t_fail * 1e3,
	       t_ok * 1e3, t_far * 1e3);
	/* Generous bounds for sanitizer builds and loaded machines: a bit-by-bit scan of this
	 * bitmap takes seconds. */
	assert_true(t_fail < 0.25 && t_ok < 0.05 && t_far < 0.25);
	env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_geometry_and_format),
		cmocka_unit_test(test_model_bare_4k),
		cmocka_unit_test(test_model_bare_64k),
		cmocka_unit_test(test_model_volume_4k),
		cmocka_unit_test(test_model_volume_64k),
		cmocka_unit_test(test_tx_verify_volume),
		cmocka_unit_test(test_tx_verify_bare),
		cmocka_unit_test(test_fragmentation),
		cmocka_unit_test(test_enospc),
		cmocka_unit_test(test_goal),
		cmocka_unit_test(test_group_boundaries),
		cmocka_unit_test(test_corruption),
		cmocka_unit_test(test_index_mismatch),
		cmocka_unit_test(test_bad_free),
		cmocka_unit_test(test_crash),
		cmocka_unit_test(test_large),
	};
	const char *filter = getenv("PMFUSE_TEST_FILTER");

	th_seed();
	if (filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests_name("alloc", tests, NULL, NULL);
}
