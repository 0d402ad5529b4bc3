"""When one Q/U server's retention duties come due, per object: versions to prune
(:func:`bftfs.qu.retention.prune_step`), a tombstone to shrink to or one to forget
(``tombstones.py``).  The node's pruner (``node/qu_pruner.py``) keeps them in a queue in
memory, filled by :func:`sweep_candidates` and refreshed by :func:`pending_due`.
"""

from __future__ import annotations

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.tombstones import forget_target, tombstone_target

#: A moment after every version's retention (tombstone_target then ignores the age).
_NEVER_NS = 1 << 62


def sweep_candidates(
    kv: KV, cfg: ReplicaConfig, after: int | None, limit: int, now_ns: int
) -> tuple[list[tuple[int, int]], int | None]:
    """Up to ``limit`` objects with id above ``after`` (the sweep of node/qu_pruner.py),
    each with when it has something to do (node clock ns, ``now_ns`` or later): versions
    to prune (more stored than ``keep_last``, due when the oldest is older than
    ``keep_seconds``), a tombstone to shrink to or one to forget; and where the next page
    starts (None: the last page).

    Duties not due yet are listed too: the pruner's queue lives in memory, so after a
    restart inside the retention window only this sweep can bring them back (issue 31
    item 14: a file removed just before a restart was otherwise kept until the next
    hourly sweep)."""
    keep = cfg.retention.keep_last
    if keep is None or after == schema.MAX_OID:
        return [], None
    start = schema.oid_key(0 if after is None else after + 1)
    out: list[tuple[int, int]] = []
    last: int | None = None
    for seen, (key, _) in enumerate(kv.scan(schema.DB_RH, start, schema.OID_END)):
        if seen >= limit:
            return out, last
        oid = last = int.from_bytes(bytes(key), "big")
        due = pending_due(kv, cfg, oid)
        if due is not None:
            out.append((oid, max(due, now_ns)))
    return out, None


def pending_due(kv: KV, cfg: ReplicaConfig, oid: int, after_ns: int | None = None) -> int | None:
    """When the earliest of ``oid``'s pending retention duties (prune, shrink to a
    tombstone, forget) comes due (node clock ns, possibly past), or None if it has none;
    with ``after_ns``, the earliest due after that moment (what a look at ``after_ns``
    leaves for later)."""
    keep = cfg.retention.keep_last
    if keep is None:
        return None
    keep_ns = int(cfg.retention.keep_seconds * 1e9) + 1
    dues: list[int] = []
    stored = schema.oldest_versions(kv, oid, keep + 1)
    if len(stored) > keep:
        dues.append(stored[0][1] + keep_ns)
    final = tombstone_target(kv, cfg, oid, _NEVER_NS)  # whatever its age
    if final is not None:
        v = schema.load_version(kv, oid, final)
        if v is not None:
            dues.append(v.stored_ns + keep_ns)
    forget = forget_target(kv, cfg, oid)
    if forget is not None:
        dues.append(forget.due_ns)
    return min((d for d in dues if after_ns is None or d > after_ns), default=None)
