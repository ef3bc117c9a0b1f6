/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * mkfs.pmfuse: format a pool (a /dev/dax device, an existing file, or a new file of SIZE).
 *
 * Order of work, so that a refused or failed run changes nothing it should not:
 *   1. parse and check every argument (block size, label, size against the minimum);
 *   2. open the pool with its exclusive lock (a mounted pool is refused as busy);
 *   3. unless -f, look for a signature (pmfuse, ext2/3/4, XFS, btrfs, swap) and refuse, naming
 *      what is there; nothing was written so far;
 *   4. create or grow the file if SIZE asks for it, then pmfuse_mkfs (which writes superblocks
 *      last), then open the new volume read-only to check it and print its geometry.
 * A file this run created is removed again when a later step fails.
 *
 * Exit status (as mkfs.ext4): 0 success, 1 any error, usage errors included.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "meta/alloc.h"
#include "meta/volume.h"
#include "pool/pool.h"
#include "util/util.h"

#include "cli.h"

static const char *prog = "mkfs.pmfuse";

struct args {
	uint64_t size;          /* -s, 0 if not given */
	uint32_t block_size;
	const char *label;
	unsigned lanes;         /* -l, 0: one per CPU */
	const char *path;
	bool force, quiet, verbose;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [-s SIZE] [-b BLOCKSIZE] [-L LABEL] [-l LANES] [-f] [-q] [-v] POOL\n"
		"Format POOL (a /dev/dax device or a file) as a pmfuse filesystem.\n"
		"\n"
		"  -s, --size=SIZE         create POOL as a file of SIZE bytes, or grow the file to\n"
		"                          SIZE (suffixes K, M, G, T: powers of 1024)\n"
		"  -b, --block-size=BYTES  block size, a power of two from 4096 to 65536 (4096)\n"
		"  -L, --label=LABEL       filesystem label, at most %d bytes\n"
		"  -l, --log-lanes=N       transactions that may run at once, 1 to %u (default:\n"
		"                          one per CPU while each lane keeps 32 log blocks)\n"
		"  -f, --force             overwrite an existing filesystem or pmfuse pool\n"
		"  -q, --quiet             print nothing but errors\n"
		"  -v, --verbose           also print the library's diagnostics\n"
		"  -h, --help              show this help and exit\n"
		"  -V, --version           show the version and exit\n",
		prog, PMFUSE_LABEL_MAX, PMFUSE_LOG_LANES_MAX);
}


/* "1.5 GiB": for people; exact byte counts are printed next to it where they matter. */
/* ---- signatures --------------------------------------------------------------------------- */

static bool has(const uint8_t *base, size_t size, size_t off, const void *sig, size_t len)
{
	return off + len <= size && !memcmp(base + off, sig, len);
}

/*
 * What POOL holds now, described for the refusal message; false when nothing known. Looks at
 * the mapping, so it works on dax devices too (they cannot be read(2)).
 */
static bool find_signature(struct pmfuse_pool *pool, char *what, size_t len)
{
	const uint8_t *base = pmfuse_pool_base(pool);
	size_t size = pmfuse_pool_size(pool);
	static const uint8_t ext_magic[2] = { 0x53, 0xef };
	struct pmfuse_sb_probe probe;
	uint64_t magic = PMFUSE_SB_MAGIC;

	if (!pmfuse_sb_probe(pool, &probe)) {
		char u[37], label[PMFUSE_LABEL_MAX + 1];
		pmfuse_uuid_str(probe.sb.uuid, u);
		memcpy(label, probe.sb.label, PMFUSE_LABEL_MAX);
		label[PMFUSE_LABEL_MAX] = '\0';
		snprintf(what, len, "a pmfuse pool (uuid %s%s%s%s)", u, label[0] ? ", label \"" : "",
			 label, label[0] ? "\"" : "");
		return true;
	}
	if (has(base, size, 0, &magic, 8)) {
		snprintf(what, len, "a damaged pmfuse pool (superblock in block 0)");
		return true;
	}
	for (uint64_t bs = PMFUSE_BLOCK_SIZE_MIN; bs <= PMFUSE_BLOCK_SIZE_MAX; bs *= 2) {
		if (size / bs >= 2 && has(base, size, (size / bs - 1) * bs, &magic, 8)) {
			snprintf(what, len, "a damaged pmfuse pool (superblock in its last %llu-byte "
				 "block)", (unsigned long long)bs);
			return true;
		}
	}
	if (has(base, size, 1080, ext_magic, 2)) {
		snprintf(what, len, "an ext2/ext3/ext4 filesystem");
		return true;
	}
	if (has(base, size, 0, "XFSB", 4)) {
		snprintf(what, len, "an XFS filesystem");
		return true;
	}
	if (has(base, size, 65600, "_BHRfS_M", 8)) {
		snprintf(what, len, "a btrfs filesystem");
		return true;
	}
	if (has(base, size, 4086, "SWAPSPACE2", 10) || has(base, size, 4086, "SWAP-SPACE", 10)) {
		snprintf(what, len, "a swap area");
		return true;
	}
	return false;
}

/* ---- progress ------------------------------------------------------------------------------ */

struct progress {
	int last;   /* last percentage shown, -1 for none */
};

static void show_progress(void *arg, uint64_t done, uint64_t total)
{
	struct progress *p = arg;
	int pct = total ? (int)(done * 100 / total) : 100;

	if (pct == p->last)
		return;
	p->last = pct;
	fprintf(stderr, "\rformatting: %3d%%", pct);
	if (pct == 100)
		fputs("\r\033[K", stderr);
	fflush(stderr);
}

/* ---- the geometry report -------------------------------------------------------------------- */

static int report(struct pmfuse_pool *pool, const char *path)
{
	struct pmfuse_volume *vol;
	char msg[512], h1[32], h2[32], u[37], label[PMFUSE_LABEL_MAX + 1];
	int rc = pmfuse_volume_open(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg));

	if (rc) {
		cli_err("%s: the new filesystem does not open: %s (%s)", path, msg, strerror(-rc));
		return rc;
	}
	const struct pmfuse_sb *sb = &vol->sb;
	uint32_t bs = vol->block_size;
	uint64_t count = pmfuse_le64(sb->block_count), data = pmfuse_le64(sb->data_start);
	uint64_t ndata = count - data - 1;
	const char *kind = pmfuse_pool_source_kind(pool) == PMFUSE_SOURCE_DEVDAX ? "devdax" : "file";

	pmfuse_uuid_str(sb->uuid, u);
	memcpy(label, sb->label, PMFUSE_LABEL_MAX);
	label[PMFUSE_LABEL_MAX] = '\0';
	printf("pool     = %-24s size=%zu (%s), %s, store granularity=%s\n", path,
	       pmfuse_pool_size(pool), pmfuse_human_size(pmfuse_pool_size(pool), h1, sizeof(h1)), kind,
	       pmfuse_granularity_name(pmfuse_pool_granularity(pool)));
	printf("super    = bsize=%-18u blocks=%llu (%s), primary=0, secondary=%llu\n", bs,
	       (unsigned long long)count, pmfuse_human_size(count * bs, h2, sizeof(h2)),
	       (unsigned long long)pmfuse_le64(sb->sb2_block));
	printf("state    = block=%llu\n", (unsigned long long)pmfuse_le64(sb->state_block));
	printf("log      = start=%-18llu blocks=%llu lanes=%u\n",
	       (unsigned long long)pmfuse_le64(sb->log_start),
	       (unsigned long long)pmfuse_le64(sb->log_blocks),
	       pmfuse_le32(sb->log_lanes) ? pmfuse_le32(sb->log_lanes) : 1u);
	printf("bitmap   = start=%-18llu blocks=%llu\n",
	       (unsigned long long)pmfuse_le64(sb->bitmap_start),
	       (unsigned long long)pmfuse_le64(sb->bitmap_blocks));
	printf("data     = start=%-18llu blocks=%llu (%s)\n", (unsigned long long)data,
	       (unsigned long long)ndata, pmfuse_human_size(ndata * bs, h1, sizeof(h1)));
	printf("uuid     = %s\n", u);
	printf("label    = \"%s\"\n", label);
	printf("version  = %u\n", pmfuse_le32(sb->version));
	pmfuse_volume_close(vol);
	return 0;
}

/* ---- main ---------------------------------------------------------------------------------- */

static int parse(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "block-size", required_argument, NULL, 'b' },
		{ "label", required_argument, NULL, 'L' },
		{ "log-lanes", required_argument, NULL, 'l' },
		{ "force", no_argument, NULL, 'f' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	int c;

	memset(a, 0, sizeof(*a));
	a->block_size = PMFUSE_BLOCK_SIZE_DEFAULT;
	while ((c = getopt_long(argc, argv, "s:b:L:l:fqvhV", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (pmfuse_parse_size(optarg, &v) || v == 0) {
				cli_err("invalid size '%s' (examples: 1073741824, 512M, 4G)", optarg);
				return 1;
			}
			a->size = v;
			break;
		case 'b':
			if (pmfuse_parse_size(optarg, &v) || v < PMFUSE_BLOCK_SIZE_MIN ||
			    v > PMFUSE_BLOCK_SIZE_MAX || (v & (v - 1))) {
				cli_err("invalid block size '%s': a power of two from %u to %u", optarg,
				    PMFUSE_BLOCK_SIZE_MIN, PMFUSE_BLOCK_SIZE_MAX);
				return 1;
			}
			a->block_size = (uint32_t)v;
			break;
		case 'L':
			if (strlen(optarg) > PMFUSE_LABEL_MAX) {
				cli_err("label is %zu bytes long; at most %d", strlen(optarg),
				    PMFUSE_LABEL_MAX);
				return 1;
			}
			if (!pmfuse_label_valid(optarg)) {
				cli_err("label must be UTF-8 text without control characters");
				return 1;
			}
			a->label = optarg;
			break;
		case 'l': {
			char *end;
			unsigned long n = strtoul(optarg, &end, 10);
			if (!*optarg || *end || n < 1 || n > PMFUSE_LOG_LANES_MAX) {
				cli_err("invalid log lane count '%s': 1 to %u", optarg,
				    PMFUSE_LOG_LANES_MAX);
				return 1;
			}
			a->lanes = (unsigned)n;
			break;
		}
		case 'f': a->force = true; break;
		case 'q': a->quiet = true; break;
		case 'v': a->verbose = true; break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			printf("%s (pmfuse) %s, on-media format version %u\n", prog, PMFUSE_VERSION,
			       PMFUSE_FORMAT_VERSION);
			exit(0);
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind != argc - 1) {
		cli_err(optind >= argc ? "no POOL given" : "too many arguments");
		usage(stderr);
		return 1;
	}
	a->path = argv[optind];
	return 0;
}

static int too_small(const struct args *a, uint64_t size)
{
	uint64_t min = pmfuse_mkfs_min_size(a->block_size);
	char h1[32], h2[32];

	if (size >= min)
		return 0;
	cli_err("%s: %llu bytes (%s) is too small: with %u-byte blocks a pool needs at least %llu "
	    "bytes (%s)", a->path, (unsigned long long)size, pmfuse_human_size(size, h1, sizeof(h1)),
	    a->block_size, (unsigned long long)min, pmfuse_human_size(min, h2, sizeof(h2)));
	return 1;
}

static int open_pool(const struct args *a, struct pmfuse_pool **pool)
{
	int rc = pmfuse_pool_open(a->path, 0, pool);
	char who[128];

	if (rc == -EBUSY) {
		pmfuse_pool_lock_holder(a->path, who, sizeof(who));
		cli_err("%s: in use by %s (mounted?); not formatting it", a->path, who);
	} else if (rc == -EINVAL) {
		cli_err("%s: not a usable pool (empty, or neither a regular file nor a dax device)",
		    a->path);
	} else if (rc) {
		cli_err("%s: cannot open: %s", a->path, strerror(-rc));
	}
	return rc;
}

int main(int argc, char **argv)
{
	struct pmfuse_pool *pool = NULL;
	struct progress prog_state = { .last = -1 };
	struct args a;
	struct stat st;
	bool created = false, grow = false;
	char what[160];
	int rc;

	cli_prog = prog;
	if (parse(argc, argv, &a))
		return 1;
	pmfuse_log_set_target(a.verbose ? PMFUSE_LOG_STDERR : PMFUSE_LOG_QUIET);

	/* 1. What POOL is, and whether SIZE fits it. */
	if (stat(a.path, &st)) {
		if (errno != ENOENT) {
			cli_err("%s: %s", a.path, strerror(errno));
			return 1;
		}
		if (!a.size) {
			cli_err("%s does not exist; give -s SIZE to create it", a.path);
			return 1;
		}
		if (too_small(&a, a.size))
			return 1;
		rc = pmfuse_pool_create_file(a.path, a.size);
		if (rc) {
			cli_err("%s: cannot create a file of %llu bytes: %s", a.path,
			    (unsigned long long)a.size, strerror(-rc));
			return 1;
		}
		created = true;
	} else if (S_ISREG(st.st_mode)) {
		if (a.size && a.size < (uint64_t)st.st_size) {
			cli_err("%s is %lld bytes, larger than -s %llu; pmfuse uses the whole file "
			    "(truncate it first, or leave out -s)", a.path, (long long)st.st_size,
			    (unsigned long long)a.size);
			return 1;
		}
		grow = a.size > (uint64_t)st.st_size;
		if (too_small(&a, grow ? a.size : (uint64_t)st.st_size))
			return 1;
	} else if (S_ISCHR(st.st_mode)) {
		if (a.size) {
			cli_err("%s is a device: -s cannot resize it", a.path);
			return 1;
		}
	} else {
		cli_err("%s is neither a regular file nor a dax character device", a.path);
		return 1;
	}

	/* 2. Open with the lock; 3. refuse to overwrite what is there. */
	if (open_pool(&a, &pool))
		goto fail;
	if (!created && find_signature(pool, what, sizeof(what))) {
		if (!a.force) {
			cli_err("%s contains %s; use -f to overwrite it", a.path, what);
			goto fail;
		}
		if (!a.quiet)
			printf("%s: overwriting %s\n", a.path, what);
	}
	if (grow) {
		pmfuse_pool_close(pool);
		pool = NULL;
		rc = pmfuse_pool_create_file(a.path, a.size);
		if (rc) {
			cli_err("%s: cannot grow to %llu bytes: %s", a.path, (unsigned long long)a.size,
			    strerror(-rc));
			goto fail;
		}
		if (open_pool(&a, &pool))
			goto fail;
	}
	if (too_small(&a, pmfuse_pool_size(pool)))
		goto fail;

	/* 4. Format, then check by opening and report. */
	struct pmfuse_mkfs_opts o = { .block_size = a.block_size, .label = a.label,
				      .log_lanes = a.lanes };
	if (!a.quiet && isatty(STDERR_FILENO)) {
		o.progress = show_progress;
		o.progress_arg = &prog_state;
	}
	rc = pmfuse_mkfs(pool, &o);
	if (rc) {
		cli_err("%s: formatting failed: %s", a.path, strerror(-rc));
		goto fail;
	}
	if (a.quiet) {
		struct pmfuse_volume *vol;
		char msg[512];
		rc = pmfuse_volume_open(pool, PMFUSE_VOL_RDONLY, &vol, msg, sizeof(msg));
		if (rc) {
			cli_err("%s: the new filesystem does not open: %s", a.path, msg);
			goto fail;
		}
		pmfuse_volume_close(vol);
	} else if (report(pool, a.path)) {
		goto fail;
	}
	pmfuse_pool_close(pool);
	return 0;

fail:
	pmfuse_pool_close(pool);
	if (created)
		unlink(a.path);
	return 1;
}
