"""Views: the numbered, administrator-signed membership of a cluster (seed 000; dissertation
chapter 5, "Views", [003 L3645-3727]; ``docs/membership.md``).

A view names every node (id, address, public key), the thresholds, and every client (id,
name, public key); clients revoked before it are listed by id and name so history still
names them.  Only the administrator signs views (``crypto.AdminKey``), so a view is believed
because of its signature, whoever delivers it: a node, a client, or a file.  A party takes
a view only if its number is above the one it holds (:func:`judge`).

Signed view format (version :data:`FORMAT`), msgpack throughout::

    signed    = [MAGIC, format, body: bin, signature: bin(64)]
    body      = [number, t, b, qc, m, nodes, clients, retired]
    nodes     = [[id, host, port, public_key: bin(32)], ...]   ids 0..n-1 in order (format 1)
              | [[id, host, port, public_key: bin(32),         (format 2: each node's
                  view_key: bin(32)], ...]                      key for this view only)
    clients   = [[id, name, public_key: bin(32)], ...]         principal ids >= CLIENT_ID_BASE
    retired   = [[id, name, public_key: bin(32) | b""], ...]  revoked clients (ids never
                                                               reused; the key they had, so
                                                               nodes can tell them why)
    signature = Ed25519(admin, DOMAINS[format] || body)

Format 2 adds per-view node keys (``membership/viewkeys.py``); a view without them is
written in format 1, byte for byte as before, and both are read.  Format 3
(:data:`FORMAT`) is a view of a **generation** above 1 or one naming the generation it
moves from (docs/membership.md, "Generations")::

    body      = [number, t, b, qc, m, nodes, clients, retired, generation, previous]
    previous  = None | [number, t, b, qc, m, nodes]            node rows as format 2

Every view of formats 1 and 2 is generation 1 without a previous one, and is written in
its own format as before.  A view of format 3 has per-view keys in both generations.

Every parse problem is one :class:`ViewError`: what a peer sends never raises anything else.
This module is pure: no I/O, no clock, no trio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import msgpack

from bftfs.config.model import ConfigError
from bftfs.crypto import AdminKey
from bftfs.ids import CLIENT_ID_BASE, ClientId, NodeId
from bftfs.membership import signed
from bftfs.membership.signed import Verdict
from bftfs.thresholds import fault_rule, pasis_rule, qu_min_servers, qu_quorums

MAGIC = "bftfs-view"
FORMAT = 3
#: Signed bytes start with this, so an admin signature over a view is never one over
#: anything else the key might sign later (nor a view of one format one of the other).
DOMAIN = b"bftfs-view-v1\0"
DOMAINS = {1: DOMAIN, 2: b"bftfs-view-v2\0", 3: b"bftfs-view-v3\0"}
#: Which generation of a view a node belongs to (:meth:`View.generation_of`).
CURRENT = "current"
PREVIOUS = "previous"
#: Largest signed view accepted (a peer's blob is parsed before its signature is checked).
MAX_VIEW_BYTES = 1 << 20


class ViewError(ConfigError):
    """A view is malformed, not signed by the administrator, or breaks a rule; the message
    says which.  A configuration error: the CLI reports it as one (exit 3)."""


#: The signed envelope of a view (``membership/signed.py``, shared with layouts).
KIND = signed.Kind(MAGIC, DOMAINS, MAX_VIEW_BYTES, "view", ViewError)


@dataclass(frozen=True)
class ViewNode:
    """A node as a view names it."""

    id: NodeId
    host: str
    port: int
    public_key: bytes
    #: The node's key for this view only (format 2; empty in a view without per-view
    #: keys): it proves the node holds this view, until it forgets it.
    view_key: bytes = b""


@dataclass(frozen=True)
class ViewClient:
    """A client as a view names it."""

    id: ClientId
    name: str
    public_key: bytes


@dataclass(frozen=True)
class Retired:
    """A revoked client: its id is never reused and history keeps its name.  ``public_key``
    is the key it had (empty for a client revoked before views): a node that restarted can
    still answer that key's handshake with the reason."""

    id: ClientId
    name: str
    public_key: bytes = b""


@dataclass(frozen=True)
class Generation:
    """One generation's nodes and thresholds as a view names them: what a view moving
    from it keeps of it (``View.previous``), so its nodes and clients can still reach and
    check one another while everything moves (docs/membership.md, "Generations")."""

    number: int
    t: int
    b: int
    qc: int
    m: int
    nodes: tuple[ViewNode, ...]

    def rows(self) -> tuple[tuple[int, str, int, bytes], ...]:
        """The node rows without their view keys (which change with every view)."""
        return tuple((int(n.id), n.host, n.port, n.public_key) for n in self.nodes)

    def same_as(self, other: Generation) -> bool:
        """Whether ``other`` is this generation (view keys aside)."""
        return (self.number, self.t, self.b, self.qc, self.m, self.rows()) == (
            other.number,
            other.t,
            other.b,
            other.qc,
            other.m,
            other.rows(),
        )


@dataclass(frozen=True)
class View:
    """One numbered membership.  ``number`` only grows: 1 is the cluster ``bftfs init``
    made (or an older cluster's configuration, docs/membership.md "Migration").
    ``generation`` counts the changes of the nodes' number or thresholds; ``previous`` is
    the generation being moved from while a move runs (None otherwise)."""

    number: int
    t: int
    b: int
    qc: int
    m: int
    nodes: tuple[ViewNode, ...]
    clients: tuple[ViewClient, ...]
    retired: tuple[Retired, ...] = ()
    generation: int = 1
    previous: Generation | None = None

    @property
    def current(self) -> Generation:
        """The view's own generation (its nodes and thresholds)."""
        return Generation(self.generation, self.t, self.b, self.qc, self.m, self.nodes)

    def generation_of(self, node_id: int, public_key: bytes) -> str | None:
        """Which generation of this view node ``node_id`` with long-term key
        ``public_key`` belongs to: :data:`CURRENT`, :data:`PREVIOUS` or None (neither: a
        retired node, or a replaced machine).  Ids repeat across generations: the key
        tells them apart."""
        for which, gen in ((CURRENT, self.current), (PREVIOUS, self.previous)):
            if gen is None:
                continue
            for n in gen.nodes:
                if int(n.id) == int(node_id) and n.public_key == public_key:
                    return which
        return None

    def as_generation(self, which: str = CURRENT) -> View:
        """This view as a party of generation ``which`` sees it: that generation's nodes
        and thresholds, the view's number and clients, no previous one.  Key rings,
        proofs and the comparisons between views (:func:`ended_principals`,
        :func:`moved_nodes`) run on it, one generation at a time.

        Raises:
            ViewError: ``which`` is :data:`PREVIOUS` and the view has none.
        """
        if which == CURRENT:
            gen = self.current
        elif which == PREVIOUS and self.previous is not None:
            gen = self.previous
        else:
            raise ViewError(f"view {self.number} has no {which} generation")
        return replace(
            self,
            t=gen.t,
            b=gen.b,
            qc=gen.qc,
            m=gen.m,
            nodes=gen.nodes,
            generation=gen.number,
            previous=None,
        )

    def previous_public_keys(self) -> dict[int, bytes]:
        """Every principal's public key as the previous generation's nodes and their
        clients see it (its nodes and the view's clients; empty without a previous)."""
        if self.previous is None:
            return {}
        return self.as_generation(PREVIOUS).public_keys()

    def public_keys(self) -> dict[int, bytes]:
        """Every principal's public key: who may open a session in this view."""
        keys = {int(n.id): n.public_key for n in self.nodes}
        keys.update({int(c.id): c.public_key for c in self.clients})
        return keys

    @property
    def has_view_keys(self) -> bool:
        """Whether nodes must prove they hold this view (every node has a view key)."""
        return bool(self.nodes) and bool(self.nodes[0].view_key)

    def client(self, name: str) -> ViewClient | None:
        for c in self.clients:
            if c.name == name:
                return c
        return None

    def describe(self) -> str:
        """One line for logs and messages."""
        p = self.previous
        moving = (
            ""
            if p is None
            else f" (moving from generation {p.number}: {len(p.nodes)} nodes, t={p.t} "
            f"b={p.b} qc={p.qc} m={p.m})"
        )
        return (
            f"view {self.number}: generation {self.generation}, {len(self.nodes)} nodes, "
            f"t={self.t} b={self.b} qc={self.qc} m={self.m}{moving}, "
            f"clients {', '.join(c.name for c in self.clients)}"
        )


def format_of(view: View) -> int:
    """The format ``view`` is written in: 3 for a generation above 1 or a move, else 2
    with per-view keys, 1 without."""
    if view.generation != 1 or view.previous is not None:
        return 3
    return 2 if view.has_view_keys else 1


def _node_rows(nodes: tuple[ViewNode, ...], keyed: bool) -> list[list[Any]]:
    return [
        [int(n.id), n.host, n.port, n.public_key, *([n.view_key] if keyed else [])] for n in nodes
    ]


def encode_body(view: View) -> bytes:
    """The canonical bytes of ``view`` (what the administrator signs)."""
    fmt = format_of(view)
    keyed = fmt == 3 or view.has_view_keys
    body: list[Any] = [
        view.number,
        view.t,
        view.b,
        view.qc,
        view.m,
        _node_rows(view.nodes, keyed),
        [[int(c.id), c.name, c.public_key] for c in view.clients],
        [[int(r.id), r.name, r.public_key] for r in view.retired],
    ]
    if fmt == 3:
        p = view.previous
        body += [
            view.generation,
            None if p is None else [p.number, p.t, p.b, p.qc, p.m, _node_rows(p.nodes, True)],
        ]
    return msgpack.packb(body, use_bin_type=True)


def sign(view: View, key: AdminKey) -> bytes:
    """``view`` signed by the administrator: the bytes nodes and clients exchange."""
    check(view)
    return signed.seal(KIND, format_of(view), encode_body(view), key)


def decode(blob: Any, admin_public: bytes) -> View:
    """The view in ``blob`` if the administrator whose key is ``admin_public`` signed it.

    Raises:
        ViewError: not bytes, too big, malformed, another format, a bad signature, or a
            view breaking a rule (:func:`check`).
    """
    fmt, body = signed.unseal(KIND, blob, admin_public)
    view = check(_view_of(signed.unpack(KIND, body), fmt))
    if format_of(view) != fmt:
        raise ViewError(
            f"a view of format {fmt} must have per-view keys only in format 2 and a "
            "generation above 1 or a previous one only in format 3"
        )
    return view


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ViewError(f"view: {what} must be an integer")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ViewError(f"view: {what} must be a string")
    return v


def _key(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != 32:
        raise ViewError(f"view: {what} must be a 32-byte public key")
    return v


def _old_key(v: Any) -> bytes:
    return b"" if v == b"" else _key(v, "retired key")


def _rows(v: Any, width: int, what: str) -> list[list[Any]]:
    if not isinstance(v, list) or not all(isinstance(r, list) and len(r) == width for r in v):
        raise ViewError(f"view: {what} must be a list of {width}-item lists")
    return v


def _sizes(items: list[Any]) -> tuple[int, int, int, int, int]:
    number, t, b, qc, m = (
        _int(x, w) for x, w in zip(items, ("number", "t", "b", "qc", "m"), strict=True)
    )
    return number, t, b, qc, m


def _nodes_of(rows: Any, keyed: bool) -> tuple[ViewNode, ...]:
    return tuple(
        ViewNode(
            NodeId(_int(row[0], "node id")),
            _str(row[1], "host"),
            _int(row[2], "port"),
            _key(row[3], "node key"),
            _key(row[4], "node view key") if keyed else b"",
        )
        for row in _rows(rows, 5 if keyed else 4, "nodes")
    )


def _previous_of(p: Any) -> Generation | None:
    if p is None:
        return None
    if not isinstance(p, list) or len(p) != 6:
        raise ViewError("view: previous must be None or a 6-item list")
    return Generation(*_sizes(p[:5]), _nodes_of(p[5], True))


def _view_of(body: Any, fmt: int) -> View:
    width = 10 if fmt == 3 else 8
    if not isinstance(body, list) or len(body) != width:
        raise ViewError(f"view body of format {fmt} must be a {width}-item list")
    number, t, b, qc, m = _sizes(body[:5])
    nodes = _nodes_of(body[5], fmt >= 2)
    clients = tuple(
        ViewClient(ClientId(_int(i, "client id")), _str(nm, "name"), _key(k, "client key"))
        for i, nm, k in _rows(body[6], 3, "clients")
    )
    retired = tuple(
        Retired(ClientId(_int(i, "retired id")), _str(nm, "retired name"), _old_key(k))
        for i, nm, k in _rows(body[7], 3, "retired")
    )
    if fmt != 3:
        return View(number, t, b, qc, m, nodes, clients, retired)
    generation = _int(body[8], "generation")
    return View(number, t, b, qc, m, nodes, clients, retired, generation, _previous_of(body[9]))


def generation_rule(n: int, t: int, b: int, qc: int, m: int) -> str | None:
    """The first rule of ``bftfs/thresholds.py`` (and the configuration's, ``config.model``)
    a generation of ``n`` nodes with these thresholds breaks, or None."""
    if (why := fault_rule(t, b)) is not None:
        return why
    need = qu_min_servers(t, b)
    if n < need:
        return (
            f"Q/U rule n >= 3t + 2b + 1 broken: n={n} < 3*{t} + 2*{b} + 1 = {need} (no quorum "
            "size gives both availability with t servers down and consistency with b lying)"
        )
    if qu_quorums(n, t, b) == (0, 0):
        return f"no Q/U quorum sizes meet the rules for n={n}, t={t}, b={b}"
    if (why := pasis_rule(n, t, b, qc, m)) is not None:
        return why
    if m > 256 or n > 256:
        return f"zfec supports at most 256 fragments (n={n}, m={m})"
    return None


def _check_nodes(nodes: tuple[ViewNode, ...], what: str) -> None:
    if [int(n.id) for n in nodes] != list(range(len(nodes))) or not nodes:
        raise ViewError(f"view: {what}node ids must be 0..n-1 in order")
    for n in nodes:
        if not 0 <= n.port <= 65535 or not n.host:
            raise ViewError(f"view: {what}node {n.id} has a bad address {n.host}:{n.port}")


def check_generations(view: View) -> None:
    """The rules of a format-3 view but its keys (:func:`check` adds them): both
    generations' thresholds, the previous one numbered one below, no machine in both.

    Raises:
        ViewError: naming the rule (for thresholds, the rule of ``bftfs/thresholds.py``).
    """
    if view.generation < 1:
        raise ViewError(f"view: generation must be at least 1, got {view.generation}")
    p = view.previous
    if p is not None:
        _check_nodes(p.nodes, "previous generation's ")
    for gen in [view.current] if p is None else [view.current, p]:
        why = generation_rule(len(gen.nodes), gen.t, gen.b, gen.qc, gen.m)
        if why is not None:
            raise ViewError(f"view: generation {gen.number} ({len(gen.nodes)} nodes): {why}")
    if p is None:
        return
    if p.number != view.generation - 1:
        raise ViewError(
            f"view: the previous generation must be number {view.generation - 1}, got {p.number}"
        )
    here = {(n.host, n.port) for n in view.nodes if n.port}  # (0: not bound yet, tests)
    keys = {n.public_key for n in view.nodes}
    for n in p.nodes:
        if (n.host, n.port) in here:
            raise ViewError(
                f"view: {n.host}:{n.port} is a node's address in both generations (generation "
                f"{view.generation}'s nodes are new processes)"
            )
        if n.public_key in keys:
            raise ViewError(
                f"view: node {n.id} of generation {p.number} has a key of generation "
                f"{view.generation} (new generations' nodes have new keys)"
            )


def check(view: View) -> View:
    """``view`` if it obeys the rules every view must (the thresholds' own rules are the
    configuration's, checked where a view becomes one: ``membership.configview``; a view
    of format 3 has them checked here, for both generations).

    Raises:
        ViewError: naming the rule.
    """
    if view.number < 1:
        raise ViewError(f"view number must be at least 1, got {view.number}")
    _check_nodes(view.nodes, "")
    ids = [int(c.id) for c in view.clients] + [int(r.id) for r in view.retired]
    if any(i < CLIENT_ID_BASE for i in ids):
        raise ViewError("view: client ids start at CLIENT_ID_BASE")
    if len(set(ids)) != len(ids):
        raise ViewError("view: a client id appears twice (ids are never reused)")
    names = [c.name for c in view.clients]
    if len(set(names)) != len(names):
        raise ViewError("view: client names must be unique")
    keyed = [bool(n.view_key) for n in view.nodes]
    if any(keyed) and not all(keyed):
        raise ViewError("view: either every node has a view key or none has")
    if format_of(view) == 3:
        check_generations(view)
        for gen in [view.current] if view.previous is None else [view.current, view.previous]:
            if not all(n.view_key for n in gen.nodes):
                raise ViewError(f"view: generation {gen.number}'s nodes must all have view keys")
    return view


def judge(held: View, offered: View) -> Verdict:
    """How a party holding ``held`` treats ``offered`` (both validly signed)."""
    return signed.judge((held.number, encode_body(held)), (offered.number, encode_body(offered)))


def ended_principals(old: View, new: View) -> set[int]:
    """The principals of ``old`` whose sessions must end under ``new``: gone from it
    (revoked) or with another key (rotated: sessions made with the old key end)."""
    keep = new.public_keys()
    return {pid for pid, key in old.public_keys().items() if keep.get(pid) != key}


def rekeyed_nodes(old: View, new: View) -> list[int]:
    """The nodes ``new`` gives another key than ``old`` (replaced by a new machine: they
    start empty and catch up)."""
    keys = {int(n.id): n.public_key for n in old.nodes}
    return [int(n.id) for n in new.nodes if keys.get(int(n.id)) not in (None, n.public_key)]


def moved_nodes(old: View, new: View) -> list[int]:
    """The nodes of ``new`` with another address or key than in ``old`` (whoever talks to
    them connects anew, to the new address, under the new key).  View keys change with
    every view and move nobody."""
    before = {int(n.id): (n.host, n.port, n.public_key) for n in old.nodes}
    return [int(n.id) for n in new.nodes if before.get(int(n.id)) != (n.host, n.port, n.public_key)]


def unsupported_change(old: View, new: View, engine: str = "qu") -> str | None:
    """Why ``new`` cannot be taken up by a party holding ``old``, or None
    (docs/membership.md, "Generations").  Accepted:

    (a) the same generation and the same previous one (or none in either): clients, and
        nodes' addresses and keys (node replacement) change; the thresholds and number of
        nodes stay, and at most ``t`` nodes get a new key in one view (each starts empty);
    (b) the next generation, whose ``previous`` is exactly ``old``'s own generation (same
        node rows by id, address and key, same thresholds): a move starts;
    (c) the same generation without the previous one ``old`` named: the move is finished
        (how a node of the previous generation holding the move's view takes the
        finishing one, which retires it);
    (d) the next generation without a previous one while ``old`` names none: a party that
        missed the whole move (down meanwhile) takes its end.

    Refused: anything else, and every generation change on the FaB engine (``engine``
    ``"fab"``: not built for it yet).
    """
    if new.generation == old.generation:
        if new.previous is not None and (
            old.previous is None or not old.previous.same_as(new.previous)
        ):
            return (
                f"it names generation {new.previous.number} as the previous one, which view "
                f"{old.number} does not"
            )
        return _same_generation(old, new)
    if engine == "fab":
        return "it changes the generation, which the FaB engine cannot do yet (docs/fab.md)"
    if new.generation != old.generation + 1:
        return (
            f"it goes from generation {old.generation} to {new.generation} (one generation "
            "at a time)"
        )
    if new.previous is None:
        if old.previous is not None:
            return (
                f"it skips the move from generation {old.generation} (view {old.number} "
                f"still moves from generation {old.previous.number})"
            )
        return None
    if not new.previous.same_as(old.current):
        return (
            f"its previous generation is not generation {old.generation} as view "
            f"{old.number} has it (same nodes, addresses, keys and thresholds)"
        )
    return None


def _same_generation(old: View, new: View) -> str | None:
    """Case (a) and (c) of :func:`unsupported_change`: the current generation's nodes and
    thresholds stay, at most ``t`` nodes replaced."""
    if (old.t, old.b, old.qc, old.m) != (new.t, new.b, new.qc, new.m):
        return (
            f"it changes the thresholds (t, b, qc, m) within generation {old.generation}: "
            "only a new generation can (docs/membership.md, Generations)"
        )
    if len(old.nodes) != len(new.nodes):
        return (
            f"it adds or removes nodes within generation {old.generation}: only a new "
            "generation can (docs/membership.md, Generations)"
        )
    replaced = rekeyed_nodes(old, new)
    if len(replaced) > max(old.t, 1):
        return (
            f"it replaces {len(replaced)} nodes at once (nodes {replaced}); at most t = "
            f"{old.t} in one view, each catching up before the next"
        )
    return None
