"""The local cluster on disk: create it, start and stop node processes, report status.

Layout of a cluster directory (``nodes/`` by default)::

    cluster.toml                 the configuration (public keys, addresses, thresholds)
    node<I>/private/key          node I's private key (0600, directory 0700)
    node<I>/lmdb/                node I's LMDB environment
    node<I>/node.log, node.pid   its log and, while it runs, its process id
    clients/<name>/private/key   client private keys (0600)

``bftfs up`` uses :func:`start_nodes`; ``bftfs down`` uses :func:`stop_nodes`; the
benchmarks and process-level tests use the same functions through
``bftfs.testing.processes``.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bftfs import config as cfgmod
from bftfs import ports, proc
from bftfs.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAP_SIZE,
    ClientSpec,
    ClusterConfig,
    ConfigError,
    MetricsConfig,
    NodeSpec,
    default_sizes,
)
from bftfs.connect import open_client
from bftfs.crypto import AdminKey, Identity, VolumeKey
from bftfs.ids import NodeId, client_id
from bftfs.membership.admin import init_view
from bftfs.net.errors import RemoteError, TransportError
from bftfs.policy import LimitsPolicy, RetentionPolicy, VerificationPolicy
from bftfs.ports import CONFIG_NAME as CONFIG_NAME
from bftfs.ports import ephemeral_range as ephemeral_range  # (re-exported: callers)
from bftfs.ports import free_ports as free_ports


class ClusterError(Exception):
    """The local cluster cannot be created, started or reached as asked."""


def config_path(home: Path) -> Path:
    return home / CONFIG_NAME


def cluster_ports(home: Path, count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports for a local cluster in ``home`` (issue 31): outside the ephemeral
    range (:func:`port_candidates`), free now, and not claimed by another local cluster.

    The search starts at a place derived from ``home``, so clusters in different
    directories look in different places, and runs under a lock with a claim file per port
    (``$TMPDIR/bftfs-ports-<uid>/<port>``, naming the cluster): two clusters created at
    once, by concurrent test runs, never get the same port.

    Raises:
        ClusterError: no ``count`` free ports outside the ephemeral range.
    """
    candidates = ports.port_candidates()
    start = int.from_bytes(hashlib.blake2b(str(home).encode(), digest_size=8).digest(), "big")
    claims = ports.claims_dir()
    claims.mkdir(mode=0o700, exist_ok=True)
    if claims.stat().st_uid != os.getuid() or claims.is_symlink():
        raise ClusterError(f"{claims} belongs to another user: remove it")
    with open(claims / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        chosen: list[int] = []
        for i in range(len(candidates)):
            port = candidates[(start + i) % len(candidates)]
            claim = claims / str(port)
            if claim.exists() and ports.claim_live(claim, port):
                continue
            if ports.port_free(host, port):
                chosen.append(port)
                if len(chosen) == count:
                    break
        if len(chosen) < count:
            raise ClusterError(f"fewer than {count} free ports outside the ephemeral range")
        for port in chosen:
            (claims / str(port)).write_text(f"{home}\n")
    return chosen


def init_cluster(
    home: Path,
    *,
    t: int = cfgmod.DEFAULT_T,
    b: int = cfgmod.DEFAULT_B,
    n: int | None = None,
    qc: int | None = None,
    m: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    map_size: int = DEFAULT_MAP_SIZE,
    durable: bool = True,
    engine: str = "qu",
    clients: int = 2,
    host: str = "127.0.0.1",
    ports: list[int] | None = None,
    addresses: Sequence[tuple[str, int]] | None = None,
    force: bool = False,
    inline_limit: int = cfgmod.DEFAULT_INLINE_LIMIT,
    verification: VerificationPolicy | None = None,
    retention: RetentionPolicy | None = None,
    limits: LimitsPolicy | None = None,
    big_block_size: int | None = None,
    seal: bool = True,
    metrics: MetricsConfig | None = None,
    groups: int = 1,
) -> ClusterConfig:
    """Create a cluster directory: fresh keys for every node and client, and its config.

    ``groups`` > 1 (``bftfs init --groups G``, docs/layout.md): ``G * n`` nodes, ``qc`` and
    ``m`` of one group of ``n``, and the first signed layout (``layout/groups.py``).

    With ``seal`` (the default) also a volume key, under which the mounts encrypt file
    contents (docs/confidentiality.md); its id goes into the configuration.

    ``verification``, ``retention`` and ``limits`` (None: the defaults of
    ``bftfs/policy.py``) go into the saved ``cluster.toml``, so benchmarks and tests can start
    nodes under any policy; so does ``metrics`` (``[metrics]``: None, off).

    Ports are chosen outside the ephemeral range (:func:`cluster_ports`) unless given.
    ``addresses`` (one ``(host, port)`` per node, for nodes on several machines) replaces
    ``host`` and ``ports``; ``n`` defaults to their number. The configuration is validated
    before anything is written, so a bad request leaves no half-made cluster.

    Raises:
        ConfigError: the thresholds break a rule.
        ClusterError: a cluster already exists there (and ``force`` is false).
    """
    home = home.resolve()
    engine, n_, qc_, m_ = _sizes(t, b, n, qc, m, len(addresses or ()), groups, engine)
    if config_path(home).exists() and not force:
        raise ClusterError(f"a cluster already exists in {home} (use --force to replace it)")
    node_ids = [Identity.generate(NodeId(i)) for i in range(n_ * groups)]
    client_ids = [Identity.generate(client_id(k)) for k in range(clients)]
    volume = VolumeKey.generate() if seal else None
    admin = AdminKey.generate()
    cfg = ClusterConfig(
        t=t,
        b=b,
        qc=qc_,
        m=m_,
        block_size=block_size,
        map_size=map_size,
        durable=durable,
        engine=engine,
        nodes=_node_specs(home, host, ports, addresses, node_ids),
        clients=tuple(
            ClientSpec(client_id(k), f"client{k}", client_ids[k].public) for k in range(clients)
        ),
        home=home,
        inline_limit=inline_limit,
        big_block_size=big_block_size,
        verification=(verification or VerificationPolicy()).validate(),
        retention=(retention or RetentionPolicy()).validate(),
        limits=(limits or LimitsPolicy()).validate(),
        volume_key_id=None if volume is None else volume.key_id,
        metrics=metrics or MetricsConfig(),
        admin_key=admin.public,
    ).validate()
    _write(home, cfg, admin, volume, node_ids, client_ids, groups)
    return cfgmod.load(config_path(home))


def _sizes(
    t: int,
    b: int,
    n: int | None,
    qc: int | None,
    m: int | None,
    given: int,
    groups: int,
    engine: str,
) -> tuple[str, int, int, int]:
    """``(engine, n, qc, m)`` of one group (:func:`init_cluster`; ``engine`` as saved:
    ``listeners`` is FaB on ``3b + 1`` nodes); ``given``: addresses given."""
    engine, n = cfgmod.engine_and_nodes(engine, n, t, b)
    if groups < 1 or (groups > 1 and engine != "qu"):
        raise ConfigError(f"--groups must be at least 1, and > 1 needs engine qu (got {groups})")
    if given and n is None:
        n = given // groups
    return (engine, *default_sizes(t, b, n, qc, m))


def _node_specs(
    home: Path,
    host: str,
    ports: list[int] | None,
    addresses: Sequence[tuple[str, int]] | None,
    idents: list[Identity],
) -> tuple[NodeSpec, ...]:
    """The nodes of :func:`init_cluster`, one per identity: at ``addresses`` if given, else
    on ``host`` at ``ports`` (default: :func:`cluster_ports`); data under ``home``.

    Raises:
        ConfigError: not one distinct address per node.
    """
    n = len(idents)
    if addresses:
        if len(addresses) != n:
            raise ConfigError(f"{len(addresses)} node addresses given for {n} nodes")
        if len(set(addresses)) != len(addresses):
            raise ConfigError("two nodes have the same address")
        hosts, ports = [h for h, _ in addresses], [p for _, p in addresses]
    else:
        ports = ports or cluster_ports(home, n, host)
        hosts = [host] * n
    if len(ports) != n:
        raise ConfigError(f"{len(ports)} ports given for {n} nodes")
    return tuple(
        NodeSpec(NodeId(i), hosts[i], ports[i], idents[i].public, home / f"node{i}")
        for i in range(n)
    )


def _write(
    home: Path,
    cfg: ClusterConfig,
    admin: AdminKey,
    volume: VolumeKey | None,
    node_ids: list[Identity],
    client_ids: list[Identity],
    groups: int = 1,
) -> None:
    """Write the new cluster directory ``home`` of the validated ``cfg``: the keys, the
    first view, each node's data directory, ``cluster.toml``; with ``groups`` > 1 the
    first layout (``layout/groups.init_layout``)."""
    home.mkdir(parents=True, exist_ok=True)
    # The administrator key stays here, in the operator's directory: no bundle carries it.
    admin.save(cfg.admin_key_path)
    init_view(cfg, admin)
    if volume is not None:
        volume.save(cfg.volume_key_path)
    for spec, ident in zip(cfg.nodes, node_ids, strict=True):
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        ident.save(spec.key_path)
    for client, ident in zip(cfg.clients, client_ids, strict=True):
        ident.save(cfg.client_key_path(client.name))
    cfgmod.save(cfg, config_path(home))
    if groups > 1:
        from bftfs.layout.groups import init_layout

        init_layout(cfg, groups, cfg.n // groups)


def remove_cluster(home: Path) -> list[int]:
    """Stop the nodes of the cluster in ``home`` and delete its configuration, keys and
    data (``bftfs init --force``: new keys must not meet old databases); the nodes that
    were running.  Mounts are the caller's to unmount first."""
    from bftfs.layout import grow, pending

    cfg = load_cluster(home)
    stopped = stop_nodes(cfg)
    try:  # a replacement cut short: both its machines' directories go too
        cut = pending.read(cfg)
    except ConfigError:
        cut = None
    if cut is not None:
        before = pending.with_machine(cfg, cut.node, cut.old)
        stopped += [cut.node] if stop_node(before, cut.node) else []
    try:  # a `group add` cut short: its new nodes' directories go too
        growing = grow.read_intent(cfg)
    except ConfigError:
        growing = None
    dirs = [s.data_dir for s in cfg.nodes] + (
        [] if cut is None else [cut.old.data_dir, cut.new.data_dir]
    )
    dirs += [] if growing is None else [n.data_dir for n in growing.nodes]
    for data_dir in dirs:
        shutil.rmtree(data_dir, ignore_errors=True)
    for name in ("clients", "mounts", "volume", "admin", "bundles"):
        shutil.rmtree(cfg.home / name, ignore_errors=True)
    cfg.view_path.unlink(missing_ok=True)
    (cfg.home / "layout.signed").unlink(missing_ok=True)  # layout/groups.LAYOUT_FILE
    pending.pending_path(cfg).unlink(missing_ok=True)
    grow.growing_path(cfg).unlink(missing_ok=True)
    config_path(cfg.home).unlink(missing_ok=True)
    return stopped


def load_cluster(home: Path) -> ClusterConfig:
    path = config_path(home)
    if not path.exists():
        raise ClusterError(f"no cluster in {home} (run `bftfs init --dir {home}` first)")
    return cfgmod.load(path)


def pid_path(spec: NodeSpec) -> Path:
    return spec.data_dir / "node.pid"


def log_path(spec: NodeSpec) -> Path:
    """The node's log, rotated by the node itself (``bftfs node --log``)."""
    return spec.data_dir / "node.log"


def stderr_path(spec: NodeSpec) -> Path:
    """What the node's process writes to stderr itself: a failure before its logging is
    set up, and the stacks ``faulthandler`` dumps on a crash (small, not rotated)."""
    return spec.data_dir / "node.stderr"


def logs_tail(spec: NodeSpec) -> str:
    """The last lines of node ``spec``'s log and of its stderr, for error messages."""
    return log_tail(log_path(spec)) + log_tail(stderr_path(spec))


def metrics_port_path(spec: NodeSpec) -> Path:
    """Where a node serving metrics writes their ``host:port`` (``bftfs/node/main.py``)."""
    return spec.data_dir / "metrics.port"


def metrics_address(spec: NodeSpec) -> str | None:
    """``host:port`` of the metrics node ``spec`` serves, if it runs and serves some (the
    file its process wrote at start; a stale one of an earlier run is not believed)."""
    path = metrics_port_path(spec)
    pid = running_pid(spec)
    try:
        if pid is None or path.stat().st_mtime < pid_path(spec).stat().st_mtime:
            return None
        return path.read_text().strip() or None
    except OSError:
        return None


def running_pid(spec: NodeSpec) -> int | None:
    """The pid of node ``spec``'s process if it is running, from its pid file."""
    return proc.read_pid(pid_path(spec), marks=(b"bftfs", b"node"))


def start_node(cfg: ClusterConfig, node_id: int, extra_args: list[str] | None = None) -> int:
    """Start node ``node_id`` as a background process (unless running); its pid."""
    spec = cfg.node(node_id)
    pid = running_pid(spec)
    if pid is not None:
        return pid
    cmd = [
        sys.executable,
        # -P: the working directory stays off sys.path, so a directory named bftfs there
        # (the clone, seen from its parent) cannot stand in for the installed package.
        "-P",
        "-m",
        "bftfs",
        "node",
        "--config",
        str(config_path(cfg.home)),
        "--id",
        str(node_id),
        "--log",
        str(log_path(spec)),
        *(extra_args or []),
    ]
    child = proc.spawn(cmd, log=stderr_path(spec))
    proc.write_pid(pid_path(spec), child.pid)
    return child.pid


def stop_node(
    cfg: ClusterConfig, node_id: int, *, kill: bool = False, timeout: float = 10.0
) -> bool:
    """Stop node ``node_id`` (SIGTERM, SIGKILL after ``timeout``); whether it was running."""
    spec = cfg.node(node_id)
    pid = running_pid(spec)
    if pid is None:
        proc.reap_exited()
        pid_path(spec).unlink(missing_ok=True)
        return False
    proc.stop(pid, kill=kill, timeout=timeout)
    pid_path(spec).unlink(missing_ok=True)
    return True


#: Whether a pid runs (``bftfs.proc``; here for the callers that knew it from here).
process_alive = proc.process_alive


def start_nodes(cfg: ClusterConfig, extra_args: dict[int, list[str]] | None = None) -> None:
    for spec in cfg.nodes:
        start_node(cfg, spec.id, (extra_args or {}).get(spec.id))


def stop_nodes(cfg: ClusterConfig, *, kill: bool = False) -> list[int]:
    """Stop every node; the ids that were running."""
    return [s.id for s in cfg.nodes if stop_node(cfg, s.id, kill=kill)]


@dataclass(frozen=True)
class NodeStatus:
    id: int
    address: str
    pid: int | None
    up: bool
    stats: dict[str, Any] | None
    error: str | None


async def query_status(
    cfg: ClusterConfig, *, timeout: float = 1.0, client: str | None = None
) -> list[NodeStatus]:
    """Ask every node for its statistics (concurrently); a node that does not answer is down.
    ``client``: the identity to ask as (default ``client0``, else the first configured).

    ``timeout`` is each node's floor, not its whole budget (issue 65, docs/wan.md): once a
    node's TCP connection is set up its round trip is measured, and its handshake and
    call get ``max(timeout, k * RTO)`` (``net/rtt.py``), so a node 300 ms away (three
    round trips: TCP, handshake, the call) shows up; one refusing connections is down at
    once, one whose host never answers after ``timeout``, as before."""
    if client is None:
        names = [c.name for c in cfg.clients]
        client = "client0" if "client0" in names or not names else names[0]
    results: dict[int, NodeStatus] = {}

    async def one(ep: Any, ids: list[int], spec: NodeSpec) -> None:
        gid = ids[int(spec.id)]
        pid = running_pid(spec)
        try:
            stats = await ep.call(spec.id, "stats", None, timeout=timeout)
            results[gid] = NodeStatus(gid, spec.address, pid, True, stats, None)
        except (TransportError, RemoteError) as e:
            results[gid] = NodeStatus(gid, spec.address, pid, False, None, str(e))

    async def part_of(part: ClusterConfig, ids: list[int]) -> None:
        async with (
            open_client(
                part, client, timeout=timeout, resend_after=timeout, connect_timeout=timeout
            ) as ep,
            trio.open_nursery() as nursery,
        ):
            for spec in part.nodes:
                nursery.start_soon(one, ep, ids, spec)

    from bftfs.layout.groups import parts

    async with trio.open_nursery() as nursery:
        for part, global_ids in parts(cfg):  # (one per group of a layout, each at once)
            nursery.start_soon(part_of, part, global_ids)
    spare = "in no group of the layout"
    return [
        results.get(s.id) or NodeStatus(s.id, s.address, running_pid(s), False, None, spare)
        for s in cfg.nodes
    ]


#: Seconds a readiness poll gives each node to answer at first, and at most: doubled after
#: every poll that left some silent, so a node that is up but slow (a loaded machine, its
#: recovery after a power cut under way) is not taken for one that is not (issue 60 item 8:
#: a fixed second, handshake included, left `bftfs up` waiting out its whole timeout).
POLL_TIMEOUT = 1.0
POLL_TIMEOUT_MAX = 8.0


def wait_ready(
    cfg: ClusterConfig,
    *,
    timeout: float = 20.0,
    nodes: list[int] | None = None,
    progress: Callable[[str], None] | None = None,
    enough: int | None = None,
) -> list[NodeStatus]:
    """Block until the given nodes (default all) answer, or raise ClusterError naming the
    rest; after a second, ``progress`` is told once which nodes it is waiting for.

    ``timeout`` is how long to wait without progress: each node answering for the first
    time gives the others ``timeout`` more (after a power cut of every node on a loaded
    machine their processes start one after another, each taking seconds).  ``enough``: at
    the deadline, this many answering will do if every other one's process still runs (it
    is still starting; ``bftfs up`` asks for a quorum, which serves the file system, and
    says which nodes are still starting).  A node whose process exited fails at once.
    """
    want = set(cfg.node_ids if nodes is None else nodes)
    started = time.monotonic()
    deadline = started + timeout
    told = progress is None
    poll = POLL_TIMEOUT
    answered: set[int] = set()
    while True:
        statuses = trio.run(functools.partial(query_status, cfg, timeout=poll))
        missing = [s for s in statuses if s.id in want and not s.up]
        if not missing:
            return statuses
        now_up = {s.id for s in statuses if s.id in want and s.up}
        if now_up - answered:  # progress: the rest get the whole timeout again
            answered |= now_up
            deadline = max(deadline, time.monotonic() + timeout)
        for s in missing:  # a node that died at start-up will never answer: fail fast
            if running_pid(cfg.node(s.id)) is None:
                tail = logs_tail(cfg.node(s.id))
                raise ClusterError(f"node {s.id} exited during start-up{tail}")
        if time.monotonic() > deadline:
            if enough is not None and len(want) - len(missing) >= enough:
                if progress is not None:
                    ids = ", ".join(str(s.id) for s in missing)
                    progress(
                        f"node(s) {ids} still starting after {timeout:g} s (their processes "
                        "run; `bftfs status` shows when they answer)"
                    )
                return statuses
            details = []
            for s in missing:
                tail = logs_tail(cfg.node(s.id))
                details.append(f"node {s.id} ({s.address}): {s.error}{tail}")
            raise ClusterError("nodes did not come up:\n  " + "\n  ".join(details))
        if not told and time.monotonic() - started > 1.0 and progress is not None:
            told = True
            ids = ", ".join(str(s.id) for s in missing)
            progress(f"waiting for node(s) {ids} to answer (up to {timeout:g} s)...")
        poll = min(2 * poll, POLL_TIMEOUT_MAX)
        time.sleep(0.1)


def log_tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` of a log, indented, for error messages (empty if unreadable)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("\n      " + "\n      ".join(text)) if text else ""
