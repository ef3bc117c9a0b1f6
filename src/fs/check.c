/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Consistency checks for fsck (fs/check.h). Read only: nothing here declares, seals or writes,
 * so every check runs on a read-only volume, a pending transaction's image included.
 *
 * The checks follow the order in which what they check is trusted:
 *
 *   bitmap     the free-space bitmap verifies (pmfuse_alloc_open on a read-only fs, which also
 *              gives the block accounting an index of it);
 *   trees      every b+tree's structure (pmfuse_btree_check, with each record's own check), then
 *              what a record says beyond itself, against the state block and the pool (the
 *              invariants of format.md for inodes, extents E1-E3, E5 and E6's flag against
 *              the superblock's feature, xattrs, ACLs);
 *   blocks     pmfuse_fs_check_space: refcounts against extents, every block used exactly as the
 *              trees say, no block written for one owner and unwritten for another
 *              (reflink.c); meaningful only over sound trees;
 *   namespace  the graph the directories make, below.
 *
 * Namespace. One walk of the inode table copies what the graph needs into a DRAM array sorted by
 * inode number (the table's order), so that an entry's target is a binary search away; the
 * orphan list marks its inodes. One walk of every directory then counts, per inode, the entries
 * naming it, per directory its entries and subdirectories, and keeps the first directory naming
 * each directory. The rules checked after that (format.md):
 *
 *   N1 an entry names an inode in the table, of the type the entry says;
 *   N2 a non-directory's nlink is the number of entries naming it; a directory's is 2 + its
 *      subdirectories, or 0 once removed (then it is empty and named by none);
 *   N3 every directory but the root is named exactly once, in the directory its parent field
 *      (its "..") names; the root is named by none and is its own parent;
 *   N4 a directory's size is the number of its entries;
 *   N5 an inode with nlink 0 is on the orphan list, and every orphan names an inode;
 *   N6 every directory reaches the root through the directories naming it: following "named
 *      in" from any directory ends at the root, never in a loop.
 *
 * N6 is a walk up the "named in" links with a state per directory (unknown, on the current walk,
 * reaches the root, does not), so every directory is visited once: O(directories). A directory
 * named nowhere is reported by N3 (disconnected); N6 adds only loops, once per loop. Files are
 * connected when some entry names them: a file inside a disconnected directory is that
 * directory's problem, as e2fsck reports an unconnected directory rather than its contents.
 *
 * Damage met on the way (a tree that cannot be read) is reported and the check goes on; rules
 * whose counts it would falsify (N2, N3, N4, N6 when a directory cannot be read) are skipped
 * with a line saying so, rather than reported wrongly.
 */
#include "fs/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/fs_internal.h"
#include "meta/refcount.h"
#include "pool/pool.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))
#define SYMLINK_MAX 4095u            /* dir.c: PMFUSE_SYMLINK_MAX */
#define PROBLEMS_PER_INODE 4u        /* extent and xattr problems listed per inode */
#define PROGRESS_STEP 1024u          /* inodes between progress calls */

/* One run of a check. */
struct ck {
	struct pmfuse_fs *fs;
	const struct pmfuse_check_ops *ops;
	struct pmfuse_check_result *res;
	uint64_t data_start, data_end;   /* the data area: [data_start, sb2_block) */
	uint64_t found;                  /* problems reported by this run */
	uint64_t bad_trees;              /* trees whose structure failed */
	int err;                         /* -ENOMEM, -EINTR: stop */
};

static void ck_init(struct ck *k, struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
		    struct pmfuse_check_result *res)
{
	memset(k, 0, sizeof(*k));
	k->fs = fs;
	k->ops = ops;
	k->res = res;
	k->data_start = pmfuse_le64(fs->vol->sb.data_start);
	k->data_end = pmfuse_le64(fs->vol->sb.sb2_block);
}

static int ck_end(const struct ck *k)
{
	if (k->err)
		return k->err;
	return k->found ? -EUCLEAN : 0;
}

__attribute__((format(printf, 2, 3)))
static void problem(struct ck *k, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* one line: a message never carries a newline (names are quoted by qname) */
	for (char *p = buf; *p; p++)
		if (*p == '\n')
			*p = ' ';
	k->ops->problem(k->ops->arg, buf);
	k->res->problems++;
	k->found++;
}

/* Calls the progress callback every PROGRESS_STEP units and at the end. */
static int progress(struct ck *k, uint64_t done, uint64_t total)
{
	if (!k->ops->progress || (done % PROGRESS_STEP && done != total))
		return 0;
	if (k->ops->progress(k->ops->arg, done, total, "inodes"))
		k->err = -EINTR;
	return k->err;
}

static const char *type_name(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return "regular file";
	case S_IFDIR: return "directory";
	case S_IFLNK: return "symlink";
	case S_IFIFO: return "fifo";
	case S_IFSOCK: return "socket";
	case S_IFCHR: return "character device";
	case S_IFBLK: return "block device";
	default: return "unknown type";
	}
}

/* DT_* values are S_IFMT >> 12 on Linux, for every type pmfuse stores. */
static const char *dt_name(unsigned dt)
{
	return type_name((uint32_t)dt << 12);
}

/* A name as one printable, quoted token: bytes outside printable ASCII as \xHH. */
static const char *qname(const uint8_t *name, unsigned len, char *buf, size_t size)
{
	size_t o = 0;

	buf[o++] = '"';
	for (unsigned i = 0; i < len && o + 6 < size; i++) {
		uint8_t c = name[i];

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			buf[o++] = (char)c;
		else
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* Zero bytes: the first is zero and every byte equals the one before it (memcmp is vectorised;
 * the byte loop this replaces was a fifth of a check's time, on the tail of every file). */
static bool all_zero(const void *p, size_t len)
{
	const uint8_t *b = p;

	return !len || (!b[0] && !memcmp(b, b + 1, len - 1));
}

static bool root_empty(const struct pmfuse_btree_root *r)
{
	return !pmfuse_le64(r->root) && !pmfuse_le64(r->nrecs) && !pmfuse_le16(r->levels) &&
	       !pmfuse_le16(r->pad0) && !pmfuse_le32(r->pad1) && !pmfuse_le64(r->pad2);
}

/* ---- bitmap --------------------------------------------------------------------------------- */

int pmfuse_fs_check_bitmap(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			   struct pmfuse_check_result *res)
{
	const struct pmfuse_sb *sb = &fs->vol->sb;
	struct pmfuse_alloc_geom geom = {
		.block_size = fs->bs,
		.block_count = pmfuse_le64(sb->block_count),
		.bitmap_start = pmfuse_le64(sb->bitmap_start),
		.bitmap_blocks = pmfuse_le64(sb->bitmap_blocks),
		.data_start = pmfuse_le64(sb->data_start),
		.sb2_block = pmfuse_le64(sb->sb2_block),
	};
	uint64_t last = geom.bitmap_start + geom.bitmap_blocks - 1;
	struct pmfuse_alloc *al;
	struct ck k;
	int rc;

	ck_init(&k, fs, ops, res);
	res->block_count = geom.block_count;
	res->bitmap_ok = false;
	fs_wrlock(fs);
	if (fs->alloc) {
		/* a live index (writable fs): it must match the bitmap */
		rc = pmfuse_alloc_count_free(fs->pool, &geom, &res->free_blocks);
		if (!rc)
			rc = pmfuse_alloc_check(fs->alloc);
	} else {
		rc = pmfuse_alloc_open(fs->pool, &geom, &al);
		if (!rc) {
			fs->check_alloc = fs->alloc = al;
			res->free_blocks = pmfuse_alloc_free_blocks(al);
		}
	}
	fs_unlock(fs);
	if (rc == -ENOMEM)
		return rc;
	if (rc == -EINVAL)
		problem(&k, "free-space bitmap: blocks %llu..%llu do not fit the geometry",
			ULL(geom.bitmap_start), ULL(last));
	else if (rc)
		problem(&k, "free-space bitmap (blocks %llu..%llu): %s", ULL(geom.bitmap_start),
			ULL(last), pmfuse_corrupt_last());
	res->bitmap_ok = !rc;
	return ck_end(&k);
}

/* ---- trees and records ---------------------------------------------------------------------- */

static void count_node(void *arg, uint64_t blk)
{
	struct ck *k = arg;

	(void)blk;
	k->res->tree_nodes++;
}

/* Structure of one tree; a problem line prefixed by who. */
static bool tree_ok(struct ck *k, const struct pmfuse_btree *bt, const char *who)
{
	char msg[512];

	if (!pmfuse_btree_check(bt, count_node, k, msg, sizeof(msg)))
		return true;
	problem(k, "%s%s", who, msg);
	k->bad_trees++;
	return false;
}

/* Per inode: problems beyond PROBLEMS_PER_INODE become one "more problems" line. */
struct ino_ck {
	struct ck *k;
	const struct pmfuse_inode *ip;
	char who[80];                    /* "inode 12 (regular file)" */
	unsigned listed;
	bool orphan;
};

__attribute__((format(printf, 2, 3)))
static void iproblem(struct ino_ck *c, const char *fmt, ...)
{
	char buf[900];
	va_list ap;

	if (c->listed++ == PROBLEMS_PER_INODE) {
		problem(c->k, "%s: more problems, not listed", c->who);
		return;
	}
	if (c->listed > PROBLEMS_PER_INODE + 1)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	problem(c->k, "%s: %s", c->who, buf);
}

static void inode_tree(struct ino_ck *c, struct pmfuse_blk_hdr *leaf, bool xattrs,
		       const struct pmfuse_btree_ops *ops, struct pmfuse_btree *bt)
{
	struct pmfuse_inode *ip = (struct pmfuse_inode *)c->ip;   /* read only */

	pmfuse_inode_tree(c->k->fs, ip, leaf, xattrs ? &ip->xattrs : &ip->map, ops, bt);
}

/* An inline map's records (extent.c): how many leading slots are in use; reports a pool
 * without the feature and a used slot after a free one. */
static unsigned inline_count(struct ino_ck *c)
{
	static const struct pmfuse_extent zero_rec;
	unsigned n = 0;

	if (!(pmfuse_le32(c->ip->flags) & PMFUSE_INODE_INLINE_MAP))
		return 0;
	if (!(pmfuse_le64(c->k->fs->vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_INLINE_MAP))
		iproblem(c, "inline extent map, but the superblock lacks the inline map feature");
	while (n < PMFUSE_INLINE_EXTENTS && pmfuse_le32(c->ip->inline_map[n].len))
		n++;
	for (unsigned i = n; i < PMFUSE_INLINE_EXTENTS; i++)
		if (memcmp(&c->ip->inline_map[i], &zero_rec, sizeof(zero_rec)))
			iproblem(c, "inline extent slot %u is in use after a free one", i);
	return n;
}

/* E1-E3, E5 and E6's flag of extent.c, and a symlink's target. The tree passed its structural
 * check (or the map is inline: then it is empty). */
static void check_extents(struct ino_ck *c, const struct pmfuse_btree *bt)
{
	struct ck *k = c->k;
	uint32_t bs = k->fs->bs, mode = pmfuse_le32(c->ip->mode);
	uint64_t size = pmfuse_le64(c->ip->size), eof_blk = size / bs, tail = size % bs;
	uint64_t fmax = pmfuse_file_blocks_max(bs), prev_end = 0, sum = 0, tail_pblock = 0;
	bool feature = pmfuse_le64(k->fs->vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN;
	bool inl = pmfuse_le32(c->ip->flags) & PMFUSE_INODE_INLINE_MAP;
	unsigned i = 0, n = inline_count(c);
	struct pmfuse_btree_cursor cur;
	int rc;

	/* the records: the inline ones (the inode's check vouched for the root being empty), or
	 * the tree's */
	for (rc = inl ? (n ? 0 : -ENOENT) : pmfuse_btree_first(&cur, bt); !rc;
	     rc = inl ? (++i < n ? 0 : -ENOENT) : pmfuse_btree_next(&cur)) {
		struct pmfuse_extent x;
		uint64_t f, p, len;
		uint32_t flags;

		memcpy(&x, inl ? (const void *)&c->ip->inline_map[i] : pmfuse_btree_cursor_rec(&cur),
		       sizeof(x));
		f = pmfuse_le64(x.fblock);
		p = pmfuse_le64(x.pblock);
		len = pmfuse_le32(x.len);
		flags = pmfuse_le32(x.flags);
		sum += len;
		if (flags & ~PMFUSE_EXTENT_FLAGS_KNOWN)
			iproblem(c, "extent at file block %llu has unknown flags %#x", ULL(f), flags);
		if ((flags & PMFUSE_EXTENT_UNWRITTEN) && !feature)
			iproblem(c, "extent at file block %llu is unwritten, but the superblock lacks "
				 "the unwritten feature", ULL(f));
		if ((flags & PMFUSE_EXTENT_UNWRITTEN) && S_ISLNK(mode))
			iproblem(c, "symlink target at file block %llu is unwritten", ULL(f));
		if (f < prev_end)
			iproblem(c, "extent at file block %llu overlaps the one before (which ends "
				 "at %llu)", ULL(f), ULL(prev_end));
		if (f > fmax - len)
			iproblem(c, "extent at file block %llu (%llu blocks) ends past the largest "
				 "file", ULL(f), ULL(len));
		if (p < k->data_start || p > k->data_end || len > k->data_end - p) {
			iproblem(c, "extent at file block %llu maps pool blocks %llu+%llu, outside "
				 "the data area %llu..%llu", ULL(f), ULL(p), ULL(len),
				 ULL(k->data_start), ULL(k->data_end - 1));
			continue;
		}
		/* E5 holds for written blocks: unwritten ones read as zeros whatever they hold */
		if (tail && f <= eof_blk && eof_blk - f < len && !(flags & PMFUSE_EXTENT_UNWRITTEN))
			tail_pblock = p + (eof_blk - f);
		if (f + len > prev_end)
			prev_end = f + len;
	}
	if (rc != -ENOENT) {
		iproblem(c, "extent map cannot be read: %s", pmfuse_corrupt_last());
		k->bad_trees++;
		return;
	}
	if (sum != pmfuse_le64(c->ip->blocks))
		iproblem(c, "its extents map %llu blocks, the inode says %llu", ULL(sum),
			 ULL(pmfuse_le64(c->ip->blocks)));
	if (S_ISLNK(mode)) {
		if (!size || size > SYMLINK_MAX)
			iproblem(c, "symlink target of %llu bytes (1..%u)", ULL(size), SYMLINK_MAX);
		else if (!tail_pblock)
			iproblem(c, "symlink target is not mapped");
		else if (memchr(pmfuse_volume_block(k->fs->vol, tail_pblock), '\0', size))
			iproblem(c, "symlink target holds a NUL byte");
	}
	/* E5; an orphan may be in the middle of a truncate (its tail is zeroed when it ends) */
	if (tail_pblock && !c->orphan &&
	    !pmfuse_pool_memo_zero_from(k->fs->pool, tail_pblock, (uint32_t)tail)) {
		/* by pread where the pool allows: a first touch of each file's last block through
		 * the mapping was a third of a check's time on a VM (pool.h); only the bytes past
		 * EOF, and once per run (the memo: a clone's block, the check after a repair) */
		static __thread uint8_t tail_buf[PMFUSE_BLOCK_SIZE_MAX];
		const uint8_t *b;
		int err;

		b = pmfuse_pool_read_once(k->fs->pool, tail_pblock * bs + tail, bs - tail, tail_buf,
					  &err);
		if (!b)   /* the mapping then: a memory error there is caught as anywhere else */
			b = (const uint8_t *)pmfuse_volume_block(k->fs->vol, tail_pblock) + tail;

		if (!all_zero(b, bs - tail))
			iproblem(c, "bytes past end of file (%llu) in its last block (pool block "
				 "%llu) are not zero", ULL(size), ULL(tail_pblock));
		else
			pmfuse_pool_memo_set_zero_from(k->fs->pool, tail_pblock, (uint32_t)tail);
	}
}

/* An ACL record's value: valid, on the right kind of inode, in step with the mode. */
static void check_acl(struct ino_ck *c, const struct pmfuse_xattr *x, const uint8_t *value)
{
	static __thread struct pmfuse_acl acl;
	uint32_t mode = pmfuse_le32(c->ip->mode), m = mode;
	bool is_default = !strcmp((const char *)x->name, PMFUSE_XATTR_ACL_DEFAULT);
	uint32_t vlen = pmfuse_le32(x->value_len);

	if (pmfuse_acl_from_xattr(value, vlen, &acl) || !acl.count || pmfuse_acl_valid(&acl)) {
		iproblem(c, "%s is not a valid ACL", (const char *)x->name);
		return;
	}
	if (is_default) {
		if (!S_ISDIR(mode))
			iproblem(c, "a default ACL on a %s", type_name(mode));
		return;
	}
	if (!pmfuse_acl_equiv_mode(&acl, &m))
		iproblem(c, "access ACL says no more than the mode (it would not be stored)");
	else if ((m ^ mode) & 0777)
		iproblem(c, "access ACL and mode disagree (the ACL gives %03o, the mode %03o)",
			 m & 0777, mode & 0777);
}

/* xattr values: inline or in blocks of the data area sized to the value, zeros after it. */
static void check_xattrs(struct ino_ck *c, const struct pmfuse_btree *bt)
{
	struct ck *k = c->k;
	uint32_t bs = k->fs->bs;
	struct pmfuse_btree_cursor cur;
	int rc;

	for (rc = pmfuse_btree_first(&cur, bt); !rc; rc = pmfuse_btree_next(&cur)) {
		const struct pmfuse_xattr *x = pmfuse_btree_cursor_rec(&cur);
		uint64_t blk = pmfuse_le64(x->value_blk), n = pmfuse_le32(x->value_blocks);
		uint32_t vlen = pmfuse_le32(x->value_len);
		char name[600];
		const uint8_t *value = x->value;

		qname(x->name, x->name_len, name, sizeof(name));
		if (blk) {
			if (blk < k->data_start || blk > k->data_end || n > k->data_end - blk) {
				iproblem(c, "xattr %s: value blocks %llu+%llu outside the data area",
					 name, ULL(blk), ULL(n));
				continue;
			}
			value = pmfuse_volume_block(k->fs->vol, blk);
			if (n != (vlen + bs - 1) / bs)
				iproblem(c, "xattr %s: %u bytes in %llu blocks", name, vlen, ULL(n));
			else if (!all_zero(value + vlen, n * bs - vlen))
				iproblem(c, "xattr %s: bytes after the value are not zero", name);
		}
		if (pmfuse_acl_name((const char *)x->name))
			check_acl(c, x, value);
	}
	if (rc != -ENOENT) {
		iproblem(c, "xattrs cannot be read: %s", pmfuse_corrupt_last());
		k->bad_trees++;
	}
}

static void check_inode(struct ck *k, const struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
			const char *tree_said)
{
	const struct pmfuse_state *st = k->fs->vol->state;
	uint64_t ino = pmfuse_le64(ip->ino), gen = pmfuse_le64(ip->generation);
	uint32_t mode = pmfuse_le32(ip->mode);
	struct ino_ck c = { .k = k, .ip = ip };
	struct pmfuse_orphan orphan;
	struct pmfuse_btree bt;
	struct pmfuse_le64 key;
	char who[160];

	snprintf(c.who, sizeof(c.who), "inode %llu (%s)", ULL(ino), type_name(mode));
	if (pmfuse_inode_ops.check_rec(ip)) {
		/* the tree check names the first malformed record of the table: not twice */
		if (!strstr(tree_said, pmfuse_corrupt_last()))
			problem(k, "inode table: %s", pmfuse_corrupt_last());
		return;
	}
	pmfuse_set_le64(&key, ino);
	c.orphan = !pmfuse_btree_lookup(&k->fs->orphans, &key, &orphan);
	if (ino >= pmfuse_le64(st->next_ino))
		iproblem(&c, "number is not below the state block's next inode number %llu",
			 ULL(pmfuse_le64(st->next_ino)));
	if (gen >= pmfuse_le64(st->generation))
		iproblem(&c, "generation %llu is not below the state block's next generation %llu",
			 ULL(gen), ULL(pmfuse_le64(st->generation)));
	if (pmfuse_le32(ip->flags) & ~PMFUSE_INODE_FLAGS_KNOWN)
		iproblem(&c, "unknown flags %#x", pmfuse_le32(ip->flags));
	if (pmfuse_le32(ip->flags) & PMFUSE_INODE_DAMAGED)
		iproblem(&c, "damaged: a memory error failed a request on it, some of "
			 "its bytes may be lost");
	if ((pmfuse_le32(ip->flags) & PMFUSE_INODE_LINKABLE) &&
	    (pmfuse_le32(ip->nlink) || !S_ISREG(pmfuse_le32(ip->mode))))
		iproblem(&c, "linkable (O_TMPFILE) but has links or is not a regular file");
	if (pmfuse_le32(ip->cowextsize) > PMFUSE_COWEXTSIZE_MAX)
		iproblem(&c, "CoW extent size hint %u blocks (at most %u)",
			 pmfuse_le32(ip->cowextsize), PMFUSE_COWEXTSIZE_MAX);

	snprintf(who, sizeof(who), "%s: ", c.who);
	if (S_ISREG(mode) || S_ISLNK(mode)) {
		inode_tree(&c, leaf, false, &pmfuse_extent_ops, &bt);
		if (tree_ok(k, &bt, who))
			check_extents(&c, &bt);
	} else if (S_ISDIR(mode)) {
		inode_tree(&c, leaf, false, &pmfuse_dirent_ops, &bt);
		tree_ok(k, &bt, who);
		if (pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES) {
			struct pmfuse_inode *wip = (struct pmfuse_inode *)ip;   /* read only */

			if (!(pmfuse_le64(k->fs->vol->sb.incompat) &
			      PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS))
				iproblem(&c, "short-name directory, but the superblock lacks the "
					 "short directories feature");
			snprintf(who, sizeof(who), "%s: short names: ", c.who);
			pmfuse_inode_tree(k->fs, wip, leaf, &wip->sdir, &pmfuse_sdirent_ops, &bt);
			tree_ok(k, &bt, who);
		}
		if (pmfuse_le64(ip->blocks))
			iproblem(&c, "a directory with a block count of %llu",
				 ULL(pmfuse_le64(ip->blocks)));
	} else {
		if (!root_empty(&ip->map))
			iproblem(&c, "has a map tree (root block %llu), which only files, symlinks "
				 "and directories have", ULL(pmfuse_le64(ip->map.root)));
		if (pmfuse_le64(ip->blocks))
			iproblem(&c, "block count %llu, but it cannot map blocks",
				 ULL(pmfuse_le64(ip->blocks)));
	}
	inode_tree(&c, leaf, true, &pmfuse_xattr_ops, &bt);
	if (tree_ok(k, &bt, who))
		check_xattrs(&c, &bt);
}

/* The state block beyond what opening the volume checked: reserved roots and padding. */
static void check_state(struct ck *k)
{
	const struct pmfuse_state *st = k->fs->vol->state;
	uint32_t bs = k->fs->bs;

	for (unsigned i = 0; i < PMFUSE_STATE_ROOTS; i++)
		if (i != PMFUSE_ROOT_INODES && i != PMFUSE_ROOT_REFCOUNT &&
		    i != PMFUSE_ROOT_ORPHANS && !root_empty(&st->roots[i]))
			problem(k, "state block: reserved root %u is not empty", i);
	if (!all_zero(st->pad, sizeof(st->pad)) ||
	    !all_zero((const uint8_t *)st + sizeof(*st), bs - sizeof(*st)))
		problem(k, "state block: padding is not zero");
}

/*
 * Whether a tree can be walked in key order from end to end, which is what the namespace check
 * needs (a tree whose only fault is a malformed record or a wrong count still can). Reports
 * only what its structural check did not: reported says whether that check failed.
 */
static bool walkable(struct ck *k, const struct pmfuse_btree *bt, const char *who, bool reported)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_le64 k64;
	uint64_t prev = 0, key;
	bool first = true;
	int rc;

	for (rc = pmfuse_btree_first(&cur, bt); !rc; rc = pmfuse_btree_next(&cur)) {
		memcpy(&k64, pmfuse_btree_cursor_rec(&cur), sizeof(k64));
		key = pmfuse_le64(k64);
		if (!first && key <= prev) {
			if (!reported) {
				problem(k, "%skeys out of order after %llu", who, ULL(prev));
				k->bad_trees++;
			}
			return false;
		}
		first = false;
		prev = key;
	}
	if (rc != -ENOENT && !reported) {
		problem(k, "%scannot be read past key %llu: %s", who, ULL(prev),
			pmfuse_corrupt_last());
		k->bad_trees++;
	}
	return rc == -ENOENT;
}

int pmfuse_fs_check_trees(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			  struct pmfuse_check_result *res)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_btree rt;
	uint64_t total, done = 0;
	bool inodes_ok, orphans_ok, rc_ok;
	char msg[512], tree_said[512] = "";
	struct ck k;
	int rc;

	ck_init(&k, fs, ops, res);
	fs_rdlock(fs);
	check_state(&k);
	inodes_ok = tree_ok(&k, &fs->inodes, "inode table: ");
	if (!inodes_ok)
		snprintf(tree_said, sizeof(tree_said), "%s", pmfuse_corrupt_last());
	orphans_ok = tree_ok(&k, &fs->orphans, "orphan list: ");
	pmfuse_refcount_tree(fs->vol, &rt);
	rc_ok = tree_ok(&k, &rt, "refcount tree: ");
	if (rc_ok && pmfuse_refcount_check(&rt, NULL, msg, sizeof(msg)))
		problem(&k, "refcount tree: %s", msg);
	res->inode_table_ok = walkable(&k, &fs->inodes, "inode table: ", !inodes_ok) &&
			      walkable(&k, &fs->orphans, "orphan list: ", !orphans_ok);

	/* every inode's own trees and records, as far as the inode table can be walked */
	total = pmfuse_btree_count(&fs->inodes);
	for (rc = pmfuse_btree_first(&cur, &fs->inodes); !rc; rc = pmfuse_btree_next(&cur)) {
		const struct pmfuse_inode *ip = pmfuse_btree_cursor_rec(&cur);

		check_inode(&k, ip, pmfuse_volume_block(fs->vol, cur.path[0].blk), tree_said);
		done++;
		if (progress(&k, done, total > done ? total : done))
			break;
	}
	fs_unlock(fs);
	res->inodes = done;
	res->trees_ok = !k.bad_trees;
	return ck_end(&k);
}

/* ---- block accounting ------------------------------------------------------------------------ */

int pmfuse_fs_check_blocks(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			   struct pmfuse_check_result *res)
{
	struct pmfuse_space_report rep;
	char msg[512];
	struct ck k;
	int rc;

	if (!res->bitmap_ok || !res->trees_ok)
		return -EAGAIN;
	ck_init(&k, fs, ops, res);
	/* every tree passed pmfuse_fs_check_trees in this run (trees_ok) */
	rc = pmfuse_fs_check_space_checked(fs, true, &rep, msg, sizeof(msg));
	if (rc == -ENOMEM)
		return rc;
	if (rc)
		problem(&k, "block accounting: %s", msg[0] ? msg : pmfuse_corrupt_last());
	res->blocks_checked = true;
	res->meta_blocks = rep.meta_blocks;
	res->data_blocks = rep.data_blocks;
	res->mapped_blocks = rep.mapped_blocks;
	res->shared_blocks = rep.shared_blocks;
	res->extents = rep.extents;
	res->refcount_recs = rep.refcount_recs;
	return ck_end(&k);
}

/* ---- namespace ------------------------------------------------------------------------------ */

#define NONE SIZE_MAX

enum { NS_ORPHAN = 1, NS_UNREAD = 2, NS_BAD = 4 };
enum { R_UNKNOWN, R_WALKING, R_ROOT, R_LOST };

/* What the namespace rules need of one inode (DRAM, sorted by ino). */
struct ns_ino {
	uint64_t ino;
	uint64_t parent;       /* directories: the parent field */
	uint64_t size;         /* directories: the entries the record counts */
	uint64_t names;        /* entries naming it */
	uint64_t entries;      /* directories: entries it holds */
	uint64_t subdirs;      /* directories: entries of it naming directories */
	size_t named_in;       /* directories: index of the first directory naming it, or NONE */
	uint32_t mode, nlink;
	uint8_t flags, reach;
};

struct ns {
	struct ck k;
	struct ns_ino *v;
	size_t n, cap;
	size_t root;           /* index of the root, or NONE */
	uint64_t unread;       /* directories whose entries could not be read */
	uint64_t bad;          /* malformed inode records (phase 2 reported them) */
};

static size_t ns_find(const struct ns *s, uint64_t ino)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (s->v[mid].ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->n && s->v[lo].ino == ino ? lo : NONE;
}

/* Pass 1: the inode table into s->v (in key order, so sorted). */
static int ns_load(struct ns *s)
{
	struct pmfuse_fs *fs = s->k.fs;
	struct pmfuse_btree_cursor cur;
	int rc;

	for (rc = pmfuse_btree_first(&cur, &fs->inodes); !rc; rc = pmfuse_btree_next(&cur)) {
		const struct pmfuse_inode *ip = pmfuse_btree_cursor_rec(&cur);
		struct ns_ino *e;

		if (s->n == s->cap) {
			size_t cap = s->cap ? s->cap * 2 : 1024;
			struct ns_ino *v = realloc(s->v, cap * sizeof(*v));

			if (!v)
				return s->k.err = -ENOMEM;
			s->v = v;
			s->cap = cap;
		}
		e = &s->v[s->n++];
		memset(e, 0, sizeof(*e));
		e->ino = pmfuse_le64(ip->ino);
		e->parent = pmfuse_le64(ip->parent);
		e->size = pmfuse_le64(ip->size);
		e->mode = pmfuse_le32(ip->mode);
		e->nlink = pmfuse_le32(ip->nlink);
		e->named_in = NONE;
		if (pmfuse_inode_ops.check_rec(ip)) {
			e->flags |= NS_BAD;
			e->mode = 0;          /* neither a directory nor a file to the rules */
			s->bad++;
		}
	}
	if (rc != -ENOENT) {
		problem(&s->k, "inode table: cannot be read past inode %llu (%s); namespace not "
			"checked", ULL(s->n ? s->v[s->n - 1].ino : 0), pmfuse_corrupt_last());
		return -EUCLEAN;
	}
	return 0;
}

/* Pass 2: the orphan list (N5, second half). */
static void ns_orphans(struct ns *s)
{
	struct pmfuse_btree_cursor cur;
	int rc;

	for (rc = pmfuse_btree_first(&cur, &s->k.fs->orphans); !rc; rc = pmfuse_btree_next(&cur)) {
		struct pmfuse_orphan o;
		size_t i;

		memcpy(&o, pmfuse_btree_cursor_rec(&cur), sizeof(o));
		s->k.res->orphans++;
		i = ns_find(s, pmfuse_le64(o.ino));
		if (i == NONE)
			problem(&s->k, "orphan list: inode %llu does not exist",
				ULL(pmfuse_le64(o.ino)));
		else
			s->v[i].flags |= NS_ORPHAN;
	}
	if (rc != -ENOENT)
		problem(&s->k, "orphan list cannot be read: %s", pmfuse_corrupt_last());
}

/* Pass 3, one directory: its entries (N1), counted for N2-N4. */
static void ns_dir(struct ns *s, size_t di)
{
	struct pmfuse_fs *fs = s->k.fs;
	struct ns_ino *d = &s->v[di];
	struct pmfuse_dir_iter it;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;
	struct pmfuse_dirent ent, *de = &ent;
	char name[PMFUSE_NAME_MAX * 4 + 3];
	uint64_t prev = 0;
	unsigned tree;
	int rc;

	rc = pmfuse_inode_locate(fs, d->ino, &dp, &leaf);
	if (!rc)
		rc = pmfuse_dir_iter_start(&it, fs, dp, leaf, 0);
	if (!rc) {
		/* both trees in key order: a key in both comes twice in a row */
		while (!(rc = pmfuse_dir_iter_next(&it, de, &tree))) {
			uint64_t ino = pmfuse_le64(de->ino);
			size_t ti = ns_find(s, ino);
			struct ns_ino *t;

			if (pmfuse_le64(de->key) == prev)
				problem(&s->k, "directory %llu: key %llx is in both of its trees "
					"(entry %s)", ULL(d->ino), ULL(prev),
					qname(de->name, de->namelen, name, sizeof(name)));
			prev = pmfuse_le64(de->key);
			if (it.split && (tree == 1) != (de->namelen <= PMFUSE_SHORT_NAME_MAX))
				problem(&s->k, "directory %llu: entry %s (%u bytes) is in its %s "
					"tree", ULL(d->ino),
					qname(de->name, de->namelen, name, sizeof(name)),
					de->namelen, tree ? "short-name" : "long-name");
			d->entries++;
			s->k.res->entries++;
			if (ti == NONE) {
				problem(&s->k, "directory %llu: entry %s names inode %llu, which "
					"does not exist", ULL(d->ino),
					qname(de->name, de->namelen, name, sizeof(name)), ULL(ino));
				continue;
			}
			t = &s->v[ti];
			t->names++;
			if (!(t->flags & NS_BAD) && de->type != (t->mode & S_IFMT) >> 12)
				problem(&s->k, "directory %llu: entry %s has type %s, but inode "
					"%llu is a %s", ULL(d->ino),
					qname(de->name, de->namelen, name, sizeof(name)),
					dt_name(de->type), ULL(ino), type_name(t->mode));
			if (!S_ISDIR(t->mode))
				continue;
			d->subdirs++;
			if (ti == s->root)
				problem(&s->k, "directory %llu: entry %s names the root directory",
					ULL(d->ino), qname(de->name, de->namelen, name, sizeof(name)));
			else if (t->named_in == NONE)
				t->named_in = di;
			else
				problem(&s->k, "directory %llu has a second name: %s in directory "
					"%llu (its first is in directory %llu)", ULL(ino),
					qname(de->name, de->namelen, name, sizeof(name)), ULL(d->ino),
					ULL(s->v[t->named_in].ino));
		}
	}
	if (rc != -ENOENT) {
		d->flags |= NS_UNREAD;
		s->unread++;
		problem(&s->k, "directory %llu: its entries cannot be read (%s)", ULL(d->ino),
			pmfuse_corrupt_last());
	}
}

/* "1 entry names it", "3 entries name it" */
static const char *naming(uint64_t n, char *buf, size_t size)
{
	snprintf(buf, size, n == 1 ? "%llu entry names it" : "%llu entries name it", ULL(n));
	return buf;
}

/* Pass 4, one inode: N2-N5 (counts are complete: no directory was unreadable). */
static void ns_links(struct ns *s, size_t i)
{
	struct ns_ino *e = &s->v[i];
	const char *type = type_name(e->mode);
	char num[48];

	if (!S_ISDIR(e->mode)) {
		if (e->nlink != e->names)
			problem(&s->k, "inode %llu (%s): link count %u, but %s", ULL(e->ino), type,
				e->nlink, naming(e->names, num, sizeof(num)));
		if (!e->nlink && !(e->flags & NS_ORPHAN))
			problem(&s->k, "inode %llu (%s): link count 0 and not on the orphan list "
				"(lost: nothing would ever free it)", ULL(e->ino), type);
		if (e->names > 1)
			s->k.res->hard_links += e->names - 1;
		return;
	}
	if (e->size != e->entries)
		problem(&s->k, "directory %llu: size says %llu entries, it holds %llu", ULL(e->ino),
			ULL(e->size), ULL(e->entries));
	if (i == s->root) {
		if (e->nlink != 2 + e->subdirs)
			problem(&s->k, "root directory: link count %u, but 2 + %llu subdirectories "
				"= %llu", e->nlink, ULL(e->subdirs), ULL(2 + e->subdirs));
		if (e->parent != e->ino)
			problem(&s->k, "root directory: its parent (\"..\") is inode %llu, not "
				"itself", ULL(e->parent));
		if (e->flags & NS_ORPHAN)
			problem(&s->k, "root directory is on the orphan list");
		return;
	}
	if (!e->nlink) {
		/* removed while open: empty, nameless, on the orphan list */
		if (!(e->flags & NS_ORPHAN))
			problem(&s->k, "directory %llu: link count 0 (removed) and not on the orphan "
				"list (lost: nothing would ever free it)", ULL(e->ino));
		if (e->names)
			problem(&s->k, "directory %llu: link count 0 (removed), but %s", ULL(e->ino),
				naming(e->names, num, sizeof(num)));
		if (e->entries)
			problem(&s->k, "directory %llu: removed (link count 0), but it holds %llu "
				"entries", ULL(e->ino), ULL(e->entries));
		return;
	}
	if (e->nlink != 2 + e->subdirs)
		problem(&s->k, "directory %llu: link count %u, but 2 + %llu subdirectories = %llu",
			ULL(e->ino), e->nlink, ULL(e->subdirs), ULL(2 + e->subdirs));
	if (e->named_in == NONE) {
		problem(&s->k, "directory %llu: no entry names it (disconnected from the tree; its "
			"\"..\" says %llu)", ULL(e->ino), ULL(e->parent));
		return;
	}
	if (e->parent != s->v[e->named_in].ino)
		problem(&s->k, "directory %llu: its \"..\" (parent field) is %llu, but it is named "
			"in directory %llu", ULL(e->ino), ULL(e->parent),
			ULL(s->v[e->named_in].ino));
}

/* Pass 5: N6. path: room for s->n indexes. */
static void ns_reach(struct ns *s, size_t *path)
{
	for (size_t i = 0; i < s->n; i++) {
		size_t x = i, len = 0;
		uint8_t result;

		if (!S_ISDIR(s->v[i].mode) || s->v[i].reach != R_UNKNOWN || !s->v[i].nlink)
			continue;
		for (;;) {
			struct ns_ino *e = &s->v[x];

			if (x == s->root) {
				result = R_ROOT;
				break;
			}
			if (e->reach == R_ROOT || e->reach == R_LOST) {
				result = e->reach;
				break;
			}
			if (e->reach == R_WALKING) {
				problem(&s->k, "directory %llu is in a loop of directories that does "
					"not reach the root", ULL(e->ino));
				result = R_LOST;
				break;
			}
			e->reach = R_WALKING;
			path[len++] = x;
			if (e->named_in == NONE) {
				result = R_LOST;   /* disconnected: reported by ns_links */
				break;
			}
			x = e->named_in;
		}
		while (len)
			s->v[path[--len]].reach = result;
	}
}

int pmfuse_fs_check_namespace(struct pmfuse_fs *fs, const struct pmfuse_check_ops *ops,
			      struct pmfuse_check_result *res)
{
	uint64_t root_ino = pmfuse_le64(fs->vol->state->root_ino);
	struct ns s = { .root = NONE };
	size_t *path = NULL;
	int rc;

	if (!res->inode_table_ok)
		return -EAGAIN;
	ck_init(&s.k, fs, ops, res);
	fs_rdlock(fs);
	rc = ns_load(&s);
	if (rc)
		goto out;
	ns_orphans(&s);
	if (!s.n) {
		res->no_root = true;
		goto out;
	}
	s.root = ns_find(&s, root_ino);
	if (s.root == NONE)
		problem(&s.k, "the root directory (inode %llu) does not exist", ULL(root_ino));
	else if (!S_ISDIR(s.v[s.root].mode))
		problem(&s.k, "the root (inode %llu) is a %s, not a directory", ULL(root_ino),
			type_name(s.v[s.root].mode));

	for (size_t i = 0; i < s.n && !s.k.err; i++) {
		switch (s.v[i].mode & S_IFMT) {
		case S_IFREG: res->regular++; break;
		case S_IFDIR: res->directories++; ns_dir(&s, i); break;
		case S_IFLNK: res->symlinks++; break;
		case S_IFCHR: res->chrdevs++; break;
		case S_IFBLK: res->blkdevs++; break;
		case S_IFIFO: res->fifos++; break;
		case S_IFSOCK: res->sockets++; break;
		}
		progress(&s.k, i + 1, s.n);
	}
	if (s.k.err)
		goto out;
	if (s.unread || s.bad) {
		if (s.k.ops->note)
			s.k.ops->note(s.k.ops->arg, s.unread ? "link counts, \"..\" and "
				      "reachability not checked: a directory cannot be read" :
				      "link counts, \"..\" and reachability not checked: an inode "
				      "record is malformed");
		goto out;
	}
	for (size_t i = 0; i < s.n; i++)
		ns_links(&s, i);
	if (s.root != NONE && S_ISDIR(s.v[s.root].mode)) {
		path = malloc(s.n * sizeof(*path));
		if (!path) {
			s.k.err = -ENOMEM;
			goto out;
		}
		ns_reach(&s, path);
	}
	res->namespace_checked = true;
out:
	fs_unlock(fs);
	free(path);
	free(s.v);
	if (rc)
		return rc;
	return ck_end(&s.k);
}
