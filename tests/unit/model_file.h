/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The model of a regular file that the data and reflink unit tests check the fs against: its
 * bytes (zero past size) and which of its blocks are mapped, with the operations both tests
 * apply to it, and the full comparison of a file with its model.
 */
#ifndef PMFUSE_TEST_MODEL_FILE_H
#define PMFUSE_TEST_MODEL_FILE_H

#include <stdint.h>

#include "harness_fs.h"

struct mfile {
	uint64_t ino;
	char name[32];
	uint8_t *data;     /* cap bytes; zero past size */
	uint64_t size;
	uint8_t *mapped;   /* one byte per block */
	uint64_t cap, nblk;
};

/* A new file `name` in the root of e, of at most cap bytes. */
void mfile_init(struct th_env *e, struct mfile *mf, const char *name, uint64_t cap);
void mfile_free(struct mfile *mf);
/* Marks the blocks of [lo, hi) mapped (v = 1) or holes (0). */
void m_map(struct mfile *mf, uint32_t bs, uint64_t lo, uint64_t hi, uint8_t v);
uint64_t m_mapped_blocks(const struct mfile *mf);
/* What a write of n bytes at off does (size, bytes, mapped blocks). */
void m_write(struct mfile *mf, uint32_t bs, const uint8_t *buf, uint64_t off, uint64_t n);
void m_truncate(struct mfile *mf, uint32_t bs, uint64_t size);
/* Expected lseek(SEEK_DATA / SEEK_HOLE) answers: an offset or -ENXIO. */
int64_t m_seek(const struct mfile *mf, uint32_t bs, uint64_t off, int whence);
/* Reads [off, off + len) through the fs and compares it with the model (tmp: len bytes). */
void compare_range(struct th_env *e, const struct mfile *mf, uint64_t off, uint64_t len,
		   uint8_t *tmp);
/* Attributes, block count, every byte and lseek at block edges (tmp: size + a block). */
void mfile_check(struct th_env *e, const struct mfile *mf, uint8_t *tmp);

#endif /* PMFUSE_TEST_MODEL_FILE_H */
