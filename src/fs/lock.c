/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Per-inode locks: a fixed table of reader/writer locks, inode ino using stripe
 * ino & (PMFUSE_ILOCK_STRIPES - 1). A bounded table needs no allocation, no reference counts
 * and no lookup of its own; two inodes on one stripe share its lock, which is only a little
 * less concurrency. The stripes a thread holds are recorded per thread so that recovery from a
 * memory error (fault.c) lets go of them.
 *
 * Order (fs_internal.h): an operation takes all its inode locks at once, in ascending stripe
 * order (one lock per stripe however many of its inodes fall there, exclusive if any of them
 * wants it), before fs->lock and before any transaction. It never takes a second set while it
 * holds one: a name's target that can only be known after reading the directory is found
 * first, then everything is locked in order and the name checked again (fs_ilock_retry).
 */
#include "fs/fs_internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

__thread struct pmfuse_ilocks_held pmfuse_ilocks_held;

int pmfuse_ilock_init(struct pmfuse_fs *fs)
{
	pthread_rwlockattr_t a;

	fs->ilocks = calloc(PMFUSE_ILOCK_STRIPES, sizeof(*fs->ilocks));
	if (!fs->ilocks)
		return -ENOMEM;
	/* writer-preferring: a stream of readers (stat, read) must not starve a writer; a
	 * thread never takes a stripe it holds, which is what that kind needs */
	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	for (unsigned i = 0; i < PMFUSE_ILOCK_STRIPES; i++)
		pthread_rwlock_init(&fs->ilocks[i].lock, &a);
	pthread_rwlockattr_destroy(&a);
	return 0;
}

void pmfuse_ilock_fini(struct pmfuse_fs *fs)
{
	if (!fs->ilocks)
		return;
	for (unsigned i = 0; i < PMFUSE_ILOCK_STRIPES; i++)
		pthread_rwlock_destroy(&fs->ilocks[i].lock);
	free(fs->ilocks);
	fs->ilocks = NULL;
}

static struct pmfuse_ilock_frame *frame_of(struct pmfuse_fs *fs)
{
	struct pmfuse_ilocks_held *h = &pmfuse_ilocks_held;

	for (unsigned i = h->depth; i-- > 0;)
		if (h->f[i].fs == fs)
			return &h->f[i];
	return NULL;
}

void fs_ilock(struct pmfuse_fs *fs, const struct pmfuse_ilock_req *req, unsigned n)
{
	struct pmfuse_ilocks_held *h = &pmfuse_ilocks_held;
	struct pmfuse_ilock_frame *fr;
	uint32_t stripe[PMFUSE_ILOCK_MAX];
	bool excl[PMFUSE_ILOCK_MAX];
	unsigned k = 0;

	assert(n <= PMFUSE_ILOCK_MAX && h->depth < PMFUSE_ILOCK_FRAMES);
	assert(!frame_of(fs) && pmfuse_fs_lock_held != fs);
	for (unsigned i = 0; i < n; i++) {
		uint32_t s;
		unsigned j;

		if (!req[i].ino)
			continue;
		s = pmfuse_ilock_stripe(req[i].ino);
		/* insertion into the sorted, distinct list */
		for (j = 0; j < k && stripe[j] < s; j++)
			;
		if (j < k && stripe[j] == s) {
			excl[j] |= req[i].excl;
			continue;
		}
		for (unsigned m = k; m > j; m--) {
			stripe[m] = stripe[m - 1];
			excl[m] = excl[m - 1];
		}
		stripe[j] = s;
		excl[j] = req[i].excl;
		k++;
	}
	fr = &h->f[h->depth++];
	fr->fs = fs;
	fr->n = 0;
	for (unsigned i = 0; i < k; i++) {
		pthread_rwlock_t *l = &fs->ilocks[stripe[i]].lock;

		if (excl[i])
			pthread_rwlock_wrlock(l);
		else
			pthread_rwlock_rdlock(l);
		fr->stripe[i] = stripe[i];
		fr->n = i + 1;
	}
}

void fs_ilock1(struct pmfuse_fs *fs, uint64_t ino, bool excl)
{
	struct pmfuse_ilock_req r = { ino, excl };

	fs_ilock(fs, &r, 1);
}

void fs_iunlock(struct pmfuse_fs *fs)
{
	struct pmfuse_ilocks_held *h = &pmfuse_ilocks_held;
	struct pmfuse_ilock_frame *fr = frame_of(fs);

	if (!fr)
		return;
	/* newest first; the order of unlocking does not matter for deadlocks */
	while (fr->n) {
		fr->n--;
		pthread_rwlock_unlock(&fs->ilocks[fr->stripe[fr->n]].lock);
	}
	for (; fr + 1 < &h->f[h->depth]; fr++)
		*fr = fr[1];
	h->depth--;
}
