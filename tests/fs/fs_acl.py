#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""POSIX ACLs through the kernel (pmfuse asks for FUSE_CAP_POSIX_ACL and FUSE_CAP_DONT_MASK):
the kernel enforces ACLs it reads from the daemon; the daemon keeps mode and ACL in step, applies
default ACLs and the umask to new inodes, and clears setgid as Linux does. ACLs are written and
read as the binary xattrs system.posix_acl_access / _default (struct-packed here, no libacl).

Checked: a named user or group gets access through an ACL and loses it when the ACL goes or the
mask shrinks; chmod rewrites owner, mask and other entries; a minimal ACL folds into the mode;
default ACL inheritance on files, fifos and subdirectories (umask ignored), the umask applied
without one; setgid cleared when a non-member owner sets an ACL; ACLs across a remount; and a
transcript of set/get/chmod/create results compared byte for byte with tmpfs on this kernel."""

import errno
import os
import stat
import struct

import pmfs
from pmfs import check, eq, expect_errno, expect_errno_as, run_as, test, touch, write_file, Skip

U1, G1 = 1001, 1001
U2, G2 = 1002, 1002
G3 = 1003

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
NOID = 0xffffffff
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
R, W, X = 4, 2, 1


def acl(*entries):
    """The xattr form of an ACL: entries are (tag, perm) or (tag, perm, id)."""
    out = struct.pack("<I", 2)
    for e in entries:
        tag, perm = e[0], e[1]
        ident = e[2] if len(e) > 2 else NOID
        out += struct.pack("<HHI", tag, perm, ident)
    return out


def decode(value):
    """[(tag, perm, id)] of an xattr value."""
    ver, = struct.unpack_from("<I", value)
    eq(ver, 2, "ACL version")
    return [struct.unpack_from("<HHI", value, 4 + 8 * i) for i in range((len(value) - 4) // 8)]


def get_acl(path, name=ACCESS):
    try:
        return os.getxattr(path, name)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def can_read(path):
    with open(path, "rb") as f:
        return f.read()


def can_write(path):
    fd = os.open(path, os.O_WRONLY)
    os.close(fd)
    return True


def create_with_umask(path, mode, umask, kind="file"):
    """In the calling process (a child of run_as): creates path with the given umask."""
    os.umask(umask)
    if kind == "file":
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
    elif kind == "dir":
        os.mkdir(path, mode)
    elif kind == "fifo":
        os.mkfifo(path, mode)
    return stat.S_IMODE(os.stat(path).st_mode)


def secret(m, name="secret", data=b"secret data\n", owner=(0, 0)):
    p = m.path(name)
    write_file(p, data, 0o600)
    os.chown(p, *owner)
    os.chmod(p, 0o600)
    return p


@test()
def named_user_gains_and_loses_read(m):
    p = secret(m)
    expect_errno_as(U1, G1, errno.EACCES, can_read, p)
    a = acl((USER_OBJ, R | W), (USER, R, U1), (GROUP_OBJ, 0), (MASK, R), (OTHER, 0))
    os.setxattr(p, ACCESS, a)
    eq(mode_of(p), 0o640, "mode after the ACL (group bits = the mask)")
    eq(os.getxattr(p, ACCESS), a, "ACL read back")
    eq(os.listxattr(p), [ACCESS], "listxattr shows the ACL")
    eq(run_as(U1, G1, can_read, p), b"secret data\n", "the named user reads a 0600 file")
    expect_errno_as(U2, G2, errno.EACCES, can_read, p)
    expect_errno_as(U1, G1, errno.EACCES, can_write, p)
    # access(2) agrees (the kernel answers it from the same ACL)
    eq(run_as(U1, G1, os.access, p, os.R_OK), True, "access(R_OK) as the named user")
    eq(run_as(U1, G1, os.access, p, os.W_OK), False, "access(W_OK) as the named user")
    os.removexattr(p, ACCESS)
    eq(get_acl(p), None, "ACL removed")
    eq(mode_of(p), 0o640, "removing the ACL leaves the mode")
    expect_errno_as(U1, G1, errno.EACCES, can_read, p)
    # granted again, then taken away by setting a minimal ACL (folded into the mode)
    os.setxattr(p, ACCESS, a)
    eq(run_as(U1, G1, can_read, p), b"secret data\n", "read after the ACL is set again")
    os.setxattr(p, ACCESS, acl((USER_OBJ, R | W), (GROUP_OBJ, 0), (OTHER, 0)))
    eq(get_acl(p), None, "a minimal ACL is not stored")
    eq(mode_of(p), 0o600, "the minimal ACL set the mode")
    expect_errno_as(U1, G1, errno.EACCES, can_read, p)


@test()
def named_group_and_supplementary_groups(m):
    p = secret(m)
    os.setxattr(p, ACCESS, acl((USER_OBJ, R | W), (GROUP_OBJ, 0), (GROUP, R | W, G3),
                               (MASK, R | W), (OTHER, 0)))
    eq(mode_of(p), 0o660, "mode with a named group")
    expect_errno_as(U1, G1, errno.EACCES, can_read, p)
    eq(run_as(U1, G1, can_read, p, groups=(G3,)), b"secret data\n",
       "a member of the named group (supplementary) reads")
    eq(run_as(U2, G3, can_write, p), True, "a member of the named group (primary) writes")
    # the owner is judged by the owner entry only, even when a named entry grants more
    os.chown(p, U1, 0)
    os.chmod(p, 0o060)
    expect_errno_as(U1, G3, errno.EACCES, can_read, p)


@test()
def mask_limits_named_entries(m):
    p = secret(m)
    os.setxattr(p, ACCESS, acl((USER_OBJ, R | W), (USER, R | W, U1), (GROUP_OBJ, 0),
                               (MASK, R), (OTHER, 0)))
    eq(run_as(U1, G1, can_read, p), b"secret data\n", "read allowed by user:U1:rw- & mask r")
    expect_errno_as(U1, G1, errno.EACCES, can_write, p)
    # chmod sets the mask: the group bits of the mode
    os.chmod(p, 0o660)
    eq(decode(os.getxattr(p, ACCESS)),
       [(USER_OBJ, R | W, NOID), (USER, R | W, U1), (GROUP_OBJ, 0, NOID), (MASK, R | W, NOID),
        (OTHER, 0, NOID)], "ACL after chmod 660")
    eq(run_as(U1, G1, can_write, p), True, "write allowed once the mask has w")
    os.chmod(p, 0o600)
    eq(decode(os.getxattr(p, ACCESS))[3], (MASK, 0, NOID), "mask after chmod 600")
    expect_errno_as(U1, G1, errno.EACCES, can_read, p)
    expect_errno_as(U1, G1, errno.EACCES, can_write, p)


@test()
def chmod_updates_owner_mask_other(m):
    p = m.path("f")
    touch(p, 0o644)
    os.setxattr(p, ACCESS, acl((USER_OBJ, R | W), (USER, R | W | X, U1), (GROUP_OBJ, R),
                               (GROUP, W, G3), (MASK, R | W), (OTHER, R)))
    eq(mode_of(p), 0o664, "mode from the ACL")
    os.chmod(p, 0o4751)
    eq(mode_of(p), 0o4751, "mode after chmod")
    eq(decode(os.getxattr(p, ACCESS)),
       [(USER_OBJ, 7, NOID), (USER, 7, U1), (GROUP_OBJ, R, NOID), (GROUP, W, G3),
        (MASK, R | X, NOID), (OTHER, X, NOID)],
       "chmod 4751: owner rwx, mask r-x, other --x, the rest unchanged")
    # chown keeps the ACL (and root keeps setuid)
    os.chown(p, U2, G2)
    eq(decode(os.getxattr(p, ACCESS))[4], (MASK, R | X, NOID), "mask after chown")
    # a directory's default ACL is not touched by chmod
    d = m.path("d")
    os.mkdir(d)
    da = acl((USER_OBJ, 7), (GROUP_OBJ, R | X), (OTHER, 0))
    os.setxattr(d, DEFAULT, da)
    os.chmod(d, 0o700)
    eq(os.getxattr(d, DEFAULT), da, "default ACL after chmod")
    eq(get_acl(d), None, "no access ACL on the directory")


@test()
def default_acl_inheritance(m):
    d = m.path("d")
    os.mkdir(d, 0o755)
    os.chown(d, U1, G1)
    default = acl((USER_OBJ, 7), (USER, 7, U2), (GROUP_OBJ, R | X), (MASK, 7), (OTHER, 0))
    os.setxattr(d, DEFAULT, default)
    eq(os.getxattr(d, DEFAULT), default, "default ACL read back")
    eq(mode_of(d), 0o755, "setting a default ACL leaves the mode")
    # a file created by U1 with umask 077: the umask is ignored, the ACL limited by 0666
    f = os.path.join(d, "file")
    eq(run_as(U1, G1, create_with_umask, f, 0o666, 0o077), 0o660, "mode of the new file")
    eq(decode(os.getxattr(f, ACCESS)),
       [(USER_OBJ, R | W, NOID), (USER, 7, U2), (GROUP_OBJ, R | X, NOID),
        (MASK, R | W, NOID), (OTHER, 0, NOID)], "access ACL of the new file")
    eq(get_acl(f, DEFAULT), None, "a file has no default ACL")
    eq(os.stat(f).st_uid, U1, "owner of the new file")
    run_as(U1, G1, write_file, f, b"from U1\n")
    eq(run_as(U2, G2, can_read, f), b"from U1\n", "the user named in the default ACL reads")
    expect_errno_as(U1 + 10, G1 + 10, errno.EACCES, can_read, f)
    # a subdirectory gets both, and passes them on
    s = os.path.join(d, "sub")
    eq(run_as(U1, G1, create_with_umask, s, 0o777, 0o077, "dir"), 0o770, "mode of the subdir")
    eq(os.getxattr(s, DEFAULT), default, "default ACL inherited by the subdirectory")
    eq(decode(os.getxattr(s, ACCESS))[3], (MASK, 7, NOID), "access ACL of the subdirectory")
    g = os.path.join(s, "deeper")
    eq(run_as(U1, G1, create_with_umask, g, 0o640, 0o022), 0o640, "mode two levels down")
    eq(decode(os.getxattr(g, ACCESS))[3], (MASK, R, NOID), "mask two levels down")
    eq(run_as(U2, G2, can_read, g), b"", "the named user reads two levels down")
    # fifos too; symlinks never
    q = os.path.join(d, "fifo")
    eq(run_as(U1, G1, create_with_umask, q, 0o600, 0o077, "fifo"), 0o600, "mode of a fifo")
    eq(decode(os.getxattr(q, ACCESS))[3], (MASK, 0, NOID), "access ACL of the fifo")
    os.symlink("file", os.path.join(d, "link"))
    eq(stat.S_IMODE(os.lstat(os.path.join(d, "link")).st_mode), 0o777, "symlink mode")
    eq(os.listxattr(os.path.join(d, "link"), follow_symlinks=False), [], "symlink has no ACL")
    # a minimal default ACL: the mode is limited by it and no access ACL is stored
    mdir = m.path("minimal")
    os.mkdir(mdir)
    os.chmod(mdir, 0o777)
    os.setxattr(mdir, DEFAULT, acl((USER_OBJ, 7), (GROUP_OBJ, R | X), (OTHER, 0)))
    mf = os.path.join(mdir, "f")
    eq(run_as(U1, G1, create_with_umask, mf, 0o666, 0), 0o640, "mode under a minimal default")
    eq(get_acl(mf), None, "no access ACL under a minimal default")
    # removing the default ACL brings the umask back
    os.removexattr(d, DEFAULT)
    h = os.path.join(d, "after")
    eq(run_as(U1, G1, create_with_umask, h, 0o666, 0o027), 0o640, "umask once the default goes")
    eq(get_acl(h), None, "no ACL once the default goes")


@test()
def umask_without_default_acl(m):
    # the daemon applies the umask now (DONT_MASK): every creating call, several umasks
    for umask in (0o022, 0o077, 0o002, 0o000, 0o777):
        base = m.path(f"u{umask:03o}")
        os.mkdir(base, 0o777)
        os.chmod(base, 0o777)
        for kind, mode in (("file", 0o666), ("dir", 0o777), ("fifo", 0o666)):
            p = os.path.join(base, kind)
            got = run_as(U1, G1, create_with_umask, p, mode, umask, kind)
            eq(got, mode & ~umask, f"{kind} {mode:o} with umask {umask:03o}")
            eq(get_acl(p), None, f"no ACL on {kind}")
        # mknod through the ordinary path of the test process too
        old = os.umask(umask)
        try:
            os.close(os.open(os.path.join(base, "root"), os.O_CREAT | os.O_WRONLY, 0o4777))
        finally:
            os.umask(old)
        eq(mode_of(os.path.join(base, "root")), 0o4777 & ~umask, f"root's file, umask {umask:o}")


@test()
def setgid_cleared_by_acl_as_linux(m):
    p = m.path("f")
    touch(p)
    os.chown(p, U1, G2)
    minimal = acl((USER_OBJ, 7), (GROUP_OBJ, R | X), (OTHER, R | X))
    named = acl((USER_OBJ, 7), (USER, R, U2), (GROUP_OBJ, R | X), (MASK, 7), (OTHER, R | X))
    # the owner, not in the file's group and without CAP_FSETID: setgid goes
    for value, want in ((minimal, 0o755), (named, 0o775)):
        os.chmod(p, 0o2775)
        run_as(U1, G1, os.setxattr, p, ACCESS, value)
        eq(mode_of(p), want, "mode after a non-member owner set an ACL")
    # in the group through a supplementary group: kept
    os.chmod(p, 0o2775)
    run_as(U1, G1, os.setxattr, p, ACCESS, minimal, groups=(G2,))
    eq(mode_of(p), 0o2755, "mode after a member owner set an ACL")
    # primary group matches: kept
    os.chmod(p, 0o2775)
    run_as(U1, G2, os.setxattr, p, ACCESS, named)
    eq(mode_of(p), 0o2775, "mode after the owner with that primary group set an ACL")
    # root (CAP_FSETID): kept
    os.chmod(p, 0o2775)
    os.setxattr(p, ACCESS, minimal)
    eq(mode_of(p), 0o2755, "mode after root set an ACL")
    # only the owner may set ACLs at all
    expect_errno_as(U2, G2, errno.EPERM, os.setxattr, p, ACCESS, minimal)


@test()
def errors_as_linux(m):
    f = m.path("f")
    touch(f)
    d = m.path("d")
    os.mkdir(d)
    good = acl((USER_OBJ, 7), (GROUP_OBJ, 5), (OTHER, 5))
    expect_errno(errno.EACCES, os.setxattr, f, DEFAULT, good)
    os.removexattr(f, DEFAULT)                       # nothing to remove: success, as on ext4
    os.removexattr(f, ACCESS)
    os.removexattr(d, DEFAULT)
    expect_errno(errno.ENODATA, os.getxattr, f, ACCESS)
    expect_errno(errno.ENODATA, os.getxattr, f, DEFAULT)
    bad = [
        acl((USER_OBJ, 7), (GROUP_OBJ, 5)),                                  # no other
        acl((USER_OBJ, 7), (USER, 5, U1), (GROUP_OBJ, 5), (OTHER, 5)),       # no mask
        acl((USER_OBJ, 7), (USER, 5, NOID), (GROUP_OBJ, 5), (MASK, 5), (OTHER, 5)),
        acl((USER_OBJ, 8), (GROUP_OBJ, 5), (OTHER, 5)),                      # perm
        acl((GROUP_OBJ, 5), (USER_OBJ, 7), (OTHER, 5)),                      # order
        acl((USER_OBJ, 7), (GROUP_OBJ, 5), (0x40, 5), (OTHER, 5)),           # tag
        good + b"x",                                                         # size
    ]
    for v in bad:
        expect_errno(errno.EINVAL, os.setxattr, f, ACCESS, v)
        expect_errno(errno.EINVAL, os.setxattr, d, DEFAULT, v)
    expect_errno(errno.EOPNOTSUPP, os.setxattr, f, ACCESS, struct.pack("<I", 1) + good[4:])
    eq(os.listxattr(f), [], "nothing stored by refused calls")
    eq(os.listxattr(d), [], "nothing stored on the directory")
    os.symlink("f", m.path("l"))
    expect_errno(errno.EOPNOTSUPP, os.setxattr, m.path("l"), ACCESS, good,
                 follow_symlinks=False)
    # an empty value or a bare header removes
    named = acl((USER_OBJ, 6), (USER, 4, U1), (GROUP_OBJ, 4), (MASK, 4), (OTHER, 4))
    os.setxattr(f, ACCESS, named)
    os.setxattr(f, ACCESS, struct.pack("<I", 2))
    eq(get_acl(f), None, "a bare header removed the ACL")
    # a large ACL (out-of-line on the pool), up to the one page the kernel passes
    many = [(USER_OBJ, 6)] + [(USER, R, 20000 + i) for i in range(500)] + \
        [(GROUP_OBJ, R), (MASK, R), (OTHER, 0)]
    os.setxattr(f, ACCESS, acl(*many))
    eq(os.getxattr(f, ACCESS), acl(*many), "a 4 KiB ACL")
    too_many = many[:1] + [(USER, R, 30000 + i) for i in range(10)] + many[1:]
    expect_errno(errno.E2BIG, os.setxattr, f, ACCESS, acl(*too_many))
    eq(os.getxattr(f, ACCESS), acl(*many), "the ACL after a refused larger one")


@test(opts=("noacl",))
def noacl_mount_uses_mode_bits(m):
    """-o noacl: ACL xattrs are refused, permissions come from the mode bits (group bits too),
    the umask is still applied, and an ACL stored by an earlier mount is not enforced."""
    p = secret(m)
    a = acl((USER_OBJ, R | W), (USER, R, U1), (GROUP_OBJ, 0), (MASK, R), (OTHER, 0))
    for name in (ACCESS, DEFAULT):
        try:
            os.setxattr(p if name == ACCESS else m.mnt, name, a)
        except OSError as e:
            eq(e.errno, errno.EOPNOTSUPP, f"setxattr {name} with -o noacl")
        else:
            check(False, f"setxattr {name} succeeded with -o noacl")
    expect_errno_as(U1, G1, errno.EACCES, can_read, p)
    os.chown(p, 0, G1)
    os.chmod(p, 0o640)
    eq(run_as(U1, G1, can_read, p), b"secret data\n", "group member reads a 0640 file")
    expect_errno_as(U2, G2, errno.EACCES, can_read, p)
    base = m.path("u")
    os.mkdir(base, 0o777)
    os.chmod(base, 0o777)
    eq(run_as(U1, G1, create_with_umask, os.path.join(base, "f"), 0o666, 0o027), 0o640,
       "mode of a file made with umask 027")
    # an ACL set by a mount with ACLs grants nothing here
    q = secret(m, "stored")
    m.unmount()
    m.opts = [o for o in m.opts if o != "noacl"]
    m.mount()
    os.setxattr(q, ACCESS, a)
    eq(run_as(U1, G1, can_read, q), b"secret data\n", "the ACL grants read with ACLs on")
    m.unmount()
    m.opts.append("noacl")
    m.mount()
    expect_errno_as(U1, G1, errno.EACCES, can_read, q)


@test()
def acls_survive_remount(m):
    p = secret(m)
    a = acl((USER_OBJ, R | W), (USER, R, U1), (GROUP_OBJ, 0), (MASK, R), (OTHER, 0))
    os.setxattr(p, ACCESS, a)
    d = m.path("d")
    os.mkdir(d)
    default = acl((USER_OBJ, 7), (USER, 7, U2), (GROUP_OBJ, R | X), (MASK, 7), (OTHER, 0))
    os.setxattr(d, DEFAULT, default)
    big = acl(*([(USER_OBJ, 7)] + [(USER, i % 8, 40000 + i) for i in range(100)] +
                [(GROUP_OBJ, 5), (MASK, 7), (OTHER, 5)]))
    os.setxattr(d, ACCESS, big)
    m.remount()
    eq(os.getxattr(p, ACCESS), a, "access ACL after remount")
    eq(mode_of(p), 0o640, "mode after remount")
    eq(run_as(U1, G1, can_read, p), b"secret data\n", "the named user reads after remount")
    expect_errno_as(U2, G2, errno.EACCES, can_read, p)
    eq(os.getxattr(d, DEFAULT), default, "default ACL after remount")
    eq(os.getxattr(d, ACCESS), big, "a large access ACL after remount")
    f = os.path.join(d, "new")
    eq(m.fork(create_with_umask, f, 0o644, 0o077).wait(), 0o640, "inheritance after remount")
    eq(decode(os.getxattr(f, ACCESS))[1], (USER, 7, U2), "inherited named entry")


@test()
def directory_search_through_acl(m):
    d = m.path("private")
    os.mkdir(d, 0o700)
    touch(os.path.join(d, "f"), 0o644)
    expect_errno_as(U1, G1, errno.EACCES, os.stat, os.path.join(d, "f"))
    os.setxattr(d, ACCESS, acl((USER_OBJ, 7), (USER, X, U1), (GROUP_OBJ, 0), (MASK, X),
                               (OTHER, 0)))
    eq(run_as(U1, G1, lambda p: os.stat(p).st_size, os.path.join(d, "f")), 0,
       "search (x) granted by the ACL")
    expect_errno_as(U1, G1, errno.EACCES, os.listdir, d)
    expect_errno_as(U1, G1, errno.EACCES, touch, os.path.join(d, "g"))
    os.chmod(d, 0o700)                                   # mask ---: search denied again
    expect_errno_as(U1, G1, errno.EACCES, os.stat, os.path.join(d, "f"))


def transcript(root):
    """One fixed sequence of ACL calls under root; returns what each one gave."""
    out = []

    def rec(what, fn, *args, **kw):
        try:
            r = fn(*args, **kw)
            out.append(f"{what}: ok {r.hex() if isinstance(r, bytes) else r!r}")
        except OSError as e:
            out.append(f"{what}: {errno.errorcode.get(e.errno, e.errno)}")

    def st(what, p):
        s = os.lstat(p)
        out.append(f"{what}: mode {s.st_mode:o} uid {s.st_uid} gid {s.st_gid}")
        for name in sorted(os.listxattr(p, follow_symlinks=False)):
            out.append(f"  {name} = {os.getxattr(p, name, follow_symlinks=False).hex()}")

    P = lambda *a: os.path.join(root, *a)  # noqa: E731
    os.umask(0o022)
    os.close(os.open(P("f"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(P("d"))
    rec("set named", os.setxattr, P("f"), ACCESS,
        acl((USER_OBJ, 6, 5), (USER, 6, U1), (GROUP_OBJ, 4, 7), (MASK, 6, 9), (OTHER, 4, 3)))
    st("f", P("f"))
    for mode in (0o751, 0o2700, 0o644):
        rec(f"chmod {mode:o}", os.chmod, P("f"), mode)
        st("f", P("f"))
    rec("mask only", os.setxattr, P("f"), ACCESS,
        acl((USER_OBJ, 6), (GROUP_OBJ, 4), (MASK, 0), (OTHER, 4)))
    st("f", P("f"))
    rec("minimal", os.setxattr, P("f"), ACCESS, acl((USER_OBJ, 7), (GROUP_OBJ, 1), (OTHER, 2)))
    st("f", P("f"))
    rec("unsorted named", os.setxattr, P("f"), ACCESS,
        acl((USER_OBJ, 7), (USER, 5, U2), (USER, 5, U1), (USER, 1, U1), (GROUP_OBJ, 5),
            (MASK, 5), (OTHER, 5)))
    st("f", P("f"))
    rec("replace flag", os.setxattr, P("f"), ACCESS,
        acl((USER_OBJ, 6), (GROUP_OBJ, 4), (GROUP, 6, G3), (MASK, 4), (OTHER, 4)),
        os.XATTR_CREATE)
    st("f", P("f"))
    rec("empty value", os.setxattr, P("f"), ACCESS, b"")
    st("f", P("f"))
    rec("default on file", os.setxattr, P("f"), DEFAULT, acl((USER_OBJ, 7), (GROUP_OBJ, 5),
                                                              (OTHER, 5)))
    rec("bad default on file", os.setxattr, P("f"), DEFAULT, acl((USER_OBJ, 7), (GROUP_OBJ, 5)))
    rec("default on dir", os.setxattr, P("d"), DEFAULT,
        acl((USER_OBJ, 7), (USER, 6, U1), (GROUP_OBJ, 5), (GROUP, 3, G3), (MASK, 6),
            (OTHER, 1)))
    st("d", P("d"))
    for umask in (0o077, 0o000):
        os.umask(umask)
        os.close(os.open(P("d", f"f{umask:o}"), os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(P("d", f"s{umask:o}"), 0o777)
        os.mknod(P("d", f"p{umask:o}"), stat.S_IFIFO | 0o640)
        os.symlink("x", P("d", f"l{umask:o}"))
        for n in "fspl":
            st(f"d/{n}{umask:o}", P("d", f"{n}{umask:o}"))
    os.umask(0o022)
    os.chmod(P("d"), 0o2775)
    os.mkdir(P("d", "sgid"), 0o777)
    st("d/sgid", P("d", "sgid"))
    rec("minimal default", os.setxattr, P("d"), DEFAULT,
        acl((USER_OBJ, 7), (GROUP_OBJ, 0), (OTHER, 0)))
    os.close(os.open(P("d", "g"), os.O_CREAT | os.O_WRONLY, 0o666))
    st("d/g", P("d", "g"))
    st("d", P("d"))
    rec("remove default", os.removexattr, P("d"), DEFAULT)
    rec("remove again", os.removexattr, P("d"), DEFAULT)
    os.close(os.open(P("d", "h"), os.O_CREAT | os.O_WRONLY, 0o666))
    st("d/h", P("d", "h"))
    return out


@test()
def same_as_tmpfs(m):
    ref = os.path.join(m.tmp, "ref")
    os.mkdir(ref)
    probe = os.path.join(ref, "probe")
    touch(probe)
    try:
        os.setxattr(probe, ACCESS, acl((USER_OBJ, 6), (USER, 4, U1), (GROUP_OBJ, 4), (MASK, 4),
                                       (OTHER, 4)))
    except OSError as e:
        raise Skip(f"{pmfs.BASE_DIR} has no POSIX ACLs to compare with ({e})") from None
    os.unlink(probe)
    os.mkdir(m.path("t"))
    # in children, so that the umask changes stay there
    want = m.fork(transcript, ref).wait()
    got = m.fork(transcript, m.path("t")).wait()
    for i, (w, g) in enumerate(zip(want, got)):
        if w != g:
            raise pmfs.Failure(f"line {i} differs from tmpfs:\n  tmpfs:  {w}\n  pmfuse: {g}\n"
                               "context:\n" + "\n".join(want[max(0, i - 5):i]))
    eq(len(got), len(want), "transcript length")
    check(any("system.posix_acl_default" in line for line in got), "the transcript has ACLs")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
