"""What a FaB replica keeps across a restart, as changes to a key-value store.

The seed's rejoin (L7640-7675): a restarted *acceptor* must not accept again in the
instances it may have voted in, so what it accepted (slot, proposal number, value) and its
regency with the proof of it are written before any ACCEPTED that depends on them is
sent; a restarted *learner* rejoins from its last stable checkpoint (its own snapshot of
the state there, with the certificate that made it stable) and the slots it had learned
above it, which it executes again.  What it missed meanwhile it learns as any lagging node
does: PULL, or FETCH of a snapshot whose digest the certificate names.

:class:`Durable` compares the replica with what it last wrote and returns only the
changes (a window of at most ``window`` slots each for the acceptor and the learner, so a
step costs O(window) comparisons by identity, and a write of what changed).  The driver
(``bftfs/node/fab_server.py``) writes them in one transaction and sends the step's
messages only once it committed.  Pure: no I/O but the :class:`bftfs.kv.KV` it is given.

Keys of the database ``fab``: ``a`` + slot (accepted ``[pn, value]``), ``l`` + slot
(learned ``[pn, value]``), ``k`` + slot (Parameterized FaB: the acceptor's commit proof,
``[slot, pn, value, statements]``, written before its COMMITPROOF is sent: a correct
acceptor that had one reports it in every later REP, Lemma 48), ``r`` (``[regency,
proof]``), ``c`` (``[stable, digest, certificate]``), and the state at the latest stable
checkpoint this node holds, in pieces (:mod:`bftfs.fab.chunks`): ``m`` (``[seq,
manifest]``) and ``p`` + digest (a piece, 32 bytes of digest). A new stable checkpoint
writes only the pieces the stored manifest lacks and deletes those it no longer lists, in
the same transaction as ``m``, so a node killed mid-write finds the old checkpoint or the
new one, whole. Slots are 8 bytes big-endian. A store of the format before chunks holds
``s`` (``[seq, snapshot]``, one blob): it is read, and replaced by pieces at the first
write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bftfs.fab.chunks import StateImage, assemble, parse_manifest
from bftfs.fab.messages import (
    CommitProof,
    MalformedMessage,
    Signed,
    commit_proof_in,
    commit_proof_out,
    statements_in,
    statements_out,
)
from bftfs.kv import KV
from bftfs.qu.canon import canonical, unpack

DB = "fab"
#: A change: the key and its new value (None: delete it).
Change = tuple[bytes, bytes | None]


@dataclass
class Image:
    """What :func:`load` found: the parts of a replica a restart restores."""

    accepted: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    learned: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    proofs: dict[int, CommitProof] = field(default_factory=dict)
    regency: int = 0
    proof: tuple[Signed, ...] = ()
    stable: int = 0
    digest: bytes = b""
    certificate: tuple[Signed, ...] = ()
    #: The stable state in pieces; or, in a store written before chunks, one blob.
    state: StateImage | None = None
    snapshot: tuple[int, bytes] | None = None


def _slot_key(prefix: bytes, slot: int) -> bytes:
    return prefix + slot.to_bytes(8, "big")


def _diff(
    prefix: bytes,
    old: dict[int, tuple[int, bytes]],
    new: dict[int, tuple[int, bytes]],
    out: list[Change],
) -> None:
    for slot, pv in new.items():
        if old.get(slot) != pv:
            out.append((_slot_key(prefix, slot), canonical([pv[0], pv[1]])))
    out.extend((_slot_key(prefix, s), None) for s in old if s not in new)


class Durable:
    """The changes of one replica since the last call (the first call: everything)."""

    def __init__(self, replica: Any, stored: Image | None = None) -> None:
        """``replica``: a :class:`bftfs.fab.replica.Replica` (already restored, if it was)
        from ``stored``, whose pieces are not written again."""
        self.replica = replica
        #: Bytes of pieces and manifests written (a checkpoint's cost, the benchmark's).
        self.state_bytes = 0
        held = set() if stored is None or stored.state is None else stored.state.piece_digests
        #: Digests of the pieces the store may hold if the last write failed.
        self._before: set[bytes] = set(held)
        #: Digests of the pieces the store may hold, and of those it surely holds.
        self._may_hold: set[bytes] = set(held)
        self._holds: set[bytes] = set(held)
        self.forget()
        self._holds = set(held)  # read from the store just now

    def forget(self) -> None:
        """The last changes were not written: the next call returns everything."""
        self._accepted: dict[int, tuple[int, bytes]] = {}
        self._learned: dict[int, tuple[int, bytes]] = {}
        self._proofs: dict[int, CommitProof] = {}
        self._regency = -1
        self._stable = -1
        self._snapshot = -1
        self._may_hold = set(self._before)
        self._holds = set()

    def changes(self) -> list[Change]:
        """What changed since the last call; the caller must write all of it."""
        r = self.replica
        out: list[Change] = []
        _diff(b"a", self._accepted, r.acceptor.accepted, out)
        _diff(b"l", self._learned, r.learner.learned, out)
        self._accepted, self._learned = dict(r.acceptor.accepted), dict(r.learner.learned)
        proofs = {} if r.acceptor.commits is None else r.acceptor.commits.proofs
        for slot, proof in proofs.items():
            if self._proofs.get(slot) is not proof:
                out.append((_slot_key(b"k", slot), canonical(commit_proof_out(proof))))
        out.extend((_slot_key(b"k", s), None) for s in self._proofs if s not in proofs)
        self._proofs = dict(proofs)
        el, cp = r.election, r.checkpoints
        if el.regency != self._regency:
            out.append((b"r", canonical([el.regency, statements_out(el.proof)])))
            self._regency = el.regency
        if cp.stable != self._stable:
            out.append((b"c", canonical([cp.stable, cp.digest, statements_out(cp.certificate)])))
            self._stable = cp.stable
        image = r.transfer.snapshots.get(cp.stable)
        if image is not None and cp.stable != self._snapshot:
            self._state(image, out)
        return out

    def _state(self, image: StateImage, out: list[Change]) -> None:
        """The pieces of ``image`` the store lacks, the deletion of those it no longer
        needs, and its manifest."""
        keep = dict(zip(image.piece_digests, image.pieces, strict=True))
        for d, piece in keep.items():
            if d not in self._holds:
                out.append((b"p" + d, piece))
                self.state_bytes += len(piece)
        out.extend((b"p" + d, None) for d in sorted(self._may_hold - keep.keys()))
        out.append((b"m", canonical([image.seq, image.manifest])))
        self.state_bytes += len(image.manifest)
        if self._snapshot == -1:
            out.append((b"s", None))  # the one blob of a store written before chunks
        self._before = self._may_hold | keep.keys()  # if this write fails
        self._may_hold, self._holds = set(keep), set(keep)
        self._snapshot = image.seq


def write(kv: KV, changes: list[Change]) -> None:
    """Apply ``changes`` in the transaction ``kv``."""
    for key, value in changes:
        if value is None:
            kv.delete(DB, key)
        else:
            kv.put(DB, key, value)


def _slots(kv: KV, prefix: bytes) -> dict[int, tuple[int, bytes]]:
    out = {}
    for key, value in kv.scan(DB, prefix, prefix + b"\xff" * 9):
        pn, v = unpack(value)
        out[int.from_bytes(key[1:], "big")] = (pn, v)
    return out


def load(kv: KV) -> Image | None:
    """What a previous run of this node wrote, or None (a fresh node).

    Raises:
        ValueError: the stored state does not parse (a damaged store: refuse to start
            rather than accept in instances this node may have voted in).
    """
    if kv.get(DB, b"r") is None:
        return None
    try:
        image = Image(accepted=_slots(kv, b"a"), learned=_slots(kv, b"l"))
        for _, value in kv.scan(DB, b"k", b"k" + b"\xff" * 9):
            proof = commit_proof_in(unpack(value))
            image.proofs[proof.slot] = proof
        regency, proof = unpack(kv.get(DB, b"r") or b"")
        image.regency, image.proof = regency, statements_in(proof)
        stored = kv.get(DB, b"c")
        if stored is not None:
            stable, digest, certificate = unpack(stored)
            image.stable, image.digest = stable, digest
            image.certificate = statements_in(certificate)
        image.state = _state(kv)
        stored = kv.get(DB, b"s")
        if stored is not None and image.state is None:
            seq, snapshot = unpack(stored)
            image.snapshot = (seq, snapshot)
    except (MalformedMessage, ValueError, TypeError) as e:
        raise ValueError(f"the stored FaB state does not parse: {e}") from e
    return image


def _state(kv: KV) -> StateImage | None:
    """The stored stable state in pieces (None: none stored).

    Raises:
        ValueError: a manifest that does not parse, a piece missing or damaged.
    """
    stored = kv.get(DB, b"m")
    if stored is None:
        return None
    seq, manifest = unpack(stored)
    digests = parse_manifest(manifest) if isinstance(manifest, bytes) else None
    if digests is None or not isinstance(seq, int):
        raise ValueError("the stored manifest is not one")
    pieces = [kv.get(DB, b"p" + d) for chunk in digests for d in chunk]
    state = None if None in pieces else assemble(seq, digests, [p or b"" for p in pieces])
    if state is None:
        raise ValueError(f"a piece of the stored state {seq} is missing or damaged")
    return state
