/* SPDX-License-Identifier: BSD-3-Clause */
/* A filesystem on a fake pool for the fs-layer unit tests (data, reflink): see harness_fs.h. */
#include "harness_fs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "meta/alloc.h"
#include "fs/fs_internal.h"
#include "util/util.h"

const struct pmfuse_cred th_cred_user = { .uid = 1000, .gid = 1000, .pid = 1, .umask = 022 };
const struct pmfuse_cred th_cred_root = { .uid = 0, .gid = 0, .pid = 1, .umask = 022 };

void th_env_mount(struct th_env *e)
{
	char msg[256] = "";
	int rc = pmfuse_volume_open(e->pool, 0, &e->vol, msg, sizeof(msg));

	if (rc)
		fprintf(stderr, "volume_open: %d %s\n", rc, msg);
	assert_int_equal(rc, 0);
	assert_int_equal(pmfuse_fs_open(e->vol, NULL, &e->fs), 0);
	e->bs = e->vol->block_size;
}

void th_env_umount(struct th_env *e)
{
	pmfuse_fs_close(e->fs);
	pmfuse_volume_close(e->vol);
	e->fs = NULL;
	e->vol = NULL;
}

void th_env_new(struct th_env *e, size_t size, uint32_t bs, uint64_t log_blocks)
{
	struct pmfuse_mkfs_opts opts = { .block_size = bs, .log_blocks = log_blocks };

	memset(e, 0, sizeof(*e));
	assert_int_equal(pmfuse_pool_fake_new(size, NULL, &e->pool), 0);
	assert_int_equal(pmfuse_mkfs(e->pool, &opts), 0);
	th_env_mount(e);
}

void th_env_free(struct th_env *e)
{
	th_env_umount(e);
	pmfuse_pool_close(e->pool);
}

void th_env_reopen(struct th_env *e)
{
	th_env_umount(e);
	th_env_mount(e);
}

uint64_t th_free_blocks(struct th_env *e)
{
	return pmfuse_alloc_free_blocks(e->fs->alloc);
}

uint64_t th_mkfile(struct th_env *e, const char *name)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_mknod(e->fs, PMFUSE_ROOT_INO, name, S_IFREG | 0644, 0,
					 &th_cred_user, &a), 0);
	return a.ino;
}

void th_rmfile(struct th_env *e, const char *name, uint64_t ino)
{
	assert_int_equal(pmfuse_fs_unlink(e->fs, PMFUSE_ROOT_INO, name), 0);
	pmfuse_fs_forget(e->fs, ino, 1);
}

struct pmfuse_attr th_getattr(struct th_env *e, uint64_t ino)
{
	struct pmfuse_attr a;

	assert_int_equal(pmfuse_fs_getattr(e->fs, ino, &a), 0);
	return a;
}

int th_set_size(struct th_env *e, uint64_t ino, uint64_t size)
{
	struct pmfuse_setattr sa = { .size = size };
	struct pmfuse_attr a;

	return pmfuse_fs_setattr(e->fs, ino, &sa, PMFUSE_SET_SIZE, &th_cred_user, &a);
}

void th_fill_random(struct th_rng *r, uint8_t *buf, size_t len)
{
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		uint64_t v = th_rng_next(r);
		memcpy(buf + i, &v, 8);
	}
	if (i < len) {
		uint64_t v = th_rng_next(r);
		memcpy(buf + i, &v, len - i);
	}
}

static void fsck_problem(void *arg, const char *msg)
{
	struct th_fsck *f = arg;

	if (f->kept < TH_FSCK_KEEP)
		snprintf(f->lines[f->kept++], sizeof(f->lines[0]), "%s", msg);
	f->problems++;
}

void th_fsck_run(struct pmfuse_fs *fs, struct th_fsck *out)
{
	struct pmfuse_check_ops ops = { .problem = fsck_problem, .arg = out };
	int rc;

	memset(out, 0, sizeof(*out));
	rc = pmfuse_fs_check_bitmap(fs, &ops, &out->res);
	assert_true(rc == 0 || rc == -EUCLEAN);
	rc = pmfuse_fs_check_trees(fs, &ops, &out->res);
	assert_true(rc == 0 || rc == -EUCLEAN);
	rc = pmfuse_fs_check_blocks(fs, &ops, &out->res);
	assert_true(rc == 0 || rc == -EUCLEAN || rc == -EAGAIN);
	rc = pmfuse_fs_check_namespace(fs, &ops, &out->res);
	assert_true(rc == 0 || rc == -EUCLEAN || rc == -EAGAIN);
	assert_int_equal(out->problems, out->res.problems);
}

bool th_fsck_has(const struct th_fsck *f, const char *needle)
{
	for (unsigned i = 0; i < f->kept; i++)
		if (strstr(f->lines[i], needle))
			return true;
	return false;
}

void th_fsck_clean(struct pmfuse_fs *fs)
{
	static struct th_fsck f;

	th_fsck_run(fs, &f);
	for (unsigned i = 0; i < f.kept; i++)
		fprintf(stderr, "fsck: %s\n", f.lines[i]);
	assert_int_equal(f.problems, 0);
	assert_true(f.res.bitmap_ok && f.res.trees_ok && f.res.blocks_checked);
	assert_true(f.res.namespace_checked || f.res.no_root);
}
