#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Runs pjdfstest (POSIX syscall conformance; built by you outside this repository, see README.md)
# inside a freshly formatted and mounted pmfuse pool, as root, with prove -rv. The pool is
# unmounted and removed afterwards whatever happens.
#
# Usage: tests/external/run-pjdfstest.sh PJDFSTEST_DIR [SUBDIR...]
#   PJDFSTEST_DIR  a checkout with the pjdfstest binary built in it (PJDFSTEST_DIR/pjdfstest)
#   SUBDIR         only these directories of PJDFSTEST_DIR/tests (e.g. rename chmod)
# Environment: see mount-lib.sh (PMFUSE_DAEMON, PMFUSE_MKFS, PMFUSE_TEST_DIR, POOL_SIZE,
#   PMFUSE_KEEP=1 keeps the pool and the daemon log).
# Exit status: prove's (0 when every test passed); 77 when no directory is given or the
# prerequisites (root, /dev/fuse, a built daemon, prove) are missing.
set -uo pipefail
pmfuse_prog=run-pjdfstest
. "$(dirname "$0")/mount-lib.sh"

dir=${1:-}
[ -n "$dir" ] || pmfuse_skip "no pjdfstest directory given (usage: $0 PJDFSTEST_DIR [SUBDIR...])"
shift
dir=$(cd "$dir" 2>/dev/null && pwd) || { echo "$pmfuse_prog: no directory ${1:-}" >&2; exit 1; }
if [ ! -x "$dir/pjdfstest" ] || [ ! -d "$dir/tests" ]; then
	echo "$pmfuse_prog: $dir is not a built pjdfstest checkout (no pjdfstest binary or" \
		"tests/ in it); see tests/external/README.md" >&2
	exit 1
fi
command -v prove >/dev/null || pmfuse_skip "prove is missing (Debian package perl)"
pmfuse_check_env

targets=()
for t in "$@"; do
	[ -d "$dir/tests/$t" ] || { echo "$pmfuse_prog: no $dir/tests/$t" >&2; exit 1; }
	targets+=("$dir/tests/$t")
done
[ ${#targets[@]} -eq 0 ] && targets=("$dir/tests")

pmfuse_mount
cd "$PMFUSE_MNT" || exit 1
start=$(date +%s)
pmfuse_run prove -rv "${targets[@]}"
rc=$?
cd / || true
echo "$pmfuse_prog: prove exited $rc after $(($(date +%s) - start)) s"
exit $rc
