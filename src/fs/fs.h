/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The filesystem API: namespace, attributes, data, extended attributes. Used by the FUSE daemon
 * (src/fuse) and the tools; it knows nothing of FUSE.
 *
 * Conventions:
 * - every function returns 0 (or a byte count) on success and -errno on failure;
 * - every modifying call is one or more transactions and is durable when it returns;
 * - a failed call changed nothing (it aborted its transaction), except where a partial result is
 *   the POSIX contract (a short write returns the bytes written);
 * - permissions: the kernel checks them (pmfuse mounts with default_permissions); the fs applies
 *   what the kernel leaves to the filesystem: ownership of new inodes from the caller and setgid
 *   directories, clearing setuid/setgid where POSIX says so, the umask and default-ACL
 *   inheritance of new inodes, keeping mode and access ACL in step; sticky-directory rules for
 *   rename and unlink, and ACL enforcement, are the kernel's;
 * - inode numbers are persistent, never reused, and are the FUSE node ids; the root is 1.
 *
 * Lookup counts follow fuse_lowlevel.h: every call that returns a struct pmfuse_attr for an entry
 * (lookup, create, mknod, mkdir, symlink, link) takes one reference, released by
 * pmfuse_fs_forget(). An inode whose last name is removed while referenced goes on the orphan
 * list and is freed at its last forget, or at the next mount after a crash.
 *
 * Locking: a filesystem-wide reader/writer lock inside (readers in parallel, one writer); callers
 * need no locking of their own.
 */
#ifndef PMFUSE_FS_H
#define PMFUSE_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

struct pmfuse_fs;
struct pmfuse_volume;
struct pmfuse_pool_fault;

#define PMFUSE_ROOT_INO 1ull

struct pmfuse_cred {
	uid_t uid;
	gid_t gid;
	pid_t pid;
	mode_t umask;
	/*
	 * For the setuid/setgid rule of a change to a file's data or size (see
	 * pmfuse_fs_mode_after_change), asked only about a file that has either bit. fsetid: > 0
	 * the caller has CAP_FSETID, < 0 it lacks it, 0 ask privs. privs answers whether the caller
	 * has CAP_FSETID and (in *in_group) whether g is one of its groups; it may look at origin.
	 * NULL: uid 0 has CAP_FSETID and the caller's only group is gid.
	 */
	int8_t fsetid;
	bool (*privs)(const struct pmfuse_cred *cred, gid_t g, bool *in_group);
	const void *origin;
};

/*
 * The mode a change of a file's data or size by cred leaves (write, truncate, fallocate, clone:
 * the VFS rule since Linux 6.2, should_remove_suid and setattr_should_drop_sgid): unchanged
 * when the caller has CAP_FSETID; else without setuid, and without setgid when the file is
 * group-executable or the caller is outside the file's group gid. NULL cred: unchanged.
 */
uint32_t pmfuse_fs_mode_after_change(uint32_t mode, uint32_t gid, const struct pmfuse_cred *cred);

struct pmfuse_attr {
	uint64_t ino;
	uint64_t generation;
	uint32_t mode;
	uint32_t nlink;
	uint32_t uid, gid;
	uint64_t rdev;
	uint64_t size;
	uint64_t blocks512;          /* st_blocks: 512-byte units allocated */
	uint32_t blksize;            /* st_blksize */
	struct timespec atime, mtime, ctime, btime;
};

/* What pmfuse_fs_setattr changes. */
#define PMFUSE_SET_MODE      (1u << 0)
#define PMFUSE_SET_UID       (1u << 1)
#define PMFUSE_SET_GID       (1u << 2)
#define PMFUSE_SET_SIZE      (1u << 3)
#define PMFUSE_SET_ATIME     (1u << 4)
#define PMFUSE_SET_MTIME     (1u << 5)
#define PMFUSE_SET_ATIME_NOW (1u << 6)
#define PMFUSE_SET_MTIME_NOW (1u << 7)
#define PMFUSE_SET_CTIME     (1u << 8)
#define PMFUSE_SET_KILL_SUID (1u << 9)   /* clear setuid, and setgid if group-executable */

struct pmfuse_setattr {
	uint32_t mode;
	uid_t uid;
	gid_t gid;
	uint64_t size;
	struct timespec atime, mtime, ctime;
};

struct pmfuse_statfs {
	uint64_t block_size;
	uint64_t blocks, blocks_free, blocks_avail;
	uint64_t files, files_free;
	uint32_t name_max;
};

struct pmfuse_fs_opts {
	bool readonly;
	/* For a consistency check (fs/check.h): read-only, and a missing or damaged root
	 * directory does not fail the open; the check reports it. */
	bool check;
	/* For fsck repair (fs/repair.h): writable over a volume opened with PMFUSE_VOL_REPAIR
	 * (vol->alloc may be NULL until repair rebuilds the bitmap), a damaged root tolerated as
	 * for check, and the orphan list left alone (repair decides about it). */
	bool repair;
	/* Entries of the DRAM lookup / getattr cache (fs/icache.h), per table (attributes,
	 * names); 0: no cache. Not with repair. */
	size_t cache_entries;
	/* New directories keep all their names in the long-entry tree, as before the
	 * SHORT_DIRS feature (doc/format.md): for tests of pools made by older code. */
	bool long_names_only;
};

/*
 * Opens the filesystem on an opened volume: creates the root directory on a fresh pool, frees the
 * inodes left on the orphan list. The fs does not own the volume. -EUCLEAN on damage.
 */
int pmfuse_fs_open(struct pmfuse_volume *vol, const struct pmfuse_fs_opts *opts,
		   struct pmfuse_fs **out);
/* Frees everything still referenced only by lookup counts (orphans), then the DRAM state. */
void pmfuse_fs_close(struct pmfuse_fs *fs);
struct pmfuse_volume *pmfuse_fs_volume(struct pmfuse_fs *fs);

/* ---- namespace ---- */
int pmfuse_fs_lookup(struct pmfuse_fs *fs, uint64_t parent, const char *name,
		     struct pmfuse_attr *attr);
void pmfuse_fs_forget(struct pmfuse_fs *fs, uint64_t ino, uint64_t nlookup);
int pmfuse_fs_getattr(struct pmfuse_fs *fs, uint64_t ino, struct pmfuse_attr *attr);
int pmfuse_fs_setattr(struct pmfuse_fs *fs, uint64_t ino, const struct pmfuse_setattr *sa,
		      unsigned valid, const struct pmfuse_cred *cred, struct pmfuse_attr *attr);
/* mode carries the file type (S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK). mknod and mkdir
 * apply the parent's default ACL as Linux's posix_acl_create does (the new inode's access ACL
 * is that ACL limited by mode; a new directory also inherits it as its default ACL) and,
 * without one, the umask in cred (0 for none; applying one the kernel already applied changes
 * nothing). */
int pmfuse_fs_mknod(struct pmfuse_fs *fs, uint64_t parent, const char *name, uint32_t mode,
		    uint64_t rdev, const struct pmfuse_cred *cred, struct pmfuse_attr *attr);
int pmfuse_fs_mkdir(struct pmfuse_fs *fs, uint64_t parent, const char *name, uint32_t mode,
		    const struct pmfuse_cred *cred, struct pmfuse_attr *attr);
int pmfuse_fs_symlink(struct pmfuse_fs *fs, uint64_t parent, const char *name,
		      const char *target, const struct pmfuse_cred *cred,
		      struct pmfuse_attr *attr);
/* Copies the target into buf (NUL-terminated); returns its length. -ERANGE if size is too small.*/
int pmfuse_fs_readlink(struct pmfuse_fs *fs, uint64_t ino, char *buf, size_t size);
/* An unnamed regular file in directory parent (O_TMPFILE): nlink 0 until pmfuse_fs_link names
 * it, freed at its last forget otherwise. */
int pmfuse_fs_tmpfile(struct pmfuse_fs *fs, uint64_t parent, uint32_t mode,
		      const struct pmfuse_cred *cred, struct pmfuse_attr *attr);
int pmfuse_fs_link(struct pmfuse_fs *fs, uint64_t ino, uint64_t newparent, const char *newname,
		   struct pmfuse_attr *attr);
int pmfuse_fs_unlink(struct pmfuse_fs *fs, uint64_t parent, const char *name);
int pmfuse_fs_rmdir(struct pmfuse_fs *fs, uint64_t parent, const char *name);
#define PMFUSE_RENAME_NOREPLACE (1u << 0)
#define PMFUSE_RENAME_EXCHANGE  (1u << 1)
int pmfuse_fs_rename(struct pmfuse_fs *fs, uint64_t parent, const char *name,
		     uint64_t newparent, const char *newname, unsigned flags);

/*
 * Directory listing from cookie (0: the start; "." and ".." come first with cookies 1 and 2).
 * Calls emit(arg, name, ino, type, next_cookie) per entry until it returns non-zero (buffer full)
 * or the directory ends; emit runs under the directory's locks and must not call into the fs. Cookies stay valid across concurrent changes: an entry present for the
 * whole listing is returned exactly once.
 */
typedef int (*pmfuse_dirent_fn)(void *arg, const char *name, uint64_t ino, unsigned type,
				uint64_t next_cookie);
int pmfuse_fs_readdir(struct pmfuse_fs *fs, uint64_t ino, uint64_t cookie, pmfuse_dirent_fn emit,
		      void *arg);

int pmfuse_fs_statfs(struct pmfuse_fs *fs, struct pmfuse_statfs *st);

/* ---- data ---- */

/* Opening with O_TRUNC is a setattr of size 0 by the caller. open/release are not needed by the
 * fs: lookup counts keep inodes alive. */

/*
 * Reads [off, off + len) clipped at EOF. Calls emit(arg, iov, cnt) once with vectors pointing into
 * the pool (and into a shared zero buffer for holes) while the filesystem lock is held, so the
 * caller can hand them to the kernel without copying. Returns what emit returns, or -errno.
 */
typedef int (*pmfuse_read_fn)(void *arg, const struct iovec *iov, int cnt);
int pmfuse_fs_read(struct pmfuse_fs *fs, uint64_t ino, uint64_t off, size_t len,
		   pmfuse_read_fn emit, void *arg);
/*
 * Where the bytes at addr (a vector pmfuse_fs_read handed to emit) can also be read from: the
 * pool's file descriptor and the offset in it, when the pool prefers reads through its file
 * (pmfuse_pool_read_fd). false: read them at addr (a dax device, fake media, or the zero
 * buffer of a hole).
 */
bool pmfuse_fs_read_source(const struct pmfuse_fs *fs, const void *addr, int *fd, uint64_t *off);

/* Reads into a buffer (tools, tests); returns bytes read. */
ssize_t pmfuse_fs_pread(struct pmfuse_fs *fs, uint64_t ino, void *buf, size_t len, uint64_t off);

/* Writes len bytes at off (append: at EOF); returns bytes written. Clears setuid/setgid as
 * POSIX requires for writes by a non-owner. Durable on return. */
ssize_t pmfuse_fs_write(struct pmfuse_fs *fs, uint64_t ino, const void *buf, size_t len,
			uint64_t off, bool append, const struct pmfuse_cred *cred);
/* The same with flags, also telling whether it cleared setuid or setgid: a cache of the mode
 * (the kernel's) is stale then. */
#define PMFUSE_WRITE_APPEND     (1u << 0)  /* at EOF, whatever off says */
#define PMFUSE_WRITE_KEEP_TIMES (1u << 1)  /* mtime and ctime stay: the kernel's writeback cache
					      owns them and sends them with SETATTR; an
					      overwrite then needs no transaction */
ssize_t pmfuse_fs_write_flags(struct pmfuse_fs *fs, uint64_t ino, const void *buf, size_t len,
			      uint64_t off, unsigned flags, const struct pmfuse_cred *cred,
			      bool *privs_dropped);

/* mode: 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE
 * [| FALLOC_FL_KEEP_SIZE]; others -EOPNOTSUPP. It changes the file as a write does, so cred's
 * change drops setuid/setgid (pmfuse_fs_mode_after_change; XFS and ext4 do, file_modified) in
 * the transaction that changes the inode, also when nothing had to be allocated, and tells
 * whether it did in *privs_dropped (may be NULL); NULL cred: the mode stays. */
int pmfuse_fs_fallocate(struct pmfuse_fs *fs, uint64_t ino, int mode, uint64_t off,
			uint64_t len, const struct pmfuse_cred *cred, bool *privs_dropped);
/* SEEK_DATA / SEEK_HOLE; returns the offset or -ENXIO. */
int64_t pmfuse_fs_lseek(struct pmfuse_fs *fs, uint64_t ino, int64_t off, int whence);
/* Every call is already durable: a barrier only. */
int pmfuse_fs_fsync(struct pmfuse_fs *fs, uint64_t ino);

/* ---- reflink (issue 4): shared blocks, copy-on-write ----
 *
 * Blocks can be mapped by several files (or several places of one file); the refcount tree counts
 * the owners. A write into a shared block never touches it: the data path allocates, copies the
 * unchanged parts of partial blocks from the old extent, writes, persists, then remaps and drops
 * one reference in one transaction. Long operations run as several transactions, one extent or
 * a bounded batch each; a crash between them leaves every block counted once per owner or free.
 */

/*
 * FICLONERANGE semantics: map [src_off, src_off + len) of src at dst_off of dst, sharing blocks.
 * len 0 means up to src's EOF. Offsets and len must be block-aligned, except that the range may
 * end at src's EOF when that end is at or beyond dst's EOF (else -EINVAL). Same file allowed when
 * the ranges do not overlap (-EINVAL). Holes in the source become holes in dst. dst grows to
 * cover the range. Errors: -EINVAL, -EISDIR (directories), -EBADF-like cases are the caller's;
 * -ENOSPC leaves every block counted correctly (dst may be partly cloned, like XFS).
 */
int pmfuse_fs_clone_range(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			  uint64_t len, uint64_t dst_ino, uint64_t dst_off);
/* The same, and dst's size just before the clone, read under the same lock (the daemon decides
 * from it whether the kernel can have cached pages of the range). */
int pmfuse_fs_clone_range_sized(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
				uint64_t len, uint64_t dst_ino, uint64_t dst_off,
				uint64_t *dst_size_before);
/* The same, also dropping dst's setuid/setgid for cred as a write would (file_remove_privs
 * on the destination of a clone), in each of the clone's transactions; NULL cred: the mode
 * stays. */
int pmfuse_fs_clone_range_cred(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			       uint64_t len, uint64_t dst_ino, uint64_t dst_off,
			       uint64_t *dst_size_before, const struct pmfuse_cred *cred);

/*
 * copy_file_range: copies len bytes (clipped at src EOF), sharing every whole block when
 * src_off and dst_off are congruent modulo the block size and copying only the unaligned head and
 * tail bytes; otherwise copies bytes. Returns the bytes done (> 0 unless src_off >= src EOF or
 * len == 0), or -errno. Overlapping ranges of one file: -EINVAL. A copy by a caller without
 * CAP_FSETID drops dst's setuid/setgid in the transactions that change it (as a write does);
 * *privs_dropped (may be NULL) says whether it did, judged under the same lock.
 */
ssize_t pmfuse_fs_copy_range(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			     uint64_t dst_ino, uint64_t dst_off, uint64_t len,
			     const struct pmfuse_cred *cred, bool *privs_dropped);

/*
 * FIDEDUPERANGE semantics with one destination: if the bytes of [src_off, src_off + len) of src
 * equal those at dst_off of dst (compared in the pool), dst's blocks there are replaced by src's,
 * shared; dst's contents, size, times and mode stay. Offsets must be block-aligned and both
 * ranges inside their files (-EINVAL); len is shortened to whole blocks unless both ranges end
 * at their files' EOF, and to at most PMFUSE_DEDUPE_MAX bytes, so that one call does not hold
 * the filesystem lock for long (callers loop). Same file allowed when the ranges do not overlap.
 * Returns 0 with *deduped the bytes done (0: nothing to do), -EBADE when some byte differs
 * (nothing changed), -ENOSPC (part of the range may be shared already: the same bytes), or
 * another -errno.
 */
#define PMFUSE_DEDUPE_MAX (16ull << 20)
int pmfuse_fs_dedupe_range(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			   uint64_t len, uint64_t dst_ino, uint64_t dst_off, uint64_t *deduped);

/*
 * Range dedupe: walks [src_off, src_off + len) of src and the same count of bytes at dst_off of
 * dst block by block in the pool and makes every run of dst's blocks whose bytes equal src's
 * share src's blocks; blocks that differ stay as they are. Blocks the two already share are
 * not compared; a hole compares as zeros (zero blocks of dst over a hole of src become a hole;
 * a hole of dst stays one, since sharing into it gives nothing back: it is "same" over zeros,
 * else it differs). Contents, sizes, times
 * and modes never change. Offsets must be block-aligned, both ranges start inside their files
 * and end inside them (-EINVAL); len 0 means as far as both files go. The last partial block
 * counts only when both ranges end at their files' EOF (else len is cut to whole blocks). One
 * file: the ranges may not overlap (-EINVAL).
 *
 * Bounded work per call: at most PMFUSE_DEDUPE_BLOCKS_MAX bytes, in pieces of at most
 * PMFUSE_DEDUPE_MAX, each compared and remapped under one hold of the writer lock (so a write
 * to either file lands before or after a piece, never between its compare and its remap), the
 * lock released between pieces. c->compared tells how far it got: the caller goes on from
 * there. A file that shrank between pieces ends the call early (with what was done).
 * Returns 0 or -errno (-ENOSPC: what is counted as deduped was done; part of one more run may
 * be shared too, uncounted: the same bytes either way).
 */
struct pmfuse_dedupe_counts {
	uint64_t compared;   /* bytes of the range walked */
	uint64_t deduped;    /* bytes of dst now sharing src's blocks (or holes) that did not */
	uint64_t same;       /* bytes shared already, holes in both, or zeros over a hole of dst */
	uint64_t differ;     /* bytes in blocks whose contents differ */
};
#define PMFUSE_DEDUPE_BLOCKS_MAX (256ull << 20)
int pmfuse_fs_dedupe_blocks(struct pmfuse_fs *fs, uint64_t src_ino, uint64_t src_off,
			    uint64_t len, uint64_t dst_ino, uint64_t dst_off,
			    struct pmfuse_dedupe_counts *c);

/*
 * Hashes of the mapped blocks of a file from file block `from` on, for dedupe scans
 * (blockhash.c): up to max entries, in file order, holes skipped, blocks past EOF skipped; a
 * partial last block is hashed over its bytes inside EOF. *next gets the block to go on from
 * (UINT64_MAX when done). Returns the entries filled, or -errno (-EISDIR, -EINVAL: not a
 * regular file or max 0).
 * With a budget (else NULL), the walk also stops before a block that would take its words
 * beyond budget->words, which it lowers by what the entries cost: a block of zeros nothing,
 * another block 1, and run_words more when it starts a run (not the next block in the file
 * and the pool after the entry before it with the same refcount, or that one was zeros): the
 * cost of an answer packed as runs and hashes (PMFUSE_IOC_BLOCK_HASHES2).
 */
#define PMFUSE_BLOCK_ZERO 1u              /* the block holds only zeros */
struct pmfuse_block_hash {
	uint64_t fblock;                  /* file block */
	uint64_t pblock;                  /* pool block */
	uint64_t hash;                    /* XXH3_64bits of the block's bytes inside EOF */
	uint32_t refcount;                /* owners of the pool block */
	uint32_t flags;                   /* PMFUSE_BLOCK_ZERO */
};
struct pmfuse_hash_budget {
	unsigned words;                   /* in: what is left; out: lowered by the entries */
	unsigned run_words;               /* what a new run costs besides its first block */
};
int pmfuse_fs_block_hashes(struct pmfuse_fs *fs, uint64_t ino, uint64_t from,
			   struct pmfuse_block_hash *out, unsigned max,
			   struct pmfuse_hash_budget *budget, uint64_t *next);

/* FALLOC_FL_UNSHARE_RANGE: gives the file private copies of its shared blocks in the range
 * (len 0: to EOF). Holes stay holes. */
int pmfuse_fs_unshare(struct pmfuse_fs *fs, uint64_t ino, uint64_t off, uint64_t len);

/* One mapped extent as reported to pmfusectl (byte units). refcount is the count of the extent's
 * blocks (an extent is reported split where its blocks' counts differ); unwritten: allocated,
 * reads as zeros (fallocate, ZERO_RANGE). */
struct pmfuse_extent_info {
	uint64_t logical;
	uint64_t physical;
	uint64_t length;
	uint32_t refcount;
	bool unwritten;
};
/* Fills up to max extents starting at byte start; *next gets where to continue (UINT64_MAX when
 * done). Returns the number filled. */
int pmfuse_fs_get_extents(struct pmfuse_fs *fs, uint64_t ino, uint64_t start,
			  struct pmfuse_extent_info *out, unsigned max, uint64_t *next);

/* Per-file CoW extent size hint in blocks (0: the default, 32). */
int pmfuse_fs_get_cowextsize(struct pmfuse_fs *fs, uint64_t ino, uint32_t *blocks);
int pmfuse_fs_set_cowextsize(struct pmfuse_fs *fs, uint64_t ino, uint32_t blocks);

/* ---- extended attributes (full names: "user.x", "trusted.x", "security.x", "system.x") ----
 *
 * POSIX ACLs are the xattrs system.posix_acl_access and system.posix_acl_default in Linux's
 * binary form, interpreted here as Linux filesystems do (the kernel enforces them, FUSE leaves
 * the rest to the server): setting an access ACL sets the mode's permission bits from it and is
 * not stored when the mode says it all; chmod rewrites the ACL's owner, mask (or group) and
 * other entries; new inodes inherit a directory's default ACL (see pmfuse_fs_mknod). Invalid
 * ACLs: -EINVAL; a default ACL on a non-directory: -EACCES; an empty value removes the ACL. */
#define PMFUSE_XATTR_CREATE  1   /* XATTR_CREATE */
#define PMFUSE_XATTR_REPLACE 2   /* XATTR_REPLACE */
/* With system.posix_acl_access: clear setgid (the caller is neither in the file's group nor
 * has CAP_FSETID: FUSE_SETXATTR_ACL_KILL_SGID). */
#define PMFUSE_XATTR_ACL_KILL_SGID 0x10000   /* not an XATTR_* flag: a FUSE extra */
int pmfuse_fs_setxattr(struct pmfuse_fs *fs, uint64_t ino, const char *name, const void *value,
		       size_t size, int flags);
/* size 0: returns the value's size. -ENODATA, -ERANGE. */
ssize_t pmfuse_fs_getxattr(struct pmfuse_fs *fs, uint64_t ino, const char *name, void *value,
			   size_t size);
/* NUL-separated names; size 0: returns the size needed. */
ssize_t pmfuse_fs_listxattr(struct pmfuse_fs *fs, uint64_t ino, char *list, size_t size);
int pmfuse_fs_removexattr(struct pmfuse_fs *fs, uint64_t ino, const char *name);

/*
 * Memory errors (pool.h: struct pmfuse_pool_fault). A caller that serves requests arms a
 * recovery point around each one:
 *
 *	struct pmfuse_pool_fault f;
 *	if (sigsetjmp(f.env, 0)) {
 *		rc = pmfuse_fs_fault_recover(fs, ino, f.off);    (-EIO for the request)
 *		...
 *	}
 *	pmfuse_fs_fault_arm(fs, &f);
 *	... pmfuse_fs_* calls ...
 *	pmfuse_fs_fault_disarm(&f);
 *
 * pmfuse_fs_fault_recover must come first after the catch: it rolls back the transaction the
 * thread was running, releases the locks it held, logs the inode and the pool block, and marks
 * ino damaged (PMFUSE_INODE_DAMAGED, which fsck reports) unless ino is 0 or the fs read-only;
 * when the mark cannot be written (the inode table faults too) it logs that and goes on.
 * Returns -EIO.
 */
void pmfuse_fs_fault_arm(struct pmfuse_fs *fs, struct pmfuse_pool_fault *f);
void pmfuse_fs_fault_disarm(struct pmfuse_pool_fault *f);
int pmfuse_fs_fault_recover(struct pmfuse_fs *fs, uint64_t ino, uint64_t off);
/* Touches every page of [addr, addr + len) (vectors from pmfuse_fs_read) so that a memory error
 * faults under the caller's recovery point rather than in the system call that sends them. */
void pmfuse_fs_probe(struct pmfuse_fs *fs, const void *addr, size_t len);

/*
 * The files on the platform's bad blocks (pool.h: pmfuse_pool_badblocks): fn(arg, ino, file
 * block, pool block) for each block of a regular file or symlink that lies on one; *nbad gets
 * the number of bad pool blocks. -EOPNOTSUPP with the reason in why when the pool's source
 * keeps no list (a pool file outside fsdax); -EIO (why says where) when the metadata walked
 * faults; -EUCLEAN, -ENOMEM.
 */
typedef void (*pmfuse_fs_badblock_fn)(void *arg, uint64_t ino, uint64_t fblock, uint64_t pblock);
int pmfuse_fs_badblocks(struct pmfuse_fs *fs, pmfuse_fs_badblock_fn fn, void *arg, size_t *nbad,
			char *why, size_t why_len);

#endif /* PMFUSE_FS_H */
