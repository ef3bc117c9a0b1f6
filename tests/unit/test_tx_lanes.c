/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Transactions in several log lanes, against a model, on fake media:
 * - interleaved: one thread opens up to `lanes` transactions at once (pmfuse_tx_try_begin) and
 *   drives their steps in a seeded random order. Each transaction locks the cells and metadata
 *   blocks it touches (a DRAM lock table, as the callers' locks would) until it ends. Checked
 *   after every step: what no open transaction holds equals the committed model; at commit the
 *   transaction's cells hold what it stored, at abort what they held before. Now and then a
 *   crash image (none or all of the unpersisted stores kept) is recovered: every lane's open
 *   transaction is rolled back and the result is exactly the committed model. Verification of
 *   declared ranges is on, so the verifier's allowance for other lanes is exercised too;
 * - threads: more threads than lanes, each on cells of its own, blocking in pmfuse_tx_begin;
 * - an overlap between two open transactions' declarations aborts the process (PMFUSE_TX_VERIFY);
 * - lane geometry: format and open checks, damaged lane headers, a pending transaction per lane
 *   (pmfuse_txm_probe), a header from before lanes; mkfs's lane choice and the feature bit.
 */
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tx/tx.h"
#include "util/util.h"

#define BS 4096u
#define POOL_BLOCKS 256u
#define POOL_SIZE (POOL_BLOCKS * BS)
#define LOG_START 2u
#define LANES 4u
#define LANE_BLOCKS 16u
#define LOG_BLOCKS (LANES * LANE_BLOCKS)
#define REGION_BLK 80u                 /* blocks 80..95: cells of CELL bytes (tx_add, add_zero) */
#define REGION_BLOCKS 16u
#define CELL 512u
#define NCELLS (REGION_BLOCKS * BS / CELL)
#define META_BLK 96u                   /* blocks 96..103: metadata blocks (add_meta, add_block) */
#define META_BLOCKS 8u
#define MODEL_SIZE ((META_BLK + META_BLOCKS - REGION_BLK) * BS)
#define NRES (NCELLS + META_BLOCKS)    /* lockable resources: cells, then metadata blocks */

static struct pmfuse_pool *new_pool(unsigned lanes)
{
	struct pmfuse_pool *pool;
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &pool), 0);
	assert_int_equal(pmfuse_txm_format(pool, BS, LOG_START, LANE_BLOCKS * lanes, lanes), 0);
	for (unsigned i = 0; i < META_BLOCKS; i++) {
		struct pmfuse_blk_hdr *h = pmfuse_pool_at(pool, (uint64_t)(META_BLK + i) * BS);
		pmfuse_blk_init(h, PMFUSE_BLK_STATE, META_BLK + i, PMFUSE_OWNER_FS, 0, BS);
		pmfuse_blk_seal(h, BS);
		pmfuse_pool_persist(pool, h, BS);
	}
	return pool;
}

static struct pmfuse_txm *open_txm(struct pmfuse_pool *pool, unsigned lanes, bool *recovered)
{
	struct pmfuse_txm *txm;
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LANE_BLOCKS * lanes, lanes, &txm,
					 recovered), 0);
	return txm;
}

static uint8_t *model_area(struct pmfuse_pool *pool)
{
	return pmfuse_pool_at(pool, (uint64_t)REGION_BLK * BS);
}

/* Byte range of resource i within the model area. */
static size_t res_off(unsigned i)
{
	return i < NCELLS ? (size_t)i * CELL : (size_t)(META_BLK - REGION_BLK + i - NCELLS) * BS;
}

static size_t res_len(unsigned i)
{
	return i < NCELLS ? CELL : BS;
}

/* Recomputes a log header's crc (which leaves gen out) after a test changed a field. */
static void reseal_log_hdr(struct pmfuse_log_hdr *h)
{
	uint8_t copy[BS];
	memcpy(copy, h, BS);
	memset(copy + offsetof(struct pmfuse_log_hdr, gen), 0, 8);
	h->hdr.crc.v = pmfuse_blk_crc((const struct pmfuse_blk_hdr *)copy, BS);
}

static void check_meta_blocks(struct pmfuse_pool *pool)
{
	th_check_sealed(pool, META_BLK, META_BLOCKS, BS);
}

/* ---- interleaved transactions from one thread -------------------------------------------- */

struct open_tx {
	struct pmfuse_tx *tx;          /* NULL: slot unused */
	uint8_t *shadow;               /* the model area as this transaction sees it */
	unsigned nops;
};

struct inter {
	struct th_rng r;
	struct pmfuse_pool *pool, *scratch;
	struct pmfuse_txm *txm;
	uint8_t *committed;            /* the model: what every ended transaction left */
	uint8_t *img;
	int owner[NRES];               /* index of the open transaction holding it, or -1 */
	struct open_tx t[LANES];
	unsigned nopen;
	uint64_t commits, aborts, full, crashes, max_open;
};

/* Everything no open transaction holds is as committed. */
static void check_unheld(struct inter *s)
{
	const uint8_t *p = model_area(s->pool);
	for (unsigned i = 0; i < NRES; i++)
		if (s->owner[i] < 0)
			assert_memory_equal(p + res_off(i), s->committed + res_off(i), res_len(i));
}

/* One store of transaction k into a resource it holds or takes; false when none is free. */
static int tx_step(struct inter *s, unsigned k)
{
	struct open_tx *o = &s->t[k];
	uint8_t *p = model_area(s->pool);
	unsigned res = (unsigned)th_rng_below(&s->r, NRES);
	uint8_t val = (uint8_t)(1 + th_rng_below(&s->r, 255));
	int rc;

	if (s->owner[res] >= 0 && s->owner[res] != (int)k)
		return 0;   /* held by another: the caller's lock would make us wait; skip */
	if (s->owner[res] < 0)   /* taking the lock: what we see now is what was committed */
		memcpy(o->shadow + res_off(res), s->committed + res_off(res), res_len(res));
	s->owner[res] = (int)k;
	if (res < NCELLS) {
		size_t len = 1 + th_rng_below(&s->r, CELL);
		size_t off = res_off(res) + th_rng_below(&s->r, CELL - len + 1);
		bool zeros = true;
		for (size_t i = 0; i < len && zeros; i++)
			zeros = p[off + i] == 0;
		rc = zeros && th_rng_below(&s->r, 2) ? pmfuse_tx_add_zero(o->tx, p + off, len)
						     : pmfuse_tx_add(o->tx, p + off, len);
		if (rc)
			return rc;
		memset(p + off, val, len);
		memset(o->shadow + off, val, len);
	} else {
		struct pmfuse_blk_hdr *h = (void *)(p + res_off(res));
		size_t len = 1 + th_rng_below(&s->r, 300);
		size_t at = 64 + th_rng_below(&s->r, BS - 64 - len);
		rc = th_rng_below(&s->r, 4) ? pmfuse_tx_add_meta(o->tx, h, (uint8_t *)h + at, len)
					    : pmfuse_tx_add_block(o->tx, h, false);
		if (rc)
			return rc;
		memset((uint8_t *)h + at, val, len);
		memset(o->shadow + res_off(res) + at, val, len);
	}
	o->nops++;
	return 0;
}

static void tx_end(struct inter *s, unsigned k, bool commit)
{
	struct open_tx *o = &s->t[k];
	const uint8_t *p = model_area(s->pool);

	if (commit) {
		assert_int_equal(pmfuse_tx_commit(o->tx), 0);
		for (unsigned i = 0; i < NRES; i++) {
			if (s->owner[i] != (int)k)
				continue;
			if (i >= NCELLS)   /* commit resealed the block */
				pmfuse_blk_seal((void *)(o->shadow + res_off(i)), BS);
			assert_memory_equal(p + res_off(i), o->shadow + res_off(i), res_len(i));
			memcpy(s->committed + res_off(i), o->shadow + res_off(i), res_len(i));
		}
		s->commits++;
	} else {
		pmfuse_tx_abort(o->tx);
		for (unsigned i = 0; i < NRES; i++)
			if (s->owner[i] == (int)k)
				assert_memory_equal(p + res_off(i), s->committed + res_off(i),
						    res_len(i));
		s->aborts++;
	}
	for (unsigned i = 0; i < NRES; i++)
		if (s->owner[i] == (int)k)
			s->owner[i] = -1;
	o->tx = NULL;
	s->nopen--;
}

static bool keep_every(void *arg, size_t unit) { return true; }

/* A power cut now: recovery rolls back every open transaction, leaving the committed model. */
static void crash_now(struct inter *s, bool keep_all)
{
	bool rec = false;
	pmfuse_pool_fake_crash_image(s->pool, s->img, keep_all ? keep_every : NULL, NULL);
	pmfuse_pool_fake_reset(s->scratch, s->img);
	struct pmfuse_txm *txm = open_txm(s->scratch, LANES, &rec);
	unsigned declared = 0;
	for (unsigned k = 0; k < LANES; k++)
		declared += s->t[k].tx && s->t[k].nops;
	if (declared)
		assert_true(rec);
	assert_memory_equal(model_area(s->scratch), s->committed, MODEL_SIZE);
	check_meta_blocks(s->scratch);
	pmfuse_txm_close(txm);
	txm = open_txm(s->scratch, LANES, &rec);
	assert_false(rec);
	pmfuse_txm_close(txm);
	s->crashes++;
}

static void test_interleaved_model(void **state)
{
	struct inter s = { 0 };
	th_rng_init(&s.r, th_seed() ^ 0x1a4e5);
	s.pool = new_pool(LANES);
	s.txm = open_txm(s.pool, LANES, NULL);
	assert_int_equal(pmfuse_txm_lanes(s.txm), LANES);
	assert_int_equal(pmfuse_txm_lane_bytes(s.txm), (LANE_BLOCKS - 1) * BS);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &s.scratch), 0);
	s.img = malloc(POOL_SIZE);
	s.committed = malloc(MODEL_SIZE);
	memcpy(s.committed, model_area(s.pool), MODEL_SIZE);
	for (unsigned k = 0; k < LANES; k++)
		s.t[k].shadow = malloc(MODEL_SIZE);
	for (unsigned i = 0; i < NRES; i++)
		s.owner[i] = -1;
	pmfuse_txm_set_verify(s.txm, true);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);   /* "rolled back", "too large for the log" */

	uint64_t n = th_scaled(20000);
	for (uint64_t step = 0; step < n; step++) {
		uint64_t what = th_rng_below(&s.r, 100);
		if (what < 15) {
			struct pmfuse_tx *tx = pmfuse_tx_try_begin(s.txm);
			if (s.nopen == LANES) {
				assert_null(tx);
				continue;
			}
			assert_non_null(tx);
			unsigned k = 0;
			while (s.t[k].tx)
				k++;
			for (unsigned j = 0; j < LANES; j++)   /* a lane no open transaction has */
				assert_true(!s.t[j].tx || pmfuse_tx_lane(s.t[j].tx) !=
							  pmfuse_tx_lane(tx));
			s.t[k].tx = tx;
			s.t[k].nops = 0;
			memcpy(s.t[k].shadow, s.committed, MODEL_SIZE);
			s.nopen++;
			s.max_open = PMFUSE_MAX(s.max_open, (uint64_t)s.nopen);
		} else if (what < 17) {
			crash_now(&s, th_rng_below(&s.r, 2));
		} else if (s.nopen) {
			unsigned k = (unsigned)th_rng_below(&s.r, LANES);
			while (!s.t[k].tx)
				k = (k + 1) % LANES;
			if (what < 85) {
				int rc = tx_step(&s, k);
				if (rc == -ENOSPC) {   /* the lane is full: the caller aborts */
					s.full++;
					tx_end(&s, k, false);
				} else {
					assert_int_equal(rc, 0);
				}
			} else {
				tx_end(&s, k, what < 95);
			}
		}
		check_unheld(&s);
		if (!s.nopen && th_rng_below(&s.r, 50) == 0) {
			bool rec = true;   /* all ended: a reopen recovers nothing */
			check_meta_blocks(s.pool);
			pmfuse_txm_close(s.txm);
			s.txm = open_txm(s.pool, LANES, &rec);
			assert_false(rec);
			pmfuse_txm_set_verify(s.txm, true);
		}
	}
	for (unsigned k = 0; k < LANES; k++)
		if (s.t[k].tx)
			tx_end(&s, k, true);
	assert_memory_equal(model_area(s.pool), s.committed, MODEL_SIZE);
	check_meta_blocks(s.pool);
	printf("# %llu steps: %llu commits, %llu aborts (%llu with a full lane), %llu crash "
	       "images recovered, up to %llu transactions open\n", (unsigned long long)n,
	       (unsigned long long)s.commits, (unsigned long long)s.aborts,
	       (unsigned long long)s.full, (unsigned long long)s.crashes,
	       (unsigned long long)s.max_open);
	assert_int_equal(s.max_open, LANES);
	assert_true(s.commits > 0 && s.aborts > 0 && s.crashes > 0);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	for (unsigned k = 0; k < LANES; k++)
		free(s.t[k].shadow);
	free(s.committed);
	free(s.img);
	pmfuse_txm_close(s.txm);
	pmfuse_pool_close(s.scratch);
	pmfuse_pool_close(s.pool);
}

/* ---- threads --------------------------------------------------------------------------------- */

#define NTHREADS 5
#define THREAD_LANES 2u
#define CELLS_PER_THREAD (NCELLS / NTHREADS)

struct worker {
	struct pmfuse_txm *txm;
	struct pmfuse_pool *pool;
	unsigned id;
	uint64_t seed, ntx;
	uint8_t model[CELLS_PER_THREAD * CELL];
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct th_rng r;
	uint8_t *mine = model_area(w->pool) + (size_t)w->id * CELLS_PER_THREAD * CELL;
	uint8_t shadow[sizeof(w->model)];

	th_rng_init(&r, w->seed);
	for (uint64_t i = 0; i < w->ntx; i++) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(w->txm);
		unsigned nops = 1 + (unsigned)th_rng_below(&r, 8);
		memcpy(shadow, w->model, sizeof(shadow));
		for (unsigned j = 0; j < nops; j++) {
			size_t len = 1 + th_rng_below(&r, 700);
			size_t off = th_rng_below(&r, sizeof(shadow) - len + 1);
			uint8_t val = (uint8_t)th_rng_next(&r);
			if (pmfuse_tx_add(tx, mine + off, len))
				abort();   /* 8 x 700 bytes fit a lane: a bug */
			memset(mine + off, val, len);
			memset(shadow + off, val, len);
		}
		if (th_rng_below(&r, 4)) {
			pmfuse_tx_commit(tx);
			memcpy(w->model, shadow, sizeof(shadow));
		} else {
			pmfuse_tx_abort(tx);
		}
		if (memcmp(mine, w->model, sizeof(w->model)))
			abort();
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct pmfuse_pool *pool = new_pool(THREAD_LANES);
	struct pmfuse_txm *txm = open_txm(pool, THREAD_LANES, NULL);
	struct worker *w = calloc(NTHREADS, sizeof(*w));
	pthread_t th[NTHREADS];
	uint64_t seed = th_seed();

	pmfuse_txm_set_verify(txm, true);
	for (unsigned i = 0; i < NTHREADS; i++) {
		w[i] = (struct worker){ .txm = txm, .pool = pool, .id = i, .seed = seed + i,
					.ntx = th_scaled(400) };
		memcpy(w[i].model, model_area(pool) + (size_t)i * CELLS_PER_THREAD * CELL,
		       sizeof(w[i].model));
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	for (unsigned i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	for (unsigned i = 0; i < NTHREADS; i++)
		assert_memory_equal(model_area(pool) + (size_t)i * CELLS_PER_THREAD * CELL,
				    w[i].model, sizeof(w[i].model));
	/* and durably so: a power cut now recovers nothing and changes nothing */
	uint8_t *img = malloc(POOL_SIZE);
	struct pmfuse_pool *scratch;
	bool rec = true;
	pmfuse_pool_fake_crash_image(pool, img, NULL, NULL);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, img, &scratch), 0);
	pmfuse_txm_close(open_txm(scratch, THREAD_LANES, &rec));
	assert_false(rec);
	assert_memory_equal(model_area(scratch), model_area(pool), MODEL_SIZE);
	pmfuse_pool_close(scratch);
	free(img);
	free(w);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
}

/* ---- overlapping declarations ---------------------------------------------------------------- */

/* Runs fn in a child process: its exit status, or 128 + the signal that ended it. */
static int in_child(void (*fn)(void))
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fn();
		_exit(0);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
}

static struct pmfuse_txm *child_txm;

static void overlap_add(void)
{
	uint8_t *p = model_area(pmfuse_txm_pool(child_txm));
	struct pmfuse_tx *a = pmfuse_tx_try_begin(child_txm), *b = pmfuse_tx_try_begin(child_txm);
	pmfuse_tx_add(a, p + 100, 100);
	pmfuse_tx_add(b, p + 150, 10);     /* inside a's range */
}

static void overlap_new_over_logged(void)
{
	uint8_t *p = model_area(pmfuse_txm_pool(child_txm));
	struct pmfuse_tx *a = pmfuse_tx_try_begin(child_txm), *b = pmfuse_tx_try_begin(child_txm);
	pmfuse_tx_add(a, p + 4000, 200);
	pmfuse_tx_add(a, p + 100, 100);
	pmfuse_tx_add_new(b, p + 50, 51);  /* its last byte is a's first */
}

static void overlap_meta_crc(void)
{
	struct pmfuse_pool *pool = pmfuse_txm_pool(child_txm);
	struct pmfuse_blk_hdr *h = pmfuse_pool_at(pool, (uint64_t)META_BLK * BS);
	struct pmfuse_tx *a = pmfuse_tx_try_begin(child_txm), *b = pmfuse_tx_try_begin(child_txm);
	/* different bytes of one block, but both reseal its crc: not two writers at once */
	pmfuse_tx_add_meta(a, h, (uint8_t *)h + 100, 8);
	pmfuse_tx_add_meta(b, h, (uint8_t *)h + 200, 8);
}

static void disjoint_ok(void)
{
	uint8_t *p = model_area(pmfuse_txm_pool(child_txm));
	struct pmfuse_tx *a = pmfuse_tx_try_begin(child_txm), *b = pmfuse_tx_try_begin(child_txm);
	pmfuse_tx_add(a, p + 100, 100);
	pmfuse_tx_add(a, p + 150, 100);    /* a's own ranges may overlap */
	pmfuse_tx_add(b, p + 250, 100);    /* touching is not overlapping */
	pmfuse_tx_add(b, p + 50, 50);
	pmfuse_tx_add(b, p + 0, 50);
	pmfuse_tx_add_zero(b, p + 1000, 10);
	memset(p + 1000, 1, 10);
	pmfuse_tx_commit(a);
	pmfuse_tx_add(b, p + 120, 10);     /* a ended: its ranges are free again */
	pmfuse_tx_abort(b);
	struct pmfuse_tx *c = pmfuse_tx_try_begin(child_txm);
	pmfuse_tx_add(c, p + 0, 2000);     /* b ended too */
	pmfuse_tx_commit(c);
	exit(p[1000] == 0 ? 0 : 3);
}

static void test_overlap_aborts(void **state)
{
#ifndef PMFUSE_TX_VERIFY
	skip();   /* the registry of declared ranges is a PMFUSE_TX_VERIFY check */
#endif
	struct pmfuse_pool *pool = new_pool(LANES);
	child_txm = open_txm(pool, LANES, NULL);
	assert_int_equal(in_child(overlap_add), 128 + SIGABRT);
	assert_int_equal(in_child(overlap_new_over_logged), 128 + SIGABRT);
	assert_int_equal(in_child(overlap_meta_crc), 128 + SIGABRT);
	assert_int_equal(in_child(disjoint_ok), 0);
	pmfuse_txm_close(child_txm);
	pmfuse_pool_close(pool);
}

/* ---- geometry, damage, pending lanes --------------------------------------------------------- */

static void test_geometry_and_damage(void **state)
{
	struct pmfuse_pool *pool;
	struct pmfuse_txm *txm;
	unsigned pending;
	char msg[200];

	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &pool), 0);
	assert_int_equal(pmfuse_txm_format(pool, BS, LOG_START, 64, 3), -EINVAL);  /* 64 % 3 */
	assert_int_equal(pmfuse_txm_format(pool, BS, LOG_START, 64, 0), -EINVAL);
	assert_int_equal(pmfuse_txm_format(pool, BS, LOG_START, 64, 64), -EINVAL); /* 1 block */
	assert_int_equal(pmfuse_txm_format(pool, BS, LOG_START, 64, 32), 0);       /* 2 each */
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, 64, 32, &txm, NULL), 0);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);

	pool = new_pool(LANES);
	/* the wrong lane count: lane 1 of 2 would be lane 2 of 4 */
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LOG_BLOCKS, 2, &txm, NULL),
			 -EUCLEAN);
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LOG_BLOCKS, 1, &txm, NULL),
			 -EUCLEAN);
	assert_int_equal(pmfuse_txm_probe(pool, BS, LOG_START, LOG_BLOCKS, LANES, &pending, msg,
					  sizeof(msg)), 0);
	assert_int_equal(pending, 0);

	/* two lanes left with a transaction each: the probe counts them, open rolls both back */
	txm = open_txm(pool, LANES, NULL);
	uint8_t *p = model_area(pool), *was = malloc(MODEL_SIZE), *img = malloc(POOL_SIZE);
	memcpy(was, p, MODEL_SIZE);
	struct pmfuse_tx *a = pmfuse_tx_try_begin(txm), *b = pmfuse_tx_try_begin(txm);
	struct pmfuse_tx *c = pmfuse_tx_try_begin(txm);
	assert_int_equal(pmfuse_tx_add(a, p + 10, 10), 0);
	memset(p + 10, 0xaa, 10);
	assert_int_equal(pmfuse_tx_add(c, p + 3000, 100), 0);
	memset(p + 3000, 0xcc, 100);
	assert_int_equal(pmfuse_tx_add(b, p + 5000, 10), 0);
	memset(p + 5000, 0xbb, 10);
	pmfuse_tx_commit(b);
	memcpy(was + 5000, p + 5000, 10);
	memcpy(img, pmfuse_pool_base(pool), POOL_SIZE);   /* everything reached the media */
	struct pmfuse_pool *crashed;
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, img, &crashed), 0);
	assert_int_equal(pmfuse_txm_probe(crashed, BS, LOG_START, LOG_BLOCKS, LANES, &pending,
					  msg, sizeof(msg)), 0);
	assert_int_equal(pending, 2);
	bool rec = false;
	pmfuse_txm_close(open_txm(crashed, LANES, &rec));
	assert_true(rec);
	assert_memory_equal(model_area(crashed), was, MODEL_SIZE);
	assert_int_equal(pmfuse_txm_probe(crashed, BS, LOG_START, LOG_BLOCKS, LANES, &pending,
					  msg, sizeof(msg)), 0);
	assert_int_equal(pending, 0);

	/* a damaged header of the last lane: the probe and the open refuse, nothing written */
	struct pmfuse_log_hdr *h3 = pmfuse_pool_at(crashed,
						   (uint64_t)(LOG_START + 3 * LANE_BLOCKS) * BS);
	h3->pad[0].v ^= 1;
	assert_int_equal(pmfuse_txm_probe(crashed, BS, LOG_START, LOG_BLOCKS, LANES, &pending,
					  msg, sizeof(msg)), -EUCLEAN);
	assert_non_null(strstr(msg, "checksum"));
	struct pmfuse_txm *refused;   /* a failed open clears it: not the live txm */
	assert_int_equal(pmfuse_txm_open(crashed, BS, LOG_START, LOG_BLOCKS, LANES, &refused,
					 NULL), -EUCLEAN);
	h3->pad[0].v ^= 1;
	h3->lane.v = 2;   /* a sound block that says it is another lane */
	reseal_log_hdr(h3);
	assert_int_equal(pmfuse_txm_open(crashed, BS, LOG_START, LOG_BLOCKS, LANES, &refused,
					 NULL), -EUCLEAN);
	pmfuse_pool_close(crashed);
	pmfuse_tx_abort(a);
	pmfuse_tx_abort(c);
	assert_memory_equal(p, was, MODEL_SIZE);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);

	/* a log formatted before lanes (lane and lanes zero) opens as one lane */
	pool = new_pool(1);
	struct pmfuse_log_hdr *h = pmfuse_pool_at(pool, (uint64_t)LOG_START * BS);
	h->lanes.v = 0;
	reseal_log_hdr(h);
	pmfuse_txm_close(open_txm(pool, 1, NULL));
	h->lanes.v = 2;   /* but not a header that names another count */
	reseal_log_hdr(h);
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LANE_BLOCKS, 1, &txm, NULL),
			 -EUCLEAN);
	free(was);
	free(img);
	pmfuse_pool_close(pool);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
}

/* ---- mkfs and the volume ------------------------------------------------------------------- */

static struct pmfuse_pool *mkfs_pool(size_t size, const struct pmfuse_mkfs_opts *o, int *rc)
{
	struct pmfuse_pool *pool;
	assert_int_equal(pmfuse_pool_fake_new(size, NULL, &pool), 0);
	*rc = pmfuse_mkfs(pool, o);
	return pool;
}

static void test_mkfs_lanes(void **state)
{
	struct pmfuse_volume *vol;
	struct pmfuse_mkfs_opts o = { .log_lanes = 4 };
	char msg[256];
	int rc;

	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	/* asked for 4 lanes on a pool whose default log is 32 blocks: 4 x 32 */
	struct pmfuse_pool *pool = mkfs_pool(8u << 20, &o, &rc);
	assert_int_equal(rc, 0);
	assert_int_equal(pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(pmfuse_le32(vol->sb.log_lanes), 4);
	assert_int_equal(pmfuse_le64(vol->sb.log_blocks), 128);
	assert_true(pmfuse_le64(vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_LOG_LANES);
	assert_int_equal(pmfuse_txm_lanes(vol->txm), 4);
	/* a transaction runs in each lane at once */
	struct pmfuse_tx *tx[4];
	for (unsigned i = 0; i < 4; i++)
		assert_non_null(tx[i] = pmfuse_tx_try_begin(vol->txm));
	assert_null(pmfuse_tx_try_begin(vol->txm));
	for (unsigned i = 0; i < 4; i++)
		pmfuse_tx_commit(tx[i]);
	pmfuse_volume_close(vol);

	/* the superblock must agree with the feature bit */
	struct pmfuse_sb *sb = pmfuse_pool_at(pool, 0);
	struct pmfuse_sb saved = *sb;
	sb->log_lanes.v = 1;   /* the bit without lanes */
	sb->crc.v = 0;
	sb->crc.v = pmfuse_crc32c(0, sb, sizeof(*sb));
	assert_int_not_equal(pmfuse_sb_check(sb, 0, 8u << 20, msg, sizeof(msg)), 0);
	assert_non_null(strstr(msg, "lanes"));
	*sb = saved;
	sb->incompat.v = 0;    /* lanes without the bit */
	sb->crc.v = 0;
	sb->crc.v = pmfuse_crc32c(0, sb, sizeof(*sb));
	assert_int_not_equal(pmfuse_sb_check(sb, 0, 8u << 20, msg, sizeof(msg)), 0);
	*sb = saved;
	sb->log_lanes.v = 3;   /* 128 blocks do not divide into 3 */
	sb->crc.v = 0;
	sb->crc.v = pmfuse_crc32c(0, sb, sizeof(*sb));
	assert_int_not_equal(pmfuse_sb_check(sb, 0, 8u << 20, msg, sizeof(msg)), 0);
	*sb = saved;
	pmfuse_pool_close(pool);

	/* a size and lanes that do not divide, too many lanes */
	o = (struct pmfuse_mkfs_opts){ .log_blocks = 100, .log_lanes = 3 };
	pmfuse_pool_close(mkfs_pool(8u << 20, &o, &rc));
	assert_int_equal(rc, -EINVAL);
	o = (struct pmfuse_mkfs_opts){ .log_lanes = PMFUSE_LOG_LANES_MAX + 1 };
	pmfuse_pool_close(mkfs_pool(8u << 20, &o, &rc));
	assert_int_equal(rc, -EINVAL);

	/* one lane asked for: no feature bit, the format older code reads */
	o = (struct pmfuse_mkfs_opts){ .log_lanes = 1 };
	pool = mkfs_pool(64u << 20, &o, &rc);
	assert_int_equal(rc, 0);
	sb = pmfuse_pool_at(pool, 0);
	assert_int_equal(pmfuse_le32(sb->log_lanes), 0);
	assert_false(pmfuse_le64(sb->incompat) & PMFUSE_FEATURE_INCOMPAT_LOG_LANES);
	pmfuse_pool_close(pool);

	/* by default: lanes divide the log and keep 32 blocks each */
	o = (struct pmfuse_mkfs_opts){ 0 };
	pool = mkfs_pool(512u << 20, &o, &rc);
	assert_int_equal(rc, 0);
	sb = pmfuse_pool_at(pool, 0);
	unsigned lanes = pmfuse_le32(sb->log_lanes) ? pmfuse_le32(sb->log_lanes) : 1;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	assert_int_equal(pmfuse_le64(sb->log_blocks) % lanes, 0);
	assert_true(pmfuse_le64(sb->log_blocks) / lanes >= 32);
	assert_true(lanes <= (cpus > 1 ? (unsigned)cpus : 1u));
	printf("# a 512 MiB pool gets %u lanes of %llu blocks (%ld CPUs)\n", lanes,
	       (unsigned long long)(pmfuse_le64(sb->log_blocks) / lanes), cpus);
	assert_int_equal(pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(pmfuse_txm_lanes(vol->txm), lanes);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_interleaved_model),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_overlap_aborts),
		cmocka_unit_test(test_geometry_and_damage),
		cmocka_unit_test(test_mkfs_lanes),
	};
	th_seed();
	return cmocka_run_group_tests_name("tx_lanes", tests, NULL, NULL);
}
