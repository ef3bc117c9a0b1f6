/* SPDX-License-Identifier: BSD-3-Clause */
/* The file-level crash tests' driver: see crash_harness.h. */
#include "crash_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

const struct pmfuse_cred ch_cred = { .uid = 1000, .gid = 1000, .pid = 1, .umask = 022 };
const char *const ch_names[CH_NFILES] = { "a", "b", "c", "d" };

int ch_mount(struct pmfuse_pool *pool, struct ch_mounted *m)
{
	char msg[256] = "";
	int rc = pmfuse_volume_open(pool, 0, &m->vol, msg, sizeof(msg));

	if (rc) {
		fprintf(stderr, "volume does not open: %d %s\n", rc, msg);
		return rc;
	}
	rc = pmfuse_fs_open(m->vol, NULL, &m->fs);
	if (rc) {
		fprintf(stderr, "fs does not open: %d\n", rc);
		pmfuse_volume_close(m->vol);
	}
	return rc;
}

void ch_umount(struct ch_mounted *m)
{
	pmfuse_fs_close(m->fs);
	pmfuse_volume_close(m->vol);
}

uint64_t ch_ino_of(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_lookup(fs, PMFUSE_ROOT_INO, ch_names[i], &a), 0);
	pmfuse_fs_forget(fs, a.ino, 1);
	return a.ino;
}

void ch_fill(uint8_t *buf, size_t len, uint32_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)((i * 2654435761u + seed) >> 13);
}

void ch_read_state(const struct ch_test *t, struct pmfuse_fs *fs, struct ch_state *s)
{
	memset(s, 0, sizeof(*s));
	for (int i = 0; i < CH_NFILES; i++) {
		struct pmfuse_attr a;
		ssize_t n;

		if (pmfuse_fs_lookup(fs, PMFUSE_ROOT_INO, ch_names[i], &a))
			continue;
		assert_true(a.size <= CH_CAP);
		s->present[i] = true;
		s->size[i] = a.size;
		n = pmfuse_fs_pread(fs, a.ino, s->data[i], CH_CAP, 0);
		assert_int_equal(n, a.size);
		pmfuse_fs_forget(fs, a.ino, 1);
	}
	if (t->check_state)
		t->check_state(s);
}

static bool same_state(const struct ch_state *x, const struct ch_state *y)
{
	for (int i = 0; i < CH_NFILES; i++)
		if (x->present[i] != y->present[i] || x->size[i] != y->size[i] ||
		    memcmp(x->data[i], y->data[i], x->size[i]))
			return false;
	return true;
}

/* Bytes [lo, hi) of got equal those of want (zero past want's size)? */
static bool same_bytes(const uint8_t *got, const uint8_t *want, uint64_t want_size, uint64_t lo,
		       uint64_t hi)
{
	for (uint64_t x = lo; x < hi; x++)
		if (got[x] != (x < want_size ? want[x] : 0))
			return false;
	return true;
}

/*
 * File i of t->got: before, after, or between; 0 before, 1 after, 2 between, -1 neither (why
 * says how). Between is judged per unit of `grain` bytes: a block for the images that keep
 * none or all of the stores in flight (a store's bytes reach the media together at a drain),
 * 8 bytes for random subsets (an in-place overwrite of an unshared block may be torn at any
 * 8-byte unit, as on real pmem).
 */
static int classify(const struct ch_test *t, int i, uint64_t grain, char *why, size_t whylen)
{
	const struct ch_state *b = t->before, *a = t->after, *g = t->got;
	uint64_t size = g->size[i], bsize;
	bool eb, ea;

	if (!g->present[i]) {
		if (!b->present[i])
			return 0;   /* absent before (and maybe being created) */
		if (!a->present[i])
			return 1;   /* being deleted */
		snprintf(why, whylen, "file %s is gone", ch_names[i]);
		return -1;
	}
	eb = b->present[i] && size == b->size[i] && !memcmp(g->data[i], b->data[i], size);
	ea = a->present[i] && size == a->size[i] && !memcmp(g->data[i], a->data[i], size);
	if (eb)
		return 0;
	if (ea)
		return 1;
	if (!a->present[i]) {
		snprintf(why, whylen, "file %s: neither its old bytes nor gone", ch_names[i]);
		return -1;
	}
	/* a file being created is empty before (then it gets a clone) */
	bsize = b->present[i] ? b->size[i] : 0;
	if (size < PMFUSE_MIN(bsize, a->size[i]) || size > PMFUSE_MAX(bsize, a->size[i])) {
		snprintf(why, whylen, "file %s: size %llu outside %llu..%llu", ch_names[i],
			 ULL(size), ULL(bsize), ULL(a->size[i]));
		return -1;
	}
	for (uint64_t lo = 0; lo < size; lo += grain) {
		uint64_t hi = PMFUSE_MIN(size, lo + grain);

		if (!same_bytes(g->data[i], b->data[i], bsize, lo, hi) &&
		    !same_bytes(g->data[i], a->data[i], a->size[i], lo, hi)) {
			snprintf(why, whylen, "file %s: bytes %llu..%llu hold neither their old value "
				 "nor their new one (sizes: got %llu, before %llu, after %llu)",
				 ch_names[i], ULL(lo), ULL(hi), ULL(size), ULL(bsize),
				 ULL(a->size[i]));
			return -1;
		}
	}
	return 2;
}

static const char *kind_name(const struct ch_test *t)
{
	return t->kind_names[t->op->kind];
}

static void check_image(struct ch_test *t, const char *variant, uint64_t grain)
{
	struct pmfuse_space_report rep;
	struct ch_mounted m;
	char msg[256] = "", why[256] = "";
	int rc;
	bool all_before = true, all_after = true;

	pmfuse_pool_fake_reset(t->scratch, t->img);
	rc = ch_mount(t->scratch, &m);
	if (rc) {
		fprintf(stderr, "barrier %llu (%s, %s): recovery failed\n", ULL(t->barriers),
			variant, kind_name(t));
		fail();
	}
	rc = pmfuse_fs_check_space(m.fs, &rep, msg, sizeof(msg));
	if (rc) {
		fprintf(stderr, "barrier %llu (%s, %s): space check: %s\n", ULL(t->barriers),
			variant, kind_name(t), msg);
		fail();
	}
	th_fsck_clean(m.fs);     /* and fsck's checks find nothing after recovery */
	assert_int_equal(pmfuse_btree_count(&m.fs->orphans), 0);
	ch_read_state(t, m.fs, t->got);
	if (t->check_image)
		t->check_image(t, &m);
	for (int i = 0; i < CH_NFILES; i++) {
		int k = classify(t, i, grain, why, sizeof(why));

		if (k < 0) {
			fprintf(stderr, "barrier %llu (%s, %s): %s\n", ULL(t->barriers), variant,
				kind_name(t), why);
			fail();
		}
		if (t->unchanged[i]) {
			assert_int_equal(k, 0);   /* not touched by the operation */
			continue;
		}
		if (k == 2 && t->must_be_atomic) {
			fprintf(stderr, "barrier %llu (%s, %s): file %s between its states\n",
				ULL(t->barriers), variant, kind_name(t), ch_names[i]);
			fail();
		}
		all_before &= k == 0;
		all_after &= k == 1;
	}
	ch_umount(&m);
	t->states++;
	if (all_before)
		t->as_before++;
	else if (all_after)
		t->as_after++;
	else
		t->between++;
}

static bool keep_random(void *arg, size_t unit)
{
	(void)unit;
	return th_rng_below(&((struct ch_test *)arg)->rng, 2);
}

static bool keep_all(void *arg, size_t unit)
{
	(void)arg;
	(void)unit;
	return true;
}

static void crash_hook(void *arg, struct pmfuse_pool *pool, uint64_t n)
{
	struct ch_test *t = arg;

	(void)n;
	t->barriers++;
	t->barriers_of[t->op->kind]++;
	/* long operations (a clone in many transactions): every barrier of the first 48, then
	 * every third */
	if (++t->op_barriers > 48 && t->op_barriers % 3)
		return;
	pmfuse_pool_fake_crash_image(pool, t->img, NULL, NULL);
	check_image(t, "none kept", CH_BS);
	if (!pmfuse_pool_fake_crash_image(pool, t->img, keep_all, NULL))
		return;   /* nothing in flight: every image is the same */
	check_image(t, "all kept", CH_BS);
	for (unsigned i = 0; i < t->random_images; i++) {
		pmfuse_pool_fake_crash_image(pool, t->img, keep_random, t);
		check_image(t, "random subset", 8);
	}
}

void ch_setup(struct ch_test *t, const struct pmfuse_mkfs_opts *opts)
{
	assert_true(t->nkinds > 0 && t->nkinds <= CH_MAX_KINDS);
	t->before = malloc(sizeof(*t->before));
	t->after = malloc(sizeof(*t->after));
	t->got = malloc(sizeof(*t->got));
	t->img = malloc(CH_POOL_SIZE);
	assert_non_null(t->before);
	assert_non_null(t->after);
	assert_non_null(t->got);
	assert_non_null(t->img);
	th_rng_init(&t->rng, th_seed() ^ 0x5eed);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);   /* recovery messages, thousands of them */
	assert_int_equal(pmfuse_pool_fake_new(CH_POOL_SIZE, NULL, &t->pool), 0);
	assert_int_equal(pmfuse_pool_fake_new(CH_POOL_SIZE, NULL, &t->scratch), 0);
	assert_int_equal(pmfuse_mkfs(t->pool, opts), 0);
	assert_int_equal(ch_mount(t->pool, &t->live), 0);
}

void ch_read_before(struct ch_test *t)
{
	ch_read_state(t, t->live.fs, t->before);
}

void ch_step(struct ch_test *t, const struct ch_op *op)
{
	struct pmfuse_pool_fake_hook hook = { crash_hook, t };
	struct pmfuse_pool *shadow;
	struct ch_mounted sm;

	if (getenv("PMFUSE_CRASH_TRACE"))   /* which operation a failure came in */
		fprintf(stderr, "op %llu: %s src %d dst %d off %llu len %llu doff %llu seed %u\n",
			ULL(t->done), t->kind_names[op->kind], op->src, op->dst, ULL(op->off),
			ULL(op->len), ULL(op->doff), op->seed);
	/* the state after, from a copy of the pool */
	assert_int_equal(pmfuse_pool_fake_new(CH_POOL_SIZE, pmfuse_pool_base(t->pool), &shadow),
			 0);
	assert_int_equal(ch_mount(shadow, &sm), 0);
	t->run_op(sm.fs, op);
	ch_read_state(t, sm.fs, t->after);
	ch_umount(&sm);
	pmfuse_pool_close(shadow);

	t->op = op;
	t->op_barriers = 0;
	t->must_be_atomic = t->atomic && t->atomic(op, t->before);
	for (int k = 0; k < CH_NFILES; k++)
		t->unchanged[k] = t->before->present[k] == t->after->present[k] &&
				  t->before->size[k] == t->after->size[k] &&
				  !memcmp(t->before->data[k], t->after->data[k],
					  t->before->size[k]);
	if (t->around_op)
		t->around_op(t, op, false);
	pmfuse_pool_fake_set_hook(t->pool, &hook);
	t->run_op(t->live.fs, op);
	pmfuse_pool_fake_set_hook(t->pool, NULL);
	if (t->around_op)
		t->around_op(t, op, true);
	ch_read_state(t, t->live.fs, t->got);
	assert_true(same_state(t->got, t->after));
	t->ops_of[op->kind]++;
	t->done++;
}

void ch_run(struct ch_test *t, const struct ch_op *first, size_t nfirst, uint64_t nops,
	    bool (*pick)(struct th_rng *r, const struct ch_state *s, struct ch_op *op),
	    struct th_rng *rng)
{
	for (uint64_t i = 0; i < nops + nfirst; i++) {
		struct ch_op op;

		ch_read_before(t);
		if (i < nfirst)
			op = first[i];
		else
			while (!pick(rng, t->before, &op))
				;
		ch_step(t, &op);
	}
}

void ch_finish(struct ch_test *t)
{
	char msg[256] = "", line[512];
	size_t pos = 0;

	assert_int_equal(pmfuse_fs_check_space(t->live.fs, NULL, msg, sizeof(msg)), 0);
	line[0] = '\0';
	for (int k = 0; k < t->nkinds && pos < sizeof(line); k++)
		pos += (size_t)snprintf(line + pos, sizeof(line) - pos, " %s %llu/%llu",
					t->kind_names[k], ULL(t->ops_of[k]),
					ULL(t->barriers_of[k]));
	printf("# %s: %llu operations (kind ops/barriers:%s), %llu barriers, %llu crash states "
	       "checked: %llu recovered as before, %llu as after, %llu between (a "
	       "multi-transaction operation partly done)\n", t->name, ULL(t->done), line,
	       ULL(t->barriers), ULL(t->states), ULL(t->as_before), ULL(t->as_after),
	       ULL(t->between));
	ch_umount(&t->live);
	pmfuse_pool_close(t->pool);
	pmfuse_pool_close(t->scratch);
	free(t->before);
	free(t->after);
	free(t->got);
	free(t->img);
}
