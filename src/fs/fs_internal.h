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
/* Creates an inode record (nlink 1, owner from cred and the setgid rule of dir_ip, times now).
 * Invalidates located pointers. *ino gets the new number. */
int pmfuse_inode_create(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint32_t mode, uint64_t rdev,
			const struct pmfuse_cred *cred, const struct pmfuse_inode *dir_ip,
			uint64_t *ino);
/* Sets the named timestamps (PMFUSE_TIME_*) of a located inode to now. */
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

/* ---- shared helpers ---- */
/* 48-bit name hash for directory and xattr keys, never 0. */
uint64_t pmfuse_name_hash48(const char *name, size_t len);

#endif /* PMFUSE_FS_INTERNAL_H */
