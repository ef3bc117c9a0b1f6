/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Shared test scaffolding: seeded randomness and fresh volumes on fake media.
 *
 * Every randomized test takes its seed from PMFUSE_SEED when set, else from the clock, and prints
 * it, so that a failure can be replayed exactly: PMFUSE_SEED=1234 build/tests/test_btree.
 */
#ifndef PMFUSE_TEST_HARNESS_H
#define PMFUSE_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "meta/volume.h"
#include "pool/pool.h"

/* The seed for this run (PMFUSE_SEED or time), printed once. */
uint64_t th_seed(void);

/* xoshiro256** seeded from a 64-bit seed: fast, good enough, and the same on every machine. */
struct th_rng { uint64_t s[4]; };
void th_rng_init(struct th_rng *r, uint64_t seed);
uint64_t th_rng_next(struct th_rng *r);
uint64_t th_rng_below(struct th_rng *r, uint64_t n);   /* uniform in [0, n), n > 0 */

/* A fresh fake-media pool of size bytes formatted with mkfs (block size bs, 0 = default), then
 * opened as a writable volume. Fails the test on error. */
struct pmfuse_volume *th_fake_volume(size_t size, uint32_t bs);
/* The same with mkfs options of the test's choosing (log lanes, log size). */
struct pmfuse_volume *th_fake_volume_opts(size_t size, const struct pmfuse_mkfs_opts *opts);
/* Closes the volume and its pool. */
void th_volume_destroy(struct pmfuse_volume *vol);

/* Fails the test unless blocks [first, first + n) of block size bs are sealed state blocks
 * (magic, own number, owner, crc): what the transaction tests use as metadata. */
void th_check_sealed(struct pmfuse_pool *pool, uint64_t first, unsigned n, uint32_t bs);

/* Iteration counts can be scaled down for the sanitizer build: PMFUSE_TEST_SCALE=0.25. */
uint64_t th_scaled(uint64_t n);

#endif
