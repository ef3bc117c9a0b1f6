/* SPDX-License-Identifier: BSD-3-Clause */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>

const char *cli_prog = "pmfuse";
void (*cli_before_err)(void);

void cli_err(const char *fmt, ...)
{
	va_list ap;

	if (cli_before_err)
		cli_before_err();
	fprintf(stderr, "%s: ", cli_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}
