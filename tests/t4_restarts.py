"""Restarts and long outages against retention (issue 31, items 12 and 14), with real node
processes, a real FUSE mount and short retention windows.

* A restart inside the retention window: what a node must do later (collect versions kept
  for their age, shrink and forget removed objects, forget given-back blocks) lived in
  memory and was lost, so a removed file's space stayed for good.
* A node down longer than the retention window: the history its catch-up would replay is
  gone on the others; it must catch up from the current state, say so in ``status``, and
  a second failure must leave every directory readable.

Everything that crosses a process boundary is a condition polled under a deadline.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from bftfs import local
from bftfs.config import DEFAULT_BIG_BLOCK_SIZE
from bftfs.local import query_status
from bftfs.node.store import Store
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.rw import scrubstep
from bftfs.testing.mounts import Mount, fuse_available
from bftfs.testing.processes import ProcessCluster

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.slow,
]

MIB = 1024 * 1024
FAST_VERIFY = VerificationPolicy(settle_seconds=0.2, fallback_seconds=2.0)
#: The file item 14 writes, in blocks of the size of files written sequentially.
SIZE = 2 * MIB
BLOCKS = SIZE // DEFAULT_BIG_BLOCK_SIZE


def _stats(pc: ProcessCluster) -> list[dict[str, Any]]:
    """Every node's ``stats`` answer (what ``bftfs status`` shows); {} for a node down."""
    return [s.stats or {} for s in trio.run(query_status, pc.config)]


def _count(stats: dict[str, Any], key: str) -> int:
    return int(stats.get("requests", {}).get(key, 0))


def _wait(
    what: str, timeout: float, probe: Callable[[], Any], detail: Callable[[], Any] = lambda: ""
) -> Any:
    """Poll ``probe`` until it returns something true; fail naming ``what``, the last value
    and ``detail()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, (
            f"{what}: not within {timeout} s (last: {got!r}) {detail()}"
        )
        time.sleep(0.2)


def _forgot(stats: dict[str, Any], least: int, seen: dict[str, int]) -> bool:
    """True once the node forgot ``least`` objects and ``least`` blocks; ``seen`` keeps
    what it did so far, for the message of a failed wait."""
    keys = ("qu.forgotten", "rw.forgotten", "qu.forget.waiting", "qu.tombstone.waiting")
    seen.update({key: _count(stats, key) for key in keys})
    return seen["qu.forgotten"] >= least and seen["rw.forgotten"] >= least


def _flagged_everywhere(pc: ProcessCluster, at_least: list[int]) -> list[dict[str, Any]] | None:
    """Every node's stats once node ``i`` flagged ``at_least[i]`` block versions verified
    and has no backlog left, else None (the backlog may fill again before the last flag:
    what is left unverified at a restart is rebuilt from the store, issue 31 item 14)."""
    stats = _stats(pc)
    for s, least in zip(stats, at_least, strict=True):
        verify = s.get("progress", {}).get("rw.verify", {})
        if _count(s, "rw.verify.flagged") < least or verify.get("backlog_blocks", 1):
            return None
    return stats


def test_a_restart_inside_the_retention_window_collects_and_forgets_a_removed_file(
    tmp_path: Path,
) -> None:
    """Item 14: write a file, remove it, restart every node before ``keep_seconds`` is
    over: its old block versions are still collected, its blocks and its attribute object
    forgotten, and the space given back (before: kept for good, the revisits and the
    pruner's queue lived in memory and the sweep at start saw nothing old enough)."""
    keep = 30.0  # room for verifying the removal and restarting, on a loaded machine
    with ProcessCluster(
        tmp_path / "c",
        map_size=256 * MIB,
        durable=False,
        verification=FAST_VERIFY,
        retention=RetentionPolicy(
            keep_hourly=0, keep_daily=0, keep_seconds=keep, keep_versions=2, forget_seconds=keep
        ),
    ) as pc:
        empty = [s["used_bytes"] for s in _stats(pc)]
        with Mount(pc.config, tmp_path / "m", client="client0") as mnt:
            (mnt.mountpoint / "big").write_bytes(random.Random(14).randbytes(SIZE))
            full = _wait("the file's blocks verified", 90, lambda: _flagged_everywhere(pc, [1] * 6))
            flagged = [_count(s, "rw.verify.flagged") for s in full]
            os.unlink(mnt.mountpoint / "big")
            removed = time.monotonic()
            # Every node verified empty versions written over the blocks (a version a node
            # never received is not flagged there): what is left of the old contents there
            # is kept for its age only.
            _wait(
                "the removal verified",
                90,
                lambda: _flagged_everywhere(pc, [f + 1 for f in flagged]),
            )
        local.stop_nodes(pc.config)
        local.start_nodes(pc.config)
        local.wait_ready(pc.config)
        assert time.monotonic() - removed < keep, "restarted after keep_seconds: proves nothing"
        held = [s["used_bytes"] for s in _stats(pc)]
        used = [f["used_bytes"] - e for f, e in zip(full, empty, strict=True)]
        for i, (e, u, h) in enumerate(zip(empty, used, held, strict=True)):
            assert h > e + u // 2, f"node {i} gave the space back before the restart"

        def given_back() -> list[dict[str, Any]] | None:
            stats = _stats(pc)
            done = all(
                _count(s, "rw.forgotten") >= BLOCKS
                and _count(s, "qu.forgotten") >= 1
                and s["used_bytes"] < e + u // 4
                for s, e, u in zip(stats, empty, used, strict=True)
            )
            return stats if done else None

        _wait("the removed file collected and forgotten", 3 * keep + 60, given_back)


def _catch_up(pc: ProcessCluster, node: int, timeout: float = 120.0) -> dict[str, Any]:
    """Node ``node``'s Q/U and PASIS catch-up progress once both finished a clean pass.

    A pass that left blocks or objects failed is run again by design (a block the others
    forget while the newcomer reads it fails that read: ``rw_catchup.run``), so what must
    hold is that one pass ends clean within ``timeout``, not that the first one does."""

    def progress() -> dict[str, Any]:
        now = _stats(pc)[node].get("progress", {})
        return {k: now.get(k) for k in ("qu.catchup", "rw.catchup")}

    def finished() -> dict[str, Any] | None:
        got = progress()
        if all(
            p is not None and p["state"] == "done" and not p["failed"] and not p.get("abandoned")
            for p in got.values()
        ):
            return got
        return None

    return _wait(f"a clean catch-up pass of node {node}", timeout, finished, progress)


@pytest.mark.timeout(900)
def test_a_node_away_past_the_retention_window_catches_up_and_a_second_failure_reads(
    tmp_path: Path,
) -> None:
    """Item 12: a node stopped while files are created, written and removed, back only
    after the others pruned the history its catch-up would replay (and, once it is back,
    forgot what it never held): its catch-up must succeed from the current state, and
    with another node killed every directory still lists and every file reads (before:
    "object sync failed", "no server hands over the request"; EIO on the directory)."""
    keep = 2.0
    away, second = 3, 1
    rng = random.Random(12)
    with ProcessCluster(
        tmp_path / "c",
        map_size=256 * MIB,
        durable=False,
        verification=FAST_VERIFY,
        retention=RetentionPolicy(
            keep_hourly=0, keep_daily=0, keep_seconds=keep, keep_versions=2, forget_seconds=keep
        ),
    ) as pc:
        # lease=0: every create and removal its own update, so that the history the node
        # would replay is long (directory write-back sends six per update)
        with Mount(pc.config, tmp_path / "a", client="client0", options="lease=0") as a:
            d = a.mountpoint / "d"
            d.mkdir()
            files: dict[str, bytes] = {}
            for i in range(10):
                # The even ones, removed while the node is away, are in blocks.
                size = 200_000 if i % 2 == 0 else rng.choice((40, 3000, 200_000))
                files[f"old{i}"] = rng.randbytes(size)
                (d / f"old{i}").write_bytes(files[f"old{i}"])
            pc.stop(away)
            for i in range(30):
                data = rng.randbytes(rng.choice((40, 3000, 200_000)))
                (d / f"new{i}").write_bytes(data)
                files[f"new{i}"] = data
            for name in [f"new{i}" for i in range(0, 30, 3)] + [f"old{i}" for i in range(0, 10, 2)]:
                os.unlink(d / name)
                del files[name]
            for i in range(1, 30, 6):
                files[f"new{i}"] = rng.randbytes(5000)
                (d / f"new{i}").write_bytes(files[f"new{i}"])
            up = [i for i in pc.config.node_ids if i != away]

            # The history the catch-up would replay is gone: the others pruned the versions
            # (and the stored requests) older than keep_seconds.  (They cannot verify and
            # collect blocks meanwhile: a verifier reads the other nodes, one is down.)
            # (A guard against a hang: 136 s once with three slow-suite workers on 2 cores;
            # over 300 s once in CI's slow suite, whose timeout then cut the test off inside
            # a trio run and left its worker unusable for three more tests; 28-34 s alone
            # or beside two busy loops, cause of the stall not found.  The test's own
            # timeout is above this wait's, so a stall fails here, saying what it waited for.)
            _wait(
                "the others pruned",
                600,
                lambda: all(_count(_stats(pc)[i], "qu.pruned") >= 40 for i in up),
            )
            pc.start(away)
            progress = _catch_up(pc, away)
            for name in ("qu.catchup", "rw.catchup"):
                assert progress[name]["state"] == "done", progress
                assert progress[name]["failed"] == 0, progress
            assert progress["qu.catchup"]["adopted"] > 0, progress  # the history was gone
            # The files it held that were removed while it was away are not kept there:
            # caught up to their final versions and their blocks' empty versions, it
            # forgets their objects and blocks like the others.
            seen: dict[str, int] = {}
            _wait(
                f"node {away} forgot the files removed while it was away",
                60,
                lambda: _forgot(_stats(pc)[away], 5, seen),  # the 5 old files removed at least
                lambda: seen,
            )
            pc.kill(second)
            assert sorted(os.listdir(d)) == sorted(files)
            for name, data in files.items():
                assert (d / name).read_bytes() == data, name
        with Mount(pc.config, tmp_path / "fresh", client="client1") as fresh:
            assert sorted(os.listdir(fresh.mountpoint / "d")) == sorted(files)
            for name, data in files.items():
                assert (fresh.mountpoint / "d" / name).read_bytes() == data, name


def test_a_node_restarted_more_often_than_its_scrub_period_still_scrubs(tmp_path: Path) -> None:
    """Item 14, the in-node scrub: its period started anew at every start, so a node
    restarted more often than ``scrub_seconds`` (a week by default) never scrubbed.  The
    clock is in the store now: a node whose last pass ended a period ago scrubs as soon as
    it is back (before: ``scrub_seconds`` after the start, here ten minutes)."""
    period = 600.0
    with ProcessCluster(
        tmp_path / "c",
        map_size=64 * MIB,
        durable=False,
        verification=VerificationPolicy(scrub_seconds=period, idle_seconds=0.0),
    ) as pc:
        assert _stats(pc)[0]["progress"]["rw.scrub"]["passes"] == 0
        pc.stop(0)
        # As if node 0 had been up and restarted again and again since its last pass.
        store = Store(pc.config.node(0).data_dir / "lmdb", map_size=64 * MIB, durable=False)
        try:
            store.write_now(
                lambda kv: scrubstep.scrub_noted(kv, b"last", time.time_ns() - int(period * 1e9))
            )
        finally:
            store.close()
        pc.start(0)
        _wait(
            "node 0 scrubbed",
            60,
            lambda: _stats(pc)[0].get("progress", {}).get("rw.scrub", {}).get("passes", 0) >= 1,
        )
