#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
#
# The command-line tools on real pool files: mkfs.pmfuse and pmfusectl info.
# Usage: test_tools.sh PATH/TO/mkfs.pmfuse PATH/TO/pmfusectl
# Pools live in a temporary directory under /dev/shm (or $TMPDIR if /dev/shm is missing).
# Output: one "ok N - ..." or "not ok N - ..." line per check, then "N passed, M failed".
# Exit status: 0 when every check passed, 1 otherwise, 77 (skip) without the programs.

set -u

MKFS=${1:-}
CTL=${2:-}
if [ -z "$MKFS" ] || [ -z "$CTL" ] || [ ! -x "$MKFS" ] || [ ! -x "$CTL" ]; then
	echo "usage: $0 MKFS.PMFUSE PMFUSECTL" >&2
	exit 77
fi

base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
DIR=$(mktemp -d "$base/pmfuse-tools.XXXXXX") || exit 1
trap 'rm -rf "$DIR"' EXIT INT TERM

pass=0
fail=0
n=0
OUT=$DIR/out
ERR=$DIR/err

ok() {
	n=$((n + 1))
	pass=$((pass + 1))
	echo "ok $n - $1"
}

not_ok() {
	n=$((n + 1))
	fail=$((fail + 1))
	echo "not ok $n - $1"
	if [ -s "$OUT" ]; then sed 's/^/#   stdout: /' "$OUT" | head -40; fi
	if [ -s "$ERR" ]; then sed 's/^/#   stderr: /' "$ERR" | head -20; fi
}

# run CMD...: runs it with stdout in $OUT and stderr in $ERR; $rc is its exit status.
run() {
	"$@" >"$OUT" 2>"$ERR"
	rc=$?
}

# check DESCRIPTION CONDITION...: one test line from a shell condition.
check() {
	local desc=$1
	shift
	if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

# has FILE REGEX: the file holds a line matching the extended regex.
has() { grep -Eq -- "$2" "$1"; }

sum() { md5sum "$1" | cut -d' ' -f1; }

# info_field NAME: the value of "NAME:" in the last pmfusectl info output.
info_field() { sed -n "s/^$1: *//p" "$OUT" | head -1; }

# put FILE OFFSET BYTES...: writes bytes (printf escapes) at an offset, in place.
put() {
	local file=$1 off=$2
	shift 2
	printf "$@" | dd of="$file" bs=1 seek="$off" conv=notrunc status=none
}

# ---- help and version ------------------------------------------------------------------------
run "$MKFS" --help
check "mkfs.pmfuse --help exits 0 and shows usage" [ $rc -eq 0 ]
check "mkfs.pmfuse --help names the options" has "$OUT" "--block-size"
run "$MKFS" --version
check "mkfs.pmfuse --version exits 0 with a version" \
	eval '[ $rc -eq 0 ] && has "$OUT" "[0-9]+\.[0-9]+"'
run "$CTL" --help
check "pmfusectl --help exits 0 and lists info" eval '[ $rc -eq 0 ] && has "$OUT" "^  info"'
run "$CTL" --version
check "pmfusectl --version exits 0" eval '[ $rc -eq 0 ] && has "$OUT" "[0-9]+\.[0-9]+"'
run "$CTL" info --help
check "pmfusectl info --help exits 0" eval '[ $rc -eq 0 ] && has "$OUT" "info POOL"'
run "$CTL"
check "pmfusectl without a command exits 1" [ $rc -eq 1 ]
run "$CTL" frobnicate
check "pmfusectl with an unknown command exits 1 and says so" \
	eval '[ $rc -eq 1 ] && has "$ERR" "unknown command"'
run "$MKFS"
check "mkfs.pmfuse without POOL exits 1 with usage" eval '[ $rc -eq 1 ] && has "$ERR" "Usage"'

# ---- a 1 GiB pool ------------------------------------------------------------------------------
POOL=$DIR/pool
run "$MKFS" -s 1G -L tools-test "$POOL"
check "mkfs.pmfuse -s 1G creates a pool" eval '[ $rc -eq 0 ] && [ "$(stat -c %s "$POOL")" = 1073741824 ]'
check "mkfs.pmfuse prints the geometry" \
	eval 'has "$OUT" "bsize=4096" && has "$OUT" "blocks=262144" && has "$OUT" "^uuid +=" && has "$OUT" "granularity="'

run "$CTL" info "$POOL"
check "pmfusectl info exits 0 on a fresh pool" [ $rc -eq 0 ]
check "info shows the label" has "$OUT" '^label: +"tools-test"$'
check "info shows block size and block count" \
	eval 'has "$OUT" "^block size: +4096$" && has "$OUT" "^blocks: +262144 "'
check "info shows both superblock copies valid" \
	eval 'has "$OUT" "^primary sb: +block 0: valid" && has "$OUT" "^secondary sb: +block 262143: valid"'
check "info shows the features in hex" has "$OUT" "^features: +compat 0x0{16} ro_compat 0x0{16} incompat 0x0{16}$"
check "info shows clean, mount count and times" \
	eval 'has "$OUT" "^clean: +yes" && has "$OUT" "^mount count: +0$" && has "$OUT" "^created: +[0-9]{4}-" && has "$OUT" "^last mounted: +never"'
check "info shows the store granularity" has "$OUT" "^store granularity: +(byte|cache line|page)$"
check "info shows an empty log" has "$OUT" "^log state: +empty$"
check "info shows free and used space" \
	eval 'has "$OUT" "^free: +[0-9]+ blocks, [0-9]+ bytes" && has "$OUT" "^used: +[0-9]+ blocks"'
uuid1=$(info_field uuid)
free_blocks=$(info_field free | cut -d' ' -f1)
data_blocks=$(info_field data | sed 's/.*(\(.*\))/\1/')
check "free blocks equal the data area of a fresh pool" [ "$free_blocks" = "$data_blocks" ]

# ---- refusing to overwrite -------------------------------------------------------------------
before=$(sum "$POOL")
run "$MKFS" "$POOL"
check "mkfs.pmfuse on a pmfuse pool without -f fails" [ $rc -ne 0 ]
check "the refusal names the pmfuse pool and -f" \
	eval 'has "$ERR" "contains a pmfuse pool \(uuid $uuid1" && has "$ERR" "use -f"'
check "the refused pool is untouched" [ "$(sum "$POOL")" = "$before" ]
run "$MKFS" -b 8192 -L other "$POOL"
check "a refused mkfs with other options leaves the pool untouched" \
	eval '[ $rc -ne 0 ] && [ "$(sum "$POOL")" = "$before" ]'

run "$MKFS" -f -q "$POOL"
check "mkfs.pmfuse -f overwrites the pool, -q prints nothing" \
	eval '[ $rc -eq 0 ] && [ ! -s "$OUT" ]'
run "$CTL" info "$POOL"
check "the new pool has a new uuid and no label" \
	eval '[ $rc -eq 0 ] && [ "$(info_field uuid)" != "$uuid1" ] && has "$OUT" "^label: +\"\"$"'
run "$MKFS" -f -b 64K "$POOL"
run "$CTL" info "$POOL"
check "mkfs.pmfuse -f -b 64K gives 64 KiB blocks" \
	eval '[ $rc -eq 0 ] && has "$OUT" "^block size: +65536$" && has "$OUT" "^blocks: +16384 "'

# ---- bad arguments ----------------------------------------------------------------------------
run "$MKFS" -s 64K "$DIR/tiny"
check "a too small size fails" [ $rc -ne 0 ]
check "the message names the minimum" eval 'has "$ERR" "too small" && has "$ERR" "at least [0-9]+ bytes"'
check "no file is left behind" [ ! -e "$DIR/tiny" ]
run "$MKFS" -b 65536 -s 4M "$DIR/tiny"
check "the minimum depends on the block size" eval '[ $rc -ne 0 ] && has "$ERR" "65536-byte blocks"'
truncate -s 512K "$DIR/small"
run "$MKFS" "$DIR/small"
check "an existing too small file fails and names the minimum" \
	eval '[ $rc -ne 0 ] && has "$ERR" "at least"'
for bs in 3000 2048 131072 4097 abc; do
	run "$MKFS" -b $bs -s 16M "$DIR/bs"
	check "block size $bs is refused" eval '[ $rc -ne 0 ] && has "$ERR" "block size" && [ ! -e "$DIR/bs" ]'
done
run "$MKFS" -s 12X "$DIR/junk"
check "a bad size is refused" eval '[ $rc -ne 0 ] && has "$ERR" "invalid size"'
run "$MKFS" "$DIR/missing"
check "a missing file without -s is refused" eval '[ $rc -ne 0 ] && has "$ERR" "does not exist"'
run "$MKFS" -s 16M -L "$(printf '%065d' 0)" "$DIR/label"
check "a 65-byte label is refused" eval '[ $rc -ne 0 ] && has "$ERR" "label" && [ ! -e "$DIR/label" ]'
run "$MKFS" -q -s 16M -L "$(printf '%064d' 0)" "$DIR/label"
check "a 64-byte label is accepted" [ $rc -eq 0 ]
run "$MKFS" -s 16M "$DIR"
check "a directory is refused" eval '[ $rc -ne 0 ] && has "$ERR" "neither a regular file"'

# ---- signatures ---------------------------------------------------------------------------------
# sig NAME FILE SETUP...: SETUP writes a signature into a zeroed 16 MiB file; mkfs must refuse
# without -f, naming NAME, and leave the file alone; -f must then format it.
sig() {
	local name=$1 file=$2
	shift 2
	rm -f "$file"
	truncate -s 16M "$file"
	"$@"
	local b
	b=$(sum "$file")
	run "$MKFS" "$file"
	check "$name signature: refused without -f, named" eval '[ $rc -ne 0 ] && has "$ERR" "$name"'
	check "$name signature: file untouched" [ "$(sum "$file")" = "$b" ]
	run "$MKFS" -q -f "$file"
	check "$name signature: -f formats" [ $rc -eq 0 ]
}
F=$DIR/sig
sig "ext2/ext3/ext4" "$F" put "$F" 1080 '\123\357'
sig "XFS" "$F" put "$F" 0 'XFSB'
sig "btrfs" "$F" put "$F" 65600 '_BHRfS_M'
sig "swap" "$F" put "$F" 4086 'SWAPSPACE2'
sig "swap" "$F" put "$F" 4086 'SWAP-SPACE'
if command -v mkfs.ext4 >/dev/null 2>&1; then
	sig "ext2/ext3/ext4" "$F" eval 'mkfs.ext4 -q -F "$F" >/dev/null 2>&1'
else
	echo "# mkfs.ext4 not found: real ext4 image not tried"
fi
truncate -s 16M "$DIR/clean"
run "$MKFS" -q "$DIR/clean"
check "a zeroed file is formatted without -f" [ $rc -eq 0 ]

# growing a file: -s larger than the file
truncate -s 8M "$DIR/grow"
run "$MKFS" -q -s 32M "$DIR/grow"
check "-s grows an existing smaller file" \
	eval '[ $rc -eq 0 ] && [ "$(stat -c %s "$DIR/grow")" = 33554432 ]'
run "$MKFS" -q -f -s 16M "$DIR/grow"
check "-s smaller than the file is refused" eval '[ $rc -ne 0 ] && has "$ERR" "larger than"'

# ---- damage ---------------------------------------------------------------------------------
D=$DIR/damaged
run "$MKFS" -q -s 64M -L dmg "$D"
dd if=/dev/urandom of="$D" bs=4096 count=1 conv=notrunc status=none
run "$CTL" info "$D"
check "primary destroyed: info exits 2" [ $rc -eq 2 ]
check "primary destroyed: info says the primary is damaged and uses the secondary" \
	eval 'has "$OUT" "^primary sb: +block 0: DAMAGED" && has "$OUT" "^secondary sb: +block 16383: valid.*in use" && has "$OUT" "^label: +\"dmg\""'
check "primary destroyed: the message names the primary" has "$ERR" "primary superblock \(block 0\) is damaged"
dd if=/dev/urandom of="$D" bs=4096 seek=16383 count=1 conv=notrunc status=none
run "$CTL" info "$D"
check "both superblocks destroyed: info exits 2" [ $rc -eq 2 ]
check "both superblocks destroyed: info says no valid superblock" has "$ERR" "no valid superblock"
before=$(sum "$D")
run "$CTL" info "$D"
check "info does not write to a damaged pool" [ "$(sum "$D")" = "$before" ]

run "$MKFS" -q -f -s 64M "$D"
put "$D" 200 '\377'     # a flipped byte inside the primary's checksummed area
run "$CTL" info "$D"
check "a flipped byte in the primary: exit 2, checksum mismatch named" \
	eval '[ $rc -eq 2 ] && has "$OUT" "DAMAGED: checksum mismatch"'
run "$MKFS" -q -f -s 64M "$D"
dd if=/dev/urandom of="$D" bs=4096 seek=1 count=1 conv=notrunc status=none
run "$CTL" info "$D"
check "a destroyed state block: exit 2, state block named" \
	eval '[ $rc -eq 2 ] && has "$ERR" "state block"'
run "$MKFS" -q -f -s 64M "$D"
dd if=/dev/urandom of="$D" bs=4096 seek=2 count=1 conv=notrunc status=none
run "$CTL" info "$D"
check "a destroyed log header: exit 2, log named" eval '[ $rc -eq 2 ] && has "$ERR" "log header"'
run "$MKFS" -q -f -s 64M "$D"
bm=$("$CTL" info "$D" | sed -n 's/^bitmap: *blocks \([0-9]*\)\..*/\1/p')
dd if=/dev/urandom of="$D" bs=4096 seek="$bm" count=1 conv=notrunc status=none
run "$CTL" info "$D"
check "a destroyed bitmap block: exit 2, bitmap named" eval '[ $rc -eq 2 ] && has "$ERR" "bitmap"'

truncate -s 16M "$DIR/zero"
run "$CTL" info "$DIR/zero"
check "info on a file that is no pool exits 2 and says so" \
	eval '[ $rc -eq 2 ] && has "$ERR" "neither copy found"'
run "$CTL" info "$DIR/nonexistent"
check "info on a missing file exits 1" eval '[ $rc -eq 1 ] && has "$ERR" "cannot open"'
: >"$DIR/empty"
run "$CTL" info "$DIR/empty"
check "info on an empty file exits 1" [ $rc -eq 1 ]

# ---- a pool in use ----------------------------------------------------------------------------
if command -v flock >/dev/null 2>&1; then
	U=$DIR/inuse
	run "$MKFS" -q -s 64M "$U"
	# The subshell takes the lock on its fd 9 and becomes the sleep that holds it.
	( exec 9<"$U"; flock -x 9; exec sleep 30 ) >/dev/null 2>&1 &
	holder=$!
	for _ in $(seq 50); do
		flock -n "$U" true 2>/dev/null || break
		sleep 0.1
	done
	run "$CTL" info "$U"
	check "info works on a locked (mounted) pool and says it is in use" \
		eval '[ $rc -eq 0 ] && has "$OUT" "^in use: +yes"'
	before=$(sum "$U")
	run "$MKFS" -f "$U"
	check "mkfs -f refuses a pool in use" \
		eval '[ $rc -ne 0 ] && has "$ERR" "in use" && [ "$(sum "$U")" = "$before" ]'
	kill "$holder" 2>/dev/null
	wait "$holder" 2>/dev/null
else
	echo "# flock(1) not found: in-use checks skipped"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
