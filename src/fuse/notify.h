/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Deferred replies: a request that changed a file behind the kernel's page cache (a pmfuse
 * clone or unshare ioctl) is handed to one notifier thread, which tells the kernel to drop the
 * stale cache (fuse_lowlevel_notify_inval_inode) and only then replies, so the caller never
 * sees stale pages once its call has returned. Why a thread of its own is in notify.c.
 */
#ifndef PMFUSE_FUSE_NOTIFY_H
#define PMFUSE_FUSE_NOTIFY_H

#include <stdint.h>

#include <fuse_lowlevel.h>

struct pmfuse_notifier;

/* What the notifier does for one request, in this order: invalidate, store, reply, close fd. */
struct pmfuse_deferred {
	fuse_req_t req;              /* NULL: already replied; only close fd */
	int err;                     /* 0: fuse_reply_ioctl(req, 0, NULL, 0); else reply err */
	uint64_t ino;                /* 0: nothing to invalidate (also done when err is set:
					  a failed clone may have changed part of the range) */
	int64_t off;                 /* < 0: attributes only; else pages from off on, and attrs */
	int64_t len;                 /* 0: up to the end of the file */
	/*
	 * After the invalidation, store byte at store_off - 1 in the kernel's page cache
	 * (FUSE_NOTIFY_STORE), which moves the kernel's size of ino up to store_off if it was
	 * below: with the writeback cache the kernel keeps its own size of a regular file and
	 * takes none from the daemon, so this is the only way it learns that a clone grew it.
	 * 0: nothing to store.
	 */
	uint64_t store_off;
	uint8_t store_byte;
	int fd;                      /* a descriptor to close after the reply, or -1 */
	struct pmfuse_deferred *next;
};

/* Starts the notifier thread (all signals blocked in it). 0 or -errno. */
int pmfuse_notifier_start(struct fuse_session *se, struct pmfuse_notifier **out);

/*
 * A zeroed job for req with fd -1, or NULL (out of memory). Allocate it before changing
 * anything, so that running out of memory never leaves a change without its invalidation.
 */
struct pmfuse_deferred *pmfuse_deferred_new(fuse_req_t req);

/* Queues the job (never blocks on the kernel); the notifier owns and frees it. */
void pmfuse_notifier_submit(struct pmfuse_notifier *n, struct pmfuse_deferred *job);

/*
 * Invalidates the kernel's cached attributes of ino (not its pages): this takes no page lock
 * and may be called from a request handler. -ENOENT (not cached) is not an error.
 */
void pmfuse_notifier_inval_attr(struct pmfuse_notifier *n, uint64_t ino);

/*
 * Called once the session loop has ended: finishes the queued jobs and joins the thread. If
 * the thread stays stuck in the kernel (a page it must drop is locked by a request no worker
 * will serve any more), aborts the connection with a forced unmount of mountpoint (when not
 * NULL) so that the kernel ends those requests, then joins.
 */
void pmfuse_notifier_stop(struct pmfuse_notifier *n, const char *mountpoint);

#endif /* PMFUSE_FUSE_NOTIFY_H */
