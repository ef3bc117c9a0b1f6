/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Crash test of reflink: clone (many transactions per call), copy-on-write writes, truncate,
 * punch and zero-range into shared blocks, copy_file_range, unshare, dedupe (of a range just
 * overwritten with the source's bytes), range dedupe (the same, some blocks changed: many
 * runs, each its own transactions), deleting shared files, and unwritten extents: fallocate
 * (onto blocks a deleted file left its bytes in), writes converting unwritten blocks (partial
 * blocks at the edges), clones sharing them, CoW of shared unwritten blocks, and ZERO_RANGE
 * turning written blocks unwritten, on fake media, stopped at every persistence barrier.
 *
 * For each operation:
 *   1. the files' contents before it are read from the live filesystem;
 *   2. the operation runs on a copy of the pool (a second filesystem), which gives the contents
 *      after it;
 *   3. it runs on the live filesystem with a hook at every barrier. There, crash images are
 *      built (none of the unpersisted 8-byte units kept, all of them, and random subsets), each
 *      is recovered as a power cut would be (pmfuse_volume_open rolls the log back,
 *      pmfuse_fs_open works off the orphan list), and checked:
 *        - the space check passes: every block is mapped as often as its refcount says, no
 *          block is leaked or free while mapped, every tree is sound, no orphan is left;
 *        - no file shows a byte of a stale pattern that filled every free block before the
 *          workload (what unwritten blocks hold until a write converts them: reading them, or
 *          converting a block without zeroing its rest, would show it);
 *        - every file is in its state before or after the operation, or, for the operations
 *          that take several transactions (a clone goes piece by piece, a write window by
 *          window), in a state between: each block of it holds its bytes from before or from
 *          after, and its size lies between the two. A file being deleted either still has
 *          its name and its old bytes, or is gone.
 * It prints how many crash states it checked and how they recovered. PMFUSE_SEED replays a
 * run; PMFUSE_TEST_SCALE shortens it.
 */
#include "harness.h"
#include "harness_fs.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/fs_internal.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

#define POOL_SIZE (4u << 20)
#define LOG_BLOCKS 8          /* small: a clone takes many transactions */
#define BS 4096u
#define NFILES 4
#define CAP (160u * BS)       /* largest file the workload makes */

static const struct pmfuse_cred cred = { .uid = 1000, .gid = 1000, .pid = 1, .umask = 022 };
static const char *const names[NFILES] = { "a", "b", "c", "d" };

/* The files as seen by name: present, size, bytes (zero past size). */
struct state {
	bool present[NFILES];
	uint64_t size[NFILES];
	uint8_t data[NFILES][CAP];
};

struct mounted {
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
};

static int mount_pool(struct pmfuse_pool *pool, struct mounted *m)
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

static void umount_pool(struct mounted *m)
{
	pmfuse_fs_close(m->fs);
	pmfuse_volume_close(m->vol);
}

/* Every free block holds this before the workload; fill() never makes 8 of it in a row. */
#define STALE 0xeeu

static void no_stale(const struct state *s)
{
	static const uint8_t stale[8] = { STALE, STALE, STALE, STALE, STALE, STALE, STALE, STALE };

	for (int i = 0; i < NFILES; i++)
		for (uint64_t x = 0; x + 8 <= s->size[i]; x += 8)
			if (!memcmp(s->data[i] + x, stale, 8)) {
				fprintf(stderr, "file %s shows stale bytes at %llu\n", names[i],
					ULL(x));
				fail();
			}
}

static void read_state(struct pmfuse_fs *fs, struct state *s)
{
	memset(s, 0, sizeof(*s));
	for (int i = 0; i < NFILES; i++) {
		struct pmfuse_attr a;
		ssize_t n;

		if (pmfuse_fs_lookup(fs, PMFUSE_ROOT_INO, names[i], &a))
			continue;
		assert_true(a.size <= CAP);
		s->present[i] = true;
		s->size[i] = a.size;
		n = pmfuse_fs_pread(fs, a.ino, s->data[i], CAP, 0);
		assert_int_equal(n, a.size);
		pmfuse_fs_forget(fs, a.ino, 1);
	}
	no_stale(s);
}

static uint64_t ino_of(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_lookup(fs, PMFUSE_ROOT_INO, names[i], &a), 0);
	pmfuse_fs_forget(fs, a.ino, 1);
	return a.ino;
}

/* ---- the operations ------------------------------------------------------------------------- */

enum op_kind { OP_CLONE, OP_WRITE, OP_COPY, OP_UNSHARE, OP_TRUNC, OP_PUNCH, OP_ZERO,
	       OP_UNLINK, OP_CREATE, OP_DEDUPE, OP_FALLOC, OP_DBLOCKS, OP_KINDS };
static const char *const op_names[OP_KINDS] = {
	"clone", "write", "copy", "unshare", "truncate", "punch", "zero", "unlink", "create",
	"dedupe", "falloc", "dedupe-blocks",
};

struct op {
	enum op_kind kind;
	int src, dst;
	uint64_t off, len, doff;
	uint32_t seed;
};

static void fill(uint8_t *buf, size_t len, uint32_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)((i * 2654435761u + seed) >> 13);
}

/* Runs op on fs; asserts only what must hold however the filesystem lays out blocks. */
static void run_op(struct pmfuse_fs *fs, const struct op *op)
{
	static uint8_t buf[CAP];
	struct pmfuse_attr a;
	uint64_t s, d;
	int rc;

	switch (op->kind) {
	case OP_CLONE:
		s = ino_of(fs, op->src);
		d = ino_of(fs, op->dst);
		rc = pmfuse_fs_clone_range(fs, s, op->off, op->len, d, op->doff);
		assert_int_equal(rc, 0);
		break;
	case OP_WRITE:
		fill(buf, op->len, op->seed);
		assert_int_equal(pmfuse_fs_write(fs, ino_of(fs, op->dst), buf, op->len, op->off,
						 false, &cred), op->len);
		break;
	case OP_COPY:
		s = ino_of(fs, op->src);
		d = ino_of(fs, op->dst);
		assert_true(pmfuse_fs_copy_range(fs, s, op->off, d, op->doff, op->len, &cred) > 0);
		break;
	case OP_UNSHARE:
		assert_int_equal(pmfuse_fs_unshare(fs, ino_of(fs, op->dst), op->off, op->len), 0);
		break;
	case OP_TRUNC: {
		struct pmfuse_setattr sa = { .size = op->len };

		assert_int_equal(pmfuse_fs_setattr(fs, ino_of(fs, op->dst), &sa, PMFUSE_SET_SIZE,
						   &cred, &a), 0);
		break;
	}
	case OP_PUNCH:
		assert_int_equal(pmfuse_fs_fallocate(fs, ino_of(fs, op->dst),
						     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						     op->off, op->len), 0);
		break;
	case OP_ZERO:
		assert_int_equal(pmfuse_fs_fallocate(fs, ino_of(fs, op->dst),
						     FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
						     op->off, op->len), 0);
		break;
	case OP_FALLOC:   /* seed bit 0: KEEP_SIZE */
		assert_int_equal(pmfuse_fs_fallocate(fs, ino_of(fs, op->dst),
						     op->seed & 1 ? FALLOC_FL_KEEP_SIZE : 0,
						     op->off, op->len), 0);
		break;
	case OP_UNLINK:
		d = ino_of(fs, op->dst);
		assert_int_equal(pmfuse_fs_unlink(fs, PMFUSE_ROOT_INO, names[op->dst]), 0);
		break;
	case OP_CREATE:
		assert_int_equal(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, names[op->dst],
						 S_IFREG | 0644, 0, &cred, &a), 0);
		pmfuse_fs_forget(fs, a.ino, 1);
		if (op->src >= 0)
			assert_int_equal(pmfuse_fs_clone_range(fs, ino_of(fs, op->src), 0, 0, a.ino,
							       0), 0);
		break;
	case OP_DEDUPE: {
		/* the source's bytes written over the destination's, then deduped: shared again */
		uint64_t n = 0;

		s = ino_of(fs, op->src);
		d = ino_of(fs, op->dst);
		assert_int_equal(pmfuse_fs_pread(fs, s, buf, op->len, op->off), op->len);
		assert_int_equal(pmfuse_fs_write(fs, d, buf, op->len, op->doff, false, &cred),
				 op->len);
		assert_int_equal(pmfuse_fs_dedupe_range(fs, s, op->off, op->len, d, op->doff, &n),
				 0);
		assert_int_equal(n, op->len);
		break;
	}
	case OP_DBLOCKS: {
		/* the source's bytes, a few blocks changed, written over the destination's, then
		 * the range deduped: the equal blocks shared again, the others left */
		struct pmfuse_dedupe_counts c;
		uint64_t nblk = op->len / BS;

		s = ino_of(fs, op->src);
		d = ino_of(fs, op->dst);
		assert_int_equal(pmfuse_fs_pread(fs, s, buf, op->len, op->off), op->len);
		for (uint64_t b = op->seed % 3; b < nblk; b += 3 + op->seed % 5)
			buf[b * BS + op->seed % BS] ^= 0x5a;
		assert_int_equal(pmfuse_fs_write(fs, d, buf, op->len, op->doff, false, &cred),
				 op->len);
		assert_int_equal(pmfuse_fs_dedupe_blocks(fs, s, op->off, op->len, d, op->doff,
							 &c), 0);
		assert_int_equal(c.compared, op->len);
		assert_int_equal(c.deduped + c.same + c.differ, op->len);
		break;
	}
	default:
		fail();
	}
}

/* ---- crash checks --------------------------------------------------------------------------- */

struct crash {
	struct th_rng rng;
	struct pmfuse_pool *scratch;
	uint8_t *img;
	const struct state *before, *after;
	struct state *got;
	const struct op *op;
	bool unchanged[NFILES];       /* the operation leaves the file as it is */
	uint64_t op_barriers;         /* barriers of the operation in flight */
	uint64_t barriers, states, as_before, as_after, between;
	uint64_t per_kind[OP_KINDS];
	unsigned random_images;
};

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
 * File i of got: before, after, or between; 0 before, 1 after, 2 between. Between is judged
 * per unit of `grain` bytes: a block for the images that keep none or all of the stores in
 * flight (a store's bytes reach the media together at a drain), 8 bytes for random subsets (an
 * in-place overwrite of an unshared block may be torn at any 8-byte unit, as on real pmem).
 */
static int classify(const struct crash *c, int i, uint64_t grain, char *why, size_t whylen)
{
	const struct state *b = c->before, *a = c->after, *g = c->got;
	uint64_t size = g->size[i], bsize;
	bool eb, ea;

	if (!g->present[i]) {
		if (!b->present[i])
			return 0;   /* absent before (and maybe being created) */
		if (!a->present[i])
			return 1;   /* being deleted */
		snprintf(why, whylen, "file %s is gone", names[i]);
		return -1;
	}
	eb = b->present[i] && size == b->size[i] && !memcmp(g->data[i], b->data[i], size);
	ea = a->present[i] && size == a->size[i] && !memcmp(g->data[i], a->data[i], size);
	if (eb)
		return 0;
	if (ea)
		return 1;
	if (!a->present[i]) {
		snprintf(why, whylen, "file %s: neither its old bytes nor gone", names[i]);
		return -1;
	}
	/* a file being created is empty before (then it gets a clone) */
	bsize = b->present[i] ? b->size[i] : 0;
	if (size < PMFUSE_MIN(bsize, a->size[i]) || size > PMFUSE_MAX(bsize, a->size[i])) {
		snprintf(why, whylen, "file %s: size %llu outside %llu..%llu", names[i], ULL(size),
			 ULL(bsize), ULL(a->size[i]));
		return -1;
	}
	for (uint64_t lo = 0; lo < size; lo += grain) {
		uint64_t hi = PMFUSE_MIN(size, lo + grain);

		if (!same_bytes(g->data[i], b->data[i], bsize, lo, hi) &&
		    !same_bytes(g->data[i], a->data[i], a->size[i], lo, hi)) {
			snprintf(why, whylen, "file %s: bytes %llu..%llu hold neither their old value "
				 "nor their new one (sizes: got %llu, before %llu, after %llu)",
				 names[i], ULL(lo), ULL(hi), ULL(size), ULL(bsize), ULL(a->size[i]));
			return -1;
		}
	}
	return 2;
}

static void check_image(struct crash *c, const char *variant, uint64_t grain)
{
	struct pmfuse_space_report rep;
	struct mounted m;
	char msg[256] = "", why[256] = "";
	int rc;
	bool all_before = true, all_after = true;

	pmfuse_pool_fake_reset(c->scratch, c->img);
	rc = mount_pool(c->scratch, &m);
	if (rc) {
		fprintf(stderr, "barrier %llu (%s, %s): recovery failed\n", ULL(c->barriers), variant,
			op_names[c->op->kind]);
		fail();
	}
	rc = pmfuse_fs_check_space(m.fs, &rep, msg, sizeof(msg));
	if (rc) {
		fprintf(stderr, "barrier %llu (%s, %s): space check: %s\n", ULL(c->barriers), variant,
			op_names[c->op->kind], msg);
		fail();
	}
	th_fsck_clean(m.fs);     /* and fsck's checks find nothing after recovery */
	assert_int_equal(pmfuse_btree_count(&m.fs->orphans), 0);
	read_state(m.fs, c->got);
	for (int i = 0; i < NFILES; i++) {
		int k = classify(c, i, grain, why, sizeof(why));

		if (k < 0) {
			fprintf(stderr, "barrier %llu (%s, %s): %s\n", ULL(c->barriers), variant,
				op_names[c->op->kind], why);
			fail();
		}
		if (c->unchanged[i]) {
			assert_int_equal(k, 0);   /* not touched by the operation */
			continue;
		}
		all_before &= k == 0;
		all_after &= k == 1;
	}
	umount_pool(&m);
	c->states++;
	if (all_before)
		c->as_before++;
	else if (all_after)
		c->as_after++;
	else
		c->between++;
}

static bool keep_random(void *arg, size_t unit)
{
	(void)unit;
	return th_rng_below(&((struct crash *)arg)->rng, 2);
}

static bool keep_all(void *arg, size_t unit)
{
	(void)arg;
	(void)unit;
	return true;
}

static void crash_hook(void *arg, struct pmfuse_pool *pool, uint64_t n)
{
	struct crash *c = arg;

	(void)n;
	c->barriers++;
	c->per_kind[c->op->kind]++;
	/* long operations (a clone in many transactions): every barrier of the first 48, then
	 * every third */
	if (++c->op_barriers > 48 && c->op_barriers % 3)
		return;
	pmfuse_pool_fake_crash_image(pool, c->img, NULL, NULL);
	check_image(c, "none kept", BS);
	if (!pmfuse_pool_fake_crash_image(pool, c->img, keep_all, NULL))
		return;   /* nothing in flight: every image is the same */
	check_image(c, "all kept", BS);
	for (unsigned i = 0; i < c->random_images; i++) {
		pmfuse_pool_fake_crash_image(pool, c->img, keep_random, c);
		check_image(c, "random subset", 8);
	}
}

/* ---- the workload --------------------------------------------------------------------------- */

/* A random operation that makes sense in state s (all its arguments valid). */
static bool pick_op(struct th_rng *r, const struct state *s, struct op *op)
{
	int present[NFILES], np = 0;

	for (int i = 0; i < NFILES; i++)
		if (s->present[i])
			present[np++] = i;
	memset(op, 0, sizeof(*op));
	/* range dedupe twice as often: its runs make many crash points of their own */
	op->kind = (enum op_kind)th_rng_below(r, OP_KINDS + 1);
	if (op->kind == OP_KINDS)
		op->kind = OP_DBLOCKS;
	op->seed = (uint32_t)th_rng_next(r);
	if (op->kind == OP_CREATE) {
		if (np == NFILES)
			return false;
		for (int i = 0; i < NFILES; i++)
			if (!s->present[i])
				op->dst = i;
		op->src = np ? present[th_rng_below(r, (uint64_t)np)] : -1;
		return true;
	}
	if (!np || (op->kind == OP_UNLINK && np < 3))
		return false;
	op->dst = present[th_rng_below(r, (uint64_t)np)];
	op->src = present[th_rng_below(r, (uint64_t)np)];
	switch (op->kind) {
	case OP_CLONE: {
		uint64_t ss = s->size[op->src], sblk = (ss + BS - 1) / BS, n;

		if (!ss)
			return false;
		op->off = th_rng_below(r, sblk) * BS;
		n = sblk - op->off / BS;
		if (th_rng_below(r, 2)) {
			op->len = 0;   /* to EOF */
		} else {
			op->len = (1 + th_rng_below(r, n)) * BS;
			if (op->off + op->len >= ss)
				op->len = 0;
		}
		n = op->len ? op->len / BS : n;
		op->doff = th_rng_below(r, CAP / BS - n + 1) * BS;
		if (!op->len && ss % BS && op->doff + (ss - op->off) < s->size[op->dst])
			op->doff = (s->size[op->dst] - (ss - op->off) + BS - 1) / BS * BS;
		if (op->doff + n * BS > CAP)
			return false;
		if (op->src == op->dst && op->off < op->doff + n * BS && op->doff < op->off + n * BS)
			return false;
		return true;
	}
	case OP_COPY: {
		uint64_t ss = s->size[op->src];

		if (!ss)
			return false;
		op->off = th_rng_below(r, ss);
		op->len = 1 + th_rng_below(r, PMFUSE_MIN(ss - op->off, 40u * BS));
		op->doff = th_rng_below(r, 2) ? th_rng_below(r, CAP / BS - 41) * BS + op->off % BS
					      : th_rng_below(r, CAP - op->len);
		if (op->doff + op->len > CAP)
			return false;
		if (op->src == op->dst && op->off < op->doff + op->len && op->doff < op->off + op->len)
			return false;
		return true;
	}
	case OP_DEDUPE:
	case OP_DBLOCKS: {
		uint64_t n = s->size[op->src] / BS;

		if (!n)
			return false;
		op->off = th_rng_below(r, n) * BS;
		op->len = (1 + th_rng_below(r, PMFUSE_MIN(n - op->off / BS, 40u))) * BS;
		op->doff = th_rng_below(r, (CAP - op->len) / BS + 1) * BS;
		if (op->src == op->dst && op->off < op->doff + op->len &&
		    op->doff < op->off + op->len)
			return false;
		return true;
	}
	case OP_WRITE:
		op->off = th_rng_below(r, PMFUSE_MIN(CAP - 1, s->size[op->dst] + 8 * BS));
		op->len = 1 + th_rng_below(r, th_rng_below(r, 2) ? 300 : 40 * BS);
		op->len = PMFUSE_MIN(op->len, CAP - op->off);
		return true;
	case OP_UNSHARE:
	case OP_PUNCH:
	case OP_ZERO:
		op->off = th_rng_below(r, s->size[op->dst] + 1);
		op->len = 1 + th_rng_below(r, 48 * BS);
		return true;
	case OP_FALLOC:
		op->off = th_rng_below(r, PMFUSE_MIN(CAP - 1, s->size[op->dst] + 8 * BS));
		op->len = PMFUSE_MIN(1 + th_rng_below(r, 48 * BS), CAP - op->off);
		return true;
	case OP_TRUNC:
		op->len = th_rng_below(r, s->size[op->dst] + 1);
		return true;
	case OP_UNLINK:
		return true;
	default:
		return false;
	}
}

static bool same_state(const struct state *x, const struct state *y)
{
	for (int i = 0; i < NFILES; i++)
		if (x->present[i] != y->present[i] || x->size[i] != y->size[i] ||
		    memcmp(x->data[i], y->data[i], x->size[i]))
			return false;
	return true;
}

static void test_crash_reflink(void **state)
{
	struct pmfuse_mkfs_opts opts = { .block_size = BS, .log_blocks = LOG_BLOCKS };
	struct state *before = malloc(sizeof(*before)), *after = malloc(sizeof(*after));
	struct crash c = { .random_images = 1 };
	struct pmfuse_pool *pool, *shadow;
	struct pmfuse_pool_fake_hook hook = { crash_hook, &c };
	struct th_rng wl;
	struct mounted live, sm;
	uint64_t nops = th_scaled(20), done = 0, kinds[OP_KINDS] = { 0 };
	(void)state;

	assert_non_null(before);
	assert_non_null(after);
	c.got = malloc(sizeof(*c.got));
	c.img = malloc(POOL_SIZE);
	assert_non_null(c.got);
	assert_non_null(c.img);
	th_rng_init(&c.rng, th_seed() ^ 0x5eed);
	th_rng_init(&wl, th_seed() ^ 0xc10e);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);   /* recovery messages, thousands of them */
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &pool), 0);
	assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, NULL, &c.scratch), 0);
	assert_int_equal(pmfuse_mkfs(pool, &opts), 0);
	assert_int_equal(mount_pool(pool, &live), 0);

	/* a: 40 one-block extents with holes between; b: data of its own; c: a clone of a */
	{
		static uint8_t buf[CAP];
		struct pmfuse_attr at[3];

		for (int i = 0; i < 3; i++)
			assert_int_equal(pmfuse_fs_mknod(live.fs, PMFUSE_ROOT_INO, names[i],
							 S_IFREG | 0644, 0, &cred, &at[i]), 0);
		fill(buf, CAP, 7);
		for (uint64_t k = 0; k < 40; k++)
			assert_int_equal(pmfuse_fs_write(live.fs, at[0].ino, buf + k * 3 * BS, BS,
							 k * 3 * BS, false, &cred), BS);
		assert_int_equal(pmfuse_fs_write(live.fs, at[0].ino, buf, 100, 120 * BS, false,
						 &cred), 100);
		for (uint64_t k = 0; k < 100; k += 7)
			assert_int_equal(pmfuse_fs_write(live.fs, at[1].ino, buf + k * BS, 2 * BS,
							 k * BS + 10, false, &cred), 2 * BS);
		assert_int_equal(pmfuse_fs_clone_range(live.fs, at[0].ino, 0, 0, at[2].ino, 0), 0);
		for (int i = 0; i < 3; i++)
			pmfuse_fs_forget(live.fs, at[i].ino, 1);
		/* every free block gets the stale pattern (a file filling the pool, deleted) */
		{
			struct pmfuse_attr st;
			uint64_t off = 0;

			assert_int_equal(pmfuse_fs_mknod(live.fs, PMFUSE_ROOT_INO, "stale",
							 S_IFREG | 0644, 0, &cred, &st), 0);
			pmfuse_fs_forget(live.fs, st.ino, 1);
			memset(buf, STALE, BS);
			while (pmfuse_fs_write(live.fs, st.ino, buf, BS, off, false, &cred) == BS)
				off += BS;
			assert_true(off > 64 * BS);
			assert_int_equal(pmfuse_fs_unlink(live.fs, PMFUSE_ROOT_INO, "stale"), 0);
		}
	}
	/* the first operations are fixed: a big clone onto data, then CoW into both copies */
	{
		static const struct op first[] = {
			{ .kind = OP_CLONE, .src = 0, .dst = 1, .off = 0, .len = 0, .doff = 0 },
			{ .kind = OP_WRITE, .dst = 1, .off = 5 * BS - 7, .len = 40 * BS, .seed = 1 },
			{ .kind = OP_WRITE, .dst = 0, .off = 60 * BS + 3, .len = 100, .seed = 2 },
			{ .kind = OP_UNSHARE, .dst = 2, .off = 10 * BS, .len = 50 * BS },
			{ .kind = OP_TRUNC, .dst = 1, .len = 90 * BS + 5 },
			{ .kind = OP_PUNCH, .dst = 2, .off = 70 * BS + 11, .len = 20 * BS },
			{ .kind = OP_COPY, .src = 0, .dst = 2, .off = 3 * BS + 5, .doff = 130 * BS + 5,
			  .len = 20 * BS },
			{ .kind = OP_DEDUPE, .src = 1, .dst = 2, .off = 10 * BS, .len = 30 * BS,
			  .doff = 20 * BS },
			{ .kind = OP_UNLINK, .dst = 0 },
			/* unwritten extents, on blocks a's deletion left its bytes in */
			{ .kind = OP_CREATE, .dst = 0, .src = -1 },
			{ .kind = OP_FALLOC, .dst = 0, .off = 0, .len = 60 * BS, .seed = 0 },
			{ .kind = OP_WRITE, .dst = 0, .off = 10 * BS + 100, .len = 3 * BS, .seed = 3 },
			{ .kind = OP_FALLOC, .dst = 0, .off = 50 * BS, .len = 40 * BS, .seed = 1 },
			{ .kind = OP_WRITE, .dst = 0, .off = 58 * BS + 9, .len = 5 * BS, .seed = 4 },
			{ .kind = OP_CLONE, .src = 0, .dst = 1, .off = 0, .len = 30 * BS,
			  .doff = 100 * BS },
			{ .kind = OP_WRITE, .dst = 1, .off = 104 * BS + 5, .len = 200, .seed = 5 },
			{ .kind = OP_WRITE, .dst = 0, .off = 20 * BS, .len = 2 * BS, .seed = 6 },
			{ .kind = OP_UNSHARE, .dst = 1, .off = 100 * BS, .len = 30 * BS },
			{ .kind = OP_ZERO, .dst = 1, .off = 2 * BS + 7, .len = 20 * BS },
			{ .kind = OP_ZERO, .dst = 2, .off = 0, .len = 30 * BS },
			{ .kind = OP_WRITE, .dst = 1, .off = 5 * BS - 1, .len = 2, .seed = 7 },
		};
		uint64_t nfirst = PMFUSE_ARRAY_SIZE(first);

		for (uint64_t i = 0; i < nops + nfirst; i++) {
			struct op op;

			read_state(live.fs, before);
			if (i < nfirst)
				op = first[i];
			else
				while (!pick_op(&wl, before, &op))
					;
			/* the state after, from a copy of the pool */
			assert_int_equal(pmfuse_pool_fake_new(POOL_SIZE, pmfuse_pool_base(pool),
							      &shadow), 0);
			assert_int_equal(mount_pool(shadow, &sm), 0);
			run_op(sm.fs, &op);
			read_state(sm.fs, after);
			umount_pool(&sm);
			pmfuse_pool_close(shadow);

			c.before = before;
			c.after = after;
			c.op = &op;
			c.op_barriers = 0;
			for (int k = 0; k < NFILES; k++)
				c.unchanged[k] = before->present[k] == after->present[k] &&
						 before->size[k] == after->size[k] &&
						 !memcmp(before->data[k], after->data[k], before->size[k]);
			pmfuse_pool_fake_set_hook(pool, &hook);
			run_op(live.fs, &op);
			pmfuse_pool_fake_set_hook(pool, NULL);
			read_state(live.fs, c.got);
			assert_true(same_state(c.got, after));
			kinds[op.kind]++;
			done++;
		}
	}
	{
		char msg[256] = "", line[256];
		size_t pos = 0;

		assert_int_equal(pmfuse_fs_check_space(live.fs, NULL, msg, sizeof(msg)), 0);
		for (int k = 0; k < OP_KINDS; k++)
			pos += (size_t)snprintf(line + pos, sizeof(line) - pos, " %s %llu/%llu",
						op_names[k], ULL(kinds[k]), ULL(c.per_kind[k]));
		printf("# crash_reflink: %llu operations (kind ops/barriers:%s), %llu barriers, "
		       "%llu crash states checked: %llu recovered as before, %llu as after, %llu "
		       "between (a multi-transaction operation partly done)\n", ULL(done), line,
		       ULL(c.barriers), ULL(c.states), ULL(c.as_before), ULL(c.as_after),
		       ULL(c.between));
	}
	assert_true(c.as_before > 0 && c.as_after > 0 && c.between > 0);
	if (!getenv("PMFUSE_TEST_SCALE"))
		assert_true(c.states >= 1000);
	umount_pool(&live);
	pmfuse_pool_close(pool);
	pmfuse_pool_close(c.scratch);
	free(before);
	free(after);
	free(c.got);
	free(c.img);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crash_reflink),
	};
	th_seed();
	return cmocka_run_group_tests_name("crash_reflink", tests, NULL, NULL);
}
