"""Exhaustive checks of seed 001's intersection properties over explicit set systems.

Each checker returns ``None`` when the property holds, or a :class:`Violation` naming the
property and the quorums and fail-prone sets that break it, so a construction one server
short (or a grid with too few rows) is shown its counter-example, not just refused.

The properties (seed 001; ``B`` the fail-prone system; availability may be asked of a
second system ``T``, the sets of servers that may be unresponsive, which is ``B`` in the
seed and ``t``-subsets in bftfs, where ``t >= b`` servers may fail and ``b`` of them lie):

- masking (Def. 4.1, L98-102): M1 ``(Q1 & Q2) - B1`` not inside ``B2``; M2 some quorum
  avoids each ``B``;
- dissemination (Def. 5.1, L193-197): D1 ``Q1 & Q2`` not inside any ``B``; D2 = M2;
- opaque masking (Def. 5.10, L241-245): O1 ``|(Q1 & Q2) - B| >= |(Q2 & B) | (Q2 - Q1)|``;
  O2 ``|(Q1 & Q2) - B| > |Q2 & B|``; O3 = M2.

Every pair is enumerated (``Q1 = Q2`` included, ordered where the property is not
symmetric); work is shared between pairs with the same intersection, which changes no
answer.  Sizes: fine up to ``n = 16`` for the grids and ``n = 12`` for threshold systems.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bftfs.quorums.systems import SetSystem, show


@dataclass(frozen=True)
class Violation:
    """A property broken, with its witnesses (bit masks; ``-1``: no such witness)."""

    prop: str
    detail: str
    q1: int = -1
    q2: int = -1
    b1: int = -1
    b2: int = -1

    def __str__(self) -> str:
        return f"{self.prop} broken: {self.detail}"


def _intersections(q1s: SetSystem, q2s: SetSystem) -> dict[int, tuple[int, int]]:
    """Every distinct ``Q1 & Q2`` with one pair that gives it (the first in order)."""
    out: dict[int, tuple[int, int]] = {}
    for a in q1s.sets:
        for b in q2s.sets:
            out.setdefault(a & b, (a, b))
    return out


def _down_closure(bs: SetSystem) -> dict[int, int]:
    """Every subset of a fail-prone set, mapped to one fail-prone set containing it: ``X``
    is inside some ``B`` iff ``X`` is a key."""
    out: dict[int, int] = {}
    for b in bs.sets:
        sub = b
        while True:  # every submask of b, b itself first
            out.setdefault(sub, b)
            if sub == 0:
                break
            sub = (sub - 1) & b
    return out


def availability(prop: str, qs: SetSystem, ts: SetSystem) -> Violation | None:
    """M2 / D2 / O3: for every ``T``, some quorum avoids it."""
    for t in ts.sets:
        if not any(q & t == 0 for q in qs.sets):
            return Violation(prop, f"every quorum of {qs.name} meets {show(t)}", b1=t)
    return None


def m1(q1s: SetSystem, q2s: SetSystem, bs: SetSystem) -> Violation | None:
    """M1: the correct part of any intersection is never covered by a fail-prone set."""
    inside = _down_closure(bs)
    for meet, (a, b) in _intersections(q1s, q2s).items():
        for b1 in bs.sets:
            b2 = inside.get(meet & ~b1)
            if b2 is not None:
                detail = (
                    f"quorums {show(a)} and {show(b)} meet in {show(meet)}, "
                    f"covered by faulty {show(b1)} and {show(b2)}"
                )
                return Violation("M1", detail, a, b, b1, b2)
    return None


def d1(q1s: SetSystem, q2s: SetSystem, bs: SetSystem) -> Violation | None:
    """D1: no intersection lies inside a fail-prone set (a write reaches a correct reader)."""
    inside = _down_closure(bs)
    for meet, (a, b) in _intersections(q1s, q2s).items():
        b1 = inside.get(meet)
        if b1 is not None:
            detail = f"quorums {show(a)} and {show(b)} meet in {show(meet)}, inside {show(b1)}"
            return Violation("D1", detail, a, b, b1)
    return None


def _ordered_pairs(qs: SetSystem) -> Iterator[tuple[int, int]]:
    for a in qs.sets:
        for b in qs.sets:
            yield a, b


def o1(qs: SetSystem, bs: SetSystem) -> Violation | None:
    """O1: up-to-date correct repliers are at least as many as faulty plus out-of-date ones.

    ``(Q2 & B) | (Q2 - Q1)`` is the disjoint union of ``B & Q1 & Q2`` and ``Q2 - Q1``, so
    the worst ``B`` for a pair is one with the most servers in ``Q1 & Q2``; per distinct
    intersection that maximum is computed once over every ``B``.
    """
    worst: dict[int, int] = {}
    for a, b in _ordered_pairs(qs):
        meet = a & b
        if meet not in worst:
            worst[meet] = max(bs.sets, key=lambda f: (f & meet).bit_count())
        f = worst[meet]
        up_to_date = (meet & ~f).bit_count()
        against = ((b & f) | (b & ~a)).bit_count()
        if up_to_date < against:
            detail = (
                f"Q1={show(a)}, Q2={show(b)}, B={show(f)}: {up_to_date} correct up-to-date "
                f"repliers against {against} faulty or out-of-date"
            )
            return Violation("O1", detail, a, b, f)
    return None


def o2(qs: SetSystem, bs: SetSystem) -> Violation | None:
    """O2: up-to-date correct repliers outnumber the faulty repliers."""
    for a, b in _ordered_pairs(qs):
        meet = a & b
        for f in bs.sets:
            up_to_date = (meet & ~f).bit_count()
            faulty = (b & f).bit_count()
            if up_to_date <= faulty:
                detail = (
                    f"Q1={show(a)}, Q2={show(b)}, B={show(f)}: {up_to_date} correct "
                    f"up-to-date repliers against {faulty} faulty"
                )
                return Violation("O2", detail, a, b, f)
    return None


def masking(qs: SetSystem, bs: SetSystem, ts: SetSystem | None = None) -> Violation | None:
    """M1 then M2 (availability against ``ts``, ``bs`` when not given)."""
    return m1(qs, qs, bs) or availability("M2", qs, ts or bs)


def dissemination(qs: SetSystem, bs: SetSystem, ts: SetSystem | None = None) -> Violation | None:
    """D1 then D2."""
    return d1(qs, qs, bs) or availability("D2", qs, ts or bs)


def opaque(qs: SetSystem, bs: SetSystem, ts: SetSystem | None = None) -> Violation | None:
    """O1, O2 then O3."""
    return o1(qs, bs) or o2(qs, bs) or availability("O3", qs, ts or bs)
