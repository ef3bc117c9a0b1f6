#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Durability: every operation that returned is on the pool (DESIGN rule 3). A child runs a
workload through the mount and logs each operation to a file outside the mount before it
starts it and after it returned; the daemon is killed with SIGKILL in the middle; the pool is
mounted again (recovery) and must hold every logged operation, the one in flight either done or
not (for data: each byte old or new; for namespace operations: the whole tree before or after,
since each is one transaction). pmfusectl info must say the pool was not cleanly unmounted;
after a clean unmount it must say it was."""

import os
import random
import time

import pmfs
from pmfs import check, eq, test, Failure, pwrite_all

BS = 4096
DEAD = pmfs.DEAD


def logline(fd, *words):
    os.write(fd, (" ".join(str(w) for w in words) + "\n").encode())


def wdata(seed, i, n):
    return random.Random(f"{seed}-{i}").randbytes(n)


# ---------------------------------------------------------------------------------------------
# data workload


def data_workload(mnt, logpath, seed, first, nfiles_max):
    """Writes, extends, truncates and creates files until the daemon dies. Log records:
    B i op args...  (before)   D i  (after it returned). With the writeback cache a write is
    durable only at fsync, so each write and truncate is followed by fsync or fdatasync
    before it counts as returned: what this then checks is that fsync'd data survives."""
    rng = random.Random(f"{seed}-workload-{first}")
    log = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fds = {}
    names = sorted(n for n in os.listdir(mnt))
    i = first

    def sync(fd):
        if pmfs.WRITEBACK_CACHE:
            (os.fsync if rng.random() < 0.5 else os.fdatasync)(fd)
    try:
        while True:
            if not names or (len(names) < nfiles_max and rng.random() < 0.05):
                name = f"f{i}"
                logline(log, "B", i, "create", name)
                fds[name] = os.open(os.path.join(mnt, name), os.O_RDWR | os.O_CREAT, 0o644)
                logline(log, "D", i)
                names.append(name)
                i += 1
                continue
            name = rng.choice(names)
            if name not in fds:
                fds[name] = os.open(os.path.join(mnt, name), os.O_RDWR)
            fd = fds[name]
            r = rng.random()
            if r < 0.85:
                off = rng.choice([rng.randrange(0, 1 << 20), rng.randrange(0, 256) * BS])
                n = rng.choice([rng.randrange(1, 300), BS, rng.randrange(1, 64 << 10),
                                rng.randrange(1, 300 << 10)])
                logline(log, "B", i, "write", name, off, n)
                pwrite_all(fd, wdata(seed, i, n), off)
                sync(fd)
                logline(log, "D", i)
            elif r < 0.95:
                size = rng.randrange(0, 1 << 20)
                logline(log, "B", i, "truncate", name, size)
                os.ftruncate(fd, size)
                sync(fd)
                logline(log, "D", i)
            else:
                logline(log, "B", i, "fsync", name)
                os.fsync(fd)
                logline(log, "D", i)
            i += 1
    except OSError as e:
        if e.errno not in DEAD:
            raise
    return i


def replay(logpath, seed, files):
    """Applies the log to files {name: bytearray}; returns the operation in flight (or None)
    as (record, files_before) so the checker can accept either state."""
    pending = None
    with open(logpath) as f:
        lines = f.read().splitlines()
    for line in lines:
        w = line.split()
        if w[0] == "B":
            pending = w
        elif w[0] == "D":
            check(pending is not None and pending[1] == w[1], f"log out of order at {line}")
            apply_data(pending, seed, files)
            pending = None
    return pending


def apply_data(rec, seed, files):
    i, op, name = int(rec[1]), rec[2], rec[3]
    if op == "create":
        files.setdefault(name, bytearray())
    elif op == "write":
        off, n = int(rec[4]), int(rec[5])
        d = files[name]
        if off > len(d):
            d.extend(bytes(off - len(d)))
        d[off:off + n] = wdata(seed, i, n)
    elif op == "truncate":
        size = int(rec[4])
        d = files[name]
        if size < len(d):
            del d[size:]
        else:
            d.extend(bytes(size - len(d)))


def check_data(mnt, seed, files, pending):
    """Checks the mount against the model; returns the model adopted from what is there."""
    after = None
    if pending is not None:
        after = {k: bytearray(v) for k, v in files.items()}
        apply_data(pending, seed, after)
    names = sorted(os.listdir(mnt))
    want = sorted(files)
    if names != want:
        alt = sorted(after) if after is not None else None
        if names != alt:
            raise Failure(f"files after the crash: {names}, expected {want}"
                          + (f" or {alt}" if alt else ""))
    out = {}
    for name in names:
        with open(os.path.join(mnt, name), "rb") as f:
            got = f.read()
        old = files.get(name)
        new = after.get(name) if after is not None else None
        if old is not None and got == old or new is not None and got == new:
            out[name] = bytearray(got)
            continue
        if pending is None or pending[3] != name or pending[2] != "write":
            exp = old if old is not None else new
            raise Failure(f"{name}: contents differ from every logged state: size {len(got)}, "
                          f"expected {len(exp)}; first difference at "
                          f"{next((k for k in range(min(len(got), len(exp))) if got[k] != exp[k]), min(len(got), len(exp)))}")
        # the write in flight: each byte old or new, the size between the two
        pmfs.old_or_new(got, old, new, f"{name} (write in flight: {' '.join(pending[2:])})")
        out[name] = bytearray(got)
    return out


clean_state = pmfs.clean_state


@test(size="256M", timeout=300)
def kill_during_writes(m):
    seed = pmfs.SEED
    logpath = os.path.join(m.tmp, "ops.log")
    files = {}
    nxt = 0
    cycles = 3
    for cycle in range(cycles):
        child = m.fork(data_workload, m.mnt, logpath, seed, nxt, 8)
        # let it run a random while (but at least some completed operations)
        pmfs.wait_until(lambda: child.exited() or os.path.exists(logpath) and
                        open(logpath).read().count("\nD ") > 50, 60, "the workload got going")
        time.sleep(m.rng.uniform(0.05, 0.6))
        m.kill_daemon()
        res = child.join()
        if res[0] != "ok":
            raise Failure(f"cycle {cycle}: the workload failed before the daemon was killed: "
                          f"{res[1]!r}\n{res[2] if len(res) > 2 else ''}")
        nxt = res[1] + 1000   # indexes of a new cycle never collide with the last one
        m.detach()
        eq(clean_state(m), "no", f"cycle {cycle}: 'clean' after kill -9")
        m.mount()
        pending = replay(logpath, seed, files)
        files = check_data(m.mnt, seed, files, pending)
        # the model now is what is there; the log restarts
        os.unlink(logpath)
        done = sum(len(v) for v in files.values())
        print(f"     cycle {cycle}: ops up to {res[1]}, in flight: {pending and ' '.join(pending[2:])}, "
              f"{len(files)} files, {done} bytes")
    m.unmount()
    eq(clean_state(m), "yes", "'clean' after a clean unmount")
    m.fsck()
    m.mount()
    check_data(m.mnt, seed, files, None)


# ---------------------------------------------------------------------------------------------
# namespace workload


def ns_workload(mnt, logpath, seed, first):
    """Creates, links, renames, unlinks, makes and removes directories until the daemon dies.
    Log: B i op a [b] / D i. Paths are relative to mnt, at most one directory deep."""
    rng = random.Random(f"{seed}-ns-{first}")
    log = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = first

    def P(x):
        return os.path.join(mnt, x)
    try:
        while True:
            dirs = [""] + [d for d in os.listdir(mnt) if os.path.isdir(P(d))]
            d = rng.choice(dirs)
            entries = [os.path.join(d, e) for e in os.listdir(P(d))
                       if not os.path.isdir(P(os.path.join(d, e)))]
            r = rng.random()
            if r < 0.35 or not entries:
                name = os.path.join(d, f"n{i}")
                logline(log, "B", i, "create", name)
                os.close(os.open(P(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            elif r < 0.45:
                src = rng.choice(entries)
                name = os.path.join(rng.choice(dirs), f"l{i}")
                logline(log, "B", i, "link", src, name)
                os.link(P(src), P(name))
            elif r < 0.65:
                src = rng.choice(entries)
                dst = rng.choice(entries + [os.path.join(rng.choice(dirs), f"r{i}")] * 2)
                logline(log, "B", i, "rename", src, dst)
                os.rename(P(src), P(dst))
            elif r < 0.85:
                victim = rng.choice(entries)
                logline(log, "B", i, "unlink", victim)
                os.unlink(P(victim))
            elif r < 0.93 and len(dirs) < 5:
                name = f"d{i}"
                logline(log, "B", i, "mkdir", name)
                os.mkdir(P(name))
            else:
                empty = [x for x in dirs[1:] if not os.listdir(P(x))]
                if not empty:
                    continue
                victim = rng.choice(empty)
                logline(log, "B", i, "rmdir", victim)
                os.rmdir(P(victim))
            logline(log, "D", i)
            i += 1
    except OSError as e:
        if e.errno not in DEAD:
            raise
    return i


def ns_apply(rec, tree):
    """tree: path -> identity (creation index) for files, or "dir" for directories."""
    i, op, a = int(rec[1]), rec[2], rec[3]
    if op == "create":
        tree[a] = i
    elif op == "link":
        tree[rec[4]] = tree[a]
    elif op == "rename":
        b = rec[4]
        if tree[a] != tree.get(b):   # links of one inode: nothing happens
            tree[b] = tree.pop(a)
    elif op == "unlink":
        del tree[a]
    elif op == "mkdir":
        tree[a] = "dir"
    elif op == "rmdir":
        del tree[a]


def ns_scan(mnt):
    out = {}
    for d in [""] + sorted(os.listdir(mnt)):
        if d and not os.path.isdir(os.path.join(mnt, d)):
            continue
        if d:
            out[d] = os.lstat(os.path.join(mnt, d))
        for e in os.listdir(os.path.join(mnt, d)):
            p = os.path.join(d, e)
            if d or not os.path.isdir(os.path.join(mnt, p)):
                out[p] = os.lstat(os.path.join(mnt, p))
    return out


def ns_matches(scan, tree):
    """None if the scanned tree is the model (same paths; same inode exactly where the model
    has the same identity; nlink = number of names), else a reason."""
    if sorted(scan) != sorted(tree):
        extra = sorted(set(scan) - set(tree))[:5]
        missing = sorted(set(tree) - set(scan))[:5]
        return f"paths differ: extra {extra}, missing {missing}"
    by_ident = {}
    for p, ident in tree.items():
        if ident != "dir":
            by_ident.setdefault(ident, []).append(p)
    for ident, paths in by_ident.items():
        inos = {scan[p].st_ino for p in paths}
        if len(inos) != 1:
            return f"{paths} should be one inode, are {inos}"
        if scan[paths[0]].st_nlink != len(paths):
            return f"nlink of {paths} is {scan[paths[0]].st_nlink}, expected {len(paths)}"
    inos = [scan[ps[0]].st_ino for ps in by_ident.values()]
    if len(inos) != len(set(inos)):
        return "distinct files share an inode"
    return None


def ns_verify(mnt, logpath, tree, when):
    """Replays the namespace log onto tree and checks the mount against it, accepting the
    operation in flight done or not. Returns the tree adopted and the record in flight."""
    pending = None
    with open(logpath) as f:
        for line in f.read().splitlines():
            w = line.split()
            if w[0] == "B":
                pending = w
            else:
                check(pending and pending[1] == w[1], f"log out of order at {line}")
                ns_apply(pending, tree)
                pending = None
    scan = ns_scan(mnt)
    why = ns_matches(scan, tree)
    if why and pending is not None:
        after = dict(tree)
        ns_apply(pending, after)
        why2 = ns_matches(scan, after)
        if why2 is None:
            tree, why = after, None
        else:
            why = f"{why}; with the operation in flight ({' '.join(pending[2:])}) done: {why2}"
    if why:
        raise Failure(f"{when}: the tree after the crash is neither the logged state nor that "
                      f"plus the operation in flight: {why}")
    return tree, pending


@test(size="128M", timeout=300)
def kill_during_namespace_ops(m):
    seed = pmfs.SEED
    logpath = os.path.join(m.tmp, "ns.log")
    tree = {}
    nxt = 0
    for cycle in range(3):
        child = m.fork(ns_workload, m.mnt, logpath, seed, nxt)
        pmfs.wait_until(lambda: child.exited() or os.path.exists(logpath) and
                        open(logpath).read().count("\nD ") > 100, 60, "the workload got going")
        time.sleep(m.rng.uniform(0.05, 0.5))
        m.kill_daemon()
        res = child.join()
        if res[0] != "ok":
            raise Failure(f"cycle {cycle}: the workload failed before the daemon was killed: "
                          f"{res[1]!r}\n{res[2] if len(res) > 2 else ''}")
        nxt = res[1] + 1000
        m.detach()
        eq(clean_state(m), "no", f"cycle {cycle}: 'clean' after kill -9")
        m.mount()
        tree, pending = ns_verify(m.mnt, logpath, tree, f"cycle {cycle}")
        os.unlink(logpath)
        print(f"     cycle {cycle}: ops up to {res[1]}, in flight: "
              f"{pending and ' '.join(pending[2:])}, {len(tree)} paths")
    m.unmount()
    eq(clean_state(m), "yes", "'clean' after a clean unmount")
    m.fsck()


def shrink_workload(mnt, logpath, names, seed):
    """Unlinks and truncates large files one after another (each frees thousands of blocks, in
    several transactions), logging each before and after, until the daemon dies or all done."""
    rng = random.Random(seed)
    log = os.open(logpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i, name in enumerate(names):
            p = os.path.join(mnt, name)
            if rng.random() < 0.5:
                logline(log, "B", i, "unlink", name)
                os.unlink(p)
            else:
                size = rng.randrange(0, 1 << 20)
                logline(log, "B", i, "truncate", name, size)
                os.truncate(p, size)
            logline(log, "D", i)
    except OSError as e:
        if e.errno not in DEAD:
            raise
    return True


def leaked_blocks(m, free0):
    """Blocks in use beyond what the files map, compared with the pool right after mkfs."""
    used = free0 - m.statfs().f_bfree
    mapped = 0
    for dirpath, dirnames, filenames in os.walk(m.mnt):
        for n in filenames:
            mapped += os.lstat(os.path.join(dirpath, n)).st_blocks // 8
    return used - mapped


@test(size="512M", timeout=300)
def kill_during_large_frees(m):
    """kill -9 while large files are being unlinked or truncated (freeing takes several
    transactions): after the next mount, every logged operation is done, the one in flight is
    done or not, and no block is lost (orphans and interrupted frees are finished at mount)."""
    free0 = m.statfs().f_bfree
    logpath = os.path.join(m.tmp, "shrink.log")
    nfiles, size = 8, pmfs.scaled(24 << 20, 4 << 20)
    for cycle in range(3):
        names = [f"c{cycle}-{k}" for k in range(nfiles)]
        content = {n: random.Random(f"{pmfs.SEED}-{n}").randbytes(size) for n in names}
        # written round robin in 64 KiB pieces: fragmented files, many extents to free
        fds = {n: os.open(m.path(n), os.O_WRONLY | os.O_CREAT, 0o644) for n in names}
        for off in range(0, size, 64 << 10):
            for n in names:
                pwrite_all(fds[n], content[n][off:off + (64 << 10)], off)
        for fd in fds.values():
            os.close(fd)
        pmfs.wait_until(lambda: leaked_blocks(m, free0) <= 64, 5, "before the frees")
        child = m.fork(shrink_workload, m.mnt, logpath, names, pmfs.SEED + cycle)
        # kill right after the child starts a randomly chosen one of the frees
        target = f"B {m.rng.randrange(nfiles)} ".encode()
        end = time.time() + 30 * pmfs.TIME_FACTOR
        while not child.exited() and time.time() < end:
            if os.path.exists(logpath):
                with open(logpath, "rb") as f:
                    if target in f.read():
                        break
            time.sleep(0.0002)
        time.sleep(m.rng.choice([0, 0, 0.0005, 0.002]))
        m.kill_daemon()
        res = child.join()
        if res[0] != "ok":
            raise Failure(f"cycle {cycle}: the workload failed before the daemon was killed: "
                          f"{res[1]!r}\n{res[2] if len(res) > 2 else ''}")
        m.detach()
        m.mount()
        state, pending = {}, None
        with open(logpath) as f:
            for line in f.read().splitlines():
                w = line.split()
                if w[0] == "B":
                    pending = w
                else:
                    state[w[1]] = pending
                    pending = None
        os.unlink(logpath)
        for i, n in enumerate(names):
            p = m.path(n)
            rec = state.get(str(i))
            inflight = pending is not None and pending[1] == str(i)
            old = content[n]
            if rec is None and not inflight:
                eq(os.path.exists(p), True, f"cycle {cycle}: {n} (not touched) exists")
                check(pmfs.read_file(p) == old, f"cycle {cycle}: {n} (not touched) intact")
                continue
            r = rec or pending
            if r[2] == "unlink":
                if inflight and os.path.exists(p):
                    check(pmfs.read_file(p) == old, f"cycle {cycle}: {n} (unlink in flight, "
                          "still there) intact")
                else:
                    eq(os.path.exists(p), False, f"cycle {cycle}: {n} after its unlink returned")
            else:
                got = pmfs.read_file(p)
                new = old[:int(r[4])]
                if got != new and not (inflight and got == old):
                    raise Failure(f"cycle {cycle}: {n} after truncate to {r[4]}"
                                  f"{' (in flight)' if inflight else ''}: size {len(got)}, "
                                  f"contents {'a prefix' if old.startswith(got) else 'damaged'}")
        try:
            pmfs.wait_until(lambda: leaked_blocks(m, free0) <= 64, 5, "blocks accounted for")
        except Failure:
            raise Failure(f"cycle {cycle}: {leaked_blocks(m, free0)} blocks in use beyond what "
                          f"the files map after the crash and remount (in flight: {pending})") \
                from None
        print(f"     cycle {cycle}: {len(state)} of {nfiles} done, in flight: "
              f"{pending and ' '.join(pending[2:])}")
        for n in names:
            if os.path.exists(m.path(n)):
                os.unlink(m.path(n))
    m.unmount()
    m.fsck()


SOAK_ROUNDS = int(os.environ.get("PMFUSE_SOAK_ROUNDS", "2"))


@test(size="256M", timeout=max(300, 8 * SOAK_ROUNDS))
def soak_kill9_mixed(m):
    """The data and the namespace workloads at once, in two directories (two processes, and
    the daemon's worker threads between them), killed with SIGKILL at a random moment, round
    after round: after each, every returned operation is there, the one in flight done or
    not; after a clean unmount fsck finds nothing. PMFUSE_SOAK_ROUNDS sets the rounds (2 in
    the test command; 1,000 for a soak)."""
    seed = pmfs.SEED
    data_dir, ns_dir = m.path("data"), m.path("ns")
    os.mkdir(data_dir)
    os.mkdir(ns_dir)
    dlog, nlog = os.path.join(m.tmp, "data.log"), os.path.join(m.tmp, "ns.log")
    files, tree = {}, {}
    dnext = nnext = 0
    t0 = time.time()
    for rnd in range(SOAK_ROUNDS):
        dchild = m.fork(data_workload, data_dir, dlog, seed, dnext, 6)
        nchild = m.fork(ns_workload, ns_dir, nlog, seed, nnext)

        def going():
            return all(c.exited() or os.path.exists(p) and open(p).read().count("\nD ") > 20
                       for c, p in ((dchild, dlog), (nchild, nlog)))
        pmfs.wait_until(going, 60, "both workloads got going")
        time.sleep(m.rng.uniform(0.0, 0.4))
        m.kill_daemon()
        for what, child in (("data", dchild), ("namespace", nchild)):
            res = child.join()
            if res[0] != "ok":
                raise Failure(f"round {rnd}: the {what} workload failed before the kill: "
                              f"{res[1]!r}\n{res[2] if len(res) > 2 else ''}")
            if what == "data":
                dnext = res[1] + 1000
            else:
                nnext = res[1] + 1000
        m.detach()
        m.mount()
        files = check_data(data_dir, seed, files, replay(dlog, seed, files))
        tree, _ = ns_verify(ns_dir, nlog, tree, f"round {rnd}")
        os.unlink(dlog)
        os.unlink(nlog)
        m.unmount()
        m.raise_problems()
        m.fsck()
        m.mount()
        if rnd % 50 == 49 or rnd == SOAK_ROUNDS - 1:
            print(f"     round {rnd + 1}/{SOAK_ROUNDS}: {len(files)} files, {len(tree)} paths, "
                  f"{time.time() - t0:.0f}s", flush=True)


@test(timeout=120)
def sigterm_unmounts_cleanly(m):
    pmfs.write_file(m.path("f"), b"before sigterm")
    os.kill(m.daemon.pid, 15)
    st = m.daemon.wait(timeout=30 * pmfs.TIME_FACTOR)
    eq(st, 0, "exit status of the daemon after SIGTERM")
    m.reap_daemon()
    eq(pmfs.is_mounted(m.mnt), False, "mounted after the daemon exited on SIGTERM")
    eq(clean_state(m), "yes", "'clean' after SIGTERM")
    m.mount()
    eq(pmfs.read_file(m.path("f")), b"before sigterm", "data after SIGTERM and remount")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
