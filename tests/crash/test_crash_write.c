/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Crash test of writes that allocate or extend: appends (from a partly filled last block and
 * from a block boundary), writes into holes and past EOF with a gap, writes into blocks
 * preallocated past EOF (fallocate KEEP_SIZE) and inside EOF, overwrites, growing and
 * shrinking truncates, on fake media, stopped at every persistence barrier. Among them, the
 * conversions of an inline extent map into a tree and back (counted, at least two and one).
 *
 * For each operation, as in test_crash_reflink: the files before it are read, the operation
 * runs on a copy of the pool for the state after it, then on the live pool with a hook at every
 * barrier, where crash images are built (none of the unpersisted 8-byte units kept, all of
 * them, random subsets), recovered and checked:
 *   - the space check and fsck pass (E5: the last block holds zeros past EOF);
 *   - every file is in its state before or after the operation (or between, per block, for a
 *     write that had to go in steps; per 8 bytes for random subsets: a torn overwrite);
 *   - every mapped byte past EOF is zero: each file is grown to CAP by a truncate and must read
 *     zeros past its size (preallocated blocks past EOF included), which catches data stored
 *     past EOF whose size never committed;
 *   - a write that fits one transaction is never seen between (appends and writes into fresh
 *     or preallocated blocks are atomic), unless it overwrote bytes below the old EOF.
 * PMFUSE_SEED replays a run; PMFUSE_TEST_SCALE shortens it.
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
#define LOG_BLOCKS 32         /* a budget of 15 extent records: writes here fit one transaction */
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
}

static uint64_t ino_of(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_lookup(fs, PMFUSE_ROOT_INO, names[i], &a), 0);
	pmfuse_fs_forget(fs, a.ino, 1);
	return a.ino;
}

/* Whether file i's extent map is inline, and its tree's levels (format.h). */
static bool map_inline(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;

	assert_int_equal(pmfuse_inode_locate(fs, ino_of(fs, i), &ip, &leaf), 0);
	return pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP;
}

static unsigned map_levels(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;

	assert_int_equal(pmfuse_inode_locate(fs, ino_of(fs, i), &ip, &leaf), 0);
	return pmfuse_le16(ip->map.levels);
}

/* ---- the operations ------------------------------------------------------------------------- */

enum op_kind { OP_WRITE, OP_APPEND, OP_PREALLOC, OP_TRUNC, OP_KINDS };
static const char *const op_names[OP_KINDS] = { "write", "append", "prealloc", "truncate" };

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

/* Runs op on fs. */
static void run_op(struct pmfuse_fs *fs, const struct op *op)
{
	static uint8_t buf[CAP];
	struct pmfuse_attr a;
	uint64_t d = ino_of(fs, op->dst);

	switch (op->kind) {
	case OP_WRITE:
	case OP_APPEND:
		fill(buf, op->len, op->seed);
		assert_int_equal(pmfuse_fs_write(fs, d, buf, op->len, op->off,
						 op->kind == OP_APPEND, &cred), op->len);
		break;
	case OP_PREALLOC:
		assert_int_equal(pmfuse_fs_fallocate(fs, d, FALLOC_FL_KEEP_SIZE, op->off, op->len),
				 0);
		break;
	case OP_TRUNC: {
		struct pmfuse_setattr sa = { .size = op->len };

		assert_int_equal(pmfuse_fs_setattr(fs, d, &sa, PMFUSE_SET_SIZE, &cred, &a), 0);
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
	bool atomic;                  /* the operation must show before or after, never between */
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

/* Every mapped byte past EOF is zero (E5): grown to CAP, each file reads zeros past its size. */
static void check_zero_past_eof(struct mounted *m, const struct crash *c)
{
	static uint8_t buf[CAP];

	for (int i = 0; i < NFILES; i++) {
		struct pmfuse_setattr sa = { .size = CAP };
		struct pmfuse_attr a;
		uint64_t ino, size = c->got->size[i];

		if (!c->got->present[i] || size >= CAP)
			continue;
		ino = ino_of(m->fs, i);
		assert_int_equal(pmfuse_fs_setattr(m->fs, ino, &sa, PMFUSE_SET_SIZE, &cred, &a), 0);
		assert_int_equal(pmfuse_fs_pread(m->fs, ino, buf, CAP - size, size), CAP - size);
		for (uint64_t x = 0; x < CAP - size; x++) {
			if (buf[x]) {
				fprintf(stderr, "barrier %llu (%s): file %s: byte %llu past EOF %llu "
					"is %u\n", ULL(c->barriers), op_names[c->op->kind],
					names[i], ULL(size + x), ULL(size), buf[x]);
				fail();
			}
		}
	}
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
	check_zero_past_eof(&m, c);
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
		if (k == 2 && c->atomic) {
			fprintf(stderr, "barrier %llu (%s, %s): file %s between its states\n",
				ULL(c->barriers), variant, op_names[c->op->kind], names[i]);
			fail();
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

/* A random operation on a present file (all its arguments valid). */
static bool pick_op(struct th_rng *r, const struct state *s, struct op *op)
{
	int present[NFILES], np = 0;
	uint64_t size;

	for (int i = 0; i < NFILES; i++)
		if (s->present[i])
			present[np++] = i;
	memset(op, 0, sizeof(*op));
	if (!np)
		return false;
	op->kind = (enum op_kind)th_rng_below(r, OP_KINDS);
	op->seed = (uint32_t)th_rng_next(r);
	op->dst = present[th_rng_below(r, (uint64_t)np)];
	size = s->size[op->dst];
	switch (op->kind) {
	case OP_WRITE:
		/* inside, across EOF, or past it with a gap */
		op->off = th_rng_below(r, PMFUSE_MIN(CAP - 1, size + 8 * BS));
		op->len = 1 + th_rng_below(r, th_rng_below(r, 2) ? 300 : 24 * BS);
		op->len = PMFUSE_MIN(op->len, CAP - op->off);
		return true;
	case OP_APPEND:
		if (size >= CAP - 1)
			return false;
		op->off = size;
		op->len = 1 + th_rng_below(r, th_rng_below(r, 2) ? 300 : 24 * BS);
		op->len = PMFUSE_MIN(op->len, CAP - size);
		return true;
	case OP_PREALLOC:
		/* mostly past EOF (KEEP_SIZE), from inside the last block or a gap away */
		op->off = th_rng_below(r, 3) ? size : th_rng_below(r, PMFUSE_MIN(CAP - 1, size + 4 * BS));
		if (op->off >= CAP - 1)
			return false;
		op->len = 1 + th_rng_below(r, PMFUSE_MIN(CAP - op->off, 32u * BS));
		return true;
	case OP_TRUNC:
		op->len = th_rng_below(r, 4) ? th_rng_below(r, size + 1)
					     : size + th_rng_below(r, CAP - size + 1);
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

static void test_crash_write(void **state)
{
	struct pmfuse_mkfs_opts opts = { .block_size = BS, .log_blocks = LOG_BLOCKS };
	struct state *before = malloc(sizeof(*before)), *after = malloc(sizeof(*after));
	struct crash c = { .random_images = 1 };
	struct pmfuse_pool *pool, *shadow;
	struct pmfuse_pool_fake_hook hook = { crash_hook, &c };
	struct th_rng wl;
	struct mounted live, sm;
	uint64_t nops = th_scaled(100), done = 0, kinds[OP_KINDS] = { 0 };
	uint64_t to_tree = 0, to_inline = 0;
	bool was_inline;
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

	/* a: data with holes, ending in a partly filled block; b: empty; c: one block; d: none */
	{
		static uint8_t buf[CAP];
		struct pmfuse_attr at[3];

		for (int i = 0; i < 3; i++)
			assert_int_equal(pmfuse_fs_mknod(live.fs, PMFUSE_ROOT_INO, names[i],
							 S_IFREG | 0644, 0, &cred, &at[i]), 0);
		fill(buf, CAP, 7);
		for (uint64_t k = 0; k < 10; k++)
			assert_int_equal(pmfuse_fs_write(live.fs, at[0].ino, buf + k * 3 * BS, BS,
							 k * 3 * BS, false, &cred), BS);
		assert_int_equal(pmfuse_fs_write(live.fs, at[0].ino, buf, 100, 30 * BS, false,
						 &cred), 100);
		assert_int_equal(pmfuse_fs_write(live.fs, at[2].ino, buf, BS, 0, false, &cred), BS);
		for (int i = 0; i < 3; i++)
			pmfuse_fs_forget(live.fs, at[i].ino, 1);
	}
	/* the first operations are fixed: each kind of allocating write once */
	{
		static const struct op first[] = {
			/* append from a partly filled last block, into fresh blocks */
			{ .kind = OP_APPEND, .dst = 0, .off = 30 * BS + 100, .len = 5 * BS + 9, .seed = 1 },
			/* preallocate past EOF, then append into it, then write past it with a gap */
			{ .kind = OP_PREALLOC, .dst = 0, .off = 35 * BS + 109, .len = 20 * BS },
			{ .kind = OP_APPEND, .dst = 0, .off = 35 * BS + 109, .len = 7 * BS + 5, .seed = 2 },
			{ .kind = OP_WRITE, .dst = 0, .off = 50 * BS + 17, .len = 12 * BS, .seed = 3 },
			/* a new file: aligned appends, then a write into a hole inside EOF */
			{ .kind = OP_WRITE, .dst = 1, .off = 0, .len = 8 * BS, .seed = 4 },
			{ .kind = OP_APPEND, .dst = 1, .off = 8 * BS, .len = 8 * BS, .seed = 5 },
			{ .kind = OP_WRITE, .dst = 0, .off = BS + 5, .len = 2 * BS, .seed = 6 },
			/* preallocated blocks inside EOF (a hole made a zeroed block), written into */
			{ .kind = OP_PREALLOC, .dst = 0, .off = 4 * BS, .len = 2 * BS },
			{ .kind = OP_WRITE, .dst = 0, .off = 4 * BS + 1, .len = BS + 3, .seed = 7 },
			/* grow, then shrink into a block, then append */
			{ .kind = OP_TRUNC, .dst = 2, .len = 9 * BS + 1 },
			{ .kind = OP_TRUNC, .dst = 2, .len = BS / 2 },
			{ .kind = OP_APPEND, .dst = 2, .off = BS / 2, .len = 3 * BS, .seed = 8 },
			/* c's map is inline (one or two extents): extents past holes turn it into
			 * a tree, a truncate to one block turns it back, an unwritten extent
			 * joins it inline, and a write past a gap turns it into a tree again */
			{ .kind = OP_WRITE, .dst = 2, .off = 6 * BS + 1, .len = 10, .seed = 9 },
			{ .kind = OP_WRITE, .dst = 2, .off = 9 * BS, .len = BS, .seed = 10 },
			{ .kind = OP_TRUNC, .dst = 2, .len = BS - 3 },
			{ .kind = OP_PREALLOC, .dst = 2, .off = 3 * BS, .len = 2 * BS },
			{ .kind = OP_WRITE, .dst = 2, .off = 7 * BS + 5, .len = 100, .seed = 11 },
			{ .kind = OP_TRUNC, .dst = 2, .len = 2 * BS },
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
			/* one transaction: an append, or a write past the old EOF (nothing below it
			 * to tear) on a pool with room (this one has) */
			c.atomic = (op.kind == OP_APPEND || op.kind == OP_WRITE) &&
				   op.off >= before->size[op.dst];
			c.op_barriers = 0;
			for (int k = 0; k < NFILES; k++)
				c.unchanged[k] = before->present[k] == after->present[k] &&
						 before->size[k] == after->size[k] &&
						 !memcmp(before->data[k], after->data[k], before->size[k]);
			was_inline = map_inline(live.fs, op.dst);
			pmfuse_pool_fake_set_hook(pool, &hook);
			run_op(live.fs, &op);
			pmfuse_pool_fake_set_hook(pool, NULL);
			to_tree += was_inline && !map_inline(live.fs, op.dst) &&
				   map_levels(live.fs, op.dst);
			to_inline += !was_inline && map_inline(live.fs, op.dst);
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
		printf("# crash_write: %llu operations (kind ops/barriers:%s), %llu barriers, "
		       "%llu crash states checked: %llu recovered as before, %llu as after, %llu "
		       "between (a multi-transaction operation partly done)\n", ULL(done), line,
		       ULL(c.barriers), ULL(c.states), ULL(c.as_before), ULL(c.as_after),
		       ULL(c.between));
	}
	printf("# crash_write: %llu inline-to-tree and %llu tree-to-inline map conversions\n",
	       ULL(to_tree), ULL(to_inline));
	assert_true(c.as_before > 0 && c.as_after > 0);
	assert_true(to_tree >= 2 && to_inline >= 1);
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
		cmocka_unit_test(test_crash_write),
	};
	th_seed();
	return cmocka_run_group_tests_name("crash_write", tests, NULL, NULL);
}
