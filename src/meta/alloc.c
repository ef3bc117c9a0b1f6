/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Block allocator: a persistent bitmap changed in transactions, and a DRAM index that decides.
 *
 * On the pool, bitmap block i (struct pmfuse_bitmap_blk at block bitmap_start + i) holds the bits
 * of blocks i * BITS .. i * BITS + BITS - 1, BITS = PMFUSE_BITMAP_BITS(block_size), LSB first in
 * each 64-bit word, 1 = in use. Checked at open and by pmfuse_alloc_count_free:
 *   B1  every bitmap block passes pmfuse_blk_verify (magic, own number, owner FS, crc), its
 *       first_block is i * BITS and its padding is zero;
 *   B2  the bits of the blocks below data_start, of the secondary superblock (block_count - 1)
 *       and of every block number past the end are 1.
 *
 * In DRAM, map[] is a copy of the bitmap with the same numbering, padded with 1 bits up to whole
 * groups of GROUP_BLOCKS blocks, and each group has a summary: its free blocks, the free run at
 * its tail, and its longest free run. Under al->lock:
 *   D1  a block in use on the pool is in use in map[], so map[] never hands out a taken block;
 *   D2  between transactions map[] equals the pool's bitmap; while one runs they differ only in
 *       the blocks it freed (1 in map[], 0 on the pool);
 *   D3  each summary describes its group of map[] exactly, and nfree counts the 0 bits of map[].
 *
 * How both follow the outcome of the transaction:
 *
 *             map[]            pool bits              at commit             at abort
 *   alloc     0 -> 1 now       0 -> 1, logged         -                     map[] 1 -> 0 (hook)
 *   free      stays 1          1 -> 0, logged         map[] 1 -> 0 (hook)   -
 *
 * The undo log puts the pool's bits back on abort or after a crash; the end hooks
 * (pmfuse_tx_on_end) fix map[]. A block freed by a transaction is unavailable until that free is
 * durable: reused earlier, it could be overwritten and a crash would roll back to metadata that
 * still points at it. A change first declares every bitmap word it will touch
 * (pmfuse_tx_add_meta: logs the words and the block's crc, reseals the block) and registers its
 * end hook, and only then modifies anything, so a failure (log full, no memory) changes nothing.
 *
 * Allocation policy (pmfuse_alloc_extent). Free runs are visited in circular order from the goal
 * up to the end of the filesystem, then from data_start back up to the goal (a goal outside the
 * data area, 0 included, means data_start); a free goal block starts a run even when the blocks
 * before it are free too. The first run of at least minlen
 * blocks opens a window of SEARCH_WINDOW blocks: the extent is the longest run that starts inside
 * the window, cut to maxlen, the earliest on ties, placed at the start of its run. A run of
 * maxlen blocks ends the search at once, so a free goal followed by maxlen free blocks is taken as
 * it is. Cost: a group without free blocks, or whose runs are all shorter than needed and whose
 * tail run does not reach far enough into the next groups, is skipped from its summary; inside a
 * group the words are scanned with ctz, never bit by bit. Once a candidate is known only longer
 * runs matter, so the length needed grows and more groups are skipped. On a 1 TiB pool of 4 KiB
 * blocks (256 Mi blocks, 8192 groups) a failed search reads 8192 summaries.
 *
 * Locking: al->lock guards map[], the summaries and nfree. Callers hold a transaction. Several
 * transactions may run at once (log lanes), but two open ones must never declare the same byte
 * (tx.h): a bitmap block, whose words and crc a change declares, may therefore be changed by
 * one open transaction at a time, which the callers' locks must ensure (today the fs layer runs
 * one writer at a time). The lock orders map[] against the end hooks and against readers such
 * as statfs. Lock order: the lane (pmfuse_tx_begin), then al->lock.
 */
#include "meta/alloc.h"

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "pmfuse/format.h"
#include "pool/pool.h"
#include "tx/tx.h"
#include "util/util.h"

#define GROUP_BLOCKS 32768ull
#define GROUP_WORDS (GROUP_BLOCKS / 64)
#define SEARCH_WINDOW GROUP_BLOCKS
#define NONE UINT64_MAX

#define ULL(x) ((unsigned long long)(x))

struct group {
	uint32_t nfree;   /* free blocks */
	uint32_t tail;    /* free blocks at the end of the group */
	uint32_t maxrun;  /* longest run of free blocks inside the group */
};

struct pmfuse_alloc {
	struct pmfuse_pool *pool;
	struct pmfuse_alloc_geom geom;
	uint64_t bpb;                /* bits per bitmap block */
	uint64_t *map;               /* ngroups * GROUP_WORDS words, 1 = used */
	struct group *groups;
	uint64_t ngroups;
	uint64_t nfree;              /* 0 bits in map[] */
	pthread_mutex_t lock;
};

/* The allocator whose lock this thread holds: a memory error in the bitmap (pool.h) is caught
 * above this module, which must not be left holding the lock (pmfuse_alloc_release_held). */
static __thread struct pmfuse_alloc *held;

static void al_lock(struct pmfuse_alloc *al)
{
	pthread_mutex_lock(&al->lock);
	held = al;
}

static void al_unlock(struct pmfuse_alloc *al)
{
	held = NULL;
	pthread_mutex_unlock(&al->lock);
}

void pmfuse_alloc_release_held(void)
{
	if (held)
		al_unlock(held);
}


struct run {
	uint64_t start, len;
};

static unsigned ctz64(uint64_t x) { return (unsigned)__builtin_ctzll(x); }
static unsigned clz64(uint64_t x) { return (unsigned)__builtin_clzll(x); }
static unsigned zeros64(uint64_t x) { return 64u - (unsigned)__builtin_popcountll(x); }

/* ---- geometry and word addressing ------------------------------------------------------------ */

uint64_t pmfuse_alloc_bitmap_blocks(uint64_t block_count, uint32_t bs)
{
	if (bs <= PMFUSE_BITMAP_HDR_SIZE)
		return 0;
	uint64_t bits = PMFUSE_BITMAP_BITS((uint64_t)bs);
	return block_count / bits + (block_count % bits != 0);
}

static int check_geom(const struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *g)
{
	uint32_t bs = g->block_size;
	uint64_t pool_blocks;

	if (bs < PMFUSE_BLOCK_SIZE_MIN || bs > PMFUSE_BLOCK_SIZE_MAX || (bs & (bs - 1)))
		goto bad;
	/* Only the bitmap blocks are touched here; the volume checks the rest of the layout. */
	pool_blocks = pmfuse_pool_size(pool) / bs;
	if (g->block_count < 2 || g->sb2_block != g->block_count - 1 || g->bitmap_start == 0 ||
	    g->bitmap_start >= pool_blocks || g->bitmap_blocks > pool_blocks - g->bitmap_start ||
	    g->bitmap_blocks < pmfuse_alloc_bitmap_blocks(g->block_count, bs) ||
	    g->data_start < g->bitmap_start + g->bitmap_blocks || g->data_start >= g->sb2_block)
		goto bad;
	return 0;
bad:
	pmfuse_log(PMFUSE_LOG_ERR, "allocator: bad geometry (block size %u, %llu blocks, bitmap "
		   "%llu+%llu, data from %llu, pool of %zu bytes)", bs, ULL(g->block_count),
		   ULL(g->bitmap_start), ULL(g->bitmap_blocks), ULL(g->data_start),
		   pmfuse_pool_size(pool));
	return -EINVAL;
}

static uint64_t bits_per_blk(const struct pmfuse_alloc_geom *g)
{
	return PMFUSE_BITMAP_BITS((uint64_t)g->block_size);
}

static struct pmfuse_bitmap_blk *bm_blk(const struct pmfuse_pool *pool,
					const struct pmfuse_alloc_geom *g, uint64_t i)
{
	return pmfuse_pool_at(pool, (g->bitmap_start + i) * g->block_size);
}

/* Word w of the whole persistent bitmap (blocks 64w .. 64w + 63). */
static struct pmfuse_le64 *pm_word(const struct pmfuse_alloc *al, uint64_t w)
{
	uint64_t wpb = al->bpb / 64;
	return &bm_blk(al->pool, &al->geom, w / wpb)->words[w % wpb];
}

/* The bits of word w (blocks 64w .. 64w + 63) that lie in [lo, hi). */
static uint64_t word_mask(uint64_t w, uint64_t lo, uint64_t hi)
{
	uint64_t first = w * 64, a, b;

	if (lo >= hi || hi <= first || lo >= first + 64)
		return 0;
	a = lo > first ? lo - first : 0;
	b = hi - first < 64 ? hi - first : 64;
	return (b == 64 ? ~0ull : (1ull << b) - 1) & ~((1ull << a) - 1);
}

/* The bits of word w that B2 requires to be 1. */
static uint64_t fixed_bits(const struct pmfuse_alloc_geom *g, uint64_t w)
{
	if (w * 64 >= g->data_start && w * 64 + 64 <= g->sb2_block)
		return 0;
	return word_mask(w, 0, g->data_start) | word_mask(w, g->sb2_block, UINT64_MAX);
}

/* ---- the persistent bitmap ------------------------------------------------------------------- */

int pmfuse_alloc_format(struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *geom)
{
	uint64_t bpb = bits_per_blk(geom), wpb = bpb / 64;
	int rc = check_geom(pool, geom);

	if (rc)
		return rc;
	if (pmfuse_pool_readonly(pool))
		return -EROFS;
	for (uint64_t i = 0; i < geom->bitmap_blocks; i++) {
		struct pmfuse_bitmap_blk *bb = bm_blk(pool, geom, i);

		pmfuse_blk_init(&bb->hdr, PMFUSE_BLK_BITMAP, geom->bitmap_start + i,
				PMFUSE_OWNER_FS, 0, geom->block_size);
		pmfuse_set_le64(&bb->first_block, i * bpb);
		for (uint64_t j = 0; j < wpb; j++)
			pmfuse_set_le64(&bb->words[j], fixed_bits(geom, i * wpb + j));
		pmfuse_blk_seal(&bb->hdr, geom->block_size);
	}
	pmfuse_pool_persist(pool, bm_blk(pool, geom, 0), geom->bitmap_blocks * geom->block_size);
	return 0;
}

static const char *fixed_why(const struct pmfuse_alloc_geom *g, uint64_t b)
{
	if (b < g->data_start)
		return "it lies below the data area";
	if (b == g->sb2_block)
		return "it holds the secondary superblock";
	return "it lies past the end of the filesystem";
}

/*
 * Checks bitmap block i (B1, B2) and adds its 0 bits to *nfree. Copies its words to dst, at most
 * nd of them (dst may be NULL when nd is 0).
 */
static int load_block(const struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *g,
		      uint64_t i, uint64_t *dst, uint64_t nd, uint64_t *nfree)
{
	const struct pmfuse_bitmap_blk *bb = bm_blk(pool, g, i);
	uint64_t bpb = bits_per_blk(g), wpb = bpb / 64, blkno = g->bitmap_start + i;
	uint64_t zeros = 0;
	int rc = pmfuse_blk_verify(&bb->hdr, PMFUSE_BLK_BITMAP, blkno, PMFUSE_OWNER_FS,
				   g->block_size);

	if (rc)
		return rc;
	if (pmfuse_le64(bb->first_block) != i * bpb)
		return PMFUSE_CORRUPT("bitmap block %llu: first_block %llu, expected %llu",
				      ULL(blkno), ULL(pmfuse_le64(bb->first_block)), ULL(i * bpb));
	if (pmfuse_le16(bb->hdr.level) || pmfuse_le16(bb->hdr.nrecs) || pmfuse_le32(bb->hdr.pad) ||
	    pmfuse_le64(bb->pad[0]) || pmfuse_le64(bb->pad[1]) || pmfuse_le64(bb->pad[2]))
		return PMFUSE_CORRUPT("bitmap block %llu: nonzero padding", ULL(blkno));
	for (uint64_t j = 0; j < wpb; j++) {
		uint64_t v = pmfuse_le64(bb->words[j]), w = i * wpb + j;
		uint64_t missing = fixed_bits(g, w) & ~v;

		if (missing) {
			uint64_t b = w * 64 + ctz64(missing);
			return PMFUSE_CORRUPT("bitmap block %llu: block %llu is marked free, "
					      "but %s", ULL(blkno), ULL(b), fixed_why(g, b));
		}
		zeros += zeros64(v);
		if (j < nd)
			dst[j] = v;
	}
	*nfree += zeros;
	return 0;
}

/* Checks every bitmap block; copies the bitmap into map (nmap words) unless map is NULL. */
static int load_all(const struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *g,
		    uint64_t *map, uint64_t nmap, uint64_t *nfree)
{
	uint64_t wpb = bits_per_blk(g) / 64;

	*nfree = 0;
	for (uint64_t i = 0; i < g->bitmap_blocks; i++) {
		uint64_t first = i * wpb;
		uint64_t nd = map && first < nmap ? nmap - first : 0;
		int rc = load_block(pool, g, i, nd ? map + first : NULL, nd, nfree);

		if (rc)
			return rc;
	}
	return 0;
}

int pmfuse_alloc_count_free(struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *geom,
			    uint64_t *free_blocks)
{
	uint64_t n;
	int rc = check_geom(pool, geom);

	if (!rc)
		rc = load_all(pool, geom, NULL, 0, &n);
	if (!rc)
		*free_blocks = n;
	return rc;
}

/* Sets the pool's bits of [s, s + l) to used. Every word was declared before. */
static void pm_set(struct pmfuse_alloc *al, uint64_t s, uint64_t l, bool used)
{
	uint64_t e = s + l;

	for (uint64_t w = s / 64; w * 64 < e; w++) {
		struct pmfuse_le64 *p = pm_word(al, w);
		uint64_t m = word_mask(w, s, e), v = pmfuse_le64(*p);

		pmfuse_set_le64(p, used ? v | m : v & ~m);
	}
}

/* Declares the words of [s, s + l) in each bitmap block they touch; modifies nothing. */
static int pm_declare(struct pmfuse_tx *tx, struct pmfuse_alloc *al, uint64_t s, uint64_t l)
{
	uint64_t e = s + l;

	while (s < e) {
		uint64_t i = s / al->bpb, stop = PMFUSE_MIN((i + 1) * al->bpb, e);
		uint64_t w0 = (s - i * al->bpb) / 64, w1 = (stop - 1 - i * al->bpb) / 64;
		struct pmfuse_bitmap_blk *bb = bm_blk(al->pool, &al->geom, i);
		int rc = pmfuse_tx_add_meta(tx, &bb->hdr, &bb->words[w0], (w1 - w0 + 1) * 8);

		if (rc)
			return rc;
		s = stop;
	}
	return 0;
}

/*
 * First block of [s, s + l) whose bit is not `used`, in map[] or (on_pool) in the pool's
 * bitmap; NONE when every bit matches.
 */
static uint64_t find_other(const struct pmfuse_alloc *al, bool on_pool, uint64_t s, uint64_t l,
			   bool used)
{
	uint64_t e = s + l;

	for (uint64_t w = s / 64; w * 64 < e; w++) {
		uint64_t v = on_pool ? pmfuse_le64(*pm_word(al, w)) : al->map[w];
		uint64_t other = (used ? ~v : v) & word_mask(w, s, e);

		if (other)
			return w * 64 + ctz64(other);
	}
	return NONE;
}

/* ---- the DRAM index -------------------------------------------------------------------------- */

/* Longest run of 0 bits in x. */
static uint32_t zero_run(uint64_t x)
{
	uint64_t y = ~x;
	uint32_t n = 0;

	for (; y; n++)
		y &= y << 1;
	return n;
}

/* Summarizes one group of words. */
static void group_scan(const uint64_t *w, struct group *out)
{
	uint32_t nfree = 0, run = 0, maxrun = 0;

	for (size_t k = 0; k < GROUP_WORDS; k++) {
		uint64_t x = w[k];

		if (!x) {
			nfree += 64;
			run += 64;
			continue;
		}
		nfree += zeros64(x);
		run += ctz64(x);            /* the run so far ends at the lowest used bit */
		maxrun = PMFUSE_MAX(maxrun, run);
		if (maxrun < 64)
			maxrun = PMFUSE_MAX(maxrun, zero_run(x));
		run = clz64(x);             /* free bits above the highest used bit */
	}
	out->nfree = nfree;
	out->tail = run;
	out->maxrun = PMFUSE_MAX(maxrun, run);
}

static void groups_update(struct pmfuse_alloc *al, uint64_t s, uint64_t l)
{
	for (uint64_t gi = s / GROUP_BLOCKS; gi <= (s + l - 1) / GROUP_BLOCKS; gi++)
		group_scan(al->map + gi * GROUP_WORDS, &al->groups[gi]);
}

/* Sets the bits of [s, s + l) in map[] to used and brings the summaries and nfree along. */
static void map_set(struct pmfuse_alloc *al, uint64_t s, uint64_t l, bool used)
{
	uint64_t e = s + l;

	for (uint64_t w = s / 64; w * 64 < e; w++) {
		uint64_t m = word_mask(w, s, e);

		if (used)
			al->map[w] |= m;
		else
			al->map[w] &= ~m;
	}
	groups_update(al, s, l);
	if (used)
		al->nfree -= l;
	else
		al->nfree += l;
}

/* First block in [p, end) whose bit in map[] is `used`; end if none. */
static uint64_t map_scan(const struct pmfuse_alloc *al, uint64_t p, uint64_t end, bool used)
{
	while (p < end) {
		uint64_t x = (used ? al->map[p / 64] : ~al->map[p / 64]) >> (p % 64);

		if (x) {
			p += ctz64(x);
			return PMFUSE_MIN(p, end);
		}
		p = (p | 63) + 1;
	}
	return end;
}

/* Length of the free run starting at the free block s, counted up to cap. */
static uint64_t run_length(const struct pmfuse_alloc *al, uint64_t s, uint64_t cap)
{
	uint64_t end = PMFUSE_MIN(s + cap, al->ngroups * GROUP_BLOCKS), p = s;

	while (p < end) {
		uint64_t gi = p / GROUP_BLOCKS;
		uint64_t gend = PMFUSE_MIN((gi + 1) * GROUP_BLOCKS, end);

		if (p % GROUP_BLOCKS || al->groups[gi].nfree != GROUP_BLOCKS) {
			uint64_t u = map_scan(al, p, gend, true);
			if (u < gend)
				return u - s;
		}
		p = gend;
	}
	return end - s;
}

/*
 * Finds the first free run of at least need blocks that starts in [p, limit) (a free block p
 * starts a run). Its length is counted up to cap (need <= cap).
 */
static bool find_run(const struct pmfuse_alloc *al, uint64_t p, uint64_t limit, uint64_t need,
		     uint64_t cap, struct run *out)
{
	while (p < limit) {
		uint64_t gi = p / GROUP_BLOCKS, gend = (gi + 1) * GROUP_BLOCKS, s, len;
		const struct group *gr = &al->groups[gi];

		if (gr->nfree == 0) {
			p = gend;
			continue;
		}
		if (gr->maxrun < need) {
			/* Only the tail run, continued into the next groups, can be long enough. */
			if (gr->tail == 0) {
				p = gend;
				continue;
			}
			s = PMFUSE_MAX(p, gend - gr->tail);
		} else {
			s = map_scan(al, p, gend, false);
			if (s == gend) {
				p = gend;
				continue;
			}
		}
		if (s >= limit)
			return false;
		len = run_length(al, s, cap);
		if (len >= need) {
			*out = (struct run){ s, len };
			return true;
		}
		p = s + len + 1;    /* block s + len is used */
	}
	return false;
}

/* The first fitting run r, found in phase ph, opens the window: shrink the phases' limits. */
static void open_window(const struct pmfuse_alloc_geom *g, uint64_t goal, int ph,
			const struct run *r, uint64_t limit[2])
{
	uint64_t wend = r->start + SEARCH_WINDOW;

	limit[ph] = PMFUSE_MIN(limit[ph], wend);
	if (ph == 0)
		limit[1] = wend > g->block_count ?
			PMFUSE_MIN(goal, g->data_start + (wend - g->block_count)) : g->data_start;
}

/* The policy described at the top of this file. 1 <= minlen <= maxlen. */
static bool search(const struct pmfuse_alloc *al, uint64_t goal, uint64_t minlen,
		   uint64_t maxlen, struct run *best)
{
	const struct pmfuse_alloc_geom *g = &al->geom;
	uint64_t from[2] = { goal, g->data_start }, limit[2] = { g->block_count, goal };
	struct run r;

	best->len = 0;
	for (int ph = 0; ph < 2; ph++) {
		uint64_t p = from[ph];

		while (p < limit[ph]) {
			uint64_t need = best->len ? best->len + 1 : minlen;

			if (!find_run(al, p, limit[ph], need, maxlen, &r))
				break;
			if (!best->len)
				open_window(g, goal, ph, &r, limit);
			*best = r;
			if (r.len >= maxlen)
				return true;
			p = r.start + r.len + 1;
		}
	}
	return best->len != 0;
}

/* ---- open, close, check ---------------------------------------------------------------------- */

int pmfuse_alloc_open(struct pmfuse_pool *pool, const struct pmfuse_alloc_geom *geom,
		      struct pmfuse_alloc **out)
{
	struct pmfuse_alloc *al;
	uint64_t nmap;
	int rc;

	*out = NULL;
	rc = check_geom(pool, geom);
	if (rc)
		return rc;
	al = calloc(1, sizeof(*al));
	if (!al)
		return -ENOMEM;
	al->pool = pool;
	al->geom = *geom;
	al->bpb = bits_per_blk(geom);
	al->ngroups = (geom->block_count + GROUP_BLOCKS - 1) / GROUP_BLOCKS;
	nmap = al->ngroups * GROUP_WORDS;
	al->map = malloc(nmap * sizeof(*al->map));
	al->groups = calloc(al->ngroups, sizeof(*al->groups));
	if (!al->map || !al->groups) {
		rc = -ENOMEM;
		goto fail;
	}
	memset(al->map, 0xff, nmap * sizeof(*al->map));
	rc = load_all(pool, geom, al->map, nmap, &al->nfree);
	if (rc)
		goto fail;
	for (uint64_t gi = 0; gi < al->ngroups; gi++)
		group_scan(al->map + gi * GROUP_WORDS, &al->groups[gi]);
	pthread_mutex_init(&al->lock, NULL);
	*out = al;
	return 0;
fail:
	free(al->map);
	free(al->groups);
	free(al);
	return rc;
}

void pmfuse_alloc_close(struct pmfuse_alloc *al)
{
	if (!al)
		return;
	pthread_mutex_destroy(&al->lock);
	free(al->map);
	free(al->groups);
	free(al);
}

int pmfuse_alloc_check(struct pmfuse_alloc *al)
{
	uint64_t nmap = al->ngroups * GROUP_WORDS;
	uint64_t npm = al->geom.bitmap_blocks * (al->bpb / 64), zeros = 0;
	int rc = 0;

	al_lock(al);
	for (uint64_t w = 0; w < nmap; w++) {
		uint64_t pm = w < npm ? pmfuse_le64(*pm_word(al, w)) : ~0ull;

		if (al->map[w] != pm) {
			uint64_t b = w * 64 + ctz64(al->map[w] ^ pm);
			bool pm_used = pm >> (b % 64) & 1;

			rc = PMFUSE_CORRUPT("block %llu is %s in the allocator's index but %s "
					    "in the bitmap", ULL(b), pm_used ? "free" : "used",
					    pm_used ? "used" : "free");
			goto out;
		}
		zeros += zeros64(pm);
	}
	for (uint64_t gi = 0; gi < al->ngroups; gi++) {
		struct group gr;

		group_scan(al->map + gi * GROUP_WORDS, &gr);
		if (memcmp(&gr, &al->groups[gi], sizeof(gr))) {
			rc = PMFUSE_CORRUPT("allocator group %llu: stale summary", ULL(gi));
			goto out;
		}
	}
	if (zeros != al->nfree)
		rc = PMFUSE_CORRUPT("allocator: %llu free blocks counted, %llu in the index",
				    ULL(zeros), ULL(al->nfree));
out:
	al_unlock(al);
	return rc;
}

/* ---- allocating and freeing ------------------------------------------------------------------ */

/* End hooks: a = first block, b = length. */
static void alloc_end(void *arg, uint64_t s, uint64_t l, bool committed)
{
	struct pmfuse_alloc *al = arg;

	if (committed)
		return;
	al_lock(al);
	map_set(al, s, l, false);
	al_unlock(al);
}

static void free_end(void *arg, uint64_t s, uint64_t l, bool committed)
{
	struct pmfuse_alloc *al = arg;

	if (!committed)
		return;
	al_lock(al);
	map_set(al, s, l, false);
	al_unlock(al);
}

int pmfuse_alloc_extent(struct pmfuse_tx *tx, struct pmfuse_alloc *al, uint64_t goal,
			uint64_t minlen, uint64_t maxlen, uint64_t *start, uint64_t *len)
{
	const struct pmfuse_alloc_geom *g = &al->geom;
	struct run r;
	uint64_t bad;
	int rc;

	assert(pmfuse_tx_pool(tx) == al->pool);
	if (minlen == 0 || minlen > maxlen)
		return -EINVAL;
	maxlen = PMFUSE_MIN(maxlen, g->sb2_block - g->data_start);
	if (goal < g->data_start || goal >= g->sb2_block)
		goal = g->data_start;
	al_lock(al);
	if (minlen > maxlen || minlen > al->nfree || !search(al, goal, minlen, maxlen, &r)) {
		rc = -ENOSPC;
		goto out;
	}
	bad = find_other(al, true, r.start, r.len, false);
	if (bad != NONE) {
		rc = PMFUSE_CORRUPT("block %llu is free in the allocator's index but used in the "
				    "bitmap", ULL(bad));
		goto out;
	}
	rc = pm_declare(tx, al, r.start, r.len);
	if (!rc)
		rc = pmfuse_tx_on_end(tx, alloc_end, al, r.start, r.len);
	if (rc)
		goto out;
	map_set(al, r.start, r.len, true);
	pm_set(al, r.start, r.len, true);
	pmfuse_tx_seal(tx);
	*start = r.start;
	*len = r.len;
out:
	al_unlock(al);
	return rc;
}

int pmfuse_alloc_free(struct pmfuse_tx *tx, struct pmfuse_alloc *al, uint64_t start,
		      uint64_t len)
{
	const struct pmfuse_alloc_geom *g = &al->geom;
	uint64_t bad;
	int rc;

	assert(pmfuse_tx_pool(tx) == al->pool);
	if (len == 0)
		return -EINVAL;
	if (start < g->data_start || start >= g->sb2_block || len > g->sb2_block - start)
		return PMFUSE_CORRUPT("freeing blocks %llu+%llu: outside the data area %llu..%llu",
				      ULL(start), ULL(len), ULL(g->data_start),
				      ULL(g->sb2_block - 1));
	al_lock(al);
	bad = find_other(al, true, start, len, true);
	if (bad != NONE) {
		rc = PMFUSE_CORRUPT("freeing block %llu, which is not allocated", ULL(bad));
		goto out;
	}
	bad = find_other(al, false, start, len, true);
	if (bad != NONE) {
		rc = PMFUSE_CORRUPT("freeing block %llu: used in the bitmap, free in the "
				    "allocator's index", ULL(bad));
		goto out;
	}
	rc = pm_declare(tx, al, start, len);
	if (!rc)
		rc = pmfuse_tx_on_end(tx, free_end, al, start, len);
	if (rc)
		goto out;
	pm_set(al, start, len, false);
	pmfuse_tx_seal(tx);
out:
	al_unlock(al);
	return rc;
}

uint64_t pmfuse_alloc_free_blocks(struct pmfuse_alloc *al)
{
	uint64_t n;

	al_lock(al);
	n = al->nfree;
	al_unlock(al);
	return n;
}

int pmfuse_alloc_is_used(struct pmfuse_alloc *al, uint64_t block)
{
	int used;

	if (block >= al->geom.block_count)
		return -ERANGE;
	al_lock(al);
	used = (int)(pmfuse_le64(*pm_word(al, block / 64)) >> (block % 64) & 1);
	al_unlock(al);
	return used;
}
