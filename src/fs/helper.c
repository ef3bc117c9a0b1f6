/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * One helper thread per file system for work that splits in two: range dedupe hands it half
 * of a piece's compares (reflink.c), so that a dedupe uses two CPUs where it has them. Used
 * only under the writer lock, so one caller at a time; started on first use (the daemon forks
 * into the background after opening the pool: a thread started before would not survive) and
 * stopped by pmfuse_fs_close. PMFUSE_DEDUPE_THREADS=1, or a machine with one CPU, leaves it
 * out: then pmfuse_helper_run says no and the caller does all the work itself.
 */
#include "fs/fs_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pmfuse_helper {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	void (*fn)(void *);          /* the work handed over, NULL when there is none */
	void *arg;
	bool busy, quit;
	pid_t pid;                   /* the process it runs in: a fork's child has no helper */
};

static void *helper_main(void *p)
{
	struct pmfuse_helper *h = p;

	pthread_mutex_lock(&h->lock);
	for (;;) {
		while (!h->fn && !h->quit)
			pthread_cond_wait(&h->cond, &h->lock);
		if (h->quit)
			break;
		void (*fn)(void *) = h->fn;

		pthread_mutex_unlock(&h->lock);
		fn(h->arg);
		pthread_mutex_lock(&h->lock);
		h->fn = NULL;
		h->busy = false;
		pthread_cond_broadcast(&h->cond);
	}
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

static bool helper_wanted(void)
{
	const char *e = getenv("PMFUSE_DEDUPE_THREADS");

	if (e && atoi(e) == 1)
		return false;
	return sysconf(_SC_NPROCESSORS_ONLN) > 1;
}

bool pmfuse_helper_run(struct pmfuse_fs *fs, void (*fn)(void *), void *arg)
{
	struct pmfuse_helper *h = fs->helper;

	if (fs->helper_off)
		return false;
	if (h && h->pid != getpid()) {
		/* the thread stayed in the parent: forget it here (its memory is the parent's) */
		fs->helper = h = NULL;
	}
	if (!h) {
		if (!helper_wanted()) {
			fs->helper_off = true;
			return false;
		}
		h = calloc(1, sizeof(*h));
		if (!h)
			return false;
		pthread_mutex_init(&h->lock, NULL);
		pthread_cond_init(&h->cond, NULL);
		h->pid = getpid();
		if (pthread_create(&h->thread, NULL, helper_main, h)) {
			pthread_cond_destroy(&h->cond);
			pthread_mutex_destroy(&h->lock);
			free(h);
			fs->helper_off = true;
			return false;
		}
		fs->helper = h;
	}
	pthread_mutex_lock(&h->lock);
	h->fn = fn;
	h->arg = arg;
	h->busy = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	return true;
}

void pmfuse_helper_wait(struct pmfuse_fs *fs)
{
	struct pmfuse_helper *h = fs->helper;

	pthread_mutex_lock(&h->lock);
	while (h->busy)
		pthread_cond_wait(&h->cond, &h->lock);
	pthread_mutex_unlock(&h->lock);
}

void pmfuse_helper_stop(struct pmfuse_fs *fs)
{
	struct pmfuse_helper *h = fs->helper;

	if (!h || h->pid != getpid())
		return;
	pthread_mutex_lock(&h->lock);
	h->quit = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
	free(h);
	fs->helper = NULL;
}
