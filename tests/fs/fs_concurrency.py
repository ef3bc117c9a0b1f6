#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Concurrency through the kernel (the daemon runs a multi-threaded FUSE loop): readdir stays
exact for entries that exist throughout while other processes create and unlink around them;
writers on separate files; creators in one directory; renames racing with lookups.

Lock order (doc/design.md, "Locking"): operations on two to four inodes run at once in opposite
directions (renames and exchanges between two directories, clones and copies A -> B and B -> A),
so that taking inode locks in any order but one fixed order would deadlock; a deadlock shows as
the test's timeout. The daemon's lookup cache stays exact: names are checked against a model
after renames, replaces, exchanges, links and unlinks while other processes keep the cache warm
and the kernel's dentries are dropped, so that every lookup reaches the daemon."""

import os
import random
import time

import pmfs
from pmfs import (check, eq, test, getdents_fd, pwrite_all, pread_all, same_bytes, Failure,
                  renameat2, RENAME_EXCHANGE)
import reflinkio


def churn(d, prefix, seconds, seed):
    """Creates and unlinks names in d until time runs out; returns how many operations."""
    rng = random.Random(seed)
    live = []
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        if live and (len(live) > 300 or rng.random() < 0.45):
            os.unlink(os.path.join(d, live.pop(rng.randrange(len(live)))))
        else:
            name = f"{prefix}{n}-" + "c" * rng.randrange(0, 80)
            os.close(os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT, 0o644))
            live.append(name)
        n += 1
    return n


@test(timeout=180)
def readdir_stable_under_churn(m):
    d = m.path("d")
    os.mkdir(d)
    stable = [f"stable-{i:05d}-" + "s" * (i % 40) for i in range(pmfs.scaled(2000, 300))]
    for s in stable:
        os.close(os.open(os.path.join(d, s), os.O_WRONLY | os.O_CREAT, 0o644))
    want = {os.fsencode(s) for s in stable}
    seconds = 8 * max(pmfs.SCALE, 0.5)
    kids = [m.fork(churn, d, f"c{k}-", seconds, pmfs.SEED + k) for k in range(2)]
    listings = 0
    t_end = time.time() + seconds
    while time.time() < t_end or listings < 3:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        seen = []
        while True:
            chunk = getdents_fd(fd, 1024)   # small buffers: many READDIR requests per listing
            if not chunk:
                break
            seen.extend(e[3] for e in chunk)
        os.close(fd)
        names = [s for s in seen if s not in (b".", b"..")]
        dup = {s for s in names if names.count(s) > 1} if len(names) != len(set(names)) else set()
        check(not dup, f"listing {listings}: names returned twice: {sorted(dup)[:5]}")
        missing = want - set(names)
        check(not missing, f"listing {listings}: {len(missing)} entries present throughout were "
              f"not returned, e.g. {sorted(missing)[:3]}")
        listings += 1
    ops = sum(k.wait() for k in kids)
    print(f"     {listings} listings of {len(stable)} stable entries during {ops} creates/unlinks")
    check(ops > 100, f"the churn did only {ops} operations")


def writer(path, seed, size, nwrites):
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    model = bytearray(size)
    os.ftruncate(fd, size)
    for _ in range(nwrites):
        off = rng.randrange(0, size)
        n = min(size - off, rng.choice([1, 100, 4096, rng.randrange(1, 200000)]))
        buf = rng.randbytes(n)
        pwrite_all(fd, buf, off)
        model[off:off + n] = buf
    got = pread_all(fd, size + 1)
    os.close(fd)
    if got != model:
        raise Failure(f"{path}: contents differ from the writer's model")
    return bytes(model)


@test(size="256M", timeout=180)
def writers_on_separate_files(m):
    size = 8 << 20
    n = pmfs.scaled(600, 60)
    kids = [m.fork(writer, m.path(f"w{k}"), pmfs.SEED * 10 + k, size, n) for k in range(4)]
    models = [k.wait() for k in kids]
    for k, model in enumerate(models):
        with open(m.path(f"w{k}"), "rb") as f:
            same_bytes(f.read(), model, f"w{k} read by the parent")
    m.remount()
    for k, model in enumerate(models):
        with open(m.path(f"w{k}"), "rb") as f:
            same_bytes(f.read(), model, f"w{k} after remount")


def creator(d, prefix, n):
    for i in range(n):
        fd = os.open(os.path.join(d, f"{prefix}{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o644)
        os.write(fd, f"{prefix}{i}".encode())
        os.close(fd)
        if i % 10 == 9:
            os.mkdir(os.path.join(d, f"{prefix}dir{i}"))
    return n


@test(timeout=180)
def creators_in_one_directory(m):
    d = m.path("d")
    os.mkdir(d)
    n = pmfs.scaled(1500, 150)
    kids = [m.fork(creator, d, f"p{k}-", n) for k in range(4)]
    for k in kids:
        k.wait()
    names = os.listdir(d)
    eq(len(names), 4 * (n + n // 10), "entries made by four creators")
    for k in range(4):
        for i in range(0, n, 37):
            with open(os.path.join(d, f"p{k}-{i}"), "rb") as f:
                eq(f.read(), f"p{k}-{i}".encode(), f"contents of p{k}-{i}")
    eq(os.stat(d).st_nlink, 2 + 4 * (n // 10), "nlink with the subdirectories")
    m.remount()
    eq(len(os.listdir(d)), 4 * (n + n // 10), "entries after remount")


def renamer(d, seconds):
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        os.rename(os.path.join(d, "a"), os.path.join(d, "b"))
        os.rename(os.path.join(d, "b"), os.path.join(d, "a"))
        n += 2
    return n


def looker(d, seconds):
    """Opens a or b while they are renamed back and forth: one of them always exists, so the
    content is always right, and ENOENT is allowed only for the name that moved away."""
    n = bad = 0
    end = time.time() + seconds
    while time.time() < end:
        for name in ("a", "b"):
            try:
                with open(os.path.join(d, name), "rb") as f:
                    if f.read() != b"payload":
                        bad += 1
            except FileNotFoundError:
                pass
            n += 1
    return n, bad


@test(timeout=120)
def renames_racing_lookups(m):
    d = m.path("d")
    os.mkdir(d)
    pmfs.write_file(os.path.join(d, "a"), b"payload")
    secs = 4 * max(pmfs.SCALE, 0.5)
    kids = [m.fork(renamer, d, secs), m.fork(looker, d, secs), m.fork(looker, d, secs)]
    renames = kids[0].wait()
    looks = [k.wait() for k in kids[1:]]
    eq(sum(b for _, b in looks), 0, "opens that read wrong contents")
    eq(sorted(os.listdir(d)), ["a"], "after an even number of renames")
    print(f"     {renames} renames, {sum(n for n, _ in looks)} opens")


def cross_mover(a, b, names, seconds, exchange):
    """Moves names from directory a to b and back (a replace when the target exists), or
    exchanges a/name with b/name; returns how many operations."""
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        for name in names:
            if exchange:
                renameat2(os.path.join(a, name), os.path.join(b, name), RENAME_EXCHANGE)
                n += 1
                continue
            os.rename(os.path.join(a, name), os.path.join(b, name))
            os.rename(os.path.join(b, name), os.path.join(a, name))
            n += 2
    return n


@test(timeout=150)
def renames_between_directories_both_ways(m):
    """Four processes rename between directories A and B at once, two from A to B and two from
    B to A, files and subdirectories, moves, replaces and exchanges: each rename locks two
    directories and up to two more inodes, in both orders of A and B."""
    a, b = m.path("A"), m.path("B")
    os.mkdir(a)
    os.mkdir(b)
    for name in ("f1", "f2"):
        pmfs.write_file(os.path.join(a, name), name.encode())
    for name in ("g1", "g2"):
        pmfs.write_file(os.path.join(b, name), name.encode())
    os.mkdir(os.path.join(a, "da"))
    os.mkdir(os.path.join(b, "db"))
    for d, name in ((a, "x"), (b, "x")):         # exchanged between A and B
        pmfs.write_file(os.path.join(d, name), d.encode())
    # targets that the moves below replace (their inodes go, so the last name is on B/A)
    pmfs.write_file(os.path.join(b, "f1"), b"victim")
    pmfs.write_file(os.path.join(a, "g1"), b"victim")
    secs = 5 * max(pmfs.SCALE, 0.5)
    kids = [m.fork(cross_mover, a, b, ["f1", "f2", "da"], secs, False),
            m.fork(cross_mover, b, a, ["g1", "g2", "db"], secs, False),
            m.fork(cross_mover, a, b, ["x"], secs, True),
            m.fork(cross_mover, b, a, ["x"], secs, True)]
    ops = [k.wait() for k in kids]
    check(min(ops) > 0, f"some mover did nothing: {ops}")
    eq(sorted(os.listdir(a)), ["da", "f1", "f2", "x"], "A after the moves")
    eq(sorted(os.listdir(b)), ["db", "g1", "g2", "x"], "B after the moves")
    for d, name in ((a, "f1"), (a, "f2"), (b, "g1"), (b, "g2")):
        eq(pmfs.read_file(os.path.join(d, name)), name.encode(), f"{d}/{name}")
    xs = {pmfs.read_file(os.path.join(a, "x")), pmfs.read_file(os.path.join(b, "x"))}
    eq(xs, {a.encode(), b.encode()}, "the exchanged files")
    eq(os.stat(a).st_nlink, 3, "A's links (one subdirectory)")
    eq(os.stat(b).st_nlink, 3, "B's links (one subdirectory)")
    print(f"     {sum(ops)} renames and exchanges")


def cloner(src, dst, seconds, size, copy):
    """Clones (or copy_file_range's) all of src over dst until time runs out."""
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        s = os.open(src, os.O_RDONLY)
        d = os.open(dst, os.O_WRONLY)
        try:
            if copy:
                reflinkio.cfr_all(s, d, size, 0, 0)
            else:
                reflinkio.clone_range(d, s, 0, size, 0)
        finally:
            os.close(s)
            os.close(d)
        n += 1
    return n


@test(size="128M", timeout=150)
def clones_both_ways(m):
    """A -> B and B -> A at once, as clones (ioctl) and as copy_file_range: each locks both
    files, in opposite orders of arrival. Every call is whole: each file ends as one of the two
    original contents."""
    size = 1 << 20
    pa, pb = m.path("a"), m.path("b")
    ca = random.Random(pmfs.SEED).randbytes(size)
    cb = random.Random(pmfs.SEED + 1).randbytes(size)
    pmfs.write_file(pa, ca)
    pmfs.write_file(pb, cb)
    secs = 5 * max(pmfs.SCALE, 0.5)
    kids = [m.fork(cloner, pa, pb, secs, size, False), m.fork(cloner, pb, pa, secs, size, False),
            m.fork(cloner, pa, pb, secs, size, True), m.fork(cloner, pb, pa, secs, size, True)]
    ops = [k.wait() for k in kids]
    check(min(ops) > 0, f"some cloner did nothing: {ops}")
    pmfs.drop_caches()     # what the pool holds, not pages cached before a clone
    for p in (pa, pb):
        got = pmfs.read_file(p)
        check(got in (ca, cb), f"{p}: neither original contents after the clones")
    print(f"     {sum(ops)} clones and copies")


def stat_loop(d, names, seconds):
    """stat()s names in d until time runs out (fills the daemon's cache); returns how many."""
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        for name in names:
            try:
                os.stat(os.path.join(d, name))
            except FileNotFoundError:
                pass
            n += 1
    return n


def drop_dentries():
    """Drops the kernel's dentries and inodes, so that the next lookups reach the daemon."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


@test(timeout=180)
def lookup_cache_exact(m):
    """Seeded random renames, replaces, exchanges, links and unlinks over 12 names in two
    directories, each checked against a model by stat()ing every name, half of the times after
    dropping the kernel's dentries (so the daemon answers from its cache or its trees) while two
    other processes stat the same names to keep its cache full."""
    rng = random.Random(pmfs.SEED)
    dirs = [m.path("p"), m.path("q")]
    for d in dirs:
        os.mkdir(d)
    names = [f"n{i}" for i in range(6)]
    paths = [os.path.join(d, n) for d in dirs for n in names]
    model = {}
    for p in paths[::2]:
        pmfs.write_file(p, b"")
        model[p] = os.stat(p).st_ino
    steps = pmfs.scaled(400, 100)
    secs = 3600   # the warmers run until killed below
    warmers = [m.fork(stat_loop, d, names, secs) for d in dirs]
    try:
        for step in range(steps):
            src, dst = rng.sample(paths, 2)
            op = rng.randrange(5)
            if op == 0 and src in model:                       # rename or replace
                os.rename(src, dst)
                if model.get(dst) != model[src]:   # two links of one inode: nothing happens
                    model[dst] = model.pop(src)
            elif op == 1 and src in model and dst in model:    # exchange
                renameat2(src, dst, RENAME_EXCHANGE)
                model[src], model[dst] = model[dst], model[src]
            elif op == 2 and src in model and dst not in model:
                os.link(src, dst)
                model[dst] = model[src]
            elif op == 3 and src in model:
                os.unlink(src)
                del model[src]
            elif src not in model:
                pmfs.write_file(src, b"")
                model[src] = os.stat(src).st_ino
            if step % 2:
                drop_dentries()
            for p in paths:
                try:
                    got = os.stat(p).st_ino
                except FileNotFoundError:
                    got = None
                eq(got, model.get(p), f"step {step}: inode of {p}")
    finally:
        for w in warmers:
            w.cleanup()
    print(f"     {steps} steps checked")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
