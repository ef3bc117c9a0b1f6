#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""
Harness of the kernel-level filesystem tests (tests/fs/fs_*.py): every test gets a FRESH pool,
formatted with mkfs.pmfuse in a private directory under $PMFUSE_TEST_DIR (default /dev/shm) and
mounted by the real daemon (`pmfuse -f -o allow_other POOL MNT`), and talks to it through the
kernel with ordinary system calls.

Each test file is a list of functions decorated with @test; each function gets a Mount `m`:

    m.path('a', 'b')      a path inside the mount
    m.remount()           clean unmount (waits for the daemon to exit 0), then mount the same pool
    m.kill9()             SIGKILL the daemon and detach the dead mount: a crash, as far as the pool
                          can tell; m.mount() mounts the pool again
    m.another()           a second fresh pool and mount, cleaned up with the first
    m.fork(fn, ...)       run fn in a forked child (killed at the end of the test if still alive)
    m.info()              `pmfusectl info POOL` as a dict (mounts must be down for a true picture)
    m.rng                 random.Random seeded from PMFUSE_SEED (printed), so a run replays

Cleanup is unconditional: whatever the test did (failed, raised, hung, was killed), mounts are
unmounted (fusermount3 -u, then -uz), daemons are reaped, children killed, pools and directories
removed. A watchdog process in its own session enforces the per-test deadline: when it passes,
the watchdog SIGKILLs the daemon and detaches the mount lazily, which makes every FUSE request in
flight fail (ENOTCONN), so a hung request fails one test instead of hanging CI. If this process
dies (killed by the test runner's timeout), the watchdog does the whole cleanup itself.

A test fails when it raises; the helpers below (eq, check, expect_errno, run_as, ...) raise
Failure with a message naming what was expected and what was seen. Daemon trouble also fails the
test it happened in: a daemon that dies without being asked, does not exit 0 after a clean
unmount, or prints a sanitizer report.

Exit status (meson conventions): 0 all passed, 1 a failure, 77 all skipped (not root, no
/dev/fuse, no fusermount3, or the daemon is not built). The last line is the summary:
"fs_namespace: 12 passed, 1 failed, 2 skipped".

Options of every test file: --daemon PATH --mkfs PATH --ctl PATH (else $PMFUSE_DAEMON, $PMFUSE_MKFS,
$PMFUSE_CTL, else the first build*/ directory of the checkout that has them), -k SUBSTRING (run
only tests whose name contains it), -v (print daemon logs of passing tests too), --list.
Environment: PMFUSE_SEED, PMFUSE_TEST_SCALE (multiplies operation counts; the sanitizer build
uses 0.25), PMFUSE_TEST_TIMEOUT_FACTOR (multiplies deadlines; 3 by default when ASAN_OPTIONS,
UBSAN_OPTIONS or TSAN_OPTIONS is set), PMFUSE_TEST_DIR, PMFUSE_DAEMON_OPTS (extra -o options;
with writeback_cache, tests that depend on when data reaches the pool follow WRITEBACK_CACHE),
PMFUSE_DAEMON_DEBUG=1 (pass -d), PMFUSE_TEST_URING=1 (every mount with -o io_uring, FUSE over
io_uring: needs a daemon built against libfuse >= 3.18 and enable_uring=Y, which the tests never
set; without it every file is skipped, and a daemon that ends up on /dev/fuse fails its test).
"""

import ctypes
import ctypes.util
import errno
import glob
import os
import pickle
import random
import select
import shutil
import signal
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))

# --------------------------------------------------------------------------------------------
# Outcomes


class Failure(Exception):
    """An assertion of a test did not hold."""


class Skip(Exception):
    """The test cannot run here (the reason says why); counted as skipped, never as passed."""


class TestTimeout(BaseException):
    """The per-test deadline passed (raised by SIGALRM in pure-Python loops)."""


class Terminated(BaseException):
    """SIGTERM (the test runner's timeout): clean up, then exit."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise Failure(f"{what}: expected {fmt(expected)}, got {fmt(actual)}")


def fmt(v):
    if isinstance(v, int) and v > 4096 and not isinstance(v, bool):
        return f"{v} ({v:#x})"
    if isinstance(v, (bytes, bytearray)) and len(v) > 64:
        return f"<{len(v)} bytes {bytes(v[:16]).hex()}...>"
    return repr(v)


def ename(e):
    if e == 0:
        return "success"
    return errno.errorcode.get(e, str(e))


def expect_errno(err, fn, *args, **kw):
    """Calls fn(*args, **kw) and checks that it fails with OSError errno err (or one of a tuple)."""
    errs = err if isinstance(err, tuple) else (err,)
    try:
        r = fn(*args, **kw)
    except OSError as e:
        if e.errno in errs:
            return e
        raise Failure(f"{describe(fn, args)}: expected {'/'.join(map(ename, errs))}, "
                      f"got {ename(e.errno)} ({e})") from None
    if isinstance(r, int) and not isinstance(r, bool) and fn in (os.open,):
        os.close(r)
    raise Failure(f"{describe(fn, args)}: expected {'/'.join(map(ename, errs))}, "
                  f"got success ({r!r})")


def describe(fn, args):
    name = getattr(fn, "__name__", repr(fn))
    shown = []
    for a in args:
        s = repr(a)
        shown.append(s if len(s) < 60 else s[:57] + "...")
    return f"{name}({', '.join(shown)})"


def errno_of(fn, *args, **kw):
    """0 if fn(*args) succeeds, else the errno of its OSError."""
    try:
        r = fn(*args, **kw)
        if fn is os.open:
            os.close(r)
        return 0
    except OSError as e:
        return e.errno


# --------------------------------------------------------------------------------------------
# System calls that os lacks (ctypes over glibc)

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)
FICLONE = 0x40049409
FICLONERANGE = 0x4020940d
FIDEDUPERANGE = 0xc0189436

libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t
libc.syscall.restype = ctypes.c_long


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]


def _raise_errno(what):
    e = ctypes.get_errno()
    raise OSError(e, f"{what}: {os.strerror(e)}")


def _b(p):
    return p if isinstance(p, bytes) else os.fsencode(p)


def renameat2(old, new, flags=0):
    if libc.renameat2(AT_FDCWD, _b(old), AT_FDCWD, _b(new), flags) != 0:
        _raise_errno(f"renameat2({old}, {new}, {flags})")


def fallocate(fd, mode, off, length):
    if libc.fallocate64(fd, mode, off, length) != 0:
        _raise_errno(f"fallocate(mode={mode:#x}, {off}, {length})")


def utimensat(path, atime, mtime, follow=True):
    """atime, mtime: (sec, nsec) tuples, or UTIME_NOW / UTIME_OMIT."""
    def ts(t):
        if t in (UTIME_NOW, UTIME_OMIT):
            return Timespec(0, t)
        return Timespec(t[0], t[1])
    arr = (Timespec * 2)(ts(atime), ts(mtime))
    if libc.utimensat(AT_FDCWD, _b(path), arr, 0 if follow else AT_SYMLINK_NOFOLLOW) != 0:
        _raise_errno(f"utimensat({path})")


def getxattr_sized(path, name, size):
    """getxattr(2) with an exact buffer size (0: ask for the size). Returns (length, bytes)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = libc.getxattr(_b(path), _b(name), buf if size else None, size)
    if n < 0:
        _raise_errno(f"getxattr({name}, size={size})")
    return n, buf.raw[:n] if size else b""


def listxattr_sized(path, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    n = libc.listxattr(_b(path), buf if size else None, size)
    if n < 0:
        _raise_errno(f"listxattr(size={size})")
    return n, buf.raw[:n] if size else b""


MAX_HANDLE_SZ = 128


def name_to_handle(path):
    """name_to_handle_at(2): the file handle of path, as (handle_type, handle bytes)."""
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("<Ii", buf, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, _b(path), buf, ctypes.byref(mount_id), 0) != 0:
        _raise_errno(f"name_to_handle_at({path})")
    nbytes, htype = struct.unpack_from("<Ii", buf.raw, 0)
    return htype, buf.raw[8:8 + nbytes]


def open_by_handle(mount_fd, handle, flags=os.O_RDONLY):
    """open_by_handle_at(2) of a handle from name_to_handle (needs CAP_DAC_READ_SEARCH)."""
    htype, data = handle
    buf = ctypes.create_string_buffer(struct.pack("<Ii", len(data), htype) + data)
    fd = libc.open_by_handle_at(mount_fd, buf, flags)
    if fd < 0:
        _raise_errno("open_by_handle_at")
    return fd


def drop_caches(what=3):
    """sync, then drop the page cache (1), dentries and inodes (2), or both (3)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(str(what))


SYS_getdents64 = 217  # x86_64
if os.uname().machine == "aarch64":
    SYS_getdents64 = 61


def getdents_fd(fd, bufsize=32768):
    """One getdents64 call: a list of (ino, next_offset, d_type, name bytes); [] at the end."""
    buf = ctypes.create_string_buffer(bufsize)
    n = libc.syscall(SYS_getdents64, fd, buf, bufsize)
    if n < 0:
        _raise_errno("getdents64")
    out, pos, raw = [], 0, buf.raw
    while pos < n:
        ino, off, reclen, dtype = struct.unpack_from("<QqHB", raw, pos)
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        out.append((ino, off, dtype, name))
        pos += reclen
    return out


def getdents(path, bufsize=32768):
    """Every entry of a directory, "." and ".." included, as getdents64 returns them."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = []
        while True:
            chunk = getdents_fd(fd, bufsize)
            if not chunk:
                return out
            out.extend(chunk)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Configuration

SCALE = float(os.environ.get("PMFUSE_TEST_SCALE", "1") or 1)
if "PMFUSE_TEST_TIMEOUT_FACTOR" in os.environ:
    TIME_FACTOR = float(os.environ["PMFUSE_TEST_TIMEOUT_FACTOR"])
else:
    TIME_FACTOR = 3.0 if ("ASAN_OPTIONS" in os.environ or "UBSAN_OPTIONS" in os.environ
                          or "TSAN_OPTIONS" in os.environ) else 1.0
SEED = int(os.environ.get("PMFUSE_SEED") or (int.from_bytes(os.urandom(4), "little") & 0x7fffffff))
BASE_DIR = os.environ.get("PMFUSE_TEST_DIR") or "/dev/shm"
MOUNT_TIMEOUT = 20 * TIME_FACTOR
EXIT_TIMEOUT = 30 * TIME_FACTOR


def scaled(n, minimum=1):
    return max(minimum, int(n * SCALE))


DAEMON_OPTS = os.environ.get("PMFUSE_DAEMON_OPTS", "")
# -o writeback_cache (through PMFUSE_DAEMON_OPTS): the kernel's page cache holds writes back,
# so data is on the pool after fsync or close, not when write(2) returns; write(2) never fails
# for space (ENOSPC comes from fsync and close); SEEK_DATA/SEEK_HOLE are the kernel's own (all
# data up to EOF); callers of the pmfuse ioctls fsync the files they hand over first.
WRITEBACK_CACHE = "writeback_cache" in DAEMON_OPTS.split(",")
# PMFUSE_TEST_URING=1: every mount asks for FUSE over io_uring (meson test --setup uring);
# with writeback_cache the daemon stays on /dev/fuse (ops.c op_init says why)
URING = os.environ.get("PMFUSE_TEST_URING") == "1"
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"


def uring_enabled():
    """Whether the kernel offers FUSE over io_uring now (the module parameter is Y)."""
    try:
        with open(URING_PARAM) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


class Config:
    daemon = mkfs = ctl = None
    verbose = False
    only = None
    list_only = False


def _find_binary(name, env, sub):
    if os.environ.get(env):
        return os.environ[env]
    cands = sorted(glob.glob(os.path.join(TOP, "build*", sub, name)),
                   key=lambda p: (not p.startswith(os.path.join(TOP, "build" + os.sep)),
                                  -os.path.getmtime(p)))
    return cands[0] if cands else None


def parse_args(argv):
    cfg = Config()
    it = iter(argv)
    for a in it:
        if a == "--daemon":
            cfg.daemon = next(it)
        elif a == "--mkfs":
            cfg.mkfs = next(it)
        elif a == "--ctl":
            cfg.ctl = next(it)
        elif a == "-k":
            cfg.only = next(it)
        elif a == "-v":
            cfg.verbose = True
        elif a == "--list":
            cfg.list_only = True
        elif a in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        else:
            print(f"unknown argument {a}", file=sys.stderr)
            sys.exit(2)
    cfg.daemon = cfg.daemon or _find_binary("pmfuse", "PMFUSE_DAEMON", os.path.join("src", "fuse"))
    # the tools of the daemon's own build directory, when they are there
    build = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cfg.daemon)))) \
        if cfg.daemon else None
    for attr, name, env in (("mkfs", "mkfs.pmfuse", "PMFUSE_MKFS"),
                            ("ctl", "pmfusectl", "PMFUSE_CTL")):
        if getattr(cfg, attr) or os.environ.get(env):
            setattr(cfg, attr, getattr(cfg, attr) or os.environ[env])
        elif build and os.access(os.path.join(build, "tools", name), os.X_OK):
            setattr(cfg, attr, os.path.join(build, "tools", name))
        else:
            setattr(cfg, attr, _find_binary(name, env, "tools"))
    return cfg


def skip_reason(cfg):
    if os.geteuid() != 0:
        return "not root: the fs tests mount FUSE filesystems and switch users"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not shutil.which("fusermount3"):
        return "fusermount3 is missing (Debian package fuse3)"
    if not cfg.daemon or not os.access(cfg.daemon, os.X_OK):
        return f"the daemon is not built ({cfg.daemon or 'no build*/src/fuse/pmfuse'})"
    if not cfg.mkfs or not os.access(cfg.mkfs, os.X_OK):
        return f"mkfs.pmfuse is not built ({cfg.mkfs or 'no build*/tools/mkfs.pmfuse'})"
    if not os.path.isdir(BASE_DIR):
        return f"{BASE_DIR} does not exist (set PMFUSE_TEST_DIR)"
    if URING and not uring_enabled():
        return (f"PMFUSE_TEST_URING=1 but {URING_PARAM} is not Y (the kernel would serve the "
                "mounts over /dev/fuse)")
    return None


# --------------------------------------------------------------------------------------------
# Mount table


def _unescape(s):
    """The octal escapes of /proc/self/mountinfo (space, tab, newline, '#', backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda mo: chr(int(mo.group(1), 8)), s)


def mountinfo():
    """Mount point -> (fstype, source, dev 'maj:min') of the mounts this process sees."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            fields = left.split()
            rf = right.split()
            out[_unescape(fields[4])] = (rf[0], _unescape(rf[1]) if len(rf) > 1 else "", fields[2])
    return out


def is_mounted(path):
    return os.path.realpath(path) in mountinfo()


FUSECTL = "/sys/fs/fuse/connections"


def abort_fuse_connection(mnt):
    """Ends every request of the FUSE connection mounted on mnt (fusectl's abort), as the
    daemon's death does on /dev/fuse. On the io_uring rings (kernel 6.18) a killed daemon can
    leave requests unanswered, and their callers hung, until the connection is aborted. Only
    with PMFUSE_TEST_URING; mounts fusectl where it is missing."""
    info = mountinfo().get(os.path.realpath(mnt))
    if not URING or not info or not info[0].startswith("fuse"):
        return
    if not any(v[0] == "fusectl" for v in mountinfo().values()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with open(os.path.join(FUSECTL, info[2].split(":")[1], "abort"), "w") as f:
            f.write("1")
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Watchdog: a separate process in its own session


def watchdog_main(parent_pid):
    """Reads commands from stdin; on deadline or parent death, kills daemons, detaches mounts."""
    mounts, dirs, pids = {}, set(), set()
    deadline = 0.0
    label = ""

    def kill_mounts(why):
        for key, (mnt, pid) in list(mounts.items()):
            print(f"pmfs watchdog: {why}: killing daemon {pid} and detaching {mnt}",
                  file=sys.stderr, flush=True)
            for p in [pid]:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            abort_fuse_connection(mnt)
            subprocess.run(["fusermount3", "-uz", mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        mounts.clear()

    def parent_alive():
        try:
            with open(f"/proc/{parent_pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    fd = sys.stdin.fileno()
    buf = b""
    while True:
        r, _, _ = select.select([fd], [], [], 0.2)
        gone = False
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                gone = True
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode(errors="replace").split(" ")
                if cmd[0] == "mount":
                    mounts[cmd[1]] = (cmd[2], int(cmd[3]))
                elif cmd[0] == "unmount":
                    mounts.pop(cmd[1], None)
                elif cmd[0] == "dir":
                    dirs.add(cmd[1])
                elif cmd[0] == "rmdir":
                    dirs.discard(cmd[1])
                elif cmd[0] == "pid":
                    pids.add(int(cmd[1]))
                elif cmd[0] == "unpid":
                    pids.discard(int(cmd[1]))
                elif cmd[0] == "deadline":
                    deadline = float(cmd[1])
                    label = " ".join(cmd[2:])
        if gone or not parent_alive():
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            kill_mounts("the test process is gone")
            time.sleep(0.2)
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            return 0
        if deadline and time.time() > deadline:
            kill_mounts(f"deadline of test {label} passed")
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            deadline = 0.0
            try:
                sys.stdout.write("fired\n")
                sys.stdout.flush()
            except OSError:
                pass


class Watchdog:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--watchdog",
                                      str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True, close_fds=True)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def fds(self):
        return (self.proc.stdin.fileno(), self.proc.stdout.fileno())

    def send(self, *words):
        try:
            self.proc.stdin.write((" ".join(str(w) for w in words) + "\n").encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def fired(self):
        try:
            data = self.proc.stdout.read()
        except (OSError, TypeError):
            return False
        return bool(data) and b"fired" in data

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


WATCHDOG = None

# --------------------------------------------------------------------------------------------
# Child processes


def _child_setup():
    """In a freshly forked child: let go of the watchdog pipes and the parent's signal setup."""
    if WATCHDOG is not None:
        for fd in WATCHDOG.fds():
            try:
                os.close(fd)
            except OSError:
                pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Child:
    """A forked child running fn; wait() returns its result or raises what it raised."""

    def __init__(self, fn, args, kw, creds=None, owner=None):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                _child_setup()
                if creds is not None:
                    uid, gid, groups = creds
                    os.setgroups(list(groups))
                    os.setgid(gid)
                    os.setuid(uid)
                res = ("ok", fn(*args, **kw))
            except BaseException as e:  # noqa: B902 - everything goes back to the parent
                code = 1
                tb = traceback.format_exc()
                try:
                    pickle.dumps(e)
                    res = ("exc", e, tb)
                except Exception:
                    res = ("exc", Failure(repr(e)), tb)
            try:
                data = pickle.dumps(res)
            except Exception as e:
                data = pickle.dumps(("exc", Failure(f"unpicklable result: {e!r}"), ""))
                code = 1
            try:
                with os.fdopen(w, "wb") as f:
                    f.write(data)
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.rfd, self.owner = pid, r, owner
        self.status = None
        self.data = b""
        if owner is not None:
            owner.children.append(self)
        if WATCHDOG is not None:
            WATCHDOG.send("pid", pid)

    def wait(self, timeout=None):
        """The child's return value; re-raises its exception (OSError keeps its errno)."""
        res = self.join(timeout)
        if res[0] == "ok":
            return res[1]
        exc = res[1]
        if not isinstance(exc, (OSError, Failure, Skip)):
            raise Failure(f"child {self.pid} raised:\n{res[2]}")
        raise exc

    def join(self, timeout=None):
        end = time.time() + (timeout if timeout is not None else 120 * TIME_FACTOR)
        while self.rfd is not None:
            left = end - time.time()
            if left <= 0:
                self.kill()
                raise Failure(f"child {self.pid} did not finish in time")
            r, _, _ = select.select([self.rfd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    os.close(self.rfd)
                    self.rfd = None
                else:
                    self.data += chunk
        self.reap()
        if not self.data:
            return ("exc", Failure(f"child {self.pid} died without a result "
                                   f"(status {describe_status(self.status)})"), "")
        return pickle.loads(self.data)

    def exited(self):
        """True once the child has exited (its result stays in the pipe for join)."""
        if self.status is None:
            try:
                pid, st = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = st
            except ChildProcessError:
                self.status = 0
        return self.status is not None

    def reap(self, block=True):
        if self.status is None:
            try:
                pid, st = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                if pid:
                    self.status = st
            except ChildProcessError:
                self.status = 0
        if self.status is not None and WATCHDOG is not None:
            WATCHDOG.send("unpid", self.pid)
        return self.status

    def kill(self, sig=signal.SIGKILL):
        if self.status is None:
            try:
                os.kill(self.pid, sig)
            except OSError:
                pass

    def cleanup(self):
        self.kill()
        if self.rfd is not None:
            os.close(self.rfd)
            self.rfd = None
        self.reap()


def describe_status(st):
    if st is None:
        return "running"
    if os.WIFSIGNALED(st):
        return f"killed by signal {signal.Signals(os.WTERMSIG(st)).name}"
    return f"exit {os.WEXITSTATUS(st)}"


def run_as(uid, gid, fn, *args, groups=(), **kw):
    """Runs fn(*args) in a child with the given uid, gid and supplementary groups (no
    capabilities); returns its result or raises its exception."""
    return Child(fn, args, kw, creds=(uid, gid, groups), owner=CURRENT.get("mount")).wait()


def errno_as(uid, gid, fn, *args, groups=(), **kw):
    """0 if fn(*args) succeeds as uid/gid, else its errno."""
    try:
        run_as(uid, gid, fn, *args, groups=groups, **kw)
        return 0
    except OSError as e:
        return e.errno


def expect_errno_as(uid, gid, err, fn, *args, groups=(), **kw):
    got = errno_as(uid, gid, fn, *args, groups=groups, **kw)
    errs = err if isinstance(err, tuple) else (err,)
    if got not in errs:
        raise Failure(f"{describe(fn, args)} as uid {uid} gid {gid}: expected "
                      f"{'/'.join(map(ename, errs))}, got {ename(got)}")


# --------------------------------------------------------------------------------------------
# Pools and mounts

CURRENT = {}


class Mount:
    _count = 0

    def __init__(self, test, cfg, size, opts=(), label="m"):
        Mount._count += 1
        self.cfg, self.test, self.size = cfg, test, size
        self.id = f"{os.getpid()}-{Mount._count}"
        self.dir = tempfile.mkdtemp(prefix=f"pmfs-{test.file}-{test.name[:40]}-", dir=BASE_DIR)
        os.chmod(self.dir, 0o755)
        if WATCHDOG:
            WATCHDOG.send("dir", self.dir)
        self.pool = os.path.join(self.dir, "pool")
        self.mnt = os.path.join(self.dir, "mnt")
        os.mkdir(self.mnt)
        os.chmod(self.mnt, 0o755)
        self.log = os.path.join(self.dir, f"daemon-{label}.log")
        self.opts = list(opts)
        self.daemon = None
        self.killed = False
        self.problems = []       # daemon misbehaviour found at unmount, failures of the test
        self.children = []
        self.extra = []          # other mounts made by another()
        self.rng = random.Random(f"{SEED}-{test.file}-{test.name}-{label}")
        self.tmp = os.path.join(self.dir, "tmp")
        os.mkdir(self.tmp)

    # -- paths
    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    # -- pool
    def mkfs(self, *extra):
        cmd = [self.cfg.mkfs, "-s", str(self.size), *extra, self.pool]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120 * TIME_FACTOR)
        if r.returncode != 0:
            raise Failure(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}")

    def info(self):
        """pmfusectl info as {key: value} ("clean", "in use", "log state", "free", ...)."""
        if not self.cfg.ctl:
            raise Skip("pmfusectl is not built")
        r = subprocess.run([self.cfg.ctl, "info", self.pool], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60 * TIME_FACTOR)
        if r.returncode != 0:
            raise Failure(f"pmfusectl info {self.pool} failed ({r.returncode}):\n{r.stdout}")
        out = {"_text": r.stdout}
        for line in r.stdout.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k.strip()] = v.strip()
        return out

    def fsck(self):
        """Runs `fsck.pmfuse -n POOL` (check only; fsck exit codes, 0 = clean) if it is built
        ($PMFUSE_FSCK, or next to mkfs.pmfuse); returns its output, or None when it is not."""
        fsck = os.environ.get("PMFUSE_FSCK") or os.path.join(os.path.dirname(self.cfg.mkfs),
                                                             "fsck.pmfuse")
        if not os.access(fsck, os.X_OK):
            return None
        check(self.daemon is None, "fsck while mounted")
        r = subprocess.run([fsck, "-n", self.pool], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300 * TIME_FACTOR)
        if r.returncode != 0:
            raise Failure(f"fsck.pmfuse -n {self.pool} exited {r.returncode}:\n{r.stdout}")
        return r.stdout

    # -- daemon
    def daemon_cmd(self, pool=None, mnt=None):
        opts = ["allow_other"] + self.opts
        if DAEMON_OPTS:
            opts.append(DAEMON_OPTS)
        if URING and "io_uring" not in opts:
            opts.append("io_uring")
        cmd = [self.cfg.daemon, "-f"]
        if os.environ.get("PMFUSE_DAEMON_DEBUG") == "1":
            cmd.append("-d")
        return cmd + ["-o", ",".join(opts), pool or self.pool, mnt or self.mnt]

    def mount(self):
        check(self.daemon is None or self.daemon.poll() is not None,
              "mount() while the daemon is running")
        if self.daemon is not None:
            self.reap_daemon()
        with open(self.log, "ab") as logf:
            logf.write(f"==== {time.strftime('%H:%M:%S')} mount\n".encode())
            logf.flush()
            self.daemon = subprocess.Popen(self.daemon_cmd(), stdin=subprocess.DEVNULL,
                                           stdout=logf, stderr=logf, start_new_session=True)
        self.killed = False
        if WATCHDOG:
            WATCHDOG.send("mount", self.id, self.mnt, self.daemon.pid)
        end = time.time() + MOUNT_TIMEOUT
        while True:
            if is_mounted(self.mnt):
                break
            st = self.daemon.poll()
            if st is not None:
                self.daemon = None
                raise Failure(f"daemon exited with status {st} before the mount appeared:\n"
                              + self.log_tail())
            if time.time() > end:
                raise Failure(f"the mount did not appear within {MOUNT_TIMEOUT:.0f}s:\n"
                              + self.log_tail())
            time.sleep(0.01)
        fstype = mountinfo()[os.path.realpath(self.mnt)][0]
        check(fstype.startswith("fuse"), f"{self.mnt} is mounted as {fstype}, not fuse")
        return self

    def log_tail(self, lines=40):
        try:
            with open(self.log, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return "(no daemon log)"
        return "\n".join("    daemon| " + l for l in tail)

    def unmount(self, expect_clean=True):
        """fusermount3 -u (retried while busy, then -uz); waits for the daemon to exit and
        records a problem if it did not exit 0 (unless it was killed on purpose)."""
        if is_mounted(self.mnt):
            ok = False
            for _ in range(50):
                r = subprocess.run(["fusermount3", "-u", self.mnt], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                if r.returncode == 0 or not is_mounted(self.mnt):
                    ok = True
                    break
                time.sleep(0.1)
            if not ok:
                subprocess.run(["fusermount3", "-uz", self.mnt], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                self.problems.append(f"{self.mnt} stayed busy; unmounted lazily ({r.stdout.strip()})")
        self.reap_daemon(expect_clean=expect_clean and not self.killed)

    def reap_daemon(self, expect_clean=True):
        d = self.daemon
        if d is None:
            return
        try:
            st = d.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            d.kill()
            st = d.wait()
            self.problems.append(f"daemon did not exit within {EXIT_TIMEOUT:.0f}s of the "
                                 "unmount; killed\n" + self.log_tail())
            expect_clean = False
        if WATCHDOG:
            WATCHDOG.send("unmount", self.id)
        self.daemon = None
        if expect_clean and st != 0:
            how = f"signal {signal.Signals(-st).name}" if st < 0 else f"status {st}"
            self.problems.append(f"daemon exited with {how} after unmount\n" + self.log_tail())
        self.scan_log()

    def scan_log(self):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except OSError:
            return
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "ThreadSanitizer"):
            if marker in text and marker not in "".join(self.problems):
                self.problems.append(f"sanitizer report in the daemon log ({marker}):\n"
                                     + self.log_tail(60))
        # the log names the transport at INIT (initx.c): a run meant for the ring must use it
        wbc = WRITEBACK_CACHE or "writeback_cache" in self.opts
        if URING and not wbc and "transport: /dev/fuse" in text and "on /dev/fuse" not in "".join(self.problems):
            self.problems.append("PMFUSE_TEST_URING=1 but the daemon served on /dev/fuse:\n"
                                 + self.log_tail())

    def remount(self):
        self.unmount()
        self.raise_problems()
        return self.mount()

    def kill9(self):
        """Crash: SIGKILL the daemon, then detach the dead mount (the pool stays as it was)."""
        self.kill_daemon()
        self.detach()

    def kill_daemon(self):
        """SIGKILL the daemon (every request in flight and after fails with ENOTCONN)."""
        check(self.daemon is not None, "kill_daemon without a daemon")
        self.killed = True
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=EXIT_TIMEOUT)
        abort_fuse_connection(self.mnt)
        # a sanitizer that stopped the daemon before the kill must still fail the test
        self.scan_log()

    def detach(self):
        """Unmounts the dead mount of a killed daemon (closing this process's fds into it)."""
        self.close_fds_inside()
        for _ in range(50):
            r = subprocess.run(["fusermount3", "-u", self.mnt], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            if r.returncode == 0 or not is_mounted(self.mnt):
                break
            time.sleep(0.1)
        else:
            subprocess.run(["fusermount3", "-uz", self.mnt])
        self.daemon = None
        if WATCHDOG:
            WATCHDOG.send("unmount", self.id)

    def raise_problems(self):
        if self.problems:
            p, self.problems = self.problems, []
            raise Failure("\n".join(p))

    # -- helpers
    def statfs(self):
        return os.statvfs(self.mnt)

    def another(self, size=None, opts=()):
        m = Mount(self.test, self.cfg, size or self.size, opts, label=f"x{len(self.extra) + 1}")
        self.extra.append(m)
        m.mkfs()
        m.mount()
        return m

    def fork(self, fn, *args, **kw):
        return Child(fn, args, kw, owner=self)

    def close_fds_inside(self):
        """Closes this process's descriptors into the mount (a failed test leaves some open,
        and they would keep the mount busy); returns how many. Also leaves a cwd inside it."""
        n = 0
        prefix = os.path.realpath(self.mnt) + os.sep
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) or target == prefix[:-1]:
                try:
                    os.close(int(fd))
                    n += 1
                except OSError:
                    pass
        try:
            if os.getcwd().startswith(prefix[:-1]):
                os.chdir("/")
        except OSError:
            os.chdir("/")
        return n

    def cleanup(self):
        """Unconditional: children, mounts, daemons, directories. Returns problems found."""
        for c in self.children:
            c.kill()
        end = time.time() + 5 * TIME_FACTOR
        while time.time() < end and any(c.reap(block=False) is None for c in self.children):
            time.sleep(0.05)
        if any(c.status is None for c in self.children):
            # a child waits for a request the daemon never answers (a deadlock after the test
            # timed out in Python, so the watchdog stood down): only killing the daemon frees it
            self.problems.append("children still in FUSE requests at cleanup: daemon killed")
            for x in [self] + self.extra:
                if x.daemon is not None and x.daemon.poll() is None:
                    x.killed = True
                    x.daemon.kill()
        for c in self.children:
            c.cleanup()
        self.close_fds_inside()
        for m in self.extra:
            m.cleanup()
            self.problems.extend(m.problems)
        try:
            self.unmount()
        except Exception as e:  # never let cleanup stop cleanup
            self.problems.append(f"cleanup: {e!r}")
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", self.mnt])
        shutil.rmtree(self.dir, ignore_errors=True)
        if WATCHDOG:
            WATCHDOG.send("rmdir", self.dir)
        return self.problems


# --------------------------------------------------------------------------------------------
# Test registry and runner

TESTS = []


class TestCase:
    def __init__(self, fn, size, timeout, mount, opts):
        self.fn, self.name = fn, fn.__name__
        self.size, self.timeout, self.mount, self.opts = size, timeout, mount, opts
        self.file = os.path.splitext(os.path.basename(sys.modules[fn.__module__].__file__
                                                      if fn.__module__ != "__main__"
                                                      else sys.argv[0]))[0]


def test(size="64M", timeout=60, mount=True, opts=()):
    """Registers a test. size: pool size; timeout: deadline in seconds (times the factor);
    mount=False: the test gets an unmounted, unformatted Mount and does everything itself."""
    def deco(fn):
        TESTS.append(TestCase(fn, size, timeout, mount, opts))
        return fn
    return deco


def _on_alarm(signum, frame):
    raise TestTimeout()


def _on_term(signum, frame):
    raise Terminated()


def run_one(t, cfg):
    """Returns ('pass'|'fail'|'skip', message)."""
    # SIGALRM ends a test stuck in Python at its deadline; a test stuck in a FUSE request does
    # not see signals, so a few seconds later the watchdog kills the daemon under it
    deadline = time.time() + t.timeout * TIME_FACTOR
    WATCHDOG.send("deadline", f"{deadline + 3:.3f}", t.name)
    signal.setitimer(signal.ITIMER_REAL, t.timeout * TIME_FACTOR)
    m = None
    outcome, msg = "pass", ""
    try:
        m = Mount(t, cfg, t.size, t.opts)
        CURRENT["mount"] = m
        if t.mount:
            m.mkfs()
            m.mount()
        t.fn(m)
    except Skip as e:
        outcome, msg = "skip", str(e)
    except Failure as e:
        outcome, msg = "fail", str(e) + "\n" + _where(e)
    except TestTimeout:
        outcome, msg = "fail", f"timed out after {t.timeout * TIME_FACTOR:.0f}s\n" + \
            traceback.format_exc(limit=-4)
    except Terminated:
        raise
    except Exception:
        outcome, msg = "fail", traceback.format_exc(limit=-6)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        CURRENT.pop("mount", None)
        WATCHDOG.send("deadline", "0")
        fired = WATCHDOG.fired()
        if fired and m is not None:
            for x in [m] + m.extra:
                x.killed = True
        problems = m.cleanup() if m is not None else []
    if fired or WATCHDOG.fired():
        outcome = "fail"
        msg = (f"deadline of {t.timeout * TIME_FACTOR:.0f}s passed: the watchdog killed the "
               f"daemon\n{msg}")
    if problems and outcome != "fail":
        outcome, msg = "fail", ""
    if problems:
        msg += ("\n" if msg else "") + "\n".join(problems)
    if outcome == "fail" and m is not None and cfg.verbose:
        msg += "\n" + m.log_tail(80)
    return outcome, msg


def _where(e):
    tb = traceback.extract_tb(e.__traceback__)
    frames = [f for f in tb if os.path.basename(f.filename) != "pmfs.py"]
    if not frames:
        return ""
    f = frames[-1]
    return f"    at {os.path.basename(f.filename)}:{f.lineno}: {f.line}"


def main(name=None):
    global WATCHDOG
    name = name or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    cfg = parse_args(sys.argv[1:])
    tests = [t for t in TESTS if not cfg.only or cfg.only in t.name]
    if cfg.list_only:
        for t in tests:
            print(t.name)
        return 0
    why = skip_reason(cfg)
    if why:
        print(f"{name}: skipped: {why}")
        print(f"{name}: 0 passed, 0 failed, {len(tests)} skipped")
        return 77
    sys.stdout.reconfigure(line_buffering=True)
    os.umask(0o022)
    print(f"{name}: daemon {cfg.daemon}, mkfs {cfg.mkfs}, seed {SEED} (PMFUSE_SEED), "
          f"scale {SCALE}, timeout factor {TIME_FACTOR}, in {BASE_DIR}"
          + (f", daemon options {DAEMON_OPTS} (PMFUSE_DAEMON_OPTS)" if DAEMON_OPTS else "")
          + (", FUSE over io_uring (PMFUSE_TEST_URING)" if URING else ""))
    WATCHDOG = Watchdog()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    counts = {"pass": 0, "fail": 0, "skip": 0}
    failed = []
    t0 = time.time()
    try:
        for t in tests:
            start = time.time()
            outcome, msg = run_one(t, cfg)
            counts[outcome] += 1
            took = time.time() - start
            tag = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}[outcome]
            line = f"{tag} {t.name} ({took:.2f}s)"
            if outcome == "skip":
                line += f": {msg}"
            print(line)
            if outcome == "fail":
                failed.append(t.name)
                for l in msg.rstrip().splitlines():
                    print("     " + l)
    except (Terminated, KeyboardInterrupt):
        print(f"{name}: interrupted; cleaned up")
        counts["fail"] += 1
    finally:
        WATCHDOG.close()
    print(f"{name}: total time {time.time() - t0:.1f}s"
          + (f"; failed: {' '.join(failed)}" if failed else ""))
    line = f"{name}: {counts['pass']} passed, {counts['fail']} failed"
    if counts["skip"]:
        line += f", {counts['skip']} skipped"
    print(line)
    if counts["fail"]:
        return 1
    if counts["pass"] == 0 and counts["skip"]:
        return 77
    return 0


# --------------------------------------------------------------------------------------------
# Small shared helpers of the test files


def touch(path, mode=0o644):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, mode))
    return path


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def pread_all(fd, size, off=0):
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, min(size - len(out), 1 << 20), off + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def pwrite_all(fd, data, off):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        check(n > 0, f"pwrite returned {n}")
        view, off = view[n:], off + n


def same_bytes(actual, expected, what):
    if actual == expected:
        return
    if len(actual) != len(expected):
        raise Failure(f"{what}: length {len(actual)}, expected {len(expected)}")
    i = next(k for k in range(len(actual)) if actual[k] != expected[k])
    j = i
    while j < len(actual) and actual[j] != expected[j]:
        j += 1
    raise Failure(f"{what}: first difference at byte {i} ({i:#x}), {j - i} bytes differ there: "
                  f"got {bytes(actual[i:i + 16]).hex()}, expected {bytes(expected[i:i + 16]).hex()}")


# ---- crash checks of the kill -9 tests (fs_durability, fs_stress)

# what a system call into the mount of a killed daemon fails with
DEAD = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV)
if URING:
    # a request a ring had handed to the daemon when it died ends with ECANCELED (kernel 6.18)
    DEAD += (errno.ECANCELED,)


def old_or_new(got, old, new, what):
    """After a crash during a change of a file's data from old to new (which the daemon may
    do in several transactions): its size is between the two, and each byte is the old or the
    new one (0 past either's end)."""
    lo, hi = sorted((len(old), len(new)))
    check(lo <= len(got) <= hi, f"{what}: size {len(got)} after a torn change, expected "
          f"{len(old)}..{len(new)}")
    step = 4096
    for base in range(0, len(got), step):
        g = got[base:base + step]
        o = bytes(old[base:base + step]).ljust(len(g), b"\0")[:len(g)]
        n = bytes(new[base:base + step]).ljust(len(g), b"\0")[:len(g)]
        if g == o or g == n:
            continue
        for k in range(len(g)):
            if g[k] != o[k] and g[k] != n[k]:
                raise Failure(f"{what}: byte {base + k} is {g[k]}, neither old ({o[k]}) nor "
                              f"new ({n[k]}) after a torn change")


def clean_state(m):
    """The 'clean' line of pmfusectl info: "yes" or "no"."""
    info = m.info()
    check("clean" in info, f"pmfusectl info has no 'clean' line:\n{info['_text']}")
    return info["clean"].split()[0]


def wait_until(pred, timeout, what, interval=0.05):
    end = time.time() + timeout * TIME_FACTOR
    while True:
        v = pred()
        if v:
            return v
        if time.time() > end:
            raise Failure(f"{what}: not true within {timeout * TIME_FACTOR:.0f}s")
        time.sleep(interval)


def now_ns():
    return time.time_ns()


def ts_ns(st, which):
    return getattr(st, f"st_{which}time_ns")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--watchdog":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(watchdog_main(int(sys.argv[2])))
    print("pmfs.py is the harness of tests/fs/fs_*.py; run one of those.", file=sys.stderr)
    sys.exit(2)
