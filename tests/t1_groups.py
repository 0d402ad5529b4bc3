"""A cluster's held layout and its groups as configurations (issue 66, docs/layout.md,
"Placement"): ``bftfs init --groups`` writes a signed layout; a group's configuration is
its nodes renumbered in the group's order with their own ports, keys and data
directories; a layout not signed by the administrator, older than the one held, or naming
other keys is refused and leaves the file as it was; a node refuses ids of other groups;
commands this step does not run on several groups exit 3."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from bftfs.cli.main import main
from bftfs.config import ClusterConfig
from bftfs.crypto import AdminKey
from bftfs.fs.generations.groupfollow import group_pushes
from bftfs.fs.leases.votes import RecallVotes
from bftfs.layout import codec
from bftfs.layout.builder import build, nodes_of
from bftfs.layout.groups import (
    group_config,
    layout_path,
    load_layout,
    place_node,
    store_layout,
)
from bftfs.layout.model import Layout, LayoutError
from bftfs.local import init_cluster
from bftfs.net.server import HandlerError
from bftfs.node.placement import guard
from bftfs.rw.messages import block_id, encode_block_id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> ClusterConfig:
    home = tmp_path_factory.mktemp("groups") / "c"
    return init_cluster(home, clients=1, groups=3, ports=list(range(20000, 20018)))


def test_init_writes_a_signed_layout_of_three_groups_of_six(cluster: ClusterConfig) -> None:
    assert cluster.n == 18 and (cluster.qc, cluster.m) == (4, 3)
    layout = load_layout(cluster)
    assert layout is not None and layout.version == 1
    assert [len(g.members) for g in layout.groups] == [6, 6, 6]
    assert sorted(m for g in layout.groups for m in g.members) == list(range(18))
    assert layout.objects == layout.blocks and set(layout.objects) == {0, 1, 2}


def test_a_group_config_renumbers_its_nodes_keeping_ports_keys_and_dirs(
    cluster: ClusterConfig,
) -> None:
    layout = load_layout(cluster)
    assert layout is not None
    for g in layout.groups:
        one = group_config(cluster, layout, g.id)
        assert (one.n, one.q, one.r, one.qc, one.m) == (6, 5, 3, 4, 3)
        assert one.admin_key is None  # the layout names its members, not a view
        for i, nid in enumerate(g.members):
            spec, orig = one.node(i), cluster.node(nid)
            assert int(spec.id) == i
            assert (spec.port, spec.public_key, spec.data_dir) == (
                orig.port,
                orig.public_key,
                orig.data_dir,
            )
        placed = place_node(cluster, g.members[4])
        assert placed is not None and (placed.group, placed.index) == (g.id, 4)
    with pytest.raises(LayoutError, match="has no group 3"):
        group_config(cluster, layout, 3)


def test_store_refuses_a_foreign_signature_and_an_older_version(cluster: ClusterConfig) -> None:
    held = load_layout(cluster)
    assert held is not None
    before = layout_path(cluster).read_bytes()
    with pytest.raises(LayoutError, match="not signed by this cluster.s administrator"):
        store_layout(cluster, codec.sign(held, AdminKey.generate()))
    assert layout_path(cluster).read_bytes() == before
    admin = AdminKey.load(cluster.admin_key_path)
    assert store_layout(cluster, before) == held  # a copy changes nothing
    newer = store_layout(cluster, codec.sign(replace(held, version=2), admin))
    assert newer.version == 2 and load_layout(cluster) == newer
    with pytest.raises(LayoutError, match="older than the version 2 held"):
        store_layout(cluster, before)
    assert load_layout(cluster) == newer


def test_a_layout_naming_other_keys_than_the_configuration_is_refused(
    tmp_path: Path, cluster: ClusterConfig
) -> None:
    other = init_cluster(tmp_path / "o", clients=1, ports=list(range(21000, 21006)))
    foreign: Layout = build(nodes_of(other), 1, partitions=16)
    admin = AdminKey.load(other.admin_key_path)
    with pytest.raises(LayoutError, match="another key than cluster.toml"):
        store_layout(replace(other, nodes=cluster.nodes[:6]), codec.sign(foreign, admin))


def test_a_node_refuses_ids_its_group_does_not_hold(cluster: ClusterConfig) -> None:
    layout = load_layout(cluster)
    assert layout is not None
    check = guard(layout, 1)
    mine = next(o for o in range(2, 10_000) if layout.group_of_object(o) == 1)
    other = next(o for o in range(2, 10_000) if layout.group_of_object(o) == 2)
    request = {"v": 1, "c": 1, "o": [mine], "h": [], "op": None}
    check("qu.request", request)
    check("qu.request", msgpack.packb(request))  # as clients send it: packed
    with pytest.raises(HandlerError, match="lives on group 2") as e:
        check("qu.request", msgpack.packb({**request, "o": sorted([mine, other])}))
    assert e.value.code == "misplaced"
    with pytest.raises(HandlerError, match="misplaced"):
        check("qu.batch", [["qu.history", {"v": 1, "o": [other]}]])
    blocks = [block_id(5, i) for i in range(64)]
    ok = next(b for b in blocks if layout.group_of_block(b) == 1)
    bad = next(b for b in blocks if layout.group_of_block(b) != 1)
    check("rw.read_latest", {"v": 1, "b": encode_block_id(ok), "d": True})
    with pytest.raises(HandlerError, match="block"):
        check("rw.write", {"v": 1, "b": encode_block_id(bad)})


@pytest.mark.parametrize(
    "argv",
    [
        ["view", "show"],
        ["generation", "show"],
        ["node", "remove", "3"],
        ["client", "add", "c9"],
        ["verify"],
        ["mount", "/nonexistent/mnt", "--at", "1h"],
    ],
)
def test_what_groups_do_not_run_yet_exits_3(
    cluster: ClusterConfig, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code = main([*argv, "--config", str(cluster.home / "cluster.toml")])
    assert code == 3
    assert "not supported on a cluster of 3 groups" in capsys.readouterr().err


def test_each_groups_health_counts_its_own_quorum(cluster: ClusterConfig) -> None:
    from bftfs.cli.groups import groups_health, layout_json
    from bftfs.local import NodeStatus

    layout = load_layout(cluster)
    assert layout is not None
    g1 = layout.groups[1].members
    down = {g1[0], g1[1]} | {layout.groups[2].members[3]}
    statuses = [
        NodeStatus(s.id, s.address, None, s.id not in down, None, None) for s in cluster.nodes
    ]
    rows = groups_health(cluster, layout, statuses)
    assert [(r["state"], r["up"], r["q"]) for r in rows] == [
        ("healthy", 6, 5),
        ("unavailable", 4, 5),
        ("degraded", 5, 5),
    ]
    doc = layout_json(layout)
    assert sum(g["object_partitions"] for g in doc["groups"]) == layout.partitions


def test_a_node_bundle_carries_the_layout(cluster: ClusterConfig) -> None:
    from bftfs import bundle

    files = bundle.members(cluster, node=3)
    assert files["layout.signed"] == layout_path(cluster).read_bytes()


def test_two_nodes_down_in_two_groups_degrade_and_two_in_one_group_stop_it(
    cluster: ClusterConfig,
) -> None:
    from bftfs.cli.groups import groups_health
    from bftfs.cli.status import STATUS_DEGRADED, STATUS_UNAVAILABLE, cluster_health
    from bftfs.local import NodeStatus

    layout = load_layout(cluster)
    assert layout is not None
    spread = {layout.groups[0].members[0], layout.groups[1].members[0]}
    packed = set(layout.groups[2].members[:2])
    for down, want in ((spread, STATUS_DEGRADED), (packed, STATUS_UNAVAILABLE)):
        statuses = [
            NodeStatus(s.id, s.address, None, s.id not in down, {}, None) for s in cluster.nodes
        ]
        rows = groups_health(cluster, layout, statuses)
        code, *_ = cluster_health(cluster, statuses, [], grouped=rows)
        assert code == want, down


def test_the_peers_column_counts_the_nodes_own_group() -> None:
    from bftfs.cli.statustables import _peers

    rejoin = {"reachable": 4, "peers": {str(i): {"reached": i != 2} for i in range(5)}}
    assert _peers({"progress": {"rejoin": rejoin}}, 18) == "4/5"  # not 4/17
    assert _peers({"progress": {"rejoin": {"reachable": 5}}}, 6) == "5/5"


def test_a_recall_counts_only_from_nodes_of_the_objects_group(cluster: ClusterConfig) -> None:
    """One liar in each of two groups (as the layout allows) pushing a recall of an object
    of a third group: neither push counts, so the holder keeps its lease; the pushes of
    the object's own group count under its nodes' global ids."""
    layout = load_layout(cluster)
    assert layout is not None
    votes = RecallVotes(b=1)
    believed: list[int] = []
    oid = next(o for o in range(2, 10_000) if layout.group_of_object(o) == 0)
    held = {oid}

    def push(node: int, body: object) -> None:
        believed.extend(votes.count(node, body, held.__contains__))

    for g in (1, 2):
        group_pushes(push, lambda: layout, g)(0, {"recall": [oid, "junk"]})
    assert believed == [] and not votes.believed(oid)
    assert votes.take_stats()["pushes_malformed"] == 2  # (still counted as malformed)
    own = group_pushes(push, lambda: layout, 0)
    own(0, {"recall": [oid]})
    own(1, {"recall": [oid]})
    assert believed == [oid]
