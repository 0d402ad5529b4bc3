"""Tier 1: when a read's repair is refused as ``unproven`` by more than ``b`` nodes (the
candidate is no longer hosted by ``b + 1`` of them: collected below a newer write since the
read's rounds saw it), the read restarts instead of failing (``rw/read.py``)."""

from __future__ import annotations

from bftfs.ids import NodeId
from bftfs.net.quorum import QuorumResult, QuorumUnavailable
from bftfs.rw.read import _unproven

UNPROVEN = (
    "refused: unproven: fewer than b + 1 other nodes host version TS(1, w=65537, 15dc84c7) of "
    "block 0x9: only its writer may write a version that is new"
)


def _refused(codes: dict[int, str]) -> QuorumUnavailable:
    return QuorumUnavailable("rw.write", QuorumResult({}, {NodeId(n): w for n, w in codes.items()}))


def test_more_than_b_unproven_refusals_mean_the_candidate_is_gone() -> None:
    # What CI saw: every node refused the repair as unproven.
    assert _unproven(_refused({n: UNPROVEN for n in range(6)}), b=1)
    assert _unproven(_refused({0: UNPROVEN, 1: UNPROVEN, 2: "no reply in time"}), b=1)


def test_b_unproven_refusals_or_other_failures_are_not_enough() -> None:
    """One Byzantine node saying so proves nothing; other failures are the write's own."""
    assert not _unproven(_refused({0: UNPROVEN, 1: "no reply in time"}), b=1)
    assert not _unproven(_refused({n: "refused: full: nearly full" for n in range(6)}), b=1)
