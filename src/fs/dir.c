/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Directories and the namespace operations.
 *
 * A directory's entries are the records of its map tree (owner PMFUSE_OWNER_INODE_BASE + ino),
 * struct pmfuse_dirent keyed by hash48(name) << 16 | seq; in a directory with
 * PMFUSE_INODE_SHORT_NAMES (every one made on a pool with the SHORT_DIRS feature), names of at
 * most PMFUSE_SHORT_NAME_MAX bytes are 64-byte struct pmfuse_sdirent records of a second tree
 * (root inode.sdir, same owner) instead: a small file's entry then costs ~95 bytes of leaf,
 * not ~420 (issue 8). struct dir and the entry functions below are the only code that knows
 * there are two trees. Names with the same 48-bit hash form a
 * chain of consecutive keys; seq is the lowest value not taken in the chain when the name was
 * inserted. So a name is found by seeking to hash << 16 and walking the chain comparing names,
 * and an insertion learns its key from the same walk (the first gap in the seq values). "." and
 * ".." are not stored: "." is the directory, ".." its record's parent field.
 *
 * Invariants (dirent check_rec, and what every operation keeps):
 *   D1 key >> 16 == hash48(name), namelen 1..255, the name holds no '/' and no NUL and is not
 *      "." or "..", the bytes after it are zero, ino != 0, type is a DT_* value;
 *   D2 a directory record's size counts its entries; its nlink is 2 + its subdirectories
 *      (0 once removed); every subdirectory's parent field names it;
 *   D3 a key never changes while its entry exists (a rename over an existing name rewrites the
 *      entry in place), which is what makes keys readdir cookies. A cookie must be a valid
 *      file offset (below 2^63: lseek and seekdir refuse negative ones), so it is the key with
 *      seq's top bit squeezed out, hash48 << 15 | seq (seq <= SEQ_MAX = 0x7ffe, so even the
 *      next cookie of the largest key stays below 2^63): the entry with key K is returned with
 *      next cookie cookie(K) + 1, and a listing resumes at the first key >= key(cookie), both
 *      maps being monotonic. Cookies are >= 32768 (hash48 is never 0), so cookies 1 and 2
 *      belong to "." and "..". An entry present during a whole listing is returned exactly
 *      once, whatever else changes. Keys are unique across both trees of a split directory
 *      (seq is the lowest value free in both chains), and readdir merges them in key order;
 *   D4 in a split directory, an entry is in the short tree exactly when its name has at most
 *      PMFUSE_SHORT_NAME_MAX bytes, so lookup, unlink and rename read one tree.
 *
 * The name hash is part of the on-media format and must never change: the name is read as
 * little-endian 64-bit words (the last one zero-padded), h = C0 ^ len, h = mix(h ^ w) + C1 for
 * each word w, h = mix(h ^ len), where mix is the murmur3/splitmix finaliser with the constants
 * below; the 64 bits are folded to 48 (h ^ h >> 48, low 48 bits), and 0 becomes 1.
 *
 * Operations: each modifying operation checks everything that can fail for a reason other than
 * space first, then runs one transaction: the tree operations, then the inode records (each
 * declared right before it changes, since tree operations seal the transaction, and resealed
 * right after, since a tree read verifies the leaf's crc), then the orphan list. On any error
 * the transaction is aborted and nothing changed. When an inode loses its last name, the same
 * transaction frees it if it owns nothing and the kernel holds no reference
 * (pmfuse_inode_drop), else puts it on the orphan list; without references it is then freed
 * right after the commit (pmfuse_inode_release). A symlink's target is
 * file data (read back with the data code), but since it always fits one block, the symlink is
 * created in one transaction too: inode, entry, the target's block and its mapping.
 *
 * Limits: names 1..255 bytes (-ENAMETOOLONG), link counts up to PMFUSE_LINK_MAX (-EMLINK),
 * symlink targets up to PMFUSE_SYMLINK_MAX bytes (-ENAMETOOLONG).
 */
#include "fs/fs_internal.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "pool/pool.h"
#include "util/util.h"

#define PMFUSE_LINK_MAX 65000u
#define PMFUSE_SYMLINK_MAX 4095u
#define SEQ_MAX 0x7ffeu              /* see D3: keeps readdir cookies below 2^63 */
#define SEQ_MASK 0xffffu
#define MASK48 ((1ull << 48) - 1)
#define WALK_MAX (1u << 20)        /* parent-chain steps before calling it a loop */

static unsigned mode_to_dt(uint32_t mode)
{
	return (mode & S_IFMT) >> 12;
}

static uint64_t le64_at(const void *p)
{
	struct pmfuse_le64 v;

	memcpy(&v, p, sizeof(v));
	return pmfuse_le64(v);
}

/* ---- name hash ------------------------------------------------------------------------------ */

uint64_t pmfuse_name_hash48(const char *name, size_t len)
{
	const uint8_t *p = (const uint8_t *)name;
	uint64_t h = 0x6a09e667f3bcc909ull ^ (uint64_t)len;
	size_t i = 0;

	while (i < len) {
		uint64_t w = 0;

		for (unsigned b = 0; b < 8 && i < len; b++, i++)
			w |= (uint64_t)p[i] << (8 * b);
		h = pmfuse_mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
	}
	h = pmfuse_mix64(h ^ (uint64_t)len);
	h = (h ^ (h >> 48)) & MASK48;
	return h ? h : 1;
}

/* ---- dirent tree ops ------------------------------------------------------------------------ */

static bool dt_known(unsigned type)
{
	switch (type) {
	case DT_REG: case DT_DIR: case DT_LNK: case DT_FIFO: case DT_SOCK: case DT_CHR:
	case DT_BLK:
		return true;
	default:
		return false;
	}
}

static bool is_dot(const char *name, size_t len)
{
	return (len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.');
}

/* D1 for either record kind: the name in a name field of size bytes. */
static int entry_check(struct pmfuse_le64 k, struct pmfuse_le64 ino, unsigned type,
		       const uint8_t *field, size_t size, unsigned len)
{
	uint64_t key = pmfuse_le64(k);
	const char *name = (const char *)field;

	if (!len || len > size || memchr(name, '/', len) || memchr(name, '\0', len) ||
	    is_dot(name, len))
		return PMFUSE_CORRUPT("dirent %llx: malformed name (length %u)",
				      (unsigned long long)key, len);
	for (size_t i = len; i < size; i++)
		if (field[i])
			return PMFUSE_CORRUPT("dirent %llx: bytes after the name",
					      (unsigned long long)key);
	if (key >> 16 != pmfuse_name_hash48(name, len) || (key & SEQ_MASK) > SEQ_MAX)
		return PMFUSE_CORRUPT("dirent %llx: key does not match the name's hash",
				      (unsigned long long)key);
	if (!pmfuse_le64(ino) || !dt_known(type))
		return PMFUSE_CORRUPT("dirent %llx: ino %llu, type %u", (unsigned long long)key,
				      (unsigned long long)pmfuse_le64(ino), type);
	return 0;
}

static int dirent_check_rec(const void *rec)
{
	const struct pmfuse_dirent *de = rec;
	int rc = entry_check(de->key, de->ino, de->type, de->name, sizeof(de->name) - 1,
			     de->namelen);

	if (rc)
		return rc;
	if (de->name[sizeof(de->name) - 1])
		return PMFUSE_CORRUPT("dirent %llx: bytes after the name",
				      (unsigned long long)pmfuse_le64(de->key));
	for (unsigned i = 0; i < sizeof(de->pad); i++)
		if (de->pad[i])
			return PMFUSE_CORRUPT("dirent %llx: padding is not zero",
					      (unsigned long long)pmfuse_le64(de->key));
	return 0;
}

static int sdirent_check_rec(const void *rec)
{
	const struct pmfuse_sdirent *de = rec;

	return entry_check(de->key, de->ino, de->type, de->name, sizeof(de->name), de->namelen);
}

const struct pmfuse_btree_ops pmfuse_dirent_ops = {
	.name = "dirents",
	.key_len = 8,
	.rec_len = sizeof(struct pmfuse_dirent),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = dirent_check_rec,
};

const struct pmfuse_btree_ops pmfuse_sdirent_ops = {
	.name = "short dirents",
	.key_len = 8,
	.rec_len = sizeof(struct pmfuse_sdirent),
	.key_from_rec = pmfuse_btree_key64_from_rec,
	.cmp_key = pmfuse_btree_cmp_key64,
	.check_rec = sdirent_check_rec,
};

/* ---- helpers -------------------------------------------------------------------------------- */

/* 0, or why name cannot be a directory entry: -ENOENT (empty), -ENAMETOOLONG, -EINVAL ('/'). */
static int name_check(const char *name, size_t *len)
{
	size_t n = strnlen(name, PMFUSE_NAME_MAX + 1);

	if (!n)
		return -ENOENT;
	if (n > PMFUSE_NAME_MAX)
		return -ENAMETOOLONG;
	if (memchr(name, '/', n))
		return -EINVAL;
	*len = n;
	return 0;
}

/*
 * A directory's trees: T_LONG (map: 280-byte records) and, with PMFUSE_INODE_SHORT_NAMES,
 * T_SHORT (sdir: 64-byte records). In a split directory a name lives in the tree its length
 * says (D4), so a lookup reads one tree; keys are unique across both (D3). Everything below
 * reaches the trees through struct dir and the entry functions after it.
 */
enum { T_LONG, T_SHORT };

struct dir {
	struct pmfuse_btree t[2];
	bool split;
};

static bool dir_split(const struct pmfuse_inode *dp)
{
	return pmfuse_le32(dp->flags) & PMFUSE_INODE_SHORT_NAMES;
}

static void dir_open(struct pmfuse_fs *fs, struct pmfuse_inode *dp, struct pmfuse_blk_hdr *leaf,
		     struct dir *d)
{
	pmfuse_inode_tree(fs, dp, leaf, &dp->map, &pmfuse_dirent_ops, &d->t[T_LONG]);
	d->split = dir_split(dp);
	if (d->split)
		pmfuse_inode_tree(fs, dp, leaf, &dp->sdir, &pmfuse_sdirent_ops, &d->t[T_SHORT]);
}

static unsigned tree_of(bool split, size_t len)
{
	return split && len <= PMFUSE_SHORT_NAME_MAX ? T_SHORT : T_LONG;
}

uint64_t pmfuse_dir_entries(const struct pmfuse_inode *dp)
{
	return pmfuse_le64(dp->map.nrecs) + (dir_split(dp) ? pmfuse_le64(dp->sdir.nrecs) : 0);
}

/* Locates a directory: -ENOENT, -ENOTDIR; live: also -ENOENT when it was removed (nlink 0). */
static int get_dir(struct pmfuse_fs *fs, uint64_t ino, bool live, struct pmfuse_inode **dp,
		   struct pmfuse_blk_hdr **leaf)
{
	int rc = pmfuse_inode_locate(fs, ino, dp, leaf);

	if (rc)
		return rc;
	if (!S_ISDIR(pmfuse_le32((*dp)->mode)))
		return -ENOTDIR;
	if (live && !pmfuse_le32((*dp)->nlink))
		return -ENOENT;
	return 0;
}

struct dfind {
	bool found;
	unsigned tree;              /* where the entry is, or goes */
	uint64_t key;               /* the entry's key; when not found, the key to insert with */
	struct pmfuse_dirent de;    /* the entry, when found (a short one widened) */
};

int pmfuse_name_find(const struct pmfuse_btree *bt, const char *name, size_t len,
		     void (*name_of)(const void *rec, const uint8_t **name, size_t *len),
		     const void **rec, uint64_t *key)
{
	uint64_t hash = pmfuse_name_hash48(name, len), want = 0, gap = UINT64_MAX;
	struct pmfuse_btree_cursor cur;
	struct pmfuse_le64 k;
	int rc;

	pmfuse_set_le64(&k, hash << 16);
	rc = pmfuse_btree_seek(&cur, bt, &k, PMFUSE_SEEK_GE);
	while (!rc) {
		const void *r = pmfuse_btree_cursor_rec(&cur);
		uint64_t rkey = le64_at(r), seq = rkey & SEQ_MASK;
		const uint8_t *rname;
		size_t rlen;

		if (rkey >> 16 != hash)
			break;
		if (gap == UINT64_MAX && seq != want)
			gap = want;
		want = seq + 1;
		name_of(r, &rname, &rlen);
		if (rlen == len && !memcmp(rname, name, len)) {
			*rec = r;
			*key = rkey;
			return 0;
		}
		rc = pmfuse_btree_next(&cur);
	}
	if (rc && rc != -ENOENT)
		return rc;
	if (gap == UINT64_MAX)
		gap = want;
	if (gap > SEQ_MAX) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s tree (owner %llu): %u names share hash %llx",
			   bt->ops->name, (unsigned long long)bt->owner, SEQ_MAX + 1,
			   (unsigned long long)hash);
		return -ENOSPC;
	}
	*key = hash << 16 | gap;
	return -ENOENT;
}

static void dirent_name(const void *rec, const uint8_t **name, size_t *len)
{
	const struct pmfuse_dirent *de = rec;

	*name = de->name;
	*len = de->namelen;
}

static void sdirent_name(const void *rec, const uint8_t **name, size_t *len)
{
	const struct pmfuse_sdirent *de = rec;

	*name = de->name;
	*len = de->namelen;
}

/* A record of tree t as a long entry. */
static void entry_load(struct pmfuse_dirent *de, const void *rec, unsigned t)
{
	const struct pmfuse_sdirent *sd = rec;

	if (t == T_LONG) {
		memcpy(de, rec, sizeof(*de));
		return;
	}
	memset(de, 0, sizeof(*de));
	de->key = sd->key;
	de->ino = sd->ino;
	de->type = sd->type;
	de->namelen = sd->namelen;
	memcpy(de->name, sd->name, sd->namelen);
}

/* The seq of the chain's entry under cur (UINT64_MAX past the chain), from a seek's or step's
 * rc. */
static int chain_seq(const struct pmfuse_btree_cursor *cur, int rc, uint64_t hash,
		     uint64_t *seq)
{
	uint64_t key;

	*seq = UINT64_MAX;
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	key = le64_at(pmfuse_btree_cursor_rec(cur));
	if (key >> 16 == hash)
		*seq = key & SEQ_MASK;
	return 0;
}

/* The key a new name of hash gets in a split directory: the lowest seq taken in neither
 * tree's chain (D3: keys are cookies, so they are unique across the trees). */
static int free_key(const struct dir *d, uint64_t hash, uint64_t *key)
{
	struct pmfuse_btree_cursor cur[2];
	uint64_t seq[2], want = 0;
	struct pmfuse_le64 k;
	int rc;

	pmfuse_set_le64(&k, hash << 16);
	for (unsigned i = 0; i < 2; i++) {
		rc = chain_seq(&cur[i], pmfuse_btree_seek(&cur[i], &d->t[i], &k, PMFUSE_SEEK_GE),
			       hash, &seq[i]);
		if (rc)
			return rc;
	}
	for (;;) {
		bool taken = false;

		for (unsigned i = 0; i < 2; i++) {
			while (seq[i] < want) {
				rc = chain_seq(&cur[i], pmfuse_btree_next(&cur[i]), hash, &seq[i]);
				if (rc)
					return rc;
			}
			taken |= seq[i] == want;
		}
		if (!taken)
			break;
		want++;
	}
	if (want > SEQ_MAX) {
		pmfuse_log(PMFUSE_LOG_ERR, "directory (owner %llu): %u names share hash %llx",
			   (unsigned long long)d->t[0].owner, SEQ_MAX + 1,
			   (unsigned long long)hash);
		return -ENOSPC;
	}
	*key = hash << 16 | want;
	return 0;
}

/* Looks name up in a directory; also finds the key a new entry of that name would get. */
static int dir_find(const struct dir *d, const char *name, size_t len, struct dfind *f)
{
	unsigned t = tree_of(d->split, len);
	const void *rec;
	int rc = pmfuse_name_find(&d->t[t], name, len, t == T_LONG ? dirent_name : sdirent_name,
				  &rec, &f->key);

	f->found = false;
	f->tree = t;
	if (rc == -ENOENT) {
		/* the other tree can hold names of this hash only if it holds any names */
		if (d->split && pmfuse_btree_count(&d->t[!t]))
			return free_key(d, f->key >> 16, &f->key);
		return 0;
	}
	if (!rc)
		rc = d->t[t].ops->check_rec(rec);
	if (rc)
		return rc;
	f->found = true;
	entry_load(&f->de, rec, t);
	return 0;
}

/* Stores de in tree t: a new record, or (update) over the one with its key. */
static int entry_store(struct pmfuse_tx *tx, struct dir *d, unsigned t,
		       const struct pmfuse_dirent *de, bool update)
{
	struct pmfuse_sdirent sd;
	const void *rec = de;

	if (t == T_SHORT) {
		memset(&sd, 0, sizeof(sd));
		sd.key = de->key;
		sd.ino = de->ino;
		sd.type = de->type;
		sd.namelen = de->namelen;
		memcpy(sd.name, de->name, de->namelen);
		rec = &sd;
	}
	return update ? pmfuse_btree_update(tx, &d->t[t], rec) :
			pmfuse_btree_insert(tx, &d->t[t], rec);
}

/* Adds name -> ino where dir_find said (f not found). */
static int dirent_insert(struct pmfuse_tx *tx, struct dir *d, const struct dfind *f,
			 const char *name, size_t len, uint64_t ino, uint32_t mode)
{
	struct pmfuse_dirent de;

	memset(&de, 0, sizeof(de));
	pmfuse_set_le64(&de.key, f->key);
	pmfuse_set_le64(&de.ino, ino);
	de.type = (uint8_t)mode_to_dt(mode);
	de.namelen = (uint8_t)len;
	memcpy(de.name, name, len);
	return entry_store(tx, d, f->tree, &de, false);
}

/* Points an existing entry at another inode (rename over a name, exchange); key unchanged. */
static int dirent_retarget(struct pmfuse_tx *tx, struct dir *d, const struct dfind *f,
			   uint64_t ino, uint32_t mode)
{
	struct pmfuse_dirent de = f->de;

	pmfuse_set_le64(&de.ino, ino);
	de.type = (uint8_t)mode_to_dt(mode);
	return entry_store(tx, d, f->tree, &de, true);
}

static int dirent_delete(struct pmfuse_tx *tx, struct dir *d, const struct dfind *f)
{
	struct pmfuse_le64 k;

	pmfuse_set_le64(&k, f->key);
	return pmfuse_btree_delete(tx, &d->t[f->tree], &k, NULL);
}

int pmfuse_dir_add(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct pmfuse_inode *dp,
		   struct pmfuse_blk_hdr *leaf, const char *name, uint64_t ino, uint32_t mode)
{
	size_t len = strlen(name);
	struct dfind f;
	struct dir d;
	int rc;

	dir_open(fs, dp, leaf, &d);
	rc = dir_find(&d, name, len, &f);
	if (!rc && f.found)
		rc = -EEXIST;
	return rc ? rc : dirent_insert(tx, &d, &f, name, len, ino, mode);
}

/* ---- walking both trees in key order (readdir, fsck) ---------------------------------------- */

int pmfuse_dir_iter_start(struct pmfuse_dir_iter *it, struct pmfuse_fs *fs,
			  struct pmfuse_inode *dp, struct pmfuse_blk_hdr *leaf, uint64_t key)
{
	struct pmfuse_le64 k;

	pmfuse_set_le64(&k, key);
	it->split = dir_split(dp);
	pmfuse_inode_tree(fs, dp, leaf, &dp->map, &pmfuse_dirent_ops, &it->bt[T_LONG]);
	it->rc[T_LONG] = pmfuse_btree_seek(&it->cur[T_LONG], &it->bt[T_LONG], &k, PMFUSE_SEEK_GE);
	it->rc[T_SHORT] = -ENOENT;
	if (it->split) {
		pmfuse_inode_tree(fs, dp, leaf, &dp->sdir, &pmfuse_sdirent_ops, &it->bt[T_SHORT]);
		it->rc[T_SHORT] = pmfuse_btree_seek(&it->cur[T_SHORT], &it->bt[T_SHORT], &k,
						    PMFUSE_SEEK_GE);
	}
	for (unsigned i = 0; i < 2; i++)
		if (it->rc[i] && it->rc[i] != -ENOENT)
			return it->rc[i];
	return 0;
}

int pmfuse_dir_iter_next(struct pmfuse_dir_iter *it, struct pmfuse_dirent *de, unsigned *tree)
{
	const void *rec;
	unsigned t;
	int rc;

	if (it->rc[T_LONG] && it->rc[T_SHORT])
		return -ENOENT;
	if (it->rc[T_LONG])
		t = T_SHORT;
	else if (it->rc[T_SHORT])
		t = T_LONG;
	else
		t = le64_at(pmfuse_btree_cursor_rec(&it->cur[T_SHORT])) <
		    le64_at(pmfuse_btree_cursor_rec(&it->cur[T_LONG])) ? T_SHORT : T_LONG;
	rec = pmfuse_btree_cursor_rec(&it->cur[t]);
	rc = it->bt[t].ops->check_rec(rec);
	if (rc)
		return rc;
	entry_load(de, rec, t);
	if (tree)
		*tree = t;
	it->rc[t] = pmfuse_btree_next(&it->cur[t]);
	if (it->rc[t] && it->rc[t] != -ENOENT)
		return it->rc[t];
	return 0;
}

/* Declares a whole record before changing it (see inode.c). */
static int dirty(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf, struct pmfuse_inode *ip)
{
	return pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
}

static void add32(struct pmfuse_le32 *f, int d)
{
	pmfuse_set_le32(f, pmfuse_le32(*f) + (uint32_t)d);
}

static void add64(struct pmfuse_le64 *f, int d)
{
	pmfuse_set_le64(f, pmfuse_le64(*f) + (uint64_t)(int64_t)d);
}

/* A directory's entries changed: size by d_size, nlink by d_nlink, mtime and ctime now. */
static int dir_changed(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf,
		       struct pmfuse_inode *dp, const struct pmfuse_timestamp *now, int d_size,
		       int d_nlink)
{
	int rc = dirty(tx, leaf, dp);

	if (rc)
		return rc;
	add64(&dp->size, d_size);
	add32(&dp->nlink, d_nlink);
	dp->mtime = *now;
	dp->ctime = *now;
	pmfuse_tx_seal(tx);
	return 0;
}

/* An inode lost or gained a name: nlink by d (a directory: set), ctime now. */
static int target_changed(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *leaf,
			  struct pmfuse_inode *ip, const struct pmfuse_timestamp *now, int d)
{
	int rc = dirty(tx, leaf, ip);

	if (rc)
		return rc;
	if (S_ISDIR(pmfuse_le32(ip->mode)) && d < 0)
		pmfuse_set_le32(&ip->nlink, 0);
	else
		add32(&ip->nlink, d);
	ip->ctime = *now;
	pmfuse_tx_seal(tx);
	return 0;
}

/* Reports a failure to free an unlinked inode; the operation itself succeeded. */
static void release(struct pmfuse_fs *fs, uint64_t ino)
{
	int rc = pmfuse_inode_release(fs, ino);

	if (rc)
		pmfuse_log(PMFUSE_LOG_ERR, "freeing inode %llu: %s (it stays on the orphan list)",
			   (unsigned long long)ino, strerror(-rc));
}

/* Returns the attributes of a new or newly named inode and takes the kernel's reference. */
static int entry_out(struct pmfuse_fs *fs, uint64_t ino, struct pmfuse_attr *attr)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	int rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);

	if (rc)
		return rc;
	if (attr)
		pmfuse_inode_to_attr(fs, ip, attr);
	pmfuse_lookup_ref(fs, ino);
	return 0;
}

/*
 * Ends the transaction of an operation that made an entry for ino: commits and reports the
 * entry (entry_out) when rc is 0, else aborts. tx is NULL when the operation failed before it
 * began one.
 */
static int entry_commit(struct pmfuse_fs *fs, struct pmfuse_tx *tx, int rc, uint64_t ino,
			struct pmfuse_attr *attr)
{
	if (!tx)
		return rc;
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	pmfuse_tx_commit(tx);
	return entry_out(fs, ino, attr);
}

/*
 * What an operation that gave a directory a new name leaves in the lookup cache: the
 * directory's new attributes, the name and its inode's attributes. The kernel drops a
 * directory's attributes after every entry it adds and asks for them again at the next
 * permission check (a GETATTR per create), and a name is often looked up soon after it is made;
 * both are then answered from the cache without fs->lock, so a creator in one directory does
 * not queue there behind one in another.
 *
 * entry_fill_read copies the directory's attributes after the commit, under fs->lock for
 * writing; entry_fill_put puts everything after fs->lock is let go but before the inode locks
 * are, so that the puts (allocations, hash table updates) add nothing to the exclusive section.
 * That is exact: every change of these records or of the directory's names needs the
 * directory's inode lock or the inode's, which the operation still holds (create, mkdir and
 * symlink hold only the directory's, but their new inode can be reached only through it: its
 * number is new and known to nobody else yet), and a change forgets the entries first.
 */
struct entry_fill {
	bool ok;
	struct pmfuse_attr dir;
};

/* From the directory's record, when the caller knows it still points at it (nothing was
 * inserted into the inode table since it was located: link). */
static void entry_fill_dir(struct pmfuse_fs *fs, const struct pmfuse_inode *dp,
			   const struct pmfuse_attr *attr, struct entry_fill *ef)
{
	ef->ok = fs->icache && attr;
	if (ef->ok)
		pmfuse_inode_to_attr(fs, dp, &ef->dir);
}

/* Locates the directory again: creating its new inode may have moved its record. */
static void entry_fill_read(struct pmfuse_fs *fs, uint64_t parent, const struct pmfuse_attr *attr,
			    struct entry_fill *ef)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;

	ef->ok = false;
	if (fs->icache && attr && !pmfuse_inode_locate(fs, parent, &dp, &leaf))
		entry_fill_dir(fs, dp, attr, ef);
}

static void entry_fill_put(struct pmfuse_fs *fs, const struct entry_fill *ef, const char *name,
			   size_t len, const struct pmfuse_attr *attr)
{
	uint64_t seq;

	if (!ef->ok)
		return;
	seq = pmfuse_icache_put_attr(fs->icache, &ef->dir);
	pmfuse_icache_put_attr(fs->icache, attr);
	pmfuse_icache_put_name(fs->icache, ef->dir.ino, seq, name, len, attr->ino);
}

/* -EINVAL when directory anc is ino itself or one of its ancestors. */
static int check_not_ancestor(struct pmfuse_fs *fs, uint64_t anc, uint64_t ino)
{
	for (unsigned steps = 0; steps < WALK_MAX; steps++) {
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		uint64_t up;
		int rc;

		if (ino == anc)
			return -EINVAL;
		if (ino == PMFUSE_ROOT_INO)
			return 0;
		rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
		if (rc == -ENOENT)
			return PMFUSE_CORRUPT("directory %llu is missing from the inode table",
					      (unsigned long long)ino);
		if (rc)
			return rc;
		up = pmfuse_le64(ip->parent);
		if (!S_ISDIR(pmfuse_le32(ip->mode)) || !up)
			return PMFUSE_CORRUPT("inode %llu on a parent chain is not a directory",
					      (unsigned long long)ino);
		ino = up;
	}
	return PMFUSE_CORRUPT("directory parent chain does not reach the root");
}

/*
 * The inode that name in directory dir names now, 0 for none (or when the directory cannot be
 * read: the operation finds that out again under its locks). An operation on a name's target
 * locks the directory and the target in inode-lock order, so it finds the target first, then
 * locks both and checks that the name still names it (else it starts again).
 */
static uint64_t name_peek(struct pmfuse_fs *fs, uint64_t dir, const char *name, size_t len)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;
	struct dir d;
	struct dfind f;
	uint64_t ino = 0;

	fs_ilock1(fs, dir, false);
	fs_rdlock(fs);
	if (!get_dir(fs, dir, false, &dp, &leaf)) {
		dir_open(fs, dp, leaf, &d);
		if (!dir_find(&d, name, len, &f) && f.found)
			ino = pmfuse_le64(f.de.ino);
	}
	fs_unlock(fs);
	fs_iunlock(fs);
	return ino;
}

/* ---- lookup, readdir ------------------------------------------------------------------------ */

static bool handle_live(void *arg)
{
	const void **h = arg;

	return pmfuse_icache_live((struct pmfuse_icache *)h[0], h[1]);
}

/* Lookup from the cache alone, no lock: 1 with *attr and the reference taken, 0 on a miss. */
static bool lookup_cached(struct pmfuse_fs *fs, uint64_t parent, const char *name, size_t len,
			  struct pmfuse_attr *attr)
{
	const void *h[2] = { fs->icache, NULL };
	bool hit = false;
	uint64_t ino;

	pmfuse_icache_read_begin();
	ino = pmfuse_icache_name(fs->icache, parent, name, len, &h[1]);
	/* the reference is taken only while the name still stands: a writer that removes or
	 * retargets it forgets the directory's entry before it counts references */
	if (ino && pmfuse_icache_attr(fs->icache, ino, attr, NULL))
		hit = pmfuse_lookup_ref_if(fs, ino, handle_live, h);
	pmfuse_icache_read_end();
	return hit;
}

/* Under fs->lock: caches a name found in directory dp and its target's attributes. */
static void lookup_fill(struct pmfuse_fs *fs, const struct pmfuse_inode *dp, const char *name,
			size_t len, const struct pmfuse_attr *attr)
{
	struct pmfuse_attr da;
	uint64_t seq = 0;
	bool have;

	pmfuse_icache_read_begin();
	have = pmfuse_icache_attr(fs->icache, pmfuse_le64(dp->ino), &da, &seq);
	pmfuse_icache_read_end();
	if (!have) {
		pmfuse_inode_to_attr(fs, dp, &da);
		seq = pmfuse_icache_put_attr(fs->icache, &da);
	}
	pmfuse_icache_put_attr(fs->icache, attr);
	pmfuse_icache_put_name(fs->icache, pmfuse_le64(dp->ino), seq, name, len, attr->ino);
}

int pmfuse_fs_lookup(struct pmfuse_fs *fs, uint64_t parent, const char *name,
		     struct pmfuse_attr *attr)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;
	struct pmfuse_attr local;
	struct dir d;
	bool named = false;
	struct dfind f;
	uint64_t ino;
	size_t len;
	int rc;

	rc = name_check(name, &len);
	if (rc)
		return rc;
	if (!attr)
		attr = &local;
	if (fs->icache && !is_dot(name, len) && lookup_cached(fs, parent, name, len, attr))
		return 0;
	fs_ilock1(fs, parent, false);
	fs_rdlock(fs);
	rc = get_dir(fs, parent, false, &dp, &leaf);
	if (rc == -ENOTDIR && len == 1 && name[0] == '.') {
		/*
		 * "." in a non-directory: the kernel asks exactly this to turn a file handle
		 * (open_by_handle_at, NFS export) into an inode it no longer caches. The inode is
		 * itself, also when unlinked but still open.
		 */
		ino = parent;
		goto found;
	}
	if (rc)
		goto out;
	if (is_dot(name, len)) {
		/* a removed directory's parent may be gone: nothing to look up there */
		rc = pmfuse_le32(dp->nlink) ? 0 : -ENOENT;
		if (rc)
			goto out;
		ino = len == 1 ? parent : pmfuse_le64(dp->parent);
	} else {
		dir_open(fs, dp, leaf, &d);
		rc = dir_find(&d, name, len, &f);
		if (!rc && !f.found)
			rc = -ENOENT;
		if (rc)
			goto out;
		ino = pmfuse_le64(f.de.ino);
		named = true;
	}
found:
	rc = entry_out(fs, ino, attr);
	if (!rc && named && fs->icache)
		lookup_fill(fs, dp, name, len, attr);
	if (rc == -ENOENT)
		rc = PMFUSE_CORRUPT("directory %llu: entry \"%s\" names missing inode %llu",
				    (unsigned long long)parent, name, (unsigned long long)ino);
out:
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

/* Readdir cookies from keys and back (D3). */
static uint64_t key_cookie(uint64_t key)
{
	return (key >> 16) << 15 | (key & SEQ_MASK);
}

static uint64_t cookie_key(uint64_t cookie)
{
	return (cookie >> 15) << 16 | (cookie & 0x7fffu);
}

int pmfuse_fs_readdir(struct pmfuse_fs *fs, uint64_t ino, uint64_t cookie, pmfuse_dirent_fn emit,
		      void *arg)
{
	char name[PMFUSE_NAME_MAX + 1];
	struct pmfuse_dir_iter it;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;
	struct pmfuse_dirent de;
	int rc;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = get_dir(fs, ino, false, &dp, &leaf);
	if (!rc && !pmfuse_le32(dp->nlink))
		rc = -ENOENT;   /* removed: as Linux's iterate_dir says for a dead directory */
	if (rc)
		goto out;
	if (cookie == 0 && emit(arg, ".", ino, DT_DIR, 1))
		goto out;
	if (cookie <= 1 && emit(arg, "..", pmfuse_le64(dp->parent), DT_DIR, 2))
		goto out;
	/* both trees merged in key order (D3) */
	rc = pmfuse_dir_iter_start(&it, fs, dp, leaf, cookie <= 2 ? 0 : cookie_key(cookie));
	while (!rc && !(rc = pmfuse_dir_iter_next(&it, &de, NULL))) {
		memcpy(name, de.name, de.namelen);
		name[de.namelen] = '\0';
		if (emit(arg, name, pmfuse_le64(de.ino), de.type,
			 key_cookie(pmfuse_le64(de.key)) + 1))
			break;
	}
	if (rc == -ENOENT)
		rc = 0;
out:
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

/* ---- creating ------------------------------------------------------------------------------- */

/*
 * Checks that name can be created in directory parent: returns the directory's record and
 * where the new entry goes. fs->lock held for writing.
 */
static int prepare_create(struct pmfuse_fs *fs, uint64_t parent, const char *name, size_t len,
			  bool subdir, struct pmfuse_inode **dp, struct pmfuse_blk_hdr **leaf,
			  struct dfind *f)
{
	struct dir d;
	int rc;

	if (fs->readonly)
		return -EROFS;
	rc = get_dir(fs, parent, true, dp, leaf);
	if (rc)
		return rc;
	if (is_dot(name, len))
		return -EEXIST;
	dir_open(fs, *dp, *leaf, &d);
	rc = dir_find(&d, name, len, f);
	if (rc)
		return rc;
	if (f->found)
		return -EEXIST;
	if (subdir && pmfuse_le32((*dp)->nlink) >= PMFUSE_LINK_MAX)
		return -EMLINK;
	return 0;
}

/* Links new inode ino into directory parent under name (key from f), inside tx. */
static int link_new(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t parent,
		    const char *name, size_t len, const struct dfind *f, uint64_t ino,
		    uint32_t mode)
{
	struct pmfuse_timestamp now;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;
	struct dir d;
	int rc;

	/* creating the inode changed the inode table: locate the directory again */
	rc = get_dir(fs, parent, true, &dp, &leaf);
	if (rc)
		return rc == -ENOENT ? PMFUSE_CORRUPT("directory %llu vanished",
						      (unsigned long long)parent) : rc;
	dir_open(fs, dp, leaf, &d);
	rc = dirent_insert(tx, &d, f, name, len, ino, mode);
	if (rc)
		return rc;
	pmfuse_timestamp_now(&now);
	return dir_changed(tx, leaf, dp, &now, 1, S_ISDIR(mode) ? 1 : 0);
}

static int create_node(struct pmfuse_fs *fs, uint64_t parent, const char *name, uint32_t mode,
		       uint64_t rdev, const struct pmfuse_cred *cred, struct pmfuse_attr *attr)
{
	struct entry_fill ef = { 0 };
	struct pmfuse_acl_inherit inh = { 0 };
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp, dcopy;
	struct pmfuse_tx *tx = NULL;
	struct dfind f;
	uint64_t ino = 0;
	size_t len;
	int rc;

	rc = name_check(name, &len);
	if (rc)
		return rc;
	fs_ilock1(fs, parent, true);
	fs_wrlock(fs);
	rc = prepare_create(fs, parent, name, len, S_ISDIR(mode), &dp, &leaf, &f);
	if (rc)
		goto out;
	/* the parent's default ACL, else the umask, decides the permission bits (acl.c) */
	rc = pmfuse_acl_inherit_prepare(fs, dp, leaf, cred, &mode, &inh);
	if (rc)
		goto out;
	dcopy = *dp;
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_create(fs, tx, mode, rdev, cred, &dcopy, &ino);
	if (!rc)
		rc = link_new(fs, tx, parent, name, len, &f, ino, mode);
	if (!rc)
		rc = pmfuse_acl_inherit_apply(fs, tx, ino, &inh);
out:
	rc = entry_commit(fs, tx, rc, ino, attr);
	if (!rc)
		entry_fill_read(fs, parent, attr, &ef);
	fs_unlock(fs);
	entry_fill_put(fs, &ef, name, len, attr);
	fs_iunlock(fs);
	pmfuse_acl_inherit_done(&inh);
	return rc;
}

/*
 * O_TMPFILE: a regular file with no name, made in one transaction as an unlinked-but-open file
 * is left by unlink: nlink 0, on the orphan list (so a crash frees it at the next mount), and
 * referenced by the kernel until its last forget frees it. PMFUSE_INODE_LINKABLE lets linkat
 * give it its first name (the kernel allows that unless O_EXCL was given).
 */
int pmfuse_fs_tmpfile(struct pmfuse_fs *fs, uint64_t parent, uint32_t mode,
		      const struct pmfuse_cred *cred, struct pmfuse_attr *attr)
{
	struct pmfuse_acl_inherit inh = { 0 };
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp, *ip, dcopy;
	struct pmfuse_tx *tx = NULL;
	uint64_t ino = 0;
	int rc;

	mode = S_IFREG | (mode & 07777);
	fs_ilock1(fs, parent, true);
	fs_wrlock(fs);
	rc = fs->readonly ? -EROFS : get_dir(fs, parent, true, &dp, &leaf);
	if (!rc)
		rc = pmfuse_acl_inherit_prepare(fs, dp, leaf, cred, &mode, &inh);
	if (rc)
		goto out;
	dcopy = *dp;
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_create(fs, tx, mode, 0, cred, &dcopy, &ino);
	if (!rc)
		rc = pmfuse_orphan_add(fs, tx, ino);
	if (!rc)
		rc = pmfuse_acl_inherit_apply(fs, tx, ino, &inh);
	if (!rc)
		rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (!rc)
		rc = dirty(tx, leaf, ip);
	if (!rc) {
		pmfuse_set_le32(&ip->nlink, 0);
		pmfuse_set_le32(&ip->flags, pmfuse_le32(ip->flags) | PMFUSE_INODE_LINKABLE);
		pmfuse_tx_seal(tx);
	}
out:
	rc = entry_commit(fs, tx, rc, ino, attr);
	fs_unlock(fs);
	fs_iunlock(fs);
	pmfuse_acl_inherit_done(&inh);
	return rc;
}

int pmfuse_fs_mknod(struct pmfuse_fs *fs, uint64_t parent, const char *name, uint32_t mode,
		    uint64_t rdev, const struct pmfuse_cred *cred, struct pmfuse_attr *attr)
{
	uint32_t type = mode & S_IFMT;

	switch (type) {
	case 0:
		type = S_IFREG;
		break;
	case S_IFREG: case S_IFIFO: case S_IFSOCK: case S_IFCHR: case S_IFBLK:
		break;
	default:
		return -EINVAL;
	}
	if (type != S_IFCHR && type != S_IFBLK)
		rdev = 0;
	return create_node(fs, parent, name, type | (mode & 07777), rdev, cred, attr);
}

int pmfuse_fs_mkdir(struct pmfuse_fs *fs, uint64_t parent, const char *name, uint32_t mode,
		    const struct pmfuse_cred *cred, struct pmfuse_attr *attr)
{
	/* as vfs_mkdir: setuid/setgid are not taken from the caller (setgid is inherited) */
	return create_node(fs, parent, name, S_IFDIR | (mode & 01777), 0, cred, attr);
}

/*
 * Stores a new symlink's target: one block (a target is shorter than the smallest block),
 * declared new and written inside the transaction, mapped at file block 0; zeros after the
 * target (E5 of extent.c). The commit persists it before the mapping becomes durable.
 */
static int symlink_store(struct pmfuse_fs *fs, struct pmfuse_tx *tx, uint64_t ino,
			 const char *target, size_t tlen)
{
	struct pmfuse_extmap map;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_iext ext;
	uint64_t blk, got;
	uint8_t *p;
	int rc;

	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		return rc;
	rc = pmfuse_alloc_extent(tx, fs->alloc, pmfuse_pool_offset(fs->pool, leaf) / fs->bs, 1, 1,
				 &blk, &got);
	if (rc)
		return rc;
	p = pmfuse_volume_block(fs->vol, blk);
	rc = pmfuse_tx_add_new(tx, p, fs->bs);
	if (rc)
		return rc;
	memcpy(p, target, tlen);
	memset(p + tlen, 0, fs->bs - tlen);
	ext.fblock = 0;
	ext.pblock = blk;
	ext.len = 1;
	ext.flags = 0;
	pmfuse_extmap_open(&map, fs, ip, leaf);
	rc = pmfuse_extent_insert(tx, &map, &ext);
	if (!rc)
		rc = dirty(tx, leaf, ip);
	if (rc)
		return rc;
	pmfuse_set_le64(&ip->size, tlen);
	pmfuse_tx_seal(tx);
	return 0;
}

int pmfuse_fs_symlink(struct pmfuse_fs *fs, uint64_t parent, const char *name,
		      const char *target, const struct pmfuse_cred *cred,
		      struct pmfuse_attr *attr)
{
	struct entry_fill ef = { 0 };
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp, dcopy;
	struct pmfuse_tx *tx = NULL;
	size_t len, tlen;
	struct dfind f;
	uint64_t ino = 0;
	int rc;

	_Static_assert(PMFUSE_SYMLINK_MAX < PMFUSE_BLOCK_SIZE_MIN, "a target fits one block");
	rc = name_check(name, &len);
	if (rc)
		return rc;
	tlen = strnlen(target, PMFUSE_SYMLINK_MAX + 1);
	if (!tlen)
		return -ENOENT;
	if (tlen > PMFUSE_SYMLINK_MAX)
		return -ENAMETOOLONG;
	fs_ilock1(fs, parent, true);
	fs_wrlock(fs);
	rc = prepare_create(fs, parent, name, len, false, &dp, &leaf, &f);
	if (rc)
		goto out;
	dcopy = *dp;
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_create(fs, tx, S_IFLNK | 0777, 0, cred, &dcopy, &ino);
	if (!rc)
		rc = link_new(fs, tx, parent, name, len, &f, ino, S_IFLNK);
	if (!rc)
		rc = symlink_store(fs, tx, ino, target, tlen);
out:
	rc = entry_commit(fs, tx, rc, ino, attr);
	if (!rc)
		entry_fill_read(fs, parent, attr, &ef);
	fs_unlock(fs);
	entry_fill_put(fs, &ef, name, len, attr);
	fs_iunlock(fs);
	return rc;
}

int pmfuse_fs_readlink(struct pmfuse_fs *fs, uint64_t ino, char *buf, size_t size)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	uint64_t len;
	ssize_t n;
	int rc;

	fs_ilock1(fs, ino, false);
	fs_rdlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		goto out;
	if (!S_ISLNK(pmfuse_le32(ip->mode))) {
		rc = -EINVAL;
		goto out;
	}
	len = pmfuse_le64(ip->size);
	if (!len || len > PMFUSE_SYMLINK_MAX) {
		rc = PMFUSE_CORRUPT("symlink %llu: target length %llu", (unsigned long long)ino,
				    (unsigned long long)len);
		goto out;
	}
	if (size < len + 1) {
		rc = -ERANGE;
		goto out;
	}
	n = pmfuse_data_pread_locked(fs, ino, buf, len, 0);
	if (n < 0) {
		rc = (int)n;
		goto out;
	}
	if ((uint64_t)n != len) {
		rc = PMFUSE_CORRUPT("symlink %llu: read %zd of %llu target bytes",
				    (unsigned long long)ino, n, (unsigned long long)len);
		goto out;
	}
	buf[len] = '\0';
	rc = (int)len;
out:
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

int pmfuse_fs_link(struct pmfuse_fs *fs, uint64_t ino, uint64_t newparent, const char *newname,
		   struct pmfuse_attr *attr)
{
	struct entry_fill ef = { 0 };
	struct pmfuse_blk_hdr *leaf, *dleaf;
	struct pmfuse_inode *ip, *dp;
	struct pmfuse_timestamp now;
	struct pmfuse_tx *tx = NULL;
	struct dir d;
	bool linkable;
	struct dfind f;
	size_t len;
	int rc;

	rc = name_check(newname, &len);
	if (rc)
		return rc;
	fs_ilock(fs, (struct pmfuse_ilock_req[]){ { ino, true }, { newparent, true } }, 2);
	fs_wrlock(fs);
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc)
		goto out;
	rc = prepare_create(fs, newparent, newname, len, false, &dp, &dleaf, &f);
	if (rc)
		goto out;
	if (S_ISDIR(pmfuse_le32(ip->mode))) {
		rc = -EPERM;
		goto out;
	}
	/* an unlinked file stays unlinked; an O_TMPFILE one may get its first name */
	linkable = pmfuse_le32(ip->flags) & PMFUSE_INODE_LINKABLE;
	if (!pmfuse_le32(ip->nlink) && !linkable) {
		rc = -ENOENT;
		goto out;
	}
	if (pmfuse_le32(ip->nlink) >= PMFUSE_LINK_MAX) {
		rc = -EMLINK;
		goto out;
	}
	/* no inode is created or freed: the located records stay put */
	tx = pmfuse_tx_begin(fs->txm);
	dir_open(fs, dp, dleaf, &d);
	rc = dirent_insert(tx, &d, &f, newname, len, ino, pmfuse_le32(ip->mode));
	if (!rc && linkable)
		rc = pmfuse_orphan_del(fs, tx, ino);
	if (!rc && linkable) {
		rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);  /* the orphan tree may have moved it */
		if (!rc)
			rc = pmfuse_inode_locate(fs, newparent, &dp, &dleaf);
		if (!rc)
			rc = dirty(tx, leaf, ip);
		if (!rc) {
			pmfuse_set_le32(&ip->flags, pmfuse_le32(ip->flags) & ~PMFUSE_INODE_LINKABLE);
			pmfuse_tx_seal(tx);
		}
	}
	if (rc)
		goto out;
	pmfuse_timestamp_now(&now);
	rc = dir_changed(tx, dleaf, dp, &now, 1, 0);
	if (!rc)
		rc = target_changed(tx, leaf, ip, &now, 1);
out:
	rc = entry_commit(fs, tx, rc, ino, attr);
	if (!rc)
		entry_fill_dir(fs, dp, attr, &ef);   /* no inode was inserted: dp is still it */
	fs_unlock(fs);
	entry_fill_put(fs, &ef, newname, len, attr);
	fs_iunlock(fs);
	return rc;
}

/* ---- removing ------------------------------------------------------------------------------- */

static int remove_entry(struct pmfuse_fs *fs, uint64_t parent, const char *name, bool rmdir)
{
	struct pmfuse_blk_hdr *dleaf, *leaf;
	struct pmfuse_inode *dp, *ip;
	struct pmfuse_timestamp now;
	struct pmfuse_tx *tx = NULL;
	struct dir d;
	bool gone = false;
	struct dfind f;
	uint64_t ino = 0, peek;
	uint32_t mode;
	size_t len;
	int rc;

	rc = name_check(name, &len);
	if (rc)
		return rc;
	if (is_dot(name, len))
		return rmdir ? (len == 1 ? -EINVAL : -ENOTEMPTY) : -EISDIR;
again:
	peek = name_peek(fs, parent, name, len);
	fs_ilock(fs, (struct pmfuse_ilock_req[]){ { parent, true }, { peek, true } }, 2);
	fs_wrlock(fs);
	if (fs->readonly) {
		rc = -EROFS;
		goto out;
	}
	rc = get_dir(fs, parent, false, &dp, &dleaf);
	if (rc)
		goto out;
	dir_open(fs, dp, dleaf, &d);
	rc = dir_find(&d, name, len, &f);
	if (!rc && !f.found)
		rc = -ENOENT;
	if (rc)
		goto out;
	ino = pmfuse_le64(f.de.ino);
	if (ino != peek) {
		/* renamed or replaced since it was peeked: lock the inode it names now */
		fs_unlock(fs);
		fs_iunlock(fs);
		goto again;
	}
	rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
	if (rc == -ENOENT)
		rc = PMFUSE_CORRUPT("directory %llu: entry \"%s\" names missing inode %llu",
				    (unsigned long long)parent, name, (unsigned long long)ino);
	if (rc)
		goto out;
	mode = pmfuse_le32(ip->mode);
	if (rmdir && !S_ISDIR(mode)) {
		rc = -ENOTDIR;
		goto out;
	}
	if (!rmdir && S_ISDIR(mode)) {
		rc = -EISDIR;
		goto out;
	}
	if (rmdir && pmfuse_dir_entries(ip)) {
		rc = -ENOTEMPTY;
		goto out;
	}
	tx = pmfuse_tx_begin(fs->txm);
	rc = dirent_delete(tx, &d, &f);
	if (rc)
		goto out;
	pmfuse_timestamp_now(&now);
	rc = dir_changed(tx, dleaf, dp, &now, -1, rmdir ? -1 : 0);
	if (!rc)
		rc = target_changed(tx, leaf, ip, &now, -1);
	if (rc)
		goto out;
	gone = !pmfuse_le32(ip->nlink);
	if (gone) {
		/* last: dropping the record moves the records located above */
		rc = pmfuse_inode_drop(fs, tx, ip);
		if (rc == 0)
			rc = pmfuse_orphan_add(fs, tx, ino);
		else if (rc == 1)
			gone = false;
		if (rc < 0)
			goto out;
		rc = 0;
	}
	pmfuse_tx_commit(tx);
	tx = NULL;
	if (gone)
		release(fs, ino);
out:
	if (tx)
		pmfuse_tx_abort(tx);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}

int pmfuse_fs_unlink(struct pmfuse_fs *fs, uint64_t parent, const char *name)
{
	return remove_entry(fs, parent, name, false);
}

int pmfuse_fs_rmdir(struct pmfuse_fs *fs, uint64_t parent, const char *name)
{
	return remove_entry(fs, parent, name, true);
}

/* ---- rename --------------------------------------------------------------------------------- */

/* One side of a rename: a directory, the entry looked up in it, and the inode it names. */
struct side {
	uint64_t dir;
	struct pmfuse_inode *dp;
	struct pmfuse_blk_hdr *dleaf;
	struct dir d;
	struct dfind f;
	size_t len;
	struct pmfuse_inode *ip;       /* NULL when the entry does not exist */
	struct pmfuse_blk_hdr *leaf;
	bool is_dir;
};

/* Validates a rename of src to dst: every error that does not come from lack of space. */
static int rename_check(struct pmfuse_fs *fs, struct side *s, struct side *d, unsigned flags)
{
	int sd, dd;
	int rc;

	if (flags & PMFUSE_RENAME_EXCHANGE) {
		if (!d->ip)
			return -ENOENT;
	} else if (d->ip && (flags & PMFUSE_RENAME_NOREPLACE)) {
		return -EEXIST;
	}
	/* moving a directory below itself */
	if (s->is_dir && s->dir != d->dir &&
	    (rc = check_not_ancestor(fs, pmfuse_le64(s->ip->ino), d->dir)))
		return rc;
	if (d->ip && d->is_dir && s->dir != d->dir &&
	    (rc = check_not_ancestor(fs, pmfuse_le64(d->ip->ino), s->dir)))
		return (flags & PMFUSE_RENAME_EXCHANGE) ? rc : -ENOTEMPTY;
	if (d->ip && pmfuse_le64(d->f.de.ino) == pmfuse_le64(s->f.de.ino))
		return 1;   /* two names of one inode: nothing to do */
	if (d->ip && !(flags & PMFUSE_RENAME_EXCHANGE)) {
		if (s->is_dir && !d->is_dir)
			return -ENOTDIR;
		if (!s->is_dir && d->is_dir)
			return -EISDIR;
		if (d->is_dir && pmfuse_dir_entries(d->ip))
			return -ENOTEMPTY;
	}
	if (s->dir == d->dir)
		return 0;
	/* subdirectory counts of the two parents */
	sd = s->is_dir;
	dd = d->ip && d->is_dir;
	if (flags & PMFUSE_RENAME_EXCHANGE) {
		if (sd > dd && pmfuse_le32(d->dp->nlink) >= PMFUSE_LINK_MAX)
			return -EMLINK;
		if (dd > sd && pmfuse_le32(s->dp->nlink) >= PMFUSE_LINK_MAX)
			return -EMLINK;
	} else if (sd && !dd && pmfuse_le32(d->dp->nlink) >= PMFUSE_LINK_MAX) {
		return -EMLINK;
	}
	return 0;
}

static int side_open(struct pmfuse_fs *fs, struct side *sd, uint64_t dir, const char *name,
		     bool live)
{
	int rc;

	memset(sd, 0, sizeof(*sd));
	sd->dir = dir;
	rc = name_check(name, &sd->len);
	if (rc)
		return rc;
	if (is_dot(name, sd->len))
		return -EINVAL;
	rc = get_dir(fs, dir, live, &sd->dp, &sd->dleaf);
	if (rc)
		return rc;
	dir_open(fs, sd->dp, sd->dleaf, &sd->d);
	rc = dir_find(&sd->d, name, sd->len, &sd->f);
	if (rc || !sd->f.found)
		return rc;
	rc = pmfuse_inode_locate(fs, pmfuse_le64(sd->f.de.ino), &sd->ip, &sd->leaf);
	if (rc == -ENOENT)
		return PMFUSE_CORRUPT("directory %llu: entry \"%s\" names missing inode %llu",
				      (unsigned long long)dir, name,
				      (unsigned long long)pmfuse_le64(sd->f.de.ino));
	if (rc)
		return rc;
	sd->is_dir = S_ISDIR(pmfuse_le32(sd->ip->mode));
	return 0;
}

/* A plain rename: dst's entry (if any) now names src's inode, src's entry goes. */
static int rename_move(struct pmfuse_fs *fs, struct pmfuse_tx *tx, struct side *s,
		       struct side *d, const char *newname, bool *orphaned)
{
	struct pmfuse_timestamp now;
	bool cross = s->dir != d->dir;
	uint32_t smode = pmfuse_le32(s->ip->mode);
	uint64_t sino = pmfuse_le64(s->ip->ino);
	int rc;

	if (d->ip)
		rc = dirent_retarget(tx, &d->d, &d->f, sino, smode);
	else
		rc = dirent_insert(tx, &d->d, &d->f, newname, d->len, sino, smode);
	if (!rc)
		rc = dirent_delete(tx, &s->d, &s->f);
	if (rc)
		return rc;
	pmfuse_timestamp_now(&now);
	/* the new parent: one more entry unless one was replaced; the moved and the replaced
	 * directory's ".." come and go */
	rc = dir_changed(tx, d->dleaf, d->dp, &now, d->ip ? 0 : 1,
			 (s->is_dir && cross) - (d->ip && d->is_dir));
	if (!rc)
		rc = dir_changed(tx, s->dleaf, s->dp, &now, -1, -(s->is_dir && cross));
	if (!rc)
		rc = dirty(tx, s->leaf, s->ip);
	if (rc)
		return rc;
	s->ip->ctime = now;
	if (s->is_dir && cross)
		pmfuse_set_le64(&s->ip->parent, d->dir);
	pmfuse_tx_seal(tx);
	if (d->ip) {
		rc = target_changed(tx, d->leaf, d->ip, &now, -1);
		if (rc)
			return rc;
		*orphaned = !pmfuse_le32(d->ip->nlink);
		if (*orphaned) {
			/* last: dropping the record moves the records located above */
			rc = pmfuse_inode_drop(fs, tx, d->ip);
			if (rc == 0)
				rc = pmfuse_orphan_add(fs, tx, pmfuse_le64(d->ip->ino));
			else if (rc == 1)
				*orphaned = false;
			if (rc > 0)
				rc = 0;
		}
	}
	return rc;
}

/* RENAME_EXCHANGE: the two entries swap their inodes. */
static int rename_swap(struct pmfuse_tx *tx, struct side *s, struct side *d)
{
	struct pmfuse_timestamp now;
	bool cross = s->dir != d->dir;
	int rc, delta = 0;

	rc = dirent_retarget(tx, &s->d, &s->f, pmfuse_le64(d->ip->ino),
			     pmfuse_le32(d->ip->mode));
	if (!rc)
		rc = dirent_retarget(tx, &d->d, &d->f, pmfuse_le64(s->ip->ino),
				     pmfuse_le32(s->ip->mode));
	if (rc)
		return rc;
	if (cross)
		delta = (int)s->is_dir - (int)d->is_dir;    /* subdirectories d->dp gains */
	pmfuse_timestamp_now(&now);
	rc = dir_changed(tx, d->dleaf, d->dp, &now, 0, delta);
	if (!rc)
		rc = dir_changed(tx, s->dleaf, s->dp, &now, 0, -delta);
	if (!rc)
		rc = dirty(tx, s->leaf, s->ip);
	if (!rc)
		rc = dirty(tx, d->leaf, d->ip);
	if (rc)
		return rc;
	s->ip->ctime = now;
	d->ip->ctime = now;
	if (cross && s->is_dir)
		pmfuse_set_le64(&s->ip->parent, d->dir);
	if (cross && d->is_dir)
		pmfuse_set_le64(&d->ip->parent, s->dir);
	pmfuse_tx_seal(tx);
	return 0;
}

int pmfuse_fs_rename(struct pmfuse_fs *fs, uint64_t parent, const char *name,
		     uint64_t newparent, const char *newname, unsigned flags)
{
	struct pmfuse_tx *tx = NULL;
	struct side s, d;
	bool orphaned = false;
	uint64_t sino, dino;
	int rc;

	size_t len;

	if ((flags & ~(PMFUSE_RENAME_NOREPLACE | PMFUSE_RENAME_EXCHANGE)) ||
	    flags == (PMFUSE_RENAME_NOREPLACE | PMFUSE_RENAME_EXCHANGE))
		return -EINVAL;
	/* both names are checked before anything is looked up, as path resolution would */
	if ((rc = name_check(name, &len)) || (rc = name_check(newname, &len)))
		return rc;
	if (fs->readonly)
		return -EROFS;
again:
	/* both directories and both names' inodes, in lock order (name_peek) */
	sino = name_peek(fs, parent, name, strlen(name));
	dino = name_peek(fs, newparent, newname, strlen(newname));
	fs_ilock(fs, (struct pmfuse_ilock_req[]){ { parent, true }, { newparent, true },
						   { sino, true }, { dino, true } }, 4);
	fs_wrlock(fs);
	rc = side_open(fs, &s, parent, name, false);
	if (!rc && !s.ip)
		rc = -ENOENT;
	if (!rc)
		rc = side_open(fs, &d, newparent, newname, true);
	if (!rc && ((s.ip && pmfuse_le64(s.f.de.ino) != sino) ||
		    (d.ip ? pmfuse_le64(d.f.de.ino) : 0) != dino)) {
		fs_unlock(fs);
		fs_iunlock(fs);
		goto again;
	}
	if (!rc)
		rc = rename_check(fs, &s, &d, flags);
	if (rc) {
		if (rc > 0)
			rc = 0;
		goto out;
	}
	/* only the two directory trees change: every located record stays put */
	tx = pmfuse_tx_begin(fs->txm);
	if (flags & PMFUSE_RENAME_EXCHANGE)
		rc = rename_swap(tx, &s, &d);
	else
		rc = rename_move(fs, tx, &s, &d, newname, &orphaned);
	if (rc)
		goto out;
	pmfuse_tx_commit(tx);
	tx = NULL;
	if (orphaned)
		release(fs, pmfuse_le64(d.f.de.ino));
out:
	if (tx)
		pmfuse_tx_abort(tx);
	fs_unlock(fs);
	fs_iunlock(fs);
	return rc;
}
