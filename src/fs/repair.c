/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Repair for fsck (fs/repair.h). Derived state is rebuilt from primary state, in rounds; a
 * round reads the whole filesystem once and then makes the first kind of fix it needs, in this
 * order, so that each kind of fix can trust what the kinds before it established:
 *
 *   collect   every tree is read with pmfuse_btree_salvage: its nodes are metadata blocks, its
 *             readable records the primary state (extents outside the data area or overlapping
 *             the one before are dropped like unreadable records). A tree that fails
 *             pmfuse_btree_check or lost something is "damaged". Nothing is written.
 *   scratch   a reserved root of the state block left non-empty (a rebuild cut by a crash) is
 *             emptied; its nodes are leaked until the bitmap step frees them.
 *   bitmap    the bitmap becomes exactly the blocks found in use (one transaction per bitmap
 *             block, a damaged bitmap block written anew), then the allocator index is rebuilt.
 *             A block only an unreadable node pointed to is lost in any case; every block that
 *             is read from is marked used, so the rebuilds below never allocate over them.
 *   trees     a damaged tree is rebuilt from its readable records into fresh blocks under the
 *             scratch root (batches of records per transaction), then one transaction switches
 *             its root to the new tree and empties the scratch root. The old nodes are leaked
 *             until the next round's bitmap step. A crash leaves the old tree in place.
 *   refcount  the refcount tree must say, for every block mapped more than once, how many
 *             extents map it (computed by a sweep over all extents); when it does not, it is
 *             rebuilt as a damaged tree is.
 *   names     directory entries naming nothing, an inode of another type, the root, a removed
 *             directory or a directory named elsewhere already are removed; directories in a
 *             loop or named by no entry, and files with links but no name, get a name in
 *             /lost+found (made if missing) as "#ino".
 *   counts    link counts, directory sizes, directory parents ("..") and block counts are set to
 *             what the entries and extents say; the orphan list gains every inode with no link
 *             and loses every record naming no inode; the state block's next inode number and
 *             generation are raised above every inode's.
 *
 * Rounds go on until one finds nothing to do (at most MAX_ROUNDS). Every transaction restores
 * one rule without breaking another, so a crash between any two leaves the pool mountable and a
 * further repair finishes the work: a half-built scratch tree is only leaked blocks, a bitmap
 * half-rewritten marks every block in use that is, and the name and count fixes each change one
 * entry or one inode.
 */
#include "fs/repair.h"

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
#define MAX_ROUNDS 8
#define BATCH 64                 /* records inserted per transaction of a rebuild */
#define SCRATCH (PMFUSE_STATE_ROOTS - 1)
#define NONE SIZE_MAX

/* A growable array. */
struct vec {
	void *v;
	size_t n, cap, size;
};

static void *vec_push(struct vec *a)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 256;
		void *v = realloc(a->v, cap * a->size);

		if (!v)
			return NULL;
		a->v = v;
		a->cap = cap;
	}
	return (char *)a->v + a->n++ * a->size;
}

#define VEC_AT(a, type, i) (&((type *)(a).v)[i])

/* A pool extent found in the trees: +1 at pos for a start, -1 for an end. */
struct ev {
	uint64_t pos;
	int32_t delta;
	uint8_t meta;
	uint8_t pad[3];
};

/* What the namespace needs of one inode (sorted by ino: the table's order). */
struct rino {
	struct pmfuse_inode *ip;    /* collect: the record the salvage read, and its leaf */
	struct pmfuse_blk_hdr *leaf;
	uint64_t ino, parent, size, blocks, gen;
	uint64_t mapped;         /* sum of extent lengths */
	uint64_t names, entries, subdirs;
	size_t named_in;         /* directories: index of the directory naming it, or NONE */
	uint32_t mode, nlink;
	uint8_t orphan, reach, lost;
	uint8_t split;           /* directories: PMFUSE_INODE_SHORT_NAMES */
};

/* An xattr value block run whose bytes after the value are not zero. */
struct xtail {
	uint64_t ino, blk, off, len;
};

/* A file's last block (pool block blk), written, with EOF at byte off of it: its bytes from off
 * on must be zero (E5 of extent.c); a block mapped by two files (a double claim made shared) or
 * a torn truncate breaks that. Read by fix_ftails, in the rounds that get that far. */
struct ftail {
	uint64_t ino, fblock, blk;
	uint32_t off;
};

/* One directory entry. */
struct rent {
	size_t dir;              /* index into inos */
	size_t t;                /* index into inos of the inode it names, or NONE */
	uint64_t key, ino;
	uint8_t type, drop;
	uint8_t tree, namelen;   /* 0 long-entry tree, 1 short; the name's length */
	uint8_t dup;             /* short entry whose key the long tree also has */
};

/* Pool blocks [a, b) that a verified tree node or an xattr value uses and some file maps. */
struct clash {
	uint64_t a, b;
};

/* A damaged tree to rebuild: which (kind) of which inode. */
enum { T_INODES, T_ORPHANS, T_MAP, T_XATTRS, T_INLINE, T_SDIR };
struct rtree {
	uint64_t ino;
	int kind;
};

struct rp {
	struct pmfuse_fs *fs;
	const struct pmfuse_repair_ops *ops;
	struct pmfuse_repair_result *res;
	bool preen;
	uint64_t data_start, data_end, block_count;
	struct vec evs, inos, ents, bad, orphans, rcrecs, xtails;
	struct vec ftails;       /* files whose last block holds bytes past EOF (struct ftail) */
	struct vec clashes;      /* pool ranges used as metadata and as file data (sweep): the
				    files lose them (struct clash, sorted) */
	size_t *ino_index;       /* inode number -> index into inos (NONE: none), when the
				    numbers are dense enough (collect); else NULL */
	uint64_t ino_index_len;
	bool refcount_damaged;
	bool incomplete;         /* some inode's trees were not read: free nothing this round */
	bool names_pending;      /* preen: a name fix needs a decision, so counts wait */
	bool table_rebuilt;      /* the inode table was rebuilt: a missing root is remade */
	uint64_t changes;        /* fixes made this round */
	int err;
};

__attribute__((format(printf, 2, 3)))
static void fixed(struct rp *r, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	r->ops->fixed(r->ops->arg, buf);
	r->res->fixed++;
	r->changes++;
}

__attribute__((format(printf, 2, 3)))
static void left(struct rp *r, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	r->ops->left(r->ops->arg, buf);
	r->res->left++;
}

static int commit(struct rp *r, struct pmfuse_tx *tx, int rc)
{
	if (rc) {
		pmfuse_tx_abort(tx);
		return rc;
	}
	rc = pmfuse_tx_commit(tx);
	if (!rc)
		r->res->transactions++;
	return rc;
}

static const char *kind_name(int kind)
{
	static const char *const n[] = { "inode table", "orphan list", "map", "xattrs",
					 "inline map", "short names" };
	return n[kind];
}

/* ---- collect ------------------------------------------------------------------------------- */

static void ev_add(struct rp *r, uint64_t start, uint64_t len, bool meta)
{
	struct ev *e;

	if (r->err)
		return;
	if (!(e = vec_push(&r->evs))) {
		r->err = -ENOMEM;
		return;
	}
	*e = (struct ev){ start, +1, meta, { 0 } };
	if (!(e = vec_push(&r->evs))) {
		r->err = -ENOMEM;
		return;
	}
	*e = (struct ev){ start + len, -1, meta, { 0 } };
}

static bool in_data(const struct rp *r, uint64_t start, uint64_t len)
{
	return len && start >= r->data_start && start <= r->data_end &&
	       len <= r->data_end - start;
}

/* One tree of the salvage: records go to rec (may keep them), nodes to the events. */
struct walk {
	struct rp *r;
	struct rino *ino;        /* per-inode trees */
	uint64_t prev_end;       /* extents: end of the last one kept */
	uint64_t dropped;        /* records refused here */
	struct vec *keep;        /* a rebuild: the records kept, else NULL */
	int kind;
};

static int keep_rec(struct walk *w, const void *rec, size_t len)
{
	void *p;

	if (!w->keep)
		return 0;
	if (!(p = vec_push(w->keep)))
		return -ENOMEM;
	memcpy(p, rec, len);
	return 0;
}

/* Whether pool blocks [p, p + len) meet a clash range (r->clashes is empty outside a round's
 * fixes, after its sweep). */
static bool clashes_with(const struct rp *r, uint64_t p, uint64_t len)
{
	const struct clash *c = r->clashes.v;
	size_t lo = 0, hi = r->clashes.n;

	while (lo < hi) {     /* the first range ending after p */
		size_t mid = lo + (hi - lo) / 2;

		if (c[mid].b <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < r->clashes.n && c[lo].a < p + len;
}

/* Calls emit with each piece of extent x outside the clash ranges (x itself when none meets
 * it): the file keeps what it maps alone, the blocks a tree node holds read as a hole. */
static int cut_clashes(const struct rp *r, const struct pmfuse_extent *x,
		       int (*emit)(void *arg, const struct pmfuse_extent *piece), void *arg)
{
	const struct clash *c = r->clashes.v;
	uint64_t f = pmfuse_le64(x->fblock), p = pmfuse_le64(x->pblock);
	uint64_t end = p + pmfuse_le32(x->len);
	int rc;

	for (size_t i = 0; i < r->clashes.n && p < end; i++) {
		if (c[i].b <= p)
			continue;
		if (c[i].a >= end)
			break;
		if (c[i].a > p) {
			struct pmfuse_extent piece = *x;

			pmfuse_set_le64(&piece.fblock, f);
			pmfuse_set_le64(&piece.pblock, p);
			pmfuse_set_le32(&piece.len, (uint32_t)(c[i].a - p));
			if ((rc = emit(arg, &piece)))
				return rc;
		}
		f += PMFUSE_MIN(c[i].b, end) - p;
		p = PMFUSE_MIN(c[i].b, end);
	}
	if (p < end) {
		struct pmfuse_extent piece = *x;

		pmfuse_set_le64(&piece.fblock, f);
		pmfuse_set_le64(&piece.pblock, p);
		pmfuse_set_le32(&piece.len, (uint32_t)(end - p));
		return emit(arg, &piece);
	}
	return 0;
}

static int keep_piece(void *arg, const struct pmfuse_extent *piece)
{
	return keep_rec(arg, piece, sizeof(*piece));
}

/* E5: if written extent x maps file e's last block, it is noted for fix_ftails; a file on the
 * orphan list may be in the middle of a truncate and is left alone. */
static bool on_orphans(const struct rp *r, uint64_t ino);

static int tail_check(struct rp *r, const struct rino *e, const struct pmfuse_extent *x)
{
	uint32_t bs = r->fs->bs, off = (uint32_t)(e->size % bs);
	uint64_t f = pmfuse_le64(x->fblock), eof_blk = e->size / bs;
	struct ftail *t;

	if (!off || eof_blk < f || eof_blk - f >= pmfuse_le32(x->len) ||
	    (pmfuse_le32(x->flags) & PMFUSE_EXTENT_UNWRITTEN) || on_orphans(r, e->ino))
		return 0;
	if (!(t = vec_push(&r->ftails)))
		return -ENOMEM;
	*t = (struct ftail){ e->ino, eof_blk, pmfuse_le64(x->pblock) + (eof_blk - f), off };
	return 0;
}

static int extent_rec(void *arg, const void *rec)
{
	struct walk *w = arg;
	struct pmfuse_extent x;
	uint64_t f, p, len;

	memcpy(&x, rec, sizeof(x));
	f = pmfuse_le64(x.fblock);
	p = pmfuse_le64(x.pblock);
	len = pmfuse_le32(x.len);
	if (!in_data(w->r, p, len) || f < w->prev_end) {
		w->dropped++;
		return 0;
	}
	w->prev_end = f + len;
	if (!w->keep) {
		w->ino->mapped += len;
		ev_add(w->r, p, len, false);
		return w->r->err ? w->r->err : tail_check(w->r, w->ino, &x);
	}
	return cut_clashes(w->r, &x, keep_piece, w);
}

static int xattr_rec(void *arg, const void *rec)
{
	struct walk *w = arg;
	const struct pmfuse_xattr *x = rec;
	uint64_t blk = pmfuse_le64(x->value_blk), n = pmfuse_le32(x->value_blocks);

	if (blk) {
		if (!in_data(w->r, blk, n)) {
			w->dropped++;
			return 0;
		}
		if (!w->keep) {
			uint32_t vlen = pmfuse_le32(x->value_len), bs = w->r->fs->bs;
			const uint8_t *v = pmfuse_volume_block(w->r->fs->vol, blk);
			struct xtail *t;

			ev_add(w->r, blk, n, true);
			/* E5-like rule of xattr values: zeros after the value */
			if ((uint64_t)vlen <= n * bs) {
				for (uint64_t i = vlen; i < n * bs; i++) {
					if (!v[i])
						continue;
					if (!(t = vec_push(&w->r->xtails)))
						return -ENOMEM;
					*t = (struct xtail){ w->ino->ino, blk, vlen, n * bs - vlen };
					break;
				}
			}
		}
	}
	return w->r->err ? w->r->err : keep_rec(w, rec, sizeof(*x));
}

static size_t find_ino(const struct rp *r, uint64_t ino);

/* (collect reads the whole inode table before any directory: the index is final) */
static int ent_push(struct walk *w, struct pmfuse_le64 key, struct pmfuse_le64 ino,
		    uint8_t type, uint8_t namelen, uint8_t tree)
{
	struct rent *e;

	if (w->keep)
		return 0;
	if (!(e = vec_push(&w->r->ents)))
		return -ENOMEM;
	*e = (struct rent){ .dir = (size_t)(w->ino - (struct rino *)w->r->inos.v),
			    .key = pmfuse_le64(key), .ino = pmfuse_le64(ino), .type = type,
			    .tree = tree, .namelen = namelen };
	e->t = find_ino(w->r, e->ino);
	return 0;
}

static int dirent_rec(void *arg, const void *rec)
{
	const struct pmfuse_dirent *de = rec;
	int rc = ent_push(arg, de->key, de->ino, de->type, de->namelen, 0);

	return rc ? rc : keep_rec(arg, rec, sizeof(*de));
}

static int sdirent_rec(void *arg, const void *rec)
{
	const struct pmfuse_sdirent *de = rec;
	int rc = ent_push(arg, de->key, de->ino, de->type, de->namelen, 1);

	return rc ? rc : keep_rec(arg, rec, sizeof(*de));
}

static void walk_node(void *arg, uint64_t blk)
{
	struct walk *w = arg;

	ev_add(w->r, blk, 1, true);
}

/* Reads one per-inode tree (salvage), adding its nodes to the events unless it is a rebuild's
 * second reading (w->keep); *damaged if it lost anything or fails the structural check. */
static int walk_tree(struct walk *w, const struct pmfuse_btree *bt, bool *damaged)
{
	struct pmfuse_btree_salvage_ops so = { .node = w->keep ? NULL : walk_node, .arg = w };
	uint64_t dropped;
	int rc;

	if (w->kind == T_XATTRS)
		so.rec = xattr_rec;
	else if (w->kind == T_SDIR)
		so.rec = sdirent_rec;
	else
		so.rec = S_ISDIR(w->ino->mode) ? dirent_rec : extent_rec;
	rc = pmfuse_btree_salvage(bt, &so, &dropped);
	if (rc)
		return rc;
	*damaged = dropped || w->dropped || pmfuse_btree_check(bt, NULL, NULL, NULL, 0);
	return w->r->err;
}

static int add_bad(struct rp *r, uint64_t ino, int kind)
{
	struct rtree *t = vec_push(&r->bad);

	if (!t)
		return -ENOMEM;
	*t = (struct rtree){ ino, kind };
	return 0;
}

static int inode_rec(void *arg, const void *rec)
{
	struct walk *w = arg;
	const struct pmfuse_inode *ip = rec;
	struct rino *e = vec_push(&w->r->inos);

	if (!e)
		return -ENOMEM;
	memset(e, 0, sizeof(*e));
	e->ip = (struct pmfuse_inode *)ip;
	e->leaf = pmfuse_volume_block(w->r->fs->vol,
				      pmfuse_pool_offset(w->r->fs->pool, ip) / w->r->fs->bs);
	e->ino = pmfuse_le64(ip->ino);
	e->parent = pmfuse_le64(ip->parent);
	e->size = pmfuse_le64(ip->size);
	e->blocks = pmfuse_le64(ip->blocks);
	e->gen = pmfuse_le64(ip->generation);
	e->mode = pmfuse_le32(ip->mode);
	e->nlink = pmfuse_le32(ip->nlink);
	e->named_in = NONE;
	return keep_rec(w, rec, sizeof(*ip));
}

static int orphan_rec(void *arg, const void *rec)
{
	struct walk *w = arg;
	struct pmfuse_orphan o;
	uint64_t *p = vec_push(&w->r->orphans);

	if (!p)
		return -ENOMEM;
	memcpy(&o, rec, sizeof(o));
	*p = pmfuse_le64(o.ino);
	return keep_rec(w, rec, sizeof(o));
}

static int refcount_rec(void *arg, const void *rec)
{
	struct walk *w = arg;
	void *p = vec_push(&w->r->rcrecs);

	if (!p)
		return -ENOMEM;
	memcpy(p, rec, sizeof(struct pmfuse_refcount_rec));
	return 0;
}

static size_t find_ino(const struct rp *r, uint64_t ino)
{
	const struct rino *v = r->inos.v;
	size_t lo = 0, hi = r->inos.n;

	if (r->ino_index)
		return ino < r->ino_index_len ? r->ino_index[ino] : NONE;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (v[mid].ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < r->inos.n && v[lo].ino == ino ? lo : NONE;
}

static void vec_reset(struct vec *a, size_t size)
{
	a->n = 0;
	a->size = size;
}

/*
 * The records of an inline map (format.md) that the check accepts, in slot order, into kept
 * (native copies of the records); returns how many slots are dropped: a record breaking a rule
 * of check_extents (unknown flags, unwritten without the feature or in a symlink, outside the
 * data area, past the largest file, overlapping the one before) and a used slot after a free one.
 * After a sweep, the records are also cut around the clash ranges (cut_clashes).
 */
struct inline_out {
	struct pmfuse_extent *kept;
	unsigned *n, over;
};

static int inline_piece(void *arg, const struct pmfuse_extent *piece)
{
	struct inline_out *o = arg;

	if (*o->n < PMFUSE_INLINE_EXTENTS)
		o->kept[(*o->n)++] = *piece;
	else
		o->over++;
	return 0;
}

static unsigned inline_keep(const struct rp *r, const struct pmfuse_inode *ip,
			    struct pmfuse_extent kept[PMFUSE_INLINE_EXTENTS], unsigned *nkept)
{
	static const struct pmfuse_extent zero_rec;
	struct pmfuse_extent in[PMFUSE_INLINE_EXTENTS];
	unsigned nin = 0;
	bool unw_ok = pmfuse_le64(r->fs->vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN;
	uint64_t fmax = pmfuse_file_blocks_max(r->fs->bs), prev_end = 0;
	bool ended = false;
	unsigned dropped = 0;

	*nkept = 0;
	for (unsigned k = 0; k < PMFUSE_INLINE_EXTENTS; k++) {
		struct pmfuse_extent x;
		uint64_t f, p, len;
		uint32_t flags;

		memcpy(&x, &ip->inline_map[k], sizeof(x));
		len = pmfuse_le32(x.len);
		if (ended || !len) {
			ended = true;
			dropped += memcmp(&x, &zero_rec, sizeof(x)) != 0;
			continue;
		}
		f = pmfuse_le64(x.fblock);
		p = pmfuse_le64(x.pblock);
		flags = pmfuse_le32(x.flags);
		if ((flags & ~PMFUSE_EXTENT_FLAGS_KNOWN) ||
		    ((flags & PMFUSE_EXTENT_UNWRITTEN) &&
		     (!unw_ok || S_ISLNK(pmfuse_le32(ip->mode)))) ||
		    !in_data(r, p, len) || f < prev_end || f > fmax - len) {
			dropped++;
			continue;
		}
		prev_end = f + len;
		in[nin++] = x;
	}
	/* then the pieces outside clash ranges (none during collect); more pieces than slots
	 * lose the last ones */
	for (unsigned k = 0; k < nin; k++) {
		struct inline_out o = { kept, nkept, 0 };

		cut_clashes(r, &in[k], inline_piece, &o);
		dropped += o.over;
	}
	return dropped;
}

/* The inode number -> index table of find_ino, when the largest number is below 4 per inode
 * (as on any pool that was not damaged there): one look-up per directory entry a pass, instead
 * of a binary search over the whole array (cache misses). The inos are sorted (table order). */
static int index_inos(struct rp *r)
{
	const struct rino *v = r->inos.v;
	uint64_t len = r->inos.n ? v[r->inos.n - 1].ino + 1 : 0;

	free(r->ino_index);
	r->ino_index = NULL;
	r->ino_index_len = 0;
	if (!len || len > 4 * (uint64_t)r->inos.n + 1024)
		return 0;
	for (size_t i = 1; i < r->inos.n; i++)
		if (v[i].ino <= v[i - 1].ino)
			return 0;       /* not sorted (cannot be after a salvage): search */
	if (!(r->ino_index = malloc(len * sizeof(*r->ino_index))))
		return -ENOMEM;
	for (uint64_t k = 0; k < len; k++)
		r->ino_index[k] = NONE;
	for (size_t i = 0; i < r->inos.n; i++)
		r->ino_index[v[i].ino] = i;
	r->ino_index_len = len;
	return 0;
}

static int collect(struct rp *r)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_btree_salvage_ops so;
	struct pmfuse_btree rt;
	struct walk w;
	uint64_t dropped;
	bool table_sound;
	int rc;

	vec_reset(&r->evs, sizeof(struct ev));
	vec_reset(&r->inos, sizeof(struct rino));
	vec_reset(&r->ents, sizeof(struct rent));
	vec_reset(&r->bad, sizeof(struct rtree));
	vec_reset(&r->orphans, sizeof(uint64_t));
	vec_reset(&r->rcrecs, sizeof(struct pmfuse_refcount_rec));
	vec_reset(&r->xtails, sizeof(struct xtail));
	vec_reset(&r->clashes, sizeof(struct clash));
	vec_reset(&r->ftails, sizeof(struct ftail));
	free(r->ino_index);          /* stale until index_inos */
	r->ino_index = NULL;
	r->incomplete = false;

	memset(&w, 0, sizeof(w));
	w.r = r;
	so = (struct pmfuse_btree_salvage_ops){ .node = walk_node, .rec = inode_rec, .arg = &w };
	if ((rc = pmfuse_btree_salvage(&fs->inodes, &so, &dropped)))
		return rc;
	if (r->err)
		return r->err;
	if ((rc = index_inos(r)))
		return rc;
	/* a sound table: every record the salvage read is the one a lookup finds (no lookups) */
	table_sound = !dropped && !pmfuse_btree_check(&fs->inodes, NULL, NULL, NULL, 0);
	if (!table_sound && (rc = add_bad(r, 0, T_INODES)))
		return rc;
	so.rec = orphan_rec;
	if ((rc = pmfuse_btree_salvage(&fs->orphans, &so, &dropped)))
		return rc;
	if (dropped || pmfuse_btree_check(&fs->orphans, NULL, NULL, NULL, 0))
		if ((rc = add_bad(r, 0, T_ORPHANS)))
			return rc;
	/* the refcount tree's nodes are in use; its records are compared with the extents later */
	pmfuse_refcount_tree(fs->vol, &rt);
	so.rec = refcount_rec;
	if ((rc = pmfuse_btree_salvage(&rt, &so, &dropped)))
		return rc;
	r->refcount_damaged = dropped || pmfuse_btree_check(&rt, NULL, NULL, NULL, 0);
	for (size_t i = 0; i < r->inos.n && !r->err; i++) {
		struct rino *e = VEC_AT(r->inos, struct rino, i);
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_btree bt;
		bool damaged;

		if (table_sound) {
			ip = e->ip;
			leaf = e->leaf;
			rc = 0;
		} else {
			rc = pmfuse_inode_locate(fs, e->ino, &ip, &leaf);
		}
		if (rc == -ENOENT || rc == -EUCLEAN) {
			/* read by the salvage but not found by a lookup: the table's structure
			 * is at fault; its trees are not walked, so this round may not free
			 * blocks (r->incomplete) and the table is rebuilt */
			r->incomplete = true;
			if (!r->bad.n || VEC_AT(r->bad, struct rtree, 0)->kind != T_INODES) {
				if ((rc = add_bad(r, 0, T_INODES)))
					return rc;
				/* first in the list: the other rebuilds locate inodes */
				struct rtree *b = r->bad.v, t = b[r->bad.n - 1];

				memmove(b + 1, b, (r->bad.n - 1) * sizeof(*b));
				b[0] = t;
			}
			continue;
		}
		if (rc)
			return rc;
		if ((S_ISREG(e->mode) || S_ISLNK(e->mode)) &&
		    (pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP)) {
			/* an inline map (format.md): its good records count like a tree's; bad
			 * ones are dropped by the trees step (their blocks freed as any dropped
			 * extent's: the bitmap step already does not count them) */
			struct pmfuse_extent kept[PMFUSE_INLINE_EXTENTS];
			unsigned nkept;

			if (inline_keep(r, ip, kept, &nkept) && (rc = add_bad(r, e->ino, T_INLINE)))
				return rc;
			for (unsigned k = 0; k < nkept; k++) {
				e->mapped += pmfuse_le32(kept[k].len);
				ev_add(r, pmfuse_le64(kept[k].pblock), pmfuse_le32(kept[k].len),
				       false);
				if ((rc = tail_check(r, e, &kept[k])))
					return rc;
			}
		} else if (S_ISREG(e->mode) || S_ISLNK(e->mode) || S_ISDIR(e->mode)) {
			memset(&w, 0, sizeof(w));
			w.r = r;
			w.ino = e;
			w.kind = T_MAP;
			pmfuse_inode_tree(fs, ip, leaf, &ip->map, S_ISDIR(e->mode) ?
					  &pmfuse_dirent_ops : &pmfuse_extent_ops, &bt);
			if ((rc = walk_tree(&w, &bt, &damaged)))
				return rc;
			if (damaged && (rc = add_bad(r, e->ino, T_MAP)))
				return rc;
		}
		e->split = S_ISDIR(e->mode) && (pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES);
		if (e->split) {
			memset(&w, 0, sizeof(w));
			w.r = r;
			w.ino = e;
			w.kind = T_SDIR;
			pmfuse_inode_tree(fs, ip, leaf, &ip->sdir, &pmfuse_sdirent_ops, &bt);
			if ((rc = walk_tree(&w, &bt, &damaged)))
				return rc;
			if (damaged && (rc = add_bad(r, e->ino, T_SDIR)))
				return rc;
		}
		memset(&w, 0, sizeof(w));
		w.r = r;
		w.ino = e;
		w.kind = T_XATTRS;
		pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, &bt);
		if ((rc = walk_tree(&w, &bt, &damaged)))
			return rc;
		if (damaged && (rc = add_bad(r, e->ino, T_XATTRS)))
			return rc;
	}
	return r->err;
}

/* ---- the sweep: blocks in use, and the refcounts extents imply ------------------------------ */

static int ev_cmp(const void *a, const void *b)
{
	const struct ev *x = a, *y = b;

	if (x->pos != y->pos)
		return x->pos < y->pos ? -1 : 1;
	return (x->delta > y->delta) - (x->delta < y->delta);   /* ends first */
}

static void bits_set(uint64_t *bm, uint64_t a, uint64_t b)
{
	for (; a < b && (a & 63); a++)
		bm[a / 64] |= 1ull << (a & 63);
	for (; a + 64 <= b; a += 64)
		bm[a / 64] = ~0ull;
	for (; a < b; a++)
		bm[a / 64] |= 1ull << (a & 63);
}

/* Appends a refcount record, merging with the previous one when they touch with equal counts. */
static int rc_emit(struct vec *out, uint64_t a, uint64_t b, uint64_t count)
{
	while (a < b) {
		struct pmfuse_refcount_rec *p = out->n ? VEC_AT(*out, struct pmfuse_refcount_rec,
							       out->n - 1) : NULL;
		uint64_t len = b - a;

		if (p && pmfuse_le64(p->start) + pmfuse_le32(p->len) == a &&
		    pmfuse_le32(p->refcount) == count && pmfuse_le32(p->len) < PMFUSE_EXTENT_MAX_LEN) {
			uint64_t room = PMFUSE_EXTENT_MAX_LEN - pmfuse_le32(p->len);

			if (len > room)
				len = room;
			pmfuse_set_le32(&p->len, (uint32_t)(pmfuse_le32(p->len) + len));
		} else {
			if (len > PMFUSE_EXTENT_MAX_LEN)
				len = PMFUSE_EXTENT_MAX_LEN;
			if (!(p = vec_push(out)))
				return -ENOMEM;
			memset(p, 0, sizeof(*p));
			pmfuse_set_le64(&p->start, a);
			pmfuse_set_le32(&p->len, (uint32_t)len);
			pmfuse_set_le32(&p->refcount, (uint32_t)count);
		}
		a += len;
	}
	return 0;
}

/*
 * Sorts the events; sets used (block_count bits) for every block some tree uses and fills want
 * with the refcount records the extents imply. A block used as metadata and as file data goes to
 * r->clashes: the metadata keeps it (a tree node that verified, magic, own number, owner and
 * crc, holds a node's bytes, not the file's) and the files lose it (mark_clashes). A block used
 * twice as metadata is reported (left): nothing here can tell which owner is right.
 */
static int sweep(struct rp *r, uint64_t *used, struct vec *want)
{
	struct ev *v = r->evs.v;
	int64_t data = 0, meta = 0;
	unsigned clashes = 0;
	int rc;

	if (r->evs.n)
		qsort(v, r->evs.n, sizeof(*v), ev_cmp);
	for (size_t i = 0; i < r->evs.n; i++) {
		uint64_t a = v[i].pos, b;

		if (v[i].meta)
			meta += v[i].delta;
		else
			data += v[i].delta;
		if (i + 1 == r->evs.n || v[i + 1].pos == a)
			continue;
		b = v[i + 1].pos;
		if (!meta && !data)
			continue;
		bits_set(used, a, b);
		if (meta && data) {
			struct clash *c = r->clashes.n ? VEC_AT(r->clashes, struct clash,
								 r->clashes.n - 1) : NULL;

			if (c && c->b == a)
				c->b = b;
			else if (!(c = vec_push(&r->clashes)))
				return -ENOMEM;
			else
				*c = (struct clash){ a, b };
		}
		if (meta > 1 && clashes++ < 8)
			left(r, "blocks %llu+%llu are used %lld times as metadata and %lld times as "
			     "data: not repaired", ULL(a), ULL(b - a), (long long)meta,
			     (long long)data);
		if (!meta && data > 1 && (rc = rc_emit(want, a, b, (uint64_t)data)))
			return rc;
	}
	return 0;
}

/* Whether inode ino is already to be rebuilt (kind T_MAP or T_INLINE). */
static bool map_bad(const struct rp *r, uint64_t ino)
{
	for (size_t i = 0; i < r->bad.n; i++) {
		const struct rtree *t = VEC_AT(r->bad, struct rtree, i);

		if (t->ino == ino && (t->kind == T_MAP || t->kind == T_INLINE))
			return true;
	}
	return false;
}

/* Every file mapping a clash range gets its map rewritten without it (the trees step: rebuild
 * and fix_inline cut the records around the ranges). */
static int mark_clashes(struct rp *r)
{
	struct pmfuse_fs *fs = r->fs;

	for (size_t i = 0; i < r->inos.n && r->clashes.n; i++) {
		const struct rino *e = VEC_AT(r->inos, struct rino, i);
		struct pmfuse_btree_cursor cur;
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_btree bt;
		bool inl, hit = false;
		unsigned k = 0;
		int rc;

		if (!(S_ISREG(e->mode) || S_ISLNK(e->mode)) || map_bad(r, e->ino) ||
		    pmfuse_inode_locate(fs, e->ino, &ip, &leaf))
			continue;
		inl = pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP;
		pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_extent_ops, &bt);
		for (rc = inl ? 0 : pmfuse_btree_first(&cur, &bt); !rc && !hit;
		     rc = inl ? (++k < PMFUSE_INLINE_EXTENTS ? 0 : -ENOENT) :
		     pmfuse_btree_next(&cur)) {
			struct pmfuse_extent x;

			memcpy(&x, inl ? (const void *)&ip->inline_map[k] :
			       pmfuse_btree_cursor_rec(&cur), sizeof(x));
			hit = pmfuse_le32(x.len) &&
			      in_data(r, pmfuse_le64(x.pblock), pmfuse_le32(x.len)) &&
			      clashes_with(r, pmfuse_le64(x.pblock), pmfuse_le32(x.len));
		}
		if (!hit)
			continue;
		if (r->preen) {
			left(r, "inode %llu maps blocks a tree node or xattr value uses: needs -y to "
			     "unmap them from the file", ULL(e->ino));
			continue;
		}
		if ((rc = add_bad(r, e->ino, inl ? T_INLINE : T_MAP)))
			return rc;
		fixed(r, "inode %llu maps blocks a tree node or xattr value uses: the file loses "
		      "them (they read as zeros)", ULL(e->ino));
	}
	return 0;
}

/* ---- scratch root and bitmap ---------------------------------------------------------------- */

static int fix_scratch(struct rp *r)
{
	struct pmfuse_state *st = r->fs->vol->state;
	struct pmfuse_tx *tx;
	int rc;

	for (unsigned i = 0; i < PMFUSE_STATE_ROOTS; i++) {
		if (i == PMFUSE_ROOT_INODES || i == PMFUSE_ROOT_REFCOUNT || i == PMFUSE_ROOT_ORPHANS)
			continue;
		static const struct pmfuse_btree_root zero;
		if (!memcmp(&st->roots[i], &zero, sizeof(zero)))
			continue;
		tx = pmfuse_tx_begin(r->fs->txm);
		rc = pmfuse_tx_add_meta(tx, &st->hdr, &st->roots[i], sizeof(st->roots[i]));
		if (!rc)
			memset(&st->roots[i], 0, sizeof(st->roots[i]));
		if ((rc = commit(r, tx, rc)))
			return rc;
		fixed(r, "state block: reserved root %u was not empty (a repair cut short?): emptied",
		      i);
	}
	return 0;
}

static void geom_of(const struct pmfuse_fs *fs, struct pmfuse_alloc_geom *g)
{
	const struct pmfuse_sb *sb = &fs->vol->sb;

	*g = (struct pmfuse_alloc_geom){
		.block_size = fs->bs,
		.block_count = pmfuse_le64(sb->block_count),
		.bitmap_start = pmfuse_le64(sb->bitmap_start),
		.bitmap_blocks = pmfuse_le64(sb->bitmap_blocks),
		.data_start = pmfuse_le64(sb->data_start),
		.sb2_block = pmfuse_le64(sb->sb2_block),
	};
}

/* Uses al for every allocation from now on. */
static void set_alloc(struct pmfuse_fs *fs, struct pmfuse_alloc *al)
{
	fs->vol->alloc = fs->alloc = al;
	fs->inodes.alloc = fs->orphans.alloc = al;
}

/* The bit of block b as the bitmap should hold it. */
static bool want_bit(const struct rp *r, const struct pmfuse_alloc_geom *g, const uint64_t *used,
		     uint64_t b)
{
	if (b < g->data_start || b >= g->sb2_block)
		return true;           /* below the data area, the secondary superblock, past the end */
	(void)r;
	return used[b / 64] >> (b & 63) & 1;
}

/*
 * The bitmap := used. One transaction per bitmap block that differs, declaring only the words
 * that change (or the whole block, written anew, when it fails its checks). The allocator index
 * is closed meanwhile and rebuilt after.
 */
static int fix_bitmap(struct rp *r, const uint64_t *used)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_alloc_geom g;
	uint64_t bpb, wpb, freed = 0, marked = 0, *want;
	struct pmfuse_alloc *al;
	unsigned rewritten = 0;
	int rc = 0;

	geom_of(fs, &g);
	bpb = PMFUSE_BITMAP_BITS(fs->bs);
	wpb = bpb / 64;
	if (!(want = malloc(wpb * sizeof(*want))))
		return -ENOMEM;
	if ((al = fs->alloc)) {
		set_alloc(fs, NULL);
		pmfuse_alloc_close(al);
	}
	for (uint64_t i = 0; i < g.bitmap_blocks && !rc; i++) {
		uint64_t blk = g.bitmap_start + i, lo = wpb, hi = 0;
		struct pmfuse_bitmap_blk *bb = pmfuse_volume_block(fs->vol, blk);
		bool sound;
		struct pmfuse_tx *tx;

		for (uint64_t j = 0; j < wpb; j++) {
			uint64_t w = 0, base = i * bpb + j * 64;

			for (unsigned k = 0; k < 64; k++)
				if (want_bit(r, &g, used, base + k))
					w |= 1ull << k;
			want[j] = w;
		}
		sound = !pmfuse_blk_verify(&bb->hdr, PMFUSE_BLK_BITMAP, blk, PMFUSE_OWNER_FS, fs->bs) &&
			pmfuse_le64(bb->first_block) == i * bpb && !pmfuse_le16(bb->hdr.level) &&
			!pmfuse_le16(bb->hdr.nrecs) && !pmfuse_le32(bb->hdr.pad) &&
			!pmfuse_le64(bb->pad[0]) && !pmfuse_le64(bb->pad[1]) &&
			!pmfuse_le64(bb->pad[2]);
		if (sound) {
			for (uint64_t j = 0; j < wpb; j++) {
				uint64_t have = pmfuse_le64(bb->words[j]);

				if (r->incomplete)
					want[j] |= have;     /* only mark, never free */
				if (have == want[j])
					continue;
				freed += (uint64_t)__builtin_popcountll(have & ~want[j]);
				marked += (uint64_t)__builtin_popcountll(want[j] & ~have);
				if (j < lo)
					lo = j;
				hi = j;
			}
			if (lo == wpb)
				continue;
			tx = pmfuse_tx_begin(fs->txm);
			rc = pmfuse_tx_add_meta(tx, &bb->hdr, &bb->words[lo], (hi - lo + 1) * 8);
			for (uint64_t j = lo; !rc && j <= hi; j++)
				pmfuse_set_le64(&bb->words[j], want[j]);
			rc = commit(r, tx, rc);
			continue;
		}
		if (r->incomplete)          /* what it held is unknown: all in use until a later round */
			for (uint64_t j = 0; j < wpb; j++)
				want[j] = ~0ull;
		tx = pmfuse_tx_begin(fs->txm);
		rc = pmfuse_tx_add(tx, bb, fs->bs);
		if (!rc) {
			pmfuse_blk_init(&bb->hdr, PMFUSE_BLK_BITMAP, blk, PMFUSE_OWNER_FS, 0, fs->bs);
			pmfuse_set_le64(&bb->first_block, i * bpb);
			for (uint64_t j = 0; j < wpb; j++)
				pmfuse_set_le64(&bb->words[j], want[j]);
			pmfuse_blk_seal(&bb->hdr, fs->bs);
		}
		rc = commit(r, tx, rc);
		if (!rc)
			rewritten++;
	}
	free(want);
	if (rewritten)
		fixed(r, "free-space bitmap: %u damaged block%s written anew from the blocks in use",
		      rewritten, rewritten == 1 ? "" : "s");
	if (freed)
		fixed(r, "free-space bitmap: %llu block%s marked in use but owned by nothing: freed",
		      ULL(freed), freed == 1 ? "" : "s");
	if (marked)
		fixed(r, "free-space bitmap: %llu block%s in use but marked free: marked in use",
		      ULL(marked), marked == 1 ? "" : "s");
	if (rc)
		return rc;
	rc = pmfuse_alloc_open(fs->pool, &g, &al);
	if (!rc)
		set_alloc(fs, al);
	return rc;
}

/* ---- rebuilding a tree ---------------------------------------------------------------------- */

static int keep_any(void *arg, const void *rec)
{
	struct vec *v = arg;
	void *p = vec_push(v);

	if (!p)
		return -ENOMEM;
	memcpy(p, rec, v->size);
	return 0;
}

/*
 * Builds a tree of recs (sorted, unique keys) under the scratch root, then switches: dst (a root
 * in the state block, or in the inode ino's record when ino != 0) takes the scratch root and
 * the scratch root is emptied, in one transaction. The old tree's nodes are leaked.
 */
static int build_switch(struct rp *r, const struct pmfuse_btree_ops *ops, uint64_t owner,
			const struct vec *recs, unsigned state_root, uint64_t ino, int kind)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_state *st = fs->vol->state;
	struct pmfuse_btree nb;
	struct pmfuse_tx *tx;
	int rc = 0;

	pmfuse_btree_init(&nb, fs->pool, fs->alloc, ops, &st->roots[SCRATCH], &st->hdr, owner, fs->bs);
	nb.edge_fill = pmfuse_volume_edge_fill(fs->vol);
	for (size_t i = 0; i < recs->n && !rc; i += BATCH) {
		tx = pmfuse_tx_begin(fs->txm);
		for (size_t j = i; j < recs->n && j < i + BATCH && !rc; j++)
			rc = pmfuse_btree_insert(tx, &nb, (const char *)recs->v + j * recs->size);
		rc = commit(r, tx, rc);
	}
	if (rc)
		return rc;
	tx = pmfuse_tx_begin(fs->txm);
	if (ino) {
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;

		rc = pmfuse_inode_locate(fs, ino, &ip, &leaf);
		if (!rc)
			rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
		if (!rc)
			memcpy(kind == T_XATTRS ? &ip->xattrs :
			       kind == T_SDIR ? &ip->sdir : &ip->map,
			       &st->roots[SCRATCH], sizeof(st->roots[SCRATCH]));
	} else {
		rc = pmfuse_tx_add_meta(tx, &st->hdr, &st->roots[state_root],
					sizeof(st->roots[state_root]));
		if (!rc)
			memcpy(&st->roots[state_root], &st->roots[SCRATCH],
			       sizeof(st->roots[SCRATCH]));
	}
	if (!rc)
		rc = pmfuse_tx_add_meta(tx, &st->hdr, &st->roots[SCRATCH],
					sizeof(st->roots[SCRATCH]));
	if (!rc)
		memset(&st->roots[SCRATCH], 0, sizeof(st->roots[SCRATCH]));
	return commit(r, tx, rc);
}

/* An inline map keeps its good records (inline_keep), in one transaction; with none left the
 * inode has an empty map (no INLINE_MAP flag). Its block count is set by the counts step. */
static int fix_inline(struct rp *r, uint64_t ino)
{
	struct pmfuse_extent kept[PMFUSE_INLINE_EXTENTS];
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;
	unsigned nkept, dropped;
	int rc;

	rc = pmfuse_inode_locate(r->fs, ino, &ip, &leaf);
	if (rc)
		return rc;
	dropped = inline_keep(r, ip, kept, &nkept);
	tx = pmfuse_tx_begin(r->fs->txm);
	rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
	if (!rc) {
		memset(ip->inline_map, 0, sizeof(ip->inline_map));
		memcpy(ip->inline_map, kept, nkept * sizeof(kept[0]));
		if (!nkept)
			pmfuse_set_le32(&ip->flags,
					pmfuse_le32(ip->flags) & ~PMFUSE_INODE_INLINE_MAP);
	}
	rc = commit(r, tx, rc);
	if (!rc)
		fixed(r, "inode %llu: inline extent map: %u bad record%s dropped, %u kept (blocks "
		      "lost read as zeros)", ULL(ino), dropped, dropped == 1 ? "" : "s", nkept);
	return rc;
}

static int rebuild(struct rp *r, const struct rtree *t)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_btree_salvage_ops so;
	struct vec keep = { 0 };
	uint64_t dropped = 0;
	int rc;

	if (t->kind == T_INLINE)
		return fix_inline(r, t->ino);
	if (t->kind == T_INODES || t->kind == T_ORPHANS) {
		struct pmfuse_btree *bt = t->kind == T_INODES ? &fs->inodes : &fs->orphans;

		keep.size = bt->ops->rec_len;
		so = (struct pmfuse_btree_salvage_ops){ .rec = keep_any, .arg = &keep };
		rc = pmfuse_btree_salvage(bt, &so, &dropped);
		if (!rc)
			rc = build_switch(r, bt->ops, bt->owner, &keep,
					  t->kind == T_INODES ? PMFUSE_ROOT_INODES :
					  PMFUSE_ROOT_ORPHANS, 0, t->kind);
		if (!rc && t->kind == T_INODES)
			r->table_rebuilt = true;
		if (!rc)
			fixed(r, "%s: damaged, rebuilt from its %llu readable records (%llu nodes or "
			      "records dropped)", kind_name(t->kind), ULL(keep.n), ULL(dropped));
	} else {
		size_t i = find_ino(r, t->ino);
		struct rino e = *VEC_AT(r->inos, struct rino, i);
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_btree bt;
		struct walk w = { .r = r, .ino = &e, .keep = &keep, .kind = t->kind };
		bool damaged;

		rc = pmfuse_inode_locate(fs, t->ino, &ip, &leaf);
		if (rc)
			return rc;
		if (t->kind == T_XATTRS)
			pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, &bt);
		else if (t->kind == T_SDIR)
			pmfuse_inode_tree(fs, ip, leaf, &ip->sdir, &pmfuse_sdirent_ops, &bt);
		else
			pmfuse_inode_tree(fs, ip, leaf, &ip->map, S_ISDIR(e.mode) ?
					  &pmfuse_dirent_ops : &pmfuse_extent_ops, &bt);
		keep.size = bt.ops->rec_len;
		rc = walk_tree(&w, &bt, &damaged);
		if (!rc)
			rc = build_switch(r, bt.ops, bt.owner, &keep, 0, t->ino, t->kind);
		if (!rc)
			fixed(r, "inode %llu: %s %s damaged, rebuilt from its %llu readable records%s",
			      ULL(t->ino), t->kind == T_XATTRS ? "xattrs" : t->kind == T_SDIR ?
			      "short-name directory" : S_ISDIR(e.mode) ?
			      "directory" : "extent map", "was", ULL(keep.n),
			      t->kind == T_MAP && !S_ISDIR(e.mode) ? " (blocks lost read as "
			      "zeros)" : "");
	}
	free(keep.v);
	return rc;
}

/* ---- refcounts ------------------------------------------------------------------------------ */

static int fix_refcount(struct rp *r, const struct vec *want)
{
	struct pmfuse_btree rt;
	int rc;

	if (!r->refcount_damaged && want->n == r->rcrecs.n &&
	    (!want->n || !memcmp(want->v, r->rcrecs.v, want->n * want->size)))
		return 0;
	pmfuse_refcount_tree(r->fs->vol, &rt);
	rc = build_switch(r, rt.ops, rt.owner, want, PMFUSE_ROOT_REFCOUNT, 0, T_INODES);
	if (!rc)
		fixed(r, "refcount tree: %s the extent maps: rebuilt from them (%llu records, "
		      "was %llu)", r->refcount_damaged ? "damaged, or disagreed with" :
		      "disagreed with", ULL(want->n), ULL(r->rcrecs.n));
	return rc;
}

/* ---- names ---------------------------------------------------------------------------------- */

static unsigned dt_of(uint32_t mode)
{
	return (mode & S_IFMT) >> 12;
}

/* Counts what the entries not dropped say. */
static void count_names(struct rp *r)
{
	struct rino *v = r->inos.v;

	for (size_t i = 0; i < r->inos.n; i++) {
		v[i].names = v[i].entries = v[i].subdirs = 0;
		v[i].named_in = NONE;
	}
	for (size_t k = 0; k < r->ents.n; k++) {
		struct rent *e = VEC_AT(r->ents, struct rent, k);
		size_t t;

		if (e->drop)
			continue;
		t = e->t;
		v[e->dir].entries++;
		v[t].names++;
		if (S_ISDIR(v[t].mode)) {
			v[e->dir].subdirs++;
			v[t].named_in = e->dir;
		}
	}
}

/* A symlink whose target was lost: nothing can make it valid again. */
static bool broken_link(const struct rino *e)
{
	return S_ISLNK(e->mode) && e->size && !e->mapped;
}

static int key_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Marks the short entries whose key the same directory's long tree also has (keys are readdir
 * cookies: unique across both trees). A directory's entries were collected together. */
static int mark_dups(struct rp *r)
{
	uint64_t *keys = NULL;
	size_t cap = 0;

	for (size_t a = 0, b; a < r->ents.n; a = b) {
		struct rent *v = r->ents.v;
		size_t n = 0;

		for (b = a; b < r->ents.n && v[b].dir == v[a].dir; b++)
			if (!v[b].tree) {
				if (n == cap) {
					uint64_t *k = realloc(keys, (cap = cap ? 2 * cap : 64) *
								  sizeof(*k));

					if (!k) {
						free(keys);
						return -ENOMEM;
					}
					keys = k;
				}
				keys[n++] = v[b].key;
			}
		if (!n)
			continue;
		qsort(keys, n, sizeof(*keys), key_cmp);
		for (size_t i = a; i < b; i++)
			v[i].dup = v[i].tree && bsearch(&v[i].key, keys, n, sizeof(*keys), key_cmp);
	}
	free(keys);
	return 0;
}

/* Marks the entries to remove (e->drop); the reason for each goes to *why. */
static const char *entry_fault(struct rp *r, struct rent *e, size_t root)
{
	struct rino *v = r->inos.v;
	size_t t = e->t;

	if (v[e->dir].split ? e->tree != (e->namelen <= PMFUSE_SHORT_NAME_MAX) : e->tree)
		return "is in the wrong tree for its name's length";
	if (e->dup)
		return "has a key its directory's long-name tree also has";
	if (t == NONE)
		return "names an inode that does not exist";
	if (e->type != dt_of(v[t].mode))
		return "has the wrong type for its inode";
	if (t == root)
		return "names the root directory";
	if (broken_link(&v[t]))
		return "names a symlink whose target was lost";
	if (!v[e->dir].nlink && e->dir != root)
		return "is in a removed directory";
	if (S_ISDIR(v[t].mode)) {
		if (!v[t].nlink)
			return "names a removed directory";
		if (v[t].named_in != NONE)
			return "is a second name of a directory";
		v[t].named_in = e->dir;
	}
	return NULL;
}

static int drop_entry(struct rp *r, const struct rent *e)
{
	struct pmfuse_fs *fs = r->fs;
	uint64_t dino = VEC_AT(r->inos, struct rino, e->dir)->ino;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp;
	struct pmfuse_btree bt;
	struct pmfuse_le64 key;
	struct pmfuse_tx *tx;
	int rc;

	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_locate(fs, dino, &dp, &leaf);
	if (!rc) {
		if (e->tree)
			pmfuse_inode_tree(fs, dp, leaf, &dp->sdir, &pmfuse_sdirent_ops, &bt);
		else
			pmfuse_inode_tree(fs, dp, leaf, &dp->map, &pmfuse_dirent_ops, &bt);
		pmfuse_set_le64(&key, e->key);
		rc = pmfuse_btree_delete(tx, &bt, &key, NULL);
	}
	return commit(r, tx, rc);
}

/* Looks up or makes /lost+found; *lf gets its number. */
static int lost_found(struct rp *r, uint64_t *lf)
{
	static const char name[] = "lost+found";
	struct pmfuse_cred cred = { .uid = 0, .gid = 0 };
	struct pmfuse_attr attr;
	int rc;

	rc = pmfuse_fs_lookup(r->fs, PMFUSE_ROOT_INO, name, &attr);
	if (!rc) {
		pmfuse_fs_forget(r->fs, attr.ino, 1);
		if (S_ISDIR(attr.mode)) {
			*lf = attr.ino;
			return 0;
		}
		return -ENOTDIR;
	}
	if (rc != -ENOENT)
		return rc;
	rc = pmfuse_fs_mkdir(r->fs, PMFUSE_ROOT_INO, name, S_IFDIR | 0700, &cred, &attr);
	if (rc)
		return rc;
	r->res->transactions++;
	pmfuse_fs_forget(r->fs, attr.ino, 1);
	fixed(r, "/lost+found did not exist: made");
	*lf = attr.ino;
	return 0;
}

/* Names inode ino "#ino" in directory lf; a directory gets lf as its parent. */
static int reconnect(struct rp *r, uint64_t lf, const struct rino *e)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *dp, *ip;
	struct pmfuse_tx *tx;
	char name[32];
	int rc;

	snprintf(name, sizeof(name), "#%llu", ULL(e->ino));
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_locate(fs, lf, &dp, &leaf);
	if (rc)
		goto out;
	rc = pmfuse_dir_add(fs, tx, dp, leaf, name, e->ino, e->mode);
	if (!rc && S_ISDIR(e->mode)) {
		pmfuse_tx_seal(tx);
		rc = pmfuse_inode_locate(fs, e->ino, &ip, &leaf);
		if (!rc)
			rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
		if (!rc)
			pmfuse_set_le64(&ip->parent, lf);
	}
out:
	return commit(r, tx, rc);
}

/*
 * Entries to remove, then directories and files nothing reaches to /lost+found. Returns with
 * r->changes raised when it changed anything (the counts wait for a round without such changes).
 */
/* Split directories on a pool without the SHORT_DIRS feature (format.md): sets the bit, which
 * makes the pool what its directories say (older code then refuses it, as it must). */
static int fix_short_feature(struct rp *r)
{
	struct pmfuse_tx *tx;
	bool split = false;
	int rc;

	if (pmfuse_le64(r->fs->vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS)
		return 0;
	for (size_t i = 0; i < r->inos.n && !split; i++)
		split = VEC_AT(r->inos, struct rino, i)->split;
	if (!split)
		return 0;
	tx = pmfuse_tx_begin(r->fs->txm);
	rc = commit(r, tx, pmfuse_feature_tx(tx, r->fs, PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS));
	if (!rc)
		fixed(r, "superblock: short-name directories without the short directories "
		      "feature: set");
	return rc;
}

static int fix_names(struct rp *r)
{
	struct rino *v = r->inos.v;
	size_t root = find_ino(r, PMFUSE_ROOT_INO), *path = NULL;
	uint64_t lf = 0;
	int rc = 0;

	if (root == NONE && (r->inos.n || r->table_rebuilt)) {
		struct pmfuse_cred cred = { .uid = 0, .gid = 0 };
		struct pmfuse_tx *tx = pmfuse_tx_begin(r->fs->txm);
		uint64_t ino;

		if (r->preen) {
			left(r, "the root directory is missing: needs -y to make it anew");
			return 0;
		}
		rc = commit(r, tx, pmfuse_inode_create(r->fs, tx, S_IFDIR | 0755, 0, &cred, NULL,
						       &ino));
		if (!rc)
			fixed(r, "the root directory was missing: made anew (what it held goes to "
			      "/lost+found)");
		return rc;
	}
	if (root == NONE)
		return 0;             /* never mounted: no root yet, nothing named */
	if (!S_ISDIR(v[root].mode)) {
		left(r, "the root (inode %llu) is not a directory: the namespace is not repaired",
		     ULL(v[root].ino));
		return 0;
	}
	for (size_t i = 0; i < r->inos.n; i++)
		v[i].named_in = NONE;
	if ((rc = mark_dups(r)))
		return rc;
	for (size_t k = 0; k < r->ents.n && !rc; k++) {
		struct rent *e = VEC_AT(r->ents, struct rent, k);
		const char *why = entry_fault(r, e, root);

		if (!why)
			continue;
		e->drop = 1;
		if (r->preen) {
			r->names_pending = true;
			left(r, "directory %llu: entry for inode %llu %s: needs -y to remove it",
			     ULL(v[e->dir].ino), ULL(e->ino), why);
			continue;
		}
		rc = drop_entry(r, e);
		if (!rc)
			fixed(r, "directory %llu: entry for inode %llu %s: removed", ULL(v[e->dir].ino),
			      ULL(e->ino), why);
	}
	if (rc || r->names_pending)
		return rc;
	count_names(r);
	/* loops: a directory whose chain of "named in" never reaches the root */
	if (!(path = malloc((r->inos.n + 1) * sizeof(*path))))
		return -ENOMEM;
	for (size_t i = 0; i < r->inos.n; i++)
		v[i].reach = 0;                  /* 0 unknown, 1 walking, 2 reaches, 3 does not */
	v[root].reach = 2;
	for (size_t i = 0; i < r->inos.n; i++) {
		size_t x = i, len = 0;
		uint8_t res;

		if (!S_ISDIR(v[i].mode) || v[i].reach || !v[i].nlink)
			continue;
		for (;;) {
			if (v[x].reach >= 2) {
				res = v[x].reach;
				break;
			}
			if (v[x].reach == 1) {
				v[x].lost = 1;   /* a loop: cut it here */
				res = 3;
				break;
			}
			v[x].reach = 1;
			path[len++] = x;
			if (v[x].named_in == NONE) {
				v[x].lost = 1;
				res = 3;
				break;
			}
			x = v[x].named_in;
		}
		while (len)
			v[path[--len]].reach = res;
	}
	free(path);
	for (size_t i = 0; i < r->inos.n && !rc; i++) {
		struct rino *e = &v[i];

		if (i == root || !e->nlink || broken_link(e))
			continue;
		if (S_ISDIR(e->mode) ? !e->lost : e->names > 0)
			continue;
		if (r->preen) {
			r->names_pending = true;
			left(r, "inode %llu (%s): no directory reaches it: needs -y to move it to "
			     "/lost+found", ULL(e->ino), S_ISDIR(e->mode) ? "directory" : "file");
			continue;
		}
		if (!lf && (rc = lost_found(r, &lf)))
			break;
		if (S_ISDIR(e->mode) && e->named_in != NONE) {
			/* in a loop: its name inside the loop goes first */
			for (size_t k = 0; k < r->ents.n && !rc; k++) {
				struct rent *n = VEC_AT(r->ents, struct rent, k);

				if (!n->drop && n->ino == e->ino) {
					n->drop = 1;
					rc = drop_entry(r, n);
				}
			}
		}
		if (!rc)
			rc = reconnect(r, lf, e);
		if (!rc)
			fixed(r, "inode %llu (%s): no directory reached it: moved to /lost+found as "
			      "\"#%llu\"", ULL(e->ino), S_ISDIR(e->mode) ? "directory" : "file",
			      ULL(e->ino));
	}
	if (rc == -ENOTDIR) {
		left(r, "/lost+found is not a directory: unreachable inodes left where they are");
		rc = 0;
	}
	return rc;
}

/* ---- counts --------------------------------------------------------------------------------- */

static bool on_orphans(const struct rp *r, uint64_t ino)
{
	const uint64_t *o = r->orphans.v;
	size_t lo = 0, hi = r->orphans.n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (o[mid] < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < r->orphans.n && o[lo] == ino;
}

static int fix_inode(struct rp *r, struct rino *e, size_t root)
{
	struct pmfuse_fs *fs = r->fs;
	uint32_t nlink = e->nlink;
	uint64_t size = e->size, parent = e->parent, blocks = e->blocks;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;
	char what[160] = "";
	int rc;

	if (S_ISDIR(e->mode)) {
		if (e->nlink || e == VEC_AT(r->inos, struct rino, root))
			nlink = (uint32_t)(2 + e->subdirs);
		size = e->entries;
		if (e->named_in != NONE)
			parent = VEC_AT(r->inos, struct rino, e->named_in)->ino;
		else if (e == VEC_AT(r->inos, struct rino, root))
			parent = e->ino;
	} else {
		nlink = (uint32_t)e->names;
		if (S_ISREG(e->mode) || S_ISLNK(e->mode))
			blocks = e->mapped;
	}
	if (nlink == e->nlink && size == e->size && parent == e->parent && blocks == e->blocks)
		return 0;
	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_locate(fs, e->ino, &ip, &leaf);
	if (!rc)
		rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
	if (!rc) {
		pmfuse_set_le32(&ip->nlink, nlink);
		pmfuse_set_le64(&ip->size, size);
		pmfuse_set_le64(&ip->parent, parent);
		pmfuse_set_le64(&ip->blocks, blocks);
	}
	if ((rc = commit(r, tx, rc)))
		return rc;
	if (nlink != e->nlink)
		snprintf(what + strlen(what), sizeof(what) - strlen(what), ", link count %u -> %u",
			 e->nlink, nlink);
	if (size != e->size)
		snprintf(what + strlen(what), sizeof(what) - strlen(what), ", size %llu -> %llu",
			 ULL(e->size), ULL(size));
	if (parent != e->parent)
		snprintf(what + strlen(what), sizeof(what) - strlen(what), ", \"..\" %llu -> %llu",
			 ULL(e->parent), ULL(parent));
	if (blocks != e->blocks)
		snprintf(what + strlen(what), sizeof(what) - strlen(what),
			 ", block count %llu -> %llu", ULL(e->blocks), ULL(blocks));
	fixed(r, "inode %llu: set%s", ULL(e->ino), what + 1);
	e->nlink = nlink;
	return 0;
}

/* Frees an inode nothing names and nothing can make valid (pmfuse_inode_free: restartable
 * through the orphan list it puts the inode on first). */
static int drop_inode(struct rp *r, struct rino *e)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_tx *tx;
	int rc;

	tx = pmfuse_tx_begin(fs->txm);
	rc = pmfuse_inode_locate(fs, e->ino, &ip, &leaf);
	if (!rc)
		rc = pmfuse_inode_change(tx, leaf, ip, sizeof(*ip));
	if (!rc) {
		pmfuse_set_le32(&ip->nlink, 0);
		pmfuse_set_le64(&ip->blocks, e->mapped);
	}
	if ((rc = commit(r, tx, rc)))
		return rc;
	fs_wrlock(fs);
	rc = pmfuse_inode_free(fs, e->ino);
	fs_unlock(fs);
	if (!rc)
		fixed(r, "inode %llu (symlink): its target was lost and nothing names it: freed",
		      ULL(e->ino));
	return rc;
}

/* Bytes past EOF in a file's last block are zeroed (one transaction each); a block other files
 * map too gets a private copy for this file first (copy-on-write, as a write would), so theirs
 * keep their bytes. */
static int fix_ftails(struct rp *r)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_btree rt;
	int rc = 0;

	pmfuse_refcount_tree(fs->vol, &rt);
	for (size_t k = 0; k < r->ftails.n && !rc; k++) {
		static __thread uint8_t buf[PMFUSE_BLOCK_SIZE_MAX];
		const struct ftail *t = VEC_AT(r->ftails, struct ftail, k);
		uint32_t bs = fs->bs, count = 1;
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_extmap m;
		struct pmfuse_iext x;
		struct pmfuse_tx *tx;
		uint64_t run, blk = t->blk;
		const uint8_t *b;
		uint8_t *p;
		int err;

		/* known zero since the check read it (nothing stored there since: the memo), or
		 * by pread of the bytes past EOF: a first touch of every file's last block through
		 * the mapping costs more on a VM (pool.h) */
		if (pmfuse_pool_memo_zero_from(fs->pool, t->blk, t->off))
			continue;
		b = pmfuse_pool_read_once(fs->pool, t->blk * bs + t->off, bs - t->off, buf, &err);
		if (!b)
			b = (const uint8_t *)pmfuse_volume_block(fs->vol, t->blk) + t->off;
		if (!b[0] && !memcmp(b, b + 1, bs - t->off - 1)) {
			pmfuse_pool_memo_set_zero_from(fs->pool, t->blk, t->off);
			continue;
		}

		fs_wrlock(fs);
		rc = pmfuse_refcount_get(&rt, blk, 1, &count, &run);
		if (!rc && count > 1)
			rc = pmfuse_data_unshare(fs, t->ino, t->fblock * bs, bs);
		if (!rc)
			rc = pmfuse_inode_locate(fs, t->ino, &ip, &leaf);
		if (!rc) {
			pmfuse_extmap_open(&m, fs, ip, leaf);
			rc = pmfuse_extent_find(&m, t->fblock, &x);
		}
		fs_unlock(fs);
		if (rc)
			return rc;
		if (x.fblock > t->fblock || (x.flags & PMFUSE_EXTENT_UNWRITTEN))
			continue;
		blk = x.pblock + (t->fblock - x.fblock);
		p = (uint8_t *)pmfuse_volume_block(fs->vol, blk) + t->off;
		tx = pmfuse_tx_begin(fs->txm);
		rc = pmfuse_tx_add(tx, p, bs - t->off);
		if (!rc)
			memset(p, 0, bs - t->off);
		rc = commit(r, tx, rc);
		if (!rc)
			fixed(r, "inode %llu: bytes past end of file in its last block were not zero: "
			      "zeroed%s", ULL(t->ino), count > 1 ? " in a private copy of the block "
			      "it shared" : "");
	}
	return rc;
}

static int fix_counts(struct rp *r)
{
	struct pmfuse_fs *fs = r->fs;
	struct pmfuse_state *st = fs->vol->state;
	size_t root = find_ino(r, PMFUSE_ROOT_INO);
	uint64_t max_ino = 0, max_gen = 0;
	struct pmfuse_tx *tx;
	int rc = 0;

	for (size_t k = 0; k < r->xtails.n && !rc; k++) {
		const struct xtail *t = VEC_AT(r->xtails, struct xtail, k);
		uint8_t *p = (uint8_t *)pmfuse_volume_block(fs->vol, t->blk) + t->off;

		tx = pmfuse_tx_begin(fs->txm);
		rc = pmfuse_tx_add(tx, p, t->len);
		if (!rc)
			memset(p, 0, t->len);
		rc = commit(r, tx, rc);
		if (!rc)
			fixed(r, "inode %llu: bytes after an xattr value (block %llu) were not zero: "
			      "zeroed", ULL(t->ino), ULL(t->blk));
	}
	if (!rc)
		rc = fix_ftails(r);
	if (rc || root == NONE)
		return rc;
	count_names(r);
	for (size_t i = 0; i < r->inos.n && !rc; i++) {
		struct rino *e = VEC_AT(r->inos, struct rino, i);

		if (e->ino > max_ino)
			max_ino = e->ino;
		if (e->gen > max_gen)
			max_gen = e->gen;
		if (broken_link(e) && !e->names) {
			rc = drop_inode(r, e);
			continue;
		}
		rc = fix_inode(r, e, root);
		if (rc || e->nlink || on_orphans(r, e->ino))
			continue;
		tx = pmfuse_tx_begin(fs->txm);
		rc = commit(r, tx, pmfuse_orphan_add(fs, tx, e->ino));
		if (!rc)
			fixed(r, "inode %llu: no links and not on the orphan list: added (the next "
			      "mount frees it)", ULL(e->ino));
	}
	for (size_t k = 0; k < r->orphans.n && !rc; k++) {
		uint64_t ino = *VEC_AT(r->orphans, uint64_t, k);

		if (find_ino(r, ino) != NONE)
			continue;
		tx = pmfuse_tx_begin(fs->txm);
		rc = commit(r, tx, pmfuse_orphan_del(fs, tx, ino));
		if (!rc)
			fixed(r, "orphan list: inode %llu does not exist: dropped", ULL(ino));
	}
	if (rc)
		return rc;
	if (pmfuse_le64(st->next_ino) <= max_ino || pmfuse_le64(st->generation) <= max_gen) {
		uint64_t ni = pmfuse_le64(st->next_ino), g = pmfuse_le64(st->generation);

		tx = pmfuse_tx_begin(fs->txm);
		rc = pmfuse_tx_add_meta(tx, &st->hdr, &st->next_ino, 3 * sizeof(st->next_ino));
		if (!rc) {
			if (ni <= max_ino)
				pmfuse_set_le64(&st->next_ino, max_ino + 1);
			if (g <= max_gen)
				pmfuse_set_le64(&st->generation, max_gen + 1);
		}
		if ((rc = commit(r, tx, rc)))
			return rc;
		fixed(r, "state block: next inode number and generation raised above every inode's");
	}
	return 0;
}

/* ---- the rounds ----------------------------------------------------------------------------- */

static int round_once(struct rp *r)
{
	struct pmfuse_alloc_geom g;
	struct vec want = { .size = sizeof(struct pmfuse_refcount_rec) };
	uint64_t *used = NULL;
	int rc;

	geom_of(r->fs, &g);
	if ((rc = collect(r)))
		goto out;
	if (r->preen && r->bad.n) {
		for (size_t i = 0; i < r->bad.n; i++) {
			const struct rtree *t = VEC_AT(r->bad, struct rtree, i);

			if (t->ino)
				left(r, "inode %llu: its %s tree is damaged: needs -y to drop what "
				     "cannot be read", ULL(t->ino), kind_name(t->kind));
			else
				left(r, "%s is damaged: needs -y to drop what cannot be read",
				     kind_name(t->kind));
		}
		goto out;
	}
	if ((rc = fix_scratch(r)))
		goto out;
	if (!(used = calloc(g.block_count / 64 + 1, sizeof(*used)))) {
		rc = -ENOMEM;
		goto out;
	}
	if ((rc = sweep(r, used, &want)) || (rc = mark_clashes(r)) ||
	    (rc = fix_bitmap(r, used)))
		goto out;
	if (r->bad.n) {
		/* the inode table first: the other rebuilds locate inodes through it */
		for (size_t i = 0; i < r->bad.n && !rc; i++)
			rc = rebuild(r, VEC_AT(r->bad, struct rtree, i));
		goto out;     /* the next round reads the new trees */
	}
	if ((rc = fix_refcount(r, &want)) || (rc = fix_short_feature(r)))
		goto out;
	{
		uint64_t before = r->changes;

		r->names_pending = false;
		if ((rc = fix_names(r)) || r->changes != before || r->names_pending)
			goto out;
	}
	rc = fix_counts(r);
out:
	free(used);
	free(want.v);
	return rc;
}

int pmfuse_fs_repair(struct pmfuse_fs *fs, bool preen, const struct pmfuse_repair_ops *ops,
		     struct pmfuse_repair_result *res)
{
	struct rp r = { .fs = fs, .ops = ops, .res = res, .preen = preen };
	int rc = 0;

	memset(res, 0, sizeof(*res));
	if (fs->readonly || !fs->txm)
		return -EROFS;
	r.data_start = pmfuse_le64(fs->vol->sb.data_start);
	r.data_end = pmfuse_le64(fs->vol->sb.sb2_block);
	r.block_count = pmfuse_le64(fs->vol->sb.block_count);
	pmfuse_btree_init(&fs->inodes, fs->pool, fs->alloc, fs->inodes.ops, fs->inodes.root,
			  fs->inodes.root_blk, fs->inodes.owner, fs->bs);
	fs->inodes.edge_fill = pmfuse_volume_edge_fill(fs->vol);   /* init clears it */
	do {
		r.changes = 0;
		res->rounds++;
		rc = round_once(&r);
	} while (!rc && r.changes && res->rounds < MAX_ROUNDS);
	if (!rc && r.changes && res->rounds == MAX_ROUNDS)
		left(&r, "repair did not settle in %u rounds: run fsck again", MAX_ROUNDS);
	free(r.evs.v);
	free(r.inos.v);
	free(r.ents.v);
	free(r.bad.v);
	free(r.orphans.v);
	free(r.rcrecs.v);
	free(r.xtails.v);
	free(r.clashes.v);
	free(r.ftails.v);
	free(r.ino_index);
	if (rc)
		return rc;
	return res->left ? -EUCLEAN : 0;
}

/* ---- the state block ------------------------------------------------------------------------ */

/* A sound node of one of the state block's trees, found by scanning the data area. */
struct cand {
	uint64_t blk, owner;
	uint16_t level;
	uint8_t referenced;
};

static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	return (x->blk > y->blk) - (x->blk < y->blk);
}

static int count_rec(void *arg, const void *rec)
{
	(void)rec;
	++*(uint64_t *)arg;
	return 0;
}

struct maxes {
	uint64_t ino, gen;
};

static int inode_max(void *arg, const void *rec)
{
	const struct pmfuse_inode *ip = rec;
	struct maxes *m = arg;

	if (pmfuse_le64(ip->ino) > m->ino)
		m->ino = pmfuse_le64(ip->ino);
	if (pmfuse_le64(ip->generation) > m->gen)
		m->gen = pmfuse_le64(ip->generation);
	return 0;
}

int pmfuse_fs_repair_state(struct pmfuse_volume *vol, const struct pmfuse_repair_ops *ops,
			   struct pmfuse_repair_result *res)
{
	static const uint64_t owners[3] = { PMFUSE_TREE_INODES, PMFUSE_TREE_REFCOUNT,
					    PMFUSE_TREE_ORPHANS };
	static const unsigned slots[3] = { PMFUSE_ROOT_INODES, PMFUSE_ROOT_REFCOUNT,
					   PMFUSE_ROOT_ORPHANS };
	const struct pmfuse_btree_ops *tops[3] = { &pmfuse_inode_ops, NULL, &pmfuse_orphan_ops };
	uint64_t data_start = pmfuse_le64(vol->sb.data_start), sb2 = pmfuse_le64(vol->sb.sb2_block);
	uint64_t sblk = pmfuse_le64(vol->sb.state_block);
	struct pmfuse_state *st = pmfuse_volume_block(vol, sblk);
	struct pmfuse_btree_root roots[3];
	struct rp r = { .ops = ops, .res = res };
	struct vec c = { .size = sizeof(struct cand) };
	struct maxes mx = { 0, 0 };
	struct pmfuse_btree rt;
	struct pmfuse_tx *tx;
	uint32_t bs = vol->block_size;
	int rc = 0;

	memset(res, 0, sizeof(*res));
	if (vol->readonly || !vol->txm)
		return -EROFS;
	pmfuse_refcount_tree(vol, &rt);   /* for its ops: the refcount module owns them */
	tops[1] = rt.ops;
	/* every sound node of those trees that the bitmap (when it can be read) says is in use */
	for (uint64_t b = data_start; b < sb2; b++) {
		const struct pmfuse_blk_hdr *h = pmfuse_volume_block(vol, b);
		uint64_t owner = pmfuse_le64(h->owner);
		struct cand *e;

		if (pmfuse_le32(h->magic) != PMFUSE_BLK_BTREE || pmfuse_le64(h->blkno) != b ||
		    owner < PMFUSE_TREE_INODES || owner > PMFUSE_TREE_ORPHANS ||
		    pmfuse_le16(h->level) >= PMFUSE_BTREE_MAX_LEVELS ||
		    pmfuse_le32(h->crc) != pmfuse_blk_crc(h, bs) ||
		    (vol->alloc && pmfuse_alloc_is_used(vol->alloc, b) != 1))
			continue;
		if (!(e = vec_push(&c))) {
			rc = -ENOMEM;
			goto out;
		}
		*e = (struct cand){ b, owner, pmfuse_le16(h->level), 0 };
	}
	/* a node another node of its tree points to is not a root (keys are 8 bytes: 16-byte
	 * interior entries) */
	for (size_t i = 0; i < c.n; i++) {
		const struct cand *e = VEC_AT(c, struct cand, i);
		const struct pmfuse_blk_hdr *h = pmfuse_volume_block(vol, e->blk);

		if (!e->level)
			continue;
		for (unsigned k = 0; k < pmfuse_le16(h->nrecs) && 32 + 16 * (k + 1) <= bs; k++) {
			struct pmfuse_le64 ch;
			struct cand key = { 0 }, *f;

			memcpy(&ch, (const uint8_t *)h + 32 + 16 * k + 8, 8);
			key.blk = pmfuse_le64(ch);
			f = bsearch(&key, c.v, c.n, c.size, cand_cmp);
			if (f && f->owner == e->owner && f->level + 1 == e->level)
				f->referenced = 1;
		}
	}
	/* per tree, the unreferenced node of the highest level, then of the most records */
	for (unsigned t = 0; t < 3; t++) {
		uint64_t best_n = 0;

		memset(&roots[t], 0, sizeof(roots[t]));
		for (size_t i = 0; i < c.n; i++) {
			const struct cand *e = VEC_AT(c, struct cand, i);
			struct pmfuse_btree_salvage_ops so = { .rec = count_rec };
			struct pmfuse_btree_root cr = { 0 };
			struct pmfuse_btree bt;
			uint64_t n = 0, dropped;

			if (e->owner != owners[t] || e->referenced)
				continue;
			pmfuse_set_le64(&cr.root, e->blk);
			pmfuse_set_le16(&cr.levels, (uint16_t)(e->level + 1));
			pmfuse_btree_init(&bt, vol->pool, NULL, tops[t], &cr, NULL, owners[t], bs);
			so.arg = &n;
			if (pmfuse_btree_salvage(&bt, &so, &dropped))
				continue;
			if (pmfuse_le16(roots[t].levels) > e->level + 1 ||
			    (pmfuse_le16(roots[t].levels) == e->level + 1 && n <= best_n))
				continue;
			roots[t] = cr;
			pmfuse_set_le64(&roots[t].nrecs, n);
			best_n = n;
		}
		if (t == 0 && pmfuse_le16(roots[0].levels)) {
			struct pmfuse_btree_salvage_ops so = { .rec = inode_max, .arg = &mx };
			struct pmfuse_btree bt;
			uint64_t dropped;

			pmfuse_btree_init(&bt, vol->pool, NULL, tops[0], &roots[0], NULL, owners[0], bs);
			pmfuse_btree_salvage(&bt, &so, &dropped);
		}
	}
	tx = pmfuse_tx_begin(vol->txm);
	rc = pmfuse_tx_add(tx, st, bs);
	if (!rc) {
		pmfuse_blk_init(&st->hdr, PMFUSE_BLK_STATE, sblk, PMFUSE_OWNER_FS, 0, bs);
		for (unsigned t = 0; t < 3; t++)
			st->roots[slots[t]] = roots[t];
		pmfuse_set_le64(&st->root_ino, PMFUSE_ROOT_INO);
		pmfuse_set_le64(&st->next_ino, mx.ino >= PMFUSE_ROOT_INO ? mx.ino + 1 :
				PMFUSE_ROOT_INO + 1);
		pmfuse_set_le64(&st->generation, mx.gen + 1);
		pmfuse_blk_seal(&st->hdr, bs);
	}
	if ((rc = commit(&r, tx, rc)))
		goto out;
	vol->state_bad = false;
	fixed(&r, "state block rebuilt: the roots of the inode table (%llu inodes), the refcount "
	      "tree (%llu records) and the orphan list (%llu) found by scanning the pool",
	      ULL(pmfuse_le64(roots[0].nrecs)), ULL(pmfuse_le64(roots[1].nrecs)),
	      ULL(pmfuse_le64(roots[2].nrecs)));
out:
	free(c.v);
	return rc;
}
