/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The FUSE low-level operations of the daemon: each one translates a request into a call of the
 * filesystem API (src/fs/fs.h) and sends the reply. main.c owns the session and hands this state
 * to fuse_session_new() as the userdata.
 */
#ifndef PMFUSE_FUSE_OPS_H
#define PMFUSE_FUSE_OPS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <fuse_lowlevel.h>

struct pmfuse_cred;
struct pmfuse_fs;
struct pmfuse_notifier;
struct pmfuse_initx;

struct pmfuse_daemon {
	struct pmfuse_fs *fs;
	double entry_timeout;        /* seconds the kernel may trust a name -> inode mapping */
	double attr_timeout;         /* seconds the kernel may trust attributes */
	bool export_support;         /* the fs resolves "." and "..": NFS export may work */
	bool no_opendir;             /* set by init: the kernel handles opendir/releasedir itself */
	bool acl;                    /* POSIX ACLs wanted (not -o noacl) */
	bool writeback_cache;        /* -o writeback_cache; cleared by init if the kernel refuses */
	uint32_t block_size;         /* the pool's, for byte <-> block conversions */
	bool dev_known;              /* dev is the st_dev of this mount (from statx at mount) */
	dev_t dev;                   /* tells a caller's file on this mount from others */
	struct pmfuse_notifier *notifier;   /* invalidates the kernel's cache, then replies */
	struct pmfuse_initx *initx;  /* the INIT hooks: KILLPRIV_V2 granted, io_uring asked for */
};

extern const struct fuse_lowlevel_ops pmfuse_ops;

/*
 * What open and create record in fi->fh: the open flags (O_ACCMODE, O_APPEND, ...), so that an
 * ioctl, which carries only fh, can tell whether its file was opened for writing. 0 means no
 * record (directories).
 */
#define PMFUSE_FH_OPEN (1ull << 63)

static inline uint64_t pmfuse_fh_of_flags(int flags)
{
	return PMFUSE_FH_OPEN | (uint32_t)flags;
}

/* ioctl.c: copy_file_range, and ioctls (pmfuse reflink ioctls and file attributes). */
void pmfuse_op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
			       struct fuse_file_info *fi_out, size_t len, int flags);
void pmfuse_op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
		     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
		     size_t in_bufsz, size_t out_bufsz);

/*
 * What the kernel knows of the calling thread and the request does not carry: its effective
 * capabilities (*caps, a mask of PMFUSE_CAP(CAP_...)), and whether gid is among its
 * supplementary groups (from /proc/TID/status, as fuse_req_getgroups reads it). Returns false
 * when the thread is gone (status unreadable).
 */
#define PMFUSE_CAP(c) (1ull << (c))
#ifndef CAP_FSETID
#define CAP_FSETID 4                 /* linux/capability.h */
#endif
#ifndef CAP_SYS_ADMIN
#define CAP_SYS_ADMIN 21
#endif
bool pmfuse_caller_privs(const struct fuse_ctx *ctx, gid_t gid, uint64_t *caps, bool *in_group);
/* Whether the calling thread has capability cap; unreadable status: only root has it. */
bool pmfuse_caller_has(const struct fuse_ctx *ctx, int cap);
/* The request's credentials; their privs callback reads the caller's capabilities and
 * groups from /proc when the setuid/setgid rule needs them. */
void pmfuse_op_cred(fuse_req_t req, struct pmfuse_cred *cred);

/* Whether the fs answers lookups of "." and ".." (what FUSE_CAP_EXPORT_SUPPORT asks for). */
bool pmfuse_ops_probe_export(struct pmfuse_fs *fs);

#endif /* PMFUSE_FUSE_OPS_H */
