/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The lookup / getattr cache (fs/icache.h) against a model, and under concurrent readers.
 *
 * model     seeded random put_attr / forget / put_name / lookups over 64 inodes and 300 names,
 *           on a cache large enough never to evict: a lookup hits exactly when the model says
 *           (an attribute entry put and not forgotten since; a name entry put under the parent
 *           attribute entry that is still there), and returns what was put;
 *   bounded   the same operations on a cache of 16 entries: each table stays within its bound
 *           (plus the entries of puts racing with eviction: none here, one thread) and every
 *           hit is still right;
 *   readers   two threads read attributes without locks while the main thread replaces and
 *           forgets them: every copy is whole (its fields agree with each other), and after a
 *           forget returns no reader finds the entry (checked by the main thread); freed nodes
 *           are reclaimed through call_rcu (ASan sees a use after free otherwise).
 */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/icache.h"

#define NINO 64u
#define NNAME 300u

struct model {
	bool have[NINO + 1];
	uint64_t seq[NINO + 1];
	uint64_t size[NINO + 1];
	/* names: parent, ino, parent seq at put; 0 ino = none */
	uint64_t nparent[NNAME], nino[NNAME], nseq[NNAME];
};

static void mk_attr(struct pmfuse_attr *a, uint64_t ino, uint64_t v)
{
	memset(a, 0, sizeof(*a));
	a->ino = ino;
	a->size = v;
	a->blocks512 = v * 3;
	a->mtime.tv_sec = (time_t)v;
	a->nlink = (uint32_t)(v & 0xffff) + 1;
}

static bool attr_whole(const struct pmfuse_attr *a)
{
	return a->blocks512 == a->size * 3 && (uint64_t)a->mtime.tv_sec == a->size &&
	       a->nlink == (uint32_t)(a->size & 0xffff) + 1;
}

static void name_of(unsigned k, char *buf, size_t size)
{
	snprintf(buf, size, "name-%u-%.*s", k, (int)(k % 40), "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
}

static void run_ops(struct pmfuse_icache *c, struct model *m, uint64_t nops, bool exact,
		    struct th_rng *r)
{
	for (uint64_t i = 0; i < nops; i++) {
		unsigned op = (unsigned)th_rng_below(r, 100);
		uint64_t ino = 1 + th_rng_below(r, NINO);
		unsigned k = (unsigned)th_rng_below(r, NNAME);
		struct pmfuse_attr a;
		char name[64];

		name_of(k, name, sizeof(name));
		if (op < 25) {
			uint64_t v = th_rng_next(r) >> 20;

			mk_attr(&a, ino, v);
			m->seq[ino] = pmfuse_icache_put_attr(c, &a);
			assert_true(m->seq[ino] != 0);
			m->have[ino] = true;
			m->size[ino] = v;
		} else if (op < 35) {
			pmfuse_icache_forget(c, ino);
			m->have[ino] = false;
		} else if (op < 55) {
			/* a name is put under the parent's current entry, as lookup does */
			if (!m->have[ino])
				continue;
			uint64_t child = 1 + th_rng_below(r, NINO);

			pmfuse_icache_put_name(c, ino, m->seq[ino], name, strlen(name), child);
			m->nparent[k] = ino;
			m->nino[k] = child;
			m->nseq[k] = m->seq[ino];
		} else if (op < 80) {
			uint64_t seq;
			bool hit;

			pmfuse_icache_read_begin();
			hit = pmfuse_icache_attr(c, ino, &a, &seq);
			pmfuse_icache_read_end();
			if (exact)
				assert_int_equal(hit, m->have[ino]);
			if (hit) {
				assert_true(m->have[ino]);
				assert_int_equal(a.ino, ino);
				assert_int_equal(a.size, m->size[ino]);
				assert_int_equal(seq, m->seq[ino]);
			}
		} else {
			uint64_t p = m->nino[k] ? m->nparent[k] : ino, got;
			bool valid = m->nino[k] && m->have[p] && m->seq[p] == m->nseq[k];
			const void *h = NULL;

			pmfuse_icache_read_begin();
			got = pmfuse_icache_name(c, p, name, strlen(name), &h);
			if (got)
				assert_true(pmfuse_icache_live(c, h));
			pmfuse_icache_read_end();
			if (exact)
				assert_int_equal(got != 0, valid);
			if (got) {
				assert_true(valid);
				assert_int_equal(got, m->nino[k]);
			}
			/* the same name under another directory is another entry */
			pmfuse_icache_read_begin();
			got = pmfuse_icache_name(c, p + NINO, name, strlen(name), &h);
			pmfuse_icache_read_end();
			assert_int_equal(got, 0);
		}
	}
}

static void test_model(void **state)
{
	struct model *m = calloc(1, sizeof(*m));
	struct pmfuse_icache *c = pmfuse_icache_new(NINO * NNAME + NINO);
	struct pmfuse_icache_stats st;
	struct th_rng r;

	(void)state;
	assert_non_null(m);
	assert_non_null(c);
	th_rng_init(&r, th_seed());
	run_ops(c, m, th_scaled(200000), true, &r);
	pmfuse_icache_stats(c, &st);
	assert_int_equal(st.evicted, 0);
	unsigned have = 0;

	for (unsigned i = 1; i <= NINO; i++)
		have += m->have[i];
	assert_int_equal(st.attrs, have);
	pmfuse_icache_clear(c);
	pmfuse_icache_stats(c, &st);
	assert_int_equal(st.attrs, 0);
	assert_int_equal(st.names, 0);
	pmfuse_icache_free(c);
	free(m);
}

static void test_bounded(void **state)
{
	struct model *m = calloc(1, sizeof(*m));
	struct pmfuse_icache *c = pmfuse_icache_new(16);
	struct pmfuse_icache_stats st;
	struct th_rng r;

	(void)state;
	assert_non_null(m);
	assert_non_null(c);
	th_rng_init(&r, th_seed() + 1);
	for (unsigned round = 0; round < 200; round++) {
		run_ops(c, m, 500, false, &r);
		pmfuse_icache_stats(c, &st);
		assert_true(st.attrs <= 16);
		assert_true(st.names <= 16);
	}
	assert_true(st.evicted > 0);
	pmfuse_icache_free(c);
	free(m);
}

struct rd {
	struct pmfuse_icache *c;
	atomic_bool stop;
	atomic_ulong reads, hits, torn;
};

static void *reader(void *arg)
{
	struct rd *d = arg;
	uint64_t ino = 1;

	while (!atomic_load(&d->stop)) {
		struct pmfuse_attr a;
		bool hit;

		pmfuse_icache_read_begin();
		hit = pmfuse_icache_attr(d->c, ino, &a, NULL);
		pmfuse_icache_read_end();
		atomic_fetch_add(&d->reads, 1);
		if (hit) {
			atomic_fetch_add(&d->hits, 1);
			if (a.ino != ino || !attr_whole(&a))
				atomic_fetch_add(&d->torn, 1);
		}
		ino = ino % 8 + 1;
	}
	return NULL;
}

static void test_readers(void **state)
{
	struct rd d = { .c = pmfuse_icache_new(64) };
	pthread_t t[2];
	struct th_rng r;

	(void)state;
	assert_non_null(d.c);
	th_rng_init(&r, th_seed() + 2);
	for (unsigned i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, reader, &d), 0);
	for (uint64_t i = 0; i < th_scaled(200000); i++) {
		uint64_t ino = 1 + th_rng_below(&r, 8);
		struct pmfuse_attr a;

		if (th_rng_below(&r, 4)) {
			mk_attr(&a, ino, i);
			pmfuse_icache_put_attr(d.c, &a);
		} else {
			bool hit;

			pmfuse_icache_forget(d.c, ino);
			pmfuse_icache_read_begin();
			hit = pmfuse_icache_attr(d.c, ino, &a, NULL);
			pmfuse_icache_read_end();
			assert_false(hit);
		}
	}
	atomic_store(&d.stop, true);
	for (unsigned i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("# %lu reads, %lu hits\n", atomic_load(&d.reads), atomic_load(&d.hits));
	assert_int_equal(atomic_load(&d.torn), 0);
	assert_true(atomic_load(&d.hits) > 0);
	pmfuse_icache_free(d.c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_model),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_readers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
