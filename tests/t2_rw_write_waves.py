"""Tier 2: the waves of a big-block write are frames a node can store while the next one
arrives (issue 65), over real TCP and LMDB (the in-process cluster).

A node takes nothing of a frame before all of it arrived.  ``write_blocks`` sent a wave of
16 blocks to each node as one frame: with 1 MiB blocks, 5.6 MB that crosses a 50 Mbit/s
WAN link in 0.9 s, after which the link stood idle while the node stored and acknowledged
it - at the end of every flush of a sequential writer, whose next flush waits for that
acknowledgement (docs/wan.md).  A wave now carries at most ``WAVE_FRAGMENT_BYTES`` of
fragments for each node; small blocks keep waves of 16.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from rw_helpers import rw_cluster

from bftfs.erasure import fragment_size
from bftfs.policy import VerificationPolicy
from bftfs.rw.batch import KIND_BATCH
from bftfs.rw.messages import KIND_WRITE
from bftfs.rw.write import WAVE_FRAGMENT_BYTES

BIG = 1 << 20
SMALL = 64 * 1024


async def test_a_big_block_wave_is_cut_to_a_bounded_frame_a_node(tmp_path: Path) -> None:
    off = VerificationPolicy(mode="off")
    async with rw_cluster(tmp_path, clients=1, verification=off, big_block_size=BIG) as (
        cl,
        (rw,),
    ):
        frames: dict[int, list[int]] = {i: [] for i in range(cl.config.n)}

        def counting(node: int) -> Any:
            async def wrapper(ctx: Any, payload: Any, honest: Any) -> Any:
                sizes = [
                    len(item[1]["f"])
                    for item in payload
                    if item[0] == KIND_WRITE and isinstance(item[1], dict)
                ]
                if sizes:
                    frames[node].append(sum(sizes))
                return await honest(ctx, payload)

            return wrapper

        for i in range(cl.config.n):
            cl.faults[i].byzantine(KIND_BATCH, counting(i))
        rnd = random.Random(65)
        big = {k: rnd.randbytes(BIG) for k in range(12)}
        await rw.write_blocks(big)
        small = {100 + k: rnd.randbytes(SMALL) for k in range(16)}
        await rw.write_blocks(small)
        assert await rw.read_blocks([0, 11, 100, 115]) == {
            k: v for k, v in {**big, **small}.items() if k in (0, 11, 100, 115)
        }
        big_fragment = fragment_size(BIG, cl.config.m)
        small_frame = 16 * fragment_size(SMALL, cl.config.m)
        # Before: one frame of 12 big fragments (4.2 MB) a node; now at most 2 MiB each
        # (a frame sent again, its answer late on a loaded machine, counts again).
        assert max(max(sizes) for sizes in frames.values()) <= WAVE_FRAGMENT_BYTES, frames
        whole = [n for n, sizes in frames.items() if sum(sizes) >= 12 * big_fragment]
        assert len(whole) >= cl.config.n - cl.config.t, frames  # (the last may be late)
        for node in whole:
            bigs = [size for size in frames[node] if size % big_fragment == 0]
            assert len(bigs) >= 3, (node, frames[node])
        # The 16 small blocks (22 KB fragments) still go as one frame.
        got_small = [n for n, sizes in frames.items() if small_frame in sizes]
        assert len(got_small) >= cl.config.n - cl.config.t, frames
