"""Clusters on several machines (issue 21): ``init --nodes`` and ``bftfs bundle``."""

from __future__ import annotations

import argparse
import stat
import tarfile
from pathlib import Path

import pytest

from bftfs import bundle, clusterkeys, config, local
from bftfs.cli.cluster import parse_addresses
from bftfs.config import ConfigError
from bftfs.crypto import Identity, KeyFileError, VolumeKey
from bftfs.fs.clients import Seal

ADDRESSES = [(f"10.0.0.{i + 1}", 7000 + i) for i in range(6)]


def test_addresses_parse_hosts_ports_and_ipv6() -> None:
    assert parse_addresses("a:1, [::1]:7000,10.0.0.1:65535") == [
        ("a", 1),
        ("::1", 7000),
        ("10.0.0.1", 65535),
    ]
    for bad in ("a", "a:", ":7", "a:0", "a:65536", "a:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT"):
            parse_addresses(bad)


def test_init_with_node_addresses(tmp_path: Path) -> None:
    cfg = local.init_cluster(tmp_path / "c", addresses=ADDRESSES, map_size=1 << 26)
    assert cfg.n == 6 and [(s.host, s.port) for s in cfg.nodes] == ADDRESSES
    with pytest.raises(ConfigError, match="7 node addresses given for 6 nodes"):
        local.init_cluster(tmp_path / "d", n=6, addresses=[*ADDRESSES, ("x", 1)])
    with pytest.raises(ConfigError, match="same address"):
        local.init_cluster(tmp_path / "e", addresses=[ADDRESSES[0]] * 6)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_a_node_bundle_holds_the_configuration_and_that_key_only(tmp_path: Path) -> None:
    cfg = local.init_cluster(tmp_path / "c", addresses=ADDRESSES, map_size=1 << 26)
    out = tmp_path / "node4.tar.gz"
    bundle.write(out, bundle.members(cfg, node=4))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    host = tmp_path / "host"
    with tarfile.open(out) as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == [
            "cluster.toml",
            "node4/private/key",
            "node4/private/view-chain",  # its per-view keys' chain (docs/membership.md)
            "view.signed",  # public: believed for the administrator's signature
        ]
        tar.extractall(host, filter="data")
    unpacked = config.load(host / "cluster.toml")
    assert [(s.host, s.port, s.public_key) for s in unpacked.nodes] == [
        (s.host, s.port, s.public_key) for s in cfg.nodes
    ]
    assert unpacked.node(4).key_path == host / "node4" / "private" / "key"
    assert Identity.load(cfg.node(4).id, unpacked.node(4).key_path).public == cfg.node(4).public_key


def test_a_client_bundle_and_refusals(tmp_path: Path) -> None:
    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 26)
    files = bundle.members(cfg, client="client1")
    assert sorted(files) == [
        "clients/client1/private/key",
        "cluster.toml",
        "view.signed",
        "volume/private/key",
    ]
    with pytest.raises(ConfigError):
        bundle.members(cfg, client="nobody")
    with pytest.raises(ConfigError, match="no node 6"):
        bundle.members(cfg, node=6)
    with pytest.raises(ConfigError, match="one node"):
        bundle.members(cfg)


def test_init_makes_a_volume_key_that_client_bundles_carry_and_node_bundles_do_not(
    tmp_path: Path,
) -> None:
    """Issue 38: ``bftfs init`` seals by default; the key reaches clients only, and the
    configuration every node reads names it by an id that is not the key."""
    cfg = local.init_cluster(tmp_path / "c", addresses=ADDRESSES, map_size=1 << 26)
    assert cfg.sealed and cfg.volume_key_id is not None
    assert stat.S_IMODE(cfg.volume_key_path.stat().st_mode) == 0o600
    secret = VolumeKey.load(cfg.volume_key_path, cfg.volume_key_id).secret
    assert secret.hex() not in (tmp_path / "c" / "cluster.toml").read_text()
    node_files = bundle.members(cfg, node=2)
    assert not any(secret.hex().encode() in data for data in node_files.values())
    out = tmp_path / "client0.tar.gz"
    bundle.write(out, bundle.members(cfg, client="client0"))
    host = tmp_path / "laptop"
    with tarfile.open(out) as tar:
        tar.extractall(host, filter="data")
    unpacked = config.load(host / "cluster.toml")
    assert unpacked.volume_key_id == cfg.volume_key_id
    assert stat.S_IMODE(unpacked.volume_key_path.stat().st_mode) == 0o600
    assert VolumeKey.load(unpacked.volume_key_path, cfg.volume_key_id).secret == secret


def test_an_unsealed_cluster_has_no_key_and_a_wrong_key_is_refused(tmp_path: Path) -> None:
    """A cluster without ``volume_key_id`` (made before issue 38, or ``--no-seal``) has no
    key (its mounts do not encrypt); a sealed one's key loads only as itself."""
    plain = local.init_cluster(tmp_path / "p", map_size=1 << 26, seal=False)
    assert not plain.sealed and plain.volume_key_id is None
    assert "volume_key_id" not in (tmp_path / "p" / "cluster.toml").read_text()
    assert sorted(bundle.members(plain, client="client0")) == [
        "clients/client0/private/key",
        "cluster.toml",
        "view.signed",
    ]
    sealed = local.init_cluster(tmp_path / "s", map_size=1 << 26)
    other = local.init_cluster(tmp_path / "o", map_size=1 << 26)
    sealed.volume_key_path.write_bytes(other.volume_key_path.read_bytes())
    assert sealed.volume_key_id is not None
    with pytest.raises(KeyFileError, match="not the cluster's"):
        VolumeKey.load(sealed.volume_key_path, sealed.volume_key_id)
    sealed.volume_key_path.unlink()
    with pytest.raises(KeyFileError, match="cannot read"):
        VolumeKey.load(sealed.volume_key_path, sealed.volume_key_id)


def test_a_rotated_key_seals_new_writes_and_the_old_ones_travel_with_client_bundles(
    tmp_path: Path,
) -> None:
    """``bftfs rotate-key``: a new current key, the old one kept (0600) under its id and
    named in the configuration, every key in a client bundle, none in a node bundle."""
    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 26)
    path = cfg.home / "cluster.toml"
    first = cfg.volume_key_id
    assert first is not None
    clusterkeys.rotate_volume_key(cfg, path)
    second = config.load(path)
    clusterkeys.rotate_volume_key(second, path)
    third = config.load(path)
    assert third.volume_key_id not in (first, second.volume_key_id)
    assert third.previous_volume_key_ids == (second.volume_key_id, first)
    for key_id in third.previous_volume_key_ids:
        kept = third.previous_volume_key_path(key_id)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert VolumeKey.load(kept, key_id).key_id == key_id
    files = bundle.members(third, client="client0")
    assert sorted(f for f in files if f.startswith("volume/")) == sorted(
        ["volume/private/key"]
        + [f"volume/private/previous/{k.hex()}" for k in third.previous_volume_key_ids]
    )
    assert not any(f.startswith("volume/") for f in bundle.members(third, node=0))
    assert Seal.of(third) is not None  # a mount loads every key
    third.previous_volume_key_path(first).unlink()
    with pytest.raises(KeyFileError, match="cannot read"):
        Seal.of(third)
    plain = local.init_cluster(tmp_path / "p", map_size=1 << 26, seal=False)
    with pytest.raises(ConfigError, match="no volume key"):
        clusterkeys.rotate_volume_key(plain, plain.home / "cluster.toml")
