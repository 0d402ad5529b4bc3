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
   **pruning** (line 1028, :mod:`bftfs.qu.accept`): a METHOD's LT_CO was complete, so
   candidates older than it are dropped from the history (Table 4.1 shows exactly this);
   barriers and copies prune nothing.  Versions themselves stay, addressable by timestamp,
   unless the retention setting allows deleting ones older than the history
   (``retention.py``).

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

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bftfs import accounting
from bftfs.kv import KV
from bftfs.qu import schema
from bftfs.qu.accept import Synced, accept
from bftfs.qu.applied import entry as applied_entry
from bftfs.qu.applied import installed_table, set_entry
from bftfs.qu.applied import seq_of as applied_seq
from bftfs.qu.canon import canonical_map, pack, unpack
from bftfs.qu.classify import (
    ObjectClass,
    OpType,
    QUThresholds,
    View,
    classify,
    missing_objects,
)
from bftfs.qu.clocks import ClockAhead, clock_off
from bftfs.qu.history import (
    OHSEntry,
    ReplicaHistory,
    auth_entry_ok,
    is_initial,
    newest,
)
from bftfs.qu.links import MAX_FETCHED, LinkError, NeedProofs, request_digest, unheld, verified
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.objects import MethodRefused
from bftfs.qu.reads import stored_histories
from bftfs.qu.reply import Reply, signed_statement
from bftfs.qu.request import Link, Operation, Request
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.qu.setup import Setup, setup_from_classes
from bftfs.qu.timestamp import INITIAL, ZERO, Timestamp


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
    #: The candidate the request sets up (at each of its objects), once it has the
    #: versions: a later request conditioned on it waits for it here rather than syncing
    #: it (``node/qu_server.py``).
    lt: Timestamp | None = None


@dataclass(frozen=True)
class OverQuota:
    """Result of an update refused for its sender's quota (nothing was written): its new
    states are larger than those they replace by ``grows`` bytes and the sender, charged
    ``used`` bytes here, would pass ``quota`` (node/limits.py)."""

    used: int
    grows: int
    quota: int


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


def _stale(cfg: ReplicaConfig, oid: int, s: int, e: OHSEntry) -> bool:
    """Whether server ``s``'s history ``e`` is authenticated under its ended key."""
    old = cfg.ended_key_for(s)
    return old is not None and auth_entry_ok(oid, e.rh, e.auth, cfg.me, old)


def cull(
    cfg: ReplicaConfig, mohs: Mapping[int, Mapping[int, OHSEntry]]
) -> tuple[dict[int, dict[int, OHSEntry]], tuple[tuple[int, ...], ...]]:
    """Lines 1001-1002: the multi-OHS without the histories this server cannot validate.

    A history authenticated under the ended key of a replaced server
    (``ReplicaConfig.ended_key_for``: a client's cached copy of what the old machine
    served) is left out too, but not reported: it is stale, not forged, and the client
    must not take the server's new machine for a malevolent one.

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
            elif not _stale(cfg, oid, s, e):
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


def _retrieve(kv: KV, oid: int, lt: Timestamp, synced: Synced) -> tuple[bytes | None, bytes] | None:
    """The state and applied table at ``lt`` (line 1011), or None if not here."""
    if lt == ZERO:
        return None, schema.EMPTY_APPLIED
    v = schema.load_contents(kv, oid, lt)
    if v is not None and v[0] != schema.BARRIER:
        return v[1], v[2]
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
        answer = cfg.registry.query(
            req.op.method, _states({oid: got[0]}), req.op.arg, req.client, {oid: got[1]}
        )
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
    moved: bool = False,
    fetched: Mapping[Timestamp, bytes] | None = None,
) -> Reply | NeedSync | NeedProofs | OverQuota | ClockAhead:
    """One ``s_request`` (:func:`_handle_request`); an OK reply to an update of a method
    of the cross-group commit (:attr:`~bftfs.qu.objects.Method.txn`) signed by this node
    (``cfg.signer``) over :func:`~bftfs.qu.reply.signed_statement`: what a certificate is
    made of (docs/layout.md, "Certificates")."""
    res = _handle_request(kv, cfg, sender, req, synced, now_ns, quota, max_ahead_ns, moved, fetched)
    op = req.op
    if cfg.signer is None or op is None or op.query or not isinstance(res, Reply):
        return res
    m = cfg.registry.get(op.method)
    if m is None or not m.txn or res.status is not ReplyStatus.OK or res.lt is None:
        return res
    if res.type != OpType.METHOD.value:
        return res
    stmt = signed_statement(op.method, req.objects, res.lt, res.answer)
    return dataclasses.replace(res, sig=cfg.signer(stmt))


def _handle_request(
    kv: KV,
    cfg: ReplicaConfig,
    sender: int,
    req: Request,
    synced: Synced | None = None,
    now_ns: int = 0,
    quota: int | None = None,
    max_ahead_ns: int | None = None,
    moved: bool = False,
    fetched: Mapping[Timestamp, bytes] | None = None,
) -> Reply | NeedSync | NeedProofs | OverQuota | ClockAhead:
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
        moved: this server is frozen for the request's objects (``node/generation.py``,
            ``node/moves.py``): a client's own update but ``fs.release``, and its own query
            but the move's reads, are refused ``moved``; repairs run.
        fetched: stored requests fetched for a previous :class:`NeedProofs`.

    Returns:
        The reply, or :class:`NeedSync`, :class:`NeedProofs`, :class:`OverQuota` or
        :class:`ClockAhead` (nothing was written).
    """
    synced = synced or {}
    mohs, all_culled = cull(cfg, req.mohs)
    culled = tuple(c for oid, c in zip(sorted(mohs), all_culled, strict=True) if oid in req.objects)
    step = _Step(kv, cfg, sender, req, culled)
    set_up = _set_up(step, mohs, fetched)
    if isinstance(set_up, Reply | NeedProofs):
        return set_up
    su, links = set_up
    early = _refused_repair(step, su) or _not_method(step, su) or _repeated(step, su)
    early = early or (_moved(step, su) if moved else None)
    if early is not None:
        return early
    # Step 6, currency (line 1007): nothing here newer than the set-up's LTcurrent.
    rhs = {oid: schema.load_rh(kv, oid)[0] for oid in req.objects}
    if any(newest(rhs[oid]) > su.current[oid] for oid in req.objects):
        return step.not_current("not current")

    # Steps 7-8: a barrier needs no version; a copy or a method needs the conditioned-on ones.
    stored = Request(req.client, req.objects, mohs, req.op, None, links)
    if su.type is OpType.BARRIER:
        return accept(kv, cfg, stored, su, rhs, culled, {}, {}, None, now_ns, sender)
    got = _conditioned_on(step, su, mohs, synced)
    if not isinstance(got, dict):
        return got
    if su.type is OpType.COPY:
        return accept(kv, cfg, stored, su, rhs, culled, got, synced, None, now_ns, sender)
    op = req.op
    if op is None:  # unreachable: METHOD without operation was answered above
        return step.reply(ReplyStatus.FAIL, why="nothing to repair")
    ahead = _clock_ahead(step, op, now_ns, max_ahead_ns)
    if ahead is not None:
        return ahead
    if op.query:
        return _query(step, su, op, got)
    ran = _update(step, su, op, got, quota)
    if not isinstance(ran, tuple):
        return ran
    return accept(kv, cfg, stored, su, rhs, culled, ran[0], synced, ran[1], now_ns, sender)


@dataclass(frozen=True)
class _Step:
    """One request at this server: what each stage of :func:`handle_request` reads."""

    kv: KV
    cfg: ReplicaConfig
    sender: int
    req: Request
    #: Per operated object, the servers whose history was culled from the request's OHS.
    culled: tuple[tuple[int, ...], ...]

    def reply(self, status: ReplyStatus, **kw: Any) -> Reply:
        """A reply that writes nothing: it carries this server's histories as they are."""
        return Reply(
            status,
            hist=stored_histories(self.kv, self.cfg, self.req.objects),
            culled=self.culled,
            **kw,
        )

    def not_current(self, why: str) -> Reply:
        """FAIL, with the optimistic query's answer if there is one (L2526-2536)."""
        answer, at = _optimistic_query(self.kv, self.cfg, self.req)
        return self.reply(ReplyStatus.FAIL, answer=answer, at=at, why=why)


def _set_up(
    step: _Step,
    mohs: Mapping[int, Mapping[int, OHSEntry]],
    fetched: Mapping[Timestamp, bytes] | None = None,
) -> tuple[Setup, tuple[Link, ...]] | Reply | NeedProofs:
    """Steps 2-3 (line 1004): the request's links verified, the culled multi-OHS classified
    and the candidate set up; or the reply when a link does not verify, deduction needs
    more, or logical time ran out; or the stored requests to fetch for links sent without
    proofs (once: ``fetched`` is what was)."""
    req, th = step.req, step.cfg.th
    links: tuple[Link, ...] = ()
    if req.links:

        def own(lt: Timestamp) -> bytes | None:
            return (fetched or {}).get(lt) or schema.load_request_packed(step.kv, lt)

        missing = unheld(req.links, step.cfg.known, own) if fetched is None else ()
        if 0 < len(missing) <= MAX_FETCHED:
            return NeedProofs(missing)
        try:
            facts = verified(req.links, th, own, step.cfg.known)
        except LinkError as e:
            return step.reply(ReplyStatus.REFUSED, why=str(e))
        links = tuple(Link(oid, lt, co) for (oid, lt), co in sorted(facts.items()))
    need, wanted, digest, classes = _classified(
        th,
        req.objects,
        tuple(
            (oid, tuple((s, e.rh) for s, e in sorted(ohs.items())))
            for oid, ohs in sorted(mohs.items())
        ),
        links,
    )
    if need:
        return step.reply(ReplyStatus.NEED, need=tuple(sorted(need)), why="deduction needs objects")
    if wanted:
        return step.reply(ReplyStatus.NEED, why="deduction needs conditioned-on links")
    op_bytes = req.op.canonical() if req.op else None
    su = setup_from_classes(classes, req.client, op_bytes, digest, req.objects)
    if su is None:
        return step.reply(ReplyStatus.REFUSED, why="logical time exhausted")
    return su, links


def _refused_repair(step: _Step, su: Setup) -> Reply | None:
    """Step 4 (L2561-2570): a request on another client's behalf is an inline repair of
    its candidate, refused unless its evidence shows that candidate at ``b + 1`` servers."""
    req, th = step.req, step.cfg.th
    if req.client == step.sender:
        return None
    if req.evidence is None or (req.op is not None and req.op.query):
        return step.reply(ReplyStatus.REFUSED, why="client id is not the sender's")
    ev, _ = cull(step.cfg, req.evidence)
    target = su.candidates[req.objects[0]]
    if View(ev, th).order(req.objects[0], target) < th.b + 1:
        return step.reply(ReplyStatus.REFUSED, why="inline repair without evidence")
    return None


#: The updates a frozen server takes from a client for itself: a lease given back, a
#: transaction begun before the freeze ended (its intent keeps the object from moving).
MOVED_EXEMPT = frozenset({"fs.release", "txn.decide", "txn.finish"})
#: The queries a frozen server answers a client: the move's reads of an object's state
#: (``fs/generations/routers.py``); any other comes from a mount that has not taken the
#: view yet, which would read a state the new generation may have changed since.
MOVED_QUERIES = frozenset({"fs.state", "fs.export"})


def _moved(step: _Step, su: Setup) -> Reply | None:
    """A frozen server's refusal of an operation its sender runs for itself (not a barrier,
    a copy or an inline repair): an update but ``fs.release``, or a query but the move's
    read, on the latest version (b + 1 agree: refused)."""
    op = step.req.op
    if op is None or step.req.client != step.sender:
        return None
    if op.method in (MOVED_QUERIES if op.query else MOVED_EXEMPT):
        return None
    return step.reply(ReplyStatus.REFUSED, why="moved", at=su.at())


def _not_method(step: _Step, su: Setup) -> Reply | None:
    """Operations never turn into repairs (module docstring): an operation the OHS does not
    classify METHOD fails, and so does a repair request when there is nothing to repair."""
    if step.req.op is not None and su.type is not OpType.METHOD:
        return step.not_current("not current: " + su.type.value)
    if step.req.op is None and su.type is OpType.METHOD:
        return step.reply(ReplyStatus.FAIL, why="nothing to repair")
    return None


def _repeated(step: _Step, su: Setup) -> Reply | None:
    """Step 5, a repeated request (L2580-2583): answered from the stored version, before
    the currency check (which it would fail, having moved the history on)."""
    if step.req.op is not None and step.req.op.query:
        return None
    for oid in step.req.objects:
        done = schema.version_accepted(step.kv, oid, su.lt)
        if done is not None:
            kind, answer = done
            return step.reply(ReplyStatus.OK, type=kind, lt=su.lt, answer=answer, at=su.at())
    return None


def _conditioned_on(
    step: _Step, su: Setup, mohs: Mapping[int, Mapping[int, OHSEntry]], synced: Synced
) -> dict[int, tuple[bytes | None, bytes]] | NeedSync | Reply:
    """Step 7 (lines 1010-1014): each operated object's conditioned-on version (state and
    applied table); :class:`NeedSync` naming the hosts of those missing here, or a refusal
    for a forgotten object."""
    kv, req = step.kv, step.req
    got: dict[int, tuple[bytes | None, bytes]] = {}
    wants = []
    for oid in req.objects:
        lt_co = su.candidates[oid].lt_co
        x = _retrieve(kv, oid, lt_co, synced)
        if req.op is not None and (x is None or lt_co == ZERO) and schema.is_forgotten(kv, oid):
            # A forgotten object: the version an operation on it would need is gone from
            # every server (no object sync can find it), and its id is never an object again.
            return step.reply(ReplyStatus.REFUSED, why="forgotten", at=su.at())
        if x is None:
            hosts = tuple(
                s
                for s, e in sorted(mohs[oid].items())
                if s != step.cfg.me and any(c.lt == lt_co for c in e.rh)
            )
            wants.append(SyncWant(oid, lt_co, hosts))
        else:
            got[oid] = x
    if wants:
        return NeedSync(tuple(wants), su.lt)
    return got


def _clock_ahead(
    step: _Step, op: Operation, now_ns: int, max_ahead_ns: int | None
) -> ClockAhead | None:
    """A client's own update declaring a clock too far past this server's.  Like the quota,
    judged by this server alone and never on an inline repair: a request correct servers
    accepted is not refused when it is re-run later."""
    if step.req.client != step.sender or max_ahead_ns is None or op.query:
        return None
    return clock_off(step.cfg.registry, op.method, op.arg, now_ns, max_ahead_ns)


def _query(
    step: _Step, su: Setup, op: Operation, got: Mapping[int, tuple[bytes | None, bytes]]
) -> Reply:
    """Step 8 for a query: its answer on the conditioned-on versions (nothing is written)."""
    states = _states({oid: got[oid][0] for oid in step.req.objects})
    try:
        applied = {oid: got[oid][1] for oid in step.req.objects}
        answer = step.cfg.registry.query(op.method, states, op.arg, step.req.client, applied)
    except MethodRefused as e:
        return step.reply(ReplyStatus.REFUSED, why=e.code, at=su.at())
    return step.reply(ReplyStatus.OK, type=OpType.METHOD.value, answer=answer, at=su.at())


def _update(
    step: _Step,
    su: Setup,
    op: Operation,
    got: Mapping[int, tuple[bytes | None, bytes]],
    quota: int | None,
) -> tuple[dict[int, tuple[bytes | None, bytes]], Any] | Reply | OverQuota:
    """Step 8 for an update: the new versions (state and applied table per object) and the
    answer; the method is not re-run if the applied table shows it ran in this
    conditioned-on chain already (module docstring)."""
    req, objects = step.req, step.req.objects
    states = _states({oid: got[oid][0] for oid in objects})
    done = next((o for o in objects if applied_seq(got[o][1], req.client) == op.seq), None)
    if done is not None:
        answer = applied_entry(got[done][1], req.client)[1]
        new_states: Mapping[int, bytes | None] = {oid: got[oid][0] for oid in objects}
    else:
        try:
            new_states, answer = step.cfg.registry.update(
                op.method, states, op.arg, req.client, su.lt.encode()
            )
        except MethodRefused as e:
            return step.reply(ReplyStatus.REFUSED, why=e.code, at=su.at())
        if req.client == step.sender:  # an inline repair is never refused
            old = {o: got[o][0] for o in objects}
            refused = _over_quota(step.kv, step.sender, quota, old, new_states)
            if refused is not None:
                return refused
    installed = step.cfg.registry.installed_applied(op.method, op.arg)
    if installed is not None:
        table = installed_table(installed)
        if table is None:
            return step.reply(ReplyStatus.REFUSED, why="invalid", at=su.at())
        if req.client not in table:
            table = {**table, req.client: [op.seq, answer]}
        moved_table = canonical_map(table)
        return {oid: (new_states[oid], moved_table) for oid in objects}, answer
    # ``answer`` is normalised by the registry (or read back from a table): packed once,
    # it is what canonical encoding gives for it in every object's table.
    entry = pack([op.seq, answer])
    return {
        oid: (new_states[oid], set_entry(got[oid][1], req.client, [op.seq, answer], entry))
        for oid in objects
    }, answer
