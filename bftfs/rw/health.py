"""The PASIS client's view of the nodes: the faults it detected and the order a read asks.

A node that served a fragment failing its check (or listed a version and then did not
produce its fragment) is *suspect* for the next ``SUSPECT_READS`` reads: they ask it for
data only after the others, so a node that corrupts what it serves does not cost every
read a refused fragment and another round.  Only the cost changes: every reply is judged
as before, and a node asked last is still asked whenever the others do not decide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bftfs.ids import NodeId
from bftfs.net.endpoint import Endpoint
from bftfs.net.quorum import live_first

#: Reads that ask a node for data only after the others once it sent a fragment that
#: failed its check (or refused to produce one).
SUSPECT_READS = 256


class NodeHealth:
    """Faults detected per node, and which nodes a read asks last."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        #: Faults detected per node: ``(node, kind)`` -> count, kind one of ``corrupt`` (a
        #: fragment that does not validate against the version it claims), ``malformed``
        #: (a reply that does not parse), ``refuted`` (listed a version, then did not
        #: produce its fragment), ``time_ahead`` (a time beyond the clock bound).  A node
        #: replaces it with its findings' counter (node/findings.py).
        self.faults: Counter[tuple[int, str]] = Counter()
        #: Nodes asked for data last, and for how many more reads (``SUSPECT_READS``).
        self.suspect: dict[int, int] = {}

    def blame(self, node: int, kind: str, *, suspect: bool = False) -> None:
        """Count a fault of ``kind`` against ``node``; ``suspect``: ask it last from now on."""
        self.faults[(int(node), kind)] += 1
        if kind == "malformed":  # no correct node sends it: the transport asks it last
            self.endpoint.suspect(NodeId(node), "malformed PASIS reply")
        if suspect:
            self.suspect[int(node)] = SUSPECT_READS

    def refused(self, node: NodeId) -> None:
        """``node`` refused a read (``reject-everything`` refuses all): asked for data
        last for the next ``SUSPECT_READS`` reads, like a suspect, without a fault counted
        (a correct node refuses when busy)."""
        self.suspect[int(node)] = SUSPECT_READS

    def read_order(self, nodes: Sequence[NodeId]) -> list[NodeId]:
        """``nodes`` in the order a read asks them: by index (the systematic fragments'
        first), nodes that recently refused connections, far slower than the others
        (``Endpoint.ask_last``) or suspect last.  Each call is
        one read: it counts the suspects' remaining reads down."""
        suspect = self.suspect
        for node in list(suspect):
            suspect[node] -= 1
            if suspect[node] <= 0:
                del suspect[node]
        return live_first(nodes, self.asked_last(nodes))

    def asked_last(self, nodes: Sequence[NodeId]) -> set[NodeId]:
        """Those of ``nodes`` a read asks last: refusing connections, far slower than the
        others (``Endpoint.ask_last``) or suspect.  Counts nothing down."""
        return self.endpoint.ask_last(nodes) | {NodeId(n) for n in self.suspect if n in nodes}
