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
 * Blocks are read through pmfuse_pool_data_view, a run of consecutive pool blocks at a time
 * (pread of a pool file where the daemon has not mapped the pages: no page fault each).
 * Bounded work per call: at most `max` blocks.
 */
#include "fs/fs_internal.h"

#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "meta/refcount.h"
#include "util/util.h"

struct bh {
	struct pmfuse_fs *fs;
	struct pmfuse_btree rc;
	uint64_t from, last, size;       /* last: the file's last block (size > 0) */
	uint64_t zero_hash;              /* XXH3 of a whole block of zeros */
	struct pmfuse_block_hash *out;
	unsigned max, n;
	uint64_t next;
	int err;
};

/* Bytes hashed per view of the pool (pmfuse_pool_data_view), in a buffer on the stack: at least
 * one block of the largest size. */
#define BH_CHUNK (64u << 10)
_Static_assert(BH_CHUNK >= PMFUSE_BLOCK_SIZE_MAX, "a block fits the buffer");

static int bh_ext(void *arg, const struct pmfuse_iext *e)
{
	struct bh *h = arg;
	uint64_t bs = h->fs->bs, pos = PMFUSE_MAX(e->fblock, h->from), end = e->fblock + e->len;
	uint8_t buf[BH_CHUNK];

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
				struct pmfuse_block_hash *o = &h->out[h->n++];
				const uint8_t *x = unwritten ? v : v + j * bs;
				size_t len = (size_t)(pos == h->last ? h->size - pos * bs : bs);

				o->fblock = pos;
				o->pblock = p;
				o->refcount = count;
				o->hash = XXH3_64bits(x, len);
				o->flags = (len == bs && o->hash == h->zero_hash &&
					    !memcmp(x, h->fs->zeroes, len)) ? PMFUSE_BLOCK_ZERO : 0;
			}
		}
	}
	return 0;
}

int pmfuse_fs_block_hashes(struct pmfuse_fs *fs, uint64_t ino, uint64_t from,
			   struct pmfuse_block_hash *out, unsigned max, uint64_t *next)
{
	struct bh h = { .fs = fs, .from = from, .out = out, .max = max, .next = UINT64_MAX };
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_extmap map;
	uint32_t mode;
	int rc;

	*next = UINT64_MAX;
	if (!max)
		return -EINVAL;
	h.zero_hash = XXH3_64bits(fs->zeroes, fs->bs);
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
