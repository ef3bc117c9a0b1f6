#!/usr/bin/env bash
# Installs the Debian 12 packages pmfuse needs to build, test and run, if any is missing.
# Sourced by tools/demo and tools/test; run it alone to install without building. Shell options
# are set only when it runs alone: sourced, `set -e` would end tools/test at the first failing
# suite and skip the sanitizer and fuzz builds.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -euo pipefail
fi

PMFUSE_PACKAGES=(
	gcc pkg-config meson ninja-build     # build
	libpmem2-dev                         # pool mapping (PMDK)
	libfuse3-dev fuse3                   # the daemon and fusermount3
	liburcu-dev                          # lock-free inode cache
	libxxhash-dev                        # XXH3 block hashes for dedupe scans (src/fs/blockhash.c)
	libcmocka-dev                        # unit tests
	python3                              # tests/fs (standard library only)
	clang libclang-rt-14-dev             # tests/fuzz: libFuzzer is part of clang's runtime
)

pmfuse_install_deps() {
	local missing=() p
	for p in "${PMFUSE_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "pmfuse: installing ${missing[*]}" >&2
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null; then
			sudo=(sudo)
		else
			echo "pmfuse: run as root, or install: apt-get install ${missing[*]}" >&2
			return 1
		fi
	fi
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	pmfuse_install_deps
fi
