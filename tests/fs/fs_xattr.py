#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Extended attributes through the kernel: user., trusted., security. namespaces, CREATE and
REPLACE flags, ENODATA/ERANGE/E2BIG, value sizes around the inline limit up to 64 KiB, many
attributes on one inode, permissions, persistence across a remount, space returned.
Expected values are what Linux gives on ext4 (with large values, as with ea_inode)."""

import errno
import os

import pmfs
from pmfs import (check, eq, expect_errno, expect_errno_as, run_as, test, touch,
                  getxattr_sized, listxattr_sized, XATTR_CREATE, XATTR_REPLACE, Failure, Skip)

U1, G1 = 1001, 1001
U2, G2 = 1002, 1002


def xnames(p, follow=True):
    return sorted(os.listxattr(p, follow_symlinks=follow))


@test()
def user_basic(m):
    f = touch(m.path("f"))
    os.mkdir(m.path("d"))
    for p in (f, m.path("d")):
        eq(xnames(p), [], "a new inode has no xattrs")
        os.setxattr(p, "user.a", b"value a")
        os.setxattr(p, "user.bin", b"\0\1\2\xff\0")
        os.setxattr(p, "user.empty", b"")
        eq(os.getxattr(p, "user.a"), b"value a", "get user.a")
        eq(os.getxattr(p, "user.bin"), b"\0\1\2\xff\0", "binary value with NULs")
        eq(os.getxattr(p, "user.empty"), b"", "empty value")
        eq(xnames(p), ["user.a", "user.bin", "user.empty"], "listxattr")
        os.setxattr(p, "user.a", b"a much longer value than before " * 20)
        eq(os.getxattr(p, "user.a"), b"a much longer value than before " * 20, "value grew")
        os.setxattr(p, "user.a", b"s")
        eq(os.getxattr(p, "user.a"), b"s", "value shrank")
        os.removexattr(p, "user.a")
        expect_errno(errno.ENODATA, os.getxattr, p, "user.a")
        eq(xnames(p), ["user.bin", "user.empty"], "listxattr after remove")
    m.remount()
    eq(os.getxattr(f, "user.bin"), b"\0\1\2\xff\0", "value after remount")
    eq(xnames(m.path("d")), ["user.bin", "user.empty"], "directory xattrs after remount")


@test()
def create_replace_flags(m):
    f = touch(m.path("f"))
    expect_errno(errno.ENODATA, os.setxattr, f, "user.x", b"1", XATTR_REPLACE)
    eq(xnames(f), [], "a refused REPLACE created nothing")
    os.setxattr(f, "user.x", b"1", XATTR_CREATE)
    expect_errno(errno.EEXIST, os.setxattr, f, "user.x", b"2", XATTR_CREATE)
    eq(os.getxattr(f, "user.x"), b"1", "value after a refused CREATE")
    os.setxattr(f, "user.x", b"3", XATTR_REPLACE)
    eq(os.getxattr(f, "user.x"), b"3", "value after REPLACE")
    os.setxattr(f, "user.x", b"4", 0)
    eq(os.getxattr(f, "user.x"), b"4", "value after a plain set")
    expect_errno(errno.EINVAL, os.setxattr, f, "user.x", b"5", XATTR_CREATE | XATTR_REPLACE | 4)


@test()
def errors_and_buffer_sizes(m):
    f = touch(m.path("f"))
    expect_errno(errno.ENODATA, os.getxattr, f, "user.missing")
    expect_errno(errno.ENODATA, os.removexattr, f, "user.missing")
    expect_errno(errno.ENOENT, os.getxattr, m.path("missing"), "user.x")
    os.setxattr(f, "user.sized", b"0123456789")
    eq(getxattr_sized(f, "user.sized", 0)[0], 10, "getxattr with size 0 returns the length")
    expect_errno(errno.ERANGE, getxattr_sized, f, "user.sized", 9)
    eq(getxattr_sized(f, "user.sized", 10), (10, b"0123456789"), "exact buffer")
    eq(getxattr_sized(f, "user.sized", 100), (10, b"0123456789"), "larger buffer")
    os.setxattr(f, "user.other", b"")
    need = len(b"user.sized\0user.other\0")
    eq(listxattr_sized(f, 0)[0], need, "listxattr with size 0 returns the size needed")
    expect_errno(errno.ERANGE, listxattr_sized, f, need - 1)
    n, raw = listxattr_sized(f, need)
    eq(sorted(raw.split(b"\0")[:-1]), [b"user.other", b"user.sized"], "raw list")
    # name limits are the kernel's: 255 bytes, ERANGE beyond
    name = "user." + "n" * 250
    os.setxattr(f, name, b"long name")
    eq(os.getxattr(f, name), b"long name", "a 255-byte name")
    expect_errno(errno.ERANGE, os.setxattr, f, name + "n", b"x")
    expect_errno(errno.ERANGE, os.getxattr, f, name + "n")
    # value limit: 64 KiB is the largest the kernel passes
    expect_errno(errno.E2BIG, os.setxattr, f, "user.big", b"x" * 65537)
    # an empty name after the prefix and an unknown namespace are refused as on ext4
    expect_errno(errno.EINVAL, os.setxattr, f, "user.", b"x")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f, "nonsense.x", b"x")
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f, "noprefix", b"x")


@test()
def value_sizes(m):
    f = touch(m.path("f"))
    rng = m.rng
    sizes = [1, 100, 223, 224, 225, 1000, 4095, 4096, 4097, 10000, 65535, 65536]
    vals = {}
    for s in sizes:
        vals[f"user.s{s}"] = rng.randbytes(s)
        os.setxattr(f, f"user.s{s}", vals[f"user.s{s}"])
    for k, v in vals.items():
        eq(os.getxattr(f, k), v, f"value of {k}")
        eq(getxattr_sized(f, k, 0)[0], len(v), f"size of {k}")
    # resize across the inline limit and back
    for s in (10, 65536, 224, 225, 5000, 0, 300):
        v = rng.randbytes(s)
        os.setxattr(f, "user.s1", v)
        eq(os.getxattr(f, "user.s1"), v, f"user.s1 resized to {s}")
        vals["user.s1"] = v
    m.remount()
    for k, v in vals.items():
        eq(os.getxattr(f, k), v, f"value of {k} after remount")


@test()
def namespaces(m):
    f = touch(m.path("f"))
    os.chmod(f, 0o666)
    os.setxattr(f, "trusted.t", b"root only")
    os.setxattr(f, "security.s", b"security value")
    os.setxattr(f, "user.u", b"user value")
    eq(os.getxattr(f, "trusted.t"), b"root only", "trusted as root")
    eq(os.getxattr(f, "security.s"), b"security value", "security as root")
    eq(xnames(f), ["security.s", "trusted.t", "user.u"], "all namespaces listed to root")
    # trusted.* needs CAP_SYS_ADMIN: write EPERM, read ENODATA for others
    expect_errno_as(U1, G1, errno.EPERM, os.setxattr, f, "trusted.t2", b"x")
    expect_errno_as(U1, G1, errno.ENODATA, os.getxattr, f, "trusted.t")
    eq(run_as(U1, G1, os.getxattr, f, "user.u"), b"user value", "user. read by another user")
    # user.* only on regular files and directories
    os.symlink("f", m.path("l"))
    expect_errno(errno.EPERM, os.setxattr, m.path("l"), "user.x", b"1", follow_symlinks=False)
    os.setxattr(m.path("l"), "trusted.onlink", b"link", follow_symlinks=False)
    eq(os.getxattr(m.path("l"), "trusted.onlink", follow_symlinks=False), b"link",
       "trusted xattr on a symlink itself")
    eq(xnames(m.path("l"), follow=False), ["trusted.onlink"], "list of the symlink's own xattrs")
    eq(xnames(m.path("l")), ["security.s", "trusted.t", "user.u"], "list follows to the target")
    os.mkfifo(m.path("p"))
    expect_errno(errno.EPERM, os.setxattr, m.path("p"), "user.x", b"1")
    os.setxattr(m.path("p"), "trusted.x", b"on a fifo")
    eq(os.getxattr(m.path("p"), "trusted.x"), b"on a fifo", "trusted xattr on a fifo")
    m.remount()
    eq(os.getxattr(m.path("l"), "trusted.onlink", follow_symlinks=False), b"link",
       "symlink xattr after remount")
    eq(os.getxattr(f, "security.s"), b"security value", "security xattr after remount")


@test()
def permissions(m):
    f = m.path("f")
    touch(f)
    os.chown(f, U1, G1)
    os.chmod(f, 0o644)
    run_as(U1, G1, os.setxattr, f, "user.owner", b"1")
    expect_errno_as(U2, G2, errno.EACCES, os.setxattr, f, "user.other", b"1")
    expect_errno_as(U2, G2, errno.EACCES, os.removexattr, f, "user.owner")
    eq(run_as(U2, G2, os.getxattr, f, "user.owner"), b"1", "read with read permission")
    os.chmod(f, 0o600)
    expect_errno_as(U2, G2, errno.EACCES, os.getxattr, f, "user.owner")
    os.chmod(f, 0o666)
    run_as(U2, G2, os.setxattr, f, "user.other", b"2")
    # sticky directory: only the owner may set user.* on it
    d = m.path("d")
    os.mkdir(d)
    os.chown(d, U1, G1)
    os.chmod(d, 0o1777)
    expect_errno_as(U2, G2, errno.EPERM, os.setxattr, d, "user.x", b"1")
    run_as(U1, G1, os.setxattr, d, "user.x", b"1")


@test()
def many_attributes(m):
    f = touch(m.path("f"))
    n = pmfs.scaled(500, 50)
    rng = m.rng
    vals = {}
    for i in range(n):
        k = f"user.attr-{i:05d}-" + "k" * (i % 60)
        vals[k] = rng.randbytes(rng.choice([0, 8, 224, 300, 2000]))
        os.setxattr(f, k, vals[k])
    eq(xnames(f), sorted(vals), f"list of {n} xattrs")
    for k in list(vals)[::2]:
        os.removexattr(f, k)
        del vals[k]
    eq(xnames(f), sorted(vals), "list after removing half")
    m.remount()
    eq(xnames(f), sorted(vals), "list after remount")
    for k, v in vals.items():
        eq(os.getxattr(f, k), v, f"{k} after remount")


def settled_free(m, want, slack, what):
    def ok():
        return abs(m.statfs().f_bfree - want) <= slack
    try:
        pmfs.wait_until(ok, 5, what)
    except Failure:
        raise Failure(f"{what}: {m.statfs().f_bfree} blocks free, expected {want} +- {slack}") \
            from None


@test()
def space_returned(m):
    f = touch(m.path("f"))
    free0 = m.statfs().f_bfree
    for i in range(16):
        os.setxattr(f, f"user.big{i}", os.urandom(65536))
    used = free0 - m.statfs().f_bfree
    check(used >= 16 * 16, f"16 values of 64 KiB use only {used} blocks")
    for i in range(16):
        os.removexattr(f, f"user.big{i}")
    settled_free(m, free0, 4, "after removing the large values")
    for i in range(16):
        os.setxattr(f, f"user.big{i}", os.urandom(65536))
    os.unlink(f)
    settled_free(m, free0 + 0, 8, "after unlinking a file with large values")
    g = touch(m.path("g"))
    for _ in range(50):
        os.setxattr(g, "user.flip", os.urandom(m.rng.choice([10, 65536, 5000])))
    os.removexattr(g, "user.flip")
    settled_free(m, free0, 8, "after resizing one value 50 times and removing it")


@test()
def posix_acl(m):
    f = touch(m.path("f"))
    os.chmod(f, 0o600)
    # user::rw- user:U1:r-- group::--- mask::r-- other::--- (version 2; a minimal ACL would be
    # folded into the mode bits and not stored)
    import struct
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in
        ((1, 6, 0xffffffff), (2, 4, U1), (4, 0, 0xffffffff), (0x10, 4, 0xffffffff),
         (0x20, 0, 0xffffffff)))
    try:
        os.setxattr(f, "system.posix_acl_access", acl)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            raise Skip("POSIX ACLs are not enabled (the daemon does not ask for "
                       "FUSE_CAP_POSIX_ACL); default_permissions checks mode bits only")
        raise
    eq(os.getxattr(f, "system.posix_acl_access"), acl, "ACL read back")
    eq(run_as(U1, G1, pmfs.read_file, f), b"", "the user named in the ACL reads the file")
    expect_errno_as(U2, G2, errno.EACCES, pmfs.read_file, f)


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
