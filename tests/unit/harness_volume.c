/* SPDX-License-Identifier: BSD-3-Clause */
/* Volume scaffolding, in its own object so that tests of the lower layers link without it. */
#include "harness.h"

#include <stdio.h>

struct pmfuse_volume *th_fake_volume(size_t size, uint32_t bs)
{
	struct pmfuse_mkfs_opts opts = { .block_size = bs };
	return th_fake_volume_opts(size, &opts);
}

struct pmfuse_volume *th_fake_volume_opts(size_t size, const struct pmfuse_mkfs_opts *opts)
{
	struct pmfuse_pool *pool = NULL;
	struct pmfuse_volume *vol = NULL;
	char msg[256] = "";

	assert_int_equal(pmfuse_pool_fake_new(size, NULL, &pool), 0);
	assert_int_equal(pmfuse_mkfs(pool, opts), 0);
	int rc = pmfuse_volume_open(pool, 0, &vol, msg, sizeof(msg));
	if (rc)
		fprintf(stderr, "volume_open: %d %s\n", rc, msg);
	assert_int_equal(rc, 0);
	return vol;
}

void th_volume_destroy(struct pmfuse_volume *vol)
{
	struct pmfuse_pool *pool = vol->pool;
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
}

