"""Leases as Q/U state (issue 33): who may cache an object, until when, and its recall.

A client that holds a **lease** on an object may answer from what it knows of the object
without asking the servers: a *shared* lease (:data:`SHARED`, many holders) covers reads, an
*exclusive* one (:data:`EXCLUSIVE`, one holder) also the holder's buffered changes.  The
record lives in the object's state, so it is as Byzantine-tolerant as the object:

- ``ls``: the holders, ``[[client, kind, expiry, mount], ...]`` in client order.  ``client``
  is the principal id of the request that took the lease (the Q/U timestamp's writer, which
  nodes authenticate or prove by b + 1 hosts for a repair), never an argument: nobody can
  take or give up a lease in another client's name.  ``mount`` (argument ``lm``, 0 when
  absent, as in records older than it) tells apart the mounts of one client identity: two
  laptops with the same bundle are two holders, each recalled by the other's update and
  refused its queries under the other's exclusive lease.  It is the client's own claim,
  so it can only mislead that client's other mounts.
- ``lr``: a pending recall, ``{"u": until, "q": [[client, mount, time], ...]}`` (older
  records: ``[requester, time, mount, until]``, read as one waiting client): the clients
  waiting for the object, in the order they first recalled it, each with the mount and
  time of that recall, and ``until``, the last expiry of the leases they recalled.  While
  it stands no lease is granted or renewed (a holder asked to release cannot renew), but
  to the one client waiting, once no other client's lease is left (its turn, as its
  change landing is).  A client's entry goes only when *it* has had its turn: its change
  lands (:func:`leased`), it takes a lease so, it says it is done (``ld``: a query
  answered after its recall, an update refused for another reason), or
  :data:`RECALL_GRACE` after ``until`` (a requester that never came back).  Nothing the
  holder does removes it: neither its release (whose time the holder chooses) nor its
  change, nor a recall of its own (it queues behind those waiting before it; the client's
  other mounts are the same client: their leases alone queue nobody).  So a recalled
  holder cannot take the object back ahead of the requester's retry, and the requester
  waits at most for the leases that stood when it recalled: one term.
- ``lq``: ``[writer, until]``, set when a change lands more than :data:`SLOW_RELEASE`
  after its writer first recalled the object: no other client is granted a lease on it
  until then (:func:`_quiet_after`), so a holder that does not release costs the writer
  one term per object it keeps changing, not one per change.

Methods read no clock (``bftfs.qu.objects``).  Every lease-aware update carries the
caller's time ``lt`` (ns); nodes refuse an ``lt`` more than :data:`LEASE_SKEW` ahead of
their clock, and for :func:`fs_lease` also more than that behind (``Method.lease_clock``), so
a lease runs, on every correct node, from within the skew of when it was granted, and
nobody can declare a time that ends another client's lease early.  A holder counts its
lease from before it asked, less :data:`HOLDER_MARGIN`, so it stops using it before any
correct node could let a conflicting update through.

**Conflicts** (:func:`leased`, wrapped around every update of the ``fs`` type): an update by
client C that would change an object on which another client holds a lease live at C's
``lt`` (or any lease, when the update carries no ``lt``) is refused ``leased``; nothing
changes.  C then asks for a recall (:func:`fs_recall`, which records ``lr``); every correct
node that takes it pushes a recall to the holders (``node/recalls.py``), which write back
what they buffered and release (:func:`fs_release`); C retries.  A holder that never releases
(dead, cut off, Byzantine) is bounded by its expiry, which the recall keeps it from
renewing until the requester has had its turn: at most :data:`MAX_TERM`.  Updates that
change nothing (a refused create, the ancestors a rename only reads) never conflict.
Queries by another client are refused ``leased`` too while an *exclusive* lease stands
(:func:`guarded`): its holder may have buffered changes the servers do not hold yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bftfs.fsobjects.limits import MAX_TIME, MIN_TIME
from bftfs.fsobjects.pubstate import PUB_KEY, TOKENS, published_for, query_tokens, with_wire_tokens
from bftfs.fsobjects.sessions import SLOT, SLOTS, live_generation, pin, session_oid, session_state
from bftfs.fsobjects.state import check_arg, check_int, node_state
from bftfs.qu.objects import MethodRefused, States

#: Lease kinds.
SHARED = 1
EXCLUSIVE = 2
#: Longest lease a client may ask for (ns).
MAX_TERM = 120 * 10**9
#: How far a lease time ``lt`` may lie from a node's clock (ns): ahead for every update
#: (so no one ends another's lease early), behind too for a grant (so a lease does not end
#: on the nodes before its holder stops using it).
LEASE_SKEW = 2 * 10**9
#: What a holder takes off its lease's term: the skew both ways and a second for its own
#: clock's drift and the time between reading it and the nodes' check.
HOLDER_MARGIN = 2 * LEASE_SKEW + 10**9
#: The argument key of the caller's lease time.
LEASE_TIME = "lt"
#: The argument key of the calling mount's number (``Meta.lease_token``) in an update; a
#: query carries it in an envelope, ``{MOUNT: m, QUERY_ARG: arg}`` (:func:`tag_query`).
MOUNT = "lm"
QUERY_ARG = "q"
#: The argument key of an update asking that the new files and directories it makes be
#: leased to the caller exclusively, until the end of its exclusive lease on another object of the
#: update (their directory): :func:`_inherited`.
INHERIT = "lx"
#: The argument key of an update asking that the new directory it makes be leased to the
#: caller exclusively for this many ns from its ``lt`` (at most :data:`MAX_TERM`), when it
#: holds no lease it could inherit (:func:`_granted_new`).  Such an update's ``lt`` is
#: checked behind too (``Method.grants_with``).
NEW_LEASE = "ln"
#: Mount numbers are below this (``fsobjects.limits.MAX_OID``'s range, as lease tokens).
MAX_MOUNT = 2**63 - 1
#: How long a recall outlives the leases it recalled (ns): time for the requester's
#: retry, which backs off at most 0.5 s, to land first when their holders did not release.
RECALL_GRACE = 10 * 10**9
#: How long after a change of an object whose holders were slow to release lands no client
#: but its writer is granted a lease on it (ns): :func:`_quiet_after`.  Longer than the
#: default term, so a writer that keeps changing the object keeps it free of their leases.
QUIET = 30 * 10**9
#: How long a writer may wait after its first recall before its change counts as one the
#: holders were slow for (ns): a correct holder releases within a few rounds.
SLOW_RELEASE = 2 * 10**9
#: The state key of that quiet time: ``[writer's client id, until (ns)]``.
QUIET_KEY = "lq"
#: The state keys of the lease records (carried over by every change, stripped by a move).
RECORD_KEYS = ("ls", "lr", QUIET_KEY, PUB_KEY)
#: The argument key of a recall saying the caller waits no longer (its query was
#: answered, its update refused for another reason): its entry goes, nothing is recalled.
DONE = "ld"
#: Most clients one recall record queues; a further one's recall is pushed, not queued.
MAX_WAITING = 64
#: Most holders one object records; a further client is refused ``busy`` (it runs uncached).
MAX_HOLDERS = 32
#: Most objects one recall push names (nodes send no more; a holder takes more as
#: malformed).
MAX_RECALLED = 64

#: The expiry of a lease bound to its holder's session (``fsobjects.sessions``): it ends
#: when the session does, so it counts as live wherever the session is not read (a recall
#: with the session among its objects pins it to the session's end, :func:`_pin_sessions`).
SESSION = MAX_TIME
#: The argument key of a shared lease asked bound to the caller's session in slot ``s``
#: (that session one of the update's objects, live at ``lt``).
BOUND = "sb"

Holder = list[int]  # [client, kind, expiry, mount] (+ [slot, generation] when bound)
Waiting = list[int]  # [client, mount, time of its first recall]
#: Who holds a lease: the client's principal id and its mount's number.
Who = tuple[int, int]


def mount_of(a: Any) -> int:
    """The calling mount's number in an argument map (0: none given)."""
    if not isinstance(a, Mapping) or a.get(MOUNT) is None:
        return 0
    return check_int(dict(a), MOUNT, 0, MAX_MOUNT)


def who(h: Holder) -> Who:
    """A holder record's client and mount (records without a mount are mount 0)."""
    return h[0], (h[3] if len(h) > 3 else 0)


def tag_query(arg: Any, mount: int, tokens: dict[int, int] | None = None) -> dict[str, Any]:
    """A query's argument with the asking mount's number, for :func:`guarded`, and the
    publication tokens it reads with (``fsobjects/pubstate.py``)."""
    tagged, wire = {MOUNT: mount, QUERY_ARG: arg}, with_wire_tokens(tokens)
    return tagged if wire is None else {**tagged, TOKENS: wire}


def untag_query(arg: Any) -> tuple[Any, int]:
    """The argument a query's method takes and the asking mount (0 for an untagged one)."""
    if (
        isinstance(arg, dict)
        and MOUNT in arg
        and QUERY_ARG in arg
        and (len(arg) == 2 or (len(arg) == 3 and TOKENS in arg))
    ):
        return arg[QUERY_ARG], mount_of(arg)
    return arg, 0


def _lease_time(a: Mapping[str, Any]) -> int | None:
    """The caller's ``lt``, or None when it sent none (then every lease counts as live)."""
    if a.get(LEASE_TIME) is None:
        return None
    return check_int(dict(a), LEASE_TIME, MIN_TIME, MAX_TIME)


def holders(state: Any) -> list[Holder]:
    """The lease records of an object state (``[]`` for none, or not an object)."""
    if not isinstance(state, dict):
        return []
    got = state.get("ls")
    return [list(h) for h in got] if isinstance(got, list) else []


def live(state: Any, at: int | None, *, other_than: Who | None = None) -> list[Holder]:
    """The holders whose lease runs at ``at`` (all of them for None), but ``other_than``."""
    return [h for h in holders(state) if who(h) != other_than and (at is None or h[2] > at)]


def _tidy(state: dict[str, Any], at: int | None) -> None:
    """Drop the leases that ended by ``at``, and the recall once the grace of those waiting
    after the recalled leases' end has passed."""
    kept = holders(state) if at is None else [h for h in holders(state) if h[2] > at]
    if kept:
        state["ls"] = kept
    else:
        state.pop("ls", None)
    if quiet(state, at) is None:
        state.pop(QUIET_KEY, None)
    until, queue = _recall_record(state)
    if _gave_up(until, at):
        _set_record(state, until, [])
    else:
        _set_record(state, until, queue)


def _recall_record(state: Any) -> tuple[int | None, list[Waiting]]:
    """The recall record's ``until`` (None: an older record without it) and its waiting
    clients in order (``[]``: no recall).  An older record names one client, mount 0 when
    it lacks the mount."""
    lr = state.get("lr") if isinstance(state, dict) else None
    if isinstance(lr, dict):
        q = lr.get("q")
        queue = (
            [list(w) for w in q if isinstance(w, list) and len(w) == 3]
            if isinstance(q, list)
            else []
        )
        until = lr.get("u")
        return (until if isinstance(until, int) else None), queue
    if isinstance(lr, list) and len(lr) >= 2:
        mount = lr[2] if len(lr) >= 3 else 0
        return (lr[3] if len(lr) >= 4 else None), [[lr[0], mount, lr[1]]]
    return None, []


def _set_record(state: dict[str, Any], until: int | None, queue: list[Waiting]) -> None:
    """Store the recall record (none when nobody waits)."""
    if queue:
        state["lr"] = {"u": until, "q": queue}
    else:
        state.pop("lr", None)


def _gave_up(until: int | None, at: int | None) -> bool:
    """Whether those waiting are past their grace at ``at``: :data:`RECALL_GRACE` after the
    recalled leases' end ``until`` (every recall that queues or extends comes while one of
    them runs, so before it; an older record without ``until`` counts as past at once;
    with no time, nobody is)."""
    if at is None:
        return False
    return until is None or at >= until + RECALL_GRACE


def _served(state: dict[str, Any], client: int) -> None:
    """``client`` has had its turn (its change landed, it took a lease, it is done): its
    entry goes, the others keep their places."""
    until, queue = _recall_record(state)
    _set_record(state, until, [w for w in queue if w[0] != client])


def quiet(state: Any, at: int | None) -> int | None:
    """The client whose change keeps others' leases off the object at ``at`` (None: no
    one; with no time, a recorded one counts): :func:`_quiet_after`."""
    lq = state.get(QUIET_KEY) if isinstance(state, dict) else None
    if not (isinstance(lq, list) and len(lq) == 2 and all(isinstance(x, int) for x in lq)):
        return None
    return lq[0] if at is None or at < lq[1] else None


def _quiet_after(state: dict[str, Any], old: Any, caller: int, at: int | None) -> None:
    """A writer's turn keeps others' leases off (issue 64): when ``caller``'s change lands
    on an object it recalled more than :data:`SLOW_RELEASE` before (its entry in ``lr``:
    the holders did not release in time, or at all), or that its own earlier such change
    keeps quiet, no other client is granted a lease on it for :data:`QUIET` from ``at``
    (``fs_lease`` refuses ``recalled``).  Without it a holder that never releases and asks
    again as its term ends (or releases just before) costs the writer a term at each of
    its changes; with it, one per object while the writer keeps changing it.  A holder
    that releases promptly takes its lease back at once, as before.  Others' queries and
    updates are served meanwhile: only their caching waits, as a cooled object's does
    (``fs/leases/contention.py``)."""
    if at is None:
        return
    _, queue = _recall_record(old)
    first = min((w[2] for w in queue if w[0] == caller), default=None)
    if (first is not None and at - first > SLOW_RELEASE) or quiet(old, at) == caller:
        state[QUIET_KEY] = [caller, min(at + QUIET, MAX_TIME)]


def bound(h: Holder) -> tuple[int, int] | None:
    """A holder record's session slot and generation when it is bound to its session (its
    expiry :data:`SESSION`), else None."""
    if len(h) >= 6 and h[2] == SESSION:
        return h[4], h[5]
    return None


def session_holders(state: Any) -> list[list[int]]:
    """The holders of ``state`` whose lease is bound to a session, as ``[client, mount,
    slot]``: a requester recalls them with their sessions (``fs/leases/sessions.py``)."""
    out = []
    for h in holders(state):
        b = bound(h)
        if b is not None:
            out.append([h[0], who(h)[1], b[0]])
    return out


def _other_clients(state: Any, at: int | None, client: int) -> list[Holder]:
    """The live leases at ``at`` of clients other than ``client`` (its other mounts are
    not another requester's business)."""
    return [h for h in live(state, at) if h[0] != client]


def _without_leases(state: Any) -> Any:
    if isinstance(state, dict) and any(k in state for k in RECORD_KEYS):
        return {k: v for k, v in state.items() if k not in RECORD_KEYS}
    return state


def leased(fn: Callable[[States, Any], tuple[Mapping[int, Any], Any]]) -> Callable[..., Any]:
    """``fn`` (an ``fs`` update) with the lease rule: refused ``leased`` when it would change
    an object another client holds a live lease on; the lease records carried over.

    The change is judged on the states without their lease records, so the caller's own
    leases and the ancestors a rename only reads are never in the way."""

    def update(states: States, arg: Any, caller: int = 0) -> tuple[dict[int, Any], Any]:
        at = _lease_time(arg) if isinstance(arg, Mapping) else None
        me = (caller, mount_of(arg))
        made, answer = fn(states, arg)
        new = dict(made)
        inherit = isinstance(arg, Mapping) and bool(arg.get(INHERIT))
        fresh = _new_lease_term(arg)
        for oid, state in made.items():
            old = states.get(oid)
            if inherit and not isinstance(old, dict):
                new[oid] = _inherited(states, state, me, at)
                continue
            if fresh is not None and not isinstance(old, dict):
                new[oid] = _granted_new(state, me, at, fresh)
                continue
            if _without_leases(state) == _without_leases(old):
                new[oid] = old
                continue
            if live(old, at, other_than=me):
                raise MethodRefused("leased", f"object {oid} is leased to another client")
            if isinstance(state, dict) and isinstance(old, dict):
                state = dict(state)
                for key in RECORD_KEYS:
                    if key in old:
                        state[key] = old[key]
                    else:
                        state.pop(key, None)
                _tidy(state, at)
                _quiet_after(state, old, caller, at)
                _served(state, caller)  # the change its recall was for has landed
                new[oid] = state
        return new, answer

    update.__doc__ = fn.__doc__
    return update


def _inherited(states: States, state: Any, me: Who, at: int | None) -> Any:
    """A new object ``state`` with the caller's exclusive lease (``INHERIT``), if it is a
    file or a directory and the caller holds a live exclusive lease on an object of the
    update (its directory, under which it made the file): until that lease's end.  Nobody
    else can hold a lease on an object that did not exist, and the grant ends no later
    than one the caller already had, so it takes nothing from anyone; the holder's writes
    to the file then stay in its mount as its creates did (``fs/writeback/held.py``), and its
    creates in the directory go to write-back at once (``fs/names/namespace.py``, ``mkdir``).
    Otherwise the state as made.

    Also while that lease is being recalled: the holder sends what it held back for the
    directory (a deferred ``mkdir``, creates) when the recall reaches it, and cannot know
    whether the recall reached the nodes first.  It takes the new object as leased, and
    keeps what it makes in it in write-back; had the nodes not leased the object, another
    client's look into it would not be refused and could miss those files (a window
    found by reading, not seen: the empty new directory a ``diff -r`` on another mount
    once found came from the release order, ``Releases.after``).  The holder gives the
    new object's lease up with the directory's (``Leases.inherit``), so the recall still
    ends; a look into the new object before that recalls it too."""
    if at is None or not isinstance(state, dict) or state.get("k") not in ("f", "d"):
        return state
    ends = [
        h[2]
        for parent in states.values()
        if isinstance(parent, dict)
        for h in holders(parent)
        if who(h) == me and h[1] == EXCLUSIVE and h[2] > at
    ]
    if not ends:
        return state
    return {**state, "ls": [[me[0], EXCLUSIVE, min(ends), me[1]]]}


def _new_lease_term(arg: Any) -> int | None:
    """The term (ns) of the lease an update asks on what it makes (:data:`NEW_LEASE`), or
    None when it asks none."""
    if not isinstance(arg, Mapping) or arg.get(NEW_LEASE) is None:
        return None
    return check_int(dict(arg), NEW_LEASE, 1, MAX_TERM)


def _granted_new(state: Any, me: Who, at: int | None, term: int) -> Any:
    """A new directory ``state`` leased to the caller exclusively until ``at + term``
    (:data:`NEW_LEASE`).  Nobody else can hold a lease on an object that did not exist,
    so the grant takes nothing from anyone, as :func:`_inherited`'s; unlike that one it
    needs no lease on the parent, so its ``lt`` is checked against every node's clock
    both ways, as a lease's is.  Other states are left as made."""
    if at is None or not isinstance(state, dict) or state.get("k") != "d":
        return state
    return {**state, "ls": [[me[0], EXCLUSIVE, min(at + term, MAX_TIME), me[1]]]}


def guarded(fn: Callable[[States, Any], Any]) -> Callable[..., Any]:
    """``fn`` (an ``fs`` query) under exclusive leases: refused ``leased`` when another
    client holds an exclusive lease on one of its objects, whose holder may have changes
    buffered (directory write-back, ``fs/writeback/``) that the answer would not show.
    The asker then asks the holder to publish (``fsobjects/publish.py``: it sends what it
    buffered and keeps its lease) and asks again with its token, which passes once the
    holder has published up to it; or it recalls the lease, as for an update.

    A query carries no lease time, so every exclusive record counts until an update tidies
    it (the asker's recall does: records of leases that ended go then).  A client that
    does not honour the refusal reads only what the servers hold: it can hurt nobody but
    itself.  History reads (``fs.peek``, ``fs.snapshots``) are not guarded: the past does
    not wait for a holder."""

    def query(states: States, arg: Any, caller: int = 0) -> Any:
        inner, mount = untag_query(arg)
        tokens = query_tokens(arg) if inner is not arg else {}
        for oid, state in states.items():
            if any(
                h[1] == EXCLUSIVE and who(h) != (caller, mount) for h in holders(state)
            ) and not published_for(state, (caller, mount), tokens.get(oid)):
                raise MethodRefused("leased", f"object {oid} is leased to another client")
        return fn(states, inner)

    query.__doc__ = fn.__doc__
    return query


def fs_lease(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Take or renew the caller's lease of ``kind`` on each object until ``lt + term``.

    Refused ``recalled`` while a recall stands (nobody takes or renews a lease then, the
    holders asked to release first), but to the only client waiting once no other client's
    lease is left (its turn: its entry goes), ``leased`` when another client holds a live lease the
    kind conflicts with (an exclusive lease conflicts with every other), ``busy`` past
    :data:`MAX_HOLDERS`.  The caller's own earlier lease (of this mount) is replaced.  The
    answer: the expiry granted.

    With ``sb`` (:data:`BOUND`) the shared leases are bound to the caller's session in slot
    ``s``, which must be one of the objects and live at ``lt`` (a lease is never granted to
    a session the nodes consider ended) and is left as it is: the records' expiry is
    :data:`SESSION`, with the slot and the session's generation.  The answer: ``[end,
    generation, last recall number]`` of the session (a recall listed later with a
    higher number pinned this grant, one with a number up to it an earlier grant)."""
    a = check_arg(arg)
    me = (caller, mount_of(a))
    kind = check_int(a, "kind", SHARED, EXCLUSIVE)
    at = check_int(a, LEASE_TIME, MIN_TIME, MAX_TIME)
    expiry = min(at + check_int(a, "term", 1, MAX_TERM), MAX_TIME)
    new: dict[int, Any] = {}
    record: Holder = [caller, kind, expiry, me[1]]
    answer: Any = expiry
    if a.get(BOUND):
        sid, record, answer = _bound_record(states, a, me, kind, at)
        new[sid] = states[sid]
    for oid, state in states.items():
        if oid in new:
            continue
        s = node_state(state)
        _tidy(s, at)
        writer = quiet(s, at)
        if writer is not None and writer != caller:
            raise MethodRefused("recalled", f"object {oid} was just changed by a recaller")
        _, queue = _recall_record(s)
        if queue:
            if {w[0] for w in queue} != {caller} or _other_clients(s, at, caller):
                raise MethodRefused("recalled", f"object {oid} is being recalled")
            _served(s, caller)
        others = live(s, at, other_than=me)
        if others and (kind == EXCLUSIVE or any(h[1] == EXCLUSIVE for h in others)):
            raise MethodRefused("leased", f"object {oid} is leased to another client")
        if len(others) >= MAX_HOLDERS:
            raise MethodRefused("busy", f"object {oid} has {len(others)} lease holders")
        s["ls"] = sorted([*others, record])
        new[oid] = s
    return new, answer


def _bound_record(
    states: States, a: dict[str, Any], me: Who, kind: int, at: int
) -> tuple[int, Holder, Any]:
    """The caller's session an ``sb`` lease binds to (its id), the holder record and the
    answer (:func:`fs_lease`); refused ``invalid`` for an exclusive kind or a session not
    among the objects, ``session-ended`` for one not live at ``at``."""
    if kind != SHARED:
        raise MethodRefused("invalid", "only shared leases are bound to a session")
    slot = check_int(a, SLOT, 0, SLOTS - 1)
    sid = session_oid(me[0], me[1], slot)
    if sid not in states:
        raise MethodRefused("invalid", "the session is not an object of the request")
    sess = session_state(states[sid])
    if sess is None or sess["c"] != me[0] or not live_generation(sess, sess["g"], at):
        raise MethodRefused("session-ended", "the caller's session is not live")
    answer = [sess["e"], sess["g"], sess.get("q", 0)]
    return sid, [me[0], SHARED, SESSION, me[1], slot, sess["g"]], answer


def fs_release(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Give up the caller's lease on each object (also one that ended: harmless).  The
    recall stays: those waiting have their turn first (the module docstring).  The
    answer: None."""
    a = check_arg(arg)
    at = _lease_time(a)
    me = (caller, mount_of(a))
    new: dict[int, Any] = {}
    for oid, state in states.items():
        if state is None:
            new[oid] = None
            continue
        s = node_state(state)
        s["ls"] = [h for h in holders(s) if who(h) != me]
        _tidy(s, at)  # no holder left: the list goes
        new[oid] = s
    return new, None


def fs_recall(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Ask the other holders of live leases on each object to release: queues the caller
    in ``lr`` (no lease is granted or renewed from now on) when another client holds one,
    and answers ``[[oid, [holder ids]], ...]`` (no map: wire maps have string keys) for the
    objects that have any (its own other mounts too), which every node that took the
    update pushes a recall to (``node/recalls.py``: to every connection of each holder's
    client, so each of its mounts checks whether it is the one).  A caller already waiting
    keeps its place (its recall's time is renewed).  An object nobody else holds is left as
    it is.  With ``ld`` (:data:`DONE`) the caller's entry goes and nothing is recalled.

    A lease bound to a session whose session is among the objects is pinned to the
    session's end (:func:`_pin_sessions`); one whose session is not gets a third element
    in its object's item, ``[[client, mount, slot], ...]``: the requester recalls again
    with those sessions (``fs/leases/sessions.py``)."""
    a = check_arg(arg)
    at = check_int(a, LEASE_TIME, MIN_TIME, MAX_TIME)
    me = (caller, mount_of(a))
    done = bool(a.get(DONE))
    new: dict[int, Any] = {oid: st for oid, st in states.items() if session_state(st) is not None}
    out = []
    for oid, state in states.items():
        if oid in new:
            continue
        if state is None:  # an object the refused update would have made, or no session
            new[oid] = None
            continue
        s = node_state(state)
        if done:
            _tidy(s, at)
            _served(s, caller)
            new[oid] = s
            continue
        _pin_sessions(s, oid, states, new, at, me)
        _tidy(s, at)
        others = live(s, at, other_than=me)
        foreign = _other_clients(s, at, caller)
        if foreign:
            until, queue = _recall_record(s)
            ends = max([h[2] for h in foreign if bound(h) is None], default=at)
            until = ends if until is None else max(until, ends)
            if caller not in {w[0] for w in queue} and len(queue) < MAX_WAITING:
                queue.append([caller, me[1], at])
            _set_record(s, until, queue)
        if others:
            item: list[Any] = [oid, sorted({h[0] for h in others})]
            unpinned = [[h[0], who(h)[1], b[0]] for h in others if (b := bound(h)) is not None]
            if unpinned:
                item.append(unpinned)
            out.append(item)
        new[oid] = s
    return new, out


def _pin_sessions(
    s: dict[str, Any], oid: int, states: States, new: dict[int, Any], at: int, me: Who
) -> None:
    """Pin the leases on object ``oid`` (state ``s``) bound to a session that is among
    the recall's objects: a live one's expiry becomes the session's end, and the session
    (in ``new``) lists ``oid`` among its recalls (``sessions.pin``); one whose session
    ended, moved to another generation or is not a session at all is dropped.  Others'
    leases only: the caller's own are its to release."""
    kept = []
    for h in holders(s):
        b = bound(h)
        sid = None if b is None else session_oid(h[0], who(h)[1], b[0])
        if b is None or sid is None or sid not in states or who(h) == me:
            kept.append(h)
            continue
        sess, end = pin(new.get(sid), oid, b[1], at)
        if end is not None:
            new[sid] = sess
            kept.append([h[0], h[1], end, who(h)[1]])
    if kept:
        s["ls"] = sorted(kept)
    else:
        s.pop("ls", None)
