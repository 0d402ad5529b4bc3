"""Q/U object state charged to the principals that stored it, in real LMDB stores
(issue 18): every record an update writes - replica history, versions, the stored
request, the blobs of a large state - is charged to the request's authenticated sender in
the update's own transaction, and retention pruning and tombstones give the charges back
in theirs.  After updates by two clients, prunes and a tombstone, the charges recomputed
from the records still stored (``schema.audit``) equal the stored totals on every server,
with no charge left over and no record uncharged.  A client past its quota is refused the
updates that grow the states (nothing written), never those that shrink them, and the
Q/U client raises ``QuotaExceeded`` only when more than ``b`` servers refuse.

The servers are :class:`MemCluster`'s request handling run in one LMDB write transaction
per request (``Store.write_now``, as a node on a non-durable store); the client is the
real :class:`QUClient` over :class:`MemEndpoint`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from qu_helpers import MemCluster
from t1_qu_client import make_client

from bftfs import accounting
from bftfs.ids import client_id
from bftfs.kv import KV
from bftfs.net.errors import RemoteError
from bftfs.node.store import Store
from bftfs.outcome import QuotaExceeded
from bftfs.qu import schema
from bftfs.qu.messages import KIND_REQUEST
from bftfs.qu.objects import Class, Method, ObjectType, Registry
from bftfs.qu.replica import NeedSync, OverQuota, handle_request
from bftfs.qu.request import Request
from bftfs.qu.retention import prune_step
from bftfs.qu.serverconfig import Retention
from bftfs.qu.timestamp import ZERO
from bftfs.qu.tombstones import forget_step, tombstone_step, tombstone_target

C0, C1 = int(client_id(0)), int(client_id(1))
SEC = 10**9
OID, OTHER = 7, 8
MAP = 1 << 26


def _put(states: dict[int, Any], arg: Any) -> tuple[dict[int, Any], Any]:
    ((oid, _state),) = states.items()
    return {oid: arg}, None


#: A value per object; ``b"gone"`` is finished (a removed file's state).
BOX = ObjectType(
    "box", (Method("box.put", Class.UPDATE, _put),), finished=lambda state: state == b"gone"
)


class _Outside:
    """A server's store read outside a request (histories, fetches, syncs): one read
    transaction per call, as the node's inline handlers do."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, db: str, key: bytes) -> bytes | None:
        return self.store.read(lambda kv: kv.get(db, key))

    def scan(
        self, db: str, start: bytes, stop: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.store.read(lambda kv: list(kv.scan(db, start, stop, reverse=reverse))))

    def lower(self, db: str, key: bytes) -> tuple[bytes, bytes] | None:
        return self.store.read(lambda kv: kv.lower(db, key))

    def put(self, db: str, key: bytes, value: bytes) -> None:
        raise AssertionError("a write outside a request's transaction")

    def delete(self, db: str, key: bytes) -> bool:
        raise AssertionError("a write outside a request's transaction")


class LmdbCluster(MemCluster):
    """:class:`MemCluster` whose servers keep their state in LMDB: each request runs in
    one write transaction, with the client quota a node applies (``quota``)."""

    def __init__(self, stores: list[Store], quota: int | None = None) -> None:
        super().__init__(
            reg=Registry([BOX]), retention=Retention(keep_last=1, keep_seconds=10.0), clients=2
        )
        self.stores = stores
        self.quota = quota
        self.kvs = [_Outside(s) for s in stores]  # type: ignore[misc]

    def _honest(self, server: int, sender: int, kind: str, payload: Any) -> Any:
        if kind != KIND_REQUEST:
            return super()._honest(server, sender, kind, payload)
        if isinstance(payload, bytes):  # as clients send it
            req = Request.from_bytes(payload, self.th.n)
        else:
            req = Request.from_wire(payload, self.th.n)
        cfg = self.cfgs[server]
        res = self.stores[server].write_now(
            lambda kv: handle_request(kv, cfg, sender, req, {}, self.now_ns, self.quota)
        )
        if isinstance(res, NeedSync):
            raise RemoteError("sync", "no object sync here")
        if isinstance(res, OverQuota):
            raise RemoteError("quota", f"{res.used} + {res.grows} > {res.quota}")
        return res.wire()

    def audit(self) -> list[dict[int, int]]:
        """Each server's totals, after checking them against its records."""
        out = []
        for store in self.stores:
            totals, orphans, unaccounted = store.read(schema.audit)
            stored = store.read(accounting.QU.usages)
            assert (orphans, unaccounted) == (0, 0), (orphans, unaccounted)
            assert totals == stored, (totals, stored)
            out.append(stored)
        return out


def _stores(tmp_path: Path, n: int = 6) -> list[Store]:
    return [Store(tmp_path / f"s{i}", map_size=MAP, durable=False) for i in range(n)]


def _each(cl: LmdbCluster, step: Any) -> int:
    return sum(
        store.write_now(lambda kv, i=i: step(kv, cl.cfgs[i])) for i, store in enumerate(cl.stores)
    )


async def test_charges_follow_the_records_through_updates_prunes_and_tombstones(
    tmp_path: Path,
) -> None:
    stores = _stores(tmp_path)
    try:
        cl = LmdbCluster(stores)
        rng = random.Random(18)
        a, b = make_client(cl, 0), make_client(cl, 1)
        for k in range(6):  # small states, then large ones (split into blobs)
            cl.now_ns = k * SEC
            await a.update(OID, "box.put", rng.randbytes(200 if k < 3 else 9000))
        first = cl.audit()
        assert all(set(t) == {C0} for t in first)
        # Another client's update is charged to it; the history record moves to it too.
        await b.update(OID, "box.put", rng.randbytes(300))
        after_b = cl.audit()
        assert all(t[C1] > 300 for t in after_b)
        # Pruning (older than keep_seconds, beyond keep_last) gives back C0's versions.
        cl.now_ns = 100 * SEC
        assert _each(cl, lambda kv, cfg: prune_step(kv, cfg, OID, cl.now_ns)) > 0
        pruned = cl.audit()
        assert all(p.get(C0, 0) < q[C0] for p, q in zip(pruned, after_b, strict=True))
        # Finished, then shrunk to its tombstone: only the history and final version stay.
        await b.update(OID, "box.put", b"gone")
        cl.now_ns = 200 * SEC
        finals = {
            store.read(lambda kv, i=i: tombstone_target(kv, cl.cfgs[i], OID, cl.now_ns))
            for i, store in enumerate(stores)
        }
        assert len(finals) == 1 and None not in finals
        (final,) = finals
        assert final is not None
        assert _each(cl, lambda kv, cfg: tombstone_step(kv, cfg, OID, final, cl.now_ns)) > 0
        for totals, store in zip(cl.audit(), stores, strict=True):
            left = store.read(lambda kv: _record_bytes(kv))
            assert sum(totals.values()) == left  # every stored byte is someone's
        # Forgotten: nothing of the object stays, and nothing stays charged.
        cl.now_ns = 300 * SEC

        def forget(kv: KV, cfg: Any) -> int:
            cfg = replace(cfg, retention=replace(cfg.retention, forget_seconds=0.0))
            return forget_step(kv, cfg, OID, final, cl.now_ns)

        assert _each(cl, forget) == 2 * len(stores)  # the last version and the history
        for totals, store in zip(cl.audit(), stores, strict=True):
            assert sum(totals.values()) == 0 == store.read(lambda kv: _record_bytes(kv))
    finally:
        for store in stores:
            store.close()


def _record_bytes(kv: KV) -> int:
    return sum(
        len(k) + len(v)
        for db in (schema.DB_RH, schema.DB_VER, schema.DB_REQ, schema.DB_BLOB, schema.DB_BREF)
        for k, v in kv.scan(db, b"", b"\xff" * 128)
    )


class _Crash(Exception):
    pass


async def test_a_record_and_its_charge_commit_or_roll_back_together(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb", map_size=MAP, durable=True)
    v = schema.Version(
        ZERO, schema.METHOD, b"x" * 9000, schema.EMPTY_APPLIED, None, None, True, (OID,)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.committer)
        await store.write(lambda kv: schema.store_version(kv, OID, v, C0))
        kept = store.read(lambda kv: schema.usage_of(kv, C0))
        assert kept > 9000

        def stores_then_crashes(kv: KV) -> None:
            schema.store_version(kv, OTHER, v, C0)  # a blob reference, a version, a request:
            schema.store_request(kv, v.lt, b"r" * 100, C0)
            assert schema.usage_of(kv, C0) > kept
            raise _Crash

        def deletes_then_crashes(kv: KV) -> None:
            schema.delete_version(kv, OID, v)
            assert schema.usage_of(kv, C0) == 0
            raise _Crash

        for step in (stores_then_crashes, deletes_then_crashes):
            with pytest.raises(_Crash):
                await store.write(step)
            assert store.read(lambda kv: schema.usage_of(kv, C0)) == kept
            assert store.read(schema.audit) == ({C0: kept}, 0, 0)
        nursery.cancel_scope.cancel()
    store.close()
    reopened = Store(tmp_path / "lmdb", map_size=MAP, durable=False)
    try:
        assert reopened.read(schema.audit) == ({C0: kept}, 0, 0)
        reopened.write_now(lambda kv: schema.delete_version(kv, OID, v))
        assert reopened.read(schema.audit) == ({}, 0, 0)
        assert reopened.read(_record_bytes) == 0
    finally:
        reopened.close()


async def test_a_client_over_quota_is_refused_growth_but_may_shrink(tmp_path: Path) -> None:
    stores = _stores(tmp_path)
    try:
        cl = LmdbCluster(stores, quota=20_000)
        rng = random.Random(4)
        a, b = make_client(cl, 0), make_client(cl, 1)
        size = 1000
        with pytest.raises(QuotaExceeded):
            while size < 100_000:
                await a.update(OID, "box.put", rng.randbytes(size))
                size += 1000
        assert 2_000 < size < 20_000
        before = cl.audit()
        rh = [s.read(lambda kv: kv.get(schema.DB_RH, schema.oid_key(OID))) for s in stores]
        # The refused update wrote nothing anywhere (a retry is refused the same way).
        with pytest.raises(QuotaExceeded):
            await a.update(OID, "box.put", rng.randbytes(size))
        assert cl.audit() == before
        assert rh == [s.read(lambda kv: kv.get(schema.DB_RH, schema.oid_key(OID))) for s in stores]
        # Shrinking is never refused, and the other client is not held by a's quota.
        await a.update(OID, "box.put", b"small")
        await b.update(OTHER, "box.put", rng.randbytes(size))
        assert all(t[C1] > size for t in cl.audit())
    finally:
        for store in stores:
            store.close()


async def test_one_refusing_server_does_not_stop_a_client_two_do(tmp_path: Path) -> None:
    stores = _stores(tmp_path)
    try:
        cl = LmdbCluster(stores)
        client = make_client(cl, 0)

        def refuse(server: int, sender: int, kind: str, payload: Any, honest: Any) -> Any:
            if kind == KIND_REQUEST:
                raise RemoteError("quota", f"node {server} says so")
            return honest()

        cl.byzantine[0] = refuse  # type: ignore[assignment]
        await client.update(OID, "box.put", b"one refuses")  # b = 1: one may lie
        cl.byzantine[1] = refuse  # type: ignore[assignment]
        with pytest.raises(QuotaExceeded):
            await client.update(OID, "box.put", b"two refuse")
    finally:
        for store in stores:
            store.close()
