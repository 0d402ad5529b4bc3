"""A node's per-client limits (``[limits]``, policy.py): admission of requests and the
storage quota, and what ``bftfs status`` shows of them.

* **Admission** (``net/admission.py``, run by the node's ``Server`` where it reads frames):
  each client principal gets ``max_inflight`` requests answered at once and token buckets
  of ``requests_per_second`` and ``bytes_per_second``; beyond them the node stops reading
  that client's connection until it may go on.  Nothing is refused, so a correct client
  that is merely busy is slowed, not failed.  Those caps are static and far above what a
  node serves on a small machine, so on their own they leave a flooder hundreds of
  requests ahead of everyone else; ``[limits] handler_slots`` (off by default) adds a
  pool of handler slots shared by all clients and granted round-robin among those with a
  frame waiting (``FairSlots``, issue 64): a correct client's request waits for about one
  of each other client's, never behind a flooder's queue.
* **Quota** (``bftfs/accounting.py``): every record a client's request makes this node store
  is charged to that client, in the transaction that stores it - PASIS block versions
  (``rw/quota.py``) and Q/U records: versions of object states, the stored requests,
  histories, blobs (``qu/schema.py``) - and given back in the transaction that deletes it
  (collection, retention pruning, tombstones).  One quota of ``quota_fraction * map_size``
  (none by default: ``1.0``) counts both: a new non-empty block version
  (``node/rw_server.py``), or a Q/U update of the client's own whose new states are larger
  than those they replace (``node/qu_server.py``), that would take it past the quota is
  refused with ``quota``.  More than ``b`` such refusals make either protocol's client raise
  ``QuotaExceeded`` and the file system answer EDQUOT (not ENOSPC: the disk is not full, and
  ``df`` says so; this client has taken its share); ``b`` or fewer (a Byzantine node) do not
  stop it.  Empty versions, deletions, Q/U updates that keep or shrink the states (unlink,
  rmdir, chmod, most renames) and repairs (barriers, copies, inline repairs, object sync)
  always pass, so a client over quota can remove files and write again once the nodes
  collect their blocks (within seconds: a client at ``pool_fraction`` of its quota has its
  given-back blocks' history collected without waiting for ``keep_seconds``,
  ``rw/collect.py`` ``verified_step``) and prune their metadata.

**Nodes are never limited**, neither admitted (nor queued for the shared pool: a node's
request never waits behind a client's, so clients cannot starve nodes) nor charged against a
quota: NOTIFY, the catch-up of a restarted node (LIST pages, READs), verification READs and
the repairs they write, and Q/U object sync are how the protocols make progress and collect
space, and some of them are handlers that call other nodes, so making one node's requests
wait on another's could stall both. A PASIS version that catch-up, verification or a
reader's repair stores is charged to the writer its timestamp names (never refused: it
re-creates a version that exists already, docs/rw.md); what a node's Q/U catch-up applies is
charged to the node itself (visible, never refused). At most ``b`` nodes are Byzantine; a
flooding node is not covered here (docs/threat-model.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bftfs import accounting
from bftfs.ids import is_node
from bftfs.net.admission import Admission, Limits

if TYPE_CHECKING:
    from bftfs.node.service import Node


#: Handler slots the t3 measure of fair admission gives its nodes (``[limits]
#: handler_slots``, off by default, policy.py says why).  A node's loop runs every ready
#: handler before it reads a socket again, so a correct client's request arriving waits
#: for up to this many frames of a flooder's (128, its ``max_inflight``, without the pool:
#: t3_fair_admission.py measured a mean of about 1 500 flood queries answered per round
#: of a correct client then, 550-600 with 8 slots).  A client alone on the node (no other
#: used it within ``admission.RECENT``) is not held to the pool, only to its
#: ``max_inflight``.
HANDLER_SLOTS = 8


def admission_for(node: Node) -> Admission:
    """The admission of ``node``'s clients under its configuration's ``[limits]``."""
    policy = node.config.limits
    limits = Limits(
        max_inflight=policy.max_inflight,
        requests_per_second=policy.requests_per_second,
        bytes_per_second=float(policy.bytes_per_second),
        burst_seconds=policy.burst_seconds,
        handler_slots=policy.handler_slots,
    )
    return Admission(limits, exempt=is_node, stats=node.stats)


def quota_bytes(node: Node) -> int:
    """Bytes one client may keep on ``node``: block versions and Q/U records together."""
    return node.config.limits.quota_bytes(node.config.map_size)


def statistics(node: Node) -> dict[str, Any]:
    """``limits`` in the node's stats (``bftfs status`` prints it compactly): totals, and per
    principal (clients, and nodes that
    stored something here) its requests, waits, quota refusals and bytes stored: block
    versions (``stored_bytes``) and Q/U records (``meta_bytes``), which the quota counts
    together."""
    blocks = node.store.read(accounting.RW.usages) if node.store is not None else {}
    meta = node.store.read(accounting.QU.usages) if node.store is not None else {}
    admitted = node.server.admission.statistics() if node.server.admission else {}
    principals: dict[str, dict[str, int]] = {}
    for pid in sorted(set(blocks) | set(meta) | set(admitted)):
        principals[str(pid)] = {
            **admitted.get(pid, {}),
            "stored_bytes": blocks.get(pid, 0),
            "meta_bytes": meta.get(pid, 0),
        }
    return {
        "quota_bytes": quota_bytes(node),
        "throttled": node.stats["limits.throttled"],
        "inflight_waits": node.stats["limits.inflight_waits"],
        "fair_waits": node.stats["limits.fair_waits"],
        "quota_refused": node.stats["rw.refused.quota"]
        + node.stats["qu.refused.quota"]
        + node.stats["fab.refused.quota"],
        "principals": principals,
    }


def disk_space(path: Path) -> dict[str, int] | None:
    """``statvfs`` of the file system holding ``path``: ``{"total", "free"}`` in bytes, free
    as an unprivileged writer sees it (``f_bavail``); None when it cannot be asked."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"total": st.f_blocks * st.f_frsize, "free": st.f_bavail * st.f_frsize}


def nodes_by_disk(cfg: Any) -> dict[int, list[Any]]:
    """This cluster's nodes whose data directory is on this machine, by the device (disk)
    it is on: a local cluster's nodes share one; on their own machines the others'
    directories are not here."""
    by_disk: dict[int, list[Any]] = {}
    for spec in cfg.nodes:
        try:
            device = os.stat(spec.data_dir).st_dev
        except OSError:
            continue  # not on this machine
        by_disk.setdefault(device, []).append(spec)
    return by_disk


def disk_share(path: Path, cfg: Any) -> int | None:
    """The bytes of free disk one node's data at ``path`` may count on: the disk's free
    space divided among this cluster's nodes whose data directories are on that same disk
    (:func:`nodes_by_disk`).  None when the disk cannot be asked."""
    space = disk_space(path)
    if space is None:
        return None
    try:
        device = os.stat(path).st_dev
    except OSError:
        return None
    return space["free"] // max(1, len(nodes_by_disk(cfg).get(device, [])))
