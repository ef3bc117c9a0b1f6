/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * What the command-line tools share: their name in messages, and the one way an error is
 * printed ("PROG: message" on stderr).
 */
#ifndef PMFUSE_TOOLS_CLI_H
#define PMFUSE_TOOLS_CLI_H

/* The tool's name, set by each tool before anything is printed. */
extern const char *cli_prog;

/* Called, if set, before an error is printed (pmfusectl ends its progress line there). */
extern void (*cli_before_err)(void);

/* "PROG: " and the message and a newline, on stderr. */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* PMFUSE_TOOLS_CLI_H */
