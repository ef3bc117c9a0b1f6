/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Memory errors (pool.h recovery points, src/fs/fault.c) on fake media whose pages can be
 * poisoned (every access raises SIGBUS, as a poisoned line of persistent memory does):
 * - the pool catches a fault only under an armed point, gives its offset, and nests;
 * - a read of a file whose data block is poisoned fails with EIO, marks that file damaged
 *   (fsck reports it), leaves the fs lock free and every other file readable and writable;
 * - a fault in the middle of a transaction (every free block poisoned, so the first store to
 *   a new block faults after the allocation was logged) rolls the transaction back: the same
 *   free blocks, fsck clean once the pages are back;
 * - a fault in the inode table while marking is only logged;
 * - the fake media's bad-block list (its poisoned range) maps to the file on it.
 * Each fs call here runs under a recovery point exactly as the daemon arms one per request.
 */
#include "harness_fs.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs_internal.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

static unsigned faults;   /* recoveries taken by the guarded calls */

/* The daemon's pattern (src/fuse/ops.c GUARDED) around one call. */
#define GUARDED(e, ino, expr, result)                                                    \
	do {                                                                             \
		struct pmfuse_pool_fault f_;                                             \
		if (sigsetjmp(f_.env, 0)) {                                              \
			faults++;                                                        \
			(result) = pmfuse_fs_fault_recover((e)->fs, (ino), f_.off);      \
			break;                                                           \
		}                                                                        \
		pmfuse_fs_fault_arm((e)->fs, &f_);                                       \
		(result) = (expr);                                                       \
		pmfuse_fs_fault_disarm(&f_);                                             \
	} while (0)

/* The first pool block of a file's data. */
static uint64_t first_pblock(struct th_env *e, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_extmap m;
	struct pmfuse_iext x;

	assert_int_equal(pmfuse_inode_locate(e->fs, ino, &ip, &leaf), 0);
	pmfuse_extmap_open(&m, e->fs, ip, leaf);
	assert_int_equal(pmfuse_extent_find(&m, 0, &x), 0);
	return x.pblock;
}

static bool damaged(struct th_env *e, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;

	assert_int_equal(pmfuse_inode_locate(e->fs, ino, &ip, &leaf), 0);
	return pmfuse_le32(ip->flags) & PMFUSE_INODE_DAMAGED;
}

static void test_pool_catch(void **state)
{
	struct pmfuse_pool_fault outer, inner;
	struct pmfuse_pool *pool;
	volatile int caught = 0;
	static char buf_outside[64];
	uint8_t *base;
	(void)state;

	pmfuse_pool_fault_init();
	assert_int_equal(pmfuse_pool_fake_new(64 * 4096, NULL, &pool), 0);
	base = pmfuse_pool_base(pool);
	base[5 * 4096 + 7] = 0x5a;
	assert_int_equal(pmfuse_pool_fake_poison(pool, 5 * 4096, 2 * 4096), 0);
	assert_int_equal(pmfuse_pool_fake_poison(pool, 9 * 4096, 4096), -EINVAL); /* one range */

	if (sigsetjmp(outer.env, 0)) {
		caught = 10;
	} else {
		pmfuse_pool_fault_arm(pool, &outer);
		if (sigsetjmp(inner.env, 0)) {
			caught = 1;
			assert_int_equal(inner.off, 6 * 4096 + 100);
			assert_true(pmfuse_pool_fault_armed());   /* outer still is */
		} else {
			pmfuse_pool_fault_arm(pool, &inner);
			(void)*(volatile uint8_t *)(base + 6 * 4096 + 100);
			fail(); /* not reached */
		}
		/* the inner point is gone: the next fault goes to the outer one */
		pmfuse_pool_probe(pool, base + 4 * 4096, 3 * 4096);
		fail();
	}
	assert_int_equal(caught, 10);
	assert_int_equal(outer.off, 5 * 4096);
	assert_false(pmfuse_pool_fault_armed());

	/* probing clean pages, and holes outside the pool, is silent */
	pmfuse_pool_fault_arm(pool, &outer);
	pmfuse_pool_probe(pool, base, 5 * 4096);
	pmfuse_pool_probe(pool, buf_outside, sizeof(buf_outside));
	pmfuse_pool_fault_disarm(&outer);

	pmfuse_pool_fake_unpoison(pool);
	assert_int_equal(base[5 * 4096 + 7], 0x5a);
	pmfuse_pool_close(pool);
}

struct hit {
	uint64_t ino, fblock, pblock;
	unsigned n;
};

static void on_bad(void *arg, uint64_t ino, uint64_t fblock, uint64_t pblock)
{
	struct hit *h = arg;

	h->ino = ino;
	h->fblock = fblock;
	h->pblock = pblock;
	h->n++;
}

static void test_read_fault(void **state)
{
	struct th_env e;
	uint8_t buf[3 * 4096], out[3 * 4096];
	uint64_t a, b, pb;
	struct th_fsck f;
	ssize_t n;
	(void)state;

	pmfuse_pool_fault_init();
	th_env_new(&e, 8u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	b = th_mkfile(&e, "b");
	memset(buf, 0xa1, sizeof(buf));
	assert_int_equal(pmfuse_fs_write(e.fs, a, buf, sizeof(buf), 0, false, &th_cred_user),
			 sizeof(buf));
	memset(buf, 0xb2, sizeof(buf));
	assert_int_equal(pmfuse_fs_write(e.fs, b, buf, sizeof(buf), 0, false, &th_cred_user),
			 sizeof(buf));
	pb = first_pblock(&e, b);
	assert_int_equal(pmfuse_pool_fake_poison(e.pool, (pb + 1) * e.bs, e.bs), 0);

	faults = 0;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	GUARDED(&e, b, pmfuse_fs_pread(e.fs, b, out, sizeof(out), 0), n);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(faults, 1);
	assert_int_equal(n, -EIO);

	/* the lock is free (a write takes it exclusively), the other file is served */
	GUARDED(&e, a, pmfuse_fs_write(e.fs, a, buf, 10, 0, false, &th_cred_user), n);
	assert_int_equal(n, 10);
	GUARDED(&e, a, pmfuse_fs_pread(e.fs, a, out, sizeof(out), 0), n);
	assert_int_equal(n, sizeof(out));
	assert_memory_equal(out, buf, 10);
	assert_int_equal(out[10], 0xa1);
	/* the first block of b is still readable */
	GUARDED(&e, b, pmfuse_fs_pread(e.fs, b, out, 4096, 0), n);
	assert_int_equal(n, 4096);
	assert_int_equal(faults, 1);
	assert_true(damaged(&e, b));
	assert_false(damaged(&e, a));
	assert_true(pmfuse_le64(e.vol->sb.compat) & PMFUSE_FEATURE_COMPAT_DAMAGED);

	/* the fake media's bad-block list names b's second block */
	struct hit hit = { 0 };
	size_t nbad;
	char why[128];
	assert_int_equal(pmfuse_fs_badblocks(e.fs, on_bad, &hit, &nbad, why, sizeof(why)), 0);
	assert_int_equal(nbad, 1);
	assert_int_equal(hit.n, 1);
	assert_int_equal(hit.ino, b);
	assert_int_equal(hit.fblock, 1);
	assert_int_equal(hit.pblock, pb + 1);

	/* the pages come back: fsck reports the mark and nothing else; it survives a remount */
	pmfuse_pool_fake_unpoison(e.pool);
	th_env_reopen(&e);
	assert_true(damaged(&e, b));
	th_fsck_run(e.fs, &f);
	assert_int_equal(f.problems, 1);
	assert_true(th_fsck_has(&f, "damaged"));
	th_env_free(&e);
}

/* Poisons every free block but the last one (the secondary superblock's neighbour stays
 * clean), so that the first store into a newly allocated block faults. */
static void poison_free(struct th_env *e, uint64_t *lo)
{
	uint64_t sb2 = pmfuse_le64(e->vol->sb.sb2_block), b;

	for (b = sb2 - 1; b > 0 && !pmfuse_alloc_is_used(e->fs->alloc, b - 1); b--)
		;
	*lo = b;
	assert_true(b + 2 < sb2);
	assert_int_equal(pmfuse_pool_fake_poison(e->pool, b * e->bs, (sb2 - 1 - b) * e->bs), 0);
}

static void test_tx_rollback(void **state)
{
	struct th_env e;
	uint8_t buf[64 * 1024];
	uint64_t a, c, lo, free0;
	struct pmfuse_attr at;
	ssize_t n;
	int rc;
	(void)state;

	pmfuse_pool_fault_init();
	th_env_new(&e, 8u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	memset(buf, 0x3c, sizeof(buf));
	assert_int_equal(pmfuse_fs_write(e.fs, a, buf, 4096, 0, false, &th_cred_user), 4096);
	c = th_mkfile(&e, "c");
	poison_free(&e, &lo);
	free0 = th_free_blocks(&e);

	/* a 64 KiB append allocates blocks (bitmap logged and changed) and then stores into them */
	faults = 0;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	GUARDED(&e, c, pmfuse_fs_write(e.fs, c, buf, sizeof(buf), 0, false, &th_cred_user), n);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(faults, 1);
	assert_int_equal(n, -EIO);
	at = th_getattr(&e, c);
	assert_int_equal(at.size, 0);
	assert_int_equal(at.blocks512, 0);
	assert_true(damaged(&e, c));

	/* the old file is untouched and still written in place */
	GUARDED(&e, a, pmfuse_fs_write(e.fs, a, buf, 100, 10, false, &th_cred_user), n);
	assert_int_equal(n, 100);
	assert_int_equal(faults, 1);

	pmfuse_pool_fake_unpoison(e.pool);
	th_env_reopen(&e);
	/* no block lost or taken: the rollback gave the allocation back (DRAM and pool) */
	assert_int_equal(th_free_blocks(&e), free0);
	struct th_fsck f;
	th_fsck_run(e.fs, &f);
	assert_int_equal(f.problems, 1);
	assert_true(th_fsck_has(&f, "damaged"));
	rc = th_set_size(&e, c, 4096);
	assert_int_equal(rc, 0);
	th_env_free(&e);
}

/* A fault on the inode table: the request fails, the mark cannot be written (logged), the
 * lock is free and the pool unchanged once the page is back. */
static void test_inode_table_fault(void **state)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct th_env e;
	struct pmfuse_attr at;
	uint64_t a, off;
	int rc;
	(void)state;

	pmfuse_pool_fault_init();
	th_env_new(&e, 8u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	assert_int_equal(pmfuse_inode_locate(e.fs, a, &ip, &leaf), 0);
	off = pmfuse_pool_offset(e.pool, leaf);
	assert_int_equal(pmfuse_pool_fake_poison(e.pool, off, e.bs), 0);

	faults = 0;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	GUARDED(&e, a, pmfuse_fs_getattr(e.fs, a, &at), rc);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(faults, 1);
	assert_int_equal(rc, -EIO);
	pmfuse_pool_fake_unpoison(e.pool);
	assert_false(damaged(&e, a));
	GUARDED(&e, a, pmfuse_fs_getattr(e.fs, a, &at), rc);
	assert_int_equal(rc, 0);
	assert_int_equal(faults, 1);
	th_fsck_clean(e.fs);
	th_env_free(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_catch),
		cmocka_unit_test(test_read_fault),
		cmocka_unit_test(test_tx_rollback),
		cmocka_unit_test(test_inode_table_fault),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
