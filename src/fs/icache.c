/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The lookup / getattr cache (icache.h) over liburcu's lock-free hash tables.
 *
 * Flavour: urcu-bp ("bulletproof"). The readers are libfuse's worker threads, which libfuse
 * creates and ends on its own (max_idle_threads tears idle ones down): urcu-memb and urcu-mb
 * need every reader registered before its first read section and unregistered before it exits,
 * and urcu-qsbr also needs each reader to announce quiescent states, none of which pmfuse can
 * do for threads it does not own. urcu-bp registers a thread at its first read section and
 * notices its exit by itself; its read lock costs about as much as memb's where the kernel has
 * membarrier (Linux 4.3 on), which liburcu then uses.
 *
 * Sequence numbers tie name entries to the parent's attribute entry they were filled under
 * (icache.h); they come from one counter and are never reused. Counts are approximate under
 * concurrency (relaxed atomics): they only steer eviction.
 */
#include "fs/icache.h"

#include <stdlib.h>
#include <string.h>

#include <urcu-bp.h>
#include <urcu/rculfhash.h>

#include "util/util.h"

#define ULL(x) ((unsigned long long)(x))

/*
 * ThreadSanitizer cannot see liburcu 0.13's orderings (it predates liburcu's TSan support), so
 * they are told to it: a node is released when it is published and acquired wherever it is
 * matched (every reader reaches a node through a match), and every reader releases `grace` at
 * the end of its read section, which a free callback acquires: the grace period made every
 * reader that could see the node end its section before the callback ran. No-ops elsewhere.
 */
#if defined(__SANITIZE_THREAD__)
#define PMFUSE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PMFUSE_TSAN 1
#endif
#endif
#ifdef PMFUSE_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define TSAN_ACQUIRE(p) ((void)(p))
#define TSAN_RELEASE(p) ((void)(p))
#endif
static char grace;    /* the synchronisation object of the grace periods (TSan only) */

struct anode {
	struct cds_lfht_node node;
	struct rcu_head rcu;
	uint64_t ino, seq;
	struct pmfuse_attr attr;
};

struct nnode {
	struct cds_lfht_node node;
	struct rcu_head rcu;
	uint64_t parent, parent_seq, ino;
	uint32_t len;
	char name[];
};

struct pmfuse_icache {
	struct cds_lfht *attrs, *names;
	size_t max;
	unsigned long nattrs, nnames, evicted;    /* uatomic */
	int evicting;                             /* uatomic: a thread is emptying a table */
	uint64_t seq;                             /* uatomic: the last sequence number given */
};

static unsigned long name_hash(uint64_t parent, const char *name, size_t len)
{
	uint64_t h = pmfuse_mix64(parent) ^ 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)name[i]) * 0x100000001b3ull;
	return (unsigned long)pmfuse_mix64(h);
}

struct nkey {
	uint64_t parent;
	const char *name;
	size_t len;
};

static int attr_match(struct cds_lfht_node *node, const void *key)
{
	TSAN_ACQUIRE(node);
	return caa_container_of(node, struct anode, node)->ino == *(const uint64_t *)key;
}

static int name_match(struct cds_lfht_node *node, const void *key)
{
	const struct nnode *n = caa_container_of(node, struct nnode, node);
	const struct nkey *k = key;

	TSAN_ACQUIRE(node);
	return n->parent == k->parent && n->len == k->len && !memcmp(n->name, k->name, k->len);
}

static void anode_free(struct rcu_head *h)
{
	TSAN_ACQUIRE(&grace);
	free(caa_container_of(h, struct anode, rcu));
}

static void nnode_free(struct rcu_head *h)
{
	TSAN_ACQUIRE(&grace);
	free(caa_container_of(h, struct nnode, rcu));
}

static void read_unlock(void)
{
	TSAN_RELEASE(&grace);
	urcu_bp_read_unlock();
}

struct pmfuse_icache *pmfuse_icache_new(size_t max)
{
	struct pmfuse_icache *c = calloc(1, sizeof(*c));
	unsigned long init = 1;

	if (!c)
		return NULL;
	c->max = max < 16 ? 16 : max;
	/* buckets for the whole bound from the start: growing happens in a call_rcu worker, and
	 * until it has run every put walks long chains */
	while (init < c->max && init < (1ul << 20))
		init <<= 1;
	c->attrs = cds_lfht_new_flavor(init, 1, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
				       &urcu_bp_flavor, NULL);
	c->names = cds_lfht_new_flavor(init, 1, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
				       &urcu_bp_flavor, NULL);
	if (!c->attrs || !c->names) {
		if (c->attrs)
			cds_lfht_destroy(c->attrs, NULL);
		if (c->names)
			cds_lfht_destroy(c->names, NULL);
		free(c);
		return NULL;
	}
	return c;
}

/* Removes every node of a table; returns how many it removed. */
static unsigned long drain(struct cds_lfht *t, void (*fn)(struct rcu_head *), size_t off_rcu,
			   size_t off_node)
{
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;
	unsigned long n = 0;

	urcu_bp_read_lock();
	cds_lfht_for_each(t, &it, node) {
		if (!cds_lfht_del(t, node)) {
			urcu_bp_call_rcu((struct rcu_head *)((char *)node - off_node + off_rcu), fn);
			n++;
		}
	}
	read_unlock();
	return n;
}

#define DRAIN(t, type, fn) \
	drain(t, fn, offsetof(struct type, rcu), offsetof(struct type, node))

void pmfuse_icache_clear(struct pmfuse_icache *c)
{
	uatomic_sub(&c->nattrs, DRAIN(c->attrs, anode, anode_free));
	uatomic_sub(&c->nnames, DRAIN(c->names, nnode, nnode_free));
}

void pmfuse_icache_free(struct pmfuse_icache *c)
{
	if (!c)
		return;
	pmfuse_icache_clear(c);
	urcu_bp_barrier();    /* every call_rcu above has run */
	cds_lfht_destroy(c->attrs, NULL);
	cds_lfht_destroy(c->names, NULL);
	free(c);
}

void pmfuse_icache_read_begin(void)
{
	urcu_bp_read_lock();
}

void pmfuse_icache_read_end(void)
{
	read_unlock();
}

static struct anode *attr_find(struct pmfuse_icache *c, uint64_t ino)
{
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;

	cds_lfht_lookup(c->attrs, (unsigned long)pmfuse_mix64(ino), attr_match, &ino, &it);
	node = cds_lfht_iter_get_node(&it);
	return node ? caa_container_of(node, struct anode, node) : NULL;
}

bool pmfuse_icache_attr(struct pmfuse_icache *c, uint64_t ino, struct pmfuse_attr *out,
			uint64_t *seq)
{
	struct anode *a = attr_find(c, ino);

	if (!a)
		return false;
	*out = a->attr;
	if (seq)
		*seq = a->seq;
	return true;
}

uint64_t pmfuse_icache_name(struct pmfuse_icache *c, uint64_t parent, const char *name,
			    size_t len, const void **handle)
{
	struct nkey k = { parent, name, len };
	struct cds_lfht_iter it;
	struct cds_lfht_node *node;
	struct nnode *n;
	struct anode *p;

	cds_lfht_lookup(c->names, name_hash(parent, name, len), name_match, &k, &it);
	node = cds_lfht_iter_get_node(&it);
	if (!node)
		return 0;
	n = caa_container_of(node, struct nnode, node);
	p = attr_find(c, parent);
	if (!p || p->seq != n->parent_seq)
		return 0;       /* the directory changed since: a stale entry */
	*handle = p;
	return n->ino;
}

bool pmfuse_icache_live(struct pmfuse_icache *c, const void *handle)
{
	struct anode *p = (struct anode *)handle;

	(void)c;
	return !cds_lfht_is_node_deleted(&p->node);
}

/*
 * Makes room in a table holding *count of at most c->max: empties it. The hash table has no
 * cheap order to evict in (a walk from its start crosses every bucket emptied before, which made
 * evicting a batch at a time quadratic), and emptying costs one walk per c->max puts. A working
 * set larger than the cache is then refilled by misses; one thread empties at a time.
 */
static void evict(struct pmfuse_icache *c, struct cds_lfht *t, unsigned long *count,
		  void (*fn)(struct rcu_head *), size_t off_rcu, size_t off_node)
{
	unsigned long n;

	if (uatomic_read(count) < c->max || uatomic_cmpxchg(&c->evicting, 0, 1) != 0)
		return;
	n = drain(t, fn, off_rcu, off_node);
	uatomic_sub(count, n);
	uatomic_add(&c->evicted, n);
	uatomic_set(&c->evicting, 0);
}

uint64_t pmfuse_icache_put_attr(struct pmfuse_icache *c, const struct pmfuse_attr *a)
{
	struct anode *n;
	struct cds_lfht_node *old;
	uint64_t seq;

	evict(c, c->attrs, &c->nattrs, anode_free, offsetof(struct anode, rcu),
	      offsetof(struct anode, node));
	n = malloc(sizeof(*n));
	if (!n)
		return 0;
	cds_lfht_node_init(&n->node);
	n->ino = a->ino;
	n->attr = *a;
	n->seq = seq = uatomic_add_return(&c->seq, 1);
	TSAN_RELEASE(&n->node);
	urcu_bp_read_lock();
	old = cds_lfht_add_replace(c->attrs, (unsigned long)pmfuse_mix64(a->ino), attr_match, &n->ino,
				   &n->node);
	if (old)
		urcu_bp_call_rcu(&caa_container_of(old, struct anode, node)->rcu, anode_free);
	else
		uatomic_inc(&c->nattrs);
	read_unlock();
	return seq;     /* not n->seq: once published, n may be evicted and freed */
}

void pmfuse_icache_put_name(struct pmfuse_icache *c, uint64_t parent, uint64_t parent_seq,
			    const char *name, size_t len, uint64_t ino)
{
	struct cds_lfht_node *old;
	struct nnode *n;
	struct nkey k = { parent, name, len };

	if (!parent_seq || !ino)
		return;
	evict(c, c->names, &c->nnames, nnode_free, offsetof(struct nnode, rcu),
	      offsetof(struct nnode, node));
	n = malloc(sizeof(*n) + len);
	if (!n)
		return;
	cds_lfht_node_init(&n->node);
	n->parent = parent;
	n->parent_seq = parent_seq;
	n->ino = ino;
	n->len = (uint32_t)len;
	memcpy(n->name, name, len);
	TSAN_RELEASE(&n->node);
	urcu_bp_read_lock();
	old = cds_lfht_add_replace(c->names, name_hash(parent, name, len), name_match, &k,
				   &n->node);
	if (old)
		urcu_bp_call_rcu(&caa_container_of(old, struct nnode, node)->rcu, nnode_free);
	else
		uatomic_inc(&c->nnames);
	read_unlock();
}

void pmfuse_icache_forget(struct pmfuse_icache *c, uint64_t ino)
{
	struct anode *a;

	urcu_bp_read_lock();
	a = attr_find(c, ino);
	if (a && !cds_lfht_del(c->attrs, &a->node)) {
		urcu_bp_call_rcu(&a->rcu, anode_free);
		uatomic_dec(&c->nattrs);
	}
	read_unlock();
}

void pmfuse_icache_stats(struct pmfuse_icache *c, struct pmfuse_icache_stats *st)
{
	st->attrs = uatomic_read(&c->nattrs);
	st->names = uatomic_read(&c->nnames);
	st->evicted = uatomic_read(&c->evicted);
}
