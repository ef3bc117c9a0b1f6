/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Small helpers every layer uses: crc32c, logging, and the corruption macro.
 *
 * Errors are returned as 0 or -errno everywhere. Damage found on the media is -EUCLEAN and always
 * goes through PMFUSE_CORRUPT so that the log names the file and line that noticed it; assert() is
 * only for programmer errors, never for what was read from the pool.
 */
#ifndef PMFUSE_UTIL_H
#define PMFUSE_UTIL_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifndef EUCLEAN
#define EUCLEAN 117
#endif

#define PMFUSE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
/* An argument may be evaluated twice: never pass one with a side effect (a random draw). */
#define PMFUSE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PMFUSE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PMFUSE_ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

/* The murmur3 / splitmix 64-bit finaliser: every input bit moves every output bit. Part of
 * the on-media directory name hash (dir.c): never change it. */
static inline uint64_t pmfuse_mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* crc32c (Castagnoli). Uses SSE4.2 when the CPU has it. crc is the running value; start with 0. */
uint32_t pmfuse_crc32c(uint32_t crc, const void *buf, size_t len);

enum pmfuse_log_level { PMFUSE_LOG_ERR, PMFUSE_LOG_WARN, PMFUSE_LOG_INFO, PMFUSE_LOG_DEBUG };

/* Where log lines go: stderr (default), syslog, or nowhere (tests that provoke errors). */
enum pmfuse_log_target { PMFUSE_LOG_STDERR, PMFUSE_LOG_SYSLOG, PMFUSE_LOG_QUIET };
void pmfuse_log_set_target(enum pmfuse_log_target target);
void pmfuse_log_set_level(enum pmfuse_log_level max);

void pmfuse_log(enum pmfuse_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Logs "corruption at FILE:LINE: ..." and evaluates to -EUCLEAN. */
#define PMFUSE_CORRUPT(...) pmfuse_corrupt(__FILE__, __LINE__, __VA_ARGS__)
int pmfuse_corrupt(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* What the calling thread's last PMFUSE_CORRUPT said (without file and line; "" if nothing yet),
 * whatever the log target: lets a caller that only got -EUCLEAN back say what was wrong (fsck).
 * Read it right after the failing call: any later corruption report replaces it. */
const char *pmfuse_corrupt_last(void);

/* Parses "123", "64K", "512M", "1G", "2T" (powers of 1024) into bytes. -EINVAL on junk/overflow. */
int pmfuse_parse_size(const char *s, uint64_t *out);

/* "1.5 GiB": bytes in binary units, into buf; returns buf. */
const char *pmfuse_human_size(uint64_t bytes, char *buf, size_t len);

/* The canonical 36-character form of a UUID, NUL-terminated. */
void pmfuse_uuid_str(const uint8_t u[16], char out[37]);

#endif /* PMFUSE_UTIL_H */
