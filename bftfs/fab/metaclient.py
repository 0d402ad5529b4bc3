"""The file system's metadata calls ordered by FaB Paxos: the interface of the Q/U client
(``bftfs.qu.client.QUClient``) that ``bftfs/fs`` calls - ``query``, ``update``,
``settle``, ``faults``, ``statistics`` - over the nodes of an ``engine = "fab"`` cluster
(docs/fab.md).

An operation is one authenticated request (:func:`bftfs.fab.client.request`) sent to every
node as the request kind ``fab`` and resent every ``resend`` seconds; each node pushes its
REPLY after executing the slot, and ``f + 1`` matching replies are the answer
(:class:`~bftfs.fab.client.ReplyCollector`).  Queries are ordered like updates (the seed's
read-only optimisation, L7517-7558, is not built).

One request of a mount is outstanding at a time: a node holds and proposes only a
stream's latest request, and executes its request ids in increasing order only (exactly
once per ``(client, stream)``, ``fab/sessions.py``), so concurrent calls of one mount wait
for each other here.  Each client object picks a random 63-bit stream, so two mounts of
one client identity (one bundle on two machines, a mount restarted while the old one's
requests are in flight) do not drop each other's calls.  Request ids start at the wall
clock in ns.  A request the nodes refuse ``expired`` (its stream was evicted from their
table after the request may have run) fails as an unknown outcome, as when nobody
answers, and the ids move past the bar the refusal names, so the mount's next calls run.

A refusal (``ok`` false) is :class:`~bftfs.qu.objects.MethodRefused` with the method's
code, as the Q/U client raises it, but ``quota`` is :class:`~bftfs.outcome.QuotaExceeded`
(EDQUOT), as the Q/U client raises it for more than ``b`` nodes' ``quota`` refusals: here
``f + 1`` matching replies include a correct node's.  No ``f + 1`` matching replies within
``timeout`` is :class:`FabUnavailable` (a :class:`~bftfs.outcome.ClusterUnavailable`);
under a mount's patience (``timeo``, :mod:`bftfs.outcome`) the wait is the patience's:
as long as a quorum of nodes is live, else ``timeo`` (:class:`_Waiting`).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from bftfs.fab import pastclient
from bftfs.fab.client import ReplyCollector, request
from bftfs.fab.messages import MalformedMessage, Reply, Request, decode, encode
from bftfs.fab.service import KIND, REPLY_TAG
from bftfs.fab.sessions import EXPIRED
from bftfs.ids import NodeId, PrincipalId
from bftfs.net.endpoint import Endpoint
from bftfs.net.errors import RemoteError, TransportError
from bftfs.outcome import ClusterUnavailable, Patience, QuotaExceeded, current_patience
from bftfs.qu.objects import MethodRefused

#: The method of :meth:`FabMetaClient.sync` (no object type has it).
SYNC = "fab.sync"


class FabUnavailable(ClusterUnavailable):
    """No ``f + 1`` nodes answered an operation alike in time."""


class _Waiting:
    """How long one call still waits for ``f + 1`` matching replies.

    Without a mount's patience: the client's ``timeout``.  Under one (``timeo``,
    :mod:`bftfs.outcome`): slow is not unavailable (issue 60), so while a quorum of nodes is
    live (the endpoint's ``quorum_live``: connected, answering within their own response
    times) the call waits, and it runs down the patience's seconds only while fewer are;
    a ``soft`` patience runs down regardless.  Not the transport's renewals, which the
    patience itself takes: nodes that are up answer every send at once, ordered or not.
    A leader killed under load (a view change, the restarted node's catch-up) took longer
    than ``timeo`` and answered EIO with five of six nodes up."""

    def __init__(self, timeout: float, patience: Patience | None, ep: Endpoint, now: float) -> None:
        self.patience = patience
        self.ep = ep
        self.seconds = timeout if patience is None else patience.seconds
        self.deadline = now + self.seconds

    def left(self, now: float) -> float:
        """Seconds still to wait at ``now`` (0 or less: give up)."""
        p = self.patience
        if p is not None and not p.soft and self.ep.quorum_live(now):
            self.deadline = max(self.deadline, now + self.seconds)
        return self.deadline - now


@dataclass(frozen=True)
class FabClientStatistics:
    operations: int
    sends: int  # rounds of sends to every node (the first and each resend)
    unavailable: int


class FabMetaClient:
    """A client's ordered calls of object methods (module docstring).

    Args:
        endpoint: the client's connections to every node; its pushes are taken here
            (a handler already set is called for the pushes that are not FaB replies).
        nodes: the node ids.
        f: Byzantine nodes tolerated (``b``).
        resend: seconds between sends of a request not yet answered.
        timeout: seconds an operation waits for ``f + 1`` matching replies.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        nodes: Sequence[int],
        f: int,
        *,
        resend: float = 0.5,
        timeout: float = 60.0,
    ) -> None:
        self.ep = endpoint
        self.nodes = list(nodes)
        self.f, self.resend, self.timeout = f, resend, timeout
        self.me = int(endpoint.pid)
        #: This client's principal id, by the Q/U client's name (a lock's test tells the
        #: caller's own locks by it, ``fs/locks.py``).
        self.client_id = self.me
        #: The clock request ids follow (a test sets one behind to send an id again).
        self.clock_ns: Callable[[], int] = time.time_ns
        self.rid = self.clock_ns()
        #: This mount's stream (``fab/sessions.py``): random, so that two mounts of one
        #: client identity keep their request ids apart.
        self.stream = secrets.randbits(63)
        #: The last slot a reply of this client's named (versions are read up to it).
        self.slot = 0
        #: Faults per ``(node, kind)``, as the Q/U client counts them (``malformed``:
        #: a push that is not a FaB reply).
        self.faults: Counter[tuple[int, str]] = Counter()
        self._collector: ReplyCollector | None = None
        self._done = trio.Event()
        self._one = trio.Lock()
        self._n = Counter[str]()
        #: What history reads cost: ``version requests`` and ``version pages``
        #: (:func:`bftfs.fab.pastclient.fetch`).
        self.history = Counter[str]()
        self._other = endpoint.on_push
        endpoint.on_push = self.on_push
        endpoint.stay_connected([NodeId(j) for j in self.nodes])

    def statistics(self) -> FabClientStatistics:
        return FabClientStatistics(self._n["operations"], self._n["sends"], self._n["unavailable"])

    def on_push(self, node: NodeId, body: Any) -> None:
        """The endpoint's push handler: count a node's REPLY.  Pushes that are not FaB
        replies, and replies on another stream, go to the handler the endpoint had before
        (a FaB client made earlier on the same endpoint gets its own replies)."""
        if not (isinstance(body, list) and len(body) == 2 and body[0] == REPLY_TAG):
            if self._other is not None:
                self._other(node, body)
            return
        try:
            reply = decode(body[1]) if isinstance(body[1], bytes) else None
        except MalformedMessage:
            reply = None
        if not isinstance(reply, Reply):
            self.faults[(int(node), "malformed")] += 1
            return
        if reply.stream != self.stream and self._other is not None:
            self._other(node, body)  # another FaB client on this endpoint (its own stream)
            return
        collector = self._collector
        if collector is not None and collector.add(int(node), reply) is not None:
            self._done.set()

    async def query(self, objects: int | Iterable[int], method: str, arg: Any = None) -> Any:
        """Run query ``method`` on ``objects``, ordered; its answer.

        Raises:
            MethodRefused: the method refused.
            FabUnavailable: no ``f + 1`` nodes answered alike in time.
        """
        return await self._call(objects, method, arg)

    async def update(
        self, objects: int | Iterable[int], method: str, arg: Any = None, *, seq: int | None = None
    ) -> Any:
        """Run update ``method`` on ``objects`` (atomically), ordered; its answer.  ``seq``
        is not taken (:meth:`next_seq`): the request ids are this client's own."""
        return await self._call(objects, method, arg)

    def next_seq(self) -> None:
        """No request id to run an update again under (Q/U's ``QUClient.next_seq``): an
        ordered update is never cut short by a generation's freeze
        (``fs/clients/switch.py``), and FaB clusters do not change generation."""
        return None

    async def settle(self, objects: int | Iterable[int]) -> None:
        """Nothing to do: an ordered operation is final once answered, and one that was
        not answered is either executed by every correct node or by none (the Q/U client
        repairs a partial update here)."""

    async def query_at(self, oid: int, method: str, arg: Any = None) -> NoReturn:
        """Q/U's version reads: FaB nodes answer :meth:`versions` instead (``fs/fabpast.py``)."""
        raise MethodRefused("unsupported", "FaB nodes serve versions, not Q/U's history reads")

    async def query_many_at(self, objects: Iterable[int], method: str, arg: Any = None) -> NoReturn:
        raise MethodRefused("unsupported", "FaB nodes serve versions, not Q/U's history reads")

    async def sync(self) -> int:
        """A slot executed now: an ordered request of no method (every node refuses it
        alike, ``unknown``), whose reply names its slot."""
        with contextlib.suppress(MethodRefused):
            await self._call([0], SYNC, None)
        return self.slot

    async def versions(self, oids: Iterable[int]) -> dict[int, list[Any]]:
        """The versions of ``oids`` up to the last slot this client saw executed
        (:func:`bftfs.fab.pastclient.fetch`; call :meth:`sync` first for "now")."""
        if self.slot == 0:
            await self.sync()
        return await pastclient.fetch(
            self.ep, self.nodes, self.f, list(oids), self.slot, resend=self.resend,
            timeout=self.timeout, counts=self.history,
        )  # fmt: skip

    async def _call(self, objects: int | Iterable[int], method: str, arg: Any) -> Any:
        oids = [objects] if isinstance(objects, int) else list(objects)
        async with self._one:
            # Request ids are the client's declared times: FaB versions' times
            # (``fab/versions.py``), increasing, and nodes refuse one ahead of their clock.
            self.rid = max(self.rid + 1, self.clock_ns())
            self._n["operations"] += 1
            key = self.ep.keyring.key
            value = request(
                self.me,
                lambda p: key(PrincipalId(p)),
                len(self.nodes),
                self.rid,
                method,
                oids,
                arg,
                self.stream,
            )
            data = encode(Request(value))
            collector = ReplyCollector(self.rid, self.f, self.stream)
            self._collector, self._done = collector, trio.Event()
            waiting = _Waiting(self.timeout, current_patience(), self.ep, trio.current_time())
            try:
                async with trio.open_nursery() as nursery:
                    # Sends are not waited for: a node that does not answer must not
                    # hold up the f + 1 that do.
                    while not self._done.is_set():
                        left = waiting.left(trio.current_time())
                        if left <= 0:
                            break
                        self._n["sends"] += 1
                        for j in self.nodes:
                            nursery.start_soon(self._send, j, data)
                        with trio.move_on_after(min(self.resend, left)):
                            await self._done.wait()
                    nursery.cancel_scope.cancel()
                result = self._collector.result
                self.slot = max(self.slot, self._collector.slot)
            finally:
                self._collector = None
        if result is None:
            self._n["unavailable"] += 1
            raise FabUnavailable(f"{method} on {oids}: no {self.f + 1} matching replies")
        ok, answer = result
        if ok:
            return answer
        if isinstance(answer, list) and len(answer) == 2 and answer[0] == EXPIRED:
            if isinstance(answer[1], int):
                self.rid = max(self.rid, answer[1])  # the next call runs
            self._n["unavailable"] += 1
            raise FabUnavailable(f"{method} on {oids}: expired, its outcome is unknown")
        if answer == "quota":
            raise QuotaExceeded(f"{method} on {oids}: this client is at its quota")
        raise MethodRefused(str(answer), f"{method} refused")

    async def _send(self, node: int, data: bytes) -> None:
        # A lost send is made again by the next round; f + 1 correct nodes are enough.
        with contextlib.suppress(TransportError, RemoteError):
            await self.ep.call(NodeId(node), KIND, data, timeout=self.resend)
