#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""File data through the kernel: seeded random writes, truncates, hole punches, zero ranges,
fallocate and copy_file_range checked against a bytearray model, and again after an unmount
and remount of the same pool; SEEK_DATA/SEEK_HOLE; O_APPEND; O_TRUNC; sparse files; large
transfers; ENOSPC. Features the kernel never passes to a FUSE server are reported as skipped."""

import errno
import fcntl
import mmap
import os
import struct
import time

import pmfs
import reflinkio
from pmfs import (check, eq, expect_errno, test, write_file, read_file, pread_all,
                  pwrite_all, same_bytes, fallocate, SEEK_DATA, SEEK_HOLE, FALLOC_FL_KEEP_SIZE,
                  FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, FALLOC_FL_COLLAPSE_RANGE,
                  FALLOC_FL_INSERT_RANGE, FALLOC_FL_UNSHARE_RANGE, FICLONE, FICLONERANGE,
                  FIDEDUPERANGE, Failure, Skip)

BS = 4096


class Model:
    """A file and its expected contents."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.data = bytearray()

    def reopen(self):
        self.fd = os.open(self.path, os.O_RDWR)

    def close(self):
        os.close(self.fd)

    # operations: each does the syscall, then the same to the model
    def write(self, off, buf):
        pwrite_all(self.fd, buf, off)
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(buf)] = buf

    def truncate(self, size):
        os.ftruncate(self.fd, size)
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def punch(self, off, length):
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length)
        end = min(off + length, len(self.data))
        if off < end:
            self.data[off:end] = bytes(end - off)

    def zero(self, off, length, keep):
        fallocate(self.fd, FALLOC_FL_ZERO_RANGE | (FALLOC_FL_KEEP_SIZE if keep else 0), off,
                  length)
        self._zero_extend(off, length, keep)

    def allocate(self, off, length, keep):
        fallocate(self.fd, FALLOC_FL_KEEP_SIZE if keep else 0, off, length)
        if not keep and off + length > len(self.data):
            self.data.extend(bytes(off + length - len(self.data)))

    def _zero_extend(self, off, length, keep):
        end = off + length
        if not keep and end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        end = min(end, len(self.data))
        if off < end:
            self.data[off:end] = bytes(end - off)

    def copy_from(self, src, soff, doff, length):
        """copy_file_range until done or EOF of the source; returns bytes copied."""
        # a short copy is allowed; the loop asks for the rest, but only up to the source's EOF
        # as it was (when source and destination are one file, the copy may extend it)
        expected = max(0, min(length, len(src.data) - soff))
        done = 0
        while done < expected:
            n = os.copy_file_range(src.fd, self.fd, expected - done, soff + done, doff + done)
            if n == 0:
                break
            done += n
        check(done == expected,
              f"copy_file_range copied {done} bytes, expected {expected} (src size "
              f"{len(src.data)}, off {soff}, len {length})")
        chunk = bytes(src.data[soff:soff + done])
        if doff > len(self.data):
            self.data.extend(bytes(doff - len(self.data)))
        self.data[doff:doff + done] = chunk
        return done

    def verify(self, what):
        st = os.fstat(self.fd)
        eq(st.st_size, len(self.data), f"{what}: size of {os.path.basename(self.path)}")
        got = pread_all(self.fd, len(self.data) + 10)
        same_bytes(got, self.data, f"{what}: contents of {os.path.basename(self.path)}")
        check(st.st_blocks * 512 <= max(len(self.data), 0) + (64 << 20),
              f"{what}: st_blocks {st.st_blocks} is absurd for size {len(self.data)}")
        verify_holes(self.fd, self.data, what)


def first_nonzero(b, base=0):
    """Offset (plus base) of the first non-zero byte of b, or None."""
    if b.count(0) == len(b):
        return None
    return base + next(i for i, x in enumerate(b) if x)


def verify_holes(fd, data, what):
    """SEEK_DATA/SEEK_HOLE must never skip over data: every range reported as a hole reads as
    zeros in the model, the walk ends at EOF, and SEEK_DATA past the last data gives ENXIO."""
    size = len(data)
    off = 0
    while off < size:
        try:
            d = os.lseek(fd, off, SEEK_DATA)
        except OSError as e:
            eq(e.errno, errno.ENXIO, f"{what}: SEEK_DATA({off}) error")
            nz = first_nonzero(data[off:], off)
            if nz is not None:
                raise Failure(f"{what}: SEEK_DATA({off}) says no data, but the file has data "
                              f"at {nz}")
            return
        check(off <= d <= size, f"{what}: SEEK_DATA({off}) = {d} outside [{off}, {size}]")
        nz = first_nonzero(data[off:d], off)
        if nz is not None:
            raise Failure(f"{what}: SEEK_DATA({off}) = {d} skips data at {nz}")
        h = os.lseek(fd, d, SEEK_HOLE)
        check(d < h <= size, f"{what}: SEEK_HOLE({d}) = {h} outside ({d}, {size}]")
        off = h
    for o in (size, size + 1, size + (1 << 20)):
        expect_errno(errno.ENXIO, os.lseek, fd, o, SEEK_DATA)
    expect_errno(errno.ENXIO, os.lseek, fd, size + 1, SEEK_HOLE)
    if size:
        eq(os.lseek(fd, size - 1, SEEK_HOLE), size, f"{what}: SEEK_HOLE(size - 1)")


def random_op(rng, files, limit):
    f = rng.choice(files)
    size = len(f.data)
    r = rng.random()

    def anyoff(span=limit):
        if rng.random() < 0.5:
            return rng.randrange(0, span // BS) * BS + rng.choice([0, 0, 1, BS - 1, 100])
        return rng.randrange(0, span)

    def anylen(big=256 << 10):
        c = rng.random()
        if c < 0.3:
            return rng.randrange(1, 64)
        if c < 0.6:
            return rng.randrange(1, 4) * BS
        return rng.randrange(1, big)

    if r < 0.40:
        off, n = anyoff(), anylen()
        f.write(off, rng.randbytes(n))
        return f"write {off}+{n}"
    if r < 0.50:
        s = rng.choice([0, anyoff(), size // 2, size + rng.randrange(0, 3 * BS)])
        f.truncate(s)
        return f"truncate {s}"
    if r < 0.62:
        off, n = anyoff(max(size, BS) + BS), anylen(1 << 20)
        f.punch(off, n)
        return f"punch {off}+{n}"
    if r < 0.72:
        off, n, keep = anyoff(max(size, BS) + 2 * BS), anylen(1 << 20), rng.random() < 0.5
        f.zero(off, n, keep)
        return f"zero {off}+{n} keep={keep}"
    if r < 0.80:
        off, n, keep = anyoff(), anylen(1 << 20), rng.random() < 0.5
        f.allocate(off, n, keep)
        return f"fallocate {off}+{n} keep={keep}"
    if r < 0.92:
        src = rng.choice(files)
        if not len(src.data):
            return "noop"
        if rng.random() < 0.5:
            soff = rng.randrange(0, max(1, len(src.data) // BS)) * BS
            doff = rng.randrange(0, limit // BS) * BS
            n = rng.randrange(1, 64) * BS
        else:
            soff, doff, n = rng.randrange(0, len(src.data)), anyoff(), anylen()
        if src is f and not (soff + n <= doff or doff + n <= soff):
            return "noop"  # overlapping ranges of one file: EINVAL by contract
        f.copy_from(src, soff, doff, n)
        return f"copy_file_range {soff}+{n} -> {doff}"
    # sequential append through a separate O_APPEND descriptor
    n = anylen(64 << 10)
    buf = rng.randbytes(n)
    afd = os.open(f.path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(buf)
        while view:
            k = os.write(afd, view)
            view = view[k:]
    finally:
        os.close(afd)
    f.data.extend(buf)
    return f"append {n}"


@test(size="256M", timeout=240)
def random_ops_against_model(m):
    rng = m.rng
    free0 = m.statfs().f_bfree
    files = [Model(m.path(f"f{i}")) for i in range(3)]
    limit = 6 << 20
    nops = pmfs.scaled(1500, 100)
    history = []
    for i in range(nops):
        try:
            history.append(random_op(rng, files, limit))
        except (OSError, Failure) as e:
            raise Failure(f"op {i}: {e}\n    ops before it: {'; '.join(history[-8:])}") \
                from None
        if i % 100 == 99 or i == nops - 1:
            for f in files:
                try:
                    f.verify(f"after op {i} ({history[-1]})")
                except Failure as e:
                    raise Failure(f"{e}\n    last ops: {'; '.join(history[-8:])}") from None
    for f in files:
        f.close()
    m.remount()
    for f in files:
        f.reopen()
        f.verify("after remount")
        f.close()
    # no block leaked: what the pool uses beyond the files' own blocks is a little metadata.
    # copy_file_range shares blocks, so count distinct pool blocks, not st_blocks.
    used = free0 - m.statfs().f_bfree
    mapped = distinct_blocks([f.path for f in files])
    check(0 <= used - mapped <= 64, f"the pool uses {used} blocks more than at the start, the "
          f"files map {mapped}: {used - mapped} blocks unaccounted for")
    # everything removed: the blocks come back
    for f in files:
        os.unlink(f.path)
    try:
        pmfs.wait_until(lambda: m.statfs().f_bfree >= free0 - 8, 5, "free blocks after unlink")
    except Failure:
        raise Failure(f"free blocks after removing the files: {m.statfs().f_bfree}, before "
                      f"they were made: {free0}") from None


def seek_writeback_cache(m):
    """With the writeback cache the daemon leaves SEEK_DATA/SEEK_HOLE to the kernel, which
    sends them without writing dirty pages back: bytes still in the page cache must never be
    skipped. The kernel's answer is all data up to EOF; the pool's layout shows after fsync."""
    p = m.path("sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"A" * BS, 0)
    os.pwrite(fd, b"B" * BS, 1 << 20)
    os.pwrite(fd, b"C" * 10, (3 << 20) + 5)
    size = (3 << 20) + 15
    eq(os.fstat(fd).st_size, size, "size")
    for synced in (False, True):
        for off in (0, 100, BS, (1 << 20) + 7, 12345, 3 << 20, size - 1):
            eq(os.lseek(fd, off, SEEK_DATA), off, f"SEEK_DATA({off}), synced {synced}")
            eq(os.lseek(fd, off, SEEK_HOLE), size, f"SEEK_HOLE({off}), synced {synced}")
        expect_errno(errno.ENXIO, os.lseek, fd, size, SEEK_DATA)
        expect_errno(errno.ENXIO, os.lseek, fd, size, SEEK_HOLE)
        os.fsync(fd)
    eq(reflinkio.data_map(fd, size), [(0, BS), (1 << 20, (1 << 20) + BS), (3 << 20, size)],
       "the pool's data ranges after fsync")
    e = os.open(m.path("empty"), os.O_RDWR | os.O_CREAT, 0o644)
    expect_errno(errno.ENXIO, os.lseek, e, 0, SEEK_DATA)
    expect_errno(errno.ENXIO, os.lseek, e, 0, SEEK_HOLE)
    os.close(e)
    os.close(fd)


@test()
def times_survive_remount(m):
    """The size, mtime and ctime stat shows after writes, an mmap store and sync(2) are what
    the pool keeps: the same after a clean unmount and mount. With the writeback cache the
    kernel owns them and writes its pages back at its own pace, possibly after it sent its
    times: a page written back later must not stamp the time it arrived."""
    p = m.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"a" * (4 * BS), 0)
    os.fsync(fd)
    time.sleep(1.1)
    os.pwrite(fd, b"b" * 100, BS + 7)            # an overwrite: the page is dirty, not written
    mm = mmap.mmap(fd, 4 * BS)
    mm[3 * BS:3 * BS + 5] = b"mmap!"
    os.sync()                                    # times first, pages maybe after
    time.sleep(1.1)
    mm.flush()
    mm.close()
    os.close(fd)
    st = os.stat(p)
    m.unmount()
    m.mount()
    st2 = os.stat(p)
    eq(st2.st_size, st.st_size, "size after a remount")
    eq(st2.st_mtime_ns, st.st_mtime_ns, "mtime after a remount (ns)")
    eq(st2.st_ctime_ns, st.st_ctime_ns, "ctime after a remount (ns)")


@test()
def seek_data_hole(m):
    if pmfs.WRITEBACK_CACHE:
        seek_writeback_cache(m)
        return
    p = m.path("sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"A" * BS, 0)
    os.pwrite(fd, b"B" * BS, 1 << 20)
    os.pwrite(fd, b"C" * 10, (3 << 20) + 5)
    size = (3 << 20) + 15
    eq(os.fstat(fd).st_size, size, "size")
    eq(os.lseek(fd, 0, SEEK_DATA), 0, "SEEK_DATA(0)")
    eq(os.lseek(fd, 0, SEEK_HOLE), BS, "SEEK_HOLE(0)")
    eq(os.lseek(fd, BS, SEEK_DATA), 1 << 20, "SEEK_DATA(4096)")
    eq(os.lseek(fd, 100, SEEK_DATA), 100, "SEEK_DATA inside data")
    eq(os.lseek(fd, (1 << 20) + 7, SEEK_HOLE), (1 << 20) + BS, "SEEK_HOLE inside data")
    eq(os.lseek(fd, (1 << 20) + BS, SEEK_DATA), 3 << 20, "SEEK_DATA to the last block")
    eq(os.lseek(fd, 3 << 20, SEEK_HOLE), size, "SEEK_HOLE at the last block is EOF")
    eq(os.lseek(fd, 12345, SEEK_HOLE), 12345, "SEEK_HOLE inside a hole")
    expect_errno(errno.ENXIO, os.lseek, fd, size, SEEK_DATA)
    expect_errno(errno.ENXIO, os.lseek, fd, size, SEEK_HOLE)
    # punch the middle: one hole from 4096 to 3 MiB
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1 << 20, BS)
    eq(os.lseek(fd, BS, SEEK_DATA), 3 << 20, "SEEK_DATA after punching the middle block")
    # a file ending in a hole
    os.ftruncate(fd, 8 << 20)
    eq(os.lseek(fd, (3 << 20) + BS, SEEK_HOLE), (3 << 20) + BS, "hole after the last data")
    expect_errno(errno.ENXIO, os.lseek, fd, (3 << 20) + BS, SEEK_DATA)
    # an empty file: no data, and even SEEK_HOLE(0) is past EOF
    e = os.open(m.path("empty"), os.O_RDWR | os.O_CREAT, 0o644)
    expect_errno(errno.ENXIO, os.lseek, e, 0, SEEK_DATA)
    expect_errno(errno.ENXIO, os.lseek, e, 0, SEEK_HOLE)
    os.close(e)
    os.close(fd)
    m.remount()
    fd = os.open(p, os.O_RDONLY)
    eq(os.lseek(fd, BS, SEEK_DATA), 3 << 20, "SEEK_DATA after remount")
    os.close(fd)


@test()
def o_append(m):
    p = m.path("log")
    write_file(p, b"start|")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    w = os.open(p, os.O_RDWR)
    os.lseek(a, 0, os.SEEK_SET)
    os.write(a, b"one|")
    os.pwrite(w, b"START", 0)
    os.write(a, b"two|")
    # Linux: pwrite on an O_APPEND descriptor appends, whatever the offset
    os.pwrite(a, b"three|", 0)
    eq(pmfs.pread_all(w, 100), b"START|one|two|three|", "contents after appends")
    eq(os.lseek(a, 0, os.SEEK_CUR), 14, "file position of the O_APPEND fd (pwrite leaves it)")
    # two appenders in two processes interleave whole records
    os.close(a)
    os.close(w)
    write_file(p, b"start\n")

    def appender(tag, n):
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        for i in range(n):
            os.write(fd, f"{tag}{i:05d}\n".encode())
        os.close(fd)
    n = pmfs.scaled(2000, 200)
    kids = [m.fork(appender, t, n) for t in "ab"]
    for k in kids:
        k.wait()
    lines = read_file(p).split(b"\n")
    recs = [l for l in lines[1:] if l]
    eq(len(recs), 2 * n, "records appended by two processes")
    for t in b"ab":
        eq([r for r in recs if r[0] == t], [bytes([t]) + f"{i:05d}".encode() for i in range(n)],
           f"records of appender {chr(t)} in order and whole")


@test()
def o_trunc(m):
    p = m.path("f")
    write_file(p, os.urandom(1 << 20))
    free = m.statfs().f_bfree
    ino = os.stat(p).st_ino
    time.sleep(0.01)
    before = os.stat(p).st_mtime_ns
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    st = os.fstat(fd)
    eq((st.st_size, st.st_blocks), (0, 0), "size and blocks after O_TRUNC")
    eq(st.st_ino, ino, "O_TRUNC keeps the inode")
    check(st.st_mtime_ns > before, "O_TRUNC of a non-empty file changes mtime")
    os.write(fd, b"new")
    os.close(fd)
    eq(read_file(p), b"new", "contents after O_TRUNC and a write")
    check(m.statfs().f_bfree >= free + 250, "O_TRUNC of 1 MiB returned the blocks")
    fd = os.open(p, os.O_RDWR | os.O_TRUNC | os.O_CREAT, 0o600)
    os.close(fd)
    eq(os.stat(p).st_size, 0, "O_TRUNC|O_CREAT on an existing file")


@test(size="128M")
def sparse_files(m):
    p = m.path("sparse")
    free0 = m.statfs().f_bfree
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"x", 1 << 30)
    st = os.fstat(fd)
    eq(st.st_size, (1 << 30) + 1, "size after a write at 1 GiB")
    check(st.st_blocks <= 8 + 8, f"one byte at 1 GiB allocated {st.st_blocks} sectors")
    check(free0 - m.statfs().f_bfree <= 16, "a sparse write used few blocks")
    eq(os.pread(fd, 1 << 20, 512 << 20), bytes(1 << 20), "a hole reads as zeros")
    eq(os.pread(fd, 10, (1 << 30) - 5), bytes(5) + b"x", "read across the hole's end")
    eq(os.pread(fd, 10, (1 << 30) + 1), b"", "read at EOF")
    eq(os.pread(fd, 10, 1 << 40), b"", "read far past EOF")
    os.ftruncate(fd, 1 << 42)
    eq(os.fstat(fd).st_size, 1 << 42, "4 TiB sparse size")
    os.pwrite(fd, b"end", (1 << 42) - 3)
    eq(os.pread(fd, 3, (1 << 42) - 3), b"end", "write near 4 TiB")
    os.close(fd)
    m.remount()
    fd = os.open(p, os.O_RDONLY)
    eq(os.pread(fd, 1, 1 << 30), b"x", "byte at 1 GiB after remount")
    eq(os.pread(fd, 3, (1 << 42) - 3), b"end", "bytes near 4 TiB after remount")
    eq(os.fstat(fd).st_size, 1 << 42, "size after remount")
    os.close(fd)
    # the largest offset: EFBIG past the limit the filesystem reports
    fd = os.open(m.path("big"), os.O_RDWR | os.O_CREAT, 0o644)
    expect_errno((errno.EFBIG, errno.EINVAL), os.pwrite, fd, b"x", (1 << 63) - 1)
    os.close(fd)


@test()
def fallocate_modes(m):
    p = m.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    free0 = m.statfs().f_bfree
    fallocate(fd, 0, 0, 1 << 20)
    st = os.fstat(fd)
    eq(st.st_size, 1 << 20, "size after fallocate mode 0")
    check(st.st_blocks >= 2048, f"fallocate mode 0 allocated only {st.st_blocks} sectors")
    check(free0 - m.statfs().f_bfree >= 256, "fallocate took blocks from the pool")
    eq(pread_all(fd, 1 << 20), bytes(1 << 20), "fallocated range reads as zeros")
    fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20)
    st = os.fstat(fd)
    eq(st.st_size, 1 << 20, "KEEP_SIZE beyond EOF keeps the size")
    check(st.st_blocks >= 4096, f"KEEP_SIZE beyond EOF allocated ({st.st_blocks} sectors)")
    os.pwrite(fd, b"\xaa" * (1 << 20), 0)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)
    got = os.pread(fd, 16384, 0)
    eq(got, b"\xaa" * 4096 + bytes(8192) + b"\xaa" * 4096, "after punching two blocks")
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 50)
    eq(os.pread(fd, 200, 0), b"\xaa" * 100 + bytes(50) + b"\xaa" * 50, "sub-block punch")
    blocks = os.fstat(fd).st_blocks
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 << 20)
    check(os.fstat(fd).st_blocks < blocks - 2000, "punching everything freed blocks")
    eq(os.fstat(fd).st_size, 1 << 20, "punch keeps the size")
    os.pwrite(fd, b"\xbb" * 10000, 0)
    fallocate(fd, FALLOC_FL_ZERO_RANGE, 10, 5000)
    eq(os.pread(fd, 10000, 0), b"\xbb" * 10 + bytes(5000) + b"\xbb" * 4990, "zero range")
    fallocate(fd, FALLOC_FL_ZERO_RANGE, (1 << 20) - 10, 100)
    eq(os.fstat(fd).st_size, (1 << 20) + 90, "ZERO_RANGE past EOF grows the file")
    fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (2 << 20), 100)
    eq(os.fstat(fd).st_size, (1 << 20) + 90, "ZERO_RANGE|KEEP_SIZE keeps the size")
    # what the kernel refuses for FUSE, and what the contract refuses
    expect_errno(errno.EOPNOTSUPP, fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096)
    expect_errno(errno.EINVAL, fallocate, fd, 0, 0, 0)
    expect_errno(errno.EINVAL, fallocate, fd, 0, -1, 10)
    os.posix_fallocate(fd, 0, 3 << 20)
    eq(os.fstat(fd).st_size, 3 << 20, "posix_fallocate grows the file")
    os.close(fd)
    rd = os.open(p, os.O_RDONLY)
    expect_errno(errno.EBADF, fallocate, rd, 0, 0, 4096)
    os.close(rd)


@test()
def refused_by_the_kernel(m):
    """FICLONE, FICLONERANGE, FIDEDUPERANGE and fallocate COLLAPSE/INSERT/UNSHARE never reach a
    FUSE server on this kernel (DESIGN.md): pmfusectl clone/dedupe/unshare are the way. This
    test checks they fail cleanly and leave the files alone, then reports the feature as
    skipped; if a future kernel passes one through, it must work (and the test says so)."""
    src, dst = m.path("src"), m.path("dst")
    data = os.urandom(64 << 10)
    write_file(src, data)
    write_file(dst, b"")
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
    reached = []
    try:
        fcntl.ioctl(d, FICLONE, s)
        reached.append("FICLONE")
        eq(read_file(dst), data, "FICLONE copy")
    except OSError as e:
        check(e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY),
              f"FICLONE failed with {pmfs.ename(e.errno)}")
    try:
        fcntl.ioctl(d, FICLONERANGE, struct.pack("<qQQQ", s, 0, 0, 0))
        reached.append("FICLONERANGE")
    except OSError as e:
        check(e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY),
              f"FICLONERANGE failed with {pmfs.ename(e.errno)}")
    try:
        # struct file_dedupe_range with one struct file_dedupe_range_info
        arg = bytearray(struct.pack("<QQHHI", 0, 4096, 1, 0, 0) + struct.pack("<qQQiI", d, 0, 0,
                                                                              0, 0))
        fcntl.ioctl(s, FIDEDUPERANGE, arg)
        status = struct.unpack_from("<i", arg, 24 + 16)[0]
        if status != -errno.EOPNOTSUPP and status != -errno.EINVAL:
            reached.append("FIDEDUPERANGE")
    except OSError as e:
        check(e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY),
              f"FIDEDUPERANGE failed with {pmfs.ename(e.errno)}")
    for name, mode in (("COLLAPSE_RANGE", FALLOC_FL_COLLAPSE_RANGE),
                       ("INSERT_RANGE", FALLOC_FL_INSERT_RANGE),
                       ("UNSHARE_RANGE", FALLOC_FL_UNSHARE_RANGE)):
        fd = os.open(src, os.O_RDWR)
        try:
            fallocate(fd, mode, 0, 4096)
            reached.append(name)
        except OSError as e:
            check(e.errno == errno.EOPNOTSUPP, f"fallocate {name}: {pmfs.ename(e.errno)}")
        finally:
            os.close(fd)
    os.close(s)
    os.close(d)
    if "FICLONE" not in reached:
        eq(read_file(src), data, "source unchanged after refused calls")
    if reached:
        raise Failure(f"now reaching the server: {', '.join(reached)} (update DESIGN.md and "
                      "turn this into a real test)")
    raise Skip("FICLONE, FICLONERANGE, FIDEDUPERANGE, fallocate COLLAPSE/INSERT/UNSHARE are "
               "refused by the kernel for FUSE (EOPNOTSUPP); use pmfusectl clone/dedupe/unshare")


def distinct_blocks(paths):
    """Pool blocks the files map, each counted once however many extents share it."""
    blocks = set()
    for p in paths:
        bs, exts = reflinkio.extents_of(p)
        for e in exts:
            first = e.physical // bs
            blocks.update(range(first, first + e.length // bs))
    return len(blocks)


@test()
def copy_file_range_data(m):
    rng = m.rng
    a = Model(m.path("a"))
    b = Model(m.path("b"))
    a.write(0, rng.randbytes(5 * BS + 123))
    b.copy_from(a, 0, 0, 5 * BS + 123)
    b.copy_from(a, BS, 8 * BS, 2 * BS)          # aligned, leaves a hole
    b.copy_from(a, 17, 3 * BS + 5, 3000)        # unaligned both
    b.copy_from(a, 2 * BS + 100, 20 * BS + 100, BS * 2)  # congruent, unaligned
    n = b.copy_from(a, 4 * BS, 30 * BS, 10 * BS)  # short: source EOF inside
    eq(n, BS + 123, "short copy up to the source's EOF")
    eq(os.copy_file_range(a.fd, b.fd, 100, len(a.data), 0), 0, "copy from EOF returns 0")
    a.copy_from(a, 0, 10 * BS, 2 * BS)          # within one file, disjoint
    expect_errno(errno.EINVAL, os.copy_file_range, a.fd, a.fd, 2 * BS, 0, BS)
    a.verify("copy_file_range")
    b.verify("copy_file_range")
    # the copy is independent of its source
    a.write(0, b"\x55" * (6 * BS))
    b.verify("destination after overwriting the source")
    a.verify("source after overwrite")
    for f in (a, b):
        f.close()
    m.remount()
    for f in (a, b):
        f.reopen()
        f.verify("after remount")
        f.close()


@test(size="256M", timeout=120)
def large_transfers(m):
    p = m.path("big")
    data = os.urandom(pmfs.scaled(64 << 20, 4 << 20))
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    t = time.time()
    n = os.write(fd, data)
    eq(n, len(data), "one write of the whole buffer")
    tw = time.time() - t
    t = time.time()
    got = pread_all(fd, len(data))
    tr = time.time() - t
    same_bytes(got, data, "read back")
    mib = len(data) / (1 << 20)
    print(f"     {mib:.0f} MiB written in {tw:.2f}s ({mib / max(tw, 1e-6):.0f} MiB/s), "
          f"read in {tr:.2f}s ({mib / max(tr, 1e-6):.0f} MiB/s)")
    # unaligned small writes across block boundaries, byte by byte
    for i in range(4090, 4110):
        os.pwrite(fd, bytes([i & 0xff]), i)
    exp = bytearray(data[:8192])
    for i in range(4090, 4110):
        exp[i] = i & 0xff
    eq(os.pread(fd, 8192, 0), bytes(exp), "single-byte writes across a block boundary")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)


@test(size="16M", timeout=120)
def enospc(m):
    """Fill the pool: ENOSPC, nothing else; what was written stays; space comes back. With
    the writeback cache, write(2) only fills the page cache and fsync reports ENOSPC; what
    reached the pool is then whole blocks of what was written, or zeros."""
    write_file(m.path("victim"), b"v" * 10000)
    os.mkdir(m.path("victims"))
    s0 = m.statfs()
    avail = s0.f_bavail * s0.f_frsize
    p = m.path("fill")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    chunk = os.urandom(256 << 10)
    written = 0
    err = None
    while True:
        try:
            n = os.pwrite(fd, chunk, written)
        except OSError as e:
            err = e.errno
            break
        written += n
        if pmfs.WRITEBACK_CACHE and written >= 2 * avail:
            break
        check(written < 64 << 20, "a 16 MiB pool took 64 MiB without ENOSPC")
        if n < len(chunk):
            continue
    if pmfs.WRITEBACK_CACHE:
        eq(err, None, "write(2) into the page cache")
        try:
            os.fsync(fd)
        except OSError as e:
            err = e.errno
        eq(err, errno.ENOSPC, "fsync's error when the pool is full")
    else:
        eq(err, errno.ENOSPC, "error when the pool is full")
        check(written >= avail * 0.7, f"only {written} bytes fit into {avail} available")
        eq(os.fstat(fd).st_size, written, "size is what the successful writes wrote")
        got = pread_all(fd, written)
        for off in range(0, written, len(chunk)):
            k = min(len(chunk), written - off)
            if got[off:off + k] != chunk[:k]:
                raise Failure(f"data at {off} damaged after ENOSPC")
    # metadata operations when full fail cleanly or succeed
    results = set()
    for i in range(100):
        try:
            os.mkdir(m.path(f"d{i}"))
            results.add("ok")
        except OSError as e:
            results.add(pmfs.ename(e.errno))
    check(results <= {"ok", "ENOSPC"}, f"mkdir on a full pool: {results}")
    try:
        os.setxattr(p, "user.big", os.urandom(65536))
    except OSError as e:
        eq(e.errno, errno.ENOSPC, "setxattr on a full pool")
    os.close(fd)
    # removing things must work on a full pool (ext4 never refuses an unlink for space)
    for fn, path in ((os.unlink, m.path("victim")), (os.rmdir, m.path("victims"))):
        try:
            fn(path)
        except OSError as e:
            raise Failure(f"{fn.__name__} on a full pool: {pmfs.ename(e.errno)}") from None
    m.remount()
    if pmfs.WRITEBACK_CACHE:
        got = read_file(p)
        check(len(got) <= written, f"size after remount {len(got)}, more than the {written} "
              "bytes written")
        check(len(got) >= avail * 0.5, f"only {len(got)} bytes of {avail} available reached "
              "the pool")
        for off in range(0, len(got), BS):
            block = got[off:off + BS]
            want = chunk[off % len(chunk):][:len(block)]
            if block != want and block != bytes(len(block)):
                raise Failure(f"block at {off} is neither what was written nor zeros")
    else:
        eq(os.stat(p).st_size, written, "size after remount")
    try:
        os.unlink(p)
    except OSError as e:
        raise Failure(f"unlink of the fill file after remount: {pmfs.ename(e.errno)}") from None
    pmfs.wait_until(lambda: m.statfs().f_bavail >= s0.f_bavail - 300, 5,
                    "space after deleting the fill file")
    write_file(m.path("after"), chunk * 8)
    eq(read_file(m.path("after")), chunk * 8, "a write after freeing space")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
