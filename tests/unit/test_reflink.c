/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Reflink (src/fs/reflink.c and the copy-on-write paths of src/fs/data.c) against a model.
 *
 * The model of a file is its bytes (zero past EOF) and which of its blocks are mapped, as in
 * test_data.c; clone copies the source's mapped flags into the destination range (holes stay
 * holes), copy_range maps what it writes and shares what it clones. So st_blocks, SEEK_DATA and
 * SEEK_HOLE and the extent report are predicted exactly, not only the bytes. Sharing itself is
 * checked by the space check (pmfuse_fs_check_space): for every pool block, the extents mapping
 * it equal its refcount, unmapped blocks are free, nothing leaks; and the sum of mapped blocks it
 * finds must be the model's.
 *
 * Randomized tests print their seed; PMFUSE_SEED=n replays one run. To find the operation that
 * broke a random run: PMFUSE_CHECK_EVERY=1 (a full check after every operation) and
 * PMFUSE_TRACE=1 (prints each operation).
 */
#include "harness_fs.h"
#include "model_file.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_internal.h"
#include "meta/refcount.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

/* ---- environment ---------------------------------------------------------------------------- */

static ssize_t wr(struct th_env *e, uint64_t ino, const void *buf, size_t len, uint64_t off)
{
	return pmfuse_fs_write(e->fs, ino, buf, len, off, false, &th_cred_user);
}

/* The whole-filesystem space check; returns its report. */
static struct pmfuse_space_report check_space(struct th_env *e)
{
	struct pmfuse_space_report rep;
	char msg[256] = "";
	int rc = pmfuse_fs_check_space(e->fs, &rep, msg, sizeof(msg));

	if (rc)
		fprintf(stderr, "space check: %d %s\n", rc, msg);
	assert_int_equal(rc, 0);
	th_fsck_clean(e->fs);
	return rep;
}

/* Extents of a file with their refcounts (all of them). */
struct xlist {
	struct pmfuse_extent_info *v;
	unsigned n;
};

static struct xlist extents(struct th_env *e, uint64_t ino, unsigned page)
{
	struct xlist l = { NULL, 0 };
	uint64_t start = 0, next;
	unsigned cap = 0;

	for (;;) {
		int n;

		if (l.n + page > cap) {
			cap = (l.n + page) * 2;
			l.v = realloc(l.v, cap * sizeof(*l.v));
			assert_non_null(l.v);
		}
		n = pmfuse_fs_get_extents(e->fs, ino, start, l.v + l.n, page, &next);
		assert_true(n >= 0 && (unsigned)n <= page);
		l.n += (unsigned)n;
		if (next == UINT64_MAX)
			break;
		assert_true(next > start);
		start = next;
	}
	return l;
}

/* Blocks of the file whose refcount is > 1 (from the extent report). */
static uint64_t shared_blocks(struct th_env *e, uint64_t ino)
{
	struct xlist l = extents(e, ino, 64);
	uint64_t n = 0;

	for (unsigned i = 0; i < l.n; i++)
		if (l.v[i].refcount > 1)
			n += l.v[i].length / e->bs;
	free(l.v);
	return n;
}

/* ---- the model ------------------------------------------------------------------------------ */

/*
 * FICLONERANGE's rules (fs.h) on the model: 0 and the block range to map (*so, *dof, *nblk,
 * *cnt bytes), 1 for nothing to do, or the -errno the fs must return.
 */
static int m_clone_prep(const struct mfile *s, const struct mfile *d, uint32_t bs, uint64_t so,
			uint64_t len, uint64_t dof, uint64_t *cnt, uint64_t *nblk)
{
	uint64_t blen;

	if (!len) {
		if (so == s->size)
			return 1;
		if (so > s->size)
			return -EINVAL;
		len = s->size - so;
	}
	if (so % bs || dof % bs || so >= s->size || len > s->size - so)
		return -EINVAL;
	if (so + len == s->size) {
		blen = (s->size + bs - 1) / bs * bs - so;
		if (len % bs && dof + len < d->size)
			return -EINVAL;
	} else {
		if (len % bs)
			return -EINVAL;
		blen = len;
	}
	if (s == d && so < dof + blen && dof < so + blen)
		return -EINVAL;
	*cnt = len;
	*nblk = blen / bs;
	return 0;
}

static void m_clone(const struct mfile *s, struct mfile *d, uint32_t bs, uint64_t so,
		    uint64_t dof, uint64_t cnt, uint64_t nblk)
{
	memmove(d->data + dof, s->data + so, cnt);
	memmove(d->mapped + dof / bs, s->mapped + so / bs, nblk);
	if (dof + cnt > d->size)
		d->size = dof + cnt;
}

/* Attributes, every byte, lseek at block edges, and the extent report against the mapping. */
static void check_file(struct th_env *e, const struct mfile *mf, uint8_t *tmp)
{
	struct pmfuse_attr a = th_getattr(e, mf->ino);
	struct xlist l = extents(e, mf->ino, 5);
	uint64_t sum = 0, prev_end = 0;

	if (a.blocks512 != m_mapped_blocks(mf) * (e->bs / 512)) {
		fprintf(stderr, "%s: %llu blocks mapped, model %llu; extents:", mf->name,
			ULL(a.blocks512 / (e->bs / 512)), ULL(m_mapped_blocks(mf)));
		for (unsigned i = 0; i < l.n; i++)
			fprintf(stderr, " %llu+%llu(%u)", ULL(l.v[i].logical / e->bs),
				ULL(l.v[i].length / e->bs), l.v[i].refcount);
		fprintf(stderr, "\nmodel:");
		for (uint64_t b = 0; b < mf->nblk; b++)
			if (mf->mapped[b])
				fprintf(stderr, " %llu", ULL(b));
		fprintf(stderr, "\n");
	}
	mfile_check(e, mf, tmp);
	for (unsigned i = 0; i < l.n; i++) {
		assert_true(l.v[i].logical >= prev_end);
		assert_true(l.v[i].length > 0 && l.v[i].length % e->bs == 0);
		assert_true(l.v[i].refcount >= 1);
		for (uint64_t b = l.v[i].logical / e->bs; b < (l.v[i].logical + l.v[i].length) / e->bs;
		     b++)
			assert_true(b < mf->nblk && mf->mapped[b]);
		sum += l.v[i].length / e->bs;
		prev_end = l.v[i].logical + l.v[i].length;
	}
	assert_int_equal(sum, m_mapped_blocks(mf));
	free(l.v);
}

/* ---- one random operation ------------------------------------------------------------------- */

enum { OP_WRITE, OP_CLONE, OP_CLONE_ERR, OP_COPY, OP_UNSHARE, OP_TRUNC, OP_PUNCH, OP_ZERO,
       OP_FALLOC, OP_UNLINK, OP_READ, OP_HINT, OP_DEDUPE, OP_DEDUPE_DIFF, OP_DEDUPE_ERR,
       OP_DBLOCKS, OP_DBLOCKS_ERR, OP_COUNT };
static const char *const op_names[OP_COUNT] = {
	"write", "clone", "clone-err", "copy", "unshare", "trunc", "punch", "zero", "falloc",
	"unlink", "read", "hint", "dedupe", "dedupe-differs", "dedupe-err", "dedupe-blocks",
	"dedupe-blocks-err",
};

struct run {
	struct th_env e;
	struct th_rng rng;
	struct mfile *files;
	int nfiles;
	uint8_t *buf, *tmp;
	uint64_t ops[OP_COUNT];
	uint64_t recreated;
	uint64_t checks, shared_sum, shared_max, mapped_sum, recs_max;
	char last[320];   /* the last operation, for PMFUSE_TRACE */
};

static uint64_t rnd(struct run *r, uint64_t n)
{
	return th_rng_below(&r->rng, n);
}

static uint64_t rand_off(struct run *r, const struct mfile *mf)
{
	uint32_t bs = r->e.bs;
	uint64_t near = mf->size > 8192 ? mf->size - 8192 : 0;

	switch (rnd(r, 10)) {
	case 0: return 0;
	case 1: case 2: return rnd(r, mf->cap / bs) * bs;
	case 3: case 4: case 5: return near + rnd(r, 16384);
	default: return rnd(r, PMFUSE_MIN(mf->cap, mf->size + (256u << 10)) + 1);
	}
}

static uint64_t rand_len(struct run *r)
{
	uint32_t bs = r->e.bs;

	switch (rnd(r, 20)) {
	case 0: return 1;
	case 1: return (1 + rnd(r, 64)) * bs;
	case 2: return (64u << 10) + rnd(r, 256u << 10);
	case 3: case 4: case 5: return (1 + rnd(r, 16)) * bs;
	case 6: case 7: case 8: case 9: case 10: return 1 + rnd(r, 32768);
	default: return 1 + rnd(r, 600);
	}
}

static void clip(const struct mfile *mf, uint64_t *off, uint64_t *len)
{
	if (*off >= mf->cap)
		*off = mf->cap - 1;
	if (*len > mf->cap - *off)
		*len = mf->cap - *off;
}

/* A block-aligned offset in [0, limit] (sometimes not aligned, for the error cases). */
static uint64_t rand_block_off(struct run *r, uint64_t limit, bool exact)
{
	uint64_t bs = r->e.bs, off = rnd(r, limit / bs + 1) * bs;

	if (!exact && !rnd(r, 20))
		off += 1 + rnd(r, bs - 1);
	return off;
}

static void op_clone(struct run *r, struct mfile *s, struct mfile *d)
{
	uint64_t bs = r->e.bs, so, len, dof, cnt = 0, nblk = 0;
	bool sloppy = !rnd(r, 10);   /* unaligned or out-of-range arguments on purpose */
	int want, rc;

	so = rand_block_off(r, s->size + (sloppy ? 2 * bs : 0), !sloppy);
	if (!sloppy && so >= s->size)
		so = s->size > bs ? rnd(r, (s->size - 1) / bs) * bs : 0;
	switch (rnd(r, 6)) {
	case 0: len = 0; break;                                           /* to EOF */
	case 1: len = s->size > so ? s->size - so : bs; break;            /* to EOF, explicit */
	case 2: len = (1 + rnd(r, 4)) * bs; break;
	default: len = (1 + rnd(r, 128)) * bs; break;
	}
	if (!sloppy && len && s->size > so && len > s->size - so)
		len = (s->size - so) / bs * bs;                           /* 0: to EOF */
	if (sloppy && rnd(r, 2))
		len += 1 + rnd(r, bs - 1);
	if (rnd(r, 2))
		dof = rand_block_off(r, d->cap, !sloppy);                 /* anywhere */
	else
		dof = rand_block_off(r, PMFUSE_MIN(d->cap, d->size + 4 * bs), !sloppy);
	want = m_clone_prep(s, d, r->e.bs, so, len, dof, &cnt, &nblk);
	if (want == -EINVAL && !sloppy && rnd(r, 2) && m_clone_prep(s, d, r->e.bs, so, len,
								    d->size, &cnt, &nblk) == 0) {
		/* an EOF block may only end the destination: put it there */
		dof = (d->size - PMFUSE_MIN(d->size, cnt) + bs - 1) / bs * bs;
		want = m_clone_prep(s, d, r->e.bs, so, len, dof, &cnt, &nblk);
	}
	if (!want && dof + nblk * bs > d->cap)
		return;   /* outside the model's room */
	rc = pmfuse_fs_clone_range(r->e.fs, s->ino, so, len, d->ino, dof);
	if (rc != (want == 1 ? 0 : want))
		fprintf(stderr, "clone %s %llu+%llu -> %s %llu (sizes %llu %llu): %d, model %d\n",
			s->name, ULL(so), ULL(len), d->name, ULL(dof), ULL(s->size), ULL(d->size),
			rc, want);
	assert_int_equal(rc, want == 1 ? 0 : want);
	if (!want) {
		m_clone(s, d, r->e.bs, so, dof, cnt, nblk);
		r->ops[OP_CLONE]++;
	} else {
		r->ops[OP_CLONE_ERR]++;
	}
}

/*
 * FIDEDUPERANGE's rules (fs.h) on the model: 0 with the bytes to compare (*cnt) and the blocks
 * to share (*nblk), 1 for nothing to do, or the -errno the fs must return.
 */
static int m_dedupe_prep(const struct mfile *s, const struct mfile *d, uint32_t bs, uint64_t so,
			 uint64_t len, uint64_t dof, uint64_t *cnt, uint64_t *nblk)
{
	uint64_t blen;

	if (so % bs || dof % bs)
		return -EINVAL;
	if (!len)
		return 1;
	if (so >= s->size || len > s->size - so || dof >= d->size || len > d->size - dof)
		return -EINVAL;
	len = PMFUSE_MIN(len, PMFUSE_DEDUPE_MAX);
	if (so + len == s->size && dof + len == d->size) {
		blen = (len + bs - 1) / bs * bs;
	} else {
		len = len / bs * bs;
		if (!len)
			return 1;
		blen = len;
	}
	if (s == d && so < dof + blen && dof < so + blen)
		return -EINVAL;
	*cnt = len;
	*nblk = blen / bs;
	return 0;
}

/* The pool byte address of file block fb, or UINT64_MAX for a hole. */
static uint64_t phys_of(struct th_env *e, uint64_t ino, uint64_t fb)
{
	struct pmfuse_extent_info x;
	uint64_t next;
	int n = pmfuse_fs_get_extents(e->fs, ino, fb * e->bs, &x, 1, &next);

	assert_true(n >= 0);
	if (n == 0 || x.logical > fb * e->bs)
		return UINT64_MAX;
	return x.physical + (fb * e->bs - x.logical);
}

/*
 * Dedupe of random ranges: half the time the destination range is first made equal by a write
 * of the source's bytes, sometimes with one byte changed (the compare must see it, the last
 * byte of the range included). Equal ranges end up sharing every mapped block, and holes of
 * the source become holes of the destination; contents never change.
 */
static void op_dedupe(struct run *r, struct mfile *s, struct mfile *d)
{
	uint64_t bs = r->e.bs, so, dof, len, room, cnt = 0, nblk = 0, done = 7;
	bool sloppy = !rnd(r, 10);
	int want, rc;

	so = rand_block_off(r, s->size ? (s->size - 1) / bs * bs : 0, !sloppy);
	dof = rand_block_off(r, d->size ? (d->size - 1) / bs * bs : 0, !sloppy);
	room = PMFUSE_MIN(s->size - PMFUSE_MIN(so, s->size), d->size - PMFUSE_MIN(dof, d->size));
	switch (rnd(r, 4)) {
	case 0: len = room; break;                                     /* as far as both go */
	case 1: len = (1 + rnd(r, 8)) * bs; break;
	default: len = (1 + rnd(r, 96)) * bs + (rnd(r, 3) ? 0 : rnd(r, bs)); break;
	}
	if (!sloppy)
		len = PMFUSE_MIN(len, room);
	want = m_dedupe_prep(s, d, (uint32_t)bs, so, len, dof, &cnt, &nblk);
	if (!want && rnd(r, 2) && !(s == d && so < dof + cnt && dof < so + cnt)) {
		/* make the destination's bytes equal (unshared), maybe but for one byte */
		memcpy(r->buf, s->data + so, cnt);
		if (!rnd(r, 4))
			r->buf[rnd(r, 3) ? rnd(r, cnt) : cnt - 1] ^= 0x5a;
		assert_int_equal(wr(&r->e, d->ino, r->buf, cnt, dof), cnt);
		m_write(d, (uint32_t)bs, r->buf, dof, cnt);
	}
	snprintf(r->last + strlen(r->last), sizeof(r->last) - strlen(r->last),
		 " dedupe %s %llu -> %s %llu len %llu (sizes %llu %llu)", s->name, ULL(so),
		 d->name, ULL(dof), ULL(len), ULL(s->size), ULL(d->size));
	rc = pmfuse_fs_dedupe_range(r->e.fs, s->ino, so, len, d->ino, dof, &done);
	if (want) {
		assert_int_equal(rc, want == 1 ? 0 : want);
		assert_int_equal(done, 0);
		r->ops[want == 1 ? OP_DEDUPE : OP_DEDUPE_ERR]++;
		return;
	}
	if (memcmp(s->data + so, d->data + dof, cnt)) {
		assert_int_equal(rc, -EBADE);
		assert_int_equal(done, 0);
		r->ops[OP_DEDUPE_DIFF]++;
		return;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(done, cnt);
	memmove(d->mapped + dof / bs, s->mapped + so / bs, nblk);
	for (uint64_t b = 0; b < nblk; b++)
		assert_true(phys_of(&r->e, d->ino, dof / bs + b) ==
			    phys_of(&r->e, s->ino, so / bs + b));
	r->ops[OP_DEDUPE]++;
}

/*
 * Range dedupe's rules (pmfuse_fs_dedupe_blocks, fs.h) on the model: 0 with the bytes to
 * compare (*cnt) and the blocks they cover (*nblk), 1 for nothing to do, or the -errno.
 */
static int m_blocks_prep(const struct mfile *s, const struct mfile *d, uint32_t bs, uint64_t so,
			 uint64_t len, uint64_t dof, uint64_t *cnt, uint64_t *nblk)
{
	uint64_t blen;

	if (so % bs || dof % bs || so >= s->size || dof >= d->size)
		return -EINVAL;
	if (!len)
		len = PMFUSE_MIN(s->size - so, d->size - dof);
	if (s == d && so < dof + PMFUSE_ALIGN_UP(len, bs) && dof < so + PMFUSE_ALIGN_UP(len, bs))
		return -EINVAL;
	if (len > s->size - so || len > d->size - dof)
		return -EINVAL;
	if (so + len == s->size && dof + len == d->size) {
		blen = PMFUSE_ALIGN_UP(len, bs);
	} else {
		len = len / bs * bs;
		if (!len)
			return 1;
		blen = len;
	}
	*cnt = len;
	*nblk = blen / bs;
	return 0;
}

/*
 * Range dedupe of random ranges, the destination first made partly equal to the source (some
 * blocks changed, some zeroed, some punched): the fs must share exactly the equal blocks the
 * destination maps elsewhere, leave every other block's mapping alone, and count each block
 * where the model says (same: shared already, holes in both, zeros over a hole of dst).
 */
static void op_dedupe_blocks(struct run *r, struct mfile *s, struct mfile *d)
{
	uint64_t bs = r->e.bs, so, dof, len, room, cnt = 0, nblk = 0;
	struct pmfuse_dedupe_counts got, want_c = { 0 };
	uint64_t *sp = NULL, *dp = NULL;
	uint8_t *kind = NULL;             /* per block: 0 same, 1 deduped, 2 differ */
	bool sloppy = !rnd(r, 10);
	int want, rc;

	so = rand_block_off(r, s->size ? (s->size - 1) / bs * bs : 0, !sloppy);
	dof = rand_block_off(r, d->size ? (d->size - 1) / bs * bs : 0, !sloppy);
	room = PMFUSE_MIN(s->size - PMFUSE_MIN(so, s->size), d->size - PMFUSE_MIN(dof, d->size));
	switch (rnd(r, 4)) {
	case 0: len = 0; break;                                        /* as far as both go */
	case 1: len = (1 + rnd(r, 8)) * bs; break;
	default: len = (1 + rnd(r, 96)) * bs + (rnd(r, 3) ? 0 : rnd(r, bs)); break;
	}
	if (!sloppy)
		len = PMFUSE_MIN(len, room);
	if (sloppy && !rnd(r, 3))
		len = UINT64_MAX - rnd(r, 4) * bs;                     /* huge */
	want = m_blocks_prep(s, d, (uint32_t)bs, so, len, dof, &cnt, &nblk);
	if (!want && rnd(r, 4) && !(s == d && so < dof + nblk * bs && dof < so + nblk * bs)) {
		/* the destination's bytes made equal, but for a few blocks changed or zeroed */
		memcpy(r->buf, s->data + so, cnt);
		for (unsigned i = (unsigned)rnd(r, 4); i > 0; i--) {
			uint64_t b = rnd(r, nblk), l = PMFUSE_MIN(bs, cnt - b * bs);

			if (rnd(r, 2))
				r->buf[b * bs + rnd(r, l)] ^= 0x5a;
			else
				memset(r->buf + b * bs, 0, l);
		}
		assert_int_equal(wr(&r->e, d->ino, r->buf, cnt, dof), cnt);
		m_write(d, (uint32_t)bs, r->buf, dof, cnt);
	}
	snprintf(r->last + strlen(r->last), sizeof(r->last) - strlen(r->last),
		 " dedupe-blocks %s %llu -> %s %llu len %llu (sizes %llu %llu)", s->name, ULL(so),
		 d->name, ULL(dof), ULL(len), ULL(s->size), ULL(d->size));
	if (!want) {
		sp = calloc(nblk, sizeof(*sp));
		dp = calloc(nblk, sizeof(*dp));
		kind = calloc(nblk, 1);
		assert_true(sp && dp && kind);
		for (uint64_t b = 0; b < nblk; b++) {
			uint64_t l = PMFUSE_MIN(bs, cnt - b * bs);
			bool eqb = !memcmp(s->data + so + b * bs, d->data + dof + b * bs, l);
			bool zero = true;

			for (uint64_t i = 0; i < l && zero; i++)
				zero = !s->data[so + b * bs + i];
			sp[b] = phys_of(&r->e, s->ino, so / bs + b);
			dp[b] = phys_of(&r->e, d->ino, dof / bs + b);
			if (sp[b] == dp[b])
				kind[b] = 0;                           /* shared, or two holes */
			else if (dp[b] == UINT64_MAX)
				kind[b] = zero ? 0 : 2;                /* a hole of dst */
			else
				kind[b] = eqb ? 1 : 2;
			if (kind[b] == 0)
				want_c.same += l;
			else if (kind[b] == 1)
				want_c.deduped += l;
			else
				want_c.differ += l;
		}
		want_c.compared = cnt;
	}
	rc = pmfuse_fs_dedupe_blocks(r->e.fs, s->ino, so, len, d->ino, dof, &got);
	if (want) {
		assert_int_equal(rc, want == 1 ? 0 : want);
		assert_int_equal(got.compared, 0);
		r->ops[OP_DBLOCKS_ERR]++;
		return;
	}
	assert_int_equal(rc, 0);
	if (memcmp(&got, &want_c, sizeof(got)))
		fprintf(stderr, "dedupe-blocks: got %llu %llu %llu %llu, model %llu %llu %llu %llu\n",
			ULL(got.compared), ULL(got.deduped), ULL(got.same), ULL(got.differ),
			ULL(want_c.compared), ULL(want_c.deduped), ULL(want_c.same),
			ULL(want_c.differ));
	assert_memory_equal(&got, &want_c, sizeof(got));
	for (uint64_t b = 0; b < nblk; b++) {
		uint64_t now = phys_of(&r->e, d->ino, dof / bs + b);

		if (kind[b] == 1) {
			assert_true(now == sp[b]);
			d->mapped[dof / bs + b] = s->mapped[so / bs + b];
		} else {
			assert_true(now == dp[b]);
		}
	}
	free(sp);
	free(dp);
	free(kind);
	r->ops[OP_DBLOCKS]++;
}

/* copy_file_range on the model: what the fs does (fs.h, reflink.c), mapped flags included. */
static void op_copy(struct run *r, struct mfile *s, struct mfile *d)
{
	uint64_t bs = r->e.bs, so, dof, len, head, mid, tail;
	ssize_t n;

	so = rnd(r, 4) ? rand_off(r, s) : rand_block_off(r, s->size, true);
	len = rnd(r, 3) ? rand_len(r) : (1 + rnd(r, 128)) * bs;
	if (rnd(r, 2))   /* congruent offsets */
		dof = rnd(r, d->cap / bs) * bs + so % bs;
	else
		dof = rand_off(r, d);
	if (so >= s->size) {
		assert_int_equal(pmfuse_fs_copy_range(r->e.fs, s->ino, so, d->ino, dof, len,
						      &th_cred_user, NULL), 0);
		return;
	}
	len = PMFUSE_MIN(len, s->size - so);
	if (dof >= d->cap || len > d->cap - dof)
		return;
	if (s == d && so < dof + len && dof < so + len) {
		assert_int_equal(pmfuse_fs_copy_range(r->e.fs, s->ino, so, d->ino, dof, len,
						      &th_cred_user, NULL), -EINVAL);
		return;
	}
	snprintf(r->last + strlen(r->last), sizeof(r->last) - strlen(r->last),
		 " copy %llu -> %llu len %llu (sizes %llu %llu)", ULL(so), ULL(dof), ULL(len),
		 ULL(s->size), ULL(d->size));
	n = pmfuse_fs_copy_range(r->e.fs, s->ino, so, d->ino, dof, len, &th_cred_user, NULL);
	if (n != (ssize_t)len)
		fprintf(stderr, "copy %s %llu -> %s %llu, %llu bytes (sizes %llu %llu): %zd\n",
			s->name, ULL(so), d->name, ULL(dof), ULL(len), ULL(s->size), ULL(d->size), n);
	assert_int_equal(n, len);
	r->ops[OP_COPY]++;
	if (so % bs != dof % bs) {
		m_write(d, (uint32_t)bs, s->data + so, dof, len);
		return;
	}
	head = PMFUSE_MIN(len, (bs - so % bs) % bs);
	mid = (len - head) / bs * bs;
	tail = len - head - mid;
	m_write(d, (uint32_t)bs, s->data + so, dof, head);
	if (tail && so + len == s->size && dof + len >= d->size) {
		m_clone(s, d, (uint32_t)bs, so + head, dof + head, mid + tail,
			(mid + tail + bs - 1) / bs);
		return;
	}
	m_clone(s, d, (uint32_t)bs, so + head, dof + head, mid, mid / bs);
	m_write(d, (uint32_t)bs, s->data + so + head + mid, dof + head + mid, tail);
}

static void random_op(struct run *r)
{
	struct th_env *e = &r->e;
	struct mfile *mf = &r->files[rnd(r, (uint64_t)r->nfiles)];
	struct mfile *other = &r->files[rnd(r, (uint64_t)r->nfiles)];
	uint32_t bs = e->bs;
	uint64_t off = rand_off(r, mf), len = rand_len(r), end;
	unsigned kind = (unsigned)rnd(r, 100);
	int rc;

	clip(mf, &off, &len);
	end = off + len;
	snprintf(r->last, sizeof(r->last), "kind %u on %s (other %s) off %llu len %llu size %llu",
		 kind, mf->name, other->name, ULL(off), ULL(len), ULL(mf->size));
	if (kind < 22) {                                            /* write */
		th_fill_random(&r->rng, r->buf, len);
		assert_int_equal(wr(e, mf->ino, r->buf, len, off), len);
		m_write(mf, bs, r->buf, off, len);
		r->ops[OP_WRITE]++;
	} else if (kind < 40) {                                     /* clone */
		op_clone(r, other, mf);
	} else if (kind < 46) {                                     /* dedupe */
		if (rnd(r, 2))
			op_dedupe(r, other, mf);
		else
			op_dedupe_blocks(r, other, mf);
	} else if (kind < 58) {                                     /* copy_file_range */
		op_copy(r, other, mf);
	} else if (kind < 61) {                                     /* unshare */
		uint64_t l = rnd(r, 4) ? len : 0;

		assert_int_equal(pmfuse_fs_unshare(e->fs, mf->ino, off, l), 0);
		if (off < mf->size) {
			struct xlist x = extents(e, mf->ino, 16);
			uint64_t hi = l ? PMFUSE_MIN(mf->size, off + l) : mf->size;

			for (unsigned i = 0; i < x.n; i++)
				if (x.v[i].logical < hi &&
				    x.v[i].logical + x.v[i].length > off / bs * bs)
					assert_int_equal(x.v[i].refcount, 1);
			free(x.v);
		}
		r->ops[OP_UNSHARE]++;
	} else if (kind < 69) {                                     /* truncate */
		uint64_t size = mf->size - rnd(r, PMFUSE_MIN(mf->size, 64u << 10) + 1);

		if (!rnd(r, 4))
			size = rnd(r, 3) ? rnd(r, mf->size + 1) : off;

		assert_int_equal(th_set_size(e, mf->ino, size), 0);
		snprintf(r->last + strlen(r->last), sizeof(r->last) - strlen(r->last),
			 " -> size %llu", ULL(size));
		m_truncate(mf, bs, size);
		r->ops[OP_TRUNC]++;
	} else if (kind < 75) {                                     /* punch */
		rc = pmfuse_fs_fallocate(e->fs, mf->ino,
					 FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len, NULL, NULL);
		assert_int_equal(rc, 0);
		if (off < mf->size)
			memset(mf->data + off, 0, PMFUSE_MIN(end, mf->size) - off);
		m_map(mf, bs, (off + bs - 1) / bs * bs, end / bs * bs, 0);
		r->ops[OP_PUNCH]++;
	} else if (kind < 80) {                                     /* zero range */
		bool keep = rnd(r, 2);

		rc = pmfuse_fs_fallocate(e->fs, mf->ino,
					 FALLOC_FL_ZERO_RANGE | (keep ? FALLOC_FL_KEEP_SIZE : 0),
					 off, len, NULL, NULL);
		assert_int_equal(rc, 0);
		if (off < mf->size)
			memset(mf->data + off, 0, PMFUSE_MIN(end, mf->size) - off);
		if (!keep && end > mf->size)
			mf->size = end;
		m_zero_range(mf, bs, off, end);
		r->ops[OP_ZERO]++;
	} else if (kind < 83) {                                     /* preallocate */
		bool keep = rnd(r, 2);

		rc = pmfuse_fs_fallocate(e->fs, mf->ino, keep ? FALLOC_FL_KEEP_SIZE : 0, off, len,
					 NULL, NULL);
		assert_int_equal(rc, 0);
		if (!keep && end > mf->size)
			mf->size = end;
		m_prealloc(mf, bs, off, end);
		r->ops[OP_FALLOC]++;
	} else if (kind < 84) {                                     /* unlink, new file */
		char name[32];

		th_rmfile(e, mf->name, mf->ino);
		snprintf(name, sizeof(name), "r%llu", ULL(++r->recreated));
		mfile_free(mf);
		mfile_init(e, mf, name, r->files[0].cap);
		r->ops[OP_UNLINK]++;
	} else if (kind < 87) {                                     /* CoW hint */
		static const uint32_t hints[] = { 0, 1, 1, 2, 4, 8, 16, 64 };
		uint32_t hint = hints[rnd(r, PMFUSE_ARRAY_SIZE(hints))], got;

		assert_int_equal(pmfuse_fs_set_cowextsize(e->fs, mf->ino, hint), 0);
		assert_int_equal(pmfuse_fs_get_cowextsize(e->fs, mf->ino, &got), 0);
		assert_int_equal(got, hint);
		r->ops[OP_HINT]++;
	} else {                                                    /* read */
		compare_range(e, mf, off, PMFUSE_MIN(len, 300000), r->tmp);
		r->ops[OP_READ]++;
	}

	/* after every operation: the size, and one random range */
	assert_int_equal(th_getattr(e, mf->ino).size, mf->size);
	off = rnd(r, mf->size + 2);
	compare_range(e, mf, off, 1 + rnd(r, 20000), r->tmp);
}

static void check_all(struct run *r)
{
	struct pmfuse_space_report rep;
	uint64_t sum = 0;

	for (int i = 0; i < r->nfiles; i++) {
		check_file(&r->e, &r->files[i], r->tmp);
		sum += m_mapped_blocks(&r->files[i]);
	}
	rep = check_space(&r->e);
	assert_int_equal(rep.mapped_blocks, sum);
	r->checks++;
	r->shared_sum += rep.shared_blocks;
	r->mapped_sum += rep.mapped_blocks;
	r->shared_max = PMFUSE_MAX(r->shared_max, rep.shared_blocks);
	r->recs_max = PMFUSE_MAX(r->recs_max, rep.refcount_recs);
}

/*
 * The random sequence over nfiles files of at most cap bytes: full checks every check_every
 * operations, a remount every reopen_every. At the end every file goes and the free count must
 * be what it was before, with an empty refcount tree.
 */
static void run_model(uint64_t seed_mix, size_t pool_size, uint32_t bs, uint64_t log_blocks,
		      int nfiles, uint64_t cap, uint64_t nops, uint64_t check_every,
		      uint64_t reopen_every, bool verify)
{
	struct pmfuse_btree rt;
	struct run r;
	uint64_t start_free;
	char name[32], line[512];
	size_t pos = 0;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	memset(&r, 0, sizeof(r));
	th_rng_init(&r.rng, th_seed() ^ seed_mix);
	th_env_new(&r.e, pool_size, bs, log_blocks);
	if (verify)
		pmfuse_txm_set_verify(r.e.vol->txm, true);
	start_free = th_free_blocks(&r.e);
	r.nfiles = nfiles;
	r.files = calloc((size_t)nfiles, sizeof(*r.files));
	r.buf = malloc(cap + bs);
	r.tmp = malloc(cap + 2 * bs);
	assert_non_null(r.files);
	assert_non_null(r.buf);
	assert_non_null(r.tmp);
	for (int i = 0; i < nfiles; i++) {
		uint64_t n = cap / 4 + th_rng_below(&r.rng, cap / 4);

		snprintf(name, sizeof(name), "f%d", i);
		mfile_init(&r.e, &r.files[i], name, cap);
		th_fill_random(&r.rng, r.buf, n);
		assert_int_equal(wr(&r.e, r.files[i].ino, r.buf, n, 0), n);
		m_write(&r.files[i], bs, r.buf, 0, n);
	}

	if (getenv("PMFUSE_CHECK_EVERY"))
		check_every = strtoull(getenv("PMFUSE_CHECK_EVERY"), NULL, 0);
	for (uint64_t i = 1; i <= nops; i++) {
		random_op(&r);
		if (getenv("PMFUSE_TRACE"))
			printf("op %llu done: %s\n", ULL(i), r.last), fflush(stdout);
		if (i % check_every == 0)
			check_all(&r);
		if (reopen_every && i % reopen_every == 0) {
			th_env_reopen(&r.e);
			if (verify)
				pmfuse_txm_set_verify(r.e.vol->txm, true);
			check_all(&r);
		}
	}
	check_all(&r);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	for (int i = 0; i < OP_COUNT; i++)
		pos += (size_t)snprintf(line + pos, sizeof(line) - pos, " %s %llu", op_names[i],
					ULL(r.ops[i]));
	printf("# %llu ops (bs %u, log %llu) in %.1f s:%s\n# over %llu checks: on average %llu "
	       "blocks mapped, %llu shared (at most %llu), at most %llu refcount records\n",
	       ULL(nops), bs, ULL(log_blocks),
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, line,
	       ULL(r.checks), ULL(r.mapped_sum / r.checks), ULL(r.shared_sum / r.checks),
	       ULL(r.shared_max), ULL(r.recs_max));

	for (int i = 0; i < nfiles; i++) {
		th_rmfile(&r.e, r.files[i].name, r.files[i].ino);
		mfile_free(&r.files[i]);
		check_space(&r.e);
	}
	assert_int_equal(th_free_blocks(&r.e), start_free);
	pmfuse_refcount_tree(r.e.vol, &rt);
	assert_int_equal(pmfuse_btree_count(&rt), 0);
	th_env_reopen(&r.e);
	assert_int_equal(th_free_blocks(&r.e), start_free);
	free(r.files);
	free(r.buf);
	free(r.tmp);
	th_env_free(&r.e);
}

static void test_model_4k(void **state)
{
	(void)state;
	run_model(1, 64u << 20, 4096, 0, 4, 4u << 20, th_scaled(20000), 500, 5000, false);
}

/* A log of 8 blocks: clones, unmaps of shared extents and truncates run in many small
 * transactions, and the budget halving on a full log gets exercised. */
static void test_model_small_log(void **state)
{
	(void)state;
	run_model(2, 32u << 20, 4096, 10, 3, 1u << 20, th_scaled(3000), 300, 1000, false);
}

static void test_model_16k(void **state)
{
	(void)state;
	run_model(3, 64u << 20, 16384, 0, 3, 4u << 20, th_scaled(2000), 250, 1000, false);
}

/* Debug builds: every transaction's changes must lie in its declared ranges (aborts else). */
static void test_model_verified(void **state)
{
	(void)state;
	run_model(4, 4u << 20, 4096, 0, 3, 512u << 10, th_scaled(600), 100, 300, true);
}

/* ---- targeted tests ------------------------------------------------------------------------- */

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* cp --reflink of a 64 MiB file costs (almost) no blocks; one byte written into the copy costs
 * one CoW block and leaves the original intact; deleting the copies returns everything. */
static void test_clone_big(void **state)
{
	const uint64_t size = 64u << 20, chunk = 1u << 20;
	struct th_env e;
	struct th_rng rng;
	uint8_t *data = malloc(size), *tmp = malloc(size);
	uint64_t a, b, c, f0, f1, f2, f3;
	struct pmfuse_space_report rep;
	double t;
	(void)state;

	assert_non_null(data);
	assert_non_null(tmp);
	th_rng_init(&rng, th_seed() ^ 11);
	th_env_new(&e, 200u << 20, 4096, 0);
	f0 = th_free_blocks(&e);
	a = th_mkfile(&e, "a");
	th_fill_random(&rng, data, size);
	for (uint64_t off = 0; off < size; off += chunk)
		assert_int_equal(wr(&e, a, data + off, chunk, off), chunk);
	f1 = th_free_blocks(&e);

	/* FICLONE-like: whole file */
	b = th_mkfile(&e, "b");
	t = now_ms();
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
	t = now_ms() - t;
	f2 = th_free_blocks(&e);
	printf("# clone of 64 MiB: %.2f ms, %llu new blocks\n", t, ULL(f1 - f2));
	assert_true(f1 - f2 <= 4);
	assert_int_equal(th_getattr(&e, b).size, size);
	assert_int_equal(th_getattr(&e, b).blocks512, size / 512);

	/* cp through copy_file_range */
	c = th_mkfile(&e, "c");
	t = now_ms();
	assert_int_equal(pmfuse_fs_copy_range(e.fs, a, 0, c, 0, size + 12345, &th_cred_user, NULL), size);
	t = now_ms() - t;
	f3 = th_free_blocks(&e);
	printf("# copy_file_range of 64 MiB: %.2f ms, %llu new blocks\n", t, ULL(f2 - f3));
	assert_true(f2 - f3 <= 4);
	assert_int_equal(pmfuse_fs_pread(e.fs, c, tmp, size, 0), size);
	assert_memory_equal(tmp, data, size);
	rep = check_space(&e);
	assert_int_equal(rep.shared_blocks, size / 4096);
	assert_int_equal(shared_blocks(&e, a), size / 4096);

	/* one byte into the copy: one CoW extent (the default hint, 32 blocks), and the map, one
	 * extent inline until now, becomes three and needs its first tree block */
	assert_int_equal(wr(&e, b, "X", 1, 12345678), 1);
	assert_int_equal(f3 - th_free_blocks(&e), PMFUSE_COWEXTSIZE_DEFAULT + 1);
	assert_int_equal(check_space(&e).data_blocks, rep.data_blocks + PMFUSE_COWEXTSIZE_DEFAULT);
	assert_int_equal(pmfuse_fs_pread(e.fs, a, tmp, size, 0), size);
	assert_memory_equal(tmp, data, size);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, tmp, size, 0), size);
	assert_int_equal(tmp[12345678], 'X');
	tmp[12345678] = data[12345678];
	assert_memory_equal(tmp, data, size);
	assert_int_equal(shared_blocks(&e, b), size / 4096 - PMFUSE_COWEXTSIZE_DEFAULT);
	check_space(&e);

	/* and back */
	th_rmfile(&e, "a", a);
	check_space(&e);
	assert_int_equal(pmfuse_fs_pread(e.fs, c, tmp, size, 0), size);
	assert_memory_equal(tmp, data, size);
	th_rmfile(&e, "c", c);
	th_rmfile(&e, "b", b);
	assert_int_equal(th_free_blocks(&e), f0);
	check_space(&e);
	th_env_free(&e);
	free(data);
	free(tmp);
}

/* A source of many extents: cloning costs in proportion to extents, and the budget splits it. */
static void test_clone_many_extents(void **state)
{
	struct th_env e;
	uint8_t blk[4096];
	uint64_t a, b, n = 3000, f1;
	double t;
	(void)state;

	th_env_new(&e, 64u << 20, 4096, 8);
	a = th_mkfile(&e, "a");
	b = th_mkfile(&e, "b");
	for (uint64_t i = 0; i < n; i++) {
		memset(blk, (int)(i * 7 + 1), sizeof(blk));
		assert_int_equal(wr(&e, a, blk, 4096, i * 2 * 4096), 4096);
	}
	/* b has data of its own everywhere: replaced by the clone, holes included */
	for (uint64_t i = 0; i < 2 * n; i += 64) {
		memset(blk, 0xee, sizeof(blk));
		assert_int_equal(wr(&e, b, blk, 4096, i * 4096 + 4096), 4096);
	}
	f1 = th_free_blocks(&e);
	t = now_ms();
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
	t = now_ms() - t;
	printf("# clone of %llu extents (8-block log): %.1f ms\n", ULL(n), t);
	assert_true(th_free_blocks(&e) >= f1);   /* b's own blocks went back */
	assert_int_equal(th_getattr(&e, b).blocks512, n * 8);
	for (uint64_t i = 0; i < 2 * n; i += 97) {
		assert_int_equal(pmfuse_fs_pread(e.fs, b, blk, 4096, i * 4096), 4096);
		for (unsigned j = 0; j < 4096; j += 511)
			assert_int_equal(blk[j], i % 2 ? 0 : (uint8_t)(i / 2 * 7 + 1));
	}
	check_space(&e);
	th_rmfile(&e, "a", a);
	check_space(&e);
	th_rmfile(&e, "b", b);
	check_space(&e);
	th_env_free(&e);
}

/* A -> B -> C, deleted in every order: contents of the survivors intact, all space back. */
static void test_clone_chains(void **state)
{
	static const int orders[6][3] = {
		{ 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 },
	};
	static const char *const names[3] = { "A", "B", "C" };
	struct th_env e;
	struct th_rng rng;
	uint8_t *d[3], *tmp;
	uint64_t size = 300 * 4096 + 777, f0;
	(void)state;

	th_rng_init(&rng, th_seed() ^ 12);
	th_env_new(&e, 16u << 20, 4096, 0);
	f0 = th_free_blocks(&e);
	for (int i = 0; i < 3; i++)
		d[i] = malloc(size);
	tmp = malloc(size);
	for (int o = 0; o < 6; o++) {
		uint64_t ino[3];

		ino[0] = th_mkfile(&e, "A");
		th_fill_random(&rng, d[0], size);
		memset(d[0] + 100 * 4096, 0, 50 * 4096);   /* a hole in the middle */
		assert_int_equal(wr(&e, ino[0], d[0], 100 * 4096, 0), 100 * 4096);
		assert_int_equal(wr(&e, ino[0], d[0] + 150 * 4096, size - 150 * 4096, 150 * 4096),
				 size - 150 * 4096);
		ino[1] = th_mkfile(&e, "B");
		assert_int_equal(pmfuse_fs_clone_range(e.fs, ino[0], 0, 0, ino[1], 0), 0);
		ino[2] = th_mkfile(&e, "C");
		assert_int_equal(pmfuse_fs_clone_range(e.fs, ino[1], 0, 0, ino[2], 0), 0);
		memcpy(d[1], d[0], size);
		memcpy(d[2], d[0], size);
		/* some CoW in each, so that counts 1, 2 and 3 all exist */
		for (int i = 0; i < 3; i++) {
			uint64_t off = (uint64_t)(i + 1) * 40 * 4096 + 100;

			th_fill_random(&rng, d[i] + off, 5000);
			assert_int_equal(wr(&e, ino[i], d[i] + off, 5000, off), 5000);
		}
		check_space(&e);
		for (int k = 0; k < 3; k++) {
			int victim = orders[o][k];

			th_rmfile(&e, names[victim], ino[victim]);
			check_space(&e);
			for (int j = k + 1; j < 3; j++) {
				int s = orders[o][j];

				assert_int_equal(pmfuse_fs_pread(e.fs, ino[s], tmp, size, 0), size);
				assert_memory_equal(tmp, d[s], size);
			}
		}
		assert_int_equal(th_free_blocks(&e), f0);
	}
	th_env_reopen(&e);
	assert_int_equal(th_free_blocks(&e), f0);
	check_space(&e);
	for (int i = 0; i < 3; i++)
		free(d[i]);
	free(tmp);
	th_env_free(&e);
}

/* Clones inside one file, then writes into both copies. */
static void test_same_file(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint8_t *m = calloc(1, 1u << 20), *tmp = malloc(1u << 20);
	uint64_t f, bs = 4096;
	(void)state;

	th_rng_init(&rng, th_seed() ^ 13);
	th_env_new(&e, 16u << 20, 4096, 0);
	f = th_mkfile(&e, "f");
	th_fill_random(&rng, m, 16 * bs);
	assert_int_equal(wr(&e, f, m, 16 * bs, 0), 16 * bs);
	/* overlapping ranges: refused */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, f, 0, 8 * bs, f, 4 * bs), -EINVAL);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, f, 4 * bs, 8 * bs, f, 0), -EINVAL);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, f, 0, 8 * bs, f, 0), -EINVAL);
	/* [0, 8) -> [8, 16) and [0, 16) -> [32, 48) */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, f, 0, 8 * bs, f, 8 * bs), 0);
	memcpy(m + 8 * bs, m, 8 * bs);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, f, 0, 16 * bs, f, 32 * bs), 0);
	memcpy(m + 32 * bs, m, 16 * bs);
	assert_int_equal(th_getattr(&e, f).size, 48 * bs);
	check_space(&e);
	assert_int_equal(shared_blocks(&e, f), 48 - 16);   /* blocks 16..31 are a hole */
	/* writes into each copy */
	for (uint64_t off = 100; off < 48 * bs; off += 5 * bs + 333) {
		th_fill_random(&rng, m + off, 1000);
		assert_int_equal(wr(&e, f, m + off, 1000, off), 1000);
	}
	assert_int_equal(pmfuse_fs_pread(e.fs, f, tmp, 1u << 20, 0), 48 * bs);
	assert_memory_equal(tmp, m, 48 * bs);
	check_space(&e);
	/* truncating into a shared block keeps the other copies */
	assert_int_equal(th_set_size(&e, f, 40 * bs + 5), 0);
	memset(m + 40 * bs + 5, 0, 8 * bs - 5);
	assert_int_equal(th_set_size(&e, f, 48 * bs), 0);
	assert_int_equal(pmfuse_fs_pread(e.fs, f, tmp, 1u << 20, 0), 48 * bs);
	assert_memory_equal(tmp, m, 48 * bs);
	check_space(&e);
	th_rmfile(&e, "f", f);
	check_space(&e);
	th_env_free(&e);
	free(m);
	free(tmp);
}

/* Holes in the source become holes in the destination, whatever it held there. */
static void test_sparse_clone(void **state)
{
	struct th_env e;
	uint8_t buf[4096], tmp[4096];
	uint64_t s, d, bs = 4096;
	struct xlist l;
	(void)state;

	th_env_new(&e, 16u << 20, 4096, 0);
	s = th_mkfile(&e, "s");
	d = th_mkfile(&e, "d");
	memset(buf, 0x11, sizeof(buf));
	assert_int_equal(wr(&e, s, buf, bs, 0), bs);
	assert_int_equal(wr(&e, s, buf, bs, 5 * bs), bs);
	assert_int_equal(wr(&e, s, buf, 100, 9 * bs), 100);
	assert_int_equal(th_set_size(&e, s, 12 * bs + 100), 0);
	memset(buf, 0x22, sizeof(buf));
	for (uint64_t i = 0; i < 20; i++)
		assert_int_equal(wr(&e, d, buf, bs, i * bs), bs);
	/* to EOF, unaligned, onto a larger destination: refused */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 0, d, 0), -EINVAL);
	/* block-aligned part only */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 12 * bs, d, 0), 0);
	assert_int_equal(th_getattr(&e, d).size, 20 * bs);
	assert_int_equal(th_getattr(&e, d).blocks512, (3 + 8) * 8);
	assert_int_equal(pmfuse_fs_lseek(e.fs, d, 0, SEEK_HOLE), (int64_t)bs);
	assert_int_equal(pmfuse_fs_lseek(e.fs, d, (int64_t)bs, SEEK_DATA), (int64_t)(5 * bs));
	assert_int_equal(pmfuse_fs_lseek(e.fs, d, 10 * bs, SEEK_DATA), (int64_t)(12 * bs));
	assert_int_equal(pmfuse_fs_pread(e.fs, d, tmp, bs, 2 * bs), bs);
	for (unsigned i = 0; i < bs; i++)
		assert_int_equal(tmp[i], 0);
	assert_int_equal(pmfuse_fs_pread(e.fs, d, tmp, bs, 9 * bs), bs);
	assert_int_equal(tmp[99], 0x11);
	assert_int_equal(tmp[100], 0);
	l = extents(&e, d, 2);
	assert_int_equal(l.n, 4);   /* 0, 5, 9 shared; 12..19 private */
	assert_int_equal(l.v[0].refcount, 2);
	assert_int_equal(l.v[3].refcount, 1);
	assert_int_equal(l.v[3].logical, 12 * bs);
	free(l.v);
	check_space(&e);
	/* the whole source, to its EOF, into an empty file */
	th_rmfile(&e, "d", d);
	d = th_mkfile(&e, "d2");
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 0, d, 0), 0);
	assert_int_equal(th_getattr(&e, d).size, 12 * bs + 100);
	assert_int_equal(th_getattr(&e, d).blocks512, 3 * 8);
	check_space(&e);
	th_env_free(&e);
}

static void test_einval(void **state)
{
	struct th_env e;
	struct pmfuse_attr a;
	uint8_t buf[8192];
	uint64_t s, d, bs = 4096, dir, fifo;
	(void)state;

	th_env_new(&e, 8u << 20, 4096, 0);
	s = th_mkfile(&e, "s");
	d = th_mkfile(&e, "d");
	memset(buf, 1, sizeof(buf));
	assert_int_equal(wr(&e, s, buf, sizeof(buf), 0), sizeof(buf));
	assert_int_equal(wr(&e, s, buf, 100, 2 * bs), 100);   /* size 2 blocks + 100 */
	assert_int_equal(wr(&e, d, buf, sizeof(buf), 0), sizeof(buf));
	assert_int_equal(pmfuse_fs_mkdir(e.fs, PMFUSE_ROOT_INO, "dir", 0755, &th_cred_user, &a), 0);
	dir = a.ino;
	assert_int_equal(pmfuse_fs_mknod(e.fs, PMFUSE_ROOT_INO, "fifo", S_IFIFO | 0644, 0,
					 &th_cred_user, &a), 0);
	fifo = a.ino;

	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 1, bs, d, 0), -EINVAL);       /* src_off */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, bs, d, 7), -EINVAL);       /* dst_off */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 100, d, 0), -EINVAL);      /* len */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 4 * bs, d, 0), -EINVAL);   /* past EOF */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 3 * bs, 0, d, 0), -EINVAL);   /* off > EOF */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 3 * bs, bs, d, 0), -EINVAL);
	/* EOF block into the middle of the destination */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 2 * bs, 100, d, 0), -EINVAL);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 2 * bs, 0, d, 0), -EINVAL);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 2 * bs, 0, d, bs), -EINVAL);
	/* ... but fine where it ends it */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 2 * bs, 0, d, 2 * bs), 0);
	assert_int_equal(th_getattr(&e, d).size, 2 * bs + 100);
	/* wrapping, too large */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, UINT64_MAX - bs + 1, d, 2 * bs),
			 -EINVAL);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, bs, d, (uint64_t)INT64_MAX / bs * bs),
			 -EFBIG);
	/* len 0 at EOF: nothing */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, d, 2 * bs + 100, 0, s, 0), 0);
	/* types */
	assert_int_equal(pmfuse_fs_clone_range(e.fs, dir, 0, 0, d, 0), -EISDIR);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 0, dir, 0), -EISDIR);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, fifo, 0, 0, d, 0), -EINVAL);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, s, 0, 0, 99999, 0), -ENOENT);
	assert_int_equal(pmfuse_fs_copy_range(e.fs, dir, 0, d, 0, 10, &th_cred_user, NULL), -EISDIR);
	assert_int_equal(pmfuse_fs_copy_range(e.fs, s, 0, fifo, 0, 10, &th_cred_user, NULL), -EINVAL);
	assert_int_equal(pmfuse_fs_unshare(e.fs, dir, 0, 0), -EISDIR);
	assert_int_equal(pmfuse_fs_get_extents(e.fs, dir, 0, NULL, 0, &s), -EISDIR);
	/* copy_range: overlap in one file, nothing past EOF */
	assert_int_equal(pmfuse_fs_copy_range(e.fs, d, 0, d, 100, 200, &th_cred_user, NULL), -EINVAL);
	assert_int_equal(pmfuse_fs_copy_range(e.fs, d, 10 * bs, d, 0, 200, &th_cred_user, NULL), 0);
	assert_int_equal(pmfuse_fs_copy_range(e.fs, d, 0, d, 8 * bs, 0, &th_cred_user, NULL), 0);
	/* CoW hint */
	assert_int_equal(pmfuse_fs_set_cowextsize(e.fs, d, PMFUSE_COWEXTSIZE_MAX + 1), -EINVAL);
	assert_int_equal(pmfuse_fs_set_cowextsize(e.fs, fifo, 4), -EINVAL);
	check_space(&e);
	th_env_free(&e);
}

/* Pool nearly full: CoW fails with ENOSPC (or is short) and leaves both copies as they were. */
/* Dedupe gives space back, so it works on a pool whose data space is used up (the reserve). */
static void test_dedupe_full_pool(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint64_t bs = 4096, a, b, c, size = 64 * 4096, i, done = 0, free0;
	uint8_t *da = malloc(size), *tmp = malloc(size), blk[4096];
	(void)state;

	th_rng_init(&rng, th_seed() ^ 15);
	th_env_new(&e, 4u << 20, 4096, 0);
	th_fill_random(&rng, da, size);
	a = th_mkfile(&e, "a");
	b = th_mkfile(&e, "b");
	assert_int_equal(wr(&e, a, da, size, 0), size);
	assert_int_equal(wr(&e, b, da, size, 0), size);
	c = th_mkfile(&e, "c");
	memset(blk, 0x33, sizeof(blk));
	for (i = 0; wr(&e, c, blk, bs, i * bs) == (ssize_t)bs; i++)
		;
	assert_int_equal(pmfuse_data_avail(e.fs), 0);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, c, 0), -ENOSPC);
	free0 = th_free_blocks(&e);
	assert_int_equal(pmfuse_fs_dedupe_range(e.fs, a, 0, size, b, 0, &done), 0);
	assert_int_equal(done, size);
	assert_true(th_free_blocks(&e) >= free0 + 64 - 4);   /* b's blocks, less new metadata */
	assert_int_equal(shared_blocks(&e, b), 64);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, tmp, size, 0), size);
	assert_memory_equal(tmp, da, size);
	check_space(&e);
	th_env_free(&e);
	free(da);
	free(tmp);
}

static void test_enospc_cow(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint64_t bs = 4096, a, b, c, size = 200 * 4096, i;
	uint8_t *da = malloc(size), *tmp = malloc(size), blk[4096];
	ssize_t n;
	(void)state;

	th_rng_init(&rng, th_seed() ^ 14);
	th_env_new(&e, 4u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	th_fill_random(&rng, da, size);
	assert_int_equal(wr(&e, a, da, size, 0), size);
	b = th_mkfile(&e, "b");
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
	/* fill the rest */
	c = th_mkfile(&e, "c");
	memset(blk, 0x33, sizeof(blk));
	for (i = 0; wr(&e, c, blk, bs, i * bs) == (ssize_t)bs; i++)
		;
	assert_int_equal(pmfuse_data_avail(e.fs), 0);
	check_space(&e);

	/* every way of storing into a shared block */
	assert_int_equal(wr(&e, b, "x", 1, 5000), -ENOSPC);
	assert_int_equal(wr(&e, a, blk, bs, 0), -ENOSPC);
	assert_int_equal(pmfuse_fs_unshare(e.fs, b, 0, 0), -ENOSPC);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, b, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     100, 2 * bs, NULL, NULL), -ENOSPC);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, b, FALLOC_FL_ZERO_RANGE, 0, 10 * bs,
					     NULL, NULL), -ENOSPC);
	assert_int_equal(th_set_size(&e, b, 50 * bs + 3), -ENOSPC);
	for (int k = 0; k < 2; k++) {
		uint64_t ino = k ? b : a;

		assert_int_equal(th_getattr(&e, ino).size, size);
		assert_int_equal(pmfuse_fs_pread(e.fs, ino, tmp, size, 0), size);
		assert_memory_equal(tmp, da, size);
	}
	assert_int_equal(shared_blocks(&e, b), 200);
	check_space(&e);

	/* room for a few blocks: a write over several shared blocks is short, not torn */
	assert_int_equal(th_set_size(&e, c, (i - 3) * bs), 0);
	{
		uint64_t room = pmfuse_data_avail(e.fs);
		uint8_t *w = malloc(10 * bs);

		assert_true(room >= 1 && room < 10);
		th_fill_random(&rng, w, 10 * bs);
		n = wr(&e, b, w, 10 * bs, 20 * bs);
		assert_int_equal(n, room * bs);
		memcpy(tmp, da, size);
		assert_int_equal(pmfuse_fs_pread(e.fs, a, tmp, size, 0), size);
		assert_memory_equal(tmp, da, size);
		memcpy(da + 20 * bs, w, (size_t)n);
		assert_int_equal(pmfuse_fs_pread(e.fs, b, tmp, size, 0), size);
		assert_memory_equal(tmp, da, size);
		free(w);
	}
	check_space(&e);
	th_rmfile(&e, "c", c);
	assert_int_equal(pmfuse_fs_unshare(e.fs, b, 0, 0), 0);
	assert_int_equal(shared_blocks(&e, b), 0);
	assert_int_equal(shared_blocks(&e, a), 0);
	check_space(&e);
	th_env_free(&e);
	free(da);
	free(tmp);
}

/* Random small writes into a clone: the CoW blocks of a window end up contiguous. */
static void test_cow_hint(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint64_t bs = 4096, a, b, nblk = 256, order[256];
	uint8_t *m = malloc(nblk * 4096);
	uint32_t hint;
	struct xlist l;
	(void)state;

	th_rng_init(&rng, th_seed() ^ 15);
	th_env_new(&e, 16u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	th_fill_random(&rng, m, nblk * bs);
	assert_int_equal(wr(&e, a, m, nblk * bs, 0), nblk * bs);
	b = th_mkfile(&e, "b");
	assert_int_equal(pmfuse_fs_get_cowextsize(e.fs, b, &hint), 0);
	assert_int_equal(hint, 0);
	assert_int_equal(pmfuse_fs_set_cowextsize(e.fs, b, 64), 0);
	assert_int_equal(pmfuse_fs_get_cowextsize(e.fs, b, &hint), 0);
	assert_int_equal(hint, 64);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
	/* one small write in every block, in random order */
	for (uint64_t i = 0; i < nblk; i++)
		order[i] = i;
	for (uint64_t i = nblk - 1; i > 0; i--) {
		uint64_t j = th_rng_below(&rng, i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (uint64_t i = 0; i < nblk; i++) {
		uint64_t off = order[i] * bs + th_rng_below(&rng, bs - 8);

		m[off] ^= 0x5a;
		assert_int_equal(wr(&e, b, m + off, 1, off), 1);
	}
	assert_int_equal(pmfuse_fs_pread(e.fs, b, m, nblk * bs, 0) , nblk * bs);
	l = extents(&e, b, 64);
	printf("# 256 one-byte writes in random order into a clone (hint 64): %u extents\n", l.n);
	for (unsigned i = 0; i < l.n; i++)
		assert_int_equal(l.v[i].refcount, 1);
	assert_true(l.n <= nblk / 64 + 2);
	free(l.v);
	check_space(&e);
	th_env_free(&e);
	free(m);
}

/* copy_file_range: congruent with head and tail, incongruent, tail shared at EOF. */
static void test_copy_range(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint64_t bs = 4096, s, d, size = 20 * 4096 + 1234, d1;
	uint8_t *m = malloc(64 * 4096), *tmp = malloc(64 * 4096), *dm = calloc(1, 64 * 4096);
	(void)state;

	th_rng_init(&rng, th_seed() ^ 16);
	th_env_new(&e, 16u << 20, 4096, 0);
	s = th_mkfile(&e, "s");
	d = th_mkfile(&e, "d");
	th_fill_random(&rng, m, size);
	assert_int_equal(wr(&e, s, m, size, 0), size);

	/* a small file (one partial block) shares its block */
	{
		uint64_t x = th_mkfile(&e, "x"), y = th_mkfile(&e, "y");

		assert_int_equal(wr(&e, x, m, 100, 0), 100);
		d1 = check_space(&e).data_blocks;
		assert_int_equal(pmfuse_fs_copy_range(e.fs, x, 0, y, 0, 1u << 20, &th_cred_user, NULL), 100);
		assert_int_equal(check_space(&e).data_blocks, d1);
		assert_int_equal(shared_blocks(&e, y), 1);
	}
	/* congruent, unaligned start: head copied, 19 blocks shared, tail shared at EOF */
	d1 = check_space(&e).data_blocks;
	assert_int_equal(pmfuse_fs_copy_range(e.fs, s, 100, d, 100, UINT64_MAX / 2, &th_cred_user, NULL),
			 size - 100);
	memcpy(dm + 100, m + 100, size - 100);
	assert_int_equal(check_space(&e).data_blocks, d1 + 1);
	assert_int_equal(shared_blocks(&e, d), 20);
	assert_int_equal(pmfuse_fs_pread(e.fs, d, tmp, 64 * bs, 0), size);
	assert_memory_equal(tmp, dm, size);
	/* congruent into the middle: the tail is copied */
	assert_int_equal(pmfuse_fs_copy_range(e.fs, s, 2 * bs + 5, d, 30 * bs + 5, 3 * bs,
					      &th_cred_user, NULL), 3 * bs);
	memcpy(dm + 30 * bs + 5, m + 2 * bs + 5, 3 * bs);
	/* incongruent */
	assert_int_equal(pmfuse_fs_copy_range(e.fs, s, 7, d, 40 * bs, 5 * bs, &th_cred_user, NULL),
			 5 * bs);
	memcpy(dm + 40 * bs, m + 7, 5 * bs);
	/* clipped at the source's EOF */
	assert_int_equal(pmfuse_fs_copy_range(e.fs, s, size - 10, d, 50 * bs, 1000, &th_cred_user, NULL),
			 10);
	memcpy(dm + 50 * bs, m + size - 10, 10);
	assert_int_equal(th_getattr(&e, d).size, 50 * bs + 10);
	assert_int_equal(pmfuse_fs_pread(e.fs, d, tmp, 64 * bs, 0), 50 * bs + 10);
	assert_memory_equal(tmp, dm, 50 * bs + 10);
	check_space(&e);
	th_env_free(&e);
	free(m);
	free(tmp);
	free(dm);
}

/* Writes that cover whole shared blocks copy nothing old; partial ones copy head and tail. */
static void test_cow_partial(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint64_t bs = 4096, a, b, size = 64 * 4096;
	uint8_t *m = malloc(size), *mb = malloc(size), *tmp = malloc(size);
	(void)state;

	th_rng_init(&rng, th_seed() ^ 17);
	th_env_new(&e, 16u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	th_fill_random(&rng, m, size);
	assert_int_equal(wr(&e, a, m, size, 0), size);
	b = th_mkfile(&e, "b");
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
	memcpy(mb, m, size);
	/* a write straddling three blocks, a whole-block write, one at EOF growing the file */
	th_fill_random(&rng, mb + bs - 10, bs + 20);
	assert_int_equal(wr(&e, b, mb + bs - 10, bs + 20, bs - 10), bs + 20);
	th_fill_random(&rng, mb + 10 * bs, 4 * bs);
	assert_int_equal(wr(&e, b, mb + 10 * bs, 4 * bs, 10 * bs), 4 * bs);
	assert_int_equal(th_set_size(&e, b, size - 100), 0);
	memset(mb + size - 100, 0, 100);
	/* the first write took its whole CoW window (blocks 0-31), the truncate one block */
	assert_int_equal(shared_blocks(&e, b), 64 - 32 - 1);
	assert_int_equal(pmfuse_fs_pread(e.fs, a, tmp, size, 0), size);
	assert_memory_equal(tmp, m, size);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, tmp, size, 0), size - 100);
	assert_memory_equal(tmp, mb, size - 100);
	/* punch and zero-range edges in shared blocks */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, b, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     20 * bs + 7, 3 * bs, NULL, NULL), 0);
	memset(mb + 20 * bs + 7, 0, 3 * bs);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, b, FALLOC_FL_ZERO_RANGE, 30 * bs + 9, 5 * bs,
					     NULL, NULL),
			 0);
	memset(mb + 30 * bs + 9, 0, 5 * bs);
	assert_int_equal(pmfuse_fs_pread(e.fs, a, tmp, size, 0), size);
	assert_memory_equal(tmp, m, size);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, tmp, size, 0), size - 100);
	assert_memory_equal(tmp, mb, size - 100);
	check_space(&e);
	/* and the other way round: the original written, the clone intact */
	th_fill_random(&rng, m + 40 * bs + 3, 100);
	assert_int_equal(wr(&e, a, m + 40 * bs + 3, 100, 40 * bs + 3), 100);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, tmp, size, 0), size - 100);
	assert_memory_equal(tmp, mb, size - 100);
	assert_int_equal(pmfuse_fs_pread(e.fs, a, tmp, size, 0), size);
	assert_memory_equal(tmp, m, size);
	check_space(&e);
	th_env_reopen(&e);
	check_space(&e);
	th_env_free(&e);
	free(m);
	free(mb);
	free(tmp);
}

/* 4 KiB random overwrites: into a fresh clone (copy-on-write) and into an unshared file. */
/*
 * Unwritten blocks and sharing: dedupe compares them as zeros (a written zero block and an
 * unwritten one are the same bytes) and the remap takes the source's flag with its blocks, so
 * no pool block is written for one owner and unwritten for another; a CoW of shared unwritten
 * blocks gives zeros around the new bytes; unshare keeps them unwritten.
 */
static void test_unwritten_sharing(void **state)
{
	struct th_env e;
	struct xlist l;
	uint64_t a, b, n = 0;
	uint8_t buf[8 * 4096], zeros[8 * 4096] = { 0 };
	(void)state;

	th_env_new(&e, 16u << 20, 4096, 0);
	/* stale bytes in the free blocks: a deleted file's */
	a = th_mkfile(&e, "a");
	memset(buf, 0xab, sizeof(buf));
	for (uint64_t off = 0; off < (4u << 20); off += sizeof(buf))
		assert_int_equal(wr(&e, a, buf, sizeof(buf), off), sizeof(buf));
	th_rmfile(&e, "a", a);
	a = th_mkfile(&e, "a");
	b = th_mkfile(&e, "b");
	assert_int_equal(pmfuse_fs_fallocate(e.fs, a, 0, 0, 8 * 4096,
					     NULL, NULL), 0);   /* unwritten */
	assert_int_equal(wr(&e, b, zeros, sizeof(zeros), 0), sizeof(zeros));   /* written zeros */
	assert_int_equal(pmfuse_fs_dedupe_range(e.fs, a, 0, 8 * 4096, b, 0, &n), 0);
	assert_int_equal(n, 8 * 4096);
	l = extents(&e, b, 16);
	assert_int_equal(l.n, 1);
	assert_true(l.v[0].unwritten && l.v[0].refcount == 2);
	free(l.v);
	check_space(&e);
	/* the other way round: written zeros over unwritten blocks become written */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, b, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
					     8 * 4096, NULL, NULL), 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, b, 0, 0, 8 * 4096, NULL, NULL), 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, a, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
					     8 * 4096, NULL, NULL), 0);
	assert_int_equal(wr(&e, a, zeros, sizeof(zeros), 0), sizeof(zeros));
	assert_int_equal(pmfuse_fs_dedupe_range(e.fs, a, 0, 8 * 4096, b, 0, &n), 0);
	l = extents(&e, b, 16);
	assert_int_equal(l.n, 1);
	assert_true(!l.v[0].unwritten && l.v[0].refcount == 2);
	free(l.v);
	check_space(&e);
	/* unequal bytes: nothing changes */
	assert_int_equal(wr(&e, a, "x", 1, 3 * 4096 + 5), 1);
	assert_int_equal(pmfuse_fs_dedupe_range(e.fs, a, 0, 8 * 4096, b, 0, &n), -EBADE);

	/* clone of unwritten blocks, CoW of one, unshare of the rest */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, a, FALLOC_FL_ZERO_RANGE, 0, 8 * 4096,
					     NULL, NULL), 0);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
	assert_int_equal(pmfuse_fs_set_cowextsize(e.fs, b, 1), 0);   /* CoW of one block */
	assert_int_equal(wr(&e, b, "new", 3, 2 * 4096 + 100), 3);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, buf, sizeof(buf), 0), sizeof(buf));
	assert_memory_equal(buf + 2 * 4096 + 100, "new", 3);
	memcpy(buf + 2 * 4096 + 100, "\0\0\0", 3);
	assert_memory_equal(buf, zeros, sizeof(buf));
	assert_int_equal(pmfuse_fs_pread(e.fs, a, buf, sizeof(buf), 0), sizeof(buf));
	assert_memory_equal(buf, zeros, sizeof(buf));
	assert_int_equal(pmfuse_fs_unshare(e.fs, b, 0, 0), 0);
	assert_int_equal(pmfuse_fs_pread(e.fs, b, buf, sizeof(buf), 0), sizeof(buf));
	assert_memory_equal(buf + 2 * 4096 + 100, "new", 3);
	memcpy(buf + 2 * 4096 + 100, "\0\0\0", 3);
	assert_memory_equal(buf, zeros, sizeof(buf));
	l = extents(&e, b, 16);
	for (unsigned i = 0; i < l.n; i++) {
		assert_int_equal(l.v[i].refcount, 1);
		assert_true(l.v[i].unwritten ==
			    !(l.v[i].logical <= 2 * 4096 && l.v[i].logical + l.v[i].length > 2 * 4096));
	}
	free(l.v);
	check_space(&e);
	th_rmfile(&e, "a", a);
	th_rmfile(&e, "b", b);
	check_space(&e);
	th_env_free(&e);
}

static void test_cow_speed(void **state)
{
	const uint64_t size = 64u << 20, nw = th_scaled(2000);
	struct th_env e;
	struct th_rng rng;
	uint8_t *buf = malloc(1u << 20);
	uint64_t a, b, hint[] = { 0, 1 };
	double t_cow[2], t_plain;
	(void)state;

	th_rng_init(&rng, th_seed() ^ 18);
	th_env_new(&e, 256u << 20, 4096, 0);
	a = th_mkfile(&e, "a");
	th_fill_random(&rng, buf, 1u << 20);
	for (uint64_t off = 0; off < size; off += 1u << 20)
		assert_int_equal(wr(&e, a, buf, 1u << 20, off), 1u << 20);
	for (int h = 0; h < 2; h++) {
		char name[8];

		snprintf(name, sizeof(name), "b%d", h);
		b = th_mkfile(&e, name);
		assert_int_equal(pmfuse_fs_set_cowextsize(e.fs, b, (uint32_t)hint[h]), 0);
		assert_int_equal(pmfuse_fs_clone_range(e.fs, a, 0, 0, b, 0), 0);
		t_cow[h] = now_ms();
		for (uint64_t i = 0; i < nw; i++)
			assert_int_equal(wr(&e, b, buf + th_rng_below(&rng, 256) * 4096, 4096,
					    th_rng_below(&rng, size / 4096) * 4096), 4096);
		t_cow[h] = (now_ms() - t_cow[h]) * 1e3 / (double)nw;
		th_rmfile(&e, name, b);
	}
	t_plain = now_ms();
	for (uint64_t i = 0; i < nw; i++)
		assert_int_equal(wr(&e, a, buf + th_rng_below(&rng, 256) * 4096, 4096,
				    th_rng_below(&rng, size / 4096) * 4096), 4096);
	t_plain = (now_ms() - t_plain) * 1e3 / (double)nw;
	printf("# 4 KiB random overwrites (fs API, no FUSE): unshared %.1f us, fresh clone %.1f us "
	       "(hint 32 blocks), %.1f us (hint 1)\n", t_plain, t_cow[0], t_cow[1]);
	check_space(&e);
	th_env_free(&e);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_einval),
		cmocka_unit_test(test_sparse_clone),
		cmocka_unit_test(test_same_file),
		cmocka_unit_test(test_copy_range),
		cmocka_unit_test(test_cow_partial),
		cmocka_unit_test(test_cow_hint),
		cmocka_unit_test(test_enospc_cow),
		cmocka_unit_test(test_dedupe_full_pool),
		cmocka_unit_test(test_clone_chains),
		cmocka_unit_test(test_clone_many_extents),
		cmocka_unit_test(test_clone_big),
		cmocka_unit_test(test_unwritten_sharing),
		cmocka_unit_test(test_cow_speed),
		cmocka_unit_test(test_model_verified),
		cmocka_unit_test(test_model_small_log),
		cmocka_unit_test(test_model_16k),
		cmocka_unit_test(test_model_4k),
	};
	th_seed();
	return cmocka_run_group_tests_name("reflink", tests, NULL, NULL);
}
