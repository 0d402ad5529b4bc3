"""What one Q/U server knows about itself: its id, the thresholds, its pairwise keys, the
object types it serves and which versions it may delete (:class:`Retention`, seed
L2630-2634).  Every server-side module (``replica``, ``reads``, ``retention``,
``tombstones``, ``duties``, ``adoption``) takes a :class:`ReplicaConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bftfs.kv import KV
from bftfs.qu.classify import QUThresholds
from bftfs.qu.links import KnownLinks
from bftfs.qu.objects import Registry
from bftfs.thinning import Schedule


@dataclass(frozen=True)
class Retention:
    """Which object versions a server may delete (none by default).

    ``keep_last=None`` keeps every version.  With ``keep_last=k`` a server deletes, after
    accepting an update, versions that are all of: older than every candidate of its pruned
    replica history and than every candidate's conditioned-on version (so object sync and
    classification never ask for them from this server); not among the ``k`` newest; and
    stored more than ``keep_seconds`` ago by this server's clock (the version history users
    see, slow repeated requests, and link proofs (qu.fetch) of requests still in some
    lagging server's history, L2630-2634).  A version's stored request goes with it.  Nodes
    take ``k`` and the age from ``[retention]`` (policy.py).

    A retried request whose version was deleted is still answered once: the applied table
    travels with every version (``replica.py``'s docstring), so the retry returns the stored
    answer instead of running the method again.
    """

    keep_last: int | None = None
    keep_seconds: float = 0.0
    #: How long a tombstone stays before the servers forget the object altogether (after
    #: ``keep_seconds``): see :func:`bftfs.qu.tombstones.forget_target`.  None: never.
    forget_seconds: float | None = None
    #: Seconds after which a version's stored request goes although the version stays
    #: (:func:`bftfs.qu.retention.drop_requests`): past ``keep_seconds`` of ``[retention]``
    #: no repair or link proof asks for it, while history keeps versions to its horizon.
    #: None: a request goes with its version.
    request_seconds: float | None = None
    #: The moments whose versions are never deleted (snapshots), read from the store when
    #: something would be: the version current at each (the newest stored at or before it
    #: by this server's clock) stays; :func:`~bftfs.qu.retention.retain` deletes oldest
    #: first and stops there, :func:`~bftfs.qu.retention.thin_step` thins what follows.
    pins: Callable[[KV], Sequence[int]] | None = None
    #: History's thinning schedule inside ``keep_seconds`` (the horizon): what
    #: :func:`bftfs.qu.retention.thin_step` keeps of the versions there.  None: all.
    schedule: Schedule | None = None

    def pinned(self, kv: KV) -> Sequence[int]:
        """The snapshot moments stored in ``kv`` (none without ``pins``)."""
        return self.pins(kv) if self.pins is not None else ()


@dataclass(frozen=True)
class ReplicaConfig:
    """What one server's step needs to know about itself."""

    me: int
    th: QUThresholds
    key_for: Callable[[int], bytes]  # pairwise key with server s (itself included)
    registry: Registry
    retention: Retention = field(default_factory=Retention)
    #: The pairwise key with server ``s``'s ended key, once a view replaced ``s`` (a new
    #: machine, a new key: docs/membership.md), else None; see ``replica.cull``.
    ended_key_for: Callable[[int], bytes | None] = field(default=lambda _s: None)
    #: Signs a statement with this node's long-term key (``fsobjects/txnsign.py``): the
    #: OK replies to the cross-group commit's methods carry it (``replica.handle_request``).
    #: None: this node signs nothing (a certificate then needs the other nodes).
    signer: Callable[[bytes], bytes] | None = None
    #: The conditioned-on links this server has proven (``links.verified``), kept across
    #: requests.
    known: KnownLinks = field(default_factory=KnownLinks, compare=False, repr=False)
