"""What a Q/U server answers from its store without changing it: its replica histories
(``qu.history``, and the histories every reply carries), the newest timestamp per object
(``qu.latest``), a stored request (``qu.fetch``, for inline repair L2561-2570 and link
proofs), a version for object sync (``qu.sync``, L2599-2607) and the stored versions
themselves (version history).
"""

from __future__ import annotations

from typing import Any

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import unpack
from bftfs.qu.history import OHSEntry, make_authenticator
from bftfs.qu.messages import ReplyStatus, parse_fetch_chain, parse_fetch_more
from bftfs.qu.reply import Reply
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import ZERO, Timestamp


def stored_histories(kv: KV, cfg: ReplicaConfig, objects: tuple[int, ...]) -> tuple[OHSEntry, ...]:
    """This server's ``<RH, alpha>`` of each of ``objects``, authenticated (what every reply
    carries, lines 1008, 1021, 1030)."""
    out = []
    for oid in objects:
        rh, auth = schema.load_rh(kv, oid)
        if auth is None:
            auth = make_authenticator(oid, rh, cfg.th.n, cfg.key_for)
        out.append(OHSEntry(rh, auth))
    return tuple(out)


def handle_history(kv: KV, cfg: ReplicaConfig, objects: tuple[int, ...]) -> Reply:
    """A read of this server's histories (``qu.history``): what a client needs to add an
    object to a multi-OHS for deduction, without sending an operation."""
    return Reply(ReplyStatus.OK, hist=stored_histories(kv, cfg, objects))


def handle_latest(kv: KV, after: int | None, limit: int) -> dict:
    """The newest timestamp in this server's history of each object with id > ``after``,
    ``limit`` of them in id order (``qu.latest``: a restarted server compares them with its
    own to find what changed while it was down)."""
    start = schema.oid_key(0 if after is None else after + 1) if after != schema.MAX_OID else None
    out: list[list] = []
    more = False
    if start is not None:
        for key, raw in kv.scan(schema.DB_RH, start, schema.OID_END):
            if len(out) >= limit:
                more = True
                break
            out.append([int.from_bytes(bytes(key), "big"), schema.newest_stored(bytes(raw))])
    return {"o": out, "more": more}


def handle_fetch(kv: KV, lt: Timestamp) -> Any:
    """The stored request that made candidate ``lt`` (for inline repair), or None."""
    return schema.load_request(kv, lt)


#: Stored requests one ``qu.fetch`` of a chain answers at most, and their bytes.
MAX_CHAIN, CHAIN_BYTES = 32, 1 << 20


def fetch_reply(kv: KV, payload: Any) -> dict:
    """A ``qu.fetch`` answer: the stored request of ``lt`` (``r``).  When the body names
    further timestamps (``more``), the stored request of each (``m``, None where this
    server has none); else, when it names an object (``oid``) and a count (``n``), the
    stored requests of the versions before it in that object's conditioned-on chain
    (``c``), as far as this server holds them, at most :data:`MAX_CHAIN` or
    :data:`CHAIN_BYTES`.  A client walking a pruned chain proves a link a round; each of
    these proves itself (``links.prove``), so one answer lets it prove dozens.

    Raises:
        MessageError: a malformed body.
    """
    lt, oid, n = parse_fetch_chain(payload)
    more = parse_fetch_more(payload)
    first = schema.load_request(kv, lt)
    if more:
        return {"r": first, "m": _requests(kv, more)}
    chain: list[Any] = []
    if first is None or oid is None:
        return {"r": first}
    size = 0
    while len(chain) < min(n, MAX_CHAIN) and size < CHAIN_BYTES:
        v = schema.load_version(kv, oid, lt)
        if v is None or v.lt_co is None or v.lt_co == ZERO:
            break
        lt = v.lt_co
        raw = schema.load_request_packed(kv, lt)
        if raw is None:
            break
        size += len(raw)
        chain.append(unpack(raw))
    return {"r": first, "c": chain}


def _requests(kv: KV, lts: tuple[Timestamp, ...]) -> list[Any]:
    """The stored request of each of ``lts`` (None where this server has none, and for
    the rest once :data:`CHAIN_BYTES` are given)."""
    out: list[Any] = []
    size = 0
    for lt in lts:
        raw = schema.load_request_packed(kv, lt) if size < CHAIN_BYTES else None
        size += len(raw or b"")
        out.append(None if raw is None else unpack(raw))
    return out


def handle_sync(kv: KV, oid: int, lt: Timestamp) -> dict | None:
    """Object sync, host side: the version of ``oid`` at ``lt`` if stored here, with its
    kind and stored answer (what a restarted server's catch-up needs to take the version
    as accepted, :func:`bftfs.qu.adoption.adopt_step`; object sync itself reads only state
    and table)."""
    v = schema.load_version(kv, oid, lt)
    if v is None or v.kind == schema.BARRIER:
        return None
    return {"s": v.state, "ap": v.applied, "k": v.kind, "a": v.answer}


def versions(kv: KV, oid: int) -> list[schema.Version]:
    """Every stored version of ``oid``, oldest first (version history)."""
    return schema.iter_versions(kv, oid)


def read_version(kv: KV, oid: int, lt: Timestamp) -> Any:
    """The state of ``oid`` at ``lt`` as a value (None if absent or not stored)."""
    v = schema.load_version(kv, oid, lt)
    return unpack(v.state) if v is not None and v.state is not None else None
