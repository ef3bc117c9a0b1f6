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

#include "cli.h"

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

/*
 * The progress line of a long command on stderr ("\rscanning: 1.2 GiB of 4.0 GiB (30%)"), at
 * most 4 times a second, only when stderr is a terminal and the command wants it (on). A
 * message ends the line first (cli_err() does); the next update starts a new one.
 */
struct progress {
	bool on;
	const char *what;            /* the phase, NULL between phases */
	uint64_t done, total;
	int64_t next_ns;             /* when the line may change again */
	int width;                   /* of the line on the terminal (0: none) */
};

static struct progress progress;

static int64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void progress_show(struct progress *p, bool now)
{
	char a[32], b[32];
	int n;

	if (!p->on || !p->what || (!now && now_ns() < p->next_ns))
		return;
	p->next_ns = now_ns() + 250 * 1000000;
	n = fprintf(stderr, "\r%s: %s of %s (%u%%)", p->what,
		    pmfuse_human_size(p->done, a, sizeof(a)),
		    pmfuse_human_size(p->total, b, sizeof(b)),
		    p->total ? (unsigned)(PMFUSE_MIN(p->done, p->total) * 100 / p->total) : 100);
	if (n < p->width)
		fprintf(stderr, "%*s", p->width - n, "");
	p->width = PMFUSE_MAX(p->width, n);
}

static void progress_begin(struct progress *p, const char *what, uint64_t total)
{
	p->what = what;
	p->done = 0;
	p->total = total;
	progress_show(p, true);
}

static void progress_add(struct progress *p, uint64_t n)
{
	p->done += n;
	progress_show(p, false);
}

static void progress_break(struct progress *p)
{
	if (p->width)
		fputc('\n', stderr);
	p->width = 0;
}

/* Before an error message: the message starts on a line of its own. */
static void end_progress_line(void)
{
	progress_break(&progress);
}

/* The phase's last figures, and the end of its line. */
static void progress_end(struct progress *p)
{
	progress_show(p, true);
	progress_break(p);
	p->what = NULL;
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
		cli_err("%s: %s", cmd->name, argc - optind < operands ? "missing operand" :
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
		cli_err("%s: not a pool (empty, or neither a regular file nor a dax device)", path);
	else if (rc)
		cli_err("%s: cannot open: %s", path, strerror(-rc));
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
	uint64_t incompat = pmfuse_le64(sb->incompat);
	row("features", "compat 0x%016llx ro_compat 0x%016llx incompat 0x%016llx%s%s%s%s",
	    (ull)pmfuse_le64(sb->compat), (ull)pmfuse_le64(sb->ro_compat), (ull)incompat,
	    incompat ? " (" : "",
	    incompat & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN ? "unwritten" : "",
	    (incompat & PMFUSE_FEATURE_INCOMPAT_UNWRITTEN) &&
	    (incompat & PMFUSE_FEATURE_INCOMPAT_LOG_ZERO) ? ", " : "",
	    incompat & PMFUSE_FEATURE_INCOMPAT_LOG_ZERO ? "log_zero: mounted, or crashed)" :
	    incompat ? ")" : "");
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
		cli_err("%s: damaged: no valid superblock: %s", path, seen ?
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
		cli_err("%s: %s", path, msg);
		pmfuse_pool_close(pool);
		return EXIT_USAGE;
	}
	if (rc) {
		cli_err("%s: %s: %s%s", path, rc == -EUCLEAN ? "damaged" : "cannot open the volume", msg,
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
		cli_err("%s: damaged: free-space bitmap (blocks %llu..%llu) fails its checks%s", path,
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
		cli_err("%s: damaged: %s", path, msg);
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
		cli_err("%s: %s", cmd->name, argc - optind < min ? "missing operand" :
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
		cli_err("%s: not on a pmfuse mount", path);
	else
		cli_err("%s: %s: %s", path, what, strerror(e));
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

/*
 * Opens path with flags (O_RDONLY, O_RDWR; or, if that is refused, with flags2 when not -1) when
 * it is a regular file on a pmfuse mount: its stat in *st, the block size in *bs. Says why not
 * and returns -1. stat first: opening a device or FIFO may have effects of its own.
 */
static int open_file(const char *path, int flags, int flags2, struct stat *st, uint32_t *bs)
{
	const int how = O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
	int fd, rc;

	if (stat(path, st)) {
		cli_err("%s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st->st_mode)) {
		cli_err("%s: %s", path, S_ISDIR(st->st_mode) ? "is a directory" : "not a regular file");
		return -1;
	}
	fd = open(path, flags | how);
	if (fd < 0 && flags2 != -1 && (errno == EACCES || errno == EPERM || errno == EROFS ||
				       errno == ETXTBSY))
		fd = open(path, flags2 | how);
	if (fd < 0 || fstat(fd, st)) {
		cli_err("%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st->st_mode)) {         /* replaced since the stat */
		cli_err("%s: not a regular file", path);
		close(fd);
		return -1;
	}
	if ((rc = probe(fd, bs))) {
		ioc_err(path, "cannot read its extents", -rc);
		close(fd);
		return -1;
	}
	return fd;
}

/* --range SRC_OFF LEN DST_OFF (clone, dedupe): the three sizes after the option into r. */
static int range_opt(const struct command *cmd, int argc, char **argv, uint64_t r[3])
{
	static const char *const what[] = { "SRC_OFF", "LEN", "DST_OFF" };

	if (argc - optind < 3) {
		cli_err("%s: --range needs SRC_OFF LEN DST_OFF", cmd->name);
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	for (int i = 0; i < 3; i++) {
		if (pmfuse_parse_size(argv[optind + i], &r[i])) {
			cli_err("%s: %s: not a size: '%s'", cmd->name, what[i], argv[optind + i]);
			return EXIT_USAGE;
		}
	}
	optind += 3;
	return -1;
}

/* ---- clone ---------------------------------------------------------------------------------- */

static uint64_t clone_args[3];       /* --range SRC_OFF LEN DST_OFF */
static bool clone_ranged;

static int clone_opt(const struct command *cmd, int c, int argc, char **argv)
{
	int rc;

	if (c != 'r')
		return EXIT_USAGE;
	if ((rc = range_opt(cmd, argc, argv, clone_args)) >= 0)
		return rc;
	clone_ranged = true;
	return -1;
}

static void clone_err(int e, const char *src, const char *dst, uint32_t bs)
{
	switch (e) {
	case ENOTTY:
		cli_err("%s: not on a pmfuse mount", dst);
		break;
	case EXDEV:
		cli_err("cannot clone '%s' to '%s': not on the same pmfuse file system", src, dst);
		break;
	case EINVAL:
		cli_err("cannot clone '%s' to '%s': invalid range: offsets and length must be "
		    "multiples of the block size (%u), except a range that ends at the end of the "
		    "source and at or beyond the end of the destination; ranges in one file must "
		    "not overlap", src, dst, bs);
		break;
	case EOPNOTSUPP:
		cli_err("cannot clone '%s' to '%s': the pmfuse daemon does not support cloning", src,
		    dst);
		break;
	case EPERM:
		cli_err("cannot clone '%s' to '%s': %s (the daemon could not take the source "
		    "descriptor from this process: another pid namespace, or no rights)", src, dst,
		    strerror(e));
		break;
	default:
		cli_err("cannot clone '%s' to '%s': %s", src, dst, strerror(e));
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

	sfd = open_file(src, O_RDONLY, -1, &ss, &bs);
	if (sfd < 0)
		goto out;
	if (!clone_ranged && !stat(dst, &ds) && S_ISDIR(ds.st_mode)) {
		const char *base = strrchr(src, '/') ? strrchr(src, '/') + 1 : src;

		if (asprintf(&dst_alloc, "%s/%s", dst, base) < 0) {
			cli_err("out of memory");
			goto out;
		}
		dst = dst_alloc;
	}
	dfd = open_dst(dst, ss.st_mode & 0777, &created);
	if (dfd < 0 || fstat(dfd, &ds)) {
		cli_err("%s: %s", dst, strerror(errno));
		goto out;
	}
	if (!S_ISREG(ds.st_mode)) {
		cli_err("%s: not a regular file", dst);
		goto out;
	}
	if (!clone_ranged && ds.st_dev == ss.st_dev && ds.st_ino == ss.st_ino) {
		cli_err("'%s' and '%s' are the same file", src, dst);
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
		cli_err("%s: fsync: %s", clone_ranged ? dst : src, strerror(errno));
		goto out;
	}
	if (!clone_ranged && ftruncate(dfd, 0)) {
		cli_err("%s: truncate: %s", dst, strerror(errno));
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
			cli_err("%s: was truncated%s", dst, e == ENOSPC ?
			    " and may hold part of the source" : "");
		goto out;
	}
	if (close(dfd)) {
		dfd = -1;
		cli_err("%s: %s", dst, strerror(errno));
		goto out;
	}
	dfd = -1;
	created = false;
	status = 0;
out:
	if (dfd >= 0)
		close(dfd);
	if (created && unlink(dst))
		cli_err("%s: cannot remove it again: %s", dst, strerror(errno));
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
		cli_err("unshare: give both OFF and LEN, or neither");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	path = argv[optind];
	memset(&a, 0, sizeof(a));
	if (argc - optind == 3 && (pmfuse_parse_size(argv[optind + 1], &a.offset) ||
				   pmfuse_parse_size(argv[optind + 2], &a.length))) {
		cli_err("unshare: not a size: '%s'", pmfuse_parse_size(argv[optind + 1], &a.offset) ?
		    argv[optind + 1] : argv[optind + 2]);
		return EXIT_USAGE;
	}
	fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st)) {
		cli_err("%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return EXIT_USAGE;
	}
	rc = 0;
	if (!S_ISREG(st.st_mode)) {
		cli_err("%s: not a regular file", path);
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
	uint64_t extents, mapped, shared, unwritten;
};

/* The flags column: "shared", "unwritten", both, or "-". */
static const char *ext_flags_str(uint32_t flags)
{
	switch (flags & (PMFUSE_EXTENT_SHARED | PMFUSE_IOC_EXTENT_UNWRITTEN)) {
	case PMFUSE_EXTENT_SHARED:
		return "shared";
	case PMFUSE_IOC_EXTENT_UNWRITTEN:
		return "unwritten";
	case PMFUSE_EXTENT_SHARED | PMFUSE_IOC_EXTENT_UNWRITTEN:
		return "shared,unwritten";
	default:
		return "-";
	}
}

static int stat_extent(void *arg, const struct pmfuse_ioc_extent *e)
{
	struct stat_sum *sum = arg;
	char len[32];

	if (!sum->extents)
		printf("  %14s %14s %12s %5s  %s\n", "logical", "physical", "length", "refs",
		       "flags");
	printf("  %14llu %14llu %12s %5u  %s\n", (unsigned long long)e->logical,
	       (unsigned long long)e->physical, size_str(e->length, len, sizeof(len)),
	       e->refcount, ext_flags_str(e->flags));
	sum->extents++;
	sum->mapped += e->length;
	if (e->flags & PMFUSE_EXTENT_SHARED)
		sum->shared += e->length;
	if (e->flags & PMFUSE_IOC_EXTENT_UNWRITTEN)
		sum->unwritten += e->length;
	return 0;
}

static int stat_file(const char *path)
{
	struct stat_sum sum = { 0 };
	char size[32], m[32], sh[32], ex[32], un[32];
	uint32_t bs = 0;
	struct stat st;
	int fd, rc;

	if ((fd = open_file(path, O_RDONLY, -1, &st, &bs)) < 0)
		return -1;
	printf("%s: size %s, block size %u\n", path,
	       size_str((uint64_t)st.st_size, size, sizeof(size)), bs);
	rc = walk_extents(fd, stat_extent, &sum, NULL);
	close(fd);
	if (rc) {
		ioc_err(path, "cannot read its extents", -rc);
		return -1;
	}
	printf("  %llu extent%s, mapped %s: shared %s, exclusive %s, unwritten %s\n",
	       (unsigned long long)sum.extents, sum.extents == 1 ? "" : "s",
	       size_str(sum.mapped, m, sizeof(m)), size_str(sum.shared, sh, sizeof(sh)),
	       size_str(sum.mapped - sum.shared, ex, sizeof(ex)),
	       size_str(sum.unwritten, un, sizeof(un)));
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

/* ---- walking trees (du, dedupe --scan) ------------------------------------------------------ */

/* Files visited already: (dev, ino) in a hash set. */
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
			return false;        /* out of memory: visit it again rather than fail */
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

/*
 * Each PATH and everything under it, without following symbolic links (a PATH itself is
 * followed) or leaving the PATH's file system. Only regular files and directories are visited,
 * open read-only: a file through file(), a directory through dir(), which walks its contents
 * with walk_dir() if it wants them. Both own the descriptor (walk_dir() closes it); arg is what
 * the caller of walk_path() or walk_dir() passed (du: the sums of the directory above). A file
 * with several names is visited once; with once set, so is a file that overlapping PATHs reach
 * twice.
 */
struct walk {
	int status;                  /* EXIT_USAGE once an error was reported */
	bool once;
	struct seen seen;
	void (*file)(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		     void *arg);
	void (*dir)(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		    void *arg);
};

static void walk_path(struct walk *w, int dirfd, const char *name, const char *path, dev_t dev,
		      bool top, void *arg);

static void walk_dir(struct walk *w, int fd, const char *path, dev_t dev, void *arg)
{
	DIR *d = fdopendir(fd);
	struct dirent *de;

	if (!d) {
		cli_err("%s: %s", path, strerror(errno));
		close(fd);
		w->status = EXIT_USAGE;
		return;
	}
	while ((errno = 0, de = readdir(d))) {
		char *child;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (asprintf(&child, "%s%s%s", path, path[strlen(path) - 1] == '/' ? "" : "/",
			     de->d_name) < 0) {
			cli_err("out of memory");
			w->status = EXIT_USAGE;
			break;
		}
		walk_path(w, dirfd(d), de->d_name, child, dev, false, arg);
		free(child);
	}
	if (errno) {
		cli_err("%s: %s", path, strerror(errno));
		w->status = EXIT_USAGE;
	}
	closedir(d);
}

/*
 * Visits name (in dirfd; path names it for messages). dev: the file system of the PATH operand
 * (top: this is the operand, so take its own).
 */
static void walk_path(struct walk *w, int dirfd, const char *name, const char *path, dev_t dev,
		      bool top, void *arg)
{
	struct stat st;
	int fd;

	if (fstatat(dirfd, name, &st, top ? 0 : AT_SYMLINK_NOFOLLOW)) {
		cli_err("%s: %s", path, strerror(errno));
		w->status = EXIT_USAGE;
		return;
	}
	if (top)
		dev = st.st_dev;
	if (st.st_dev != dev || (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)))
		return;                      /* another file system; symlinks, devices, ... */
	if (S_ISREG(st.st_mode) && (st.st_nlink > 1 || w->once) &&
	    seen_before(&w->seen, st.st_dev, st.st_ino))
		return;
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK |
		    (top ? 0 : O_NOFOLLOW) | (S_ISDIR(st.st_mode) ? O_DIRECTORY : 0));
	if (fd < 0) {
		cli_err("%s: %s", path, strerror(errno));
		w->status = EXIT_USAGE;
		return;
	}
	if (S_ISREG(st.st_mode))
		w->file(w, fd, path, &st, top, arg);
	else
		w->dir(w, fd, path, &st, top, arg);
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

struct du_ctx {
	struct walk w;               /* first: the walk's callbacks get it */
	bool summarize;
};

struct du_file {
	struct du_sum *sum;
	dev_t dev;
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

/* Adds a file's or directory's sums to those of the directory above, and frees them. */
static void du_add(struct walk *w, struct du_sum *sum, struct du_sum *own)
{
	sum->total += own->total;
	sum->excl += own->excl;
	if (ranges_append(&sum->shared, &own->shared)) {
		cli_err("out of memory");
		w->status = EXIT_USAGE;
	}
	free(own->shared.r);
}

/* A line for each file unless -s, and for a PATH operand always. */
static void du_file(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		    void *arg)
{
	const struct du_ctx *c = (const struct du_ctx *)w;
	struct du_sum own = { 0 };
	struct du_file f = { .sum = &own, .dev = st->st_dev };
	int rc;

	rc = walk_extents(fd, du_extent, &f, NULL);
	close(fd);
	if (rc) {
		ioc_err(path, "cannot read its extents", -rc);
		w->status = EXIT_USAGE;
		free(own.shared.r);
		return;
	}
	if (!c->summarize || top)
		du_line(&own, false, 0, path);
	du_add(w, arg, &own);
}

static void du_dir(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		   void *arg)
{
	const struct du_ctx *c = (const struct du_ctx *)w;
	struct du_sum own = { 0 };
	uint32_t bs;
	int rc;

	/* is it on pmfuse at all? (the daemon answers EISDIR) */
	if (top && (rc = probe(fd, &bs)) && rc != -EISDIR) {
		ioc_err(path, "cannot read extents", -rc);
		w->status = EXIT_USAGE;
		close(fd);
		return;
	}
	walk_dir(w, fd, path, st->st_dev, &own);
	if (!c->summarize || top)
		du_line(&own, true, ranges_union(&own.shared), path);
	du_add(w, arg, &own);
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
	struct du_ctx c = { .w = { .file = du_file, .dir = du_dir } };
	struct du_sum all = { 0 };
	int rc;

	du_summarize = false;
	if ((rc = file_opts(cmd, argc, argv, "hs", extra, du_opt, 1, INT32_MAX)) >= 0)
		return rc;
	c.summarize = du_summarize;
	printf("%12s %12s %12s  %s\n", "Total", "Exclusive", "Set shared", "Filename");
	for (int i = optind; i < argc; i++)
		walk_path(&c.w, AT_FDCWD, argv[i], argv[i], 0, true, &all);
	if (argc - optind > 1)
		du_line(&all, true, ranges_union(&all.shared), "(all paths)");
	free(all.shared.r);
	free(c.w.seen.slot);
	return c.w.status;
}

/* ---- dedupe --------------------------------------------------------------------------------- */

/*
 * Dedupe makes blocks with equal contents share one pool block, through PMFUSE_IOC_DEDUPE_RANGE
 * (FIDEDUPERANGE with one destination, issued on the source). pmfusectl only finds candidates:
 * the daemon compares the bytes again in the pool and shares a range only if all of it is
 * equal, so a file that changed meanwhile, or a hash collision, costs a call and nothing else.
 *
 * SRC DST reads the two files through the mount, compares them block by block and dedupes each
 * run of equal blocks as soon as it ends. --scan reads every file under the PATHs and keeps one
 * struct dd_block per non-zero block (24 bytes: the only memory that grows with the data),
 * sorts them by hash so that equal blocks meet, turns every block of a group but the first into
 * a copy of the first (its source), drops the others, sorts again by destination and merges
 * consecutive blocks whose sources are consecutive too into runs. Both skip blocks that map
 * their source's pool block already (GET_EXTENTS), so running again finds nothing to do.
 *
 * A run is done in calls of at most DD_CALL_MAX bytes; a call the daemon finds different is
 * halved until the different blocks are found, so that the rest is still deduped and the
 * summary counts exactly.
 */
#define DD_CALL_MAX (16u << 20)      /* the daemon's cap per call (PMFUSE_DEDUPE_MAX) */
#define DD_CHUNK (16u << 20)         /* bytes per read */
#define DD_HOLE UINT64_MAX           /* the "physical" offset of a hole */
#define DD_FDS 16                    /* sources kept open by --scan */

/*
 * A 64-bit hash of a block: xxHash64 (seed 0), its words read in native order (the hashes are
 * only compared with each other). A collision costs a call, nothing more.
 */
#define XXH_P1 0x9e3779b185ebca87ull
#define XXH_P2 0xc2b2ae3d27d4eb4full
#define XXH_P3 0x165667b19e3779f9ull
#define XXH_P4 0x85ebca77c2b2ae63ull
#define XXH_P5 0x27d4eb2f165667c5ull

static uint64_t rotl64(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static uint64_t xxh_round(uint64_t acc, uint64_t in)
{
	return rotl64(acc + in * XXH_P2, 31) * XXH_P1;
}

static uint64_t xxh_merge(uint64_t h, uint64_t v)
{
	return (h ^ xxh_round(0, v)) * XXH_P1 + XXH_P4;
}

static uint64_t block_hash(const uint8_t *p, size_t len)
{
	const uint8_t *end = p + len;
	uint64_t h, w;
	uint32_t w32;

	if (len >= 32) {
		uint64_t v[4] = { XXH_P1 + XXH_P2, XXH_P2, 0, -XXH_P1 };

		for (; p + 32 <= end; p += 32) {
			for (int i = 0; i < 4; i++) {
				memcpy(&w, p + 8 * i, 8);
				v[i] = xxh_round(v[i], w);
			}
		}
		h = rotl64(v[0], 1) + rotl64(v[1], 7) + rotl64(v[2], 12) + rotl64(v[3], 18);
		for (int i = 0; i < 4; i++)
			h = xxh_merge(h, v[i]);
	} else {
		h = XXH_P5;
	}
	h += len;
	for (; p + 8 <= end; p += 8) {
		memcpy(&w, p, 8);
		h = rotl64(h ^ xxh_round(0, w), 27) * XXH_P1 + XXH_P4;
	}
	if (p + 4 <= end) {
		memcpy(&w32, p, 4);
		h = rotl64(h ^ (uint64_t)w32 * XXH_P1, 23) * XXH_P2 + XXH_P3;
		p += 4;
	}
	for (; p < end; p++)
		h = rotl64(h ^ *p * XXH_P5, 11) * XXH_P1;
	h = (h ^ (h >> 33)) * XXH_P2;
	h = (h ^ (h >> 29)) * XXH_P3;
	return h ^ (h >> 32);
}

static bool all_zero(const uint8_t *p, size_t len)
{
	return !len || (!p[0] && !memcmp(p, p + 1, len - 1));
}

/* Reads len bytes at off (fewer only at EOF); the bytes read or -errno. */
static ssize_t pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (!n)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* A file's extents, to tell the pool offset of its blocks (the "physical" offset). */
struct extmap {
	struct pmfuse_ioc_extent *e;
	size_t n, cap, cur;          /* cur: where the last lookup ended */
};

static int extmap_add(void *arg, const struct pmfuse_ioc_extent *e)
{
	struct extmap *m = arg;

	if (m->n == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 64;
		struct pmfuse_ioc_extent *v = realloc(m->e, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		m->e = v;
		m->cap = cap;
	}
	m->e[m->n++] = *e;
	return 0;
}

static int extmap_load(int fd, struct extmap *m)
{
	m->n = m->cur = 0;
	return walk_extents(fd, extmap_add, m, NULL);
}

/* The pool offset of file byte off, or DD_HOLE. Fast for offsets in increasing order. */
static uint64_t extmap_phys(struct extmap *m, uint64_t off)
{
	if (m->cur >= m->n || off < m->e[m->cur].logical)
		m->cur = 0;
	while (m->cur < m->n && off >= m->e[m->cur].logical + m->e[m->cur].length)
		m->cur++;
	if (m->cur == m->n || off < m->e[m->cur].logical)
		return DD_HOLE;
	return m->e[m->cur].physical + (off - m->e[m->cur].logical);
}

struct dd_sum {
	uint64_t files, scanned, unequal, dup, shared, deduped, differed;
};

/* A file --scan found. */
struct dd_file {
	char *path;
	dev_t dev;
	ino_t ino;
	uint64_t size;               /* when found, then when read */
	uint64_t blocks;             /* mapped blocks when found: the room it needs in blk */
	uint32_t bs;
};

/* A non-zero block --scan read: 24 bytes, all the memory that grows with the data. */
struct dd_block {
	uint64_t key;                /* the hash of the contents; for a copy, its source:
	                                file << 32 | block */
	uint64_t phys;               /* the pool offset it maps */
	uint32_t file, block;
};
_Static_assert(sizeof(struct dd_block) == 24, "24 bytes a block");

struct dd {
	struct walk w;               /* --scan: first, the walk's callbacks get it */
	struct dd_sum sum;
	bool scan;
	struct dd_file *file;
	size_t nfile, cap_file;
	struct dd_block *blk;
	size_t nblk, cap_blk;
	struct { uint32_t file; int fd; } src[DD_FDS];   /* --scan's open sources */
	unsigned src_next;
};

static void dedupe_err(int e, const char *src, const char *dst, uint32_t bs)
{
	switch (e) {
	case ENOTTY:
		cli_err("%s: not on a pmfuse mount", src);
		break;
	case EXDEV:
		cli_err("cannot dedupe '%s' into '%s': not on the same pmfuse file system", src, dst);
		break;
	case EINVAL:
		cli_err("cannot dedupe '%s' into '%s': invalid range: offsets must be multiples of the "
		    "block size (%u) and both ranges inside their files (did one change size?); "
		    "ranges in one file must not overlap", src, dst, bs);
		break;
	case EPERM:
		cli_err("cannot dedupe '%s' into '%s': %s: the caller may not write '%s' and does not "
		    "own it (or the daemon could not take the descriptor from this process)", src,
		    dst, strerror(e), dst);
		break;
	case EOPNOTSUPP:
		cli_err("cannot dedupe '%s' into '%s': the pmfuse daemon does not support dedupe", src,
		    dst);
		break;
	case ENOSPC:
		cli_err("cannot dedupe '%s' into '%s': %s (part of the range may be shared already)",
		    src, dst, strerror(e));
		break;
	default:
		cli_err("cannot dedupe '%s' into '%s': %s", src, dst, strerror(e));
	}
}

/*
 * Dedupes len bytes at so of sfd onto dof of dfd, seen equal, in calls of at most DD_CALL_MAX;
 * a call the daemon finds different is halved down to single blocks, which count as differed.
 * 0, or -errno from the ioctl or its status (the caller names the files).
 */
static int dd_range(struct dd *d, int sfd, uint64_t so, int dfd, uint64_t dof, uint64_t len,
		    uint32_t bs)
{
	while (len) {
		struct pmfuse_ioc_dedupe_range a;
		uint64_t piece = PMFUSE_MIN(len, (uint64_t)DD_CALL_MAX), done;
		int rc;

		memset(&a, 0, sizeof(a));
		a.src_offset = so;
		a.src_length = piece;
		a.dest_fd = dfd;
		a.dest_offset = dof;
		if (ioctl(sfd, PMFUSE_IOC_DEDUPE_RANGE, &a))
			return -errno;
		if (a.status < 0)
			return a.status;
		if (a.status > PMFUSE_DEDUPE_DIFFERS || a.bytes_deduped > piece)
			return -EPROTO;
		if (a.status == PMFUSE_DEDUPE_DIFFERS && piece > bs) {
			uint64_t half = PMFUSE_MAX(piece / 2 / bs * bs, (uint64_t)bs);

			if ((rc = dd_range(d, sfd, so, dfd, dof, half, bs)) ||
			    (rc = dd_range(d, sfd, so + half, dfd, dof + half, piece - half, bs)))
				return rc;
			done = piece;
		} else if (a.status == PMFUSE_DEDUPE_DIFFERS) {
			d->sum.differed += piece;
			done = piece;
		} else if (!a.bytes_deduped) {
			/* a file's size changed: the rest no longer ends at both EOFs */
			d->sum.differed += len;
			done = len;
		} else {
			d->sum.deduped += a.bytes_deduped;
			done = a.bytes_deduped;
		}
		if (d->scan && (a.status != PMFUSE_DEDUPE_DIFFERS || piece <= bs))
			progress_add(&progress, done);
		so += done;
		dof += done;
		len -= done;
	}
	return 0;
}

/* ---- dedupe SRC DST ---- */

static uint64_t dd_args[3];          /* --range SRC_OFF LEN DST_OFF */
static bool dd_ranged, dd_scan, dd_quiet;

static int dd_opt(const struct command *cmd, int c, int argc, char **argv)
{
	switch (c) {
	case 'r':
		dd_ranged = true;
		return range_opt(cmd, argc, argv, dd_args);
	case 'S':
		dd_scan = true;
		return -1;
	case 'q':
		dd_quiet = true;
		return -1;
	}
	return EXIT_USAGE;
}

static void dd_row(const char *name, uint64_t bytes)
{
	char h[32];

	row(name, "%llu (%s)", (unsigned long long)bytes, pmfuse_human_size(bytes, h, sizeof(h)));
}

/* The two files of SRC DST, and the run of equal blocks found but not deduped yet. */
struct dd_two {
	const char *src, *dst;
	int sfd, dfd;
	uint64_t so, dof, len;       /* the range */
	uint32_t bs;
	uint64_t run, run_len;       /* bytes from so and dof */
};

/* Dedupes the run found so far. 0 or EXIT_USAGE (the message given). */
static int dd_flush(struct dd *d, struct dd_two *t)
{
	int rc = 0;

	if (t->run_len)
		rc = dd_range(d, t->sfd, t->so + t->run, t->dfd, t->dof + t->run, t->run_len,
			      t->bs);
	t->run_len = 0;
	if (!rc)
		return 0;
	dedupe_err(-rc, t->src, t->dst, t->bs);
	return EXIT_USAGE;
}

/*
 * Compares the range of SRC with DST's block by block and dedupes each run of equal blocks
 * that DST maps elsewhere (not in a hole: that would give nothing back) when it ends. 0 or
 * EXIT_USAGE (the message given).
 */
static int dd_compare(struct dd *d, struct dd_two *t)
{
	struct extmap sm = { 0 }, dm = { 0 };
	uint8_t *sbuf = NULL, *dbuf = NULL;
	const size_t bs = t->bs;
	int rc, status = EXIT_USAGE;

	if ((rc = extmap_load(t->sfd, &sm))) {
		ioc_err(t->src, "cannot read its extents", -rc);
		goto out;
	}
	if ((rc = extmap_load(t->dfd, &dm))) {
		ioc_err(t->dst, "cannot read its extents", -rc);
		goto out;
	}
	sbuf = malloc(DD_CHUNK);
	dbuf = malloc(DD_CHUNK);
	if (!sbuf || !dbuf) {
		cli_err("out of memory");
		goto out;
	}
	progress_begin(&progress, "comparing", t->len);
	for (uint64_t pos = 0; pos < t->len;) {
		size_t want = (size_t)PMFUSE_MIN(t->len - pos, (uint64_t)DD_CHUNK);
		ssize_t ns = pread_full(t->sfd, sbuf, want, t->so + pos);
		ssize_t nd = ns < 0 ? 0 : pread_full(t->dfd, dbuf, want, t->dof + pos);

		if (ns < 0 || nd < 0 || (size_t)ns < want || (size_t)nd < want) {
			cli_err("%s: %s", ns < 0 || (size_t)ns < want ? t->src : t->dst,
			    ns < 0 || nd < 0 ? strerror((int)-(ns < 0 ? ns : nd)) :
			    "shorter than when it was opened: changed meanwhile");
			goto out;
		}
		for (size_t i = 0; i < want; i += bs) {
			uint64_t sp = extmap_phys(&sm, t->so + pos + i);
			uint64_t dp = extmap_phys(&dm, t->dof + pos + i);
			size_t blen = PMFUSE_MIN(bs, want - i);
			bool equal = !memcmp(sbuf + i, dbuf + i, blen);

			d->sum.scanned += blen;
			if (equal && dp != DD_HOLE && sp != dp) {
				if (!t->run_len)
					t->run = pos + i;
				t->run_len += blen;
				d->sum.dup += blen;
				continue;
			}
			if (!equal)
				d->sum.unequal += blen;
			else if (dp != DD_HOLE)
				d->sum.shared += blen;
			if (dd_flush(d, t))
				goto out;
		}
		pos += want;
		progress_add(&progress, want);
	}
	if (dd_flush(d, t))
		goto out;
	progress_end(&progress);
	status = 0;
out:
	free(sbuf);
	free(dbuf);
	free(sm.e);
	free(dm.e);
	return status;
}

/* dedupe [--range SRC_OFF LEN DST_OFF] SRC DST */
static int dd_src_dst(struct dd *d, const char *src, const char *dst)
{
	struct dd_two t = { .src = src, .dst = dst, .dfd = -1 };
	uint64_t ssize, dsize;
	struct stat ss, ds;
	uint32_t dbs;
	int status = EXIT_USAGE;

	t.sfd = open_file(src, O_RDONLY, -1, &ss, &t.bs);
	if (t.sfd < 0)
		return EXIT_USAGE;
	/* not writable: the daemon still lets the owner (and root) dedupe it */
	t.dfd = open_file(dst, O_RDWR, O_RDONLY, &ds, &dbs);
	if (t.dfd < 0)
		goto out;
	if (ds.st_dev != ss.st_dev) {
		dedupe_err(EXDEV, src, dst, t.bs);
		goto out;
	}
	if (!dd_ranged && ds.st_ino == ss.st_ino) {
		cli_err("'%s' and '%s' are the same file", src, dst);
		goto out;
	}
	ssize = (uint64_t)ss.st_size;
	dsize = (uint64_t)ds.st_size;
	if (dd_ranged) {
		t.so = dd_args[0];
		t.len = dd_args[1];
		t.dof = dd_args[2];
	}
	if (!t.bs || t.so % t.bs || t.dof % t.bs) {
		cli_err("dedupe: offsets must be multiples of the block size (%u)", t.bs);
		goto out;
	}
	if (t.so > ssize || t.len > ssize - t.so || t.dof > dsize || t.len > dsize - t.dof) {
		bool s = t.so > ssize || t.len > ssize - t.so;

		cli_err("dedupe: the range is not inside '%s' (%llu bytes)", s ? src : dst,
		    (unsigned long long)(s ? ssize : dsize));
		goto out;
	}
	if (!t.len)
		t.len = PMFUSE_MIN(ssize - t.so, dsize - t.dof);
	/* a last partial block only when both files end there */
	if (t.len % t.bs && (t.so + t.len != ssize || t.dof + t.len != dsize))
		t.len = t.len / t.bs * t.bs;
	if (ds.st_ino == ss.st_ino && t.so < t.dof + t.len && t.dof < t.so + t.len) {
		cli_err("dedupe: ranges in one file must not overlap");
		goto out;
	}
	/* pages a shared mapping dirtied reach the pool, where the daemon compares */
	if (fsync(t.sfd) || fsync(t.dfd)) {
		cli_err("fsync: %s", strerror(errno));
		goto out;
	}
	status = dd_compare(d, &t);
	if (!status) {
		dd_row("compared", d->sum.scanned);
		dd_row("unequal", d->sum.unequal);
		dd_row("duplicate", d->sum.dup);
		dd_row("already shared", d->sum.shared);
		dd_row("deduped", d->sum.deduped);
		dd_row("differed", d->sum.differed);
	}
out:
	if (t.dfd >= 0)
		close(t.dfd);
	close(t.sfd);
	return status;
}

/* ---- dedupe --scan PATH... ---- */

static void dd_found(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		     void *arg)
{
	struct dd *d = (struct dd *)w;
	struct dd_file *f;
	uint32_t bs = 0;
	int rc;

	(void)top;
	(void)arg;
	rc = probe(fd, &bs);
	close(fd);
	if (rc || !bs) {
		ioc_err(path, "cannot read its extents", rc ? -rc : EPROTO);
		w->status = EXIT_USAGE;
		return;
	}
	if ((uint64_t)st->st_size / bs >= UINT32_MAX) {
		cli_err("%s: too large for --scan (2^32 blocks or more); skipped", path);
		w->status = EXIT_USAGE;
		return;
	}
	if (d->nfile == d->cap_file) {
		size_t cap = d->cap_file ? 2 * d->cap_file : 64;

		f = realloc(d->file, cap * sizeof(*f));
		if (!f || d->nfile >= UINT32_MAX)
			goto oom;
		d->file = f;
		d->cap_file = cap;
	}
	f = &d->file[d->nfile];
	f->path = strdup(path);
	if (!f->path)
		goto oom;
	f->dev = st->st_dev;
	f->ino = st->st_ino;
	f->size = (uint64_t)st->st_size;
	f->blocks = ((uint64_t)st->st_blocks * 512 + bs - 1) / bs;
	f->bs = bs;
	d->nfile++;
	return;
oom:
	cli_err("out of memory");
	w->status = EXIT_USAGE;
}

static void dd_dir(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		   void *arg)
{
	uint32_t bs;
	int rc;

	/* is it on pmfuse at all? (the daemon answers EISDIR) */
	if (top && (rc = probe(fd, &bs)) && rc != -EISDIR) {
		ioc_err(path, "cannot read extents", -rc);
		w->status = EXIT_USAGE;
		close(fd);
		return;
	}
	walk_dir(w, fd, path, st->st_dev, arg);
}

/* Opens file i of the scan again (open_file()), if it is still the same file. */
static int dd_reopen(struct dd *d, uint32_t i, int flags, int flags2, struct stat *st)
{
	const struct dd_file *f = &d->file[i];
	uint32_t bs;
	int fd = open_file(f->path, flags, flags2, st, &bs);

	if (fd >= 0 && (st->st_dev != f->dev || st->st_ino != f->ino || bs != f->bs)) {
		cli_err("%s: replaced meanwhile; skipped", f->path);
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		d->w.status = EXIT_USAGE;
	return fd;
}

static int dd_add_block(struct dd *d, uint64_t key, uint64_t phys, uint32_t file, uint32_t block)
{
	if (d->nblk == d->cap_blk) {
		/* more than the files had mapped when found: grow by an eighth */
		size_t cap = d->cap_blk + d->cap_blk / 8 + 1024;
		struct dd_block *b = realloc(d->blk, cap * sizeof(*b));

		if (!b)
			return -ENOMEM;
		d->blk = b;
		d->cap_blk = cap;
	}
	d->blk[d->nblk++] = (struct dd_block){ .key = key, .phys = phys, .file = file,
					       .block = block };
	return 0;
}

/* Hashes the non-zero mapped blocks of file i (holes read as zeros: not read at all). */
static int dd_read(struct dd *d, uint32_t i, uint8_t *buf)
{
	struct dd_file *f = &d->file[i];
	struct extmap m = { 0 };
	uint64_t found = f->size, bs = f->bs, pos = 0;
	struct stat st;
	int fd, rc = 0;

	fd = dd_reopen(d, i, O_RDONLY, -1, &st);
	f->size = fd < 0 ? 0 : PMFUSE_MIN((uint64_t)st.st_size, (uint64_t)UINT32_MAX * bs);
	if (fd < 0) {
		progress_add(&progress, found);
		return 0;
	}
	if (fsync(fd)) {
		cli_err("%s: fsync: %s", f->path, strerror(errno));
		goto fail;
	}
	if ((rc = extmap_load(fd, &m))) {
		ioc_err(f->path, "cannot read its extents", -rc);
		goto fail;
	}
	for (size_t x = 0; x < m.n; x++) {
		const struct pmfuse_ioc_extent *e = &m.e[x];
		uint64_t end = PMFUSE_MIN(e->logical + e->length, f->size);

		for (uint64_t off = e->logical; off < end;) {
			size_t want = (size_t)PMFUSE_MIN(end - off, (uint64_t)DD_CHUNK);
			ssize_t n = pread_full(fd, buf, want, off);

			if (n < 0) {
				cli_err("%s: read: %s", f->path, strerror((int)-n));
				goto fail;
			}
			for (size_t k = 0; k < (size_t)n; k += bs) {
				size_t blen = (size_t)PMFUSE_MIN(bs, (uint64_t)n - k);
				uint64_t b = (off + k) / bs;

				if (blen < bs && off + k + blen != f->size)
					break;       /* shrank meanwhile */
				if (all_zero(buf + k, blen))
					continue;
				rc = dd_add_block(d, block_hash(buf + k, blen),
						  e->physical + (off + k - e->logical), i,
						  (uint32_t)b);
				if (rc) {
					cli_err("out of memory");
					goto fail;
				}
			}
			if ((size_t)n < want)
				break;
			off += want;
			if (off > pos) {
				progress_add(&progress, off - pos);
				pos = off;
			}
		}
	}
	if (found > pos)
		progress_add(&progress, found - pos);
	d->sum.scanned += f->size;
	d->sum.files++;
	free(m.e);
	close(fd);
	return 0;
fail:
	free(m.e);
	close(fd);
	d->w.status = EXIT_USAGE;
	return rc == -ENOMEM ? rc : 0;
}

/*
 * Heapsort: no memory beyond the array, where qsort may allocate a copy of it (glibc's merge
 * sort), which would double what --scan needs.
 */
typedef bool (*dd_less_fn)(const struct dd *d, const struct dd_block *a,
			   const struct dd_block *b);

static void dd_sift(const struct dd *d, struct dd_block *v, size_t i, size_t n, dd_less_fn less)
{
	for (;;) {
		size_t c = 2 * i + 1;
		struct dd_block t;

		if (c >= n)
			return;
		if (c + 1 < n && less(d, &v[c], &v[c + 1]))
			c++;
		if (!less(d, &v[i], &v[c]))
			return;
		t = v[i];
		v[i] = v[c];
		v[c] = t;
		i = c;
	}
}

static void dd_sort(const struct dd *d, struct dd_block *v, size_t n, dd_less_fn less)
{
	for (size_t i = n / 2; i-- > 0;)
		dd_sift(d, v, i, n, less);
	for (size_t end = n; end-- > 1;) {
		struct dd_block t = v[0];

		v[0] = v[end];
		v[end] = t;
		dd_sift(d, v, 0, end, less);
	}
}

/* By contents, then file system (blocks of different ones cannot share), then file order. */
static bool by_key(const struct dd *d, const struct dd_block *a, const struct dd_block *b)
{
	dev_t da = d->file[a->file].dev, db = d->file[b->file].dev;

	if (a->key != b->key)
		return a->key < b->key;
	if (da != db)
		return da < db;
	if (a->file != b->file)
		return a->file < b->file;
	return a->block < b->block;
}

/* By destination. */
static bool by_dest(const struct dd *d, const struct dd_block *a, const struct dd_block *b)
{
	(void)d;
	if (a->file != b->file)
		return a->file < b->file;
	return a->block < b->block;
}

static uint64_t dd_blen(const struct dd *d, uint32_t file, uint32_t block)
{
	const struct dd_file *f = &d->file[file];
	uint64_t off = (uint64_t)block * f->bs;

	return off >= f->size ? 0 : PMFUSE_MIN((uint64_t)f->bs, f->size - off);
}

/*
 * Turns each group of equal blocks into copies of its first block (key: the source), dropping
 * the first and the copies that map its pool block already. Returns the copies left.
 */
static size_t dd_group(struct dd *d)
{
	struct dd_block *v = d->blk;
	size_t out = 0;

	for (size_t i = 0, j; i < d->nblk; i = j) {
		const struct dd_block first = v[i];

		for (j = i + 1; j < d->nblk && v[j].key == first.key &&
		     d->file[v[j].file].dev == d->file[first.file].dev; j++) {
			uint64_t blen = dd_blen(d, v[j].file, v[j].block);

			if (v[j].phys == first.phys) {
				d->sum.shared += blen;
				continue;
			}
			d->sum.dup += blen;
			v[out] = v[j];
			v[out].key = (uint64_t)first.file << 32 | first.block;
			out++;
		}
	}
	return out;
}

/* The source file's descriptor, from the few kept open. */
static int dd_src_fd(struct dd *d, uint32_t file)
{
	struct stat st;
	unsigned slot;
	int fd;

	for (unsigned i = 0; i < DD_FDS; i++)
		if (d->src[i].fd >= 0 && d->src[i].file == file)
			return d->src[i].fd;
	fd = dd_reopen(d, file, O_RDONLY, -1, &st);
	if (fd < 0)
		return -1;
	slot = d->src_next++ % DD_FDS;
	if (d->src[slot].fd >= 0)
		close(d->src[slot].fd);
	d->src[slot].file = file;
	d->src[slot].fd = fd;
	return fd;
}

/* Dedupes the copies (sorted by destination) in runs; a destination that fails is skipped. */
static void dd_apply(struct dd *d, size_t n)
{
	const struct dd_block *v = d->blk;
	uint32_t dfile = UINT32_MAX;
	bool skip = false;
	struct stat st;
	int dfd = -1;

	for (size_t i = 0, j; i < n; i = j) {
		uint32_t sfile = (uint32_t)(v[i].key >> 32), sblock = (uint32_t)v[i].key;
		uint64_t len = dd_blen(d, v[i].file, v[i].block), bs = d->file[sfile].bs;
		int sfd, rc;

		/* a run: consecutive blocks of one file, copies of consecutive blocks of one */
		for (j = i + 1; j < n && v[j].file == v[i].file &&
		     v[j].block == v[i].block + (j - i) && (uint32_t)(v[j].key >> 32) == sfile &&
		     (uint32_t)v[j].key == sblock + (j - i); j++)
			len += dd_blen(d, v[j].file, v[j].block);
		if (v[i].file != dfile) {
			if (dfd >= 0)
				close(dfd);
			dfile = v[i].file;
			/* not writable: the daemon still lets the owner (and root) dedupe it */
			dfd = dd_reopen(d, dfile, O_RDWR, O_RDONLY, &st);
			skip = dfd < 0;
		}
		if (!skip && (sfd = dd_src_fd(d, sfile)) < 0)
			skip = true;
		if (skip) {
			progress_add(&progress, len);
			continue;
		}
		rc = dd_range(d, sfd, (uint64_t)sblock * bs, dfd, (uint64_t)v[i].block * bs, len,
			      (uint32_t)bs);
		if (rc) {
			dedupe_err(-rc, d->file[sfile].path, d->file[dfile].path, (uint32_t)bs);
			d->w.status = EXIT_USAGE;
			skip = true;
		}
	}
	if (dfd >= 0)
		close(dfd);
}

static int dd_scan_paths(struct dd *d, int argc, char **argv)
{
	uint64_t total = 0, blocks = 0;
	uint8_t *buf = NULL;
	size_t copies;

	d->scan = true;
	d->w.once = true;
	d->w.file = dd_found;
	d->w.dir = dd_dir;
	for (unsigned i = 0; i < DD_FDS; i++)
		d->src[i].fd = -1;
	for (int i = optind; i < argc; i++)
		walk_path(&d->w, AT_FDCWD, argv[i], argv[i], 0, true, NULL);
	for (size_t i = 0; i < d->nfile; i++) {
		total += d->file[i].size;
		blocks += d->file[i].blocks;
	}
	if (blocks < SIZE_MAX / sizeof(*d->blk))
		d->blk = malloc(PMFUSE_MAX(blocks, (uint64_t)1) * sizeof(*d->blk));
	buf = malloc(DD_CHUNK);
	if (!d->blk || !buf) {
		cli_err("out of memory");
		goto fail;
	}
	d->cap_blk = (size_t)blocks;

	progress_begin(&progress, "scanning", total);
	for (size_t i = 0; i < d->nfile; i++)
		if (dd_read(d, (uint32_t)i, buf))
			goto fail;
	progress_end(&progress);
	free(buf);
	buf = NULL;

	dd_sort(d, d->blk, d->nblk, by_key);
	copies = dd_group(d);
	dd_sort(d, d->blk, copies, by_dest);
	progress_begin(&progress, "deduping", d->sum.dup);
	dd_apply(d, copies);
	progress_end(&progress);
	for (unsigned i = 0; i < DD_FDS; i++)
		if (d->src[i].fd >= 0)
			close(d->src[i].fd);

	row("files", "%llu", (unsigned long long)d->sum.files);
	dd_row("scanned", d->sum.scanned);
	dd_row("duplicate", d->sum.dup);
	dd_row("already shared", d->sum.shared);
	dd_row("deduped", d->sum.deduped);
	dd_row("differed", d->sum.differed);
	return d->w.status;
fail:
	progress_end(&progress);
	free(buf);
	return EXIT_USAGE;
}

static int cmd_dedupe(const struct command *cmd, int argc, char **argv)
{
	static const struct option extra[] = {
		{ "range", no_argument, NULL, 'r' },
		{ "scan", no_argument, NULL, 'S' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	struct dd d = { 0 };
	int rc;

	dd_ranged = dd_scan = dd_quiet = false;
	if ((rc = file_opts(cmd, argc, argv, "+hq", extra, dd_opt, 1, INT32_MAX)) >= 0)
		return rc;
	if (dd_scan && dd_ranged) {
		cli_err("dedupe: --range and --scan exclude each other");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	if (!dd_scan && argc - optind != 2) {
		cli_err("dedupe: %s", argc - optind < 2 ? "missing operand" : "too many operands");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	progress.on = !dd_quiet && isatty(STDERR_FILENO);
	if (dd_scan)
		rc = dd_scan_paths(&d, argc, argv);
	else
		rc = dd_src_dst(&d, argv[optind], argv[optind + 1]);
	for (size_t i = 0; i < d.nfile; i++)
		free(d.file[i].path);
	free(d.file);
	free(d.blk);
	free(d.w.seen.slot);
	return rc;
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
			cli_err("unknown command '%s'", argv[1]);
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
	{ "dedupe", "[-q] [--range SRC_OFF LEN DST_OFF] SRC DST | --scan [-q] PATH...",
	  "Make equal blocks share one block: DST's with SRC's, or all under PATHs", cmd_dedupe,
	  "With SRC DST, both files are read through the mount and compared block by block at\n"
	  "the same offsets (with --range: LEN bytes at SRC_OFF of SRC with DST_OFF of DST; LEN 0\n"
	  "means as far as both files go); each run of equal blocks of DST is then made to share\n"
	  "SRC's blocks. The last partial block counts only when both files end there. Offsets\n"
	  "are multiples of the block size; sizes take K, M, G, T suffixes.\n"
	  "With --scan, every block of the regular files under the PATHs is hashed (directories\n"
	  "are walked without leaving their file system; a file with several names counts once),\n"
	  "zero blocks are skipped, and each block is deduped against the first one with the\n"
	  "same contents, consecutive blocks in one call. Memory: 24 bytes per non-zero block\n"
	  "(6 MiB per GiB of data with 4 KiB blocks), and 16 MiB of buffer.\n"
	  "Blocks that already share are left alone, so running again does nothing new. The\n"
	  "daemon compares the bytes again and shares only what is equal, at most 16 MiB per\n"
	  "call: contents, sizes and times never change. DST (the files under PATHs) must be\n"
	  "writable by the caller or owned by it, or the caller have CAP_SYS_ADMIN.\n"
	  "Prints what was compared, duplicate, already shared, deduped, and found different\n"
	  "by the daemon (changed meanwhile); progress on stderr when it is a terminal.\n"
	  "  --range SRC_OFF LEN DST_OFF   compare and dedupe this range only\n"
	  "  --scan                        find duplicate blocks across all files under PATHs\n"
	  "  -q, --quiet                   no progress display\n"
	  "  -h, --help                    show this help\n" },
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

	cli_prog = prog;
	cli_before_err = end_progress_line;
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
		cli_err("no command given");
		usage(stderr);
		return EXIT_USAGE;
	}
	const struct command *cmd = find_command(argv[optind]);
	if (!cmd) {
		cli_err("unknown command '%s'", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	pmfuse_log_set_target(verbose ? PMFUSE_LOG_STDERR : PMFUSE_LOG_QUIET);
	return cmd->run(cmd, argc - optind, argv + optind);
}
