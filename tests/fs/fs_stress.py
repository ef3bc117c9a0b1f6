#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Stress: workers (threads of this process and of two forked processes, so that the daemon
gets requests from several tasks at once) run every namespace and data operation at random for
a bounded time (create, mkdir, rmdir, link, unlink, rename across directories, over existing
targets, NOREPLACE and EXCHANGE, symlink, chmod, chown, utimensat, truncate, xattrs, write,
append, read, fallocate and its punch/zero modes, clone and dedupe through the pmfuse ioctls,
copy_file_range, fsync, readdir, stat).

Each worker owns a directory whose model it keeps exactly (every inode: type, bytes, symlink
target, mode, owner, xattrs, mtime after utimensat, its names); every read, stat and readdir
there is checked against it while the others run. All workers also share a directory of a few
names where they race: there only invariants hold (the errors are the ones a race can give;
every 8-byte word of a shared file is zero or a tag of a write that covered that offset, since
shared writes, clones and copies keep offsets). At the end, with everything quiet: readdir
matches lookups (inode numbers, types, every name once), link counts match the names, sizes
match what reads return, the sharing invariant of the refcount tree (reflinkio), and each owned
directory is its model; then a clean unmount, `fsck.pmfuse -n` clean, a mount, and the whole
tree must be what it was.

kill -9: the same workload, the daemon killed at a random moment, three times on one pool:
after the next mount every operation that returned is there (DESIGN rule 3: each is durable
when it returns; with the writeback cache each data change is fsync'd before it counts, as in
fs_durability), the one in flight of each worker done or not (a data change: each byte old or
new), the invariants above hold, and after a clean unmount fsck is clean.

PMFUSE_SEED replays each worker's choices (not the interleaving); PMFUSE_TEST_SCALE scales the
time and the sizes; PMFUSE_STRESS_SECONDS sets the time of the first test."""

import copy
import errno
import os
import random
import stat
import struct
import threading
import time

import pmfs
import reflinkio
from pmfs import check, eq, test, Failure

BS = 4096
FILE_MAX = 512 << 10          # owned files stay below this
SHARED_MAX = 256 << 10        # shared files too (word indexes fit the tag)
SHARED_DIRS = 4
SHARED_NAMES = 12
PROCS = 2                     # forked processes, each with THREADS workers, and THREADS here
THREADS = 2
UMASK = 0o022
TAG_MAGIC = 0xA5
XNAMES = [f"user.s{i}" for i in range(4)]
FALLOC_MODES = (0, pmfs.FALLOC_FL_KEEP_SIZE,
                pmfs.FALLOC_FL_PUNCH_HOLE | pmfs.FALLOC_FL_KEEP_SIZE,
                pmfs.FALLOC_FL_ZERO_RANGE, pmfs.FALLOC_FL_ZERO_RANGE | pmfs.FALLOC_FL_KEEP_SIZE)
# what a race on shared names may legitimately give
SHARED_ERRS = (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
               errno.ENODATA, errno.EINVAL, errno.ELOOP)
NOFOLLOW = os.O_NOFOLLOW     # shared names may be symlinks: never create through one


class Dead(Exception):
    """The daemon is gone (kill -9 tests): the worker stops with its op in flight."""


# ---------------------------------------------------------------------------------------------
# the model of an owned directory


def new_node(kind, mode, **kw):
    n = {"k": kind, "data": bytearray(), "target": None, "mode": mode, "uid": 0, "gid": 0,
         "x": {}, "mtime": None}
    n.update(kw)
    return n


class Model:
    """paths (relative to the worker's directory, "" is itself) -> inode identity -> node."""

    def __init__(self, wid):
        self.wid = wid
        self.paths = {"": "root"}
        self.nodes = {"root": new_node("d", 0o755)}
        self.serial = 0

    def ident(self):
        self.serial += 1
        return f"{self.wid}.{self.serial}"

    def kind(self, p):
        return self.nodes[self.paths[p]]["k"]

    def of_kind(self, k):
        return sorted(p for p, i in self.paths.items() if self.nodes[i]["k"] == k)

    def children(self, d):
        return [p for p in self.paths if p and os.path.dirname(p) == d]

    def subtree(self, p):
        return [q for q in self.paths if q == p or q.startswith(p + "/")]

    def touch(self, ident):
        self.nodes[ident]["mtime"] = None

    def drop_name(self, p):
        ident = self.paths.pop(p)
        if ident not in self.paths.values():
            del self.nodes[ident]

    def depth(self, p):
        return p.count("/") + 1 if p else 0


def extend(d, n):
    if len(d) < n:
        d.extend(bytes(n - len(d)))


def apply(md, rec):
    """The model after operation rec returned (also used for the state after an op in flight)."""
    op = rec[0]
    N = md.nodes
    if op in ("read", "stat", "readdir", "fsync", "getx", "dedupe"):
        return
    if op == "create":
        _, p, mode, ident = rec
        md.paths[p] = ident
        N[ident] = new_node("f", mode & ~UMASK)
        md.touch(md.paths[os.path.dirname(p)])
    elif op == "mkdir":
        _, p, mode, ident = rec
        md.paths[p] = ident
        N[ident] = new_node("d", mode & ~UMASK)
        md.touch(md.paths[os.path.dirname(p)])
    elif op == "symlink":
        _, target, p, ident = rec
        md.paths[p] = ident
        N[ident] = new_node("l", 0o777, target=target)
        md.touch(md.paths[os.path.dirname(p)])
    elif op in ("rmdir", "unlink"):
        p = rec[1]
        md.touch(md.paths[os.path.dirname(p)])
        md.drop_name(p)
    elif op == "link":
        _, src, p = rec
        md.paths[p] = md.paths[src]
        md.touch(md.paths[os.path.dirname(p)])
    elif op == "rename":
        _, src, dst, flags = rec
        for q in (src, dst):
            md.touch(md.paths[os.path.dirname(q)])
        if flags & pmfs.RENAME_EXCHANGE:
            a, b = md.subtree(src), md.subtree(dst)
            moved = {dst + q[len(src):]: md.paths[q] for q in a}
            moved.update({src + q[len(dst):]: md.paths[q] for q in b})
            for q in a + b:
                del md.paths[q]
            md.paths.update(moved)
            return
        if dst in md.paths and md.paths[dst] == md.paths[src]:
            return                           # two links of one inode: nothing happens
        if dst in md.paths:
            md.drop_name(dst)
        moved = {dst + q[len(src):]: md.paths[q] for q in md.subtree(src)}
        for q in md.subtree(src):
            del md.paths[q]
        md.paths.update(moved)
    elif op == "chmod":
        N[md.paths[rec[1]]]["mode"] = rec[2]
    elif op == "chown":
        n = N[md.paths[rec[1]]]
        n["uid"], n["gid"] = rec[2], rec[3]
    elif op == "utime":
        N[md.paths[rec[1]]]["mtime"] = rec[3]
    elif op == "setx":
        N[md.paths[rec[1]]]["x"][rec[2]] = rec[3]
    elif op == "rmx":
        N[md.paths[rec[1]]]["x"].pop(rec[2], None)
    else:
        data_apply(md, rec)


def data_apply(md, rec):
    op = rec[0]
    ident = md.paths[rec[1]] if op != "cfr" and op != "clone" else md.paths[rec[2]]
    d = md.nodes[ident]["data"]
    md.touch(ident)
    if op == "write":
        _, _, off, data = rec
        extend(d, off)
        d[off:off + len(data)] = data
    elif op == "truncate":
        size = rec[2]
        if size < len(d):
            del d[size:]
        extend(d, size)
    elif op == "falloc":
        _, _, mode, off, n = rec
        if mode & (pmfs.FALLOC_FL_PUNCH_HOLE | pmfs.FALLOC_FL_ZERO_RANGE):
            end = min(off + n, len(d))
            if end > off:
                d[off:end] = bytes(end - off)
        if not mode & pmfs.FALLOC_FL_KEEP_SIZE:
            extend(d, off + n)
    elif op in ("clone", "cfr"):
        _, src, _, soff, n, doff = rec
        s = md.nodes[md.paths[src]]["data"]
        n = max(0, min(n, len(s) - soff))
        piece = bytes(s[soff:soff + n])
        if n:
            extend(d, doff)
            d[doff:doff + n] = piece


# ---------------------------------------------------------------------------------------------
# shared tags


def tag_words(wid, seq, off, nwords):
    """nwords tags from byte offset off (a multiple of 8): magic, worker, seq, word index."""
    base = TAG_MAGIC | wid << 8 | (seq & 0xFFFFFF) << 16
    w0 = off // 8
    return struct.pack(f"<{nwords}Q", *(base | ((w0 + i) & 0xFFFFFF) << 40
                                        for i in range(nwords)))


def bad_tags(data, writes=None):
    """The first word of data that is neither zero nor a tag of its own offset (and, given
    writes {(wid, seq): (off, end)}, of a write that covered it); None if all are."""
    n = len(data) // 8
    for i, v in enumerate(struct.unpack(f"<{n}Q", data[:n * 8])):
        if v == 0:
            continue
        if v & 0xFF != TAG_MAGIC or v >> 40 != i & 0xFFFFFF:
            return i * 8, v
        if writes is not None:
            w = writes.get(((v >> 8) & 0xFF, (v >> 16) & 0xFFFFFF))
            if w is None or not w[0] <= i * 8 < w[1]:
                return i * 8, v
    return None


# ---------------------------------------------------------------------------------------------
# one worker


class Worker:
    def __init__(self, mnt, wid, model, seed, seconds, kill_mode):
        self.mnt, self.wid, self.md = mnt, wid, model
        self.rng = random.Random(f"{seed}-stress-{wid}-{model.serial}")
        self.seconds, self.kill_mode = seconds, kill_mode
        self.root = os.path.join(mnt, "own", f"w{wid}")
        self.inflight = None
        self.ops = 0
        self.counts = {}
        self.writes = {}          # shared writes: (wid, seq) -> (off, end)
        self.seq = model.serial * 1000 + 1
        self.dup = None           # the last (src, dst, soff, doff, n) copied by dupwrite

    def P(self, p):
        return os.path.join(self.root, p) if p else self.root

    def S(self, d, name):
        return os.path.join(self.mnt, "shared", f"d{d}", name)

    def sync_data(self, fd):
        """With the writeback cache, a data change counts once fsync'd (fs_durability)."""
        if self.kill_mode and pmfs.WRITEBACK_CACHE:
            os.fsync(fd)

    # ---- the loop
    def run(self):
        end = time.time() + self.seconds
        try:
            while time.time() < end:
                if self.rng.random() < 0.7:
                    self.owned_op()
                else:
                    self.shared_op()
                self.ops += 1
        except Dead:
            pass
        except OSError as e:
            if self.kill_mode and e.errno in pmfs.DEAD:
                return self
            raise Failure(f"worker {self.wid}: {e!r} in {self.describe(self.inflight)} "
                          f"(seed {pmfs.SEED})") from None
        except Failure as e:
            raise Failure(f"worker {self.wid}: {e} (seed {pmfs.SEED})") from None
        return self

    def describe(self, rec):
        if rec is None:
            return "None"
        return repr(tuple(f"<{len(x)} bytes>" if isinstance(x, (bytes, bytearray)) else x
                          for x in rec))

    def do(self, rec, fn, *args):
        """Runs one owned operation: fn(*args) must succeed; then the model follows."""
        self.inflight = rec
        fn(*args)
        apply(self.md, rec)
        self.inflight = None
        self.counts[rec[0]] = self.counts.get(rec[0], 0) + 1

    def expect(self, err, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            if self.kill_mode and e.errno in pmfs.DEAD:
                raise Dead() from None
            if e.errno == err:
                return
            raise Failure(f"{pmfs.describe(fn, args)}: expected {pmfs.ename(err)}, got "
                          f"{pmfs.ename(e.errno)}") from None
        raise Failure(f"{pmfs.describe(fn, args)}: expected {pmfs.ename(err)}, got success")

    # ---- owned operations
    def new_path(self):
        """A name never used, in a random directory."""
        d = self.rng.choice(self.md.of_kind("d"))
        self.md.serial += 1
        return os.path.join(d, f"n{self.md.serial}") if d else f"n{self.md.serial}"

    def owned_op(self):
        md, r = self.md, self.rng
        files = md.of_kind("f")
        dirs = md.of_kind("d")
        x = r.random()
        if not files or x < 0.08:
            if len(files) < 24:
                p = self.new_path()
                mode = r.choice([0o644, 0o600, 0o755, 0o640])
                self.do(("create", p, mode, md.ident()), self.op_create, p, mode)
            elif files:
                # O_EXCL over an existing name: EEXIST, nothing changes
                self.expect(errno.EEXIST, self.op_create, r.choice(files), 0o644)
        elif x < 0.11:
            if len(dirs) < 8:
                p = self.new_path()
                if md.depth(p) <= 3:
                    self.do(("mkdir", p, 0o755, md.ident()), os.mkdir, self.P(p), 0o755)
            elif len(dirs) > 1:
                d = r.choice(dirs[1:])
                if md.children(d):
                    self.expect(errno.ENOTEMPTY, os.rmdir, self.P(d))
                else:
                    self.do(("rmdir", d), os.rmdir, self.P(d))
        elif x < 0.13:
            d = r.choice(dirs[1:] or [""])
            if d and not md.children(d):
                self.do(("rmdir", d), os.rmdir, self.P(d))
        elif x < 0.17:
            src = r.choice(files)
            p = self.new_path()
            self.do(("link", src, p), os.link, self.P(src), self.P(p))
        elif x < 0.22:
            victims = files + md.of_kind("l")
            if len(files) > 4:
                v = r.choice(victims)
                self.do(("unlink", v), os.unlink, self.P(v))
        elif x < 0.30:
            self.owned_rename()
        elif x < 0.32:
            p = self.new_path()
            target = "t" * r.randrange(1, 200) + f"-{md.serial}"
            self.do(("symlink", target, p, md.ident()), os.symlink, target, self.P(p))
        elif x < 0.35:
            p = r.choice(files + dirs[1:])
            mode = r.randrange(0o1000)
            self.do(("chmod", p, mode), os.chmod, self.P(p), mode)
        elif x < 0.37:
            p = r.choice([q for q in md.paths if q])
            uid, gid = r.randrange(4), r.randrange(4)
            self.do(("chown", p, uid, gid), os.lchown, self.P(p), uid, gid)
        elif x < 0.39:
            p = r.choice([q for q in md.paths if q])
            a, mt = r.randrange(1 << 40), r.randrange(1 << 40)
            self.do(("utime", p, a, mt),
                    lambda: os.utime(self.P(p), ns=(a, mt), follow_symlinks=False))
        elif x < 0.43:
            p = r.choice(files + dirs)
            name = r.choice(XNAMES)
            if r.random() < 0.7:
                val = r.randbytes(r.choice([1, 30, 300, 3000]))
                self.do(("setx", p, name, val), os.setxattr, self.P(p), name, val)
            elif name in md.nodes[md.paths[p]]["x"]:
                self.do(("rmx", p, name), os.removexattr, self.P(p), name)
            else:
                self.expect(errno.ENODATA, os.removexattr, self.P(p), name)
        elif x < 0.46:
            p = r.choice(files + dirs)
            self.do(("getx", p), self.check_xattrs, p)
        elif x < 0.62:
            self.owned_write(r.choice(files))
        elif x < 0.70:
            p = r.choice(files)
            size = len(md.nodes[md.paths[p]]["data"])
            self.do(("read", p), self.check_read, p, size)
        elif x < 0.73:
            p = r.choice(files)
            size = r.choice([0, r.randrange(FILE_MAX), r.randrange(64) * BS])
            self.do(("truncate", p, size), self.op_truncate, p, size)
        elif x < 0.77:
            p = r.choice(files)
            mode = r.choice(FALLOC_MODES)
            off, n = r.randrange(FILE_MAX // 2), r.randrange(1, 128 << 10)
            self.do(("falloc", p, mode, off, n), self.op_falloc, p, mode, off, n)
        elif x < 0.83:
            self.owned_clone(files)
        elif x < 0.86:
            self.owned_dedupe(files)
        elif x < 0.90:
            self.owned_cfr(files)
        elif x < 0.92:
            p = r.choice(files)
            self.do(("fsync", p), self.op_fsync, p)
        elif x < 0.96:
            self.do(("readdir", None), self.check_readdir, r.choice(dirs))
        else:
            p = r.choice([q for q in md.paths if q] or [""])
            self.do(("stat", p), self.check_stat, p)

    def op_create(self, p, mode):
        os.close(os.open(self.P(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))

    def op_truncate(self, p, size):
        fd = os.open(self.P(p), os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            self.sync_data(fd)
        finally:
            os.close(fd)

    def op_falloc(self, p, mode, off, n):
        fd = os.open(self.P(p), os.O_WRONLY)
        try:
            pmfs.fallocate(fd, mode, off, n)
            self.sync_data(fd)
        finally:
            os.close(fd)

    def op_fsync(self, p):
        fd = os.open(self.P(p), os.O_RDONLY)
        try:
            (os.fsync if self.rng.random() < 0.5 else os.fdatasync)(fd)
        finally:
            os.close(fd)

    def op_pwrite(self, p, off, data, append=False):
        fd = os.open(self.P(p), os.O_WRONLY | (os.O_APPEND if append else 0))
        try:
            if append:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            else:
                pmfs.pwrite_all(fd, data, off)
            self.sync_data(fd)
        finally:
            os.close(fd)

    def owned_write(self, p):
        md, r = self.md, self.rng
        d = md.nodes[md.paths[p]]["data"]
        n = r.choice([1, 7, 100, BS, 3 * BS, r.randrange(1, 64 << 10), r.randrange(1, 200 << 10)])
        n = min(n, FILE_MAX - 1)
        y = r.random()
        dup = self.dup_source(p) if 0.15 <= y < 0.3 else None
        if y < 0.15 and len(d) + n <= FILE_MAX:
            data = r.randbytes(n)
            self.do(("write", p, len(d), data), self.op_pwrite, p, 0, data, True)
        elif y < 0.3 and dup:
            src, soff, doff, k = dup
            data = bytes(md.nodes[md.paths[src]]["data"][soff:soff + k])
            self.dup = (src, p, soff, doff, k)
            self.do(("write", p, doff, data), self.op_pwrite, p, doff, data)
        else:
            off = r.choice([r.randrange(FILE_MAX - n), r.randrange((FILE_MAX - n) // BS) * BS])
            data = r.randbytes(n)
            self.do(("write", p, off, data), self.op_pwrite, p, off, data)

    def dup_source(self, p):
        """Block-aligned bytes of another file to write into p (so dedupe finds equal data)."""
        md, r = self.md, self.rng
        cands = [q for q in md.of_kind("f")
                 if md.paths[q] != md.paths[p] and len(md.nodes[md.paths[q]]["data"]) >= BS]
        if not cands:
            return None
        src = r.choice(cands)
        size = len(md.nodes[md.paths[src]]["data"])
        soff = r.randrange(size // BS) * BS
        k = min(size - soff, r.randrange(1, 16) * BS) // BS * BS
        if not k:
            return None
        doff = r.randrange((FILE_MAX - k) // BS) * BS
        return src, soff, doff, k

    def two_files(self, files):
        md = self.md
        if len(files) < 2:
            return None
        a, b = self.rng.sample(files, 2)
        if md.paths[a] == md.paths[b]:
            return None
        return a, b

    def owned_clone(self, files):
        md, r = self.md, self.rng
        pair = self.two_files(files)
        if not pair:
            return
        src, dst = pair
        ssize = len(md.nodes[md.paths[src]]["data"])
        dsize = len(md.nodes[md.paths[dst]]["data"])
        if ssize == 0:
            return
        soff = r.randrange((ssize + BS - 1) // BS) * BS
        doff = r.randrange(FILE_MAX // BS // 2) * BS
        if r.random() < 0.4:
            n = ssize - soff                       # to the source's EOF
            if n % BS and doff + n < dsize:
                # an unaligned end must end the destination too
                doff = (dsize - n + BS - 1) // BS * BS
        else:
            n = min(r.randrange(1, 32) * BS, (ssize - soff) // BS * BS)
            if not n:
                return
        if doff + n > FILE_MAX:
            return
        self.do(("clone", src, dst, soff, n, doff), self.op_clone, src, dst, soff, n, doff)

    def op_clone(self, src, dst, soff, n, doff):
        s = os.open(self.P(src), os.O_RDONLY)
        try:
            d = os.open(self.P(dst), os.O_RDWR)
            try:
                reflinkio.clone_range(d, s, soff, n, doff)
                self.sync_data(d)
            finally:
                os.close(d)
        finally:
            os.close(s)

    def owned_dedupe(self, files):
        md, r = self.md, self.rng
        if self.dup and all(q in md.paths and md.kind(q) == "f" for q in self.dup[:2]) and \
                md.paths[self.dup[0]] != md.paths[self.dup[1]] and r.random() < 0.7:
            src, dst, soff, doff, n = self.dup
        else:
            pair = self.two_files(files)
            if not pair:
                return
            src, dst = pair
            soff, doff, n = r.randrange(32) * BS, r.randrange(32) * BS, r.randrange(1, 16) * BS
        s = md.nodes[md.paths[src]]["data"]
        d = md.nodes[md.paths[dst]]["data"]
        if soff + n > len(s) or doff + n > len(d):
            return
        same = s[soff:soff + n] == d[doff:doff + n]
        self.do(("dedupe", src, dst, soff, n, doff), self.op_dedupe, src, dst, soff, n, doff,
                same)

    def op_dedupe(self, src, dst, soff, n, doff, same):
        s = os.open(self.P(src), os.O_RDONLY)
        try:
            d = os.open(self.P(dst), os.O_RDWR)
            try:
                status, done = reflinkio.dedupe(s, d, soff, n, doff)
            finally:
                os.close(d)
        finally:
            os.close(s)
        if status < 0 and self.kill_mode and -status in pmfs.DEAD:
            raise Dead()
        eq((status, done), (0, n) if same else (1, 0),
           f"dedupe {src}@{soff} {dst}@{doff} {n} bytes (status, deduped), the ranges "
           f"{'equal' if same else 'differ'}")

    def owned_cfr(self, files):
        md, r = self.md, self.rng
        pair = self.two_files(files)
        if not pair:
            return
        src, dst = pair
        ssize = len(md.nodes[md.paths[src]]["data"])
        soff = r.randrange(ssize + 1)
        if r.random() < 0.5:
            soff = soff // BS * BS
            doff = r.randrange(FILE_MAX // BS // 2) * BS
        else:
            doff = r.randrange(FILE_MAX // 2)
        n = r.randrange(1, 200 << 10)
        if doff + n > FILE_MAX:
            return
        self.do(("cfr", src, dst, soff, n, doff), self.op_cfr, src, dst, soff, n, doff, ssize)

    def op_cfr(self, src, dst, soff, n, doff, ssize):
        s = os.open(self.P(src), os.O_RDONLY)
        try:
            d = os.open(self.P(dst), os.O_WRONLY)
            try:
                done = reflinkio.cfr_all(s, d, n, soff, doff)
                self.sync_data(d)
            finally:
                os.close(d)
        finally:
            os.close(s)
        eq(done, max(0, min(n, ssize - soff)), f"copy_file_range {src}@{soff} -> {dst}@{doff} "
           f"of {n} bytes: bytes copied")

    def owned_rename(self):
        md, r = self.md, self.rng
        names = [q for q in md.paths if q]
        if not names:
            return
        src = r.choice(names)
        flags = r.choice([0, 0, 0, pmfs.RENAME_NOREPLACE, pmfs.RENAME_EXCHANGE])
        if r.random() < 0.5 and len(names) > 1:
            dst = r.choice([q for q in names if q != src])
        else:
            dst = self.new_path()
        exists = dst in md.paths
        sk = md.kind(src)
        deepest = max(q.count("/") - src.count("/") for q in md.subtree(src))
        if md.depth(dst) + deepest > 4:
            return
        if flags & pmfs.RENAME_EXCHANGE and exists:
            ddeep = max(q.count("/") - dst.count("/") for q in md.subtree(dst))
            if md.depth(src) + ddeep > 4:
                return
        # the errors in the order the kernel checks them (do_renameat2, then vfs_rename)
        err = None
        xchg = flags & pmfs.RENAME_EXCHANGE
        if flags & pmfs.RENAME_NOREPLACE and exists:
            err = errno.EEXIST
        elif xchg and not exists:
            err = errno.ENOENT
        elif dst.startswith(src + "/"):
            err = errno.EINVAL                   # the source is an ancestor of the target
        elif exists and src.startswith(dst + "/"):
            err = errno.EINVAL if xchg else errno.ENOTEMPTY
        elif exists and not xchg and md.paths[dst] != md.paths[src]:
            dk = md.kind(dst)
            if sk == "d" and dk == "d":
                err = errno.ENOTEMPTY if md.children(dst) else None
            elif sk == "d":
                err = errno.ENOTDIR
            elif dk == "d":
                err = errno.EISDIR
        if err is not None:
            self.expect(err, pmfs.renameat2, self.P(src), self.P(dst), flags)
        else:
            self.do(("rename", src, dst, flags), pmfs.renameat2, self.P(src), self.P(dst),
                    flags)

    # ---- checks against the model (while the others run)
    def check_read(self, p, size):
        want = self.md.nodes[self.md.paths[p]]["data"]
        fd = os.open(self.P(p), os.O_RDONLY)
        try:
            if self.rng.random() < 0.5:
                got = pmfs.pread_all(fd, size + 1)
                pmfs.same_bytes(got, bytes(want), f"read of {p}")
            else:
                off = self.rng.randrange(size + 1)
                n = self.rng.randrange(1, 70000)
                got = os.pread(fd, n, off)
                pmfs.same_bytes(got, bytes(want[off:off + n]), f"pread of {p} at {off}")
        finally:
            os.close(fd)

    def check_xattrs(self, p):
        want = self.md.nodes[self.md.paths[p]]["x"]
        names = sorted(n for n in os.listxattr(self.P(p)) if n.startswith("user."))
        eq(names, sorted(want), f"xattr names of {p}")
        for n in names:
            eq(os.getxattr(self.P(p), n), want[n], f"xattr {n} of {p}")

    def check_readdir(self, d):
        want = {os.path.basename(q): self.md.kind(q) for q in self.md.children(d)}
        ents = [e for e in pmfs.getdents(self.P(d)) if e[3] not in (b".", b"..")]
        got = {os.fsdecode(e[3]): e[2] for e in ents}
        eq(len(ents), len(got), f"readdir of {d!r}: every name once")
        eq(sorted(got), sorted(want), f"readdir of {d!r}")
        dt = {"f": 8, "d": 4, "l": 10}
        for n, k in want.items():
            eq(got[n], dt[k], f"readdir of {d!r}: d_type of {n}")

    def check_stat(self, p):
        st = os.lstat(self.P(p))
        node_check(self.md, p, st, f"stat of {p!r}")


def node_check(md, p, st, what):
    """stat st of path p against the model: type, size, mode, owner, links, mtime."""
    n = md.nodes[md.paths[p]]
    kinds = {"f": stat.S_ISREG, "d": stat.S_ISDIR, "l": stat.S_ISLNK}
    check(kinds[n["k"]](st.st_mode), f"{what}: type {stat.filemode(st.st_mode)}, expected {n['k']}")
    if n["k"] == "f":
        eq(st.st_size, len(n["data"]), f"{what}: size")
        eq(st.st_nlink, sum(1 for i in md.paths.values() if i == md.paths[p]), f"{what}: nlink")
    elif n["k"] == "d":
        eq(st.st_nlink, 2 + sum(1 for q in md.children(p) if md.kind(q) == "d"),
           f"{what}: nlink")
    else:
        eq(st.st_size, len(n["target"]), f"{what}: size")
    if n["k"] != "l":
        eq(stat.S_IMODE(st.st_mode), n["mode"], f"{what}: mode")
    if p:
        eq((st.st_uid, st.st_gid), (n["uid"], n["gid"]), f"{what}: owner")
    if n["mtime"] is not None and p:
        eq(st.st_mtime_ns, n["mtime"], f"{what}: mtime")


# ---------------------------------------------------------------------------------------------
# shared operations: races on purpose


class SharedOps:
    def shared_op(self):
        r = self.rng
        a = (r.randrange(SHARED_DIRS), f"s{r.randrange(SHARED_NAMES)}")
        b = (r.randrange(SHARED_DIRS), r.choice([f"s{r.randrange(SHARED_NAMES)}",
                                                 f"t{r.randrange(3)}"]))
        pa, pb = self.S(*a), self.S(*b)
        x = r.random()
        self.inflight = ("shared", x, pa, pb)
        try:
            if x < 0.10:
                os.close(os.open(pa, os.O_WRONLY | os.O_CREAT | NOFOLLOW, 0o644))
            elif x < 0.30:
                self.shared_write(pa)
            elif x < 0.42:
                self.shared_read(pa)
            elif x < 0.47:
                fd = os.open(pa, os.O_WRONLY | NOFOLLOW)
                try:
                    os.ftruncate(fd, r.randrange(SHARED_MAX // 8) * 8)
                finally:
                    os.close(fd)
            elif x < 0.51:
                fd = os.open(pa, os.O_WRONLY | NOFOLLOW)
                try:
                    off = r.randrange(SHARED_MAX // 16) * 8
                    pmfs.fallocate(fd, r.choice(FALLOC_MODES[1:]), off, r.randrange(1, 8192) * 8)
                finally:
                    os.close(fd)
            elif x < 0.58:
                self.shared_remap(pa, self.S(r.randrange(SHARED_DIRS),
                                             f"s{r.randrange(SHARED_NAMES)}"))
            elif x < 0.66:
                pmfs.renameat2(pa if r.random() < 0.8 else pb, pb if r.random() < 0.9 else pa,
                               r.choice([0, 0, pmfs.RENAME_NOREPLACE, pmfs.RENAME_EXCHANGE]))
            elif x < 0.70:
                try:
                    os.link(pa, pb)
                except OSError as e:
                    if e.errno != errno.EPERM or not os.path.isdir(pa):
                        raise                   # EPERM: a link to a directory
            elif x < 0.75:
                os.unlink(pa)
            elif x < 0.78:
                if r.random() < 0.5:
                    os.mkdir(self.S(b[0], f"t{r.randrange(3)}"))
                else:
                    os.rmdir(self.S(b[0], f"t{r.randrange(3)}"))
            elif x < 0.80:
                os.symlink(f"target-{self.wid}-{self.seq}", pa)
            elif x < 0.85:
                val = struct.pack("<BBI", TAG_MAGIC, self.wid, self.seq) * r.randrange(1, 50)
                self.seq += 1
                if r.random() < 0.7:
                    os.setxattr(pa, r.choice(XNAMES), val)
                else:
                    os.removexattr(pa, r.choice(XNAMES))
            elif x < 0.88:
                for n in os.listxattr(pa):
                    if n.startswith("user."):
                        v = os.getxattr(pa, n)
                        check(len(v) % 6 == 0 and v[:1] == bytes([TAG_MAGIC]),
                              f"shared xattr {n} of {pa}: {v[:12].hex()}")
            elif x < 0.90:
                fd = os.open(pa, os.O_RDONLY | NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            elif x < 0.95:
                d = os.path.dirname(pa)
                ents = [e[3] for e in pmfs.getdents(d)]
                for e in ents:
                    name = os.fsdecode(e)
                    check(name in (".", "..") or name[0] in "st" and name[1:].isdigit(),
                          f"readdir of {d}: unknown name {e!r}")
            else:
                st = os.lstat(pa)
                check(st.st_size <= SHARED_MAX + (1 << 20), f"{pa}: size {st.st_size}")
        except OSError as e:
            if self.kill_mode and e.errno in pmfs.DEAD:
                raise Dead() from None
            if e.errno not in SHARED_ERRS:
                raise Failure(f"shared operation {x:.3f} on {pa}, {pb}: {e!r}") from None
        self.inflight = None

    def shared_write(self, p):
        r = self.rng
        fd = os.open(p, os.O_WRONLY | NOFOLLOW)
        try:
            off = r.randrange(SHARED_MAX // 8) * 8
            nw = min(r.choice([1, 16, 512, r.randrange(1, 8192)]), (SHARED_MAX - off) // 8)
            if nw <= 0:
                return
            seq = self.seq
            self.seq += 1
            self.writes[(self.wid, seq & 0xFFFFFF)] = (off, off + nw * 8)
            pmfs.pwrite_all(fd, tag_words(self.wid, seq, off, nw), off)
        finally:
            os.close(fd)

    def shared_read(self, p):
        fd = os.open(p, os.O_RDONLY | NOFOLLOW)
        try:
            data = pmfs.pread_all(fd, SHARED_MAX + (1 << 20))
        finally:
            os.close(fd)
        # a size cut by a truncate to a multiple of 8 never cuts a word
        bad = bad_tags(data[:len(data) // 8 * 8])
        if bad:
            raise Failure(f"read of shared {p}: word at {bad[0]} is {bad[1]:#018x}, "
                          "not written there by anyone")

    def shared_remap(self, pa, pb):
        """clone, copy_file_range or dedupe between shared files at equal offsets."""
        r = self.rng
        s = os.open(pa, os.O_RDONLY | NOFOLLOW)
        try:
            d = os.open(pb, os.O_RDWR | NOFOLLOW)
            try:
                off = r.randrange(SHARED_MAX // BS) * BS
                n = r.randrange(1, 16) * BS
                y = r.random()
                if y < 0.4:
                    reflinkio.clone_range(d, s, off, n, off)
                elif y < 0.7:
                    reflinkio.cfr_all(s, d, n, off, off)
                else:
                    status, _ = reflinkio.dedupe(s, d, off, n, off)
                    if status < 0 and self.kill_mode and -status in pmfs.DEAD:
                        raise Dead()
                    if status < 0 and -status not in SHARED_ERRS:
                        raise Failure(f"dedupe {pa} -> {pb}: status {status}")
            finally:
                os.close(d)
        finally:
            os.close(s)


class StressWorker(SharedOps, Worker):
    pass


# ---------------------------------------------------------------------------------------------
# running workers


def run_group(mnt, wids, models, seed, seconds, kill_mode):
    """Runs one worker per wid in threads; returns {wid: (model, inflight, writes, ops,
    counts)}. Raises the first failure."""
    workers = [StressWorker(mnt, w, models[w], seed, seconds, kill_mode) for w in wids]
    errors = []

    def body(w):
        try:
            w.run()
        except BaseException as e:  # noqa: B902 - reported by the group
            errors.append(e)
    threads = [threading.Thread(target=body, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {w.wid: (w.md, w.inflight, w.writes, w.ops, w.counts) for w in workers}


def start_workload(m, models, seconds, kill_mode):
    """PROCS forked processes of THREADS workers each, and THREADS workers in a thread of
    this process. Returns a function that waits for all and returns run_group's results."""
    n = (PROCS + 1) * THREADS
    groups = [list(range(k * THREADS, (k + 1) * THREADS)) for k in range(PROCS + 1)]
    kids = [m.fork(run_group, m.mnt, g, models, pmfs.SEED, seconds, kill_mode)
            for g in groups[:PROCS]]
    box = {}

    def local():
        try:
            box["res"] = run_group(m.mnt, groups[PROCS], models, pmfs.SEED, seconds, kill_mode)
        except BaseException as e:  # noqa: B902
            box["err"] = e
    t = threading.Thread(target=local)
    t.start()

    def wait():
        t.join()
        out, errs = {}, []
        for k in kids:
            try:
                out.update(k.wait(timeout=120 * pmfs.TIME_FACTOR + seconds))
            except (Failure, OSError) as e:
                errs.append(e)
        if "err" in box:
            errs.insert(0, box["err"])
        if errs:
            raise errs[0]
        out.update(box["res"])
        check(len(out) == n, f"results of {len(out)} workers, expected {n}")
        return out
    return wait


def setup_tree(m, nworkers):
    os.mkdir(m.path("own"))
    os.mkdir(m.path("shared"))
    for d in range(SHARED_DIRS):
        os.mkdir(m.path("shared", f"d{d}"))
    models = {}
    for w in range(nworkers):
        os.mkdir(m.path("own", f"w{w}"))
        os.chmod(m.path("own", f"w{w}"), 0o755)
        models[w] = Model(w)
    return models


# ---------------------------------------------------------------------------------------------
# checking a quiet mount


def scan(m):
    """Walks the whole mount with getdents and lstat: readdir matches lookups (each name once,
    d_ino and d_type those of lstat), sizes match what reads return, link counts match the
    names found. Returns {relative path: entry}."""
    out = {}
    names_of = {}
    dt_of = {stat.S_IFREG: 8, stat.S_IFDIR: 4, stat.S_IFLNK: 10}

    def walk(rel):
        full = m.path(rel) if rel else m.mnt
        ents = pmfs.getdents(full)
        seen = [e[3] for e in ents]
        eq(len(seen), len(set(seen)), f"readdir of {rel!r}: every name once")
        subdirs = 0
        for ino, _, dtype, name in ents:
            if name in (b".", b".."):
                continue
            p = os.path.join(rel, os.fsdecode(name)) if rel else os.fsdecode(name)
            st = os.lstat(m.path(p))
            eq(ino, st.st_ino, f"d_ino of {p} (readdir against lookup)")
            eq(dtype, dt_of.get(stat.S_IFMT(st.st_mode), 0), f"d_type of {p}")
            e = {"st": st, "kind": {8: "f", 4: "d", 10: "l"}[dtype]}
            if e["kind"] == "f":
                e["data"] = pmfs.read_file(m.path(p))
                eq(len(e["data"]), st.st_size, f"{p}: bytes read against st_size")
            elif e["kind"] == "l":
                e["target"] = os.readlink(m.path(p))
            if e["kind"] != "l":
                e["x"] = {n: os.getxattr(m.path(p), n) for n in os.listxattr(m.path(p))}
            out[p] = e
            names_of.setdefault(st.st_ino, []).append(p)
            if e["kind"] == "d":
                subdirs += 1
                walk(p)
        st = os.lstat(full)
        eq(st.st_nlink, 2 + subdirs, f"nlink of directory {rel!r}")
    walk("")
    for ino, ps in names_of.items():
        e = out[ps[0]]
        if e["kind"] != "d":
            eq(e["st"].st_nlink, len(ps), f"nlink of {ps} (the names found)")
    return out


def check_shared(sc, writes):
    for p, e in sc.items():
        if not p.startswith("shared/"):
            continue
        if e["kind"] == "f":
            eq(len(e["data"]) % 8, 0, f"{p}: size of a shared file (every change is of words)")
            bad = bad_tags(e["data"], writes)
            if bad:
                raise Failure(f"{p}: word at {bad[0]} is {bad[1]:#018x}: no shared write "
                              "covering that offset wrote it")
        elif e["kind"] == "l":
            check(e["target"].startswith("target-"), f"{p}: symlink target {e['target']!r}")


def model_diff(md, sc, base):
    """Differences between the owned tree under base in the scan and the model: a list of
    (ident or None, message)."""
    out = []
    got = {p[len(base) + 1:]: e for p, e in sc.items() if p.startswith(base + "/")}
    want = {p for p in md.paths if p}
    if set(got) != want:
        out.append((None, f"paths differ: extra {sorted(set(got) - want)[:5]}, missing "
                          f"{sorted(want - set(got))[:5]}"))
        return out
    ino_of = {}
    for p in want:
        ident = md.paths[p]
        n = md.nodes[ident]
        e = got[p]
        if ino_of.setdefault(ident, e["st"].st_ino) != e["st"].st_ino:
            out.append((None, f"{p}: names of one inode in the model are different inodes"))
        if e["kind"] != n["k"]:
            out.append((None, f"{p}: kind {e['kind']}, expected {n['k']}"))
            continue
        try:
            node_check(md, p, e["st"], p)
        except Failure as f:
            out.append((ident, str(f)))
        if n["k"] == "f" and e["data"] != n["data"]:
            out.append((ident, f"{p}: contents differ (size {len(e['data'])}, model "
                               f"{len(n['data'])})"))
        if n["k"] == "l" and e["target"] != n["target"]:
            out.append((None, f"{p}: symlink target differs"))
        if n["k"] != "l":
            x = {k: v for k, v in e["x"].items() if k.startswith("user.")}
            if x != n["x"]:
                out.append((None, f"{p}: xattrs {sorted(x)}, expected {sorted(n['x'])}"))
    if len(set(ino_of.values())) != len(ino_of):
        out.append((None, "distinct inodes of the model share an inode number"))
    return out


DATA_OPS = ("write", "truncate", "falloc", "clone", "cfr", "dedupe")


def check_owned(md, sc, base, inflight, what):
    """The owned tree against the model, or (after a crash) against the model with the
    worker's operation in flight done; a data change in flight may be torn (old or new
    bytes). Returns the model that matched, with each file's bytes as found, and which of
    "before", "after", "torn" it was."""
    diff = model_diff(md, sc, base)
    if not diff:
        return md, "before"
    why = "; ".join(m for _, m in diff[:4])
    if inflight is None or inflight[0] == "shared":
        raise Failure(f"{what}: {base} differs from its model: {why}")
    after = copy.deepcopy(md)
    apply(after, inflight)
    diff2 = model_diff(after, sc, base)
    if not diff2:
        return after, "after"
    if inflight[0] in DATA_OPS:
        target = inflight[2] if inflight[0] in ("clone", "cfr", "dedupe") else inflight[1]
        ident = md.paths[target]
        if all(i == ident for i, _ in diff):
            got = sc[f"{base}/{target}"]["data"]
            pmfs.old_or_new(got, md.nodes[ident]["data"], after.nodes[ident]["data"],
                            f"{what}: {base}/{target} ({inflight[0]} in flight)")
            after.nodes[ident]["data"] = bytearray(got)
            after.nodes[ident]["mtime"] = None
            return after, "torn"
    raise Failure(f"{what}: {base} is neither its model ({why}) nor the model with the "
                  f"operation in flight {inflight[:2]} done ("
                  f"{'; '.join(m for _, m in diff2[:4])})")


def check_sharing(m, sc):
    """reflinkio's refcount invariant over every file (each inode once); unlinked inodes keep
    their blocks until the kernel's FORGET reaches the daemon, so it is retried a while."""
    seen, paths = set(), []
    for p, e in sorted(sc.items()):
        if e["kind"] == "f" and e["st"].st_ino not in seen:
            seen.add(e["st"].st_ino)
            paths.append(m.path(p))
    end = time.time() + 10 * pmfs.TIME_FACTOR
    while True:
        try:
            return reflinkio.check_sharing(paths, "sharing after the stress")
        except Failure:
            if time.time() > end:
                raise
            time.sleep(0.2)


def fingerprint(sc):
    """What must survive a clean unmount and mount exactly. With the writeback cache a file's
    mtime is left out: the kernel never takes a cached regular file's mtime from the daemon
    (fuse_get_cache_mask), so an operation the daemon times and the kernel does not (a clone
    or dedupe ioctl, say) leaves stat behind the pool until the inode leaves the kernel's
    cache (seen here: a few ms). Written-back pages themselves leave the pool's times alone."""
    out = {}
    for p, e in sc.items():
        st = e["st"]
        mtime = None if pmfs.WRITEBACK_CACHE and e["kind"] == "f" else st.st_mtime_ns
        out[p] = (e["kind"], st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid,
                  st.st_size, mtime, e.get("data"), e.get("target"),
                  sorted(e.get("x", {}).items()))
    return out


def summary(res):
    ops = sum(r[3] for r in res.values())
    counts = {}
    for r in res.values():
        for k, v in r[4].items():
            counts[k] = counts.get(k, 0) + v
    return ops, counts


# ---------------------------------------------------------------------------------------------
# tests

SECONDS = float(os.environ.get("PMFUSE_STRESS_SECONDS") or max(3.0, 15 * pmfs.SCALE))


@test(size="512M", timeout=300)
def stress_threads_and_processes(m):
    nworkers = (PROCS + 1) * THREADS
    models = setup_tree(m, nworkers)
    res = start_workload(m, models, SECONDS, False)()
    ops, counts = summary(res)
    print(f"     {nworkers} workers, {SECONDS:.0f}s: {ops} operations; owned ops that "
          f"returned: {sorted(counts.items())}")
    for k in ("create", "rename", "write", "clone", "dedupe", "cfr", "read"):
        check(counts.get(k, 0) > 0, f"no {k} returned in the run: the mix is broken")
    writes = {}
    for r in res.values():
        writes.update(r[2])
    sc = scan(m)
    check_shared(sc, writes)
    for w, r in res.items():
        check_owned(r[0], sc, f"own/w{w}", None, "after the run")
    check_sharing(m, sc)
    before = fingerprint(sc)
    m.unmount()
    m.raise_problems()
    m.fsck()
    m.mount()
    sc2 = scan(m)
    after = fingerprint(sc2)
    if after != before:
        diff = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        fields = ("kind", "ino", "nlink", "mode", "uid", "gid", "size", "mtime", "data",
                  "target", "xattrs")
        what = [f"{p}: " + ", ".join(f"{f} {pmfs.fmt(x)} -> {pmfs.fmt(y)}" for f, x, y in
                                     zip(fields, before.get(p, ()), after.get(p, ())) if x != y)
                for p in diff[:5]]
        raise Failure("the tree changed across a clean unmount and mount:\n" + "\n".join(what))
    for w, r in res.items():
        check_owned(r[0], sc2, f"own/w{w}", None, "after the remount")


@test(size="512M", timeout=400)
def stress_kill9(m):
    nworkers = (PROCS + 1) * THREADS
    models = setup_tree(m, nworkers)
    writes = {}
    for cycle in range(3):
        seconds = max(2.0, 8 * pmfs.SCALE) * pmfs.TIME_FACTOR
        wait = start_workload(m, models, seconds, True)
        time.sleep(m.rng.uniform(0.5, seconds * 0.7))
        m.kill_daemon()
        res = wait()
        m.detach()
        eq(pmfs.clean_state(m), "no", f"cycle {cycle}: 'clean' after kill -9")
        m.mount()
        for r in res.values():
            writes.update(r[2])
        sc = scan(m)
        check_shared(sc, writes)
        found = {}
        for w, r in res.items():
            md, how = check_owned(r[0], sc, f"own/w{w}", r[1], f"cycle {cycle}")
            if r[1] is not None and r[1][0] != "shared":
                found[how] = found.get(how, 0) + 1
            md.serial += 1000             # fresh identities and names in the next cycle
            models[w] = md
        ops, _ = summary(res)
        print(f"     cycle {cycle}: {ops} operations; owned operations in flight at the kill "
              f"found not done / done / torn: {found.get('before', 0)} / "
              f"{found.get('after', 0)} / {found.get('torn', 0)}")
        check_sharing(m, sc)
        m.unmount()
        m.raise_problems()
        m.fsck()
        m.mount()
    sc = scan(m)
    for w in models:
        check_owned(models[w], sc, f"own/w{w}", None, "at the end")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
