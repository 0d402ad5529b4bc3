"""Configuration: every threshold rule refused with its name, TOML round trip, bad files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bftfs import config as cfgmod
from bftfs.clusterkeys import add_client, remove_client
from bftfs.config import ClusterConfig, ConfigError, default_sizes
from bftfs.ids import CLIENT_ID_BASE, client_id
from bftfs.local import init_cluster
from bftfs.qu.classify import QUThresholds
from bftfs.qu.timestamp import MAX_OBJECTS, NARROW_OBJECTS


def make(
    t: int = 1, b: int = 1, n: int | None = None, qc: int | None = None, m: int | None = None
) -> ClusterConfig:
    return ClusterConfig.for_test(t=t, b=b, n=n, qc=qc, m=m)


@pytest.mark.parametrize(
    ("t", "b", "n", "qc", "m"),
    [
        (1, 1, 6, 4, 3),
        (1, 1, 6, 3, 1),
        (1, 1, 6, 3, 2),
        (1, 0, 4, 2, 1),
        (0, 0, 1, 1, 1),
        (2, 2, 11, 7, 5),
        (4, 4, 21, 13, 9),
        (5, 5, 26, 16, 11),
        (2, 1, 9, 6, 4),
    ],
)
def test_valid_configurations_are_accepted(t: int, b: int, n: int, qc: int, m: int) -> None:
    cfg = make(t, b, n, qc, m)
    assert (cfg.n, cfg.qc, cfg.m) == (n, qc, m)
    assert cfg.q == 2 * t + 2 * b + 1 and cfg.r == t + b + 1
    assert cfg.complete_threshold == qc + b and cfg.incomplete_threshold == qc - t
    assert cfg.write_quorum == n - t


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"t": 1, "b": 2}, "b <= t"),
        ({"t": 1, "b": 1, "n": 5, "qc": 3, "m": 1}, "n >= 3t + 2b + 1"),
        ({"t": 1, "b": 1, "n": 6, "qc": 2, "m": 1}, "t + b < QC"),
        ({"t": 1, "b": 1, "n": 6, "qc": 5, "m": 1}, "QC <= N - t - b"),
        ({"t": 1, "b": 1, "n": 6, "qc": 4, "m": 4}, "1 <= m <= QC - t"),
        ({"t": 1, "b": 1, "n": 6, "qc": 4, "m": 0}, "1 <= m <= QC - t"),
        ({"t": -1, "b": 0}, "negative"),
    ],
)
def test_each_broken_rule_is_named_with_its_numbers(kwargs: dict[str, int], rule: str) -> None:
    with pytest.raises(ConfigError) as e:
        make(**kwargs)
    assert rule in str(e.value)


def test_default_sizes_match_design() -> None:
    assert default_sizes(1, 1) == (6, 4, 3)
    for t in range(6):
        for b in range(t + 1):
            make(t, b)  # the defaults are valid for every t, b


def test_toml_round_trip_and_relative_paths(tmp_path: Path) -> None:
    cfg = init_cluster(tmp_path / "c", clients=3, block_size=16384, inline_limit=1000)
    again = cfgmod.load(tmp_path / "c" / "cluster.toml")
    assert again == cfg and again.inline_limit == 1000
    assert all(s.data_dir.is_relative_to(tmp_path / "c") for s in again.nodes)
    assert 'data_dir = "node0"' in (tmp_path / "c" / "cluster.toml").read_text()
    assert [c.name for c in again.clients] == ["client0", "client1", "client2"]


def test_big_block_size_defaults_turns_off_and_round_trips(tmp_path: Path) -> None:
    """Per-file block sizes (docs/fs.md): 1 MiB by default where that is a multiple of
    ``block_size`` above it, else off; 0 or ``block_size`` turns them off; what nodes and
    clients accept is the biggest block any file may have."""
    assert ClusterConfig.for_test().big_blocks == 1024 * 1024
    assert ClusterConfig.for_test().max_file_block_size == 1024 * 1024
    assert ClusterConfig.for_test(block_size=1 << 20).big_blocks == 0
    assert ClusterConfig.for_test(block_size=98304).big_blocks == 0
    assert ClusterConfig.for_test(block_size=98304).max_file_block_size == 98304
    base = ClusterConfig.for_test()
    for off in (0, base.block_size):
        assert dataclasses.replace(base, big_block_size=off).validate().big_blocks == 0
    cfg = init_cluster(tmp_path / "c", block_size=16384, big_block_size=131072)
    again = cfgmod.load(tmp_path / "c" / "cluster.toml")
    assert again == cfg and again.big_blocks == 131072
    off = init_cluster(tmp_path / "d", big_block_size=0)
    assert cfgmod.load(tmp_path / "d" / "cluster.toml").big_blocks == 0 == off.big_blocks
    plain = init_cluster(tmp_path / "e")
    assert "big_block_size" not in (plain.home / "cluster.toml").read_text()
    assert cfgmod.load(plain.home / "cluster.toml").big_blocks == 1024 * 1024


def test_max_objects_is_wide_in_a_new_cluster_and_narrow_in_an_older_file(tmp_path: Path) -> None:
    """A new cluster's operations name up to what nodes accept (``MAX_OBJECTS``); a file
    without the key, from before nodes accepted more, keeps every client at the width every
    release accepts, so an older node is never sent an operation it refuses."""
    cfg = init_cluster(tmp_path / "c")
    path = cfg.home / "cluster.toml"
    assert cfg.max_objects == MAX_OBJECTS == 32
    assert "max_objects = 32" in path.read_text()
    assert QUThresholds.from_config(cfgmod.load(path)).objects == MAX_OBJECTS
    path.write_text(path.read_text().replace("max_objects = 32\n", ""))
    old = cfgmod.load(path)
    assert old.max_objects == NARROW_OBJECTS == 8
    assert QUThresholds.from_config(old).objects == NARROW_OBJECTS
    cfgmod.save(old, path)  # rewritten (a client added, say): still narrow, still no key
    assert "max_objects" not in path.read_text()
    assert cfgmod.load(path).max_objects == NARROW_OBJECTS


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cluster.toml"
    p.write_text(text)
    return p


def _edit(tmp_path: Path, old: str, new: str) -> Path:
    cfg = init_cluster(tmp_path / "c")
    path = cfg.home / "cluster.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("t = 1", "t = 1\nbogus = 3", "unknown key(s) ['bogus']"),
        ("qc = 4", "qc = 5", "QC <= N - t - b"),
        ("qc = 4", 'qc = "4"', "must be an integer"),
        ("durable = true", "durable = 1", "true or false"),
        ('address = "127.0.0.1:', 'address = "127.0.0.1:99999', "host:port"),
        ('public_key = "', 'public_key = "zz', "64 hex digits"),
        ("m = 3", "", "missing key(s) ['m']"),
        ("inline_limit = 32768", "inline_limit = 70000", "inline_limit must be in 0..65536"),
        ("inline_limit = 32768", "inline_limit = -1", "inline_limit must be in 0..65536"),
        ("block_size = 65536", "block_size = 65536\nbig_block_size = 100000", "multiple of"),
        ("block_size = 65536", "block_size = 65536\nbig_block_size = 32768", "multiple of"),
        ("block_size = 65536", "block_size = 65536\nbig_block_size = 8388608", "up to 4194304"),
        ("block_size = 65536", 'block_size = 65536\nbig_block_size = "1"', "must be an integer"),
        # issue 31: a block of 3 bytes, or one that is no whole number of pages
        ("block_size = 65536", "block_size = 3", "multiple of 4096 bytes in 4096..4194304"),
        ("block_size = 65536", "block_size = 65537", "multiple of 4096 bytes in 4096..4194304"),
        ("block_size = 65536", "block_size = 8388608", "multiple of 4096 bytes in 4096..4194304"),
        ("max_objects = 32", "max_objects = 4", "max_objects must be in 8..32, got 4"),
        ("max_objects = 32", "max_objects = 33", "max_objects must be in 8..32, got 33"),
        ("max_objects = 32", 'max_objects = "32"', "max_objects must be an integer"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _edit(tmp_path, old, new)
    with pytest.raises(ConfigError) as e:
        cfgmod.load(path)
    assert message in str(e.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfgmod.load(_write(tmp_path, "[cluster\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        cfgmod.load(tmp_path / "absent.toml")


def test_init_refuses_duplicate_ports_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="share the address"):
        init_cluster(tmp_path / "c", ports=[7001, 7001, 7003, 7004, 7005, 7006])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("t", "b"), [(1, 1), (1, 0), (2, 1), (2, 2), (3, 1)])
def test_quorum_sizes_meet_the_q_u_rules_for_every_n(t: int, b: int) -> None:
    """Issue 18, defect 4: ``bftfs init --n 7`` with t=b=1 kept q = 2t+2b+1 = 5, which
    breaks rule (4.3) at n = 7, and every node and mount then failed at start.  The sizes
    now grow with n, and every pair passes the protocol's own check."""
    from bftfs.qu.classify import QUThresholds
    from bftfs.thresholds import qu_quorums

    for n in range(3 * t + 2 * b + 1, 3 * t + 2 * b + 12):
        q, r = qu_quorums(n, t, b)
        QUThresholds(n=n, t=t, b=b, q=q, r=r).validate()
    assert qu_quorums(3 * t + 2 * b + 1, t, b) == (2 * t + 2 * b + 1, t + b + 1)
    assert qu_quorums(3 * t + 2 * b, t, b) == (0, 0)


def test_a_node_rejoins_only_after_being_cut_off_for_rounds() -> None:
    from bftfs.node.rejoin import Reachability

    r = Reachability(needed=4, isolated_rounds=2)
    assert [r.observe(k) for k in (5, 4, 3, 5)] == [False] * 4  # one bad round: no partition
    assert not r.cut_off
    assert [r.observe(k) for k in (0, 1)] == [False, False] and r.cut_off
    assert r.observe(0) is False
    assert r.observe(4) is True and not r.cut_off and r.rejoins == 1
    assert r.observe(5) is False and r.rejoins == 1


# Client identities (issue 31, item 6) ----------------------------------------------------


def _client_blocks(text: str) -> list[str]:
    """The ``[[clients]]`` tables of a cluster.toml, in order."""
    return ["[[clients]]" + part.split("\n\n")[0] for part in text.split("[[clients]]")[1:]]


def test_client_ids_are_written_and_survive_removing_another_entry(tmp_path: Path) -> None:
    """Removing client1's entry by hand must not hand its id to client2."""
    cfg = init_cluster(tmp_path / "c", clients=3)
    path = cfg.home / "cluster.toml"
    text = path.read_text()
    assert "id = 1\n" in _client_blocks(text)[1] and "next_client = 3" in text
    path.write_text(text.replace(_client_blocks(text)[1], "", 1))
    again = cfgmod.load(path)
    assert [(c.name, c.id) for c in again.clients] == [
        ("client0", CLIENT_ID_BASE),
        ("client2", CLIENT_ID_BASE + 2),
    ]
    assert again.next_client_number == 3


def test_old_files_without_ids_keep_their_positional_ids(tmp_path: Path) -> None:
    cfg = init_cluster(tmp_path / "c", clients=3)
    path = cfg.home / "cluster.toml"
    # an old file: no next_client, no id in [[clients]] (nodes keep theirs)
    old = "\n".join(x for x in path.read_text().splitlines() if not x.startswith("next_client"))
    blocks = _client_blocks(old)
    for block in blocks:
        old = old.replace(block, "\n".join(x for x in block.splitlines() if not x.startswith("id")))
    path.write_text(old)
    loaded = cfgmod.load(path)
    assert [c.id for c in loaded.clients] == [client_id(i) for i in range(3)]
    assert loaded.next_client_number == 3
    # the first tool that rewrites it (bftfs client ...) writes the ids they had
    remove_client(loaded, path, "client1")
    kept = cfgmod.load(path)
    assert [(c.name, c.id) for c in kept.clients] == [
        ("client0", client_id(0)),
        ("client2", client_id(2)),
    ]
    assert "id = 2" in path.read_text()


def test_duplicate_and_mixed_client_ids_are_refused(tmp_path: Path) -> None:
    cfg = init_cluster(tmp_path / "c", clients=3)
    path = cfg.home / "cluster.toml"
    text = path.read_text()
    b1 = _client_blocks(text)[1]
    path.write_text(text.replace(b1, b1.replace("id = 1", "id = 0"), 1))
    with pytest.raises(ConfigError, match="'client0' and 'client1' have the same id 0"):
        cfgmod.load(path)
    path.write_text(text.replace(b1, b1.replace("id = 1\n", ""), 1))
    with pytest.raises(ConfigError, match="some entries have an id and some do not"):
        cfgmod.load(path)
    path.write_text(text.replace(b1, b1.replace("id = 1", "id = 7"), 1))
    with pytest.raises(ConfigError, match="not below next_client = 3"):
        cfgmod.load(path)


def test_removed_ids_are_never_reused(tmp_path: Path) -> None:
    cfg = init_cluster(tmp_path / "c", clients=3)
    path = cfg.home / "cluster.toml"
    gone = remove_client(cfg, path, "client2")
    assert not (cfg.home / "clients" / "client2").exists()
    cfg = cfgmod.load(path)
    added = add_client(cfg, path, "laptop")
    assert added.id == client_id(3) != gone.id
    cfg = cfgmod.load(path)
    assert cfg.client_names() == {
        client_id(0): "client0",
        client_id(1): "client1",
        client_id(2): "client2 (removed)",
        client_id(3): "laptop",
    }
    assert (cfg.home / "clients" / "laptop" / "private" / "key").exists()
    # handing the retired id to a client by hand is refused
    text = path.read_text()
    block = _client_blocks(text)[-1]
    path.write_text(text.replace(block, block.replace("id = 3", "id = 2"), 1))
    with pytest.raises(
        ConfigError,
        match="'laptop' and 'client2' have the same id 2|'client2' and 'laptop' have the same id 2",
    ):
        cfgmod.load(path)


def test_client_names_that_are_paths_are_refused(tmp_path: Path) -> None:
    """A client's name is a directory under clients/ that `bftfs client remove` deletes."""
    cfg = init_cluster(tmp_path / "c", clients=1)
    for bad in ("..", ".", "", "a/b"):
        with pytest.raises(ConfigError, match="may only use"):
            add_client(cfg, cfg.home / "cluster.toml", bad)
    assert (cfg.home / "cluster.toml").exists()


def test_client_command_adds_removes_and_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bftfs.cli import main

    home = tmp_path / "c"
    init_cluster(home, clients=2)
    # No node runs: each change is a view issued here, not pushed (docs/membership.md).
    assert main(["client", "remove", "client0", "--offline", "--dir", str(home)]) == 0
    assert main(["client", "add", "backup", "--offline", "--dir", str(home)]) == 0
    assert main(["client", "remove", "nobody", "--offline", "--dir", str(home)]) == 3
    capsys.readouterr()
    assert main(["client", "list", "--dir", str(home)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listed[1:]] == [
        ["1", "client1"],
        ["2", "backup"],
        ["0", "client0"],
    ]
    assert "removed" in listed[-1]


def test_the_volume_key_id_survives_rewrites_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    """``[cluster] volume_key_id`` (issue 38): kept when a tool rewrites the file (else the
    cluster's mounts would stop encrypting), refused when it is not 32 hex digits."""
    cfg = init_cluster(tmp_path / "c")
    path = cfg.home / "cluster.toml"
    assert cfg.volume_key_id is not None and cfg.volume_key_id.hex() in path.read_text()
    add_client(cfg, path, "laptop")
    assert cfgmod.load(path).volume_key_id == cfg.volume_key_id
    text = path.read_text()
    for bad, why in (("zz", "hex digits"), ("abcd", "32 hex digits, got 4")):
        path.write_text(text.replace(cfg.volume_key_id.hex(), bad))
        with pytest.raises(ConfigError, match=why):
            cfgmod.load(path)


def test_a_retention_table_from_before_the_schedule_loads(tmp_path: Path) -> None:
    """Issue 36: a cluster.toml written before the thinning schedule (only keep_seconds,
    keep_versions, forget_seconds) loads, with the schedule's defaults on top; a wrong
    schedule value is refused by name."""
    cfg = init_cluster(tmp_path / "c")
    path = tmp_path / "c" / "cluster.toml"
    text = path.read_text()
    for key in ("keep_hourly", "keep_daily", "keep_weekly"):
        assert f"{key} = " in text
    old = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith("keep_") or line.startswith(("keep_seconds", "keep_versions"))
    )
    assert "keep_hourly" not in old and "keep_seconds = 900.0" in old
    path.write_text(old.replace("keep_seconds = 900.0", "keep_seconds = 1800.0") + "\n")
    again = cfgmod.load(path)
    assert again.retention.keep_seconds == 1800.0
    assert (again.retention.keep_hourly, again.retention.keep_daily) == (48, 7)
    assert again.retention.horizon_seconds == 7 * 86400 and cfg.retention.keep_seconds == 900.0
    path.write_text(old.replace("keep_seconds = 900.0", "keep_seconds = 900.0\nkeep_daily = -3"))
    with pytest.raises(ConfigError, match="keep_daily"):
        cfgmod.load(path)
