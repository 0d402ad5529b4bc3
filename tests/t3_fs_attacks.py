"""Tier 3: a Byzantine client against the file system's objects (issue 31), through the
real Q/U path on the in-process cluster (real node services, TCP, LMDB).

A file's ``bt`` (the newest block Time its writers recorded) makes every later writer
write above it, and nodes refuse block Times more than 60 s past their clocks; a write
lease runs from the taker's clock.  One client claiming either years ahead would lock every
other writer out of the file for years and keep its blocks from being given back when it is
removed.  Nodes refuse a client's own update declaring such a time (``Method.clocks``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from fs_helpers import Env, run

from bftfs.fsobjects import ROOT
from bftfs.qu.objects import MethodRefused

BS = 4096
TEN_YEARS_NS = 10 * 365 * 86400 * 10**9


def _attacks(ino: int, d: int, v: int, size: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Updates a Byzantine client sends, each declaring a time ten years ahead."""
    now = time.time_ns()
    later = now + TEN_YEARS_NS
    return {
        "bt ahead": ("fs.setattr", {"size": size, "d": d, "now": now, "bt": later}),
        "bt and now ahead": ("fs.setattr", {"size": size, "d": d, "now": later, "bt": later}),
        "lease from ahead": (
            "fs.lock",
            {"d": d, "v": v, "tok": 77, "now": later, "lease": 120 * 10**9},
        ),
    }


@pytest.mark.parametrize("attack", ["bt ahead", "bt and now ahead", "lease from ahead"])
def test_a_client_claiming_a_time_years_ahead_locks_no_writer_out(
    tmp_path: Path, attack: str
) -> None:
    """The attack is refused by the nodes (``ahead``); another client still writes the
    file, and removing it gives every block back.  Before the fix the nodes stored ``bt``
    ten years ahead (or a lease until then): the other writer's flush failed and the
    removal's empty versions were refused, its blocks kept for ever."""

    async def body(env: Env) -> None:
        owner, other = env.fss
        fh, a = await owner.create(ROOT, b"f", 0o644, 0, 0, os.O_RDWR)
        await owner.write(fh, 0, b"1" * (2 * BS))
        await owner.release(fh)
        s = await env.raw.query(a.ino, "fs.stat")
        method, arg = _attacks(a.ino, s["d"], s["v"], s["size"])[attack]
        try:
            await env.raw.update(a.ino, method, arg)
            refused = None
        except MethodRefused as e:
            refused = e.code
        # Another writer's flush goes through, and its bytes are read back.
        fh = await other.open(a.ino, os.O_RDWR)
        await other.write(fh, BS, b"2" * BS)
        await other.release(fh)
        fh = await owner.open(a.ino, os.O_RDONLY)
        assert await owner.read(fh, 0, 3 * BS) == b"1" * BS + b"2" * BS
        await owner.release(fh)
        # Removal gives both blocks back (empty versions above bt were accepted).
        await owner.unlink(ROOT, b"f")
        assert owner.reclaimed_blocks == 2 and owner.reclaim_failed == 0
        assert refused == "ahead"  # by the nodes, each against its own clock

    run(tmp_path, body, block_size=BS, inline_limit=0)
