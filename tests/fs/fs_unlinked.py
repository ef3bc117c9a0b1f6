#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Unlinked-but-open files: the inode lives while open (write and read through the fd), its
space comes back at the last close; after a kill -9 of the daemon while it is open, the next
mount frees it (orphan list) and the pool was marked not cleanly unmounted."""

import ctypes
import errno
import os
import stat

import pmfs
from pmfs import check, eq, expect_errno, test, write_file, read_file, pread_all, \
    pwrite_all, same_bytes, Failure

SLACK = 8  # blocks of metadata (tree nodes) that may stay allocated after a delete


def used_inodes(m):
    s = m.statfs()
    return s.f_files - s.f_ffree


def wait_returned(m, free0, inodes0, what, timeout=5):
    """FUSE_FORGET is asynchronous: give the kernel a moment to send it."""
    def ok():
        return m.statfs().f_bfree >= free0 - SLACK and used_inodes(m) <= inodes0
    try:
        pmfs.wait_until(ok, timeout, what)
    except Failure:
        raise Failure(f"{what}: {m.statfs().f_bfree} blocks free (expected {free0} - {SLACK} "
                      f"or more), {used_inodes(m)} inodes in use (expected {inodes0})") from None


def info_clean(m):
    info = m.info()
    check("clean" in info, f"pmfusectl info has no 'clean' line:\n{info['_text']}")
    return info["clean"].split()[0]


@test(size="128M")
def unlinked_open_file(m):
    free0, inodes0 = m.statfs().f_bfree, used_inodes(m)
    p = m.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.unlink(p)
    expect_errno(errno.ENOENT, os.stat, p)
    eq(os.listdir(m.mnt), [], "directory after unlink")
    eq(os.fstat(fd).st_nlink, 0, "nlink of an unlinked open file")
    data = m.rng.randbytes(8 << 20)
    pwrite_all(fd, data, 0)
    same_bytes(pread_all(fd, len(data) + 1), data, "read back through the fd")
    st = os.fstat(fd)
    eq(st.st_size, len(data), "size of the unlinked file")
    used = free0 - m.statfs().f_bfree
    check(used >= 2048, f"the unlinked file's 8 MiB use only {used} blocks")
    os.ftruncate(fd, 1 << 20)
    os.fchmod(fd, 0o600)
    eq(os.fstat(fd).st_mode & 0o777, 0o600, "fchmod of an unlinked file")
    fd2 = os.dup(fd)
    os.close(fd)
    eq(os.pread(fd2, 5, 0), data[:5], "still readable through a dup after the first close")
    os.close(fd2)
    wait_returned(m, free0, inodes0, "after the last close")
    m.remount()
    eq((m.statfs().f_bfree >= free0 - SLACK, used_inodes(m)), (True, inodes0),
       "space and inodes after remount")


@test()
def open_in_another_process(m):
    free0, inodes0 = m.statfs().f_bfree, used_inodes(m)
    p = m.path("f")
    write_file(p, b"z" * (1 << 20))

    def holder(path, r, w):
        fd = os.open(path, os.O_RDWR)
        os.write(w, b"1")
        os.read(r, 1)             # until the parent has unlinked
        got = os.pread(fd, 4, 0)
        os.pwrite(fd, b"late", 4)
        os.close(fd)
        return got
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    c = m.fork(holder, p, r2, w1)
    os.read(r1, 1)
    os.unlink(p)
    os.write(w2, b"1")
    eq(c.wait(), b"zzzz", "the other process reads the unlinked file")
    wait_returned(m, free0, inodes0, "after the other process closed it")


@test()
def rename_over_open_file(m):
    free0, inodes0 = m.statfs().f_bfree, used_inodes(m)
    write_file(m.path("old"), b"o" * (2 << 20))
    write_file(m.path("new"), b"n" * 100)
    fd = os.open(m.path("old"), os.O_RDWR)
    os.rename(m.path("new"), m.path("old"))
    eq(read_file(m.path("old")), b"n" * 100, "the name now has the new file")
    eq(os.pread(fd, 3, 0), b"ooo", "the replaced file is readable through its fd")
    os.pwrite(fd, b"still", 0)
    eq(os.fstat(fd).st_nlink, 0, "nlink of the replaced file")
    os.close(fd)
    os.unlink(m.path("old"))
    wait_returned(m, free0, inodes0, "after closing the replaced file and removing the other")


@test(size="128M")
def many_unlinked_then_kill(m):
    """Files unlinked while open, then kill -9 of the daemon: the next mount frees them all."""
    free0, inodes0 = m.statfs().f_bfree, used_inodes(m)
    keep = m.path("keep")
    write_file(keep, b"k" * 100000)
    free_keep, inodes_keep = m.statfs().f_bfree, used_inodes(m)
    fds = []
    n = pmfs.scaled(100, 20)
    for i in range(n):
        p = m.path(f"u{i}")
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        pwrite_all(fd, os.urandom(64 << 10), 0)
        os.unlink(p)
        fds.append(fd)
    big = m.path("big")
    fd = os.open(big, os.O_RDWR | os.O_CREAT, 0o644)
    os.unlink(big)
    pwrite_all(fd, os.urandom(8 << 20), 0)
    fds.append(fd)
    check(free_keep - m.statfs().f_bfree >= n * 16 + 2048, "the unlinked files hold their space")
    m.kill_daemon()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    m.detach()
    eq(info_clean(m), "no", "pmfusectl info 'clean' after a kill -9")
    m.mount()
    wait_returned(m, free_keep, inodes_keep, "after the remount that followed the kill", 1)
    eq(read_file(keep), b"k" * 100000, "the file that was not unlinked")
    m.unmount()
    eq(info_clean(m), "yes", "pmfusectl info 'clean' after a clean unmount")
    m.mount()
    eq(used_inodes(m), inodes_keep, "inodes in use after another remount")
    os.unlink(keep)
    wait_returned(m, free0, inodes0, "after removing the last file")


@test()
def unlinked_directory_open(m):
    d = m.path("d")
    os.mkdir(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(d)
    expect_errno(errno.ENOENT, pmfs.getdents_fd, fd)   # the VFS: IS_DEADDIR
    eq(os.fstat(fd).st_nlink, 0, "nlink of a removed directory")
    expect_errno(errno.ENOENT, os.open, "x", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.close(fd)
    eq(os.listdir(m.mnt), [], "root after rmdir")


AT_EMPTY_PATH = 0x1000


def link_fd(fd, path):
    """linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH): names an open file (CAP_DAC_READ_SEARCH)."""
    if pmfs.libc.linkat(fd, b"", pmfs.AT_FDCWD, os.fsencode(path), AT_EMPTY_PATH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"linkat({path}): {os.strerror(e)}")


@test(size="128M")
def o_tmpfile(m):
    """O_TMPFILE: an unnamed file (FUSE_TMPFILE, which libfuse 3.14 does not handle: initx.c),
    named by linkat unless opened with O_EXCL, freed at close if never named, and by the next
    mount after a kill -9."""
    free0, inodes0 = m.statfs().f_bfree, used_inodes(m)
    os.mkdir(m.path("d"))
    fd = os.open(m.path("d"), os.O_TMPFILE | os.O_RDWR, 0o640)
    st = os.fstat(fd)
    eq((st.st_nlink, stat.S_IMODE(st.st_mode), stat.S_ISREG(st.st_mode)), (0, 0o640, True),
       "nlink, permissions and type of an O_TMPFILE file")
    data = os.urandom(200000)
    pwrite_all(fd, data, 0)
    eq(os.listdir(m.path("d")), [], "the directory shows no name for it")
    link_fd(fd, m.path("d/named"))
    eq(os.fstat(fd).st_nlink, 1, "nlink after linkat")
    os.close(fd)
    eq(read_file(m.path("d/named")), data, "contents through the new name")
    # O_EXCL: never to be named
    fd = os.open(m.path("d"), os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    pwrite_all(fd, b"e" * 70000, 0)
    expect_errno(errno.ENOENT, link_fd, fd, m.path("d/excl"))
    os.close(fd)
    # never named: the space comes back at close
    before = m.statfs().f_bfree
    fd = os.open(m.mnt, os.O_TMPFILE | os.O_WRONLY, 0o600)
    pwrite_all(fd, os.urandom(4 << 20), 0)
    check(before - m.statfs().f_bfree >= 900, "an unnamed file holds its space while open")
    os.close(fd)
    pmfs.wait_until(lambda: m.statfs().f_bfree >= before - SLACK, 5,
                    "space of an unnamed file after close")
    # kill -9 while one is open: the next mount frees it; the named one stays
    fd = os.open(m.mnt, os.O_TMPFILE | os.O_WRONLY, 0o600)
    pwrite_all(fd, os.urandom(1 << 20), 0)
    m.kill_daemon()
    try:
        os.close(fd)
    except OSError:
        pass
    m.detach()
    m.mount()
    eq(read_file(m.path("d/named")), data, "the named one after kill -9 and remount")
    os.unlink(m.path("d/named"))
    os.rmdir(m.path("d"))
    wait_returned(m, free0, inodes0, "after removing everything")
    m.unmount()
    m.raise_problems()
    m.fsck()      # fails the test unless clean


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
