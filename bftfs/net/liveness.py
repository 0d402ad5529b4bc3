"""Which nodes are alive and making progress, as a client sees them (pure: no trio, no
clock; the endpoint passes the time).

Slow is not unavailable (issue 60): a node that answers, however late, is there, and an
operation waits for it; only a node that cannot be reached, or has left requests
unanswered for much longer than it usually takes, is taken for absent.  So liveness is
judged in each node's own recent response times, not against a fixed timeout:

* a node whose last connection attempt failed (refused, or no handshake within the
  connect timeout) is **down** until a connection to it succeeds;
* any other node is **live** unless it was sent a request and has sent nothing back
  since (no reply, no push) for longer than its *window* - counted from the first
  request after the last thing it sent, so requests a quorum call gave up on (the call
  ended without the node) still count against a node that stays silent;
* a node's window is ``max(LIVE_FLOOR, LIVE_FACTOR * its response time)``, the response
  time being a moving average of its replies' latencies (capped at ``LIVE_CAP``): on a
  machine loaded so that every node answers in 8 s, a node silent for 10 s is slow, not
  gone; a node stopped (SIGSTOP) or hung is taken for absent once it is silent for several
  of its usual response times.

A node not asked anything since it last spoke is live (nobody is waiting for it); the
endpoint asks it something soon enough when an operation needs it.

**Heartbeats.**  A node may be alive and still leave a request unanswered for long: its
handler waits for its own peers, some of them stopped or slow.  So a node silent for
:data:`PING_AFTER` seconds since it was asked something is sent a ``ping`` (answered by the
node's reader at once, ``node/service.py``; one outstanding per node, the endpoint's
``node_live``); its answer is something the node sent, so a node whose process runs stays
live while its requests wait, and only one that answers nothing at all (stopped, hung, cut
off) becomes absent.
"""

from __future__ import annotations

from bftfs.ids import NodeId

#: Seconds of silence since a node was asked something that never make it absent: a
#: node stopped for a few seconds (SIGSTOP, a machine at load 20-30) takes as long again
#: to work through what queued meanwhile before it answers even a heartbeat.
LIVE_FLOOR = 10.0
#: Times its own response time a node may be silent with requests outstanding.
LIVE_FACTOR = 4.0
#: The longest window (a node silent this long with requests outstanding is absent).
LIVE_CAP = 120.0
#: Weight of a new latency in the moving average (recent answers count most).
ALPHA = 0.25
#: Seconds a node asked something may stay silent before it is sent a heartbeat.
PING_AFTER = 1.0


class Liveness:
    """What the transport saw of each node (see the module docstring)."""

    __slots__ = ("heard_at", "latency", "down", "asked_at")

    def __init__(self) -> None:
        #: When each node last sent anything (a reply, a push, a handshake).
        self.heard_at: dict[NodeId, float] = {}
        #: Each node's moving average of reply latency (seconds).
        self.latency: dict[NodeId, float] = {}
        #: Nodes whose last connection attempt failed.
        self.down: set[NodeId] = set()
        #: Per node sent a request since it last sent anything: when the first was sent.
        self.asked_at: dict[NodeId, float] = {}

    def connected(self, node: NodeId, now: float) -> None:
        """A connection to ``node`` was made (its handshake answered)."""
        self.down.discard(node)
        self.heard_at[node] = now
        self.asked_at.pop(node, None)

    def asked(self, node: NodeId, now: float) -> None:
        """A request went to ``node`` at ``now`` (only the first since it last spoke counts)."""
        if node not in self.asked_at:
            self.asked_at[node] = now

    def waiting(self, node: NodeId) -> bool:
        """Whether ``node`` was asked something since it last spoke (cheap: lets a caller
        skip the clock read of :meth:`asked`)."""
        return node in self.asked_at

    def unreachable(self, node: NodeId) -> None:
        """A connection attempt to ``node`` failed."""
        self.down.add(node)

    def heard(self, node: NodeId, now: float, latency: float | None = None) -> None:
        """``node`` sent something at ``now``; a reply ``latency`` seconds after its request."""
        self.heard_at[node] = now
        self.asked_at.pop(node, None)
        self.down.discard(node)  # it spoke: reachable (an old connection outlives a refusal)
        if latency is not None and latency >= 0:
            old = self.latency.get(node)
            self.latency[node] = latency if old is None else old + ALPHA * (latency - old)

    def needs_ping(self, node: NodeId, now: float) -> bool:
        """Whether ``node`` has been silent for :data:`PING_AFTER` since it was asked
        something (the endpoint sends it a heartbeat, module docstring)."""
        asked = self.asked_at.get(node)
        return asked is not None and now - asked >= PING_AFTER

    def usual(self, node: NodeId) -> float:
        """Several of ``node``'s own response times (0 before its first reply): how long
        a queue may wait on it past a fixed stall bound (``net/batch.py``)."""
        return LIVE_FACTOR * self.latency.get(node, 0.0)

    def window(self, node: NodeId) -> float:
        """Seconds ``node`` may leave requests unanswered and send nothing before it is
        taken for absent."""
        return min(LIVE_CAP, max(LIVE_FLOOR, LIVE_FACTOR * self.latency.get(node, 0.0)))

    def live(self, node: NodeId, now: float) -> bool:
        """Whether ``node`` is alive and making progress at ``now``."""
        if node in self.down:
            return False
        asked = self.asked_at.get(node)
        return asked is None or now - asked <= self.window(node)
