/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Consistency checks of a whole filesystem: what fsck.pmfuse runs, phase by phase, on a
 * filesystem opened for checking (pmfuse_fs_opts.check: read-only, and the open does not insist
 * on a sound root directory). Every check only reads; none needs a writable volume, and they work
 * on the image a read-only open shows, a pending transaction included.
 *
 * Each check reports every problem it finds as one line (no newline) through ops->problem and
 * goes on where it can; it returns 0 when it found none, -EUCLEAN when it reported some, -ENOMEM,
 * or -EINTR when ops->progress asked to stop. Later checks rely on earlier ones: the block
 * accounting needs the bitmap and every tree sound, the namespace check the inode table.
 *
 * The invariants are those of doc/format.md; each check's comment in check.c lists which.
 */
#ifndef PMFUSE_FS_CHECK_H
#define PMFUSE_FS_CHECK_H

#include <stdbool.h>
#include <stdint.h>

struct pmfuse_fs;

struct pmfuse_check_ops {
	/* One problem, as one line without a newline. Required. */
	void (*problem)(void *arg, const char *msg);
	/* Something not checked because of a problem reported before, one line. May be NULL. */
	void (*note)(void *arg, const char *msg);
	/* done of total (unit: "inodes") now and then during long work; non-zero stops the check
	 * (-EINTR). May be NULL. */
	int (*progress)(void *arg, uint64_t done, uint64_t total, const char *unit);
	void *arg;
};

/* What the checks found; each fills its part. Zero it before the first check. */
struct pmfuse_check_result {
	uint64_t problems;          /* lines reported through ops->problem, over all checks */

	/* pmfuse_fs_check_bitmap */
	bool bitmap_ok;
	uint64_t block_count;       /* blocks of the filesystem, superblocks and log included */
	uint64_t free_blocks;       /* zero bits of the bitmap */

	/* pmfuse_fs_check_trees */
	bool trees_ok;              /* every tree's structure passed (records may have problems) */
	bool inode_table_ok;        /* the inode table (and the orphan list) can be walked */
	uint64_t inodes;            /* records of the inode table */
	uint64_t tree_nodes;        /* b+tree nodes of every tree */

	/* pmfuse_fs_check_blocks (pmfuse_fs_check_space) */
	bool blocks_checked;
	uint64_t meta_blocks;       /* tree nodes and xattr value blocks */
	uint64_t data_blocks;       /* distinct pool blocks mapped by files */
	uint64_t mapped_blocks;     /* file blocks mapped, summed over files */
	uint64_t shared_blocks;     /* pool blocks mapped more than once */
	uint64_t extents, refcount_recs;

	/* pmfuse_fs_check_namespace */
	bool namespace_checked;
	bool no_root;               /* the inode table is empty: never mounted, no root yet */
	uint64_t regular, directories, symlinks, chrdevs, blkdevs, fifos, sockets;
	uint64_t entries;           /* directory entries ("." and ".." not stored, not counted) */
	uint64_t hard_links;        /* names of non-directories beyond their first */
	uint64_t orphans;           /* records of the orphan list */
};

/*
 * The free-space bitmap: every bitmap block verifies (header, crc, first_block, padding) and
 * marks the blocks below the data area, the secondary superblock and every number past the end
 * in use. A read-only fs gets an index of the bitmap for the block accounting (kept until
 * pmfuse_fs_close); a writable one has its index compared with the bitmap.
 */
int pmfuse_fs_check_bitmap(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			   struct pmfuse_check_result *res);

/*
 * Every b+tree's structure (pmfuse_btree_check: headers, crcs, order, fill, depth, counts,
 * every record's own check) and what records say beyond themselves: the state block's reserved
 * roots and counters; per inode its number and generation below the state block's counters, no
 * unknown flags (LINKABLE only on an unnamed regular file), a map tree only for files, symlinks and directories, no blocks but a file's, extents in
 * order inside the file and the data area adding up to the inode's block count, the bytes past
 * EOF in the last block zero, a symlink's target 1..4095 bytes without NUL, xattr values in
 * blocks of the data area with zeros after them, ACLs valid, in step with the mode, default
 * ACLs on directories only. Progress by inodes.
 */
int pmfuse_fs_check_trees(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			  struct pmfuse_check_result *res);

/*
 * Refcounts and exact block accounting (pmfuse_fs_check_space): each block's refcount equals the
 * extents mapping it, metadata blocks are used once, every used block is reached and every
 * other block is free. Stops at the first problem (one line). Needs a sound bitmap and trees
 * of sound structure (res->bitmap_ok, res->trees_ok): without them it reports nothing and
 * returns -EAGAIN.
 */
int pmfuse_fs_check_blocks(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			   struct pmfuse_check_result *res);

/*
 * The namespace: every directory entry names an existing inode of the type it says; a
 * directory holds as many entries as its size says, and none once removed; every inode's link
 * count is the number of entries naming it (a directory: 2 + its subdirectories, 0 once
 * removed); every directory but the root is named exactly once, by the directory its parent
 * field (its "..") names, the root by none and its parent is itself; every directory is
 * reachable from the root (no loops); every inode with link count 0 is on the orphan list and
 * every orphan names an inode. Needs res->inode_table_ok (else -EAGAIN). Memory: about 80
 * bytes per inode. Progress by inodes.
 */
int pmfuse_fs_check_namespace(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			      struct pmfuse_check_result *res);

#endif /* PMFUSE_FS_CHECK_H */
