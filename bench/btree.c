/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * b+tree throughput on a real pool file: random inserts, one transaction per insert and then in
 * batches, each followed by random lookups of every key. Prints figures only.
 *
 * The pool is a regular file (default in /dev/shm), so libpmem2 usually picks page granularity
 * (msync per barrier); PMEM2_FORCE_GRANULARITY=CACHE_LINE (or BYTE) measures the cost of the
 * code itself as it would run on pmem. The granularity in use is printed.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "meta/alloc.h"
#include "meta/btree.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "tx/tx.h"
#include "util/util.h"

struct opts {
	const char *path;
	uint64_t size;
	uint64_t count;
	unsigned batch;
	unsigned rec_len;
	uint64_t seed;
};

/* Records: u64 key, then payload up to rec_len. */
static void rec_key(void *key, const void *rec)
{
	memcpy(key, rec, 8);
}

static int rec_cmp(const void *a, const void *b)
{
	uint64_t x, y;

	memcpy(&x, a, 8);
	memcpy(&y, b, 8);
	return x < y ? -1 : x > y;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
		"usage: %s [options]\n"
		"  -p, --path FILE      pool file to create and remove (default /dev/shm/pmfuse-bench-btree.PID)\n"
		"  -s, --size SIZE      pool size (default 1G)\n"
		"  -n, --count N        keys to insert (default 1000000)\n"
		"  -b, --batch N        inserts per transaction in the batched run (default 256)\n"
		"  -r, --rec-len N      record length in bytes, a multiple of 8, >= 8 (default 16)\n"
		"  -S, --seed N         key seed (default 1)\n"
		"  -h, --help           this text\n"
		"Set PMEM2_FORCE_GRANULARITY=CACHE_LINE (or BYTE, PAGE) to force the persistence mode.\n",
		prog);
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lopts[] = {
		{ "path", required_argument, NULL, 'p' },
		{ "size", required_argument, NULL, 's' },
		{ "count", required_argument, NULL, 'n' },
		{ "batch", required_argument, NULL, 'b' },
		{ "rec-len", required_argument, NULL, 'r' },
		{ "seed", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "p:s:n:b:r:S:h", lopts, NULL)) != -1) {
		switch (c) {
		case 'p': o->path = optarg; break;
		case 's':
			if (pmfuse_parse_size(optarg, &o->size))
				goto bad;
			break;
		case 'n': o->count = strtoull(optarg, NULL, 0); break;
		case 'b': o->batch = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'r': o->rec_len = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'S': o->seed = strtoull(optarg, NULL, 0); break;
		case 'h': usage(stdout, argv[0]); exit(0);
		default: goto bad;
		}
	}
	if (optind != argc || !o->count || !o->batch || o->rec_len < 8 || o->rec_len % 8 ||
	    o->rec_len > 1008)
		goto bad;
	return 0;
bad:
	usage(stderr, argv[0]);
	return -EINVAL;
}

struct bench {
	struct opts o;
	struct pmfuse_volume *vol;
	struct pmfuse_btree bt;
	uint64_t *keys;         /* insert order */
	uint64_t *probe;        /* lookup order */
};

struct census {
	const struct pmfuse_volume *vol;
	uint64_t nodes, leaves;
};

static void count_node(void *arg, uint64_t blk)
{
	struct census *c = arg;
	const struct pmfuse_blk_hdr *h = pmfuse_volume_block(c->vol, blk);

	c->nodes++;
	c->leaves += pmfuse_le16(h->level) == 0;
}

/* Inserts every key with batch inserts per transaction, then looks each one up. */
static int run(struct bench *b, unsigned batch)
{
	struct pmfuse_pool *pool = b->vol->pool;
	uint8_t rec[1024] = { 0 }, out[1024];
	uint64_t n = b->o.count, barriers;
	struct census cs = { b->vol, 0, 0 };
	char msg[256];
	double t;
	int rc = 0;

	barriers = pmfuse_pool_barriers(pool);
	t = now();
	for (uint64_t i = 0; i < n && !rc; i += batch) {
		struct pmfuse_tx *tx = pmfuse_tx_begin(b->vol->txm);

		for (uint64_t j = i; j < i + batch && j < n && !rc; j++) {
			memcpy(rec, &b->keys[j], 8);
			if (b->o.rec_len >= 16)
				memcpy(rec + 8, &j, 8);
			rc = pmfuse_btree_insert(tx, &b->bt, rec);
		}
		if (rc) {
			pmfuse_tx_abort(tx);
			fprintf(stderr, "insert: %s\n", strerror(-rc));
			return rc;
		}
		pmfuse_tx_commit(tx);
	}
	t = now() - t;
	barriers = pmfuse_pool_barriers(pool) - barriers;
	printf("  insert   %10.0f /s   %7.2f us each   %5.1f barriers each\n", (double)n / t,
	       t * 1e6 / (double)n, (double)barriers / (double)n);

	t = now();
	for (uint64_t i = 0; i < n; i++) {
		rc = pmfuse_btree_lookup(&b->bt, &b->probe[i], out);
		if (rc || memcmp(out, &b->probe[i], 8)) {
			fprintf(stderr, "lookup of %llu: %d\n", (unsigned long long)b->probe[i], rc);
			return rc ? rc : -EIO;
		}
	}
	t = now() - t;
	printf("  lookup   %10.0f /s   %7.2f us each\n", (double)n / t, t * 1e6 / (double)n);

	t = now();
	rc = pmfuse_btree_check(&b->bt, count_node, &cs, msg, sizeof(msg));
	t = now() - t;
	if (rc) {
		fprintf(stderr, "check: %s\n", msg);
		return rc;
	}
	printf("  check    ok in %.3f s: %llu records, %llu nodes, %u levels, leaves %.0f%% full\n",
	       t, (unsigned long long)pmfuse_btree_count(&b->bt), (unsigned long long)cs.nodes,
	       pmfuse_le16(b->bt.root->levels),
	       100.0 * (double)n / ((double)cs.leaves * pmfuse_btree_leaf_max(&b->bt)));

	struct pmfuse_tx *tx = pmfuse_tx_begin(b->vol->txm);
	t = now();
	rc = pmfuse_btree_destroy(tx, &b->bt);
	if (rc) {
		pmfuse_tx_abort(tx);
		fprintf(stderr, "destroy: %s\n", strerror(-rc));
		return rc;
	}
	pmfuse_tx_commit(tx);
	printf("  destroy  %.3f s\n", now() - t);
	return 0;
}

int main(int argc, char **argv)
{
	struct bench b = { .o = { NULL, 1ull << 30, 1000000, 256, 16, 1 } };
	struct pmfuse_btree_ops ops = { "bench", 8, 16, rec_key, rec_cmp, NULL };
	struct pmfuse_mkfs_opts mo = { 0 };
	struct pmfuse_pool *pool = NULL;
	char path[256], msg[256] = "";
	const char *force = getenv("PMEM2_FORCE_GRANULARITY");
	uint64_t s;
	int rc;

	if (parse(argc, argv, &b.o))
		return 2;
	if (!b.o.path) {
		snprintf(path, sizeof(path), "/dev/shm/pmfuse-bench-btree.%d", (int)getpid());
		b.o.path = path;
	}
	ops.rec_len = (uint16_t)b.o.rec_len;
	b.keys = malloc(b.o.count * sizeof(*b.keys));
	b.probe = malloc(b.o.count * sizeof(*b.probe));
	if (!b.keys || !b.probe) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	/* Distinct random keys: splitmix64 is a bijection of its counter. */
	s = b.o.seed * 0x632be59bd9b4e019ull;
	for (uint64_t i = 0; i < b.o.count; i++)
		b.keys[i] = b.probe[i] = splitmix(&s);
	for (uint64_t i = b.o.count - 1; i > 0; i--) {
		uint64_t j = splitmix(&s) % (i + 1), t = b.probe[i];
		b.probe[i] = b.probe[j];
		b.probe[j] = t;
	}

	rc = pmfuse_pool_create_file(b.o.path, b.o.size);
	if (!rc)
		rc = pmfuse_pool_open(b.o.path, 0, &pool);
	if (rc) {
		fprintf(stderr, "%s: %s\n", b.o.path, strerror(-rc));
		unlink(b.o.path);
		return 1;
	}
	/* The log must hold one batch: every insert may log a few whole nodes. */
	mo.log_blocks = PMFUSE_MAX((uint64_t)b.o.batch * 4 + 64, (uint64_t)256);
	rc = pmfuse_mkfs(pool, &mo);
	if (!rc)
		rc = pmfuse_volume_open(pool, 0, &b.vol, msg, sizeof(msg));
	if (rc) {
		fprintf(stderr, "%s: %s %s\n", b.o.path, strerror(-rc), msg);
		goto out;
	}
	pmfuse_btree_init(&b.bt, pool, b.vol->alloc, &ops, &b.vol->state->roots[3],
			  &b.vol->state->hdr, PMFUSE_TREE_TEST, b.vol->block_size);

	printf("pmfuse b+tree bench: %s, %llu MiB pool, %u-byte blocks, granularity %s%s%s%s\n",
	       b.o.path, (unsigned long long)(b.o.size >> 20), b.vol->block_size,
	       pmfuse_granularity_name(pmfuse_pool_granularity(pool)),
	       force ? " (PMEM2_FORCE_GRANULARITY=" : "", force ? force : "", force ? ")" : "");
	printf("%llu random keys, key 8 bytes, record %u bytes (%u a leaf, %u a node)\n",
	       (unsigned long long)b.o.count, b.o.rec_len, pmfuse_btree_leaf_max(&b.bt),
	       pmfuse_btree_node_max(&b.bt));

	printf("one transaction per insert:\n");
	rc = run(&b, 1);
	if (!rc && b.o.batch > 1) {
		printf("%u inserts per transaction:\n", b.o.batch);
		rc = run(&b, b.o.batch);
	}
out:
	if (b.vol)
		pmfuse_volume_close(b.vol);
	pmfuse_pool_close(pool);
	unlink(b.o.path);
	free(b.keys);
	free(b.probe);
	return rc ? 1 : 0;
}
