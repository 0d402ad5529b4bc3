"""What the protocol clients tell their callers when the cluster cannot answer.

Both protocol clients (``qu.client``, ``rw.client``) raise subclasses of
:class:`ClusterUnavailable` and nothing of the transport below them (no
``QuorumUnavailable``, ``TransportError`` or exception groups from their nurseries), so
their callers - the file system - handle one family and import nothing of the transport.

It also holds the *patience* of the operation running in the current task (a context
variable): how long it still waits for an unavailable cluster. A mount sets it per system
call (``timeo``, :mod:`bftfs.fuse.options`); the transport (``net.endpoint``, ``net.batch``)
cuts its timeouts to it and extends it whenever a call completes and, unless it is
``soft``, whenever at least a quorum of nodes is live (:meth:`Patience.refresh`, the
endpoint's ``quorum_live``: issue 60, slow is not unavailable), so an operation fails once
fewer than a quorum were live for that long, whatever retries the protocol clients and the
file system would otherwise make, and one on a slow but live cluster waits. A quorum of
nodes answering a round renews it too, also a round its caller cuts short
(``quorum_call(renew_at=...)``: contention ends rounds once their outcome is clear), and a
backoff for contention uses up none of it (:func:`paused`): patience that ran out in a
long contended repair made the next rounds "short" and the operation EIO with every node
answering (issue 31, item 11). Without one (no mount) the transport's own timeouts apply.
Kept here, in the base layer, so the file system and FUSE set it without importing the
transport.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar


class ClusterUnavailable(Exception):
    """Too few nodes answered validly (more faults than the configuration tolerates, or
    none in time): the operation did not complete, and may or may not have taken effect."""


class StorageFull(ClusterUnavailable):
    """More than ``b`` nodes refused a write for lack of space, so at least one correct node
    is full: the file system reports ENOSPC (not EIO), and deleting files frees space."""


class QuotaExceeded(StorageFull):
    """More than ``b`` nodes refused a write because it would take this client past its
    quota there (``[limits]``; at least one correct node counts it over): the file system
    reports EDQUOT, and deleting this client's files gives the space back."""


class GenerationMoved(ClusterUnavailable):
    """More than ``b`` nodes refused a write because their generation is frozen or retired,
    or the block's partition moves away from their group (``moved``, ``retired``:
    docs/membership.md, "Generations"; docs/layout.md, "Moving partitions"): the client
    must take the newer view or layout and write where it says."""


def refused_as_moved(codes: Mapping[int, str | None], b: int) -> GenerationMoved | None:
    """:class:`GenerationMoved` once more than ``b`` nodes in ``codes`` (node -> refusal
    code) refused as ``moved`` or ``retired`` (so at least one correct node did), else
    None."""
    moved = sorted(n for n, code in codes.items() if code in ("moved", "retired"))
    if len(moved) <= b:
        return None
    return GenerationMoved(
        f"nodes {moved} refused: frozen (their generation, or the block's partition moving "
        "away) or retired"
    )


def refused_for_space(codes: Mapping[int, str | None], b: int) -> StorageFull | None:
    """What refusals for space by the nodes in ``codes`` (node -> refusal code) mean, for
    either protocol's client: :class:`StorageFull` once more than ``b`` nodes refused as
    ``full`` or ``quota`` - so at least one correct node did - and :class:`QuotaExceeded`
    when ``quota`` refusals are at least as many as ``full`` ones; None for ``b`` or fewer
    (a Byzantine node alone cannot fail a correct client)."""
    full = sorted(n for n, code in codes.items() if code == "full")
    quota = sorted(n for n, code in codes.items() if code == "quota")
    if len(full) + len(quota) <= b:
        return None
    if len(quota) >= len(full):
        return QuotaExceeded(f"nodes {quota} refused: this client is at its quota there")
    return StorageFull(f"nodes {full} are out of space")


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions in ``group`` and its nested groups, in order."""
    out: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            out.append(e)
    return out


def collapse(
    group: BaseExceptionGroup,
    make: type[ClusterUnavailable],
    also: tuple[type[BaseException], ...] = (),
) -> BaseException:
    """The one outcome error a group of concurrent failures means (the first, as ``make``
    when it is one of ``also``, the transport's errors), or the group itself when anything
    in it is neither (a cancellation, a bug)."""
    failures = leaves(group)
    kinds: tuple[type[BaseException], ...] = (ClusterUnavailable, *also)
    if not failures or not all(isinstance(x, kinds) for x in failures):
        return group
    first = failures[0]
    if isinstance(first, ClusterUnavailable):
        return first
    return make(f"{type(first).__name__}: {first}")


class Patience:
    """How long the current operation goes on waiting for an unavailable cluster: until
    ``deadline`` (trio time), pushed ``seconds`` ahead whenever a call completes and,
    unless ``soft``, whenever a quorum of nodes is live (:meth:`refresh`).

    ``live`` is the transport's view of the cluster (``net.endpoint``): called with the
    time, whether at least a quorum of nodes is alive and making progress (connections
    up, answering within their own recent response times).  The transport attaches it the
    first time the operation calls; a ``soft`` patience never consults it (a mount's
    ``-o soft``: EIO after ``seconds`` without a completed call, however busy the nodes)."""

    __slots__ = ("seconds", "deadline", "started", "soft", "live")

    def __init__(self, seconds: float, now: float, *, soft: bool = False) -> None:
        self.seconds = seconds
        self.started = now
        self.deadline = now + seconds
        self.soft = soft
        self.live: Callable[[float], bool] | None = None

    def expired(self, now: float) -> bool:
        self.refresh(now)
        return now >= self.deadline

    def renew(self, now: float) -> None:
        """A node answered: the cluster is there, so waiting starts again from ``now``."""
        if now + self.seconds > self.deadline:
            self.deadline = now + self.seconds

    def refresh(self, now: float) -> None:
        """Slow is not unavailable (issue 60): while a quorum of nodes is live the
        operation waits, however long its calls take, so its patience starts again from
        ``now``; it runs down only while fewer than a quorum are."""
        if not self.soft and self.live is not None and self.live(now):
            self.renew(now)


_patience: ContextVar[Patience | None] = ContextVar("bftfs_patience", default=None)


@contextmanager
def patience(seconds: float | None, now: float, *, soft: bool = False) -> Iterator[Patience | None]:
    """Within the block (and the tasks it starts), wait at most ``seconds`` for an
    unavailable cluster (``now``: the current trio time); None: no limit of its own.
    ``soft``: "unavailable" means no call completed for ``seconds``, however many nodes
    are live (:class:`Patience`)."""
    if seconds is None:
        yield None
        return
    p = Patience(seconds, now, soft=soft)
    token = _patience.set(p)
    try:
        yield p
    finally:
        _patience.reset(token)


def paused(seconds: float) -> None:
    """The current operation chose to wait ``seconds`` (a backoff for contention): that
    time is not the cluster's silence, so its patience moves on by as much (a backoff
    longer than the patience left made the next round's call time out at once)."""
    p = _patience.get()
    if p is not None and seconds > 0:
        p.deadline += seconds


def caught_up(holder: Patience | None, now: float) -> None:
    """The current operation waited for another operation of this client to be done with
    an object (``holder``: that one's patience, None if it had none).  The wait was the
    other's time - its rounds, its backoffs - not the cluster's silence towards this one:
    this one's patience starts again from when the holder last progressed (or paused), no
    later than ``now``.  A holder the cluster left unanswered for its whole patience
    gives its waiters nothing, so an operation still fails once the cluster made no
    progress for its patience.  Without this, a call waiting behind a task of its own
    mount that backed off for contention found its patience gone and failed with every
    node answering ("0 answered", issue 39)."""
    p = _patience.get()
    if p is None or holder is None or holder is p:
        return
    p.renew(min(now, holder.deadline - holder.seconds))


def current_patience() -> Patience | None:
    return _patience.get()


@contextmanager
def acting_for(p: Patience | None) -> Iterator[None]:
    """Within the block, the current operation is the one ``p`` belongs to: a task the
    transport starts on an operation's behalf from another task (a probe sent from a
    connection's reader task) waits as that operation would."""
    token = _patience.set(p)
    try:
        yield
    finally:
        _patience.reset(token)


def bounded(timeout: float, now: float) -> float:
    """``timeout`` cut to the current operation's patience (0 once it ran out)."""
    p = _patience.get()
    if p is None:
        return timeout
    p.refresh(now)
    return max(0.0, min(timeout, p.deadline - now))


def progressed(now: float) -> None:
    """A call completed: the current operation's patience starts again from ``now``."""
    p = _patience.get()
    if p is not None:
        p.renew(now)
