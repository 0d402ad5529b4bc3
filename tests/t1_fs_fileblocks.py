"""Tier 1: the pure parts of per-file block sizes (docs/fs.md, "Per-file block size"):
what counts as written sequentially, and re-keying buffered blocks to another block size
keeps every byte (seeded random writes against a model)."""

from __future__ import annotations

import random

import pytest

from bftfs.fs.files import OpenFile, file_block_size, sequential_end


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
        f.record(off, data, False)
        if len(model) < off:
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data
    if inline and 0 not in f.dirty:  # as FileData._flush_once does before deciding
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
    """What a removal gives back (fs/reclaim.py): the blocks covering the written ranges
    below ``min(size, alloc)``, each once, lazily; everything below that bound for a
    file without the record; nothing for inline or block-less files (issue 31)."""
    from bftfs.fs.reclaim import dead_contents

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
