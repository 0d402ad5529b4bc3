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


#: Versions in a row found without a stored request after which
#: :func:`drop_requests` stops (older ones lost theirs at an earlier look; a version
#: obtained by object sync never had one here).
MAX_MISSES = 8


def drop_requests(kv: KV, cfg: ReplicaConfig, oid: int, now_ns: int) -> int:
    """Delete the stored requests of ``oid``'s versions older than ``request_seconds`` and
    below every candidate of its replica history and their conditioned-on versions (what
    repair and link proofs may still fetch, as :func:`retain` keeps), newest first until
    :data:`MAX_MISSES` in a row are gone already; how many it deleted.

    History keeps Q/U versions to its horizon (days), but a version's request, about 2.4 KB
    of its 3, only serves inline repair and link proofs, which ask within ``keep_seconds``:
    kept as long as the version, requests were three quarters of a week's Q/U history
    (docs/history.md).  A request belongs to its first object (:func:`schema.delete_version`
    deletes it with that object's version), so only that object's look drops it."""
    secs = cfg.retention.request_seconds
    if secs is None:
        return 0
    rh, _auth = schema.load_rh(kv, oid)
    if is_initial(rh):
        return 0
    floor = min(min(c.lt, c.lt_co) if c.lt_co is not None else c.lt for c in rh)
    old_ns = now_ns - int(secs * 1e9)
    dropped = misses = 0
    for lt, stored_ns, first in schema.versions_newest_first(kv, oid):
        if lt >= floor or stored_ns > old_ns or first != oid:
            continue
        if schema.delete_request(kv, lt):
            dropped += 1
            misses = 0
        else:
            misses += 1
            if misses >= MAX_MISSES:
                break
    return dropped
