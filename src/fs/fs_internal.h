/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the modules of src/fs share. Not for use outside src/fs.
 *
 * Modules:
 *   fs.c      open/close, the fs lock, lookup counts, orphan list, statfs, freeing inodes
 *   inode.c   the inode table: locate, create, attributes, setattr
 *   dir.c     directory trees and the namespace operations (mknod ... rename, readdir)
 *   xattr.c   extended attributes
 *   extent.c  per-file extent maps: map, insert, remove ranges (freeing blocks)
 *   data.c    read, write, truncate, fallocate, lseek
 *
 * Inode records live in the leaves of the inode table. pmfuse_inode_locate() returns a pointer to
 * the record in the pool and the leaf block that holds it; fields are changed in place after
 * declaring them with pmfuse_inode_change() (which reseals the leaf). Such a pointer stays valid
 * until the inode TABLE is modified (an inode created or freed): locate again after that.
 * Operations on an inode's own trees (extent map, directory, xattrs) do not move the record.
 *
 * Lock order: fs->lock (rwlock: readers share, every modification is a writer) before the
 * transaction manager's lock (pmfuse_tx_begin) before the allocator's. fs->lookup_lock only
 * guards the lookup-count table and is taken with or without fs->lock, never around it.
 */
#ifndef PMFUSE_FS_INTERNAL_H
#define PMFUSE_FS_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "fs/fs.h"
#include "meta/alloc.h"
#include "meta/btree.h"
#include "meta/volume.h"
#include "pmfuse/format.h"
#include "tx/tx.h"

/* DRAM lookup counts: ino -> nlookup (kernel references). */
struct pmfuse_lookup_entry {
	uint64_t ino;
	uint64_t count;
};

struct pmfuse_fs {
	struct pmfuse_volume *vol;
	struct pmfuse_pool *pool;
	struct pmfuse_txm *txm;
	struct pmfuse_alloc *alloc;
	uint32_t bs;
	bool readonly;
	pthread_rwlock_t lock;
	struct pmfuse_btree inodes;           /* over state->roots[PMFUSE_ROOT_INODES] */
	struct pmfuse_btree orphans;          /* over state->roots[PMFUSE_ROOT_ORPHANS] */
	pthread_mutex_t lookup_lock;
	struct pmfuse_lookup_entry *lookups;  /* open-addressing table, 0 = empty slot */
	size_t nlookups, lookups_used;
	const void *zeroes;                   /* PMFUSE_ZERO_BUF bytes of zeros, for holes */
};

#define PMFUSE_ZERO_BUF (1u << 20)

/* b+tree ops of the fs trees (defined by the module that owns each tree). */
extern const struct pmfuse_btree_ops pmfuse_inode_ops;   /* inode.c */
extern const struct pmfuse_btree_ops pmfuse_dirent_ops;  /* dir.c */
extern const struct pmfuse_btree_ops pmfuse_extent_ops;  /* extent.c */
extern const struct pmfuse_btree_ops pmfuse_xattr_ops;   /* xattr.c */
extern const struct pmfuse_btree_ops pmfuse_orphan_ops;  /* fs.c */

/* ---- inode.c ---- */
int pmfuse_inode_locate(struct pmfuse_fs *fs, uint64_t ino, struct pmfuse_inode **ip,
			struct pmfuse_blk_hdr **leaf);
/* Declares a range of a located inode record before changing it. */
int pmfuse_inode_change(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf, void *field,
			size_t len);
/* Handle over one of the inode's own trees (map or xattrs) with the right owner and ops. */
void pmfuse_inode_tree(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		       struct pmfuse_btree_root *root, const struct pmfuse_btree_ops *ops,
		       struct pmfuse_btree *bt);
/* Creates an inode record (nlink 1, owner from cred and the setgid rule of dir_ip, times now;
 * a directory gets nlink 2 and parent = dir_ip's ino). dir_ip NULL creates the root directory
 * at state->root_ino (fs open on a fresh pool). Invalidates located pointers. *ino gets the new
 * number. */
int pmfuse_inode_create(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint32_t mode, uint64_t rdev,
			const struct pmfuse_cred *cred, const struct pmfuse_inode *dir_ip,
			uint64_t *ino);
/* Sets the named timestamps (PMFUSE_TIME_*) of a located inode to now, and reseals its leaf. */
#define PMFUSE_TIME_A 1u
#define PMFUSE_TIME_M 2u
#define PMFUSE_TIME_C 4u
int pmfuse_inode_touch(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf, struct pmfuse_inode *ip,
		       unsigned which);
void pmfuse_inode_to_attr(const struct pmfuse_fs *fs, const struct pmfuse_inode *ip,
			  struct pmfuse_attr *attr);
void pmfuse_timestamp_now(struct pmfuse_timestamp *ts);

/* ---- fs.c ---- */
int pmfuse_orphan_add(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino);
int pmfuse_orphan_del(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino);
/* Takes one lookup reference. */
void pmfuse_lookup_ref(struct pmfuse_fs *fs, uint64_t ino);
/* Frees an inode with nlink 0 and no references: its data, xattrs and record (several
 * transactions; the orphan entry keeps the work restartable after a crash). Write lock held. */
int pmfuse_inode_free(struct pmfuse_fs *fs, uint64_t ino);
/* Frees ino if it has nlink 0 and no lookup references; 0 otherwise too. Write lock held. */
int pmfuse_inode_release(struct pmfuse_fs *fs, uint64_t ino);
/* Inside tx: deletes the record of a located inode with nlink 0 that owns nothing (no map, no
 * xattrs, no blocks) and has no lookup references; returns 1 when it did, 0 when the inode needs
 * the orphan list and pmfuse_inode_free instead. Invalidates located pointers when it returns 1.*/
int pmfuse_inode_drop(struct pmfuse_fs *fs, struct pmfuse_tx *tx, const struct pmfuse_inode *ip);

/* ---- extent.c / data.c (callers hold fs->lock for writing unless noted) ---- */
/* Frees every block mapped at or after file block from, in as many transactions as needed. */
int pmfuse_data_trim(struct pmfuse_fs *fs, uint64_t ino, uint64_t from_block);
/* Truncate to size (zeroes the tail of a partial last block; shrinking frees blocks). */
int pmfuse_data_set_size(struct pmfuse_fs *fs, uint64_t ino, uint64_t size);
/* Write and read without taking fs->lock (symlink targets). */
ssize_t pmfuse_data_write_locked(struct pmfuse_fs *fs, uint64_t ino, const void *buf,
				 size_t len, uint64_t off);
ssize_t pmfuse_data_pread_locked(struct pmfuse_fs *fs, uint64_t ino, void *buf, size_t len,
				 uint64_t off);
/* Free blocks that file data never takes (writes and fallocate see ENOSPC before), so that the
 * metadata of deleting and truncating (orphan entries, map splits) finds blocks on a full pool.
 * clamp(data blocks / 128, 8, 256). statfs should report blocks_avail = free - this. */
uint64_t pmfuse_data_reserve(const struct pmfuse_fs *fs);

/* ---- extent.c: a file's extent map, one transaction at a time (data.c strings them) ---- */
/* Largest file: st_size is an off_t, so 2^63 - 1 bytes; file blocks stay below 2^63 / bs. */
#define PMFUSE_FILE_SIZE_MAX ((uint64_t)INT64_MAX)
static inline uint64_t pmfuse_file_blocks_max(uint32_t bs) { return (1ull << 63) / bs; }

/* In-core extent (native endian). Converted from struct pmfuse_extent in one place only, and
 * checked there against the pool (physical range inside the data area) and the file size limit. */
struct pmfuse_iext {
	uint64_t fblock;       /* first file block */
	uint64_t pblock;       /* first pool block */
	uint64_t len;          /* blocks, 1..PMFUSE_EXTENT_MAX_LEN */
};

/* A located inode's extent map (ip->map), opened for one operation; valid as long as ip is. */
struct pmfuse_extmap {
	struct pmfuse_fs *fs;
	struct pmfuse_inode *ip;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_btree bt;
	uint64_t data_start, data_end;   /* pool blocks a mapping may use: [data_start, data_end) */
	uint64_t fmax;                   /* pmfuse_file_blocks_max(bs) */
};

/* What one transaction may change in an extent map so that its undo log fits in the log. */
struct pmfuse_extent_budget {
	uint64_t blocks;       /* blocks allocated or released (bitmap words logged) */
	uint64_t recs;         /* extent records changed (b+tree nodes logged) */
};

void pmfuse_extmap_open(struct pmfuse_extmap *m, struct pmfuse_fs *fs, struct pmfuse_inode *ip,
			struct pmfuse_blk_hdr *leaf);
/* The budget for this pool's log size. */
void pmfuse_extent_budget_init(const struct pmfuse_fs *fs, struct pmfuse_extent_budget *b);
/* In one descent: *left = the last extent starting at or before fblock (it may contain fblock),
 * *right = the first one starting after it; len 0 for none. 0, -EUCLEAN. */
int pmfuse_extent_around(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *left,
			 struct pmfuse_iext *right);
/* The extent that contains fblock, else the first one after it. -ENOENT: none; -EUCLEAN. */
int pmfuse_extent_find(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *ext);
/* The last extent that starts before fblock. -ENOENT: none; -EUCLEAN. */
int pmfuse_extent_prev(const struct pmfuse_extmap *m, uint64_t fblock, struct pmfuse_iext *ext);
/* Calls fn for each extent overlapping file blocks [fblock, end), in order, until fn returns
 * non-zero (returned). fn must not change the map. 0, -EUCLEAN (also for overlapping records). */
typedef int (*pmfuse_extent_fn)(void *arg, const struct pmfuse_iext *ext);
int pmfuse_extent_walk(const struct pmfuse_extmap *m, uint64_t fblock, uint64_t end,
		       pmfuse_extent_fn fn, void *arg);
/* Maps ext over a hole, merging with logically and physically contiguous neighbours, and adds
 * ext->len to ip->blocks. -ENOSPC (abort tx), -EUCLEAN (the range is not a hole). */
int pmfuse_extent_insert(struct pmfuse_tx *tx, struct pmfuse_extmap *m,
			 const struct pmfuse_iext *ext);
/* Unmaps file blocks of [start, *end) from the top down, splitting extents at the edges,
 * releasing their physical blocks and lowering ip->blocks, until done (*end == start) or the
 * budget (decremented) is spent (*end says where to go on). -ENOSPC (abort tx), -EUCLEAN. */
int pmfuse_extent_unmap(struct pmfuse_tx *tx, struct pmfuse_extmap *m, uint64_t start,
			uint64_t *end, struct pmfuse_extent_budget *budget);
/* Gives up a file's claim on physical blocks: the one place that decides what an unmapped block
 * becomes (freed today; a dropped reference once blocks can be shared). */
int pmfuse_extent_release(struct pmfuse_tx *tx, struct pmfuse_fs *fs, uint64_t pblock,
			  uint64_t len);

/* ---- shared helpers ---- */
/* 48-bit name hash for directory and xattr keys, never 0. */
uint64_t pmfuse_name_hash48(const char *name, size_t len);

#endif /* PMFUSE_FS_INTERNAL_H */
