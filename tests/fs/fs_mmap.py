#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""mmap through the kernel (page cache; FUSE DAX is virtio-fs only): shared writable mappings,
msync, coherence with read/write, holes, private mappings, SIGBUS past EOF, and what msync made
durable surviving a kill -9 of the daemon."""

import mmap
import os
import signal

import pmfs
from pmfs import check, eq, test, write_file, read_file, pread_all, same_bytes

PAGE = mmap.PAGESIZE


def map_file(path, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE):
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, size, flags=flags, prot=prot)
    finally:
        os.close(fd)


@test()
def shared_write_visible(m):
    p = m.path("f")
    size = 64 * PAGE + 100
    base = bytearray(m.rng.randbytes(size))
    write_file(p, base)
    mm = map_file(p, size)
    for off, chunk in ((0, b"head"), (PAGE - 2, b"across"), (10 * PAGE, b"x" * PAGE),
                       (size - 5, b"tail!")):
        mm[off:off + len(chunk)] = chunk
        base[off:off + len(chunk)] = chunk
    mm.flush()  # msync(MS_SYNC)
    fd = os.open(p, os.O_RDONLY)
    same_bytes(pread_all(fd, size + 10), base, "read(2) after msync")
    os.close(fd)
    # write(2) is visible in the mapping
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, b"WRITTEN", 3 * PAGE)
    os.close(fd)
    base[3 * PAGE:3 * PAGE + 7] = b"WRITTEN"
    eq(mm[3 * PAGE:3 * PAGE + 7], b"WRITTEN", "pwrite seen through the mapping")
    mm.close()
    eq(os.stat(p).st_size, size, "size unchanged by mapping writes")
    m.remount()
    same_bytes(read_file(p), base, "contents after remount")


@test()
def holes_and_growth(m):
    p = m.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 32 * PAGE)
    os.close(fd)
    eq(os.stat(p).st_blocks, 0, "a truncated-up file has no blocks")
    mm = map_file(p, 32 * PAGE)
    eq(mm[:], bytes(32 * PAGE), "a mapped hole reads as zeros")
    mm[5 * PAGE:5 * PAGE + 3] = b"abc"
    mm[20 * PAGE + 7] = 0x7f
    mm.flush()
    check(os.stat(p).st_blocks > 0, "writing through the mapping allocated blocks")
    mm.close()
    # grow, then map the new part
    fd = os.open(p, os.O_RDWR)
    os.ftruncate(fd, 64 * PAGE)
    mm = mmap.mmap(fd, 64 * PAGE)
    os.close(fd)
    mm[60 * PAGE:60 * PAGE + 4] = b"grow"
    mm.flush()
    mm.close()
    m.remount()
    data = read_file(p)
    eq(len(data), 64 * PAGE, "size after remount")
    eq(data[5 * PAGE:5 * PAGE + 3], b"abc", "bytes written into a hole")
    eq(data[20 * PAGE + 7], 0x7f, "byte written into a hole")
    eq(data[60 * PAGE:60 * PAGE + 4], b"grow", "bytes written after growing")
    exp = bytearray(64 * PAGE)
    exp[5 * PAGE:5 * PAGE + 3] = b"abc"
    exp[20 * PAGE + 7] = 0x7f
    exp[60 * PAGE:60 * PAGE + 4] = b"grow"
    same_bytes(data, exp, "whole file after remount")


@test()
def private_mapping(m):
    p = m.path("f")
    data = m.rng.randbytes(8 * PAGE)
    write_file(p, data)
    mm = map_file(p, 8 * PAGE, flags=mmap.MAP_PRIVATE)
    mm[0:5] = b"PRIV!"
    mm.flush()
    eq(read_file(p), data, "a private mapping's writes stay private")
    mm.close()
    m.remount()
    eq(read_file(p), data, "file after remount")


def touch_past_eof(path, size):
    mm = map_file(path, size, prot=mmap.PROT_READ)
    first = mm[0]
    os.truncate(path, PAGE)
    return first, mm[size - 1]   # beyond EOF after the truncate: SIGBUS


@test()
def sigbus_past_eof(m):
    p = m.path("f")
    write_file(p, b"x" * (4 * PAGE))
    child = m.fork(touch_past_eof, p, 4 * PAGE)
    res = child.join()
    st = child.status
    check(os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGBUS,
          f"reading a mapped page past EOF: expected SIGBUS, child ended with "
          f"{pmfs.describe_status(st)} ({res[0]})")


@test()
def msync_durable_after_kill(m):
    """msync(MS_SYNC) returned: the data is durable, a kill -9 of the daemon right after does
    not lose it."""
    p = m.path("f")
    size = 256 * PAGE
    exp = bytearray(m.rng.randbytes(size))
    write_file(p, exp)
    mm = map_file(p, size)
    for i in range(0, 256, 3):
        chunk = m.rng.randbytes(PAGE // 2)
        mm[i * PAGE + 100:i * PAGE + 100 + len(chunk)] = chunk
        exp[i * PAGE + 100:i * PAGE + 100 + len(chunk)] = chunk
    mm.flush()
    m.kill_daemon()
    try:
        mm.close()
    except Exception:
        pass
    m.detach()
    m.mount()
    same_bytes(read_file(p), exp, "contents after msync, kill -9 and remount")


@test()
def mapping_shared_between_processes(m):
    p = m.path("f")
    write_file(p, bytes(4 * PAGE))
    mm = map_file(p, 4 * PAGE)

    def writer(path):
        mmc = map_file(path, 4 * PAGE)
        mmc[PAGE:PAGE + 5] = b"child"
        mmc.flush()
        mmc.close()
    m.fork(writer, p).wait()
    eq(mm[PAGE:PAGE + 5], b"child", "another process's shared writes are seen")
    mm.close()


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
