/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The inode table: a b+tree (owner PMFUSE_TREE_INODES, root in the state block) of 256-byte
 * struct pmfuse_inode records keyed by inode number, plus attributes and setattr.
 *
 * Records are changed in place: pmfuse_inode_locate() finds the record in its leaf, and a caller
 * declares the record (pmfuse_inode_change, which logs it and queues the leaf for resealing)
 * right before each change. "Right before" matters: the allocator seals the transaction, which
 * takes the leaf off the reseal list, so a change made after any tree operation of the same
 * transaction declares the record again (a repeated declaration logs nothing). This module always
 * declares the whole record, so repeated declarations are free. And a change is resealed
 * (pmfuse_tx_seal) before the next tree read of the same transaction: reads verify each node's
 * crc, and the leaf's is stale until the reseal. pmfuse_inode_touch seals before returning.
 *
 * Invariants checked on every record read (check_rec): ino != 0, a known file type, nsec below
 * 1e9 and zero padding in every timestamp, parent == 0 for non-directories and != 0 for
 * directories, rdev == 0 except for device nodes, zero padding; an inline extent map
 * (PMFUSE_INODE_INLINE_MAP) only on a file or symlink, with an empty map root and a first record,
 * and zero inline records without the flag; a short-name tree root (PMFUSE_INODE_SHORT_NAMES)
 * only on a directory, with zeros after it. The records themselves are extent.c's and dir.c's
 * to check.
 *
 * Numbers: state->next_ino only grows (inode numbers are never reused, so the kernel's node ids
 * stay unambiguous); state->generation gives each new inode a distinct generation. Both change in
 * the transaction that inserts the record. The root is created at state->root_ino (1), which mkfs
 * keeps below next_ino.
 *
 * Directory sizes: the record's size counts the directory's entries ("." and ".." excluded).
 * getattr reports st_size = the entries' bytes ((entries + 2) * sizeof(struct pmfuse_dirent))
 * rounded up to the block size, and st_blocks to match: an estimate of the leaf space, like the
 * block-multiple sizes ext4 shows, never zero.
 */
#include "fs/fs_internal.h"

#include <string.h>
#include <sys/stat.h>

#include "pool/pool.h"
#include "util/util.h"

#define NSEC_PER_SEC 1000000000u

/* ---- b+tree ops ----------------------------------------------------------------------------- */

static uint64_t le64_at(const void *p)
{
	struct pmfuse_le64 v;

	memcpy(&v, p, sizeof(v));
	return pmfuse_le64(v);
}

static bool type_known(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: case S_IFDIR: case S_IFLNK: case S_IFIFO: case S_IFSOCK: case S_IFCHR:
	case S_IFBLK:
		return true;
	default:
		return false;
	}
}

static bool ts_ok(const struct pmfuse_timestamp *ts)
{
	return pmfuse_le32(ts->nsec) < NSEC_PER_SEC && !pmfuse_le32(ts->pad);
}

static bool zero(const void *p, size_t len)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

static int inode_check_rec(const void *rec)
{
	const struct pmfuse_inode *ip = rec;
	uint64_t ino = pmfuse_le64(ip->ino);
	uint32_t mode = pmfuse_le32(ip->mode);

	if (!ino)
		return PMFUSE_CORRUPT("inode record with number 0");
	if (!type_known(mode))
		return PMFUSE_CORRUPT("inode %llu: unknown file type in mode 0%o",
				      (unsigned long long)ino, mode);
	if (!ts_ok(&ip->atime) || !ts_ok(&ip->mtime) || !ts_ok(&ip->ctime) || !ts_ok(&ip->btime))
		return PMFUSE_CORRUPT("inode %llu: malformed timestamp", (unsigned long long)ino);
	if (S_ISDIR(mode) != (pmfuse_le64(ip->parent) != 0))
		return PMFUSE_CORRUPT("inode %llu: parent %llu does not fit mode 0%o",
				      (unsigned long long)ino,
				      (unsigned long long)pmfuse_le64(ip->parent), mode);
	if (pmfuse_le64(ip->rdev) && !S_ISCHR(mode) && !S_ISBLK(mode))
		return PMFUSE_CORRUPT("inode %llu: device number on a non-device",
				      (unsigned long long)ino);
	if (!zero(ip->pad, sizeof(ip->pad)))
		return PMFUSE_CORRUPT("inode %llu: padding is not zero", (unsigned long long)ino);
	if (pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP) {
		if ((!S_ISREG(mode) && !S_ISLNK(mode)) || !zero(&ip->map, sizeof(ip->map)) ||
		    !pmfuse_le32(ip->inline_map[0].len))
			return PMFUSE_CORRUPT("inode %llu: inline extent map on mode 0%o, beside a "
					      "map tree or empty", (unsigned long long)ino, mode);
	} else if (pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES) {
		if (!S_ISDIR(mode) || !zero(ip->sdir_pad, sizeof(ip->sdir_pad)))
			return PMFUSE_CORRUPT("inode %llu: short-name tree on mode 0%o or with "
					      "bytes after its root", (unsigned long long)ino,
					      mode);
	} else if (!zero(ip->inline_map, sizeof(ip->inline_map))) {
		return PMFUSE_CORRUPT("inode %llu: inline extents without the inline map flag",
				      (unsigned long long)ino);
	}
	return 0;
}

const struct pmfuse_btree_ops pmfuse_inode_ops = {
	.name = "inodes",
	.key_len = 8,
	.rec_len = sizeof(struct pmfuse_inode),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = inode_check_rec,
};

/* ---- records -------------------------------------------------------------------------------- */

int pmfuse_inode_locate(struct pmfuse_fs *fs, uint64_t ino, struct pmfuse_inode **ip,
			struct pmfuse_blk_hdr **leaf)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_le64 key;
	const void *rec;
	int rc;

	if (!ino)
		return -ENOENT;
	pmfuse_set_le64(&key, ino);
	rc = pmfuse_btree_seek(&cur, &fs->inodes, &key, PMFUSE_SEEK_GE);
	if (rc)
		return rc;
	rec = pmfuse_btree_cursor_rec(&cur);
	if (le64_at(rec) != ino)
		return -ENOENT;
	rc = inode_check_rec(rec);
	if (rc)
		return rc;
	*ip = (struct pmfuse_inode *)rec;
	*leaf = pmfuse_volume_block(fs->vol, cur.path[0].blk);
	return 0;
}

int pmfuse_inode_change(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf, void *field,
			size_t len)
{
	struct pmfuse_fs *fs = pmfuse_fs_writer;

	/* every change of an inode's attributes is declared here first: the cache forgets the
	 * inode now, before anything of the change can be seen or a reference dropped */
	if (fs && fs->icache) {
		size_t off = (size_t)((uint8_t *)field - (uint8_t *)leaf) - sizeof(*leaf);
		const uint8_t *rec = (const uint8_t *)leaf + sizeof(*leaf) +
				     off / sizeof(struct pmfuse_inode) * sizeof(struct pmfuse_inode);

		pmfuse_icache_forget(fs->icache, le64_at(rec));
	}
	return pmfuse_tx_add_meta(tx, leaf, field, len);
}

void pmfuse_inode_tree(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		       struct pmfuse_btree_root *root, const struct pmfuse_btree_ops *ops,
		       struct pmfuse_btree *bt)
{
	pmfuse_btree_init(bt, fs->pool, fs->alloc, ops, root, leaf,
			  PMFUSE_OWNER_INODE_BASE + pmfuse_le64(ip->ino), fs->bs);
	bt->edge_fill = pmfuse_volume_edge_fill(fs->vol);
}

void pmfuse_timestamp_now(struct pmfuse_timestamp *ts)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	pmfuse_set_le64(&ts->sec, (uint64_t)(int64_t)now.tv_sec);
	pmfuse_set_le32(&ts->nsec, (uint32_t)now.tv_nsec);
	pmfuse_set_le32(&ts->pad, 0);
}

static void ts_set(struct pmfuse_timestamp *ts, const struct timespec *t)
{
	pmfuse_set_le64(&ts->sec, (uint64_t)(int64_t)t->tv_sec);
	pmfuse_set_le32(&ts->nsec, (uint32_t)t->tv_nsec);
	pmfuse_set_le32(&ts->pad, 0);
}

static void ts_get(struct timespec *t, const struct pmfuse_timestamp *ts)
{
	t->tv_sec = (time_t)(int64_t)pmfuse_le64(ts->sec);
	t->tv_nsec = (long)pmfuse_le32(ts->nsec);
}

/* Sets an incompat feature bit before the first transaction that needs it can commit
 * (format.h): both superblock copies are written and persisted now, inside the transaction but
 * outside its undo (declared as written: an abort or a crash keeps the bit, which is harmless
 * without the structure it announces). */
int pmfuse_feature_tx(struct pmfuse_tx *tx, struct pmfuse_fs *fs, uint64_t bit)
{
	struct pmfuse_volume *vol = fs->vol;
	uint64_t incompat = pmfuse_le64(vol->sb.incompat);
	int rc;

	if (incompat & bit)
		return 0;
	rc = pmfuse_tx_add_written(tx, pmfuse_volume_block(vol, 0), sizeof(struct pmfuse_sb));
	if (!rc)
		rc = pmfuse_tx_add_written(tx, pmfuse_volume_block(vol, pmfuse_le64(vol->sb.sb2_block)),
					   sizeof(struct pmfuse_sb));
	if (rc)
		return rc;
	pmfuse_set_le64(&vol->sb.incompat, incompat | bit);
	return pmfuse_volume_write_sb(vol);
}

int pmfuse_inode_create(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint32_t mode, uint64_t rdev,
			const struct pmfuse_cred *cred, const struct pmfuse_inode *dir_ip,
			uint64_t *ino)
{
	struct pmfuse_state *st = fs->vol->state;
	struct pmfuse_inode rec;
	uint64_t n, gen;
	uid_t uid = cred ? cred->uid : 0;
	gid_t gid = cred ? cred->gid : 0;
	int rc;

	if (!type_known(mode))
		return -EINVAL;
	/* next_ino, root_ino and generation are adjacent: one declaration */
	rc = pmfuse_tx_add_meta(tx, &st->hdr, &st->next_ino, 3 * sizeof(struct pmfuse_le64));
	if (rc)
		return rc;
	if (dir_ip) {
		n = pmfuse_le64(st->next_ino);
		pmfuse_set_le64(&st->next_ino, n + 1);
		if (pmfuse_le32(dir_ip->mode) & S_ISGID) {
			gid = pmfuse_le32(dir_ip->gid);
			if (S_ISDIR(mode))
				mode |= S_ISGID;
		}
	} else {
		n = pmfuse_le64(st->root_ino);
	}
	gen = pmfuse_le64(st->generation);
	pmfuse_set_le64(&st->generation, gen + 1);

	memset(&rec, 0, sizeof(rec));
	pmfuse_set_le64(&rec.ino, n);
	pmfuse_set_le64(&rec.generation, gen);
	pmfuse_set_le32(&rec.mode, mode);
	pmfuse_set_le32(&rec.uid, uid);
	pmfuse_set_le32(&rec.gid, gid);
	if (S_ISCHR(mode) || S_ISBLK(mode))
		pmfuse_set_le64(&rec.rdev, rdev);
	pmfuse_timestamp_now(&rec.btime);
	rec.atime = rec.mtime = rec.ctime = rec.btime;
	if (S_ISDIR(mode)) {
		pmfuse_set_le32(&rec.nlink, 2);
		pmfuse_set_le64(&rec.parent, dir_ip ? pmfuse_le64(dir_ip->ino) : n);
		if (!fs->long_names_only) {
			/* short names go to a tree of small records (dir.c) */
			rc = pmfuse_feature_tx(tx, fs, PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS);
			if (rc)
				return rc;
			pmfuse_set_le32(&rec.flags, PMFUSE_INODE_SHORT_NAMES);
		}
	} else {
		pmfuse_set_le32(&rec.nlink, 1);
	}
	rc = pmfuse_btree_insert(tx, &fs->inodes, &rec);
	if (rc == -EEXIST)
		return PMFUSE_CORRUPT("inode %llu exists already (next inode number %llu)",
				      (unsigned long long)n,
				      (unsigned long long)pmfuse_le64(st->next_ino));
	if (rc)
		return rc;
	*ino = n;
	return 0;
}

int pmfuse_inode_touch(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf, struct pmfuse_inode *ip,
		       unsigned which)
{
	struct pmfuse_timestamp now;
	int rc;

	if (!which)
		return 0;
	rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
	if (rc)
		return rc;
	pmfuse_timestamp_now(&now);
	if (which & PMFUSE_TIME_A)
		ip->atime = now;
	if (which & PMFUSE_TIME_M)
		ip->mtime = now;
	if (which & PMFUSE_TIME_C)
		ip->ctime = now;
	pmfuse_tx_seal(tx);
	return 0;
}

void pmfuse_inode_to_attr(const struct pmfuse_fs *fs, const struct pmfuse_inode *ip,
			  struct pmfuse_attr *attr)
{
	uint32_t mode = pmfuse_le32(ip->mode);

	memset(attr, 0, sizeof(*attr));
	attr->ino = pmfuse_le64(ip->ino);
	attr->generation = pmfuse_le64(ip->generation);
	attr->mode = mode;
	attr->nlink = pmfuse_le32(ip->nlink);
	attr->uid = pmfuse_le32(ip->uid);
	attr->gid = pmfuse_le32(ip->gid);
	attr->rdev = pmfuse_le64(ip->rdev);
	if (S_ISDIR(mode)) {
		uint64_t bytes = (pmfuse_le64(ip->size) + 2) * sizeof(struct pmfuse_dirent);

		attr->size = PMFUSE_ALIGN_UP(bytes, (uint64_t)fs->bs);
		attr->blocks512 = attr->size / 512;
	} else {
		attr->size = pmfuse_le64(ip->size);
		attr->blocks512 = pmfuse_le64(ip->blocks) * (fs->bs / 512);
	}
	attr->blksize = fs->bs;
	ts_get(&attr->atime, &ip->atime);
	ts_get(&attr->mtime, &ip->mtime);
	ts_get(&attr->ctime, &ip->ctime);
	ts_get(&attr->btime, &ip->btime);
}

/* ---- getattr / setattr ---------------------------------------------------------------------- */

int pmfuse_fs_getattr(struct pmfuse_fs *fs, uint64_t ino, struct pmfuse_attr *attr)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	int rc;

	if (fs->icache) {
		bool hit;

		/* no lock: a writer forgets the entry before it changes the record */
		pmfuse_icache_read_begin();
		hit = pmfuse_icache_attr(fs->icache, ino, attr, NULL);
		pmfuse_icache_read_end();
		if (hit)
			return 0;
	}
	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc) {
		pmfuse_inode_to_attr(fs, ip, attr);
		if (fs->icache)
			pmfuse_icache_put_attr(fs->icache, attr);   /* under the lock: current */
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

static bool ts_valid(const struct timespec *t)
{
	return t->tv_nsec >= 0 && t->tv_nsec < (long)NSEC_PER_SEC;
}

/* Clears setuid, and setgid when group-executable (setgid without group-exec is mandatory
 * locking, which stays), as Linux does on chown and on ATTR_KILL_SUID/SGID. */
static uint32_t kill_suid(uint32_t mode)
{
	mode &= ~(uint32_t)S_ISUID;
	if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP))
		mode &= ~(uint32_t)S_ISGID;
	return mode;
}

uint32_t pmfuse_fs_mode_after_change(uint32_t mode, uint32_t gid, const struct pmfuse_cred *cred)
{
	bool fsetid, in_group = false;

	if (!cred || !(mode & (S_ISUID | S_ISGID)))
		return mode;
	fsetid = cred->privs ? cred->privs(cred, gid, &in_group) : cred->uid == 0;
	if (cred->fsetid)
		fsetid = cred->fsetid > 0;
	if (fsetid)
		return mode;
	mode &= ~(uint32_t)S_ISUID;
	if ((mode & S_IXGRP) || (cred->gid != gid && !in_group))
		mode &= ~(uint32_t)S_ISGID;
	return mode;
}

int pmfuse_fs_setattr(struct pmfuse_fs *fs, uint64_t ino, const struct pmfuse_setattr *sa,
		      unsigned valid, const struct pmfuse_cred *cred, struct pmfuse_attr *attr)
{
	const unsigned any = PMFUSE_SET_MODE | PMFUSE_SET_UID | PMFUSE_SET_GID | PMFUSE_SET_SIZE |
			     PMFUSE_SET_ATIME | PMFUSE_SET_MTIME | PMFUSE_SET_ATIME_NOW |
			     PMFUSE_SET_MTIME_NOW | PMFUSE_SET_CTIME | PMFUSE_SET_KILL_SUID;
	struct pmfuse_timestamp now;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx = NULL;
	bool resized = false;
	uint32_t mode;
	int rc;

	if (valid & ~any)
		return -EINVAL;
	if (((valid & PMFUSE_SET_ATIME) && !(valid & PMFUSE_SET_ATIME_NOW) &&
	     !ts_valid(&sa->atime)) ||
	    ((valid & PMFUSE_SET_MTIME) && !(valid & PMFUSE_SET_MTIME_NOW) &&
	     !ts_valid(&sa->mtime)) ||
	    ((valid & PMFUSE_SET_CTIME) && !ts_valid(&sa->ctime)))
		return -EINVAL;

	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		goto out;
	if (valid && fs->readonly) {
		rc = -EROFS;
		goto out;
	}
	mode = pmfuse_le32(ip->mode);
	if (valid & PMFUSE_SET_SIZE) {
		if (S_ISDIR(mode)) {
			rc = -EISDIR;
			goto out;
		}
		if (!S_ISREG(mode)) {
			rc = -EINVAL;
			goto out;
		}
		if (sa->size > (uint64_t)INT64_MAX) {
			rc = -EFBIG;
			goto out;
		}
		if (sa->size != pmfuse_le64(ip->size)) {
			rc = pmfuse_data_set_size(fs, ino, sa->size);
			if (rc)
				goto out;
			resized = true;
			rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
			if (rc)
				goto out;
		}
	}
	if (!valid)
		goto done;

	if (valid & PMFUSE_SET_MODE)
		mode = (mode & S_IFMT) | (sa->mode & 07777);
	if (!S_ISDIR(mode)) {
		/* chown by anyone but root drops setuid/setgid even if the kernel did not ask */
		if ((valid & (PMFUSE_SET_UID | PMFUSE_SET_GID)) && cred && cred->uid != 0)
			mode = kill_suid(mode);
		/* the kernel asks (FATTR_KILL_SUIDGID) on chown, and on truncate by a caller
		 * without CAP_FSETID: then the rule of any change to the file's data */
		if ((valid & PMFUSE_SET_KILL_SUID) && (valid & (PMFUSE_SET_UID | PMFUSE_SET_GID))) {
			mode = kill_suid(mode);
		} else if (valid & PMFUSE_SET_KILL_SUID) {
			struct pmfuse_cred c = cred ? *cred : (struct pmfuse_cred){ .uid = 0 };

			c.fsetid = -1;
			mode = pmfuse_fs_mode_after_change(mode, pmfuse_le32(ip->gid), &c);
		}
	}

	tx = pmfuse_tx_begin(fs->txm);
	/* chmod rewrites an access ACL to match (posix_acl_chmod): its tree operations come
	 * before the record is declared and changed */
	if ((valid & PMFUSE_SET_MODE) && !S_ISLNK(mode)) {
		rc = pmfuse_acl_chmod_tx(fs, tx, ip, leaf, mode);
		if (rc)
			goto out;
	}
	rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
	if (rc)
		goto out;
	pmfuse_timestamp_now(&now);
	if (valid & PMFUSE_SET_UID)
		pmfuse_set_le32(&ip->uid, sa->uid);
	if (valid & PMFUSE_SET_GID)
		pmfuse_set_le32(&ip->gid, sa->gid);
	pmfuse_set_le32(&ip->mode, mode);
	if (valid & PMFUSE_SET_ATIME_NOW)
		ip->atime = now;
	else if (valid & PMFUSE_SET_ATIME)
		ts_set(&ip->atime, &sa->atime);
	if (valid & PMFUSE_SET_MTIME_NOW)
		ip->mtime = now;
	else if (valid & PMFUSE_SET_MTIME)
		ts_set(&ip->mtime, &sa->mtime);
	else if (resized)
		ip->mtime = now;
	if (valid & PMFUSE_SET_CTIME)
		ts_set(&ip->ctime, &sa->ctime);
	else
		ip->ctime = now;
	pmfuse_tx_commit(tx);
	tx = NULL;
done:
	pmfuse_inode_to_attr(fs, ip, attr);
out:
	if (tx)
		pmfuse_tx_abort(tx);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}
