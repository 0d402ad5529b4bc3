"""The cross-group commit's values (issue 66, docs/layout.md "Operations across groups"):
a transaction's descriptor and digest, the group keys certificates are checked against,
and the certificates themselves.  Pure and bounded: everything here parses what a
Byzantine client may send and refuses (``MethodRefused``) what is malformed, so the
methods of :mod:`bftfs.fsobjects.txnmethods` never crash a node.

A **descriptor** ``T`` (a map, canonical msgpack, at most :data:`MAX_DESC` bytes)::

    {"id": 16 random bytes, "cl": the client that began it, "c": coordinator group,
     "r": the record object rec(T) on that group, "dl": deadline (ns), "lv": layout
     version, "p": [[group, [object ids, sorted], method, argument], ...]}

one participant per group, at most :data:`MAX_PARTS`.  Its digest ``D`` (keyless BLAKE2b
of the canonical bytes) is what every method, vote and decision names, so a client cannot
prepare one thing and decide another.

A **certificate** is ``{"lt": timestamp, "a": answer, "s": [[node, signature], ...]}``:
``q`` distinct nodes of one group signing :func:`bftfs.qu.reply.signed_statement` of the
method, the objects, the timestamp of the candidate they accepted and its answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bftfs.fsobjects.txnsign import KEY_SIZE, SIGNATURE_SIZE, verify
from bftfs.qu.canon import CanonicalError, canonical
from bftfs.qu.objects import MethodRefused
from bftfs.qu.reply import signed_statement
from bftfs.qu.timestamp import MAX_OBJECTS, Timestamp, TimestampError

#: Most participants (groups) of one transaction.
MAX_PARTS = 8
#: Largest canonical descriptor (a rename's two parts are a few hundred bytes).
MAX_DESC = 16 * 1024
#: Longest a transaction may run past the time its begin or prepare declares: what an
#: abandoned transaction's intents can lock objects for, at most.
MAX_SPAN = 60 * 10**9
#: Most signatures a certificate may carry (a group's nodes).
MAX_SIGS = 64
#: Largest object id, group number, client id, time accepted.
MAX_INT = (1 << 64) - 1
#: Longest participant method name.
MAX_METHOD = 64

COMMIT = "commit"
ABORT = "abort"


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INT:
        raise MethodRefused("txn-malformed", f"{what} must be an integer in 0..2^64")
    return v


@dataclass(frozen=True)
class Part:
    """One participant: a group, its objects and the update run on them."""

    group: int
    objects: tuple[int, ...]
    method: str
    arg: Any


@dataclass(frozen=True)
class Txn:
    """A parsed descriptor and its digest."""

    raw: Mapping[str, Any]
    digest: bytes
    client: int
    coordinator: int
    record: int
    deadline: int
    layout: int
    parts: tuple[Part, ...]


def digest(raw: Any) -> bytes:
    """The digest ``D`` of a descriptor (its canonical bytes)."""
    return hashlib.blake2b(canonical(raw), digest_size=32, person=b"bftfs-txn-v1").digest()


def parse_txn(raw: Any, keys: GroupKeys) -> Txn:
    """``raw`` as a descriptor valid under ``keys`` (its layout version, its groups).

    Raises:
        MethodRefused: ``txn-malformed`` (or ``txn-layout``: another layout version).
    """
    if not isinstance(raw, Mapping) or set(raw) != {"id", "cl", "c", "r", "dl", "lv", "p"}:
        raise MethodRefused("txn-malformed", "descriptor keys")
    try:
        size = len(canonical(raw))
    except CanonicalError as e:
        raise MethodRefused("txn-malformed", str(e)) from e
    if size > MAX_DESC:
        raise MethodRefused("txn-malformed", "descriptor too large")
    tid = raw["id"]
    if not isinstance(tid, bytes) or len(tid) != 16:
        raise MethodRefused("txn-malformed", "id must be 16 bytes")
    if _int(raw["lv"], "layout version") != keys.version:
        raise MethodRefused("txn-layout", f"layout {raw['lv']}, this node holds {keys.version}")
    coord = _int(raw["c"], "coordinator")
    if coord >= len(keys.groups):
        raise MethodRefused("txn-malformed", "no such coordinator group")
    parts_raw = raw["p"]
    if not isinstance(parts_raw, list) or not 1 <= len(parts_raw) <= MAX_PARTS:
        raise MethodRefused("txn-malformed", f"1..{MAX_PARTS} participants")
    parts = tuple(_part(p, keys) for p in parts_raw)
    if len({p.group for p in parts}) != len(parts):
        raise MethodRefused("txn-malformed", "one participant per group")
    return Txn(
        raw,
        digest(raw),
        _int(raw["cl"], "client"),
        coord,
        _int(raw["r"], "record"),
        _int(raw["dl"], "deadline"),
        keys.version,
        parts,
    )


def _part(p: Any, keys: GroupKeys) -> Part:
    if not isinstance(p, list) or len(p) != 4:
        raise MethodRefused("txn-malformed", "participant must be [group, objects, method, arg]")
    group = _int(p[0], "group")
    if group >= len(keys.groups):
        raise MethodRefused("txn-malformed", "no such group")
    objs = p[1]
    if not isinstance(objs, list) or not 1 <= len(objs) <= MAX_OBJECTS:
        raise MethodRefused("txn-malformed", f"1..{MAX_OBJECTS} objects per participant")
    objects = tuple(_int(o, "object") for o in objs)
    if list(objects) != sorted(set(objects)):
        raise MethodRefused("txn-malformed", "objects sorted and distinct")
    method = p[2]
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD:
        raise MethodRefused("txn-malformed", "method name")
    return Part(group, objects, method, p[3])


def part_index(txn: Txn, raw: Any, objects: Sequence[int]) -> int:
    """The participant ``raw`` names whose objects are exactly ``objects``.

    Raises:
        MethodRefused: ``txn-malformed`` (no such participant) or ``txn-objects``.
    """
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw < len(txn.parts):
        raise MethodRefused("txn-malformed", "no such participant")
    if tuple(sorted(objects)) != txn.parts[raw].objects:
        raise MethodRefused("txn-objects", "the request's objects are not the participant's")
    return raw


@dataclass(frozen=True)
class GroupKeys:
    """What a node checks certificates against: the layout version it holds and, per
    group, the long-term public keys of its nodes (X25519, ``LayoutNode.public_key``, in
    the group's order: a node's index is its Q/U id) and its quorum ``q``.  Built from a
    layout by ``layout/txn.py`` ``group_keys``."""

    version: int
    groups: tuple[tuple[bytes, ...], ...]
    quorums: tuple[int, ...]

    def certified(
        self, group: int, method: str, objects: tuple[int, ...], cert: Any, answer: Any
    ) -> bool:
        """Whether ``cert`` shows ``q`` distinct nodes of ``group`` accepting an update
        ``method`` on ``objects`` that answered ``answer``; anything malformed is not."""
        if not isinstance(cert, Mapping) or not 0 <= group < len(self.groups):
            return False
        if cert.get("a") != answer:
            return False
        sigs = cert.get("s")
        keys = self.groups[group]
        if not isinstance(sigs, list) or len(sigs) > min(MAX_SIGS, len(keys)):
            return False
        try:
            lt = Timestamp.decode(cert.get("lt"))
        except (TimestampError, TypeError, ValueError):
            return False
        stmt = signed_statement(method, objects, lt, answer)
        good: set[int] = set()
        for item in sigs:
            if not isinstance(item, list) or len(item) != 2:
                return False
            node, sig = item
            if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < len(keys):
                return False
            if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
                return False
            if node not in good and verify(keys[node], stmt, sig):
                good.add(node)  # distinct nodes: a node signing twice counts once
                if len(good) >= self.quorums[group]:
                    return True  # no more checks than a quorum's (each about 0.2 ms)
        return False

    def check(self) -> None:
        """Refuse a malformed set (a node's own configuration, not a client's value).

        Raises:
            ValueError: a key not 32 bytes, or a quorum not one of the group's sizes.
        """
        if len(self.quorums) != len(self.groups):
            raise ValueError("one quorum per group")
        for keys, q in zip(self.groups, self.quorums, strict=True):
            if any(len(k) != KEY_SIZE for k in keys) or not 0 < q <= len(keys):
                raise ValueError("group keys: 32-byte keys, 0 < q <= nodes")


def vote_answer(txn: Txn, index: int, yes: bool, why: str = "", intent: bytes = b"") -> list[Any]:
    """The answer of ``txn.prepare`` (what a vote certificate signs): a yes names its
    intent (the timestamp of the version the intent was made in, which a retried
    prepare's stored answer repeats), a no the participant update's refusal."""
    return ["yes", txn.digest, index, intent] if yes else ["no", txn.digest, index, why[:120]]


def decision_answer(txn: Txn, decision: str, versions: Sequence[Any] = ()) -> list[Any]:
    """The answer of ``txn.decide`` (what a decision certificate signs): for a commit,
    with the version of each participant's certified yes (its candidate's timestamp), so
    that ``txn.finish`` applies that intent and no other."""
    return ["decided", txn.digest, decision, list(versions)]
