/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl clone and unshare, through PMFUSE_IOC_CLONE_RANGE and PMFUSE_IOC_UNSHARE (the
 * kernel's FICLONE family never reaches a FUSE server). clone never falls back to copying: it
 * shares blocks or fails.
 */
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

/*
 * The clone set dst's mtime and ctime on the pool. With the daemon's writeback cache
 * (pmfuse -o writeback_cache) the kernel keeps its own times of a regular file and takes none
 * from the daemon, so they would not show: if fstat still gives the times of before (st), they
 * are set to now through the kernel, which passes them on. Only the owner may leave atime
 * alone (UTIME_OMIT); anyone who may write the file may touch both.
 */
static void show_times(int dfd, const struct stat *before)
{
	const struct timespec mtime_now[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_NOW } };
	struct stat st;

	if (fstat(dfd, &st) || st.st_mtim.tv_sec != before->st_mtim.tv_sec ||
	    st.st_mtim.tv_nsec != before->st_mtim.tv_nsec)
		return;
	if (futimens(dfd, mtime_now) && errno == EPERM)
		(void)futimens(dfd, NULL);
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
int cmd_clone(const struct command *cmd, int argc, char **argv)
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
	/*
	 * The daemon clones what is on the pool, and the kernel writes back nothing before a
	 * pmfuse ioctl: pages a shared mapping dirtied, or (with -o writeback_cache) any write
	 * not yet written back, must reach the pool first, the destination's too, or their
	 * write-back would land over the cloned blocks later.
	 */
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
	if (fstat(dfd, &ds)) {
		cli_err("%s: %s", dst, strerror(errno));
		goto out;
	}
	if (ioctl(dfd, PMFUSE_IOC_CLONE_RANGE, &a)) {
		int e = errno;

		clone_err(e, src, dst, bs);
		if (!created && !clone_ranged && e != ENOTTY)
			cli_err("%s: was truncated%s", dst, e == ENOSPC ?
			    " and may hold part of the source" : "");
		goto out;
	}
	show_times(dfd, &ds);
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

int cmd_unshare(const struct command *cmd, int argc, char **argv)
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
	} else if (fsync(fd)) {              /* the blocks on the pool are those unshared */
		cli_err("%s: fsync: %s", path, strerror(errno));
		rc = EXIT_USAGE;
	} else if (ioctl(fd, PMFUSE_IOC_UNSHARE, &a)) {
		ioc_err(path, "cannot unshare", errno);
		rc = EXIT_USAGE;
	}
	close(fd);
	return rc;
}
