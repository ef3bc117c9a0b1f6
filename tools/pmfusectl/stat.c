/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl stat FILE...: each file's extents (PMFUSE_IOC_GET_EXTENTS), their sharing and
 * totals.
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
	/* what the kernel has not written back yet is not on the pool, where the extents are */
	rc = fsync(fd) ? -errno : walk_extents(fd, stat_extent, &sum, NULL);
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

int cmd_stat(const struct command *cmd, int argc, char **argv)
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
