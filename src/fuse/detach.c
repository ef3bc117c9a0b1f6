/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Detaching from the terminal, done so that errors still reach it.
 *
 * The fork comes first, before the pool is opened: the child does all the work with stderr
 * still on the terminal, and it is the child that takes the pool's flock, so /proc/locks (and
 * the "in use by" message a second mount prints) names the process that really holds the pool.
 * (Opening first and forking afterwards would also keep the lock, which belongs to the open file
 * description, but /proc/locks would go on naming the parent after it has exited.) Forking
 * before anything is opened also means no thread a library started is lost in the fork.
 *
 * The parent waits on a pipe: one byte means the child serves the mount (exit 0), end of file
 * means the child exited first (exit 1).
 */
#include "fuse/detach.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <fuse_log.h>

#include "util/util.h"

static int ready_fd = -1;

int pmfuse_detach_start(void)
{
	int fds[2], status, err;
	ssize_t n;
	pid_t pid;
	char c;

	if (pipe2(fds, O_CLOEXEC))
		return -errno;
	pid = fork();
	if (pid < 0) {
		err = errno;
		close(fds[0]);
		close(fds[1]);
		return -err;
	}
	if (pid == 0) {
		close(fds[0]);
		ready_fd = fds[1];
		setsid();            /* cannot fail: a fresh child leads no process group */
		return 0;
	}

	close(fds[1]);
	do
		n = read(fds[0], &c, 1);
	while (n < 0 && errno == EINTR);
	if (n == 1)
		_exit(0);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	_exit(1);
}

/* libfuse's own messages, once stderr is gone. */
__attribute__((format(printf, 2, 0)))
static void fuse_log_to_pmfuse(enum fuse_log_level level, const char *fmt, va_list ap)
{
	char msg[1024];
	size_t len;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	len = strlen(msg);
	while (len && msg[len - 1] == '\n')
		msg[--len] = '\0';
	if (level <= FUSE_LOG_ERR)
		pmfuse_log(PMFUSE_LOG_ERR, "%s", msg);
	else if (level == FUSE_LOG_WARNING)
		pmfuse_log(PMFUSE_LOG_WARN, "%s", msg);
	else if (level < FUSE_LOG_DEBUG)
		pmfuse_log(PMFUSE_LOG_INFO, "%s", msg);
	else
		pmfuse_log(PMFUSE_LOG_DEBUG, "%s", msg);
}

void pmfuse_detach_finish(void)
{
	char ready = 0;
	ssize_t n;
	int fd;

	if (ready_fd < 0)
		return;
	openlog("pmfuse", LOG_PID, LOG_DAEMON);
	pmfuse_log_set_target(PMFUSE_LOG_SYSLOG);
	fuse_set_log_func(fuse_log_to_pmfuse);

	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		/* dup2 clears FD_CLOEXEC on 0, 1 and 2 */
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	n = write(ready_fd, &ready, 1);
	(void)n;                     /* the parent may be gone (killed); nothing to do then */
	close(ready_fd);
	ready_fd = -1;
}
