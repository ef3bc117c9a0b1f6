/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The volume: mkfs lays the pool out, open checks that layout and brings up the layers on it.
 *
 * Layout (block numbers; see format.h and doc/format.md):
 *
 *   0         primary superblock          copy 0
 *   1         state block                 PMFUSE_BLK_STATE
 *   2..       log                         log_blocks in log_lanes lanes, formatted by
 *                                         pmfuse_txm_format
 *   ..        bitmap                      bitmap_blocks, formatted by pmfuse_alloc_format
 *   ..        data                        data_start .. block_count - 2
 *   last      secondary superblock        copy 1, block_count - 1
 *
 * mkfs order, so that an interrupted mkfs leaves the former pool untouched (cut before 1 is
 * durable), no pool, or the whole new one; never old superblocks over new metadata:
 *   1. wipe block 0, the new last block, and the superblock area of every block that could
 *      hold an old secondary (the last block of the pool for each valid block size), persist;
 *   2. write the log, the bitmap and the state block, persist;
 *   3. write the primary, persist; write the secondary, persist.
 * Until 3 starts there is no valid superblock anywhere (1 saw to that, including a stale one of
 * a former pool). Once either copy is durable, everything it describes already is.
 *
 * Superblock protocol (two copies, block 0 and block_count - 1): every write bumps seq, writes
 * and persists the primary, then the secondary. Open checks both (magic, crc, version, own
 * location, geometry), takes the valid one with the highest seq (the primary on a tie), and when
 * writable rewrites the other if it is damaged, older or does not match. A crash between the two
 * writes therefore leaves one copy old and one new, and either is a consistent superblock.
 *
 * Invariants open checks, in the order it checks them (each failure is -EUCLEAN with a message,
 * and nothing on the pool has been written when it fails, except a log rollback, which is
 * always correct to do):
 *   - some superblock copy passes pmfuse_sb_check: regions in order and non-overlapping, inside
 *     block_count, and block_count blocks inside the pool;
 *   - no unknown incompat feature (-EOPNOTSUPP); no unknown ro_compat one unless read-only;
 *   - the log header is sound, and recovery (writable) rolls back an unfinished transaction; a
 *     read-only open only looks (log_probe) and reports a pending one (vol->log_pending), and
 *     then tolerates a state block that fails its checks, since it may be half-changed;
 *   - the state block verifies (magic, own number, owner, crc), every root is empty (levels 0,
 *     root 0) or has 1..PMFUSE_BTREE_MAX_LEVELS levels and a root inside the data area, and
 *     0 < root_ino < next_ino;
 *   - every bitmap block verifies (pmfuse_alloc_open; writable opens only).
 */
#include "meta/volume.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "meta/alloc.h"
#include "pool/pool.h"
#include "tx/tx.h"
#include "util/util.h"

/* Fewest data blocks mkfs accepts: room for a root directory, a few trees and some files. */
#define MIN_DATA_BLOCKS 256u
/* Default log size: a thousandth of the pool, within these bounds. */
#define LOG_BLOCKS_MIN 32u
#define LOG_BLOCKS_MAX 1024u
/* Default lanes: one per CPU, at most this many, each at least LOG_BLOCKS_MIN blocks (what the
 * smallest pool gives its one transaction at a time). */
#define LOG_LANES_DEFAULT_MAX 64u

struct vol_priv {
	struct pmfuse_volume pub;
	unsigned flags;
};

static struct vol_priv *priv_of(struct pmfuse_volume *vol)
{
	return (struct vol_priv *)((char *)vol - offsetof(struct vol_priv, pub));
}

/* Appends a note to msg, separated by "; ". */
__attribute__((format(printf, 3, 4)))
static void note(char *msg, size_t len, const char *fmt, ...)
{
	va_list ap;
	size_t used;

	if (!msg || !len)
		return;
	used = strnlen(msg, len);
	if (used + 3 >= len)
		return;
	if (used) {
		memcpy(msg + used, "; ", 3);
		used += 2;
	}
	va_start(ap, fmt);
	vsnprintf(msg + used, len - used, fmt, ap);
	va_end(ap);
}

/* Writes the message into buf (never NULL) and logs it: evaluates to -EUCLEAN. */
#define FAIL(buf, len, ...) (snprintf(buf, len, __VA_ARGS__), PMFUSE_CORRUPT(__VA_ARGS__))

static bool bs_valid(uint64_t bs)
{
	return bs >= PMFUSE_BLOCK_SIZE_MIN && bs <= PMFUSE_BLOCK_SIZE_MAX && !(bs & (bs - 1));
}

static uint32_t sb_crc(const struct pmfuse_sb *sb)
{
	struct pmfuse_sb copy = *sb;
	pmfuse_set_le32(&copy.crc, 0);
	return pmfuse_crc32c(0, &copy, sizeof(copy));
}

static void geom_from_sb(const struct pmfuse_sb *sb, struct pmfuse_alloc_geom *g)
{
	g->block_size = pmfuse_le32(sb->block_size);
	g->block_count = pmfuse_le64(sb->block_count);
	g->bitmap_start = pmfuse_le64(sb->bitmap_start);
	g->bitmap_blocks = pmfuse_le64(sb->bitmap_blocks);
	g->data_start = pmfuse_le64(sb->data_start);
	g->sb2_block = pmfuse_le64(sb->sb2_block);
}

/* ---- superblock checks ------------------------------------------------------------------------ */

/* Sets msg and evaluates to -EUCLEAN, without logging: probing looks at places that need not hold
 * a superblock at all, so the caller decides what is worth a log line. */
#define BAD(...) (snprintf(msg, msglen, __VA_ARGS__), -EUCLEAN)

/* pmfuse_sb_check without the log line; msg gets the reason without a location prefix. */
static int sb_verify_as(const struct pmfuse_sb *sb, uint64_t blk, uint64_t pool_size, bool any_copy,
			char *msg, size_t msglen)
{
	uint64_t magic = pmfuse_le64(sb->magic);
	uint32_t version = pmfuse_le32(sb->version), bs = pmfuse_le32(sb->block_size);
	uint32_t crc = sb_crc(sb), copy = pmfuse_le32(sb->copy);
	uint64_t count = pmfuse_le64(sb->block_count), state = pmfuse_le64(sb->state_block);
	uint64_t log = pmfuse_le64(sb->log_start), nlog = pmfuse_le64(sb->log_blocks);
	uint64_t bm = pmfuse_le64(sb->bitmap_start), nbm = pmfuse_le64(sb->bitmap_blocks);
	uint64_t data = pmfuse_le64(sb->data_start), sb2 = pmfuse_le64(sb->sb2_block);
	uint32_t lanes = pmfuse_le32(sb->log_lanes);
	bool laned = pmfuse_le64(sb->incompat) & PMFUSE_FEATURE_INCOMPAT_LOG_LANES;
	typedef unsigned long long ull;

	if (magic != PMFUSE_SB_MAGIC)
		return BAD("bad magic 0x%016llx (not a pmfuse superblock)", (ull)magic);
	if (crc != pmfuse_le32(sb->crc))
		return BAD("checksum mismatch (stored 0x%08x, computed 0x%08x)",
			   pmfuse_le32(sb->crc), crc);
	if (version != PMFUSE_FORMAT_VERSION)
		return BAD("format version %u; this program knows version %u", version,
			   PMFUSE_FORMAT_VERSION);
	if (!bs_valid(bs))
		return BAD("block size %u is not a power of two in %u..%u", bs,
			   PMFUSE_BLOCK_SIZE_MIN, PMFUSE_BLOCK_SIZE_MAX);
	if (!any_copy && (blk == 0 ? copy != 0 : copy != 1))
		return BAD("says it is copy %u, expected %u", copy, blk == 0 ? 0u : 1u);
	if (count > pool_size / bs)
		return BAD("%llu blocks of %u bytes do not fit the pool of %llu bytes", (ull)count,
			   bs, (ull)pool_size);
	if (count < 4 || sb2 != count - 1)
		return BAD("secondary superblock at block %llu, expected the last block %llu",
			   (ull)sb2, (ull)(count ? count - 1 : 0));
	if (blk != 0 && blk != sb2)
		return BAD("secondary copy found at block %llu, away from its place %llu", (ull)blk,
			   (ull)sb2);
	if (state != 1)
		return BAD("state block %llu, expected 1", (ull)state);
	/* Regions in order, without overlap: state < log < bitmap < data < sb2. The comparisons
	 * are written so that no sum can overflow. */
	if (log <= state || nlog < 2 || nlog > sb2 || log > sb2 - nlog)
		return BAD("log at %llu+%llu out of place (state block 1, secondary %llu)", (ull)log,
			   (ull)nlog, (ull)sb2);
	if (laned ? lanes < 2 || lanes > PMFUSE_LOG_LANES_MAX || nlog % lanes ||
		    nlog / lanes < 2 : lanes > 1)
		return BAD("log of %llu blocks in %u lanes (%s the lanes feature)", (ull)nlog, lanes,
			   laned ? "with" : "without");
	if (bm < log + nlog || nbm == 0 || nbm > sb2 || bm > sb2 - nbm)
		return BAD("bitmap at %llu+%llu out of place (log ends at %llu)", (ull)bm, (ull)nbm,
			   (ull)(log + nlog));
	if (nbm < pmfuse_alloc_bitmap_blocks(count, bs))
		return BAD("bitmap of %llu blocks cannot describe %llu blocks", (ull)nbm,
			   (ull)count);
	if (data < bm + nbm || data >= sb2)
		return BAD("data area starts at block %llu, outside %llu..%llu", (ull)data,
			   (ull)(bm + nbm), (ull)(sb2 - 1));
	if (pmfuse_le32(sb->clean) > 1)
		return BAD("clean flag %u (0 or 1)", pmfuse_le32(sb->clean));
	return 0;
}

static int sb_verify(const struct pmfuse_sb *sb, uint64_t blk, uint64_t pool_size, char *msg,
		     size_t msglen)
{
	return sb_verify_as(sb, blk, pool_size, false, msg, msglen);
}

int pmfuse_sb_check(const struct pmfuse_sb *sb, uint64_t blk, uint64_t pool_size, char *msg,
		    size_t msglen)
{
	char why[160];

	if (msg && msglen)
		msg[0] = '\0';
	if (!sb_verify(sb, blk, pool_size, why, sizeof(why)))
		return 0;
	if (msg && msglen)
		snprintf(msg, msglen, "superblock at block %llu: %s", (unsigned long long)blk, why);
	return PMFUSE_CORRUPT("superblock at block %llu: %s", (unsigned long long)blk, why);
}

/* The two copies describe the same filesystem (everything but copy, crc and the counters). */
static bool sb_match(const struct pmfuse_sb *a, const struct pmfuse_sb *b)
{
	return !memcmp(a->uuid, b->uuid, sizeof(a->uuid)) && a->block_size.v == b->block_size.v &&
	       a->block_count.v == b->block_count.v && a->log_start.v == b->log_start.v &&
	       a->log_blocks.v == b->log_blocks.v && a->log_lanes.v == b->log_lanes.v &&
	       a->bitmap_start.v == b->bitmap_start.v &&
	       a->bitmap_blocks.v == b->bitmap_blocks.v && a->data_start.v == b->data_start.v;
}

int pmfuse_sb_probe(struct pmfuse_pool *pool, struct pmfuse_sb_probe *p)
{
	uint64_t size = pmfuse_pool_size(pool);
	struct pmfuse_sb prim, sec;
	struct { uint64_t blk; uint32_t bs; } cands[8];
	unsigned ncand = 0;
	int why_rank = 0;   /* 2: a damaged copy was seen; 1: only places without one */

	memset(p, 0, sizeof(*p));
	memset(&prim, 0, sizeof(prim));
	p->copy = -1;

	if (size < PMFUSE_BLOCK_SIZE_MIN) {
		snprintf(p->why[0], sizeof(p->why[0]), "pool of %llu bytes is too small to hold one",
			 (unsigned long long)size);
		snprintf(p->why[1], sizeof(p->why[1]), "%s", p->why[0]);
		return -EUCLEAN;
	}
	memcpy(&prim, pmfuse_pool_base(pool), sizeof(prim));
	if (!sb_verify(&prim, 0, size, p->why[0], sizeof(p->why[0]))) {
		p->valid[0] = true;
		p->seq[0] = pmfuse_le64(prim.seq);
	}

	/* Where the secondary may be: where the primary says, if it has a magic and a sane block
	 * size; and, unless the primary is valid, the last block of the pool for every block
	 * size (the primary's word may be what is damaged). */
	uint32_t pbs = pmfuse_le32(prim.block_size);
	uint64_t psb2 = pmfuse_le64(prim.sb2_block);
	if (pmfuse_le64(prim.magic) == PMFUSE_SB_MAGIC && bs_valid(pbs) && psb2 > 0 &&
	    psb2 < size / pbs) {
		cands[ncand].blk = psb2;
		cands[ncand++].bs = pbs;
	}
	if (!p->valid[0]) {
		for (uint32_t bs = PMFUSE_BLOCK_SIZE_MIN; bs <= PMFUSE_BLOCK_SIZE_MAX; bs *= 2) {
			if (size / bs < 4 || (ncand && cands[0].blk * cands[0].bs ==
						      (size / bs - 1) * bs))
				continue;
			cands[ncand].blk = size / bs - 1;
			cands[ncand++].bs = bs;
		}
	}

	for (unsigned i = 0; i < ncand; i++) {
		struct pmfuse_sb cand;
		char why[sizeof(p->why[1])];
		int rank;

		memcpy(&cand, pmfuse_pool_at(pool, cands[i].blk * cands[i].bs), sizeof(cand));
		int bad = sb_verify(&cand, cands[i].blk, size, why, sizeof(why));
		if (!bad && pmfuse_le32(cand.block_size) != cands[i].bs) {
			bad = -EUCLEAN;
			snprintf(why, sizeof(why), "block size %u does not put it at block %llu",
				 pmfuse_le32(cand.block_size), (unsigned long long)cands[i].blk);
		}
		if (!bad) {
			if (!p->valid[1] || pmfuse_le64(cand.seq) > p->seq[1]) {
				sec = cand;
				p->valid[1] = true;
				p->seq[1] = pmfuse_le64(cand.seq);
				p->blk[1] = cands[i].blk;
			}
			continue;
		}
		rank = pmfuse_le64(cand.magic) == PMFUSE_SB_MAGIC ? 2 : 1;
		if (!p->valid[1] && rank > why_rank) {
			why_rank = rank;
			p->blk[1] = cands[i].blk;
			memcpy(p->why[1], why, sizeof(why));
		}
	}
	if (p->valid[1]) {
		p->why[1][0] = '\0';
	} else if (!ncand) {
		snprintf(p->why[1], sizeof(p->why[1]), "the pool is too small to hold one");
	} else if (why_rank < 2 && !p->valid[0] && ncand > 1) {
		p->blk[1] = 0;
		snprintf(p->why[1], sizeof(p->why[1]), "none at the end of the pool (looked at the "
			 "last block for block sizes %u..%u)", PMFUSE_BLOCK_SIZE_MIN,
			 PMFUSE_BLOCK_SIZE_MAX);
	}

	/* A secondary that describes another filesystem than a valid primary is not its copy. */
	if (p->valid[0] && p->valid[1] && !sb_match(&prim, &sec)) {
		p->valid[1] = false;
		snprintf(p->why[1], sizeof(p->why[1]), "does not match the primary (uuid or "
			 "geometry differ)");
	}

	if (p->valid[0] && (!p->valid[1] || p->seq[0] >= p->seq[1])) {
		p->sb = prim;
		p->copy = 0;
	} else if (p->valid[1]) {
		p->sb = sec;
		p->copy = 1;
	} else {
		char why[sizeof(p->why[0])];

		/* a sound primary whose only fault is the copy it says it is (the two copies
		 * swapped, or the secondary lost as well): its description still holds */
		if (sb_verify_as(&prim, 0, size, true, why, sizeof(why)))
			return -EUCLEAN;
		p->sb = prim;
		p->copy = 0;
		p->relabeled = true;
	}
	return 0;
}

/* ---- superblock writes -------------------------------------------------------------------------- */

/* Writes the DRAM superblock as copy `copy` and persists it. */
/*
 * Writes one copy. A memory error on it (pool.h) is caught here, so that the other copy is
 * still written and an unmount still finishes: -EIO, logged.
 */
static int sb_write_copy(struct pmfuse_pool *pool, const struct pmfuse_sb *sb, int copy)
{
	struct pmfuse_sb s = *sb;
	volatile uint64_t blk = copy ? pmfuse_le64(sb->sb2_block) : 0;
	struct pmfuse_pool_fault f;

	pmfuse_set_le32(&s.copy, (uint32_t)copy);
	pmfuse_set_le32(&s.crc, 0);
	pmfuse_set_le32(&s.crc, sb_crc(&s));
	if (sigsetjmp(f.env, 0)) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: superblock copy %d (block %llu): memory error, "
			   "not written", pmfuse_pool_path(pool), copy, (unsigned long long)blk);
		return -EIO;
	}
	pmfuse_pool_fault_arm(pool, &f);
	pmfuse_pool_memcpy(pool, pmfuse_pool_at(pool, blk * pmfuse_le32(sb->block_size)), &s,
			   sizeof(s), 0);
	pmfuse_pool_fault_disarm(&f);
	return 0;
}

int pmfuse_volume_write_sb(struct pmfuse_volume *vol)
{
	if (vol->readonly)
		return -EROFS;
	pmfuse_set_le64(&vol->sb.seq, pmfuse_le64(vol->sb.seq) + 1);
	int rc0 = sb_write_copy(vol->pool, &vol->sb, 0);
	int rc1 = sb_write_copy(vol->pool, &vol->sb, 1);
	return rc0 ? rc0 : rc1;
}

/* ---- mkfs ------------------------------------------------------------------------------------ */

struct layout {
	uint32_t bs;
	unsigned lanes;
	uint64_t blocks, log_blocks, bitmap_start, bitmap_blocks, data_start;
};

static uint64_t default_log_blocks(uint64_t blocks)
{
	return PMFUSE_MIN(PMFUSE_MAX(blocks / 1024, (uint64_t)LOG_BLOCKS_MIN),
			  (uint64_t)LOG_BLOCKS_MAX);
}

/* CPUs online, for the default lane count. */
static unsigned cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1u : n > (long)PMFUSE_LOG_LANES_MAX ? PMFUSE_LOG_LANES_MAX : (unsigned)n;
}

/*
 * The log's size and lanes. Asked for lanes (and no size): each lane gets at least
 * LOG_BLOCKS_MIN blocks and the log is a multiple of the lanes. Asked for a size (and no lanes):
 * one lane per CPU as long as each keeps LOG_BLOCKS_MIN blocks, at most LOG_LANES_DEFAULT_MAX,
 * and a count that divides the size. Asked for both, they must fit together (else false).
 */
static bool plan_log(uint64_t blocks, uint64_t log_blocks, unsigned lanes, uint64_t *nlog,
		     unsigned *nlanes)
{
	if (lanes) {
		if (lanes > PMFUSE_LOG_LANES_MAX)
			return false;
		if (!log_blocks) {
			log_blocks = PMFUSE_MAX(default_log_blocks(blocks),
						(uint64_t)lanes * LOG_BLOCKS_MIN);
			log_blocks = PMFUSE_ALIGN_UP(log_blocks, (uint64_t)lanes);
		}
		if (log_blocks % lanes || log_blocks / lanes < 2)
			return false;
	} else {
		if (!log_blocks)
			log_blocks = default_log_blocks(blocks);
		lanes = (unsigned)PMFUSE_MIN((uint64_t)PMFUSE_MIN(cpus(), LOG_LANES_DEFAULT_MAX),
					     PMFUSE_MAX(log_blocks / LOG_BLOCKS_MIN, (uint64_t)1));
		while (log_blocks % lanes)
			lanes--;
	}
	*nlog = log_blocks;
	*nlanes = lanes;
	return true;
}

/* Lays out blocks blocks; false when they cannot hold MIN_DATA_BLOCKS of data. */
static bool plan(struct layout *l, uint32_t bs, uint64_t blocks, uint64_t log_blocks,
		 unsigned lanes)
{
	l->bs = bs;
	l->blocks = blocks;
	if (!plan_log(blocks, log_blocks, lanes, &l->log_blocks, &l->lanes))
		return false;
	l->bitmap_start = 2 + l->log_blocks;
	l->bitmap_blocks = pmfuse_alloc_bitmap_blocks(blocks, bs);
	l->data_start = l->bitmap_start + l->bitmap_blocks;
	return l->log_blocks < blocks && l->data_start < blocks &&
	       blocks - l->data_start >= MIN_DATA_BLOCKS + 1;
}

uint64_t pmfuse_mkfs_min_size(uint32_t block_size)
{
	struct layout l;
	uint32_t bs = block_size ? block_size : PMFUSE_BLOCK_SIZE_DEFAULT;
	uint64_t blocks = 2 + LOG_BLOCKS_MIN + MIN_DATA_BLOCKS + 1;

	if (!bs_valid(bs))
		return 0;
	/* The bitmap grows with the pool; a handful of steps reach the fixed point. */
	while (!plan(&l, bs, blocks, 0, 1))
		blocks++;
	return blocks * bs;
}

bool pmfuse_label_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t len = strlen(s);

	if (len > PMFUSE_LABEL_MAX)
		return false;
	while (*p) {
		unsigned n;
		if (*p < 0x20 || *p == 0x7f)
			return false;
		if (*p < 0x80) {
			p++;
			continue;
		}
		if (*p >= 0xc2 && *p <= 0xdf)
			n = 1;
		else if (*p >= 0xe0 && *p <= 0xef)
			n = 2;
		else if (*p >= 0xf0 && *p <= 0xf4)
			n = 3;
		else
			return false;
		for (unsigned i = 1; i <= n; i++)
			if ((p[i] & 0xc0) != 0x80)
				return false;
		p += n + 1;
	}
	return true;
}

static int random_uuid(uint8_t uuid[16])
{
	size_t got = 0;

	while (got < 16) {
		ssize_t n = getrandom(uuid + got, 16 - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				return -errno;
			n = read(fd, uuid + got, 16 - got);
			close(fd);
			if (n <= 0)
				return -EIO;
		}
		got += (size_t)n;
	}
	uuid[6] = (uuid[6] & 0x0f) | 0x40; /* version 4 */
	uuid[8] = (uuid[8] & 0x3f) | 0x80; /* RFC 4122 variant */
	return 0;
}

static void progress(const struct pmfuse_mkfs_opts *o, uint64_t done, uint64_t total)
{
	if (o && o->progress)
		o->progress(o->progress_arg, done, total);
}

int pmfuse_mkfs(struct pmfuse_pool *pool, const struct pmfuse_mkfs_opts *opts)
{
	static const struct pmfuse_mkfs_opts defaults;
	const struct pmfuse_mkfs_opts *o = opts ? opts : &defaults;
	uint32_t bs = o->block_size ? o->block_size : PMFUSE_BLOCK_SIZE_DEFAULT;
	uint64_t size = pmfuse_pool_size(pool);
	struct pmfuse_alloc_geom geom;
	struct pmfuse_state *st;
	struct pmfuse_sb sb;
	struct layout l;
	int rc;

	if (!bs_valid(bs)) {
		pmfuse_log(PMFUSE_LOG_ERR, "mkfs: block size %u is not a power of two in %u..%u", bs,
			   PMFUSE_BLOCK_SIZE_MIN, PMFUSE_BLOCK_SIZE_MAX);
		return -EINVAL;
	}
	if (o->label && !pmfuse_label_valid(o->label)) {
		pmfuse_log(PMFUSE_LOG_ERR, "mkfs: label must be at most %d bytes of printable UTF-8",
			   PMFUSE_LABEL_MAX);
		return -EINVAL;
	}
	if (o->log_blocks == 1) {
		pmfuse_log(PMFUSE_LOG_ERR, "mkfs: the log needs at least 2 blocks");
		return -EINVAL;
	}
	if (pmfuse_pool_readonly(pool))
		return -EROFS;
	if (o->log_lanes > PMFUSE_LOG_LANES_MAX ||
	    (o->log_lanes && o->log_blocks && (o->log_blocks % o->log_lanes ||
					       o->log_blocks / o->log_lanes < 2))) {
		pmfuse_log(PMFUSE_LOG_ERR, "mkfs: %u log lanes: at most %u, and the log must be a "
			   "multiple of them with at least 2 blocks each", o->log_lanes,
			   PMFUSE_LOG_LANES_MAX);
		return -EINVAL;
	}
	if (size < pmfuse_mkfs_min_size(bs) ||
	    !plan(&l, bs, size / bs, o->log_blocks, o->log_lanes)) {
		pmfuse_log(PMFUSE_LOG_ERR, "mkfs: pool of %llu bytes is too small; it needs at "
			   "least %llu bytes with %u-byte blocks", (unsigned long long)size,
			   (unsigned long long)pmfuse_mkfs_min_size(bs), bs);
		return -ENOSPC;
	}

	memset(&sb, 0, sizeof(sb));
	if (o->uuid)
		memcpy(sb.uuid, o->uuid, sizeof(sb.uuid));
	else if ((rc = random_uuid(sb.uuid)))
		return rc;

	uint64_t total = l.data_start + 1, done = 0;
	progress(o, done, total);

	/* 1. No superblock of a former pool may survive: wipe block 0 and every last block. */
	pmfuse_pool_memset(pool, pmfuse_pool_at(pool, 0), 0, bs, PMFUSE_MEM_NODRAIN);
	for (uint64_t b = PMFUSE_BLOCK_SIZE_MIN; b <= PMFUSE_BLOCK_SIZE_MAX; b *= 2) {
		if (size / b < 2)
			continue;
		pmfuse_pool_memset(pool, pmfuse_pool_at(pool, (size / b - 1) * b), 0,
				   sizeof(struct pmfuse_sb), PMFUSE_MEM_NODRAIN);
	}
	pmfuse_pool_memset(pool, pmfuse_pool_at(pool, (l.blocks - 1) * bs), 0, bs,
			   PMFUSE_MEM_NODRAIN);
	pmfuse_pool_drain(pool);
	progress(o, done += 1, total);

	/* 2. Log, bitmap, state block. */
	rc = pmfuse_txm_format(pool, bs, 2, l.log_blocks, l.lanes);
	if (rc)
		return rc;
	progress(o, done += l.log_blocks, total);

	geom = (struct pmfuse_alloc_geom){
		.block_size = bs, .block_count = l.blocks, .bitmap_start = l.bitmap_start,
		.bitmap_blocks = l.bitmap_blocks, .data_start = l.data_start,
		.sb2_block = l.blocks - 1,
	};
	rc = pmfuse_alloc_format(pool, &geom);
	if (rc)
		return rc;
	progress(o, done += l.bitmap_blocks, total);

	st = pmfuse_pool_at(pool, (uint64_t)bs);
	pmfuse_blk_init(&st->hdr, PMFUSE_BLK_STATE, 1, PMFUSE_OWNER_FS, 0, bs);
	pmfuse_set_le64(&st->root_ino, 1);
	pmfuse_set_le64(&st->next_ino, 2);
	pmfuse_set_le64(&st->generation, 1);
	pmfuse_blk_seal(&st->hdr, bs);
	pmfuse_pool_persist(pool, st, bs);
	progress(o, done += 1, total);

	/* 3. Superblocks, primary first (the two-copy protocol). */
	pmfuse_set_le64(&sb.magic, PMFUSE_SB_MAGIC);
	pmfuse_set_le32(&sb.version, PMFUSE_FORMAT_VERSION);
	pmfuse_set_le32(&sb.block_size, bs);
	if (o->label)
		memcpy(sb.label, o->label, strlen(o->label));
	pmfuse_set_le64(&sb.block_count, l.blocks);
	pmfuse_set_le64(&sb.state_block, 1);
	pmfuse_set_le64(&sb.log_start, 2);
	pmfuse_set_le64(&sb.log_blocks, l.log_blocks);
	if (l.lanes > 1) {
		pmfuse_set_le32(&sb.log_lanes, l.lanes);
		pmfuse_set_le64(&sb.incompat, PMFUSE_FEATURE_INCOMPAT_LOG_LANES);
	}
	pmfuse_set_le64(&sb.bitmap_start, l.bitmap_start);
	pmfuse_set_le64(&sb.bitmap_blocks, l.bitmap_blocks);
	pmfuse_set_le64(&sb.data_start, l.data_start);
	pmfuse_set_le64(&sb.sb2_block, l.blocks - 1);
	pmfuse_set_le64(&sb.seq, 1);
	pmfuse_set_le64(&sb.mkfs_time, (uint64_t)time(NULL));
	pmfuse_set_le32(&sb.clean, PMFUSE_SB_CLEAN);
	sb_write_copy(pool, &sb, 0);
	sb_write_copy(pool, &sb, 1);
	progress(o, total, total);
	return 0;
}

/* ---- open ------------------------------------------------------------------------------------- */

/* Lanes of the log a superblock describes (one without INCOMPAT_LOG_LANES). */
static unsigned sb_lanes(const struct pmfuse_sb *sb)
{
	uint32_t n = pmfuse_le32(sb->log_lanes);
	return n ? n : 1;
}

/*
 * Looks at the log without changing it (pmfuse_txm_probe): every lane header must be sound, and
 * a transaction is pending when some lane holds one. Read-only opens use this instead of
 * pmfuse_txm_open, which would roll back.
 */
static int log_probe(struct pmfuse_pool *pool, const struct pmfuse_sb *sb, unsigned *pending,
		     char *msg, size_t len)
{
	return pmfuse_txm_probe(pool, pmfuse_le32(sb->block_size), pmfuse_le64(sb->log_start),
				pmfuse_le64(sb->log_blocks), sb_lanes(sb), pending, msg, len);
}

static int check_root(const struct pmfuse_volume *vol, const struct pmfuse_btree_root *r,
		      unsigned i, char *msg, size_t len)
{
	uint64_t root = pmfuse_le64(r->root), data = pmfuse_le64(vol->sb.data_start);
	uint64_t sb2 = pmfuse_le64(vol->sb.sb2_block);
	unsigned levels = pmfuse_le16(r->levels);

	if (levels > PMFUSE_BTREE_MAX_LEVELS)
		return FAIL(msg, len, "state block: root %u has %u levels (at most %u)", i, levels,
			    PMFUSE_BTREE_MAX_LEVELS);
	if (levels == 0 && (root != 0 || pmfuse_le64(r->nrecs) != 0))
		return FAIL(msg, len, "state block: root %u is empty but points at block %llu "
			    "with %llu records", i, (unsigned long long)root,
			    (unsigned long long)pmfuse_le64(r->nrecs));
	if (levels > 0 && (root < data || root >= sb2))
		return FAIL(msg, len, "state block: root %u at block %llu, outside the data area "
			    "%llu..%llu", i, (unsigned long long)root, (unsigned long long)data,
			    (unsigned long long)(sb2 - 1));
	return 0;
}

static int check_state(struct pmfuse_volume *vol, char *msg, size_t len)
{
	uint64_t blk = pmfuse_le64(vol->sb.state_block);
	struct pmfuse_state *st = pmfuse_volume_block(vol, blk);
	int rc;

	rc = pmfuse_blk_verify(&st->hdr, PMFUSE_BLK_STATE, blk, PMFUSE_OWNER_FS, vol->block_size);
	if (rc)
		return FAIL(msg, len, "state block %llu: bad header or checksum (magic 0x%08x, "
			    "says block %llu)", (unsigned long long)blk, pmfuse_le32(st->hdr.magic),
			    (unsigned long long)pmfuse_le64(st->hdr.blkno));
	if (pmfuse_le16(st->hdr.level) != 0)
		return FAIL(msg, len, "state block %llu: level %u, expected 0",
			    (unsigned long long)blk, pmfuse_le16(st->hdr.level));
	for (unsigned i = 0; i < PMFUSE_STATE_ROOTS; i++)
		if ((rc = check_root(vol, &st->roots[i], i, msg, len)))
			return rc;
	uint64_t root_ino = pmfuse_le64(st->root_ino), next_ino = pmfuse_le64(st->next_ino);
	if (root_ino == 0 || next_ino <= root_ino)
		return FAIL(msg, len, "state block %llu: root inode %llu, next inode %llu (need "
			    "0 < root < next)", (unsigned long long)blk,
			    (unsigned long long)root_ino, (unsigned long long)next_ino);
	return 0;
}

int pmfuse_volume_open(struct pmfuse_pool *pool, unsigned flags, struct pmfuse_volume **out,
		       char *msg, size_t msglen)
{
	bool rdonly = flags & PMFUSE_VOL_RDONLY;
	struct pmfuse_sb_probe probe;
	struct pmfuse_alloc_geom geom;
	struct pmfuse_volume *vol;
	struct vol_priv *vp;
	char tmp[256];
	int rc;

	*out = NULL;
	if (msg && msglen)
		msg[0] = '\0';
	if (rdonly && (flags & PMFUSE_VOL_MOUNT))
		return -EINVAL;
	if (!rdonly && pmfuse_pool_readonly(pool)) {
		note(msg, msglen, "the pool is mapped read-only; open the volume read-only");
		return -EROFS;
	}

	rc = pmfuse_sb_probe(pool, &probe);
	if (rc) {
		if (probe.blk[1])
			snprintf(tmp, sizeof(tmp), " (block %llu)", (unsigned long long)probe.blk[1]);
		else
			tmp[0] = '\0';
		note(msg, msglen, "no valid superblock: primary (block 0): %s; secondary%s: %s",
		     probe.why[0], tmp, probe.why[1]);
		return PMFUSE_CORRUPT("no valid superblock: primary (block 0): %s; secondary%s: %s",
				      probe.why[0], tmp, probe.why[1]);
	}

	uint64_t incompat = pmfuse_le64(probe.sb.incompat);
	uint64_t ro_compat = pmfuse_le64(probe.sb.ro_compat);
	if (incompat & ~PMFUSE_FEATURE_INCOMPAT_SUPP) {
		note(msg, msglen, "unsupported incompatible features 0x%016llx",
		     (unsigned long long)(incompat & ~PMFUSE_FEATURE_INCOMPAT_SUPP));
		return -EOPNOTSUPP;
	}
	if ((ro_compat & ~PMFUSE_FEATURE_RO_COMPAT_SUPP) && !rdonly) {
		note(msg, msglen, "unsupported read-only-compatible features 0x%016llx: the volume "
		     "can only be opened read-only",
		     (unsigned long long)(ro_compat & ~PMFUSE_FEATURE_RO_COMPAT_SUPP));
		return -EROFS;
	}

	vp = calloc(1, sizeof(*vp));
	if (!vp)
		return -ENOMEM;
	vp->flags = flags;
	vol = &vp->pub;
	vol->pool = pool;
	vol->sb = probe.sb;
	pmfuse_set_le32(&vol->sb.copy, 0);
	vol->sb_copy = probe.copy;
	vol->block_size = pmfuse_le32(probe.sb.block_size);
	vol->readonly = rdonly;
	vol->was_clean = pmfuse_le32(probe.sb.clean) == PMFUSE_SB_CLEAN;
	int other = 1 - probe.copy;
	if (!probe.valid[other] || probe.seq[other] != probe.seq[probe.copy]) {
		vol->sb_other_bad = true;
		if (probe.valid[other])
			note(msg, msglen, "%s superblock (block %llu) is older (seq %llu < %llu)%s",
			     other ? "secondary" : "primary", (unsigned long long)probe.blk[other],
			     (unsigned long long)probe.seq[other],
			     (unsigned long long)probe.seq[probe.copy],
			     rdonly ? "" : "; rewritten");
		else
			note(msg, msglen, "%s superblock (block %llu) is damaged: %s%s",
			     other ? "secondary" : "primary", (unsigned long long)probe.blk[other],
			     probe.why[other], rdonly ? "" : "; rewritten from the other copy");
	}

	/* The log: recovery when writable, a look only when read-only. */
	uint64_t log_start = pmfuse_le64(vol->sb.log_start);
	uint64_t log_blocks = pmfuse_le64(vol->sb.log_blocks);
	if (rdonly) {
		unsigned lanes_pending = 0;
		rc = log_probe(pool, &vol->sb, &lanes_pending, tmp, sizeof(tmp));
		if (rc) {
			note(msg, msglen, "%s", tmp);
			goto fail;
		}
		vol->log_pending = lanes_pending > 0;
		vol->log_pending_lanes = lanes_pending;
	}
	if (!vol->log_pending) {
		rc = pmfuse_txm_open(pool, vol->block_size, log_start, log_blocks,
				     sb_lanes(&vol->sb), &vol->txm,
				     &vol->recovered);
		if (rc == -EUCLEAN && !rdonly && (flags & PMFUSE_VOL_REPAIR)) {
			note(msg, msglen, "log at blocks %llu..%llu is damaged: formatted anew",
			     (unsigned long long)log_start,
			     (unsigned long long)(log_start + log_blocks - 1));
			vol->log_reformatted = true;
			rc = pmfuse_txm_format(pool, vol->block_size, log_start, log_blocks,
					       sb_lanes(&vol->sb));
			if (!rc)
				rc = pmfuse_txm_open(pool, vol->block_size, log_start, log_blocks,
						     sb_lanes(&vol->sb), &vol->txm,
						     &vol->recovered);
		}
		if (rc == -EROFS && rdonly) {
			/* a transaction began between the look and the open (a live daemon) */
			vol->log_pending = true;
			vol->log_pending_lanes = PMFUSE_MAX(vol->log_pending_lanes, 1u);
		} else if (rc) {
			if (rc == -EUCLEAN)
				note(msg, msglen, "log at blocks %llu..%llu is damaged",
				     (unsigned long long)log_start,
				     (unsigned long long)(log_start + log_blocks - 1));
			goto fail;
		}
	}
	if (vol->log_pending)
		note(msg, msglen, "the log holds an unfinished transaction; a writable open will "
		     "roll it back (metadata shown as it is now)");
	if (vol->recovered)
		note(msg, msglen, "rolled back an unfinished transaction");

	vol->state = pmfuse_volume_block(vol, pmfuse_le64(vol->sb.state_block));
	rc = check_state(vol, tmp, sizeof(tmp));
	if (rc && !rdonly && (flags & PMFUSE_VOL_REPAIR)) {
		/* fsck rebuilds it (pmfuse_fs_repair_state) before anything reads it */
		note(msg, msglen, "%s", tmp);
		vol->state_bad = true;
		rc = 0;
	} else if (rc) {
		if (!vol->log_pending) {
			note(msg, msglen, "%s", tmp);
			goto fail;
		}
		/* Before recovery the state block may be half-changed: report, do not refuse. */
		note(msg, msglen, "%s (possibly the unfinished transaction)", tmp);
		rc = 0;
	}

	if (!rdonly) {
		geom_from_sb(&vol->sb, &geom);
		rc = pmfuse_alloc_open(pool, &geom, &vol->alloc);
		if (rc == -EUCLEAN && (flags & PMFUSE_VOL_REPAIR)) {
			note(msg, msglen, "free-space bitmap (blocks %llu..%llu) is damaged",
			     (unsigned long long)geom.bitmap_start,
			     (unsigned long long)(geom.bitmap_start + geom.bitmap_blocks - 1));
			vol->alloc = NULL;
			rc = 0;
		}
		if (rc) {
			if (rc == -EUCLEAN)
				note(msg, msglen, "free-space bitmap (blocks %llu..%llu) is damaged",
				     (unsigned long long)geom.bitmap_start,
				     (unsigned long long)(geom.bitmap_start + geom.bitmap_blocks - 1));
			goto fail;
		}
	}

	/* Everything checked: now repair a bad copy and count the mount. */
	if (!rdonly && !vol->was_clean && (flags & PMFUSE_VOL_MOUNT))
		note(msg, msglen, "the volume was not cleanly unmounted");
	if (!rdonly && (flags & PMFUSE_VOL_MOUNT)) {
		pmfuse_set_le32(&vol->sb.clean, 0);
		/* from now on the log may hold zero entries (format.h: INCOMPAT_LOG_ZERO) */
		pmfuse_set_le64(&vol->sb.incompat, pmfuse_le64(vol->sb.incompat) |
				PMFUSE_FEATURE_INCOMPAT_LOG_ZERO);
		pmfuse_set_le64(&vol->sb.mount_count, pmfuse_le64(vol->sb.mount_count) + 1);
		pmfuse_set_le64(&vol->sb.mount_time, (uint64_t)time(NULL));
		pmfuse_volume_write_sb(vol);
	} else if (!rdonly && probe.relabeled) {
		pmfuse_volume_write_sb(vol);   /* both copies: neither said what it is */
	} else if (!rdonly && vol->sb_other_bad) {
		sb_write_copy(pool, &vol->sb, other);
	}
	*out = vol;
	return 0;

fail:
	if (vol->alloc)
		pmfuse_alloc_close(vol->alloc);
	pmfuse_txm_close(vol->txm);
	free(vp);
	return rc;
}

void pmfuse_volume_close(struct pmfuse_volume *vol)
{
	if (!vol)
		return;
	struct vol_priv *vp = priv_of(vol);
	if (!vol->readonly && (vp->flags & PMFUSE_VOL_MOUNT)) {
		/* every transaction has ended: the log holds nothing older code cannot read */
		pmfuse_set_le32(&vol->sb.clean, PMFUSE_SB_CLEAN);
		pmfuse_set_le64(&vol->sb.incompat, pmfuse_le64(vol->sb.incompat) &
				~PMFUSE_FEATURE_INCOMPAT_LOG_ZERO);
		pmfuse_volume_write_sb(vol);
	}
	if (vol->alloc)
		pmfuse_alloc_close(vol->alloc);
	pmfuse_txm_close(vol->txm);
	free(vp);
}
