"""FaB Paxos wire messages: one frozen dataclass per message, one parse-error family.

Every message is the canonical msgpack list ``[VERSION, kind, field...]``
(:mod:`bftfs.qu.canon`).  ``decode`` checks the version, the kind and every field's type
and bound, so the cores only ever see well-formed values; anything else raises
:class:`MalformedMessage` with a reason, which the replica turns into a rejection.

Layout (``slot``, ``pn``, ``seq`` non-negative ints; ``value`` bytes; ``Signed`` is
``[signer, body, [mac...]]``, a statement with one MAC per node, :mod:`bftfs.fab.auth`):

======  ============  ======================================================  ==========
kind    class         fields                                                  seed
======  ============  ======================================================  ==========
1       Request       value (a client's operation with its authenticator)     L5379
2       Propose       pn, slot, value                                         Fig 6.8 118
3       Accepted      pn, slot, value [, Signed ``["accepted", pn, slot,     Fig 6.8 127
                      H(value)]``: with commit proofs, one message to         Fig 6.9 236
                      learners and acceptors]                                 and 238
4       Pull          slot                                                    Fig 6.6 34
5       Learned       slot, pn, value                                         Fig 6.6 38
6       Suspect       Signed ``["suspect", regency]``                         Fig 6.7 8
7       Query         pn, proof (Signed suspicions)                           Fig 6.8 107
8       Rep           Signed ``["rep", pn, low, [[slot, value]...]]``,        Fig 6.8 117
                      low certificate (Signed checkpoints)
9       NewView       pn, proof, low, low certificate, reps (list of Rep)     Fig 6.8 111
10      Checkpoint    Signed ``["checkpoint", seq, digest]``                  L5904
11      Reply         client, rid, slot, ok, result, stream                   L5829
12      Fetch         seq, index (a lagging node asks for a piece of the       L7640
                      stable state: 0 its manifest, i its i-th piece)
13      Snapshot      seq, index, data (the manifest or a piece, checked      L7640
                      against the certified root or the manifest's digest)
14      CommitProof   slot, pn, value, statements (``commit`` signed          Fig 6.9 245
                      ACCEPTED of ``value`` at ``pn``; Parameterized FaB)
======  ============  ======================================================  ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bftfs.fab.chunks import PIECE
from bftfs.qu.canon import CanonicalError, canonical, unpack

#: Wire version of FaB messages; a message of another version is refused.  2: a client's
#: operation and its reply name the client's stream (``fab/sessions.py``).  3: state
#: transfer by pieces (``FETCH``/``SNAPSHOT`` name a piece, ``fab/chunks.py``).
VERSION = 3
#: Bounds a Byzantine sender cannot exceed (a value is one client operation).
MAX_VALUE = 256 * 1024
MAX_INT = 2**63 - 1
MAX_LIST = 4096
#: A piece of state (or a manifest) in one ``SNAPSHOT``.
MAX_PIECE = PIECE


class MalformedMessage(ValueError):
    """A message that does not parse; ``reason`` says why."""


@dataclass(frozen=True)
class Signed:
    """A statement ``body`` (canonical bytes) by ``signer``, with one MAC per node (an
    authenticator, :mod:`bftfs.fab.auth`): verifiable by every node, forwardable by any."""

    signer: int
    body: bytes
    macs: tuple[bytes, ...]


@dataclass(frozen=True)
class Request:
    value: bytes


@dataclass(frozen=True)
class Propose:
    pn: int
    slot: int
    value: bytes


@dataclass(frozen=True)
class Accepted:
    pn: int
    slot: int
    value: bytes
    #: Parameterized FaB (``FabQuorums.commits``): the acceptor's statement of accepting,
    #: ``certificates.accepted_body``, which other acceptors gather into a commit proof
    #: (Fig. 6.9 line 238).  None in plain FaB: the message is what it was.
    statement: Signed | None = None


@dataclass(frozen=True)
class CommitProof:
    """``commit`` statements of acceptors accepting ``value`` at ``pn`` for ``slot``
    (Fig. 6.9 lines 242-245, ``valid`` at line 284); also an entry of a REP."""

    slot: int
    pn: int
    value: bytes
    statements: tuple[Signed, ...]


@dataclass(frozen=True)
class Pull:
    slot: int


@dataclass(frozen=True)
class Learned:
    slot: int
    pn: int
    value: bytes


@dataclass(frozen=True)
class Suspect:
    statement: Signed


@dataclass(frozen=True)
class Query:
    pn: int
    proof: tuple[Signed, ...]


@dataclass(frozen=True)
class Rep:
    statement: Signed
    low_certificate: tuple[Signed, ...]


@dataclass(frozen=True)
class NewView:
    pn: int
    proof: tuple[Signed, ...]
    low: int
    low_certificate: tuple[Signed, ...]
    reps: tuple[Rep, ...]


@dataclass(frozen=True)
class Checkpoint:
    statement: Signed


@dataclass(frozen=True)
class Reply:
    client: int
    rid: int
    slot: int
    ok: bool
    result: Any
    #: The client's stream (one per mount, ``fab/sessions.py``) the request came on.
    stream: int = 0


@dataclass(frozen=True)
class Fetch:
    seq: int
    index: int = 0  # 0: the manifest; i: the i-th piece (fab/chunks.py)


@dataclass(frozen=True)
class Snapshot:
    seq: int
    index: int
    data: bytes


Message = (
    Request
    | Propose
    | Accepted
    | Pull
    | Learned
    | Suspect
    | Query
    | Rep
    | NewView
    | Checkpoint
    | Reply
    | Fetch
    | Snapshot
    | CommitProof
)

_KINDS: dict[type, int] = {
    Request: 1,
    Propose: 2,
    Accepted: 3,
    Pull: 4,
    Learned: 5,
    Suspect: 6,
    Query: 7,
    Rep: 8,
    NewView: 9,
    Checkpoint: 10,
    Reply: 11,
    Fetch: 12,
    Snapshot: 13,
    CommitProof: 14,
}


def _signed_out(s: Signed) -> list[Any]:
    return [s.signer, s.body, list(s.macs)]


def _rep_out(r: Rep) -> list[Any]:
    return [_signed_out(r.statement), [_signed_out(s) for s in r.low_certificate]]


def _fields_out(m: Message) -> list[Any]:
    if isinstance(m, Request):
        return [m.value]
    if isinstance(m, Accepted) and m.statement is not None:
        return [m.pn, m.slot, m.value, _signed_out(m.statement)]
    if isinstance(m, Propose | Accepted):
        return [m.pn, m.slot, m.value]
    if isinstance(m, CommitProof):
        return commit_proof_out(m)
    if isinstance(m, Pull):
        return [m.slot]
    if isinstance(m, Fetch):
        return [m.seq, m.index]
    if isinstance(m, Snapshot):
        return [m.seq, m.index, m.data]
    if isinstance(m, Learned):
        return [m.slot, m.pn, m.value]
    if isinstance(m, Suspect | Checkpoint):
        return [_signed_out(m.statement)]
    if isinstance(m, Query):
        return [m.pn, [_signed_out(s) for s in m.proof]]
    if isinstance(m, Rep):
        return _rep_out(m)
    if isinstance(m, NewView):
        return [
            m.pn,
            [_signed_out(s) for s in m.proof],
            m.low,
            [_signed_out(s) for s in m.low_certificate],
            [_rep_out(r) for r in m.reps],
        ]
    return [m.client, m.rid, m.slot, m.ok, m.result, m.stream]


def commit_proof_out(m: CommitProof) -> list[Any]:
    """A commit proof as plain values (the message's fields, and a REP's entry)."""
    return [m.slot, m.pn, m.value, [_signed_out(s) for s in m.statements]]


def commit_proof_in(x: Any) -> CommitProof:
    """The commit proof :func:`commit_proof_out` wrote.

    Raises:
        MalformedMessage: not one.
    """
    slot, pn, value, statements = _list(x, "commit proof", 4)
    return CommitProof(
        _int(slot, "slot"), _int(pn, "pn"), _bytes(value, "value"), _signeds(statements, "proof")
    )


def encode(m: Message) -> bytes:
    """The message's wire bytes."""
    return canonical([VERSION, _KINDS[type(m)], *_fields_out(m)])


def _int(x: Any, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_INT:
        raise MalformedMessage(f"{what} must be a non-negative integer")
    return x


def _bytes(x: Any, what: str, limit: int = MAX_VALUE) -> bytes:
    if not isinstance(x, bytes) or len(x) > limit:
        raise MalformedMessage(f"{what} must be at most {limit} bytes")
    return x


def _list(x: Any, what: str, size: int | None = None) -> list[Any]:
    if not isinstance(x, list) or len(x) > MAX_LIST:
        raise MalformedMessage(f"{what} must be a list of at most {MAX_LIST}")
    if size is not None and len(x) != size:
        raise MalformedMessage(f"{what} must have {size} elements")
    return x


def _signed(x: Any, what: str) -> Signed:
    signer, body, macs = _list(x, what, 3)
    return Signed(
        _int(signer, f"{what} signer"),
        _bytes(body, f"{what} body"),
        tuple(_bytes(t, f"{what} mac", 64) for t in _list(macs, f"{what} macs")),
    )


def _signeds(x: Any, what: str) -> tuple[Signed, ...]:
    return tuple(_signed(s, what) for s in _list(x, what))


def _rep(x: Any) -> Rep:
    statement, certificate = _list(x, "rep", 2)
    return Rep(_signed(statement, "rep"), _signeds(certificate, "rep low certificate"))


def _parse(kind: int, f: list[Any]) -> Message:
    if kind == 1 and len(f) == 1:
        return Request(_bytes(f[0], "value"))
    if kind in (2, 3) and len(f) == 3:
        cls = Propose if kind == 2 else Accepted
        return cls(_int(f[0], "pn"), _int(f[1], "slot"), _bytes(f[2], "value"))
    if kind == 3 and len(f) == 4:
        pn, slot, value = _int(f[0], "pn"), _int(f[1], "slot"), _bytes(f[2], "value")
        return Accepted(pn, slot, value, _signed(f[3], "accepted statement"))
    if kind == 4 and len(f) == 1:
        return Pull(_int(f[0], "slot"))
    if kind == 5 and len(f) == 3:
        return Learned(_int(f[0], "slot"), _int(f[1], "pn"), _bytes(f[2], "value"))
    if kind == 6 and len(f) == 1:
        return Suspect(_signed(f[0], "suspicion"))
    if kind == 7 and len(f) == 2:
        return Query(_int(f[0], "pn"), _signeds(f[1], "proof"))
    if kind == 8 and len(f) == 2:
        return _rep(f)
    if kind == 9 and len(f) == 5:
        return NewView(
            _int(f[0], "pn"),
            _signeds(f[1], "proof"),
            _int(f[2], "low"),
            _signeds(f[3], "low certificate"),
            tuple(_rep(r) for r in _list(f[4], "reps")),
        )
    if kind == 10 and len(f) == 1:
        return Checkpoint(_signed(f[0], "checkpoint"))
    if kind == 11 and len(f) == 6:
        if not isinstance(f[3], bool):
            raise MalformedMessage("ok must be a boolean")
        client, rid, slot = _int(f[0], "client"), _int(f[1], "rid"), _int(f[2], "slot")
        return Reply(client, rid, slot, f[3], f[4], _int(f[5], "stream"))
    if kind == 12 and len(f) == 2:
        return Fetch(_int(f[0], "seq"), _int(f[1], "index"))
    if kind == 13 and len(f) == 3:
        return Snapshot(_int(f[0], "seq"), _int(f[1], "index"), _bytes(f[2], "data", MAX_PIECE))
    if kind == 14:
        return commit_proof_in(f)
    raise MalformedMessage(f"unknown kind {kind!r} or wrong number of fields ({len(f)})")


def decode(data: bytes) -> Message:
    """Parse wire bytes.

    Raises:
        MalformedMessage: not msgpack, another version, unknown kind, a field of the wrong
            type or out of bounds.
    """
    try:
        raw = unpack(data)
    except (CanonicalError, ValueError, TypeError) as e:
        raise MalformedMessage(f"not a message: {type(e).__name__}") from e
    except Exception as e:  # noqa: BLE001 - msgpack raises many types on hostile input
        raise MalformedMessage(f"not a message: {type(e).__name__}") from e
    if not isinstance(raw, list) or len(raw) < 2:
        raise MalformedMessage("a message is a list [version, kind, ...]")
    if raw[0] != VERSION:
        raise MalformedMessage(f"version {raw[0]!r}, expected {VERSION}")
    try:
        return _parse(raw[1], raw[2:])
    except MalformedMessage:
        raise
    except (ValueError, TypeError) as e:  # unpacking a list of the wrong length
        raise MalformedMessage(f"malformed fields: {e}") from e


def statements_out(statements: tuple[Signed, ...]) -> list[Any]:
    """Statements as plain values (what :func:`statements_in` reads back): a node keeps its
    election proof and checkpoint certificate across a restart (:mod:`bftfs.fab.durable`)."""
    return [_signed_out(s) for s in statements]


def statements_in(x: Any) -> tuple[Signed, ...]:
    """The statements :func:`statements_out` wrote.

    Raises:
        MalformedMessage: not such a list.
    """
    return _signeds(x, "statements")
