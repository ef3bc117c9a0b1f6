#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Runs xfstests (fstests; built by you outside this repository, see README.md) against two
# freshly formatted pmfuse pools, TEST and SCRATCH, or against two private tmpfs mounts for
# comparison, and writes a table of what passed, failed and did not run (with xfstests'
# reason). Pools, mounts and daemons are removed afterwards whatever happens.
#
# Usage: tests/external/run-xfstests.sh [--fstype pmfuse|tmpfs] [--results DIR] [--table FILE]
#                                       XFSTESTS_DIR [CHECK_ARGS...]
#   XFSTESTS_DIR  a built xfstests checkout (its ./check and ltp/fsx)
#   CHECK_ARGS    passed to ./check (default: -g quick), e.g. generic/001 generic/257 or -g clone
#   --fstype      pmfuse (default) or tmpfs: the same selection on tmpfs, the reference
#   --results     where xfstests' results, its output and the table go (default: a new
#                 /tmp/xfstests-FSTYPE.XXXXXX, printed); kept after the run
#   --table       also write the table to FILE
# Environment: POOL_SIZE (default here 2G each), XFSTESTS_MOUNT_TIMEOUT (seconds one mount or
#   unmount may take, default 120), XFSTESTS_VERSION (named in the table when XFSTESTS_DIR is
#   not a git checkout), PMFUSE_DAEMON_OPTS (more -o options for both mounts), and
#   those of mount-lib.sh (PMFUSE_DAEMON, PMFUSE_MKFS, PMFUSE_TEST_DIR, PMFUSE_KEEP=1).
# Exit status: 0 when no test failed, 1 otherwise; 77 when the prerequisites are missing.
set -uo pipefail
pmfuse_prog=run-xfstests
. "$(dirname "$0")/mount-lib.sh"

usage() {
	sed -n '/^# Usage:/,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'
}

fstype=pmfuse results='' table=''
while [ $# -gt 0 ]; do
	case "$1" in
	-h|--help) usage; exit 0;;
	--fstype) fstype=${2:-}; shift 2 || break;;
	--fstype=*) fstype=${1#*=}; shift;;
	--results) results=${2:-}; shift 2 || break;;
	--results=*) results=${1#*=}; shift;;
	--table) table=${2:-}; shift 2 || break;;
	--table=*) table=${1#*=}; shift;;
	--) shift; break;;
	-*) echo "$pmfuse_prog: unknown option $1 (see --help)" >&2; exit 1;;
	*) break;;
	esac
done
case "$fstype" in
pmfuse|tmpfs) ;;
*) echo "$pmfuse_prog: --fstype must be pmfuse or tmpfs" >&2; exit 1;;
esac

xfs=${1:-}
[ -n "$xfs" ] || pmfuse_skip "no xfstests directory given (usage: $0 [--fstype pmfuse|tmpfs] XFSTESTS_DIR [CHECK_ARGS...])"
shift
[ -d "$xfs" ] || pmfuse_skip "no xfstests directory $xfs"
xfs=$(cd "$xfs" && pwd)
if [ ! -x "$xfs/check" ] || [ ! -x "$xfs/ltp/fsx" ]; then
	pmfuse_skip "$xfs is not a built xfstests checkout (no ./check or ltp/fsx); see" \
		"tests/external/README.md"
fi
check_args=("$@")
[ ${#check_args[@]} -eq 0 ] && check_args=(-g quick)

[ "$(id -u)" -eq 0 ] || pmfuse_skip "must run as root (xfstests mounts and switches users)"
command -v python3 >/dev/null || pmfuse_skip "python3 is missing (it reads xfstests' report)"
if [ "$fstype" = pmfuse ]; then
	pmfuse_check_env
	[ -x /sbin/mount.fuse3 ] || pmfuse_skip "/sbin/mount.fuse3 is missing (package fuse3)"
	# xfstests' _fs_type wants the mount type to be FSTYP itself, "fuse", not "fuse.pmfuse".
	grep -q nosubtype <<<"$("$PMFUSE_DAEMON" --help 2>&1)" ||
		pmfuse_skip "$PMFUSE_DAEMON has no -o nosubtype (xfstests needs mounts of type" \
			"\"fuse\"); build a newer pmfuse"
fi

# Tests that switch users are "not run" without these; xfstests' README says how to add them.
missing=
for u in fsgqa fsgqa2 123456-fsgqa; do id -u "$u" >/dev/null 2>&1 || missing="$missing user $u,"; done
getent group fsgqa >/dev/null || missing="$missing group fsgqa,"
[ -n "$missing" ] && echo "$pmfuse_prog: warning: missing${missing%,}: the tests that need" \
	"them will not run (see tests/external/README.md)" >&2

if [ -z "$results" ]; then
	results=$(mktemp -d "/tmp/xfstests-$fstype.XXXXXX") || exit 1
fi
mkdir -p "$results/results" || exit 1
results=$(cd "$results" && pwd)

pmfuse_workdir
w=$PMFUSE_WORK
bin=$w/bin
mkdir -p "$w/test" "$w/scratch" "$bin"
chmod 755 "$w/test" "$w/scratch"
export XFSTESTS_MOUNT_TIMEOUT=${XFSTESTS_MOUNT_TIMEOUT:-120}

# xfstests calls the first mount and umount on PATH (MOUNT_PROG, UMOUNT_PROG); these put a
# time limit on each, so that a hung FUSE request fails the mount instead of the run.
# mount(8) clears PATH before it runs mount.fuse3, whose shell would then run the first pmfuse
# on the default PATH (an installed one, say), not this build: a FUSE mount calls mount.fuse3
# directly, with PATH kept, which is what mount(8) would do.
cat > "$bin/mount" <<'EOF'
#!/bin/bash
# run-xfstests.sh's mount(8) for xfstests: a time limit, and FUSE mounts through mount.fuse3.
tmo=${XFSTESTS_MOUNT_TIMEOUT:-120} type= opts= args=()
while [ $# -gt 0 ]; do
	case "$1" in
	-t) type=$2; shift 2;;
	-o) opts=${opts:+$opts,}$2; shift 2;;
	-o*) opts=${opts:+$opts,}${1#-o}; shift;;
	*) args+=("$1"); shift;;
	esac
done
# A remount names one mount point or source; mount(8) would run mount.fuse3 for it too.
if [ -z "$type" ] && [ ${#args[@]} -eq 1 ] && [[ ",$opts," == *,remount,* ]]; then
	m=$(findmnt -rn -o FSTYPE,SOURCE,TARGET -M "${args[0]}" 2>/dev/null ||
		findmnt -rn -o FSTYPE,SOURCE,TARGET -S "${args[0]}" 2>/dev/null)
	read -r ft src tgt <<<"${m%%$'\n'*}"
	[ "${ft%%.*}" = fuse ] && type=$ft && args=("$src" "$tgt")
fi
case "$type" in
fuse) exec timeout "$tmo" /sbin/mount.fuse3 "${args[@]}" ${opts:+-o "$opts"};;
fuse.*) exec timeout "$tmo" /sbin/mount.fuse3 "${args[@]}" -t "$type" ${opts:+-o "$opts"};;
esac
exec timeout "$tmo" /usr/bin/mount ${type:+-t "$type"} ${opts:+-o "$opts"} "${args[@]}"
EOF
cat > "$bin/umount" <<'EOF'
#!/bin/bash
exec timeout "${XFSTESTS_MOUNT_TIMEOUT:-120}" /usr/bin/umount "$@"
EOF
chmod 755 "$bin/mount" "$bin/umount"

config=$w/local.config
if [ "$fstype" = pmfuse ]; then
	ln -s "$PMFUSE_DAEMON" "$bin/pmfuse"
	ln -s "$PMFUSE_MKFS" "$bin/mkfs.pmfuse"
	POOL_SIZE=${POOL_SIZE:-2G}
	pmfuse_mkfs "$w/test.pool"
	pmfuse_mkfs "$w/scratch.pool"
	opts=allow_other,nosubtype
	[ -n "${PMFUSE_DAEMON_OPTS:-}" ] && opts="$opts,$PMFUSE_DAEMON_OPTS"
	# "pmfuse#POOL" is how mount.fuse3 names program and pool for type "fuse", and the source
	# that the daemon shows with -o nosubtype, which xfstests looks for in findmnt and df.
	cat > "$config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=
export TEST_DEV='pmfuse#$w/test.pool'
export TEST_DIR=$w/test
export SCRATCH_DEV='pmfuse#$w/scratch.pool'
export SCRATCH_MNT=$w/scratch
export TEST_FS_MOUNT_OPTS="-o $opts"
export MOUNT_OPTIONS="-o $opts"
export RESULT_BASE=$results/results
EOF
	what="pmfuse ($PMFUSE_DAEMON, two ${POOL_SIZE} pools in ${PMFUSE_TEST_DIR:-/dev/shm})"
else
	# Names of our own, so that xfstests never takes someone else's tmpfs for ours.
	cat > "$config" <<EOF
export FSTYP=tmpfs
export TEST_DEV=xfstests_test_${w##*.}
export TEST_DIR=$w/test
export SCRATCH_DEV=xfstests_scratch_${w##*.}
export SCRATCH_MNT=$w/scratch
export RESULT_BASE=$results/results
EOF
	what="tmpfs (two private mounts)"
fi
cp "$config" "$results/local.config"

# The test pool is mounted here, as xfstests would, so that a broken mount fails at once.
(
	# shellcheck disable=SC1090 # written above
	. "$config"
	if [ "$fstype" = pmfuse ]; then
		# shellcheck disable=SC2086 # -o OPTS
		PATH="$bin:$PATH" "$bin/mount" -t fuse $TEST_FS_MOUNT_OPTS "$TEST_DEV" "$TEST_DIR"
	else
		"$bin/mount" -t tmpfs "$TEST_DEV" "$TEST_DIR"
	fi
) || { echo "$pmfuse_prog: mounting the test file system failed" >&2; exit 1; }
findmnt -M "$w/test" >/dev/null || { echo "$pmfuse_prog: $w/test is not a mount" >&2; exit 1; }
echo "$pmfuse_prog: $what on $w/{test,scratch}"
echo "$pmfuse_prog: ./check ${check_args[*]}; results in $results"

# The table: from xunit's result.xml when check finished, from its output when it did not.
write_table() { # STATUS
	local elapsed=$(($(date +%s) - start))
	{
	echo "xfstests on $what"
	echo "xfstests ${XFSTESTS_VERSION:-$(git -C "$xfs" describe --always --dirty 2>/dev/null ||
		echo "of unknown version (set XFSTESTS_VERSION)")} in $xfs"
	echo "pmfuse $(git -C "$pmfuse_top" describe --always --dirty 2>/dev/null)," \
		"kernel $(uname -r), ./check ${check_args[*]} ($1)"
	python3 - "$results" "$elapsed" <<'EOF'
import glob, os, re, sys
import xml.etree.ElementTree as ET

res, elapsed = sys.argv[1], int(sys.argv[2])
rows = []  # (test, status, seconds, reason)
xmls = sorted(glob.glob(os.path.join(res, "results", "**", "result.xml"), recursive=True))
for x in xmls:
    for tc in ET.parse(x).getroot().iter("testcase"):
        name, t = tc.get("name"), tc.get("time") or ""
        sk, fl = tc.find("skipped"), tc.find("failure")
        if fl is not None:
            rows.append((name, "FAIL", t, fl.get("message") or ""))
        elif sk is not None:
            msg = (sk.get("message") or "").strip()
            rows.append((name, "not run", "", msg.splitlines()[0] if msg else ""))
        else:
            rows.append((name, "pass", t, ""))
if not xmls:
    # check was interrupted: classify the lines it printed per test
    for line in open(os.path.join(res, "check.out"), errors="replace"):
        m = re.match(r"^(\w+/\d+)\s+(.*)$", line.rstrip("\n"))
        if m:
            name, rest = m.groups()
            if "[not run]" in rest:
                rows.append((name, "not run", "", rest.split("[not run]", 1)[1].strip()))
            elif re.search(r"\[failed|output mismatch|\[dumped core\]|_check_", rest):
                rows.append((name, "FAIL", "", rest.strip()))
            elif re.search(r"\d+s\s*$", rest):
                rows.append((name, "pass", re.findall(r"(\d+)s\s*$", rest)[0], ""))
            else:
                rows.append((name, "unfinished", "", rest.strip()))
    print("(check did not finish: classified from its output)")
w = max([len(r[0]) for r in rows] + [4])
print(f"{'test':<{w}}  {'result':<10} {'time':>5}  reason")
for n, s, t, r in rows:
    print(f"{n:<{w}}  {s:<10} {(t + 's') if t else '':>5}  {r}".rstrip())
count = lambda s: sum(1 for r in rows if r[1] == s)
print(f"passed {count('pass')}, failed {count('FAIL')}, not run {count('not run')}"
      + (f", unfinished {count('unfinished')}" if count('unfinished') else "")
      + f", total {len(rows)}; elapsed {elapsed // 60}m{elapsed % 60:02d}s")
print("failures:", " ".join(r[0] for r in rows if r[1] == "FAIL") or "none")
EOF
	} > "$results/table.txt"
	cat "$results/table.txt"
	if [ -n "$table" ]; then cp "$results/table.txt" "$table"; fi
	echo "$pmfuse_prog: table in $results/table.txt${table:+ and $table};" \
		"xfstests' files in $results/results"
}

# ./check in a session of its own, so that the cleanup can stop it and everything it started;
# the table of an interrupted run says what ran until then.
check_pid=''
# shellcheck disable=SC2317 # called by pmfuse_cleanup
pmfuse_cleanup_hook() {
	[ -n "$check_pid" ] || return 0
	kill -TERM -- "-$check_pid" 2>/dev/null
	for _ in $(seq 50); do
		kill -0 -- "-$check_pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL -- "-$check_pid" 2>/dev/null
	check_pid=''
	write_table "interrupted"
}

start=$(date +%s)
cd "$xfs" || exit 1
PATH="$bin:$PATH" HOST_OPTIONS=$config setsid ./check -R xunit-quiet "${check_args[@]}" \
	> >(tee "$results/check.out") 2>&1 &
check_pid=$!
wait "$check_pid"
rc=$?
check_pid=''
cd / || true
write_table "exit $rc"
grep -q '^failures: none$' "$results/table.txt" && [ "$rc" -eq 0 ] && exit 0
exit 1
