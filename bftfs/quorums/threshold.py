"""Threshold quorum systems by proof: every ``q``-subset of ``n`` servers is a quorum, up to
``f`` of them fail (seed 001 Examples 4.7, 5.7, 5.12, L158, L225, L268).

Because such a system is symmetric, each property depends on sizes alone, and this module
decides it from the sizes: two quorums of ``q1`` and ``q2`` servers meet in at least
``q1 + q2 - n`` (pigeonhole, :func:`min_intersection`), exactly that many for some pair,
and a fail-prone set can put up to ``f`` servers anywhere.  ``bftfs/quorums/check.py``
checks the same properties by enumerating every pair for small ``n``; the tests hold the
two to the same answer.  The protocols' rules (``bftfs/thresholds.py``) are written with
:func:`min_intersection` and :func:`available`, so Q/U and PASIS size themselves here.
"""

from __future__ import annotations

import enum
from fractions import Fraction
from math import comb


class Kind(enum.Enum):
    """The three classes of seed 001, by how a reader picks the answer."""

    MASKING = "masking"  # generic data, the client knows B (Section 4)
    DISSEMINATION = "dissemination"  # self-verifying data (Section 5.1)
    OPAQUE = "opaque"  # voting; the client need not know B (Section 5.2)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def min_intersection(q1: int, q2: int, n: int) -> int:
    """The fewest servers a ``q1``-set and a ``q2``-set of ``n`` servers share:
    ``max(0, q1 + q2 - n)`` (pigeonhole; reached by some pair)."""
    return max(0, q1 + q2 - n)


def available(q: int, n: int, down: int) -> bool:
    """Whether some ``q``-quorum avoids any ``down`` servers: ``q <= n - down`` (M2, D2,
    O3 for threshold systems, L158)."""
    return q <= n - down


def quorum_size(kind: Kind, n: int, f: int) -> int:
    """The construction's quorum size: masking ``ceil((n + 2f + 1) / 2)`` (Ex. 4.7, L158),
    dissemination ``ceil((n + f + 1) / 2)`` (Ex. 5.7, L225), opaque ``ceil((2n + 2f) / 3)``
    (Ex. 5.12, L268)."""
    if kind is Kind.MASKING:
        return _ceil_div(n + 2 * f + 1, 2)
    if kind is Kind.DISSEMINATION:
        return _ceil_div(n + f + 1, 2)
    return _ceil_div(2 * n + 2 * f, 3)


def min_servers(kind: Kind, f: int) -> int:
    """The fewest servers for which the class exists with threshold ``f``: masking
    ``4f + 1`` (Cor. 4.4, L126), dissemination ``3f + 1`` (Cor. 5.5, L219), opaque ``5f``
    for ``f > 0`` (Thm. 5.13, L272)."""
    if kind is Kind.MASKING:
        return 4 * f + 1
    if kind is Kind.DISSEMINATION:
        return 3 * f + 1
    return max(1, 5 * f)


def _opaque_worst(n: int, q: int, f: int) -> tuple[str, int, int, int] | None:
    """The first (property, meet, faulty in the meet, faulty elsewhere in Q2) breaking O1
    or O2 over every size a pair and a fail-prone set can take: a meet of ``i`` servers
    (``2q - n <= i <= q``), ``x`` faulty in it and ``y`` faulty in ``Q2 - Q1``, the rest of
    the ``f`` outside ``Q2`` (at most ``n - q`` there).

    O1 (``2(i - x) >= q``) is worst with the most ``x``, O2 (``i - x > x + y``) with the
    most ``x`` and then ``y``.  Once ``i >= f`` the worst is ``x = f, y = 0`` and both
    margins grow with ``i``, so meets above ``max(2q - n, f)`` need no look: ``O(f^2)``
    steps for any ``n``.
    """
    low = min_intersection(q, q, n)
    for i in range(low, min(q, max(low, f)) + 1):
        for x in range(min(f, i), -1, -1):
            y = min(f - x, q - i)  # the most in Q2 - Q1
            if f - x - y > n - q:
                continue  # the rest of B's f servers do not fit outside Q2
            if 2 * (i - x) < q:  # O1: i - x >= x + (q - i)
                return "O1", i, x, y
            if i - x <= x + y:  # O2: i - x > |Q2 & B|
                return "O2", i, x, y
    return None


def broken(kind: Kind, n: int, f: int, q: int) -> str | None:
    """The first property of ``kind`` that the ``q``-of-``n`` system breaks with ``f``
    faulty servers, with the sizes that break it; ``None`` when it is such a system."""
    if not 0 <= f <= n or not 0 < q <= n:
        return f"no {q}-of-{n} system with {f} faulty servers"
    meet = min_intersection(q, q, n)
    if kind is Kind.MASKING and meet <= 2 * f:
        return f"M1: two quorums meet in {meet} <= 2f = {2 * f} servers (two faulty sets cover it)"
    if kind is Kind.DISSEMINATION and meet <= f:
        return f"D1: two quorums meet in {meet} <= f = {f} servers (all may be faulty)"
    if kind is Kind.OPAQUE and (worst := _opaque_worst(n, q, f)) is not None:
        prop, i, x, y = worst
        return (
            f"{prop}: quorums meeting in {i} servers, {x} of them faulty and {y} more "
            f"faulty in the reader's quorum, leave {i - x} correct up-to-date repliers"
        )
    if not available(q, n, f):
        name = {Kind.MASKING: "M2", Kind.DISSEMINATION: "D2", Kind.OPAQUE: "O3"}[kind]
        return f"{name}: q = {q} > n - f = {n - f}: {f} faulty servers meet every quorum"
    return None


def load(q: int, n: int) -> Fraction:
    """``q / n``: the uniform strategy's load, equal to the lower bound ``c(Q) / n`` of
    Cor. 4.6 (L154), so it is the system's load (L158)."""
    return Fraction(q, n)


def fault_tolerance(q: int, n: int) -> int:
    """How many crashed servers always leave a quorum: ``n - q`` (``n - q + 1`` meet every
    quorum)."""
    return n - q


def failure_probability(q: int, n: int, p: float) -> float:
    """The probability that no quorum is up when each server is down independently with
    probability ``p``: more than ``n - q`` are down."""
    return sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n - q + 1, n + 1))
