"""FaB's state in chunks (bftfs/fab/chunks.py, execution.py, statetransfer.py, durable.py):
the checkpoint digest is the same on nodes that reached one state by different histories;
a checkpoint re-encodes and a node writes only the buckets that changed; a piece that
fails its digest is refused and asked of another node; a Byzantine sender of garbage or
oversized pieces makes the receiver keep nothing; a store of the format before chunks
(one blob under ``s``) restores and is converted at the next write; a write cut short
leaves the old checkpoint whole in LMDB."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fab_sim import CLIENT_BASE, Network, keys_for
from t1_fab_durable import _persisted
from t1_fab_protocol import _increments, _settle

from bftfs.fab import durable
from bftfs.fab.auth import sign
from bftfs.fab.certificates import checkpoint_body
from bftfs.fab.chunks import BUCKETS, PIECE, bucket_of
from bftfs.fab.execution import Execution, digest_of, operation, request_value
from bftfs.fab.messages import Checkpoint, Fetch, Message, Snapshot, encode, statements_out
from bftfs.fab.replica import Replica, Settings
from bftfs.fab.statetransfer import IN_FLIGHT
from bftfs.kv import MemoryKV
from bftfs.node.store import Store
from bftfs.qu.canon import canonical
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

Q = FabQuorums.standard(1)
N = Q.a


def _put(ex: Execution, oid: int, value: bytes, rid: int) -> None:
    """Execute ``kv.put`` of ``value`` in object ``oid`` at the next slot (execution does
    not check authenticators: acceptors did)."""
    op = operation(CLIENT_BASE, rid, "kv.put", [oid], ["k", value])
    ex.apply(ex.executed + 1, request_value(op, []))


def _large(objects: int, size: int = 100) -> Execution:
    ex = Execution(registry())
    for oid in range(1, objects + 1):
        _put(ex, oid, bytes([oid % 251]) * size, oid)
    return ex


def test_nodes_that_reached_one_state_by_different_histories_certify_one_root() -> None:
    """Node 5 is cut off and catches up by state transfer; node 2 is restarted from its
    store mid-run: every correct node ends with the same pieces and root."""
    net = Network(6, Q, registry(), seed=13, settings=Settings(window=16, interval=8))
    kv = MemoryKV()
    _persisted(net.replicas[2], kv)
    net.cut = lambda src, dst, m: dst == 5 or src == 5
    assert _increments(net, 20)
    image = durable.load(kv)
    assert image is not None and image.state is not None
    net.replicas[2] = back = net._replica(2)
    back.execution.versions.restoring = True
    back.restore(image)
    back.execution.versions.restoring = False
    assert _increments(net, 20)
    net.cut = None
    assert _increments(net, 1)
    assert _settle(net)
    assert net.replicas[5].statistics().installed >= 1 and back.execution.executed == 41
    images = [r.execution.image() for r in net.replicas]
    assert len({i.root for i in images}) == 1 and len({i.pieces for i in images}) == 1
    # ... and the whole state decodes to the same objects everywhere
    assert {repr(r.execution.objects) for r in net.replicas} == {"{1: 41}"}
    # a state installed whole (the format before chunks) has the same root too
    again = Execution(registry())
    assert again.install(net.replicas[0].execution.snapshot())
    assert again.digest() == images[0].root


def test_a_checkpoint_after_one_change_re_encodes_and_writes_one_bucket() -> None:
    ex = _large(2000, 1000)
    first = ex.image()
    used = len({bucket_of(oid) for oid in range(1, 2001)})
    assert ex.encodings == used  # the first checkpoint encodes every bucket in use
    _put(ex, 777, b"changed", 9999)
    second = ex.image()
    assert ex.encodings == used + 1  # one bucket, not the 2000 objects
    # the first image did not change with the state (copy-on-write: a node serves it)
    assert first.piece_digests == tuple(digest_of(p) for p in first.pieces)
    assert first.root == digest_of(first.manifest)
    changed = [b for b in range(1, BUCKETS + 1) if first.chunks[b] != second.chunks[b]]
    assert changed == [bucket_of(777) + 1]
    assert second.chunks[1:] != first.chunks[1:] and second.root != first.root
    whole = Execution(registry())  # the same state encoded from scratch
    assert whole.install(ex.snapshot()) and whole.digest() == second.root

    # the store gets only the changed bucket's piece and the head (with the manifest)
    r = Replica(0, Q, keys_for(0), registry())
    r.execution = ex
    r.checkpoints.stable = first.seq
    r.transfer.keep(first.seq, first)
    changes = durable.Durable(r)
    kv = MemoryKV()
    durable.write(kv, changes.changes())
    whole_bytes = changes.state_bytes
    assert whole_bytes >= first.size()
    r.checkpoints.stable = second.seq
    r.transfer.keep(second.seq, second)
    out = changes.changes()
    written = [k for k, v in out if k.startswith(b"p") and v is not None]
    deleted = [k for k, v in out if k.startswith(b"p") and v is None]
    assert len(written) == 2 and len(deleted) == 2  # the bucket and the head, each
    assert changes.state_bytes - whole_bytes < whole_bytes // 20
    durable.write(kv, out)
    loaded = durable.load(kv)
    assert loaded is not None and loaded.state is not None and loaded.state.root == second.root


def _behind(state: Execution) -> tuple[Replica, list[tuple[int | None, Message]]]:
    """A fresh replica told (by f + 1 checkpoint statements) that ``state`` is the stable
    state, ticked until it asks for the manifest; it and what it sent."""
    r = Replica(5, Q, keys_for(5), registry(), Settings(window=256, interval=8))
    seq, root = state.executed, state.digest()
    for i in (0, 1):
        statement = sign(i, keys_for(i), checkpoint_body(seq, root), N)
        assert r.step(i, encode(Checkpoint(statement))).rejection is None
    assert r.checkpoints.stable == seq
    while not (sends := [s for s in r.tick().sends if isinstance(s[1], Fetch)]):
        pass
    return r, list(sends)


def test_a_piece_that_fails_its_digest_is_refused_and_asked_of_another_node() -> None:
    ex = _large(600, 1000)
    for k in range(3):  # one object of 600 KB: its bucket is cut in three pieces
        op = operation(CLIENT_BASE, 5000 + k, "kv.put", [1], [f"big{k}", b"b" * 200_000])
        ex.apply(ex.executed + 1, request_value(op, []))
    while ex.executed % 8:
        _put(ex, 2, b"x", 10_000 + ex.executed)
    image = ex.image()
    assert len(image.chunks[bucket_of(1) + 1]) == 3
    r, sends = _behind(ex)
    [(peer, fetch)] = sends
    assert isinstance(fetch, Fetch) and fetch.index == 0 and peer is not None
    step = r.step(peer, encode(Snapshot(image.seq, 0, image.manifest)))
    asked = [(p, m) for p, m in step.sends if isinstance(m, Fetch)]
    assert len(asked) == IN_FLIGHT  # several at once, from several nodes
    assert len({p for p, _ in asked}) > 1
    liar, first = asked[0]
    assert isinstance(first, Fetch) and liar is not None
    bad = r.step(liar, encode(Snapshot(image.seq, first.index, b"not the piece")))
    assert bad.rejection is not None and "does not match its digest" in bad.rejection
    again = [(p, m) for p, m in bad.sends if isinstance(m, Fetch) and m.index == first.index]
    assert again and all(p != liar for p, _ in again)  # asked of another node at once
    # answer every request with the right piece until the state is installed (it asks
    # for at most PER_TICK pieces a tick: then the next tick asks for more)
    pending = [*asked[1:], *again]
    for _ in range(5000):
        if r.statistics().installed:
            break
        if not pending:
            pending = [(q, x) for q, x in r.tick().sends if isinstance(x, Fetch)]
            continue
        p, m = pending.pop(0)
        assert isinstance(m, Fetch) and p is not None
        step = r.step(p, encode(Snapshot(m.seq, m.index, image.pieces[m.index - 1])))
        assert step.rejection is None
        pending += [(q, x) for q, x in step.sends if isinstance(x, Fetch)]
    assert r.execution.executed == image.seq and r.statistics().installed == 1
    assert r.execution.objects == ex.objects and r.execution.digest() == image.root


def test_a_byzantine_sender_of_garbage_and_huge_pieces_leaves_the_receiver_holding_nothing() -> (
    None
):
    ex = _large(300, 1000)
    while ex.executed % 8:
        _put(ex, 1, b"x", 10_000 + ex.executed)
    image = ex.image()
    r, [(peer, _)] = _behind(ex)
    assert peer is not None
    huge = canonical([3, 13, image.seq, 1, b"\0" * (PIECE + 1)])
    assert "at most" in (r.step(4, huge).rejection or "")  # refused when decoded
    r.step(peer, encode(Snapshot(image.seq, 0, image.manifest)))
    fetching = r.transfer.fetching
    assert fetching is not None
    local = dict(fetching.have)  # the pieces it held already (empty buckets')
    assert 0 < len(local) < len(image.pieces)
    refused = r.statistics().rejected
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        junk = b"\x5a" * PIECE
        targets = [i + 1 for i in range(len(image.pieces)) if i not in local]
        targets += [0, len(image.pieces) + 3]  # the manifest again, past the last piece
        for k in range(400):  # 100 MiB of garbage: every index, other checkpoints
            index = targets[k % len(targets)]
            m = Snapshot(image.seq + (k % 3) * 8, index, junk)
            r.step(k % 5, encode(m))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert fetching.have == local and r.statistics().rejected - refused >= 80
    assert grown < 4 * PIECE  # nothing of it kept (the bound: the certified state)
    assert r.execution.executed == 0


def test_a_store_of_the_format_before_chunks_restores_and_is_converted() -> None:
    ex = _large(50)
    while ex.executed % 8:
        _put(ex, 1, b"x", 10_000 + ex.executed)
    blob = ex.snapshot()
    kv = MemoryKV()
    body = checkpoint_body(ex.executed, digest_of(blob))
    statements = [sign(i, keys_for(i), body, N) for i in (0, 1)]
    kv.put(durable.DB, b"r", canonical([0, []]))
    certificate = statements_out(tuple(statements))
    kv.put(durable.DB, b"c", canonical([ex.executed, digest_of(blob), certificate]))
    kv.put(durable.DB, b"s", canonical([ex.executed, blob]))
    image = durable.load(kv)
    assert image is not None and image.snapshot is not None and image.state is None
    r = Replica(2, Q, keys_for(2), registry())
    r.restore(image)
    assert r.execution.executed == ex.executed and r.execution.objects == ex.objects
    durable.write(kv, durable.Durable(r, image).changes())
    assert kv.get(durable.DB, b"s") is None  # converted at the first write
    image = durable.load(kv)
    assert image is not None and image.state is not None and image.snapshot is None
    back = Replica(2, Q, keys_for(2), registry())
    back.restore(image)
    assert back.execution.objects == ex.objects
    assert back.execution.digest() == ex.digest() == image.state.root


def test_a_write_cut_short_leaves_the_old_checkpoint_whole_in_lmdb(tmp_path: Path) -> None:
    """A node killed while it writes a new stable checkpoint: the transaction never
    commits, so its LMDB store holds the old checkpoint's manifest and every piece of it
    (new pieces, deletions and the manifest go in one transaction)."""
    ex = _large(400, 1000)
    while ex.executed % 8:
        _put(ex, 1, b"x", 10_000 + ex.executed)
    r = Replica(0, Q, keys_for(0), registry())
    r.execution = ex
    old = ex.image()
    r.checkpoints.stable = old.seq
    r.transfer.keep(old.seq, old)
    changes = durable.Durable(r)
    store = Store(tmp_path / "lmdb", map_size=1 << 26, durable=False)
    store.write_now(lambda kv: durable.write(kv, changes.changes()))
    for k in range(8):  # the next checkpoint: 8 objects changed
        _put(ex, 1 + 37 * k, b"new", 20_000 + k)
    new = ex.image()
    r.checkpoints.stable = new.seq
    r.transfer.keep(new.seq, new)
    out = changes.changes()
    assert sum(1 for k, v in out if v is None) >= 8  # old pieces deleted ...

    def killed(kv: Any) -> None:
        durable.write(kv, out[: len(out) // 2])  # ... but the node dies halfway
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.write_now(killed)
    changes.forget()
    image = store.read(durable.load)
    assert image is not None and image.state is not None and image.state.root == old.root
    store.write_now(lambda kv: durable.write(kv, changes.changes()))  # whole, next time
    image = store.read(durable.load)
    assert image is not None and image.state is not None and image.state.root == new.root
    stored = store.read(lambda kv: list(kv.scan(durable.DB, b"p", b"q")))
    assert len(stored) == len(set(new.piece_digests))  # no piece of the old one is left
    store.close()
