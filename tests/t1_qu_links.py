"""Tier 1: proven conditioned-on links (``bftfs.qu.links``, issue 22 item 3).

Classification by deduction must know whether a newer candidate at one object of a
multi-object update skipped it; pruning removes the chain from the histories, and stored
requests prove it again.  These tests build the histories on in-memory replicas with a
scripted client, so the exact interleaving that split an update before is replayed.
"""

from __future__ import annotations

from typing import Any

import pytest
from qu_helpers import MemCluster, send
from t1_qu_client import make_client, round_budget

from bftfs.ids import client_id
from bftfs.qu import linkproofs, replica, schema
from bftfs.qu.attempt import QUUnavailable
from bftfs.qu.canon import pack
from bftfs.qu.classify import View
from bftfs.qu.history import OHSEntry
from bftfs.qu.links import KnownLinks, LinkError, prove, unheld, verified
from bftfs.qu.messages import KIND_FETCH, VERSION, ReplyStatus
from bftfs.qu.reads import handle_fetch
from bftfs.qu.request import Link, Operation, Request
from bftfs.qu.timestamp import ZERO, Timestamp

C1, DEAD = int(client_id(1)), int(client_id(3))
D, F = 1, 2  # a "directory" and a "file" counter
ALL = range(6)


def ohs_of(cl: MemCluster, oid: int, servers: list[int]) -> dict[int, OHSEntry]:
    return {s: cl.ohs_entry(s, oid) for s in servers}


def inc(seq: int) -> Operation:
    return Operation("counter.increment", False, 1, seq)


def abandoned_update_behind_a_pruned_chain() -> tuple[MemCluster, dict]:
    """A dead client's add_all M over D and F reaches servers 0-2 (r = 3: repairable).  A
    client that saw M at only 2 servers of D barriers and copies D past it (skipping M),
    then two increments of D prune the copy from every history but stale server 1's.  F
    saw nothing since: its histories still list M at order r.  Returns the cluster and the
    timestamps of M and of D's copy Y."""
    cl = MemCluster()
    m_req = Request(DEAD, (D, F), {D: {}, F: {}}, Operation("counter.add_all", False, 5, 1))
    m = send(cl, [0, 1, 2], m_req)[0].lt
    five = [0, 2, 3, 4, 5]
    bar = send(cl, five, Request(C1, (D,), {D: ohs_of(cl, D, five)}, None))
    assert {r.type for r in bar.values()} == {"barrier"}
    copy = send(cl, five, Request(C1, (D,), {D: ohs_of(cl, D, five)}, None))
    assert {r.type for r in copy.values()} == {"copy"}
    y = copy[0].lt
    for seq in (1, 2):
        reps = send(cl, five, Request(C1, (D,), {D: ohs_of(cl, D, five)}, inc(seq)))
        assert {r.status for r in reps.values()} == {ReplyStatus.OK}
    return cl, {"m": m, "y": y}


def test_the_scenario_leaves_the_skip_undecidable_from_histories() -> None:
    cl, lts = abandoned_update_behind_a_pruned_chain()
    v = View({D: ohs_of(cl, D, list(ALL)), F: ohs_of(cl, F, list(ALL))}, cl.th)
    assert (D, lts["y"]) in v.wanted_links()
    assert v.excluded() == frozenset()  # undecided: M is kept, but nobody may act on it


def test_a_stored_request_proves_the_link_and_excludes_the_abandoned_update() -> None:
    cl, lts = abandoned_update_behind_a_pruned_chain()
    proof = pack(handle_fetch(cl.kvs[0], lts["y"]))
    assert prove(proof, cl.th, D, lts["y"]) == ZERO  # Y copied D's initial version
    assert prove(proof, cl.th, F, lts["y"]) is None  # Y says nothing about F
    assert prove(proof, cl.th, D, lts["m"]) is None  # nor about another timestamp
    assert prove(proof[:-3] + b"\x00\x00\x00", cl.th, D, lts["y"]) is None
    v = View(
        {D: ohs_of(cl, D, list(ALL)), F: ohs_of(cl, F, list(ALL))}, cl.th, {(D, lts["y"]): ZERO}
    )
    assert v.wanted_links() == frozenset()
    assert any(k[0] == lts["m"]._bytes for k in v.excluded())
    # What the log names when a walk is too long: M, walked at D from D's newest.
    assert [(c.lt, oid) for c, oid, _ in v.walked.values()] == [(lts["m"], D)]


async def test_a_reader_repairs_the_file_without_splitting_the_update() -> None:
    """Before proven links the reader's copy carried M at F (5) but not at D: half of an
    atomic update.  Now it proves D's pruned link, excludes M and copies F's initial."""
    cl, _ = abandoned_update_behind_a_pruned_chain()
    cl.down = {5}  # the reader's quorum includes stale server 1: F shows M at order r
    c = make_client(cl, 0)
    round_budget(c, 100)

    f, d = await c.query(F, "counter.fetch"), await c.query(D, "counter.fetch")
    assert (f, d) == (0, 2)
    assert c.statistics().link_proofs >= 1


def test_servers_refuse_links_without_a_valid_proof() -> None:
    """A link without its proof is checked against the request the server stored when it
    took that version, or one it fetches from the others (server 1 never took the copy
    Y); a false link is refused with a proof or without, and so is a true one whose
    request no server holds any more."""
    cl, lts = abandoned_update_behind_a_pruned_chain()
    mohs = {D: ohs_of(cl, D, list(ALL)), F: ohs_of(cl, F, list(ALL))}
    proof = pack(handle_fetch(cl.kvs[0], lts["y"]))
    bare = Request(C1, (D, F), mohs, None, None, (Link(D, lts["y"], ZERO),))
    lying = Request(C1, (D, F), mohs, None, None, (Link(D, lts["y"], lts["m"], proof),))
    bare_lie = Request(C1, (D, F), mohs, None, None, (Link(D, lts["y"], lts["m"]),))
    for server, req in ((3, lying), (3, bare_lie), (1, bare_lie)):
        rep = send(cl, [server], req)[server]
        assert rep.status is ReplyStatus.REFUSED and "not proven" in rep.why
    undecided = send(cl, [3], Request(C1, (D, F), mohs, None))[3]
    assert undecided.status is ReplyStatus.NEED and "links" in undecided.why
    proven = Request(C1, (D, F), mohs, None, None, (Link(D, lts["y"], ZERO, proof),))
    assert send(cl, [3], proven)[3].status is ReplyStatus.OK  # the barrier
    assert send(cl, [4], bare)[4].status is ReplyStatus.OK  # its own stored request
    assert send(cl, [1], bare)[1].status is ReplyStatus.OK  # one fetched from the others
    for kv in cl.kvs:
        schema.delete_request(kv, lts["y"])
    rep = send(cl, [2], bare)[2]
    assert rep.status is ReplyStatus.REFUSED and "not proven" in rep.why


async def test_links_past_the_proof_budget_go_bare_and_the_servers_check_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A walk needing more proofs than a request carries (thousands under two PostMarks
    in one directory; every node refused such a request, EIO) sends the links past the
    budget without proofs: here every link, with a budget of none.  A server checks a
    bare link against the request it stored when it took that version, or fetches one.
    Made to fetch none, with server 5 down, two of the five left cannot (1, which never
    took the copy Y, and 4 here made to lose Y's request): the operation fails at once
    with their reason, instead of being asked again for ever.  Fetching, they take it,
    and a reader repairs as with proofs."""
    monkeypatch.setattr(linkproofs, "MAX_PROVEN", 0)
    monkeypatch.setattr(replica, "MAX_FETCHED", 0)
    cl, lts = abandoned_update_behind_a_pruned_chain()
    assert schema.delete_request(cl.kvs[4], lts["y"])
    cl.down = {5}
    c = make_client(cl, 0)
    round_budget(c, 100)
    with pytest.raises(QUUnavailable, match="check links sent without proofs"):
        await c.query(F, "counter.fetch")
    assert c.statistics().bare_links >= 1

    monkeypatch.undo()
    monkeypatch.setattr(linkproofs, "MAX_PROVEN", 0)
    c = make_client(cl, 1)
    round_budget(c, 100)
    f, d = await c.query(F, "counter.fetch"), await c.query(D, "counter.fetch")
    assert (f, d) == (0, 2)
    assert c.statistics().link_proofs >= 1 and c.statistics().bare_links >= 1


def test_a_link_a_server_proved_once_needs_no_proof_again() -> None:
    """The links a walk's requests carry without proofs come again with every request of
    the walk: a server proves each once (``KnownLinks``), not on every request, and
    fetches no stored request for it again.  A false link is still refused, and what one
    server proved is not another's."""
    cl, lts = abandoned_update_behind_a_pruned_chain()
    proof = pack(handle_fetch(cl.kvs[0], lts["y"]))
    link, lie = Link(D, lts["y"], ZERO), Link(D, lts["y"], lts["m"])
    known = KnownLinks()
    assert unheld([link], known, lambda _lt: None) == (link,)
    assert verified([link], cl.th, lambda _lt: proof, known) == {(D, lts["y"]): ZERO}
    assert unheld([link], known, lambda _lt: None) == ()
    assert verified([link], cl.th, lambda _lt: None, known) == {(D, lts["y"]): ZERO}
    with pytest.raises(LinkError):
        verified([lie], cl.th, lambda _lt: proof, known)
    with pytest.raises(LinkError):
        verified([link], cl.th, lambda _lt: None, KnownLinks())


def test_a_forged_conditioned_on_timestamp_at_one_server_is_not_a_link() -> None:
    """A candidate's key leaves its lt_co out: one Byzantine server listing a real
    timestamp with another lt_co must not decide a skip (b+1 must agree)."""
    cl, lts = abandoned_update_behind_a_pruned_chain()
    v = View({D: ohs_of(cl, D, list(ALL))}, cl.th)
    newest = max((c for e in v.mohs[D].values() for c in e.rh), key=lambda c: c.lt)
    assert v.link(D, newest.lt) == newest.lt_co  # listed by 5 servers
    assert v.link(D, lts["y"]) is None  # pruned everywhere: wanted, not guessed
    assert (D, lts["y"]) in v.wanted_links()


def test_fetch_answers_the_stored_request_of_a_pruned_candidate() -> None:
    cl, lts = abandoned_update_behind_a_pruned_chain()
    got = cl.handle(3, C1, KIND_FETCH, {"v": VERSION, "lt": lts["y"].encode()})
    assert got["r"] is not None
    assert prove(pack(got["r"]), cl.th, D, lts["y"]) == ZERO


async def test_a_repair_that_passes_an_update_by_repairs_its_other_object_with_it() -> None:
    """The scenario's update M (servers 0-2, order r) met by a client instead of a script:
    with server 1 down it sees M at two servers of D, too thin to be established, and
    repairs D past it.  F, M's other object, is repaired in the same go (a copy there
    passes M by): once D's chain is pruned, a reader of F decides M from F's own listed
    chain, and proves no link of D's."""
    cl = MemCluster()
    m_req = Request(DEAD, (D, F), {D: {}, F: {}}, Operation("counter.add_all", False, 5, 1))
    m = send(cl, [0, 1, 2], m_req)[0].lt
    cl.down = {1}
    writer = make_client(cl, 1)
    round_budget(writer, 100)
    for _ in range(3):  # the first repairs; the next two prune D's chain behind it
        await writer.update(D, "counter.increment", 1)
    quorum = [0, 2, 3, 4, 5]
    f_now = View({F: ohs_of(cl, F, quorum)}, cl.th).latest_candidate(F, False)
    assert f_now is not None and f_now.lt > m, "F was left with M as its latest update"
    assert f_now.objects == (F,)  # on its own: a copy over D too would need deducing

    cl.down = {5}  # the reader's quorum includes server 1, which still lists M at F
    reader = make_client(cl, 2)
    round_budget(reader, 100)
    assert (await reader.query(F, "counter.fetch"), await reader.query(D, "counter.fetch")) == (
        0,
        3,
    )
    assert reader.statistics().link_proofs == 0


async def test_a_repair_that_copies_a_sibling_past_an_update_repairs_its_other_object() -> None:
    """Siblings, both conditioned on D's initial version: M over D and F (client 0) at
    servers 0-2, N, an increment of D alone by a client that died, at 3-5, the newer.  A
    writer that misses server 0 sees M too thin to be established and copies N; F, where
    M is the latest update, is repaired on its own, so a reader that sees M at order r
    there (server 0 back, 5 away) decides it from F's own listed chain, after D's is
    pruned, and proves no link of D's."""
    cl = MemCluster()
    add = Operation("counter.add_all", False, 5, 1)
    m = send(cl, [0, 1, 2], Request(int(client_id(0)), (D, F), {D: {}, F: {}}, add))[0].lt
    n = send(cl, [3, 4, 5], Request(DEAD, (D,), {D: {}}, inc(1)))[3].lt
    assert n > m
    cl.down = {0}
    writer = make_client(cl, 1)
    round_budget(writer, 100)
    for _ in range(3):
        await writer.update(D, "counter.increment", 1)
    assert writer.statistics().behind_repairs == 1
    f_now = View({F: ohs_of(cl, F, [1, 2, 3, 4, 5])}, cl.th).latest_candidate(F, False)
    assert f_now is not None and f_now.lt > m and f_now.objects == (F,)

    cl.down = {5}
    reader = make_client(cl, 2)
    round_budget(reader, 100)
    assert (await reader.query(F, "counter.fetch"), await reader.query(D, "counter.fetch")) == (
        0,
        4,
    )
    assert reader.statistics().link_proofs == 0


def _chain_of_d(cl: MemCluster, versions: int) -> Timestamp:
    """``versions`` increments of D at every server; the newest one's timestamp."""
    five = [0, 1, 2, 3, 4]
    for seq in range(1, versions + 1):
        reps = send(cl, ALL, Request(C1, (D,), {D: ohs_of(cl, D, five)}, inc(seq)))
        assert {r.status for r in reps.values()} == {ReplyStatus.OK}
    return max(c.lt for c in cl.ohs_entry(0, D).rh)


async def test_one_fetch_proves_a_stretch_of_a_chain() -> None:
    """A walk down a pruned chain proved one link a round (thousands of rounds under two
    PostMarks in one directory).  A fetch naming the object brings the stored requests of
    the versions before too (``reads.fetch_reply``), each checked like the first: one
    answer proves 33 links.  A server that slips a wrong request into the chain costs the
    client only the links from there on."""
    cl = MemCluster()
    newest = _chain_of_d(cl, 40)
    c = make_client(cl, 0)
    sent = c.ep.sent
    got = await c._rounds.proof(D, newest, 32)
    assert c.ep.sent - sent <= cl.th.b + 1
    assert len(got) == 33 and got[0][0] == newest
    for (at, co, proof), nxt in zip(got, got[1:] + [None], strict=True):
        assert prove(proof, cl.th, D, at) == co
        assert nxt is None or nxt[0] == co

    def swapped(server: int, sender: int, kind: str, payload: Any, honest: Any) -> Any:
        reply = honest()
        if kind == KIND_FETCH and reply.get("c"):
            reply["c"][5], reply["c"][6] = reply["c"][6], reply["c"][5]
        return reply

    cl.byzantine = {s: swapped for s in ALL}
    assert len(await c._rounds.proof(D, newest, 32)) == 6  # the first and five before


def test_a_server_names_the_stored_requests_it_lacks_and_passes_over_liars() -> None:
    """A server proving links sent without proofs names the stored requests it lacks
    (``qu.fetch`` with ``more``): scattered down the chain, as a server outside some
    updates' quorums lacks them.  Servers that answer with each other's requests in
    place of the ones named prove nothing, and the next server is asked."""
    cl = MemCluster()
    _chain_of_d(cl, 40)

    def links_at(kv: Any) -> list[Link]:
        out = []
        for lt, _ns, _first in schema.versions_newest_first(kv, D):
            v = schema.load_version(kv, D, lt)
            if v is not None and v.lt_co is not None and v.lt_co != ZERO:
                out.append(Link(D, lt, v.lt_co))
        return out

    lacking = links_at(cl.kvs[0])[::5]
    for link in lacking:
        assert schema.delete_request(cl.kvs[0], link.lt)

    def shuffled(server: int, sender: int, kind: str, payload: Any, honest: Any) -> Any:
        reply = honest()
        if kind == KIND_FETCH and reply.get("m"):
            items = [reply["r"], *reply["m"]]
            reply["r"], *reply["m"] = items[1:] + items[:1]  # each in the next one's place
        return reply

    cl.byzantine = {s: shuffled for s in (1, 2, 3, 4)}
    got = cl.fetch_proofs(0, lacking)
    assert sorted(got) == sorted(lk.lt for lk in lacking)
    assert all(prove(got[lk.lt], cl.th, D, lk.lt) == lk.lt_co for lk in lacking)
    cl.byzantine = {s: shuffled for s in (1, 2, 3, 4, 5)}
    assert cl.fetch_proofs(0, lacking) == {}
