"""Tier 1: the pure parts of per-file block sizes (docs/fs.md, "Per-file block size"):
what counts as written sequentially, and re-keying buffered blocks to another block size
keeps every byte (seeded random writes against a model)."""

from __future__ import annotations

import itertools
import random
import stat as stat_mod
from typing import Any

import pytest

from bftfs import fsobjects as objects
from bftfs.fs.files import OpenFile, file_block_size, sequential_end
from bftfs.fs.files.reclaim import dead_contents
from bftfs.qu.objects import MethodRefused


def stat(size: int = 0, **extra: object) -> dict[str, object]:
    return {"d": 7, "v": 1, "size": size, "alloc": 1 << 20, "inl": False, **extra}


def test_sequential_end() -> None:
    a, b = b"a" * 10, b"b" * 5
    assert sequential_end([], 0) == 0 and sequential_end([], 30) == 30
    assert sequential_end([(0, a, False), (10, b, False)], 0) == 15
    assert sequential_end([(0, a, False), (4, b, False), (10, b, False)], 0) == 15  # rewrite
    assert sequential_end([(0, a, False), (11, b, False)], 0) == 0  # a jump forward
    assert sequential_end([(5, a, False)], 0) == 0
    assert sequential_end([(5, a, False)], 5) == 15  # after inline content of 5 bytes


def test_file_block_size_is_the_recorded_one_else_the_cluster_s() -> None:
    assert file_block_size(stat(), 4096) == 4096
    assert file_block_size(stat(bs=16384), 4096) == 16384
    f = OpenFile.from_stat(1, stat(bs=16384), 4096)
    assert (f.bs, f.default_bs) == (16384, 4096)


@pytest.mark.parametrize("seed", range(8))
def test_rekeying_buffered_blocks_keeps_every_byte(seed: int) -> None:
    rng = random.Random(seed)
    small, big = 4096, 4096 * rng.choice([2, 4, 8])
    inline = rng.randbytes(rng.randrange(0, 3000)) if rng.random() < 0.5 else b""
    st = stat(len(inline), inl=bool(inline))
    f = OpenFile.from_stat(1, st, small)
    model = bytearray(inline)
    if inline:
        f.remember(0, inline)
    for _ in range(rng.randrange(1, 30)):
        off = rng.randrange(0, 200_000)
        data = rng.randbytes(rng.randrange(1, 20_000))
        for k in f.blocks_to_read_for_write(off, len(data)):
            assert k == 0 and inline  # a blockless file: only inline content is read
        f.apply_write(off, data, 1)
        f.log.record(off, data, False)
        if len(model) < off:
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data
    if inline and 0 not in f.dirty:  # as FlushEngine._flush_once does before deciding
        f.dirty[0] = bytearray(f.clean[0])
    for target in (big, small, big):
        f.rekey(target)
        assert f.bs == target and not f.clean
        assert all(len(b) <= target for b in f.dirty.values())
        assert f.assemble_at(0, f.size) == model
        # What a flush would store, read back by block under the new size, is the model.
        stored = bytearray(f.size)
        for k, buf in f.dirty.items():
            stored[k * target : k * target + len(buf)] = buf
        assert stored == model


def test_dead_contents_are_the_written_blocks_below_size_and_reservation() -> None:
    """What a removal gives back (fs/files/reclaim.py): the blocks covering the written ranges
    below ``min(size, alloc)``, each once, lazily; everything below that bound for a
    file without the record; nothing for inline or block-less files (issue 31)."""
    from bftfs.fs.files.reclaim import dead_contents

    bs = 4096
    huge = 999999999999999
    sparse = {"d": 9, "size": huge, "alloc": 1 << 20, "w": [], "bs": bs}
    assert dead_contents(sparse, bs) is None
    far = {"d": 9, "size": (1 << 40) + 10, "alloc": 3 << 39, "bs": bs, "bt": 7}
    far["w"] = [[0, 100], [50, bs + 1], [1 << 40, (1 << 40) + 10]]
    dead = dead_contents(far, bs)
    assert dead is not None and dead.bt == 7
    assert list(dead.blocks()) == [0, 1, (1 << 40) // bs] and dead.count() == 3
    old = {"d": 9, "size": 3 * bs, "alloc": 1 << 20, "bs": bs}  # no record: all of it
    assert list(dead_contents(old, bs).blocks()) == [0, 1, 2]  # type: ignore[union-attr]
    clipped = {"d": 9, "size": huge, "alloc": 2 * bs, "bs": bs}  # never beyond alloc
    assert dead_contents(clipped, bs).count() == 2  # type: ignore[union-attr]
    assert dead_contents({**old, "inl": True}, bs) is None
    assert dead_contents({**old, "d": 0}, bs) is None
    # A huge merged range is counted without being walked.
    wide = {"d": 9, "size": huge, "alloc": huge, "bs": bs, "w": [[0, huge]]}
    assert dead_contents(wide, bs).count() == -(-huge // bs)  # type: ignore[union-attr]


# The stale ranges past the size (``z``, bftfs.fsobjects.ranges; issue 31, item 9) ------

BS = 4096
FAR = 1 << 40
OID = 9


def attribute_object(**extra: Any) -> dict[str, Any]:
    """A regular file's attribute object as ``fs.create`` makes it (data id 5)."""
    f = {"k": "f", "mode": stat_mod.S_IFREG | 0o644, "uid": 0, "gid": 0, "rdev": 0, "nl": 1}
    f.update(size=0, alloc=1 << 20, d=5, at=0, mt=0, ct=0, t=None, x={}, v=0, i=None)
    f.update(w=[], z=[], bs=BS)
    f.update(extra)
    return f


def apply(f: dict[str, Any], method: str, **arg: Any) -> dict[str, Any]:
    """``f`` after the object method ``method`` with ``arg`` (time 1 s unless given)."""
    fn = {m.name: m.fn for m in objects.FS.methods}[method]
    states, _ = fn({OID: f}, {"now": 10**9, **arg})
    return dict(states[OID])


def far_written() -> dict[str, Any]:
    """A block at 0 and one at 1 TiB, flushed by a client that holds no lease."""
    f = attribute_object(alloc=2 * FAR)
    w = [[0, BS], [FAR, FAR + BS]]
    return apply(f, "fs.write", d=5, end=FAR + BS, mtime=1, w=w)


def test_truncation_keeps_what_it_cuts_off_as_stale_and_growth_clears_only_that() -> None:
    f = apply(far_written(), "fs.setattr", size=100)
    assert f["w"] == [[0, 100]] and f["z"] == [[100, BS], [FAR, FAR + BS]]
    st = objects.stat_of(f)
    assert st["z"] == f["z"] and st["al"] == 100
    cached = OpenFile.from_stat(OID, st, BS)
    partial, empty = cached.gap_blocks(2 * FAR)
    assert partial == [0] and list(empty) == [FAR // BS]  # not the 2**28 blocks between
    grown = apply(f, "fs.setattr", size=2 * FAR)
    assert grown["z"] == [] and grown["size"] == 2 * FAR
    # Truncated to zero: a fresh data id, nothing stale; the dead one gives back z too.
    dead = dead_contents(objects.stat_of(f), BS)
    assert dead is not None and list(dead.blocks()) == [0, FAR // BS]
    assert apply(f, "fs.setattr", size=0, d=6, alloc=1 << 20)["z"] == []


def test_the_stale_record_stays_bounded() -> None:
    """A client writing far apart and truncating over and over: at most 32 ranges, each
    cut-off range still covered (merged with its closest neighbour)."""
    f = attribute_object(alloc=1 << 50)
    cut = []
    for k in range(100, 0, -1):
        at = k * (1 << 30) + k * BS
        f = apply(f, "fs.write", d=5, end=at + BS, mtime=1, w=[[at, at + BS]])
        f = apply(f, "fs.setattr", size=at)
        cut.append((at, at + BS))
    assert len(f["z"]) <= objects.MAX_EXTENTS
    assert all(any(lo <= a and b <= hi for lo, hi in f["z"]) for a, b in cut)
    with pytest.raises(MethodRefused):
        apply(f, "fs.lock", d=5, v=f["v"], tok=1, lease=10**9, z=[[k, k + 1] for k in range(33)])
    with pytest.raises(MethodRefused):
        apply(f, "fs.lock", d=5, v=f["v"], tok=1, lease=10**9, z=[[5, 5]])


def test_a_lease_declares_what_it_writes_and_an_unfinished_one_leaves_it_stale() -> None:
    f = apply(far_written(), "fs.setattr", size=100)
    f = apply(f, "fs.setattr", size=2 * FAR)
    assert f["z"] == []
    decl = [[3 * FAR, 3 * FAR + BS]]
    lock = {"d": 5, "tok": 1, "lease": 10**9}
    locked = apply(f, "fs.lock", **lock, v=f["v"], alloc=4 * FAR, z=decl)
    assert objects.stat_of(locked)["zl"] == decl and locked["z"] == []
    # Completed by its holder: the blocks lie below the size it sets; nothing stale.
    done = apply(locked, "fs.write", d=5, tok=1, end=3 * FAR + BS, mtime=1, w=decl)
    assert done["z"] == [] and done["wl"] is None and "zl" not in objects.stat_of(done)
    # Given up: what it declared may be there.
    given_up = apply(locked, "fs.unlock", tok=1)
    assert given_up["z"] == decl and given_up["wl"] is None
    # Died: its lease runs out and another client's lease or size change settles it.
    later = 10 * 10**9
    other = apply(locked, "fs.lock", **{**lock, "tok": 2}, v=locked["v"], now=later, z=[])
    assert other["z"] == decl and objects.stat_of(other).get("zl") is None
    resized = apply(locked, "fs.setattr", size=2 * FAR + 1, now=later)
    assert resized["z"] == decl
    # No declaration (a client that says nothing): the whole reservation.
    anything = apply(f, "fs.lock", **lock, v=f["v"])
    assert objects.stat_of(anything)["zl"] == [[0, f["alloc"]]]
    # The holder's own next lease takes its declaration over (a first flush that must
    # lock while holding its create's lease): nothing becomes stale when it completes.
    again = apply(locked, "fs.lock", **lock, v=locked["v"], alloc=4 * FAR, z=[])
    assert again["z"] == [] and objects.stat_of(again)["zl"] == decl


def test_objects_made_before_the_record_clear_the_whole_gap_lazily() -> None:
    old = far_written()
    del old["z"]
    f = apply(old, "fs.setattr", size=100)
    assert "z" not in f and "z" not in objects.stat_of(f)
    cached = OpenFile.from_stat(OID, objects.stat_of(f), BS)
    partial, empty = cached.gap_blocks(2 * FAR)
    assert partial == [0]
    assert list(itertools.islice(empty, 3)) == [1, 2, 3]  # (2**28 of them, never listed)
    assert apply(f, "fs.setattr", size=0, d=6, alloc=1 << 20)["z"] == []
