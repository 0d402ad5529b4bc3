"""Tier 3: a client hoarding a lease and never answering recalls costs a writer one recall
on real node processes, not one per change (issue 64, ``client-hoard``;
``fsobjects/leases.py``, ``_quiet_after``).

The hoarder (``client1``, a bare Q/U client: it reads none of the recalls pushed to it)
takes a shared lease on the root and asks for it again before each of the writer's
changes, never releasing.  The writer (``client0``) changes an attribute of the root
``CHANGES`` times as a mount does (``Meta._recalling``): a change refused ``leased`` recalls
the lease and is sent again, backed off, until it lands.  Before the quiet, each retake
was granted as soon as the writer's change landed: a recall and a wait of the hoarder's
whole term for every change.  What is counted is refusals and recalls, not time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs.connect import open_client
from bftfs.fsobjects import ROOT
from bftfs.fsobjects.leases import QUIET, SHARED, SLOW_RELEASE
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.objects import MethodRefused
from bftfs.testing.processes import ProcessCluster

#: The writer's changes, and the hoarder's lease term (ns: short, since the writer's
#: first change waits for it to end).
CHANGES = 8
TERM = 5 * 10**9


def _arg(**kw: Any) -> dict[str, Any]:
    return {"lt": time.time_ns(), "lm": 0, **kw}


async def _change(qu: QUClient, k: int, counts: dict[str, int]) -> None:
    """The writer's change ``k`` of the root, recalling what refuses it (as a mount does)."""
    for attempt in range(200):
        arg = _arg(name=b"user.k", value=b"%d" % k, flags=0, now=time.time_ns())
        try:
            await qu.update(ROOT, "fs.setxattr", arg)
            return
        except MethodRefused as e:
            if e.code != "leased":
                raise
            counts["leased"] += 1
            counts["waited"] += attempt == 0
        if attempt % 8 == 0:
            counts["recalls"] += 1
            await qu.update(ROOT, "fs.recall", _arg())
        await trio.sleep(min(0.5, 0.002 * 2**attempt))
    raise AssertionError("the change never landed")


async def _run(cfg: Any) -> dict[str, int]:
    counts = {"leased": 0, "waited": 0, "recalls": 0, "granted": 0, "refused": 0}
    async with open_client(cfg, "client0") as wep, open_client(cfg, "client1") as hep:
        th = QUThresholds.from_config(cfg)
        writer = QUClient(wep, th, client_id=wep.pid)
        hoarder = QUClient(hep, th, client_id=hep.pid)
        await writer.update(ROOT, "fs.mkroot", {"mode": 0o755, "uid": 0, "gid": 0, "now": 1})
        for k in range(CHANGES):
            try:  # the hoarder takes its lease (back), never to release it
                await hoarder.update(ROOT, "fs.lease", _arg(kind=SHARED, term=TERM))
                counts["granted"] += 1
            except MethodRefused as e:
                assert e.code == "recalled", e
                counts["refused"] += 1
            await _change(writer, k, counts)
    return counts


@pytest.mark.slow
def test_a_hoarder_that_never_releases_costs_a_writer_one_recall(tmp_path: Path) -> None:
    assert CHANGES * 2 * 10**9 < QUIET and TERM > 2 * SLOW_RELEASE  # quiet, and slow
    with ProcessCluster(tmp_path / "c", durable=False) as pc:
        counts = trio.run(_run, pc.config)
    print(counts)
    # Before: granted CHANGES times, and every change waited out a term (waited == 8).
    assert counts["granted"] == 1, counts
    assert counts["refused"] == CHANGES - 1, counts
    assert counts["waited"] == 1, counts  # the first change: it found the lease
    assert counts["recalls"] <= 4, counts  # one every eighth try (0.5 s apart) of that wait
