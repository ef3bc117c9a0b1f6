#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Reflink through the kernel (issue 4): `cp` through the mount shares blocks (copy_file_range),
`cp --reflink=always` and FICLONE are refused by the kernel while `pmfusectl clone` and the pmfuse
clone ioctl work, copy-on-write keeps every copy private and costs about one CoW extent (and the
per-file CoW extent size hint sets how much), space comes back when copies are deleted in any
order, clone chains, same-file clones, sparse clones, FICLONERANGE errors (also for an
unprivileged caller), concurrent writers on both copies, clones racing writes (never a torn
block), kill -9 of the daemon during clones / CoW writes / unshares, unshare / truncate / punch
of shared extents, ENOSPC during CoW, copy_file_range at congruent and incongruent offsets and
over 4 GiB of holes, and `pmfusectl stat` / `du`. Every test checks again after an unmount and
remount, and checks the sharing invariant over every file of the mount: each pool block is
reported (PMFUSE_IOC_GET_EXTENTS) with a refcount equal to the number of places that map it.

Helpers pmfs.py lacks (ioctls, pmfusectl, statvfs space, the invariant) are in reflinkio.py."""

import sys
sys.dont_write_bytecode = True   # no __pycache__ in the source tree  # noqa: E402

import errno
import fcntl
import hashlib
import itertools
import mmap
import os
import random
import struct
import subprocess
import threading
import time

import pmfs
from pmfs import (check, eq, expect_errno, errno_of, test, write_file, read_file, pread_all,
                  pwrite_all, same_bytes, fallocate, run_as, FICLONE, FICLONERANGE,
                  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, Failure)
from reflinkio import (clone_range, clone_file, unshare, extents_of, shared_bytes,
                       check_mount_sharing, check_mount_sharing_after_unlink, used_bytes,
                       block_size, wait_used, ctl, parse_du, parse_stat, shared_union,
                       make_data, write_big, sha_file, same_file, cfr_all, data_map,
                       refcounts_by_block, COW_EXTENT_BLOCKS, EXTENT_SHARED)

MiB = 1 << 20
SLACK_BLOCKS = 16      # metadata blocks a test tolerates when it says "space came back"
META_BLOCKS = 8        # metadata blocks one CoW write may add (extent map, refcount records)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def mib(n):
    return n / MiB


def private_ranges(path):
    """[(logical, length)] of the file's unshared extents."""
    _, exts = extents_of(path)
    return [(e.logical, e.length) for e in exts if e.refcount <= 1]


def expect_fully_shared(path, size, what, refs=None):
    """Every block of a dense file is mapped and shared (with refcount refs if given)."""
    bs, exts = extents_of(path)
    mapped = sum(e.length for e in exts)
    eq(mapped, (size + bs - 1) // bs * bs, f"{what}: bytes mapped by {os.path.basename(path)}")
    for e in exts:
        if e.refcount < 2 or not e.flags & EXTENT_SHARED:
            raise Failure(f"{what}: {os.path.basename(path)} has an unshared extent "
                          f"at {e.logical} (+{e.length}), refcount {e.refcount}")
        if refs is not None and e.refcount != refs:
            raise Failure(f"{what}: {os.path.basename(path)} extent at {e.logical} has "
                          f"refcount {e.refcount}, expected {refs}")


def write_byte(path, off, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        eq(os.pwrite(fd, bytes([value]), off), 1, "one-byte pwrite")
    finally:
        os.close(fd)


def big_size():
    """256 MiB as the issue says; scaled down (not below 64 MiB) for the sanitizer build."""
    return max(64, int(256 * pmfs.SCALE)) * MiB


# ---------------------------------------------------------------------------------------------
# cp through the mount


@test(size="1G", timeout=300)
def cp_shares_blocks(m):
    """cp and cp --reflink=auto of a 256 MiB file take < 1% new space; one byte written into a
    copy leaves the original intact and costs about one CoW extent; deleting returns it all."""
    size = big_size()
    bs = block_size(m)
    base = used_bytes(m)
    a, b, c = m.path("a"), m.path("b"), m.path("c")
    data = make_data(size, m.rng, stamp=1)
    h = write_big(a, data)
    used_a = used_bytes(m)
    check(used_a - base >= size, f"writing {mib(size)} MiB used only {used_a - base} bytes")

    for dst, cmd in ((b, ["cp", a, b]), (c, ["cp", "--reflink=auto", a, c])):
        before = used_bytes(m)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120 * pmfs.TIME_FACTOR)
        eq(r.returncode, 0, f"{' '.join(cmd[:-2])} exit status ({r.stdout.strip()})")
        grew = used_bytes(m) - before
        check(grew < size / 100,
              f"{' '.join(cmd[:-2])} of {mib(size):.0f} MiB raised used space by {grew} bytes "
              f"({100 * grew / size:.2f}%), expected < 1%")
        eq(sha_file(dst), h, f"contents of the {' '.join(cmd[:-2])} copy")
        expect_fully_shared(dst, size, " ".join(cmd[:-2]))
    expect_fully_shared(a, size, "original after two copies", refs=3)
    check_mount_sharing(m, "after cp")

    # one byte into the copy b
    off = size // 2 + 12345
    old = data[off]
    before = used_bytes(m)
    write_byte(b, off, old ^ 0xFF)
    cost = used_bytes(m) - before
    check(cost <= (COW_EXTENT_BLOCKS + META_BLOCKS) * bs,
          f"a one-byte write into a shared file used {cost} bytes ({cost // bs} blocks), "
          f"expected at most one CoW extent ({COW_EXTENT_BLOCKS} blocks) + {META_BLOCKS}")
    check(cost >= bs, f"a one-byte CoW write used {cost} bytes: no block was allocated?")
    eq(sha_file(a), h, "the original after a write into its copy")
    eq(sha_file(c), h, "the other copy after a write into b")
    data[off] ^= 0xFF
    eq(sha_file(b), sha(data), "the written copy (one byte changed)")
    priv = private_ranges(b)
    check(priv and sum(n for _, n in priv) <= COW_EXTENT_BLOCKS * bs,
          f"b's private extents after a one-byte write: {priv}")
    check(any(lo <= off < lo + n for lo, n in priv),
          f"the written byte at {off} is not in a private extent of b: {priv}")
    check_mount_sharing(m, "after the CoW write")

    m.remount()
    eq(sha_file(b), sha(data), "b after remount")
    data[off] ^= 0xFF
    eq(sha_file(a), h, "a after remount")
    eq(sha_file(c), h, "c after remount")
    check_mount_sharing(m, "after remount")
    used_3 = used_bytes(m)

    # delete the original: b and c still hold its blocks
    os.unlink(a)
    wait_used(m, used_3, SLACK_BLOCKS * bs, "after deleting the original")
    check(used_bytes(m) >= used_3 - (COW_EXTENT_BLOCKS + SLACK_BLOCKS) * bs,
          f"deleting the original freed {used_3 - used_bytes(m)} bytes although both copies "
          "still map its blocks")
    eq(sha_file(c), h, "c after deleting the original")
    check_mount_sharing(m, "after deleting the original")
    os.unlink(b)
    wait_used(m, used_a, SLACK_BLOCKS * bs, "after deleting the original and b")
    eq(sha_file(c), h, "c after deleting a and b")
    expect_no_sharing(c, "c, the last copy")
    m.remount()
    eq(sha_file(c), h, "c, the last copy, after remount")
    os.unlink(c)
    wait_used(m, base, SLACK_BLOCKS * bs, "after deleting every copy")


def expect_no_sharing(path, what):
    _, exts = extents_of(path)
    for e in exts:
        if e.refcount != 1 or e.flags & EXTENT_SHARED:
            raise Failure(f"{what}: extent at {e.logical} (+{e.length}) still shared, "
                          f"refcount {e.refcount}")


@test(size="256M")
def reflink_always_refused_ctl_clone_works(m):
    """The kernel never forwards FICLONE/FICLONERANGE to FUSE, so cp --reflink=always fails;
    pmfusectl clone (the pmfuse ioctl) is the way, with the semantics of cp --reflink=always."""
    bs = block_size(m)
    a = m.path("a")
    data = make_data(4 * MiB + 123, m.rng, stamp=2)
    h = write_big(a, data)

    r = subprocess.run(["cp", "--reflink=always", a, m.path("b")], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    check(r.returncode != 0, "cp --reflink=always succeeded on a FUSE mount; the kernel "
          "should refuse FICLONE before it reaches the daemon")
    sfd = os.open(a, os.O_RDONLY)
    dfd = os.open(m.path("b"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    expect_errno(errno.EOPNOTSUPP, fcntl.ioctl, dfd, FICLONE, sfd)
    expect_errno(errno.EOPNOTSUPP, fcntl.ioctl, dfd, FICLONERANGE,
                 struct.pack("=qQQQ", sfd, 0, 0, 0))
    os.close(dfd)
    os.close(sfd)

    # pmfusectl clone: a new destination
    before = used_bytes(m)
    ctl(m, "clone", a, m.path("c"))
    eq(sha_file(m.path("c")), h, "pmfusectl clone copy")
    eq(os.stat(m.path("c")).st_size, len(data), "size of the clone")
    expect_fully_shared(m.path("c"), len(data), "pmfusectl clone")
    check(used_bytes(m) - before <= SLACK_BLOCKS * bs,
          f"pmfusectl clone used {used_bytes(m) - before} bytes")
    # an existing, larger destination is replaced, like cp --reflink=always
    d = m.path("d")
    other = make_data(9 * MiB, m.rng, stamp=3)
    write_big(d, other)
    ctl(m, "clone", a, d)
    eq(os.stat(d).st_size, len(data), "clone over a larger file: size")
    eq(sha_file(d), h, "clone over a larger file: contents")
    # --range SRC_OFF LEN DST_OFF into an existing file: the rest of it stays
    e = m.path("e")
    write_big(e, other)
    ctl(m, "clone", "--range", MiB, 2 * MiB, 4 * MiB, a, e)
    exp = bytearray(other)
    exp[4 * MiB:6 * MiB] = data[MiB:3 * MiB]
    same_file(e, exp, "pmfusectl clone --range")
    refs = refcounts_by_block(e)
    for blk in range(4 * MiB // bs, 6 * MiB // bs):     # a, c, d and e own them now
        check(refs[blk][1] == 4, f"block {blk} of the range clone has refcount {refs[blk][1]}")
    check(refs[0][1] == 1 and refs[7 * MiB // bs][1] == 1, "blocks outside the range shared")
    # it fails rather than copies: a source outside the mount
    outside = os.path.join(m.tmp, "outside")
    write_file(outside, b"x" * 8192)
    r = ctl(m, "clone", outside, m.path("f"), ok=False)
    check(r.returncode != 0, "pmfusectl clone from another filesystem succeeded")
    check(not os.path.exists(m.path("f")) or os.stat(m.path("f")).st_size == 0,
          "pmfusectl clone from another filesystem copied the data")
    r = ctl(m, "clone", m.mnt, m.path("g"), ok=False)
    check(r.returncode != 0, "pmfusectl clone of a directory succeeded")
    r = ctl(m, "clone", m.path("missing"), m.path("g"), ok=False)
    check(r.returncode != 0, "pmfusectl clone of a missing file succeeded")
    check_mount_sharing(m, "after pmfusectl clones")
    m.remount()
    eq(sha_file(m.path("c")), h, "clone after remount")
    eq(sha_file(d), h, "clone over a larger file after remount")
    same_file(e, exp, "range clone after remount")
    eq(sha_file(a), h, "original after remount")
    check_mount_sharing(m, "after remount")


# ---------------------------------------------------------------------------------------------
# copy-on-write


@test(size="256M")
def cow_one_byte_writes(m):
    """One-byte writes at the start, inside, across block edges and in the partial EOF block of
    a copy: the original stays byte-for-byte intact and each write costs <= one CoW extent."""
    bs = block_size(m)
    size = 32 * MiB + 1000
    a, b = m.path("a"), m.path("b")
    data = make_data(size, m.rng, stamp=4)
    h = write_big(a, data)
    clone_file(a, b)
    exp = bytearray(data)
    for off in (0, 5 * MiB + 7, 9 * MiB + bs - 1, 20 * MiB, size - 1, size - 1000):
        before = used_bytes(m)
        write_byte(b, off, exp[off] ^ 0x5A)
        exp[off] ^= 0x5A
        cost = used_bytes(m) - before
        check(cost <= (COW_EXTENT_BLOCKS + META_BLOCKS) * bs,
              f"one-byte write at {off} used {cost // bs} blocks, expected <= "
              f"{COW_EXTENT_BLOCKS} + {META_BLOCKS}")
        eq(sha_file(a), h, f"original after writing the copy at {off}")
        check_mount_sharing(m, f"after the write at {off}")
    same_file(b, exp, "copy after the writes")
    # the original's own write goes to the blocks it now owns alone, or CoWs the shared ones
    expb = bytes(exp)
    write_byte(a, 11 * MiB, data[11 * MiB] ^ 1)
    data[11 * MiB] ^= 1
    same_file(b, expb, "copy after a write into the original")
    # a write over a whole shared extent and more (1 MiB unaligned)
    buf = m.rng.randbytes(MiB + 3)
    fd = os.open(b, os.O_WRONLY)
    pwrite_all(fd, buf, 13 * MiB + 5)
    os.close(fd)
    exp[13 * MiB + 5:14 * MiB + 8] = buf
    same_file(b, exp, "copy after a 1 MiB unaligned write")
    same_file(a, data, "original after a 1 MiB write into the copy")
    check_mount_sharing(m, "after the writes")
    m.remount()
    same_file(a, data, "original after remount")
    same_file(b, exp, "copy after remount")
    check_mount_sharing(m, "after remount")


FS_IOC_FSGETXATTR = 0x801C581F      # _IOR('X', 31, struct fsxattr)
FS_IOC_FSSETXATTR = 0x401C5820      # _IOW('X', 32, struct fsxattr)
FS_XFLAG_COWEXTSIZE = 0x00010000
FSXATTR_FMT = "=IIIII8x"            # xflags, extsize, nextents, projid, cowextsize, pad


def get_fsxattr(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(struct.calcsize(FSXATTR_FMT))
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
        return list(struct.unpack(FSXATTR_FMT, buf))
    finally:
        os.close(fd)


def set_cowextsize(path, nbytes):
    x = get_fsxattr(path)
    x[0] |= FS_XFLAG_COWEXTSIZE
    x[4] = nbytes
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_FSSETXATTR, struct.pack(FSXATTR_FMT, *x))
    finally:
        os.close(fd)


@test(size="128M")
def cow_extent_size_hint(m):
    """The per-file CoW extent size hint (FS_IOC_FSSETXATTR fsx_cowextsize, as on XFS) sets how
    much one small CoW write allocates; it persists across a remount."""
    bs = block_size(m)
    a, b = m.path("a"), m.path("b")
    data = make_data(16 * MiB, m.rng, stamp=24)
    h = write_big(a, data)
    clone_file(a, b)
    exp = bytearray(data)
    for blocks, off in ((4, 3 * MiB + 5), (64, 9 * MiB + 77), (1, 14 * MiB)):
        set_cowextsize(b, blocks * bs)
        x = get_fsxattr(b)
        eq(x[4], blocks * bs, f"fsx_cowextsize read back after setting {blocks} blocks")
        before = used_bytes(m)
        write_byte(b, off, exp[off] ^ 0x11)
        exp[off] ^= 0x11
        cost = used_bytes(m) - before
        check(bs <= cost <= (blocks + META_BLOCKS) * bs,
              f"a one-byte CoW write with a hint of {blocks} blocks used {cost // bs} blocks")
        priv = [(lo, n) for lo, n in private_ranges(b) if lo <= off < lo + n]
        check(priv and priv[0][1] <= blocks * bs,
              f"the private extent holding the write with a hint of {blocks} blocks: {priv}")
    eq(sha_file(a), h, "the original")
    same_file(b, exp, "the copy")
    m.remount()
    eq(get_fsxattr(b)[4], bs, "fsx_cowextsize after remount")
    same_file(b, exp, "the copy after remount")
    check_mount_sharing(m, "after CoW with hints")


@test(size="256M")
def delete_either_then_both(m):
    """Deleting the original or the copy first leaves the other intact and fully private;
    deleting both returns the space, with the file open or not."""
    bs = block_size(m)
    base = used_bytes(m)
    for order in ("original first", "copy first", "original first, copy open"):
        a, b = m.path("a"), m.path("b")
        data = make_data(16 * MiB, m.rng, stamp=5)
        write_big(a, data)
        used_a = used_bytes(m)
        clone_file(a, b)
        cp = bytearray(data)
        fd = os.open(b, os.O_WRONLY)
        for off in (3 * MiB, 8 * MiB + 99):
            os.pwrite(fd, b"cow!", off)
            cp[off:off + 4] = b"cow!"
        os.close(fd)
        first, second = (a, b) if order.startswith("original") else (b, a)
        keep = cp if first == a else data
        holder = os.open(second, os.O_RDONLY) if "open" in order else None
        os.unlink(first)
        # either way the survivor owns one file's worth of blocks: the copy's CoW blocks
        # replace the original's blocks they were copied from, which only the original had
        wait_used(m, used_a, SLACK_BLOCKS * bs, f"{order}: after deleting the first")
        same_file(second, keep, f"{order}: survivor")
        expect_no_sharing(second, f"{order}: survivor")
        check_mount_sharing(m, f"{order}: after deleting the first")
        if holder is None:
            m.remount()
            same_file(second, keep, f"{order}: survivor after remount")
        os.unlink(second)
        if holder is not None:
            check(used_bytes(m) > base + 8 * MiB, f"{order}: an open file's blocks were freed")
            eq(sha(pread_all(holder, 16 * MiB)), sha(keep), f"{order}: open unlinked survivor")
            os.close(holder)
        wait_used(m, base, SLACK_BLOCKS * bs, f"{order}: after deleting both")


@test(size="256M", timeout=180)
def clone_chains(m):
    """A -> B -> C (B written in between, so C shares some blocks with A and B, some with B
    only), then the three deleted in each of the 6 orders, with a remount after the first
    deletion: the survivors stay intact, counts follow, and all the space comes back."""
    bs = block_size(m)
    base = used_bytes(m)
    for perm in itertools.permutations("ABC"):
        tag = "".join(perm)
        p = {x: m.path(f"{x}-{tag}") for x in "ABC"}
        exp = {"A": make_data(4 * MiB + 4 * bs + 17, m.rng, stamp=6)}
        write_big(p["A"], exp["A"])
        clone_file(p["A"], p["B"])
        exp["B"] = bytearray(exp["A"])
        fd = os.open(p["B"], os.O_WRONLY)
        for off in (0, 2 * MiB + 1, len(exp["B"]) - 3):
            buf = m.rng.randbytes(3)
            os.pwrite(fd, buf, off)
            exp["B"][off:off + 3] = buf
        os.close(fd)
        clone_file(p["B"], p["C"])
        exp["C"] = bytearray(exp["B"])
        refs = refcounts_by_block(p["C"])
        counts = {r for _, r in refs.values()}
        check(counts <= {2, 3} and 3 in counts,
              f"{tag}: C's blocks should be shared by 3 (A, B, C) or 2 (B, C): {sorted(counts)}")
        check_mount_sharing(m, f"{tag}: chain made")
        alive = set("ABC")
        for i, x in enumerate(perm):
            os.unlink(p[x])
            alive.discard(x)
            if i == 0:
                m.remount()
            for y in sorted(alive):
                same_file(p[y], exp[y], f"{tag}: {y} after deleting {x}")
            check_mount_sharing_after_unlink(m, f"{tag}: after deleting {x}")
        wait_used(m, base, SLACK_BLOCKS * bs, f"{tag}: after deleting the three")


@test(size="128M")
def same_file_clones(m):
    """Clones inside one file: non-overlapping ranges share blocks (refcount 2 within the
    file), overlapping ranges fail with EINVAL (ioctl and copy_file_range), a clone past EOF
    grows the file, and writes to either place CoW."""
    bs = block_size(m)
    f = m.path("f")
    data = make_data(64 * bs, m.rng, stamp=7)
    write_big(f, data)
    exp = bytearray(data)
    fd = os.open(f, os.O_RDWR)
    clone_range(fd, fd, 0, 8 * bs, 32 * bs)           # [0, 8) -> [32, 40)
    exp[32 * bs:40 * bs] = data[0:8 * bs]
    clone_range(fd, fd, 40 * bs, 8 * bs, 8 * bs)      # [40, 48) -> [8, 16)
    exp[8 * bs:16 * bs] = data[40 * bs:48 * bs]
    same_file(f, exp, "after two same-file clones")
    refs = refcounts_by_block(f)
    for blk in list(range(0, 8)) + list(range(32, 48)) + list(range(8, 16)):
        eq(refs[blk][1], 2, f"refcount of block {blk} after same-file clones")
    eq(refs[0][0], refs[32][0], "blocks 0 and 32 map the same pool block")
    for blk in range(16, 32):
        eq(refs[blk][1], 1, f"refcount of untouched block {blk}")
    # overlapping ranges
    expect_errno(errno.EINVAL, clone_range, fd, fd, 0, 8 * bs, 4 * bs)
    expect_errno(errno.EINVAL, clone_range, fd, fd, 4 * bs, 8 * bs, 0)
    expect_errno(errno.EINVAL, clone_range, fd, fd, 0, 8 * bs, 0)
    expect_errno(errno.EINVAL, clone_range, fd, fd, 0, 0, 8 * bs)   # to EOF overlaps
    expect_errno(errno.EINVAL, os.copy_file_range, fd, fd, 8 * bs, 0, 4 * bs)
    same_file(f, exp, "after refused overlapping clones")
    # past EOF: the file grows, with a hole between
    clone_range(fd, fd, 16 * bs, 4 * bs, 80 * bs)
    exp.extend(bytes(80 * bs - len(exp)))
    exp.extend(data[16 * bs:20 * bs])
    eq(os.fstat(fd).st_size, 84 * bs, "size after a clone past EOF")
    same_file(f, exp, "after a clone past EOF")
    eq(data_map(fd, 84 * bs)[-1], (80 * bs, 84 * bs), "the cloned range past EOF is data")
    # CoW on one place of a same-file pair
    os.pwrite(fd, b"ZZ", 33 * bs + 5)
    exp[33 * bs + 5:33 * bs + 7] = b"ZZ"
    same_file(f, exp, "after writing one place of a same-file pair")
    eq(pread_all(fd, bs, bs), bytes(data[bs:2 * bs]), "the other place of the pair")
    os.close(fd)
    check_mount_sharing(m, "same-file clones")
    m.remount()
    same_file(f, exp, "after remount")
    check_mount_sharing(m, "same-file clones after remount")


@test(size="128M")
def sparse_clones(m):
    """Holes stay holes: a clone has the same SEEK_DATA/SEEK_HOLE map and st_blocks as its
    source, and cloning holes over data leaves holes (and frees the data's blocks)."""
    bs = block_size(m)
    size = 8 * MiB
    src = m.path("src")
    fd = os.open(src, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    exp = bytearray(size)
    for off, n in ((0, 64 * 1024), (MiB, 8192), (3 * MiB + bs, 2 * bs), (size - bs, bs)):
        buf = m.rng.randbytes(n)
        pwrite_all(fd, buf, off)
        exp[off:off + n] = buf
    smap = data_map(fd, size)
    sblocks = os.fstat(fd).st_blocks
    os.close(fd)
    check(len(smap) == 4, f"source data map {smap}")
    # a whole-file clone
    dst = m.path("dst")
    clone_file(src, dst)
    same_file(dst, exp, "sparse clone")
    fd = os.open(dst, os.O_RDONLY)
    eq(data_map(fd, size), smap, "SEEK_DATA/SEEK_HOLE map of the clone")
    eq(os.fstat(fd).st_blocks, sblocks, "st_blocks of the clone")
    os.close(fd)
    eq([(e.logical, e.length) for e in extents_of(dst)[1]],
       [(e.logical, e.length) for e in extents_of(src)[1]], "extents of the clone")
    # a clone over a fully written file: the source's holes become holes, the blocks go back
    full = m.path("full")
    write_big(full, make_data(size, m.rng, stamp=8))
    before = used_bytes(m)
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(full, os.O_RDWR)
    clone_range(dfd, sfd, 0, 0, 0)
    eq(data_map(dfd, size), smap, "data map after cloning a sparse file over a full one")
    os.close(dfd)
    same_file(full, exp, "sparse clone over a full file")
    freed = before - used_bytes(m)
    check(freed >= size - 200 * 1024 - SLACK_BLOCKS * bs,
          f"cloning holes over {size // MiB} MiB of data freed only {freed} bytes")
    # only a hole of the source over data
    part = m.path("part")
    pdata = make_data(size, m.rng, stamp=9)
    write_big(part, pdata)
    pfd = os.open(part, os.O_RDWR)
    clone_range(pfd, sfd, 2 * MiB, MiB, 2 * MiB)
    pdata[2 * MiB:3 * MiB] = bytes(MiB)
    eq(data_map(pfd, size), [(0, 2 * MiB), (3 * MiB, size)], "data map after cloning a hole")
    os.close(pfd)
    os.close(sfd)
    same_file(part, pdata, "a hole cloned over data")
    check_mount_sharing(m, "sparse clones")
    m.remount()
    for p, e in ((src, exp), (dst, exp), (full, exp), (part, pdata)):
        same_file(p, e, f"{os.path.basename(p)} after remount")
    fd = os.open(dst, os.O_RDONLY)
    eq(data_map(fd, size), smap, "clone's data map after remount")
    os.close(fd)
    check_mount_sharing(m, "sparse clones after remount")


@test(size="128M")
def clone_errors(m):
    """FICLONERANGE semantics of PMFUSE_IOC_CLONE_RANGE: EINVAL for unaligned offsets and
    lengths (except a range ending at the source's EOF beyond the destination's EOF), a source
    offset at or past EOF; EISDIR for a directory; EBADF for a destination not open for
    writing or opened O_APPEND, a source not open for reading, a closed descriptor; EXDEV for a
    source on another filesystem or another pmfuse mount; the daemon's own checks for an
    unprivileged caller. Nothing changes when a clone fails."""
    bs = block_size(m)
    a, b = m.path("a"), m.path("b")
    data = make_data(16 * bs + 100, m.rng, stamp=10)
    write_big(a, data)
    bdata = make_data(32 * bs, m.rng, stamp=11)
    write_big(b, bdata)
    sfd = os.open(a, os.O_RDONLY)
    dfd = os.open(b, os.O_RDWR)
    cases = [
        ("unaligned source offset", errno.EINVAL, (dfd, sfd, 100, bs, 0)),
        ("unaligned destination offset", errno.EINVAL, (dfd, sfd, 0, bs, 100)),
        ("unaligned length inside both files", errno.EINVAL, (dfd, sfd, 0, bs + 1, 0)),
        ("source offset past EOF", errno.EINVAL, (dfd, sfd, 20 * bs, bs, 0)),
        ("length past the source's EOF", errno.EINVAL, (dfd, sfd, 0, 20 * bs, 0)),
        ("partial EOF block into the middle of the destination", errno.EINVAL,
         (dfd, sfd, 16 * bs, 100, 4 * bs)),
    ]
    for what, err, args in cases:
        expect_errno(err, clone_range, *args)
    same_file(b, bdata, "destination after refused clones")
    # a range that ends at the source's EOF past the destination's EOF is fine
    clone_range(dfd, sfd, 8 * bs, 0, 32 * bs)
    exp = bytearray(bdata) + data[8 * bs:]
    same_file(b, exp, "clone of the source's tail (partial EOF block) past EOF")
    os.close(dfd)

    d = m.path("d")
    os.mkdir(d)
    dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    tfd = os.open(b, os.O_RDWR)
    expect_errno(errno.EISDIR, clone_range, tfd, dirfd, 0, 0, 0)
    os.close(dirfd)
    wo = os.open(a, os.O_WRONLY)
    expect_errno(errno.EBADF, clone_range, tfd, wo, 0, 0, 0)
    os.close(wo)
    closed = os.open(a, os.O_RDONLY)
    os.close(closed)
    expect_errno(errno.EBADF, clone_range, tfd, closed, 0, 0, 0)
    expect_errno(errno.EBADF, clone_range, tfd, 100000, 0, 0, 0)
    os.close(tfd)
    ro = os.open(b, os.O_RDONLY)
    expect_errno(errno.EBADF, clone_range, ro, sfd, 0, 0, 0)
    os.close(ro)
    ap = os.open(b, os.O_WRONLY | os.O_APPEND)
    expect_errno(errno.EBADF, clone_range, ap, sfd, 0, 0, 0)
    os.close(ap)
    # EXDEV: a source on tmpfs, a source on another pmfuse mount
    outside = os.path.join(m.tmp, "outside")
    write_file(outside, bytes(4 * bs))
    ofd = os.open(outside, os.O_RDONLY)
    tfd = os.open(b, os.O_RDWR)
    expect_errno(errno.EXDEV, clone_range, tfd, ofd, 0, 0, 0)
    os.close(ofd)
    m2 = m.another(size="64M")
    write_file(m2.path("x"), bytes(4 * bs))
    xfd = os.open(m2.path("x"), os.O_RDONLY)
    expect_errno(errno.EXDEV, clone_range, tfd, xfd, 0, 0, 0)
    os.close(xfd)
    os.close(tfd)
    os.close(sfd)
    same_file(b, exp, "destination after every refused clone")

    # an unprivileged caller: clones its own files; read-only fds and others' files refused
    u = m.path("u")
    os.mkdir(u)
    os.chmod(u, 0o777)
    secret = m.path("secret")
    write_file(secret, b"s" * bs, mode=0o600)
    rootfile = m.path("rootfile")
    write_file(rootfile, b"r" * bs, mode=0o644)

    def as_user():
        own = os.path.join(u, "own")
        write_file(own, b"o" * (2 * bs))
        s = os.open(own, os.O_RDONLY)
        d = os.open(os.path.join(u, "copy"), os.O_RDWR | os.O_CREAT, 0o644)
        clone_range(d, s, 0, 0, 0)
        out = {"own clone": os.pread(d, 2 * bs, 0) == b"o" * (2 * bs)}
        r = os.open(own, os.O_RDONLY)
        out["read-only destination"] = errno_of(clone_range, r, s, 0, 0, 0)
        os.close(r)
        rf = os.open(rootfile, os.O_RDONLY)
        out["others' file as source"] = errno_of(clone_range, d, rf, 0, 0, 0)
        os.close(rf)
        out["copy of others' file"] = os.pread(d, 8, 0)
        out["open others' file for writing"] = errno_of(os.open, rootfile, os.O_WRONLY)
        out["open a 0600 file"] = errno_of(os.open, secret, os.O_RDONLY)
        os.close(d)
        os.close(s)
        return out

    res = run_as(1000, 1000, as_user)
    eq(res["own clone"], True, "an unprivileged user clones its own file")
    eq(res["read-only destination"], errno.EBADF, "unprivileged: read-only destination")
    # a readable fd of someone else's file is a legitimate source (FICLONERANGE is fd-based)
    eq(res["others' file as source"], 0, "unprivileged: a readable fd of root's 0644 file")
    eq(res["copy of others' file"], b"r" * 8, "the clone of a readable file")
    eq(res["open others' file for writing"], errno.EACCES, "unprivileged: open root's file")
    eq(res["open a 0600 file"], errno.EACCES, "unprivileged: open root's 0600 file")
    r = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
                        m.cfg.ctl, "clone", a, rootfile], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    check(r.returncode != 0, "unprivileged pmfusectl clone into root's 0644 file succeeded")
    eq(read_file(rootfile), b"r" * bs, "root's file after a refused unprivileged clone")
    check_mount_sharing(m, "after clone errors")
    m.remount()
    same_file(b, exp, "destination after remount")
    check_mount_sharing(m, "after remount")


# ---------------------------------------------------------------------------------------------
# concurrency


def _writer(path, orig, seed, ops, size, go_fd):
    """Random writes into one copy, checking now and then that it reads back exactly its own
    writes; returns the sha256 of the model."""
    rng = random.Random(seed)
    model = bytearray(orig)
    fd = os.open(path, os.O_RDWR)
    if go_fd is not None:
        os.read(go_fd, 1)
    for i in range(ops):
        off = rng.randrange(size)
        n = min(rng.choice((1, 100, 4096, 5000, 65536, 200000)), size - off)
        buf = rng.randbytes(n)
        pwrite_all(fd, buf, off)
        model[off:off + n] = buf
        if i % 50 == 49:
            lo = rng.randrange(size)
            hi = min(size, lo + rng.randrange(1, 1 << 20))
            got = os.pread(fd, hi - lo, lo)
            if got != model[lo:hi]:
                same_bytes(got, bytes(model[lo:hi]), f"{path} [{lo}, {hi}) during the writes")
    got = pread_all(fd, size + 1)
    os.close(fd)
    same_bytes(got, bytes(model), f"{path} at the end of the writes")
    return sha(model)


def _reader(path, expect_sha, rounds):
    for _ in range(rounds):
        eq(sha_file(path), expect_sha, f"{path}, a clone nobody writes, while its siblings change")
    return True


@test(size="256M", timeout=240)
def concurrent_writers_processes(m):
    """Two processes write random ranges of two clones of one file at the same time (a third
    clone is re-read all the while): each copy holds exactly its own writes."""
    size = 16 * MiB
    a, b, c = m.path("a"), m.path("b"), m.path("c")
    orig = make_data(size, m.rng, stamp=12)
    h = write_big(a, orig)
    clone_file(a, b)
    clone_file(a, c)
    ops = pmfs.scaled(1500, 100)
    r, w = os.pipe()
    seeds = (m.rng.getrandbits(32), m.rng.getrandbits(32))
    ka = m.fork(_writer, a, orig, seeds[0], ops, size, r)
    kb = m.fork(_writer, b, orig, seeds[1], ops, size, r)
    kc = m.fork(_reader, c, h, 4)
    os.write(w, b"gg")
    ha, hb = ka.wait(240), kb.wait(240)
    kc.wait(240)
    os.close(r)
    os.close(w)
    eq(sha_file(a), ha, "a after the writers")
    eq(sha_file(b), hb, "b after the writers")
    eq(sha_file(c), h, "c, never written")
    check_mount_sharing(m, "after concurrent writers")
    m.remount()
    eq(sha_file(a), ha, "a after remount")
    eq(sha_file(b), hb, "b after remount")
    eq(sha_file(c), h, "c after remount")
    check_mount_sharing(m, "after remount")


@test(size="256M", timeout=240)
def concurrent_writers_threads(m):
    """Four threads of one process, two per copy on disjoint 64 KiB stripes, write both clones
    at once; each copy holds its own writes."""
    size = 8 * MiB
    stripe = 64 * 1024
    a, b = m.path("a"), m.path("b")
    orig = make_data(size, m.rng, stamp=13)
    write_big(a, orig)
    clone_file(a, b)
    models = {a: bytearray(orig), b: bytearray(orig)}
    errors = []
    barrier = threading.Barrier(4)
    ops = pmfs.scaled(1500, 100)

    def worker(path, parity, seed):
        try:
            rng = random.Random(seed)
            fd = os.open(path, os.O_RDWR)
            barrier.wait()
            mine = [s for s in range(size // stripe) if s % 2 == parity]
            for _ in range(ops):
                s = rng.choice(mine)
                off = s * stripe + rng.randrange(stripe)
                n = rng.randint(1, s * stripe + stripe - off)
                buf = rng.randbytes(n)
                pwrite_all(fd, buf, off)
                models[path][off:off + n] = buf
                lo = s * stripe
                got = os.pread(fd, stripe, lo)
                if got != models[path][lo:lo + stripe]:
                    raise Failure(f"{path}: stripe {s} does not read back its own writes")
            os.close(fd)
        except BaseException as e:  # noqa: B902 - reported by the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(p, par, m.rng.getrandbits(32)))
               for p in (a, b) for par in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    same_file(a, models[a], "a after the threads")
    same_file(b, models[b], "b after the threads")
    check_mount_sharing(m, "after threads")
    m.remount()
    same_file(a, models[a], "a after remount")
    same_file(b, models[b], "b after remount")
    check_mount_sharing(m, "after remount")


def _versioned_writer(path, nblocks, bs, shared, stop_path, seed):
    """Whole-block writes of (block, version) into path, versions rising; after each, the
    block's version goes to shared[blk] (8 bytes each) and the last version to shared[-1].
    Through a 'Q' memoryview: one aligned 8-byte store per slot, where struct.pack_into stores
    byte by byte, so that a reader could see 65535 -> 65536 pass through 0."""
    rng = random.Random(seed)
    slots = memoryview(shared).cast("Q")
    fd = os.open(path, os.O_WRONLY)
    v = 0
    while not os.path.exists(stop_path) and v < 10 ** 6:
        v += 1
        blk = rng.randrange(nblocks)
        pwrite_all(fd, struct.pack("<QQ", blk, v) * (bs // 16), blk * bs)
        slots[blk] = v
        slots[nblocks] = v
    os.close(fd)
    return v


@test(size="128M", timeout=120)
def clone_races_writes(m):
    """Clones of a file taken while another process overwrites its blocks: every block of each
    clone is one whole write (never torn), of its own place, and no older than what that block
    held when the clone began nor newer than the writer when it ended."""
    bs = block_size(m)
    nblocks = 512
    a = m.path("a")
    write_file(a, b"".join(struct.pack("<QQ", blk, 0) * (bs // 16) for blk in range(nblocks)))
    shared = mmap.mmap(-1, 8 * (nblocks + 1))
    stop = os.path.join(m.tmp, "stop")
    w = m.fork(_versioned_writer, a, nblocks, bs, shared, stop, m.rng.getrandbits(32))
    slots = memoryview(shared).cast("Q")       # whole 8-byte loads (see the writer)
    pmfs.wait_until(lambda: slots[nblocks] > 100, 30, "the writer got going")
    clones = pmfs.scaled(40, 5)
    for i in range(clones):
        snap0 = slots[:nblocks].tolist()
        b = m.path(f"b{i}")
        clone_file(a, b)
        last = slots[nblocks]
        got = read_file(b)
        eq(len(got), nblocks * bs, f"clone {i}: size")
        for blk in range(nblocks):
            block = got[blk * bs:(blk + 1) * bs]
            head = block[:16]
            if block != head * (bs // 16):
                raise Failure(f"clone {i}: block {blk} is torn (not one whole write)")
            wb, v = struct.unpack("<QQ", head)
            eq(wb, blk, f"clone {i}: block {blk} holds the data of block")
            # the write in flight at the end may be in (one past the last completed version)
            check(snap0[blk] <= v <= last + 1,
                  f"clone {i}: block {blk} has version {v}, not in [{snap0[blk]}, {last + 1}]")
        if i % 4 == 3:
            for j in range(i - 3, i):
                os.unlink(m.path(f"b{j}"))
    write_file(stop, b"")
    total = w.wait(60)
    check(total > 100, f"the writer made only {total} writes")
    final = slots[:nblocks].tolist()
    got = read_file(a)
    for blk in range(nblocks):
        eq(struct.unpack_from("<QQ", got, blk * bs), (blk, final[blk]), f"a's block {blk}")
    check_mount_sharing(m, "after clones racing writes")
    m.remount()
    check_mount_sharing(m, "after remount")


def _crash_workload(mnt, src, nblocks, bs, logpath, first, seed):
    """Clones src to new files, then writes into and unshares them, logging intents ('c i',
    'w i off len seed') before and completions ('C i', 'W i', 'U i') after each step, until
    the daemon dies under it (then the calls fail: ENOTCONN, or EIO). With the writeback cache
    a write is complete (durable) only once fsync returns: kill -9 loses the page cache."""
    rng = random.Random(seed)
    log = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(s):
        os.write(log, (s + "\n").encode())

    i = first
    try:
        while True:
            dst = os.path.join(mnt, f"b{i}")
            note(f"c {i}")
            clone_file(src, dst)
            note(f"C {i}")
            fd = os.open(dst, os.O_WRONLY)
            for _ in range(3):
                off = rng.randrange(nblocks * bs - 9000)
                n = rng.randrange(1, 9000)
                wseed = rng.getrandbits(32)
                note(f"w {i} {off} {n} {wseed}")
                pwrite_all(fd, random.Random(wseed).randbytes(n), off)
                if pmfs.WRITEBACK_CACHE:
                    os.fsync(fd)
                note(f"W {i}")
            os.close(fd)
            if i % 3 == 0:
                fd = os.open(dst, os.O_RDWR)
                note(f"u {i}")
                unshare(fd, 0, 0)
                note(f"U {i}")
                os.close(fd)
            i += 1
    except OSError as e:
        if e.errno not in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED):
            raise
    return i


@test(size="256M", timeout=300)
def kill9_during_clones(m):
    """kill -9 of the daemon while clones, CoW writes and unshares run, three times on one pool:
    after each remount every completed clone holds the source plus its completed writes, the
    clone in flight holds, per block, the source's block or a hole, a write in flight is old or
    new per byte, every block is counted once per owner (GET_EXTENTS over all files), and
    deleting everything returns every block."""
    bs = block_size(m)
    base = used_bytes(m)
    # a fragmented source (one extent per block, reverse order), so a clone takes many steps
    nblocks = 2048
    tmp_src = m.path("dense")
    write_big(tmp_src, make_data(nblocks * bs, m.rng, stamp=40))
    src = m.path("src")
    sfd = os.open(tmp_src, os.O_RDONLY)
    dfd = os.open(src, os.O_RDWR | os.O_CREAT, 0o644)
    for k in range(nblocks):
        clone_range(dfd, sfd, (nblocks - 1 - k) * bs, bs, k * bs)
    os.close(sfd)
    os.close(dfd)
    os.unlink(tmp_src)
    sdata = read_file(src)
    check(len(extents_of(src)[1]) > nblocks // 2, "the source is fragmented")
    models = {}                         # completed clones: name -> bytearray
    logpath = os.path.join(m.tmp, "ops.log")
    first = 0
    for cycle in range(3):
        child = m.fork(_crash_workload, m.mnt, src, nblocks, bs, logpath, first,
                       m.rng.getrandbits(32))
        pmfs.wait_until(lambda: child.exited() or os.path.exists(logpath) and
                        open(logpath).read().count("C ") >= 2, 60, "the workload got going")
        time.sleep(m.rng.uniform(0.02, 0.4))
        m.kill_daemon()
        res = child.join()
        if res[0] != "ok":
            raise Failure(f"cycle {cycle}: the workload failed: {res[1]!r}\n"
                          f"{res[2] if len(res) > 2 else ''}")
        first = res[1] + 1
        m.detach()
        m.mount()
        # replay the log
        inflight_clone, inflight_write = None, None
        with open(logpath) as f:
            lines = f.read().split("\n")
        for line in lines:
            w = line.split()
            if not w:
                continue
            name = m.path(f"b{w[1]}")
            if w[0] == "c":
                inflight_clone = name
            elif w[0] == "C":
                models[name] = bytearray(sdata)
                inflight_clone = None
            elif w[0] == "w":
                inflight_write = (name, int(w[2]), int(w[3]), int(w[4]))
            elif w[0] == "W":
                nm, off, n, ws = inflight_write
                models[nm][off:off + n] = random.Random(ws).randbytes(n)
                inflight_write = None
        os.unlink(logpath)
        same_file(src, sdata, f"cycle {cycle}: the source")
        for name, mo in models.items():
            got = read_file(name)
            if inflight_write and inflight_write[0] == name:
                _, off, n, ws = inflight_write
                new = random.Random(ws).randbytes(n)
                for k in range(n):
                    if got[off + k] not in (mo[off + k], new[k]):
                        raise Failure(f"cycle {cycle}: {os.path.basename(name)} byte "
                                      f"{off + k} neither old nor new after a torn write")
                mo[off:off + n] = got[off:off + n]
            if got != mo:
                same_bytes(got, bytes(mo), f"cycle {cycle}: {os.path.basename(name)}")
        if inflight_clone and os.path.exists(inflight_clone):
            got = read_file(inflight_clone)
            check(len(got) <= len(sdata), f"cycle {cycle}: the clone in flight grew too big")
            for blk in range(0, len(got), bs):
                piece = got[blk:blk + bs]
                check(piece == sdata[blk:blk + len(piece)] or piece.count(0) == len(piece),
                      f"cycle {cycle}: block {blk // bs} of the clone in flight is neither "
                      "the source's nor a hole")
            os.unlink(inflight_clone)
        check_mount_sharing(m, f"cycle {cycle}: after kill -9 and remount")
        tail = " | ".join(l for l in lines if l)[-60:]
        print(f"     cycle {cycle}: {len(models)} clones done, in flight: "
              f"{'clone' if inflight_clone else ''} {'write' if inflight_write else ''} "
              f"(log ends: {tail})")
    m.unmount()
    m.fsck()
    m.mount()
    for name in list(models) + [src]:
        os.unlink(name)
    wait_used(m, base, SLACK_BLOCKS * bs, "after deleting every file (no block leaked)")


# ---------------------------------------------------------------------------------------------
# unshare, truncate, punch, ENOSPC


@test(size="128M")
def unshare_ranges(m):
    """The unshare ioctl and `pmfusectl unshare` give a file private copies of its shared
    blocks (contents unchanged, holes kept, space taken), in a range or to EOF."""
    bs = block_size(m)
    size = 4 * MiB
    a, b = m.path("a"), m.path("b")
    data = make_data(size, m.rng, stamp=14)
    write_big(a, data)
    clone_file(a, b)
    before = used_bytes(m)
    fd = os.open(b, os.O_RDWR)
    unshare(fd, MiB, MiB)
    os.close(fd)
    grew = used_bytes(m) - before
    check(MiB <= grew <= MiB + (2 * COW_EXTENT_BLOCKS + META_BLOCKS) * bs,
          f"unsharing 1 MiB took {grew} bytes")
    priv = private_ranges(b)
    check(any(lo <= MiB and lo + n >= 2 * MiB for lo, n in priv) or
          sum(n for lo, n in priv if MiB <= lo < 2 * MiB) >= MiB,
          f"b's private extents after unsharing [1 MiB, 2 MiB): {priv}")
    same_file(b, data, "b after a range unshare")
    same_file(a, data, "a after b's range unshare")
    check_mount_sharing(m, "after a range unshare")
    ctl(m, "unshare", b)
    same_file(b, data, "b after pmfusectl unshare")
    expect_no_sharing(b, "b after pmfusectl unshare")
    expect_no_sharing(a, "a after b's unshare")
    took = used_bytes(m) - before
    # (metadata may shrink: the last shared record gone, a refcount tree block is freed)
    check(size - META_BLOCKS * bs <= took <= size + (2 * COW_EXTENT_BLOCKS + META_BLOCKS) * bs,
          f"unsharing the whole of a {size}-byte file took {took} bytes")
    u1 = used_bytes(m)
    ctl(m, "unshare", b, 0, bs)
    check(used_bytes(m) - u1 <= META_BLOCKS * bs, "unsharing private blocks took space")
    # holes stay holes
    s = m.path("sparse")
    fd = os.open(s, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 4 * MiB)
    os.pwrite(fd, b"x" * bs, 2 * MiB)
    os.close(fd)
    clone_file(s, m.path("sparse2"))
    ctl(m, "unshare", m.path("sparse2"))
    fd = os.open(m.path("sparse2"), os.O_RDONLY)
    eq(data_map(fd, 4 * MiB), [(2 * MiB, 2 * MiB + bs)], "data map after unsharing a sparse clone")
    os.close(fd)
    r = ctl(m, "unshare", m.path("nope"), ok=False)
    check(r.returncode != 0, "pmfusectl unshare of a missing file succeeded")
    check_mount_sharing(m, "after unshare")
    m.remount()
    same_file(a, data, "a after remount")
    same_file(b, data, "b after remount")
    check_mount_sharing(m, "after remount")


@test(size="128M")
def truncate_punch_zero_shared(m):
    """Truncate, punch and zero-range on a copy change only the copy (partial blocks at the
    edges are copied, never zeroed in place), and counts follow."""
    bs = block_size(m)
    size = 8 * MiB
    a, b, c = m.path("a"), m.path("b"), m.path("c")
    data = make_data(size, m.rng, stamp=15)
    h = write_big(a, data)
    clone_file(a, b)
    clone_file(a, c)
    fd = os.open(b, os.O_RDWR)
    os.ftruncate(fd, 3 * MiB + 100)             # the EOF block must be CoW'd, not zeroed
    os.ftruncate(fd, size)
    os.close(fd)
    eb = bytearray(data)
    eb[3 * MiB + 100:] = bytes(size - 3 * MiB - 100)
    same_file(b, eb, "b after truncating down to 3 MiB + 100 and up again")
    eq(sha_file(a), h, "a after truncating its copy b")
    check_mount_sharing(m, "after truncate")
    fd = os.open(c, os.O_RDWR)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB + 10, MiB + 10)
    fallocate(fd, FALLOC_FL_ZERO_RANGE, 5 * MiB + 1, MiB)
    fallocate(fd, 0, 6 * MiB, MiB)              # allocate over shared blocks: no change
    os.close(fd)
    ec = bytearray(data)
    ec[MiB + 10:2 * MiB + 20] = bytes(MiB + 10)
    ec[5 * MiB + 1:6 * MiB + 1] = bytes(MiB)
    same_file(c, ec, "c after punch, zero range and fallocate")
    eq(sha_file(a), h, "a after punching its copy c")
    same_file(b, eb, "b after punching c")
    check_mount_sharing(m, "after punch")
    m.remount()
    eq(sha_file(a), h, "a after remount")
    same_file(b, eb, "b after remount")
    same_file(c, ec, "c after remount")
    check_mount_sharing(m, "after remount")


@test(size="64M", timeout=120)
def enospc_during_cow(m):
    """Overwriting a clone needs new blocks; when the pool runs out, the write fails with
    ENOSPC (or is short), the original stays intact, the copy holds old or new data per block,
    and deleting the copy returns its blocks. With the writeback cache the writes fill the page
    cache and fsync fails with ENOSPC; every block of the copy is then old or new."""
    bs = block_size(m)
    free = m.statfs().f_bavail * bs
    size = int(free * 0.6) // MiB * MiB
    check(size >= 8 * MiB, f"pool too small: {free} bytes free")
    a, b = m.path("a"), m.path("b")
    data = make_data(size, m.rng, stamp=16)
    h = write_big(a, data)
    used_a = used_bytes(m)
    clone_file(a, b)
    new = make_data(size, m.rng, stamp=17)
    fd = os.open(b, os.O_WRONLY)
    done, err = 0, None
    while done < size:
        try:
            n = os.pwrite(fd, new[done:done + MiB], done)
        except OSError as e:
            err = e.errno
            break
        check(n > 0, "pwrite returned 0")
        done += n
    if pmfs.WRITEBACK_CACHE:
        eq(err, None, "writes into the page cache")
        try:
            os.fsync(fd)
        except OSError as e:
            err = e.errno
        done = 0                     # which blocks reached the pool is the kernel's order
    try:
        os.close(fd)
    except OSError as e:             # close reports a write-back error too
        if not pmfs.WRITEBACK_CACHE or e.errno != errno.ENOSPC:
            raise
    eq(err, errno.ENOSPC, f"overwriting a clone bigger than the free space (stopped at {done})")
    eq(sha_file(a), h, "the original after ENOSPC in its copy")
    check_mount_sharing(m, "after ENOSPC")
    # the copy is read after a remount: a failed write may leave the kernel's page cache of
    # it holding the bytes that were refused, and that is the kernel's business, not the pool's
    m.remount()
    eq(sha_file(a), h, "the original after ENOSPC and remount")
    got = read_file(b)
    eq(len(got), size, "size of the copy after ENOSPC")
    same_bytes(got[:done], bytes(new[:done]), "the copy's bytes written before ENOSPC")
    # the failed megabyte: each block old or new (never zeros or garbage)
    end = size if pmfs.WRITEBACK_CACHE else min(size, (done // bs + MiB // bs + 1) * bs)
    for off in range(done // bs * bs, end, bs):
        blk = got[off:off + bs]
        if off < done:
            continue
        check(blk == data[off:off + bs] or blk == new[off:off + bs],
              f"block at {off} of the copy after ENOSPC is neither old nor new")
    same_bytes(got[end:], bytes(data[end:]), "the copy's bytes after the failed write")
    del got
    check_mount_sharing(m, "after ENOSPC and remount")
    os.unlink(b)
    wait_used(m, used_a, SLACK_BLOCKS * bs, "after deleting the copy that hit ENOSPC")


# ---------------------------------------------------------------------------------------------
# copy_file_range


@test(size="128M")
def copy_file_range_offsets(m):
    """copy_file_range copies correctly at incongruent offsets (bytes), shares whole blocks
    at congruent unaligned ones (head and tail copied), stops at the source's EOF, never
    returns 0 inside it, and refuses overlapping ranges of one file."""
    bs = block_size(m)
    ssize = 3 * MiB + 777
    src = m.path("src")
    sdata = make_data(ssize, m.rng, stamp=18)
    write_big(src, sdata)
    sfd = os.open(src, os.O_RDONLY)
    models = {}

    def newfile(name, init=b""):
        p = m.path(name)
        write_file(p, init)
        models[p] = bytearray(init)
        return p, os.open(p, os.O_RDWR)

    def apply(p, doff, chunk):
        mo = models[p]
        if doff > len(mo):
            mo.extend(bytes(doff - len(mo)))
        mo[doff:doff + len(chunk)] = chunk

    # incongruent offsets
    p1, f1 = newfile("incongruent")
    n = cfr_all(sfd, f1, 2 * MiB, 1234, 5678)
    eq(n, 2 * MiB, "bytes copied at incongruent offsets")
    apply(p1, 5678, sdata[1234:1234 + 2 * MiB])
    same_file(p1, models[p1], "copy at incongruent offsets")
    # congruent but unaligned: whole blocks shared, head and tail copied
    p2, f2 = newfile("congruent")
    soff, doff, ln = 100, 3 * bs + 100, 2 * MiB
    eq(cfr_all(sfd, f2, ln, soff, doff), ln, "bytes copied at congruent offsets")
    apply(p2, doff, sdata[soff:soff + ln])
    same_file(p2, models[p2], "copy at congruent offsets")
    sh, _ = shared_bytes(p2)
    check(sh >= ln - 2 * bs, f"a congruent copy of {ln} bytes shares only {sh} bytes")
    # a whole file, one call asks for far more than it has
    p3, f3 = newfile("whole")
    n = os.copy_file_range(sfd, f3, 1 << 40, 0, 0)
    check(0 < n <= ssize, f"copy_file_range of a whole file returned {n}")
    done = n + cfr_all(sfd, f3, ssize - n, n, n)
    eq(done, ssize, "bytes of a whole-file copy")
    apply(p3, 0, sdata)
    same_file(p3, models[p3], "whole-file copy")
    sh, _ = shared_bytes(p3)
    check(sh >= ssize // bs * bs, f"a whole-file copy of {ssize} bytes shares only {sh} bytes "
          "(every whole block should be shared; the partial EOF block may be copied)")
    # at and past the source's EOF
    eq(os.copy_file_range(sfd, f3, 100, ssize - 10, 0), 10, "copy crossing the source's EOF")
    apply(p3, 0, sdata[ssize - 10:])
    eq(os.copy_file_range(sfd, f3, 100, ssize, 0), 0, "copy from the source's EOF")
    eq(os.copy_file_range(sfd, f3, 100, ssize + 5000, 0), 0, "copy from past the source's EOF")
    # into the middle of existing data: the rest stays
    p4, f4 = newfile("middle", bytes(make_data(MiB, m.rng, stamp=19)))
    eq(cfr_all(sfd, f4, 300000, 2 * bs, 5 * bs), 300000, "copy into existing data")
    apply(p4, 5 * bs, sdata[2 * bs:2 * bs + 300000])
    same_file(p4, models[p4], "copy into the middle of a file")
    # one file: non-overlapping (congruent and not) is fine, overlapping is EINVAL
    p5, f5 = newfile("self", bytes(sdata[:MiB]))
    eq(cfr_all(f5, f5, 256 * 1024, 0, 2 * MiB), 256 * 1024, "same-file congruent copy")
    apply(p5, 2 * MiB, models[p5][0:256 * 1024])
    eq(cfr_all(f5, f5, 256 * 1024, 4096, 3 * MiB + 7), 256 * 1024, "same-file incongruent copy")
    apply(p5, 3 * MiB + 7, models[p5][4096:4096 + 256 * 1024])
    expect_errno(errno.EINVAL, os.copy_file_range, f5, f5, MiB, 0, 4096)
    same_file(p5, models[p5], "same-file copies")
    # descriptors the kernel refuses
    ro = os.open(p1, os.O_RDONLY)
    expect_errno(errno.EBADF, os.copy_file_range, sfd, ro, 10, 0, 0)
    os.close(ro)
    ap = os.open(p1, os.O_WRONLY | os.O_APPEND)
    expect_errno(errno.EBADF, os.copy_file_range, sfd, ap, 10, 0, 0)
    os.close(ap)
    for f in (f1, f2, f3, f4, f5, sfd):
        os.close(f)
    models[src] = sdata
    for p, mo in models.items():
        same_file(p, mo, f"{os.path.basename(p)} after the copies")
    check_mount_sharing(m, "after copy_file_range")
    m.remount()
    for p, mo in models.items():
        same_file(p, mo, f"{os.path.basename(p)} after remount")
    check_mount_sharing(m, "after remount")


@test(size="128M", timeout=120)
def copy_file_range_huge_sparse(m):
    """cp and copy_file_range of a 6 GiB sparse file (past the 4 GiB a FUSE_COPY_FILE_RANGE
    request can carry): every call makes progress, the holes stay holes, no space is taken."""
    bs = block_size(m)
    size = 6 << 30
    src = m.path("src")
    fd = os.open(src, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    spots = [0, 1 << 30, (4 << 30) - bs, 4 << 30, size - bs]
    for i, off in enumerate(spots):
        os.pwrite(fd, struct.pack("<Q", i + 1) * (bs // 8), off)
    os.close(fd)
    before = used_bytes(m)
    sfd = os.open(src, os.O_RDONLY)
    dst = m.path("dst")
    dfd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o644)
    calls, done = 0, 0
    while done < size:
        n = os.copy_file_range(sfd, dfd, size - done, done, done)
        check(n > 0, f"copy_file_range returned {n} at {done} of {size}")
        done += n
        calls += 1
        check(calls < 100, "copy_file_range needs more than 100 calls for 6 GiB")
    eq(os.fstat(dfd).st_size, size, "size of the copy")
    for i, off in enumerate(spots):
        eq(os.pread(dfd, bs, off), struct.pack("<Q", i + 1) * (bs // 8), f"block at {off}")
    eq(os.pread(dfd, 16, 2 << 30), bytes(16), "a hole of the copy")
    check(used_bytes(m) - before <= SLACK_BLOCKS * bs,
          f"copying a sparse 6 GiB file took {used_bytes(m) - before} bytes")
    eq(len(data_map(dfd, size)), 4, f"data ranges of the copy: {data_map(dfd, size)}")
    os.close(dfd)
    os.close(sfd)
    r = subprocess.run(["cp", src, m.path("cp")], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120 * pmfs.TIME_FACTOR)
    eq(r.returncode, 0, f"cp of a sparse 6 GiB file ({r.stdout.strip()})")
    fd = os.open(m.path("cp"), os.O_RDONLY)
    for i, off in enumerate(spots):
        eq(os.pread(fd, bs, off), struct.pack("<Q", i + 1) * (bs // 8), f"cp: block at {off}")
    os.close(fd)
    check(used_bytes(m) - before <= 2 * SLACK_BLOCKS * bs,
          f"cp of a sparse 6 GiB file took {used_bytes(m) - before} bytes")
    check_mount_sharing(m, "after copying a sparse 6 GiB file")


# ---------------------------------------------------------------------------------------------
# pmfusectl stat and du


@test(size="128M")
def ctl_clone_unsynced_sizes_times(m):
    """pmfusectl clone and dedupe of files still being written (open, never fsync'd or closed:
    with the writeback cache the bytes are only in the page cache) see every byte written;
    a clone that grows its destination shows the new size at once, and its mtime and ctime
    move forward (with the writeback cache the kernel keeps them, and pmfusectl sets them)."""
    bs = block_size(m)
    a, b, c = m.path("a"), m.path("b"), m.path("c")
    data = make_data(3 * MiB + 99, m.rng, stamp=22)
    fa = os.open(a, os.O_RDWR | os.O_CREAT, 0o644)
    pwrite_all(fa, data, 0)
    write_file(b, b"b" * 5000)
    fb = os.open(b, os.O_RDWR)
    pwrite_all(fb, b"B" * bs, 0)                 # a dirty page over the range cloned into
    t0 = os.stat(b)
    time.sleep(0.05)
    ctl(m, "clone", "--range", 0, 0, 2 * bs, a, b)
    exp = b"B" * bs + b"b" * (5000 - bs) + bytes(2 * bs - 5000) + data
    eq(os.fstat(fb).st_size, len(exp), "size of the destination after a clone that grew it")
    same_file(b, exp, "the destination after a clone of a file still being written")
    t1 = os.stat(b)
    check(t1.st_mtime_ns > t0.st_mtime_ns and t1.st_ctime_ns > t0.st_ctime_ns,
          f"mtime/ctime after the clone: {t1.st_mtime_ns}/{t1.st_ctime_ns}, before "
          f"{t0.st_mtime_ns}/{t0.st_ctime_ns}")
    # a copy written the same way shares every block with the source after a dedupe
    fc = os.open(c, os.O_RDWR | os.O_CREAT, 0o644)
    pwrite_all(fc, data, 0)
    out = ctl(m, "dedupe", a, c).stdout
    same_file(c, data, "the copy after dedupe")
    os.fsync(fa)

    def blocks(p):
        return [e.physical + k for e in extents_of(p)[1] for k in range(0, e.length, bs)]
    eq(blocks(c), blocks(a),
       f"the copy's pool blocks after pmfusectl dedupe of files still being written:\n{out}")
    for fd in (fa, fb, fc):
        os.close(fd)
    m.remount()
    same_file(b, exp, "the destination after a remount")
    check_mount_sharing(m, "after clone and dedupe of files being written")


@test(size="128M")
def ctl_stat_shows_sharing(m):
    """`pmfusectl stat --raw FILE...` lists each file's extents (logical, physical, length,
    refs, 'shared') exactly as PMFUSE_IOC_GET_EXTENTS reports them, and the totals; without
    --raw the same rows with human-readable lengths."""
    a, b, c, d = m.path("a"), m.path("b"), m.path("c"), m.path("d")
    data = make_data(MiB + 5, m.rng, stamp=20)
    write_big(a, data)
    clone_file(a, b)
    clone_file(a, c)
    write_byte(b, 512 * 1024, 7)
    write_big(d, make_data(MiB, m.rng, stamp=21))

    def compare(p, out, what):
        _, exts = extents_of(p)
        rows = parse_stat(out)
        want = [(e.logical, e.physical, e.length, e.refcount, bool(e.flags & EXTENT_SHARED))
                for e in exts]
        eq(rows, want, f"{what}: extent rows of pmfusectl stat --raw {os.path.basename(p)} "
           f"(logical, physical, length, refs, shared)")
        sh, priv = shared_bytes(p)
        tot = [l for l in out.splitlines() if "extent" in l and "mapped" in l]
        check(tot and str(sh) in tot[0] and str(priv) in tot[0] and str(sh + priv) in tot[0],
              f"{what}: totals line of pmfusectl stat --raw {os.path.basename(p)} "
              f"(mapped {sh + priv}, shared {sh}, exclusive {priv}):\n{out}")

    for p in (a, b, d):
        compare(p, ctl(m, "stat", "--raw", p).stdout, "before remount")
    check(any(r[4] for r in parse_stat(ctl(m, "stat", "--raw", b).stdout)) and
          any(not r[4] for r in parse_stat(ctl(m, "stat", "--raw", b).stdout)),
          "b has both shared and private extents")
    eq(sum(1 for r in parse_stat(ctl(m, "stat", "--raw", d).stdout) if r[4]), 0,
       "shared extents of an unshared file")
    # several files in one call; human-readable lengths
    out = ctl(m, "stat", a, b, d).stdout
    for p in (a, b, d):
        check(p in out, f"pmfusectl stat of three files does not name {p}:\n{out}")
    check("shared" in out, f"pmfusectl stat without --raw:\n{out}")
    r = ctl(m, "stat", m.path("missing"), ok=False)
    check(r.returncode != 0, "pmfusectl stat of a missing file succeeded")
    r = ctl(m, "stat", m.mnt, ok=False)
    check(r.returncode != 0, "pmfusectl stat of a directory succeeded")
    m.remount()
    for p in (a, b, c, d):
        compare(p, ctl(m, "stat", "--raw", p).stdout, "after remount")


@test(size="128M")
def ctl_du_totals(m):
    """`pmfusectl du --raw PATH...` (like btrfs filesystem du): per file total and exclusive
    bytes, per directory also the set shared bytes, and a last line over all paths counting
    each shared block once; all agreeing with PMFUSE_IOC_GET_EXTENTS."""
    bs = block_size(m)
    d = m.path("d")
    os.mkdir(d)
    a, b, c = (os.path.join(d, x) for x in "abc")
    write_big(a, make_data(4 * MiB, m.rng, stamp=22))
    clone_file(a, b)
    write_byte(b, MiB, 1)
    write_big(c, make_data(MiB, m.rng, stamp=23))
    e2 = m.path("e")                          # outside d, sharing with a and b
    clone_file(a, e2)
    os.link(c, m.path("c-link"))              # a second name: counted once

    def expect(rows, name, total, excl, shared, out):
        check(name in rows, f"pmfusectl du has no row for {name}:\n{out}")
        eq(rows[name], (total, excl, shared), f"pmfusectl du --raw row of {name} "
           "(total, exclusive, set shared)")

    def fig(paths):
        t = e = 0
        for p in paths:
            sh, priv = shared_bytes(p)
            t, e = t + sh + priv, e + priv
        return t, e

    out = ctl(m, "du", "--raw", a, b, c).stdout
    rows = parse_du(out)
    for p in (a, b, c):
        expect(rows, p, *fig([p]), None, out)
    expect(rows, "(all paths)", *fig([a, b, c]), shared_union([a, b, c]), out)
    out = ctl(m, "du", "--raw", d).stdout
    rows = parse_du(out)
    expect(rows, d, *fig([a, b, c]), shared_union([a, b, c]), out)
    for p in (a, b, c):
        expect(rows, p, *fig([p]), None, out)
    # -s: one line per path; two paths add a line for all, each shared block once
    out = ctl(m, "du", "-s", "--raw", d, e2).stdout
    rows = parse_du(out)
    eq(len(rows), 3, f"rows of pmfusectl du -s of two paths:\n{out}")
    expect(rows, d, *fig([a, b, c]), shared_union([a, b, c]), out)
    expect(rows, "(all paths)", *fig([a, b, c, e2]), shared_union([a, b, c, e2]), out)
    # the whole mount: c and c-link are one file
    out = ctl(m, "du", "-s", "--raw", m.mnt).stdout
    rows = parse_du(out)
    expect(rows, m.mnt, *fig([a, b, c, e2]), shared_union([a, b, c, e2]), out)
    # human-readable by default
    out = ctl(m, "du", d).stdout
    check("MiB" in out or "KiB" in out, f"pmfusectl du without --raw:\n{out}")
    r = ctl(m, "du", m.path("missing"), ok=False)
    check(r.returncode != 0, "pmfusectl du of a missing path succeeded")
    check(bs > 0, "block size")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
