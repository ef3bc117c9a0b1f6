/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * One generic b+tree on the pool. Every tree of pmfuse (inode table, refcount tree, extent maps,
 * directories, orphan list) is an instance with its own ops table; the generic code never knows
 * what its records mean.
 *
 * Nodes are one block each (struct pmfuse_blk_hdr, magic PMFUSE_BLK_BTREE, owner = the tree's
 * owner, level 0 for leaves). A leaf holds nrecs records of rec_len bytes, packed after the
 * header, in strictly increasing key order. An interior node holds nrecs entries of
 * (key[key_len], le64 child) packed after the header; entry i's key is the smallest key in child
 * i's subtree, so the first entry's key is a lower bound only. Every node except the root holds
 * at least max/2 entries (rounded down); the root of a multi-level tree has at least 2 children.
 *
 * Modifications run inside a transaction and reseal (pmfuse_tx_seal) every node they touched
 * before returning, so any node read between operations has a valid crc. Reads verify each
 * node's header and crc on the way down and report damage as -EUCLEAN.
 *
 * Locking: none inside. Callers serialise writers against readers of the same tree.
 */
#ifndef PMFUSE_BTREE_H
#define PMFUSE_BTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pmfuse/format.h"

struct pmfuse_pool;
struct pmfuse_tx;
struct pmfuse_alloc;

struct pmfuse_btree_ops {
	const char *name;     /* for messages: "refcount", "inodes", ... */
	uint16_t key_len;     /* bytes; a multiple of 8 */
	uint16_t rec_len;     /* bytes; a multiple of 8, >= key_len */
	/* Writes the key of rec into key (key_len bytes). */
	void (*key_from_rec)(void *key, const void *rec);
	/* <0, 0, >0 like memcmp. */
	int (*cmp_key)(const void *a, const void *b);
	/* Optional: 0 if rec is well formed, else -EUCLEAN (with PMFUSE_CORRUPT). */
	int (*check_rec)(const void *rec);
};

/* key_from_rec / cmp_key for the common case: the key is the record's leading le64. */
void pmfuse_btree_key64_from_rec(void *key, const void *rec);
int pmfuse_btree_cmp_key64(const void *a, const void *b);

struct pmfuse_btree {
	struct pmfuse_pool *pool;
	struct pmfuse_alloc *alloc;            /* where nodes come from and go back to */
	const struct pmfuse_btree_ops *ops;
	struct pmfuse_btree_root *root;        /* on the pool, owned by whoever holds the tree */
	struct pmfuse_blk_hdr *root_blk;       /* block holding *root if it is a metadata block
						  (its crc is resealed), or NULL */
	uint64_t owner;                        /* stored in every node's header */
	uint32_t block_size;
	bool edge_fill;                        /* nodes on the right edge may hold fewer than
						  max/2 slots, and an append there splits off
						  one slot (PMFUSE_FEATURE_INCOMPAT_EDGE_FILL);
						  false after init */
};

/* Fills in a tree handle; no I/O. */
void pmfuse_btree_init(struct pmfuse_btree *bt, struct pmfuse_pool *pool,
		       struct pmfuse_alloc *alloc, const struct pmfuse_btree_ops *ops,
		       struct pmfuse_btree_root *root, struct pmfuse_blk_hdr *root_blk,
		       uint64_t owner, uint32_t block_size);

/* Records a leaf and an interior node hold at most. */
unsigned pmfuse_btree_leaf_max(const struct pmfuse_btree *bt);
unsigned pmfuse_btree_node_max(const struct pmfuse_btree *bt);

uint64_t pmfuse_btree_count(const struct pmfuse_btree *bt);

/* Copies the record with exactly this key into rec. -ENOENT, -EUCLEAN. */
int pmfuse_btree_lookup(const struct pmfuse_btree *bt, const void *key, void *rec);

/* Inserts rec. -EEXIST if its key is present; -ENOSPC (pool or log full); -EUCLEAN. On error
 * the caller must abort tx (the tree may be half-changed inside the transaction). */
int pmfuse_btree_insert(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const void *rec);

/* Replaces the record with rec's key by rec. -ENOENT, -ENOSPC, -EUCLEAN. */
int pmfuse_btree_update(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const void *rec);

/* Removes the record with this key, copying it into old if not NULL. -ENOENT, -ENOSPC, -EUCLEAN.*/
int pmfuse_btree_delete(struct pmfuse_tx *tx, struct pmfuse_btree *bt, const void *key,
			void *old);

/* Frees every node; the tree becomes empty. -ENOSPC, -EUCLEAN. */
int pmfuse_btree_destroy(struct pmfuse_tx *tx, struct pmfuse_btree *bt);

/*
 * Cursors: a path of (node, index) from the root to a leaf record. A cursor is invalidated by any
 * modification of its tree; seek again after one.
 */
struct pmfuse_btree_cursor {
	const struct pmfuse_btree *bt;
	int levels;                                  /* depth of the path; 0 when not positioned */
	struct {
		uint64_t blk;
		unsigned idx;
	} path[PMFUSE_BTREE_MAX_LEVELS];             /* path[0] is the leaf */
};

enum pmfuse_btree_seek {
	PMFUSE_SEEK_GE,   /* first record with key >= the given key */
	PMFUSE_SEEK_LE,   /* last record with key <= the given key */
};

/* Positions the cursor. -ENOENT when there is no such record (cursor not positioned), -EUCLEAN. */
int pmfuse_btree_seek(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt,
		      const void *key, enum pmfuse_btree_seek how);
/* First / last record of the tree. -ENOENT when empty. */
int pmfuse_btree_first(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt);
int pmfuse_btree_last(struct pmfuse_btree_cursor *cur, const struct pmfuse_btree *bt);
/* Moves to the next / previous record. -ENOENT past either end (cursor stays where it was). */
int pmfuse_btree_next(struct pmfuse_btree_cursor *cur);
int pmfuse_btree_prev(struct pmfuse_btree_cursor *cur);
/* The record under the cursor, read-only, pointing into the pool. */
const void *pmfuse_btree_cursor_rec(const struct pmfuse_btree_cursor *cur);

/*
 * Full structural check: every node's header (magic, own block number, owner, level, crc), key
 * order inside nodes, every key within its parent's bounds, minimum fill, equal leaf depth,
 * record count equal to root->nrecs, check_rec on every record. Calls visit(arg, blk) once per
 * node if not NULL (fsck uses it for block accounting). Returns 0 or -EUCLEAN and writes what was
 * wrong into msg (may be NULL).
 */
int pmfuse_btree_check(const struct pmfuse_btree *bt,
		       void (*visit)(void *arg, uint64_t blk), void *arg,
		       char *msg, size_t msglen);

/*
 * Calls visit(arg, blk) once per node of a tree that pmfuse_btree_check passed in this run and
 * that nothing changed since: no crc, key or fill check again (fsck's block accounting after its
 * tree check). Nodes outside the pool or without the b+tree magic are skipped, so a tree that was
 * not checked costs wrong counts, never a wild read.
 */
void pmfuse_btree_walk_nodes(const struct pmfuse_btree *bt,
			     void (*visit)(void *arg, uint64_t blk), void *arg);

/*
 * What can be read of a possibly damaged tree (fsck repair), without trusting fill, counts or
 * interior keys: a depth-first walk that drops every node failing its header, crc or level (and
 * what hangs below it), and every record failing check_rec or not above the last record kept.
 * node(arg, blk) is called for each node read (may be NULL), rec(arg, rec) for each record kept,
 * in key order; a non-zero return from rec stops the walk and is returned. *dropped gets the
 * nodes and records dropped (1 for a root descriptor that cannot be used). 0, -EINVAL, or rec's.
 */
struct pmfuse_btree_salvage_ops {
	void (*node)(void *arg, uint64_t blk);
	int (*rec)(void *arg, const void *rec);
	void *arg;
};
int pmfuse_btree_salvage(const struct pmfuse_btree *bt, const struct pmfuse_btree_salvage_ops *ops,
			 uint64_t *dropped);

#endif /* PMFUSE_BTREE_H */
