"""The Q/U server as a synchronous step over a key-value transaction (seed Figure 4.3,
``s_request`` lines 1000-1030 and ``s_setup`` lines 1100-1118, with the implementation
details of 4.3.5, L2517-2699, and multi-object updates of 4.3.7, L2732-2844).

:func:`handle_request` maps ``(stored state, request)`` to ``(writes, reply)`` inside the one
transaction its caller opens, so the new replica history, its authenticator, the object
versions and the stored answer are written atomically (L2512-2514).  Step by step:

1. **Cull** (lines 1001-1002): drop every history whose authenticator entry for this server
   does not verify; the reply lists them (L2656-2658).
2. **Deduction objects** (:func:`bftfs.qu.classify.missing_objects`): refuse with ``need`` if
   a relevant multi-object candidate names objects the request does not carry.
3. **Set up** (line 1004): classify and build the candidate; the timestamp is a function of
   the culled multi-OHS, the operation and the client only.
4. **Inline repair** (L2561-2570): a request whose client is not the sender is a repair of
   another client's candidate; it is accepted only if its evidence OHS shows that very
   candidate at b+1 servers, i.e. at one benign server that took it from its client.
5. **Repeated request** (L2572-2583): a version already accepted at the set-up LT is answered
   from its stored answer, before the currency check.
6. **Currency** (line 1007): fail if this server has anything newer than LTcurrent.  A query
   that fails still runs on the server's latest version (*optimistic query*, L2526-2536).
7. **Retrieve / object sync** (lines 1010-1014): the conditioned-on versions; when one is
   missing the step returns :class:`NeedSync` naming the host servers (those listing it in
   the OHS) and the caller fetches it from b+1 matching hosts and calls the step again.
8. **Method / copy / barrier** (lines 1017-1021, 1105-1117), then the atomic write with
   **pruning** (line 1028): a METHOD's LT_CO was complete, so candidates older than it are
   dropped from the history (Table 4.1 shows exactly this); barriers and copies prune
   nothing.  Versions themselves stay, addressable by timestamp, unless the retention
   setting allows deleting ones older than the history.

Two choices where the seed is silent:

- *Operations never turn into repairs.*  The seed's ``s_setup`` would perform a barrier or a
  copy for a request carrying an operation when the OHS classifies so, and the client would
  count it as success.  Here only a request without operation (line 504's ``⊥``) repairs;
  an operation whose OHS does not classify METHOD is "not current" (FAIL), so a reader can
  never create barriers (L2596-2597 depends on that).
- *Applied table.*  The seed's client retries an update after repair (lines 302-306); if the
  first attempt was copied forward by the repair, a plain retry would apply it twice.  Each
  version therefore carries ``{client: [seq, answer]}`` of the last update each client
  applied to that object, copied along with the state; a METHOD whose conditioned-on version
  already shows the same ``(client, seq)`` creates its version without re-running the
  method and returns the stored answer.  The client issues one update per object at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bftfs import accounting
from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.canon import canonical_map, unpack
from bftfs.qu.classify import (
    ObjectClass,
    OpType,
    QUThresholds,
    Setup,
    View,
    classify,
    missing_objects,
    setup_from_classes,
)
from bftfs.qu.history import (
    OHSEntry,
    ReplicaHistory,
    auth_entry_ok,
    is_initial,
    make_authenticator,
    make_rh,
)
from bftfs.qu.links import LinkError, request_digest, verified
from bftfs.qu.messages import Link, Reply, ReplyStatus, Request
from bftfs.qu.objects import MethodRefused, Registry
from bftfs.qu.timestamp import INITIAL, ZERO, Candidate, Timestamp


@dataclass(frozen=True)
class Retention:
    """Which object versions a server may delete (none by default).

    ``keep_last=None`` keeps every version.  With ``keep_last=k`` a server deletes, after
    accepting an update, versions that are all of: older than every candidate of its pruned
    replica history and than every candidate's conditioned-on version (so object sync and
    classification never ask for them from this server); not among the ``k`` newest; and
    stored more than ``keep_seconds`` ago by this server's clock (the version history users
    see, slow repeated requests, and link proofs (qu.fetch) of requests still in some
    lagging server's history, L2630-2634).  A version's stored request goes with it.  Nodes
    take ``k`` and the age from ``[retention]`` (policy.py).

    A retried request whose version was deleted is still answered once: the applied table
    travels with every version (the module docstring), so the retry returns the stored
    answer instead of running the method again.
    """

    keep_last: int | None = None
    keep_seconds: float = 0.0
    #: How long a tombstone stays before the servers forget the object altogether (after
    #: ``keep_seconds``): see :func:`forget_target`.  None: never.
    forget_seconds: float | None = None
    #: The moments whose versions are never deleted (snapshots), read from the store when
    #: something would be: the version current at each (the newest stored at or before it
    #: by this server's clock) stays, and with it every newer one.
    pins: Callable[[KV], Sequence[int]] | None = None


@dataclass(frozen=True)
class ReplicaConfig:
    """What one server's step needs to know about itself."""

    me: int
    th: QUThresholds
    key_for: Callable[[int], bytes]  # pairwise key with server s (itself included)
    registry: Registry
    retention: Retention = field(default_factory=Retention)


@dataclass(frozen=True)
class SyncWant:
    """One conditioned-on version this server lacks, and the servers that host it."""

    oid: int
    lt: Timestamp
    hosts: tuple[int, ...]


@dataclass(frozen=True)
class NeedSync:
    """Result of a step that cannot proceed without object sync (line 1014)."""

    wants: tuple[SyncWant, ...]


@dataclass(frozen=True)
class OverQuota:
    """Result of an update refused for its sender's quota (nothing was written): its new
    states are larger than those they replace by ``grows`` bytes and the sender, charged
    ``used`` bytes here, would pass ``quota`` (node/limits.py)."""

    used: int
    grows: int
    quota: int


@dataclass(frozen=True)
class ClockAhead:
    """Result of a client's own update refused because the clock it declares
    (``Registry.declared_time``) lies ``ahead_ns`` past this server's, more than the skew
    allowed (nothing was written)."""

    ahead_ns: int


def _size(state: bytes | None) -> int:
    return 0 if state is None else len(state)


def _over_quota(
    kv: KV,
    sender: int,
    quota: int | None,
    old: Mapping[int, bytes | None],
    new: Mapping[int, bytes | None],
) -> OverQuota | None:
    """The quota rule for a client's own METHOD: refused when its new states are larger,
    all objects together, than the states they replace and its charges here
    (:func:`bftfs.accounting.used`, block versions and Q/U records) plus that growth pass
    ``quota``.  What keeps or shrinks the states - removals, a rename to a shorter name,
    truncation, removing an xattr - always passes, so a client over quota can give space
    back; repairs (barriers, copies, inline repairs) never reach this check."""
    if quota is None:
        return None
    grows = sum(_size(new[oid]) for oid in new) - sum(_size(old[oid]) for oid in new)
    if grows <= 0:
        return None
    used = accounting.used(kv, sender)
    if not accounting.over(used, grows, quota, empty=False):
        return None
    return OverQuota(used, grows, quota)


#: Versions obtained by object sync: ``(oid, lt) -> (state, applied)``.
Synced = Mapping[tuple[int, Timestamp], tuple[bytes | None, bytes]]


def _hist(kv: KV, cfg: ReplicaConfig, objects: tuple[int, ...]) -> tuple[OHSEntry, ...]:
    out = []
    for oid in objects:
        rh, auth = schema.load_rh(kv, oid)
        if auth is None:
            auth = make_authenticator(oid, rh, cfg.th.n, cfg.key_for)
        out.append(OHSEntry(rh, auth))
    return tuple(out)


def cull(
    cfg: ReplicaConfig, mohs: Mapping[int, Mapping[int, OHSEntry]]
) -> tuple[dict[int, dict[int, OHSEntry]], tuple[tuple[int, ...], ...]]:
    """Lines 1001-1002: the multi-OHS without the histories this server cannot validate.

    Returns:
        The culled multi-OHS and, per object (sorted), the servers whose history was culled.
    """
    out: dict[int, dict[int, OHSEntry]] = {}
    culled: list[tuple[int, ...]] = []
    for oid in sorted(mohs):
        kept: dict[int, OHSEntry] = {}
        bad: list[int] = []
        for s, e in sorted(mohs[oid].items()):
            if auth_entry_ok(oid, e.rh, e.auth, cfg.me, cfg.key_for(s)):
                if not is_initial(e.rh):
                    kept[s] = e
            else:
                bad.append(s)
        out[oid] = kept
        culled.append(tuple(bad))
    return out, tuple(culled)


@functools.lru_cache(maxsize=1024)
def _classified(
    th: QUThresholds,
    objects: tuple[int, ...],
    histories: tuple[tuple[int, tuple[tuple[int, ReplicaHistory], ...]], ...],
    links: tuple[Link, ...] = (),
) -> tuple[frozenset[int], bool, bytes, dict[int, ObjectClass]]:
    """What a culled multi-OHS says, for a request operating on ``objects``: the objects
    deduction still needs, whether it still needs conditioned-on links proven, the digest
    that goes into timestamps, and each operated object's classification (empty when
    objects or links are needed).  ``links`` are the request's, already verified.

    ``histories`` is the culled multi-OHS as ``((oid, ((server, rh), ...)), ...)``, sorted:
    classification, deduction and the digest depend on the replica histories alone, not on
    the authenticators.  Cached: a client queries a quiet object with the same OHS again and
    again, and this was a third of a server's work per query.  The value is a pure function
    of the key (equal histories have equal timestamps byte for byte), and is shared, so no
    caller may change it.
    """
    mohs = {oid: {s: OHSEntry(rh, None) for s, rh in ohs} for oid, ohs in histories}
    view = View(mohs, th, {(lk.oid, lk.lt): lk.lt_co for lk in links})
    need = missing_objects(view)
    wanted = bool(view.wanted_links())
    classes = {} if need or wanted else {oid: classify(view, oid) for oid in objects}
    return need, wanted, request_digest(mohs, links), classes


def _latest(rh: ReplicaHistory) -> Timestamp:
    return max(c.lt for c in rh)


def _retrieve(kv: KV, oid: int, lt: Timestamp, synced: Synced) -> tuple[bytes | None, bytes] | None:
    """The state and applied table at ``lt`` (line 1011), or None if not here."""
    if lt == ZERO:
        return None, schema.EMPTY_APPLIED
    v = schema.load_version(kv, oid, lt)
    if v is not None and v.kind != schema.BARRIER:
        return v.state, v.applied
    return synced.get((oid, lt))


def _states(states: Mapping[int, bytes | None]) -> dict[int, Any]:
    return {oid: (unpack(s) if s is not None else None) for oid, s in states.items()}


def _optimistic_query(kv: KV, cfg: ReplicaConfig, req: Request) -> tuple[Any, tuple | None]:
    """L2526-2536: run a query on this server's latest object version when not current."""
    if req.op is None or not req.op.query or len(req.objects) != 1:
        return None, None
    oid = req.objects[0]
    rh, _ = schema.load_rh(kv, oid)
    latest = max((c for c in rh if not c.lt.barrier), key=lambda c: c.lt, default=INITIAL)
    got = _retrieve(kv, oid, latest.lt, {})
    if got is None:
        return None, None
    try:
        answer = cfg.registry.query(req.op.method, _states({oid: got[0]}), req.op.arg)
    except MethodRefused:
        return None, None
    return answer, (latest.lt,)


def handle_request(
    kv: KV,
    cfg: ReplicaConfig,
    sender: int,
    req: Request,
    synced: Synced | None = None,
    now_ns: int = 0,
    quota: int | None = None,
    max_ahead_ns: int | None = None,
) -> Reply | NeedSync | OverQuota | ClockAhead:
    """One ``s_request`` inside the caller's write transaction.

    Args:
        kv: the transaction.
        cfg: this server.
        sender: the authenticated principal that sent ``req``; every record the step
            writes is charged to it (``qu/schema.py``).
        req: the parsed request.
        synced: versions fetched by object sync for a previous :class:`NeedSync`.
        now_ns: this server's clock, recorded with a new version (retention by age).
        quota: bytes ``sender`` may keep here (None: no quota; nodes have none).
        max_ahead_ns: how far past ``now_ns`` the clock a client's own update declares
            may be (None: not checked).

    Returns:
        The reply, or :class:`NeedSync`, :class:`OverQuota` or :class:`ClockAhead`
        (nothing was written).
    """
    synced = synced or {}
    objects = req.objects
    th = cfg.th

    def reply(status: ReplyStatus, **kw: Any) -> Reply:
        return Reply(status, hist=_hist(kv, cfg, objects), culled=culled, **kw)

    mohs, all_culled = cull(cfg, req.mohs)
    culled = tuple(c for oid, c in zip(sorted(mohs), all_culled, strict=True) if oid in objects)
    links: tuple[Link, ...] = ()
    if req.links:
        try:
            facts = verified(req.links, th)
        except LinkError as e:
            return reply(ReplyStatus.REFUSED, why=str(e))
        links = tuple(Link(oid, lt, co) for (oid, lt), co in sorted(facts.items()))
    need, wanted, digest, classes = _classified(
        th,
        objects,
        tuple(
            (oid, tuple((s, e.rh) for s, e in sorted(ohs.items())))
            for oid, ohs in sorted(mohs.items())
        ),
        links,
    )
    if need:
        return reply(ReplyStatus.NEED, need=tuple(sorted(need)), why="deduction needs objects")
    if wanted:
        return reply(ReplyStatus.NEED, why="deduction needs conditioned-on links")
    op_bytes = req.op.canonical() if req.op else None
    su = setup_from_classes(classes, req.client, op_bytes, digest, objects)
    if su is None:
        return reply(ReplyStatus.REFUSED, why="logical time exhausted")

    if req.client != sender:
        if req.evidence is None or (req.op is not None and req.op.query):
            return reply(ReplyStatus.REFUSED, why="client id is not the sender's")
        ev, _ = cull(cfg, req.evidence)
        target = su.candidates[objects[0]]
        if View(ev, th).order(objects[0], target) < th.b + 1:
            return reply(ReplyStatus.REFUSED, why="inline repair without evidence")

    if req.op is not None and su.type is not OpType.METHOD:
        answer, at = _optimistic_query(kv, cfg, req)
        return reply(ReplyStatus.FAIL, answer=answer, at=at, why="not current: " + su.type.value)
    if req.op is None and su.type is OpType.METHOD:
        return reply(ReplyStatus.FAIL, why="nothing to repair")

    # Repeated request (L2580-2583): answered from the stored version, before currency.
    if not (req.op is not None and req.op.query):
        for oid in objects:
            done = schema.version_accepted(kv, oid, su.lt)
            if done is not None:
                kind, answer = done
                return reply(ReplyStatus.OK, type=kind, lt=su.lt, answer=answer, at=_at(su))

    rhs = {oid: schema.load_rh(kv, oid)[0] for oid in objects}
    for oid in objects:
        if _latest(rhs[oid]) > su.current[oid]:
            answer, at = _optimistic_query(kv, cfg, req)
            return reply(ReplyStatus.FAIL, answer=answer, at=at, why="not current")

    stored = Request(req.client, objects, mohs, req.op, None, links)
    if su.type is OpType.BARRIER:
        return _accept(kv, cfg, stored, su, rhs, culled, {}, {}, None, now_ns, sender)

    got: dict[int, tuple[bytes | None, bytes]] = {}
    wants = []
    for oid in objects:
        lt_co = su.candidates[oid].lt_co
        x = _retrieve(kv, oid, lt_co, synced)
        if req.op is not None and (x is None or lt_co == ZERO) and schema.is_forgotten(kv, oid):
            # A forgotten object: the version an operation on it would need is gone from
            # every server (no object sync can find it), and its id is never an object again.
            return reply(ReplyStatus.REFUSED, why="forgotten", at=_at(su))
        if x is None:
            hosts = tuple(
                s
                for s, e in sorted(mohs[oid].items())
                if s != cfg.me and any(c.lt == lt_co for c in e.rh)
            )
            wants.append(SyncWant(oid, lt_co, hosts))
        else:
            got[oid] = x
    if wants:
        return NeedSync(tuple(wants))

    if su.type is OpType.COPY:
        return _accept(kv, cfg, stored, su, rhs, culled, got, synced, None, now_ns, sender)

    op = req.op
    if op is None:  # unreachable: METHOD without operation was answered above
        return reply(ReplyStatus.FAIL, why="nothing to repair")
    if req.client == sender and max_ahead_ns is not None and not op.query:
        # Like the quota, judged by this server alone and never on an inline repair: a
        # request correct servers accepted is not refused when it is re-run later.
        declared = cfg.registry.declared_time(op.method, op.arg)
        if declared is not None and declared > now_ns + max_ahead_ns:
            return ClockAhead(declared - now_ns)
    states = _states({oid: got[oid][0] for oid in objects})
    if op.query:
        try:
            answer = cfg.registry.query(op.method, states, op.arg)
        except MethodRefused as e:
            return reply(ReplyStatus.REFUSED, why=e.code, at=_at(su))
        return reply(ReplyStatus.OK, type=OpType.METHOD.value, answer=answer, at=_at(su))

    tables = {oid: unpack(got[oid][1]) for oid in objects}
    prior = [t.get(req.client) for t in tables.values()]
    if any(p is not None and p[0] == op.seq for p in prior):
        # Applied in this conditioned-on chain already (see module docstring).
        answer = next(p[1] for p in prior if p is not None and p[0] == op.seq)
        new_states: Mapping[int, bytes | None] = {oid: got[oid][0] for oid in objects}
    else:
        try:
            new_states, answer = cfg.registry.update(op.method, states, op.arg)
        except MethodRefused as e:
            return reply(ReplyStatus.REFUSED, why=e.code, at=_at(su))
        if req.client == sender:  # an inline repair is never refused
            refused = _over_quota(kv, sender, quota, {o: got[o][0] for o in objects}, new_states)
            if refused is not None:
                return refused
    applied = {}
    for oid in objects:
        t = dict(tables[oid])
        t[req.client] = [op.seq, answer]
        # Normal values: read back from canonical bytes, and ``answer`` normalised by the
        # registry (or read back from a table).
        applied[oid] = canonical_map(t)
    return _accept(
        kv,
        cfg,
        stored,
        su,
        rhs,
        culled,
        {oid: (new_states[oid], applied[oid]) for oid in objects},
        synced,
        answer,
        now_ns,
        sender,
    )


def _at(su: Setup) -> tuple[Timestamp, ...]:
    return tuple(su.candidates[oid].lt_co for oid in sorted(su.candidates))


def _accept(
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
    Everything written is charged to ``owner``, the request's sender.
    """
    kind = su.type.value
    hist = []
    for oid in sorted(rhs):
        cand: Candidate = su.candidates[oid]
        # Keep a synced conditioned-on version addressable by its timestamp too.
        key = (oid, cand.lt_co)
        if key in synced and schema.load_version(kv, oid, cand.lt_co) is None:
            s, ap = synced[key]
            schema.store_version(
                kv,
                oid,
                schema.Version(cand.lt_co, schema.SYNCED, s, ap, None, None, False, (), now_ns),
                owner,
            )
        rh = list(rhs[oid]) + [cand]
        if su.type is OpType.METHOD:
            rh = [c for c in rh if c.lt >= cand.lt_co]
        new_rh = make_rh(rh)
        auth = make_authenticator(oid, new_rh, cfg.th.n, cfg.key_for)
        schema.store_rh(kv, oid, new_rh, auth, owner)
        state, applied = results.get(oid, (None, schema.EMPTY_APPLIED))
        schema.store_version(
            kv,
            oid,
            schema.Version(
                cand.lt, kind, state, applied, cand.lt_co, answer, True, cand.objects, now_ns
            ),
            owner,
        )
        _retain(kv, cfg, oid, new_rh, now_ns)
        hist.append(OHSEntry(new_rh, auth))
    schema.store_request(kv, su.lt, req.packed(), owner)
    return Reply(
        ReplyStatus.OK,
        type=kind,
        lt=su.lt,
        answer=answer,
        at=_at(su),
        hist=tuple(hist),
        culled=culled,
    )


def _retain(
    kv: KV,
    cfg: ReplicaConfig,
    oid: int,
    rh: ReplicaHistory,
    now_ns: int,
    *,
    finished: bool = False,
) -> int:
    """Delete the versions :class:`Retention` lets go, oldest first, stopping at the first
    one it keeps (versions are stored in logical-time order, which is also, near enough,
    the order they were stored in), so an update costs ``O(k)`` plus what it deletes.
    ``finished``: the object's newest state is finished (keep one version)."""
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
    return _retain(kv, cfg, oid, rh, now_ns, finished=finished)


# Catch-up from the current state (docs/qu.md "Catch-up of a restarted server") ----------


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
    own history holds nothing newer than its conditioned-on time (what the currency check
    of a request conditioned on it would demand).  An object where fewer list it (it moved
    on there, or was forgotten) is left alone: its own catch-up, or nothing.  The objects
    taken are taken together, in this one transaction, as an accepted multi-object update
    is.
    """
    keys = {c.key for c in cands.values()}
    if len(keys) != 1:
        return ()
    done = []
    for oid, cand in sorted(cands.items()):
        got = current.get(oid)
        if cand.lt.barrier or oid not in cand.objects:
            continue
        if got is None or got.kind not in (schema.METHOD, schema.COPY):
            continue
        if len(listed_by(cfg, oid, evidence.get(oid, {}), cand)) < cfg.th.b + 1:
            continue
        rh, _ = schema.load_rh(kv, oid)
        if _latest(rh) > cand.lt_co or cand in rh:
            continue
        new = list(rh) + [cand]
        if got.kind == schema.METHOD:
            new = [c for c in new if c.lt >= cand.lt_co]
        new_rh = make_rh(new)
        schema.store_rh(
            kv, oid, new_rh, make_authenticator(oid, new_rh, cfg.th.n, cfg.key_for), cfg.me
        )
        schema.store_version(
            kv,
            oid,
            schema.Version(
                cand.lt,
                got.kind,
                got.state,
                got.applied,
                cand.lt_co,
                got.answer,
                True,
                cand.objects,
                now_ns,
            ),
            cfg.me,
        )
        _retain(kv, cfg, oid, new_rh, now_ns)
        done.append(oid)
    return tuple(done)


# Tombstones of finished objects (docs/qu.md "Reclaiming removed objects") ---------------


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


def _accepted_final(kv: KV, oid: int) -> tuple[Timestamp, schema.Version, bytes] | None:
    """The newest candidate of this server's history of ``oid`` with its version, if it is
    also the newest stored version and one this server accepted (a method or copy it ran,
    not synced, not a barrier) with a state (returned too): what a tombstone and
    forgetting start from."""
    rh, _ = schema.load_rh(kv, oid)
    if is_initial(rh):
        return None
    final = _latest(rh)
    if final.barrier or schema.newest_times(kv, oid, 1) != [final]:
        return None
    v = schema.load_version(kv, oid, final)
    if v is None or not v.accepted or v.state is None or v.kind == schema.BARRIER:
        return None
    return final, v, v.state


def _owns_stored_request(kv: KV, oid: int, v: schema.Version) -> bool:
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
    found = _accepted_final(kv, oid)
    if found is None:
        return None
    final, v, state = found
    if v.stored_ns > now_ns - int(cfg.retention.keep_seconds * 1e9):
        return None
    if not cfg.registry.finished(unpack(state)):
        return None
    if schema.oldest_versions(kv, oid, 1) == [(final, v.stored_ns)] and not (
        _owns_stored_request(kv, oid, v)
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
    going = tombstone_plan(stored, final, young_ns, () if stored == [] else _pins(kv, cfg))
    deleted = 0
    for lt in going:
        v = schema.load_version(kv, oid, lt)
        if v is not None:
            schema.delete_version(kv, oid, v)
            deleted += 1
    v = schema.load_version(kv, oid, final)
    if v is not None and v.objects and v.objects[0] == oid:
        deleted += int(schema.delete_request(kv, final))
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
    found = _accepted_final(kv, oid)
    if found is None:
        return None
    final, v, state = found
    if len(schema.oldest_versions(kv, oid, 2)) != 1 or _owns_stored_request(kv, oid, v):
        return None
    if not cfg.registry.finished(unpack(state)):
        return None
    if any(t >= v.stored_ns for t in _pins(kv, cfg)):
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
    schema.mark_forgotten(kv, oid)
    return 1 + int(schema.delete_rh(kv, oid))


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


#: A moment after every version's retention (tombstone_target then ignores the age).
_NEVER_NS = 1 << 62


def _pins(kv: KV, cfg: ReplicaConfig) -> Sequence[int]:
    return cfg.retention.pins(kv) if cfg.retention.pins is not None else ()


def handle_history(kv: KV, cfg: ReplicaConfig, objects: tuple[int, ...]) -> Reply:
    """A read of this server's histories (``qu.history``): what a client needs to add an
    object to a multi-OHS for deduction, without sending an operation."""
    return Reply(ReplyStatus.OK, hist=_hist(kv, cfg, objects))


def handle_latest(kv: KV, after: int | None, limit: int) -> dict:
    """The newest timestamp in this server's history of each object with id > ``after``,
    ``limit`` of them in id order (``qu.latest``: a restarted server compares them with its
    own to find what changed while it was down)."""
    start = schema.oid_key(0 if after is None else after + 1) if after != schema.MAX_OID else None
    out: list[list] = []
    more = False
    if start is not None:
        for key, raw in kv.scan(schema.DB_RH, start, schema.OID_END):
            if len(out) >= limit:
                more = True
                break
            rh, _ = schema.load_rh_raw(bytes(raw))
            out.append([int.from_bytes(bytes(key), "big"), _latest(rh).encode()])
    return {"o": out, "more": more}


def handle_fetch(kv: KV, lt: Timestamp) -> Any:
    """The stored request that made candidate ``lt`` (for inline repair), or None."""
    return schema.load_request(kv, lt)


def handle_sync(kv: KV, oid: int, lt: Timestamp) -> dict | None:
    """Object sync, host side: the version of ``oid`` at ``lt`` if stored here, with its
    kind and stored answer (what a restarted server's catch-up needs to take the version
    as accepted, :func:`adopt_step`; object sync itself reads only state and table)."""
    v = schema.load_version(kv, oid, lt)
    if v is None or v.kind == schema.BARRIER:
        return None
    return {"s": v.state, "ap": v.applied, "k": v.kind, "a": v.answer}


def versions(kv: KV, oid: int) -> list[schema.Version]:
    """Every stored version of ``oid``, oldest first (version history)."""
    return schema.iter_versions(kv, oid)


def read_version(kv: KV, oid: int, lt: Timestamp) -> Any:
    """The state of ``oid`` at ``lt`` as a value (None if absent or not stored)."""
    v = schema.load_version(kv, oid, lt)
    return unpack(v.state) if v is not None and v.state is not None else None
