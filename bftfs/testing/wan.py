"""A WAN on one machine (issue 65): nodes on their own hosts (network namespaces,
:mod:`bftfs.testing.netns`), the client in the root namespace, each host's cable delayed.

A :class:`Link` says what one host's cable does to a packet: a one-way delay, a jitter, a
loss fraction and a rate.  The delay applies on both ends' egress, so a round trip between
the client and node ``i`` is ``2 * delay_i`` and one between nodes ``i`` and ``j`` is
``2 * (delay_i + delay_j)`` (nodes in different places, each behind its own WAN link).

Two ways to apply it, chosen by :func:`mode`:

- ``netem``: ``tc qdisc replace ... root netem delay D J loss L rate R`` on both ends of the
  host's veth (:func:`tc_commands`), when the kernel has ``sch_netem``;
- ``wire``: where it does not (this project's test machines have no netem, nor ``fq``), a
  user-space wire: the host's veth ends on a bridge of its own with a tap, a second tap
  sits on the hosts' bridge, and one process (``python -m bftfs.testing.wan``) carries
  the frames between the two taps in both directions, each held for the link's delay
  (plus jitter, plus its serialisation time at the rate), dropped with the loss
  fraction from a seeded generator, and always in order.  The taps and bridges run a
  64 KB MTU so that a bulk transfer is a few thousand frames a second, not a hundred
  thousand.

Everything made (namespaces, bridges, taps, qdiscs, the wire process) is removed on exit,
even when the set-up or the body failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from bftfs import config as cfgmod
from bftfs.connect import open_client
from bftfs.ids import client_id
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.rw.client import open_rw_client
from bftfs.testing import netns

#: The MTU of every interface of a ``wire`` bed (the most a tap and a veth take).
WIRE_MTU = 65000
#: Each host's TCP buffers on a ``wire`` bed (``net.ipv4.tcp_rmem`` and ``tcp_wmem``: min,
#: default, max bytes).  The kernel's default receive buffer, 128 KiB, opens a window of
#: half of it: one 64 KB segment a round trip on the wire's MTU (at 25 ms one-way, 1.3
#: MB/s), and autotuning grows it only as fast as it is filled, so a node's fresh
#: connection took 1-3 s to carry a 50 Mbit/s link (issue 65: the first flush of a big
#: file), where a 1500-byte MTU's 43 segments grow in a few round trips.  4 MiB covers
#: a 50 Mbit/s link's bandwidth-delay product at 300 ms.
WIRE_TCP_MEM = "4096 4194304 33554432"
#: The client's receive buffer at first on a ``wire`` bed (bytes): the client is the root
#: namespace, the machine's own, whose 128 KiB default did the same to every fresh
#: connection's replies, as a host's did to its requests: a cold read on a fresh mount at
#: 100 ms one-way waited about 3 s before the links carried data (issue 65).  The bed
#: raises only that default while it lives (autotuning's bounds stay the machine's) and
#: puts it back at the end, as a WAN client is tuned (``docs/wan.md``).
CLIENT_RMEM_DEFAULT = 4 * 1024 * 1024
_TCP_RMEM = Path("/proc/sys/net/ipv4/tcp_rmem")

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Link:
    """One host's cable, each direction: ``delay_ms`` one-way, ``jitter_ms`` either side of
    it, ``loss`` a fraction of the packets (0.001 is 0.1%), ``rate_mbit`` the bandwidth
    (``None``: unlimited) and ``queue_ms`` the most a rate-limited link holds back, in
    milliseconds of its rate (a router's buffer: a frame that finds it full is dropped;
    ``None``: no bound, every frame waits its turn however long the queue)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None
    queue_ms: float | None = None


def queue_limit(link: Link, mtu: int = 1500) -> int | None:
    """netem's ``limit`` (packets of ``mtu`` bytes) for ``link``'s ``queue_ms``."""
    if not (link.rate_mbit and link.queue_ms):
        return None
    return max(1, math.ceil(link.rate_mbit * 1e6 / 8 * link.queue_ms / 1000 / mtu))


def netem_args(link: Link) -> list[str]:
    """The netem qdisc's arguments for ``link`` (``["netem"]`` alone: no impairment)."""
    args = ["netem"]
    if link.delay_ms or link.jitter_ms:
        args += ["delay", f"{link.delay_ms:g}ms"]
        if link.jitter_ms:
            args.append(f"{link.jitter_ms:g}ms")
    if link.loss:
        args += ["loss", f"{link.loss * 100:g}%"]
    if link.rate_mbit:
        args += ["rate", f"{link.rate_mbit:g}mbit"]
    if (limit := queue_limit(link)) is not None:
        args += ["limit", str(limit)]
    return args


def tc_commands(link: Link, ends: tuple[str, str], namespace: str) -> list[list[str]]:
    """The ``tc`` command lines that put ``link`` on a host's cable: the root-namespace end
    (what goes to the host) and the host's end, in ``namespace`` (what leaves it)."""
    root, inside = ends
    qdisc = ["qdisc", "replace", "dev"]
    return [
        ["tc", *qdisc, root, "root", *netem_args(link)],
        ["tc", "-n", namespace, *qdisc, inside, "root", *netem_args(link)],
    ]


def mode() -> str | None:
    """``"netem"`` or ``"wire"``: how this machine delays a link; ``None`` when it cannot
    (no root, no iproute2, no namespaces; or neither netem nor ``/dev/net/tun``)."""
    if netns.netem_available():
        return "netem"
    if netns.available() and os.path.exists("/dev/net/tun"):
        return "wire"
    return None


def skip_reason() -> str | None:
    """Why a WAN bed cannot be built here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip and tc): make setup-tests installs it"
    if mode() is None:
        return "needs network namespaces with bridges, and sch_netem or /dev/net/tun"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30)


#: The wire's timeline's unit, seconds: bytes each link carried per tick.
TICK = 0.1


@dataclass(frozen=True)
class Timeline:
    """Bytes each link carried per :data:`TICK` (counted when a frame's serialisation at
    the link's rate ends, i.e. when the link was busy with it), from the wire's ``start``
    (``time.monotonic``, which every namespace shares); ``ticks[2 * i]`` is host ``i``'s
    link towards the host, ``ticks[2 * i + 1]`` from it.  ``cpu``: the wire's CPU
    seconds so far."""

    start: float
    ticks: list[list[int]]
    cpu: float

    def window(self, start: float, end: float) -> list[list[int]]:
        """The ticks of every direction between monotonic times ``start`` and ``end``."""
        lo, hi = int((start - self.start) / TICK), int((end - self.start) / TICK) + 1
        return [(d + [0] * max(0, hi - len(d)))[max(lo, 0) : hi] for d in self.ticks]


def busy_fractions(ticks: list[int], rate_mbit: float, idle: float = 0.1) -> tuple[float, float]:
    """For one direction's ``ticks`` on a link of ``rate_mbit``: the mean fraction of
    the link's capacity carried, and the fraction of ticks it was idle (below ``idle``
    of its capacity): where a transfer left the link waiting."""
    if not ticks:
        return 0.0, 0.0
    cap = rate_mbit * 1e6 / 8 * TICK
    used = [min(t / cap, 1.0) for t in ticks]
    return sum(used) / len(used), sum(u < idle for u in used) / len(used)


class Wan:
    """``len(links)`` hosts, host ``i``'s cable impaired as ``links[i]``; the client is the
    root namespace (:attr:`hosts`' gateway).  ``with Wan(links) as wan:`` builds it and
    always takes it down."""

    def __init__(self, links: list[Link], *, seed: int = 65, how: str | None = None) -> None:
        self.links = links
        self.seed = seed
        self.how = how or mode()
        if self.how is None:
            raise RuntimeError(skip_reason() or "no way to delay a link here")
        # Names and subnet from the process too: two beds of one seed may run at once.
        self.hosts = netns.Hosts(len(links), seed=seed * 1_000_003 + os.getpid())
        self._undo: list[list[str]] = []
        self._wire: subprocess.Popen[str] | None = None
        #: After :meth:`close`, on a ``wire`` bed: the bytes each host's link carried, to
        #: the host and from it (frames, headers included), and the frames it dropped with
        #: a full queue, from the wire's report.
        self.carried: list[tuple[int, ...]] = []
        #: After :meth:`close`: the wire process's CPU seconds (user + system), the check
        #: that the wire itself is not what limits a rate-limited bed (issue 65).
        self.wire_cpu = 0.0
        #: The root namespace's ``tcp_rmem`` as the bed set it and as it was before.
        self._restore_rmem: tuple[str, str] | None = None

    def __enter__(self) -> Wan:
        self.hosts.__enter__()
        try:
            if self.how == "netem":
                for i, link in enumerate(self.links):
                    for cmd in tc_commands(link, self.hosts.ends(i), self.hosts.name(i)):
                        subprocess.run(cmd, capture_output=True, check=True, timeout=30)
            else:
                self._build_wire()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _make(self, make: list[str], undo: list[str]) -> None:
        _ip(*make)
        self._undo.append(undo)

    def _build_wire(self) -> None:
        """Each host's veth onto a bridge of its own with tap ``a``; tap ``w`` on the hosts'
        bridge; the wire process carries frames between ``a`` and ``w``."""
        hosts, tag, mtu = self.hosts, self.hosts.tag, str(WIRE_MTU)
        flows = []
        for i, link in enumerate(self.links):
            root, inside = hosts.ends(i)
            own, a, w = f"bfx{tag}{i}", f"bfa{tag}{i}", f"bfw{tag}{i}"
            self._make(["link", "add", own, "type", "bridge"], ["link", "del", own])
            for tap in (a, w):
                self._make(["tuntap", "add", "dev", tap, "mode", "tap"], ["link", "del", tap])
            _ip("-n", hosts.name(i), "link", "set", inside, "mtu", mtu)
            for dev, master in ((root, own), (a, own), (w, hosts.bridge)):
                _ip("link", "set", dev, "mtu", mtu)
                _ip("link", "set", dev, "master", master)
                _ip("link", "set", dev, "up")
            _ip("link", "set", own, "up")
            flows.append({"a": a, "w": w, "link": asdict(link), "seed": self.seed * 100 + i})
        _ip("link", "set", hosts.bridge, "mtu", mtu)
        self._raise_client_rmem()
        for i in range(len(self.links)):
            for key in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
                cmd = ["ip", "netns", "exec", hosts.name(i), "sysctl", "-q", "-w"]
                subprocess.run([*cmd, f"{key}={WIRE_TCP_MEM}"], check=True, timeout=30)
        self._wire = subprocess.Popen(
            [sys.executable, "-m", "bftfs.testing.wan", json.dumps(flows)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._wire.stdout is not None
        if self._wire.stdout.readline().strip() != "ready":
            raise RuntimeError("the WAN wire process did not start")

    def _raise_client_rmem(self) -> None:
        """:data:`CLIENT_RMEM_DEFAULT` as the root namespace's first receive buffer until
        :meth:`close`, which puts the value found back unless another bed or the
        operator changed it meanwhile."""
        found = _TCP_RMEM.read_text().split()
        if len(found) != 3 or int(found[1]) >= CLIENT_RMEM_DEFAULT:
            return
        ours = f"{found[0]} {CLIENT_RMEM_DEFAULT} {max(int(found[2]), CLIENT_RMEM_DEFAULT)}"
        _TCP_RMEM.write_text(ours)
        self._restore_rmem = (ours, " ".join(found))

    def timeline(self) -> Timeline:
        """What each link carried so far, per :data:`TICK` (the wire's report on SIGUSR1;
        an empty one on a ``netem`` bed, which counts nothing)."""
        if self._wire is None or self._wire.stdout is None:
            return Timeline(0.0, [], 0.0)
        self._wire.send_signal(signal.SIGUSR1)
        got = json.loads(self._wire.stdout.readline())
        return Timeline(float(got["start"]), got["ticks"], float(got["cpu"]))

    def connect_rtt(self, i: int, port: int) -> float:
        """Seconds a TCP connection from the client to host ``i``'s ``port`` takes to open:
        one round trip (SYN, SYN-ACK), the evidence that the link is delayed."""
        start = time.monotonic()
        with socket.create_connection((self.hosts.address(i), port), timeout=30):
            return time.monotonic() - start

    def close(self) -> None:
        """Stop the wire, remove the taps and bridges, then the hosts (newest first)."""
        if self._wire is not None:
            self._wire.terminate()
            try:
                self._wire.wait(timeout=10)
                assert self._wire.stdout is not None
                with contextlib.suppress(ValueError, KeyError):
                    got = json.loads(self._wire.stdout.read().splitlines()[-1])
                    self.carried = [tuple(c) for c in got["carried"]]
                    self.wire_cpu = float(got["cpu"])
            except subprocess.TimeoutExpired:
                self._wire.kill()
                self._wire.wait()
            if self._wire.stdout is not None:
                self._wire.stdout.close()
            self._wire = None
        while self._undo:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip(*self._undo.pop())
        if self._restore_rmem is not None:
            ours, before = self._restore_rmem
            with contextlib.suppress(OSError):
                if _TCP_RMEM.read_text().split() == ours.split():
                    _TCP_RMEM.write_text(before)
            self._restore_rmem = None
        self.hosts.close()


#: The port every node listens on: each host is a fresh network stack with nothing bound.
NODE_PORT = 7000


def bftfs_cli(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m bftfs ARGS`` in the root namespace (the client's host)."""
    r = subprocess.run(
        [sys.executable, "-m", "bftfs", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and r.returncode:
        raise RuntimeError(f"bftfs {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


class Nodes:
    """The node processes of a cluster on a WAN bed, one per host: :meth:`kill` and
    :meth:`start` one of them (the consistency checker's faults), :meth:`stop` them all."""

    def __init__(self, wan: Wan, admin: Path, node_args: tuple[str, ...]) -> None:
        self.wan, self.admin, self.node_args = wan, admin, node_args
        self.path = admin / "cluster.toml"
        self.config = cfgmod.load(self.path)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int, *, wait: bool = True, extra: tuple[str, ...] = ()) -> None:
        """Start node ``i`` on its host (``bftfs node --id I``, the node arguments and
        ``extra``, e.g. ``--byzantine PROFILE``); with ``wait``, until it answers."""
        cmd = [sys.executable, "-m", "bftfs", "node", "--config", str(self.path), "--id", str(i)]
        log = self.admin / f"node{i}.log"
        self.procs[i] = self.wan.hosts.spawn(i, [*cmd, *self.node_args, *extra], log)
        deadline = time.monotonic() + 120
        while wait and not self.answers(i):
            if self.procs[i].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {i} exited or did not answer within 120 s")

    def answers(self, i: int) -> bool:
        """Whether node ``i`` answers ``bftfs status`` (which waits for it a while)."""
        got = bftfs_cli("status", "--config", str(self.path), "--json", check=False)
        with contextlib.suppress(ValueError, KeyError):
            return bool(json.loads(got.stdout)["nodes"][i]["up"])
        return False

    def kill(self, i: int) -> None:
        """Node ``i`` dies (SIGKILL), as a crash."""
        p = self.procs.pop(i)
        p.kill()
        p.wait()

    def stop(self) -> None:
        netns.stop_all(list(self.procs.values()))
        self.procs.clear()


@contextlib.contextmanager
def nodes(
    wan: Wan, admin: Path, *, map_size: str = "1G", node_args: tuple[str, ...] = ()
) -> Iterator[Nodes]:
    """A cluster of one node per host of ``wan`` (``bftfs init --nodes``, each node started
    on its host as ``bftfs node --id I`` and ``node_args``, e.g. ``--test-objects`` for
    :func:`quorum_latencies`), answering; the nodes are stopped on exit."""
    hosts = wan.hosts
    addresses = ",".join(f"{hosts.address(i)}:{NODE_PORT}" for i in range(hosts.count))
    bftfs_cli(
        "init", "--dir", str(admin), "--nodes", addresses, "--map-size", map_size, "--no-durable"
    )
    running = Nodes(wan, admin, node_args)
    try:
        for i in range(hosts.count):
            running.start(i, wait=False)
        deadline = time.monotonic() + 120
        while bftfs_cli("status", "--config", str(running.path), check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not all answer within 120 s")
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def cluster(
    wan: Wan, admin: Path, *, map_size: str = "1G", node_args: tuple[str, ...] = ()
) -> Iterator[Path]:
    """:func:`nodes`, yielding its ``cluster.toml``, which a mount in the root namespace
    uses."""
    with nodes(wan, admin, map_size=map_size, node_args=node_args) as running:
        yield running.path


#: The quorum operations :func:`quorum_latencies` times.
QUORUM_OPS = ("qu.update", "qu.query", "rw.write", "rw.read")


async def quorum_latencies(
    config: Path, rounds: int = 40, size: int = 16384
) -> tuple[dict[str, float], list[int]]:
    """Median seconds of each of :data:`QUORUM_OPS` from the root namespace (the
    client's host): a Q/U counter's update and query, a PASIS block's write and read of
    ``size`` bytes, ``rounds`` of each one after another, after as many to warm the
    connections and the round-trip estimates (issue 65 item 3: a far node must cost
    nothing when a quorum of the others answers first).  Also returns the nodes the
    client asks last at the end (``Endpoint.ask_last``).  The nodes run
    ``--test-objects``."""
    cfg = cfgmod.load(config)
    th = QUThresholds.from_config(cfg)
    data = random.Random(65).randbytes(size)
    times: dict[str, list[float]] = {op: [] for op in QUORUM_OPS}
    async with open_client(cfg, "client0") as ep, open_rw_client(ep, cfg) as rw:
        qu = QUClient(ep, th, client_id=int(client_id(0)), rng=random.Random(65))
        ops = {
            "qu.update": lambda i: qu.update(1 + i % 4, "counter.increment", 1),
            "qu.query": lambda i: qu.query(1 + i % 4, "counter.fetch"),
            "rw.write": lambda i: rw.write_block(1 + i % 8, data),
            "rw.read": lambda i: rw.read_block(1 + i % 8),
        }
        for k in range(2 * rounds):
            for op, fn in ops.items():
                start = time.monotonic()
                await fn(k)
                if k >= rounds:
                    times[op].append(time.monotonic() - start)
        last = sorted(int(n) for n in ep.ask_last(list(ep.addresses)))
    return {op: statistics.median(ts) for op, ts in times.items()}, last


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class Direction:
    """Frames read from one tap, each due on the other after the link's delay."""

    def __init__(self, src: int, dst: int, link: Link, rng: random.Random) -> None:
        self.src, self.dst, self.link, self.rng = src, dst, link, rng
        self.queue: deque[tuple[float, bytes]] = deque()
        self.busy_until = 0.0  # when the link has sent what it holds (the rate)
        self.carried = 0  # bytes of the frames taken (the ones dropped as lost included)
        self.dropped = 0  # frames dropped because the queue was full (``Link.queue_ms``)
        self.last_due = 0.0  # frames leave in order, whatever the jitter
        self.start = 0.0  # the wire's start (``time.monotonic``): tick 0
        self.ticks: list[int] = []  # bytes per ``TICK`` whose serialisation ended then

    def take(self, now: float) -> None:
        link = self.link
        while True:
            try:
                frame = os.read(self.src, 65536)
            except BlockingIOError:
                return
            self.carried += len(frame)
            if link.loss and self.rng.random() < link.loss:
                continue
            sent = now
            if link.rate_mbit:
                start = max(now, self.busy_until)
                if link.queue_ms is not None and start - now > link.queue_ms / 1000:
                    self.dropped += 1  # tail drop: the router's buffer is full
                    continue
                self.busy_until = start + len(frame) * 8 / (link.rate_mbit * 1e6)
                sent = self.busy_until
            tick = int((sent - self.start) / TICK)
            if tick >= len(self.ticks):
                self.ticks.extend([0] * (tick + 1 - len(self.ticks)))
            self.ticks[tick] += len(frame)
            jitter = self.rng.uniform(-link.jitter_ms, link.jitter_ms) if link.jitter_ms else 0
            due = max(self.last_due, sent + max(0.0, link.delay_ms + jitter) / 1000)
            self.last_due = due
            self.queue.append((due, frame))

    def give(self, now: float) -> float | None:
        """Send what is due; return when the next frame is."""
        while self.queue and self.queue[0][0] <= now:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self.dst, self.queue[0][1])
            self.queue.popleft()
        return self.queue[0][0] if self.queue else None


def wire(flows: list[dict[str, object]]) -> None:
    """The wire process: carry frames between each flow's taps, delayed, until killed."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # on time under load
    sel = selectors.DefaultSelector()
    directions = []
    start = time.monotonic()
    for flow in flows:
        a, w = _open_tap(str(flow["a"])), _open_tap(str(flow["w"]))
        link = Link(**flow["link"])  # type: ignore[arg-type]
        rng = random.Random(int(flow["seed"]))  # type: ignore[call-overload]
        for src, dst in ((a, w), (w, a)):
            d = Direction(src, dst, link, rng)
            d.start = start
            sel.register(src, selectors.EVENT_READ, d)
            directions.append(d)
    print("ready", flush=True)

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    def report(signum: int, frame: object) -> None:
        """On SIGTERM: the bytes each link carried to the host and from it, the frames
        it dropped with a full queue, and the wire's CPU seconds."""
        pairs = zip(directions[::2], directions[1::2], strict=True)
        got = [[to.carried, out.carried, to.dropped + out.dropped] for out, to in pairs]
        print(json.dumps({"carried": got, "cpu": cpu()}), flush=True)
        sys.exit(0)

    def timeline(signum: int, frame: object) -> None:
        """On SIGUSR1: each direction's bytes per tick so far (towards host 0, from it,
        towards host 1, ...), and the wire's CPU seconds."""
        pairs = zip(directions[::2], directions[1::2], strict=True)
        ticks = [d.ticks for out, to in pairs for d in (to, out)]
        print(json.dumps({"start": start, "ticks": ticks, "cpu": cpu()}), flush=True)

    signal.signal(signal.SIGTERM, report)
    signal.signal(signal.SIGUSR1, timeline)
    while True:
        now = time.monotonic()
        dues = [due for d in directions if (due := d.give(now)) is not None]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        for key, _ in sel.select(timeout):
            key.data.take(time.monotonic())


if __name__ == "__main__":
    wire(json.loads(sys.argv[1]))
