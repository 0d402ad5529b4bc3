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
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from bftfs.listeners import messages as m
from bftfs.listeners.stamps import CAP, INITIAL_VALUE, Stamp, Stored

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


def profile(config: ClusterConfig, node: int, name: str = "liar") -> ByzantineProfile:
    """A node process's profile running behaviour ``name`` on every ``lr.*`` request and
    echo (seeded by the node's id)."""
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

    return ListenersProfile({kind: wrap(kind) for kind in m.KINDS})
