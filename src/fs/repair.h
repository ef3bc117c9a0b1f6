/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Repair of a whole filesystem: what fsck.pmfuse -p and -y do after the checks of fs/check.h
 * found problems. The filesystem is opened with pmfuse_fs_opts.repair over a volume opened with
 * PMFUSE_VOL_REPAIR (which already rewrote a damaged superblock copy, rolled back a pending
 * transaction and formatted a damaged log header anew).
 *
 * Repair rebuilds derived state from primary state rather than patching record by record: the
 * primary state is every record that can be read (pmfuse_btree_salvage) of the inode table and
 * of each inode's extent map, directory and xattrs; from it follow the free-space bitmap, the
 * refcount tree, link counts, directory sizes and parents, block counts and the orphan list.
 * Every change is a transaction of its own, small enough for the smallest log, and each one
 * leaves the pool no worse than before: a crash during repair leaves a pool that mounts or that
 * a further repair finishes (repair.c says why, step by step).
 *
 * Preen (-p) makes only the changes that lose nothing and need no decision; when it meets one
 * that would (a damaged tree whose unreadable part must be dropped, an entry to remove, an inode
 * to move to /lost+found) it changes nothing more, reports it through ops->left and returns
 * -EUCLEAN.
 */
#ifndef PMFUSE_FS_REPAIR_H
#define PMFUSE_FS_REPAIR_H

#include <stdbool.h>
#include <stdint.h>

struct pmfuse_fs;

struct pmfuse_repair_ops {
	/* Something repaired, one line without a newline. Required. */
	void (*fixed)(void *arg, const char *msg);
	/* Something left as it is (preen needs a decision, or repair cannot), one line. Required. */
	void (*left)(void *arg, const char *msg);
	void *arg;
};

struct pmfuse_repair_result {
	uint64_t fixed;          /* lines reported through ops->fixed */
	uint64_t left;           /* lines reported through ops->left */
	uint64_t transactions;   /* transactions committed */
	unsigned rounds;         /* passes over the filesystem */
};

/*
 * Repairs fs (opened with pmfuse_fs_opts.repair). preen: only what needs no decision.
 * 0 when nothing was left, -EUCLEAN when something was (ops->left said what), -ENOMEM, -ENOSPC
 * (the pool or the log is too full for a repair transaction), -EROFS (fs not writable), or
 * another -errno of the pool. *res is filled in any case.
 */
int pmfuse_fs_repair(struct pmfuse_fs *fs, bool preen, const struct pmfuse_repair_ops *ops,
		     struct pmfuse_repair_result *res);

/*
 * Rebuilds a state block that fails its checks (vol->state_bad, a volume opened with
 * PMFUSE_VOL_REPAIR), before the filesystem is opened: the roots of the inode table, the
 * refcount tree and the orphan list are the sound nodes of those trees (found by scanning the
 * data area; only blocks the bitmap marks used, when it can be read) that no other node of
 * their tree points to, the highest and fullest when several; the counters are set above every
 * inode found. One transaction. What the found trees lack (a damaged node below the root hides
 * its subtree) is the later repair's to report. 0, -ENOMEM, -EROFS, -ENOSPC (log).
 */
struct pmfuse_volume;
int pmfuse_fs_repair_state(struct pmfuse_volume *vol, const struct pmfuse_repair_ops *ops,
			   struct pmfuse_repair_result *res);

#endif /* PMFUSE_FS_REPAIR_H */
