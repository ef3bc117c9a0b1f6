/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl dedupe SRC DST and dedupe --scan PATH...: the algorithm is described below, at
 * "dedupe".
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

#include "../cli.h"
#include "pmfusectl.h"

/* ---- dedupe --------------------------------------------------------------------------------- */

/*
 * Dedupe makes blocks with equal contents share one pool block, through
 * PMFUSE_IOC_DEDUPE_BLOCKS (issued on the source): the daemon walks both ranges block by block
 * in the pool, compares, and shares every run of equal blocks under one hold of its lock, so a
 * file that changes meanwhile, or a hash collision, costs a compare and nothing else.
 *
 * SRC DST reads no data: it hands the whole range to the daemon (which answers at most 256 MiB
 * per call, and says how far it got) and prints the daemon's counts. --scan asks the daemon for
 * the hash (XXH3, computed in the pool), pool block and refcount of every mapped block of the
 * files under the PATHs (PMFUSE_IOC_BLOCK_HASHES2: about 8 bytes per block cross FUSE, no
 * data; PMFUSE_IOC_BLOCK_HASHES, 32, from an older daemon), from several threads, and
 * keeps one struct dd_block per non-zero block (24 bytes: the only memory that grows with the
 * data), sorts them by hash so that equal blocks meet, makes the block with the most
 * references the source of its group (so blocks that share stay together and a second run
 * finds nothing to do), turns every other block of the group into a copy of it, drops the
 * copies that map its pool block already, sorts again by destination and merges consecutive
 * blocks whose sources are consecutive too into runs, which go to the daemon as above.
 * --dry-run stops before that, having counted the duplicates and the space they would free
 * (pool blocks whose every owner is a copy).
 */
#define DD_FDS 16                    /* sources kept open by --scan */
#define DD_JOBS_MAX 16               /* --jobs */
#define DD_JOBS_DEFAULT 4            /* hashing threads without --jobs, if as many CPUs */

struct dd_sum {
	uint64_t files, scanned, unequal, dup, shared, deduped, differed;
	uint64_t frees;              /* --scan: pool bytes the duplicates would give back */
};

/* A file --scan found. */
struct dd_file {
	char *path;
	dev_t dev;
	ino_t ino;
	uint64_t size;               /* when found, then when read (0: could not be) */
	uint64_t found;              /* the size when found (the progress line's share) */
	uint64_t blocks;             /* mapped blocks when found: the room it needs in blk */
	uint32_t bs;
	/* hashing (dd_hash_all), under its lock */
	uint64_t next;               /* the first block not handed out yet */
	int fd;                      /* open while chunks are left or busy */
	uint32_t busy;               /* chunks being hashed */
	bool opened, bad;            /* bad: an error was reported, it does not count */
};

/* A non-zero block --scan read: 24 bytes, all the memory that grows with the data. */
struct dd_block {
	uint64_t key;                /* the hash of the contents; for a copy, its source:
	                                file << 32 | block */
	uint64_t pref;               /* pool block << DD_REF_BITS | refcount (saturated) */
	uint32_t file, block;
};
#define DD_REF_BITS 20
#define DD_REF_MAX ((1u << DD_REF_BITS) - 1)
#define DD_PHYS(b) ((b)->pref >> DD_REF_BITS)
#define DD_REFS(b) ((uint32_t)((b)->pref & DD_REF_MAX))
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
 * PMFUSE_IOC_DEDUPE_BLOCKS over len bytes at so of sfd onto dof of dfd, in as many calls as the
 * daemon needs (each says how far it got): the daemon compares block by block in the pool and
 * shares the equal ones. Its counts are added to *sum (compared, deduped, same, differ); with
 * d->scan, the progress line moves. 0, or -errno (the caller names the files).
 */
static int dd_range(struct dd *d, int sfd, uint64_t so, int dfd, uint64_t dof, uint64_t len,
		    struct pmfuse_ioc_dedupe_blocks *sum)
{
	for (uint64_t done = 0; done < len;) {
		struct pmfuse_ioc_dedupe_blocks a;

		memset(&a, 0, sizeof(a));
		a.src_offset = so + done;
		a.length = len - done;
		a.dest_fd = dfd;
		a.dest_offset = dof + done;
		if (ioctl(sfd, PMFUSE_IOC_DEDUPE_BLOCKS, &a))
			return -errno;
		if (a.compared > len - done ||
		    a.deduped + a.same + a.differ != a.compared)
			return -EPROTO;
		if (!a.compared)
			break;               /* a file shrank: nothing more to compare */
		sum->compared += a.compared;
		sum->deduped += a.deduped;
		sum->same += a.same;
		sum->differ += a.differ;
		progress_add(&progress, a.compared);
		done += a.compared;
	}
	return 0;
}

/* ---- dedupe SRC DST ---- */

static uint64_t dd_args[3];          /* --range SRC_OFF LEN DST_OFF */
static bool dd_ranged, dd_scan, dd_quiet, dd_dry;
static unsigned dd_jobs;             /* --jobs; 0: as many as CPUs, at most DD_JOBS_DEFAULT */

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
	case 'n':
		dd_dry = true;
		return -1;
	case 'j': {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(optarg, &end, 10);
		if (errno || end == optarg || *end || v < 1 || v > DD_JOBS_MAX) {
			cli_err("dedupe: --jobs takes a number from 1 to %u", DD_JOBS_MAX);
			cmd_usage(cmd, stderr);
			return EXIT_USAGE;
		}
		dd_jobs = (unsigned)v;
		return -1;
	}
	}
	return EXIT_USAGE;
}

static void dd_row(const char *name, uint64_t bytes)
{
	char h[32];

	row(name, "%llu (%s)", (unsigned long long)bytes, pmfuse_human_size(bytes, h, sizeof(h)));
}

/* The two files of SRC DST and the range. */
struct dd_two {
	const char *src, *dst;
	int sfd, dfd;
	uint64_t so, dof, len;
	uint32_t bs;
};

/*
 * Has the daemon compare the range of SRC with DST's block by block and share every run of
 * equal blocks: no byte crosses FUSE. 0 or EXIT_USAGE (the message given).
 */
static int dd_compare(struct dd *d, struct dd_two *t)
{
	struct pmfuse_ioc_dedupe_blocks sum;
	int rc;

	memset(&sum, 0, sizeof(sum));
	progress_begin(&progress, "comparing", t->len);
	rc = dd_range(d, t->sfd, t->so, t->dfd, t->dof, t->len, &sum);
	progress_end(&progress);
	d->sum.scanned += sum.compared;
	d->sum.unequal += sum.differ;
	d->sum.dup += sum.deduped;
	d->sum.shared += sum.same;
	d->sum.deduped += sum.deduped;
	if (!rc)
		return 0;
	dedupe_err(-rc, t->src, t->dst, t->bs);
	return EXIT_USAGE;
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
	if (top && !walk_top_on_pmfuse(w, fd, path))
		return;
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

static int dd_add_block(struct dd *d, const struct pmfuse_ioc_block_hash *h, uint32_t bs,
			uint32_t file)
{
	uint64_t pblock = h->physical / bs;

	if (pblock >> (64 - DD_REF_BITS))
		return -EOVERFLOW;           /* a pool of 2^44 blocks: not made today */
	if (d->nblk == d->cap_blk) {
		/* more than the files had mapped when found: grow by an eighth */
		size_t cap = d->cap_blk + d->cap_blk / 8 + 1024;
		struct dd_block *b = realloc(d->blk, cap * sizeof(*b));

		if (!b)
			return -ENOMEM;
		d->blk = b;
		d->cap_blk = cap;
	}
	d->blk[d->nblk++] = (struct dd_block){
		.key = h->hash,
		.pref = pblock << DD_REF_BITS | PMFUSE_MIN(h->refcount, DD_REF_MAX),
		.file = file,
		.block = (uint32_t)(h->logical / bs),
	};
	return 0;
}

/*
 * Hashing (--scan's first phase) in jobs threads (--jobs; the calling thread is one of them),
 * so that the daemon hashes in as many of its request threads at once: each takes the next
 * chunk of DD_CHUNK blocks of the files in order, reopening a file when it is the first to
 * reach it (fsync there: pages a shared mapping dirtied reach the pool, where the daemon
 * hashes), and closes it when the last chunk is done. A chunk is a whole number of packed
 * calls on a file without holes or zeros, and each call says where the chunk ends. Everything the threads
 * share is under h->lock: the files' cursors, the block array (a chunk's answer is appended
 * whole), the counts and the progress line.
 */
/* blocks: 6 whole packed calls of a file without holes or zeros (one run, 2,036 hashes), 48 MiB
 * of 4 KiB blocks */
#define DD_CHUNK ((uint64_t)(PMFUSE_IOC_HASHES2_WORDS - 3) * 6)

struct dd_hashing {
	struct dd *d;
	pthread_mutex_t lock;
	size_t cur;                  /* the file chunks are handed out from */
	int err;                     /* -ENOMEM: every thread stops */
};

/* Adds file i's bytes of [from, to) that its size when found covered to the progress line. */
static void dd_progress(struct dd *d, uint32_t i, uint64_t from, uint64_t to)
{
	uint64_t found = d->file[i].found;

	if (PMFUSE_MIN(to, found) > PMFUSE_MIN(from, found))
		progress_add(&progress, PMFUSE_MIN(to, found) - PMFUSE_MIN(from, found));
}

static uint64_t dd_nblocks(const struct dd_file *f)
{
	return (f->size + f->bs - 1) / f->bs;
}

/* Under h->lock: closes file i when no chunk of it is left or busy, and counts it. */
static void dd_file_done(struct dd *d, uint32_t i)
{
	struct dd_file *f = &d->file[i];

	if (f->busy || (!f->bad && f->next < dd_nblocks(f)))
		return;
	if (f->fd >= 0) {
		close(f->fd);
		f->fd = -1;
		if (!f->bad) {
			d->sum.scanned += f->size;
			d->sum.files++;
		}
	}
}

/*
 * Under h->lock: the next chunk (file *i, blocks [*from, *to), descriptor *fd), opening its
 * file first if needed. false when nothing is left.
 */
static bool dd_next_chunk(struct dd_hashing *h, uint32_t *i, uint64_t *from, uint64_t *to,
			  int *fd)
{
	struct dd *d = h->d;

	for (; !h->err && h->cur < d->nfile; h->cur++) {
		struct dd_file *f = &d->file[h->cur];
		struct stat st;

		if (!f->opened) {
			f->opened = true;
			f->fd = dd_reopen(d, (uint32_t)h->cur, O_RDONLY, -1, &st);
			if (f->fd < 0) {
				f->size = 0;
				dd_progress(d, (uint32_t)h->cur, 0, f->found);
				continue;
			}
			f->size = PMFUSE_MIN((uint64_t)st.st_size, (uint64_t)UINT32_MAX * f->bs);
			if (fsync(f->fd)) {
				cli_err("%s: fsync: %s", f->path, strerror(errno));
				d->w.status = EXIT_USAGE;
				f->bad = true;
				dd_progress(d, (uint32_t)h->cur, 0, f->size);
			}
			/* what the file no longer has counts as done */
			dd_progress(d, (uint32_t)h->cur, f->size, f->found);
			dd_file_done(d, (uint32_t)h->cur);
		}
		if (f->fd < 0 || f->bad || f->next >= dd_nblocks(f))
			continue;
		*i = (uint32_t)h->cur;
		*from = f->next;
		*to = PMFUSE_MIN(dd_nblocks(f), f->next + DD_CHUNK);
		*fd = f->fd;
		f->next = *to;
		f->busy++;
		return true;
	}
	return false;
}

/* Under h->lock: the non-zero blocks of a PMFUSE_IOC_BLOCK_HASHES answer into the block
 * array; the blocks of file i's chunk ending at block `to` only. */
static int dd_add_v1(struct dd *d, uint32_t i, const struct pmfuse_ioc_block_hashes *x,
		     uint64_t to)
{
	const struct dd_file *f = &d->file[i];

	for (uint32_t k = 0; k < x->count; k++) {
		int rc;

		/* past the chunk, or grown since opened: what was found is enough */
		if (x->h[k].logical >= to * f->bs || x->h[k].logical >= f->size)
			break;
		if (x->h[k].flags & PMFUSE_HASH_ZERO)
			continue;
		rc = dd_add_block(d, &x->h[k], f->bs, i);
		if (rc)
			return rc;
	}
	return 0;
}

/* The same for a PMFUSE_IOC_BLOCK_HASHES2 answer (runs, then a hash per block of them).
 * -EPROTO if it does not add up. */
static int dd_add_v2(struct dd *d, uint32_t i, const struct pmfuse_ioc_block_hashes2 *x,
		     uint64_t to)
{
	const struct dd_file *f = &d->file[i];
	const uint64_t *hash = &x->data[3 * (uint64_t)x->runs];
	uint64_t left = x->hashes;

	if (x->runs > PMFUSE_IOC_HASHES2_WORDS / 3 ||
	    3 * (uint64_t)x->runs + x->hashes > PMFUSE_IOC_HASHES2_WORDS)
		return -EPROTO;
	for (uint32_t r = 0; r < x->runs; r++) {
		struct pmfuse_ioc_hash_run run;

		memcpy(&run, &x->data[3 * (uint64_t)r], sizeof(run));
		if (run.blocks > left || run.logical % f->bs || run.physical % f->bs)
			return -EPROTO;
		for (uint32_t k = 0; k < run.blocks; k++) {
			struct pmfuse_ioc_block_hash h = {
				.logical = run.logical + (uint64_t)k * f->bs,
				.physical = run.physical + (uint64_t)k * f->bs,
				.hash = *hash++,
				.refcount = run.refcount,
			};
			int rc;

			if (h.logical >= to * f->bs || h.logical >= f->size)
				return 0;
			rc = dd_add_block(d, &h, f->bs, i);
			if (rc)
				return rc;
		}
		left -= run.blocks;
	}
	return left ? -EPROTO : 0;
}

/* The answer of either form: the last block it lists (its byte offset), its next, count. */
union dd_answer {
	struct pmfuse_ioc_block_hashes v1;
	struct pmfuse_ioc_block_hashes2 v2;
};

/* Set once a daemon said it does not know PMFUSE_IOC_BLOCK_HASHES2 (older than this tool),
 * or from the start with PMFUSECTL_HASHES_V1=1 in the environment (tests of that path). */
static atomic_bool dd_hashes_v1;

/*
 * One call for the hashes of file i from byte start on, up to block `to`, in the packed form
 * or, from a daemon that does not know it, the first. *last: one past the last block listed
 * (0: none), *next: where to go on. 0 or an errno.
 */
static int dd_call(const struct dd_file *f, int fd, uint64_t start, uint64_t to,
		   union dd_answer *x, bool *v1, uint64_t *last, uint64_t *next)
{
	*v1 = atomic_load(&dd_hashes_v1);
	if (!*v1) {
		memset(x, 0, offsetof(struct pmfuse_ioc_block_hashes2, data));
		x->v2.start = start;
		x->v2.end = to * f->bs;
		if (!ioctl(fd, PMFUSE_IOC_BLOCK_HASHES2, &x->v2)) {
			if (x->v2.block_size != f->bs)
				return EPROTO;
			*next = x->v2.next;
			*last = 0;
			if (x->v2.runs) {
				struct pmfuse_ioc_hash_run run;

				memcpy(&run, &x->v2.data[3 * (uint64_t)(x->v2.runs - 1)],
				       sizeof(run));
				*last = run.logical / f->bs + run.blocks;
			}
			return 0;
		}
		if (errno != ENOTTY)
			return errno;
		atomic_store(&dd_hashes_v1, true);
		*v1 = true;
	}
	memset(x, 0, offsetof(struct pmfuse_ioc_block_hashes, h));
	x->v1.start = start;
	if (ioctl(fd, PMFUSE_IOC_BLOCK_HASHES, &x->v1))
		return errno;
	if (x->v1.block_size != f->bs || x->v1.count > PMFUSE_IOC_HASHES_MAX)
		return EPROTO;
	*next = x->v1.next;
	*last = x->v1.count ? x->v1.h[x->v1.count - 1].logical / f->bs + 1 : 0;
	return 0;
}

/*
 * Gets the hashes of the non-zero mapped blocks of blocks [from, to) of file i from the daemon
 * (no data crosses FUSE: 8 bytes a block, 32 from an older daemon). Called and returns with
 * h->lock held; lets it go around each call. 0, or -ENOMEM (said already).
 */
static int dd_hash_chunk(struct dd_hashing *h, uint32_t i, int fd, uint64_t from, uint64_t to,
			 union dd_answer *x)
{
	struct dd *d = h->d;
	struct dd_file *f = &d->file[i];
	uint64_t bs = f->bs, pos = from, start = from * bs, last = 0, next = UINT64_MAX;
	int rc = 0, e;
	bool v1;

	for (;;) {
		pthread_mutex_unlock(&h->lock);
		e = dd_call(f, fd, start, to, x, &v1, &last, &next);
		pthread_mutex_lock(&h->lock);
		if (!e) {
			rc = v1 ? dd_add_v1(d, i, &x->v1, to) : dd_add_v2(d, i, &x->v2, to);
			e = rc == -EPROTO ? EPROTO : 0;
		}
		if (e) {
			ioc_err(f->path, "cannot get its block hashes", e);
			d->w.status = EXIT_USAGE;
			f->bad = true;
			break;
		}
		if (rc) {
			cli_err("%s", rc == -ENOMEM ? "out of memory" : strerror(-rc));
			d->w.status = EXIT_USAGE;
			f->bad = true;
			break;
		}
		if (last > pos) {
			uint64_t now = PMFUSE_MIN(last, to);

			dd_progress(d, i, pos * bs, now * bs);
			pos = now;
		}
		/* stop on no progress rather than spin on a daemon that misbehaves */
		if (next == UINT64_MAX || next <= start || next >= to * bs ||
		    (v1 && !x->v1.count))
			break;
		start = next;
	}
	dd_progress(d, i, pos * bs, to * bs);
	return rc == -ENOMEM ? rc : 0;
}

static void *dd_hash_thread(void *arg)
{
	struct dd_hashing *h = arg;
	union dd_answer *x = malloc(sizeof(*x));
	uint64_t from, to;
	uint32_t i;
	int fd;

	pthread_mutex_lock(&h->lock);
	if (!x) {
		cli_err("out of memory");
		h->d->w.status = EXIT_USAGE;
		h->err = -ENOMEM;
	}
	while (dd_next_chunk(h, &i, &from, &to, &fd)) {
		if (dd_hash_chunk(h, i, fd, from, to, x))
			h->err = -ENOMEM;
		h->d->file[i].busy--;
		dd_file_done(h->d, i);
	}
	pthread_mutex_unlock(&h->lock);
	free(x);
	return NULL;
}

/* The hashes of every file found, in jobs threads. 0, or -ENOMEM (said already). */
static int dd_hash_all(struct dd *d, unsigned jobs)
{
	struct dd_hashing h = { .d = d };
	pthread_t t[DD_JOBS_MAX];
	unsigned n = 0;

	pthread_mutex_init(&h.lock, NULL);
	atomic_store(&dd_hashes_v1, getenv("PMFUSECTL_HASHES_V1") &&
		     !strcmp(getenv("PMFUSECTL_HASHES_V1"), "1"));
	for (size_t i = 0; i < d->nfile; i++) {
		struct dd_file *f = &d->file[i];

		f->found = f->size;
		f->next = 0;
		f->fd = -1;
		f->busy = 0;
		f->opened = f->bad = false;
	}
	/* no more threads than chunks: a few small files need no second one */
	for (size_t i = 0, chunks = 0; i < d->nfile && n + 1 < jobs; i++) {
		const struct dd_file *f = &d->file[i];

		chunks += ((f->size + f->bs - 1) / f->bs + DD_CHUNK - 1) / DD_CHUNK;
		while (n + 1 < jobs && n + 1 < chunks &&
		       !pthread_create(&t[n], NULL, dd_hash_thread, &h))
			n++;
		if (n + 1 < jobs && n + 1 < chunks)
			break;                   /* cannot start more: do with those */
	}
	dd_hash_thread(&h);
	for (unsigned k = 0; k < n; k++)
		pthread_join(t[k], NULL);
	pthread_mutex_destroy(&h.lock);
	return h.err;
}

/*
 * Sorting without memory beyond the array (qsort may allocate a copy of it, glibc's merge sort,
 * which would double what --scan needs): an in-place most-significant-byte-first radix sort on
 * a 64-bit key whose order is the first criterion of the full order `less`: the hash (by_key)
 * or file and block (by_dest). Buckets of up to DD_SMALL blocks get an insertion sort by
 * `less`, blocks with equal keys (a group of equal contents) a heapsort by `less`. The
 * heapsort alone (with an indirect compare per step) took ~60% of the client's CPU time in a
 * scan of 4 x 256 MiB.
 */
typedef bool (*dd_less_fn)(const struct dd *d, const struct dd_block *a,
			   const struct dd_block *b);
typedef uint64_t (*dd_key_fn)(const struct dd_block *b);

#define DD_SMALL 24

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

static void dd_heapsort(const struct dd *d, struct dd_block *v, size_t n, dd_less_fn less)
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

static void dd_insertion(const struct dd *d, struct dd_block *v, size_t n, dd_less_fn less)
{
	for (size_t i = 1; i < n; i++) {
		struct dd_block t = v[i];
		size_t j = i;

		for (; j > 0 && less(d, &t, &v[j - 1]); j--)
			v[j] = v[j - 1];
		v[j] = t;
	}
}

/*
 * One level of the radix sort of v[0, n), whose keys agree above bit *shift + 8: skips the
 * bytes all keys share, then moves each block to the bucket of its key byte at *shift, whose
 * sizes it leaves in count. false (all sorted already) when the rest was for the small
 * sorts: n is small, or all keys are equal.
 */
static bool dd_partition(const struct dd *d, struct dd_block *v, size_t n, int *shift,
			 dd_key_fn key, dd_less_fn less, size_t count[256])
{
	size_t next[256], end[256], at = 0;

	memset(count, 0, 256 * sizeof(count[0]));
	for (;;) {
		if (n <= DD_SMALL) {
			dd_insertion(d, v, n, less);
			return false;
		}
		if (*shift < 0) {            /* equal keys: the rest of the order */
			dd_heapsort(d, v, n, less);
			return false;
		}
		for (size_t i = 0; i < n; i++)
			count[(key(&v[i]) >> *shift) & 255]++;
		if (count[(key(&v[0]) >> *shift) & 255] != n)
			break;
		/* one bucket: on to the next byte without moving anything */
		count[(key(&v[0]) >> *shift) & 255] = 0;
		*shift -= 8;
	}
	for (unsigned b = 0; b < 256; b++) {
		next[b] = at;
		at += count[b];
		end[b] = at;
	}
	/* each block to its bucket, by cycles of swaps */
	for (unsigned b = 0; b < 256; b++) {
		while (next[b] < end[b]) {
			struct dd_block t = v[next[b]];
			unsigned c = (unsigned)(key(&t) >> *shift) & 255;

			while (c != b) {
				struct dd_block u = v[next[c]];

				v[next[c]++] = t;
				t = u;
				c = (unsigned)(key(&t) >> *shift) & 255;
			}
			v[next[b]++] = t;
		}
	}
	return true;
}

/* Sorts v[0, n), whose keys agree above bit shift + 8, by key byte (shift) and below. */
static void dd_radix(const struct dd *d, struct dd_block *v, size_t n, int shift, dd_key_fn key,
		     dd_less_fn less)
{
	size_t count[256];

	if (!dd_partition(d, v, n, &shift, key, less, count))
		return;
	for (size_t b = 0, lo = 0; b < 256; b++) {
		if (count[b] > 1)
			dd_radix(d, v + lo, count[b], shift - 8, key, less);
		lo += count[b];
	}
}

/* The buckets [b0, b1) of a partitioned array, for one thread to sort. */
struct dd_sort_part {
	const struct dd *d;
	struct dd_block *v;
	const size_t *count;
	unsigned b0, b1;
	int shift;
	dd_key_fn key;
	dd_less_fn less;
};

static void *dd_sort_buckets(void *arg)
{
	const struct dd_sort_part *p = arg;
	size_t lo = 0;

	for (unsigned b = 0; b < p->b0; b++)
		lo += p->count[b];
	for (unsigned b = p->b0; b < p->b1; b++) {
		if (p->count[b] > 1)
			dd_radix(p->d, p->v + lo, p->count[b], p->shift - 8, p->key, p->less);
		lo += p->count[b];
	}
	return NULL;
}

/*
 * Sorts v[0, n). A large array is partitioned once, then its buckets are sorted in two threads
 * (halves by blocks) when jobs allows: the sort by hash took ~10 ms of a 1 GiB scan.
 */
#define DD_SORT_PAR_MIN 16384

static void dd_sort(const struct dd *d, struct dd_block *v, size_t n, dd_key_fn key,
		    dd_less_fn less, unsigned jobs)
{
	struct dd_sort_part lo, hi;
	size_t count[256], half = 0;
	int shift = 56;
	unsigned b;
	pthread_t t;

	if (jobs < 2 || n < DD_SORT_PAR_MIN) {
		dd_radix(d, v, n, 56, key, less);
		return;
	}
	if (!dd_partition(d, v, n, &shift, key, less, count))
		return;
	for (b = 0; b < 256 && half + count[b] <= n / 2; b++)
		half += count[b];
	lo = (struct dd_sort_part){ d, v, count, 0, b, shift, key, less };
	hi = (struct dd_sort_part){ d, v, count, b, 256, shift, key, less };
	if (pthread_create(&t, NULL, dd_sort_buckets, &hi)) {
		dd_sort_buckets(&lo);
		dd_sort_buckets(&hi);
		return;
	}
	dd_sort_buckets(&lo);
	pthread_join(t, NULL);
}

/*
 * By contents, then file system (blocks of different ones cannot share), then the most
 * references first (the source of the group), then pool block (the copies that map one block
 * meet), then file order.
 */
static bool by_key(const struct dd *d, const struct dd_block *a, const struct dd_block *b)
{
	dev_t da = d->file[a->file].dev, db = d->file[b->file].dev;

	if (a->key != b->key)
		return a->key < b->key;
	if (da != db)
		return da < db;
	if (DD_REFS(a) != DD_REFS(b))
		return DD_REFS(a) > DD_REFS(b);
	if (DD_PHYS(a) != DD_PHYS(b))
		return DD_PHYS(a) < DD_PHYS(b);
	if (a->file != b->file)
		return a->file < b->file;
	return a->block < b->block;
}

static uint64_t key_of(const struct dd_block *b)
{
	return b->key;
}

/* By destination. */
static bool by_dest(const struct dd *d, const struct dd_block *a, const struct dd_block *b)
{
	(void)d;
	if (a->file != b->file)
		return a->file < b->file;
	return a->block < b->block;
}

static uint64_t dest_of(const struct dd_block *b)
{
	return (uint64_t)b->file << 32 | b->block;
}

static uint64_t dd_blen(const struct dd *d, uint32_t file, uint32_t block)
{
	const struct dd_file *f = &d->file[file];
	uint64_t off = (uint64_t)block * f->bs;

	return off >= f->size ? 0 : PMFUSE_MIN((uint64_t)f->bs, f->size - off);
}

/*
 * Turns each group of equal blocks into copies of its first block (key: the source), dropping
 * the first and the copies that map its pool block already. The first is the block with the
 * most references (by_key), so that the blocks of a group that share already stay, a second
 * run finds nothing to do, and a run over a partly deduped tree joins the rest to the largest
 * sharing set. Counts the space the copies would give back: a pool block whose every owner
 * is a copy here (refcount reached within the group; a saturated count never is). Returns the
 * copies left.
 */
static size_t dd_group(struct dd *d)
{
	struct dd_block *v = d->blk;
	size_t out = 0;

	for (size_t i = 0, j; i < d->nblk; i = j) {
		const struct dd_block first = v[i];
		uint64_t owners = 0;

		for (j = i + 1; j < d->nblk && v[j].key == first.key &&
		     d->file[v[j].file].dev == d->file[first.file].dev; j++) {
			uint64_t blen = dd_blen(d, v[j].file, v[j].block);

			if (DD_PHYS(&v[j]) == DD_PHYS(&first)) {
				d->sum.shared += blen;
				continue;
			}
			d->sum.dup += blen;
			/* copies of one pool block are adjacent: count them */
			owners = j > i + 1 && DD_PHYS(&v[j - 1]) == DD_PHYS(&v[j]) ? owners + 1 : 1;
			if (owners == DD_REFS(&v[j]) && DD_REFS(&v[j]) < DD_REF_MAX)
				d->sum.frees += d->file[v[j].file].bs;
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
	struct pmfuse_ioc_dedupe_blocks got;
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
		memset(&got, 0, sizeof(got));
		rc = dd_range(d, sfd, (uint64_t)sblock * bs, dfd, (uint64_t)v[i].block * bs, len,
			      &got);
		/* what the daemon did not share had changed since it was hashed */
		d->sum.deduped += got.deduped;
		d->sum.differed += len - got.deduped;
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
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned jobs = dd_jobs ? dd_jobs :
		(unsigned)PMFUSE_MAX(1, PMFUSE_MIN(cpus, (long)DD_JOBS_DEFAULT));
	uint64_t total = 0, blocks = 0;
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
	if (!d->blk) {
		cli_err("out of memory");
		goto fail;
	}
	d->cap_blk = (size_t)blocks;

	progress_begin(&progress, "scanning", total);
	if (dd_hash_all(d, jobs))
		goto fail;
	progress_end(&progress);

	dd_sort(d, d->blk, d->nblk, key_of, by_key, jobs);
	copies = dd_group(d);
	if (!dd_dry) {
		dd_sort(d, d->blk, copies, dest_of, by_dest, jobs);
		progress_begin(&progress, "deduping", d->sum.dup);
		dd_apply(d, copies);
		progress_end(&progress);
	}
	for (unsigned i = 0; i < DD_FDS; i++)
		if (d->src[i].fd >= 0)
			close(d->src[i].fd);

	row("files", "%llu", (unsigned long long)d->sum.files);
	dd_row("scanned", d->sum.scanned);
	dd_row("duplicate", d->sum.dup);
	dd_row("already shared", d->sum.shared);
	dd_row(dd_dry ? "would free" : "freed (expected)", d->sum.frees);
	dd_row("deduped", d->sum.deduped);
	dd_row("differed", d->sum.differed);
	return d->w.status;
fail:
	progress_end(&progress);
	return EXIT_USAGE;
}

int cmd_dedupe(const struct command *cmd, int argc, char **argv)
{
	static const struct option extra[] = {
		{ "range", no_argument, NULL, 'r' },
		{ "scan", no_argument, NULL, 'S' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "jobs", required_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	struct dd d = { 0 };
	int rc;

	dd_ranged = dd_scan = dd_quiet = dd_dry = false;
	dd_jobs = 0;
	if ((rc = file_opts(cmd, argc, argv, "+hqnj:", extra, dd_opt, 1, INT32_MAX)) >= 0)
		return rc;
	if ((dd_dry || dd_jobs) && !dd_scan) {
		cli_err("dedupe: --%s goes with --scan", dd_dry ? "dry-run" : "jobs");
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
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
