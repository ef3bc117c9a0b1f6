# shellcheck shell=bash
# SPDX-License-Identifier: BSD-3-Clause
# Sourced by run-pjdfstest.sh, run-fsx.sh and run-xfstests.sh: formats a fresh pool, mounts it
# with the pmfuse daemon in the foreground (in its own session), and unmounts and removes
# everything on exit, whatever happened (error, Ctrl-C, SIGTERM). Nothing here fetches or builds
# anything.
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
#
# A runner that mounts by other means (xfstests mounts and unmounts its own pools) calls
# pmfuse_workdir and pmfuse_mkfs instead, and leaves the rest to the cleanup: every mount under
# $PMFUSE_WORK is unmounted, and every process that still has one of its pools open (their
# daemons) is waited for, then killed. pmfuse_cleanup_hook, if defined, runs first.

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
	# no `wait` here: run from a trap that interrupted pmfuse_run's wait for this child, bash
	# 5.2 can lose its exit and then wait for it forever (seen: a run stuck with its mount)
	pmfuse_child_pid=
}

pmfuse_cleanup() {
	local rc=$?
	# A second signal (a timeout(1) wrapper and a process-group kill both send SIGTERM) must
	# not end the cleanup half way and leave a mount behind: every step below is bounded.
	trap - EXIT
	trap '' INT TERM HUP
	if declare -F pmfuse_cleanup_hook >/dev/null; then pmfuse_cleanup_hook; fi
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
		pmfuse_umount_under "$PMFUSE_WORK" || rc=1
		pmfuse_stop_users "$PMFUSE_WORK" || rc=1
		if [ -n "${PMFUSE_KEEP:-}" ]; then
			echo "$pmfuse_prog: kept $PMFUSE_WORK (PMFUSE_KEEP)" >&2
		else
			rm -rf "$PMFUSE_WORK"
		fi
	fi
	exit "$rc"
}

# The mount points under DIR, deepest first (mountinfo escapes blanks as \040; ours have none).
pmfuse_mounts_under() {
	awk -v d="$1/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Unmounts everything under DIR: politely for a while, then lazily. Status 1 if it had to be lazy.
pmfuse_umount_under() {
	local m st=0
	for m in $(pmfuse_mounts_under "$1"); do
		for _ in $(seq 25); do
			timeout 30 umount "$m" 2>/dev/null && break
			grep -q " $m " /proc/self/mountinfo || break
			sleep 0.2
		done
		if grep -q " $m " /proc/self/mountinfo; then
			echo "$pmfuse_prog: $m stayed busy; unmounting lazily" >&2
			umount -l "$m" || true
			st=1
		fi
	done
	return $st
}

# The pids of the processes with a pool of DIR (DIR/pool, DIR/*.pool) open or mapped: daemons.
pmfuse_users_of() {
	find /proc/[0-9]*/fd /proc/[0-9]*/map_files -maxdepth 1 \
		\( -lname "$1/pool" -o -lname "$1/*.pool" \) 2>/dev/null | cut -d/ -f3 | sort -u
}

# Waits up to 30 s for the processes that still use DIR's pools (daemons finishing after their
# unmount) and kills those left. Status 1 if any had to be killed.
pmfuse_stop_users() {
	local pids
	for _ in $(seq 150); do
		pids=$(pmfuse_users_of "$1")
		[ -z "$pids" ] && return 0
		sleep 0.2
	done
	echo "$pmfuse_prog: killing what still uses $1 after the unmounts:" "$pids" >&2
	# shellcheck disable=SC2086 # a list of pids
	kill -9 $pids 2>/dev/null
	return 1
}

# Makes $PMFUSE_WORK (a private directory under PMFUSE_TEST_DIR) and arms the cleanup.
pmfuse_workdir() {
	local base=${PMFUSE_TEST_DIR:-/dev/shm}
	PMFUSE_WORK=$(mktemp -d "$base/pmfuse-$pmfuse_prog.XXXXXX") || exit 1
	trap pmfuse_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
	chmod 755 "$PMFUSE_WORK"
}

# Formats a fresh pool file of POOL_SIZE.
pmfuse_mkfs() { # POOL
	"$PMFUSE_MKFS" -q -s "${POOL_SIZE:-1G}" "$1" ||
		{ echo "$pmfuse_prog: mkfs.pmfuse failed" >&2; exit 1; }
}

pmfuse_mount() {
	local opts=allow_other
	[ -n "${PMFUSE_DAEMON_OPTS:-}" ] && opts="$opts,$PMFUSE_DAEMON_OPTS"
	pmfuse_workdir
	PMFUSE_MNT=$PMFUSE_WORK/mnt
	PMFUSE_LOG=$PMFUSE_WORK/daemon.log
	mkdir "$PMFUSE_MNT"
	chmod 755 "$PMFUSE_MNT"
	pmfuse_mkfs "$PMFUSE_WORK/pool"
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
