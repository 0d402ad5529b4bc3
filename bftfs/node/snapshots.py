"""The snapshot moments this node's garbage collection must keep (issue 17).

Snapshots (``bftfs snapshot create``) live in the file system's snapshot-list object
(:data:`bftfs.fsobjects.SNAPSHOTS`), a Q/U object like any other.  Retention on this node,
of Q/U versions (``qu.serverconfig.Retention.pins``) and of PASIS blocks
(``rw.collect.verified_step(pins=...)``), reads the list from this node's own newest
version of that object, in the same store transaction that deletes.  A snapshot made while
this node was down pins nothing here until the node has the update (catch-up, or the next
update of the list); the other nodes keep those versions meanwhile, and any ``b + 1`` of
them suffice for a history read.
"""

from __future__ import annotations

from bftfs.fsobjects import SNAPSHOTS, snapshot_times
from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import unpack

#: Versions of the list looked at (the newest may be a barrier, or a candidate in flight).
RECENT = 4


def pinned_moments(kv: KV) -> tuple[int, ...]:
    """The snapshot moments (ns, ascending) of every recent version of the list this node
    holds (a barrier's has no state; a candidate may not have completed yet: keeping the
    union errs on the side of keeping)."""
    moments: set[int] = set()
    for lt in schema.newest_times(kv, SNAPSHOTS, RECENT):
        v = schema.load_version(kv, SNAPSHOTS, lt)
        if v is not None and v.state is not None:
            moments.update(snapshot_times(unpack(v.state)))
    return tuple(sorted(moments))
