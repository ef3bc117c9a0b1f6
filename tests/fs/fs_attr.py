#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Attributes through the kernel: chmod and chown rules (as root and as unprivileged users),
setuid/setgid clearing, sticky and setgid directories, permission checks, utimensat with
UTIME_NOW/UTIME_OMIT and nanoseconds, which timestamps each operation changes, special files,
truncate, statfs/df accounting. Expected values are what Linux gives on ext4."""

import ctypes
import errno
import mmap
import os
import socket
import stat
import struct
import subprocess
import time

import pmfs
import reflinkio
from pmfs import (check, eq, expect_errno, expect_errno_as, run_as, test, touch,
                  write_file, read_file, utimensat, UTIME_NOW, UTIME_OMIT, Failure)

U1, G1 = 1001, 1001
U2, G2 = 1002, 1002
GX = 1234   # a group neither user is in


def mode_of(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def shared_dir(m, name="pub", mode=0o777):
    d = m.path(name)
    os.mkdir(d)
    os.chmod(d, mode)
    return d


def user_file(m, name, uid, gid, mode, data=b""):
    p = m.path(name)
    write_file(p, data)
    os.chown(p, uid, gid)
    os.chmod(p, mode)
    return p


@test()
def chmod_as_root(m):
    p = m.path("f")
    touch(p)
    for mode in (0o7777, 0o4755, 0o2755, 0o1777, 0o0, 0o640, 0o777):
        os.chmod(p, mode)
        eq(mode_of(p), mode, f"mode after chmod {mode:o}")
    os.mkdir(m.path("d"))
    os.chmod(m.path("d"), 0o3775)
    eq(mode_of(m.path("d")), 0o3775, "directory mode after chmod 3775")
    eq(stat.S_IFMT(os.stat(m.path("d")).st_mode), stat.S_IFDIR, "chmod kept the file type")
    os.chmod(p, 0o4711)
    m.remount()
    eq(mode_of(p), 0o4711, "mode after remount")
    eq(mode_of(m.path("d")), 0o3775, "directory mode after remount")


@test()
def chmod_as_user(m):
    p = user_file(m, "mine", U1, G1, 0o644)
    run_as(U1, G1, os.chmod, p, 0o600)
    eq(mode_of(p), 0o600, "owner chmod")
    expect_errno_as(U2, G2, errno.EPERM, os.chmod, p, 0o666)
    eq(mode_of(p), 0o600, "mode after a refused chmod")
    # setgid on a file whose group the owner is not in: the bit is silently dropped
    os.chown(p, U1, GX)
    run_as(U1, G1, os.chmod, p, 0o2755)
    eq(mode_of(p), 0o755, "setgid dropped by chmod from a non-member of the file's group")
    run_as(U1, G1, os.chmod, p, 0o2755, groups=[GX])
    eq(mode_of(p), 0o2755, "setgid kept by chmod from a member of the file's group")
    run_as(U1, G1, os.chmod, p, 0o4755)
    eq(mode_of(p), 0o4755, "owner may set setuid")
    run_as(U1, G1, os.chmod, p, 0o1755)
    eq(mode_of(p), 0o1755, "owner may set sticky on a file")


@test()
def chown_as_root(m):
    p = m.path("f")
    touch(p)
    os.chown(p, 4242, 4343)
    st = os.stat(p)
    eq((st.st_uid, st.st_gid), (4242, 4343), "owner after root chown")
    os.chown(p, -1, 77)
    eq((os.stat(p).st_uid, os.stat(p).st_gid), (4242, 77), "chown -1 keeps the uid")
    os.chown(p, 78, -1)
    eq((os.stat(p).st_uid, os.stat(p).st_gid), (78, 77), "chown -1 keeps the gid")
    os.chown(p, 2 ** 32 - 2, 2 ** 32 - 2)
    eq((os.stat(p).st_uid, os.stat(p).st_gid), (2 ** 32 - 2, 2 ** 32 - 2), "largest ids")
    os.symlink("f", m.path("l"))
    os.chown(m.path("l"), 55, 56, follow_symlinks=False)
    eq((os.lstat(m.path("l")).st_uid, os.lstat(m.path("l")).st_gid), (55, 56), "lchown")
    eq(os.stat(p).st_uid, 2 ** 32 - 2, "lchown did not follow")
    m.remount()
    eq((os.lstat(m.path("l")).st_uid, os.lstat(m.path("l")).st_gid), (55, 56),
       "symlink owner after remount")
    eq((os.stat(p).st_uid, os.stat(p).st_gid), (2 ** 32 - 2, 2 ** 32 - 2),
       "file owner after remount")


@test()
def chown_as_user(m):
    p = user_file(m, "f", U1, G1, 0o644)
    run_as(U1, G1, os.chown, p, -1, GX, groups=[GX])
    eq(os.stat(p).st_gid, GX, "owner chgrp to a group it is in")
    expect_errno_as(U1, G1, errno.EPERM, os.chown, p, -1, 999)
    expect_errno_as(U1, G1, errno.EPERM, os.chown, p, U2, -1)
    run_as(U1, G1, os.chown, p, U1, -1)  # no change: allowed
    expect_errno_as(U2, G2, errno.EPERM, os.chown, p, -1, G2)
    expect_errno_as(U2, G2, errno.EPERM, os.chown, p, U2, G2)
    st = os.stat(p)
    eq((st.st_uid, st.st_gid), (U1, GX), "owner after refused chowns")


@test()
def chown_clears_setid(m):
    # chown of a regular file clears setuid, and setgid when group-executable, even as root
    p = user_file(m, "a", U1, G1, 0o6755)
    os.chown(p, U2, G2)
    eq(mode_of(p), 0o755, "setuid+setgid (group exec) after chown by root")
    p = user_file(m, "b", U1, G1, 0o2745)
    os.chown(p, U2, -1)
    eq(mode_of(p), 0o2745, "setgid without group exec is kept by chown")
    p = user_file(m, "c", U1, G1, 0o4755)
    run_as(U1, G1, os.chown, p, -1, GX, groups=[GX])
    eq(mode_of(p), 0o755, "setuid after chgrp by the owner")
    d = m.path("d")
    os.mkdir(d)
    os.chmod(d, 0o2755)
    os.chown(d, U1, G1)
    eq(mode_of(d), 0o2755, "directories keep setgid across chown")


def write_some(p):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def truncate_some(p):
    os.truncate(p, 10)


CAP_FSETID = 4
PR_CAPBSET_DROP = 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _drop_fsetid_then(fn, *args):
    """In a child: drops CAP_FSETID from the bounding, effective, permitted and inheritable
    sets (what `setpriv --bounding-set=-fsetid` leaves root with), then runs fn(*args)."""
    libc = pmfs.libc
    if libc.prctl(PR_CAPBSET_DROP, CAP_FSETID, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(24)          # two __user_cap_data_struct
    if libc.capget(hdr, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    eff, perm, inh = struct.unpack_from("<III", data.raw, 0)
    bit = ~(1 << CAP_FSETID) & 0xffffffff
    struct.pack_into("<III", data, 0, eff & bit, perm & bit, inh & bit)
    if libc.capset(hdr, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    return fn(*args)


def without_fsetid(m, fn, *args):
    """Runs fn(*args) as root without CAP_FSETID (xfstests generic/673-675 use capsh)."""
    return pmfs.Child(_drop_fsetid_then, (fn,) + args, {}, owner=m).wait()


@test()
def write_clears_setid(m):
    p = user_file(m, "nonowner", U1, G1, 0o6777, b"data")
    run_as(U2, G2, write_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after a write by a non-owner")
    # setgid without group exec, written by a non-member of the file's group: dropped since
    # Linux 6.2 (setattr_should_drop_sgid), as on ext4 and tmpfs; a member keeps it
    p = user_file(m, "sgid-noexec", U1, G1, 0o2766, b"data")
    run_as(U2, G2, write_some, p)
    eq(mode_of(p), 0o766, "setgid without group exec after a write by a non-member")
    p = user_file(m, "sgid-noexec-member", U1, G1, 0o2766, b"data")
    run_as(U2, G2, write_some, p, groups=(G1,))
    eq(mode_of(p), 0o2766, "setgid without group exec after a write by a group member")
    p = user_file(m, "owner", U1, G1, 0o6777, b"data")
    run_as(U1, G1, write_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after a write by the owner (no CAP_FSETID)")
    p = user_file(m, "root", U1, G1, 0o6777, b"data")
    write_some(p)
    eq(mode_of(p), 0o6777, "setuid+setgid after a write by root (CAP_FSETID)")
    p = user_file(m, "root-nofsetid", U1, G1, 0o6777, b"data")
    without_fsetid(m, write_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after a write by root without CAP_FSETID")
    p = user_file(m, "root-nofsetid-sgid", 0, 0, 0o6745, b"data")
    without_fsetid(m, write_some, p)
    eq(mode_of(p), 0o2745, "setgid without group exec after a write by root without "
       "CAP_FSETID, in the file's group")
    p = user_file(m, "trunc", U1, G1, 0o6777, b"data")
    run_as(U2, G2, truncate_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after truncate by a non-owner")
    eq(os.stat(p).st_size, 10, "size after the non-owner's truncate")
    p = user_file(m, "trunc-sgid", U1, G1, 0o2766, b"data")
    run_as(U2, G2, truncate_some, p)
    eq(mode_of(p), 0o766, "setgid without group exec after truncate by a non-member")
    p = user_file(m, "trunc-nofsetid", U1, G1, 0o6777, b"data")
    without_fsetid(m, truncate_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after truncate by root without CAP_FSETID")


STATX_MODE = 0x2
pmfs.libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                            ctypes.c_void_p]


def statx_mode(p):
    """The mode as `stat -c %A` asks for it: statx with STATX_MODE alone, which the kernel
    answers from its cached attributes while they have not timed out."""
    buf = ctypes.create_string_buffer(256)
    if pmfs.libc.statx(pmfs.AT_FDCWD, os.fsencode(p), 0, STATX_MODE, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"statx({p}): {os.strerror(e)}")
    return stat.S_IMODE(struct.unpack_from("<H", buf.raw, 28)[0])


def direct_write_some(p):
    buf = mmap.mmap(-1, 4096)             # page-aligned, as O_DIRECT wants
    buf.write(b"d" * 4096)
    fd = os.open(p, os.O_WRONLY | os.O_DIRECT)
    try:
        os.write(fd, buf)
    finally:
        os.close(fd)


def remap_some(how):
    """An act that maps or copies the block at 0 of the mount's "remap-src" (made by the test,
    readable by all) to offset 4096 of p: FICLONERANGE or copy_file_range."""
    def act(p):
        src = os.path.join(os.path.dirname(p), "remap-src")
        sfd = os.open(src, os.O_RDONLY)
        try:
            fd = os.open(p, os.O_WRONLY)
            try:
                if how == "clone":
                    reflinkio.clone_range(fd, sfd, 0, 4096, 4096)
                else:
                    eq(os.copy_file_range(sfd, fd, 4096, 0, 4096), 4096, "bytes copied")
            finally:
                os.close(fd)
        finally:
            os.close(sfd)
    return act


def falloc_some(mode):
    def act(p):
        fd = os.open(p, os.O_WRONLY)
        try:
            pmfs.fallocate(fd, mode, 4096, 4096)
        finally:
            os.close(fd)
    return act


@test()
def setid_cleared_and_seen_at_once(m):
    # xfstests generic/355 (O_DIRECT write), 683-685 (fallocate, punch, zero range), 673 and
    # 675 (clone), and copy_file_range: a change by a user without CAP_FSETID drops setuid and
    # setgid (group-executable), and `stat -c %A` right after shows it, not the mode the kernel
    # cached before
    acts = (("an O_DIRECT write", direct_write_some), ("a write", write_some),
            ("fallocate", falloc_some(0)),
            ("fallocate KEEP_SIZE", falloc_some(pmfs.FALLOC_FL_KEEP_SIZE)),
            ("a punched hole", falloc_some(pmfs.FALLOC_FL_PUNCH_HOLE | pmfs.FALLOC_FL_KEEP_SIZE)),
            ("a zeroed range", falloc_some(pmfs.FALLOC_FL_ZERO_RANGE)),
            ("a clone", remap_some("clone")), ("copy_file_range", remap_some("copy")))
    src = m.path("remap-src")
    write_file(src, b"s" * 4096)
    os.chmod(src, 0o644)
    for i, (what, act) in enumerate(acts):
        p = user_file(m, f"f{i}", U1, G1, 0o6777, b"x" * 16384)
        eq(statx_mode(p), 0o6777, f"mode before {what}")      # cached by the kernel now
        run_as(U2, G2, act, p)
        eq(statx_mode(p), 0o777, f"mode seen right after {what} by a non-owner")
        eq(mode_of(p), 0o777, f"mode after {what} by a non-owner")
        # setgid without group exec, changed by a caller outside the file's group: the VFS
        # drops it since 6.2 (setattr_should_drop_sgid; generic/683-685), and so does pmfuse
        p = user_file(m, f"g{i}", U1, G1, 0o6766, b"x" * 16384)
        run_as(U2, G2, act, p)
        eq(statx_mode(p), 0o766, f"setgid (no group exec) after {what} by a non-member")
        # ... but stays when the caller is in the file's group
        p = user_file(m, f"h{i}", U1, G2, 0o6766, b"x" * 16384)
        run_as(U2, G2, act, p)
        eq(statx_mode(p), 0o2766, f"setgid (no group exec) after {what} by a group member")
        # root keeps both (CAP_FSETID)
        p = user_file(m, f"r{i}", U1, G1, 0o6777, b"x" * 16384)
        act(p)
        eq(mode_of(p), 0o6777, f"mode after {what} by root")
        # root without CAP_FSETID loses them as anyone does
        p = user_file(m, f"n{i}", U1, G1, 0o6777, b"x" * 16384)
        eq(statx_mode(p), 0o6777, f"mode before {what}")
        without_fsetid(m, act, p)
        eq(statx_mode(p), 0o777, f"mode seen right after {what} by root without CAP_FSETID")


def file_caps():
    """A valid security.capability value (VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE)."""
    return struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)


@test()
def privileges_dropped_after_many_writes(m):
    """Writes, truncation and chown drop setuid/setgid and file capabilities also when the
    file was written before: the kernel then skips its per-write privilege check (S_NOSEC,
    with HANDLE_KILLPRIV_V2) until a mode change or a security xattr makes it look again."""
    p = user_file(m, "f", U1, G1, 0o777, b"data")
    for _ in range(5):                    # writes that need no check; the inode goes S_NOSEC
        run_as(U2, G2, write_some, p)
    os.chmod(p, 0o6777)
    run_as(U2, G2, write_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after chmod, then a write by a non-owner")
    for what, act, who in (("write as root", write_some, None),
                           ("write as a non-owner", write_some, (U2, G2)),
                           ("truncate as root", truncate_some, None),
                           ("truncate as a non-owner", truncate_some, (U2, G2))):
        for _ in range(3):
            write_some(p)                 # no privileges: nothing to check from here on
        os.setxattr(p, "security.capability", file_caps())
        eq(os.getxattr(p, "security.capability"), file_caps(), "capabilities stored")
        if who:
            run_as(who[0], who[1], act, p)
        else:
            act(p)
        check("security.capability" not in os.listxattr(p),
              f"file capabilities still there after a {what}")
    os.setxattr(p, "security.capability", file_caps())
    os.chown(p, U2, G2)
    check("security.capability" not in os.listxattr(p), "file capabilities after chown")
    # root keeps setuid/setgid on write and truncate (CAP_FSETID), also after earlier writes
    os.chmod(p, 0o6777)
    write_some(p)
    truncate_some(p)
    eq(mode_of(p), 0o6777, "setuid+setgid after a write and a truncate by root")
    m.remount()
    eq(mode_of(p), 0o6777, "mode after remount")
    run_as(U2, G2, truncate_some, p)
    eq(mode_of(p), 0o777, "setuid+setgid after a truncate by the owner after remount")


@test()
def permissions_enforced(m):
    p = user_file(m, "private", U1, G1, 0o600, b"secret")
    eq(run_as(U1, G1, read_file, p), b"secret", "owner reads a 0600 file")
    expect_errno_as(U2, G2, errno.EACCES, read_file, p)
    expect_errno_as(U2, G2, errno.EACCES, write_some, p)
    eq(read_file(p), b"secret", "root reads any file")
    ro = user_file(m, "ro", U1, G1, 0o444, b"ro")
    expect_errno_as(U1, G1, errno.EACCES, write_some, ro)
    grp = user_file(m, "grp", U1, G2, 0o640, b"group")
    eq(run_as(U2, G2, read_file, grp), b"group", "group member reads a 0640 file")
    expect_errno_as(U2, 999, errno.EACCES, read_file, grp)
    eq(run_as(U2, 999, read_file, grp, groups=[G2]), b"group", "supplementary group reads")
    d = m.path("closed")
    os.mkdir(d, 0o700)
    os.chown(d, U1, G1)
    touch(os.path.join(d, "in"))
    expect_errno_as(U2, G2, errno.EACCES, os.stat, os.path.join(d, "in"))
    expect_errno_as(U2, G2, errno.EACCES, os.listdir, d)
    run_as(U1, G1, os.stat, os.path.join(d, "in"))
    # write permission on the directory is needed to create and remove
    expect_errno_as(U2, G2, errno.EACCES, touch, m.path("new"))
    expect_errno_as(U2, G2, errno.EACCES, os.unlink, p)
    expect_errno_as(U2, G2, errno.EACCES, os.mkdir, m.path("nd"))
    # exec only: can look up but not list
    x = m.path("xonly")
    os.mkdir(x)
    os.chmod(x, 0o711)
    touch(os.path.join(x, "known"))
    run_as(U2, G2, os.stat, os.path.join(x, "known"))
    expect_errno_as(U2, G2, errno.EACCES, os.listdir, x)
    # executing needs x (exec of a script through the mount)
    sh = m.path("script")
    write_file(sh, b"#!/bin/sh\nexit 3\n")
    os.chmod(sh, 0o755)
    eq(subprocess.run([sh]).returncode, 3, "a script on the mount runs")
    os.chmod(sh, 0o644)
    expect_errno_as(U2, G2, errno.EACCES, os.execv, sh, [sh])


@test()
def sticky_directory(m):
    d = shared_dir(m, "tmp", 0o1777)
    f1 = os.path.join(d, "f1")
    run_as(U1, G1, touch, f1)
    eq(os.stat(f1).st_uid, U1, "owner of the file U1 made")
    expect_errno_as(U2, G2, errno.EPERM, os.unlink, f1)
    expect_errno_as(U2, G2, errno.EPERM, os.rename, f1, os.path.join(d, "stolen"))
    f2 = os.path.join(d, "f2")
    run_as(U2, G2, touch, f2)
    expect_errno_as(U2, G2, errno.EPERM, os.rename, f2, f1)
    check(os.path.exists(f1), "f1 survived")
    run_as(U1, G1, os.rename, f1, os.path.join(d, "f1b"))
    run_as(U1, G1, os.unlink, os.path.join(d, "f1b"))
    # the directory's owner may remove anything in it
    d2 = shared_dir(m, "owned", 0o1777)
    os.chown(d2, U2, G2)
    run_as(U1, G1, touch, os.path.join(d2, "x"))
    run_as(U2, G2, os.unlink, os.path.join(d2, "x"))
    # root may too
    run_as(U1, G1, touch, os.path.join(d, "y"))
    os.unlink(os.path.join(d, "y"))
    # without the sticky bit anyone with write permission may
    d3 = shared_dir(m, "open", 0o777)
    run_as(U1, G1, touch, os.path.join(d3, "z"))
    run_as(U2, G2, os.unlink, os.path.join(d3, "z"))
    eq(sorted(os.listdir(d)), ["f2"], "what is left in the sticky directory")


@test()
def setgid_directory(m):
    d = shared_dir(m, "sg", 0o2777)
    os.chown(d, 0, GX)
    os.chmod(d, 0o2777)
    run_as(U1, G1, touch, os.path.join(d, "f"))
    st = os.stat(os.path.join(d, "f"))
    eq((st.st_uid, st.st_gid), (U1, GX), "file in a setgid directory takes the directory's group")
    run_as(U1, G1, os.mkdir, os.path.join(d, "sub"))
    st = os.stat(os.path.join(d, "sub"))
    eq((st.st_uid, st.st_gid), (U1, GX), "subdirectory takes the directory's group")
    check(st.st_mode & stat.S_ISGID, "subdirectory of a setgid directory is setgid")
    run_as(U1, G1, os.mkfifo, os.path.join(d, "fifo"))
    eq(os.stat(os.path.join(d, "fifo")).st_gid, GX, "fifo takes the directory's group")
    run_as(U1, G1, os.symlink, "x", os.path.join(d, "sl"))
    eq(os.lstat(os.path.join(d, "sl")).st_gid, GX, "symlink takes the directory's group")
    # creating a setgid file in it while not in its group: the bit is stripped
    def create_sgid(p):
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o2755))
    run_as(U1, G1, create_sgid, os.path.join(d, "sgidfile"))
    eq(mode_of(os.path.join(d, "sgidfile")), 0o755,
       "setgid stripped from a file created by a non-member in a setgid directory")
    # outside a setgid directory the creator's group is used
    plain = shared_dir(m, "plain", 0o777)
    os.chown(plain, 0, GX)
    run_as(U1, G1, touch, os.path.join(plain, "f"))
    eq(os.stat(os.path.join(plain, "f")).st_gid, G1, "file in a plain directory")
    run_as(U1, G1, os.mkdir, os.path.join(plain, "sub"))
    check(not os.stat(os.path.join(plain, "sub")).st_mode & stat.S_ISGID,
          "subdirectory of a plain directory is not setgid")
    m.remount()
    eq(os.stat(os.path.join(d, "f")).st_gid, GX, "group after remount")


@test()
def new_inode_ownership(m):
    d = shared_dir(m)
    run_as(U1, G2, touch, os.path.join(d, "f"))
    run_as(U1, G2, os.mkdir, os.path.join(d, "d"))
    run_as(U1, G2, os.symlink, "t", os.path.join(d, "l"))
    run_as(U1, G2, os.mkfifo, os.path.join(d, "p"))
    s = run_as(U1, G2, lambda: socket.socket(socket.AF_UNIX).bind(os.path.join(d, "s")))
    check(s is None, "bind returned")
    for n in ("f", "d", "l", "p", "s"):
        st = os.lstat(os.path.join(d, n))
        eq((st.st_uid, st.st_gid), (U1, G2), f"owner of {n} made by uid {U1} gid {G2}")
    os.link(os.path.join(d, "f"), os.path.join(d, "f2"))
    st = os.stat(os.path.join(d, "f2"))
    eq((st.st_uid, st.st_gid), (U1, G2), "a hard link does not change the owner")


def stat_ns(p):
    st = os.lstat(p)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


@test()
def utimensat_times(m):
    p = m.path("f")
    touch(p)
    t = (1234567890, 123456789)
    utimensat(p, t, (1000000000, 999999999))
    a, mt, c = stat_ns(p)
    eq(a, 1234567890123456789, "atime to the nanosecond")
    eq(mt, 1000000000999999999, "mtime to the nanosecond")
    # UTIME_OMIT keeps, UTIME_NOW sets now
    before = time.time_ns()
    time.sleep(0.01)
    utimensat(p, UTIME_OMIT, UTIME_NOW)
    a2, m2, c2 = stat_ns(p)
    eq(a2, a, "UTIME_OMIT kept atime")
    check(m2 >= before, f"UTIME_NOW mtime {m2} is not after {before}")
    check(m2 <= time.time_ns() + 10 ** 7, "UTIME_NOW mtime is in the future")
    check(c2 > c, "ctime moved forward with the times")
    utimensat(p, UTIME_NOW, UTIME_OMIT)
    a3, m3, c3 = stat_ns(p)
    eq(m3, m2, "UTIME_OMIT kept mtime")
    check(a3 >= before, "UTIME_NOW atime")
    # far past and far future
    for sec, nsec in ((-1, 500000000), (-2 ** 31 - 5, 1), (4102444800, 5), (2 ** 34, 999999999)):
        utimensat(p, (sec, nsec), (sec, nsec))
        eq(stat_ns(p)[1], sec * 10 ** 9 + nsec, f"mtime {sec}.{nsec:09d}")
    utimensat(p, (2 ** 34, 1), (-1, 500000000))
    os.symlink("f", m.path("l"))
    utimensat(m.path("l"), (100, 1), (200, 2), follow=False)
    eq(stat_ns(m.path("l"))[1], 200000000002, "symlink's own mtime (AT_SYMLINK_NOFOLLOW)")
    eq(stat_ns(p)[1], -500000000, "target untouched by AT_SYMLINK_NOFOLLOW")
    m.remount()
    a4, m4, _ = stat_ns(p)
    eq((a4, m4), (2 ** 34 * 10 ** 9 + 1, -500000000), "times after remount")
    eq(stat_ns(m.path("l"))[1], 200000000002, "symlink mtime after remount")


@test()
def utimensat_permissions(m):
    p = user_file(m, "f", U1, G1, 0o666)
    run_as(U2, G2, utimensat, p, UTIME_NOW, UTIME_NOW)  # write permission suffices for "now"
    expect_errno_as(U2, G2, errno.EPERM, utimensat, p, (1, 0), (1, 0))
    run_as(U1, G1, utimensat, p, (5, 6), (7, 8))
    eq(stat_ns(p)[1], 7000000008, "owner set explicit times")
    os.chmod(p, 0o644)
    expect_errno_as(U2, G2, errno.EACCES, utimensat, p, UTIME_NOW, UTIME_NOW)
    run_as(U1, G1, os.utime, p, None)


def changed(before, after):
    """Which of atime, mtime, ctime changed: a string of 'a', 'm', 'c'."""
    return "".join(k for k, x, y in zip("amc", before, after) if x != y)


@test()
def timestamps_per_operation(m):
    """For each operation, which of atime/mtime/ctime of each inode changes (ext4, relatime
    aside: atime is not checked where relatime makes it depend on history)."""
    os.mkdir(m.path("d"))
    os.mkdir(m.path("e"))
    write_file(m.path("d", "f"), b"0123456789")
    past = 1000000000 * 10 ** 9

    def settle(*paths):
        for p in paths:
            os.utime(p, ns=(past, past), follow_symlinks=False)
        time.sleep(0.02)  # ctime is now "now"; the operation must move it further
        return {p: stat_ns(p) for p in paths}

    def expect(before, p, want, what):
        got = changed(before[p], stat_ns(p))
        got_mc = got.replace("a", "")
        eq(got_mc, want, f"{what}: timestamps of {os.path.relpath(p, m.mnt)} that changed "
           "(m = mtime, c = ctime)")
        if "c" in want:
            now = time.time_ns()
            c = stat_ns(p)[2]
            check(now - 5 * 10 ** 9 < c <= now + 10 ** 7, f"{what}: ctime {c} is not now ({now})")

    d, e, f = m.path("d"), m.path("e"), m.path("d", "f")
    b = settle(d, f)
    touch(m.path("d", "new"))
    expect(b, d, "mc", "create")
    st = os.stat(m.path("d", "new"))
    check(abs(st.st_mtime_ns - time.time_ns()) < 5 * 10 ** 9, "times of a new file are now")
    eq(st.st_mtime_ns, st.st_ctime_ns, "a new file has mtime == ctime")

    b = settle(f)
    fd = os.open(f, os.O_WRONLY)
    os.pwrite(fd, b"ab", 3)
    os.close(fd)
    expect(b, f, "mc", "write")

    b = settle(f)
    os.truncate(f, 100)
    expect(b, f, "mc", "truncate up")
    b = settle(f)
    os.truncate(f, 5)
    expect(b, f, "mc", "truncate down")

    b = settle(f)
    os.chmod(f, 0o600)
    expect(b, f, "c", "chmod")
    b = settle(f)
    os.chown(f, 5, 5)
    expect(b, f, "c", "chown")
    b = settle(f)
    os.setxattr(f, "user.x", b"1")
    expect(b, f, "c", "setxattr")
    b = settle(f)
    os.removexattr(f, "user.x")
    expect(b, f, "c", "removexattr")

    b = settle(d, f)
    os.link(f, m.path("d", "f2"))
    expect(b, f, "c", "link (the inode)")
    expect(b, d, "mc", "link (the directory)")
    b = settle(d, f)
    os.unlink(m.path("d", "f2"))
    expect(b, f, "c", "unlink of one of two names (the inode)")
    expect(b, d, "mc", "unlink (the directory)")

    b = settle(d, e, f)
    os.rename(f, m.path("e", "f"))
    b[m.path("e", "f")] = b[f]
    f = m.path("e", "f")
    expect(b, d, "mc", "rename (source directory)")
    expect(b, e, "mc", "rename (target directory)")
    expect(b, f, "c", "rename (the inode)")

    b = settle(e)
    os.mkdir(m.path("e", "sub"))
    expect(b, e, "mc", "mkdir")
    b = settle(e)
    os.rmdir(m.path("e", "sub"))
    expect(b, e, "mc", "rmdir")
    b = settle(e)
    os.symlink("x", m.path("e", "sl"))
    expect(b, e, "mc", "symlink")
    b = settle(e)
    os.mkfifo(m.path("e", "fifo"))
    expect(b, e, "mc", "mknod")

    b = settle(f)
    with open(f, "rb") as fh:
        fh.read()
    expect(b, f, "", "read")
    b = settle(e)
    os.listdir(e)
    expect(b, e, "", "readdir")
    b = settle(f)
    os.stat(f)
    expect(b, f, "", "stat")


@test()
def special_files(m):
    os.mkfifo(m.path("fifo"), 0o640)
    st = os.stat(m.path("fifo"))
    check(stat.S_ISFIFO(st.st_mode), "mkfifo made no fifo")
    eq(stat.S_IMODE(st.st_mode), 0o640, "fifo mode")
    # a fifo on the mount works as a pipe (the kernel serves it)
    r = os.open(m.path("fifo"), os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(m.path("fifo"), os.O_WRONLY)
    os.write(w, b"through the fifo")
    eq(os.read(r, 100), b"through the fifo", "data through the fifo")
    os.close(w)
    os.close(r)
    eq(os.stat(m.path("fifo")).st_size, 0, "fifo size")
    # unix socket
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(m.path("sock"))
    srv.listen(1)
    check(stat.S_ISSOCK(os.stat(m.path("sock")).st_mode), "bind made no socket inode")
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(m.path("sock"))
    conn, _ = srv.accept()
    cli.sendall(b"hello")
    eq(conn.recv(10), b"hello", "data through the socket")
    for s in (cli, conn, srv):
        s.close()
    # device nodes keep their numbers, also large ones
    devs = {"chr": (stat.S_IFCHR, os.makedev(1, 3)), "blk": (stat.S_IFBLK, os.makedev(7, 0)),
            "bigchr": (stat.S_IFCHR, os.makedev(300, 70000)),
            "bigblk": (stat.S_IFBLK, os.makedev(4095, 1048575))}
    for name, (kind, dev) in devs.items():
        os.mknod(m.path(name), kind | 0o600, dev)
    # mknod S_IFREG makes a regular file; mknod of a device needs CAP_MKNOD
    os.mknod(m.path("reg"), stat.S_IFREG | 0o644)
    check(stat.S_ISREG(os.stat(m.path("reg")).st_mode), "mknod S_IFREG")
    pub = m.path("pub")
    os.mkdir(pub)
    os.chmod(pub, 0o777)
    expect_errno_as(U1, G1, errno.EPERM, os.mknod, os.path.join(pub, "c"),
                    stat.S_IFCHR | 0o600, os.makedev(1, 3))
    run_as(U1, G1, os.mknod, os.path.join(pub, "p"), stat.S_IFIFO | 0o600)
    expect_errno(errno.EEXIST, os.mknod, m.path("chr"), stat.S_IFCHR | 0o600, 0)
    for attempt in ("", " after remount"):
        for name, (kind, dev) in devs.items():
            st = os.lstat(m.path(name))
            eq(stat.S_IFMT(st.st_mode), kind, f"type of {name}{attempt}")
            eq((os.major(st.st_rdev), os.minor(st.st_rdev)), (os.major(dev), os.minor(dev)),
               f"device number of {name}{attempt}")
            eq(st.st_size, 0, f"size of {name}{attempt}")
        check(stat.S_ISSOCK(os.lstat(m.path("sock")).st_mode), f"socket{attempt}")
        check(stat.S_ISFIFO(os.lstat(m.path("fifo")).st_mode), f"fifo{attempt}")
        if not attempt:
            m.remount()


@test()
def truncate(m):
    p = m.path("f")
    touch(p)
    os.truncate(p, 1 << 20)
    st = os.stat(p)
    eq(st.st_size, 1 << 20, "size after truncate up")
    eq(st.st_blocks, 0, "truncate up allocates nothing")
    eq(read_file(p), bytes(1 << 20), "truncated-up file reads as zeros")
    write_file(p, b"\xff" * (1 << 20))
    check(os.stat(p).st_blocks >= 2048, f"1 MiB written but st_blocks {os.stat(p).st_blocks}")
    os.truncate(p, 4096 + 100)
    st = os.stat(p)
    eq(st.st_size, 4196, "size after truncate down")
    eq(st.st_blocks, 16, "st_blocks after truncate down to two 4 KiB blocks")
    os.truncate(p, 8192 * 4)
    data = read_file(p)
    eq(data[:4196], b"\xff" * 4196, "data below the truncation point")
    eq(data[4196:], bytes(len(data) - 4196), "the truncated tail reads as zeros after growing "
       "again (the partial block was zeroed)")
    os.truncate(p, 0)
    eq((os.stat(p).st_size, os.stat(p).st_blocks), (0, 0), "size and blocks after truncate 0")
    # odd sizes, ftruncate
    fd = os.open(p, os.O_RDWR)
    for size in (1, 4095, 4097, 12345, 3, 0, 70000):
        os.ftruncate(fd, size)
        eq(os.fstat(fd).st_size, size, f"size after ftruncate {size}")
    os.close(fd)
    fd = os.open(p, os.O_RDONLY)
    expect_errno(errno.EINVAL, os.ftruncate, fd, 10)
    os.close(fd)
    expect_errno(errno.EINVAL, os.truncate, p, -1)
    os.mkdir(m.path("d"))
    expect_errno(errno.EISDIR, os.truncate, m.path("d"), 0)
    q = user_file(m, "q", U1, G1, 0o644)
    expect_errno_as(U2, G2, errno.EACCES, os.truncate, q, 0)
    os.truncate(p, 1 << 40)
    eq(os.stat(p).st_size, 1 << 40, "a 1 TiB sparse size")
    check(os.stat(p).st_blocks < 64, "a 1 TiB sparse file allocates almost nothing")
    m.remount()
    eq(os.stat(p).st_size, 1 << 40, "size after remount")


@test(size="64M")
def statfs_counts(m):
    s0 = m.statfs()
    eq(s0.f_bsize, 4096, "f_bsize")
    eq(s0.f_frsize, 4096, "f_frsize")
    eq(s0.f_namemax, 255, "f_namemax")
    check(16000 <= s0.f_blocks <= 16384, f"f_blocks {s0.f_blocks} for a 64 MiB pool")
    check(0 < s0.f_bfree <= s0.f_blocks, f"f_bfree {s0.f_bfree}")
    check(s0.f_bavail <= s0.f_bfree, "f_bavail > f_bfree")
    check(s0.f_bfree > s0.f_blocks * 0.9, f"a fresh pool has {s0.f_bfree} of {s0.f_blocks} free")
    write_file(m.path("f"), os.urandom(8 << 20))
    s1 = m.statfs()
    used = s0.f_bfree - s1.f_bfree
    check(2048 <= used <= 2048 + 64, f"8 MiB written used {used} blocks (expected 2048 + metadata)")
    eq(s1.f_blocks, s0.f_blocks, "f_blocks does not change")
    used_inodes0 = s0.f_files - s0.f_ffree
    for i in range(50):
        touch(m.path(f"e{i}"))
    s2 = m.statfs()
    eq((s2.f_files - s2.f_ffree) - used_inodes0, 51, "inodes in use after creating 51 files")
    # df agrees
    r = subprocess.run(["df", "-B1", "--output=size,used,avail", m.mnt], stdout=subprocess.PIPE,
                       text=True, check=True)
    size, used_b, avail = map(int, r.stdout.splitlines()[1].split())
    s2 = m.statfs()
    eq(size, s2.f_blocks * s2.f_frsize, "df size")
    eq(used_b, (s2.f_blocks - s2.f_bfree) * s2.f_frsize, "df used")
    m.remount()
    s3 = m.statfs()
    eq((s3.f_bfree, s3.f_files - s3.f_ffree), (s2.f_bfree, s2.f_files - s2.f_ffree),
       "free blocks and inodes in use after remount")
    os.unlink(m.path("f"))
    for i in range(50):
        os.unlink(m.path(f"e{i}"))
    # the kernel forgets unlinked inodes asynchronously (FUSE_FORGET): allow it a moment
    def settled():
        s = m.statfs()
        return abs(s.f_bfree - s0.f_bfree) <= 4 and s.f_files - s.f_ffree == used_inodes0
    try:
        pmfs.wait_until(settled, 5, "space and inodes returned")
    except Failure:
        s4 = m.statfs()
        raise Failure(f"after removing everything: {s4.f_bfree} blocks free (at the start "
                      f"{s0.f_bfree}), {s4.f_files - s4.f_ffree} inodes in use (at the start "
                      f"{used_inodes0})") from None


@test(size="256M")
def fallocate_what_df_shows(m):
    # df's available space is what a file can take (xfstests generic/103): preallocating all
    # of it but 512 KiB (for the file's metadata) must fit
    s = m.statfs()
    check(s.f_bavail < s.f_bfree, f"f_bavail {s.f_bavail} leaves nothing for metadata "
          f"(f_bfree {s.f_bfree})")
    want = (s.f_bavail - 128) * s.f_frsize
    fd = os.open(m.path("big"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        pmfs.fallocate(fd, 0, 0, want)
    finally:
        os.close(fd)
    eq(os.stat(m.path("big")).st_size, want, "size after preallocating what df showed")
    # metadata still has room: names and small attributes can be made
    for i in range(16):
        touch(m.path(f"after-{i}"))
        os.setxattr(m.path(f"after-{i}"), "user.x", b"y" * 64)


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
