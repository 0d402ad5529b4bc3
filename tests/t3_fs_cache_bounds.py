"""Tier 3: the attributes a mount keeps of what its own updates answered are bounded
(``MetadataCache.own``, ``caches.OWN_LIMIT``), on the in-process cluster.

A mount kept one stat (about 1 KiB) for every object it ever created or changed, however
long it ran; a forgotten one costs a round where it would have answered alone, nothing
more."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fs_helpers import Env, run

from bftfs.fs import caches
from bftfs.fsobjects import ROOT

LIMIT = 16


def test_own_attributes_stay_within_their_bound_and_stats_stay_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three times the bound of files made with their content, a directory among them:
    the cache never holds more than the bound, directories outlast files in it, and every
    file still stats with its own size."""
    monkeypatch.setattr(caches, "OWN_LIMIT", LIMIT)

    async def body(env: Env) -> None:
        a = env.fss[0]
        d = (await a.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
        sizes: dict[int, int] = {}
        for k in range(3 * LIMIT):
            fh, attr = await a.create(d, b"f%d" % k, 0o644, 0, 0, os.O_WRONLY)
            await a.write(fh, 0, b"x" * k)
            await a.flush(fh)
            await a.release(fh)
            sizes[attr.ino] = k
            assert len(a.cache.own) <= LIMIT
        assert d in a.cache.own, "the directory went before files"
        for ino, size in sizes.items():
            assert (await a.getattr(ino)).size == size

    run(tmp_path, body, fs_options={"write_behind": False})
