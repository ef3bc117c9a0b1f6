#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Concurrency through the kernel (the daemon runs a multi-threaded FUSE loop): readdir stays
exact for entries that exist throughout while other processes create and unlink around them;
writers on separate files; creators in one directory; renames racing with lookups."""

import os
import random
import time

import pmfs
from pmfs import check, eq, test, getdents_fd, pwrite_all, pread_all, same_bytes, Failure


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


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
