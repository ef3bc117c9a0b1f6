/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Logging, size parsing and printing, UUID text.
 *
 * Log lines: stderr in the foreground, syslog when daemonised, nothing in tests that provoke
 * errors on purpose. The target is process-wide and set once at startup.
 */
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

static enum pmfuse_log_target log_target = PMFUSE_LOG_STDERR;
static enum pmfuse_log_level log_max = PMFUSE_LOG_INFO;

void pmfuse_log_set_target(enum pmfuse_log_target target) { log_target = target; }
void pmfuse_log_set_level(enum pmfuse_log_level max) { log_max = max; }

static void vlog(enum pmfuse_log_level level, const char *prefix, const char *fmt, va_list ap)
{
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	char msg[1024];

	if (level > log_max || log_target == PMFUSE_LOG_QUIET)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (log_target == PMFUSE_LOG_SYSLOG)
		syslog(prio[level], "%s%s", prefix, msg);
	else
		fprintf(stderr, "pmfuse: %s%s\n", prefix, msg);
}

void pmfuse_log(enum pmfuse_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(level, "", fmt, ap);
	va_end(ap);
}

static __thread char corrupt_last[512];

const char *pmfuse_corrupt_last(void)
{
	return corrupt_last;
}

int pmfuse_corrupt(const char *file, int line, const char *fmt, ...)
{
	char prefix[256], what[sizeof(corrupt_last)];
	va_list ap;

	/* through a copy: an argument may be corrupt_last itself */
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	memcpy(corrupt_last, what, sizeof(what));
	snprintf(prefix, sizeof(prefix), "corruption detected at %s:%d: ", file, line);
	va_start(ap, fmt);
	vlog(PMFUSE_LOG_ERR, prefix, fmt, ap);
	va_end(ap);
	return -EUCLEAN;
}

int pmfuse_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (*end) {
	case '\0': break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if ((*end == 'i' || *end == 'I') && shift)
		end++;
	if ((*end == 'b' || *end == 'B') && shift)
		end++;
	if (*end != '\0')
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

const char *pmfuse_human_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u + 1 < PMFUSE_ARRAY_SIZE(unit)) {
		v /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
	return buf;
}

void pmfuse_uuid_str(const uint8_t u[16], char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
		 u[13], u[14], u[15]);
}
