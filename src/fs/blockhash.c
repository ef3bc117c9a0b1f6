/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Block hashes for dedupe scans (pmfuse_fs_block_hashes, fs.h): for each mapped block of a
 * file from a given block on, its XXH3_64bits (libxxhash) computed from the pool, its pool
 * block and its refcount, so that a scanner (pmfusectl dedupe --scan) moves 32 bytes per block
 * across FUSE instead of the block's bytes.
 *
 * Walk: the extent map from `from` on (pmfuse_extent_walk), each extent split into runs of
 * equal refcount (one refcount lookup per run, as the extent report does), each block hashed
 * over the bytes inside EOF (a partial last block hashes its own length, so that it matches
 * only a partial block of the same length); an unwritten block hashes as the zeros it reads
 * as, never its stale bytes. Holes are skipped: they cost nothing and hold
 * zeros. A block of zeros is flagged (PMFUSE_BLOCK_ZERO): its hash is compared with the hash
 * of a zero block first, then its bytes with zeros. Under the reader lock: a hash is a hint,
 * never trusted; the dedupe that follows compares the bytes again under the writer lock.
 * Blocks are read through pmfuse_pool_data_view, a run of consecutive pool blocks (up to
 * BH_CHUNK) at a time (pread of a pool file where the daemon has not mapped the pages: no page
 * fault each) into a buffer each thread keeps, so that several threads hash at once (readers
 * share the lock) and a view costs one pagemap check per 2 MiB, not per 64 KiB.
 * Bounded work per call: at most `max` blocks. With a budget (the packed answer of
 * PMFUSE_IOC_BLOCK_HASHES2) the walk also stops at the first block whose entry would not fit;
 * that block was hashed for nothing, once per call.
 */
#include "fs/fs_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef PMFUSE_XXH3_DISPATCH
#include <xxh_x86dispatch.h>
#define bh_xxh3 XXH3_64bits_dispatch     /* the same hash, vectorised for the CPU at hand */
#else
#include <xxhash.h>
#define bh_xxh3 XXH3_64bits
#endif

#include "meta/refcount.h"
#include "util/util.h"

struct bh {
	struct pmfuse_fs *fs;
	struct pmfuse_btree rc;
	uint64_t from, last, size;       /* last: the file's last block (size > 0) */
	uint64_t zero_hash;              /* XXH3 of a whole block of zeros */
	struct pmfuse_block_hash *out;
	uint8_t *buf;                    /* BH_CHUNK bytes: this thread's (bh_buffer) */
	struct pmfuse_hash_budget *budget;   /* or NULL */
	unsigned max, n;
	uint64_t next;
	int err;
};

/* Bytes hashed per view of the pool (pmfuse_pool_data_view), in a buffer of the calling
 * thread's: at least one block of the largest size. */
#define BH_CHUNK (2u << 20)
_Static_assert(BH_CHUNK >= PMFUSE_BLOCK_SIZE_MAX, "a block fits the buffer");

static pthread_key_t bh_key;
static pthread_once_t bh_once = PTHREAD_ONCE_INIT;
static int bh_key_err;

static void bh_key_make(void)
{
	bh_key_err = pthread_key_create(&bh_key, free);
}

/* The calling thread's BH_CHUNK buffer (freed when the thread ends), or NULL. Kept, not
 * allocated per call: a fresh 2 MiB allocation is a fresh mapping whose first touches fault
 * page by page. */
static uint8_t *bh_buffer(void)
{
	uint8_t *b;

	pthread_once(&bh_once, bh_key_make);
	if (bh_key_err)
		return NULL;
	b = pthread_getspecific(bh_key);
	if (!b) {
		b = malloc(BH_CHUNK);
		if (b && pthread_setspecific(bh_key, b)) {
			free(b);
			b = NULL;
		}
	}
	return b;
}

/* With a budget: whether entry o (the next one) fits it; if so, takes its cost. */
static bool bh_afford(struct bh *h, const struct pmfuse_block_hash *o)
{
	const struct pmfuse_block_hash *prev = h->n ? o - 1 : NULL;
	unsigned cost = 1;

	if (o->flags & PMFUSE_BLOCK_ZERO)
		return true;
	if (!prev || (prev->flags & PMFUSE_BLOCK_ZERO) || prev->fblock + 1 != o->fblock ||
	    prev->pblock + 1 != o->pblock || prev->refcount != o->refcount)
		cost += h->budget->run_words;
	if (cost > h->budget->words)
		return false;
	h->budget->words -= cost;
	return true;
}

static int bh_ext(void *arg, const struct pmfuse_iext *e)
{
	struct bh *h = arg;
	uint64_t bs = h->fs->bs, pos = PMFUSE_MAX(e->fblock, h->from), end = e->fblock + e->len;
	uint8_t *buf = h->buf;

	/* blocks past EOF (preallocated by fallocate KEEP_SIZE) hold nothing readable */
	end = PMFUSE_MIN(end, h->last + 1);
	while (pos < end) {
		uint64_t p = e->pblock + (pos - e->fblock), run;
		uint32_t count;

		h->err = pmfuse_refcount_get(&h->rc, p, end - pos, &count, &run);
		if (h->err)
			return 1;
		for (uint64_t i = 0; i < run;) {
			uint64_t k = PMFUSE_MIN(BH_CHUNK / bs, run - i);
			bool unwritten = e->flags & PMFUSE_EXTENT_UNWRITTEN;
			const uint8_t *v;

			if (h->n == h->max) {
				h->next = pos;
				return 1;
			}
			k = PMFUSE_MIN(k, (uint64_t)(h->max - h->n));
			/* an unwritten block reads as zeros; its bytes (maybe another file's
			 * old data) must not leak, not even as a hash */
			v = unwritten ? h->fs->zeroes :
				pmfuse_pool_data_view(h->fs->pool, p * bs, (size_t)(k * bs), buf,
						      &h->err);
			if (!v)
				return 1;
			for (uint64_t j = 0; j < k; j++, i++, pos++, p++) {
				struct pmfuse_block_hash *o = &h->out[h->n];
				const uint8_t *x = unwritten ? v : v + j * bs;
				size_t len = (size_t)(pos == h->last ? h->size - pos * bs : bs);

				o->fblock = pos;
				o->pblock = p;
				o->refcount = count;
				o->hash = bh_xxh3(x, len);
				o->flags = (len == bs && o->hash == h->zero_hash &&
					    !memcmp(x, h->fs->zeroes, len)) ? PMFUSE_BLOCK_ZERO : 0;
				if (h->budget && !bh_afford(h, o)) {
					h->next = pos;
					return 1;
				}
				h->n++;
			}
		}
	}
	return 0;
}

int pmfuse_fs_block_hashes(struct pmfuse_fs *fs, uint64_t ino, uint64_t from,
			   struct pmfuse_block_hash *out, unsigned max,
			   struct pmfuse_hash_budget *budget, uint64_t *next)
{
	struct bh h = { .fs = fs, .from = from, .out = out, .max = max, .next = UINT64_MAX,
			.budget = budget };
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_extmap map;
	uint32_t mode;
	int rc;

	*next = UINT64_MAX;
	if (!max)
		return -EINVAL;
	h.zero_hash = bh_xxh3(fs->zeroes, fs->bs);
	h.buf = bh_buffer();
	if (!h.buf)
		return -ENOMEM;
	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc) {
		mode = pmfuse_le32(ip->mode);
		rc = S_ISDIR(mode) ? -EISDIR : !S_ISREG(mode) ? -EINVAL : 0;
	}
	if (!rc) {
		h.size = pmfuse_le64(ip->size);
		if (!h.size || from > (h.size - 1) / fs->bs)
			goto out;            /* nothing mapped inside EOF from here */
		h.last = (h.size - 1) / fs->bs;
		pmfuse_refcount_tree(fs->vol, &h.rc);
		pmfuse_extmap_open(&map, fs, ip, leaf);
		rc = pmfuse_extent_walk(&map, from, h.last + 1, bh_ext, &h);
		if (rc > 0)
			rc = 0;
		if (!rc)
			rc = h.err;
		*next = h.next;
	}
out:
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc ? rc : (int)h.n;
}
