"""Deterministic execution of the learned sequence (seed 003 section 6.3, L5308-5350).

Agreement orders opaque values; this module gives them meaning.  A value is a client's
request ``[op, [mac...]]`` (:func:`request_value`): the operation
``[client, rid, method, [oid...], arg, stream]`` (:func:`operation`) with the client's
authenticator, one MAC per node, which acceptors check before accepting it (so a leader
cannot make up a client's operation, L5379-5385); or the no-op a new leader proposes into
a free slot.  Slots are applied strictly in order to the object
states with the same :class:`bftfs.qu.objects.Registry` methods Q/U runs, so the file
system's methods (``bftfs.fsobjects``) are ordered by FaB unchanged.

Exactly once (L5829-5870): the last request id and reply are kept per client *stream*
(one per mount, :mod:`bftfs.fab.sessions`); a request with an id not above its stream's
last one is not run again (the equal one gets the cached reply), and one whose stream was
evicted past its id is refused ``expired``.

The quota (``[limits] quota_fraction``, node/limits.py): every object state is charged to
the client whose request last wrote it, by its canonical size (``owners``, part of the
state).  A client's update whose new states are larger than those they replace, and that
would take its charge past ``quota``, is refused ``quota``, the rule and code of the Q/U
server (``qu/replica.py`` ``_over_quota``).  ``quota`` is one figure for the whole cluster
(``quota_fraction * map_size`` of ``cluster.toml``), never a node's own measure, so every
correct node decides alike; nodes are never refused.
A malformed value, an unknown method or a method's refusal are deterministic outcomes
(``ok`` false with a code), the same on every correct node, never an exception.

Checkpoints (L5896-5933): the state (objects, last replies, last slot, what the versions
kept beside it need, ``fab/versions.py``) is kept in chunks (:mod:`bftfs.fab.chunks`):
:meth:`Execution.image` re-encodes only the buckets of objects changed since its last call
and gives the checkpoint's :class:`~bftfs.fab.chunks.StateImage`, whose root is what nodes
certify; a node that fell behind a stable checkpoint installs an image whose root matches
the certificate (:meth:`Execution.install_image`).  :meth:`Execution.snapshot` is the
whole state in one encoding (the format a node's store held before chunks, still read).

Agreement and execution run on the same nodes in this step (every node is acceptor,
proposer and learner and executes): the seed's separate 2g+1 execution cluster pays off
when execution is costly or confidential (L5344-5350); it is not built here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bftfs.fab.chunks import (
    BUCKETS,
    EMPTY,
    EMPTY_DIGESTS,
    EMPTY_ENTRY,
    Pieces,
    StateImage,
    bucket_of,
    cut,
    encode_bucket,
    entry,
)
from bftfs.fab.chunks import digest_of as piece_digest
from bftfs.fab.messages import Reply, Signed
from bftfs.fab.sessions import AGAIN, EXPIRED, RUN, Sessions
from bftfs.fab.versions import Versions
from bftfs.ids import is_node
from bftfs.qu.canon import CanonicalError, canonical, unpack
from bftfs.qu.objects import Class, MethodRefused, Registry

NOOP = canonical(["noop"])


def operation(
    client: int, rid: int, method: str, oids: list[int], arg: Any, stream: int = 0
) -> bytes:
    """The value a client's request is ordered as (``stream``: its mount's, sessions.py)."""
    return canonical([client, rid, method, list(oids), arg, stream])


@dataclass(frozen=True)
class Operation:
    client: int
    rid: int
    method: str
    oids: tuple[int, ...]
    arg: Any
    stream: int = 0


def _nat(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def request_value(op: bytes, macs: Iterable[bytes]) -> bytes:
    """The value a client's request is ordered as: its operation and authenticator."""
    return canonical([op, list(macs)])


def parse_request(value: bytes) -> tuple[Operation, Signed] | None:
    """The operation a value carries and the client's statement of it (to verify); None
    for the no-op or a malformed value."""
    try:
        raw = unpack(value)
    except Exception:  # noqa: BLE001 - hostile bytes
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], bytes)):
        return None
    op_bytes, macs = raw
    if not isinstance(macs, list) or not all(isinstance(t, bytes) for t in macs):
        return None
    op = parse_operation(op_bytes)
    if op is None:
        return None
    return op, Signed(op.client, op_bytes, tuple(macs))


def parse_operation(op_bytes: bytes) -> Operation | None:
    """The operation of :func:`operation`'s bytes, or None."""
    try:
        raw = unpack(op_bytes)
    except Exception:  # noqa: BLE001 - hostile bytes
        return None
    if not (isinstance(raw, list) and len(raw) == 6):
        return None
    client, rid, method, oids, arg, stream = raw
    if not (_nat(client) and _nat(rid) and isinstance(method, str) and isinstance(oids, list)):
        return None
    if not oids or not all(_nat(o) for o in oids) or len(set(oids)) != len(oids):
        return None
    if not _nat(stream):
        return None
    return Operation(client, rid, method, tuple(oids), arg, stream)


class Execution:
    """Object states and per-client replies, advanced one learned slot at a time."""

    def __init__(self, registry: Registry, quota: int | None = None) -> None:
        self.registry = registry
        #: Bytes of object states one client may be charged (None: no quota).
        self.quota = quota
        self.objects: dict[int, Any] = {}
        self.sessions = Sessions()  # (client, stream) -> last request id and reply
        #: oid -> [client, bytes]: who last wrote the object's state, and its size.
        self.owners: dict[int, list[int]] = {}
        #: client -> bytes charged (from ``owners``; not in the snapshot).
        self.usage: dict[int, int] = {}
        self.executed = 0  # the last slot applied; slots start at 1
        #: The operation the last :meth:`apply` ran (None: a no-op, a malformed value or a
        #: request id already run): what the node tells of it beyond the reply (the lease
        #: recalls and lock wake-ups it pushes, ``node/recalls.py``).
        self.ran: Operation | None = None
        #: Every object's versions (``fab/versions.py``: kept beside the snapshot, which
        #: holds only their clock and each object's last changed slot).
        self.versions = Versions()
        #: Object ids per bucket, each chunk's pieces and their digests as last encoded,
        #: and the buckets changed since (:mod:`bftfs.fab.chunks`).
        self._members: list[set[int]] = [set() for _ in range(BUCKETS)]
        self._chunks: list[Pieces] = [EMPTY] * (BUCKETS + 1)
        self._digests: list[tuple[bytes, ...]] = [EMPTY_DIGESTS] * (BUCKETS + 1)
        self._entries: list[bytes] = [EMPTY_ENTRY] * (BUCKETS + 1)  # manifest parts
        self._dirty: set[int] = set()
        #: Buckets encoded so far: a checkpoint re-encodes only the ones that changed.
        self.encodings = 0

    def apply(self, slot: int, value: bytes) -> Reply | None:
        """Apply the value learned at ``slot`` (which must be ``executed + 1``); the reply
        to send its client, or None (no-op, malformed, or an old request id)."""
        if slot != self.executed + 1:
            raise ValueError(f"slot {slot} applied after {self.executed}")
        self.executed = slot
        self.ran = None
        request = parse_request(value)
        if request is None:
            return None
        op = request[0]
        verdict, last = self.sessions.verdict(op.client, op.stream, op.rid)
        if verdict == AGAIN and last is not None:
            return Reply(op.client, last[0], last[1], last[2], last[3], op.stream)
        if verdict == EXPIRED:  # may have run, its reply is gone: never again
            bar = self.sessions.bar(op.client, op.stream)
            return Reply(op.client, op.rid, slot, False, [EXPIRED, bar], op.stream)
        if verdict != RUN:
            return None
        ok, result = self._run(op)
        self.ran = op
        self.sessions.record(op.client, op.stream, op.rid, slot, ok, result)
        return Reply(op.client, op.rid, slot, ok, result, op.stream)

    def _run(self, op: Operation) -> tuple[bool, Any]:
        method = self.registry.get(op.method)
        states = {oid: self.objects.get(oid) for oid in op.oids}
        try:
            if method is not None and method.cls is Class.QUERY:
                return True, self.registry.query(op.method, states, op.arg, op.client)
            new, answer = self.registry.update(op.method, states, op.arg, op.client)
        except MethodRefused as e:
            return False, e.code
        grows = sum(len(s) for s in new.values()) - sum(self._size(oid) for oid in new)
        if self._over(op.client, grows):
            return False, "quota"
        self.versions.executed(self.executed, op.client, op.rid, new, self.objects)
        for oid, state in new.items():
            self._charge(oid, op.client, len(state))
            self.objects[oid] = unpack(state)
            b = bucket_of(oid)
            self._members[b].add(oid)
            self._dirty.add(b)
        return True, answer

    def _size(self, oid: int) -> int:
        owner = self.owners.get(oid)
        if owner is not None:
            return owner[1]
        return 0 if self.objects.get(oid) is None else len(canonical(self.objects[oid]))

    def _over(self, client: int, grows: int) -> bool:
        """The Q/U server's rule (``qu/replica.py``): only growth past the quota is refused,
        so a client over it can still remove and shrink; nodes are never refused."""
        if self.quota is None or grows <= 0 or is_node(client):
            return False
        return self.usage.get(client, 0) + grows > self.quota

    def _charge(self, oid: int, client: int, size: int) -> None:
        owner = self.owners.get(oid)
        if owner is not None:
            left = self.usage.get(owner[0], 0) - owner[1]
            if left > 0:
                self.usage[owner[0]] = left
            else:
                self.usage.pop(owner[0], None)
        self.owners[oid] = [client, size]
        self.usage[client] = self.usage.get(client, 0) + size

    def snapshot(self) -> bytes:
        """The whole state at ``executed`` in one canonical encoding (the snapshot format
        before chunks: tests compare states with it, and a store of that format converts
        through :meth:`install`)."""
        return canonical(
            [
                self.executed,
                self.objects,
                self.sessions.table,
                self.owners,
                self.versions.summary(),
            ]
        )

    def image(self) -> StateImage:
        """The state's chunks at ``executed``: re-encodes the buckets changed since the last
        call and the head, O(changed objects + buckets)."""
        clock = self.versions.clock
        for b in sorted(self._dirty):
            entries = [self._entry(oid) for oid in self._members[b]]
            self._set_chunk(b + 1, cut(encode_bucket(entries)))
            self.encodings += 1
        self._dirty.clear()
        self._set_chunk(0, cut(canonical([self.executed, self.sessions.table, clock])))
        return StateImage.of(self.executed, self._chunks, self._digests, self._entries)

    def _entry(self, oid: int) -> list[Any]:
        """A bucket's entry for ``oid``: its last changed slot with that version's time
        and client (``[slot, time, client]``), or the slot alone where the stamp is not
        known (a state of the format before stamps: its bucket encodes as it did)."""
        state = [self.objects[oid]] if oid in self.objects else []
        slot, stamp = self.versions.changed.get(oid), self.versions.stamps.get(oid)
        changed = slot if slot is None or stamp is None else [slot, *stamp]
        return [oid, state, self.owners.get(oid), changed]

    def _set_chunk(self, i: int, pieces: Pieces) -> None:
        if pieces != self._chunks[i]:
            self._chunks[i] = pieces
            self._digests[i] = tuple(piece_digest(p) for p in pieces)
            self._entries[i] = entry(self._digests[i])

    def digest(self) -> bytes:
        """The root certified for the state at ``executed`` (:mod:`bftfs.fab.chunks`)."""
        return self.image().root

    def pieces(self) -> dict[bytes, bytes]:
        """The pieces of the state as it is now, by digest: a node catching up does not
        fetch those it holds already."""
        image = self.image()
        return dict(zip(image.piece_digests, image.pieces, strict=True))

    def install(self, snapshot: bytes) -> bool:
        """Replace the state by a whole-state snapshot (:meth:`snapshot`'s format or the
        older ones, a store written before chunks); False if malformed."""
        try:
            raw = unpack(snapshot)
            if isinstance(raw, list) and len(raw) == 3:  # written before streams and quota
                raw = _from_per_client(*raw)
            executed, objects, table, owners, *history = raw
            canonical(objects)
        except (CanonicalError, ValueError, TypeError, AttributeError):
            return False
        except Exception:  # noqa: BLE001 - hostile bytes
            return False
        if not self._adopt(executed, objects, table, owners, history[0] if history else None):
            return False
        self._members = [set() for _ in range(BUCKETS)]
        for oid in {*self.objects, *self.owners, *self.versions.summary()[1]}:
            self._members[bucket_of(oid)].add(oid)
        self._chunks = [EMPTY] * (BUCKETS + 1)
        self._digests = [EMPTY_DIGESTS] * (BUCKETS + 1)
        self._entries = [EMPTY_ENTRY] * (BUCKETS + 1)
        self._dirty = {b for b in range(BUCKETS) if self._members[b]}
        return True

    def install_image(self, image: StateImage) -> bool:
        """Replace the state by a chunked one (its root already checked); False if it does
        not decode (a correct node's image always does)."""
        try:
            executed, table, clock = unpack(b"".join(image.chunks[0]))
            objects: dict[int, Any] = {}
            owners: dict[int, Any] = {}
            changed: dict[int, int] = {}
            stamps: dict[int, list[int]] = {}
            members = _decode_buckets(image.chunks[1:], objects, owners, (changed, stamps))
        except Exception:  # noqa: BLE001 - malformed chunks
            return False
        summary = [clock, changed, stamps]
        if members is None or not self._adopt(executed, objects, table, owners, summary):
            return False
        self._members, self._dirty = members, set()
        self._chunks, self._digests = list(image.chunks), list(image.digests)
        self._entries = [entry(d) for d in image.digests]
        return True

    def _adopt(self, executed: Any, objects: Any, table: Any, owners: Any, summary: Any) -> bool:
        """Take a decoded state after checking it (False: malformed, nothing changed)."""
        if not (_nat(executed) and isinstance(objects, dict) and isinstance(owners, dict)):
            return False
        usage: dict[int, int] = {}
        for oid, owner in owners.items():
            if not (_nat(oid) and isinstance(owner, list) and len(owner) == 2):
                return False
            if not (_nat(owner[0]) and _nat(owner[1])):
                return False
            usage[owner[0]] = usage.get(owner[0], 0) + owner[1]
        sessions = Sessions()
        if not sessions.install(table):
            return False
        try:  # (a snapshot of the format before versions has no summary)
            self.versions.installed(summary, objects, self.executed)
        except (ValueError, TypeError):
            return False
        self.executed, self.objects, self.sessions = executed, objects, sessions
        self.owners, self.usage = owners, {c: n for c, n in usage.items() if n > 0}
        return True


def _decode_buckets(
    chunks: Sequence[Pieces],
    objects: dict[int, Any],
    owners: dict[int, Any],
    history: tuple[dict[int, int], dict[int, list[int]]],
) -> list[set[int]] | None:
    """Fill ``objects``, ``owners`` and ``history`` (the versions summary's last changed
    slots and stamps) from bucket chunks; the ids per bucket, or None if an entry is
    malformed or in the wrong bucket or order."""
    changed, stamps = history
    members: list[set[int]] = []
    for b, pieces in enumerate(chunks):
        entries = unpack(b"".join(pieces))
        if not isinstance(entries, list):
            return None
        ids: list[int] = []
        for e in entries:
            if not (isinstance(e, list) and len(e) == 4):
                return None
            oid, state, owner, slot = e
            if not (_nat(oid) and bucket_of(oid) == b and isinstance(state, list)):
                return None
            if len(state) > 1 or (ids and oid <= ids[-1]):
                return None
            ids.append(oid)
            if state:
                objects[oid] = state[0]
            if owner is not None:
                owners[oid] = owner
            if isinstance(slot, list):  # [slot, time, client]
                if not (len(slot) == 3 and all(_nat(x) for x in slot)):
                    return None
                slot, stamps[oid] = slot[0], slot[1:]
            if slot is not None:
                if not _nat(slot):
                    return None
                changed[oid] = slot
        members.append(set(ids))
    return members if len(members) == BUCKETS else None


def _from_per_client(executed: Any, objects: Any, replies: Any) -> list[Any]:
    """A snapshot of the first format (one last reply per client, no charges) in today's:
    each client's last request id becomes its streams' floor (every request not above it
    is expired, none runs twice; mounts' ids are times, far above), and nothing is charged
    until a client writes an object again.  A node upgraded from that format restores its
    own snapshot this way."""
    table = {c: [r[0], {}, {}] for c, r in replies.items()}
    return [executed, objects, table, {}]


def digest_of(snapshot: bytes) -> bytes:
    """The digest of a whole-state snapshot (what checkpoints certified before chunks)."""
    return hashlib.blake2b(snapshot, digest_size=32).digest()
