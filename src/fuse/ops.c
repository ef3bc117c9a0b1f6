/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The FUSE low-level operations: thin wrappers that turn a request into one call of the
 * filesystem API (src/fs/fs.h) and send the reply. Nothing here knows the on-media format; the
 * FUSE node id is the persistent inode number (the root is 1 on both sides) and the fs supplies
 * the generation, so no table maps one to the other.
 *
 * Lookup counts (the contract in fuse_lowlevel.h): every reply that hands the kernel an entry
 * (lookup, mknod, mkdir, symlink, link, create, and each readdirplus entry other than "." and
 * "..") stands for one reference the fs took; forget and forget_multi give them back. When such
 * a reply cannot be delivered (the request was interrupted, the connection is going away) the
 * kernel never counted the entry, so the reference is given back here at once.
 *
 * Reads are zero copy: the fs calls back with vectors pointing into the pool mapping, under its
 * lock, and they go to the kernel in one writev (fuse_reply_iov), which copies them straight into
 * the reader's pages. fuse_reply_data() is not used on purpose: libfuse 3.14 bounces a memory
 * bufvec of more than one segment through a malloc'd buffer (fuse_send_data_iov_fallback), and
 * its splice path write()s memory buffers into a pipe first, a second copy. With
 * PMFUSE_READ_PATH=fd (pool.h: measured no faster here, kept to measure elsewhere) the pieces in
 * the pool are pread() from the pool file into a per-thread buffer instead (read_emit_fd).
 *
 * Capabilities (op_init) and why:
 * - no writeback cache unless -o writeback_cache: a write is acknowledged only when it is
 *   durable on the pool; with the option the kernel's page cache holds writes back, and data
 *   is durable at fsync (what follows from it: op_write, op_lseek, op_fsync, ioctl.c, and
 *   doc/design.md);
 * - HANDLE_KILLPRIV_V2 (added to the INIT reply by initx.c; libfuse 3.14 has no bit for it;
 *   withheld under FUSE over io_uring, where the write flag it relies on is lost: initx.c):
 *   the kernel stops asking for security.capability before every write; a truncation (and a
 *   chown) then comes with FATTR_KILL_SUIDGID, set only when the caller lacks CAP_FSETID,
 *   and the fs clears the bits (PMFUSE_SET_KILL_SUID). Not HANDLE_KILLPRIV (v1), with which
 *   the kernel would tell nothing about the caller's CAP_FSETID;
 * - no ATOMIC_O_TRUNC: with it the kernel skips the SETATTR of open(O_TRUNC) entirely, which
 *   would lose that setuid/setgid clearing; without it the kernel sends a SETATTR (size 0,
 *   mtime and ctime now, mode if privileges are dropped) with the open file's handle;
 * - POSIX_ACL and DONT_MASK: the kernel caches ACLs and enforces them; the fs keeps the mode and
 *   the access ACL in step on chmod and setxattr and applies default-ACL inheritance on create
 *   (the kernel does neither for FUSE), and applies the umask itself (ctx->umask), which with
 *   DONT_MASK the kernel leaves unapplied because a default ACL replaces it. Without POSIX_ACL
 *   (an old kernel, or -o noacl) ACLs are refused (EOPNOTSUPP) rather than stored unenforced,
 *   and the kernel applies the umask (applying it again here changes nothing). Cost: the
 *   root inode predates INIT and never caches its ACL, so a walk through the root by a user
 *   other than its owner costs a GETXATTR (doc/design.md);
 * - no splice. SPLICE_WRITE (replies through a pipe) cost the daemon 50% more CPU per GiB
 *   read through the page cache (128 KiB requests) and saved 15% on 1 MiB O_DIRECT reads;
 *   SPLICE_MOVE halved buffered read throughput (measured here, kernel 6.18, pool in tmpfs).
 *   SPLICE_READ would need write_buf and a pipe-to-pool copy: a write already arrives in the
 *   request buffer with one copy and goes to the pool with one persistent memcpy;
 * - CACHE_SYMLINKS: a symlink's target never changes; NO_OPENDIR_SUPPORT: directory handles
 *   carry nothing, so opendir costs no round trip;
 * - EXPORT_SUPPORT only when the fs resolves "." and ".." (pmfuse_ops_probe_export at startup);
 * - libfuse's defaults stay: ASYNC_READ, AUTO_INVAL_DATA, READDIRPLUS(_AUTO), ASYNC_DIO,
 *   IOCTL_DIR (PARALLEL_DIROPS is in libfuse 3.14's want too, but it never reaches the
 *   kernel: do_init has no line that sends it).
 * Every write costs a GETXATTR of security.capability first: the VFS asks before each write
 * whether privileges must go, and FUSE superblocks never get SB_NOSEC unless HANDLE_KILLPRIV_V2
 * (the server clears them) is negotiated, which libfuse 3.14 cannot do.
 */
#include "fuse/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs.h"
#include "pool/pool.h"
#include "fuse/initx.h"
#include "fuse/notify.h"
#include "util/util.h"

_Static_assert(PMFUSE_ROOT_INO == FUSE_ROOT_ID, "the fs root must be the FUSE root node id");

#define PMFUSE_MAX_WRITE (1u << 20)
#define XATTR_VALUE_MAX 65536u       /* XATTR_SIZE_MAX and XATTR_LIST_MAX of Linux */

static struct pmfuse_daemon *daemon_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct pmfuse_fs *fs_of(fuse_req_t req)
{
	return daemon_of(req)->fs;
}

/* pmfuse_cred's privs: the calling thread's effective capabilities and groups, read from
 * /proc (unreadable, e.g. the caller exited: only root has CAP_FSETID, no other group). */
static bool req_privs(const struct pmfuse_cred *cred, gid_t g, bool *in_group)
{
	const struct fuse_ctx *ctx = fuse_req_ctx((fuse_req_t)cred->origin);
	uint64_t caps;

	if (!pmfuse_caller_privs(ctx, g, &caps, in_group)) {
		*in_group = false;
		return ctx->uid == 0;
	}
	return caps & PMFUSE_CAP(CAP_FSETID);
}

void pmfuse_op_cred(fuse_req_t req, struct pmfuse_cred *cred)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	memset(cred, 0, sizeof(*cred));
	cred->uid = ctx->uid;
	cred->gid = ctx->gid;
	cred->pid = ctx->pid;
	cred->umask = ctx->umask;
	cred->privs = req_privs;
	cred->origin = req;
}

static void cred_of(fuse_req_t req, struct pmfuse_cred *cred)
{
	pmfuse_op_cred(req, cred);
}

/*
 * Whether the kernel marks what a caller without CAP_FSETID writes or truncates
 * (FUSE_WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID): only under HANDLE_KILLPRIV_V2 (initx.c). Without
 * it (FUSE over io_uring, or a kernel that does not offer it) the kernel clears setuid, and
 * setgid when group-executable, itself, but not setgid for a caller outside the file's group
 * (Linux 6.2's rule, which FUSE's setattr leaves to the server): the daemon asks /proc then.
 */
static bool kernel_marks_fsetid(fuse_req_t req)
{
	const struct pmfuse_initx *x = daemon_of(req)->initx;

	return x && __atomic_load_n(&x->killpriv_v2, __ATOMIC_ACQUIRE);
}

/* A request through an io_uring ring, which lost FUSE_WRITE_KILL_SUIDGID on the way (initx.c). */
static bool req_on_ring(fuse_req_t req)
{
#ifdef PMFUSE_HAVE_FUSE_URING
	return fuse_req_is_uring(req);
#else
	(void)req;
	return false;
#endif
}

static void stat_of(const struct pmfuse_attr *a, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = a->ino;
	st->st_mode = a->mode;
	st->st_nlink = a->nlink;
	st->st_uid = a->uid;
	st->st_gid = a->gid;
	st->st_rdev = a->rdev;
	st->st_size = (off_t)a->size;
	st->st_blocks = (blkcnt_t)a->blocks512;
	st->st_blksize = a->blksize;
	st->st_atim = a->atime;
	st->st_mtim = a->mtime;
	st->st_ctim = a->ctime;
}

static void entry_of(fuse_req_t req, const struct pmfuse_attr *a, struct fuse_entry_param *e)
{
	const struct pmfuse_daemon *d = daemon_of(req);

	memset(e, 0, sizeof(*e));
	e->ino = a->ino;
	e->generation = a->generation;
	stat_of(a, &e->attr);
	e->attr_timeout = d->attr_timeout;
	e->entry_timeout = d->entry_timeout;
}

/* Replies with an entry for which the fs took one reference, or the error rc. */
static void reply_entry(fuse_req_t req, int rc, const struct pmfuse_attr *a)
{
	struct fuse_entry_param e;

	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	entry_of(req, a, &e);
	if (fuse_reply_entry(req, &e))
		pmfuse_fs_forget(fs_of(req), a->ino, 1);
}

static void reply_attr(fuse_req_t req, int rc, const struct pmfuse_attr *a)
{
	struct stat st;

	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	stat_of(a, &st);
	fuse_reply_attr(req, &st, daemon_of(req)->attr_timeout);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

/*
 * The mount log says once that requests really arrive through an io_uring ring: the INIT reply
 * only shows that libfuse started its rings (initx.c), the kernel uses them once every ring is
 * registered. A relaxed load per create, lookup and getattr after that.
 */
static void note_transport(fuse_req_t req)
{
#ifdef PMFUSE_HAVE_FUSE_URING
	static bool seen;

	if (!__atomic_load_n(&seen, __ATOMIC_RELAXED) && fuse_req_is_uring(req) &&
	    !__atomic_exchange_n(&seen, true, __ATOMIC_RELAXED))
		pmfuse_log(PMFUSE_LOG_INFO, "first request served through an io_uring ring");
#else
	(void)req;
#endif
}

/* Set by init when the kernel enforces POSIX ACLs (one session per process). */
static bool acl_enabled;

static void want(struct fuse_conn_info *conn, unsigned cap)
{
	if (conn->capable & cap)
		conn->want |= cap;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct pmfuse_daemon *d = userdata;

	conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_HANDLE_KILLPRIV |
				  FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK |
				  FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
				  FUSE_CAP_SPLICE_MOVE);
	want(conn, FUSE_CAP_CACHE_SYMLINKS);
	if (d->acl && (conn->capable & FUSE_CAP_POSIX_ACL)) {
		want(conn, FUSE_CAP_POSIX_ACL);
		want(conn, FUSE_CAP_DONT_MASK);
		acl_enabled = true;
	}
	if (d->export_support)
		want(conn, FUSE_CAP_EXPORT_SUPPORT);
	if (d->writeback_cache && !(conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
		pmfuse_log(PMFUSE_LOG_WARN, "the kernel offers no writeback cache: every write "
			   "stays durable on return");
		d->writeback_cache = false;
	}
	if (d->writeback_cache) {
		want(conn, FUSE_CAP_WRITEBACK_CACHE);
		pmfuse_log(PMFUSE_LOG_INFO, "writeback cache: the kernel buffers writes; data is "
			   "durable at fsync or close");
	}
#ifdef PMFUSE_HAVE_FUSE_URING
	/*
	 * Not the io_uring rings with the writeback cache: on the rings (kernel 6.18, libfuse
	 * 3.18.2) fs_reflink's clone-while-writing test hung with the writeback cache, requests
	 * left unanswered even after the daemon was killed and the connection aborted. Until that
	 * is understood the cache keeps /dev/fuse.
	 */
	if (d->writeback_cache && (conn->want & FUSE_CAP_OVER_IO_URING)) {
		conn->want &= ~(unsigned)FUSE_CAP_OVER_IO_URING;
		if (d->initx && d->initx->uring_wanted)
			pmfuse_log(PMFUSE_LOG_WARN, "transport: /dev/fuse: io_uring is not used "
				   "with -o writeback_cache");
		if (d->initx)
			d->initx->uring_wanted = false;   /* said here, not again at INIT */
	}
#endif
	d->no_opendir = conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT;

	/* libfuse has already capped max_write at its request buffer (1 MiB with 4 KiB pages). */
	conn->max_write = PMFUSE_MIN(conn->max_write, PMFUSE_MAX_WRITE);
	conn->time_gran = 1;

	/*
	 * FUSE DAX (the kernel mapping file ranges of the server's memory straight into the
	 * caller) is offered in FUSE_INIT with FUSE_MAP_ALIGNMENT (flags bit 26) and
	 * FUSE_HAS_INODE_DAX (flags2 bit 1), which the kernel sets only when the connection has a
	 * DAX window (fc->dax), i.e. on virtio-fs; a connection over /dev/fuse, which is what
	 * fuse_session_mount() makes, never has one. libfuse 3.14 has no FUSE_CAP_* bit for
	 * either flag, so conn->capable cannot show it; "pmfuse -d" prints the raw INIT flags
	 * (0x73fffffb on kernel 6.18: bit 26 clear).
	 */
	pmfuse_log(PMFUSE_LOG_INFO, "FUSE protocol %u.%u, max_write %u, max_readahead %u",
		   conn->proto_major, conn->proto_minor, conn->max_write, conn->max_readahead);
	pmfuse_log(PMFUSE_LOG_INFO, "FUSE DAX mapping: not offered by the kernel (a /dev/fuse "
		   "connection has no DAX window); mmap goes through the page cache");
}

static void op_destroy(void *userdata)
{
	(void)userdata;
	pmfuse_log(PMFUSE_LOG_DEBUG, "FUSE session ended");
}

/* ---- namespace -------------------------------------------------------------------------------*/

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct pmfuse_attr a;
	int rc = pmfuse_fs_lookup(fs_of(req), parent, name, &a);

	note_transport(req);
	reply_entry(req, rc, &a);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	pmfuse_fs_forget(fs_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct pmfuse_fs *fs = fs_of(req);

	for (size_t i = 0; i < count; i++)
		pmfuse_fs_forget(fs, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct pmfuse_attr a;
	int rc = pmfuse_fs_getattr(fs_of(req), ino, &a);

	(void)fi;
	note_transport(req);
	reply_attr(req, rc, &a);
}

/*
 * ATIME_NOW and MTIME_NOW come with ATIME and MTIME set too (libfuse passes the kernel's bits);
 * both are passed on, with "now" in the value as well, so the fs may read either.
 */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *st, int to_set,
		       struct fuse_file_info *fi)
{
	struct pmfuse_setattr sa;
	struct pmfuse_cred cred;
	struct pmfuse_attr a;
	struct timespec now;
	unsigned valid = 0;
	int rc;

	(void)fi;
	memset(&sa, 0, sizeof(sa));
	clock_gettime(CLOCK_REALTIME, &now);
	if (to_set & FUSE_SET_ATTR_MODE) {
		valid |= PMFUSE_SET_MODE;
		sa.mode = st->st_mode;
	}
	if (to_set & FUSE_SET_ATTR_UID) {
		valid |= PMFUSE_SET_UID;
		sa.uid = st->st_uid;
	}
	if (to_set & FUSE_SET_ATTR_GID) {
		valid |= PMFUSE_SET_GID;
		sa.gid = st->st_gid;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (st->st_size < 0) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		valid |= PMFUSE_SET_SIZE;
		sa.size = (uint64_t)st->st_size;
	}
	if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
		valid |= PMFUSE_SET_ATIME | PMFUSE_SET_ATIME_NOW;
		sa.atime = now;
	} else if (to_set & FUSE_SET_ATTR_ATIME) {
		valid |= PMFUSE_SET_ATIME;
		sa.atime = st->st_atim;
	}
	if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
		valid |= PMFUSE_SET_MTIME | PMFUSE_SET_MTIME_NOW;
		sa.mtime = now;
	} else if (to_set & FUSE_SET_ATTR_MTIME) {
		valid |= PMFUSE_SET_MTIME;
		sa.mtime = st->st_mtim;
	}
	if (to_set & FUSE_SET_ATTR_CTIME) {
		valid |= PMFUSE_SET_CTIME;
		sa.ctime = st->st_ctim;
	}
	/* FATTR_KILL_SUIDGID (HANDLE_KILLPRIV_V2): truncate by a caller without CAP_FSETID, chown */
	if (to_set & (FUSE_SET_ATTR_KILL_SUID | FUSE_SET_ATTR_KILL_SGID))
		valid |= PMFUSE_SET_KILL_SUID;

	cred_of(req, &cred);
	/* no KILLPRIV_V2: a truncation says nothing of the caller; ask, for a file with the bits */
	if ((valid & PMFUSE_SET_SIZE) &&
	    !(valid & (PMFUSE_SET_KILL_SUID | PMFUSE_SET_UID | PMFUSE_SET_GID)) &&
	    !kernel_marks_fsetid(req)) {
		struct pmfuse_attr cur;
		bool in_group;

		if (!pmfuse_fs_getattr(fs_of(req), ino, &cur) && S_ISREG(cur.mode) &&
		    (cur.mode & (S_ISUID | S_ISGID)) && !req_privs(&cred, cur.gid, &in_group))
			valid |= PMFUSE_SET_KILL_SUID;
	}
	rc = pmfuse_fs_setattr(fs_of(req), ino, &sa, valid, &cred, &a);
	reply_attr(req, rc, &a);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	int rc = pmfuse_fs_readlink(fs_of(req), ino, buf, sizeof(buf));

	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_readlink(req, buf);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	struct pmfuse_cred cred;
	struct pmfuse_attr a;
	int rc;

	cred_of(req, &cred);
	rc = pmfuse_fs_mknod(fs_of(req), parent, name, mode, rdev, &cred, &a);
	reply_entry(req, rc, &a);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct pmfuse_cred cred;
	struct pmfuse_attr a;
	int rc;

	cred_of(req, &cred);
	rc = pmfuse_fs_mkdir(fs_of(req), parent, name, S_IFDIR | (mode & 07777), &cred, &a);
	reply_entry(req, rc, &a);
}

static void op_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
	struct pmfuse_cred cred;
	struct pmfuse_attr a;
	int rc;

	cred_of(req, &cred);
	rc = pmfuse_fs_symlink(fs_of(req), parent, name, target, &cred, &a);
	reply_entry(req, rc, &a);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct pmfuse_attr a;
	int rc = pmfuse_fs_link(fs_of(req), ino, newparent, newname, &a);

	reply_entry(req, rc, &a);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -pmfuse_fs_unlink(fs_of(req), parent, name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -pmfuse_fs_rmdir(fs_of(req), parent, name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	unsigned pflags = 0;

	if (flags & RENAME_NOREPLACE)
		pflags |= PMFUSE_RENAME_NOREPLACE;
	if (flags & RENAME_EXCHANGE)
		pflags |= PMFUSE_RENAME_EXCHANGE;
	/* RENAME_WHITEOUT (overlayfs upper layers) and anything newer. */
	if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	fuse_reply_err(req, -pmfuse_fs_rename(fs_of(req), parent, name, newparent, newname,
					      pflags));
}

/* ---- files ---------------------------------------------------------------------------------- */

/*
 * Contents change only through this daemon, and every change made through the kernel is made
 * to its page cache as well (writes go through the page cache to us, at once or, with the
 * writeback cache, later), so the cache stays valid across opens; the changes the kernel does
 * not see (a clone into the file, see ioctl.c) invalidate it explicitly. direct_io stays off
 * so that mmap works. fh records the open flags for the ioctls. Nothing checks them for a
 * read: with the writeback cache the kernel reads through a write-only handle to fill the
 * rest of a partly written page.
 */
static void open_flags(struct fuse_file_info *fi)
{
	fi->fh = pmfuse_fh_of_flags(fi->flags);
	fi->keep_cache = 1;
	fi->direct_io = 0;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* Permissions were checked by the kernel (default_permissions); O_TRUNC arrives as a
	 * separate SETATTR since ATOMIC_O_TRUNC is off. */
	(void)ino;
	open_flags(fi);
	fuse_reply_open(req, fi);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	struct pmfuse_cred cred;
	struct pmfuse_attr a;
	int rc;

	cred_of(req, &cred);
	note_transport(req);
	if (!strcmp(name, PMFUSE_TMPFILE_NAME))    /* FUSE_TMPFILE, as initx.c passes it on */
		rc = pmfuse_fs_tmpfile(fs_of(req), parent, mode, &cred, &a);
	else
		rc = pmfuse_fs_mknod(fs_of(req), parent, name, S_IFREG | (mode & 07777), 0, &cred,
				     &a);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	entry_of(req, &a, &e);
	open_flags(fi);
	if (fuse_reply_create(req, &e, fi))
		pmfuse_fs_forget(fs_of(req), a.ino, 1);
}

#ifdef PMFUSE_HAVE_FUSE_TMPFILE
/*
 * FUSE_TMPFILE (O_TMPFILE) from libfuse >= 3.17, which serves it on /dev/fuse and on the
 * io_uring rings alike (there initx.c's read hook, which turns it into a CREATE for an older
 * libfuse, never sees it): the same fs call as the create handler's for PMFUSE_TMPFILE_NAME.
 */
static void op_tmpfile(fuse_req_t req, fuse_ino_t parent, mode_t mode, struct fuse_file_info *fi)
{
	op_create(req, parent, PMFUSE_TMPFILE_NAME, mode, fi);
}
#endif

struct read_reply {
	fuse_req_t req;
	struct pmfuse_fs *fs;
	bool replied;
};

/* The request of this thread has had its reply (GUARDED must not send another). */
static __thread bool reply_sent;

/*
 * A reply buffer per worker thread, kept for the thread's life: a buffer allocated per request
 * (as libfuse's fuse_reply_data fallback does, posix_memalign + free) comes back from the
 * kernel as fresh pages each time at these sizes, one page fault per 4 KiB: 1 MiB reads ran at
 * 60-120 MiB/s that way.
 */
static pthread_key_t rbuf_key;
static pthread_once_t rbuf_once = PTHREAD_ONCE_INIT;

struct rbuf {
	size_t cap;
	char *p;
};

static void rbuf_free(void *arg)
{
	struct rbuf *b = arg;

	free(b->p);
	free(b);
}

static void rbuf_init(void)
{
	if (pthread_key_create(&rbuf_key, rbuf_free))
		abort();
}

static char *rbuf_get(size_t len)
{
	struct rbuf *b;

	pthread_once(&rbuf_once, rbuf_init);
	b = pthread_getspecific(rbuf_key);
	if (!b) {
		b = calloc(1, sizeof(*b));
		if (!b || pthread_setspecific(rbuf_key, b)) {
			free(b);
			return NULL;
		}
	}
	if (b->cap < len) {
		char *p = malloc(len);

		if (!p)
			return NULL;
		free(b->p);
		b->p = p;
		b->cap = len;
	}
	return b->p;
}

/*
 * Where the pool prefers reads through its file (pmfuse_fs_read_source): the vectors are
 * pread() from the pool file into the thread's reply buffer and sent from there, so the kernel
 * copies from its page cache and the daemon takes no page fault for pool pages it never mapped
 * (data written by pwrite, or anything after a fresh mount). One more copy than writev from the
 * mapping, which costs less than the faults. Returns 1 when the pool has no such file or the
 * vectors do not touch it (then the caller sends the vectors).
 */
static int read_emit_fd(struct read_reply *r, const struct iovec *iov, int cnt)
{
	size_t len = 0, pos = 0;
	bool any = false;
	uint64_t off;
	char *buf;
	int fd;

	for (int i = 0; i < cnt; i++) {
		len += iov[i].iov_len;
		any = any || pmfuse_fs_read_source(r->fs, iov[i].iov_base, &fd, &off);
	}
	if (!any)
		return 1;   /* holes only, or no pool file */
	buf = rbuf_get(len);
	if (!buf)
		return fuse_reply_err(r->req, ENOMEM);
	for (int i = 0; i < cnt; i++) {
		size_t n = iov[i].iov_len, done = 0;

		if (!pmfuse_fs_read_source(r->fs, iov[i].iov_base, &fd, &off)) {
			memcpy(buf + pos, iov[i].iov_base, n);
			pos += n;
			continue;
		}
		while (done < n) {
			ssize_t got = pread(fd, buf + pos + done, n - done, (off_t)(off + done));

			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0)
				return fuse_reply_err(r->req, got < 0 ? errno : EIO);
			done += (size_t)got;
		}
		pos += n;
	}
	return fuse_reply_buf(r->req, buf, len);
}

/*
 * The kernel met a memory error copying a read reply out of the pool (writev to /dev/fuse
 * fails with EFAULT; the kernel has already ended the request with EIO). Touching the vectors
 * again faults in this thread, under the request's recovery point (GUARDED), which logs the
 * block and marks the inode; no second reply. Only after a failure: probing every reply first
 * cost 3x on 1 MiB reads here (a first touch from user space faults the page into this
 * process; the kernel's copy reads it through its own mapping).
 */
static void find_bad_page(struct read_reply *r, const struct iovec *iov, int cnt)
{
	reply_sent = true;
	for (int i = 0; i < cnt; i++)
		pmfuse_fs_probe(r->fs, iov[i].iov_base, iov[i].iov_len);
	pmfuse_log(PMFUSE_LOG_ERR, "a read reply failed with EFAULT, but its pages read fine "
		   "on a second look");
}

/* Called by the fs under its lock with vectors into the pool: they go out before it returns. */
static int read_emit(void *arg, const struct iovec *iov, int cnt)
{
	struct read_reply *r = arg;
	size_t len = 0;
	char *buf, *p;
	int rc;

	r->replied = true;
	if (cnt <= 0)
		return fuse_reply_buf(r->req, NULL, 0);
	rc = read_emit_fd(r, iov, cnt);
	if (rc != 1)
		return rc;
	if (cnt < IOV_MAX) {         /* fuse_reply_iov adds one vector for the header */
		rc = fuse_reply_iov(r->req, iov, cnt);
		if (rc == -EFAULT)
			find_bad_page(r, iov, cnt);
		return rc;
	}

	/* Very fragmented: more vectors than one writev takes. */
	for (int i = 0; i < cnt; i++)
		len += iov[i].iov_len;
	buf = malloc(len);
	if (!buf)
		return fuse_reply_err(r->req, ENOMEM);
	p = buf;
	for (int i = 0; i < cnt; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	rc = fuse_reply_buf(r->req, buf, len);
	free(buf);
	return rc;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct read_reply r = { .req = req, .fs = fs_of(req) };
	int rc;

	(void)fi;
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	rc = pmfuse_fs_read(fs_of(req), ino, (uint64_t)off, size, read_emit, &r);
	if (r.replied)
		return;
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_buf(req, NULL, 0);
}

/*
 * The offset is the kernel's: for O_APPEND it is the kernel's i_size, taken under the inode
 * lock, and the page cache already holds the bytes at that offset, so the fs must not move them.
 *
 * Setuid/setgid: the kernel marks a write by a caller without CAP_FSETID with
 * FUSE_WRITE_KILL_SUIDGID (direct writes always, cached ones under HANDLE_KILLPRIV_V2, which
 * pmfuse grants except over io_uring; without it the kernel clears the bits itself first, and
 * a direct write's flag, lost on a ring, has nothing left to clear). libfuse drops that flag,
 * so the session's read hook carries it in fi->flags (PMFUSE_FI_KILL_SUIDGID); the fs applies
 * pmfuse_fs_mode_after_change with it, which asks the caller's groups only for setgid without
 * group-exec. With the writeback cache, pages are written back as requests with
 * fi->writepage set and no credentials (the kernel's nocreds): they clear nothing, which is
 * right since the kernel sends a write to a file whose setuid or setgid must go straight
 * through, with the writer's credentials (fuse_cache_write_iter: HANDLE_KILLPRIV_V2 and
 * setattr_should_drop_suidgid), so the bits are cleared at write(2) time, as on ext4. A written-back page is all or nothing for
 * the kernel: it ignores a short count (fuse_writepage_end looks only at the error), so the
 * bytes past it would be lost without a word; such a write goes on until it is done or fails,
 * and the failure (ENOSPC) is what fsync and close report.
 */
static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct pmfuse_cred cred;
	bool dropped, more;
	unsigned wflags;
	ssize_t n;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	cred_of(req, &cred);
	cred.fsetid = !fi->writepage && ((unsigned)fi->flags & PMFUSE_FI_KILL_SUIDGID) ? -1 : 1;
	/* without KILLPRIV_V2, or through a ring (initx.c), an unmarked write may come from a
	 * caller without CAP_FSETID: the fs asks /proc, for a file with either bit only */
	if (!fi->writepage && cred.fsetid > 0 && (!kernel_marks_fsetid(req) || req_on_ring(req)))
		cred.fsetid = 0;
	/* a written-back page: the kernel has its own mtime and ctime for the write, taken when
	 * it was made, and sends them with SETATTR (before or after this request) */
	wflags = fi->writepage ? PMFUSE_WRITE_KEEP_TIMES : 0;
	n = pmfuse_fs_write_flags(fs_of(req), ino, buf, size, (uint64_t)off, wflags, &cred,
				  &dropped);
	while (fi->writepage && n > 0 && (size_t)n < size) {
		ssize_t m = pmfuse_fs_write_flags(fs_of(req), ino, buf + n, size - (size_t)n,
						  (uint64_t)off + (uint64_t)n, wflags, &cred, &more);

		dropped |= more;
		n = m <= 0 ? (m < 0 ? m : -EIO) : n + m;
	}
	/* The kernel keeps the old mode until its attributes time out unless told (a statx for
	 * the mode alone, as "stat -c %A" makes, would not even refresh them). */
	if (dropped)
		pmfuse_notifier_inval_attr(daemon_of(req)->notifier, ino);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/*
 * With the writeback cache the kernel has written the file's dirty pages back before it sends
 * FSYNC, but it keeps showing the st_blocks of before until the attributes time out or the
 * file is closed (fuse_flush drops them; fsync does not): dropping them here makes st_blocks
 * right after fsync, as du expects. Attributes only: no page lock, so from the handler.
 */
static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	int rc = pmfuse_fs_fsync(fs_of(req), ino);

	(void)datasync;
	(void)fi;
	if (!rc && daemon_of(req)->writeback_cache)
		pmfuse_notifier_inval_attr(daemon_of(req)->notifier, ino);
	fuse_reply_err(req, -rc);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	struct pmfuse_cred cred;
	bool dropped;
	int rc;

	(void)fi;
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/*
	 * A fallocate changes the file as a write does, so it drops setuid/setgid as XFS and
	 * ext4 do (file_modified), in its own transaction; FUSE leaves that to the server and
	 * sends no kill flag. The kernel is told, since it would keep showing the old mode.
	 */
	cred_of(req, &cred);
	rc = pmfuse_fs_fallocate(fs_of(req), ino, mode, (uint64_t)off, (uint64_t)len, &cred,
				 &dropped);
	if (!rc && dropped)
		pmfuse_notifier_inval_attr(daemon_of(req)->notifier, ino);
	fuse_reply_err(req, -rc);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	int64_t rc;

	(void)fi;
	/*
	 * With the writeback cache the kernel sends LSEEK without writing back dirty pages
	 * first (fs/fuse/file.c, fuse_lseek), so the pool may show a hole, or an EOF, where the
	 * page cache holds data: SEEK_DATA would skip it (cp --sparse would lose it). ENOSYS
	 * makes the kernel answer every SEEK_DATA/SEEK_HOLE itself from now on
	 * (generic_file_llseek over its own i_size: all data, the hole at EOF, as POSIX allows).
	 */
	if (daemon_of(req)->writeback_cache) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	/* The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself. */
	if (whence != SEEK_DATA && whence != SEEK_HOLE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	rc = pmfuse_fs_lseek(fs_of(req), ino, off, whence);
	if (rc < 0)
		fuse_reply_err(req, (int)-rc);
	else
		fuse_reply_lseek(req, rc);
}

/* ---- directories ---------------------------------------------------------------------------- */

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	if (daemon_of(req)->no_opendir) {
		/* "Success, and do not ask again": the kernel opens directories by itself. */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	op_fsync(req, ino, datasync, fi);
}

struct dir_reply {
	fuse_req_t req;
	char *buf;
	size_t size, pos;
};

static int readdir_emit(void *arg, const char *name, uint64_t ino, unsigned type,
			uint64_t next_cookie)
{
	struct dir_reply *r = arg;
	struct stat st = { .st_ino = ino, .st_mode = (mode_t)type << 12 };
	size_t len;

	len = fuse_add_direntry(r->req, r->buf + r->pos, r->size - r->pos, name, &st,
				(off_t)next_cookie);
	if (len > r->size - r->pos)
		return 1;
	r->pos += len;
	return 0;
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct dir_reply r = { .req = req, .size = size };
	int rc;

	(void)fi;
	r.buf = malloc(size ? size : 1);
	if (!r.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rc = pmfuse_fs_readdir(fs_of(req), ino, (uint64_t)off, readdir_emit, &r);
	if (rc < 0 && r.pos == 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_buf(req, r.buf, r.pos);
	free(r.buf);
}

/*
 * readdirplus in two passes. The first, inside pmfuse_fs_readdir (and so under the fs lock),
 * only records which entries fit in the reply; the second looks each name up, which takes the
 * reference the kernel will hold, outside that lock. An entry that vanished in between goes
 * out with node id 0: the kernel lists it but makes no dentry and counts no reference.
 */
struct plus_entry {
	uint64_t ino, next;
	unsigned type;
	size_t name;                 /* offset into names */
	bool referenced;
};

struct plus_reply {
	fuse_req_t req;
	size_t size, used;           /* reply bytes the recorded entries take */
	struct plus_entry *ent;
	size_t cnt, cap;
	char *names;
	size_t names_len, names_cap;
};

static int plus_record(void *arg, const char *name, uint64_t ino, unsigned type,
		       uint64_t next_cookie)
{
	struct plus_reply *r = arg;
	size_t len = fuse_add_direntry_plus(r->req, NULL, 0, name, NULL, 0);
	size_t nlen = strlen(name) + 1;

	if (len > r->size - r->used)
		return 1;
	if (r->cnt == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 32;
		struct plus_entry *ent = realloc(r->ent, cap * sizeof(*ent));
		if (!ent)
			return -ENOMEM;
		r->ent = ent;
		r->cap = cap;
	}
	if (r->names_len + nlen > r->names_cap) {
		size_t cap = PMFUSE_MAX(2 * r->names_cap, r->names_len + nlen + 1024);
		char *names = realloc(r->names, cap);
		if (!names)
			return -ENOMEM;
		r->names = names;
		r->names_cap = cap;
	}
	memcpy(r->names + r->names_len, name, nlen);
	r->ent[r->cnt++] = (struct plus_entry){
		.ino = ino, .next = next_cookie, .type = type, .name = r->names_len,
	};
	r->names_len += nlen;
	r->used += len;
	return 0;
}

static bool dot_or_dotdot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	struct plus_reply r = { .req = req, .size = size };
	struct pmfuse_fs *fs = fs_of(req);
	size_t pos = 0;
	char *buf = NULL;
	int rc;

	(void)fi;
	rc = pmfuse_fs_readdir(fs, ino, (uint64_t)off, plus_record, &r);
	if (rc < 0 && r.cnt == 0) {
		fuse_reply_err(req, -rc);
		goto out;
	}
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		goto out;
	}
	for (size_t i = 0; i < r.cnt; i++) {
		struct plus_entry *pe = &r.ent[i];
		const char *name = r.names + pe->name;
		struct fuse_entry_param e;
		struct pmfuse_attr a;

		if (!dot_or_dotdot(name) && pmfuse_fs_lookup(fs, ino, name, &a) == 0) {
			entry_of(req, &a, &e);
			pe->ino = a.ino;
			pe->referenced = true;
		} else {
			memset(&e, 0, sizeof(e));
			e.attr.st_ino = pe->ino;
			e.attr.st_mode = (mode_t)pe->type << 12;
		}
		pos += fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e,
					      (off_t)pe->next);
	}
	if (fuse_reply_buf(req, buf, pos)) {
		for (size_t i = 0; i < r.cnt; i++)
			if (r.ent[i].referenced)
				pmfuse_fs_forget(fs, r.ent[i].ino, 1);
	}
out:
	free(buf);
	free(r.ent);
	free(r.names);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct pmfuse_statfs s;
	struct statvfs st;
	int rc;

	(void)ino;
	rc = pmfuse_fs_statfs(fs_of(req), &s);
	if (rc < 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	memset(&st, 0, sizeof(st));
	st.f_bsize = s.block_size;
	st.f_frsize = s.block_size;
	st.f_blocks = s.blocks;
	st.f_bfree = s.blocks_free;
	st.f_bavail = s.blocks_avail;
	st.f_files = s.files;
	st.f_ffree = s.files_free;
	st.f_favail = s.files_free;
	st.f_namemax = s.name_max;
	fuse_reply_statfs(req, &st);
}

/* ---- extended attributes -------------------------------------------------------------------- */

/* ACLs unless the kernel enforces them (see the top of this file): refused, not stored. */
static bool is_acl(const char *name)
{
	return !acl_enabled && (!strcmp(name, "system.posix_acl_access") ||
				!strcmp(name, "system.posix_acl_default"));
}

bool pmfuse_caller_privs(const struct fuse_ctx *ctx, gid_t gid, uint64_t *caps, bool *in_group)
{
	char path[64], *line = NULL;
	bool known = false;
	size_t cap = 0;
	FILE *f;

	*caps = 0;
	*in_group = false;
	snprintf(path, sizeof(path), "/proc/%ld/status", (long)ctx->pid);
	f = ctx->pid > 0 ? fopen(path, "re") : NULL;
	while (f && getline(&line, &cap, f) > 0) {
		char *p = line + 7, *end;

		if (!strncmp(line, "CapEff:", 7)) {
			known = true;
			*caps = strtoull(p, NULL, 16);
		} else if (!strncmp(line, "Groups:", 7)) {
			for (unsigned long g = strtoul(p, &end, 10); end != p;
			     p = end, g = strtoul(p, &end, 10))
				*in_group |= g == gid;
		}
	}
	free(line);
	if (f)
		fclose(f);
	return known;
}

bool pmfuse_caller_has(const struct fuse_ctx *ctx, int cap)
{
	uint64_t caps;
	bool in_group;

	if (!pmfuse_caller_privs(ctx, ctx->gid, &caps, &in_group))
		return ctx->uid == 0;
	return caps & PMFUSE_CAP(cap);
}

/*
 * Whether setting an access ACL must clear setgid (posix_acl_update_mode: the caller is not in
 * the file's group and lacks CAP_FSETID). The kernel computes this and sends it as
 * FUSE_SETXATTR_ACL_KILL_SGID, but only in the extended setxattr header, which libfuse 3.14
 * neither negotiates (FUSE_SETXATTR_EXT) nor passes on; so the same rule runs here, over the
 * fsgid from the request and the supplementary groups and effective capabilities of the
 * calling thread (/proc/TID/status, as fuse_req_getgroups reads). Unreadable (the caller
 * exited): only root keeps setgid.
 */
static bool acl_kills_sgid(fuse_req_t req, fuse_ino_t ino)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct pmfuse_attr a;
	uint64_t caps;
	bool in_group;

	if (pmfuse_fs_getattr(fs_of(req), ino, &a) || !(a.mode & S_ISGID) || ctx->gid == a.gid)
		return false;
	if (!pmfuse_caller_privs(ctx, a.gid, &caps, &in_group))
		return ctx->uid != 0;
	return !(caps & PMFUSE_CAP(CAP_FSETID)) && !in_group;
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	if (is_acl(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (acl_enabled && !strcmp(name, "system.posix_acl_access") && acl_kills_sgid(req, ino))
		flags |= PMFUSE_XATTR_ACL_KILL_SGID;
	fuse_reply_err(req, -pmfuse_fs_setxattr(fs_of(req), ino, name, value, size, flags));
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char *buf = NULL;
	ssize_t n;

	if (is_acl(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	size = PMFUSE_MIN(size, XATTR_VALUE_MAX);
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = pmfuse_fs_getxattr(fs_of(req), ino, name, buf, size);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *buf = NULL;
	ssize_t n;

	size = PMFUSE_MIN(size, XATTR_VALUE_MAX);
	if (size && !(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = pmfuse_fs_listxattr(fs_of(req), ino, buf, size);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	if (is_acl(name)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	fuse_reply_err(req, -pmfuse_fs_removexattr(fs_of(req), ino, name));
}

/*
 * With default_permissions the kernel checks access(2) itself and never sends ACCESS; should
 * one arrive, the inode exists and that is all there is left to say.
 */
static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct pmfuse_attr a;

	(void)mask;
	fuse_reply_err(req, -pmfuse_fs_getattr(fs_of(req), ino, &a));
}

/*
 * With EXPORT_SUPPORT the kernel resolves NFS file handles of inodes it no longer caches by
 * looking up "." in the inode and finds parents of directories by looking up "..". The root is
 * its own parent, so both must return the root.
 */
bool pmfuse_ops_probe_export(struct pmfuse_fs *fs)
{
	struct pmfuse_attr a;
	bool ok = true;

	for (int i = 0; i < 2; i++) {
		if (pmfuse_fs_lookup(fs, PMFUSE_ROOT_INO, i ? ".." : ".", &a)) {
			ok = false;
			continue;
		}
		ok = ok && a.ino == PMFUSE_ROOT_INO;
		pmfuse_fs_forget(fs, a.ino, 1);
	}
	return ok;
}

/* ---- memory errors ----------------------------------------------------------------------- */

/*
 * Every request runs under a recovery point (pool.h, fs.h): a SIGBUS on a pool access (a
 * poisoned line, a shortened pool file) fails that request with EIO, the fs rolls back and
 * lets go of what it held, logs the inode and block and marks the inode damaged, and every
 * other request goes on. Arming costs a sigsetjmp without the signal mask (no system call).
 * The reply is the last thing each handler does after its fs call returned, so a fault is
 * before it, but for read replies, which point into the pool: a fault there surfaces as EFAULT
 * from writev after the kernel ended the request, and read_emit looks for it (find_bad_page).
 */
#define GUARDED(req, ino, call, fault_reply)                                              \
	do {                                                                              \
		struct pmfuse_pool_fault f_;                                              \
		/* req may be freed by the time a fault comes back (a sent reply) */     \
		struct pmfuse_fs *fs_ = fs_of(req);                                       \
		reply_sent = false;                                                       \
		if (sigsetjmp(f_.env, 0)) {                                               \
			pmfuse_fs_fault_recover(fs_, (ino), f_.off);                      \
			if (!reply_sent)                                                  \
				fault_reply;                                              \
			return;                                                           \
		}                                                                         \
		pmfuse_fs_fault_arm(fs_, &f_);                                            \
		call;                                                                     \
		pmfuse_fs_fault_disarm(&f_);                                              \
	} while (0)

static void g_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	GUARDED(req, parent, op_lookup(req, parent, name), fuse_reply_err(req, EIO));
}

static void g_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	GUARDED(req, ino, op_forget(req, ino, nlookup), fuse_reply_none(req));
}

static void g_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	GUARDED(req, 0, op_forget_multi(req, count, forgets), fuse_reply_none(req));
}

static void g_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_getattr(req, ino, fi), fuse_reply_err(req, EIO));
}

static void g_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *st, int to_set,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_setattr(req, ino, st, to_set, fi), fuse_reply_err(req, EIO));
}

static void g_readlink(fuse_req_t req, fuse_ino_t ino)
{
	GUARDED(req, ino, op_readlink(req, ino), fuse_reply_err(req, EIO));
}

static void g_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	GUARDED(req, parent, op_mknod(req, parent, name, mode, rdev), fuse_reply_err(req, EIO));
}

static void g_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	GUARDED(req, parent, op_mkdir(req, parent, name, mode), fuse_reply_err(req, EIO));
}

static void g_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	GUARDED(req, parent, op_unlink(req, parent, name), fuse_reply_err(req, EIO));
}

static void g_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	GUARDED(req, parent, op_rmdir(req, parent, name), fuse_reply_err(req, EIO));
}

static void g_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
	GUARDED(req, parent, op_symlink(req, target, parent, name), fuse_reply_err(req, EIO));
}

static void g_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		const char *newname, unsigned int flags)
{
	GUARDED(req, parent, op_rename(req, parent, name, newparent, newname, flags),
		fuse_reply_err(req, EIO));
}

static void g_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	GUARDED(req, ino, op_link(req, ino, newparent, newname), fuse_reply_err(req, EIO));
}

static void g_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_open(req, ino, fi), fuse_reply_err(req, EIO));
}

static void g_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_read(req, ino, size, off, fi), fuse_reply_err(req, EIO));
}

static void g_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_write(req, ino, buf, size, off, fi), fuse_reply_err(req, EIO));
}

static void g_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_release(req, ino, fi), fuse_reply_err(req, EIO));
}

static void g_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_fsync(req, ino, datasync, fi), fuse_reply_err(req, EIO));
}

static void g_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_opendir(req, ino, fi), fuse_reply_err(req, EIO));
}

static void g_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_readdir(req, ino, size, off, fi), fuse_reply_err(req, EIO));
}

static void g_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_readdirplus(req, ino, size, off, fi), fuse_reply_err(req, EIO));
}

static void g_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_releasedir(req, ino, fi), fuse_reply_err(req, EIO));
}

static void g_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_fsyncdir(req, ino, datasync, fi), fuse_reply_err(req, EIO));
}

static void g_statfs(fuse_req_t req, fuse_ino_t ino)
{
	GUARDED(req, ino, op_statfs(req, ino), fuse_reply_err(req, EIO));
}

static void g_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
		size_t size, int flags)
{
	GUARDED(req, ino, op_setxattr(req, ino, name, value, size, flags),
		fuse_reply_err(req, EIO));
}

static void g_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	GUARDED(req, ino, op_getxattr(req, ino, name, size), fuse_reply_err(req, EIO));
}

static void g_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	GUARDED(req, ino, op_listxattr(req, ino, size), fuse_reply_err(req, EIO));
}

static void g_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	GUARDED(req, ino, op_removexattr(req, ino, name), fuse_reply_err(req, EIO));
}

static void g_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	GUARDED(req, ino, op_access(req, ino, mask), fuse_reply_err(req, EIO));
}

static void g_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		struct fuse_file_info *fi)
{
	GUARDED(req, parent, op_create(req, parent, name, mode, fi), fuse_reply_err(req, EIO));
}

#ifdef PMFUSE_HAVE_FUSE_TMPFILE
static void g_tmpfile(fuse_req_t req, fuse_ino_t parent, mode_t mode, struct fuse_file_info *fi)
{
	GUARDED(req, parent, op_tmpfile(req, parent, mode, fi), fuse_reply_err(req, EIO));
}
#endif

static void g_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_fallocate(req, ino, mode, off, len, fi), fuse_reply_err(req, EIO));
}

static void g_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		struct fuse_file_info *fi)
{
	GUARDED(req, ino, op_lseek(req, ino, off, whence, fi), fuse_reply_err(req, EIO));
}

static void g_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
		struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
		struct fuse_file_info *fi_out, size_t len, int flags)
{
	GUARDED(req, ino_in, pmfuse_op_copy_file_range(req, ino_in, off_in, fi_in, ino_out,
							off_out, fi_out, len, flags),
		fuse_reply_err(req, EIO));
}

static void g_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
		struct fuse_file_info *fi, unsigned flags, const void *in_buf, size_t in_bufsz,
		size_t out_bufsz)
{
	GUARDED(req, ino, pmfuse_op_ioctl(req, ino, cmd, arg, fi, flags, in_buf, in_bufsz,
					  out_bufsz),
		fuse_reply_err(req, EIO));
}

/*
 * copy_file_range and ioctl are in ioctl.c. Not here: locks (the kernel keeps POSIX and flock
 * locks locally for the mount), bmap, poll, write_buf (see the splice note at the top), and
 * flush: nothing is buffered here, and the ENOSYS libfuse answers makes the kernel stop
 * sending FLUSH, while close() still writes back the pages a shared mapping dirtied first
 * (FOPEN_NOFLUSH would skip that too).
 */
const struct fuse_lowlevel_ops pmfuse_ops = {
	.init = op_init,
	.destroy = op_destroy,
	.lookup = g_lookup,
	.forget = g_forget,
	.forget_multi = g_forget_multi,
	.getattr = g_getattr,
	.setattr = g_setattr,
	.readlink = g_readlink,
	.mknod = g_mknod,
	.mkdir = g_mkdir,
	.unlink = g_unlink,
	.rmdir = g_rmdir,
	.symlink = g_symlink,
	.rename = g_rename,
	.link = g_link,
	.open = g_open,
	.read = g_read,
	.write = g_write,
	.release = g_release,
	.fsync = g_fsync,
	.opendir = g_opendir,
	.readdir = g_readdir,
	.readdirplus = g_readdirplus,
	.releasedir = g_releasedir,
	.fsyncdir = g_fsyncdir,
	.statfs = g_statfs,
	.setxattr = g_setxattr,
	.getxattr = g_getxattr,
	.listxattr = g_listxattr,
	.removexattr = g_removexattr,
	.access = g_access,
	.create = g_create,
	.fallocate = g_fallocate,
	.lseek = g_lseek,
	.copy_file_range = g_copy_file_range,
	.ioctl = g_ioctl,
#ifdef PMFUSE_HAVE_FUSE_TMPFILE
	.tmpfile = g_tmpfile,
#endif
};
