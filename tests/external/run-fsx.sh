#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Runs fsx (the file system exerciser of xfstests/LTP; built by you outside this repository,
# see README.md) against a file in a freshly formatted and mounted pmfuse pool, twice: once with
# fsx's defaults (mapped reads and writes included, plus whatever fallocate, copy_file_range and
# clone calls it finds supported) and once with system calls only (-R -W). Each run uses
# -N OPS and -S SEED, so a failure can be replayed. The pool is unmounted and removed afterwards
# whatever happens; fsx's logs of a failed run are copied out first.
#
# Usage: tests/external/run-fsx.sh FSX_BINARY [OPS]
#   OPS    operations per run (default 100000)
# Environment: FSX_SEED (default: random, printed), FSX_ARGS (more fsx options for both runs,
#   e.g. "-l 1048576 -o 131072"), FSX_LOGS (where logs of a failed run go, default /tmp), and
#   those of mount-lib.sh.
# Exit status: 0 when both runs passed, 1 otherwise; 77 when no binary is given or the
# prerequisites are missing.
set -uo pipefail
pmfuse_prog=run-fsx
. "$(dirname "$0")/mount-lib.sh"

fsx=${1:-}
[ -n "$fsx" ] || pmfuse_skip "no fsx binary given (usage: $0 FSX_BINARY [OPS])"
if [ ! -x "$fsx" ]; then
	echo "$pmfuse_prog: $fsx is not an executable; see tests/external/README.md" >&2
	exit 1
fi
fsx=$(cd "$(dirname "$fsx")" && pwd)/$(basename "$fsx")
ops=${2:-100000}
case "$ops" in ''|*[!0-9]*) echo "$pmfuse_prog: OPS must be a number" >&2; exit 1;; esac
seed=${FSX_SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000 + 1 ))}
pmfuse_check_env
pmfuse_mount

status=0
run() { # NAME ARGS...
	local name=$1; shift
	local logs="$PMFUSE_WORK/logs-$name"
	mkdir -p "$logs"
	echo "== fsx $name: fsx -N $ops -S $seed $* ${FSX_ARGS:-} $PMFUSE_MNT/fsx-$name"
	local start rc
	start=$(date +%s)
	# shellcheck disable=SC2086 # FSX_ARGS is a list of options
	pmfuse_run "$fsx" -N "$ops" -S "$seed" -P "$logs" "$@" ${FSX_ARGS:-} \
		"$PMFUSE_MNT/fsx-$name" > "$logs/stdout" 2>&1
	rc=$?
	grep -iE "not support|disabl" "$logs/stdout" | sort -u   # what fsx probed and left out
	tail -n 3 "$logs/stdout"
	echo "== fsx $name: exit $rc after $(($(date +%s) - start)) s"
	if [ $rc -ne 0 ]; then
		status=1
		local keep="${FSX_LOGS:-/tmp}/pmfuse-fsx-$name-$seed-$$"
		mkdir -p "$keep" && cp -r "$logs/." "$keep/" &&
			echo "== fsx $name: logs in $keep (replay: fsx -N $ops -S $seed $* ...)"
		tail -n 40 "$logs/stdout"
	fi
}
run default
run syscalls -R -W
echo "$pmfuse_prog: $([ $status -eq 0 ] && echo "both runs passed" || echo "a run FAILED") (seed $seed, $ops ops each)"
exit $status
