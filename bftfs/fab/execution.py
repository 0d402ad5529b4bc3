"""Deterministic execution of the learned sequence (seed 003 section 6.3, L5308-5350).

Agreement orders opaque values; this module gives them meaning.  A value is a client's
request ``[op, [mac...]]`` (:func:`request_value`): the operation
``[client, rid, method, [oid...], arg]`` (:func:`operation`) with the client's
authenticator, one MAC per node, which acceptors check before accepting it (so a leader
cannot make up a client's operation, L5379-5385); or the no-op a new leader proposes into
a free slot.  Slots are applied strictly in order to the object
states with the same :class:`bftfs.qu.objects.Registry` methods Q/U runs, so the file
system's methods (``bftfs.fsobjects``) are ordered by FaB unchanged.

Exactly once (L5829-5870): each client's last request id and reply are kept; a request
with an id not above the last one is not run again (the equal one gets the cached reply).
A malformed value, an unknown method or a method's refusal are deterministic outcomes
(``ok`` false with a code), the same on every correct node, never an exception.

Checkpoints (L5896-5933): the state (objects, last replies, last slot, what the versions
kept beside it need, ``fab/versions.py``) has one canonical encoding,
:meth:`Execution.snapshot`; its digest is what nodes certify, and a node that fell behind a
stable checkpoint installs a snapshot whose digest matches the certificate.

Agreement and execution run on the same nodes in this step (every node is acceptor,
proposer and learner and executes): the seed's separate 2g+1 execution cluster pays off
when execution is costly or confidential (L5344-5350); it is not built here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bftfs.fab.messages import Reply, Signed
from bftfs.fab.versions import Versions
from bftfs.qu.canon import CanonicalError, canonical, unpack
from bftfs.qu.objects import Class, MethodRefused, Registry

NOOP = canonical(["noop"])


def operation(client: int, rid: int, method: str, oids: list[int], arg: Any) -> bytes:
    """The value a client's request is ordered as."""
    return canonical([client, rid, method, list(oids), arg])


@dataclass(frozen=True)
class Operation:
    client: int
    rid: int
    method: str
    oids: tuple[int, ...]
    arg: Any


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
    if not (isinstance(raw, list) and len(raw) == 5):
        return None
    client, rid, method, oids, arg = raw
    if not (_nat(client) and _nat(rid) and isinstance(method, str) and isinstance(oids, list)):
        return None
    if not oids or not all(_nat(o) for o in oids) or len(set(oids)) != len(oids):
        return None
    return Operation(client, rid, method, tuple(oids), arg)


class Execution:
    """Object states and per-client replies, advanced one learned slot at a time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.objects: dict[int, Any] = {}
        self.replies: dict[int, list[Any]] = {}  # client -> [rid, slot, ok, result]
        self.executed = 0  # the last slot applied; slots start at 1
        #: The operation the last :meth:`apply` ran (None: a no-op, a malformed value or a
        #: request id already run): what the node tells of it beyond the reply (the lease
        #: recalls and lock wake-ups it pushes, ``node/recalls.py``).
        self.ran: Operation | None = None
        #: Every object's versions (``fab/versions.py``: kept beside the snapshot, which
        #: holds only their clock and each object's last changed slot).
        self.versions = Versions()

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
        last = self.replies.get(op.client)
        if last is not None and op.rid <= last[0]:
            if op.rid == last[0]:
                return Reply(op.client, last[0], last[1], last[2], last[3])
            return None
        ok, result = self._run(op)
        self.ran = op
        self.replies[op.client] = [op.rid, slot, ok, result]
        return Reply(op.client, op.rid, slot, ok, result)

    def _run(self, op: Operation) -> tuple[bool, Any]:
        method = self.registry.get(op.method)
        states = {oid: self.objects.get(oid) for oid in op.oids}
        try:
            if method is not None and method.cls is Class.QUERY:
                return True, self.registry.query(op.method, states, op.arg, op.client)
            new, answer = self.registry.update(op.method, states, op.arg, op.client)
        except MethodRefused as e:
            return False, e.code
        self.versions.executed(self.executed, op.client, op.rid, new, self.objects)
        for oid, state in new.items():
            self.objects[oid] = unpack(state)
        return True, answer

    def snapshot(self) -> bytes:
        """The canonical encoding of the whole state at ``executed``."""
        return canonical([self.executed, self.objects, self.replies, self.versions.summary()])

    def digest(self) -> bytes:
        return hashlib.blake2b(self.snapshot(), digest_size=32).digest()

    def install(self, snapshot: bytes) -> bool:
        """Replace the state by a snapshot (its digest already checked); False if malformed."""
        try:
            executed, objects, replies, *history = unpack(snapshot)
            canonical(objects)
        except (CanonicalError, ValueError, TypeError):
            return False
        except Exception:  # noqa: BLE001 - hostile bytes
            return False
        if not (_nat(executed) and isinstance(objects, dict) and isinstance(replies, dict)):
            return False
        try:  # (a snapshot of the format before versions has no summary)
            self.versions.installed(history[0] if history else None, objects, self.executed)
        except (ValueError, TypeError):
            return False
        self.executed, self.objects, self.replies = executed, objects, replies
        return True


def digest_of(snapshot: bytes) -> bytes:
    """The digest :meth:`Execution.digest` gives for ``snapshot``."""
    return hashlib.blake2b(snapshot, digest_size=32).digest()
