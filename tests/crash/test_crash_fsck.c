/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * fsck repair (fs/repair.h) on fake media: a populated filesystem (directories, files with
 * data, a hard link, reflinked clones, xattrs with a value block, enough files that the inode
 * table and the root directory have several nodes) is damaged, one kind of damage per case:
 * a metadata block of each kind has bytes flipped, is zeroed, or is swapped with another (the
 * primary superblock, the state block, the log header, a bitmap block, inode table leaves, the
 * root directory's nodes in both its trees (long and short names), extent maps, xattrs, the
 * refcount tree), or a record is changed and resealed (a link count, a directory size, an entry's target, a block count, a leaked and a lost bitmap bit, an
 * orphan naming nothing; an inline extent map with a bad record; a data block claimed by two
 * files without a refcount record, and one a file maps that is also a tree node). For each case:
 *   1. the checks of fs/check.h report the damage;
 *   2. a repair (as fsck -y: volume opened with PMFUSE_VOL_REPAIR, fs with opts.repair, the
 *      pool's memo on since step 1; every transaction verified to change only what it declared,
 *      in debug builds) leaves a filesystem the checks find clean, also a check without the
 *      memo, that mounts, and where every file the damage did not touch reads back its bytes,
 *      by inode number;
 *   3. the repair is run again from the damaged image with a hook at every persistence barrier
 *      (every STRIDE-th under PMFUSE_TEST_SCALE): the crash images there (none of the unpersisted
 *      stores kept, and all of them) must open as a volume (the log rolled back) and a further
 *      repair must leave them clean, every untouched file intact.
 * PMFUSE_SEED replays; PMFUSE_TEST_SCALE shortens.
 */
#include "harness.h"
#include "harness_fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/fs_internal.h"
#include "fs/repair.h"
#include "meta/refcount.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))
#define POOL_SIZE (8u << 20)
#define LOG_BLOCKS 32
#define NFILES 90
#define MAXDATA (6 * 4096)

struct file {
	uint64_t ino;
	size_t len;
	uint8_t data[MAXDATA];
};

static struct file files[NFILES + 4];
static unsigned nfiles;
static uint8_t *pristine, *img;
static size_t pool_size;
static uint32_t bs;

/* Blocks found while mounted. */
static uint64_t inode_leaf[2], root_dir_node[2], root_sdir_node[2], map_node[2], map_ino[2],
	xattr_node, xattr_ino, refcount_node, bitmap_blk, log_blk, hl_ino, big_ino;

static void quiet(void *arg, const char *msg)
{
	(void)arg;
	if (getenv("PMFUSE_TEST_VERBOSE"))
		fprintf(stderr, "#   %s\n", msg);
}

/* ---- the populated pool ------------------------------------------------------------------- */

static uint64_t first_leaf(struct pmfuse_fs *fs, const struct pmfuse_btree *bt, bool last)
{
	struct pmfuse_btree_cursor cur;

	assert_int_equal(last ? pmfuse_btree_last(&cur, bt) : pmfuse_btree_first(&cur, bt), 0);
	(void)fs;
	return cur.path[0].blk;
}

static void populate(struct th_env *e, struct th_rng *r)
{
	struct pmfuse_fs *fs = e->fs;
	struct pmfuse_attr a, d;
	char name[80];
	static uint8_t big[64 * 4096];

	nfiles = 0;
	assert_int_equal(pmfuse_fs_mkdir(fs, PMFUSE_ROOT_INO, "dir", S_IFDIR | 0755, &th_cred_user,
					 &d), 0);
	for (unsigned i = 0; i < NFILES; i++) {
		struct file *f = &files[nfiles++];

		/* every other name longer than PMFUSE_SHORT_NAME_MAX: both trees of the root */
		snprintf(name, sizeof(name), i % 2 ? "file-%u" :
			 "file-%u-with-a-name-that-is-too-long-for-the-short-tree", i);
		assert_int_equal(pmfuse_fs_mknod(fs, i % 3 ? PMFUSE_ROOT_INO : d.ino, name,
						 S_IFREG | 0644, 0, &th_cred_user, &a), 0);
		f->ino = a.ino;
		f->len = (size_t)th_rng_below(r, MAXDATA);
		th_fill_random(r, f->data, f->len);
		assert_int_equal(pmfuse_fs_write(fs, f->ino, f->data, f->len, 0, false, &th_cred_user),
				 (ssize_t)f->len);
	}
	/* file 5 in three extents with holes between: a map tree (small files keep at most two
	 * extents inline, in the inode), whose leaf the damage cases need */
	{
		struct file *f = &files[5];

		assert_int_equal(pmfuse_fs_setattr(fs, f->ino, &(struct pmfuse_setattr){ .size = 0 },
						   PMFUSE_SET_SIZE, &th_cred_user, &a), 0);
		f->len = MAXDATA;
		memset(f->data, 0, MAXDATA);
		for (unsigned b = 0; b < MAXDATA / 4096; b += 2) {
			th_fill_random(r, f->data + b * 4096, 4096);
			assert_int_equal(pmfuse_fs_write(fs, f->ino, f->data + b * 4096, 4096,
							 b * 4096ull, false, &th_cred_user), 4096);
		}
		assert_int_equal(pmfuse_fs_setattr(fs, f->ino, &(struct pmfuse_setattr){
						   .size = MAXDATA }, PMFUSE_SET_SIZE,
						   &th_cred_user, &a), 0);
	}
	/* a big file in many extents (its map gets several records), and two clones of it */
	assert_int_equal(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, "big", S_IFREG | 0644, 0,
					 &th_cred_user, &a), 0);
	big_ino = a.ino;
	th_fill_random(r, big, sizeof(big));
	for (unsigned i = 0; i < 64; i += 2)        /* every other block first: fragments */
		assert_int_equal(pmfuse_fs_write(fs, big_ino, big + i * 4096, 4096, i * 4096ull,
						 false, &th_cred_user), 4096);
	for (unsigned i = 1; i < 64; i += 2)
		assert_int_equal(pmfuse_fs_write(fs, big_ino, big + i * 4096, 4096, i * 4096ull,
						 false, &th_cred_user), 4096);
	for (unsigned c = 0; c < 2; c++) {
		snprintf(name, sizeof(name), "clone%u", c);
		assert_int_equal(pmfuse_fs_mknod(fs, d.ino, name, S_IFREG | 0644, 0, &th_cred_user,
						 &a), 0);
		assert_int_equal(pmfuse_fs_clone_range(fs, big_ino, 0, sizeof(big), a.ino, 0), 0);
		files[nfiles].ino = a.ino;
		files[nfiles].len = MAXDATA;
		memcpy(files[nfiles].data, big, MAXDATA);
		nfiles++;
	}
	/* more short names (links, so that the inode table keeps its shape): the root's
	 * short-name tree gets a second leaf */
	for (unsigned i = 0; i < 70; i++) {
		snprintf(name, sizeof(name), "e%u", i);
		assert_int_equal(pmfuse_fs_link(fs, files[0].ino, PMFUSE_ROOT_INO, name, &a), 0);
	}
	hl_ino = files[1].ino;
	assert_int_equal(pmfuse_fs_link(fs, hl_ino, d.ino, "hardlink", &a), 0);
	assert_int_equal(pmfuse_fs_setxattr(fs, files[2].ino, "user.big", big, 3000, 0), 0);
	assert_int_equal(pmfuse_fs_setxattr(fs, files[2].ino, "user.small", "x", 1, 0), 0);
	xattr_ino = files[2].ino;

	/* where things are */
	{
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_btree bt, rt;

		inode_leaf[0] = first_leaf(fs, &fs->inodes, false);
		inode_leaf[1] = first_leaf(fs, &fs->inodes, true);
		assert_int_equal(pmfuse_inode_locate(fs, PMFUSE_ROOT_INO, &ip, &leaf), 0);
		pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_dirent_ops, &bt);
		root_dir_node[0] = first_leaf(fs, &bt, false);
		root_dir_node[1] = first_leaf(fs, &bt, true);
		assert_true(pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES);
		pmfuse_inode_tree(fs, ip, leaf, &ip->sdir, &pmfuse_sdirent_ops, &bt);
		root_sdir_node[0] = first_leaf(fs, &bt, false);
		root_sdir_node[1] = first_leaf(fs, &bt, true);
		map_ino[0] = big_ino;
		map_ino[1] = files[5].ino;
		for (int k = 0; k < 2; k++) {
			assert_int_equal(pmfuse_inode_locate(fs, map_ino[k], &ip, &leaf), 0);
			pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_extent_ops, &bt);
			map_node[k] = first_leaf(fs, &bt, false);
		}
		assert_int_equal(pmfuse_inode_locate(fs, xattr_ino, &ip, &leaf), 0);
		pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, &bt);
		xattr_node = first_leaf(fs, &bt, false);
		pmfuse_refcount_tree(fs->vol, &rt);
		refcount_node = first_leaf(fs, &rt, false);
		bitmap_blk = pmfuse_le64(fs->vol->sb.bitmap_start);
		log_blk = pmfuse_le64(fs->vol->sb.log_start);
	}
	assert_true(inode_leaf[0] != inode_leaf[1]);
	assert_true(root_dir_node[0] != root_dir_node[1]);
	assert_true(root_sdir_node[0] != root_sdir_node[1]);
	files[nfiles].ino = big_ino;
	files[nfiles].len = MAXDATA;
	memcpy(files[nfiles].data, big, MAXDATA);
	nfiles++;
}

/* ---- damage ------------------------------------------------------------------------------- */

static uint8_t *blk_at(uint8_t *im, uint64_t b)
{
	return im + b * bs;
}

/* Flips a bit in each of 4 neighbouring bytes among the first span bytes of block b (what a
 * reader of that block looks at): distinct bytes, so the block always changes. */
static void flip(uint8_t *im, uint64_t b, size_t span, struct th_rng *r)
{
	size_t o = (size_t)th_rng_below(r, span);

	for (size_t i = 0; i < 4; i++)
		blk_at(im, b)[(o + i) % span] ^= (uint8_t)(1u << th_rng_below(r, 8));
}

static void zero(uint8_t *im, uint64_t b)
{
	memset(blk_at(im, b), 0, bs);
}

static void swap(uint8_t *im, uint64_t a, uint64_t b)
{
	static uint8_t t[65536];

	memcpy(t, blk_at(im, a), bs);
	memcpy(blk_at(im, a), blk_at(im, b), bs);
	memcpy(blk_at(im, b), t, bs);
}

/* Inode ino's record in the leaves found (NULL if in neither); *leaf: its leaf. */
static struct pmfuse_inode *inode_rec_at(uint8_t *im, uint64_t ino, struct pmfuse_blk_hdr **leaf)
{
	for (unsigned k = 0; k < 2; k++) {
		struct pmfuse_blk_hdr *h = (void *)blk_at(im, inode_leaf[k]);
		unsigned n = pmfuse_le16(h->nrecs);

		for (unsigned i = 0; i < n; i++) {
			uint8_t *rec = (uint8_t *)h + 32 + 256 * i;
			struct pmfuse_le64 x;

			memcpy(&x, rec, 8);
			if (pmfuse_le64(x) != ino)
				continue;
			*leaf = h;
			return (struct pmfuse_inode *)rec;
		}
	}
	return NULL;
}

/* A field of inode ino's record changed and its leaf resealed (semantic damage only). */
static void set_inode_field(uint8_t *im, uint64_t ino, size_t off, const void *v, size_t len)
{
	struct pmfuse_blk_hdr *h = NULL;
	struct pmfuse_inode *ip = inode_rec_at(im, ino, &h);

	if (!ip || !h)
		fail_msg("inode %llu not in the leaves found", ULL(ino));
	memcpy((uint8_t *)ip + off, v, len);
	pmfuse_blk_seal(h, bs);
}

/* The first file from index `from` on (not one a damage case already uses) whose inline map
 * holds one record of at least `blocks` blocks, in the leaves found; its record in *x. */
static unsigned inline_file(uint8_t *im, unsigned from, uint32_t blocks, struct pmfuse_extent *x)
{
	for (unsigned i = from; i < NFILES; i++) {
		struct pmfuse_blk_hdr *h;
		struct pmfuse_inode *ip = inode_rec_at(im, files[i].ino, &h);

		if (i == 5 || !ip || !(pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP) ||
		    pmfuse_le32(ip->inline_map[0].len) < blocks ||
		    pmfuse_le32(ip->inline_map[1].len))
			continue;
		*x = ip->inline_map[0];
		return i;
	}
	fail_msg("no file with one inline extent of %u blocks", blocks);
	return 0;
}

static void set_bit(uint8_t *im, uint64_t block, bool on)
{
	struct pmfuse_bitmap_blk *bb = (void *)blk_at(im, bitmap_blk);
	uint64_t w = pmfuse_le64(bb->words[block / 64]);

	w = on ? w | 1ull << (block & 63) : w & ~(1ull << (block & 63));
	pmfuse_set_le64(&bb->words[block / 64], w);
	pmfuse_blk_seal(&bb->hdr, bs);
}

enum { AFFECT_NONE, AFFECT_INO, AFFECT_LEAF };
struct dmg {
	const char *name;
	int affect;            /* which files may lose data */
	uint64_t ino, ino2;
};

#define NDMG 30

/* Applies damage number k to im; says what it may affect. */
static void damage(unsigned k, uint8_t *im, struct th_rng *r, struct dmg *d)
{
	const size_t imap = offsetof(struct pmfuse_inode, inline_map);
	struct pmfuse_extent x, y;
	unsigned f;
	uint32_t v32;
	uint64_t v64;

	memset(d, 0, sizeof(*d));
	switch (k) {
	case 0: d->name = "primary superblock flipped";
		flip(im, 0, sizeof(struct pmfuse_sb), r); break;
	case 1: d->name = "primary superblock zeroed"; zero(im, 0); break;
	case 2: d->name = "log header zeroed"; zero(im, log_blk); break;
	case 3: d->name = "bitmap block flipped"; flip(im, bitmap_blk, bs, r); break;
	case 4: d->name = "bitmap block zeroed"; zero(im, bitmap_blk); break;
	case 5: d->name = "inode table leaf flipped"; d->affect = AFFECT_LEAF; d->ino = 0;
		flip(im, inode_leaf[1], bs, r); break;
	case 6: d->name = "inode table leaf zeroed"; d->affect = AFFECT_LEAF; d->ino = 0;
		zero(im, inode_leaf[1]); break;
	case 7: d->name = "inode table leaves swapped"; d->affect = AFFECT_LEAF; d->ino = 1;
		swap(im, inode_leaf[0], inode_leaf[1]); break;
	case 8: d->name = "root directory node flipped"; flip(im, root_dir_node[0], bs, r); break;
	case 9: d->name = "root directory nodes swapped";
		swap(im, root_dir_node[0], root_dir_node[1]); break;
	case 28: d->name = "root short-name node flipped"; flip(im, root_sdir_node[0], bs, r);
		break;
	case 29: d->name = "root short-name nodes swapped";
		swap(im, root_sdir_node[0], root_sdir_node[1]); break;
	case 10: d->name = "extent map node zeroed"; d->affect = AFFECT_INO; d->ino = map_ino[0];
		zero(im, map_node[0]); break;
	case 11: d->name = "extent map nodes swapped"; d->affect = AFFECT_INO; d->ino = map_ino[0];
		d->ino2 = map_ino[1]; swap(im, map_node[0], map_node[1]); break;
	case 12: d->name = "xattr node flipped"; flip(im, xattr_node, bs, r); break;
	case 13: d->name = "refcount node zeroed"; zero(im, refcount_node); break;
	case 14: d->name = "refcount node swapped with an extent map node";
		d->affect = AFFECT_INO; d->ino = map_ino[1];
		swap(im, refcount_node, map_node[1]); break;
	case 15: d->name = "link count wrong"; v32 = 7;
		set_inode_field(im, hl_ino, offsetof(struct pmfuse_inode, nlink), &v32, 4); break;
	case 16: d->name = "link count zero, not an orphan"; v32 = 0;
		set_inode_field(im, files[4].ino, offsetof(struct pmfuse_inode, nlink), &v32, 4);
		break;
	case 17: d->name = "directory size wrong"; v64 = 3;
		set_inode_field(im, PMFUSE_ROOT_INO, offsetof(struct pmfuse_inode, size), &v64, 8);
		break;
	case 18: d->name = "block count wrong"; v64 = 1;
		set_inode_field(im, big_ino, offsetof(struct pmfuse_inode, blocks), &v64, 8); break;
	case 19: d->name = "leaked block (bitmap bit set)";
		set_bit(im, pool_size / bs - 3, true); break;
	case 20: d->name = "lost block (bitmap bit of a tree node cleared)";
		set_bit(im, inode_leaf[0], false); break;
	case 21: d->name = "parent field wrong"; v64 = 5;
		set_inode_field(im, PMFUSE_ROOT_INO, offsetof(struct pmfuse_inode, parent), &v64, 8);
		break;
	case 22: d->name = "state block zeroed"; zero(im, 1); break;
	case 23: d->name = "state block flipped"; flip(im, 1, bs, r); break;
	case 24: d->name = "inline extent outside the data area";
		f = inline_file(im, 6, 1, &x); d->affect = AFFECT_INO; d->ino = files[f].ino;
		pmfuse_set_le64(&x.pblock, pool_size / bs + 5);
		set_inode_field(im, files[f].ino, imap, &x, sizeof(x)); break;
	case 25: d->name = "inline extent with unknown flags, after a free slot";
		f = inline_file(im, 6, 1, &x); d->affect = AFFECT_INO; d->ino = files[f].ino;
		y = x;
		pmfuse_set_le32(&y.flags, 0x80);
		pmfuse_set_le64(&y.fblock, pmfuse_le64(x.fblock) + pmfuse_le32(x.len));
		memset(&x, 0, sizeof(x));
		set_inode_field(im, files[f].ino, imap, &x, sizeof(x));
		set_inode_field(im, files[f].ino, imap + sizeof(x), &y, sizeof(y)); break;
	case 26: d->name = "data block claimed by two files, no refcount";
		/* file f's last block becomes file g's first (full of g's bytes, so f's EOF
		 * falls inside it, with bytes after): shared, g must read back intact */
		f = inline_file(im, 6, 1, &x);
		(void)inline_file(im, f + 1, 2, &y);
		d->affect = AFFECT_INO; d->ino = files[f].ino;
		x.pblock = y.pblock;
		pmfuse_set_le64(&x.fblock, files[f].len / bs);
		pmfuse_set_le32(&x.len, 1);
		set_inode_field(im, files[f].ino, imap, &x, sizeof(x)); break;
	case 27: d->name = "data block claimed by a file and a tree node";
		f = inline_file(im, 6, 1, &x); d->affect = AFFECT_INO; d->ino = files[f].ino;
		pmfuse_set_le64(&x.pblock, xattr_node);
		pmfuse_set_le32(&x.len, 1);
		set_inode_field(im, files[f].ino, imap, &x, sizeof(x)); break;
	}
}

/* ---- repair and its checks ---------------------------------------------------------------- */

/* Which inode numbers live in inode table leaf k of the pristine image. */
static bool in_leaf(uint64_t ino, unsigned k)
{
	struct pmfuse_blk_hdr *h = (void *)blk_at(pristine, inode_leaf[k]);

	for (unsigned i = 0; i < pmfuse_le16(h->nrecs); i++) {
		struct pmfuse_le64 x;

		memcpy(&x, (uint8_t *)h + 32 + 256 * i, 8);
		if (pmfuse_le64(x) == ino)
			return true;
	}
	return false;
}

static bool affected(const struct dmg *d, uint64_t ino)
{
	switch (d->affect) {
	case AFFECT_INO: return ino == d->ino || ino == d->ino2;
	case AFFECT_LEAF: return in_leaf(ino, 1) || (d->ino && in_leaf(ino, 0));
	default: return false;
	}
}

/* Runs a repair on pool; returns the problems a check finds after it (why: the first). With
 * verify, every repair transaction is checked to change only what it declared (debug builds). */
static uint64_t repair_pool(struct pmfuse_pool *pool, struct pmfuse_repair_result *rr,
			    bool verify, char *why, size_t len)
{
	struct pmfuse_repair_ops ops = { .fixed = quiet, .left = quiet };
	struct pmfuse_fs_opts ro = { .repair = true }, co = { .check = true };
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	static struct th_fsck f;
	char msg[512] = "";
	int rc;

	rc = pmfuse_volume_open(pool, PMFUSE_VOL_REPAIR, &vol, msg, sizeof(msg));
	if (rc) {
		snprintf(why, len, "volume does not open for repair: %d %s", rc, msg);
		return 1;
	}
	memset(rr, 0, sizeof(*rr));
	pmfuse_txm_set_verify(vol->txm, verify);
	if (vol->state_bad && (rc = pmfuse_fs_repair_state(vol, &ops, rr))) {
		snprintf(why, len, "state block repair: %d", rc);
		pmfuse_volume_close(vol);
		return 1;
	}
	rc = pmfuse_fs_open(vol, &ro, &fs);
	if (!rc) {
		rc = pmfuse_fs_repair(fs, false, &ops, rr);
		pmfuse_fs_close(fs);
	}
	if (rc) {
		snprintf(why, len, "repair: %d", rc);
		pmfuse_volume_close(vol);
		return 1;
	}
	assert_int_equal(pmfuse_fs_open(vol, &co, &fs), 0);
	th_fsck_run(fs, &f);
	pmfuse_fs_close(fs);
	pmfuse_volume_close(vol);
	if (f.problems)
		snprintf(why, len, "%s", f.lines[0]);
	return f.problems;
}

/* The problems a check of a copy of pool finds, without fsck's memo (pool.h): what the memo
 * let the check after the repair skip is verified here; why: the first. */
static uint64_t check_plain(struct pmfuse_pool *pool, char *why, size_t len)
{
	struct pmfuse_fs_opts co = { .check = true };
	struct pmfuse_pool *copy;
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	static struct th_fsck f;
	char msg[512] = "";

	assert_int_equal(pmfuse_pool_fake_new(pool_size, pmfuse_pool_base(pool), &copy), 0);
	assert_int_equal(pmfuse_volume_open(copy, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(pmfuse_fs_open(vol, &co, &fs), 0);
	th_fsck_run(fs, &f);
	pmfuse_fs_close(fs);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(copy);
	if (f.problems)
		snprintf(why, len, "%s", f.lines[0]);
	return f.problems;
}

/* The pool mounts, and every file the damage did not touch reads back. */
static bool files_ok(struct pmfuse_pool *pool, const struct dmg *d, char *why, size_t len)
{
	static uint8_t buf[MAXDATA];
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	char msg[256] = "";
	bool ok = true;

	if (pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg))) {
		snprintf(why, len, "does not mount: %s", msg);
		return false;
	}
	if (pmfuse_fs_open(vol, NULL, &fs)) {
		snprintf(why, len, "the fs does not open");
		pmfuse_volume_close(vol);
		return false;
	}
	for (unsigned i = 0; i < nfiles && ok; i++) {
		const struct file *f = &files[i];
		ssize_t n;

		if (!f->len || affected(d, f->ino) ||
		    (d->affect == AFFECT_INO && f->ino == big_ino))
			continue;
		n = pmfuse_fs_pread(fs, f->ino, buf, f->len, 0);
		if (n != (ssize_t)f->len || memcmp(buf, f->data, f->len)) {
			snprintf(why, len, "inode %llu (untouched) reads back %zd bytes, %s",
				 ULL(f->ino), n, n < 0 ? "an error" : "not its own");
			ok = false;
		}
	}
	pmfuse_fs_close(fs);
	pmfuse_volume_close(vol);
	return ok;
}

/* ---- crash during repair ------------------------------------------------------------------ */

struct crash {
	struct pmfuse_pool *scratch;
	uint8_t *cimg;
	const struct dmg *d;
	uint64_t stride, states, barriers;
	bool failed;
};

static bool keep_all(void *arg, size_t unit)
{
	(void)arg;
	(void)unit;
	return true;
}

static void check_state(struct crash *c, const char *variant)
{
	struct pmfuse_repair_result rr;
	char why[512] = "";

	pmfuse_pool_fake_reset(c->scratch, c->cimg);
	c->states++;
	if (repair_pool(c->scratch, &rr, false, why, sizeof(why)) ||
	    !files_ok(c->scratch, c->d, why, sizeof(why))) {
		fprintf(stderr, "%s: crash at barrier %llu (%s): after a further repair: %s\n",
			c->d->name, ULL(c->barriers), variant, why);
		c->failed = true;
	}
}

static void on_barrier(void *arg, struct pmfuse_pool *pool, uint64_t barrier)
{
	struct crash *c = arg;

	c->barriers = barrier;
	if (c->failed || barrier % c->stride)
		return;
	pmfuse_pool_fake_crash_image(pool, c->cimg, NULL, NULL);
	check_state(c, "none kept");
	if (pmfuse_pool_fake_crash_image(pool, c->cimg, keep_all, NULL))
		check_state(c, "all kept");
}

static void test_repair(void **state)
{
	struct th_rng r;
	struct th_env e;
	struct pmfuse_pool *pool, *scratch;
	uint64_t total_states = 0, total_barriers = 0;
	char why[512];

	(void)state;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	th_rng_init(&r, th_seed());
	th_env_new(&e, POOL_SIZE, 4096, LOG_BLOCKS);
	bs = e.bs;
	populate(&e, &r);
	th_env_umount(&e);
	pool_size = pmfuse_pool_size(e.pool);
	pristine = malloc(pool_size);
	img = malloc(pool_size);
	assert_non_null(pristine);
	assert_non_null(img);
	memcpy(pristine, pmfuse_pool_base(e.pool), pool_size);
	assert_int_equal(pmfuse_pool_fake_new(pool_size, NULL, &scratch), 0);

	/* a sound pool: repair changes nothing */
	{
		struct pmfuse_repair_result rr;

		assert_int_equal(pmfuse_pool_fake_new(pool_size, pristine, &pool), 0);
		assert_int_equal(repair_pool(pool, &rr, true, why, sizeof(why)), 0);
		assert_int_equal(rr.fixed, 0);
		assert_int_equal(rr.transactions, 0);
		assert_int_equal(memcmp(pmfuse_pool_base(pool), pristine, pool_size), 0);
		pmfuse_pool_close(pool);
	}

	for (unsigned k = 0; k < NDMG; k++) {
		struct pmfuse_repair_result rr;
		struct crash c = { .scratch = scratch };
		struct th_fsck f;
		struct dmg d;
		uint64_t left;

		memcpy(img, pristine, pool_size);
		damage(k, img, &r, &d);
		/* 1. the checks see it (a read-only open, as fsck -n); with fsck's memo, which
		 * carries what they verified into the repair and the check after it, as in fsck */
		assert_int_equal(pmfuse_pool_fake_new(pool_size, img, &pool), 0);
		assert_int_equal(pmfuse_pool_memo_enable(pool, bs), 0);
		{
			struct pmfuse_volume *vol;
			struct pmfuse_fs *fs;
			struct pmfuse_fs_opts co = { .check = true };
			char msg[512] = "";
			int rc = pmfuse_volume_open(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg));
			bool seen = rc != 0;

			if (!rc) {
				seen = vol->sb_other_bad;
				if (!pmfuse_fs_open(vol, &co, &fs)) {
					th_fsck_run(fs, &f);
					seen = seen || f.problems;
					pmfuse_fs_close(fs);
				} else {
					seen = true;
				}
				pmfuse_volume_close(vol);
			}
			if (!seen)
				fail_msg("%s: the checks do not see it", d.name);
		}
		/* 2. a repair leaves it clean, mounting, the untouched files intact */
		left = repair_pool(pool, &rr, true, why, sizeof(why));
		if (left)
			fail_msg("%s: after repair: %s", d.name, why);
		if (check_plain(pool, why, sizeof(why)))
			fail_msg("%s: after repair, a check without the memo finds: %s", d.name, why);
		if (!files_ok(pool, &d, why, sizeof(why)))
			fail_msg("%s: after repair: %s", d.name, why);
		pmfuse_pool_close(pool);

		/* 3. the same repair, stopped at every barrier */
		assert_int_equal(pmfuse_pool_fake_new(pool_size, img, &pool), 0);
		assert_int_equal(pmfuse_pool_memo_enable(pool, bs), 0);
		c.cimg = malloc(pool_size);
		assert_non_null(c.cimg);
		c.d = &d;
		c.stride = th_scaled(1000) < 1000 ? 1000 / th_scaled(1000) + 1 : 1;
		{
			struct pmfuse_pool_fake_hook hook = { .barrier = on_barrier, .arg = &c };

			pmfuse_pool_fake_set_hook(pool, &hook);
			repair_pool(pool, &rr, false, why, sizeof(why));
			pmfuse_pool_fake_set_hook(pool, NULL);
		}
		if (c.failed)
			fail_msg("%s: a crash during repair is not recovered", d.name);
		printf("# %-48s %3llu fixes, %3llu transactions, %4llu barriers, %4llu crash "
		       "states repaired\n", d.name, ULL(rr.fixed), ULL(rr.transactions),
		       ULL(c.barriers), ULL(c.states));
		total_states += c.states;
		total_barriers += c.barriers;
		free(c.cimg);
		pmfuse_pool_close(pool);
	}
	printf("# %u kinds of damage, %llu barriers, %llu crash states repaired\n", NDMG,
	       ULL(total_barriers), ULL(total_states));
	pmfuse_pool_close(scratch);
	pmfuse_pool_close(e.pool);
	free(pristine);
	free(img);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_repair),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
