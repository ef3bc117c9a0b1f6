/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * bench_meta: one phase of the metadata workload of bench/run, timed.
 *
 *     bench_meta create|stat|unlink DIR COUNT
 *
 * create: open(O_CREAT | O_EXCL | O_WRONLY) and close COUNT empty files DIR/f0000000...;
 * stat: stat() each of them; unlink: unlink() each. One phase per run, so that the caller can
 * drop the kernel's caches between phases the same way for every filesystem. Prints one line:
 *
 *     phase=create count=19000 seconds=0.123456 ops_per_sec=153900
 *
 * Exit status 0, or 1 with a message when a call fails (the figure would mean nothing).
 * A figure, not a test: it checks nothing beyond the calls' return values.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s create|stat|unlink DIR COUNT\n", argv[0]);
		return 2;
	}
	const char *phase = argv[1], *dir = argv[2];
	char *end;
	long count = strtol(argv[3], &end, 10);

	if (*end || count <= 0) {
		fprintf(stderr, "bench_meta: bad count '%s'\n", argv[3]);
		return 2;
	}
	int op = !strcmp(phase, "create") ? 0 : !strcmp(phase, "stat") ? 1 :
		 !strcmp(phase, "unlink") ? 2 : -1;
	if (op < 0) {
		fprintf(stderr, "bench_meta: unknown phase '%s'\n", phase);
		return 2;
	}
	if (chdir(dir) != 0) {
		fprintf(stderr, "bench_meta: %s: %s\n", dir, strerror(errno));
		return 1;
	}

	char name[32];
	struct stat st;
	double t0 = now();

	for (long i = 0; i < count; i++) {
		snprintf(name, sizeof(name), "f%07ld", i);
		int rc;

		if (op == 0) {
			int fd = open(name, O_CREAT | O_EXCL | O_WRONLY, 0644);

			rc = fd < 0 ? -1 : close(fd);
		} else if (op == 1) {
			rc = stat(name, &st);
		} else {
			rc = unlink(name);
		}
		if (rc != 0) {
			fprintf(stderr, "bench_meta: %s %s/%s: %s\n", phase, dir, name,
				strerror(errno));
			return 1;
		}
	}
	double dt = now() - t0;

	printf("phase=%s count=%ld seconds=%.6f ops_per_sec=%.0f\n", phase, count, dt,
	       (double)count / dt);
	return 0;
}
