"""The wire forms of Byzantine Listeners' write messages and their checks.

==============  ===========================================  ==============================
kind            request                                      reply
==============  ===========================================  ==============================
``bl.ts``       ``{"k": key, "h": hash(D), "l": last_ts}``   ``{"s": ts0, "m": vector}``
                                                             (QUERY TS / TS, W2, T1-T3)
``bl.propose``  ``{"k", "s": my_ts, "h", "l",                ``{"s": my_ts, "v": vector}``
                "M": [[node, ts, vector], ...]}``            (PROPOSE TS / TS OK, W11, P1-P6)
``bl.store``    ``{"k", "s": ts, "d": D, "K": [[node,        ``{}``; the ACK (S3) goes to the
                vector], ...], "J": [[node, vector], ...],   writer as ``{"bl": {"k", "s"}}``
                "t": ttl}``                                  (W14, S1-S18, D4)
==============  ===========================================  ==============================

A client sends all three; nodes send each other ``bl.store`` (the forwarding).  Reads are
the plain Listeners' READ and READ COMPLETE (:mod:`~bftfs.listeners.messages`) under the
kinds ``bl.read`` and ``bl.done``, with echoes pushed as ``{"blv": VALUE}``: a read returns
``(D, ts, c)`` with ``c`` the stamp's writer.  Every parser raises ValueError on a
malformed message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bftfs.listeners import messages as lm
from bftfs.listeners.auth import Vector, parse_vector
from bftfs.listeners.bserver import Forward, Write
from bftfs.listeners.stamps import Stamp, Stored

KIND_TS = "bl.ts"
KIND_PROPOSE = "bl.propose"
KIND_STORE = "bl.store"
#: Reads: the plain register's forms under their own kinds (their own registers and table).
KIND_READ = "bl.read"
KIND_DONE = "bl.done"
KINDS = (KIND_TS, KIND_PROPOSE, KIND_STORE, KIND_READ, KIND_DONE)
#: The key of an ACK push.
PUSH = "bl"
#: The key of an echo push (a VALUE, as the plain register's ``{"lr": VALUE}``).
PUSH_VALUE = "blv"
#: Largest time-to-live a STORE may carry (a quorum of a cluster of at most 64 nodes).
MAX_TTL = 64


def _dict(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("a Byzantine Listeners message is a map")
    return raw


def _hash(d: dict[str, Any]) -> bytes:
    h = d.get("h")
    if not isinstance(h, bytes) or len(h) != 32:
        raise ValueError("hash(D) is 32 bytes")
    return h


def _node(raw: object, nodes: tuple[int, ...]) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw not in nodes:
        raise ValueError(f"not a node: {raw!r}")
    return raw


def _vectors(raw: object, nodes: tuple[int, ...]) -> dict[int, Vector]:
    if not isinstance(raw, list) or len(raw) > len(nodes):
        raise ValueError("a set of MAC vectors is at most one per node")
    out: dict[int, Vector] = {}
    for item in raw:
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError("a MAC vector entry is [node, vector]")
        out[_node(item[0], nodes)] = parse_vector(item[1], len(nodes))
    return out


def _wire_vectors(vs: Mapping[int, Vector]) -> list[list[Any]]:
    return [[i, list(v)] for i, v in sorted(vs.items())]


def ts_request(key: bytes, hd: bytes, last: Stamp) -> dict[str, Any]:
    return {"k": key, "h": hd, "l": last.wire()}


def parse_ts_request(raw: object) -> tuple[bytes, bytes, Stamp]:
    d = _dict(raw)
    return lm.parse_ts_request(d), _hash(d), Stamp.from_wire(d.get("l"))


def ts_reply(ts: Stamp, vec: Vector) -> dict[str, Any]:
    return {"s": ts.wire(), "m": list(vec)}


def parse_ts_reply(raw: object, n: int) -> tuple[Stamp, Vector]:
    d = _dict(raw)
    return Stamp.from_wire(d.get("s")), parse_vector(d.get("m"), n)


def propose_request(
    key: bytes, ts: Stamp, hd: bytes, last: Stamp, m: Mapping[int, tuple[Stamp, Vector]]
) -> dict[str, Any]:
    entries = [[q, s.wire(), list(v)] for q, (s, v) in sorted(m.items())]
    return {"k": key, "s": ts.wire(), "h": hd, "l": last.wire(), "M": entries}


def parse_propose_request(
    raw: object, nodes: tuple[int, ...]
) -> tuple[bytes, Stamp, bytes, Stamp, dict[int, tuple[Stamp, Vector]]]:
    d = _dict(raw)
    entries = d.get("M")
    if not isinstance(entries, list) or len(entries) > len(nodes):
        raise ValueError("M is at most one answer per node")
    m: dict[int, tuple[Stamp, Vector]] = {}
    for e in entries:
        if not isinstance(e, list) or len(e) != 3:
            raise ValueError("an answer of M is [node, ts, vector]")
        m[_node(e[0], nodes)] = (Stamp.from_wire(e[1]), parse_vector(e[2], len(nodes)))
    key = lm.parse_ts_request(d)
    return key, Stamp.from_wire(d.get("s")), _hash(d), Stamp.from_wire(d.get("l")), m


def ok_reply(ts: Stamp, vec: Vector) -> dict[str, Any]:
    return {"s": ts.wire(), "v": list(vec)}


def parse_ok_reply(raw: object, n: int) -> tuple[Stamp, Vector]:
    d = _dict(raw)
    return Stamp.from_wire(d.get("s")), parse_vector(d.get("v"), n)


def store_request(fwd: Forward) -> dict[str, Any]:
    w = fwd.write
    return {
        "k": w.key,
        "s": w.value.stamp.wire(),
        "d": w.value.data,
        "K": _wire_vectors(w.k_map),
        "J": _wire_vectors(fwd.j),
        "t": fwd.ttl,
    }


def parse_store_request(raw: object, nodes: tuple[int, ...]) -> Forward:
    d = _dict(raw)
    key, value = lm.parse_store_request(d)
    ttl = d.get("t")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"a ttl is 0..{MAX_TTL}")
    k = _vectors(d.get("K"), nodes)
    return Forward(
        Write.make(key, Stored(value.stamp, value.data), k), _vectors(d.get("J"), nodes), ttl
    )


def ack_push(key: bytes, ts: Stamp) -> dict[str, Any]:
    return {PUSH: {"k": key, "s": ts.wire()}}


def parse_ack(raw: object) -> tuple[bytes, Stamp]:
    d = _dict(raw)
    return lm.parse_ts_request(d), Stamp.from_wire(d.get("s"))
