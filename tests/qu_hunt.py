"""The workload of ``t5_qu_cluster.byzantine_run`` on a :class:`DelayNet` (one seeded run).

Three clients, each three times: ``counter.increment`` on object 7, ``counter.add_all`` on
(7, 8), ``counter.fetch`` on 7 or 8; one server runs a Byzantine behaviour, possibly some
are slow.  :func:`hunt` runs one seed to the end and returns its recorder (and how far the
clock went); the caller checks the history.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio
import trio.testing
from qu_helpers import MemCluster, Recorder
from qu_net import DelayNet, seed_trio

from bftfs.ids import client_id
from bftfs.qu.client import QUClient
from bftfs.testing.byzantine.qu import BEHAVIOURS


@dataclass(frozen=True)
class Setting:
    """One run's knobs (the seed decides everything else)."""

    behaviour: str = "endless_barriers"
    server: int = 2
    slow: tuple[int, ...] = ()
    mean: float = 0.005
    slow_extra: float = 0.02
    duplicate: float = 0.0
    fifo: bool = False
    probe_after: float = 0.05
    timeout: float = 1.0
    clients: int = 3
    rounds: int = 3


@dataclass
class Run:
    """What one run left: the history, the network's delivery log and the clients."""

    rec: Recorder
    net_log: list = field(default_factory=list)
    clients: list[QUClient] = field(default_factory=list)
    cluster: MemCluster | None = None


def hunt(seed: int, s: Setting) -> Run:
    """Run the workload once under ``seed``; deterministic."""
    seed_trio(seed)
    out = Run(Recorder())
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(_workload, seed, s, out, clock=clock)
    return out


async def _workload(seed: int, s: Setting, out: Run) -> None:
    cl = MemCluster(seed=seed, clients=s.clients)
    cl.slow = set(s.slow)
    if s.behaviour:
        cl.byzantine[s.server] = BEHAVIOURS[s.behaviour]
    out.cluster = cl
    rec = out.rec
    async with trio.open_nursery() as wire:
        net = DelayNet(
            cl,
            wire,
            seed=seed,
            mean=s.mean,
            slow=s.slow_extra,
            duplicate=s.duplicate,
            fifo=s.fifo,
        )
        out.net_log = net.log
        cs = [
            QUClient(
                net.endpoint(k, s.timeout),
                cl.th,
                client_id=int(client_id(k)),
                rng=random.Random(seed * 31 + k),
                seq_start=1_000_000 * (k + 1),
                probe_after=s.probe_after,
            )
            for k in range(s.clients)
        ]
        out.clients = cs

        async def work(c: QUClient, k: int) -> None:
            for i in range(s.rounds):
                await rec.run(c, 7, "counter.increment", 1, False)
                await rec.run(c, (7, 8), "counter.add_all", 1, False)
                await rec.run(c, 8 if (i + k) % 2 else 7, "counter.fetch", None, True)

        with trio.fail_after(600):
            async with trio.open_nursery() as n:
                for k, c in enumerate(cs):
                    n.start_soon(work, c, k)
        wire.cancel_scope.cancel()  # stragglers still on the wire: the run is over


def main() -> None:
    """``python tests/qu_hunt.py --start 0 --count 1000 --behaviour equivocate``: run seeds
    (the Byzantine server ``seed % 6`` unless ``--server``; ``--slow r``: one slow server
    chosen by the seed), print each failing seed's setting and history, and a count."""
    import argparse  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import time  # noqa: PLC0415

    from qu_helpers import check_serializable  # noqa: PLC0415

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--behaviour", default="endless_barriers")
    p.add_argument("--server", type=int, default=-1)
    p.add_argument("--slow", default="", help="'r', or servers: '1,3'")
    p.add_argument("--mean", type=float, default=0.005)
    p.add_argument("--dup", type=float, default=0.0)
    p.add_argument("--fifo", action="store_true")
    p.add_argument("--timeout", type=float, default=1.0)
    a = p.parse_args()
    logging.disable(logging.CRITICAL)  # malevolent-server warnings, one per client and run
    t0, fails = time.monotonic(), 0
    for seed in range(a.start, a.start + a.count):
        if a.slow == "r":
            slow: tuple[int, ...] = ((seed // 6) % 6,)
        else:
            slow = tuple(int(x) for x in a.slow.split(",") if x)
        s = Setting(
            behaviour=a.behaviour,
            server=seed % 6 if a.server < 0 else a.server,
            slow=slow,
            mean=a.mean,
            duplicate=a.dup,
            fifo=a.fifo,
            timeout=a.timeout,
        )
        try:
            run = hunt(seed, s)
        except Exception as e:  # noqa: BLE001 - a crashed run is a finding, reported
            fails += 1
            print(f"ERROR seed {seed} {s}: {e!r}", flush=True)
            continue
        if any(not o.ok for o in run.rec.ops) or not check_serializable(run.rec.ops):
            fails += 1
            print(f"FAIL seed {seed} {s}\n{run.rec.history()}", flush=True)
    print(f"{a.count} seeds from {a.start}: {fails} failed, {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
