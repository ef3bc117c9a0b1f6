/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * File data (src/fs/data.c, src/fs/extent.c) against a model.
 *
 * The model of a file is its bytes (zero past EOF) and which of its blocks are mapped: a write,
 * ZERO_RANGE and preallocation map every block they touch, a shrinking truncate unmaps every
 * block from the new EOF on, PUNCH_HOLE unmaps the whole blocks inside its range. So the model
 * predicts st_blocks and SEEK_DATA / SEEK_HOLE exactly, not only the bytes.
 *
 * Space accounting (check_space) walks every tree of the filesystem with pmfuse_btree_check and
 * every extent with a plain cursor, marks each block it finds in a private bitmap (a block found
 * twice is a failure), and requires the marked blocks to be exactly the allocator's used blocks:
 * no leak, no double use, and ip->blocks equal to the extents' sum for every file.
 *
 * Randomized tests print their seed; PMFUSE_SEED=n replays one run.
 */
#include "harness_fs.h"
#include "model_file.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs_internal.h"
#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

/* ---- environment ---------------------------------------------------------------------------- */

/* ---- space accounting ----------------------------------------------------------------------- */

struct marks {
	struct th_env *e;
	uint8_t *used;         /* one byte per pool block */
	uint64_t nblocks, count;
};

static void mark(struct marks *m, uint64_t blk, uint64_t len, const char *what)
{
	for (uint64_t b = blk; b < blk + len; b++) {
		if (b >= m->nblocks || m->used[b]) {
			fprintf(stderr, "block %llu (%s) outside the pool or found twice\n", ULL(b),
				what);
			fail();
		}
		m->used[b] = 1;
		m->count++;
	}
}

static void visit_node(void *arg, uint64_t blk)
{
	mark(arg, blk, 1, "tree node");
}

static void check_tree(struct marks *m, const struct pmfuse_btree *bt)
{
	char msg[256] = "";
	int rc = pmfuse_btree_check(bt, visit_node, m, msg, sizeof(msg));

	if (rc)
		fprintf(stderr, "%s tree (owner %llu): %s\n", bt->ops->name, ULL(bt->owner), msg);
	assert_int_equal(rc, 0);
}

/* Every block of the filesystem accounted for exactly once; returns the data blocks of files. */
static uint64_t check_space(struct th_env *e)
{
	const struct pmfuse_sb *sb = &e->vol->sb;
	struct pmfuse_fs *fs = e->fs;
	struct marks m = { .e = e };
	struct pmfuse_btree_cursor cur;
	uint64_t data_start = pmfuse_le64(sb->data_start), sb2 = pmfuse_le64(sb->sb2_block);
	uint64_t file_blocks = 0;
	int rc;

	m.nblocks = pmfuse_le64(sb->block_count);
	m.used = calloc(m.nblocks, 1);
	assert_non_null(m.used);
	check_tree(&m, &fs->inodes);
	check_tree(&m, &fs->orphans);

	for (rc = pmfuse_btree_first(&cur, &fs->inodes); !rc; rc = pmfuse_btree_next(&cur)) {
		const struct pmfuse_inode *rec = pmfuse_btree_cursor_rec(&cur);
		struct pmfuse_inode *ip;
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_btree bt;
		uint32_t mode = pmfuse_le32(rec->mode);

		assert_int_equal(pmfuse_inode_locate(fs, pmfuse_le64(rec->ino), &ip, &leaf), 0);
		if (S_ISREG(mode) || S_ISLNK(mode)) {
			struct pmfuse_btree_cursor ec;
			uint64_t sum = 0, prev_end = 0;
			int erc;

			bool inl = pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP;
			unsigned i = 0;

			pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_extent_ops, &bt);
			check_tree(&m, &bt);
			if (inl)   /* the records are in the inode, the tree is empty */
				assert_int_equal(pmfuse_le16(ip->map.levels), 0);
			for (erc = inl ? 0 : pmfuse_btree_first(&ec, &bt); !erc;
			     erc = inl ? (++i < PMFUSE_INLINE_EXTENTS &&
					  pmfuse_le32(ip->inline_map[i].len) ? 0 : -ENOENT) :
			     pmfuse_btree_next(&ec)) {
				const struct pmfuse_extent *x = inl ? &ip->inline_map[i] :
					pmfuse_btree_cursor_rec(&ec);
				uint64_t f = pmfuse_le64(x->fblock), p = pmfuse_le64(x->pblock);
				uint32_t len = pmfuse_le32(x->len);

				assert_true(f >= prev_end);
				assert_true(p >= data_start && p + len <= sb2);
				mark(&m, p, len, "file data");
				sum += len;
				prev_end = f + len;
			}
			assert_int_equal(erc, -ENOENT);
			assert_int_equal(sum, pmfuse_le64(ip->blocks));
			file_blocks += sum;
		} else if (S_ISDIR(mode)) {
			pmfuse_inode_tree(fs, ip, leaf, &ip->map, &pmfuse_dirent_ops, &bt);
			check_tree(&m, &bt);
			if (pmfuse_le32(ip->flags) & PMFUSE_INODE_SHORT_NAMES) {
				pmfuse_inode_tree(fs, ip, leaf, &ip->sdir, &pmfuse_sdirent_ops,
						  &bt);
				check_tree(&m, &bt);
			}
		}
		pmfuse_inode_tree(fs, ip, leaf, &ip->xattrs, &pmfuse_xattr_ops, &bt);
		check_tree(&m, &bt);
	}
	assert_int_equal(rc, -ENOENT);

	/* what the allocator says is used is exactly what the trees use */
	assert_int_equal(m.count, sb2 - data_start - th_free_blocks(e));
	for (uint64_t b = data_start; b < sb2; b++)
		if (m.used[b])
			assert_int_equal(pmfuse_alloc_is_used(fs->alloc, b), 1);
	assert_int_equal(pmfuse_alloc_check(fs->alloc), 0);
	free(m.used);
	return file_blocks;
}

/* ---- the model ------------------------------------------------------------------------------ */

/* ---- one random operation ------------------------------------------------------------------- */

struct run {
	struct th_env e;
	struct th_rng rng;
	struct mfile *files;
	int nfiles;
	uint8_t *buf, *tmp;
	uint64_t ops[10];
};

enum { OP_WRITE, OP_APPEND, OP_TRUNC, OP_PUNCH, OP_ZERO, OP_FALLOC, OP_PREAD, OP_SEEK, OP_READV };

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
	default: return rnd(r, PMFUSE_MIN(mf->cap, mf->size + (1u << 20)) + 1);
	}
}

static uint64_t rand_len(struct run *r)
{
	uint32_t bs = r->e.bs;

	switch (rnd(r, 20)) {
	case 0: return 1;
	case 1: return (1 + rnd(r, 256)) * bs;
	case 2: return (64u << 10) + rnd(r, 1u << 20);
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

struct gather {
	struct th_env *e;
	uint8_t *out;
	size_t len;
	int cnt;
};

/* pmfuse_fs_read's vectors must point into the pool or at the zero buffer: never a copy. */
static int gather(void *arg, const struct iovec *iov, int cnt)
{
	struct gather *g = arg;
	const uint8_t *base = pmfuse_pool_base(g->e->pool);
	size_t size = pmfuse_pool_size(g->e->pool);

	g->cnt = cnt;
	for (int i = 0; i < cnt; i++) {
		const uint8_t *p = iov[i].iov_base;
		bool in_pool = p >= base && p + iov[i].iov_len <= base + size;
		bool zeros = p == (const uint8_t *)g->e->fs->zeroes &&
			     iov[i].iov_len <= PMFUSE_ZERO_BUF;

		assert_true(iov[i].iov_len > 0);
		assert_true(in_pool || zeros);
		memcpy(g->out + g->len, p, iov[i].iov_len);
		g->len += iov[i].iov_len;
	}
	return 7;
}

static void op_readv(struct run *r, struct mfile *mf, uint64_t off, uint64_t len)
{
	struct gather g = { .e = &r->e, .out = r->tmp };
	uint64_t want = off >= mf->size ? 0 : PMFUSE_MIN(len, mf->size - off);

	assert_int_equal(pmfuse_fs_read(r->e.fs, mf->ino, off, len, gather, &g), 7);
	assert_int_equal(g.len, want);
	assert_memory_equal(r->tmp, mf->data + off, want);
}

static void random_op(struct run *r)
{
	struct th_env *e = &r->e;
	struct mfile *mf = &r->files[rnd(r, (uint64_t)r->nfiles)];
	uint32_t bs = e->bs;
	uint64_t off = rand_off(r, mf), len = rand_len(r), end;
	unsigned kind = (unsigned)rnd(r, 100);
	ssize_t n;
	int rc;

	clip(mf, &off, &len);
	end = off + len;
	if (kind < 35) {                                            /* write */
		const struct pmfuse_cred *c = rnd(r, 2) ? &th_cred_user : &th_cred_root;

		th_fill_random(&r->rng, r->buf, len);
		n = pmfuse_fs_write(e->fs, mf->ino, r->buf, len, off, false, c);
		assert_int_equal(n, len);
		m_write(mf, bs, r->buf, off, len);
		r->ops[OP_WRITE]++;
	} else if (kind < 45) {                                     /* append */
		len = PMFUSE_MIN(len, mf->cap - mf->size);
		if (!len)
			return;
		th_fill_random(&r->rng, r->buf, len);
		n = pmfuse_fs_write(e->fs, mf->ino, r->buf, len, rnd(r, 1000), true, &th_cred_user);
		assert_int_equal(n, len);
		m_write(mf, bs, r->buf, mf->size, len);
		r->ops[OP_APPEND]++;
	} else if (kind < 55) {                                     /* truncate */
		uint64_t size = rnd(r, 3) ? rnd(r, mf->size + 1) : off;

		assert_int_equal(th_set_size(e, mf->ino, size), 0);
		m_truncate(mf, bs, size);
		r->ops[OP_TRUNC]++;
	} else if (kind < 62) {                                     /* punch */
		rc = pmfuse_fs_fallocate(e->fs, mf->ino,
					 FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len, NULL, NULL);
		assert_int_equal(rc, 0);
		if (off < mf->size)
			memset(mf->data + off, 0, PMFUSE_MIN(end, mf->size) - off);
		m_map(mf, bs, (off + bs - 1) / bs * bs, end / bs * bs, 0);
		r->ops[OP_PUNCH]++;
	} else if (kind < 69) {                                     /* zero range */
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
	} else if (kind < 75) {                                     /* preallocate */
		bool keep = rnd(r, 2);

		rc = pmfuse_fs_fallocate(e->fs, mf->ino, keep ? FALLOC_FL_KEEP_SIZE : 0, off, len,
					 NULL, NULL);
		assert_int_equal(rc, 0);
		if (!keep && end > mf->size)
			mf->size = end;
		m_prealloc(mf, bs, off, end);
		r->ops[OP_FALLOC]++;
	} else if (kind < 85) {                                     /* pread */
		compare_range(e, mf, off, PMFUSE_MIN(len, 300000), r->tmp);
		r->ops[OP_PREAD]++;
	} else if (kind < 92) {                                     /* lseek */
		int whence = rnd(r, 2) ? SEEK_DATA : SEEK_HOLE;

		assert_int_equal(pmfuse_fs_lseek(e->fs, mf->ino, (int64_t)off, whence),
				 m_seek(mf, bs, off, whence));
		r->ops[OP_SEEK]++;
	} else {                                                    /* read (iovecs) */
		op_readv(r, mf, off, PMFUSE_MIN(len, 300000));
		r->ops[OP_READV]++;
	}

	/* after every operation: the size, and one random range */
	assert_int_equal(th_getattr(e, mf->ino).size, mf->size);
	off = rnd(r, mf->size + 2);
	compare_range(e, mf, off, 1 + rnd(r, 20000), r->tmp);
}

static void check_all(struct run *r)
{
	uint64_t sum = 0, blocks;

	for (int i = 0; i < r->nfiles; i++) {
		mfile_check(&r->e, &r->files[i], r->tmp);
		op_readv(r, &r->files[i], 0, r->files[i].size);
		sum += m_mapped_blocks(&r->files[i]);
	}
	blocks = check_space(&r->e);
	assert_int_equal(blocks, sum);
}

/*
 * The random sequence: nops operations over nfiles files of at most cap bytes, full checks every
 * check_every operations and a remount every reopen_every. At the end every file is deleted and
 * the free count must be what it was before the files existed.
 */
static void run_model(uint64_t seed_mix, size_t pool_size, uint32_t bs, uint64_t log_blocks,
		      int nfiles, uint64_t cap, uint64_t nops, uint64_t check_every,
		      uint64_t reopen_every, bool verify)
{
	struct run r;
	uint64_t start_free;
	char name[32];

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
		snprintf(name, sizeof(name), "f%d", i);
		mfile_init(&r.e, &r.files[i], name, cap);
		r.files[i].exact = true;   /* no sharing here: unwritten blocks are predictable */
	}

	for (uint64_t i = 1; i <= nops; i++) {
		random_op(&r);
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
	printf("# %llu ops (bs %u): write %llu append %llu trunc %llu punch %llu zero %llu "
	       "falloc %llu pread %llu seek %llu readv %llu\n", ULL(nops), bs,
	       ULL(r.ops[OP_WRITE]), ULL(r.ops[OP_APPEND]), ULL(r.ops[OP_TRUNC]),
	       ULL(r.ops[OP_PUNCH]), ULL(r.ops[OP_ZERO]), ULL(r.ops[OP_FALLOC]),
	       ULL(r.ops[OP_PREAD]), ULL(r.ops[OP_SEEK]), ULL(r.ops[OP_READV]));

	for (int i = 0; i < nfiles; i++) {
		th_rmfile(&r.e, r.files[i].name, r.files[i].ino);
		mfile_free(&r.files[i]);
	}
	check_space(&r.e);
	assert_int_equal(th_free_blocks(&r.e), start_free);
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
	run_model(1, 64u << 20, 4096, 0, 4, 6u << 20, th_scaled(20000), 500, 4000, false);
}

static void test_model_16k(void **state)
{
	(void)state;
	run_model(2, 64u << 20, 16384, 0, 3, 8u << 20, th_scaled(4000), 400, 1500, false);
}

/* A log of 8 blocks: every multi-block operation runs in many small transactions, truncates take
 * the orphan route, and the budget halving on a full log gets exercised. */
static void test_model_tiny_log(void **state)
{
	(void)state;
	run_model(3, 32u << 20, 4096, 8, 3, 4u << 20, th_scaled(4000), 250, 1000, false);
}

/* Debug builds: every transaction's changes must lie in declared ranges (aborts otherwise). */
static void test_model_verified(void **state)
{
	(void)state;
	run_model(4, 4u << 20, 4096, 0, 2, 1u << 20, th_scaled(400), 100, 200, true);
}

/* ---- targeted tests ------------------------------------------------------------------------- */

static void test_basics(void **state)
{
	struct th_env e;
	struct pmfuse_attr a, d;
	struct pmfuse_setattr sa = { 0 };
	uint8_t buf[64], out[64];
	uint64_t ino;
	char link[16];
	(void)state;

	th_env_new(&e, 8u << 20, 4096, 0);
	ino = th_mkfile(&e, "a");
	memset(buf, 'x', sizeof(buf));

	/* empty file */
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), 0), 0);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_DATA), -ENXIO);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_HOLE), -ENXIO);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 0, 100, false, &th_cred_user), 0);
	assert_int_equal(th_getattr(&e, ino).size, 0);

	/* wrong types and arguments */
	assert_int_equal(pmfuse_fs_write(e.fs, PMFUSE_ROOT_INO, buf, 1, 0, false, &th_cred_user),
			 -EISDIR);
	assert_int_equal(pmfuse_fs_pread(e.fs, PMFUSE_ROOT_INO, out, 1, 0), -EISDIR);
	assert_int_equal(pmfuse_fs_write(e.fs, 9999, buf, 1, 0, false, &th_cred_user), -ENOENT);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_SET), -EINVAL);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE, 0, 10, NULL, NULL),
			 -EOPNOTSUPP);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_COLLAPSE_RANGE, 0, 4096,
					     NULL, NULL),
			 -EOPNOTSUPP);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, 0, 0, 0, NULL, NULL), -EINVAL);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, 0, (uint64_t)INT64_MAX, 2,
					     NULL, NULL), -EFBIG);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, PMFUSE_ROOT_INO, 0, 0, 1, NULL, NULL), -EISDIR);
	assert_int_equal(pmfuse_fs_fsync(e.fs, ino), 0);
	assert_int_equal(pmfuse_fs_fsync(e.fs, 9999), -ENOENT);

	/* the size limit: 2^63 - 1 bytes; a write reaching past it is cut short */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 1, (uint64_t)INT64_MAX, false,
					 &th_cred_user), -EFBIG);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 10, (uint64_t)INT64_MAX - 4, false,
					 &th_cred_user), 4);
	a = th_getattr(&e, ino);
	assert_int_equal(a.size, (uint64_t)INT64_MAX);
	assert_int_equal(a.blocks512, 8);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, 10, (uint64_t)INT64_MAX - 4), 4);
	assert_memory_equal(out, buf, 4);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_DATA),
			 (int64_t)((uint64_t)INT64_MAX / 4096 * 4096));
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 5, SEEK_HOLE), 5);
	sa.size = (uint64_t)INT64_MAX + 1;
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_SIZE, &th_cred_user, &a),
			 -EFBIG);
	assert_int_equal(th_set_size(&e, ino, 0), 0);
	assert_int_equal(th_getattr(&e, ino).blocks512, 0);

	/* append ignores the offset; times move */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "hello", 5, 0, false, &th_cred_user), 5);
	a = th_getattr(&e, ino);
	usleep(2000);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, " world", 6, 1, true, &th_cred_user), 6);
	d = th_getattr(&e, ino);
	assert_int_equal(d.size, 11);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), 0), 11);
	assert_memory_equal(out, "hello world", 11);
	assert_true(d.mtime.tv_sec > a.mtime.tv_sec ||
		    (d.mtime.tv_sec == a.mtime.tv_sec && d.mtime.tv_nsec > a.mtime.tv_nsec));
	assert_true(d.ctime.tv_sec > a.ctime.tv_sec ||
		    (d.ctime.tv_sec == a.ctime.tv_sec && d.ctime.tv_nsec > a.ctime.tv_nsec));

	/* setuid/setgid (pmfuse_fs_mode_after_change): a write by a caller without CAP_FSETID
	 * clears setuid, and setgid when group-executable or the caller is outside the file's
	 * group; with CAP_FSETID (root by default, or as the cred says) nothing */
	struct pmfuse_cred root_nofsetid = th_cred_root, user_fsetid = th_cred_user;
	struct pmfuse_cred member = th_cred_user, outsider = th_cred_user;

	root_nofsetid.fsetid = -1;
	user_fsetid.fsetid = 1;
	member.gid = th_getattr(&e, ino).gid;
	outsider.gid = member.gid + 1;
	sa.mode = 06755;
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_MODE, &th_cred_root, &a), 0);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "!", 1, 0, false, &th_cred_root), 1);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 06755);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "!", 1, 0, false, &user_fsetid), 1);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 06755);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "!", 1, 0, false, &root_nofsetid), 1);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 0755);
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_MODE, &th_cred_root, &a), 0);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "!", 1, 0, false, &outsider), 1);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 0755);
	sa.mode = 06745;
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_MODE, &th_cred_root, &a), 0);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "!", 1, 0, false, &member), 1);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 02745);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "!", 1, 0, false, &outsider), 1);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 0745);
	/* fallocate by the same rule, also when it has nothing to allocate, and it says whether
	 * it dropped a bit (the daemon then tells the kernel); NULL cred keeps both */
	bool dropped = true;

	sa.mode = 06755;
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_MODE, &th_cred_root, &a), 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_KEEP_SIZE, 0, 1, NULL, &dropped),
			 0);
	assert_false(dropped);
	dropped = true;
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_KEEP_SIZE, 0, 1, &th_cred_root,
					     &dropped), 0);
	assert_false(dropped);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 06755);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_KEEP_SIZE, 0, 1, &root_nofsetid,
					     &dropped), 0);
	assert_true(dropped);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 0755);
	sa.mode = 06745;
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_MODE, &th_cred_root, &a), 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
					     5, 1, &member, &dropped), 0);
	assert_true(dropped);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 02745);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     5, 1, &outsider, &dropped), 0);
	assert_true(dropped);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 0745);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, 0, 0, 1, &outsider, &dropped), 0);
	assert_false(dropped);
	/* copy_file_range by the same rule, judged under the copy's own lock */
	uint64_t src = th_mkfile(&e, "copysrc");

	assert_int_equal(pmfuse_fs_write(e.fs, src, "copied", 6, 0, false, &th_cred_user), 6);
	sa.mode = 06755;
	assert_int_equal(pmfuse_fs_setattr(e.fs, ino, &sa, PMFUSE_SET_MODE, &th_cred_root, &a), 0);
	dropped = true;
	assert_int_equal(pmfuse_fs_copy_range(e.fs, src, 0, ino, 100, 6, &th_cred_root,
					      &dropped), 6);
	assert_false(dropped);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 06755);
	assert_int_equal(pmfuse_fs_copy_range(e.fs, src, 0, ino, 100, 6, &outsider, &dropped), 6);
	assert_true(dropped);
	assert_int_equal(th_getattr(&e, ino).mode & 07777, 0755);
	assert_int_equal(pmfuse_fs_copy_range(e.fs, src, 0, ino, 100, 6, &outsider, &dropped), 6);
	assert_false(dropped);
	assert_int_equal(pmfuse_fs_unlink(e.fs, PMFUSE_ROOT_INO, "copysrc"), 0);

	/* truncate up is a hole; the old tail stays zero after truncate down and up again */
	assert_int_equal(th_set_size(&e, ino, 3), 0);
	assert_int_equal(th_set_size(&e, ino, 20000), 0);
	a = th_getattr(&e, ino);
	assert_int_equal(a.blocks512, 8);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), 0), sizeof(out));
	assert_memory_equal(out, "!el", 3);
	for (size_t i = 3; i < sizeof(out); i++)
		assert_int_equal(out[i], 0);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 10, SEEK_DATA), 10);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 10, SEEK_HOLE), 4096);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 5000, SEEK_DATA), -ENXIO);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 5000, SEEK_HOLE), 5000);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 20000, SEEK_HOLE), -ENXIO);

	/* KEEP_SIZE preallocation past EOF: counted in st_blocks, not in the size, reads zeros
	 * when the size grows over it, and goes on a shrinking truncate */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_KEEP_SIZE, 40960, 8192,
					     NULL, NULL), 0);
	a = th_getattr(&e, ino);
	assert_int_equal(a.size, 20000);
	assert_int_equal(a.blocks512, 3 * 8);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "z", 1, 49151, false, &th_cred_user), 1);
	assert_int_equal(th_getattr(&e, ino).blocks512, 3 * 8);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, 4, 40960), 4);
	assert_memory_equal(out, "\0\0\0\0", 4);
	assert_int_equal(th_set_size(&e, ino, 4096), 0);
	assert_int_equal(th_getattr(&e, ino).blocks512, 8);

	/* symlinks: the namespace code stores targets through the _locked calls */
	assert_int_equal(pmfuse_fs_symlink(e.fs, PMFUSE_ROOT_INO, "l", "target/x", &th_cred_user,
					   &a), 0);
	assert_int_equal(pmfuse_fs_readlink(e.fs, a.ino, link, sizeof(link)), 8);
	assert_string_equal(link, "target/x");
	assert_int_equal(pmfuse_fs_pread(e.fs, a.ino, out, 1, 0), -EINVAL);
	assert_int_equal(pmfuse_fs_write(e.fs, a.ino, buf, 1, 0, false, &th_cred_user), -EINVAL);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, a.ino, 0, 0, 1, NULL, NULL), -ENODEV);

	check_space(&e);
	th_env_free(&e);
}

/* Reads hand out pool addresses and the zero buffer, merged where extents continue. */
static void test_read_iov(void **state)
{
	struct th_env e;
	struct gather g = { .e = &e };
	uint8_t *buf = malloc(4u << 20), *out = malloc(8u << 20);
	uint64_t ino;
	(void)state;

	assert_non_null(buf);
	assert_non_null(out);
	th_env_new(&e, 32u << 20, 4096, 0);
	ino = th_mkfile(&e, "r");
	for (size_t i = 0; i < (4u << 20); i++)
		buf[i] = (uint8_t)(i * 7 + 3);
	/* one large write: one extent, so one vector */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 1u << 20, 0, false, &th_cred_user),
			 1u << 20);
	g.out = out;
	assert_int_equal(pmfuse_fs_read(e.fs, ino, 1000, 500000, gather, &g), 7);
	assert_int_equal(g.cnt, 1);
	assert_int_equal(g.len, 500000);
	assert_memory_equal(out, buf + 1000, 500000);

	/* a 3.5 MiB hole between two data ranges: the zero buffer, in <= 1 MiB vectors */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 4096, (7u << 19) + (1u << 20), false,
					 &th_cred_user), 4096);
	g.len = 0;
	assert_int_equal(pmfuse_fs_read(e.fs, ino, 0, 8u << 20, gather, &g), 7);
	assert_int_equal(g.len, (7u << 19) + (1u << 20) + 4096);
	assert_int_equal(g.cnt, 1 + 4 + 1);
	assert_memory_equal(out, buf, 1u << 20);
	for (size_t i = 1u << 20; i < (7u << 19) + (1u << 20); i++)
		if (out[i])
			fail();
	assert_memory_equal(out + (7u << 19) + (1u << 20), buf, 4096);

	/* at EOF: emit is still called, with nothing */
	g.len = 0;
	g.cnt = -1;
	assert_int_equal(pmfuse_fs_read(e.fs, ino, 100u << 20, 10, gather, &g), 7);
	assert_int_equal(g.cnt, 0);
	assert_int_equal(pmfuse_fs_read(e.fs, 9999, 0, 10, gather, &g), -ENOENT);
	th_env_free(&e);
	free(buf);
	free(out);
}

/* A file with data 1 GiB in costs a block of data and a node of extent map. */
static void test_sparse(void **state)
{
	struct th_env e;
	uint64_t ino, before;
	uint8_t out[4096];
	(void)state;

	th_env_new(&e, 16u << 20, 4096, 0);
	ino = th_mkfile(&e, "sparse");
	before = th_free_blocks(&e);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "end", 3, 1ull << 30, false, &th_cred_user), 3);
	assert_int_equal(th_getattr(&e, ino).size, (1ull << 30) + 3);
	assert_int_equal(th_getattr(&e, ino).blocks512, 8);
	assert_true(before - th_free_blocks(&e) <= 2);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), 12345678), sizeof(out));
	for (size_t i = 0; i < sizeof(out); i++)
		assert_int_equal(out[i], 0);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_DATA), (int64_t)(1ull << 30));
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_HOLE), 0);
	assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 1ull << 30, SEEK_HOLE),
			 (int64_t)(1ull << 30) + 3);
	/* a 1 TiB hole punched and zero-ranged costs nothing either */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     0, 1ull << 30, NULL, NULL), 0);
	assert_int_equal(th_set_size(&e, ino, 1ull << 40), 0);
	assert_int_equal(th_getattr(&e, ino).blocks512, 8);
	check_space(&e);
	assert_int_equal(th_set_size(&e, ino, 0), 0);
	assert_int_equal(th_free_blocks(&e), before);
	th_env_free(&e);
}

/* Fill a small pool: short writes, then -ENOSPC; contents and accounting stay right. */
static void test_enospc_write(void **state)
{
	struct th_env e;
	struct th_rng rng;
	struct mfile f[2];
	uint8_t *buf = malloc(1u << 20), *tmp = malloc(8u << 20);
	uint64_t start_free;
	int short_writes = 0, enospc = 0;
	(void)state;

	assert_non_null(buf);
	assert_non_null(tmp);
	th_rng_init(&rng, th_seed() ^ 11);
	th_env_new(&e, 2u << 20, 4096, 0);
	start_free = th_free_blocks(&e);
	mfile_init(&e, &f[0], "a", 4u << 20);
	mfile_init(&e, &f[1], "b", 4u << 20);
	for (int i = 0; i < 2000 && enospc < 20; i++) {
		struct mfile *mf = &f[th_rng_below(&rng, 2)];
		uint64_t len = 1 + th_rng_below(&rng, th_rng_below(&rng, 4) ? 20000 : 300000);
		uint64_t off = th_rng_below(&rng, 2) ? mf->size :
			       th_rng_below(&rng, mf->size + 100000);
		ssize_t n;

		if (off + len > mf->cap)
			continue;
		th_fill_random(&rng, buf, len);
		n = pmfuse_fs_write(e.fs, mf->ino, buf, len, off, false, &th_cred_user);
		if (n == -ENOSPC) {
			enospc++;
			continue;
		}
		assert_true(n > 0 && (uint64_t)n <= len);
		if ((uint64_t)n < len)
			short_writes++;
		m_write(mf, e.bs, buf, off, (uint64_t)n);
		assert_int_equal(th_getattr(&e, mf->ino).size, mf->size);
	}
	printf("# ENOSPC: %d short writes, %d refusals, %llu blocks free (reserve %llu)\n",
	       short_writes, enospc, ULL(th_free_blocks(&e)), ULL(pmfuse_data_reserve(e.fs)));
	assert_true(enospc > 0);
	assert_true(short_writes > 0);
	for (int i = 0; i < 2; i++)
		mfile_check(&e, &f[i], tmp);
	check_space(&e);
	th_env_reopen(&e);
	for (int i = 0; i < 2; i++)
		mfile_check(&e, &f[i], tmp);
	check_space(&e);

	/* a full pool still truncates, and then writes again */
	assert_int_equal(th_set_size(&e, f[0].ino, 100), 0);
	m_truncate(&f[0], e.bs, 100);
	assert_int_equal(pmfuse_fs_write(e.fs, f[1].ino, buf, 5000, 0, false, &th_cred_user), 5000);
	m_write(&f[1], e.bs, buf, 0, 5000);
	for (int i = 0; i < 2; i++) {
		mfile_check(&e, &f[i], tmp);
		th_rmfile(&e, f[i].name, f[i].ino);
		mfile_free(&f[i]);
	}
	check_space(&e);
	assert_int_equal(th_free_blocks(&e), start_free);
	th_env_free(&e);
	free(buf);
	free(tmp);
}

struct snap {
	struct pmfuse_attr a;
	uint8_t *data;
	ssize_t n;
	uint64_t free;
};

static void snap_take(struct th_env *e, uint64_t ino, struct snap *s, size_t cap)
{
	s->a = th_getattr(e, ino);
	s->data = malloc(cap);
	assert_non_null(s->data);
	s->n = pmfuse_fs_pread(e->fs, ino, s->data, cap, 0);
	assert_true(s->n >= 0);
	s->free = th_free_blocks(e);
}

static void snap_same(struct th_env *e, uint64_t ino, const struct snap *s, size_t cap)
{
	struct snap now;

	snap_take(e, ino, &now, cap);
	assert_int_equal(now.a.size, s->a.size);
	assert_int_equal(now.a.blocks512, s->a.blocks512);
	assert_int_equal(now.n, s->n);
	assert_memory_equal(now.data, s->data, (size_t)s->n);
	assert_int_equal(now.free, s->free);
	free(now.data);
}

/* fallocate and ZERO_RANGE that cannot be satisfied leave the file exactly as it was: both the
 * early refusal and a failure midway (the holes fit, the map's new nodes do not). */
static void test_enospc_fallocate(void **state)
{
	struct th_env e;
	struct snap s;
	uint64_t frag, filler, holes = 0, fb, off;
	uint8_t blk[4096];
	int rc;
	(void)state;

	th_env_new(&e, 2u << 20, 4096, 0);
	frag = th_mkfile(&e, "frag");
	filler = th_mkfile(&e, "filler");
	/* the filler's map gets its leaf now: later it grows one block (one merge) at a time */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, filler, FALLOC_FL_KEEP_SIZE, 0, 4096,
					     NULL, NULL), 0);
	memset(blk, 0xab, sizeof(blk));
	/* every other block: one extent record per block */
	for (fb = 0; fb < 2 * 150; fb += 2)
		assert_int_equal(pmfuse_fs_write(e.fs, frag, blk, 4096, fb * 4096, false,
						 &th_cred_user), 4096);
	holes = 150;
	/* the early refusal */
	snap_take(&e, frag, &s, 4u << 20);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, frag, 0, 0, 100u << 20, NULL, NULL), -ENOSPC);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, frag, FALLOC_FL_ZERO_RANGE, 0, 100u << 20,
					     NULL, NULL),
			 -ENOSPC);
	snap_same(&e, frag, &s, 4u << 20);
	free(s.data);

	/* leave exactly as many blocks beyond the reserve as the holes need: the holes fit, but
	 * their records (one per hole: nothing merges) need a new leaf, which takes a block */
	for (off = 4096; th_free_blocks(&e) > holes + pmfuse_data_reserve(e.fs); off += 4096) {
		rc = pmfuse_fs_fallocate(e.fs, filler, FALLOC_FL_KEEP_SIZE, off, 4096, NULL, NULL);
		assert_int_equal(rc, 0);
	}
	assert_int_equal(th_free_blocks(&e), holes + pmfuse_data_reserve(e.fs));
	check_space(&e);
	snap_take(&e, frag, &s, 4u << 20);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, frag, 0, 0, 2 * 150 * 4096,
					     NULL, NULL), -ENOSPC);
	snap_same(&e, frag, &s, 4u << 20);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, frag, FALLOC_FL_ZERO_RANGE, 0,
					     2 * 150 * 4096, NULL, NULL), -ENOSPC);
	snap_same(&e, frag, &s, 4u << 20);
	free(s.data);
	check_space(&e);

	/* deleting everything gives every block back */
	th_rmfile(&e, "filler", filler);
	th_rmfile(&e, "frag", frag);
	check_space(&e);
	th_env_free(&e);
}

/* Consumes free blocks down to `left` behind the data reserve's back, as the metadata of other
 * operations would: raw extents appended to a file's map (contents irrelevant). */
static void eat_blocks(struct th_env *e, uint64_t ino, uint64_t left)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_extmap m;
	struct pmfuse_iext x;
	uint64_t fb = 1ull << 30;

	while (th_free_blocks(e) > left) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(e->vol->txm);
		uint64_t want = th_free_blocks(e) - left;
		int rc;

		assert_int_equal(pmfuse_inode_locate(e->fs, ino, &ip, &leaf), 0);
		pmfuse_extmap_open(&m, e->fs, ip, leaf);
		rc = pmfuse_alloc_extent(tx, e->fs->alloc, 0, 1, want, &x.pblock, &x.len);
		x.fblock = fb;
		x.flags = 0;
		if (!rc)
			rc = pmfuse_extent_insert(tx, &m, &x);
		if (rc) {
			/* the map needed a node too: try with one block less */
			pmfuse_tx_abort(tx);
			assert_int_equal(rc, -ENOSPC);
			assert_true(want > 1);
			left++;
			continue;
		}
		pmfuse_tx_commit(tx);
		fb += x.len + 1;
	}
}

/*
 * A pool full of data still lets files shrink and go (the data reserve keeps blocks for the
 * metadata), and one full to the very last block still truncates a file with many extents: the
 * orphan entry cannot get a block, so the truncate first frees blocks in a step of its own.
 */
static void test_full_pool(void **state)
{
	struct th_env e;
	struct th_rng rng;
	uint64_t frag, filler, off, nrec = 60;
	uint8_t *buf = malloc(4096), *tmp = malloc(1u << 20);
	(void)state;

	assert_non_null(buf);
	assert_non_null(tmp);
	th_rng_init(&rng, th_seed() ^ 21);
	th_fill_random(&rng, buf, 4096);
	th_env_new(&e, 2u << 20, 4096, 0);
	filler = th_mkfile(&e, "filler");
	frag = th_mkfile(&e, "frag");
	for (uint64_t i = 0; i < nrec; i++)
		assert_int_equal(pmfuse_fs_write(e.fs, frag, buf, 4096, 2 * i * 4096, false,
						 &th_cred_user), 4096);
	for (off = 0;; off += 4096) {
		int rc = pmfuse_fs_fallocate(e.fs, filler, FALLOC_FL_KEEP_SIZE, off, 4096,
					     NULL, NULL);

		if (rc == -ENOSPC)
			break;
		assert_int_equal(rc, 0);
	}
	/* full for data: the reserve is what is left */
	assert_true(th_free_blocks(&e) > 0 && th_free_blocks(&e) <= pmfuse_data_reserve(e.fs));
	assert_int_equal(pmfuse_fs_write(e.fs, frag, buf, 1, 1 * 4096, false, &th_cred_user),
			 -ENOSPC);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, frag, FALLOC_FL_ZERO_RANGE, 4096, 4096,
					     NULL, NULL),
			 -ENOSPC);
	assert_int_equal(pmfuse_fs_write(e.fs, frag, "ok", 2, 10, false, &th_cred_user), 2);
	memcpy(buf + 10, "ok", 2);
	check_space(&e);

	/* and full to the last block */
	eat_blocks(&e, filler, 0);
	assert_int_equal(th_free_blocks(&e), 0);
	assert_int_equal(th_set_size(&e, frag, 4096 + 100), 0);
	assert_int_equal(th_getattr(&e, frag).size, 4096 + 100);
	assert_int_equal(th_getattr(&e, frag).blocks512, 8);
	assert_int_equal(pmfuse_btree_count(&e.fs->orphans), 0);
	assert_int_equal(pmfuse_fs_pread(e.fs, frag, tmp, 1u << 20, 0), 4096 + 100);
	assert_memory_equal(tmp, buf, 4096);
	for (size_t i = 4096; i < 4096 + 100; i++)
		assert_int_equal(tmp[i], 0);
	check_space(&e);
	th_rmfile(&e, "filler", filler);
	th_rmfile(&e, "frag", frag);
	check_space(&e);
	th_env_free(&e);
	free(buf);
	free(tmp);
}

/*
 * A log too small for what one change of a two-level map needs (a leaf and its parent, 8 KiB,
 * in a 3-block log): the write and the punch abort, retry with smaller budgets, and fail with
 * -ENOSPC having changed nothing.
 */
static void test_log_full(void **state)
{
	struct th_env e;
	struct snap s;
	uint64_t ino, i;
	uint8_t buf[3 * 4096];
	ssize_t n = 0;
	(void)state;

	memset(buf, 0x61, sizeof(buf));
	th_env_new(&e, 8u << 20, 4096, 3);
	ino = th_mkfile(&e, "f");
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	/* three-block records one block apart, until a leaf of the two-level map is full */
	for (i = 0; i < 1000; i++) {
		snap_take(&e, ino, &s, 16u << 20);
		n = pmfuse_fs_write(e.fs, ino, buf, sizeof(buf), i * 4 * 4096, false, &th_cred_user);
		if (n < 0)
			break;
		assert_int_equal(n, sizeof(buf));
		free(s.data);
	}
	assert_int_equal(n, -ENOSPC);
	assert_true(i > 170);
	snap_same(&e, ino, &s, 16u << 20);
	free(s.data);
	check_space(&e);
	/* a hole in the middle of the last record needs one more record in that full leaf */
	snap_take(&e, ino, &s, 16u << 20);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     (i - 1) * 4 * 4096 + 4096, 4096, NULL, NULL), -ENOSPC);
	snap_same(&e, ino, &s, 16u << 20);
	free(s.data);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	check_space(&e);
	th_env_free(&e);
}

/* With a 3-block log one transaction may allocate or free 16384 blocks: a 72 MiB
 * preallocation takes two, and truncating the resulting extent cuts it from the top in pieces
 * (the orphan route, since it does not fit one transaction). */
static void test_budget_split_extent(void **state)
{
	struct th_env e;
	struct pmfuse_extent_budget b;
	uint64_t ino, start_free, len = 72ull << 20;
	uint8_t out[4096];
	(void)state;

	th_env_new(&e, 80u << 20, 4096, 3);
	pmfuse_extent_budget_init(e.fs, &b);
	assert_true(b.blocks < len / 4096);
	start_free = th_free_blocks(&e);
	ino = th_mkfile(&e, "big");
	/* the map's first leaf goes right after the first extent: let that be a small one, so
	 * that the preallocation's two transactions give one merged extent past the budget */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "\0", 1, 0, false, &th_cred_user), 1);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, 0, 0, len, NULL, NULL), 0);
	assert_int_equal(th_getattr(&e, ino).size, len);
	assert_int_equal(th_getattr(&e, ino).blocks512, len / 512);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "tail", 4, len - 4, false, &th_cred_user), 4);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), len - sizeof(out)),
			 sizeof(out));
	assert_memory_equal(out + sizeof(out) - 4, "tail", 4);
	for (size_t i = 0; i < sizeof(out) - 4; i++)
		assert_int_equal(out[i], 0);
	{
		struct pmfuse_blk_hdr *leaf;
		struct pmfuse_inode *ip;
		struct pmfuse_extmap m;
		struct pmfuse_iext x;

		assert_int_equal(pmfuse_inode_locate(e.fs, ino, &ip, &leaf), 0);
		pmfuse_extmap_open(&m, e.fs, ip, leaf);
		assert_int_equal(pmfuse_extent_find(&m, 1, &x), 0);
		assert_true(x.len > b.blocks);
	}
	check_space(&e);
	assert_int_equal(th_set_size(&e, ino, 4096 + 1), 0);
	assert_int_equal(th_getattr(&e, ino).blocks512, 2 * 8);
	assert_int_equal(pmfuse_btree_count(&e.fs->orphans), 0);
	check_space(&e);
	assert_int_equal(th_set_size(&e, ino, 0), 0);
	assert_int_equal(th_getattr(&e, ino).blocks512, 0);
	/* (a 3-block log is too small for the namespace's delete: the accounting must do) */
	assert_true(start_free - th_free_blocks(&e) <= 2);
	check_space(&e);
	th_env_free(&e);
}

/* Damaged extent records are -EUCLEAN on every path, never an address outside the pool. */
static void test_corruption(void **state)
{
	struct th_env e;
	struct pmfuse_blk_hdr *leaf, *node;
	struct pmfuse_inode *ip;
	struct pmfuse_extmap m;
	struct pmfuse_btree_cursor cur;
	struct pmfuse_extent *x, saved;
	struct gather g = { .e = &e };
	uint8_t buf[8192], out[7 * 4096];
	uint64_t ino;
	(void)state;

	g.out = out;
	memset(buf, 7, sizeof(buf));
	th_env_new(&e, 8u << 20, 4096, 0);
	ino = th_mkfile(&e, "bad");
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 4096, 0, false, &th_cred_user), 4096);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 4096, 3 * 4096, false, &th_cred_user),
			 4096);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 4096, 6 * 4096, false, &th_cred_user),
			 4096);
	assert_int_equal(pmfuse_inode_locate(e.fs, ino, &ip, &leaf), 0);
	pmfuse_extmap_open(&m, e.fs, ip, leaf);
	assert_int_equal(pmfuse_btree_first(&cur, &m.bt), 0);
	x = (struct pmfuse_extent *)pmfuse_btree_cursor_rec(&cur);
	node = pmfuse_volume_block(e.vol, cur.path[0].blk);
	saved = *x;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);

	const uint64_t bad_pblock[] = { 1, pmfuse_le64(e.vol->sb.sb2_block), UINT64_MAX - 1 };
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(bad_pblock) + 3; i++) {
		*x = saved;
		if (i < PMFUSE_ARRAY_SIZE(bad_pblock))
			pmfuse_set_le64(&x->pblock, bad_pblock[i]);
		else if (i == PMFUSE_ARRAY_SIZE(bad_pblock))
			pmfuse_set_le32(&x->len, 5);   /* overlaps the next record at block 3 */
		else if (i == PMFUSE_ARRAY_SIZE(bad_pblock) + 1)
			pmfuse_set_le32(&x->flags, 2);   /* unknown */
		else   /* unwritten, but the pool never got the feature */
			pmfuse_set_le32(&x->flags, PMFUSE_EXTENT_UNWRITTEN);
		pmfuse_blk_seal(node, e.bs);
		assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), 0), -EUCLEAN);
		assert_int_equal(pmfuse_fs_read(e.fs, ino, 0, sizeof(out), gather, &g), -EUCLEAN);
		assert_int_equal(pmfuse_fs_lseek(e.fs, ino, 0, SEEK_HOLE), -EUCLEAN);
		if (i != PMFUSE_ARRAY_SIZE(bad_pblock)) {
			assert_int_equal(pmfuse_fs_write(e.fs, ino, buf, 10, 0, false, &th_cred_user),
					 -EUCLEAN);
			assert_int_equal(th_set_size(&e, ino, 0), -EUCLEAN);
		}
	}
	/* repaired, everything works again */
	*x = saved;
	pmfuse_blk_seal(node, e.bs);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, out, sizeof(out), 0), sizeof(out));
	check_space(&e);
	th_env_free(&e);
}

/* A shrinking truncate of a file with more extents than one transaction may change goes the
 * orphan route and ends with the orphan list empty; so does a delete of such a file. */
static void test_truncate_many_extents(void **state)
{
	struct th_env e;
	struct pmfuse_extent_budget b;
	uint64_t ino, start_free, n;
	uint8_t blk[4096];
	(void)state;

	th_env_new(&e, 16u << 20, 4096, 8);
	pmfuse_extent_budget_init(e.fs, &b);
	start_free = th_free_blocks(&e);
	ino = th_mkfile(&e, "many");
	memset(blk, 0x5a, sizeof(blk));
	n = 4 * b.recs + 50;
	for (uint64_t i = 0; i < n; i++)
		assert_int_equal(pmfuse_fs_write(e.fs, ino, blk, 100, i * 2 * 4096, false,
						 &th_cred_user), 100);
	assert_int_equal(th_getattr(&e, ino).blocks512, n * 8);
	check_space(&e);
	assert_int_equal(th_set_size(&e, ino, 4096 + 10), 0);
	assert_int_equal(th_getattr(&e, ino).blocks512, 8);
	assert_int_equal(pmfuse_btree_count(&e.fs->orphans), 0);
	check_space(&e);
	for (uint64_t i = 0; i < n; i++)
		assert_int_equal(pmfuse_fs_write(e.fs, ino, blk, 4096, i * 2 * 4096 + 4096,
						 false, &th_cred_user), 4096);
	check_space(&e);
	th_rmfile(&e, "many", ino);
	assert_int_equal(pmfuse_btree_count(&e.fs->orphans), 0);
	check_space(&e);
	assert_int_equal(th_free_blocks(&e), start_free);
	th_env_free(&e);
}

/* ---- crashes -------------------------------------------------------------------------------- */

/*
 * At every barrier of one operation, the durable image (what a power cut at that instant
 * guarantees) is opened as a second filesystem, which recovers the log and works off the orphan
 * list, and must show the file in its old or its new state with consistent space accounting.
 */
struct crash {
	struct th_env *live;
	uint64_t ino;
	const uint8_t *old_data, *new_data;
	uint64_t old_size, new_size;
	uint64_t new_blocks;         /* blocks after the operation */
	bool append;                 /* any size in [old, new] with the new bytes is fine */
	uint64_t zero_to;            /* (append) grown to this size, the file reads zeros past EOF */
	unsigned stride;             /* check every stride-th barrier (0: every one) */
	uint8_t *image, *tmp;
	unsigned images, saw_old, saw_new, saw_mid;
};

static void crash_check(struct crash *c)
{
	struct th_env e = { 0 };
	struct pmfuse_attr a;
	ssize_t n;

	assert_int_equal(pmfuse_pool_fake_new(pmfuse_pool_size(c->live->pool), c->image,
					      &e.pool), 0);
	th_env_mount(&e);
	a = th_getattr(&e, c->ino);
	n = pmfuse_fs_pread(e.fs, c->ino, c->tmp, a.size + 1, 0);
	assert_int_equal(n, a.size);
	if (c->append) {
		assert_true(a.size >= c->old_size && a.size <= c->new_size);
		assert_memory_equal(c->tmp, c->new_data, a.size);
		if (a.size == c->old_size)
			c->saw_old++;
		else if (a.size == c->new_size)
			c->saw_new++;
		else
			c->saw_mid++;
	} else if (a.size == c->old_size) {
		assert_memory_equal(c->tmp, c->old_data, a.size);
		c->saw_old++;
	} else {
		assert_int_equal(a.size, c->new_size);
		assert_memory_equal(c->tmp, c->new_data, a.size);
		/* the open finished the trim: nothing left past EOF */
		assert_int_equal(a.blocks512, c->new_blocks * (e.bs / 512));
		c->saw_new++;
	}
	assert_int_equal(pmfuse_btree_count(&e.fs->orphans), 0);
	check_space(&e);
	th_fsck_clean(e.fs);   /* E5 among them: the last block holds zeros past EOF */
	if (c->zero_to > a.size) {
		/* and every mapped byte past EOF (preallocated blocks too): a growing truncate
		 * shows them */
		assert_int_equal(th_set_size(&e, c->ino, c->zero_to), 0);
		n = pmfuse_fs_pread(e.fs, c->ino, c->tmp, c->zero_to - a.size, a.size);
		assert_int_equal(n, c->zero_to - a.size);
		for (uint64_t i = 0; i < c->zero_to - a.size; i++)
			assert_int_equal(c->tmp[i], 0);
	}
	th_env_free(&e);
}

static bool keep_all_units(void *arg, size_t unit)
{
	(void)arg;
	(void)unit;
	return true;
}

static void crash_hook(void *arg, struct pmfuse_pool *pool, uint64_t barrier)
{
	struct crash *c = arg;

	if (c->stride > 1 && barrier % c->stride)
		return;
	pmfuse_pool_fake_crash_image(pool, c->image, NULL, NULL);
	c->images++;
	crash_check(c);
	/* and with every store in flight kept (unflushed data past EOF reaching the media) */
	if (pmfuse_pool_fake_crash_image(pool, c->image, keep_all_units, NULL)) {
		c->images++;
		crash_check(c);
	}
}

static void with_crashes(struct th_env *e, struct crash *c, void (*op)(struct th_env *e, void *arg),
			 void *arg)
{
	struct pmfuse_pool_fake_hook hook = { .barrier = crash_hook, .arg = c };

	c->live = e;
	c->image = malloc(pmfuse_pool_size(e->pool));
	c->tmp = malloc(16u << 20);
	assert_non_null(c->image);
	assert_non_null(c->tmp);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	pmfuse_pool_fake_set_hook(e->pool, &hook);
	op(e, arg);
	pmfuse_pool_fake_set_hook(e->pool, NULL);
	/* and the final state */
	pmfuse_pool_fake_crash_image(e->pool, c->image, NULL, NULL);
	crash_check(c);
	pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	free(c->image);
	free(c->tmp);
}

struct trunc_arg {
	uint64_t ino, size;
};

static void op_truncate(struct th_env *e, void *arg)
{
	struct trunc_arg *t = arg;

	assert_int_equal(th_set_size(e, t->ino, t->size), 0);
}

struct append_arg {
	uint64_t ino;
	const uint8_t *buf;
	size_t len;
};

static void op_append(struct th_env *e, void *arg)
{
	struct append_arg *w = arg;

	assert_int_equal(pmfuse_fs_write(e->fs, w->ino, w->buf, w->len, 0, true, &th_cred_user),
			 w->len);
}

static void test_crash_truncate_and_append(void **state)
{
	struct th_env e;
	struct crash c = { 0 };
	struct trunc_arg t;
	struct append_arg w;
	struct pmfuse_extent_budget b;
	uint8_t *data = calloc(4u << 20, 1), *next = calloc(4u << 20, 1);
	uint64_t ino, n, size, x, y;
	(void)state;

	assert_non_null(data);
	assert_non_null(next);
	th_env_new(&e, 8u << 20, 4096, 8);
	pmfuse_extent_budget_init(e.fs, &b);
	ino = th_mkfile(&e, "c");
	/* many extents (two blocks per record, gaps between): the orphan route */
	n = 3 * b.recs + 5;
	for (uint64_t i = 0; i < n; i++) {
		memset(data + i * 3 * 4096, (int)(i + 1), 2 * 4096);
		assert_int_equal(pmfuse_fs_write(e.fs, ino, data + i * 3 * 4096, 2 * 4096,
						 i * 3 * 4096, false, &th_cred_user), 2 * 4096);
	}
	size = (n - 1) * 3 * 4096 + 2 * 4096;
	memcpy(next, data, size);
	t.ino = ino;
	t.size = 4 * 4096 + 123;     /* inside the second record's second block */
	memset(next + t.size, 0, size - t.size);
	c.ino = ino;
	c.old_data = data;
	c.new_data = next;
	c.old_size = size;
	c.new_size = t.size;
	c.new_blocks = 2 + 2;
	with_crashes(&e, &c, op_truncate, &t);
	printf("# truncate: %u crash images, %u old, %u new\n", c.images, c.saw_old, c.saw_new);
	assert_true(c.saw_old > 0 && c.saw_new > 0);

	/* scatter the free space (two files written in turns until the pool is almost full, then
	 * one deleted), so that an append takes one-block extents, three per transaction (the
	 * small log's budget): many transactions, each a consistent prefix */
	x = th_mkfile(&e, "x");
	y = th_mkfile(&e, "y");
	for (uint64_t i = 0; th_free_blocks(&e) > pmfuse_data_reserve(e.fs) + 4; i++) {
		assert_int_equal(pmfuse_fs_write(e.fs, x, data, 4096, i * 4096, false, &th_cred_user),
				 4096);
		assert_int_equal(pmfuse_fs_write(e.fs, y, data, 4096, i * 4096, false, &th_cred_user),
				 4096);
	}
	th_rmfile(&e, "y", y);
	memcpy(data, next, t.size);
	for (size_t i = t.size; i < (1u << 20); i++)
		next[i] = (uint8_t)(i * 13 + 1);
	w.ino = ino;
	w.buf = next + t.size;
	w.len = (1u << 20) - t.size;
	memset(&c, 0, sizeof(c));
	c.ino = ino;
	c.old_data = data;
	c.new_data = next;
	c.old_size = t.size;
	c.new_size = 1u << 20;
	c.append = true;
	c.zero_to = 1u << 20;
	c.stride = 5;
	with_crashes(&e, &c, op_append, &w);
	printf("# append: %u crash images, %u old, %u partial, %u new\n", c.images, c.saw_old,
	       c.saw_mid, c.saw_new);
	assert_true(c.saw_old > 0 && c.saw_mid > 10 && c.saw_new > 0);

	/* an append into blocks preallocated past EOF (KEEP_SIZE), from a partly filled last
	 * block on: written in place, so every crash must show a prefix and zeros past EOF */
	th_rmfile(&e, "x", x);
	size = (1u << 20) + 1000;
	w.buf = next + (1u << 20);
	w.len = 1000;
	op_append(&e, &w);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_KEEP_SIZE, size, 40 * 4096,
					     NULL, NULL), 0);
	memcpy(data, next, size);
	for (size_t i = size; i < size + 30 * 4096 + 77; i++)
		next[i] = (uint8_t)(i * 7 + 3);
	w.buf = next + size;
	w.len = 30 * 4096 + 77;
	memset(&c, 0, sizeof(c));
	c.ino = ino;
	c.old_data = data;
	c.new_data = next;
	c.old_size = size;
	c.new_size = size + w.len;
	c.append = true;
	c.zero_to = size + 40 * 4096;
	with_crashes(&e, &c, op_append, &w);
	printf("# append into preallocated blocks: %u crash images, %u old, %u partial, %u new\n",
	       c.images, c.saw_old, c.saw_mid, c.saw_new);
	/* one transaction, its bytes past EOF logged as zeros: old or new, nothing between */
	assert_true(c.saw_old > 0 && c.saw_mid == 0 && c.saw_new > 0);
	th_env_free(&e);
	free(data);
	free(next);
}

/* Every unwritten block of ino as (file block -> pool block) pairs, in v (at most max). */
static unsigned unwritten_of(struct th_env *e, uint64_t ino, uint64_t *fb, uint64_t *pb,
			     unsigned max)
{
	struct pmfuse_extent_info x[64];
	uint64_t next;
	unsigned k = 0;
	int n = pmfuse_fs_get_extents(e->fs, ino, 0, x, PMFUSE_ARRAY_SIZE(x), &next);

	assert_true(n >= 0 && next == UINT64_MAX);
	for (int i = 0; i < n; i++)
		for (uint64_t b = 0; x[i].unwritten && b < x[i].length / e->bs && k < max; b++) {
			fb[k] = x[i].logical / e->bs + b;
			pb[k] = x[i].physical / e->bs + b;
			k++;
		}
	return k;
}

/*
 * Unwritten extents, looked at in the pool: preallocation stores nothing into its blocks (their
 * old bytes, a deleted file's, stay there and never show); a write converts exactly the blocks
 * it touches and zeroes the rest of them; the superblock gets the feature with the first
 * preallocation; ZERO_RANGE over shared unwritten blocks takes no space.
 */
static void test_unwritten(void **state)
{
	struct th_env e;
	uint64_t old, ino, cl, fb[64], pb[64], free_blocks;
	uint8_t *before, *buf = malloc(64 * 4096);
	const uint8_t *pool;
	unsigned n;
	(void)state;

	assert_non_null(buf);
	th_env_new(&e, 8u << 20, 4096, 0);
	pool = pmfuse_pool_base(e.pool);
	before = malloc(pmfuse_pool_size(e.pool));
	assert_non_null(before);
	/* a deleted file leaves its bytes in free blocks */
	old = th_mkfile(&e, "old");
	memset(buf, 0xab, 64 * 4096);
	assert_int_equal(pmfuse_fs_write(e.fs, old, buf, 64 * 4096, 0, false, &th_cred_user),
			 64 * 4096);
	th_rmfile(&e, "old", old);
	assert_false(pmfuse_le64(e.vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN);

	ino = th_mkfile(&e, "f");
	memcpy(before, pool, pmfuse_pool_size(e.pool));
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, 0, 0, 64 * 4096, NULL, NULL), 0);
	assert_true(pmfuse_le64(e.vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN);
	n = unwritten_of(&e, ino, fb, pb, 64);
	assert_int_equal(n, 64);
	for (unsigned i = 0; i < n; i++)   /* not one store into the preallocated blocks */
		assert_memory_equal(pool + pb[i] * 4096, before + pb[i] * 4096, 4096);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, buf, 64 * 4096, 0), 64 * 4096);
	for (size_t i = 0; i < 64 * 4096; i++)
		assert_int_equal(buf[i], 0);

	/* 10 bytes in block 5: block 5 is converted and zeroed around them, 4 and 6 untouched */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "0123456789", 10, 5 * 4096 + 100, false,
					 &th_cred_user), 10);
	n = unwritten_of(&e, ino, fb, pb, 64);
	assert_int_equal(n, 63);
	for (unsigned i = 0; i < n; i++) {
		assert_true(fb[i] != 5);
		assert_memory_equal(pool + pb[i] * 4096, before + pb[i] * 4096, 4096);
	}
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, buf, 3 * 4096, 4 * 4096), 3 * 4096);
	for (size_t i = 0; i < 3 * 4096; i++)
		assert_int_equal(buf[i], i >= 4096 + 100 && i < 4096 + 110 ?
				 (uint8_t)('0' + i - 4096 - 100) : 0);

	/* a clone shares the unwritten blocks; ZERO_RANGE over them takes no block */
	cl = th_mkfile(&e, "clone");
	assert_int_equal(pmfuse_fs_clone_range(e.fs, ino, 0, 0, cl, 0), 0);
	assert_int_equal(unwritten_of(&e, cl, fb, pb, 64), 63);
	free_blocks = th_free_blocks(&e);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, cl, FALLOC_FL_ZERO_RANGE, 6 * 4096, 50 * 4096,
					     NULL, NULL),
			 0);
	assert_int_equal(th_free_blocks(&e), free_blocks);
	/* over written shared blocks: new unwritten ones (one block here), nothing stored */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, cl, FALLOC_FL_ZERO_RANGE, 5 * 4096, 4096,
					     NULL, NULL), 0);
	assert_int_equal(unwritten_of(&e, cl, fb, pb, 64), 64);
	assert_int_equal(th_free_blocks(&e), free_blocks - 1);
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, buf, 10, 5 * 4096 + 100), 10);
	assert_memory_equal(buf, "0123456789", 10);
	th_fsck_clean(e.fs);
	assert_int_equal(pmfuse_fs_check_space(e.fs, NULL, NULL, 0), 0);   /* shared blocks */
	th_rmfile(&e, "clone", cl);
	th_rmfile(&e, "f", ino);
	check_space(&e);
	th_env_free(&e);
	free(before);
	free(buf);
}

/* A file's map as stored: how many records, inline or in a tree (then levels > 0). */
struct shape {
	unsigned recs;
	bool inl;
	unsigned levels;
};

static struct shape shape_of(struct th_env *e, uint64_t ino)
{
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct pmfuse_btree bt;
	struct shape sh = { 0 };

	assert_int_equal(pmfuse_inode_locate(e->fs, ino, &ip, &leaf), 0);
	sh.inl = pmfuse_le32(ip->flags) & PMFUSE_INODE_INLINE_MAP;
	sh.levels = pmfuse_le16(ip->map.levels);
	if (sh.inl) {
		assert_int_equal(sh.levels, 0);
		while (sh.recs < PMFUSE_INLINE_EXTENTS && pmfuse_le32(ip->inline_map[sh.recs].len))
			sh.recs++;
		assert_true(sh.recs >= 1);
	} else {
		static const struct pmfuse_extent zero[PMFUSE_INLINE_EXTENTS];

		assert_memory_equal(ip->inline_map, zero, sizeof(zero));
		pmfuse_inode_tree(e->fs, ip, leaf, &ip->map, &pmfuse_extent_ops, &bt);
		sh.recs = (unsigned)pmfuse_btree_count(&bt);
	}
	return sh;
}

#define SHAPE(e, ino, n, inline_, lv) do {                                        \
		struct shape sh_ = shape_of(e, ino);                              \
		assert_int_equal(sh_.recs, n);                                    \
		assert_int_equal(sh_.inl, inline_);                               \
		assert_int_equal(sh_.levels, lv);                                 \
	} while (0)

static void wr_blk(struct th_env *e, uint64_t ino, uint64_t fb, uint8_t v, size_t len)
{
	uint8_t buf[4096];

	memset(buf, v, sizeof(buf));
	assert_int_equal(pmfuse_fs_write(e->fs, ino, buf, len, fb * 4096, false, &th_cred_user),
			 (ssize_t)len);
}

static void rd_expect(struct th_env *e, uint64_t ino, uint64_t fb, uint8_t v)
{
	uint8_t buf[4096];

	assert_int_equal(pmfuse_fs_pread(e->fs, ino, buf, 4096, fb * 4096), 4096);
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], v);
}

/*
 * Inline maps at every boundary: an empty map, the first inline extent (one data block and no
 * map block), the last one that fits, the first that needs a tree (one leaf more), truncating
 * back (above the capacity a tree stays, at one record it goes inline and its leaf is freed),
 * hole punching that splits an inline extent, unwritten extents inline, clones and CoW of
 * inline-map files, and a malformed inline map refused by reads and reported by fsck.
 */
static void test_inline_map(void **state)
{
	struct th_env e;
	struct pmfuse_blk_hdr *leaf;
	struct pmfuse_inode *ip;
	struct th_fsck fk;
	uint64_t ino, cl, f0;
	uint8_t buf[4096];
	(void)state;

	th_env_new(&e, 8u << 20, 4096, 0);
	ino = th_mkfile(&e, "f");
	SHAPE(&e, ino, 0, false, 0);
	assert_false(pmfuse_le64(e.vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_INLINE_MAP);

	/* 1 byte: one data block, nothing else; the feature is set with the first inline map */
	f0 = th_free_blocks(&e);
	wr_blk(&e, ino, 0, 'a', 1);
	assert_int_equal(f0 - th_free_blocks(&e), 1);
	SHAPE(&e, ino, 1, true, 0);
	assert_true(pmfuse_le64(e.vol->sb.incompat) & PMFUSE_FEATURE_INCOMPAT_INLINE_MAP);
	assert_int_equal(th_getattr(&e, ino).blocks512, 8);
	/* the rest of the block: still one block, one extent */
	wr_blk(&e, ino, 0, 'a', 4096);
	assert_int_equal(f0 - th_free_blocks(&e), 1);
	SHAPE(&e, ino, 1, true, 0);
	th_fsck_clean(e.fs);

	/* the last extent that fits inline: block 2 (a hole at 1) */
	wr_blk(&e, ino, 2, 'c', 4096);
	assert_int_equal(f0 - th_free_blocks(&e), 2);
	SHAPE(&e, ino, 2, true, 0);
	/* the first that does not: a tree with one leaf */
	wr_blk(&e, ino, 4, 'e', 4096);
	assert_int_equal(f0 - th_free_blocks(&e), 4);
	SHAPE(&e, ino, 3, false, 1);
	rd_expect(&e, ino, 0, 'a');
	rd_expect(&e, ino, 1, 0);
	rd_expect(&e, ino, 2, 'c');
	rd_expect(&e, ino, 4, 'e');
	th_fsck_clean(e.fs);

	/* truncate back: at the capacity the tree stays, below it the map goes inline */
	assert_int_equal(th_set_size(&e, ino, 3 * 4096), 0);
	SHAPE(&e, ino, 2, false, 1);
	assert_int_equal(f0 - th_free_blocks(&e), 3);
	assert_int_equal(th_set_size(&e, ino, 4096), 0);
	SHAPE(&e, ino, 1, true, 0);
	assert_int_equal(f0 - th_free_blocks(&e), 1);   /* the leaf went with the tree */
	rd_expect(&e, ino, 0, 'a');
	th_fsck_clean(e.fs);
	/* to zero: the empty map, flag cleared */
	assert_int_equal(th_set_size(&e, ino, 0), 0);
	SHAPE(&e, ino, 0, false, 0);
	assert_int_equal(th_free_blocks(&e), f0);
	th_fsck_clean(e.fs);

	/* punching holes into one inline extent: case D splits it (2 records), a second punch
	 * needs the tree; filling the holes again keeps the tree (no unmap) */
	for (uint64_t b = 0; b < 5; b++)
		wr_blk(&e, ino, b, (uint8_t)('0' + b), 4096);
	SHAPE(&e, ino, 1, true, 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     1 * 4096, 4096, NULL, NULL), 0);
	SHAPE(&e, ino, 2, true, 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     3 * 4096, 4096, NULL, NULL), 0);
	SHAPE(&e, ino, 3, false, 1);
	for (uint64_t b = 0; b < 5; b++)
		rd_expect(&e, ino, b, b == 1 || b == 3 ? 0 : (uint8_t)('0' + b));
	th_fsck_clean(e.fs);
	/* punching the ends leaves one record (block 2): inline again */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     0, 2 * 4096, NULL, NULL), 0);
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					     3 * 4096, 2 * 4096, NULL, NULL), 0);
	SHAPE(&e, ino, 1, true, 0);
	rd_expect(&e, ino, 2, '2');
	th_fsck_clean(e.fs);
	assert_int_equal(th_set_size(&e, ino, 0), 0);

	/* unwritten inline: preallocate two blocks, write one byte into the second */
	assert_int_equal(pmfuse_fs_fallocate(e.fs, ino, 0, 0, 2 * 4096, NULL, NULL), 0);
	SHAPE(&e, ino, 1, true, 0);
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "x", 1, 4096 + 7, false, &th_cred_user), 1);
	SHAPE(&e, ino, 2, true, 0);   /* [0] unwritten, [1] written */
	assert_int_equal(pmfuse_fs_pread(e.fs, ino, buf, 4096, 4096), 4096);
	for (size_t i = 0; i < 4096; i++)
		assert_int_equal(buf[i], i == 7 ? 'x' : 0);
	rd_expect(&e, ino, 0, 0);
	/* writing the first converts it, and the two merge into one record */
	wr_blk(&e, ino, 0, 'q', 4096);
	SHAPE(&e, ino, 1, true, 0);
	th_fsck_clean(e.fs);

	/* a clone shares the blocks (taking at most the refcount tree's first leaf), inline on
	 * both sides; copy-on-write in the clone leaves the original alone */
	cl = th_mkfile(&e, "cl");
	f0 = th_free_blocks(&e);
	assert_int_equal(pmfuse_fs_clone_range(e.fs, ino, 0, 0, cl, 0), 0);
	assert_true(f0 - th_free_blocks(&e) <= 1);
	SHAPE(&e, cl, 1, true, 0);
	assert_int_equal(pmfuse_fs_check_space(e.fs, NULL, NULL, 0), 0);
	wr_blk(&e, cl, 4, 'z', 4096);   /* a second record (a hole before it) */
	SHAPE(&e, cl, 2, true, 0);
	wr_blk(&e, cl, 0, 'w', 10);     /* CoW of the shared blocks */
	{
		struct shape sh = shape_of(&e, cl);

		assert_true(sh.recs >= 2);
		assert_int_equal(sh.inl, sh.recs <= PMFUSE_INLINE_EXTENTS);
	}
	SHAPE(&e, ino, 1, true, 0);
	rd_expect(&e, ino, 0, 'q');
	rd_expect(&e, cl, 4, 'z');
	assert_int_equal(pmfuse_fs_pread(e.fs, cl, buf, 4096, 0), 4096);
	assert_memory_equal(buf, "wwwwwwwwwwqq", 12);
	assert_int_equal(pmfuse_fs_check_space(e.fs, NULL, NULL, 0), 0);
	th_fsck_clean(e.fs);
	th_rmfile(&e, "cl", cl);

	/* a malformed inline map: reads refuse it, fsck names it */
	assert_int_equal(pmfuse_fs_write(e.fs, ino, "tail", 4, 6 * 4096, false, &th_cred_user), 4);
	SHAPE(&e, ino, 2, true, 0);
	assert_int_equal(pmfuse_inode_locate(e.fs, ino, &ip, &leaf), 0);
	{
		struct pmfuse_extent saved[PMFUSE_INLINE_EXTENTS];

		memcpy(saved, ip->inline_map, sizeof(saved));
		ip->inline_map[0] = saved[1];           /* out of order */
		ip->inline_map[1] = saved[0];
		pmfuse_blk_seal(leaf, e.fs->bs);
		pmfuse_log_set_target(PMFUSE_LOG_QUIET);
		assert_int_equal(pmfuse_fs_pread(e.fs, ino, buf, 4096, 0), -EUCLEAN);
		th_fsck_run(e.fs, &fk);
		assert_true(th_fsck_has(&fk, "overlaps the one before"));
		memcpy(ip->inline_map, saved, sizeof(saved));
		memset(&ip->inline_map[1], 0, sizeof(ip->inline_map[1]));   /* blocks disagree */
		pmfuse_blk_seal(leaf, e.fs->bs);
		th_fsck_run(e.fs, &fk);
		assert_true(th_fsck_has(&fk, "its extents map 2 blocks, the inode says 3"));
		memcpy(ip->inline_map, saved, sizeof(saved));
		pmfuse_set_le32(&ip->flags, pmfuse_le32(ip->flags) & ~PMFUSE_INODE_INLINE_MAP);
		pmfuse_blk_seal(leaf, e.fs->bs);      /* records without the flag */
		assert_int_equal(pmfuse_fs_pread(e.fs, ino, buf, 4096, 0), -EUCLEAN);
		pmfuse_set_le32(&ip->flags, pmfuse_le32(ip->flags) | PMFUSE_INODE_INLINE_MAP);
		pmfuse_blk_seal(leaf, e.fs->bs);
		pmfuse_log_set_target(PMFUSE_LOG_STDERR);
	}
	th_fsck_clean(e.fs);
	th_rmfile(&e, "f", ino);
	check_space(&e);
	th_env_free(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basics),
		cmocka_unit_test(test_read_iov),
		cmocka_unit_test(test_sparse),
		cmocka_unit_test(test_enospc_write),
		cmocka_unit_test(test_enospc_fallocate),
		cmocka_unit_test(test_truncate_many_extents),
		cmocka_unit_test(test_full_pool),
		cmocka_unit_test(test_log_full),
		cmocka_unit_test(test_budget_split_extent),
		cmocka_unit_test(test_corruption),
		cmocka_unit_test(test_unwritten),
		cmocka_unit_test(test_inline_map),
		cmocka_unit_test(test_crash_truncate_and_append),
		cmocka_unit_test(test_model_verified),
		cmocka_unit_test(test_model_tiny_log),
		cmocka_unit_test(test_model_16k),
		cmocka_unit_test(test_model_4k),
	};
	th_seed();
	if (getenv("PMFUSE_TEST_FILTER"))
		cmocka_set_test_filter(getenv("PMFUSE_TEST_FILTER"));
	return cmocka_run_group_tests_name("data", tests, NULL, NULL);
}
