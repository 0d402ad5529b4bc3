"""Views with generations (issue 35; docs/membership.md, "Generations"): format 3's codec,
older formats unchanged, the rules a generation change must obey (named when broken), and
which views a party holding one takes (cases a-d) or refuses, and the leases a freezing
node recalls.  Pure: no network."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bftfs.config import ClusterConfig, ConfigError
from bftfs.crypto import AdminKey
from bftfs.fsobjects.leases import SHARED
from bftfs.kv import MemoryKV
from bftfs.membership import admin
from bftfs.membership.configview import config_of_generation, view_of
from bftfs.membership.view import (
    CURRENT,
    PREVIOUS,
    View,
    ViewError,
    ViewNode,
    check,
    decode,
    format_of,
    sign,
    unsupported_change,
)
from bftfs.membership.viewkeys import AdminChains, load_node_chain
from bftfs.node.recalls import leased_objects
from bftfs.qu import schema
from bftfs.qu.canon import canonical
from bftfs.qu.timestamp import DIGEST_SIZE, ZERO, Timestamp

KEY = AdminKey(bytes(range(32)))
RNG = random.Random(35)


def key() -> bytes:
    return RNG.randbytes(32)


def keyed(view: View) -> View:
    """``view`` with a (random) view key for every node of both generations, as the
    administrator's chains would give them."""
    prev = view.previous
    if prev is not None:
        prev = replace(prev, nodes=tuple(replace(n, view_key=key()) for n in prev.nodes))
    return replace(view, nodes=tuple(replace(n, view_key=key()) for n in view.nodes), previous=prev)


def new_nodes(n: int, port: int = 7000) -> list[ViewNode]:
    return [ViewNode(i, "127.0.0.1", port + i, key()) for i in range(n)]  # type: ignore[arg-type]


def generation_one() -> View:
    cfg = ClusterConfig.for_test(clients=2)
    return keyed(
        view_of(replace(cfg, nodes=tuple(replace(s, port=6000 + s.id) for s in cfg.nodes)))
    )


def moves() -> tuple[View, View, View]:
    """View 1 (generation 1, 6 nodes t=b=1), view 2 (generation 2, 11 nodes t=2 b=1 qc=7
    m=5, moving from 1) and view 3 (the move finished)."""
    v1 = generation_one()
    v2 = keyed(admin.with_generation(v1, new_nodes(11), 2, 1, 7, 4))
    v3 = keyed(admin.finished_generation(v2))
    return v1, v2, v3


def test_format_3_round_trips_and_older_formats_are_written_as_before() -> None:
    v1, v2, v3 = moves()
    assert (format_of(v1), format_of(v2), format_of(v3)) == (2, 3, 3)
    for v in (v2, v3):
        assert decode(sign(v, KEY), KEY.public) == v
    assert v2.generation == 2 and v2.previous is not None and v2.previous.number == 1
    assert v2.previous.same_as(v1.current) and v3.previous is None and v3.generation == 2
    body = msgpack.unpackb(msgpack.unpackb(sign(v2, KEY))[2])
    assert len(body) == 10 and body[8] == 2 and body[9][:5] == [1, 1, 1, v1.qc, v1.m]
    # Formats 1 and 2: 8-item bodies, generation 1, as before.
    plain = replace(v1, nodes=tuple(replace(n, view_key=b"") for n in v1.nodes))
    for v, fmt in ((plain, 1), (v1, 2)):
        outer = msgpack.unpackb(sign(v, KEY))
        assert outer[1] == fmt and len(msgpack.unpackb(outer[2])) == 8
        got = decode(sign(v, KEY), KEY.public)
        assert got == v and got.generation == 1 and got.previous is None


def test_a_generation_change_breaking_a_rule_is_refused_naming_it() -> None:
    v1 = generation_one()
    with pytest.raises(ConfigError, match=r"6 -> 10 nodes with t = 2, b = 2.*n >= 3t \+ 2b \+ 1"):
        admin.with_generation(v1, new_nodes(10), 2, 2, 5, 1)
    with pytest.raises(ConfigError, match=r"eq\. 3\.4"):  # t + b < QC
        admin.with_generation(v1, new_nodes(11), 2, 1, 3, 1)
    with pytest.raises(ConfigError, match="FaB engine"):
        admin.with_generation(v1, new_nodes(11), 2, 1, 7, 4, engine="fab")
    _, v2, v3 = moves()
    with pytest.raises(ConfigError, match="finish that move first"):
        admin.with_generation(v2, new_nodes(6, 8000), 1, 1, 4, 2)
    with pytest.raises(ConfigError, match="nothing to finish"):
        admin.finished_generation(v3)
    # Signed views are checked the same way (a forged or hand-made one).
    with pytest.raises(ViewError, match="previous generation must be number 1"):
        check(replace(v2, previous=replace(v2.previous, number=3)))  # type: ignore[arg-type]
    with pytest.raises(ViewError, match=r"generation 1 \(6 nodes\).*PASIS rule"):
        check(replace(v2, previous=replace(v2.previous, qc=2)))  # type: ignore[arg-type]
    with pytest.raises(ViewError, match="previous generation's node ids"):
        prev = v2.previous
        assert prev is not None
        check(replace(v2, previous=replace(prev, nodes=prev.nodes[1:])))
    with pytest.raises(ViewError, match="address in both generations"):
        prev = v2.previous
        assert prev is not None
        clash = replace(prev.nodes[0], host=v2.nodes[3].host, port=v2.nodes[3].port)
        check(replace(v2, previous=replace(prev, nodes=(clash, *prev.nodes[1:]))))
    with pytest.raises(ViewError, match="must all have view keys"):
        check(replace(v2, nodes=tuple(replace(n, view_key=b"") for n in v2.nodes)))


def test_which_views_a_party_takes_across_a_generation_change() -> None:
    v1, v2, v3 = moves()
    assert unsupported_change(v1, v2) is None  # (b) a move starts
    assert unsupported_change(v2, v3) is None  # (c), and (d): a frozen node's finishing view
    assert unsupported_change(v1, v3) is None  # missed the whole move: takes its end
    # (a) within a move: a client added, the previous generation as it was (new view keys).
    v2b = keyed(admin.with_client(v2, "late", key(), 9))
    assert unsupported_change(v2, v2b) is None
    assert unsupported_change(v1, keyed(admin.with_client(v1, "late", key(), 9))) is None


def test_other_generation_changes_are_refused_with_a_reason() -> None:
    v1, v2, v3 = moves()
    prev = v2.previous
    assert prev is not None
    cases = {
        # the previous generation is not the held one as it was
        "is not generation 1 as view 1": replace(
            v2, previous=replace(prev, nodes=(replace(prev.nodes[0], port=9999), *prev.nodes[1:]))
        ),
        "one generation at a time": replace(v2, generation=3, previous=replace(prev, number=2)),
        "thresholds (t, b, qc, m) within generation 1": replace(v1, number=2, qc=v1.qc - 1),
        "adds or removes nodes within generation 1": replace(v1, number=2, nodes=v1.nodes[:5]),
    }
    for why, offered in cases.items():
        assert why in (unsupported_change(v1, offered) or ""), why
    # A view of the same generation naming a previous one the held view does not.
    assert "names generation 1 as the previous one" in (
        unsupported_change(replace(v3, number=4), replace(v2, number=5)) or ""
    )
    # Starting a further move while one runs skips the finish.
    v4 = admin.with_generation(v3, new_nodes(6, 8000), 1, 1, 4, 2)
    assert "skips the move" in (unsupported_change(v2, replace(v4, previous=None)) or "")
    assert unsupported_change(v3, v4) is None
    assert "FaB engine" in (unsupported_change(v1, v2, engine="fab") or "")
    assert unsupported_change(v2, v3, engine="fab") is None  # (same generation)


def test_generation_helpers_and_the_configuration_of_each_generation(tmp_path: Path) -> None:
    v1, v2, _ = moves()
    prev = v2.previous
    assert prev is not None
    old, new = prev.nodes[3], v2.nodes[3]
    assert v2.generation_of(3, old.public_key) == PREVIOUS
    assert v2.generation_of(3, new.public_key) == CURRENT
    assert v2.generation_of(3, v2.nodes[4].public_key) is None  # another node's key
    assert v2.previous_public_keys() == v2.as_generation(PREVIOUS).public_keys()
    assert {3: old.public_key}.items() <= v2.previous_public_keys().items()
    assert v1.previous_public_keys() == {}
    assert "generation 2, 11 nodes" in v2.describe() and "moving from generation 1" in v2.describe()
    cfg = replace(ClusterConfig.for_test(clients=2), home=tmp_path)
    cfg = replace(cfg, nodes=tuple(replace(s, port=6000 + s.id) for s in cfg.nodes))
    before = config_of_generation(cfg, v2, PREVIOUS)
    assert (before.n, before.t, before.qc, before.m) == (6, 1, v1.qc, v1.m)
    assert [s.data_dir for s in before.nodes] == [s.data_dir for s in cfg.nodes]
    after = config_of_generation(cfg, v2, CURRENT)
    assert (after.n, after.t, after.b, after.qc, after.m) == (11, 2, 1, 7, 4)
    assert after.node(3).public_key == new.public_key and after.node(3).port == new.port
    assert after.node(3).data_dir == tmp_path / "generation2" / "node3"
    assert [c.name for c in after.clients] == [c.name for c in v2.clients]
    with pytest.raises(ViewError, match="no previous generation"):
        config_of_generation(cfg, v1, PREVIOUS)


def test_the_leases_a_freezing_node_recalls_are_found_page_by_page() -> None:
    """``node/recalls.leased_objects``: each holder of a lease live now, on objects in
    their newest stored state (a barrier above is skipped, an absent object has none),
    a page at a time."""
    kv = MemoryKV()
    now = 10**18

    def version(oid: int, time: int, kind: str, state: Any) -> None:
        kv.put(schema.DB_RH, schema.oid_key(oid), b"rh")
        lt = Timestamp(time, False, 0, bytes(DIGEST_SIZE))
        raw = None if state is None else canonical(state)
        schema.store_version(
            kv, oid, schema.Version(lt, kind, raw, canonical({}), ZERO, None, True, (oid,))
        )

    def leased(*holders: tuple[int, int]) -> dict[str, Any]:
        return {"ls": [[c, SHARED, expiry, 0] for c, expiry in holders]}

    version(1, 1, schema.METHOD, leased((7, now + 1), (8, now - 1)))  # 8's lease ended
    version(2, 1, schema.METHOD, leased((7, now + 5)))
    version(2, 2, schema.BARRIER, None)  # a barrier above: the state below counts
    version(3, 1, schema.METHOD, leased((9, now + 5)))
    version(3, 2, schema.METHOD, None)  # then removed: nothing to recall
    version(4, 1, schema.METHOD, leased((8, now + 5), (9, now + 5)))
    assert leased_objects(kv, now) == ({7: [1, 2], 8: [4], 9: [4]}, None)
    assert leased_objects(kv, now, 0, 2) == ({7: [1, 2]}, 2)
    assert leased_objects(kv, now, 3, 2) == ({8: [4], 9: [4]}, None)


def test_a_generation_view_is_issued_with_both_generations_keys(tmp_path: Path) -> None:
    """``admin.issue`` of a move's view: refused with the old generation's configuration
    (it would give the new nodes the old ones' data directories); with the new one's, the
    previous rows carry the old nodes' keys for the view, as their own chains derive them,
    and the administrator keeps both generations' chains."""
    key = AdminKey.generate()
    cfg = replace(ClusterConfig.for_test(clients=2), home=tmp_path, admin_key=key.public)
    cfg = replace(
        cfg,
        nodes=tuple(
            replace(s, port=6000 + s.id, data_dir=tmp_path / f"node{s.id}") for s in cfg.nodes
        ),
    )
    key.save(cfg.admin_key_path)
    admin.init_view(cfg, key)
    v1, _ = admin.current(cfg)
    rows = new_nodes(7)
    for n in rows:
        admin.new_chain(cfg, tmp_path / "g2" / f"node{n.id}", n.public_key, 2)
    v2 = admin.with_generation(v1, rows, 1, 1, 5, 4)
    with pytest.raises(ConfigError, match=r"names nodes \[0, 1, 2, 3, 4, 5, 6\]"):
        admin.issue(cfg, tmp_path / "cluster.toml", v2, key)
    new, blob = admin.issue(config_of_generation(cfg, v2), tmp_path / "cluster.toml", v2, key)
    got = decode(blob, key.public)
    assert new.n == 7 and got.previous is not None and got.generation == 2
    for n in got.previous.nodes:
        chain = load_node_chain(cfg.node(n.id).data_dir)
        assert chain is not None and chain.at(2).public() == n.view_key
    kept = AdminChains(cfg.admin_key_path).load()
    assert {n.public_key for n in (*got.nodes, *got.previous.nodes)} <= set(kept)
