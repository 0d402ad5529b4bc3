"""Tier 2: wire fuzzing of a real node process (issue 18).

Seeded hostile frames over real TCP (``bftfs.testing.fuzz``): requests under a valid
session with hostile payloads for every kind, valid-MAC garbage, replays, bad MACs,
truncated and oversized frames, garbage before the handshake.  Afterwards the node process
is alive, has not grown without bound, answers, and the cluster still runs Q/U updates and
PASIS writes and reads through it.  A short run here; two seeds of 20 000 frames in the slow suite.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from bftfs.connect import client_identity, open_client
from bftfs.crypto import KeyRing
from bftfs.ids import PrincipalId
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.client import open_rw_client
from bftfs.testing.fuzz import fuzz
from bftfs.testing.processes import ProcessCluster

TARGET = 1  # in the preferred quorum of the counters used afterwards


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _run(tmp_path: Path, frames: int, seed: int) -> None:
    with ProcessCluster(
        tmp_path / "c",
        map_size=1 << 28,
        durable=False,
        node_args={i: ["--test-objects"] for i in range(6)},
    ) as pc:
        cfg = pc.config
        pid = pc.pid(TARGET)
        assert pid is not None
        spec = cfg.node(TARGET)
        ring = KeyRing(client_identity(cfg, "client0"), cfg.node_public_keys())

        async def main() -> None:
            rss_before = _rss_kib(pid)
            report = await fuzz(spec.host, spec.port, TARGET, ring, frames=frames, seed=seed)
            assert report.frames == frames and report.connections >= 1
            assert pc.pid(TARGET) == pid, "the fuzzed node died"
            grown = _rss_kib(pid) - rss_before
            assert grown < 256 * 1024, f"the fuzzed node grew by {grown} KiB"
            async with open_client(cfg, "client1") as ep, open_rw_client(ep, cfg) as rw:
                assert await ep.call(PrincipalId(TARGET), "ping", None) is not None
                qu = QUClient(ep, QUThresholds.from_config(cfg), client_id=ep.pid)
                for _ in range(3):
                    await qu.update(7, "counter.increment", 1)
                assert await qu.query(7, "counter.fetch") == 3
                await rw.write_block(5, b"after the fuzz")
                assert await rw.read_block(5) == b"after the fuzz"
                stats = await ep.call(PrincipalId(TARGET), "stats", None)
                assert stats["requests"].get("internal_errors", 0) == 0, stats

        trio.run(main)


def test_a_node_survives_hostile_frames(tmp_path: Path) -> None:
    _run(tmp_path, frames=1500, seed=random.Random(1).randrange(10**6))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_a_node_survives_tens_of_thousands_of_hostile_frames(tmp_path: Path, seed: int) -> None:
    _run(tmp_path, frames=20_000, seed=seed)
