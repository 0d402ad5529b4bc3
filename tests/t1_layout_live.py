"""The checks a running node or mount makes of a newer layout (issue 66, docs/layout.md
"Installing a layout on running processes"): which changes it follows
(``layout/live.unsupported_change``), a group's configuration naming a newcomer its
``cluster.toml`` lacks, the node's own durable copy winning over an older cluster file,
the mount's tracker taking only signed, newer layouts and rewiring its group endpoints,
and the node's ``txn`` type following the held layout's keys."""

from __future__ import annotations

import random
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from checklogs import ExpectLog

from bftfs import local
from bftfs.config import ClusterConfig
from bftfs.crypto import AdminKey, Identity, KeyRing
from bftfs.ids import NodeId, client_id
from bftfs.layout import admin as layout_admin
from bftfs.layout import codec, live
from bftfs.layout.builder import new_machine, replace_node
from bftfs.layout.groups import load_layout, place_node
from bftfs.layout.model import LayoutError, LayoutNode
from bftfs.layout.nodetxn import LiveTxn
from bftfs.layout.tracker import ClientLayout
from bftfs.local import init_cluster
from bftfs.net.endpoint import open_endpoint
from bftfs.node.protocols import PRODUCTION_TYPES
from bftfs.qu.objects import MethodRefused


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> ClusterConfig:
    home = tmp_path_factory.mktemp("live")
    return init_cluster(home, clients=1, groups=2, t=1, b=0, ports=list(range(22000, 22008)))


def _admin(cfg: ClusterConfig) -> AdminKey:
    return AdminKey.load(cfg.admin_key_path)


def _newcomer(cfg: ClusterConfig, leaving: int, seed: int = 1) -> tuple[LayoutNode, Identity]:
    layout = load_layout(cfg)
    assert layout is not None
    ident = Identity(NodeId(50), random.Random(seed).randbytes(32))
    node = LayoutNode(50, "127.0.0.1", 22050, ident.public, layout.node(leaving).domain + "x")
    return node, ident


def test_a_replacement_and_a_bump_are_followed_anything_else_is_refused(
    cluster: ClusterConfig,
) -> None:
    v1 = load_layout(cluster)
    assert v1 is not None
    leaving = v1.groups[1].members[2]
    v2 = replace_node(v1, leaving, _newcomer(cluster, leaving)[0])
    assert live.unsupported_change(v1, v2) is None
    assert live.unsupported_change(v1, replace(v1, version=2)) is None
    swapped = replace(v1.groups[0], members=tuple(reversed(v1.groups[0].members)))
    why = {
        "thresholds": replace(v1, version=2, t=2),
        "from maps other than": replace(
            v1,
            version=2,
            objects=v1.blocks,
            from_objects=tuple(reversed(v1.objects)),
            from_blocks=v1.blocks,
        ),
        "moves from index": replace(v1, version=2, groups=(swapped, *v1.groups[1:])),
        "removes groups": replace(v1, version=2, groups=v1.groups[:1]),
    }
    for words, layout in why.items():
        reason = live.unsupported_change(v1, layout)
        assert reason is not None and words in reason, (words, reason)


def test_a_group_of_a_live_layout_names_the_newcomer_cluster_toml_lacks(
    cluster: ClusterConfig,
) -> None:
    v1 = load_layout(cluster)
    assert v1 is not None
    leaving = v1.groups[1].members[2]
    newcomer, _ident = _newcomer(cluster, leaving)
    v2 = replace_node(v1, leaving, newcomer)
    part = live.live_group_config(cluster, v2, 1)
    spec = part.node(NodeId(2))
    assert (spec.host, spec.port, spec.public_key) == ("127.0.0.1", 22050, newcomer.public_key)
    kept = part.node(NodeId(0))
    assert kept.data_dir == cluster.node(NodeId(v1.groups[1].members[0])).data_dir
    assert part.admin_key is None and part.n == len(v1.groups[1].members)
    assert live.place(v2, leaving) is None and live.place(v2, 50) == (1, 2)


def test_the_nodes_own_copy_wins_over_an_older_cluster_file(
    cluster: ClusterConfig, tmp_path: Path
) -> None:
    v1 = load_layout(cluster)
    assert v1 is not None
    key = _admin(cluster)
    node = v1.groups[1].members[0]
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    assert live.newest(v1, data_dir, key.public) == (v1, None)  # no copy yet
    leaving = v1.groups[1].members[2]
    v2 = replace_node(v1, leaving, _newcomer(cluster, leaving)[0])
    blob = codec.sign(v2, key)
    live.store_node_layout(data_dir, blob)
    assert live.newest(v1, data_dir, key.public) == (v2, blob)
    placed = place_node(cluster, node, data_dir)
    assert placed is not None and placed.layout == v2 and placed.blob == blob
    assert placed.config.node(NodeId(2)).port == 22050  # the newcomer, from the layout
    # an older copy is ignored; a conflicting one with the held version is refused
    assert live.newest(v2, data_dir, key.public) == (v2, None)
    other = replace_node(v1, leaving, _newcomer(cluster, leaving, seed=2)[0])
    with pytest.raises(LayoutError, match="signed two"):
        live.newest(other, data_dir, key.public)
    live.store_node_layout(data_dir, codec.sign(v2, AdminKey(bytes(32))))
    with pytest.raises(LayoutError, match="not signed by this cluster's administrator"):
        live.newest(v1, data_dir, key.public)


def test_the_mount_takes_only_signed_newer_layouts_and_rewires_its_groups(
    cluster: ClusterConfig, expect_log: ExpectLog
) -> None:
    v1 = load_layout(cluster)
    assert v1 is not None
    key = _admin(cluster)
    leaving = v1.groups[1].members[2]
    newcomer, _ident = _newcomer(cluster, leaving)
    v2 = replace_node(v1, leaving, newcomer)
    me = Identity(client_id(0), random.Random(5).randbytes(32))

    async def main() -> None:
        async with AsyncExitStack() as stack:
            await check(stack)

    async def check(stack: AsyncExitStack) -> None:
        tracker = ClientLayout(cluster, v1, codec.sign(v1, key))
        seen: list[tuple[int, int]] = []
        tracker.on_change.append(lambda old, new: seen.append((old.version, new.version)))
        eps = []
        for g in v1.groups:
            ring = KeyRing(
                me, {NodeId(i): n.public_key for i, n in enumerate(v1.group_nodes(g.id))}
            )
            addrs = {NodeId(i): (n.host, n.port) for i, n in enumerate(v1.group_nodes(g.id))}
            eps.append(await stack.enter_async_context(open_endpoint(ring, addrs)))
            tracker.attach(eps[-1], g.id)
        assert [ep.view_number for ep in eps] == [1, 1]
        assert not tracker.offer(codec.sign(v2, AdminKey(bytes(32))))  # forged
        assert not tracker.offer(b"garbage")
        moved = codec.sign(
            replace(v1, version=2, from_objects=v1.objects[::-1], from_blocks=v1.blocks), key
        )
        with expect_log("bftfs.layout.tracker", "WARNING", match="not followed", count=1):
            assert not tracker.offer(moved)  # a move from maps nobody held: not followed
        assert tracker.dropped == 3 and tracker.number == 1 and seen == []
        assert tracker.offer(codec.sign(v2, key))
        assert seen == [(1, 2)] and [ep.view_number for ep in eps] == [2, 2]
        assert eps[1].keyring.key(NodeId(2)) == KeyRing(me, {NodeId(2): newcomer.public_key}).key(
            NodeId(2)
        )
        assert eps[1].addresses[NodeId(2)] == ("127.0.0.1", 22050)
        assert eps[0].addresses == {
            NodeId(i): (n.host, n.port) for i, n in enumerate(v1.group_nodes(0))
        }
        assert not tracker.offer(codec.sign(v1, key))  # older: a replay
        assert not tracker.offer(codec.sign(v2, key))  # the same: nothing changes
        assert tracker.dropped == 4 and seen == [(1, 2)]

    trio.run(main)


def test_the_txn_type_follows_the_layout_and_ends_what_the_last_one_began(
    cluster: ClusterConfig,
) -> None:
    v1 = load_layout(cluster)
    assert v1 is not None
    leaving = v1.groups[1].members[2]
    v2 = replace_node(v1, leaving, _newcomer(cluster, leaving)[0])
    v3 = replace(v2, version=3)
    txn = LiveTxn(v1, PRODUCTION_TYPES)
    methods = {m.name: m for m in txn.type.methods}

    def code(method: str, lv: int) -> str:
        descriptor = {"id": bytes(16), "cl": 1 << 20, "c": 0, "r": 5, "dl": 1, "lv": lv}
        descriptor["p"] = [[0, [7], "fs.stat", None], [1, [9], "fs.stat", None]]
        arg = {"T": descriptor, "lt": 0}
        extra = {"txn.prepare": {"i": 0, "bc": {}}, "txn.decide": {"v": 1, "c": []}}
        arg.update(extra.get(method, {}))
        try:
            fn = methods[method].fn
            fn({5: None}, arg, 1 << 20, *(["v"] if methods[method].version else []))
        except MethodRefused as e:
            return e.code
        return "ok"

    assert code("txn.begin", 1) != "txn-layout"
    txn.switch(v2)
    assert code("txn.begin", 1) == "txn-layout"  # nothing new begins under the old one
    assert code("txn.begin", 2) != "txn-layout"
    assert code("txn.decide", 1) != "txn-layout"  # what it began goes on
    txn.switch(v3)
    assert code("txn.decide", 1) == "txn-layout"  # two layouts back: gone
    assert code("txn.decide", 2) != "txn-layout"


def test_a_new_machine_keeps_the_nodes_id_and_place_and_is_written_then_signed(
    tmp_path: Path,
) -> None:
    cfg = init_cluster(
        tmp_path / "c", clients=1, groups=2, t=1, b=0, ports=list(range(22100, 22108))
    )
    v1 = load_layout(cfg)
    assert v1 is not None
    node = v1.groups[0].members[1]
    done = layout_admin.replace_node(
        cfg, cfg.home / "cluster.toml", node, ("127.0.0.1", 22199), None
    )
    v2 = load_layout(local.load_cluster(cfg.home))
    assert v2 == done.layout and v2.version == 2 and v2.groups == v1.groups
    assert (v2.objects, v2.blocks) == (v1.objects, v1.blocks)
    new, old = v2.node(node), v1.node(node)
    assert (new.host, new.port, new.domain) == ("127.0.0.1", 22199, old.domain)
    assert new.public_key != old.public_key and live.unsupported_change(v1, v2) is None
    spec = local.load_cluster(cfg.home).node(NodeId(node))
    assert spec.public_key == new.public_key and spec.data_dir.name == f"node{node}.l2"
    assert Identity.load(NodeId(node), spec.key_path).public == new.public_key
    assert (done.group, done.index) == (0, 1)
    again = layout_admin.replace_node(  # the same command again finishes, no layout 3
        done.config, cfg.home / "cluster.toml", node, ("127.0.0.1", 22199), None
    )
    assert again.layout == v2 and again.config.node(NodeId(node)) == spec
    other = next(s for s in cfg.nodes if s.id != node)
    with pytest.raises(LayoutError, match="address in cluster.toml"):
        layout_admin.replace_node(
            done.config, cfg.home / "cluster.toml", node, (other.host, other.port), None
        )
    with pytest.raises(LayoutError, match="in no group"):
        new_machine(v2, 99, "127.0.0.1", 1, bytes(32))
