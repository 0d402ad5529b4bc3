"""Tier 3: the file system's past on a FaB cluster with one node lying about versions
(issue 39; ``fab.versions``, ``fab/pastclient.py``), on the in-process cluster with real
protocol clients.  The liar (``bftfs/testing/byzantine/fabhistory.py``) answers every page
of every history read with forged versions (states altered, times an hour early), a
history cut short and claimed complete, or an incomplete one reaching further back with
made-up versions.  Histories come two versions to a page here, so continuations are lied
about too.  With ``b = 1`` liar what a reader gets is exactly what a correct node holds:
each history (``bftfs log``), each file's bytes at each moment (``cat --at``), a
directory's changes, and the tree restored elsewhere as it was (``restore``)."""

from __future__ import annotations

import random
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fs_helpers import RW_OPTIONS, _metadata_client
from t3_fs_pastrestore import put, read_tree, rewrite

from bftfs.fab import pastclient
from bftfs.fs.fabpast import FabPast
from bftfs.fs.filesystem import open_file_system
from bftfs.fs.pastrestore import TreeWriter
from bftfs.fs.session import past_of
from bftfs.fsobjects import ROOT
from bftfs.ids import NodeId
from bftfs.rw.client import open_rw_client
from bftfs.testing.byzantine import fabhistory
from bftfs.testing.cluster import open_cluster

BS = 4096
LIAR = 2


#: ``make test`` runs the forger (about 4 s each); the others are slow tests.
LIES = [
    pytest.param(b, marks=[] if b == "forge" else pytest.mark.slow) for b in fabhistory.BEHAVIOURS
]


@pytest.mark.parametrize("lie", LIES)
async def test_one_node_lying_about_versions_changes_nothing_a_reader_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lie: str
) -> None:
    monkeypatch.setattr(pastclient, "PAGE_VERSIONS", 2)
    async with (
        open_cluster(tmp_path, clients=2, block_size=BS, inline_limit=1024, engine="fab") as cl,
        AsyncExitStack() as stack,
    ):
        cl.faults[LIAR].byzantine(fabhistory.KIND, fabhistory.BEHAVIOURS[lie])
        cfg = cl.config
        rw = await stack.enter_async_context(open_rw_client(cl.client(0), cfg, **RW_OPTIONS))
        fs = await stack.enter_async_context(
            open_file_system(_metadata_client(cl, 0, 0), rw, cfg, rng=random.Random(1))
        )
        rng = random.Random(39)
        tree = (await fs.mkdir(ROOT, b"tree", 0o755, 0, 0)).ino
        f = await put(fs, tree, b"f", b"first")
        others = [
            await put(fs, tree, f"g{i}".encode(), rng.randbytes(300 + 2000 * i)) for i in range(3)
        ]
        written = [(time.time_ns(), b"first")]
        for k in range(5):
            data = rng.randbytes(100 if k % 2 else 3 * BS + 5)
            await rewrite(fs, f, data)
            written.append((time.time_ns(), data))
        then = await read_tree(fs, tree)
        moment = time.time_ns()
        await fs.rename(tree, b"g0", tree, b"h")
        await fs.unlink(tree, b"g1")
        await rewrite(fs, f, b"later")

        reader = await stack.enter_async_context(open_rw_client(cl.client(1), cfg, **RW_OPTIONS))
        meta = _metadata_client(cl, 1, 0)
        past = past_of(cfg, meta, cl.client(1), reader)
        assert isinstance(past, FabPast)
        truth = cl.faults[0].fab_replica.execution.versions  # a correct node's
        await meta.sync()
        told = await meta.ep.call(NodeId(LIAR), pastclient.KIND, [[f], meta.slot])
        assert told[1][0] != pastclient.page(truth, f, meta.slot, None)[0]  # it lies
        for oid in (f, tree, *others):
            got = await past.history(oid)
            await meta.sync()
            want = past._build(oid, truth.answer(oid, meta.slot))
            assert got.complete and [(v.time_ns, v.client, v.state) for v in got.versions] == [
                (v.time_ns, v.client, v.state) for v in want.versions
            ], oid
        hist = await past.history(f)
        assert hist.versions[-1].changes == ("created",)
        assert sum("written" in v.changes for v in hist.versions) >= 6
        for t, data in written:
            assert await past.content(await past.resolve("/tree/f", t)) == data
        changes = [c for v in reversed((await past.history(tree)).versions) for c in v.changes]
        assert changes[0] == "created" and "renamed g0 -> h" in changes and "removed g1" in changes
        (tree_then,) = await past.trees("/tree", [moment])
        await TreeWriter(fs, past.content, uid=0, gid=0, as_root=True).write(tree_then, "/copy")
        assert await read_tree(fs, (await fs.lookup(ROOT, b"copy")).ino) == then
