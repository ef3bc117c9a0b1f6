/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The block allocator.
 *
 * Persistent truth: the free-space bitmap (struct pmfuse_bitmap_blk), changed only inside
 * transactions. DRAM index: a copy of the bitmap that is the authority for handing out blocks,
 * plus a per-group summary (free count, longest run) so that searches skip full regions. It is
 * rebuilt from the persistent bitmap at open.
 *
 * Allocation marks the blocks used in both bitmaps at once; if the transaction aborts, an end
 * hook returns them to the DRAM bitmap (the undo log restores the persistent one). Freeing
 * clears the persistent bit inside the transaction but leaves the DRAM bit set until the
 * transaction commits, so a block freed in a transaction is never handed out again before that
 * free is durable (otherwise a crash could roll back to metadata pointing at overwritten data).
 *
 * Locking: the allocator has its own mutex; callers hold a transaction.
 */
#ifndef PMFUSE_ALLOC_H
#define PMFUSE_ALLOC_H

#include <stdint.h>

struct pmfuse_pool;
struct pmfuse_tx;
struct pmfuse_alloc;

struct pmfuse_alloc_geom {
	uint32_t block_size;
	uint64_t block_count;    /* blocks in the filesystem */
	uint64_t bitmap_start;   /* first bitmap block */
	uint64_t bitmap_blocks;
	uint64_t data_start;     /* blocks below this are never handed out */
	uint64_t sb2_block;      /* secondary superblock: never handed out */
};

/* Blocks of bitmap needed for block_count blocks of size bs. */
uint64_t pmfuse_alloc_bitmap_blocks(uint64_t block_count, uint32_t bs);

/* Writes the initial bitmap (mkfs): everything below data_start and sb2_block in use. Plain
 * persisted stores, no transaction (the pool is not live yet). -EINVAL for a geometry that does
 * not hold together or whose bitmap does not fit the pool, -EROFS. */
int pmfuse_alloc_format(struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *geom);

/* Verifies every bitmap block (-EUCLEAN) and builds the DRAM index. -ENOMEM, -EINVAL (geometry,
 * as for pmfuse_alloc_format). */
int pmfuse_alloc_open(struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *geom,
		      struct pmfuse_alloc **out);
void pmfuse_alloc_close(struct pmfuse_alloc *al);
/* Releases the allocator lock if this thread holds it: recovery from a memory error caught in
 * the middle of an allocator call (pool.h). The DRAM index stays usable; at worst a few free
 * blocks stay unavailable until the next mount rebuilds it. */
void pmfuse_alloc_release_held(void);

/*
 * Allocates one contiguous extent of between minlen and maxlen blocks (1 <= minlen <= maxlen),
 * preferring the longest run available up to maxlen that starts at or after goal, wrapping around
 * to the start of the data area. goal 0 means "anywhere". On success *start and *len describe the
 * extent. -ENOSPC when no run of minlen blocks is free: nothing changed. -ENOSPC also when the log
 * is full (the caller aborts either way).
 * Precisely (alloc.c): runs are visited in circular order from goal (a goal outside the data area
 * counts as data_start); the first run of minlen blocks opens a window of 32768 blocks, and the
 * longest run starting in it wins, cut to maxlen, the earliest on ties. A free goal followed by
 * maxlen free blocks is therefore taken as it is.
 * Other errors: -EINVAL (minlen 0 or minlen > maxlen), -ENOMEM, -EUCLEAN (the bitmap says a block
 * is used that the DRAM index holds free); nothing changed in either case.
 */
int pmfuse_alloc_extent(struct pmfuse_tx *tx, struct pmfuse_alloc *al, uint64_t goal,
			uint64_t minlen, uint64_t maxlen, uint64_t *start, uint64_t *len);

/* Frees [start, start + len). Freeing a block that is not allocated, or one outside the data
 * area, is corruption (-EUCLEAN); nothing changes in that case. The blocks become allocatable
 * when tx commits. Also -EINVAL (len 0), -ENOSPC (log full), -ENOMEM, with nothing changed. */
int pmfuse_alloc_free(struct pmfuse_tx *tx, struct pmfuse_alloc *al, uint64_t start,
		      uint64_t len);

/* Blocks free right now in DRAM (what statfs reports). */
uint64_t pmfuse_alloc_free_blocks(struct pmfuse_alloc *al);

/* 1 if block is allocated in the persistent bitmap, 0 if free, -ERANGE if outside the fs. */
int pmfuse_alloc_is_used(struct pmfuse_alloc *al, uint64_t block);

/* Cross-checks the DRAM index (bitmap copy, group summaries, free count) against the persistent
 * bitmap: 0 or -EUCLEAN. Call between transactions (blocks freed by a running transaction are
 * still used in DRAM). Tests, and debug checks of a mounted volume. */
int pmfuse_alloc_check(struct pmfuse_alloc *al);

/* Free blocks counted from the persistent bitmap of an unmounted pool, with the bitmap checked
 * (tools). -EUCLEAN on a damaged bitmap block. */
int pmfuse_alloc_count_free(struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *geom,
			    uint64_t *free_blocks);

#endif /* PMFUSE_ALLOC_H */
