"""Tier 3: contents the nodes cannot read (issue 38, docs/confidentiality.md).

Known plaintext written through the file system of a sealed cluster - an inline file made
by write-behind's ``fs.createwrite``, one rewritten and truncated inline, a file of 64 KiB
blocks, a big-block file, an old version overwritten since, an extended attribute's value,
a symlink's target - is found in no node's LMDB files, while every read, history read and
scrub works.  The same scan over an unsealed cluster finds each of them: the scan can fail.
A Byzantine node flipping bits of the ciphertext it serves is caught by the cross
checksums, never returned.  Names seal deterministically: still unique, at most 175 bytes.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import trio
from fs_helpers import RW_OPTIONS, Env, fs_env, qu_client, write_file

from bftfs import fsobjects as obj
from bftfs.crypto import VolumeKey
from bftfs.fs.clients import SEALED_NAME_MAX, Seal, SealBroken
from bftfs.fs.errors import Exists, NameTooLong, NoAttr, NotFound, TooBig
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.history import Past
from bftfs.fs.scrub import scrub
from bftfs.qu.classify import QUThresholds
from bftfs.qu.pastread import PastReader
from bftfs.rw.client import open_rw_client
from bftfs.testing.byzantine.rw import make_byzantine

#: Markers long enough that finding one in a store is no accident; each file repeats its
#: own, so that whole copies land in every systematic fragment of every block.
MARKERS = {
    b"created": b"CREATED-INLINE-4f1c9a-",
    b"rewritten": b"REWRITTEN-INLINE-77b2e0-",
    b"blocks": b"BLOCK-FILE-0c3d55-",
    b"big": b"BIG-BLOCK-FILE-9e8a71-",
    b"old": b"OLD-VERSION-5a2f0b-",
    b"xattr": b"XATTR-VALUE-a7e3c2-",
    b"symlink": b"SYMLINK-TARGET-2d6b8e-",
}
XATTR = (b"user.XATTR-NAME-b5e1d0", MARKERS[b"xattr"] * 50)
TARGET = b"../" + MARKERS[b"symlink"] * 3
#: A directory and a file in it, their names markers too.
DIR_NAME, FILE_NAME = b"DIRECTORY-NAME-61c0d8", b"FILE-NAME-e2b7f4"
NEW = b"NEW-VERSION-d41b93-"


def _content(marker: bytes, size: int) -> bytes:
    return (marker * (size // len(marker) + 1))[:size]


def _stores(tmp_path: Path) -> list[Path]:
    """Every file of every node's data directory (LMDB's data and lock files)."""
    return [p for d in sorted(tmp_path.glob("node*")) for p in sorted(d.rglob("*")) if p.is_file()]


def _found(tmp_path: Path, markers: list[bytes]) -> set[bytes]:
    found = set()
    for path in _stores(tmp_path):
        data = path.read_bytes()
        found |= {m for m in markers if m in data}
    return found


async def _write_everything(env: Env) -> tuple[dict[bytes, bytes], int, int]:
    """The files of the scenario: name -> content now; the old version's inode and the
    moment between its two versions."""
    fs = env.fs
    files = {
        b"created": _content(MARKERS[b"created"], 3000),
        b"rewritten": _content(MARKERS[b"rewritten"], 1500),
        b"blocks": _content(MARKERS[b"blocks"], 200_000),
        b"big": _content(MARKERS[b"big"], 2 * 1024 * 1024 + 5000),
    }
    for name in (b"created", b"blocks", b"big"):
        await write_file(fs, name, files[name])
    # An inline file written, then rewritten in place and cut short (fs.write, fs.setattr).
    ino = await write_file(fs, b"rewritten", _content(b"x", 4000))
    fh = await fs.open(ino, os.O_RDWR)
    await fs.write(fh, 0, files[b"rewritten"] + b"tail-to-cut")
    await fs.release(fh)
    await fs.setattr(ino, size=len(files[b"rewritten"]))
    # A file of blocks overwritten: its first version is history.
    old = _content(MARKERS[b"old"], 100_000)
    old_ino = await write_file(fs, b"versioned", old)
    await fs.setxattr(old_ino, *XATTR)
    await fs.symlink(obj.ROOT, b"link", TARGET, 0, 0)
    d = await fs.mkdir(obj.ROOT, DIR_NAME, 0o755, 0, 0)
    fh, _ = await fs.create(d.ino, FILE_NAME, 0o644, 0, 0, os.O_RDWR)
    await fs.write(fh, 0, b"in a directory")
    await fs.release(fh)
    between = time.time_ns()  # history's moments are wall-clock times
    fh = await fs.open(old_ino, os.O_RDWR)
    await fs.write(fh, 0, _content(NEW, len(old)))
    await fs.release(fh)
    files[b"versioned"] = _content(NEW, len(old))
    await fs.write_back()
    return files, old_ino, between


async def _read_all(fs: FileSystem, files: dict[bytes, bytes]) -> None:
    for name, data in files.items():
        fh = await fs.open((await fs.lookup(obj.ROOT, name)).ino, os.O_RDONLY)
        assert await fs.read(fh, 0, len(data) + 10) == data, name
        await fs.release(fh)


async def test_no_node_stores_the_plaintext_and_everything_reads(tmp_path: Path) -> None:
    seal = Seal(VolumeKey(random.Random(38).randbytes(32)))
    options = {"seal": seal, "write_behind": True}
    async with fs_env(tmp_path, fs_options=options) as env:
        files, old_ino, between = await _write_everything(env)
        assert _found(tmp_path, [*MARKERS.values(), NEW, DIR_NAME, FILE_NAME, XATTR[0]]) == set()
        # Another mount, nothing cached: every read goes to the nodes and is opened.
        await _read_all(env.fss[1], files)
        assert await env.fss[1].getxattr(old_ino, XATTR[0]) == XATTR[1]
        assert await env.fss[1].listxattr(old_ino) == [XATTR[0]]
        other = env.fss[1]
        d = await other.lookup(obj.ROOT, DIR_NAME)
        assert [name for name, _ in await other.readdir(d.ino)] == [FILE_NAME]
        assert DIR_NAME in [name for name, _ in await other.readdir(obj.ROOT)]
        link = await env.fss[1].lookup(obj.ROOT, b"link")
        assert link.size == len(TARGET)  # the nodes keep the target's own length
        assert await env.fss[1].readlink(link.ino) == TARGET
        cfg = env.cluster.config
        th = QUThresholds.from_config(cfg)
        async with open_rw_client(env.cluster.client(2), cfg, **RW_OPTIONS) as rw:
            qu = qu_client(env.cluster, 2)
            past = Past(qu, PastReader(env.cluster.client(2), th), rw, cfg.block_size, seal=seal)
            then = await past.state_at(old_ino, between)
            assert then is not None
            assert await past.content(then) == _content(MARKERS[b"old"], 100_000)
            assert then.state is not None and then.state["x"] == dict([XATTR])
            linked = await past.state_at(link.ino, time.time_ns())
            assert linked is not None and await past.content(linked) == TARGET
            path = "/" + DIR_NAME.decode() + "/" + FILE_NAME.decode()
            assert await past.content(await past.resolve(path, time.time_ns())) == b"in a directory"
            history = await past.history(old_ino)
            assert len(history.versions) >= 2
            # bftfs verify's scrub works on ciphertext: every fragment intact.
            reports = await scrub(qu, rw, cfg.block_size)
            assert reports and all(not r.repaired and not r.unreachable for r in reports)
    assert _found(tmp_path, [*MARKERS.values(), NEW, DIR_NAME, FILE_NAME, XATTR[0]]) == set()


async def test_the_scan_finds_the_plaintext_of_an_unsealed_cluster(tmp_path: Path) -> None:
    """What the test above rules out, as every cluster stored it before issue 38."""
    async with fs_env(tmp_path, fs_options={"seal": None, "write_behind": True}) as env:
        await _write_everything(env)
    every = [*MARKERS.values(), NEW, DIR_NAME, FILE_NAME, XATTR[0]]
    assert _found(tmp_path, every) == set(every)


@pytest.mark.parametrize("node", [0, 2])
async def test_a_node_flipping_ciphertext_bits_is_caught_not_returned(
    tmp_path: Path, node: int
) -> None:
    """``corrupt-fragment``: the node flips bits of every fragment it serves.  The cross
    checksums (over what the nodes store: ciphertext) refuse them, the reader counts the
    node as corrupt, and every read returns the plaintext written.  Nodes 0 and 2 hold
    systematic fragments, which a read asks for first (a liar it never asks for data is
    ``bftfs verify``'s, t4_findings.py)."""
    seal = Seal(VolumeKey(random.Random(node).randbytes(32)))
    async with fs_env(tmp_path, fs_options={"seal": seal}) as env:
        data = random.Random(node).randbytes(300_000)
        await write_file(env.fs, b"f", data)
        make_byzantine(env.cluster, node, "corrupt-fragment")
        reader = env.fss[1]
        with trio.fail_after(30):
            await _read_all(reader, {b"f": data})
        faults = reader.meta.rw.faults
        assert faults[(node, "corrupt")] > 0, dict(faults)


async def test_an_extended_attribute_of_the_largest_size_fits_sealed(tmp_path: Path) -> None:
    """A value of ``XATTR_SIZE_MAX`` bytes is taken (the nodes allow the seal's overhead
    beyond it); one byte more is E2BIG, as in an unsealed cluster.  Sealed names work by
    name (replace, remove) and are at most 175 bytes."""
    seal = Seal(VolumeKey(random.Random(1).randbytes(32)))
    async with fs_env(tmp_path, fs_options={"seal": seal}) as env:
        ino = await write_file(env.fs, b"f", b"data")
        value = random.Random(2).randbytes(obj.XATTR_SIZE_MAX)
        await env.fs.setxattr(ino, b"user.big", value)
        assert await env.fss[1].getxattr(ino, b"user.big") == value
        with pytest.raises(TooBig):
            await env.fs.setxattr(ino, b"user.bigger", value + b"x")
        # Names sealed like entries': found, replaced and removed by name; 175 bytes at most.
        await env.fs.setxattr(ino, b"user.big", b"replaced")
        assert await env.fss[1].getxattr(ino, b"user.big") == b"replaced"
        await env.fss[1].removexattr(ino, b"user.big")
        with pytest.raises(NoAttr):
            await env.fs.getxattr(ino, b"user.big")
        with pytest.raises(NameTooLong):
            await env.fs.setxattr(ino, b"u" * (SEALED_NAME_MAX + 1), b"x")
        assert await env.fs.listxattr(ino) == []


async def test_after_a_rotation_new_writes_are_unreadable_to_a_client_with_the_old_key_only(
    tmp_path: Path,
) -> None:
    """``bftfs rotate-key`` after a client is removed: current clients (new key and the
    old one) read what was written before and after; the removed client, which holds the
    old key alone, reads what was written before and gets EIO for what was written after,
    inline or in blocks."""
    old, new = (VolumeKey(random.Random(k).randbytes(32)) for k in (10, 11))
    before = {b"small": b"before rotation " * 10, b"large": random.Random(3).randbytes(150_000)}
    after = {b"small2": b"after rotation " * 10, b"large2": random.Random(4).randbytes(150_000)}
    async with fs_env(tmp_path, clients=1, fs_options={"seal": Seal(old)}) as env:
        for name, data in before.items():
            await write_file(env.fs, name, data)
        cfg = env.cluster.config
        async with open_rw_client(env.cluster.client(1), cfg, **RW_OPTIONS) as rw:
            qu = qu_client(env.cluster, 1)
            seal = Seal(new, [old])
            async with open_file_system(qu, rw, cfg, rng=random.Random(1), seal=seal) as current:
                for name, data in after.items():
                    await write_file(current, name, data)
                await _read_all(current, {**before, **after})
        removed = env.fs  # the old key alone
        await _read_all(removed, before)
        for name in after:  # an inline file fails at open (its content comes with it)
            ino = (await removed.lookup(obj.ROOT, name)).ino
            with pytest.raises(SealBroken):
                fh = await removed.open(ino, os.O_RDONLY)
                try:
                    await removed.read(fh, 0, 100)
                finally:
                    await removed.release(fh)


async def test_sealed_names_are_still_unique_renamed_and_at_most_175_bytes(
    tmp_path: Path,
) -> None:
    """Names seal deterministically per directory: the nodes refuse a name another mount
    made (they compare sealed forms), a rename re-seals it in its new directory, and a
    name whose sealed form would pass 255 bytes is ENAMETOOLONG at once, also with
    write-behind (statfs says 175)."""
    seal = Seal(VolumeKey(random.Random(5).randbytes(32)))
    async with fs_env(tmp_path, fs_options={"seal": seal, "write_behind": True}) as env:
        a, b = env.fss
        await write_file(a, b"same", b"first")
        with pytest.raises(Exists):
            await b.mkdir(obj.ROOT, b"same", 0o755, 0, 0)
        sub = await a.mkdir(obj.ROOT, b"sub", 0o755, 0, 0)
        await a.rename(obj.ROOT, b"same", sub.ino, b"moved")
        with pytest.raises(NotFound):
            await b.lookup(obj.ROOT, b"same")
        got = await b.lookup(sub.ino, b"moved")
        fh = await b.open(got.ino, os.O_RDONLY)
        assert await b.read(fh, 0, 10) == b"first"
        await b.release(fh)
        longest = b"n" * SEALED_NAME_MAX
        await write_file(a, longest, b"x")
        assert (await b.lookup(obj.ROOT, longest)).size == 1
        for fs in (a, b):
            with pytest.raises(NameTooLong):
                await fs.create(obj.ROOT, longest + b"n", 0o644, 0, 0, os.O_RDWR)
            with pytest.raises(NameTooLong):
                await fs.lookup(obj.ROOT, longest + b"n")
        assert (await a.statfs())["f_namemax"] == SEALED_NAME_MAX == 175
        await a.write_back()
        assert sorted(n for n, _ in await b.readdir(obj.ROOT)) == sorted([longest, b"sub"])


async def test_write_back_of_creates_and_removals_seals_the_names_it_batches(
    tmp_path: Path,
) -> None:
    """Directory write-back sends names in batches (``fs.createmany``, ``fs.unlinkmany``,
    issue 33): sealed there too, so the batches work (the nodes find the sealed names)
    and no node stores or is sent a name in the clear."""
    from t3_fs_writeback import exclusive, new_file

    seal = Seal(VolumeKey(random.Random(33).randbytes(32)))
    options = {"seal": seal, "write_behind": True, "lease_term": 30.0, "commit": 60.0}
    async with fs_env(tmp_path, fs_options=options) as env:
        a, b = env.fss
        d = (await a.mkdir(obj.ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        names = [b"BATCHED-NAME-%d-3c9e" % k for k in range(4)]
        for name in names:
            await new_file(a, d, name, b"x")
        await a.write_back()
        for name in names[:3]:
            await a.unlink(d, name)
        assert [n for n, _ in await b.readdir(d)] == sorted(
            [names[3], b"warm0", b"warm1", b"warm2"]
        )
        assert a.meta.methods["fs.createmany"] >= 1 and a.meta.methods["fs.unlinkmany"] == 1
        assert a.meta.methods["fs.unlink"] == 0  # the batch was taken, not sent again alone
    assert _found(tmp_path, names) == set()


async def test_held_files_written_back_together_are_sealed(tmp_path: Path) -> None:
    """The appends of held files go back several per update (``fs.writemany``, issue 33):
    each file's content sealed there too, so no node stores it in the clear, and another
    client reads every file."""
    from t3_fs_heldfiles import append, held_file, read_all
    from t3_fs_writeback import exclusive

    seal = Seal(VolumeKey(random.Random(34).randbytes(32)))
    options = {"seal": seal, "write_behind": True, "lease_term": 30.0, "commit": 60.0}
    markers = [b"HELD-CONTENT-%d-7a1f" % k for k in range(4)]
    async with fs_env(tmp_path, fs_options=options) as env:
        a, b = env.fss
        d = (await a.mkdir(obj.ROOT, b"d", 0o755, 0, 0)).ino
        await exclusive(a, d)
        inos = [await held_file(a, d, b"h%d" % k, b"-") for k in range(4)]
        for ino, marker in zip(inos, markers, strict=True):
            await append(a, ino, marker)
        await a.write_back()
        assert a.meta.methods["fs.writemany"] >= 1
        for k, marker in enumerate(markers):
            assert await read_all(b, (await b.lookup(d, b"h%d" % k)).ino) == b"-" + marker
    assert _found(tmp_path, markers) == set()
