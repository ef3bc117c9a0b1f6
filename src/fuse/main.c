/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfuse: the FUSE daemon that mounts a pool.
 *
 *   pmfuse [-f] [-d] [-s] [-o OPTIONS] POOL MOUNTPOINT
 *
 * The command line follows libfuse: fuse_opt_parse() takes the first non-option as POOL (and
 * notes "ro"/"rw"), fuse_parse_cmdline() takes -f, -d, -s, -h, -V, clone_fd, max_threads,
 * max_idle_threads and the mount point, and fuse_session_new() takes the mount options. Options
 * may come after the positionals, as mount.fuse3 puts them ("pmfuse POOL MNT -o opts").
 * pmfuse always adds default_permissions (the kernel checks permissions; the fs relies on it),
 * fsname=POOL and subtype=pmfuse (the mount's type is "fuse.pmfuse"). -o nosubtype mounts as
 * plain "fuse" with fsname=pmfuse#POOL instead, as FUSE filesystems were named before subtypes:
 * tools that compare the type with "fuse" (xfstests' FSTYP=fuse) accept it, and mount.fuse3
 * still finds the program in the source. POOL may carry that "pmfuse#" prefix.
 *
 * "mount -o remount[,ro|rw,...] MNT" reaches pmfuse through mount.fuse3 as a new daemon with
 * -o remount. The kernel changes a FUSE mount's flags by itself (a FUSE superblock has nothing
 * to reconfigure in the daemon), so pmfuse makes the same mount(2) call mount(8) would and
 * exits; it refuses to make writable a mount whose daemon opened the pool read-only.
 *
 * Order of work: parse; fork unless -f (see detach.c); create the session (which rejects bad
 * mount options before anything is opened); open the pool (its flock refuses a pool already in
 * use), the volume (PMFUSE_VOL_MOUNT clears the clean flag) and the filesystem; mount; note
 * the mount's device number and start the notifier thread (notify.c); only then let go of the
 * terminal, so that every error up to here reaches it and the exit status says whether the
 * mount came up. Serve until the filesystem is unmounted or SIGTERM, SIGINT or SIGHUP arrives
 * (then pmfuse unmounts it itself), stop the notifier (it replies to what it still holds),
 * and close the filesystem and the volume, which marks it clean.
 *
 * -o io_uring (and io_uring_q_depth=N) go to libfuse >= 3.18, whose session then serves
 * requests through per-CPU io_uring rings when the kernel offers them (Linux >= 6.14 with
 * /sys/module/fuse/parameters/enable_uring=Y, which pmfuse never changes); otherwise it stays
 * on /dev/fuse and the log says why (initx.c). A pmfuse built against an older libfuse refuses
 * them: a libfuse that does not know the option would fail the mount with a vaguer message.
 *
 * Exit status: 0 after a clean shutdown, 1 on any error.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "fs/fs.h"
#include "fuse/detach.h"
#include "fuse/initx.h"
#include "fuse/notify.h"
#include "fuse/ops.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "util/util.h"

/* One second keeps attributes fresh enough for pjdfstest-style checks; names that do not exist
 * are not cached at all (a negative entry timeout of 0 is the kernel's default). */
#define ENTRY_TIMEOUT 1.0
#define ATTR_TIMEOUT 1.0

#define FUSE_SUPER_MAGIC 0x65735546u  /* linux/magic.h */

/* Entries of each table of the lookup / getattr cache (fs/icache.h): about 200 bytes an
 * attribute entry and 60 plus the name a name entry, so some 20 MiB at most. */
#define CACHE_ENTRIES 65536u

struct cli {
	char *pool;                  /* first non-option argument */
	char *mnt;                   /* second one (for -o remount, which needs no session) */
	bool ro;
	bool noacl;
	bool nosubtype;
	bool remount;
	bool writeback_cache;        /* -o writeback_cache: the kernel's page cache buffers writes */
	bool io_uring;               /* -o io_uring (libfuse's, kept for the log) */
	unsigned long remount_flags; /* MS_* from the -o options, for -o remount */
};

enum { KEY_RO, KEY_RW, KEY_ACL, KEY_NOACL, KEY_NOSUBTYPE, KEY_REMOUNT, KEY_WRITEBACK,
       KEY_URING };

static const struct fuse_opt cli_opts[] = {
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_KEY("rw", KEY_RW),
	FUSE_OPT_KEY("acl", KEY_ACL),
	FUSE_OPT_KEY("noacl", KEY_NOACL),
	FUSE_OPT_KEY("nosubtype", KEY_NOSUBTYPE),
	FUSE_OPT_KEY("remount", KEY_REMOUNT),
	FUSE_OPT_KEY("writeback_cache", KEY_WRITEBACK),
	FUSE_OPT_KEY("io_uring", KEY_URING),
	FUSE_OPT_KEY("io_uring_q_depth=", KEY_URING),
	FUSE_OPT_END
};

/* The mount flags a remount may change, as mount(8) spells them; "set" or "clear" each. */
static const struct {
	const char *name;
	unsigned long set, clear;
} remount_words[] = {
	{ "ro", MS_RDONLY, 0 },           { "rw", 0, MS_RDONLY },
	{ "nosuid", MS_NOSUID, 0 },       { "suid", 0, MS_NOSUID },
	{ "nodev", MS_NODEV, 0 },         { "dev", 0, MS_NODEV },
	{ "noexec", MS_NOEXEC, 0 },       { "exec", 0, MS_NOEXEC },
	{ "noatime", MS_NOATIME, 0 },     { "atime", 0, MS_NOATIME },
	{ "nodiratime", MS_NODIRATIME, 0 }, { "diratime", 0, MS_NODIRATIME },
	{ "relatime", MS_RELATIME, 0 },   { "norelatime", 0, MS_RELATIME },
	{ "strictatime", MS_STRICTATIME, 0 },
	{ "sync", MS_SYNCHRONOUS, 0 },    { "async", 0, MS_SYNCHRONOUS },
	{ "dirsync", MS_DIRSYNC, 0 },
	{ "lazytime", MS_LAZYTIME, 0 },   { "nolazytime", 0, MS_LAZYTIME },
};

static void note_remount_word(struct cli *cli, const char *arg)
{
	for (size_t i = 0; i < sizeof(remount_words) / sizeof(remount_words[0]); i++) {
		if (!strcmp(arg, remount_words[i].name)) {
			cli->remount_flags |= remount_words[i].set;
			cli->remount_flags &= ~remount_words[i].clear;
		}
	}
}

static int cli_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct cli *cli = data;

	(void)outargs;
	if (key != FUSE_OPT_KEY_NONOPT)
		note_remount_word(cli, arg);
	switch (key) {
	case KEY_RO:
		cli->ro = true;
		return 1;            /* keep it: the kernel mount is read-only too */
	case KEY_RW:
		cli->ro = false;
		return 1;
	case KEY_ACL:
	case KEY_NOACL:
		cli->noacl = key == KEY_NOACL;
		return 0;            /* ours: the kernel would refuse it */
	case KEY_NOSUBTYPE:
		cli->nosubtype = true;
		return 0;
	case KEY_REMOUNT:
		cli->remount = true;
		return 0;
	case KEY_WRITEBACK:
		cli->writeback_cache = true;
		return 0;            /* ours: asked for in FUSE_INIT, not a mount option */
	case KEY_URING:
#ifdef PMFUSE_HAVE_FUSE_URING
		if (!strcmp(arg, "io_uring"))
			cli->io_uring = true;
		return 1;            /* libfuse's session options */
#else
		fprintf(stderr, "pmfuse: -o %s: FUSE over io_uring needs libfuse >= 3.18; this "
			"pmfuse is built against %d.%d\n", arg, FUSE_MAJOR_VERSION,
			FUSE_MINOR_VERSION);
		return -1;
#endif
	case FUSE_OPT_KEY_NONOPT:
		if (cli->pool) {
			if (!cli->mnt && !(cli->mnt = strdup(arg)))
				return -1;
			return 1;    /* the mount point, for fuse_parse_cmdline() */
		}
		/* "pmfuse#POOL": the source as -o nosubtype names it */
		if (!strncmp(arg, "pmfuse#", 7))
			arg += 7;
		cli->pool = strdup(arg);
		return cli->pool ? 0 : -1;
	default:
		return 1;
	}
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: pmfuse [-f] [-d] [-s] [-o OPTIONS] POOL MOUNTPOINT\n"
		"Mount the pmfuse filesystem in POOL (a /dev/dax device or a pool file) on MOUNTPOINT.\n"
		"\n"
		"pmfuse options:\n"
		"    -o ro                  mount read-only (the pool is not written at all)\n"
		"    -o allow_other         let users other than the mounting one in\n"
		"    -o noacl               no POSIX ACLs: permissions from the mode bits alone,\n"
		"                           and path walks through the root cost no ACL lookup\n"
		"    -o nosubtype           mount as type \"fuse\" (fsname=pmfuse#POOL), not\n"
		"                           \"fuse.pmfuse\" (for tools that expect plain fuse)\n"
		"    -o remount,OPTS        change a mounted pmfuse's flags (ro, rw, nosuid, noexec,\n"
		"                           ...) as mount -o remount does, then exit\n"
		"    -o writeback_cache     let the kernel's page cache hold writes back: data is\n"
		"                           durable at fsync (or close), no longer when write returns\n"
		"    -o io_uring            FUSE over io_uring when the kernel offers it (Linux >= 6.14,\n"
		"                           enable_uring=Y in /sys/module/fuse/parameters); needs\n"
		"                           libfuse >= 3.18%s;\n"
		"                           -o io_uring_q_depth=N sets the depth of each ring\n"
		"pmfuse always uses -o default_permissions,fsname=POOL,subtype=pmfuse.\n"
		"\n",
#ifdef PMFUSE_HAVE_FUSE_URING
		""
#else
		" (this pmfuse has an older one)"
#endif
		);
}

/*
 * The root of a pmfuse filesystem is a directory. libfuse would mount on a regular file too
 * (the kernel takes the root's type from the mount point until INIT), and every access would
 * then fail with EIO once the root turned out to be a directory. "/dev/fd/N" is a /dev/fuse
 * descriptor that mount.fuse3 (drop_privileges) has mounted already.
 */
static int check_mountpoint(const char *mnt)
{
	struct stat st;

	if (!strncmp(mnt, "/dev/fd/", 8))
		return 0;
	if (stat(mnt, &st)) {
		fprintf(stderr, "pmfuse: %s: %s\n", mnt, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "pmfuse: %s: the mount point must be a directory\n", mnt);
		return -1;
	}
	return 0;
}

/* The mount options pmfuse always adds; the last occurrence of fsname/subtype wins. */
static int add_mount_opts(struct fuse_args *args, const char *pool, bool nosubtype)
{
	char *opts = NULL, *fsname = NULL;
	int rc = -1;

	if (asprintf(&fsname, "fsname=%s%s", nosubtype ? "pmfuse#" : "", pool) < 0) {
		fsname = NULL;
		goto out;
	}
	if (fuse_opt_add_opt(&opts, "default_permissions") ||
	    (!nosubtype && fuse_opt_add_opt(&opts, "subtype=pmfuse")) ||
	    fuse_opt_add_opt_escaped(&opts, fsname) ||
	    fuse_opt_add_arg(args, "-o") || fuse_opt_add_arg(args, opts))
		goto out;
	rc = 0;
out:
	free(fsname);
	free(opts);
	return rc;
}

/*
 * -o remount: the mount point must be the root of a FUSE mount (its inode is pmfuse's root).
 * Making it writable needs a read-write daemon behind it: one holds the pool's exclusive
 * flock, so a shared one can be had only when the daemon is read-only (or gone). Returns the
 * exit status.
 */
static int remount(const struct cli *cli, const char *mnt)
{
	struct statfs sfs;
	struct stat st;
	int fd;

	if (statfs(mnt, &sfs) || stat(mnt, &st)) {
		fprintf(stderr, "pmfuse: %s: %s\n", mnt, strerror(errno));
		return 1;
	}
	if ((uint32_t)sfs.f_type != FUSE_SUPER_MAGIC || st.st_ino != PMFUSE_ROOT_INO) {
		fprintf(stderr, "pmfuse: %s: not a mounted pmfuse filesystem; nothing to remount\n",
			mnt);
		return 1;
	}
	if (!(cli->remount_flags & MS_RDONLY) && (sfs.f_flags & ST_RDONLY) && cli->pool &&
	    (fd = open(cli->pool, O_RDONLY | O_CLOEXEC)) >= 0) {
		bool ro_daemon = !flock(fd, LOCK_SH | LOCK_NB);
		close(fd);
		if (ro_daemon) {
			fprintf(stderr, "pmfuse: %s: its daemon opened %s read-only; unmount it and "
				"mount again without -o ro\n", mnt, cli->pool);
			return 1;
		}
	}
	if (mount(NULL, mnt, NULL, MS_REMOUNT | cli->remount_flags, NULL)) {
		fprintf(stderr, "pmfuse: %s: remount: %s\n", mnt, strerror(errno));
		return 1;
	}
	return 0;
}

struct mount {
	const char *path;
	bool ro;
	int ro_lock_fd;              /* read-only mounts: a shared flock of our own */
	struct pmfuse_pool *pool;
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
};

/*
 * The pool layer takes no lock for a read-only open. A read-only mount still must not run
 * next to a read-write one (it would read metadata in mid-change), so take a shared flock: it
 * excludes the exclusive lock of a read-write mount or mkfs, in either order.
 */
static int lock_shared(struct mount *m)
{
	m->ro_lock_fd = open(m->path, O_RDONLY | O_CLOEXEC);
	if (m->ro_lock_fd < 0)
		return 0;            /* pmfuse_pool_open() will say what is wrong */
	int rc = pmfuse_pool_flock(m->ro_lock_fd, m->path, LOCK_SH);
	if (rc) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: pool is in use (mounted read-write?)", m->path);
		return rc;
	}
	return 0;
}

struct bad_report {
	const char *path;
	uint64_t blocks;
};

static void report_bad(void *arg, uint64_t ino, uint64_t fblock, uint64_t pblock)
{
	struct bad_report *r = arg;

	/* one line per block up to a limit: a whole bad region would flood the log */
	if (r->blocks++ < 64)
		pmfuse_log(PMFUSE_LOG_WARN, "%s: inode %llu, file block %llu is on bad pool block "
			   "%llu: reading it fails with EIO", r->path, (unsigned long long)ino,
			   (unsigned long long)fblock, (unsigned long long)pblock);
}

/*
 * Reports the files on the platform's bad blocks (libpmem2's list: dax devices and files on
 * fsdax). A pool file elsewhere keeps no list: said once, with libpmem2's reason.
 */
static void mount_badblocks(struct mount *m)
{
	struct bad_report r = { .path = m->path };
	char why[256] = "";
	size_t nbad;
	int rc = pmfuse_fs_badblocks(m->fs, report_bad, &r, &nbad, why, sizeof(why));

	if (rc == -EOPNOTSUPP)
		pmfuse_log(PMFUSE_LOG_INFO, "%s: bad-block list unavailable (%s)", m->path, why);
	else if (rc)
		pmfuse_log(PMFUSE_LOG_ERR, "%s: cannot read the bad-block list: %s", m->path,
			   why[0] ? why : strerror(-rc));
	else if (nbad)
		pmfuse_log(PMFUSE_LOG_WARN, "%s: %zu bad blocks, %llu of them in files; "
			   "fsck.pmfuse --badblocks lists them", m->path, nbad,
			   (unsigned long long)r.blocks);
}

static int mount_open(struct mount *m)
{
	struct pmfuse_fs_opts fs_opts = { .readonly = m->ro, .cache_entries = CACHE_ENTRIES };
	char msg[512] = "";
	int rc;

	if (m->ro && (rc = lock_shared(m)))
		return rc;
	rc = pmfuse_pool_open(m->path, m->ro ? PMFUSE_POOL_RDONLY : 0, &m->pool);
	if (rc) {
		/* -EBUSY: the pool layer has named the process that holds it */
		pmfuse_log(PMFUSE_LOG_ERR, "%s: %s", m->path, rc == -EBUSY ?
			   "refusing to mount a pool that is in use" : strerror(-rc));
		return rc;
	}
	rc = pmfuse_volume_open(m->pool, m->ro ? PMFUSE_VOL_RDONLY : PMFUSE_VOL_MOUNT, &m->vol,
				msg, sizeof(msg));
	if (rc) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: %s", m->path, msg[0] ? msg : strerror(-rc));
		if (rc == -EUCLEAN)
			pmfuse_log(PMFUSE_LOG_ERR, "%s: damaged; fsck.pmfuse -f lists what is wrong",
				   m->path);
		return rc;
	}
	if (msg[0])
		pmfuse_log(PMFUSE_LOG_WARN, "%s: %s", m->path, msg);
	if (m->vol->log_pending) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: an interrupted transaction waits for recovery; "
			   "mount read-write once first (that rolls it back)", m->path);
		return -EROFS;
	}
	rc = pmfuse_fs_open(m->vol, &fs_opts, &m->fs);
	if (rc) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: cannot open the filesystem: %s%s", m->path,
			   strerror(-rc), rc == -EUCLEAN ? " (fsck.pmfuse -f lists what is wrong)" : "");
		return rc;
	}
	mount_badblocks(m);
	return 0;
}

/* Closing the volume of a PMFUSE_VOL_MOUNT open marks it clean; every fs call was durable. */
static void mount_close(struct mount *m)
{
	if (m->fs)
		pmfuse_fs_close(m->fs);
	if (m->vol)
		pmfuse_volume_close(m->vol);
	if (m->pool)
		pmfuse_pool_close(m->pool);
	if (m->ro_lock_fd >= 0)
		close(m->ro_lock_fd);
	m->fs = NULL;
	m->vol = NULL;
	m->pool = NULL;
	m->ro_lock_fd = -1;
}

/*
 * The device number of the new mount, which tells the ioctls a caller's file on this mount
 * from one elsewhere (ioctl.c). statx of the mount point with AT_STATX_DONT_SYNC answers from
 * the root inode the kernel made at mount time and sends no request, so it does not wait for
 * the session loop, which has not started yet. "/dev/fd/N" (mounted by mount.fuse3) names no
 * mount point: cloning is refused (EXDEV) there.
 */
static void find_mount_dev(struct pmfuse_daemon *d, const char *mnt)
{
	struct statx stx;

	if (!strncmp(mnt, "/dev/fd/", 8)) {
		pmfuse_log(PMFUSE_LOG_WARN, "mount point unknown (%s): pmfusectl clone is "
			   "disabled", mnt);
		return;
	}
	if (statx(AT_FDCWD, mnt, AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT, STATX_INO, &stx) ||
	    stx.stx_ino != PMFUSE_ROOT_INO) {
		pmfuse_log(PMFUSE_LOG_WARN, "%s: cannot identify the new mount: pmfusectl clone is "
			   "disabled", mnt);
		return;
	}
	d->dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	d->dev_known = true;
}

static int serve(struct fuse_session *se, const struct fuse_cmdline_opts *opts)
{
	struct fuse_loop_config *cfg;
	int rc;

	if (opts->singlethread)
		return fuse_session_loop(se);
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		return -ENOMEM;
	/*
	 * Threads are bounded by max_threads (10 unless -o max_threads says otherwise: enough to
	 * keep 2 cores busy while some workers wait for the fs's writer lock) and, unless
	 * -o max_idle_threads is given, kept once created rather than torn down and made again.
	 * libfuse 3.14 complains about "-1" (its own default) passed back to it, so only a value
	 * that was given is set.
	 */
	fuse_loop_cfg_set_clone_fd(cfg, (unsigned)opts->clone_fd);
	if (opts->max_idle_threads != UINT_MAX)
		fuse_loop_cfg_set_idle_threads(cfg, opts->max_idle_threads);
	fuse_loop_cfg_set_max_threads(cfg, opts->max_threads);
	rc = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return rc;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct pmfuse_daemon daemon = {
		.entry_timeout = ENTRY_TIMEOUT,
		.attr_timeout = ATTR_TIMEOUT,
	};
	struct mount m = { .ro_lock_fd = -1 };
	static struct pmfuse_initx initx;
	struct pmfuse_statfs sfs;
	struct fuse_session *se = NULL;
	struct cli cli = { 0 };
	char pool_path[PATH_MAX];
	bool signals = false, mounted = false;
	const char *uring_env = NULL;
	int rc, status = 1, path_errno = 0;

	memset(&opts, 0, sizeof(opts));
	if (fuse_opt_parse(&args, &cli, cli_opts, cli_proc))
		goto bad_args;
	/*
	 * Absolute, as the daemon leaves its working directory and fsname shows in mount(8). The
	 * mount options go in before fuse_parse_cmdline(), which adds subtype=<program name>
	 * unless it finds an fsname (so -o nosubtype could not leave the subtype out after it).
	 */
	if (cli.pool && !realpath(cli.pool, pool_path))
		path_errno = errno;
	else if (cli.pool && add_mount_opts(&args, pool_path, cli.nosubtype))
		path_errno = ENOMEM;
	if (fuse_parse_cmdline(&args, &opts)) {
bad_args:
		fprintf(stderr, "Try 'pmfuse --help' for more information.\n");
		goto out;
	}
	if (opts.show_help) {
		usage(stdout);
		printf("FUSE options:\n");
		fuse_cmdline_help();
		fuse_lowlevel_help();
		status = 0;
		goto out;
	}
	if (opts.show_version) {
		printf("pmfuse version %s\n", PMFUSE_VERSION);
		printf("FUSE library version %s\n", fuse_pkgversion());
		fflush(stdout);      /* fuse_lowlevel_version() runs fusermount3 --version */
		fuse_lowlevel_version();
		status = 0;
		goto out;
	}
	if (!cli.pool || !opts.mountpoint) {
		fprintf(stderr, "pmfuse: %s\n", cli.pool ? "no mount point given" :
			"no pool and mount point given");
		fprintf(stderr, "Usage: pmfuse [-f] [-d] [-s] [-o OPTIONS] POOL MOUNTPOINT\n"
			"Try 'pmfuse --help' for more information.\n");
		goto out;
	}
	if (cli.remount) {
		status = remount(&cli, opts.mountpoint);
		goto out;
	}
	if (check_mountpoint(opts.mountpoint))
		goto out;
	if (path_errno) {
		fprintf(stderr, "pmfuse: %s: %s\n", cli.pool, strerror(path_errno));
		goto out;
	}
	/* Until it detaches, a daemon tells the terminal only what went wrong; syslog gets the rest. */
	if (opts.debug)
		pmfuse_log_set_level(PMFUSE_LOG_DEBUG);
	else if (!opts.foreground)
		pmfuse_log_set_level(PMFUSE_LOG_WARN);

	if (!opts.foreground && (rc = pmfuse_detach_start())) {
		fprintf(stderr, "pmfuse: cannot fork: %s\n", strerror(-rc));
		goto out;
	}

	/* The session first: it checks the mount options before the pool is touched. */
	daemon.acl = !cli.noacl;
	daemon.writeback_cache = cli.writeback_cache;
	se = fuse_session_new(&args, &pmfuse_ops, sizeof(pmfuse_ops), &daemon);
	if (!se)
		goto out;            /* libfuse said why (an unknown option, most likely) */

	m.path = pool_path;
	m.ro = cli.ro;
	if (mount_open(&m))
		goto out;
	daemon.fs = m.fs;
	daemon.export_support = pmfuse_ops_probe_export(m.fs);
	if ((rc = pmfuse_fs_statfs(m.fs, &sfs))) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: statfs: %s", pool_path, strerror(-rc));
		goto out;
	}
	daemon.block_size = (uint32_t)sfs.block_size;

	if (fuse_set_signal_handlers(se))
		goto out;
	signals = true;
	if (fuse_session_mount(se, opts.mountpoint))
		goto out;
	mounted = true;
	/* libfuse >= 3.18 also reads FUSE_URING_ENABLE=1 from the environment: the log should
	 * know it (an older libfuse ignores it) */
#ifdef PMFUSE_HAVE_FUSE_URING
	uring_env = getenv("FUSE_URING_ENABLE");
#endif
	if ((rc = pmfuse_initx_install(se, &initx, cli.io_uring ||
				       (uring_env && atoi(uring_env) != 0))) < 0) {
		pmfuse_log(PMFUSE_LOG_ERR, "cannot hook the FUSE session's I/O: %s", strerror(-rc));
		goto out;
	}
	daemon.initx = &initx;
	find_mount_dev(&daemon, opts.mountpoint);
	if ((rc = pmfuse_notifier_start(se, &daemon.notifier))) {
		pmfuse_log(PMFUSE_LOG_ERR, "cannot start the notifier thread: %s", strerror(-rc));
		goto out;
	}

	pmfuse_detach_finish();
	pmfuse_log_set_level(opts.debug ? PMFUSE_LOG_DEBUG : PMFUSE_LOG_INFO);
	pmfuse_log(PMFUSE_LOG_INFO, "%s mounted on %s: %s, %s persistence%s", pool_path,
		   opts.mountpoint, m.ro ? "read-only" : "read-write",
		   pmfuse_granularity_name(pmfuse_pool_granularity(m.pool)),
		   m.vol->was_clean ? "" : ", previous mount did not end cleanly");
	if (chdir("/"))
		pmfuse_log(PMFUSE_LOG_WARN, "cannot change to /: %s", strerror(errno));

	rc = serve(se, &opts);
	if (rc < 0) {
		pmfuse_log(PMFUSE_LOG_ERR, "%s: session ended with an error: %s", opts.mountpoint,
			   strerror(-rc));
	} else {
		if (rc > 0)
			pmfuse_log(PMFUSE_LOG_INFO, "%s: signal %d, unmounting", opts.mountpoint,
				   rc);
		status = 0;
	}

out:
	/* Before the session goes: queued replies need it, and it must not be unmounted yet. */
	pmfuse_notifier_stop(daemon.notifier, daemon.dev_known ? opts.mountpoint : NULL);
	if (se) {
		if (mounted)
			fuse_session_unmount(se);
		if (signals)
			fuse_remove_signal_handlers(se);
		fuse_session_destroy(se);
	}
	mount_close(&m);
	if (mounted && status == 0)
		pmfuse_log(PMFUSE_LOG_INFO, "%s: closed cleanly", pool_path);
	free(opts.mountpoint);
	free(cli.pool);
	free(cli.mnt);
	fuse_opt_free_args(&args);
	return status;
}
