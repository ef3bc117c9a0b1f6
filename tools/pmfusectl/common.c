/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the pmfusectl commands share (pmfusectl.h): the progress line, option parsing and the
 * usage of a command, and opening and asking files on a pmfuse mount through the pmfuse ioctls
 * (include/pmfuse/ioctl.h). ENOTTY from one of them means the file is not on a pmfuse mount.
 */
#include <stdarg.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

#include "../cli.h"
#include "pmfusectl.h"

struct progress progress;
bool raw;


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

void progress_begin(struct progress *p, const char *what, uint64_t total)
{
	p->what = what;
	p->done = 0;
	p->total = total;
	progress_show(p, true);
}

void progress_add(struct progress *p, uint64_t n)
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
void end_progress_line(void)
{
	progress_break(&progress);
}

/* The phase's last figures, and the end of its line. */
void progress_end(struct progress *p)
{
	progress_show(p, true);
	progress_break(p);
	p->what = NULL;
}

void cmd_usage(const struct command *cmd, FILE *f)
{
	fprintf(f, "Usage: %s %s %s\n%s.\n", prog, cmd->name, cmd->args, cmd->summary);
	if (cmd->details && f == stdout)
		fprintf(f, "\n%s", cmd->details);
}

/*
 * Parses the options every command takes (-h/--help) and checks the count of operands. Returns
 * -1 to go on, else the exit status.
 */
int common_opts(const struct command *cmd, int argc, char **argv, int operands)
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

void row(const char *name, const char *fmt, ...)
{
	va_list ap;
	printf("%s:%*s", name, (int)(19 - PMFUSE_MIN(strlen(name), (size_t)18)), "");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

/* ---- files on a pmfuse mount ----------------------------------------------------------------- */

const char *size_str(uint64_t bytes, char *buf, size_t len)
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
int file_opts(const struct command *cmd, int argc, char **argv, const char *shortopts,
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
void ioc_err(const char *path, const char *what, int e)
{
	if (e == ENOTTY)
		cli_err("%s: not on a pmfuse mount", path);
	else
		cli_err("%s: %s: %s", path, what, strerror(e));
}

/* Calls fn for each mapped extent of the file open on fd, in file order. 0 or -errno. */
int walk_extents(int fd, extent_fn fn, void *arg, uint32_t *block_size)
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
int probe(int fd, uint32_t *bs)
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
int open_file(const char *path, int flags, int flags2, struct stat *st, uint32_t *bs)
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
int range_opt(const struct command *cmd, int argc, char **argv, uint64_t r[3])
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
