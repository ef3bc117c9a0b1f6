/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A volume: an opened pmfuse pool with its superblock checked, its log recovered, its allocator
 * indexed and its state block at hand. Everything above (src/fs, the tools, the tests) starts
 * from here. Also home of mkfs, since formatting is laying out exactly what open checks.
 */
#ifndef PMFUSE_VOLUME_H
#define PMFUSE_VOLUME_H

#include <stdbool.h>
#include <stdint.h>

#include "pmfuse/format.h"
#include "pool/pool.h"

struct pmfuse_pool;
struct pmfuse_txm;
struct pmfuse_alloc;

struct pmfuse_volume {
	struct pmfuse_pool *pool;
	struct pmfuse_txm *txm;
	struct pmfuse_alloc *alloc;          /* NULL on a read-only volume */
	struct pmfuse_sb sb;                 /* DRAM copy of the valid superblock */
	int sb_copy;                         /* 0 if the primary was valid, 1 if only the secondary */
	struct pmfuse_state *state;          /* on the pool */
	uint32_t block_size;
	bool readonly;
	bool recovered;                      /* the log held a transaction that was rolled back */
	bool was_clean;                      /* clean flag at open */
	bool sb_other_bad;                   /* the copy not used was damaged or older (msg says
						which); a writable open rewrote it */
	bool state_bad;                      /* PMFUSE_VOL_REPAIR: the state block fails its
						checks; nothing may read it before fsck rebuilds
						it (pmfuse_fs_repair_state) */
	bool log_reformatted;                /* PMFUSE_VOL_REPAIR: the log header was damaged
						and formatted anew */
	bool log_pending;                    /* read-only open only: the log holds a transaction
						that was not rolled back, txm is NULL, and the
						metadata is the image before recovery (it may fail
						checks until a writable open recovers it) */
	unsigned log_pending_lanes;          /* with log_pending: lanes of the log holding one
						unfinished transaction each */
};

/* Helpers to address blocks. */
/* Whether the pool's b+trees may have underfull right-edge nodes (format.h: EDGE_FILL). */
static inline bool pmfuse_volume_edge_fill(const struct pmfuse_volume *vol)
{
	return pmfuse_le64(vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_EDGE_FILL;
}

static inline void *pmfuse_volume_block(const struct pmfuse_volume *vol, uint64_t blk)
{
	return (char *)pmfuse_pool_base(vol->pool) + blk * vol->block_size;
}

struct pmfuse_mkfs_opts {
	uint32_t block_size;                 /* 0: PMFUSE_BLOCK_SIZE_DEFAULT */
	const char *label;                   /* NULL: empty */
	const uint8_t *uuid;                 /* NULL: random */
	uint64_t log_blocks;                 /* 0: chosen from the pool size (and lanes) */
	unsigned log_lanes;                  /* transactions that may run at once (format.h:
						INCOMPAT_LOG_LANES beyond 1); 0: one per CPU
						while each lane keeps 32 blocks, at most 64 */
	/* Progress: called with (done, total) now and then during long work; may be NULL. */
	void (*progress)(void *arg, uint64_t done, uint64_t total);
	void *progress_arg;
};

/* Labels mkfs accepts: at most PMFUSE_LABEL_MAX bytes of UTF-8, no control characters. */
bool pmfuse_label_valid(const char *label);

/* Smallest pool mkfs accepts for a block size (0: the default), in bytes; 0 for a bad block size.
 * It holds the superblocks, the state block, a log of 32 blocks, the bitmap and 256 data blocks. */
uint64_t pmfuse_mkfs_min_size(uint32_t block_size);

/*
 * Formats the mapped pool (all of it, rounded down to whole blocks). Writes the log, bitmap, state
 * block and both superblocks, superblocks last, so an interrupted mkfs leaves no valid pool.
 * -EINVAL for a bad block size or label; -ENOSPC when the pool is smaller than
 * pmfuse_mkfs_min_size().
 */
int pmfuse_mkfs(struct pmfuse_pool *pool, const struct pmfuse_mkfs_opts *opts);

/* Open flags. */
#define PMFUSE_VOL_RDONLY (1u << 0)  /* no writes at all: no recovery, no clean-flag update */
#define PMFUSE_VOL_MOUNT  (1u << 1)  /* clear the clean flag and count the mount (daemon) */
/* fsck repair (writable): a log header that fails its checks is formatted anew (the transaction
 * it may have held is lost), a damaged bitmap leaves vol->alloc NULL for repair to rebuild, and
 * a damaged state block sets state_bad. */
#define PMFUSE_VOL_REPAIR (1u << 2)

/*
 * Opens the volume on an already opened pool. Checks both superblocks (picking the valid one with
 * the highest seq; if the primary is bad and the volume is writable, rewrites it from the
 * secondary), refuses unknown incompat features (-EOPNOTSUPP) and forces read-only on unknown
 * ro_compat ones (-EROFS if a writable open was asked). Runs log recovery, checks the state block
 * and builds the allocator index. Damage is -EUCLEAN with a message in msg (may be NULL).
 * On success msg holds notes ("" if none): a damaged or stale superblock copy, a recovered log,
 * an unclean previous mount, a pending transaction on a read-only open.
 * Other errors: -EROFS (writable open of a read-only pool, or unknown ro_compat features),
 * -EINVAL (PMFUSE_VOL_MOUNT with PMFUSE_VOL_RDONLY), -ENOMEM.
 */
int pmfuse_volume_open(struct pmfuse_pool *pool, unsigned flags, struct pmfuse_volume **out,
		       char *msg, size_t msglen);

/* Closes; with PMFUSE_VOL_MOUNT set at open, marks the superblock clean first. */
void pmfuse_volume_close(struct pmfuse_volume *vol);

/* Writes the DRAM superblock to both copies with the two-copy protocol (seq bumped). -EROFS;
 * -EIO when a copy met a memory error (logged; the other copy is written all the same). */
int pmfuse_volume_write_sb(struct pmfuse_volume *vol);

/*
 * What the two superblock copies look like, without opening anything else (tools, fsck). The
 * secondary is looked for at the primary's sb2_block when the primary is sound enough to say
 * (magic and block size), else at the last block of the pool for every valid block size.
 */
struct pmfuse_sb_probe {
	struct pmfuse_sb sb;                 /* the chosen copy: valid, highest seq, primary on a tie */
	int copy;                            /* 0 primary, 1 secondary, -1 neither is valid */
	uint64_t blk[2];                     /* block of each copy (blk[1] == 0: no candidate) */
	bool valid[2];                       /* copy passed pmfuse_sb_check */
	uint64_t seq[2];                     /* seq of each valid copy */
	char why[2][160];                    /* what is wrong with each copy, "" when valid */
	bool relabeled;                      /* neither copy valid, but the primary is a sound
						superblock labelled as the other copy (the
						two copies swapped): it is sb, copy 0, and a
						writable open rewrites both */
};

/* Fills *probe. 0 when a valid copy was found (or probe->relabeled), else -EUCLEAN
 * (probe->why says why). No writes. */
int pmfuse_sb_probe(struct pmfuse_pool *pool, struct pmfuse_sb_probe *probe);

/* Validates one superblock copy found at block blk of the pool: 0 or -EUCLEAN with msg. */
int pmfuse_sb_check(const struct pmfuse_sb *sb, uint64_t blk, uint64_t pool_size, char *msg,
		    size_t msglen);

#endif /* PMFUSE_VOLUME_H */
