"""Reading object versions from FaB nodes (``fab/versions.py``): the client's side of the
request kind ``fab.versions``, and the node's answer to it.

Versions are not ordered requests: the nodes answer from what they executed, each for the
same cut, slot ``upto`` (a slot the client saw executed: answers of nodes that executed
more still name only the versions up to it).  A node that has not executed ``upto`` yet
says ``behind`` and is asked again after ``resend`` seconds.  An object's answer is
believed on ``f + 1`` identical answers (one of them is a correct node's, and correct
nodes that executed every slot themselves hold the same versions, ``fab/versions.py``),
as ``FabMetaClient`` believes a reply.  Answers of nodes at the same cut can still differ
by a thinning at a slot beyond it; such an object is asked again.  Correct nodes can also
answer truthfully but differently: one that installed a snapshot knows the object's
versions only since then and says so (``complete`` false).  So an incomplete answer is
taken only once ``n - f`` nodes answered (a complete one ``f + 1`` nodes vouch for wins
at once), and of the answers ``f + 1`` nodes vouch for, the one reaching furthest back
(:func:`best`): two nodes that installed the same snapshot do not hide the history the
others hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import trio

from bftfs.fab.versions import Versions
from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.outcome import ClusterUnavailable
from bftfs.qu.canon import canonical

KIND = "fab.versions"
#: Most objects one request names (a directory's entries are read a batch at a time).
MAX_OBJECTS = 64


class VersionsUnavailable(ClusterUnavailable):
    """No ``f + 1`` nodes answered an object's versions alike in time."""


def serve(versions: Versions, executed: int, payload: Any) -> list[Any]:
    """A node's answer to ``[oids, upto]``: ``["behind", executed]`` or ``["ok",
    [answer per object]]`` (:meth:`Versions.answer`)."""
    if not (isinstance(payload, list) and len(payload) == 2):
        raise ValueError("fab.versions: [oids, upto] expected")
    oids, upto = payload
    if not (isinstance(oids, list) and 0 < len(oids) <= MAX_OBJECTS and isinstance(upto, int)):
        raise ValueError("fab.versions: 1..64 objects and a slot expected")
    if not all(isinstance(o, int) and o >= 0 for o in oids):
        raise ValueError("fab.versions: object ids are naturals")
    if executed < upto:
        return ["behind", executed]
    return ["ok", [versions.answer(oid, upto) for oid in oids]]


def _well_formed(answer: Any) -> bool:
    if not (isinstance(answer, list) and len(answer) == 2 and isinstance(answer[0], bool)):
        return False
    entries = answer[1]
    return isinstance(entries, list) and all(
        isinstance(e, list)
        and len(e) == 5
        and all(isinstance(x, int) and not isinstance(x, bool) for x in e[:3])
        and (e[3] is None or isinstance(e[3], bytes))
        and isinstance(e[4], bool)
        for e in entries
    )


def best(
    answers: dict[bytes, list[Any]], votes: dict[bytes, set[int]], f: int, n: int
) -> list[Any] | None:
    """The answer to take for one object, or None to wait for more: a complete one that
    ``f + 1`` nodes gave alike; else, once ``n - f`` nodes answered, of those ``f + 1``
    nodes gave alike the one whose versions reach furthest back (its first slot lowest)."""
    vouched = [answers[k] for k, voters in votes.items() if len(voters) >= f + 1]
    complete = [a for a in vouched if a[0]]
    if complete:
        return complete[0]
    if not vouched or sum(len(v) for v in votes.values()) < n - f:
        return None
    return min(vouched, key=lambda a: a[1][0][0] if a[1] else float("inf"))


async def fetch(
    ep: Endpoint,
    nodes: Sequence[int],
    f: int,
    oids: Sequence[int],
    upto: int,
    *,
    resend: float = 0.5,
    timeout: float = 30.0,
) -> dict[int, list[Any]]:
    """Each object's versions up to slot ``upto``, as ``f + 1`` nodes answer them alike:
    ``oid -> [complete, [[slot, time, client, state, thinned], ...]]`` oldest first.

    Raises:
        VersionsUnavailable: some object had no ``f + 1`` matching answers in time.
    """
    todo = list(dict.fromkeys(oids))
    out: dict[int, list[Any]] = {}
    for i in range(0, len(todo), MAX_OBJECTS):
        out.update(await _batch(ep, nodes, f, todo[i : i + MAX_OBJECTS], upto, resend, timeout))
    return out


async def _batch(
    ep: Endpoint,
    nodes: Sequence[int],
    f: int,
    oids: list[int],
    upto: int,
    resend: float,
    timeout: float,
) -> dict[int, list[Any]]:
    votes: dict[int, dict[bytes, set[int]]] = {oid: {} for oid in oids}
    answers_of: dict[int, dict[bytes, list[Any]]] = {oid: {} for oid in oids}
    out: dict[int, list[Any]] = {}
    done = trio.Event()

    async def ask(node: int) -> None:
        want = [o for o in oids if o not in out]
        got: Any = None
        with contextlib.suppress(TransportError, RemoteError):
            got = await ep.call(NodeId(node), KIND, [want, upto], timeout=resend * 4)
        if not (isinstance(got, list) and len(got) == 2 and got[0] == "ok"):
            return  # behind, down or malformed: asked again next round
        answers = got[1]
        if not (isinstance(answers, list) and len(answers) == len(want)):
            return
        for oid, answer in zip(want, answers, strict=True):
            if oid in out or not _well_formed(answer):
                continue
            key = canonical(answer)
            for voters in votes[oid].values():
                voters.discard(node)  # a node's latest answer counts, once
            votes[oid].setdefault(key, set()).add(node)
            answers_of[oid][key] = answer
            chosen = best(answers_of[oid], votes[oid], f, len(nodes))
            if chosen is not None:
                out[oid] = chosen
        if len(out) == len(oids):
            done.set()

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            while not done.is_set():
                for j in nodes:
                    nursery.start_soon(ask, j)
                with trio.move_on_after(resend):
                    await done.wait()
            nursery.cancel_scope.cancel()
    missing = [o for o in oids if o not in out]
    if missing:
        raise VersionsUnavailable(
            f"versions of {', '.join(f'{o:#x}' for o in missing)}: no {f + 1} matching answers"
        )
    return out
