/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Undo-log transactions.
 *
 * Log layout: block log_start holds struct pmfuse_log_hdr; entries (struct pmfuse_log_entry +
 * pre-image, 8-byte aligned) are appended from block log_start + 1 on.
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
 * blocks to reseal. One transaction runs at a time (txm->lock).
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

struct pmfuse_tx {
	struct pmfuse_txm *txm;
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
};

struct pmfuse_txm {
	struct pmfuse_pool *pool;
	uint32_t bs;
	uint64_t log_start, log_blocks;
	struct pmfuse_log_hdr *hdr;
	uint8_t *area;                 /* first entry byte */
	size_t area_len;
	pthread_mutex_t lock;
	bool verify;
	struct pmfuse_tx tx;           /* the one running transaction, reused */
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
	if (pmfuse_le32(blk->crc) != pmfuse_blk_crc(blk, bs))
		return PMFUSE_CORRUPT("block %llu: checksum mismatch", (unsigned long long)blkno);
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
static int valid_entries(const struct pmfuse_txm *txm, uint64_t gen, size_t **out, size_t *n)
{
	size_t pos = 0, cap = 0, cnt = 0;
	size_t *list = NULL;
	uint64_t pool_size = pmfuse_pool_size(txm->pool);
	uint64_t log_lo = txm->log_start * txm->bs;
	uint64_t log_hi = (txm->log_start + txm->log_blocks) * txm->bs;

	while (pos + sizeof(struct pmfuse_log_entry) <= txm->area_len) {
		const struct pmfuse_log_entry *e = (const void *)(txm->area + pos);
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
static void roll_back(struct pmfuse_txm *txm, const size_t *list, size_t n)
{
	struct pmfuse_pool *pool = txm->pool;

	for (size_t i = n; i-- > 0;) {
		const struct pmfuse_log_entry *e = (const void *)(txm->area + list[i]);
		void *dst = pmfuse_pool_at(pool, pmfuse_le64(e->off));
		uint32_t field = pmfuse_le32(e->len);

		if (field & PMFUSE_LOG_ZERO)
			pmfuse_pool_memset(pool, dst, 0, entry_range(field), PMFUSE_MEM_NODRAIN);
		else
			pmfuse_pool_memcpy(pool, dst, e + 1, field, PMFUSE_MEM_NODRAIN);
	}
	pmfuse_pool_drain(pool);
	pmfuse_set_le64(&txm->hdr->gen, pmfuse_le64(txm->hdr->gen) + 1);
	pmfuse_pool_persist(pool, &txm->hdr->gen, sizeof(txm->hdr->gen));
}

/* The transaction this thread runs, if any: what a recovery from a memory error must abort. */
static __thread struct pmfuse_tx *running;

/* ---- manager ------------------------------------------------------------------------------------ */

static int check_geometry(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
			  uint64_t log_blocks)
{
	uint64_t blocks = pmfuse_pool_size(pool) / bs;
	if (bs < PMFUSE_BLOCK_SIZE_MIN || log_blocks < 2 || log_start == 0 ||
	    log_start >= blocks || log_blocks > blocks - log_start)
		return -EINVAL;
	return 0;
}

int pmfuse_txm_format(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		      uint64_t log_blocks)
{
	int rc = check_geometry(pool, bs, log_start, log_blocks);
	if (rc)
		return rc;
	/* Zero the whole log so that no entry of a former pool on this media can pass for ours. */
	void *log = pmfuse_pool_at(pool, log_start * bs);
	pmfuse_pool_memset(pool, log, 0, log_blocks * bs, PMFUSE_MEM_NODRAIN);
	struct pmfuse_log_hdr *h = log;
	pmfuse_blk_init(&h->hdr, PMFUSE_BLK_LOG, log_start, PMFUSE_OWNER_FS, 0, bs);
	pmfuse_set_le32(&h->hdr.crc, log_hdr_crc(h, bs));
	pmfuse_set_le64(&h->gen, 1);
	pmfuse_pool_persist(pool, log, log_blocks * bs);
	return 0;
}

int pmfuse_txm_open(struct pmfuse_pool *pool, uint32_t bs, uint64_t log_start,
		    uint64_t log_blocks, struct pmfuse_txm **out, bool *recovered)
{
	struct pmfuse_txm *txm;
	struct pmfuse_log_hdr *h;
	size_t *list = NULL, n = 0;
	int rc;

	*out = NULL;
	if (recovered)
		*recovered = false;
	rc = check_geometry(pool, bs, log_start, log_blocks);
	if (rc)
		return PMFUSE_CORRUPT("log blocks %llu+%llu do not fit the pool",
				      (unsigned long long)log_start, (unsigned long long)log_blocks);
	h = pmfuse_pool_at(pool, log_start * bs);
	if (pmfuse_le32(h->hdr.magic) != PMFUSE_BLK_LOG ||
	    pmfuse_le64(h->hdr.blkno) != log_start ||
	    pmfuse_le64(h->hdr.owner) != PMFUSE_OWNER_FS)
		return PMFUSE_CORRUPT("log header at block %llu is not a log header",
				      (unsigned long long)log_start);
	if (log_hdr_crc(h, bs) != pmfuse_le32(h->hdr.crc))
		return PMFUSE_CORRUPT("log header at block %llu: checksum mismatch",
				      (unsigned long long)log_start);

	txm = calloc(1, sizeof(*txm));
	if (!txm)
		return -ENOMEM;
	txm->pool = pool;
	txm->bs = bs;
	txm->log_start = log_start;
	txm->log_blocks = log_blocks;
	txm->hdr = h;
	txm->area = (uint8_t *)h + bs;
	txm->area_len = (log_blocks - 1) * bs;
	pthread_mutex_init(&txm->lock, NULL);
	txm->tx.txm = txm;

	rc = valid_entries(txm, pmfuse_le64(h->gen), &list, &n);
	if (rc)
		goto fail;
	if (n) {
		if (pmfuse_pool_readonly(pool)) {
			pmfuse_log(PMFUSE_LOG_WARN, "%s: the log holds an unfinished transaction "
				   "(%zu entries); a writable open will roll it back",
				   pmfuse_pool_path(pool), n);
			rc = -EROFS;
			goto fail;
		}
		roll_back(txm, list, n);
		pmfuse_log(PMFUSE_LOG_INFO, "%s: rolled back an unfinished transaction (%zu entries)",
			   pmfuse_pool_path(pool), n);
		if (recovered)
			*recovered = true;
	}
	free(list);
	*out = txm;
	return 0;
fail:
	free(list);
	pthread_mutex_destroy(&txm->lock);
	free(txm);
	return rc;
}

void pmfuse_txm_close(struct pmfuse_txm *txm)
{
	if (!txm)
		return;
	struct pmfuse_tx *tx = &txm->tx;
	free(tx->ranges);
	free(tx->slots);
	free(tx->seal);
	free(tx->meta);
	free(tx->hooks);
	free(tx->snapshot);
	pthread_mutex_destroy(&txm->lock);
	free(txm);
}

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

/* ---- transactions ------------------------------------------------------------------------------ */

struct pmfuse_tx *pmfuse_tx_begin(struct pmfuse_txm *txm)
{
	struct pmfuse_tx *tx = &txm->tx;

	pthread_mutex_lock(&txm->lock);
	running = tx;
	tx->committing = false;
	tx->tail = 0;
	tx->nranges = 0;
	tx->nseal = 0;
	tx->nmeta = 0;
	tx->nhooks = 0;
	tx->slots_used = 0;
	if (++tx->slot_gen == 0) { /* wrapped: really clear */
		memset(tx->slots, 0, tx->nslots * sizeof(*tx->slots));
		tx->slot_gen = 1;
	}
#ifdef PMFUSE_TX_VERIFY
	if (txm->verify) {
		size_t size = pmfuse_pool_size(txm->pool);
		if (!tx->snapshot)
			tx->snapshot = malloc(size);
		if (tx->snapshot)
			memcpy(tx->snapshot, pmfuse_pool_base(txm->pool), size);
	}
#endif
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

	struct pmfuse_log_entry *e = (void *)(txm->area + tx->tail);
	pmfuse_set_le64(&e->gen, pmfuse_le64(txm->hdr->gen));
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
static int cmp_range(const void *a, const void *b)
{
	const struct range *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/*
 * Debug check: every byte that differs from the snapshot must lie in a declared range (at
 * commit: any declared range; after abort: a range declared new, since logged ones were
 * restored). The log itself is exempt. Aborts the process on a violation: it is a bug.
 */
static void verify(struct pmfuse_tx *tx, bool after_abort)
{
	struct pmfuse_txm *txm = tx->txm;
	const uint8_t *now = pmfuse_pool_base(txm->pool), *was = tx->snapshot;
	size_t size = pmfuse_pool_size(txm->pool), n = 0;
	uint64_t log_lo = txm->log_start * txm->bs;
	uint64_t log_hi = log_lo + txm->log_blocks * txm->bs;
	struct range *r = malloc((tx->nranges + 1) * sizeof(*r));

	if (!was || !r) {
		free(r);
		return;
	}
	for (size_t i = 0; i < tx->nranges; i++) {
		struct slot *s = slot_find(tx, tx->ranges[i].off, tx->ranges[i].len);
		if (!after_abort || (s && !(s->flags & F_LOGGED)))
			r[n++] = tx->ranges[i];
	}
	qsort(r, n, sizeof(*r), cmp_range);
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
				covered_to = PMFUSE_MAX(covered_to, r[ri].off + r[ri].len);
				ri++;
			}
			if (i < covered_to)
				continue;
			fprintf(stderr, "pmfuse: tx verify: byte %zu (block %zu + %zu) changed "
				"outside the declared ranges %s\n", i, i / txm->bs, i % txm->bs,
				after_abort ? "after abort" : "at commit");
			abort();
		}
	}
	free(r);
}
#endif

static void finish(struct pmfuse_tx *tx, bool committed)
{
	for (size_t i = 0; i < tx->nhooks; i++)
		tx->hooks[i].fn(tx->hooks[i].arg, tx->hooks[i].a, tx->hooks[i].b, committed);
	tx->nhooks = 0;
	running = NULL;
	pthread_mutex_unlock(&tx->txm->lock);
}

int pmfuse_tx_commit(struct pmfuse_tx *tx)
{
	struct pmfuse_txm *txm = tx->txm;
	struct pmfuse_pool *pool = txm->pool;

	for (size_t i = 0; i < tx->nmeta; i++)
		pmfuse_blk_seal(pmfuse_pool_at(pool, tx->meta[i]), txm->bs);
	tx->nseal = 0;
#ifdef PMFUSE_TX_VERIFY
	if (txm->verify)
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
		pmfuse_set_le64(&txm->hdr->gen, pmfuse_le64(txm->hdr->gen) + 1);
		pmfuse_pool_persist(pool, &txm->hdr->gen, sizeof(txm->hdr->gen));
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
		const struct pmfuse_log_entry *e = (const void *)(txm->area + pos);
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
		roll_back(txm, list, n);
	free(list);
#ifdef PMFUSE_TX_VERIFY
	if (txm->verify)
		verify(tx, true);
#endif
	finish(tx, false);
}
