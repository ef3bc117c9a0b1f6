#!/usr/bin/python3
"""Random corruption rounds through the real fsck.pmfuse binary.

usage: test_fsck_repair.py MKFS FSCK DAEMON

A pool is populated once through a real mount (files, hard links, a symlink, reflinked copies,
xattrs with value blocks, directories of many entries so that trees have interior nodes), and the
contents of every file are recorded by inode number. Then each round takes a copy of it and
damages one metadata block found by walking the on-media format (doc/format.md): a superblock,
the state block, the log header, a bitmap block, a node of the inode table, refcount tree or
orphan list, or of some inode's extent map, directory or xattrs. The damage is one of: random
bytes flipped, the block zeroed, the block swapped with another metadata block. Then:

  fsck -f -n   must report it (exit 4), or exit 0 when the damage cannot be seen (a log header
               flip is always seen; a swap of two equal blocks is not);
  fsck -f -y   must repair it (exit 0 or 1, nothing left);
  fsck -f -n   must be clean (exit 0).

Every round (every PMFUSE_FSCK_MOUNT_EVERY-th, when set) the repaired pool is mounted with the
daemon and every file not
touched by the damage (its inode record's leaf, and its own trees' nodes, were not the damaged
block) is read back by inode number and compared. Rounds: PMFUSE_FSCK_ROUNDS (default 2000),
times PMFUSE_TEST_SCALE; PMFUSE_SEED replays a run. Needs root, /dev/fuse and fusermount3 for
the population (exit 77, skipped, without them).
"""
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

MOUNT_EVERY = int(os.environ.get('PMFUSE_FSCK_MOUNT_EVERY', '1'))
BT_MAGIC = 0x54424D50


def crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


class Layout:
    """Where the metadata blocks of a pool image are, and who owns the records in them."""

    def __init__(self, img):
        self.img = img
        self.bs = struct.unpack_from('<I', img, 12)[0]
        sb = img[:512]
        self.block_count = struct.unpack_from('<Q', sb, 120)[0]
        self.log_start = struct.unpack_from('<Q', sb, 136)[0]
        self.bitmap_start = struct.unpack_from('<Q', sb, 152)[0]
        self.bitmap_blocks = struct.unpack_from('<Q', sb, 160)[0]
        self.sb2 = self.block_count - 1
        self.blocks = {}          # block -> (kind, inodes affected: set, or None for all)
        self.inode_leaf = {}      # ino -> leaf block
        self.inode_trees = {}     # ino -> set of node blocks of its own trees
        self.walk()

    def block(self, b):
        return self.img[b * self.bs:(b + 1) * self.bs]

    def nodes(self, root, levels, rec_len, kind, owner_inos):
        out = []

        def rec(blk, level):
            b = self.block(blk)
            if struct.unpack_from('<I', b, 0)[0] != BT_MAGIC:
                return
            out.append(blk)
            n = struct.unpack_from('<H', b, 26)[0]
            if level:
                for i in range(n):
                    rec(struct.unpack_from('<Q', b, 32 + 16 * i + 8)[0], level - 1)
            else:
                for i in range(n):
                    yield_rec(blk, b, 32 + rec_len * i)

        recs = []

        def yield_rec(blk, b, off):
            recs.append((blk, b, off))
        if levels:
            rec(root, levels - 1)
        for blk in out:
            self.blocks[blk] = (kind, owner_inos)
        return out, recs

    def walk(self):
        self.blocks[0] = ('superblock', None)
        self.blocks[self.sb2] = ('superblock', None)
        self.blocks[1] = ('state', None)
        self.blocks[self.log_start] = ('log', set())
        for i in range(self.bitmap_blocks):
            self.blocks[self.bitmap_start + i] = ('bitmap', set())
        st = self.block(1)

        def root(i):
            return struct.unpack_from('<QQH', st, 32 + 32 * i)
        r, _, lv = root(0)
        _, recs = self.nodes(r, lv, 256, 'inode table', None)
        inodes = []
        for blk, b, off in recs:
            ino = struct.unpack_from('<Q', b, off)[0]
            self.inode_leaf[ino] = blk
            inodes.append((ino, bytes(b[off:off + 256])))
        # a leaf of the inode table affects the inodes in it
        for blk in set(self.inode_leaf.values()):
            self.blocks[blk] = ('inode table', {i for i, lb in self.inode_leaf.items()
                                                if lb == blk})
        r, _, lv = root(1)
        self.nodes(r, lv, 16, 'refcount tree', set())
        r, _, lv = root(2)
        self.nodes(r, lv, 16, 'orphans', set())
        for ino, rec in inodes:
            mode = struct.unpack_from('<I', rec, 16)[0]
            fmt = mode & 0o170000
            mroot, _, mlv = struct.unpack_from('<QQH', rec, 128)
            xroot, _, xlv = struct.unpack_from('<QQH', rec, 160)
            mine = set()
            if fmt in (0o100000, 0o120000):
                n, _ = self.nodes(mroot, mlv, 24, 'extent map', {ino})
                mine.update(n)
            elif fmt == 0o040000:
                trees = [(mroot, mlv, 280, 'directory')]
                if struct.unpack_from('<I', rec, 120)[0] & 8:     # SHORT_NAMES: sdir at 200
                    sroot, _, slv = struct.unpack_from('<QQH', rec, 200)
                    trees.append((sroot, slv, 64, 'short-name directory'))
                for troot, tlv, rlen, kind in trees:
                    n, drecs = self.nodes(troot, tlv, rlen, kind, {ino})
                    mine.update(n)
                    # a directory's node also affects what it names (they may go to
                    # lost+found)
                    named = {struct.unpack_from('<Q', b, off + 8)[0] for _, b, off in drecs}
                    for blk in n:
                        self.blocks[blk] = (kind, {ino} | named)
            n, xrecs = self.nodes(xroot, xlv, 512, 'xattrs', {ino})
            mine.update(n)
            for _, b, off in xrecs:
                vb, nb = struct.unpack_from('<QI', b, off + 16)
                if not vb:
                    continue
                for k in range(nb):
                    self.blocks[vb + k] = ('xattr value', {ino})
            self.inode_trees[ino] = mine


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return p.returncode, p.stdout.decode(errors='replace')


def populate(mkfs, daemon, pool, mnt, rng):
    subprocess.run([mkfs, '-q', '-s', '16M', pool], check=True)
    os.makedirs(mnt, exist_ok=True)
    d = subprocess.Popen([daemon, '-f', pool, mnt], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError('the daemon did not mount')
        for dd in range(4):
            os.makedirs(f'{mnt}/d{dd}/sub', exist_ok=True)
            for i in range(60):
                # a third of the names too long for the short-entry tree: both trees
                name = f'f{i}' if i % 3 else f'f{i}-' + 'l' * 50
                with open(f'{mnt}/d{dd}/{name}', 'wb') as f:
                    f.write(rng.randbytes(rng.choice([0, 10, 4096, 9000, 40000])))
        with open(f'{mnt}/big', 'wb') as f:
            f.write(rng.randbytes(1 << 20))
        for i in range(4):   # copy_file_range shares whole blocks: refcount tree records
            with open(f'{mnt}/big', 'rb') as src, open(f'{mnt}/d{i}/clone', 'wb') as dst:
                n = os.copy_file_range(src.fileno(), dst.fileno(), 1 << 20)
                assert n == 1 << 20, n
        # a block every other block: one extent each, an extent map of several leaves
        with open(f'{mnt}/d3/sparse', 'wb') as f:
            for i in range(400):
                os.pwrite(f.fileno(), rng.randbytes(4096), 2 * i * 4096)
        os.link(f'{mnt}/d0/f1', f'{mnt}/d1/hard')
        os.symlink('../big', f'{mnt}/d2/sym')
        os.setxattr(f'{mnt}/big', 'user.large', b'v' * 3000)
        os.setxattr(f'{mnt}/d0/f2', 'user.small', b's' * 50)
        # an open file unlinked when the daemon dies stays on the orphan list
        fd = os.open(f'{mnt}/d1/orphan', os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, rng.randbytes(9000))
        os.unlink(f'{mnt}/d1/orphan')
        os.sync()
        d.kill()
        d.wait(timeout=60)
        os.close(fd)
    finally:
        subprocess.run(['fusermount3', '-u', mnt], stderr=subprocess.DEVNULL)
        if os.path.ismount(mnt):
            subprocess.run(['fusermount3', '-uz', mnt])
        d.wait(timeout=60)


def contents(daemon, pool, mnt):
    """ino -> sha256 of every regular file of the mounted pool, or None if it does not mount."""
    d = subprocess.Popen([daemon, '-f', pool, mnt], stderr=subprocess.DEVNULL)
    out = {}
    try:
        for _ in range(1000):
            if os.path.ismount(mnt):
                break
            if d.poll() is not None:
                return None
            time.sleep(0.01)
        else:
            return None
        for dp, _, files in os.walk(mnt):
            for fn in files:
                p = os.path.join(dp, fn)
                st = os.lstat(p)
                if st.st_mode & 0o170000 == 0o100000:
                    with open(p, 'rb') as f:
                        out[st.st_ino] = hashlib.sha256(f.read()).hexdigest()
    finally:
        subprocess.run(['fusermount3', '-u', mnt])
        d.wait(timeout=60)
    return out


def damage(img, lay, rng):
    """Damages one metadata block of img (a bytearray); returns (what, inodes affected)."""
    blocks = sorted(lay.blocks)
    # a kind first, then a block of it: every kind gets rounds, however few its blocks
    kinds = sorted({k for k, _ in lay.blocks.values()})
    kind = rng.choice(kinds)
    blk = rng.choice([b for b in blocks if lay.blocks[b][0] == kind])
    kind, affected = lay.blocks[blk]
    bs = lay.bs
    how = rng.choice(['flip', 'zero', 'swap'])
    hit = set(affected) if affected is not None else None
    if how == 'flip':
        # flip within the bytes a reader looks at (a superblock is 512 bytes)
        span = 512 if kind == 'superblock' else (64 if kind == 'log' else bs)
        for _ in range(rng.randint(1, 8)):
            off = blk * bs + rng.randrange(span)
            img[off] ^= 1 << rng.randrange(8)
    elif how == 'zero':
        img[blk * bs:(blk + 1) * bs] = bytes(bs)
    else:
        other = rng.choice(blocks)
        a, b = bytes(img[blk * bs:(blk + 1) * bs]), bytes(img[other * bs:(other + 1) * bs])
        img[blk * bs:(blk + 1) * bs] = b
        img[other * bs:(other + 1) * bs] = a
        okind, oaff = lay.blocks[other]
        if hit is not None:
            hit = None if oaff is None else hit | set(oaff)
        kind = f'{kind}<->{okind}'
    return f'{how} block {blk} ({kind})', hit


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    mkfs, fsck, daemon = sys.argv[1:]
    why = None
    if os.geteuid() != 0:
        why = 'not root'
    elif not os.path.exists('/dev/fuse'):
        why = 'no /dev/fuse'
    elif not shutil.which('fusermount3'):
        why = 'no fusermount3'
    elif not os.access(daemon, os.X_OK):
        why = f'the daemon is not built ({daemon})'
    if why:
        print(f'# skipped: {why}')
        sys.exit(77)
    scale = float(os.environ.get('PMFUSE_TEST_SCALE', '1'))
    rounds = max(20, int(int(os.environ.get('PMFUSE_FSCK_ROUNDS', '2000')) * scale))
    seed = int(os.environ.get('PMFUSE_SEED', str(random.randrange(1 << 30))))
    print(f'# seed {seed} (PMFUSE_SEED replays), {rounds} rounds')
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(dir='/dev/shm' if os.path.isdir('/dev/shm') else None,
                           prefix='pmfuse-fsck-')
    mnt = os.path.join(tmp, 'mnt')
    base = os.path.join(tmp, 'base')
    work = os.path.join(tmp, 'work')
    fails = 0
    try:
        populate(mkfs, daemon, base, mnt, rng)
        rc, out = run([fsck, '-f', '-n', base])
        with open(base, 'rb') as f:
            pristine = f.read()
        with open(work, 'wb') as f:    # a mount settles the orphan: not on the base
            f.write(pristine)
        want = contents(daemon, work, mnt)
        if rc != 0 or want is None:
            print('not ok - the populated pool is clean and mounts\n' + out)
            sys.exit(1)
        lay = Layout(pristine)
        missing = ({'extent map', 'refcount tree', 'orphans', 'directory',
                    'short-name directory'} - {k for k, _ in lay.blocks.values()})
        if missing:
            print(f'not ok - the populated pool has no {", ".join(sorted(missing))} nodes')
            sys.exit(1)
        kinds = {}
        for r in range(rounds):
            img = bytearray(pristine)
            what, hit = damage(img, lay, rng)
            with open(work, 'wb') as f:
                f.write(img)
            rc1, out1 = run([fsck, '-f', '-n', work])
            rc2, out2 = run([fsck, '-f', '-y', work])
            rc3, out3 = run([fsck, '-f', '-n', work])
            bad = None
            if rc1 not in (0, 4):
                bad = f'fsck -n exit {rc1}'
            elif rc2 not in (0, 1) or '\nleft: ' in '\n' + out2:
                bad = f'fsck -y exit {rc2}'
            elif rc3 != 0:
                bad = f'fsck -n after -y exit {rc3}'
            elif rc1 == 4 and rc2 != 1:
                bad = 'fsck -n found problems, fsck -y repaired nothing'
            kinds[what.split('(')[1]] = kinds.get(what.split('(')[1], 0) + 1
            if not bad and r % MOUNT_EVERY == 0:
                got = contents(daemon, work, mnt)
                if got is None:
                    bad = 'the repaired pool does not mount'
                elif hit is not None:
                    for ino, h in want.items():
                        if ino in hit or any(lay.inode_leaf.get(i) == lay.inode_leaf.get(ino)
                                             for i in hit):
                            continue
                        if got.get(ino) != h:
                            bad = f'inode {ino} (undamaged) reads back {"differently" if ino in got else "missing"}'
                            break
            if bad:
                fails += 1
                print(f'not ok - round {r}: {what}: {bad}')
                for o in (out1, out2, out3):
                    print('\n'.join('#   ' + ln for ln in o.splitlines()[:25]))
                if fails >= 5:
                    break
        print(f'# {rounds} rounds, damage kinds: ' +
              ', '.join(f'{k.rstrip(")")} {n}' for k, n in sorted(kinds.items())))
    finally:
        if os.path.ismount(mnt):
            subprocess.run(['fusermount3', '-uz', mnt])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f'{"ok" if not fails else "not ok"} - {fails} failed rounds')
    sys.exit(1 if fails else 0)


main()
