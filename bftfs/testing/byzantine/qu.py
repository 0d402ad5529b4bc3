"""Byzantine Q/U servers: the lies of the Q/U paper's fault model, as reply rewriters.

A behaviour is a plain function
``behaviour(server, sender, kind, payload, honest) -> reply payload``: ``honest()`` is what
the server would have answered (in wire form), and the behaviour returns what it answers
instead, or raises ``RemoteError`` to refuse.  Plain and synchronous, so the tier-1
in-memory cluster (``tests/qu_helpers.MemCluster``) runs them between deliveries without an
event loop; :func:`on_node` adapts one to a real node (the in-process cluster's
``FaultInjector.byzantine`` or a node process).  A behaviour marked ``with_keys`` also
receives the server's ``key_for`` and ``n``: it forges with the Byzantine server's own keys,
the strongest lie a server can tell (its authenticators are valid).

===========================  ============================================================
behaviour                    lie
===========================  ============================================================
``forge_higher``             a candidate far in the future in every history (stale MACs)
``forge_max_time``           a candidate at the largest logical time, validly authenticated
``forge_higher_signed``      ``forge_higher`` validly authenticated
``endless_barriers``         every request fails with a forged barrier newer than anything
``endless_barriers_signed``  the same, validly authenticated
``equivocate``               honest to even client ids, ``forge_higher_signed`` to odd ones
``withhold_from_odd``        never answers odd client (and node) ids
``bad_authenticator``        every MAC of its authenticators zeroed
``corrupt_own_mac``          only its own MAC zeroed (it culls its own history when presented)
``wrong_answer``             success with a made-up answer
``wrong_sync``               a made-up object state to object sync
``reject_everything``        every request refused
``claim_forgotten``          history reads (``qu.history``) of every object answered with
                             an empty history, validly authenticated (as if it had
                             forgotten everything: a lie against tombstones)
===========================  ============================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from bftfs.net.errors import RemoteError
from bftfs.net.server import HandlerError
from bftfs.qu.canon import canonical
from bftfs.qu.history import INITIAL_RH, make_authenticator, make_rh, rh_from_wire, rh_wire
from bftfs.qu.messages import KIND_FETCH, KIND_HISTORY, KIND_REQUEST
from bftfs.qu.request import Request
from bftfs.qu.timestamp import MAX_TIME, Candidate, Timestamp

if TYPE_CHECKING:
    from bftfs.node.service import Handler, RequestContext
    from bftfs.testing.byzantine import NodeWrapper
    from bftfs.testing.cluster import Cluster

#: ``(server, sender, kind, payload, honest[, key_for, n]) -> reply payload``.
Behaviour = Callable[..., Any]

#: Object sync between servers (``bftfs.node.qu_server``), a kind a lying server answers too.
KIND_SYNC = "qu.sync"
#: Every Q/U request kind a Byzantine server intercepts.
KINDS = (KIND_REQUEST, KIND_HISTORY, KIND_FETCH, KIND_SYNC)


def forge_higher(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Answer honestly, but claim a candidate far in the future in every history, under the
    stale authenticator of the honest history (honest servers cull it; see
    :func:`forge_higher_signed` for the valid-authenticator form)."""
    rep = honest()
    if kind != KIND_REQUEST or not isinstance(rep, dict):
        return rep
    return _with_forged(rep, barrier=False)


def endless_barriers(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Reject everything with a forged barrier newer than anything the client has seen."""
    rep = honest()
    if kind != KIND_REQUEST or not isinstance(rep, dict):
        return rep
    rep = _with_forged(rep, barrier=True)
    rep["st"] = "fail"
    return rep


def _with_forged(rep: dict, barrier: bool) -> dict:
    hist = []
    for rh_raw, auth in rep["h"]:
        rh = rh_from_wire(rh_raw)
        top = rh[0]
        t = top.lt.time + 1000
        fake = Candidate(Timestamp(t, barrier, 999, bytes([7]) * 32), top.lt, top.objects or (0,))
        hist.append([rh_wire(make_rh(list(rh) + [fake])), auth])  # stale authenticator
    rep = dict(rep)
    rep["h"] = hist
    return rep


def _signed(
    kind: str, payload: Any, rep: Any, n: int, key_for: Callable[[int], bytes], fake: Callable
) -> Any:
    """``rep`` with ``fake(oid, top)``'s candidate added to every history it returns, each
    authenticated with the server's own keys (so honest servers keep it)."""
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict) or "h" not in rep:
        return rep
    objects = Request.from_wire(payload, n).objects if kind == KIND_REQUEST else tuple(payload["o"])
    hist = []
    for oid, (rh_raw, _) in zip(objects, rep["h"], strict=True):
        rh = rh_from_wire(rh_raw)
        forged = make_rh([*rh, fake(oid, rh[0])])
        hist.append([rh_wire(forged), list(make_authenticator(oid, forged, n, key_for))])
    rep = dict(rep)
    rep["h"] = hist
    return rep


def claim_forgotten(
    server: int,
    sender: int,
    kind: str,
    payload: Any,
    honest: Callable,
    key_for: Callable[[int], bytes],
    n: int,
) -> Any:
    """Answer every history read (what servers ask each other before shrinking or
    forgetting a removed object) with empty histories under valid authenticators, as if
    this server had forgotten every object; everything else honestly."""
    rep = honest()
    if kind != KIND_HISTORY or not isinstance(rep, dict) or "h" not in rep:
        return rep
    empty = rh_wire(INITIAL_RH)
    rep = dict(rep)
    rep["h"] = [
        [empty, list(make_authenticator(oid, INITIAL_RH, n, key_for))] for oid in payload["o"]
    ]
    return rep


claim_forgotten.with_keys = True  # type: ignore[attr-defined]


def forge_higher_signed(
    server: int,
    sender: int,
    kind: str,
    payload: Any,
    honest: Callable,
    key_for: Callable[[int], bytes],
    n: int,
) -> Any:
    """:func:`forge_higher` under a *valid* authenticator: a candidate 1000 logical ticks
    above the newest, conditioned on it, in every history this server returns."""

    def fake(oid: int, top: Candidate) -> Candidate:
        return Candidate(Timestamp(top.lt.time + 1000, False, 999, bytes([7]) * 32), top.lt, (oid,))

    return _signed(kind, payload, honest(), n, key_for, fake)


forge_higher_signed.with_keys = True  # type: ignore[attr-defined]


def endless_barriers_signed(
    server: int,
    sender: int,
    kind: str,
    payload: Any,
    honest: Callable,
    key_for: Callable[[int], bytes],
    n: int,
) -> Any:
    """:func:`endless_barriers` under a *valid* authenticator: every answer is a refusal
    with a fresh barrier above the newest candidate, authenticated with the server's keys."""

    def fake(oid: int, top: Candidate) -> Candidate:
        return Candidate(Timestamp(top.lt.time + 1, True, 999, bytes([7]) * 32), top.lt, (oid,))

    rep = _signed(kind, payload, honest(), n, key_for, fake)
    if kind == KIND_REQUEST and isinstance(rep, dict):
        rep = dict(rep)
        rep["st"] = "fail"
    return rep


endless_barriers_signed.with_keys = True  # type: ignore[attr-defined]


def equivocate(
    server: int,
    sender: int,
    kind: str,
    payload: Any,
    honest: Callable,
    key_for: Callable[[int], bytes],
    n: int,
) -> Any:
    """Different histories to different clients: honest to clients of even id, a validly
    authenticated forged higher candidate to the others (each client's view is
    self-consistent; only comparing views would show the lie)."""
    if sender % 2 == 0:
        return honest()
    return forge_higher_signed(server, sender, kind, payload, honest, key_for, n)


equivocate.with_keys = True  # type: ignore[attr-defined]


class Withheld(Exception):
    """Raised by a behaviour that sends no reply at all (the node drops the request)."""


def withhold_from_odd(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Serve clients of even id honestly and never answer the others (their calls time out
    or are answered by other servers)."""
    if sender % 2 == 0:
        return honest()
    raise Withheld()


def forge_max_time(
    server: int,
    sender: int,
    kind: str,
    payload: Any,
    honest: Callable,
    key_for: Callable[[int], bytes],
    n: int,
) -> Any:
    """Claim, in every history it returns, a candidate at the largest logical time, under a
    *valid* authenticator (it holds its own keys): honest servers classify with it and
    refuse "logical time exhausted" (issue 18, defect 2)."""
    rep = honest()
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict) or "h" not in rep:
        return rep
    is_request = kind == KIND_REQUEST
    objects = Request.from_wire(payload, n).objects if is_request else tuple(payload["o"])
    hist = []
    for oid, (rh_raw, _) in zip(objects, rep["h"], strict=True):
        rh = rh_from_wire(rh_raw)
        top = rh[0]
        fake = Candidate(Timestamp(MAX_TIME, False, 999, bytes([7]) * 32), top.lt, (oid,))
        forged = make_rh([*rh, fake])
        hist.append([rh_wire(forged), list(make_authenticator(oid, forged, n, key_for))])
    rep = dict(rep)
    rep["h"] = hist
    return rep


forge_max_time.with_keys = True  # type: ignore[attr-defined]


def bad_authenticator(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Corrupt every MAC of this server's authenticators (other servers must cull)."""
    rep = honest()
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict):
        return rep
    rep = dict(rep)
    rep["h"] = [[rh, [bytes(16) for _ in auth] if auth else auth] for rh, auth in rep["h"]]
    return rep


def corrupt_own_mac(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Corrupt only this server's own entry of the authenticators it returns: the others
    keep its history, it culls its own when presented and so sets up another candidate
    (issue 18, defect 3)."""
    rep = honest()
    if kind not in (KIND_REQUEST, KIND_HISTORY) or not isinstance(rep, dict):
        return rep
    rep = dict(rep)
    rep["h"] = [
        [rh, [bytes(16) if i == server else m for i, m in enumerate(auth)] if auth else auth]
        for rh, auth in rep["h"]
    ]
    return rep


def wrong_answer(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Claim success with a made-up answer."""
    rep = honest()
    if kind == KIND_REQUEST and isinstance(rep, dict):
        rep = dict(rep)
        rep["a"] = 424242
    return rep


def wrong_sync(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Serve a made-up object state to object sync (as an accepted method's, so that a
    restarted server's catch-up from the current state would take it too)."""
    if kind == KIND_SYNC:
        return {"s": canonical(31337), "ap": canonical({}), "k": "method", "a": None}
    return honest()


def reject_everything(server: int, sender: int, kind: str, payload: Any, honest: Callable) -> Any:
    """Refuse every request (without running it: :func:`on_node` skips the handler)."""
    raise RemoteError("refused", "this node refuses everything (Byzantine)")


#: The behaviours by name (the names the tests' parameter lists use).
BEHAVIOURS: dict[str, Behaviour] = {
    "forge_higher": forge_higher,
    "forge_max_time": forge_max_time,
    "forge_higher_signed": forge_higher_signed,
    "endless_barriers_signed": endless_barriers_signed,
    "equivocate": equivocate,
    "withhold_from_odd": withhold_from_odd,
    "endless_barriers": endless_barriers,
    "bad_authenticator": bad_authenticator,
    "corrupt_own_mac": corrupt_own_mac,
    "wrong_answer": wrong_answer,
    "wrong_sync": wrong_sync,
    "claim_forgotten": claim_forgotten,
    "reject_everything": reject_everything,
}


def on_node(fn: Behaviour, kind: str) -> NodeWrapper:
    """``fn`` as a node wrapper for requests of ``kind``.

    The node runs its honest handler first (except for :func:`reject_everything`, which
    must not execute what it refuses) and ``fn`` rewrites the reply; a ``with_keys``
    behaviour signs with the keys of the node it runs on, and a ``RemoteError`` becomes the
    ``HandlerError`` the node sends back.
    """

    async def wrapper(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
        server = int(ctx.node.id)
        result = None
        if fn is not reject_everything:
            result = await honest(ctx, payload)
        try:
            if getattr(fn, "with_keys", False):
                ring = ctx.node.keyring
                key_for = ring.key
                n = ctx.node.config.n
                return fn(server, int(ctx.sender), kind, payload, lambda: result, key_for, n)
            return fn(server, int(ctx.sender), kind, payload, lambda: result)
        except RemoteError as e:
            raise HandlerError(e.code, e.message) from None
        except Withheld:
            await trio.sleep_forever()  # no reply; the task ends with the node

    return wrapper


def make_byzantine(cluster: Cluster, server: int, behaviour: str) -> None:
    """Make node ``server`` of an in-process cluster behave as ``behaviour`` (for every
    Q/U request kind; its PASIS handling stays honest)."""
    fn = BEHAVIOURS[behaviour]
    for kind in KINDS:
        cluster.faults[server].byzantine(kind, on_node(fn, kind))
