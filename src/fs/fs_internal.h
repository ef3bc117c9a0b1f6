/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the modules of src/fs share. Not for use outside src/fs.
 *
 * Modules:
 *   fs.c      open/close, the fs lock, lookup counts, orphan list, statfs, freeing inodes
 *   inode.c   the inode table: locate, create, attributes, setattr
 *   dir.c     directory trees and the namespace operations (mknod ... rename, readdir)
 *   xattr.c   extended attributes
 *   acl.c     POSIX ACLs: validation, mode <-> ACL, inheritance on create
 *   extent.c  per-file extent maps: map, insert, remove ranges (releasing blocks)
 *   data.c    read, write, truncate, fallocate, lseek, copy-on-write of shared blocks
 *   reflink.c clone_range, copy_range, unshare, extent reports, CoW hint, space check
 *   check.c   consistency checks for fsck (fs/check.h): trees, records, namespace
 *   lock.c    per-inode locks (a striped table) and what each thread holds of them
 *   icache.c  the lookup / getattr cache read under RCU (fs/icache.h)
 *
 * Inode records live in the leaves of the inode table. pmfuse_inode_locate() returns a pointer to
 * the record in the pool and the leaf block that holds it; fields are changed in place after
 * declaring them with pmfuse_inode_change() (which reseals the leaf). Such a pointer stays valid
 * until the inode TABLE is modified (an inode created or freed): locate again after that.
 * Operations on an inode's own trees (extent map, directory, xattrs) do not move the record.
 *
 * Lock order (doc/design.md, "Locking"):
 *   1. inode locks (lock.c): every inode an operation reads or changes, all taken at once in
 *      ascending stripe order, never a second set while one is held;
 *   2. fs->lock, the structure lock (rwlock): readers share it; a thread that changes the pool
 *      holds it for writing, because a transaction leaves nodes of the shared trees (the inode
 *      table above all) with stale checksums and may move inode records until it commits;
 *   3. a log lane (pmfuse_tx_begin takes a free one, waiting only when all are busy);
 *   4. the allocator's.
 * fs->lookup_lock only guards the lookup-count table and is taken with or without the others,
 * never around them. The DRAM cache (icache.c) is read under RCU without any of them and changed
 * by threads that hold fs->lock (or, for what a create fills, its inode locks: icache.h).
 */
#ifndef PMFUSE_FS_INTERNAL_H
#define PMFUSE_FS_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "fs/fs.h"
#include "fs/icache.h"
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
	bool long_names_only;                 /* new directories without a short-name tree
						 (pmfuse_fs_opts.long_names_only) */
	bool repair;                          /* opened for fsck repair (pmfuse_fs_opts.repair):
						 orphans are left alone at open and close */
	pthread_rwlock_t lock;
	struct pmfuse_ilock *ilocks;          /* PMFUSE_ILOCK_STRIPES inode locks (lock.c) */
	struct pmfuse_icache *icache;         /* lookup / getattr cache (icache.c), or NULL */
	struct pmfuse_fs *writer_prev;        /* pmfuse_fs_writer before fs_wrlock (under it) */
	struct pmfuse_btree inodes;           /* over state->roots[PMFUSE_ROOT_INODES] */
	struct pmfuse_btree orphans;          /* over state->roots[PMFUSE_ROOT_ORPHANS] */
	pthread_mutex_t lookup_lock;
	struct pmfuse_lookup_entry *lookups;  /* open-addressing table, 0 = empty slot */
	size_t nlookups, lookups_used;
	const void *zeroes;                   /* PMFUSE_ZERO_BUF bytes of zeros, for holes */
	uint8_t *cmp_buf;                     /* 2 x PMFUSE_CMP_CHUNK for dedupe's compares
						 (under the writer lock): pool data read by
						 pmfuse_pool_data_view */
	struct pmfuse_helper *helper;         /* helper.c: a second thread for dedupe compares */
	bool helper_off;                      /* none wanted or none could be started */
	uint8_t *helper_buf;                  /* 2 x PMFUSE_CMP_CHUNK for the helper's views */
	struct pmfuse_alloc *check_alloc;     /* check.c: an index of the bitmap loaded for a
						 check of a read-only fs (then also fs->alloc);
						 freed at close */
};

#define PMFUSE_ZERO_BUF (1u << 20)
/* Bytes dedupe compares per step (one memcmp when the step is equal): large enough that the
 * view's page check (a pagemap read of its 256 entries) is small beside the compare, at most
 * PMFUSE_ZERO_BUF (a hole compares against the zeros). */
#define PMFUSE_CMP_CHUNK (1u << 20)

/* helper.c, under the writer lock: hands fn(arg) to the helper thread (started on first use)
 * and returns true, or false when there is none (the caller does the work); then
 * pmfuse_helper_wait returns once fn has returned. pmfuse_helper_stop at close. */
bool pmfuse_helper_run(struct pmfuse_fs *fs, void (*fn)(void *), void *arg);
void pmfuse_helper_wait(struct pmfuse_fs *fs);
void pmfuse_helper_stop(struct pmfuse_fs *fs);

/*
 * fs->lock, taken and released only through these, so that recovery from a memory error
 * (pmfuse_fs_fault_recover) knows whether this thread must let go of it. The lock is never
 * taken twice by one thread.
 */
extern __thread struct pmfuse_fs *pmfuse_fs_lock_held;
/* The filesystem whose fs->lock this thread holds for writing (the one whose cache a change to
 * an inode record forgets: pmfuse_inode_change); fs->writer_prev keeps the one before, since a
 * crash test checks another filesystem from inside a writer's barrier. */
extern __thread struct pmfuse_fs *pmfuse_fs_writer;
/* A malloc'd buffer of the running request (the read path's vector list), which recovery from
 * a memory error frees: the frames that would have freed it are gone. NULL when none. */
extern __thread void *pmfuse_fs_scratch;
static inline void fs_rdlock(struct pmfuse_fs *fs)
{
	pthread_rwlock_rdlock(&fs->lock);
	pmfuse_fs_lock_held = fs;
}
static inline void fs_wrlock(struct pmfuse_fs *fs)
{
	pthread_rwlock_wrlock(&fs->lock);
	pmfuse_fs_lock_held = fs;
	fs->writer_prev = pmfuse_fs_writer;
	pmfuse_fs_writer = fs;
}
static inline void fs_unlock(struct pmfuse_fs *fs)
{
	pmfuse_fs_lock_held = NULL;
	if (pmfuse_fs_writer == fs)
		pmfuse_fs_writer = fs->writer_prev;
	pthread_rwlock_unlock(&fs->lock);
}

/* ---- lock.c: per-inode locks ---- */
#define PMFUSE_ILOCK_STRIPES 4096u    /* a power of two */
#define PMFUSE_ILOCK_MAX 4u           /* inodes one operation locks at most (rename) */
struct pmfuse_ilock {
	pthread_rwlock_t lock;
};
struct pmfuse_ilock_req {
	uint64_t ino;                   /* 0: none (skipped) */
	bool excl;
};
/* What this thread holds, for pmfuse_fs_fault_recover: one frame per filesystem, since a thread
 * may work on a second one while it holds the first's locks (the crash tests check each crash
 * image from inside the barrier hook of the operation that made it). */
#define PMFUSE_ILOCK_FRAMES 4u
struct pmfuse_ilock_frame {
	struct pmfuse_fs *fs;
	unsigned n;
	uint32_t stripe[PMFUSE_ILOCK_MAX];
};
struct pmfuse_ilocks_held {
	unsigned depth;
	struct pmfuse_ilock_frame f[PMFUSE_ILOCK_FRAMES];
};
extern __thread struct pmfuse_ilocks_held pmfuse_ilocks_held;
static inline uint32_t pmfuse_ilock_stripe(uint64_t ino)
{
	return (uint32_t)(ino & (PMFUSE_ILOCK_STRIPES - 1));
}
int pmfuse_ilock_init(struct pmfuse_fs *fs);
void pmfuse_ilock_fini(struct pmfuse_fs *fs);
/* Locks the inodes of req (up to PMFUSE_ILOCK_MAX, duplicates and 0 allowed) in stripe order.
 * The thread may hold no inode lock of fs, nor fs->lock. */
void fs_ilock(struct pmfuse_fs *fs, const struct pmfuse_ilock_req *req, unsigned n);
void fs_ilock1(struct pmfuse_fs *fs, uint64_t ino, bool excl);
/* Releases every inode lock of fs the thread holds (none: nothing to do). */
void fs_iunlock(struct pmfuse_fs *fs);

/* b+tree ops of the fs trees (defined by the module that owns each tree). */
extern const struct pmfuse_btree_ops pmfuse_inode_ops;   /* inode.c */
extern const struct pmfuse_btree_ops pmfuse_dirent_ops;  /* dir.c */
extern const struct pmfuse_btree_ops pmfuse_sdirent_ops; /* dir.c: short entries */

/* dir.c: the entries of a directory (both trees, PMFUSE_INODE_SHORT_NAMES), and a walk over
 * them in key order from key on: _next gives each entry widened to a long one (and the tree it
 * is in: 0 long, 1 short), -ENOENT at the end, -EUCLEAN on a bad record. The cursors hold no
 * locks; the directory must not change during the walk. */
uint64_t pmfuse_dir_entries(const struct pmfuse_inode *dp);
/* Adds name -> ino (of type mode) to directory dp in tx, in the tree its length says; -EEXIST.
 * The directory's record is not otherwise changed (fsck's reconnect sets the counts later). */
int pmfuse_dir_add(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_inode *dp,
		   struct pmfuse_blk_hdr *leaf, const char *name, uint64_t ino, uint32_t mode);
struct pmfuse_dir_iter {
	struct pmfuse_btree bt[2];
	struct pmfuse_btree_cursor cur[2];
	int rc[2];
	bool split;
};
int pmfuse_dir_iter_start(struct pmfuse_dir_iter *it, struct pmfuse_fs *fs,
			  struct pmfuse_inode *dp, struct pmfuse_blk_hdr *leaf, uint64_t key);
int pmfuse_dir_iter_next(struct pmfuse_dir_iter *it, struct pmfuse_dirent *de, unsigned *tree);
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
int pmfuse_feature_tx(struct pmfuse_tx *tx, struct pmfuse_fs *fs, uint64_t bit);
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
/* Takes one if ok(arg), asked under the lock that counting references takes (the lock-free
 * lookup: a writer decides about freeing an inode by counting under it). */
bool pmfuse_lookup_ref_if(struct pmfuse_fs *fs, uint64_t ino, bool (*ok)(void *arg), void *arg);
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
	uint32_t flags;        /* PMFUSE_EXTENT_UNWRITTEN: reads as zeros (E6 of extent.c) */
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
/* Maps ext over a hole, merging with logically and physically contiguous neighbours of the same
 * flags, and adds ext->len to ip->blocks. -EINVAL (a bad range or unknown flags), -ENOSPC (abort
 * tx), -EUCLEAN (the range is not a hole). An unwritten ext needs the pool's
 * PMFUSE_FEATURE_INCOMPAT_UNWRITTEN (pmfuse_data_feature_unwritten). */
int pmfuse_extent_insert(struct pmfuse_tx *tx, struct pmfuse_extmap *m,
			 const struct pmfuse_iext *ext);
/* Sets the flags of file blocks [lo, hi) of extent e (as read from the map, containing them) to
 * flags, keeping their pool blocks: splits e at lo and hi and merges the piece with neighbours
 * of the same flags (at most three records change). Nothing to do when e has them already.
 * Converting to written promises that every byte of the blocks was stored in this transaction.
 * -EINVAL, -ENOSPC (abort tx), -EUCLEAN. */
int pmfuse_extent_convert(struct pmfuse_tx *tx, struct pmfuse_extmap *m,
			  const struct pmfuse_iext *e, uint64_t lo, uint64_t hi, uint32_t flags);
/* Unmaps file blocks of [start, *end) from the top down, splitting extents at the edges,
 * releasing their physical blocks and lowering ip->blocks, until done (*end == start) or the
 * budget (decremented) is spent (*end says where to go on). -ENOSPC (abort tx), -EUCLEAN. */
int pmfuse_extent_unmap(struct pmfuse_tx *tx, struct pmfuse_extmap *m, uint64_t start,
			uint64_t *end, struct pmfuse_extent_budget *budget);
/* Gives up a file's claim on physical blocks: the one place that decides what an unmapped block
 * becomes. Drops one reference of each block (pmfuse_refcount_decr): blocks nobody maps any more
 * are freed in the same transaction, shared ones keep their other owners. */
int pmfuse_extent_release(struct pmfuse_tx *tx, struct pmfuse_fs *fs, uint64_t pblock,
			  uint64_t len);
/*
 * How much refcount work a range of pool blocks [plo, phi) means, counted from the top down:
 * its pieces are the refcount records it overlaps and, if gaps, the runs between them (blocks
 * with one owner: an increment turns each into a record, a decrement frees it). *from gets the
 * lowest block >= plo such that [*from, phi) holds at most max pieces (at least one: the top
 * piece is always allowed), *pieces how many it holds. Read only. 0, -EUCLEAN.
 */
int pmfuse_refcount_span_down(struct pmfuse_fs *fs, uint64_t plo, uint64_t phi, uint64_t max,
			      bool gaps, uint64_t *from, uint64_t *pieces);

/* ---- reflink: data.c (copy-on-write) and reflink.c (clone, copy, extents, checks) ---- */
/* CoW extent size hint when the inode's cowextsize is 0, and the largest hint accepted. */
#define PMFUSE_COWEXTSIZE_DEFAULT 32u
#define PMFUSE_COWEXTSIZE_MAX (1u << 21)
/* Blocks file data may still take: free blocks beyond pmfuse_data_reserve(). */
uint64_t pmfuse_data_avail(const struct pmfuse_fs *fs);
/* Sets PMFUSE_FEATURE_INCOMPAT_UNWRITTEN in the superblock (written and persisted) unless it is
 * set: before the first transaction that may map unwritten blocks. 0, -EROFS. */
int pmfuse_data_feature_unwritten(struct pmfuse_fs *fs);
/* pmfuse_fs_write without the lock (held for writing by the caller), regular files only. */
ssize_t pmfuse_data_write(struct pmfuse_fs *fs, uint64_t ino, const void *buf, size_t len,
			  uint64_t off, const struct pmfuse_cred *cred);
/* Copy-on-write of every shared block of [off, off + len) clipped at EOF (len 0: to EOF), no new
 * data; holes stay holes. fs->lock held for writing. -ENOSPC leaves a prefix unshared. */
int pmfuse_data_unshare(struct pmfuse_fs *fs, uint64_t ino, uint64_t off, uint64_t len);

/*
 * Space check of a whole filesystem (tests, fsck): every tree passes its structural check; for
 * every pool block, the number of extent records mapping it (over all files) equals its refcount
 * (1 without a record) and no refcount record covers a block nobody maps; metadata blocks (tree
 * nodes, xattr values) are used exactly once and never as file data; every block in use is one of
 * those, and every other block of the data area is free (the allocator's count matches); every
 * inode's block count is the sum of its extents. Takes fs->lock for reading. Memory in
 * proportion to extents and tree nodes, not blocks. 0, or -EUCLEAN with msg, or -ENOMEM.
 */
struct pmfuse_space_report {
	uint64_t meta_blocks;      /* tree nodes and xattr value blocks */
	uint64_t data_blocks;      /* distinct pool blocks mapped by files */
	uint64_t mapped_blocks;    /* file blocks mapped, summed over files (shared ones counted
				      once per mapping) */
	uint64_t shared_blocks;    /* pool blocks mapped more than once */
	uint64_t free_blocks;
	uint64_t files, extents, refcount_recs;
};
int pmfuse_fs_check_space(struct pmfuse_fs *fs, struct pmfuse_space_report *rep, char *msg,
			  size_t msglen);
/* The same after the caller's own check of every tree in this run (trees_checked): the trees'
 * nodes are then only walked for the accounting, not checked again. */
int pmfuse_fs_check_space_checked(struct pmfuse_fs *fs, bool trees_checked,
				  struct pmfuse_space_report *rep, char *msg, size_t msglen);

/* ---- xattr.c: access for acl.c (fs->lock held; for writing where a tx is given) ---- */
/* Reads xattr name of a located inode into value (size 0: only the length); returns the length,
 * -ENODATA, -ERANGE, -EUCLEAN. */
ssize_t pmfuse_xattr_read(struct pmfuse_fs *fs, struct pmfuse_inode *ip,
			  struct pmfuse_blk_hdr *leaf, const char *name, void *value, size_t size);
/* Inside tx: sets xattr name of a located inode to value, or removes it when value is NULL (a
 * missing name is no error). Tree operations only (the record stays where it is): a caller that
 * then changes the record (ctime, mode) declares it again first. */
int pmfuse_xattr_write(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_inode *ip,
		       struct pmfuse_blk_hdr *leaf, const char *name, const void *value,
		       size_t size);

/* ---- acl.c: POSIX ACLs ----
 * Stored as Linux's xattr form (posix_acl_xattr.h: a le32 version 2, then le16 tag, le16 perm,
 * le32 id per entry), which is also what FUSE passes; ids of entries other than named users and
 * groups are stored as PMFUSE_ACL_UNDEFINED_ID. */
#define PMFUSE_XATTR_ACL_ACCESS  "system.posix_acl_access"
#define PMFUSE_XATTR_ACL_DEFAULT "system.posix_acl_default"
#define PMFUSE_ACL_VERSION 2u
#define PMFUSE_ACL_USER_OBJ  0x01u
#define PMFUSE_ACL_USER      0x02u
#define PMFUSE_ACL_GROUP_OBJ 0x04u
#define PMFUSE_ACL_GROUP     0x08u
#define PMFUSE_ACL_MASK      0x10u
#define PMFUSE_ACL_OTHER     0x20u
#define PMFUSE_ACL_UNDEFINED_ID 0xffffffffu
/* The largest ACL value: one 4 KiB page, the most the kernel passes to or takes from a FUSE
 * server (fs/fuse/acl.c). */
#define PMFUSE_ACL_XATTR_MAX 4096u
#define PMFUSE_ACL_ENTRIES_MAX ((PMFUSE_ACL_XATTR_MAX - 4) / 8)

struct pmfuse_acl_entry {
	uint16_t tag, perm;        /* PMFUSE_ACL_*; rwx as 4, 2, 1 */
	uint32_t id;               /* uid or gid of PMFUSE_ACL_USER / _GROUP */
};
struct pmfuse_acl {
	unsigned count;
	struct pmfuse_acl_entry e[PMFUSE_ACL_ENTRIES_MAX];
};

/* Whether name is one of the two ACL attributes. */
bool pmfuse_acl_name(const char *name);
/* Decodes an xattr value: 0 (count 0 for an empty value or a bare header: "no ACL", as Linux
 * reads it), -EOPNOTSUPP (version is not 2, as posix_acl_from_xattr), -EINVAL (size is not a
 * header plus whole entries), -E2BIG (above PMFUSE_ACL_XATTR_MAX). Does not validate. */
int pmfuse_acl_from_xattr(const void *value, size_t size, struct pmfuse_acl *acl);
/* Linux's posix_acl_valid: perms within rwx; tags in the order USER_OBJ, USER*, GROUP_OBJ,
 * GROUP*, MASK, OTHER, each of USER_OBJ, GROUP_OBJ, OTHER once, MASK at most once and required
 * when there are named entries; named ids not PMFUSE_ACL_UNDEFINED_ID. -EINVAL otherwise. Like
 * Linux, the order of named entries among themselves is not checked. */
int pmfuse_acl_valid(const struct pmfuse_acl *acl);
/* Encodes into buf (4 + 8 * count bytes); returns the size. */
size_t pmfuse_acl_to_xattr(const struct pmfuse_acl *acl, void *buf);
/* posix_acl_equiv_mode: sets the rwx bits of *mode from the ACL (group bits from the mask when
 * there is one); returns 0 when the mode says everything (no named entries, no mask), else 1. */
int pmfuse_acl_equiv_mode(const struct pmfuse_acl *acl, uint32_t *mode);
/* posix_acl_chmod: owner, group (the mask when there is one) and other entries from mode. */
void pmfuse_acl_chmod(struct pmfuse_acl *acl, uint32_t mode);
/* posix_acl_create_masq: a default ACL applied to a new inode's requested mode: limits the ACL's
 * owner, other and mask (or group) entries by mode and the mode's rwx bits by them. Returns 0
 * when the result is equivalent to the mode (no access ACL needed), else 1. */
int pmfuse_acl_create_masq(struct pmfuse_acl *acl, uint32_t *mode);

/* setxattr / removexattr of an ACL name on a located inode (write lock held; own transaction).
 * PMFUSE_XATTR_ACL_KILL_SGID in flags clears setgid with an access ACL; CREATE / REPLACE are
 * ignored, as Linux ignores them for ACLs. */
int pmfuse_acl_set(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		   const char *name, const void *value, size_t size, int flags);
int pmfuse_acl_remove(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		      const char *name);
/* Inside the transaction of a chmod, before the record changes: brings a located inode's access
 * ACL (if any) in step with its new mode. */
int pmfuse_acl_chmod_tx(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_inode *ip,
			struct pmfuse_blk_hdr *leaf, uint32_t mode);
/* What a new inode inherits (posix_acl_create). prepare, before the create transaction: reads
 * the parent's default ACL; with one, *mode is limited by it and the ACLs to give are kept in
 * inh; without one, the umask of cred is applied to *mode (FUSE_CAP_DONT_MASK leaves it to the
 * server; applying it again where the kernel did is harmless). Symlinks get neither. apply,
 * inside the create transaction once the inode exists: stores them. done frees inh. */
struct pmfuse_acl_inherit {
	uint8_t *buf;                  /* NULL: nothing to store */
	size_t access_len, default_len;
};
int pmfuse_acl_inherit_prepare(struct pmfuse_fs *fs, struct pmfuse_inode *dp,
			       struct pmfuse_blk_hdr *dleaf, const struct pmfuse_cred *cred,
			       uint32_t *mode, struct pmfuse_acl_inherit *inh);
int pmfuse_acl_inherit_apply(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino,
			     const struct pmfuse_acl_inherit *inh);
void pmfuse_acl_inherit_done(struct pmfuse_acl_inherit *inh);

/* ---- shared helpers ---- */
/* 48-bit name hash for directory and xattr keys, never 0. */
uint64_t pmfuse_name_hash48(const char *name, size_t len);

/*
 * Trees of names (directories, xattrs) key their records by a leading le64
 * pmfuse_name_hash48(name) << 16 | seq, seq telling apart names of equal hash (the lowest free
 * value at insertion). Finds name: 0 with *rec pointing at the record in the pool (valid until
 * the tree changes; the caller checks it) and *key its key; -ENOENT with *key the key a new
 * record of that name gets; -ENOSPC when all 65536 seqs of the hash are taken; -EUCLEAN.
 */
int pmfuse_name_find(const struct pmfuse_btree *bt, const char *name, size_t len,
		     void (*name_of)(const void *rec, const uint8_t **name, size_t *len),
		     const void **rec, uint64_t *key);

#endif /* PMFUSE_FS_INTERNAL_H */
