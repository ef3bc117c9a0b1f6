#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""The daemon's command line and pool handling: a pool in use is refused (a second pmfuse, or
mkfs.pmfuse -f) with a clear message and a non-zero exit; bad arguments (no pool, not a pool,
a damaged pool, a bad mount point, unknown options) fail clearly, mount nothing and leave the
files as they were; --help and -V; the clean flag and mount count; read-only mounts."""

import errno
import fcntl
import hashlib
import os
import subprocess
import threading
import time

import pmfs
from pmfs import check, eq, expect_errno, test, write_file, read_file, Failure


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), os.stat(path).st_mtime_ns, os.stat(path).st_size


def run_daemon(m, args, timeout=20):
    """Runs the daemon with args (after -f) and waits for it to exit. A daemon that mounted
    something and kept running is unmounted and stopped. Returns (status, output, mounted)
    where status is None if it was still running."""
    cmd = [m.cfg.daemon, "-f"] + args
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    targets = [a for a in args if os.path.isabs(a)]
    end = time.time() + timeout * pmfs.TIME_FACTOR
    st = None
    while time.time() < end:
        st = p.poll()
        if st is not None:
            break
        if any(pmfs.is_mounted(t) for t in targets):
            time.sleep(0.5)       # it mounted: give it a moment to change its mind, no more
            st = p.poll()
            break
        time.sleep(0.02)
    if st is not None:
        out, _ = p.communicate()
    mounted = [t for t in targets if pmfs.is_mounted(t)]
    if st is None:
        for t in mounted:
            subprocess.run(["fusermount3", "-u", t])
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
    for t in mounted:
        if pmfs.is_mounted(t):
            subprocess.run(["fusermount3", "-uz", t])
    return st, out, mounted


def expect_refused(m, args, words, what, unchanged=()):
    before = {p: digest(p) for p in unchanged}
    st, out, mounted = run_daemon(m, args)
    check(st is not None, f"{what}: the daemon kept running (mounted: {mounted})\n{out}")
    check(st != 0, f"{what}: exit status 0\n{out}")
    check(not mounted, f"{what}: {mounted} got mounted")
    low = out.lower()
    check(out.strip(), f"{what}: no message at all")
    check(any(w.lower() in low for w in words),
          f"{what}: the message names none of {words}:\n{out}")
    for p, d in before.items():
        eq(digest(p), d, f"{what}: {p} (sha256, mtime, size) after the refused mount")
    return out


@test()
def pool_in_use(m):
    write_file(m.path("f"), b"first mount")
    other = os.path.join(m.dir, "mnt2")
    os.mkdir(other)
    out = expect_refused(m, [m.pool, other], ["in use", "busy", "locked"],
                         "a second pmfuse on a mounted pool")
    print(f"     second daemon said: {out.strip().splitlines()[-1]}")
    eq(read_file(m.path("f")), b"first mount", "the first mount still works")
    r = subprocess.run([m.cfg.mkfs, "-f", m.pool], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    check(r.returncode != 0, f"mkfs.pmfuse -f on a mounted pool succeeded:\n{r.stdout}")
    check(any(w in r.stdout.lower() for w in ("in use", "busy", "mounted")),
          f"mkfs.pmfuse message: {r.stdout}")
    if m.cfg.ctl:
        info = m.info()
        check(info.get("in use", "").startswith("yes"),
              f"pmfusectl info 'in use' while mounted: {info.get('in use')}")
    write_file(m.path("g"), b"after the refusals")
    m.remount()
    eq(read_file(m.path("f")), b"first mount", "data after remount")
    eq(read_file(m.path("g")), b"after the refusals", "data written after the refusals")


class Collect:
    """Runs every case and fails once at the end with all the cases that failed."""

    def __init__(self):
        self.errors = []

    def __call__(self, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except Failure as e:
            self.errors.append(str(e))

    def done(self, total):
        if self.errors:
            raise Failure(f"{len(self.errors)} of {total} cases failed:\n" +
                          "\n".join(f"  - {e}" for e in self.errors))


def info_words(m):
    """pmfusectl info with each value cut to its first word ("no (mounted now...)" -> "no")."""
    return {k: (v.split()[0].rstrip(",") if v.split() else "") for k, v in m.info().items()}


@test(mount=False, timeout=180)
def bad_arguments(m):
    m.mkfs()
    cases = Collect()
    refused = lambda *a, **kw: cases(expect_refused, *a, **kw)  # noqa: E731
    good = m.pool
    mnt = m.mnt
    d = m.dir
    refused(m, [], ["usage", "pool"], "no arguments")
    refused(m, [good], ["mount point", "mountpoint"], "no mount point")
    missing = os.path.join(d, "no-such-pool")
    refused(m, [missing, mnt], ["no such file", "no-such-pool"], "a missing pool")
    zeros = os.path.join(d, "zeros")
    with open(zeros, "wb") as f:
        f.truncate(8 << 20)
    refused(m, [zeros, mnt], ["superblock", "not a pmfuse", "magic"], "a pool of zeros",
                   unchanged=[zeros])
    junk = os.path.join(d, "junk")
    write_file(junk, m.rng.randbytes(4 << 20))
    refused(m, [junk, mnt], ["superblock", "not a pmfuse", "magic"], "a file of random bytes",
                   unchanged=[junk])
    small = os.path.join(d, "small")
    write_file(small, b"tiny")
    refused(m, [small, mnt], ["small", "superblock", "size", "not a pmfuse"],
                   "a 4-byte file", unchanged=[small])
    # a pool cut short: the superblock promises more blocks than the file has
    cut = os.path.join(d, "cut")
    subprocess.run([m.cfg.mkfs, "-s", "64M", cut], stdout=subprocess.DEVNULL, check=True)
    os.truncate(cut, 32 << 20)
    refused(m, [cut, mnt], ["size", "blocks", "short", "superblock", "truncated", "smaller"],
                   "a truncated pool", unchanged=[cut])
    refused(m, [d, mnt], ["directory", "not a", "invalid"], "a directory as the pool")
    refused(m, [good, os.path.join(d, "no-such-dir")], ["no such file", "mount"],
                   "a missing mount point", unchanged=[good])
    notdir = os.path.join(d, "plainfile")
    write_file(notdir, b"x")
    refused(m, [good, notdir], ["not a directory", "directory"],
                   "a regular file as the mount point", unchanged=[good])
    refused(m, ["--no-such-option", good, mnt], ["unknown", "invalid", "option"],
                   "an unknown option", unchanged=[good])
    refused(m, ["-o", "no_such_mount_option", good, mnt], ["unknown", "invalid", "option"],
                   "an unknown -o option", unchanged=[good])
    refused(m, [good, mnt, "extra"], ["usage", "argument", "extra", "too many"],
                   "a third positional argument", unchanged=[good])
    # the good pool was left alone by all of the above and still mounts
    m.mount()
    os.mkdir(m.path("works"))
    cases.done(13)


@test(mount=False)
def help_and_version(m):
    r = subprocess.run([m.cfg.daemon, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=30)
    eq(r.returncode, 0, "exit status of --help")
    check("usage" in (r.stdout + r.stderr).lower() and "pool" in r.stdout.lower(),
          f"--help output:\n{r.stdout}{r.stderr}")
    r = subprocess.run([m.cfg.daemon, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    eq(r.returncode, 0, "exit status of -V")
    check("pmfuse" in r.stdout.lower(), f"-V output: {r.stdout}")


@test(mount=False)
def clean_flag_and_mount_count(m):
    if not m.cfg.ctl:
        raise pmfs.Skip("pmfusectl is not built")
    m.mkfs()
    info = info_words(m)
    eq(info.get("clean"), "yes", "clean after mkfs")
    eq(info.get("mount count"), "0", "mount count after mkfs")
    eq(info.get("in use"), "no", "in use after mkfs")
    for k in (1, 2):
        m.mount()
        eq(info_words(m).get("clean"), "no", f"clean while mounted ({k})")
        m.unmount()
        m.raise_problems()
        info = info_words(m)
        eq(info.get("clean"), "yes", f"clean after unmount {k}")
        eq(info.get("mount count"), str(k), f"mount count after mount {k}")
        eq(info.get("in use"), "no", f"in use after unmount {k}")


@test()
def read_only_mount(m):
    write_file(m.path("f"), b"written read-write")
    os.mkdir(m.path("d"))
    m.unmount()
    m.raise_problems()
    before = digest(m.pool)
    m.opts = ["ro"]
    m.mount()
    eq(read_file(m.path("f")), b"written read-write", "read on a read-only mount")
    expect_errno(errno.EROFS, write_file, m.path("new"), b"x")
    expect_errno(errno.EROFS, os.open, m.path("f"), os.O_WRONLY)
    expect_errno(errno.EROFS, os.mkdir, m.path("d2"))
    expect_errno(errno.EROFS, os.unlink, m.path("f"))
    expect_errno(errno.EROFS, os.chmod, m.path("f"), 0o600)
    expect_errno(errno.EROFS, os.setxattr, m.path("f"), "user.x", b"1")
    # a read-write mount of the same pool is refused meanwhile
    other = os.path.join(m.dir, "mnt2")
    os.mkdir(other)
    expect_refused(m, [m.pool, other], ["in use", "busy", "locked"],
                   "a read-write mount next to a read-only one")
    m.unmount()
    m.raise_problems()
    eq(digest(m.pool)[0], before[0], "pool bytes after a read-only mount")
    m.opts = []
    m.mount()
    write_file(m.path("new"), b"rw again")


def remount(m, opts, pool=None):
    """What mount(8) runs for "mount -o remount,OPTS MNT" through mount.fuse3."""
    return subprocess.run([m.cfg.daemon, pool or m.pool, m.mnt, "-o", "remount," + opts],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=30 * pmfs.TIME_FACTOR)


def mount_flags(m):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if pmfs._unescape(fields[4]) == os.path.realpath(m.mnt):
                return set(fields[5].split(","))
    raise Failure(f"{m.mnt} is not mounted")


@test(mount=False)
def nosubtype_and_remount(m):
    # -o nosubtype: type "fuse" (what xfstests' FSTYP=fuse compares with), and a source that
    # names the program, so that mount.fuse3 finds pmfuse for a later mount -o remount
    m.mkfs()
    m.opts = ["nosubtype"]
    m.mount()
    fstype, source, _ = pmfs.mountinfo()[os.path.realpath(m.mnt)]
    eq(fstype, "fuse", "type of a -o nosubtype mount")
    eq(source, "pmfuse#" + os.path.realpath(m.pool), "source of a -o nosubtype mount")
    write_file(m.path("f"), b"before")
    # mount.fuse3 passes the source as it is: pmfuse accepts the pmfuse# prefix
    r = remount(m, "ro", pool=source)
    eq(r.returncode, 0, f"remount,ro exit status:\n{r.stdout}")
    check("ro" in mount_flags(m), f"mount flags after remount,ro: {mount_flags(m)}")
    expect_errno(errno.EROFS, write_file, m.path("g"), b"x")
    expect_errno(errno.EROFS, os.unlink, m.path("f"))
    eq(read_file(m.path("f")), b"before", "reading after remount,ro")
    r = remount(m, "rw,noexec")
    eq(r.returncode, 0, f"remount,rw exit status:\n{r.stdout}")
    flags = mount_flags(m)
    check("rw" in flags and "noexec" in flags, f"mount flags after remount,rw,noexec: {flags}")
    write_file(m.path("g"), b"after")
    eq(m.daemon.poll(), None, "the serving daemon after two remounts")
    m.unmount()
    m.raise_problems()
    m.opts = []
    m.mount()
    eq(read_file(m.path("g")), b"after", "data written after remount,rw")
    # remounting what is not a pmfuse mount, or a read-only daemon read-write, is refused
    other = os.path.join(m.dir, "plain")
    os.mkdir(other)
    r = subprocess.run([m.cfg.daemon, m.pool, other, "-o", "remount,ro"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    check(r.returncode != 0 and "not a mounted pmfuse" in r.stdout,
          f"remount of a plain directory: status {r.returncode}, {r.stdout!r}")
    m.unmount()
    m.raise_problems()
    m.opts = ["ro"]
    m.mount()
    r = remount(m, "rw")
    check(r.returncode != 0 and "read-only" in r.stdout,
          f"remount,rw of a read-only daemon: status {r.returncode}, {r.stdout!r}")
    check("ro" in mount_flags(m), f"flags after the refused remount: {mount_flags(m)}")
    m.unmount()
    m.raise_problems()
    m.opts = []


def hold_lock(path, seconds):
    """Holds an exclusive flock on path for seconds, in a thread, as a daemon that is still
    closing the pool after its unmount would. Returns the thread (join it)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release():
        time.sleep(seconds)
        os.close(fd)
    t = threading.Thread(target=release)
    t.start()
    return t


@test(mount=False)
def lock_released_soon(m):
    # umount returns before the daemon has closed the pool (xfstests generic/611 mounts again
    # at once): a lock let go of within moments is waited for, by the daemon, fsck and mkfs
    m.mkfs()
    t = hold_lock(m.pool, 0.5)
    m.mount()
    t.join()
    write_file(m.path("f"), b"mounted after a wait")
    m.unmount()
    m.raise_problems()
    fsck = os.path.join(os.path.dirname(m.cfg.mkfs), "fsck.pmfuse")
    if os.access(fsck, os.X_OK):
        t = hold_lock(m.pool, 0.5)
        r = subprocess.run([fsck, "-n", "-f", m.pool], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        t.join()
        eq(r.returncode, 0, f"fsck.pmfuse after a short wait:\n{r.stdout}")
    t = hold_lock(m.pool, 0.5)
    r = subprocess.run([m.cfg.mkfs, "-f", "-s", "64M", m.pool], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    t.join()
    eq(r.returncode, 0, f"mkfs.pmfuse after a short wait:\n{r.stdout}")
    # a lock that stays is still refused, naming its holder
    t = hold_lock(m.pool, 6)
    try:
        st, out, mounted = run_daemon(m, [m.pool, m.mnt])
    finally:
        t.join()
    check(st not in (None, 0) and not mounted and "in use" in out.lower(),
          f"a pool locked for good: status {st}, mounted {mounted}, said {out!r}")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
