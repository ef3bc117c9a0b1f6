/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Crash test of writes that allocate or extend: appends (from a partly filled last block and
 * from a block boundary), writes into holes and past EOF with a gap, writes into blocks
 * preallocated past EOF (fallocate KEEP_SIZE) and inside EOF, overwrites, growing and
 * shrinking truncates, on fake media, stopped at every persistence barrier. Among them, the
 * conversions of an inline extent map into a tree and back (counted, at least two and one).
 *
 * Each operation runs through crash_harness.h's step, which checks every crash image:
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
#include "crash_harness.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/util.h"

#define LOG_BLOCKS 32         /* a budget of 15 extent records: writes here fit one transaction */
#define BS CH_BS
#define NFILES CH_NFILES
#define CAP CH_CAP

/* Whether file i's extent map is inline, and its tree's levels (format.h). */
static bool map_inline(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;

	assert_int_equal(pmfuse_inode_locate(fs, ch_ino_of(fs, i), &ip, &leaf), 0);
	return pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP;
}

static unsigned map_levels(struct pmfuse_fs *fs, int i)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;

	assert_int_equal(pmfuse_inode_locate(fs, ch_ino_of(fs, i), &ip, &leaf), 0);
	return pmfuse_le16(ip->map.levels);
}

/* ---- the operations ------------------------------------------------------------------------- */

enum op_kind { OP_WRITE, OP_APPEND, OP_PREALLOC, OP_TRUNC, OP_KINDS };
static const char *const op_names[OP_KINDS] = { "write", "append", "prealloc", "truncate" };

/* Runs op on fs. */
static void run_op(struct pmfuse_fs *fs, const struct ch_op *op)
{
	static uint8_t buf[CAP];
	struct pmfuse_attr a;
	uint64_t d = ch_ino_of(fs, op->dst);

	switch (op->kind) {
	case OP_WRITE:
	case OP_APPEND:
		ch_fill(buf, op->len, op->seed);
		assert_int_equal(pmfuse_fs_write(fs, d, buf, op->len, op->off,
						 op->kind == OP_APPEND, &ch_cred), op->len);
		break;
	case OP_PREALLOC:
		assert_int_equal(pmfuse_fs_fallocate(fs, d, FALLOC_FL_KEEP_SIZE, op->off, op->len,
						     NULL, NULL), 0);
		break;
	case OP_TRUNC: {
		struct pmfuse_setattr sa = { .size = op->len };

		assert_int_equal(pmfuse_fs_setattr(fs, d, &sa, PMFUSE_SET_SIZE, &ch_cred, &a), 0);
		break;
	}
	default:
		fail();
	}
}

/* Every mapped byte past EOF is zero (E5): grown to CAP, each file reads zeros past its size. */
static void check_zero_past_eof(struct ch_test *c, struct ch_mounted *m)
{
	static uint8_t buf[CAP];

	for (int i = 0; i < NFILES; i++) {
		struct pmfuse_setattr sa = { .size = CAP };
		struct pmfuse_attr a;
		uint64_t ino, size = c->got->size[i];

		if (!c->got->present[i] || size >= CAP)
			continue;
		ino = ch_ino_of(m->fs, i);
		assert_int_equal(pmfuse_fs_setattr(m->fs, ino, &sa, PMFUSE_SET_SIZE, &ch_cred, &a), 0);
		assert_int_equal(pmfuse_fs_pread(m->fs, ino, buf, CAP - size, size), CAP - size);
		for (uint64_t x = 0; x < CAP - size; x++) {
			if (buf[x]) {
				fprintf(stderr, "barrier %llu (%s): file %s: byte %llu past EOF %llu "
					"is %u\n", ULL(c->barriers), op_names[c->op->kind],
					ch_names[i], ULL(size + x), ULL(size), buf[x]);
				fail();
			}
		}
	}
}

/* ---- the workload --------------------------------------------------------------------------- */

/* A random operation on a present file (all its arguments valid). */
static bool pick_op(struct th_rng *r, const struct ch_state *s, struct ch_op *op)
{
	int present[NFILES], np = 0;
	uint64_t size;

	for (int i = 0; i < NFILES; i++)
		if (s->present[i])
			present[np++] = i;
	memset(op, 0, sizeof(*op));
	if (!np)
		return false;
	op->kind = (int)th_rng_below(r, OP_KINDS);
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

/* Inline-map conversions the operations made (file dst's map before and after each). */
static uint64_t to_tree, to_inline;

static void count_conversions(struct ch_test *t, const struct ch_op *op, bool after)
{
	static bool was_inline;
	bool now = map_inline(t->live.fs, op->dst);

	if (!after) {
		was_inline = now;
		return;
	}
	to_tree += was_inline && !now && map_levels(t->live.fs, op->dst);
	to_inline += !was_inline && now;
}

/* One transaction: an append, or a write past the old EOF (nothing below it to tear) on a pool
 * with room (this one has). */
static bool op_atomic(const struct ch_op *op, const struct ch_state *before)
{
	return (op->kind == OP_APPEND || op->kind == OP_WRITE) && op->off >= before->size[op->dst];
}

static void test_crash_write(void **state)
{
	struct pmfuse_mkfs_opts opts = { .block_size = BS, .log_blocks = LOG_BLOCKS };
	struct ch_test t = {
		.name = "crash_write", .kind_names = op_names, .nkinds = OP_KINDS,
		.random_images = 1, .run_op = run_op, .check_image = check_zero_past_eof,
		.atomic = op_atomic, .around_op = count_conversions,
	};
	struct th_rng wl;
	uint64_t nops = th_scaled(100);
	(void)state;

	th_rng_init(&wl, th_seed() ^ 0xc10e);
	ch_setup(&t, &opts);

	/* a: data with holes, ending in a partly filled block; b: empty; c: one block; d: none */
	{
		static uint8_t buf[CAP];
		struct pmfuse_fs *fs = t.live.fs;
		struct pmfuse_attr at[3];

		for (int i = 0; i < 3; i++)
			assert_int_equal(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, ch_names[i],
							 S_IFREG | 0644, 0, &ch_cred, &at[i]), 0);
		ch_fill(buf, CAP, 7);
		for (uint64_t k = 0; k < 10; k++)
			assert_int_equal(pmfuse_fs_write(fs, at[0].ino, buf + k * 3 * BS, BS,
							 k * 3 * BS, false, &ch_cred), BS);
		assert_int_equal(pmfuse_fs_write(fs, at[0].ino, buf, 100, 30 * BS, false, &ch_cred),
				 100);
		assert_int_equal(pmfuse_fs_write(fs, at[2].ino, buf, BS, 0, false, &ch_cred), BS);
		for (int i = 0; i < 3; i++)
			pmfuse_fs_forget(fs, at[i].ino, 1);
	}
	/* the first operations are fixed: each kind of allocating write once */
	{
		static const struct ch_op first[] = {
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

		ch_run(&t, first, nfirst, nops, pick_op, &wl);
	}
	ch_finish(&t);
	printf("# crash_write: %llu inline-to-tree and %llu tree-to-inline map conversions\n",
	       ULL(to_tree), ULL(to_inline));
	assert_true(t.as_before > 0 && t.as_after > 0);
	assert_true(to_tree >= 2 && to_inline >= 1);
	if (!getenv("PMFUSE_TEST_SCALE"))
		assert_true(t.states >= 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crash_write),
	};
	th_seed();
	return cmocka_run_group_tests_name("crash_write", tests, NULL, NULL);
}
