#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Shared mmap on reflinked files (issue 4). Without FUSE DAX, mappings go through the page
cache and writeback reaches the daemon as writes, which must copy-on-write like any other.

The main case is the scenario of xfstests generic/578: a file and seven copies of it, three
cloned whole and four cloned at shifted offsets, all mapped MAP_SHARED and written at once
(in one process as the original test does, and in eight processes released together), then
unmounted and mounted again: every copy holds its own bytes, and the ranges nobody wrote are
still shared (PMFUSE_IOC_GET_EXTENTS, `pmfusectl stat`). Also: writes through a clone's mapping
never show in the original's mapping; a clone or unshare into a file that is mapped and cached
is seen through the mapping (the daemon invalidates the kernel's cache); `pmfusectl clone`
copies what a mapping wrote even before msync."""

import sys
sys.dont_write_bytecode = True   # no __pycache__ in the source tree  # noqa: E402

import mmap
import os

import pmfs
from pmfs import check, eq, test, read_file, pread_all, same_bytes, Failure
from reflinkio import (clone_range, clone_file, unshare, extents_of, check_sharing,
                       check_mount_sharing, ctl, make_data, write_big, same_file,
                       COW_EXTENT_BLOCKS)

PAGE = mmap.PAGESIZE
MiB = 1 << 20


def map_path(path, prot=mmap.PROT_READ | mmap.PROT_WRITE):
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED, prot=prot)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# generic/578


class G578:
    """Eight files: file1 of 4 units of 0x61, file2..4 whole clones of it, file5..8 empty files
    into which file1 is cloned at 1..4 units. A unit is 1 MiB here (generic/578 uses 64 KiB):
    big against the 128 KiB CoW extent, so that ranges nobody wrote remain to be checked."""

    UNIT = MiB
    LEN = 337

    def __init__(self, m):
        self.m = m
        self.size = 4 * self.UNIT
        self.paths = [m.path(f"file{i}") for i in range(1, 9)]
        self.model = {}

    def create(self):
        p = self.paths
        data = bytearray(b"\x61" * self.size)
        write_big(p[0], data)
        self.model[p[0]] = bytearray(data)
        for i in (1, 2, 3):
            clone_file(p[0], p[i])
            self.model[p[i]] = bytearray(data)
        s = os.open(p[0], os.O_RDONLY)
        for k, i in enumerate((4, 5, 6, 7), start=1):
            d = os.open(p[i], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            clone_range(d, s, 0, self.size, k * self.UNIT)
            os.close(d)
            self.model[p[i]] = bytearray(k * self.UNIT) + data
        os.close(s)

    def writes(self):
        """(path, offset) of the twelve mmap writes of generic/578, in its order."""
        p, U, sz = self.paths, self.UNIT, self.size
        off = sz // 2 - 168
        w = [(p[0], off), (p[1], off), (p[2], off), (p[3], off),
             (p[4], off + U), (p[5], off + 2 * U), (p[6], off + 3 * U), (p[7], off + 4 * U),
             (p[0], 168), (p[1], U - 168), (p[2], sz - 777), (p[3], 3 * U - 168)]
        return w

    def apply_model(self):
        for i, (path, off) in enumerate(self.writes()):
            self.model[path][off:off + self.LEN] = bytes([0x62 + i]) * self.LEN

    def compare(self, what):
        for p in self.paths:
            got = read_file(p)
            if got != self.model[p]:
                same_bytes(got, bytes(self.model[p]), f"{what}: {os.path.basename(p)}")

    def check_shared(self, what):
        """Blocks holding written bytes are private; every mapped block farther than one CoW
        extent from any write into its file is still shared; counts agree over the 8 files."""
        exts = check_sharing(self.paths, what)
        bs, _ = extents_of(self.paths[0])
        window = COW_EXTENT_BLOCKS * bs
        written = {}
        for path, off in self.writes():
            written.setdefault(path, []).append((off, off + self.LEN))
        nshared = nprivate = 0
        for p in self.paths:
            for e in exts[p]:
                for blk in range(e.length // bs):
                    lo = e.logical + blk * bs
                    hi = lo + bs
                    near = any(a - window < hi and lo < b + window for a, b in written[p])
                    hit = any(a < hi and lo < b for a, b in written[p])
                    if hit and e.refcount != 1:
                        raise Failure(f"{what}: {os.path.basename(p)} block at {lo} was written "
                                      f"but is still shared (refcount {e.refcount})")
                    if not near and e.refcount < 2:
                        raise Failure(f"{what}: {os.path.basename(p)} block at {lo} was never "
                                      f"written (nor within {COW_EXTENT_BLOCKS} blocks of a "
                                      f"write) but is no longer shared")
                    if e.refcount > 1:
                        nshared += 1
                    else:
                        nprivate += 1
        check(nshared and nprivate, f"{what}: {nshared} shared and {nprivate} private blocks")
        return nshared, nprivate


def _mwrite_child(path, off, length, value, go_fd, ready_fd):
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED)
    os.close(fd)
    _ = mm[off:off + length]                  # fault the range in (page cache populated)
    os.write(ready_fd, b"r")
    os.read(go_fd, 1)
    mm[off:off + length] = bytes([value]) * length
    mm.flush()                                # msync(MS_SYNC) of the whole mapping
    mm.close()
    return True


def _g578(m, parallel):
    g = G578(m)
    g.create()
    m.remount()
    g.compare("before the writes")
    check_sharing(g.paths, "before the writes")
    if not parallel:
        # as mmap-write-concurrent does: map and fault in every range, dirty them all, then
        # msync them all
        maps = []
        for path, off in g.writes():
            mm = map_path(path)
            _ = mm[off:off + g.LEN]
            maps.append((mm, off))
        for i, (mm, off) in enumerate(maps):
            mm[off:off + g.LEN] = bytes([0x62 + i]) * g.LEN
        for mm, off in maps:
            mm.flush()
        for mm, _ in maps:
            mm.close()
    else:
        go_r, go_w = os.pipe()
        rd_r, rd_w = os.pipe()
        kids = [m.fork(_mwrite_child, path, off, g.LEN, 0x62 + i, go_r, rd_w)
                for i, (path, off) in enumerate(g.writes())]
        for _ in kids:
            eq(os.read(rd_r, 1), b"r", "a writer child got ready")
        os.write(go_w, b"g" * len(kids))
        for k in kids:
            k.wait(120)
        for fd in (go_r, go_w, rd_r, rd_w):
            os.close(fd)
        # two writers mapped file1..4 twice: the ranges are disjoint, so the order is moot
    g.apply_model()
    g.compare("after the mmap writes, before remount")
    m.remount()
    g.compare("after remount")
    ns, npriv = g.check_shared("after remount")
    # pmfusectl stat agrees: a copy with a write shows both kinds of extent
    out = ctl(m, "stat", g.paths[4]).stdout
    check("shared" in out.lower(), f"pmfusectl stat of file5 shows no shared extent:\n{out}")
    check_mount_sharing(m, "whole mount after remount")
    return ns, npriv


@test(size="256M", timeout=120)
def generic_578_one_process(m):
    """generic/578: 8 reflinked copies (4 at shifted offsets), 12 mmap writes at once from one
    process, remount: each copy holds its own bytes, untouched ranges still shared."""
    _g578(m, parallel=False)


@test(size="256M", timeout=120)
def generic_578_twelve_processes(m):
    """generic/578 with each of the 12 mmap writes in its own process, released together."""
    _g578(m, parallel=True)


# ---------------------------------------------------------------------------------------------
# mappings of originals and clones


@test(size="128M")
def clone_mapping_writes_stay_private(m):
    """Both the original and its clone mapped: pages written through the clone's mapping never
    show in the original's mapping or read(2), and the other way round, before and after
    msync, and after a remount."""
    size = 2 * MiB + 300
    a, b = m.path("a"), m.path("b")
    data = make_data(size, m.rng, stamp=30)
    write_big(a, data)
    clone_file(a, b)
    ma, mb = map_path(a), map_path(b)
    eq(ma[:], bytes(data), "original's mapping")
    eq(mb[:], bytes(data), "clone's mapping")
    eb, ea = bytearray(data), bytearray(data)
    for off in (0, PAGE - 3, 100 * PAGE + 17, size - 5):
        mb[off:off + 5] = b"CLONE"
        eb[off:off + 5] = b"CLONE"
    eq(ma[:], bytes(data), "original's mapping while the clone's is dirty")
    mb.flush()
    eq(ma[:], bytes(data), "original's mapping after the clone's msync")
    same_file(a, data, "original by read(2) after the clone's msync")
    same_file(b, eb, "clone by read(2) after its msync")
    for off in (3 * PAGE, 200 * PAGE + 1):
        ma[off:off + 4] = b"ORIG"
        ea[off:off + 4] = b"ORIG"
    ma.flush()
    eq(mb[:], bytes(eb), "clone's mapping after the original's msync")
    ma.close()
    mb.close()
    same_file(a, ea, "original")
    same_file(b, eb, "clone")
    check_mount_sharing(m, "after mmap writes")
    m.remount()
    same_file(a, ea, "original after remount")
    same_file(b, eb, "clone after remount")
    check_mount_sharing(m, "after remount")


@test(size="128M")
def clone_into_cached_file_is_seen(m):
    """A clone over a file whose pages are cached and mapped, and an unshare of a mapped file:
    the mapping and read(2) show the new contents at once (the daemon invalidates the cache),
    and later writes through the mapping land in the file's own blocks."""
    size = MiB
    src, dst = m.path("src"), m.path("dst")
    sdata = make_data(size, m.rng, stamp=31)
    ddata = make_data(size, m.rng, stamp=32)
    write_big(src, sdata)
    write_big(dst, ddata)
    dfd = os.open(dst, os.O_RDWR)
    eq(pread_all(dfd, size), bytes(ddata), "destination read before the clone (now cached)")
    mm = map_path(dst)
    eq(mm[:], bytes(ddata), "destination mapping before the clone")
    sfd = os.open(src, os.O_RDONLY)
    clone_range(dfd, sfd, 256 * 1024, 512 * 1024, 128 * 1024)
    exp = bytearray(ddata)
    exp[128 * 1024:640 * 1024] = sdata[256 * 1024:768 * 1024]
    # the mapping first: a read(2) would revalidate the attributes, and the changed mtime
    # alone makes the kernel drop the pages (auto_inval_data); the mapping has no such check
    eq(mm[:], bytes(exp), "mapping of the destination after a clone")
    eq(pread_all(dfd, size), bytes(exp), "read(2) of the cached destination after a clone")
    # unshare while mapped: contents stay; then a write through the mapping stays private
    unshare(dfd, 0, 0)
    eq(mm[:], bytes(exp), "mapping after unshare")
    mm[200 * 1024:200 * 1024 + 6] = b"mapped"
    exp[200 * 1024:200 * 1024 + 6] = b"mapped"
    mm.flush()
    mm.close()
    os.close(dfd)
    os.close(sfd)
    same_file(src, sdata, "source after the destination's mmap write")
    same_file(dst, exp, "destination")
    check_mount_sharing(m, "after clone into a cached file")
    m.remount()
    same_file(src, sdata, "source after remount")
    same_file(dst, exp, "destination after remount")


@test(size="128M")
def clone_beyond_cached_pages_is_seen(m):
    """Clones the daemon answers without dropping pages (into an empty file, or at least 2 MiB
    past the last cached folio of a file): the size the kernel had cached is dropped at once,
    and read(2), a mapping and st_blocks show the clone, also after a truncation that may leave
    a folio straddling the end."""
    size = MiB
    src, dst, empty = m.path("src"), m.path("dst"), m.path("empty")
    sdata = make_data(size, m.rng, stamp=34)
    ddata = make_data(size, m.rng, stamp=35)
    write_big(src, sdata)
    write_big(dst, ddata)
    sfd = os.open(src, os.O_RDONLY)
    # an empty file whose size 0 the kernel has cached
    efd = os.open(empty, os.O_RDWR | os.O_CREAT, 0o644)
    eq(os.fstat(efd).st_size, 0, "size of the new file")
    clone_range(efd, sfd, 0, 0, 0)
    eq(os.fstat(efd).st_size, size, "size right after a clone into an empty file")
    check(os.fstat(efd).st_blocks * 512 >= size, "st_blocks right after a clone into an empty "
          f"file: {os.fstat(efd).st_blocks}")
    eq(pread_all(efd, size), bytes(sdata), "read(2) right after a clone into an empty file")
    # a cached, mapped file; the clone lands 4 MiB in, past its last folio
    dfd = os.open(dst, os.O_RDWR)
    eq(pread_all(dfd, size), bytes(ddata), "destination read before the clone (now cached)")
    eq(os.fstat(dfd).st_size, size, "destination size before the clone")
    clone_range(dfd, sfd, 0, 0, 4 * MiB)
    exp = bytearray(ddata) + bytes(3 * MiB) + sdata
    eq(os.fstat(dfd).st_size, 5 * MiB, "size right after a clone past the end")
    eq(pread_all(dfd, 5 * MiB), bytes(exp), "read(2) right after a clone past the end")
    mm = mmap.mmap(dfd, 5 * MiB)
    eq(mm[:], bytes(exp), "mapping right after a clone past the end")
    mm.close()
    # truncate into the middle of a cached range, then clone at the next 2 MiB boundary
    os.ftruncate(dfd, 100 * 1024)
    eq(pread_all(dfd, 100 * 1024), bytes(exp[:100 * 1024]), "read after truncation")
    clone_range(dfd, sfd, 0, 0, 2 * MiB)
    exp = bytearray(exp[:100 * 1024]) + bytes(2 * MiB - 100 * 1024) + sdata
    eq(os.fstat(dfd).st_size, 3 * MiB, "size after a clone past a truncated end")
    eq(pread_all(dfd, 3 * MiB), bytes(exp), "read(2) after a clone past a truncated end")
    for fd in (sfd, efd, dfd):
        os.close(fd)
    m.remount()
    same_file(empty, sdata, "clone into an empty file after remount")
    same_file(dst, exp, "clone past the end after remount")
    check_mount_sharing(m, "after clones past the end")


@test(size="128M")
def ctl_clone_sees_unsynced_mapping(m):
    """pmfusectl clone is `cp --reflink=always`: the copy has the file's current contents,
    including pages dirtied through a mapping and not yet msync'd (as FICLONE flushes them on
    a local filesystem)."""
    size = MiB
    a, b = m.path("a"), m.path("b")
    data = make_data(size, m.rng, stamp=33)
    write_big(a, data)
    mm = map_path(a)
    mm[5000:5008] = b"DIRTYPGS"
    data[5000:5008] = b"DIRTYPGS"
    ctl(m, "clone", a, b)
    mm.close()
    same_file(b, data, "a clone made while the source had dirty mapped pages")
    m.remount()
    same_file(a, data, "source after remount")
    same_file(b, data, "clone after remount")
    check_mount_sharing(m, "after remount")


@test(size="128M")
def ctl_clone_over_dirty_mapping(m):
    """pmfusectl clone --range over pages of the destination dirtied through a mapping and not
    yet msync'd: afterwards the range holds the source's bytes, as with FICLONERANGE on a
    local filesystem (which writes the destination's dirty pages back before remapping), and a
    later msync or munmap does not bring the old dirty bytes back."""
    size = MiB
    src, dst = m.path("src"), m.path("dst")
    sdata = make_data(size, m.rng, stamp=34)
    ddata = make_data(size, m.rng, stamp=35)
    write_big(src, sdata)
    write_big(dst, ddata)
    mm = map_path(dst)
    mm[64 * 1024 + 10:64 * 1024 + 20] = b"0123456789"        # inside the cloned range
    mm[900 * 1024:900 * 1024 + 5] = b"keep!"                 # outside it
    ctl(m, "clone", "--range", 0, 256 * 1024, 0, src, dst)
    exp = bytearray(ddata)
    exp[900 * 1024:900 * 1024 + 5] = b"keep!"
    exp[0:256 * 1024] = sdata[0:256 * 1024]
    eq(mm[:], bytes(exp), "the mapping right after the clone")
    mm.flush()
    mm.close()
    same_file(dst, exp, "destination after msync and munmap")
    m.remount()
    same_file(dst, exp, "destination after remount")
    same_file(src, sdata, "source after remount")
    check_mount_sharing(m, "after remount")


if __name__ == "__main__":
    raise SystemExit(pmfs.main())
