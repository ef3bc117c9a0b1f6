/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * util: crc32c against a bit-at-a-time model of the Castagnoli crc (known vectors, random
 * buffers of every length class and alignment, and chained calls), so that the three-stream
 * hardware path and the table fallback (PMFUSE_CRC32C_SW=1, run as a second test) both
 * compute exactly the checksum that is on the media.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* The model: one bit at a time, straight from the definition (reflected 0x82f63b78). */
static uint32_t model_crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
	}
	return ~crc;
}

static void test_crc32c_vectors(void **state)
{
	static const uint8_t zeros32[32];
	uint8_t ones32[32];

	(void)state;
	memset(ones32, 0xff, sizeof(ones32));
	/* RFC 3720, appendix B.4, and the usual check value */
	assert_int_equal(pmfuse_crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(pmfuse_crc32c(0, zeros32, 32), 0x8a9136aau);
	assert_int_equal(pmfuse_crc32c(0, ones32, 32), 0x62a8ab43u);
	assert_int_equal(pmfuse_crc32c(0, "", 0), 0);
}

/* Random buffers, lengths around every chunk boundary and up to 3 blocks, odd alignments. */
static void test_crc32c_random(void **state)
{
	struct th_rng r;
	size_t max = 3 * 4096 + 64;
	uint8_t *buf = malloc(max + 16);
	uint64_t rounds = th_scaled(20000);

	(void)state;
	assert_non_null(buf);
	th_rng_init(&r, th_seed());
	for (uint64_t i = 0; i < rounds; i++) {
		size_t align = (size_t)th_rng_below(&r, 16);
		size_t len;
		uint32_t seed = (uint32_t)th_rng_next(&r);

		switch (th_rng_below(&r, 4)) {
		case 0: len = (size_t)th_rng_below(&r, 64); break;
		case 1: len = 3 * 120 - 8 + (size_t)th_rng_below(&r, 16); break;
		case 2: len = 4080 - 8 + (size_t)th_rng_below(&r, 32); break;
		default: len = (size_t)th_rng_below(&r, max + 1); break;
		}
		for (size_t k = 0; k < len; k++)
			buf[align + k] = (uint8_t)th_rng_next(&r);
		assert_int_equal(pmfuse_crc32c(seed, buf + align, len),
				 model_crc32c(seed, buf + align, len));
		/* a buffer checksummed in two pieces is the buffer checksummed whole */
		size_t cut = len ? (size_t)th_rng_below(&r, len + 1) : 0;
		assert_int_equal(pmfuse_crc32c(pmfuse_crc32c(seed, buf + align, cut),
					       buf + align + cut, len - cut),
				 model_crc32c(seed, buf + align, len));
	}
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_vectors),
		cmocka_unit_test(test_crc32c_random),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
