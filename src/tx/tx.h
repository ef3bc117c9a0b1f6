/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Metadata transactions: the only way metadata on the pool changes.
 *
 * Undo logging (see struct pmfuse_log_hdr in format.h for the on-media protocol). Before code
 * modifies a range of the pool it declares it:
 *   - pmfuse_tx_add()      the range holds live metadata: its pre-image is logged and persisted
 *                          first, so a crash or an abort restores it;
 *   - pmfuse_tx_add_new()  the range is in blocks allocated by this transaction: nothing to undo
 *                          (the allocation itself is undone), but it is persisted at commit;
 *                          also for unwritten blocks being converted, whose old bytes nobody reads;
 *   - pmfuse_tx_add_zero() the range holds only zeros (file bytes past EOF, invariant E5): a
 *                          24-byte entry without pre-image; a crash or an abort zeroes it again;
 *   - pmfuse_tx_add_written() a range whose old bytes need no undo (in blocks this transaction
 *                          allocated, or file bytes below EOF overwritten in place, which a
 *                          crash may tear as it may tear any in-place store) and which the
 *                          caller has already flushed (pmfuse_pool_write_data without NOFLUSH,
 *                          or pmfuse_pool_flush_data): commit only drains it;
 *   - pmfuse_tx_add_meta() a range of a self-describing metadata block: logs the range and the
 *                          block's crc, and reseals the block (recomputes its crc) at the next
 *                          pmfuse_tx_seal() or at commit.
 * Commit persists every declared range and then invalidates the log with one 8-byte store. A
 * transaction is therefore applied completely or not at all, whatever instant power is lost.
 *
 * Debug builds (PMFUSE_TX_VERIFY, on unless NDEBUG) can check the rule: with verification on
 * (pmfuse_txm_set_verify), a transaction snapshots the pool at begin and commit fails loudly
 * (abort()) if a byte outside the declared ranges changed. It copies the whole pool per
 * transaction, so tests use it on small pools.
 *
 * Concurrency: one transaction at a time per pool; pmfuse_tx_begin() waits for the running one.
 * doc/format.md says how this can scale (per-thread log lanes).
 *
 * Allocation and freeing are coupled to the transaction's outcome through end hooks
 * (pmfuse_tx_on_end): the allocator frees blocks in DRAM only when the freeing transaction
 * commits, so a block freed in a transaction can never be reused (and overwritten) before the
 * free is durable.
 */
#ifndef PMFUSE_TX_H
#define PMFUSE_TX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pmfuse/format.h"

struct pmfuse_pool;
struct pmfuse_txm;
struct pmfuse_tx;

/*
 * Opens the transaction manager over the log at blocks [log_start, log_start + log_blocks) of
 * block size bs. If the log holds a transaction that did not commit, it is rolled back now
 * (recovery); *recovered (may be NULL) tells whether that happened. On a read-only pool a
 * pending rollback is -EROFS. A log header that fails its checks is -EUCLEAN.
 */
int pmfuse_txm_open(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		    uint64_t log_blocks, struct pmfuse_txm **out, bool *recovered);
void pmfuse_txm_close(struct pmfuse_txm *txm);

/* Writes an empty log (mkfs). The log blocks must lie inside the pool. */
int pmfuse_txm_format(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		      uint64_t log_blocks);

/* Verification of declared ranges (debug builds only; a no-op with NDEBUG). */
void pmfuse_txm_set_verify(struct pmfuse_txm *txm, bool on);

struct pmfuse_pool *pmfuse_txm_pool(const struct pmfuse_txm *txm);

/* Begins a transaction; blocks while another one runs. Never fails. */
struct pmfuse_tx *pmfuse_tx_begin(struct pmfuse_txm *txm);

/*
 * Declares a range before modifying it. -ENOSPC: the log is full (the transaction must be
 * aborted; the range was not logged and must not be modified). Ranges already declared are
 * not logged twice.
 */
int pmfuse_tx_add(struct pmfuse_tx *tx, void *addr, size_t len);
int pmfuse_tx_add_new(struct pmfuse_tx *tx, void *addr, size_t len);
int pmfuse_tx_add_zero(struct pmfuse_tx *tx, void *addr, size_t len);
int pmfuse_tx_add_written(struct pmfuse_tx *tx, void *addr, size_t len);
int pmfuse_tx_add_meta(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *blk, void *addr, size_t len);

/* A whole metadata block: same as pmfuse_tx_add_meta over the block; new=true for a block this
 * transaction allocated (no pre-image). */
int pmfuse_tx_add_block(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *blk, bool is_new);

/* Recomputes the crc of every metadata block declared since the last seal. */
void pmfuse_tx_seal(struct pmfuse_tx *tx);

/* Runs fn(arg, a, b, committed) when the transaction ends, in the order registered. -ENOMEM. */
int pmfuse_tx_on_end(struct pmfuse_tx *tx, void (*fn)(void *arg, uint64_t a, uint64_t b,
						     bool committed),
		     void *arg, uint64_t a, uint64_t b);

/* Reseals every metadata block declared in the transaction, persists and commits. Always
 * succeeds (returns 0); the tx is freed. */
int pmfuse_tx_commit(struct pmfuse_tx *tx);

/* Restores every logged range, persists, and ends the transaction; the tx is freed. */
void pmfuse_tx_abort(struct pmfuse_tx *tx);

/*
 * After a memory error (pool.h: a recovery point caught SIGBUS) interrupted this thread inside
 * a transaction: aborts it (its entries are exactly those whose persist completed, so the
 * rollback is the same as after a crash) and releases the manager. Returns whether there was
 * one. A transaction whose commit record was already stored is finished as committed.
 */
bool pmfuse_tx_abort_running(void);

struct pmfuse_pool *pmfuse_tx_pool(const struct pmfuse_tx *tx);
uint32_t pmfuse_tx_block_size(const struct pmfuse_tx *tx);

/* Block helpers shared by everything that stores self-describing metadata blocks. */
void pmfuse_blk_init(struct pmfuse_blk_hdr *blk, uint32_t magic, uint64_t blkno, uint64_t owner,
		     uint16_t level, uint32_t bs);   /* zeroes the block, then fills the header */
uint32_t pmfuse_blk_crc(const struct pmfuse_blk_hdr *blk, uint32_t bs);
void pmfuse_blk_seal(struct pmfuse_blk_hdr *blk, uint32_t bs);   /* crc only; caller persists */
/* Checks magic, own block number, owner (unless owner == 0) and crc: 0 or -EUCLEAN (logged). */
int pmfuse_blk_verify(const struct pmfuse_blk_hdr *blk, uint32_t magic, uint64_t blkno,
		      uint64_t owner, uint32_t bs);

#endif /* PMFUSE_TX_H */
