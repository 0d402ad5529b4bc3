"""Version retention at one Q/U server (seed L2630-2634; docs/qu.md decision 9): which
stored versions :class:`bftfs.qu.serverconfig.Retention` lets go, deleted after each
accepted update (:func:`retain`, from ``replica.py`` and ``adoption.py``) and, for versions
kept only for their age, later by the node's pruner (:func:`prune_step`,
``node/qu_pruner.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import unpack
from bftfs.qu.history import ReplicaHistory, is_initial
from bftfs.qu.serverconfig import ReplicaConfig


def retain(
    kv: KV,
    cfg: ReplicaConfig,
    oid: int,
    rh: ReplicaHistory,
    now_ns: int,
    *,
    finished: bool = False,
) -> int:
    """Delete the versions :class:`~bftfs.qu.serverconfig.Retention` lets go, oldest first,
    stopping at the first one it keeps (versions are stored in logical-time order, which is
    also, near enough, the order they were stored in), so an update costs ``O(k)`` plus what
    it deletes.  ``finished``: the object's newest state is finished (keep one version)."""
    keep = cfg.retention.keep_last
    if keep is None:
        return 0
    if finished:
        keep = 1
    floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
    newest = schema.newest_times(kv, oid, keep)
    if len(newest) < keep:
        return 0
    floor = min(floor, newest[-1])
    young_ns = now_ns - int(cfg.retention.keep_seconds * 1e9)
    deleted = 0
    pins: Sequence[int] | None = None
    while True:
        two = schema.oldest_versions(kv, oid, 2)
        if not two:
            break
        lt, stored_ns = two[0]
        if lt >= floor or stored_ns > young_ns:
            break
        if cfg.retention.pins is not None:
            if pins is None:
                pins = cfg.retention.pins(kv)  # read only when something would go
            after = two[1][1] if len(two) > 1 else None
            if any(stored_ns <= t and (after is None or after > t) for t in pins):
                break  # the version current at a snapshot
        v = schema.load_version(kv, oid, lt)
        if v is None:
            break
        schema.delete_version(kv, oid, v)
        deleted += 1
    return deleted


def prune_step(kv: KV, cfg: ReplicaConfig, oid: int, now_ns: int) -> int:
    """Delete the versions of ``oid`` :class:`Retention` lets go now (versions kept for
    their age go once old, even if the object is never updated again: a removed file's,
    which keeps only its newest version once its state is finished); how many were
    deleted.  Only here is the newest state looked at (an update does not pay for it)."""
    rh, _auth = schema.load_rh(kv, oid)
    if is_initial(rh):
        return 0
    finished = False
    latest = schema.newest_times(kv, oid, 1)
    if latest:
        v = schema.load_version(kv, oid, latest[0])
        finished = v is not None and v.state is not None and cfg.registry.finished(unpack(v.state))
    return retain(kv, cfg, oid, rh, now_ns, finished=finished)
