/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * POSIX ACLs (src/fs/acl.c) on fake-media volumes, with transaction verification on (every byte
 * an ACL operation changes was declared):
 * - the xattr form: sizes, version, E2BIG, the validity rules of Linux's posix_acl_valid (tag
 *   order, required entries, the mask, named ids, perms), normalised ids;
 * - the mode arithmetic against properties that hold in Linux (equiv_mode after chmod and
 *   after create_masq gives back the mode; create_masq never widens), seeded random ACLs;
 * - setxattr of an access ACL: mode bits follow it, a minimal one is folded into the mode and
 *   not stored, setgid cleared on request, ctime, an invalid ACL changes nothing, an empty value
 *   or bare header removes; default ACLs on directories only (EACCES), symlinks (EOPNOTSUPP);
 * - chmod rewrites the access ACL (inline and out-of-line values), chown and truncate do not;
 * - inheritance on mknod/mkdir with a default ACL (umask ignored, mode limited, access ACL only
 *   when needed, directories inherit the default), without one (umask applied), symlinks
 *   (neither), setgid directories;
 * - persistence across a reopen, space returned, corrupt stored ACLs reported as -EUCLEAN;
 * - a crash at every persistence barrier of ACL operations (set, chmod, fold into the mode,
 *   mkdir with inheritance) recovers to the state before or after; on a full pool they fail
 *   with -ENOSPC and change nothing.
 */
#include "harness.h"
#include "harness_fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fs/fs.h"
#include "fs/fs_internal.h"
#include "meta/alloc.h"
#include "tx/tx.h"
#include "util/util.h"

#define MIB (1024u * 1024u)
#define U PMFUSE_ACL_UNDEFINED_ID
#define UO PMFUSE_ACL_USER_OBJ
#define UN PMFUSE_ACL_USER
#define GO PMFUSE_ACL_GROUP_OBJ
#define GN PMFUSE_ACL_GROUP
#define MK PMFUSE_ACL_MASK
#define OT PMFUSE_ACL_OTHER
#define ACCESS PMFUSE_XATTR_ACL_ACCESS
#define DEFAULT PMFUSE_XATTR_ACL_DEFAULT

static const struct pmfuse_cred root_cred = { .uid = 0, .gid = 0, .pid = 1, .umask = 0 };

/* ---- scaffolding ---------------------------------------------------------------------------- */

struct tctx {
	struct pmfuse_pool *pool;
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
};

static void t_open(struct tctx *t)
{
	assert_int_equal(pmfuse_fs_open(t->vol, NULL, &t->fs), 0);
	pmfuse_txm_set_verify(t->vol->txm, true);
}

static void t_new(struct tctx *t, size_t size)
{
	t->vol = th_fake_volume(size, 0);
	t->pool = t->vol->pool;
	t_open(t);
}

static void t_reopen(struct tctx *t)
{
	char msg[256] = "";

	pmfuse_txm_set_verify(t->vol->txm, false);
	pmfuse_fs_close(t->fs);
	pmfuse_volume_close(t->vol);
	assert_int_equal(pmfuse_volume_open(t->pool, 0, &t->vol, msg, sizeof(msg)), 0);
	t_open(t);
}

/* Opens the volume and fs of t->pool (a fresh fake pool, or one holding a crash image). */
static void t_reopen_pool(struct tctx *t)
{
	char msg[256] = "";

	assert_int_equal(pmfuse_volume_open(t->pool, 0, &t->vol, msg, sizeof(msg)), 0);
	t_open(t);
}

static void t_destroy(struct tctx *t)
{
	pmfuse_txm_set_verify(t->vol->txm, false);
	th_fsck_clean(t->fs);    /* fsck's ACL rules hold after every test */
	pmfuse_fs_close(t->fs);
	th_volume_destroy(t->vol);
}

static struct pmfuse_attr getattr(struct tctx *t, uint64_t ino)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_getattr(t->fs, ino, &a), 0);
	return a;
}

static uint32_t perms(struct tctx *t, uint64_t ino)
{
	return getattr(t, ino).mode & 07777;
}

/* Creates with cred (umask in it); returns the inode number. */
static uint64_t mk_as(struct tctx *t, uint64_t dir, const char *name, uint32_t mode,
		      const struct pmfuse_cred *cred)
{
	struct pmfuse_attr a;
	int rc = S_ISDIR(mode) ? pmfuse_fs_mkdir(t->fs, dir, name, mode & 07777, cred, &a)
			       : pmfuse_fs_mknod(t->fs, dir, name, mode, 0, cred, &a);

	assert_int_equal(rc, 0);
	pmfuse_fs_forget(t->fs, a.ino, 1);
	return a.ino;
}

static uint64_t mk(struct tctx *t, uint64_t dir, const char *name, uint32_t mode)
{
	return mk_as(t, dir, name, mode, &root_cred);
}

static int chmod_(struct tctx *t, uint64_t ino, uint32_t mode)
{
	struct pmfuse_setattr sa = { .mode = mode };
	struct pmfuse_attr a;

	return pmfuse_fs_setattr(t->fs, ino, &sa, PMFUSE_SET_MODE, &root_cred, &a);
}

/* An xattr value from entries {tag, perm, id}; returns its size. */
struct ent {
	uint16_t tag, perm;
	uint32_t id;
};

static size_t enc(uint8_t *buf, const struct ent *e, unsigned n)
{
	buf[0] = 2;
	buf[1] = buf[2] = buf[3] = 0;
	for (unsigned i = 0; i < n; i++) {
		uint8_t *p = buf + 4 + 8 * i;

		p[0] = (uint8_t)e[i].tag;
		p[1] = (uint8_t)(e[i].tag >> 8);
		p[2] = (uint8_t)e[i].perm;
		p[3] = (uint8_t)(e[i].perm >> 8);
		for (int b = 0; b < 4; b++)
			p[4 + b] = (uint8_t)(e[i].id >> (8 * b));
	}
	return 4 + 8 * (size_t)n;
}

#define ENC(buf, ...) enc(buf, (const struct ent[]){ __VA_ARGS__ }, \
			  sizeof((const struct ent[]){ __VA_ARGS__ }) / sizeof(struct ent))

static int set_acl(struct tctx *t, uint64_t ino, const char *name, int flags, const struct ent *e,
		   unsigned n)
{
	uint8_t buf[PMFUSE_ACL_XATTR_MAX + 64];

	return pmfuse_fs_setxattr(t->fs, ino, name, buf, enc(buf, e, n), flags);
}

#define SET(t, ino, name, ...) set_acl(t, ino, name, 0, (const struct ent[]){ __VA_ARGS__ }, \
				       sizeof((const struct ent[]){ __VA_ARGS__ }) / \
				       sizeof(struct ent))

/* The stored value of name equals the ACL given by entries (ids as stored: normalised). */
static void expect_acl(struct tctx *t, uint64_t ino, const char *name, const struct ent *e,
		       unsigned n)
{
	uint8_t want[PMFUSE_ACL_XATTR_MAX + 64], got[PMFUSE_ACL_XATTR_MAX + 64];
	size_t len = enc(want, e, n);
	ssize_t r = pmfuse_fs_getxattr(t->fs, ino, name, got, sizeof(got));

	if (r != (ssize_t)len || memcmp(got, want, len)) {
		fprintf(stderr, "%s of inode %llu: got %zd bytes:", name, (unsigned long long)ino, r);
		for (ssize_t i = 0; i < r; i++)
			fprintf(stderr, " %02x", got[i]);
		fprintf(stderr, "\n");
	}
	assert_int_equal(r, len);
	assert_memory_equal(got, want, len);
}

#define EXPECT(t, ino, name, ...) expect_acl(t, ino, name, (const struct ent[]){ __VA_ARGS__ }, \
					     sizeof((const struct ent[]){ __VA_ARGS__ }) / \
					     sizeof(struct ent))

static void expect_none(struct tctx *t, uint64_t ino, const char *name)
{
	uint8_t buf[64];

	assert_int_equal(pmfuse_fs_getxattr(t->fs, ino, name, buf, sizeof(buf)), -ENODATA);
}

/* ---- the xattr form and validation ---------------------------------------------------------- */

static int check_value(const uint8_t *buf, size_t len)
{
	static struct pmfuse_acl acl;
	int rc = pmfuse_acl_from_xattr(buf, len, &acl);

	return rc ? rc : pmfuse_acl_valid(&acl);
}

static int valid_of(const struct ent *e, unsigned n)
{
	uint8_t buf[PMFUSE_ACL_XATTR_MAX + 64];

	return check_value(buf, enc(buf, e, n));
}

#define VALID(...) valid_of((const struct ent[]){ __VA_ARGS__ }, \
			    sizeof((const struct ent[]){ __VA_ARGS__ }) / sizeof(struct ent))

static void test_format(void **state)
{
	static struct pmfuse_acl acl;
	uint8_t buf[PMFUSE_ACL_XATTR_MAX + 64], out[PMFUSE_ACL_XATTR_MAX + 64];
	size_t len;

	(void)state;
	/* sizes and version */
	assert_int_equal(pmfuse_acl_from_xattr(NULL, 0, &acl), 0);
	assert_int_equal(acl.count, 0);
	len = ENC(buf, { UO, 7, U }, { GO, 5, U }, { OT, 5, U });
	assert_int_equal(pmfuse_acl_from_xattr(buf, 4, &acl), 0);
	assert_int_equal(acl.count, 0);
	assert_int_equal(pmfuse_acl_from_xattr(buf, 3, &acl), -EINVAL);
	assert_int_equal(pmfuse_acl_from_xattr(buf, len - 1, &acl), -EINVAL);
	assert_int_equal(pmfuse_acl_from_xattr(buf, len + 4, &acl), -EINVAL);
	assert_int_equal(pmfuse_acl_from_xattr(buf, len, &acl), 0);
	assert_int_equal(acl.count, 3);
	assert_int_equal(acl.e[1].tag, GO);
	assert_int_equal(acl.e[1].perm, 5);
	buf[0] = 1;
	assert_int_equal(pmfuse_acl_from_xattr(buf, len, &acl), -EOPNOTSUPP);
	buf[0] = 2;
	buf[3] = 1;
	assert_int_equal(pmfuse_acl_from_xattr(buf, len, &acl), -EOPNOTSUPP);
	buf[3] = 0;
	/* the largest value the kernel passes: 511 entries (4092 bytes); 512 are E2BIG */
	{
		static struct ent e[PMFUSE_ACL_ENTRIES_MAX + 1];
		unsigned n = 0;

		e[n++] = (struct ent){ UO, 7, U };
		while (n < PMFUSE_ACL_ENTRIES_MAX - 3)
			e[n] = (struct ent){ UN, 4, 1000 + n }, n++;
		e[n++] = (struct ent){ GO, 5, U };
		e[n++] = (struct ent){ MK, 7, U };
		e[n++] = (struct ent){ OT, 0, U };
		assert_int_equal(n, PMFUSE_ACL_ENTRIES_MAX);
		assert_int_equal(enc(buf, e, n), PMFUSE_ACL_XATTR_MAX - 4);
		assert_int_equal(check_value(buf, enc(buf, e, n)), 0);
		memmove(e + 2, e + 1, (n - 1) * sizeof(*e));
		e[1] = (struct ent){ UN, 4, 999 };
		assert_int_equal(check_value(buf, enc(buf, e, n + 1)), -E2BIG);
	}

	/* validity: Linux's posix_acl_valid */
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { OT, 5, U }), 0);
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { MK, 1, U }, { OT, 5, U }), 0);
	assert_int_equal(VALID({ UO, 7, U }, { UN, 7, 5 }, { GO, 5, U }, { GN, 2, 9 },
			       { MK, 1, U }, { OT, 5, U }), 0);
	/* named entries out of order or repeated: accepted, as the kernel does */
	assert_int_equal(VALID({ UO, 7, U }, { UN, 7, 6 }, { UN, 7, 5 }, { UN, 1, 5 },
			       { GO, 5, U }, { MK, 1, U }, { OT, 5, U }), 0);
	/* ids of the other entries are ignored */
	assert_int_equal(VALID({ UO, 7, 3 }, { GO, 5, 0 }, { OT, 5, 12 }), 0);
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }), -EINVAL);               /* no other */
	assert_int_equal(VALID({ GO, 5, U }, { OT, 5, U }), -EINVAL);               /* no owner */
	assert_int_equal(VALID({ UO, 7, U }, { OT, 5, U }), -EINVAL);               /* no group */
	assert_int_equal(VALID({ UO, 7, U }, { UN, 7, 5 }, { GO, 5, U }, { OT, 5, U }),
			 -EINVAL);                                                   /* no mask */
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { GN, 5, 7 }, { OT, 5, U }),
			 -EINVAL);                                                   /* no mask */
	assert_int_equal(VALID({ UO, 7, U }, { UN, 7, U }, { GO, 5, U }, { MK, 7, U },
			       { OT, 5, U }), -EINVAL);                             /* uid -1 */
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { GN, 7, U }, { MK, 7, U },
			       { OT, 5, U }), -EINVAL);                             /* gid -1 */
	assert_int_equal(VALID({ UO, 8, U }, { GO, 5, U }, { OT, 5, U }), -EINVAL);   /* perm */
	assert_int_equal(VALID({ UO, 7, U }, { GO, 0x105, U }, { OT, 5, U }), -EINVAL);
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { OT, 5, U }, { OT, 5, U }), -EINVAL);
	assert_int_equal(VALID({ UO, 7, U }, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }), -EINVAL);
	assert_int_equal(VALID({ GO, 5, U }, { UO, 7, U }, { OT, 5, U }), -EINVAL);   /* order */
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { UN, 7, 5 }, { MK, 7, U },
			       { OT, 5, U }), -EINVAL);
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { OT, 5, U }, { MK, 7, U }), -EINVAL);
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { MK, 7, U }, { MK, 7, U },
			       { OT, 5, U }), -EINVAL);
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { 0x40, 7, U }, { OT, 5, U }),
			 -EINVAL);                                                   /* tag */
	assert_int_equal(VALID({ UO, 7, U }, { GO, 5, U }, { 0, 7, U }, { OT, 5, U }), -EINVAL);

	/* encoding normalises the ids of the unnamed entries */
	len = ENC(buf, { UO, 7, 3 }, { UN, 6, 77 }, { GO, 5, 0 }, { MK, 7, 1 }, { OT, 4, 12 });
	assert_int_equal(pmfuse_acl_from_xattr(buf, len, &acl), 0);
	assert_int_equal(pmfuse_acl_to_xattr(&acl, out), len);
	assert_int_equal(ENC(buf, { UO, 7, U }, { UN, 6, 77 }, { GO, 5, U }, { MK, 7, U },
			     { OT, 4, U }), len);
	assert_memory_equal(out, buf, len);
}

/* ---- mode arithmetic ------------------------------------------------------------------------ */

static uint32_t rwx(uint32_t mode)
{
	return mode & 0777;
}

/* A random valid ACL (named entries only with a mask, sometimes a mask without them). */
static void random_acl(struct th_rng *r, struct pmfuse_acl *acl)
{
	unsigned users = (unsigned)th_rng_below(r, 4), groups = (unsigned)th_rng_below(r, 4);
	bool mask = users || groups || th_rng_below(r, 3) == 0;
	unsigned n = 0;

	acl->e[n++] = (struct pmfuse_acl_entry){ UO, (uint16_t)th_rng_below(r, 8), U };
	for (unsigned i = 0; i < users; i++)
		acl->e[n++] = (struct pmfuse_acl_entry){ UN, (uint16_t)th_rng_below(r, 8),
							 1000 + i };
	acl->e[n++] = (struct pmfuse_acl_entry){ GO, (uint16_t)th_rng_below(r, 8), U };
	for (unsigned i = 0; i < groups; i++)
		acl->e[n++] = (struct pmfuse_acl_entry){ GN, (uint16_t)th_rng_below(r, 8),
							 2000 + i };
	if (mask)
		acl->e[n++] = (struct pmfuse_acl_entry){ MK, (uint16_t)th_rng_below(r, 8), U };
	acl->e[n++] = (struct pmfuse_acl_entry){ OT, (uint16_t)th_rng_below(r, 8), U };
	acl->count = n;
	assert_int_equal(pmfuse_acl_valid(acl), 0);
}

static uint16_t perm_of(const struct pmfuse_acl *acl, unsigned tag)
{
	for (unsigned i = 0; i < acl->count; i++)
		if (acl->e[i].tag == tag)
			return acl->e[i].perm;
	return 0xffff;
}

static void test_mode_math(void **state)
{
	static struct pmfuse_acl acl, before;
	struct th_rng r;
	uint32_t mode;
	uint64_t seed = th_seed();

	(void)state;
	/* worked examples (values checked against tmpfs on Linux 6.18) */
	acl.count = 3;
	acl.e[0] = (struct pmfuse_acl_entry){ UO, 6, U };
	acl.e[1] = (struct pmfuse_acl_entry){ GO, 0, U };
	acl.e[2] = (struct pmfuse_acl_entry){ OT, 4, U };
	mode = S_IFREG | 02755;
	assert_int_equal(pmfuse_acl_equiv_mode(&acl, &mode), 0);
	assert_int_equal(mode, S_IFREG | 02604);
	acl.count = 4;
	acl.e[3] = acl.e[2];
	acl.e[2] = (struct pmfuse_acl_entry){ MK, 5, U };
	assert_int_equal(pmfuse_acl_equiv_mode(&acl, &mode), 1);
	assert_int_equal(mode, S_IFREG | 02654);
	pmfuse_acl_chmod(&acl, 0751);
	assert_int_equal(perm_of(&acl, UO), 7);
	assert_int_equal(perm_of(&acl, GO), 0);          /* the mask takes the group bits */
	assert_int_equal(perm_of(&acl, MK), 5);
	assert_int_equal(perm_of(&acl, OT), 1);
	/* default u::rwx u:1000:rw- g::r-x m::rwx o::--- applied to open(0666): 0660 */
	acl.count = 5;
	acl.e[0] = (struct pmfuse_acl_entry){ UO, 7, U };
	acl.e[1] = (struct pmfuse_acl_entry){ UN, 6, 1000 };
	acl.e[2] = (struct pmfuse_acl_entry){ GO, 5, U };
	acl.e[3] = (struct pmfuse_acl_entry){ MK, 7, U };
	acl.e[4] = (struct pmfuse_acl_entry){ OT, 0, U };
	mode = S_IFREG | 0666;
	assert_int_equal(pmfuse_acl_create_masq(&acl, &mode), 1);
	assert_int_equal(mode, S_IFREG | 0660);
	assert_int_equal(perm_of(&acl, UO), 6);
	assert_int_equal(perm_of(&acl, UN), 6);          /* named entries are left alone */
	assert_int_equal(perm_of(&acl, GO), 5);
	assert_int_equal(perm_of(&acl, MK), 6);
	assert_int_equal(perm_of(&acl, OT), 0);
	/* minimal default u::rwx g::r-x o::--- on mkdir(0777) with setgid: 02750 */
	acl.count = 3;
	acl.e[0] = (struct pmfuse_acl_entry){ UO, 7, U };
	acl.e[1] = (struct pmfuse_acl_entry){ GO, 5, U };
	acl.e[2] = (struct pmfuse_acl_entry){ OT, 0, U };
	mode = S_IFDIR | 02777;
	assert_int_equal(pmfuse_acl_create_masq(&acl, &mode), 0);
	assert_int_equal(mode, S_IFDIR | 02750);

	/* properties on random ACLs and modes */
	th_rng_init(&r, seed);
	for (unsigned i = 0; i < th_scaled(20000); i++) {
		uint32_t m = S_IFREG | (uint32_t)th_rng_below(&r, 010000), m2, m3;
		int ne;

		random_acl(&r, &acl);
		before = acl;
		/* chmod, then the ACL says the new mode's bits */
		pmfuse_acl_chmod(&acl, m);
		m2 = S_IFREG | 07000;
		ne = pmfuse_acl_equiv_mode(&acl, &m2);
		assert_int_equal(rwx(m2), rwx(m));
		assert_int_equal(m2 & ~0777u, S_IFREG | 07000);
		assert_int_equal(ne, before.count > 3);
		for (unsigned k = 0; k < acl.count; k++)   /* named entries untouched */
			if (acl.e[k].tag == UN || acl.e[k].tag == GN)
				assert_memory_equal(&acl.e[k], &before.e[k], sizeof(acl.e[k]));
		/* create_masq never widens, and the result's ACL says the resulting mode */
		acl = before;
		m2 = m;
		ne = pmfuse_acl_create_masq(&acl, &m2);
		assert_int_equal(m2 & ~0777u, m & ~0777u);
		assert_int_equal(rwx(m2) & ~rwx(m), 0);
		assert_int_equal(ne, before.count > 3);
		m3 = 0;
		pmfuse_acl_equiv_mode(&acl, &m3);
		assert_int_equal(m3, rwx(m2));
		for (unsigned k = 0; k < acl.count; k++)
			assert_int_equal(acl.e[k].perm & ~before.e[k].perm, 0);
		assert_int_equal(pmfuse_acl_valid(&acl), 0);
	}
}

/* ---- setxattr / removexattr ----------------------------------------------------------------- */

static void test_set_access(void **state)
{
	uint8_t buf[256];
	struct pmfuse_attr a, b;
	struct tctx t;
	uint64_t f, d, l, p;
	size_t len;

	(void)state;
	t_new(&t, 32 * MIB);
	f = mk(&t, 1, "f", S_IFREG | 0600);
	d = mk(&t, 1, "d", S_IFDIR | 0755);
	p = mk(&t, 1, "p", S_IFIFO | 0644);
	assert_int_equal(pmfuse_fs_symlink(t.fs, 1, "l", "f", &root_cred, &a), 0);
	l = a.ino;
	pmfuse_fs_forget(t.fs, l, 1);

	/* a named user: stored, the mode's group bits become the mask */
	a = getattr(&t, f);
	nanosleep(&(struct timespec){ 0, 2000000 }, NULL);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 6, U }, { UN, 4, 1001 }, { GO, 0, U },
			     { MK, 4, U }, { OT, 0, U }), 0);
	b = getattr(&t, f);
	assert_int_equal(b.mode, S_IFREG | 0640);
	assert_true(b.ctime.tv_sec > a.ctime.tv_sec ||
		    (b.ctime.tv_sec == a.ctime.tv_sec && b.ctime.tv_nsec > a.ctime.tv_nsec));
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { UN, 4, 1001 }, { GO, 0, U }, { MK, 4, U },
	       { OT, 0, U });
	/* ids of unnamed entries are stored as -1 */
	assert_int_equal(SET(&t, f, ACCESS, { UO, 7, 5 }, { UN, 4, 1001 }, { GO, 0, 6 },
			     { MK, 6, 7 }, { OT, 1, 8 }), 0);
	assert_int_equal(perms(&t, f), 0761);
	EXPECT(&t, f, ACCESS, { UO, 7, U }, { UN, 4, 1001 }, { GO, 0, U }, { MK, 6, U },
	       { OT, 1, U });
	/* a mask alone is not equivalent to the mode: stored */
	assert_int_equal(SET(&t, f, ACCESS, { UO, 6, U }, { GO, 4, U }, { MK, 0, U },
			     { OT, 4, U }), 0);
	assert_int_equal(perms(&t, f), 0604);
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { GO, 4, U }, { MK, 0, U }, { OT, 4, U });
	/* a minimal ACL is the mode: the stored one goes */
	assert_int_equal(SET(&t, f, ACCESS, { UO, 7, U }, { GO, 5, U }, { OT, 1, U }), 0);
	assert_int_equal(perms(&t, f), 0751);
	expect_none(&t, f, ACCESS);
	assert_int_equal(pmfuse_fs_listxattr(t.fs, f, NULL, 0), 0);
	/* flags are ignored for ACLs, as by Linux */
	assert_int_equal(set_acl(&t, f, ACCESS, PMFUSE_XATTR_REPLACE, (const struct ent[]){
		{ UO, 6, U }, { GN, 6, 50 }, { GO, 4, U }, { MK, 6, U }, { OT, 4, U } }, 5),
		-EINVAL);                                /* (order: GN after GO) */
	assert_int_equal(set_acl(&t, f, ACCESS, PMFUSE_XATTR_REPLACE, (const struct ent[]){
		{ UO, 6, U }, { GO, 4, U }, { GN, 6, 50 }, { MK, 6, U }, { OT, 4, U } }, 5), 0);
	assert_int_equal(set_acl(&t, f, ACCESS, PMFUSE_XATTR_CREATE, (const struct ent[]){
		{ UO, 6, U }, { GO, 4, U }, { GN, 6, 50 }, { MK, 2, U }, { OT, 4, U } }, 5), 0);
	assert_int_equal(perms(&t, f), 0624);
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, ACCESS, buf, ENC(buf, { UO, 6, U },
		{ GO, 4, U }, { OT, 4, U }), 4), -EINVAL);      /* an unknown flag */

	/* invalid ACLs change nothing */
	a = getattr(&t, f);
	len = ENC(buf, { UO, 6, U }, { GO, 4, U }, { GN, 6, 50 }, { MK, 2, U }, { OT, 4, U });
	assert_int_equal(SET(&t, f, ACCESS, { UO, 7, U }, { UN, 7, 3 }, { GO, 7, U },
			     { OT, 7, U }), -EINVAL);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 7, U }, { GO, 7, U }), -EINVAL);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 017, U }, { GO, 7, U }, { OT, 7, U }), -EINVAL);
	memcpy(buf + 200, buf, 4);
	buf[200] = 3;
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, ACCESS, buf + 200, 4, 0), -EOPNOTSUPP);
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, ACCESS, buf, len - 3, 0), -EINVAL);
	b = getattr(&t, f);
	assert_int_equal(b.mode, a.mode);
	assert_memory_equal(&b.ctime, &a.ctime, sizeof(a.ctime));
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { GO, 4, U }, { GN, 6, 50 }, { MK, 2, U },
	       { OT, 4, U });

	/* an empty value or a bare header removes (mode stays); removing nothing succeeds */
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, ACCESS, buf, 4, 0), 0);
	expect_none(&t, f, ACCESS);
	assert_int_equal(perms(&t, f), 0624);
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, ACCESS, buf, 4, 0), 0);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 6, U }, { UN, 6, 1 }, { GO, 4, U },
			     { MK, 6, U }, { OT, 4, U }), 0);
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, ACCESS, NULL, 0, 0), 0);
	expect_none(&t, f, ACCESS);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 6, U }, { UN, 6, 1 }, { GO, 4, U },
			     { MK, 6, U }, { OT, 4, U }), 0);
	assert_int_equal(pmfuse_fs_removexattr(t.fs, f, ACCESS), 0);
	expect_none(&t, f, ACCESS);
	assert_int_equal(perms(&t, f), 0664);
	assert_int_equal(pmfuse_fs_removexattr(t.fs, f, ACCESS), 0);

	/* setgid: cleared when asked, with the access ACL only */
	assert_int_equal(chmod_(&t, f, 02775), 0);
	assert_int_equal(set_acl(&t, f, ACCESS, PMFUSE_XATTR_ACL_KILL_SGID,
				 (const struct ent[]){ { UO, 7, U }, { GO, 5, U }, { OT, 5, U } },
				 3), 0);
	assert_int_equal(perms(&t, f), 0755);
	assert_int_equal(chmod_(&t, f, 02775), 0);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }), 0);
	assert_int_equal(perms(&t, f), 02755);
	assert_int_equal(chmod_(&t, d, 02775), 0);
	assert_int_equal(set_acl(&t, d, DEFAULT, PMFUSE_XATTR_ACL_KILL_SGID,
				 (const struct ent[]){ { UO, 7, U }, { GO, 5, U }, { OT, 5, U } },
				 3), 0);
	assert_int_equal(perms(&t, d), 02775);
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, "user.x", "1", 1,
					    PMFUSE_XATTR_ACL_KILL_SGID), 0);
	assert_int_equal(perms(&t, f), 02755);

	/* default ACLs: directories only; stored even when minimal; no mode change */
	assert_int_equal(SET(&t, f, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }), -EACCES);
	assert_int_equal(SET(&t, p, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }), -EACCES);
	assert_int_equal(SET(&t, f, DEFAULT, { UO, 7, U }, { GO, 5, U }), -EACCES);
	assert_int_equal(SET(&t, d, DEFAULT, { UO, 7, U }, { GO, 5, U }), -EINVAL);
	assert_int_equal(pmfuse_fs_removexattr(t.fs, f, DEFAULT), 0);
	assert_int_equal(pmfuse_fs_setxattr(t.fs, f, DEFAULT, buf, 4, 0), 0);
	expect_none(&t, f, DEFAULT);
	EXPECT(&t, d, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 5, U });
	assert_int_equal(SET(&t, d, DEFAULT, { UO, 7, U }, { UN, 7, 9 }, { GO, 0, U },
			     { MK, 1, U }, { OT, 0, U }), 0);
	assert_int_equal(perms(&t, d), 02775);
	EXPECT(&t, d, DEFAULT, { UO, 7, U }, { UN, 7, 9 }, { GO, 0, U }, { MK, 1, U },
	       { OT, 0, U });
	assert_int_equal(pmfuse_fs_removexattr(t.fs, d, DEFAULT), 0);
	expect_none(&t, d, DEFAULT);
	assert_int_equal(perms(&t, d), 02775);

	/* special files take access ACLs; symlinks none */
	assert_int_equal(SET(&t, p, ACCESS, { UO, 6, U }, { UN, 6, 1000 }, { GO, 4, U },
			     { MK, 6, U }, { OT, 4, U }), 0);
	assert_int_equal(perms(&t, p), 0664);
	assert_int_equal(SET(&t, l, ACCESS, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }),
			 -EOPNOTSUPP);
	assert_int_equal(pmfuse_fs_getxattr(t.fs, l, ACCESS, buf, sizeof(buf)), -EOPNOTSUPP);
	assert_int_equal(pmfuse_fs_removexattr(t.fs, l, DEFAULT), -EOPNOTSUPP);

	/* persistence */
	assert_int_equal(SET(&t, f, ACCESS, { UO, 6, U }, { UN, 4, 1001 }, { GO, 0, U },
			     { MK, 4, U }, { OT, 0, U }), 0);
	t_reopen(&t);
	assert_int_equal(perms(&t, f), 02640);
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { UN, 4, 1001 }, { GO, 0, U }, { MK, 4, U },
	       { OT, 0, U });
	EXPECT(&t, p, ACCESS, { UO, 6, U }, { UN, 6, 1000 }, { GO, 4, U }, { MK, 6, U },
	       { OT, 4, U });
	assert_int_equal(pmfuse_alloc_check(t.vol->alloc), 0);
	t_destroy(&t);
}

/* ---- chmod ---------------------------------------------------------------------------------- */

static void test_chmod(void **state)
{
	static struct ent big[200];
	struct pmfuse_setattr sa;
	struct pmfuse_attr a;
	struct tctx t;
	uint64_t f, free0;
	unsigned n = 0;

	(void)state;
	t_new(&t, 32 * MIB);
	free0 = pmfuse_alloc_free_blocks(t.vol->alloc);
	f = mk(&t, 1, "f", S_IFREG | 0644);
	assert_int_equal(SET(&t, f, ACCESS, { UO, 6, U }, { UN, 7, 1001 }, { GO, 4, U },
			     { GN, 2, 77 }, { MK, 6, U }, { OT, 4, U }), 0);
	assert_int_equal(perms(&t, f), 0664);
	/* owner, mask and other follow; the owning group's entry and named ones stay */
	assert_int_equal(chmod_(&t, f, 04751), 0);
	assert_int_equal(perms(&t, f), 04751);
	EXPECT(&t, f, ACCESS, { UO, 7, U }, { UN, 7, 1001 }, { GO, 4, U }, { GN, 2, 77 },
	       { MK, 5, U }, { OT, 1, U });
	assert_int_equal(chmod_(&t, f, 0600), 0);
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { UN, 7, 1001 }, { GO, 4, U }, { GN, 2, 77 },
	       { MK, 0, U }, { OT, 0, U });
	/* the same mode again: nothing to rewrite */
	assert_int_equal(chmod_(&t, f, 0600), 0);
	/* chown, truncate and times leave the ACL alone; KILL_SUID too */
	memset(&sa, 0, sizeof(sa));
	sa.uid = 5;
	sa.gid = 6;
	sa.size = 100;
	assert_int_equal(pmfuse_fs_setattr(t.fs, f, &sa, PMFUSE_SET_UID | PMFUSE_SET_GID |
					   PMFUSE_SET_SIZE | PMFUSE_SET_MTIME_NOW |
					   PMFUSE_SET_KILL_SUID, &root_cred, &a), 0);
	assert_int_equal(a.mode, S_IFREG | 0600);
	assert_int_equal(a.size, 100);
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { UN, 7, 1001 }, { GO, 4, U }, { GN, 2, 77 },
	       { MK, 0, U }, { OT, 0, U });
	/* chmod with a size change in the same call */
	sa.mode = 0755;
	sa.size = 0;
	assert_int_equal(pmfuse_fs_setattr(t.fs, f, &sa, PMFUSE_SET_MODE | PMFUSE_SET_SIZE,
					   &root_cred, &a), 0);
	assert_int_equal(a.mode, S_IFREG | 0755);
	EXPECT(&t, f, ACCESS, { UO, 7, U }, { UN, 7, 1001 }, { GO, 4, U }, { GN, 2, 77 },
	       { MK, 5, U }, { OT, 5, U });
	/* a directory's default ACL is not touched by chmod */
	uint64_t d = mk(&t, 1, "d", S_IFDIR | 0755);
	assert_int_equal(SET(&t, d, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }), 0);
	assert_int_equal(chmod_(&t, d, 0700), 0);
	EXPECT(&t, d, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 5, U });

	/* a value too long for the record (out-of-line blocks) */
	big[n++] = (struct ent){ UO, 6, U };
	while (n < 150)
		big[n] = (struct ent){ UN, (uint16_t)(n % 8), 10000 + n }, n++;
	big[n++] = (struct ent){ GO, 4, U };
	big[n++] = (struct ent){ MK, 7, U };
	big[n++] = (struct ent){ OT, 1, U };
	assert_true(4 + 8 * n > PMFUSE_XATTR_INLINE);
	assert_int_equal(set_acl(&t, f, ACCESS, 0, big, n), 0);
	assert_int_equal(perms(&t, f), 0671);
	assert_int_equal(chmod_(&t, f, 0640), 0);
	big[0].perm = 6;
	big[n - 2].perm = 4;
	big[n - 1].perm = 0;
	expect_acl(&t, f, ACCESS, big, n);
	t_reopen(&t);
	expect_acl(&t, f, ACCESS, big, n);
	assert_int_equal(perms(&t, f), 0640);
	assert_int_equal(pmfuse_alloc_check(t.vol->alloc), 0);

	/* everything removed: every block back */
	assert_int_equal(pmfuse_fs_unlink(t.fs, 1, "f"), 0);
	assert_int_equal(pmfuse_fs_rmdir(t.fs, 1, "d"), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(t.vol->alloc), free0);
	t_destroy(&t);
}

/* ---- inheritance ---------------------------------------------------------------------------- */

static void test_inherit(void **state)
{
	struct pmfuse_cred user = { .uid = 1000, .gid = 1000, .pid = 2, .umask = 077 };
	struct pmfuse_cred u022 = { .uid = 1000, .gid = 1000, .pid = 2, .umask = 022 };
	struct pmfuse_attr a;
	struct tctx t;
	uint64_t d, f, s, q, x, m, plain;

	(void)state;
	t_new(&t, 32 * MIB);

	/* no default ACL: the umask applies (to mknod and mkdir, never to symlinks) */
	plain = mk(&t, 1, "plain", S_IFDIR | 0777);
	assert_int_equal(perms(&t, plain), 0777);
	f = mk_as(&t, plain, "f", S_IFREG | 0666, &u022);
	assert_int_equal(perms(&t, f), 0644);
	f = mk_as(&t, plain, "g", S_IFREG | 04777, &user);
	assert_int_equal(perms(&t, f), 04700);
	s = mk_as(&t, plain, "s", S_IFDIR | 01777, &u022);
	assert_int_equal(perms(&t, s), 01755);
	q = mk_as(&t, plain, "fifo", S_IFIFO | 0666, &user);
	assert_int_equal(perms(&t, q), 0600);
	assert_int_equal(pmfuse_fs_symlink(t.fs, plain, "l", "x", &user, &a), 0);
	assert_int_equal(a.mode, S_IFLNK | 0777);
	pmfuse_fs_forget(t.fs, a.ino, 1);
	expect_none(&t, f, ACCESS);
	expect_none(&t, s, DEFAULT);
	/* other xattrs on the parent are no default ACL */
	assert_int_equal(pmfuse_fs_setxattr(t.fs, plain, "user.x", "1", 1, 0), 0);
	f = mk_as(&t, plain, "h", S_IFREG | 0666, &u022);
	assert_int_equal(perms(&t, f), 0644);

	/* a default ACL with a named user: the umask is ignored */
	d = mk(&t, 1, "d", S_IFDIR | 0755);
	assert_int_equal(SET(&t, d, DEFAULT, { UO, 7, U }, { UN, 6, 1000 }, { GO, 5, U },
			     { MK, 7, U }, { OT, 0, U }), 0);
	f = mk_as(&t, d, "new", S_IFREG | 0666, &user);
	assert_int_equal(perms(&t, f), 0660);
	EXPECT(&t, f, ACCESS, { UO, 6, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 6, U },
	       { OT, 0, U });
	expect_none(&t, f, DEFAULT);
	s = mk_as(&t, d, "sub", S_IFDIR | 0777, &user);
	assert_int_equal(perms(&t, s), 0770);
	EXPECT(&t, s, ACCESS, { UO, 7, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 7, U },
	       { OT, 0, U });
	EXPECT(&t, s, DEFAULT, { UO, 7, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 7, U },
	       { OT, 0, U });
	q = mk_as(&t, d, "fifo", S_IFIFO | 0600, &user);
	assert_int_equal(perms(&t, q), 0600);
	EXPECT(&t, q, ACCESS, { UO, 6, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 0, U },
	       { OT, 0, U });
	assert_int_equal(pmfuse_fs_symlink(t.fs, d, "l", "x", &user, &a), 0);
	assert_int_equal(a.mode, S_IFLNK | 0777);
	pmfuse_fs_forget(t.fs, a.ino, 1);
	assert_int_equal(pmfuse_fs_listxattr(t.fs, a.ino, NULL, 0), 0);
	/* and on down: the subdirectory passes it on */
	x = mk_as(&t, s, "deeper", S_IFREG | 0640, &user);
	assert_int_equal(perms(&t, x), 0640);
	EXPECT(&t, x, ACCESS, { UO, 6, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 4, U },
	       { OT, 0, U });

	/* a minimal default ACL: the mode is limited by it, no access ACL is stored */
	m = mk(&t, 1, "m", S_IFDIR | 0777);
	assert_int_equal(SET(&t, m, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 0, U }), 0);
	f = mk_as(&t, m, "f", S_IFREG | 0666, &user);
	assert_int_equal(perms(&t, f), 0640);
	expect_none(&t, f, ACCESS);
	s = mk_as(&t, m, "sub", S_IFDIR | 0777, &user);
	assert_int_equal(perms(&t, s), 0750);
	expect_none(&t, s, ACCESS);
	EXPECT(&t, s, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 0, U });

	/* setgid parent: group and setgid pass on as before, the ACL as well */
	assert_int_equal(chmod_(&t, d, 02775), 0);
	s = mk_as(&t, d, "sgid", S_IFDIR | 0777, &user);
	a = getattr(&t, s);
	assert_int_equal(a.mode, S_IFDIR | 02770);
	assert_int_equal(a.gid, 0);
	EXPECT(&t, s, DEFAULT, { UO, 7, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 7, U },
	       { OT, 0, U });

	/* removing the default ACL brings the umask back */
	assert_int_equal(pmfuse_fs_removexattr(t.fs, d, DEFAULT), 0);
	f = mk_as(&t, d, "after", S_IFREG | 0666, &user);
	assert_int_equal(perms(&t, f), 0600);
	expect_none(&t, f, ACCESS);

	t_reopen(&t);
	assert_int_equal(pmfuse_fs_lookup(t.fs, d, "new", &a), 0);
	pmfuse_fs_forget(t.fs, a.ino, 1);
	EXPECT(&t, a.ino, ACCESS, { UO, 6, U }, { UN, 6, 1000 }, { GO, 5, U }, { MK, 6, U },
	       { OT, 0, U });
	assert_int_equal(pmfuse_alloc_check(t.vol->alloc), 0);
	t_destroy(&t);
}

/* A large default ACL (out-of-line value) passed on to many files, then everything removed. */
static void test_inherit_large(void **state)
{
	static struct ent e[300];
	struct pmfuse_cred user = { .uid = 1000, .gid = 1000, .pid = 2, .umask = 0 };
	struct tctx t;
	uint64_t d, free0;
	unsigned n = 0;
	char name[32];

	(void)state;
	t_new(&t, 32 * MIB);
	free0 = pmfuse_alloc_free_blocks(t.vol->alloc);
	e[n++] = (struct ent){ UO, 7, U };
	while (n < 250)
		e[n] = (struct ent){ UN, (uint16_t)(n % 8), 5000 + n }, n++;
	e[n++] = (struct ent){ GO, 5, U };
	e[n++] = (struct ent){ GN, 3, 7 };
	e[n++] = (struct ent){ MK, 7, U };
	e[n++] = (struct ent){ OT, 5, U };
	d = mk(&t, 1, "d", S_IFDIR | 0755);
	assert_int_equal(set_acl(&t, d, DEFAULT, 0, e, n), 0);
	for (int i = 0; i < 40; i++) {
		uint64_t ino;

		snprintf(name, sizeof(name), "n%d", i);
		ino = mk_as(&t, d, name, (i % 3 ? S_IFREG | 0644 : S_IFDIR | 0755), &user);
		assert_int_equal(perms(&t, ino), i % 3 ? 0644 : 0755);
		if (i % 3 == 0)
			expect_acl(&t, ino, DEFAULT, e, n);
	}
	t_reopen(&t);
	assert_int_equal(pmfuse_alloc_check(t.vol->alloc), 0);
	for (int i = 0; i < 40; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		assert_int_equal(i % 3 ? pmfuse_fs_unlink(t.fs, d, name)
				       : pmfuse_fs_rmdir(t.fs, d, name), 0);
	}
	assert_int_equal(pmfuse_fs_rmdir(t.fs, 1, "d"), 0);
	assert_int_equal(pmfuse_alloc_free_blocks(t.vol->alloc), free0);
	t_destroy(&t);
}

/* ---- corruption ----------------------------------------------------------------------------- */

/* Stores raw bytes under name behind acl.c's back (what a damaged pool could hold). */
static void poke(struct tctx *t, uint64_t ino, const char *name, const void *v, size_t len)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;

	assert_int_equal(pmfuse_inode_locate(t->fs, ino, &ip, &leaf), 0);
	tx = pmfuse_tx_begin(t->fs->txm);
	assert_int_equal(pmfuse_xattr_write(t->fs, tx, ip, leaf, name, v, len), 0);
	pmfuse_tx_commit(tx);
}

static void test_corrupt(void **state)
{
	uint8_t buf[64];
	struct pmfuse_attr a;
	struct tctx t;
	uint64_t f, d;
	size_t len;

	(void)state;
	t_new(&t, 16 * MIB);
	f = mk(&t, 1, "f", S_IFREG | 0644);
	d = mk(&t, 1, "d", S_IFDIR | 0755);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	len = ENC(buf, { UO, 7, U }, { UN, 7, 3 }, { GO, 7, U }, { OT, 7, U });   /* no mask */
	poke(&t, f, ACCESS, buf, len);
	poke(&t, d, DEFAULT, buf, len);
	assert_int_equal(chmod_(&t, f, 0600), -EUCLEAN);
	assert_int_equal(perms(&t, f), 0644);                                     /* unchanged */
	assert_int_equal(pmfuse_fs_mknod(t.fs, d, "x", S_IFREG | 0644, 0, &root_cred, &a),
			 -EUCLEAN);
	assert_int_equal(pmfuse_fs_lookup(t.fs, d, "x", &a), -ENOENT);
	poke(&t, d, DEFAULT, buf, 4);                                             /* header only */
	assert_int_equal(pmfuse_fs_mkdir(t.fs, d, "y", 0755, &root_cred, &a), -EUCLEAN);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	/* setting a good ACL repairs it */
	assert_int_equal(SET(&t, d, DEFAULT, { UO, 7, U }, { GO, 5, U }, { OT, 5, U }), 0);
	assert_int_equal(pmfuse_fs_mkdir(t.fs, d, "y", 0777, &root_cred, &a), 0);
	pmfuse_fs_forget(t.fs, a.ino, 1);
	assert_int_equal(a.mode, S_IFDIR | 0755);
	/* fsck names what is left, f's access ACL; without it the filesystem is clean */
	static struct th_fsck ck;
	th_fsck_run(t.fs, &ck);
	assert_int_equal(ck.problems, 1);
	assert_true(th_fsck_has(&ck, "system.posix_acl_access is not a valid ACL"));
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	assert_int_equal(pmfuse_fs_removexattr(t.fs, f, ACCESS), 0);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	t_destroy(&t);
}

/* ---- crashes -------------------------------------------------------------------------------- */

/* Every inode's mode, link count, size and xattrs (names, sizes, value crcs), as one string. */
static char *snapshot(struct tctx *t)
{
	static uint8_t val[PMFUSE_XATTR_VALUE_MAX];
	struct pmfuse_btree_cursor cur;
	size_t cap = 1 << 16, n = 0;
	char *s = malloc(cap), names[4096];

	assert_non_null(s);
	assert_int_equal(pmfuse_btree_first(&cur, &t->fs->inodes), 0);
	do {
		uint64_t ino = pmfuse_le64(((const struct pmfuse_inode *)
					    pmfuse_btree_cursor_rec(&cur))->ino);
		struct pmfuse_attr a = getattr(t, ino);
		ssize_t nl = pmfuse_fs_listxattr(t->fs, ino, names, sizeof(names));

		assert_true(nl >= 0);
		if (n + 4096 > cap) {
			s = realloc(s, cap *= 2);
			assert_non_null(s);
		}
		n += (size_t)snprintf(s + n, cap - n, "%llu %o %u %llu|", (unsigned long long)ino,
				      a.mode, a.nlink, (unsigned long long)a.size);
		for (ssize_t off = 0; off < nl; off += (ssize_t)strlen(names + off) + 1) {
			ssize_t vl = pmfuse_fs_getxattr(t->fs, ino, names + off, val, sizeof(val));

			assert_true(vl >= 0);
			if (n + 4096 > cap) {
				s = realloc(s, cap *= 2);
				assert_non_null(s);
			}
			n += (size_t)snprintf(s + n, cap - n, "%s:%zd:%08x|", names + off, vl,
					      pmfuse_crc32c(0, val, (size_t)vl));
		}
	} while (pmfuse_btree_next(&cur) == 0);
	return s;
}

struct crash_ctl {
	uint64_t target;
	void *image;
	bool taken;
	int keep;                 /* 0 none, 1 all, 2 random */
	struct th_rng rng;
};

static bool keep_unit(void *arg, size_t unit)
{
	struct crash_ctl *c = arg;

	(void)unit;
	return c->keep == 1 || (c->keep == 2 && (th_rng_next(&c->rng) & 1));
}

static void crash_hook(void *arg, struct pmfuse_pool *pool, uint64_t barrier)
{
	struct crash_ctl *c = arg;

	if (barrier != c->target)
		return;
	pmfuse_pool_fake_crash_image(pool, c->image, keep_unit, c);
	c->taken = true;
}

static struct ent big_acl[120];
static unsigned big_n;

static uint64_t ino_of(struct tctx *t, uint64_t dir, const char *name)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_lookup(t->fs, dir, name, &a), 0);
	pmfuse_fs_forget(t->fs, a.ino, 1);
	return a.ino;
}

static void cop_set_big(struct tctx *t)
{
	assert_int_equal(set_acl(t, ino_of(t, 1, "f"), ACCESS, PMFUSE_XATTR_ACL_KILL_SGID, big_acl,
				 big_n), 0);
}

static void cop_chmod(struct tctx *t)
{
	assert_int_equal(chmod_(t, ino_of(t, 1, "g"), 0701), 0);
}

static void cop_minimal(struct tctx *t)
{
	assert_int_equal(SET(t, ino_of(t, 1, "g"), ACCESS, { UO, 7, U }, { GO, 0, U },
			     { OT, 0, U }), 0);
}

static void cop_mkdir_inherit(struct tctx *t)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_mkdir(t->fs, ino_of(t, 1, "d"), "new", 0777, &root_cred, &a),
			 0);
	pmfuse_fs_forget(t->fs, a.ino, 1);
}

/* A 103-entry ACL (828 bytes: out of line) in big_acl. */
static void crash_setup_acl(void)
{
	big_n = 0;
	big_acl[big_n++] = (struct ent){ UO, 6, U };
	while (big_n < 100)
		big_acl[big_n] = (struct ent){ UN, 4, 3000 + big_n }, big_n++;
	big_acl[big_n++] = (struct ent){ GO, 4, U };
	big_acl[big_n++] = (struct ent){ MK, 4, U };
	big_acl[big_n++] = (struct ent){ OT, 0, U };
}

static void crash_setup(struct tctx *t)
{
	uint64_t d, g;

	crash_setup_acl();
	mk(t, 1, "f", S_IFREG | 02775);
	g = mk(t, 1, "g", S_IFREG | 0644);
	assert_int_equal(set_acl(t, g, ACCESS, 0, big_acl, big_n), 0);
	d = mk(t, 1, "d", S_IFDIR | 0755);
	assert_int_equal(set_acl(t, d, DEFAULT, 0, big_acl, big_n), 0);
}

/* A crash at every barrier of each ACL operation (keeping none, all or some of the stores of
 * the last epoch) recovers to the state before or after, with every block accounted for. */
static void test_crash(void **state)
{
	static const struct { const char *name; void (*op)(struct tctx *t); } ops[] = {
		{ "set a large access ACL", cop_set_big },
		{ "chmod with a large ACL", cop_chmod },
		{ "fold an ACL into the mode", cop_minimal },
		{ "mkdir inheriting large ACLs", cop_mkdir_inherit },
	};
	const size_t size = 4 * MIB;
	struct crash_ctl c;
	struct tctx t;
	void *base = malloc(size);
	unsigned images = 0;

	(void)state;
	c.image = malloc(size);
	assert_non_null(base);
	assert_non_null(c.image);
	th_rng_init(&c.rng, th_seed() ^ 0xac1);
	t_new(&t, size);
	crash_setup(&t);
	pmfuse_txm_set_verify(t.vol->txm, false);
	pmfuse_fs_close(t.fs);
	pmfuse_volume_close(t.vol);
	memcpy(base, pmfuse_pool_fake_media(t.pool), size);
	pmfuse_pool_close(t.pool);

	pmfuse_log_set_target(PMFUSE_LOG_QUIET);   /* every recovery says so */
	for (size_t o = 0; o < PMFUSE_ARRAY_SIZE(ops); o++) {
		struct pmfuse_pool *pool;
		uint64_t start, end;
		char *s0, *s1, *sc;

		assert_int_equal(pmfuse_pool_fake_new(size, base, &pool), 0);
		t.pool = pool;
		t_reopen_pool(&t);
		s0 = snapshot(&t);
		start = pmfuse_pool_barriers(pool);
		ops[o].op(&t);
		end = pmfuse_pool_barriers(pool);
		s1 = snapshot(&t);
		assert_string_not_equal(s0, s1);
		t_destroy(&t);

		for (uint64_t k = 1; k <= end - start; k++) {
			for (c.keep = 0; c.keep < 3; c.keep++) {
				struct pmfuse_pool_fake_hook hook = { crash_hook, &c };
				struct pmfuse_pool *cp;

				assert_int_equal(pmfuse_pool_fake_new(size, base, &pool), 0);
				t.pool = pool;
				t_reopen_pool(&t);
				c.target = pmfuse_pool_barriers(pool) + k;
				c.taken = false;
				pmfuse_pool_fake_set_hook(pool, &hook);
				ops[o].op(&t);
				pmfuse_pool_fake_set_hook(pool, NULL);
				assert_true(c.taken);
				t_destroy(&t);

				assert_int_equal(pmfuse_pool_fake_new(size, c.image, &cp), 0);
				t.pool = cp;
				t_reopen_pool(&t);
				sc = snapshot(&t);
				if (strcmp(sc, s0) && strcmp(sc, s1)) {
					fprintf(stderr, "%s, barrier %llu of %llu, keep %d: neither "
						"before nor after\n%s\n", ops[o].name,
						(unsigned long long)k,
						(unsigned long long)(end - start), c.keep, sc);
					fail();
				}
				assert_int_equal(pmfuse_alloc_check(t.vol->alloc), 0);
				free(sc);
				t_destroy(&t);
				images++;
			}
		}
		free(s0);
		free(s1);
	}
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	printf("# %u crash images recovered to the state before or after\n", images);
	free(base);
	free(c.image);
}

/* A full pool: ACL operations that need a block fail with -ENOSPC and change nothing. */
static void test_enospc(void **state)
{
	static uint8_t fill[PMFUSE_XATTR_VALUE_MAX];
	struct pmfuse_attr a;
	struct tctx t;
	uint64_t f, d, g, free0;
	unsigned filled = 0;
	char name[32], *s0, *s1;
	int rc;

	(void)state;
	crash_setup_acl();
	t_new(&t, 4 * MIB);
	f = mk(&t, 1, "f", S_IFREG | 0644);
	d = mk(&t, 1, "d", S_IFDIR | 0755);
	assert_int_equal(set_acl(&t, d, DEFAULT, 0, big_acl, big_n), 0);
	g = mk(&t, 1, "g", S_IFREG | 0644);
	memset(fill, 'f', sizeof(fill));
	for (size_t size = sizeof(fill); size >= 1; size /= 2) {
		do {
			snprintf(name, sizeof(name), "user.fill%u", filled++);
			rc = pmfuse_fs_setxattr(t.fs, g, name, fill, size, 0);
		} while (rc == 0);
		assert_int_equal(rc, -ENOSPC);
	}
	s0 = snapshot(&t);
	free0 = pmfuse_alloc_free_blocks(t.vol->alloc);
	assert_int_equal(set_acl(&t, f, ACCESS, 0, big_acl, big_n), -ENOSPC);
	assert_int_equal(pmfuse_fs_mkdir(t.fs, d, "new", 0777, &root_cred, &a), -ENOSPC);
	assert_int_equal(pmfuse_fs_mknod(t.fs, d, "file", S_IFREG | 0666, 0, &root_cred, &a),
			 -ENOSPC);
	s1 = snapshot(&t);
	assert_string_equal(s0, s1);
	assert_int_equal(pmfuse_alloc_free_blocks(t.vol->alloc), free0);
	assert_int_equal(pmfuse_alloc_check(t.vol->alloc), 0);
	free(s0);
	free(s1);
	/* room again: both work */
	for (unsigned i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "user.fill%u", i);
		assert_int_equal(pmfuse_fs_removexattr(t.fs, g, name), 0);
	}
	assert_int_equal(set_acl(&t, f, ACCESS, 0, big_acl, big_n), 0);
	assert_int_equal(pmfuse_fs_mkdir(t.fs, d, "new", 0777, &root_cred, &a), 0);
	pmfuse_fs_forget(t.fs, a.ino, 1);
	expect_acl(&t, a.ino, DEFAULT, big_acl, big_n);
	t_destroy(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_mode_math),
		cmocka_unit_test(test_set_access),
		cmocka_unit_test(test_chmod),
		cmocka_unit_test(test_inherit),
		cmocka_unit_test(test_inherit_large),
		cmocka_unit_test(test_corrupt),
		cmocka_unit_test(test_crash),
		cmocka_unit_test(test_enospc),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
