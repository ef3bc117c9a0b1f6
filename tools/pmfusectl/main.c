/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * pmfusectl: one program, many subcommands (`pmfusectl COMMAND [ARGS]`).
 *
 * Each command is a row of the table below: name, one-line summary, argument synopsis and a
 * run(argc, argv) that gets its own argv (argv[0] is the command name) and returns the exit
 * status. Adding a command means adding a file (or a function to one) with its cmd_NAME
 * (declared in pmfusectl.h) and a row; help, usage errors and --help per command come from the
 * table. The commands live one per file or group, as xfs_io (io/) and btrfs-progs (cmds/):
 * info.c, clone.c (clone, unshare), stat.c, du.c, dedupe.c; common.c and walk.c hold what they
 * share.
 *
 * Exit status: 0 success; 1 usage or operational error (cannot open, unsupported features);
 * 2 the pool is damaged (the message says what and where).
 *
 * info reads the pool read-only and is safe on a mounted pool; clone, unshare, stat, du and
 * dedupe work on files of a mounted pmfuse file system through the pmfuse ioctls
 * (include/pmfuse/ioctl.h) that the daemon answers.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "pmfuse/format.h"
#include "util/util.h"

#include "../cli.h"
#include "pmfusectl.h"

const char *prog = "pmfusectl";
bool verbose;

static const struct command *find_command(const char *name);
static void usage(FILE *f);

/* ---- help and dispatch ----------------------------------------------------------------------- */

static int cmd_help(const struct command *cmd, int argc, char **argv)
{
	if (argc > 2) {
		cmd_usage(cmd, stderr);
		return EXIT_USAGE;
	}
	if (argc == 2) {
		const struct command *c = find_command(argv[1]);
		if (!c) {
			cli_err("unknown command '%s'", argv[1]);
			return EXIT_USAGE;
		}
		cmd_usage(c, stdout);
		return 0;
	}
	usage(stdout);
	return 0;
}

static const struct command commands[] = {
	{ "info", "POOL", "Show a pool's superblocks, layout, log state and space usage",
	  cmd_info, NULL },
	{ "clone", "[--range SRC_OFF LEN DST_OFF] SRC DST",
	  "Clone SRC to DST sharing its blocks, like cp --reflink=always; never copies", cmd_clone,
	  "Without --range, DST (or DIRECTORY/NAME when DST is a directory) is created or\n"
	  "truncated and gets all of SRC. With --range, LEN bytes at SRC_OFF go to DST_OFF in\n"
	  "DST (created if missing, never truncated); LEN 0 means up to the end of SRC; SRC and\n"
	  "DST may be the same file when the ranges do not overlap. Offsets and LEN are\n"
	  "multiples of the block size, except that the range may end at the end of SRC. Sizes\n"
	  "take K, M, G, T suffixes (powers of 1024). Both files must be on the same pmfuse file\n"
	  "system. The clone shares the blocks or fails: it never copies data.\n"
	  "  --range SRC_OFF LEN DST_OFF   clone a range into DST instead of the whole file\n"
	  "  -h, --help                    show this help\n" },
	{ "unshare", "FILE [OFF LEN]", "Give FILE private copies of its shared blocks", cmd_unshare,
	  "Copies the shared blocks of FILE (from OFF for LEN bytes; LEN 0: to the end) to new\n"
	  "blocks of its own, as fallocate(FALLOC_FL_UNSHARE_RANGE) does on XFS; later writes\n"
	  "then need no copy-on-write. Holes stay holes. FILE must be writable by the caller.\n"
	  "Sizes take K, M, G, T suffixes.\n" },
	{ "stat", "[--raw] FILE...", "Show the extents of files, their sharing and totals",
	  cmd_stat,
	  "For each FILE: its extents (logical offset in the file and physical offset in the\n"
	  "pool, in bytes; length; the number of owners of its blocks; 'shared' when more than\n"
	  "one), then the number of extents and the mapped, shared and exclusive bytes.\n"
	  "  --raw        lengths and totals in bytes instead of KiB, MiB, ...\n"
	  "  -h, --help   show this help\n" },
	{ "du", "[-s] [--raw] PATH...",
	  "Show total, exclusive and shared space under paths, like btrfs filesystem du", cmd_du,
	  "Total: bytes mapped by the files; Exclusive: bytes in blocks that no other file (nor\n"
	  "another place in the same file) maps; Set shared: the shared blocks under a directory,\n"
	  "each counted once however often it is mapped there ('-' for a single file).\n"
	  "Directories are walked without leaving the file system of PATH; a file with several\n"
	  "names counts once. With more than one PATH, a last line sums them all, counting each\n"
	  "shared block once across all of them.\n"
	  "  -s, --summarize   one line per PATH\n"
	  "  --raw             sizes in bytes instead of KiB, MiB, ...\n"
	  "  -h, --help        show this help\n" },
	{ "dedupe", "[-q] [--range SRC_OFF LEN DST_OFF] SRC DST | --scan [-q] [-n] [-j N] PATH...",
	  "Make equal blocks share one block: DST's with SRC's, or all under PATHs", cmd_dedupe,
	  "With SRC DST, the daemon compares both files block by block at the same offsets in\n"
	  "the pool, reading nothing through the mount (with --range: LEN bytes at SRC_OFF of SRC\n"
	  "with DST_OFF of DST; LEN 0 means as far as both files go), and makes each run of\n"
	  "equal blocks of DST share SRC's blocks. The last partial block counts only when both\n"
	  "files end there. Offsets are multiples of the block size; sizes take K, M, G, T\n"
	  "suffixes.\n"
	  "With --scan, the daemon hashes every mapped block of the regular files under the PATHs\n"
	  "(XXH3, in the pool: no data crosses FUSE; directories are walked without leaving their\n"
	  "file system; a file with several names counts once), zero blocks are skipped, and\n"
	  "each group of blocks with the same contents is made to share the block with the most\n"
	  "references, consecutive blocks in one call. Memory: 24 bytes per non-zero block\n"
	  "(6 MiB per GiB of data with 4 KiB blocks).\n"
	  "Blocks that already share are left alone, so running again does nothing new. The\n"
	  "daemon compares the bytes and shares only what is equal, at most 16 MiB per hold of\n"
	  "its lock: contents, sizes and times never change. DST (the files under PATHs) must be\n"
	  "writable by the caller or owned by it, or the caller have CAP_SYS_ADMIN.\n"
	  "Prints what was compared, duplicate, already shared, the space to be freed, deduped,\n"
	  "and found different by the daemon (changed since hashed); progress on stderr when it\n"
	  "is a terminal.\n"
	  "  --range SRC_OFF LEN DST_OFF   compare and dedupe this range only\n"
	  "  --scan                        find duplicate blocks across all files under PATHs\n"
	  "  -n, --dry-run                 (--scan) report what would be deduped and freed, change\n"
	  "                                nothing\n"
	  "  -j, --jobs N                  (--scan) hash in N threads (1-16; default: one per\n"
	  "                                CPU, at most 4)\n"
	  "  -q, --quiet                   no progress display\n"
	  "  -h, --help                    show this help\n" },
	{ "help", "[COMMAND]", "Show the commands, or one command's usage", cmd_help, NULL },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(commands); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: %s [-v] COMMAND [ARGS]\n"
		"       %s --help | --version\n"
		"Inspect and manage pmfuse pools, and the shared blocks of files on a pmfuse\n"
		"mount.\n\nCommands:\n", prog, prog);
	for (size_t i = 0; i < PMFUSE_ARRAY_SIZE(commands); i++)
		fprintf(f, "  %s %s\n        %s\n", commands[i].name, commands[i].args,
			commands[i].summary);
	fprintf(f, "\nOptions:\n"
		"  -v, --verbose   also print the library's diagnostics (file and line of a check)\n"
		"  -h, --help      show this help and exit\n"
		"  -V, --version   show the version and exit\n"
		"\n'%s COMMAND --help' shows a command's usage.\n"
		"Exit status: 0 success, 1 usage or operational error, 2 damaged pool.\n", prog);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "verbose", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	cli_prog = prog;
	cli_before_err = end_progress_line;
	/* Global options end at the command name ('+': no permutation). */
	while ((c = getopt_long(argc, argv, "+hVv", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("%s (pmfuse) %s, on-media format version %u\n", prog, PMFUSE_VERSION,
			       PMFUSE_FORMAT_VERSION);
			return 0;
		case 'v':
			verbose = true;
			break;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		cli_err("no command given");
		usage(stderr);
		return EXIT_USAGE;
	}
	const struct command *cmd = find_command(argv[optind]);
	if (!cmd) {
		cli_err("unknown command '%s'", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	pmfuse_log_set_target(verbose ? PMFUSE_LOG_STDERR : PMFUSE_LOG_QUIET);
	return cmd->run(cmd, argc - optind, argv + optind);
}
