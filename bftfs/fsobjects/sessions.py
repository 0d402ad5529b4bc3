"""Lease sessions as Q/U state (issue 62): one object per mount (and quorum slot) that its
client renews, so that the mount's shared leases cost nothing per object while it lives.

A **session** ``S`` is an object of the ``session`` type whose id :func:`session_oid`
derives from the client's principal id, the mount's number and a *slot*: ids at and above
2**63 (the lock-object half, ``fsobjects.locks``: no file or directory ever has one).
Q/U sends a multi-object update to the preferred quorum of its highest object id, ``S``
here, so a mount keeps one session per residue of the cluster's ``n`` (:func:`slot_for`):
a lease bound to ``S`` is granted by the quorum that serves its object.  Its state:

- ``k``: ``"s"`` (every ``fs`` and lock method refuses such a state: none changes it);
- ``c``, ``m``, ``s``: the client, its mount and the slot (checked against the id);
- ``g``: the generation, moved when a renewal finds the session ended: a holder record
  of an earlier generation is dead;
- ``e``: the session's end (ns): :func:`session_renew` moves it to ``lt + term``;
- ``r``: the recalls pending, ``[[oid, until, seq], ...]`` (a list: wire maps have string
  keys): objects whose lease bound to this session another client recalled, when that
  lease ends on the nodes (the session's end at the recall) and the recall's number
  (from ``q``, the last one given), which the holder says ``done`` with: a number names
  one recall, so a ``done`` sent for an earlier recall of an object never hides a later
  one the holder has not seen;
- ``x``: a cap on ``e`` (present once ``r`` was full at a recall): no renewal moves ``e``
  past it, so the whole session ends there (the holder starts a new generation).

Only the client itself renews its session (``caller``, the Q/U timestamp's writer, is
checked against the id), so only it can stretch it; another client's recall
(``fs.recall`` with ``S`` among its objects, :func:`pin`) can only list an object in ``r``
or cap ``e`` where it is, never shorten it: nobody ends another client's lease early.
How a lease bound to a session ends and why its holder stops in time: ``fsobjects.leases``
(module docstring, "Sessions") and docs/fs.md "Leases".
"""

from __future__ import annotations

import hashlib
from typing import Any

from bftfs.fsobjects.limits import MAX_TIME, MIN_TIME
from bftfs.fsobjects.state import check_arg, check_int
from bftfs.qu.objects import MethodRefused, States

#: Session ids have this bit set (the lock-object half of the id space).
SESSION_BIT = 1 << 63
#: Slots a mount may keep (one per residue of the cluster's ``n``, up to this many).
SLOTS = 64
#: Longest session term (ns): ``fsobjects.leases.MAX_TERM``'s value (a test keeps them equal).
MAX_SESSION_TERM = 120 * 10**9
#: Most recalls one session records; a further one caps the session (:func:`pin`).
MAX_RECALLS = 256
#: Mount numbers are below this (``fsobjects.leases.MAX_MOUNT``).
MAX_MOUNT = 2**63 - 1
#: The argument keys of a renewal: the mount, the slot, objects it no longer holds.
MOUNT = "lm"
SLOT = "s"
DONE = "done"


def _base(client: int, mount: int) -> int:
    """Slot 0's id for (client, mount): the session bit, 56 hashed bits, 6 zero bits."""
    digest = hashlib.blake2b(
        client.to_bytes(16, "big", signed=True) + mount.to_bytes(16, "big", signed=True),
        digest_size=7,
        person=b"bftfs-session",
    ).digest()
    return SESSION_BIT | (int.from_bytes(digest, "big") << 6)


def session_oid(client: int, mount: int, slot: int) -> int:
    """The id of ``client``'s session of ``mount`` in ``slot`` (``0 <= slot < SLOTS``)."""
    return _base(client, mount) | slot


def slot_for(client: int, mount: int, oid: int, n: int) -> int:
    """The slot whose session id is congruent to ``oid`` mod ``n`` (the same preferred
    quorum: Q/U sends a multi-object update to its highest id's); slot 0 past
    :data:`SLOTS` servers."""
    return (oid - _base(client, mount)) % n if n <= SLOTS else 0


def is_session(oid: int) -> bool:
    """Whether ``oid`` lies where session ids do (it may still not be one)."""
    return oid >= SESSION_BIT


def session_state(state: Any) -> dict[str, Any] | None:
    """A copy of a session's state, or None for anything else (no object, a lock object)."""
    if not isinstance(state, dict) or state.get("k") != "s":
        return None
    out = dict(state)
    out["r"] = [list(x) for x in state.get("r", [])]
    return out


def recalls(state: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """A session's pending recalls: object -> (until, seq)."""
    return {o: (u, q) for o, u, q in state["r"]}


def live_generation(state: Any, gen: int, at: int) -> bool:
    """Whether a lease bound to generation ``gen`` of session ``state`` runs at ``at``
    (no session there, another generation or its end passed: it does not)."""
    s = session_state(state)
    return s is not None and s["g"] == gen and s["e"] > at


def pin(state: Any, oid: int, gen: int, at: int) -> tuple[Any, int | None]:
    """A recall at ``at`` of the lease on ``oid`` bound to generation ``gen`` of session
    ``state``: the session with ``oid`` in its recalls until its present end, and that
    end, which the holder record on ``oid`` takes as its expiry; None when the lease is
    not live (``state`` unchanged).  With :data:`MAX_RECALLS` pending the session is capped
    at its end instead (its holder learns it at its next renewal, whose end does not
    move, and starts a new generation: every lease of this one ends there)."""
    if not live_generation(state, gen, at):
        return state, None
    s = session_state(state)
    assert s is not None
    end = s["e"]
    pending = recalls(s)
    if oid in pending or len(pending) < MAX_RECALLS:
        seq = s.get("q", 0) + 1
        s["q"] = seq
        pending[oid] = (max(pending.get(oid, (end, 0))[0], end), seq)
        s["r"] = sorted([o, u, q] for o, (u, q) in pending.items())
    else:
        s["x"] = end if s.get("x") is None else min(s["x"], end)
    return s, end


def session_renew(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Renew the caller's session to ``lt + term`` (never earlier than it ran, never past
    its cap ``x``), dropping from ``r`` the objects in ``done`` and the recalls whose until
    passed (``done``: recall numbers); a session found ended (or none yet) starts a new
    generation with no recalls (the numbers go on).
    Refused ``invalid`` unless the one object is the session of the caller's ``lm`` and
    ``s`` (:func:`session_oid`): nobody renews another client's session.  The answer: the
    new state (its recalls tell the holder which leases to give up)."""
    a = check_arg(arg)
    if len(states) != 1:
        raise MethodRefused("invalid", "a session is renewed alone")
    ((oid, state),) = states.items()
    mount = check_int(a, MOUNT, 0, MAX_MOUNT)
    slot = check_int(a, SLOT, 0, SLOTS - 1)
    if oid != session_oid(caller, mount, slot):
        raise MethodRefused("invalid", "not the caller's session")
    at = check_int(a, "lt", MIN_TIME, MAX_TIME)
    term = check_int(a, "term", 1, MAX_SESSION_TERM)
    done = a.get(DONE, [])
    if not isinstance(done, list) or len(done) > MAX_RECALLS:
        raise MethodRefused("invalid", f"done must be a list of at most {MAX_RECALLS} ids")
    s = session_state(state)
    if state is not None and s is None:
        raise MethodRefused("invalid", "not a session")
    end = min(at + term, MAX_TIME)
    if s is None or s["e"] <= at:
        g, q = (1, 0) if s is None else (s["g"] + 1, s.get("q", 0))
        s = {"k": "s", "c": caller, "m": mount, "s": slot, "g": g, "e": end, "r": [], "q": q}
        return {oid: s}, s
    gone = {q for q in done if isinstance(q, int)}
    s["r"] = [[o, u, q] for o, u, q in s["r"] if q not in gone and u >= at]
    e = max(s["e"], end)
    s["e"] = e if s.get("x") is None else min(e, s["x"])
    return {oid: s}, s
