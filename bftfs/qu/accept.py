"""What a Q/U server writes when it accepts a candidate (seed Figure 4.3 lines 1024-1030):
the candidate added to each object's replica history, which a METHOD prunes below its
conditioned-on version (line 1028), re-authenticated and stored atomically with the new
version and the stored request (L2512-2514), then retention.  The steps before it are
:func:`bftfs.qu.replica.handle_request`'s; catch-up's adoption writes through
:func:`store_accepted` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bftfs.accounting import HeldTotals
from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import pack
from bftfs.qu.history import OHSEntry, ReplicaHistory, make_authenticator, make_rh
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.reply import Reply
from bftfs.qu.request import Request
from bftfs.qu.retention import retain
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.setup import Setup
from bftfs.qu.timestamp import Candidate, Timestamp

#: Versions obtained by object sync: ``(oid, lt) -> (state, applied)``.
Synced = Mapping[tuple[int, Timestamp], tuple[bytes | None, bytes]]


def accept(
    kv: KV,
    cfg: ReplicaConfig,
    req: Request,
    su: Setup,
    rhs: dict[int, ReplicaHistory],
    culled: tuple[tuple[int, ...], ...],
    results: Mapping[int, tuple[bytes | None, bytes]],
    synced: Synced,
    answer: Any,
    now_ns: int = 0,
    owner: int | None = None,
) -> Reply:
    """Lines 1024-1030: add the candidate, prune, re-authenticate and store, atomically.

    ``req`` is the request as this server interpreted it (culled OHS, no evidence): what an
    inline repairer re-sends.  For a copy, ``results`` holds the versions copied forward.
    Everything written is charged to ``owner``, the request's sender; the owners' totals
    are written once, at the end (:class:`~bftfs.accounting.HeldTotals`: some 150 records
    of one owner for an update of 30 objects).
    """
    held = HeldTotals(kv)
    kind = su.type.value
    hist = []
    packed_answer = pack(answer)  # the same in every object's version: packed once
    for oid in sorted(rhs):
        cand: Candidate = su.candidates[oid]
        _keep_synced(held, oid, cand.lt_co, synced, now_ns, owner)
        state, applied = results.get(oid, (None, schema.EMPTY_APPLIED))
        version = schema.Version(
            cand.lt, kind, state, applied, cand.lt_co, answer, True, cand.objects, now_ns
        )
        hist.append(store_accepted(held, cfg, oid, rhs[oid], cand, version, owner, packed_answer))
    schema.store_request(held, su.lt, req.packed(), owner)
    held.flush()
    return Reply(
        ReplyStatus.OK,
        type=kind,
        lt=su.lt,
        answer=answer,
        at=su.at(),
        hist=tuple(hist),
        culled=culled,
    )


def _keep_synced(
    kv: KV, oid: int, lt_co: Timestamp, synced: Synced, now_ns: int, owner: int | None
) -> None:
    """Keep a synced conditioned-on version addressable by its timestamp too."""
    key = (oid, lt_co)
    if key in synced and schema.load_version(kv, oid, lt_co) is None:
        s, ap = synced[key]
        schema.store_version(
            kv,
            oid,
            schema.Version(lt_co, schema.SYNCED, s, ap, None, None, False, (), now_ns),
            owner,
        )


def store_accepted(
    kv: KV,
    cfg: ReplicaConfig,
    oid: int,
    rh: ReplicaHistory,
    cand: Candidate,
    version: schema.Version,
    owner: int | None,
    packed_answer: bytes | None = None,
) -> OHSEntry:
    """What accepting ``cand`` writes for ``oid`` (lines 1024-1030, also what catch-up's
    adoption writes): ``cand`` added to the history ``rh``, which a METHOD prunes below its
    conditioned-on version (line 1028; barriers and copies prune nothing), re-authenticated
    and stored with ``version``, and then retention; the new ``<RH, alpha>``.
    ``packed_answer``: ``version.answer`` packed, when the caller has it."""
    new = list(rh) + [cand]
    if version.kind == schema.METHOD:
        new = [c for c in new if c.lt >= cand.lt_co]
    new_rh = make_rh(new)
    auth = make_authenticator(oid, new_rh, cfg.th.n, cfg.key_for)
    schema.store_rh(kv, oid, new_rh, auth, owner)
    schema.store_version(kv, oid, version, owner, packed_answer)
    retain(kv, cfg, oid, new_rh, now_ns=version.stored_ns)
    return OHSEntry(new_rh, auth)
