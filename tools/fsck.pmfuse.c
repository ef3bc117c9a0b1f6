/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * fsck.pmfuse: check a pmfuse pool, and with -p or -y repair it, with e2fsck's conventions
 * (options, phases, a summary line, exit codes). -n (the default) never writes; -p and -y map
 * the pool writable (taking the exclusive lock), check it, repair it through fs/repair.h and
 * check it again: what that last check still finds is reported as left uncorrected.
 *
 * Order of work:
 *   1. parse (usage errors exit 16);
 *   2. -n: map the pool read-only (PMFUSE_POOL_RDONLY: the mapping cannot be written, so nothing
 *      in this program can change the pool), then take a SHARED flock on it: a mounted pool (the
 *      daemon holds the exclusive lock) is refused, naming the holder, and while the check runs
 *      no daemon or mkfs can take the pool. -p, -y: map it writable, which takes the
 *      EXCLUSIVE lock (a mounted pool is refused the same way);
 *   3. phase 1, superblocks and log: both copies probed, the volume opened read-only (-p, -y:
 *      with PMFUSE_VOL_REPAIR, which recovers the log and rewrites a bad copy as a mount does). A
 *      transaction left in the log is reported as needing recovery (mounting replays it); the
 *      volume then shows the metadata as it is before the rollback, which the later phases
 *      check as it is, and the summary says so. Like e2fsck, a pool marked clean with both
 *      superblocks current and an empty log is not checked further without -f;
 *   4. phase 2, allocator and b+trees: the bitmap, every tree's structure and records, then
 *      refcounts and exact block accounting (fs/check.h); from here on the pool's memo
 *      (pool.h) lets every later pass skip what an earlier one verified of an unchanged block;
 *   5. phase 3, namespace: entries, link counts, "..", reachability, the orphan list;
 *   6. with -b, phase 4: the platform's bad-block list (libpmem2; dax devices and files on
 *      fsdax) and the file blocks on it, each a problem; unavailable on other pool files;
 *   7. with -p or -y and problems found: phase 5 repairs (fs/repair.h), phase 6 checks again;
 *      what it still finds is "left";
 *   8. the summary; exit 0 (no problem), 1 (all repaired), 4 (problems left uncorrected).
 * A memory error (SIGBUS) while reading the pool stops the check with a problem naming the
 * block (the recovery point of pool.h), instead of killing fsck.
 * Every problem is one line on stdout as it is found. Operational errors (cannot open, in use,
 * out of memory) go to stderr and exit 8; SIGINT and SIGTERM exit 32 at once (nothing to undo:
 * nothing was written). As e2fsck's, the status is a sum: 4 is added to 8 or 32 when problems
 * had been found before.
 *
 * The checking itself lives in src/fs/check.c; this file parses, opens, prints and counts.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "fs/check.h"
#include "fs/fs.h"
#include "fs/repair.h"
#include "meta/alloc.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "util/util.h"

#include "cli.h"

/* Exit codes of fsck(8). */
#define FSCK_OK          0
#define FSCK_CORRECTED   1
#define FSCK_UNCORRECTED 4
#define FSCK_ERROR       8
#define FSCK_USAGE       16
#define FSCK_CANCELED    32

#define ULL(x) ((unsigned long long)(x))

static const char *prog = "fsck.pmfuse";

struct args {
	const char *path;
	bool force, verbose, quiet;
	bool badblocks;         /* -b: list the files on the platform's bad blocks */
	char repair;            /* 'p' (also -a), 'y', or 0 */
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [-n|-p|-y] [-f] [-b] [-v] [-q] POOL\n"
		"Check the pmfuse filesystem in POOL (a /dev/dax device or a pool file), and\n"
		"repair it with -p or -y.\n"
		"\n"
		"  -n                check read-only, changing nothing (the default)\n"
		"  -p, -a            preen: make the repairs that need no decision (bitmap,\n"
		"                    refcounts, link counts, sizes, orphan list, superblock copy,\n"
		"                    log recovery); anything else is left and exits 4\n"
		"  -y                make every repair, dropping what cannot be read\n"
		"  -f, --force       check even a pool marked clean\n"
		"  -b, --badblocks   also list the files on the platform's bad blocks (dax\n"
		"                    devices, files on fsdax); implies -f\n"
		"  -v, --verbose     also print the library's diagnostics and detailed counts\n"
		"  -q, --quiet       print nothing but problems and repairs\n"
		"  -h, --help        show this help and exit\n"
		"  -V, --version     show the version and exit\n"
		"\n"
		"Exit status (a sum, as e2fsck's): 0 no problems, 1 problems corrected, 4 problems\n"
		"left uncorrected, 8 operational error (cannot open, in use, out of memory),\n"
		"16 usage error, 32 interrupted.\n",
		prog);
}


/* ---- output: phases, progress, problems ------------------------------------------------------ */

/* A problem was reported: an interrupted run's status adds 4 (e2fsck sums its conditions). */
static volatile sig_atomic_t found_problems;

struct out {
	const char *path;
	bool quiet;
	bool tty;                  /* stdout is a terminal (and not -q): progress is shown */
	const char *phase;         /* the phase line, redrawn under a progress figure */
	bool line_open;            /* the terminal's cursor is on the phase line */
	struct timespec last;      /* last progress drawn */
	uint64_t problems;
	uint64_t fixed, left;      /* repairs made, problems a repair left */
	bool recheck;              /* the check after a repair: problems are "left" */
};

static void phase_end(struct out *o)
{
	if (o->line_open) {
		printf("\r%s\033[K\n", o->phase);
		o->line_open = false;
	}
	o->phase = NULL;
	fflush(stdout);
}

static void phase_begin(struct out *o, const char *name)
{
	phase_end(o);
	if (o->quiet)
		return;
	o->phase = name;
	if (o->tty) {
		fputs(name, stdout);
		o->line_open = true;
	} else {
		puts(name);
	}
	fflush(stdout);
}

/* A line of its own while a phase line may be open on the terminal. */
static void out_line(struct out *o, const char *prefix, const char *msg)
{
	if (o->line_open)
		fputs("\r\033[K", stdout);
	printf("%s%s\n", prefix, msg);
	if (o->line_open)
		fputs(o->phase, stdout);
	fflush(stdout);
}

static void on_problem(void *arg, const char *msg)
{
	struct out *o = arg;

	if (o->recheck) {
		o->left++;
		out_line(o, "left: ", msg);
		return;
	}
	o->problems++;
	found_problems = 1;
	out_line(o, "", msg);
}

static void on_fixed(void *arg, const char *msg)
{
	struct out *o = arg;

	o->fixed++;
	out_line(o, "fixed: ", msg);
}

static void on_left(void *arg, const char *msg)
{
	struct out *o = arg;

	o->left++;
	out_line(o, "left: ", msg);
}

static void on_note(void *arg, const char *msg)
{
	struct out *o = arg;

	if (!o->quiet)
		out_line(o, "note: ", msg);
}

__attribute__((format(printf, 2, 3)))
static void problem(struct out *o, const char *fmt, ...)
{
	char buf[1200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	on_problem(o, buf);
}

__attribute__((format(printf, 2, 3)))
static void note(struct out *o, const char *fmt, ...)
{
	char buf[1200];
	va_list ap;

	if (o->quiet)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	out_line(o, "note: ", buf);
}

/* "Phase 3: namespace  52% (520000 of 1000000 inodes)", at most four times a second. */
static int on_progress(void *arg, uint64_t done, uint64_t total, const char *unit)
{
	struct out *o = arg;
	struct timespec now;
	int pct;

	if (!o->tty || !o->phase)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (done < total && (now.tv_sec - o->last.tv_sec) * 1000000000L +
	    (now.tv_nsec - o->last.tv_nsec) < 250000000L)
		return 0;
	o->last = now;
	pct = total ? (int)(done * 100 / total) : 100;
	printf("\r%s  %3d%% (%llu of %llu %s)\033[K", o->phase, pct, ULL(done), ULL(total), unit);
	o->line_open = true;
	fflush(stdout);
	return 0;
}

/* ---- signals -------------------------------------------------------------------------------- */

static volatile sig_atomic_t stdout_tty, repairing;

/* A check wrote nothing, and a repair's every change is a transaction that the next open rolls
 * back or finds committed: say so and go (async-signal-safe calls only). */
static void on_signal(int sig)
{
	static const char clear[] = "\r\033[K";
	static const char msg[] = "fsck.pmfuse: interrupted; nothing was changed\n";
	static const char rmsg[] = "fsck.pmfuse: interrupted during repair; every change made "
				   "is whole, run fsck again to finish\n";
	ssize_t r;

	(void)sig;
	if (stdout_tty)
		r = write(STDOUT_FILENO, clear, sizeof(clear) - 1);
	if (repairing)
		r = write(STDERR_FILENO, rmsg, sizeof(rmsg) - 1);
	else
		r = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)r;
	_exit(FSCK_CANCELED | (found_problems ? FSCK_UNCORRECTED : 0));
}

static void catch_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* ---- arguments ------------------------------------------------------------------------------ */

static int parse(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "badblocks", no_argument, NULL, 'b' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	char mode = 0;   /* the -n / -p / -y choice, as e2fsck: one of them at most */
	int c;

	memset(a, 0, sizeof(*a));
	while ((c = getopt_long(argc, argv, "nfbvqpayhV", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
		case 'p':
		case 'a':
		case 'y':
			if (c == 'a')
				c = 'p';
			if (mode && mode != c) {
				cli_err("only one of the options -p/-a, -n or -y may be given");
				return FSCK_USAGE;
			}
			mode = (char)c;
			break;
		case 'f': a->force = true; break;
		case 'b': a->badblocks = a->force = true; break;
		case 'v': a->verbose = true; break;
		case 'q': a->quiet = true; break;
		case 'h':
			usage(stdout);
			exit(FSCK_OK);
		case 'V':
			printf("%s (pmfuse) %s, on-media format version %u\n", prog, PMFUSE_VERSION,
			       PMFUSE_FORMAT_VERSION);
			exit(FSCK_OK);
		default:
			usage(stderr);
			return FSCK_USAGE;
		}
	}
	if (optind != argc - 1) {
		cli_err(optind >= argc ? "no POOL given" : "too many arguments");
		usage(stderr);
		return FSCK_USAGE;
	}
	a->path = argv[optind];
	a->repair = mode == 'n' ? 0 : mode;
	return 0;
}

/* ---- opening -------------------------------------------------------------------------------- */

/*
 * Takes a shared flock on path (kept open in *fd until exit): fails while the daemon (or mkfs)
 * holds the exclusive one, and keeps them out while the check runs. 0, or FSCK_ERROR with the
 * message printed.
 */
static int lock_shared(const char *path, int *fd)
{
	char who[128];

	*fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (*fd < 0) {
		cli_err("%s: cannot open: %s", path, strerror(errno));
		return FSCK_ERROR;
	}
	int rc = pmfuse_pool_flock(*fd, path, LOCK_SH);
	if (!rc)
		return 0;
	if (rc == -EBUSY) {
		pmfuse_pool_lock_holder(path, who, sizeof(who));
		cli_err("%s: in use by %s (mounted?); unmount it before checking", path, who);
	} else {
		cli_err("%s: cannot lock: %s", path, strerror(-rc));
	}
	close(*fd);
	*fd = -1;
	return FSCK_ERROR;
}

static int open_pool(const char *path, bool repair, struct pmfuse_pool **pool)
{
	/* a repair maps writable, which takes the exclusive lock: a mounted pool is refused */
	int rc = pmfuse_pool_open(path, repair ? 0 : PMFUSE_POOL_RDONLY, pool);

	if (rc == -EBUSY) {
		char who[128];

		pmfuse_pool_lock_holder(path, who, sizeof(who));
		cli_err("%s: in use by %s (mounted?); unmount it before repairing", path, who);
		return FSCK_ERROR;
	}
	if (rc == -EINVAL)
		cli_err("%s: not a usable pool (empty, or neither a regular file nor a dax device)",
		    path);
	else if (rc)
		cli_err("%s: cannot open: %s", path, strerror(-rc));
	return rc ? FSCK_ERROR : 0;
}

/* ---- phase 1 -------------------------------------------------------------------------------- */

/*
 * What the volume layer tolerated on a read-only open with a pending log, from its notes: a
 * state block that fails its checks (possibly half changed by the unfinished transaction). It
 * comes last in the notes; the others (superblock copies, the log) phase 1 has said already.
 */
static void volume_notes(struct out *o, const char *msg)
{
	const char *state = strstr(msg, "state block ");

	if (state)
		note(o, "%s", state);
}

/*
 * Superblocks and log. Returns 0 to go on (*vol opened), FSCK_UNCORRECTED when the pool cannot
 * be checked further because of damage (reported), FSCK_ERROR on operational errors.
 */
static int phase1(struct out *o, struct pmfuse_pool *pool, struct pmfuse_sb_probe *probe,
		  bool repair, struct pmfuse_volume **vol)
{
	static const char *const name[2] = { "primary", "secondary" };
	char msg[1024];
	int rc;

	rc = pmfuse_sb_probe(pool, probe);
	if (rc && !strncmp(probe->why[0], "bad magic", 9) && !probe->blk[1]) {
		cli_err("%s: no pmfuse superblock in the first or the last block (not a pmfuse pool, or "
		    "both copies overwritten)", o->path);
		return FSCK_ERROR;
	}
	for (int c = 0; c < 2; c++) {
		if (c && !probe->blk[1] && !probe->valid[1])
			problem(o, "secondary superblock not found: %s", probe->why[1]);
		else if (!probe->valid[c])
			problem(o, "%s superblock (block %llu) is damaged: %s", name[c],
				ULL(probe->blk[c]), probe->why[c]);
		else if (probe->copy >= 0 && probe->seq[c] < probe->seq[probe->copy])
			note(o, "%s superblock (block %llu) is older than the other copy (seq %llu, "
			     "current %llu), as a cut between the two writes leaves it; a mount "
			     "rewrites it", name[c], ULL(probe->blk[c]), ULL(probe->seq[c]),
			     ULL(probe->seq[probe->copy]));
	}
	if (rc)
		return FSCK_UNCORRECTED;   /* no valid copy: nothing else can be read */

	rc = pmfuse_volume_open(pool, repair ? PMFUSE_VOL_REPAIR : PMFUSE_VOL_RDONLY, vol, msg,
				sizeof(msg));
	if (rc == -EUCLEAN) {
		problem(o, "%s", msg);
		return FSCK_UNCORRECTED;
	}
	if (rc == -EOPNOTSUPP || rc == -EROFS) {
		cli_err("%s: %s", o->path, msg);
		return FSCK_ERROR;
	}
	if (rc) {
		cli_err("%s: cannot open the volume: %s%s%s", o->path, strerror(-rc), msg[0] ? ": " : "",
		    msg);
		return FSCK_ERROR;
	}
	if (repair) {
		/* the writable open did what a mount does first */
		if ((*vol)->log_reformatted)
			on_fixed(o, "log header damaged: log formatted anew (a transaction it held, "
				 "if any, is lost; the checks below see what it left)");
		if ((*vol)->recovered)
			on_fixed(o, "log: an unfinished transaction was rolled back, as a mount "
				 "would");
		if ((*vol)->sb_other_bad)
			on_fixed(o, (*vol)->sb_copy ? "primary superblock rewritten from the "
				 "secondary" : "secondary superblock rewritten from the primary");
		if (!(*vol)->alloc)
			note(o, "free-space bitmap damaged: the checks report it, the repair "
			     "rewrites it");
		if ((*vol)->state_bad) {
			struct pmfuse_repair_ops rops = { .fixed = on_fixed, .left = on_left,
							  .arg = o };
			struct pmfuse_repair_result rr;

			problem(o, "state block (block %llu) is damaged: %s",
				ULL(pmfuse_le64((*vol)->sb.state_block)), msg);
			repairing = 1;
			rc = pmfuse_fs_repair_state(*vol, &rops, &rr);
			repairing = 0;
			if (rc) {
				on_left(o, "the state block could not be rebuilt");
				return rc == -ENOMEM ? FSCK_ERROR : FSCK_UNCORRECTED;
			}
		}
	} else if ((*vol)->log_pending) {
		note(o, "the log holds an unfinished transaction: the pool needs log recovery "
		     "(mount once to replay it); checking the metadata as it is now, before the "
		     "rollback");
		if ((*vol)->log_pending_lanes > 1)
			note(o, "%u unfinished transactions, one in each of %u log lanes: recovery "
			     "rolls back all of them", (*vol)->log_pending_lanes,
			     (*vol)->log_pending_lanes);
		volume_notes(o, msg);
	} else if (!(*vol)->was_clean) {
		note(o, "not cleanly unmounted (the daemon stopped without unmounting)");
	}
	return 0;
}

/* A clean pool is not checked without -f (as e2fsck): prints the short summary. */
static bool skip_clean(struct out *o, const struct args *a, const struct pmfuse_sb_probe *probe,
		       struct pmfuse_volume *vol)
{
	const struct pmfuse_sb *sb = &vol->sb;
	struct pmfuse_alloc_geom g = {
		.block_size = vol->block_size,
		.block_count = pmfuse_le64(sb->block_count),
		.bitmap_start = pmfuse_le64(sb->bitmap_start),
		.bitmap_blocks = pmfuse_le64(sb->bitmap_blocks),
		.data_start = pmfuse_le64(sb->data_start),
		.sb2_block = pmfuse_le64(sb->sb2_block),
	};
	uint64_t free_blocks;

	/* a pool with damaged files (compat DAMAGED) is always checked: they are reported */
	if (a->force || !vol->was_clean || vol->log_pending || o->problems || o->fixed ||
	    (pmfuse_le64(sb->compat) & PMFUSE_FEATURE_COMPAT_DAMAGED) ||
	    !probe->valid[0] || !probe->valid[1] || probe->seq[0] != probe->seq[1] ||
	    pmfuse_alloc_count_free(vol->pool, &g, &free_blocks))
		return false;
	phase_end(o);
	if (!a->quiet)
		printf("%s: clean, %llu inodes, %llu/%llu blocks (-f checks it anyway)\n", o->path,
		       ULL(pmfuse_le64(vol->state->roots[PMFUSE_ROOT_INODES].nrecs)),
		       ULL(g.block_count - free_blocks), ULL(g.block_count));
	return true;
}

/* ---- the summary ---------------------------------------------------------------------------- */

static void summary(struct out *o, const struct args *a, const struct pmfuse_check_result *r,
		    const struct pmfuse_volume *vol, bool checked)
{
	char files[160], blocks[96], shared[48] = "";

	phase_end(o);
	if (a->quiet)
		return;
	if (o->problems && !a->repair)
		printf("%s: %llu problem%s found and left uncorrected (-y repairs)\n", o->path,
		       ULL(o->problems), o->problems == 1 ? "" : "s");
	else if (o->problems || o->fixed || o->left)
		printf("%s: %llu problem%s found; %llu repair%s made, %llu problem%s left\n",
		       o->path, ULL(o->problems), o->problems == 1 ? "" : "s", ULL(o->fixed),
		       o->fixed == 1 ? "" : "s", ULL(o->left), o->left == 1 ? "" : "s");
	if (vol && vol->log_pending && o->problems && !a->repair)
		printf("%s: the log holds an unfinished transaction: the problems may be its "
		       "half-done changes; mount once to replay it, then check again\n", o->path);
	if (!checked) {
		printf("%s: not checked beyond phase 1\n", o->path);
		return;
	}
	if (r->namespace_checked || r->no_root)
		snprintf(files, sizeof(files), "%llu files, %llu directories",
			 ULL(r->regular + r->symlinks + r->chrdevs + r->blkdevs + r->fifos +
			     r->sockets), ULL(r->directories));
	else if (r->inodes)
		snprintf(files, sizeof(files), "%llu inodes", ULL(r->inodes));
	else
		snprintf(files, sizeof(files), "inodes not counted");
	if (r->bitmap_ok)
		snprintf(blocks, sizeof(blocks), ", %llu/%llu blocks",
			 ULL(r->block_count - r->free_blocks), ULL(r->block_count));
	else
		blocks[0] = '\0';
	if (r->blocks_checked)
		snprintf(shared, sizeof(shared), ", %llu shared", ULL(r->shared_blocks));
	printf("%s: %s%s%s%s\n", o->path, files, blocks, shared,
	       r->no_root ? " (never mounted: no root directory yet)" : "");
	if (!a->verbose)
		return;
	printf("\n%12llu inodes\n", ULL(r->inodes));
	printf("%12llu regular files\n", ULL(r->regular));
	printf("%12llu directories\n", ULL(r->directories));
	printf("%12llu symbolic links\n", ULL(r->symlinks));
	printf("%12llu character devices\n", ULL(r->chrdevs));
	printf("%12llu block devices\n", ULL(r->blkdevs));
	printf("%12llu fifos\n", ULL(r->fifos));
	printf("%12llu sockets\n", ULL(r->sockets));
	printf("%12llu links beyond the first (hard links)\n", ULL(r->hard_links));
	printf("%12llu directory entries\n", ULL(r->entries));
	printf("%12llu orphans (removed while open, or truncating)\n", ULL(r->orphans));
	printf("%12llu b+tree nodes\n", ULL(r->tree_nodes));
	if (r->blocks_checked) {
		printf("%12llu metadata blocks (b+tree nodes, xattr values)\n",
		       ULL(r->meta_blocks));
		printf("%12llu data blocks\n", ULL(r->data_blocks));
		printf("%12llu shared data blocks (%llu refcount records)\n",
		       ULL(r->shared_blocks), ULL(r->refcount_recs));
		printf("%12llu file blocks mapped (%llu extents)\n", ULL(r->mapped_blocks),
		       ULL(r->extents));
	}
	if (r->bitmap_ok)
		printf("%12llu blocks used of %llu (%.1f%%), %llu free\n",
		       ULL(r->block_count - r->free_blocks), ULL(r->block_count),
		       r->block_count ? 100.0 * (double)(r->block_count - r->free_blocks) /
		       (double)r->block_count : 0.0, ULL(r->free_blocks));
}

/* Maps a check's -errno to what main does: 0 go on (problems are counted as reported). */
static int check_rc(struct out *o, int rc, const char *what)
{
	if (rc == -ENOMEM) {
		phase_end(o);
		cli_err("%s: out of memory during the %s", o->path, what);
		return FSCK_ERROR;
	}
	if (rc == -EINTR)
		return FSCK_CANCELED;
	return 0;
}

/* ---- phase 4: bad blocks -------------------------------------------------------------------- */

static void on_bad(void *arg, uint64_t ino, uint64_t fblock, uint64_t pblock)
{
	problem(arg, "inode %llu: file block %llu is on bad pool block %llu", ULL(ino),
		ULL(fblock), ULL(pblock));
}

static int phase4(struct out *o, struct pmfuse_fs *fs)
{
	uint64_t before = o->problems;
	char why[256] = "";
	size_t nbad;
	int rc = pmfuse_fs_badblocks(fs, on_bad, o, &nbad, why, sizeof(why));

	if (rc == -EOPNOTSUPP) {
		note(o, "bad-block list unavailable: %s", why);
		return 0;
	}
	if (rc == -EIO) {
		problem(o, "bad blocks: %s", why);
		return 0;
	}
	if (rc)
		return rc;
	if (nbad)
		note(o, "%zu bad pool blocks, %llu file blocks on them", nbad,
		     ULL(o->problems - before));
	return 0;
}

/*
 * Phases 2 to 4 under a recovery point: a memory error stops them with a problem naming the
 * block. 0 (problems counted as reported), or FSCK_ERROR / FSCK_CANCELED.
 */
static int run_checks(struct out *o, const struct args *a, const struct pmfuse_check_ops *ops,
		      struct pmfuse_pool *pool, struct pmfuse_volume *vol, struct pmfuse_fs *fs,
		      struct pmfuse_check_result *res)
{
	struct pmfuse_pool_fault fault;
	int status;

	if (sigsetjmp(fault.env, 0)) {
		pmfuse_fs_fault_recover(fs, 0, fault.off);   /* lets go of the fs lock */
		problem(o, "memory error reading pool block %llu: the check stops here",
			ULL(fault.off / vol->block_size));
		return 0;
	}
	pmfuse_pool_fault_arm(pool, &fault);
	phase_begin(o, o->recheck ? "Phase 6: checking the repaired pool" :
		    "Phase 2: allocator, b+trees, refcounts and block accounting");
	if ((status = check_rc(o, pmfuse_fs_check_bitmap(fs, ops, res), "bitmap check")) ||
	    (status = check_rc(o, pmfuse_fs_check_trees(fs, ops, res), "tree check")))
		goto out;
	if (!res->bitmap_ok || !res->trees_ok)
		note(o, "refcounts and block accounting not checked: %s",
		     res->bitmap_ok ? "some tree is damaged" : "the bitmap is damaged");
	else if ((status = check_rc(o, pmfuse_fs_check_blocks(fs, ops, res),
				    "block check")))
		goto out;

	if (!o->recheck)
		phase_begin(o, "Phase 3: namespace");
	if (!res->inode_table_ok)
		note(o, "namespace not checked: the inode table or the orphan list is damaged");
	else if ((status = check_rc(o, pmfuse_fs_check_namespace(fs, ops, res),
				    "namespace check")))
		goto out;

	if (a->badblocks && !o->recheck) {
		phase_begin(o, "Phase 4: bad blocks");
		status = check_rc(o, phase4(o, fs), "bad-block listing");
	}
out:
	pmfuse_pool_fault_disarm(&fault);
	return status;
}


/* Phase 5 (-p, -y): repair, then check again (phase 6); fs is reopened for each. */
static int repair(struct out *o, const struct args *a, struct pmfuse_pool *pool,
		  struct pmfuse_volume *vol, struct pmfuse_fs **fs,
		  const struct pmfuse_check_ops *ops, struct pmfuse_check_result *res)
{
	struct pmfuse_repair_ops rops = { .fixed = on_fixed, .left = on_left, .arg = o };
	struct pmfuse_fs_opts ro = { .repair = true }, co = { .check = true };
	struct pmfuse_repair_result rr;
	int rc;

	pmfuse_fs_close(*fs);
	*fs = NULL;
	phase_begin(o, a->repair == 'p' ? "Phase 5: repair (preen)" : "Phase 5: repair");
	rc = pmfuse_fs_open(vol, &ro, fs);
	if (!rc) {
		repairing = 1;
		rc = pmfuse_fs_repair(*fs, a->repair == 'p', &rops, &rr);
		repairing = 0;
		pmfuse_fs_close(*fs);
		*fs = NULL;
		if (a->verbose)
			note(o, "repair: %u round%s, %llu transactions", rr.rounds,
			     rr.rounds == 1 ? "" : "s", ULL(rr.transactions));
	}
	if (rc == -ENOMEM)
		return check_rc(o, rc, "repair");
	if (rc && rc != -EUCLEAN) {
		phase_end(o);
		cli_err("%s: repair stopped: %s (every change made is whole; run fsck again)",
		    o->path, strerror(-rc));
		return FSCK_ERROR;
	}
	/* the repaired pool is checked as a fresh run would: what remains is left */
	memset(res, 0, sizeof(*res));
	o->recheck = true;
	rc = pmfuse_fs_open(vol, &co, fs);
	if (rc) {
		on_left(o, "the filesystem does not open after repair");
		return 0;
	}
	return run_checks(o, a, ops, pool, vol, *fs, res);
}

/* ---- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	struct pmfuse_check_ops ops = {
		.problem = on_problem, .note = on_note, .progress = on_progress,
	};
	struct pmfuse_check_result res;
	struct pmfuse_fs_opts fo = { .check = true };
	struct pmfuse_pool *pool = NULL;
	struct pmfuse_volume *vol = NULL;
	struct pmfuse_fs *fs = NULL;
	struct pmfuse_sb_probe probe;
	struct out o;
	struct args a;
	int lockfd = -1, status, rc;

	cli_prog = prog;
	catch_signals();
	status = parse(argc, argv, &a);
	if (status)
		return status;
	pmfuse_log_set_target(a.verbose ? PMFUSE_LOG_STDERR : PMFUSE_LOG_QUIET);
	memset(&o, 0, sizeof(o));
	memset(&res, 0, sizeof(res));
	o.path = a.path;
	o.quiet = a.quiet;
	o.tty = !a.quiet && isatty(STDOUT_FILENO);
	stdout_tty = o.tty;
	ops.arg = &o;

	status = open_pool(a.path, a.repair, &pool);
	if (!status && !a.repair)
		status = lock_shared(a.path, &lockfd);
	if (status)
		goto out;

	phase_begin(&o, "Phase 1: superblocks and log");
	status = phase1(&o, pool, &probe, a.repair, &vol);
	if (status == FSCK_UNCORRECTED)
		goto report;
	if (status)
		goto out;
	if (skip_clean(&o, &a, &probe, vol))
		goto out;
	/* every block's crc and every file's bytes past EOF verified once per run, not once per
	 * pass (pool.h); without the memory for it, only slower */
	pmfuse_pool_memo_enable(pool, vol->block_size);
	rc = pmfuse_fs_open(vol, &fo, &fs);
	if (rc == -ENOMEM) {
		status = check_rc(&o, rc, "filesystem open");
		goto out;
	}
	if (rc) {
		problem(&o, "the filesystem does not open: %s", rc == -EUCLEAN ?
			pmfuse_corrupt_last() : strerror(-rc));
		if (!a.repair)
			goto report;
	}
	if (!rc && (status = run_checks(&o, &a, &ops, pool, vol, fs, &res)))
		goto out;
	if (a.repair && o.problems && (status = repair(&o, &a, pool, vol, &fs, &ops, &res)))
		goto out;

report:
	summary(&o, &a, &res, vol, fs != NULL);
	if (a.repair)
		status = (o.fixed ? FSCK_CORRECTED : 0) |
			 (o.left || (o.problems && !o.fixed && !o.recheck) ? FSCK_UNCORRECTED : 0);
	else
		status = o.problems ? FSCK_UNCORRECTED : FSCK_OK;
out:
	/* as e2fsck, the status is a sum: problems found before an operational error count */
	if (o.problems && (status == FSCK_ERROR || status == FSCK_CANCELED))
		status |= FSCK_UNCORRECTED;
	phase_end(&o);
	pmfuse_fs_close(fs);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
	if (lockfd >= 0)
		close(lockfd);
	if (status == FSCK_CANCELED)
		cli_err("%s: interrupted; %s", a.path, a.repair ? "every change made is whole, run "
		    "fsck again to finish" : "nothing was changed");
	return status;
}
