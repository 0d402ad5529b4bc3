"""Tier 1: file locks as Q/U state (``bftfs/fsobjects/locks.py``): the POSIX range algebra
(split, cut, merge, checked against a byte-by-byte model), and the methods through the
``fs`` registry as a node runs them: conflicts refused, domains apart, leases that lapse,
a Byzantine client's arguments refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from bftfs.fsobjects import FS
from bftfs.fsobjects.locks import (
    FLOCK,
    OFFSET_MAX,
    POSIX,
    READ,
    UNLOCK,
    WRITE,
    Lock,
    apply,
    conflicting,
    lock_object,
    locks_of,
    waiters_of,
)
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry([FS])
FILE = 22
LK = lock_object(FILE)
A, B = 101, 102
S = 10**9
T0 = 1_700_000_000 * S
TERM = 30 * S


def ranges(locks: list[Lock]) -> list[tuple[int, int, int]]:
    return [(x.start, x.end, x.kind) for x in locks]


# The range algebra -------------------------------------------------------------------------

M = 5  # a mount's number
H = (A, M, POSIX, 7)


def test_a_lock_inside_another_of_the_other_kind_splits_it() -> None:
    locks = apply([], H, WRITE, 0, 99, 1)
    locks = apply(locks, H, READ, 40, 59, 1)
    assert sorted(ranges(locks)) == [(0, 39, WRITE), (40, 59, READ), (60, 99, WRITE)]


def test_an_unlock_cuts_and_splits() -> None:
    locks = apply([], H, READ, 10, 19, 1)
    locks = apply(locks, H, READ, 30, 39, 1)
    locks = apply(locks, H, UNLOCK, 15, 34, 1)
    assert sorted(ranges(locks)) == [(10, 14, READ), (35, 39, READ)]


def test_ranges_of_one_kind_that_touch_or_overlap_merge() -> None:
    locks = apply([], H, WRITE, 0, 9, 1)
    locks = apply(locks, H, WRITE, 10, 19, 1)  # touches
    locks = apply(locks, H, WRITE, 15, OFFSET_MAX, 1)  # overlaps, to the end
    assert ranges(locks) == [(0, OFFSET_MAX, WRITE)]


def test_other_holders_are_left_alone_and_conflicts_need_an_exclusive_lock() -> None:
    other = (B, M, POSIX, 7)  # same mount and owner numbers, another client
    locks = apply([], other, READ, 0, 9, 1)
    locks = apply(locks, H, READ, 5, 14, 1)
    assert len(locks) == 2
    assert conflicting(locks, H, READ, 0, 9) is None
    got = conflicting(locks, H, WRITE, 0, 9)
    assert got is not None and got.client == B
    assert conflicting(locks, (A, M, FLOCK, 7), WRITE, 0, 9) is None  # flock is another domain
    assert conflicting(locks, H, WRITE, 10, 20) is None  # B's ends at 9


_OPS = hs.lists(
    hs.tuples(
        hs.sampled_from(
            [(A, M, POSIX, 1), (A, M, POSIX, 2), (A, M + 1, POSIX, 1), (B, M, POSIX, 1)]
        ),
        hs.sampled_from([UNLOCK, READ, WRITE]),
        hs.integers(0, 20),
        hs.integers(0, 8),
    ),
    max_size=25,
)


@given(_OPS)
def test_apply_agrees_with_a_byte_by_byte_model(ops: list[Any]) -> None:
    """Per holder, each byte is held with the kind of the last lock covering it (POSIX's
    replace), and the entries are the maximal runs of one kind (merged, none touching)."""
    locks: list[Lock] = []
    model: dict[tuple[int, int, int, int], dict[int, int]] = {}
    for holder, kind, start, length in ops:
        end = start + length
        locks = apply(locks, holder, kind, start, end, 1)
        bytes_ = model.setdefault(holder, {})
        for i in range(start, end + 1):
            if kind == UNLOCK:
                bytes_.pop(i, None)
            else:
                bytes_[i] = kind
    for holder, bytes_ in model.items():
        mine = [x for x in locks if x.holder() == holder]
        got = {i: x.kind for x in mine for i in range(x.start, x.end + 1)}
        assert got == bytes_
        assert sum(x.end - x.start + 1 for x in mine) == len(bytes_)  # no overlap
        for x in mine:  # maximal: no neighbour of the same kind just outside
            assert bytes_.get(x.start - 1) != x.kind and bytes_.get(x.end + 1) != x.kind


# The methods, as a node runs them -----------------------------------------------------------


def setlk(state: Any, caller: int, *, at: int = T0, **arg: Any) -> tuple[Any, Any]:
    full = {"m": M, "d": POSIX, "o": 1, "t": WRITE, "s": 0, "e": OFFSET_MAX, "lt": at}
    full.update({"term": TERM}, **arg)
    raw, answer = REG.update("fs.setlk", {LK: state}, full, caller)
    return unpack(raw[LK]), answer["h"]


def test_a_conflicting_lock_is_refused_and_changes_nothing() -> None:
    state, held = setlk(None, A, s=0, e=99)
    assert held == [[POSIX, 1, 0, 99, WRITE]]
    with pytest.raises(MethodRefused) as e:
        setlk(state, B, t=READ, s=50, e=60)
    assert e.value.code == "conflict"
    state, held = setlk(state, B, s=100, e=199)  # ranges that do not overlap: held at once
    assert held == [[POSIX, 1, 100, 199, WRITE]]
    assert {x.client for x in locks_of(state)} == {A, B}


def test_flock_and_fcntl_locks_do_not_conflict() -> None:
    state, _ = setlk(None, A, d=FLOCK)
    state, held = setlk(state, B, d=POSIX)
    assert held == [[POSIX, 1, 0, OFFSET_MAX, WRITE]]
    with pytest.raises(MethodRefused):
        setlk(state, B, d=FLOCK, t=READ)


def test_a_lapsed_holder_is_released_and_learns_it_at_renewal() -> None:
    state, _ = setlk(None, A)
    later = T0 + TERM + 1
    state, held = setlk(state, B, at=later)  # A's lease ended: B takes the lock
    assert held == [[POSIX, 1, 0, OFFSET_MAX, WRITE]]
    raw, answer = REG.update("fs.renewlk", {LK: state}, {"m": M, "lt": later, "term": TERM}, A)
    assert answer["h"] == [[]]  # A holds nothing any more
    assert [x.client for x in locks_of(unpack(raw[LK]))] == [B]


def test_any_lock_update_renews_the_callers_other_locks() -> None:
    state, _ = setlk(None, A, o=1, s=0, e=9)
    state, _ = setlk(state, A, o=2, s=20, e=29, at=T0 + TERM // 2)
    with pytest.raises(MethodRefused):  # o=1's lock was renewed with o=2's
        setlk(state, B, s=0, e=9, at=T0 + TERM + 1)


def test_two_mounts_of_one_client_are_two_holders() -> None:
    state, _ = setlk(None, A, m=M, s=0, e=9)
    with pytest.raises(MethodRefused):
        setlk(state, A, m=M + 1, s=0, e=9)
    state, held = setlk(state, A, m=M + 1, s=10, e=19)
    assert held == [[POSIX, 1, 10, 19, WRITE]]  # only that mount's
    raw, _ = REG.update("fs.unlockowner", {LK: state}, {"m": M + 1, "lt": T0}, A)
    assert [(x.mount, x.start) for x in locks_of(unpack(raw[LK]))] == [(M, 0)]


def test_unlock_owner_drops_one_owner_or_all_of_the_callers_locks() -> None:
    state, _ = setlk(None, A, o=1, s=0, e=9)
    state, _ = setlk(state, A, o=2, s=20, e=29)
    state, _ = setlk(state, B, o=1, s=40, e=49)
    raw, _ = REG.update("fs.unlockowner", {LK: state}, {"m": M, "o": 1, "lt": T0}, A)
    left = locks_of(unpack(raw[LK]))
    assert {(x.client, x.owner) for x in left} == {(A, 2), (B, 1)}
    raw, _ = REG.update("fs.unlockowner", {LK: unpack(raw[LK])}, {"m": M, "lt": T0}, A)
    assert {(x.client, x.owner) for x in locks_of(unpack(raw[LK]))} == {(B, 1)}


def test_getlk_names_the_conflicting_lock() -> None:
    state, _ = setlk(None, A, t=READ, s=10, e=19)
    arg = {"m": M, "d": POSIX, "o": 1, "t": WRITE, "s": 0, "e": 99, "lt": T0}
    assert REG.query("fs.getlk", {LK: state}, arg, B) == [A, M, POSIX, 1, 10, 19, READ]
    assert REG.query("fs.getlk", {LK: state}, {**arg, "t": READ}, B) is None
    assert REG.query("fs.getlk", {LK: state}, arg, A) is None  # its own lock


@pytest.mark.parametrize(
    "arg",
    [
        {"s": 10, "e": 5},  # end before start
        {"s": -1},
        {"e": OFFSET_MAX + 1},
        {"t": 3},
        {"d": 2},
        {"o": -1},
        {"o": True},
        {"m": None},
        {"term": 10**15},  # beyond the longest term
        {"lt": "now"},
    ],
)
def test_bad_arguments_are_refused_invalid(arg: dict[str, Any]) -> None:
    with pytest.raises(MethodRefused) as e:
        setlk(None, A, **arg)
    assert e.value.code == "invalid"


def test_lock_methods_touch_only_lock_objects_and_file_methods_not_them() -> None:
    full = {"m": M, "d": POSIX, "o": 1, "t": WRITE, "s": 0, "e": 9, "lt": T0, "term": TERM}
    with pytest.raises(MethodRefused) as e:
        REG.update("fs.setlk", {FILE: None}, full, A)
    assert e.value.code == "invalid"
    state, _ = setlk(None, A)
    with pytest.raises(MethodRefused):
        REG.update("fs.lease", {LK: state}, {"kind": 1, "lt": T0, "term": TERM}, A)


def test_too_many_locks_are_refused_no_locks() -> None:
    state = None
    for i in range(256):
        state, _ = setlk(state, A, o=i, s=2 * i, e=2 * i, t=READ)
    with pytest.raises(MethodRefused) as e:
        setlk(state, A, o=999, s=1000, e=1000, t=READ)
    assert e.value.code == "no-locks"


def test_nobody_unlocks_or_renews_another_clients_lock() -> None:
    """The holder is the request's authenticated principal, never an argument: client B
    naming A's mount and owner unlocks, drops and renews only its own (none)."""
    state, _ = setlk(None, A, s=0, e=9)
    state, held = setlk(state, B, t=UNLOCK, s=0, e=9)  # same m and o as A's, another client
    assert held == [] and [x.client for x in locks_of(state)] == [A]
    raw, _ = REG.update("fs.unlockowner", {LK: state}, {"m": M, "lt": T0}, B)
    assert [x.client for x in locks_of(unpack(raw[LK]))] == [A]
    later = T0 + TERM // 2
    raw, answer = REG.update("fs.renewlk", {LK: state}, {"m": M, "lt": later, "term": TERM}, B)
    assert answer["h"] == [[]]
    assert locks_of(unpack(raw[LK]))[0].expiry == T0 + TERM  # not renewed


def wait(state: Any, caller: int, **arg: Any) -> tuple[Any, bool]:
    full = {"m": M, "d": POSIX, "o": 1, "t": WRITE, "s": 0, "e": OFFSET_MAX, "lt": T0}
    full.update(arg)
    raw, answer = REG.update("fs.lkwait", {LK: state}, full, caller)
    return (None if raw[LK] is None else unpack(raw[LK])), answer


def test_a_waiter_is_recorded_while_the_lock_conflicts_and_woken_when_it_frees() -> None:
    state, _ = setlk(None, A, s=0, e=9)
    same, waits = wait(state, B, s=20, e=29)  # free: nothing recorded, ask for it
    assert waits is False and waiters_of(same) == []
    state, waits = wait(state, B, s=5, e=5)
    assert waits is True and [w[0] for w in waiters_of(state)] == [B]
    raw, answer = REG.update(
        "fs.setlk", {LK: state}, {"m": M, "d": POSIX, "o": 2, "t": READ, "s": 50, "e": 59,
                                  "lt": T0, "term": TERM}, A
    )  # fmt: skip
    assert answer["w"] == []  # a lock added frees nothing: the waiter keeps waiting
    state = unpack(raw[LK])
    assert waiters_of(state) != []
    raw, answer = REG.update("fs.unlockowner", {LK: state}, {"m": M, "o": 1, "lt": T0}, A)
    assert answer["w"] == [[LK, [B]]]  # pushed to B by every node that took it
    assert waiters_of(unpack(raw[LK])) == []  # woken: B asks again


def test_a_lapsed_lock_wakes_the_waiters_at_the_next_update() -> None:
    state, _ = setlk(None, A, s=0, e=9)
    state, _ = wait(state, B, s=0, e=9)
    later = T0 + TERM + 1
    raw, answer = REG.update("fs.renewlk", {LK: state}, {"m": M, "lt": later, "term": TERM}, A)
    assert answer["w"] == [] and answer["h"] == [[]]  # the waiter's own wait ended too
    state, _ = wait(state, B, s=0, e=9, lt=T0 + TERM - 1)
    raw, answer = REG.update("fs.renewlk", {LK: state}, {"m": M, "lt": later, "term": TERM}, A)
    assert answer["w"] == [[LK, [B]]]
