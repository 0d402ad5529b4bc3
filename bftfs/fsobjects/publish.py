"""Publication (issue 64): a reader's query answered while a writer keeps its exclusive
lease and its write-back.

The record is ``lp = [[client, mount, token], ...]`` (``fsobjects/pubstate.py``).  Two
methods:

- :func:`fs_pubreq` (a reader whose query another client's exclusive lease refused
  ``leased``), a **query**: names each object another client holds exclusively, its
  holders and the reader's token (a number of the reader's own, above every one it used
  before), ``[[oid, [holder ids], token], ...]``; every correct node that answers it
  pushes ``{"publish": [[oid, client, mount, token], ...]}`` to the holders
  (``node/recalls.py``).  Nothing changes: no lease is recalled or held off, so the
  holder keeps its lease, and no version is made, so the holder's own updates of the
  objects meet nothing of the reader's (as an update, each request made every object it
  named a version the writer's next update had to catch up with, and the two raced:
  repairs, barriers and copies over the writer's batches, one unlink beside a reader
  listing its directory waited 63 s).
- :func:`fs_publish` (the holder, after sending what it held back): for each object it
  still holds exclusively, ``published`` of each reader named up to that reader's token
  (never backwards).

Why a reader with token ``t`` that a publication covers may read what the servers hold:
the holder publishes ``t`` for a reader only once ``b + 1`` nodes pushed it (one of them
correct: that node answered the reader's request, which the reader sent after its call
began), and it sends what it held back after that, then records it.  So everything the
holder had closed when the reader's call began is on the servers when the reader reads:
its query is linearized at the publication, close-to-open holds, and what the holder
closes later stays in its mount until the next publication or the lease's end, as
before.  A token recorded by a holder that lost its lease later still needs a publication
of the next holder for the reader's next token (each is above the last), and only an
exclusive holder can publish.  A Byzantine holder can record any token: it could as well
never send what it holds, and what it records answers only the readers' own queries.

What the holder pays is its choice: it publishes at its own pace, several requests with
one update (``fs/leases/publish.py``).  A reader whose request is not published in time
recalls the lease as before (``fs/clients/calls.py``), so a holder that never publishes
costs it what a holder that never releases does.
"""

from __future__ import annotations

from typing import Any

from bftfs.fsobjects.leases import EXCLUSIVE, LEASE_TIME, live, mount_of, who
from bftfs.fsobjects.limits import MAX_TIME, MIN_TIME
from bftfs.fsobjects.pubstate import MAX_TOKEN, Reader, is_count, with_published
from bftfs.fsobjects.state import check_arg, check_int, node_state
from bftfs.qu.objects import MethodRefused, States

#: The argument key of the reader's token (:func:`fs_pubreq`).
TOKEN = "k"
#: The argument key of what the holder publishes (:func:`fs_publish`):
#: ``[[oid, client, mount, token], ...]``.
UPTO = "r"
#: Entries one publication names at most.
MAX_UPTO = 256


def fs_pubreq(states: States, arg: Any, caller: int) -> Any:
    """Ask the exclusive holders of the objects to publish (module docstring): each object
    another client holds a live exclusive lease on at ``lt``, its holders and the token,
    ``[[oid, [holder ids], token], ...]``.  An object with no such lease (it ended, or was
    given up) is not named: the caller reads it at once."""
    a = check_arg(arg)
    at = check_int(a, LEASE_TIME, MIN_TIME, MAX_TIME)
    token = check_int(a, TOKEN, 1, MAX_TOKEN)
    me = (caller, mount_of(a))
    out = []
    for oid, state in sorted(states.items()):
        if state is None:
            continue
        exclusive = [h for h in live(state, at, other_than=me) if h[1] == EXCLUSIVE]
        if exclusive:
            out.append([oid, sorted({h[0] for h in exclusive}), token])
    return out


def fs_askpub_legacy(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """``fs.askpub``, an older release's request to publish (an update, which numbered
    requests in the record): kept for the requests stored in histories; it changes
    nothing and names nothing, so an older mount reads at once, or recalls."""
    return dict(states), []


def fs_pub_asked_legacy(states: States, arg: Any) -> Any:
    """``fs.pubasked``, an older release's holder reading the requests counted: none."""
    return [[oid, 0] for oid in sorted(states)]


def fs_publish(states: States, arg: Any, caller: int) -> tuple[dict[int, Any], Any]:
    """Record that the caller sent what it held back for each object it holds exclusively
    (module docstring): each reader named for it published up to its token.  Objects it
    does not hold exclusively at ``lt``, or that no entry names, are left as they are.
    The answer: the objects recorded."""
    a = check_arg(arg)
    at = check_int(a, LEASE_TIME, MIN_TIME, MAX_TIME)
    me = (caller, mount_of(a))
    upto = publication_entries(a.get(UPTO))
    new: dict[int, Any] = {}
    done = []
    for oid, state in states.items():
        readers = upto.get(oid)
        held = any(who(h) == me and h[1] == EXCLUSIVE for h in live(state, at))
        if state is None or not readers or not held:
            new[oid] = state
            continue
        s = node_state(state)
        with_published(s, readers)
        new[oid] = s
        done.append(oid)
    return new, sorted(done)


def publication_entry(item: Any) -> tuple[int, int, int, int] | None:
    """One ``[oid, client, mount, token]`` entry (of ``fs.publish``'s :data:`UPTO`, or of
    a node's push to a holder) as a tuple, or None when malformed."""
    if isinstance(item, list) and len(item) == 4 and all(is_count(x) for x in item):
        return item[0], item[1], item[2], item[3]
    return None


def publication_entries(got: Any) -> dict[int, dict[Reader, int]]:
    """``[[oid, client, mount, token], ...]`` (``fs.publish``'s :data:`UPTO`) as
    oid -> reader -> token (the highest named); refused ``invalid`` when malformed (a node
    telling readers reads an accepted update's the same way)."""
    malformed = MethodRefused("invalid", f"{UPTO} must be a list of [object, client, mount, token]")
    if not isinstance(got, list) or len(got) > MAX_UPTO:
        raise malformed
    out: dict[int, dict[Reader, int]] = {}
    for item in got:
        entry = publication_entry(item)
        if entry is None:
            raise malformed
        oid, client, mount, token = entry
        readers = out.setdefault(oid, {})
        readers[(client, mount)] = max(readers.get((client, mount), 0), token)
    return out
