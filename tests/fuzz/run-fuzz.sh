#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Runs a libFuzzer target for a bounded number of inputs (PMFUSE_FUZZ_RUNS, default 10000) from
# a fixed seed (PMFUSE_FUZZ_SEED, default 1), and fails if it finds a crash, a sanitizer report
# or a leak. The corpus starts with one input per pool block (a few bytes overwritten inside it,
# every other one resealed), so that every kind of metadata block is damaged from the start;
# PMFUSE_FUZZ_CORPUS keeps the corpus in a directory of yours for later runs. Prints libFuzzer's
# final statistics.
set -uo pipefail
target=$1
runs=${PMFUSE_FUZZ_RUNS:-10000}
seed=${PMFUSE_FUZZ_SEED:-1}
work=$(mktemp -d "${TMPDIR:-/tmp}/pmfuse-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
corpus=${PMFUSE_FUZZ_CORPUS:-$work/corpus}
mkdir -p "$corpus"
# input format: flags byte (bit 0: reseal), then (le32 offset, u8 length, bytes) patches
python3 - "$corpus" <<'PY'
import os, random, struct, sys
rng = random.Random(1)
for b in range(512):                       # fuzz_pool's 2 MiB template: 512 blocks of 4 KiB
    off = b * 4096 + rng.randrange(0, 256)
    data = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8))))
    body = bytes([b & 1 ^ 1]) + struct.pack("<IB", off, len(data)) + data
    with open(os.path.join(sys.argv[1], f"seed-block-{b:03d}"), "wb") as f:
        f.write(body)
PY
"$target" -runs="$runs" -seed="$seed" -max_len=512 -print_final_stats=1 \
	-artifact_prefix="$work/" "$corpus" >"$work/log" 2>&1
rc=$?
tail -n 25 "$work/log"
if [ $rc -ne 0 ]; then
	for f in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
		[ -e "$f" ] || continue
		keep=${PMFUSE_FUZZ_ARTIFACTS:-/tmp}/$(basename "$target")-$(basename "$f")
		cp "$f" "$keep" && echo "input that failed: $keep (replay: $target $keep)"
	done
	echo "$(basename "$target"): FAILED (libFuzzer exit $rc)"
	exit 1
fi
echo "$(basename "$target"): $runs inputs, no crash, leak or sanitizer report"
