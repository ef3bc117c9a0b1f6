/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A mounted filesystem on a fake pool, for the unit tests of the fs layer: format, open, reopen
 * (close and open the volume and fs again on the same pool, as after an unmount), and small
 * helpers that fail the test on error.
 */
#ifndef PMFUSE_TEST_HARNESS_FS_H
#define PMFUSE_TEST_HARNESS_FS_H

#include "harness.h"
#include "fs/check.h"
#include "fs/fs.h"

struct th_env {
	struct pmfuse_pool *pool;
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	uint32_t bs;
};

extern const struct pmfuse_cred th_cred_user;   /* uid/gid 1000, umask 022 */
extern const struct pmfuse_cred th_cred_root;

/* A fresh fake pool of size bytes, formatted (block size bs, log_blocks; 0 = defaults), mounted. */
void th_env_new(struct th_env *e, size_t size, uint32_t bs, uint64_t log_blocks);
void th_env_free(struct th_env *e);
void th_env_mount(struct th_env *e);
void th_env_umount(struct th_env *e);
void th_env_reopen(struct th_env *e);
uint64_t th_free_blocks(struct th_env *e);
/* A regular file in the root directory owned by th_cred_user; its inode number. */
uint64_t th_mkfile(struct th_env *e, const char *name);
/* Unlinks it and drops the reference th_mkfile took. */
void th_rmfile(struct th_env *e, const char *name, uint64_t ino);
struct pmfuse_attr th_getattr(struct th_env *e, uint64_t ino);
int th_set_size(struct th_env *e, uint64_t ino, uint64_t size);
void th_fill_random(struct th_rng *r, uint8_t *buf, size_t len);

/* fsck's checks (fs/check.h) over a whole filesystem, in fsck's order (bitmap, trees, block
 * accounting when those passed, namespace when the inode table can be walked): the problem
 * lines they reported (the first TH_FSCK_KEEP of them) and how many. */
#define TH_FSCK_KEEP 16
struct th_fsck {
	char lines[TH_FSCK_KEEP][512];
	unsigned kept;
	uint64_t problems;
	struct pmfuse_check_result res;
};
void th_fsck_run(struct pmfuse_fs *fs, struct th_fsck *out);
/* Whether some kept line contains needle. */
bool th_fsck_has(const struct th_fsck *f, const char *needle);
/* Fails the test, printing the lines, when the checks find any problem. */
void th_fsck_clean(struct pmfuse_fs *fs);

#endif
