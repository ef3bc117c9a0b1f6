/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Walking trees for du and dedupe --scan (struct walk in pmfusectl.h): depth first, one open
 * directory per level, a file with several names visited once (a hash set of (dev, ino)).
 */
#include <dirent.h>
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

/* ---- walking trees (du, dedupe --scan) ------------------------------------------------------ */

/* Whether (dev, ino) is in the set; adds it if not. */
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

bool walk_top_on_pmfuse(struct walk *w, int fd, const char *path)
{
	uint32_t bs;
	int rc = probe(fd, &bs);

	if (rc && rc != -EISDIR) {
		ioc_err(path, "cannot read extents", -rc);
		w->status = EXIT_USAGE;
		close(fd);
		return false;
	}
	return true;
}

void walk_dir(struct walk *w, int fd, const char *path, dev_t dev, void *arg)
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
void walk_path(struct walk *w, int dirfd, const char *name, const char *path, dev_t dev,
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
