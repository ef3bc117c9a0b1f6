/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The notifier thread: cache invalidation, then the reply, outside the request handlers.
 *
 * Why not call fuse_lowlevel_notify_inval_inode() from the handler. The notification is a
 * write(2) to /dev/fuse, and the kernel does the invalidation inside that write
 * (fuse_reverse_inval_inode: invalidate_inode_pages2_range). That takes the lock of every
 * cached page in the range and waits for it, and writes back ("launders") pages a shared
 * mapping dirtied, with FUSE_WRITE requests it waits for. Page locks are held across FUSE
 * requests: a READ (readahead, read_folio, a page fault) holds the locks of its pages until
 * the server replies, and so does a buffered WRITE without the writeback cache
 * (fuse_perform_write). So the notification waits for other requests to be served:
 * - with -s (one thread) the only thread is the one waiting: deadlock at the first READ of
 *   the cloned range that is in flight at that moment;
 * - with worker threads it waits for a free worker, and ties one up per clone meanwhile.
 * It does not wait for the inode lock (i_rwsem), which the kernel holds during
 * COPY_FILE_RANGE and a FS_IOC_FSSETXATTR, but it would wait for the lock of a page held by
 * whoever holds that lock. The libfuse rule "never from within a related request" is the
 * same point: do it where nothing the kernel waits for is held.
 *
 * So a handler that changed a file's contents behind the page cache does its fs call, queues
 * a job and returns at once (its worker goes back to serving, which is what lets the locked
 * pages go), and this thread sends the invalidation and then the reply. Replying only after
 * the invalidation keeps the contract a caller expects: once ioctl(PMFUSE_IOC_CLONE_RANGE)
 * returns, reads see the cloned data (a page read in before the clone committed is locked
 * while its READ is in flight, so the invalidation, which starts after the commit, waits
 * for it and drops it). The job queue is unbounded: submitting never waits.
 *
 * A pidfd_getfd() copy of the caller's source descriptor is closed here too, after the reply:
 * close(2) of a FUSE file calls fuse_flush, which writes back dirty pages of that file and
 * (until the first reply tells the kernel there is no FLUSH) sends FLUSH: requests to this
 * daemon, which a handler must not wait for.
 *
 * Invalidating only the attributes (offset -1) takes no page lock, so a handler may do that
 * itself (pmfuse_notifier_inval_attr) and reply, and queue only the close.
 *
 * With the writeback cache the kernel takes no size of a regular file from the daemon once it
 * has the inode (fuse_change_attributes keeps i_size: cached writes past EOF may not have
 * reached the daemon), so a clone that grew a file would stay cut at the old size. A
 * FUSE_NOTIFY_STORE of the file's last byte is the one message that moves the kernel's size
 * up (fuse_notify_store: fuse_write_update_attr); it locks the page it fills, so it is sent
 * here too, after the invalidation and before the reply.
 *
 * copy_file_range needs none of this: after FUSE_COPY_FILE_RANGE succeeds the kernel itself
 * truncates the destination's pages over the copied range and updates its size, under the
 * inode lock (fs/fuse/file.c, __fuse_copy_file_range), and it wrote back the dirty pages of
 * that range before sending the request.
 */
#include "fuse/notify.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

/* How long the stopping thread may stay in the kernel before the connection is aborted. */
#define STOP_GRACE_SECONDS 2

struct pmfuse_notifier {
	struct fuse_session *se;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct pmfuse_deferred *head, **tail;
	bool stopping;
};

struct pmfuse_deferred *pmfuse_deferred_new(fuse_req_t req)
{
	struct pmfuse_deferred *job = calloc(1, sizeof(*job));

	if (job) {
		job->req = req;
		job->fd = -1;
	}
	return job;
}

static void run(struct pmfuse_notifier *n, struct pmfuse_deferred *job)
{
	if (job->ino) {
		int rc = fuse_lowlevel_notify_inval_inode(n->se, job->ino, job->off, job->len);

		/* -ENOENT: the kernel has no inode for it, so nothing is cached */
		if (rc && rc != -ENOENT)
			pmfuse_log(PMFUSE_LOG_DEBUG, "invalidating inode %llu: %s",
				   (unsigned long long)job->ino, strerror(-rc));
	}
	if (job->ino && job->store_off) {
		struct fuse_bufvec v = FUSE_BUFVEC_INIT(1);
		int rc;

		v.buf[0].mem = &job->store_byte;
		rc = fuse_lowlevel_notify_store(n->se, job->ino, (off_t)(job->store_off - 1), &v,
						0);
		if (rc && rc != -ENOENT)
			pmfuse_log(PMFUSE_LOG_WARN, "inode %llu: cannot tell the kernel its new size "
				   "%llu: %s", (unsigned long long)job->ino,
				   (unsigned long long)job->store_off, strerror(-rc));
	}
	if (!job->req)
		;                            /* replied by the handler */
	else if (job->err)
		fuse_reply_err(job->req, job->err);
	else
		fuse_reply_ioctl(job->req, 0, NULL, 0);
	if (job->fd >= 0)
		close(job->fd);
	free(job);
}

static void *notifier_main(void *arg)
{
	struct pmfuse_notifier *n = arg;

	pthread_mutex_lock(&n->lock);
	for (;;) {
		struct pmfuse_deferred *job;

		while (!n->head && !n->stopping)
			pthread_cond_wait(&n->cond, &n->lock);
		job = n->head;
		if (!job)
			break;               /* stopping and drained */
		n->head = job->next;
		if (!n->head)
			n->tail = &n->head;
		pthread_mutex_unlock(&n->lock);
		run(n, job);
		pthread_mutex_lock(&n->lock);
	}
	pthread_mutex_unlock(&n->lock);
	return NULL;
}

int pmfuse_notifier_start(struct fuse_session *se, struct pmfuse_notifier **out)
{
	struct pmfuse_notifier *n = calloc(1, sizeof(*n));
	sigset_t all, old;
	int rc;

	if (!n)
		return -ENOMEM;
	n->se = se;
	n->tail = &n->head;
	pthread_mutex_init(&n->lock, NULL);
	pthread_cond_init(&n->cond, NULL);
	/*
	 * The signals that end the session must reach a thread that notices: the main thread
	 * waits in sem_wait (or read) for them to interrupt it. The new thread inherits the mask.
	 */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = pthread_create(&n->thread, NULL, notifier_main, n);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		pthread_cond_destroy(&n->cond);
		pthread_mutex_destroy(&n->lock);
		free(n);
		return -rc;
	}
	*out = n;
	return 0;
}

void pmfuse_notifier_submit(struct pmfuse_notifier *n, struct pmfuse_deferred *job)
{
	job->next = NULL;
	pthread_mutex_lock(&n->lock);
	*n->tail = job;
	n->tail = &job->next;
	pthread_cond_signal(&n->cond);
	pthread_mutex_unlock(&n->lock);
}

void pmfuse_notifier_inval_attr(struct pmfuse_notifier *n, uint64_t ino)
{
	int rc = fuse_lowlevel_notify_inval_inode(n->se, ino, -1, 0);

	if (rc && rc != -ENOENT)
		pmfuse_log(PMFUSE_LOG_DEBUG, "invalidating the attributes of inode %llu: %s",
			   (unsigned long long)ino, strerror(-rc));
}

void pmfuse_notifier_stop(struct pmfuse_notifier *n, const char *mountpoint)
{
	struct timespec deadline;

	if (!n)
		return;
	pthread_mutex_lock(&n->lock);
	n->stopping = true;
	pthread_cond_signal(&n->cond);
	pthread_mutex_unlock(&n->lock);

	/*
	 * The workers are gone. Normally the queue drains at once: with the file system
	 * unmounted, notifications fail fast. After a signal the mount is still there, and an
	 * invalidation may wait for a page locked by a READ that nobody will answer any more;
	 * a forced unmount aborts the connection, which ends every pending request.
	 */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += STOP_GRACE_SECONDS;
	if (pthread_timedjoin_np(n->thread, NULL, &deadline)) {
		pmfuse_log(PMFUSE_LOG_WARN, "cache invalidation still waiting after %d s; "
			   "aborting the FUSE connection", STOP_GRACE_SECONDS);
		/*
		 * MNT_FORCE aborts the connection before the busy check, so EBUSY is fine; the
		 * mount is then detached here, since libfuse leaves an aborted one alone.
		 */
		if (!mountpoint)
			pmfuse_log(PMFUSE_LOG_WARN, "mount point unknown: cannot abort");
		else if (umount2(mountpoint, MNT_FORCE | UMOUNT_NOFOLLOW) &&
			 (errno != EBUSY || umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW)))
			pmfuse_log(PMFUSE_LOG_WARN, "forced unmount of %s: %s", mountpoint,
				   strerror(errno));
		pthread_join(n->thread, NULL);
	}
	pthread_cond_destroy(&n->cond);
	pthread_mutex_destroy(&n->lock);
	free(n);
}
