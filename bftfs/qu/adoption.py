"""Catch-up from the current state (docs/qu.md "Catch-up of a restarted server", issue 31
item 12): a restarted server takes a candidate the others accepted while it was away, with
the versions ``b + 1`` hosts hand over byte for byte, when the history it would replay (the
stored request, the conditioned-on versions) was pruned or forgotten meanwhile.  The node's
catch-up (``node/qu_catchup.py``) gathers the evidence and the versions and runs
:func:`adopt_step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.accept import store_accepted
from bftfs.qu.history import OHSEntry, newest
from bftfs.qu.replica import cull
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.timestamp import Candidate


@dataclass(frozen=True)
class Current:
    """An object's version at a candidate as ``b + 1`` hosts gave it byte for byte
    (``qu.sync`` replies with the version's kind and stored answer): at least one of them
    is correct, so it is the version every correct server that accepted the candidate
    holds."""

    state: bytes | None
    applied: bytes
    kind: str
    answer: Any


#: What every server that accepted a barrier holds at it: no state (``replica._accept``).
#: A barrier is taken without asking anyone for it (``qu.sync`` hands over no barrier).
BARRIER_VERSION = Current(None, schema.EMPTY_APPLIED, schema.BARRIER, None)


def listed_by(
    cfg: ReplicaConfig, oid: int, mohs: Mapping[int, OHSEntry], cand: Candidate
) -> set[int]:
    """The other servers whose history of ``oid`` (culled with this server's key: each
    speaks for itself) lists exactly ``cand``, its conditioned-on timestamp and objects
    included."""
    culled, _ = cull(cfg, {oid: mohs})
    return {s for s, e in culled[oid].items() if s != cfg.me and cand in e.rh}


def adopt_step(
    kv: KV,
    cfg: ReplicaConfig,
    cands: Mapping[int, Candidate],
    evidence: Mapping[int, Mapping[int, OHSEntry]],
    current: Mapping[int, Current],
    now_ns: int,
) -> tuple[int, ...]:
    """Take one candidate (``cands``: as it stands at each of its objects, which share its
    time and objects and differ in their conditioned-on times) with its versions
    ``current`` as if this server had accepted it, in the caller's one transaction: what a
    restarted server's catch-up does when the history it would replay (the stored
    request, the conditioned-on versions) was pruned or forgotten while it was away
    (issue 31 item 12).  Returns the objects it took it at.

    The result is what an inline repair (L2561-2570) of the candidate would have left: the
    same candidate in each history (pruned as its type prunes), the same versions; only
    the versions come from ``b + 1`` identical answers instead of re-running the method on
    conditioned-on versions that are gone.  Per object it requires, as inline repair does,
    ``b + 1`` other servers listing exactly that object's candidate in ``evidence`` (culled
    with this server's key, so one correct server accepted it), and that this server's
    own history holds nothing as new as the candidate.  Unlike the currency check of a
    replay, it may hold candidates newer than the conditioned-on time: strays of updates
    that lost (they reached this server alone, issue 60 item 15), which the correct
    servers that accepted the candidate never saw; below the candidate they classify as
    at any server holding one, and the replay the currency check refuses would have left
    nothing else.  A barrier (a repairer that stopped before its copy) is taken with
    :data:`BARRIER_VERSION`: no state to fetch.  An object where fewer list it (it moved
    on there, or was forgotten) is left alone: its own catch-up, or nothing.  The objects
    taken are taken together, in this one transaction, as an accepted multi-object update
    is.
    """
    keys = {c.key for c in cands.values()}
    if len(keys) != 1:
        return ()
    done = []
    for oid, cand in sorted(cands.items()):
        got = BARRIER_VERSION if cand.lt.barrier else current.get(oid)
        if oid not in cand.objects:
            continue
        if got is None or got.kind not in (schema.METHOD, schema.COPY, schema.BARRIER):
            continue
        if len(listed_by(cfg, oid, evidence.get(oid, {}), cand)) < cfg.th.b + 1:
            continue
        rh, _ = schema.load_rh(kv, oid)
        if newest(rh) >= cand.lt or cand in rh:
            continue
        version = schema.Version(
            cand.lt,
            got.kind,
            got.state,
            got.applied,
            cand.lt_co,
            got.answer,
            True,
            cand.objects,
            now_ns,
        )
        store_accepted(kv, cfg, oid, rh, cand, version, cfg.me)
        done.append(oid)
    return tuple(done)
