"""Catching up, for one FaB replica (seed 003, chapter 6): the ``PULL`` of missing slots
(paced by :mod:`bftfs.fab.pacing`), and state transfer at checkpoints: the state images it
keeps, and the chunked fetch of the stable one when execution stays behind it.

State transfer goes by pieces (:mod:`bftfs.fab.chunks`), each one frame far below the
limit, so a state of any size up to :data:`~bftfs.fab.chunks.MAX_PIECES` pieces crosses:

- ``FETCH(seq, 0)`` asks for the manifest of the stable checkpoint ``seq``; it is taken
  when its digest is the root the certificate (``f + 1`` matching statements) names, so
  one answer is enough, whoever sends it.
- Pieces this node holds already with a listed digest (its own state's, those of a fetch
  it gave up for a later checkpoint) are not fetched.  The others are asked for with
  ``FETCH(seq, i)``, :data:`IN_FLIGHT` at a time and :data:`PER_TICK` a tick, from the
  other nodes in turn; each
  ``SNAPSHOT(seq, i, piece)`` is checked against its digest on arrival, a wrong one is
  refused with its reason and asked of another node at once.  Pieces not answered are
  asked again, paced as PULLs are.
- Only pieces that match the certified manifest are kept, and only for the checkpoint
  being fetched: what a Byzantine sender makes this node hold is bounded by the certified
  state itself (at most ``MAX_PIECES`` pieces of ``PIECE`` bytes).
- A node serves the state of its checkpoints from their images, which never change
  (copy-on-write), while it goes on executing; at most :data:`PER_TICK` pieces per peer
  per tick.

:class:`~bftfs.fab.replica.Replica` owns one and routes ``FETCH``/``SNAPSHOT`` here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bftfs.fab.checkpoints import Checkpoints
from bftfs.fab.chunks import StateImage, assemble, digest_of, parse_manifest
from bftfs.fab.execution import Execution
from bftfs.fab.learner import Learner
from bftfs.fab.messages import Fetch, Message, Pull, Snapshot
from bftfs.fab.pacing import Backoff

#: Pieces a catching-up node asks for at once.
IN_FLIGHT = 8
#: Pieces a catching-up node asks for per tick, and the most a node serves one peer per
#: tick (64 MiB/s at 50 ms ticks): a node's fetches cannot flood another's send queues.
PER_TICK = 4 * IN_FLIGHT


@dataclass
class Fetching:
    """The fetch of one stable checkpoint's state."""

    seq: int
    root: bytes
    digests: list[list[bytes]] | None = None  # per chunk, once the manifest came
    flat: list[bytes] = field(default_factory=list)  # every piece's digest, in order
    have: dict[int, bytes] = field(default_factory=dict)  # piece index -> checked piece
    asked: dict[int, int] = field(default_factory=dict)  # piece index -> node asked
    wrong: dict[int, set[int]] = field(default_factory=dict)  # piece -> nodes that lied
    queue: deque[int] = field(default_factory=deque)  # pieces to ask for, in order

    def held(self) -> int:
        """Bytes of pieces held (each matched the certified manifest)."""
        return sum(len(p) for p in self.have.values())


class StateTransfer:
    """Snapshots kept, fetched and installed (module docstring)."""

    def __init__(
        self,
        me: int,
        nodes: int,
        checkpoints: Checkpoints,
        execution: Execution,
        send: Callable[[int | None, Message], None],
        pacing: tuple[int, int] = (1, 1),
    ) -> None:
        self.me = me
        self.nodes = nodes
        self.checkpoints = checkpoints
        self.execution = execution
        self._send = send
        #: Sequence number -> the state there (this node's checkpoints, one installed).
        self.snapshots: dict[int, StateImage] = {}
        #: The state being fetched (None: none).
        self.fetching: Fetching | None = None
        #: Pieces served per peer this tick, and asks left this tick (``PER_TICK``).
        self.served: dict[int, int] = {}
        self._asks = PER_TICK
        self._turn = 0  # which node to ask next
        #: Pieces of a fetch given up for a later checkpoint, by digest (used once).
        self._carried: dict[bytes, bytes] = {}
        #: Snapshots installed to catch up past a collected log.
        self.installed = 0
        #: When to PULL each missing slot, and FETCH the stable state, again
        #: (``pacing``: ticks before the first send, longest interval).
        self.pulls: Backoff[int] = Backoff(*pacing)
        #: Slots above the highest learned one are usually still being learned the usual
        #: way (under load, every slot in flight): they are pulled only after the
        #: longest interval.
        self.tail_pulls: Backoff[int] = Backoff(pacing[1], pacing[1])
        self.fetches: Backoff[int] = Backoff(*pacing)

    def pull(self, now: int, learner: Learner, holding: bool, per_tick: int) -> None:
        """PULL slots missing for a while (Fig. 6.6 lines 32-34: after a timeout, so a slot
        still being learned the usual way costs no pull): a gap below a learned slot
        after ``pacing[0]`` ticks, a slot above every learned one after ``pacing[1]``."""
        missing = learner.missing(self.execution.executed)
        if not missing and holding:
            # Holding a request and hearing of no slot to learn: perhaps behind a log the
            # others collected; a PULL of the next slot is answered with the checkpoint.
            missing = [max(self.execution.executed, learner.low) + 1]
        top = max(learner.learned, default=0)
        gaps, tail = [s for s in missing if s < top], [s for s in missing if s > top]
        late = self.pulls.due(gaps, now) + self.tail_pulls.due(tail, now)
        for slot in late[:per_tick]:
            self._send(None, Pull(slot))

    def keep(self, seq: int, image: StateImage) -> None:
        self.snapshots[seq] = image

    def collect(self, low: int) -> None:
        """Forget the snapshots below the stable checkpoint ``low``."""
        self.snapshots = {s: v for s, v in self.snapshots.items() if s >= low}

    def on_fetch(self, sender: int, m: Fetch) -> str | None:
        image = self.snapshots.get(m.seq)
        if image is None or not 0 <= m.index <= len(image.pieces):
            return None
        if self.served.get(sender, 0) >= PER_TICK:
            return f"FETCH from {sender}: more than {PER_TICK} pieces this tick"
        self.served[sender] = self.served.get(sender, 0) + 1
        data = image.manifest if m.index == 0 else image.pieces[m.index - 1]
        self._send(sender, Snapshot(m.seq, m.index, data))
        return None

    def on_snapshot(self, sender: int, m: Snapshot) -> str | bool:
        """Take a piece (or the manifest) of the certified stable state this node is
        fetching: True when the state is complete and installed, False when not needed,
        else why it was refused."""
        f = self.fetching
        if f is None or m.seq != f.seq or m.seq != self.checkpoints.stable:
            return False  # not asked for (any longer): nothing is kept
        if m.seq <= self.execution.executed:
            self.fetching = None
            return False
        if m.index == 0:
            if f.digests is not None:
                return False
            if digest_of(m.data) != f.root:
                if f.asked.get(-1) == sender:  # ask another node at once
                    f.wrong.setdefault(-1, set()).add(sender)
                    del f.asked[-1]
                    self._ask(f)
                return f"manifest {m.seq} from {sender} does not match the certified digest"
            digests = parse_manifest(m.data)
            if digests is None:  # certified, yet not a manifest: no correct node made it
                return f"manifest {m.seq} from {sender} is malformed"
            f.digests, f.flat = digests, [d for c in digests for d in c]
            f.asked.pop(-1, None)
            self._from_local(f, {**self._carried, **self.execution.pieces()})
            self._carried = {}
            f.queue = deque(i for i in range(len(f.flat)) if i not in f.have)
        else:
            i = m.index - 1
            if f.digests is None or i >= len(f.flat) or i in f.have:
                return False
            if digest_of(m.data) != f.flat[i]:
                if f.asked.get(i) == sender:  # ask another node at once
                    f.wrong.setdefault(i, set()).add(sender)
                    del f.asked[i]
                    f.queue.appendleft(i)
                    self._ask(f)
                return f"piece {m.index} of {m.seq} from {sender} does not match its digest"
            f.have[i] = m.data
            f.asked.pop(i, None)
        return self._install(f) if len(f.have) == len(f.flat) else self._ask(f)

    def _from_local(self, f: Fetching, local: dict[bytes, bytes]) -> None:
        for i, d in enumerate(f.flat):
            piece = local.get(d)
            if piece is not None:
                f.have[i] = piece

    def _install(self, f: Fetching) -> str | bool:
        self.fetching = None
        assert f.digests is not None
        pieces = [f.have[i] for i in range(len(f.flat))]
        image = assemble(f.seq, f.digests, pieces)
        if image is None or not self.execution.install_image(image):
            return f"state {f.seq}: the certified pieces do not make a state"
        if self.execution.executed != f.seq:
            return f"state {f.seq}: its pieces are of slot {self.execution.executed}"
        self.snapshots[f.seq] = image
        self.installed += 1
        return True

    def _ask(self, f: Fetching) -> bool:
        """Ask for missing pieces (the manifest first) up to ``IN_FLIGHT`` at once, each
        of the next node in turn that did not send a wrong one of it."""
        if f.digests is None:
            if -1 not in f.asked:
                f.asked[-1] = self._send_fetch(f.seq, 0, f.wrong.get(-1, set()))
            return False
        while f.queue and len(f.asked) < IN_FLIGHT and self._asks > 0:
            i = f.queue.popleft()
            if i not in f.have and i not in f.asked:
                f.asked[i] = self._send_fetch(f.seq, i + 1, f.wrong.get(i, set()))
        return False

    def _send_fetch(self, seq: int, index: int, avoid: set[int]) -> int:
        peers = [p for p in range(self.nodes) if p != self.me and p not in avoid]
        if not peers:  # every node lied about it (more than f faulty): ask again anyway
            peers = [p for p in range(self.nodes) if p != self.me]
        self._turn += 1
        self._asks -= 1
        peer = peers[self._turn % len(peers)]
        self._send(peer, Fetch(seq, index))
        return peer

    def maybe_fetch(self, now: int) -> None:
        """Fetch the stable state when execution has been behind it for a while (tries
        paced as PULLs are: a node just behind usually learns the slots a moment later);
        at each try, what was asked and not answered is asked again of other nodes.  Every
        tick, a fetch under way asks for more pieces up to ``IN_FLIGHT``."""
        self.served, self._asks = {}, PER_TICK
        stable = self.checkpoints.stable
        behind = [stable] if stable > self.execution.executed else []
        f = self.fetching
        if self.fetches.due(behind, now):
            if f is None or f.seq != stable:
                self.fetching = f = self._start(stable, f)
            f.queue.extendleft(i for i in f.asked if i >= 0)  # not answered: ask again
            f.asked.clear()
        if not behind:
            self.fetching = None
        elif f is not None and f.seq == stable:
            self._ask(f)

    def _start(self, stable: int, old: Fetching | None) -> Fetching:
        """A fetch of ``stable``: the pieces of a fetch given up for it are kept for
        their digests (most of a state does not change between two checkpoints)."""
        if old is not None and old.digests is not None:
            self._carried = {old.flat[i]: p for i, p in old.have.items()}
        return Fetching(stable, self.checkpoints.digest)
