/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the kernel speaks and libfuse 3.14 does not: FUSE_INIT flags it cannot ask for, added to
 * its INIT reply on the way out, and FUSE_TMPFILE, passed on as a CREATE of a name no real
 * CREATE can carry.
 */
#ifndef PMFUSE_FUSE_INITX_H
#define PMFUSE_FUSE_INITX_H

#include <stdbool.h>
#include <stdint.h>

#include <fuse_lowlevel.h>

struct pmfuse_initx {
	uint64_t init_unique;        /* the INIT request being answered, 0 when none */
	uint32_t offered;            /* the kernel's INIT flags (first word) */
	uint32_t offered2;           /* and the second (flags2), 0 without FUSE_INIT_EXT */
	bool killpriv_v2;            /* FUSE_HANDLE_KILLPRIV_V2 granted */
	bool uring_wanted;           /* -o io_uring or FUSE_URING_ENABLE: for the log only */
	bool uring;                  /* the INIT reply turned FUSE over io_uring on */
};

/*
 * The name a FUSE_TMPFILE request (O_TMPFILE) arrives with at the create handler: the kernel
 * sends the request as a CREATE of the dentry "/", which no real name can be, and initx
 * changes only its opcode (the two requests carry the same arguments and expect the same
 * reply: an entry and an open file). Not with libfuse >= 3.17, which has a tmpfile op.
 */
#define PMFUSE_TMPFILE_NAME "/"

/*
 * FUSE_WRITE_KILL_SUIDGID, which the kernel sets on a write by a caller without CAP_FSETID
 * and libfuse 3.14 does not pass on, arrives at the write handler as this bit of fi->flags
 * (the file's open flags, copied from the same request; no open flag uses bit 31).
 */
#define PMFUSE_FI_KILL_SUIDGID 0x80000000u

/*
 * Routes the session's /dev/fuse reads and writes through hooks that watch for INIT and add
 * FUSE_HANDLE_KILLPRIV_V2 to the reply when the kernel offers it, that turn FUSE_TMPFILE
 * into FUSE_CREATE, and that carry a write's kill flag over; with FUSE over io_uring (which
 * the INIT reply shows) KILLPRIV_V2 is withheld instead (initx.c says why). uring_wanted (the
 * ring was asked for) only chooses what the log says. Call after fuse_session_mount() and
 * before the session loop; x must outlive the session. 0 or -errno.
 */
int pmfuse_initx_install(struct fuse_session *se, struct pmfuse_initx *x, bool uring_wanted);

#endif /* PMFUSE_FUSE_INITX_H */
