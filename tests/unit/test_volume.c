/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Volume layer: mkfs and open on fake media.
 * - mkfs + open round trips over several pool sizes and block sizes, with the geometry checked
 *   against the layout rules and the allocator's free count;
 * - argument checks (block size, label, log size) and the minimum size, with the pool untouched;
 * - superblock damage: byte flips in either copy, both copies, stale copies (seq ordering),
 *   geometry errors reported by pmfuse_sb_check, repair on writable opens only;
 * - state block damage, unknown features, the clean flag and mount counting;
 * - crashes: at every barrier of a mounting open and close (the two-copy superblock protocol)
 *   and of a re-mkfs over an older pool, every image a power cut could leave either opens as
 *   the old or the new state, or (mid-mkfs) not at all, never as the former pool;
 * - a log holding an unfinished transaction: reported by a read-only open, rolled back by a
 *   writable one.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta/alloc.h"
#include "tx/tx.h"
#include "util/util.h"

#define MiB (1024u * 1024u)

static uint8_t uuid_a[16] = { 0xaa, 1, 2, 3, 4, 5, 0x46, 7, 0x88, 9, 10, 11, 12, 13, 14, 15 };
static uint8_t uuid_b[16] = { 0xbb, 1, 2, 3, 4, 5, 0x46, 7, 0x88, 9, 10, 11, 12, 13, 14, 15 };

static int setup(void **state)
{
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	return 0;
}

static struct pmfuse_pool *fake(size_t size)
{
	struct pmfuse_pool *pool;
	assert_int_equal(pmfuse_pool_fake_new(size, NULL, &pool), 0);
	return pool;
}

static void mkfs_bs(struct pmfuse_pool *pool, uint32_t bs, const char *label, const uint8_t *uuid)
{
	struct pmfuse_mkfs_opts o = { .block_size = bs, .label = label, .uuid = uuid };
	assert_int_equal(pmfuse_mkfs(pool, &o), 0);
}

static struct pmfuse_sb *sb_at(struct pmfuse_pool *pool, int copy)
{
	struct pmfuse_sb *p = pmfuse_pool_base(pool);
	if (!copy)
		return p;
	return pmfuse_pool_at(pool, pmfuse_le64(p->sb2_block) * pmfuse_le32(p->block_size));
}

static void reseal(struct pmfuse_sb *sb)
{
	pmfuse_set_le32(&sb->crc, 0);
	pmfuse_set_le32(&sb->crc, pmfuse_crc32c(0, sb, sizeof(*sb)));
}

static int vopen(struct pmfuse_pool *pool, unsigned flags, struct pmfuse_volume **vol, char *msg,
		 size_t len)
{
	int rc = pmfuse_volume_open(pool, flags, vol, msg, len);
	if (!rc)
		assert_non_null(*vol);
	else
		assert_null(*vol);
	return rc;
}

static void assert_contains(const char *s, const char *what)
{
	if (!strstr(s, what))
		fail_msg("\"%s\" does not contain \"%s\"", s, what);
}

/* A copy of the pool's working image, to prove that a failed call changed nothing. */
static uint8_t *snap(struct pmfuse_pool *pool)
{
	uint8_t *s = malloc(pmfuse_pool_size(pool));
	assert_non_null(s);
	memcpy(s, pmfuse_pool_base(pool), pmfuse_pool_size(pool));
	return s;
}

static void assert_unchanged(struct pmfuse_pool *pool, uint8_t *s)
{
	assert_memory_equal(pmfuse_pool_base(pool), s, pmfuse_pool_size(pool));
	free(s);
}

/* ---- round trips --------------------------------------------------------------------------- */

static void check_geometry(const struct pmfuse_volume *vol, size_t size, uint32_t bs)
{
	const struct pmfuse_sb *sb = &vol->sb;
	uint64_t count = size / bs;
	uint64_t log = pmfuse_le64(sb->log_blocks), bm = pmfuse_le64(sb->bitmap_blocks);
	char msg[256];

	assert_int_equal(vol->block_size, bs);
	assert_int_equal(pmfuse_le64(sb->block_count), count);
	assert_int_equal(pmfuse_le64(sb->sb2_block), count - 1);
	assert_int_equal(pmfuse_le64(sb->state_block), 1);
	assert_int_equal(pmfuse_le64(sb->log_start), 2);
	assert_int_equal(log, PMFUSE_MIN(PMFUSE_MAX(count / 1024, 32u), 1024u));
	assert_int_equal(pmfuse_le64(sb->bitmap_start), 2 + log);
	assert_int_equal(bm, pmfuse_alloc_bitmap_blocks(count, bs));
	assert_int_equal(pmfuse_le64(sb->data_start), 2 + log + bm);
	assert_true(count - pmfuse_le64(sb->data_start) - 1 >= 256);
	assert_int_equal(pmfuse_sb_check(sb_at(vol->pool, 0), 0, size, msg, sizeof(msg)), 0);
	assert_int_equal(pmfuse_sb_check(sb_at(vol->pool, 1), count - 1, size, msg, sizeof(msg)),
			 0);
	assert_int_equal(pmfuse_le64(vol->state->root_ino), 1);
	assert_int_equal(pmfuse_le64(vol->state->next_ino), 2);
	for (int i = 0; i < PMFUSE_STATE_ROOTS; i++)
		assert_int_equal(pmfuse_le16(vol->state->roots[i].levels), 0);
}

static void test_roundtrip(void **state)
{
	static const uint32_t bss[] = { 4096, 8192, 16384, 65536 };
	static const size_t sizes[] = { 0 /* minimum */, 8 * MiB + 4096, 64 * MiB, 160 * MiB };
	char msg[256];

	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(bss); i++) {
		for (size_t j = 0; j < PMFUSE_ARRAY_SIZE(sizes); j++) {
			uint32_t bs = bss[i];
			size_t size = sizes[j] ? sizes[j] : pmfuse_mkfs_min_size(bs);
			if (size < pmfuse_mkfs_min_size(bs))
				continue;
			struct pmfuse_pool *pool = fake(size);
			struct pmfuse_volume *vol;
			uint64_t free_blocks, count = size / bs;

			mkfs_bs(pool, bs, "round trip", uuid_a);
			assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
			assert_string_equal(msg, "");
			check_geometry(vol, size, bs);
			assert_int_equal(vol->sb_copy, 0);
			assert_false(vol->sb_other_bad);
			assert_false(vol->readonly);
			assert_false(vol->recovered);
			assert_false(vol->log_pending);
			assert_true(vol->was_clean);
			assert_non_null(vol->txm);
			assert_non_null(vol->alloc);
			assert_memory_equal(vol->sb.uuid, uuid_a, 16);
			assert_string_equal((const char *)vol->sb.label, "round trip");
			uint64_t expect_free = count - pmfuse_le64(vol->sb.data_start) - 1;
			assert_int_equal(pmfuse_alloc_free_blocks(vol->alloc), expect_free);
			pmfuse_volume_close(vol);

			assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
			assert_true(vol->readonly);
			assert_null(vol->alloc);
			check_geometry(vol, size, bs);
			struct pmfuse_alloc_geom g = {
				.block_size = bs, .block_count = count,
				.bitmap_start = pmfuse_le64(vol->sb.bitmap_start),
				.bitmap_blocks = pmfuse_le64(vol->sb.bitmap_blocks),
				.data_start = pmfuse_le64(vol->sb.data_start),
				.sb2_block = count - 1,
			};
			assert_int_equal(pmfuse_alloc_count_free(pool, &g, &free_blocks), 0);
			assert_int_equal(free_blocks, expect_free);
			pmfuse_volume_close(vol);
			pmfuse_pool_close(pool);
		}
	}
}

/* Default options, random uuids, a full-length label, and the harness helper. */
static void test_defaults(void **state)
{
	struct pmfuse_pool *p1 = fake(4 * MiB), *p2 = fake(4 * MiB);
	struct pmfuse_volume *v1, *v2;
	char label[PMFUSE_LABEL_MAX + 1];

	memset(label, 'x', PMFUSE_LABEL_MAX);
	label[PMFUSE_LABEL_MAX] = '\0';
	assert_int_equal(pmfuse_mkfs(p1, NULL), 0);
	mkfs_bs(p2, 0, label, NULL);
	assert_int_equal(vopen(p1, 0, &v1, NULL, 0), 0);
	assert_int_equal(vopen(p2, 0, &v2, NULL, 0), 0);
	assert_int_equal(v1->block_size, PMFUSE_BLOCK_SIZE_DEFAULT);
	assert_memory_not_equal(v1->sb.uuid, v2->sb.uuid, 16);
	assert_int_equal(v1->sb.uuid[6] >> 4, 4);
	assert_int_equal(v1->sb.label[0], 0);
	assert_memory_equal(v2->sb.label, label, PMFUSE_LABEL_MAX);
	assert_true(pmfuse_le64(v1->sb.mkfs_time) > 0);
	pmfuse_volume_close(v1);
	pmfuse_volume_close(v2);
	pmfuse_pool_close(p1);
	pmfuse_pool_close(p2);

	struct pmfuse_volume *v = th_fake_volume(16 * MiB, 8192);
	assert_int_equal(v->block_size, 8192);
	th_volume_destroy(v);
}

/* ---- arguments and sizes ------------------------------------------------------------------- */

static void test_bad_args(void **state)
{
	static const uint32_t bad_bs[] = { 512, 2048, 3000, 4097, 12288, 131072, 1u << 31 };
	struct pmfuse_pool *pool = fake(8 * MiB);
	char long_label[PMFUSE_LABEL_MAX + 2];
	uint8_t *s;

	memset(pmfuse_pool_base(pool), 0xa5, 8 * MiB);
	s = snap(pool);
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(bad_bs); i++) {
		struct pmfuse_mkfs_opts o = { .block_size = bad_bs[i] };
		assert_int_equal(pmfuse_mkfs(pool, &o), -EINVAL);
		assert_int_equal(pmfuse_mkfs_min_size(bad_bs[i]), 0);
	}
	memset(long_label, 'y', sizeof(long_label) - 1);
	long_label[sizeof(long_label) - 1] = '\0';
	static const char *bad_labels[] = { "tab\there", "nl\n", "del\x7f", "bad utf8 \xc3(",
					    "overlong \xc0\xaf", "cut \xe2\x82" };
	struct pmfuse_mkfs_opts o = { .label = long_label };
	assert_int_equal(pmfuse_mkfs(pool, &o), -EINVAL);
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(bad_labels); i++) {
		o.label = bad_labels[i];
		assert_int_equal(pmfuse_mkfs(pool, &o), -EINVAL);
	}
	o = (struct pmfuse_mkfs_opts){ .log_blocks = 1 };
	assert_int_equal(pmfuse_mkfs(pool, &o), -EINVAL);
	o = (struct pmfuse_mkfs_opts){ .log_blocks = 2000 }; /* leaves too little data */
	assert_int_equal(pmfuse_mkfs(pool, &o), -ENOSPC);
	assert_unchanged(pool, s);

	/* UTF-8 labels and an explicit log size are fine. */
	o = (struct pmfuse_mkfs_opts){ .label = "d\xc3\xa9j\xc3\xa0 vu \xe2\x82\xac",
				       .log_blocks = 100 };
	assert_int_equal(pmfuse_mkfs(pool, &o), 0);
	struct pmfuse_volume *vol;
	assert_int_equal(vopen(pool, 0, &vol, NULL, 0), 0);
	assert_int_equal(pmfuse_le64(vol->sb.log_blocks), 100);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
}

static void test_min_size(void **state)
{
	for (uint32_t bs = 4096; bs <= 65536; bs *= 2) {
		uint64_t min = pmfuse_mkfs_min_size(bs);
		struct pmfuse_pool *pool;
		struct pmfuse_volume *vol;
		struct pmfuse_mkfs_opts o = { .block_size = bs };
		uint8_t *s;

		assert_true(min > 0 && min % bs == 0);
		assert_true(min / bs >= 256 + 36);
		/* One block short: refused, nothing written. */
		pool = fake(min - bs);
		memset(pmfuse_pool_base(pool), 0x5a, min - bs);
		s = snap(pool);
		assert_int_equal(pmfuse_mkfs(pool, &o), -ENOSPC);
		assert_unchanged(pool, s);
		pmfuse_pool_close(pool);
		/* Exactly the minimum: accepted, with at least 256 data blocks. */
		pool = fake(min);
		assert_int_equal(pmfuse_mkfs(pool, &o), 0);
		assert_int_equal(vopen(pool, 0, &vol, NULL, 0), 0);
		assert_true(pmfuse_alloc_free_blocks(vol->alloc) >= 256);
		pmfuse_volume_close(vol);
		pmfuse_pool_close(pool);
	}
	assert_int_equal(pmfuse_mkfs_min_size(0), pmfuse_mkfs_min_size(PMFUSE_BLOCK_SIZE_DEFAULT));
}

/* ---- superblock damage --------------------------------------------------------------------- */

/* Every byte the crc covers, in particular magic, version, block size, geometry, seq, crc. */
static const size_t flip_offsets[] = { 0, 7, 8, 12, 16, 40, 56, 100, 120, 128, 176, 184, 220,
				       224, 228, 231, 232, 400, 511 };

static void test_primary_damaged(void **state)
{
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(flip_offsets); i++) {
		struct pmfuse_pool *pool = fake(8 * MiB);
		struct pmfuse_volume *vol;
		char msg[512];

		mkfs_bs(pool, i % 2 ? 8192 : 4096, "flip", uuid_a);
		((uint8_t *)sb_at(pool, 0))[flip_offsets[i]] ^= 0x10;

		/* Read-only: uses the secondary, writes nothing. */
		uint8_t *s = snap(pool);
		assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
		assert_int_equal(vol->sb_copy, 1);
		assert_true(vol->sb_other_bad);
		assert_contains(msg, "primary superblock (block 0) is damaged");
		assert_string_equal((const char *)vol->sb.label, "flip");
		pmfuse_volume_close(vol);
		assert_unchanged(pool, s);

		/* Writable: repairs the primary from the secondary. */
		assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
		assert_int_equal(vol->sb_copy, 1);
		assert_contains(msg, "rewritten");
		pmfuse_volume_close(vol);
		assert_int_equal(pmfuse_sb_check(sb_at(pool, 0), 0, 8 * MiB, msg, sizeof(msg)), 0);
		assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
		assert_int_equal(vol->sb_copy, 0);
		assert_false(vol->sb_other_bad);
		assert_string_equal(msg, "");
		pmfuse_volume_close(vol);
		pmfuse_pool_close(pool);
	}
}

static void test_secondary_damaged(void **state)
{
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(flip_offsets); i++) {
		struct pmfuse_pool *pool = fake(8 * MiB);
		struct pmfuse_volume *vol;
		char msg[512];

		mkfs_bs(pool, 4096, NULL, uuid_a);
		uint64_t sb2 = pmfuse_le64(sb_at(pool, 0)->sb2_block);
		((uint8_t *)sb_at(pool, 1))[flip_offsets[i]] ^= 0x01;
		assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
		assert_int_equal(vol->sb_copy, 0);
		assert_true(vol->sb_other_bad);
		assert_contains(msg, "secondary superblock");
		pmfuse_volume_close(vol);
		assert_int_equal(pmfuse_sb_check(sb_at(pool, 1), sb2, 8 * MiB, msg, sizeof(msg)), 0);
		pmfuse_pool_close(pool);
	}
}

static void test_both_damaged(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB);
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 4096, NULL, uuid_a);
	((uint8_t *)sb_at(pool, 1))[100] ^= 1;
	((uint8_t *)sb_at(pool, 0))[100] ^= 1;
	uint8_t *s = snap(pool);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "no valid superblock");
	assert_contains(msg, "primary (block 0): checksum mismatch");
	assert_contains(msg, "secondary (block 2047): checksum mismatch");
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_unchanged(pool, s);

	/* Both magics gone: nothing found anywhere. */
	memset(sb_at(pool, 0), 0, 8);
	memset(pmfuse_pool_at(pool, 2047 * 4096), 0, 8);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "bad magic");
	assert_contains(msg, "none at the end of the pool");

	/* A zeroed pool and a pool of garbage. */
	memset(pmfuse_pool_base(pool), 0, 8 * MiB);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	struct th_rng r;
	th_rng_init(&r, th_seed());
	for (size_t i = 0; i < 8 * MiB / 8; i++)
		((uint64_t *)pmfuse_pool_base(pool))[i] = th_rng_next(&r);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	pmfuse_pool_close(pool);
}

/* pmfuse_sb_check names what is wrong with a checksummed but inconsistent superblock. */
static void test_sb_check_geometry(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB);
	struct pmfuse_sb good, sb;
	char msg[256];

	mkfs_bs(pool, 4096, NULL, uuid_a);
	good = *sb_at(pool, 0);
	uint64_t count = pmfuse_le64(good.block_count);

#define CASE(stmt, blk, size, what) do { \
		sb = good; \
		stmt; \
		reseal(&sb); \
		assert_int_equal(pmfuse_sb_check(&sb, blk, size, msg, sizeof(msg)), -EUCLEAN); \
		assert_contains(msg, what); \
	} while (0)

	CASE((void)0, 0, 4 * MiB, "do not fit the pool");
	CASE(pmfuse_set_le32(&sb.version, 2), 0, 8 * MiB, "format version 2");
	CASE(pmfuse_set_le32(&sb.block_size, 6000), 0, 8 * MiB, "block size 6000");
	CASE(pmfuse_set_le32(&sb.block_size, 131072), 0, 8 * MiB, "block size 131072");
	CASE(pmfuse_set_le32(&sb.copy, 1), 0, 8 * MiB, "copy 1, expected 0");
	CASE((void)0, count - 1, 8 * MiB, "copy 0, expected 1");
	CASE(pmfuse_set_le32(&sb.copy, 1), 100, 8 * MiB, "away from its place");
	CASE(pmfuse_set_le64(&sb.block_count, count + 1), 0, 8 * MiB, "do not fit");
	CASE(pmfuse_set_le64(&sb.sb2_block, count - 2), 0, 8 * MiB, "expected the last block");
	CASE(pmfuse_set_le64(&sb.state_block, 2), 0, 8 * MiB, "state block 2");
	CASE(pmfuse_set_le64(&sb.log_start, 1), 0, 8 * MiB, "log at 1+");
	CASE(pmfuse_set_le64(&sb.log_blocks, 1), 0, 8 * MiB, "log at 2+1");
	CASE(pmfuse_set_le64(&sb.log_blocks, UINT64_MAX - 1), 0, 8 * MiB, "log at");
	CASE(pmfuse_set_le64(&sb.bitmap_start, 20), 0, 8 * MiB, "bitmap at 20+1");
	CASE(pmfuse_set_le64(&sb.bitmap_blocks, 0), 0, 8 * MiB, "bitmap at");
	CASE(pmfuse_set_le64(&sb.data_start, pmfuse_le64(good.bitmap_start)), 0, 8 * MiB,
	     "data area starts");
	CASE(pmfuse_set_le64(&sb.data_start, count - 1), 0, 8 * MiB, "data area starts");
	CASE(pmfuse_set_le32(&sb.clean, 7), 0, 8 * MiB, "clean flag 7");
	CASE(pmfuse_set_le64(&sb.magic, 1), 0, 8 * MiB, "bad magic");
#undef CASE
	sb = good;
	pmfuse_set_le64(&sb.seq, 99);
	assert_int_equal(pmfuse_sb_check(&sb, 0, 8 * MiB, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "superblock at block 0: checksum mismatch");
	assert_int_equal(pmfuse_sb_check(&good, 0, 8 * MiB, NULL, 0), 0);
	pmfuse_pool_close(pool);
}

/* Both copies valid: the highest seq wins, the other is rewritten. */
static void test_seq_newest(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB);
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 4096, "old", uuid_a);
	struct pmfuse_sb *p = sb_at(pool, 0), *q = sb_at(pool, 1);

	/* Primary newer (a crash after the primary's write). */
	pmfuse_set_le64(&p->seq, 5);
	memcpy(p->label, "new", 4);
	reseal(p);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(vol->sb_copy, 0);
	assert_true(vol->sb_other_bad);
	assert_contains(msg, "secondary superblock (block 2047) is older (seq 1 < 5)");
	assert_string_equal((const char *)vol->sb.label, "new");
	pmfuse_volume_close(vol);
	assert_int_equal(pmfuse_le64(q->seq), 5);
	assert_string_equal((const char *)q->label, "new");
	assert_int_equal(pmfuse_le32(q->copy), 1);

	/* Secondary newer (cannot happen with the protocol, but open must still take it). */
	pmfuse_set_le64(&q->seq, 9);
	memcpy(q->label, "newer", 6);
	reseal(q);
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(vol->sb_copy, 1);
	assert_string_equal((const char *)vol->sb.label, "newer");
	pmfuse_volume_close(vol);
	assert_int_equal(pmfuse_le64(p->seq), 5); /* read-only: untouched */
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	pmfuse_volume_close(vol);
	assert_int_equal(pmfuse_le64(p->seq), 9);
	assert_string_equal((const char *)p->label, "newer");
	assert_int_equal(pmfuse_le32(p->copy), 0);

	/* A valid secondary of another filesystem is no copy: primary wins even if older. */
	memcpy(q->uuid, uuid_b, 16);
	pmfuse_set_le64(&q->seq, 50);
	reseal(q);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(vol->sb_copy, 0);
	assert_contains(msg, "does not match the primary");
	pmfuse_volume_close(vol);
	assert_memory_equal(q->uuid, uuid_a, 16);
	pmfuse_pool_close(pool);
}

/* A pool grown after mkfs: the secondary is not at the end; the primary says where. */
static void test_grown_pool(void **state)
{
	struct pmfuse_pool *small = fake(8 * MiB), *pool;
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(small, 4096, "grown", uuid_a);
	uint8_t *img = calloc(1, 12 * MiB);
	assert_non_null(img);
	memcpy(img, pmfuse_pool_base(small), 8 * MiB);
	pmfuse_pool_close(small);
	assert_int_equal(pmfuse_pool_fake_new(12 * MiB, img, &pool), 0);
	free(img);

	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(pmfuse_le64(vol->sb.block_count), 2048);
	pmfuse_volume_close(vol);
	/* Primary damaged but its magic and block size intact: found through its sb2_block. */
	sb_at(pool, 0)->label[3] ^= 1;
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(vol->sb_copy, 1);
	pmfuse_volume_close(vol);
	/* Primary magic gone too: the secondary is not where a scan looks (fsck's job). */
	sb_at(pool, 0)->magic.v ^= 1;
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "none at the end of the pool");
	pmfuse_pool_close(pool);
}

/* ---- state block, features, flags ---------------------------------------------------------- */

static void test_state_damaged(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB);
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 4096, NULL, uuid_a);
	struct pmfuse_state *st = pmfuse_pool_at(pool, 4096);
	uint8_t good[4096];
	memcpy(good, st, sizeof(good));
	uint64_t data_start = pmfuse_le64(sb_at(pool, 0)->data_start);

	/* Unsealed byte flip, then sealed but insane contents. */
#define CASE(stmt, seal, what) do { \
		memcpy(st, good, sizeof(good)); \
		stmt; \
		if (seal) \
			pmfuse_blk_seal(&st->hdr, 4096); \
		uint8_t *s = snap(pool); \
		assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN); \
		assert_contains(msg, what); \
		assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), -EUCLEAN); \
		assert_unchanged(pool, s); \
	} while (0)

	CASE(((uint8_t *)st)[300] ^= 4, false, "state block 1: bad header or checksum");
	CASE(((uint8_t *)st)[4000] ^= 4, false, "state block 1: bad header or checksum");
	CASE(pmfuse_set_le32(&st->hdr.magic, PMFUSE_BLK_BITMAP), true, "magic 0x4d424d50");
	CASE(pmfuse_set_le64(&st->hdr.blkno, 7), true, "says block 7");
	CASE(pmfuse_set_le64(&st->hdr.owner, 5), true, "state block 1: bad header");
	CASE(pmfuse_set_le16(&st->hdr.level, 1), true, "level 1");
	CASE(pmfuse_set_le16(&st->roots[1].levels, 9), true, "root 1 has 9 levels");
	CASE(pmfuse_set_le64(&st->roots[2].root, data_start), true, "root 2 is empty but");
	CASE((pmfuse_set_le16(&st->roots[0].levels, 1), pmfuse_set_le64(&st->roots[0].root, 3)),
	     true, "outside the data area");
	CASE((pmfuse_set_le16(&st->roots[0].levels, 2), pmfuse_set_le64(&st->roots[0].root, 2047)),
	     true, "outside the data area");
	CASE(pmfuse_set_le64(&st->root_ino, 0), true, "root inode 0");
	CASE(pmfuse_set_le64(&st->next_ino, 1), true, "next inode 1");
#undef CASE
	/* Sane non-empty roots are accepted (what they point at is the trees' business). */
	memcpy(st, good, sizeof(good));
	pmfuse_set_le16(&st->roots[0].levels, 3);
	pmfuse_set_le64(&st->roots[0].root, data_start);
	pmfuse_blk_seal(&st->hdr, 4096);
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	pmfuse_volume_close(vol);

	/* Damaged log header and bitmap. */
	memcpy(st, good, sizeof(good));
	uint8_t *log = pmfuse_pool_at(pool, 2 * 4096);
	log[100] ^= 1;
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "log at blocks 2..33 is damaged");
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "log header at block 2: checksum mismatch");
	log[100] ^= 1;
	uint8_t *bm = pmfuse_pool_at(pool, pmfuse_le64(sb_at(pool, 0)->bitmap_start) * 4096);
	bm[1000] ^= 1;
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EUCLEAN);
	assert_contains(msg, "free-space bitmap");
	/* Read-only opens do not load the allocator. */
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
}

static void set_features(struct pmfuse_pool *pool, uint64_t compat, uint64_t ro, uint64_t inc)
{
	for (int c = 0; c < 2; c++) {
		struct pmfuse_sb *sb = sb_at(pool, c);
		pmfuse_set_le64(&sb->compat, compat);
		pmfuse_set_le64(&sb->ro_compat, ro);
		pmfuse_set_le64(&sb->incompat, inc);
		reseal(sb);
	}
}

static void test_features(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB);
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 4096, NULL, uuid_a);
	set_features(pool, 0, 0, 1ull << 40);
	uint8_t *s = snap(pool);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), -EOPNOTSUPP);
	assert_contains(msg, "incompatible features 0x0000010000000000");
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), -EOPNOTSUPP);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg)), -EOPNOTSUPP);
	assert_unchanged(pool, s);

	set_features(pool, 0, 4, 0);
	s = snap(pool);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg)), -EROFS);
	assert_contains(msg, "read-only");
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	pmfuse_volume_close(vol);
	assert_unchanged(pool, s);

	set_features(pool, 0xff, 0, 0);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg)), 0);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
}

static void test_mount_flags(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB), *crashed;
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 4096, NULL, uuid_a);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT | PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)),
			 -EINVAL);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg)), 0);
	assert_true(vol->was_clean);
	assert_string_equal(msg, "");
	for (int c = 0; c < 2; c++) {
		assert_int_equal(pmfuse_le32(sb_at(pool, c)->clean), 0);
		/* while mounted the log may hold zero entries: code without them must stay away */
		assert_true(pmfuse_le64(sb_at(pool, c)->incompat) & PMFUSE_FEATURE_INCOMPAT_LOG_ZERO);
		assert_int_equal(pmfuse_le64(sb_at(pool, c)->mount_count), 1);
		assert_int_equal(pmfuse_le64(sb_at(pool, c)->seq), 2);
		assert_true(pmfuse_le64(sb_at(pool, c)->mount_time) > 0);
	}
	/* The power goes while mounted. */
	assert_int_equal(pmfuse_pool_fake_new(8 * MiB, pmfuse_pool_fake_media(pool), &crashed), 0);
	pmfuse_volume_close(vol);
	for (int c = 0; c < 2; c++) {
		assert_int_equal(pmfuse_le32(sb_at(pool, c)->clean), 1);
		assert_int_equal(pmfuse_le64(sb_at(pool, c)->seq), 3);
		assert_false(pmfuse_le64(sb_at(pool, c)->incompat) &
			     PMFUSE_FEATURE_INCOMPAT_LOG_ZERO);
	}
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	assert_true(vol->was_clean);
	assert_int_equal(pmfuse_volume_write_sb(vol), 0);
	assert_int_equal(pmfuse_le64(sb_at(pool, 1)->seq), 4);
	pmfuse_volume_close(vol);
	assert_int_equal(pmfuse_le64(sb_at(pool, 0)->seq), 4);  /* no MOUNT: close writes nothing */

	assert_true(pmfuse_le64(sb_at(crashed, 0)->incompat) & PMFUSE_FEATURE_INCOMPAT_LOG_ZERO);
	assert_int_equal(vopen(crashed, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg)), 0);
	assert_false(vol->was_clean);
	assert_contains(msg, "not cleanly unmounted");
	assert_int_equal(pmfuse_le64(vol->sb.mount_count), 2);
	pmfuse_volume_close(vol);
	assert_int_equal(vopen(crashed, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	assert_int_equal(pmfuse_volume_write_sb(vol), -EROFS);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(crashed);
	pmfuse_pool_close(pool);
}

/* ---- crashes -------------------------------------------------------------------------------- */

struct sweep {
	size_t size;
	uint8_t *img;
	struct th_rng rng;
	uint64_t old_mounts;   /* mount_count before the workload */
	unsigned images, opened, refused;
	bool mkfs;             /* re-mkfs sweep: the image may hold no pool at all */
	uint64_t first;        /* re-mkfs: the first barrier of mkfs */
	uint64_t barrier;      /* the barrier being cut */
	unsigned old;          /* re-mkfs: images that still hold the former pool */
	uint8_t *old_img;      /* re-mkfs: the former pool */
	uint32_t new_bs;       /* re-mkfs: block size of the new pool */
};

static bool keep_random(void *arg, size_t unit)
{
	(void)unit;
	return th_rng_below(&((struct sweep *)arg)->rng, 2);
}

static bool keep_all(void *arg, size_t unit)
{
	(void)arg;
	(void)unit;
	return true;
}

/* The adversarial cut: every store reached the media except those to superblocks (the primary
 * and the last 64 KiB, where any secondary lives). */
static bool keep_outside_sb(void *arg, size_t unit)
{
	struct sweep *sw = arg;
	size_t off = unit * 8;
	return off >= sizeof(struct pmfuse_sb) && off < sw->size - PMFUSE_BLOCK_SIZE_MAX;
}

/* Opens one crash image and checks what it holds. */
static void check_image(struct sweep *sw)
{
	struct pmfuse_pool *pool;
	struct pmfuse_volume *vol;
	char msg[512];

	assert_int_equal(pmfuse_pool_fake_new(sw->size, sw->img, &pool), 0);
	int rc = pmfuse_volume_open(pool, PMFUSE_VOL_MOUNT, &vol, msg, sizeof(msg));
	sw->images++;
	if (sw->mkfs) {
		/* Old pool gone, new one not there yet, or the new one. The old one only if
		 * nothing but its superblocks was written yet: mkfs makes their wipe durable
		 * before it writes anything else. */
		if (rc) {
			assert_int_equal(rc, -EUCLEAN);
			sw->refused++;
		} else if (!memcmp(vol->sb.uuid, uuid_a, 16)) {
			assert_int_equal(sw->barrier, sw->first);
			assert_memory_equal(sw->img + sizeof(struct pmfuse_sb),
					    sw->old_img + sizeof(struct pmfuse_sb),
					    sw->size - sizeof(struct pmfuse_sb) - 65536);
			sw->old++;
		} else {
			assert_memory_equal(vol->sb.uuid, uuid_b, 16);
			assert_int_equal(pmfuse_le32(vol->sb.block_size), sw->new_bs);
			/* ... and all of it new: a fresh state block and an empty bitmap. */
			assert_int_equal(pmfuse_le64(vol->state->next_ino), 2);
			assert_int_equal(pmfuse_alloc_free_blocks(vol->alloc),
					 pmfuse_le64(vol->sb.block_count) -
					 pmfuse_le64(vol->sb.data_start) - 1);
			sw->opened++;
		}
	} else {
		if (rc)
			fail_msg("crash image %u does not open: %d %s", sw->images, rc, msg);
		uint64_t m = pmfuse_le64(vol->sb.mount_count);
		assert_true(m == sw->old_mounts + 1 || m == sw->old_mounts + 2);
		assert_memory_equal(vol->sb.uuid, uuid_a, 16);
		sw->opened++;
	}
	if (!rc) {
		pmfuse_volume_close(vol);
		/* Whatever open repaired is whole now: both copies valid and equal. */
		char m2[256];
		assert_int_equal(pmfuse_sb_check(sb_at(pool, 0), 0, sw->size, m2, sizeof(m2)), 0);
		assert_int_equal(pmfuse_sb_check(sb_at(pool, 1), pmfuse_le64(sb_at(pool, 0)->sb2_block),
						 sw->size, m2, sizeof(m2)), 0);
		assert_int_equal(pmfuse_le64(sb_at(pool, 0)->seq), pmfuse_le64(sb_at(pool, 1)->seq));
	}
	pmfuse_pool_close(pool);
}

static void sweep_hook(void *arg, struct pmfuse_pool *pool, uint64_t barrier)
{
	struct sweep *sw = arg;

	sw->barrier = barrier;
	pmfuse_pool_fake_crash_image(pool, sw->img, NULL, NULL);
	check_image(sw);
	pmfuse_pool_fake_crash_image(pool, sw->img, keep_all, NULL);
	check_image(sw);
	pmfuse_pool_fake_crash_image(pool, sw->img, keep_outside_sb, sw);
	check_image(sw);
	for (int i = 0; i < 4; i++) {
		pmfuse_pool_fake_crash_image(pool, sw->img, keep_random, sw);
		check_image(sw);
	}
}

/* A mounting open and a close write the superblock twice each; cut power at every barrier. */
static void test_crash_sb_protocol(void **state)
{
	struct sweep sw = { .size = 4 * MiB };
	struct pmfuse_pool *pool = fake(sw.size);
	struct pmfuse_volume *vol;
	struct pmfuse_pool_fake_hook hook = { sweep_hook, &sw };

	th_rng_init(&sw.rng, th_seed());
	sw.img = malloc(sw.size);
	assert_non_null(sw.img);
	mkfs_bs(pool, 4096, NULL, uuid_a);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, NULL, 0), 0);
	pmfuse_volume_close(vol);
	sw.old_mounts = 1;

	pmfuse_pool_fake_set_hook(pool, &hook);
	assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, NULL, 0), 0);
	pmfuse_volume_close(vol);
	pmfuse_pool_fake_set_hook(pool, NULL);
	assert_true(sw.images >= 4 * 7);
	assert_int_equal(sw.opened, sw.images);

	/* The torn cases by hand: half a new primary; a new primary and an old secondary. */
	struct pmfuse_sb *p = sb_at(pool, 0), old = *p;
	struct pmfuse_volume *v2;
	pmfuse_set_le64(&p->seq, pmfuse_le64(p->seq) + 1);
	pmfuse_set_le64(&p->mount_count, 77);
	memset((uint8_t *)p + 256, 0xee, 256);   /* torn: crc cannot match */
	assert_int_equal(vopen(pool, 0, &v2, NULL, 0), 0);
	assert_int_equal(v2->sb_copy, 1);
	assert_int_equal(pmfuse_le64(v2->sb.mount_count), 2);
	pmfuse_volume_close(v2);
	assert_memory_equal(p, &old, sizeof(old));  /* rebuilt equal to the old primary */
	pmfuse_set_le64(&p->seq, pmfuse_le64(p->seq) + 1);
	pmfuse_set_le64(&p->mount_count, 77);
	reseal(p);
	assert_int_equal(vopen(pool, 0, &v2, NULL, 0), 0);
	assert_int_equal(v2->sb_copy, 0);
	assert_int_equal(pmfuse_le64(v2->sb.mount_count), 77);
	pmfuse_volume_close(v2);
	assert_int_equal(pmfuse_le64(sb_at(pool, 1)->mount_count), 77);
	free(sw.img);
	pmfuse_pool_close(pool);
}

/*
 * mkfs over an older pool (another uuid), power cut at every barrier: the image holds no pool or
 * the new one, never the old one with anything of the new one in it. With the same block size
 * the new log, bitmap and state block land exactly where the old ones were and are valid, so an
 * old superblock that survived would open them.
 */
static void remkfs_sweep(uint32_t old_bs, uint32_t new_bs, size_t size)
{
	struct sweep sw = { .size = size, .mkfs = true, .new_bs = new_bs };
	struct pmfuse_pool *pool = fake(sw.size);
	struct pmfuse_pool_fake_hook hook = { sweep_hook, &sw };

	th_rng_init(&sw.rng, th_seed() + new_bs);
	sw.img = malloc(sw.size);
	assert_non_null(sw.img);
	mkfs_bs(pool, old_bs, "old", uuid_a);
	/* Use the old pool a little, so that its log and state block differ from fresh ones. */
	struct pmfuse_volume *vol;
	assert_int_equal(vopen(pool, 0, &vol, NULL, 0), 0);
	for (uint64_t i = 0; i < 3; i++) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(vol->txm);
		assert_int_equal(pmfuse_tx_add_meta(tx, &vol->state->hdr, &vol->state->next_ino, 8),
				 0);
		pmfuse_set_le64(&vol->state->next_ino, 100 + i);
		assert_int_equal(pmfuse_tx_commit(tx), 0);
	}
	pmfuse_volume_close(vol);
	sw.old_img = snap(pool);
	sw.first = pmfuse_pool_barriers(pool) + 1;
	pmfuse_pool_fake_set_hook(pool, &hook);
	mkfs_bs(pool, new_bs, "new", uuid_b);
	pmfuse_pool_fake_set_hook(pool, NULL);
	assert_true(sw.refused > 0);
	assert_true(sw.opened > 0);
	assert_int_equal(sw.opened + sw.refused + sw.old, sw.images);
	free(sw.old_img);
	free(sw.img);
	pmfuse_pool_close(pool);
}

static void test_crash_remkfs(void **state)
{
	remkfs_sweep(4096, 4096, 6 * MiB);
	remkfs_sweep(4096, 8192, 6 * MiB);
	remkfs_sweep(65536, 4096, 20 * MiB);
}

/*
 * A completed mkfs leaves no superblock of the former pool anywhere open looks: here the old
 * pool had 64 KiB blocks (its secondary is not in the new pool's last block) and a higher seq,
 * so if it survived, a damaged new primary would make open pick it.
 */
static void test_remkfs_stale_secondary(void **state)
{
	struct pmfuse_pool *pool = fake(20 * MiB);
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 65536, "old", uuid_a);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(vopen(pool, PMFUSE_VOL_MOUNT, &vol, NULL, 0), 0);
		pmfuse_volume_close(vol);
	}
	mkfs_bs(pool, 4096, "new", uuid_b);
	sb_at(pool, 0)->label[0] ^= 1;
	assert_int_equal(vopen(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	assert_memory_equal(vol->sb.uuid, uuid_b, 16);
	assert_int_equal(vol->sb_copy, 1);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
}

/* ---- the log ------------------------------------------------------------------------------- */

static void test_pending_log(void **state)
{
	struct pmfuse_pool *pool = fake(8 * MiB), *crashed;
	struct pmfuse_volume *vol;
	char msg[512];

	mkfs_bs(pool, 4096, NULL, uuid_a);
	assert_int_equal(vopen(pool, 0, &vol, msg, sizeof(msg)), 0);
	struct pmfuse_tx *tx = pmfuse_tx_begin(vol->txm);
	assert_int_equal(pmfuse_tx_add_meta(tx, &vol->state->hdr, &vol->state->next_ino, 8), 0);
	pmfuse_set_le64(&vol->state->next_ino, 1000);   /* not resealed: crc now wrong */
	uint8_t *img = snap(pool);                        /* power cut here */
	pmfuse_tx_abort(tx);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);

	assert_int_equal(pmfuse_pool_fake_new(8 * MiB, img, &crashed), 0);
	/* Read-only: reports the transaction, leaves it, tolerates the half-changed state. */
	assert_int_equal(vopen(crashed, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	assert_true(vol->log_pending);
	assert_null(vol->txm);
	assert_false(vol->recovered);
	assert_contains(msg, "unfinished transaction");
	assert_contains(msg, "state block 1");
	pmfuse_volume_close(vol);
	assert_memory_equal(pmfuse_pool_base(crashed), img, 8 * MiB);
	/* Writable: rolls back. */
	assert_int_equal(vopen(crashed, 0, &vol, msg, sizeof(msg)), 0);
	assert_true(vol->recovered);
	assert_false(vol->log_pending);
	assert_contains(msg, "rolled back");
	assert_int_equal(pmfuse_le64(vol->state->next_ino), 2);
	pmfuse_volume_close(vol);
	assert_int_equal(vopen(crashed, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg)), 0);
	assert_false(vol->log_pending);
	assert_string_equal(msg, "");
	pmfuse_volume_close(vol);
	pmfuse_pool_close(crashed);
	free(img);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_min_size),
		cmocka_unit_test(test_primary_damaged),
		cmocka_unit_test(test_secondary_damaged),
		cmocka_unit_test(test_both_damaged),
		cmocka_unit_test(test_sb_check_geometry),
		cmocka_unit_test(test_seq_newest),
		cmocka_unit_test(test_grown_pool),
		cmocka_unit_test(test_state_damaged),
		cmocka_unit_test(test_features),
		cmocka_unit_test(test_mount_flags),
		cmocka_unit_test(test_crash_sb_protocol),
		cmocka_unit_test(test_crash_remkfs),
		cmocka_unit_test(test_remkfs_stale_secondary),
		cmocka_unit_test(test_pending_log),
	};
	return cmocka_run_group_tests_name("volume", tests, setup, NULL);
}
