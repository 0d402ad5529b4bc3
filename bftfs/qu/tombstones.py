"""Tombstones and forgetting at one Q/U server (docs/qu.md "Reclaiming removed objects"
and "Forgetting removed objects"): a finished object (a removed file's, say) shrinks to its
tombstone, its final version alone, once every server's history agrees it is final
(:func:`tombstone_agreed`); a tombstone is forgotten altogether, history and all, once
``forget_seconds`` more have passed.  The node's pruner (``node/qu_pruner.py``) asks the
other servers and runs the steps; each step re-checks its target in the one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import unpack
from bftfs.qu.history import ReplicaHistory, is_initial, newest
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import Timestamp


def tombstone_plan(
    stored: Sequence[tuple[Timestamp, int]],
    final: Timestamp,
    young_ns: int,
    pins: Sequence[int],
) -> list[Timestamp]:
    """Which versions of a finished object go when it shrinks to its tombstone (pure).

    ``stored`` is every stored version as ``(lt, stored_ns)``, oldest first; ``final`` the
    finished version that stays.  Everything else goes, except a version stored within
    the retention window (younger than ``young_ns``) or current at a snapshot moment in
    ``pins`` (the newest stored at or before it), so history reads within the window and
    snapshots read what they read before.
    """
    out = []
    for i, (lt, stored_ns) in enumerate(stored):
        if lt == final or stored_ns > young_ns:
            continue
        after = stored[i + 1][1] if i + 1 < len(stored) else None
        if any(stored_ns <= t and (after is None or after > t) for t in pins):
            continue
        out.append(lt)
    return out


def tombstone_agreed(
    final: Timestamp, histories: Mapping[int, ReplicaHistory], n: int, forgotten: int = 0
) -> bool:
    """Whether every one of the ``n`` servers' histories (culled with this server's key, so
    each is the word of the server it names) has ``final`` as its newest candidate, the
    ``forgotten`` servers aside that hold no history of the object at all (they forgot it
    already, :func:`forget_step`, or lost their disk) (pure).

    Then every correct server accepted the finished candidate: none will ever accept a
    candidate conditioned on an older version (it would not be current there), nor need to
    repair the finished one (inline repair, catch-up), so no correct server asks for the
    versions below it or for the request that made it.  A lying server only speaks for
    itself: claiming the candidate it lacks costs it alone the means to ever accept it.

    The same rule lets a server forget a tombstone: no server then holds anything of the
    object but ``final`` or nothing, so whatever mix of the two a client meets classifies
    to ``final`` or to the initial version, the finished state or none, both "removed" to
    every method (docs/qu.md).
    """
    if len(histories) + forgotten != n:
        return False
    return all(rh and max(c.lt for c in rh) == final for rh in histories.values())


def accepted_final(kv: KV, oid: int) -> tuple[Timestamp, schema.Version, bytes] | None:
    """The newest candidate of this server's history of ``oid`` with its version, if it is
    also the newest stored version and one this server accepted (a method or copy it ran,
    not synced, not a barrier) with a state (returned too): what a tombstone and
    forgetting start from."""
    rh, _ = schema.load_rh(kv, oid)
    if is_initial(rh):
        return None
    final = newest(rh)
    if final.barrier or schema.newest_times(kv, oid, 1) != [final]:
        return None
    v = schema.load_version(kv, oid, final)
    if v is None or not v.accepted or v.state is None or v.kind == schema.BARRIER:
        return None
    return final, v, v.state


def owns_stored_request(kv: KV, oid: int, v: schema.Version) -> bool:
    """Whether the stored request that made ``v`` is still here and ``oid`` owns it (its
    first object)."""
    return (
        bool(v.objects) and v.objects[0] == oid and kv.get(schema.DB_REQ, v.lt.encode()) is not None
    )


def tombstone_target(kv: KV, cfg: ReplicaConfig, oid: int, now_ns: int) -> Timestamp | None:
    """The finished version ``oid`` may shrink to, read from this server's store, or None.

    It must be the newest candidate of this server's history and its newest stored version,
    accepted here (a method or copy this server ran, not synced), with a finished state,
    stored more than ``keep_seconds`` ago, and something must be left to reclaim (an older
    version, or the stored request this object owns).  The caller still needs every
    server's word (:func:`tombstone_agreed`) before :func:`tombstone_step`.
    """
    if cfg.retention.keep_last is None:
        return None
    found = accepted_final(kv, oid)
    if found is None:
        return None
    final, v, state = found
    if v.stored_ns > now_ns - int(cfg.retention.keep_seconds * 1e9):
        return None
    if not cfg.registry.finished(unpack(state)):
        return None
    if schema.oldest_versions(kv, oid, 1) == [(final, v.stored_ns)] and not (
        owns_stored_request(kv, oid, v)
    ):
        return None  # already a tombstone
    return final


def tombstone_step(kv: KV, cfg: ReplicaConfig, oid: int, final: Timestamp, now_ns: int) -> int:
    """Shrink finished ``oid`` to its tombstone, in the caller's one transaction: every
    version but ``final`` (with the stored requests this object owns) and the stored
    request of ``final`` itself if this object owns it.  The replica history, its
    authenticator and the ``final`` version (state, applied table, stored answer) stay, so
    classification, queries, repeated requests and updates conditioned on ``final`` work
    as before.  Re-checks :func:`tombstone_target` first (an update may have come in since
    the servers were asked); how many records it deleted."""
    if tombstone_target(kv, cfg, oid, now_ns) != final:
        return 0
    young_ns = now_ns - int(cfg.retention.keep_seconds * 1e9)
    stored = schema.oldest_versions(kv, oid, 1 << 30)
    going = tombstone_plan(
        stored, final, young_ns, () if stored == [] else cfg.retention.pinned(kv)
    )
    deleted = 0
    for lt in going:
        v = schema.load_version(kv, oid, lt)
        if v is not None:
            schema.delete_version(kv, oid, v)
            deleted += 1
    v = schema.load_version(kv, oid, final)
    if v is not None and v.objects and v.objects[0] == oid:
        deleted += int(schema.delete_request(kv, final))
    schema.delete_thinned_below(kv, oid, young_ns)
    return deleted


# Forgetting tombstones (docs/qu.md "Forgetting removed objects") ------------------------


@dataclass(frozen=True)
class Forget:
    """A tombstone this server may forget: its final version and when (node clock ns)."""

    final: Timestamp
    due_ns: int


def forget_target(kv: KV, cfg: ReplicaConfig, oid: int) -> Forget | None:
    """The tombstone of ``oid`` this server may forget once every server agrees, or None.

    ``oid`` must be a tombstone here: its history's newest candidate is its only stored
    version, a finished state this server accepted (not synced, not a barrier), with no
    stored request of its own left.  It is due ``keep_seconds + forget_seconds`` after the
    version was stored, and never while a snapshot moment at or after it pins it.
    """
    forget = cfg.retention.forget_seconds
    if cfg.retention.keep_last is None or forget is None:
        return None
    found = accepted_final(kv, oid)
    if found is None:
        return None
    final, v, state = found
    if len(schema.oldest_versions(kv, oid, 2)) != 1 or owns_stored_request(kv, oid, v):
        return None
    if not cfg.registry.finished(unpack(state)):
        return None
    if any(t >= v.stored_ns for t in cfg.retention.pinned(kv)):
        return None  # the version current at a snapshot moment
    return Forget(final, v.stored_ns + int((cfg.retention.keep_seconds + forget) * 1e9))


def forget_step(kv: KV, cfg: ReplicaConfig, oid: int, final: Timestamp, now_ns: int) -> int:
    """Forget ``oid`` altogether, in the caller's one transaction: its last version and its
    replica history with the authenticator; re-checks :func:`forget_target` (an update may
    have come in since the servers were asked); how many records it deleted."""
    target = forget_target(kv, cfg, oid)
    if target is None or target.final != final or target.due_ns > now_ns:
        return 0
    v = schema.load_version(kv, oid, final)
    if v is None:
        return 0
    schema.delete_version(kv, oid, v)
    schema.delete_thinned_below(kv, oid)
    schema.mark_forgotten(kv, oid)
    return 1 + int(schema.delete_rh(kv, oid))
