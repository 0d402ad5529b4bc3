"""History's space after a simulated week of edits (issue 36): what the thinning schedule
of ``[retention]`` keeps, against keeping every version for the week and against the old
15-minute window.

One in-process cluster per policy (6 nodes, real transport and LMDB, eager lazy
verification) and one file system client.  A seeded tree of small files (the kind the
Andrew and PostMark runs make: sizes 0 .. 48 KiB, 16 KiB blocks) is written on day 0;
then, for seven simulated days, every working hour (08:00-18:00 UTC) a few files are
saved twice (at :10 and :40), a few "hot" files of 32 KiB every 10 minutes (an editor's
autosave),
and each day one other file is removed and a new one made.  The
writer's clock is injected (the block versions' Times are the simulated moments, ending
at the real now), so when the nodes verify and collect at the end they see a week of
history exactly as the schedule would have left it: what the schedule keeps depends only
on the versions' times and the moment it looks (``bftfs/thinning.py``).

``--qu-thinning`` runs the default policy twice, with the nodes' clock simulated too (the
week then lies ahead of the real now, so Q/U versions are stored at the simulated moments
and the nodes' pruners look at them as the week goes), and measures the Q/U store at the
end after one last look at every object: once with the pruners' thinning step off (the
versions kept whole to the horizon, old requests dropped: before Q/U thinning), once on.

Reported per policy, summed over the nodes: live block bytes (each block's newest
version), history block bytes (versions below it), thinned-version records, and the Q/U
store: each object's newest version, its older versions, and the stored requests and
blobs (not split: a request is keyed by its timestamp alone).  Under the old window the
Q/U versions older than 15 minutes would go; here they are all minutes old.  Usage::

    .venv/bin/python benchmarks/retention_week.py               # --files 120 --edits 4
    .venv/bin/python benchmarks/retention_week.py --json out.json
    .venv/bin/python benchmarks/retention_week.py --qu-thinning
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bftfs.fs.filesystem import open_file_system
from bftfs.fsobjects import ROOT
from bftfs.kv import KV
from bftfs.node import qu_pruner
from bftfs.node.qu_server import replica_retention
from bftfs.policy import RetentionPolicy, VerificationPolicy
from bftfs.qu import schema
from bftfs.qu.classify import QUThresholds
from bftfs.qu.objects import Registry
from bftfs.qu.retention import Thinned, drop_requests, thin_step
from bftfs.qu.serverconfig import ReplicaConfig
from bftfs.rw.client import open_rw_client
from bftfs.rw.schema import DB_THINNED, DB_VERSIONS, split_key
from bftfs.testing.cluster import Cluster, open_cluster, qu_client
from bftfs.thinning import DAY_NS, HOUR_NS

MIN_NS = 60 * 10**9
BLOCK = 16 * 1024
EAGER = VerificationPolicy(
    settle_seconds=0.0, idle_seconds=0.0, fallback_seconds=3600.0, stream_seconds=0.0
)
POLICIES = {
    "schedule (default: 15 min, 48 h, 7 d)": RetentionPolicy(),
    "every version for the week": RetentionPolicy(
        keep_seconds=7 * 86400.0, keep_hourly=0, keep_daily=0
    ),
    "old window (15 min only)": RetentionPolicy(keep_hourly=0, keep_daily=0),
}
#: Stored requests (one per version, kept with it) and large state parts.
QU_OTHER = ("qu.req", "qu.blob")


class SimClock:
    """The writer's clock: the simulated moment, rising by a microsecond per reading (each
    block version gets its own Time)."""

    def __init__(self, start_ns: int) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        self.now_ns += 1000
        return self.now_ns


async def settled(cluster: Cluster, within: float = 600.0) -> None:
    """Until every node's verifier has an empty backlog at the same moment."""
    with trio.fail_after(within):
        while True:
            pending = [n.verifier for n in cluster.nodes]
            waiting = [v for v in pending if v is None or not v.settled.is_set()]
            if not waiting:
                return
            if waiting[0] is None:
                await trio.sleep(0.01)
            else:
                await waiting[0].settled.wait()


def measure(kv: KV) -> dict[str, int]:
    """One node's block bytes (newest version of each block; the rest), thinned records,
    and Q/U bytes."""
    live = history = versions = 0
    last_block: int | None = None
    for key, value in kv.scan(DB_VERSIONS, b"", b"\xff" * 64, reverse=True):
        block = split_key(key)[0]
        size = len(key) + len(value)
        versions += 1
        if block != last_block:
            live += size
            last_block = block
        else:
            history += size
    thinned = sum(1 for _ in kv.scan(DB_THINNED, b"", b"\xff" * 64))
    qu_newest = qu_older = 0
    last_oid: bytes | None = None
    for key, value in kv.scan("qu.ver", b"", b"\xff" * 80, reverse=True):
        size = len(key) + len(value)
        if key[:8] != last_oid:
            qu_newest += size
            last_oid = bytes(key[:8])
        else:
            qu_older += size
    qu_other = sum(len(k) + len(v) for db in QU_OTHER for k, v in kv.scan(db, b"", b"\xff" * 80))
    qu_thin = [len(k) + len(v) for k, v in kv.scan(schema.DB_THIN, b"", b"\xff" * 80)]
    return {
        "qu_thinned_records": len(qu_thin),
        "qu_thinned_bytes": sum(qu_thin),
        "block_live": live,
        "block_history": history,
        "block_versions": versions,
        "thinned_records": thinned,
        "qu_newest": qu_newest,
        "qu_older": qu_older,
        "qu_requests_blobs": qu_other,
    }


def qu_look(cluster: Cluster, now_ns: int, *, thin: bool) -> int:
    """Each node's pruner look over every Q/U object at ``now_ns``: old requests dropped
    and, if ``thin``, the history thinned to the schedule; versions thinned."""
    retention = replica_retention(cluster.config.retention)
    cfg = ReplicaConfig(0, QUThresholds.from_config(cluster.config), bytes, Registry([]), retention)

    def step(kv: KV) -> int:
        oids = [int.from_bytes(k, "big") for k, _ in kv.scan(schema.DB_RH, b"", schema.OID_END)]
        for oid in oids:
            drop_requests(kv, cfg, oid, now_ns)
        return sum(thin_step(kv, cfg, oid, now_ns).thinned for oid in oids) if thin else 0

    return sum(n.store.write_now(step) for n in cluster.nodes)


async def week(
    policy: RetentionPolicy,
    files: int,
    edits: int,
    hot: int,
    seed: int,
    qu_thinning: bool = False,
    thin: bool = True,
) -> dict[str, Any]:
    rng = random.Random(seed)
    # With the nodes' clock simulated too, the week lies ahead of the wall clock, which the
    # file system's first lease time reads (a node refuses lease times ahead of its clock;
    # the mount's later ones are set to the week below).
    start = time.time_ns() + (MIN_NS if qu_thinning else -7 * DAY_NS)
    clock = SimClock(start)
    saves = 0
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            open_cluster(
                Path(tmp),
                clients=1,
                block_size=BLOCK,
                verification=EAGER,
                retention=policy,
                node_clock_ns=clock if qu_thinning else None,
            ) as cluster,
            AsyncExitStack() as stack,
        ):
            cfg = cluster.config
            rw = await stack.enter_async_context(
                open_rw_client(cluster.client(0), cfg, clock_ns=clock)
            )
            fs = await stack.enter_async_context(
                open_file_system(
                    qu_client(cluster, 0), rw, cfg, rng=random.Random(seed), clock_ns=clock
                )
            )
            fs.meta.wall_ns = clock
            inos: dict[bytes, int] = {}
            sizes: dict[bytes, int] = {}

            async def save(name: bytes) -> None:
                nonlocal saves
                fh = await fs.open(inos[name], os.O_RDWR)
                await fs.write(fh, 0, rng.randbytes(sizes[name]))
                await fs.release(fh)
                saves += 1

            async def make(name: bytes) -> None:
                fh, attr = await fs.create(ROOT, name, 0o644, 0, 0, os.O_RDWR)
                await fs.release(fh)
                inos[name], sizes[name] = attr.ino, rng.randrange(1, 48 * 1024)
                await save(name)

            for k in range(files):
                await make(f"f{k:04d}".encode())
            made = files
            hot_names = sorted(inos)[:hot]
            for name in hot_names:
                sizes[name] = 32 * 1024  # two blocks each: a document being worked on
            for day in range(7):
                for hour in range(8, 18):
                    for minute in range(0, 60, 10):
                        clock.now_ns = start + day * DAY_NS + hour * HOUR_NS + minute * MIN_NS
                        for name in hot_names:
                            await save(name)  # an editor's autosave
                        if minute in (10, 40):
                            for name in rng.sample(sorted(inos), edits):
                                await save(name)
                clock.now_ns = start + day * DAY_NS + 18 * HOUR_NS + 30 * MIN_NS
                gone = rng.choice(sorted(set(inos) - set(hot_names)))  # hot files stay
                await fs.unlink(ROOT, gone)
                del inos[gone], sizes[gone]
                await make(f"f{made:04d}".encode())
                made += 1
            await fs.write_back()
            await settled(cluster)
            out: dict[str, Any] = {"saves": saves, "nodes": len(cluster.nodes)}
            if qu_thinning:
                look = clock.now_ns + 16 * MIN_NS  # each object's look after keep_seconds
                out["thinned_at_end"] = qu_look(cluster, look, thin=thin)
            out.update(_total(cluster))
    return out


@contextlib.contextmanager
def _qu_thinning(on: bool) -> Iterator[None]:
    """The nodes' pruners thin Q/U history (``qu.retention.thin_step``), or, for the
    "before" run, do not (the code before Q/U thinning: requests dropped, versions kept to
    the horizon)."""
    saved = qu_pruner.thin_step
    if not on:
        qu_pruner.thin_step = lambda *_a, **_k: Thinned()  # type: ignore[assignment]
    try:
        yield
    finally:
        qu_pruner.thin_step = saved  # type: ignore[assignment]


def _total(cluster: Cluster) -> dict[str, int]:
    per_node = [n.store.read(measure) for n in cluster.nodes]
    return {k: sum(p[k] for p in per_node) for k in per_node[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=120)
    ap.add_argument("--edits", type=int, default=4, help="files saved per half hour of work")
    ap.add_argument("--hot", type=int, default=4, help="files saved every 10 minutes of work")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--qu-thinning", action="store_true", help="Q/U before/after thinning")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    runs: list[tuple[str, RetentionPolicy, bool]] = [(k, p, True) for k, p in POLICIES.items()]
    if args.qu_thinning:
        default = next(iter(POLICIES.values()))
        runs = [("Q/U kept whole (before)", default, False), ("Q/U thinned (after)", default, True)]
    for label, policy, thin in runs:
        t0 = time.monotonic()
        with _qu_thinning(thin):
            got = trio.run(
                week, policy, args.files, args.edits, args.hot, args.seed, args.qu_thinning, thin
            )
        got["seconds"] = round(time.monotonic() - t0, 1)
        results[label] = got
        mib = 1024 * 1024
        print(
            f"{label:40} saves {got['saves']:5}  blocks live {got['block_live'] / mib:7.2f} MiB"
            f"  history {got['block_history'] / mib:7.2f} MiB"
            f" ({got['block_history'] / max(got['block_live'], 1):6.1%})"
            f"  thinned {got['thinned_records']:5}  Q/U newest {got['qu_newest'] / mib:5.2f}"
            f" older {got['qu_older'] / mib:5.2f} req+blobs {got['qu_requests_blobs'] / mib:5.2f}"
            f" MiB  Q/U thinned records {got['qu_thinned_records']}"
            f" ({got['qu_thinned_bytes'] / mib:.2f} MiB)  [{got['seconds']} s]",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
