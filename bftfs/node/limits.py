"""A node's per-client limits (``[limits]``, policy.py): admission of requests and the
storage quota, and what ``bftfs status`` shows of them.

* **Admission** (``net/admission.py``, run by the node's ``Server`` where it reads frames):
  each client principal gets ``max_inflight`` requests answered at once and token buckets
  of ``requests_per_second`` and ``bytes_per_second``; beyond them the node stops reading
  that client's connection until it may go on.  Nothing is refused, so a correct client
  that is merely busy is slowed, not failed.
* **Quota** (``rw/quota.py``, checked by ``node/rw_server.py`` in the write's own
  transaction): the bytes of PASIS block versions one client's writes occupy on this node
  are kept in LMDB beside the versions; a new non-empty version beyond
  ``quota_fraction * map_size`` is refused with ``quota``.  More than ``b`` such refusals
  make the client raise ``QuotaExceeded`` and the file system answer EDQUOT (not ENOSPC:
  the disk is not full, and ``df`` says so; this client has taken its share).  Empty
  versions and deletions always pass, so a client over quota can remove files and write
  again once the nodes collect their blocks.  Q/U object state (metadata) is not counted:
  it is bounded per update and kept for ``keep_seconds`` (docs/threat-model.md).

**Nodes are never limited**, neither admitted nor charged against a quota: NOTIFY, the
catch-up of a restarted node (LIST pages, READs), verification READs and the repairs they
write, and Q/U object sync are how the protocols make progress and collect space, and some
of them are handlers that call other nodes, so making one node's requests wait on
another's could stall both.  What catch-up and verification store is charged to the node
itself (visible, never refused).  At most ``b`` nodes are Byzantine; a flooding node is not
covered here (docs/threat-model.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bftfs import accounting
from bftfs.ids import is_node
from bftfs.net.admission import Admission, Limits

if TYPE_CHECKING:
    from bftfs.node.service import Node


def admission_for(node: Node) -> Admission:
    """The admission of ``node``'s clients under its configuration's ``[limits]``."""
    policy = node.config.limits
    limits = Limits(
        max_inflight=policy.max_inflight,
        requests_per_second=policy.requests_per_second,
        bytes_per_second=float(policy.bytes_per_second),
        burst_seconds=policy.burst_seconds,
    )
    return Admission(limits, exempt=is_node, stats=node.stats)


def quota_bytes(node: Node) -> int:
    """Bytes one client may keep on ``node``: block versions and Q/U records together."""
    return node.config.limits.quota_bytes(node.config.map_size)


def statistics(node: Node) -> dict[str, Any]:
    """``limits`` in the node's stats: totals, and per principal (clients, and nodes that
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
        "quota_refused": node.stats["rw.refused.quota"] + node.stats["qu.refused.quota"],
        "principals": principals,
    }
