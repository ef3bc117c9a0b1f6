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
 * (abort()) if a byte outside the declared ranges changed (ranges other transactions declared
 * while it ran excepted). It copies the whole pool per transaction, so tests use it on small
 * pools. With transactions in several threads, every store to the pool must then lie in a range
 * some open transaction declared.
 *
 * Concurrency: the log is divided into lanes (format.h); each transaction runs in a lane of its
 * own, so as many transactions as lanes run at once; pmfuse_tx_begin() waits only when every
 * lane is busy. The caller's locks must keep two open transactions from declaring the same byte
 * (a transaction keeps what it declared locked until it ends); PMFUSE_TX_VERIFY builds check
 * it at every declaration and abort() on an overlap. A thread runs one transaction at a time
 * with pmfuse_tx_begin (lock order: the caller's locks, then the lane, then the allocator's).
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
 * block size bs, divided into lanes lanes (1 for a pool without INCOMPAT_LOG_LANES). Every
 * lane that holds a transaction that did not commit is rolled back now (recovery); *recovered
 * (may be NULL) tells whether that happened. On a read-only pool a pending rollback is -EROFS.
 * A lane header that fails its checks, or a geometry that does not fit, is -EUCLEAN.
 */
int pmfuse_txm_open(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		    uint64_t log_blocks, unsigned lanes, struct pmfuse_txm **out, bool *recovered);
void pmfuse_txm_close(struct pmfuse_txm *txm);

/* Writes an empty log of lanes lanes (mkfs). The log blocks must lie inside the pool, and
 * log_blocks be a multiple of lanes with at least 2 blocks per lane: else -EINVAL. */
int pmfuse_txm_format(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		      uint64_t log_blocks, unsigned lanes);

/* Looks at the log without changing it (read-only opens, fsck): checks every lane header and
 * counts in *pending the lanes that hold an unfinished transaction. -EUCLEAN with msg. */
int pmfuse_txm_probe(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		     uint64_t log_blocks, unsigned lanes, unsigned *pending, char *msg,
		     size_t msglen);

/* Lanes of the log, and the entry bytes of one lane (the most one transaction can log). */
unsigned pmfuse_txm_lanes(const struct pmfuse_txm *txm);
size_t pmfuse_txm_lane_bytes(const struct pmfuse_txm *txm);

/* Verification of declared ranges (debug builds only; a no-op with NDEBUG). */
void pmfuse_txm_set_verify(struct pmfuse_txm *txm, bool on);

struct pmfuse_pool *pmfuse_txm_pool(const struct pmfuse_txm *txm);

/* Begins a transaction in a free lane; blocks while every lane is busy. Never fails. The
 * calling thread must not be running a transaction of the same manager already (assert). */
struct pmfuse_tx *pmfuse_tx_begin(struct pmfuse_txm *txm);

/* As pmfuse_tx_begin, but NULL at once when every lane is busy; the calling thread may hold
 * other transactions (tests interleave the steps of several from one thread). */
struct pmfuse_tx *pmfuse_tx_try_begin(struct pmfuse_txm *txm);

/* The lane a transaction runs in, 0..lanes - 1. */
unsigned pmfuse_tx_lane(const struct pmfuse_tx *tx);

/*
 * Declares a range before modifying it. -ENOSPC: the lane is full (the transaction must be
 * aborted; the range was not logged and must not be modified). Ranges already declared are
 * not logged twice. No byte of it may be declared by another open transaction (PMFUSE_TX_VERIFY
 * builds abort() if one is).
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
/* The same for the block blkno of pool, whose crc is computed only when the pool's memo
 * (pmfuse_pool_memo_enable: fsck) does not know it matched already, and noted when it does. */
int pmfuse_blk_verify_memo(struct pmfuse_pool *pool, const struct pmfuse_blk_hdr *blk,
			   uint32_t magic, uint64_t blkno, uint64_t owner, uint32_t bs);

#endif /* PMFUSE_TX_H */
