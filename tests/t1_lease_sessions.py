"""Tier 1: lease sessions as Q/U state (issue 62, ``bftfs/fsobjects/sessions.py`` and the
session-bound leases of ``fsobjects/leases.py``), through the registry as a node runs it:
who may renew a session, a lease bound to one, how another client's recall pins such a
lease to the session's end and records it for the holder, and the bound on pending
recalls."""

from __future__ import annotations

from typing import Any

import pytest

from bftfs.fsobjects import FS, OBJECT_TYPES, new_dir
from bftfs.fsobjects.leases import MAX_TERM, SESSION, SHARED, holders, session_holders
from bftfs.fsobjects.sessions import (
    MAX_RECALLS,
    MAX_SESSION_TERM,
    SESSION_BIT,
    SLOTS,
    session_oid,
    slot_for,
)
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry(OBJECT_TYPES)
DIR = 16
A, B, C = 101, 102, 103
MA, MB = 7, 9  # the mounts of A and B
S = 10**9
T0 = 1_700_000_000 * S
TERM = 30 * S
SA = session_oid(A, MA, 0)


def update(method: str, states: dict[int, Any], caller: int, **arg: Any) -> tuple[dict, Any]:
    raw, answer = REG.update(method, states, arg, caller)
    return {oid: unpack(b) for oid, b in raw.items()}, answer


def renew(sess: Any, at: int, caller: int = A, **arg: Any) -> dict[str, Any]:
    arg = {"lm": MA, "s": 0, "lt": at, "term": TERM, **arg}
    new, answer = update("session.renew", {SA: sess}, caller, **arg)
    assert answer == new[SA]
    return new[SA]


def bound_lease(state: Any, sess: Any, at: int) -> tuple[Any, Any, Any]:
    """A's shared lease on ``DIR`` bound to its session: (object, session, answer)."""
    new, answer = update(
        "fs.lease", {DIR: state, SA: sess}, A, kind=SHARED, lt=at, term=TERM, lm=MA, sb=1, s=0
    )
    return new[DIR], new[SA], answer


def directory() -> dict[str, Any]:
    return new_dir(1, 0o755, 0, 0, T0)


def mkdir_in(state: Any, caller: int, at: int) -> dict[int, Any]:
    arg = {"name": b"sub", "p": DIR, "o": 22, "mode": 0o755, "uid": 0, "gid": 0, "now": at}
    new, _ = update("fs.mkdir", {DIR: state, 22: None}, caller, lt=at, **arg)
    return new


def test_session_ids_lie_above_every_file_id_and_a_slot_meets_each_objects_quorum() -> None:
    assert REG.get("session.renew") is not None and FS in OBJECT_TYPES
    assert MAX_SESSION_TERM == MAX_TERM
    ids = {session_oid(A, MA, s) for s in range(SLOTS)}
    assert len(ids) == SLOTS and all(i >= SESSION_BIT for i in ids)
    assert session_oid(A, MB, 0) != SA != session_oid(B, MA, 0)
    for n in (4, 6, 7):
        for oid in (DIR, 12345, 2**62 + 3):
            assert session_oid(A, MA, slot_for(A, MA, oid, n)) % n == oid % n


def test_only_its_client_renews_a_session_which_never_runs_backwards() -> None:
    s = renew(None, T0)
    assert (s["c"], s["m"], s["g"], s["e"], s["r"], s["q"]) == (A, MA, 1, T0 + TERM, [], 0)
    assert renew(s, T0 + 10 * S)["e"] == T0 + 40 * S
    assert renew(s, T0 + S, term=S)["e"] == T0 + TERM  # a shorter term does not shorten it
    for caller, arg in ((B, {}), (A, {"lm": MB}), (A, {"s": 1}), (A, {"term": MAX_TERM + 1})):
        with pytest.raises(MethodRefused) as e:  # another's session, another mount or slot
            renew(s, T0 + S, caller=caller, **arg)
        assert e.value.code == "invalid"
    # A renewal after the end starts a new generation: nothing of the old one stands.
    again = renew(s, T0 + TERM)
    assert again["g"] == 2 and again["e"] == T0 + 2 * TERM
    for method, arg in (("fs.setattr", {"mode": 0o644, "now": T0}), ("fs.release", {"lt": T0})):
        with pytest.raises(MethodRefused):  # no ``fs`` method changes a session
            update(method, {SA: s}, B, **arg)


def test_a_bound_lease_needs_a_live_session_of_its_own_and_no_renewal() -> None:
    sess = renew(None, T0)
    d, same, answer = bound_lease(directory(), sess, T0 + S)
    assert same == sess and answer == [T0 + TERM, 1, 0]
    assert holders(d) == [[A, SHARED, SESSION, MA, 0, 1]]
    assert session_holders(d) == [[A, MA, 0]]
    with pytest.raises(MethodRefused) as e:  # the session ended: no grant
        bound_lease(directory(), sess, T0 + TERM)
    assert e.value.code == "session-ended"
    with pytest.raises(MethodRefused) as e:  # B cannot bind to A's session
        arg = {"kind": SHARED, "lt": T0, "term": TERM, "lm": MA, "sb": 1, "s": 0}
        update("fs.lease", {DIR: directory(), SA: sess}, B, **arg)
    assert e.value.code == "invalid"  # (its own session would be another object)
    with pytest.raises(MethodRefused) as e:
        update("fs.lease", {DIR: directory()}, A, kind=SHARED, lt=T0, term=TERM, lm=MA, sb=1, s=0)
    assert e.value.code == "invalid"  # the session must be read with the grant


def test_a_conflicting_update_waits_for_a_bound_lease_until_its_recall_pins_it() -> None:
    """Unpinned, a bound lease counts as live (its session is not read); the recall that
    reads the session pins it to the session's end and tells the holder through ``r``,
    which its next renewal answers; after that end the requester's change lands."""
    sess = renew(None, T0)
    d, sess, _ = bound_lease(directory(), sess, T0 + S)
    far = T0 + 10 * TERM
    with pytest.raises(MethodRefused) as e:
        mkdir_in(d, C, far)  # the session is long over, but not read: still refused
    assert e.value.code == "leased"
    first, out = update("fs.recall", {DIR: d}, C, lt=T0 + 2 * S)
    assert out == [[DIR, [A], [[A, MA, 0]]]]  # recall again with this session
    new, out = update("fs.recall", {DIR: first[DIR], SA: sess}, C, lt=T0 + 2 * S)
    assert out == [[DIR, [A]]]
    assert holders(new[DIR]) == [[A, SHARED, T0 + TERM, MA]]
    assert new[DIR]["lr"]["u"] == T0 + TERM
    assert new[SA]["r"] == [[DIR, T0 + TERM, 1]] and new[SA]["e"] == T0 + TERM
    with pytest.raises(MethodRefused):
        mkdir_in(new[DIR], C, T0 + TERM - S)
    assert mkdir_in(new[DIR], C, T0 + TERM)[22]["k"] == "d"
    # The holder learns of it at its next renewal, which does not drop it; its ``done``
    # (after it let the lease go) does, by the recall's number: a done for an earlier
    # recall of the object leaves a later one standing.
    seen = renew(new[SA], T0 + 3 * S)
    assert seen["r"] == [[DIR, T0 + TERM, 1]] and seen["e"] == T0 + 33 * S
    assert renew(seen, T0 + 4 * S, done=[1])["r"] == []
    d2, s2, _ = bound_lease(directory(), renew(seen, T0 + 4 * S, done=[1]), T0 + 4 * S)
    later, _ = update("fs.recall", {DIR: d2, SA: s2}, C, lt=T0 + 5 * S)
    assert later[SA]["r"] == [[DIR, T0 + 34 * S, 2]]
    assert renew(later[SA], T0 + 6 * S, done=[1])["r"] == [[DIR, T0 + 34 * S, 2]]


def test_a_recall_drops_a_bound_lease_whose_session_ended_or_moved_on() -> None:
    sess = renew(None, T0)
    d, sess, _ = bound_lease(directory(), sess, T0 + S)
    ended, out = update("fs.recall", {DIR: d, SA: sess}, C, lt=T0 + TERM)
    assert "ls" not in ended[DIR] and out == [] and ended[SA] == sess
    newer = renew(sess, T0 + TERM + S)  # generation 2: the lease was generation 1's
    gone, out = update("fs.recall", {DIR: d, SA: newer}, C, lt=T0 + TERM + 2 * S)
    assert "ls" not in gone[DIR] and out == []
    assert mkdir_in(gone[DIR], C, T0 + TERM + 2 * S)[22]["k"] == "d"


def test_a_holder_that_ignores_the_recall_loses_the_lease_at_the_pinned_end() -> None:
    """Renewing the session does not stretch a pinned lease: the recalled object's record
    keeps the end it had at the recall, and the requester's change lands then."""
    sess = renew(None, T0)
    d, sess, _ = bound_lease(directory(), sess, T0 + S)
    new, _ = update("fs.recall", {DIR: d, SA: sess}, C, lt=T0 + 2 * S)
    later = renew(renew(new[SA], T0 + 15 * S), T0 + 25 * S)
    assert later["e"] == T0 + 55 * S and later["r"] == [[DIR, T0 + TERM, 1]]
    with pytest.raises(MethodRefused) as e:  # no fresh grant while the recall stands
        bound_lease(new[DIR], later, T0 + 26 * S)
    assert e.value.code == "recalled"
    assert mkdir_in(new[DIR], C, T0 + TERM)[22]["k"] == "d"


def test_a_full_recall_list_caps_the_session_where_it_ends() -> None:
    """A requester cannot grow ``r`` without bound: past :data:`MAX_RECALLS` a recall
    caps the session at its present end (never earlier), no renewal moves it, and the
    next renewal after it starts a new generation."""
    sess = renew(None, T0)
    sess["r"] = [[1000 + i, T0 + TERM, i + 1] for i in range(MAX_RECALLS)]
    d, sess, _ = bound_lease(directory(), sess, T0 + S)
    new, _ = update("fs.recall", {DIR: d, SA: sess}, C, lt=T0 + 2 * S)
    assert len(new[SA]["r"]) == MAX_RECALLS and new[SA]["x"] == T0 + TERM
    assert holders(new[DIR]) == [[A, SHARED, T0 + TERM, MA]]
    capped = renew(new[SA], T0 + 10 * S)
    assert capped["e"] == T0 + TERM
    fresh = renew(capped, T0 + TERM)
    assert fresh["g"] == 2 and "x" not in fresh and fresh["r"] == []
