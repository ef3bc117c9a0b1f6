# SPDX-License-Identifier: BSD-3-Clause
"""Shared parts of bench/run and bench/reflink: finding (or building) a release build of pmfuse,
mounting pmfuse / tmpfs / a FUSE passthrough daemon / XFS on a loop device, dropping caches,
running fio, medians, the machine's load, and cleanup that always runs (mounts, daemons, loop
devices and files), also on SIGINT, SIGTERM and SIGHUP.

Benchmarks print figures; they assert nothing."""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(BENCH)


_T0 = time.time()


def log(*a):
    """Progress on stderr, with the seconds since start (a slow phase shows)."""
    print(f"[{time.time() - _T0:7.1f}s]", *a, file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


class Cleanup:
    """A stack of undo actions, run in reverse order by run() (and by `with`), each once,
    whatever happened; failures are printed, never raised."""

    def __init__(self):
        self.stack = []
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, _on_signal)

    def push(self, what, fn, *args):
        self.stack.append((what, fn, args))
        return len(self.stack) - 1

    def pop(self, token=None):
        """Runs (and removes) the newest action, or the one push() returned token for."""
        if token is None:
            token = len(self.stack) - 1
        what, fn, args = self.stack[token]
        self.stack[token] = (what, None, ())
        if fn is not None:
            try:
                fn(*args)
            except Exception as e:  # cleanup never stops cleanup
                log(f"cleanup: {what}: {e!r}")
        while self.stack and self.stack[-1][1] is None:
            self.stack.pop()

    def run(self):
        while self.stack:
            self.pop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # a second signal during cleanup must not stop it
        old = {s: signal.signal(s, signal.SIG_IGN)
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self.run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return False


def run(cmd, check=True, quiet=False, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}")
    return r


# ---- machine

def require_root():
    if os.geteuid() != 0:
        log("bench: run as root (mounts, drop_caches, loop devices)")
        sys.exit(2)


def install_deps():
    """bench/deps.sh installs the packages only the benchmarks need (fio, xfsprogs,
    duperemove)."""
    r = subprocess.run(["bash", os.path.join(BENCH, "deps.sh")])
    if r.returncode != 0:
        log("bench: could not install the benchmark dependencies (bench/deps.sh)")
        sys.exit(2)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def busy_processes(n=4):
    """The processes using the most CPU right now (other jobs skew the figures)."""
    r = run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], check=False)
    rows = [l.split(None, 1) for l in r.stdout.splitlines()[:n]]
    return ", ".join(f"{row[1].strip()} {row[0]}%" for row in rows if len(row) == 2)


def machine_summary():
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kv = dict(l.split(":", 1) for l in f)
        mem = f"{int(kv['MemTotal'].split()[0]) >> 20} GiB RAM, " \
              f"{int(kv['MemAvailable'].split()[0]) >> 20} GiB available"
    except (OSError, KeyError, ValueError):
        pass
    return (f"{cpus} CPUs ({model}), {mem}, kernel {os.uname().release}, "
            f"load {loadavg()}; busiest: {busy_processes()}")


def drop_caches():
    """sync, then drop the page cache, dentries and inodes (echo 3 > drop_caches). tmpfs keeps
    its pages (they are its storage); FUSE filesystems lose theirs and must ask the daemon."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ---- pmfuse build

def _buildinfo(build):
    try:
        with open(os.path.join(build, "meson-info", "intro-buildoptions.json")) as f:
            opts = {o["name"]: o["value"] for o in json.load(f)}
    except (OSError, ValueError):
        return "unknown build type"
    return (f"buildtype {opts.get('buildtype')}, b_ndebug {opts.get('b_ndebug')}, "
            f"sanitize {opts.get('b_sanitize')}, tx_verify {opts.get('tx_verify')}")


def pmfuse_build(build=None):
    """A build directory with the daemon, mkfs, pmfusectl and bench_meta. By default
    build-bench/ in the checkout: release, asserts and transaction verification off (a debug
    build checks every transaction and would measure that). Set up and (re)built here."""
    if build is None:
        build = os.path.join(TOP, "build-bench")
        if not os.path.isdir(os.path.join(build, "meson-info")):
            log(f"bench: setting up {build} (release, b_ndebug=true)")
            run(["meson", "setup", build, "--buildtype=release", "-Db_ndebug=true",
                 "-Dtx_verify=disabled"], cwd=TOP)
        log(f"bench: building {build}")
        run(["ninja", "-C", build])
    paths = {
        "daemon": os.path.join(build, "src", "fuse", "pmfuse"),
        "mkfs": os.path.join(build, "tools", "mkfs.pmfuse"),
        "ctl": os.path.join(build, "tools", "pmfusectl"),
        "meta": os.path.join(build, "bench", "bench_meta"),
    }
    for k in ("daemon", "mkfs"):
        if not os.access(paths[k], os.X_OK):
            log(f"bench: {paths[k]} is not built")
            sys.exit(2)
    paths["info"] = _buildinfo(build)
    return paths


def add_granularity_arg(ap):
    """--granularity: how the daemon persists. cache_line (the default) flushes and fences as on
    persistent memory; a pool file on /dev/shm would otherwise get libpmem2's page granularity,
    an msync(2) per barrier that persistent memory does not have."""
    ap.add_argument("--granularity", choices=["cache_line", "page", "byte", "default"],
                    default="cache_line",
                    help="PMEM2_FORCE_GRANULARITY for the daemon (cache_line: as on pmem; "
                         "default: what libpmem2 picks)")


def apply_granularity(args):
    """Sets PMEM2_FORCE_GRANULARITY for the daemons started from now on; returns a line saying
    which persistence they use."""
    if args.granularity == "default":
        os.environ.pop("PMEM2_FORCE_GRANULARITY", None)
    else:
        os.environ["PMEM2_FORCE_GRANULARITY"] = args.granularity.upper()
    return ("pmfuse persistence: PMEM2_FORCE_GRANULARITY="
            f"{os.environ.get('PMEM2_FORCE_GRANULARITY', '(unset: libpmem2 picks; msync on /dev/shm)')}")


def bench_meta_binary(paths, workdir):
    """bench_meta from the build, or compiled alone from bench/meta.c."""
    if os.access(paths.get("meta", ""), os.X_OK):
        return paths["meta"]
    out = os.path.join(workdir, "bench_meta")
    run(["cc", "-O2", "-o", out, os.path.join(BENCH, "meta.c")])
    return out


# ---- mounts

def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].replace("\\040", " ") == path:
                return True
    return False


def wait_mounted(path, proc, logfile, timeout=30):
    end = time.time() + timeout
    while not is_mounted(path):
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode} before mounting {path}:\n"
                               + tail(logfile))
        if time.time() > end:
            raise RuntimeError(f"{path} not mounted after {timeout}s:\n" + tail(logfile))
        time.sleep(0.02)


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def fuse_unmount(mnt, proc):
    for _ in range(50):
        if not is_mounted(mnt):
            break
        if subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            break
        time.sleep(0.1)
    else:
        subprocess.run(["fusermount3", "-uz", mnt], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if proc is not None:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_fuse(cmd, mnt, logfile, cleanup, what):
    """Starts a FUSE daemon in the foreground (its own session), waits for the mount, and
    registers its unmount. Returns (process, cleanup token)."""
    with open(logfile, "ab") as lf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                start_new_session=True)
    tok = cleanup.push(f"unmount {what} {mnt}", fuse_unmount, mnt, proc)
    wait_mounted(mnt, proc, logfile)
    return proc, tok


def mount_pmfuse(paths, pool, mnt, size, cleanup, logfile, opts=None):
    """mkfs.pmfuse -s SIZE POOL, then `pmfuse -f [-o OPTS] POOL MNT`. Returns the cleanup
    token."""
    run([paths["mkfs"], "-q", "-f", "-s", str(size), pool])
    cleanup.push(f"remove pool {pool}", _rm, pool)
    os.makedirs(mnt, exist_ok=True)
    _, tok = start_fuse([paths["daemon"], "-f"] + (["-o", opts] if opts else []) + [pool, mnt],
                        mnt, logfile, cleanup, "pmfuse")
    return tok


def mount_tmpfs(mnt, size, cleanup):
    os.makedirs(mnt, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", mnt])
    return cleanup.push(f"unmount tmpfs {mnt}", umount, mnt)


def umount(mnt):
    if is_mounted(mnt):
        r = run(["umount", mnt], check=False)
        if r.returncode != 0:
            time.sleep(0.5)
            run(["umount", "-l", mnt], check=False)


def passthrough_cmd(binary, src, mnt, extra=None):
    """The command line of a libfuse passthrough example: passthrough_hp takes
    `[options] SOURCE MOUNTPOINT` and --foreground; passthrough_ll takes `-o source=SOURCE`;
    anything else gets `-f SOURCE MOUNTPOINT`. extra: a template with {src} and {mnt}."""
    if extra:
        return [binary] + [a.format(src=src, mnt=mnt) for a in extra.split()]
    helptext = run([binary, "--help"], check=False).stdout
    if "--foreground" in helptext:
        return [binary, "--foreground", src, mnt]
    if "source=" in helptext:
        return [binary, "-f", "-o", f"source={src}", mnt]
    return [binary, "-f", src, mnt]


def _rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def workdir(cleanup, prefix):
    """A private directory in /dev/shm (pools and images) and one in /tmp (mount points)."""
    shm = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm")
    cleanup.push(f"remove {shm}", _rm, shm)
    mnts = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    cleanup.push(f"remove {mnts}", _rmdir_if_unmounted, mnts)
    return shm, mnts


def _rmdir_if_unmounted(d):
    # never delete through a mount that is still there
    for sub in os.listdir(d):
        p = os.path.join(d, sub)
        if is_mounted(p):
            log(f"cleanup: {p} is still mounted; leaving {d}")
            return
    shutil.rmtree(d, ignore_errors=True)


# ---- loop device + XFS

def mount_xfs_loop(image, size, mnt, cleanup, mkfs_opts=("-m", "reflink=1")):
    """An XFS with the given mkfs options on a loop device over a sparse image file."""
    with open(image, "wb") as f:
        f.truncate(size)
    cleanup.push(f"remove {image}", _rm, image)
    dev = run(["losetup", "--find", "--show", image]).stdout.strip()
    cleanup.push(f"detach {dev}", run, ["losetup", "-d", dev], False)
    run(["mkfs.xfs", "-q", "-f", *mkfs_opts, dev])
    os.makedirs(mnt, exist_ok=True)
    run(["mount", "-t", "xfs", dev, mnt])
    cleanup.push(f"unmount {mnt}", umount, mnt)
    return dev


# ---- fio

def fio(args, cwd=None):
    """Runs fio with --output-format=json; returns the parsed job list's first (grouped) job."""
    cmd = ["fio", "--output-format=json", *args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr}\n"
                           f"{r.stdout[-2000:]}")
    out = r.stdout
    # fio may print notes before the JSON document
    out = out[out.index("{"):]
    return json.loads(out)["jobs"][0]


def fmt_num(x, unit=""):
    if x != x:  # nan
        return "-"
    if x >= 100:
        s = f"{x:,.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + unit


def fmt_ratio(a, b):
    if not (a == a and b == b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def print_table(headers, rows, out=sys.stdout):
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                     for i, h in enumerate(headers))
    print(line, file=out)
    print("-" * len(line), file=out)
    for r in rows:
        print("  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                        for i, c in enumerate(r)), file=out)
    out.flush()
