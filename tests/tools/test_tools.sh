#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
#
# The command-line tools on real pool files: mkfs.pmfuse, pmfusectl info and fsck.pmfuse.
# Usage: test_tools.sh PATH/TO/mkfs.pmfuse PATH/TO/pmfusectl
# fsck.pmfuse is taken from the directory of mkfs.pmfuse, the daemon (for pools populated
# through a real mount; those checks are skipped without root, /dev/fuse or the daemon) from
# ../src/fuse/pmfuse next to it.
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
daemon_pid=
# Mounts under $DIR go first (lazily, whatever state their daemon is in), then the daemon,
# then the files.
cleanup() {
	local m
	for m in $(awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts 2>/dev/null); do
		fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	if [ -n "$daemon_pid" ]; then
		kill -9 "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

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

# ---- log lanes ---------------------------------------------------------------------------------
run "$MKFS" -s 64M -l 0 "$DIR/lanes"
check "mkfs.pmfuse -l 0 exits 1 and names the option" eval '[ $rc -eq 1 ] && has "$ERR" "lane"'
run "$MKFS" -s 64M -l 4 "$DIR/lanes"
check "mkfs.pmfuse -l 4 makes a log of 4 lanes of 32 blocks" \
	eval '[ $rc -eq 0 ] && has "$OUT" "^log += start=2 +blocks=128 lanes=4$"'
run "$CTL" info "$DIR/lanes"
check "info shows the lanes and their feature" \
	eval 'has "$OUT" "^log: +blocks 2\.\.129 \(128\) in 4 lanes$" && has "$OUT" "incompat 0x0{14}10 \(log_lanes\)"'
rm -f "$DIR/lanes"

# ---- a 1 GiB pool ------------------------------------------------------------------------------
# one lane, as before lanes: the features checked below are the same whatever the CPU count
POOL=$DIR/pool
run "$MKFS" -s 1G -l 1 -L tools-test "$POOL"
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

# ---- fsck.pmfuse ------------------------------------------------------------------------------
FSCK=$(dirname "$MKFS")/fsck.pmfuse
DAEMON=$(dirname "$MKFS")/../src/fuse/pmfuse
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || echo python3)

# The helper that damages pools precisely: finds tree nodes and records through the state
# block (doc/format.md), changes a field, and reseals the block's crc32c, so that what fsck sees
# is the semantic damage alone.
POKE=$DIR/pmpoke.py
cat >"$POKE" <<'EOF'
"""pmpoke.py POOL COMMAND ARGS: edits a pmfuse pool in place; prints the block it changed.
  root TREE                     top node of state root TREE (0 inodes, 1 refcount, 2 orphans)
  set-inode INO OFF FMT VALUE   struct-packs VALUE at byte OFF of inode INO's record, reseals
  dirent DIR NAME OFF FMT VALUE the same for the entry NAME of directory DIR (either tree)
  bitmap BLOCK 0|1              sets the bitmap bit of BLOCK, reseals
  log-entry [LANE]              appends a valid log entry whose pre-image is what is there now
                                (in lane LANE of a log in lanes, 0 by default)
Exits 1 when what it looks for is not there."""
import struct
import sys

T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)


def crc32c(crc, data):
    """pmfuse_crc32c(crc, data): standard CRC-32C, continuing crc."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class Pool:
    def __init__(self, path):
        self.f = open(path, 'r+b')
        self.sb = self.read(0, 512)
        self.bs = struct.unpack_from('<I', self.sb, 12)[0]

    def read(self, off, n):
        self.f.seek(off)
        return self.f.read(n)

    def block(self, blk):
        return bytearray(self.read(blk * self.bs, self.bs))

    def reseal(self, blk, b):
        b[4:8] = bytes(4)
        b[4:8] = struct.pack('<I', crc32c(0, bytes(b)))
        self.f.seek(blk * self.bs)
        self.f.write(bytes(b))
        print(blk)

    def root(self, tree):
        return struct.unpack_from('<Q', self.block(1), 32 + 32 * tree)[0]

    def records(self, blk, rec_len):
        """(block, bytes, offset) of every record below node blk, in key order."""
        b = self.block(blk)
        level, n = struct.unpack_from('<HH', b, 24)
        for i in range(n):
            if level:
                yield from self.records(struct.unpack_from('<Q', b, 40 + 16 * i)[0], rec_len)
            else:
                yield blk, b, 32 + rec_len * i

    def inode(self, ino):
        for r in self.records(self.root(0), 256):
            if struct.unpack_from('<Q', r[1], r[2])[0] == ino:
                return r
        sys.exit(1)


def main():
    p, cmd, a = Pool(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if cmd == 'root':
        print(p.root(int(a[0])))
    elif cmd == 'set-inode':
        blk, b, off = p.inode(int(a[0]))
        struct.pack_into(a[2], b, off + int(a[1]), int(a[3], 0))
        p.reseal(blk, b)
    elif cmd == 'dirent':
        _, ib, ioff = p.inode(int(a[0]))
        name = a[1].encode()
        # the long-entry tree (root at 128, 280-byte records, name at 24) and, with the
        # SHORT_NAMES flag (bit 3 at 120), the short one (root at 200, 64 bytes, name at 18);
        # key, ino, type and namelen are at the same offsets in both
        trees = [(128, 280, 24)]
        if struct.unpack_from('<I', ib, ioff + 120)[0] & 8:
            trees.append((200, 64, 18))
        for root, rec_len, noff in trees:
            top = struct.unpack_from('<Q', ib, ioff + root)[0]
            for blk, b, off in p.records(top, rec_len) if top else []:
                if b[off + 17] == len(name) and b[off + noff:off + noff + len(name)] == name:
                    struct.pack_into(a[3], b, off + int(a[2]), int(a[4], 0))
                    p.reseal(blk, b)
                    return
        sys.exit(1)
    elif cmd == 'bitmap':
        blk, bits = int(a[0]), (p.bs - 64) * 8
        bm = struct.unpack_from('<Q', p.sb, 152)[0] + blk // bits
        b = p.block(bm)
        byte, mask = 64 + blk % bits // 8, 1 << (blk % 8)
        b[byte] = b[byte] | mask if a[1] == '1' else b[byte] & ~mask
        p.reseal(bm, b)
    elif cmd == 'log-entry':
        lanes = max(struct.unpack_from('<I', p.sb, 224)[0], 1)
        lane = int(a[0]) if a else 0
        log = struct.unpack_from('<Q', p.sb, 136)[0]
        log += lane * (struct.unpack_from('<Q', p.sb, 144)[0] // lanes)
        gen = struct.unpack_from('<Q', p.block(log), 32)[0]
        off = p.bs + 312 + 8 * lane     # state block padding: its rollback changes nothing
        data = p.read(off, 8)
        head = struct.pack('<QQI', gen, off, len(data))
        p.f.seek((log + 1) * p.bs)
        p.f.write(head + struct.pack('<I', crc32c(crc32c(0, head), data)) + data)
        print(log + 1)
    else:
        sys.exit('unknown command ' + cmd)


main()
EOF
poke() { "$PY" "$POKE" "$@"; }

# fsck_run POOL ARGS...: runs fsck.pmfuse ARGS POOL as run does; $fsck_same is 1 when the
# pool's bytes are the same afterwards.
fsck_run() {
	local pool=$1
	shift
	local b
	b=$(sum "$pool")
	run "$FSCK" "$@" "$pool"
	fsck_same=0
	[ "$(sum "$pool")" = "$b" ] && fsck_same=1
}

# repaired POOL WHAT: fsck -y repairs POOL (exit 1, something said fixed), then a second
# fsck -f -n finds it clean (exit 0).
repaired() {
	fsck_run "$1" -f -y
	check "$2: fsck -y repairs it (exit 1)" \
		eval '[ $rc -eq 1 ] && has "$OUT" "^fixed: " && ! has "$OUT" "^left: "'
	[ $rc -eq 1 ] || sed 's/^/#   /' "$OUT" | head -20
	fsck_run "$1" -f -n
	check "$2: after fsck -y, fsck -f -n is clean" [ $rc -eq 0 ]
	[ $rc -eq 0 ] || sed 's/^/#   /' "$OUT" | head -20
}

if [ ! -x "$FSCK" ]; then
	not_ok "fsck.pmfuse is built next to mkfs.pmfuse ($FSCK)"
else
	run "$FSCK" --help
	check "fsck.pmfuse --help exits 0 and names the options" \
		eval '[ $rc -eq 0 ] && has "$OUT" "^Usage: fsck.pmfuse" && has "$OUT" "--force"'
	run "$FSCK" --version
	check "fsck.pmfuse --version exits 0 with a version" \
		eval '[ $rc -eq 0 ] && has "$OUT" "[0-9]+\.[0-9]+"'
	run "$FSCK"
	check "fsck.pmfuse without POOL exits 16 with usage" \
		eval '[ $rc -eq 16 ] && has "$ERR" "Usage"'
	run "$FSCK" -Z "$POOL"
	check "fsck.pmfuse with a bad option exits 16" [ $rc -eq 16 ]
	run "$FSCK" -n -y "$POOL"
	check "fsck.pmfuse -n -y exits 16 (one mode at most, as e2fsck)" [ $rc -eq 16 ]
	run "$FSCK" "$POOL" "$POOL"
	check "fsck.pmfuse with two pools exits 16" [ $rc -eq 16 ]
	run "$FSCK" "$DIR/nonexistent"
	check "fsck.pmfuse on a missing file exits 8" \
		eval '[ $rc -eq 8 ] && has "$ERR" "cannot open"'
	run "$FSCK" "$DIR/zero"
	check "fsck.pmfuse on a file that is no pool exits 8 and says so" \
		eval '[ $rc -eq 8 ] && has "$ERR" "no pmfuse superblock"'
	run "$FSCK" "$DIR/empty"
	check "fsck.pmfuse on an empty file exits 8" [ $rc -eq 8 ]

	# a fresh pool
	F=$DIR/fsck-fresh
	"$MKFS" -q -s 64M "$F"
	fsck_run "$F"
	check "fresh pool: exit 0, clean, with a summary line" \
		eval '[ $rc -eq 0 ] && has "$OUT" "^$F: clean, 0 inodes, [0-9]+/16384 blocks"'
	fsck_run "$F" -f
	check "fresh pool, -f: exit 0, three phases, summary with counts" \
		eval '[ $rc -eq 0 ] && has "$OUT" "^Phase 1: " && has "$OUT" "^Phase 2: " && has "$OUT" "^Phase 3: " && has "$OUT" "^$F: 0 files, 0 directories, [0-9]+/16384 blocks, 0 shared"'
	check "fsck does not change a fresh pool" [ $fsck_same = 1 ]
	fsck_run "$F" -f -q
	check "fresh pool, -f -q: exit 0 and prints nothing" eval '[ $rc -eq 0 ] && [ ! -s "$OUT" ]'
	fsck_run "$F" -f -y
	check "-y on a sound pool: exit 0, nothing repaired, the pool unchanged" \
		eval '[ $rc -eq 0 ] && ! has "$OUT" "^fixed: " && [ $fsck_same = 1 ]'

	# a damaged secondary superblock: a problem (a mount would rewrite it)
	G=$DIR/fsck-sb2
	cp "$F" "$G"
	put "$G" $((16383 * 4096 + 200)) '\377'
	fsck_run "$G"
	check "damaged secondary superblock: exit 4, named" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^secondary superblock \(block 16383\) is damaged: checksum mismatch" && has "$OUT" "1 problem found"'
	check "fsck does not change a damaged pool" [ $fsck_same = 1 ]

	# interrupted: stdout is a pipe kept full, so fsck blocks in its first write; SIGINT
	mkfifo "$DIR/fifo"
	exec 3<>"$DIR/fifo"
	dd if=/dev/zero of=/dev/fd/3 bs=4096 count=64 oflag=nonblock status=none 2>/dev/null
	"$FSCK" -f "$F" >&3 2>"$ERR" &
	fpid=$!
	for _ in $(seq 50); do
		grep -q pipe_write "/proc/$fpid/wchan" 2>/dev/null && break
		sleep 0.1
	done
	kill -INT "$fpid"
	wait "$fpid"
	rc=$?
	exec 3>&-
	: >"$OUT"
	check "SIGINT: exit 32, says nothing was changed" \
		eval '[ $rc -eq 32 ] && has "$ERR" "interrupted; nothing was changed"'

	if command -v flock >/dev/null 2>&1; then
		( exec 9<"$F"; flock -x 9; exec sleep 30 ) >/dev/null 2>&1 &
		holder=$!
		for _ in $(seq 50); do
			flock -n "$F" true 2>/dev/null || break
			sleep 0.1
		done
		run "$FSCK" "$F"
		# (/proc/locks names flock(1), which took the lock and exited: no name to check)
		check "a pool locked by another process: exit 8, in use" \
			eval '[ $rc -eq 8 ] && has "$ERR" "in use by process [0-9]+"'
		kill "$holder" 2>/dev/null
		wait "$holder" 2>/dev/null
	fi
fi

# ---- fsck.pmfuse on a pool populated through a real mount -------------------------------------
why=
if [ ! -x "$FSCK" ]; then why="fsck.pmfuse is not built"
elif [ ! -x "$DAEMON" ]; then why="the daemon is not built ($DAEMON)"
elif [ "$(id -u)" != 0 ]; then why="not root"
elif [ ! -c /dev/fuse ]; then why="no /dev/fuse"
elif ! command -v fusermount3 >/dev/null 2>&1; then why="no fusermount3"
elif ! "$PY" -c 'import os; os.setxattr' 2>/dev/null; then why="no python3 with os.setxattr"
fi

# mount POOL MNT: starts the daemon in the foreground (its pid in $daemon_pid) and waits for
# the mount. unmount MNT: a clean unmount, then waits for the daemon to exit.
mount_pool() {
	mkdir -p "$2"
	"$DAEMON" -f "$1" "$2" 2>>"$DIR/daemon.log" &
	daemon_pid=$!
	for _ in $(seq 100); do
		mountpoint -q "$2" && return 0
		kill -0 "$daemon_pid" 2>/dev/null || break
		sleep 0.1
	done
	return 1
}
unmount_pool() {
	fusermount3 -u "$1"
	wait "$daemon_pid"
	daemon_pid=
}

M=$DIR/mnt
P=$DIR/fsck-pop
if [ -n "$why" ]; then
	echo "# fsck.pmfuse on a mounted-and-populated pool skipped: $why"
elif ! "$MKFS" -q -s 64M "$P" || ! mount_pool "$P" "$M"; then
	not_ok "the daemon mounts a fresh pool"
	sed 's/^/#   daemon: /' "$DIR/daemon.log" | tail -20
else
	# 5 directories (root, a, a/b, a/b/c, d); 5 other inodes: a/f1 (also d/hl), a/big,
	# d/copy (a reflinked copy of a/big: cp uses copy_file_range), d/sl, fifo
	mkdir -p "$M/a/b/c" "$M/d" && echo hello >"$M/a/f1" &&
		dd if=/dev/urandom of="$M/a/big" bs=1M count=3 status=none &&
		ln "$M/a/f1" "$M/d/hl" && ln -s ../a/f1 "$M/d/sl" && cp "$M/a/big" "$M/d/copy" &&
		mkfifo "$M/fifo" &&
		"$PY" - "$M" <<'EOF'
import os, struct, sys
m = sys.argv[1]
os.setxattr(m + '/a/big', 'user.small', b'x' * 100)
os.setxattr(m + '/a/big', 'user.large', b'y' * 3000)       # a value block of its own
# an access ACL: user::rw- user:1000:rw- group::r-- mask::rw- other::r--
acl = struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, p, i) for t, p, i in
    [(1, 6, 0xffffffff), (2, 6, 1000), (4, 4, 0xffffffff), (0x10, 6, 0xffffffff),
     (0x20, 4, 0xffffffff)])
os.setxattr(m + '/a/f1', 'system.posix_acl_access', acl)
EOF
	check "populating the mount" [ $? -eq 0 ]
	ino_f1=$(stat -c %i "$M/a/f1")
	ino_big=$(stat -c %i "$M/a/big")
	run "$FSCK" -f "$P"
	check "a mounted pool: exit 8, the daemon named as the holder" \
		eval '[ $rc -eq 8 ] && has "$ERR" "in use by process $daemon_pid \(pmfuse\)"'
	unmount_pool "$M"

	fsck_run "$P"
	check "populated, unmounted pool: exit 0, clean" eval '[ $rc -eq 0 ] && has "$OUT" ": clean, 10 inodes"'
	fsck_run "$P" -f -v
	check "populated pool, -f: exit 0 with no problem" eval '[ $rc -eq 0 ] && ! has "$OUT" "problem"'
	check "populated pool: the summary counts what was created" \
		has "$OUT" "^$P: 5 files, 5 directories, [0-9]+/16384 blocks, [1-9][0-9]* shared$"
	check "populated pool, -v: types, hard links and shared blocks counted" \
		eval 'has "$OUT" "^ +3 regular files$" && has "$OUT" "^ +1 symbolic links$" && has "$OUT" "^ +1 fifos$" && has "$OUT" "^ +1 links beyond the first" && has "$OUT" "^ +768 shared data blocks"'
	check "fsck does not change a populated pool" [ $fsck_same = 1 ]

	# damage, one kind per copy of the pool
	Q=$DIR/fsck-dmg
	cp "$P" "$Q"
	blk=$(poke "$Q" root 0)
	put "$Q" $((blk * 4096 + 1000)) '\125'
	fsck_run "$Q" -f
	check "a flipped byte in the inode table's node: exit 4, node and checksum named" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^inode table: inodes tree \(owner 2\): node $blk .*checksum mismatch"'
	check "fsck leaves the damaged pool as it was" [ $fsck_same = 1 ]
	fsck_run "$Q" -f -q
	check "-q prints the problem and nothing else" \
		eval '[ $rc -eq 4 ] && has "$OUT" "checksum mismatch" && [ "$(wc -l <"$OUT")" = 1 ]'
	repaired "$Q" "inode table node damaged"

	cp "$P" "$Q"
	poke "$Q" set-inode "$ino_f1" 16 '<I' 0o170644 >/dev/null
	fsck_run "$Q" -f
	check "a damaged inode (resealed, impossible type): exit 4, the inode named" \
		eval '[ $rc -eq 4 ] && has "$OUT" "record [0-9]+ is malformed \(inode $ino_f1: unknown file type in mode 0170644\)"'
	repaired "$Q" "malformed inode"

	cp "$P" "$Q"
	poke "$Q" set-inode "$ino_f1" 28 '<I' 5 >/dev/null
	fsck_run "$Q" -f
	check "a wrong link count (resealed): exit 4, count and names given" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^inode $ino_f1 \(regular file\): link count 5, but 2 entries name it$" && has "$OUT" "1 problem found"'
	check "fsck leaves that pool as it was" [ $fsck_same = 1 ]
	repaired "$Q" "wrong link count"

	cp "$P" "$Q"
	poke "$Q" set-inode "$ino_f1" 28 '<I' 5 >/dev/null
	fsck_run "$Q" -f -p
	check "-p fixes a wrong link count, which needs no decision (exit 1)" \
		eval '[ $rc -eq 1 ] && has "$OUT" "^fixed: inode $ino_f1: set link count 5 -> 2$"'
	fsck_run "$Q" -f -n
	check "after -p, fsck -f -n is clean" [ $rc -eq 0 ]

	cp "$P" "$Q"
	poke "$Q" dirent 1 fifo 8 '<Q' 999999 >/dev/null
	fsck_run "$Q" -f -p
	check "-p leaves a dangling entry to -y (exit 4, says so)" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^left: directory 1: entry for inode 999999 names an inode that does not exist: needs -y"'
	fsck_run "$Q" -f -n
	check "-p left the entry in place" has "$OUT" "names inode 999999, which does not exist"
	cp "$P" "$Q"
	poke "$Q" dirent 1 fifo 8 '<Q' 999999 >/dev/null
	fsck_run "$Q" -f
	check "a dangling entry (resealed): exit 4, entry and inode named" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^directory 1: entry \"fifo\" names inode 999999, which does not exist$" && has "$OUT" "\(fifo\): link count 1, but 0 entries name it"'
	repaired "$Q" "dangling entry"

	cp "$P" "$Q"
	poke "$Q" dirent 1 a 16 '<B' 8 >/dev/null
	fsck_run "$Q" -f
	check "an entry of the wrong type (resealed): exit 4, named" \
		eval '[ $rc -eq 4 ] && has "$OUT" "entry \"a\" has type regular file, but inode [0-9]+ is a directory"'
	repaired "$Q" "entry of the wrong type"

	cp "$P" "$Q"
	poke "$Q" set-inode "$ino_big" 40 '<Q' 5 >/dev/null
	fsck_run "$Q" -f
	check "a block count that is not the extents' (resealed): exit 4, both counts named" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^inode $ino_big \(regular file\): its extents map 768 blocks, the inode says 5$"'
	repaired "$Q" "wrong block count"

	cp "$P" "$Q"
	poke "$Q" bitmap 16382 1 >/dev/null
	fsck_run "$Q" -f
	check "a leaked block (bitmap bit set, resealed): exit 4, block accounting says so" \
		eval '[ $rc -eq 4 ] && has "$OUT" "^block accounting: [0-9]+ blocks in use, [0-9]+ metadata \+ [0-9]+ data found"'
	repaired "$Q" "leaked block"

	cp "$P" "$Q"
	poke "$Q" log-entry >/dev/null
	fsck_run "$Q"
	check "a pending transaction: needs log recovery, not an error (exit 0), checked anyway" \
		eval '[ $rc -eq 0 ] && has "$OUT" "needs log recovery \(mount once to replay it\)" && has "$OUT" "^Phase 3" && has "$OUT" "^$Q: 5 files, 5 directories"'
	check "fsck leaves the pending transaction in the log" [ $fsck_same = 1 ]
	fsck_run "$Q" -n -f
	check "-n with a pending transaction only reports it (exit 0)" [ $rc -eq 0 ]
	fsck_run "$Q" -p
	check "-p recovers a pending transaction, as mount would (exit 1)" \
		eval '[ $rc -eq 1 ] && has "$OUT" "^fixed: log: an unfinished transaction was rolled back"'
	fsck_run "$Q" -f -n
	check "after recovery by fsck -p, fsck -f -n is clean" [ $rc -eq 0 ]

	# pending transactions in two lanes of a log in four
	run "$MKFS" -q -f -s 64M -l 4 "$Q"
	poke "$Q" log-entry 1 >/dev/null && poke "$Q" log-entry 3 >/dev/null
	fsck_run "$Q"
	check "pending transactions in two lanes: needs log recovery, named in the notes (exit 0)" \
		eval '[ $rc -eq 0 ] && has "$OUT" "needs log recovery" && has "$OUT" "2 unfinished transactions"'
	check "fsck leaves the lanes' transactions in the log" [ $fsck_same = 1 ]
	fsck_run "$Q" -p
	check "-p rolls back every lane, as mount would (exit 1)" \
		eval '[ $rc -eq 1 ] && has "$OUT" "^fixed: log: an unfinished transaction was rolled back"'
	fsck_run "$Q" -f -n
	check "after that, fsck -f -n is clean" [ $rc -eq 0 ]

	# an orphan: a file removed while open when the daemon dies
	if mount_pool "$P" "$M"; then
		echo data >"$M/doomed"
		exec 4<"$M/doomed"
		rm "$M/doomed"
		kill -9 "$daemon_pid"
		wait "$daemon_pid" 2>/dev/null
		daemon_pid=
		exec 4<&-
		fusermount3 -uz "$M" 2>/dev/null || umount -l "$M"
		fsck_run "$P" -v
		check "an orphan after a crash: not clean, checked, exit 0, on the orphan list" \
			eval '[ $rc -eq 0 ] && has "$OUT" "not cleanly unmounted" && has "$OUT" "^ +1 orphans"'
	else
		not_ok "the daemon mounts the populated pool again"
	fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
