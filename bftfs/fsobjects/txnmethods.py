"""The cross-group commit's methods (issue 66, docs/layout.md "Objects and methods"): the
object type ``txn`` whose updates each group orders.

- ``txn.begin(T)`` on rec(T) (coordinator group): the record, pending;
- ``txn.prepare(T, i)`` on participant ``i``'s objects: runs the participant's update as a
  dry run; if it takes, each object carries an **intent** ``(T, old state, new state)``
  and the answer is a yes vote, else nothing changes and the answer is a no vote naming
  the refusal;
- ``txn.decide(T, v, certificates)`` on rec(T): ``commit`` with a yes certificate of every
  participant, ``abort`` with a no certificate, by T's client, or past the deadline;
  once decided it answers the decision again and changes nothing (so anyone can get a
  decision certificate);
- ``txn.finish(T, i, decision certificate)`` on participant ``i``'s objects: applies
  (commit) or drops (abort) T's intents; objects without one stay as they are (a
  replayed finish is harmless);
- ``txn.record`` and ``txn.intent``: queries of a record, of objects' intents.

While an object carries an intent every other method is refused ``intent <D> <group>
<record>`` (``qu.objects.intent_refusal``, run by the registry): strict two-phase locking
with locks that are replicated state.  Every method is told its caller and declares the
caller's clock in ``lt``, checked by every node against its own both ways (as lease
times, ``Method.lease_clock``), so the deadline rules below rest on the nodes' clocks
within the lease skew, and a method itself reads no clock (determinism).

A node signs the OK replies of these methods (``Method.txn``, ``qu/replica.py``): the
votes and decisions other groups check (:mod:`bftfs.fsobjects.txn`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from bftfs.fsobjects.halves import HALVES
from bftfs.fsobjects.leases import LEASE_SKEW, LEASE_TIME
from bftfs.fsobjects.txn import (
    ABORT,
    COMMIT,
    MAX_SPAN,
    GroupKeys,
    Txn,
    decision_answer,
    parse_txn,
    part_index,
    vote_answer,
)
from bftfs.qu.canon import unpack
from bftfs.qu.objects import (
    INTENT,
    RECORD,
    Class,
    Method,
    MethodRefused,
    ObjectType,
    Registry,
    States,
    intent_refusal,
)
from bftfs.qu.timestamp import MAX_OBJECTS

PENDING = "pending"


def _arg(arg: Any, keys: GroupKeys, extra: set[str]) -> tuple[Txn, int]:
    """The descriptor and the declared time of ``arg`` (a map of ``T``, ``lt`` and
    ``extra``)."""
    if not isinstance(arg, Mapping) or set(arg) != {"T", LEASE_TIME} | extra:
        raise MethodRefused("txn-malformed", "argument keys")
    now = arg[LEASE_TIME]
    if not isinstance(now, int) or isinstance(now, bool) or now < 0:
        raise MethodRefused("txn-malformed", "lt must be a time")
    return parse_txn(arg["T"], keys), now


def _record(state: Any, txn: Txn) -> Mapping[str, Any]:
    """``state`` as T's record, or refused."""
    if not isinstance(state, Mapping) or RECORD not in state:
        raise MethodRefused("txn-unknown", "no record of this transaction")
    if state.get("d") != txn.digest:
        raise MethodRefused("txn-unknown", "the record is of another transaction")
    return state


def _in_time(txn: Txn, now: int) -> None:
    if not now <= txn.deadline <= now + MAX_SPAN:
        raise MethodRefused("txn-deadline", "past the deadline, or a deadline too far")


def make_txn_type(inner: Registry, keys: GroupKeys) -> ObjectType:
    """The ``txn`` object type of a node holding layout ``keys``; a participant's update
    is run through ``inner`` (the node's other object types)."""
    keys.check()

    def update(name: str, fn: Any, most: int, *, version: bool = False) -> Method:
        return Method(
            name,
            Class.UPDATE,
            fn,
            1,
            most,
            caller=True,
            lease_clock=LEASE_TIME,
            lease_skew=LEASE_SKEW,
            grants=True,
            txn=True,
            version=version,
        )

    return ObjectType(
        "txn",
        (
            update("txn.begin", functools.partial(_begin, keys), 1),
            update(
                "txn.prepare", functools.partial(_prepare, inner, keys), MAX_OBJECTS, version=True
            ),
            update("txn.decide", functools.partial(_decide, keys), 1),
            update("txn.finish", functools.partial(_finish, keys), MAX_OBJECTS),
            Method("txn.record", Class.QUERY, _record_query, txn=True),
            Method("txn.intent", Class.QUERY, _intents, 1, MAX_OBJECTS, txn=True),
        ),
    )


def _begin(keys: GroupKeys, states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """T's record, pending (by T's client, before its deadline)."""
    txn, now = _arg(arg, keys, set())
    if list(states) != [txn.record]:
        raise MethodRefused("txn-objects", "begin runs on the record alone")
    if caller != txn.client:
        raise MethodRefused("txn-caller", "only T's client begins it")
    if not now < txn.deadline <= now + MAX_SPAN:
        raise MethodRefused("txn-deadline", "past the deadline, or a deadline too far")
    if states[txn.record] is not None:
        raise MethodRefused("oid-exists", "the record object exists")
    rec = {RECORD: 1, "T": txn.raw, "d": txn.digest, "st": PENDING}
    return {txn.record: rec}, ["begun", txn.digest]


def _prepare(
    inner: Registry, keys: GroupKeys, states: States, arg: Any, caller: int, version: Any
) -> tuple[dict[int, Any], Any]:
    """Participant ``i``'s vote, its objects carrying the intent on a yes; the intent
    keeps ``version``, the timestamp of the version it is made in (its vote's)."""
    if not isinstance(version, bytes):
        raise MethodRefused("txn-version", "this engine tells methods no version")
    txn, now = _arg(arg, keys, {"i", "bc"})
    i = part_index(txn, arg["i"], list(states))
    began = ["begun", txn.digest]
    if not keys.certified(txn.coordinator, "txn.begin", (txn.record,), arg["bc"], began):
        # T's record exists (established on its group): whoever meets T's intents can
        # decide T there, so no intent is ever left without a record to resolve it by.
        raise MethodRefused("txn-certificate", "no begin certificate of T")
    if caller != txn.client:
        raise MethodRefused("txn-caller", "only T's client prepares it")
    _in_time(txn, now)
    held = intent_refusal(states)
    if held is not None:
        raise held
    part = txn.parts[i]
    _check_inner(inner, part.method, part.arg, now)
    try:
        new, _ = inner.update(part.method, states, _inner_arg(txn, i), caller)
    except MethodRefused as e:
        return dict(states), vote_answer(txn, i, False, e.code)
    mark = {"d": txn.digest, "c": txn.coordinator, "r": txn.record, "i": i, "v": version}
    mark["T"] = txn.raw
    out = {oid: {INTENT: mark, "o": states[oid], "n": new[oid]} for oid in states}
    return out, vote_answer(txn, i, True, intent=version)


def _decide(keys: GroupKeys, states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """T's decision on its record (see the module docstring for the rules)."""
    txn, now = _arg(arg, keys, {"v", "c"})
    if list(states) != [txn.record]:
        raise MethodRefused("txn-objects", "decide runs on the record alone")
    rec = _record(states[txn.record], txn)
    if rec.get("st") != PENDING:  # decided: the decision again, nothing changes
        return dict(states), decision_answer(txn, rec["st"], rec.get("vs", []))
    v, certs = arg["v"], arg["c"]
    if not isinstance(certs, list) or len(certs) > len(txn.parts):
        raise MethodRefused("txn-malformed", "at most one certificate per participant")
    if v == COMMIT and not _every_yes(keys, txn, certs):
        raise MethodRefused("txn-proof", "commit needs a yes certificate of every group")
    if v == ABORT and not (
        caller == txn.client or now > txn.deadline or _some_no(keys, txn, certs)
    ):
        raise MethodRefused("txn-proof", "abort needs a no, T's client, or the deadline")
    if v not in (COMMIT, ABORT):
        raise MethodRefused("txn-malformed", "decision is commit or abort")
    # A commit names each certified yes's intent (``_finish`` applies those alone).
    versions = [c["a"][3] for c in certs] if v == COMMIT else []
    return {txn.record: {**rec, "st": v, "vs": versions}}, decision_answer(txn, v, versions)


def _finish(keys: GroupKeys, states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """T's intents on participant ``i``'s objects applied or dropped, by the decision
    certificate (anyone may finish: the certificate is the authority)."""
    del caller
    txn, _ = _arg(arg, keys, {"i", "dc"})
    i = part_index(txn, arg["i"], list(states))
    dc = arg["dc"]
    a = dc.get("a") if isinstance(dc, Mapping) else None
    ok = isinstance(a, list) and len(a) == 4 and isinstance(a[3], list)
    v, versions = (a[2], a[3]) if isinstance(a, list) and ok else (None, [])
    if v not in (COMMIT, ABORT) or not keys.certified(
        txn.coordinator, "txn.decide", (txn.record,), dc, decision_answer(txn, v, versions)
    ):
        raise MethodRefused("txn-certificate", "no decision certificate of T")
    certified = versions[i] if v == COMMIT and len(versions) == len(txn.parts) else None
    out = {}
    for oid, s in states.items():
        mine = isinstance(s, Mapping) and INTENT in s and s[INTENT].get("d") == txn.digest
        # Only the certified intent is applied: one T's client placed again after T
        # committed (a new prepare, a new version) is dropped, never applied twice.
        apply = mine and certified is not None and s[INTENT].get("v") == certified
        out[oid] = unpack(s["n"]) if apply else s["o"] if mine else s
    return out, ["finished", txn.digest, i, v]


def _record_query(states: States, arg: Any) -> Any:
    """A record's state (None for any other object)."""
    (s,) = states.values()
    return s if isinstance(s, Mapping) and RECORD in s else None


def _intents(states: States, arg: Any) -> Any:
    """Each object's intent mark (None where it carries none)."""
    return [s[INTENT] if isinstance(s, Mapping) and INTENT in s else None for s in states.values()]


def _inner_arg(txn: Txn, i: int) -> Any:
    """What participant ``i``'s update is given: its argument, or for a half of one
    operation split across groups (``fsobjects/halves.py``) the whole transaction's
    parts too, so that it can refuse to be anything but one half of a whole."""
    part = txn.parts[i]
    if not part.method.startswith(HALVES + "."):
        return part.arg
    every = [[list(p.objects), p.method, p.arg] for p in txn.parts]
    return {"a": part.arg, "i": i, "p": every}


def _check_inner(inner: Registry, name: str, arg: Any, now: int) -> None:
    """Refuse a participant's update no node would run as a client's own: not an update
    of ``inner``, one of the commit's, one installing an applied table, or declaring a
    time the nodes' clocks would refuse (judged against the prepare's own ``lt``, which
    the nodes checked)."""
    m = inner.get(name)
    if m is None or m.cls is not Class.UPDATE or m.txn or m.installs_applied is not None:
        raise MethodRefused("txn-method", f"{name} cannot be a participant's update")
    declared = inner.declared_time(name, arg)
    if declared is not None and declared > now + LEASE_SKEW:
        raise MethodRefused("ahead", "the participant's update declares a time ahead")
    lease = inner.lease_time(name, arg)
    if lease is not None:
        t, skew, grants = lease
        if t > now + skew or (grants and t < now - skew):
            raise MethodRefused("ahead", "the participant's lease time is off the prepare's")


def _every_yes(keys: GroupKeys, txn: Txn, certs: list[Any]) -> bool:
    """A yes certificate of every participant, in participant order."""
    if len(certs) != len(txn.parts):
        return False
    for i, (p, c) in enumerate(zip(txn.parts, certs, strict=True)):
        intent = _intent_of(c)
        if intent is None:
            return False
        yes = vote_answer(txn, i, True, intent=intent)
        if not keys.certified(p.group, "txn.prepare", p.objects, c, yes):
            return False
    return True


def _some_no(keys: GroupKeys, txn: Txn, certs: list[Any]) -> bool:
    """A no certificate of some participant among ``certs``."""
    for c in certs:
        a = c.get("a") if isinstance(c, Mapping) else None
        if not (isinstance(a, list) and len(a) == 4 and a[0] == "no" and a[1] == txn.digest):
            continue
        i = a[2]
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(txn.parts):
            continue
        if not isinstance(a[3], str):
            continue
        p = txn.parts[i]
        if keys.certified(p.group, "txn.prepare", p.objects, c, a):
            return True
    return False


def _intent_of(cert: Any) -> bytes | None:
    """The intent a yes certificate names (its answer's last item), or None."""
    a = cert.get("a") if isinstance(cert, Mapping) else None
    ok = isinstance(a, list) and len(a) == 4 and isinstance(a[3], bytes)
    return a[3] if isinstance(a, list) and ok else None
