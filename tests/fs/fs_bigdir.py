#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""A large directory: 100,000 entries (times PMFUSE_TEST_SCALE) created, looked up and stat'ed
after a remount (cold caches, so every lookup reaches the daemon), listed with every name
exactly once, renamed in part, and removed. Prints the time of each phase."""

import errno
import os
import stat
import time

import pmfs
from pmfs import check, eq, expect_errno, test, getdents


def name_of(i):
    # varied lengths and shapes, so hashes and record sizes vary
    return f"{i:06d}-" + "abcdefghij"[i % 10] * (i % 37) + ("." + str(i % 7) if i % 3 else "")


class Phases:
    def __init__(self, n):
        self.n, self.t, self.out = n, time.time(), []

    def done(self, what, count=None):
        now = time.time()
        dt = now - self.t
        self.t = now
        c = self.n if count is None else count
        self.out.append(f"{what} {dt:.1f}s ({c / max(dt, 1e-6):.0f}/s)")
        print(f"     {what}: {c} in {dt:.2f}s ({c / max(dt, 1e-6):.0f}/s)")


@test(size="1G", timeout=600)
def hundred_thousand_entries(m):
    n = pmfs.scaled(100000, 2000)
    d = m.path("big")
    os.mkdir(d)
    ph = Phases(n)
    for i in range(n):
        os.mknod(os.path.join(d, name_of(i)), stat.S_IFREG | 0o644)
    ph.done("mknod")
    eq(os.stat(d).st_nlink, 2, "nlink of a directory of files")
    m.remount()
    ph.done("remount", 1)
    inos = set()
    for i in range(n):
        st = os.lstat(os.path.join(d, name_of(i)))
        inos.add(st.st_ino)
    ph.done("lookup+stat (cold)")
    eq(len(inos), n, "distinct inode numbers")
    for probe in ("missing", name_of(n), name_of(0) + "x"):
        expect_errno(errno.ENOENT, os.lstat, os.path.join(d, probe))
    ents = getdents(d)
    ph.done("readdir")
    names = [e[3] for e in ents if e[3] not in (b".", b"..")]
    eq(len(ents), n + 2, "entries returned by readdir (with . and ..)")
    eq(len(set(names)), n, "distinct names returned by readdir")
    want = {os.fsencode(name_of(i)) for i in range(n)}
    missing = want - set(names)
    check(not missing, f"readdir missed {len(missing)} names, e.g. {sorted(missing)[:3]}")
    by_name = {e[3]: e[0] for e in ents}
    for i in range(0, n, max(1, n // 1000)):
        eq(by_name[os.fsencode(name_of(i))], os.lstat(os.path.join(d, name_of(i))).st_ino,
           f"d_ino of {name_of(i)}")
    # rename a tenth inside the directory, the listing follows
    k = n // 10
    for i in range(k):
        os.rename(os.path.join(d, name_of(i)), os.path.join(d, "r" + name_of(i)))
    ph.done("rename", k)
    listed = set(os.listdir(d))
    eq(len(listed), n, "entries after renames")
    check("r" + name_of(0) in listed and name_of(0) not in listed, "renamed names listed")
    for i in range(n):
        os.unlink(os.path.join(d, ("r" if i < k else "") + name_of(i)))
    ph.done("unlink")
    eq(os.listdir(d), [], "empty after removing everything")
    os.rmdir(d)
    s = m.statfs()
    print(f"     summary: {', '.join(ph.out)}; {s.f_files - s.f_ffree} inodes in use at the end")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
