/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * FUSE_INIT flags that libfuse 3.14 cannot ask for, added to its INIT reply on the way out.
 */
#ifndef PMFUSE_FUSE_INITX_H
#define PMFUSE_FUSE_INITX_H

#include <stdbool.h>
#include <stdint.h>

#include <fuse_lowlevel.h>

struct pmfuse_initx {
	uint64_t init_unique;        /* the INIT request being answered, 0 when none */
	uint32_t offered;            /* the kernel's INIT flags (first word) */
	bool killpriv_v2;            /* FUSE_HANDLE_KILLPRIV_V2 granted */
};

/*
 * Routes the session's /dev/fuse reads and writes through hooks that watch for INIT and add
 * FUSE_HANDLE_KILLPRIV_V2 to the reply when the kernel offers it. Call after
 * fuse_session_mount() and before the session loop; x must outlive the session. 0 or -errno.
 */
int pmfuse_initx_install(struct fuse_session *se, struct pmfuse_initx *x);

#endif /* PMFUSE_FUSE_INITX_H */
