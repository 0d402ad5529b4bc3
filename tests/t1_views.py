"""Views (issue 35; docs/membership.md): the codec, the administrator's signature, the
ordering, what a view ends, and the files a node starts from.  Pure: no network."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from bftfs.config import ClusterConfig, ConfigError
from bftfs.crypto import AdminKey
from bftfs.ids import client_id
from bftfs.membership import admin
from bftfs.membership.configview import (
    NODE_VIEW_FILE,
    apply,
    starting_view,
    view_of,
    write_signed,
)
from bftfs.membership.view import (
    DOMAIN,
    MAGIC,
    MAX_VIEW_BYTES,
    Verdict,
    ViewError,
    decode,
    encode_body,
    ended_principals,
    judge,
    moved_nodes,
    rekeyed_nodes,
    sign,
    unsupported_change,
)

KEY = AdminKey(bytes(range(32)))
OTHER = AdminKey(bytes(range(1, 33)))


def base_view(number: int = 1):  # type: ignore[no-untyped-def]
    return view_of(ClusterConfig.for_test(clients=3), number)


def test_a_signed_view_decodes_to_itself_under_the_admin_key() -> None:
    view = base_view(7)
    assert decode(sign(view, KEY), KEY.public) == view


def test_a_view_signed_by_another_key_is_refused() -> None:
    with pytest.raises(ViewError, match="not signed by this cluster's administrator"):
        decode(sign(base_view(2), OTHER), KEY.public)


def test_a_changed_body_breaks_the_signature() -> None:
    """A node that raises the number (or adds itself a client) in a view it forwards."""
    blob = sign(base_view(2), KEY)
    magic, fmt, body, signature = msgpack.unpackb(blob)
    forged_body = encode_body(base_view(3))
    forged = msgpack.packb([magic, fmt, forged_body, signature], use_bin_type=True)
    with pytest.raises(ViewError, match="not signed"):
        decode(forged, KEY.public)
    assert decode(msgpack.packb([magic, fmt, body, signature]), KEY.public).number == 2


def test_the_signature_covers_the_domain_prefix() -> None:
    """A signature the admin key made over the bare body (anything but a view) is no view's."""
    view = base_view(2)
    body = encode_body(view)
    bare = msgpack.packb([MAGIC, 1, body, KEY.sign(body)], use_bin_type=True)
    with pytest.raises(ViewError, match="not signed"):
        decode(bare, KEY.public)
    good = msgpack.packb([MAGIC, 1, body, KEY.sign(DOMAIN + body)], use_bin_type=True)
    assert decode(good, KEY.public) == view


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        ("a string", "is bytes"),
        (None, "is bytes"),
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (msgpack.packb([MAGIC, 4, b"", b""]), "format 4"),
        (msgpack.packb(["other", 1, b"", b""]), "not a signed view"),
        (msgpack.packb([MAGIC, 1, "body", b""]), "must be bytes"),
        (msgpack.packb({"a": 1}), "not a signed view"),
        (b"\0" * (MAX_VIEW_BYTES + 1), "at most"),
    ],
)
def test_malformed_views_are_one_error(blob: object, why: str) -> None:
    with pytest.raises(ViewError, match=why):
        decode(blob, KEY.public)


def test_a_signed_body_that_breaks_a_rule_is_refused() -> None:
    """Even the administrator cannot make nodes take a view without nodes, or one that gives
    one id to two clients."""
    empty = replace(base_view(2), nodes=())
    body = encode_body(empty)
    blob = msgpack.packb([MAGIC, 1, body, KEY.sign(DOMAIN + body)], use_bin_type=True)
    with pytest.raises(ViewError, match="node ids"):
        decode(blob, KEY.public)
    view = base_view(2)
    twice = replace(view, clients=(*view.clients, replace(view.clients[0], name="again")))
    with pytest.raises(ViewError, match="appears twice"):
        sign(twice, KEY)


def test_random_changes_to_a_signed_view_never_decode_and_never_raise_another_error() -> None:
    """What a peer sends cannot crash a node: every byte flip is a ViewError."""
    blob = sign(base_view(4), KEY)
    rng = random.Random(35)
    for _ in range(400):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        if bytes(b) == blob:
            continue
        with pytest.raises(ViewError):
            decode(bytes(b), KEY.public)


def test_ordering_takes_only_higher_numbers() -> None:
    v2, v3 = base_view(2), base_view(3)
    assert judge(v2, v3) is Verdict.NEWER
    assert judge(v3, v2) is Verdict.OLDER
    assert judge(v3, base_view(3)) is Verdict.SAME
    other3 = admin.without_client(v2, "client1")
    assert other3.number == 3 and judge(v3, other3) is Verdict.CONFLICT


def test_a_revoke_ends_the_revoked_clients_sessions_and_a_rotate_the_rekeyed_ones() -> None:
    v1 = base_view(1)
    revoked = admin.without_client(v1, "client1")
    assert ended_principals(v1, revoked) == {client_id(1)}
    assert [r.name for r in revoked.retired] == ["client1"]  # history keeps its name
    rotated = admin.rekeyed(revoked, "client2", b"\x09" * 32)
    assert ended_principals(revoked, rotated) == {client_id(2)}
    assert rotated.client("client2").id == client_id(2)  # type: ignore[union-attr]
    added = admin.with_client(rotated, "laptop", b"\x0a" * 32, 3)
    assert ended_principals(rotated, added) == set() and added.number == 4
    with pytest.raises(ConfigError, match="already"):
        admin.with_client(added, "laptop", b"\x0b" * 32, 4)


def test_changes_this_version_cannot_make_online_are_named() -> None:
    v1 = base_view(1)
    assert unsupported_change(v1, admin.without_client(v1, "client0")) is None
    assert "thresholds" in (unsupported_change(v1, replace(v1, number=2, b=0, t=1)) or "")
    fewer = replace(v1, number=2, nodes=v1.nodes[:-1])
    assert "adds or removes nodes" in (unsupported_change(v1, fewer) or "")
    two = admin.with_node(admin.with_node(v1, 0, "h", 9, b"\x0c" * 32), 1, "h", 10, b"\x0d" * 32)
    assert "replaces 2 nodes at once" in (unsupported_change(v1, two) or "")


def test_a_node_replaced_has_a_new_address_and_key_and_its_old_key_ends() -> None:
    v1 = base_view(1)
    moved = replace(v1, number=2, nodes=(replace(v1.nodes[0], port=9), *v1.nodes[1:]))
    assert unsupported_change(v1, moved) is None  # a machine moved: same key
    assert (moved_nodes(v1, moved), rekeyed_nodes(v1, moved)) == ([0], [])
    v2 = admin.with_node(v1, 5, "10.0.0.9", 7005, b"\x0e" * 32)
    assert v2.number == 2 and unsupported_change(v1, v2) is None
    assert (moved_nodes(v1, v2), rekeyed_nodes(v1, v2)) == ([5], [5])
    assert ended_principals(v1, v2) == {5}  # the old machine's sessions end
    assert decode(sign(v2, KEY), KEY.public) == v2
    with pytest.raises(ConfigError, match=r"is node \d's address in view 1"):
        admin.with_node(v1, 5, v1.nodes[1].host, v1.nodes[1].port, b"\x0e" * 32)
    with pytest.raises(ConfigError, match="no node 6"):
        admin.with_node(v1, 6, "h", 1, b"\x0e" * 32)


def test_a_view_applied_to_a_configuration_keeps_ids_and_retires_names() -> None:
    cfg = ClusterConfig.for_test(clients=3)
    v2 = admin.with_client(admin.without_client(view_of(cfg), "client0"), "tablet", b"\x05" * 32, 3)
    new = apply(cfg, v2)
    assert [c.name for c in new.clients] == ["client1", "client2", "tablet"]
    assert new.client_names()[client_id(0)] == "client0 (removed)"
    assert new.next_client_number == 4
    # The view keeps the revoked key (so restarted nodes can tell it why); the file does not.
    assert v2.retired[0].public_key == cfg.client("client0").public_key
    keyless = tuple(replace(r, public_key=b"") for r in v2.retired)
    assert view_of(new, v2.number) == replace(v2, retired=keyless)


def test_a_node_starts_from_the_highest_signed_view_it_has(tmp_path: Path) -> None:
    """Its own copy (taken online) beats the older one beside the configuration; an
    unsigned cluster (from before views) runs on its file as view 1; a forged file is a
    loud error, never a silent fall-back."""
    cfg = replace(ClusterConfig.for_test(clients=2), home=tmp_path, admin_key=KEY.public)
    data = tmp_path / "node0"
    data.mkdir()
    assert starting_view(cfg, data) == (view_of(cfg), None)
    v1 = sign(view_of(cfg), KEY)
    write_signed(cfg.view_path, v1)
    v3 = sign(admin.without_client(replace(view_of(cfg), number=2), "client0"), KEY)
    write_signed(data / NODE_VIEW_FILE, v3)
    view, blob = starting_view(cfg, data)
    assert view.number == 3 and blob == v3
    assert starting_view(cfg, None)[0].number == 1  # a client: the file beside the config
    write_signed(data / NODE_VIEW_FILE, sign(view_of(cfg, 9), OTHER))
    with pytest.raises(ViewError, match="not signed"):
        starting_view(cfg, data)
    legacy = replace(cfg, admin_key=None)
    assert starting_view(legacy, data) == (view_of(legacy), None)


def test_status_says_which_view_the_nodes_hold() -> None:
    from bftfs.cli.statustables import view_line
    from bftfs.local import NodeStatus

    def up(i: int, view: int) -> NodeStatus:
        return NodeStatus(i, f"h:{i}", None, True, {"view": view}, None)

    assert view_line([up(0, 3), up(1, 3)]) == "  view 3 on every node that is up"
    behind = view_line([up(0, 3), up(1, 2), NodeStatus(2, "h:2", None, False, None, "down")])
    assert "views differ" in behind and "node 0 3, node 1 2" in behind
    assert view_line([]) == "  view: - (no node up)"


def test_a_cluster_from_before_views_keeps_working_and_adopts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Migration (docs/membership.md): a cluster.toml without admin_key is view 1 of its own
    file; client changes edit it as before; `bftfs view adopt` signs it as view 1."""
    from bftfs import config as cfgmod
    from bftfs.cli import main
    from bftfs.local import init_cluster

    home = tmp_path / "c"
    cfg = init_cluster(home, clients=2)
    path = home / "cluster.toml"
    cfgmod.save(replace(cfg, admin_key=None), path)  # as written before issue 35
    cfg.view_path.unlink()
    old = cfgmod.load(path)
    assert old.admin_key is None and starting_view(old, None) == (view_of(old), None)
    assert main(["view", "--dir", str(home)]) == 3
    assert "bftfs view adopt" in capsys.readouterr().err
    assert main(["client", "add", "laptop", "--dir", str(home)]) == 0
    assert "restart the nodes" in capsys.readouterr().out
    assert main(["client", "rotate", "laptop", "--dir", str(home)]) == 2
    assert main(["view", "adopt", "--dir", str(home)]) == 0
    adopted = cfgmod.load(path)
    assert adopted.admin_key is not None
    view, _ = admin.current(adopted)
    assert view.number == 1 and [c.name for c in view.clients] == ["client0", "client1", "laptop"]
    assert main(["view", "adopt", "--dir", str(home)]) == 3  # once
    capsys.readouterr()
    assert main(["view", "--json", "--dir", str(home)]) == 0
    assert '"view": 1' in capsys.readouterr().out
