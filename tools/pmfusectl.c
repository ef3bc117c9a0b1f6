/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl: one program, many subcommands (`pmfusectl COMMAND [ARGS]`).
 *
 * Each command is a row of the table at the bottom: name, one-line summary, argument synopsis
 * and a run(argc, argv) that gets its own argv (argv[0] is the command name) and returns the
 * exit status. Adding a command means adding a function and a row; help, usage errors and
 * --help per command come from the table.
 *
 * Exit status: 0 success; 1 usage or operational error (cannot open, unsupported features);
 * 2 the pool is damaged (the message says what and where).
 *
 * info reads the pool through a read-only mapping and never writes, so it is safe on a pool a
 * daemon has mounted (a read-only open takes no lock). It then says the pool is in use, and
 * treats metadata that fails its checks as possibly in flux: it retries, and reports a
 * transaction in flight as such rather than as damage.
 *
 * clone, unshare, stat and du work on files of a mounted pmfuse file system, through the pmfuse
 * ioctls (include/pmfuse/ioctl.h) that the daemon answers; the kernel's FICLONE family never
 * reaches a FUSE server. ENOTTY from one of them means the file is not on a pmfuse mount.
 * clone never falls back to copying: it shares blocks or fails.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "meta/alloc.h"
#include "pmfuse/ioctl.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "util/util.h"

#define EXIT_USAGE 1
#define EXIT_DAMAGED 2

static const char *prog = "pmfusectl";
static bool verbose;

struct command {
	const char *name;
	const char *args;      /* synopsis after the command name */
	const char *summary;
	int (*run)(const struct command *cmd, int argc, char **argv);
	const char *details;   /* more for --help, or NULL */
};

static const struct command *find_command(const char *name);
static void usage(FILE *f);

__attribute__((format(printf, 1, 2)))
static void err(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void cmd_usage(const struct command *cmd, FILE *f)
{
	fprintf(f, "Usage: %s %s %s\n%s.\n", prog, cmd->name, cmd->args, cmd->summary);
	if (cmd->details && f == stdout)
		fprintf(f, "\n%s", cmd->details);
}

/*
 * Parses the options every command takes (-h/--help) and checks the count of operands. Returns
 * -1 to go on, else the exit status.
 */
static int common_opts(const struct command *cmd, int argc, char **argv, int operands)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			cmd_usage(cmd, stdout);
			return 0;
		}
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	if (argc - optind != operands) {
		err("%s: %s", cmd->name, argc - optind < operands ? "missing operand" :
		    "too many operands");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	return -1;
}

/* ---- formatting helpers --------------------------------------------------------------------- */

static const char *when(uint64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!t)
		return "never";
	if (!localtime_r(&tt, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S %z", &tm))
		snprintf(buf, len, "%llu", (unsigned long long)t);
	return buf;
}

/* Opens a pool read-only for inspection; prints why not. */
static int open_ro(const char *path, struct pmfuse_pool **pool)
{
	int rc = pmfuse_pool_open(path, PMFUSE_POOL_RDONLY, pool);

	if (rc == -EINVAL)
		err("%s: not a pool (empty, or neither a regular file nor a dax device)", path);
	else if (rc)
		err("%s: cannot open: %s", path, strerror(-rc));
	return rc;
}

/* ---- info ------------------------------------------------------------------------------------ */

/* One "name:   value" line of the report. */
__attribute__((format(printf, 2, 3)))
static void row(const char *name, const char *fmt, ...)
{
	va_list ap;
	printf("%s:%*s", name, (int)(19 - PMFUSE_MIN(strlen(name), (size_t)18)), "");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void print_copy(const struct pmfuse_sb_probe *p, int c)
{
	const char *name = c ? "secondary sb" : "primary sb";
	unsigned long long blk = p->blk[c];

	if (c && !blk && !p->valid[c])
		row(name, "not found: %s", p->why[c]);
	else if (!p->valid[c])
		row(name, "block %llu: DAMAGED: %s", blk, p->why[c]);
	else if (p->copy >= 0 && p->seq[c] < p->seq[p->copy])
		row(name, "block %llu: valid but older (seq %llu, current %llu)", blk,
		    (unsigned long long)p->seq[c], (unsigned long long)p->seq[p->copy]);
	else
		row(name, "block %llu: valid, seq %llu%s", blk, (unsigned long long)p->seq[c],
		    p->copy == c ? " (in use)" : "");
}

static void print_sb(const struct pmfuse_sb *sb)
{
	uint32_t bs = pmfuse_le32(sb->block_size);
	uint64_t count = pmfuse_le64(sb->block_count);
	char u[37], label[PMFUSE_LABEL_MAX + 1], h[32], t[64];
	typedef unsigned long long ull;

	pmfuse_uuid_str(sb->uuid, u);
	memcpy(label, sb->label, PMFUSE_LABEL_MAX);
	label[PMFUSE_LABEL_MAX] = '\0';
	row("uuid", "%s", u);
	row("label", "\"%s\"", label);
	row("format version", "%u", pmfuse_le32(sb->version));
	row("block size", "%u", bs);
	row("blocks", "%llu (%s)", (ull)count, pmfuse_human_size(count * bs, h, sizeof(h)));
	row("state block", "%llu", (ull)pmfuse_le64(sb->state_block));
	row("log", "blocks %llu..%llu (%llu)", (ull)pmfuse_le64(sb->log_start),
	    (ull)(pmfuse_le64(sb->log_start) + pmfuse_le64(sb->log_blocks) - 1),
	    (ull)pmfuse_le64(sb->log_blocks));
	row("bitmap", "blocks %llu..%llu (%llu)", (ull)pmfuse_le64(sb->bitmap_start),
	    (ull)(pmfuse_le64(sb->bitmap_start) + pmfuse_le64(sb->bitmap_blocks) - 1),
	    (ull)pmfuse_le64(sb->bitmap_blocks));
	row("data", "blocks %llu..%llu (%llu)", (ull)pmfuse_le64(sb->data_start),
	    (ull)(count - 2), (ull)(count - 1 - pmfuse_le64(sb->data_start)));
	row("features", "compat 0x%016llx ro_compat 0x%016llx incompat 0x%016llx",
	    (ull)pmfuse_le64(sb->compat), (ull)pmfuse_le64(sb->ro_compat),
	    (ull)pmfuse_le64(sb->incompat));
	row("clean", "%s", pmfuse_le32(sb->clean) == PMFUSE_SB_CLEAN ? "yes" :
	    "no (mounted now, or not cleanly unmounted)");
	row("mount count", "%llu", (ull)pmfuse_le64(sb->mount_count));
	row("created", "%s", when(pmfuse_le64(sb->mkfs_time), t, sizeof(t)));
	row("last mounted", "%s", when(pmfuse_le64(sb->mount_time), t, sizeof(t)));
	row("sb sequence", "%llu", (ull)pmfuse_le64(sb->seq));
}

static int cmd_info(const struct command *cmd, int argc, char **argv)
{
	struct pmfuse_pool *pool = NULL;
	struct pmfuse_volume *vol = NULL;
	struct pmfuse_sb_probe probe;
	char msg[1024], holder[128], h[32], h2[32];
	bool in_use;
	int rc, status = 0;

	if ((rc = common_opts(cmd, argc, argv, 1)) >= 0)
		return rc;
	const char *path = argv[optind];
	if (open_ro(path, &pool))
		return EXIT_USAGE;
	in_use = pmfuse_pool_lock_holder(path, holder, sizeof(holder));

	row("pool", "%s", path);
	row("source", "%s", pmfuse_pool_source_kind(pool) == PMFUSE_SOURCE_DEVDAX ? "dax device" :
	    "file");
	row("pool size", "%zu (%s)", pmfuse_pool_size(pool),
	    pmfuse_human_size(pmfuse_pool_size(pool), h, sizeof(h)));
	row("store granularity", "%s", pmfuse_granularity_name(pmfuse_pool_granularity(pool)));
	row("in use", "%s%s", in_use ? "yes, locked by " : "no", in_use ? holder : "");

	rc = pmfuse_sb_probe(pool, &probe);
	print_copy(&probe, 0);
	print_copy(&probe, 1);
	if (rc) {
		bool seen = strncmp(probe.why[0], "bad magic", 9) || probe.blk[1];
		err("%s: damaged: no valid superblock: %s", path, seen ?
		    "both copies fail their checks" :
		    "neither copy found (not a pmfuse pool, or both superblocks overwritten)");
		pmfuse_pool_close(pool);
		return EXIT_DAMAGED;
	}
	if (!probe.valid[0] || !probe.valid[1])
		status = EXIT_DAMAGED;
	print_sb(&probe.sb);

	/* A daemon may be changing the metadata under us: give it a few chances. */
	for (int tries = 0;; tries++) {
		rc = pmfuse_volume_open(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg));
		if (rc != -EUCLEAN || !in_use || tries == 4)
			break;
		usleep(50 * 1000);
	}
	if (rc == -EOPNOTSUPP || rc == -EROFS) {
		err("%s: %s", path, msg);
		pmfuse_pool_close(pool);
		return EXIT_USAGE;
	}
	if (rc) {
		err("%s: %s: %s%s", path, rc == -EUCLEAN ? "damaged" : "cannot open the volume", msg,
		    in_use ? " (the pool is in use; this may be a change in flight)" : "");
		pmfuse_pool_close(pool);
		return rc == -EUCLEAN ? EXIT_DAMAGED : EXIT_USAGE;
	}

	row("log state", "%s", vol->log_pending ? "holds an unfinished transaction (a writable open "
	    "rolls it back)" : "empty");
	row("root inode", "%llu", (unsigned long long)pmfuse_le64(vol->state->root_ino));
	row("next inode", "%llu", (unsigned long long)pmfuse_le64(vol->state->next_ino));

	struct pmfuse_alloc_geom g = {
		.block_size = vol->block_size,
		.block_count = pmfuse_le64(vol->sb.block_count),
		.bitmap_start = pmfuse_le64(vol->sb.bitmap_start),
		.bitmap_blocks = pmfuse_le64(vol->sb.bitmap_blocks),
		.data_start = pmfuse_le64(vol->sb.data_start),
		.sb2_block = pmfuse_le64(vol->sb.sb2_block),
	};
	uint64_t free_blocks = 0;
	rc = pmfuse_alloc_count_free(pool, &g, &free_blocks);
	if (rc && (vol->log_pending || in_use)) {
		row("free", "unknown: the bitmap is being changed (%s)",
		    vol->log_pending ? "unfinished transaction" : "the pool is in use");
	} else if (rc) {
		err("%s: damaged: free-space bitmap (blocks %llu..%llu) fails its checks%s", path,
		    (unsigned long long)g.bitmap_start,
		    (unsigned long long)(g.bitmap_start + g.bitmap_blocks - 1),
		    verbose ? "" : " (-v names the block)");
		status = EXIT_DAMAGED;
	} else {
		uint64_t used = g.block_count - free_blocks, bs = g.block_size;
		row("free", "%llu blocks, %llu bytes (%s)", (unsigned long long)free_blocks,
		    (unsigned long long)(free_blocks * bs), pmfuse_human_size(free_blocks * bs, h, sizeof(h)));
		row("used", "%llu blocks, %llu bytes (%s), %.1f%% of %s", (unsigned long long)used,
		    (unsigned long long)(used * bs), pmfuse_human_size(used * bs, h, sizeof(h)),
		    100.0 * (double)used / (double)g.block_count,
		    pmfuse_human_size(g.block_count * bs, h2, sizeof(h2)));
	}
	if (msg[0])
		printf("note: %s\n", msg);
	if (status == EXIT_DAMAGED && !rc)
		err("%s: damaged: %s", path, msg);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
	return status;
}

/* ---- files on a pmfuse mount ----------------------------------------------------------------- */

static bool raw;                     /* --raw: sizes in bytes */

static const char *size_str(uint64_t bytes, char *buf, size_t len)
{
	if (raw)
		snprintf(buf, len, "%llu", (unsigned long long)bytes);
	else
		pmfuse_human_size(bytes, buf, len);
	return buf;
}

/*
 * Options of the file commands: -h/--help, --raw if the command prints sizes, and what the
 * command adds (handled by opt(), which returns -1 to go on, else the exit status). Checks the
 * operand count (min..max). Returns -1 to go on, else the exit status.
 */
typedef int (*opt_fn)(const struct command *cmd, int c, int argc, char **argv);

static int file_opts(const struct command *cmd, int argc, char **argv, const char *shortopts,
		     const struct option *extra, opt_fn opt, int min, int max)
{
	struct option opts[8] = {
		{ "help", no_argument, NULL, 'h' },
		{ "raw", no_argument, NULL, 'R' },
	};
	size_t n = 2;
	int c, rc;

	for (; extra && extra->name && n + 1 < PMFUSE_ARRAY_SIZE(opts); extra++)
		opts[n++] = *extra;
	raw = false;
	optind = 1;
	while ((c = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			cmd_usage(cmd, stdout);
			return 0;
		case 'R':
			raw = true;
			break;
		default:
			if (c == '?' || !opt) {
				cmd_usage(cmd, stderr);
				return EXIT_USAGE;
			}
			if ((rc = opt(cmd, c, argc, argv)) >= 0)
				return rc;
			break;
		}
	}
	if (argc - optind < min || argc - optind > max) {
		err("%s: %s", cmd->name, argc - optind < min ? "missing operand" :
		    "too many operands");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	return -1;
}

/* The error of a pmfuse ioctl on path, with the meaning of ENOTTY spelled out. */
static void ioc_err(const char *path, const char *what, int e)
{
	if (e == ENOTTY)
		err("%s: not on a pmfuse mount", path);
	else
		err("%s: %s: %s", path, what, strerror(e));
}

/* Calls fn for each mapped extent of the file open on fd, in file order. 0 or -errno. */
typedef int (*extent_fn)(void *arg, const struct pmfuse_ioc_extent *e);

static int walk_extents(int fd, extent_fn fn, void *arg, uint32_t *block_size)
{
	struct pmfuse_ioc_extents x;
	uint64_t start = 0;
	int rc;

	for (;;) {
		memset(&x, 0, sizeof(x));
		x.start = start;
		if (ioctl(fd, PMFUSE_IOC_GET_EXTENTS, &x))
			return -errno;
		if (block_size)
			*block_size = x.block_size;
		for (uint32_t i = 0; i < x.count && i < PMFUSE_IOC_EXTENTS_MAX; i++)
			if (fn && (rc = fn(arg, &x.ext[i])))
				return rc;
		/* stop on no progress rather than spin on a daemon that misbehaves */
		if (x.next == UINT64_MAX || x.next <= start || !x.count)
			return 0;
		start = x.next;
	}
}

/* 0 if fd is a file on a pmfuse mount (its block size in *bs), else -errno (-ENOTTY: not). */
static int probe(int fd, uint32_t *bs)
{
	struct pmfuse_ioc_extents x;

	memset(&x, 0, sizeof(x));
	x.start = UINT64_MAX;              /* nothing to list: only the answer matters */
	if (ioctl(fd, PMFUSE_IOC_GET_EXTENTS, &x))
		return -errno;
	*bs = x.block_size;
	return 0;
}

/* ---- clone ---------------------------------------------------------------------------------- */

static uint64_t clone_args[3];       /* --range SRC_OFF LEN DST_OFF */
static bool clone_ranged;

static int clone_opt(const struct command *cmd, int c, int argc, char **argv)
{
	static const char *const what[] = { "SRC_OFF", "LEN", "DST_OFF" };

	if (c != 'r')
		return EXIT_USAGE;
	if (argc - optind < 3) {
		err("clone: --range needs SRC_OFF LEN DST_OFF");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	for (int i = 0; i < 3; i++) {
		if (pmfuse_parse_size(argv[optind + i], &clone_args[i])) {
			err("clone: %s: not a size: '%s'", what[i], argv[optind + i]);
			return EXIT_USAGE;
		}
	}
	optind += 3;
	clone_ranged = true;
	return -1;
}

static void clone_err(int e, const char *src, const char *dst, uint32_t bs)
{
	switch (e) {
	case ENOTTY:
		err("%s: not on a pmfuse mount", dst);
		break;
	case EXDEV:
		err("cannot clone '%s' to '%s': not on the same pmfuse file system", src, dst);
		break;
	case EINVAL:
		err("cannot clone '%s' to '%s': invalid range: offsets and length must be "
		    "multiples of the block size (%u), except a range that ends at the end of the "
		    "source and at or beyond the end of the destination; ranges in one file must "
		    "not overlap", src, dst, bs);
		break;
	case EOPNOTSUPP:
		err("cannot clone '%s' to '%s': the pmfuse daemon does not support cloning", src,
		    dst);
		break;
	case EPERM:
		err("cannot clone '%s' to '%s': %s (the daemon could not take the source "
		    "descriptor from this process: another pid namespace, or no rights)", src, dst,
		    strerror(e));
		break;
	default:
		err("cannot clone '%s' to '%s': %s", src, dst, strerror(e));
	}
}

/* Opens dst for writing, creating it (mode) if needed; *created says whether it did. */
static int open_dst(const char *dst, mode_t mode, bool *created)
{
	int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, mode);

	*created = fd >= 0;
	if (fd < 0 && errno == EEXIST)       /* O_NONBLOCK: never wait on a FIFO */
		fd = open(dst, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	return fd;
}

/*
 * Like cp --reflink=always: DST (or DIR/basename(SRC)) gets SRC's contents as shared blocks,
 * or the command fails. Everything that can be checked is checked before DST is truncated;
 * a DST this command created is removed again on failure.
 */
static int cmd_clone(const struct command *cmd, int argc, char **argv)
{
	static const struct option extra[] = {
		{ "range", no_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	struct pmfuse_ioc_clone_range a;
	struct stat ss, ds;
	char *dst_alloc = NULL;
	const char *src, *dst;
	int sfd = -1, dfd = -1, rc, status = EXIT_USAGE;
	bool created = false;
	uint32_t bs = 0;

	clone_ranged = false;
	if ((rc = file_opts(cmd, argc, argv, "+h", extra, clone_opt, 2, 2)) >= 0)
		return rc;
	src = argv[optind];
	dst = argv[optind + 1];

	sfd = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (sfd < 0 || fstat(sfd, &ss)) {
		err("%s: %s", src, strerror(errno));
		goto out;
	}
	if (!S_ISREG(ss.st_mode)) {
		err("%s: %s", src, S_ISDIR(ss.st_mode) ? "is a directory" :
		    "not a regular file");
		goto out;
	}
	if ((rc = probe(sfd, &bs))) {
		ioc_err(src, "cannot read its extents", -rc);
		goto out;
	}
	if (!clone_ranged && !stat(dst, &ds) && S_ISDIR(ds.st_mode)) {
		const char *base = strrchr(src, '/') ? strrchr(src, '/') + 1 : src;

		if (asprintf(&dst_alloc, "%s/%s", dst, base) < 0) {
			err("out of memory");
			goto out;
		}
		dst = dst_alloc;
	}
	dfd = open_dst(dst, ss.st_mode & 0777, &created);
	if (dfd < 0 || fstat(dfd, &ds)) {
		err("%s: %s", dst, strerror(errno));
		goto out;
	}
	if (!S_ISREG(ds.st_mode)) {
		err("%s: not a regular file", dst);
		goto out;
	}
	if (!clone_ranged && ds.st_dev == ss.st_dev && ds.st_ino == ss.st_ino) {
		err("'%s' and '%s' are the same file", src, dst);
		goto out;
	}
	if (ds.st_dev != ss.st_dev) {
		uint32_t dbs;

		if ((rc = probe(dfd, &dbs)))
			ioc_err(dst, "cannot read its extents", -rc);
		else
			clone_err(EXDEV, src, dst, bs);
		goto out;
	}
	/* Pages a shared mapping dirtied are not on the pool until written back. */
	if (fsync(sfd) || (clone_ranged && fsync(dfd))) {
		err("%s: fsync: %s", clone_ranged ? dst : src, strerror(errno));
		goto out;
	}
	if (!clone_ranged && ftruncate(dfd, 0)) {
		err("%s: truncate: %s", dst, strerror(errno));
		goto out;
	}
	memset(&a, 0, sizeof(a));
	a.src_fd = sfd;
	if (clone_ranged) {
		a.src_offset = clone_args[0];
		a.src_length = clone_args[1];
		a.dest_offset = clone_args[2];
	}
	if (ioctl(dfd, PMFUSE_IOC_CLONE_RANGE, &a)) {
		int e = errno;

		clone_err(e, src, dst, bs);
		if (!created && !clone_ranged && e != ENOTTY)
			err("%s: was truncated%s", dst, e == ENOSPC ?
			    " and may hold part of the source" : "");
		goto out;
	}
	if (close(dfd)) {
		dfd = -1;
		err("%s: %s", dst, strerror(errno));
		goto out;
	}
	dfd = -1;
	created = false;
	status = 0;
out:
	if (dfd >= 0)
		close(dfd);
	if (created && unlink(dst))
		err("%s: cannot remove it again: %s", dst, strerror(errno));
	if (sfd >= 0)
		close(sfd);
	free(dst_alloc);
	return status;
}

/* ---- unshare -------------------------------------------------------------------------------- */

static int cmd_unshare(const struct command *cmd, int argc, char **argv)
{
	struct pmfuse_ioc_unshare a;
	const char *path;
	struct stat st;
	int fd, rc;

	if ((rc = file_opts(cmd, argc, argv, "h", NULL, NULL, 1, 3)) >= 0)
		return rc;
	if (argc - optind == 2) {
		err("unshare: give both OFF and LEN, or neither");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	path = argv[optind];
	memset(&a, 0, sizeof(a));
	if (argc - optind == 3 && (pmfuse_parse_size(argv[optind + 1], &a.offset) ||
				   pmfuse_parse_size(argv[optind + 2], &a.length))) {
		err("unshare: not a size: '%s'", pmfuse_parse_size(argv[optind + 1], &a.offset) ?
		    argv[optind + 1] : argv[optind + 2]);
		return EXIT_USAGE;
	}
	fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st)) {
		err("%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return EXIT_USAGE;
	}
	rc = 0;
	if (!S_ISREG(st.st_mode)) {
		err("%s: not a regular file", path);
		rc = EXIT_USAGE;
	} else if (ioctl(fd, PMFUSE_IOC_UNSHARE, &a)) {
		ioc_err(path, "cannot unshare", errno);
		rc = EXIT_USAGE;
	}
	close(fd);
	return rc;
}

/* ---- stat ----------------------------------------------------------------------------------- */

struct stat_sum {
	uint64_t extents, mapped, shared;
};

static int stat_extent(void *arg, const struct pmfuse_ioc_extent *e)
{
	struct stat_sum *sum = arg;
	char len[32];

	if (!sum->extents)
		printf("  %14s %14s %12s %5s  %s\n", "logical", "physical", "length", "refs",
		       "flags");
	printf("  %14llu %14llu %12s %5u  %s\n", (unsigned long long)e->logical,
	       (unsigned long long)e->physical, size_str(e->length, len, sizeof(len)),
	       e->refcount, e->flags & PMFUSE_EXTENT_SHARED ? "shared" : "-");
	sum->extents++;
	sum->mapped += e->length;
	if (e->flags & PMFUSE_EXTENT_SHARED)
		sum->shared += e->length;
	return 0;
}

static int stat_file(const char *path)
{
	struct stat_sum sum = { 0 };
	char size[32], m[32], sh[32], ex[32];
	uint32_t bs = 0;
	struct stat st;
	int fd, rc;

	/* stat first: opening a device or FIFO may have effects of its own */
	if (stat(path, &st)) {
		err("%s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		err("%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" :
		    "not a regular file");
		return -1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st)) {
		err("%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if ((rc = probe(fd, &bs))) {
		ioc_err(path, "cannot read its extents", -rc);
		close(fd);
		return -1;
	}
	printf("%s: size %s, block size %u\n", path,
	       size_str((uint64_t)st.st_size, size, sizeof(size)), bs);
	rc = walk_extents(fd, stat_extent, &sum, NULL);
	close(fd);
	if (rc) {
		ioc_err(path, "cannot read its extents", -rc);
		return -1;
	}
	printf("  %llu extent%s, mapped %s: shared %s, exclusive %s\n",
	       (unsigned long long)sum.extents, sum.extents == 1 ? "" : "s",
	       size_str(sum.mapped, m, sizeof(m)), size_str(sum.shared, sh, sizeof(sh)),
	       size_str(sum.mapped - sum.shared, ex, sizeof(ex)));
	return 0;
}

static int cmd_stat(const struct command *cmd, int argc, char **argv)
{
	int rc, status = 0;

	if ((rc = file_opts(cmd, argc, argv, "h", NULL, NULL, 1, INT32_MAX)) >= 0)
		return rc;
	for (int i = optind; i < argc; i++) {
		if (i > optind)
			putchar('\n');
		if (stat_file(argv[i]))
			status = EXIT_USAGE;
	}
	return status;
}

/* ---- du ------------------------------------------------------------------------------------- */

/*
 * Like btrfs filesystem du. Total: the bytes mapped by the files; Exclusive: those in blocks no
 * other file (nor another place of the same file) maps; Set shared: the shared blocks mapped by
 * the files under a path, each counted once however often it is mapped there. A file with
 * several names is counted once; the walk stays on the file system of each PATH.
 */
struct prange {
	dev_t dev;
	uint64_t start, len;
};

struct ranges {
	struct prange *r;
	size_t n, cap;
};

struct du_sum {
	uint64_t total, excl;
	struct ranges shared;
};

static int ranges_add(struct ranges *v, dev_t dev, uint64_t start, uint64_t len)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? 2 * v->cap : 64;
		struct prange *r = realloc(v->r, cap * sizeof(*r));

		if (!r)
			return -ENOMEM;
		v->r = r;
		v->cap = cap;
	}
	v->r[v->n++] = (struct prange){ .dev = dev, .start = start, .len = len };
	return 0;
}

static int prange_cmp(const void *a, const void *b)
{
	const struct prange *x = a, *y = b;

	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* Sorts and merges the ranges in place; returns the bytes they cover. */
static uint64_t ranges_union(struct ranges *v)
{
	uint64_t bytes = 0;
	size_t out = 0;

	if (!v->n)
		return 0;
	qsort(v->r, v->n, sizeof(*v->r), prange_cmp);
	for (size_t i = 1; i < v->n; i++) {
		struct prange *o = &v->r[out], *c = &v->r[i];

		if (c->dev == o->dev && c->start <= o->start + o->len) {
			uint64_t end = PMFUSE_MAX(o->start + o->len, c->start + c->len);
			o->len = end - o->start;
		} else {
			v->r[++out] = *c;
		}
	}
	v->n = out + 1;
	for (size_t i = 0; i < v->n; i++)
		bytes += v->r[i].len;
	return bytes;
}

static int ranges_append(struct ranges *to, const struct ranges *from)
{
	for (size_t i = 0; i < from->n; i++)
		if (ranges_add(to, from->r[i].dev, from->r[i].start, from->r[i].len))
			return -ENOMEM;
	return 0;
}

/* Files with more than one name that were counted already: (dev, ino) in a hash set. */
struct seen {
	struct { dev_t dev; ino_t ino; } *slot;
	size_t n, cap;
};

static bool seen_before(struct seen *s, dev_t dev, ino_t ino)
{
	size_t h;

	if (2 * (s->n + 1) > s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		struct seen t = { .slot = calloc(cap, sizeof(*s->slot)), .cap = cap };

		if (!t.slot)
			return false;        /* out of memory: count it again rather than fail */
		for (size_t i = 0; i < s->cap; i++)
			if (s->slot[i].ino)
				seen_before(&t, s->slot[i].dev, s->slot[i].ino);
		free(s->slot);
		*s = t;
	}
	h = (size_t)((ino * 0x9e3779b97f4a7c15ull) ^ dev) & (s->cap - 1);
	for (;; h = (h + 1) & (s->cap - 1)) {
		if (!s->slot[h].ino) {
			s->slot[h].dev = dev;
			s->slot[h].ino = ino;
			s->n++;
			return false;
		}
		if (s->slot[h].dev == dev && s->slot[h].ino == ino)
			return true;
	}
}

struct du_ctx {
	bool summarize;
	int status;
	struct seen seen;
};

struct du_file {
	struct du_sum *sum;
	dev_t dev;
	int rc;
};

static int du_extent(void *arg, const struct pmfuse_ioc_extent *e)
{
	struct du_file *f = arg;

	f->sum->total += e->length;
	if (!(e->flags & PMFUSE_EXTENT_SHARED))
		f->sum->excl += e->length;
	else if (ranges_add(&f->sum->shared, f->dev, e->physical, e->length))
		return -ENOMEM;
	return 0;
}

static void du_line(const struct du_sum *sum, bool with_set, uint64_t set, const char *path)
{
	char t[32], e[32], s[32];

	printf("%12s %12s %12s  %s\n", size_str(sum->total, t, sizeof(t)),
	       size_str(sum->excl, e, sizeof(e)), with_set ? size_str(set, s, sizeof(s)) : "-",
	       path);
}

static void du_walk(struct du_ctx *c, int dirfd, const char *name, const char *path, dev_t dev,
		    bool top, struct du_sum *sum);

static void du_dir(struct du_ctx *c, int fd, const char *path, dev_t dev, struct du_sum *sum)
{
	DIR *d = fdopendir(fd);
	struct dirent *de;

	if (!d) {
		err("%s: %s", path, strerror(errno));
		close(fd);
		c->status = EXIT_USAGE;
		return;
	}
	while ((errno = 0, de = readdir(d))) {
		char *child;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (asprintf(&child, "%s%s%s", path, path[strlen(path) - 1] == '/' ? "" : "/",
			     de->d_name) < 0) {
			err("out of memory");
			c->status = EXIT_USAGE;
			break;
		}
		du_walk(c, dirfd(d), de->d_name, child, dev, false, sum);
		free(child);
	}
	if (errno) {
		err("%s: %s", path, strerror(errno));
		c->status = EXIT_USAGE;
	}
	closedir(d);
}

/*
 * Adds name (in dirfd; path names it for messages) to sum, printing a line for it unless -s.
 * dev: the file system of the PATH operand (top: this is the operand, so take its own).
 */
static void du_walk(struct du_ctx *c, int dirfd, const char *name, const char *path, dev_t dev,
		    bool top, struct du_sum *sum)
{
	struct du_sum own = { 0 };
	struct stat st;
	uint32_t bs;
	int fd, rc;

	if (fstatat(dirfd, name, &st, top ? 0 : AT_SYMLINK_NOFOLLOW)) {
		err("%s: %s", path, strerror(errno));
		c->status = EXIT_USAGE;
		return;
	}
	if (top)
		dev = st.st_dev;
	if (st.st_dev != dev || (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)))
		return;                      /* another file system; symlinks, devices, ... */
	if (S_ISREG(st.st_mode) && st.st_nlink > 1 && seen_before(&c->seen, st.st_dev, st.st_ino))
		return;
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
		    (top ? 0 : O_NOFOLLOW) | (S_ISDIR(st.st_mode) ? O_DIRECTORY : 0));
	if (fd < 0) {
		err("%s: %s", path, strerror(errno));
		c->status = EXIT_USAGE;
		return;
	}
	if (S_ISREG(st.st_mode)) {
		struct du_file f = { .sum = &own, .dev = st.st_dev };

		rc = walk_extents(fd, du_extent, &f, NULL);
		close(fd);
		if (rc) {
			ioc_err(path, "cannot read its extents", -rc);
			c->status = EXIT_USAGE;
			free(own.shared.r);
			return;
		}
		if (!c->summarize)
			du_line(&own, false, 0, path);
	} else {
		/* a directory: is it on pmfuse at all? (the daemon answers EISDIR) */
		if (top && (rc = probe(fd, &bs)) && rc != -EISDIR) {
			ioc_err(path, "cannot read extents", -rc);
			c->status = EXIT_USAGE;
			close(fd);
			return;
		}
		du_dir(c, fd, path, dev, &own);
		if (!c->summarize || top) {
			uint64_t set = ranges_union(&own.shared);

			du_line(&own, true, set, path);
		}
	}
	if (S_ISREG(st.st_mode) && top && c->summarize)
		du_line(&own, false, 0, path);
	sum->total += own.total;
	sum->excl += own.excl;
	if (ranges_append(&sum->shared, &own.shared)) {
		err("out of memory");
		c->status = EXIT_USAGE;
	}
	free(own.shared.r);
}

static bool du_summarize;

static int du_opt(const struct command *cmd, int c, int argc, char **argv)
{
	(void)cmd;
	(void)argc;
	(void)argv;
	if (c != 's')
		return EXIT_USAGE;
	du_summarize = true;
	return -1;
}

static int cmd_du(const struct command *cmd, int argc, char **argv)
{
	static const struct option extra[] = {
		{ "summarize", no_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	struct du_ctx c = { 0 };
	struct du_sum all = { 0 };
	int rc;

	du_summarize = false;
	if ((rc = file_opts(cmd, argc, argv, "hs", extra, du_opt, 1, INT32_MAX)) >= 0)
		return rc;
	c.summarize = du_summarize;
	printf("%12s %12s %12s  %s\n", "Total", "Exclusive", "Set shared", "Filename");
	for (int i = optind; i < argc; i++)
		du_walk(&c, AT_FDCWD, argv[i], argv[i], 0, true, &all);
	if (argc - optind > 1)
		du_line(&all, true, ranges_union(&all.shared), "(all paths)");
	free(all.shared.r);
	free(c.seen.slot);
	return c.status;
}

/* ---- help and dispatch ----------------------------------------------------------------------- */

static int cmd_help(const struct command *cmd, int argc, char **argv)
{
	if (argc > 2) {
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	if (argc == 2) {
		const struct command *c = find_command(argv[1]);
		if (!c) {
			err("unknown command '%s'", argv[1]);
			return EXIT_USAGE;
		}
		cmd_usage(c, stdout);
		return 0;
	}
	usage(stdout);
	return 0;
}

static const struct command commands[] = {
	{ "info", "POOL", "Show a pool's superblocks, layout, log state and space usage",
	  cmd_info, NULL },
	{ "clone", "[--range SRC_OFF LEN DST_OFF] SRC DST",
	  "Clone SRC to DST sharing its blocks, like cp --reflink=always; never copies", cmd_clone,
	  "Without --range, DST (or DIRECTORY/NAME when DST is a directory) is created or\n"
	  "truncated and gets all of SRC. With --range, LEN bytes at SRC_OFF go to DST_OFF in\n"
	  "DST (created if missing, never truncated); LEN 0 means up to the end of SRC; SRC and\n"
	  "DST may be the same file when the ranges do not overlap. Offsets and LEN are\n"
	  "multiples of the block size, except that the range may end at the end of SRC. Sizes\n"
	  "take K, M, G, T suffixes (powers of 1024). Both files must be on the same pmfuse file\n"
	  "system. The clone shares the blocks or fails: it never copies data.\n"
	  "  --range SRC_OFF LEN DST_OFF   clone a range into DST instead of the whole file\n"
	  "  -h, --help                    show this help\n" },
	{ "unshare", "FILE [OFF LEN]", "Give FILE private copies of its shared blocks", cmd_unshare,
	  "Copies the shared blocks of FILE (from OFF for LEN bytes; LEN 0: to the end) to new\n"
	  "blocks of its own, as fallocate(FALLOC_FL_UNSHARE_RANGE) does on XFS; later writes\n"
	  "then need no copy-on-write. Holes stay holes. FILE must be writable by the caller.\n"
	  "Sizes take K, M, G, T suffixes.\n" },
	{ "stat", "[--raw] FILE...", "Show the extents of files, their sharing and totals",
	  cmd_stat,
	  "For each FILE: its extents (logical offset in the file and physical offset in the\n"
	  "pool, in bytes; length; the number of owners of its blocks; 'shared' when more than\n"
	  "one), then the number of extents and the mapped, shared and exclusive bytes.\n"
	  "  --raw        lengths and totals in bytes instead of KiB, MiB, ...\n"
	  "  -h, --help   show this help\n" },
	{ "du", "[-s] [--raw] PATH...",
	  "Show total, exclusive and shared space under paths, like btrfs filesystem du", cmd_du,
	  "Total: bytes mapped by the files; Exclusive: bytes in blocks that no other file (nor\n"
	  "another place in the same file) maps; Set shared: the shared blocks under a directory,\n"
	  "each counted once however often it is mapped there ('-' for a single file).\n"
	  "Directories are walked without leaving the file system of PATH; a file with several\n"
	  "names counts once. With more than one PATH, a last line sums them all, counting each\n"
	  "shared block once across all of them.\n"
	  "  -s, --summarize   one line per PATH\n"
	  "  --raw             sizes in bytes instead of KiB, MiB, ...\n"
	  "  -h, --help        show this help\n" },
	{ "help", "[COMMAND]", "Show the commands, or one command's usage", cmd_help, NULL },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(commands); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: %s [-v] COMMAND [ARGS]\n"
		"       %s --help | --version\n"
		"Inspect and manage pmfuse pools, and the shared blocks of files on a pmfuse\n"
		"mount.\n\nCommands:\n", prog, prog);
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(commands); i++)
		fprintf(f, "  %s %s\n        %s\n", commands[i].name, commands[i].args,
			commands[i].summary);
	fprintf(f, "\nOptions:\n"
		"  -v, --verbose   also print the library's diagnostics (file and line of a check)\n"
		"  -h, --help      show this help and exit\n"
		"  -V, --version   show the version and exit\n"
		"\n'%s COMMAND --help' shows a command's usage.\n"
		"Exit status: 0 success, 1 usage or operational error, 2 damaged pool.\n", prog);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "verbose", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	/* Global options end at the command name ('+': no permutation). */
	while ((c = getopt_long(argc, argv, "+hVv", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("%s (pmfuse) %s, on-media format version %u\n", prog, PMFUSE_VERSION,
			       PMFUSE_FORMAT_VERSION);
			return 0;
		case 'v':
			verbose = true;
			break;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		err("no command given");
		usage(stderr);
		return EXIT_USAGE;
	}
	const struct command *cmd = find_command(argv[optind]);
	if (!cmd) {
		err("unknown command '%s'", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	pmfuse_log_set_target(verbose ? PMFUSE_LOG_STDERR : PMFUSE_LOG_QUIET);
	return cmd->run(cmd, argc - optind, argv + optind);
}
