"""Tier 1: a file created in a busy directory stays usable however far the directory moves
on (``View.settled``, issue 39).

With four mounts renaming files in one directory (``benchmarks/engines.py``, lease=0), Q/U
answered EIO for a rename with all six nodes up: every node refused the request as
malformed ("links must be a short list"), and the client saw three rounds with no answer.
The file's next update is conditioned on its create M, a two-object candidate over the
directory D and the file F that F's histories keep listing (pruning stops at the
conditioned-on version), at fewer than ``q`` servers once one of them pruned further.  So
every request naming F weighed excluding M by walking D's chain from its latest version
back to M: one proven link per directory version since the create, more than a request may
carry (``request.MAX_LINKS``) once D moved 256 versions on, and never fewer again.  F's
complete latest version is conditioned on M, so M is established and nobody needs D's
chain.  The histories are built on in-memory replicas with a scripted client, so the exact
shape is replayed without timing.
"""

from __future__ import annotations

from qu_helpers import MemCluster, send
from t1_qu_client import make_client, round_budget
from t1_qu_links import inc, ohs_of

from bftfs.ids import client_id
from bftfs.qu.classify import View
from bftfs.qu.messages import ReplyStatus
from bftfs.qu.request import MAX_LINKS, Operation, Request
from bftfs.qu.timestamp import Timestamp

C1 = int(client_id(1))
D, F = 1, 2  # a "directory" and a "file" counter
ALL = list(range(6))
FIVE = [0, 1, 2, 3, 4]


def ok(cl: MemCluster, servers: list[int], objects: tuple[int, ...], op: Operation) -> None:
    """``op`` on ``objects`` from client 1, presenting ``servers``' histories to them."""
    req = Request(C1, objects, {o: ohs_of(cl, o, servers) for o in objects}, op)
    assert {r.status for r in send(cl, servers, req).values()} == {ReplyStatus.OK}


def created_then_directory_moves_on(d_updates: int) -> MemCluster:
    """M (an add_all over D and F, the create) completes at servers 0-4; F's next update Y
    (conditioned on M) reaches all six servers, and the one after only server 0, which
    prunes M from its history of F: F shows M at 4 servers (repairable, not complete) under
    a complete Y.  Then D is incremented ``d_updates`` times, which prunes M and the links
    behind it from every history of D."""
    cl = MemCluster()
    ok(cl, FIVE, (D, F), Operation("counter.add_all", False, 5, 1))
    seq = 1
    for servers in (FIVE, [0]):
        seq += 1
        req = Request(C1, (F,), {F: ohs_of(cl, F, FIVE)}, inc(seq))
        assert {r.status for r in send(cl, servers, req).values()} == {ReplyStatus.OK}
    # Server 5 missed M and Y: it takes Y as the others' copy when next asked.
    send(cl, [5], Request(C1, (F,), {F: ohs_of(cl, F, FIVE)}, None))
    for _ in range(d_updates):
        seq += 1
        ok(cl, FIVE, (D,), inc(seq))
    return cl


def test_a_complete_version_conditioned_on_the_create_anchors_it() -> None:
    cl = created_then_directory_moves_on(6)
    v = View({D: ohs_of(cl, D, ALL), F: ohs_of(cl, F, ALL)}, cl.th)
    m = next(c for c in v.candidates(F) if c.multi)
    assert cl.th.r <= v.order(F, m) < cl.th.q  # weighed for exclusion, before the fix
    # Decided from F's histories alone: no link of D's pruned chain is wanted or used.
    assert v.wanted_links() == frozenset()
    assert v.used_links() == frozenset()
    assert v.excluded() == frozenset()
    assert v.settled(m) is True


async def test_an_update_of_the_file_after_the_directory_moved_far_on_completes() -> None:
    """Before the fix, the client proved one link per directory version and sent them all:
    every server refused the request (more than ``MAX_LINKS``) and the update failed."""
    cl = created_then_directory_moves_on(MAX_LINKS + 20)
    c = make_client(cl, 0)
    round_budget(c, 2 * MAX_LINKS)  # room for a proof per link: fail as the nodes did
    await c.update((D, F), "counter.add_all", 1)
    assert (await c.query(D, "counter.fetch"), await c.query(F, "counter.fetch")) == (
        5 + MAX_LINKS + 20 + 1,
        5 + 1 + 1,  # the increment server 0 alone took was abandoned
    )
    assert c.statistics().link_proofs == 0


def abandoned_then_file_copied_past_it() -> tuple[MemCluster, Timestamp]:
    """A dead client's add_all M over D and F reaches servers 0-2 (order r: repairable).  A
    client that saw M at only 2 servers of F barriers and copies F past it (a complete
    copy whose listed chain skips M; copies prune nothing, so F keeps listing M at order
    r).  Returns the cluster and M's timestamp."""
    cl = MemCluster()
    m_req = Request(
        int(client_id(3)), (D, F), {D: {}, F: {}}, Operation("counter.add_all", False, 5, 1)
    )
    m = send(cl, [0, 1, 2], m_req)[0].lt
    five = [0, 2, 3, 4, 5]
    for kind in ("barrier", "copy"):
        reps = send(cl, five, Request(C1, (F,), {F: ohs_of(cl, F, five)}, None))
        assert {r.type for r in reps.values()} == {kind}
    return cl, m


async def test_an_update_abandoned_at_a_complete_copy_is_excluded_without_the_directory_chain() -> (
    None
):
    """M is decided at F, where a complete copy's listed chain passes it by.  Before, the
    client walked D's chain first (objects in id order): after D moved far on, one proven
    link per version of D, more than a request may carry."""
    cl, m_lt = abandoned_then_file_copied_past_it()
    c = make_client(cl, 0)
    round_budget(c, 4 * MAX_LINKS)
    for _ in range(MAX_LINKS + 20):  # the first one repairs D past M, deciding at F
        await c.update(D, "counter.increment", 1)
    v = View({D: ohs_of(cl, D, ALL), F: ohs_of(cl, F, ALL)}, cl.th)
    m = next(c for c in v.candidates(F) if c.lt == m_lt)
    assert cl.th.r <= v.order(F, m) < cl.th.q
    assert v.wanted_links() == frozenset() and v.used_links() == frozenset()
    assert v.excluded() == frozenset({m.key})
    assert v.settled(m) is False
    await c.update((D, F), "counter.add_all", 1)
    assert (await c.query(D, "counter.fetch"), await c.query(F, "counter.fetch")) == (
        MAX_LINKS + 20 + 1,
        1,
    )
    assert c.statistics().link_proofs == 0
