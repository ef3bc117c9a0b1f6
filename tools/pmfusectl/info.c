/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl info POOL: superblocks, layout, log state and space usage.
 *
 * info reads the pool through a read-only mapping and never writes, so it is safe on a pool a
 * daemon has mounted (a read-only open takes no lock). It then says the pool is in use, and
 * treats metadata that fails its checks as possibly in flux: it retries, and reports a
 * transaction in flight as such rather than as damage. Exit status 2 when the pool is damaged.
 */
#include <stdarg.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta/alloc.h"
#include "meta/volume.h"
#include "pool/pool.h"

#include "util/util.h"

#include "../cli.h"
#include "pmfusectl.h"

/* ---- formatting helpers --------------------------------------------------------------------- */

static const char *when(uint64_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!t)
		return "never";
	if (!localtime_r(&tt, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S %z", &tm))
		snprintf(buf, len, "%llu", (unsigned long long)t);
	return buf;
}

/* Opens a pool read-only for inspection; prints why not. */
static int open_ro(const char *path, struct pmfuse_pool **pool)
{
	int rc = pmfuse_pool_open(path, PMFUSE_POOL_RDONLY, pool);

	if (rc == -EINVAL)
		cli_err("%s: not a pool (empty, or neither a regular file nor a dax device)", path);
	else if (rc)
		cli_err("%s: cannot open: %s", path, strerror(-rc));
	return rc;
}

/* ---- info ------------------------------------------------------------------------------------ */


static void print_copy(const struct pmfuse_sb_probe *p, int c)
{
	const char *name = c ? "secondary sb" : "primary sb";
	unsigned long long blk = p->blk[c];

	if (c && !blk && !p->valid[c])
		row(name, "not found: %s", p->why[c]);
	else if (!p->valid[c])
		row(name, "block %llu: DAMAGED: %s", blk, p->why[c]);
	else if (p->copy >= 0 && p->seq[c] < p->seq[p->copy])
		row(name, "block %llu: valid but older (seq %llu, current %llu)", blk,
		    (unsigned long long)p->seq[c], (unsigned long long)p->seq[p->copy]);
	else
		row(name, "block %llu: valid, seq %llu%s", blk, (unsigned long long)p->seq[c],
		    p->copy == c ? " (in use)" : "");
}

static void print_sb(const struct pmfuse_sb *sb)
{
	uint32_t bs = pmfuse_le32(sb->block_size);
	uint64_t count = pmfuse_le64(sb->block_count);
	char u[37], label[PMFUSE_LABEL_MAX + 1], h[32], t[64];
	typedef unsigned long long ull;

	pmfuse_uuid_str(sb->uuid, u);
	memcpy(label, sb->label, PMFUSE_LABEL_MAX);
	label[PMFUSE_LABEL_MAX] = '\0';
	row("uuid", "%s", u);
	row("label", "\"%s\"", label);
	row("format version", "%u", pmfuse_le32(sb->version));
	row("block size", "%u", bs);
	row("blocks", "%llu (%s)", (ull)count, pmfuse_human_size(count * bs, h, sizeof(h)));
	row("state block", "%llu", (ull)pmfuse_le64(sb->state_block));
	row("log", "blocks %llu..%llu (%llu) in %u lane%s", (ull)pmfuse_le64(sb->log_start),
	    (ull)(pmfuse_le64(sb->log_start) + pmfuse_le64(sb->log_blocks) - 1),
	    (ull)pmfuse_le64(sb->log_blocks),
	    pmfuse_le32(sb->log_lanes) ? pmfuse_le32(sb->log_lanes) : 1u,
	    pmfuse_le32(sb->log_lanes) > 1 ? "s" : "");
	row("bitmap", "blocks %llu..%llu (%llu)", (ull)pmfuse_le64(sb->bitmap_start),
	    (ull)(pmfuse_le64(sb->bitmap_start) + pmfuse_le64(sb->bitmap_blocks) - 1),
	    (ull)pmfuse_le64(sb->bitmap_blocks));
	row("data", "blocks %llu..%llu (%llu)", (ull)pmfuse_le64(sb->data_start),
	    (ull)(count - 2), (ull)(count - 1 - pmfuse_le64(sb->data_start)));
	uint64_t incompat = pmfuse_le64(sb->incompat);
	char names[128] = "";
	static const struct { uint64_t bit; const char *name; } known[] = {
		{ PMFUSE_FEATURE_INCOMPAT_UNWRITTEN, "unwritten" },
		{ PMFUSE_FEATURE_INCOMPAT_INLINE_MAP, "inline_map" },
		{ PMFUSE_FEATURE_INCOMPAT_EDGE_FILL, "edge_fill" },
		{ PMFUSE_FEATURE_INCOMPAT_LOG_LANES, "log_lanes" },
		{ PMFUSE_FEATURE_INCOMPAT_SHORT_DIRS, "short_dirs" },
		{ PMFUSE_FEATURE_INCOMPAT_LOG_ZERO, "log_zero: mounted, or crashed" },
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (incompat & known[i].bit)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
				 names[0] ? ", " : " (", known[i].name);
	row("features", "compat 0x%016llx ro_compat 0x%016llx incompat 0x%016llx%s%s",
	    (ull)pmfuse_le64(sb->compat), (ull)pmfuse_le64(sb->ro_compat), (ull)incompat, names,
	    names[0] ? ")" : "");
	row("clean", "%s", pmfuse_le32(sb->clean) == PMFUSE_SB_CLEAN ? "yes" :
	    "no (mounted now, or not cleanly unmounted)");
	row("mount count", "%llu", (ull)pmfuse_le64(sb->mount_count));
	row("created", "%s", when(pmfuse_le64(sb->mkfs_time), t, sizeof(t)));
	row("last mounted", "%s", when(pmfuse_le64(sb->mount_time), t, sizeof(t)));
	row("sb sequence", "%llu", (ull)pmfuse_le64(sb->seq));
}

int cmd_info(const struct command *cmd, int argc, char **argv)
{
	struct pmfuse_pool *pool = NULL;
	struct pmfuse_volume *vol = NULL;
	struct pmfuse_sb_probe probe;
	char msg[1024], holder[128], h[32], h2[32];
	bool in_use;
	int rc, status = 0;

	if ((rc = common_opts(cmd, argc, argv, 1)) >= 0)
		return rc;
	const char *path = argv[optind];
	if (open_ro(path, &pool))
		return EXIT_USAGE;
	in_use = pmfuse_pool_lock_holder(path, holder, sizeof(holder));

	row("pool", "%s", path);
	row("source", "%s", pmfuse_pool_source_kind(pool) == PMFUSE_SOURCE_DEVDAX ? "dax device" :
	    "file");
	row("pool size", "%zu (%s)", pmfuse_pool_size(pool),
	    pmfuse_human_size(pmfuse_pool_size(pool), h, sizeof(h)));
	row("store granularity", "%s", pmfuse_granularity_name(pmfuse_pool_granularity(pool)));
	row("in use", "%s%s", in_use ? "yes, locked by " : "no", in_use ? holder : "");

	rc = pmfuse_sb_probe(pool, &probe);
	print_copy(&probe, 0);
	print_copy(&probe, 1);
	if (rc) {
		bool seen = strncmp(probe.why[0], "bad magic", 9) || probe.blk[1];
		cli_err("%s: damaged: no valid superblock: %s", path, seen ?
		    "both copies fail their checks" :
		    "neither copy found (not a pmfuse pool, or both superblocks overwritten)");
		pmfuse_pool_close(pool);
		return EXIT_DAMAGED;
	}
	if (!probe.valid[0] || !probe.valid[1])
		status = EXIT_DAMAGED;
	print_sb(&probe.sb);

	/* A daemon may be changing the metadata under us: give it a few chances. */
	for (int tries = 0;; tries++) {
		rc = pmfuse_volume_open(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg));
		if (rc != -EUCLEAN || !in_use || tries == 4)
			break;
		usleep(50 * 1000);
	}
	if (rc == -EOPNOTSUPP || rc == -EROFS) {
		cli_err("%s: %s", path, msg);
		pmfuse_pool_close(pool);
		return EXIT_USAGE;
	}
	if (rc) {
		cli_err("%s: %s: %s%s", path, rc == -EUCLEAN ? "damaged" : "cannot open the volume", msg,
		    in_use ? " (the pool is in use; this may be a change in flight)" : "");
		pmfuse_pool_close(pool);
		return rc == -EUCLEAN ? EXIT_DAMAGED : EXIT_USAGE;
	}

	row("log state", "%s", vol->log_pending ? "holds an unfinished transaction (a writable open "
	    "rolls it back)" : "empty");
	row("root inode", "%llu", (unsigned long long)pmfuse_le64(vol->state->root_ino));
	row("next inode", "%llu", (unsigned long long)pmfuse_le64(vol->state->next_ino));

	struct pmfuse_alloc_geom g = {
		.block_size = vol->block_size,
		.block_count = pmfuse_le64(vol->sb.block_count),
		.bitmap_start = pmfuse_le64(vol->sb.bitmap_start),
		.bitmap_blocks = pmfuse_le64(vol->sb.bitmap_blocks),
		.data_start = pmfuse_le64(vol->sb.data_start),
		.sb2_block = pmfuse_le64(vol->sb.sb2_block),
	};
	uint64_t free_blocks = 0;
	rc = pmfuse_alloc_count_free(pool, &g, &free_blocks);
	if (rc && (vol->log_pending || in_use)) {
		row("free", "unknown: the bitmap is being changed (%s)",
		    vol->log_pending ? "unfinished transaction" : "the pool is in use");
	} else if (rc) {
		cli_err("%s: damaged: free-space bitmap (blocks %llu..%llu) fails its checks%s", path,
		    (unsigned long long)g.bitmap_start,
		    (unsigned long long)(g.bitmap_start + g.bitmap_blocks - 1),
		    verbose ? "" : " (-v names the block)");
		status = EXIT_DAMAGED;
	} else {
		uint64_t used = g.block_count - free_blocks, bs = g.block_size;
		row("free", "%llu blocks, %llu bytes (%s)", (unsigned long long)free_blocks,
		    (unsigned long long)(free_blocks * bs), pmfuse_human_size(free_blocks * bs, h, sizeof(h)));
		row("used", "%llu blocks, %llu bytes (%s), %.1f%% of %s", (unsigned long long)used,
		    (unsigned long long)(used * bs), pmfuse_human_size(used * bs, h, sizeof(h)),
		    100.0 * (double)used / (double)g.block_count,
		    pmfuse_human_size(g.block_count * bs, h2, sizeof(h2)));
	}
	if (msg[0])
		printf("note: %s\n", msg);
	if (status == EXIT_DAMAGED && !rc)
		cli_err("%s: damaged: %s", path, msg);
	pmfuse_volume_close(vol);
	pmfuse_pool_close(pool);
	return status;
}
