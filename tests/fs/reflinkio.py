# SPDX-License-Identifier: BSD-3-Clause
"""Helpers of the reflink tests (fs_reflink.py, fs_mmap_reflink.py) that pmfs.py does not have:
the pmfuse ioctls of include/pmfuse/ioctl.h packed with struct, pmfusectl through subprocess,
space used from statvfs, and the sharing invariant checked over every file of a mount.

Not a test file (it registers no tests): importing it is safe from any fs_*.py."""

import bisect
import collections
import errno
import fcntl
import hashlib
import os
import re
import struct
import subprocess
import time

import pmfs
from pmfs import check, eq, Failure

# ---- ioctl numbers (asm-generic layout: nr 8 bits, type 8, size 14, dir 2; x86_64 and arm64)

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(d, typ, nr, size):
    return (d << 30) | (size << 16) | (typ << 8) | nr


PMFUSE_IOC_MAGIC = 0xB7
CLONE_RANGE_FMT = "=qQQQ"                 # struct pmfuse_ioc_clone_range
UNSHARE_FMT = "=QQ"                       # struct pmfuse_ioc_unshare
DEDUPE_FMT = "=QQqQQiI"                   # struct pmfuse_ioc_dedupe_range
DEDUPE_BLOCKS_FMT = "=QQqQIIQQQQ3Q"       # struct pmfuse_ioc_dedupe_blocks
HASH_FMT = "=QQQII"                       # struct pmfuse_ioc_block_hash
HASHES_HDR_FMT = "=QIIQII2Q"              # struct pmfuse_ioc_block_hashes, before h[]
HASHES_MAX = 384
HASH_ZERO = 1
HASHES_SIZE = struct.calcsize(HASHES_HDR_FMT) + HASHES_MAX * struct.calcsize(HASH_FMT)
HASH_RUN_FMT = "=QQII"                    # struct pmfuse_ioc_hash_run
HASHES2_HDR_FMT = "=QQIIQIIII2Q"          # struct pmfuse_ioc_block_hashes2, before data[]
HASHES2_WORDS = 2039
HASHES2_SIZE = struct.calcsize(HASHES2_HDR_FMT) + 8 * HASHES2_WORDS
EXTENT_FMT = "=QQQII"                     # struct pmfuse_ioc_extent
EXTENTS_HDR_FMT = "=QQII"                 # struct pmfuse_ioc_extents, before ext[]
EXTENTS_MAX = 64
EXTENT_SHARED = 1
EXTENT_UNWRITTEN = 2                      # PMFUSE_IOC_EXTENT_UNWRITTEN
EXTENTS_SIZE = struct.calcsize(EXTENTS_HDR_FMT) + EXTENTS_MAX * struct.calcsize(EXTENT_FMT)

PMFUSE_IOC_CLONE_RANGE = _ioc(_IOC_WRITE, PMFUSE_IOC_MAGIC, 1, struct.calcsize(CLONE_RANGE_FMT))
PMFUSE_IOC_UNSHARE = _ioc(_IOC_WRITE, PMFUSE_IOC_MAGIC, 2, struct.calcsize(UNSHARE_FMT))
PMFUSE_IOC_DEDUPE_RANGE = _ioc(_IOC_WRITE | _IOC_READ, PMFUSE_IOC_MAGIC, 3,
                               struct.calcsize(DEDUPE_FMT))
PMFUSE_IOC_GET_EXTENTS = _ioc(_IOC_WRITE | _IOC_READ, PMFUSE_IOC_MAGIC, 4, EXTENTS_SIZE)
PMFUSE_IOC_DEDUPE_BLOCKS = _ioc(_IOC_WRITE | _IOC_READ, PMFUSE_IOC_MAGIC, 5,
                                struct.calcsize(DEDUPE_BLOCKS_FMT))
PMFUSE_IOC_BLOCK_HASHES = _ioc(_IOC_WRITE | _IOC_READ, PMFUSE_IOC_MAGIC, 6, HASHES_SIZE)
PMFUSE_IOC_BLOCK_HASHES2 = _ioc(_IOC_WRITE | _IOC_READ, PMFUSE_IOC_MAGIC, 7, HASHES2_SIZE)

assert struct.calcsize(CLONE_RANGE_FMT) == 32
assert struct.calcsize(UNSHARE_FMT) == 16
assert struct.calcsize(DEDUPE_FMT) == 48
assert struct.calcsize(DEDUPE_BLOCKS_FMT) == 96
assert HASHES_SIZE == 12336
assert struct.calcsize(HASH_RUN_FMT) == 24 and HASHES2_SIZE == 16376
assert struct.calcsize(EXTENT_FMT) == 32
assert EXTENTS_SIZE == 2072

COW_EXTENT_BLOCKS = 32     # the default CoW extent size hint (issue 4, fs.h)
UINT64_MAX = (1 << 64) - 1

Extent = collections.namedtuple("Extent", "logical physical length flags refcount")


def to_pool(*fds):
    """What a caller of the pmfuse ioctls must do with the daemon's writeback cache: the kernel
    writes back nothing before a FUSE ioctl, so the files handed over are fsync'd first (as
    pmfusectl does). Descriptors an error test made bad are left to the ioctl to refuse."""
    if not pmfs.WRITEBACK_CACHE:
        return
    for fd in fds:
        try:
            if fd >= 0:
                os.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.EINVAL, errno.EISDIR):
                raise


def clone_range(dst_fd, src_fd, src_off=0, length=0, dst_off=0):
    """PMFUSE_IOC_CLONE_RANGE issued on dst_fd (FICLONERANGE semantics); raises OSError."""
    to_pool(src_fd, dst_fd)
    arg = struct.pack(CLONE_RANGE_FMT, src_fd, src_off, length, dst_off)
    fcntl.ioctl(dst_fd, PMFUSE_IOC_CLONE_RANGE, arg)


def clone_file(src, dst):
    """Clones the whole of path src into path dst (created or truncated), like cp
    --reflink=always, through the ioctl."""
    s = os.open(src, os.O_RDONLY)
    try:
        d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            clone_range(d, s)
        finally:
            os.close(d)
    finally:
        os.close(s)


def dedupe(src_fd, dst_fd, src_off, length, dst_off, reserved=0):
    """PMFUSE_IOC_DEDUPE_RANGE on src_fd: (status, bytes_deduped). The ioctl's own errors
    raise OSError; the destination's come back in the status as -errno."""
    to_pool(src_fd, dst_fd)
    buf = bytearray(struct.pack(DEDUPE_FMT, src_off, length, dst_fd, dst_off, 0, 0x5A5A,
                                reserved))
    fcntl.ioctl(src_fd, PMFUSE_IOC_DEDUPE_RANGE, buf, True)
    so, ln, fd, do, done, status, res = struct.unpack(DEDUPE_FMT, buf)
    eq((so, ln, fd, do, res), (src_off, length, dst_fd, dst_off, reserved),
       "input fields of the dedupe argument as the daemon returned them")
    return status, done


def unshare(fd, off=0, length=0):
    to_pool(fd)
    fcntl.ioctl(fd, PMFUSE_IOC_UNSHARE, struct.pack(UNSHARE_FMT, off, length))


def get_extents(fd):
    """Every extent of the open file: (block_size, [Extent]) through PMFUSE_IOC_GET_EXTENTS."""
    to_pool(fd)
    out, start, bs = [], 0, None
    for _ in range(1 << 20):
        buf = bytearray(EXTENTS_SIZE)
        struct.pack_into(EXTENTS_HDR_FMT, buf, 0, start, 0, 0, 0)
        fcntl.ioctl(fd, PMFUSE_IOC_GET_EXTENTS, buf, True)
        _, nxt, count, bs = struct.unpack_from(EXTENTS_HDR_FMT, buf, 0)
        check(count <= EXTENTS_MAX, f"GET_EXTENTS count {count} > {EXTENTS_MAX}")
        hdr = struct.calcsize(EXTENTS_HDR_FMT)
        for i in range(count):
            out.append(Extent(*struct.unpack_from(EXTENT_FMT, buf,
                                                  hdr + i * struct.calcsize(EXTENT_FMT))))
        if nxt == UINT64_MAX:
            break
        check(nxt > start or count > 0, f"GET_EXTENTS made no progress at {start}")
        check(nxt > start, f"GET_EXTENTS next {nxt} does not advance past start {start}")
        start = nxt
    else:
        raise Failure("GET_EXTENTS never finished")
    check(bs and bs & (bs - 1) == 0, f"GET_EXTENTS block_size {bs}")
    for a, b in zip(out, out[1:]):
        check(a.logical + a.length <= b.logical,
              f"GET_EXTENTS: extents overlap or are out of order: {a} then {b}")
    return bs, out


def extents_of(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return get_extents(fd)
    finally:
        os.close(fd)


def refcounts_by_block(path):
    """{file block: (physical block, refcount)} of a file's mapped blocks."""
    bs, exts = extents_of(path)
    out = {}
    for e in exts:
        for i in range(e.length // bs):
            out[e.logical // bs + i] = (e.physical // bs + i, e.refcount)
    return out


def shared_bytes(path):
    """(shared bytes, private bytes) of a file's mapped extents."""
    _, exts = extents_of(path)
    sh = sum(e.length for e in exts if e.refcount > 1)
    return sh, sum(e.length for e in exts) - sh


def check_sharing(paths, what):
    """The invariant of the refcount tree, seen from outside: over the given files (which must
    be every file that can own the blocks involved, e.g. every file of the mount), each physical
    block is reported with a refcount equal to the number of (file, offset) places that map it,
    and flagged SHARED exactly when that count is above one. Returns {path: [Extent]}."""
    exts, bs = {}, None
    for p in paths:
        b, e = extents_of(p)
        check(bs is None or b == bs, f"{what}: block sizes differ ({bs}, {b})")
        bs = b
        exts[p] = e
    # owners of every physical byte: sweep the extents' edges
    edges = collections.Counter()
    for p, es in exts.items():
        for e in es:
            check(e.length > 0 and e.length % bs == 0 and e.logical % bs == 0
                  and e.physical % bs == 0, f"{what}: {p}: extent not block-aligned: {e}")
            edges[e.physical] += 1
            edges[e.physical + e.length] -= 1
    points = sorted(edges)
    owners = []           # (start, end, count) of each elementary physical interval
    c = 0
    for a, b in zip(points, points[1:]):
        c += edges[a]
        if c:
            owners.append((a, b, c))
    starts = [o[0] for o in owners]
    for p, es in exts.items():
        for e in es:
            i = bisect.bisect_right(starts, e.physical) - 1
            pos = e.physical
            while pos < e.physical + e.length:
                check(0 <= i < len(owners) and owners[i][0] <= pos < owners[i][1],
                      f"{what}: internal: no owner interval at {pos}")
                n = owners[i][2]
                if n != e.refcount:
                    raise Failure(f"{what}: {os.path.basename(p)} extent {fmt_extent(e, bs)} "
                                  f"reports refcount {e.refcount}, but physical block "
                                  f"{pos // bs} is mapped {n} time(s) by the files")
                shared = bool(e.flags & EXTENT_SHARED)
                if shared != (n > 1):
                    raise Failure(f"{what}: {os.path.basename(p)} extent {fmt_extent(e, bs)} "
                                  f"SHARED flag {shared}, but {n} owner(s)")
                pos = owners[i][1]
                i += 1
    return exts


def fmt_extent(e, bs):
    return (f"[file blk {e.logical // bs}+{e.length // bs} -> pool blk {e.physical // bs}, "
            f"flags {e.flags:#x}, refcount {e.refcount}]")


def all_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return sorted(out)


def check_mount_sharing(m, what):
    """check_sharing over every regular file of the mount."""
    return check_sharing(all_files(m.mnt), what)


def check_mount_sharing_after_unlink(m, what, timeout=10):
    """check_mount_sharing once the daemon has let go of unlinked files: their blocks count
    until the kernel's FORGET for the inode arrives, which it sends asynchronously."""
    end = time.time() + timeout
    while True:
        try:
            return check_mount_sharing(m, what)
        except Failure:
            if time.time() > end:
                raise
            time.sleep(0.05)


# ---- space

def used_bytes(m):
    s = m.statfs()
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def block_size(m):
    return m.statfs().f_frsize


def wait_used(m, target, slack, what, timeout=10):
    """Waits until the used space is within slack bytes above target (forgets of unlinked
    inodes reach the daemon asynchronously); raises with the figures otherwise."""
    try:
        pmfs.wait_until(lambda: used_bytes(m) <= target + slack, timeout, what)
    except Failure:
        u = used_bytes(m)
        raise Failure(f"{what}: {u} bytes used, expected at most {target} + {slack} "
                      f"(over by {u - target - slack})") from None


# ---- pmfusectl

def ctl(m, *args, ok=True, timeout=300):
    """Runs pmfusectl ARGS; with ok=True a non-zero exit is a failure. Returns the result
    (stdout and stderr merged in .stdout as text)."""
    if not m.cfg.ctl:
        raise pmfs.Skip("pmfusectl is not built")
    cmd = [m.cfg.ctl, *map(str, args)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout * pmfs.TIME_FACTOR)
    if ok and r.returncode != 0:
        raise Failure(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}")
    return r


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
               "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
               "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?i?B?)$", re.I)


def parse_size(tok):
    """'123', '4096B', '1.00MiB', '12K' -> bytes (float for scaled figures); None if not a size."""
    mo = _SIZE_RE.match(tok)
    if not mo:
        return None
    unit = mo.group(2).lower()
    if unit not in _SIZE_UNITS:
        return None
    return float(mo.group(1)) * _SIZE_UNITS[unit]


def parse_du(text):
    """Rows of `pmfusectl du` (btrfs filesystem du style: Total, Exclusive, Set shared,
    Filename; 'Set shared' is '-' for a single file) as {name: (total, exclusive, shared or
    None)}: every line whose first two words are sizes."""
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4:
            continue
        t, e = parse_size(words[0]), parse_size(words[1])
        s = None if words[2] == "-" else parse_size(words[2])
        if t is None or e is None or (s is None and words[2] != "-"):
            continue
        rows[line.split(None, 3)[3]] = (t, e, s)
    return rows


STAT_FLAGS = ("-", "shared", "unwritten", "shared,unwritten")


def parse_stat(text, flags=False):
    """Extent rows of `pmfusectl stat --raw` as [(logical, physical, length, refs, shared)],
    with flags=True a sixth element: the set of flag words ("shared", "unwritten")."""
    out = []
    for line in text.splitlines():
        w = line.split()
        if len(w) == 5 and w[0].isdigit() and w[1].isdigit() and w[3].isdigit():
            ln = parse_size(w[2])
            if ln is None or w[4] not in STAT_FLAGS:
                continue
            words = set(w[4].split(",")) - {"-"}
            row = (int(w[0]), int(w[1]), int(ln), int(w[3]), "shared" in words)
            out.append(row + (words,) if flags else row)
    return out


def shared_union(paths):
    """Bytes of the union of the physical ranges of the shared extents of the files."""
    rng = []
    for p in paths:
        for e in extents_of(p)[1]:
            if e.flags & EXTENT_SHARED:
                rng.append((e.physical, e.physical + e.length))
    rng.sort()
    total, end = 0, -1
    for a, b in rng:
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


# ---- data

def make_data(size, rng, stamp=0):
    """size bytes, random, each 4 KiB block stamped with (stamp, its index) in its first 16
    bytes, so that a block mapped at the wrong place or from the wrong file is caught."""
    base = rng.randbytes(1 << 20)
    out = bytearray(size)
    for off in range(0, size, 1 << 20):
        n = min(1 << 20, size - off)
        out[off:off + n] = base[:n]
    for blk in range(0, (size + 4095) // 4096):
        o = blk * 4096
        if o + 16 <= size:
            struct.pack_into("<QQ", out, o, stamp, blk)
    return out


def write_big(path, data, chunk=1 << 20):
    """Writes data to a new file in chunk-sized writes, fsyncs, returns its sha256."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        off = 0
        while off < len(data):
            pmfs.pwrite_all(fd, view[off:off + chunk], off)
            off += chunk
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def same_file(path, expected, what):
    """Compares a file's contents with expected bytes (a fast digest first)."""
    got = pmfs.read_file(path)
    if got != expected:
        pmfs.same_bytes(got, bytes(expected), what)


def cfr_all(src_fd, dst_fd, length, soff, doff):
    """copy_file_range until length bytes are done or the source ends; every call must make
    progress while inside the source (a 0 return inside EOF makes callers like fsx spin)."""
    done = 0
    while done < length:
        n = os.copy_file_range(src_fd, dst_fd, length - done, soff + done, doff + done)
        if n == 0:
            break
        check(n > 0, f"copy_file_range returned {n}")
        done += n
    return done


def data_map(fd, size):
    """[(start, end)] of data ranges by SEEK_DATA / SEEK_HOLE. With the writeback cache those
    are the kernel's own answers (all data up to EOF: the daemon declines, since the pool may
    not hold what the page cache does), so the map is what the daemon would have answered,
    from the pool's extents after an fsync: mapped blocks, unwritten ones included, up to
    EOF."""
    if pmfs.WRITEBACK_CACHE:
        return _pool_data_map(fd, size)
    out, off = [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, pmfs.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        h = os.lseek(fd, d, pmfs.SEEK_HOLE)
        out.append((d, h))
        off = h
    return out


def _pool_data_map(fd, size):
    _, exts = get_extents(fd)
    eof = os.fstat(fd).st_size
    out = []
    for e in exts:
        start, end = e.logical, min(e.logical + e.length, eof)
        if start >= end or start >= size:
            continue
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
