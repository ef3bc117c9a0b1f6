/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The refcount tree: how many extents map each physical block, for shared blocks only.
 *
 * Records (struct pmfuse_refcount_rec) cover runs of blocks with the same count >= 2. A block in
 * use with no record has one owner; a block whose count drops to zero goes back to the allocator
 * in the same transaction. Adjusting a range (the "Adjusting the Reference Count" algorithm of
 * XFS):
 *
 *      range:            [=========================]
 *      records:    [--3--][-2-]     [---2---]   [--2--]
 *   1. split the records that straddle the range edges:
 *                  [3][3-][-2-]     [---2---]   [2][-2]
 *   2. walk the range: adjust each record inside it by delta, and each gap (count 1) too —
 *      a gap becomes a new record when incrementing, and is freed when decrementing;
 *      a record reaching 1 is deleted (implicit 1);
 *   3. merge touching records with equal counts at both edges and inside.
 *
 * The caller bounds the work per transaction (one extent at a time); every function is inside
 * a transaction and leaves the tree checked-clean at its end.
 */
#ifndef PMFUSE_REFCOUNT_H
#define PMFUSE_REFCOUNT_H

#include <stdint.h>

#include "meta/btree.h"

struct pmfuse_tx;
struct pmfuse_alloc;
struct pmfuse_volume;

extern const struct pmfuse_btree_ops pmfuse_refcount_ops;

/* Fills *bt with the handle of vol's refcount tree (state->roots[PMFUSE_ROOT_REFCOUNT], owner
 * PMFUSE_TREE_REFCOUNT, nodes from vol->alloc). No I/O. */
void pmfuse_refcount_tree(struct pmfuse_volume *vol, struct pmfuse_btree *bt);

/*
 * Each block of [start, start + len) gains one owner. The blocks must be allocated (the ends of
 * every block run without a record are checked: -EUCLEAN if free). Errors, after which the caller
 * aborts tx: -EINVAL (len 0, or the range wraps), -EOVERFLOW (a count would pass UINT32_MAX),
 * -ENOSPC (pool or log full), -EUCLEAN.
 */
int pmfuse_refcount_incr(struct pmfuse_tx *tx, struct pmfuse_btree *rc, struct pmfuse_alloc *al,
			 uint64_t start, uint64_t len);

/* Each block of [start, start + len) loses one owner; blocks left with none are freed through
 * pmfuse_alloc_free in the same transaction. *freed (may be NULL) gets how many were freed.
 * Errors as for incr except -EOVERFLOW; a block without a record that is already free is
 * -EUCLEAN (pmfuse_alloc_free refuses it). */
int pmfuse_refcount_decr(struct pmfuse_tx *tx, struct pmfuse_btree *rc, struct pmfuse_alloc *al,
			 uint64_t start, uint64_t len, uint64_t *freed);

/*
 * The count of block and the length of the run from block on (up to maxlen) with that same
 * count: *count is 1 for a block without a record (the caller knows whether it is allocated).
 * maxlen >= 1 (else -EINVAL). -EUCLEAN.
 */
int pmfuse_refcount_get(const struct pmfuse_btree *rc, uint64_t block, uint64_t maxlen,
			uint32_t *count, uint64_t *run);

/* Structural check beyond the b+tree's own: records well-formed, no overlap, touching records
 * differ in count (unless together longer than PMFUSE_EXTENT_MAX_LEN), every covered block
 * allocated (if al is not NULL; one allocator query per block). -EUCLEAN with msg. */
int pmfuse_refcount_check(const struct pmfuse_btree *rc, struct pmfuse_alloc *al, char *msg,
			  size_t msglen);

#endif /* PMFUSE_REFCOUNT_H */
