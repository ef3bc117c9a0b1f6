/* SPDX-License-Identifier: BSD-3-Clause */
#include "model_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

void mfile_init(struct th_env *e, struct mfile *mf, const char *name, uint64_t cap)
{
	memset(mf, 0, sizeof(*mf));
	snprintf(mf->name, sizeof(mf->name), "%s", name);
	mf->ino = th_mkfile(e, name);
	mf->cap = cap;
	mf->nblk = cap / e->bs + 1;
	mf->data = calloc(cap, 1);
	mf->mapped = calloc(mf->nblk, 1);
	assert_non_null(mf->data);
	assert_non_null(mf->mapped);
}

void mfile_free(struct mfile *mf)
{
	free(mf->data);
	free(mf->mapped);
}

void m_map(struct mfile *mf, uint32_t bs, uint64_t lo, uint64_t hi, uint8_t v)
{
	for (uint64_t b = lo / bs; b * bs < hi; b++)
		mf->mapped[b] = v;
}

uint64_t m_mapped_blocks(const struct mfile *mf)
{
	uint64_t n = 0;

	for (uint64_t b = 0; b < mf->nblk; b++)
		n += mf->mapped[b] != M_HOLE;
	return n;
}

void m_write(struct mfile *mf, uint32_t bs, const uint8_t *buf, uint64_t off, uint64_t n)
{
	if (!n)
		return;
	memmove(mf->data + off, buf, n);
	if (off + n > mf->size)
		mf->size = off + n;
	m_map(mf, bs, off, off + n, M_WRITTEN);
}

void m_prealloc(struct mfile *mf, uint32_t bs, uint64_t off, uint64_t end)
{
	for (uint64_t b = off / bs; b * bs < end; b++)
		if (mf->mapped[b] == M_HOLE)
			mf->mapped[b] = M_UNWRITTEN;
}

void m_zero_range(struct mfile *mf, uint32_t bs, uint64_t off, uint64_t end)
{
	for (uint64_t b = off / bs; b * bs < end; b++)
		if (mf->mapped[b] == M_HOLE || (b * bs >= off && (b + 1) * bs <= end))
			mf->mapped[b] = M_UNWRITTEN;
}

void m_truncate(struct mfile *mf, uint32_t bs, uint64_t size)
{
	if (size < mf->size) {
		memset(mf->data + size, 0, mf->size - size);
		for (uint64_t b = (size + bs - 1) / bs; b < mf->nblk; b++)
			mf->mapped[b] = 0;
	}
	mf->size = size;
}

int64_t m_seek(const struct mfile *mf, uint32_t bs, uint64_t off, int whence)
{
	uint64_t b;

	if (off >= mf->size)
		return -ENXIO;
	for (b = off / bs; b < mf->nblk && (mf->mapped[b] != M_HOLE) == (whence == SEEK_HOLE); b++)
		;
	if (whence == SEEK_DATA) {
		if (b >= mf->nblk || b * bs >= mf->size)
			return -ENXIO;
		return (int64_t)PMFUSE_MAX(off, b * bs);
	}
	return (int64_t)PMFUSE_MIN(mf->size, PMFUSE_MAX(off, b * bs));
}

void compare_range(struct th_env *e, const struct mfile *mf, uint64_t off, uint64_t len,
			  uint8_t *tmp)
{
	uint64_t want = off >= mf->size ? 0 : PMFUSE_MIN(len, mf->size - off);
	ssize_t n = pmfuse_fs_pread(e->fs, mf->ino, tmp, len, off);

	assert_int_equal(n, want);
	if (want && memcmp(tmp, mf->data + off, want)) {
		for (uint64_t i = 0; i < want; i++)
			if (tmp[i] != mf->data[off + i]) {
				fprintf(stderr, "%s: byte %llu is %02x, model %02x (size %llu)\n",
					mf->name, ULL(off + i), tmp[i], mf->data[off + i],
					ULL(mf->size));
				break;
			}
		fail();
	}
}

/* The extent report's unwritten blocks against the model's. */
static void check_unwritten(struct th_env *e, const struct mfile *mf)
{
	struct pmfuse_extent_info v[64];
	uint64_t start = 0, next, b, prev = 0;
	int n;

	do {
		n = pmfuse_fs_get_extents(e->fs, mf->ino, start, v, PMFUSE_ARRAY_SIZE(v), &next);
		assert_true(n >= 0);
		for (int i = 0; i < n; i++) {
			uint64_t lo = v[i].logical / e->bs, hi = lo + v[i].length / e->bs;

			for (b = prev; mf->exact && b < lo; b++)
				assert_true(b >= mf->nblk || mf->mapped[b] != M_UNWRITTEN);
			for (b = lo; b < hi; b++) {
				bool want = b < mf->nblk && mf->mapped[b] == M_UNWRITTEN;

				if (v[i].unwritten != want && (mf->exact || v[i].unwritten)) {
					fprintf(stderr, "%s: block %llu is %s, model %u\n", mf->name,
						ULL(b), v[i].unwritten ? "unwritten" : "written",
						b < mf->nblk ? mf->mapped[b] : 0);
					fail();
				}
			}
			prev = hi;
		}
		start = next;
	} while (next != UINT64_MAX && n > 0);
}

void mfile_check(struct th_env *e, const struct mfile *mf, uint8_t *tmp)
{
	struct pmfuse_attr a = th_getattr(e, mf->ino);

	assert_int_equal(a.size, mf->size);
	assert_int_equal(a.blocks512, m_mapped_blocks(mf) * (e->bs / 512));
	compare_range(e, mf, 0, mf->size + e->bs, tmp);
	check_unwritten(e, mf);
	for (uint64_t b = 0; b * e->bs < mf->size; b += 1 + b / 8) {
		uint64_t off = b * e->bs + (b % 3 ? 0 : 17);

		assert_int_equal(pmfuse_fs_lseek(e->fs, mf->ino, (int64_t)off, SEEK_DATA),
				 m_seek(mf, e->bs, off, SEEK_DATA));
		assert_int_equal(pmfuse_fs_lseek(e->fs, mf->ino, (int64_t)off, SEEK_HOLE),
				 m_seek(mf, e->bs, off, SEEK_HOLE));
	}
}
