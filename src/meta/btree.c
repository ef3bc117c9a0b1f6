/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The generic b+tree: one node per block, an ops table per tree, cursors as a path stack.
 *
 * Node layout (bs = block size, h = 32-byte struct pmfuse_blk_hdr):
 *
 *   leaf      | h: level 0, nrecs n | rec 0 | rec 1 | ... | rec n-1 | zero ... |
 *   interior  | h: level L, nrecs n | key 0, child 0 | ... | key n-1, child n-1 | zero ... |
 *
 * Both kinds are arrays of fixed-size "slots" (rec_len bytes in a leaf, key_len + 8 in an
 * interior node), so one set of slot helpers serves both. Invariants, between operations:
 *
 *   I1 every node verifies: magic, own block number, owner, crc, level = parent's level - 1,
 *      leaves at level 0, the root at level root->levels - 1;
 *   I2 keys inside a node strictly increase;
 *   I3 key i of an interior node equals the smallest key in child i's subtree (exactly, so a
 *      node's first key equals the key its parent holds for it);
 *   I4 every node but the root holds at least max/2 slots; an interior root at least 2; an
 *      empty tree has no node at all (levels = 0, root = 0). With bt->edge_fill (the pool's
 *      EDGE_FILL feature) a node on the right edge (the last of its level) needs only 1;
 *   I5 bytes past the last slot and the header's pad are zero;
 *   I6 root->nrecs is the number of leaf records.
 * pmfuse_btree_check() verifies each of them; the read paths verify I1 and the fill part of I4
 * on every node they visit (cheap, and it keeps a damaged node from steering a modification).
 *
 * Descent: in an interior node take the last slot whose key is <= the search key (slot 0 when
 * the key is smaller than all: that is how a new minimum enters the tree). The path of
 * (block, slot) pairs from root to leaf is all the state an operation or a cursor keeps; there
 * are no sibling pointers, so next/prev climb the path to the first ancestor with a slot to the
 * right (left) and descend along the leftmost (rightmost) edge.
 *
 * Insert, bottom up along the path. A full node splits before taking the new slot; with
 * n = max the node plus the new slot hold n + 1, the left keeps lt = (n + 1) / 2 and the
 * right gets the rest (both >= max/2), and the parent gets (first key of right, right):
 *
 *        parent: [ .. k_a:A  k_b:B .. ]                 [ .. k_a:A  k_m:R  k_b:B .. ]
 *                         |                 ==>                  |     |
 *                A: [k_a .. k_z] + new             A: [k_a .. k_l]   R: [k_m .. k_z]
 *
 * With edge_fill, a split on the right edge for a slot appended at its end (pos = n: the
 * pattern of keys that only grow, such as inode numbers) keeps the full node as it is and starts
 * the new right sibling with the new slot alone, so that ascending inserts leave full nodes
 * behind instead of half-full ones. Only the right-edge node is ever below max/2 that way, and
 * a delete repairs it only when it empties: it leaves its parent (which may empty in turn), so
 * that its left sibling becomes the right edge. A node below max/2 off the edge borrows from or
 * merges with an edge sibling as below (a merge fits: the sibling has at most max/2).
 *
 * A split of the root makes a new root with two slots (levels + 1). A record that becomes the
 * first of its leaf (slot 0) is the new minimum of that leaf, so the key its parent holds for
 * it is rewritten, and so on up while the slot taken on the path is slot 0 (I3).
 *
 * Delete: remove the record; if it was slot 0, rewrite the ancestors' keys as for insert. Then,
 * while a non-root node N on the path is below max/2, repair it through its parent P:
 *
 *   borrow  a sibling has more than max/2: move slots so that both hold half of the total,
 *           and rewrite the parent key of whichever node got a new first slot;
 *
 *        P: [ .. kN:N kR:R .. ]        P: [ .. kN:N kR':R .. ]
 *        N: [a b]  R: [c d e f]  ==>   N: [a b c]  R: [d e f]       (kR' = d)
 *
 *   merge   otherwise (the sibling holds exactly max/2, so both fit in one node): N goes into
 *           its left sibling, or the right sibling into N; the emptied node is freed and its slot
 *           leaves P, which may underflow in turn;
 *
 *        P: [ .. kL:L kN:N .. ]        P: [ .. kL:L .. ]
 *        L: [a b c]  N: [d e]    ==>   L: [a b c d e]   (N freed)
 *
 * Neither moves a first slot of P, so no key above P changes. When the root is an interior node
 * left with one child, that child becomes the root (levels - 1) and the old root is freed.
 *
 * Transactions: every node is declared (pmfuse_tx_add_block) before it changes; a fresh node is
 * declared new. The allocator seals the transaction inside pmfuse_alloc_extent/free, which
 * dequeues every block declared so far from the reseal list; so a node (or the root descriptor)
 * changed after an allocator call is declared again right before that change (a repeated
 * declaration logs nothing, it only queues the reseal). The root descriptor is declared with
 * pmfuse_tx_add_meta when it lives in a metadata block (the block's crc is resealed), else with
 * pmfuse_tx_add. Each modifying function seals the transaction before returning success, so
 * every crc is valid between operations, also inside a larger transaction. On error nothing is
 * undone here: the caller aborts the transaction, which restores the pool and the allocator.
 * The tree handle keeps no DRAM state, so there is nothing else to repair.
 *
 * Limits: key_len <= BT_KEY_MAX (keys are staged in stack buffers), and a leaf and an interior
 * node must hold at least 4 slots each, so that max/2 >= 2 and a non-root node never empties.
 */
#include "meta/btree.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "meta/alloc.h"
#include "pool/pool.h"
#include "tx/tx.h"
#include "util/util.h"

#define BT_KEY_MAX 512u
#define BT_KEY_WORDS (BT_KEY_MAX / 8)
#define BT_HDR ((unsigned)sizeof(struct pmfuse_blk_hdr))
#define BT_MIN_SLOTS 4u

/* One step of a path: a node, and the slot taken in it (the record, for a leaf). */
struct step {
	uint64_t blk;
	unsigned idx;
	struct pmfuse_blk_hdr *h;
	bool edge;            /* the node is the last of its level (the root is) */
};

struct path {
	unsigned levels;                          /* 0: empty tree */
	struct step n[PMFUSE_BTREE_MAX_LEVELS];   /* n[0] is the leaf */
};

/* ---- node layout ---------------------------------------------------------------------------- */

static unsigned cap_fit(uint32_t bs, unsigned len)
{
	unsigned n = (bs - BT_HDR) / len;
	return n > UINT16_MAX ? UINT16_MAX : n;
}

unsigned pmfuse_btree_leaf_max(const struct pmfuse_btree *bt)
{
	return cap_fit(bt->block_size, bt->ops->rec_len);
}

unsigned pmfuse_btree_node_max(const struct pmfuse_btree *bt)
{
	return cap_fit(bt->block_size, bt->ops->key_len + 8u);
}

static unsigned slot_len(const struct pmfuse_btree *bt, unsigned level)
{
	return level ? bt->ops->key_len + 8u : bt->ops->rec_len;
}

static unsigned cap_of(const struct pmfuse_btree *bt, unsigned level)
{
	return level ? pmfuse_btree_node_max(bt) : pmfuse_btree_leaf_max(bt);
}

static unsigned min_of(const struct pmfuse_btree *bt, unsigned level)
{
	return cap_of(bt, level) / 2;
}

/* I4: the fewest slots a node may hold where it is. */
static unsigned fill_min(const struct pmfuse_btree *bt, unsigned level, bool is_root, bool edge)
{
	if (is_root)
		return level ? 2 : 1;
	return edge && bt->edge_fill ? 1 : min_of(bt, level);
}

static unsigned nrecs(const struct pmfuse_blk_hdr *h)
{
	return pmfuse_le16(h->nrecs);
}

static void set_nrecs(struct pmfuse_blk_hdr *h, unsigned n)
{
	pmfuse_set_le16(&h->nrecs, (uint16_t)n);
}

static uint8_t *slot(const struct pmfuse_btree *bt, const struct pmfuse_blk_hdr *h,
		     unsigned level, unsigned i)
{
	return (uint8_t *)h + BT_HDR + (size_t)i * slot_len(bt, level);
}

static uint64_t child_of(const struct pmfuse_btree *bt, const struct pmfuse_blk_hdr *h,
			 unsigned i)
{
	struct pmfuse_le64 c;

	memcpy(&c, slot(bt, h, 1, i) + bt->ops->key_len, sizeof(c));
	return pmfuse_le64(c);
}

/* Copies the key of slot i into out (key_len bytes). */
static void slot_key(const struct pmfuse_btree *bt, const struct pmfuse_blk_hdr *h,
		     unsigned level, unsigned i, void *out)
{
	if (level)
		memcpy(out, slot(bt, h, level, i), bt->ops->key_len);
	else
		bt->ops->key_from_rec(out, slot(bt, h, 0, i));
}

/* Builds an interior slot (key, child) in out. */
static void make_entry(const struct pmfuse_btree *bt, void *out, const void *key, uint64_t child)
{
	struct pmfuse_le64 c;

	pmfuse_set_le64(&c, child);
	memcpy(out, key, bt->ops->key_len);
	memcpy((uint8_t *)out + bt->ops->key_len, &c, sizeof(c));
}

/* cmp(key of slot i, key) */
static int cmp_slot(const struct pmfuse_btree *bt, const struct pmfuse_blk_hdr *h,
		    unsigned level, unsigned i, const void *key)
{
	uint64_t k[BT_KEY_WORDS];

	if (level)
		return bt->ops->cmp_key(slot(bt, h, level, i), key);
	bt->ops->key_from_rec(k, slot(bt, h, 0, i));
	return bt->ops->cmp_key(k, key);
}

/* First slot whose key is >= key; *exact when that slot's key equals key. */
static unsigned lower_bound(const struct pmfuse_btree *bt, const struct pmfuse_blk_hdr *h,
			    unsigned level, const void *key, bool *exact)
{
	unsigned lo = 0, hi = nrecs(h);

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		if (cmp_slot(bt, h, level, mid, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*exact = lo < nrecs(h) && cmp_slot(bt, h, level, lo, key) == 0;
	return lo;
}

/* ---- slot moves (callers declared the nodes; bytes past the last slot stay zero) ---------- */

static void slots_insert(const struct pmfuse_btree *bt, struct pmfuse_blk_hdr *h, unsigned level,
			 unsigned pos, const void *src)
{
	unsigned n = nrecs(h), len = slot_len(bt, level);

	memmove(slot(bt, h, level, pos + 1), slot(bt, h, level, pos), (size_t)(n - pos) * len);
	memcpy(slot(bt, h, level, pos), src, len);
	set_nrecs(h, n + 1);
}

static void slots_remove(const struct pmfuse_btree *bt, struct pmfuse_blk_hdr *h, unsigned level,
			 unsigned pos, unsigned count)
{
	unsigned n = nrecs(h), len = slot_len(bt, level);

	memmove(slot(bt, h, level, pos), slot(bt, h, level, pos + count),
		(size_t)(n - pos - count) * len);
	memset(slot(bt, h, level, n - count), 0, (size_t)count * len);
	set_nrecs(h, n - count);
}

/* Appends slots [from, from + count) of src to dst; src is unchanged. */
static void slots_append(const struct pmfuse_btree *bt, struct pmfuse_blk_hdr *dst,
			 const struct pmfuse_blk_hdr *src, unsigned level, unsigned from,
			 unsigned count)
{
	unsigned n = nrecs(dst);

	memcpy(slot(bt, dst, level, n), slot(bt, src, level, from),
	       (size_t)count * slot_len(bt, level));
	set_nrecs(dst, n + count);
}

/* Puts slots [from, from + count) of src in front of dst's slots; src is unchanged. */
static void slots_prepend(const struct pmfuse_btree *bt, struct pmfuse_blk_hdr *dst,
			  const struct pmfuse_blk_hdr *src, unsigned level, unsigned from,
			  unsigned count)
{
	unsigned n = nrecs(dst), len = slot_len(bt, level);

	memmove(slot(bt, dst, level, count), slot(bt, dst, level, 0), (size_t)n * len);
	memcpy(slot(bt, dst, level, 0), slot(bt, src, level, from), (size_t)count * len);
	set_nrecs(dst, n + count);
}

/* ---- handle ------------------------------------------------------------------------------- */

static bool shape_ok(const struct pmfuse_btree *bt)
{
	const struct pmfuse_btree_ops *ops = bt->ops;
	uint32_t bs = bt->block_size;

	return ops && ops->key_from_rec && ops->cmp_key && ops->key_len &&
	       ops->key_len % 8 == 0 && ops->key_len <= BT_KEY_MAX && ops->rec_len % 8 == 0 &&
	       ops->rec_len >= ops->key_len && bs >= PMFUSE_BLOCK_SIZE_MIN &&
	       bs <= PMFUSE_BLOCK_SIZE_MAX && (bs & (bs - 1)) == 0 &&
	       pmfuse_btree_leaf_max(bt) >= BT_MIN_SLOTS &&
	       pmfuse_btree_node_max(bt) >= BT_MIN_SLOTS && bt->owner && bt->root && bt->pool;
}

void pmfuse_btree_init(struct pmfuse_btree *bt, struct pmfuse_pool *pool,
		       struct pmfuse_alloc *alloc, const struct pmfuse_btree_ops *ops,
		       struct pmfuse_btree_root *root, struct pmfuse_blk_hdr *root_blk,
		       uint64_t owner, uint32_t block_size)
{
	*bt = (struct pmfuse_btree){
		.pool = pool,
		.alloc = alloc,
		.ops = ops,
		.root = root,
		.root_blk = root_blk,
		.owner = owner,
		.block_size = block_size ? block_size : PMFUSE_BLOCK_SIZE_DEFAULT,
	};
	assert(shape_ok(bt));
}

uint64_t pmfuse_btree_count(const struct pmfuse_btree *bt)
{
	return pmfuse_le64(bt->root->nrecs);
}

/* ---- reading ------------------------------------------------------------------------------ */

static struct pmfuse_blk_hdr *node_at(const struct pmfuse_btree *bt, uint64_t blk)
{
	return pmfuse_pool_at(bt->pool, blk * bt->block_size);
}

static bool blk_in_pool(const struct pmfuse_btree *bt, uint64_t blk)
{
	return blk > 0 && blk < pmfuse_pool_size(bt->pool) / bt->block_size;
}

/* Reads the root descriptor: *levels == 0 for an empty tree. */
static int read_root(const struct pmfuse_btree *bt, uint64_t *root, unsigned *levels)
{
	if (!shape_ok(bt))
		return -EINVAL;
	*root = pmfuse_le64(bt->root->root);
	*levels = pmfuse_le16(bt->root->levels);
	if (*levels > PMFUSE_BTREE_MAX_LEVELS)
		return PMFUSE_CORRUPT("%s tree (owner %llu): root descriptor says %u levels",
				      bt->ops->name, (unsigned long long)bt->owner, *levels);
	if ((*levels == 0) != (*root == 0))
		return PMFUSE_CORRUPT("%s tree (owner %llu): root descriptor: root %llu with %u "
				      "levels", bt->ops->name, (unsigned long long)bt->owner,
				      (unsigned long long)*root, *levels);
	return 0;
}

/*
 * Maps node blk, expected at level, and verifies what every reader relies on: the block header
 * (magic, own number, owner, crc), the level and the slot count against the node's capacity
 * and minimum fill.
 */
static int read_node(const struct pmfuse_btree *bt, uint64_t blk, unsigned level, bool is_root,
		     bool edge, struct pmfuse_blk_hdr **out)
{
	struct pmfuse_blk_hdr *h;
	unsigned n, lo;
	int rc;

	if (!blk_in_pool(bt, blk))
		return PMFUSE_CORRUPT("%s tree (owner %llu): node pointer %llu outside the pool",
				      bt->ops->name, (unsigned long long)bt->owner,
				      (unsigned long long)blk);
	h = node_at(bt, blk);
	rc = pmfuse_blk_verify_memo(bt->pool, h, PMFUSE_BLK_BTREE, blk, bt->owner, bt->block_size);
	if (rc)
		return rc;
	if (pmfuse_le16(h->level) != level)
		return PMFUSE_CORRUPT("%s tree: node %llu has level %u, expected %u", bt->ops->name,
				      (unsigned long long)blk, pmfuse_le16(h->level), level);
	n = nrecs(h);
	lo = fill_min(bt, level, is_root, edge);
	if (n < lo || n > cap_of(bt, level))
		return PMFUSE_CORRUPT("%s tree: node %llu (level %u) holds %u slots, allowed %u..%u",
				      bt->ops->name, (unsigned long long)blk, level, n, lo,
				      cap_of(bt, level));
	*out = h;
	return 0;
}

enum pick { PICK_KEY, PICK_FIRST, PICK_LAST };

/*
 * Walks from the root to a leaf, filling p. PICK_KEY takes in each interior node the last slot
 * whose key is <= key (slot 0 if none) and in the leaf the first record >= key (*exact when
 * equal; may be nrecs). PICK_FIRST / PICK_LAST follow the leftmost / rightmost edge.
 * An empty tree gives p->levels == 0.
 */
static int walk_down(const struct pmfuse_btree *bt, const void *key, enum pick pick,
		     struct path *p, bool *exact)
{
	uint64_t blk;
	unsigned levels, level;
	bool edge = true;
	int rc;

	p->levels = 0;
	if (exact)
		*exact = false;
	rc = read_root(bt, &blk, &levels);
	if (rc || !levels)
		return rc;
	for (level = levels; level-- > 0;) {
		struct step *s = &p->n[level];
		bool ex = false;

		rc = read_node(bt, blk, level, level == levels - 1, edge, &s->h);
		if (rc)
			return rc;
		s->blk = blk;
		s->edge = edge;
		if (pick == PICK_FIRST)
			s->idx = 0;
		else if (pick == PICK_LAST)
			s->idx = nrecs(s->h) - 1;
		else
			s->idx = lower_bound(bt, s->h, level, key, &ex);
		if (!level) {
			if (exact)
				*exact = ex;
			break;
		}
		if (pick == PICK_KEY && !ex && s->idx)
			s->idx--;
		blk = child_of(bt, s->h, s->idx);
		edge = edge && s->idx == nrecs(s->h) - 1;
	}
	p->levels = levels;
	return 0;
}

int pmfuse_btree_lookup(const struct pmfuse_btree *bt, const void *key, void *rec)
{
	struct path p;
	bool exact;
	int rc = walk_down(bt, key, PICK_KEY, &p, &exact);

	if (rc)
		return rc;
	if (!p.levels || !exact)
		return -ENOENT;
	memcpy(rec, slot(bt, p.n[0].h, 0, p.n[0].idx), bt->ops->rec_len);
	return 0;
}

/* ---- changing nodes ----------------------------------------------------------------------- */

static int declare_node(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *h)
{
	return pmfuse_tx_add_block(tx, h, false);
}

static int declare_root(struct pmfuse_tx *tx, struct pmfuse_btree *bt)
{
	if (bt->root_blk)
		return pmfuse_tx_add_meta(tx, bt->root_blk, bt->root, sizeof(*bt->root));
	return pmfuse_tx_add(tx, bt->root, sizeof(*bt->root));
}

static int set_root(struct pmfuse_tx *tx, struct pmfuse_btree *bt, uint64_t blk,
		    unsigned levels)
{
	int rc = declare_root(tx, bt);

	if (rc)
		return rc;
	pmfuse_set_le64(&bt->root->root, blk);
	pmfuse_set_le16(&bt->root->levels, (uint16_t)levels);
	return 0;
}

static int add_count(struct pmfuse_tx *tx, struct pmfuse_btree *bt, int delta)
{
	int rc = declare_root(tx, bt);

	if (rc)
		return rc;
	pmfuse_set_le64(&bt->root->nrecs, pmfuse_le64(bt->root->nrecs) + (uint64_t)(int64_t)delta);
	return 0;
}

/* Allocates, declares and initialises an empty node at level, near block goal. */
static int new_node(struct pmfuse_tx *tx, struct pmfuse_btree *bt, uint64_t goal, unsigned level,
		    uint64_t *blk, struct pmfuse_blk_hdr **out)
{
	struct pmfuse_blk_hdr *h;
	uint64_t len;
	int rc;

	rc = pmfuse_alloc_extent(tx, bt->alloc, goal, 1, 1, blk, &len);
	if (rc)
		return rc;
	h = node_at(bt, *blk);
	rc = pmfuse_tx_add_block(tx, h, true);
	if (rc)
		return rc;
	pmfuse_blk_init(h, PMFUSE_BLK_BTREE, *blk, bt->owner, (uint16_t)level, bt->block_size);
	*out = h;
	return 0;
}

static int free_node(struct pmfuse_tx *tx, struct pmfuse_btree *bt, uint64_t blk)
{
	return pmfuse_alloc_free(tx, bt->alloc, blk, 1);
}

/* The block the root descriptor lives in: a goal for the first node of a tree. */
static uint64_t root_goal(const struct pmfuse_btree *bt)
{
	return pmfuse_pool_offset(bt->pool, bt->root) / bt->block_size;
}

/* ---- insert ------------------------------------------------------------------------------- */

/*
 * Puts src at slot pos of node s (declared). A full node is split first: a new right sibling
 * takes the upper slots, *right and rkey return it and its first key for the parent.
 */
static int put_slot(struct pmfuse_tx *tx, struct pmfuse_btree *bt, struct step *s,
		    unsigned level, unsigned pos, const void *src, uint64_t *right, void *rkey)
{
	struct pmfuse_blk_hdr *l = s->h, *r;
	unsigned n = nrecs(l), lt;
	int rc;

	*right = 0;
	if (n < cap_of(bt, level)) {
		slots_insert(bt, l, level, pos, src);
		return 0;
	}
	rc = new_node(tx, bt, s->blk, level, right, &r);
	if (!rc)
		rc = declare_node(tx, l);       /* the allocator sealed it: queue it again */
	if (rc)
		return rc;
	/* an append at the right edge leaves the full node full (top of file) */
	lt = bt->edge_fill && s->edge && pos == n ? n : (n + 1) / 2;
	if (pos < lt) {
		slots_append(bt, r, l, level, lt - 1, n - lt + 1);
		slots_remove(bt, l, level, lt - 1, n - lt + 1);
		slots_insert(bt, l, level, pos, src);
	} else {
		slots_append(bt, r, l, level, lt, n - lt);
		slots_remove(bt, l, level, lt, n - lt);
		slots_insert(bt, r, level, pos - lt, src);
	}
	slot_key(bt, r, level, 0, rkey);
	return 0;
}

/* The root at p's top split off right (first key rkey): a new root above both. */
static int grow_root(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const struct path *p,
		     uint64_t right, const void *rkey)
{
	const struct step *top = &p->n[p->levels - 1];
	uint64_t key[BT_KEY_WORDS], ent[BT_KEY_WORDS + 1], blk;
	struct pmfuse_blk_hdr *h;
	int rc;

	if (p->levels >= PMFUSE_BTREE_MAX_LEVELS) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s tree (owner %llu): more than %u levels needed",
			   bt->ops->name, (unsigned long long)bt->owner, PMFUSE_BTREE_MAX_LEVELS);
		return -ENOSPC;
	}
	rc = new_node(tx, bt, top->blk, p->levels, &blk, &h);
	if (rc)
		return rc;
	slot_key(bt, top->h, p->levels - 1, 0, key);
	make_entry(bt, ent, key, top->blk);
	slots_insert(bt, h, p->levels, 0, ent);
	make_entry(bt, ent, rkey, right);
	slots_insert(bt, h, p->levels, 1, ent);
	return set_root(tx, bt, blk, p->levels + 1);
}

/*
 * Inserts rec at the leaf position of p and carries the consequences up: a new first key of a
 * node rewrites the key its parent holds (I3), a split inserts the new sibling into the parent.
 */
static int insert_at(struct pmfuse_tx *tx, struct pmfuse_btree *bt, struct path *p,
		     const void *rec, const void *key)
{
	uint64_t rkey[BT_KEY_WORDS], ent[BT_KEY_WORDS + 1], right = 0;
	bool new_min = false;
	unsigned level;
	int rc;

	for (level = 0; level < p->levels; level++) {
		struct step *s = &p->n[level];
		const void *src = rec;
		unsigned pos = s->idx;

		if (level && !new_min && !right)
			return 0;
		rc = declare_node(tx, s->h);
		if (rc)
			return rc;
		if (!level) {
			new_min = pos == 0;
		} else {
			if (new_min)
				memcpy(slot(bt, s->h, level, s->idx), key, bt->ops->key_len);
			new_min = new_min && s->idx == 0;
			if (!right)
				continue;
			make_entry(bt, ent, rkey, right);
			src = ent;
			pos = s->idx + 1;
		}
		rc = put_slot(tx, bt, s, level, pos, src, &right, rkey);
		if (rc)
			return rc;
	}
	return right ? grow_root(tx, bt, p, right, rkey) : 0;
}

int pmfuse_btree_insert(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const void *rec)
{
	uint64_t key[BT_KEY_WORDS], blk;
	struct pmfuse_blk_hdr *h;
	struct path p;
	bool exact;
	int rc;

	if (!shape_ok(bt))
		return -EINVAL;
	bt->ops->key_from_rec(key, rec);
	rc = walk_down(bt, key, PICK_KEY, &p, &exact);
	if (rc)
		return rc;
	if (exact)
		return -EEXIST;
	if (!p.levels) {
		rc = new_node(tx, bt, root_goal(bt), 0, &blk, &h);
		if (rc)
			return rc;
		slots_insert(bt, h, 0, 0, rec);
		rc = set_root(tx, bt, blk, 1);
	} else {
		rc = insert_at(tx, bt, &p, rec, key);
	}
	if (!rc)
		rc = add_count(tx, bt, 1);
	if (rc)
		return rc;
	pmfuse_tx_seal(tx);
	return 0;
}

int pmfuse_btree_update(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const void *rec)
{
	uint64_t key[BT_KEY_WORDS];
	struct path p;
	uint8_t *dst;
	bool exact;
	int rc;

	if (!shape_ok(bt))
		return -EINVAL;
	bt->ops->key_from_rec(key, rec);
	rc = walk_down(bt, key, PICK_KEY, &p, &exact);
	if (rc)
		return rc;
	if (!p.levels || !exact)
		return -ENOENT;
	dst = slot(bt, p.n[0].h, 0, p.n[0].idx);
	rc = pmfuse_tx_add_meta(tx, p.n[0].h, dst, bt->ops->rec_len);
	if (rc)
		return rc;
	memcpy(dst, rec, bt->ops->rec_len);
	pmfuse_tx_seal(tx);
	return 0;
}

/* ---- delete ------------------------------------------------------------------------------- */

/* Leaf slot 0 changed: its new key goes into the ancestors while the path takes slot 0. */
static int rewrite_min(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const struct path *p)
{
	uint64_t key[BT_KEY_WORDS];
	unsigned level;
	int rc;

	slot_key(bt, p->n[0].h, 0, 0, key);
	for (level = 1; level < p->levels; level++) {
		const struct step *s = &p->n[level];

		rc = declare_node(tx, s->h);
		if (rc)
			return rc;
		memcpy(slot(bt, s->h, level, s->idx), key, bt->ops->key_len);
		if (s->idx)
			break;
	}
	return 0;
}

/* Sets parent slot i's key to the first key of node h (at level). */
static void copy_first_key(const struct pmfuse_btree *bt, struct pmfuse_blk_hdr *parent,
			   unsigned i, const struct pmfuse_blk_hdr *h, unsigned level)
{
	slot_key(bt, h, level, 0, slot(bt, parent, level + 1, i));
}

/*
 * Node p->n[level] is below minimum fill: borrow from a sibling under the same parent, or
 * merge with one. *merged tells that the parent lost a slot (and may underflow in turn).
 */
static int fix_underflow(struct pmfuse_tx *tx, struct pmfuse_btree *bt, struct path *p,
			 unsigned level, bool *merged)
{
	struct step *s = &p->n[level], *ps = &p->n[level + 1];
	struct pmfuse_blk_hdr *nh = s->h, *ph = ps->h, *lh = NULL, *rh = NULL;
	unsigned ci = ps->idx, nn = nrecs(nh), min = min_of(bt, level), total, m;
	uint64_t lblk = 0, rblk = 0;
	int rc;

	*merged = false;
	if (s->edge && bt->edge_fill) {
		/* an empty node on the right edge leaves its parent (top of file) */
		if (nn)
			return 0;
		if ((rc = declare_node(tx, ph)))
			return rc;
		slots_remove(bt, ph, level + 1, ci, 1);
		*merged = true;
		return free_node(tx, bt, s->blk);
	}
	if (ci + 1 < nrecs(ph)) {
		rblk = child_of(bt, ph, ci + 1);
		rc = read_node(bt, rblk, level, false, ps->edge && ci + 2 == nrecs(ph), &rh);
		if (rc)
			return rc;
	}
	if (rh && nrecs(rh) > min) {
		total = nn + nrecs(rh);
		m = total / 2 - nn;
		if ((rc = declare_node(tx, nh)) || (rc = declare_node(tx, rh)) ||
		    (rc = declare_node(tx, ph)))
			return rc;
		slots_append(bt, nh, rh, level, 0, m);
		slots_remove(bt, rh, level, 0, m);
		copy_first_key(bt, ph, ci + 1, rh, level);
		return 0;
	}
	if (ci > 0) {
		lblk = child_of(bt, ph, ci - 1);
		rc = read_node(bt, lblk, level, false, false, &lh);
		if (rc)
			return rc;
	}
	if (lh && nrecs(lh) > min) {
		total = nn + nrecs(lh);
		m = total / 2 - nn;
		if ((rc = declare_node(tx, nh)) || (rc = declare_node(tx, lh)) ||
		    (rc = declare_node(tx, ph)))
			return rc;
		slots_prepend(bt, nh, lh, level, nrecs(lh) - m, m);
		slots_remove(bt, lh, level, nrecs(lh) - m, m);
		copy_first_key(bt, ph, ci, nh, level);
		return 0;
	}
	if (!lh && !rh)
		return PMFUSE_CORRUPT("%s tree: node %llu (level %u) has no sibling to merge with",
				      bt->ops->name, (unsigned long long)ps->blk, level + 1);
	/* Both siblings hold at most min (exactly, but for one on the edge), so
	 * nn + min < 2 * min <= max: the merge fits. */
	if (lh) {
		if ((rc = declare_node(tx, lh)) || (rc = declare_node(tx, ph)))
			return rc;
		slots_append(bt, lh, nh, level, 0, nn);
		slots_remove(bt, ph, level + 1, ci, 1);
		rc = free_node(tx, bt, s->blk);
	} else {
		if ((rc = declare_node(tx, nh)) || (rc = declare_node(tx, ph)))
			return rc;
		slots_append(bt, nh, rh, level, 0, nrecs(rh));
		slots_remove(bt, ph, level + 1, ci + 1, 1);
		rc = free_node(tx, bt, rblk);
	}
	*merged = true;
	return rc;
}

/* Repairs underflows from the leaf up, then collapses a root left with one child. */
static int rebalance(struct pmfuse_tx *tx, struct pmfuse_btree *bt, struct path *p)
{
	struct step *top = &p->n[p->levels - 1];
	unsigned level;
	bool merged;
	int rc;

	for (level = 0; level + 1 < p->levels; level++) {
		if (nrecs(p->n[level].h) >= fill_min(bt, level, false, p->n[level].edge))
			break;
		rc = fix_underflow(tx, bt, p, level, &merged);
		if (rc)
			return rc;
		if (!merged)
			break;
	}
	/* a root left with one child hands over to it; with edge_fill that child may be an edge
	 * node with a single child itself */
	for (uint64_t blk = top->blk, levels = p->levels;
	     levels > 1 && nrecs(node_at(bt, blk)) == 1; levels--) {
		uint64_t child = child_of(bt, node_at(bt, blk), 0);

		rc = set_root(tx, bt, child, (unsigned)levels - 1);
		if (!rc)
			rc = free_node(tx, bt, blk);
		if (rc)
			return rc;
		blk = child;
	}
	return 0;
}

int pmfuse_btree_delete(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const void *key,
			void *old)
{
	struct step *leaf;
	struct path p;
	bool exact;
	int rc;

	rc = walk_down(bt, key, PICK_KEY, &p, &exact);
	if (rc)
		return rc;
	if (!p.levels || !exact)
		return -ENOENT;
	leaf = &p.n[0];
	if (old)
		memcpy(old, slot(bt, leaf->h, 0, leaf->idx), bt->ops->rec_len);
	if ((rc = add_count(tx, bt, -1)) || (rc = declare_node(tx, leaf->h)))
		return rc;
	slots_remove(bt, leaf->h, 0, leaf->idx, 1);
	if (p.levels == 1) {
		if (!nrecs(leaf->h)) {
			rc = set_root(tx, bt, 0, 0);
			if (!rc)
				rc = free_node(tx, bt, leaf->blk);
		}
	} else {
		/* an emptied leaf (on the edge) has no first key to pass up: it goes */
		rc = leaf->idx == 0 && nrecs(leaf->h) ? rewrite_min(tx, bt, &p) : 0;
		if (!rc)
			rc = rebalance(tx, bt, &p);
	}
	if (rc)
		return rc;
	pmfuse_tx_seal(tx);
	return 0;
}

/* ---- destroy ------------------------------------------------------------------------------ */

/* Frees blocks in runs: consecutive node numbers go back in one call. */
struct free_run {
	uint64_t start, len;
};

static int run_add(struct pmfuse_tx *tx, struct pmfuse_btree *bt, struct free_run *r,
		   uint64_t blk)
{
	int rc = 0;

	if (r->len && blk == r->start + r->len) {
		r->len++;
		return 0;
	}
	if (r->len)
		rc = pmfuse_alloc_free(tx, bt->alloc, r->start, r->len);
	r->start = blk;
	r->len = 1;
	return rc;
}

int pmfuse_btree_destroy(struct pmfuse_tx *tx, struct pmfuse_btree *bt)
{
	struct free_run run = { 0, 0 };
	struct path p;
	unsigned level;
	int rc;

	rc = walk_down(bt, NULL, PICK_FIRST, &p, NULL);
	if (rc || !p.levels)
		return rc;
	/*
	 * Post-order walk over the path: free the leaf, then move to the next slot of the lowest
	 * ancestor that has one, freeing every node whose slots are exhausted on the way up.
	 */
	for (;;) {
		rc = run_add(tx, bt, &run, p.n[0].blk);
		if (rc)
			return rc;
		for (level = 1; level < p.levels; level++) {
			if (p.n[level].idx + 1 < nrecs(p.n[level].h))
				break;
			rc = run_add(tx, bt, &run, p.n[level].blk);
			if (rc)
				return rc;
		}
		if (level == p.levels)
			break;
		p.n[level].idx++;
		for (; level > 0; level--) {
			uint64_t blk = child_of(bt, p.n[level].h, p.n[level].idx);

			p.n[level - 1].edge = p.n[level].edge &&
					      p.n[level].idx + 1 == nrecs(p.n[level].h);
			rc = read_node(bt, blk, level - 1, false, p.n[level - 1].edge,
				       &p.n[level - 1].h);
			if (rc)
				return rc;
			p.n[level - 1].blk = blk;
			p.n[level - 1].idx = 0;
		}
	}
	rc = pmfuse_alloc_free(tx, bt->alloc, run.start, run.len);
	if (!rc)
		rc = set_root(tx, bt, 0, 0);
	if (rc)
		return rc;
	pmfuse_set_le64(&bt->root->nrecs, 0);   /* declared by set_root, no allocator call since */
	pmfuse_tx_seal(tx);
	return 0;
}

/* ---- cursors ------------------------------------------------------------------------------ */

static void cursor_from_path(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt,
			     const struct path *p)
{
	cur->bt = bt;
	cur->levels = (int)p->levels;
	for (unsigned i = 0; i < p->levels; i++) {
		cur->path[i].blk = p->n[i].blk;
		cur->path[i].idx = p->n[i].idx;
	}
}

/* Slot count of a node already verified by the seek that positioned the cursor. */
static int cursor_nrecs(const struct pmfuse_btree *bt, uint64_t blk, unsigned level,
			unsigned *n)
{
	if (!blk_in_pool(bt, blk))
		return -EINVAL;
	*n = nrecs(node_at(bt, blk));
	if (*n == 0 || *n > cap_of(bt, level))
		return PMFUSE_CORRUPT("%s tree: node %llu changed under a cursor", bt->ops->name,
				      (unsigned long long)blk);
	return 0;
}

/* Moves the cursor one record forward (dir > 0) or back; -ENOENT at the end, cursor kept. */
static int cursor_step(struct pmfuse_btree_cursor *cur, int dir)
{
	const struct pmfuse_btree *bt = cur->bt;
	struct pmfuse_btree_cursor c;
	unsigned level, n = 0;
	bool edge;
	int rc;

	if (cur->levels <= 0 || cur->levels > PMFUSE_BTREE_MAX_LEVELS)
		return -EINVAL;
	c = *cur;
	for (level = 0; level < (unsigned)c.levels; level++) {
		rc = cursor_nrecs(bt, c.path[level].blk, level, &n);
		if (rc)
			return rc;
		if (dir > 0 ? c.path[level].idx + 1 < n : c.path[level].idx > 0)
			break;
	}
	if (level == (unsigned)c.levels)
		return -ENOENT;
	c.path[level].idx = dir > 0 ? c.path[level].idx + 1 : c.path[level].idx - 1;
	/* whether the node at `level` is on the right edge: every slot above it is the last */
	edge = true;
	for (unsigned l = (unsigned)c.levels - 1; l > level; l--)
		edge = edge && c.path[l].idx + 1 == nrecs(node_at(bt, c.path[l].blk));
	for (; level > 0; level--) {
		uint64_t blk = child_of(bt, node_at(bt, c.path[level].blk), c.path[level].idx);
		struct pmfuse_blk_hdr *h;

		edge = edge && c.path[level].idx + 1 == nrecs(node_at(bt, c.path[level].blk));
		rc = read_node(bt, blk, level - 1, false, edge, &h);
		if (rc)
			return rc;
		c.path[level - 1].blk = blk;
		c.path[level - 1].idx = dir > 0 ? 0 : nrecs(h) - 1;
	}
	*cur = c;
	return 0;
}

int pmfuse_btree_next(struct pmfuse_btree_cursor *cur)
{
	return cursor_step(cur, 1);
}

int pmfuse_btree_prev(struct pmfuse_btree_cursor *cur)
{
	return cursor_step(cur, -1);
}

int pmfuse_btree_seek(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt,
		      const void *key, enum pmfuse_btree_seek how)
{
	struct path p;
	bool exact;
	unsigned n;
	int rc;

	cur->bt = bt;
	cur->levels = 0;
	rc = walk_down(bt, key, PICK_KEY, &p, &exact);
	if (rc)
		return rc;
	if (!p.levels)
		return -ENOENT;
	n = nrecs(p.n[0].h);
	if (how == PMFUSE_SEEK_GE) {
		if (p.n[0].idx < n) {
			cursor_from_path(cur, bt, &p);
			return 0;
		}
		/* Everything in this leaf is smaller: the answer opens the next leaf. */
		p.n[0].idx = n - 1;
		cursor_from_path(cur, bt, &p);
		rc = pmfuse_btree_next(cur);
	} else {
		if (exact || p.n[0].idx > 0) {
			p.n[0].idx -= exact ? 0 : 1;
			cursor_from_path(cur, bt, &p);
			return 0;
		}
		cursor_from_path(cur, bt, &p);
		rc = pmfuse_btree_prev(cur);
	}
	if (rc)
		cur->levels = 0;
	return rc;
}

static int cursor_end(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt,
		      enum pick pick)
{
	struct path p;
	int rc;

	cur->bt = bt;
	cur->levels = 0;
	rc = walk_down(bt, NULL, pick, &p, NULL);
	if (rc)
		return rc;
	if (!p.levels)
		return -ENOENT;
	cursor_from_path(cur, bt, &p);
	return 0;
}

int pmfuse_btree_first(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt)
{
	return cursor_end(cur, bt, PICK_FIRST);
}

int pmfuse_btree_last(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt)
{
	return cursor_end(cur, bt, PICK_LAST);
}

const void *pmfuse_btree_cursor_rec(const struct pmfuse_btree_cursor *cur)
{
	if (cur->levels <= 0)
		return NULL;
	return slot(cur->bt, node_at(cur->bt, cur->path[0].blk), 0, cur->path[0].idx);
}

/* ---- full check --------------------------------------------------------------------------- */

struct check {
	const struct pmfuse_btree *bt;
	void (*visit)(void *arg, uint64_t blk);
	void *arg;
	char *msg;
	size_t msglen;
	uint64_t recs;
};

/* Where a node hangs, for messages. */
struct place {
	uint64_t blk;
	unsigned level;
	uint64_t parent;      /* 0 for the root */
	unsigned pidx;
	bool edge;            /* the last node of its level */
};

static int check_fail(struct check *c, int line, const struct place *at, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int check_fail(struct check *c, int line, const struct place *at, const char *fmt, ...)
{
	char what[256], where[128], buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (!at)
		snprintf(where, sizeof(where), "root descriptor");
	else if (!at->parent)
		snprintf(where, sizeof(where), "node %llu (level %u, the root)",
			 (unsigned long long)at->blk, at->level);
	else
		snprintf(where, sizeof(where), "node %llu (level %u, slot %u of node %llu)",
			 (unsigned long long)at->blk, at->level, at->pidx,
			 (unsigned long long)at->parent);
	snprintf(buf, sizeof(buf), "%s tree (owner %llu): %s: %s", c->bt->ops->name,
		 (unsigned long long)c->bt->owner, where, what);
	if (c->msg && c->msglen)
		snprintf(c->msg, c->msglen, "%s", buf);
	return pmfuse_corrupt(__FILE__, line, "%s", buf);
}

#define FAIL(c, at, ...) check_fail(c, __LINE__, at, __VA_ARGS__)

/* Zero bytes: the first is zero and every byte equals the one before it (memcmp is vectorised;
 * a byte loop here was a third of fsck's time on a big pool). */
static bool all_zero(const uint8_t *p, size_t len)
{
	return !len || (!p[0] && !memcmp(p, p + 1, len - 1));
}

/* The header of the node at `at`: block, magic, self, owner, crc, level, pad, slot count. */
static int check_header(struct check *c, const struct place *at, bool is_root, bool known,
			const struct pmfuse_blk_hdr **out)
{
	const struct pmfuse_btree *bt = c->bt;
	const struct pmfuse_blk_hdr *h;
	unsigned n, lo, hi = cap_of(bt, at->level);

	if (!blk_in_pool(bt, at->blk))
		return FAIL(c, at, "block number outside the pool");
	h = node_at(bt, at->blk);
	if (pmfuse_le32(h->magic) != PMFUSE_BLK_BTREE)
		return FAIL(c, at, "magic %08x is not a b+tree node", pmfuse_le32(h->magic));
	if (pmfuse_le64(h->blkno) != at->blk)
		return FAIL(c, at, "header says block %llu",
			    (unsigned long long)pmfuse_le64(h->blkno));
	if (pmfuse_le64(h->owner) != bt->owner)
		return FAIL(c, at, "owner %llu", (unsigned long long)pmfuse_le64(h->owner));
	if (!pmfuse_pool_memo_crc(bt->pool, at->blk)) {
		if (pmfuse_le32(h->crc) != pmfuse_blk_crc(h, bt->block_size))
			return FAIL(c, at, "checksum mismatch (stored %08x, computed %08x)",
				    pmfuse_le32(h->crc), pmfuse_blk_crc(h, bt->block_size));
		pmfuse_pool_memo_set_crc(bt->pool, at->blk);
	}
	if (pmfuse_le16(h->level) != at->level)
		return FAIL(c, at, "header says level %u", pmfuse_le16(h->level));
	if (pmfuse_le32(h->pad))
		return FAIL(c, at, "header padding is not zero");
	n = nrecs(h);
	lo = fill_min(bt, at->level, is_root, at->edge);
	if (n < lo || n > hi)
		return FAIL(c, at, "%u slots, allowed %u..%u%s", n, lo, hi,
			    is_root ? "" : " (minimum fill)");
	if (!known && !all_zero(slot(bt, h, at->level, n), bt->block_size - BT_HDR -
				(size_t)n * slot_len(bt, at->level)))
		return FAIL(c, at, "bytes after slot %u are not zero", n - 1);
	*out = h;
	return 0;
}

/* The memo tag (pool.h) of a node whose own bytes passed check_node under these ops: slots,
 * records and their order (what its parent says is checked on every visit). A map tree's
 * owner serves extents or directory entries by the inode's mode: rec_len tells them apart. */
static unsigned node_tag(const struct pmfuse_btree *bt)
{
	return (bt->ops->rec_len / 8u) | (unsigned)(bt->ops->key_len / 8u) << 10;
}

/* Key i of node h: the slot's key, or the record's key copied into kbuf. */
static const void *key_at(const struct pmfuse_btree *bt, const struct pmfuse_blk_hdr *h,
			  unsigned level, unsigned i, uint64_t *kbuf)
{
	if (level)
		return slot(bt, h, level, i);
	bt->ops->key_from_rec(kbuf, slot(bt, h, 0, i));
	return kbuf;
}

/* A node that passed check_node before and is unchanged since (the memo): its first key must
 * still be its parent's key for it and every key below the parent's next one (its keys are in
 * order, so the first and the last tell). The same messages as check_node's loop. */
static int check_known(struct check *c, const struct place *at, const struct pmfuse_blk_hdr *h,
		       const void *lo, const void *hi)
{
	const struct pmfuse_btree *bt = c->bt;
	int (*cmp)(const void *, const void *) = bt->ops->cmp_key;
	uint64_t kbuf[BT_KEY_WORDS];
	unsigned n = nrecs(h);

	if (!n)
		return 0;
	if (lo && cmp(key_at(bt, h, at->level, 0, kbuf), lo))
		return FAIL(c, at, "first key differs from the parent's key for this node");
	if (!hi || cmp(key_at(bt, h, at->level, n - 1, kbuf), hi) < 0)
		return 0;
	for (unsigned i = 0; i < n; i++)     /* the first key at or past hi, as the loop names it */
		if (cmp(key_at(bt, h, at->level, i, kbuf), hi) >= 0)
			return FAIL(c, at, "key %u is not below the parent's next key", i);
	return 0;
}

/*
 * Checks the subtree at `at`. lo: the key its parent holds for it (its first key must equal it;
 * NULL for the root); hi: the parent's next key (all keys must be below it; NULL if none).
 */
static int check_node(struct check *c, const struct place *at, const void *lo, const void *hi)
{
	const struct pmfuse_btree *bt = c->bt;
	const struct pmfuse_btree_ops *ops = bt->ops;
	uint64_t kbuf[2][BT_KEY_WORDS];
	const struct pmfuse_blk_hdr *h = NULL;
	const void *prev = NULL;
	unsigned n, i;
	bool known;
	int rc;

	known = blk_in_pool(bt, at->blk) && pmfuse_pool_memo_tag(bt->pool, at->blk) == node_tag(bt);
	rc = check_header(c, at, !at->parent, known, &h);
	if (rc)
		return rc;
	if (c->visit)
		c->visit(c->arg, at->blk);
	n = nrecs(h);
	if (known)
		rc = check_known(c, at, h, lo, hi);
	for (i = 0; i < n && !known; i++) {
		const void *key;

		if (at->level) {
			key = slot(bt, h, at->level, i);
		} else {
			if (ops->check_rec && ops->check_rec(slot(bt, h, 0, i)))
				return FAIL(c, at, "record %u is malformed (%s)", i,
					    pmfuse_corrupt_last());
			ops->key_from_rec(kbuf[i & 1], slot(bt, h, 0, i));
			key = kbuf[i & 1];
		}
		if (prev && ops->cmp_key(prev, key) >= 0)
			return FAIL(c, at, "key %u is not above key %u", i, i - 1);
		if (!i && lo && ops->cmp_key(key, lo))
			return FAIL(c, at, "first key differs from the parent's key for this node");
		if (hi && ops->cmp_key(key, hi) >= 0)
			return FAIL(c, at, "key %u is not below the parent's next key", i);
		prev = key;
	}
	if (rc)
		return rc;
	if (!known)
		pmfuse_pool_memo_set_tag(bt->pool, at->blk, node_tag(bt));
	if (!at->level) {
		c->recs += n;
		return 0;
	}
	for (i = 0; i < n; i++) {
		struct place sub = {
			.blk = child_of(bt, h, i),
			.level = at->level - 1,
			.parent = at->blk,
			.pidx = i,
			.edge = at->edge && i + 1 == n,
		};

		rc = check_node(c, &sub, slot(bt, h, at->level, i),
				i + 1 < n ? slot(bt, h, at->level, i + 1) : hi);
		if (rc)
			return rc;
	}
	return 0;
}

int pmfuse_btree_check(const struct pmfuse_btree *bt,
		       void (*visit)(void *arg, uint64_t blk), void *arg,
		       char *msg, size_t msglen)
{
	struct check c = { bt, visit, arg, msg, msglen, 0 };
	uint64_t root = pmfuse_le64(bt->root->root), count = pmfuse_le64(bt->root->nrecs);
	unsigned levels = pmfuse_le16(bt->root->levels);
	struct place top = { .blk = root, .level = levels ? levels - 1 : 0, .edge = true };
	int rc;

	if (msg && msglen)
		msg[0] = '\0';
	if (!shape_ok(bt)) {
		if (msg && msglen)
			snprintf(msg, msglen, "tree handle has an impossible shape");
		return -EINVAL;
	}
	if (levels > PMFUSE_BTREE_MAX_LEVELS)
		return FAIL(&c, NULL, "%u levels, at most %u", levels, PMFUSE_BTREE_MAX_LEVELS);
	if ((levels == 0) != (root == 0))
		return FAIL(&c, NULL, "root %llu with %u levels", (unsigned long long)root, levels);
	if (pmfuse_le16(bt->root->pad0) || pmfuse_le32(bt->root->pad1) ||
	    pmfuse_le64(bt->root->pad2))
		return FAIL(&c, NULL, "padding is not zero");
	if (levels) {
		rc = check_node(&c, &top, NULL, NULL);
		if (rc)
			return rc;
	}
	if (c.recs != count)
		return FAIL(&c, NULL, "counts %llu records, the leaves hold %llu",
			    (unsigned long long)count, (unsigned long long)c.recs);
	return 0;
}

static void walk_nodes(const struct pmfuse_btree *bt, uint64_t blk, unsigned level,
		       void (*visit)(void *arg, uint64_t blk), void *arg)
{
	const struct pmfuse_blk_hdr *h;
	unsigned n;

	if (!blk_in_pool(bt, blk))
		return;
	h = node_at(bt, blk);
	if (pmfuse_le32(h->magic) != PMFUSE_BLK_BTREE)
		return;
	visit(arg, blk);
	if (!level)
		return;
	n = PMFUSE_MIN(nrecs(h), cap_of(bt, level));
	for (unsigned i = 0; i < n; i++)
		walk_nodes(bt, child_of(bt, h, i), level - 1, visit, arg);
}

void pmfuse_btree_walk_nodes(const struct pmfuse_btree *bt,
			     void (*visit)(void *arg, uint64_t blk), void *arg)
{
	unsigned levels = pmfuse_le16(bt->root->levels);

	if (shape_ok(bt) && levels && levels <= PMFUSE_BTREE_MAX_LEVELS)
		walk_nodes(bt, pmfuse_le64(bt->root->root), levels - 1, visit, arg);
}

/* ---- salvage (fsck repair) ------------------------------------------------------------------ */

#define SALVAGE_KEY_MAX 256u

struct salvage {
	const struct pmfuse_btree *bt;
	const struct pmfuse_btree_salvage_ops *ops;
	uint8_t last[SALVAGE_KEY_MAX];
	bool have_last;
	uint64_t dropped;
	int err;
};

/* Depth-first: a node that cannot be read is dropped with everything below it. */
static void salvage_node(struct salvage *s, uint64_t blk, unsigned level)
{
	const struct pmfuse_btree *bt = s->bt;
	struct pmfuse_blk_hdr *h;
	uint8_t key[SALVAGE_KEY_MAX];
	unsigned n;
	bool known;

	if (s->err)
		return;
	if (!blk_in_pool(bt, blk) ||
	    pmfuse_blk_verify_memo(bt->pool, node_at(bt, blk), PMFUSE_BLK_BTREE, blk, bt->owner,
				   bt->block_size) ||
	    pmfuse_le16(node_at(bt, blk)->level) != level) {
		s->dropped++;
		return;
	}
	h = node_at(bt, blk);
	n = nrecs(h);
	if (n > cap_of(bt, level)) {
		s->dropped++;
		return;
	}
	/* a node that passed check_node unchanged since (the memo) holds well-formed records */
	known = pmfuse_pool_memo_tag(bt->pool, blk) == node_tag(bt);
	if (s->ops->node)
		s->ops->node(s->ops->arg, blk);
	for (unsigned i = 0; i < n && !s->err; i++) {
		const uint8_t *r = slot(bt, h, level, i);

		if (level) {
			salvage_node(s, child_of(bt, h, i), level - 1);
			continue;
		}
		bt->ops->key_from_rec(key, r);
		if ((!known && bt->ops->check_rec && bt->ops->check_rec(r)) ||
		    (s->have_last && bt->ops->cmp_key(key, s->last) <= 0)) {
			s->dropped++;
			continue;
		}
		memcpy(s->last, key, bt->ops->key_len);
		s->have_last = true;
		s->err = s->ops->rec(s->ops->arg, r);
	}
}

int pmfuse_btree_salvage(const struct pmfuse_btree *bt, const struct pmfuse_btree_salvage_ops *ops,
			 uint64_t *dropped)
{
	struct salvage s = { .bt = bt, .ops = ops };
	uint64_t root = pmfuse_le64(bt->root->root);
	unsigned levels = pmfuse_le16(bt->root->levels);

	*dropped = 0;
	if (!shape_ok(bt) || bt->ops->key_len > SALVAGE_KEY_MAX)
		return -EINVAL;
	if (levels > PMFUSE_BTREE_MAX_LEVELS || (levels == 0) != (root == 0)) {
		*dropped = 1;     /* the root descriptor itself: nothing can be read */
		return 0;
	}
	if (levels)
		salvage_node(&s, root, levels - 1);
	*dropped = s.dropped;
	return s.err;
}

void pmfuse_btree_key64_from_rec(void *key, const void *rec)
{
	memcpy(key, rec, sizeof(struct pmfuse_le64));
}

int pmfuse_btree_cmp_key64(const void *a, const void *b)
{
	struct pmfuse_le64 x, y;

	memcpy(&x, a, sizeof(x));
	memcpy(&y, b, sizeof(y));
	return pmfuse_le64(x) < pmfuse_le64(y) ? -1 : pmfuse_le64(x) > pmfuse_le64(y);
}
