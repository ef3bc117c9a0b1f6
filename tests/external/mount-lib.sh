# shellcheck shell=bash
# SPDX-License-Identifier: BSD-3-Clause
# Sourced by run-pjdfstest.sh and run-fsx.sh: formats a fresh pool, mounts it with the pmfuse
# daemon in the foreground (in its own session), and unmounts and removes everything on exit,
# whatever happened (error, Ctrl-C, SIGTERM). Nothing here fetches or builds anything.
#
# Environment:
#   PMFUSE_DAEMON, PMFUSE_MKFS  the binaries (default: the first of build*/ that has them)
#   PMFUSE_TEST_DIR             where the pool and mount point go (default /dev/shm)
#   POOL_SIZE                   size of the pool (default 1G; a file in tmpfs only uses what
#                               is written)
#   PMFUSE_DAEMON_OPTS          extra -o options for the daemon
#
# After pmfuse_mount: $PMFUSE_MNT is the mount point, $PMFUSE_WORK a private directory outside
# the mount (for logs), $PMFUSE_LOG the daemon's log.

pmfuse_prog=${pmfuse_prog:-pmfuse-external}
pmfuse_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

pmfuse_find() { # NAME SUBDIR: the newest build*/SUBDIR/NAME
	local f best=
	for f in "$pmfuse_top"/build*/"$2"/"$1"; do
		[ -x "$f" ] || continue
		if [ -z "$best" ] || [ "$f" -nt "$best" ]; then best=$f; fi
	done
	echo "$best"
}

pmfuse_skip() { echo "$pmfuse_prog: skipped: $*"; exit 77; }

pmfuse_check_env() {
	[ "$(id -u)" -eq 0 ] || pmfuse_skip "must run as root (the suites switch users)"
	[ -e /dev/fuse ] || pmfuse_skip "/dev/fuse is missing"
	command -v fusermount3 >/dev/null || pmfuse_skip "fusermount3 is missing (package fuse3)"
	PMFUSE_DAEMON=${PMFUSE_DAEMON:-$(pmfuse_find pmfuse src/fuse)}
	PMFUSE_MKFS=${PMFUSE_MKFS:-$(pmfuse_find mkfs.pmfuse tools)}
	if [ -z "$PMFUSE_DAEMON" ] || [ ! -x "$PMFUSE_DAEMON" ]; then
		pmfuse_skip "the daemon is not built (set PMFUSE_DAEMON or build it)"
	fi
	if [ -z "$PMFUSE_MKFS" ] || [ ! -x "$PMFUSE_MKFS" ]; then
		pmfuse_skip "mkfs.pmfuse is not built (set PMFUSE_MKFS or build it)"
	fi
}

pmfuse_daemon_pid=
pmfuse_child_pid=
PMFUSE_WORK=
PMFUSE_MNT=

# Runs a command in the background and waits for it, so that SIGINT/SIGTERM reach the traps at
# once (bash runs traps only between foreground commands); the traps stop it. Returns its status.
pmfuse_run() {
	"$@" &
	pmfuse_child_pid=$!
	wait "$pmfuse_child_pid"
	local rc=$?
	pmfuse_child_pid=
	return $rc
}

pmfuse_stop_child() {
	[ -n "$pmfuse_child_pid" ] || return 0
	kill -TERM "$pmfuse_child_pid" 2>/dev/null
	for _ in $(seq 25); do
		kill -0 "$pmfuse_child_pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL "$pmfuse_child_pid" 2>/dev/null
	wait "$pmfuse_child_pid" 2>/dev/null
	pmfuse_child_pid=
}

pmfuse_cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	pmfuse_stop_child
	cd / || true
	if [ -n "$PMFUSE_MNT" ] && grep -q " $PMFUSE_MNT " /proc/self/mountinfo; then
		for _ in $(seq 50); do
			fusermount3 -u "$PMFUSE_MNT" 2>/dev/null && break
			sleep 0.2
		done
		if grep -q " $PMFUSE_MNT " /proc/self/mountinfo; then
			echo "$pmfuse_prog: $PMFUSE_MNT stayed busy; unmounting lazily" >&2
			fusermount3 -uz "$PMFUSE_MNT" || true
		fi
	fi
	if [ -n "$pmfuse_daemon_pid" ]; then
		for _ in $(seq 150); do
			kill -0 "$pmfuse_daemon_pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$pmfuse_daemon_pid" 2>/dev/null; then
			echo "$pmfuse_prog: the daemon did not exit after the unmount; killing it" >&2
			kill -9 "$pmfuse_daemon_pid" 2>/dev/null || true
			rc=1
		fi
		wait "$pmfuse_daemon_pid" 2>/dev/null
		local st=$?
		if [ "$st" -ne 0 ]; then
			echo "$pmfuse_prog: the daemon exited with status $st; its log:" >&2
			tail -n 40 "$PMFUSE_LOG" >&2
			[ "$rc" -eq 0 ] && rc=1
		fi
	fi
	if [ -n "$PMFUSE_WORK" ]; then
		if [ -n "${PMFUSE_KEEP:-}" ]; then
			echo "$pmfuse_prog: kept $PMFUSE_WORK (PMFUSE_KEEP)" >&2
		else
			rm -rf "$PMFUSE_WORK"
		fi
	fi
	exit "$rc"
}

pmfuse_mount() {
	local base=${PMFUSE_TEST_DIR:-/dev/shm} opts=allow_other
	[ -n "${PMFUSE_DAEMON_OPTS:-}" ] && opts="$opts,$PMFUSE_DAEMON_OPTS"
	PMFUSE_WORK=$(mktemp -d "$base/pmfuse-$pmfuse_prog.XXXXXX") || exit 1
	trap pmfuse_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	chmod 755 "$PMFUSE_WORK"
	PMFUSE_MNT=$PMFUSE_WORK/mnt
	PMFUSE_LOG=$PMFUSE_WORK/daemon.log
	mkdir "$PMFUSE_MNT"
	chmod 755 "$PMFUSE_MNT"
	"$PMFUSE_MKFS" -q -s "${POOL_SIZE:-1G}" "$PMFUSE_WORK/pool" ||
		{ echo "$pmfuse_prog: mkfs.pmfuse failed" >&2; exit 1; }
	setsid "$PMFUSE_DAEMON" -f -o "$opts" "$PMFUSE_WORK/pool" "$PMFUSE_MNT" \
		</dev/null >"$PMFUSE_LOG" 2>&1 &
	pmfuse_daemon_pid=$!
	for _ in $(seq 200); do
		grep -q " $PMFUSE_MNT " /proc/self/mountinfo && break
		if ! kill -0 "$pmfuse_daemon_pid" 2>/dev/null; then
			echo "$pmfuse_prog: the daemon exited before mounting:" >&2
			cat "$PMFUSE_LOG" >&2
			exit 1
		fi
		sleep 0.1
	done
	grep -q " $PMFUSE_MNT " /proc/self/mountinfo ||
		{ echo "$pmfuse_prog: the mount did not appear in 20 s" >&2; exit 1; }
	echo "$pmfuse_prog: $PMFUSE_DAEMON mounted a fresh ${POOL_SIZE:-1G} pool on $PMFUSE_MNT"
}
