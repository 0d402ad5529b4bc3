"""Explicit set systems over a small universe, for the exhaustive checks (seed 001 L54-56).

A quorum system and a fail-prone system are both families of subsets of the universe
``U = {0, ..., n - 1}``; each subset is an ``int`` bit mask (bit ``u`` set: server ``u`` is
in it), so an intersection is ``a & b`` and a size ``mask.bit_count()``.  Enumerating all
``k``-subsets is only sensible for small ``n``: :data:`MAX_SERVERS` bounds it, so a caller
asking for a universe too big to enumerate gets a clear error instead of an endless loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

#: The largest universe the explicit systems enumerate (``2**16`` subsets at most).
MAX_SERVERS = 16


def mask(servers: Iterable[int]) -> int:
    """The bit mask of a set of servers."""
    out = 0
    for u in servers:
        out |= 1 << u
    return out


def members(m: int) -> tuple[int, ...]:
    """The servers of a bit mask, in increasing order."""
    return tuple(u for u in range(m.bit_length()) if m >> u & 1)


def show(m: int) -> str:
    """A bit mask as a set, ``{0,3,5}``, for error messages."""
    return "{" + ",".join(map(str, members(m))) + "}"


@dataclass(frozen=True)
class SetSystem:
    """A family of subsets of ``{0, ..., n - 1}``: quorums, or the fail-prone sets.

    ``name`` says which construction built it, so a violation names it too.
    """

    n: int
    sets: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        if not 0 < self.n <= MAX_SERVERS:
            raise ValueError(f"explicit systems have 1..{MAX_SERVERS} servers, not {self.n}")
        universe = (1 << self.n) - 1
        for s in self.sets:
            if s & ~universe:
                raise ValueError(f"{self.name}: {show(s)} is not a subset of 0..{self.n - 1}")

    @property
    def smallest(self) -> int:
        """``c(Q)``: the size of the smallest set (seed L134)."""
        return min(s.bit_count() for s in self.sets)


def all_subsets(n: int, k: int, name: str = "") -> SetSystem:
    """Every ``k``-subset of ``n`` servers: a threshold quorum system (``k = q``) or the
    threshold fail-prone system ``{B : |B| = f}`` (``k = f``, seed L158)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot take subsets of {k} out of {n} servers")
    sets = tuple(mask(c) for c in combinations(range(n), k))
    return SetSystem(n, sets, name or f"all {k}-subsets of {n}")


def fail_prone_threshold(n: int, f: int) -> SetSystem:
    """``B = {B subset of U : |B| = f}``: up to ``f`` servers fail (seed L28, L158)."""
    return all_subsets(n, f, f"any {f} of {n} servers")


def partition(sizes: Iterable[int]) -> SetSystem:
    """A fail-prone system that is a partition into blocks of the given sizes: at most one
    block (a site, a rack, an administrative domain) is faulty (Example 4.9, seed L177)."""
    sizes = tuple(sizes)
    blocks: list[int] = []
    start = 0
    for size in sizes:
        if size <= 0:
            raise ValueError(f"a partition's blocks are not empty (got size {size})")
        blocks.append(mask(range(start, start + size)))
        start += size
    return SetSystem(start, tuple(blocks), f"partition into blocks {list(sizes)}")


def complements(bs: SetSystem) -> SetSystem:
    """``{U - B : B in B}``: the quorum system that exists whenever any masking (Thm. 4.3,
    L122) or dissemination (Thm. 5.4, L217) system does for ``bs``, so checking it decides
    whether one exists (no four, resp. three, fail-prone sets cover ``U``: Cor. 4.4, 5.5)."""
    universe = (1 << bs.n) - 1
    return SetSystem(bs.n, tuple(universe & ~b for b in bs.sets), f"complements of {bs.name}")
