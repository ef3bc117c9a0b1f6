/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * POSIX ACLs: the xattrs system.posix_acl_access and system.posix_acl_default.
 *
 * With FUSE_CAP_POSIX_ACL the kernel caches ACLs and enforces them in its permission checks
 * (it reads them with GETXATTR), and validates an ACL before passing it on; everything else a
 * Linux filesystem does with ACLs is the server's (fs/fuse/acl.c: "Fuse userspace is
 * responsible for updating access permissions in the inode"; the kernel never calls
 * posix_acl_chmod or posix_acl_create for FUSE). This module does what ext4 does through
 * fs/posix_acl.c:
 *
 * - set access ACL: the mode's permission bits follow the ACL (owner, group or mask, other);
 *   an ACL the mode says in full (three entries, posix_acl_equiv_mode) is not stored, and a
 *   stored one goes; setgid is cleared when the caller asks (PMFUSE_XATTR_ACL_KILL_SGID:
 *   posix_acl_update_mode). Mode and ACL change in one transaction.
 * - set default ACL: directories only (-EACCES elsewhere, as set_posix_acl), stored as given,
 *   minimal ones too; no mode change.
 * - an empty value or a bare header means "no ACL" (posix_acl_from_xattr returns NULL) and
 *   removes it; removing an ACL that is not there succeeds, as on ext4 and tmpfs (removing a
 *   default ACL of a non-directory too).
 * - chmod: the access ACL's owner, mask (group without a mask) and other entries take the new
 *   mode (posix_acl_chmod), in the chmod's transaction.
 * - create (mknod, mkdir, create; not symlinks): with a default ACL on the parent, the new
 *   inode's access ACL is that ACL limited by the requested mode and the mode limited by the
 *   ACL (posix_acl_create_masq); the access ACL is stored only when not equivalent to the mode;
 *   a new directory also gets the default ACL. Without one the umask applies: with
 *   FUSE_CAP_DONT_MASK the kernel sends it unapplied (fuse_mknod: "if (!fc->dont_mask) mode &=
 *   ~current_umask()"), since a default ACL must replace it.
 *
 * Values are validated like posix_acl_valid (see fs_internal.h) before anything changes; one
 * found invalid on the media is corruption (-EUCLEAN). Stored values are normalised: the ids of
 * entries other than named users and groups are PMFUSE_ACL_UNDEFINED_ID, as the kernel writes.
 */
#include "fs/fs_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/util.h"

#define ACL_RWX 7u

bool pmfuse_acl_name(const char *name)
{
	return !strcmp(name, PMFUSE_XATTR_ACL_ACCESS) || !strcmp(name, PMFUSE_XATTR_ACL_DEFAULT);
}

/* ---- the xattr form ------------------------------------------------------------------------- */

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

int pmfuse_acl_from_xattr(const void *value, size_t size, struct pmfuse_acl *acl)
{
	const uint8_t *p = value;

	acl->count = 0;
	if (!size)
		return 0;
	if (size < 4)
		return -EINVAL;
	if (get_le32(p) != PMFUSE_ACL_VERSION)
		return -EOPNOTSUPP;
	if ((size - 4) % 8)
		return -EINVAL;
	if (size > PMFUSE_ACL_XATTR_MAX)
		return -E2BIG;
	acl->count = (unsigned)((size - 4) / 8);
	for (unsigned i = 0; i < acl->count; i++) {
		const uint8_t *e = p + 4 + 8 * i;

		acl->e[i].tag = get_le16(e);
		acl->e[i].perm = get_le16(e + 2);
		acl->e[i].id = get_le32(e + 4);
	}
	return 0;
}

size_t pmfuse_acl_to_xattr(const struct pmfuse_acl *acl, void *buf)
{
	uint8_t *p = buf;

	put_le32(p, PMFUSE_ACL_VERSION);
	for (unsigned i = 0; i < acl->count; i++) {
		const struct pmfuse_acl_entry *e = &acl->e[i];
		bool named = e->tag == PMFUSE_ACL_USER || e->tag == PMFUSE_ACL_GROUP;

		put_le16(p + 4 + 8 * i, e->tag);
		put_le16(p + 6 + 8 * i, e->perm);
		put_le32(p + 8 + 8 * i, named ? e->id : PMFUSE_ACL_UNDEFINED_ID);
	}
	return 4 + 8 * (size_t)acl->count;
}

/* ---- semantics (fs/posix_acl.c) ------------------------------------------------------------- */

int pmfuse_acl_valid(const struct pmfuse_acl *acl)
{
	/* the state machine of posix_acl_valid: which tags may come next */
	enum { S_USER_OBJ, S_USER, S_GROUP, S_OTHER, S_DONE } state = S_USER_OBJ;
	bool needs_mask = false;

	for (unsigned i = 0; i < acl->count; i++) {
		const struct pmfuse_acl_entry *e = &acl->e[i];

		if (e->perm & ~ACL_RWX)
			return -EINVAL;
		switch (e->tag) {
		case PMFUSE_ACL_USER_OBJ:
			if (state != S_USER_OBJ)
				return -EINVAL;
			state = S_USER;
			break;
		case PMFUSE_ACL_USER:
			if (state != S_USER || e->id == PMFUSE_ACL_UNDEFINED_ID)
				return -EINVAL;
			needs_mask = true;
			break;
		case PMFUSE_ACL_GROUP_OBJ:
			if (state != S_USER)
				return -EINVAL;
			state = S_GROUP;
			break;
		case PMFUSE_ACL_GROUP:
			if (state != S_GROUP || e->id == PMFUSE_ACL_UNDEFINED_ID)
				return -EINVAL;
			needs_mask = true;
			break;
		case PMFUSE_ACL_MASK:
			if (state != S_GROUP)
				return -EINVAL;
			state = S_OTHER;
			break;
		case PMFUSE_ACL_OTHER:
			if (state != S_OTHER && !(state == S_GROUP && !needs_mask))
				return -EINVAL;
			state = S_DONE;
			break;
		default:
			return -EINVAL;
		}
	}
	return state == S_DONE ? 0 : -EINVAL;
}

int pmfuse_acl_equiv_mode(const struct pmfuse_acl *acl, uint32_t *mode)
{
	uint32_t m = 0;
	int not_equiv = 0;

	for (unsigned i = 0; i < acl->count; i++) {
		const struct pmfuse_acl_entry *e = &acl->e[i];

		switch (e->tag) {
		case PMFUSE_ACL_USER_OBJ:
			m |= (e->perm & ACL_RWX) << 6;
			break;
		case PMFUSE_ACL_GROUP_OBJ:
			m |= (e->perm & ACL_RWX) << 3;
			break;
		case PMFUSE_ACL_OTHER:
			m |= e->perm & ACL_RWX;
			break;
		case PMFUSE_ACL_MASK:
			m = (m & ~(uint32_t)S_IRWXG) | (e->perm & ACL_RWX) << 3;
			not_equiv = 1;
			break;
		default:                 /* named users and groups */
			not_equiv = 1;
			break;
		}
	}
	*mode = (*mode & ~(uint32_t)(S_IRWXU | S_IRWXG | S_IRWXO)) | m;
	return not_equiv;
}

/* The mask entry, else the owning group's (a valid ACL has one of them). */
static struct pmfuse_acl_entry *group_class(struct pmfuse_acl *acl)
{
	struct pmfuse_acl_entry *group = NULL;

	for (unsigned i = 0; i < acl->count; i++) {
		if (acl->e[i].tag == PMFUSE_ACL_MASK)
			return &acl->e[i];
		if (acl->e[i].tag == PMFUSE_ACL_GROUP_OBJ)
			group = &acl->e[i];
	}
	return group;
}

void pmfuse_acl_chmod(struct pmfuse_acl *acl, uint32_t mode)
{
	struct pmfuse_acl_entry *g = group_class(acl);

	for (unsigned i = 0; i < acl->count; i++) {
		if (acl->e[i].tag == PMFUSE_ACL_USER_OBJ)
			acl->e[i].perm = (uint16_t)((mode & S_IRWXU) >> 6);
		else if (acl->e[i].tag == PMFUSE_ACL_OTHER)
			acl->e[i].perm = (uint16_t)(mode & S_IRWXO);
	}
	if (g)
		g->perm = (uint16_t)((mode & S_IRWXG) >> 3);
}

int pmfuse_acl_create_masq(struct pmfuse_acl *acl, uint32_t *mode)
{
	struct pmfuse_acl_entry *g = group_class(acl);
	uint32_t m = *mode;
	int not_equiv = 0;

	for (unsigned i = 0; i < acl->count; i++) {
		struct pmfuse_acl_entry *e = &acl->e[i];

		switch (e->tag) {
		case PMFUSE_ACL_USER_OBJ:
			e->perm &= (uint16_t)((m >> 6) & ACL_RWX);
			m &= (uint32_t)e->perm << 6 | ~(uint32_t)S_IRWXU;
			break;
		case PMFUSE_ACL_OTHER:
			e->perm &= (uint16_t)(m & ACL_RWX);
			m &= (uint32_t)e->perm | ~(uint32_t)S_IRWXO;
			break;
		case PMFUSE_ACL_USER:
		case PMFUSE_ACL_GROUP:
		case PMFUSE_ACL_MASK:
			not_equiv = 1;
			break;
		default:
			break;
		}
	}
	if (g) {
		g->perm &= (uint16_t)((m >> 3) & ACL_RWX);
		m &= (uint32_t)g->perm << 3 | ~(uint32_t)S_IRWXG;
	}
	*mode = m;
	return not_equiv;
}

/* ---- the fs side ---------------------------------------------------------------------------- */

/* Reads and checks a stored ACL into acl and its value into raw (PMFUSE_ACL_XATTR_MAX bytes):
 * 0 (*rawlen 0 when there is none), -EUCLEAN. */
static int acl_load(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		    const char *name, struct pmfuse_acl *acl, uint8_t *raw, size_t *rawlen)
{
	ssize_t n = pmfuse_xattr_read(fs, ip, leaf, name, raw, PMFUSE_ACL_XATTR_MAX);

	acl->count = 0;
	*rawlen = 0;
	if (n == -ENODATA)
		return 0;
	if (n < 0 && n != -ERANGE)
		return (int)n;
	if (n < 0 || pmfuse_acl_from_xattr(raw, (size_t)n, acl) || !acl->count ||
	    pmfuse_acl_valid(acl))
		return PMFUSE_CORRUPT("inode %llu: %s is not a valid ACL",
				      (unsigned long long)pmfuse_le64(ip->ino), name);
	*rawlen = (size_t)n;
	return 0;
}

/* Inside tx, after the tree operations: the record's mode (type bits kept) and ctime. */
static int acl_touch(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf, struct pmfuse_inode *ip,
		     uint32_t mode)
{
	int rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));

	if (rc)
		return rc;
	pmfuse_set_le32(&ip->mode, mode);
	pmfuse_timestamp_now(&ip->ctime);
	return 0;
}

int pmfuse_acl_remove(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		      const char *name)
{
	struct pmfuse_tx *tx;
	ssize_t n;
	int rc;

	n = pmfuse_xattr_read(fs, ip, leaf, name, NULL, 0);
	if (n == -ENODATA)
		return 0;
	if (n < 0)
		return (int)n;
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_xattr_write(fs, tx, ip, leaf, name, NULL, 0);
	if (!rc)
		rc = acl_touch(tx, leaf, ip, pmfuse_le32(ip->mode));
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return 0;
}

int pmfuse_acl_set(struct pmfuse_fs *fs, struct pmfuse_inode *ip, struct pmfuse_blk_hdr *leaf,
		   const char *name, const void *value, size_t size, int flags)
{
	bool access = !strcmp(name, PMFUSE_XATTR_ACL_ACCESS);
	uint32_t mode = pmfuse_le32(ip->mode);
	struct pmfuse_acl *acl;
	struct pmfuse_tx *tx;
	uint8_t *raw = NULL;
	size_t len = 0;
	int rc;

	acl = malloc(sizeof(*acl) + PMFUSE_ACL_XATTR_MAX);
	if (!acl)
		return -ENOMEM;
	/* the order of Linux's checks: the form, "no ACL", directories only, validity */
	rc = pmfuse_acl_from_xattr(value, size, acl);
	if (rc)
		goto out;
	if (!acl->count) {
		/* what the kernel sends as REMOVEXATTR */
		rc = pmfuse_acl_remove(fs, ip, leaf, name);
		goto out;
	}
	if (!access && !S_ISDIR(mode)) {
		rc = -EACCES;
		goto out;
	}
	rc = pmfuse_acl_valid(acl);
	if (rc)
		goto out;
	if (!access || pmfuse_acl_equiv_mode(acl, &mode)) {
		raw = (uint8_t *)(acl + 1);
		len = pmfuse_acl_to_xattr(acl, raw);
	}
	if (access && (flags & PMFUSE_XATTR_ACL_KILL_SGID))
		mode &= ~(uint32_t)S_ISGID;

	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_xattr_write(fs, tx, ip, leaf, name, raw, len);
	if (!rc)
		rc = acl_touch(tx, leaf, ip, mode);
	if (rc)
		pmfuse_tx_abort(tx);
	else
		pmfuse_tx_commit(tx);
out:
	free(acl);
	return rc;
}

int pmfuse_acl_chmod_tx(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_inode *ip,
			struct pmfuse_blk_hdr *leaf, uint32_t mode)
{
	struct pmfuse_acl *acl;
	uint8_t *old, *new;
	size_t oldlen, newlen;
	int rc;

	if (!pmfuse_le16(ip->xattrs.levels))
		return 0;
	acl = malloc(sizeof(*acl) + 2 * PMFUSE_ACL_XATTR_MAX);
	if (!acl)
		return -ENOMEM;
	old = (uint8_t *)(acl + 1);
	new = old + PMFUSE_ACL_XATTR_MAX;
	rc = acl_load(fs, ip, leaf, PMFUSE_XATTR_ACL_ACCESS, acl, old, &oldlen);
	if (rc || !acl->count)
		goto out;
	pmfuse_acl_chmod(acl, mode);
	newlen = pmfuse_acl_to_xattr(acl, new);
	if (newlen != oldlen || memcmp(old, new, newlen))
		rc = pmfuse_xattr_write(fs, tx, ip, leaf, PMFUSE_XATTR_ACL_ACCESS, new, newlen);
out:
	free(acl);
	return rc;
}

int pmfuse_acl_inherit_prepare(struct pmfuse_fs *fs, struct pmfuse_inode *dp,
			       struct pmfuse_blk_hdr *dleaf, const struct pmfuse_cred *cred,
			       uint32_t *mode, struct pmfuse_acl_inherit *inh)
{
	struct pmfuse_acl *acl;
	uint8_t *raw;
	size_t rawlen;
	ssize_t n;
	int rc;

	memset(inh, 0, sizeof(*inh));
	if (S_ISLNK(*mode))
		return 0;
	n = pmfuse_xattr_read(fs, dp, dleaf, PMFUSE_XATTR_ACL_DEFAULT, NULL, 0);
	if (n == -ENODATA) {
		*mode &= ~(uint32_t)(cred ? cred->umask & (S_IRWXU | S_IRWXG | S_IRWXO) : 0);
		return 0;
	}
	if (n < 0)
		return (int)n;
	/* one allocation, kept in inh->buf: [parsed ACL][default value][access value] */
	acl = malloc(sizeof(*acl) + 2 * PMFUSE_ACL_XATTR_MAX);
	if (!acl)
		return -ENOMEM;
	raw = (uint8_t *)(acl + 1);
	rc = acl_load(fs, dp, dleaf, PMFUSE_XATTR_ACL_DEFAULT, acl, raw, &rawlen);
	if (rc || !rawlen) {
		free(acl);
		return rc ? rc : PMFUSE_CORRUPT("directory %llu: its default ACL vanished",
						(unsigned long long)pmfuse_le64(dp->ino));
	}
	inh->buf = (uint8_t *)acl;
	if (S_ISDIR(*mode))
		inh->default_len = rawlen;
	if (pmfuse_acl_create_masq(acl, mode))
		inh->access_len = pmfuse_acl_to_xattr(acl, raw + PMFUSE_ACL_XATTR_MAX);
	return 0;
}

int pmfuse_acl_inherit_apply(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino,
			     const struct pmfuse_acl_inherit *inh)
{
	const uint8_t *raw;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	int rc;

	if (!inh->default_len && !inh->access_len)
		return 0;
	raw = inh->buf + sizeof(struct pmfuse_acl);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		return rc;
	if (inh->default_len) {
		rc = pmfuse_xattr_write(fs, tx, ip, leaf, PMFUSE_XATTR_ACL_DEFAULT, raw,
					inh->default_len);
		if (rc)
			return rc;
	}
	if (inh->access_len)
		rc = pmfuse_xattr_write(fs, tx, ip, leaf, PMFUSE_XATTR_ACL_ACCESS,
					raw + PMFUSE_ACL_XATTR_MAX, inh->access_len);
	return rc;
}

void pmfuse_acl_inherit_done(struct pmfuse_acl_inherit *inh)
{
	free(inh->buf);
	inh->buf = NULL;
}
