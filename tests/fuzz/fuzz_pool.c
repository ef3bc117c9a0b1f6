/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * libFuzzer target: open, check and walk a damaged pool.
 *
 * A small pool is made once (mkfs, then a namespace with every kind of metadata: directories,
 * files with data, a hole, a clone and unwritten extents, a symlink, a hard link, small and
 * block-sized xattrs, a file unlinked while referenced, so an orphan). Each input damages a copy of
 * that image and the library then does everything a mount or fsck.pmfuse would do with it:
 * open the volume read-only and run every check of fs/check.h, walk the tree through the fs
 * API (readdir, lookup, getattr, read, readlink, xattrs), then open it read-write (recovery,
 * orphan processing) and make a file. Bad input must come back as an error; nothing may crash,
 * read or write out of bounds, or leak (the target is built with ASan and UBSan).
 *
 * Input: a flags byte, then patches until the input ends: 4 bytes of offset (little-endian,
 * taken modulo the image size), 1 byte of length n, n bytes to store there. Flag bit 0 reseals
 * what the patches touched (block crcs, superblock crcs), so that damage also reaches the
 * checks behind the checksums instead of stopping at them.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/check.h"
#include "fs/fs.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "pmfuse/format.h"
#include "tx/tx.h"
#include "util/util.h"

#define POOL_SIZE (2u << 20)
#define BS 4096u
#define WALK_MAX 256u                /* inodes visited per input */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *in, size_t len);

static uint8_t *template;            /* the clean image */
static uint8_t *work;                /* the damaged copy */
static struct pmfuse_pool *pool;     /* reset to each image in turn (no map per input) */

static void must(int rc, const char *what)
{
	if (rc < 0) {
		fprintf(stderr, "fuzz_pool: making the template: %s: %s\n", what, strerror(-rc));
		abort();
	}
}

static void make_template(void)
{
	static const struct pmfuse_cred root = { .uid = 0, .gid = 0, .umask = 022 };
	struct pmfuse_mkfs_opts mo = { .block_size = BS };
	struct pmfuse_fs_opts fo = { 0 };
	struct pmfuse_pool *tp;
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	struct pmfuse_attr d, f, g, a;
	static uint8_t data[3 * BS + 100], big[BS];
	char msg[256];

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7 + 1);
	memset(big, 'x', sizeof(big));
	must(pmfuse_pool_fake_new(POOL_SIZE, NULL, &tp), "pool");
	must(pmfuse_mkfs(tp, &mo), "mkfs");
	must(pmfuse_volume_open(tp, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg)), "volume");
	must(pmfuse_fs_open(vol, &fo, &fs), "fs");
	must(pmfuse_fs_mkdir(fs, PMFUSE_ROOT_INO, "dir", 0755, &root, &d), "mkdir");
	must(pmfuse_fs_mknod(fs, d.ino, "file", S_IFREG | 0644, 0, &root, &f), "file");
	must((int)pmfuse_fs_write(fs, f.ino, data, sizeof(data), 0, false, &root), "write");
	must((int)pmfuse_fs_write(fs, f.ino, data, 100, 40 * BS, false, &root), "write past a hole");
	must(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, "clone", S_IFREG | 0600, 0, &root, &g), "clone");
	must(pmfuse_fs_clone_range(fs, f.ino, 0, 0, g.ino, 0), "clone_range");
	must(pmfuse_fs_fallocate(fs, g.ino, 0, 60 * BS, 8 * BS, NULL, NULL),
	     "fallocate (unwritten)");
	must(pmfuse_fs_setxattr(fs, f.ino, "user.small", "v", 1, 0), "xattr");
	must(pmfuse_fs_setxattr(fs, g.ino, "user.big", big, sizeof(big), 0), "big xattr");
	must(pmfuse_fs_symlink(fs, d.ino, "link", "../clone", &root, &a), "symlink");
	must(pmfuse_fs_link(fs, f.ino, PMFUSE_ROOT_INO, "hard", &a), "link");
	/* longer than PMFUSE_SHORT_NAME_MAX: the long-entry tree beside the short one */
	must(pmfuse_fs_link(fs, f.ino, d.ino,
			    "a-second-hard-link-whose-name-is-too-long-for-the-short-tree", &a),
	     "long link");
	must(pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, "fifo", S_IFIFO | 0644, 0, &root, &a), "fifo");
	must(pmfuse_fs_mknod(fs, d.ino, "orphan", S_IFREG | 0644, 0, &root, &a), "orphan");
	must((int)pmfuse_fs_write(fs, a.ino, data, BS, 0, false, &root), "orphan data");
	must(pmfuse_fs_unlink(fs, d.ino, "orphan"), "unlink");   /* still looked up: an orphan */
	/* no forgets and no close of the fs: the image keeps the orphan, as after a crash */
	pmfuse_pool_drain(tp);
	template = malloc(POOL_SIZE);
	work = malloc(POOL_SIZE);
	if (!template || !work)
		abort();
	memcpy(template, pmfuse_pool_fake_media(tp), POOL_SIZE);
	pmfuse_fs_close(fs);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(tp);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	make_template();
	if (pmfuse_pool_fake_new(POOL_SIZE, template, &pool))
		abort();
	return 0;
}

/* Makes the crc of every block the patches touched right again. */
static void reseal(const uint8_t *touched)
{
	for (uint32_t b = 0; b < POOL_SIZE / BS; b++) {
		struct pmfuse_blk_hdr *h = (void *)(work + (size_t)b * BS);
		uint32_t magic = pmfuse_le32(h->magic);

		if (!touched[b])
			continue;
		if (magic == PMFUSE_BLK_STATE || magic == PMFUSE_BLK_BITMAP ||
		    magic == PMFUSE_BLK_LOG || magic == PMFUSE_BLK_BTREE) {
			pmfuse_blk_seal(h, BS);
		} else if (!memcmp(work + (size_t)b * BS, "PMFUSESB", 8)) {   /* PMFUSE_SB_MAGIC, le64 */
			struct pmfuse_sb *sb = (void *)(work + (size_t)b * BS);

			pmfuse_set_le32(&sb->crc, 0);
			pmfuse_set_le32(&sb->crc, pmfuse_crc32c(0, sb, sizeof(*sb)));
		}
	}
}

static void damage(const uint8_t *in, size_t len)
{
	static uint8_t touched[POOL_SIZE / BS];
	uint8_t flags = len ? in[0] : 0;
	size_t i = 1;

	memcpy(work, template, POOL_SIZE);
	memset(touched, 0, sizeof(touched));
	while (i + 5 <= len) {
		uint32_t off = ((uint32_t)in[i] | (uint32_t)in[i + 1] << 8 |
				(uint32_t)in[i + 2] << 16 | (uint32_t)in[i + 3] << 24) % POOL_SIZE;
		size_t n = in[i + 4];

		i += 5;
		n = n < len - i ? n : len - i;
		n = n < POOL_SIZE - off ? n : POOL_SIZE - off;
		memcpy(work + off, in + i, n);
		for (size_t b = off / BS; b <= (off + (n ? n - 1 : 0)) / BS; b++)
			touched[b] = 1;
		i += n;
	}
	if (flags & 1)
		reseal(touched);
}

static void ignore(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static void check_all(struct pmfuse_fs *fs)
{
	const struct pmfuse_check_ops ops = { .problem = ignore, .note = ignore };
	struct pmfuse_check_result res;

	memset(&res, 0, sizeof(res));
	if (pmfuse_fs_check_bitmap(fs, &ops, &res) == -ENOMEM ||
	    pmfuse_fs_check_trees(fs, &ops, &res) == -ENOMEM)
		return;
	pmfuse_fs_check_blocks(fs, &ops, &res);
	pmfuse_fs_check_namespace(fs, &ops, &res);
}

#define PEND_MAX 32u                 /* names of one readdir batch */

struct walk {
	uint64_t todo[WALK_MAX];
	unsigned n, visited;
	/* One readdir batch. emit runs under the directory's locks and must not call into the
	 * fs, so names are looked up after pmfuse_fs_readdir returns. */
	char names[PEND_MAX][PMFUSE_NAME_MAX + 1];
	uint64_t inos[PEND_MAX];
	unsigned npend;
	uint64_t next;               /* cookie after the last entry taken */
	bool more;
};

static int walk_entry(void *arg, const char *name, uint64_t ino, unsigned type, uint64_t next)
{
	struct walk *w = arg;

	(void)type;
	if (w->npend == PEND_MAX) {
		w->more = true;
		return 1;
	}
	w->next = next;
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return 0;
	snprintf(w->names[w->npend], sizeof(w->names[0]), "%s", name);
	w->inos[w->npend++] = ino;
	return 0;
}

/* Looks up every name of dir, queueing those that resolve to the inode readdir named. */
static void walk_dir(struct pmfuse_fs *fs, struct walk *w, uint64_t dir)
{
	struct pmfuse_attr a;

	w->next = 0;
	do {
		w->npend = 0;
		w->more = false;
		if (pmfuse_fs_readdir(fs, dir, w->next, walk_entry, w) < 0)
			return;
		for (unsigned k = 0; k < w->npend; k++) {
			if (w->visited + w->n >= WALK_MAX)
				return;
			if (pmfuse_fs_lookup(fs, dir, w->names[k], &a) == 0) {
				pmfuse_fs_forget(fs, a.ino, 1);
				if (a.ino == w->inos[k])
					w->todo[w->n++] = a.ino;
			}
		}
	} while (w->more);
}

/* Everything a reader of the mount can ask, breadth first from the root, bounded. */
static void walk(struct pmfuse_fs *fs)
{
	static char buf[64 * 1024];
	static struct walk w;
	struct pmfuse_attr a;

	memset(&w, 0, sizeof(w));
	w.todo[0] = PMFUSE_ROOT_INO;
	w.n = 1;
	while (w.n && w.visited < WALK_MAX) {
		uint64_t ino = w.todo[0];

		w.visited++;
		memmove(w.todo, w.todo + 1, --w.n * sizeof(w.todo[0]));
		if (pmfuse_fs_getattr(fs, ino, &a) == 0) {
			if (S_ISDIR(a.mode))
				walk_dir(fs, &w, ino);
			else if (S_ISREG(a.mode))
				pmfuse_fs_pread(fs, ino, buf, sizeof(buf), 0);
			else if (S_ISLNK(a.mode))
				pmfuse_fs_readlink(fs, ino, buf, sizeof(buf));
			if (pmfuse_fs_listxattr(fs, ino, buf, sizeof(buf)) > 0)
				pmfuse_fs_getxattr(fs, ino, buf, buf + 256, sizeof(buf) - 256);
		}
	}
}

static void open_read_only(void)
{
	struct pmfuse_fs_opts fo = { .readonly = true, .check = true };
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	char msg[256];

	pmfuse_pool_fake_reset(pool, work);
	if (!pmfuse_volume_open(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg))) {
		if (!pmfuse_fs_open(vol, &fo, &fs)) {
			check_all(fs);
			walk(fs);
			pmfuse_fs_close(fs);
		}
		pmfuse_volume_close(vol);
	}
}

static void open_read_write(void)
{
	static const struct pmfuse_cred root = { .uid = 0, .gid = 0, .umask = 022 };
	struct pmfuse_fs_opts fo = { 0 };
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
	struct pmfuse_attr a;
	char msg[256];

	pmfuse_pool_fake_reset(pool, work);
	if (!pmfuse_volume_open(pool, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg))) {
		if (!pmfuse_fs_open(vol, &fo, &fs)) {
			if (!pmfuse_fs_mknod(fs, PMFUSE_ROOT_INO, "new", S_IFREG | 0644, 0, &root,
					     &a)) {
				pmfuse_fs_write(fs, a.ino, "new data", 8, 0, false, &root);
				pmfuse_fs_forget(fs, a.ino, 1);
			}
			pmfuse_fs_close(fs);
		}
		pmfuse_volume_close(vol);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t len)
{
	damage(in, len);
	open_read_only();
	open_read_write();
	return 0;
}
