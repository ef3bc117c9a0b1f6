/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Extended attributes: the records of an inode's xattrs tree (owner PMFUSE_OWNER_INODE_BASE +
 * ino), struct pmfuse_xattr keyed like directory entries, hash48(full name) << 16 | seq, with the
 * same collision chains (see dir.c).
 *
 * Values of up to PMFUSE_XATTR_INLINE bytes live in the record. A longer value (up to
 * PMFUSE_XATTR_VALUE_MAX) lives in one contiguous run of value_blocks blocks at value_blk,
 * allocated by the transaction that links the record, written and persisted before it commits
 * (the blocks are declared new, so nothing is logged for them); bytes past the value in the last
 * block are zero. Replacing or removing a value frees its blocks in the same transaction, and
 * freeing the inode frees them all (fs.c).
 *
 * Invariants (check_rec): key >> 16 == hash48(name), name_len 1..255 with zeros after the name,
 * value_len <= PMFUSE_XATTR_VALUE_MAX; inline iff value_len <= PMFUSE_XATTR_INLINE, and then
 * value_blk == value_blocks == 0 with zeros after the value; else value_blk != 0 and
 * 1 <= value_blocks <= PMFUSE_XATTR_VALUE_MAX / PMFUSE_BLOCK_SIZE_MIN; zero padding.
 *
 * Namespaces as Linux: user., trusted., security. and system. (only system.posix_acl_access and
 * system.posix_acl_default, which acl.c interprets on set and remove; not on symlinks, where
 * Linux has no ACLs: -EOPNOTSUPP). Other names: -EOPNOTSUPP; a bare prefix: -EINVAL. user.*
 * exists only on regular files and directories (setting or removing elsewhere: -EPERM; reading:
 * -ENODATA). The kernel checks permissions (trusted.* needs CAP_SYS_ADMIN), this code the rest.
 * Every change updates ctime.
 */
#include "fs/fs_internal.h"

#include <string.h>
#include <sys/stat.h>

#include "pool/pool.h"
#include "util/util.h"

#define XATTR_BLOCKS_MAX (PMFUSE_XATTR_VALUE_MAX / PMFUSE_BLOCK_SIZE_MIN)

/* ---- tree ops ------------------------------------------------------------------------------- */

static bool zero(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

static int xattr_check_rec(const void *rec)
{
	const struct pmfuse_xattr *x = rec;
	uint64_t key = pmfuse_le64(x->key);
	uint32_t vlen = pmfuse_le32(x->value_len), nblk = pmfuse_le32(x->value_blocks);
	uint64_t blk = pmfuse_le64(x->value_blk);
	unsigned nlen = x->name_len;

	if (!nlen || !zero(x->name + nlen, sizeof(x->name) - nlen) ||
	    memchr(x->name, '\0', nlen))
		return PMFUSE_CORRUPT("xattr %llx: malformed name", (unsigned long long)key);
	if (key >> 16 != pmfuse_name_hash48((const char *)x->name, nlen))
		return PMFUSE_CORRUPT("xattr %llx: key does not match the name's hash",
				      (unsigned long long)key);
	if (vlen > PMFUSE_XATTR_VALUE_MAX)
		return PMFUSE_CORRUPT("xattr %llx: value length %u", (unsigned long long)key, vlen);
	if (vlen <= PMFUSE_XATTR_INLINE) {
		if (blk || nblk || !zero(x->value + vlen, sizeof(x->value) - vlen))
			return PMFUSE_CORRUPT("xattr %llx: inline value of %u bytes with blocks or "
					      "trailing bytes", (unsigned long long)key, vlen);
	} else if (!blk || !nblk || nblk > XATTR_BLOCKS_MAX) {
		return PMFUSE_CORRUPT("xattr %llx: value of %u bytes in %u blocks at %llu",
				      (unsigned long long)key, vlen, nblk, (unsigned long long)blk);
	}
	if (!zero(x->pad0, sizeof(x->pad0)) || pmfuse_le32(x->pad1))
		return PMFUSE_CORRUPT("xattr %llx: padding is not zero", (unsigned long long)key);
	return 0;
}

const struct pmfuse_btree_ops pmfuse_xattr_ops = {
	.name = "xattrs",
	.key_len = 8,
	.rec_len = sizeof(struct pmfuse_xattr),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = xattr_check_rec,
};

/* ---- names ---------------------------------------------------------------------------------- */

static const char *const prefixes[] = { "user.", "trusted.", "security.", "system." };

/*
 * Checks a full attribute name against what the inode may carry: 0, -ERANGE (empty or longer
 * than 255), -EOPNOTSUPP (unknown namespace), -EINVAL (bare prefix), -EPERM / -ENODATA (user.*
 * on something that is neither a file nor a directory, for writes / reads).
 */
static int name_check(const char *name, uint32_t mode, bool write, size_t *len)
{
	size_t n = strnlen(name, PMFUSE_NAME_MAX + 1), plen = 0;
	unsigned i;

	if (!n || n > PMFUSE_NAME_MAX)
		return -ERANGE;
	for (i = 0; i < PMFUSE_ARRAY_SIZE(prefixes); i++) {
		plen = strlen(prefixes[i]);
		if (!strncmp(name, prefixes[i], plen))
			break;
	}
	if (i == PMFUSE_ARRAY_SIZE(prefixes))
		return -EOPNOTSUPP;
	if (n == plen)
		return -EINVAL;
	if (i == 3 && (!pmfuse_acl_name(name) || S_ISLNK(mode)))
		return -EOPNOTSUPP;
	if (i == 0 && !S_ISREG(mode) && !S_ISDIR(mode))
		return write ? -EPERM : -ENODATA;
	*len = n;
	return 0;
}

struct xfind {
	bool found;
	uint64_t key;             /* the record's key, or the key a new record gets */
	struct pmfuse_xattr x;    /* the record, when found */
};

static void xattr_name(const void *rec, const uint8_t **name, size_t *len)
{
	const struct pmfuse_xattr *x = rec;

	*name = x->name;
	*len = x->name_len;
}

static int xattr_find(const struct pmfuse_btree *bt, const char *name, size_t len,
		      struct xfind *f)
{
	const void *rec;
	int rc = pmfuse_name_find(bt, name, len, xattr_name, &rec, &f->key);

	f->found = false;
	if (rc == -ENOENT)
		return 0;
	/* what is used below must be sane: lengths, where the value lives */
	if (!rc)
		rc = xattr_check_rec(rec);
	if (rc)
		return rc;
	f->found = true;
	memcpy(&f->x, rec, sizeof(f->x));
	return 0;
}

static void xattr_tree(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		       struct pmfuse_btree *bt)
{
	pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, bt);
}

/* Where a record's out-of-line value lives, checked against the pool. */
static int value_blocks(const struct pmfuse_fs *fs, const struct pmfuse_xattr *x,
			const uint8_t **data)
{
	uint64_t blk = pmfuse_le64(x->value_blk), n = pmfuse_le32(x->value_blocks);
	uint64_t count = pmfuse_le64(fs->vol->sb.block_count);

	if (blk < pmfuse_le64(fs->vol->sb.data_start) || blk + n > count ||
	    n * fs->bs < pmfuse_le32(x->value_len))
		return PMFUSE_CORRUPT("xattr %llx: value blocks %llu+%llu do not hold %u bytes",
				      (unsigned long long)pmfuse_le64(x->key),
				      (unsigned long long)blk, (unsigned long long)n,
				      pmfuse_le32(x->value_len));
	*data = pmfuse_volume_block(fs->vol, blk);
	return 0;
}

/* Inside tx: stores value under name where f says (replacing f's record when found). */
static int xattr_store(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_btree *bt,
		       struct pmfuse_blk_hdr *leaf, const char *name, size_t len,
		       const void *value, size_t size, const struct xfind *f)
{
	struct pmfuse_xattr rec;
	int rc;

	memset(&rec, 0, sizeof(rec));
	pmfuse_set_le64(&rec.key, f->key);
	pmfuse_set_le32(&rec.value_len, (uint32_t)size);
	rec.name_len = (uint8_t)len;
	memcpy(rec.name, name, len);
	if (size > PMFUSE_XATTR_INLINE) {
		uint64_t n = (size + fs->bs - 1) / fs->bs, start, got;
		uint64_t goal = pmfuse_pool_offset(fs->pool, leaf) / fs->bs;
		uint8_t *dst;

		rc = pmfuse_alloc_extent(tx, fs->alloc, goal, n, n, &start, &got);
		if (rc)
			return rc;
		dst = pmfuse_volume_block(fs->vol, start);
		rc = pmfuse_tx_add_new(tx, dst, n * fs->bs);
		if (rc)
			return rc;
		/* the value is durable before the transaction that links it commits */
		memcpy(dst, value, size);
		memset(dst + size, 0, n * fs->bs - size);
		pmfuse_pool_persist(fs->pool, dst, n * fs->bs);
		pmfuse_set_le64(&rec.value_blk, start);
		pmfuse_set_le32(&rec.value_blocks, (uint32_t)n);
	} else if (size) {
		memcpy(rec.value, value, size);
	}
	if (!f->found)
		return pmfuse_btree_insert(tx, bt, &rec);
	rc = pmfuse_btree_update(tx, bt, &rec);
	if (!rc && pmfuse_le64(f->x.value_blk))
		rc = pmfuse_alloc_free(tx, fs->alloc, pmfuse_le64(f->x.value_blk),
				       pmfuse_le32(f->x.value_blocks));
	return rc;
}

/* Inside tx: deletes the record f found, and frees its value blocks. */
static int xattr_delete(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_btree *bt,
			const struct xfind *f)
{
	struct pmfuse_le64 k;
	int rc;

	pmfuse_set_le64(&k, f->key);
	rc = pmfuse_btree_delete(tx, bt, &k, NULL);
	if (!rc && pmfuse_le64(f->x.value_blk))
		rc = pmfuse_alloc_free(tx, fs->alloc, pmfuse_le64(f->x.value_blk),
				       pmfuse_le32(f->x.value_blocks));
	return rc;
}

ssize_t pmfuse_xattr_read(struct pmfuse_fs *fs, struct pmfuse_inode *ip,
			  struct pmfuse_blk_hdr *leaf, const char *name, void *value, size_t size)
{
	const uint8_t *data = NULL;
	struct pmfuse_btree bt;
	struct xfind f;
	uint32_t vlen;
	int rc;

	if (!pmfuse_le16(ip->xattrs.levels))
		return -ENODATA;
	xattr_tree(fs, ip, leaf, &bt);
	rc = xattr_find(&bt, name, strlen(name), &f);
	if (rc)
		return rc;
	if (!f.found)
		return -ENODATA;
	vlen = pmfuse_le32(f.x.value_len);
	if (!size)
		return vlen;
	if (size < vlen)
		return -ERANGE;
	if (pmfuse_le64(f.x.value_blk)) {
		rc = value_blocks(fs, &f.x, &data);
		if (rc)
			return rc;
	} else {
		data = f.x.value;
	}
	memcpy(value, data, vlen);
	return vlen;
}

int pmfuse_xattr_write(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_inode *ip,
		       struct pmfuse_blk_hdr *leaf, const char *name, const void *value,
		       size_t size)
{
	struct pmfuse_btree bt;
	size_t len = strlen(name);
	struct xfind f;
	int rc;

	if (!value && !pmfuse_le16(ip->xattrs.levels))
		return 0;
	xattr_tree(fs, ip, leaf, &bt);
	rc = xattr_find(&bt, name, len, &f);
	if (rc)
		return rc;
	if (value)
		return xattr_store(fs, tx, &bt, leaf, name, len, value, size, &f);
	return f.found ? xattr_delete(fs, tx, &bt, &f) : 0;
}

/* ---- operations ----------------------------------------------------------------------------- */

int pmfuse_fs_setxattr(struct pmfuse_fs *fs, uint64_t ino, const char *name, const void *value,
		       size_t size, int flags)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_tx *tx = NULL;
	struct pmfuse_inode *ip;
	struct pmfuse_btree bt;
	struct xfind f;
	size_t len;
	int rc;

	if (flags & ~(PMFUSE_XATTR_CREATE | PMFUSE_XATTR_REPLACE | PMFUSE_XATTR_ACL_KILL_SGID))
		return -EINVAL;
	if (size > PMFUSE_XATTR_VALUE_MAX)
		return -E2BIG;
	if (size && !value)
		return -EFAULT;
	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		goto out;
	rc = name_check(name, pmfuse_le32(ip->mode), true, &len);
	if (rc)
		goto out;
	if (fs->readonly) {
		rc = -EROFS;
		goto out;
	}
	if (pmfuse_acl_name(name)) {
		rc = pmfuse_acl_set(fs, ip, leaf, name, value, size, flags);
		goto out;
	}
	xattr_tree(fs, ip, leaf, &bt);
	rc = xattr_find(&bt, name, len, &f);
	if (rc)
		goto out;
	if (f.found && (flags & PMFUSE_XATTR_CREATE)) {
		rc = -EEXIST;
		goto out;
	}
	if (!f.found && (flags & PMFUSE_XATTR_REPLACE)) {
		rc = -ENODATA;
		goto out;
	}

	tx = pmfuse_tx_begin(fs->txm);
	rc = xattr_store(fs, tx, &bt, leaf, name, len, value, size, &f);
	if (!rc)
		rc = pmfuse_inode_touch(tx, leaf, ip, PMFUSE_TIME_C);
	if (rc)
		goto out;
	pmfuse_tx_commit(tx);
	tx = NULL;
out:
	if (tx)
		pmfuse_tx_abort(tx);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

ssize_t pmfuse_fs_getxattr(struct pmfuse_fs *fs, uint64_t ino, const char *name, void *value,
			   size_t size)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	ssize_t rc;
	size_t len;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc)
		rc = name_check(name, pmfuse_le32(ip->mode), false, &len);
	if (!rc)
		rc = pmfuse_xattr_read(fs, ip, leaf, name, value, size);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

ssize_t pmfuse_fs_listxattr(struct pmfuse_fs *fs, uint64_t ino, char *list, size_t size)
{
	struct pmfuse_btree_cursor cur;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_btree bt;
	size_t total = 0;
	int rc;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		goto out;
	xattr_tree(fs, ip, leaf, &bt);
	rc = pmfuse_btree_first(&cur, &bt);
	while (!rc) {
		const struct pmfuse_xattr *x = pmfuse_btree_cursor_rec(&cur);
		size_t n = x->name_len;

		rc = xattr_check_rec(x);
		if (rc)
			break;

		if (size) {
			if (total + n + 1 > size) {
				rc = -ERANGE;
				break;
			}
			memcpy(list + total, x->name, n);
			list[total + n] = '\0';
		}
		total += n + 1;
		rc = pmfuse_btree_next(&cur);
	}
	if (rc == -ENOENT)
		rc = 0;
out:
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc ? rc : (ssize_t)total;
}

int pmfuse_fs_removexattr(struct pmfuse_fs *fs, uint64_t ino, const char *name)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_tx *tx = NULL;
	struct pmfuse_inode *ip;
	struct pmfuse_btree bt;
	struct xfind f;
	size_t len;
	int rc;

	fs_ilock1(fs, ino, true);
	fs_wrlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc)
		rc = name_check(name, pmfuse_le32(ip->mode), true, &len);
	if (rc)
		goto out;
	if (fs->readonly) {
		rc = -EROFS;
		goto out;
	}
	if (pmfuse_acl_name(name)) {
		rc = pmfuse_acl_remove(fs, ip, leaf, name);
		goto out;
	}
	xattr_tree(fs, ip, leaf, &bt);
	rc = xattr_find(&bt, name, len, &f);
	if (!rc && !f.found)
		rc = -ENODATA;
	if (rc)
		goto out;
	tx = pmfuse_tx_begin(fs->txm);
	rc = xattr_delete(fs, tx, &bt, &f);
	if (!rc)
		rc = pmfuse_inode_touch(tx, leaf, ip, PMFUSE_TIME_C);
	if (rc)
		goto out;
	pmfuse_tx_commit(tx);
	tx = NULL;
out:
	if (tx)
		pmfuse_tx_abort(tx);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}
