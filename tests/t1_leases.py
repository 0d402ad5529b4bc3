"""Tier 1: leases as Q/U state (``bftfs/fsobjects/leases.py``), through the ``fs`` registry
as a node runs it: who may take, renew, release and recall a lease, which updates a lease
refuses, and which lease times a node's clock check refuses."""

from __future__ import annotations

import stat as st
from typing import Any

import pytest

from bftfs.fsobjects import FS, new_dir
from bftfs.fsobjects.leases import (
    EXCLUSIVE,
    LEASE_SKEW,
    MAX_TERM,
    QUIET,
    RECALL_GRACE,
    SHARED,
    holders,
    tag_query,
)
from bftfs.fsobjects.leases import who as holder_of
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry([FS])
DIR, FILE = 16, 22
A, B, C = 101, 102, 103
S = 10**9
T0 = 1_700_000_000 * S


def directory() -> dict[str, Any]:
    return new_dir(1, 0o755, 0, 0, T0)


def update(
    method: str, states: dict[int, Any], caller: int, **arg: Any
) -> tuple[dict[int, Any], Any]:
    raw, answer = REG.update(method, states, arg, caller)
    return {oid: unpack(b) for oid, b in raw.items()}, answer


def lease(state: Any, caller: int, kind: int, at: int, term: int = 30 * S) -> Any:
    new, _ = update("fs.lease", {DIR: state}, caller, kind=kind, lt=at, term=term)
    return new[DIR]


def mkdir_in(state: Any, caller: int, at: int | None) -> dict[int, Any]:
    arg: dict[str, Any] = {"name": b"sub", "p": DIR, "o": FILE, "mode": 0o755, "uid": 0, "gid": 0}
    arg["now"] = T0 + 5 * S
    if at is not None:
        arg["lt"] = at
    new, _ = update("fs.mkdir", {DIR: state, FILE: None}, caller, **arg)
    return new


def test_shared_leases_are_held_together_and_an_exclusive_one_alone() -> None:
    d = lease(lease(directory(), A, SHARED, T0), B, SHARED, T0)
    assert [h[:2] for h in holders(d)] == [[A, SHARED], [B, SHARED]]
    with pytest.raises(MethodRefused) as e:
        lease(d, C, EXCLUSIVE, T0 + S)
    assert e.value.code == "leased"
    x = lease(directory(), A, EXCLUSIVE, T0)
    with pytest.raises(MethodRefused) as e:
        lease(x, B, SHARED, T0 + S)
    assert e.value.code == "leased"
    # Once the exclusive lease ended, anyone may take one; the holder renews its own.
    assert holders(lease(x, B, SHARED, T0 + 31 * S))[0][0] == B
    assert holders(lease(x, A, EXCLUSIVE, T0 + 10 * S))[0][2] == T0 + 40 * S


def test_an_update_another_client_holds_a_lease_on_is_refused_until_it_ends() -> None:
    d = lease(directory(), A, SHARED, T0)
    for at in (T0 + S, None):  # no lease time: every lease counts as live
        with pytest.raises(MethodRefused) as e:
            mkdir_in(d, B, at)
        assert e.value.code == "leased"
    made = mkdir_in(d, B, T0 + 30 * S)  # the lease ended at T0 + 30 s
    assert "ls" not in made[DIR] and made[FILE]["k"] == "d"
    # The holder's own update keeps its lease.
    own = mkdir_in(d, A, T0 + S)
    assert [h[0] for h in holders(own[DIR])] == [A]


def test_an_update_that_changes_nothing_never_conflicts() -> None:
    d = lease(directory(), A, SHARED, T0)
    d["e"] = mkdir_in(directory(), A, None)[DIR]["e"]  # "sub" exists
    with pytest.raises(MethodRefused) as e:
        mkdir_in(d, B, T0 + S)
    assert e.value.code == "exists"  # POSIX's answer, not a recall


def test_a_recall_stops_renewal_and_new_leases_until_the_requesters_change_lands() -> None:
    """The holders' releases leave the recall standing (issue 60: a release and a lease at
    once retook the object ahead of the requester's retry); the requester's change ends it."""
    d = lease(lease(directory(), A, SHARED, T0), B, SHARED, T0)
    new, answer = update("fs.recall", {DIR: d}, C, lt=T0 + S)
    assert answer == [[DIR, [A, B]]]
    r = new[DIR]
    assert r["lr"] == {"u": T0 + 30 * S, "q": [[C, 0, T0 + S]]}
    for who in (A, B, C):
        with pytest.raises(MethodRefused) as e:
            lease(r, who, SHARED, T0 + 2 * S)
        assert e.value.code == "recalled"
    once, _ = update("fs.release", {DIR: r}, A, lt=T0 + 2 * S)
    assert "lr" in once[DIR] and [h[0] for h in holders(once[DIR])] == [B]
    both, _ = update("fs.release", {DIR: once[DIR]}, B, lt=T0 + 2 * S)
    assert "lr" in both[DIR] and "ls" not in both[DIR]
    made = mkdir_in(both[DIR], C, T0 + 2 * S)
    assert made[FILE]["k"] == "d" and "lr" not in made[DIR]


def test_a_requester_holding_a_lease_itself_renews_it_once_the_others_are_gone() -> None:
    """A recaller that holds a lease itself (a shared one, beside another client's) asks
    only the others to release: once they did and nobody else waits, its renewal is its
    turn (the record goes) and others take leases again after it.  Its client's other
    mounts are its own business: their leases are pushed the recall but queue nobody.
    A record from before the queue names one waiting client."""
    d = lease(lease(directory(), A, SHARED, T0), B, SHARED, T0)
    r = update("fs.recall", {DIR: d}, A, lt=T0 + S)[0][DIR]
    assert r["lr"] == {"u": T0 + 30 * S, "q": [[A, 0, T0 + S]]}
    left = update("fs.release", {DIR: r}, B, lt=T0 + 2 * S)[0][DIR]
    assert [h[0] for h in holders(left)] == [A]
    with pytest.raises(MethodRefused) as e:
        lease(left, C, SHARED, T0 + 3 * S)  # A waits still: it goes first
    assert e.value.code == "recalled"
    renewed = lease(left, A, SHARED, T0 + 3 * S)
    assert "lr" not in renewed and holders(renewed)[0][2] == T0 + 33 * S
    assert [h[0] for h in holders(lease(renewed, C, SHARED, T0 + 3 * S))] == [A, C]
    two = update("fs.lease", {DIR: d}, A, kind=SHARED, lt=T0, term=30 * S, lm=8)[0][DIR]
    _, out = update("fs.recall", {DIR: two}, A, lt=T0 + S)
    assert out == [[DIR, [A, B]]]  # mount 8 of client A is asked too
    alone = update("fs.lease", {DIR: directory()}, A, kind=SHARED, lt=T0, term=30 * S, lm=8)
    mine, out = update("fs.recall", {DIR: alone[0][DIR]}, A, lt=T0 + S)
    assert out == [[DIR, [A]]] and "lr" not in mine[DIR]
    old = dict(r, lr=[A, T0 + S])
    kept = update("fs.release", {DIR: old}, B, lt=None)[0][DIR]
    assert kept["lr"] == {"u": None, "q": [[A, 0, T0 + S]]}


def test_a_holder_that_ignored_a_recall_cannot_take_a_fresh_lease_as_its_term_ends() -> None:
    """A holder that neither releases nor stops renewing (Byzantine) and lets its lease run
    out must not take a fresh one the moment it ends, ahead of the requester's retry: the
    recall outlives the recalled lease by ``RECALL_GRACE``, and goes at once when the
    requester's change lands (or after the grace, if the requester never comes back); that
    change keeps the object quiet for ``QUIET`` (issue 64)."""
    d = lease(directory(), A, SHARED, T0)
    r = update("fs.recall", {DIR: d}, C, lt=T0 + S)[0][DIR]
    ended = T0 + 30 * S  # A's lease ends; A asks again at once, and again later
    for at in (ended, ended + RECALL_GRACE - S):
        with pytest.raises(MethodRefused) as e:
            lease(r, A, SHARED, at)
        assert e.value.code == "recalled"
    made = mkdir_in(r, C, ended + S)  # the requester's retry lands: the recall goes
    assert "lr" not in made[DIR]
    with pytest.raises(MethodRefused) as e:
        lease(made[DIR], A, SHARED, ended + 2 * S)
    assert e.value.code == "recalled"
    assert holders(lease(made[DIR], A, SHARED, ended + S + QUIET))[0][0] == A
    assert holders(lease(r, A, SHARED, ended + RECALL_GRACE))[0][0] == A  # never came back


def test_a_recall_of_an_object_nobody_else_holds_changes_nothing() -> None:
    d = lease(directory(), A, SHARED, T0)
    new, answer = update("fs.recall", {DIR: d}, A, lt=T0 + S)
    assert answer == [] and "lr" not in new[DIR]


def test_nobody_releases_or_takes_a_lease_in_another_clients_name() -> None:
    """The holder is the caller the request names, never an argument."""
    d = lease(directory(), A, SHARED, T0)
    new, _ = update("fs.release", {DIR: d}, B, lt=T0 + S, client=A)
    assert [h[0] for h in holders(new[DIR])] == [A]


def test_stat_answers_leave_the_lease_records_out() -> None:
    d = lease(directory(), A, SHARED, T0)
    f = {"k": "f", "mode": st.S_IFREG | 0o644, "uid": 0, "gid": 0, "rdev": 0, "nl": 1}
    f.update(size=0, alloc=0, d=5, at=0, mt=0, ct=0, t=None, x={}, v=0, i=None)
    f.update(ls=d["ls"])
    got = REG.query("fs.stat", {FILE: f}, {})
    assert "ls" not in got and "lr" not in got


def test_queries_of_another_clients_exclusive_lease_are_refused_its_own_are_not() -> None:
    """Directory write-back (``fs/writeback/``): an exclusive holder may have creates
    the servers do not hold yet, so every other client's query of the object is refused
    ``leased`` (it recalls, then asks again); the holder's own queries, a shared lease's
    other readers and history reads (``fs.peek``) are answered."""
    ex = lease(directory(), A, EXCLUSIVE, T0)
    for method, arg in (("fs.stat", None), ("fs.lookup", b"x"), ("fs.readdir", None)):
        with pytest.raises(MethodRefused) as e:
            REG.query(method, {DIR: ex}, arg, B)
        assert e.value.code == "leased"
    assert REG.query("fs.stat", {DIR: ex}, None, A)["mode"] & st.S_IFDIR
    with pytest.raises(MethodRefused, match="not-found"):
        REG.query("fs.lookup", {DIR: ex}, b"x", A)
    shared = lease(directory(), A, SHARED, T0)
    assert REG.query("fs.stat", {DIR: shared}, None, B)["mode"] & st.S_IFDIR
    assert REG.query("fs.peek", {DIR: ex}, None, B) is not None


def test_a_lease_is_one_mounts_and_the_clients_other_mounts_are_held_off_as_others() -> None:
    """Two mounts of one client identity (argument ``lm``) are two holders: the other
    mount's update is refused and recalls the lease, its query is refused under an
    exclusive lease (its argument in the mount's envelope), and releasing or renewing
    touches only the mount's own record.  A record without a mount (older) is mount 0."""
    d = update("fs.lease", {DIR: directory()}, A, kind=SHARED, lt=T0, term=30 * S, lm=7)[0][DIR]
    assert [holder_of(h) for h in holders(d)] == [(A, 7)]
    arg: dict[str, Any] = {"name": b"sub", "p": DIR, "o": FILE, "mode": 0o755, "uid": 0}
    arg.update(gid=0, now=T0 + 5 * S, lt=T0 + S)
    with pytest.raises(MethodRefused) as e:
        update("fs.mkdir", {DIR: d, FILE: None}, A, **arg, lm=8)
    assert e.value.code == "leased"
    made, _ = update("fs.mkdir", {DIR: d, FILE: None}, A, **arg, lm=7)  # its own: passes
    assert made[FILE]["k"] == "d"
    _, out = update("fs.recall", {DIR: d}, A, lt=T0 + S, lm=8)
    assert out == [[DIR, [A]]]  # pushed to the client: each mount checks its leases
    both = update("fs.lease", {DIR: d}, A, kind=SHARED, lt=T0, term=30 * S, lm=8)[0][DIR]
    assert sorted(holder_of(h) for h in holders(both)) == [(A, 7), (A, 8)]
    left = update("fs.release", {DIR: both}, A, lt=T0 + S, lm=8)[0][DIR]
    assert [holder_of(h) for h in holders(left)] == [(A, 7)]
    x = update("fs.lease", {DIR: directory()}, A, kind=EXCLUSIVE, lt=T0, term=30 * S, lm=7)
    xd = x[0][DIR]
    with pytest.raises(MethodRefused) as e:
        REG.query("fs.stat", {DIR: xd}, tag_query(None, 8), A)
    assert e.value.code == "leased"
    REG.query("fs.stat", {DIR: xd}, tag_query(None, 7), A)
    with pytest.raises(MethodRefused):
        REG.query("fs.stat", {DIR: xd}, None, A)  # untagged: mount 0, another holder
    old = directory()
    old["ls"] = [[A, SHARED, T0 + 30 * S]]  # a record from before mounts were told apart
    assert holder_of(holders(old)[0]) == (A, 0)
    with pytest.raises(MethodRefused):
        update("fs.mkdir", {DIR: old, FILE: None}, A, **arg, lm=8)
    with pytest.raises(MethodRefused) as e:
        update("fs.lease", {DIR: directory()}, A, kind=SHARED, lt=T0, term=S, lm=-1)
    assert e.value.code == "invalid"


def _create_in(state: Any, caller: int, at: int, *, inherit: bool, mode: int = 0o644) -> Any:
    arg: dict[str, Any] = {"name": b"f", "p": DIR, "o": FILE, "mode": st.S_IFREG | mode}
    arg.update(uid=0, gid=0, rdev=0, d=7, alloc=0, i=b"content", attrs={})
    arg.update(now=T0 + 5 * S, mtime=T0 + 5 * S, lt=at)
    if inherit:
        arg["lx"] = 1
    new, _ = update("fs.createwrite", {DIR: state, FILE: None}, caller, **arg)
    return new[FILE]


def test_a_file_made_under_the_callers_exclusive_lease_comes_leased_to_it_until_its_end() -> None:
    """``lx`` (``fs/writeback/held.py``): the new file is leased to the caller exclusively until
    its lease on the directory ends, never longer; without that lease (none, a shared one,
    another client's expired one) the file comes unleased.  A lease being recalled still
    passes on: its holder sends what it held back when the recall reaches it, not knowing
    whether the nodes saw the recall first, and keeps the new file's writes as leased."""
    x = lease(directory(), A, EXCLUSIVE, T0, term=30 * S)
    f = _create_in(x, A, T0 + S, inherit=True)
    assert holders(f) == [[A, EXCLUSIVE, T0 + 30 * S, 0]]
    assert holders(_create_in(x, A, T0 + S, inherit=False)) == []
    assert holders(_create_in(lease(directory(), A, SHARED, T0), A, T0 + S, inherit=True)) == []
    # Another client, once A's lease ended: it made the file, but holds no lease to pass on.
    assert holders(_create_in(x, B, T0 + 31 * S, inherit=True)) == []
    recalled, _ = update("fs.recall", {DIR: x}, B, lt=T0 + S)
    assert holders(_create_in(recalled[DIR], A, T0 + 2 * S, inherit=True)) == [
        [A, EXCLUSIVE, T0 + 30 * S, 0]
    ]


def test_a_directory_made_under_the_callers_exclusive_lease_comes_leased_to_it() -> None:
    """``lx`` on ``fs.mkdir`` (``fs/names/namespace.py``): the new directory is leased as a new
    file is, so another client's change in it is refused until the holder releases."""
    x = lease(directory(), A, EXCLUSIVE, T0, term=30 * S)
    arg = {"name": b"sub", "p": DIR, "o": FILE, "mode": 0o755, "uid": 0, "gid": 0}
    made, _ = update("fs.mkdir", {DIR: x, FILE: None}, A, **arg, now=T0 + S, lt=T0 + S, lx=1)
    assert made[FILE]["k"] == "d" and holders(made[FILE]) == [[A, EXCLUSIVE, T0 + 30 * S, 0]]
    inner = {"name": b"f", "p": FILE, "o": 30, "mode": 0o755, "uid": 0, "gid": 0}
    with pytest.raises(MethodRefused) as e:
        update("fs.mkdir", {FILE: made[FILE], 30: None}, B, **inner, now=T0 + S, lt=T0 + 2 * S)
    assert e.value.code == "leased"
    plain, _ = update("fs.mkdir", {DIR: x, FILE: None}, A, **arg, now=T0 + S, lt=T0 + S)
    assert holders(plain[FILE]) == []


def test_a_directory_made_with_ln_comes_leased_to_its_maker_for_that_term() -> None:
    """``ln`` on ``fs.mkdir`` (``fs/names/namespace.py``, a directory made where the caller holds
    nothing): the new directory is leased to the caller exclusively until ``lt + ln``,
    without any lease on the parent, and another client's change in it is refused until
    then; the term is bounded by ``MAX_TERM``; the parent is left unleased."""
    arg = {"name": b"sub", "p": DIR, "o": FILE, "mode": 0o755, "uid": 0, "gid": 0, "now": T0}
    made, _ = update("fs.mkdir", {DIR: directory(), FILE: None}, A, **arg, lt=T0, ln=20 * S)
    assert holders(made[FILE]) == [[A, EXCLUSIVE, T0 + 20 * S, 0]]
    assert holders(made[DIR]) == []
    inner = {"name": b"f", "p": FILE, "o": 30, "mode": 0o755, "uid": 0, "gid": 0, "now": T0}
    with pytest.raises(MethodRefused) as e:
        update("fs.mkdir", {FILE: made[FILE], 30: None}, B, **inner, lt=T0 + 19 * S)
    assert e.value.code == "leased"
    later, _ = update("fs.mkdir", {FILE: made[FILE], 30: None}, B, **inner, lt=T0 + 21 * S)
    assert later[30]["k"] == "d"
    for bad in (0, MAX_TERM + 1, True):
        with pytest.raises(MethodRefused) as e:
            update("fs.mkdir", {DIR: directory(), FILE: None}, A, **arg, lt=T0, ln=bad)
        assert e.value.code == "invalid"


def test_nodes_check_a_granting_mkdirs_lease_time_behind_too() -> None:
    """A node refuses a client's ``lt`` more than the skew behind its clock only for an
    update that grants a lease: ``fs.mkdir`` with ``ln`` does, without it does not."""
    arg = {"lt": T0, "ln": 30 * S}
    assert REG.lease_time("fs.mkdir", arg) == (T0, LEASE_SKEW, True)
    assert REG.lease_time("fs.mkdir", {"lt": T0}) == (T0, LEASE_SKEW, False)
    assert REG.lease_time("fs.mkdir", {"lt": T0, "lx": 1}) == (T0, LEASE_SKEW, False)
