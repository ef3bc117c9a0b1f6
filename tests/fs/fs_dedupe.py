#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Dedupe through the kernel: PMFUSE_IOC_DEDUPE_RANGE (FIDEDUPERANGE with one destination,
issued on the source) and `pmfusectl dedupe`.

The ioctl: equal ranges end up sharing the source's blocks (SAME, bytes_deduped the length done,
free space back, contents, size and mtime of the destination unchanged), one different byte
anywhere (also the last byte of a partial EOF block) gives DIFFERS and changes nothing; the
range rules (aligned offsets, both ranges inside their files, whole blocks unless both end at
EOF, 16 MiB per call); destination errors in the status (-EBADF, -EISDIR, -EINVAL, -EXDEV,
-EPERM for an unprivileged caller with a read-only descriptor of another's file) and source
errors as the ioctl's (EBADF, EISDIR, ENOTTY, EINVAL); zero blocks over a source hole become a
hole; dedupe inside one file; copy-on-write after a dedupe, and a remount.

PMFUSE_IOC_DEDUPE_BLOCKS (range dedupe): partly equal files share exactly their equal blocks,
with holes on either side and an EOF tail, and the counts say so; every refused case (ranges
past EOF, huge values, a directory, another filesystem, another's file, flags) changes nothing.
PMFUSE_IOC_BLOCK_HASHES: one entry per mapped block, equal blocks hash equal, zeros flagged.

pmfusectl dedupe SRC DST (also --range) and --scan PATH...: the summary figures are exact, the
space comes back, no file changes, a second run has nothing to do, bytes written through a
mapping are handled, a writer hammering the destination during the dedupe loses no write,
--scan takes the block with the most references as a group's source (a partly deduped tree
converges), --dry-run changes nothing,
progress shows only on a terminal, and the errors say what is wrong. Most tests also check
reflinkio's sharing invariant over every file of the mount (each file once, whatever its
names)."""

import sys
sys.dont_write_bytecode = True   # no __pycache__ in the source tree  # noqa: E402

import errno
import fcntl
import mmap
import os
import pty
import select
import struct
import subprocess
import time

import pmfs
from pmfs import (check, eq, expect_errno, test, write_file, read_file, pwrite_all, run_as,
                  Failure)
import threading

from reflinkio import (dedupe, PMFUSE_IOC_DEDUPE_RANGE, DEDUPE_BLOCKS_FMT,
                       PMFUSE_IOC_DEDUPE_BLOCKS, PMFUSE_IOC_BLOCK_HASHES, HASH_FMT,
                       HASHES_HDR_FMT, HASHES_SIZE, HASH_ZERO, PMFUSE_IOC_BLOCK_HASHES2,
                       HASH_RUN_FMT, HASHES2_HDR_FMT, HASHES2_SIZE, HASHES2_WORDS,
                       CLONE_RANGE_FMT, PMFUSE_IOC_CLONE_RANGE, clone_file, check_sharing,
                       all_files,
                       block_size, ctl, parse_stat, make_data, write_big, same_file, data_map,
                       to_pool, refcounts_by_block, COW_EXTENT_BLOCKS)

MiB = 1 << 20
KiB = 1 << 10
DEDUPE_MAX = 16 * MiB  # the daemon's cap per call (PMFUSE_DEDUPE_MAX)
SAME, DIFFERS = 0, 1
META_SLACK = 4         # blocks the refcount tree and extent maps may take (1 seen) or give back


def check_mount_sharing(m, what):
    """reflinkio's invariant over every file of the mount, each file once (by one of its
    names: a hard link maps nothing more)."""
    seen, paths = set(), []
    for p in all_files(m.mnt):
        st = os.stat(p)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            paths.append(p)
    return check_sharing(paths, what)


def dedupe_blocks(src_fd, dst_fd, src_off, length, dst_off, flags=0, reserved=0):
    """PMFUSE_IOC_DEDUPE_BLOCKS on src_fd: (compared, deduped, same, differ); errors raise
    OSError."""
    to_pool(src_fd, dst_fd)
    buf = bytearray(struct.pack(DEDUPE_BLOCKS_FMT, src_off, length, dst_fd, dst_off, flags,
                                reserved, 7, 7, 7, 7, 0, 0, 0))
    fcntl.ioctl(src_fd, PMFUSE_IOC_DEDUPE_BLOCKS, buf, True)
    v = struct.unpack(DEDUPE_BLOCKS_FMT, buf)
    eq(v[:6], (src_off, length, dst_fd, dst_off, flags, reserved),
       "input fields of the range dedupe argument as the daemon returned them")
    return v[6:10]


def block_hashes(fd, start=0, flags=0, reserved=0):
    """One PMFUSE_IOC_BLOCK_HASHES call: (next, block_size, [(logical, physical, hash,
    refcount, flags)]); errors raise OSError."""
    to_pool(fd)
    buf = bytearray(HASHES_SIZE)
    struct.pack_into(HASHES_HDR_FMT, buf, 0, start, flags, reserved, 0, 0, 0, 0, 0)
    fcntl.ioctl(fd, PMFUSE_IOC_BLOCK_HASHES, buf, True)
    _, _, _, nxt, count, bs, _, _ = struct.unpack_from(HASHES_HDR_FMT, buf, 0)
    hdr, one = struct.calcsize(HASHES_HDR_FMT), struct.calcsize(HASH_FMT)
    return nxt, bs, [struct.unpack_from(HASH_FMT, buf, hdr + i * one) for i in range(count)]


def block_hashes2(fd, start=0, end=0, flags=0, reserved=0):
    """One PMFUSE_IOC_BLOCK_HASHES2 call: (next, block_size, runs, [(logical, physical, hash,
    refcount)] per block of the runs); errors raise OSError."""
    to_pool(fd)
    buf = bytearray(HASHES2_SIZE)
    struct.pack_into(HASHES2_HDR_FMT, buf, 0, start, end, flags, reserved, 0, 0, 0, 0, 0,
                     0, 0)
    fcntl.ioctl(fd, PMFUSE_IOC_BLOCK_HASHES2, buf, True)
    _, _, _, _, nxt, nruns, nhashes, bs, _, _, _ = struct.unpack_from(HASHES2_HDR_FMT, buf, 0)
    hdr = struct.calcsize(HASHES2_HDR_FMT)
    check(3 * nruns + nhashes <= HASHES2_WORDS, f"{nruns} runs and {nhashes} hashes fit")
    runs = [struct.unpack_from(HASH_RUN_FMT, buf, hdr + 24 * i) for i in range(nruns)]
    hashes = struct.unpack_from(f"={nhashes}Q", buf, hdr + 24 * nruns)
    eq(sum(r[2] for r in runs), nhashes, "a hash for each block of the runs")
    out, k = [], 0
    for lo, ph, n, ref in runs:
        for i in range(n):
            out.append((lo + i * bs, ph + i * bs, hashes[k], ref))
            k += 1
    return nxt, bs, runs, out


def all_hashes2(path, start=0, end=0):
    """Every block PMFUSE_IOC_BLOCK_HASHES2 lists for [start, end), and for each call the
    words its answer used (3 a run, 1 a hash) and its runs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        out, calls = [], []
        while True:
            nxt, _, runs, v = block_hashes2(fd, start, end)
            calls.append((3 * len(runs) + len(v), runs))
            out += v
            if nxt == (1 << 64) - 1 or (end and nxt >= end):
                return out, calls
            check(nxt > start, f"block hashes of {path}: next {nxt} after {start}")
            start = nxt
    finally:
        os.close(fd)


def check_runs_maximal(runs, bs, what):
    """No two neighbouring runs of one answer could have been one."""
    for a, b in zip(runs, runs[1:]):
        check(not (a[0] + a[2] * bs == b[0] and a[1] + a[2] * bs == b[1] and a[3] == b[3]),
              f"{what}: runs at blocks {a[0] // bs} and {b[0] // bs} should be one")


def all_hashes(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        out, start = [], 0
        while True:
            nxt, _, v = block_hashes(fd, start)
            out += v
            if nxt == (1 << 64) - 1:
                return out
            check(nxt > start, f"block hashes of {path}: next {nxt} after {start}")
            start = nxt
    finally:
        os.close(fd)


def dedupe_paths(src, dst, src_off, length, dst_off, dst_flags=os.O_RDWR):
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, dst_flags)
    try:
        return dedupe(s, d, src_off, length, dst_off)
    finally:
        os.close(d)
        os.close(s)


def free_blocks(m):
    return m.statfs().f_bfree


def phys_map(path):
    """{file block: pool block} of the mapped blocks."""
    return {k: v[0] for k, v in refcounts_by_block(path).items()}


def expect_freed(m, before, blocks, what):
    got = free_blocks(m) - before
    check(blocks - META_SLACK <= got <= blocks + META_SLACK,
          f"{what}: {got} blocks freed, expected {blocks} (+-{META_SLACK})")


def summary(out):
    """The 'name: N (human)' rows of pmfusectl dedupe as {name: N}."""
    rows = {}
    for line in out.splitlines():
        if ":" not in line:
            continue
        k, v = line.split(":", 1)
        w = v.split()
        if w and w[0].isdigit():
            rows[k.strip()] = int(w[0])
    return rows


def expect_summary(out, want, what):
    rows = summary(out)
    for k, v in want.items():
        check(k in rows, f"{what}: no '{k}:' row in the output:\n{out}")
        eq(rows[k], v, f"{what}: '{k}' of the summary")


def run_ctl(m, *args):
    """pmfusectl ARGS with stdout and stderr apart (stdin and stderr are no terminal)."""
    return subprocess.run([m.cfg.ctl, *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          timeout=300 * pmfs.TIME_FACTOR)


def flip(data, off):
    out = bytearray(data)
    out[off] ^= 0x5A
    return out


# ---------------------------------------------------------------------------------------------
# the ioctl


@test(size="256M")
def ioctl_number_and_same(m):
    """_IOWR(0xB7, 3, 48): equal files of an odd size dedupe whole (the partial EOF block too):
    SAME, bytes_deduped the length, every block freed, both files unchanged (contents, size,
    mtime), the destination sharing every block with the source (pmfusectl stat)."""
    eq(PMFUSE_IOC_DEDUPE_RANGE, 0xC030B703, "PMFUSE_IOC_DEDUPE_RANGE")
    bs = block_size(m)
    nblk = 64
    size = nblk * bs + 100                 # 65 blocks, the last one partial
    data = make_data(size, m.rng, stamp=1)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    write_big(b, data)
    os.utime(b, ns=(1_000_000_000, 2_000_000_123))
    st0 = os.stat(b)
    free0 = free_blocks(m)
    eq(dedupe_paths(a, b, 0, size, 0), (SAME, size), "dedupe of equal files (status, bytes)")
    expect_freed(m, free0, nblk + 1, "dedupe of 65 equal blocks")
    same_file(a, data, "source after dedupe")
    same_file(b, data, "destination after dedupe")
    st1 = os.stat(b)
    eq(st1.st_size, size, "destination size after dedupe")
    eq(st1.st_mtime_ns, 2_000_000_123, "destination mtime after dedupe")
    eq(st1.st_blocks, st0.st_blocks, "st_blocks of a dense destination after dedupe")
    pa, pb = phys_map(a), phys_map(b)
    eq(pb, pa, "pool blocks of the destination (file block: pool block) after dedupe")
    rows = parse_stat(ctl(m, "stat", "--raw", b).stdout)
    eq(sum(r[2] for r in rows), (nblk + 1) * bs, "bytes mapped per pmfusectl stat")
    check(rows and all(r[3] == 2 and r[4] for r in rows),
          f"pmfusectl stat of the destination: every extent shared twice: {rows}")
    # a second time: SAME again, nothing more to free
    free1 = free_blocks(m)
    eq(dedupe_paths(a, b, 0, size, 0), (SAME, size), "a second dedupe of the same files")
    eq(free_blocks(m), free1, "free blocks after deduping shared blocks again")
    # length 0: SAME with nothing done
    eq(dedupe_paths(a, b, 0, 0, 0), (SAME, 0), "dedupe of length 0")
    check_mount_sharing(m, "after dedupe")
    m.remount()
    same_file(b, data, "destination after remount")
    eq(phys_map(b), pa, "sharing after remount")
    eq(os.stat(b).st_mtime_ns, 2_000_000_123, "destination mtime after remount")


@test(size="256M")
def ioctl_one_byte_differs(m):
    """One different byte anywhere in the range (the first, one in the middle, the last of a
    whole block, the last of the partial EOF block) gives DIFFERS with 0 bytes, and nothing
    changes: contents, pool blocks, free space."""
    bs = block_size(m)
    size = 32 * bs + 777
    data = make_data(size, m.rng, stamp=2)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    for off in (0, 17 * bs + 1234, 32 * bs - 1, size - 1):
        other = flip(data, off)
        write_big(b, other)
        before = phys_map(b)
        free0 = free_blocks(m)
        eq(dedupe_paths(a, b, 0, size, 0), (DIFFERS, 0),
           f"dedupe with byte {off} different (status, bytes)")
        eq(free_blocks(m), free0, f"free blocks after DIFFERS (byte {off})")
        eq(phys_map(b), before, f"pool blocks of the destination after DIFFERS (byte {off})")
        same_file(b, other, f"destination after DIFFERS (byte {off})")
        same_file(a, data, f"source after DIFFERS (byte {off})")
        # the blocks before the different one still dedupe
        if off >= bs:
            k = off // bs * bs
            eq(dedupe_paths(a, b, 0, k, 0), (SAME, k), f"dedupe up to the block of byte {off}")
            same_file(b, other, f"destination after a partial dedupe (byte {off})")
    check_mount_sharing(m, "after DIFFERS")


@test(size="256M")
def ioctl_range_rules(m):
    """Offsets must be block multiples and both ranges inside their files (status -EINVAL);
    reserved must be 0; the length is shortened to whole blocks unless both ranges end at EOF
    (files of different sizes: the tail is left out; less than a block: 0 bytes); ranges whose
    end overflows make the ioctl fail with EINVAL. Nothing changes for a refused call."""
    bs = block_size(m)
    size = 10 * bs + 100
    data = make_data(size + bs, m.rng, stamp=3)
    a, b, c = m.path("a"), m.path("b"), m.path("c")
    write_big(a, data[:size])
    write_big(b, data[:size])
    write_big(c, data[:size + 200])        # longer than a: a's EOF is not c's
    sfd = os.open(a, os.O_RDONLY)
    bfd = os.open(b, os.O_RDWR)
    cfd = os.open(c, os.O_RDWR)
    before = phys_map(b)
    free0 = free_blocks(m)
    einval = -errno.EINVAL
    cases = [
        ("unaligned source offset", (sfd, bfd, 100, bs, 0)),
        ("unaligned destination offset", (sfd, bfd, 0, bs, 100)),
        ("source offset past EOF", (sfd, bfd, 11 * bs, bs, 0)),
        ("source range past EOF", (sfd, bfd, 8 * bs, 3 * bs, 0)),
        ("destination range past EOF", (sfd, bfd, 0, 3 * bs, 8 * bs)),
        ("destination offset past EOF", (sfd, bfd, 0, bs, 12 * bs)),
        ("both ranges past EOF", (sfd, bfd, 0, size + 1, 0)),
    ]
    for what, args in cases:
        eq(dedupe(*args), (einval, 0), f"{what} (status, bytes)")
    eq(dedupe(sfd, bfd, 0, bs, 0, reserved=1), (einval, 0), "reserved != 0 (status, bytes)")
    expect_errno(errno.EINVAL, dedupe, sfd, bfd, 1 << 63, 1 << 63, 0)
    expect_errno(errno.EINVAL, dedupe, sfd, bfd, 0, 1 << 63, 1 << 63)
    eq(phys_map(b), before, "destination blocks after refused dedupes")
    eq(free_blocks(m), free0, "free blocks after refused dedupes")

    # shortened: an unaligned length inside both files, less than a block
    eq(dedupe(sfd, bfd, 0, 3 * bs + 5, 0), (SAME, 3 * bs), "unaligned length inside the files")
    eq(dedupe(sfd, bfd, 4 * bs, bs - 1, 4 * bs), (SAME, 0), "less than a block, not at EOF")
    # a and c have different sizes: a's range ends at its EOF, c's does not
    free1 = free_blocks(m)
    eq(dedupe(sfd, cfd, 0, size, 0), (SAME, 10 * bs), "different sizes: whole blocks only")
    expect_freed(m, free1, 10, "dedupe of different sizes")
    pa, pc = phys_map(a), phys_map(c)
    eq([pc[i] == pa[i] for i in range(11)], [True] * 10 + [False],
       "c shares a's whole blocks, not the partial one")
    # both at EOF from the middle: the tail goes too
    eq(dedupe(sfd, bfd, 5 * bs, size - 5 * bs, 5 * bs), (SAME, size - 5 * bs),
       "a range ending at both EOFs, from the middle")
    pa, pb = phys_map(a), phys_map(b)
    eq([pb[i] == pa[i] for i in range(11)], [True] * 3 + [False] * 2 + [True] * 6,
       "the blocks b shares with a")
    for fd in (sfd, bfd, cfd):
        os.close(fd)
    same_file(b, data[:size], "b after the dedupes")
    same_file(c, data[:size + 200], "c after the dedupes")
    check_mount_sharing(m, "after range rules")


@test(size="256M", timeout=120)
def ioctl_16mib_per_call(m):
    """A request over 16 MiB does 16 MiB (the caller loops on bytes_deduped); the loop
    finishes the 20 MiB + 3 bytes and frees every block."""
    bs = block_size(m)
    size = 20 * MiB + 3
    data = make_data(size, m.rng, stamp=4)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    write_big(b, data)
    free0 = free_blocks(m)
    s, d = os.open(a, os.O_RDONLY), os.open(b, os.O_RDWR)
    eq(dedupe(s, d, 0, size, 0), (SAME, DEDUPE_MAX), "a 20 MiB request (status, bytes)")
    expect_freed(m, free0, DEDUPE_MAX // bs, "the first 16 MiB")
    done, calls = DEDUPE_MAX, 1
    while done < size:
        st, n = dedupe(s, d, done, size - done, done)
        eq(st, SAME, f"status of the call at {done}")
        check(n > 0, f"no progress at {done}")
        done += n
        calls += 1
    os.close(d)
    os.close(s)
    eq((done, calls), (size, 2), "bytes and calls of the loop")
    expect_freed(m, free0, (size + bs - 1) // bs, "the whole 20 MiB")
    same_file(b, data, "destination after the loop")
    eq(phys_map(b), phys_map(a), "destination shares every block")


@test(size="256M")
def ioctl_errors(m):
    """Destination errors in the status: a bad descriptor (-EBADF), a directory (-EISDIR), a
    FIFO (-EINVAL), a file on tmpfs or on another pmfuse mount (-EXDEV). Source errors as the
    ioctl's: open write-only (EBADF), a directory (EISDIR), not pmfuse (ENOTTY)."""
    bs = block_size(m)
    data = make_data(8 * bs, m.rng, stamp=5)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    write_big(b, data)
    before = phys_map(b)
    s = os.open(a, os.O_RDONLY)
    closed = os.open(b, os.O_RDONLY)
    os.close(closed)
    eq(dedupe(s, closed, 0, bs, 0), (-errno.EBADF, 0), "closed destination descriptor")
    eq(dedupe(s, 100000, 0, bs, 0), (-errno.EBADF, 0), "destination descriptor 100000")
    eq(dedupe(s, -1, 0, bs, 0), (-errno.EBADF, 0), "destination descriptor -1")
    os.mkdir(m.path("d"))
    dfd = os.open(m.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    eq(dedupe(s, dfd, 0, bs, 0), (-errno.EISDIR, 0), "directory as destination")
    expect_errno(errno.EISDIR, dedupe, dfd, s, 0, bs, 0)
    os.close(dfd)
    os.mkfifo(m.path("fifo"))
    ffd = os.open(m.path("fifo"), os.O_RDONLY | os.O_NONBLOCK)
    eq(dedupe(s, ffd, 0, bs, 0), (-errno.EINVAL, 0), "FIFO as destination")
    os.close(ffd)
    outside = os.path.join(m.tmp, "outside")
    write_file(outside, bytes(data))
    ofd = os.open(outside, os.O_RDWR)
    eq(dedupe(s, ofd, 0, bs, 0), (-errno.EXDEV, 0), "destination on tmpfs")
    expect_errno(errno.ENOTTY, dedupe, ofd, s, 0, bs, 0)
    os.close(ofd)
    m2 = m.another(size="64M")
    write_big(m2.path("x"), data)
    xfd = os.open(m2.path("x"), os.O_RDWR)
    eq(dedupe(s, xfd, 0, bs, 0), (-errno.EXDEV, 0), "destination on another pmfuse mount")
    os.close(xfd)
    os.close(s)
    wo = os.open(a, os.O_WRONLY)
    d = os.open(b, os.O_RDWR)
    expect_errno(errno.EBADF, dedupe, wo, d, 0, bs, 0)
    os.close(wo)
    os.close(d)
    eq(phys_map(b), before, "destination after every refused dedupe")
    same_file(b, data, "destination contents")
    check_mount_sharing(m, "after errors")


@test(size="256M")
def ioctl_permissions(m):
    """An unprivileged caller (uid 1000) dedupes into a file it may write (descriptor open for
    writing) or owns (even read-only), but not through a read-only descriptor of another's file
    (-EPERM, nothing changes); root may through a read-only descriptor of anyone's."""
    bs = block_size(m)
    data = make_data(4 * bs, m.rng, stamp=6)
    u = m.path("u")
    os.mkdir(u)
    os.chmod(u, 0o777)
    src = m.path("u", "src")
    theirs = m.path("u", "theirs")        # owned by 2000, readable and writable by all
    mine = m.path("u", "mine")            # owned by 1000, read-only for everyone
    roots = m.path("u", "roots")          # owned by root, 0644
    for p, mode in ((src, 0o644), (theirs, 0o666), (mine, 0o444), (roots, 0o644)):
        write_big(p, data)
        os.chmod(p, mode)
    os.chown(src, 1000, 1000)
    os.chown(theirs, 2000, 2000)
    os.chown(mine, 1000, 1000)
    before = {p: phys_map(p) for p in (theirs, mine, roots)}

    def as_user():
        s = os.open(src, os.O_RDONLY)
        out = {}
        for name, path, flags in (("roots read-only", roots, os.O_RDONLY),
                                  ("theirs read-only", theirs, os.O_RDONLY),
                                  ("theirs writable", theirs, os.O_RDWR),
                                  ("mine read-only", mine, os.O_RDONLY)):
            d = os.open(path, flags)
            out[name] = dedupe(s, d, 0, 4 * bs, 0)
            os.close(d)
        out["open roots for writing"] = pmfs.errno_of(os.open, roots, os.O_WRONLY)
        os.close(s)
        return out

    res = run_as(1000, 1000, as_user)
    eq(res["open roots for writing"], errno.EACCES, "uid 1000 opening root's 0644 file")
    eq(res["roots read-only"], (-errno.EPERM, 0), "uid 1000, read-only fd of root's file")
    eq(res["theirs read-only"], (-errno.EPERM, 0), "uid 1000, read-only fd of uid 2000's file")
    eq(res["theirs writable"], (SAME, 4 * bs), "uid 1000, writable fd of uid 2000's file")
    eq(res["mine read-only"], (SAME, 4 * bs), "uid 1000, read-only fd of its own file")
    eq(phys_map(roots), before[roots], "root's file after the refused dedupe")
    pm = phys_map(src)
    eq(phys_map(theirs), pm, "uid 2000's file shares the source's blocks")
    eq(phys_map(mine), pm, "uid 1000's own file shares the source's blocks")
    # root: CAP_SYS_ADMIN, a read-only descriptor of anyone's file is enough
    eq(dedupe_paths(src, roots, 0, 4 * bs, 0, os.O_RDONLY), (SAME, 4 * bs),
       "root, read-only fd of its own file")
    eq(phys_map(roots), pm, "root's file shares the source's blocks")
    eq((os.stat(mine).st_uid, os.stat(mine).st_mode & 0o7777), (1000, 0o444),
       "owner and mode after dedupe")
    for p in (src, theirs, mine, roots):
        same_file(p, data, f"{os.path.basename(p)} after the dedupes")
    check_mount_sharing(m, "after permission cases")


@test(size="256M")
def ioctl_zeros_over_hole(m):
    """A destination's zero blocks over holes of the source become holes: st_blocks drops,
    SEEK_DATA/SEEK_HOLE show the hole, the bytes read as zeros, the blocks are freed."""
    bs = block_size(m)
    n = 24
    head = make_data(4 * bs, m.rng, stamp=7)
    a, b = m.path("a"), m.path("b")
    fd = os.open(a, os.O_RDWR | os.O_CREAT, 0o644)
    pwrite_all(fd, head, 0)
    pwrite_all(fd, head[:bs], (n - 1) * bs)     # a: data, 19 blocks of hole, data
    os.close(fd)
    full = bytearray(n * bs)
    full[:4 * bs] = head
    full[(n - 1) * bs:] = head[:bs]
    write_big(b, full)                          # b: every block written, zeros too
    eq(os.stat(b).st_blocks * 512, n * bs, "st_blocks of the dense destination")
    free0 = free_blocks(m)
    eq(dedupe_paths(a, b, 0, n * bs, 0), (SAME, n * bs), "dedupe of zeros over a hole")
    expect_freed(m, free0, n, "zero blocks turned into holes, data blocks shared")
    eq(os.stat(b).st_blocks * 512, 5 * bs, "st_blocks of the destination after dedupe")
    same_file(b, full, "destination after dedupe")
    fd = os.open(b, os.O_RDONLY)
    eq(data_map(fd, n * bs), [(0, 4 * bs), ((n - 1) * bs, n * bs)],
       "data ranges of the destination (SEEK_DATA/SEEK_HOLE)")
    os.close(fd)
    m.remount()
    same_file(b, full, "destination after remount")
    eq(os.stat(b).st_blocks * 512, 5 * bs, "st_blocks after remount")
    check_mount_sharing(m, "after zeros over a hole")


@test(size="256M")
def ioctl_same_file(m):
    """Dedupe between two ranges of one file: allowed when they do not overlap (also through
    one descriptor as source and destination), -EINVAL when they do."""
    bs = block_size(m)
    part = make_data(4 * bs, m.rng, stamp=8)
    data = bytearray(make_data(16 * bs, m.rng, stamp=9))
    data[8 * bs:12 * bs] = part
    data[0:4 * bs] = part
    f = m.path("f")
    write_big(f, data)
    fd = os.open(f, os.O_RDWR)
    eq(dedupe(fd, fd, 0, 4 * bs, 2 * bs), (-errno.EINVAL, 0), "overlapping ranges")
    eq(dedupe(fd, fd, 2 * bs, 4 * bs, 0), (-errno.EINVAL, 0), "overlapping ranges, reversed")
    eq(dedupe(fd, fd, 0, 4 * bs, 4 * bs), (DIFFERS, 0), "adjacent ranges that differ")
    free0 = free_blocks(m)
    eq(dedupe(fd, fd, 0, 4 * bs, 8 * bs), (SAME, 4 * bs), "equal ranges of one file")
    expect_freed(m, free0, 4, "dedupe inside one file")
    os.close(fd)
    p = phys_map(f)
    eq([p[8 + i] for i in range(4)], [p[i] for i in range(4)], "blocks 8..11 map blocks 0..3")
    eq(len(set(p.values())), 12, "distinct pool blocks of the file")
    same_file(f, data, "file after dedupe inside it")
    check_mount_sharing(m, "after same-file dedupe")


@test(size="256M")
def ioctl_cow_after_dedupe(m):
    """After a dedupe, a write into either file changes only that file (copy-on-write), and a
    remount keeps contents and sharing."""
    bs = block_size(m)
    size = 128 * bs                        # a CoW copies up to 32 blocks around a write
    data = make_data(size, m.rng, stamp=10)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    write_big(b, data)
    eq(dedupe_paths(a, b, 0, size, 0), (SAME, size), "dedupe")
    ea, eb = bytearray(data), bytearray(data)
    fd = os.open(a, os.O_WRONLY)
    pwrite_all(fd, b"A" * 100, 5 * bs + 7)
    os.close(fd)
    ea[5 * bs + 7:5 * bs + 107] = b"A" * 100
    fd = os.open(b, os.O_WRONLY)
    pwrite_all(fd, b"B" * (2 * bs), 40 * bs)
    os.close(fd)
    eb[40 * bs:42 * bs] = b"B" * (2 * bs)
    same_file(a, ea, "a after writes into both")
    same_file(b, eb, "b after writes into both")
    pa, pb = phys_map(a), phys_map(b)
    eq(pa[100], pb[100], "a block far from the writes stays shared")
    check(pa[5] != pb[5] and pa[40] != pb[40], "written blocks are private")
    check_mount_sharing(m, "after CoW writes")
    m.remount()
    same_file(a, ea, "a after remount")
    same_file(b, eb, "b after remount")
    eq((phys_map(a), phys_map(b)), (pa, pb), "pool blocks after remount")
    check_mount_sharing(m, "after remount")


@test(size="256M")
def ioctl_eof_tail_after_truncate(m):
    """The partial EOF block goes whole: what lies past EOF in the source's block must not
    show in the destination when it grows (a truncated source keeps old bytes there only if
    truncate left them in the pool)."""
    bs = block_size(m)
    full = make_data(2 * bs, m.rng, stamp=11)
    cut = bs + 100
    a, b = m.path("a"), m.path("b")
    write_big(a, full)
    os.truncate(a, cut)                   # the old bytes past 100 of block 1 must not come back
    write_big(b, full[:cut])
    eq(dedupe_paths(a, b, 0, cut, 0), (SAME, cut), "dedupe of equal files after a truncate")
    os.truncate(b, 2 * bs)
    same_file(b, full[:cut] + bytes(2 * bs - cut), "destination grown after dedupe")
    os.truncate(a, 2 * bs)
    same_file(a, full[:cut] + bytes(2 * bs - cut), "source grown after dedupe")
    check_mount_sharing(m, "after growing deduped files")


# ---------------------------------------------------------------------------------------------
# pmfusectl dedupe SRC DST


@test(size="256M", timeout=120)
def ctl_dedupe_two_files(m):
    """Two 8 MiB files equal but for 3 blocks: the summary counts exactly (compared, unequal,
    duplicate, deduped), the space comes back, no file changes, the destination maps the
    source's blocks except the 3; a second run finds everything shared already."""
    bs = block_size(m)
    size = 8 * MiB
    nblk = size // bs
    data = make_data(size, m.rng, stamp=12)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    other = bytearray(data)
    diff = [0, nblk // 2, nblk - 1]
    for k in diff:
        other[k * bs + 99] ^= 1
    write_big(b, other)
    free0 = free_blocks(m)
    r = run_ctl(m, "dedupe", a, b)
    eq(r.returncode, 0, f"pmfusectl dedupe exit status:\n{r.stdout}{r.stderr}")
    eq(r.stderr, "", "stderr of pmfusectl dedupe (no terminal: no progress)")
    dup = size - 3 * bs
    expect_summary(r.stdout, {"compared": size, "unequal": 3 * bs, "duplicate": dup,
                              "already shared": 0, "deduped": dup, "differed": 0},
                   "pmfusectl dedupe a b")
    expect_freed(m, free0, nblk - 3, "pmfusectl dedupe")
    same_file(a, data, "source after pmfusectl dedupe")
    same_file(b, other, "destination after pmfusectl dedupe")
    pa, pb = phys_map(a), phys_map(b)
    eq(sorted(k for k in range(nblk) if pa[k] != pb[k]), diff, "blocks not shared")
    free1 = free_blocks(m)
    r = run_ctl(m, "dedupe", "-q", a, b)
    eq(r.returncode, 0, f"second pmfusectl dedupe:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, {"compared": size, "unequal": 3 * bs, "duplicate": 0,
                              "already shared": dup, "deduped": 0, "differed": 0},
                   "second pmfusectl dedupe a b")
    eq(free_blocks(m), free1, "free blocks after the second run")
    # odd sizes, equal: the partial last block too
    c, d = m.path("c"), m.path("d")
    odd = make_data(3 * bs + 5, m.rng, stamp=13)
    write_big(c, odd)
    write_big(d, odd)
    r = run_ctl(m, "dedupe", c, d)
    expect_summary(r.stdout, {"compared": 3 * bs + 5, "deduped": 3 * bs + 5}, "odd sizes")
    # d one byte longer: its tail is not compared
    write_big(d, odd + b"x")
    r = run_ctl(m, "dedupe", c, d)
    expect_summary(r.stdout, {"compared": 3 * bs, "deduped": 3 * bs, "unequal": 0},
                   "sizes differing by one byte")
    check_mount_sharing(m, "after pmfusectl dedupe")
    m.remount()
    same_file(b, other, "destination after remount")
    eq(phys_map(b), pb, "sharing after remount")


@test(size="256M")
def ctl_dedupe_range(m):
    """--range SRC_OFF LEN DST_OFF compares only that range; LEN 0 goes as far as both files;
    unaligned offsets and ranges past EOF fail with exit 1 and a message."""
    bs = block_size(m)
    a, b = m.path("a"), m.path("b")
    data = make_data(4 * MiB, m.rng, stamp=14)
    write_big(a, data)
    other = bytearray(make_data(4 * MiB, m.rng, stamp=15))
    other[3 * MiB:4 * MiB] = data[1 * MiB:2 * MiB]
    write_big(b, other)
    free0 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--range", "1M", "1M", "3M", a, b)
    eq(r.returncode, 0, f"pmfusectl dedupe --range:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, {"compared": MiB, "unequal": 0, "duplicate": MiB,
                              "deduped": MiB}, "dedupe --range 1M 1M 3M")
    expect_freed(m, free0, MiB // bs, "dedupe --range")
    pa, pb = phys_map(a), phys_map(b)
    eq([pb[3 * MiB // bs + i] for i in range(MiB // bs)],
       [pa[MiB // bs + i] for i in range(MiB // bs)], "b's 4th MiB maps a's 2nd")
    same_file(b, other, "b after dedupe --range")
    # LEN 0: from 1M of a against 3M of b: 1 MiB left in b
    r = run_ctl(m, "dedupe", "--range", "1M", "0", "3M", a, b)
    expect_summary(r.stdout, {"compared": MiB, "already shared": MiB, "deduped": 0},
                   "dedupe --range 1M 0 3M")
    for args, what in ((("100", "4096", "0"), "unaligned source offset"),
                       (("0", "4096", "1000"), "unaligned destination offset"),
                       (("3M", "2M", "0"), "past the source's EOF"),
                       (("0", "2M", "3M"), "past the destination's EOF"),
                       (("0", "x", "0"), "not a size")):
        r = run_ctl(m, "dedupe", "--range", *args, a, b)
        eq(r.returncode, 1, f"pmfusectl dedupe --range {' '.join(args)} ({what}) exit status")
        check(r.stderr.strip(), f"no message for {what}")
        eq(r.stdout, "", f"stdout for {what}")
    r = run_ctl(m, "dedupe", "--range", "0", "0", a, b)
    eq(r.returncode, 1, "--range with two numbers")
    eq(phys_map(b), pb, "b after the refused commands")
    # one file: its 4th MiB (a's 2nd) against a's 2nd MiB... in b itself, b's 1st MiB made equal
    fd = os.open(b, os.O_WRONLY)
    pwrite_all(fd, other[3 * MiB:4 * MiB], 0)
    os.close(fd)
    other[0:MiB] = other[3 * MiB:4 * MiB]
    r = run_ctl(m, "dedupe", "--range", "3M", "1M", "0", b, b)
    eq(r.returncode, 0, f"dedupe --range within one file:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, {"compared": MiB, "duplicate": MiB, "deduped": MiB},
                   "dedupe --range 3M 1M 0 b b")
    r = run_ctl(m, "dedupe", "--range", "0", "2M", "1M", b, b)
    eq(r.returncode, 1, f"overlapping ranges in one file:\n{r.stdout}{r.stderr}")
    check("overlap" in r.stderr, f"message for overlapping ranges:\n{r.stderr}")
    pb = phys_map(b)
    eq([pb[i] for i in range(MiB // bs)], [pb[3 * MiB // bs + i] for i in range(MiB // bs)],
       "b's 1st MiB maps its 4th")
    same_file(b, other, "b after dedupe within itself")
    check_mount_sharing(m, "after dedupe --range")


@test(size="256M")
def ctl_dedupe_errors(m):
    """Exit 1 and a clear message: files on different pmfuse mounts, a file not on pmfuse, a
    missing file, a directory, the same file twice, a destination an unprivileged user may not
    change; an unprivileged user dedupes into its own read-only file."""
    bs = block_size(m)
    data = make_data(16 * bs, m.rng, stamp=16)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    write_big(b, data)
    m2 = m.another(size="64M")
    write_big(m2.path("x"), data)
    outside = os.path.join(m.tmp, "outside")
    write_file(outside, bytes(data))
    os.mkdir(m.path("d"))
    cases = [
        ((a, m2.path("x")), "not on the same pmfuse file system"),
        ((m2.path("x"), a), "not on the same pmfuse file system"),
        ((outside, a), "not on a pmfuse mount"),
        ((a, outside), "not on a pmfuse mount"),
        ((a, m.path("missing")), "No such file or directory"),
        ((a, m.path("d")), "is a directory"),
        ((a, a), "are the same file"),
        ((a,), "missing operand"),
    ]
    for args, msg in cases:
        r = run_ctl(m, "dedupe", *args)
        eq(r.returncode, 1, f"pmfusectl dedupe {' '.join(args)} exit status")
        check(msg in r.stderr, f"pmfusectl dedupe {' '.join(args)}: expected '{msg}' in:\n"
              f"{r.stderr}")
    r = run_ctl(m, "dedupe", "--scan", "--range", "0", "0", "0", a)
    eq(r.returncode, 1, "--scan with --range")
    r = run_ctl(m, "dedupe", "--bogus", a, b)
    eq(r.returncode, 1, "an unknown option")
    r = run_ctl(m, "dedupe", "--help")
    check(r.returncode == 0 and "--scan" in r.stdout and "24 bytes" in r.stdout,
          f"pmfusectl dedupe --help:\n{r.stdout}")
    check(" dedupe " in run_ctl(m, "--help").stdout, "pmfusectl --help lists dedupe")

    # uid 1000: root's file refused (read-only fd, not the owner), its own read-only file works
    u = m.path("u")
    os.mkdir(u)
    os.chmod(u, 0o777)
    own = m.path("u", "own")
    write_big(own, data)
    os.chmod(own, 0o444)
    os.chown(own, 1000, 1000)
    os.chmod(a, 0o644)
    os.chmod(b, 0o644)
    before = phys_map(b)
    as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", m.cfg.ctl]
    r = subprocess.run(as_user + ["dedupe", a, b], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    eq(r.returncode, 1, f"unprivileged dedupe into root's file:\n{r.stdout}{r.stderr}")
    check("Operation not permitted" in r.stderr,
          f"unprivileged dedupe into root's file: message:\n{r.stderr}")
    eq(phys_map(b), before, "root's file after the refused dedupe")
    r = subprocess.run(as_user + ["dedupe", a, own], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    eq(r.returncode, 0, f"unprivileged dedupe into its own read-only file:\n{r.stderr}")
    expect_summary(r.stdout, {"deduped": 16 * bs}, "unprivileged dedupe into its own file")
    eq(phys_map(own), phys_map(a), "the user's file shares a's blocks")
    same_file(own, data, "the user's file")
    check_mount_sharing(m, "after error cases")


@test(size="256M")
def ctl_dedupe_mmap_dirty(m):
    """Bytes written through a shared mapping and not yet written back are in the page cache,
    where pmfusectl reads, and not in the pool, where the daemon compares; they must reach the
    pool first (pmfusectl fsyncs the files; today its open() already writes them back), so the
    block written last is deduped like the others (SRC DST and --scan)."""
    bs = block_size(m)
    size = 64 * bs
    data = make_data(size, m.rng, stamp=20)
    t = m.path("t")
    os.mkdir(t)
    a, b = os.path.join(t, "a"), os.path.join(t, "b")
    write_big(a, data)
    for form in ("SRC DST", "--scan"):
        old = bytearray(data)
        old[7 * bs:8 * bs] = bytes(m.rng.randbytes(bs))
        write_big(b, old)
        fd = os.open(b, os.O_RDWR)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[7 * bs:8 * bs] = data[7 * bs:8 * bs]       # dirty in the page cache only
        args = ("dedupe", a, b) if form == "SRC DST" else ("dedupe", "--scan", t)
        r = run_ctl(m, *args)
        eq(r.returncode, 0, f"pmfusectl {form}:\n{r.stdout}{r.stderr}")
        expect_summary(r.stdout, {"duplicate": size, "deduped": size, "differed": 0},
                       f"pmfusectl {form} after a write through a mapping")
        eq(mm[7 * bs:8 * bs], data[7 * bs:8 * bs], f"{form}: the mapping after dedupe")
        mm.close()
        os.close(fd)
        same_file(b, data, f"{form}: b after dedupe")
        eq(phys_map(b), phys_map(a), f"{form}: b shares every block with a")
    check_mount_sharing(m, "after dedupe of mapped files")


@test(size="512M", timeout=180)
def ctl_dedupe_concurrent_writer(m):
    """A writer hammering the destination while `pmfusectl dedupe` runs loses no write: the
    daemon compares and remaps each piece under one hold of its lock, so a write lands before
    (its block then differs and stays) or after (copy-on-write of the shared block). Every
    block ends with the last bytes written to it; the blocks of copy-on-write windows never
    written share the source's."""
    bs = block_size(m)
    size = 64 * MiB
    nblk = size // bs
    data = make_data(size, m.rng, stamp=21)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    for rnd in range(3):
        write_big(b, data)
        expect = bytearray(data)
        written = set()
        stop = threading.Event()
        rng = pmfs.random.Random(rnd)

        def writer():
            fd = os.open(b, os.O_WRONLY)
            try:
                n = 0
                while not stop.is_set() or n < 50:
                    k = rng.randrange(nblk)
                    blk = rng.randbytes(bs) if n % 3 else bytes(data[k * bs:(k + 1) * bs])
                    pwrite_all(fd, blk, k * bs)
                    expect[k * bs:(k + 1) * bs] = blk
                    written.add(k)
                    n += 1
            finally:
                os.close(fd)

        th = threading.Thread(target=writer)
        th.start()
        try:
            r = run_ctl(m, "dedupe", a, b)
        finally:
            stop.set()
            th.join()
        eq(r.returncode, 0, f"round {rnd}: pmfusectl dedupe:\n{r.stdout}{r.stderr}")
        s = summary(r.stdout)
        eq(s["compared"], size, f"round {rnd}: compared")
        eq(s["compared"], s["unequal"] + s["duplicate"] + s["already shared"],
           f"round {rnd}: compared = unequal + duplicate + already shared\n{r.stdout}")
        same_file(b, bytes(expect), f"round {rnd}: b after dedupe and {len(written)} writes")
        same_file(a, data, f"round {rnd}: a after dedupe")
        pa, pb = phys_map(a), phys_map(b)
        # a write after the remap copies its whole copy-on-write window (32 blocks)
        hit = {k // COW_EXTENT_BLOCKS for k in written}
        eq([i for i in range(nblk) if pb[i] != pa[i] and i // COW_EXTENT_BLOCKS not in hit],
           [], f"round {rnd}: blocks in windows never written that do not share a's")
        check(len(written) >= 25, f"round {rnd}: only {len(written)} blocks written")
    check_mount_sharing(m, "after dedupe of a file being written")


@test(size="256M")
def ioctl_blocks_partly_equal(m):
    """PMFUSE_IOC_DEDUPE_BLOCKS on two files equal but for some blocks, with holes on either
    side and a partial EOF block: exactly the equal mapped blocks of the destination come to
    share, the counts say so, a second call finds them shared; nothing changes bytes."""
    bs = block_size(m)
    nblk = 64
    size = nblk * bs + 100
    data = bytearray(make_data(size, m.rng, stamp=30))
    a, b = m.path("a"), m.path("b")
    diff = {3, 17, 40, nblk}               # nblk: the partial EOF block
    other = bytearray(data)
    for k in diff:
        other[k * bs + 7] ^= 1
    hole_a = range(20, 24)                 # a hole in a, zeros written in b: b's become a hole
    hole_b = range(50, 54)                 # a hole in b: stays a hole (not compared for gain)
    for k in hole_a:
        data[k * bs:(k + 1) * bs] = bytes(bs)
        other[k * bs:(k + 1) * bs] = bytes(bs)
    write_big(a, bytes(data))
    write_big(b, bytes(other))
    fd = os.open(a, os.O_RDWR)
    os.truncate(a, 0)
    for k in range(nblk + 1):              # a again, without its hole
        if k not in hole_a:
            pwrite_all(fd, data[k * bs:min((k + 1) * bs, size)], k * bs)
    os.close(fd)
    fd = os.open(b, os.O_RDWR)
    fcntl_punch(fd, hole_b[0] * bs, len(hole_b) * bs)
    os.close(fd)
    for k in hole_b:
        other[k * bs:(k + 1) * bs] = bytes(bs)
    free0 = free_blocks(m)
    s = os.open(a, os.O_RDONLY)
    d = os.open(b, os.O_RDWR)
    got = dedupe_blocks(s, d, 0, 0, 0)
    # differ: the 4 changed blocks, and hole_b (zeros against a's data) compared as different
    differ = 3 * bs + 100 + len(hole_b) * bs
    same = 0
    eq(got, (size, size - differ - same, same, differ), "(compared, deduped, same, differ)")
    pa, pb = phys_map(a), phys_map(b)
    want_unshared = sorted(diff | set(hole_b))
    eq(sorted(k for k in range(nblk + 1) if pa.get(k) != pb.get(k)), want_unshared,
       "blocks of b not sharing a's (the differing ones and b's holes)")
    check(all(k not in pb for k in hole_a), "b's zero blocks over a's hole became a hole")
    expect_freed(m, free0, nblk + 1 - len(diff) - len(hole_b), "range dedupe")
    got = dedupe_blocks(s, d, 0, 0, 0)
    eq(got, (size, 0, size - differ, differ), "second call: everything equal is shared")
    # a range: 8 blocks from block 8 of a onto block 8 of b, all shared already
    eq(dedupe_blocks(s, d, 8 * bs, 8 * bs, 8 * bs), (8 * bs, 0, 8 * bs, 0), "a shared range")
    os.close(d)
    os.close(s)
    same_file(a, bytes(data), "a after the range dedupes")
    same_file(b, bytes(other), "b after the range dedupes")
    check_mount_sharing(m, "after range dedupe")


def fcntl_punch(fd, off, length):
    """fallocate(PUNCH_HOLE | KEEP_SIZE) through libc."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, 3, off, length):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@test(size="256M")
def ioctl_blocks_errors(m):
    """PMFUSE_IOC_DEDUPE_BLOCKS refuses, changing nothing: ranges past EOF, huge offsets and
    lengths, unaligned offsets, overlapping ranges of one file, flags or reserved fields set
    (EINVAL); a directory (EISDIR), a FIFO (EINVAL), a file on tmpfs (EXDEV), a bad descriptor
    (EBADF), a source open write-only (EBADF), a source on tmpfs (ENOTTY); an unprivileged
    caller with a read-only descriptor of another's file (EPERM), and a file it cannot read
    (its open fails: the kernel checks the source, the daemon the destination)."""
    bs = block_size(m)
    data = make_data(16 * bs, m.rng, stamp=31)
    a, b = m.path("a"), m.path("b")
    write_big(a, data)
    write_big(b, data)
    before = phys_map(b)
    s = os.open(a, os.O_RDONLY)
    d = os.open(b, os.O_RDWR)
    U = (1 << 64) - 1
    for args, what in (((16 * bs, bs, 0), "source offset at EOF"),
                       ((0, bs, 16 * bs), "destination offset at EOF"),
                       ((0, 17 * bs, 0), "length past both EOFs"),
                       ((8 * bs, 9 * bs, 0), "length past the source's EOF"),
                       ((1 << 62, bs, 0), "huge source offset"),
                       ((0, bs, 1 << 62), "huge destination offset"),
                       ((0, (1 << 63) - 1, 0), "huge length"),
                       ((100, bs, 0), "unaligned source offset"),
                       ((0, bs, 100), "unaligned destination offset")):
        expect_errno(errno.EINVAL, dedupe_blocks, s, d, *args)
    for big in ((U, bs, 0), (0, U, 0), (0, bs, U), ((1 << 63), 0, 0)):
        expect_errno(errno.EINVAL, dedupe_blocks, s, d, *big)
    expect_errno(errno.EINVAL, dedupe_blocks, s, d, 0, bs, 0, flags=1)
    expect_errno(errno.EINVAL, dedupe_blocks, s, d, 0, bs, 0, reserved=1)
    expect_errno(errno.EINVAL, dedupe_blocks, s, s, 0, 8 * bs, 4 * bs)
    os.mkdir(m.path("dir"))
    dfd = os.open(m.path("dir"), os.O_RDONLY | os.O_DIRECTORY)
    expect_errno(errno.EISDIR, dedupe_blocks, s, dfd, 0, bs, 0)
    expect_errno(errno.EISDIR, dedupe_blocks, dfd, d, 0, bs, 0)
    os.close(dfd)
    os.mkfifo(m.path("fifo"))
    ffd = os.open(m.path("fifo"), os.O_RDONLY | os.O_NONBLOCK)
    expect_errno(errno.EINVAL, dedupe_blocks, s, ffd, 0, bs, 0)
    os.close(ffd)
    outside = os.path.join(m.tmp, "outside")
    write_file(outside, bytes(data))
    ofd = os.open(outside, os.O_RDWR)
    expect_errno(errno.EXDEV, dedupe_blocks, s, ofd, 0, bs, 0)
    expect_errno(errno.ENOTTY, dedupe_blocks, ofd, d, 0, bs, 0)
    os.close(ofd)
    expect_errno(errno.EBADF, dedupe_blocks, s, 100000, 0, bs, 0)
    wo = os.open(a, os.O_WRONLY)
    expect_errno(errno.EBADF, dedupe_blocks, wo, d, 0, bs, 0)
    os.close(wo)
    # an unprivileged caller: another's file through a read-only descriptor, a file it may not
    # read as the source
    u = m.path("u")
    os.mkdir(u)
    os.chmod(u, 0o777)
    src, theirs, secret = m.path("u", "src"), m.path("u", "theirs"), m.path("u", "secret")
    for p, mode in ((src, 0o644), (theirs, 0o644), (secret, 0o600)):
        write_big(p, data)
        os.chmod(p, mode)
    os.chown(src, 1000, 1000)
    os.chown(theirs, 2000, 2000)
    pre = {p: phys_map(p) for p in (theirs, secret, src)}

    def as_user():
        out = {}
        sfd = os.open(src, os.O_RDONLY)
        tfd = os.open(theirs, os.O_RDONLY)
        out["theirs"] = pmfs.errno_of(dedupe_blocks, sfd, tfd, 0, 0, 0)
        out["open secret"] = pmfs.errno_of(os.open, secret, os.O_RDONLY)
        os.close(tfd)
        os.close(sfd)
        return out

    res = run_as(1000, 1000, as_user)
    eq(res["theirs"], errno.EPERM, "uid 1000, read-only descriptor of uid 2000's file")
    eq(res["open secret"], errno.EACCES, "uid 1000 opening root's 0600 file")
    for p in pre:
        eq(phys_map(p), pre[p], f"{os.path.basename(p)} after the refused range dedupes")
    os.close(d)
    os.close(s)
    eq(phys_map(b), before, "b after every refused range dedupe")
    same_file(b, data, "b's contents")
    check_mount_sharing(m, "after range dedupe errors")


# ---------------------------------------------------------------------------------------------
# pmfusectl dedupe --scan


@test(size="64M")
def unwritten_blocks_hash_as_zeros(m):
    """Preallocated (unwritten) blocks over the stale bytes of a deleted file: their hashes
    are those of zero blocks, and they are flagged zero: the stale bytes never leak, not even
    as a hash."""
    bs = block_size(m)
    stale = bytes([0xA5]) * bs
    old = m.path("old")
    write_file(old, stale * 2048)             # 8 MiB of a pattern, then freed
    os.unlink(old)
    pmfs.wait_until(lambda: not os.path.exists(old), 5, "unlink")
    time.sleep(0.2)                           # the kernel's FORGET frees the blocks
    f = m.path("prealloc")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        pmfs.fallocate(fd, 0, 0, 64 * bs)
    finally:
        os.close(fd)
    h = all_hashes(f)
    eq(len(h), 64, "blocks listed for a preallocated file")
    zero_hashes = {e[2] for e in h}
    eq(len(zero_hashes), 1, "all unwritten blocks hash alike")
    eq([e[4] for e in h], [HASH_ZERO] * 64, "unwritten blocks are flagged zero")
    z = m.path("zeros")
    write_file(z, bytes(64 * bs))
    eq({e[2] for e in all_hashes(z)}, zero_hashes, "written zeros hash as unwritten blocks do")
    eq(read_file(f), bytes(64 * bs), "the preallocated file reads zeros")


@test(size="256M")
def ioctl_block_hashes(m):
    """PMFUSE_IOC_BLOCK_HASHES: one entry per mapped block inside EOF (holes absent), equal
    blocks hash equal and different ones not, zero blocks flagged, a partial EOF block hashed
    over its own length, refcounts and physical offsets as GET_EXTENTS says (a clone shares
    them, count 2); more than one call's worth of blocks continues at `next`; a write-only
    descriptor (EBADF), flags or reserved set (EINVAL) and a directory (EISDIR) are refused."""
    bs = block_size(m)
    a_blk, b_blk = m.rng.randbytes(bs), m.rng.randbytes(bs)
    f = m.path("f")
    # blocks: A A 0 hole B A tail(100 bytes of A)
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    for k, blk in ((0, a_blk), (1, a_blk), (2, bytes(bs)), (4, b_blk), (5, a_blk),
                   (6, a_blk[:100])):
        pwrite_all(fd, blk, k * bs)
    os.close(fd)
    h = all_hashes(f)
    eq([e[0] // bs for e in h], [0, 1, 2, 4, 5, 6], "blocks listed (the hole is not)")
    eq(h[0][2], h[1][2], "equal blocks hash equal")
    eq(h[0][2], h[4][2], "equal blocks far apart hash equal")
    check(h[0][2] != h[3][2], "different blocks hash differently")
    check(h[5][2] != h[0][2], "a partial EOF block hashes over its own length")
    eq([e[4] for e in h], [0, 0, HASH_ZERO, 0, 0, 0], "flags: only the zero block")
    eq([e[3] for e in h], [1] * 6, "refcounts before a clone")
    pm = phys_map(f)
    eq([e[1] // bs for e in h], [pm[e[0] // bs] for e in h], "physical offsets")
    g = m.path("g")
    clone_file(f, g)
    hg = all_hashes(g)
    eq([(e[0], e[1], e[2]) for e in hg], [(e[0], e[1], e[2]) for e in h],
       "a clone: the same blocks, offsets and hashes")
    eq([e[3] for e in all_hashes(f)], [2] * 6, "refcounts after a clone")
    # a file larger than one call
    big = m.path("big")
    n = 1000
    write_big(big, make_data(n * bs, m.rng, stamp=40))
    hb = all_hashes(big)
    eq([e[0] // bs for e in hb], list(range(n)), "every block of a 1000-block file, in order")
    fd = os.open(big, os.O_RDONLY)
    nxt, got_bs, v = block_hashes(fd, 0)
    eq((got_bs, len(v), nxt), (bs, 384, 384 * bs), "first call: 384 entries, next")
    eq(block_hashes(fd, 999 * bs + 1)[2][0][0], 999 * bs, "start rounded down to a block")
    eq(block_hashes(fd, n * bs)[1:], (bs, []), "start at EOF: nothing")
    expect_errno(errno.EINVAL, block_hashes, fd, 0, 1)
    expect_errno(errno.EINVAL, block_hashes, fd, 0, 0, 1)
    os.close(fd)
    fd = os.open(big, os.O_WRONLY)
    expect_errno(errno.EBADF, block_hashes, fd, 0)
    os.close(fd)
    os.mkdir(m.path("d"))
    fd = os.open(m.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    expect_errno(errno.EISDIR, block_hashes, fd, 0)
    os.close(fd)


@test(size="256M")
def ioctl_block_hashes2(m):
    """PMFUSE_IOC_BLOCK_HASHES2 (packed) says what PMFUSE_IOC_BLOCK_HASHES says for every
    non-zero block, over several calls of ~2,000 blocks (8 MiB of 4 KiB blocks): the same
    logical and physical offsets, hashes and refcounts, zero blocks left out, runs split where
    the pool blocks or the refcount change (a cloned middle, a hole, a zero block); `end` stops
    the answer there (rounded up to a block); flags or reserved set (EINVAL), a write-only
    descriptor (EBADF) and a directory (EISDIR) are refused."""
    bs = block_size(m)
    n = 6000                                  # three calls' worth
    data = bytearray(make_data(n * bs, m.rng, stamp=60))
    for k in (7, 2500, 2501):
        data[k * bs:(k + 1) * bs] = bytes(bs)
    data += m.rng.randbytes(bs // 3)          # a partial EOF block
    f = m.path("f")
    write_big(f, bytes(data))
    fd = os.open(f, os.O_RDWR)
    try:
        pmfs.fallocate(fd, 0x02 | 0x01, 3000 * bs, 4 * bs)   # PUNCH_HOLE | KEEP_SIZE
    finally:
        os.close(fd)
    g = m.path("g")
    write_big(g, bytes(data))
    # g's blocks 4000-4099 become f's: f's pool blocks stay consecutive, their refcount is 2
    fd, gd = os.open(f, os.O_RDONLY), os.open(g, os.O_RDWR)
    try:
        buf = struct.pack(CLONE_RANGE_FMT, fd, 4000 * bs, 100 * bs, 4000 * bs)
        fcntl.ioctl(gd, PMFUSE_IOC_CLONE_RANGE, buf)
    finally:
        os.close(fd)
        os.close(gd)
    v1 = [(e[0], e[1], e[2], e[3]) for e in all_hashes(f) if not e[4] & HASH_ZERO]
    v2, calls = all_hashes2(f)
    eq(len(v2), len(v1), "as many non-zero blocks in both forms")
    for a, b in zip(v1, v2):
        eq(b, a, f"block {a[0] // bs}: (logical, physical, hash, refcount) in both forms")
    eq(len(v2), n + 1 - 3 - 4, "every block but the zeros and the hole")
    check(len(calls) >= 3, f"{len(calls)} calls for {n} blocks")
    for k, (used, runs) in enumerate(calls):
        # the fs walk's budget counts a run that goes on from its last walk as new (3 words)
        if k + 1 < len(calls):
            check(used >= HASHES2_WORDS - 7, f"call {k}: {used} of {HASHES2_WORDS} words used")
        check_runs_maximal(runs, bs, f"call {k}")
    eq({e[3] for e in v2 if 4000 <= e[0] // bs < 4100}, {2}, "the cloned blocks count 2")
    fd = os.open(f, os.O_RDONLY)
    try:
        nxt, got_bs, runs, v = block_hashes2(fd, 0)
        eq(got_bs, bs, "block size")
        eq([r[0] // bs for r in runs][:2], [0, 8], "the first call's runs: cut by the zero block")
        eq(nxt, v[-1][0] + bs, "next follows the last block listed")
        nxt, _, runs, v = block_hashes2(fd, 3990 * bs, 4105 * bs - 1)
        check({4000, 4100} <= {r[0] // bs for r in runs},
              f"runs cut where the refcount changes: {[r[0] // bs for r in runs]}")
        check_runs_maximal(runs, bs, "blocks 3990-4104")
        eq([e[0] // bs for e in v], list(range(3990, 4105)), "end rounded up to a block")
        check(nxt >= 4105 * bs, f"next {nxt} at or past the end")
        nxt, _, runs, v = block_hashes2(fd, 2990 * bs, 3010 * bs)
        eq([e[0] // bs for e in v], list(range(2990, 3000)) + list(range(3004, 3010)),
           "blocks around the hole")
        check(3004 in {r[0] // bs for r in runs}, "a run starts after the hole")
        eq(block_hashes2(fd, (n + 1) * bs)[2:], ([], []), "start at EOF: nothing")
        expect_errno(errno.EINVAL, block_hashes2, fd, 0, 0, 1)
        expect_errno(errno.EINVAL, block_hashes2, fd, 0, 0, 0, 1)
    finally:
        os.close(fd)
    fd = os.open(f, os.O_WRONLY)
    try:
        expect_errno(errno.EBADF, block_hashes2, fd, 0)
    finally:
        os.close(fd)
    os.mkdir(m.path("d"))
    fd = os.open(m.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        expect_errno(errno.EISDIR, block_hashes2, fd, 0)
    finally:
        os.close(fd)


def plant_tree(m, bs):
    """Three files (one in a subdirectory, one with a second name) sharing 64 KiB regions at
    different offsets, among unique data, zero blocks written as data and holes; a symlink and a
    file outside the tree. Returns ({path: bytes}, planted duplicate bytes)."""
    rng = m.rng
    r1, r2 = rng.randbytes(64 * KiB), rng.randbytes(64 * KiB)
    t = m.path("t")
    os.makedirs(os.path.join(t, "sub"))
    files = {}

    def build(name, size, parts, zeros=(), holes=()):
        data = bytearray(rng.randbytes(size))
        for off, region in parts:
            data[off:off + len(region)] = region
        for off, n in list(zeros) + list(holes):
            data[off:off + n] = bytes(n)
        path = os.path.join(t, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        for off in range(0, size, 64 * KiB):
            chunk = data[off:off + 64 * KiB]
            if any(off == h for h, _ in holes):
                continue
            pwrite_all(fd, chunk, off)
        os.ftruncate(fd, size)
        os.close(fd)
        files[path] = bytes(data)

    # r1 four times (3 copies, two of them in f3), r2 twice (1 copy)
    build("f1", 1 * MiB, [(0, r1), (512 * KiB, r2)], zeros=[(256 * KiB, 64 * KiB)])
    build("sub/f2", 1 * MiB + 3 * bs // 2, [(128 * KiB, r1)], holes=[(640 * KiB, 64 * KiB)])
    build("f3", 2 * MiB, [(64 * KiB, r2), (1024 * KiB, r1), (1536 * KiB, r1)],
          zeros=[(0, 64 * KiB)])
    os.link(os.path.join(t, "sub", "f2"), os.path.join(t, "f2-link"))
    os.symlink("/etc/passwd", os.path.join(t, "symlink"))
    write_big(m.path("outside"), r1 * 4)    # not under t: never looked at
    return files, 4 * 64 * KiB


@test(size="256M", timeout=120)
def ctl_scan_tree(m):
    """dedupe --scan DIR: the duplicate and deduped bytes equal the planted copies, free space
    rises by as many blocks, every file reads as before, a second scan dedupes nothing, and
    without a terminal nothing goes to stderr."""
    bs = block_size(m)
    files, planted = plant_tree(m, bs)
    scanned = sum(len(d) for d in files.values())
    outside_before = phys_map(m.path("outside"))
    free0 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--scan", m.path("t"))
    eq(r.returncode, 0, f"pmfusectl dedupe --scan:\n{r.stdout}{r.stderr}")
    eq(r.stderr, "", "stderr of dedupe --scan without a terminal")
    expect_summary(r.stdout, {"files": 3, "scanned": scanned, "duplicate": planted,
                              "already shared": 0, "deduped": planted, "differed": 0},
                   "dedupe --scan")
    expect_freed(m, free0, planted // bs, "dedupe --scan")
    for p, d in files.items():
        same_file(p, d, f"{p} after dedupe --scan")
    eq(phys_map(m.path("outside")), outside_before, "the file outside the tree")
    f1, f2, f3 = (m.path("t", x) for x in ("f1", "sub/f2", "f3"))
    p1, p2, p3 = phys_map(f1), phys_map(f2), phys_map(f3)
    n = 64 * KiB // bs
    o = lambda off: off // bs  # noqa: E731
    for what, got in (("f2's r1", [p2[o(128 * KiB) + i] for i in range(n)]),
                      ("f3's first r1", [p3[o(1024 * KiB) + i] for i in range(n)]),
                      ("f3's second r1", [p3[o(1536 * KiB) + i] for i in range(n)])):
        eq(got, [p1[i] for i in range(n)], f"{what} maps f1's r1")
    eq([p3[o(64 * KiB) + i] for i in range(n)], [p1[o(512 * KiB) + i] for i in range(n)],
       "f3's r2 maps f1's r2")
    check_mount_sharing(m, "after dedupe --scan")

    free1 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--scan", m.path("t"), m.path("t", "sub"), m.path("t", "f1"))
    eq(r.returncode, 0, f"second dedupe --scan:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, {"files": 3, "scanned": scanned, "duplicate": 0,
                              "already shared": planted, "deduped": 0, "differed": 0},
                   "second dedupe --scan (overlapping paths)")
    eq(free_blocks(m), free1, "free blocks after the second scan")
    m.remount()
    for p, d in files.items():
        same_file(p, d, f"{p} after remount")
    eq(phys_map(f3), p3, "f3's blocks after remount")


@test(size="256M", timeout=120)
def ctl_scan_dry_run_and_converge(m):
    """--dry-run reports the duplicates and the space they would give back and changes nothing;
    on a partly deduped tree (f3's two copies of r1 already share) the scan takes the block
    with the most references as the source: only the other copies move (f3's shared pair
    stays), and a second scan finds nothing new."""
    bs = block_size(m)
    files, planted = plant_tree(m, bs)
    t = m.path("t")
    f1, f2, f3 = (m.path("t", x) for x in ("f1", "sub/f2", "f3"))
    before = {p: phys_map(p) for p in files}
    free0 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--scan", "--dry-run", t)
    eq(r.returncode, 0, f"dedupe --scan --dry-run:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, {"files": 3, "duplicate": planted, "already shared": 0,
                              "would free": planted, "deduped": 0, "differed": 0},
                   "dedupe --scan --dry-run")
    eq(free_blocks(m), free0, "free blocks after a dry run")
    for p in files:
        eq(phys_map(p), before[p], f"{p}: blocks after a dry run")
    r = run_ctl(m, "dedupe", "--dry-run", f1, f2)
    eq(r.returncode, 1, "--dry-run without --scan")
    # f3's second r1 onto its first: that pool block now has 2 owners, f1's and f2's 1
    r = run_ctl(m, "dedupe", "--range", "1024K", "64K", "1536K", f3, f3)
    expect_summary(r.stdout, {"deduped": 64 * KiB}, "pairing f3's copies of r1")
    p3 = phys_map(f3)
    src = [p3[1024 * KiB // bs + i] for i in range(64 * KiB // bs)]
    r = run_ctl(m, "dedupe", "--scan", "--dry-run", t)
    expect_summary(r.stdout, {"duplicate": planted - 64 * KiB, "already shared": 64 * KiB,
                              "would free": planted - 64 * KiB},
                   "dry run over the partly deduped tree")
    r = run_ctl(m, "dedupe", "--scan", t)
    eq(r.returncode, 0, f"dedupe --scan:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, {"duplicate": planted - 64 * KiB, "already shared": 64 * KiB,
                              "deduped": planted - 64 * KiB, "differed": 0},
                   "dedupe --scan over the partly deduped tree")
    p1, p2 = phys_map(f1), phys_map(f2)
    eq([p1[i] for i in range(64 * KiB // bs)], src, "f1's r1 maps f3's shared r1")
    eq([p2[128 * KiB // bs + i] for i in range(64 * KiB // bs)], src,
       "f2's r1 maps f3's shared r1")
    free1 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--scan", t)
    expect_summary(r.stdout, {"duplicate": 0, "already shared": planted, "deduped": 0},
                   "second scan")
    eq(free_blocks(m), free1, "free blocks after the second scan")
    for p, d in files.items():
        same_file(p, d, f"{p} after the scans")
    check_mount_sharing(m, "after converging scans")


@test(size="256M", timeout=300)
def ctl_scan_jobs(m):
    """--jobs: threads that hash chunks of one large file (48 MiB of 4 KiB blocks each) and of
    others at once find the same groups as one thread: copies of a region at chunk edges
    (one across an edge), in three chunks of a file and in a small file, a dry run with 1 and
    with 4 threads says the same, and the scan with 3 shares exactly the copies; a second
    scan finds nothing; --jobs 0, 17, "x" and --jobs without --scan are refused."""
    bs = block_size(m)
    chunk = 2036 * 6 * bs                      # the blocks of one hashing chunk (DD_CHUNK)
    region = make_data(256 * KiB, m.rng, stamp=50)
    big = bytearray(make_data(2 * chunk + 8 * MiB, m.rng, stamp=51))
    offs = [0, chunk - 128 * KiB, chunk + 4 * MiB, 2 * chunk + 2 * MiB]
    for off in offs:
        big[off:off + len(region)] = region
    t = m.path("t")
    os.mkdir(t)
    files = {os.path.join(t, "big"): bytes(big),
             os.path.join(t, "small"): make_data(64 * KiB, m.rng, stamp=52) + region}
    for p, d in files.items():
        write_big(p, d)
    planted = len(offs) * len(region)            # the small file's copy is the fifth
    want = {"files": 2, "scanned": sum(len(d) for d in files.values()),
            "duplicate": planted, "already shared": 0, "deduped": 0, "differed": 0}
    for jobs, v1 in (("1", "0"), ("4", "0"), ("3", "1")):
        # PMFUSECTL_HASHES_V1=1: the unpacked PMFUSE_IOC_BLOCK_HASHES, as with an older daemon
        r = subprocess.run([m.cfg.ctl, "dedupe", "--scan", "--dry-run", "--jobs", jobs, t],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, PMFUSECTL_HASHES_V1=v1),
                           timeout=300 * pmfs.TIME_FACTOR)
        what = f"dry run with {jobs} threads" + (", unpacked hashes" if v1 == "1" else "")
        eq(r.returncode, 0, f"{what}:\n{r.stdout}{r.stderr}")
        expect_summary(r.stdout, dict(want, **{"would free": planted}), what)
    free0 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--scan", "-j", "3", t)
    eq(r.returncode, 0, f"dedupe --scan -j 3:\n{r.stdout}{r.stderr}")
    expect_summary(r.stdout, dict(want, deduped=planted), "dedupe --scan -j 3")
    expect_freed(m, free0, planted // bs, "dedupe --scan -j 3")
    pb = phys_map(os.path.join(t, "big"))
    ps = phys_map(os.path.join(t, "small"))
    n = len(region) // bs
    copies = [[pb[off // bs + i] for i in range(n)] for off in offs]
    copies.append([ps[64 * KiB // bs + i] for i in range(n)])
    for k, c in enumerate(copies):
        eq(c, copies[0], f"copy {k} of the region maps the same blocks")
    for p, d in files.items():
        same_file(p, d, f"{p} after dedupe --scan -j 3")
    r = run_ctl(m, "dedupe", "--scan", "--jobs", "2", t)
    expect_summary(r.stdout, {"duplicate": 0, "already shared": planted, "deduped": 0},
                   "second scan with 2 threads")
    for bad in (("--scan", "--jobs", "0", t), ("--scan", "--jobs", "17", t),
                ("--scan", "--jobs", "x", t), ("--jobs", "2", t, t)):
        r = run_ctl(m, "dedupe", *bad)
        eq(r.returncode, 1, f"dedupe {' '.join(bad)}")
        check("jobs" in r.stderr, f"dedupe {' '.join(bad)}: says why:\n{r.stderr}")
    check_mount_sharing(m, "after scans with threads")


@test(size="256M")
def ctl_scan_tails_and_one_file(m):
    """--scan dedupes partial EOF blocks only against partial EOF blocks of the same length
    (two equal files of an odd size share everything), and blocks within one file."""
    bs = block_size(m)
    odd = make_data(5 * bs + 123, m.rng, stamp=17)
    t = m.path("t")
    os.mkdir(t)
    write_big(os.path.join(t, "a"), odd)
    write_big(os.path.join(t, "b"), odd)
    longer = odd + b"z"                      # same blocks, but its tail differs
    write_big(os.path.join(t, "c"), longer)
    blk = make_data(2 * bs, m.rng, stamp=18)
    inner = bytes(blk) + bytes(make_data(3 * bs, m.rng, stamp=19)) + bytes(blk) + bytes(blk)
    write_big(os.path.join(t, "d"), inner)
    free0 = free_blocks(m)
    r = run_ctl(m, "dedupe", "--scan", t)
    eq(r.returncode, 0, f"dedupe --scan:\n{r.stdout}{r.stderr}")
    # b: 5 blocks + tail; c: 5 whole blocks; d: its last 4 blocks map its first 2
    dup = (5 * bs + 123) + 5 * bs + 4 * bs
    expect_summary(r.stdout, {"files": 4, "duplicate": dup, "deduped": dup, "differed": 0},
                   "dedupe --scan of tails and one file")
    expect_freed(m, free0, 6 + 5 + 4, "dedupe --scan of tails and one file")
    pa, pb, pc, pd = (phys_map(os.path.join(t, x)) for x in "abcd")
    eq(pb, pa, "b maps all of a's blocks")
    eq([pc[i] == pa[i] for i in range(6)], [True] * 5 + [False], "c shares a's whole blocks")
    eq([pd[i] for i in (5, 6, 7, 8)], [pd[0], pd[1], pd[0], pd[1]], "d's copies of its head")
    for name, d in (("a", odd), ("b", odd), ("c", longer), ("d", inner)):
        same_file(os.path.join(t, name), d, f"{name} after dedupe --scan")
    check_mount_sharing(m, "after dedupe --scan of tails")


def run_on_tty(cmd, timeout=60):
    """Runs cmd with stderr on a pseudo-terminal (stdout a pipe); returns (status, stdout,
    what the terminal got)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    tty = b""
    while True:
        r, _, _ = select.select([master], [], [], timeout * pmfs.TIME_FACTOR)
        if not r:
            p.kill()
            raise Failure(f"{' '.join(cmd)}: no end within {timeout}s")
        try:
            chunk = os.read(master, 65536)
        except OSError:                      # EIO: the other side is closed
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    out = p.stdout.read().decode()
    p.stdout.close()
    return p.wait(), out, tty.decode(errors="replace")


@test(size="256M")
def ctl_progress_only_on_tty(m):
    """Progress ("scanning: ... (100%)", "deduping: ...") goes to stderr when it is a terminal,
    never with -q; the summary goes to stdout either way."""
    files, planted = plant_tree(m, block_size(m))
    st, out, tty = run_on_tty([m.cfg.ctl, "dedupe", "--scan", "-q", m.path("t")])
    eq(st, 0, f"dedupe --scan -q on a terminal:\n{out}{tty}")
    eq(tty, "", "what -q wrote to the terminal")
    expect_summary(out, {"deduped": planted}, "dedupe --scan -q")
    for p, d in files.items():
        same_file(p, d, f"{p} after dedupe --scan")
    f = m.path("t", "f1")
    write_big(m.path("copy"), read_file(f))
    st, out, tty = run_on_tty([m.cfg.ctl, "dedupe", "--scan", m.path("t"), m.path("copy")])
    eq(st, 0, f"dedupe --scan on a terminal:\n{out}{tty}")
    check("\rscanning: " in tty and "(100%)" in tty and "\rdeduping: " in tty,
          f"progress on the terminal: {tty!r}")
    check("scanning" not in out, f"progress in stdout:\n{out}")
    # all of f1 but its zero blocks
    expect_summary(out, {"duplicate": MiB - 64 * KiB, "deduped": MiB - 64 * KiB},
                   "dedupe --scan of a copy")
    st, out, tty = run_on_tty([m.cfg.ctl, "dedupe", f, m.path("copy")])
    eq(st, 0, f"dedupe SRC DST on a terminal:\n{out}{tty}")
    check("\rcomparing: " in tty and "(100%)" in tty, f"progress of SRC DST: {tty!r}")
    # SRC DST compares zero blocks too: those two files wrote as data
    expect_summary(out, {"already shared": MiB - 64 * KiB, "duplicate": 64 * KiB,
                         "deduped": 64 * KiB}, "dedupe f1 copy")
    check_mount_sharing(m, "after scans on a terminal")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
