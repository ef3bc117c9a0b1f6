/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Pool layer: the fake media model's durability rules, real libpmem2 pools on files (granularity,
 * persistence across reopen, the exclusive lock), and error cases.
 */
#include "harness.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/util.h"

static char test_dir[256];

static const char *tmp_path(const char *name)
{
	static char buf[512];
	snprintf(buf, sizeof(buf), "%s/%s", test_dir, name);
	return buf;
}

static int setup_dir(void **state)
{
	const char *base = getenv("PMFUSE_TEST_DIR");
	snprintf(test_dir, sizeof(test_dir), "%s/pmfuse-pool-XXXXXX", base ? base : "/tmp");
	if (!mkdtemp(test_dir))
		return -1;
	pmfuse_log_set_target(PMFUSE_LOG_QUIET);
	return 0;
}

static int teardown_dir(void **state)
{
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", test_dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Stores reach the media image only through flush + drain, and only the flushed lines. */
static void test_fake_durability(void **state)
{
	struct pmfuse_pool *pool;
	assert_int_equal(pmfuse_pool_fake_new(1 << 16, NULL, &pool), 0);
	uint8_t *base = pmfuse_pool_base(pool);
	const uint8_t *media = pmfuse_pool_fake_media(pool);

	memset(base, 0xaa, 128);           /* two lines, not flushed */
	pmfuse_pool_drain(pool);
	assert_int_equal(media[0], 0);
	assert_int_equal(media[64], 0);

	pmfuse_pool_flush(pool, base, 1);  /* flush only the first line */
	assert_int_equal(media[0], 0);     /* flushed but not drained */
	pmfuse_pool_drain(pool);
	assert_int_equal(media[0], 0xaa);
	assert_int_equal(media[63], 0xaa);
	assert_int_equal(media[64], 0);    /* second line never flushed */

	pmfuse_pool_memcpy(pool, base + 4096, "hello", 5, 0);
	assert_memory_equal(media + 4096, "hello", 5);
	pmfuse_pool_memset(pool, base + 8192, 7, 16, PMFUSE_MEM_NOFLUSH);
	pmfuse_pool_drain(pool);
	assert_int_equal(media[8192], 0);
	assert_int_equal(pmfuse_pool_barriers(pool), 4); /* drain, drain, memcpy, drain */
	pmfuse_pool_close(pool);
}

static bool keep_all(void *arg, size_t unit) { return true; }
static bool keep_even(void *arg, size_t unit) { return unit % 2 == 0; }

/* A crash image is the media plus a chosen subset of the differing 8-byte units. */
static void test_fake_crash_image(void **state)
{
	struct pmfuse_pool *pool;
	size_t size = 1 << 16;
	assert_int_equal(pmfuse_pool_fake_new(size, NULL, &pool), 0);
	uint64_t *w = pmfuse_pool_base(pool);
	uint64_t *img = malloc(size);

	w[0] = 1; w[1] = 2; w[2] = 3; w[100] = 4;
	pmfuse_pool_persist(pool, &w[100], 8);
	assert_int_equal(pmfuse_pool_fake_crash_image(pool, img, NULL, NULL), 3);
	assert_true(img[0] == 0 && img[1] == 0 && img[2] == 0 && img[100] == 4);
	assert_int_equal(pmfuse_pool_fake_crash_image(pool, img, keep_all, NULL), 3);
	assert_true(img[0] == 1 && img[1] == 2 && img[2] == 3);
	pmfuse_pool_fake_crash_image(pool, img, keep_even, NULL);
	assert_true(img[0] == 1 && img[1] == 0 && img[2] == 3);
	free(img);

	/* A pool built from an image starts with that image durable. */
	struct pmfuse_pool *copy;
	assert_int_equal(pmfuse_pool_fake_new(size, pmfuse_pool_base(pool), &copy), 0);
	assert_memory_equal(pmfuse_pool_fake_media(copy), pmfuse_pool_base(pool), size);
	pmfuse_pool_close(copy);
	pmfuse_pool_close(pool);
}

struct hook_state { uint64_t calls, last; uint8_t seen; };

static void count_hook(void *arg, struct pmfuse_pool *pool, uint64_t n)
{
	struct hook_state *h = arg;
	h->calls++;
	h->last = n;
	/* the hook runs before this drain takes effect */
	h->seen = ((const uint8_t *)pmfuse_pool_fake_media(pool))[0];
}

static void test_fake_hook(void **state)
{
	struct pmfuse_pool *pool;
	struct hook_state h = { 0 };
	struct pmfuse_pool_fake_hook hook = { count_hook, &h };
	assert_int_equal(pmfuse_pool_fake_new(4096, NULL, &pool), 0);
	pmfuse_pool_fake_set_hook(pool, &hook);
	uint8_t *b = pmfuse_pool_base(pool);
	b[0] = 9;
	pmfuse_pool_persist(pool, b, 1);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.last, 1);
	assert_int_equal(h.seen, 0);
	assert_int_equal(((const uint8_t *)pmfuse_pool_fake_media(pool))[0], 9);
	pmfuse_pool_close(pool);
	assert_int_equal(pmfuse_pool_fake_new(1000, NULL, &pool), -EINVAL);
}

/* A real pool file: data persisted before close is there after reopen. */
static void test_file_roundtrip(void **state)
{
	const char *path = tmp_path("roundtrip.pool");
	struct pmfuse_pool *pool;

	assert_int_equal(pmfuse_pool_create_file(path, 4 << 20), 0);
	assert_int_equal(pmfuse_pool_open(path, 0, &pool), 0);
	assert_int_equal(pmfuse_pool_size(pool), 4 << 20);
	assert_int_equal(pmfuse_pool_source_kind(pool), PMFUSE_SOURCE_FILE);
	char *base = pmfuse_pool_base(pool);
	pmfuse_pool_memcpy(pool, base + 12345, "persistent", 10, PMFUSE_MEM_NONTEMPORAL);
	memcpy(base + 3 * 4096, "flushed", 7);
	pmfuse_pool_persist(pool, base + 3 * 4096, 7);
	pmfuse_pool_memset(pool, base + 2 * 4096, 'z', 100, 0);
	assert_true(pmfuse_pool_barriers(pool) >= 3);
	pmfuse_pool_close(pool);

	assert_int_equal(pmfuse_pool_open(path, PMFUSE_POOL_RDONLY, &pool), 0);
	base = pmfuse_pool_base(pool);
	assert_memory_equal(base + 12345, "persistent", 10);
	assert_memory_equal(base + 3 * 4096, "flushed", 7);
	assert_int_equal(base[2 * 4096 + 99], 'z');
	assert_true(pmfuse_pool_readonly(pool));
	pmfuse_pool_close(pool);

	/* create_file never shrinks */
	assert_int_equal(pmfuse_pool_create_file(path, 1 << 20), 0);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 4 << 20);
	unlink(path);
}

/* A tmpfs file offers page granularity (with no msync: a memory file system); a disk file keeps
 * msync; PMEM2_FORCE_GRANULARITY and PMFUSE_MSYNC=always are honoured. */
static void test_file_granularity(void **state)
{
	const char *path = tmp_path("gran.pool");
	struct pmfuse_pool *pool;
	const char *saved = getenv("PMEM2_FORCE_GRANULARITY");
	char *saved_copy = saved ? strdup(saved) : NULL;

	assert_int_equal(pmfuse_pool_create_file(path, 1 << 20), 0);
	unsetenv("PMEM2_FORCE_GRANULARITY");
	assert_int_equal(pmfuse_pool_open(path, 0, &pool), 0);
	enum pmfuse_granularity natural = pmfuse_pool_granularity(pool);
	/* page granularity on a memory file system needs no msync; elsewhere it keeps it */
	struct statfs sf;
	assert_int_equal(statfs(test_dir, &sf), 0);
	bool memfs = sf.f_type == 0x01021994 /* tmpfs */ || sf.f_type == 0x858458f6 /* ramfs */;
	assert_int_equal(pmfuse_pool_memory_file(pool), memfs && natural == PMFUSE_GRAN_PAGE);
	pmfuse_pool_close(pool);
	setenv("PMFUSE_MSYNC", "always", 1);
	assert_int_equal(pmfuse_pool_open(path, 0, &pool), 0);
	assert_false(pmfuse_pool_memory_file(pool));
	pmfuse_pool_close(pool);
	unsetenv("PMFUSE_MSYNC");
	if (!statfs("/var/tmp", &sf) && sf.f_type != 0x01021994 && sf.f_type != 0x858458f6) {
		char disk_path[] = "/var/tmp/pmfuse-gran.XXXXXX";
		int fd = mkstemp(disk_path);

		assert_true(fd >= 0);
		close(fd);
		unlink(disk_path);
		assert_int_equal(pmfuse_pool_create_file(disk_path, 1 << 20), 0);
		assert_int_equal(pmfuse_pool_open(disk_path, 0, &pool), 0);
		assert_false(pmfuse_pool_memory_file(pool));
		pmfuse_pool_close(pool);
		unlink(disk_path);
	} else {
		printf("# /var/tmp is missing or a memory file system: msync kept elsewhere not seen\n");
	}

	setenv("PMEM2_FORCE_GRANULARITY", "CACHE_LINE", 1);
	assert_int_equal(pmfuse_pool_open(path, 0, &pool), 0);
	assert_int_equal(pmfuse_pool_granularity(pool), PMFUSE_GRAN_CACHE_LINE);
	assert_false(pmfuse_pool_memory_file(pool));
	/* and the cache-line persist path works */
	char *b = pmfuse_pool_base(pool);
	memcpy(b, "cl", 2);
	pmfuse_pool_persist(pool, b, 2);
	pmfuse_pool_close(pool);
	printf("# natural granularity of %s: %s\n", test_dir, pmfuse_granularity_name(natural));

	if (saved_copy) {
		setenv("PMEM2_FORCE_GRANULARITY", saved_copy, 1);
		free(saved_copy);
	} else {
		unsetenv("PMEM2_FORCE_GRANULARITY");
	}
	unlink(path);
}

/*
 * pmfuse_pool_write_data on a pool file, with each data path the file can take (FD, and MAP
 * when forced) in each granularity it can be given (its natural one, CACHE_LINE forced): the
 * bytes (and zeros for buf NULL, over old bytes) read back through the mapping at once, and
 * from a fresh open (durable), and the right path was chosen.
 */
static void test_file_write_data(void **state)
{
	const char *path = tmp_path("wdata.pool");
	const char *saved = getenv("PMEM2_FORCE_GRANULARITY");
	char *saved_copy = saved ? strdup(saved) : NULL;
	static const char *const grans[] = { NULL, "CACHE_LINE" };
	static const char *const paths[] = { "fd", "map" };
	size_t len = 300000;   /* unaligned, over many pages */
	uint8_t *buf = malloc(len);
	struct pmfuse_pool *pool;

	assert_non_null(buf);
	assert_int_equal(pmfuse_pool_create_file(path, 4 << 20), 0);
	for (unsigned g = 0; g < 2; g++) {
		for (unsigned p = 0; p < 2; p++) {
			uint64_t off = 4096 * (1 + g * 2 + p) * 3 + 17 * (g + 1);
			const uint8_t *base;

			if (grans[g])
				setenv("PMEM2_FORCE_GRANULARITY", grans[g], 1);
			else
				unsetenv("PMEM2_FORCE_GRANULARITY");
			setenv("PMFUSE_DATA_PATH", paths[p], 1);
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)(i * 7 + g * 3 + p + 1) | 1;
			assert_int_equal(pmfuse_pool_open(path, 0, &pool), 0);
			assert_int_equal(pmfuse_pool_data_path(pool),
					 p ? PMFUSE_DATA_MAP : PMFUSE_DATA_FD);
			if (grans[g])
				assert_int_equal(pmfuse_pool_granularity(pool),
						 PMFUSE_GRAN_CACHE_LINE);
			base = pmfuse_pool_base(pool);
			uint64_t b0 = pmfuse_pool_barriers(pool);
			assert_int_equal(pmfuse_pool_write_data(pool, off, buf, len, 0), 0);
			assert_int_equal(pmfuse_pool_barriers(pool), b0 + 1);
			assert_memory_equal(base + off, buf, len);
			/* zeros over part of it, flushed but not drained, then a drain */
			assert_int_equal(pmfuse_pool_write_data(pool, off + 1000, NULL, 70000,
								PMFUSE_MEM_NODRAIN), 0);
			pmfuse_pool_drain(pool);
			for (size_t i = 0; i < 70000; i++)
				assert_int_equal(base[off + 1000 + i], 0);
			assert_int_equal(base[off + 999], buf[999]);
			assert_int_equal(base[off + 71000], buf[71000]);
			pmfuse_pool_close(pool);

			assert_int_equal(pmfuse_pool_open(path, PMFUSE_POOL_RDONLY, &pool), 0);
			base = pmfuse_pool_base(pool);
			assert_memory_equal(base + off, buf, 1000);
			assert_memory_equal(base + off + 71000, buf + 71000, len - 71000);
			assert_int_equal(base[off + 1000], 0);
			assert_int_equal(pmfuse_pool_data_path(pool), PMFUSE_DATA_MAP); /* read-only */
			pmfuse_pool_close(pool);
		}
	}
	unsetenv("PMFUSE_DATA_PATH");
	if (saved_copy) {
		setenv("PMEM2_FORCE_GRANULARITY", saved_copy, 1);
		free(saved_copy);
	} else {
		unsetenv("PMEM2_FORCE_GRANULARITY");
	}
	free(buf);
	unlink(path);
}

/* The exclusive lock: a second writer in this or another process gets -EBUSY; readers pass. */
static void test_file_lock(void **state)
{
	const char *path = tmp_path("lock.pool");
	struct pmfuse_pool *a, *b;

	assert_int_equal(pmfuse_pool_create_file(path, 1 << 20), 0);
	assert_int_equal(pmfuse_pool_open(path, 0, &a), 0);
	assert_int_equal(pmfuse_pool_open(path, 0, &b), -EBUSY);
	assert_int_equal(pmfuse_pool_open(path, PMFUSE_POOL_RDONLY, &b), 0);
	pmfuse_pool_close(b);

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct pmfuse_pool *c;
		_exit(pmfuse_pool_open(path, 0, &c) == -EBUSY ? 0 : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	pmfuse_pool_close(a);
	assert_int_equal(pmfuse_pool_open(path, 0, &b), 0); /* released on close */
	pmfuse_pool_close(b);
	unlink(path);
}

static void test_open_errors(void **state)
{
	struct pmfuse_pool *pool = (void *)1;
	assert_int_equal(pmfuse_pool_open(tmp_path("missing"), 0, &pool), -ENOENT);
	assert_null(pool);
	assert_int_equal(pmfuse_pool_open(test_dir, 0, &pool), -EISDIR);

	const char *empty = tmp_path("empty.pool");
	int fd = open(empty, O_CREAT | O_RDWR, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(pmfuse_pool_open(empty, 0, &pool), -EINVAL);
	unlink(empty);

	assert_int_equal(pmfuse_pool_create_file("/dev/null", 1 << 20), -EINVAL);
	assert_int_equal(pmfuse_pool_open("/dev/null", 0, &pool) < 0, 1);
}

/* Notes of every kind on blocks lo..hi (1 KiB blocks). */
static void memo_note(struct pmfuse_pool *pool, uint64_t lo, uint64_t hi)
{
	for (uint64_t b = lo; b <= hi; b++) {
		pmfuse_pool_memo_set_crc(pool, b);
		pmfuse_pool_memo_set_tag(pool, b, 5);
		pmfuse_pool_memo_set_zero_from(pool, b, 100);
	}
}

static bool memo_kept(const struct pmfuse_pool *pool, uint64_t b)
{
	return pmfuse_pool_memo_crc(pool, b) && pmfuse_pool_memo_tag(pool, b) == 5 &&
	       pmfuse_pool_memo_zero_from(pool, b, 100);
}

static bool memo_gone(const struct pmfuse_pool *pool, uint64_t b)
{
	return !pmfuse_pool_memo_crc(pool, b) && !pmfuse_pool_memo_tag(pool, b) &&
	       !pmfuse_pool_memo_zero_from(pool, b, 1023);
}

/*
 * fsck's memo: off until enabled; notes hold until a store through the pool API touches the
 * block, and exactly the blocks a store touches are forgotten (a store that leaves a note
 * behind would let fsck skip a changed block).
 */
static void test_memo(void **state)
{
	struct pmfuse_pool *pool;
	uint8_t *base, x[4] = { 1, 2, 3, 4 };
	(void)state;

	assert_int_equal(pmfuse_pool_fake_new(16 * 1024, NULL, &pool), 0);
	base = pmfuse_pool_base(pool);
	memo_note(pool, 0, 15);
	assert_true(memo_gone(pool, 3));                    /* off: nothing is noted */
	assert_int_equal(pmfuse_pool_memo_enable(pool, 1000), -EINVAL);
	assert_int_equal(pmfuse_pool_memo_enable(pool, 1024), 0);
	assert_true(memo_gone(pool, 3));
	memo_note(pool, 0, 15);
	assert_true(memo_kept(pool, 3));
	assert_true(memo_gone(pool, 16) && memo_gone(pool, 1ull << 40));   /* past the end */

	/* zeros from the lowest offset noted; tags 1..32767 */
	assert_false(pmfuse_pool_memo_zero_from(pool, 3, 99));
	assert_true(pmfuse_pool_memo_zero_from(pool, 3, 1023));
	pmfuse_pool_memo_set_zero_from(pool, 3, 50);
	pmfuse_pool_memo_set_zero_from(pool, 3, 200);
	assert_true(pmfuse_pool_memo_zero_from(pool, 3, 50));
	assert_false(pmfuse_pool_memo_zero_from(pool, 3, 49));
	pmfuse_pool_memo_set_tag(pool, 3, 0);
	pmfuse_pool_memo_set_tag(pool, 3, 32768);
	assert_int_equal(pmfuse_pool_memo_tag(pool, 3), 5);
	pmfuse_pool_memo_set_tag(pool, 3, 32767);
	assert_int_equal(pmfuse_pool_memo_tag(pool, 3), 32767);
	assert_true(pmfuse_pool_memo_crc(pool, 3));
	memo_note(pool, 3, 3);

	/* each store forgets the blocks it touches, and only those */
	pmfuse_pool_memcpy(pool, base + 2 * 1024 + 1023, x, 2, 0);           /* blocks 2, 3 */
	pmfuse_pool_memset(pool, base + 5 * 1024, 7, 1, PMFUSE_MEM_NOFLUSH); /* 5 */
	assert_int_equal(pmfuse_pool_write_data(pool, 6 * 1024, NULL, 1024, 0), 0);   /* 6 */
	base[8 * 1024 + 10] = 9;
	pmfuse_pool_flush(pool, base + 8 * 1024 + 10, 1);                   /* 8 */
	pmfuse_pool_drain(pool);
	base[9 * 1024] = 9;
	pmfuse_pool_persist(pool, base + 9 * 1024, 1025);                  /* 9, 10 */
	pmfuse_pool_memo_forget(pool, 12 * 1024, 0);                       /* nothing */
	pmfuse_pool_memo_forget(pool, 13 * 1024 + 5, 1ull << 40);          /* 13..15 */
	for (uint64_t b = 0; b < 16; b++) {
		bool gone = b == 2 || b == 3 || b == 5 || b == 6 || b == 8 || b == 9 || b == 10 ||
			    b >= 13;

		if (gone ? !memo_gone(pool, b) : !memo_kept(pool, b))
			fail_msg("block %llu: memo %s", (unsigned long long)b,
				 gone ? "kept after a store" : "lost without a store");
	}
	/* a fake pool reset to an image forgets everything */
	memo_note(pool, 0, 15);
	uint8_t *img = malloc(16 * 1024);
	assert_non_null(img);
	memcpy(img, base, 16 * 1024);
	pmfuse_pool_fake_reset(pool, img);
	free(img);
	for (uint64_t b = 0; b < 16; b++)
		assert_true(memo_gone(pool, b));
	pmfuse_pool_close(pool);

	/* a pool file's data path (pwrite, not the mapping) forgets too */
	const char *path = tmp_path("memo.pool");
	uint8_t buf[100] = { 1 };

	assert_int_equal(pmfuse_pool_create_file(path, 16 * 4096), 0);
	assert_int_equal(pmfuse_pool_open(path, 0, &pool), 0);
	assert_int_equal(pmfuse_pool_memo_enable(pool, 4096), 0);
	memo_note(pool, 0, 15);
	assert_int_equal(pmfuse_pool_write_data(pool, 3 * 4096 + 10, buf, sizeof(buf), 0), 0);
	for (uint64_t b = 0; b < 16; b++)
		assert_true(b == 3 ? memo_gone(pool, b) : memo_kept(pool, b));
	pmfuse_pool_close(pool);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fake_durability),
		cmocka_unit_test(test_fake_crash_image),
		cmocka_unit_test(test_fake_hook),
		cmocka_unit_test(test_file_roundtrip),
		cmocka_unit_test(test_file_granularity),
		cmocka_unit_test(test_file_write_data),
		cmocka_unit_test(test_file_lock),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_memo),
	};
	return cmocka_run_group_tests_name("pool", tests, setup_dir, teardown_dir);
}
