#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Hostile pmfuse ioctls: random and extreme offsets and lengths (negative as signed, 2^63,
2^64-1, unaligned, overlapping), bad descriptors, wrong file types, files elsewhere, unknown
numbers and wrong structure sizes. Every call either succeeds with the effect its semantics
define (checked against a model) or fails with an errno from the documented set and changes
nothing; the daemon keeps serving and fsck finds the pool clean."""

import errno
import fcntl
import os
import struct

import pmfs
import reflinkio
from pmfs import check, eq, test, write_file, Failure
from reflinkio import (CLONE_RANGE_FMT, UNSHARE_FMT, PMFUSE_IOC_CLONE_RANGE, PMFUSE_IOC_UNSHARE,
                       PMFUSE_IOC_DEDUPE_RANGE, PMFUSE_IOC_GET_EXTENTS, PMFUSE_IOC_MAGIC,
                       DEDUPE_FMT, EXTENTS_SIZE, _ioc, _IOC_READ, _IOC_WRITE,
                       PMFUSE_IOC_BLOCK_HASHES, HASHES_HDR_FMT, HASHES_SIZE,
                       PMFUSE_IOC_BLOCK_HASHES2, HASHES2_HDR_FMT, HASHES2_SIZE, HASHES2_WORDS)

U64 = (1 << 64) - 1
BS = 4096


def wild(rng, size):
    """An offset or length a hostile caller might pass (as the u64 the ioctl carries)."""
    return U64 & rng.choice([0, 0, 1, BS - 1, BS, 2 * BS, size, size - BS if size >= BS else 0,
                       size + BS, rng.randrange(0, 3 * size + 1), rng.randrange(0, 64) * BS,
                       (1 << 63) - BS, 1 << 63, U64, U64 - BS + 1, (1 << 62), (1 << 40)])


def read(path):
    with open(path, "rb") as f:
        return f.read()


def errno_of_ioctl(fd, cmd, arg, mutate=False):
    try:
        if mutate:
            buf = bytearray(arg)
            fcntl.ioctl(fd, cmd, buf, True)
            return 0, bytes(buf)
        fcntl.ioctl(fd, cmd, arg)
        return 0, None
    except OSError as e:
        return e.errno, None


class Sparse:
    """A file as its size and its non-zero 4 KiB chunks: a clone to 2^62 makes a sparse file of
    that size, which a bytes model could not hold."""

    def __init__(self, data=b""):
        self.size = len(data)
        self.chunks = {}
        self.write(0, data)

    def read(self, off, n):
        out = bytearray()
        while n > 0:
            i, o = divmod(off, BS)
            k = min(n, BS - o)
            c = self.chunks.get(i)
            out += c[o:o + k] if c is not None else bytes(k)
            off += k
            n -= k
        return bytes(out)

    def write(self, off, data):
        pos = 0
        while pos < len(data):
            i, o = divmod(off + pos, BS)
            k = min(len(data) - pos, BS - o)
            c = self.chunks.setdefault(i, bytearray(BS))
            c[o:o + k] = data[pos:pos + k]
            pos += k
        self.size = max(self.size, off + len(data))

    def copy(self):
        c = Sparse()
        c.size = self.size
        c.chunks = {i: bytearray(v) for i, v in self.chunks.items()}
        return c


def clone_model(dst, src, soff, length, doff):
    """What a successful FICLONERANGE-like clone makes of dst: the source's range, holes
    included, over [doff, doff + length). Works chunk by chunk, since the files may be sparse
    and huge."""
    if length == 0:
        length = src.size - soff
    if length == 0:             # from the source's EOF to its EOF: nothing, as in the VFS
        return dst
    out = dst.copy()
    end = doff + length
    for i in list(out.chunks):
        lo, hi = i * BS, (i + 1) * BS
        if doff <= lo and hi <= end:
            del out.chunks[i]
        elif lo < end and doff < hi:              # an edge chunk, partly in the range
            a, b = max(lo, doff), min(hi, end)
            out.chunks[i][a - lo:b - lo] = bytes(b - a)
    for i, c in src.chunks.items():
        lo = i * BS
        a, b = max(lo, soff), min(lo + BS, soff + length)
        if a < b:
            out.write(doff + (a - soff), bytes(c[a - lo:b - lo]))
    out.size = max(out.size, end)
    return out


def same_as_model(path, model):
    """The file's size, its bytes where the model has chunks, and zeros in every data region
    of the file the model has no chunk for (found with SEEK_DATA)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size != model.size:
            return f"size {size}, model {model.size}"
        for i, c in model.chunks.items():
            got = os.pread(fd, BS, i * BS)
            want = bytes(c[:max(0, min(BS, model.size - i * BS))])
            if got != want:
                return f"chunk at {i * BS} differs"
        # with the writeback cache SEEK_DATA is the kernel's (all data), which would visit
        # every block of a file cloned to 2^62: the pool's data ranges instead
        ranges = reflinkio.data_map(fd, size) if pmfs.WRITEBACK_CACHE else None
        off = 0
        while off < size:
            if ranges is not None:
                ranges = [r for r in ranges if r[1] > off]
                if not ranges:
                    break
                off = max(off, ranges[0][0])
                if off >= size:
                    break
            else:
                try:
                    off = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
            i = off // BS
            if i not in model.chunks and os.pread(fd, BS, i * BS).count(0) != \
                    len(os.pread(fd, BS, i * BS)):
                return f"data at {i * BS} where the model has none"
            off = (i + 1) * BS
        return None
    finally:
        os.close(fd)


@test(size="128M", timeout=300)
def random_clone_unshare_dedupe(m):
    rng = m.rng
    a, b = m.path("a"), m.path("b")
    write_file(a, rng.randbytes(12 * BS + 123))
    write_file(b, rng.randbytes(9 * BS))
    model = {a: Sparse(read(a)), b: Sparse(read(b))}
    allowed = {errno.EINVAL, errno.EBADF, errno.EFBIG, errno.EOVERFLOW, errno.EXDEV}
    counts = {}
    rounds = pmfs.scaled(400, 100)
    for i in range(rounds):
        dst, src = rng.choice([(a, b), (b, a), (a, a), (b, b)])
        sfd = os.open(src, os.O_RDONLY)
        dfd = os.open(dst, os.O_RDWR)
        try:
            kind = rng.randrange(3)
            if kind == 0:
                ns, nd = model[src].size, model[dst].size
                if rng.random() < 0.5:      # plausible: aligned, inside the files
                    soff = rng.randrange(0, ns // BS + 1) * BS
                    length = rng.choice([0, rng.randrange(1, 4) * BS])
                    doff = rng.randrange(0, nd // BS + 2) * BS
                else:
                    soff, length, doff = wild(rng, ns), wild(rng, ns), wild(rng, nd)
                fd_arg = rng.choice([sfd, sfd, sfd, -1, 1 << 40, -(1 << 40)])
                arg = struct.pack(CLONE_RANGE_FMT, fd_arg, soff, length, doff)
                err, _ = errno_of_ioctl(dfd, PMFUSE_IOC_CLONE_RANGE, arg)
                what = f"clone {src}->{dst} src_fd {fd_arg} off {soff} len {length} to {doff}"
                if err == 0:
                    check(fd_arg == sfd, f"{what}: succeeded with a bad descriptor")
                    if os.environ.get("FS_IOCTL_TRACE"):
                        print(f"     {what}: ok, sizes {model[src].size} {model[dst].size} -> "
                              f"{os.fstat(dfd).st_size}")
                    model[dst] = clone_model(model[dst], model[src], soff, length, doff)
                else:
                    check(err in allowed, f"{what}: {errno.errorcode.get(err, err)}")
            elif kind == 1:
                off, length = wild(rng, model[dst].size), wild(rng, model[dst].size)
                err, _ = errno_of_ioctl(dfd, PMFUSE_IOC_UNSHARE,
                                        struct.pack(UNSHARE_FMT, off, length))
                what = f"unshare {dst} {off} {length}"
                check(err in allowed | {0}, f"{what}: {errno.errorcode.get(err, err)}")
            else:
                soff, length, doff = (wild(rng, model[src].size), wild(rng, model[src].size),
                                      wild(rng, model[dst].size))
                arg = struct.pack(DEDUPE_FMT, soff, length, dfd, doff, 0, 0, 0)
                err, out = errno_of_ioctl(sfd, PMFUSE_IOC_DEDUPE_RANGE, arg, mutate=True)
                what = f"dedupe {src}->{dst} off {soff} len {length} to {doff}"
                if err == 0:
                    status = struct.unpack(DEDUPE_FMT, out)[5]
                    check(status in (0, 1) or -status in allowed,
                          f"{what}: status {status}")
                else:
                    check(err in allowed, f"{what}: {errno.errorcode.get(err, err)}")
            counts[(kind, err)] = counts.get((kind, err), 0) + 1
        finally:
            os.close(sfd)
            os.close(dfd)
        if i % 50 == 49 or i == rounds - 1:
            for p in (a, b):
                why = same_as_model(p, model[p])
                if why:
                    raise Failure(f"after round {i}: {p} differs from the model: {why}")
    names = {0: "clone", 1: "unshare", 2: "dedupe"}
    print("     " + ", ".join(f"{names[k]} {errno.errorcode.get(e, 'ok') if e else 'ok'} {n}"
                              for (k, e), n in sorted(counts.items())))
    check(counts.get((0, 0), 0) > 0, "no clone succeeded: the test exercises only refusals")
    m.unmount()
    m.raise_problems()
    m.fsck()
    m.mount()
    for p in (a, b):
        eq(same_as_model(p, model[p]), None, f"{p} after a remount")


@test(size="64M")
def wrong_numbers_sizes_and_files(m):
    f = m.path("f")
    data = os.urandom(5 * BS)
    write_file(f, data)
    fd = os.open(f, os.O_RDWR)
    try:
        # unknown numbers of pmfuse's type, and known numbers with another size or direction
        for nr in (0, 5, 99, 255):
            err, _ = errno_of_ioctl(fd, _ioc(_IOC_WRITE, PMFUSE_IOC_MAGIC, nr, 16), bytes(16))
            eq(err, errno.ENOTTY, f"unknown pmfuse ioctl number {nr}")
        for nr, size, d in ((1, 8, _IOC_WRITE), (1, 64, _IOC_WRITE), (2, 4, _IOC_WRITE),
                            (3, 16, _IOC_WRITE | _IOC_READ), (4, 64, _IOC_WRITE | _IOC_READ),
                            (1, 32, _IOC_READ), (2, 16, _IOC_READ),
                            (6, 64, _IOC_WRITE | _IOC_READ), (6, 48, _IOC_WRITE),
                            (7, 64, _IOC_WRITE | _IOC_READ), (7, 80, _IOC_READ)):
            err, _ = errno_of_ioctl(fd, _ioc(d, PMFUSE_IOC_MAGIC, nr, size), bytes(size),
                                    mutate=bool(d & _IOC_READ))
            check(err in (errno.ENOTTY, errno.EINVAL),
                  f"ioctl {nr} with size {size}, direction {d}: "
                  f"{errno.errorcode.get(err, err) if err else 'succeeded'}")
        # GET_EXTENTS from anywhere, also far past EOF: sane answers
        for start in (0, 1, BS, 5 * BS, 1 << 40, (1 << 63) - 1, U64):
            buf = bytearray(EXTENTS_SIZE)
            struct.pack_into("<Q", buf, 0, start)
            err, out = errno_of_ioctl(fd, PMFUSE_IOC_GET_EXTENTS, bytes(buf), mutate=True)
            if err == 0:
                nxt, count = struct.unpack_from("<QI", out, 8)
                check(count <= 64, f"GET_EXTENTS from {start}: count {count}")
                check(nxt == U64 or nxt > start, f"GET_EXTENTS from {start}: next {nxt}")
            else:
                check(err in (errno.EINVAL, errno.EFBIG, errno.EOVERFLOW),
                      f"GET_EXTENTS from {start}: {errno.errorcode.get(err, err)}")
        # block hashes (both forms) from anywhere, with any end: sane answers or EINVAL
        for start in (0, 1, BS, 5 * BS, 1 << 40, (1 << 63) - 1, 1 << 63, U64):
            buf = bytearray(HASHES_SIZE)
            struct.pack_into(HASHES_HDR_FMT, buf, 0, start, 0, 0, 0, 0, 0, 0, 0)
            err, out = errno_of_ioctl(fd, PMFUSE_IOC_BLOCK_HASHES, bytes(buf), mutate=True)
            if err == 0:
                nxt, count = struct.unpack_from(HASHES_HDR_FMT, out, 0)[3:5]
                check(count <= 5, f"BLOCK_HASHES from {start}: count {count}")
                check(nxt == U64 or nxt > start, f"BLOCK_HASHES from {start}: next {nxt}")
            else:
                check(err in (errno.EINVAL, errno.EFBIG, errno.EOVERFLOW),
                      f"BLOCK_HASHES from {start}: {errno.errorcode.get(err, err)}")
            for end in (0, 1, start, (start - 1) & U64, start + BS, U64):
                buf = bytearray(HASHES2_SIZE)
                struct.pack_into(HASHES2_HDR_FMT, buf, 0, start, end & U64, 0, 0, 0, 0, 0, 0,
                                 0, 0, 0)
                err, out = errno_of_ioctl(fd, PMFUSE_IOC_BLOCK_HASHES2, bytes(buf), mutate=True)
                what = f"BLOCK_HASHES2 from {start} to {end & U64}"
                if err == 0:
                    nxt, runs, hashes = struct.unpack_from(HASHES2_HDR_FMT, out, 0)[4:7]
                    check(3 * runs + hashes <= HASHES2_WORDS and hashes <= 5,
                          f"{what}: {runs} runs, {hashes} hashes")
                    check(nxt == U64 or nxt > start, f"{what}: next {nxt}")
                    if start == 0 and end == 0:
                        eq(hashes, 5, f"{what}: hashes of the file's five blocks")
                else:
                    check(err in (errno.EINVAL, errno.EFBIG, errno.EOVERFLOW),
                          f"{what}: {errno.errorcode.get(err, err)}")
    finally:
        os.close(fd)
    # a directory, a read-only descriptor, a fifo's neighbour file, a file on tmpfs
    d = m.path("d")
    os.mkdir(d)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    sfd = os.open(f, os.O_RDONLY)
    try:
        for cmd, arg in ((PMFUSE_IOC_CLONE_RANGE, struct.pack(CLONE_RANGE_FMT, sfd, 0, 0, 0)),
                         (PMFUSE_IOC_UNSHARE, struct.pack(UNSHARE_FMT, 0, 0))):
            err, _ = errno_of_ioctl(dfd, cmd, arg)
            check(err in (errno.EISDIR, errno.ENOTTY, errno.EINVAL, errno.EBADF),
                  f"ioctl {cmd:#x} on a directory: "
                  f"{errno.errorcode.get(err, err) if err else 'succeeded'}")
        err, _ = errno_of_ioctl(sfd, PMFUSE_IOC_UNSHARE, struct.pack(UNSHARE_FMT, 0, 0))
        eq(err, errno.EBADF, "unshare through a read-only descriptor")
        err, _ = errno_of_ioctl(sfd, PMFUSE_IOC_CLONE_RANGE,
                                struct.pack(CLONE_RANGE_FMT, sfd, 0, 0, 0))
        eq(err, errno.EBADF, "clone into a read-only descriptor")
        outside = os.path.join(m.tmp, "outside")
        write_file(outside, bytes(BS))
        ofd = os.open(outside, os.O_RDWR)
        wfd = os.open(f, os.O_RDWR)
        err, out = errno_of_ioctl(sfd, PMFUSE_IOC_DEDUPE_RANGE,
                                  struct.pack(DEDUPE_FMT, 0, BS, ofd, 0, 0, 0, 0), mutate=True)
        if err == 0:
            status = struct.unpack(DEDUPE_FMT, out)[5]
            eq(-status, errno.EXDEV, "dedupe into a file on tmpfs (status)")
        else:
            eq(err, errno.EXDEV, "dedupe into a file on tmpfs")
        err, _ = errno_of_ioctl(wfd, PMFUSE_IOC_CLONE_RANGE,
                                struct.pack(CLONE_RANGE_FMT, ofd, 0, 0, 0))
        eq(err, errno.EXDEV, "clone from a file on tmpfs")
        os.close(ofd)
        os.close(wfd)
    finally:
        os.close(dfd)
        os.close(sfd)
    eq(read(f), data, "the file after every refused ioctl")
    m.unmount()
    m.raise_problems()
    m.fsck()


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
