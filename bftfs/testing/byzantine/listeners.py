"""Byzantine Listeners nodes (issue 68): the lies a register node may tell, written once.

A behaviour rewrites a node's honest answers in wire form
(:mod:`bftfs.listeners.messages`): :meth:`Behaviour.reply` gets the request and the honest
reply and returns the reply to send, or None to stay silent; :meth:`Behaviour.push` gets
each echo the honest node would push to a listening reader and returns the pushes to send
instead.  Plain and synchronous, so the tier-1 simulation (``tests/t1_listeners_sim.py``)
runs them between deliveries; :func:`profile` puts one on a node process
(``bftfs node --byzantine listeners-liar``): the node's handlers of the ``lr.*`` kinds are
wrapped and its echoes pass through :meth:`ListenersProfile.listeners_push`
(``bftfs/listeners/nodeside.py`` asks its fault hooks for that method).

==============  ==========================================================================
behaviour       lie
==============  ==========================================================================
``silent``      answers nothing, echoes nothing
``stale``       takes writes but reports an older value it saw (the initial one at first)
                to every read and timestamp query, echoes nothing
``forge``       reports timestamps above everything (some past the cap), with made-up
                data, to reads, timestamp queries and in echoes, and pushes extra
                made-up echoes
``equivocate``  reports and echoes the true timestamps with data altered differently for
                each reader and each message
``liar``        each answer one of ``stale``, ``forge`` and ``equivocate``, at random
==============  ==========================================================================

The same profile lies on the Byzantine Listeners kinds (``bl.*``, seed 003 section 3.5) with
:class:`BLiar`, each answer at random one of:

- ``bl.ts``: the true answer; a timestamp above everything or the initial one, each under
  a MAC vector of random bytes;
- ``bl.propose``: the true TS OK; one with a MAC vector of random bytes (a bad ``K`` entry);
- ``bl.store``: the true handling; or it withholds: stores nothing, forwards nothing
  and still acknowledges to the writer.  Besides, at one STORE in three it fabricates a
  write of the register, a made-up value above the true one, with random ``K`` vectors and
  its own true ``J`` entry, and sends it to every other node (Lemma 12 [003 L1640-1662]: a
  node alone cannot make a correct node store it);
- ``bl.read``: the true value, a made-up one (a timestamp above everything) or the initial
  one, and after it up to two made-up echoes pushed for the read;
- ``bl.past`` (a block's history, on a cluster whose blocks are registers): the true
  version, a made-up one or the initial one.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from bftfs.crypto import MAC_SIZE
from bftfs.ids import NodeId, PrincipalId
from bftfs.listeners import blockregs
from bftfs.listeners import bmessages as bm
from bftfs.listeners import messages as m
from bftfs.listeners.auth import Macs, Vector
from bftfs.listeners.bserver import Forward, Write
from bftfs.listeners.stamps import CAP, INITIAL, INITIAL_VALUE, Stamp, Stored

if TYPE_CHECKING:
    from bftfs.config import ClusterConfig
    from bftfs.node.service import Handler, RequestContext
    from bftfs.testing.byzantine.profiles import ByzantineProfile


class Behaviour:
    """An honest node: every answer as it is (the base of the lies)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def reply(self, sender: int, kind: str, payload: Any, honest: Any) -> Any | None:
        return honest

    def push(self, reader: int, body: Any) -> list[Any]:
        return [body]


class Silent(Behaviour):
    def reply(self, sender: int, kind: str, payload: Any, honest: Any) -> Any | None:
        return None

    def push(self, reader: int, body: Any) -> list[Any]:
        return []


class Stale(Behaviour):
    """Remembers every value written to it and reports an older one than it holds."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.seen: dict[bytes, list[Stored]] = {}

    def _old(self, key: bytes) -> Stored:
        """Mostly the value before the newest (what a correct node a write has not reached
        yet holds: the two make ``f + 1`` matching stale answers), else any older one."""
        older = [INITIAL_VALUE, *self.seen.get(key, [])[:-1]]
        return older[-1] if self.rng.random() < 0.7 else self.rng.choice(older)

    def reply(self, sender: int, kind: str, payload: Any, honest: Any) -> Any | None:
        if kind == m.KIND_STORE:
            key, value = m.parse_store_request(payload)
            self.seen.setdefault(key, []).append(value)
            return honest  # acknowledges
        if kind == m.KIND_TS:
            return m.stamp_reply(self._old(m.parse_ts_request(payload)).stamp)
        if kind == m.KIND_READ:
            key, rid = m.parse_read_request(payload)
            return m.value_message(rid, self._old(key))
        return honest

    def push(self, reader: int, body: Any) -> list[Any]:
        return []


class Forge(Behaviour):
    """Timestamps above everything: near the counter cap or just past any true one."""

    def _stamp(self, true: Stamp) -> Stamp:
        counter = self.rng.choice([CAP - 1, true.counter + self.rng.randint(1, 1000)])
        return Stamp(counter, self.rng.randrange(1 << 20))

    def _value(self, true: Stored) -> Stored:
        return Stored(self._stamp(true.stamp), self.rng.randbytes(self.rng.randint(0, 40)))

    def reply(self, sender: int, kind: str, payload: Any, honest: Any) -> Any | None:
        if kind == m.KIND_TS:
            return m.stamp_reply(self._stamp(m.parse_stamp_reply(honest)))
        if kind == m.KIND_READ:
            rid, value = m.parse_value(honest)
            return m.value_message(rid, self._value(value))
        return honest

    def push(self, reader: int, body: Any) -> list[Any]:
        rid, value = m.parse_value(body[m.PUSH])
        return [m.echo_push(rid, self._value(value)) for _ in range(self.rng.randint(1, 3))]


class Equivocate(Behaviour):
    """True timestamps, data altered for each reader and message."""

    def _altered(self, reader: int, value: Stored) -> Stored:
        return Stored(value.stamp, value.data + b"|%d|%d" % (reader, self.rng.randrange(1 << 30)))

    def reply(self, sender: int, kind: str, payload: Any, honest: Any) -> Any | None:
        if kind == m.KIND_READ:
            rid, value = m.parse_value(honest)
            return m.value_message(rid, self._altered(sender, value))
        return honest

    def push(self, reader: int, body: Any) -> list[Any]:
        rid, value = m.parse_value(body[m.PUSH])
        return [m.echo_push(rid, self._altered(reader, value)) for _ in range(2)]


class Liar(Behaviour):
    """Each answer and echo one of the lies, at random."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.lies: list[Behaviour] = [Stale(rng), Forge(rng), Equivocate(rng)]

    def reply(self, sender: int, kind: str, payload: Any, honest: Any) -> Any | None:
        if kind == m.KIND_STORE:  # every liar hears of the writes (stale remembers them)
            for lie in self.lies:
                lie.reply(sender, kind, payload, honest)
            return honest
        return self.rng.choice(self.lies).reply(sender, kind, payload, honest)

    def push(self, reader: int, body: Any) -> list[Any]:
        return self.rng.choice(self.lies).push(reader, body)


BEHAVIOURS: dict[str, type[Behaviour]] = {
    "silent": Silent,
    "stale": Stale,
    "forge": Forge,
    "equivocate": Equivocate,
    "liar": Liar,
}


class BLiar:
    """The lies on ``bl.*`` (module docstring), plain: :meth:`reply` rewrites an honest
    answer (None: the honest handler is not run, and this is the answer),
    :meth:`fabricate` makes up a write, :meth:`echoes` made-up echoes for a read."""

    def __init__(self, rng: random.Random, macs: Macs) -> None:
        self.rng = rng
        self.macs = macs
        self.n = len(macs.nodes)
        self.stats: dict[str, int] = {"withheld": 0, "fabricated": 0, "lies": 0}

    def garbage(self) -> Vector:
        """A MAC vector of random bytes: no node's check passes it."""
        return tuple(self.rng.randbytes(MAC_SIZE) for _ in range(self.n))

    def made_up(self, true: Stamp) -> Stored:
        counter = self.rng.choice([CAP - 1, true.counter + self.rng.randint(1, 1000)])
        stamp = Stamp(counter, self.rng.choice([true.writer, self.rng.randrange(1 << 20)]))
        return Stored(stamp, b"made-up %d" % self.rng.randrange(1 << 30))

    def withhold(self, payload: Any) -> Any | None:
        """For ``bl.store``: None to handle it honestly, else the answer given instead
        (an ACK to its writer, nothing stored or forwarded)."""
        if self.rng.random() < 0.5:
            return None
        self.stats["withheld"] += 1
        fwd = bm.parse_store_request(payload, self.macs.nodes)
        return {"a": fwd.write.value.stamp.wire()}

    def reply(self, kind: str, honest: Any) -> Any:
        """The answer to a ``bl.ts``, ``bl.propose`` or ``bl.read`` with answer ``honest``."""
        lie = self.rng.randrange(3)
        if lie == 0:
            return honest
        self.stats["lies"] += 1
        if kind == bm.KIND_TS:
            true, _vec = bm.parse_ts_reply(honest, self.n)
            stamp = self.made_up(true).stamp if lie == 1 else INITIAL
            return bm.ts_reply(stamp, self.garbage())
        if kind == bm.KIND_PROPOSE:
            stamp, _vec = bm.parse_ok_reply(honest, self.n)
            return bm.ok_reply(stamp, self.garbage())
        if kind == bm.KIND_READ:
            rid, value = m.parse_value(honest)
            return m.value_message(rid, self.made_up(value.stamp) if lie == 1 else INITIAL_VALUE)
        if kind == blockregs.KIND_PAST:  # a block's history (listeners/bhistory.py)
            value = blockregs.parse_past_reply(honest)
            return blockregs.past_reply(self.made_up(value.stamp) if lie == 1 else INITIAL_VALUE)
        return honest

    def echoes(self, honest: Any) -> list[Any]:
        """Made-up echoes (``{"blv": VALUE}``) for the read answered ``honest``."""
        rid, value = m.parse_value(honest)
        return [
            {bm.PUSH_VALUE: m.value_message(rid, self.made_up(value.stamp))}
            for _ in range(self.rng.randrange(3))
        ]

    def fabricate(self, payload: Any) -> Forward | None:
        """At one STORE in three, a made-up write of its register for every other node:
        random ``K`` vectors of a quorum and this node's own true ``J`` entry."""
        if self.rng.random() >= 1 / 3:
            return None
        self.stats["fabricated"] += 1
        w = bm.parse_store_request(payload, self.macs.nodes).write
        fake = Write.make(w.key, self.made_up(w.value.stamp), {q: self.garbage() for q in w.k_map})
        j = {self.macs.me: self.macs.vector(*fake.j_fields())}
        return Forward(fake, j, len(fake.k))


def _bl_overrides(config: ClusterConfig, node: int) -> dict[str, Any]:
    """The ``bl.*`` handlers of a :class:`BLiar` (its keys made on the first request)."""
    rng = random.Random(node ^ 0xB1)
    peers = tuple(int(s.id) for s in config.nodes)
    liars: list[BLiar] = []

    def liar(ctx: RequestContext) -> BLiar:
        """The node's liar; its counts are in ``bftfs status`` (``progress.blisteners-liar``)."""
        if not liars:
            liars.append(BLiar(rng, Macs.from_ring(ctx.node.keyring, peers)))
            ctx.node.progress["blisteners-liar"] = liars[0].stats
        return liars[0]

    async def send(ctx: RequestContext, peer: int, payload: Any) -> None:
        import contextlib

        from bftfs.net.errors import RemoteError, TransportError

        with contextlib.suppress(TransportError, RemoteError):
            await ctx.node.endpoint.call(NodeId(peer), bm.KIND_STORE, payload, timeout=10.0)

    async def store(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
        lr = liar(ctx)
        try:
            fake = lr.fabricate(payload)
            instead = lr.withhold(payload)
        except ValueError:
            return await honest(ctx, payload)  # the honest handler refuses it
        if fake is not None:
            for peer in peers:
                if peer != node:
                    ctx.node.endpoint.spawn(send, ctx, peer, bm.store_request(fake))
        return instead if instead is not None else await honest(ctx, payload)

    def answer(kind: str) -> Any:
        async def wrapper(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
            lr = liar(ctx)
            reply = await honest(ctx, payload)
            said = lr.reply(kind, reply)
            if kind == bm.KIND_READ:
                for body in lr.echoes(reply):
                    ctx.node.server.push(PrincipalId(int(ctx.sender)), body)
            return said

        return wrapper

    kinds = (bm.KIND_TS, bm.KIND_PROPOSE, bm.KIND_READ, blockregs.KIND_PAST)
    out: dict[str, Any] = {k: answer(k) for k in kinds}
    out[bm.KIND_STORE] = store
    return out


def profile(config: ClusterConfig, node: int, name: str = "liar") -> ByzantineProfile:
    """A node process's profile running behaviour ``name`` on every ``lr.*`` request and
    echo (seeded by the node's id), and :class:`BLiar` on the ``bl.*`` kinds."""
    from bftfs.testing.byzantine.profiles import ByzantineProfile

    behaviour = BEHAVIOURS[name](random.Random(node))

    def wrap(kind: str) -> Any:
        async def wrapper(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
            reply = behaviour.reply(int(ctx.sender), kind, payload, await honest(ctx, payload))
            if reply is None:
                import trio

                await trio.sleep_forever()  # no reply; the task ends with the node
            return reply

        return wrapper

    class ListenersProfile(ByzantineProfile):
        def listeners_push(self, reader: int, body: Any) -> list[Any]:
            return behaviour.push(reader, body)

    return ListenersProfile(
        {**{kind: wrap(kind) for kind in m.KINDS}, **_bl_overrides(config, node)}
    )
