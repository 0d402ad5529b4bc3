"""Proven conditioned-on links: deciding skips behind pruned histories (issue 22, item 3).

Classification by deduction must know whether a newer candidate at one object of a
multi-object candidate M descends from M or skipped it (L2747-2754,
``classify.View.excluded``).  The answer is in the conditioned-on chain, but pruning (line
1028) removes the chain's links from the replica histories behind every complete version.
Guessing either way is unsafe: excluding an established M abandons it at every object,
keeping an abandoned M lets a copy carry it at some objects only - half an atomic update.

Every server stores the request that made each candidate it accepted (``qu.req``), and a
candidate's timestamp is a hash over that request's operation, culled multi-OHS and links
(:func:`request_digest`).  So the stored request *proves* the candidate's conditioned-on
timestamp at each of its objects: whoever holds it re-runs ``s_setup`` on it and checks
that it yields exactly that timestamp (:func:`prove`).  No server has to be believed; a
client fetches the missing links from any server (``qu.fetch``) and sends them along with
its request (``Request.links``), and each server checks them the same way before it
classifies.

The links a request carries go into its timestamp hash.  The proof of a stored request's
own links is not needed to check it: those links are bound by its hash, and a benign server
checked their proofs when it accepted the request (a chain link has order >= r, so a benign
server accepted it).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bftfs.qu.canon import canonical, pack
from bftfs.qu.classify import QUThresholds, View
from bftfs.qu.history import MultiOHS, multi_ohs_digest
from bftfs.qu.messages import MessageError
from bftfs.qu.request import MAX_LINKS, Link, Request
from bftfs.qu.setup import setup
from bftfs.qu.timestamp import Timestamp

Facts = Mapping[tuple[int, Timestamp], Timestamp]

#: Links sent without proofs whose stored requests a server fetches from the others for
#: one request (:class:`NeedProofs`): as many as a request carries (``request.MAX_LINKS``;
#: a server that missed a stretch of versions lacks them all).  The calls that costs are
#: bounded and charged to the sender (``node/qu_objsync.fetch_proofs``).
MAX_FETCHED = MAX_LINKS


@dataclass(frozen=True)
class NeedProofs:
    """Result of a step whose request sent links without proofs that this server holds no
    stored request for (it did not take those versions): the node fetches them from the
    others (``qu.fetch``; a stored request proves itself, so one answer will do) and runs
    the step again with them."""

    links: tuple[Link, ...]


def unheld(
    links: Iterable[Link], known: KnownLinks, own: Callable[[Timestamp], bytes | None]
) -> tuple[Link, ...]:
    """The links sent without proofs, not proven here before, that ``own`` holds no
    stored request for."""
    return tuple(
        lk
        for lk in links
        if lk.proof is None and known.get(lk.oid, lk.lt) is None and own(lk.lt) is None
    )


def shows(proof: bytes, th: QUThresholds, link: Link) -> bool:
    """Whether ``proof`` (a stored request, packed) shows ``link``."""
    return prove(proof, th, link.oid, link.lt) == link.lt_co


class LinkError(ValueError):
    """A link whose proof does not show it."""


def request_digest(mohs: MultiOHS, links: Iterable[Link] = ()) -> bytes:
    """What a request's timestamps hash besides kind and operation: the culled multi-OHS,
    and the links its classification used (none for nearly every request, which keeps the
    plain :func:`bftfs.qu.history.multi_ohs_digest`)."""
    d = multi_ohs_digest(mohs)
    facts = sorted((lk.oid, lk.lt.encode(), lk.lt_co.encode()) for lk in links)
    if not facts:
        return d
    h = hashlib.blake2b(digest_size=32, person=b"bftfs-qu-links")
    h.update(d)
    h.update(canonical([list(f) for f in facts]))
    return h.digest()


def expected_setup_lt(req: Request, th: QUThresholds) -> tuple[Timestamp, dict] | None:
    """The timestamp servers set up for ``req`` (culled as stored) and each operated
    object's conditioned-on timestamp, or None if classification needs more than the
    request carries (objects or links) or time ran out."""
    view = View(req.mohs, th, req.link_map())
    su = setup(
        view,
        req.client,
        req.op.canonical() if req.op else None,
        request_digest(req.mohs, req.links),
        req.objects,
    )
    if su is None or view.wanted_links():
        return None
    return su.lt, {oid: c.lt_co for oid, c in su.candidates.items()}


@functools.lru_cache(maxsize=4096)
def prove(proof: bytes, th: QUThresholds, oid: int, lt: Timestamp) -> Timestamp | None:
    """The conditioned-on timestamp of version ``lt`` of ``oid`` that ``proof`` (a stored
    request, packed) shows, or None if it shows nothing about it."""
    try:
        req = Request.from_wire(proof, th.n)
    except MessageError:
        return None
    if oid not in req.objects:
        return None
    got = expected_setup_lt(req, th)
    if got is None or got[0] != lt:
        return None
    return got[1][oid]


def proven_chain(
    raw: Any, th: QUThresholds, oid: int, lt: Timestamp, most: int
) -> list[tuple[Timestamp, Timestamp, bytes]]:
    """``(lt, lt_co, proof)`` of version ``lt`` of ``oid`` and of up to ``most`` versions
    before it down its conditioned-on chain, from one ``qu.fetch`` answer
    (``reads.fetch_reply``: ``r`` the stored request of ``lt``, ``c`` those before it),
    each checked by what it proves, as far as they check (a liar's entry ends the
    stretch); empty if the answer proves nothing about ``lt``.  What a client's walk
    (``QuorumRounds.proof``) and a node fetching for bare links (``fetch_proofs``)
    take from an answer."""
    first = raw.get("r") if isinstance(raw, dict) else None
    if first is None:
        return []
    before = raw.get("c")
    out: list[tuple[Timestamp, Timestamp, bytes]] = []
    at = lt
    for item in [first, *(before if isinstance(before, list) else [])][: most + 1]:
        try:
            proof = pack(item)
        except (TypeError, ValueError):
            break
        co = prove(proof, th, oid, at)
        if co is None:
            break
        out.append((at, co, proof))
        at = co
    return out


def requests_answered(raw: Any, lts: list[Timestamp]) -> dict[Timestamp, bytes]:
    """The stored requests (packed) of a ``qu.fetch`` answer to ``lts`` (the first asked
    as ``lt``, the rest as ``more``: ``reads.fetch_reply``), by timestamp; what each
    proves is the asker's to check (:func:`prove`), so a liar's are merely useless."""
    if not isinstance(raw, dict):
        return {}
    many = raw.get("m")
    items = [raw.get("r"), *(many if isinstance(many, list) else [])]
    out: dict[Timestamp, bytes] = {}
    for lt, item in zip(lts, items, strict=False):
        if item is None:
            continue
        try:
            out[lt] = pack(item)
        except (TypeError, ValueError):
            continue
    return out


class KnownLinks:
    """Links one server has proven, ``(oid, lt) -> lt_co``: a link is a fact for ever, so
    the thousands of links a walk's requests carry without proofs (two mounts in one
    directory) are proven once, not on every request that carries them again, and the
    stored requests the server lacks for them are fetched once, not per request.
    Bounded: past :data:`MOST` the older half goes (each is proven again if needed)."""

    MOST = 1 << 16

    def __init__(self) -> None:
        self._known: dict[tuple[int, Timestamp], Timestamp] = {}

    def get(self, oid: int, lt: Timestamp) -> Timestamp | None:
        """``lt``'s conditioned-on timestamp at ``oid``, if proven here."""
        return self._known.get((oid, lt))

    def add(self, oid: int, lt: Timestamp, lt_co: Timestamp) -> None:
        """Remember a proven link."""
        if len(self._known) >= self.MOST:
            for key in list(itertools.islice(self._known, self.MOST // 2)):
                del self._known[key]
        self._known[(oid, lt)] = lt_co


def verified(
    links: Iterable[Link],
    th: QUThresholds,
    own: Callable[[Timestamp], bytes | None] = lambda _lt: None,
    known: KnownLinks | None = None,
) -> dict[tuple[int, Timestamp], Timestamp]:
    """The links of a request as facts, every one checked against its proof, or, for a
    link sent without one, against ``own(lt)``: the request this server stored when it
    accepted ``lt`` itself (packed), as good a proof as any and one nobody had to send.
    A walk down a long pruned chain needs more proofs than a request carries (thousands
    of links, megabytes, two PostMarks in one directory: every node refused it); a
    client sends the links past ``request.MAX_PROVEN`` without proofs, and the servers
    that stored those requests decide.

    Raises:
        LinkError: a link without a proof here, or one its proof does not show.
    """
    known = known if known is not None else KnownLinks()
    out: dict[tuple[int, Timestamp], Timestamp] = {}
    for lk in links:
        co = known.get(lk.oid, lk.lt)
        if co is None:
            proof = lk.proof if lk.proof is not None else own(lk.lt)
            co = None if proof is None else prove(proof, th, lk.oid, lk.lt)
            if co is not None:
                known.add(lk.oid, lk.lt, co)
        if co != lk.lt_co:
            raise LinkError(f"link of object {lk.oid} at {lk.lt} is not proven")
        out[(lk.oid, lk.lt)] = lk.lt_co
    return out
