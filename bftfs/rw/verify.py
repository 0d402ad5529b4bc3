"""Validation checks of the PASIS protocol: pure functions over replies and fragments.

* :func:`validate_fragment` is the seed's VALIDATE (Figure 3.2): ``HASH(CC) == LT.Verifier``
  and ``HASH(D) == CC[S]``.  Nodes run it before executing a write (storage-node
  verification, seed L883-887), clients run it on every data reply (DO_READ line 7); only a
  Byzantine node can fail it, so a failing reply is a :class:`BadReply`, never an error.
* :func:`validate_candidate` is the validated cross checksum (READ lines 6-8, seed L889-895):
  regenerate all ``N`` fragments from ``m`` and compare.  A mismatch marks a poisonous write.
* :class:`ReadOutcome` is what a READ returns once validated (client.py produces it,
  catch-up judges it, behind.py).
* :func:`choose_time` is READ_TIMESTAMP + MAKE_TIMESTAMP's Time (Figure 3.1) with the clock
  bound of :mod:`bftfs.rw.timestamp`.

Nothing here reads a clock or does I/O: ``now_ns`` is passed in.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from bftfs import erasure
from bftfs.rw.classify import Kind, RWThresholds
from bftfs.rw.messages import ReadReply, ReadRequest
from bftfs.rw.timestamp import ZERO, Timestamp, next_time, plausible


@dataclass(frozen=True)
class BadReply:
    """A reply that failed validation: evidence against ``node`` (STYLE.md section 3)."""

    node: int
    reason: str


def validate_fragment(
    ts: Timestamp, cross_checksum: bytes, fragment: bytes, node: int, n: int
) -> bool:
    """VALIDATE(D, CC, LT, S) for fragment ``node`` of ``n``."""
    if not 0 <= node < n or len(cross_checksum) != erasure.cross_checksum_size(n):
        return False
    if not hmac.compare_digest(erasure.verifier_of(cross_checksum), ts.verifier):
        return False
    return erasure.fragment_matches(cross_checksum, node, fragment)


def check_read_reply(
    th: RWThresholds, node: int, request: ReadRequest, reply: ReadReply
) -> BadReply | None:
    """Validate a well-formed read reply's fragment; None when it is valid.

    Well-formedness (ordering, range, sizes) was checked when parsing
    (:meth:`ReadReply.from_wire`); what remains is whether the fragment belongs to the
    version it claims to be.
    """
    if request.data and reply.latest is not None:
        assert reply.cross_checksum is not None and reply.fragment is not None  # parsed so
        if not validate_fragment(reply.latest, reply.cross_checksum, reply.fragment, node, th.n):
            return BadReply(node, f"fragment does not validate against {reply.latest!r}")
    return None


def time_reply_ok(latest: Timestamp, now_ns: int, max_ahead_ns: int) -> bool:
    """Whether a TIME reply may be used: the time after it must be one nodes accept."""
    return plausible(latest.time + 1, now_ns, max_ahead_ns)


def choose_time(latest: Mapping[int, Timestamp], now_ns: int) -> int:
    """The Time for a new write from ``N - t`` accepted TIME replies.

    READ_TIMESTAMP takes the maximum (Figure 3.1, line 8) so that the new write is ordered
    after the latest complete write, which at least one correct replier hosts.
    """
    observed = max((ts.time for ts in latest.values()), default=0)
    return next_time(observed, now_ns)


def validate_candidate(
    th: RWThresholds, fragments: Mapping[int, bytes], cross_checksum: bytes
) -> erasure.Regenerated:
    """GENERATE_FRAGMENTS and compare with the candidate's cross checksum.

    ``fragments`` are fragments already validated against ``cross_checksum`` (at least
    ``m`` of them, keyed by node), so only the regenerated others are hashed.  The verdict
    is the same for every correct reader and every choice of ``m`` fragments (see
    :func:`bftfs.erasure.regenerate`).
    """
    return erasure.regenerate(fragments, cross_checksum, th.m, th.n, checked=True)


@dataclass(frozen=True)
class ReadOutcome:
    """What one READ returned: the candidate and everything validated about it.

    For the initial value (``ts`` :data:`ZERO`) there is no cross checksum and no fragment.
    Otherwise ``fragments`` are all ``N`` fragments regenerated from ``m`` and checked
    against ``cross_checksum`` (the validated cross checksum), so ``fragments[i]`` is
    exactly what node ``i`` stores for ``ts``.
    """

    ts: Timestamp
    #: COMPLETE, or REPAIR (repaired unless the read was asked not to).
    kind: Kind
    #: The block; a bytearray is the reader's own (``erasure.decode``): it may change it.
    data: bytes | bytearray
    cross_checksum: bytes | None
    #: Empty when the read trusted ``b + 1`` verified flags instead of regenerating.
    fragments: tuple[bytes, ...]
    #: Newer candidates this read found poisonous on the way (lazy verification discards
    #: them, node/rw_verifier.py).
    poisonous: tuple[Timestamp, ...] = ()
    #: Nodes the returning attempt stopped counting (a reply that failed its checks, or
    #: the node failed: refused, unreachable; one merely silent past a round's patience
    #: is not among them, ``rw/readround.py``): a verifying node among them heals its own
    #: copy (node/rw_verifier.py).
    bad: tuple[int, ...] = ()

    @property
    def absent(self) -> bool:
        """Whether the read found no version at all (up to its moment, for a read of the
        past): the block's initial empty value, told apart from a written empty or zero
        block, which has a timestamp.  A file system spanning two generations reads such a
        block from the older one (``fs/generations/routers.py``)."""
        return self.ts == ZERO
