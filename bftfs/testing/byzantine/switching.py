"""A Byzantine node that picks a new lie for every request (issue 18, the campaign).

The behaviours of :mod:`bftfs.testing.byzantine.qu` and :mod:`bftfs.testing.byzantine.rw`
each lie the same way for a whole run; a real adversary need not.  :class:`Switching` sits
in a node's :class:`~bftfs.testing.faults.FaultInjector` for every Q/U and PASIS request
kind and, for each request, draws one behaviour from the whole catalogue that applies to
that kind - honest, every Q/U rewriter (forged candidates under stale and under *valid*
authenticators, endless barriers, equivocation, withheld replies, bad MACs, made-up answers
and object states, refusals), every PASIS lie (corrupt fragments, huge times, acknowledged
but dropped writes, "stale" to one-round writes, older or bogus histories, garbage), every
lie about the version history (:mod:`bftfs.testing.byzantine.history`: versions dated 1970
or ten years ahead, forged digests, empty chains, altered states; issue 31), a delay or a
withheld reply - so one node can equivocate between requests, between clients and between
the two protocols of one file-system operation.

The draw is a function of the schedule's seed, the node, and the request itself (its kind,
sender and packed payload), not of the order requests arrive in: the same request meets the
same lie whenever the interleaving differs (a resend meets it again, as it would at a node
that lies consistently).  The node can also be armed to crash inside a request
(:meth:`Switching.arm_crash`): it stops at once, in the middle of the operation that sent
the request, and the campaign restarts it later.

Catch-up, verification, listing and heartbeat kinds stay honest: they are between nodes and
are covered by the catch-up suites (``t5_rw_catchup.py``, ``t1_qu_catchup.py``).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import is_node
from bftfs.net.frames import pack
from bftfs.qu.messages import KIND_REQUEST
from bftfs.testing.byzantine import history, qu, rw
from bftfs.testing.byzantine.profiles import objects_of

if TYPE_CHECKING:
    from bftfs.node.service import Handler, RequestContext
    from bftfs.testing.byzantine import NodeWrapper
    from bftfs.testing.cluster import Cluster

#: Share of requests a Byzantine node answers honestly (the rest: one lie each).
HONEST_SHARE = 0.3
#: Longest delay a "delay" draw holds a request for (seconds of trio's clock).
MAX_DELAY = 0.2


async def _delay(rng: random.Random, ctx: RequestContext, payload: Any, honest: Handler) -> Any:
    await trio.sleep(rng.uniform(0.0, MAX_DELAY))
    return await honest(ctx, payload)


async def _withhold(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
    await trio.sleep_forever()  # no reply; the task ends with the node


async def _withhold_recall(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
    """Take the request as a correct node would, but push none of the recalls it names
    (leases, ``node/recalls.py``)."""
    recalls = ctx.node.recalls
    recalls.enabled = False
    try:
        return await honest(ctx, payload)
    finally:
        recalls.enabled = True


def _forge_recall(n: int) -> NodeWrapper:
    async def forge(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
        """Tell the sender its leases on the request's objects are recalled (nobody asked),
        then answer honestly."""
        if not is_node(ctx.sender):
            ctx.node.server.push(ctx.sender, {"recall": objects_of(payload, n)})
        return await honest(ctx, payload)

    return forge


class Switching:
    """Per-request Byzantine behaviour (and crash) for node ``index`` of an in-process
    cluster; :meth:`install` puts it in the node's fault injector.

    Args:
        cluster: the in-process cluster.
        index: the node.
        seed: the schedule's seed (mixed into every draw).
        byzantine: False for an honest node that may only crash (a crash-prone node of the
            ``t - b`` that may fail benignly).
    """

    def __init__(self, cluster: Cluster, index: int, seed: int, *, byzantine: bool) -> None:
        self.cluster = cluster
        self.index = index
        self.seed = seed
        self.byzantine = byzantine
        #: Requests per behaviour drawn (``"kind:behaviour"``), for the report.
        self.drawn: Counter[str] = Counter()
        self.crashes = 0
        self._crash_after: int | None = None
        self._choices: dict[str, list[tuple[str, NodeWrapper | None]]] = {}
        if byzantine:
            self._build()

    def _build(self) -> None:
        config = self.cluster.config
        rng = random.Random(self.seed * 1009 + self.index)  # garbage's choices
        for kind in qu.KINDS:
            self._choices[kind] = [
                (name, qu.on_node(fn, kind)) for name, fn in sorted(qu.BEHAVIOURS.items())
            ]
        for name, factory in sorted(rw.BEHAVIOURS.items()):
            for kind, wrapper in factory(config, self.index, rng).items():
                self._choices.setdefault(kind, []).append((name, wrapper))
        for name, wrappers in sorted(history.BEHAVIOURS.items()):
            for kind, wrapper in wrappers.items():
                self._choices.setdefault(kind, []).append((name, wrapper))
        self._choices[KIND_REQUEST] += [  # the leases' recalls (issue 33)
            ("withhold-recall", _withhold_recall),
            ("forge-recall", _forge_recall(config.n)),
        ]

    def kinds(self) -> list[str]:
        """The request kinds this node intercepts."""
        return sorted(set(qu.KINDS) | set(rw.ALL_KINDS) | set(history.KINDS))

    def install(self) -> None:
        for kind in self.kinds():
            self.cluster.faults[self.index].byzantine(kind, self._wrapper(kind))

    def arm_crash(self, after: int) -> None:
        """Crash the node inside the ``after``-th request it handles from now on."""
        self._crash_after = after

    def disarm(self) -> None:
        """Cancel a crash armed and not yet happened."""
        self._crash_after = None

    def _draw(self, kind: str, ctx: RequestContext, payload: Any) -> random.Random:
        h = hashlib.blake2b(digest_size=16)
        h.update(b"%d/%d/%s/%d/" % (self.seed, self.index, kind.encode(), int(ctx.sender)))
        h.update(pack(payload))
        return random.Random(h.digest())

    def _wrapper(self, kind: str) -> NodeWrapper:
        async def wrapper(ctx: RequestContext, payload: Any, honest: Handler) -> Any:
            if self._crash_after is not None:
                self._crash_after -= 1
                if self._crash_after <= 0:
                    self._crash_after = None
                    self.crashes += 1
                    self.drawn[f"{kind}:crash"] += 1
                    self.cluster.crash(self.index)
                    await trio.sleep_forever()  # cancelled with the node
            if not self.byzantine:
                return await honest(ctx, payload)
            rng = self._draw(kind, ctx, payload)
            if rng.random() < HONEST_SHARE:
                self.drawn[f"{kind}:honest"] += 1
                return await honest(ctx, payload)
            options: list[tuple[str, NodeWrapper | None]] = [
                *self._choices.get(kind, []),
                ("delay", None),
                ("withhold", _withhold),
            ]
            name, lie = options[rng.randrange(len(options))]
            self.drawn[f"{kind}:{name}"] += 1
            if lie is None:
                return await _delay(rng, ctx, payload, honest)
            return await lie(ctx, payload, honest)

        return wrapper


def install(cluster: Cluster, index: int, seed: int, *, byzantine: bool) -> Switching:
    """A :class:`Switching` on node ``index``, installed."""
    s = Switching(cluster, index, seed, byzantine=byzantine)
    s.install()
    return s
