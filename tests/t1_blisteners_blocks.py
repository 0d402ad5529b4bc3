"""Tier 1: file blocks in Byzantine Listeners registers, the pure parts (docs/listeners.md
"Blocks on four nodes"): names and values (``listeners/blockregs.py``), the larger cap of
block registers, a node's retained versions and their thinning (``listeners/bhistory.py``)
on an in-memory KV, the ``f + 1`` vote of a history read, and the configuration rule
(``ClusterConfig.blocks``)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from bftfs import accounting
from bftfs.config import LISTENERS, ClientSpec, ClusterConfig, ConfigError, NodeSpec
from bftfs.crypto import Identity
from bftfs.ids import NodeId, client_id
from bftfs.kv import MemoryKV
from bftfs.listeners import bhistory, blockregs
from bftfs.listeners import messages as m
from bftfs.listeners.bnodeside import put_if_newer
from bftfs.listeners.stamps import INITIAL_VALUE, Stamp, Stored
from bftfs.local import init_cluster
from bftfs.policy import RetentionPolicy

SECOND = 10**9
HOUR = 3600 * SECOND


def test_a_block_register_is_named_by_its_block_and_holds_its_time() -> None:
    key = blockregs.name(7 << 64 | 3)
    assert blockregs.is_block(key) and not blockregs.is_block(b"blk:short")
    value = blockregs.pack(123, b"data")
    assert blockregs.time_of(value) == 123 and blockregs.block_of(value) == b"data"
    assert blockregs.time_of(b"") == 0 and blockregs.block_of(b"") == b""


def test_block_registers_take_a_whole_block_and_others_keep_64_kib() -> None:
    big = b"x" * (1 << 20)
    key, value = m.parse_store_request({"k": blockregs.name(1), "s": [1, 9], "d": big})
    assert value.data == big
    with pytest.raises(ValueError, match="at most"):
        m.parse_store_request({"k": b"plain", "s": [1, 9], "d": big})
    with pytest.raises(ValueError, match="at most"):
        m.parse_store_request({"k": key, "s": [1, 9], "d": b"x" * (m.MAX_BLOCK_DATA + 1)})


def _keeper(now: int, versions: int = 1, keep_seconds: float = 60.0) -> bhistory.Keeper:
    policy = RetentionPolicy(
        keep_seconds=keep_seconds, keep_versions=versions, keep_hourly=2, keep_daily=0
    )
    return bhistory.Keeper(policy.validate(), now)


def _write(kv: MemoryKV, key: bytes, counter: int, t: int, data: bytes, now: int) -> Stored:
    value = Stored(Stamp(counter, 70000 + counter % 2), blockregs.pack(t, data))
    assert put_if_newer(key, value, kv, _keeper(now))
    return value


def test_a_node_keeps_superseded_block_values_and_answers_as_of_a_moment() -> None:
    kv, key = MemoryKV(), blockregs.name(42)
    t0 = 1000 * HOUR
    v1 = _write(kv, key, 1, t0, b"one", t0)
    v2 = _write(kv, key, 2, t0 + SECOND, b"two", t0 + SECOND)
    v3 = _write(kv, key, 3, t0 + 2 * SECOND, b"three", t0 + 2 * SECOND)
    assert [v for _k, v in bhistory.versions(kv, key)] == [v1, v2]
    assert bhistory.as_of(kv, key, t0 - 1, v3) == INITIAL_VALUE
    assert bhistory.as_of(kv, key, t0, v3) == v1
    assert bhistory.as_of(kv, key, t0 + SECOND + 5, v3) == v2
    assert bhistory.as_of(kv, key, t0 + 9 * SECOND, v3) == v3
    # Retained values are charged to their writers, as the register is.
    assert accounting.LR.usage_of(kv, 70001) > len(b"one")
    assert accounting.LR.usage_of(kv, 70000) > len(b"two")


def _usage(kv: MemoryKV) -> int:
    return accounting.LR.usage_of(kv, 70000) + accounting.LR.usage_of(kv, 70001)


def test_history_is_thinned_by_the_retention_schedule_at_writes_and_by_the_sweep() -> None:
    kv, key = MemoryKV(), blockregs.name(5)
    t0 = 1000 * HOUR
    for i in range(6):  # six versions a second apart, all in one hour
        current = _write(kv, key, i + 1, t0 + i * SECOND, b"v%d" % i, t0 + i * SECOND)
    assert len(bhistory.versions(kv, key)) == 5  # all young: keep_seconds keeps them
    before = _usage(kv)
    later = t0 + 120 * SECOND  # past keep_seconds: the hour keeps its newest only
    assert bhistory.sweep(kv, _keeper(later)) == 4
    (kept,) = [v for _k, v in bhistory.versions(kv, key)]
    assert blockregs.block_of(kept.data) == b"v4"
    assert _usage(kv) < before  # the dropped values' charges given back
    # Three hours on, past keep_hourly = 2: gone, unless keep_versions holds it.
    assert bhistory.sweep(kv, _keeper(later + 3 * HOUR, versions=2)) == 0
    assert bhistory.sweep(kv, _keeper(later + 3 * HOUR)) == 1
    assert bhistory.versions(kv, key) == []
    register = msgpack.packb([*current.stamp, current.data], use_bin_type=True)
    assert _usage(kv) == len(key) + len(register)  # the register alone is charged


def test_an_emptied_block_does_not_stand_for_its_hour() -> None:
    """A removal (the empty block) is not solid: the contents before it are what the hour
    keeps."""
    kv, key = MemoryKV(), blockregs.name(6)
    t0 = 1000 * HOUR
    _write(kv, key, 1, t0, b"contents", t0)
    _write(kv, key, 2, t0 + SECOND, b"", t0 + SECOND)
    _write(kv, key, 3, t0 + 2 * SECOND, b"again", t0 + 2 * SECOND)
    bhistory.sweep(kv, _keeper(t0 + 300 * SECOND))
    kept = [blockregs.block_of(v.data) for _k, v in bhistory.versions(kv, key)]
    assert kept == [b"contents"]


def test_a_history_read_takes_the_newest_value_f_plus_one_nodes_report() -> None:
    old, new = Stored(Stamp(1, 9), b"old"), Stored(Stamp(2, 9), b"new")
    lie = Stored(Stamp(99, 9), b"made up")
    assert blockregs.pick([new, new, old], 1) == new
    assert blockregs.pick([new, new, lie], 1) is None  # a newer answer: wait for the rest
    assert blockregs.pick([new, new, lie, new], 1, everyone=True) == new
    assert blockregs.pick([old, old, new], 1) is None  # a node that missed new, and a copy
    assert blockregs.pick([old, old, new, new], 1, everyone=True) == new
    # Everyone answered and one alone reports it: a lie, or no complete write.
    assert blockregs.pick([old, old, new, lie], 1, everyone=True) == old
    assert blockregs.pick([old, new, lie], 1) is None  # wait for another answer
    reply = blockregs.past_reply(new)
    assert blockregs.parse_past_reply(reply) == new


def _config(tmp_path: Path, n: int, engine: str) -> ClusterConfig:
    nodes = tuple(
        NodeSpec(NodeId(i), "127.0.0.1", 7000 + i, Identity.generate(NodeId(i)).public, tmp_path)
        for i in range(n)
    )
    client = ClientSpec(client_id(0), "c", Identity.generate(client_id(0)).public)
    qc, mm = (2, 1) if n == 4 else (4, 3)
    return ClusterConfig(
        t=1,
        b=1,
        qc=qc,
        m=mm,
        block_size=65536,
        map_size=1 << 30,
        durable=False,
        engine=engine,
        nodes=nodes,
        clients=(client,),
        home=tmp_path,
    ).validate()


def test_fab_below_pasis_size_keeps_blocks_in_registers(tmp_path: Path) -> None:
    assert _config(tmp_path, 4, "fab").blocks == "registers"
    assert _config(tmp_path, 6, "fab").blocks == "pasis"
    assert _config(tmp_path, 6, "qu").blocks == "pasis"


def test_init_engine_listeners_makes_four_nodes_of_fab_metadata_and_register_blocks(
    tmp_path: Path,
) -> None:
    """``bftfs init --engine listeners`` (issue 68): ``3b + 1`` nodes, saved as FaB metadata
    with blocks in registers; a node count PASIS could serve is refused, not silently
    erasure-coded under the name."""
    cfg = init_cluster(tmp_path / "c", engine=LISTENERS, map_size=1 << 28)
    assert (cfg.n, cfg.engine, cfg.blocks) == (4, "fab", "registers")
    with pytest.raises(ConfigError, match="fewer nodes than PASIS"):
        init_cluster(tmp_path / "d", engine=LISTENERS, n=5)
    assert not (tmp_path / "d").exists()
