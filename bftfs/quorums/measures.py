"""Load, fault tolerance and failure probability of an explicit quorum system (seed 001
Section 3.3, L76-92; Theorem 4.5, L136).

The load is a best case: the busiest server's access probability under the best strategy
(Def. 3.1, L80-90).  Finding the best strategy is a linear program; instead this module
computes the uniform strategy's load (an upper bound, what a client picking quorums at
random gets) and Theorem 4.5's lower bound ``max(1/c, c/n)`` (with Theorem 5.15's ``1/2``
for opaque systems, L286), and says the load is exact when they meet, as they do for every
construction of the seed.  Fault tolerance and failure probability enumerate failure sets,
so they are for small ``n`` (``systems.MAX_SERVERS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations

from bftfs.quorums.systems import SetSystem, mask


@dataclass(frozen=True)
class Load:
    """The uniform strategy's load and the lower bound; ``exact`` when equal."""

    uniform: Fraction
    bound: Fraction

    @property
    def exact(self) -> bool:
        return self.uniform == self.bound


def uniform_load(qs: SetSystem) -> Fraction:
    """``max_u l_w(u)`` with ``w`` uniform: the busiest server's share of the quorums."""
    busiest = max(sum(q >> u & 1 for q in qs.sets) for u in range(qs.n))
    return Fraction(busiest, len(qs.sets))


def load_bound(qs: SetSystem, opaque: bool = False) -> Fraction:
    """Theorem 4.5: ``L >= max(1/c, c/n)``; Theorem 5.15: ``L >= 1/2`` if opaque."""
    c = qs.smallest
    bound = max(Fraction(1, c), Fraction(c, qs.n))
    return max(bound, Fraction(1, 2)) if opaque else bound


def load(qs: SetSystem, opaque: bool = False) -> Load:
    return Load(uniform_load(qs), load_bound(qs, opaque))


def smallest_transversal(qs: SetSystem) -> int:
    """The fewest servers that meet every quorum (crashing them leaves no quorum)."""
    for size in range(qs.n + 1):
        for down in combinations(range(qs.n), size):
            hit = mask(down)
            if all(q & hit for q in qs.sets):
                return size
    raise ValueError(f"{qs.name} has an empty quorum: no crash can stop it")


def fault_tolerance(qs: SetSystem) -> int:
    """Crashes the system always survives: one less than :func:`smallest_transversal`."""
    return smallest_transversal(qs) - 1


def failure_probability(qs: SetSystem, p: float) -> float:
    """The probability that every quorum has a crashed server, each server crashed
    independently with probability ``p`` (every one of the ``2**n`` failure sets)."""
    total = 0.0
    for down in range(1 << qs.n):
        if all(q & down for q in qs.sets):
            k = down.bit_count()
            total += p**k * (1 - p) ** (qs.n - k)
    return total
