"""Where a node stands in the held view's generations (docs/membership.md, "Generations:
the nodes"), and what follows from it.

A view changing the number of nodes or the thresholds starts a new generation whose
nodes are new processes; the old generation's nodes stay in the view as ``previous``
until the administrator finishes the move.  A node is, in the view it holds:

- **active**: its id and long-term key are in the view's own generation;
- **frozen**: they are in ``previous``.  It refuses a client's own *new* operations with
  code ``moved`` (message "generation G (view V)"): a Q/U update the client runs for itself
  but ``fs.release``, a Q/U query but the move's reads ``fs.state`` and ``fs.export``
  (``qu/replica.py``: any other query comes from a mount that has not taken the view yet),
  and a PASIS write of a version naming the sender as its writer (``node/rw_server.py``).
  Everything a move needs to read, repair or give back goes on: those two reads,
  barriers, copies, inline repairs, PASIS repairs, block reads, listings and catch-up
  between the generation's nodes.  At the freeze it pushes a recall of every object on
  which a lease it stores is live (``node/recalls.py``'s push), so holders write back
  what they buffered (to the new generation) and release;
- **retired**: in neither generation of a view of a later generation than its own (the
  move is finished).  It refuses every request but ``view.get`` and ``gen.status``
  (code ``retired``) and says once, in its log, that it may be powered off.

A node whose key is replaced within its own generation (node replacement) is none of these:
``node/views.py`` handles it as before (its peers refuse it).  Which generation the node
belongs to is kept in ``<data_dir>/generation`` (written whenever it takes a view it is in),
so a restart finds the same state: the view file itself says frozen; the generation file
tells a retired node from a replaced one.

``gen.status`` (any principal of the node's key ring) answers ``{"g": the node's own
generation, "frozen": bool, "retired": bool, "view": the number held}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bftfs.membership.view import CURRENT, PREVIOUS, View
from bftfs.membership.viewkeys import replace_durably
from bftfs.net.server import HandlerError
from bftfs.node.recalls import recall_stored

if TYPE_CHECKING:
    from bftfs.node.service import Node, RequestContext

log = logging.getLogger(__name__)

#: The node's own generation, beside its view file.
GENERATION_FILE = "generation"
#: What a retired node still answers.
RETIRED_ANSWERS = frozenset({"view.get", "gen.status"})
#: The request asking a node where it stands.
KIND_STATUS = "gen.status"

ACTIVE = "active"
FROZEN = "frozen"
RETIRED = "retired"


def read_own(data_dir: Path) -> int | None:
    """The generation the node in ``data_dir`` last belonged to (None: never recorded)."""
    try:
        return int((data_dir / GENERATION_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def write_own(data_dir: Path, number: int) -> None:
    """Record the node's own generation durably (it fsyncs; the data directory is made if
    the node has not started in it yet)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    replace_durably(data_dir / GENERATION_FILE, f"{number}\n".encode(), 0o644)


def place(view: View, node_id: int, public_key: bytes, own: int | None) -> tuple[str, str | None]:
    """The node's state in ``view`` (:data:`ACTIVE`, :data:`FROZEN`, :data:`RETIRED`) and
    which generation of it the node runs with (``"current"``, ``"previous"``, or None for a
    retired node).  ``own``: the generation it last belonged to.  A node in neither
    generation whose own is the view's (or unknown) was replaced: active, as before."""
    which = view.generation_of(node_id, public_key)
    if which == PREVIOUS:
        return FROZEN, PREVIOUS
    if which is None and own is not None and own < view.generation:
        return RETIRED, None
    return ACTIVE, CURRENT


class NodeGeneration:
    """One node's generation state (module docstring), kept by ``node/views.py`` as it
    takes views; the Q/U and PASIS servers ask :attr:`frozen` and :meth:`moved`."""

    def __init__(self, view: View, node_id: int, public_key: bytes, data_dir: Path) -> None:
        self.node_id = node_id
        self.public_key = public_key
        self.data_dir = data_dir
        #: The generation this node belongs to (the newest it was in).
        self.own: int | None = read_own(data_dir)
        self.view = view
        mine = self.in_view(view)
        if mine is not None and mine != self.own:  # (first start with this version, or new)
            write_own(data_dir, mine)
            self.own = mine
        self.state, self.which = place(view, node_id, public_key, self.own)
        self._node: Node | None = None
        self._told_retired = False

    @property
    def frozen(self) -> bool:
        return self.state == FROZEN

    @property
    def retired(self) -> bool:
        return self.state == RETIRED

    def moving(self) -> bool:
        """Whether this node belongs to the generation objects move *to*: active in a view
        that has a previous generation.  It then takes the background mover's copies of
        other writers' versions (``node/rw_server.py``) and forgets no given-back block
        (``node/rw_forgetter.py``)."""
        return self.state == ACTIVE and self.view.previous is not None

    def moved(self) -> str | None:
        """The refusal a frozen node gives a client's own new operation, or None."""
        if not self.frozen:
            return None
        return f"generation {self.view.generation} (view {self.view.number})"

    def in_view(self, view: View) -> int | None:
        """The generation number this node has in ``view`` (None: in neither)."""
        which = view.generation_of(self.node_id, self.public_key)
        if which == CURRENT:
            return view.generation
        if which == PREVIOUS and view.previous is not None:
            return view.previous.number
        return None

    def placed(self, view: View) -> tuple[str, str | None]:
        """:func:`place` for ``view`` (not taken yet)."""
        own = self.in_view(view)
        return place(view, self.node_id, self.public_key, self.own if own is None else own)

    def save_own(self, view: View) -> None:
        """Record the node's generation in ``view`` if it is in it (before the view is
        acknowledged; a worker thread)."""
        number = self.in_view(view)
        if number is not None and number != self.own:
            write_own(self.data_dir, number)

    def attach(self, node: Node) -> None:
        """Answer ``gen.status``; refuse what a retired node does not answer."""
        self._node = node
        node.register(KIND_STATUS, self._status, inline=True)

    def started(self) -> None:
        """The node runs (its store is open): say what a restart found."""
        self._announce(None)

    def take(self, view: View) -> None:
        """``view`` is now held (its file written): the state it gives this node."""
        before = self.state
        self.state, self.which = self.placed(view)
        self.own = self.in_view(view) or self.own
        self.view = view
        self._announce(before)

    def _announce(self, before: str | None) -> None:
        node = self._node
        if node is None:
            return
        node.progress["generation"] = self.status()
        if self.state == before:
            return
        if self.frozen:
            node.log.warning(
                "node %s: frozen (view %d moves to generation %d): clients' own new "
                "operations are refused `moved`; reads and repairs go on",
                node.id,
                self.view.number,
                self.view.generation,
            )
            if node._nursery is not None and node.store is not None:
                node.spawn(self.recall_leases)
        elif self.retired and not self._told_retired:
            self._told_retired = True
            node.log.warning(
                "node %s: retired (view %d: generation %s's move to %d is finished): it "
                "answers only view.get and gen.status and may be powered off",
                node.id,
                self.view.number,
                self.own,
                self.view.generation,
            )

    def check(self, kind: str) -> None:
        """Refuse ``kind`` on a retired node.

        Raises:
            HandlerError: ``retired``.
        """
        if self.state == RETIRED and kind not in RETIRED_ANSWERS:
            if self._node is not None:
                self._node.stats["refused.retired"] += 1
            raise HandlerError(
                "retired",
                f"node {self.node_id} of generation {self.own} is retired (view "
                f"{self.view.number} is generation {self.view.generation})",
            )

    def status(self) -> dict[str, Any]:
        """What ``gen.status`` answers."""
        return {
            "g": self.own if self.own is not None else self.view.generation,
            "frozen": self.frozen,
            "retired": self.retired,
            "view": self.view.number,
        }

    async def _status(self, ctx: RequestContext, payload: Any) -> Any:
        return self.status()

    async def recall_leases(self) -> None:
        """Push a recall of every object on which a lease stored here is live to its
        holders (the freeze: module docstring)."""
        assert self._node is not None
        await recall_stored(self._node, lambda oid: True, "gen.recalls")
