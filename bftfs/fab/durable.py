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
(learned ``[pn, value]``), ``r`` (``[regency, proof]``), ``c`` (``[stable, digest,
certificate]``), ``s`` (``[seq, snapshot]``: the state at the latest stable checkpoint this
node holds).  Slots are 8 bytes big-endian.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bftfs.fab.messages import MalformedMessage, Signed, statements_in, statements_out
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
    regency: int = 0
    proof: tuple[Signed, ...] = ()
    stable: int = 0
    digest: bytes = b""
    certificate: tuple[Signed, ...] = ()
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

    def __init__(self, replica: Any) -> None:
        """``replica``: a :class:`bftfs.fab.replica.Replica` (already restored, if it was)."""
        self.replica = replica
        self.forget()

    def forget(self) -> None:
        """The last changes were not written: the next call returns everything."""
        self._accepted: dict[int, tuple[int, bytes]] = {}
        self._learned: dict[int, tuple[int, bytes]] = {}
        self._regency = -1
        self._stable = -1
        self._snapshot = -1

    def changes(self) -> list[Change]:
        """What changed since the last call; the caller must write all of it."""
        r = self.replica
        out: list[Change] = []
        _diff(b"a", self._accepted, r.acceptor.accepted, out)
        _diff(b"l", self._learned, r.learner.learned, out)
        self._accepted, self._learned = dict(r.acceptor.accepted), dict(r.learner.learned)
        el, cp = r.election, r.checkpoints
        if el.regency != self._regency:
            out.append((b"r", canonical([el.regency, statements_out(el.proof)])))
            self._regency = el.regency
        if cp.stable != self._stable:
            out.append((b"c", canonical([cp.stable, cp.digest, statements_out(cp.certificate)])))
            self._stable = cp.stable
        snapshot = r.transfer.snapshots.get(cp.stable)
        if snapshot is not None and cp.stable != self._snapshot:
            out.append((b"s", canonical([cp.stable, snapshot])))
            self._snapshot = cp.stable
        return out


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
        regency, proof = unpack(kv.get(DB, b"r") or b"")
        image.regency, image.proof = regency, statements_in(proof)
        stored = kv.get(DB, b"c")
        if stored is not None:
            stable, digest, certificate = unpack(stored)
            image.stable, image.digest = stable, digest
            image.certificate = statements_in(certificate)
        stored = kv.get(DB, b"s")
        if stored is not None:
            seq, snapshot = unpack(stored)
            image.snapshot = (seq, snapshot)
    except (MalformedMessage, ValueError, TypeError) as e:
        raise ValueError(f"the stored FaB state does not parse: {e}") from e
    return image
