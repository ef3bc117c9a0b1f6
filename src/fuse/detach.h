/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Becoming a daemon without losing the terminal too early: the work between
 * pmfuse_detach_start() and pmfuse_detach_finish() (opening the pool, mounting) still reports
 * its errors on stderr, and the command's exit status says whether the mount came up.
 */
#ifndef PMFUSE_FUSE_DETACH_H
#define PMFUSE_FUSE_DETACH_H

/*
 * Forks. The parent waits until the child calls pmfuse_detach_finish() and exits 0, or until
 * the child exits first and exits 1 (the child has said why on stderr). Returns 0 in the child,
 * which is the leader of a new session, or -errno (then there is no child).
 */
int pmfuse_detach_start(void);

/*
 * In the child, once it serves: lets the parent exit 0, moves stdin, stdout and stderr to
 * /dev/null and sends the log (pmfuse's and libfuse's) to syslog.
 */
void pmfuse_detach_finish(void);

#endif /* PMFUSE_FUSE_DETACH_H */
