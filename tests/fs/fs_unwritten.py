#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Unwritten extents through the kernel: fallocate reserves blocks that read as zeros (and
never as what the blocks held before: every test first fills the pool's free blocks with a
stale pattern and deletes it), writes into the middle and the edges of unwritten extents,
PUNCH_HOLE and ZERO_RANGE over them, clones of partly unwritten files (copy_file_range and
pmfusectl clone) and copy-on-write into them, mmap reads and writes of unwritten ranges,
remount and fsck; the extent report's unwritten flag as `pmfusectl stat` shows it; and a
1 GiB fallocate that costs records, not stores (its time is printed, not asserted)."""

import errno
import mmap
import os
import time

import pmfs
import reflinkio
from pmfs import (check, eq, test, pread_all, pwrite_all, same_bytes, fallocate,
                  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, Failure)

BS = 4096
MiB = 1 << 20
STALE = b"\xee" * BS
EXTENT_UNWRITTEN = reflinkio.EXTENT_UNWRITTEN


def stale_pool(m):
    """Fills every free block of the pool with STALE (a file written until ENOSPC), then
    deletes the file: preallocated blocks will hold the pattern. With the writeback cache
    write(2) never fails for space: the filler gets the pool's whole size, and fsync and
    close report the ENOSPC."""
    p = m.path("stale-filler")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    chunk, off = STALE * 64, 0
    limit = m.statfs().f_blocks * m.statfs().f_frsize if pmfs.WRITEBACK_CACHE else None
    try:
        while limit is None or off < limit:
            try:
                n = os.pwrite(fd, chunk, off)
            except OSError:
                break
            off += n
            if n < len(chunk):
                break
    finally:
        for end in ((os.fsync, os.close) if pmfs.WRITEBACK_CACHE else (os.close,)):
            try:
                end(fd)
            except OSError as e:
                if e.errno != errno.ENOSPC or not pmfs.WRITEBACK_CACHE:
                    raise
    os.unlink(p)
    pmfs.wait_until(lambda: m.statfs().f_bfree * m.statfs().f_frsize >= off // 2, 10,
                    "space back after deleting the filler")
    return off


def fsck(m):
    """fsck.pmfuse -n on the unmounted pool (the unwritten flag and its sharing rule), then
    mounted again for the test's end."""
    m.unmount()
    m.fsck()
    m.mount()


def no_stale(data, what):
    i = data.find(STALE[:64])
    if i >= 0:
        raise Failure(f"{what}: stale bytes at {i}")


def unwritten_blocks(path):
    """{file block} the extent report flags unwritten."""
    bs, exts = reflinkio.extents_of(path)
    return {e.logical // bs + i for e in exts if e.flags & EXTENT_UNWRITTEN
            for i in range(e.length // bs)}


class File:
    """A file and its expected bytes."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.data = bytearray()

    def _grow(self, end):
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))

    def write(self, off, buf):
        pwrite_all(self.fd, buf, off)
        self._grow(off + len(buf))
        self.data[off:off + len(buf)] = buf

    def falloc(self, off, length, keep=False):
        fallocate(self.fd, FALLOC_FL_KEEP_SIZE if keep else 0, off, length)
        if not keep:
            self._grow(off + length)

    def punch(self, off, length):
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length)
        end = min(off + length, len(self.data))
        if off < end:
            self.data[off:end] = bytes(end - off)

    def zero(self, off, length, keep=False):
        fallocate(self.fd, FALLOC_FL_ZERO_RANGE | (FALLOC_FL_KEEP_SIZE if keep else 0), off,
                  length)
        end = min(off + length, len(self.data))
        if off < end:
            self.data[off:end] = bytes(end - off)
        if not keep:
            self._grow(off + length)

    def verify(self, what):
        eq(os.fstat(self.fd).st_size, len(self.data), f"{what}: size")
        got = pread_all(self.fd, len(self.data) + BS)
        no_stale(got, what)
        same_bytes(got, bytes(self.data), what)

    def close(self):
        os.close(self.fd)


@test(size="64M", timeout=300)
def fallocate_reads_zeros_and_writes_convert(m):
    """fallocate over stale blocks reads zeros; writes into the middle and the edges convert
    only what they touch, and the rest of each touched block reads as zeros."""
    stale_pool(m)
    f = File(m.path("f"))
    check("unwritten" not in m.info()["features"], "a fresh pool lacks the unwritten feature")
    free0 = m.statfs().f_bfree
    f.falloc(0, 4 * MiB)
    # while mounted, LOG_ZERO (0x2) is set too
    feats = m.info()["features"]
    check("unwritten" in feats and feats.endswith("log_zero: mounted, or crashed)") and
          int(feats.split("incompat ")[1].split()[0], 16) & 0x3 == 0x3,
          f"the first fallocate sets the unwritten feature: {feats}")
    check(free0 - m.statfs().f_bfree >= 1024, "fallocate took its blocks from the pool")
    check(os.fstat(f.fd).st_blocks >= 8192, "st_blocks counts the preallocated blocks")
    f.verify("after fallocate")
    eq(unwritten_blocks(f.path), set(range(1024)), "every preallocated block is unwritten")
    # the middle, partial blocks at both edges
    f.write(100 * BS + 123, os.urandom(3 * BS))
    f.verify("a write into the middle")
    u = unwritten_blocks(f.path)
    check(not u & {100, 101, 102, 103}, "the written blocks are no longer unwritten")
    check({99, 104} <= u, "the neighbours stay unwritten")
    # the first and the last byte of the extent, one byte each
    f.write(0, b"A")
    f.write(4 * MiB - 1, b"Z")
    f.verify("one byte at each edge")
    # past EOF inside KEEP_SIZE preallocation: the size follows the write
    f.falloc(4 * MiB, MiB, keep=True)
    eq(os.fstat(f.fd).st_size, 4 * MiB, "KEEP_SIZE keeps the size")
    f.write(4 * MiB + 5000, b"tail")
    f.verify("a write past EOF into preallocated blocks")
    os.ftruncate(f.fd, 5 * MiB)
    f._grow(5 * MiB)
    f.verify("growing over preallocated blocks past the write")
    f.close()
    m.remount()
    f.fd = os.open(f.path, os.O_RDWR)
    f.verify("after a remount")
    f.close()
    fsck(m)


@test(size="64M", timeout=300)
def punch_and_zero_ranges(m):
    """PUNCH_HOLE and ZERO_RANGE over written, unwritten and mixed ranges; ZERO_RANGE turns
    whole written blocks unwritten (no stores) and zeroes partial ones."""
    stale_pool(m)
    f = File(m.path("f"))
    f.write(0, os.urandom(2 * MiB))
    f.falloc(2 * MiB, 2 * MiB)
    f.write(3 * MiB - 10, os.urandom(20))
    f.zero(BS + 7, 10 * BS)
    f.verify("ZERO_RANGE over written blocks")
    u = unwritten_blocks(f.path)
    check(set(range(2, 11)) <= u, f"ZERO_RANGE's whole blocks are unwritten ({sorted(u)[:12]})")
    check(1 not in u and 11 not in u, "its partial edge blocks stay written")
    f.punch(2 * MiB - 3 * BS + 1, 6 * BS)
    f.verify("a punch across written and unwritten blocks")
    f.zero(3 * MiB - 2 * BS, 4 * BS + 5)
    f.verify("ZERO_RANGE across a converted block inside unwritten ones")
    f.zero(5 * MiB, 3 * BS, keep=True)
    f.zero(6 * MiB + 100, 50)
    f.verify("ZERO_RANGE past EOF")
    f.write(6 * MiB, os.urandom(BS))
    f.verify("a write over the partial ZERO_RANGE block past the old EOF")
    f.close()
    m.remount()
    f.fd = os.open(f.path, os.O_RDWR)
    f.verify("after a remount")
    f.close()
    fsck(m)


@test(size="64M", timeout=300)
def clone_partly_unwritten(m):
    """copy_file_range and pmfusectl clone share unwritten blocks as unwritten; writes into
    either copy (copy-on-write of shared unwritten blocks) leave the other alone; unshare and
    dedupe keep reading zeros."""
    stale_pool(m)
    a = File(m.path("a"))
    a.write(0, os.urandom(MiB))
    a.falloc(MiB, MiB)
    a.write(MiB + 10 * BS + 1, os.urandom(100))
    b_path = m.path("b")
    bfd = os.open(b_path, os.O_RDWR | os.O_CREAT, 0o644)
    n = os.copy_file_range(a.fd, bfd, 2 * MiB, 0, 0)
    eq(n, 2 * MiB, "copy_file_range length")
    b = File.__new__(File)
    b.path, b.fd, b.data = b_path, bfd, bytearray(a.data)
    b.verify("the copy")
    ua, ub = unwritten_blocks(a.path), unwritten_blocks(b.path)
    eq(ub, ua, "the copy's unwritten blocks are the source's")
    check(len(ua) > 200, "the source has unwritten blocks")
    shared = {e.logical // BS for e in reflinkio.extents_of(b.path)[1] if e.refcount > 1}
    check(shared, "copy_file_range shared blocks")
    # CoW into the shared unwritten blocks of each copy
    b.write(MiB + 50 * BS + 7, b"copy-on-write into an unwritten shared block")
    a.write(MiB + 60 * BS - 3, os.urandom(9))
    a.verify("the source after writes into both")
    b.verify("the copy after writes into both")
    # pmfusectl clone of the whole file, then unshare it
    c_path = m.path("c")
    reflinkio.ctl(m, "clone", a.path, c_path)
    c = File.__new__(File)
    c.path, c.fd, c.data = c_path, os.open(c_path, os.O_RDWR), bytearray(a.data)
    c.verify("pmfusectl clone")
    eq(unwritten_blocks(c.path), unwritten_blocks(a.path), "the clone's unwritten blocks")
    reflinkio.ctl(m, "unshare", c.path)
    c.verify("after unshare")
    check(unwritten_blocks(c.path) == unwritten_blocks(a.path),
          "unshare keeps unwritten blocks unwritten")
    c.zero(0, MiB)
    c.write(BS, b"x")
    a.verify("the source after the clone's ZERO_RANGE")
    c.verify("the clone after its ZERO_RANGE")
    # pmfusectl stat shows the flag and the total
    out = reflinkio.ctl(m, "stat", "--raw", a.path).stdout
    rows = reflinkio.parse_stat(out, flags=True)
    check(any("unwritten" in r[5] for r in rows), f"pmfusectl stat shows unwritten:\n{out}")
    want = sum(e.length for e in reflinkio.extents_of(a.path)[1] if e.flags & EXTENT_UNWRITTEN)
    check(f"unwritten {want}" in out, f"pmfusectl stat's total of unwritten ({want}):\n{out}")
    for f in (a, b, c):
        f.close()
    m.remount()
    for f in (a, b, c):
        f.fd = os.open(f.path, os.O_RDWR)
        f.verify(f"{os.path.basename(f.path)} after a remount")
        f.close()
    fsck(m)


@test(size="64M", timeout=300)
def mmap_unwritten(m):
    """mmap reads of an unwritten range see zeros; stores through the mapping reach the file
    (written back through FUSE writes that convert the blocks), the rest stays zero."""
    stale_pool(m)
    f = File(m.path("f"))
    f.falloc(0, 2 * MiB)
    mm = mmap.mmap(f.fd, 2 * MiB)
    try:
        no_stale(mm[:], "mmap read of unwritten blocks")
        eq(mm[:2 * MiB], bytes(2 * MiB), "mmap reads zeros")
        mm[5 * BS + 10:5 * BS + 20] = b"0123456789"
        mm[MiB:MiB + 3] = b"abc"
        mm.flush()
    finally:
        mm.close()
    f.data[5 * BS + 10:5 * BS + 20] = b"0123456789"
    f.data[MiB:MiB + 3] = b"abc"
    f.verify("after stores through the mapping")
    u = unwritten_blocks(f.path)
    check(5 not in u and MiB // BS not in u, "the stored blocks are written")
    check(6 in u, "their neighbours stay unwritten")
    f.close()
    m.remount()
    f.fd = os.open(f.path, os.O_RDWR)
    f.verify("after a remount")
    f.close()
    fsck(m)


@test(size="1200M", timeout=600)
def fallocate_one_gib(m):
    """fallocate -l 1G: blocks reserved (df shows them used), every byte reads as zero, and it
    costs extent records and bitmap words rather than 1 GiB of stores: the time is printed."""
    p = m.path("big")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    s0 = m.statfs()
    t0 = time.monotonic()
    fallocate(fd, 0, 0, 1 << 30)
    dt = time.monotonic() - t0
    s1 = m.statfs()
    used = (s0.f_bfree - s1.f_bfree) * s1.f_frsize
    print(f"# fallocate 1 GiB: {dt * 1000:.1f} ms, df: {used >> 20} MiB more in use")
    check(used >= 1 << 30, f"df shows the 1 GiB in use ({used} bytes)")
    eq(os.fstat(fd).st_size, 1 << 30, "size")
    check(os.fstat(fd).st_blocks * 512 >= 1 << 30, "st_blocks")
    for off in (0, 123 * MiB + 7, (1 << 30) - 4096):
        eq(os.pread(fd, 4096, off), bytes(4096), f"zeros at {off}")
    os.pwrite(fd, b"end", (1 << 30) - 3)
    eq(os.pread(fd, 8, (1 << 30) - 8), bytes(5) + b"end", "a write at the end")
    os.close(fd)
    os.unlink(p)
    fsck(m)


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
