#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Small files: a file of 1 byte to 4 KiB keeps its one extent in its inode (an inline map), so
it costs one data block and its metadata records, no map block. 10,000 such files: `du` counts
one block each, `df`'s used space grows by about a block plus the inode and the directory
entry per file (the bytes per file are printed), the bytes read back across a remount and fsck
is clean. And inline-map files through the other paths: clone and copy-on-write, unwritten
blocks from fallocate, hole punching, growing past two extents (a tree) and truncating back."""

import os
import random
import subprocess

import pmfs
import reflinkio
from pmfs import (check, eq, test, fallocate, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE)

BS = 4096
NFILES = 10000


def content(i, size):
    return bytes((i * 7 + k) & 0xff for k in range(size))


def settle(m):
    """statfs after the kernel has let go of what it still holds (forgets are asynchronous)."""
    os.sync()
    pmfs.drop_caches(2)
    return m.statfs()


@test(size="256M", timeout=900)
def ten_thousand_small_files(m):
    """10,000 files of 1 byte to 4 KiB in 10 directories: one data block each for du and
    st_blocks; df's used space per file is a block plus the inode's and the entry's share of
    their leaves (printed), never a second block; contents survive a remount; fsck clean."""
    rng = random.Random(int(os.environ.get("PMFUSE_SEED", "1234")))
    n = pmfs.scaled(NFILES, 200)
    sizes = [1, BS, BS - 1, 2] + [rng.randint(1, BS) for _ in range(n - 4)]
    dirs = [m.path(f"d{k}") for k in range(10)]
    for d in dirs:
        os.mkdir(d)
    s0 = settle(m)
    for i, size in enumerate(sizes):
        p = os.path.join(dirs[i % 10], f"small-file-{i:05d}")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, content(i, size))
        os.close(fd)
    s1 = settle(m)
    used = (s0.f_bfree - s1.f_bfree) * s1.f_frsize
    per_file = used / n
    print(f"# {n} files of 1..{BS} bytes: df {used} bytes more in use, "
          f"{per_file:.0f} bytes per file ({per_file - BS:.0f} beyond the data block)")
    for i, size in enumerate(sizes):
        st = os.stat(os.path.join(dirs[i % 10], f"small-file-{i:05d}"))
        eq(st.st_size, size, f"file {i} size")
        eq(st.st_blocks, BS // 512, f"file {i} st_blocks (one block)")
    # du: one block per file, plus what the directories themselves report
    dir_bytes = sum(os.stat(d).st_blocks * 512 for d in dirs)
    out = subprocess.run(["du", "-s", "-B1"] + dirs, check=True, capture_output=True,
                         text=True).stdout
    du_total = sum(int(line.split()[0]) for line in out.splitlines())
    eq(du_total, n * BS + dir_bytes, "du: one block per file (and the directories)")
    # df: one data block each and at most the records' share; a map block per file would
    # add a whole block
    check(used >= n * BS, f"df: {used} bytes for {n} blocks of data")
    check(per_file < BS + 1536, f"df: {per_file:.0f} bytes per small file (a block + records)")
    # issue 8's target: a block and at most 512 bytes of metadata per file (the short-name
    # tree's 64-byte entries make it reachable); with few files per directory the leaves'
    # fixed share weighs too much, so only from 2,000 files on (PMFUSE_TEST_SCALE >= 0.2)
    if n >= 2000:
        check(per_file <= BS + 512,
              f"df: {per_file:.0f} bytes per small file, issue 8 wants at most {BS + 512}")
    else:
        print(f"# the {BS + 512}-byte bound is not asserted below 2,000 files ({n} here)")
    m.unmount()
    m.fsck()
    m.mount()
    for i in rng.sample(range(n), min(n, 500)) + [0, 1, 2, 3]:
        with open(os.path.join(dirs[i % 10], f"small-file-{i:05d}"), "rb") as f:
            eq(f.read(), content(i, sizes[i]), f"file {i} after the remount")
    for i in range(n):
        os.unlink(os.path.join(dirs[i % 10], f"small-file-{i:05d}"))
    s2 = settle(m)
    check(s2.f_bfree >= s0.f_bfree - 16,
          f"the space came back ({s0.f_bfree - s2.f_bfree} blocks still used)")


@test(size="64M", timeout=300)
def inline_map_files_clone_cow_unwritten(m):
    """Clones and copy-on-write of a one-block file, fallocate (unwritten) and writes into it,
    punching, growing to three extents (a map tree) and truncating back: bytes, st_blocks,
    extent report and sharing right at each step; fsck clean at the end."""
    a, b = m.path("a"), m.path("b")
    with open(a, "wb") as f:
        f.write(b"A" * 100)
    bs, ext = reflinkio.extents_of(a)
    eq(len(ext), 1, "one extent")
    reflinkio.clone_file(a, b)
    reflinkio.check_mount_sharing(m, "after the clone")
    eq(reflinkio.extents_of(b)[1][0].physical, ext[0].physical, "the clone shares the block")
    fd = os.open(b, os.O_RDWR)
    os.pwrite(fd, b"bb", 10)                       # copy-on-write
    os.close(fd)
    with open(a, "rb") as f:
        eq(f.read(), b"A" * 100, "the original after CoW in the clone")
    with open(b, "rb") as f:
        eq(f.read(), b"A" * 10 + b"bb" + b"A" * 88, "the clone after CoW")
    check(reflinkio.extents_of(b)[1][0].physical != ext[0].physical, "the clone moved")

    # unwritten: two blocks preallocated past EOF, a byte into the second
    c = m.path("c")
    fd = os.open(c, os.O_RDWR | os.O_CREAT, 0o644)
    fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 * BS)
    _, ext = reflinkio.get_extents(fd)
    check(all(e.flags & reflinkio.EXTENT_UNWRITTEN for e in ext), "preallocated: unwritten")
    os.pwrite(fd, b"x", BS + 5)
    eq(os.pread(fd, 2 * BS, 0), bytes(BS + 5) + b"x", "zeros around the byte")
    eq(os.fstat(fd).st_blocks, 2 * BS // 512, "two blocks")
    # three extents (a tree), then punched back to one (inline again)
    os.pwrite(fd, b"y", 4 * BS)
    os.pwrite(fd, b"z", 6 * BS)
    _, ext = reflinkio.get_extents(fd)
    eq(len(ext), 4, f"four extents: {ext}")
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4 * BS, BS)
    eq(len(reflinkio.get_extents(fd)[1]), 3, "three extents after the punch")
    os.ftruncate(fd, 2 * BS)
    eq(len(reflinkio.get_extents(fd)[1]), 2, "two extents after a truncate")
    eq(os.pread(fd, 2 * BS, 0), bytes(BS + 5) + b"x" + bytes(BS - 6), "the bytes kept")
    os.ftruncate(fd, BS)
    _, ext = reflinkio.get_extents(fd)
    eq(len(ext), 1, "one extent after the truncate")
    eq(os.fstat(fd).st_blocks, BS // 512, "one block")
    eq(os.pread(fd, 2 * BS, 0), bytes(BS), "zeros (the first block was never written)")
    os.close(fd)
    m.unmount()
    m.fsck()
    m.mount()
    with open(b, "rb") as f:
        eq(f.read(), b"A" * 10 + b"bb" + b"A" * 88, "the clone after a remount")
    info = m.info()["features"]
    check("inline_map" in info, f"the pool has the inline map feature: {info}")
    check("short_dirs" in info, f"the pool has the short directories feature: {info}")


@test(size="64M", timeout=300)
def names_either_side_of_the_short_limit(m):
    """Names of 1, 45, 46, 47 and 255 bytes (46 is the longest kept in the short-entry tree)
    through the mount: created, listed, stat'ed, renamed to every other length and back
    within a directory and across two, hard-linked, removed; fsck clean."""
    lens = [1, 45, 46, 47, 255]
    a, b = m.path("a"), m.path("b")
    os.mkdir(a)
    os.mkdir(b)
    names = [chr(ord("a") + k) * n for k, n in enumerate(lens)]
    for k, name in enumerate(names):
        with open(os.path.join(a, name), "wb") as f:
            f.write(name.encode())
    eq(sorted(os.listdir(a)), sorted(names), "ls of the five names")
    inos = {name: os.stat(os.path.join(a, name)).st_ino for name in names}
    for k, name in enumerate(names):
        for j, other in enumerate(names):
            if j == k:
                continue
            new = other + "x" if len(other) < 255 else other[:-1] + "y"
            src, dst = os.path.join(a, name), os.path.join(b, new)
            os.rename(src, dst)                  # across directories, to another length
            eq(os.stat(dst).st_ino, inos[name], f"{len(name)} -> {len(new)} bytes: same inode")
            os.rename(dst, src)
            os.link(src, os.path.join(a, new))   # a second name of another length
            eq(os.stat(os.path.join(a, new)).st_nlink, 2, "two names")
            os.unlink(os.path.join(a, new))
        with open(os.path.join(a, name), "rb") as f:
            eq(f.read(), name.encode(), f"the {len(name)}-byte name's file")
    # within one directory, over an existing name of another length
    os.rename(os.path.join(a, names[2]), os.path.join(a, names[3]))
    eq(os.stat(os.path.join(a, names[3])).st_ino, inos[names[2]], "46 over 47 bytes")
    check(not os.path.exists(os.path.join(a, names[2])), "the 46-byte name is gone")
    eq(len(os.listdir(a)), 4, "four names left")
    m.unmount()
    m.fsck()
    m.mount()
    eq(sorted(os.listdir(a)), sorted(names[:2] + names[3:]), "ls after a remount")
    for name in os.listdir(a):
        os.unlink(os.path.join(a, name))
    os.rmdir(a)
    os.rmdir(b)


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
