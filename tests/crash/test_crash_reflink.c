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
 * Each operation runs through crash_harness.h's step, which checks every crash image (the space
 * check: every block is mapped as often as its refcount says, no block is leaked or free while
 * mapped, every tree is sound, no orphan is left; and each file before, after or between), and
 * here also that no file shows a byte of a stale pattern that filled every free block before
 * the workload (what unwritten blocks hold until a write converts them: reading them, or
 * converting a block without zeroing its rest, would show it).
 * It prints how many crash states it checked and how they recovered. PMFUSE_SEED replays a
 * run; PMFUSE_TEST_SCALE shortens it.
 */
#include "crash_harness.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/util.h"

#define LOG_BLOCKS 8          /* small: a clone takes many transactions */
#define BS CH_BS
#define NFILES CH_NFILES
#define CAP CH_CAP

/* Every free block holds this before the workload; fill() never makes 8 of it in a row. */
#define STALE 0xeeu

static void no_stale(const struct ch_state *s)
{
	static const uint8_t stale[8] = { STALE, STALE, STALE, STALE, STALE, STALE, STALE, STALE };

	for (int i = 0; i < NFILES; i++)
		for (uint64_t x = 0; x + 8 <= s->size[i]; x += 8)
			if (!memcmp(s->data[i] + x, stale, 8)) {
				fprintf(stderr, "file %s shows stale bytes at %llu\n", ch_names[i],
					ULL(x));
				fail();
			}
}

/* ---- the operations ------------------------------------------------------------------------- */

enum op_kind { OP_CLONE, OP_WRITE, OP_COPY, OP_UNSHARE, OP_TRUNC, OP_PUNCH, OP_ZERO,
	       OP_UNLINK, OP_CREATE, OP_DEDUPE, OP_FALLOC, OP_DBLOCKS, OP_KINDS };
static const char *const op_names[OP_KINDS] = {
	"clone", "write", "copy", "unshare", "truncate", "punch", "zero", "unlink", "create",
	"dedupe", "falloc", "dedupe-blocks",
};

/* Runs op on fs; asserts only what must hold however the filesystem lays out blocks. */
static void run_op(struct pmfuse_fs *fs, const struct ch_op *op)
{
	static uint8_t buf[CAP];
	struct pmfuse_attr a;
	uint64_t s, d;
	int rc;

	switch (op->kind) {
	case OP_CLONE:
		s = ch_ino_of(fs, op->src);
		d = ch_ino_of(fs, op->dst);
		rc = pmfuse_fs_clone_range(fs, s, op->off, op->len, d, op->doff);
		assert_int_equal(rc, 0);
		break;
	case OP_WRITE:
		ch_fill(buf, op->len, op->seed);
		assert_int_equal(pmfuse_fs_write(fs, ch_ino_of(fs, op->dst), buf, op->len, op->off,
						 false, &ch_cred), op->len);
		break;
	case OP_COPY:
		s = ch_ino_of(fs, op->src);
		d = ch_ino_of(fs, op->dst);
		assert_true(pmfuse_fs_copy_range(fs, s, op->off, d, op->doff, op->len, &ch_cred, NULL) > 0);
		break;
	case OP_UNSHARE:
		assert_int_equal(pmfuse_fs_unshare(fs, ch_ino_of(fs, op->dst), op->off, op->len), 0);
		break;
	case OP_TRUNC: {
		struct pmfuse_setattr sa = { .size = op->len };

		assert_int_equal(pmfuse_fs_setattr(fs, ch_ino_of(fs, op->dst), &sa, PMFUSE_SET_SIZE,
						   &ch_cred, &a), 0);
		break;
	}
	case OP_PUNCH:
		assert_int_equal(pmfuse_fs_fallocate(fs, ch_ino_of(fs, op->dst),
						     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						     op->off, op->len, NULL, NULL), 0);
		break;
	case OP_ZERO:
		assert_int_equal(pmfuse_fs_fallocate(fs, ch_ino_of(fs, op->dst),
						     FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
						     op->off, op->len, NULL, NULL), 0);
		break;
	case OP_FALLOC:   /* seed bit 0: KEEP_SIZE */
		assert_int_equal(pmfuse_fs_fallocate(fs, ch_ino_of(fs, op->dst),
						     op->seed & 1 ? FALLOC_FL_KEEP_SIZE : 0,
						     op->off, op->len, NULL, NULL), 0);
		break;
	case OP_UNLINK:
		d = ch_ino_of(fs, op->dst);
		assert_int_equal(pmfuse_fs_unlink(fs, PMFUSE_ROOT_INO, ch_names[op->dst]), 0);
		break;
	case OP_CREATE:
		assert_int_equal(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, ch_names[op->dst],
						 S_IFREG | 0644, 0, &ch_cred, &a), 0);
		pmfuse_fs_forget(fs, a.ino, 1);
		if (op->src >= 0)
			assert_int_equal(pmfuse_fs_clone_range(fs, ch_ino_of(fs, op->src), 0, 0, a.ino,
							       0), 0);
		break;
	case OP_DEDUPE: {
		/* the source's bytes written over the destination's, then deduped: shared again */
		uint64_t n = 0;

		s = ch_ino_of(fs, op->src);
		d = ch_ino_of(fs, op->dst);
		assert_int_equal(pmfuse_fs_pread(fs, s, buf, op->len, op->off), op->len);
		assert_int_equal(pmfuse_fs_write(fs, d, buf, op->len, op->doff, false, &ch_cred),
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

		s = ch_ino_of(fs, op->src);
		d = ch_ino_of(fs, op->dst);
		assert_int_equal(pmfuse_fs_pread(fs, s, buf, op->len, op->off), op->len);
		for (uint64_t b = op->seed % 3; b < nblk; b += 3 + op->seed % 5)
			buf[b * BS + op->seed % BS] ^= 0x5a;
		assert_int_equal(pmfuse_fs_write(fs, d, buf, op->len, op->doff, false, &ch_cred),
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

/* ---- the workload --------------------------------------------------------------------------- */

/* A random operation that makes sense in state s (all its arguments valid). */
static bool pick_op(struct th_rng *r, const struct ch_state *s, struct ch_op *op)
{
	int present[NFILES], np = 0;

	for (int i = 0; i < NFILES; i++)
		if (s->present[i])
			present[np++] = i;
	memset(op, 0, sizeof(*op));
	/* range dedupe twice as often: its runs make many crash points of their own */
	op->kind = (int)th_rng_below(r, OP_KINDS + 1);
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
		op->len = 1 + th_rng_below(r, 48 * BS);
		op->len = PMFUSE_MIN(op->len, CAP - op->off);
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

static void test_crash_reflink(void **state)
{
	struct pmfuse_mkfs_opts opts = { .block_size = BS, .log_blocks = LOG_BLOCKS };
	struct ch_test t = {
		.name = "crash_reflink", .kind_names = op_names, .nkinds = OP_KINDS,
		.random_images = 1, .run_op = run_op, .check_state = no_stale,
	};
	struct th_rng wl;
	uint64_t nops = th_scaled(20);
	(void)state;

	th_rng_init(&wl, th_seed() ^ 0xc10e);
	ch_setup(&t, &opts);

	/* a: 40 one-block extents with holes between; b: data of its own; c: a clone of a */
	{
		static uint8_t buf[CAP];
		struct pmfuse_fs *fs = t.live.fs;
		struct pmfuse_attr at[3];

		for (int i = 0; i < 3; i++)
			assert_int_equal(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, ch_names[i],
							 S_IFREG | 0644, 0, &ch_cred, &at[i]), 0);
		ch_fill(buf, CAP, 7);
		for (uint64_t k = 0; k < 40; k++)
			assert_int_equal(pmfuse_fs_write(fs, at[0].ino, buf + k * 3 * BS, BS,
							 k * 3 * BS, false, &ch_cred), BS);
		assert_int_equal(pmfuse_fs_write(fs, at[0].ino, buf, 100, 120 * BS, false,
						 &ch_cred), 100);
		for (uint64_t k = 0; k < 100; k += 7)
			assert_int_equal(pmfuse_fs_write(fs, at[1].ino, buf + k * BS, 2 * BS,
							 k * BS + 10, false, &ch_cred), 2 * BS);
		assert_int_equal(pmfuse_fs_clone_range(fs, at[0].ino, 0, 0, at[2].ino, 0), 0);
		for (int i = 0; i < 3; i++)
			pmfuse_fs_forget(fs, at[i].ino, 1);
		/* every free block gets the stale pattern (a file filling the pool, deleted) */
		{
			struct pmfuse_attr st;
			uint64_t off = 0;

			assert_int_equal(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, "stale",
							 S_IFREG | 0644, 0, &ch_cred, &st), 0);
			pmfuse_fs_forget(fs, st.ino, 1);
			memset(buf, STALE, BS);
			while (pmfuse_fs_write(fs, st.ino, buf, BS, off, false, &ch_cred) == BS)
				off += BS;
			assert_true(off > 64 * BS);
			assert_int_equal(pmfuse_fs_unlink(fs, PMFUSE_ROOT_INO, "stale"), 0);
		}
	}
	/* the first operations are fixed: a big clone onto data, then CoW into both copies */
	{
		static const struct ch_op first[] = {
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

		ch_run(&t, first, nfirst, nops, pick_op, &wl);
	}
	ch_finish(&t);
	assert_true(t.as_before > 0 && t.as_after > 0 && t.between > 0);
	if (!getenv("PMFUSE_TEST_SCALE"))
		assert_true(t.states >= 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crash_reflink),
	};
	th_seed();
	return cmocka_run_group_tests_name("crash_reflink", tests, NULL, NULL);
}
