"""Tier 3: the FaB engine over the real transport with one Byzantine node (issue 39).

The in-process cluster (real TCP, MACs, LMDB) with ``engine = "fab"``, one node's FaB
engine rewriting what its correct core sends (``bftfs/testing/byzantine/fab.py``, the
behaviours the simulation of ``fab_sim.py`` runs, installed with
``FaultInjector.fab``):

- a silent leader, an equivocating leader, a lying leader (equivocating, lying about
  what it accepted, answering clients with made-up results) and a lying acceptor (the
  same lies but the proposals): two file systems make, write, rename, link and remove
  files and directories, and end with the tree and the contents they made, the
  invariant checks of ``fs_helpers`` and every correct node in the same state.  Node 0
  leads regency 0, so a Byzantine node 0 costs a view change the test sees happen.
- the same leader and acceptor under three clients writing and reading extended
  attributes of the root, registers whose history (real time, an operation from its call
  to its ``f + 1`` matching replies) the Wing and Gong checker finds linearizable.
- two tests of the file-system suite t3_fs_namespace under the lying leader (slow).

The two-mount consistency checker with a lying leader is ``t4_fab_byzantine.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import t3_fs_namespace
import trio
from fs_helpers import Env, engine, fab_agreement, fab_byzantine, names, run

from bftfs.fab.metaclient import FabMetaClient
from bftfs.fs.errors import NotFound
from bftfs.fsobjects import ROOT
from bftfs.qu.objects import MethodRefused
from bftfs.testing.byzantine.fab import (
    Behaviour,
    compose,
    equivocating_leader,
    lying_acceptor,
    lying_leader,
    lying_replies,
    silent,
)
from bftfs.testing.cluster import Cluster, open_cluster
from bftfs.testing.linearizability import READ, WRITE, Op, check

#: Scenario -> (the Byzantine node, its behaviour).  Node 0 leads regency 0.
SCENARIOS: dict[str, tuple[int, Behaviour]] = {
    "lying-leader": (0, compose(lying_leader, lying_replies)),
    "lying-acceptor": (3, compose(lying_acceptor, lying_replies)),
    "silent-leader": (0, silent),
    "equivocating-leader": (0, equivocating_leader),
}
#: The scenarios ``make test`` runs (about 2 s each); the others are slow tests (the
#: lying leader equivocates too, and t4_fab_mount kills a leader).
FAST = ("lying-leader", "lying-acceptor")


def _regencies(cluster: Cluster) -> set[int]:
    return {
        f.fab_replica.election.regency
        for f in cluster.faults
        if f.fab_replica is not None and f.fab_behaviour is None
    }


async def _read(fs: object, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)  # type: ignore[attr-defined]
    data: bytes = await fs.read(fh, 0, 1 << 20)  # type: ignore[attr-defined]
    await fs.release(fh)  # type: ignore[attr-defined]
    return data


async def _namespace_and_files(env: Env, clusters: list[Cluster]) -> None:
    a, b = env.fss
    rng = random.Random(39)
    contents = {f"f{i}".encode(): rng.randbytes(rng.choice([100, 5000, 70_000])) for i in range(4)}
    d = await a.mkdir(ROOT, b"d", 0o755, 0, 0)
    sub = await b.mkdir(d.ino, b"sub", 0o755, 0, 0)
    inos = {}
    for k, (name, data) in enumerate(contents.items()):
        fs = (a, b)[k % 2]
        fh, attr = await fs.create(d.ino, name, 0o644, 0, 0, os.O_RDWR)
        await fs.write(fh, 0, data)
        await fs.release(fh)
        inos[name] = attr.ino
    await a.rename(d.ino, b"f0", sub.ino, b"moved")
    await b.link(inos[b"f1"], ROOT, b"f1-link")
    await a.unlink(d.ino, b"f2")
    await b.mkdir(ROOT, b"gone", 0o755, 0, 0)
    await a.rmdir(ROOT, b"gone")
    fh = await b.open(inos[b"f3"], os.O_WRONLY)
    await b.write(fh, 10, b"changed")
    await b.release(fh)
    want3 = contents[b"f3"][:10] + b"changed" + contents[b"f3"][17:]
    # the tree and contents each client made, as the other sees them
    for fs in (b, a):
        assert await names(fs, ROOT) == [b"d", b"f1-link"]
        assert await names(fs, d.ino) == [b"f1", b"f3", b"sub"]
        assert await names(fs, sub.ino) == [b"moved"]
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, b"f2")
        assert (await fs.getattr(inos[b"f1"])).nlink == 2
        assert await _read(fs, (await fs.lookup(sub.ino, b"moved")).ino) == contents[b"f0"]
        assert await _read(fs, (await fs.lookup(ROOT, b"f1-link")).ino) == contents[b"f1"]
        assert await _read(fs, inos[b"f3"]) == want3
    clusters.append(env.cluster)


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(s, marks=[] if s in FAST else [pytest.mark.slow]) for s in SCENARIOS],
)
def test_file_system_with_a_byzantine_node(tmp_path: Path, scenario: str) -> None:
    node, behaviour = SCENARIOS[scenario]
    clusters: list[Cluster] = []
    with engine("fab"), fab_byzantine({node: behaviour}):
        # then the invariant checks, and the correct nodes' states compared
        run(tmp_path, lambda env: _namespace_and_files(env, clusters))
    if node == 0:  # the Byzantine leader of regency 0 was replaced
        assert min(_regencies(clusters[0])) >= 1


#: Tests of the file-system suites run again with the lying leader (slow: 2 to 3 s
#: each): refusals and the errno they make (a lying reply refuses what succeeded and
#: claims values for what was refused), rename's atomic replace, two clients racing.
SUITE_TESTS = [
    t3_fs_namespace.test_two_clients_see_each_others_namespace_changes,
    t3_fs_namespace.test_rename_replaces_atomically_and_refuses_posix_violations,
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SUITE_TESTS, ids=lambda fn: fn.__name__[5:])
def test_suite_under_a_lying_leader(tmp_path: Path, case: Callable[[Path], None]) -> None:
    node, behaviour = SCENARIOS["lying-leader"]
    with engine("fab"), fab_byzantine({node: behaviour}):
        case(tmp_path)


# -- linearizable metadata histories ---------------------------------------------------

NOW = 10**18
KEYS = [b"user.k0", b"user.k1"]


async def _history(cluster: Cluster, clients: list[FabMetaClient], seed: int) -> list[Op]:
    """Each client writes or reads one of two attributes of the root, 8 times in turn,
    all clients at once; the history, in trio's clock."""
    history: list[Op] = []
    rng = random.Random(seed)

    async def one(k: int, client: FabMetaClient, plan: list[tuple[str, bytes]]) -> None:
        for j, (kind, key) in enumerate(plan):
            start = trio.current_time()
            if kind == WRITE:
                value: bytes | None = f"{k}-{j}".encode()
                arg = {"name": key, "value": value, "flags": 0, "now": NOW + 1}
                await client.update(ROOT, "fs.setxattr", arg)
            else:
                try:
                    value = await client.query(ROOT, "fs.getxattr", key)
                except MethodRefused as e:
                    assert e.code == "no-attr", e
                    value = None
            history.append(Op(key, kind, value, start, trio.current_time(), k))

    plans = [[(rng.choice([READ, WRITE]), rng.choice(KEYS)) for _ in range(8)] for _ in clients]
    async with trio.open_nursery() as nursery:
        for k, client in enumerate(clients):
            nursery.start_soon(one, k, client, plans[k])
    return history


LINEARIZABLE = {name: SCENARIOS[name] for name in ("lying-leader", "lying-acceptor")}


@pytest.mark.parametrize("scenario", list(LINEARIZABLE))
def test_xattr_registers_are_linearizable_with_a_byzantine_node(
    tmp_path: Path, scenario: str
) -> None:
    node, behaviour = LINEARIZABLE[scenario]

    async def main() -> None:
        async with open_cluster(tmp_path, engine="fab", clients=3) as cluster:
            cluster.faults[node].fab(behaviour)
            ids = [int(i) for i in cluster.config.node_ids]
            clients = [FabMetaClient(cluster.client(k), ids, 1, timeout=10.0) for k in range(3)]
            mkroot = {"mode": 0o755, "uid": 0, "gid": 0, "now": NOW}
            await clients[0].update(ROOT, "fs.mkroot", mkroot)
            history = await _history(cluster, clients, seed=3)
            await fab_agreement(cluster)
        if node == 0:
            assert min(_regencies(cluster)) >= 1
        assert len(history) == 24
        verdict = check(history)
        assert verdict, verdict.reason
        # the check has teeth: the read of a value nobody wrote is caught
        reads = [i for i, op in enumerate(history) if op.kind == READ]
        bad = history[reads[0]]
        history[reads[0]] = Op(bad.key, READ, b"never-written", bad.start, bad.end, bad.client)
        assert not check(history)

    trio.run(main)
