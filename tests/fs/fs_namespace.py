#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Namespace through the kernel: create, mkdir, rmdir, unlink, link counts, symlinks, name limits,
rename in all its forms, readdir entries and cookies, persistence of the tree across a remount.
Expected values are what Linux gives on ext4."""

import errno
import hashlib
import os
import socket
import stat
import time

import pmfs
from pmfs import (check, eq, expect_errno, getdents, getdents_fd, renameat2, test, touch,
                  write_file, read_file, RENAME_EXCHANGE, RENAME_NOREPLACE)

DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 1, 2, 4, 6, 8, 10, 12


def names(path):
    return sorted(os.listdir(path))


@test()
def root_directory(m):
    st = os.stat(m.mnt)
    check(stat.S_ISDIR(st.st_mode), f"root is not a directory: {st.st_mode:o}")
    eq(st.st_ino, 1, "root inode number")
    eq(st.st_nlink, 2, "nlink of an empty root")
    ents = getdents(m.mnt)
    eq(sorted(e[3] for e in ents), [b".", b".."], "entries of an empty root")
    dot = [e for e in ents if e[3] == b"."][0]
    eq(dot[0], 1, "inode number of '.' in the root")
    eq(dot[2], DT_DIR, "d_type of '.'")


@test()
def create_exclusive(m):
    p = m.path("f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.close(fd)
    st = os.stat(p)
    check(stat.S_ISREG(st.st_mode), "created file is not regular")
    eq(stat.S_IMODE(st.st_mode), 0o640, "mode of the new file (umask 022)")
    eq(st.st_size, 0, "size of the new file")
    eq(st.st_nlink, 1, "nlink of the new file")
    eq((st.st_uid, st.st_gid), (0, 0), "owner of a file created by root")
    expect_errno(errno.EEXIST, os.open, p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    # without O_EXCL an existing file is opened, not recreated
    write_file(m.path("g"), b"keep")
    fd = os.open(m.path("g"), os.O_RDWR | os.O_CREAT, 0o600)
    eq(os.read(fd, 10), b"keep", "O_CREAT on an existing file keeps its data")
    os.close(fd)
    eq(stat.S_IMODE(os.stat(m.path("g")).st_mode), 0o644, "O_CREAT did not change the mode")
    # umask applies
    old = os.umask(0o077)
    try:
        touch(m.path("u"), 0o666)
    finally:
        os.umask(old)
    eq(stat.S_IMODE(os.stat(m.path("u")).st_mode), 0o600, "mode with umask 077")
    # missing things
    expect_errno(errno.ENOENT, os.open, m.path("missing"), os.O_RDONLY)
    expect_errno(errno.ENOENT, os.open, m.path("nodir", "f"), os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENOTDIR, os.open, m.path("f", "x"), os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.EISDIR, os.open, m.mnt, os.O_WRONLY)
    expect_errno(errno.ENOTDIR, os.open, p, os.O_RDONLY | os.O_DIRECTORY)
    # O_EXCL on a dangling symlink: EEXIST; without O_EXCL the target is created
    os.symlink("target", m.path("dangling"))
    expect_errno(errno.EEXIST, os.open, m.path("dangling"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o644)
    check(not os.path.lexists(m.path("target")), "O_EXCL on a dangling symlink created the target")
    touch(m.path("dangling"))
    check(stat.S_ISREG(os.lstat(m.path("target")).st_mode),
          "O_CREAT through a dangling symlink did not create its target")


@test()
def mkdir_rmdir(m):
    d = m.path("d")
    os.mkdir(d)
    st = os.stat(d)
    check(stat.S_ISDIR(st.st_mode), "mkdir made no directory")
    eq(stat.S_IMODE(st.st_mode), 0o755, "mode of mkdir 0777 with umask 022")
    eq(st.st_nlink, 2, "nlink of a new directory")
    eq(os.stat(m.mnt).st_nlink, 3, "nlink of the root with one subdirectory")
    eq(os.listdir(d), [], "a new directory is empty")
    ents = {e[3]: e for e in getdents(d)}
    eq(ents[b"."][0], st.st_ino, "'.' names the directory")
    eq(ents[b".."][0], 1, "'..' names the root")
    expect_errno(errno.EEXIST, os.mkdir, d)
    touch(m.path("f"))
    expect_errno(errno.EEXIST, os.mkdir, m.path("f"))
    expect_errno(errno.ENOENT, os.mkdir, m.path("missing", "x"))
    expect_errno(errno.ENOTDIR, os.mkdir, m.path("f", "x"))
    os.mkdir(m.path("d", "sub"))
    eq(os.stat(d).st_nlink, 3, "nlink with one subdirectory")
    expect_errno((errno.ENOTEMPTY, errno.EEXIST), os.rmdir, d)
    os.rmdir(m.path("d", "sub"))
    eq(os.stat(d).st_nlink, 2, "nlink after rmdir of the subdirectory")
    touch(m.path("d", "file"))
    expect_errno((errno.ENOTEMPTY, errno.EEXIST), os.rmdir, d)
    os.unlink(m.path("d", "file"))
    expect_errno(errno.ENOTDIR, os.rmdir, m.path("f"))
    expect_errno(errno.ENOENT, os.rmdir, m.path("missing"))
    expect_errno(errno.EINVAL, os.rmdir, m.path("d", "."))
    expect_errno(errno.EBUSY, os.rmdir, m.mnt)
    os.rmdir(d)
    expect_errno(errno.ENOENT, os.stat, d)
    eq(os.stat(m.mnt).st_nlink, 2, "root nlink after rmdir")
    eq(names(m.mnt), ["f"], "root entries")
    # mkdir mode bits: sticky is kept, umask applies
    os.mkdir(m.path("s"), 0o1777)
    eq(stat.S_IMODE(os.stat(m.path("s")).st_mode), 0o1755, "mkdir 01777 with umask 022")


@test()
def unlink_errors(m):
    os.mkdir(m.path("d"))
    touch(m.path("f"))
    expect_errno(errno.EISDIR, os.unlink, m.path("d"))
    expect_errno(errno.ENOENT, os.unlink, m.path("missing"))
    expect_errno(errno.ENOTDIR, os.unlink, m.path("f", "x"))
    expect_errno(errno.ENOTDIR, os.stat, m.path("f") + "/")
    expect_errno(errno.ENOENT, os.stat, m.path("missing", "x"))
    os.unlink(m.path("f"))
    expect_errno(errno.ENOENT, os.stat, m.path("f"))
    expect_errno(errno.ENOENT, os.unlink, m.path("f"))
    eq(names(m.mnt), ["d"], "entries after unlink")


@test()
def hard_links(m):
    a, b = m.path("a"), m.path("b")
    write_file(a, b"hello")
    ino = os.stat(a).st_ino
    os.link(a, b)
    eq(os.stat(a).st_nlink, 2, "nlink after link")
    eq(os.stat(b).st_ino, ino, "link names the same inode")
    eq(read_file(b), b"hello", "data through the new link")
    expect_errno(errno.EEXIST, os.link, a, b)
    os.mkdir(m.path("d"))
    expect_errno(errno.EPERM, os.link, m.path("d"), m.path("d2"))
    expect_errno(errno.ENOENT, os.link, m.path("missing"), m.path("x"))
    expect_errno(errno.ENOENT, os.link, a, m.path("nodir", "x"))
    os.link(a, m.path("d", "c"))
    eq(os.stat(a).st_nlink, 3, "nlink after a link in a subdirectory")
    os.unlink(a)
    eq(os.stat(b).st_nlink, 2, "nlink after unlinking one name")
    eq(read_file(m.path("d", "c")), b"hello", "data after unlinking the first name")
    n = 100
    for i in range(n):
        os.link(b, m.path("d", f"l{i}"))
    eq(os.stat(b).st_nlink, 2 + n, "nlink after 100 more links")
    eq(len(os.listdir(m.path("d"))), n + 1, "entries of d")
    for i in range(n):
        os.unlink(m.path("d", f"l{i}"))
    eq(os.stat(b).st_nlink, 2, "nlink after removing them")
    # a symlink can be hard-linked (link does not follow)
    os.symlink("b", m.path("sl"))
    os.link(m.path("sl"), m.path("sl2"), follow_symlinks=False)
    eq(os.lstat(m.path("sl2")).st_ino, os.lstat(m.path("sl")).st_ino, "hard link of a symlink")
    eq(os.lstat(m.path("sl")).st_nlink, 2, "nlink of a hard-linked symlink")


@test()
def directory_link_counts(m):
    for i in range(5):
        os.mkdir(m.path(f"d{i}"))
    eq(os.stat(m.mnt).st_nlink, 7, "root nlink with 5 subdirectories")
    touch(m.path("f"))
    eq(os.stat(m.mnt).st_nlink, 7, "a file does not count in nlink")
    os.rename(m.path("d0"), m.path("d1", "d0"))
    eq(os.stat(m.mnt).st_nlink, 6, "root nlink after moving a subdirectory away")
    eq(os.stat(m.path("d1")).st_nlink, 3, "nlink of the directory it moved into")
    os.rename(m.path("d1", "d0"), m.path("d1", "renamed"))
    eq(os.stat(m.path("d1")).st_nlink, 3, "nlink after a rename inside the same directory")
    os.rmdir(m.path("d1", "renamed"))
    eq(os.stat(m.path("d1")).st_nlink, 2, "nlink after rmdir")


@test()
def symlinks(m):
    touch(m.path("file"))
    for n in (1, 4, 60, 255, 1000, 4095):
        target = ("t" * n)
        p = m.path(f"l{n}")
        os.symlink(target, p)
        st = os.lstat(p)
        check(stat.S_ISLNK(st.st_mode), f"symlink of {n} bytes is not a symlink")
        eq(st.st_size, n, f"st_size of a symlink to {n} bytes")
        eq(os.readlink(p), target, f"readlink of a {n}-byte target")
    eq(stat.S_IMODE(os.lstat(m.path("l1")).st_mode), 0o777, "mode of a symlink")
    expect_errno(errno.ENAMETOOLONG, os.symlink, "t" * 4096, m.path("ltoolong"))
    expect_errno(errno.ENOENT, os.symlink, "", m.path("lempty"))
    expect_errno(errno.EEXIST, os.symlink, "x", m.path("file"))
    expect_errno(errno.EEXIST, os.symlink, "x", m.path("l1"))
    expect_errno(errno.EINVAL, os.readlink, m.path("file"))
    expect_errno(errno.ENOENT, os.readlink, m.path("missing"))
    # following
    os.mkdir(m.path("d"))
    write_file(m.path("d", "data"), b"abc")
    os.symlink("../d/data", m.path("d", "rel"))
    os.symlink("d", m.path("dl"))
    eq(read_file(m.path("dl", "rel")), b"abc", "data through a directory and a relative symlink")
    os.symlink(m.path("d", "data"), m.path("abs"))
    eq(read_file(m.path("abs")), b"abc", "data through an absolute symlink")
    eq(os.stat(m.path("abs")).st_ino, os.stat(m.path("d", "data")).st_ino, "stat follows")
    # odd bytes survive in targets
    odd = b"a\nb\xff\x01 c/../.."
    os.symlink(odd, os.fsencode(m.path("odd")))
    eq(os.readlink(os.fsencode(m.path("odd"))), odd, "target with odd bytes")
    # unlink removes the link, not the target
    os.unlink(m.path("abs"))
    check(os.path.exists(m.path("d", "data")), "unlinking a symlink removed its target")


@test()
def symlink_loops(m):
    os.symlink("b", m.path("a"))
    os.symlink("a", m.path("b"))
    expect_errno(errno.ELOOP, os.stat, m.path("a"))
    expect_errno(errno.ELOOP, os.open, m.path("a"), os.O_RDONLY)
    expect_errno(errno.ELOOP, os.open, m.path("a"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.symlink("self", m.path("self"))
    expect_errno(errno.ELOOP, os.stat, m.path("self"))
    # Linux follows at most 40 links in one lookup
    write_file(m.path("end"), b"end")
    prev = "end"
    for i in range(41):
        os.symlink(prev, m.path(f"c{i}"))
        prev = f"c{i}"
    eq(read_file(m.path("c39")), b"end", "a chain of 40 symlinks resolves")
    expect_errno(errno.ELOOP, os.stat, m.path("c40"))
    touch(m.path("f"))
    os.symlink("f", m.path("lf"))
    expect_errno(errno.ELOOP, os.open, m.path("lf"), os.O_RDONLY | os.O_NOFOLLOW)


@test()
def name_length(m):
    n255 = "n" * 255
    n256 = "n" * 256
    p = m.path(n255)
    touch(p)
    check(os.path.exists(p), "a 255-byte name does not exist after create")
    eq(names(m.mnt), [n255], "readdir returns the 255-byte name")
    os.rename(p, m.path("m" * 255))
    os.link(m.path("m" * 255), m.path("l" * 255))
    os.symlink("x", m.path("s" * 255))
    os.mkdir(m.path("d" * 255))
    os.mkfifo(m.path("f" * 255))
    eq(len(os.listdir(m.mnt)), 5, "entries with 255-byte names")
    for fn, args in [
        (os.open, (m.path(n256), os.O_WRONLY | os.O_CREAT, 0o644)),
        (os.stat, (m.path(n256),)),
        (os.mkdir, (m.path(n256),)),
        (os.symlink, ("x", m.path(n256))),
        (os.link, (m.path("m" * 255), m.path(n256))),
        (os.rename, (m.path("m" * 255), m.path(n256))),
        (os.mkfifo, (m.path(n256),)),
        (os.unlink, (m.path(n256),)),
        (os.rmdir, (m.path(n256),)),
    ]:
        expect_errno(errno.ENAMETOOLONG, fn, *args)
    # bytes count, not characters: 85 x 3-byte UTF-8 = 255 bytes fits, 86 do not
    ok = "\u20ac" * 85
    touch(m.path(ok))
    check(ok in os.listdir(m.mnt), "a 255-byte UTF-8 name is listed")
    expect_errno(errno.ENAMETOOLONG, touch, m.path("\u20ac" * 86))
    eq(len(os.listdir(m.mnt)), 6, "no entry appeared for a refused name")


@test()
def odd_names(m):
    odd = [b"a b", b"tab\there", b"new\nline", b"\xff\xfe\x80", b"-", b"...", b".hidden",
           b"\xe2\x82\xac\xf0\x9f\x98\x80", b"x" * 200, b"*?[]", b"\\", b"\x01\x7f"]
    base = os.fsencode(m.mnt)
    for n in odd:
        touch(os.path.join(base, n))
    got = sorted(os.listdir(base))
    eq(got, sorted(odd), "names as written, byte for byte")
    for n in odd:
        os.unlink(os.path.join(base, n))
    eq(os.listdir(base), [], "all removed")
    # "." and ".." cannot be created
    expect_errno(errno.EEXIST, os.mkdir, m.path("."))
    expect_errno(errno.EEXIST, os.mkdir, m.path(".."))


@test()
def rename_basic(m):
    write_file(m.path("a"), b"data-a")
    ino = os.stat(m.path("a")).st_ino
    os.rename(m.path("a"), m.path("b"))
    expect_errno(errno.ENOENT, os.stat, m.path("a"))
    eq(os.stat(m.path("b")).st_ino, ino, "rename keeps the inode")
    eq(read_file(m.path("b")), b"data-a", "rename keeps the data")
    os.mkdir(m.path("d"))
    os.rename(m.path("b"), m.path("d", "c"))
    eq(names(m.mnt), ["d"], "root after moving the file into d")
    eq(names(m.path("d")), ["c"], "d after the move")
    eq(os.stat(m.path("d", "c")).st_ino, ino, "inode after a move between directories")
    # rename onto itself: nothing happens
    os.rename(m.path("d", "c"), m.path("d", "c"))
    eq(read_file(m.path("d", "c")), b"data-a", "rename onto itself")
    # two links of one inode: rename does nothing, both names stay
    os.link(m.path("d", "c"), m.path("d", "c2"))
    os.rename(m.path("d", "c"), m.path("d", "c2"))
    eq(names(m.path("d")), ["c", "c2"], "rename between links of one inode keeps both")
    eq(os.stat(m.path("d", "c")).st_nlink, 2, "nlink after rename between links")
    expect_errno(errno.ENOENT, os.rename, m.path("missing"), m.path("x"))
    expect_errno(errno.ENOENT, os.rename, m.path("d", "c"), m.path("nodir", "x"))
    expect_errno(errno.ENOTDIR, os.rename, m.path("d", "c"), m.path("d", "c2", "x"))
    # directory with contents moves with its contents
    os.makedirs(m.path("t1", "t2", "t3"))
    write_file(m.path("t1", "t2", "t3", "f"), b"deep")
    os.rename(m.path("t1", "t2"), m.path("d", "moved"))
    eq(read_file(m.path("d", "moved", "t3", "f")), b"deep", "contents of a moved directory")


@test()
def rename_over_existing(m):
    write_file(m.path("src"), b"source")
    write_file(m.path("dst"), b"destination")
    os.link(m.path("dst"), m.path("dst-link"))
    sino = os.stat(m.path("src")).st_ino
    fd = os.open(m.path("dst"), os.O_RDONLY)
    os.rename(m.path("src"), m.path("dst"))
    eq(os.stat(m.path("dst")).st_ino, sino, "target name now names the source inode")
    eq(read_file(m.path("dst")), b"source", "target content after replace")
    eq(os.stat(m.path("dst-link")).st_nlink, 1, "nlink of the replaced inode")
    eq(read_file(m.path("dst-link")), b"destination", "replaced inode still has its data")
    eq(os.pread(fd, 100, 0), b"destination", "an open fd of the replaced file still reads")
    os.close(fd)
    eq(names(m.mnt), ["dst", "dst-link"], "entries after rename over a file")
    # directories
    os.mkdir(m.path("da"))
    touch(m.path("da", "inside"))
    os.mkdir(m.path("empty"))
    os.mkdir(m.path("full"))
    touch(m.path("full", "x"))
    nl = os.stat(m.mnt).st_nlink
    dino = os.stat(m.path("da")).st_ino
    os.rename(m.path("da"), m.path("empty"))
    eq(os.stat(m.path("empty")).st_ino, dino, "dir over an empty dir")
    eq(names(m.path("empty")), ["inside"], "contents after dir over empty dir")
    eq(os.stat(m.mnt).st_nlink, nl - 1, "parent nlink after dir replaced an empty dir")
    expect_errno((errno.ENOTEMPTY, errno.EEXIST), os.rename, m.path("empty"), m.path("full"))
    expect_errno(errno.EISDIR, os.rename, m.path("dst"), m.path("full"))
    expect_errno(errno.ENOTDIR, os.rename, m.path("full"), m.path("dst"))
    eq(names(m.mnt), ["dst", "dst-link", "empty", "full"], "entries after refused renames")
    # a symlink is replaced, not followed
    os.symlink("dst", m.path("sl"))
    touch(m.path("new"))
    os.rename(m.path("new"), m.path("sl"))
    check(stat.S_ISREG(os.lstat(m.path("sl")).st_mode), "rename over a symlink replaces it")
    eq(read_file(m.path("dst")), b"source", "the symlink's target is untouched")


@test()
def rename_directory_parent(m):
    os.mkdir(m.path("a"))
    os.mkdir(m.path("b"))
    os.mkdir(m.path("a", "x"))
    bino = os.stat(m.path("b")).st_ino
    os.rename(m.path("a", "x"), m.path("b", "x"))
    dots = {e[3]: e[0] for e in getdents(m.path("b", "x"))}
    eq(dots[b".."], bino, "'..' of a moved directory (readdir)")
    eq(os.stat(m.path("b", "x", "..")).st_ino, bino, "stat of '..' of a moved directory")
    eq(os.stat(m.path("a")).st_nlink, 2, "old parent nlink")
    eq(os.stat(m.path("b")).st_nlink, 3, "new parent nlink")
    # after a remount too ('..' comes from the pool, not the dentry cache)
    m.remount()
    dots = {e[3]: e[0] for e in getdents(m.path("b", "x"))}
    eq(dots[b".."], bino, "'..' of a moved directory after remount")
    eq(os.stat(m.path("b")).st_nlink, 3, "new parent nlink after remount")
    eq(os.stat(m.path("a")).st_nlink, 2, "old parent nlink after remount")


@test()
def rename_noreplace(m):
    write_file(m.path("a"), b"A")
    write_file(m.path("b"), b"B")
    expect_errno(errno.EEXIST, renameat2, m.path("a"), m.path("b"), RENAME_NOREPLACE)
    eq((read_file(m.path("a")), read_file(m.path("b"))), (b"A", b"B"), "both unchanged")
    renameat2(m.path("a"), m.path("c"), RENAME_NOREPLACE)
    eq(names(m.mnt), ["b", "c"], "entries after RENAME_NOREPLACE to a free name")
    os.mkdir(m.path("d"))
    expect_errno(errno.EEXIST, renameat2, m.path("c"), m.path("d"), RENAME_NOREPLACE)
    expect_errno(errno.EINVAL, renameat2, m.path("b"), m.path("c"),
                 RENAME_NOREPLACE | RENAME_EXCHANGE)


@test()
def rename_exchange(m):
    write_file(m.path("a"), b"A")
    write_file(m.path("b"), b"B")
    ia, ib = os.stat(m.path("a")).st_ino, os.stat(m.path("b")).st_ino
    renameat2(m.path("a"), m.path("b"), RENAME_EXCHANGE)
    eq((os.stat(m.path("a")).st_ino, os.stat(m.path("b")).st_ino), (ib, ia), "inodes swapped")
    eq((read_file(m.path("a")), read_file(m.path("b"))), (b"B", b"A"), "contents swapped")
    # file <-> directory in different parents: nlink of both parents follows the directory
    os.mkdir(m.path("p1"))
    os.mkdir(m.path("p2"))
    os.mkdir(m.path("p1", "dir"))
    touch(m.path("p1", "dir", "inside"))
    touch(m.path("p2", "file"))
    p1ino, p2ino = os.stat(m.path("p1")).st_ino, os.stat(m.path("p2")).st_ino
    renameat2(m.path("p1", "dir"), m.path("p2", "file"), RENAME_EXCHANGE)
    check(stat.S_ISREG(os.stat(m.path("p1", "dir")).st_mode), "p1/dir is now the file")
    check(stat.S_ISDIR(os.stat(m.path("p2", "file")).st_mode), "p2/file is now the directory")
    eq(names(m.path("p2", "file")), ["inside"], "the directory kept its contents")
    eq(os.stat(m.path("p1")).st_nlink, 2, "nlink of the parent that lost the directory")
    eq(os.stat(m.path("p2")).st_nlink, 3, "nlink of the parent that gained the directory")
    dots = {e[3]: e[0] for e in getdents(m.path("p2", "file"))}
    eq(dots[b".."], p2ino, "'..' of the exchanged directory")
    m.remount()
    eq(os.stat(m.path("p1")).st_nlink, 2, "nlink of p1 after remount")
    eq(os.stat(m.path("p2")).st_nlink, 3, "nlink of p2 after remount")
    eq({e[3]: e[0] for e in getdents(m.path("p2", "file"))}[b".."], p2ino,
       "'..' after remount")
    check(p1ino != p2ino, "distinct inodes")
    expect_errno(errno.ENOENT, renameat2, m.path("a"), m.path("missing"), RENAME_EXCHANGE)
    expect_errno(errno.ENOENT, renameat2, m.path("missing"), m.path("a"), RENAME_EXCHANGE)
    # exchange with itself is allowed and changes nothing
    renameat2(m.path("a"), m.path("a"), RENAME_EXCHANGE)
    eq(read_file(m.path("a")), b"B", "exchange with itself")


@test()
def rename_cycles(m):
    os.makedirs(m.path("a", "b", "c"))
    expect_errno(errno.EINVAL, os.rename, m.path("a"), m.path("a", "b", "c", "x"))
    expect_errno(errno.EINVAL, os.rename, m.path("a"), m.path("a", "b", "x"))
    expect_errno(errno.EINVAL, renameat2, m.path("a"), m.path("a", "b"), RENAME_EXCHANGE)
    # target is an ancestor of the source
    expect_errno((errno.ENOTEMPTY, errno.EINVAL), os.rename, m.path("a", "b"), m.path("a"))
    # nothing moved
    check(os.path.isdir(m.path("a", "b", "c")), "tree intact after refused renames")
    eq(os.stat(m.path("a")).st_nlink, 3, "nlink of a")
    # after a remount the dentry cache is cold: the daemon must refuse too
    m.remount()
    expect_errno(errno.EINVAL, os.rename, m.path("a"), m.path("a", "b", "c", "x"))
    check(os.path.isdir(m.path("a", "b", "c")), "tree intact after remount")


@test()
def rename_across_mounts(m):
    other = m.another()
    write_file(m.path("f"), b"x")
    os.mkdir(m.path("d"))
    touch(other.path("g"))
    expect_errno(errno.EXDEV, os.rename, m.path("f"), other.path("f"))
    expect_errno(errno.EXDEV, os.rename, m.path("d"), other.path("d"))
    expect_errno(errno.EXDEV, os.link, m.path("f"), other.path("f"))
    expect_errno(errno.EXDEV, renameat2, m.path("f"), other.path("g"), RENAME_EXCHANGE)
    eq(names(m.mnt), ["d", "f"], "first mount unchanged")
    eq(names(other.mnt), ["g"], "second mount unchanged")


@test()
def readdir_types_and_inodes(m):
    touch(m.path("reg"))
    os.mkdir(m.path("dir"))
    os.symlink("reg", m.path("lnk"))
    os.mkfifo(m.path("fifo"))
    os.mknod(m.path("chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(m.path("blk"), stat.S_IFBLK | 0o600, os.makedev(7, 0))
    s = socket.socket(socket.AF_UNIX)
    s.bind(m.path("sock"))
    s.close()
    want = {b"reg": DT_REG, b"dir": DT_DIR, b"lnk": DT_LNK, b"fifo": DT_FIFO, b"chr": DT_CHR,
            b"blk": DT_BLK, b"sock": DT_SOCK, b".": DT_DIR, b"..": DT_DIR}
    for attempt in ("before", "after remount"):
        ents = getdents(m.mnt)
        got = {}
        for ino, off, dt, name in ents:
            check(name not in got, f"{name!r} listed twice ({attempt})")
            got[name] = (ino, dt)
        eq(sorted(got), sorted(want), f"names ({attempt})")
        for name, dt in want.items():
            eq(got[name][1], dt, f"d_type of {name!r} ({attempt})")
            if name not in (b".", b".."):
                eq(got[name][0], os.lstat(os.path.join(os.fsencode(m.mnt), name)).st_ino,
                   f"d_ino of {name!r} ({attempt})")
        if attempt == "before":
            m.remount()


@test()
def readdir_cookies(m):
    n = 500
    d = m.path("d")
    os.mkdir(d)
    for i in range(n):
        touch(os.path.join(d, f"entry-{i:04d}-{'x' * (i % 50)}"))
    full = [e for e in getdents(d) if e[3] not in (b".", b"..")]
    eq(len(full), n, "entries listed")
    eq(len({e[3] for e in full}), n, "distinct names")
    # read part of the listing with a small buffer, remember the cookie, continue from it in a
    # fresh open: the rest comes exactly once
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    first = []
    while len(first) < n // 3:
        chunk = getdents_fd(fd, 512)
        check(chunk, "listing ended early")
        first.extend(chunk)
    cookie = first[-1][1]
    os.close(fd)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.lseek(fd, cookie, os.SEEK_SET)
    rest = []
    while True:
        chunk = getdents_fd(fd, 700)
        if not chunk:
            break
        rest.extend(chunk)
    os.close(fd)
    seen = [e[3] for e in first + rest]
    eq(len(seen), len(set(seen)), "no entry twice across a seek to a saved cookie")
    eq(sorted(set(seen) - {b".", b".."}), sorted(e[3] for e in full),
       "every entry once across a seek to a saved cookie")
    # rewinding gives the same listing again
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    a = getdents_fd(fd, 1 << 16)
    os.lseek(fd, 0, os.SEEK_SET)
    b = getdents_fd(fd, 1 << 16)
    os.close(fd)
    eq([e[3] for e in a], [e[3] for e in b], "listing after rewinddir")


@test()
def readdir_offsets_seekable(m):
    # every offset readdir hands out is a valid file offset (xfstests generic/257): seeking to
    # the offset that came with an entry continues the listing right after that entry
    d = m.path("d")
    os.mkdir(d)
    for i in range(168):
        touch(os.path.join(d, str(i)))
    full = getdents(d)
    eq(len(full), 170, "entries listed, '.' and '..' included")
    negative = [(e[3], e[1]) for e in full if e[1] < 0]
    eq(negative, [], "entries whose next offset is negative")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, e in enumerate(full[:-1]):
            eq(os.lseek(fd, e[1], os.SEEK_SET), e[1], f"lseek to the offset after {e[3]}")
            nxt = getdents_fd(fd, 512)
            check(nxt, f"nothing after the offset of {e[3]}")
            eq(nxt[0][3], full[i + 1][3], f"the entry after {e[3]} once seeked to its offset")
    finally:
        os.close(fd)


@test()
def file_handles_after_cache_drop(m):
    # open_by_handle_at once the kernel has forgotten the inodes (xfstests generic/426): the
    # kernel then looks up "." in the handle's inode, a file's as well as a directory's
    write_file(m.path("f"), b"by handle")
    os.mkdir(m.path("d"))
    write_file(m.path("d/g"), b"in a directory")
    handles = {n: pmfs.name_to_handle(m.path(n)) for n in ("f", "d", "d/g")}
    pmfs.drop_caches(2)
    mfd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = pmfs.open_by_handle(mfd, handles["f"])
        eq(os.read(fd, 100), b"by handle", "a file opened by its handle after a cache drop")
        os.close(fd)
        fd = pmfs.open_by_handle(mfd, handles["d"], os.O_RDONLY | os.O_DIRECTORY)
        eq(sorted(e[3] for e in getdents_fd(fd)), [b".", b"..", b"g"],
           "a directory opened by its handle")
        os.close(fd)
        pmfs.drop_caches(2)
        fd = pmfs.open_by_handle(mfd, handles["d/g"])
        eq(os.read(fd, 100), b"in a directory", "a file in a subdirectory by its handle")
        os.close(fd)
        # a removed file's handle goes stale once the kernel has let go of the inode (its
        # FORGET reaches the daemon asynchronously: retry for a while, closing what opened)
        os.unlink(m.path("f"))
        deadline = time.time() + 10 * pmfs.TIME_FACTOR
        while True:
            pmfs.drop_caches(2)
            try:
                fd = pmfs.open_by_handle(mfd, handles["f"])
            except OSError as e:
                eq(e.errno, errno.ESTALE, "open_by_handle_at of a removed file")
                break
            os.close(fd)
            check(time.time() < deadline, "a removed file's handle never went stale")
            time.sleep(0.2)
    finally:
        os.close(mfd)


def snapshot(root):
    """Everything observable about a tree, per path (atime left out)."""
    out = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for n in [b"."] + dirnames + filenames:
            p = os.path.join(dirpath, n) if n != b"." else dirpath
            st = os.lstat(p)
            rec = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_ino, st.st_nlink,
                   st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]
            if stat.S_ISREG(st.st_mode):
                rec.append(hashlib.sha256(read_file(p)).hexdigest())
                rec.append(st.st_blocks)
            elif stat.S_ISLNK(st.st_mode):
                rec.append(os.readlink(p))
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                rec.append(sorted((x, os.getxattr(p, x)) for x in os.listxattr(p)))
            if stat.S_ISDIR(st.st_mode):
                rec.append(sorted(os.listdir(p)))
            out[os.path.relpath(p, broot)] = rec
    return out


@test()
def remount_preserves_tree(m):
    rng = m.rng
    os.makedirs(m.path("a", "b", "c"))
    os.mkdir(m.path("e"), 0o700)
    for i in range(30):
        d = rng.choice(["a", "a/b", "a/b/c", "e", "."])
        p = m.path(d, f"f{i}")
        write_file(p, rng.randbytes(rng.choice([0, 1, 100, 4096, 5000, 70000])))
        os.chmod(p, rng.choice([0o600, 0o644, 0o755, 0o4755, 0o2711, 0o1644]))
        os.chown(p, rng.randrange(0, 3000), rng.randrange(0, 3000))
        os.utime(p, ns=(rng.randrange(0, 2 ** 33) * 10 ** 9 + rng.randrange(10 ** 9),
                        rng.randrange(0, 2 ** 33) * 10 ** 9 + rng.randrange(10 ** 9)))
        if i % 3 == 0:
            os.setxattr(p, f"user.k{i}", rng.randbytes(rng.choice([1, 200, 3000])))
    write_file(m.path("a", "linked"), b"two names")
    os.link(m.path("a", "linked"), m.path("hard"))
    os.symlink("a/b/c", m.path("sym"))
    os.symlink("x" * 3000, m.path("a", "longsym"))
    os.mkfifo(m.path("a", "fifo"), 0o640)
    os.mknod(m.path("e", "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chown(m.path("a", "b"), 1000, 1000)
    os.setxattr(m.path("a"), "user.dir", b"on a directory")
    os.setxattr(m.path("a"), "trusted.t", b"trusted value")
    before = snapshot(m.mnt)
    m.remount()
    after = snapshot(m.mnt)
    eq(sorted(after), sorted(before), "paths after remount")
    for k in sorted(before):
        eq(after[k], before[k], f"{k!r} after remount [type, mode, ino, nlink, uid, gid, size, "
           "mtime, ctime, rdev, ...]")


@test()
def inode_numbers_not_reused(m):
    inos = set()
    for i in range(200):
        touch(m.path(f"f{i}"))
        inos.add(os.stat(m.path(f"f{i}")).st_ino)
    eq(len(inos), 200, "distinct inode numbers of 200 files")
    gone = set()
    for i in range(0, 200, 2):
        gone.add(os.stat(m.path(f"f{i}")).st_ino)
        os.unlink(m.path(f"f{i}"))
    fresh = set()
    for i in range(100):
        touch(m.path(f"g{i}"))
        fresh.add(os.stat(m.path(f"g{i}")).st_ino)
    check(not (fresh & inos), f"inode numbers reused: {sorted(fresh & inos)[:10]}")
    m.remount()
    for i in range(20):
        touch(m.path(f"h{i}"))
        ino = os.stat(m.path(f"h{i}")).st_ino
        check(ino not in inos and ino not in fresh, f"inode number {ino} reused after remount")
    for i in range(1, 200, 2):
        check(os.stat(m.path(f"f{i}")).st_ino in inos, "inode number changed across remount")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
