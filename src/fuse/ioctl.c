/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Block sharing through FUSE: copy_file_range, the pmfuse ioctls (include/pmfuse/ioctl.h) and
 * the file attribute ioctls that carry the CoW extent size hint.
 *
 * What reaches the daemon (kernel 6.18, libfuse 3.14). FICLONE, FICLONERANGE, FIDEDUPERANGE
 * and fallocate UNSHARE fail in the VFS with EOPNOTSUPP. copy_file_range(2) arrives as
 * FUSE_COPY_FILE_RANGE_64 first, which libfuse 3.14 does not know and answers ENOSYS, and then
 * as FUSE_COPY_FILE_RANGE (at most 4 GiB - 4 KiB per call), which reaches .copy_file_range.
 * The kernel checked both descriptors (read, write, not O_APPEND, same superblock) and, after
 * the reply, drops the destination's pages over the copied range itself (see notify.c).
 *
 * Other ioctls on a regular file or directory arrive as "restricted" FUSE ioctls: the kernel
 * copies _IOC_SIZE(cmd) bytes in and/or out as _IOC_DIR(cmd) says, and the server may not ask
 * for more (FUSE_IOCTL_RETRY is refused). Unrestricted ioctls come only from CUSE; they, and
 * every command not handled here, get ENOTTY, which tells the caller the file system does not
 * know the command. The pmfuse commands on a directory get EISDIR. The kernel checked nothing
 * but that the caller has the file open, so every rule of FICLONERANGE is checked here:
 * - the destination (the file the ioctl is issued on) must be open for writing and not
 *   O_APPEND: open and create record the open flags in fi->fh for that;
 * - the source descriptor is the caller's: the request carries the caller's thread id, and
 *   pidfd_open(tid, PIDFD_THREAD) + pidfd_getfd() copy it into the daemon (this needs
 *   ptrace rights over the caller, which a root daemon has). The copy holds the very file
 *   the caller passed, so its checks cannot race with the caller reusing the number: it must
 *   be open for reading (F_GETFL), on this file system (st_dev equal to the mount's, read
 *   with statx AT_STATX_DONT_SYNC so the kernel asks us nothing), a regular file (EISDIR for
 *   a directory, EINVAL for others); st_ino is the pmfuse inode number.
 * - the destination loses setuid (and setgid if group-executable) unless the caller has
 *   CAP_FSETID, as file_remove_privs() does for a clone (the kernel does it for
 *   copy_file_range itself).
 *
 * FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR (and FS_IOC_GETFLAGS / FS_IOC_SETFLAGS): the kernel
 * routes ioctl(2) and file_getattr/file_setattr through its fileattr code, which for FUSE opens
 * the file O_RDONLY itself and sends these commands as FUSE ioctls (fs/fuse/ioctl.c,
 * fuse_fileattr_get/set), having already checked ownership (or CAP_FOWNER) for a set. So a
 * set comes on a read-only open and must not need a writable one. The only attribute pmfuse
 * has is the CoW extent size hint: fsx_cowextsize in bytes with FS_XFLAG_COWEXTSIZE, kept by
 * the fs in blocks. Everything else reads as zero and may only be set to zero.
 */
#include "fuse/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <linux/fs.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fs/fs.h"
#include "fuse/notify.h"
#include "pmfuse/ioctl.h"
#include "util/util.h"

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL          /* Linux 6.9: a pidfd for a thread, not only a leader */
#endif

static struct pmfuse_daemon *daemon_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct pmfuse_fs *fs_of(fuse_req_t req)
{
	return daemon_of(req)->fs;
}

/* ---- copy_file_range ------------------------------------------------------------------------ */

void pmfuse_op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			       struct fuse_file_info *fi_out, size_t len, int flags)
{
	struct pmfuse_cred cred;
	bool dropped;
	ssize_t n;

	(void)fi_in;
	(void)fi_out;
	if (flags || off_in < 0 || off_out < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	pmfuse_op_cred(req, &cred);
	n = pmfuse_fs_copy_range(fs_of(req), ino_in, (uint64_t)off_in, ino_out, (uint64_t)off_out,
				 len, &cred, &dropped);
	/* with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves setuid/setgid to the copy and then
	 * refreshes only size and times: the mode it shows must go when the copy dropped a bit */
	if (dropped)
		pmfuse_notifier_inval_attr(daemon_of(req)->notifier, ino_out);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static bool fh_recorded(const struct fuse_file_info *fi)
{
	return fi && (fi->fh & PMFUSE_FH_OPEN);
}

static bool fh_writable(const struct fuse_file_info *fi)
{
	int acc = (int)(fi->fh & O_ACCMODE);

	return fh_recorded(fi) && (acc == O_WRONLY || acc == O_RDWR);
}

static bool fh_append(const struct fuse_file_info *fi)
{
	return fi->fh & O_APPEND;
}

/* [off, off + len) must fit in a loff_t; len 0 means "to EOF". */
static bool range_ok(uint64_t off, uint64_t len)
{
	return off <= INT64_MAX && len <= INT64_MAX - off;
}

/*
 * pidfds of recent callers, so that a series of clones from one thread (cp of many files, a
 * file built block by block) opens and closes one pidfd, not one per call: that pair was two
 * thirds of the cost of fetching the caller's descriptor. A pidfd stays bound to its task: once
 * the thread has exited, pidfd_getfd() fails with ESRCH even if its number was reused, and the
 * entry is replaced. The lock is held across pidfd_getfd() so that no entry is closed (and its
 * number reused) while in use.
 */
#define PIDFD_CACHE 8

static struct {
	pthread_mutex_t lock;
	struct { pid_t tid; int pidfd; } e[PIDFD_CACHE];
	unsigned next;                  /* the entry to replace next */
} pidfds = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int pidfd_open_thread(pid_t tid)
{
	int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);

	if (pidfd < 0 && errno == EINVAL)    /* before 6.9: only a thread group leader */
		pidfd = (int)syscall(SYS_pidfd_open, tid, 0);
	return pidfd < 0 ? -errno : pidfd;
}

/* pidfd_getfd(caller tid, fd) through the cache: a descriptor or -errno. */
static int caller_getfd(pid_t tid, int fd)
{
	int slot = -1, f, err;

	pthread_mutex_lock(&pidfds.lock);
	for (int i = 0; i < PIDFD_CACHE; i++)
		if (pidfds.e[i].pidfd > 0 && pidfds.e[i].tid == tid)
			slot = i;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (slot < 0) {
			int pidfd = pidfd_open_thread(tid);

			if (pidfd < 0) {
				pthread_mutex_unlock(&pidfds.lock);
				return pidfd;
			}
			slot = (int)(pidfds.next++ % PIDFD_CACHE);
			if (pidfds.e[slot].pidfd > 0)
				close(pidfds.e[slot].pidfd);
			pidfds.e[slot].tid = tid;
			pidfds.e[slot].pidfd = pidfd;
		}
		f = (int)syscall(SYS_pidfd_getfd, pidfds.e[slot].pidfd, fd, 0);
		err = errno;
		if (f >= 0 || err != ESRCH || attempt)
			break;
		/* the cached thread is gone: a new one may have its number */
		close(pidfds.e[slot].pidfd);
		pidfds.e[slot].pidfd = 0;
		slot = -1;
	}
	pthread_mutex_unlock(&pidfds.lock);
	return f < 0 ? -err : f;
}

/*
 * Copies the caller's descriptor fd into the daemon (*dup_fd, which the caller of this hands
 * to the notifier to close) and checks it: not O_PATH, on this file system, a regular file.
 * Returns its inode number in *ino and its open flags in *flags.
 */
static int caller_file(fuse_req_t req, int64_t fd, uint64_t *ino, int *flags, int *dup_fd)
{
	const struct pmfuse_daemon *d = daemon_of(req);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct statx stx;
	int f, fl;

	if (fd < 0 || fd > INT_MAX)
		return -EBADF;
	if (!d->dev_known)
		return -EXDEV;               /* cannot tell our files from others (see main.c) */
	/* pid 0: the caller is outside the daemon's pid namespace and cannot be reached */
	if (ctx->pid <= 0)
		return -EPERM;
	f = caller_getfd(ctx->pid, (int)fd);
	if (f < 0)
		return f;                    /* EBADF: no such descriptor; EPERM: cannot trace */
	*dup_fd = f;

	if (statx(f, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &stx))
		return -errno;
	if (makedev(stx.stx_dev_major, stx.stx_dev_minor) != d->dev)
		return -EXDEV;
	if (S_ISDIR(stx.stx_mode))
		return -EISDIR;
	if (!S_ISREG(stx.stx_mode))
		return -EINVAL;
	fl = fcntl(f, F_GETFL);
	if (fl < 0 || (fl & O_PATH))
		return -EBADF;
	*ino = stx.stx_ino;
	*flags = fl;
	return 0;
}

/*
 * Whether the kernel can hold no cached page of a file over [off, ...) given the file's size
 * before a change: the page cache holds folios (at most 2 MiB, naturally aligned) only up to
 * the one that holds the last byte, and one that straddles EOF after a truncation may stay
 * whole. A file of size 0 has none at all.
 */
static bool beyond_cache(uint64_t size, uint64_t off)
{
	const uint64_t folio_max = 2ull << 20;

	return size == 0 || off >= (size + folio_max - 1) / folio_max * folio_max;
}

/*
 * With the writeback cache: when ino is larger now than old_size, the job stores its last
 * byte after the invalidation, which tells the kernel the new size (notify.c).
 */
static void grown_size(struct pmfuse_fs *fs, uint64_t ino, uint64_t old_size,
		       struct pmfuse_deferred *job)
{
	struct pmfuse_attr a;
	uint8_t byte;

	if (pmfuse_fs_getattr(fs, ino, &a) || a.size <= old_size ||
	    pmfuse_fs_pread(fs, ino, &byte, 1, a.size - 1) != 1)
		return;
	job->store_off = a.size;
	job->store_byte = byte;
}

/* ---- the pmfuse ioctls ---------------------------------------------------------------------- */

/*
 * What every pmfuse ioctl that takes a second file starts with: both ranges must fit a loff_t
 * (EINVAL), and the job that closes the copied descriptor (and may reply) is allocated before
 * anything changes (ENOMEM). NULL when the request was answered.
 */
static struct pmfuse_deferred *remap_job(fuse_req_t req, uint64_t src_off, uint64_t len,
					 uint64_t dst_off)
{
	struct pmfuse_deferred *job;

	if (!range_ok(src_off, len) || !range_ok(dst_off, len)) {
		fuse_reply_err(req, EINVAL);
		return NULL;
	}
	job = pmfuse_deferred_new(req);
	if (!job)
		fuse_reply_err(req, ENOMEM);
	return job;
}

/*
 * A clone into the part of a file no page of the cache can cover (the usual case: a new,
 * empty file, as cp makes) needs no page invalidation, only of the attributes, which takes no
 * page lock and so is done here: the reply then goes out from this thread, without the trip
 * through the notifier (about a third of the call). The notifier closes the copied descriptor
 * either way (why, see notify.c).
 *
 * With the writeback cache, a clone that grew the file also goes through the notifier, which
 * stores the file's last byte in the kernel's cache: that is how the kernel, which then keeps
 * its own size of a regular file, learns the new one (notify.c). The kernel flushed none of
 * the destination's dirty pages before this ioctl (nor the source's): the caller must have
 * (pmfusectl fsyncs both), or pages written back later land over the cloned blocks.
 */
static void ioc_clone(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		      const void *in_buf)
{
	struct pmfuse_notifier *n = daemon_of(req)->notifier;
	struct pmfuse_ioc_clone_range a;
	struct pmfuse_deferred *job;
	uint64_t src_ino = 0, old_size = 0;
	int src_flags = 0, rc;

	memcpy(&a, in_buf, sizeof(a));
	if (!fh_writable(fi) || fh_append(fi)) {
		fuse_reply_err(req, EBADF);
		return;
	}
	job = remap_job(req, a.src_offset, a.src_length, a.dest_offset);
	if (!job)
		return;
	rc = caller_file(req, a.src_fd, &src_ino, &src_flags, &job->fd);
	if (!rc && (src_flags & O_ACCMODE) == O_WRONLY)
		rc = -EBADF;
	if (!rc) {
		struct pmfuse_cred cred;

		/* the size before, under the clone's lock: a concurrent write that extends the
		 * file is either in it (and its pages dropped) or lands after the clone; setuid
		 * and setgid go in the clone's transactions (its attributes are dropped below) */
		pmfuse_op_cred(req, &cred);
		rc = pmfuse_fs_clone_range_cred(fs_of(req), src_ino, a.src_offset, a.src_length,
						ino, a.dest_offset, &old_size, &cred);
		/* also on failure: -ENOSPC may leave part of the range cloned */
		if (daemon_of(req)->writeback_cache)
			grown_size(fs_of(req), ino, old_size, job);
		if (beyond_cache(old_size, a.dest_offset) && !job->store_off) {
			pmfuse_notifier_inval_attr(n, ino);
			if (rc)
				fuse_reply_err(req, -rc);
			else
				fuse_reply_ioctl(req, 0, NULL, 0);
			job->req = NULL;
		} else {
			bool pages = !beyond_cache(old_size, a.dest_offset);

			job->ino = ino;
			job->off = pages ? (int64_t)a.dest_offset : -1;
			job->len = pages ? (int64_t)a.src_length : 0;
		}
	}
	job->err = -rc;
	pmfuse_notifier_submit(n, job);
}

/*
 * The destination of a dedupe, from the caller's descriptor fd (copied into *dup_fd): its inode
 * number, after the rights check both dedupe ioctls make: open for writing, or owned by the
 * caller, or the caller has CAP_SYS_ADMIN (-EPERM; the kernel's further case, write permission
 * without a writable descriptor, is not evaluated here).
 */
static int dedupe_dest(fuse_req_t req, int64_t fd, uint64_t *dst_ino, int *dup_fd)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct pmfuse_attr da;
	int dst_flags = 0, rc;

	rc = caller_file(req, fd, dst_ino, &dst_flags, dup_fd);
	if (!rc)
		rc = pmfuse_fs_getattr(fs_of(req), *dst_ino, &da);
	if (!rc && (dst_flags & O_ACCMODE) == O_RDONLY && ctx->uid != da.uid &&
	    !pmfuse_caller_has(ctx, CAP_SYS_ADMIN))
		rc = -EPERM;
	return rc;
}

/*
 * Dedupe, issued on the source (FIDEDUPERANGE with one destination). As there, what concerns
 * the destination is reported in its status, not as the ioctl's error: a bad descriptor, a
 * file elsewhere (-EXDEV), a directory, no right to change it (-EPERM, dedupe_dest()). The
 * contents do not change, so no page is dropped; the attributes are (st_blocks may shrink),
 * from this handler.
 */
static void ioc_dedupe(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		       const void *in_buf)
{
	struct pmfuse_notifier *n = daemon_of(req)->notifier;
	struct pmfuse_ioc_dedupe_range a;
	struct pmfuse_deferred *job;
	uint64_t dst_ino = 0, done = 0;
	int rc;

	memcpy(&a, in_buf, sizeof(a));
	if (!fh_recorded(fi) || (fi->fh & O_ACCMODE) == O_WRONLY) {
		fuse_reply_err(req, EBADF);
		return;
	}
	job = remap_job(req, a.src_offset, a.src_length, a.dest_offset);
	if (!job)
		return;
	job->req = NULL;                     /* replied here; the notifier only closes */
	rc = a.reserved ? -EINVAL : dedupe_dest(req, a.dest_fd, &dst_ino, &job->fd);
	if (!rc) {
		rc = pmfuse_fs_dedupe_range(fs_of(req), ino, a.src_offset, a.src_length, dst_ino,
					    a.dest_offset, &done);
		pmfuse_notifier_inval_attr(n, dst_ino);
	}
	a.bytes_deduped = rc ? 0 : done;
	a.status = rc == -EBADE ? PMFUSE_DEDUPE_DIFFERS : rc ? rc : PMFUSE_DEDUPE_SAME;
	fuse_reply_ioctl(req, 0, &a, sizeof(a));
	pmfuse_notifier_submit(n, job);
}

/*
 * Range dedupe (PMFUSE_IOC_DEDUPE_BLOCKS), issued on the source, open for reading; the
 * destination's rights as for ioc_dedupe, but its errors are the ioctl's. Reserved fields and
 * flags must be zero (EINVAL), so that they can get a meaning later. Like ioc_dedupe, only the
 * destination's attributes are dropped: its bytes stay.
 */
static void ioc_dedupe_blocks(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
			      const void *in_buf)
{
	struct pmfuse_notifier *n = daemon_of(req)->notifier;
	struct pmfuse_ioc_dedupe_blocks a;
	struct pmfuse_dedupe_counts cnt = { 0 };
	struct pmfuse_deferred *job;
	uint64_t dst_ino = 0;
	int rc;

	memcpy(&a, in_buf, sizeof(a));
	if (!fh_recorded(fi) || (fi->fh & O_ACCMODE) == O_WRONLY) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (a.flags || a.reserved || a.reserved2[0] || a.reserved2[1] || a.reserved2[2]) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	job = remap_job(req, a.src_offset, a.length, a.dest_offset);
	if (!job)
		return;
	job->req = NULL;                     /* replied here; the notifier only closes */
	rc = dedupe_dest(req, a.dest_fd, &dst_ino, &job->fd);
	if (!rc) {
		rc = pmfuse_fs_dedupe_blocks(fs_of(req), ino, a.src_offset, a.length, dst_ino,
					     a.dest_offset, &cnt);
		pmfuse_notifier_inval_attr(n, dst_ino);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
	} else {
		a.compared = cnt.compared;
		a.deduped = cnt.deduped;
		a.same = cnt.same;
		a.differ = cnt.differ;
		fuse_reply_ioctl(req, 0, &a, sizeof(a));
	}
	pmfuse_notifier_submit(n, job);
}

/*
 * The bytes stay the same, only the blocks under them change: the cached pages stay valid
 * and only the attributes (st_blocks) are invalidated.
 */
static void ioc_unshare(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
			const void *in_buf)
{
	struct pmfuse_ioc_unshare a;
	struct pmfuse_deferred *job;

	memcpy(&a, in_buf, sizeof(a));
	if (!fh_writable(fi)) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (!range_ok(a.offset, a.length)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	job = pmfuse_deferred_new(req);
	if (!job) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	job->err = -pmfuse_fs_unshare(fs_of(req), ino, a.offset, a.length);
	job->ino = ino;
	job->off = -1;
	pmfuse_notifier_submit(daemon_of(req)->notifier, job);
}

static void ioc_get_extents(fuse_req_t req, fuse_ino_t ino, const void *in_buf)
{
	struct pmfuse_extent_info info[PMFUSE_IOC_EXTENTS_MAX];
	struct pmfuse_ioc_extents out;
	uint64_t start, next = UINT64_MAX;
	int n;

	memcpy(&start, in_buf, sizeof(start));   /* the first field; the rest is output */
	n = pmfuse_fs_get_extents(fs_of(req), ino, start, info, PMFUSE_IOC_EXTENTS_MAX, &next);
	if (n < 0) {
		fuse_reply_err(req, -n);
		return;
	}
	memset(&out, 0, sizeof(out));
	out.start = start;
	out.next = next;
	out.count = (uint32_t)PMFUSE_MIN(n, PMFUSE_IOC_EXTENTS_MAX);
	out.block_size = daemon_of(req)->block_size;
	for (uint32_t i = 0; i < out.count; i++) {
		out.ext[i].logical = info[i].logical;
		out.ext[i].physical = info[i].physical;
		out.ext[i].length = info[i].length;
		out.ext[i].refcount = info[i].refcount;
		out.ext[i].flags = (info[i].refcount > 1 ? PMFUSE_EXTENT_SHARED : 0) |
				   (info[i].unwritten ? PMFUSE_IOC_EXTENT_UNWRITTEN : 0);
	}
	fuse_reply_ioctl(req, 0, &out, sizeof(out));
}

/*
 * Block hashes (PMFUSE_IOC_BLOCK_HASHES): the file must be open for reading, since the hashes
 * tell about its contents. The hashing is src/fs's (blockhash.c); this converts blocks to bytes.
 */
/* A block number as the byte offset the hash ioctls answer; none (or past 2^64) is UINT64_MAX. */
static uint64_t next_bytes(uint64_t next, uint32_t bs)
{
	return next == UINT64_MAX || next > UINT64_MAX / bs ? UINT64_MAX : next * bs;
}

static void ioc_block_hashes(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
			     const void *in_buf)
{
	uint32_t bs = daemon_of(req)->block_size;
	struct pmfuse_ioc_block_hashes *out = NULL;
	struct pmfuse_block_hash *h = NULL;
	uint64_t next = UINT64_MAX;
	int n;

	if (!fh_recorded(fi) || (fi->fh & O_ACCMODE) == O_WRONLY) {
		fuse_reply_err(req, EBADF);
		return;
	}
	out = calloc(1, sizeof(*out));
	h = calloc(PMFUSE_IOC_HASHES_MAX, sizeof(*h));
	if (!out || !h) {
		n = -ENOMEM;
		goto out;
	}
	/* the header only: the rest is output */
	memcpy(out, in_buf, offsetof(struct pmfuse_ioc_block_hashes, h));
	if (out->flags || out->reserved || out->reserved2[0] || out->reserved2[1] || !bs) {
		n = -EINVAL;
		goto out;
	}
	n = pmfuse_fs_block_hashes(fs_of(req), ino, out->start / bs, h, PMFUSE_IOC_HASHES_MAX,
				   NULL, &next);
	if (n < 0)
		goto out;
	out->next = next_bytes(next, bs);
	out->count = (uint32_t)PMFUSE_MIN(n, PMFUSE_IOC_HASHES_MAX);
	out->block_size = bs;
	for (uint32_t i = 0; i < out->count; i++) {
		out->h[i].logical = h[i].fblock * bs;
		out->h[i].physical = h[i].pblock * bs;
		out->h[i].hash = h[i].hash;
		out->h[i].refcount = h[i].refcount;
		out->h[i].flags = h[i].flags & PMFUSE_BLOCK_ZERO ? PMFUSE_HASH_ZERO : 0;
	}
	fuse_reply_ioctl(req, 0, out, sizeof(*out));
	n = 0;
out:
	if (n < 0)
		fuse_reply_err(req, -n);
	free(h);
	free(out);
}

/*
 * Packed block hashes (PMFUSE_IOC_BLOCK_HASHES2): the fs walk stops where the packed answer
 * would overflow (its budget: a word a hash, 3 more a run), in as many walks as zero blocks
 * (which cost nothing) make necessary; each walk takes and lets go of the locks, as one
 * PMFUSE_IOC_BLOCK_HASHES does.
 */
#define HASHES2_RUN_WORDS (sizeof(struct pmfuse_ioc_hash_run) / sizeof(uint64_t))

/* Appends a finished run; the budget keeps runs and hashes inside the answer together, and a
 * fs walk that overran it gets EIO here rather than a write past the buffer. */
static int put_run(struct pmfuse_ioc_block_hashes2 *out, const struct pmfuse_ioc_hash_run *run)
{
	if (HASHES2_RUN_WORDS * (out->runs + 1) + out->hashes > PMFUSE_IOC_HASHES2_WORDS)
		return -EIO;
	memcpy(&out->data[HASHES2_RUN_WORDS * out->runs++], run, sizeof(*run));
	return 0;
}

static void ioc_block_hashes2(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
			      const void *in_buf)
{
	uint32_t bs = daemon_of(req)->block_size;
	struct pmfuse_hash_budget budget = { PMFUSE_IOC_HASHES2_WORDS, HASHES2_RUN_WORDS };
	struct pmfuse_ioc_block_hashes2 *out = NULL;
	struct pmfuse_block_hash *h = NULL;
	uint64_t *hashes = NULL, from, end, next = UINT64_MAX;
	struct pmfuse_ioc_hash_run run = { 0 };
	int n = 0;

	if (!fh_recorded(fi) || (fi->fh & O_ACCMODE) == O_WRONLY) {
		fuse_reply_err(req, EBADF);
		return;
	}
	out = calloc(1, sizeof(*out));
	h = malloc(PMFUSE_IOC_HASHES2_WORDS * sizeof(*h));
	hashes = malloc(PMFUSE_IOC_HASHES2_WORDS * sizeof(*hashes));
	if (!out || !h || !hashes) {
		n = -ENOMEM;
		goto out;
	}
	memcpy(out, in_buf, offsetof(struct pmfuse_ioc_block_hashes2, data));
	if (out->flags || out->reserved || out->reserved2 || out->reserved3[0] ||
	    out->reserved3[1] || !bs) {
		n = -EINVAL;
		goto out;
	}
	from = out->start / bs;
	end = out->end ? out->end / bs + (out->end % bs != 0) : UINT64_MAX;
	out->runs = out->hashes = 0;
	while (from < end && budget.words > HASHES2_RUN_WORDS) {
		unsigned want = budget.words;

		if (end - from < want)
			want = (unsigned)(end - from);
		n = pmfuse_fs_block_hashes(fs_of(req), ino, from, h, want, &budget, &next);
		if (n < 0)
			goto out;
		for (int i = 0; i < n; i++) {
			if (h[i].fblock >= end) {
				next = end;          /* a hole took the walk past the end */
				break;
			}
			if (h[i].flags & PMFUSE_BLOCK_ZERO)
				continue;
			if (run.blocks && h[i].fblock == run.logical + run.blocks &&
			    h[i].pblock == run.physical + run.blocks &&
			    h[i].refcount == run.refcount) {
				run.blocks++;
			} else {
				if (run.blocks && put_run(out, &run) < 0) {
					n = -EIO;
					goto out;
				}
				run = (struct pmfuse_ioc_hash_run){ h[i].fblock, h[i].pblock, 1,
								    h[i].refcount };
			}
			/* the run that holds this hash needs its words too */
			if (HASHES2_RUN_WORDS * (out->runs + 1) + out->hashes + 1 >
			    PMFUSE_IOC_HASHES2_WORDS) {
				n = -EIO;
				goto out;
			}
			hashes[out->hashes++] = h[i].hash;
		}
		if (next == UINT64_MAX || next >= end || next <= from)
			break;
		from = next;
	}
	if (run.blocks && (n = put_run(out, &run)) < 0)
		goto out;
	memcpy(&out->data[HASHES2_RUN_WORDS * out->runs], hashes,
	       out->hashes * sizeof(*hashes));
	for (uint32_t i = 0; i < out->runs; i++) {
		struct pmfuse_ioc_hash_run *r = (void *)&out->data[HASHES2_RUN_WORDS * i];

		r->logical *= bs;
		r->physical *= bs;
	}
	out->next = next_bytes(next, bs);
	out->block_size = bs;
	fuse_reply_ioctl(req, 0, out, sizeof(*out));
	n = 0;
out:
	if (n < 0)
		fuse_reply_err(req, -n);
	free(hashes);
	free(h);
	free(out);
}

/* ---- file attributes ------------------------------------------------------------------------ */

/* fsx_nextents: what FS_IOC_FSGETXATTR reports for XFS, the number of mapped extents. */
static int count_extents(struct pmfuse_fs *fs, uint64_t ino, uint32_t *count)
{
	struct pmfuse_extent_info info[PMFUSE_IOC_EXTENTS_MAX];
	uint64_t start = 0, next;
	uint64_t total = 0;
	int n;

	do {
		next = UINT64_MAX;
		n = pmfuse_fs_get_extents(fs, ino, start, info, PMFUSE_IOC_EXTENTS_MAX, &next);
		if (n < 0)
			return n;
		total += (uint64_t)n;
		if (next <= start)
			break;               /* no progress: do not spin */
		start = next;
	} while (next != UINT64_MAX && n > 0);
	*count = (uint32_t)PMFUSE_MIN(total, (uint64_t)UINT32_MAX);
	return 0;
}

static void ioc_fsgetxattr(fuse_req_t req, fuse_ino_t ino, bool dir, size_t out_bufsz)
{
	uint32_t bs = daemon_of(req)->block_size, blocks = 0;
	struct fsxattr fsx;
	int rc;

	memset(&fsx, 0, sizeof(fsx));
	if (!dir) {
		rc = pmfuse_fs_get_cowextsize(fs_of(req), ino, &blocks);
		if (!rc)
			rc = count_extents(fs_of(req), ino, &fsx.fsx_nextents);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		if (blocks) {
			fsx.fsx_xflags |= FS_XFLAG_COWEXTSIZE;
			fsx.fsx_cowextsize = (uint32_t)PMFUSE_MIN((uint64_t)blocks * bs,
								  (uint64_t)UINT32_MAX / bs * bs);
		}
	}
	fuse_reply_ioctl(req, 0, &fsx, PMFUSE_MIN(out_bufsz, sizeof(fsx)));
}

static void ioc_fssetxattr(fuse_req_t req, fuse_ino_t ino, bool dir, const void *in_buf)
{
	uint32_t bs = daemon_of(req)->block_size, blocks = 0;
	struct fsxattr fsx;
	int rc;

	memcpy(&fsx, in_buf, sizeof(fsx));
	/* fsx_nextents is read-only and comes back as it was read: ignored */
	if (fsx.fsx_extsize || fsx.fsx_projid ||
	    (fsx.fsx_xflags & ~(uint32_t)(dir ? 0 : FS_XFLAG_COWEXTSIZE))) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (dir) {
		fuse_reply_ioctl(req, 0, NULL, 0);
		return;
	}
	if (fsx.fsx_xflags & FS_XFLAG_COWEXTSIZE) {
		if (!bs || fsx.fsx_cowextsize % bs) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		blocks = fsx.fsx_cowextsize / bs;
	}
	rc = pmfuse_fs_set_cowextsize(fs_of(req), ino, blocks);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_ioctl(req, 0, NULL, 0);
}

/* lsattr and chattr: no inode flags; only "none" may be set. The kernel passes an int. */
static void ioc_getflags(fuse_req_t req, size_t out_bufsz)
{
	unsigned int flags = 0;

	fuse_reply_ioctl(req, 0, &flags, PMFUSE_MIN(out_bufsz, sizeof(flags)));
}

static void ioc_setflags(fuse_req_t req, const void *in_buf, size_t in_bufsz)
{
	unsigned int flags = 0;

	memcpy(&flags, in_buf, PMFUSE_MIN(in_bufsz, sizeof(flags)));
	if (flags)
		fuse_reply_err(req, EOPNOTSUPP);
	else
		fuse_reply_ioctl(req, 0, NULL, 0);
}

/* ---- dispatch ------------------------------------------------------------------------------- */

void pmfuse_op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
		     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
		     size_t in_bufsz, size_t out_bufsz)
{
	bool dir = flags & FUSE_IOCTL_DIR;
	size_t in_need = 0, out_need = 0;

	(void)arg;
	if (flags & FUSE_IOCTL_UNRESTRICTED) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	switch (cmd) {
	case PMFUSE_IOC_CLONE_RANGE:
		in_need = sizeof(struct pmfuse_ioc_clone_range);
		break;
	case PMFUSE_IOC_UNSHARE:
		in_need = sizeof(struct pmfuse_ioc_unshare);
		break;
	case PMFUSE_IOC_DEDUPE_RANGE:
		in_need = out_need = sizeof(struct pmfuse_ioc_dedupe_range);
		break;
	case PMFUSE_IOC_GET_EXTENTS:
		in_need = out_need = sizeof(struct pmfuse_ioc_extents);
		break;
	case PMFUSE_IOC_DEDUPE_BLOCKS:
		in_need = out_need = sizeof(struct pmfuse_ioc_dedupe_blocks);
		break;
	case PMFUSE_IOC_BLOCK_HASHES:
		in_need = out_need = sizeof(struct pmfuse_ioc_block_hashes);
		break;
	case PMFUSE_IOC_BLOCK_HASHES2:
		in_need = out_need = sizeof(struct pmfuse_ioc_block_hashes2);
		break;
	case FS_IOC_FSGETXATTR:
		out_need = sizeof(struct fsxattr);
		break;
	case FS_IOC_FSSETXATTR:
		in_need = sizeof(struct fsxattr);
		break;
	case FS_IOC_GETFLAGS:
		out_need = sizeof(unsigned int);
		break;
	case FS_IOC_SETFLAGS:
		in_need = sizeof(unsigned int);
		break;
	default:
		fuse_reply_err(req, ENOTTY);
		return;
	}
	if (in_bufsz < in_need || out_bufsz < out_need || (in_need && !in_buf)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (dir && _IOC_TYPE(cmd) == PMFUSE_IOC_MAGIC) {
		fuse_reply_err(req, EISDIR);
		return;
	}

	switch (cmd) {
	case PMFUSE_IOC_CLONE_RANGE:
		ioc_clone(req, ino, fi, in_buf);
		break;
	case PMFUSE_IOC_UNSHARE:
		ioc_unshare(req, ino, fi, in_buf);
		break;
	case PMFUSE_IOC_DEDUPE_RANGE:
		ioc_dedupe(req, ino, fi, in_buf);
		break;
	case PMFUSE_IOC_GET_EXTENTS:
		ioc_get_extents(req, ino, in_buf);
		break;
	case PMFUSE_IOC_DEDUPE_BLOCKS:
		ioc_dedupe_blocks(req, ino, fi, in_buf);
		break;
	case PMFUSE_IOC_BLOCK_HASHES:
		ioc_block_hashes(req, ino, fi, in_buf);
		break;
	case PMFUSE_IOC_BLOCK_HASHES2:
		ioc_block_hashes2(req, ino, fi, in_buf);
		break;
	case FS_IOC_FSGETXATTR:
		ioc_fsgetxattr(req, ino, dir, out_bufsz);
		break;
	case FS_IOC_FSSETXATTR:
		ioc_fssetxattr(req, ino, dir, in_buf);
		break;
	case FS_IOC_GETFLAGS:
		ioc_getflags(req, out_bufsz);
		break;
	case FS_IOC_SETFLAGS:
		ioc_setflags(req, in_buf, in_bufsz);
		break;
	}
}
