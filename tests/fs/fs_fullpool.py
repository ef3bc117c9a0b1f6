#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""A full pool, reached every way a user can: random writes of new files, appends, overwrites of
shared blocks (copy-on-write), clones (copy_file_range), xattrs of every size, directories and
symlinks, against a model, until and well past ENOSPC. Every operation either succeeds or fails
with ENOSPC (nothing else); what was written before stays readable; the pool is clean for
fsck after a remount; deleting makes room again, and then the same operations succeed."""

import errno
import os
import random

import pmfs
from pmfs import check, eq, test, Failure, pread_all, pwrite_all

BS = 4096


class Campaign:
    def __init__(self, m):
        self.m = m
        self.rng = m.rng
        self.files = {}            # name -> bytearray
        self.xattrs = {}           # (name, key) -> bytes
        self.dirs = []
        self.links = {}            # symlink name -> target
        self.n = 0
        self.enospc = 0
        self.ops = {}

    def new_name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def data(self, n):
        # runs of repeated bytes, so that equal blocks are common, plus random bytes
        if self.rng.random() < 0.5:
            return self.rng.randbytes(n)
        return bytes([self.rng.randrange(256)]) * n

    def note(self, op, ok):
        k = (op, "ok" if ok else "ENOSPC")
        self.ops[k] = self.ops.get(k, 0) + 1
        if not ok:
            self.enospc += 1

    def attempt(self, op, fn):
        try:
            fn()
            self.note(op, True)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise Failure(f"{op}: {e} (only ENOSPC is acceptable on a full pool)") from None
            self.note(op, False)

    # -- operations --------------------------------------------------------------------------
    def op_new_file(self):
        name = self.new_name("f")
        data = self.data(self.rng.choice((1, 100, BS, 3 * BS + 7, 64 << 10, 1 << 20)))
        fd = os.open(self.m.path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self.files[name] = bytearray()
        try:
            done = 0
            while done < len(data):
                k = os.pwrite(fd, data[done:done + (256 << 10)], done)
                self.files[name][done:done + k] = data[done:done + k]
                done += k
        finally:
            os.close(fd)

    def some_file(self):
        return self.rng.choice(sorted(self.files)) if self.files else None

    def op_overwrite(self):
        name = self.some_file()
        if not name or not self.files[name]:
            return
        old = self.files[name]
        off = self.rng.randrange(len(old))
        new = self.data(self.rng.choice((1, 300, BS, 5 * BS)))
        fd = os.open(self.m.path(name), os.O_RDWR)
        try:
            k = os.pwrite(fd, new, off)
        except OSError as e:
            # nothing acknowledged: every byte of the range is old or new (whole blocks of
            # a copy-on-write replace at once), the rest of the file is unchanged
            got = pread_all(fd, max(len(old), off + len(new)), 0)
            os.close(fd)
            self.check_old_or_new(name, old, got, off, new)
            raise e
        os.close(fd)
        self.files[name][off:off + k] = new[:k]

    def check_old_or_new(self, name, old, got, off, new):
        end = off + len(new)
        eq(bytes(got[:off]), bytes(old[:off]), f"{name} before a failed overwrite's range")
        eq(bytes(got[end:]), bytes(old[end:]), f"{name} after a failed overwrite's range")
        for i in range(off, min(end, len(got))):
            o = old[i] if i < len(old) else 0
            if got[i] not in (o, new[i - off]):
                raise Failure(f"{name} byte {i} after a failed overwrite: {got[i]}, neither "
                              f"old {o} nor new {new[i - off]}")
        # a failed write beyond EOF must not have grown the file with what it could not store
        self.files[name] = bytearray(got)

    def op_append(self):
        name = self.some_file()
        if not name:
            return
        data = self.data(self.rng.choice((10, BS, 40 << 10)))
        fd = os.open(self.m.path(name), os.O_WRONLY | os.O_APPEND)
        try:
            k = os.write(fd, data)
        finally:
            os.close(fd)
        self.files[name] += data[:k]

    def op_clone(self):
        src = self.some_file()
        if not src:
            return
        name = self.new_name("c")
        n = len(self.files[src])
        sfd = os.open(self.m.path(src), os.O_RDONLY)
        dfd = os.open(self.m.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.files[name] = bytearray()
        try:
            done = 0
            while done < n:
                k = os.copy_file_range(sfd, dfd, n - done, done, done)
                check(k > 0, f"copy_file_range returned {k} inside the source ({done}/{n})")
                self.files[name][done:done + k] = self.files[src][done:done + k]
                done += k
        except OSError:
            # a clone stopped by ENOSPC may have shared part of the range (as XFS): every
            # block of the copy is the source's or a hole, and nothing lies past the source
            with open(self.m.path(name), "rb") as f:
                got = f.read()
            check(len(got) <= n, f"{name}: a failed clone made {len(got)} bytes of {n}")
            s = self.files[src]
            for o in range(0, len(got), BS):
                blk = got[o:o + BS]
                if blk != bytes(s[o:o + len(blk)]) and blk.count(0) != len(blk):
                    raise Failure(f"{name}: block at {o} after a failed clone is neither the "
                                  "source's nor zeros") from None
            self.files[name] = bytearray(got)
            raise
        finally:
            os.close(sfd)
            os.close(dfd)

    def op_xattr(self):
        name = self.some_file()
        if not name:
            return
        key = f"user.k{self.rng.randrange(6)}"
        val = self.data(self.rng.choice((1, 100, 224, 225, 3000, 8192)))
        os.setxattr(self.m.path(name), key, val)
        self.xattrs[(name, key)] = val

    def op_mkdir(self):
        name = self.new_name("d")
        os.mkdir(self.m.path(name))
        self.dirs.append(name)

    def op_symlink(self):
        name = self.new_name("l")
        target = "t" * self.rng.choice((1, 60, 1000))
        os.symlink(target, self.m.path(name))
        self.links[name] = target

    def op_unlink(self):
        name = self.some_file()
        if name:
            os.unlink(self.m.path(name))
            del self.files[name]
            for k in [k for k in self.xattrs if k[0] == name]:
                del self.xattrs[k]

    def step(self, delete=False):
        ops = [("new file", self.op_new_file, 5), ("overwrite", self.op_overwrite, 4),
               ("append", self.op_append, 3), ("clone", self.op_clone, 3),
               ("xattr", self.op_xattr, 3), ("mkdir", self.op_mkdir, 1),
               ("symlink", self.op_symlink, 1)]
        if delete:
            ops.append(("unlink", self.op_unlink, 6))
        name, fn, _ = self.rng.choices(ops, weights=[w for _, _, w in ops])[0]
        self.attempt(name, fn)

    # -- verification ------------------------------------------------------------------------
    def verify(self, when):
        for name, data in self.files.items():
            with open(self.m.path(name), "rb") as f:
                got = f.read()
            if got != bytes(data):
                raise Failure(f"{when}: {name} differs from the model ({len(got)} bytes, "
                              f"expected {len(data)})")
        for (name, key), val in self.xattrs.items():
            eq(os.getxattr(self.m.path(name), key), val, f"{when}: xattr {key} of {name}")
        for name, target in self.links.items():
            eq(os.readlink(self.m.path(name)), target, f"{when}: symlink {name}")
        for d in self.dirs:
            check(os.path.isdir(self.m.path(d)), f"{when}: directory {d} missing")
        names = set(self.files) | set(self.links) | set(self.dirs)
        eq(sorted(os.listdir(self.m.mnt)), sorted(names), f"{when}: names in the root")


@test(size="32M", timeout=600)
def fill_until_full_and_beyond(m):
    c = Campaign(m)
    limit = pmfs.scaled(4000, 600)
    steps = 0
    while c.enospc < pmfs.scaled(60, 20) and steps < limit:
        c.step()
        steps += 1
    check(c.enospc > 0, f"a 32 MiB pool never filled in {steps} operations")
    print(f"     {steps} operations, {c.enospc} ENOSPC; per operation: "
          + ", ".join(f"{k[0]} {k[1]} {v}" for k, v in sorted(c.ops.items())))
    c.verify("full pool")
    m.unmount()
    m.raise_problems()
    m.fsck()
    m.mount()
    c.verify("full pool after a remount")
    # deleting makes room again: each kind of operation then succeeds
    free_full = m.statfs().f_bfree
    for name in sorted(c.files)[: (len(c.files) + 1) // 2]:
        c.op_unlink()
    pmfs.wait_until(lambda: m.statfs().f_bfree > free_full + 256, 10,
                    "space returned after deleting half of the files")
    c.enospc = 0
    for fn in (c.op_new_file, c.op_clone, c.op_overwrite, c.op_append, c.op_xattr,
               c.op_mkdir, c.op_symlink):
        fn()
    # and a second round of filling and freeing
    steps = 0
    while c.enospc < pmfs.scaled(20, 10) and steps < limit:
        c.step(delete=c.rng.random() < 0.2)
        steps += 1
    c.verify("after filling again")
    m.unmount()
    m.raise_problems()
    m.fsck()


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
