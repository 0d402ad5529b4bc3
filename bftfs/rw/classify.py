"""Candidate classification for PASIS reads: the pure decision core of READ.

Implements the loop of the seed's READ (Figure 3.2, seed L992-1095) with the thresholds of
section 3.4.4 (L1097-1133) and the implementation's optimisations (L1153-1179):

* a candidate hosted by at least ``COMPLETE = QC + b`` nodes is complete (eq. 3.2);
* one that even the unheard nodes could not lift to ``QC`` hosts is incomplete (eq. 3.3:
  ``|CandidateSet| + t < QC`` when ``N - t`` nodes answered);
* anything in between is repairable: validate, write back at its own timestamp, return.

The client does not ask one READ_PREV round per candidate: every reply carries a bounded
version history (L1155-1158), so the client knows, per node, *which versions it hosts down to
some timestamp* (:class:`NodeView`).  :func:`decide` walks the known versions from the newest
down - exactly the seed's candidate sequence - and stops at the first complete or repairable
one, or says which information is missing.  Because the walk is a pure function of the views,
the driver simply calls it again after every round.

What the walk needs to know about node ``j`` at version ``v`` (:class:`HostStatus`):
``HOSTS``/``LACKS`` when ``j``'s history reaches down to ``v``; ``UNKNOWN`` when its history
was cut off above ``v`` (READ_PREV can tell more); ``COLLECTED`` when ``j`` garbage-collected
below a floor above ``v`` (no one can tell more).

Choices where the seed is silent (each is tested in ``tests/t1_rw_classify.py``):

1. *Generalised counts.*  With ``R`` valid replies, ``missing = N - R`` nodes are unheard.
   Incomplete iff ``hosts + missing < QC``; repairable iff not complete and
   ``hosts >= QC - missing``.  With ``R = N - t`` these are the seed's rules; with more
   replies they are only stricter, and ``QC - missing >= QC - t > b`` keeps the guarantee
   that ``b`` Byzantine nodes cannot fabricate a repairable candidate (eq. 3.4).
2. *First round with fewer replies (L1172-1175).*  Before ``N - t`` replies are in, only
   "the newest version is complete" may be decided, and only when ``2 QC > N``: then any
   two sets of ``QC`` benign nodes intersect, so a complete newer write would show up in
   at least one of the ``QC`` benign hosts of the newest version.  Otherwise: WIDEN.
3. *Hidden versions.*  A version ``x`` above ``v`` that no reply lists could only be hosted
   by nodes whose knowledge stops above ``v`` plus the unheard ones.  If those are fewer
   than ``QC - missing``, ``x`` would be incomplete anyway and ``v`` is the right next
   candidate; otherwise FETCH more history from them.
4. *Undetermined counts.*  If ``UNKNOWN`` nodes decide between incomplete and repairable,
   ask them about ``v`` exactly (READ_PREV at or below ``v``): one more round settles it.
5. *The initial version.*  Every node implicitly hosts :data:`ZERO` (the empty block,
   L815-816) unless it garbage-collected below its floor, so "nothing was ever written
   completely" is simply the walk reaching :data:`ZERO` with enough hosts.
6. *Garbage collection (L1566-1574).*  A correct node collects only below a version verified
   complete.  When replies that collected the region a decision needs decide the outcome,
   and there are at least ``restart_at`` of them, RESTART from READ_LATEST: if one of them
   is correct, a newer complete write exists that this read raced with, and a fresh
   snapshot sees it on top.  The client asks with ``restart_at = 1`` (any such reply) on
   every attempt but its last, and with the default ``b + 1`` on the last: there, up to
   ``b`` collected replies count like replies lacking the version - indistinguishable from,
   and bounded like, Byzantine ones.  So a Byzantine node claiming collection costs at most
   ``max_restarts`` extra rounds, and treating collected replies as lacking is only ever
   done after that many consecutive races.
7. *Termination against endless fabricated history.*  A node is asked for more history at
   most ``max_fetches`` times per read attempt; after that it counts as ``COLLECTED`` (it
   cannot tell more).  Correct histories are finite, so this only bites a node that keeps
   inventing versions, or a read racing with more than ``max_fetches`` history pages of
   failed writes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bftfs.rw.timestamp import ZERO, Timestamp
from bftfs.thresholds import check, pasis_rule

#: Default bound on READ_PREV history fetches per node per read attempt (choice 7).
DEFAULT_MAX_FETCHES = 4


@dataclass(frozen=True)
class RWThresholds:
    """PASIS sizes: ``N`` nodes, ``t`` faulty of which ``b`` Byzantine, ``QC``, ``m``.

    The Q/U sizes are :class:`bftfs.qu.classify.QUThresholds`.
    """

    n: int
    t: int
    b: int
    qc: int
    m: int

    def __post_init__(self) -> None:
        # Constraint summary (seed L1104-1135, spec A.2), each rule named in the message.
        check(pasis_rule(self.n, self.t, self.b, self.qc, self.m))

    @classmethod
    def from_config(cls, config: object) -> RWThresholds:
        """The thresholds of a ``ClusterConfig`` (any object with ``n, t, b, qc, m``)."""
        return cls(
            n=config.n,  # type: ignore[attr-defined]
            t=config.t,  # type: ignore[attr-defined]
            b=config.b,  # type: ignore[attr-defined]
            qc=config.qc,  # type: ignore[attr-defined]
            m=config.m,  # type: ignore[attr-defined]
        )

    @property
    def complete(self) -> int:
        """COMPLETE = QC + b (eq. 3.2)."""
        return self.qc + self.b

    @property
    def incomplete(self) -> int:
        """INCOMPLETE = QC - t (eq. 3.3): with ``N - t`` replies, fewer hosts is incomplete."""
        return self.qc - self.t

    @property
    def quorum(self) -> int:
        """``N - t``: replies awaited by writes, timestamp reads and full read rounds."""
        return self.n - self.t

    @property
    def first_round(self) -> int:
        """Nodes asked in a read's first round (QC + b, seed L1172)."""
        return self.qc + self.b

    @property
    def fast_read(self) -> bool:
        """Whether a read may finish before ``N - t`` replies (choice 2: ``2 QC > N``)."""
        return 2 * self.qc > self.n


class HostStatus(enum.Enum):
    """What the client knows about one node and one version: whether the node hosts it."""

    HOSTS = "hosts"
    LACKS = "lacks"
    UNKNOWN = "unknown"
    COLLECTED = "collected"


@dataclass(frozen=True)
class NodeView:
    """Everything the client learned from one node during this read attempt.

    Invariant: the node hosts exactly ``versions`` among all versions ``>= lo``.  Below
    ``lo`` nothing is known: more can be fetched unless ``collected``.
    """

    node: int
    versions: frozenset[Timestamp]
    #: Lower end of the knowledge; :data:`ZERO` means the whole history is known.
    lo: Timestamp
    #: Versions below ``lo`` were garbage-collected (or the node is out of fetches).
    collected: bool = False
    #: READ_PREV history fetches made to this node so far (choice 7).
    fetches: int = 0

    def status(self, ts: Timestamp) -> HostStatus:
        """HOSTS / LACKS / UNKNOWN / COLLECTED for version ``ts``."""
        if ts in self.versions:
            return HostStatus.HOSTS
        if ts >= self.lo:
            # ZERO is hosted by every node whose knowledge reaches it (choice 5).
            return HostStatus.HOSTS if ts == ZERO else HostStatus.LACKS
        return HostStatus.COLLECTED if self.collected else HostStatus.UNKNOWN


def view_from_history(
    node: int,
    history: Iterable[Timestamp],
    more: bool,
    floor: Timestamp,
    *,
    previous: NodeView | None = None,
    fetched: bool = False,
    max_fetches: int = DEFAULT_MAX_FETCHES,
) -> NodeView:
    """Merge one READ_LATEST / READ_PREV history into what is known about ``node``.

    Args:
        history: the reply's versions, newest first (already checked by messages.py).
        more: the node has older versions than the last one listed.
        floor: the node's garbage-collection floor.
        previous: the view from earlier rounds, extended downwards by this reply.
        fetched: this reply answers a READ_PREV fetch (counts against ``max_fetches``).
    """
    hist = tuple(history)
    versions = set(previous.versions) if previous else set()
    versions.update(hist)
    # The region this reply describes: [new_lo, bound of the request).
    if more:
        new_lo, new_collected = hist[-1], False
    elif floor > ZERO:
        # Everything at or above the floor was listed; below it nothing can be learned.
        new_lo, new_collected = floor, True
    else:
        new_lo, new_collected = ZERO, False
    if previous is None or new_lo < previous.lo:
        lo, collected = new_lo, new_collected
    else:
        # The reply did not reach below what was known (e.g. the node collected that part).
        lo, collected = previous.lo, previous.collected or new_collected
    if floor > ZERO:
        # The node deleted everything below its floor since any earlier reply: what it
        # hosted there is unknowable now (choice 6), what it hosts above is unaffected.
        versions = {v for v in versions if v >= floor}
        if floor > lo:
            lo, collected = floor, True
    fetches = (previous.fetches if previous else 0) + (1 if fetched else 0)
    if fetches >= max_fetches and lo > ZERO:
        collected = True
    return NodeView(node, frozenset(versions), lo, collected, fetches)


class Kind(enum.Enum):
    """What the read driver must do next."""

    #: Candidate is complete: fetch ``m`` valid fragments, validate the CC, return it.
    COMPLETE = "complete"
    #: Candidate is repairable: fetch, validate, write back at its timestamp, return it.
    REPAIR = "repair"
    #: Ask nodes that have not answered yet (fewer replies than needed).
    WIDEN = "widen"
    #: READ_PREV (history only) to the nodes in ``fetch``.
    FETCH = "fetch"
    #: Start again from READ_LATEST: garbage collection removed what the read looked for.
    RESTART = "restart"


@dataclass(frozen=True)
class Fetch:
    """One READ_PREV request the driver should send."""

    node: int
    below: Timestamp
    inclusive: bool


@dataclass(frozen=True)
class Decision:
    """The outcome of one classification step."""

    kind: Kind
    #: The candidate timestamp for COMPLETE and REPAIR (``ZERO`` is the empty block).
    candidate: Timestamp | None = None
    #: Nodes known to host the candidate (where its fragments can be fetched).
    holders: tuple[int, ...] = ()
    fetch: tuple[Fetch, ...] = ()
    reason: str = ""
    #: Candidates passed over on the way (incomplete or rejected), newest first.
    skipped: tuple[Timestamp, ...] = field(default=())


def _statuses(
    views: Mapping[int, NodeView], cand: Timestamp
) -> tuple[tuple[int, ...], list[int], list[int]]:
    """The nodes whose replies host ``cand`` (sorted), and those whose replies leave it
    unknown or say it was collected, in ``views``' order."""
    hosting: list[int] = []
    unknown: list[int] = []
    collected: list[int] = []
    for view in views.values():
        status = view.status(cand)
        if status is HostStatus.HOSTS:
            hosting.append(view.node)
        elif status is HostStatus.UNKNOWN:
            unknown.append(view.node)
        elif status is HostStatus.COLLECTED:
            collected.append(view.node)
    return tuple(sorted(hosting)), unknown, collected


def _partial(
    th: RWThresholds,
    cand: Timestamp,
    hosts: tuple[int, ...],
    undecided: bool,
    rejected: frozenset[Timestamp],
    replied: int,
) -> Decision:
    """Choice 2: only "the newest is complete" can be decided on a partial round (the
    newest candidate ``cand``; ``undecided``: a reply leaves it unknown or collected)."""
    if th.fast_read and not undecided and cand not in rejected and len(hosts) >= th.complete:
        return Decision(Kind.COMPLETE, cand, hosts, reason="fast: newest is complete")
    return Decision(Kind.WIDEN, reason=f"{replied} replies, newest not complete")


def decide(
    th: RWThresholds,
    views: Mapping[int, NodeView],
    *,
    rejected: frozenset[Timestamp] = frozenset(),
    restart_at: int | None = None,
) -> Decision:
    """Classify the newest plausible candidate given the valid replies in ``views``.

    Args:
        th: the thresholds.
        views: one view per node whose replies were all valid (at most one per node, which
            is UNIQUE_SERVERS of the seed).
        rejected: candidates whose cross checksum failed validation (poisonous writes,
            seed L1081-1085); they are walked past like incomplete ones.
        restart_at: how many collected replies that decide the outcome make the read
            restart (choice 6); None means ``b + 1``.
    """
    restart_min = th.b + 1 if restart_at is None else max(1, restart_at)
    replied = len(views)
    if replied > th.n:
        raise ValueError("more views than nodes")
    missing = th.n - replied
    full = replied >= th.quorum
    all_versions = set().union(*(v.versions for v in views.values())) if views else set()
    candidates = sorted(all_versions | {ZERO}, reverse=True)
    skipped: list[Timestamp] = []

    for cand in candidates:
        hosts, unknown, collected = _statuses(views, cand)
        if not full:
            return _partial(th, cand, hosts, bool(unknown or collected), rejected, replied)

        repair_at = th.qc - missing
        # Choice 3: could a version above `cand` that no reply lists be repairable?
        if len(unknown) + len(collected) >= repair_at:
            if unknown:
                return Decision(
                    Kind.FETCH,
                    fetch=tuple(Fetch(j, views[j].lo, False) for j in sorted(unknown)),
                    reason=f"histories of {sorted(unknown)} end above {cand!r}",
                    skipped=tuple(skipped),
                )
            if len(collected) >= restart_min:
                return Decision(Kind.RESTART, reason=f"{sorted(collected)} collected below")
            # Fewer collected replies are treated like Byzantine ones (choice 6).

        if cand in rejected:
            skipped.append(cand)
            continue
        if len(hosts) >= th.complete:
            return Decision(Kind.COMPLETE, cand, hosts, skipped=tuple(skipped))
        if len(hosts) >= repair_at:
            return Decision(Kind.REPAIR, cand, hosts, skipped=tuple(skipped))
        if len(hosts) + len(unknown) + len(collected) < repair_at:
            skipped.append(cand)
            continue
        # Choice 4: the UNKNOWN / COLLECTED nodes decide between incomplete and repairable.
        if unknown:
            return Decision(
                Kind.FETCH,
                fetch=tuple(Fetch(j, cand, True) for j in sorted(unknown)),
                reason=f"is {cand!r} hosted by {sorted(unknown)}?",
                skipped=tuple(skipped),
            )
        if len(collected) >= restart_min:
            return Decision(Kind.RESTART, reason=f"{sorted(collected)} collected {cand!r}")
        skipped.append(cand)
    # ZERO is always a candidate and every uncollected node hosts it, so the loop returns
    # unless fewer than QC - missing nodes could still tell us anything: that many replies
    # that all collected, or lost, the initial version can only mean a racing GC.
    return Decision(Kind.RESTART, reason="no candidate left")
