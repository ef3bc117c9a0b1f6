/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Undo-log transactions.
 *
 * Log layout: the log is divided into lanes of log_blocks / lanes blocks; the first block of a
 * lane holds its struct pmfuse_log_hdr, and entries (struct pmfuse_log_entry + pre-image, 8-byte
 * aligned) are appended from the lane's second block on. Each lane is an undo log of its own with
 * the protocol below, and runs one transaction at a time; a pool formatted before lanes has one.
 *
 *   tx_add(range)   write entry {gen, off, len, crc, pre-image} at the tail, persist it   (1 barrier)
 *   tx_add_zero     the same without a pre-image (len has PMFUSE_LOG_ZERO): the range is all
 *                   zeros now, so undoing it means zeroing it                           (1 barrier)
 *                   ... caller modifies the range with plain stores ...
 *   commit          reseal declared blocks, flush every declared range, drain           (1 barrier)
 *                   hdr.gen += 1 (one 8-byte store), persist                             (1 barrier)
 *   abort/recovery  copy the valid entries' pre-images back, newest first, persist; gen += 1
 *
 * Why this is atomic: until the gen store is durable, every modified live range has a durable
 * pre-image in a valid entry (it was persisted before the first store to the range), so recovery
 * restores the state before the transaction; ranges declared "new" lie in blocks whose allocation
 * the same log undoes. After the gen store, no entry is valid and every declared range was already
 * durable. A torn entry fails its crc and ends the valid prefix; the range it describes was never
 * modified because modification waits for the entry's persist.
 *
 * The gen field is outside the log header's crc (the crc is computed with gen = 0): it changes by a
 * lone 8-byte store and must not need a second, non-atomic crc update.
 *
 * Bookkeeping per transaction lives in DRAM: the list of declared ranges (flushed at commit), a
 * hash set that keeps a range or a whole block from being logged twice, and the list of metadata
 * blocks to reseal.
 *
 * Lanes. pmfuse_tx_begin takes a free lane (txm->lock guards the free list; it waits on
 * txm->lane_free only when every lane is busy) and commit or abort gives it back after the
 * lane's gen store is durable. Transactions in different lanes must never declare the same byte:
 * one's rollback would then undo the other's change, and a metadata block's crc would be resealed
 * by two writers. The callers' locks guarantee it (a transaction holds whatever it declares
 * locked until it ends: strict two-phase locking; doc/design.md). With that rule every live entry
 * of every lane restores bytes no other lane's live entry covers, so recovery rolls the lanes back
 * in any order. Builds with PMFUSE_TX_VERIFY check the rule: a registry of the byte ranges each
 * open transaction declared (disjoint intervals, sorted, tagged with their lane; txm->reg_lock)
 * is consulted at every declaration, and an overlap with another lane aborts the process.
 */
#include "tx/tx.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool/pool.h"
#include "util/util.h"

#define F_LOGGED 1u  /* pre-image in the log */
#define F_NEW    2u  /* declared new: no pre-image */
#define F_SEAL   4u  /* (len == 0 key) block queued for the next reseal */
#define F_META   8u  /* (len == 0 key) block declared as metadata in this transaction */
#define F_FLUSHED 16u /* declared new and already flushed by the caller: commit only drains */

struct range {
	uint64_t off;
	uint32_t len;
};

struct slot {
	uint64_t off;
	uint32_t len;
	uint32_t gen;   /* slot is live iff gen == table gen */
	uint32_t flags;
};

struct end_hook {
	void (*fn)(void *arg, uint64_t a, uint64_t b, bool committed);
	void *arg;
	uint64_t a, b;
};

struct span {                       /* [off, end) */
	uint64_t off, end;
};

struct reg_span {                   /* a registry interval: bytes declared by an open transaction */
	uint64_t off, end;
	unsigned lane;
};

struct pmfuse_tx {
	struct pmfuse_txm *txm;
	unsigned lane;                 /* index of the lane this transaction runs in */
	struct pmfuse_log_hdr *hdr;    /* the lane's header */
	uint8_t *area;                 /* the lane's first entry byte */
	bool committing;               /* the commit record (gen) was stored */
	size_t tail;                   /* bytes of entries written */
	struct range *ranges;          /* declared ranges, in order */
	size_t nranges, ranges_cap;
	struct slot *slots;            /* hash set over (off, len) */
	size_t nslots, slots_used;
	uint32_t slot_gen;
	uint64_t *seal;                /* pool offsets of blocks to reseal at the next seal */
	size_t nseal, seal_cap;
	uint64_t *meta;                /* every metadata block declared: all resealed at commit */
	size_t nmeta, meta_cap;
	struct end_hook *hooks;
	size_t nhooks, hooks_cap;
	uint8_t *snapshot;             /* verification: the pool at begin */
	bool verifying;                /* snapshot taken at begin: check at the end */
	bool watching;                 /* verification: collect other lanes' declarations */
	struct span *exempt;           /* ranges other transactions declared while this one ran */
	size_t nexempt, exempt_cap;
};

struct pmfuse_txm {
	struct pmfuse_pool *pool;
	uint32_t bs;
	uint64_t log_start, log_blocks;
	unsigned nlanes;
	uint64_t lane_blocks;
	size_t area_len;               /* entry bytes of one lane */
	pthread_mutex_t lock;          /* guards free[] and nfree */
	pthread_cond_t lane_free;      /* signalled when a lane is given back */
	unsigned *free;                /* indexes of the free lanes (a stack) */
	unsigned nfree;
	bool verify;
	struct pmfuse_tx *lanes;       /* per lane, its transaction's state (reused) */
#ifdef PMFUSE_TX_VERIFY
	pthread_mutex_t reg_lock;      /* guards reg[] and every tx's watching/exempt */
	struct reg_span *reg;          /* declared ranges of the open transactions */
	size_t nreg, reg_cap;
#endif
};

/* ---- metadata block helpers ----------------------------------------------------------------- */

void pmfuse_blk_init(struct pmfuse_blk_hdr *blk, uint32_t magic, uint64_t blkno, uint64_t owner,
		     uint16_t level, uint32_t bs)
{
	memset(blk, 0, bs);
	pmfuse_set_le32(&blk->magic, magic);
	pmfuse_set_le64(&blk->blkno, blkno);
	pmfuse_set_le64(&blk->owner, owner);
	pmfuse_set_le16(&blk->level, level);
}

uint32_t pmfuse_blk_crc(const struct pmfuse_blk_hdr *blk, uint32_t bs)
{
	static const uint8_t zero[4];
	size_t crc_off = offsetof(struct pmfuse_blk_hdr, crc);
	const uint8_t *p = (const uint8_t *)blk;
	uint32_t crc = pmfuse_crc32c(0, p, crc_off);
	crc = pmfuse_crc32c(crc, zero, sizeof(zero));
	return pmfuse_crc32c(crc, p + crc_off + 4, bs - crc_off - 4);
}

void pmfuse_blk_seal(struct pmfuse_blk_hdr *blk, uint32_t bs)
{
	pmfuse_set_le32(&blk->crc, pmfuse_blk_crc(blk, bs));
}

int pmfuse_blk_verify(const struct pmfuse_blk_hdr *blk, uint32_t magic, uint64_t blkno,
		      uint64_t owner, uint32_t bs)
{
	return pmfuse_blk_verify_memo(NULL, blk, magic, blkno, owner, bs);
}

int pmfuse_blk_verify_memo(struct pmfuse_pool *pool, const struct pmfuse_blk_hdr *blk,
			   uint32_t magic, uint64_t blkno, uint64_t owner, uint32_t bs)
{
	if (pmfuse_le32(blk->magic) != magic)
		return PMFUSE_CORRUPT("block %llu: magic %08x, expected %08x",
				      (unsigned long long)blkno, pmfuse_le32(blk->magic), magic);
	if (pmfuse_le64(blk->blkno) != blkno)
		return PMFUSE_CORRUPT("block %llu: says it is block %llu", (unsigned long long)blkno,
				      (unsigned long long)pmfuse_le64(blk->blkno));
	if (owner && pmfuse_le64(blk->owner) != owner)
		return PMFUSE_CORRUPT("block %llu: owner %llu, expected %llu",
				      (unsigned long long)blkno,
				      (unsigned long long)pmfuse_le64(blk->owner),
				      (unsigned long long)owner);
	if (pool && pmfuse_pool_memo_crc(pool, blkno))
		return 0;
	if (pmfuse_le32(blk->crc) != pmfuse_blk_crc(blk, bs))
		return PMFUSE_CORRUPT("block %llu: checksum mismatch", (unsigned long long)blkno);
	if (pool)
		pmfuse_pool_memo_set_crc(pool, blkno);
	return 0;
}

/* The log header's crc leaves gen out (see the top of this file): crc and gen count as zero. */
static uint32_t log_hdr_crc(const struct pmfuse_log_hdr *h, uint32_t bs)
{
	static const uint8_t zero[8];
	const uint8_t *p = (const uint8_t *)h;
	size_t crc_off = offsetof(struct pmfuse_log_hdr, hdr.crc);
	size_t gen_off = offsetof(struct pmfuse_log_hdr, gen);
	uint32_t crc;

	_Static_assert(offsetof(struct pmfuse_log_hdr, hdr.crc) + 4 <=
		       offsetof(struct pmfuse_log_hdr, gen), "crc before gen");
	crc = pmfuse_crc32c(0, p, crc_off);
	crc = pmfuse_crc32c(crc, zero, 4);
	crc = pmfuse_crc32c(crc, p + crc_off + 4, gen_off - crc_off - 4);
	crc = pmfuse_crc32c(crc, zero, 8);
	return pmfuse_crc32c(crc, p + gen_off + 8, bs - gen_off - 8);
}

/* ---- log entries ------------------------------------------------------------------------------ */

/* Bytes of the range an entry restores, and of the pre-image it carries (none for a zero entry). */
static uint32_t entry_range(uint32_t len_field)
{
	return len_field & ~PMFUSE_LOG_ZERO;
}

static uint32_t entry_data(uint32_t len_field)
{
	return len_field & PMFUSE_LOG_ZERO ? 0 : len_field;
}

static size_t entry_size(uint32_t len_field)
{
	return sizeof(struct pmfuse_log_entry) + PMFUSE_ALIGN_UP((size_t)entry_data(len_field), 8);
}

static uint32_t entry_crc(const struct pmfuse_log_entry *e)
{
	return pmfuse_crc32c(pmfuse_crc32c(0, e, offsetof(struct pmfuse_log_entry, crc)), e + 1,
			     entry_data(pmfuse_le32(e->len)));
}

/*
 * Collects the offsets (within the area) of the valid entries of generation gen, in order.
 * Entries stop at the first one that is stale, torn, or out of bounds. *n gets the count.
 */
static int valid_entries(const struct pmfuse_txm *txm, const uint8_t *area, uint64_t gen,
			 size_t **out, size_t *n)
{
	size_t pos = 0, cap = 0, cnt = 0;
	size_t *list = NULL;
	uint64_t pool_size = pmfuse_pool_size(txm->pool);
	uint64_t log_lo = txm->log_start * txm->bs;
	uint64_t log_hi = (txm->log_start + txm->log_blocks) * txm->bs;

	while (pos + sizeof(struct pmfuse_log_entry) <= txm->area_len) {
		const struct pmfuse_log_entry *e = (const void *)(area + pos);
		uint32_t field = pmfuse_le32(e->len), len = entry_range(field);
		uint64_t off = pmfuse_le64(e->off);

		if (pmfuse_le64(e->gen) != gen || len == 0 ||
		    entry_size(field) > txm->area_len - pos || entry_crc(e) != pmfuse_le32(e->crc))
			break;
		/* A checksummed entry that points outside the pool or into the log is damage. */
		if (off > pool_size || len > pool_size - off || (off < log_hi && off + len > log_lo)) {
			free(list);
			return PMFUSE_CORRUPT("log entry at %zu: range %llu+%u outside the pool", pos,
					      (unsigned long long)off, len);
		}
		if (cnt == cap) {
			size_t *l = realloc(list, (cap = cap ? cap * 2 : 64) * sizeof(*l));
			if (!l) {
				free(list);
				return -ENOMEM;
			}
			list = l;
		}
		list[cnt++] = pos;
		pos += entry_size(field);
	}
	*out = list;
	*n = cnt;
	return 0;
}

/* Restores the pre-images, newest first, makes them durable, and retires the generation. */
static void roll_back(struct pmfuse_txm *txm, struct pmfuse_log_hdr *hdr, const uint8_t *area,
		      const size_t *list, size_t n)
{
	struct pmfuse_pool *pool = txm->pool;

	for (size_t i = n; i-- > 0;) {
		const struct pmfuse_log_entry *e = (const void *)(area + list[i]);
		void *dst = pmfuse_pool_at(pool, pmfuse_le64(e->off));
		uint32_t field = pmfuse_le32(e->len);

		if (field & PMFUSE_LOG_ZERO)
			pmfuse_pool_memset(pool, dst, 0, entry_range(field), PMFUSE_MEM_NODRAIN);
		else
			pmfuse_pool_memcpy(pool, dst, e + 1, field, PMFUSE_MEM_NODRAIN);
	}
	pmfuse_pool_drain(pool);
	pmfuse_set_le64(&hdr->gen, pmfuse_le64(hdr->gen) + 1);
	pmfuse_pool_persist(pool, &hdr->gen, sizeof(hdr->gen));
}

/* The transaction this thread runs, if any: what a recovery from a memory error must abort. */
static __thread struct pmfuse_tx *running;

/* ---- manager ------------------------------------------------------------------------------------ */

static int check_geometry(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
			  uint64_t log_blocks, unsigned lanes)
{
	uint64_t blocks = pmfuse_pool_size(pool) / bs;
	if (bs < PMFUSE_BLOCK_SIZE_MIN || log_blocks < 2 || log_start == 0 ||
	    log_start >= blocks || log_blocks > blocks - log_start)
		return -EINVAL;
	if (lanes == 0 || lanes > PMFUSE_LOG_LANES_MAX || log_blocks % lanes ||
	    log_blocks / lanes < 2)
		return -EINVAL;
	return 0;
}

static struct pmfuse_log_hdr *lane_hdr(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
				       uint64_t lane_blocks, unsigned i)
{
	return pmfuse_pool_at(pool, (log_start + i * lane_blocks) * bs);
}

int pmfuse_txm_format(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		      uint64_t log_blocks, unsigned lanes)
{
	int rc = check_geometry(pool, bs, log_start, log_blocks, lanes);
	if (rc)
		return rc;
	/* Zero the whole log so that no entry of a former pool on this media can pass for ours. */
	void *log = pmfuse_pool_at(pool, log_start * bs);
	uint64_t lane_blocks = log_blocks / lanes;
	pmfuse_pool_memset(pool, log, 0, log_blocks * bs, PMFUSE_MEM_NODRAIN);
	for (unsigned i = 0; i < lanes; i++) {
		struct pmfuse_log_hdr *h = lane_hdr(pool, bs, log_start, lane_blocks, i);
		pmfuse_blk_init(&h->hdr, PMFUSE_BLK_LOG, log_start + i * lane_blocks,
				PMFUSE_OWNER_FS, 0, bs);
		pmfuse_set_le32(&h->lane, i);
		pmfuse_set_le32(&h->lanes, lanes);
		pmfuse_set_le32(&h->hdr.crc, log_hdr_crc(h, bs));
		pmfuse_set_le64(&h->gen, 1);
	}
	pmfuse_pool_persist(pool, log, log_blocks * bs);
	return 0;
}

/* The header of lane i passes its checks: 0, or -EUCLEAN with the reason in msg. */
static int check_lane_hdr(const struct pmfuse_log_hdr *h, uint32_t bs, uint64_t blkno,
			  unsigned i, unsigned lanes, char *msg, size_t msglen)
{
	uint32_t said = pmfuse_le32(h->lanes);

	if (pmfuse_le32(h->hdr.magic) != PMFUSE_BLK_LOG || pmfuse_le64(h->hdr.blkno) != blkno ||
	    pmfuse_le64(h->hdr.owner) != PMFUSE_OWNER_FS) {
		snprintf(msg, msglen, "log header at block %llu is not a log header",
			 (unsigned long long)blkno);
		return -EUCLEAN;
	}
	if (log_hdr_crc(h, bs) != pmfuse_le32(h->hdr.crc)) {
		snprintf(msg, msglen, "log header at block %llu: checksum mismatch",
			 (unsigned long long)blkno);
		return -EUCLEAN;
	}
	/* a log formatted before lanes has zeros here, and one lane */
	if (pmfuse_le32(h->lane) != i || (said != lanes && !(said == 0 && lanes == 1))) {
		snprintf(msg, msglen, "log header at block %llu: lane %u of %u, expected lane %u "
			 "of %u", (unsigned long long)blkno, pmfuse_le32(h->lane), said, i, lanes);
		return -EUCLEAN;
	}
	return 0;
}

int pmfuse_txm_probe(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		     uint64_t log_blocks, unsigned lanes, unsigned *pending, char *msg,
		     size_t msglen)
{
	char why[160];
	uint64_t lane_blocks;
	int rc;

	*pending = 0;
	if (check_geometry(pool, bs, log_start, log_blocks, lanes)) {
		snprintf(msg, msglen, "log blocks %llu+%llu in %u lanes do not fit the pool",
			 (unsigned long long)log_start, (unsigned long long)log_blocks, lanes);
		return PMFUSE_CORRUPT("%s", msg);
	}
	lane_blocks = log_blocks / lanes;
	for (unsigned i = 0; i < lanes; i++) {
		const struct pmfuse_log_hdr *h = lane_hdr(pool, bs, log_start, lane_blocks, i);
		const struct pmfuse_log_entry *e = (const void *)((const uint8_t *)h + bs);
		size_t area = (lane_blocks - 1) * bs;

		rc = check_lane_hdr(h, bs, log_start + i * lane_blocks, i, lanes, why, sizeof(why));
		if (rc) {
			snprintf(msg, msglen, "%s", why);
			return PMFUSE_CORRUPT("%s", why);
		}
		/* valid entries form a prefix: the lane holds a transaction iff the first is live */
		uint32_t field = pmfuse_le32(e->len);
		if (pmfuse_le64(e->gen) == pmfuse_le64(h->gen) && entry_range(field) != 0 &&
		    entry_size(field) <= area && entry_crc(e) == pmfuse_le32(e->crc))
			(*pending)++;
	}
	return 0;
}

int pmfuse_txm_open(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		    uint64_t log_blocks, unsigned lanes, struct pmfuse_txm **out, bool *recovered)
{
	struct pmfuse_txm *txm;
	size_t total = 0;
	unsigned rolled = 0;
	char why[160];
	int rc;

	*out = NULL;
	if (recovered)
		*recovered = false;
	rc = check_geometry(pool, bs, log_start, log_blocks, lanes);
	if (rc)
		return PMFUSE_CORRUPT("log blocks %llu+%llu in %u lanes do not fit the pool",
				      (unsigned long long)log_start, (unsigned long long)log_blocks,
				      lanes);
	for (unsigned i = 0; i < lanes; i++) {
		uint64_t blk = log_start + i * (log_blocks / lanes);
		rc = check_lane_hdr(pmfuse_pool_at(pool, blk * bs), bs, blk, i, lanes, why,
				    sizeof(why));
		if (rc)
			return PMFUSE_CORRUPT("%s", why);
	}

	txm = calloc(1, sizeof(*txm));
	if (!txm)
		return -ENOMEM;
	txm->lanes = calloc(lanes, sizeof(*txm->lanes));
	txm->free = calloc(lanes, sizeof(*txm->free));
	if (!txm->lanes || !txm->free) {
		free(txm->lanes);
		free(txm->free);
		free(txm);
		return -ENOMEM;
	}
	txm->pool = pool;
	txm->bs = bs;
	txm->log_start = log_start;
	txm->log_blocks = log_blocks;
	txm->nlanes = lanes;
	txm->lane_blocks = log_blocks / lanes;
	txm->area_len = (txm->lane_blocks - 1) * bs;
	pthread_mutex_init(&txm->lock, NULL);
	pthread_cond_init(&txm->lane_free, NULL);
#ifdef PMFUSE_TX_VERIFY
	pthread_mutex_init(&txm->reg_lock, NULL);
#endif
	/* lane 0 on top of the stack: a lone writer keeps using the same lane */
	for (unsigned i = 0; i < lanes; i++) {
		struct pmfuse_tx *tx = &txm->lanes[i];
		tx->txm = txm;
		tx->lane = i;
		tx->hdr = lane_hdr(pool, bs, log_start, txm->lane_blocks, i);
		tx->area = (uint8_t *)tx->hdr + bs;
		txm->free[i] = lanes - 1 - i;
	}
	txm->nfree = lanes;

	/*
	 * Recovery: every lane's unfinished transaction is rolled back. Transactions open at the
	 * same time never declared the same byte (see the top of this file), so the rollbacks
	 * touch disjoint ranges and their order does not matter. First collect every lane's
	 * entries, so that damage in one lane refuses the open before anything is written.
	 */
	size_t **lists = calloc(lanes, sizeof(*lists)), *counts = calloc(lanes, sizeof(*counts));
	if (!lists || !counts) {
		rc = -ENOMEM;
		goto fail_lists;
	}
	for (unsigned i = 0; i < lanes; i++) {
		struct pmfuse_tx *tx = &txm->lanes[i];
		rc = valid_entries(txm, tx->area, pmfuse_le64(tx->hdr->gen), &lists[i], &counts[i]);
		if (rc)
			goto fail_lists;
		total += counts[i];
	}
	if (total && pmfuse_pool_readonly(pool)) {
		pmfuse_log(PMFUSE_LOG_WARN, "%s: the log holds an unfinished transaction "
			   "(%zu entries); a writable open will roll it back",
			   pmfuse_pool_path(pool), total);
		rc = -EROFS;
		goto fail_lists;
	}
	for (unsigned i = 0; i < lanes; i++) {
		if (!counts[i])
			continue;
		roll_back(txm, txm->lanes[i].hdr, txm->lanes[i].area, lists[i], counts[i]);
		rolled++;
	}
	if (rolled) {
		pmfuse_log(PMFUSE_LOG_INFO, "%s: rolled back %u unfinished transaction%s (%zu "
			   "entries)", pmfuse_pool_path(pool), rolled, rolled > 1 ? "s" : "", total);
		if (recovered)
			*recovered = true;
	}
	for (unsigned i = 0; i < lanes; i++)
		free(lists[i]);
	free(lists);
	free(counts);
	*out = txm;
	return 0;

fail_lists:
	if (lists)
		for (unsigned i = 0; i < lanes; i++)
			free(lists[i]);
	free(lists);
	free(counts);
	pmfuse_txm_close(txm);
	return rc;
}

void pmfuse_txm_close(struct pmfuse_txm *txm)
{
	if (!txm)
		return;
	for (unsigned i = 0; i < txm->nlanes; i++) {
		struct pmfuse_tx *tx = &txm->lanes[i];
		free(tx->ranges);
		free(tx->slots);
		free(tx->seal);
		free(tx->meta);
		free(tx->hooks);
		free(tx->snapshot);
		free(tx->exempt);
	}
#ifdef PMFUSE_TX_VERIFY
	free(txm->reg);
	pthread_mutex_destroy(&txm->reg_lock);
#endif
	pthread_cond_destroy(&txm->lane_free);
	pthread_mutex_destroy(&txm->lock);
	free(txm->lanes);
	free(txm->free);
	free(txm);
}

unsigned pmfuse_txm_lanes(const struct pmfuse_txm *txm) { return txm->nlanes; }
size_t pmfuse_txm_lane_bytes(const struct pmfuse_txm *txm) { return txm->area_len; }
unsigned pmfuse_tx_lane(const struct pmfuse_tx *tx) { return tx->lane; }

void pmfuse_txm_set_verify(struct pmfuse_txm *txm, bool on)
{
#ifdef PMFUSE_TX_VERIFY
	txm->verify = on;
#else
	(void)txm;
	(void)on;
#endif
}

struct pmfuse_pool *pmfuse_txm_pool(const struct pmfuse_txm *txm) { return txm->pool; }
struct pmfuse_pool *pmfuse_tx_pool(const struct pmfuse_tx *tx) { return tx->txm->pool; }
uint32_t pmfuse_tx_block_size(const struct pmfuse_tx *tx) { return tx->txm->bs; }

/* ---- the (off, len) hash set ------------------------------------------------------------------- */

static size_t slot_hash(uint64_t off, uint32_t len, size_t mask)
{
	uint64_t h = (off ^ ((uint64_t)len << 47)) * 0x9e3779b97f4a7c15ull;
	return (size_t)(h >> 20) & mask;
}

static struct slot *slot_find(struct pmfuse_tx *tx, uint64_t off, uint32_t len)
{
	if (!tx->nslots)
		return NULL;
	size_t mask = tx->nslots - 1;
	for (size_t i = slot_hash(off, len, mask);; i = (i + 1) & mask) {
		struct slot *s = &tx->slots[i];
		if (s->gen != tx->slot_gen)
			return NULL;
		if (s->off == off && s->len == len)
			return s;
	}
}

static int slot_grow(struct pmfuse_tx *tx)
{
	size_t n = tx->nslots ? tx->nslots * 2 : 256;
	struct slot *old = tx->slots, *s = calloc(n, sizeof(*s));
	size_t oldn = tx->nslots;
	uint32_t oldgen = tx->slot_gen;

	if (!s)
		return -ENOMEM;
	tx->slots = s;
	tx->nslots = n;
	tx->slot_gen = 1;
	tx->slots_used = 0;
	for (size_t i = 0; i < oldn; i++) {
		if (old[i].gen != oldgen)
			continue;
		size_t j = slot_hash(old[i].off, old[i].len, n - 1);
		while (s[j].gen == 1)
			j = (j + 1) & (n - 1);
		s[j] = old[i];
		s[j].gen = 1;
		tx->slots_used++;
	}
	free(old);
	return 0;
}

/* Finds or inserts the slot for (off, len); NULL on ENOMEM. */
static struct slot *slot_get(struct pmfuse_tx *tx, uint64_t off, uint32_t len)
{
	struct slot *s = slot_find(tx, off, len);
	if (s)
		return s;
	if ((tx->slots_used + 1) * 2 > tx->nslots && slot_grow(tx))
		return NULL;
	size_t mask = tx->nslots - 1;
	size_t i = slot_hash(off, len, mask);
	while (tx->slots[i].gen == tx->slot_gen)
		i = (i + 1) & mask;
	s = &tx->slots[i];
	*s = (struct slot){ .off = off, .len = len, .gen = tx->slot_gen, .flags = 0 };
	tx->slots_used++;
	return s;
}

static int push_range(struct pmfuse_tx *tx, uint64_t off, uint32_t len)
{
	if (tx->nranges == tx->ranges_cap) {
		size_t cap = tx->ranges_cap ? tx->ranges_cap * 2 : 256;
		struct range *r = realloc(tx->ranges, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		tx->ranges = r;
		tx->ranges_cap = cap;
	}
	tx->ranges[tx->nranges++] = (struct range){ off, len };
	return 0;
}

/* True when [off, off + len) is already declared, exactly or as part of its whole block. */
static bool declared(struct pmfuse_tx *tx, uint64_t off, uint32_t len)
{
	uint32_t bs = tx->txm->bs;
	struct slot *s = slot_find(tx, off, len);
	if (s && (s->flags & (F_LOGGED | F_NEW)))
		return true;
	uint64_t blk = off / bs * bs;
	if (off + len <= blk + bs) {
		s = slot_find(tx, blk, bs);
		if (s && (s->flags & (F_LOGGED | F_NEW)))
			return true;
	}
	return false;
}

/* ---- the registry of declared ranges (PMFUSE_TX_VERIFY) ------------------------------------- */

#ifdef PMFUSE_TX_VERIFY
static int span_push(struct span **list, size_t *n, size_t *cap, uint64_t off, uint64_t end)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct span *p = realloc(*list, c * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*list = p;
		*cap = c;
	}
	(*list)[(*n)++] = (struct span){ off, end };
	return 0;
}

/* Verification of transactions that overlap in time: every other watching transaction learns of
 * [off, end), which may change under its snapshot. reg_lock held. */
static void tell_watchers(struct pmfuse_tx *tx, uint64_t off, uint64_t end)
{
	struct pmfuse_txm *txm = tx->txm;

	for (unsigned i = 0; i < txm->nlanes; i++) {
		struct pmfuse_tx *o = &txm->lanes[i];
		if (o == tx || !o->watching)
			continue;
		if (span_push(&o->exempt, &o->nexempt, &o->exempt_cap, off, end)) {
			/* cannot record it: that verification would give false alarms */
			o->watching = false;
			o->verifying = false;
		}
	}
}

/*
 * Records that tx declared [off, end). reg[] holds disjoint intervals sorted by offset, each
 * owned by one lane; the lane's own intervals that overlap or touch the new one are merged into
 * it. An overlap with another lane's interval is a bug in the callers' locking: abort.
 */
static void reg_declare(struct pmfuse_tx *tx, uint64_t off, uint64_t end)
{
	struct pmfuse_txm *txm = tx->txm;
	size_t lo = 0, hi, n;

	if (txm->nlanes == 1)
		return;   /* one transaction at a time: nothing to keep apart, nothing to watch */
	pthread_mutex_lock(&txm->reg_lock);
	n = txm->nreg;
	/* ends are sorted too: the first interval with end >= off */
	for (size_t l = 0, h = n; l < h;) {
		size_t m = l + (h - l) / 2;
		if (txm->reg[m].end < off)
			l = m + 1;
		else
			h = m;
		lo = l;
	}
	hi = lo;
	while (hi < n && txm->reg[hi].off <= end)
		hi++;
	/* another lane's interval that only touches at an edge stays as it is */
	if (lo < hi && txm->reg[lo].lane != tx->lane && txm->reg[lo].end == off)
		lo++;
	if (lo < hi && txm->reg[hi - 1].lane != tx->lane && txm->reg[hi - 1].off == end)
		hi--;
	for (size_t i = lo; i < hi; i++) {
		const struct reg_span *r = &txm->reg[i];
		if (r->lane == tx->lane)
			continue;
		uint64_t a = PMFUSE_MAX(off, r->off), b = PMFUSE_MIN(end, r->end);
		fprintf(stderr, "pmfuse: tx: lanes %u and %u both declared pool bytes %llu..%llu "
			"(block %llu + %llu) in open transactions: the callers' locks do not keep "
			"them apart\n", tx->lane, r->lane, (unsigned long long)a,
			(unsigned long long)b - 1, (unsigned long long)(a / txm->bs),
			(unsigned long long)(a % txm->bs));
		abort();
	}
	struct reg_span merged = { off, end, tx->lane };
	if (lo < hi) {
		merged.off = PMFUSE_MIN(off, txm->reg[lo].off);
		merged.end = PMFUSE_MAX(end, txm->reg[hi - 1].end);
	}
	if (lo == hi && n == txm->reg_cap) {
		size_t cap = txm->reg_cap ? txm->reg_cap * 2 : 256;
		struct reg_span *r = realloc(txm->reg, cap * sizeof(*r));
		if (!r) {
			/* the check is a debugging aid: without memory, skip this range */
			pthread_mutex_unlock(&txm->reg_lock);
			return;
		}
		txm->reg = r;
		txm->reg_cap = cap;
	}
	if (lo == hi) {
		memmove(&txm->reg[lo + 1], &txm->reg[lo], (n - lo) * sizeof(*txm->reg));
		txm->nreg++;
	} else if (hi - lo > 1) {
		memmove(&txm->reg[lo + 1], &txm->reg[hi], (n - hi) * sizeof(*txm->reg));
		txm->nreg -= hi - lo - 1;
	}
	txm->reg[lo] = merged;
	tell_watchers(tx, off, end);
	pthread_mutex_unlock(&txm->reg_lock);
}

/* The transaction in tx's lane ended: its ranges leave the registry. */
static void reg_release(struct pmfuse_tx *tx)
{
	struct pmfuse_txm *txm = tx->txm;
	size_t j = 0;

	if (txm->nlanes == 1)
		return;
	pthread_mutex_lock(&txm->reg_lock);
	for (size_t i = 0; i < txm->nreg; i++)
		if (txm->reg[i].lane != tx->lane)
			txm->reg[j++] = txm->reg[i];
	txm->nreg = j;
	tx->watching = false;
	pthread_mutex_unlock(&txm->reg_lock);
}

/* Verification starts: what other open transactions declared may change under the snapshot. */
static void watch_begin(struct pmfuse_tx *tx)
{
	struct pmfuse_txm *txm = tx->txm;

	pthread_mutex_lock(&txm->reg_lock);
	tx->nexempt = 0;
	tx->watching = true;
	for (size_t i = 0; i < txm->nreg && tx->watching; i++)
		if (span_push(&tx->exempt, &tx->nexempt, &tx->exempt_cap, txm->reg[i].off,
			      txm->reg[i].end))
			tx->watching = false;
	pthread_mutex_unlock(&txm->reg_lock);
}
#else
static void reg_declare(struct pmfuse_tx *tx, uint64_t off, uint64_t end)
{
	(void)tx;
	(void)off;
	(void)end;
}
static void reg_release(struct pmfuse_tx *tx) { (void)tx; }
#endif

/* ---- transactions ------------------------------------------------------------------------------ */

/* Resets the lane's reused state for a new transaction. */
static struct pmfuse_tx *tx_start(struct pmfuse_txm *txm, unsigned lane)
{
	struct pmfuse_tx *tx = &txm->lanes[lane];

	tx->committing = false;
	tx->tail = 0;
	tx->nranges = 0;
	tx->nseal = 0;
	tx->nmeta = 0;
	tx->nhooks = 0;
	tx->slots_used = 0;
	tx->verifying = false;
	if (++tx->slot_gen == 0) { /* wrapped: really clear */
		memset(tx->slots, 0, tx->nslots * sizeof(*tx->slots));
		tx->slot_gen = 1;
	}
#ifdef PMFUSE_TX_VERIFY
	if (txm->verify) {
		size_t size = pmfuse_pool_size(txm->pool);
		if (!tx->snapshot)
			tx->snapshot = malloc(size);
		if (tx->snapshot) {
			/* watch first: a range declared from now on is exempt even if it changed
			 * before the copy below saw it */
			watch_begin(tx);
			memcpy(tx->snapshot, pmfuse_pool_base(txm->pool), size);
			tx->verifying = tx->watching;
		}
	}
#endif
	return tx;
}

struct pmfuse_tx *pmfuse_tx_begin(struct pmfuse_txm *txm)
{
	unsigned lane;

	/* Waiting for a lane while holding one could wait forever (every lane held by threads
	 * like this one): a thread runs one transaction at a time per pool. (The crash tests open
	 * a second pool from inside a transaction's barrier: another manager, no wait on ours.) */
	assert(!running || running->txm != txm);
	pthread_mutex_lock(&txm->lock);
	while (!txm->nfree)
		pthread_cond_wait(&txm->lane_free, &txm->lock);
	lane = txm->free[--txm->nfree];
	pthread_mutex_unlock(&txm->lock);
	running = tx_start(txm, lane);
	return running;
}

struct pmfuse_tx *pmfuse_tx_try_begin(struct pmfuse_txm *txm)
{
	unsigned lane;

	pthread_mutex_lock(&txm->lock);
	if (!txm->nfree) {
		pthread_mutex_unlock(&txm->lock);
		return NULL;
	}
	lane = txm->free[--txm->nfree];
	pthread_mutex_unlock(&txm->lock);
	struct pmfuse_tx *tx = tx_start(txm, lane);
	if (!running)
		running = tx;
	return tx;
}

static int check_range(struct pmfuse_tx *tx, const void *addr, size_t len)
{
	struct pmfuse_pool *pool = tx->txm->pool;
	const char *b = pmfuse_pool_base(pool), *p = addr;
	assert(p >= b && len <= pmfuse_pool_size(pool) && (size_t)(p - b) <= pmfuse_pool_size(pool) - len);
	(void)b;
	(void)p;
	if (len == 0 || len > UINT32_MAX)
		return -EINVAL;
	return 0;
}

/*
 * Appends a log entry for [off, off + len) that is not declared yet and persists it before the
 * caller may change the range: with the pre-image at addr, or, when zero, as a zero entry
 * (len | PMFUSE_LOG_ZERO, no payload: the range is known to hold zeros).
 */
static int log_append(struct pmfuse_tx *tx, const void *addr, uint64_t off, uint32_t len,
		      bool zero)
{
	struct pmfuse_txm *txm = tx->txm;
	size_t need = entry_size(zero ? PMFUSE_LOG_ZERO : len);

	if (need > txm->area_len - tx->tail) {
		pmfuse_log(PMFUSE_LOG_ERR, "transaction too large for the log (%zu bytes used, %zu "
			   "more needed, log holds %zu)", tx->tail, need, txm->area_len);
		return -ENOSPC;
	}
	struct slot *s = slot_get(tx, off, len);
	if (!s || push_range(tx, off, len))
		return -ENOMEM;
	reg_declare(tx, off, off + len);

	struct pmfuse_log_entry *e = (void *)(tx->area + tx->tail);
	pmfuse_set_le64(&e->gen, pmfuse_le64(tx->hdr->gen));
	pmfuse_set_le64(&e->off, off);
	if (zero) {
		pmfuse_set_le32(&e->len, len | PMFUSE_LOG_ZERO);
	} else {
		pmfuse_set_le32(&e->len, len);
		memcpy(e + 1, addr, len);
		memset((uint8_t *)(e + 1) + len, 0, need - sizeof(*e) - len);
	}
	pmfuse_set_le32(&e->crc, entry_crc(e));
	pmfuse_pool_persist(txm->pool, e, need);
	tx->tail += need;
	s->flags |= F_LOGGED;
	return 0;
}

/*
 * The start of every declaration: 1 when [addr, addr + len) is declared already (nothing to do),
 * 0 with *off its pool offset when it is not, or -errno for a bad range.
 */
static int declare_begin(struct pmfuse_tx *tx, const void *addr, size_t len, uint64_t *off)
{
	int rc = check_range(tx, addr, len);
	if (rc)
		return rc;
	*off = pmfuse_pool_offset(tx->txm->pool, addr);
	/* the caller stores into the range next, declared already or not: what fsck's memo knew
	 * of its blocks no longer holds */
	pmfuse_pool_memo_forget(tx->txm->pool, *off, len);
	return declared(tx, *off, (uint32_t)len) ? 1 : 0;
}

int pmfuse_tx_add(struct pmfuse_tx *tx, void *addr, size_t len)
{
	uint64_t off;
	int rc = declare_begin(tx, addr, len, &off);
	if (rc)
		return rc < 0 ? rc : 0;
	return log_append(tx, addr, off, (uint32_t)len, false);
}

int pmfuse_tx_add_new(struct pmfuse_tx *tx, void *addr, size_t len)
{
	uint64_t off;
	int rc = declare_begin(tx, addr, len, &off);
	if (rc)
		return rc < 0 ? rc : 0;
	struct slot *s = slot_get(tx, off, (uint32_t)len);
	if (!s || push_range(tx, off, (uint32_t)len))
		return -ENOMEM;
	reg_declare(tx, off, off + len);
	s->flags |= F_NEW;
	return 0;
}

int pmfuse_tx_add_zero(struct pmfuse_tx *tx, void *addr, size_t len)
{
	uint64_t off;
	int rc;

	if (len & PMFUSE_LOG_ZERO)
		return -EINVAL;
	rc = declare_begin(tx, addr, len, &off);
	if (rc)
		return rc < 0 ? rc : 0;
#ifndef NDEBUG
	for (size_t i = 0; i < len; i++)
		assert(((const uint8_t *)addr)[i] == 0);
#endif
	return log_append(tx, addr, off, (uint32_t)len, true);
}

int pmfuse_tx_add_written(struct pmfuse_tx *tx, void *addr, size_t len)
{
	int rc = pmfuse_tx_add_new(tx, addr, len);
	if (rc)
		return rc;
	struct slot *s = slot_find(tx, pmfuse_pool_offset(tx->txm->pool, addr), (uint32_t)len);
	if (s && (s->flags & F_NEW))
		s->flags |= F_FLUSHED;
	return 0;
}

static int push_offset(uint64_t **list, size_t *n, size_t *cap, uint64_t off)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		uint64_t *p = realloc(*list, c * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*list = p;
		*cap = c;
	}
	(*list)[(*n)++] = off;
	return 0;
}

/*
 * Queues a block for the next pmfuse_tx_seal() and remembers it for commit. Commit reseals every
 * block declared in the transaction, not only those queued since the last seal: code may change a
 * block again after someone else's seal without declaring it anew, and must still commit a
 * valid crc.
 */
static int queue_seal(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *blk)
{
	uint64_t off = pmfuse_pool_offset(tx->txm->pool, blk);
	struct slot *s = slot_get(tx, off, 0);
	if (!s)
		return -ENOMEM;
	if (!(s->flags & F_META)) {
		if (push_offset(&tx->meta, &tx->nmeta, &tx->meta_cap, off))
			return -ENOMEM;
		s->flags |= F_META;
	}
	if (s->flags & F_SEAL)
		return 0;
	if (push_offset(&tx->seal, &tx->nseal, &tx->seal_cap, off))
		return -ENOMEM;
	s->flags |= F_SEAL;
	return 0;
}

int pmfuse_tx_add_meta(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *blk, void *addr, size_t len)
{
	int rc = pmfuse_tx_add(tx, addr, len);
	if (!rc)
		rc = pmfuse_tx_add(tx, &blk->crc, sizeof(blk->crc));
	if (!rc)
		rc = queue_seal(tx, blk);
	return rc;
}

int pmfuse_tx_add_block(struct pmfuse_tx *tx, struct pmfuse_blk_hdr *blk, bool is_new)
{
	uint32_t bs = tx->txm->bs;
	int rc = is_new ? pmfuse_tx_add_new(tx, blk, bs) : pmfuse_tx_add(tx, blk, bs);
	if (!rc)
		rc = queue_seal(tx, blk);
	return rc;
}

void pmfuse_tx_seal(struct pmfuse_tx *tx)
{
	struct pmfuse_pool *pool = tx->txm->pool;
	for (size_t i = 0; i < tx->nseal; i++) {
		pmfuse_blk_seal(pmfuse_pool_at(pool, tx->seal[i]), tx->txm->bs);
		struct slot *s = slot_find(tx, tx->seal[i], 0);
		if (s)
			s->flags &= ~F_SEAL;
	}
	tx->nseal = 0;
}

int pmfuse_tx_on_end(struct pmfuse_tx *tx, void (*fn)(void *arg, uint64_t a, uint64_t b,
						     bool committed),
		     void *arg, uint64_t a, uint64_t b)
{
	if (tx->nhooks == tx->hooks_cap) {
		size_t cap = tx->hooks_cap ? tx->hooks_cap * 2 : 32;
		struct end_hook *h = realloc(tx->hooks, cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		tx->hooks = h;
		tx->hooks_cap = cap;
	}
	tx->hooks[tx->nhooks++] = (struct end_hook){ fn, arg, a, b };
	return 0;
}

#ifdef PMFUSE_TX_VERIFY
static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/*
 * Debug check: every byte that differs from the snapshot must lie in a declared range (at
 * commit: any declared range; after abort: a range declared new, since logged ones were
 * restored), or in a range another transaction declared while this one ran (tx->exempt). The
 * log itself is exempt. Aborts the process on a violation: it is a bug. Holds reg_lock
 * throughout, so that no other transaction can declare (and then change) a range unseen.
 */
static void verify(struct pmfuse_tx *tx, bool after_abort)
{
	struct pmfuse_txm *txm = tx->txm;
	const uint8_t *now = pmfuse_pool_base(txm->pool), *was = tx->snapshot;
	size_t size = pmfuse_pool_size(txm->pool), n = 0;
	uint64_t log_lo = txm->log_start * txm->bs;
	uint64_t log_hi = log_lo + txm->log_blocks * txm->bs;

	pthread_mutex_lock(&txm->reg_lock);
	struct span *r = malloc((tx->nranges + tx->nexempt + 1) * sizeof(*r));
	if (!was || !r || !tx->verifying) {
		pthread_mutex_unlock(&txm->reg_lock);
		free(r);
		return;
	}
	for (size_t i = 0; i < tx->nranges; i++) {
		struct slot *s = slot_find(tx, tx->ranges[i].off, tx->ranges[i].len);
		if (!after_abort || (s && !(s->flags & F_LOGGED)))
			r[n++] = (struct span){ tx->ranges[i].off,
						tx->ranges[i].off + tx->ranges[i].len };
	}
	for (size_t i = 0; i < tx->nexempt; i++)
		r[n++] = tx->exempt[i];
	qsort(r, n, sizeof(*r), cmp_span);
	size_t ri = 0;
	uint64_t covered_to = 0; /* end of the union of ranges starting at or before the cursor */
	for (size_t chunk = 0; chunk < size; chunk += 4096) {
		size_t clen = PMFUSE_MIN((size_t)4096, size - chunk);
		if (!memcmp(now + chunk, was + chunk, clen))
			continue;
		for (size_t i = chunk; i < chunk + clen; i++) {
			if (now[i] == was[i] || (i >= log_lo && i < log_hi))
				continue;
			while (ri < n && r[ri].off <= i) {
				covered_to = PMFUSE_MAX(covered_to, r[ri].end);
				ri++;
			}
			if (i < covered_to)
				continue;
			fprintf(stderr, "pmfuse: tx verify: byte %zu (block %zu + %zu) changed "
				"outside the declared ranges %s (lane %u)\n", i, i / txm->bs,
				i % txm->bs, after_abort ? "after abort" : "at commit", tx->lane);
			abort();
		}
	}
	pthread_mutex_unlock(&txm->reg_lock);
	free(r);
}
#endif

/* Runs the end hooks, then gives the lane back: its gen store is durable by now. */
static void finish(struct pmfuse_tx *tx, bool committed)
{
	struct pmfuse_txm *txm = tx->txm;

	for (size_t i = 0; i < tx->nhooks; i++)
		tx->hooks[i].fn(tx->hooks[i].arg, tx->hooks[i].a, tx->hooks[i].b, committed);
	tx->nhooks = 0;
	reg_release(tx);
	if (running == tx)
		running = NULL;
	pthread_mutex_lock(&txm->lock);
	txm->free[txm->nfree++] = tx->lane;
	pthread_cond_signal(&txm->lane_free);
	pthread_mutex_unlock(&txm->lock);
}

int pmfuse_tx_commit(struct pmfuse_tx *tx)
{
	struct pmfuse_txm *txm = tx->txm;
	struct pmfuse_pool *pool = txm->pool;

	for (size_t i = 0; i < tx->nmeta; i++)
		pmfuse_blk_seal(pmfuse_pool_at(pool, tx->meta[i]), txm->bs);
	tx->nseal = 0;
#ifdef PMFUSE_TX_VERIFY
	if (tx->verifying)
		verify(tx, false);
#endif
	if (tx->nranges) {
		for (size_t i = 0; i < tx->nranges; i++) {
			struct slot *s = slot_find(tx, tx->ranges[i].off, tx->ranges[i].len);

			if (s && (s->flags & F_FLUSHED))
				continue;
			pmfuse_pool_flush(pool, pmfuse_pool_at(pool, tx->ranges[i].off),
					  tx->ranges[i].len);
		}
		pmfuse_pool_drain(pool);
	}
	if (tx->tail) {
		tx->committing = true;
		pmfuse_set_le64(&tx->hdr->gen, pmfuse_le64(tx->hdr->gen) + 1);
		pmfuse_pool_persist(pool, &tx->hdr->gen, sizeof(tx->hdr->gen));
	}
	finish(tx, true);
	return 0;
}

bool pmfuse_tx_abort_running(void)
{
	struct pmfuse_tx *tx = running;

	if (!tx)
		return false;
	if (tx->committing) {
		/* the gen store was made: only the end hooks were left to run */
		finish(tx, true);
		return true;
	}
	pmfuse_tx_abort(tx);
	return true;
}

void pmfuse_tx_abort(struct pmfuse_tx *tx)
{
	struct pmfuse_txm *txm = tx->txm;
	size_t n = 0, cap = 0, pos = 0, *list = NULL;

	/* The entries of this transaction are exactly [0, tail). */
	while (pos < tx->tail) {
		const struct pmfuse_log_entry *e = (const void *)(tx->area + pos);
		if (n == cap) {
			size_t *l = realloc(list, (cap = cap ? cap * 2 : 64) * sizeof(*l));
			if (!l) {
				/* Cannot track entries: leave the rollback to recovery at the next
				 * open, which is always correct, and refuse to go on. */
				pmfuse_log(PMFUSE_LOG_ERR, "out of memory aborting a transaction");
				abort();
			}
			list = l;
		}
		list[n++] = pos;
		pos += entry_size(pmfuse_le32(e->len));
	}
	if (n)
		roll_back(txm, tx->hdr, tx->area, list, n);
	free(list);
#ifdef PMFUSE_TX_VERIFY
	if (tx->verifying)
		verify(tx, true);
#endif
	finish(tx, false);
}
