"""The under-attack variants of the side-by-side benchmarks (issue 64).

``--attack PROFILE`` adds, after each bftfs target with every node sound, the same target
with one node (node 0, in every quorum a client prefers) restarted as ``bftfs node
--byzantine PROFILE`` before the run; ``--attack client`` the same target with a Byzantine
client beside the correct one; ``--attack all`` every profile of ``NODE_PROFILES`` and the
client, each a target of its own interleaved with its healthy twin, so that the ratio
attacked / healthy is one of medians taken in the same run.

The Byzantine client (``python benchmarks/attack.py client HOME MNT``, a process of its
own) holds the cluster's second client key and does at once what docs/threat-model.md lets
a client try:

- **flood**: one authenticated connection per node sending PASIS time queries pipelined as
  fast as it can, ignoring every backoff (its replies read by another task, or the node
  would stop reading it at once), bounded only by the nodes' per-client buckets;
- **forged and replayed requests**: ``bftfs.testing.fuzz`` on every node in turn: hostile
  payloads of every request kind under its valid session, replayed sequence numbers, bad
  MACs, truncated frames, garbage before the handshake;
- **lease and lock hoarding**: its own mount (``lease=120``, the longest term) walking the
  whole tree the correct client works in over and over (every directory listed, every entry
  stat'ed: shared leases on all of them, taken again as soon as they are recalled) and
  holding a shared ``lockf`` lock on every file it can open, up to 256 at a time.

``client-watch`` is no attack: a correct second mount listing and stat'ing the tree once
a second (:func:`watch`), what a user's file manager does, for the hoarder's figure to be
read against.

It runs at nice 19 (its mount daemon too): on this two-core machine it would otherwise
take the correct client's CPU, which on a real network it does not share; what the nodes
spend serving it is what the variant measures.  With ``--client-cpu`` (``cpus.py``: the
correct client on a CPU of its own, the servers on the others) it runs at full priority
on the servers' CPUs, as a machine of its own beside them would.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cpus

#: A bftfs node profile is run on this node: every quorum the client prefers holds it.
NODE = 0

#: The attack that is a Byzantine client beside the correct one, not a node profile.
CLIENT = "client"

#: What the Byzantine client does (module docstring); ``client-PART`` does that part alone.
CLIENT_PARTS = ("flood", "forge", "hoard")
#: A part ``client-PART`` names but ``client`` leaves out: not an attack, the correct
#: second mount the hoarder is to be compared with (:func:`watch`).
WATCH = "watch"

#: The ``bftfs node --byzantine`` profiles a Q/U cluster running these workloads can meet
#: (bftfs/testing/byzantine/profiles.py).  Left out: the ``fab-*`` profiles (they act only
#: in an ``engine = "fab"`` cluster) and ``power-cut-in-gc`` (a crash at the third garbage
#: collection, which a short run never reaches; a crashed node is the ``bftfs-down`` target).
NODE_PROFILES = (
    "corrupt-fragments",
    "reject-everything",
    "lie-about-history",
    "withhold-history",
    "misdate-history",
    "withhold-recalls",
    "forge-recalls",
    "power-cut-in-update",
    "flood-client",
    "stop-reading",
    "rational",
    "listeners-liar",
)

#: The correct client keeps at least this share of its healthy throughput (issue 64).
BAR = 0.7

#: At most this many files the hoarding mount holds a lock on at once.
MAX_LOCKS = 256

#: Seconds between the watcher's walks (:func:`watch`).
WATCH_EVERY = 1.0

#: The hoarding mount's lease term: the longest a mount may ask for (docs/fs.md).
HOARD_LEASE = 120


def attacks_from(value: str | None) -> list[str]:
    """The attacks ``--attack`` names: ``all``, or comma-separated node profiles and
    ``client``; unknown names are refused (SystemExit, naming the known ones)."""
    if not value:
        return []
    names = [x.strip() for x in value.split(",") if x.strip()]
    out: list[str] = []
    for name in names:
        add = [*NODE_PROFILES, CLIENT] if name == "all" else [name]
        for a in add:
            if a not in NODE_PROFILES and not is_client(a):
                parts = ", ".join(f"{CLIENT}-{p}" for p in (*CLIENT_PARTS, WATCH))
                raise SystemExit(
                    f"--attack: unknown attack {a!r} "
                    f"(all, {CLIENT}, {parts}, {', '.join(NODE_PROFILES)})"
                )
            if a not in out:
                out.append(a)
    return out


def is_client(attack: str) -> bool:
    """Whether ``attack`` is the Byzantine client (``client``) or one part of it."""
    return attack == CLIENT or attack in (f"{CLIENT}-{p}" for p in (*CLIENT_PARTS, WATCH))


def client_parts(attack: str) -> tuple[str, ...]:
    """What the Byzantine client of ``attack`` does: every part, or the one it names."""
    return CLIENT_PARTS if attack == CLIENT else (attack.removeprefix(f"{CLIENT}-"),)


def suffix(attack: str) -> str:
    """What an attacked variant's name adds to its twin's."""
    return f" under {attack}"


def verdict(ratio: float | None) -> str:
    """The bar's word for an attacked / healthy ratio."""
    if ratio is None:
        return "no figure"
    return "meets 0.7x" if ratio >= BAR else "BELOW 0.7x"


# In the benchmark: putting a target under attack ------------------------------------------


@contextlib.contextmanager
def byzantine_client(
    site: Any, attack: str = CLIENT, *, with_servers: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """The Byzantine client of ``attack`` (module docstring) on ``site``'s cluster while
    the body runs; stopped (SIGTERM: it unmounts) and reaped after, and what it did put in
    ``site.info``.  ``with_servers``: on the servers' CPUs at its full priority, as a
    machine of its own would be (``cpus.py``), not at nice 19 beside everyone."""
    mnt = site.path.parent / "byzantine-mnt"
    report = site.path.parent / "byzantine-report.txt"
    here = str(Path(__file__).resolve())
    parts = ",".join(client_parts(attack))
    cmd = [sys.executable, here, "client", str(site.config.home), str(mnt), parts]
    env = cpus.server_env() if with_servers else None
    with open(report, "wb") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, close_fds=True, env=env)
    try:
        wait_for_line(report, "attacking", child, 60.0)
        yield child
        if child.poll() is not None:  # it must attack all along, or the figure is a lie
            raise RuntimeError(f"the Byzantine client ended early: {report.read_text()[-800:]}")
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if os.path.ismount(mnt):  # it was killed before unmounting: its daemon is left
            import common  # common imports this module

            common.fuse_unmount(mnt)
        text = report.read_text()
        site.info["attack"] = {
            "client": "client1",
            "report": text[-2000:],
            "mount": mount_counters_in(text),
        }


#: The line of the Byzantine client's report holding its mount's counters (JSON).
MOUNT_LINE = "mount "


def mount_counters_in(report: str) -> dict[str, float]:
    """The counters of the Byzantine (or watching) client's own mount, from its report's
    :data:`MOUNT_LINE` (``costs.mount_counters``: its Q/U operations by method, its lease
    counters); {} when there is none: the correct client's figures beside the other
    mount's demand (issue 64: how many of the watcher's queries waited on a publication)."""
    for line in reversed(report.splitlines()):
        if line.startswith(MOUNT_LINE):
            with contextlib.suppress(ValueError):
                got = json.loads(line[len(MOUNT_LINE) :])
                if isinstance(got, dict):
                    return {k: float(v) for k, v in got.items() if isinstance(v, (int, float))}
    return {}


def wait_for_line(path: Path, word: str, child: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait until ``child`` writes ``word`` to ``path`` (it is attacking); raise
    RuntimeError with its output if it exits or takes longer than ``seconds``."""
    deadline = time.monotonic() + seconds
    while word not in path.read_text(errors="replace"):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            child.wait()
            raise RuntimeError(f"the Byzantine client did not start: {path.read_text()[-800:]}")
        time.sleep(0.1)


# The Byzantine client process -------------------------------------------------------------


class Counts:
    """What the Byzantine client did, printed when it stops."""

    def __init__(self) -> None:
        self.flood_sent = 0
        self.flood_replies = 0
        self.fuzz_frames = 0
        self.walks = 0
        self.stats = 0
        self.locks = 0
        self.errors = 0

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in vars(self).items())


def hoard(root: Path, counts: Counts, stop: threading.Event) -> None:
    """Walk ``root`` again and again, listing and stat'ing everything (shared leases) and
    holding a shared lock on every file it can open, at most ``MAX_LOCKS`` at once."""
    held: dict[str, int] = {}
    try:
        while not stop.is_set():
            for d, _dirs, files in os.walk(root):
                if stop.is_set():
                    break
                for name in files:
                    path = os.path.join(d, name)
                    counts.stats += 1
                    with contextlib.suppress(OSError):
                        os.stat(path)
                        if path not in held and len(held) < MAX_LOCKS:
                            fd = os.open(path, os.O_RDONLY)
                            try:
                                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                            except OSError:
                                os.close(fd)
                                continue
                            held[path] = fd
                            counts.locks += 1
            counts.walks += 1
            for path in [p for p in held if not os.path.exists(p)]:
                with contextlib.suppress(OSError):
                    os.close(held.pop(path))
    finally:
        for fd in held.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def watch(root: Path, counts: Counts, stop: threading.Event) -> None:
    """What a correct user's second mount may do beside the writer (``client-watch``):
    ``ls -lR`` of the tree once every :data:`WATCH_EVERY` seconds (a file manager, a
    ``watch``), no opens, no locks.  Not an attack: the figure the hoarder's is read
    against (the writer's loss to a reader it cannot refuse)."""
    while not stop.is_set():
        for d, _dirs, files in os.walk(root):
            for name in files:
                counts.stats += 1
                with contextlib.suppress(OSError):
                    os.stat(os.path.join(d, name))
        counts.walks += 1
        stop.wait(WATCH_EVERY)


async def flood(cfg: Any, node: int, counts: Counts) -> None:
    """Pipelined PASIS time queries to ``node`` as client1, replies read by a task of their
    own; the connection is opened again whenever it breaks."""
    import trio
    import trio.lowlevel

    from bftfs.ids import NodeId
    from bftfs.rw.messages import KIND_TIME, BlockId, TimeRequest
    from bftfs.testing.flood import raw_session

    rng = random.Random(node)

    async def drain(s: Any) -> None:
        while await s.read_reply() is not None:
            counts.flood_replies += 1

    while True:
        try:
            s = await raw_session(cfg, NodeId(node), client="client1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, s)
                for i in itertools.count():
                    req = TimeRequest(BlockId(rng.randrange(1, 1 << 40))).to_wire()
                    await s.send(KIND_TIME, req)
                    counts.flood_sent += 1
                    if i % 32 == 0:
                        await trio.lowlevel.checkpoint()
        except Exception:  # noqa: BLE001 - a broken connection: open another
            counts.errors += 1
            await trio.sleep(0.2)


#: Frames of one fuzz run of the forger (:func:`forge`).
FUZZ_FRAMES = 20


async def forge(cfg: Any, counts: Counts) -> None:
    """``bftfs.testing.fuzz`` on every node in turn, :data:`FUZZ_FRAMES` frames at a time,
    new seeds (a run is counted once it ends: a short attacked run, over in seconds once the
    correct client's appends wait in write-back, ended before a run of 200 did)."""
    import trio

    from bftfs.connect import client_identity
    from bftfs.crypto import KeyRing
    from bftfs.testing.fuzz import fuzz

    ring = KeyRing(client_identity(cfg, "client1"), cfg.node_public_keys())
    for seed in itertools.count():
        node = seed % cfg.n
        spec = cfg.node(node)
        try:
            rep = await fuzz(spec.host, spec.port, node, ring, frames=FUZZ_FRAMES, seed=seed)
            counts.fuzz_frames += rep.frames
        except Exception:  # noqa: BLE001 - a node refusing it is what it tried
            counts.errors += 1
            await trio.sleep(0.2)


async def attack_nodes(cfg: Any, counts: Counts, parts: Sequence[str]) -> None:
    """The flooders (one per node) and the forger of ``parts``, until cancelled."""
    import trio

    async with trio.open_nursery() as nursery:
        if "flood" in parts:
            for node in range(cfg.n):
                nursery.start_soon(flood, cfg, node, counts)
        if "forge" in parts:
            nursery.start_soon(forge, cfg, counts)


def client_main(home: Path, mnt: Path, parts: Sequence[str] = CLIENT_PARTS) -> int:
    """The Byzantine client process: its mount and, of ``parts``, the walking threads, the
    flood and the forger; stops on SIGTERM, unmounts and prints what it did."""
    import trio
    from costs import mount_counters

    from bftfs.local import load_cluster
    from bftfs.testing.mounts import Mount

    # Before the mount daemon starts, which inherits both: on the servers' CPUs (a machine
    # of its own, cpus.py), else at nice 19 beside the correct client.
    if not cpus.place_self_with_servers():
        os.nice(19)
    cfg = load_cluster(home)
    counts = Counts()
    stop = threading.Event()
    options = ",".join(
        x
        for x in (
            "allow_other" if os.getuid() == 0 else "",
            f"lease={HOARD_LEASE}" if "hoard" in parts else "",  # the watcher: the default
            "metrics_port=0",  # its Q/U operations by method, for its report (any port)
        )
        if x
    )
    with Mount(cfg, mnt, client="client1", options=options):
        walkers = [
            threading.Thread(target=walk, args=(mnt, counts, stop), daemon=True)
            for part, walk in (("hoard", hoard), (WATCH, watch))
            if part in parts
        ]
        for walker in walkers:
            walker.start()
        print("attacking", flush=True)

        async def run() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(attack_nodes, cfg, counts, parts)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        try:
            trio.run(run)
        finally:
            stop.set()
            for walker in walkers:
                walker.join(30)
        mounted = mount_counters(cfg, mnt, wait=0.0)
    print(counts.line(), flush=True)
    print(MOUNT_LINE + json.dumps(mounted, sort_keys=True), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``attack.py client HOME MNT [PARTS]``: run the Byzantine client (for
    ``byzantine_client``); PARTS, comma-separated, of ``CLIENT_PARTS`` (default all)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (3, 4) or argv[0] != "client":
        print(
            "usage: attack.py client CLUSTER_HOME MOUNTPOINT [flood,forge,hoard,watch]",
            file=sys.stderr,
        )
        return 2
    parts = argv[3].split(",") if len(argv) == 4 else list(CLIENT_PARTS)
    return client_main(Path(argv[1]), Path(argv[2]), parts)


if __name__ == "__main__":
    sys.exit(main())
