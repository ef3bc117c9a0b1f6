/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfuse ioctls, sent by pmfusectl through a pmfuse mount.
 *
 * The kernel's FICLONE, FICLONERANGE and FIDEDUPERANGE never reach a FUSE server (they fail with
 * EOPNOTSUPP in the VFS), but custom ioctls on regular files do, as "restricted" FUSE ioctls: the
 * kernel copies _IOC_SIZE bytes in and/or out as the number's direction says, so every argument
 * here is a fixed-size struct without pointers. The request carries the caller's pid; a file
 * descriptor in an argument is resolved by the daemon with pidfd_open + pidfd_getfd, and the
 * daemon checks the caller's rights on every file involved (the kernel only checked the file the
 * ioctl was issued on).
 *
 * The daemon works on what is on the pool, and the kernel writes back nothing before sending a
 * FUSE ioctl: a caller fsyncs (or fdatasyncs) every file it hands over first, the destination
 * of a clone included, when pages may be dirty in the page cache (a shared mapping, or any
 * write when the daemon runs with -o writeback_cache), or the clone, dedupe, hashes or
 * extents miss those pages, and a later write-back of the destination's lands over the cloned
 * blocks. pmfusectl does so. The daemon drops the destination's cached pages after a clone.
 *
 * All fields are native-endian (they never reach the pool).
 */
#ifndef PMFUSE_IOCTL_H
#define PMFUSE_IOCTL_H

#include <linux/ioctl.h>
#include <stdint.h>

#define PMFUSE_IOC_MAGIC 0xb7

/* Like FICLONERANGE, issued on the destination (open for writing). src_length 0: to source EOF. */
struct pmfuse_ioc_clone_range {
	int64_t src_fd;
	uint64_t src_offset;
	uint64_t src_length;
	uint64_t dest_offset;
};

/* Like FALLOC_FL_UNSHARE_RANGE: give the file private copies of its shared blocks in the range.
 * length 0: to EOF. */
struct pmfuse_ioc_unshare {
	uint64_t offset;
	uint64_t length;
};

/* Like FIDEDUPERANGE with one destination, issued on the source (open for reading). The daemon
 * compares the bytes in the pool and shares the blocks only where they are equal. */
#define PMFUSE_DEDUPE_SAME    0
#define PMFUSE_DEDUPE_DIFFERS 1
struct pmfuse_ioc_dedupe_range {
	uint64_t src_offset;
	uint64_t src_length;
	int64_t dest_fd;            /* open for writing, or owned by the caller, or caller is root */
	uint64_t dest_offset;
	uint64_t bytes_deduped;     /* out */
	int32_t status;             /* out: PMFUSE_DEDUPE_* or -errno */
	uint32_t reserved;
};

/*
 * Range dedupe, issued on the source (open for reading), with the same rights as
 * PMFUSE_IOC_DEDUPE_RANGE on the destination: the daemon walks both ranges block by block in
 * the pool and shares every run of equal blocks, leaving the differing ones alone (no verdict:
 * the counts say what it found). Blocks already shared are not compared; holes compare as zeros.
 * Offsets are multiples of the block size and both ranges start and end inside their files
 * (EINVAL otherwise); length 0 means as far as both files go. One call covers at most 256 MiB
 * (the daemon holds its lock per 16 MiB piece, compare and remap together): `compared` says how
 * far it got, and the caller goes on from src_offset + compared (0: nothing more to do).
 * Errors concerning the destination are the ioctl's errors (EBADF, EXDEV, EISDIR, EPERM).
 */
struct pmfuse_ioc_dedupe_blocks {
	uint64_t src_offset;        /* in */
	uint64_t length;            /* in: bytes; 0 as far as both files go */
	int64_t dest_fd;            /* in: open for writing, or owned by the caller, or root */
	uint64_t dest_offset;       /* in */
	uint32_t flags;             /* in: none defined, must be 0 */
	uint32_t reserved;          /* must be 0 */
	uint64_t compared;          /* out: bytes of the range walked */
	uint64_t deduped;           /* out: bytes newly sharing the source's blocks */
	uint64_t same;              /* out: bytes shared already, or zeros in both */
	uint64_t differ;            /* out: bytes in blocks that differ */
	uint64_t reserved2[3];      /* must be 0 */
};
_Static_assert(sizeof(struct pmfuse_ioc_dedupe_blocks) == 96, "no implicit padding");

/* The file's extents from byte start on, at most PMFUSE_IOC_EXTENTS_MAX per call. */
#define PMFUSE_IOC_EXTENTS_MAX 64
#define PMFUSE_EXTENT_SHARED 1u
/* Allocated but reads as zeros (fallocate, ZERO_RANGE). Not PMFUSE_EXTENT_UNWRITTEN: that is the
 * record flag of format.h, a different number space. */
#define PMFUSE_IOC_EXTENT_UNWRITTEN 2u
struct pmfuse_ioc_extent {
	uint64_t logical;           /* byte offset in the file */
	uint64_t physical;          /* byte offset in the pool */
	uint64_t length;            /* bytes */
	uint32_t flags;             /* PMFUSE_EXTENT_SHARED, PMFUSE_IOC_EXTENT_UNWRITTEN */
	uint32_t refcount;          /* owners of the first block of the extent */
};
struct pmfuse_ioc_extents {
	uint64_t start;             /* in: byte offset to list from */
	uint64_t next;              /* out: where the next call starts; UINT64_MAX when done */
	uint32_t count;             /* out: extents filled */
	uint32_t block_size;        /* out */
	struct pmfuse_ioc_extent ext[PMFUSE_IOC_EXTENTS_MAX];
};

/*
 * Block hashes for dedupe scans, issued on a file open for reading: for its mapped blocks from
 * byte `start` on (rounded down to a block), in file order, at most PMFUSE_IOC_HASHES_MAX per
 * call, each block's XXH3_64bits (libxxhash, seed 0) computed by the daemon from the pool, its
 * pool offset and its refcount, so that a scan moves 32 bytes per block instead of the block.
 * Holes and blocks past EOF are not listed (they read as zeros); a partial last block is
 * hashed over its bytes inside EOF; a block of zeros is flagged. Blocks whose physical offsets
 * are equal already share. A hash is a hint: the dedupe that follows compares the bytes.
 */
#define PMFUSE_IOC_HASHES_MAX 384
#define PMFUSE_HASH_ZERO 1u
struct pmfuse_ioc_block_hash {
	uint64_t logical;           /* byte offset in the file */
	uint64_t physical;          /* byte offset in the pool */
	uint64_t hash;              /* XXH3_64bits of the block's bytes inside EOF */
	uint32_t refcount;          /* owners of the pool block */
	uint32_t flags;             /* PMFUSE_HASH_ZERO */
};
struct pmfuse_ioc_block_hashes {
	uint64_t start;             /* in: byte offset */
	uint32_t flags;             /* in: none defined, must be 0 */
	uint32_t reserved;          /* must be 0 */
	uint64_t next;              /* out: where the next call starts; UINT64_MAX when done */
	uint32_t count;             /* out: entries filled */
	uint32_t block_size;        /* out */
	uint64_t reserved2[2];      /* must be 0 */
	struct pmfuse_ioc_block_hash h[PMFUSE_IOC_HASHES_MAX];
};
_Static_assert(sizeof(struct pmfuse_ioc_block_hash) == 32, "no implicit padding");
_Static_assert(sizeof(struct pmfuse_ioc_block_hashes) == 48 + 32 * PMFUSE_IOC_HASHES_MAX,
	       "no implicit padding");
_Static_assert(sizeof(struct pmfuse_ioc_block_hashes) < (1u << 14), "fits _IOC_SIZE");

/*
 * Block hashes, packed (PMFUSE_IOC_BLOCK_HASHES2): what PMFUSE_IOC_BLOCK_HASHES says, at about
 * 8 bytes a block instead of 32, so that one call answers for ~2,000 blocks (8 MiB of 4 KiB
 * blocks) instead of 384: a scan makes a fifth of the FUSE round trips, which cost about as
 * much as the hashing they carry. Blocks of zeros are left out (a scan skips them). The answer
 * is `runs` runs, each of blocks consecutive in the file and in the pool with one refcount
 * (struct pmfuse_ioc_hash_run, 3 words), in file order, then one hash per block of the runs,
 * in the same order: data[0, 3 * runs) and data[3 * runs, 3 * runs + hashes). The blocks from
 * byte `start` (rounded down to a block) up to byte `end` (0: to EOF; rounded up to a block)
 * are looked at. `next`: where the next call starts, UINT64_MAX when no mapped block is left
 * before EOF; a caller with an end stops when next >= end. Older daemons answer ENOTTY (the
 * command is unknown to them): PMFUSE_IOC_BLOCK_HASHES then.
 */
#define PMFUSE_IOC_HASHES2_WORDS 2039
struct pmfuse_ioc_hash_run {
	uint64_t logical;           /* byte offset in the file of its first block */
	uint64_t physical;          /* byte offset in the pool of its first block */
	uint32_t blocks;            /* consecutive blocks, in the file and in the pool */
	uint32_t refcount;          /* owners of each of its pool blocks */
};
struct pmfuse_ioc_block_hashes2 {
	uint64_t start;             /* in: byte offset */
	uint64_t end;               /* in: byte offset to stop at; 0: EOF */
	uint32_t flags;             /* in: none defined, must be 0 */
	uint32_t reserved;          /* must be 0 */
	uint64_t next;              /* out: where the next call starts; UINT64_MAX when done */
	uint32_t runs;              /* out: runs in data */
	uint32_t hashes;            /* out: hashes in data after the runs (the runs' blocks) */
	uint32_t block_size;        /* out */
	uint32_t reserved2;         /* must be 0 */
	uint64_t reserved3[2];      /* must be 0 */
	uint64_t data[PMFUSE_IOC_HASHES2_WORDS];
};
_Static_assert(sizeof(struct pmfuse_ioc_hash_run) == 3 * sizeof(uint64_t), "3 words a run");
_Static_assert(sizeof(struct pmfuse_ioc_block_hashes2) == 64 + 8 * PMFUSE_IOC_HASHES2_WORDS,
	       "no implicit padding");
_Static_assert(sizeof(struct pmfuse_ioc_block_hashes2) < (1u << 14), "fits _IOC_SIZE");

#define PMFUSE_IOC_CLONE_RANGE  _IOW(PMFUSE_IOC_MAGIC, 1, struct pmfuse_ioc_clone_range)
#define PMFUSE_IOC_UNSHARE      _IOW(PMFUSE_IOC_MAGIC, 2, struct pmfuse_ioc_unshare)
#define PMFUSE_IOC_DEDUPE_RANGE _IOWR(PMFUSE_IOC_MAGIC, 3, struct pmfuse_ioc_dedupe_range)
#define PMFUSE_IOC_GET_EXTENTS  _IOWR(PMFUSE_IOC_MAGIC, 4, struct pmfuse_ioc_extents)
#define PMFUSE_IOC_DEDUPE_BLOCKS _IOWR(PMFUSE_IOC_MAGIC, 5, struct pmfuse_ioc_dedupe_blocks)
#define PMFUSE_IOC_BLOCK_HASHES _IOWR(PMFUSE_IOC_MAGIC, 6, struct pmfuse_ioc_block_hashes)
#define PMFUSE_IOC_BLOCK_HASHES2 _IOWR(PMFUSE_IOC_MAGIC, 7, struct pmfuse_ioc_block_hashes2)

_Static_assert(sizeof(struct pmfuse_ioc_extents) < (1u << 14), "fits _IOC_SIZE");

#endif /* PMFUSE_IOCTL_H */
