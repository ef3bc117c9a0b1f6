/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfuse on-media format, version 1.
 *
 * This header is the only home of structures that live on the pool. Rules:
 * - every field is little-endian and fixed width, wrapped in struct pmfuse_leNN so that a missing
 *   conversion does not compile; read with pmfuse_le64() and write with pmfuse_set_le64();
 * - no pointers, bools, enums or bitfields; padding is explicit and zero;
 * - every struct's size is a build-time assertion at the end of this file.
 *
 * Pool layout (block numbers are absolute: block B starts at byte B * block_size of the pool):
 *
 *   0                    primary superblock
 *   1                    state block (tree roots, counters)
 *   log_start..          transaction log (log_blocks blocks)
 *   bitmap_start..       free-space bitmap (bitmap_blocks blocks)
 *   data_start..         metadata and file data, handed out by the allocator
 *   block_count - 1      secondary superblock
 *
 * doc/format.md describes every structure with its invariant; fsck checks them.
 */
#ifndef PMFUSE_FORMAT_H
#define PMFUSE_FORMAT_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pmfuse format accessors assume a little-endian host; add byte swaps before porting"
#endif

struct pmfuse_le16 { uint16_t v; };
struct pmfuse_le32 { uint32_t v; };
struct pmfuse_le64 { uint64_t v; };

static inline uint16_t pmfuse_le16(struct pmfuse_le16 x) { return x.v; }
static inline uint32_t pmfuse_le32(struct pmfuse_le32 x) { return x.v; }
static inline uint64_t pmfuse_le64(struct pmfuse_le64 x) { return x.v; }
static inline void pmfuse_set_le16(struct pmfuse_le16 *x, uint16_t v) { x->v = v; }
static inline void pmfuse_set_le32(struct pmfuse_le32 *x, uint32_t v) { x->v = v; }
static inline void pmfuse_set_le64(struct pmfuse_le64 *x, uint64_t v) { x->v = v; }

#define PMFUSE_FORMAT_VERSION 1u
#define PMFUSE_BLOCK_SIZE_DEFAULT 4096u
#define PMFUSE_BLOCK_SIZE_MIN 4096u
#define PMFUSE_BLOCK_SIZE_MAX 65536u

/* ---------------------------------------------------------------------------------------------
 * Superblock. Two copies: block 0 and the last block. Written with the two-copy protocol: bump
 * seq, write and persist the primary, then the secondary. Open takes the valid copy (magic, crc,
 * own-location field) with the highest seq, so a crash between the two writes is harmless.
 * The superblock changes rarely (mkfs, mount, unmount, label); all busy state is in the state block.
 */
#define PMFUSE_SB_MAGIC 0x4253455355464d50ull /* "PMFUSESB" */
#define PMFUSE_LABEL_MAX 64

/* Feature words. A pool with unknown incompat bits is refused; unknown ro_compat bits force a
 * read-only open; unknown compat bits are ignored.
 * INCOMPAT_UNWRITTEN: extent records may carry PMFUSE_EXTENT_UNWRITTEN. Set (superblock written
 * and persisted) before the first transaction that could create such a record commits, never
 * cleared; a pool without it holds none, so code from before the flag reads it as it always
 * did, and refuses a pool with it instead of showing the stale bytes of unwritten blocks. */
#define PMFUSE_FEATURE_INCOMPAT_UNWRITTEN 0x1ull
/* INCOMPAT_LOG_ZERO: the log may hold zero entries (PMFUSE_LOG_ZERO), which older code would
 * take for the end of the valid entries and so roll back only part of a transaction. Set by a
 * mount (with the clean flag cleared) and cleared again at its clean unmount, when the log is
 * empty, as XFS does with its log-incompat bits: only a pool left by a crash carries it. */
#define PMFUSE_FEATURE_INCOMPAT_LOG_ZERO 0x2ull
/* INCOMPAT_INLINE_MAP: a file's or symlink's inode may hold its extents itself
 * (PMFUSE_INODE_INLINE_MAP, inline_map[]) instead of in a map tree. Set (superblock written and
 * persisted) before the first transaction that writes an inline map can commit, never cleared;
 * older code refuses such a pool instead of taking the file for empty. */
#define PMFUSE_FEATURE_INCOMPAT_INLINE_MAP 0x4ull
/* INCOMPAT_EDGE_FILL: a b+tree node on the right edge of its tree (the last of its level) may
 * hold fewer than half its slots (at least 1), which older code takes for damage: ascending
 * inserts (inode numbers) split off the new slot alone and leave full nodes behind. Set by a
 * writable fs open (superblock written and persisted before any transaction), never cleared. */
#define PMFUSE_FEATURE_INCOMPAT_EDGE_FILL 0x8ull
/* INCOMPAT_LOG_LANES: the log is divided into log_lanes > 1 lanes of equal size, each its own
 * undo log with its own header (struct pmfuse_log_hdr), so that several transactions run at
 * once. Set by mkfs with log_lanes > 1, never cleared; older code would read only the first
 * lane and leave the others' unfinished transactions in place, so it refuses such a pool. A
 * pool without it has one lane: the whole log (log_lanes 0 or 1). */
#define PMFUSE_FEATURE_INCOMPAT_LOG_LANES 0x10ull
/* INCOMPAT_SHORT_DIRS: a directory may keep its short names (at most PMFUSE_SHORT_NAME_MAX
 * bytes) in a second tree of 64-byte records (PMFUSE_INODE_SHORT_NAMES, sdir root). Set
 * (superblock written and persisted) before the first transaction that makes such a directory
 * can commit, never cleared; older code would not see those names, so it refuses the pool. */
#define PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS 0x20ull
/* COMPAT_DAMAGED: some inode may carry PMFUSE_INODE_DAMAGED (a memory error met in its data
 * or metadata). Set (superblock written) before the first such mark; code that does not know
 * it serves the file as before, and its fsck reports the flag as unknown. */
#define PMFUSE_FEATURE_COMPAT_DAMAGED 0x1ull
#define PMFUSE_FEATURE_COMPAT_SUPP PMFUSE_FEATURE_COMPAT_DAMAGED
#define PMFUSE_FEATURE_RO_COMPAT_SUPP 0ull
#define PMFUSE_FEATURE_INCOMPAT_SUPP \
	(PMFUSE_FEATURE_INCOMPAT_UNWRITTEN | PMFUSE_FEATURE_INCOMPAT_LOG_ZERO | \
	 PMFUSE_FEATURE_INCOMPAT_INLINE_MAP | PMFUSE_FEATURE_INCOMPAT_EDGE_FILL | \
	 PMFUSE_FEATURE_INCOMPAT_LOG_LANES | PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS)

struct pmfuse_sb {
	struct pmfuse_le64 magic;         /* PMFUSE_SB_MAGIC */
	struct pmfuse_le32 version;       /* PMFUSE_FORMAT_VERSION */
	struct pmfuse_le32 block_size;    /* power of two, 4096..65536 */
	struct pmfuse_le64 compat;
	struct pmfuse_le64 ro_compat;
	struct pmfuse_le64 incompat;
	uint8_t uuid[16];
	uint8_t label[PMFUSE_LABEL_MAX];  /* NUL-padded, not necessarily NUL-terminated */
	struct pmfuse_le64 block_count;   /* blocks in the filesystem, both superblocks included */
	struct pmfuse_le64 state_block;   /* 1 */
	struct pmfuse_le64 log_start;
	struct pmfuse_le64 log_blocks;
	struct pmfuse_le64 bitmap_start;
	struct pmfuse_le64 bitmap_blocks;
	struct pmfuse_le64 data_start;    /* first block the allocator may hand out */
	struct pmfuse_le64 sb2_block;     /* block_count - 1 */
	struct pmfuse_le64 seq;           /* bumped on every superblock write */
	struct pmfuse_le64 mkfs_time;     /* seconds since the epoch */
	struct pmfuse_le64 mount_time;    /* last mount, seconds since the epoch */
	struct pmfuse_le64 mount_count;
	struct pmfuse_le32 clean;         /* 1: cleanly unmounted; 0: mounted or crashed */
	struct pmfuse_le32 copy;          /* 0 in the primary, 1 in the secondary */
	struct pmfuse_le32 log_lanes;     /* lanes of the log: 0 or 1 (one lane, the whole log);
					     2..PMFUSE_LOG_LANES_MAX with INCOMPAT_LOG_LANES, and
					     then log_blocks is a multiple of it */
	struct pmfuse_le32 crc;           /* crc32c of this struct with crc = 0 */
	uint8_t pad1[280];                /* zero; room for later fields */
};

#define PMFUSE_SB_CLEAN 1u

/* ---------------------------------------------------------------------------------------------
 * Every metadata block (state, bitmap, log header, b+tree node) starts with this header and
 * describes itself. crc is the crc32c of the whole block with the crc field taken as zero.
 */
#define PMFUSE_BLK_STATE  0x54534d50u /* "PMST" */
#define PMFUSE_BLK_BITMAP 0x4d424d50u /* "PMBM" */
#define PMFUSE_BLK_LOG    0x474c4d50u /* "PMLG" */
#define PMFUSE_BLK_BTREE  0x54424d50u /* "PMBT" */

/* Owners: who a block belongs to. Trees use their tree id (PMFUSE_TREE_*); per-inode trees
 * (extent maps, directories) use PMFUSE_OWNER_INODE_BASE + inode number. */
#define PMFUSE_OWNER_FS 1ull
#define PMFUSE_OWNER_INODE_BASE (1ull << 32)

struct pmfuse_blk_hdr {
	struct pmfuse_le32 magic;  /* PMFUSE_BLK_* */
	struct pmfuse_le32 crc;    /* crc32c of the block with this field zero */
	struct pmfuse_le64 blkno;  /* this block's own number */
	struct pmfuse_le64 owner;  /* PMFUSE_OWNER_FS, a tree id, or an inode owner */
	struct pmfuse_le16 level;  /* b+tree: 0 for leaves */
	struct pmfuse_le16 nrecs;  /* b+tree: records (leaf) or children (node) in use */
	struct pmfuse_le32 pad;    /* zero */
};

/* ---------------------------------------------------------------------------------------------
 * Root descriptor of a b+tree. Lives wherever the tree's owner keeps it (the state block for
 * the filesystem-wide trees, an inode for per-inode trees). levels == 0 means an empty tree with
 * root == 0; otherwise root is the block of the single top node and every leaf is at depth
 * levels - 1. nrecs counts leaf records.
 */
struct pmfuse_btree_root {
	struct pmfuse_le64 root;
	struct pmfuse_le64 nrecs;
	struct pmfuse_le16 levels;
	struct pmfuse_le16 pad0;
	struct pmfuse_le32 pad1;
	struct pmfuse_le64 pad2;
};

#define PMFUSE_BTREE_MAX_LEVELS 8

/* Tree ids: the owner field of every node of a filesystem-wide tree. */
#define PMFUSE_TREE_INODES   2ull
#define PMFUSE_TREE_REFCOUNT 3ull
#define PMFUSE_TREE_ORPHANS  4ull
#define PMFUSE_TREE_TEST     0x100ull /* first id free for tests and tools */

/* ---------------------------------------------------------------------------------------------
 * State block (block 1): the roots of the filesystem-wide trees and the counters that change
 * inside transactions. Only ever changed inside a transaction.
 */
#define PMFUSE_STATE_ROOTS 8
#define PMFUSE_ROOT_INODES   0
#define PMFUSE_ROOT_REFCOUNT 1
#define PMFUSE_ROOT_ORPHANS  2
/* roots 3..7 are reserved (zero) */

struct pmfuse_state {
	struct pmfuse_blk_hdr hdr;       /* PMFUSE_BLK_STATE, owner PMFUSE_OWNER_FS */
	struct pmfuse_btree_root roots[PMFUSE_STATE_ROOTS];
	struct pmfuse_le64 next_ino;     /* next inode number to hand out */
	struct pmfuse_le64 root_ino;     /* inode number of the root directory */
	struct pmfuse_le64 generation;   /* next inode generation */
	struct pmfuse_le64 pad[5];
};

/* ---------------------------------------------------------------------------------------------
 * Free-space bitmap: bit b of the bitmap (counting over all bitmap blocks, PMFUSE_BITMAP_BITS(bs)
 * bits per block, LSB first in each 64-bit word) is 1 when block b is in use. Blocks below
 * data_start and the secondary superblock are always marked in use; bits past block_count are 1.
 */
struct pmfuse_bitmap_blk {
	struct pmfuse_blk_hdr hdr;       /* PMFUSE_BLK_BITMAP, owner PMFUSE_OWNER_FS */
	struct pmfuse_le64 first_block;  /* block number described by bit 0 of words[] */
	struct pmfuse_le64 pad[3];
	struct pmfuse_le64 words[];      /* up to the end of the block */
};
#define PMFUSE_BITMAP_HDR_SIZE 64u
#define PMFUSE_BITMAP_BITS(bs) (((bs) - PMFUSE_BITMAP_HDR_SIZE) * 8u)

/* ---------------------------------------------------------------------------------------------
 * Transaction log (undo log), divided into log_lanes lanes (superblock) of
 * log_blocks / log_lanes blocks each, one after the other from log_start. A lane is an undo log
 * of its own, and one transaction at a time runs in it: the lane's first block holds its header;
 * entries follow it back to back from the lane's second block on, each 8-byte aligned. A pool
 * without INCOMPAT_LOG_LANES has one lane, the whole log.
 *
 * Protocol: an entry is valid when its gen equals the header's gen and its crc matches. A
 * transaction appends the pre-image of a range and persists the entry before it modifies the
 * range. Commit persists every modified range, then bumps the header's gen (one 8-byte store,
 * persisted): from that instant no entry is valid and the transaction is durable. Recovery applies
 * the valid prefix of entries in reverse order, persists, and bumps gen. gen never repeats, so a
 * stale entry from an older transaction can never pass for a current one.
 */
struct pmfuse_log_hdr {
	struct pmfuse_blk_hdr hdr;       /* PMFUSE_BLK_LOG, owner PMFUSE_OWNER_FS, blkno its own */
	struct pmfuse_le64 gen;          /* current generation; changed only by an 8-byte store */
	struct pmfuse_le32 lane;         /* this lane's index, 0..lanes - 1 */
	struct pmfuse_le32 lanes;        /* the log's lane count (0 in a log formatted before
					    lanes, which has one) */
	struct pmfuse_le64 pad[2];
};
#define PMFUSE_LOG_LANES_MAX 256u

/* In pmfuse_log_entry.len: the range held zeros, rollback zeroes it; no pre-image follows. */
#define PMFUSE_LOG_ZERO 0x80000000u

struct pmfuse_log_entry {
	struct pmfuse_le64 gen;          /* equals pmfuse_log_hdr.gen while the entry is live */
	struct pmfuse_le64 off;          /* byte offset of the range in the pool */
	struct pmfuse_le32 len;          /* bytes of pre-image following this header; with
					  * PMFUSE_LOG_ZERO: bytes of a range to zero, no pre-image */
	struct pmfuse_le32 crc;          /* crc32c of gen, off, len and the pre-image */
	/* uint8_t data[len], then zero padding up to a multiple of 8 */
};

/* ---------------------------------------------------------------------------------------------
 * Filesystem records. Each is a record of a b+tree whose key is the record's first field(s).
 */

struct pmfuse_timestamp {
	struct pmfuse_le64 sec;          /* seconds since the epoch (signed, two's complement) */
	struct pmfuse_le32 nsec;         /* 0..999999999 */
	struct pmfuse_le32 pad;
};

/*
 * Extent: a record of a file's map tree. Blocks [fblock, fblock + len) of the file live at
 * [pblock, pblock + len) of the pool. Records do not overlap; a gap is a hole (reads as zeros).
 * An UNWRITTEN extent owns its blocks but reads as zeros: their bytes are never looked at (they
 * may hold anything, another file's old data included) until a write converts them, zeroing
 * what it does not cover first. Only with PMFUSE_FEATURE_INCOMPAT_UNWRITTEN. A pool block
 * mapped by several records is unwritten in all of them or in none.
 */
#define PMFUSE_EXTENT_MAX_LEN (1u << 30)
#define PMFUSE_EXTENT_UNWRITTEN 0x1u
#define PMFUSE_EXTENT_FLAGS_KNOWN PMFUSE_EXTENT_UNWRITTEN
struct pmfuse_extent {
	struct pmfuse_le64 fblock;
	struct pmfuse_le64 pblock;
	struct pmfuse_le32 len;
	struct pmfuse_le32 flags;        /* PMFUSE_EXTENT_*; 0 without INCOMPAT_UNWRITTEN */
};

/*
 * Inode: a record of the inode table (PMFUSE_ROOT_INODES, owner PMFUSE_TREE_INODES), key = ino.
 * Invariant: nlink counts the directory entries naming the inode (plus "." and the children's ".."
 * for a directory); an inode with nlink == 0 is on the orphan list.
 * map: for regular files and symlinks, the extent map (struct pmfuse_extent records); for
 * directories, the entries (struct pmfuse_dirent records). Per-inode trees are owned by
 * PMFUSE_OWNER_INODE_BASE + ino.
 */
/* inode flags */
#define PMFUSE_INODE_LINKABLE (1u << 0)  /* O_TMPFILE, never named yet: nlink 0, an orphan, and
					    linkat may still give it a name */
#define PMFUSE_INODE_INLINE_MAP (1u << 1) /* files and symlinks: the extents are the first
					    1..PMFUSE_INLINE_EXTENTS records of inline_map[] (in
					    order, the rest zero) and map is an empty root;
					    only with PMFUSE_FEATURE_INCOMPAT_INLINE_MAP */
#define PMFUSE_INODE_DAMAGED (1u << 2)   /* a memory error hit a request on this inode: some of
					    its bytes may be lost (fsck.pmfuse reports it) */
#define PMFUSE_INODE_SHORT_NAMES (1u << 3) /* directories: names of at most
					    PMFUSE_SHORT_NAME_MAX bytes are in the sdir tree
					    (struct pmfuse_sdirent), longer ones in map; only with
					    PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS */
#define PMFUSE_INODE_FLAGS_KNOWN \
	(PMFUSE_INODE_LINKABLE | PMFUSE_INODE_INLINE_MAP | PMFUSE_INODE_DAMAGED | \
	 PMFUSE_INODE_SHORT_NAMES)
#define PMFUSE_INLINE_EXTENTS 2

struct pmfuse_inode {
	struct pmfuse_le64 ino;
	struct pmfuse_le64 generation;
	struct pmfuse_le32 mode;         /* S_IFMT type and permission bits, Linux values */
	struct pmfuse_le32 uid;
	struct pmfuse_le32 gid;
	struct pmfuse_le32 nlink;
	struct pmfuse_le64 size;         /* bytes; for a directory, the number of entries */
	struct pmfuse_le64 blocks;       /* filesystem blocks mapped by the extent map */
	struct pmfuse_le64 rdev;         /* device number for character and block devices */
	struct pmfuse_timestamp atime, mtime, ctime, btime;
	struct pmfuse_le32 flags;        /* PMFUSE_INODE_* */
	struct pmfuse_le32 cowextsize;   /* CoW extent size hint in blocks; 0 = default */
	struct pmfuse_btree_root map;    /* extents, or directory entries */
	struct pmfuse_btree_root xattrs; /* struct pmfuse_xattr records */
	struct pmfuse_le64 parent;       /* directories: the parent directory (for ".." and rename
					    cycle checks); 0 for others */
	union {
		struct pmfuse_extent inline_map[PMFUSE_INLINE_EXTENTS]; /* with
					    PMFUSE_INODE_INLINE_MAP; all zero without */
		struct {
			struct pmfuse_btree_root sdir; /* directories with
					    PMFUSE_INODE_SHORT_NAMES: the short entries */
			uint8_t sdir_pad[16];  /* zero */
		};
	};
	uint8_t pad[8];
};

/*
 * Directory entry: a record of a directory's map tree. key = hash48(name) << 16 | seq, where seq
 * tells apart names with equal hashes (the lowest free value at insertion, at most 0x7ffe). A key
 * never changes while the entry exists, which makes hash48 << 15 | seq a stable readdir cookie
 * below 2^63; hash48 is never 0, so cookies 1 and 2 stay free for "." and "..".
 */
#define PMFUSE_NAME_MAX 255
struct pmfuse_dirent {
	struct pmfuse_le64 key;
	struct pmfuse_le64 ino;
	uint8_t type;                    /* DT_* value of the target's type */
	uint8_t namelen;                 /* 1..255 */
	uint8_t pad[6];
	uint8_t name[PMFUSE_NAME_MAX + 1]; /* namelen bytes, then zeros */
};


/*
 * Short directory entry: a record of a directory's sdir tree (PMFUSE_INODE_SHORT_NAMES), for a
 * name of 1..PMFUSE_SHORT_NAME_MAX bytes; key as for struct pmfuse_dirent, unique across both
 * trees of the directory (keys are readdir cookies).
 */
#define PMFUSE_SHORT_NAME_MAX 46
struct pmfuse_sdirent {
	struct pmfuse_le64 key;
	struct pmfuse_le64 ino;
	uint8_t type;                    /* DT_* value of the target's type */
	uint8_t namelen;                 /* 1..PMFUSE_SHORT_NAME_MAX */
	uint8_t name[PMFUSE_SHORT_NAME_MAX]; /* namelen bytes, then zeros */
};

/*
 * Extended attribute: a record of an inode's xattrs tree, key as for directory entries (hash of
 * the full name including its namespace prefix). A value of up to PMFUSE_XATTR_INLINE bytes is
 * stored in the record; a longer one in value_blocks blocks from value_blk on (owned by the inode).
 */
#define PMFUSE_XATTR_INLINE 224
#define PMFUSE_XATTR_VALUE_MAX 65536
struct pmfuse_xattr {
	struct pmfuse_le64 key;
	struct pmfuse_le32 value_len;
	uint8_t name_len;                /* 1..255 */
	uint8_t pad0[3];
	struct pmfuse_le64 value_blk;    /* 0: value inline */
	struct pmfuse_le32 value_blocks;
	struct pmfuse_le32 pad1;
	uint8_t name[PMFUSE_NAME_MAX + 1];
	uint8_t value[PMFUSE_XATTR_INLINE];
};

/*
 * Refcount: a record of the refcount tree (PMFUSE_ROOT_REFCOUNT, owner PMFUSE_TREE_REFCOUNT),
 * key = start. Blocks [start, start + len) are each mapped by refcount >= 2 extents. An allocated
 * block with no record has exactly one owner (as in XFS). Records never overlap, and two records
 * that touch have different counts, unless together they would be longer than
 * PMFUSE_EXTENT_MAX_LEN (otherwise they are merged).
 */
struct pmfuse_refcount_rec {
	struct pmfuse_le64 start;
	struct pmfuse_le32 len;          /* 1..PMFUSE_EXTENT_MAX_LEN */
	struct pmfuse_le32 refcount;     /* >= 2 */
};

/* Orphan: a record of the orphan tree (PMFUSE_ROOT_ORPHANS), key = ino of an inode whose nlink is
 * 0 but that was still in use. Mount frees every inode on it. */
struct pmfuse_orphan {
	struct pmfuse_le64 ino;
	struct pmfuse_le64 pad;
};

/* ---------------------------------------------------------------------------------------------
 * Size assertions: a changed size is a format change.
 */
_Static_assert(sizeof(struct pmfuse_sb) == 512, "pmfuse_sb size");
_Static_assert(offsetof(struct pmfuse_sb, crc) == 228, "pmfuse_sb crc offset");
_Static_assert(sizeof(struct pmfuse_blk_hdr) == 32, "pmfuse_blk_hdr size");
_Static_assert(sizeof(struct pmfuse_btree_root) == 32, "pmfuse_btree_root size");
_Static_assert(sizeof(struct pmfuse_state) == 32 + 8 * 32 + 64, "pmfuse_state size");
_Static_assert(sizeof(struct pmfuse_bitmap_blk) == PMFUSE_BITMAP_HDR_SIZE, "pmfuse_bitmap_blk size");
_Static_assert(sizeof(struct pmfuse_log_hdr) == 64, "pmfuse_log_hdr size");
_Static_assert(offsetof(struct pmfuse_log_hdr, lane) == 40, "pmfuse_log_hdr lane offset");
_Static_assert(offsetof(struct pmfuse_sb, log_lanes) == 224, "pmfuse_sb log_lanes offset");
_Static_assert(sizeof(struct pmfuse_log_entry) == 24, "pmfuse_log_entry size");

_Static_assert(sizeof(struct pmfuse_timestamp) == 16, "pmfuse_timestamp size");
_Static_assert(sizeof(struct pmfuse_inode) == 256, "pmfuse_inode size");
_Static_assert(offsetof(struct pmfuse_inode, inline_map) == 200, "pmfuse_inode inline_map offset");
_Static_assert(sizeof(struct pmfuse_dirent) == 280, "pmfuse_dirent size");
_Static_assert(sizeof(struct pmfuse_sdirent) == 64, "pmfuse_sdirent size");
_Static_assert(offsetof(struct pmfuse_inode, sdir) == 200, "pmfuse_inode sdir offset");
_Static_assert(sizeof(struct pmfuse_extent) == 24, "pmfuse_extent size");
_Static_assert(sizeof(struct pmfuse_xattr) == 512, "pmfuse_xattr size");
_Static_assert(sizeof(struct pmfuse_orphan) == 16, "pmfuse_orphan size");
_Static_assert(sizeof(struct pmfuse_refcount_rec) == 16, "pmfuse_refcount_rec size");

#endif /* PMFUSE_FORMAT_H */
