/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl du PATH...: total, exclusive and shared space under paths, like btrfs filesystem
 * du, from the files' extents (PMFUSE_IOC_GET_EXTENTS).
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

	/* what the kernel has not written back yet is not on the pool, where the extents are */
	rc = fsync(fd) ? -errno : walk_extents(fd, du_extent, &f, NULL);
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

	if (top && !walk_top_on_pmfuse(w, fd, path))
		return;
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

int cmd_du(const struct command *cmd, int argc, char **argv)
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
