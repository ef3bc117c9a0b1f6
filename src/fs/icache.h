/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A DRAM cache of what lookup and getattr answer, read without locks under RCU (liburcu's
 * lock-free hash table). Two tables:
 *   attributes  ino -> struct pmfuse_attr, and a sequence number unique to this entry;
 *   names       (parent, name) -> ino, and the sequence number of the parent's attribute entry
 *               it was filled under.
 * A name entry is only believed while the parent's attribute entry it names is still in the
 * table: every change to a directory's entries changes the directory's record (mtime, ctime)
 * and so removes its attribute entry, which retires all the directory's name entries at once
 * without finding them. Nothing negative is cached.
 *
 * Rules for the caller (fs/): entries are put only by a thread that holds a lock excluding
 * every writer of what it puts (fs->lock, shared or exclusive; or, after a create, the inode
 * locks of everything it puts: dir.c, entry_fill_put), from data it read under such a lock;
 * an entry is forgotten by the writer before it changes the record and before it drops any
 * reference (so no reader finds a name after its inode may have been freed). Readers copy out
 * what they need inside a read section; nodes are freed with call_rcu.
 *
 * Bounded: each table holds at most max entries (plus the puts racing with its emptying); a put
 * that finds its table full empties it (icache.c says why; an evicted entry is only a miss).
 */
#ifndef PMFUSE_ICACHE_H
#define PMFUSE_ICACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs/fs.h"

struct pmfuse_icache;

/* max: entries per table (at least 16). NULL when out of memory. */
struct pmfuse_icache *pmfuse_icache_new(size_t max);
/* Waits for readers and pending frees; no other thread may use c any more. */
void pmfuse_icache_free(struct pmfuse_icache *c);

/* A read section: lookups and the handles they return are valid inside it only. Nesting is
 * allowed; a read section never blocks. */
void pmfuse_icache_read_begin(void);
void pmfuse_icache_read_end(void);

/* Inside a read section: copies ino's attributes; false on a miss. *seq (may be NULL) gets the
 * entry's sequence number. */
bool pmfuse_icache_attr(struct pmfuse_icache *c, uint64_t ino, struct pmfuse_attr *out,
			uint64_t *seq);
/* Inside a read section: the inode name names in parent, when the entry is there and still
 * valid (the parent's attribute entry it was filled under is in the table); 0 on a miss.
 * *handle identifies the name entry for pmfuse_icache_live. */
uint64_t pmfuse_icache_name(struct pmfuse_icache *c, uint64_t parent, const char *name,
			    size_t len, const void **handle);
/* Inside the same read section: whether the entries behind handle (a name and its parent's
 * attributes) are still in the tables. */
bool pmfuse_icache_live(struct pmfuse_icache *c, const void *handle);

/* Puts (replacing what is there). put_attr returns the new entry's sequence number (0: not
 * cached, out of memory); put_name needs the parent's sequence number from put_attr or
 * pmfuse_icache_attr. */
uint64_t pmfuse_icache_put_attr(struct pmfuse_icache *c, const struct pmfuse_attr *a);
void pmfuse_icache_put_name(struct pmfuse_icache *c, uint64_t parent, uint64_t parent_seq,
			    const char *name, size_t len, uint64_t ino);
/* Forgets ino's attributes (and so every name entry under it, if a directory). */
void pmfuse_icache_forget(struct pmfuse_icache *c, uint64_t ino);
/* Forgets everything. */
void pmfuse_icache_clear(struct pmfuse_icache *c);

struct pmfuse_icache_stats {
	uint64_t attrs, names;          /* entries now */
	uint64_t evicted;               /* entries evicted for room since creation */
};
void pmfuse_icache_stats(struct pmfuse_icache *c, struct pmfuse_icache_stats *st);

#endif /* PMFUSE_ICACHE_H */
