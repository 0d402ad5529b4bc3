"""Tier 1: a recall holds until the requester has had its turn, whatever the recalled
holder does (issue 60, item 1; ``bftfs/fsobjects/leases.py``).

The attacker holds one client's key: it chooses its mount numbers and the times of its
releases; its client identity is authenticated.  Each test is the attack as the sequence
of methods the nodes run, on one object state, deterministic."""

from __future__ import annotations

from typing import Any

import pytest

from bftfs.fsobjects import FS, new_dir
from bftfs.fsobjects.leases import DONE, EXCLUSIVE, RECALL_GRACE, SHARED, holders
from bftfs.qu.canon import unpack
from bftfs.qu.objects import MethodRefused, Registry

REG = Registry([FS])
DIR, SUB = 16, 22
ATTACKER, VICTIM, OTHER = 101, 102, 103
S = 10**9
T0 = 1_700_000_000 * S
TERM = 8 * S


def directory() -> dict[str, Any]:
    return new_dir(1, 0o755, 0, 0, T0)


def update(method: str, state: Any, caller: int, **arg: Any) -> Any:
    """``method`` on ``DIR`` (and ``SUB``, a name in it, for a mkdir): the new ``DIR``."""
    states = {DIR: state, SUB: None} if method == "fs.mkdir" else {DIR: state}
    raw, _ = REG.update(method, states, arg, caller)
    return unpack(raw[DIR])


def lease(state: Any, caller: int, at: int, *, mount: int = 0, kind: int = SHARED) -> Any:
    return update("fs.lease", state, caller, kind=kind, lt=at, term=TERM, lm=mount)


def mkdir(state: Any, caller: int, at: int, *, mount: int = 0, name: bytes = b"v") -> Any:
    arg: dict[str, Any] = {"name": name, "p": DIR, "o": SUB, "mode": 0o755, "uid": 0}
    return update("fs.mkdir", state, caller, **arg, gid=0, now=at, lt=at, lm=mount)


def recall(state: Any, caller: int, at: int, *, mount: int = 0, **extra: Any) -> Any:
    return update("fs.recall", state, caller, lt=at, lm=mount, **extra)


def refused(code: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(MethodRefused) as e:
        fn(*args, **kwargs)
    assert e.value.code == code


def test_a_release_then_a_lease_at_once_does_not_retake_the_object_before_the_requester() -> None:
    """Attack (a): the recalled holder releases and leases again in the same instant; the
    recall used to go with the release, so the new lease came before the victim's retry,
    term after term.  Now it stays for the victim: the holder's lease is refused
    ``recalled`` until the victim's change lands, then granted again."""
    d = lease(directory(), ATTACKER, T0)
    refused("leased", mkdir, d, VICTIM, T0 + S)
    d = recall(d, VICTIM, T0 + S)
    d = update("fs.release", d, ATTACKER, lt=T0 + 2 * S)
    refused("recalled", lease, d, ATTACKER, T0 + 2 * S)
    refused("recalled", lease, d, ATTACKER, T0 + 2 * S, mount=9)  # another mount: same client
    d = mkdir(d, VICTIM, T0 + 2 * S + S // 2)  # the victim's retry, half a second later
    assert holders(lease(d, ATTACKER, T0 + 3 * S))[0][0] == ATTACKER  # its turn was had


def test_a_decoy_recall_from_the_holders_own_mount_does_not_let_it_clear_the_record() -> None:
    """Attack (b): the holder recalls first, through a decoy lease of a second mount number
    of its own, so the record named it as the requester; the victim's recall found the
    record taken; the holder's touch of the object then "landed the requester's change"
    and removed it, and the holder renewed.  Now its own mounts queue nobody, the victim is
    queued, and neither the touch, the decoy's release nor a renewal removes the victim."""
    d = lease(directory(), ATTACKER, T0, mount=1)
    d = update("fs.lease", d, ATTACKER, kind=SHARED, lt=T0, term=S // 2, lm=2)  # the decoy
    d = recall(d, ATTACKER, T0 + S // 4, mount=1)  # recalls its own decoy first
    refused("leased", mkdir, d, VICTIM, T0 + S)
    d = recall(d, VICTIM, T0 + S)
    d = update("fs.release", d, ATTACKER, lt=T0 + 2 * S, lm=2)
    d = mkdir(d, ATTACKER, T0 + 2 * S, mount=1, name=b"touch")  # its own lease: lands
    refused("recalled", lease, d, ATTACKER, T0 + 3 * S, mount=1)  # cannot renew
    refused("recalled", lease, d, ATTACKER, T0 + 3 * S, mount=2)
    d = recall(d, ATTACKER, T0 + 3 * S, mount=2)  # recalls again: queues nobody ahead
    refused("leased", mkdir, d, VICTIM, T0 + TERM - S)
    refused("recalled", lease, d, ATTACKER, T0 + TERM, mount=1)  # its lease ran out
    after = mkdir(d, VICTIM, T0 + TERM)  # at most one term after it asked
    assert "lr" not in after and "ls" not in after


def test_every_holder_strategy_leaves_the_victim_waiting_at_most_the_term_it_found() -> None:
    """The attacker's moves, interleaved with the victim's retries (every half second, a
    recall every eighth try, as ``Meta._recalling``): release and lease again, decoy
    leases and recalls from other mounts, touches of the object, renewals.  The victim's
    update lands by the end of the lease that stood when it first asked."""
    d = lease(directory(), ATTACKER, T0, mount=1)
    first_end = T0 + TERM
    landed = None
    for step in range(4 * TERM // (S // 2)):
        at = T0 + S + step * (S // 2)
        for move in range(5):
            mount = 1 + (step + move) % 3
            try:
                if move == 0:
                    d = update("fs.release", d, ATTACKER, lt=at, lm=mount)
                elif move == 1:
                    d = lease(d, ATTACKER, at, mount=mount, kind=(SHARED, EXCLUSIVE)[step % 2])
                elif move == 2:
                    d = recall(d, ATTACKER, at, mount=mount)
                elif move == 3:
                    d = mkdir(d, ATTACKER, at, mount=mount, name=b"t%d" % step)
                else:
                    d = recall(d, ATTACKER, at, mount=mount, **{DONE: 1})
            except MethodRefused:
                pass
        try:
            d = mkdir(d, VICTIM, at)
        except MethodRefused as e:
            assert e.code == "leased"
            if step % 8 == 0:
                d = recall(d, VICTIM, at)
            continue
        landed = at
        break
    assert landed is not None and landed <= first_end + S


def test_waiting_clients_are_served_in_the_order_they_recalled() -> None:
    """Two clients wait: neither the holder nor the second takes a lease before the first
    has had its turn; the first, alone and with no other lease left, may take one (its
    turn); a client's ``ld`` ends its own wait and nobody else's."""
    d = lease(directory(), ATTACKER, T0)
    d = recall(d, VICTIM, T0 + S)
    d = recall(d, OTHER, T0 + S)
    assert [w[0] for w in d["lr"]["q"]] == [VICTIM, OTHER]
    d = update("fs.release", d, ATTACKER, lt=T0 + 2 * S)
    for who in (ATTACKER, VICTIM, OTHER):  # two wait: nobody takes one yet
        refused("recalled", lease, d, who, T0 + 2 * S)
    d = recall(d, ATTACKER, T0 + 2 * S, **{DONE: 1})  # not waiting: changes nothing
    assert [w[0] for w in d["lr"]["q"]] == [VICTIM, OTHER]
    d = recall(d, OTHER, T0 + 2 * S, **{DONE: 1})  # its query was answered
    assert [w[0] for w in d["lr"]["q"]] == [VICTIM]
    refused("recalled", lease, d, ATTACKER, T0 + 2 * S)
    d = lease(d, VICTIM, T0 + 2 * S)  # alone, nobody else's lease left: its turn
    assert "lr" not in d and holders(d)[0][0] == VICTIM


def test_a_requester_that_never_comes_back_holds_leases_off_its_grace_no_longer() -> None:
    """Those waiting go ``RECALL_GRACE`` after the end of the leases they recalled (which
    nobody could renew meanwhile); a second recall keeps the client's place."""
    d = lease(directory(), ATTACKER, T0)
    d = recall(d, VICTIM, T0 + S)
    d = recall(d, OTHER, T0 + 2 * S)
    d = recall(d, VICTIM, T0 + 3 * S)
    assert [w[0] for w in d["lr"]["q"]] == [VICTIM, OTHER]
    d = update("fs.release", d, ATTACKER, lt=T0 + 4 * S)
    refused("recalled", lease, d, ATTACKER, T0 + TERM + RECALL_GRACE - 1)
    assert holders(lease(d, ATTACKER, T0 + TERM + RECALL_GRACE))[0][0] == ATTACKER
    assert "lr" not in update("fs.release", d, ATTACKER, lt=T0 + TERM + RECALL_GRACE)


def test_an_older_recall_record_is_read_as_one_waiting_client() -> None:
    """Records stored before the queue (``[requester, time, mount, until]``) keep holding
    leases off for their requester until its grace."""
    d = lease(directory(), ATTACKER, T0)
    d["lr"] = [VICTIM, T0 + S, 0, T0 + TERM]
    refused("recalled", lease, d, ATTACKER, T0 + TERM)
    assert "lr" not in mkdir(d, VICTIM, T0 + TERM)
    d["lr"] = [VICTIM, T0 + S]  # without until: outlived at once
    assert holders(lease(d, ATTACKER, T0 + 2 * S))[0][0] == ATTACKER


def test_an_exclusive_holder_keeps_another_clients_lookups_off_no_longer_than_its_term() -> None:
    """A query refused under another client's exclusive lease recalls it; the holder can
    neither renew nor retake it (released or not) until the asker has had its turn, so the
    asker's lookup is answered once the lease it found ends; its ``ld`` then lets the
    holder lease again at once."""
    d = lease(directory(), ATTACKER, T0, kind=EXCLUSIVE)
    refused("leased", REG.query, "fs.lookup", {DIR: d}, b"x", VICTIM)
    d = recall(d, VICTIM, T0 + S)
    refused("recalled", lease, d, ATTACKER, T0 + 2 * S, kind=EXCLUSIVE)
    released = update("fs.release", d, ATTACKER, lt=T0 + 2 * S)
    refused("recalled", lease, released, ATTACKER, T0 + 2 * S, kind=EXCLUSIVE)
    refused("not-found", REG.query, "fs.lookup", {DIR: released}, b"x", VICTIM)
    d = recall(d, VICTIM, T0 + TERM)  # its next recall, as the lease ends: tidied away
    refused("not-found", REG.query, "fs.lookup", {DIR: d}, b"x", VICTIM)
    d = recall(d, VICTIM, T0 + TERM, **{DONE: 1})
    assert "lr" not in d
    assert holders(lease(d, ATTACKER, T0 + TERM, kind=EXCLUSIVE))[0][0] == ATTACKER
