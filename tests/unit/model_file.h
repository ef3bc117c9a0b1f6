/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The model of a regular file that the data and reflink unit tests check the fs against: its
 * bytes (zero past size) and the state of each block (a hole, written, or unwritten: allocated
 * but reading as zeros), with the operations both tests apply to it, and the full comparison of
 * a file with its model. Preallocation maps holes unwritten; ZERO_RANGE makes its whole blocks
 * unwritten and its partial blocks at the edges unwritten where they were holes; a write makes
 * the blocks it touches written. Unwritten blocks count in st_blocks and are data for lseek.
 */
#ifndef PMFUSE_TEST_MODEL_FILE_H
#define PMFUSE_TEST_MODEL_FILE_H

#include <stdbool.h>
#include <stdint.h>

#include "harness_fs.h"

struct mfile {
	uint64_t ino;
	char name[32];
	uint8_t *data;     /* cap bytes; zero past size */
	uint64_t size;
	uint8_t *mapped;   /* one byte per block: M_HOLE, M_WRITTEN, M_UNWRITTEN */
	uint64_t cap, nblk;
	bool exact;        /* the fs's unwritten blocks are exactly the model's; else (copy-on-
			      write windows may write shared unwritten blocks) only a subset */
};

#define M_HOLE 0
#define M_WRITTEN 1
#define M_UNWRITTEN 2

/* A new file `name` in the root of e, of at most cap bytes. */
void mfile_init(struct th_env *e, struct mfile *mf, const char *name, uint64_t cap);
void mfile_free(struct mfile *mf);
/* Sets the blocks of [lo, hi) to v (M_*). */
void m_map(struct mfile *mf, uint32_t bs, uint64_t lo, uint64_t hi, uint8_t v);
uint64_t m_mapped_blocks(const struct mfile *mf);
/* What a write of n bytes at off does (size, bytes, mapped blocks). */
void m_write(struct mfile *mf, uint32_t bs, const uint8_t *buf, uint64_t off, uint64_t n);
void m_truncate(struct mfile *mf, uint32_t bs, uint64_t size);
/* What fallocate (no PUNCH, no ZERO) of [off, end) does to the blocks: holes become unwritten. */
void m_prealloc(struct mfile *mf, uint32_t bs, uint64_t off, uint64_t end);
/* What ZERO_RANGE of [off, end) does to the blocks (the bytes and size are the caller's). */
void m_zero_range(struct mfile *mf, uint32_t bs, uint64_t off, uint64_t end);
/* Expected lseek(SEEK_DATA / SEEK_HOLE) answers: an offset or -ENXIO. */
int64_t m_seek(const struct mfile *mf, uint32_t bs, uint64_t off, int whence);
/* Reads [off, off + len) through the fs and compares it with the model (tmp: len bytes). */
void compare_range(struct th_env *e, const struct mfile *mf, uint64_t off, uint64_t len,
		   uint8_t *tmp);
/* Attributes, block count, every byte, lseek at block edges (tmp: size + a block), and which
 * blocks the extent report says are unwritten (mf->exact). */
void mfile_check(struct th_env *e, const struct mfile *mf, uint8_t *tmp);

#endif /* PMFUSE_TEST_MODEL_FILE_H */
