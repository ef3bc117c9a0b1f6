/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the pmfusectl commands share: the command table's row, exit codes, the progress line,
 * option parsing, opening files on a pmfuse mount, and walking trees. main.c holds the table
 * and the dispatcher; each other file one command or a group (info.c, clone.c: clone and
 * unshare, stat.c, du.c, dedupe.c), common.c and walk.c the helpers declared here.
 */
#ifndef PMFUSE_TOOLS_PMFUSECTL_H
#define PMFUSE_TOOLS_PMFUSECTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "pmfuse/ioctl.h"

#define EXIT_USAGE 1
#define EXIT_DAMAGED 2

extern const char *prog;             /* "pmfusectl" */
extern bool verbose;                 /* -v: the library's diagnostics on stderr */

struct command {
	const char *name;
	const char *args;      /* synopsis after the command name */
	const char *summary;
	int (*run)(const struct command *cmd, int argc, char **argv);
	const char *details;   /* more for --help, or NULL */
};

int cmd_info(const struct command *cmd, int argc, char **argv);
int cmd_clone(const struct command *cmd, int argc, char **argv);
int cmd_unshare(const struct command *cmd, int argc, char **argv);
int cmd_stat(const struct command *cmd, int argc, char **argv);
int cmd_du(const struct command *cmd, int argc, char **argv);
int cmd_dedupe(const struct command *cmd, int argc, char **argv);

/*
 * The progress line of a long command on stderr ("\rscanning: 1.2 GiB of 4.0 GiB (30%)"), at
 * most 4 times a second, only when stderr is a terminal and the command wants it (on). A
 * message ends the line first (cli_err() does); the next update starts a new one.
 */
struct progress {
	bool on;
	const char *what;            /* the phase, NULL between phases */
	uint64_t done, total;
	int64_t next_ns;             /* when the line may change again */
	int width;                   /* of the line on the terminal (0: none) */
};

extern struct progress progress;

void progress_begin(struct progress *p, const char *what, uint64_t total);
void progress_add(struct progress *p, uint64_t n);
/* The phase's last figures, and the end of its line. */
void progress_end(struct progress *p);
/* Before an error message: the message starts on a line of its own. */
void end_progress_line(void);

void cmd_usage(const struct command *cmd, FILE *f);
/* -h/--help and the count of operands: -1 to go on, else the exit status. */
int common_opts(const struct command *cmd, int argc, char **argv, int operands);
/* One "name:   value" line of a report. */
void row(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- files on a pmfuse mount ---- */

extern bool raw;                     /* --raw: sizes in bytes */

const char *size_str(uint64_t bytes, char *buf, size_t len);

/*
 * Options of the file commands: -h/--help, --raw if the command prints sizes, and what the
 * command adds (handled by opt(), which returns -1 to go on, else the exit status). Checks the
 * operand count (min..max). Returns -1 to go on, else the exit status.
 */
typedef int (*opt_fn)(const struct command *cmd, int c, int argc, char **argv);
int file_opts(const struct command *cmd, int argc, char **argv, const char *shortopts,
	      const struct option *extra, opt_fn opt, int min, int max);

/* The error of a pmfuse ioctl on path, with the meaning of ENOTTY spelled out. */
void ioc_err(const char *path, const char *what, int e);

/* Calls fn for each mapped extent of the file open on fd, in file order. 0 or -errno. */
typedef int (*extent_fn)(void *arg, const struct pmfuse_ioc_extent *e);
int walk_extents(int fd, extent_fn fn, void *arg, uint32_t *block_size);

/* 0 if fd is a file on a pmfuse mount (its block size in *bs), else -errno (-ENOTTY: not). */
int probe(int fd, uint32_t *bs);

/*
 * Opens path with flags (or, if that is refused, with flags2 when not -1) when it is a regular
 * file on a pmfuse mount: its stat in *st, the block size in *bs. Says why not and returns -1.
 */
int open_file(const char *path, int flags, int flags2, struct stat *st, uint32_t *bs);

/* --range SRC_OFF LEN DST_OFF (clone, dedupe): the three sizes after the option into r. */
int range_opt(const struct command *cmd, int argc, char **argv, uint64_t r[3]);

/* ---- walking trees (du, dedupe --scan): walk.c ---- */

/* Files visited already: (dev, ino) in a hash set. */
struct seen {
	struct { dev_t dev; ino_t ino; } *slot;
	size_t n, cap;
};

/*
 * Each PATH and everything under it, without following symbolic links (a PATH itself is
 * followed) or leaving the PATH's file system. Only regular files and directories are visited,
 * open read-only: a file through file(), a directory through dir(), which walks its contents
 * with walk_dir() if it wants them. Both own the descriptor (walk_dir() closes it); arg is what
 * the caller of walk_path() or walk_dir() passed (du: the sums of the directory above). A file
 * with several names is visited once; with once set, so is a file that overlapping PATHs reach
 * twice.
 */
struct walk {
	int status;                  /* EXIT_USAGE once an error was reported */
	bool once;
	struct seen seen;
	void (*file)(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		     void *arg);
	void (*dir)(struct walk *w, int fd, const char *path, const struct stat *st, bool top,
		    void *arg);
};

void walk_dir(struct walk *w, int fd, const char *path, dev_t dev, void *arg);
/*
 * For a dir() callback on a PATH operand (top): whether the directory is on pmfuse (the daemon
 * answers the extent probe with EISDIR). If not, says so, sets EXIT_USAGE, closes fd and
 * returns false.
 */
bool walk_top_on_pmfuse(struct walk *w, int fd, const char *path);
/*
 * Visits name (in dirfd; path names it for messages). dev: the file system of the PATH operand
 * (top: this is the operand, so take its own).
 */
void walk_path(struct walk *w, int dirfd, const char *name, const char *path, dev_t dev,
	       bool top, void *arg);

#endif /* PMFUSE_TOOLS_PMFUSECTL_H */
