#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""FUSE over io_uring (pmfuse -o io_uring, libfuse >= 3.18): the transport the mount log names is
the one asked for and the kernel allowed, requests really arrive through a ring, a daemon built
against an older libfuse refuses the option clearly, and what the ring bypasses still holds
(initx.c): setuid/setgid drop on an unprivileged write, truncate, copy_file_range and
fallocate, and O_TMPFILE works. The ring tests are skipped, with the reason, when the daemon has
no ring support or /sys/module/fuse/parameters/enable_uring is not Y (the tests never change it;
`meson test --setup uring` runs every fs test on the ring, see tests/fs/README.md)."""

import ctypes
import os
import stat
import subprocess
import time

import pmfs
from pmfs import Skip, check, eq, run_as, test, write_file

U1, G1 = 1001, 1001
U2, G2 = 1002, 1002
RING = "transport: FUSE over io_uring"
FIRST = "first request served through an io_uring ring"


def daemon_has_ring(m):
    """Whether the daemon is built against libfuse >= 3.18 (its --help says when it is not)."""
    out = subprocess.run([m.cfg.daemon, "--help"], capture_output=True, text=True).stdout
    check("-o io_uring" in out, "pmfuse --help lists -o io_uring")
    return "this pmfuse has an older one" not in out


def log_text(m):
    with open(m.log, errors="replace") as f:
        return f.read()


def wait_log(m, what, seconds=10):
    """The daemon logs INIT's outcome from a worker thread: give it a moment."""
    end = time.time() + seconds * pmfs.TIME_FACTOR
    while what not in log_text(m) and time.time() < end:
        time.sleep(0.05)
    return what in log_text(m)


def mount_ring(m):
    """Formats and mounts with -o io_uring, or skips saying why the ring cannot be had."""
    if not daemon_has_ring(m):
        raise Skip("the daemon is built against libfuse < 3.18 (no FUSE over io_uring)")
    if not pmfs.uring_enabled():
        raise Skip(f"{pmfs.URING_PARAM} is not Y: the kernel offers no FUSE over io_uring")
    m.opts.append("io_uring")
    m.mkfs()
    m.mount()
    os.stat(m.path())                       # a GETATTR of the root, through the ring
    check(wait_log(m, RING), "the mount log names the ring as the transport:\n" + m.log_tail())


@test(mount=False)
def transport_is_the_ring(m):
    mount_ring(m)
    write_file(m.path("f"), b"ring")
    os.stat(m.path("f"))
    check(wait_log(m, FIRST), "a request arrived through a ring:\n" + m.log_tail())
    check("transport: /dev/fuse" not in log_text(m), "no /dev/fuse transport line")
    eq(open(m.path("f"), "rb").read(), b"ring", "contents written through the ring")


@test(mount=False)
def refused_without_libfuse_318(m):
    if daemon_has_ring(m):
        raise Skip("the daemon is built against libfuse >= 3.18: -o io_uring is accepted")
    m.mkfs()
    os.makedirs(m.mnt, exist_ok=True)
    r = subprocess.run([m.cfg.daemon, "-f", "-o", "io_uring", m.pool, m.mnt],
                       capture_output=True, text=True, timeout=30 * pmfs.TIME_FACTOR)
    eq(r.returncode, 1, "exit status of pmfuse -o io_uring")
    check("needs libfuse >= 3.18" in r.stderr, f"a clear refusal, got: {r.stderr!r}")
    check(not pmfs.is_mounted(m.mnt), "nothing mounted")


@test(mount=False)
def kernel_refusal_is_logged(m):
    if not daemon_has_ring(m):
        raise Skip("the daemon is built against libfuse < 3.18 (no FUSE over io_uring)")
    if pmfs.uring_enabled():
        raise Skip(f"{pmfs.URING_PARAM} is Y: the kernel does not refuse the ring now")
    if pmfs.URING:
        raise Skip("PMFUSE_TEST_URING=1 fails every mount that ends up on /dev/fuse")
    m.opts.append("io_uring")
    m.mkfs()
    m.mount()
    write_file(m.path("f"), b"devfuse")
    check(wait_log(m, "transport: /dev/fuse: io_uring was asked for but the kernel does not "
                   "offer it"), "the log says the kernel refused the ring:\n" + m.log_tail())
    check(FIRST not in log_text(m), "no request through a ring")


@test(mount=False)
def no_ring_with_writeback_cache(m):
    if not daemon_has_ring(m):
        raise Skip("the daemon is built against libfuse < 3.18 (no FUSE over io_uring)")
    if not pmfs.uring_enabled():
        raise Skip(f"{pmfs.URING_PARAM} is not Y: the kernel offers no FUSE over io_uring")
    m.opts += ["io_uring", "writeback_cache"]
    m.mkfs()
    m.mount()
    write_file(m.path("f"), b"cached")
    os.stat(m.path("f"))
    check(wait_log(m, "io_uring is not used with -o writeback_cache"),
          "the log says the writeback cache keeps /dev/fuse:\n" + m.log_tail())
    check(RING not in log_text(m) and FIRST not in log_text(m), "no ring")


@test()
def default_transport_is_dev_fuse(m):
    if pmfs.URING:
        raise Skip("PMFUSE_TEST_URING=1 asks every mount for the ring")
    os.stat(m.path())
    check(wait_log(m, "transport: /dev/fuse"), "the log names /dev/fuse:\n" + m.log_tail())
    check(RING not in log_text(m), "no ring without -o io_uring")


def user_file(m, name, data=b"x" * 16384, mode=0o6777):
    p = m.path(name)
    write_file(p, data)
    os.chown(p, U1, G1)
    os.chmod(p, mode)
    return p


def do_write(p):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.write(fd, b"w")
    finally:
        os.close(fd)


def do_truncate(p):
    os.truncate(p, 10)


def do_copy(p):
    src = os.open(os.path.join(os.path.dirname(p), "src"), os.O_RDONLY)
    dst = os.open(p, os.O_WRONLY)
    try:
        eq(os.copy_file_range(src, dst, 4096, 0, 4096), 4096, "bytes copied")
    finally:
        os.close(src)
        os.close(dst)


def do_fallocate(p):
    fd = os.open(p, os.O_WRONLY)
    try:
        pmfs.fallocate(fd, 0, 0, 65536)
    finally:
        os.close(fd)


@test(mount=False)
def setid_dropped_under_the_ring(m):
    # the write handler cannot learn through a ring that the writer lacks CAP_FSETID, so the
    # daemon withholds HANDLE_KILLPRIV_V2 and the kernel clears the bits itself (initx.c)
    mount_ring(m)
    write_file(m.path("src"), b"s" * 8192)
    for what, act in (("a write", do_write), ("a truncate", do_truncate),
                      ("copy_file_range", do_copy), ("fallocate", do_fallocate)):
        p = user_file(m, what.replace(" ", "-"))
        run_as(U2, G2, act, p)
        eq(stat.S_IMODE(os.stat(p).st_mode), 0o777, f"mode after {what} by a non-owner")
        p = user_file(m, "root-" + what.replace(" ", "-"))
        act(p)
        eq(stat.S_IMODE(os.stat(p).st_mode), 0o6777, f"mode after {what} by root (CAP_FSETID)")
        # setgid without group exec: the kernel's FUSE setattr leaves it, Linux 6.2's rule
        # drops it for a caller outside the file's group, and the daemon applies that (ops.c)
        p = user_file(m, "sgid-" + what.replace(" ", "-"), mode=0o2766)
        run_as(U2, G2, act, p)
        eq(stat.S_IMODE(os.stat(p).st_mode), 0o766, f"mode after {what} by a non-member")
        p = user_file(m, "sgid-member-" + what.replace(" ", "-"), mode=0o2766)
        run_as(U2, G2, act, p, groups=(G1,))
        eq(stat.S_IMODE(os.stat(p).st_mode), 0o2766, f"mode after {what} by a group member")
    check("FUSE_HANDLE_KILLPRIV_V2 granted" not in log_text(m), "KILLPRIV_V2 not granted")
    check(wait_log(m, FIRST), "requests arrived through a ring:\n" + m.log_tail())


@test(mount=False)
def tmpfile_under_the_ring(m):
    # FUSE_TMPFILE is served by libfuse's tmpfile op (>= 3.17), not by the read hook
    mount_ring(m)
    fd = os.open(m.path(), os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, b"anonymous")
        eq(os.fstat(fd).st_nlink, 0, "links of an O_TMPFILE file")
        eq(stat.S_IMODE(os.fstat(fd).st_mode), 0o640, "mode of the O_TMPFILE file")
        # linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): names the open file
        if pmfs.libc.linkat(fd, b"", pmfs.AT_FDCWD, os.fsencode(m.path("named")), 0x1000):
            raise OSError(ctypes.get_errno(), "linkat")
    finally:
        os.close(fd)
    eq(open(m.path("named"), "rb").read(), b"anonymous", "contents once linked")
    eq(os.stat(m.path("named")).st_nlink, 1, "links once linked")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
