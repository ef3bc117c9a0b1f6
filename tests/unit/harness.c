/* SPDX-License-Identifier: BSD-3-Clause */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tx/tx.h"

uint64_t th_seed(void)
{
	static uint64_t seed;
	static int ready;

	if (!ready) {
		const char *s = getenv("PMFUSE_SEED");
		seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL);
		printf("# seed %llu (replay with PMFUSE_SEED=%llu)\n", (unsigned long long)seed,
		       (unsigned long long)seed);
		fflush(stdout);
		ready = 1;
	}
	return seed;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void th_rng_init(struct th_rng *r, uint64_t seed)
{
	/* splitmix64 to spread the seed over the state */
	for (int i = 0; i < 4; i++) {
		uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		r->s[i] = z ^ (z >> 31);
	}
}

uint64_t th_rng_next(struct th_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

uint64_t th_rng_below(struct th_rng *r, uint64_t n)
{
	return th_rng_next(r) % n;
}

uint64_t th_scaled(uint64_t n)
{
	const char *s = getenv("PMFUSE_TEST_SCALE");
	if (!s)
		return n;
	double f = strtod(s, NULL);
	if (f <= 0)
		return n;
	uint64_t m = (uint64_t)((double)n * f);
	return m ? m : 1;
}

void th_check_sealed(struct pmfuse_pool *pool, uint64_t first, unsigned n, uint32_t bs)
{
	for (unsigned i = 0; i < n; i++) {
		struct pmfuse_blk_hdr *h = pmfuse_pool_at(pool, (first + i) * bs);

		assert_int_equal(pmfuse_blk_verify(h, PMFUSE_BLK_STATE, first + i, PMFUSE_OWNER_FS,
						   bs), 0);
	}
}
