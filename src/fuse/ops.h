/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The FUSE low-level operations of the daemon: each one translates a request into a call of the
 * filesystem API (src/fs/fs.h) and sends the reply. main.c owns the session and hands this state
 * to fuse_session_new() as the userdata.
 */
#ifndef PMFUSE_FUSE_OPS_H
#define PMFUSE_FUSE_OPS_H

#include <stdbool.h>

#include <fuse_lowlevel.h>

struct pmfuse_fs;

struct pmfuse_daemon {
	struct pmfuse_fs *fs;
	double entry_timeout;        /* seconds the kernel may trust a name -> inode mapping */
	double attr_timeout;         /* seconds the kernel may trust attributes */
	bool export_support;         /* the fs resolves "." and "..": NFS export may work */
	bool no_opendir;             /* set by init: the kernel handles opendir/releasedir itself */
};

extern const struct fuse_lowlevel_ops pmfuse_ops;

/* Whether the fs answers lookups of "." and ".." (what FUSE_CAP_EXPORT_SUPPORT asks for). */
bool pmfuse_ops_probe_export(struct pmfuse_fs *fs);

#endif /* PMFUSE_FUSE_OPS_H */
