"""Tier 2: file blocks on four in-process nodes (docs/listeners.md "Blocks on four nodes").

An ``engine = "fab"`` cluster of 4 nodes (``b = 1``: PASIS would need 5) keeps its blocks
in Byzantine Listeners registers: the nodes serve them by the configuration alone, and
:class:`~bftfs.fs.clients.registerblocks.RegisterBlocks` writes and reads them through real
sessions (TCP on loopback, MAC'd frames, LMDB).  Blocks of a few bytes to 1 MiB (past the
64 KiB of other registers) are written, read by another client, read as of past moments
(the versions the nodes retained), with one node crashed, and then with that node back as
``listeners-liar`` (made-up answers, echoes and writes; STOREs withheld).
"""

from __future__ import annotations

import random
from pathlib import Path

from bftfs.fs.clients.registerblocks import RegisterBlocks
from bftfs.rw.timestamp import Timestamp
from bftfs.testing.byzantine import listeners as liar
from bftfs.testing.cluster import Cluster, open_cluster

SIZES = (0, 17, 4096, 70_000, 1 << 20)


async def _write_round(
    rb: RegisterBlocks,
    rng: random.Random,
    blocks: range,
    want: dict[int, list[tuple[Timestamp, bytes]]],
) -> None:
    """A new version of each of ``blocks``, recorded in ``want``."""
    batch = {b: rng.randbytes(rng.choice(SIZES)) for b in blocks}
    times = await rb.write_blocks(batch, concurrency=4)
    for b, data in batch.items():
        want.setdefault(b, []).append((times[b], data))


async def _check(rb: RegisterBlocks, want: dict[int, list[tuple[Timestamp, bytes]]]) -> None:
    """Every block reads as its last version, and as each earlier one at its Time."""
    got = await rb.read_blocks(want)
    assert {b: bytes(d) for b, d in got.items()} == {b: v[-1][1] for b, v in want.items()}
    for b, versions in want.items():
        for ts, data in versions:
            assert await rb.read_as_of(b, ts.time) == data
        assert await rb.read_as_of(b, versions[0][0].time - 1) == b""


def _registers(cluster: Cluster, k: int) -> RegisterBlocks:
    return RegisterBlocks(cluster.client(k), cluster.config)


async def test_four_nodes_hold_blocks_through_a_crash_and_a_liar(tmp_path: Path) -> None:
    rng = random.Random(68)
    async with open_cluster(tmp_path, t=1, b=1, n=4, engine="fab", map_size=1 << 30) as c:
        assert c.config.blocks == "registers"
        rb, other = _registers(c, 0), _registers(c, 1)
        want: dict[int, list[tuple[Timestamp, bytes]]] = {}
        await _write_round(rb, rng, range(6), want)
        await _check(other, want)  # another client reads what the first wrote
        assert await rb.read_block(99) == b""  # never written: the empty block
        space = await rb.space()
        assert space.used >= sum(len(v[-1][1]) for v in want.values())

        c.crash(3)  # a node down: writes and reads go on with the other three
        await c.wait_stopped(3)
        await _write_round(rb, rng, range(3), want)
        await _write_round(other, rng, range(2, 8), want)
        await _check(rb, want)

        c.faults[3] = liar.profile(c.config, 3)  # the node back, lying
        await c.recover(3)
        for _ in range(3):
            await _write_round(rb, rng, range(0, 8, 2), want)
            await _write_round(other, rng, range(1, 8, 2), want)
        await _check(other, want)
        lies = c.nodes[3].progress["blisteners-liar"]
        assert lies["lies"] > 0 and lies["withheld"] > 0, lies
        assert rb.statistics()["writes"] > 0 and rb.statistics()["past_reads"] > 0
