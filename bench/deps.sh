#!/usr/bin/env bash
# Installs the Debian 12 packages that only the benchmarks need, if any is missing:
#   fio       the I/O workloads of bench/run and bench/reflink (sequential 1 MiB, random 4 KiB,
#             1 and 2 jobs, JSON output): the standard tool, the same job file on every
#             filesystem, so no home-made I/O loop to trust or to explain;
#   xfsprogs  mkfs.xfs for the peer of bench/reflink and bench/dedupe: XFS with reflink=1 on a
#             loop device; xfs_io's dedupe command;
#   duperemove  bench/dedupe's peer for a dedupe scan: the usual dedupe tool for XFS and Btrfs.
# Kept apart from tools/deps.sh: building and testing pmfuse needs none of them.
set -euo pipefail

BENCH_PACKAGES=(fio xfsprogs duperemove)

missing=()
for p in "${BENCH_PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "bench: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
	echo "bench: run as root, or install: apt-get install ${missing[*]}" >&2
	exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
