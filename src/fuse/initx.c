/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 has no capability bit for.
 *
 * Why it matters. Without it, the kernel checks before every write whether the file carries
 * privileges to drop (file_remove_privs): a GETXATTR of security.capability, one more round
 * trip to this daemon per write(2), copy_file_range and fallocate. With KILLPRIV_V2 the
 * superblock is SB_NOSEC: once a check found nothing to drop, the inode is marked S_NOSEC and
 * later writes skip it until its attributes are refreshed or a security xattr is set.
 *
 * What the server takes on (kernel 6.18, fs/fuse/dir.c fuse_setattr): a truncation by a caller
 * without CAP_FSETID arrives with FATTR_KILL_SUIDGID instead of a new mode, and the daemon
 * clears setuid (and setgid when group-executable) itself; libfuse 3.14 passes the bit on as
 * FUSE_SET_ATTR_KILL_SUID, which op_setattr maps to PMFUSE_SET_KILL_SUID. Everything else
 * stays with the kernel: for write and chown it still sends the new mode, and it still removes
 * security.capability (setattr_prepare) whenever a check runs. FUSE_OPEN_KILL_SUIDGID comes
 * only with ATOMIC_O_TRUNC, which pmfuse does not ask for. FUSE_WRITE_KILL_SUIDGID (set on a
 * write by a caller without CAP_FSETID) is dropped by libfuse, so the read hook copies it into
 * the request's open flags, which libfuse hands over as fi->flags (PMFUSE_FI_KILL_SUIDGID).
 *
 * FUSE_TMPFILE (O_TMPFILE, kernel 6.1 on) has no handler in libfuse 3.14, which answers it with
 * ENOSYS, and the kernel then fails every O_TMPFILE open with EOPNOTSUPP. The kernel builds it
 * exactly as a CREATE (fuse_create_open: struct fuse_create_in and the dentry name, "/" for a
 * tmpfile) and reads the same reply, so the read hook turns its opcode into FUSE_CREATE and the
 * create handler knows it by the name (PMFUSE_TMPFILE_NAME).
 *
 * How. libfuse builds the INIT reply's flags from its own capability bits only, so the reply
 * is patched as it is written: the session's I/O goes through fuse_session_custom_io() hooks
 * that note the unique id of the INIT request (and the kernel's offer) when it is read, and set
 * the flag in the matching reply. All other messages pass unchanged.
 *
 * FUSE over io_uring (libfuse >= 3.18, -o io_uring). INIT and its reply still pass here (the
 * rings are registered after it), and so do FORGET and INTERRUPT (the kernel queues them on
 * /dev/fuse only) and every request that comes before all rings are registered; every other
 * request and reply goes through the rings and never passes these hooks. What holds then:
 * - KILLPRIV_V2: libfuse 3.18's write handler does not pass write_flags on either, so a write
 *   through a ring cannot say that its caller lacks CAP_FSETID. When the INIT reply carries
 *   FUSE_OVER_IO_URING (libfuse sets it only once its rings started) KILLPRIV_V2 is therefore
 *   not granted, and taken out if libfuse set it: the kernel then clears setuid, and setgid
 *   when group-executable, itself before a write, copy_file_range, fallocate or truncate (a
 *   SETATTR with the new mode; one GETXATTR of security.capability per write more). FUSE's
 *   setattr leaves Linux 6.2's other case, setgid dropped for a caller outside the file's
 *   group, to the server, and nothing then marks the caller: ops.c asks /proc for writes and
 *   truncations of files with either bit (kernel_marks_fsetid), as for fallocate.
 *   Except with the writeback cache: without KILLPRIV_V2 the kernel puts a write by such a
 *   caller into the page cache and the daemon gets it back without credentials, so nobody
 *   could apply that case. There KILLPRIV_V2 stays granted (the kernel then sends such a
 *   write straight through, with the writer's credentials), truncations keep their
 *   FATTR_KILL_SUIDGID (a setattr field, which the ring passes on), and ops.c asks /proc for
 *   every unmarked write that came through a ring.
 * - FUSE_TMPFILE: libfuse >= 3.17 has a tmpfile op (ops.c), which serves it on either path,
 *   so with such a libfuse the read hook leaves it alone.
 * - INTERRUPT: pmfuse registers no interrupt callbacks, so nothing is lost when libfuse 3.18
 *   does not match interrupts to ring requests. Notifications (notify.c) are writes to
 *   /dev/fuse, whichever path the request they follow came by: both work.
 * The decision rests on the INIT reply itself, so it holds however the ring was asked for
 * (-o io_uring or libfuse's FUSE_URING_ENABLE environment variable).
 */
#include "fuse/initx.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util/util.h"

/* kernel 6.14 on; not in Debian 12's <linux/fuse.h> */
#ifndef FUSE_OVER_IO_URING
#define FUSE_OVER_IO_URING (1ULL << 41)
#endif

static struct pmfuse_initx *initx;   /* one session per process */

/* Whether an INIT reply turns the rings on: FUSE_OVER_IO_URING is a flags2 bit. */
static bool initx_reply_uring(const struct fuse_init_out *out, size_t len)
{
	return (out->flags & FUSE_INIT_EXT) &&
	       len >= offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t) &&
	       (out->flags2 & (uint32_t)(FUSE_OVER_IO_URING >> 32));
}

/* The mount log says which path requests take, and why not the ring when it was asked for. */
static void log_transport(const struct pmfuse_initx *x, bool writeback_cache)
{
	if (x->uring && !writeback_cache)
		pmfuse_log(PMFUSE_LOG_INFO, "transport: FUSE over io_uring (per-CPU rings); "
			   "HANDLE_KILLPRIV_V2 not negotiated, the kernel clears setuid/setgid "
			   "before writes");
	else if (x->uring)
		pmfuse_log(PMFUSE_LOG_INFO, "transport: FUSE over io_uring (per-CPU rings); "
			   "writeback cache: HANDLE_KILLPRIV_V2 kept, the daemon asks /proc "
			   "whether a writer has CAP_FSETID");
	else if (!x->uring_wanted)
		pmfuse_log(PMFUSE_LOG_INFO, "transport: /dev/fuse");
	else if (!(x->offered2 & (uint32_t)(FUSE_OVER_IO_URING >> 32)))
		pmfuse_log(PMFUSE_LOG_WARN, "transport: /dev/fuse: io_uring was asked for but the "
			   "kernel does not offer it (needs Linux >= 6.14 and "
			   "/sys/module/fuse/parameters/enable_uring set to Y)");
	else
		pmfuse_log(PMFUSE_LOG_WARN, "transport: /dev/fuse: io_uring was asked for and "
			   "offered, but libfuse could not start its rings");
}

static ssize_t initx_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);

	(void)userdata;
#ifndef PMFUSE_HAVE_FUSE_TMPFILE
	if (n >= (ssize_t)sizeof(struct fuse_in_header) &&
	    ((struct fuse_in_header *)buf)->opcode == FUSE_TMPFILE) {
		((struct fuse_in_header *)buf)->opcode = FUSE_CREATE;
		return n;
	}
#endif
	if (n >= (ssize_t)(sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in)) &&
	    ((struct fuse_in_header *)buf)->opcode == FUSE_WRITE) {
		struct fuse_write_in *w = (void *)((struct fuse_in_header *)buf + 1);

		if (w->write_flags & FUSE_WRITE_KILL_SUIDGID)
			w->flags |= PMFUSE_FI_KILL_SUIDGID;
		return n;
	}
	if (n >= (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, flags) +
			   sizeof(uint32_t))) {
		const struct fuse_in_header *in = buf;

		if (in->opcode == FUSE_INIT) {
			const struct fuse_init_in *arg = (const void *)(in + 1);

			initx->offered = arg->flags;
			initx->offered2 = 0;
			if ((arg->flags & FUSE_INIT_EXT) &&
			    n >= (ssize_t)(sizeof(*in) + offsetof(struct fuse_init_in, flags2) +
					   sizeof(uint32_t)))
				initx->offered2 = arg->flags2;
			__atomic_store_n(&initx->init_unique, in->unique, __ATOMIC_RELEASE);
		}
	}
	return n;
}

static ssize_t initx_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const size_t flags_end = offsetof(struct fuse_init_out, flags) + sizeof(uint32_t);
	/* every reply passes here, on every worker thread; only INIT's is looked at */
	uint64_t init_unique = __atomic_load_n(&initx->init_unique, __ATOMIC_ACQUIRE);
	struct fuse_init_out out;
	struct iovec copy[2];

	(void)userdata;
	if (init_unique && count == 2 &&
	    iov[0].iov_len == sizeof(struct fuse_out_header) && iov[1].iov_len >= flags_end &&
	    iov[1].iov_len <= sizeof(out)) {
		const struct fuse_out_header *oh = iov[0].iov_base;

		if (oh->unique == init_unique) {
			__atomic_store_n(&initx->init_unique, 0, __ATOMIC_RELAXED);
			if (oh->error == 0) {
				memcpy(&out, iov[1].iov_base, iov[1].iov_len);
				initx->uring = initx_reply_uring(&out, iov[1].iov_len);
				log_transport(initx, out.flags & FUSE_WRITEBACK_CACHE);
				if (initx->uring && !(out.flags & FUSE_WRITEBACK_CACHE)) {
					/* see the top: the ring loses FUSE_WRITE_KILL_SUIDGID */
					out.flags &= ~(uint32_t)FUSE_HANDLE_KILLPRIV_V2;
				} else if (initx->offered & FUSE_HANDLE_KILLPRIV_V2) {
					out.flags |= FUSE_HANDLE_KILLPRIV_V2;
					/* ops.c reads it on other threads, after this reply */
					__atomic_store_n(&initx->killpriv_v2, true, __ATOMIC_RELEASE);
					pmfuse_log(PMFUSE_LOG_DEBUG, "FUSE_HANDLE_KILLPRIV_V2 granted: "
						   "writes skip the security.capability lookup");
				}
				copy[0] = iov[0];
				copy[1].iov_base = &out;
				copy[1].iov_len = iov[1].iov_len;
				return writev(fd, copy, 2);
			}
		}
	}
	return writev(fd, iov, count);
}

int pmfuse_initx_install(struct fuse_session *se, struct pmfuse_initx *x, bool uring_wanted)
{
	static const struct fuse_custom_io io = {
		.read = initx_read,
		.writev = initx_writev,
	};

	memset(x, 0, sizeof(*x));
	x->uring_wanted = uring_wanted;
	initx = x;
	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}
