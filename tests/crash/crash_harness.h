/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The driver the file-level crash tests share (test_crash_write, test_crash_reflink): a few
 * named files on a small fake-media pool, and one step per operation:
 *   1. the files' contents before it are read from the live filesystem;
 *   2. the operation runs on a copy of the pool (a second filesystem), which gives the contents
 *      after it;
 *   3. it runs on the live filesystem with a hook at every barrier. There, crash images are
 *      built (none of the unpersisted 8-byte units kept, all of them, and random subsets), each
 *      is recovered as a power cut would be (pmfuse_volume_open rolls the log back,
 *      pmfuse_fs_open works off the orphan list), and checked: the space check and fsck's
 *      checks pass, no orphan is left, and every file is in its state before or after the
 *      operation, or between (per block for the none/all images, per 8 bytes for random
 *      subsets, its size between the two) where the operation may take several transactions.
 * A test supplies its operations and any checks of its own through struct ch_test.
 * PMFUSE_CRASH_TRACE=1 prints each operation as it starts (with PMFUSE_SEED, to find the one a
 * failure came in).
 */
#ifndef PMFUSE_TESTS_CRASH_HARNESS_H
#define PMFUSE_TESTS_CRASH_HARNESS_H

#include "harness.h"
#include "harness_fs.h"

#include "fs/fs_internal.h"

#define ULL(x) ((unsigned long long)(x))

#define CH_POOL_SIZE (4u << 20)
#define CH_BS 4096u
#define CH_NFILES 4
#define CH_CAP (160u * CH_BS)   /* largest file a workload makes */
#define CH_MAX_KINDS 16

extern const struct pmfuse_cred ch_cred;
extern const char *const ch_names[CH_NFILES];

/* The files as seen by name: present, size, bytes (zero past size). */
struct ch_state {
	bool present[CH_NFILES];
	uint64_t size[CH_NFILES];
	uint8_t data[CH_NFILES][CH_CAP];
};

struct ch_mounted {
	struct pmfuse_volume *vol;
	struct pmfuse_fs *fs;
};

/* One operation on the files; what the fields mean is the test's (kind indexes its names). */
struct ch_op {
	int kind;
	int src, dst;
	uint64_t off, len, doff;
	uint32_t seed;
};

struct ch_test {
	/* set by the test */
	const char *name;
	const char *const *kind_names;
	int nkinds;
	unsigned random_images;      /* random-subset images per barrier */
	void (*run_op)(struct pmfuse_fs *fs, const struct ch_op *op);
	/* may be NULL: checks every state read (before, after, each crash image's) */
	void (*check_state)(const struct ch_state *s);
	/* may be NULL: more checks of a recovered image, after its files were read into t->got */
	void (*check_image)(struct ch_test *t, struct ch_mounted *m);
	/* may be NULL: the operation must show before or after, never between */
	bool (*atomic)(const struct ch_op *op, const struct ch_state *before);
	/* may be NULL: called on the live filesystem just before and just after each operation */
	void (*around_op)(struct ch_test *t, const struct ch_op *op, bool after);

	/* the harness's */
	struct th_rng rng;
	struct pmfuse_pool *pool, *scratch;
	struct ch_mounted live;
	uint8_t *img;
	struct ch_state *before, *after, *got;
	const struct ch_op *op;
	bool unchanged[CH_NFILES];   /* the operation leaves the file as it is */
	bool must_be_atomic;
	uint64_t op_barriers;        /* barriers of the operation in flight */
	uint64_t barriers, states, as_before, as_after, between, done;
	uint64_t barriers_of[CH_MAX_KINDS], ops_of[CH_MAX_KINDS];
};

int ch_mount(struct pmfuse_pool *pool, struct ch_mounted *m);
void ch_umount(struct ch_mounted *m);
uint64_t ch_ino_of(struct pmfuse_fs *fs, int i);
void ch_fill(uint8_t *buf, size_t len, uint32_t seed);
void ch_read_state(const struct ch_test *t, struct pmfuse_fs *fs, struct ch_state *s);

/* Makes the live pool (mkfs with opts, mounted as t->live) and the buffers. */
void ch_setup(struct ch_test *t, const struct pmfuse_mkfs_opts *opts);
/* Reads the files' state before the next operation into t->before (what pick_op looks at). */
void ch_read_before(struct ch_test *t);
/* Runs op (t->before read) with the crash checks at every barrier. */
void ch_step(struct ch_test *t, const struct ch_op *op);
/*
 * The workload: the nfirst fixed operations, then nops picked by pick (from t->before, drawn
 * with rng; a false return draws again), each through ch_step.
 */
void ch_run(struct ch_test *t, const struct ch_op *first, size_t nfirst, uint64_t nops,
	    bool (*pick)(struct th_rng *r, const struct ch_state *s, struct ch_op *op),
	    struct th_rng *rng);
/* Checks the live pool's space, prints the counts; then unmounts and frees everything. */
void ch_finish(struct ch_test *t);

#endif
