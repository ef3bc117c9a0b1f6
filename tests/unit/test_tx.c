/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Transactions against a model, on fake media without the rest of the filesystem:
 * - commit makes every declared range durable before it returns; abort restores them exactly;
 * - seeded random transactions (overlapping ranges, whole blocks, metadata blocks, new ranges,
 *   commits and aborts) match a byte model;
 * - crash sweep: at every barrier of a workload, images with none, all and random subsets of the
 *   unpersisted 8-byte units are recovered, and each must be the state before or after the
 *   transaction in flight;
 * - log full, damaged log, verification of undeclared stores, threads.
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
#define LOG_BLOCKS 32u
#define REGION_BLK 64u                 /* blocks 64..127: ranges declared with tx_add */
#define REGION_BLOCKS 64u
#define META_BLK 128u                  /* blocks 128..135: metadata blocks (add_meta) */
#define META_BLOCKS 8u
#define NEW_BLK 136u                   /* blocks 136..143: declared new */
#define NEW_BLOCKS 8u
#define REGION_SIZE (REGION_BLOCKS * BS)

static struct pmfuse_pool *new_pool(void)
{
	struct pmfuse_pool *pool;
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &pool), 0);
	assert_int_equal(pmfuse_txm_format(pool, BS, LOG_START, LOG_BLOCKS, 1), 0);
	for (unsigned i = 0; i < META_BLOCKS; i++) {
		struct pmfuse_blk_hdr *h = pmfuse_pool_at(pool, (uint64_t)(META_BLK + i) * BS);
		pmfuse_blk_init(h, PMFUSE_BLK_STATE, META_BLK + i, PMFUSE_OWNER_FS, 0, BS);
		pmfuse_blk_seal(h, BS);
		pmfuse_pool_persist(pool, h, BS);
	}
	return pool;
}

static struct pmfuse_txm *open_txm(struct pmfuse_pool *pool, bool *recovered)
{
	struct pmfuse_txm *txm;
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LOG_BLOCKS, 1, &txm, recovered), 0);
	return txm;
}

static uint8_t *region(struct pmfuse_pool *pool)
{
	return pmfuse_pool_at(pool, (uint64_t)REGION_BLK * BS);
}

static void check_meta_blocks(struct pmfuse_pool *pool)
{
	th_check_sealed(pool, META_BLK, META_BLOCKS, BS);
}

/* ---- one random transaction, applied to the pool and described for the model --------------- */

struct op {
	uint8_t kind;           /* 0: add, 1: add whole block, 2: add_meta, 3: add_new */
	uint32_t off, len;      /* add/add_new: offset in the region or new area; meta: block idx */
	uint8_t val;
};

#define MAX_OPS 12
struct txdesc {
	unsigned nops;
	struct op ops[MAX_OPS];
	bool commit;
};

static void random_tx(struct th_rng *r, struct txdesc *d, bool allow_abort)
{
	d->nops = 1 + (unsigned)th_rng_below(r, MAX_OPS - 1);
	d->commit = !allow_abort || th_rng_below(r, 4) != 0;
	/* op 0 always bumps the first region byte so that every committed tx changes the region */
	d->ops[0] = (struct op){ 0, 0, 8, (uint8_t)th_rng_next(r) };
	for (unsigned i = 1; i < d->nops; i++) {
		struct op *o = &d->ops[i];
		o->kind = (uint8_t)th_rng_below(r, 4);
		o->val = (uint8_t)th_rng_next(r);
		switch (o->kind) {
		case 0:
			o->len = 1 + (uint32_t)th_rng_below(r, th_rng_below(r, 8) ? 64 : 3000);
			o->off = (uint32_t)th_rng_below(r, REGION_SIZE - o->len);
			break;
		case 1:
			o->off = (uint32_t)th_rng_below(r, REGION_BLOCKS) * BS;
			o->len = BS;
			break;
		case 2:
			o->off = (uint32_t)th_rng_below(r, META_BLOCKS);
			o->len = 1 + (uint32_t)th_rng_below(r, 200);
			break;
		case 3:
			o->len = 1 + (uint32_t)th_rng_below(r, 2000);
			o->off = (uint32_t)th_rng_below(r, NEW_BLOCKS * BS - o->len);
			break;
		}
	}
}

/* Applies d's stores to buf, a copy of [REGION_BLK, NEW_BLK + NEW_BLOCKS) (for the model). */
static void model_apply(uint8_t *buf, const struct txdesc *d)
{
	for (unsigned i = 0; i < d->nops; i++) {
		const struct op *o = &d->ops[i];
		switch (o->kind) {
		case 0: case 1:
			memset(buf + o->off, o->val, o->len);
			break;
		case 2: {
			uint8_t *blk = buf + (META_BLK - REGION_BLK + o->off) * BS;
			memset(blk + 64 + o->len, o->val, o->len);
			pmfuse_blk_seal((struct pmfuse_blk_hdr *)blk, BS);
			break;
		}
		case 3:
			memset(buf + (NEW_BLK - REGION_BLK) * BS + o->off, o->val, o->len);
			break;
		}
	}
}

static int run_tx(struct pmfuse_txm *txm, const struct txdesc *d)
{
	struct pmfuse_pool *pool = pmfuse_txm_pool(txm);
	struct pmfuse_tx *tx = pmfuse_tx_begin(txm);
	uint8_t *reg = region(pool);
	int rc = 0;

	for (unsigned i = 0; i < d->nops && !rc; i++) {
		const struct op *o = &d->ops[i];
		switch (o->kind) {
		case 0: case 1:
			rc = pmfuse_tx_add(tx, reg + o->off, o->len);
			if (!rc)
				memset(reg + o->off, o->val, o->len);
			break;
		case 2: {
			struct pmfuse_blk_hdr *h = pmfuse_pool_at(pool, (uint64_t)(META_BLK + o->off) * BS);
			uint8_t *p = (uint8_t *)h + 64 + o->len;
			rc = pmfuse_tx_add_meta(tx, h, p, o->len);
			if (!rc)
				memset(p, o->val, o->len);
			break;
		}
		case 3: {
			uint8_t *p = pmfuse_pool_at(pool, (uint64_t)NEW_BLK * BS + o->off);
			rc = pmfuse_tx_add_new(tx, p, o->len);
			if (!rc)
				memset(p, o->val, o->len);
			break;
		}
		}
	}
	if (rc || !d->commit) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	return pmfuse_tx_commit(tx);
}

#define MODEL_SIZE ((NEW_BLK + NEW_BLOCKS - REGION_BLK) * BS)

/*
 * Compares the pool with a model: the live area always; in the new area, only the ranges that
 * transaction d declared new (if d is not NULL): nothing else there was ever made durable.
 */
static bool matches(struct pmfuse_pool *pool, const uint8_t *model, const struct txdesc *d)
{
	size_t live = (NEW_BLK - REGION_BLK) * BS;
	const uint8_t *p = region(pool);
	if (memcmp(p, model, live))
		return false;
	for (unsigned i = 0; d && i < d->nops; i++) {
		const struct op *o = &d->ops[i];
		if (o->kind == 3 && memcmp(p + live + o->off, model + live + o->off, o->len))
			return false;
	}
	return true;
}

static void test_commit_durable_abort_restores(void **state)
{
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	uint8_t *reg = region(pool);
	const uint8_t *media = (const uint8_t *)pmfuse_pool_fake_media(pool) + REGION_BLK * BS;

	struct pmfuse_tx *tx = pmfuse_tx_begin(txm);
	assert_int_equal(pmfuse_tx_add(tx, reg + 100, 50), 0);
	memset(reg + 100, 0x5a, 50);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	assert_int_equal(media[100], 0x5a);     /* durable when commit returns */
	assert_int_equal(media[149], 0x5a);

	tx = pmfuse_tx_begin(txm);
	assert_int_equal(pmfuse_tx_add(tx, reg + 120, 100), 0);
	memset(reg + 120, 0x11, 100);
	assert_int_equal(pmfuse_tx_add(tx, reg + 120, 100), 0);   /* again: not logged twice */
	pmfuse_tx_abort(tx);
	assert_int_equal(reg[119], 0x5a);
	assert_int_equal(reg[149], 0x5a);
	assert_int_equal(reg[150], 0);
	assert_int_equal(media[120], 0x5a);       /* the restore is durable too */

	/* a transaction that declares nothing costs no barrier */
	uint64_t before = pmfuse_pool_barriers(pool);
	pmfuse_tx_commit(pmfuse_tx_begin(txm));
	assert_int_equal(pmfuse_pool_barriers(pool), before);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
}

static void test_random_model(void **state)
{
	struct th_rng r;
	th_rng_init(&r, th_seed() ^ 0x7a11);
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	uint8_t *model = malloc(MODEL_SIZE);
	memcpy(model, region(pool), MODEL_SIZE);
	pmfuse_txm_set_verify(txm, true);

	uint64_t n = th_scaled(3000), commits = 0;
	for (uint64_t i = 0; i < n; i++) {
		struct txdesc d;
		random_tx(&r, &d, true);
		assert_int_equal(run_tx(txm, &d), 0);
		if (d.commit) {
			model_apply(model, &d);
			commits++;
			assert_true(matches(pool, model, &d));
		} else {
			assert_true(matches(pool, model, NULL));
			/* aborted new ranges keep their bytes: resync the model's new area */
			memcpy(model + (NEW_BLK - REGION_BLK) * BS,
			       region(pool) + (NEW_BLK - REGION_BLK) * BS, NEW_BLOCKS * BS);
		}
		check_meta_blocks(pool);
		if (i % 500 == 499) { /* reopen: nothing to recover after clean commits */
			bool rec = true;
			pmfuse_txm_close(txm);
			txm = open_txm(pool, &rec);
			assert_false(rec);
			pmfuse_txm_set_verify(txm, true);
		}
	}
	printf("# %llu transactions, %llu committed\n", (unsigned long long)n,
	       (unsigned long long)commits);
	free(model);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
}

/* ---- crash sweep ------------------------------------------------------------------------------ */

struct sweep {
	struct th_rng rng;
	uint8_t *img;
	struct pmfuse_pool *scratch;     /* where crash images are opened */
	const uint8_t *before, *after;   /* model of the tx in flight */
	bool after_new_known;
	int variant;
	const struct txdesc *d;
	uint64_t states, barriers, as_before, as_after;
};

static bool keep_random(void *arg, size_t unit)
{
	return th_rng_below(&((struct sweep *)arg)->rng, 2);
}

static bool keep_all(void *arg, size_t unit) { return true; }

static void check_image(struct sweep *s)
{
	struct pmfuse_pool *p = s->scratch;
	bool rec;
	pmfuse_pool_fake_reset(p, s->img);
	struct pmfuse_txm *txm = open_txm(p, &rec);
	bool b = matches(p, s->before, NULL);
	bool a = matches(p, s->after, s->after_new_known ? s->d : NULL);
	if (!a && !b) {
		const uint8_t *q = region(p);
		size_t db = 0, da = 0;
		while (db < MODEL_SIZE && q[db] == s->before[db])
			db++;
		while (da < MODEL_SIZE && q[da] == s->after[da])
			da++;
		fprintf(stderr, "crash state %llu (barrier %llu): neither before nor after (first "
			"difference from before at region byte %zu, from after at %zu)\n",
			(unsigned long long)s->states, (unsigned long long)s->barriers, db, da);
		fprintf(stderr, "variant %d, recovered %d, commit %d\n", s->variant, rec, s->d->commit);
		for (unsigned i = 0; i < s->d->nops; i++)
			fprintf(stderr, "  op kind %u off %u len %u\n", s->d->ops[i].kind,
				s->d->ops[i].off, s->d->ops[i].len);
		fail();
	}
	s->as_before += b;
	s->as_after += a && !b;
	check_meta_blocks(p);
	/* recovery left an empty log: reopening recovers nothing */
	pmfuse_txm_close(txm);
	txm = open_txm(p, &rec);
	assert_false(rec);
	pmfuse_txm_close(txm);
	s->states++;
}

static void sweep_hook(void *arg, struct pmfuse_pool *pool, uint64_t n)
{
	struct sweep *s = arg;
	s->barriers++;
	s->variant = 0;
	pmfuse_pool_fake_crash_image(pool, s->img, NULL, NULL);
	check_image(s);
	s->variant = 1;
	pmfuse_pool_fake_crash_image(pool, s->img, keep_all, NULL);
	check_image(s);
	for (int i = 0; i < 6; i++) {
		s->variant = 2 + i;
		pmfuse_pool_fake_crash_image(pool, s->img, keep_random, s);
		check_image(s);
	}
}

static void test_crash_sweep(void **state)
{
	struct sweep s = { 0 };
	th_rng_init(&s.rng, th_seed() ^ 0xc4a5);
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	uint8_t *before = malloc(MODEL_SIZE), *after = malloc(MODEL_SIZE);
	struct pmfuse_pool_fake_hook hook = { sweep_hook, &s };

	s.img = malloc(POOL_SIZE);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &s.scratch), 0);
	memcpy(before, region(pool), MODEL_SIZE);
	pmfuse_pool_fake_set_hook(pool, &hook);
	uint64_t n = th_scaled(300);
	for (uint64_t i = 0; i < n; i++) {
		struct txdesc d;
		random_tx(&s.rng, &d, true);
		memcpy(after, before, MODEL_SIZE);
		if (d.commit)
			model_apply(after, &d);
		s.before = before;
		s.after = after;
		s.after_new_known = d.commit;
		s.d = &d;
		assert_int_equal(run_tx(txm, &d), 0);
		memcpy(before, region(pool), MODEL_SIZE); /* includes the new area as it stands */
		assert_true(matches(pool, after, d.commit ? &d : NULL));
	}
	pmfuse_pool_fake_set_hook(pool, NULL);
	printf("# crash sweep: %llu barriers, %llu crash states checked (%llu as before, %llu as "
	       "after)\n", (unsigned long long)s.barriers, (unsigned long long)s.states,
	       (unsigned long long)s.as_before, (unsigned long long)s.as_after);
	assert_true(s.states >= 1000);
	assert_true(s.as_after > 0 && s.as_before > 0);
	free(before);
	free(after);
	free(s.img);
	pmfuse_pool_close(s.scratch);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
}

/*
 * Zero entries: a range declared with tx_add_zero costs one 24-byte entry; abort and recovery
 * after a crash at any barrier put the zeros back; commit keeps the new bytes. tx_add_written
 * ranges are not flushed again at commit (the caller did), only drained.
 */
static void test_zero_entries(void **state)
{
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	uint8_t *reg = region(pool), *img = malloc(POOL_SIZE);
	const uint8_t *media = (const uint8_t *)pmfuse_pool_fake_media(pool) + REGION_BLK * BS;
	uint8_t *log = (uint8_t *)pmfuse_pool_base(pool) + (LOG_START + 1) * BS;
	struct pmfuse_tx *tx;

	/* abort: zeros back, and the log grew by one header per range, whatever its length */
	tx = pmfuse_tx_begin(txm);
	assert_int_equal(pmfuse_tx_add_zero(tx, reg + 10, 3 * BS), 0);
	memset(reg + 10, 0xab, 3 * BS);
	assert_int_equal(pmfuse_tx_add_zero(tx, reg + 5 * BS, 7), 0);
	memset(reg + 5 * BS, 0xcd, 7);
	struct pmfuse_log_entry *e2 = (void *)(log + sizeof(struct pmfuse_log_entry));
	assert_int_equal(pmfuse_le32(e2->len), 7u | PMFUSE_LOG_ZERO);
	/* a crash now: recovery from this image must zero both ranges */
	memcpy(img, pmfuse_pool_base(pool), POOL_SIZE);
	pmfuse_tx_abort(tx);
	for (unsigned i = 0; i < 3 * BS; i++)
		assert_int_equal(reg[10 + i], 0);
	assert_int_equal(reg[5 * BS], 0);

	/* commit: new bytes stay and are durable */
	tx = pmfuse_tx_begin(txm);
	assert_int_equal(pmfuse_tx_add_zero(tx, reg + 10, 100), 0);
	memset(reg + 10, 0x42, 100);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	assert_int_equal(media[10], 0x42);
	assert_int_equal(media[109], 0x42);

	/* add_written: the caller flushed, commit drains (here: the flush is left out on purpose,
	 * so the bytes must not reach the fake media) */
	tx = pmfuse_tx_begin(txm);
	uint8_t *nb = (uint8_t *)pmfuse_pool_base(pool) + NEW_BLK * BS;
	assert_int_equal(pmfuse_tx_add_written(tx, nb, 64), 0);
	memset(nb, 0x99, 64);
	assert_int_equal(pmfuse_tx_commit(tx), 0);
	assert_int_equal(((const uint8_t *)pmfuse_pool_fake_media(pool))[NEW_BLK * BS], 0);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);

	bool rec;
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, img, &pool), 0);
	txm = open_txm(pool, &rec);
	assert_true(rec);
	reg = region(pool);
	for (unsigned i = 0; i < 3 * BS; i++)
		assert_int_equal(reg[10 + i], 0);
	for (unsigned i = 0; i < 7; i++)
		assert_int_equal(reg[5 * BS + i], 0);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
	free(img);
}

/* ---- limits and damage ------------------------------------------------------------------------ */

static void test_log_full(void **state)
{
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	uint8_t *reg = region(pool), *copy = malloc(REGION_SIZE);
	memcpy(copy, reg, REGION_SIZE);

	struct pmfuse_tx *tx = pmfuse_tx_begin(txm);
	int rc = 0;
	unsigned blk;
	for (blk = 0; blk < REGION_BLOCKS && !rc; blk++) {
		rc = pmfuse_tx_add(tx, reg + blk * BS, BS);
		if (!rc)
			memset(reg + blk * BS, 0xee, BS);
	}
	assert_int_equal(rc, -ENOSPC);
	assert_true(blk > LOG_BLOCKS / 2);
	assert_int_equal(reg[(blk - 1) * BS], 0); /* the refused range was not touched */
	pmfuse_tx_abort(tx);
	assert_memory_equal(reg, copy, REGION_SIZE);
	free(copy);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
}

/* A crash right after the first entry of a transaction: reopen rolls back. */
static void test_recovery_and_torn_entry(void **state)
{
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	uint8_t *reg = region(pool);
	struct pmfuse_tx *tx = pmfuse_tx_begin(txm);
	assert_int_equal(pmfuse_tx_add(tx, reg, 16), 0);
	memset(reg, 1, 16);
	assert_int_equal(pmfuse_tx_add(tx, reg + 4096, 16), 0);
	memset(reg + 4096, 2, 16);
	/* "crash": take the CPU view as the media, without committing */
	uint8_t *img = malloc(POOL_SIZE);
	memcpy(img, pmfuse_pool_base(pool), POOL_SIZE);
	pmfuse_tx_abort(tx);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);

	/* tear the second entry: its range must be left alone, the first restored */
	struct pmfuse_log_entry *e2 = (void *)(img + (LOG_START + 1) * BS +
					       sizeof(struct pmfuse_log_entry) + 16);
	uint8_t *reg_img = img + REGION_BLK * BS;
	reg_img[4096] = 0x77; /* as if the range had been written; must not happen, but the
				 check below shows a torn entry is not applied */
	e2->crc.v ^= 1;
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, img, &pool), 0);
	bool rec;
	txm = open_txm(pool, &rec);
	assert_true(rec);
	assert_int_equal(region(pool)[0], 0);
	assert_int_equal(region(pool)[4096], 0x77);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);

	/* a checksummed entry that points outside the pool is damage, not a torn write */
	e2->crc.v ^= 1;
	struct pmfuse_log_entry *e1 = (void *)(img + (LOG_START + 1) * BS);
	pmfuse_set_le64(&e1->off, (uint64_t)POOL_SIZE);
	pmfuse_set_le32(&e1->crc, pmfuse_crc32c(pmfuse_crc32c(0, e1, 20), e1 + 1, 16));
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, img, &pool), 0);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LOG_BLOCKS, 1, &txm, NULL), -EUCLEAN);
	pmfuse_pool_close(pool);
	free(img);
}

static void test_damaged_header(void **state)
{
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm;
	uint8_t *h = pmfuse_pool_at(pool, LOG_START * BS);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	for (size_t off = 0; off < BS; off += 97) {
		if (off >= offsetof(struct pmfuse_log_hdr, gen) &&
		    off < offsetof(struct pmfuse_log_hdr, gen) + 8)
			continue; /* gen is outside the crc by design */
		h[off] ^= 0x40;
		assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LOG_BLOCKS, 1, &txm, NULL),
				 -EUCLEAN);
		h[off] ^= 0x40;
	}
	assert_int_equal(pmfuse_txm_open(pool, BS, LOG_START, LOG_BLOCKS, 1, &txm, NULL), 0);
	pmfuse_txm_close(txm);
	/* geometry that does not fit */
	assert_int_equal(pmfuse_txm_open(pool, BS, POOL_BLOCKS - 1, 8, 1, &txm, NULL), -EUCLEAN);
	pmfuse_pool_close(pool);
}

/* The debug check catches a store outside the declared ranges (in a child: it aborts). */
static void test_verify_catches_undeclared(void **state)
{
#ifndef PMFUSE_TX_VERIFY
	skip();
#else
	for (int abort_it = 0; abort_it < 2; abort_it++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(2); /* the message is expected */
			struct pmfuse_pool *pool = new_pool();
			struct pmfuse_txm *txm = open_txm(pool, NULL);
			pmfuse_txm_set_verify(txm, true);
			struct pmfuse_tx *tx = pmfuse_tx_begin(txm);
			uint8_t *reg = region(pool);
			pmfuse_tx_add(tx, reg, 8);
			reg[0] = 1;
			reg[8] = 1; /* not declared */
			if (abort_it)
				pmfuse_tx_abort(tx);
			else
				pmfuse_tx_commit(tx);
			_exit(0);
		}
		int status;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
	}
	/* and a declared one passes */
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	pmfuse_txm_set_verify(txm, true);
	struct pmfuse_tx *tx = pmfuse_tx_begin(txm);
	pmfuse_tx_add(tx, region(pool), 16);
	region(pool)[15] = 3;
	pmfuse_tx_commit(tx);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
#endif
}

struct thr { struct pmfuse_txm *txm; unsigned id, n; };

static void *thread_main(void *arg)
{
	struct thr *t = arg;
	uint8_t *reg = region(pmfuse_txm_pool(t->txm));
	uint64_t *shared = (uint64_t *)reg, *mine = (uint64_t *)(reg + 64 + t->id * 64);
	for (unsigned i = 0; i < t->n; i++) {
		struct pmfuse_tx *tx;
		if (i % 5 == 0) { /* an aborted increment must leave no trace */
			tx = pmfuse_tx_begin(t->txm);
			if (pmfuse_tx_add(tx, shared, 8) || pmfuse_tx_add(tx, mine, 8))
				return (void *)1;
			*shared += 100;
			*mine += 100;
			pmfuse_tx_abort(tx);
		}
		tx = pmfuse_tx_begin(t->txm);
		if (pmfuse_tx_add(tx, shared, 8) || pmfuse_tx_add(tx, mine, 8))
			return (void *)1;
		(*shared)++;
		(*mine)++;
		pmfuse_tx_commit(tx);
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct pmfuse_pool *pool = new_pool();
	struct pmfuse_txm *txm = open_txm(pool, NULL);
	struct thr t[4];
	pthread_t th[4];
	for (unsigned i = 0; i < 4; i++) {
		t[i] = (struct thr){ txm, i, 400 };
		assert_int_equal(pthread_create(&th[i], NULL, thread_main, &t[i]), 0);
	}
	for (unsigned i = 0; i < 4; i++) {
		void *ret;
		pthread_join(th[i], &ret);
		assert_null(ret);
	}
	uint64_t *reg = (uint64_t *)region(pool);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(reg[8 + i * 8], 400);
	assert_int_equal(reg[0], 4 * 400);
	pmfuse_txm_close(txm);
	pmfuse_pool_close(pool);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commit_durable_abort_restores),
		cmocka_unit_test(test_random_model),
		cmocka_unit_test(test_crash_sweep),
		cmocka_unit_test(test_zero_entries),
		cmocka_unit_test(test_log_full),
		cmocka_unit_test(test_recovery_and_torn_entry),
		cmocka_unit_test(test_damaged_header),
		cmocka_unit_test(test_verify_catches_undeclared),
		cmocka_unit_test(test_threads),
	};
	th_seed();
	return cmocka_run_group_tests_name("tx", tests, NULL, NULL);
}
