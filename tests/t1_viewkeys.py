"""Per-view node keys (issue 35; seed 000's forgetting protocol; ``membership/viewkeys.py``):
the key schedule, the files it lives in, views of format 2, and the proof a handshake
carries.  Pure, or local files only."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from bftfs.config import ClusterConfig
from bftfs.crypto import AdminKey, derive
from bftfs.membership import admin
from bftfs.membership.configview import view_of
from bftfs.membership.view import DOMAINS, MAGIC, ViewError, decode, encode_body, moved_nodes, sign
from bftfs.membership.viewkeys import (
    NODE_CHAIN,
    AdminChains,
    Chain,
    ChainError,
    load_node_chain,
    proof_ok,
    save_node_chain,
)
from bftfs.net.session import proof_message

KEY = AdminKey(bytes(range(32)))
CHAIN = Chain(1, bytes(range(32)))


def test_each_view_has_its_own_key_and_the_chain_only_goes_forward() -> None:
    keys = [CHAIN.at(v).public() for v in range(1, 6)]
    assert len(set(keys)) == 5
    assert CHAIN.at(4) == CHAIN.at(2).at(4)  # a node that skipped views gets the same key
    assert CHAIN.at(3).secret == derive(derive(CHAIN.secret, b"bftfs-chain"), b"bftfs-chain")
    with pytest.raises(ChainError, match="forgotten"):
        CHAIN.at(3).at(2)
    with pytest.raises(ChainError, match="too far ahead"):
        CHAIN.at(1 << 40)
    assert Chain.generate(1).secret != Chain.generate(1).secret


def test_a_proof_verifies_only_under_the_key_of_the_view_it_claims() -> None:
    message = proof_message(3, 65536, b"c" * 16, b"s" * 16, 2)
    proof = bytes(CHAIN.at(2).signing_key().sign(message).signature)
    assert proof_ok(CHAIN.at(2).public(), message, proof)
    assert not proof_ok(CHAIN.at(1).public(), message, proof)  # another view's key
    other = proof_message(3, 65536, b"c" * 16, b"s" * 16, 1)  # the number changed
    assert not proof_ok(CHAIN.at(2).public(), other, proof)
    signed_later = bytes(CHAIN.at(3).signing_key().sign(other).signature)
    assert not proof_ok(CHAIN.at(1).public(), other, signed_later)  # (what a replayer has)
    assert not proof_ok(b"", message, proof)
    assert not proof_ok(CHAIN.at(2).public(), message, b"")


def test_a_node_chain_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    assert load_node_chain(tmp_path) is None
    save_node_chain(tmp_path, CHAIN)
    path = tmp_path / NODE_CHAIN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_node_chain(tmp_path) == CHAIN
    save_node_chain(tmp_path, CHAIN.at(2))
    assert load_node_chain(tmp_path) == CHAIN.at(2)
    assert CHAIN.secret.hex() not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["view-chain"]  # no temporary left
    for junk in ("", "x y", "1", f"0 {CHAIN.secret.hex()}", "1 abcd", f"1 {CHAIN.secret.hex()} 3"):
        path.write_text(junk)
        with pytest.raises(ChainError, match="view number"):
            load_node_chain(tmp_path)


def test_a_forgotten_chain_is_overwritten_before_its_blocks_are_freed(tmp_path: Path) -> None:
    """The old chain file's inode, still open here (as a process reading it, or the blocks
    the file system is about to free), holds zeros once the new chain replaced it; a file
    with another hard link (an operator's copy) is left as it is."""
    save_node_chain(tmp_path, CHAIN)
    path = tmp_path / NODE_CHAIN
    with path.open("rb") as old:
        save_node_chain(tmp_path, CHAIN.at(2))
        left = old.read()
    assert left and left == bytes(len(left))
    assert load_node_chain(tmp_path) == CHAIN.at(2)
    copy = tmp_path / "operator-copy"
    os.link(path, copy)
    before = copy.read_bytes()
    save_node_chain(tmp_path, CHAIN.at(3))
    assert copy.read_bytes() == before and load_node_chain(tmp_path) == CHAIN.at(3)


def test_the_administrator_derives_view_keys_and_forgets_machines_and_views(
    tmp_path: Path,
) -> None:
    chains = AdminChains(tmp_path / "admin" / "private" / "key")
    assert not chains.exists()
    a, b, gone = b"a" * 32, b"b" * 32, b"g" * 32
    chains.add(a, CHAIN)
    chains.add(b, Chain(3, bytes(range(1, 33))))
    chains.add(gone, CHAIN)
    assert stat.S_IMODE(chains.path.stat().st_mode) == 0o600
    assert chains.view_keys([a, b], 3) == [
        CHAIN.at(3).public(),
        Chain(3, bytes(range(1, 33))).public(),
    ]
    with pytest.raises(ChainError, match="no view chain"):
        chains.view_keys([a, b"z" * 32], 3)
    chains.forget_before([a, b], 3)
    kept = chains.load()
    assert sorted(kept) == [a, b] and kept[a] == CHAIN.at(3)
    with pytest.raises(ChainError, match="forgotten"):
        chains.view_keys([a], 2)


def test_views_with_keys_are_format_2_and_views_without_stay_format_1() -> None:
    plain = view_of(ClusterConfig.for_test(clients=2), 4)
    blob = sign(plain, KEY)
    assert msgpack.unpackb(blob)[1] == 1  # as views were before per-view keys, byte for byte
    keyed = replace(
        plain, nodes=tuple(replace(n, view_key=CHAIN.at(4).public()) for n in plain.nodes)
    )
    assert keyed.has_view_keys and not plain.has_view_keys
    assert decode(sign(keyed, KEY), KEY.public) == keyed
    assert msgpack.unpackb(sign(keyed, KEY))[1] == 2
    # A view key changes with every view and moves no node (nobody reconnects).
    assert moved_nodes(plain, keyed) == []
    half = replace(keyed, nodes=(plain.nodes[0], *keyed.nodes[1:]))
    with pytest.raises(ViewError, match="every node has a view key or none"):
        sign(half, KEY)
    # A format-2 signature over a body without keys, or format 1 over one with them.
    for fmt, view in ((2, plain), (1, keyed)):
        body = encode_body(view)
        forged = msgpack.packb([MAGIC, fmt, body, KEY.sign(DOMAINS[fmt] + body)])
        with pytest.raises(ViewError):
            decode(forged, KEY.public)


def test_init_gives_every_node_a_chain_and_view_1_its_keys(tmp_path: Path) -> None:
    from bftfs import local

    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 26)
    view, _ = admin.current(cfg)
    assert view.has_view_keys
    for spec, node in zip(cfg.nodes, view.nodes, strict=True):
        chain = load_node_chain(spec.data_dir)
        assert chain is not None and chain.number == 1
        assert chain.public() == node.view_key
        assert stat.S_IMODE((spec.data_dir / NODE_CHAIN).stat().st_mode) == 0o600
    # The next view the administrator issues names each node's key for that view.
    nxt, _ = admin.issue(
        cfg,
        tmp_path / "c" / "cluster.toml",
        admin.with_client(view, "z", b"\x05" * 32, 9),
        AdminKey.load(cfg.admin_key_path),
    )
    view2, _ = admin.current(nxt)
    assert [n.view_key for n in view2.nodes] == [
        load_node_chain(s.data_dir).at(2).public()  # type: ignore[union-attr]
        for s in cfg.nodes
    ]
    # ... and forgot view 1's: its chains are at view 2 now.
    assert {c.number for c in AdminChains(cfg.admin_key_path).load().values()} == {2}
