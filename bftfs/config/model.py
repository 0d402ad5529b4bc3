"""The cluster configuration's values: frozen dataclasses, defaults and their rules.

One ``ClusterConfig`` describes a cluster completely (see ``bftfs/config/__init__.py``);
``validate`` names the field and the rule a bad value breaks.  Reading and writing the file
is ``config/tomlfile.py``.

The threshold rules are those of DESIGN.md (seed 004 eq. 3.1-3.3, L1097-1135; Q/U L2288-2303):

=====  ====================================  ==============================================
layer  rule                                  why
=====  ====================================  ==============================================
both   ``0 <= b <= t``                         Byzantine faults are a subset of all faults
Q/U    ``n >= 3t + 2b + 1``                    q + t <= n, 2q - b - n >= r, q + r - n > b
PASIS  ``t + b < qc``                          a complete write shares a benign node with any
                                             later read
PASIS  ``qc <= n - t - b``                     a writer can wait for only n - t replies, b of
                                             them possibly Byzantine (eq. 3.1)
PASIS  ``1 <= m <= qc - t``                    a repairable candidate has m benign fragments
=====  ====================================  ==============================================

Paths in the file (``data_dir``) are relative to the file's directory, so a cluster directory
can be moved as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bftfs.ids import CLIENT_ID_BASE, ClientId, NodeId, PrincipalId, client_id
from bftfs.policy import (
    LimitsPolicy,
    RetentionPolicy,
    VerificationPolicy,
)
from bftfs.thresholds import (
    MAX_OBJECTS,
    NARROW_OBJECTS,
    fab_rule,
    fault_rule,
    pasis_largest_m,
    pasis_largest_qc,
    pasis_rule,
    qu_min_servers,
    qu_quorums,
)

#: Defaults of DESIGN.md: t = b = 1 gives n = 6, q = 5, r = 3, QC = 4, m = 3.
DEFAULT_T = 1
DEFAULT_B = 1
DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_MAP_SIZE = 16 * 1024**3
MIN_MAP_SIZE = 1024**2
MAX_BLOCK_SIZE = 4 * 1024**2
#: Block sizes are whole pages: the kernel reads and writes a FUSE file in pages, so a block
#: size that is not a multiple of the page straddles blocks on every page it serves (and
#: ``block_size = 3`` would make a block per 3 bytes).
BLOCK_ALIGN = 4096
#: Block size a file takes when its first flush of blocks carries at least
#: ``BIG_BLOCK_THRESHOLD`` (bftfs/fs/files/openfile.py) bytes written sequentially from offset 0
#: (docs/fs.md, "Per-file block size"): per-block costs are a sixteenth of 64 KiB
#: blocks' for big sequential files while small files keep ``block_size``.  0 or
#: ``block_size`` turns it off.  1 MiB since issue 34 (256 KiB before): the mount
#: daemon's CPU per GiB read fell by about two fifths, per GiB written by a tenth
#: (docs/performance.md).
DEFAULT_BIG_BLOCK_SIZE = 1024 * 1024
#: Regular files up to this many bytes keep their content in their Q/U attribute object
#: (replicated on every node, one round per flush) instead of PASIS blocks; 0 turns it off.
#: Files are inline up to ``min(inline_limit, block_size)``.  32 KiB since issue 33 (8 KiB
#: before): a flush of a file past the limit costs a lock, a PASIS round and a size update
#: where an inline one costs a share of one update (held files go back eight per
#: ``fs.writemany``); PostMark 1000/4000's rounds fell by three fifths.  See docs/fs.md.
DEFAULT_INLINE_LIMIT = 32 * 1024
#: ``[cluster] engine``: what orders the file system's metadata methods (``bftfs.fsobjects``)
#: - ``qu`` (Q/U, seed 004) or ``fab`` (FaB Paxos, seed 003; docs/fab.md).
ENGINES = ("qu", "fab")
#: ``bftfs init --engine listeners``: ``3b + 1`` nodes, metadata on Parameterized FaB, file
#: blocks in Byzantine Listeners registers (docs/listeners.md); saved as engine ``fab``.
LISTENERS = "listeners"
#: The servers refuse larger inline content (bftfs.fsobjects.limits.INLINE_MAX).
MAX_INLINE_LIMIT = 64 * 1024
#: Bytes of a volume key's id (``[cluster] volume_key_id``; ``bftfs.crypto.KEY_ID_SIZE``).
VOLUME_KEY_ID_SIZE = 16


class ConfigError(Exception):
    """The configuration breaks a rule; the message names the rule and the numbers."""


@dataclass(frozen=True)
class NodeSpec:
    """One storage node as the cluster sees it."""

    id: NodeId
    host: str
    port: int
    public_key: bytes = field(repr=False)
    #: Where the node keeps its LMDB environment, logs and private key.
    data_dir: Path
    #: ``[[nodes]] domain``: the trust domain (operator, site, failure domain) the node is
    #: in; a layout's group never holds two nodes of one (docs/layout.md).  Empty: a
    #: domain of its own (:attr:`trust_domain`), what every configuration before it meant.
    domain: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def trust_domain(self) -> str:
        """The node's trust domain: ``domain``, or ``node<id>`` (its own) when none."""
        return self.domain or f"node{self.id}"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "private" / "key"


@dataclass(frozen=True)
class ClientSpec:
    """One client (a mount, an admin tool) allowed into the cluster.

    ``id`` is the client's identity for the life of the cluster: versions name their
    author by it, quotas are charged to it and ``revert --client`` undoes by it.  It is
    written in ``cluster.toml`` (``id = N`` for ``CLIENT_ID_BASE + N``), not implied by the
    entry's position, so removing another client's entry never hands this one's to it.
    """

    id: ClientId
    name: str
    public_key: bytes = field(repr=False)


@dataclass(frozen=True)
class RetiredClient:
    """A client removed from the cluster (``bftfs client remove``): its id is never given
    to another, and history still names its versions' author."""

    id: ClientId
    name: str


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics of the nodes and mounts started with this
    configuration (docs/guide.md, "Health and metrics").  Off unless a port is given.

    One table serves a local cluster (six nodes on one host) and nodes on several machines
    alike: node ``I`` listens on ``node_port + I``, so six local nodes never collide and a
    scrape configuration can name every node; ``node_port = 0`` lets each node take a free
    port (written to ``node<I>/metrics.port`` and shown by ``bftfs status --json``).
    ``mount_port`` applies to mounts started by ``bftfs mount`` and ``bftfs up`` (``0``: a
    free port, which ``bftfs status`` shows); mount(8) takes ``-o metrics_port=`` instead.
    """

    #: The address nodes and mounts listen on (``0.0.0.0``: every interface).
    address: str = "127.0.0.1"
    #: Node ``I`` serves on ``node_port + I`` (0: any free port); None: nodes serve none.
    node_port: int | None = None
    #: Mounts serve on this port (0: any free port); None: mounts serve none.
    mount_port: int | None = None

    def node_port_of(self, node_id: int) -> int | None:
        """The port node ``node_id`` serves metrics on (0: a free one), or None."""
        if self.node_port is None:
            return None
        return 0 if self.node_port == 0 else self.node_port + node_id

    def validate(self, n: int) -> MetricsConfig:
        """Check the ports (``n``: the number of nodes); return self.

        Raises:
            ConfigError: a port out of range, or an empty address.
        """
        if not self.address:
            raise ConfigError("[metrics] address must not be empty")
        for key in ("node_port", "mount_port"):
            port = getattr(self, key)
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"[metrics] {key} must be in 0..65535, got {port}")
        if self.node_port and self.node_port + n - 1 > 65535:
            raise ConfigError(
                f"[metrics] node_port + node id must be at most 65535: node {n - 1} would "
                f"serve on {self.node_port + n - 1}"
            )
        return self


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster. Construct through :func:`load`, :func:`build` or :meth:`for_test`."""

    t: int
    b: int
    #: PASIS: number of benign nodes that must host a write for it to be complete.
    qc: int
    #: PASIS: fragments needed to decode a block (zfec's k).
    m: int
    block_size: int
    #: LMDB map size per node (the most a node's database may grow to).
    map_size: int
    #: Whether a node syncs every commit before acknowledging (group committed). Turning it
    #: off risks losing acknowledged writes on a power failure (not on a process crash).
    durable: bool
    nodes: tuple[NodeSpec, ...]
    clients: tuple[ClientSpec, ...]
    #: The directory private keys of clients live under (``clients/<name>/private/key``).
    home: Path = Path(".")
    #: Small files inline in their attribute object up to this size (see the constant).
    inline_limit: int = DEFAULT_INLINE_LIMIT
    #: ``[cluster] big_block_size``: the block size of files written sequentially (see the
    #: constant).  None: the default when it is a multiple of ``block_size`` above it,
    #: else off; use :attr:`big_blocks`, which resolves it.
    big_block_size: int | None = None
    #: Background verification of PASIS blocks on the nodes (``[verification]``, policy.py).
    verification: VerificationPolicy = field(default_factory=VerificationPolicy)
    #: What garbage collection keeps (``[retention]``, policy.py).
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: What one client may ask of a node (``[limits]``, policy.py; node/limits.py).
    limits: LimitsPolicy = field(default_factory=LimitsPolicy)
    #: Clients removed from the configuration (``[[retired_clients]]``): ids never reused.
    retired_clients: tuple[RetiredClient, ...] = ()
    #: ``[cluster] next_client``: the number the next client added gets (its id is
    #: ``client_id(next_client)``); None: one above every id used (old files have none).
    next_client: int | None = None
    #: ``[cluster] volume_key_id``: the id of the volume key the mounts encrypt contents
    #: under (docs/confidentiality.md); None: an unencrypted cluster (every cluster made
    #: before issue 38, or by ``bftfs init --no-seal``).
    volume_key_id: bytes | None = field(default=None, repr=False)
    #: ``[cluster] previous_volume_key_ids``: the volume keys before the last rotations
    #: (``bftfs rotate-key``), newest first: what is written under them stays readable to
    #: clients holding them; nothing new is sealed under them.
    previous_volume_key_ids: tuple[bytes, ...] = field(default=(), repr=False)
    #: ``[metrics]``: where nodes and mounts serve Prometheus metrics (off by default).
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: ``[cluster] admin_key``: the administrator's public (Ed25519) key, which signs every
    #: view (docs/membership.md); None: a cluster made before views, whose membership is
    #: this file's until ``bftfs view adopt`` gives it one.
    admin_key: bytes | None = field(default=None, repr=False)
    #: ``[cluster] engine``: the metadata engine, one of :data:`ENGINES` (docs/fab.md).
    engine: str = "qu"
    #: ``[cluster] max_objects``: most objects a client names in one Q/U operation (a
    #: readdir's attributes, a batch of deferred creates or removals).  A new cluster takes
    #: what its nodes accept; a file without the key (a cluster made before nodes accepted
    #: more than :data:`NARROW_OBJECTS`) keeps that, so an older node is never asked more.
    max_objects: int = MAX_OBJECTS

    # Sizes of the two protocols -----------------------------------------------------------
    @property
    def big_blocks(self) -> int:
        """The block size sequentially written files take (0: the feature is off, every
        file has ``block_size``)."""
        big = self.big_block_size
        if big is None:
            big = DEFAULT_BIG_BLOCK_SIZE
            if big <= self.block_size or big % self.block_size:
                return 0
        return 0 if big == self.block_size else big

    @property
    def blocks(self) -> str:
        """Where file blocks live: ``"pasis"`` (erasure-coded, ``n >= 4b + 1`` with ``t =
        b``), or ``"registers"`` (Byzantine Listeners registers, whole replicas on ``3b +
        1``: a FaB cluster whose sizes PASIS's rules refuse; docs/listeners.md "Blocks on
        four nodes")."""
        if self.engine == "fab" and pasis_rule(self.n, self.t, self.b, self.qc, self.m):
            return "registers"
        return "pasis"

    @property
    def max_file_block_size(self) -> int:
        """The largest block any file may have: what nodes and clients must accept."""
        return max(self.block_size, self.big_blocks)

    @property
    def n(self) -> int:
        """Number of nodes (Q/U's n and PASIS's N: both run on the same nodes)."""
        return len(self.nodes)

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        return tuple(s.id for s in self.nodes)

    @property
    def q(self) -> int:
        """Q/U quorum size: ``2t + 2b + 1`` at the minimal ``n`` (see :func:`qu_quorums`)."""
        return qu_quorums(self.n, self.t, self.b)[0]

    @property
    def r(self) -> int:
        """Q/U repairable-set size: ``t + b + 1`` at the minimal ``n``."""
        return qu_quorums(self.n, self.t, self.b)[1]

    @property
    def complete_threshold(self) -> int:
        """PASIS: a candidate seen on at least ``qc + b`` nodes is complete (eq. 3.2)."""
        return self.qc + self.b

    @property
    def incomplete_threshold(self) -> int:
        """PASIS: a candidate seen on fewer than ``qc - t`` nodes is incomplete (eq. 3.3)."""
        return self.qc - self.t

    @property
    def write_quorum(self) -> int:
        """Replies a PASIS operation waits for: ``n - t``."""
        return self.n - self.t

    def node(self, nid: int) -> NodeSpec:
        for s in self.nodes:
            if s.id == nid:
                return s
        raise ConfigError(f"no node with id {nid} in the configuration")

    def client(self, name: str) -> ClientSpec:
        for c in self.clients:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.clients) or "none"
        raise ConfigError(f"no client named {name!r} in the configuration (have: {names})")

    @property
    def next_client_number(self) -> int:
        """The number of the next client to add: never one a client had before."""
        every: list[ClientSpec | RetiredClient] = [*self.clients, *self.retired_clients]
        used = [c.id - CLIENT_ID_BASE for c in every]
        floor = max(used, default=-1) + 1
        return floor if self.next_client is None else max(self.next_client, floor)

    def client_names(self) -> dict[int, str]:
        """Every client id the cluster ever had and its name; a removed one's says so."""
        names = {int(c.id): f"{c.name} (removed)" for c in self.retired_clients}
        names.update({int(c.id): c.name for c in self.clients})
        return names

    def client_key_path(self, name: str) -> Path:
        return self.home / "clients" / name / "private" / "key"

    @property
    def sealed(self) -> bool:
        """Whether mounts encrypt file contents (the cluster has a volume key)."""
        return self.volume_key_id is not None

    @property
    def volume_key_path(self) -> Path:
        """Where clients keep the volume key (in client bundles; never on a node)."""
        return self.home / "volume" / "private" / "key"

    @property
    def admin_key_path(self) -> Path:
        """Where the operator keeps the administrator's private key (never in a bundle)."""
        return self.home / "admin" / "private" / "key"

    @property
    def view_path(self) -> Path:
        """The newest signed view the operator issued, beside ``cluster.toml`` (bundles
        carry it: it is public, and believed for its signature)."""
        return self.home / "view.signed"

    def previous_volume_key_path(self, key_id: bytes) -> Path:
        """Where clients keep a volume key from before a rotation."""
        return self.home / "volume" / "private" / "previous" / key_id.hex()

    def public_keys(self) -> dict[PrincipalId, bytes]:
        """Every principal's public key, nodes and clients."""
        keys: dict[PrincipalId, bytes] = {s.id: s.public_key for s in self.nodes}
        keys.update({c.id: c.public_key for c in self.clients})
        return keys

    def node_public_keys(self) -> dict[PrincipalId, bytes]:
        return {s.id: s.public_key for s in self.nodes}

    def validate(self) -> ClusterConfig:
        """Check every rule; return self so calls chain.

        Raises:
            ConfigError: naming the first rule broken and the numbers that break it.
        """
        self._validate_thresholds()
        self._validate_sizes()
        self._validate_keys()
        self.metrics.validate(self.n)
        if self.map_size < MIN_MAP_SIZE:
            raise ConfigError(
                f"map_size must be at least {MIN_MAP_SIZE} bytes, got {self.map_size}"
            )
        self._validate_nodes()
        self._validate_clients()
        return self

    def _validate_thresholds(self) -> None:
        """The engine, and the thresholds' rules for both protocols and the erasure code."""
        t, b, n, qc, m = self.t, self.b, self.n, self.qc, self.m
        if self.engine not in ENGINES:
            raise ConfigError(
                f"[cluster] engine must be one of {', '.join(map(repr, ENGINES))}, "
                f"got {self.engine!r}"
            )
        if self.engine == "fab" and (why := fab_rule(n, b)) is not None:
            raise ConfigError(why)
        if (why := fault_rule(t, b)) is not None:
            raise ConfigError(why)
        need = qu_min_servers(t, b)
        if self.engine == "fab" and n < need:
            return  # FaB metadata on 3b + 1..: no Q/U objects; blocks on PASIS if its rules
            # hold, else on registers (``blocks``, docs/listeners.md)
        if n < need:
            raise ConfigError(
                f"Q/U rule n >= 3t + 2b + 1 broken: n={n} < 3*{t} + 2*{b} + 1 = {need}; "
                "no quorum size gives both availability with t servers down and "
                "consistency with b lying (see `bftfs quorums`)"
            )
        if qu_quorums(n, t, b) == (0, 0):
            raise ConfigError(f"no Q/U quorum sizes meet the rules for n={n}, t={t}, b={b}")
        if (why := pasis_rule(n, t, b, qc, m)) is not None:
            raise ConfigError(why)
        if m > 256 or n > 256:
            raise ConfigError(f"zfec supports at most 256 fragments (n={n}, m={m})")

    def _validate_sizes(self) -> None:
        """Block sizes, the inline limit and the objects per operation."""
        if not BLOCK_ALIGN <= self.block_size <= MAX_BLOCK_SIZE or self.block_size % BLOCK_ALIGN:
            raise ConfigError(
                f"block_size must be a multiple of {BLOCK_ALIGN} bytes in "
                f"{BLOCK_ALIGN}..{MAX_BLOCK_SIZE} (4 KiB..4 MiB), got {self.block_size}"
            )
        big = self.big_block_size
        if big not in (None, 0, self.block_size) and (
            not self.block_size < big <= MAX_BLOCK_SIZE or big % self.block_size
        ):
            raise ConfigError(
                f"big_block_size must be 0, block_size or a multiple of block_size "
                f"({self.block_size}) up to {MAX_BLOCK_SIZE} bytes, got {big}"
            )
        if not 0 <= self.inline_limit <= MAX_INLINE_LIMIT:
            raise ConfigError(
                f"inline_limit must be in 0..{MAX_INLINE_LIMIT} bytes, got {self.inline_limit}"
            )
        if not NARROW_OBJECTS <= self.max_objects <= MAX_OBJECTS:
            raise ConfigError(
                f"max_objects must be in {NARROW_OBJECTS}..{MAX_OBJECTS}, got {self.max_objects}"
            )

    def _validate_keys(self) -> None:
        """The volume key ids and the administrator key."""
        for key_id in (self.volume_key_id, *self.previous_volume_key_ids):
            if key_id is not None and len(key_id) != VOLUME_KEY_ID_SIZE:
                raise ConfigError(
                    f"volume_key_id must be {VOLUME_KEY_ID_SIZE * 2} hex digits, "
                    f"got {len(key_id) * 2}"
                )
        if self.admin_key is not None and len(self.admin_key) != 32:
            raise ConfigError("admin_key must be 64 hex digits")
        if self.previous_volume_key_ids and self.volume_key_id is None:
            raise ConfigError("previous_volume_key_ids without a volume_key_id")

    def _validate_nodes(self) -> None:
        """Node ids in order, addresses distinct, ports and public keys well formed."""
        n = self.n
        ids = [s.id for s in self.nodes]
        if ids != list(range(n)):
            raise ConfigError(f"node ids must be 0..{n - 1} in order, got {ids}")
        # Port 0 means "not bound yet" (the test harness binds first, then fills ports in).
        addrs = [s.address for s in self.nodes if s.port != 0]
        dup = {a for a in addrs if addrs.count(a) > 1}
        if dup:
            raise ConfigError(f"two nodes share the address {sorted(dup)[0]}")
        for s in self.nodes:
            if not 0 <= s.port <= 65535:
                raise ConfigError(f"node {s.id}: port {s.port} is not in 0..65535")
            if len(s.public_key) != 32:
                raise ConfigError(f"node {s.id}: public_key must be 32 bytes (64 hex digits)")
            if (why := domain_rule(s.domain)) is not None:
                raise ConfigError(f"node {s.id}: domain {s.domain!r} {why}")

    def _validate_clients(self) -> None:
        """Client names unique and well formed, ids (:meth:`_validate_client_ids`), keys."""
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names):
            raise ConfigError(f"client names must be unique, got {names}")
        self._validate_client_ids()
        for c in self.clients:
            if len(c.public_key) != 32:
                raise ConfigError(f"client {c.name!r}: public_key must be 32 bytes")
            if c.name in ("", ".", "..") or not all(ch.isalnum() or ch in "-_." for ch in c.name):
                raise ConfigError(
                    f"client name {c.name!r} may only use letters, digits, - _ . "
                    "(and is not . or ..)"
                )

    def _validate_client_ids(self) -> None:
        """Every client id distinct, none a retired client's, all below ``next_client``."""
        seen: dict[int, str] = {}
        every: list[ClientSpec | RetiredClient] = [*self.clients, *self.retired_clients]
        for c in every:
            if c.id < CLIENT_ID_BASE:
                raise ConfigError(f"client {c.name!r}: id {c.id} is below {CLIENT_ID_BASE}")
            if c.id in seen:
                raise ConfigError(
                    f"clients {seen[c.id]!r} and {c.name!r} have the same id "
                    f"{c.id - CLIENT_ID_BASE}: an id names one client for the life of the "
                    "cluster (a removed client's id is never reused)"
                )
            seen[c.id] = c.name
        if self.next_client is not None and seen:
            top = max(seen) - CLIENT_ID_BASE
            if top >= self.next_client:
                raise ConfigError(
                    f"client id {top} is not below next_client = {self.next_client}: ids are "
                    "handed out by `bftfs client add`, each once"
                )

    @classmethod
    def for_test(
        cls,
        *,
        t: int = 1,
        b: int = 1,
        n: int | None = None,
        qc: int | None = None,
        m: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        clients: int = 2,
    ) -> ClusterConfig:
        """A valid configuration with dummy addresses and keys, for pure (no network) tests."""
        n_, qc_, m_ = default_sizes(t, b, n, qc, m)
        nodes = tuple(
            NodeSpec(NodeId(i), "127.0.0.1", 0, bytes([i + 1]) * 32, Path(f"/nonexistent/{i}"))
            for i in range(n_)
        )
        cls_ = tuple(
            ClientSpec(client_id(k), f"client{k}", bytes([200 + k % 50]) * 32)
            for k in range(clients)
        )
        return cls(t, b, qc_, m_, block_size, MIN_MAP_SIZE, False, nodes, cls_).validate()


#: A trust domain's label: what ``domain_rule`` allows (it is shown in status and logs).
DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
MAX_DOMAIN = 64


def domain_rule(domain: str) -> str | None:
    """The rule a node's trust-domain label breaks, or None (empty: a domain of its own)."""
    if len(domain) > MAX_DOMAIN:
        return f"must be at most {MAX_DOMAIN} characters, got {len(domain)}"
    if not set(domain) <= DOMAIN_CHARS:
        return "may only use letters, digits, - _ . :"
    return None


def engine_and_nodes(engine: str, n: int | None, t: int, b: int) -> tuple[str, int | None]:
    """The engine and node count a cluster is made with: ``engine`` and ``n``, but for
    :data:`LISTENERS`, FaB on ``3b + 1`` nodes by default (blocks then go to registers).

    Raises:
        ConfigError: :data:`LISTENERS` with as many nodes as PASIS needs (its blocks would
            be erasure-coded there, not held in registers).
    """
    if engine != LISTENERS:
        return engine, n
    n = 3 * b + 1 if n is None else n
    if n >= 2 * t + 2 * b + 1:
        raise ConfigError(f"--engine listeners is for fewer nodes than PASIS needs, not {n}")
    return "fab", n


def default_sizes(
    t: int, b: int, n: int | None = None, qc: int | None = None, m: int | None = None
) -> tuple[int, int, int]:
    """The smallest valid ``(n, qc, m)`` for ``t`` and ``b``, keeping any given value.

    ``n = 3t + 2b + 1`` (Q/U's minimum, which also satisfies PASIS); ``qc = n - t - b``
    (the largest allowed, so reads are most often complete on the first round);
    ``m = qc - t`` (the largest allowed, the least storage blow-up).  For t = b = 1 this is
    DESIGN.md's n=6, QC=4, m=3.  Each comes from the quorum properties in
    ``bftfs/thresholds.py`` (docs/quorums.md).
    """
    n = qu_min_servers(t, b) if n is None else n
    qc = pasis_largest_qc(n, t, b) if qc is None else qc
    m = pasis_largest_m(n, t, qc) if m is None else m
    return n, qc, m


def with_ports(cfg: ClusterConfig, ports: Mapping[int, int]) -> ClusterConfig:
    """A copy of ``cfg`` with node ports replaced (used when the OS picked them)."""
    nodes = tuple(replace(s, port=ports.get(s.id, s.port)) for s in cfg.nodes)
    return replace(cfg, nodes=nodes)
