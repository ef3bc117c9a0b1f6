/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Builds the pool bench/fsck measures: formats POOL (an existing file of the wanted size) and,
 * through the filesystem library (src/fs, the same calls and transactions the daemon makes for
 * these requests, without the FUSE round trips that would make building it take minutes),
 * creates FILES regular files of 1..4 blocks of data in directories of 1,000, and CLONES
 * reflinked copies of some of them (each a whole-file clone into a new file).
 *
 *     fsck_pool POOL FILES CLONES
 *
 * Prints how long building took. PMEM2_FORCE_GRANULARITY=CACHE_LINE is what bench/fsck sets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fs/fs.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "util/util.h"

#define PER_DIR 1000u

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "fsck_pool: %s: %s\n", what, strerror(rc < 0 ? -rc : rc));
	exit(1);
}

int main(int argc, char **argv)
{
	static const struct pmfuse_cred cred = { .uid = 0, .gid = 0, .pid = 1, .umask = 022 };
	struct pmfuse_mkfs_opts mo = { 0 };
	struct pmfuse_pool *pool;
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	struct pmfuse_attr a;
	uint64_t files, clones, dir = 0, *inos, seed = 12345;
	static uint8_t buf[4 * 4096];
	char name[64], msg[256];
	double t0 = now();
	int rc;

	if (argc != 4) {
		fprintf(stderr, "usage: fsck_pool POOL FILES CLONES\n");
		return 2;
	}
	files = strtoull(argv[2], NULL, 0);
	clones = strtoull(argv[3], NULL, 0);
	if (clones > files)
		clones = files;
	inos = calloc(files ? files : 1, sizeof(*inos));
	if (!inos)
		die("memory", ENOMEM);
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	if ((rc = pmfuse_pool_open(argv[1], 0, &pool)))
		die(argv[1], rc);
	if ((rc = pmfuse_mkfs(pool, &mo)))
		die("mkfs", rc);
	if ((rc = pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg))))
		die("volume open", rc);
	if ((rc = pmfuse_fs_open(vol, NULL, &fs)))
		die("fs open", rc);
	for (uint64_t i = 0; i < files; i++) {
		size_t len = 4096 * (1 + i % 4) - (i % 7) * 100;

		if (i % PER_DIR == 0) {
			snprintf(name, sizeof(name), "d%llu", (unsigned long long)(i / PER_DIR));
			if ((rc = pmfuse_fs_mkdir(fs, PMFUSE_ROOT_INO, name, S_IFDIR | 0755, &cred, &a)))
				die("mkdir", rc);
			dir = a.ino;
			pmfuse_fs_forget(fs, a.ino, 1);
		}
		snprintf(name, sizeof(name), "file-%llu", (unsigned long long)i);
		if ((rc = pmfuse_fs_mknod(fs, dir, name, S_IFREG | 0644, 0, &cred, &a)))
			die("mknod", rc);
		inos[i] = a.ino;
		pmfuse_fs_forget(fs, a.ino, 1);
		for (size_t k = 0; k < len; k += 8) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			memcpy(buf + k, &seed, 8);
		}
		if (pmfuse_fs_write(fs, inos[i], buf, len, 0, false, &cred) != (ssize_t)len)
			die("write", EIO);
	}
	for (uint64_t c = 0; c < clones; c++) {
		uint64_t src = inos[c * (files / clones)];

		snprintf(name, sizeof(name), "clone-%llu", (unsigned long long)c);
		if ((rc = pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, name, S_IFREG | 0644, 0, &cred, &a)))
			die("mknod", rc);
		pmfuse_fs_forget(fs, a.ino, 1);
		if ((rc = pmfuse_fs_clone_range(fs, src, 0, 0, a.ino, 0)))
			die("clone", rc);
	}
	pmfuse_fs_close(fs);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
	printf("built %llu files, %llu clones in %.1f s\n", (unsigned long long)files,
	       (unsigned long long)clones, now() - t0);
	free(inos);
	return 0;
}
