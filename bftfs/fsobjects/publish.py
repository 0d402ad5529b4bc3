"""Publication (issue 64): a reader's query answered while a writer keeps its exclusive
lease and its write-back.

The record is ``lp = [asked, published]`` (``fsobjects/pubstate.py``).  Three methods:

- :func:`fs_askpub` (a reader, its query refused ``leased`` by another client's exclusive
  lease): numbers a request on each object another client holds exclusively, answers
  ``[[oid, [holder ids], token], ...]``; every correct node that takes it pushes
  ``{"publish": [oid, ...]}`` to the holders (``node/recalls.py``).  Nothing else
  changes: no lease is recalled or held off, so the holder keeps its lease.
- :func:`fs_pub_asked` (the holder, a query): ``asked`` of each object, read *before* it
  sends what it holds back for them.
- :func:`fs_publish` (the holder, after sending what it held back): ``published =
  max(published, min(n, asked))`` for the ``n`` it read, on each object it still holds
  exclusively (any other object is left as it is).

Why a reader with token ``t <= published`` may read what the servers hold: the holder's
``fs.pubasked`` read ``asked >= t``, so request ``t`` was ordered before that read (Q/U
linearizes an object's operations), which came before the holder began to send what it
held back; the reader's call began before its request.  So everything the holder had
closed when the reader's call began is on the servers when the reader reads: its query
is linearized at the publication, close-to-open holds, and what the holder closes later
stays in its mount until the next publication or the lease's end, as before.  A token
counted by a holder that lost its lease later still needs a publication of the next
holder (the count only grows, and a reader's new token is above every publication made
before it), and only an exclusive holder can publish.

What the holder pays is its choice: it publishes at its own pace, several requests with
one read and one update (``fs/leases/publish.py``).  A reader whose request is not
published in time recalls the lease as before (``fs/clients/calls.py``), so a holder that
never publishes costs it what a holder that never releases does.
"""

from __future__ import annotations

from typing import Any

from bftfs.fsobjects.leases import EXCLUSIVE, LEASE_TIME, live, mount_of, who
from bftfs.fsobjects.limits import MAX_TIME, MIN_TIME
from bftfs.fsobjects.pubstate import PUB_KEY, counts
from bftfs.fsobjects.state import check_arg, check_int, node_state
from bftfs.qu.objects import MethodRefused, States

#: The argument key of the numbers the holder read (:func:`fs_publish`): ``[[oid, n], ...]``.
UPTO = "n"
#: Requests counted at most on one object (a number that big is nobody's honest count).
MAX_ASKED = 2**62


def fs_askpub(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Ask the exclusive holder of each object to publish (module docstring): a new token
    on each object another client holds a live exclusive lease on at ``lt``; the answer
    names those objects, their holders and the tokens.  An object with no such lease (it
    ended, or was given up) is left as it is and not named: the caller reads it at once."""
    a = check_arg(arg)
    at = check_int(a, LEASE_TIME, MIN_TIME, MAX_TIME)
    me = (caller, mount_of(a))
    new: dict[int, Any] = {}
    out = []
    for oid, state in states.items():
        if state is None:
            new[oid] = None
            continue
        s = node_state(state)
        exclusive = [h for h in live(s, at, other_than=me) if h[1] == EXCLUSIVE]
        if not exclusive:
            new[oid] = state
            continue
        asked, published = counts(s)
        asked = min(asked + 1, MAX_ASKED)
        s[PUB_KEY] = [asked, published]
        new[oid] = s
        out.append([oid, sorted({h[0] for h in exclusive}), asked])
    return new, out


def fs_pub_asked(states: States, arg: Any) -> Any:
    """``[[oid, asked], ...]``: the requests counted on each object (0 for none)."""
    return [[oid, counts(state)[0]] for oid, state in sorted(states.items())]


def fs_publish(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Record that the caller sent what it held back for each object it holds exclusively
    (module docstring): ``published`` up to the number it read for that object (``n``),
    never past what was asked nor backwards.  Objects it does not hold exclusively at
    ``lt``, or with no number, are left as they are.  The answer: the objects recorded."""
    a = check_arg(arg)
    at = check_int(a, LEASE_TIME, MIN_TIME, MAX_TIME)
    me = (caller, mount_of(a))
    upto = published_numbers(a.get(UPTO))
    new: dict[int, Any] = {}
    done = []
    for oid, state in states.items():
        n = upto.get(oid)
        held = any(who(h) == me and h[1] == EXCLUSIVE for h in live(state, at))
        if state is None or n is None or not held:
            new[oid] = state
            continue
        s = node_state(state)
        asked, published = counts(s)
        s[PUB_KEY] = [asked, max(published, min(n, asked))]
        new[oid] = s
        done.append(oid)
    return new, sorted(done)


def published_numbers(got: Any) -> dict[int, int]:
    """``[[oid, n], ...]`` (``fs.publish``'s :data:`UPTO`) as a map; refused ``invalid``
    when malformed (a node telling readers reads an accepted update's the same way)."""
    if not isinstance(got, list) or len(got) > 64:
        raise MethodRefused("invalid", f"{UPTO} must be a list of [object, number] pairs")
    out = {}
    for item in got:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in item)
        ):
            raise MethodRefused("invalid", f"{UPTO} must be a list of [object, number] pairs")
        out[item[0]] = item[1]
    return out
